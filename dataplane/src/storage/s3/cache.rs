//! Bounded in-memory cache of the bucket's immutable facts, so that hot reads skip requests.
//!
//! What may be cached is what cannot change under a replica while it exists:
//!
//! - a blob's size (content-addressed: the bytes under a digest never change);
//! - that a blob is linked into a repository;
//! - a manifest revision's record (media type and size of content-addressed bytes).
//!
//! Only **positive** answers are kept. A key that was absent is asked for again on the next
//! request, so whatever another replica writes is seen at once (read-after-write holds across
//! replicas). A removal made through this replica drops the entry at once; one made through
//! another replica (a manifest deleted by digest, a blob collected) is seen here when the entry
//! expires, at most [`MAX_AGE`] later. Tags move, so they are never cached: a read by tag
//! always asks the bucket (one request, see the tag record in `super`).
//!
//! The cache holds at most its share of the process's cache memory (an estimate: key, value
//! and a fixed overhead per entry; see [`crate::caches`]) and evicts by recency and frequency
//! when full.

use std::time::{Duration, Instant};

use quick_cache::Weighter;
use quick_cache::sync::Cache;

use crate::storage::ManifestMeta;

/// How long an entry is trusted: the bound on seeing another replica's removal.
pub(super) const MAX_AGE: Duration = Duration::from_secs(30);
/// Bookkeeping bytes counted per entry on top of key and value.
const ENTRY_OVERHEAD: u64 = 96;
/// Typical entry weight, to size the cache's tables.
const TYPICAL_ENTRY: u64 = ENTRY_OVERHEAD + 128;

/// What is known about a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Fact {
    /// The object exists and has this size (blobs).
    Size(u64),
    /// The object exists (blob links).
    Present,
    /// A manifest revision's record.
    Manifest(ManifestMeta),
}

#[derive(Debug, Clone)]
struct Entry {
    fact: Fact,
    stored: Instant,
}

#[derive(Debug, Clone, Copy, Default)]
struct EntryWeight;

impl Weighter<String, Entry> for EntryWeight {
    fn weight(&self, key: &String, entry: &Entry) -> u64 {
        let value = match &entry.fact {
            Fact::Manifest(meta) => meta.media_type.len() as u64,
            Fact::Size(_) | Fact::Present => 0,
        };
        ENTRY_OVERHEAD + key.len() as u64 + value
    }
}

/// Immutable facts by object key (see the module docs for what qualifies).
#[derive(Debug)]
pub(super) struct FactCache {
    entries: Cache<String, Entry, EntryWeight>,
    max_age: Duration,
}

impl FactCache {
    /// A cache holding at most `capacity_bytes`, trusting entries for `max_age`.
    pub(super) fn new(capacity_bytes: u64, max_age: Duration) -> Self {
        let estimated_items = usize::try_from(capacity_bytes / TYPICAL_ENTRY)
            .unwrap_or(1)
            .max(1);
        Self {
            entries: Cache::with_weighter(estimated_items, capacity_bytes, EntryWeight),
            max_age,
        }
    }

    /// The fact recorded for `key`, if any and still fresh.
    pub(super) fn get(&self, key: &str) -> Option<Fact> {
        let entry = self.entries.get(key)?;
        if entry.stored.elapsed() < self.max_age {
            Some(entry.fact)
        } else {
            self.entries.remove(key);
            None
        }
    }

    /// Records a fact just read from or written to the bucket.
    pub(super) fn put(&self, key: &str, fact: Fact) {
        self.entries.insert(
            key.to_owned(),
            Entry {
                fact,
                stored: Instant::now(),
            },
        );
    }

    /// Forgets `key` (it was removed through this replica).
    pub(super) fn forget(&self, key: &str) {
        self.entries.remove(key);
    }

    /// Bytes held, by the cache's estimate.
    #[cfg(test)]
    fn weight(&self) -> u64 {
        self.entries.weight()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(media_type: &str) -> ManifestMeta {
        ManifestMeta {
            media_type: media_type.to_owned(),
            size: 10,
        }
    }

    #[test]
    fn remembers_what_it_was_told_until_forgotten() {
        let cache = FactCache::new(1024 * 1024, MAX_AGE);
        assert_eq!(cache.get("a"), None);
        cache.put("a", Fact::Size(3));
        cache.put(
            "b",
            Fact::Manifest(meta("application/vnd.oci.image.manifest.v1+json")),
        );
        assert_eq!(cache.get("a"), Some(Fact::Size(3)));
        assert_eq!(
            cache.get("b"),
            Some(Fact::Manifest(meta(
                "application/vnd.oci.image.manifest.v1+json"
            )))
        );
        cache.forget("a");
        assert_eq!(cache.get("a"), None);
    }

    #[test]
    fn entries_expire() {
        let cache = FactCache::new(1024 * 1024, Duration::ZERO);
        cache.put("a", Fact::Present);
        assert_eq!(cache.get("a"), None);
    }

    #[test]
    fn stays_within_its_memory_bound() {
        let capacity = 64 * 1024;
        let cache = FactCache::new(capacity, MAX_AGE);
        for i in 0..10_000 {
            cache.put(
                &format!("repositories/r/_layers/sha256/{i:064}"),
                Fact::Present,
            );
        }
        assert!(
            cache.weight() <= capacity,
            "{} > {capacity}",
            cache.weight()
        );
        // The most recent entries are still there.
        assert_eq!(
            cache.get(&format!("repositories/r/_layers/sha256/{:064}", 9_999)),
            Some(Fact::Present)
        );
    }
}
