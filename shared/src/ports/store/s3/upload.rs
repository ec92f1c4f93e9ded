//! Multipart uploads on S3: the streaming sink outputs are written with (memory bounded by a few
//! parts in flight), and the create / complete / abort calls the server-side copy shares.

use std::ops::Range;

use async_trait::async_trait;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;
use bytes::{Bytes, BytesMut};
use tokio::task::JoinSet;

use crate::error::{Error, Result};
use crate::model::object::ObjectMeta;
use crate::ports::aws::ErrorInfo;
use crate::ports::store::ObjectSink;

use super::{store_error, PARTS_IN_FLIGHT};

/// Starts a multipart upload to `full_key` and returns its id.
pub(super) async fn create_upload(client: &Client, bucket: &str, full_key: &str) -> Result<String> {
    let created = client
        .create_multipart_upload()
        .bucket(bucket)
        .key(full_key)
        .send()
        .await
        .map_err(|e| store_error("CreateMultipartUpload", full_key, &e))?;
    Ok(created.upload_id().unwrap_or_default().to_string())
}

/// Completes a multipart upload and returns the object's ETag.
pub(super) async fn complete_upload(
    client: &Client,
    bucket: &str,
    key: &str,
    upload_id: &str,
    parts: Vec<CompletedPart>,
    if_absent: bool,
) -> Result<String> {
    let completed = client
        .complete_multipart_upload()
        .bucket(bucket)
        .key(key)
        .upload_id(upload_id)
        .set_if_none_match(if_absent.then(|| "*".to_string()))
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(parts))
                .build(),
        )
        .send()
        .await
        .map_err(|e| store_error("CompleteMultipartUpload", key, &e))?;
    Ok(completed.e_tag().unwrap_or_default().to_string())
}

/// Best effort: an upload that cannot be aborted is also removed by the bucket's
/// abort-incomplete-multipart lifecycle rule the template installs.
pub(super) async fn abort_upload(client: &Client, bucket: &str, key: &str, upload_id: &str) {
    if let Err(e) = client
        .abort_multipart_upload()
        .bucket(bucket)
        .key(key)
        .upload_id(upload_id)
        .send()
        .await
    {
        tracing::warn!(key, upload_id, error = %ErrorInfo::of(&e).message, "could not abort multipart upload");
    }
}

/// S3's smallest part (all but the last).
const MIN_PART: usize = 5 * 1024 * 1024;
const PARQUET_MAGIC: &[u8] = b"PAR1";

/// What one part holds: bytes sent from here, or a range of another object copied by S3.
enum PartBody {
    Data(Bytes),
    Copy { source: String, range: Range<u64> },
}

/// A streaming multipart upload. Small objects (under one part) are sent with one `PutObject`
/// on `finish`; larger ones start a multipart upload at the first full part. On failure,
/// `abort` — or dropping the sink unfinished — aborts the upload so no parts stay billed.
pub(super) struct S3Sink {
    client: Client,
    bucket: String,
    key: String,
    full_key: String,
    /// The store's root prefix, to name copied sources.
    root: String,
    part_size: usize,
    buffer: BytesMut,
    upload_id: Option<String>,
    in_flight: JoinSet<Result<CompletedPart>>,
    parts: Vec<CompletedPart>,
    next_part: i32,
    size: u64,
}

impl S3Sink {
    pub(super) fn new(
        client: Client,
        bucket: String,
        key: String,
        full_key: String,
        root: String,
        part_size: usize,
    ) -> Self {
        Self {
            client,
            bucket,
            key,
            full_key,
            root,
            part_size,
            buffer: BytesMut::new(),
            upload_id: None,
            in_flight: JoinSet::new(),
            parts: Vec::new(),
            next_part: 1,
            size: 0,
        }
    }

    async fn start_part(&mut self, body: PartBody) -> Result<()> {
        let upload_id = match &self.upload_id {
            Some(id) => id.clone(),
            None => {
                let id = create_upload(&self.client, &self.bucket, &self.full_key).await?;
                self.upload_id = Some(id.clone());
                id
            }
        };
        while self.in_flight.len() >= PARTS_IN_FLIGHT {
            self.join_one().await?;
        }
        let number = self.next_part;
        self.next_part += 1;
        let (client, bucket, full_key, key) = (
            self.client.clone(),
            self.bucket.clone(),
            self.full_key.clone(),
            self.key.clone(),
        );
        self.in_flight.spawn(async move {
            let e_tag = match body {
                PartBody::Data(data) => client
                    .upload_part()
                    .bucket(bucket)
                    .key(full_key)
                    .upload_id(upload_id)
                    .part_number(number)
                    .body(ByteStream::from(data))
                    .send()
                    .await
                    .map_err(|e| store_error("UploadPart", &key, &e))?
                    .e_tag()
                    .map(String::from),
                PartBody::Copy { source, range } => client
                    .upload_part_copy()
                    .bucket(&bucket)
                    .key(full_key)
                    .upload_id(upload_id)
                    .part_number(number)
                    .copy_source(super::copy_source(&bucket, &source))
                    .copy_source_range(format!("bytes={}-{}", range.start, range.end - 1))
                    .send()
                    .await
                    .map_err(|e| store_error("UploadPartCopy", &key, &e))?
                    .copy_part_result()
                    .and_then(|r| r.e_tag())
                    .map(String::from),
            };
            Ok(CompletedPart::builder()
                .part_number(number)
                .set_e_tag(e_tag)
                .build())
        });
        Ok(())
    }

