//! S3 backend: many stateless replicas of the data plane on one bucket.
//!
//! Every replica talks to the bucket only; nothing a request depends on lives in a replica's
//! memory, so any replica can serve any request, including the next chunk of an upload that
//! another replica started.
//!
//! # Key layout
//!
//! Exactly the tree documented in [`crate::storage`], each path being an object key under the
//! configured prefix (`<prefix>/blobs/sha256/ab/ab12...`). The prefix is normalized: leading
//! and trailing `/` are ignored, and an empty prefix puts the tree at the bucket root. Small
//! records are single objects:
//!
//! | key                                           | body                              |
//! |-----------------------------------------------|-----------------------------------|
//! | `blobs/<alg>/<hex[0..2]>/<hex>`               | the blob bytes                    |
//! | `repositories/<name>/_layers/<alg>/<hex>`     | empty (presence is the link)      |
//! | `repositories/<name>/_manifests/<alg>/<hex>`  | JSON [`ManifestMeta`]             |
//! | `repositories/<name>/_tags/<tag>`             | the digest, as text               |
//! | `repositories/<name>/_referrers/<alg>/<hex>/<alg>/<hex>` | the descriptor JSON    |
//! | `uploads/<id>/info`                           | JSON session record (see below)   |
//! | `uploads/<id>/data/<segment>`                 | the session bytes, in segments    |
//!
//! S3 has no directories, so a "directory" exists exactly while some key lies under it; a
//! repository disappears from the catalog when its last `_manifests/` record is removed.
//!
//! # Upload sessions
//!
//! The filesystem's single `uploads/<id>/data` file becomes an ordered list of *segment*
//! objects `uploads/<id>/data/<uuid>`, named in the session record `uploads/<id>/info`
//! (the [`UploadInfo`] fields plus `segments: [{name, size}]`). The session size is the sum of
//! the segment sizes; the bytes received so far are the segments, concatenated.
//!
//! An append (one `PATCH`, on any replica):
//!
//! 1. reads the record and its ETag, and checks the offset against the size;
//! 2. streams the body into a **new** segment with a fresh name: bytes are buffered into parts
//!    of [`PART_SIZE`] (S3's 5 MiB minimum) and sent as parts of a multipart upload, at most
//!    [`PARTS_IN_FLIGHT`] part uploading while the next one fills, so an append holds at most
//!    `(PARTS_IN_FLIGHT + 1) * PART_SIZE` bytes (10 MiB) of its own whatever its length; a
//!    body shorter than one part becomes a single `PutObject`; part buffers are reused memory
//!    maps (see `storage::buffers`), so many appends do not fragment the allocator;
//! 3. if the session's last segment is shorter than S3's 5 MiB minimum part size (a *short
//!    tail*, left by a small chunk), it is read first and becomes the start of the new segment,
//!    which replaces it; so every segment but the last is at least 5 MiB, as a multipart
//!    composition needs, and sequences of small chunks work;
//! 4. publishes the new segment list, and the caller's checkpoint (the registry's hash state
//!    after these bytes, so the next chunk may land on any replica without re-reading the
//!    session), with a conditional `PutObject` of the record
//!    (`If-Match: <etag read in step 1>`). Of two appends racing at one offset, on one replica
//!    or several, exactly one write succeeds; the other deletes its segment and reports
//!    `OffsetMismatch` with the winner's size. A replaced short tail is deleted afterwards.
//!
//! An append whose body fails, whose storage call fails, or whose future is dropped never
//! touches the record: its multipart upload is aborted and its segment deleted (awaited on
//! errors, from a spawned task when dropped). A segment name is random, so two appends never
//! write the same object or multipart upload.
//!
//! A commit, called once the registry layer verified the digest over the session bytes,
//! publishes the blob **server side**: a single segment is copied with `CopyObject`, several
//! segments (or one over 5 GiB) are composed with a multipart upload on the blob key whose
//! parts are `UploadPartCopy` ranges of the segments. The blob key appears atomically when
//! `CopyObject` or `CompleteMultipartUpload` returns, never partially. The cost is one server
//! side copy of the blob's bytes inside S3 (no transfer through the replica), plus a request
//! per segment part; in exchange each append streams straight to S3 and a session needs no
//! final re-upload. A blob that already exists is not copied again. The session record is then
//! deleted, and with it every segment and pending multipart upload under `uploads/<id>/`.
//!
//! A cancelled session (`upload_delete`) is removed the same way: record, then segments, then
//! any multipart upload still pending under its prefix. Limits: one append may carry at most
//! 10 000 parts (about 48 GiB) and a blob at most 10 000 composed parts. A replica crash
//! between deleting a record and its segments leaves unreferenced objects under `uploads/`;
//! a bucket lifecycle rule (expire `uploads/` after some days, abort incomplete multipart
//! uploads after a day) is the recommended backstop.
//!
//! # Races and faults
//!
//! Records that are read, modified and written (session records, tags) use conditional writes
//! with retries; blobs are written with `If-None-Match: *` so existing content is never
//! replaced. The SDK retries transient failures (throttling, 5xx, connection errors) with
//! exponential backoff; timeouts bound connecting, waiting for a response and each whole
//! operation. Every S3 failure names the operation, the key and the cause: an unreachable
//! endpoint, a timeout or an S3 5xx becomes [`StorageError::Unavailable`] (answered 503, retry
//! later), anything else [`StorageError::Backend`]. [`Storage::check`] issues a `HeadBucket` with a short timeout, so readiness
//! fails quickly while the bucket is unreachable.

