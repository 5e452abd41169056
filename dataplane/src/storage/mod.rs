//! Durable state of a region, behind one trait with one implementation per backend.
//!
//! Layer rule: the storage layer stores and returns bytes and small records; it knows nothing of
//! HTTP, authorization or manifest formats, and it never verifies digests (the registry layer
//! hashes every byte it streams in and only asks storage to publish content it has verified).
//! Backends must keep these guarantees, which `conformance` checks for each of them:
//!
//! - **No partial visibility.** A blob, manifest link or tag becomes visible whole or not at all
//!   (write to a temporary name, `fsync`, atomic rename; conditional writes on S3).
//! - **Per-repository visibility.** A blob is reachable through a repository only once linked
//!   into it; `blob_linked` is the only existence check the registry layer exposes to clients.
//! - **Safe concurrency.** Concurrent publishes of the same blob, and concurrent writes of the
//!   same tag, leave one consistent value (content is identical for a blob; last writer wins
//!   for a tag). Of concurrent [`Storage::tag_create`]s of one tag exactly one creates it, and
//!   the others see its value (immutable tags rely on this).
//! - **Durable uploads.** Upload sessions live in storage, not in memory, so they survive a
//!   restart and can be continued by any replica.
//!
//! Times of tags and manifest links (push times, for retention) are the modification times of
//! their files or objects: setting a tag and linking a manifest, even one already linked,
//! rewrite them.
//!
//! Key layout, the same for every backend (paths on the filesystem, keys under a prefix on S3):
//!
//! ```text
//! blobs/<alg>/<hex[0..2]>/<hex>                        blob bytes, content-addressed, shared
//! repositories/<name...>/_layers/<alg>/<hex>           link: blob visible in this repository
//! repositories/<name...>/_manifests/<alg>/<hex>        link: manifest revision (JSON ManifestMeta)
//! repositories/<name...>/_tags/<tag>                   tag: the digest it points at
//! repositories/<name...>/_referrers/<alg>/<hex>/<alg>/<hex>
//!                                                      referrer descriptor (JSON) of a subject
//! repositories/<name...>/_pulls/tags/<tag>             empty; written when the tag was last
//!                                                      pulled (its modification time)
//! repositories/<name...>/_pulls/manifests/<alg>/<hex>  the same for a manifest
//! _system/<key>                                        records of the registry's own (retention
//!                                                      plans and runs, the collector's lease)
//! _system/gc/touch/<alg>/<hex>                         S3 only: when a blob was last relied upon
//!                                                      (its modification time; see `blob_touch`)
//! _system/gc/trash/<alg>/<hex>                         a blob being collected, set aside until
//!                                                      its removal is final
//! uploads/<id>/data                                    upload session bytes received so far
//! uploads/<id>/info                                    upload session record (JSON UploadInfo)
//! ```
//!
//! Repository name components never start with `_` (OCI grammar), so the `_`-prefixed
//! directories cannot collide with a nested repository name.

pub mod buffers;
#[doc(hidden)]
pub mod conformance;
pub mod fs;
pub mod memory;
pub mod s3;

use std::fmt;
use std::io;
use std::ops::Range;
use std::pin::Pin;
use std::str::FromStr;
use std::time::SystemTime;

use bytes::Bytes;
use futures_util::Stream;
use serde::{Deserialize, Serialize};

use crate::oci::{Digest, RepoName, Tag};

/// A stream of bytes, as read from storage or received from a client.
pub type ByteStream = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send + 'static>>;

/// Produces an upload session's checkpoint (see [`UploadInfo::checkpoint`]) once an append has
/// received its whole body.
pub type Checkpoint = Box<dyn FnOnce() -> String + Send + 'static>;

