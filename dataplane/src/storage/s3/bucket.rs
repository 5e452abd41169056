//! Thin typed wrappers over the S3 calls the backend makes, with one error mapping.

use std::collections::HashMap;
use std::error::Error as StdError;
use std::io;
use std::ops::Range;
use std::time::SystemTime;

use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream as S3Body;
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};

use crate::storage::{ByteStream, StorageError};

/// How many S3 calls one operation issues at once when it fans out (deletes, reads of small
/// records, part copies).
pub(super) const FAN_OUT: usize = 8;

/// Why a call failed, as far as the backend's logic cares.
#[derive(Debug)]
pub(super) enum Failure {
    /// 404: the key (or the multipart upload) does not exist.
    NotFound,
    /// 412: an `If-Match` / `If-None-Match` condition did not hold.
    Precondition,
    /// 416: the requested range does not fit the object.
    RangeNotSatisfiable,
    /// Anything else, already mapped to a storage error with a clear message.
    Other(StorageError),
}

impl From<Failure> for StorageError {
    fn from(failure: Failure) -> Self {
        match failure {
            Failure::NotFound => StorageError::NotFound,
            Failure::Precondition => {
                StorageError::Backend("S3 conditional write failed repeatedly".to_owned())
            }
            Failure::RangeNotSatisfiable => {
                StorageError::Backend("S3 refused a byte range".to_owned())
            }
            Failure::Other(e) => e,
        }
    }
}

/// Result of a single S3 call.
pub(super) type CallResult<T> = std::result::Result<T, Failure>;

/// Condition of a conditional `PutObject`.
#[derive(Debug, Clone, Copy)]
pub(super) enum Condition<'a> {
    /// Unconditional: the last writer wins.
    None,
    /// `If-None-Match: *`: only if the key does not exist.
    Absent,
    /// `If-Match: <etag>`: only if the object is still this version.
    Matches(&'a str),
}

/// An object read whole into memory, with its version.
#[derive(Debug)]
pub(super) struct Object {
    pub(super) data: Bytes,
    pub(super) etag: String,
    /// The object's user metadata (`x-amz-meta-*`, names without the prefix).
    pub(super) metadata: HashMap<String, String>,
}

/// What a `HeadObject` tells of an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Stamp {
    pub(super) size: u64,
    pub(super) etag: String,
    pub(super) modified: SystemTime,
}

/// A listing page's worth of results, accumulated over every page.
#[derive(Debug, Default)]
pub(super) struct Listing {
    /// Keys of the objects found.
    pub(super) keys: Vec<String>,
    /// When each of `keys` was last written, in the same order.
    pub(super) modified: Vec<SystemTime>,
    /// The size of each of `keys`, in the same order.
    pub(super) sizes: Vec<u64>,
    /// Common prefixes (only when listing with a delimiter).
    pub(super) prefixes: Vec<String>,
}

/// One bucket, through one SDK client.
#[derive(Debug, Clone)]
pub(super) struct Bucket {
    /// The client for transfers (blobs, segments, parts, copies).
    pub(super) client: Client,
    /// The client for small records (see `S3Storage::build`).
    pub(super) records: Client,
    /// Reads of small records around the SDK, when the bucket's URL is unambiguous.
    pub(super) direct: Option<std::sync::Arc<super::direct::DirectReads>>,
    pub(super) name: String,
}

impl Bucket {
    /// Maps an SDK error to a [`Failure`], naming the operation and key in the message.
    pub(super) fn failure<E>(&self, op: &str, key: &str, err: SdkError<E, HttpResponse>) -> Failure
    where
        E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
    {
        if let SdkError::ServiceError(service) = &err
            && service.err().code() == Some("NoSuchBucket")
        {
            // A configuration or infrastructure fault, not a missing object.
            return Failure::Other(self.error(op, key, &err));
        }
        let status = err.raw_response().map(|r| r.status().as_u16());
        match status {
            Some(404) => return Failure::NotFound,
            Some(412) => return Failure::Precondition,
            Some(416) => return Failure::RangeNotSatisfiable,
            _ => {}
        }
        if let SdkError::ServiceError(service) = &err {
            // MinIO and S3 name a missing multipart upload or key by code, too.
            match service.err().code() {
                Some("NoSuchKey" | "NoSuchUpload") => return Failure::NotFound,
                // AWS answers 409 when a conditional write races another one: retry as a 412.
                Some("ConditionalRequestConflict") => return Failure::Precondition,
                _ => {}
            }
        }
        Failure::Other(self.error(op, key, &err))
    }