mod bucket;
mod cache;
mod collect;
mod direct;
mod keys;
mod requests;
mod upload;

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
    StalledStreamProtectionConfig,
};
use aws_sdk_s3::presigning::PresigningConfig;
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};

use self::bucket::{Bucket, Condition, FAN_OUT, Failure, Object};
use self::cache::{Fact, FactCache};
use self::keys::{Keys, digest_in_key};
use self::requests::RequestCounts;
use super::buffers::BufferPool;
use super::{
    ByteStream, Checkpoint, ManifestMeta, ManifestRecord, PullTarget, RecordKey, Result, Storage,
    StorageError, StoredBlob, TagRecord, UploadId, UploadInfo, VersionedRecord,
};
use crate::caches::CacheMemory;
use crate::oci::{Digest, RepoName, Tag};

pub use self::upload::{PART_SIZE, PARTS_IN_FLIGHT};

/// Time allowed to open a connection to the endpoint.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Time allowed between sending a request and the first byte of the response.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Upper bound on one whole operation, retries included (large server-side copies included).
const OPERATION_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// Attempts per operation for transient failures (the first one included).
const MAX_ATTEMPTS: u32 = 4;
/// Time allowed for the readiness probe.
const CHECK_TIMEOUT: Duration = Duration::from_secs(3);
/// Region signed for when talking to an S3-compatible endpoint and none is configured.
const DEFAULT_REGION: &str = "us-east-1";
/// Attempts of a compare-and-swap on a record before giving up.
const CAS_ATTEMPTS: u32 = 8;
/// Part buffers kept for reuse when no append needs them (one append's worth: the part being
/// filled and the one in flight).
const IDLE_PART_BUFFERS: usize = 1 + upload::PARTS_IN_FLIGHT;
/// Tag records read at once when a manifest deleted by digest takes its tags with it.
const TAG_READS_AT_ONCE: usize = 16;

/// Where the S3 backend keeps its data. Credentials are not part of it: they come from the
/// usual AWS sources (environment, shared profile, web identity, container or instance role).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Settings {
    /// Bucket name (the bucket must exist).
    pub bucket: String,
    /// Region the bucket is in (and that requests are signed for); empty to take it from the
    /// AWS default chain (`AWS_REGION`, profile), or `us-east-1` with a custom endpoint.
    pub region: String,
    /// Endpoint URL for S3-compatible servers (`http://127.0.0.1:9000`); `None` for AWS.
    pub endpoint: Option<String>,
    /// Key prefix under which the whole layout lives (`""` for the bucket root).
    pub prefix: String,
    /// Address the bucket in the path (`endpoint/bucket/key`) rather than the host name.
    pub force_path_style: bool,
    /// Lifetime of presigned download URLs; `Some` makes [`Storage::blob_download_url`]
    /// hand them out, `None` keeps downloads streaming through the server.
    pub redirect_ttl: Option<Duration>,
    /// The cache memory whose share holds the bucket's immutable facts.
    pub cache_memory: CacheMemory,
}

/// Static credentials, for callers that do not use the AWS default chain (tests, tools).
#[derive(Clone, PartialEq, Eq)]
pub struct S3Credentials {
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: String,
}

impl std::fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .finish()
    }
}

/// User metadata of a tag record naming the media type of the manifest it points at.
const TAG_MEDIA_TYPE: &str = "manifest-media-type";
/// User metadata of a tag record giving the size of the manifest it points at.
const TAG_SIZE: &str = "manifest-size";

/// A [`Storage`] backend on an S3 bucket, shareable by any number of replicas.
#[derive(Debug, Clone)]
pub struct S3Storage {
    bucket: Bucket,
    keys: Keys,
    /// Immutable facts already read or written (see [`cache`]).
    facts: Arc<FactCache>,
    /// Requests sent and cache lookups, for metrics and tests.
    counts: RequestCounts,
    /// Buffers for the parts appends stream to the bucket.
    parts: Arc<BufferPool>,
    /// Lifetime of presigned download URLs, when downloads are redirected.
    redirect_ttl: Option<Duration>,
}

impl S3Storage {
    /// Connects with credentials from the AWS default chain. Nothing is contacted yet; use
    /// [`Storage::check`] to probe the bucket.
    pub async fn connect(settings: S3Settings) -> Result<S3Storage> {
        Self::build(settings, None).await
    }

