//! The object-store port: the few operations the protocol needs from S3 or a local directory.
//!
//! Keys are `/`-separated relative paths. Every adapter validates keys with [`validate_key`]
//! so that nothing can address a location outside the store's root.

#[cfg(any(test, feature = "contract-tests"))]
pub mod contract;
mod local;
mod s3;

use std::fmt::Debug;
use std::ops::Range;

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

pub use local::LocalStore;
pub use s3::{parse_s3_url, S3Store};

/// What the store knows about one object. `version` is an opaque, ETag-like token that changes
/// whenever the object's content is replaced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectMeta {
    pub key: String,
    pub size: u64,
    pub version: String,
    /// Milliseconds since the Unix epoch.
    pub last_modified_ms: i64,
}

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

const MAX_KEY_BYTES: usize = 1024;

/// Rejects keys that could escape the store root or that S3 would treat differently from a
/// file system: empty, absolute, `.`/`..` segments, empty segments, NUL and control characters,
/// backslashes, and keys longer than S3's 1024-byte limit.
pub fn validate_key(key: &str) -> Result<()> {
    let bad = |reason| {
        Err(Error::InvalidKey {
            key: key.to_string(),
            reason,
        })
    };
    if key.is_empty() {
        return bad("key is empty");
    }
    if key.len() > MAX_KEY_BYTES {
        return bad("key is longer than 1024 bytes");
    }
    if key.starts_with('/') {
        return bad("absolute keys are not allowed; keys are relative to the store root");
    }
    if key.chars().any(|c| c == '\0' || c.is_control()) {
        return bad("NUL and control characters are not allowed");
    }
    if key.contains('\\') {
        return bad("backslashes are not allowed");
    }
    for segment in key.trim_end_matches('/').split('/') {
        match segment {
            "" => return bad("empty path segment ('//')"),
            "." | ".." => return bad("'.' and '..' segments are not allowed"),
            _ => {}
        }
    }
    Ok(())
}

/// Like [`validate_key`] but also accepts the empty prefix (the whole store).
pub fn validate_prefix(prefix: &str) -> Result<()> {
    if prefix.is_empty() {
        Ok(())
    } else {
        validate_key(prefix)
    }
}

/// Joins key parts with exactly one `/` between them, skipping empty parts.
pub fn join_key(parts: &[&str]) -> String {
    let mut out = String::new();
    for part in parts {
        let part = part.trim_matches('/');
        if part.is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.push('/');
        }
        out.push_str(part);
    }
    out
}

/// A prefix that ends with `/` (or is empty), so it can be concatenated with a name.
pub fn dir_prefix(prefix: &str) -> String {
    let trimmed = prefix.trim_matches('/');
    if trimmed.is_empty() {
        String::new()
    } else {
        format!("{trimmed}/")
    }
}

/// The last segment of a key.
pub fn file_name(key: &str) -> &str {
    key.trim_end_matches('/').rsplit('/').next().unwrap_or(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_keys_are_rejected() {
        for key in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a/./b",
            "a//b",
            "a\0b",
            "a\\b",
            "a\nb",
        ] {
            assert!(validate_key(key).is_err(), "{key:?} should be rejected");
        }
        let long = "k".repeat(1025);
        assert!(validate_key(&long).is_err());
    }

    #[test]
    fn ordinary_keys_are_accepted() {
        for key in [
            "a",
            "dt=2024-01-01/hour=00/part-0.parquet",
            "x/",
            "with space/é.parquet",
        ] {
            validate_key(key).unwrap();
        }
        validate_prefix("").unwrap();
    }

    #[test]
    fn join_and_names() {
        assert_eq!(join_key(&["a/", "/b/", "", "c"]), "a/b/c");
        assert_eq!(dir_prefix("a/b"), "a/b/");
        assert_eq!(dir_prefix(""), "");
        assert_eq!(file_name("a/b/c.parquet"), "c.parquet");
        assert_eq!(file_name("a/b/"), "b");
    }
}