    /// A storage error naming the operation, the key and the cause.
    pub(super) fn error<E>(
        &self,
        op: &str,
        key: &str,
        err: &SdkError<E, HttpResponse>,
    ) -> StorageError
    where
        E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
    {
        let transient = match err {
            SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) => true,
            SdkError::ServiceError(service) => {
                matches!(service.raw().status().as_u16(), 500 | 502 | 503 | 504)
            }
            _ => false,
        };
        let cause = match err {
            SdkError::TimeoutError(_) => "timed out".to_owned(),
            SdkError::DispatchFailure(failure) if failure.is_timeout() => {
                "timed out connecting to the S3 endpoint".to_owned()
            }
            SdkError::DispatchFailure(_) => {
                format!("cannot reach the S3 endpoint: {}", DisplayErrorContext(err))
            }
            SdkError::ServiceError(service) => {
                let status = service.raw().status().as_u16();
                let e = service.err();
                format!(
                    "HTTP {status} {}: {}",
                    e.code().unwrap_or("(no code)"),
                    e.message().unwrap_or("(no message)")
                )
            }
            other => DisplayErrorContext(other).to_string(),
        };
        let message = format!("S3 {op} of s3://{}/{key} failed: {cause}", self.name);
        if transient {
            StorageError::Unavailable(message)
        } else {
            StorageError::Backend(message)
        }
    }

    /// Size of an object, or `None` if it does not exist.
    pub(super) async fn head(&self, key: &str) -> Result<Option<u64>, StorageError> {
        if let Some(direct) = &self.direct {
            return direct.head(key).await;
        }
        Ok(self.stamp(key).await?.map(|stamp| stamp.size))
    }

    /// The size, ETag and modification time of an object, or `None` if it does not exist;
    /// always asked of the bucket through the SDK (never around it), for the collector's checks.
    pub(super) async fn stamp(&self, key: &str) -> Result<Option<Stamp>, StorageError> {
        match self
            .records
            .head_object()
            .bucket(&self.name)
            .key(key)
            .send()
            .await
        {
            Ok(out) => Ok(Some(Stamp {
                size: content_length(out.content_length()),
                etag: out.e_tag().unwrap_or_default().to_owned(),
                modified: out
                    .last_modified()
                    .and_then(|t| SystemTime::try_from(*t).ok())
                    .unwrap_or(SystemTime::UNIX_EPOCH),
            })),
            Err(e) => match self.failure("HeadObject", key, e) {
                Failure::NotFound => Ok(None),
                other => Err(other.into()),
            },
        }
    }

    /// Reads a small record whole, with its ETag.
    pub(super) async fn get(&self, key: &str) -> CallResult<Object> {
        if let Some(direct) = &self.direct {
            return direct.get(key).await;
        }
        self.get_with(&self.records, key).await
    }

    /// Reads a small part of a blob's bytes whole (an upload's short tail), with the
    /// transfer client's checksum validation.
    pub(super) async fn get_data(&self, key: &str) -> CallResult<Object> {
        self.get_with(&self.client, key).await
    }

    async fn get_with(&self, client: &Client, key: &str) -> CallResult<Object> {
        let mut out = client
            .get_object()
            .bucket(&self.name)
            .key(key)
            .send()
            .await
            .map_err(|e| self.failure("GetObject", key, e))?;
        let etag = out.e_tag().unwrap_or_default().to_owned();
        let metadata = out.metadata.take().unwrap_or_default();
        let data = out
            .body
            .collect()
            .await
            .map_err(|e| {
                Failure::Other(StorageError::Backend(format!(
                    "S3 GetObject of s3://{}/{key} failed while reading: {e}",
                    self.name
                )))
            })?
            .into_bytes();
        Ok(Object {
            data,
            etag,
            metadata,
        })
    }

    /// Reads a small object whole, or `None` if it does not exist.
    pub(super) async fn get_optional(&self, key: &str) -> Result<Option<Object>, StorageError> {
        match self.get(key).await {
            Ok(object) => Ok(Some(object)),
            Err(Failure::NotFound) => Ok(None),
            Err(other) => Err(other.into()),
        }
    }

    /// Opens a stream over an object, or over `range` of it. Returns the stream and the
    /// object's total size.
    pub(super) async fn stream(
        &self,
        key: &str,
        range: Option<Range<u64>>,
    ) -> CallResult<(ByteStream, u64)> {
        let mut request = self.client.get_object().bucket(&self.name).key(key);
        if let Some(range) = &range {
            // HTTP ranges are inclusive; callers never pass an empty range here.
            request = request.range(format!("bytes={}-{}", range.start, range.end - 1));
        }
        let out = request
            .send()
            .await
            .map_err(|e| self.failure("GetObject", key, e))?;
        let total = match (&range, out.content_range()) {
            (Some(_), Some(content_range)) => parse_total(content_range).ok_or_else(|| {
                Failure::Other(StorageError::Backend(format!(
                    "S3 GetObject of s3://{}/{key}: unexpected Content-Range {content_range:?}",
                    self.name
                )))
            })?,
            _ => content_length(out.content_length()),
        };
        Ok((body_stream(out.body, key.to_owned()), total))
    }

    /// Writes a small object, under `condition`. Returns the new ETag.
    pub(super) async fn put(
        &self,
        key: &str,
        data: Bytes,
        condition: Condition<'_>,
    ) -> CallResult<String> {
        self.put_with_metadata(key, data, condition, None).await
    }

    /// [`Bucket::put`], with user metadata stored alongside (`x-amz-meta-*`).
    pub(super) async fn put_with_metadata(
        &self,
        key: &str,
        data: Bytes,
        condition: Condition<'_>,
        metadata: Option<HashMap<String, String>>,
    ) -> CallResult<String> {
        let mut request = self
            .records
            .put_object()
            .bucket(&self.name)
            .key(key)
            .set_metadata(metadata)
            .body(S3Body::from(data));
        match condition {
            Condition::None => {}
            Condition::Absent => request = request.if_none_match("*"),
            Condition::Matches(etag) => request = request.if_match(etag),
        }
        let out = request
            .send()
            .await
            .map_err(|e| self.failure("PutObject", key, e))?;
        Ok(out.e_tag().unwrap_or_default().to_owned())
    }

    /// Deletes an object; deleting an absent key succeeds.
    pub(super) async fn delete(&self, key: &str) -> Result<(), StorageError> {
        self.delete_matching(key, None).await.map(drop)
    }

    /// Deletes an object only while its ETag is `etag` (`If-Match`); returns whether it did
    /// (`false`: it changed or went since).
    pub(super) async fn delete_if_match(
        &self,
        key: &str,
        etag: &str,
    ) -> Result<bool, StorageError> {
        self.delete_matching(key, Some(etag)).await
    }

    /// `DeleteObject`, conditional on `etag` when given; `false` when the object is absent or
    /// the condition failed.
    async fn delete_matching(&self, key: &str, etag: Option<&str>) -> Result<bool, StorageError> {
        match self
            .records
            .delete_object()
            .bucket(&self.name)
            .key(key)
            .set_if_match(etag.map(str::to_owned))
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(e) => match self.failure("DeleteObject", key, e) {
                Failure::NotFound | Failure::Precondition => Ok(false),
                other => Err(other.into()),
            },
        }
    }

    /// Deletes objects, a few at a time.
    pub(super) async fn delete_all(&self, keys: Vec<String>) -> Result<(), StorageError> {
        futures_util::stream::iter(keys)
            .map(|key| async move { self.delete(&key).await })
            .buffer_unordered(FAN_OUT)
            .try_collect::<()>()
            .await
    }

    /// Lists every key (and, with a delimiter, every common prefix) under `prefix`, over all
    /// pages.
    pub(super) async fn list(
        &self,
        prefix: &str,
        delimiter: Option<&str>,
    ) -> Result<Listing, StorageError> {
        let mut listing = Listing::default();
        let mut token: Option<String> = None;
        loop {
            let out = self
                .client
                .list_objects_v2()
                .bucket(&self.name)
                .prefix(prefix)
                .set_delimiter(delimiter.map(str::to_owned))
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| StorageError::from(self.failure("ListObjectsV2", prefix, e)))?;
            for object in out.contents() {
                if let Some(key) = object.key() {
                    listing.keys.push(key.to_owned());
                    let modified = object
                        .last_modified()
                        .and_then(|t| SystemTime::try_from(*t).ok())
                        .unwrap_or(SystemTime::UNIX_EPOCH);
                    listing.modified.push(modified);
                    listing.sizes.push(
                        object
                            .size()
                            .and_then(|n| u64::try_from(n).ok())
                            .unwrap_or(0),
                    );
                }
            }
            listing.prefixes.extend(
                out.common_prefixes()
                    .iter()
                    .filter_map(|p| p.prefix())
                    .map(str::to_owned),
            );
            match out.next_continuation_token() {
                Some(next) if out.is_truncated() == Some(true) => token = Some(next.to_owned()),
                _ => break,
            }
        }
        Ok(listing)
    }

    /// At most `limit` keys under `prefix` that sort after `start_after` (a whole key), in
    /// the bucket's order (bytewise), asking for no more pages than that takes.
    pub(super) async fn list_after(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StorageError> {
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        while keys.len() < limit {
            let page = i32::try_from(limit - keys.len()).map_or(1000, |left| left.min(1000));
            let out = self
                .client
                .list_objects_v2()
                .bucket(&self.name)
                .prefix(prefix)
                .set_start_after(start_after.map(str::to_owned))
                .max_keys(page)
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| StorageError::from(self.failure("ListObjectsV2", prefix, e)))?;
            keys.extend(
                out.contents()
                    .iter()
                    .filter_map(|o| o.key())
                    .map(str::to_owned),
            );
            match out.next_continuation_token() {
                Some(next) if out.is_truncated() == Some(true) => token = Some(next.to_owned()),
                _ => break,
            }
        }
        keys.truncate(limit);
        Ok(keys)
    }

    /// Aborts every pending multipart upload whose key starts with `prefix`.
    pub(super) async fn abort_multipart_uploads(&self, prefix: &str) -> Result<(), StorageError> {
        let mut pending = Vec::new();
        let (mut key_marker, mut id_marker) = (None::<String>, None::<String>);
        loop {
            let out = self
                .client
                .list_multipart_uploads()
                .bucket(&self.name)
                .prefix(prefix)
                .set_key_marker(key_marker.take())
                .set_upload_id_marker(id_marker.take())
                .send()
                .await
                .map_err(|e| StorageError::from(self.failure("ListMultipartUploads", prefix, e)))?;
            for upload in out.uploads() {
                if let (Some(key), Some(id)) = (upload.key(), upload.upload_id()) {
                    pending.push((key.to_owned(), id.to_owned()));
                }
            }
            if out.is_truncated() != Some(true) {
                break;
            }
            key_marker = out.next_key_marker().map(str::to_owned);
            id_marker = out.next_upload_id_marker().map(str::to_owned);
            if key_marker.is_none() {
                break;
            }
        }
        futures_util::stream::iter(pending)
            .map(|(key, id)| async move { self.abort_multipart(&key, &id).await })
            .buffer_unordered(FAN_OUT)
            .try_collect::<()>()
            .await
    }

    /// Aborts one multipart upload; an upload that is already gone is fine.
    pub(super) async fn abort_multipart(
        &self,
        key: &str,
        upload_id: &str,
    ) -> Result<(), StorageError> {
        match self
            .client
            .abort_multipart_upload()
            .bucket(&self.name)
            .key(key)
            .upload_id(upload_id)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => match self.failure("AbortMultipartUpload", key, e) {
                Failure::NotFound => Ok(()),
                other => Err(other.into()),
            },
        }
    }

    /// The `x-amz-copy-source` value naming `key` in this bucket (URL-encoded).
    pub(super) fn copy_source(&self, key: &str) -> String {
        format!("{}/{}", self.name, encode_key(key))
    }
}

