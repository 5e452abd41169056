//! Blob uploads: every byte is hashed on its way into storage, and a blob is published only
//! once its digest has been verified.
//!
//! The hash of a session's bytes is kept in memory between requests (`(offset, Hasher)` keyed
//! by session id), and every chunk of a multi-request upload also records it with its append
//! as the session's checkpoint (`<algorithm>:<offset>:<hex state>`, written atomically with the
//! new size by backends shared between replicas). When the memory is missing or stale (another
//! replica served the previous chunk, a restart, a failed append) the checkpoint is used, and
//! only when neither fits is the state rebuilt by streaming the session's bytes back.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};

use super::metering::Direction;
use super::{Registry, RegistryError, Result};
use crate::oci::{Digest, DigestAlgorithm, Hasher, RepoName};
use crate::storage::{ByteStream, Checkpoint, StorageError, UploadId, UploadInfo};

/// The hash of the first `offset` bytes of a session.
#[derive(Debug, Clone)]
struct HashState {
    offset: u64,
    hasher: Hasher,
}

impl HashState {
    /// The checkpoint text: `<algorithm>:<offset>:<hex of the hasher's state>`.
    fn checkpoint(&self) -> String {
        format!(
            "{}:{}:{}",
            self.hasher.algorithm(),
            self.offset,
            hex::encode(self.hasher.state())
        )
    }

    /// The state a checkpoint holds, when it is one of `algorithm` after exactly `size` bytes.
    fn from_checkpoint(text: &str, algorithm: DigestAlgorithm, size: u64) -> Option<Self> {
        let mut fields = text.splitn(3, ':');
        let (name, offset, state) = (fields.next()?, fields.next()?, fields.next()?);
        if name != algorithm.as_str() || offset.parse::<u64>().ok()? != size {
            return None;
        }
        let hasher = Hasher::resume(algorithm, &hex::decode(state).ok()?)?;
        Some(Self {
            offset: size,
            hasher,
        })
    }
}

/// In-memory hash states of upload sessions (a cache: storage is the source of truth).
///
/// Above its capacity the cache is cleared (abandoned sessions would otherwise accumulate);
/// dropped states are taken from the session's checkpoint, or rebuilt, when needed.
#[derive(Debug)]
pub(super) struct HashCache {
    states: Mutex<HashMap<UploadId, HashState>>,
    capacity: usize,
}

impl HashCache {
    /// A cache of at most `capacity` states.
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            states: Mutex::default(),
            capacity,
        }
    }

    fn take(&self, id: &UploadId) -> Option<HashState> {
        self.states
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id)
    }

    fn put(&self, id: UploadId, state: HashState) {
        let mut map = self.states.lock().unwrap_or_else(PoisonError::into_inner);
        if map.len() >= self.capacity {
            map.clear();
            if self.capacity == 0 {
                return;
            }
        }
        map.insert(id, state);
    }

    fn remove(&self, id: &UploadId) {
        self.take(id);
    }
}

/// What the client said about a chunk it is sending.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChunkSpec {
    /// Where the chunk starts (`Content-Range`); `None` appends at the session's end.
    pub offset: Option<u64>,
    /// How many bytes the body must hold (`Content-Range` or `Content-Length`); `None` accepts
    /// whatever the stream delivers.
    pub length: Option<u64>,
}

/// Outcome of a cross-repository mount request.
#[derive(Debug)]
pub enum MountOutcome {
    /// The blob was linked into the target repository; its size.
    Mounted(u64),
    /// The mount was impossible; a new upload session was opened instead.
    Session(UploadInfo),
}

fn map_session_error(e: StorageError) -> RegistryError {
    match e {
        StorageError::NotFound => RegistryError::UploadUnknown,
        StorageError::OffsetMismatch { current, .. } => RegistryError::UploadOutOfOrder { current },
        StorageError::Body(e) => RegistryError::UploadInvalid(e.to_string()),
        other => RegistryError::Storage(other),
    }
}

impl Registry {
    /// Opens a new upload session in `repo`.
    pub async fn upload_start(&self, repo: &RepoName) -> Result<UploadInfo> {
        Ok(self.storage.upload_create(repo).await?)
    }

    /// The session's record (its size is the number of bytes received so far).
    pub async fn upload_status(&self, repo: &RepoName, id: &UploadId) -> Result<UploadInfo> {
        self.storage
            .upload_info(repo, id)
            .await
            .map_err(map_session_error)
    }

