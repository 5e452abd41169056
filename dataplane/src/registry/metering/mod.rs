//! Metering per registry namespace: stored bytes integrated into gigabyte-hours, and bytes
//! transferred (pulled and pushed), all kept in storage so that a restart or a change of
//! replicas loses nothing. [`crds::usage`] says how each figure is counted.
//!
//! - **Transfer.** Every process counts the bytes it serves and receives per namespace in
//!   memory ([`TransferLog`]) and adds them to the transfer book in storage every interval and
//!   at shutdown, by compare-and-swap. A process killed without a shutdown loses at most one
//!   interval of its own counts.
//! - **Storage.** One process at a time (a lease in storage, as the garbage collector's) samples
//!   the stored bytes of every namespace every interval and integrates them into the storage
//!   book ([`book::StorageBook::sample`]). The time between two samples is charged at the
//!   earlier sample's bytes, whichever process takes them, so a restart or a hand-over only
//!   delays the next sample.
//!
//! The clock is injected ([`Meter::sample_at`]), so tests advance it instead of waiting.
//!
//! Metrics: `dataplane_transfer_bytes_total{namespace,direction}` (this process's counts),
//! and from the process holding the lease, `dataplane_namespace_stored_bytes{namespace}` and
//! `dataplane_namespace_gigabyte_hours{namespace}` (the book's totals after each sample).

pub mod book;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use crds::usage::{NamespaceUsage, UsageResponse, gigabyte_hours};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use serde::Serialize;
use serde::de::DeserializeOwned;

use self::book::{StorageBook, TransferBook, Transferred};
use super::Registry;
use super::gc::lease::Lease;
use crate::oci::{Digest, RepoName};
use crate::storage::{RecordKey, Storage, StorageError};

const LEASE_KEY: &str = "metering/lease";
const STORAGE_KEY: &str = "metering/storage";
const TRANSFER_KEY: &str = "metering/transfer";
/// How long the sampler's lease is taken for at a time.
const LEASE_DURATION: Duration = Duration::from_secs(120);
/// Attempts of a compare-and-swap update before giving up until the next interval.
const SWAP_ATTEMPTS: usize = 20;

fn key(text: &str) -> RecordKey {
    text.parse().expect("valid record key")
}

/// Which way bytes went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Served to a client pulling.
    Pull,
    /// Received from a client pushing.
    Push,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransferLabels {
    namespace: String,
    direction: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NamespaceLabels {
    namespace: String,
}

/// Metering metrics; shared, cheap to clone.
#[derive(Debug, Clone, Default)]
struct MeteringMetrics {
    transfer: Family<TransferLabels, Counter>,
    stored: Family<NamespaceLabels, Gauge>,
    gigabyte_hours: Family<NamespaceLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
}

/// Bytes this process transferred per namespace and has not written to storage yet.
#[derive(Debug, Default)]
pub struct TransferLog {
    pending: Mutex<HashMap<String, Transferred>>,
    metrics: MeteringMetrics,
}

impl TransferLog {
    /// Counts `bytes` of `repo` going `direction`.
    pub fn count(&self, repo: &RepoName, direction: Direction, bytes: u64) {
        if bytes == 0 {
            return;
        }
        let namespace = repo.namespace();
        {
            let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
            // Every pull passes here: allocate a namespace's key only the first time.
            if !pending.contains_key(namespace) {
                pending.insert(namespace.to_owned(), Transferred::default());
            }
            let entry = pending.get_mut(namespace).expect("inserted above");
            match direction {
                Direction::Pull => entry.pulled_bytes = entry.pulled_bytes.saturating_add(bytes),
                Direction::Push => entry.pushed_bytes = entry.pushed_bytes.saturating_add(bytes),
            }
        }
        let direction = match direction {
            Direction::Pull => "pull",
            Direction::Push => "push",
        };
        self.metrics
            .transfer
            .get_or_create(&TransferLabels {
                namespace: namespace.to_owned(),
                direction,
            })
            .inc_by(bytes);
    }

    /// Adds the pending counts to the transfer book in storage; on failure they stay pending
    /// for the next write.
    pub async fn flush(&self, storage: &dyn Storage) -> Result<(), StorageError> {
        let counted =
            std::mem::take(&mut *self.pending.lock().unwrap_or_else(PoisonError::into_inner));
        if counted.is_empty() {
            return Ok(());
        }
        let written =
            update::<TransferBook>(storage, &key(TRANSFER_KEY), |book| book.add(&counted)).await;
        if written.is_err() {
            let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
            for (namespace, transferred) in counted {
                pending.entry(namespace).or_default().add(transferred);
            }
        }
        written.map(drop)
    }

    /// Registers the metering metrics in `registry`.
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "transfer_bytes",
            "Bytes this process served (pull) or received (push), by registry namespace",
            self.metrics.transfer.clone(),
        );
        registry.register(
            "namespace_stored_bytes",
            "Bytes stored by each registry namespace at the last sample (from the sampling process)",
            self.metrics.stored.clone(),
        );
        registry.register(
            "namespace_gigabyte_hours",
            "Stored bytes integrated over time, in gigabyte-hours (from the sampling process)",
            self.metrics.gigabyte_hours.clone(),
        );
    }
}

