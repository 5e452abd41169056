//! In-memory backend with the same semantics as the durable ones, for fast tests.
//!
//! Nothing survives the process. Blobs and sessions are held whole in memory, so this backend
//! is meant for tests and small experiments, never for serving real images.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use bytes::Bytes;
use futures_util::StreamExt;

use super::{
    ByteStream, Checkpoint, ManifestMeta, ManifestRecord, PullTarget, RecordKey, Result, Storage,
    StorageError, StoredBlob, TagRecord, UploadId, UploadInfo, VersionedRecord,
};
use crate::oci::{Digest, RepoName, Tag};

/// Largest chunk a blob is streamed out in.
const READ_CHUNK: usize = 1024 * 1024;

/// A [`Storage`] backend held in process memory.
#[derive(Debug, Default)]
pub struct MemoryStorage {
    state: Mutex<State>,
    /// How many times a session's bytes were read back ([`Storage::upload_read`]).
    session_reads: AtomicU64,
}

/// Locks a plain mutex, ignoring poisoning (the data stays consistent under every lock).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Debug, Default)]
struct State {
    blobs: HashMap<Digest, Bytes>,
    /// When each blob was written or last touched.
    touched: HashMap<Digest, SystemTime>,
    repos: HashMap<RepoName, Repo>,
    uploads: HashMap<UploadId, Arc<Upload>>,
    /// Records with their version (a number from `versions`).
    records: HashMap<RecordKey, (Bytes, u64)>,
    versions: u64,
}

impl State {
    /// Stores a blob unless present (content-addressed), marking it written now.
    fn put_blob(&mut self, digest: &Digest, data: Bytes) {
        if !self.blobs.contains_key(digest) {
            self.blobs.insert(digest.clone(), data);
            self.touched.insert(digest.clone(), SystemTime::now());
        }
    }

    fn put_record(&mut self, key: &RecordKey, data: Bytes) -> u64 {
        self.versions += 1;
        self.records.insert(key.clone(), (data, self.versions));
        self.versions
    }
}

#[derive(Debug, Default)]
struct Repo {
    layers: HashSet<Digest>,
    manifests: HashMap<Digest, ManifestMeta>,
    /// When each manifest was last linked.
    linked_at: HashMap<Digest, SystemTime>,
    tags: BTreeMap<Tag, Digest>,
    /// When each tag was last set.
    set_at: HashMap<Tag, SystemTime>,
    referrers: HashMap<Digest, BTreeMap<Digest, Bytes>>,
    pulls: HashMap<PullTarget, SystemTime>,
}

#[derive(Debug)]
struct Upload {
    info: UploadInfo,
    /// The bytes received; the async lock serializes operations on the session.
    data: tokio::sync::Mutex<Vec<u8>>,
    /// Size after the last completed append, readable without waiting for the lock.
    size: AtomicU64,
    /// The checkpoint recorded with the last append (changed under the `data` lock).
    checkpoint: Mutex<Option<String>>,
}

impl MemoryStorage {
    /// An empty storage.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many times a session's bytes have been read back (hash states rebuilt from the
    /// bytes rather than from a checkpoint).
    pub fn session_reads(&self) -> u64 {
        self.session_reads.load(Ordering::Relaxed)
    }