    /// Does the object `full_source` begin with the Parquet magic?
    async fn starts_with_magic(&self, full_source: &str) -> Result<bool> {
        let got = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(full_source)
            .range("bytes=0-3")
            .send()
            .await
            .map_err(|e| store_error("GetObject", full_source, &e))?;
        let head = got.body.collect().await.map_err(|e| Error::Store {
            operation: "GetObject",
            key: full_source.to_string(),
            message: e.to_string(),
        })?;
        Ok(head.into_bytes().as_ref() == PARQUET_MAGIC)
    }

    async fn join_one(&mut self) -> Result<()> {
        if let Some(joined) = self.in_flight.join_next().await {
            let part = joined.map_err(|e| Error::Store {
                operation: "UploadPart",
                key: self.key.clone(),
                message: format!("upload task failed: {e}"),
            })??;
            self.parts.push(part);
        }
        Ok(())
    }

    async fn finish_inner(&mut self) -> Result<ObjectMeta> {
        if self.upload_id.is_none() {
            let data = std::mem::take(&mut self.buffer).freeze();
            let response = self
                .client
                .put_object()
                .bucket(&self.bucket)
                .key(&self.full_key)
                .body(ByteStream::from(data))
                .send()
                .await
                .map_err(|e| store_error("PutObject", &self.key, &e))?;
            return Ok(ObjectMeta {
                key: self.key.clone(),
                size: self.size,
                version: response.e_tag().unwrap_or_default().to_string(),
                last_modified_ms: crate::support::clock::now_ms(),
            });
        }
        if !self.buffer.is_empty() {
            let data = std::mem::take(&mut self.buffer).freeze();
            self.start_part(PartBody::Data(data)).await?;
        }
        while !self.in_flight.is_empty() {
            self.join_one().await?;
        }
        let mut parts = std::mem::take(&mut self.parts);
        parts.sort_by_key(|p| p.part_number());
        let upload_id = self.upload_id.clone().unwrap_or_default();
        let version = complete_upload(
            &self.client,
            &self.bucket,
            &self.full_key,
            &upload_id,
            parts,
            false,
        )
        .await?;
        self.upload_id = None;
        Ok(ObjectMeta {
            key: self.key.clone(),
            size: self.size,
            version,
            last_modified_ms: crate::support::clock::now_ms(),
        })
    }

    async fn abort_inner(&mut self) {
        self.in_flight.abort_all();
        while self.in_flight.join_next().await.is_some() {}
        if let Some(upload_id) = self.upload_id.take() {
            abort_upload(&self.client, &self.bucket, &self.full_key, &upload_id).await;
        }
    }
}

#[async_trait]
impl ObjectSink for S3Sink {
    async fn write(&mut self, data: Bytes) -> Result<()> {
        self.size += data.len() as u64;
        self.buffer.extend_from_slice(&data);
        // What stays buffered is either everything since the last part or at least a minimum
        // part, so a copied range that follows can become a part of its own.
        while self.buffer.len() >= self.part_size + MIN_PART {
            let part = self.buffer.split_to(self.part_size).freeze();
            if let Err(e) = self.start_part(PartBody::Data(part)).await {
                self.abort_inner().await;
                return Err(e);
            }
        }
        Ok(())
    }

    /// `UploadPartCopy` of the range as one part, when S3 allows it here: the range is at least
    /// the 5 MiB part minimum and the bytes buffered before it are none or a full part. A file
    /// that starts with a copied first row group (the buffer holds only the Parquet magic and the
    /// source's row group starts right after its own magic) copies the source's magic with it.
    async fn copy_range(
        &mut self,
        source: &str,
        _version: &str,
        range: Range<u64>,
    ) -> Result<bool> {
        let len = range.end - range.start;
        if len < MIN_PART as u64 {
            return Ok(false);
        }
        let full_source = format!("{}{source}", self.root);
        let mut range = range;
        if self.buffer.len() >= MIN_PART {
            let data = std::mem::take(&mut self.buffer).freeze();
            if let Err(e) = self.start_part(PartBody::Data(data)).await {
                self.abort_inner().await;
                return Err(e);
            }
        } else if !self.buffer.is_empty() {
            let only_magic = self.size == PARQUET_MAGIC.len() as u64
                && self.buffer.as_ref() == PARQUET_MAGIC
                && range.start == PARQUET_MAGIC.len() as u64;
            if !(only_magic && self.starts_with_magic(&full_source).await?) {
                return Ok(false);
            }
            self.buffer.clear();
            self.size = 0;
            range.start = 0;
        }
        self.size += range.end - range.start;
        let body = PartBody::Copy {
            source: full_source,
            range,
        };
        if let Err(e) = self.start_part(body).await {
            self.abort_inner().await;
            return Err(e);
        }
        Ok(true)
    }

    async fn finish(mut self: Box<Self>) -> Result<ObjectMeta> {
        match self.finish_inner().await {
            Ok(meta) => Ok(meta),
            Err(e) => {
                self.abort_inner().await;
                Err(e)
            }
        }
    }

    async fn abort(mut self: Box<Self>) -> Result<()> {
        self.abort_inner().await;
        Ok(())
    }
}

impl Drop for S3Sink {
    fn drop(&mut self) {
        // Dropped mid-upload (an error or panic upstream): abort in the background so the
        // parts are not left billed. Outside a runtime the lifecycle rule cleans up.
        if let Some(upload_id) = self.upload_id.take() {
            self.in_flight.abort_all();
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                let (client, bucket, key) = (
                    self.client.clone(),
                    self.bucket.clone(),
                    self.full_key.clone(),
                );
                handle.spawn(async move { abort_upload(&client, &bucket, &key, &upload_id).await });
            }
        }
    }
}
