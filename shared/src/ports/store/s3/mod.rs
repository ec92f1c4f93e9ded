//! The object-store port on Amazon S3 (or any S3-compatible endpoint, path-style).
//!
//! Large objects are only ever read by range; outputs are written with a streaming multipart
//! upload whose memory is bounded by a few parts; copies above 5 GB use `UploadPartCopy`.
//! Conditional writes map to `If-None-Match: *` and `If-Match: <etag>`, and the batch delete
//! sends each input's ETag so that S3 refuses to delete an object that was replaced.

use std::ops::Range;

use async_trait::async_trait;
use aws_sdk_s3::error::SdkError;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedPart, Delete, ObjectIdentifier as S3ObjectId};
use aws_sdk_s3::Client;
use bytes::Bytes;

mod upload;

use upload::{abort_upload, complete_upload, create_upload, S3Sink};

use crate::error::{Error, Result};
use crate::model::object::{validate_key, validate_prefix, ObjectMeta};
use crate::ports::aws::ErrorInfo;
use crate::ports::store::{
    DeleteFailure, DeleteRequest, ListPage, ObjectSink, ObjectStore, PutMode,
};

/// Largest object a single `CopyObject` can copy.
const MAX_SINGLE_COPY: u64 = 5 * 1024 * 1024 * 1024;
/// Part size of multipart copies of huge objects (S3 allows 5 MiB to 5 GiB per part).
const COPY_PART_SIZE: u64 = 1024 * 1024 * 1024;
/// Keys per `DeleteObjects` request: S3's maximum.
const DELETE_BATCH: usize = 1000;
/// Default part size of streaming uploads. S3's minimum is 5 MiB; 10 000 parts of 8 MiB allow
/// 80 GB objects, far above any output size the merger produces.
pub const DEFAULT_PART_SIZE: usize = 8 * 1024 * 1024;
/// HEAD requests in flight while checking the versions of a batch delete.
const HEAD_CONCURRENCY: usize = 16;
/// Parts uploaded concurrently by one sink; memory is bounded by `(in flight + 1) * part size`.
const PARTS_IN_FLIGHT: usize = 2;

#[derive(Clone, Debug)]
pub struct S3Store {
    client: Client,
    bucket: String,
    /// Key prefix of the store's root inside the bucket: empty or ending with `/`.
    root: String,
    part_size: usize,
    page_size: Option<i32>,
}

impl S3Store {
    /// A store over `s3://bucket/root/`.
    pub fn new(client: Client, bucket: impl Into<String>, root: &str) -> Result<Self> {
        validate_prefix(root)?;
        let bucket = bucket.into();
        if bucket.is_empty() || bucket.contains('/') {
            return Err(Error::config(
                "bucket",
                format!("{bucket:?} is not a bucket name; give just the name, e.g. my-data"),
            ));
        }
        Ok(Self {
            client,
            bucket,
            root: crate::model::object::dir_prefix(root),
            part_size: DEFAULT_PART_SIZE,
            page_size: None,
        })
    }

    /// Parses `s3://bucket[/prefix]` and builds the store with a client from the environment.
    pub async fn from_url(url: &str) -> Result<Self> {
        let (bucket, root) = parse_s3_url(url)?;
        let config = crate::ports::aws::sdk_config().await;
        Self::new(crate::ports::aws::s3_client(&config), bucket, &root)
    }

    /// Parts of streaming uploads are this big (at least S3's 5 MiB minimum).
    pub fn with_part_size(mut self, bytes: usize) -> Self {
        self.part_size = bytes.max(5 * 1024 * 1024);
        self
    }

