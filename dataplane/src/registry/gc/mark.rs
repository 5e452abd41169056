//! The mark phase: every manifest of every repository, and every blob and child manifest they
//! name.

use std::collections::HashSet;

use futures_util::{StreamExt, TryStreamExt};

use super::GcError;
use crate::oci::{Digest, RepoName};
use crate::registry::{Registry, RegistryError, parse_manifest};
use crate::storage::ManifestRecord;

/// Manifests read at once.
const READS_IN_FLIGHT: usize = 16;

/// What the mark found.
#[derive(Debug, Default)]
pub(super) struct Marked {
    /// Manifests and the blobs and children they name.
    pub(super) referenced: HashSet<Digest>,
    /// Distinct manifests read.
    pub(super) manifests: usize,
}

/// Reads every manifest revision of every repository. A manifest whose bytes are missing
/// protects nothing (it is broken already, `fsck` reports it); one that cannot be parsed stops
/// the run.
pub(super) async fn mark(registry: &Registry) -> Result<Marked, GcError> {
    let storage = registry.storage();
    let mut marked = Marked::default();
    for repo in storage.repositories().await? {
        let records = storage.manifest_records(&repo).await?;
        let unread: Vec<ManifestRecord> = records
            .into_iter()
            .filter(|record| marked.referenced.insert(record.digest.clone()))
            .collect();
        marked.manifests += unread.len();
        let names: Vec<Vec<Digest>> = futures_util::stream::iter(unread)
            .map(|record| read_references(registry, &repo, record))
            .buffer_unordered(READS_IN_FLIGHT)
            .try_collect()
            .await?;
        marked.referenced.extend(names.into_iter().flatten());
    }
    Ok(marked)
}

/// The blobs and child manifests one manifest names.
async fn read_references(
    registry: &Registry,
    repo: &RepoName,
    record: ManifestRecord,
) -> Result<Vec<Digest>, GcError> {
    let bytes = match registry
        .manifest_bytes(&record.digest, record.meta.size)
        .await
    {
        Ok(bytes) => bytes,
        Err(RegistryError::ManifestUnknown) => {
            tracing::warn!(repository = %repo, digest = %record.digest,
                "a manifest's bytes are missing; it protects nothing (run dataplane fsck)");
            return Ok(Vec::new());
        }
        Err(RegistryError::Storage(e)) => return Err(GcError::Storage(e)),
        Err(other) => {
            return Err(GcError::Manifest {
                repository: repo.clone(),
                digest: record.digest,
                reason: other.to_string(),
            });
        }
    };
    let parsed =
        parse_manifest(Some(&record.meta.media_type), &bytes).map_err(|e| GcError::Manifest {
            repository: repo.clone(),
            digest: record.digest.clone(),
            reason: e.to_string(),
        })?;
    let mut names = parsed.blobs;
    names.extend(parsed.manifests);
    Ok(names)
}