    /// Cancels a session and discards its bytes.
    pub async fn upload_cancel(&self, repo: &RepoName, id: &UploadId) -> Result<()> {
        self.hashes.remove(id);
        self.storage
            .upload_delete(repo, id)
            .await
            .map_err(map_session_error)
    }

    /// Appends a chunk to a session, hashing it as it streams into storage. All or nothing:
    /// when the body fails, ends early or holds more than `spec.length` bytes, the session is
    /// left as it was ([`RegistryError::UploadInvalid`]). A chunk that does not start at the
    /// session's end is refused with [`RegistryError::UploadOutOfOrder`]. Returns the new size.
    pub async fn upload_append(
        &self,
        repo: &RepoName,
        id: &UploadId,
        spec: ChunkSpec,
        body: ByteStream,
    ) -> Result<u64> {
        self.append(repo, id, spec, body, true).await
    }

    /// [`Registry::upload_append`]; `checkpoint` records the hash state with the append (for a
    /// session that later requests, maybe on other replicas, continue).
    async fn append(
        &self,
        repo: &RepoName,
        id: &UploadId,
        spec: ChunkSpec,
        body: ByteStream,
        checkpoint: bool,
    ) -> Result<u64> {
        let info = self.upload_status(repo, id).await?;
        if let Some(offset) = spec.offset
            && offset != info.size
        {
            return Err(RegistryError::UploadOutOfOrder { current: info.size });
        }
        let state = self
            .hash_state(repo, id, &info, DigestAlgorithm::Sha256)
            .await?;
        let hashed = Arc::new(Mutex::new(state));
        let stream = HashingStream {
            inner: body,
            hashed: Arc::clone(&hashed),
            seen: 0,
            expected: spec.length,
            finished: false,
        };
        let appended = if checkpoint {
            let hashed = Arc::clone(&hashed);
            let checkpoint: Checkpoint = Box::new(move || lock(&hashed).checkpoint());
            self.storage
                .upload_append_checkpointed(repo, id, info.size, Box::pin(stream), checkpoint)
                .await
        } else {
            self.storage
                .upload_append(repo, id, info.size, Box::pin(stream))
                .await
        };
        let size = appended.map_err(map_session_error)?;
        self.transfers
            .count(repo, Direction::Push, size.saturating_sub(info.size));
        let state = lock(&hashed).clone();
        if state.offset == size {
            self.hashes.put(id.clone(), state);
        }
        Ok(size)
    }

    /// Finishes a session: verifies that its bytes hash to `digest`, publishes them as that
    /// blob and links it into `repo`. On a mismatch the session is deleted and nothing is
    /// published ([`RegistryError::DigestMismatch`]). Returns the blob size.
    pub async fn upload_finish(
        &self,
        repo: &RepoName,
        id: &UploadId,
        digest: &Digest,
    ) -> Result<u64> {
        let info = self.upload_status(repo, id).await?;
        let state = self.hash_state(repo, id, &info, digest.algorithm()).await?;
        let computed = state.hasher.finish();
        if computed != *digest {
            if let Err(e) = self.storage.upload_delete(repo, id).await {
                tracing::warn!(upload = %id, error = %e, "could not delete a rejected upload session");
            }
            return Err(RegistryError::DigestMismatch {
                declared: digest.clone(),
                computed,
            });
        }
        let size = self
            .storage
            .upload_commit(repo, id, digest)
            .await
            .map_err(map_session_error)?;
        // Publishing keeps an identical blob already stored; the touch protects it for the
        // grace period (see `gc`), or finds that a collection removed it in between.
        if !self.storage.blob_touch(digest).await? {
            return Err(RegistryError::Storage(StorageError::Unavailable(
                "the blob was removed by garbage collection while being stored; upload it again"
                    .into(),
            )));
        }
        self.storage.link_blob(repo, digest).await?;
        Ok(size)
    }

