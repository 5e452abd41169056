//! Pull records: when a tag or manifest was last pulled, for retention's
//! `deleteNotPulledWithin`. Recorded coarsely so that pulls stay cheap: each process writes a
//! record for an item at most once per clock hour, in the background, never delaying the
//! pull.
//!
//! Metrics: `dataplane_pull_records_pending` (writes started, not finished),
//! `dataplane_pull_records_written_total` and `dataplane_pull_records_failed_total`.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

use crate::oci::RepoName;
use crate::storage::{PullTarget, Storage};

/// Items remembered per hour before the memory is cleared (a cleared item is recorded again
/// on its next pull: one more write, never a missed pull).
const MAX_REMEMBERED: usize = 100_000;

/// The items this process recorded a pull of in the current hour.
#[derive(Debug, Default)]
pub(super) struct PullLog {
    seen: Mutex<Seen>,
    metrics: PullMetrics,
}

/// What the pull log wrote; shared counters, cheap to clone.
#[derive(Debug, Clone, Default)]
struct PullMetrics {
    pending: Gauge,
    written: Counter,
    failed: Counter,
}

#[derive(Debug, Default)]
struct Seen {
    hour: u64,
    items: HashSet<(RepoName, PullTarget)>,
}

/// The clock hour of `time` (hours since the Unix epoch).
fn hour_of(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
        / 3600
}

impl PullLog {
    /// Registers the pull-record metrics in `registry`.
    pub(super) fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        let metrics = &self.metrics;
        registry.register(
            "pull_records_pending",
            "Pull records being written in the background",
            metrics.pending.clone(),
        );
        registry.register(
            "pull_records_written",
            "Pull records written (at most one per item, hour and process)",
            metrics.written.clone(),
        );
        registry.register(
            "pull_records_failed",
            "Pull records whose write failed (the next pull of the item writes it again)",
            metrics.failed.clone(),
        );
    }

    /// Of `targets` pulled from `repo` at `now`, those not recorded yet in this hour (and
    /// remembers them as recorded).
    pub(super) fn unrecorded(
        &self,
        repo: &RepoName,
        targets: impl IntoIterator<Item = PullTarget>,
        now: SystemTime,
    ) -> Vec<PullTarget> {
        let hour = hour_of(now);
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        if seen.hour != hour || seen.items.len() >= MAX_REMEMBERED {
            seen.hour = hour;
            seen.items.clear();
        }
        targets
            .into_iter()
            .filter(|t| seen.items.insert((repo.clone(), t.clone())))
            .collect()
    }

    /// Forgets a recorded item (its write failed), so that the next pull records it again.
    fn forget(&self, repo: &RepoName, target: &PullTarget) {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        seen.items.remove(&(repo.clone(), target.clone()));
    }

    /// Records a pull of `targets` from `repo` now: writes, in the background, the records
    /// this process has not written in this hour.
    pub(super) fn note(
        self: &Arc<Self>,
        storage: &Arc<dyn Storage>,
        repo: &RepoName,
        targets: impl IntoIterator<Item = PullTarget>,
    ) {
        let unrecorded = self.unrecorded(repo, targets, SystemTime::now());
        if unrecorded.is_empty() {
            return;
        }
        let (log, storage, repo) = (Arc::clone(self), Arc::clone(storage), repo.clone());
        // Counted before the response goes out, so that `pending` covers every write a
        // served pull started.
        let pending = i64::try_from(unrecorded.len()).unwrap_or(i64::MAX);
        log.metrics.pending.inc_by(pending);
        tokio::spawn(async move {
            for target in unrecorded {
                match storage.pull_record(&repo, &target).await {
                    Ok(()) => {
                        log.metrics.written.inc();
                    }
                    Err(err) => {
                        tracing::warn!(repository = %repo, ?target, error = %err,
                            "recording a pull failed; the next pull records it again");
                        log.metrics.failed.inc();
                        log.forget(&repo, &target);
                    }
                }
                log.metrics.pending.dec();
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::oci::Digest;

    fn at(hours: u64, secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(hours * 3600 + secs)
    }

    #[test]
    fn an_item_is_recorded_once_an_hour() {
        let log = PullLog::default();
        let repo: RepoName = "acme/app".parse().unwrap();
        let other: RepoName = "acme/other".parse().unwrap();
        let tag = PullTarget::Tag("v1".parse().unwrap());
        let manifest = PullTarget::Manifest(Digest::sha256_of(b"m"));
        let both = || [tag.clone(), manifest.clone()];

        assert_eq!(log.unrecorded(&repo, both(), at(10, 5)), both());
        assert!(log.unrecorded(&repo, both(), at(10, 3599)).is_empty());
        // The same item of another repository is another item.
        let recorded = log.unrecorded(&other, [tag.clone()], at(10, 3599));
        assert_eq!(recorded, std::slice::from_ref(&tag));
        // A new hour records again.
        assert_eq!(log.unrecorded(&repo, both(), at(11, 0)), both());
        // A failed write is forgotten and recorded by the next pull.
        log.forget(&repo, &tag);
        assert_eq!(log.unrecorded(&repo, both(), at(11, 1)), [tag]);
    }

    #[tokio::test]
    async fn notes_reach_storage_in_the_background() {
        let storage: Arc<dyn Storage> = Arc::new(crate::storage::memory::MemoryStorage::new());
        let log = Arc::new(PullLog::default());
        let repo: RepoName = "acme/app".parse().unwrap();
        let target = PullTarget::Tag("latest".parse().unwrap());
        log.note(&storage, &repo, [target.clone()]);
        for _ in 0..100 {
            if !storage.pull_records(&repo).await.unwrap().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let records = storage.pull_records(&repo).await.unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].0, target);
    }
}
