//! Online garbage collection: removes blobs that no manifest references once they have been
//! neither written nor relied upon for a grace period, while pushes and pulls go on.
//!
//! # Protocol
//!
//! Everyone who makes a blob relied upon **touches** it first and then checks it exists
//! ([`Storage::blob_touch`]): an upload's commit and a mount before linking, a manifest push
//! for each blob and child manifest it names, and for its own bytes, before linking the
//! manifest. A push whose touch finds the blob gone fails (`BLOB_UNKNOWN`) instead of
//! acknowledging a manifest with a missing blob.
//!
//! A collection, under the lease ([`lease`], taken for twice the interval, so one process
//! keeps collecting while it lives; released at shutdown):
//!
//! 1. takes the time `start` and the cutoff `start - grace`;
//! 2. puts back whatever an interrupted collection left set aside;
//! 3. **marks**: reads every manifest of every repository and gathers the manifests and every
//!    blob and child they name (each manifest is parsed once however many repositories hold
//!    it);
//! 4. **sweeps**: lists the blobs, and for each one not marked and not touched since the
//!    cutoff asks storage to collect it ([`Storage::blob_collect`]), which re-checks the touch,
//!    sets the blob aside, re-checks again and puts it back if a touch came in between.
//!
//! Why nothing relied upon is lost: a manifest linked before `start` is seen by the mark. A
//! push that completes after `start` touched each blob it names before checking it exists;
//! either the touch is seen by `blob_collect` (the blob stays or is put back), or the deletion
//! was final before the touch, and then the push's check fails. A blob uploaded but not yet
//! named by a manifest is protected by its write time for the grace period.
//!
//! Blob links (`_layers`) of collected blobs are left in place; requests treat a link to a
//! missing blob as absent, and `dataplane fsck --repair` removes such links.
//!
//! Metrics: `dataplane_gc_runs_total{outcome}` (completed, skipped: another process holds the
//! lease, failed), `dataplane_gc_blobs_collected_total`, `dataplane_gc_freed_bytes_total`,
//! `dataplane_gc_last_completed_timestamp_seconds`. Each completed run is also recorded in
//! storage (`_system/gc/last-run`, JSON [`RunReport`]).

pub mod lease;
mod mark;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use serde::{Deserialize, Serialize};

use self::lease::Lease;
use super::Registry;
use crate::oci::{Digest, RepoName};
use crate::storage::{RecordKey, StorageError};

/// How long the collector's lease is taken for at a time (renewed while a run goes on).
pub const LEASE_DURATION: Duration = Duration::from_secs(60);
/// Key of the lease record.
const LEASE_KEY: &str = "gc/lease";
/// Key of the record of the last completed run.
const REPORT_KEY: &str = "gc/last-run";

/// Why a collection stopped.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    /// Storage failed; nothing was collected after the failure.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A stored manifest could not be read as one; the run stops rather than guess what it
    /// references.
    #[error("manifest {digest} of {repository} cannot be read: {reason}")]
    Manifest {
        /// The repository holding it.
        repository: RepoName,
        /// Its digest.
        digest: Digest,
        /// What is wrong.
        reason: String,
    },
    /// The lease was lost during the sweep (another process took it, or it could not be
    /// renewed); the run stopped.
    #[error("the collector's lease was lost during the sweep")]
    LeaseLost,
}

/// What one collection found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunReport {
    /// Who ran it.
    pub holder: String,
    /// When it started and finished, in seconds since the Unix epoch.
    pub started_at: u64,
    /// When it finished.
    pub finished_at: u64,
    /// Manifests read by the mark (each digest once).
    pub manifests: usize,
    /// Distinct blobs and manifests referenced.
    pub referenced: usize,
    /// Blobs in storage when the sweep listed them.
    pub blobs: usize,
    /// Blobs removed.
    pub collected: usize,
    /// Bytes they held.
    pub freed_bytes: u64,
    /// Unreferenced blobs kept because they were written or touched within the grace period.
    pub within_grace: usize,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// What the collector did; shared counters, cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct GcMetrics {
    runs: Family<OutcomeLabels, Counter>,
    collected: Counter,
    freed_bytes: Counter,
    last_completed: Gauge,
}

impl GcMetrics {
    /// New metrics, registered in `registry`.
    pub fn register(registry: &mut prometheus_client::registry::Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "gc_runs",
            "Garbage collections, by outcome (completed, skipped, failed)",
            metrics.runs.clone(),
        );
        registry.register(
            "gc_blobs_collected",
            "Unreferenced blobs removed by garbage collection",
            metrics.collected.clone(),
        );
        registry.register(
            "gc_freed_bytes",
            "Bytes freed by garbage collection",
            metrics.freed_bytes.clone(),
        );
        registry.register(
            "gc_last_completed_timestamp_seconds",
            "When the last garbage collection of this process completed (Unix time)",
            metrics.last_completed.clone(),
        );
        metrics
    }

    fn outcome(&self, outcome: &'static str) {
        self.runs.get_or_create(&OutcomeLabels { outcome }).inc();
    }
}

fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// The collector of one process.
#[derive(Debug)]
pub struct Collector {
    registry: Arc<Registry>,
    grace: Duration,
    lease: Lease,
    metrics: GcMetrics,
}

impl Collector {
    /// A collector over `registry`'s storage, keeping unreferenced blobs for `grace`.
    pub fn new(registry: Arc<Registry>, grace: Duration, metrics: GcMetrics) -> Self {
        let holder = format!(
            "{}/{}",
            hostname().unwrap_or_else(|| "dataplane".to_owned()),
            uuid::Uuid::new_v4().simple()
        );
        let lease = Lease::new(
            Arc::clone(registry.storage()),
            LEASE_KEY.parse().expect("valid record key"),
            holder,
            LEASE_DURATION,
        );
        Self {
            registry,
            grace,
            lease,
            metrics,
        }
    }