    /// Connects with static credentials instead of the AWS default chain.
    pub async fn connect_with_credentials(
        settings: S3Settings,
        credentials: S3Credentials,
    ) -> Result<S3Storage> {
        Self::build(settings, Some(credentials)).await
    }

    async fn build(settings: S3Settings, credentials: Option<S3Credentials>) -> Result<S3Storage> {
        if settings.bucket.is_empty() {
            return Err(StorageError::Backend(
                "S3 storage needs a bucket name".to_owned(),
            ));
        }
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .operation_timeout(OPERATION_TIMEOUT)
            .build();
        let retries = RetryConfig::standard()
            .with_max_attempts(MAX_ATTEMPTS)
            .with_initial_backoff(Duration::from_millis(100))
            .with_max_backoff(Duration::from_secs(2));
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .timeout_config(timeouts)
            .retry_config(retries);
        if !settings.region.is_empty() {
            loader = loader.region(Region::new(settings.region.clone()));
        }
        if let Some(c) = credentials {
            loader = loader.credentials_provider(Credentials::new(
                c.access_key_id,
                c.secret_access_key,
                None,
                None,
                "dataplane-static",
            ));
        }
        if let Some(endpoint) = &settings.endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        let shared = loader.load().await;
        let counts = RequestCounts::default();
        let mut config = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(settings.force_path_style)
            .interceptor(counts.interceptor());
        if shared.region().is_none() {
            if settings.endpoint.is_none() {
                return Err(StorageError::Backend(
                    "S3 storage needs a region: set it in the configuration or in AWS_REGION"
                        .to_owned(),
                ));
            }
            // S3-compatible servers mostly ignore the region but signatures need one.
            config = config.region(Region::new(DEFAULT_REGION));
        }
        let config = config.build();
        let region = config
            .region()
            .map_or(DEFAULT_REGION, |r| r.as_ref())
            .to_owned();
        // Small records (tags, links, revision records, session records) go through a client
        // without what only large transfers need: no stalled-stream watchdog on bodies of a
        // few bytes, no checksum computed or validated for them (each is checked by its
        // reader: digests parse, records deserialize).
        let records = config
            .to_builder()
            .stalled_stream_protection(StalledStreamProtectionConfig::disabled())
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .build();
        let direct = match (
            direct::BucketUrl::new(
                settings.endpoint.as_deref(),
                &settings.bucket,
                &region,
                settings.force_path_style,
            ),
            shared.credentials_provider(),
        ) {
            (Some(url), Some(provider)) => Some(Arc::new(direct::DirectReads::new(
                url,
                region,
                provider,
                CONNECT_TIMEOUT,
                READ_TIMEOUT,
                MAX_ATTEMPTS,
                counts.clone(),
            )?)),
            _ => None,
        };
        Ok(S3Storage {
            bucket: Bucket {
                client: aws_sdk_s3::Client::from_conf(config),
                records: aws_sdk_s3::Client::from_conf(records),
                direct,
                name: settings.bucket,
            },
            keys: Keys::new(&settings.prefix),
            facts: Arc::new(FactCache::new(
                settings.cache_memory.s3_fact_bytes(),
                cache::MAX_AGE,
            )),
            counts,
            parts: BufferPool::new(upload::PART_SIZE, IDLE_PART_BUFFERS),
            redirect_ttl: settings.redirect_ttl,
        })
    }

    /// The cached fact about `key`, counting the lookup.
    fn cached(&self, key: &str) -> Option<Fact> {
        let fact = self.facts.get(key);
        self.counts.lookup(fact.is_some());
        fact
    }

    /// Removes a record that may be cached; returns whether it existed.
    async fn remove_cached(&self, key: &str) -> Result<bool> {
        let removed = self.remove(key).await;
        self.facts.forget(key);
        removed
    }