    /// Appends a body all or nothing, recording `checkpoint` (or clearing the last one).
    async fn append(
        &self,
        repo: &RepoName,
        id: &UploadId,
        offset: u64,
        mut body: ByteStream,
        checkpoint: Option<Checkpoint>,
    ) -> Result<u64> {
        let upload = self.upload(repo, id)?;
        let mut data = upload.data.lock().await;
        self.still_live(id, &upload)?;
        let current = data.len() as u64;
        if offset != current {
            return Err(StorageError::OffsetMismatch {
                requested: offset,
                current,
            });
        }
        // Receive the whole body before touching the session: all or nothing.
        let mut chunks = Vec::new();
        while let Some(chunk) = body.next().await {
            chunks.push(chunk.map_err(StorageError::Body)?);
        }
        for chunk in chunks {
            data.extend_from_slice(&chunk);
        }
        *lock(&upload.checkpoint) = checkpoint.map(|checkpoint| checkpoint());
        let size = data.len() as u64;
        upload.size.store(size, Ordering::Relaxed);
        Ok(size)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The session, if it exists and belongs to `repo`.
    fn upload(&self, repo: &RepoName, id: &UploadId) -> Result<Arc<Upload>> {
        match self.state().uploads.get(id) {
            Some(upload) if upload.info.repository == repo.as_str() => Ok(Arc::clone(upload)),
            _ => Err(StorageError::NotFound),
        }
    }

    /// Whether `upload` is still the live session `id` (not committed or deleted meanwhile).
    fn still_live(&self, id: &UploadId, upload: &Arc<Upload>) -> Result<()> {
        match self.state().uploads.get(id) {
            Some(live) if Arc::ptr_eq(live, upload) => Ok(()),
            _ => Err(StorageError::NotFound),
        }
    }
}

/// Splits `data` into a stream of chunks of at most [`READ_CHUNK`] bytes.
fn chunked(data: Bytes) -> ByteStream {
    let chunks: Vec<_> = (0..data.len())
        .step_by(READ_CHUNK)
        .map(|start| Ok(data.slice(start..data.len().min(start + READ_CHUNK))))
        .collect();
    Box::pin(futures_util::stream::iter(chunks))
}

#[async_trait::async_trait]
impl Storage for MemoryStorage {
    async fn blob_size(&self, digest: &Digest) -> Result<Option<u64>> {
        Ok(self.state().blobs.get(digest).map(|b| b.len() as u64))
    }

    async fn blob_read(&self, digest: &Digest, range: Option<Range<u64>>) -> Result<ByteStream> {
        let data = self
            .state()
            .blobs
            .get(digest)
            .cloned()
            .ok_or(StorageError::NotFound)?;
        let size = data.len() as u64;
        let data = match range {
            None => data,
            // Same rule as every backend: `start < size`, `start <= end <= size`.
            Some(r) if r.start < size && r.start <= r.end && r.end <= size => {
                data.slice(r.start as usize..r.end as usize)
            }
            Some(_) => return Err(StorageError::RangeNotSatisfiable { size }),
        };
        Ok(chunked(data))
    }

    async fn blob_put(&self, digest: &Digest, data: Bytes) -> Result<()> {
        self.state().put_blob(digest, data);
        Ok(())
    }

    async fn blob_delete(&self, digest: &Digest) -> Result<()> {
        let mut state = self.state();
        state.blobs.remove(digest);
        state.touched.remove(digest);
        Ok(())
    }

    async fn link_blob(&self, repo: &RepoName, digest: &Digest) -> Result<()> {
        self.state()
            .repos
            .entry(repo.clone())
            .or_default()
            .layers
            .insert(digest.clone());
        Ok(())
    }

    async fn blob_linked(&self, repo: &RepoName, digest: &Digest) -> Result<bool> {
        Ok(self
            .state()
            .repos
            .get(repo)
            .is_some_and(|r| r.layers.contains(digest)))
    }

    async fn unlink_blob(&self, repo: &RepoName, digest: &Digest) -> Result<bool> {
        Ok(self
            .state()
            .repos
            .get_mut(repo)
            .is_some_and(|r| r.layers.remove(digest)))
    }

    async fn blob_links(&self, repo: &RepoName) -> Result<Vec<Digest>> {
        let mut links: Vec<Digest> = self
            .state()
            .repos
            .get(repo)
            .map(|r| r.layers.iter().cloned().collect())
            .unwrap_or_default();
        links.sort();
        Ok(links)
    }

    async fn blobs(&self) -> Result<Vec<StoredBlob>> {
        let state = self.state();
        let mut blobs: Vec<StoredBlob> = state
            .blobs
            .iter()
            .map(|(digest, data)| StoredBlob {
                digest: digest.clone(),
                size: data.len() as u64,
                touched: state
                    .touched
                    .get(digest)
                    .copied()
                    .unwrap_or(SystemTime::UNIX_EPOCH),
            })
            .collect();
        blobs.sort();
        Ok(blobs)
    }

