//! `dataplane fsck`: checks a region's storage for what manifests need but the store lacks,
//! tags and blob links that lead nowhere, and blobs that no manifest references; repairs what
//! is safe to repair.
//!
//! The walk visits every repository that holds a manifest: each manifest's own bytes, the
//! blobs it references (config and layers; foreign layers with `urls` are not stored), the
//! manifests an index lists, every tag and every blob link. Safe repairs remove only what
//! leads nowhere (a tag naming a manifest the repository does not hold, a link to a blob the
//! store lacks), each checked again right before it is removed. Missing blobs cannot be
//! repaired here (the image has to be pushed again) and unreferenced blobs are reported, not
//! deleted: blobs of a push in progress are unreferenced until its manifest arrives.

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};

use futures_util::StreamExt as _;
use serde::Serialize;

use crate::oci::{Digest, RepoName, Tag};
use crate::registry::{MAX_MANIFEST_SIZE, parse_manifest};
use crate::storage::{Storage, StorageError};

/// Something wrong in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Problem {
    /// A manifest of `repository` references `blob`, or is `blob` (its own bytes), and the
    /// store lacks it. Not repairable: push the image again.
    MissingBlob {
        /// The repository.
        repository: String,
        /// The manifest.
        manifest: String,
        /// The blob the store lacks.
        blob: String,
    },
    /// An index of `repository` lists a manifest the repository does not hold.
    MissingChild {
        /// The repository.
        repository: String,
        /// The index.
        index: String,
        /// The manifest it lists.
        child: String,
    },
    /// A manifest's bytes are not a manifest the registry accepts.
    UnreadableManifest {
        /// The repository.
        repository: String,
        /// The manifest.
        manifest: String,
        /// Why.
        error: String,
    },
    /// A tag names a manifest its repository does not hold. Repair: delete the tag.
    DanglingTag {
        /// The repository.
        repository: String,
        /// The tag.
        tag: String,
        /// The manifest it names.
        manifest: String,
    },
    /// A blob link of `repository` names a blob the store lacks. Repair: remove the link.
    DanglingLink {
        /// The repository.
        repository: String,
        /// The blob.
        blob: String,
    },
}

impl Problem {
    /// Whether [`repair`] removes it.
    pub fn repairable(&self) -> bool {
        matches!(self, Self::DanglingTag { .. } | Self::DanglingLink { .. })
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::MissingBlob {
                repository,
                manifest,
                blob,
            } if manifest == blob => write!(
                f,
                "{repository}: manifest {manifest}: its bytes are missing"
            ),
            Self::MissingBlob {
                repository,
                manifest,
                blob,
            } => write!(
                f,
                "{repository}: manifest {manifest}: blob {blob} is missing"
            ),
            Self::MissingChild {
                repository,
                index,
                child,
            } => write!(
                f,
                "{repository}: index {index}: manifest {child} is not in the repository"
            ),
            Self::UnreadableManifest {
                repository,
                manifest,
                error,
            } => write!(
                f,
                "{repository}: manifest {manifest} is unreadable: {error}"
            ),
            Self::DanglingTag {
                repository,
                tag,
                manifest,
            } => write!(
                f,
                "{repository}: tag {tag} names manifest {manifest}, which is not in the repository"
            ),
            Self::DanglingLink { repository, blob } => {
                write!(f, "{repository}: link to blob {blob}, which is missing")
            }
        }
    }
}

/// A blob no manifest references.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unreferenced {
    /// The blob.
    pub digest: String,
    /// Its size in bytes.
    pub size: u64,
    /// How many repositories link it (0: nothing can see it).
    pub linked_in: usize,
}

/// What [`check`] found (and [`repair`] did).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Repositories walked (those holding a manifest).
    pub repositories: usize,
    /// Manifests held, over all repositories.
    pub manifests: usize,
    /// Tags, over all repositories.
    pub tags: usize,
    /// Blobs in the store.
    pub blobs: usize,
    /// Their bytes.
    pub blob_bytes: u64,
    /// Blobs no manifest references, sorted by digest.
    pub unreferenced: Vec<Unreferenced>,
    /// Problems found and not repaired.
    pub problems: Vec<Problem>,
    /// Problems repaired.
    pub repaired: Vec<Problem>,
}

impl Report {
    /// The bytes of the blobs no manifest references.
    pub fn unreferenced_bytes(&self) -> u64 {
        self.unreferenced.iter().map(|u| u.size).sum()
    }
}