/// Result type of storage operations.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The object (blob, link, upload session, ...) does not exist.
    #[error("not found")]
    NotFound,
    /// An upload append was attempted at an offset other than the session's current size.
    #[error("upload offset mismatch: chunk starts at {requested}, session holds {current} bytes")]
    OffsetMismatch {
        /// Offset the client asked to write at.
        requested: u64,
        /// Bytes the session holds.
        current: u64,
    },
    /// A requested byte range does not fit the object.
    #[error("range not satisfiable for an object of {size} bytes")]
    RangeNotSatisfiable {
        /// Size of the object.
        size: u64,
    },
    /// The client's body stream failed or ended early; nothing from it was kept.
    #[error("request body failed: {0}")]
    Body(#[source] io::Error),
    /// The backend failed (I/O error, S3 error, timeout).
    #[error("storage backend failed: {0}")]
    Io(#[from] io::Error),
    /// A backend-specific failure with a message safe to log.
    #[error("storage backend failed: {0}")]
    Backend(String),
    /// The backend cannot be reached or is overloaded (connection refused, timeout, throttling);
    /// the same request may succeed later. The message is safe to log.
    #[error("storage backend unavailable: {0}")]
    Unavailable(String),
}

/// Identifier of an upload session: a UUID, so it is safe as a path or key component.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct UploadId(String);

impl UploadId {
    /// A new random session id.
    pub fn generate() -> Self {
        Self(uuid::Uuid::new_v4().to_string())
    }

    /// The id text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The text is not a valid upload session id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid upload session id")]
pub struct InvalidUploadId;

impl FromStr for UploadId {
    type Err = InvalidUploadId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let uuid = uuid::Uuid::parse_str(s).map_err(|_| InvalidUploadId)?;
        // Only the canonical hyphenated lowercase form, so one session has one spelling.
        let canonical = uuid.hyphenated().to_string();
        if canonical == s {
            Ok(Self(canonical))
        } else {
            Err(InvalidUploadId)
        }
    }
}

impl TryFrom<String> for UploadId {
    type Error = InvalidUploadId;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<UploadId> for String {
    fn from(id: UploadId) -> Self {
        id.0
    }
}

impl fmt::Display for UploadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The stored record of an upload session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UploadInfo {
    /// The session id.
    pub id: UploadId,
    /// Repository the session was opened for; other repositories cannot see it.
    pub repository: String,
    /// Bytes received so far.
    #[serde(default)]
    pub size: u64,
    /// When the session was opened.
    pub started_at: SystemTime,
    /// Opaque text the caller recorded with the append that brought the session to `size`
    /// ([`Storage::upload_append_checkpointed`]): the registry's hash state, so that any
    /// replica can continue a session without reading its bytes back. `None` when the last
    /// append recorded nothing, or the backend keeps no checkpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<String>,
}

/// What a repository records about one of its manifest revisions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManifestMeta {
    /// Media type the manifest was pushed with (served back as `Content-Type`).
    pub media_type: String,
    /// Size of the manifest bytes.
    pub size: u64,
}

/// A tag with the manifest it points at and when it was last set (pushed or moved).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagRecord {
    /// The tag.
    pub tag: Tag,
    /// The manifest it points at.
    pub digest: Digest,
    /// When it was last set.
    pub set_at: SystemTime,
}

/// A manifest revision of a repository with its record and when it was last pushed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestRecord {
    /// The manifest digest.
    pub digest: Digest,
    /// Its revision record.
    pub meta: ManifestMeta,
    /// When it was last linked into the repository (pushed).
    pub linked_at: SystemTime,
}

/// A blob in the store, as listed for garbage collection and `fsck`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct StoredBlob {
    /// Its digest.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
    /// When it was written or last relied upon ([`Storage::blob_touch`]), whichever is later.
    pub touched: SystemTime,
}

/// A record of the registry's own with the version a conditional write compares against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionedRecord {
    /// The record's bytes.
    pub data: Bytes,
    /// Opaque version: changes with every write.
    pub version: String,
}

/// What a pull asked for: a tag, or a manifest by digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PullTarget {
    /// A pull by tag.
    Tag(Tag),
    /// A pull by digest (and the manifest a tag pointed at).
    Manifest(Digest),
}

/// The key of a record the registry keeps for itself (retention plans and runs; later the
/// collector's lease and metering): one or more `/`-separated segments of `a-z 0-9 . _ -`,
/// none of them `.` or `..`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordKey(String);

/// The text is not a valid record key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid record key {0:?}")]
pub struct InvalidRecordKey(String);

impl RecordKey {
    /// The key text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for RecordKey {
    type Err = InvalidRecordKey;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let segment_ok = |seg: &str| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        };
        if s.len() <= 512 && s.split('/').all(segment_ok) {
            Ok(Self(s.to_owned()))
        } else {
            Err(InvalidRecordKey(s.to_owned()))
        }
    }
}

impl fmt::Display for RecordKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Tags read and removed at once by the default [`Storage::tags_delete_if`].
const TAG_DELETIONS_AT_ONCE: usize = 16;

/// One tag of the default [`Storage::tags_delete_if`]: a read, then a removal.
async fn delete_tag_if<S: Storage + ?Sized>(
    storage: &S,
    repo: &RepoName,
    tag: &Tag,
    digest: &Digest,
) -> Result<bool> {
    Ok(storage.tag_get(repo, tag).await?.as_ref() == Some(digest)
        && storage.tag_delete(repo, tag).await?)
}

