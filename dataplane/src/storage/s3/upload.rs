//! Upload sessions in the bucket: the session record, segment writing and composition.
//! The representation is described in the parent module's documentation.

use std::sync::Arc;
use std::time::SystemTime;

use aws_sdk_s3::primitives::ByteStream as S3Body;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::{Buf, Bytes};
use futures_util::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;

use super::bucket::{Bucket, Condition, FAN_OUT, Failure};
use super::{S3Storage, corrupt};
use crate::oci::{Digest, RepoName};
use crate::storage::buffers::{BufferPool, PooledBuffer};
use crate::storage::{ByteStream, Checkpoint, Result, StorageError, UploadId, UploadInfo};

/// Size of the parts an append streams to S3 (and the most it buffers before sending one).
pub const PART_SIZE: usize = 5 * 1024 * 1024;
/// Parts of one append uploading at once, besides the one being filled.
pub const PARTS_IN_FLIGHT: usize = 1;
/// S3's minimum size of every part of a multipart upload but the last.
const MIN_PART_SIZE: u64 = 5 * 1024 * 1024;
/// S3's maximum part number, and so the most parts of one multipart upload.
const MAX_PARTS: i32 = 10_000;
/// Largest range `UploadPartCopy` (and size `CopyObject`) accepts.
const MAX_COPY_SIZE: u64 = 5 * 1024 * 1024 * 1024;

/// The stored session record: the public fields plus the segments holding the bytes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct SessionRecord {
    #[serde(flatten)]
    pub(super) info: UploadInfo,
    /// The session bytes, in order; every segment but the last is at least 5 MiB.
    #[serde(default)]
    segments: Vec<Segment>,
}

/// One object holding a contiguous run of a session's bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Segment {
    /// Object name under `uploads/<id>/data/`.
    name: String,
    /// Bytes in the object.
    size: u64,
}

impl S3Storage {
    /// Loads a session's record and its ETag; `NotFound` for a missing session or one of
    /// another repository.
    pub(super) async fn session_load(
        &self,
        repo: &RepoName,
        id: &UploadId,
    ) -> Result<(SessionRecord, String)> {
        let key = self.keys.upload_info(id);
        let object = self.bucket.get(&key).await.map_err(StorageError::from)?;
        let record: SessionRecord =
            serde_json::from_slice(&object.data).map_err(|e| corrupt(&key, e))?;
        if record.info.repository != repo.as_str() || &record.info.id != id {
            return Err(StorageError::NotFound);
        }
        Ok((record, object.etag))
    }

    pub(super) async fn session_create(&self, repo: &RepoName) -> Result<UploadInfo> {
        let record = SessionRecord {
            info: UploadInfo {
                id: UploadId::generate(),
                repository: repo.as_str().to_owned(),
                size: 0,
                started_at: SystemTime::now(),
                checkpoint: None,
            },
            segments: Vec::new(),
        };
        let key = self.keys.upload_info(&record.info.id);
        let body = serde_json::to_vec(&record).map_err(|e| corrupt(&key, e))?;
        self.bucket
            .put(&key, Bytes::from(body), Condition::Absent)
            .await
            .map_err(StorageError::from)?;
        Ok(record.info)
    }

    pub(super) async fn session_append(
        &self,
        repo: &RepoName,
        id: &UploadId,
        offset: u64,
        mut body: ByteStream,
        checkpoint: Option<Checkpoint>,
    ) -> Result<u64> {
        let (mut record, etag) = self.session_load(repo, id).await?;
        if offset != record.info.size {
            return Err(StorageError::OffsetMismatch {
                requested: offset,
                current: record.info.size,
            });
        }
        let name = uuid::Uuid::new_v4().to_string();
        let mut writer = SegmentWriter::new(
            self.bucket.clone(),
            self.parts.clone(),
            self.keys.upload_segment(id, &name),
        );

        // A short tail becomes the start of the new segment, which replaces it.
        let absorbed = record
            .segments
            .last()
            .filter(|tail| tail.size < MIN_PART_SIZE)
            .cloned();
        let mut received = 0u64;
        let streamed: Result<()> = async {
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(StorageError::Body)?;
                if received == 0
                    && !chunk.is_empty()
                    && let Some(tail) = &absorbed
                {
                    let tail_key = self.keys.upload_segment(id, &tail.name);
                    match self.bucket.get_data(&tail_key).await {
                        Ok(object) => writer.write(object.data).await?,
                        // Replaced by a concurrent append that won.
                        Err(Failure::NotFound) => {
                            return Err(self.lost_race(repo, id, offset).await);
                        }
                        Err(other) => return Err(other.into()),
                    }
                }
                received += chunk.len() as u64;
                writer.write(chunk).await?;
            }
            Ok(())
        }
        .await;
        if let Err(e) = streamed {
            writer.abort().await;
            return Err(e);
        }
        if received == 0 {
            writer.abort().await;
            return Ok(record.info.size);
        }
        let size = match writer.finish().await {
            Ok(size) => size,
            Err(e) => {
                writer.abort().await;
                return Err(e);
            }
        };
        // From here on the segment may become referenced: never delete it from a drop.
        writer.disarm();

