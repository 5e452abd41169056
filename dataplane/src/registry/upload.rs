//! Blob uploads: every byte is hashed on its way into storage, and a blob is published only
//! once its digest has been verified.
//!
//! The hash of a session's bytes is kept in memory between requests (`(offset, Hasher)` keyed
//! by session id). When that state is missing or stale (after a restart, when another replica
//! served the previous chunk, after a failed append) it is rebuilt by streaming the session's
//! bytes back from storage, so sessions stay resumable without any extra durable state.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};

use super::{Registry, RegistryError, Result};
use crate::oci::{Digest, DigestAlgorithm, Hasher, RepoName};
use crate::storage::{ByteStream, StorageError, UploadId, UploadInfo};

/// Above this many cached hash states the cache is cleared (abandoned sessions would otherwise
/// accumulate); dropped states are simply rebuilt from storage when needed.
const MAX_CACHED_STATES: usize = 65_536;

/// The hash of the first `offset` bytes of a session.
#[derive(Debug, Clone)]
struct HashState {
    offset: u64,
    hasher: Hasher,
}

/// In-memory hash states of upload sessions (a cache: storage is the source of truth).
#[derive(Debug, Default)]
pub(super) struct HashCache(Mutex<HashMap<UploadId, HashState>>);

impl HashCache {
    fn take(&self, id: &UploadId) -> Option<HashState> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id)
    }

    fn put(&self, id: UploadId, state: HashState) {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if map.len() >= MAX_CACHED_STATES {
            map.clear();
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
        let info = self.upload_status(repo, id).await?;
        if let Some(offset) = spec.offset
            && offset != info.size
        {
            return Err(RegistryError::UploadOutOfOrder { current: info.size });
        }
        let state = self
            .hash_state(repo, id, info.size, DigestAlgorithm::Sha256)
            .await?;
        let hasher = Arc::new(Mutex::new(state.hasher));
        let stream = HashingStream {
            inner: body,
            hasher: Arc::clone(&hasher),
            seen: 0,
            expected: spec.length,
            finished: false,
        };
        let size = self
            .storage
            .upload_append(repo, id, info.size, Box::pin(stream))
            .await
            .map_err(map_session_error)?;
        let hasher = hasher
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        self.hashes.put(
            id.clone(),
            HashState {
                offset: size,
                hasher,
            },
        );
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
        let state = self
            .hash_state(repo, id, info.size, digest.algorithm())
            .await?;
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
        let result = match self.upload_append(repo, &info.id, spec, body).await {
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
            && let Some(size) = self.storage.blob_size(digest).await?
        {
            self.storage.link_blob(repo, digest).await?;
            return Ok(MountOutcome::Mounted(size));
        }
        Ok(MountOutcome::Session(self.upload_start(repo).await?))
    }

    /// The hash of a session's first `size` bytes with `algorithm`, from the cache when it is
    /// in sync, else rebuilt by reading the session back from storage.
    async fn hash_state(
        &self,
        repo: &RepoName,
        id: &UploadId,
        size: u64,
        algorithm: DigestAlgorithm,
    ) -> Result<HashState> {
        if let Some(state) = self.hashes.take(id)
            && state.offset == size
            && state.hasher.algorithm() == algorithm
        {
            return Ok(state);
        }
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

/// Passes a client's body through to storage, hashing every chunk and enforcing the declared
/// length: a body that ends short or runs long turns into an error, so storage keeps nothing
/// of it.
struct HashingStream {
    inner: ByteStream,
    hasher: Arc<Mutex<Hasher>>,
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
                self.hasher
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .update(&chunk);
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
