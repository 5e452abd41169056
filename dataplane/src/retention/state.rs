//! Reading repositories as the planner sees them: tags and manifest revisions with their
//! push and pull times, and what each manifest references.

use std::collections::HashMap;

use futures_util::{StreamExt as _, TryStreamExt as _};

use super::plan::{ManifestState, RepositoryState, TagState};
use crate::oci::RepoName;
use crate::registry::{Registry, RegistryError};
use crate::storage::PullTarget;

/// Manifests read at once while reading a repository.
const MANIFEST_READS_AT_ONCE: usize = 16;

/// Why a repository could not be read for planning.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Storage failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// A manifest revision cannot be read or parsed: what it references is unknown, so
    /// nothing in the repository is planned (deleting could cut what it holds).
    #[error("manifest {digest} of {repository} cannot be read ({reason}); repository skipped")]
    Unreadable {
        /// The repository.
        repository: String,
        /// The manifest.
        digest: String,
        /// What failed.
        reason: String,
    },
}

/// Reads one repository: every tag and revision with its times and references.
pub async fn read_repository(
    registry: &Registry,
    repo: &RepoName,
) -> Result<RepositoryState, StateError> {
    let storage = registry.storage();
    let (tags, manifests, pulls) = tokio::try_join!(
        storage.tag_records(repo),
        storage.manifest_records(repo),
        storage.pull_records(repo),
    )
    .map_err(RegistryError::from)?;
    let mut tag_pulls = HashMap::new();
    let mut manifest_pulls = HashMap::new();
    for (target, at) in pulls {
        match target {
            PullTarget::Tag(tag) => tag_pulls.insert(tag, at),
            PullTarget::Manifest(digest) => manifest_pulls.insert(digest, at),
        };
    }
    let read = |record: crate::storage::ManifestRecord| {
        let manifest_pulls = &manifest_pulls;
        async move {
            let unreadable = |reason: String| StateError::Unreadable {
                repository: repo.to_string(),
                digest: record.digest.to_string(),
                reason,
            };
            let parsed = match registry.manifest_references(repo, &record.digest).await {
                // Unlinked since the listing: not part of the repository any more.
                Ok(None) => return Ok(None),
                Ok(Some(parsed)) => parsed,
                Err(RegistryError::Storage(e)) => return Err(RegistryError::Storage(e).into()),
                Err(other) => return Err(unreadable(other.to_string())),
            };
            Ok::<_, StateError>(Some(ManifestState {
                digest: record.digest.to_string(),
                pushed_at: record.linked_at,
                pulled_at: manifest_pulls.get(&record.digest).copied(),
                size: record.meta.size,
                children: parsed.manifests.iter().map(ToString::to_string).collect(),
                subject: parsed.subject.as_ref().map(ToString::to_string),
                blobs: parsed
                    .blobs
                    .iter()
                    .map(ToString::to_string)
                    .zip(parsed.blob_sizes.iter().copied())
                    .collect(),
            }))
        }
    };
    let manifests: Vec<ManifestState> = futures_util::stream::iter(manifests)
        .map(read)
        .buffer_unordered(MANIFEST_READS_AT_ONCE)
        .try_filter_map(|m| async move { Ok(m) })
        .try_collect()
        .await?;
    let tags = tags
        .into_iter()
        .map(|t| TagState {
            pulled_at: tag_pulls.get(&t.tag).copied(),
            name: t.tag.as_str().to_owned(),
            digest: t.digest.to_string(),
            pushed_at: t.set_at,
        })
        .collect();
    Ok(RepositoryState {
        name: repo.to_string(),
        tags,
        manifests,
    })
}