        if absorbed.is_some() {
            record.segments.pop();
        }
        record.segments.push(Segment {
            name: name.clone(),
            size,
        });
        record.info.size += received;
        record.info.checkpoint = checkpoint.map(|checkpoint| checkpoint());
        let key = self.keys.upload_info(id);
        let data = serde_json::to_vec(&record).map_err(|e| corrupt(&key, e))?;
        let published = self
            .bucket
            .put(&key, Bytes::from(data), Condition::Matches(&etag))
            .await;
        let segment_key = self.keys.upload_segment(id, &name);
        match published {
            Ok(_) => {}
            Err(Failure::NotFound) => {
                // The session was committed or cancelled meanwhile.
                self.bucket.delete(&segment_key).await.ok();
                return Err(StorageError::NotFound);
            }
            Err(failure) => {
                // A lost race (412), or an outcome the SDK could not tell (a retried write
                // whose first attempt may have landed): the record says which.
                match self.session_load(repo, id).await {
                    Ok((current, _)) if current.segments.iter().any(|s| s.name == name) => {}
                    Ok((current, _)) => {
                        self.bucket.delete(&segment_key).await.ok();
                        return Err(match failure {
                            Failure::Precondition => StorageError::OffsetMismatch {
                                requested: offset,
                                current: current.info.size,
                            },
                            other => other.into(),
                        });
                    }
                    Err(StorageError::NotFound) => {
                        self.bucket.delete(&segment_key).await.ok();
                        return Err(StorageError::NotFound);
                    }
                    // Unknown outcome: leave the segment, the session owns its prefix anyway.
                    Err(_) => return Err(failure.into()),
                }
            }
        }
        if let Some(tail) = absorbed {
            // Best effort: an unreferenced tail is removed with the session at the latest.
            let _ = self
                .bucket
                .delete(&self.keys.upload_segment(id, &tail.name))
                .await;
        }
        Ok(record.info.size)
    }

    /// The error of an append that lost a race at `offset`: the current size, or `NotFound`.
    async fn lost_race(&self, repo: &RepoName, id: &UploadId, offset: u64) -> StorageError {
        match self.session_load(repo, id).await {
            Ok((current, _)) => StorageError::OffsetMismatch {
                requested: offset,
                current: current.info.size,
            },
            Err(e) => e,
        }
    }

    pub(super) async fn session_read(&self, repo: &RepoName, id: &UploadId) -> Result<ByteStream> {
        let (record, _) = self.session_load(repo, id).await?;
        let bucket = self.bucket.clone();
        let keys: Vec<String> = record
            .segments
            .iter()
            .map(|s| self.keys.upload_segment(id, &s.name))
            .collect();
        let stream = futures_util::stream::iter(keys)
            .then(move |key| {
                let bucket = bucket.clone();
                async move {
                    bucket
                        .stream(&key, None)
                        .await
                        .map(|(stream, _)| stream)
                        .map_err(|f| std::io::Error::other(StorageError::from(f).to_string()))
                }
            })
            .try_flatten();
        Ok(Box::pin(stream))
    }

    pub(super) async fn session_commit(
        &self,
        repo: &RepoName,
        id: &UploadId,
        digest: &Digest,
    ) -> Result<u64> {
        let (record, _) = self.session_load(repo, id).await?;
        let blob_key = self.keys.blob(digest);
        if self.bucket.head(&blob_key).await?.is_none() {
            let sources: Vec<(String, u64)> = record
                .segments
                .iter()
                .map(|s| (self.keys.upload_segment(id, &s.name), s.size))
                .collect();
            compose(&self.bucket, &blob_key, &sources).await?;
            let stored = self.bucket.head(&blob_key).await?;
            if stored != Some(record.info.size) {
                return Err(StorageError::Backend(format!(
                    "S3 blob {blob_key} has size {stored:?} after composing, expected {}",
                    record.info.size
                )));
            }
        }
        self.bucket.delete(&self.keys.upload_info(id)).await?;
        self.purge(id).await?;
        Ok(record.info.size)
    }

    pub(super) async fn session_delete(&self, repo: &RepoName, id: &UploadId) -> Result<()> {
        self.session_load(repo, id).await?;
        self.bucket.delete(&self.keys.upload_info(id)).await?;
        self.purge(id).await
    }

    /// Removes everything under `uploads/<id>/`: objects and pending multipart uploads.
    async fn purge(&self, id: &UploadId) -> Result<()> {
        let prefix = self.keys.upload(id);
        self.bucket.abort_multipart_uploads(&prefix).await?;
        let listing = self.bucket.list(&prefix, None).await?;
        self.bucket.delete_all(listing.keys).await
    }

    pub(super) async fn sessions(&self) -> Result<Vec<UploadInfo>> {
        let root = self.keys.uploads_root();
        let listing = self.bucket.list(&root, Some("/")).await?;
        let records: Vec<Option<UploadInfo>> = futures_util::stream::iter(listing.prefixes)
            .map(|prefix| async move {
                let key = format!("{prefix}info");
                // A session removed since the listing is skipped.
                match self.bucket.get_optional(&key).await? {
                    None => Ok(None),
                    Some(object) => serde_json::from_slice::<SessionRecord>(&object.data)
                        .map(|r| Some(r.info))
                        .map_err(|e| corrupt(&key, e)),
                }
            })
            .buffer_unordered(FAN_OUT)
            .try_collect()
            .await?;
        Ok(records.into_iter().flatten().collect())
    }
}

