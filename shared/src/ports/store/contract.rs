//! The object-store contract: the behaviour the protocol relies on, checked against every
//! adapter (the local directory in `shared/tests`, S3 in the end-to-end tests). Each function
//! takes an empty store (its own directory or key prefix) that lists in pages of 3 keys.

use std::sync::Arc;

use bytes::Bytes;

use crate::model::object::ObjectMeta;
use crate::ports::store::{list_all, DeleteRequest, ObjectStore, PutMode};

async fn put(store: &dyn ObjectStore, key: &str, data: &str) -> ObjectMeta {
    store
        .put(key, Bytes::from(data.to_string()), PutMode::Overwrite)
        .await
        .unwrap()
}

pub async fn listing_pages_and_delimits_like_s3(store: Arc<dyn ObjectStore>) {
    let s = store.as_ref();
    for key in [
        "p/a=1/x.parquet",
        "p/a=1/y.parquet",
        "p/a=2/z.parquet",
        "p/top.parquet",
        "p/_SUCCESS",
        "q/other",
    ] {
        put(s, key, "x").await;
    }
    let mut tokens = 0;
    let mut token: Option<String> = None;
    let mut keys = Vec::new();
    loop {
        let page = s.list_page("p/", None, token.as_deref()).await.unwrap();
        assert!(page.objects.len() <= 3);
        keys.extend(page.objects.into_iter().map(|o| o.key));
        match page.next_token {
            Some(t) => {
                tokens += 1;
                token = Some(t)
            }
            None => break,
        }
    }
    assert!(tokens >= 1, "five keys need two pages of three");
    assert_eq!(
        keys,
        vec![
            "p/_SUCCESS",
            "p/a=1/x.parquet",
            "p/a=1/y.parquet",
            "p/a=2/z.parquet",
            "p/top.parquet"
        ]
    );
    let delimited = list_all(s, "p/", Some('/')).await.unwrap();
    assert_eq!(delimited.common_prefixes, vec!["p/a=1/", "p/a=2/"]);
    let names: Vec<_> = delimited.objects.iter().map(|o| o.key.as_str()).collect();
    assert_eq!(names, vec!["p/_SUCCESS", "p/top.parquet"]);
    // A prefix that is not a directory boundary matches names, as in S3.
    let partial = list_all(s, "p/a=", Some('/')).await.unwrap();
    assert_eq!(partial.common_prefixes, vec!["p/a=1/", "p/a=2/"]);
    assert!(list_all(s, "nothing/", None)
        .await
        .unwrap()
        .objects
        .is_empty());
}

pub async fn ranged_reads_and_suffixes(store: Arc<dyn ObjectStore>) {
    let s = store.as_ref();
    put(s, "f", "0123456789").await;
    assert_eq!(s.get_range("f", 2..5).await.unwrap(), Bytes::from("234"));
    assert_eq!(s.get_range("f", 8..50).await.unwrap(), Bytes::from("89"));
    let (tail, size) = s.get_suffix("f", 4).await.unwrap();
    assert_eq!((tail, size), (Bytes::from("6789"), 10));
    assert!(s
        .get_range("missing", 0..1)
        .await
        .unwrap_err()
        .is_not_found());
}

pub async fn conditional_writes(store: Arc<dyn ObjectStore>) {
    let s = store.as_ref();
    let first = s
        .put("m", Bytes::from("v1"), PutMode::IfAbsent)
        .await
        .unwrap();
    let again = s
        .put("m", Bytes::from("v2"), PutMode::IfAbsent)
        .await
        .unwrap_err();
    assert!(again.is_precondition_failed());
    let second = s
        .put(
            "m",
            Bytes::from("v2"),
            PutMode::IfMatch(first.version.clone()),
        )
        .await
        .unwrap();
    assert_ne!(second.version, first.version);
    let stale = s
        .put("m", Bytes::from("v3"), PutMode::IfMatch(first.version))
        .await
        .unwrap_err();
    assert!(stale.is_precondition_failed());
    assert_eq!(s.get("m").await.unwrap().0, Bytes::from("v2"));
    assert!(s
        .put("new", Bytes::new(), PutMode::IfMatch("x".into()))
        .await
        .unwrap_err()
        .is_precondition_failed());
}

