//! Durable publishing: temporary file, `fsync`, then rename (records) or hard link (blobs),
//! and the parent directory `fsync`ed.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::Inner;
use super::layout::parent_of;
use crate::oci::Digest;

/// `fsync`s a directory, making the entries created or removed in it durable.
pub(super) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// A temporary path that is removed on drop unless it was kept.
pub(super) struct TempPath {
    pub(super) path: PathBuf,
    keep: bool,
}

impl TempPath {
    pub(super) fn new(path: PathBuf) -> Self {
        Self { path, keep: false }
    }

    pub(super) fn keep(mut self) {
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
    pub(super) fn ensure_dir(&self, dir: &Path) -> io::Result<()> {
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
    pub(super) fn write_temp(&self, data: &[u8]) -> io::Result<TempPath> {
        let tmp = TempPath::new(self.tmp.next_path());
        let mut file = File::create_new(&tmp.path)?;
        file.write_all(data)?;
        file.sync_data()?;
        Ok(tmp)
    }

    /// Atomically writes (or replaces) the small file `path` with `data`, durably.
    pub(super) fn write_record(&self, path: &Path, data: &[u8]) -> io::Result<()> {
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
    pub(super) fn create_record(&self, path: &Path, data: &[u8]) -> io::Result<bool> {
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
    pub(super) fn publish_blob(&self, src: &Path, digest: &Digest) -> io::Result<()> {
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
    pub(super) fn remove_record(&self, path: &Path) -> io::Result<bool> {
        match fs::remove_file(path) {
            Ok(()) => {
                sync_dir(parent_of(path)?)?;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Removes the small file `path` if it holds `expected` (surrounding whitespace aside),
    /// leaving its directory unsynced; returns whether it did. The record is first renamed
    /// into the temporary area, which takes whatever is current at that instant, and read
    /// there: a record that names something else is linked back, unless a newer one has taken
    /// its place meanwhile, which then stays. So a record written just before is never
    /// removed.
    pub(super) fn remove_record_if(&self, path: &Path, expected: &[u8]) -> io::Result<bool> {
        let taken = TempPath::new(self.tmp.next_path());
        match fs::rename(path, &taken.path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                taken.keep();
                return Ok(false);
            }
            Err(e) => return Err(e),
        }
        let matches = fs::read(&taken.path).map(|content| content.trim_ascii() == expected);
        if let Ok(true) = matches {
            return Ok(true);
        }
        match fs::hard_link(&taken.path, path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                // Keep the record where it is rather than lose it.
                taken.keep();
                return Err(e);
            }
        }
        matches.map(|_| false)
    }

    /// Reads a small file, `None` if it does not exist.
    pub(super) fn read_optional(path: &Path) -> io::Result<Option<Vec<u8>>> {
        match fs::read(path) {
            Ok(data) => Ok(Some(data)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}
