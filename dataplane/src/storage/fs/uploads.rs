//! Upload sessions on disk: per-session locks, the session files, and all-or-nothing
//! appends.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, IoSlice, Write};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use tokio::task::JoinHandle;

use super::layout::corrupt;
use super::publish::{TempPath, sync_dir};
use super::temp_area::same_file;
use super::{Inner, UPLOAD_DATA, UPLOAD_INFO, not_found};
use crate::oci::RepoName;
use crate::storage::{Result, StorageError, UploadId, UploadInfo};

/// In-process async locks, one per upload session in use; entries are removed when unused.
#[derive(Debug, Default)]
pub(super) struct LockTable {
    map: Mutex<HashMap<UploadId, Arc<tokio::sync::Mutex<()>>>>,
}

/// Holds one session's lock; releases it (and forgets the entry if unused) on drop.
pub(super) struct UploadLock {
    // Field order matters: the guard is released before the entry is forgotten.
    _guard: tokio::sync::OwnedMutexGuard<()>,
    _entry: LockEntry,
}

pub(super) struct LockEntry {
    table: Arc<LockTable>,
    id: UploadId,
    mutex: Option<Arc<tokio::sync::Mutex<()>>>,
}

impl Drop for LockEntry {
    fn drop(&mut self) {
        let mut map = self
            .table
            .map
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        drop(self.mutex.take());
        if map.get(&self.id).is_some_and(|m| Arc::strong_count(m) == 1) {
            map.remove(&self.id);
        }
    }
}

impl LockTable {
    pub(super) async fn lock(self: &Arc<Self>, id: &UploadId) -> UploadLock {
        let mutex = {
            let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
            Arc::clone(map.entry(id.clone()).or_default())
        };
        let entry = LockEntry {
            table: Arc::clone(self),
            id: id.clone(),
            mutex: Some(Arc::clone(&mutex)),
        };
        let guard = mutex.lock_owned().await;
        UploadLock {
            _guard: guard,
            _entry: entry,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Upload sessions on disk.

impl Inner {
    /// Reads a session's record, checking it belongs to `repo`.
    pub(super) fn read_upload_info(&self, repo: &RepoName, id: &UploadId) -> Result<UploadInfo> {
        let path = self.upload_dir(id).join(UPLOAD_INFO);
        let data = fs::read(&path).map_err(not_found)?;
        let info: UploadInfo = serde_json::from_slice(&data).map_err(|e| corrupt(&path, e))?;
        if info.id != *id {
            return Err(corrupt(&path, "session id does not match its directory"));
        }
        if info.repository != repo.as_str() {
            return Err(StorageError::NotFound);
        }
        Ok(info)
    }

    /// Opens a session's data file and locks it against other processes (exclusively for
    /// writers, shared for readers), making sure it is still the session's file once locked.
    pub(super) fn open_upload_data(&self, id: &UploadId, exclusive: bool) -> Result<File> {
        let path = self.upload_dir(id).join(UPLOAD_DATA);
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&path)
            .map_err(not_found)?;
        if exclusive {
            file.lock()?;
        } else {
            file.lock_shared()?;
        }
        if !same_file(&file, &path)? {
            // Committed or deleted by another process while we waited for the lock.
            return Err(StorageError::NotFound);
        }
        Ok(file)
    }

    /// Removes a session directory at once (rename into the temporary area, then delete).
    pub(super) fn remove_upload_dir(&self, id: &UploadId) -> Result<()> {
        let tmp = TempPath::new(self.tmp.next_path());
        fs::rename(self.upload_dir(id), &tmp.path).map_err(not_found)?;
        sync_dir(&self.uploads_dir())?;
        drop(tmp);
        Ok(())
    }
}

/// Writes a batch of chunks at the end of `file` with as few system calls as possible.
pub(super) fn write_batch(mut file: &File, batch: &[Bytes]) -> io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> = batch.iter().map(|b| IoSlice::new(b)).collect();
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        match file.write_vectored(rest) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut rest, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// One append in progress: queued writes run on the blocking pool, one batch in flight while
/// the next is received. Unless finished, it truncates the file back to its original length,
/// even when abandoned (dropped), and keeps the session locked until that is done.
pub(super) struct Append {
    file: Arc<File>,
    original: u64,
    written: u64,
    inflight: Option<JoinHandle<io::Result<()>>>,
    lock: Option<UploadLock>,
    finished: bool,
}

impl Append {
    /// An append to the session data `file`, now `original` bytes long, under `lock`.
    pub(super) fn new(file: File, original: u64, lock: UploadLock) -> Self {
        Self {
            file: Arc::new(file),
            original,
            written: 0,
            inflight: None,
            lock: Some(lock),
            finished: false,
        }
    }

    /// Waits for the write in flight, if any.
    pub(super) async fn wait(&mut self) -> io::Result<()> {
        if let Some(handle) = self.inflight.as_mut() {
            // Not `take`n before completion: if this wait is abandoned, the rollback must still
            // see the write in flight and wait for it before truncating.
            let joined = handle.await;
            self.inflight = None;
            joined.map_err(io::Error::other)??;
        }
        Ok(())
    }

    /// Queues `batch` behind the write in flight; with `sync`, also `fsync`s the data.
    pub(super) async fn write(&mut self, batch: Vec<Bytes>, sync: bool) -> io::Result<()> {
        self.wait().await?;
        let file = Arc::clone(&self.file);
        self.written += batch.iter().map(|b| b.len() as u64).sum::<u64>();
        self.inflight = Some(tokio::task::spawn_blocking(move || {
            if !batch.is_empty() {
                write_batch(&file, &batch)?;
            }
            if sync {
                file.sync_data()?;
            }
            Ok(())
        }));
        Ok(())
    }

    /// The work that undoes this append: wait for the write in flight, truncate, unlock.
    pub(super) fn rollback_task(&mut self) -> impl Future<Output = ()> + Send + 'static {
        self.finished = true;
        let inflight = self.inflight.take();
        let file = Arc::clone(&self.file);
        let original = self.original;
        let lock = self.lock.take();
        async move {
            if let Some(handle) = inflight {
                let _ = handle.await;
            }
            let truncated = tokio::task::spawn_blocking(move || {
                let result = file.set_len(original);
                drop(file);
                drop(lock);
                result
            })
            .await;
            match truncated {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "could not roll back a failed upload append")
                }
                Err(e) => tracing::error!(error = %e, "could not roll back a failed upload append"),
            }
        }
    }

    /// Rolls back and waits until done (the rollback completes even if this wait is dropped).
    pub(super) async fn rollback(mut self) {
        let _ = tokio::spawn(self.rollback_task()).await;
    }

    /// Completes the append: everything written and `fsync`ed. Returns the new size.
    pub(super) async fn finish(mut self, last: Vec<Bytes>) -> Result<u64> {
        let done = match self.write(last, true).await {
            Ok(()) => self.wait().await,
            Err(e) => Err(e),
        };
        match done {
            Ok(()) => {
                self.finished = true;
                Ok(self.original + self.written)
            }
            Err(e) => {
                self.rollback().await;
                Err(StorageError::Io(e))
            }
        }
    }
}

impl Drop for Append {
    fn drop(&mut self) {
        if !self.finished {
            let task = self.rollback_task();
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    runtime.spawn(task);
                }
                Err(_) => {
                    tracing::error!("upload append abandoned outside a runtime; not rolled back")
                }
            }
        }
    }
}
