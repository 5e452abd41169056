//! Blob reads and deletes, always through the repository's links.

use std::ops::Range;

use super::metering::Direction;
use super::{Registry, RegistryError, Result};
use crate::oci::{Digest, RepoName};
use crate::storage::{ByteStream, StorageError};

/// A byte range as a client asks for it, before the blob size is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    /// `first..=last` (`bytes=first-last`).
    FromTo(u64, u64),
    /// `first..` (`bytes=first-`).
    From(u64),
    /// The last `n` bytes (`bytes=-n`).
    Suffix(u64),
}

impl ByteRange {
    /// The half-open range this selects in an object of `size` bytes, or `None` when it is not
    /// satisfiable (starts at or past the end, or selects nothing).
    pub fn resolve(self, size: u64) -> Option<Range<u64>> {
        match self {
            Self::FromTo(first, last) if first <= last && first < size => {
                Some(first..last.saturating_add(1).min(size))
            }
            Self::From(first) if first < size => Some(first..size),
            Self::Suffix(n) if n > 0 && size > 0 => Some(size - n.min(size)..size),
            _ => None,
        }
    }
}

/// An open blob read.
pub struct BlobRead {
    /// The whole blob's size.
    pub size: u64,
    /// The part being streamed (`None`: the whole blob).
    pub range: Option<Range<u64>>,
    /// The bytes.
    pub stream: ByteStream,
}

impl std::fmt::Debug for BlobRead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobRead")
            .field("size", &self.size)
            .field("range", &self.range)
            .finish_non_exhaustive()
    }
}

impl Registry {
    /// Size of a blob linked into `repo`; [`RegistryError::BlobUnknown`] otherwise.
    pub async fn blob_stat(&self, repo: &RepoName, digest: &Digest) -> Result<u64> {
        if !self.storage.blob_linked(repo, digest).await? {
            return Err(RegistryError::BlobUnknown);
        }
        self.storage
            .blob_size(digest)
            .await?
            .ok_or(RegistryError::BlobUnknown)
    }

    /// Where a client may download a blob linked into `repo` directly, when storage hands
    /// downloads off (see [`crate::storage::Storage::blob_download_url`]); `None` to stream it.
    pub async fn blob_download_url(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<String>> {
        // Asked first: it costs no I/O, and a backend that streams blobs itself answers `None`
        // here, so a download does not look the blob up twice.
        let Some(url) = self.storage.blob_download_url(digest).await? else {
            return Ok(None);
        };
        let size = self.blob_stat(repo, digest).await?;
        self.transfers.count(repo, Direction::Pull, size);
        Ok(Some(url))
    }

    /// Opens a blob linked into `repo` for streaming, whole or a byte range.
    pub async fn blob_open(
        &self,
        repo: &RepoName,
        digest: &Digest,
        range: Option<ByteRange>,
    ) -> Result<BlobRead> {
        let size = self.blob_stat(repo, digest).await?;
        let range = match range {
            Some(r) => Some(
                r.resolve(size)
                    .ok_or(RegistryError::RangeNotSatisfiable { size })?,
            ),
            None => None,
        };
        let stream = self
            .storage
            .blob_read(digest, range.clone())
            .await
            .map_err(|e| match e {
                StorageError::NotFound => RegistryError::BlobUnknown,
                StorageError::RangeNotSatisfiable { size } => {
                    RegistryError::RangeNotSatisfiable { size }
                }
                other => RegistryError::Storage(other),
            })?;
        let served = range.as_ref().map_or(size, |r| r.end - r.start);
        self.transfers.count(repo, Direction::Pull, served);
        Ok(BlobRead {
            size,
            range,
            stream,
        })
    }

    /// Unlinks a blob from `repo` (its bytes stay for other repositories and garbage
    /// collection).
    pub async fn blob_delete(&self, repo: &RepoName, digest: &Digest) -> Result<()> {
        if self.storage.unlink_blob(repo, digest).await? {
            Ok(())
        } else {
            Err(RegistryError::BlobUnknown)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ByteRange;

    #[test]
    fn ranges_resolve_against_the_size() {
        assert_eq!(ByteRange::FromTo(0, 9).resolve(100), Some(0..10));
        assert_eq!(ByteRange::FromTo(90, 200).resolve(100), Some(90..100));
        assert_eq!(ByteRange::FromTo(100, 200).resolve(100), None);
        assert_eq!(ByteRange::FromTo(5, 4).resolve(100), None);
        assert_eq!(ByteRange::From(99).resolve(100), Some(99..100));
        assert_eq!(ByteRange::From(100).resolve(100), None);
        assert_eq!(ByteRange::Suffix(10).resolve(100), Some(90..100));
        assert_eq!(ByteRange::Suffix(1000).resolve(100), Some(0..100));
        assert_eq!(ByteRange::Suffix(0).resolve(100), None);
        assert_eq!(ByteRange::From(0).resolve(0), None);
    }
}
