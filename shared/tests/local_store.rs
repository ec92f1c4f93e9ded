//! The local-directory adapter of the object-store port, against a real directory.

use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use compaction::parquet_io::read_footer;
use compaction::store::{
    list_all, DeleteFailure, DeleteRequest, ListPage, LocalStore, ObjectMeta, ObjectSink,
    ObjectStore, PutMode,
};
use compaction::Result;

fn store() -> (tempfile::TempDir, LocalStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::with_page_size(dir.path(), 3).unwrap();
    (dir, store)
}

async fn put(store: &LocalStore, key: &str, data: &str) -> ObjectMeta {
    store
        .put(key, Bytes::from(data.to_string()), PutMode::Overwrite)
        .await
        .unwrap()
}

#[tokio::test]
async fn listing_pages_and_delimits_like_s3() {
    let (_dir, s) = store();
    for key in [
        "p/a=1/x.parquet",
        "p/a=1/y.parquet",
        "p/a=2/z.parquet",
        "p/top.parquet",
        "p/_SUCCESS",
        "q/other",
    ] {
        put(&s, key, "x").await;
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
    let delimited = list_all(&s, "p/", Some('/')).await.unwrap();
    assert_eq!(delimited.common_prefixes, vec!["p/a=1/", "p/a=2/"]);
    let names: Vec<_> = delimited.objects.iter().map(|o| o.key.as_str()).collect();
    assert_eq!(names, vec!["p/_SUCCESS", "p/top.parquet"]);
    // A prefix that is not a directory boundary matches names, as in S3.
    let partial = list_all(&s, "p/a=", Some('/')).await.unwrap();
    assert_eq!(partial.common_prefixes, vec!["p/a=1/", "p/a=2/"]);
    assert!(list_all(&s, "nothing/", None)
        .await
        .unwrap()
        .objects
        .is_empty());
}

#[tokio::test]
async fn ranged_reads_and_suffixes() {
    let (_dir, s) = store();
    put(&s, "f", "0123456789").await;
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

#[tokio::test]
async fn conditional_writes() {
    let (_dir, s) = store();
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

#[tokio::test]
async fn racing_create_if_absent_has_one_winner() {
    let (_dir, s) = store();
    let s = Arc::new(s);
    let mut handles = Vec::new();
    for i in 0..16 {
        let s = Arc::clone(&s);
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

#[tokio::test]
async fn streaming_writes_appear_only_when_finished() {
    let (dir, s) = store();
    let mut sink = s.put_stream("big/out.parquet").await.unwrap();
    for _ in 0..4 {
        sink.write(Bytes::from(vec![7u8; 1 << 20])).await.unwrap();
    }
    assert!(
        s.head("big/out.parquet").await.unwrap().is_none(),
        "invisible until finished"
    );
    let meta = sink.finish().await.unwrap();
    assert_eq!(meta.size, 4 << 20);
    let mut aborted = s.put_stream("big/aborted").await.unwrap();
    aborted.write(Bytes::from("partial")).await.unwrap();
    aborted.abort().await.unwrap();
    assert!(s.head("big/aborted").await.unwrap().is_none());
    let dropped = s.put_stream("big/dropped").await.unwrap();
    drop(dropped);
    let leftovers = std::fs::read_dir(dir.path().join(".compactor-tmp"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name() != "lock")
        .count();
    assert_eq!(leftovers, 0, "no temporary files remain");
}

#[tokio::test]
async fn copy_and_versioned_batch_delete() {
    let (_dir, s) = store();
    let a = put(&s, "d/a", "a").await;
    put(&s, "d/b", "b").await;
    s.copy("d/a", "e/a").await.unwrap();
    assert_eq!(s.get("e/a").await.unwrap().0, Bytes::from("a"));
    assert!(s.copy("d/none", "e/none").await.unwrap_err().is_not_found());
    // b is rewritten after we noted its version: a versioned delete keeps it.
    let b_old = s.head("d/b").await.unwrap().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(5));
    put(&s, "d/b", "b2").await;
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

#[tokio::test]
async fn hostile_keys_never_touch_the_file_system() {
    let (dir, s) = store();
    for key in [
        "../escape",
        "/etc/passwd",
        "a/../../b",
        "a\0b",
        ".compactor-tmp/lock",
    ] {
        assert!(
            s.put(key, Bytes::from("x"), PutMode::Overwrite)
                .await
                .is_err(),
            "{key:?}"
        );
        assert!(s.get_range(key, 0..1).await.is_err());
    }
    assert!(!dir.path().parent().unwrap().join("escape").exists());
    // A symlink planted in the tree is not followed by listings.
    std::os::unix::fs::symlink("/etc", dir.path().join("link")).unwrap();
    assert!(list_all(&s, "", None)
        .await
        .unwrap()
        .objects
        .iter()
        .all(|o| !o.key.starts_with("link")));
}

/// Wraps the real store to count the requests a footer read makes.
#[derive(Debug)]
struct Counting {
    inner: LocalStore,
    ranged: AtomicUsize,
    bytes: AtomicUsize,
}

#[async_trait]
impl ObjectStore for Counting {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    async fn list_page(&self, p: &str, d: Option<char>, t: Option<&str>) -> Result<ListPage> {
        self.inner.list_page(p, d, t).await
    }
    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>> {
        self.inner.head(key).await
    }
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        self.ranged.fetch_add(1, Ordering::SeqCst);
        let b = self.inner.get_range(key, range).await?;
        self.bytes.fetch_add(b.len(), Ordering::SeqCst);
        Ok(b)
    }
    async fn get_suffix(&self, key: &str, len: u64) -> Result<(Bytes, u64)> {
        self.ranged.fetch_add(1, Ordering::SeqCst);
        let (b, size) = self.inner.get_suffix(key, len).await?;
        self.bytes.fetch_add(b.len(), Ordering::SeqCst);
        Ok((b, size))
    }
    async fn get(&self, key: &str) -> Result<(Bytes, ObjectMeta)> {
        panic!("a footer read must not fetch the whole object {key}")
    }
    async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> Result<ObjectMeta> {
        self.inner.put(key, data, mode).await
    }
    async fn put_stream(&self, key: &str) -> Result<Box<dyn ObjectSink>> {
        self.inner.put_stream(key).await
    }
    async fn copy(&self, from: &str, to: &str) -> Result<ObjectMeta> {
        self.inner.copy(from, to).await
    }
    async fn delete_many(&self, r: &[DeleteRequest]) -> Result<Vec<DeleteFailure>> {
        self.inner.delete_many(r).await
    }
}

#[tokio::test]
async fn a_footer_is_read_with_two_small_ranged_reads() {
    let dir = tempfile::tempdir().unwrap();
    let inner = LocalStore::open(dir.path()).unwrap();
    let batch = compaction::sample::sample_batch(chrono::Utc::now(), 0, 1, 20_000, 1).unwrap();
    let data = compaction::sample::encode_small_file(&batch).unwrap();
    let size = data.len();
    inner
        .put("f.parquet", data, PutMode::Overwrite)
        .await
        .unwrap();
    let counting = Counting {
        inner,
        ranged: AtomicUsize::new(0),
        bytes: AtomicUsize::new(0),
    };
    let footer = read_footer(&counting, "f.parquet").await.unwrap();
    assert_eq!(footer.file_metadata().num_rows(), 20_000);
    assert_eq!(counting.ranged.load(Ordering::SeqCst), 2);
    let read = counting.bytes.load(Ordering::SeqCst);
    assert!(read * 20 < size, "read {read} of {size} bytes");
}