    async fn blob_touch(&self, digest: &Digest) -> Result<bool> {
        let mut state = self.state();
        if !state.blobs.contains_key(digest) {
            return Ok(false);
        }
        state.touched.insert(digest.clone(), SystemTime::now());
        Ok(true)
    }

    /// Atomic under the state lock: no touch can come between the check and the removal.
    async fn blob_collect(&self, digest: &Digest, cutoff: SystemTime) -> Result<Option<u64>> {
        let mut state = self.state();
        let fresh = state.touched.get(digest).is_some_and(|t| *t >= cutoff);
        if fresh {
            return Ok(None);
        }
        state.touched.remove(digest);
        Ok(state.blobs.remove(digest).map(|data| data.len() as u64))
    }

    async fn blob_collect_recover(&self) -> Result<usize> {
        Ok(0)
    }

    async fn upload_create(&self, repo: &RepoName) -> Result<UploadInfo> {
        let info = UploadInfo {
            id: UploadId::generate(),
            repository: repo.to_string(),
            size: 0,
            started_at: SystemTime::now(),
            checkpoint: None,
        };
        let upload = Arc::new(Upload {
            info: info.clone(),
            data: tokio::sync::Mutex::new(Vec::new()),
            size: AtomicU64::new(0),
            checkpoint: Mutex::new(None),
        });
        self.state().uploads.insert(info.id.clone(), upload);
        Ok(info)
    }

    async fn upload_info(&self, repo: &RepoName, id: &UploadId) -> Result<UploadInfo> {
        let upload = self.upload(repo, id)?;
        let data = upload.data.lock().await;
        self.still_live(id, &upload)?;
        Ok(UploadInfo {
            size: data.len() as u64,
            checkpoint: lock(&upload.checkpoint).clone(),
            ..upload.info.clone()
        })
    }

    async fn upload_append(
        &self,
        repo: &RepoName,
        id: &UploadId,
        offset: u64,
        body: ByteStream,
    ) -> Result<u64> {
        self.append(repo, id, offset, body, None).await
    }

    async fn upload_append_checkpointed(
        &self,
        repo: &RepoName,
        id: &UploadId,
        offset: u64,
        body: ByteStream,
        checkpoint: Checkpoint,
    ) -> Result<u64> {
        self.append(repo, id, offset, body, Some(checkpoint)).await
    }

    async fn upload_read(&self, repo: &RepoName, id: &UploadId) -> Result<ByteStream> {
        self.session_reads.fetch_add(1, Ordering::Relaxed);
        let upload = self.upload(repo, id)?;
        let data = upload.data.lock().await;
        self.still_live(id, &upload)?;
        Ok(chunked(Bytes::copy_from_slice(&data)))
    }

    async fn upload_commit(&self, repo: &RepoName, id: &UploadId, digest: &Digest) -> Result<u64> {
        let upload = self.upload(repo, id)?;
        let mut data = upload.data.lock().await;
        let mut state = self.state();
        match state.uploads.get(id) {
            Some(live) if Arc::ptr_eq(live, &upload) => {}
            _ => return Err(StorageError::NotFound),
        }
        state.uploads.remove(id);
        let size = data.len() as u64;
        let bytes = Bytes::from(std::mem::take(&mut *data));
        state.put_blob(digest, bytes);
        Ok(size)
    }

    async fn upload_delete(&self, repo: &RepoName, id: &UploadId) -> Result<()> {
        let upload = self.upload(repo, id)?;
        let _data = upload.data.lock().await;
        let mut state = self.state();
        match state.uploads.get(id) {
            Some(live) if Arc::ptr_eq(live, &upload) => {
                state.uploads.remove(id);
                Ok(())
            }
            _ => Err(StorageError::NotFound),
        }
    }

