//! The object-store port: the few operations the protocol needs from S3 or a local directory.
//!
//! Keys and object metadata are the model's ([`crate::model::object`]); every adapter validates
//! keys with [`validate_key`] so that nothing can address a location outside the store's root.

#[cfg(any(test, feature = "contract-tests"))]
pub mod contract;
mod local;
mod s3;

use std::collections::HashMap;
use std::fmt::Debug;
use std::ops::Range;

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::{Error, Result};
use crate::model::manifest::{from_json, to_json};
use crate::model::object::{dir_prefix, ObjectMeta};

pub use local::LocalStore;
pub use s3::{parse_s3_url, S3Store};

/// One page of a listing. With a delimiter, `common_prefixes` holds the "sub-directories"
/// (each ending with the delimiter) and `objects` only the direct children.
#[derive(Clone, Debug, Default)]
pub struct ListPage {
    pub objects: Vec<ObjectMeta>,
    pub common_prefixes: Vec<String>,
    /// Pass back to get the next page; `None` when the listing is complete.
    pub next_token: Option<String>,
}

/// How a small-object write treats an existing object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PutMode {
    Overwrite,
    /// Create only if no object exists under the key (S3 `If-None-Match: *`).
    IfAbsent,
    /// Replace only if the current version equals this one (S3 `If-Match: <etag>`).
    IfMatch(String),
}

/// A delete of one key, optionally only when the object still has the given version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeleteRequest {
    pub key: String,
    pub version: Option<String>,
}

/// Why one key of a batch delete was not deleted. A key that is already gone is not a failure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeleteFailure {
    pub key: String,
    pub reason: String,
}

/// A streaming upload. Nothing is visible under the key until `finish` succeeds; `abort`
/// (or dropping the sink without finishing) leaves no trace.
#[async_trait]
pub trait ObjectSink: Send {
    async fn write(&mut self, data: Bytes) -> Result<()>;
    /// Appends bytes `range` of the stored object `source` (expected at `version`) without
    /// passing them through this process: S3 `UploadPartCopy`, a ranged file copy locally.
    /// Returns `false`, having appended nothing, when the store cannot do it at this point (S3:
    /// a range or a preceding part under the 5 MiB part minimum); the caller then writes the
    /// bytes itself.
    async fn copy_range(&mut self, source: &str, version: &str, range: Range<u64>) -> Result<bool> {
        let _ = (source, version, range);
        Ok(false)
    }
    async fn finish(self: Box<Self>) -> Result<ObjectMeta>;
    async fn abort(self: Box<Self>) -> Result<()>;
}

#[async_trait]
pub trait ObjectStore: Send + Sync + Debug {
    /// A URL-like description for logs and error messages, e.g. `file:///data` or `s3://bucket`.
    fn describe(&self) -> String;

    async fn list_page(
        &self,
        prefix: &str,
        delimiter: Option<char>,
        token: Option<&str>,
    ) -> Result<ListPage>;

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>>;

    /// Bytes `range` of the object; the range is clamped to the object's size.
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes>;

    /// The last `len` bytes (S3 `Range: bytes=-len`); fewer if the object is shorter.
    async fn get_suffix(&self, key: &str, len: u64) -> Result<(Bytes, u64)>;

    /// The whole object. Only for small objects (manifests, task specs).
    async fn get(&self, key: &str) -> Result<(Bytes, ObjectMeta)>;

    async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> Result<ObjectMeta>;

    async fn put_stream(&self, key: &str) -> Result<Box<dyn ObjectSink>>;

    /// Server-side copy that creates `to` only if no object is there (S3 `If-None-Match: *`):
    /// a copy never replaces anything. Fails with [`Error::NotFound`] if `from` does not exist
    /// and [`Error::PreconditionFailed`] if `to` does.
    async fn copy(&self, from: &str, to: &str) -> Result<ObjectMeta>;

    /// The CRC32C of the whole object, 8 lowercase hex digits: how a committer recognises its
    /// own copy. Reads the object in ranges (adapters may know it without reading).
    async fn crc32c(&self, key: &str) -> Result<String> {
        const CHUNK: u64 = 8 << 20;
        let size = self
            .head(key)
            .await?
            .ok_or_else(|| Error::NotFound {
                key: key.to_string(),
            })?
            .size;
        let mut crc = 0u32;
        let mut at = 0;
        while at < size {
            let end = (at + CHUNK).min(size);
            crc = crc32c::crc32c_append(crc, &self.get_range(key, at..end).await?);
            at = end;
        }
        Ok(format!("{crc:08x}"))
    }

    /// Deletes in batches; returns the keys that could not be deleted and why.
    async fn delete_many(&self, requests: &[DeleteRequest]) -> Result<Vec<DeleteFailure>>;
}

/// Reads a small JSON object, `None` if it does not exist.
pub async fn read_json<T: for<'de> serde::Deserialize<'de>>(
    store: &dyn ObjectStore,
    key: &str,
) -> Result<Option<T>> {
    match store.get(key).await {
        Ok((bytes, _)) => Ok(Some(from_json(key, &bytes)?)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

/// Writes `value` as JSON at `key` unless something is there (create-if-absent, so the first
/// writer wins); returns what stands at `key` and whether it is `value` (false: another
/// writer's, read back).
pub async fn put_json_once<T>(store: &dyn ObjectStore, key: &str, value: T) -> Result<(T, bool)>
where
    T: serde::Serialize + for<'de> serde::Deserialize<'de>,
{
    match store.put(key, to_json(&value), PutMode::IfAbsent).await {
        Ok(_) => Ok((value, true)),
        Err(e) if e.is_precondition_failed() => match read_json::<T>(store, key).await? {
            Some(winner) => Ok((winner, false)),
            None => Err(Error::Manifest {
                key: key.to_string(),
                message: "vanished right after a concurrent write".into(),
            }),
        },
        Err(e) => Err(e),
    }
}

/// The current version of each input, from listings of their directories (one request per
/// thousand keys instead of one per input).
pub async fn current_versions(
    store: &dyn ObjectStore,
    inputs: &[ObjectMeta],
) -> Result<HashMap<String, ObjectMeta>> {
    let mut dirs: Vec<&str> = inputs
        .iter()
        .map(|i| i.key.rsplit_once('/').map_or("", |(d, _)| d))
        .collect();
    dirs.sort_unstable();
    dirs.dedup();
    let mut current = HashMap::new();
    for dir in dirs {
        let prefix = dir_prefix(dir);
        for object in list_all(store, &prefix, Some('/')).await?.objects {
            current.insert(object.key.clone(), object);
        }
    }
    Ok(current)
}

/// Lists every object and common prefix under `prefix`, following pagination.
pub async fn list_all(
    store: &dyn ObjectStore,
    prefix: &str,
    delimiter: Option<char>,
) -> Result<ListPage> {
    let mut all = ListPage::default();
    let mut token: Option<String> = None;
    loop {
        let page = store.list_page(prefix, delimiter, token.as_deref()).await?;
        all.objects.extend(page.objects);
        all.common_prefixes.extend(page.common_prefixes);
        match page.next_token {
            Some(next) => token = Some(next),
            None => return Ok(all),
        }
    }
}
