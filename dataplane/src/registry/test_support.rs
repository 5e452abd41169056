//! Helpers for tests of modules above the registry (retention, fsck).

use bytes::Bytes;

use super::Registry;
use crate::oci::{Digest, RepoName};

/// Uploads `data` into `repo` in one request, as a client's monolithic upload; returns its
/// digest.
pub(crate) async fn upload(registry: &Registry, repo: &RepoName, data: &[u8]) -> Digest {
    let digest = Digest::sha256_of(data);
    let body = Box::pin(futures_util::stream::once({
        let data = Bytes::copy_from_slice(data);
        async move { Ok(data) }
    }));
    registry
        .upload_monolithic(repo, &digest, Some(data.len() as u64), body)
        .await
        .unwrap();
    digest
}