    /// Listing pages hold at most this many entries (tests use small pages).
    pub fn with_page_size(mut self, keys: i32) -> Self {
        self.page_size = Some(keys);
        self
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    fn full_key(&self, key: &str) -> Result<String> {
        validate_key(key)?;
        Ok(format!("{}{key}", self.root))
    }

    fn relative<'a>(&self, full: &'a str) -> &'a str {
        full.strip_prefix(self.root.as_str()).unwrap_or(full)
    }

    /// Why a versioned delete must not happen (the object was replaced), if it must not.
    async fn changed_since_planned(&self, request: &DeleteRequest) -> Result<Option<String>> {
        let Some(expected) = &request.version else {
            return Ok(None);
        };
        Ok(match self.head(&request.key).await? {
            Some(current) if &current.version != expected => Some(format!(
                "changed since it was planned (version {expected} is now {})",
                current.version
            )),
            _ => None,
        })
    }

    /// Copies with `UploadPartCopy` (objects above 5 GB); returns the copy's ETag.
    async fn copy_multipart(&self, from: &str, to: &str, size: u64) -> Result<String> {
        let upload_id = create_upload(&self.client, &self.bucket, to).await?;
        let result = async {
            let source = copy_source(&self.bucket, from);
            let mut parts = Vec::new();
            let mut start = 0u64;
            let mut number = 1;
            while start < size {
                let end = (start + COPY_PART_SIZE).min(size);
                let part = self
                    .client
                    .upload_part_copy()
                    .bucket(&self.bucket)
                    .key(to)
                    .upload_id(&upload_id)
                    .part_number(number)
                    .copy_source(&source)
                    .copy_source_range(format!("bytes={}-{}", start, end - 1))
                    .send()
                    .await
                    .map_err(|e| store_error("UploadPartCopy", from, &e))?;
                let etag = part
                    .copy_part_result()
                    .and_then(|r| r.e_tag())
                    .unwrap_or_default();
                parts.push(
                    CompletedPart::builder()
                        .part_number(number)
                        .e_tag(etag)
                        .build(),
                );
                start = end;
                number += 1;
            }
            complete_upload(&self.client, &self.bucket, to, &upload_id, parts, true).await
        }
        .await;
        if result.is_err() {
            abort_upload(&self.client, &self.bucket, to, &upload_id).await;
        }
        result
    }
}

/// Splits `s3://bucket/prefix` into the bucket and the prefix (possibly empty).
pub fn parse_s3_url(url: &str) -> Result<(String, String)> {
    let rest = url.strip_prefix("s3://").ok_or_else(|| {
        Error::config(
            "location",
            format!("{url:?} is not an s3:// URL; write s3://bucket or s3://bucket/prefix"),
        )
    })?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(Error::config(
            "location",
            format!("{url:?} names no bucket; write s3://bucket or s3://bucket/prefix"),
        ));
    }
    Ok((bucket.to_string(), prefix.trim_matches('/').to_string()))
}

