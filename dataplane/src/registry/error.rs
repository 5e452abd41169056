//! The registry layer's error type: what went wrong, in OCI terms, without any HTTP.

use crate::oci::Digest;
use crate::storage::StorageError;

/// A failed registry operation.
///
/// Every variant except [`RegistryError::Storage`] is the client's doing and is safe to describe
/// to the client; `Storage` carries internal details that must only be logged.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The blob is not linked into the repository (or does not exist at all).
    #[error("blob unknown to repository")]
    BlobUnknown,
    /// The upload session does not exist, or belongs to another repository.
    #[error("upload session unknown")]
    UploadUnknown,
    /// A chunk does not start where the session ends.
    #[error("chunk out of order: the session holds {current} bytes")]
    UploadOutOfOrder {
        /// Bytes the session holds.
        current: u64,
    },
    /// The request body failed, ended early or disagreed with its declared length; the session
    /// is unchanged.
    #[error("upload body invalid: {0}")]
    UploadInvalid(String),
    /// The content does not hash to the declared digest; nothing was published.
    #[error("digest mismatch: declared {declared}, content hashes to {computed}")]
    DigestMismatch {
        /// What the client declared.
        declared: Digest,
        /// What the content hashes to.
        computed: Digest,
    },
    /// The manifest is malformed, of an unsupported type or inconsistent.
    #[error("manifest invalid: {0}")]
    ManifestInvalid(String),
    /// The manifest exceeds the size limit.
    #[error("manifest exceeds the limit of {limit} bytes")]
    ManifestTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The manifest references a blob or manifest the repository does not hold.
    #[error("manifest references {0}, which is unknown to the repository")]
    ManifestBlobUnknown(Digest),
    /// The manifest (tag or digest) is unknown to the repository.
    #[error("manifest unknown")]
    ManifestUnknown,
    /// A push would move a tag that matches an immutable tag pattern of the namespace to
    /// another manifest.
    #[error(
        "tag {tag:?} matches the immutable tag pattern {pattern:?}: it points at another \
         manifest and cannot be moved (push under a new tag instead)"
    )]
    TagImmutable {
        /// The tag.
        tag: String,
        /// The pattern it matches.
        pattern: String,
    },
    /// The repository is unknown.
    #[error("repository name not known to registry")]
    NameUnknown,
    /// The byte range requested does not fit the blob.
    #[error("range not satisfiable for a blob of {size} bytes")]
    RangeNotSatisfiable {
        /// Size of the blob.
        size: u64,
    },
    /// The storage backend failed; the details are internal.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Result type of registry operations.
pub type Result<T, E = RegistryError> = std::result::Result<T, E>;
