//! The collector's lease: a record in storage, taken and renewed by compare-and-swap
//! ([`Storage::record_swap`]), so that one process of a region collects at a time.
//!
//! The record names its holder and when it expires. A process takes it when it is absent,
//! expired or its own; of two processes racing for it, the swap lets one through. The holder
//! checks [`Lease::remaining`] before each removal and renews well before expiry; a holder that
//! cannot renew stops. Expiry is judged by wall clocks, which are assumed to agree within a
//! small fraction of the lease's duration. Correctness does not rest on the lease alone: every
//! removal is fenced against concurrent touches by the storage backend.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::storage::{RecordKey, Storage, StorageError};

/// The record as stored (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LeaseRecord {
    holder: String,
    /// Expiry, in milliseconds since the Unix epoch.
    expires_at_ms: u64,
}

/// Milliseconds since the Unix epoch (0 before it), as the registry's records keep times.
pub(in crate::registry) fn millis(time: SystemTime) -> u64 {
    u64::try_from(
        time.duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis(),
    )
    .unwrap_or(u64::MAX)
}

/// A lease on one record key, held (or not) by this process.
#[derive(Debug)]
pub struct Lease {
    storage: Arc<dyn Storage>,
    key: RecordKey,
    holder: String,
    duration: Duration,
    /// The version written by the last successful take or renewal, and its expiry.
    held: Option<(String, SystemTime)>,
}

impl Lease {
    /// A lease on `key`, held for `duration` at a time by `holder` (unique per process).
    pub fn new(
        storage: Arc<dyn Storage>,
        key: RecordKey,
        holder: impl Into<String>,
        duration: Duration,
    ) -> Self {
        Self {
            storage,
            key,
            holder: holder.into(),
            duration,
            held: None,
        }
    }

    /// Takes the lease for `duration` at a time from now on. A job that runs on an interval
    /// holds it for longer than the interval, so that the same process does every run while
    /// it lives (a process that dies without releasing blocks the others for `duration`).
    pub fn set_duration(&mut self, duration: Duration) {
        self.duration = duration;
    }

    /// Who holds this lease object (its holder name).
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// Takes the lease, or renews it when held; returns whether this process holds it now.
    pub async fn acquire(&mut self) -> Result<bool, StorageError> {
        let now = SystemTime::now();
        let current = self.storage.record_read(&self.key).await?;
        let expected = match &current {
            None => None,
            Some(record) => {
                let theirs = serde_json::from_slice::<LeaseRecord>(&record.data).ok();
                let free = theirs.as_ref().is_none_or(|lease| {
                    lease.holder == self.holder || lease.expires_at_ms <= millis(now)
                });
                if !free {
                    self.held = None;
                    return Ok(false);
                }
                Some(record.version.as_str())
            }
        };
        let expires = now + self.duration;
        let record = LeaseRecord {
            holder: self.holder.clone(),
            expires_at_ms: millis(expires),
        };
        let data = Bytes::from(serde_json::to_vec(&record).map_err(|e| {
            StorageError::Backend(format!("cannot encode the collector's lease: {e}"))
        })?);
        match self.storage.record_swap(&self.key, expected, data).await? {
            Some(version) => {
                self.held = Some((version, expires));
                Ok(true)
            }
            None => {
                self.held = None;
                Ok(false)
            }
        }
    }

    /// How long the lease is still held by this process (zero when it is not).
    pub fn remaining(&self) -> Duration {
        self.held
            .as_ref()
            .and_then(|(_, expires)| expires.duration_since(SystemTime::now()).ok())
            .unwrap_or_default()
    }

    /// Renews the lease when less than half of it is left; returns whether it is still held
    /// for at least a third of its duration.
    pub async fn keep(&mut self) -> Result<bool, StorageError> {
        if self.remaining() < self.duration / 2 && !self.acquire().await? {
            return Ok(false);
        }
        Ok(self.remaining() >= self.duration / 3)
    }

    /// Gives the lease up (writes it expired), so another process may take it at once.
    pub async fn release(&mut self) -> Result<(), StorageError> {
        let Some((version, _)) = self.held.take() else {
            return Ok(());
        };
        let record = LeaseRecord {
            holder: self.holder.clone(),
            expires_at_ms: 0,
        };
        let data = Bytes::from(serde_json::to_vec(&record).unwrap_or_default());
        self.storage
            .record_swap(&self.key, Some(&version), data)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::memory::MemoryStorage;

    fn lease(storage: &Arc<MemoryStorage>, holder: &str, duration: Duration) -> Lease {
        let storage: Arc<dyn Storage> = storage.clone();
        Lease::new(storage, "gc/lease".parse().unwrap(), holder, duration)
    }

    #[tokio::test]
    async fn one_holder_at_a_time_until_release_or_expiry() {
        let storage = Arc::new(MemoryStorage::new());
        let mut a = lease(&storage, "a", Duration::from_secs(60));
        let mut b = lease(&storage, "b", Duration::from_secs(60));
        assert!(a.acquire().await.unwrap());
        assert!(!b.acquire().await.unwrap(), "held by a");
        assert!(a.acquire().await.unwrap(), "a renews its own");
        assert!(a.keep().await.unwrap());
        assert!(a.remaining() > Duration::from_secs(50));
        a.release().await.unwrap();
        assert_eq!(a.remaining(), Duration::ZERO);
        assert!(b.acquire().await.unwrap(), "released: b takes it");
        assert!(!a.acquire().await.unwrap());

        let mut short = lease(&storage, "c", Duration::from_millis(50));
        b.release().await.unwrap();
        assert!(short.acquire().await.unwrap());
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert_eq!(short.remaining(), Duration::ZERO);
        assert!(a.acquire().await.unwrap(), "expired: another takes it");
        assert!(
            !short.keep().await.unwrap(),
            "the old holder learns it lost it"
        );
        assert!(!short.acquire().await.unwrap());
    }

    #[tokio::test]
    async fn racing_processes_get_one_lease() {
        let storage = Arc::new(MemoryStorage::new());
        let mut contenders: Vec<Lease> = (0..8)
            .map(|i| lease(&storage, &format!("p{i}"), Duration::from_secs(60)))
            .collect();
        let results = futures_util::future::join_all(contenders.iter_mut().map(Lease::acquire))
            .await
            .into_iter()
            .map(Result::unwrap)
            .filter(|held| *held)
            .count();
        assert_eq!(results, 1);
    }
}
