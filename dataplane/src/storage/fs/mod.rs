//! Filesystem backend: the embedded default, laid out exactly as the key tree in
//! [`crate::storage`] describes, under one root directory.
//!
//! # Publishing
//!
//! Every durable write goes through a temporary file in this instance's own temporary area
//! (`<root>/_tmp/<instance>/`, on the same filesystem), which is written, `fsync`ed and then
//! renamed (records) or hard-linked (blobs) into place, after which the parent directory is
//! `fsync`ed. Directories created on the way are made durable in their parent too. A visible
//! path therefore always holds a complete file.
//!
//! Blobs are published without replacing: if a blob with the same digest already exists it is
//! kept and the new copy is dropped (the content is identical, the digest was verified by the
//! caller). Records (links, tags, referrers) are replaced atomically, so the last writer wins.
//!
//! # Upload sessions
//!
//! A session is the directory `uploads/<id>/` holding `data` (the bytes received so far) and
//! `info` (its JSON [`UploadInfo`](super::UploadInfo)); it is assembled in the temporary area and renamed into
//! place whole, so a session either exists completely or not at all. The session size is the
//! length of `data`. Operations on one session are serialized by an in-process async lock and,
//! against other processes sharing the root, by an exclusive `flock` on `data`. An append is all
//! or nothing: if the client's body fails, storage fails, or the append is abandoned (its future
//! dropped), the file is truncated back to its original length before the session can be used
//! again. Appended bytes are `fsync`ed before the append returns.
//!
//! A commit hard-links `data` to the blob path, then removes the session. If it is interrupted
//! in between, the session still exists; committing it again completes the removal, while
//! appending to it is refused (`NotFound`), since its bytes are the published blob's.
//!
//! # Temporary area
//!
//! Each [`FsStorage`] owns `_tmp/<instance>/`, advertised by an `flock`ed `_tmp/<instance>.lock`.
//! [`FsStorage::open`] removes every area whose lock is not held (its process is gone) and
//! anything else found in `_tmp/`, so several processes may share one root and a restart after a
//! crash starts clean.
//!
//! # Pulls by tag
//!
//! [`Storage::tag_manifest`](super::Storage::tag_manifest) (a tag and its revision record, the hot path of a pull) is
//! answered from memory for up to [`TAG_CACHE_TTL`] after the records were last read from disk.
//! Writes through this instance (tag set or delete, revision link or unlink) take effect at
//! once; a tag moved or deleted by another process sharing the root is seen within that time.
//! A new tag is never missed: only found tags are kept. The other methods always read the
//! files.
//!
//! # Assumptions
//!
//! The root is on a local, case-sensitive POSIX filesystem with atomic `rename` and working
//! `flock` (ext4, xfs, btrfs, tmpfs). Tags are file names: the tag grammar cannot produce `.`,
//! `..` or a `/`.
//!
//! # Files
//!
//! `layout` (paths and small records), `publish` (durable writes), `temp_area`, `tag_cache`,
//! `uploads` (session locks and appends), `reads` (streaming reads), `walk` (the catalog
//! walk), `collect` (touches, fenced blob removal, compare-and-swap records) and
//! `operations` (the [`Storage`](super::Storage) trait).

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use self::tag_cache::TagCache;
use self::temp_area::{TempArea, clean_stale_temp};
use self::uploads::LockTable;
use super::buffers::BufferPool;
use super::{Result, StorageError};
use crate::caches::CacheMemory;

/// Size of the reads that stream a blob out (and of the largest blob read in one go).
const READ_CHUNK: usize = 1024 * 1024;
/// Read buffers kept for reuse while no read needs them (a streaming read holds about two).
const IDLE_READ_BUFFERS: usize = 4;
/// An append copies what it receives into buffers of this size and writes each once full.
const WRITE_BUFFER: usize = 1024 * 1024;
/// Write buffers kept for reuse while no append needs them (an append holds about two).
const IDLE_WRITE_BUFFERS: usize = 4;