    /// A whole blob in one request (`POST ?digest=` or a single `PUT`): opens a session, streams
    /// the body into it and finishes it; the session never outlives the request.
    pub async fn upload_monolithic(
        &self,
        repo: &RepoName,
        digest: &Digest,
        length: Option<u64>,
        body: ByteStream,
    ) -> Result<u64> {
        let info = self.upload_start(repo).await?;
        let spec = ChunkSpec {
            offset: Some(0),
            length,
        };
        // The session never outlives this request: no checkpoint to record.
        let result = match self.append(repo, &info.id, spec, body, false).await {
            Ok(_) => self.upload_finish(repo, &info.id, digest).await,
            Err(e) => Err(e),
        };
        if result.is_err() {
            self.hashes.remove(&info.id);
            // Already gone after a digest mismatch; otherwise clean up the failed session.
            let _ = self.storage.upload_delete(repo, &info.id).await;
        }
        result
    }

    /// Cross-repository mount: links `digest` from `from` into `repo` when `from` holds it;
    /// otherwise opens a new session (the caller answers `202` and the client uploads).
    ///
    /// `from_readable` is the caller's authorization verdict on pulling from `from`: when it
    /// is `false` the mount is treated as impossible, so a client learns nothing about a
    /// repository it may not read.
    pub async fn mount(
        &self,
        repo: &RepoName,
        digest: &Digest,
        from: Option<&RepoName>,
        from_readable: bool,
    ) -> Result<MountOutcome> {
        if let Some(from) = from
            && from_readable
            && self.storage.blob_linked(from, digest).await?
            && self.storage.blob_touch(digest).await?
            && let Some(size) = self.storage.blob_size(digest).await?
        {
            self.storage.link_blob(repo, digest).await?;
            return Ok(MountOutcome::Mounted(size));
        }
        Ok(MountOutcome::Session(self.upload_start(repo).await?))
    }

    /// The hash of a session's first `info.size` bytes with `algorithm`: from memory when it is
    /// in sync, else from the session's checkpoint, else rebuilt by reading the session back.
    async fn hash_state(
        &self,
        repo: &RepoName,
        id: &UploadId,
        info: &UploadInfo,
        algorithm: DigestAlgorithm,
    ) -> Result<HashState> {
        let size = info.size;
        if let Some(state) = self.hashes.take(id)
            && state.offset == size
            && state.hasher.algorithm() == algorithm
        {
            return Ok(state);
        }
        if size == 0 {
            return Ok(HashState {
                offset: 0,
                hasher: Hasher::new(algorithm),
            });
        }
        if let Some(state) = info
            .checkpoint
            .as_deref()
            .and_then(|text| HashState::from_checkpoint(text, algorithm, size))
        {
            return Ok(state);
        }
        tracing::debug!(upload = %id, bytes = size, "rebuilding an upload's hash by reading it back");
        let mut hasher = Hasher::new(algorithm);
        let mut offset = 0u64;
        let mut stream = self
            .storage
            .upload_read(repo, id)
            .await
            .map_err(map_session_error)?;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(StorageError::Io)?;
            hasher.update(&chunk);
            offset += chunk.len() as u64;
        }
        if offset != size {
            // Another request appended meanwhile; its client will be told where we stand.
            return Err(RegistryError::UploadOutOfOrder { current: offset });
        }
        Ok(HashState { offset, hasher })
    }
}

/// Locks a hash state shared with a [`HashingStream`], ignoring poisoning.
fn lock(state: &Mutex<HashState>) -> std::sync::MutexGuard<'_, HashState> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Passes a client's body through to storage, hashing every chunk and enforcing the declared
/// length: a body that ends short or runs long turns into an error, so storage keeps nothing
/// of it.
struct HashingStream {
    inner: ByteStream,
    /// The session's hash, and how many bytes it covers.
    hashed: Arc<Mutex<HashState>>,
    seen: u64,
    expected: Option<u64>,
    finished: bool,
}