    async fn uploads(&self) -> Result<Vec<UploadInfo>> {
        let state = self.state();
        let mut out = Vec::with_capacity(state.uploads.len());
        for upload in state.uploads.values() {
            // A session busy with an append reports the size it had before.
            out.push(UploadInfo {
                size: upload.size.load(Ordering::Relaxed),
                ..upload.info.clone()
            });
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    async fn manifest_link(
        &self,
        repo: &RepoName,
        digest: &Digest,
        meta: &ManifestMeta,
    ) -> Result<()> {
        let mut state = self.state();
        let r = state.repos.entry(repo.clone()).or_default();
        r.manifests.insert(digest.clone(), meta.clone());
        r.linked_at.insert(digest.clone(), SystemTime::now());
        Ok(())
    }

    async fn manifest_meta(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<ManifestMeta>> {
        Ok(self
            .state()
            .repos
            .get(repo)
            .and_then(|r| r.manifests.get(digest).cloned()))
    }

    async fn manifest_unlink(&self, repo: &RepoName, digest: &Digest) -> Result<bool> {
        Ok(self
            .state()
            .repos
            .get_mut(repo)
            .is_some_and(|r| r.manifests.remove(digest).is_some()))
    }

    async fn tag_get(&self, repo: &RepoName, tag: &Tag) -> Result<Option<Digest>> {
        Ok(self
            .state()
            .repos
            .get(repo)
            .and_then(|r| r.tags.get(tag).cloned()))
    }

    async fn tag_set(&self, repo: &RepoName, tag: &Tag, digest: &Digest) -> Result<()> {
        let mut state = self.state();
        let r = state.repos.entry(repo.clone()).or_default();
        r.tags.insert(tag.clone(), digest.clone());
        r.set_at.insert(tag.clone(), SystemTime::now());
        Ok(())
    }

    async fn tag_create(
        &self,
        repo: &RepoName,
        tag: &Tag,
        digest: &Digest,
    ) -> Result<Option<Digest>> {
        let mut state = self.state();
        let r = state.repos.entry(repo.clone()).or_default();
        match r.tags.get(tag) {
            Some(existing) => Ok(Some(existing.clone())),
            None => {
                r.tags.insert(tag.clone(), digest.clone());
                r.set_at.insert(tag.clone(), SystemTime::now());
                Ok(None)
            }
        }
    }

    async fn tag_delete(&self, repo: &RepoName, tag: &Tag) -> Result<bool> {
        Ok(self
            .state()
            .repos
            .get_mut(repo)
            .is_some_and(|r| r.tags.remove(tag).is_some()))
    }

    async fn tags_delete_if(&self, repo: &RepoName, tags: &[(Tag, Digest)]) -> Result<Vec<bool>> {
        let mut state = self.state();
        let Some(r) = state.repos.get_mut(repo) else {
            return Ok(vec![false; tags.len()]);
        };
        Ok(tags
            .iter()
            .map(|(tag, digest)| {
                let matches = r.tags.get(tag) == Some(digest);
                if matches {
                    r.tags.remove(tag);
                }
                matches
            })
            .collect())
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
        Ok(self
            .state()
            .repos
            .get(repo)
            .map(|r| {
                r.tags
                    .keys()
                    .filter(|t| after.is_none_or(|after| t.as_str() > after))
                    .take(limit)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn tags_of(&self, repo: &RepoName, digest: &Digest) -> Result<Vec<Tag>> {
        Ok(self
            .state()
            .repos
            .get(repo)
            .map(|r| {
                r.tags
                    .iter()
                    .filter(|(_, d)| *d == digest)
                    .map(|(t, _)| t.clone())
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn tag_records(&self, repo: &RepoName) -> Result<Vec<TagRecord>> {
        let state = self.state();
        let Some(r) = state.repos.get(repo) else {
            return Ok(Vec::new());
        };
        Ok(r.tags
            .iter()
            .map(|(tag, digest)| TagRecord {
                tag: tag.clone(),
                digest: digest.clone(),
                set_at: r.set_at.get(tag).copied().unwrap_or(SystemTime::UNIX_EPOCH),
            })
            .collect())
    }

    async fn manifest_records(&self, repo: &RepoName) -> Result<Vec<ManifestRecord>> {
        let state = self.state();
        let Some(r) = state.repos.get(repo) else {
            return Ok(Vec::new());
        };
        let mut records: Vec<ManifestRecord> = r
            .manifests
            .iter()
            .map(|(digest, meta)| ManifestRecord {
                digest: digest.clone(),
                meta: meta.clone(),
                linked_at: r
                    .linked_at
                    .get(digest)
                    .copied()
                    .unwrap_or(SystemTime::UNIX_EPOCH),
            })
            .collect();
        records.sort_by(|a, b| a.digest.cmp(&b.digest));
        Ok(records)
    }

    async fn pull_record(&self, repo: &RepoName, target: &PullTarget) -> Result<()> {
        self.state()
            .repos
            .entry(repo.clone())
            .or_default()
            .pulls
            .insert(target.clone(), SystemTime::now());
        Ok(())
    }

    async fn pull_records(&self, repo: &RepoName) -> Result<Vec<(PullTarget, SystemTime)>> {
        let mut records: Vec<_> = self
            .state()
            .repos
            .get(repo)
            .map(|r| r.pulls.iter().map(|(t, at)| (t.clone(), *at)).collect())
            .unwrap_or_default();
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
        self.state()
            .repos
            .entry(repo.clone())
            .or_default()
            .referrers
            .entry(subject.clone())
            .or_default()
            .insert(referrer.clone(), descriptor);
        Ok(())
    }

    async fn referrer_remove(
        &self,
        repo: &RepoName,
        subject: &Digest,
        referrer: &Digest,
    ) -> Result<()> {
        let mut state = self.state();
        if let Some(refs) = state
            .repos
            .get_mut(repo)
            .and_then(|r| r.referrers.get_mut(subject))
        {
            refs.remove(referrer);
        }
        Ok(())
    }

    async fn referrers(&self, repo: &RepoName, subject: &Digest) -> Result<Vec<Bytes>> {
        Ok(self
            .state()
            .repos
            .get(repo)
            .and_then(|r| r.referrers.get(subject))
            .map(|refs| refs.values().cloned().collect())
            .unwrap_or_default())
    }

    async fn record_get(&self, key: &RecordKey) -> Result<Option<Bytes>> {
        Ok(self.state().records.get(key).map(|(data, _)| data.clone()))
    }

    async fn record_put(&self, key: &RecordKey, data: Bytes) -> Result<()> {
        self.state().put_record(key, data);
        Ok(())
    }

    async fn record_read(&self, key: &RecordKey) -> Result<Option<VersionedRecord>> {
        Ok(self
            .state()
            .records
            .get(key)
            .map(|(data, version)| VersionedRecord {
                data: data.clone(),
                version: version.to_string(),
            }))
    }

    async fn record_swap(
        &self,
        key: &RecordKey,
        expected: Option<&str>,
        data: Bytes,
    ) -> Result<Option<String>> {
        let mut state = self.state();
        let current = state.records.get(key).map(|(_, v)| v.to_string());
        if current.as_deref() != expected {
            return Ok(None);
        }
        Ok(Some(state.put_record(key, data).to_string()))
    }

    async fn repositories(&self) -> Result<Vec<RepoName>> {
        let mut out: Vec<RepoName> = self
            .state()
            .repos
            .iter()
            .filter(|(_, r)| !r.manifests.is_empty())
            .map(|(name, _)| name.clone())
            .collect();
        out.sort();
        Ok(out)
    }

    async fn check(&self) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::MemoryStorage;

    crate::storage_conformance_tests!(conformance, async { (MemoryStorage::new(), ()) });

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_conditional_tag_deletion_never_removes_a_tag_pushed_meanwhile() {
        crate::storage::conformance::conditional_tag_deletion_never_removes_a_tag_pushed_meanwhile(
            std::sync::Arc::new(MemoryStorage::new()),
        )
        .await;
    }

    #[tokio::test]
    async fn keeps_upload_checkpoints() {
        crate::storage::conformance::upload_checkpoints(std::sync::Arc::new(MemoryStorage::new()))
            .await;
    }
}