const TMP_DIR: &str = "_tmp";
const BLOBS_DIR: &str = "blobs";
const REPOSITORIES_DIR: &str = "repositories";
const UPLOADS_DIR: &str = "uploads";
const SYSTEM_DIR: &str = "_system";
const UPLOAD_DATA: &str = "data";
const UPLOAD_INFO: &str = "info";
const LAYERS_DIR: &str = "_layers";
const MANIFESTS_DIR: &str = "_manifests";
const TAGS_DIR: &str = "_tags";
const REFERRERS_DIR: &str = "_referrers";
const PULLS_DIR: &str = "_pulls";
const PULLED_TAGS: &str = "tags";
const PULLED_MANIFESTS: &str = "manifests";
const LOCK_SUFFIX: &str = ".lock";

/// How long a pull by tag may be answered from memory after the records were read from disk
/// (the staleness bound for writes by other processes sharing the root).
pub const TAG_CACHE_TTL: Duration = Duration::from_secs(1);

/// A [`Storage`](super::Storage) backend on a local filesystem directory.
///
/// Cheap to share behind an `Arc`; all blocking filesystem work runs on tokio's blocking pool.
pub struct FsStorage {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    tmp: TempArea,
    locks: Arc<LockTable>,
    tags: TagCache,
    /// Buffers of [`READ_CHUNK`] bytes for streaming reads.
    reads: Arc<BufferPool>,
    /// Buffers of [`WRITE_BUFFER`] bytes for appends.
    writes: Arc<BufferPool>,
}

impl fmt::Debug for FsStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FsStorage")
            .field("root", &self.inner.root)
            .field("tmp", &self.inner.tmp.dir)
            .finish_non_exhaustive()
    }
}

impl FsStorage {
    /// Opens (creating it if needed) the storage rooted at `root`, and removes temporary files
    /// left behind by processes that are gone.
    pub async fn open(root: impl Into<PathBuf>) -> Result<FsStorage> {
        Self::open_with_cache_memory(root, CacheMemory::DEFAULT).await
    }

    /// [`FsStorage::open`], with a tag cache of its share of `caches`.
    pub async fn open_with_cache_memory(
        root: impl Into<PathBuf>,
        caches: CacheMemory,
    ) -> Result<FsStorage> {
        let root = root.into();
        blocking(move || {
            for dir in [TMP_DIR, BLOBS_DIR, REPOSITORIES_DIR, UPLOADS_DIR] {
                fs::create_dir_all(root.join(dir))?;
            }
            let tmp_root = root.join(TMP_DIR);
            clean_stale_temp(&tmp_root)?;
            let tmp = TempArea::create(&tmp_root)?;
            Ok(FsStorage {
                inner: Arc::new(Inner {
                    root,
                    tmp,
                    locks: Arc::default(),
                    tags: TagCache::new(caches.tag_entries()),
                    reads: BufferPool::new(READ_CHUNK, IDLE_READ_BUFFERS),
                    writes: BufferPool::new(WRITE_BUFFER, IDLE_WRITE_BUFFERS),
                }),
            })
        })
        .await
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// This instance's temporary directory (empty whenever no operation is in progress).
    pub fn temp_dir(&self) -> &Path {
        &self.inner.tmp.dir
    }

    /// Runs `f` on the blocking pool with the shared state.
    async fn run<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        blocking(move || f(&inner)).await
    }
}

/// Runs blocking filesystem work on tokio's blocking pool.
async fn blocking<T, F>(f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StorageError::Backend(format!("filesystem task failed: {e}")))?
}

/// Maps "no such file" to [`StorageError::NotFound`], other errors to [`StorageError::Io`].
fn not_found(e: io::Error) -> StorageError {
    if e.kind() == io::ErrorKind::NotFound {
        StorageError::NotFound
    } else {
        StorageError::Io(e)
    }
}

mod collect;
mod layout;
mod operations;
mod publish;
mod reads;
mod tag_cache;
mod temp_area;
mod uploads;
mod walk;

#[cfg(test)]
mod tests;
