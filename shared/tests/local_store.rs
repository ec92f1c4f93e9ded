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

#[tokio::test]
async fn local_store_keeps_the_object_store_contract() {
    let dirs = Arc::new(std::sync::Mutex::new(Vec::new()));
    compaction::store::contract::run_all(|| {
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
