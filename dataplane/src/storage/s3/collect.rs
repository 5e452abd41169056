//! Garbage-collection primitives on S3: touch markers, the fenced removal of a blob, and
//! records written under a compare-and-swap (the collector's lease).
//!
//! A blob object cannot be touched in place, so a touch writes a small marker,
//! `_system/gc/touch/<alg>/<hex>`, with a random body (a new ETag every time), then asks the
//! bucket whether the blob exists. A blob's touch time is the later of its own and its marker's
//! modification times. A collection copies the blob to `_system/gc/trash/`, deletes it, and
//! reads the marker again: a marker that changed since the first check means a touch came
//! before the deletion was final, and the blob is copied back.
//!
//! Times come from the bucket's clock, compared with the collector's cutoff: the clocks are
//! assumed to agree within a small fraction of the grace period. `HeadObject` reports times
//! to the second, so a time within [`SLACK`] of the cutoff counts as after it.

use std::time::{Duration, SystemTime};

use bytes::Bytes;

use super::S3Storage;
use super::bucket::{Condition, Failure};
use super::cache::Fact;
use super::keys::digest_in_key;
use super::upload::compose;
use crate::oci::Digest;
use crate::storage::{RecordKey, Result, StorageError, StoredBlob, VersionedRecord};

/// Resolution of the bucket's modification times, added in the blob's favour.
const SLACK: Duration = Duration::from_secs(1);

fn fresh(modified: SystemTime, cutoff: SystemTime) -> bool {
    modified + SLACK >= cutoff
}

impl S3Storage {
    /// Every blob with its size and touch time: one listing of the blobs, one of the markers.
    pub(super) async fn list_blobs(&self) -> Result<Vec<StoredBlob>> {
        let prefix = self.keys.blobs_root();
        let listing = self.bucket.list(&prefix, None).await?;
        let touches_root = self.keys.touches_root();
        let touches = self.bucket.list(&touches_root, None).await?;
        let touched: std::collections::HashMap<Digest, SystemTime> = touches
            .keys
            .iter()
            .zip(touches.modified)
            .filter_map(|(key, modified)| {
                Some((digest_in_key(&key[touches_root.len()..]).ok()?, modified))
            })
            .collect();
        let mut blobs = Vec::with_capacity(listing.keys.len());
        for ((key, size), modified) in listing.keys.iter().zip(listing.sizes).zip(listing.modified)
        {
            // `<alg>/<hex[0..2]>/<hex>`
            let mut parts = key[prefix.len()..].split('/');
            let (Some(alg), Some(fanout), Some(hex), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            match format!("{alg}:{hex}").parse::<Digest>() {
                Ok(digest) if hex.starts_with(fanout) => {
                    let marker = touched
                        .get(&digest)
                        .copied()
                        .unwrap_or(SystemTime::UNIX_EPOCH);
                    blobs.push(StoredBlob {
                        digest,
                        size,
                        touched: modified.max(marker),
                    });
                }
                _ => tracing::warn!(key, "skipping an unrecognised blob key"),
            }
        }
        blobs.sort();
        Ok(blobs)
    }

    /// Writes the blob's touch marker, then asks the bucket (never the cache) whether the blob
    /// exists.
    pub(super) async fn touch_blob(&self, digest: &Digest) -> Result<bool> {
        let nonce = uuid::Uuid::new_v4().simple().to_string();
        self.bucket
            .put(
                &self.keys.touch(digest),
                Bytes::from(nonce),
                Condition::None,
            )
            .await
            .map_err(StorageError::from)?;
        let key = self.keys.blob(digest);
        match self.bucket.head(&key).await? {
            Some(size) => {
                self.facts.put(&key, Fact::Size(size));
                Ok(true)
            }
            None => {
                self.facts.forget(&key);
                Ok(false)
            }
        }
    }

    /// The fenced removal described in the module docs.
    pub(super) async fn collect_blob(
        &self,
        digest: &Digest,
        cutoff: SystemTime,
    ) -> Result<Option<u64>> {
        let (blob, marker, trash) = (
            self.keys.blob(digest),
            self.keys.touch(digest),
            self.keys.trash(digest),
        );
        let marker_before = self.bucket.stamp(&marker).await?;
        if marker_before
            .as_ref()
            .is_some_and(|m| fresh(m.modified, cutoff))
        {
            return Ok(None);
        }
        let Some(stored) = self.bucket.stamp(&blob).await? else {
            return Ok(None);
        };
        if fresh(stored.modified, cutoff) {
            return Ok(None);
        }
        compose(&self.bucket, &trash, &[(blob.clone(), stored.size)]).await?;
        self.bucket.delete(&blob).await?;
        self.facts.forget(&blob);
        let marker_after = self.bucket.stamp(&marker).await?;
        if marker_after.map(|m| m.etag) != marker_before.as_ref().map(|m| m.etag.clone()) {
            // Touched before the deletion was final: it stays.
            compose(&self.bucket, &blob, &[(trash.clone(), stored.size)]).await?;
            self.bucket.delete(&trash).await?;
            return Ok(None);
        }
        self.bucket.delete(&trash).await?;
        if marker_before.is_some() {
            self.bucket.delete(&marker).await?;
        }
        Ok(Some(stored.size))
    }

    /// Copies back every blob an interrupted collection left in the trash.
    pub(super) async fn recover_trash(&self) -> Result<usize> {
        let root = self.keys.trash_root();
        let listing = self.bucket.list(&root, None).await?;
        let mut restored = 0;
        for (key, size) in listing.keys.iter().zip(listing.sizes) {
            let Ok(digest) = digest_in_key(&key[root.len()..]) else {
                tracing::warn!(key, "skipping an unrecognised key in the collector's trash");
                continue;
            };
            compose(
                &self.bucket,
                &self.keys.blob(&digest),
                &[(key.clone(), size)],
            )
            .await?;
            self.bucket.delete(key).await?;
            restored += 1;
        }
        Ok(restored)
    }

    /// A record with its ETag as version.
    pub(super) async fn read_versioned(&self, key: &RecordKey) -> Result<Option<VersionedRecord>> {
        Ok(self
            .bucket
            .get_optional(&self.keys.record(key))
            .await?
            .map(|object| VersionedRecord {
                data: object.data,
                version: object.etag,
            }))
    }

    /// A conditional `PutObject` (`If-Match` the version, or `If-None-Match: *`).
    pub(super) async fn swap_record(
        &self,
        key: &RecordKey,
        expected: Option<&str>,
        data: Bytes,
    ) -> Result<Option<String>> {
        let condition = match expected {
            Some(etag) => Condition::Matches(etag),
            None => Condition::Absent,
        };
        match self
            .bucket
            .put(&self.keys.record(key), data, condition)
            .await
        {
            Ok(etag) => Ok(Some(etag)),
            Err(Failure::Precondition | Failure::NotFound) => Ok(None),
            Err(other) => Err(other.into()),
        }
    }
}