    /// The user metadata a tag record pointing at `digest` carries: the revision record of the
    /// manifest, when `repo` has it and it fits in metadata (visible ASCII).
    async fn tag_metadata(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<HashMap<String, String>>> {
        let Some(meta) = self.manifest_meta(repo, digest).await? else {
            return Ok(None);
        };
        if !meta.media_type.bytes().all(|b| b.is_ascii_graphic()) {
            return Ok(None);
        }
        Ok(Some(HashMap::from([
            (TAG_MEDIA_TYPE.to_owned(), meta.media_type),
            (TAG_SIZE.to_owned(), meta.size.to_string()),
        ])))
    }

    /// Removes the tag record of `tag` if it names `digest`: read, then deleted only while it
    /// is the object read (`If-Match` on its ETag), so a tag pushed in between stays. A store
    /// that ignores `If-Match` on `DeleteObject` (MinIO does) deletes it anyway: there a push
    /// landing within that one round trip loses its tag.
    async fn delete_tag_if(&self, repo: &RepoName, tag: &Tag, digest: &Digest) -> Result<bool> {
        let key = self.keys.tag(repo, tag);
        let Some(object) = self.bucket.get_optional(&key).await? else {
            return Ok(false);
        };
        if tag_digest(&key, &object)? != *digest {
            return Ok(false);
        }
        self.bucket.delete_if_match(&key, &object.etag).await
    }

    /// Removes a record; returns whether it existed.
    async fn remove(&self, key: &str) -> Result<bool> {
        if self.bucket.head(key).await?.is_none() {
            return Ok(false);
        }
        self.bucket.delete(key).await?;
        Ok(true)
    }

    /// Every repository (under `root`, which ends in `/`) that holds a `_manifests/` record,
    /// walking the name tree level by level with delimiter listings.
    async fn walk_repositories(&self) -> Result<Vec<String>> {
        let root = self.keys.repositories_root();
        let mut found = Vec::new();
        let mut frontier = vec![root.clone()];
        while !frontier.is_empty() {
            let listings: Vec<(String, Vec<String>)> = futures_util::stream::iter(frontier)
                .map(|dir| async move {
                    let listing = self.bucket.list(&dir, Some("/")).await?;
                    Ok::<_, StorageError>((dir, listing.prefixes))
                })
                .buffer_unordered(FAN_OUT)
                .try_collect()
                .await?;
            frontier = Vec::new();
            for (dir, children) in listings {
                for child in children {
                    let Some(name) = child.strip_prefix(&dir) else {
                        continue;
                    };
                    if name == keys::MANIFESTS_DIR && dir != root {
                        let repo = &dir[root.len()..dir.len() - 1];
                        found.push(repo.to_owned());
                    } else if !name.starts_with('_') {
                        frontier.push(child);
                    }
                }
            }
        }
        Ok(found)
    }
}

/// Runs `read` over `items`, [`TAG_READS_AT_ONCE`] at a time, keeping what it finds (small
/// records read one request each: tags, revision records).
async fn read_many<I, T, F, Fut>(items: I, read: F) -> Result<Vec<T>>
where
    I: IntoIterator,
    F: FnMut(I::Item) -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    futures_util::stream::iter(items)
        .map(read)
        .buffer_unordered(TAG_READS_AT_ONCE)
        .try_filter_map(|found| async move { Ok(found) })
        .try_collect()
        .await
}

fn corrupt(key: &str, what: impl std::fmt::Display) -> StorageError {
    StorageError::Backend(format!("corrupt S3 record {key}: {what}"))
}

/// The digest a tag record (body: the digest as text) points at.
fn tag_digest(key: &str, object: &Object) -> Result<Digest> {
    let text = std::str::from_utf8(&object.data).map_err(|e| corrupt(key, e))?;
    text.trim().parse().map_err(|e| corrupt(key, e))
}

/// The revision record carried by a tag record's metadata; `None` for records written
/// without it (by earlier versions, or for a manifest whose record was missing).
fn tag_meta(object: &Object) -> Option<ManifestMeta> {
    let media_type = object.metadata.get(TAG_MEDIA_TYPE)?;
    let size = object.metadata.get(TAG_SIZE)?.parse().ok()?;
    Some(ManifestMeta {
        media_type: media_type.clone(),
        size,
    })
}

/// A short random pause before retrying a lost compare-and-swap, growing with `attempt`.
async fn backoff(attempt: u32) {
    let jitter = (uuid::Uuid::new_v4().as_u128() % 20) as u64;
    let base = 5u64 << attempt.min(6);
    tokio::time::sleep(Duration::from_millis(base + jitter)).await;
}

#[async_trait::async_trait]
impl Storage for S3Storage {
    async fn blob_size(&self, digest: &Digest) -> Result<Option<u64>> {
        let key = self.keys.blob(digest);
        if let Some(Fact::Size(size)) = self.cached(&key) {
            return Ok(Some(size));
        }
        let size = self.bucket.head(&key).await?;
        if let Some(size) = size {
            self.facts.put(&key, Fact::Size(size));
        }
        Ok(size)
    }

    async fn blob_download_url(&self, digest: &Digest) -> Result<Option<String>> {
        let Some(ttl) = self.redirect_ttl else {
            return Ok(None);
        };
        let key = self.keys.blob(digest);
        let presigning = PresigningConfig::expires_in(ttl)
            .map_err(|e| StorageError::Backend(format!("presigning a download of {key}: {e}")))?;
        let request = self
            .bucket
            .client
            .get_object()
            .bucket(&self.bucket.name)
            .key(&key)
            .presigned(presigning)
            .await
            .map_err(|e| StorageError::from(self.bucket.failure("GetObject (presign)", &key, e)))?;
        Ok(Some(request.uri().to_owned()))
    }

