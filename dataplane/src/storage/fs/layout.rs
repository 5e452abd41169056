//! Where things live under the root, and reading the small records (tags, manifest
//! metadata, directory listings).

use std::path::{Path, PathBuf};
use std::{fmt, fs, io};

use super::{
    BLOBS_DIR, Inner, MANIFESTS_DIR, PULLED_MANIFESTS, PULLED_TAGS, PULLS_DIR, REFERRERS_DIR,
    REPOSITORIES_DIR, SYSTEM_DIR, TAGS_DIR, UPLOADS_DIR,
};
use crate::oci::{Digest, RepoName, Tag};
use crate::storage::{ManifestMeta, PullTarget, RecordKey, Result, StorageError, UploadId};

impl Inner {
    pub(super) fn blob_path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        let mut p = self.root.join(BLOBS_DIR);
        p.push(digest.algorithm().as_str());
        p.push(&hex[..2]);
        p.push(hex);
        p
    }

    pub(super) fn repo_dir(&self, repo: &RepoName) -> PathBuf {
        let mut p = self.root.join(REPOSITORIES_DIR);
        p.extend(repo.components());
        p
    }

    pub(super) fn repo_digest_path(&self, repo: &RepoName, kind: &str, digest: &Digest) -> PathBuf {
        let mut p = self.repo_dir(repo);
        p.push(kind);
        p.push(digest.algorithm().as_str());
        p.push(digest.hex());
        p
    }

    pub(super) fn tag_path(&self, repo: &RepoName, tag: &Tag) -> PathBuf {
        let mut p = self.repo_dir(repo);
        p.push(TAGS_DIR);
        p.push(tag.as_str());
        p
    }

    pub(super) fn pulls_dir(&self, repo: &RepoName) -> PathBuf {
        self.repo_dir(repo).join(PULLS_DIR)
    }

    pub(super) fn pull_path(&self, repo: &RepoName, target: &PullTarget) -> PathBuf {
        let mut p = self.pulls_dir(repo);
        match target {
            PullTarget::Tag(tag) => {
                p.push(PULLED_TAGS);
                p.push(tag.as_str());
            }
            PullTarget::Manifest(digest) => {
                p.push(PULLED_MANIFESTS);
                p.push(digest.algorithm().as_str());
                p.push(digest.hex());
            }
        }
        p
    }

    pub(super) fn referrers_dir(&self, repo: &RepoName, subject: &Digest) -> PathBuf {
        self.repo_digest_path(repo, REFERRERS_DIR, subject)
    }

    pub(super) fn referrer_path(
        &self,
        repo: &RepoName,
        subject: &Digest,
        referrer: &Digest,
    ) -> PathBuf {
        let mut p = self.referrers_dir(repo, subject);
        p.push(referrer.algorithm().as_str());
        p.push(referrer.hex());
        p
    }

    pub(super) fn record_path(&self, key: &RecordKey) -> PathBuf {
        let mut p = self.root.join(SYSTEM_DIR);
        p.extend(key.as_str().split('/'));
        p
    }

    pub(super) fn uploads_dir(&self) -> PathBuf {
        self.root.join(UPLOADS_DIR)
    }

    pub(super) fn upload_dir(&self, id: &UploadId) -> PathBuf {
        self.uploads_dir().join(id.as_str())
    }
}

impl Inner {
    /// The digest a tag points at, `None` if the tag does not exist.
    pub(super) fn read_tag(&self, repo: &RepoName, tag: &Tag) -> Result<Option<Digest>> {
        let path = self.tag_path(repo, tag);
        let Some(record) = Inner::read_optional(&path)? else {
            return Ok(None);
        };
        let text = std::str::from_utf8(&record).map_err(|e| corrupt(&path, e))?;
        text.trim().parse().map(Some).map_err(|e| corrupt(&path, e))
    }

    /// A manifest revision record of `repo`, `None` if it does not exist.
    pub(super) fn read_manifest_meta(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<ManifestMeta>> {
        let path = self.repo_digest_path(repo, MANIFESTS_DIR, digest);
        match Inner::read_optional(&path)? {
            None => Ok(None),
            Some(record) => serde_json::from_slice(&record)
                .map(Some)
                .map_err(|e| corrupt(&path, e)),
        }
    }
}

pub(super) fn parent_of(path: &Path) -> io::Result<&Path> {
    path.parent()
        .ok_or_else(|| io::Error::other(format!("{} has no parent", path.display())))
}

pub(super) fn corrupt(path: &Path, what: impl fmt::Display) -> StorageError {
    StorageError::Backend(format!("corrupt record {}: {what}", path.display()))
}

/// Entries of a directory, empty if it does not exist.
pub(super) fn read_dir_names(dir: &Path) -> io::Result<Vec<(String, fs::FileType)>> {
    let mut out = Vec::new();
    for_each_dir_entry(dir, |name, kind| {
        out.push((name, kind));
        Ok::<_, io::Error>(())
    })?;
    Ok(out)
}

/// Calls `visit` with the name and type of each entry of a directory as it is read, holding
/// no list of them (nothing if the directory does not exist).
pub(super) fn for_each_dir_entry<E: From<io::Error>>(
    dir: &Path,
    mut visit: impl FnMut(String, fs::FileType) -> Result<(), E>,
) -> Result<(), E> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    for entry in entries {
        let entry = entry?;
        // Names we did not write (not UTF-8) are not ours; skip them.
        if let Ok(name) = entry.file_name().into_string() {
            visit(name, entry.file_type()?)?;
        }
    }
    Ok(())
}