/// Reads a JSON record, applies `change` and writes it back by compare-and-swap, trying again
/// when another process wrote in between. Returns the record as written.
async fn update<T>(
    storage: &dyn Storage,
    key: &RecordKey,
    change: impl Fn(&mut T),
) -> Result<T, StorageError>
where
    T: Default + Serialize + DeserializeOwned,
{
    for _ in 0..SWAP_ATTEMPTS {
        let current = storage.record_read(key).await?;
        let mut value: T = match &current {
            Some(record) => serde_json::from_slice(&record.data).map_err(|e| {
                StorageError::Backend(format!("the metering record {key} is corrupt: {e}"))
            })?,
            None => T::default(),
        };
        change(&mut value);
        let data = Bytes::from(serde_json::to_vec(&value).map_err(|e| {
            StorageError::Backend(format!("cannot encode the metering record {key}: {e}"))
        })?);
        let expected = current.as_ref().map(|r| r.version.as_str());
        if storage.record_swap(key, expected, data).await?.is_some() {
            return Ok(value);
        }
        tokio::time::sleep(Duration::from_millis(10 + rand_jitter())).await;
    }
    Err(StorageError::Unavailable(format!(
        "the metering record {key} kept changing under concurrent writers"
    )))
}

fn rand_jitter() -> u64 {
    u64::from(uuid::Uuid::new_v4().as_bytes()[0]) % 40
}

async fn read<T: Default + DeserializeOwned>(
    storage: &dyn Storage,
    key: &RecordKey,
) -> Result<T, StorageError> {
    match storage.record_get(key).await? {
        Some(data) => serde_json::from_slice(&data).map_err(|e| {
            StorageError::Backend(format!("the metering record {key} is corrupt: {e}"))
        }),
        None => Ok(T::default()),
    }
}

/// Bytes stored per namespace now: the blobs linked into and the manifests held by its
/// repositories, each distinct digest once per namespace.
pub async fn stored_bytes(storage: &dyn Storage) -> Result<HashMap<String, u64>, StorageError> {
    let sizes: HashMap<Digest, u64> = storage
        .blobs()
        .await?
        .into_iter()
        .map(|blob| (blob.digest, blob.size))
        .collect();
    let mut held: HashMap<String, HashSet<Digest>> = HashMap::new();
    for repo in storage.repositories().await? {
        let digests = held.entry(repo.namespace().to_owned()).or_default();
        digests.extend(storage.blob_links(&repo).await?);
        digests.extend(storage.manifest_digests(&repo).await?);
    }
    Ok(held
        .into_iter()
        .map(|(namespace, digests)| {
            let bytes = digests.iter().filter_map(|d| sizes.get(d)).sum();
            (namespace, bytes)
        })
        .collect())
}