    async fn blob_read(&self, digest: &Digest, range: Option<Range<u64>>) -> Result<ByteStream> {
        let key = self.keys.blob(digest);
        let Some(range) = range else {
            return Ok(self
                .bucket
                .stream(&key, None)
                .await
                .map_err(StorageError::from)?
                .0);
        };
        if range.start >= range.end {
            // Not expressible as an HTTP range: decide from the size.
            let size = self
                .bucket
                .head(&key)
                .await?
                .ok_or(StorageError::NotFound)?;
            return if range.start == range.end && range.start < size {
                Ok(Box::pin(futures_util::stream::empty()))
            } else {
                Err(StorageError::RangeNotSatisfiable { size })
            };
        }
        match self.bucket.stream(&key, Some(range.clone())).await {
            // S3 shortens a range that runs past the end; the trait refuses it instead.
            Ok((_, size)) if range.end > size => Err(StorageError::RangeNotSatisfiable { size }),
            Ok((stream, _)) => Ok(stream),
            Err(Failure::RangeNotSatisfiable) => {
                let size = self
                    .bucket
                    .head(&key)
                    .await?
                    .ok_or(StorageError::NotFound)?;
                Err(StorageError::RangeNotSatisfiable { size })
            }
            Err(other) => Err(other.into()),
        }
    }

    async fn blob_put(&self, digest: &Digest, data: Bytes) -> Result<()> {
        let key = self.keys.blob(digest);
        let size = data.len() as u64;
        for attempt in 0..CAS_ATTEMPTS {
            match self.bucket.put(&key, data.clone(), Condition::Absent).await {
                Ok(_) => {
                    self.facts.put(&key, Fact::Size(size));
                    return Ok(());
                }
                // Content-addressed: an existing object holds the same bytes.
                Err(Failure::Precondition) => {
                    if self.bucket.head(&key).await?.is_some() {
                        self.facts.put(&key, Fact::Size(size));
                        return Ok(());
                    }
                    // A conflicting write was still in progress; try again.
                    backoff(attempt).await;
                }
                Err(other) => return Err(other.into()),
            }
        }
        Err(StorageError::Backend(format!(
            "S3 PutObject of {key}: conflicting writes did not settle"
        )))
    }

    async fn blob_delete(&self, digest: &Digest) -> Result<()> {
        let key = self.keys.blob(digest);
        let deleted = self.bucket.delete(&key).await;
        self.facts.forget(&key);
        deleted
    }

    async fn link_blob(&self, repo: &RepoName, digest: &Digest) -> Result<()> {
        let key = self.keys.layer_link(repo, digest);
        self.bucket
            .put(&key, Bytes::new(), Condition::None)
            .await
            .map_err(StorageError::from)?;
        self.facts.put(&key, Fact::Present);
        Ok(())
    }

    async fn blob_linked(&self, repo: &RepoName, digest: &Digest) -> Result<bool> {
        let key = self.keys.layer_link(repo, digest);
        if self.cached(&key) == Some(Fact::Present) {
            return Ok(true);
        }
        let linked = self.bucket.head(&key).await?.is_some();
        if linked {
            self.facts.put(&key, Fact::Present);
        }
        Ok(linked)
    }

    async fn unlink_blob(&self, repo: &RepoName, digest: &Digest) -> Result<bool> {
        self.remove_cached(&self.keys.layer_link(repo, digest))
            .await
    }

    async fn blob_links(&self, repo: &RepoName) -> Result<Vec<Digest>> {
        let prefix = self.keys.layer_links(repo);
        let listing = self.bucket.list(&prefix, None).await?;
        let mut links: Vec<Digest> = listing
            .keys
            .iter()
            .filter_map(|key| digest_in_key(&key[prefix.len()..]).ok())
            .collect();
        links.sort();
        Ok(links)
    }

    async fn blobs(&self) -> Result<Vec<StoredBlob>> {
        self.list_blobs().await
    }

    async fn blob_touch(&self, digest: &Digest) -> Result<bool> {
        self.touch_blob(digest).await
    }

    async fn blob_collect(
        &self,
        digest: &Digest,
        cutoff: std::time::SystemTime,
    ) -> Result<Option<u64>> {
        self.collect_blob(digest, cutoff).await
    }

    async fn blob_collect_recover(&self) -> Result<usize> {
        self.recover_trash().await
    }

    async fn upload_create(&self, repo: &RepoName) -> Result<UploadInfo> {
        self.session_create(repo).await
    }

    async fn upload_info(&self, repo: &RepoName, id: &UploadId) -> Result<UploadInfo> {
        Ok(self.session_load(repo, id).await?.0.info)
    }

    async fn upload_append(
        &self,
        repo: &RepoName,
        id: &UploadId,
        offset: u64,
        body: ByteStream,
    ) -> Result<u64> {
        self.session_append(repo, id, offset, body, None).await
    }