    /// One collection, if this process gets the lease (`None` when another holds it). The
    /// lease is kept after the run; [`Collector::release`] gives it up.
    pub async fn run_once(&mut self) -> Result<Option<RunReport>, GcError> {
        if !self.lease.acquire().await? {
            self.metrics.outcome("skipped");
            return Ok(None);
        }
        match self.collect().await {
            Ok(report) => {
                self.metrics.outcome("completed");
                self.metrics.collected.inc_by(report.collected as u64);
                self.metrics.freed_bytes.inc_by(report.freed_bytes);
                self.metrics
                    .last_completed
                    .set(i64::try_from(report.finished_at).unwrap_or(i64::MAX));
                Ok(Some(report))
            }
            Err(e) => {
                self.metrics.outcome("failed");
                Err(e)
            }
        }
    }

    /// Gives the lease up (at shutdown).
    pub async fn release(&mut self) {
        if let Err(e) = self.lease.release().await {
            tracing::warn!(error = %e, "releasing the collector's lease failed");
        }
    }

    async fn collect(&mut self) -> Result<RunReport, GcError> {
        let storage = Arc::clone(self.registry.storage());
        let start = SystemTime::now();
        let cutoff = start.checked_sub(self.grace).unwrap_or(UNIX_EPOCH);
        let restored = storage.blob_collect_recover().await?;
        if restored > 0 {
            tracing::warn!(
                restored,
                "put back blobs an interrupted collection had set aside"
            );
        }
        let marked = mark::mark(&self.registry).await?;
        let mut report = RunReport {
            holder: self.lease.holder().to_owned(),
            started_at: unix_seconds(start),
            manifests: marked.manifests,
            referenced: marked.referenced.len(),
            ..RunReport::default()
        };
        let blobs = storage.blobs().await?;
        report.blobs = blobs.len();
        for blob in blobs {
            if marked.referenced.contains(&blob.digest) {
                continue;
            }
            if blob.touched >= cutoff {
                report.within_grace += 1;
                continue;
            }
            if !self.lease.keep().await? {
                return Err(GcError::LeaseLost);
            }
            if let Some(freed) = storage.blob_collect(&blob.digest, cutoff).await? {
                tracing::debug!(digest = %blob.digest, bytes = freed, "collected an unreferenced blob");
                report.collected += 1;
                report.freed_bytes += freed;
            } else {
                report.within_grace += 1;
            }
        }
        report.finished_at = unix_seconds(SystemTime::now());
        tracing::info!(
            manifests = report.manifests,
            referenced = report.referenced,
            blobs = report.blobs,
            collected = report.collected,
            freed_bytes = report.freed_bytes,
            within_grace = report.within_grace,
            seconds = report.finished_at.saturating_sub(report.started_at),
            "garbage collection completed"
        );
        let key: RecordKey = REPORT_KEY.parse().expect("valid record key");
        match serde_json::to_vec(&report) {
            Ok(json) => storage.record_put(&key, Bytes::from(json)).await?,
            Err(e) => tracing::warn!(error = %e, "cannot encode the collection report"),
        }
        Ok(report)
    }
}

/// Blobs touched at once by one request.
const TOUCHES_IN_FLIGHT: usize = 8;

impl Registry {
    /// Touches every distinct digest of `digests` (a few at a time); returns one that is gone,
    /// if any.
    pub(in crate::registry) async fn touch_all<'a>(
        &self,
        digests: impl Iterator<Item = &'a Digest>,
    ) -> Result<Option<Digest>, StorageError> {
        use futures_util::{StreamExt, TryStreamExt};
        let distinct: std::collections::BTreeSet<Digest> = digests.cloned().collect();
        let touches = distinct.into_iter().map(|digest| {
            let storage = Arc::clone(self.storage());
            async move {
                let present = storage.blob_touch(&digest).await?;
                Ok::<_, StorageError>((!present).then_some(digest))
            }
        });
        let missing: Vec<Option<Digest>> = futures_util::stream::iter(touches)
            .buffer_unordered(TOUCHES_IN_FLIGHT)
            .try_collect()
            .await?;
        Ok(missing.into_iter().flatten().next())
    }
}

/// The host name (the pod name in Kubernetes), to name the lease holder in logs.
fn hostname() -> Option<String> {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
}

/// The last completed collection's report, if any (any process's).
pub async fn last_report(registry: &Registry) -> Result<Option<RunReport>, StorageError> {
    let key: RecordKey = REPORT_KEY.parse().expect("valid record key");
    Ok(registry
        .storage()
        .record_get(&key)
        .await?
        .and_then(|data| serde_json::from_slice(&data).ok()))
}

/// How long a job running every `interval` takes its lease for: past its next run, so the
/// holder keeps it.
pub(in crate::registry) fn lease_for(interval: Duration, minimum: Duration) -> Duration {
    (interval * 2 + Duration::from_secs(30)).max(minimum)
}

/// Runs a collection every `interval` until `stop` completes, then gives the lease up.
pub async fn run(mut collector: Collector, interval: Duration, stop: impl Future<Output = ()>) {
    collector
        .lease
        .set_duration(lease_for(interval, LEASE_DURATION));
    let mut stop = std::pin::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => break,
            () = tokio::time::sleep(interval) => {}
        }
        let run = collector.run_once();
        tokio::select! {
            () = &mut stop => break,
            result = run => {
                if let Err(e) = result {
                    tracing::warn!(error = %e, "garbage collection failed; retrying at the next interval");
                }
            }
        }
    }
    collector.release().await;
}

#[cfg(test)]
mod tests;