/// Writes one segment object: a single `PutObject` when it fits in one part, otherwise a
/// multipart upload with a bounded number of parts in flight.
#[derive(Debug)]
struct SegmentWriter {
    bucket: Bucket,
    parts: Arc<BufferPool>,
    key: String,
    /// The part being filled, if any.
    buffer: Option<PooledBuffer>,
    upload_id: Option<String>,
    next_part: i32,
    in_flight: JoinSet<Result<CompletedPart>>,
    done: Vec<CompletedPart>,
    size: u64,
    /// Whether something may exist in S3 that a drop must clean up.
    armed: bool,
}

impl SegmentWriter {
    fn new(bucket: Bucket, parts: Arc<BufferPool>, key: String) -> Self {
        Self {
            bucket,
            parts,
            key,
            buffer: None,
            upload_id: None,
            next_part: 1,
            in_flight: JoinSet::new(),
            done: Vec::new(),
            size: 0,
            armed: false,
        }
    }

    /// Appends bytes, sending every full part.
    async fn write(&mut self, mut data: Bytes) -> Result<()> {
        self.size += data.len() as u64;
        while !data.is_empty() {
            if self.buffer.is_none() && data.len() >= PART_SIZE {
                // A whole part straight from the body, without copying.
                let part = data.split_to(PART_SIZE);
                self.send_part(part).await?;
                continue;
            }
            let buffer = match &mut self.buffer {
                Some(buffer) => buffer,
                None => self
                    .buffer
                    .insert(self.parts.take().map_err(StorageError::Io)?),
            };
            let took = buffer.fill(&data);
            data.advance(took);
            if let Some(full) = self.buffer.take_if(|b| b.is_full()) {
                self.send_part(full.freeze()).await?;
            }
        }
        Ok(())
    }

    /// Starts uploading one part, after waiting for a slot.
    async fn send_part(&mut self, part: Bytes) -> Result<()> {
        if self.next_part > MAX_PARTS {
            return Err(StorageError::Backend(format!(
                "upload chunk too large: more than {MAX_PARTS} parts of {PART_SIZE} bytes"
            )));
        }
        let upload_id = match &self.upload_id {
            Some(id) => id.clone(),
            None => {
                self.armed = true;
                let out = self
                    .bucket
                    .client
                    .create_multipart_upload()
                    .bucket(&self.bucket.name)
                    .key(&self.key)
                    .send()
                    .await
                    .map_err(|e| {
                        StorageError::from(self.bucket.failure(
                            "CreateMultipartUpload",
                            &self.key,
                            e,
                        ))
                    })?;
                let id = out.upload_id().unwrap_or_default().to_owned();
                self.upload_id = Some(id.clone());
                id
            }
        };
        while self.in_flight.len() >= PARTS_IN_FLIGHT {
            self.join_one().await?;
        }
        let number = self.next_part;
        self.next_part += 1;
        let (bucket, key) = (self.bucket.clone(), self.key.clone());
        self.in_flight.spawn(async move {
            let out = bucket
                .client
                .upload_part()
                .bucket(&bucket.name)
                .key(&key)
                .upload_id(upload_id)
                .part_number(number)
                .body(S3Body::from(part))
                .send()
                .await
                .map_err(|e| StorageError::from(bucket.failure("UploadPart", &key, e)))?;
            Ok(CompletedPart::builder()
                .part_number(number)
                .set_e_tag(out.e_tag().map(str::to_owned))
                .build())
        });
        Ok(())
    }