    async fn upload_append_checkpointed(
        &self,
        repo: &RepoName,
        id: &UploadId,
        offset: u64,
        body: ByteStream,
        checkpoint: Checkpoint,
    ) -> Result<u64> {
        self.session_append(repo, id, offset, body, Some(checkpoint))
            .await
    }

    async fn upload_read(&self, repo: &RepoName, id: &UploadId) -> Result<ByteStream> {
        self.session_read(repo, id).await
    }

    async fn upload_commit(&self, repo: &RepoName, id: &UploadId, digest: &Digest) -> Result<u64> {
        let size = self.session_commit(repo, id, digest).await?;
        self.facts.put(&self.keys.blob(digest), Fact::Size(size));
        Ok(size)
    }

    async fn upload_delete(&self, repo: &RepoName, id: &UploadId) -> Result<()> {
        self.session_delete(repo, id).await
    }

    async fn uploads(&self) -> Result<Vec<UploadInfo>> {
        self.sessions().await
    }

    async fn manifest_link(
        &self,
        repo: &RepoName,
        digest: &Digest,
        meta: &ManifestMeta,
    ) -> Result<()> {
        let key = self.keys.manifest_link(repo, digest);
        let body = serde_json::to_vec(meta).map_err(|e| corrupt(&key, e))?;
        self.bucket
            .put(&key, Bytes::from(body), Condition::None)
            .await
            .map_err(StorageError::from)?;
        self.facts.put(&key, Fact::Manifest(meta.clone()));
        Ok(())
    }

