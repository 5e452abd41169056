//! The temporary area: one `flock`ed directory per instance, and the removal of areas
//! whose process is gone.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::LOCK_SUFFIX;

/// This instance's temporary directory, advertised as live by an `flock`ed lock file.
pub(super) struct TempArea {
    pub(super) dir: PathBuf,
    lock_path: PathBuf,
    _lock: File,
    counter: AtomicU64,
}

impl TempArea {
    pub(super) fn create(tmp_root: &Path) -> io::Result<Self> {
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

    pub(super) fn next_path(&self) -> PathBuf {
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
pub(super) fn same_file(file: &File, path: &Path) -> io::Result<bool> {
    let open = file.metadata()?;
    match fs::metadata(path) {
        Ok(at_path) => Ok(open.dev() == at_path.dev() && open.ino() == at_path.ino()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Removes from `_tmp/` everything that does not belong to a live instance.
pub(super) fn clean_stale_temp(tmp_root: &Path) -> io::Result<()> {
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