impl Stream for HashingStream {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.finished {
            return Poll::Ready(None);
        }
        match self.inner.as_mut().poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(chunk))) => {
                self.seen += chunk.len() as u64;
                if let Some(expected) = self.expected
                    && self.seen > expected
                {
                    self.finished = true;
                    return Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("body is longer than the declared {expected} bytes"),
                    ))));
                }
                let mut hashed = lock(&self.hashed);
                hashed.hasher.update(&chunk);
                hashed.offset += chunk.len() as u64;
                drop(hashed);
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(Some(Err(e))) => {
                self.finished = true;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                self.finished = true;
                match self.expected {
                    Some(expected) if self.seen != expected => {
                        Poll::Ready(Some(Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            format!(
                                "body ended after {} of the declared {expected} bytes",
                                self.seen
                            ),
                        ))))
                    }
                    _ => Poll::Ready(None),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use super::*;
    use crate::storage::memory::MemoryStorage;

    fn body(data: &[u8]) -> ByteStream {
        let chunk = Bytes::copy_from_slice(data);
        Box::pin(futures_util::stream::once(async move { Ok(chunk) }))
    }

    fn chunk_at(offset: u64, len: usize) -> ChunkSpec {
        ChunkSpec {
            offset: Some(offset),
            length: Some(len as u64),
        }
    }

    #[tokio::test]
    async fn replicas_continue_each_others_sessions_from_the_checkpoint() {
        let storage = Arc::new(MemoryStorage::new());
        // Three replicas of one region: separate memories, one storage.
        let replicas: Vec<Registry> = (0..3)
            .map(|_| Registry::new(storage.clone() as Arc<dyn crate::storage::Storage>))
            .collect();
        let repo: RepoName = "team/app".parse().unwrap();
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();

        let session = replicas[0].upload_start(&repo).await.unwrap();
        let mut offset = 0;
        for (i, piece) in data.chunks(30_000).enumerate() {
            let replica = &replicas[i % 2];
            let size = replica
                .upload_append(
                    &repo,
                    &session.id,
                    chunk_at(offset, piece.len()),
                    body(piece),
                )
                .await
                .unwrap();
            offset += piece.len() as u64;
            assert_eq!(size, offset);
            let info = replica.upload_status(&repo, &session.id).await.unwrap();
            assert!(
                info.checkpoint
                    .as_deref()
                    .is_some_and(|c| c.starts_with(&format!("sha256:{offset}:"))),
                "{:?}",
                info.checkpoint
            );
        }
        let digest = Digest::of(DigestAlgorithm::Sha256, &data);
        let size = replicas[2]
            .upload_finish(&repo, &session.id, &digest)
            .await
            .unwrap();
        assert_eq!(size, data.len() as u64);
        assert_eq!(
            storage.session_reads(),
            0,
            "no replica had to read the session back"
        );

        // A wrong digest is still caught from a checkpoint.
        let session = replicas[0].upload_start(&repo).await.unwrap();
        replicas[0]
            .upload_append(&repo, &session.id, chunk_at(0, 5), body(b"hello"))
            .await
            .unwrap();
        let wrong = replicas[1]
            .upload_finish(
                &repo,
                &session.id,
                &Digest::of(DigestAlgorithm::Sha256, b"hellO"),
            )
            .await;
        assert!(
            matches!(wrong, Err(RegistryError::DigestMismatch { .. })),
            "{wrong:?}"
        );
    }

    #[tokio::test]
    async fn a_checkpoint_that_does_not_fit_is_ignored() {
        let storage = Arc::new(MemoryStorage::new());
        let first = Registry::new(storage.clone() as Arc<dyn crate::storage::Storage>);
        let second = Registry::new(storage.clone() as Arc<dyn crate::storage::Storage>);
        let repo: RepoName = "team/app".parse().unwrap();
        let session = first.upload_start(&repo).await.unwrap();
        first
            .upload_append(&repo, &session.id, chunk_at(0, 3), body(b"abc"))
            .await
            .unwrap();
        // A session finished with sha512 cannot use the sha256 checkpoint: it is re-read.
        let sha512 = Digest::of(DigestAlgorithm::Sha512, b"abc");
        assert_eq!(
            second
                .upload_finish(&repo, &session.id, &sha512)
                .await
                .unwrap(),
            3
        );
        assert_eq!(storage.session_reads(), 1);

        let state = HashState {
            offset: 3,
            hasher: {
                let mut h = Hasher::new(DigestAlgorithm::Sha256);
                h.update(b"abc");
                h
            },
        };
        let text = state.checkpoint();
        assert!(HashState::from_checkpoint(&text, DigestAlgorithm::Sha256, 3).is_some());
        assert!(HashState::from_checkpoint(&text, DigestAlgorithm::Sha256, 4).is_none());
        assert!(HashState::from_checkpoint(&text, DigestAlgorithm::Sha512, 3).is_none());
        assert!(HashState::from_checkpoint("sha256:3:zz", DigestAlgorithm::Sha256, 3).is_none());
        assert!(HashState::from_checkpoint("garbage", DigestAlgorithm::Sha256, 3).is_none());
    }
}
