//! The durable records of metering and the arithmetic on them, free of I/O: the storage book
//! (stored bytes, byte-seconds, last sample per namespace) and the transfer book (bytes pulled
//! and pushed per namespace).

use std::collections::{BTreeMap, HashMap};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::registry::gc::lease::millis;

/// Stored bytes integrated over time, per namespace (`_system/metering/storage`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StorageBook {
    /// When the last sample was taken, in milliseconds since the Unix epoch.
    pub sampled_at_ms: u64,
    /// By namespace.
    pub namespaces: BTreeMap<String, StoredEntry>,
}

/// One namespace in the storage book.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredEntry {
    /// Bytes stored at the last sample.
    pub stored_bytes: u64,
    /// Stored bytes times seconds, summed over every interval so far (a decimal string: it
    /// outgrows 64 bits).
    #[serde(with = "decimal")]
    pub byte_seconds: u128,
}

/// Bytes transferred per namespace (`_system/metering/transfer`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TransferBook {
    /// By namespace.
    pub namespaces: BTreeMap<String, Transferred>,
}

/// Bytes transferred by one namespace.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Transferred {
    /// Served to clients pulling.
    pub pulled_bytes: u64,
    /// Received from clients pushing.
    pub pushed_bytes: u64,
}

impl Transferred {
    /// Adds `other` (saturating).
    pub fn add(&mut self, other: Transferred) {
        self.pulled_bytes = self.pulled_bytes.saturating_add(other.pulled_bytes);
        self.pushed_bytes = self.pushed_bytes.saturating_add(other.pushed_bytes);
    }
}

impl StorageBook {
    /// Records a sample taken at `now`: every namespace of the previous sample is charged its
    /// stored bytes for the time since that sample, then the stored bytes become `stored`. A
    /// clock that went backwards charges nothing. Namespaces that stored nothing in either
    /// sample keep their entry (their gigabyte-hours stay reported).
    pub fn sample(&mut self, stored: &HashMap<String, u64>, now: SystemTime) {
        let now_ms = millis(now);
        let elapsed_ms = u128::from(now_ms.saturating_sub(self.sampled_at_ms));
        if self.sampled_at_ms > 0 {
            for entry in self.namespaces.values_mut() {
                entry.byte_seconds += u128::from(entry.stored_bytes) * elapsed_ms / 1000;
            }
        }
        for entry in self.namespaces.values_mut() {
            entry.stored_bytes = 0;
        }
        for (namespace, bytes) in stored {
            self.namespaces
                .entry(namespace.clone())
                .or_default()
                .stored_bytes = *bytes;
        }
        self.sampled_at_ms = self.sampled_at_ms.max(now_ms);
    }
}

impl TransferBook {
    /// Adds what a process counted since its last write.
    pub fn add(&mut self, counted: &HashMap<String, Transferred>) {
        for (namespace, transferred) in counted {
            self.namespaces
                .entry(namespace.clone())
                .or_default()
                .add(*transferred);
        }
    }
}

/// A `u128` as a decimal string.
mod decimal {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(value: &u128, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&value.to_string())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u128, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    fn stored(entries: &[(&str, u64)]) -> HashMap<String, u64> {
        entries.iter().map(|(n, b)| ((*n).to_owned(), *b)).collect()
    }

    #[test]
    fn samples_integrate_the_previous_stored_bytes_over_the_interval() {
        let t0 = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut book = StorageBook::default();
        book.sample(&stored(&[("a", 1000), ("b", 10)]), t0);
        assert_eq!(
            book.namespaces["a"].byte_seconds, 0,
            "the first sample charges nothing"
        );
        book.sample(&stored(&[("a", 4000)]), t0 + Duration::from_secs(3600));
        assert_eq!(book.namespaces["a"].byte_seconds, 1000 * 3600);
        assert_eq!(book.namespaces["b"].byte_seconds, 10 * 3600);
        assert_eq!(book.namespaces["b"].stored_bytes, 0, "b deleted everything");
        book.sample(
            &stored(&[("a", 4000)]),
            t0 + Duration::from_millis(5_400_500),
        );
        assert_eq!(
            book.namespaces["a"].byte_seconds,
            1000 * 3600 + 4000 * 1800 + 2000
        );
        assert_eq!(book.namespaces["b"].byte_seconds, 10 * 3600);

        // A clock that steps back charges nothing and does not move the sample time back.
        let before = book.clone();
        book.sample(&stored(&[("a", 4000)]), t0);
        assert_eq!(
            book.namespaces["a"].byte_seconds,
            before.namespaces["a"].byte_seconds
        );
        assert_eq!(book.sampled_at_ms, before.sampled_at_ms);
    }

    #[test]
    fn books_round_trip_with_large_byte_seconds() {
        let mut book = StorageBook::default();
        book.namespaces.insert(
            "a".into(),
            StoredEntry {
                stored_bytes: 1,
                byte_seconds: u128::from(u64::MAX) * 1000,
            },
        );
        let json = serde_json::to_string(&book).unwrap();
        assert!(
            json.contains("\"byteSeconds\":\"18446744073709551615000\""),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<StorageBook>(&json).unwrap(), book);
    }

    #[test]
    fn transfer_adds_up() {
        let mut book = TransferBook::default();
        let counted: HashMap<String, Transferred> = [(
            "a".to_owned(),
            Transferred {
                pulled_bytes: 5,
                pushed_bytes: 7,
            },
        )]
        .into();
        book.add(&counted);
        book.add(&counted);
        assert_eq!(
            book.namespaces["a"],
            Transferred {
                pulled_bytes: 10,
                pushed_bytes: 14
            }
        );
    }
}
