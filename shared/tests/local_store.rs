//! The local-directory adapter of the object-store port, against a real directory.

use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use compaction::format::io::read_footer;
use compaction::model::object::ObjectMeta;
use compaction::ports::store::{
    list_all, DeleteFailure, DeleteRequest, ListPage, LocalStore, ObjectSink, ObjectStore, PutMode,
};
use compaction::Result;

fn store() -> (tempfile::TempDir, LocalStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::with_page_size(dir.path(), 3).unwrap();
    (dir, store)
}

#[tokio::test]
async fn local_store_keeps_the_object_store_contract() {
    let dirs = Arc::new(std::sync::Mutex::new(Vec::new()));
    compaction::ports::store::contract::run_all(|| {
        let dirs = Arc::clone(&dirs);
        async move {
            let (dir, store) = store();
            dirs.lock().unwrap().push(dir);
            Arc::new(store) as Arc<dyn ObjectStore>
        }
    })
    .await;
}

#[tokio::test]
async fn unfinished_streaming_writes_leave_no_temporary_files() {
    let (dir, s) = store();
    let mut aborted = s.put_stream("big/aborted").await.unwrap();
    aborted.write(Bytes::from("partial")).await.unwrap();
    aborted.abort().await.unwrap();
    let dropped = s.put_stream("big/dropped").await.unwrap();
    drop(dropped);
    let leftovers = std::fs::read_dir(dir.path().join(".compactor-tmp"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name() != "lock")
        .count();
    assert_eq!(leftovers, 0, "no temporary files remain");
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
    let batch =
        compaction::drivers::sample::sample_batch(chrono::Utc::now(), 0, 1, 20_000, 1).unwrap();
    let data = compaction::drivers::sample::encode_small_file(&batch).unwrap();
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

/// What a killed process left in the working directory is cleared by the next one to open
/// the store: its temporary files, and a delete it had begun (the file it had moved away is
/// deleted if it was the version asked for, and put back if not). Files of live processes stay.
#[tokio::test]
async fn leftovers_of_dead_processes_are_cleared_on_open() {
    let (dir, s) = store();
    let tmp = dir.path().join(".compactor-tmp");
    let dead = compaction::support::process::ProcessIdentity {
        start: compaction::support::process::ProcessIdentity::current().start + 1,
        ..compaction::support::process::ProcessIdentity::current()
    }
    .tag();
    let mine = compaction::support::process::ProcessIdentity::current().tag();
    std::fs::write(tmp.join(format!("{dead}-1-0.tmp")), "partial").unwrap();
    std::fs::write(tmp.join(format!("{mine}-1-0.tmp")), "in use").unwrap();
    // A delete of "d/asked" was asked for its current version; one of "d/changed" for a version
    // it no longer had. Both were moved away when the process died.
    let asked = s
        .put("d/asked", Bytes::from("a"), PutMode::Overwrite)
        .await
        .unwrap();
    let changed = s
        .put("d/changed", Bytes::from("c"), PutMode::Overwrite)
        .await
        .unwrap();
    for (n, key, version) in [
        (1, "d/asked", asked.version),
        (2, "d/changed", "old".to_string()),
    ] {
        let stem = format!("{dead}-9-{n}");
        std::fs::write(
            tmp.join(format!("{stem}.trash.json")),
            serde_json::json!({"key": key, "version": version}).to_string(),
        )
        .unwrap();
        std::fs::rename(dir.path().join(key), tmp.join(format!("{stem}.trash"))).unwrap();
    }
    // A batch note (this version's format): the first delete was moved away, the second not
    // yet when the process died.
    let batch1 = s
        .put("d/batch1", Bytes::from("b1"), PutMode::Overwrite)
        .await
        .unwrap();
    let batch2 = s
        .put("d/batch2", Bytes::from("b2"), PutMode::Overwrite)
        .await
        .unwrap();
    let stem = format!("{dead}-9-3");
    std::fs::write(
        tmp.join(format!("{stem}.trash.json")),
        serde_json::json!({"entries": [
            {"key": "d/batch1", "version": batch1.version, "trash": format!("{stem}-0.trash")},
            {"key": "d/batch2", "version": batch2.version, "trash": format!("{stem}-1.trash")},
        ]})
        .to_string(),
    )
    .unwrap();
    std::fs::rename(
        dir.path().join("d/batch1"),
        tmp.join(format!("{stem}-0.trash")),
    )
    .unwrap();
    let _reopened = LocalStore::open(dir.path()).unwrap();
    assert!(
        s.head("d/batch1").await.unwrap().is_none(),
        "the moved delete of the batch is finished"
    );
    assert_eq!(
        s.head("d/batch2").await.unwrap().map(|m| m.version),
        Some(batch2.version),
        "the delete the batch had not begun leaves its file alone"
    );
    let mut left: Vec<String> = std::fs::read_dir(&tmp)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n != "lock")
        .collect();
    left.sort();
    assert_eq!(left, vec![format!("{mine}-1-0.tmp")]);
    assert!(
        s.head("d/asked").await.unwrap().is_none(),
        "the asked-for version is deleted"
    );
    let back = s
        .head("d/changed")
        .await
        .unwrap()
        .expect("the other version is put back");
    assert_eq!(back.version, changed.version);
}

/// A versioned delete moves the file away before checking it: a writer that replaces the file
/// by rename at any moment never loses its file. Stress-tested against a thread that keeps
/// replacing the key while the deleter deletes whatever version it last saw there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_replaced_during_a_versioned_delete_is_never_lost() {
    use std::os::unix::fs::MetadataExt;
    // The local store's version of a file (size, mtime, inode): a rename keeps all three.
    fn version(m: &std::fs::Metadata) -> String {
        let mtime_ns = m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128;
        format!("{:x}-{:x}-{:x}", m.len(), mtime_ns, m.ino())
    }
    let (dir, s) = store();
    let root = dir.path().to_path_buf();
    s.put("p/f", Bytes::from("0"), PutMode::Overwrite)
        .await
        .unwrap();
    let writer = std::thread::spawn(move || {
        let mut versions = Vec::new();
        for i in 1..=300u32 {
            let tmp = root.join(format!("p/.w{i}"));
            // The store removes a directory its delete emptied, as S3 has none: write again
            // when that happens under the writer's feet.
            loop {
                std::fs::create_dir_all(root.join("p")).unwrap();
                let written = std::fs::write(&tmp, i.to_string())
                    .and_then(|()| std::fs::metadata(&tmp))
                    .map(|m| version(&m))
                    .and_then(|v| std::fs::rename(&tmp, root.join("p/f")).map(|()| v));
                match written {
                    Ok(v) => {
                        versions.push(v);
                        break;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => panic!("{e}"),
                }
            }
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
        versions
    });
    let mut deleted = Vec::new();
    while !writer.is_finished() {
        let Some(seen) = s.head("p/f").await.unwrap() else {
            continue;
        };
        let failures = s
            .delete_many(&[DeleteRequest {
                key: "p/f".into(),
                version: Some(seen.version.clone()),
            }])
            .await
            .unwrap();
        if failures.is_empty() {
            deleted.push(seen.version);
        }
    }
    let versions = writer.join().unwrap();
    let last = versions.last().unwrap();
    match s.get("p/f").await {
        // The writer's last file survives, unless a delete asked for exactly that version.
        Ok((bytes, _)) => assert_eq!(bytes, Bytes::from("300")),
        Err(e) if e.is_not_found() => assert!(
            deleted.contains(last),
            "the last file was deleted though no delete asked for its version"
        ),
        Err(e) => panic!("{e}"),
    }
    assert!(!deleted.is_empty(), "the deleter deleted something");
}
