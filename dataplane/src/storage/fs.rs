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
//! `info` (its JSON [`UploadInfo`]); it is assembled in the temporary area and renamed into
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
//! [`Storage::tag_manifest`] (a tag and its revision record, the hot path of a pull) is
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

use std::collections::HashMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::io::{self, IoSlice, Write};
use std::ops::Range;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use tokio::task::JoinHandle;

use super::buffers::BufferPool;
use super::{ByteStream, ManifestMeta, Result, Storage, StorageError, UploadId, UploadInfo};
use crate::oci::{Digest, RepoName, Tag};

/// Size of the reads that stream a blob out (and of the largest blob read in one go).
const READ_CHUNK: usize = 1024 * 1024;
/// Read buffers kept for reuse while no read needs them (a streaming read holds about two).
const IDLE_READ_BUFFERS: usize = 4;
/// An append hands the received chunks to a blocking write once this many bytes are queued.
const WRITE_BATCH_BYTES: usize = 1024 * 1024;
/// ... or once this many chunks are queued.
const WRITE_BATCH_CHUNKS: usize = 256;

const TMP_DIR: &str = "_tmp";
const BLOBS_DIR: &str = "blobs";
const REPOSITORIES_DIR: &str = "repositories";
const UPLOADS_DIR: &str = "uploads";
const UPLOAD_DATA: &str = "data";
const UPLOAD_INFO: &str = "info";
const LAYERS_DIR: &str = "_layers";
const MANIFESTS_DIR: &str = "_manifests";
const TAGS_DIR: &str = "_tags";
const REFERRERS_DIR: &str = "_referrers";
const LOCK_SUFFIX: &str = ".lock";

/// How long a pull by tag may be answered from memory after the records were read from disk
/// (the staleness bound for writes by other processes sharing the root).
pub const TAG_CACHE_TTL: Duration = Duration::from_secs(1);
/// Above this many remembered tags the memory starts over.
const TAG_CACHE_ENTRIES: usize = 16_384;

/// A [`Storage`] backend on a local filesystem directory.
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
                    tags: TagCache::default(),
                    reads: BufferPool::new(READ_CHUNK, IDLE_READ_BUFFERS),
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

// ---------------------------------------------------------------------------------------------
// Paths.

impl Inner {
    fn blob_path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        let mut p = self.root.join(BLOBS_DIR);
        p.push(digest.algorithm().as_str());
        p.push(&hex[..2]);
        p.push(hex);
        p
    }

    fn repo_dir(&self, repo: &RepoName) -> PathBuf {
        let mut p = self.root.join(REPOSITORIES_DIR);
        p.extend(repo.components());
        p
    }

    fn repo_digest_path(&self, repo: &RepoName, kind: &str, digest: &Digest) -> PathBuf {
        let mut p = self.repo_dir(repo);
        p.push(kind);
        p.push(digest.algorithm().as_str());
        p.push(digest.hex());
        p
    }

    fn tag_path(&self, repo: &RepoName, tag: &Tag) -> PathBuf {
        let mut p = self.repo_dir(repo);
        p.push(TAGS_DIR);
        p.push(tag.as_str());
        p
    }

    fn referrers_dir(&self, repo: &RepoName, subject: &Digest) -> PathBuf {
        self.repo_digest_path(repo, REFERRERS_DIR, subject)
    }

    fn referrer_path(&self, repo: &RepoName, subject: &Digest, referrer: &Digest) -> PathBuf {
        let mut p = self.referrers_dir(repo, subject);
        p.push(referrer.algorithm().as_str());
        p.push(referrer.hex());
        p
    }

    fn uploads_dir(&self) -> PathBuf {
        self.root.join(UPLOADS_DIR)
    }

    fn upload_dir(&self, id: &UploadId) -> PathBuf {
        self.uploads_dir().join(id.as_str())
    }
}

// ---------------------------------------------------------------------------------------------
// Durable publishing.

/// `fsync`s a directory, making the entries created or removed in it durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// A temporary path that is removed on drop unless it was kept.
struct TempPath {
    path: PathBuf,
    keep: bool,
}

impl TempPath {
    fn new(path: PathBuf) -> Self {
        Self { path, keep: false }
    }

    fn keep(mut self) {
        self.keep = true;
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        if !self.keep {
            let _ = match fs::symlink_metadata(&self.path) {
                Ok(m) if m.is_dir() => fs::remove_dir_all(&self.path),
                Ok(_) => fs::remove_file(&self.path),
                Err(_) => Ok(()),
            };
        }
    }
}

impl Inner {
    /// Creates `dir` and any missing parents, making each new directory durable in its parent.
    fn ensure_dir(&self, dir: &Path) -> io::Result<()> {
        match fs::create_dir(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound && dir != self.root => {
                let parent = dir.parent().ok_or(e)?;
                self.ensure_dir(parent)?;
                match fs::create_dir(dir) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e),
        }
        match dir.parent() {
            Some(parent) => sync_dir(parent),
            None => Ok(()),
        }
    }

    /// Writes `data` to a new, `fsync`ed temporary file.
    fn write_temp(&self, data: &[u8]) -> io::Result<TempPath> {
        let tmp = TempPath::new(self.tmp.next_path());
        let mut file = File::create_new(&tmp.path)?;
        file.write_all(data)?;
        file.sync_data()?;
        Ok(tmp)
    }

    /// Atomically writes (or replaces) the small file `path` with `data`, durably.
    fn write_record(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        let tmp = self.write_temp(data)?;
        let parent = parent_of(path)?;
        self.ensure_dir(parent)?;
        fs::rename(&tmp.path, path)?;
        tmp.keep();
        sync_dir(parent)
    }

