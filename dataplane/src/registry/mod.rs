//! Registry semantics: uploads, blobs, manifests, tags, referrers, catalog.
//!
//! Layer rule: this layer knows OCI semantics but no HTTP. It is called by [`crate::http`] with
//! values already parsed into [`crate::oci`] types and authorized, and it reaches durable state
//! only through the [`Storage`] trait. It hashes every byte it streams into storage and asks
//! storage to publish content only once the digest has been verified. Every repository-scoped
//! existence check goes through the repository's links, so content held by another repository
//! is indistinguishable from absent content.
//!
//! Work no request does (removing abandoned uploads, garbage collection, metering) lives in
//! [`jobs`], [`gc`] and [`metering`], started once by the server.

mod blob;
mod error;
pub mod gc;
pub mod jobs;
mod listing;
mod manifest;
pub mod metering;
mod pulls;
#[cfg(test)]
pub(crate) mod test_support;
mod upload;

use std::sync::Arc;

use crate::caches::CacheMemory;
use crate::storage::Storage;

pub use blob::{BlobRead, ByteRange};
pub use error::{RegistryError, Result};
pub use listing::{Listing, MAX_PAGE_SIZE, Page};
pub use manifest::{
    MAX_MANIFEST_SIZE, Manifest, ManifestKind, ManifestPut, ParsedManifest, PutTarget,
    parse_manifest,
};
pub use upload::{ChunkSpec, MountOutcome};

/// The registry of one region, over its storage backend.
///
/// Cheap to share (`Arc<Registry>`); all methods take `&self` and are safe to call
/// concurrently, also from several processes sharing the same storage.
#[derive(Debug)]
pub struct Registry {
    storage: Arc<dyn Storage>,
    hashes: upload::HashCache,
    manifests: manifest::ManifestCache,
    pulls: Arc<pulls::PullLog>,
    transfers: Arc<metering::TransferLog>,
}

impl Registry {
    /// A registry over `storage`, with caches of the default size.
    pub fn new(storage: Arc<dyn Storage>) -> Self {
        Self::with_cache_memory(storage, CacheMemory::DEFAULT)
    }

    /// A registry over `storage` whose caches (manifests, upload hash states) take their
    /// shares of `caches`.
    pub fn with_cache_memory(storage: Arc<dyn Storage>, caches: CacheMemory) -> Self {
        Self {
            storage,
            hashes: upload::HashCache::new(caches.hash_states()),
            manifests: manifest::ManifestCache::new(caches.manifest_bytes()),
            pulls: Arc::default(),
            transfers: Arc::default(),
        }
    }

    /// Registers the registry's own metrics (pull records, metering) in `registry`.
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        self.pulls.register_metrics(registry);
        self.transfers.register_metrics(registry);
    }

    /// The bytes this process transferred and has not written to storage yet.
    pub fn transfers(&self) -> &metering::TransferLog {
        &self.transfers
    }

    /// The storage backend (for readiness checks).
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }
}