pub async fn racing_create_if_absent_has_one_winner(store: Arc<dyn ObjectStore>) {
    let mut handles = Vec::new();
    for i in 0..16 {
        let s = Arc::clone(&store);
        handles.push(tokio::spawn(async move {
            s.put("decision", Bytes::from(format!("{i}")), PutMode::IfAbsent)
                .await
                .is_ok()
        }));
    }
    let mut wins = 0;
    for h in handles {
        wins += h.await.unwrap() as usize;
    }
    assert_eq!(wins, 1);
}

pub async fn copy_and_versioned_batch_delete(store: Arc<dyn ObjectStore>) {
    let s = store.as_ref();
    let a = put(s, "d/a", "a").await;
    put(s, "d/b", "b").await;
    s.copy("d/a", "e/a").await.unwrap();
    assert_eq!(s.get("e/a").await.unwrap().0, Bytes::from("a"));
    assert!(s.copy("d/none", "e/none").await.unwrap_err().is_not_found());
    // A copy never replaces an object: the destination must be free.
    put(s, "d/x", "x").await;
    assert!(s
        .copy("d/x", "e/a")
        .await
        .unwrap_err()
        .is_precondition_failed());
    assert_eq!(s.get("e/a").await.unwrap().0, Bytes::from("a"));
    assert_eq!(
        s.crc32c("e/a").await.unwrap(),
        format!("{:08x}", crc32c::crc32c(b"a"))
    );
    // A copy is independent of its source: rewriting or deleting the source leaves it alone.
    put(s, "d/c", "c1").await;
    s.copy("d/c", "e/c").await.unwrap();
    put(s, "d/c", "c2").await;
    s.delete_many(&[DeleteRequest {
        key: "d/c".into(),
        version: None,
    }])
    .await
    .unwrap();
    assert_eq!(s.get("e/c").await.unwrap().0, Bytes::from("c1"));
    // b is rewritten after we noted its version: a versioned delete keeps it.
    let b_old = s.head("d/b").await.unwrap().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(5));
    put(s, "d/b", "b2").await;
    let failures = s
        .delete_many(&[
            DeleteRequest {
                key: "d/a".into(),
                version: Some(a.version),
            },
            DeleteRequest {
                key: "d/b".into(),
                version: Some(b_old.version),
            },
            DeleteRequest {
                key: "d/gone".into(),
                version: None,
            },
        ])
        .await
        .unwrap();
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].key, "d/b");
    assert!(s.head("d/a").await.unwrap().is_none());
    assert!(s.head("d/b").await.unwrap().is_some());
}

pub async fn streaming_writes_appear_only_when_finished(store: Arc<dyn ObjectStore>) {
    let s = store.as_ref();
    let mut sink = s.put_stream("big/out.parquet").await.unwrap();
    // Odd-sized writes, so parts are cut inside writes.
    let chunk: Vec<u8> = (0..(3 << 20) + 17).map(|i| (i % 251) as u8).collect();
    for _ in 0..4 {
        sink.write(Bytes::from(chunk.clone())).await.unwrap();
    }
    assert!(
        s.head("big/out.parquet").await.unwrap().is_none(),
        "invisible until finished"
    );
    let meta = sink.finish().await.unwrap();
    assert_eq!(meta.size, 4 * chunk.len() as u64);
    let (data, _) = s.get("big/out.parquet").await.unwrap();
    assert_eq!(data.len(), 4 * chunk.len());
    assert!(data.chunks(chunk.len()).all(|c| c == chunk.as_slice()));
    let small = s.put_stream("big/small").await.unwrap();
    assert_eq!(small.finish().await.unwrap().size, 0);
    let mut aborted = s.put_stream("big/aborted").await.unwrap();
    aborted.write(Bytes::from(chunk.clone())).await.unwrap();
    aborted.write(Bytes::from(chunk.clone())).await.unwrap();
    aborted.abort().await.unwrap();
    assert!(s.head("big/aborted").await.unwrap().is_none());
}

/// Runs the whole contract; `fresh` gives a new, empty store for each part.
pub async fn run_all<F, Fut>(fresh: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Arc<dyn ObjectStore>>,
{
    listing_pages_and_delimits_like_s3(fresh().await).await;
    ranged_reads_and_suffixes(fresh().await).await;
    conditional_writes(fresh().await).await;
    racing_create_if_absent_has_one_winner(fresh().await).await;
    copy_and_versioned_batch_delete(fresh().await).await;
    streaming_writes_appear_only_when_finished(fresh().await).await;
}