    /// Writes a small record only if `path` does not exist, atomically (a complete temporary
    /// file hard-linked into place, which fails when the name exists); returns whether it was
    /// created. Without hard links it falls back to a check and a rename, which is not safe
    /// against a concurrent creator.
    fn create_record(&self, path: &Path, data: &[u8]) -> io::Result<bool> {
        let tmp = self.write_temp(data)?;
        let parent = parent_of(path)?;
        self.ensure_dir(parent)?;
        match fs::hard_link(&tmp.path, path) {
            Ok(()) => sync_dir(parent).map(|()| true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(link_err) => {
                if fs::symlink_metadata(path).is_ok() {
                    return Ok(false);
                }
                tracing::debug!(error = %link_err, "hard link failed, creating record by rename");
                fs::rename(&tmp.path, path)?;
                tmp.keep();
                sync_dir(parent).map(|()| true)
            }
        }
    }

    /// Publishes the complete, `fsync`ed file `src` as blob `digest`, keeping an existing blob.
    /// `src` itself is left in place (the caller removes it).
    fn publish_blob(&self, src: &Path, digest: &Digest) -> io::Result<()> {
        let dst = self.blob_path(digest);
        let parent = parent_of(&dst)?;
        self.ensure_dir(parent)?;
        match fs::hard_link(src, &dst) {
            Ok(()) => sync_dir(parent),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            Err(link_err) => {
                // A filesystem without hard links: fall back to copying through a temporary
                // file and an atomic rename (replacing an identical blob is harmless).
                if fs::symlink_metadata(&dst).is_ok() {
                    return Ok(());
                }
                tracing::debug!(error = %link_err, "hard link failed, publishing blob by copy");
                let tmp = TempPath::new(self.tmp.next_path());
                fs::copy(src, &tmp.path)?;
                File::open(&tmp.path)?.sync_data()?;
                fs::rename(&tmp.path, &dst)?;
                tmp.keep();
                sync_dir(parent)
            }
        }
    }

    /// Removes a file durably; returns whether it existed.
    fn remove_record(&self, path: &Path) -> io::Result<bool> {
        match fs::remove_file(path) {
            Ok(()) => {
                sync_dir(parent_of(path)?)?;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Reads a small file, `None` if it does not exist.
    fn read_optional(path: &Path) -> io::Result<Option<Vec<u8>>> {
        match fs::read(path) {
            Ok(data) => Ok(Some(data)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Records.

impl Inner {
    /// The digest a tag points at, `None` if the tag does not exist.
    fn read_tag(&self, repo: &RepoName, tag: &Tag) -> Result<Option<Digest>> {
        let path = self.tag_path(repo, tag);
        let Some(record) = Inner::read_optional(&path)? else {
            return Ok(None);
        };
        let text = std::str::from_utf8(&record).map_err(|e| corrupt(&path, e))?;
        text.trim().parse().map(Some).map_err(|e| corrupt(&path, e))
    }

    /// A manifest revision record of `repo`, `None` if it does not exist.
    fn read_manifest_meta(&self, repo: &RepoName, digest: &Digest) -> Result<Option<ManifestMeta>> {
        let path = self.repo_digest_path(repo, MANIFESTS_DIR, digest);
        match Inner::read_optional(&path)? {
            None => Ok(None),
            Some(record) => serde_json::from_slice(&record)
                .map(Some)
                .map_err(|e| corrupt(&path, e)),
        }
    }
}

fn parent_of(path: &Path) -> io::Result<&Path> {
    path.parent()
        .ok_or_else(|| io::Error::other(format!("{} has no parent", path.display())))
}

fn corrupt(path: &Path, what: impl fmt::Display) -> StorageError {
    StorageError::Backend(format!("corrupt record {}: {what}", path.display()))
}

/// Entries of a directory, empty if it does not exist.
fn read_dir_names(dir: &Path) -> io::Result<Vec<(String, fs::FileType)>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry?;
        // Names we did not write (not UTF-8) are not ours; skip them.
        if let Ok(name) = entry.file_name().into_string() {
            out.push((name, entry.file_type()?));
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// The temporary area.

/// This instance's temporary directory, advertised as live by an `flock`ed lock file.
struct TempArea {
    dir: PathBuf,
    lock_path: PathBuf,
    _lock: File,
    counter: AtomicU64,
}

impl TempArea {
    fn create(tmp_root: &Path) -> io::Result<Self> {
        for _ in 0..8 {
            let name = uuid::Uuid::new_v4().simple().to_string();
            let lock_path = tmp_root.join(format!("{name}{LOCK_SUFFIX}"));
            let lock = File::create_new(&lock_path)?;
            lock.lock()?;
            // Another process cleaning `_tmp/` may have removed the file between its creation
            // and our lock; only a lock on the file still at that path advertises the area.
            if !same_file(&lock, &lock_path)? {
                continue;
            }
            let dir = tmp_root.join(&name);
            fs::create_dir(&dir)?;
            return Ok(Self {
                dir,
                lock_path,
                _lock: lock,
                counter: AtomicU64::new(0),
            });
        }
        Err(io::Error::other(
            "could not claim a temporary directory (concurrent cleanup)",
        ))
    }

    fn next_path(&self) -> PathBuf {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        self.dir.join(n.to_string())
    }
}

impl Drop for TempArea {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
        let _ = fs::remove_file(&self.lock_path);
    }
}

/// Whether the open `file` is the file currently at `path`.
fn same_file(file: &File, path: &Path) -> io::Result<bool> {
    let open = file.metadata()?;
    match fs::metadata(path) {
        Ok(at_path) => Ok(open.dev() == at_path.dev() && open.ino() == at_path.ino()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Removes from `_tmp/` everything that does not belong to a live instance.
fn clean_stale_temp(tmp_root: &Path) -> io::Result<()> {
    let ignore_missing = |r: io::Result<()>| match r {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    };
    for entry in fs::read_dir(tmp_root)? {
        let entry = entry?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if let Some(area) = name.strip_suffix(LOCK_SUFFIX) {
            let lock = match File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            match lock.try_lock() {
                Ok(()) => {
                    tracing::info!(area = %area, "removing a stale temporary area");
                    ignore_missing(fs::remove_dir_all(tmp_root.join(area)))?;
                    ignore_missing(fs::remove_file(&path))?;
                }
                Err(fs::TryLockError::WouldBlock) => {}
                Err(fs::TryLockError::Error(e)) => return Err(e),
            }
        } else if entry.file_type()?.is_dir() {
            // Areas are created after their lock file, so an area without one is stale.
            let lock_path = tmp_root.join(format!("{name}{LOCK_SUFFIX}"));
            if fs::symlink_metadata(&lock_path).is_err() {
                ignore_missing(fs::remove_dir_all(&path))?;
            }
        } else {
            ignore_missing(fs::remove_file(&path))?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Pulls by tag from memory.

/// Tags found recently, with the revision record of the manifest they point at.
///
/// Every invalidation bumps `generation`; a resolution read from disk is remembered only if no
/// invalidation happened since the read started, so a read racing with a write through this
/// instance cannot bring the old value back.
#[derive(Debug, Default)]
struct TagCache {
    inner: RwLock<TagCacheInner>,
}

#[derive(Debug, Default)]
struct TagCacheInner {
    repos: HashMap<RepoName, HashMap<Tag, CachedTag>>,
    entries: usize,
    generation: u64,
}

#[derive(Debug, Clone)]
struct CachedTag {
    digest: Digest,
    meta: ManifestMeta,
    read_at: Instant,
}

impl TagCache {
    /// The remembered resolution of `tag`, if read less than [`TAG_CACHE_TTL`] ago.
    fn get(&self, repo: &RepoName, tag: &Tag) -> Option<(Digest, ManifestMeta)> {
        let inner = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        let cached = inner.repos.get(repo)?.get(tag)?;
        (cached.read_at.elapsed() < TAG_CACHE_TTL)
            .then(|| (cached.digest.clone(), cached.meta.clone()))
    }

    /// The generation to pass to [`TagCache::insert`] for a read starting now.
    fn generation(&self) -> u64 {
        self.inner
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .generation
    }

    /// Remembers a resolution read from disk (started at `generation`, at `read_at`), unless
    /// something was invalidated since.
    fn insert(
        &self,
        repo: &RepoName,
        tag: &Tag,
        resolved: &(Digest, ManifestMeta),
        generation: u64,
        read_at: Instant,
    ) {
        let mut inner = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        if inner.generation != generation {
            return;
        }
        if inner.entries >= TAG_CACHE_ENTRIES {
            inner.repos.clear();
            inner.entries = 0;
        }
        let cached = CachedTag {
            digest: resolved.0.clone(),
            meta: resolved.1.clone(),
            read_at,
        };
        if inner
            .repos
            .entry(repo.clone())
            .or_default()
            .insert(tag.clone(), cached)
            .is_none()
        {
            inner.entries += 1;
        }
    }

    /// Forgets one tag of `repo`, or every tag of `repo` (its revision records changed).
    fn invalidate(&self, repo: &RepoName, tag: Option<&Tag>) {
        let mut inner = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        inner.generation += 1;
        let removed = match (tag, inner.repos.get_mut(repo)) {
            (_, None) => 0,
            (Some(tag), Some(tags)) => usize::from(tags.remove(tag).is_some()),
            (None, Some(_)) => inner.repos.remove(repo).map_or(0, |tags| tags.len()),
        };
        inner.entries -= removed;
    }
}

// ---------------------------------------------------------------------------------------------
// Per-upload locks.

/// In-process async locks, one per upload session in use; entries are removed when unused.
#[derive(Debug, Default)]
struct LockTable {
    map: Mutex<HashMap<UploadId, Arc<tokio::sync::Mutex<()>>>>,
}

/// Holds one session's lock; releases it (and forgets the entry if unused) on drop.
struct UploadLock {
    // Field order matters: the guard is released before the entry is forgotten.
    _guard: tokio::sync::OwnedMutexGuard<()>,
    _entry: LockEntry,
}

struct LockEntry {
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
    async fn lock(self: &Arc<Self>, id: &UploadId) -> UploadLock {
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
    fn read_upload_info(&self, repo: &RepoName, id: &UploadId) -> Result<UploadInfo> {
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
    fn open_upload_data(&self, id: &UploadId, exclusive: bool) -> Result<File> {
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
    fn remove_upload_dir(&self, id: &UploadId) -> Result<()> {
        let tmp = TempPath::new(self.tmp.next_path());
        fs::rename(self.upload_dir(id), &tmp.path).map_err(not_found)?;
        sync_dir(&self.uploads_dir())?;
        drop(tmp);
        Ok(())
    }
}

/// Writes a batch of chunks at the end of `file` with as few system calls as possible.
fn write_batch(mut file: &File, batch: &[Bytes]) -> io::Result<()> {
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
struct Append {
    file: Arc<File>,
    original: u64,
    written: u64,
    inflight: Option<JoinHandle<io::Result<()>>>,
    lock: Option<UploadLock>,
    finished: bool,
}

impl Append {
    /// Waits for the write in flight, if any.
    async fn wait(&mut self) -> io::Result<()> {
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
    async fn write(&mut self, batch: Vec<Bytes>, sync: bool) -> io::Result<()> {
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
    fn rollback_task(&mut self) -> impl Future<Output = ()> + Send + 'static {
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
    async fn rollback(mut self) {
        let _ = tokio::spawn(self.rollback_task()).await;
    }

    /// Completes the append: everything written and `fsync`ed. Returns the new size.
    async fn finish(mut self, last: Vec<Bytes>) -> Result<u64> {
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

// ---------------------------------------------------------------------------------------------
// Streaming reads.

/// Streams `len` bytes of `file` from `start`, reading the next chunk while the current one is
/// being consumed, into buffers from `pool`.
fn file_stream(file: File, start: u64, len: u64, pool: Arc<BufferPool>) -> ByteStream {
    struct State {
        file: Arc<File>,
        pool: Arc<BufferPool>,
        pos: u64,
        end: u64,
        next: Option<JoinHandle<io::Result<Bytes>>>,
    }

    impl State {
        fn spawn_read(&self) -> JoinHandle<io::Result<Bytes>> {
            let (file, pool, pos) = (Arc::clone(&self.file), Arc::clone(&self.pool), self.pos);
            let n = usize::try_from(self.end - pos).map_or(READ_CHUNK, |n| n.min(READ_CHUNK));
            tokio::task::spawn_blocking(move || {
                let mut buffer = pool.take()?;
                buffer.fill_with(n, |free| {
                    file.read_exact_at(free, pos)?;
                    Ok(free.len())
                })?;
                Ok(buffer.freeze())
            })
        }
    }

    let mut state = State {
        file: Arc::new(file),
        pool,
        pos: start,
        end: start + len,
        next: None,
    };
    if len > 0 {
        state.next = Some(state.spawn_read());
    }
    Box::pin(futures_util::stream::try_unfold(
        state,
        |mut state| async move {
            let Some(handle) = state.next.take() else {
                return Ok(None);
            };
            let chunk = handle.await.map_err(io::Error::other)??;
            state.pos += chunk.len() as u64;
            if state.pos < state.end {
                state.next = Some(state.spawn_read());
            }
            Ok(Some((chunk, state)))
        },
    ))
}

/// A blob opened for reading: small ones are read at once.
enum Opened {
    Small(Bytes),
    Large(File, u64, u64),
}

/// Checks a requested range against an object of `size` bytes; returns `(start, len)`.
///
/// A range is satisfiable when `start < size` and `start <= end <= size`; an empty range inside
/// the object is allowed (and yields nothing), but no range fits an empty object, as in HTTP.
fn check_range(range: Option<Range<u64>>, size: u64) -> Result<(u64, u64)> {
    match range {
        None => Ok((0, size)),
        Some(r) if r.start < size && r.start <= r.end && r.end <= size => {
            Ok((r.start, r.end - r.start))
        }
        Some(_) => Err(StorageError::RangeNotSatisfiable { size }),
    }
}

fn parse_digest_parts(alg: &str, hex: &str) -> Option<Digest> {
    format!("{alg}:{hex}").parse().ok()
}

// ---------------------------------------------------------------------------------------------
// Repositories walk.

/// Whether a repository directory records at least one manifest revision.
fn has_manifest(repo_dir: &Path) -> io::Result<bool> {
    let manifests = repo_dir.join(MANIFESTS_DIR);
    for (alg, kind) in read_dir_names(&manifests)? {
        if kind.is_dir()
            && read_dir_names(&manifests.join(alg))?
                .iter()
                .any(|(_, k)| k.is_file())
        {
            return Ok(true);
        }
    }
    Ok(false)
}

fn walk_repositories(
    dir: &Path,
    prefix: &mut Vec<String>,
    out: &mut Vec<RepoName>,
) -> io::Result<()> {
    for (name, kind) in read_dir_names(dir)? {
        if !kind.is_dir() || name.starts_with('_') {
            continue;
        }
        let sub = dir.join(&name);
        prefix.push(name);
        if has_manifest(&sub)? {
            match prefix.join("/").parse::<RepoName>() {
                Ok(repo) => out.push(repo),
                Err(_) => {
                    tracing::warn!(path = %sub.display(), "skipping an invalid repository directory")
                }
            }
        }
        walk_repositories(&sub, prefix, out)?;
        prefix.pop();
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The trait.

#[async_trait::async_trait]
impl Storage for FsStorage {
    async fn blob_size(&self, digest: &Digest) -> Result<Option<u64>> {
        let digest = digest.clone();
        self.run(move |inner| match fs::metadata(inner.blob_path(&digest)) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        })
        .await
    }

    async fn blob_read(&self, digest: &Digest, range: Option<Range<u64>>) -> Result<ByteStream> {
        let digest = digest.clone();
        let opened = self
            .run(move |inner| {
                let file = File::open(inner.blob_path(&digest)).map_err(not_found)?;
                let size = file.metadata()?.len();
                let (start, len) = check_range(range, size)?;
                if len <= READ_CHUNK as u64 {
                    let mut buf = BytesMut::zeroed(len as usize);
                    file.read_exact_at(&mut buf, start)?;
                    Ok(Opened::Small(buf.freeze()))
                } else {
                    Ok(Opened::Large(file, start, len))
                }
            })
            .await?;
        Ok(match opened {
            Opened::Small(data) if data.is_empty() => Box::pin(futures_util::stream::empty()),
            Opened::Small(data) => Box::pin(futures_util::stream::once(async move { Ok(data) })),
            Opened::Large(file, start, len) => {
                file_stream(file, start, len, Arc::clone(&self.inner.reads))
            }
        })
    }

    async fn blob_put(&self, digest: &Digest, data: Bytes) -> Result<()> {
        let digest = digest.clone();
        self.run(move |inner| {
            if fs::symlink_metadata(inner.blob_path(&digest)).is_ok() {
                return Ok(());
            }
            let tmp = inner.write_temp(&data)?;
            inner.publish_blob(&tmp.path, &digest)?;
            Ok(())
        })
        .await
    }

    async fn blob_delete(&self, digest: &Digest) -> Result<()> {
        let digest = digest.clone();
        self.run(move |inner| {
            inner.remove_record(&inner.blob_path(&digest))?;
            Ok(())
        })
        .await
    }

    async fn link_blob(&self, repo: &RepoName, digest: &Digest) -> Result<()> {
        let (repo, digest) = (repo.clone(), digest.clone());
        self.run(move |inner| {
            let path = inner.repo_digest_path(&repo, LAYERS_DIR, &digest);
            if fs::symlink_metadata(&path).is_ok() {
                return Ok(());
            }
            inner.write_record(&path, digest.to_string().as_bytes())?;
            Ok(())
        })
        .await
    }

    async fn blob_linked(&self, repo: &RepoName, digest: &Digest) -> Result<bool> {
        let (repo, digest) = (repo.clone(), digest.clone());
        self.run(move |inner| {
            let path = inner.repo_digest_path(&repo, LAYERS_DIR, &digest);
            match fs::symlink_metadata(&path) {
                Ok(m) => Ok(m.is_file()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
                Err(e) => Err(e.into()),
            }
        })
        .await
    }

    async fn unlink_blob(&self, repo: &RepoName, digest: &Digest) -> Result<bool> {
        let (repo, digest) = (repo.clone(), digest.clone());
        self.run(move |inner| {
            Ok(inner.remove_record(&inner.repo_digest_path(&repo, LAYERS_DIR, &digest))?)
        })
        .await
    }

    async fn upload_create(&self, repo: &RepoName) -> Result<UploadInfo> {
        let info = UploadInfo {
            id: UploadId::generate(),
            repository: repo.to_string(),
            size: 0,
            started_at: SystemTime::now(),
            checkpoint: None,
        };
        let record = serde_json::to_vec(&info)
            .map_err(|e| StorageError::Backend(format!("cannot encode an upload record: {e}")))?;
        let id = info.id.clone();
        self.run(move |inner| {
            // Assemble the session in the temporary area, then move it into place whole.
            let staging = TempPath::new(inner.tmp.next_path());
            fs::create_dir(&staging.path)?;
            File::create_new(staging.path.join(UPLOAD_DATA))?.sync_all()?;
            let mut file = File::create_new(staging.path.join(UPLOAD_INFO))?;
            file.write_all(&record)?;
            file.sync_all()?;
            sync_dir(&staging.path)?;
            let uploads = inner.uploads_dir();
            inner.ensure_dir(&uploads)?;
            fs::rename(&staging.path, inner.upload_dir(&id))?;
            staging.keep();
            sync_dir(&uploads)?;
            Ok(())
        })
        .await?;
        Ok(info)
    }

    async fn upload_info(&self, repo: &RepoName, id: &UploadId) -> Result<UploadInfo> {
        let lock = self.inner.locks.lock(id).await;
        let (repo, id) = (repo.clone(), id.clone());
        self.run(move |inner| {
            let mut info = inner.read_upload_info(&repo, &id)?;
            let data = inner.open_upload_data(&id, false)?;
            info.size = data.metadata()?.len();
            drop(lock);
            Ok(info)
        })
        .await
    }

    async fn upload_append(
        &self,
        repo: &RepoName,
        id: &UploadId,
        offset: u64,
        mut body: ByteStream,
    ) -> Result<u64> {
        let lock = self.inner.locks.lock(id).await;
        let (repo, id) = (repo.clone(), id.clone());
        let (file, current, lock) = self
            .run(move |inner| {
                inner.read_upload_info(&repo, &id)?;
                let file = inner.open_upload_data(&id, true)?;
                let meta = file.metadata()?;
                if meta.nlink() > 1 {
                    // A commit published these bytes (a hard link to the blob) and was
                    // interrupted before removing the session: the session is finished, and
                    // writing to it would change the published blob.
                    return Err(StorageError::NotFound);
                }
                Ok((file, meta.len(), lock))
            })
            .await?;
        if offset != current {
            return Err(StorageError::OffsetMismatch {
                requested: offset,
                current,
            });
        }
        let mut append = Append {
            file: Arc::new(file),
            original: current,
            written: 0,
            inflight: None,
            lock: Some(lock),
            finished: false,
        };
        let mut batch = Vec::new();
        let mut batch_bytes = 0;
        while let Some(chunk) = body.next().await {
            match chunk {
                Ok(chunk) if chunk.is_empty() => {}
                Ok(chunk) => {
                    batch_bytes += chunk.len();
                    batch.push(chunk);
                    if batch_bytes >= WRITE_BATCH_BYTES || batch.len() >= WRITE_BATCH_CHUNKS {
                        batch_bytes = 0;
                        if let Err(e) = append.write(std::mem::take(&mut batch), false).await {
                            append.rollback().await;
                            return Err(StorageError::Io(e));
                        }
                    }
                }
                Err(e) => {
                    append.rollback().await;
                    return Err(StorageError::Body(e));
                }
            }
        }
        append.finish(batch).await
    }

    async fn upload_read(&self, repo: &RepoName, id: &UploadId) -> Result<ByteStream> {
        let lock = self.inner.locks.lock(id).await;
        let (repo, id) = (repo.clone(), id.clone());
        let (file, len) = self
            .run(move |inner| {
                inner.read_upload_info(&repo, &id)?;
                let file = inner.open_upload_data(&id, false)?;
                let len = file.metadata()?.len();
                // Appends only ever add after `len`, and a commit or delete leaves the open
                // file readable: the snapshot stays valid without holding the locks.
                file.unlock()?;
                drop(lock);
                Ok((file, len))
            })
            .await?;
        Ok(file_stream(file, 0, len, Arc::clone(&self.inner.reads)))
    }

    async fn upload_commit(&self, repo: &RepoName, id: &UploadId, digest: &Digest) -> Result<u64> {
        let lock = self.inner.locks.lock(id).await;
        let (repo, id, digest) = (repo.clone(), id.clone(), digest.clone());
        self.run(move |inner| {
            inner.read_upload_info(&repo, &id)?;
            let file = inner.open_upload_data(&id, true)?;
            file.sync_data()?;
            let size = file.metadata()?.len();
            inner.publish_blob(&inner.upload_dir(&id).join(UPLOAD_DATA), &digest)?;
            inner.remove_upload_dir(&id)?;
            drop(file);
            drop(lock);
            Ok(size)
        })
        .await
    }

    async fn upload_delete(&self, repo: &RepoName, id: &UploadId) -> Result<()> {
        let lock = self.inner.locks.lock(id).await;
        let (repo, id) = (repo.clone(), id.clone());
        self.run(move |inner| {
            inner.read_upload_info(&repo, &id)?;
            let file = match inner.open_upload_data(&id, true) {
                Ok(file) => Some(file),
                Err(StorageError::NotFound) => None,
                Err(e) => return Err(e),
            };
            inner.remove_upload_dir(&id)?;
            drop(file);
            drop(lock);
            Ok(())
        })
        .await
    }

    async fn uploads(&self) -> Result<Vec<UploadInfo>> {
        self.run(|inner| {
            let mut out = Vec::new();
            for (name, kind) in read_dir_names(&inner.uploads_dir())? {
                let Ok(id) = name.parse::<UploadId>() else {
                    continue;
                };
                if !kind.is_dir() {
                    continue;
                }
                let dir = inner.upload_dir(&id);
                let info_path = dir.join(UPLOAD_INFO);
                let Some(record) = Inner::read_optional(&info_path)? else {
                    continue;
                };
                let mut info: UploadInfo = match serde_json::from_slice(&record) {
                    Ok(info) => info,
                    Err(e) => {
                        tracing::warn!(path = %info_path.display(), error = %e, "skipping a corrupt upload record");
                        continue;
                    }
                };
                match fs::metadata(dir.join(UPLOAD_DATA)) {
                    Ok(m) => info.size = m.len(),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e.into()),
                }
                out.push(info);
            }
            out.sort_by(|a, b| a.id.cmp(&b.id));
            Ok(out)
        })
        .await
    }

    async fn manifest_link(
        &self,
        repo: &RepoName,
        digest: &Digest,
        meta: &ManifestMeta,
    ) -> Result<()> {
        let record = serde_json::to_vec(meta)
            .map_err(|e| StorageError::Backend(format!("cannot encode a manifest record: {e}")))?;
        let (repo, digest) = (repo.clone(), digest.clone());
        self.run(move |inner| {
            let path = inner.repo_digest_path(&repo, MANIFESTS_DIR, &digest);
            if Inner::read_optional(&path)?.is_some_and(|existing| existing == record) {
                return Ok(());
            }
            let written = inner.write_record(&path, &record);
            inner.tags.invalidate(&repo, None);
            Ok(written?)
        })
        .await
    }

    async fn manifest_meta(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<ManifestMeta>> {
        let (repo, digest) = (repo.clone(), digest.clone());
        self.run(move |inner| inner.read_manifest_meta(&repo, &digest))
            .await
    }

    async fn manifest_unlink(&self, repo: &RepoName, digest: &Digest) -> Result<bool> {
        let (repo, digest) = (repo.clone(), digest.clone());
        self.run(move |inner| {
            let removed =
                inner.remove_record(&inner.repo_digest_path(&repo, MANIFESTS_DIR, &digest));
            inner.tags.invalidate(&repo, None);
            Ok(removed?)
        })
        .await
    }

    async fn tag_get(&self, repo: &RepoName, tag: &Tag) -> Result<Option<Digest>> {
        let (repo, tag) = (repo.clone(), tag.clone());
        self.run(move |inner| inner.read_tag(&repo, &tag)).await
    }

    async fn tag_set(&self, repo: &RepoName, tag: &Tag, digest: &Digest) -> Result<()> {
        let (repo, tag, digest) = (repo.clone(), tag.clone(), digest.clone());
        self.run(move |inner| {
            let written =
                inner.write_record(&inner.tag_path(&repo, &tag), digest.to_string().as_bytes());
            inner.tags.invalidate(&repo, Some(&tag));
            Ok(written?)
        })
        .await
    }

    async fn tag_create(
        &self,
        repo: &RepoName,
        tag: &Tag,
        digest: &Digest,
    ) -> Result<Option<Digest>> {
        let (repo, tag, digest) = (repo.clone(), tag.clone(), digest.clone());
        self.run(move |inner| {
            let created =
                inner.create_record(&inner.tag_path(&repo, &tag), digest.to_string().as_bytes());
            inner.tags.invalidate(&repo, Some(&tag));
            match created? {
                true => Ok(None),
                false => inner.read_tag(&repo, &tag)?.map(Some).ok_or_else(|| {
                    StorageError::Backend(format!(
                        "tag {tag} of {repo} vanished while it was being created"
                    ))
                }),
            }
        })
        .await
    }

    async fn tag_delete(&self, repo: &RepoName, tag: &Tag) -> Result<bool> {
        let (repo, tag) = (repo.clone(), tag.clone());
        self.run(move |inner| {
            let removed = inner.remove_record(&inner.tag_path(&repo, &tag));
            inner.tags.invalidate(&repo, Some(&tag));
            Ok(removed?)
        })
        .await
    }

    async fn tag_manifest(
        &self,
        repo: &RepoName,
        tag: &Tag,
    ) -> Result<Option<(Digest, ManifestMeta)>> {
        if let Some(resolved) = self.inner.tags.get(repo, tag) {
            return Ok(Some(resolved));
        }
        // Both records in one trip to the blocking pool.
        let generation = self.inner.tags.generation();
        let read_at = Instant::now();
        let (repo, tag) = (repo.clone(), tag.clone());
        self.run(move |inner| {
            let Some(digest) = inner.read_tag(&repo, &tag)? else {
                return Ok(None);
            };
            let resolved = inner
                .read_manifest_meta(&repo, &digest)?
                .map(|meta| (digest, meta));
            if let Some(resolved) = &resolved {
                inner
                    .tags
                    .insert(&repo, &tag, resolved, generation, read_at);
            }
            Ok(resolved)
        })
        .await
    }

    async fn tags(&self, repo: &RepoName) -> Result<Vec<Tag>> {
        let repo = repo.clone();
        self.run(move |inner| {
            let dir = inner.repo_dir(&repo).join(TAGS_DIR);
            let mut tags: Vec<Tag> = read_dir_names(&dir)?
                .into_iter()
                .filter(|(_, kind)| kind.is_file())
                .filter_map(|(name, _)| name.parse().ok())
                .collect();
            tags.sort();
            Ok(tags)
        })
        .await
    }

    async fn referrer_add(
        &self,
        repo: &RepoName,
        subject: &Digest,
        referrer: &Digest,
        descriptor: Bytes,
    ) -> Result<()> {
        let (repo, subject, referrer) = (repo.clone(), subject.clone(), referrer.clone());
        self.run(move |inner| {
            inner.write_record(
                &inner.referrer_path(&repo, &subject, &referrer),
                &descriptor,
            )?;
            Ok(())
        })
        .await
    }

    async fn referrer_remove(
        &self,
        repo: &RepoName,
        subject: &Digest,
        referrer: &Digest,
    ) -> Result<()> {
        let (repo, subject, referrer) = (repo.clone(), subject.clone(), referrer.clone());
        self.run(move |inner| {
            inner.remove_record(&inner.referrer_path(&repo, &subject, &referrer))?;
            Ok(())
        })
        .await
    }

    async fn referrers(&self, repo: &RepoName, subject: &Digest) -> Result<Vec<Bytes>> {
        let (repo, subject) = (repo.clone(), subject.clone());
        self.run(move |inner| {
            let dir = inner.referrers_dir(&repo, &subject);
            let mut found = Vec::new();
            for (alg, kind) in read_dir_names(&dir)? {
                if !kind.is_dir() {
                    continue;
                }
                for (hex, kind) in read_dir_names(&dir.join(&alg))? {
                    let Some(digest) = parse_digest_parts(&alg, &hex) else {
                        continue;
                    };
                    if !kind.is_file() {
                        continue;
                    }
                    // Removed since listed: skip.
                    if let Some(record) = Inner::read_optional(&dir.join(&alg).join(&hex))? {
                        found.push((digest, Bytes::from(record)));
                    }
                }
            }
            found.sort_by(|a, b| a.0.cmp(&b.0));
            Ok(found.into_iter().map(|(_, d)| d).collect())
        })
        .await
    }

    async fn repositories(&self) -> Result<Vec<RepoName>> {
        self.run(|inner| {
            let mut out = Vec::new();
            walk_repositories(
                &inner.root.join(REPOSITORIES_DIR),
                &mut Vec::new(),
                &mut out,
            )?;
            out.sort();
            Ok(out)
        })
        .await
    }

    async fn check(&self) -> Result<()> {
        self.run(|inner| {
            let tmp = TempPath::new(inner.tmp.next_path());
            let mut file = File::create_new(&tmp.path)?;
            file.write_all(b"ok")?;
            drop(file);
            drop(tmp);
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::conformance::{collect, content, failing_stream, stream_of};

    crate::storage_conformance_tests!(conformance, async {
        let dir = tempfile::tempdir().expect("temporary directory");
        let storage = FsStorage::open(dir.path()).await.expect("open");
        (storage, dir)
    });

    fn repo(name: &str) -> RepoName {
        name.parse().unwrap()
    }

    /// Every file under `dir`, relative to it.
    fn files_under(dir: &Path) -> Vec<PathBuf> {
        fn walk(base: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
            for entry in fs::read_dir(dir).unwrap() {
                let entry = entry.unwrap();
                if entry.file_type().unwrap().is_dir() {
                    walk(base, &entry.path(), out);
                } else {
                    out.push(entry.path().strip_prefix(base).unwrap().to_owned());
                }
            }
        }
        let mut out = Vec::new();
        if dir.exists() {
            walk(dir, dir, &mut out);
        }
        out.sort();
        out
    }

    #[tokio::test]
    async fn layout_matches_the_documented_tree() {
        let dir = tempfile::tempdir().unwrap();
        let s = FsStorage::open(dir.path()).await.unwrap();
        let r = repo("acme/app");
        let digest = Digest::sha256_of(b"manifest");
        s.blob_put(&digest, Bytes::from_static(b"manifest"))
            .await
            .unwrap();
        s.link_blob(&r, &digest).await.unwrap();
        s.manifest_link(
            &r,
            &digest,
            &ManifestMeta {
                media_type: "x".into(),
                size: 8,
            },
        )
        .await
        .unwrap();
        s.tag_set(&r, &"v1".parse().unwrap(), &digest)
            .await
            .unwrap();
        s.referrer_add(&r, &digest, &digest, Bytes::from_static(b"{}"))
            .await
            .unwrap();
        let id = s.upload_create(&r).await.unwrap().id;
        let hex = digest.hex();
        let mut expected = vec![
            format!("blobs/sha256/{}/{hex}", &hex[..2]),
            format!("repositories/acme/app/_layers/sha256/{hex}"),
            format!("repositories/acme/app/_manifests/sha256/{hex}"),
            "repositories/acme/app/_tags/v1".to_owned(),
            format!("repositories/acme/app/_referrers/sha256/{hex}/sha256/{hex}"),
            format!("uploads/{id}/data"),
            format!("uploads/{id}/info"),
        ];
        expected.sort();
        let found: Vec<String> = files_under(dir.path())
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .filter(|p| !p.starts_with("_tmp/"))
            .collect();
        assert_eq!(found, expected);
        assert_eq!(
            fs::read_to_string(dir.path().join("repositories/acme/app/_tags/v1")).unwrap(),
            digest.to_string()
        );
    }

    #[tokio::test]
    async fn sessions_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let r = repo("restart/repo");
        let data = content(1, 10_000);
        let info = {
            let s = FsStorage::open(dir.path()).await.unwrap();
            let info = s.upload_create(&r).await.unwrap();
            s.upload_append(&r, &info.id, 0, stream_of(vec![data[..4000].to_vec()]))
                .await
                .unwrap();
            info
        };
        let s = FsStorage::open(dir.path()).await.unwrap();
        let resumed = s.upload_info(&r, &info.id).await.unwrap();
        assert_eq!(resumed.size, 4000);
        assert_eq!(resumed.started_at, info.started_at);
        assert_eq!(s.uploads().await.unwrap().len(), 1);
        assert_eq!(
            collect(s.upload_read(&r, &info.id).await.unwrap()).await,
            &data[..4000]
        );
        s.upload_append(&r, &info.id, 4000, stream_of(vec![data[4000..].to_vec()]))
            .await
            .unwrap();
        let digest = Digest::sha256_of(&data);
        s.upload_commit(&r, &info.id, &digest).await.unwrap();
        assert_eq!(
            collect(s.blob_read(&digest, None).await.unwrap()).await,
            data
        );
    }

    #[tokio::test]
    async fn open_removes_stale_temporary_files() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path().join(TMP_DIR);
        let live = FsStorage::open(dir.path()).await.unwrap();
        // Leftovers of a process that is gone: an area whose lock is free, an area without a
        // lock file, and loose files.
        fs::create_dir_all(tmp.join("dead/sub")).unwrap();
        fs::write(tmp.join("dead/sub/partial"), b"partial").unwrap();
        fs::write(tmp.join("dead.lock"), b"").unwrap();
        fs::create_dir_all(tmp.join("orphan")).unwrap();
        fs::write(tmp.join("orphan/0"), b"x").unwrap();
        fs::write(tmp.join("loose"), b"x").unwrap();
        fs::write(live.temp_dir().join("in-use"), b"x").unwrap();

        let second = FsStorage::open(dir.path()).await.unwrap();
        let mut names: Vec<String> = fs::read_dir(&tmp)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        let area = |s: &FsStorage| {
            s.temp_dir()
                .file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .to_owned()
        };
        let mut expected = vec![
            area(&live),
            format!("{}{LOCK_SUFFIX}", area(&live)),
            area(&second),
            format!("{}{LOCK_SUFFIX}", area(&second)),
        ];
        expected.sort();
        assert_eq!(names, expected, "only the live instances' areas remain");
        assert!(live.temp_dir().join("in-use").exists());

        // Dropping an instance removes its area; the next open cleans nothing else up.
        drop(live);
        drop(second);
        let _third = FsStorage::open(dir.path()).await.unwrap();
        assert_eq!(fs::read_dir(&tmp).unwrap().count(), 2);
    }

    #[tokio::test]
    async fn operations_leave_nothing_in_the_temporary_area() {
        let dir = tempfile::tempdir().unwrap();
        let s = FsStorage::open(dir.path()).await.unwrap();
        let r = repo("tmp/clean");
        let digest = Digest::sha256_of(b"abc");
        s.blob_put(&digest, Bytes::from_static(b"abc"))
            .await
            .unwrap();
        s.blob_put(&digest, Bytes::from_static(b"abc"))
            .await
            .unwrap();
        s.link_blob(&r, &digest).await.unwrap();
        s.tag_set(&r, &"t".parse().unwrap(), &digest).await.unwrap();
        s.manifest_link(
            &r,
            &digest,
            &ManifestMeta {
                media_type: "x".into(),
                size: 3,
            },
        )
        .await
        .unwrap();
        s.referrer_add(&r, &digest, &digest, Bytes::from_static(b"{}"))
            .await
            .unwrap();
        s.check().await.unwrap();
        let committed = s.upload_create(&r).await.unwrap().id;
        s.upload_append(&r, &committed, 0, stream_of(vec![b"abc".to_vec()]))
            .await
            .unwrap();
        s.upload_commit(&r, &committed, &digest).await.unwrap();
        let deleted = s.upload_create(&r).await.unwrap().id;
        let _ = s
            .upload_append(&r, &deleted, 0, failing_stream(vec![vec![1; 10]]))
            .await;
        s.upload_delete(&r, &deleted).await.unwrap();
        assert_eq!(files_under(s.temp_dir()), Vec::<PathBuf>::new());
        assert_eq!(
            files_under(&dir.path().join(UPLOADS_DIR)),
            Vec::<PathBuf>::new()
        );
    }

    #[tokio::test]
    async fn a_failed_body_publishes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = FsStorage::open(dir.path()).await.unwrap();
        let r = repo("failed/body");
        let id = s.upload_create(&r).await.unwrap().id;
        let big = content(2, 3 * 1024 * 1024);
        let result = s
            .upload_append(
                &r,
                &id,
                0,
                failing_stream(vec![big[..2 << 20].to_vec(), big[2 << 20..].to_vec()]),
            )
            .await;
        assert!(matches!(result, Err(StorageError::Body(_))));
        let data = dir
            .path()
            .join(UPLOADS_DIR)
            .join(id.as_str())
            .join(UPLOAD_DATA);
        assert_eq!(fs::metadata(data).unwrap().len(), 0);
        assert_eq!(
            files_under(&dir.path().join(BLOBS_DIR)),
            Vec::<PathBuf>::new()
        );
    }

    #[tokio::test]
    async fn tag_manifest_reads_the_tag_and_its_revision() {
        let dir = tempfile::tempdir().unwrap();
        let s = FsStorage::open(dir.path()).await.unwrap();
        let r = repo("resolve/tag");
        let t: Tag = "v1".parse().unwrap();
        let digest = Digest::sha256_of(b"m");
        let meta = ManifestMeta {
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            size: 1,
        };
        assert_eq!(s.tag_manifest(&r, &t).await.unwrap(), None, "no tag");
        s.tag_set(&r, &t, &digest).await.unwrap();
        assert_eq!(s.tag_manifest(&r, &t).await.unwrap(), None, "no revision");
        s.manifest_link(&r, &digest, &meta).await.unwrap();
        assert_eq!(
            s.tag_manifest(&r, &t).await.unwrap(),
            Some((digest.clone(), meta.clone()))
        );
        // Writes through this instance are seen at once, though the tag is remembered.
        let other = Digest::sha256_of(b"n");
        s.manifest_link(&r, &other, &meta).await.unwrap();
        s.tag_set(&r, &t, &other).await.unwrap();
        assert_eq!(
            s.tag_manifest(&r, &t).await.unwrap(),
            Some((other.clone(), meta.clone()))
        );
        s.manifest_unlink(&r, &other).await.unwrap();
        assert_eq!(s.tag_manifest(&r, &t).await.unwrap(), None, "unlinked");
        s.manifest_link(&r, &other, &meta).await.unwrap();
        assert!(s.tag_manifest(&r, &t).await.unwrap().is_some());
        let relabelled = ManifestMeta {
            media_type: "application/vnd.docker.distribution.manifest.v2+json".into(),
            size: 1,
        };
        s.manifest_link(&r, &other, &relabelled).await.unwrap();
        assert_eq!(
            s.tag_manifest(&r, &t).await.unwrap(),
            Some((other.clone(), relabelled))
        );
        s.tag_delete(&r, &t).await.unwrap();
        assert_eq!(s.tag_manifest(&r, &t).await.unwrap(), None, "tag deleted");
        // Another process sharing the root: its tag moves are seen within the cache lifetime.
        s.tag_set(&r, &t, &digest).await.unwrap();
        let second = FsStorage::open(dir.path()).await.unwrap();
        assert_eq!(
            second.tag_manifest(&r, &t).await.unwrap().map(|(d, _)| d),
            Some(digest.clone())
        );
        s.tag_set(&r, &t, &other).await.unwrap();
        tokio::time::sleep(TAG_CACHE_TTL + Duration::from_millis(50)).await;
        assert_eq!(
            second.tag_manifest(&r, &t).await.unwrap().map(|(d, _)| d),
            Some(other.clone())
        );
        s.tag_delete(&r, &t).await.unwrap();
        fs::create_dir_all(dir.path().join("repositories/resolve/tag/_tags")).unwrap();
        fs::write(
            dir.path().join("repositories/resolve/tag/_tags/v1"),
            b"junk",
        )
        .unwrap();
        assert!(matches!(
            s.tag_manifest(&r, &t).await,
            Err(StorageError::Backend(_))
        ));
    }

    #[tokio::test]
    async fn corrupt_records_are_backend_errors() {
        let dir = tempfile::tempdir().unwrap();
        let s = FsStorage::open(dir.path()).await.unwrap();
        let r = repo("corrupt/repo");
        let t: Tag = "bad".parse().unwrap();
        let digest = Digest::sha256_of(b"x");
        s.tag_set(&r, &t, &digest).await.unwrap();
        s.manifest_link(
            &r,
            &digest,
            &ManifestMeta {
                media_type: "x".into(),
                size: 1,
            },
        )
        .await
        .unwrap();
        let repo_dir = dir.path().join("repositories/corrupt/repo");
        fs::write(repo_dir.join("_tags/bad"), b"not a digest").unwrap();
        fs::write(
            repo_dir.join(format!("_manifests/sha256/{}", digest.hex())),
            b"{broken",
        )
        .unwrap();
        assert!(matches!(
            s.tag_get(&r, &t).await,
            Err(StorageError::Backend(_))
        ));
        assert!(matches!(
            s.manifest_meta(&r, &digest).await,
            Err(StorageError::Backend(_))
        ));
        let id = s.upload_create(&r).await.unwrap().id;
        fs::write(
            dir.path()
                .join(UPLOADS_DIR)
                .join(id.as_str())
                .join(UPLOAD_INFO),
            b"[",
        )
        .unwrap();
        assert!(matches!(
            s.upload_info(&r, &id).await,
            Err(StorageError::Backend(_))
        ));
        // Listing skips what it cannot read instead of failing.
        assert!(s.uploads().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn an_interrupted_commit_can_be_completed_but_not_appended_to() {
        let dir = tempfile::tempdir().unwrap();
        let s = FsStorage::open(dir.path()).await.unwrap();
        let r = repo("interrupted/commit");
        let id = s.upload_create(&r).await.unwrap().id;
        s.upload_append(&r, &id, 0, stream_of(vec![b"abc".to_vec()]))
            .await
            .unwrap();
        let digest = Digest::sha256_of(b"abc");
        // The state a crash between publishing and removing the session leaves behind.
        let data = dir
            .path()
            .join(UPLOADS_DIR)
            .join(id.as_str())
            .join(UPLOAD_DATA);
        let blob = s.inner.blob_path(&digest);
        fs::create_dir_all(blob.parent().unwrap()).unwrap();
        fs::hard_link(&data, &blob).unwrap();

        let result = s
            .upload_append(&r, &id, 3, stream_of(vec![b"def".to_vec()]))
            .await;
        assert!(matches!(result, Err(StorageError::NotFound)), "{result:?}");
        assert_eq!(s.upload_commit(&r, &id, &digest).await.unwrap(), 3);
        assert_eq!(
            collect(s.blob_read(&digest, None).await.unwrap()).await,
            b"abc"
        );
        assert!(matches!(
            s.upload_info(&r, &id).await,
            Err(StorageError::NotFound)
        ));
    }

    /// Streaming throughput of the backend, alone and with SHA-256 hashing in the body stream
    /// as the registry does it. A measurement, not a test:
    /// `STORAGE_BENCH_DIR=/dev/shm cargo test --release -p dataplane --lib storage::fs::tests::throughput -- --ignored --nocapture`
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "measurement"]
    async fn throughput() {
        use crate::oci::{DigestAlgorithm, Hasher};
        use std::time::Instant;

        const CHUNK: usize = 64 * 1024;
        const TOTAL: usize = 1 << 30;
        let base = std::env::var_os("STORAGE_BENCH_DIR").map(PathBuf::from);
        let dir = match &base {
            Some(base) => tempfile::tempdir_in(base).unwrap(),
            None => tempfile::tempdir().unwrap(),
        };
        let s = FsStorage::open(dir.path()).await.unwrap();
        let r = repo("bench/throughput");
        let chunk = Bytes::from(content(3, CHUNK));
        let body = || {
            let chunk = chunk.clone();
            futures_util::stream::iter((0..TOTAL / CHUNK).map(move |_| Ok(chunk.clone())))
        };
        let gib = |secs: f64| TOTAL as f64 / secs / f64::from(1u32 << 30);

        let start = Instant::now();
        let mut hasher = Hasher::new(DigestAlgorithm::Sha256);
        for _ in 0..TOTAL / CHUNK {
            hasher.update(&chunk);
        }
        let digest = hasher.finish();
        let hash_secs = start.elapsed().as_secs_f64();

        let id = s.upload_create(&r).await.unwrap().id;
        let start = Instant::now();
        s.upload_append(&r, &id, 0, Box::pin(body())).await.unwrap();
        let append_secs = start.elapsed().as_secs_f64();
        s.upload_delete(&r, &id).await.unwrap();

        let id = s.upload_create(&r).await.unwrap().id;
        let start = Instant::now();
        let mut hasher = Hasher::new(DigestAlgorithm::Sha256);
        let hashed = body().map(move |c: io::Result<Bytes>| {
            if let Ok(c) = &c {
                hasher.update(c);
            }
            c
        });
        s.upload_append(&r, &id, 0, Box::pin(hashed)).await.unwrap();
        s.upload_commit(&r, &id, &digest).await.unwrap();
        let hashed_secs = start.elapsed().as_secs_f64();

        let start = Instant::now();
        let mut stream = s.blob_read(&digest, None).await.unwrap();
        let mut read = 0;
        while let Some(c) = stream.next().await {
            read += c.unwrap().len();
        }
        assert_eq!(read, TOTAL);
        let read_secs = start.elapsed().as_secs_f64();

        println!("dir: {}", dir.path().display());
        println!("sha256 alone:          {:.2} GiB/s", gib(hash_secs));
        println!("append alone:          {:.2} GiB/s", gib(append_secs));
        println!(
            "append+sha256+commit:  {:.2} GiB/s ({:.0} % of sha256 alone)",
            gib(hashed_secs),
            100.0 * hash_secs / hashed_secs
        );
        println!("blob_read:             {:.2} GiB/s", gib(read_secs));
    }

    #[tokio::test]
    async fn storages_sharing_a_root_see_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (
            FsStorage::open(dir.path()).await.unwrap(),
            FsStorage::open(dir.path()).await.unwrap(),
        );
        let r = repo("shared/root");
        let id = a.upload_create(&r).await.unwrap().id;
        a.upload_append(&r, &id, 0, stream_of(vec![vec![7; 10]]))
            .await
            .unwrap();
        assert_eq!(b.upload_info(&r, &id).await.unwrap().size, 10);
        let result = b.upload_append(&r, &id, 0, stream_of(vec![vec![8]])).await;
        assert!(matches!(
            result,
            Err(StorageError::OffsetMismatch { current: 10, .. })
        ));
        let digest = Digest::sha256_of(&[7; 10]);
        b.upload_commit(&r, &id, &digest).await.unwrap();
        assert_eq!(a.blob_size(&digest).await.unwrap(), Some(10));
        assert!(matches!(
            a.upload_info(&r, &id).await,
            Err(StorageError::NotFound)
        ));
    }

    /// Appends racing from two instances (as from two processes) are serialized by the file
    /// lock: exactly one wins.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn appends_from_two_instances_are_serialized() {
        let dir = tempfile::tempdir().unwrap();
        let instances = [
            Arc::new(FsStorage::open(dir.path()).await.unwrap()),
            Arc::new(FsStorage::open(dir.path()).await.unwrap()),
        ];
        let r = repo("shared/race");
        let id = instances[0].upload_create(&r).await.unwrap().id;
        let tasks: Vec<_> = (0..8u8)
            .map(|i| {
                let s = Arc::clone(&instances[usize::from(i % 2)]);
                let (r, id) = (r.clone(), id.clone());
                let chunks = (0..4).map(|_| vec![i; 64 * 1024]).collect();
                tokio::spawn(
                    async move { (i, s.upload_append(&r, &id, 0, stream_of(chunks)).await) },
                )
            })
            .collect();
        let mut winners = Vec::new();
        for task in tasks {
            match task.await.unwrap() {
                (i, Ok(_)) => winners.push(i),
                (_, Err(StorageError::OffsetMismatch { current, .. })) => {
                    assert_eq!(current, 256 * 1024)
                }
                (_, Err(e)) => panic!("unexpected error {e:?}"),
            }
        }
        assert_eq!(winners.len(), 1);
        let stored = collect(instances[1].upload_read(&r, &id).await.unwrap()).await;
        assert_eq!(stored, vec![winners[0]; 256 * 1024]);
    }
}