/// Every namespace's usage, from the books in storage (any process can answer).
pub async fn usage(storage: &dyn Storage) -> Result<UsageResponse, StorageError> {
    let stored: StorageBook = read(storage, &key(STORAGE_KEY)).await?;
    let transfer: TransferBook = read(storage, &key(TRANSFER_KEY)).await?;
    let sampled_at = (stored.sampled_at_ms > 0).then(|| {
        let time = SystemTime::UNIX_EPOCH + Duration::from_millis(stored.sampled_at_ms);
        humantime::format_rfc3339_seconds(time).to_string()
    });
    let mut response = UsageResponse::default();
    for (namespace, entry) in &stored.namespaces {
        let usage = response.namespaces.entry(namespace.clone()).or_default();
        usage.stored_bytes = entry.stored_bytes;
        usage.gigabyte_hours = gigabyte_hours(entry.byte_seconds);
        usage.sampled_at.clone_from(&sampled_at);
    }
    for (namespace, transferred) in &transfer.namespaces {
        let usage = response
            .namespaces
            .entry(namespace.clone())
            .or_insert_with(|| NamespaceUsage {
                gigabyte_hours: gigabyte_hours(0),
                sampled_at: sampled_at.clone(),
                ..NamespaceUsage::default()
            });
        usage.pulled_bytes = transferred.pulled_bytes;
        usage.pushed_bytes = transferred.pushed_bytes;
    }
    Ok(response)
}

/// The sampler of one process: takes samples of the stored bytes under the lease.
#[derive(Debug)]
pub struct Meter {
    registry: Arc<Registry>,
    lease: Lease,
}

impl Meter {
    /// A meter over `registry`'s storage.
    pub fn new(registry: Arc<Registry>) -> Self {
        let lease = Lease::new(
            Arc::clone(registry.storage()),
            key(LEASE_KEY),
            format!("meter/{}", uuid::Uuid::new_v4().simple()),
            LEASE_DURATION,
        );
        Self { registry, lease }
    }

    /// Takes a sample at `now` if this process holds (or gets) the lease; returns the storage
    /// book as written, `None` when another process samples.
    pub async fn sample_at(
        &mut self,
        now: SystemTime,
    ) -> Result<Option<StorageBook>, StorageError> {
        if !self.lease.acquire().await? {
            return Ok(None);
        }
        let storage = Arc::clone(self.registry.storage());
        let stored = stored_bytes(&*storage).await?;
        if !self.lease.keep().await? {
            return Ok(None);
        }
        let book = update::<StorageBook>(&*storage, &key(STORAGE_KEY), |book| {
            book.sample(&stored, now);
        })
        .await?;
        let metrics = &self.registry.transfers.metrics;
        for (namespace, entry) in &book.namespaces {
            let labels = NamespaceLabels {
                namespace: namespace.clone(),
            };
            metrics
                .stored
                .get_or_create(&labels)
                .set(i64::try_from(entry.stored_bytes).unwrap_or(i64::MAX));
            let hours: f64 = gigabyte_hours(entry.byte_seconds).parse().unwrap_or(0.0);
            metrics.gigabyte_hours.get_or_create(&labels).set(hours);
        }
        Ok(Some(book))
    }

    /// Gives the lease up (at shutdown).
    pub async fn release(&mut self) {
        if let Err(e) = self.lease.release().await {
            tracing::warn!(error = %e, "releasing the metering lease failed");
        }
    }
}

/// Every `interval` until `stop`: writes this process's transfer counts and takes a sample
/// when holding the lease; at `stop`, writes the counts once more and gives the lease up.
pub async fn run(mut meter: Meter, interval: Duration, stop: impl Future<Output = ()>) {
    meter
        .lease
        .set_duration(super::gc::lease_for(interval, LEASE_DURATION));
    let mut stop = std::pin::pin!(stop);
    let storage = Arc::clone(meter.registry.storage());
    loop {
        if let Err(e) = meter.sample_at(SystemTime::now()).await {
            tracing::warn!(error = %e, "sampling stored bytes failed; trying at the next interval");
        }
        tokio::select! {
            () = &mut stop => break,
            () = tokio::time::sleep(interval) => {}
        }
        if let Err(e) = meter.registry.transfers.flush(&*storage).await {
            tracing::warn!(error = %e, "writing transfer counts failed; keeping them for the next interval");
        }
    }
    if let Err(e) = meter.registry.transfers.flush(&*storage).await {
        tracing::warn!(error = %e, "writing transfer counts at shutdown failed; they are lost");
    }
    meter.release().await;
}

#[cfg(test)]
mod tests;
