//! The memory the in-memory caches may hold, and how they share it (`serve --cache-memory`).
//!
//! Every cache of the data plane is bounded by a share of one budget, so that a pod's memory
//! limit can be sized as the process's working memory plus the budget:
//!
//! | cache | share | holds |
//! |---|---|---|
//! | manifests by digest ([`crate::registry`]) | 1/6 | manifest bytes served or pushed recently |
//! | tags ([`crate::storage::fs`], filesystem only) | 1/6 | tag resolutions, read at most 1 s ago |
//! | bucket facts ([`crate::storage::s3`], S3 only) | 2/3 | blob sizes, layer links, manifest records |
//! | upload hash states ([`crate::registry`]) | 1/12 | the running digest of open upload sessions |
//!
//! A backend uses only its own cache, so the shares in use add up to at most 11/12 of the
//! budget. Sizes are estimates (content plus a fixed overhead per entry), not allocator
//! accounting.

use std::fmt;
use std::str::FromStr;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;

/// Estimated memory of one remembered tag resolution (names, digest, media type, map entry).
const TAG_ENTRY_BYTES: u64 = 512;
/// Estimated memory of one upload session's hash state (hasher, id, map entry).
const HASH_STATE_BYTES: u64 = 256;

/// The memory budget of the in-memory caches, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheMemory(u64);

impl CacheMemory {
    /// The default budget: 48 MiB.
    pub const DEFAULT: CacheMemory = CacheMemory(48 * MIB);

    /// A budget of `bytes`; zero turns caching off (every read goes to storage).
    pub const fn from_bytes(bytes: u64) -> Self {
        Self(bytes)
    }

    /// The whole budget, in bytes.
    pub const fn bytes(self) -> u64 {
        self.0
    }

    /// Bytes of manifest content the registry keeps by digest.
    pub fn manifest_bytes(self) -> usize {
        usize::try_from(self.0 / 6).unwrap_or(usize::MAX)
    }

    /// Tag resolutions the filesystem backend remembers.
    pub fn tag_entries(self) -> usize {
        usize::try_from(self.0 / 6 / TAG_ENTRY_BYTES).unwrap_or(usize::MAX)
    }

    /// Bytes of bucket facts the S3 backend keeps.
    pub fn s3_fact_bytes(self) -> u64 {
        self.0 / 3 * 2
    }

    /// Upload hash states the registry keeps between an upload's requests.
    pub fn hash_states(self) -> usize {
        usize::try_from(self.0 / 12 / HASH_STATE_BYTES).unwrap_or(usize::MAX)
    }
}

impl Default for CacheMemory {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl fmt::Display for CacheMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            b if b >= GIB && b % GIB == 0 => write!(f, "{}GiB", b / GIB),
            b if b >= MIB && b % MIB == 0 => write!(f, "{}MiB", b / MIB),
            b if b >= KIB && b % KIB == 0 => write!(f, "{}KiB", b / KIB),
            b => write!(f, "{b}"),
        }
    }
}

/// A size that is not a number of bytes with an optional binary unit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not a size: write bytes, or a whole number of KiB, MiB or GiB (e.g. 48MiB, 64Mi)"
)]
pub struct SizeError(String);

impl FromStr for CacheMemory {
    type Err = SizeError;

    /// Parses `1048576`, `512KiB`, `48MiB`, `1GiB`, or the Kubernetes forms `Ki`, `Mi`, `Gi`.
    fn from_str(text: &str) -> Result<Self, SizeError> {
        let error = || SizeError(text.to_owned());
        let trimmed = text.trim();
        let digits = trimmed
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(trimmed.len());
        let (number, unit) = trimmed.split_at(digits);
        let number: u64 = number.parse().map_err(|_| error())?;
        let scale = match unit.trim_start() {
            "" | "B" => 1,
            "KiB" | "Ki" => KIB,
            "MiB" | "Mi" => MIB,
            "GiB" | "Gi" => GIB,
            _ => return Err(error()),
        };
        number.checked_mul(scale).map(Self).ok_or_else(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bytes_and_binary_units() {
        for (text, bytes) in [
            ("0", 0),
            ("1048576", MIB),
            ("512KiB", 512 * KIB),
            ("48MiB", 48 * MIB),
            ("64Mi", 64 * MIB),
            ("2 GiB", 2 * GIB),
            ("1Gi", GIB),
            ("100B", 100),
        ] {
            assert_eq!(
                text.parse::<CacheMemory>().unwrap().bytes(),
                bytes,
                "{text}"
            );
        }
    }

    #[test]
    fn refuses_what_is_not_a_size() {
        for text in [
            "",
            "MiB",
            "-1",
            "1.5GiB",
            "48MB",
            "48 mebibytes",
            "99999999999999999999",
        ] {
            let err = text.parse::<CacheMemory>().unwrap_err();
            assert!(err.to_string().contains("48MiB"), "{text}: {err}");
        }
        assert!("18014398509481984GiB".parse::<CacheMemory>().is_err());
    }

    #[test]
    fn displays_in_the_largest_whole_unit() {
        assert_eq!(CacheMemory::DEFAULT.to_string(), "48MiB");
        assert_eq!(CacheMemory::from_bytes(GIB).to_string(), "1GiB");
        assert_eq!(CacheMemory::from_bytes(3 * KIB).to_string(), "3KiB");
        assert_eq!(CacheMemory::from_bytes(1000).to_string(), "1000");
    }

    #[test]
    fn shares_stay_inside_the_budget() {
        for budget in [0, 1, 4 * MIB, 48 * MIB, 3 * GIB] {
            let caches = CacheMemory::from_bytes(budget);
            let fs = caches.manifest_bytes() as u64
                + caches.tag_entries() as u64 * TAG_ENTRY_BYTES
                + caches.hash_states() as u64 * HASH_STATE_BYTES;
            let s3 = caches.manifest_bytes() as u64
                + caches.s3_fact_bytes()
                + caches.hash_states() as u64 * HASH_STATE_BYTES;
            assert!(fs <= budget && s3 <= budget, "{budget}: fs {fs}, s3 {s3}");
        }
    }

    #[test]
    fn the_default_budget_splits_into_round_sizes() {
        let caches = CacheMemory::DEFAULT;
        assert_eq!(caches.manifest_bytes(), 8 * 1024 * 1024);
        assert_eq!(caches.tag_entries(), 16_384);
        assert_eq!(caches.s3_fact_bytes(), 32 * MIB);
        assert_eq!(caches.hash_states(), 16_384);
    }
}