    async fn join_one(&mut self) -> Result<()> {
        if let Some(joined) = self.in_flight.join_next().await {
            let part = joined
                .map_err(|e| StorageError::Backend(format!("part upload task failed: {e}")))??;
            self.done.push(part);
        }
        Ok(())
    }

    /// Sends what is buffered and makes the segment object exist. Returns its size.
    async fn finish(&mut self) -> Result<u64> {
        let rest = self
            .buffer
            .take()
            .filter(|b| !b.is_empty())
            .map_or_else(Bytes::new, PooledBuffer::freeze);
        if self.upload_id.is_none() {
            self.armed = true;
            self.bucket
                .put(&self.key, rest, Condition::None)
                .await
                .map_err(StorageError::from)?;
            return Ok(self.size);
        }
        if !rest.is_empty() {
            self.send_part(rest).await?;
        }
        while !self.in_flight.is_empty() {
            self.join_one().await?;
        }
        let mut parts = std::mem::take(&mut self.done);
        parts.sort_by_key(|p| p.part_number());
        self.bucket
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket.name)
            .key(&self.key)
            .upload_id(self.upload_id.as_deref().unwrap_or_default())
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| {
                StorageError::from(self.bucket.failure("CompleteMultipartUpload", &self.key, e))
            })?;
        Ok(self.size)
    }

    /// Removes whatever this writer created, waiting for it.
    async fn abort(&mut self) {
        self.in_flight.abort_all();
        while self.in_flight.join_next().await.is_some() {}
        if self.armed {
            self.armed = false;
            cleanup(self.bucket.clone(), self.key.clone(), self.upload_id.take()).await;
        }
    }

    /// The segment is handed over to the session record: a drop no longer removes it.
    fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for SegmentWriter {
    fn drop(&mut self) {
        // Dropped midway (the append's future was dropped): clean up in the background.
        if self.armed
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let (bucket, key, upload_id) =
                (self.bucket.clone(), self.key.clone(), self.upload_id.take());
            runtime.spawn(cleanup(bucket, key, upload_id));
        }
    }
}

/// Aborts a segment's multipart upload and deletes its object, logging failures (the session's
/// removal sweeps its prefix again).
async fn cleanup(bucket: Bucket, key: String, upload_id: Option<String>) {
    if let Some(id) = upload_id
        && let Err(e) = bucket.abort_multipart(&key, &id).await
    {
        tracing::warn!(%key, error = %e, "aborting an abandoned segment upload failed");
    }
    if let Err(e) = bucket.delete(&key).await {
        tracing::warn!(%key, error = %e, "deleting an abandoned segment failed");
    }
}

/// Publishes the concatenation of `sources` (key, size) at `target`, server side.
pub(super) async fn compose(
    bucket: &Bucket,
    target: &str,
    sources: &[(String, u64)],
) -> Result<()> {
    match sources {
        [] => match bucket.put(target, Bytes::new(), Condition::Absent).await {
            Ok(_) | Err(Failure::Precondition) => Ok(()),
            Err(other) => Err(other.into()),
        },
        [(key, size)] if *size <= MAX_COPY_SIZE => {
            bucket
                .client
                .copy_object()
                .bucket(&bucket.name)
                .key(target)
                .copy_source(bucket.copy_source(key))
                .send()
                .await
                .map_err(|e| StorageError::from(bucket.failure("CopyObject", target, e)))?;
            Ok(())
        }
        _ => compose_multipart(bucket, target, sources).await,
    }
}