/// A backend holding a region's blobs, repositories, tags and upload sessions.
///
/// All methods are safe to call concurrently, from several processes sharing the backend.
/// Methods taking a repository only ever see that repository's links and sessions.
#[async_trait::async_trait]
pub trait Storage: Send + Sync + fmt::Debug + 'static {
    // ---- Blobs: content-addressed, shared by every repository of the region.

    /// Size of a stored blob, or `None` when it is absent.
    async fn blob_size(&self, digest: &Digest) -> Result<Option<u64>>;

    /// Streams a blob, whole or a byte range (`start..end`, end exclusive, within the size).
    /// `NotFound` if absent, `RangeNotSatisfiable` if the range does not fit.
    async fn blob_read(&self, digest: &Digest, range: Option<Range<u64>>) -> Result<ByteStream>;

    /// A URL from which a client may download a stored blob directly, for a limited time, when
    /// the backend is configured to hand downloads off; `None` (the default) to stream it with
    /// [`Storage::blob_read`]. Callers check existence and access first.
    async fn blob_download_url(&self, digest: &Digest) -> Result<Option<String>> {
        let _ = digest;
        Ok(None)
    }

    /// Stores a small, already verified blob held in memory (manifests), atomically.
    async fn blob_put(&self, digest: &Digest, data: Bytes) -> Result<()>;

    /// Removes a blob's bytes (garbage collection only; links are not touched).
    async fn blob_delete(&self, digest: &Digest) -> Result<()>;

    // ---- Repository links: which blobs a repository may see.

    /// Makes a stored blob visible in `repo` (idempotent).
    async fn link_blob(&self, repo: &RepoName, digest: &Digest) -> Result<()>;

    /// Whether `digest` is linked into `repo`.
    async fn blob_linked(&self, repo: &RepoName, digest: &Digest) -> Result<bool>;

    /// Removes a blob link from `repo`; returns whether it existed.
    async fn unlink_blob(&self, repo: &RepoName, digest: &Digest) -> Result<bool>;

    /// The blobs linked into `repo`, sorted (for `fsck` and garbage collection).
    async fn blob_links(&self, repo: &RepoName) -> Result<Vec<Digest>>;

    /// Every blob in the store with its size and last touch, sorted by digest (for `fsck` and
    /// garbage collection; a listing, not a snapshot: blobs written meanwhile may be missing).
    async fn blobs(&self) -> Result<Vec<StoredBlob>>;

    // ---- Garbage collection: touches, and the fenced removal of unreferenced blobs.

    /// Records that `digest` is relied upon now (linked, mounted, referenced by a manifest
    /// being pushed), then reports whether the blob exists. The order is the contract with
    /// [`Storage::blob_collect`]: a collection that removes the blob concurrently puts it back
    /// when this touch came first, so `true` means the blob stays; `false` means it is gone.
    async fn blob_touch(&self, digest: &Digest) -> Result<bool>;

    /// Removes blob `digest` when it was neither written nor touched at or after `cutoff`,
    /// fenced against concurrent touches: the blob is first set aside (under `_system/gc/
    /// trash/`), its touch is read again, and it is put back if a touch arrived meanwhile.
    /// Returns the bytes freed, or `None` when the blob was kept or is absent. Links and
    /// manifests are not looked at: the caller decides what is unreferenced.
    async fn blob_collect(&self, digest: &Digest, cutoff: SystemTime) -> Result<Option<u64>>;

    /// Puts back every blob that an interrupted [`Storage::blob_collect`] left set aside;
    /// returns how many. A collector calls it before collecting.
    async fn blob_collect_recover(&self) -> Result<usize>;

    // ---- Upload sessions.

    /// Opens a new, empty upload session for `repo`.
    async fn upload_create(&self, repo: &RepoName) -> Result<UploadInfo>;

    /// The session's record; `NotFound` if it does not exist or belongs to another repository.
    async fn upload_info(&self, repo: &RepoName, id: &UploadId) -> Result<UploadInfo>;

    /// Appends `body` at `offset`, which must equal the session's size (`OffsetMismatch`
    /// otherwise). All or nothing: if the body fails (`Body`) or storage fails, the session is
    /// left as it was. Concurrent appends to one session are serialized; one of two racing
    /// appends at the same offset fails with `OffsetMismatch`. Returns the new size.
    async fn upload_append(
        &self,
        repo: &RepoName,
        id: &UploadId,
        offset: u64,
        body: ByteStream,
    ) -> Result<u64>;

    /// [`Storage::upload_append`], recording `checkpoint()` as the session's
    /// [`UploadInfo::checkpoint`] atomically with the new size. `checkpoint` is called once the
    /// whole body has been received, and only then. Backends shared by several processes keep
    /// checkpoints (a plain append clears it); the default appends and records nothing.
    async fn upload_append_checkpointed(
        &self,
        repo: &RepoName,
        id: &UploadId,
        offset: u64,
        body: ByteStream,
        checkpoint: Checkpoint,
    ) -> Result<u64> {
        drop(checkpoint);
        self.upload_append(repo, id, offset, body).await
    }

    /// Streams the bytes a session holds (to resume hashing after a restart).
    async fn upload_read(&self, repo: &RepoName, id: &UploadId) -> Result<ByteStream>;

    /// Publishes the session's bytes as blob `digest` (already verified by the caller), durably
    /// and atomically, then removes the session. Publishing content that already exists is
    /// fine. Does not link the blob into any repository. Returns the blob size.
    async fn upload_commit(&self, repo: &RepoName, id: &UploadId, digest: &Digest) -> Result<u64>;

    /// Cancels a session and removes its bytes; `NotFound` if it does not exist.
    async fn upload_delete(&self, repo: &RepoName, id: &UploadId) -> Result<()>;

    /// Lists sessions of every repository (for expiry of abandoned sessions).
    async fn uploads(&self) -> Result<Vec<UploadInfo>>;

    // ---- Manifests: bytes are blobs; a repository records its revisions.

    /// Records manifest `digest` (whose bytes are stored) as a revision of `repo`.
    async fn manifest_link(
        &self,
        repo: &RepoName,
        digest: &Digest,
        meta: &ManifestMeta,
    ) -> Result<()>;

    /// The revision record, or `None` if `repo` has no such manifest.
    async fn manifest_meta(&self, repo: &RepoName, digest: &Digest)
    -> Result<Option<ManifestMeta>>;

    /// Removes a revision from `repo`; returns whether it existed.
    async fn manifest_unlink(&self, repo: &RepoName, digest: &Digest) -> Result<bool>;

    // ---- Tags.

    /// The digest a tag points at, or `None`.
    async fn tag_get(&self, repo: &RepoName, tag: &Tag) -> Result<Option<Digest>>;

    /// Points `tag` at `digest`, atomically replacing any previous value.
    async fn tag_set(&self, repo: &RepoName, tag: &Tag, digest: &Digest) -> Result<()>;

    /// Points `tag` at `digest` only if the tag does not exist yet, atomically: of concurrent
    /// creations (from any process sharing the backend) exactly one succeeds. Returns `None`
    /// when this call created the tag, else the digest the existing tag points at (left as it
    /// was).
    async fn tag_create(
        &self,
        repo: &RepoName,
        tag: &Tag,
        digest: &Digest,
    ) -> Result<Option<Digest>>;

    /// Removes a tag; returns whether it existed.
    async fn tag_delete(&self, repo: &RepoName, tag: &Tag) -> Result<bool>;

    /// Removes each tag of `tags` that still points at the digest given with it, and leaves
    /// one set to another digest (or gone) since; returns, in the order given, whether each
    /// was removed. Retention deletes its planned tags through this. The default reads and
    /// removes a few tags at once, each a read then a removal; backends that can compare and
    /// remove in one step, or remove many durably at once, do so.
    async fn tags_delete_if(&self, repo: &RepoName, tags: &[(Tag, Digest)]) -> Result<Vec<bool>> {
        let mut removed = Vec::with_capacity(tags.len());
        for chunk in tags.chunks(TAG_DELETIONS_AT_ONCE) {
            let deletions = chunk
                .iter()
                .map(|(tag, digest)| delete_tag_if(self, repo, tag, digest));
            removed.extend(futures_util::future::try_join_all(deletions).await?);
        }
        Ok(removed)
    }

    /// The manifest a tag points at and its revision record, or `None` when the tag does not
    /// exist or `repo` has no such revision: [`Storage::tag_get`] then
    /// [`Storage::manifest_meta`], which a backend may answer in one step (the hot path of
    /// a pull by tag).
    async fn tag_manifest(
        &self,
        repo: &RepoName,
        tag: &Tag,
    ) -> Result<Option<(Digest, ManifestMeta)>> {
        let Some(digest) = self.tag_get(repo, tag).await? else {
            return Ok(None);
        };
        Ok(self
            .manifest_meta(repo, &digest)
            .await?
            .map(|meta| (digest, meta)))
    }

    /// All tags of `repo`, sorted lexically (empty if the repository does not exist).
    async fn tags(&self, repo: &RepoName) -> Result<Vec<Tag>>;

    /// At most `limit` tags of `repo` that sort lexically after `after` (all of them with
    /// `None`), sorted: one page of the tags list, which a backend answers holding no more
    /// than the page (the default reads every tag).
    async fn tags_after(
        &self,
        repo: &RepoName,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Tag>> {
        let mut tags = self.tags(repo).await?;
        tags.retain(|t| after.is_none_or(|after| t.as_str() > after));
        tags.truncate(limit);
        Ok(tags)
    }

    /// The tags of `repo` that point at `digest`, sorted (deleting a manifest by digest
    /// deletes them). The default asks [`Storage::tag_get`] for every tag.
    async fn tags_of(&self, repo: &RepoName, digest: &Digest) -> Result<Vec<Tag>> {
        let mut pointing = Vec::new();
        for tag in self.tags(repo).await? {
            if self.tag_get(repo, &tag).await?.as_ref() == Some(digest) {
                pointing.push(tag);
            }
        }
        Ok(pointing)
    }

    /// Every tag of `repo` with its manifest and when it was last set, sorted by tag (empty
    /// if the repository does not exist). For retention, which reads whole repositories.
    async fn tag_records(&self, repo: &RepoName) -> Result<Vec<TagRecord>>;

    /// Every manifest revision of `repo` with its record and when it was last linked, sorted
    /// by digest (empty if the repository does not exist).
    async fn manifest_records(&self, repo: &RepoName) -> Result<Vec<ManifestRecord>>;

    /// The digests of every manifest revision of `repo`, sorted (metering): what
    /// [`Storage::manifest_records`] lists, without reading the records, where a backend can.
    async fn manifest_digests(&self, repo: &RepoName) -> Result<Vec<Digest>> {
        Ok(self
            .manifest_records(repo)
            .await?
            .into_iter()
            .map(|record| record.digest)
            .collect())
    }

    // ---- Pull records: when a tag or manifest was last pulled, coarsely (the registry
    // records a pull at most once an hour per item and process).

    /// Records that `target` of `repo` was pulled now, replacing the previous record.
    async fn pull_record(&self, repo: &RepoName, target: &PullTarget) -> Result<()>;

    /// The last recorded pull of every tag and manifest of `repo` that has one (records of
    /// items deleted since may remain; callers match them against what exists).
    async fn pull_records(&self, repo: &RepoName) -> Result<Vec<(PullTarget, SystemTime)>>;

    // ---- Referrers: manifests whose `subject` is a given digest.

    /// Records `referrer` (a descriptor, as JSON) as pointing at `subject` in `repo`.
    async fn referrer_add(
        &self,
        repo: &RepoName,
        subject: &Digest,
        referrer: &Digest,
        descriptor: Bytes,
    ) -> Result<()>;

    /// Removes a referrer record (idempotent).
    async fn referrer_remove(
        &self,
        repo: &RepoName,
        subject: &Digest,
        referrer: &Digest,
    ) -> Result<()>;

    /// Descriptors (JSON) of the referrers of `subject` in `repo`, ordered by referrer digest.
    async fn referrers(&self, repo: &RepoName, subject: &Digest) -> Result<Vec<Bytes>>;

    // ---- Records of the registry's own, under `_system/`.

    /// A record, or `None` if absent.
    async fn record_get(&self, key: &RecordKey) -> Result<Option<Bytes>>;

    /// Writes a record whole, atomically replacing any previous value.
    async fn record_put(&self, key: &RecordKey, data: Bytes) -> Result<()>;

    /// A record with its version, or `None` if absent.
    async fn record_read(&self, key: &RecordKey) -> Result<Option<VersionedRecord>>;

    /// Writes a record only if it is still at version `expected` (`None`: only if absent),
    /// atomically against every process sharing the backend. Returns the new version, or
    /// `None` when the record had changed (nothing written). Leases are built on it.
    async fn record_swap(
        &self,
        key: &RecordKey,
        expected: Option<&str>,
        data: Bytes,
    ) -> Result<Option<String>>;

    // ---- Repositories and health.

    /// Every repository that holds at least one manifest, sorted lexically.
    async fn repositories(&self) -> Result<Vec<RepoName>>;

    /// Succeeds when the backend can serve requests (readiness).
    async fn check(&self) -> Result<()>;

    /// Registers the backend's own metrics (requests to a bucket, caches) in `registry`
    /// before serving; the default has none.
    fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        let _ = registry;
    }
}