/// Walks the whole store (see the module documentation).
pub async fn check(storage: &dyn Storage) -> Result<Report, StorageError> {
    let stored: BTreeMap<Digest, u64> = storage
        .blobs()
        .await?
        .into_iter()
        .map(|blob| (blob.digest, blob.size))
        .collect();
    let mut report = Report {
        blobs: stored.len(),
        blob_bytes: stored.values().sum(),
        ..Report::default()
    };
    let mut referenced = BTreeSet::new();
    let mut linked_in: BTreeMap<Digest, usize> = BTreeMap::new();
    for repo in storage.repositories().await? {
        report.repositories += 1;
        let repository = repo.to_string();
        let manifests = storage.manifest_records(&repo).await?;
        report.manifests += manifests.len();
        let held: BTreeSet<&Digest> = manifests.iter().map(|m| &m.digest).collect();
        for record in &manifests {
            let manifest = &record.digest;
            referenced.insert(manifest.clone());
            let missing = |blob: &Digest| Problem::MissingBlob {
                repository: repository.clone(),
                manifest: manifest.to_string(),
                blob: blob.to_string(),
            };
            if !stored.contains_key(manifest) {
                report.problems.push(missing(manifest));
                continue;
            }
            let bytes = match read_manifest(storage, manifest).await {
                Ok(bytes) => bytes,
                Err(StorageError::NotFound) => {
                    report.problems.push(missing(manifest));
                    continue;
                }
                Err(e) => return Err(e),
            };
            let parsed = match parse_manifest(Some(&record.meta.media_type), &bytes) {
                Ok(parsed) => parsed,
                Err(e) => {
                    report.problems.push(Problem::UnreadableManifest {
                        repository: repository.clone(),
                        manifest: manifest.to_string(),
                        error: e.to_string(),
                    });
                    continue;
                }
            };
            for blob in &parsed.blobs {
                referenced.insert(blob.clone());
                if !stored.contains_key(blob) {
                    report.problems.push(missing(blob));
                }
            }
            for child in parsed.manifests.iter().filter(|c| !held.contains(c)) {
                report.problems.push(Problem::MissingChild {
                    repository: repository.clone(),
                    index: manifest.to_string(),
                    child: child.to_string(),
                });
            }
        }
        let tags = storage.tag_records(&repo).await?;
        report.tags += tags.len();
        for tag in tags.iter().filter(|t| !held.contains(&t.digest)) {
            report.problems.push(Problem::DanglingTag {
                repository: repository.clone(),
                tag: tag.tag.to_string(),
                manifest: tag.digest.to_string(),
            });
        }
        for blob in storage.blob_links(&repo).await? {
            if stored.contains_key(&blob) {
                *linked_in.entry(blob).or_default() += 1;
            } else {
                report.problems.push(Problem::DanglingLink {
                    repository: repository.clone(),
                    blob: blob.to_string(),
                });
            }
        }
    }
    report.unreferenced = stored
        .iter()
        .filter(|(digest, _)| !referenced.contains(*digest))
        .map(|(digest, size)| Unreferenced {
            digest: digest.to_string(),
            size: *size,
            linked_in: linked_in.get(digest).copied().unwrap_or(0),
        })
        .collect();
    Ok(report)
}

/// Repairs the repairable problems of `report`, each checked again first (a tag moved to a
/// held manifest, or a blob pushed again since, is left alone, and a blob pushed again while
/// its link was being removed is linked back); moves them to `repaired`. A tag pushed at the
/// very moment it is removed can still go: repair while that repository is quiet.
pub async fn repair(storage: &dyn Storage, report: &mut Report) -> Result<(), StorageError> {
    let mut left = Vec::new();
    for problem in std::mem::take(&mut report.problems) {
        let repaired = match &problem {
            Problem::DanglingTag {
                repository,
                tag,
                manifest,
            } => {
                let (repo, tag, manifest) = parsed(repository, tag, manifest)?;
                storage.tag_get(&repo, &tag).await? == Some(manifest.clone())
                    && storage.manifest_meta(&repo, &manifest).await?.is_none()
                    && storage.tag_delete(&repo, &tag).await?
            }
            Problem::DanglingLink { repository, blob } => {
                let repo = parse_field::<RepoName>(repository)?;
                let blob = parse_field::<Digest>(blob)?;
                let unlinked = storage.blob_size(&blob).await?.is_none()
                    && storage.unlink_blob(&repo, &blob).await?;
                // Pushed again meanwhile (its link, kept, is the push's): link it back.
                if unlinked && storage.blob_size(&blob).await?.is_some() {
                    storage.link_blob(&repo, &blob).await?;
                    false
                } else {
                    unlinked
                }
            }
            _ => false,
        };
        if repaired {
            report.repaired.push(problem);
        } else {
            left.push(problem);
        }
    }
    report.problems = left;
    Ok(())
}

fn parsed(
    repository: &str,
    tag: &str,
    manifest: &str,
) -> Result<(RepoName, Tag, Digest), StorageError> {
    Ok((
        parse_field(repository)?,
        parse_field(tag)?,
        parse_field(manifest)?,
    ))
}

/// Parses a name the walk itself wrote.
fn parse_field<T: std::str::FromStr>(text: &str) -> Result<T, StorageError> {
    text.parse()
        .map_err(|_| StorageError::Backend(format!("fsck cannot parse {text:?} again")))
}

/// A manifest's bytes (at most [`MAX_MANIFEST_SIZE`] and a little more, so that an oversized
/// one is refused by the parser rather than read whole).
async fn read_manifest(storage: &dyn Storage, digest: &Digest) -> Result<Vec<u8>, StorageError> {
    let mut stream = storage.blob_read(digest, None).await?;
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        bytes.extend_from_slice(&chunk.map_err(StorageError::Io)?);
        if bytes.len() > MAX_MANIFEST_SIZE {
            break;
        }
    }
    Ok(bytes)
}
