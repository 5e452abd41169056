//! Garbage-collection primitives on disk: touches, the fenced removal of a blob, and records
//! written under a compare-and-swap (the collector's lease).
//!
//! A blob's touch is its file's modification time: publishing writes it, and
//! [`Inner::touch_blob`] sets it to now. A collection renames the blob into
//! `_system/gc/trash/` (atomic: a touch lands either before, on the inode that moves, or after,
//! on a missing path) and reads the moved inode's time again; a touch that arrived in between
//! puts the blob back.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use nix::sys::stat::{UtimensatFlags, utimensat};
use nix::sys::time::TimeSpec;

use super::layout::{parent_of, read_dir_names};
use super::publish::sync_dir;
use super::reads::parse_digest_parts;
use super::{Inner, SYSTEM_DIR};
use crate::oci::Digest;
use crate::storage::{RecordKey, VersionedRecord};

/// Where blobs being collected are set aside, under the root.
const TRASH_DIR: &str = "gc/trash";

/// What identifies one state of a blob file: its inode and modification time. Any touch or
/// republication changes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    inode: u64,
    modified_ns: i128,
}

impl Stamp {
    fn of(meta: &fs::Metadata) -> Self {
        Self {
            inode: meta.ino(),
            modified_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        }
    }
}

/// The version of a record file: inode and modification time (every write renames a new file
/// into place).
fn version_of(meta: &fs::Metadata) -> String {
    let stamp = Stamp::of(meta);
    format!("{}.{}", stamp.inode, stamp.modified_ns)
}

fn metadata_optional(path: &Path) -> io::Result<Option<fs::Metadata>> {
    match fs::symlink_metadata(path) {
        Ok(meta) => Ok(Some(meta)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

impl Inner {
    fn trash_path(&self, digest: &Digest) -> PathBuf {
        let mut p = self.root.join(SYSTEM_DIR);
        p.extend(TRASH_DIR.split('/'));
        p.push(digest.algorithm().as_str());
        p.push(digest.hex());
        p
    }

    /// Sets the blob's modification time to now, then reports whether it is (still) in place.
    pub(super) fn touch_blob(&self, digest: &Digest) -> io::Result<bool> {
        let path = self.blob_path(digest);
        match utimensat(
            nix::fcntl::AT_FDCWD,
            &path,
            &TimeSpec::UTIME_OMIT,
            &TimeSpec::UTIME_NOW,
            UtimensatFlags::NoFollowSymlink,
        ) {
            Ok(()) => {}
            Err(nix::errno::Errno::ENOENT) => return Ok(false),
            Err(e) => return Err(io::Error::from(e)),
        }
        // The path may have been renamed aside between the lookup and the time update; only a
        // blob still in place (or put back) counts.
        Ok(metadata_optional(&path)?.is_some())
    }

    /// Removes the blob if it was not written or touched at or after `cutoff`, fenced (see the
    /// module docs). Returns its size when removed.
    pub(super) fn collect_blob(
        &self,
        digest: &Digest,
        cutoff: SystemTime,
    ) -> io::Result<Option<u64>> {
        let path = self.blob_path(digest);
        let Some(before) = metadata_optional(&path)? else {
            return Ok(None);
        };
        if before.modified()? >= cutoff {
            return Ok(None);
        }
        let trash = self.trash_path(digest);
        let trash_dir = parent_of(&trash)?;
        self.ensure_dir(trash_dir)?;
        match fs::rename(&path, &trash) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        }
        let after = fs::symlink_metadata(&trash)?;
        if Stamp::of(&after) != Stamp::of(&before) || after.modified()? >= cutoff {
            // Touched or republished meanwhile: it stays.
            fs::rename(&trash, &path)?;
            sync_dir(parent_of(&path)?)?;
            return Ok(None);
        }
        fs::remove_file(&trash)?;
        sync_dir(parent_of(&path)?)?;
        sync_dir(trash_dir)?;
        Ok(Some(after.len()))
    }

    /// Puts back every blob left in the trash by an interrupted collection.
    pub(super) fn recover_trash(&self) -> io::Result<usize> {
        let mut trash = self.root.join(SYSTEM_DIR);
        trash.extend(TRASH_DIR.split('/'));
        let mut restored = 0;
        for (alg, kind) in read_dir_names(&trash)? {
            if !kind.is_dir() {
                continue;
            }
            for (hex, kind) in read_dir_names(&trash.join(&alg))? {
                let Some(digest) = parse_digest_parts(&alg, &hex).filter(|_| kind.is_file()) else {
                    continue;
                };
                let dst = self.blob_path(&digest);
                self.ensure_dir(parent_of(&dst)?)?;
                fs::rename(trash.join(&alg).join(&hex), &dst)?;
                sync_dir(parent_of(&dst)?)?;
                restored += 1;
            }
        }
        Ok(restored)
    }

    /// A record with its version.
    pub(super) fn read_versioned(&self, key: &RecordKey) -> io::Result<Option<VersionedRecord>> {
        let path = self.record_path(key);
        let mut file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let version = version_of(&file.metadata()?);
        let mut data = Vec::new();
        io::Read::read_to_end(&mut file, &mut data)?;
        Ok(Some(VersionedRecord {
            data: data.into(),
            version,
        }))
    }

    /// Writes a record if it is still at `expected`, under an exclusive `flock` of its lock
    /// file (every process sharing the root takes it for these writes).
    pub(super) fn swap_record(
        &self,
        key: &RecordKey,
        expected: Option<&str>,
        data: &[u8],
    ) -> io::Result<Option<String>> {
        let path = self.record_path(key);
        let parent = parent_of(&path)?;
        self.ensure_dir(parent)?;
        let mut lock_name = path.file_name().unwrap_or_default().to_os_string();
        lock_name.push(super::LOCK_SUFFIX);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(parent.join(lock_name))?;
        lock.lock()?;
        let current = metadata_optional(&path)?.map(|m| version_of(&m));
        if current.as_deref() != expected {
            return Ok(None);
        }
        self.write_record(&path, data)?;
        let written = fs::symlink_metadata(&path)?;
        Ok(Some(version_of(&written)))
    }
}