    async fn manifest_meta(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<ManifestMeta>> {
        let key = self.keys.manifest_link(repo, digest);
        if let Some(Fact::Manifest(meta)) = self.cached(&key) {
            return Ok(Some(meta));
        }
        let Some(object) = self.bucket.get_optional(&key).await? else {
            return Ok(None);
        };
        let meta: ManifestMeta =
            serde_json::from_slice(&object.data).map_err(|e| corrupt(&key, e))?;
        self.facts.put(&key, Fact::Manifest(meta.clone()));
        Ok(Some(meta))
    }

    async fn manifest_unlink(&self, repo: &RepoName, digest: &Digest) -> Result<bool> {
        self.remove_cached(&self.keys.manifest_link(repo, digest))
            .await
    }

    async fn tag_get(&self, repo: &RepoName, tag: &Tag) -> Result<Option<Digest>> {
        let key = self.keys.tag(repo, tag);
        match self.bucket.get_optional(&key).await? {
            None => Ok(None),
            Some(object) => tag_digest(&key, &object).map(Some),
        }
    }

    /// One request: the tag record carries its manifest's revision record in its metadata.
    /// A record without it (written by an earlier version) costs a second read.
    async fn tag_manifest(
        &self,
        repo: &RepoName,
        tag: &Tag,
    ) -> Result<Option<(Digest, ManifestMeta)>> {
        let key = self.keys.tag(repo, tag);
        let Some(object) = self.bucket.get_optional(&key).await? else {
            return Ok(None);
        };
        let digest = tag_digest(&key, &object)?;
        if let Some(meta) = tag_meta(&object) {
            return Ok(Some((digest, meta)));
        }
        Ok(self
            .manifest_meta(repo, &digest)
            .await?
            .map(|meta| (digest, meta)))
    }

    /// Compare-and-swap: reads the tag's version, then writes with `If-Match` (or
    /// `If-None-Match: *` when absent), retrying when another writer got in between. Every
    /// retry means another `tag_set` overlapped this one, so if the retries run out this write
    /// is ordered before the concurrent winner, which is a valid outcome of the race.
    async fn tag_set(&self, repo: &RepoName, tag: &Tag, digest: &Digest) -> Result<()> {
        let key = self.keys.tag(repo, tag);
        let value = Bytes::from(digest.to_string());
        let metadata = self.tag_metadata(repo, digest).await?;
        for attempt in 0..CAS_ATTEMPTS {
            let current = self.bucket.get_optional(&key).await?;
            let condition = match &current {
                Some(object)
                    if object.data == value
                        && (metadata.is_none() || tag_meta(object).is_some()) =>
                {
                    return Ok(());
                }
                Some(object) => Condition::Matches(&object.etag),
                None => Condition::Absent,
            };
            match self
                .bucket
                .put_with_metadata(&key, value.clone(), condition, metadata.clone())
                .await
            {
                Ok(_) => return Ok(()),
                // Changed (412) or deleted (404 on `If-Match`) since it was read.
                Err(Failure::Precondition | Failure::NotFound) => backoff(attempt).await,
                Err(other) => return Err(other.into()),
            }
        }
        tracing::debug!(%key, "tag write ordered before a concurrent writer");
        Ok(())
    }

    /// A write with `If-None-Match: *`: S3 lets exactly one of concurrent creators through.
    /// When the tag exists its value is read and returned; if it vanished in between (deleted),
    /// the creation is tried again.
    async fn tag_create(
        &self,
        repo: &RepoName,
        tag: &Tag,
        digest: &Digest,
    ) -> Result<Option<Digest>> {
        let key = self.keys.tag(repo, tag);
        let value = Bytes::from(digest.to_string());
        let metadata = self.tag_metadata(repo, digest).await?;
        for attempt in 0..CAS_ATTEMPTS {
            match self
                .bucket
                .put_with_metadata(&key, value.clone(), Condition::Absent, metadata.clone())
                .await
            {
                Ok(_) => return Ok(None),
                Err(Failure::Precondition) => {
                    if let Some(existing) = self.tag_get(repo, tag).await? {
                        return Ok(Some(existing));
                    }
                    backoff(attempt).await;
                }
                Err(other) => return Err(other.into()),
            }
        }
        Err(StorageError::Unavailable(format!(
            "tag {key} kept being created and deleted concurrently"
        )))
    }

    async fn tag_delete(&self, repo: &RepoName, tag: &Tag) -> Result<bool> {
        self.remove(&self.keys.tag(repo, tag)).await
    }

    async fn tags_delete_if(&self, repo: &RepoName, tags: &[(Tag, Digest)]) -> Result<Vec<bool>> {
        let mut removed = Vec::with_capacity(tags.len());
        for chunk in tags.chunks(TAG_READS_AT_ONCE) {
            let deletions = chunk
                .iter()
                .map(|(tag, digest)| self.delete_tag_if(repo, tag, digest));
            removed.extend(futures_util::future::try_join_all(deletions).await?);
        }
        Ok(removed)
    }

    async fn tags(&self, repo: &RepoName) -> Result<Vec<Tag>> {
        self.tags_after(repo, None, usize::MAX).await
    }

    async fn tags_after(
        &self,
        repo: &RepoName,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Tag>> {
        let prefix = self.keys.tags(repo);
        let start_after = after.map(|after| format!("{prefix}{after}"));
        let keys = self
            .bucket
            .list_after(&prefix, start_after.as_deref(), limit)
            .await?;
        let mut tags = keys
            .iter()
            .map(|key| {
                key[prefix.len()..]
                    .parse::<Tag>()
                    .map_err(|e| corrupt(key, e))
            })
            .collect::<Result<Vec<_>>>()?;
        // The bucket lists bytewise, which is the lexical order of tags: sorted only in case a
        // store does otherwise.
        tags.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        Ok(tags)
    }

    async fn tags_of(&self, repo: &RepoName, digest: &Digest) -> Result<Vec<Tag>> {
        let read = |tag: Tag| async move {
            let target = self.tag_get(repo, &tag).await?;
            Ok::<_, StorageError>((target.as_ref() == Some(digest)).then_some(tag))
        };
        let mut pointing: Vec<Tag> = read_many(self.tags(repo).await?, read).await?;
        pointing.sort();
        Ok(pointing)
    }

    async fn tag_records(&self, repo: &RepoName) -> Result<Vec<TagRecord>> {
        let prefix = self.keys.tags(repo);
        let listing = self.bucket.list(&prefix, None).await?;
        let read = |(key, set_at): (String, std::time::SystemTime)| {
            let prefix = &prefix;
            async move {
                let tag: Tag = key[prefix.len()..].parse().map_err(|e| corrupt(&key, e))?;
                // A tag deleted since the listing is left out.
                let Some(object) = self.bucket.get_optional(&key).await? else {
                    return Ok(None);
                };
                let digest = tag_digest(&key, &object)?;
                Ok::<_, StorageError>(Some(TagRecord {
                    tag,
                    digest,
                    set_at,
                }))
            }
        };
        let mut records: Vec<TagRecord> =
            read_many(listing.keys.into_iter().zip(listing.modified), read).await?;
        records.sort_by(|a, b| a.tag.cmp(&b.tag));
        Ok(records)
    }

    async fn manifest_records(&self, repo: &RepoName) -> Result<Vec<ManifestRecord>> {
        let prefix = self.keys.manifest_links(repo);
        let listing = self.bucket.list(&prefix, None).await?;
        let read = |(key, linked_at): (String, std::time::SystemTime)| {
            let prefix = &prefix;
            async move {
                let digest = digest_in_key(&key[prefix.len()..]).map_err(|e| corrupt(&key, e))?;
                let Some(meta) = self.manifest_meta(repo, &digest).await? else {
                    return Ok(None);
                };
                Ok::<_, StorageError>(Some(ManifestRecord {
                    digest,
                    meta,
                    linked_at,
                }))
            }
        };
        let mut records: Vec<ManifestRecord> =
            read_many(listing.keys.into_iter().zip(listing.modified), read).await?;
        records.sort_by(|a, b| a.digest.cmp(&b.digest));
        Ok(records)
    }

    /// One listing, no record reads.
    async fn manifest_digests(&self, repo: &RepoName) -> Result<Vec<Digest>> {
        let prefix = self.keys.manifest_links(repo);
        let listing = self.bucket.list(&prefix, None).await?;
        let mut digests = listing
            .keys
            .iter()
            .map(|key| digest_in_key(&key[prefix.len()..]).map_err(|e| corrupt(key, e)))
            .collect::<Result<Vec<_>>>()?;
        digests.sort();
        Ok(digests)
    }

    async fn pull_record(&self, repo: &RepoName, target: &PullTarget) -> Result<()> {
        let key = self.keys.pull(repo, target);
        self.bucket
            .put(&key, Bytes::new(), Condition::None)
            .await
            .map_err(StorageError::from)?;
        Ok(())
    }

    async fn pull_records(
        &self,
        repo: &RepoName,
    ) -> Result<Vec<(PullTarget, std::time::SystemTime)>> {
        let prefix = self.keys.pulls(repo);
        let listing = self.bucket.list(&prefix, None).await?;
        let mut records = Vec::with_capacity(listing.keys.len());
        for (key, at) in listing.keys.iter().zip(listing.modified) {
            let rest = &key[prefix.len()..];
            let target = if let Some(tag) = rest.strip_prefix("tags/") {
                tag.parse().ok().map(PullTarget::Tag)
            } else if let Some(digest) = rest.strip_prefix("manifests/") {
                digest_in_key(digest).ok().map(PullTarget::Manifest)
            } else {
                None
            };
            match target {
                Some(target) => records.push((target, at)),
                None => tracing::warn!(key, "skipping an unrecognised pull record"),
            }
        }
        records.sort();
        Ok(records)
    }

    async fn referrer_add(
        &self,
        repo: &RepoName,
        subject: &Digest,
        referrer: &Digest,
        descriptor: Bytes,
    ) -> Result<()> {
        let key = self.keys.referrer(repo, subject, referrer);
        self.bucket
            .put(&key, descriptor, Condition::None)
            .await
            .map(drop)
            .map_err(StorageError::from)
    }

    async fn referrer_remove(
        &self,
        repo: &RepoName,
        subject: &Digest,
        referrer: &Digest,
    ) -> Result<()> {
        self.bucket
            .delete(&self.keys.referrer(repo, subject, referrer))
            .await
    }

    async fn referrers(&self, repo: &RepoName, subject: &Digest) -> Result<Vec<Bytes>> {
        let prefix = self.keys.referrers(repo, subject);
        let listing = self.bucket.list(&prefix, None).await?;
        let mut referrers = listing
            .keys
            .into_iter()
            .map(|key| {
                let digest = digest_in_key(&key[prefix.len()..]).map_err(|e| corrupt(&key, e))?;
                Ok((digest, key))
            })
            .collect::<Result<Vec<_>>>()?;
        referrers.sort();
        let descriptors: Vec<Option<Bytes>> = futures_util::stream::iter(referrers)
            .map(|(_, key)| async move {
                // A record removed since the listing is skipped.
                Ok::<_, StorageError>(self.bucket.get_optional(&key).await?.map(|o| o.data))
            })
            .buffered(FAN_OUT)
            .try_collect()
            .await?;
        Ok(descriptors.into_iter().flatten().collect())
    }

    async fn record_get(&self, key: &RecordKey) -> Result<Option<Bytes>> {
        let key = self.keys.record(key);
        Ok(self
            .bucket
            .get_optional(&key)
            .await?
            .map(|object| object.data))
    }

    async fn record_put(&self, key: &RecordKey, data: Bytes) -> Result<()> {
        let key = self.keys.record(key);
        self.bucket
            .put(&key, data, Condition::None)
            .await
            .map_err(StorageError::from)?;
        Ok(())
    }

    async fn record_read(&self, key: &RecordKey) -> Result<Option<VersionedRecord>> {
        self.read_versioned(key).await
    }

    async fn record_swap(
        &self,
        key: &RecordKey,
        expected: Option<&str>,
        data: Bytes,
    ) -> Result<Option<String>> {
        self.swap_record(key, expected, data).await
    }

    async fn repositories(&self) -> Result<Vec<RepoName>> {
        let mut names = self
            .walk_repositories()
            .await?
            .into_iter()
            .map(|name| name.parse::<RepoName>().map_err(|e| corrupt(&name, e)))
            .collect::<Result<Vec<_>>>()?;
        names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        Ok(names)
    }

    fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        self.counts.register(registry);
    }

    async fn check(&self) -> Result<()> {
        let quick = aws_sdk_s3::config::Builder::default()
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(CHECK_TIMEOUT)
                    .operation_timeout(CHECK_TIMEOUT)
                    .build(),
            )
            .retry_config(RetryConfig::standard().with_max_attempts(1));
        self.bucket
            .client
            .head_bucket()
            .bucket(&self.bucket.name)
            .customize()
            .config_override(quick)
            .send()
            .await
            .map(drop)
            .map_err(|e| self.bucket.error("HeadBucket", "", &e))
    }
}