/// A non-negative content length (S3 never reports a negative one).
fn content_length(length: Option<i64>) -> u64 {
    length.and_then(|l| u64::try_from(l).ok()).unwrap_or(0)
}

/// The total size from a `Content-Range: bytes a-b/total` header.
fn parse_total(content_range: &str) -> Option<u64> {
    content_range.rsplit_once('/')?.1.trim().parse().ok()
}

/// Adapts an SDK body into the storage layer's byte stream, with I/O errors naming the key.
fn body_stream(body: S3Body, key: String) -> ByteStream {
    Box::pin(futures_util::stream::try_unfold(
        (body, key),
        |(mut body, key)| async move {
            match body.try_next().await {
                Ok(Some(chunk)) => Ok(Some((chunk, (body, key)))),
                Ok(None) => Ok(None),
                Err(e) => Err(io::Error::other(format!(
                    "reading S3 object {key} failed: {e}"
                ))),
            }
        },
    ))
}

/// Percent-encodes a key for `x-amz-copy-source` and request paths (S3 signs the path
/// encoded once), keeping `/` and unreserved characters.
pub(super) fn encode_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for byte in key.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_total() {
        assert_eq!(parse_total("bytes 10-19/1024"), Some(1024));
        assert_eq!(parse_total("bytes 0-0/1"), Some(1));
        assert_eq!(parse_total("garbage"), None);
    }

    #[test]
    fn copy_source_keys_are_encoded() {
        assert_eq!(encode_key("a/b-c_d.e~f"), "a/b-c_d.e~f");
        assert_eq!(encode_key("a b/ü"), "a%20b/%C3%BC");
    }
}