fn store_error<E>(operation: &'static str, key: &str, err: &SdkError<E>) -> Error
where
    E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + 'static,
{
    let info = ErrorInfo::of(err);
    match info.status {
        Some(412) => Error::PreconditionFailed {
            key: key.to_string(),
            reason: "the object exists or changed (HTTP 412)".into(),
        },
        // A concurrent conditional write to the same key: S3 asks to retry; for the protocol
        // it is the same as losing the race.
        Some(409) if info.is_code("ConditionalRequestConflict") => Error::PreconditionFailed {
            key: key.to_string(),
            reason: "a concurrent conditional write won (HTTP 409)".into(),
        },
        Some(404) => Error::NotFound {
            key: key.to_string(),
        },
        _ if info.is_code("NoSuchKey") => Error::NotFound {
            key: key.to_string(),
        },
        _ => Error::Store {
            operation,
            key: key.to_string(),
            message: info.message,
        },
    }
}

fn millis(t: Option<&aws_sdk_s3::primitives::DateTime>) -> i64 {
    t.and_then(|t| t.to_millis().ok())
        .unwrap_or_else(crate::support::clock::now_ms)
}

/// `CopySource` is `bucket/key` with the key URL-encoded (S3 decodes it; `/` may stay).
pub(super) fn copy_source(bucket: &str, key: &str) -> String {
    let encoded: String = key
        .split('/')
        .map(|segment| url::form_urlencoded::byte_serialize(segment.as_bytes()).collect::<String>())
        .collect::<Vec<_>>()
        .join("/");
    // form encoding writes spaces as '+', which S3 would read literally.
    format!("{bucket}/{}", encoded.replace('+', "%20"))
}

#[async_trait]
impl ObjectStore for S3Store {
    fn describe(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.root)
    }

    async fn list_page(
        &self,
        prefix: &str,
        delimiter: Option<char>,
        token: Option<&str>,
    ) -> Result<ListPage> {
        validate_prefix(prefix)?;
        let full_prefix = format!("{}{prefix}", self.root);
        let response = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&full_prefix)
            .set_delimiter(delimiter.map(String::from))
            .set_continuation_token(token.map(String::from))
            .set_max_keys(self.page_size)
            .send()
            .await
            .map_err(|e| store_error("ListObjectsV2", &full_prefix, &e))?;
        let objects = response
            .contents()
            .iter()
            .filter_map(|o| {
                let key = o.key()?;
                Some(ObjectMeta {
                    key: self.relative(key).to_string(),
                    size: o.size().unwrap_or(0).max(0) as u64,
                    version: o.e_tag().unwrap_or_default().to_string(),
                    last_modified_ms: millis(o.last_modified()),
                })
            })
            .collect();
        let common_prefixes = response
            .common_prefixes()
            .iter()
            .filter_map(|p| p.prefix().map(|p| self.relative(p).to_string()))
            .collect();
        Ok(ListPage {
            objects,
            common_prefixes,
            next_token: response
                .is_truncated()
                .unwrap_or(false)
                .then(|| response.next_continuation_token().map(String::from))
                .flatten(),
        })
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>> {
        let full = self.full_key(key)?;
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(&full)
            .send()
            .await
        {
            Ok(o) => Ok(Some(ObjectMeta {
                key: key.to_string(),
                size: o.content_length().unwrap_or(0).max(0) as u64,
                version: o.e_tag().unwrap_or_default().to_string(),
                last_modified_ms: millis(o.last_modified()),
            })),
            Err(e) => match store_error("HeadObject", key, &e) {
                Error::NotFound { .. } => Ok(None),
                other => Err(other),
            },
        }
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        let full = self.full_key(key)?;
        if range.start >= range.end {
            return Ok(Bytes::new());
        }
        let response = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&full)
            .range(format!("bytes={}-{}", range.start, range.end - 1))
            .send()
            .await;
        match response {
            Ok(o) => collect(key, o.body).await,
            // The range starts at or after the end of the object: clamped to nothing.
            Err(e) if ErrorInfo::of(&e).status == Some(416) => Ok(Bytes::new()),
            Err(e) => Err(store_error("GetObject", key, &e)),
        }
    }

    async fn get_suffix(&self, key: &str, len: u64) -> Result<(Bytes, u64)> {
        let full = self.full_key(key)?;
        if len == 0 {
            let meta = self.head(key).await?.ok_or_else(|| Error::NotFound {
                key: key.to_string(),
            })?;
            return Ok((Bytes::new(), meta.size));
        }
        let response = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&full)
            .range(format!("bytes=-{len}"))
            .send()
            .await;
        match response {
            Ok(o) => {
                let total = o
                    .content_range()
                    .and_then(|r| r.rsplit('/').next())
                    .and_then(|t| t.parse::<u64>().ok());
                let bytes = collect(key, o.body).await?;
                // Without Content-Range the whole (shorter) object came back.
                Ok((bytes.clone(), total.unwrap_or(bytes.len() as u64)))
            }
            // An empty object has no suffix to return.
            Err(e) if ErrorInfo::of(&e).status == Some(416) => Ok((Bytes::new(), 0)),
            Err(e) => Err(store_error("GetObject", key, &e)),
        }
    }

    async fn get(&self, key: &str) -> Result<(Bytes, ObjectMeta)> {
        let full = self.full_key(key)?;
        let o = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&full)
            .send()
            .await
            .map_err(|e| store_error("GetObject", key, &e))?;
        let meta = ObjectMeta {
            key: key.to_string(),
            size: o.content_length().unwrap_or(0).max(0) as u64,
            version: o.e_tag().unwrap_or_default().to_string(),
            last_modified_ms: millis(o.last_modified()),
        };
        Ok((collect(key, o.body).await?, meta))
    }

    async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> Result<ObjectMeta> {
        let full = self.full_key(key)?;
        let size = data.len() as u64;
        let mut request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(&full)
            .body(ByteStream::from(data));
        request = match &mode {
            PutMode::Overwrite => request,
            PutMode::IfAbsent => request.if_none_match("*"),
            PutMode::IfMatch(version) => request.if_match(version),
        };
        let response = request.send().await.map_err(|e| {
            match (store_error("PutObject", key, &e), &mode) {
                // S3 answers If-Match on a missing object with 404; for the protocol the
                // expected version is gone, exactly like a changed one.
                (Error::NotFound { key }, PutMode::IfMatch(_)) => Error::PreconditionFailed {
                    key,
                    reason: "the object no longer exists".into(),
                },
                (other, _) => other,
            }
        })?;
        Ok(ObjectMeta {
            key: key.to_string(),
            size,
            version: response.e_tag().unwrap_or_default().to_string(),
            last_modified_ms: crate::support::clock::now_ms(),
        })
    }

    async fn put_stream(&self, key: &str) -> Result<Box<dyn ObjectSink>> {
        let full = self.full_key(key)?;
        Ok(Box::new(S3Sink::new(
            self.client.clone(),
            self.bucket.clone(),
            key.to_string(),
            full,
            self.root.clone(),
            self.part_size,
        )))
    }

    async fn copy(&self, from: &str, to: &str) -> Result<ObjectMeta> {
        let from_full = self.full_key(from)?;
        let to_full = self.full_key(to)?;
        let source = self.head(from).await?.ok_or_else(|| Error::NotFound {
            key: from.to_string(),
        })?;
        // S3 refuses an existing destination itself (If-None-Match below); the HEAD first keeps
        // that promise on S3-compatible servers that ignore the header (moto among them), but
        // for the milliseconds between the two.
        if self.head(to).await?.is_some() {
            return Err(Error::PreconditionFailed {
                key: to.to_string(),
                reason: "the destination exists; a copy never replaces an object".into(),
            });
        }
        let version = if source.size > MAX_SINGLE_COPY {
            self.copy_multipart(&from_full, &to_full, source.size)
                .await?
        } else {
            let copied = self
                .client
                .copy_object()
                .bucket(&self.bucket)
                .key(&to_full)
                .copy_source(copy_source(&self.bucket, &from_full))
                .copy_source_if_match(&source.version)
                .if_none_match("*")
                .send()
                .await
                .map_err(|e| store_error("CopyObject", from, &e))?;
            copied
                .copy_object_result()
                .and_then(|r| r.e_tag())
                .unwrap_or_default()
                .to_string()
        };
        Ok(ObjectMeta {
            key: to.to_string(),
            size: source.size,
            version,
            last_modified_ms: crate::support::clock::now_ms(),
        })
    }

    async fn delete_many(&self, requests: &[DeleteRequest]) -> Result<Vec<DeleteFailure>> {
        // S3 enforces the per-key ETag of `DeleteObjects` where it supports conditional deletes;
        // S3-compatible servers that ignore it would delete a replaced object, so a versioned
        // delete is checked with HEAD first as well (the window left is a few milliseconds).
        let mut failures = Vec::new();
        let mut unchanged = Vec::with_capacity(requests.len());
        for wave in requests.chunks(HEAD_CONCURRENCY) {
            let mut checks = Vec::with_capacity(wave.len());
            for request in wave {
                checks.push(self.changed_since_planned(request));
            }
            for (request, changed) in wave.iter().zip(futures::future::join_all(checks).await) {
                match changed? {
                    None => unchanged.push(request.clone()),
                    Some(reason) => failures.push(DeleteFailure {
                        key: request.key.clone(),
                        reason,
                    }),
                }
            }
        }
        for batch in unchanged.chunks(DELETE_BATCH) {
            let mut ids = Vec::with_capacity(batch.len());
            for request in batch {
                let full = match self.full_key(&request.key) {
                    Ok(full) => full,
                    Err(e) => {
                        failures.push(DeleteFailure {
                            key: request.key.clone(),
                            reason: e.to_string(),
                        });
                        continue;
                    }
                };
                let id = S3ObjectId::builder()
                    .key(full)
                    .set_e_tag(request.version.clone())
                    .build()
                    .map_err(|e| Error::Store {
                        operation: "DeleteObjects",
                        key: request.key.clone(),
                        message: e.to_string(),
                    })?;
                ids.push(id);
            }
            if ids.is_empty() {
                continue;
            }
            let delete = Delete::builder()
                .set_objects(Some(ids))
                .quiet(true)
                .build()
                .map_err(|e| Error::Store {
                    operation: "DeleteObjects",
                    key: batch[0].key.clone(),
                    message: e.to_string(),
                })?;
            let response = self
                .client
                .delete_objects()
                .bucket(&self.bucket)
                .delete(delete)
                .send()
                .await
                .map_err(|e| store_error("DeleteObjects", &batch[0].key, &e))?;
            for error in response.errors() {
                if error.code() == Some("NoSuchKey") {
                    continue;
                }
                failures.push(DeleteFailure {
                    key: self.relative(error.key().unwrap_or_default()).to_string(),
                    reason: format!(
                        "{}: {}",
                        error.code().unwrap_or("error"),
                        error.message().unwrap_or("no message")
                    ),
                });
            }
        }
        Ok(failures)
    }
}

async fn collect(key: &str, body: ByteStream) -> Result<Bytes> {
    body.collect()
        .await
        .map(|data| data.into_bytes())
        .map_err(|e| Error::Store {
            operation: "GetObject",
            key: key.to_string(),
            message: format!("reading the body failed: {e}"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_urls_split_into_bucket_and_prefix() {
        assert_eq!(
            parse_s3_url("s3://b/raw/clicks/").unwrap(),
            ("b".to_string(), "raw/clicks".to_string())
        );
        assert_eq!(
            parse_s3_url("s3://b").unwrap(),
            ("b".to_string(), String::new())
        );
        assert!(parse_s3_url("s3:///x").is_err());
        assert!(parse_s3_url("/tmp/x").is_err());
    }

    #[test]
    fn copy_source_encodes_each_segment() {
        assert_eq!(
            copy_source("b", "dt=2024-01-01/a b+c.parquet"),
            "b/dt%3D2024-01-01/a%20b%2Bc.parquet"
        );
    }
}