/// The byte ranges (`start..=end`) of one source copied as parts: balanced pieces of at most
/// [`MAX_COPY_SIZE`], so no piece but a source's only one is small.
fn copy_ranges(size: u64) -> Vec<(u64, u64)> {
    if size == 0 {
        return Vec::new();
    }
    let pieces = size.div_ceil(MAX_COPY_SIZE);
    let piece = size.div_ceil(pieces);
    (0..pieces)
        .map(|i| (i * piece, ((i + 1) * piece).min(size) - 1))
        .collect()
}

async fn compose_multipart(bucket: &Bucket, target: &str, sources: &[(String, u64)]) -> Result<()> {
    let parts: Vec<(i32, String, String)> = sources
        .iter()
        .flat_map(|(key, size)| {
            copy_ranges(*size)
                .into_iter()
                .map(move |(start, end)| (key.clone(), format!("bytes={start}-{end}")))
        })
        .zip(1..)
        .map(|((key, range), number)| (number, key, range))
        .collect();
    if parts.len() > MAX_PARTS as usize {
        return Err(StorageError::Backend(format!(
            "cannot compose {target} from {} parts (S3 allows {MAX_PARTS})",
            parts.len()
        )));
    }
    let created = bucket
        .client
        .create_multipart_upload()
        .bucket(&bucket.name)
        .key(target)
        .send()
        .await
        .map_err(|e| StorageError::from(bucket.failure("CreateMultipartUpload", target, e)))?;
    let upload_id = created.upload_id().unwrap_or_default().to_owned();
    let result: Result<()> = async {
        let mut completed: Vec<CompletedPart> = futures_util::stream::iter(parts)
            .map(|(number, key, range)| {
                let upload_id = &upload_id;
                async move {
                    let out = bucket
                        .client
                        .upload_part_copy()
                        .bucket(&bucket.name)
                        .key(target)
                        .upload_id(upload_id)
                        .part_number(number)
                        .copy_source(bucket.copy_source(&key))
                        .copy_source_range(range)
                        .send()
                        .await
                        .map_err(|e| {
                            StorageError::from(bucket.failure("UploadPartCopy", target, e))
                        })?;
                    let etag = out
                        .copy_part_result()
                        .and_then(|r| r.e_tag())
                        .map(str::to_owned);
                    Ok::<_, StorageError>(
                        CompletedPart::builder()
                            .part_number(number)
                            .set_e_tag(etag)
                            .build(),
                    )
                }
            })
            .buffer_unordered(FAN_OUT / 2)
            .try_collect()
            .await?;
        completed.sort_by_key(|p| p.part_number());
        bucket
            .client
            .complete_multipart_upload()
            .bucket(&bucket.name)
            .key(target)
            .upload_id(&upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(completed))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| {
                StorageError::from(bucket.failure("CompleteMultipartUpload", target, e))
            })?;
        Ok(())
    }
    .await;
    if result.is_err()
        && let Err(e) = bucket.abort_multipart(target, &upload_id).await
    {
        tracing::warn!(key = %target, error = %e, "aborting a failed blob composition failed");
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_ranges_are_balanced_and_cover_the_source() {
        assert!(copy_ranges(0).is_empty());
        assert_eq!(copy_ranges(10), vec![(0, 9)]);
        assert_eq!(copy_ranges(MAX_COPY_SIZE), vec![(0, MAX_COPY_SIZE - 1)]);
        let size = MAX_COPY_SIZE + 1;
        let ranges = copy_ranges(size);
        assert_eq!(ranges.len(), 2);
        assert_eq!(ranges[0].0, 0);
        assert_eq!(ranges[1].1, size - 1);
        assert_eq!(ranges[0].1 + 1, ranges[1].0);
        assert!(ranges.iter().all(|(s, e)| e - s + 1 >= MIN_PART_SIZE));
    }

    #[test]
    fn record_round_trips_with_the_public_fields() {
        let record = SessionRecord {
            info: UploadInfo {
                id: UploadId::generate(),
                repository: "a/b".to_owned(),
                size: 7,
                started_at: SystemTime::now(),
                checkpoint: Some("sha256:7:00".to_owned()),
            },
            segments: vec![Segment {
                name: "s".to_owned(),
                size: 7,
            }],
        };
        let json = serde_json::to_value(&record).unwrap();
        assert_eq!(json["repository"], "a/b");
        assert_eq!(json["segments"][0]["size"], 7);
        let back: SessionRecord = serde_json::from_value(json).unwrap();
        assert_eq!(back.info, record.info);
        assert_eq!(back.segments, record.segments);
    }
}
