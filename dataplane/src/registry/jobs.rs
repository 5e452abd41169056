//! Background jobs of a running registry: work no request does, run on a timer until the
//! process stops: removing abandoned upload sessions, and garbage collection ([`super::gc`]).
//! [`spawn`] starts them all; the server calls it once and waits for the tasks at shutdown.
//!
//! Metrics ([`JobMetrics`]): `dataplane_uploads_expired_total` and
//! `dataplane_uploads_expired_bytes_total` (sessions removed and the bytes they held).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use prometheus_client::metrics::counter::Counter;
use tokio::task::JoinHandle;

use super::Registry;
use super::gc::{self, Collector, GcMetrics};
use super::metering::{self, Meter};
use crate::config::ProcessSettings;
use crate::oci::RepoName;
use crate::storage::{Storage, StorageError};

/// What the background jobs did; shared counters, cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct JobMetrics {
    uploads_expired: Counter,
    uploads_expired_bytes: Counter,
}

impl JobMetrics {
    /// New counters, registered in `registry`.
    pub fn register(registry: &mut prometheus_client::registry::Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "uploads_expired",
            "Abandoned upload sessions removed",
            metrics.uploads_expired.clone(),
        );
        registry.register(
            "uploads_expired_bytes",
            "Bytes the removed upload sessions held",
            metrics.uploads_expired_bytes.clone(),
        );
        metrics
    }
}

/// Starts every background job of `registry` with these settings: upload expiry, metering,
/// and garbage collection when `settings.gc.enabled`. Each ends when its future from `stop` completes.
pub fn spawn<S>(
    registry: &Arc<Registry>,
    settings: &ProcessSettings,
    metrics: JobMetrics,
    gc_metrics: GcMetrics,
    stop: impl Fn() -> S,
) -> Vec<JoinHandle<()>>
where
    S: Future<Output = ()> + Send + 'static,
{
    let mut jobs = vec![tokio::spawn(expire_uploads(
        Arc::clone(registry.storage()),
        settings.uploads.session_timeout.0,
        metrics,
        stop(),
    ))];
    jobs.push(tokio::spawn(metering::run(
        Meter::new(Arc::clone(registry)),
        settings.metering.interval.0,
        stop(),
    )));
    if settings.gc.enabled {
        let collector = Collector::new(Arc::clone(registry), settings.gc.grace.0, gc_metrics);
        jobs.push(tokio::spawn(gc::run(
            collector,
            settings.gc.interval.0,
            stop(),
        )));
    }
    jobs
}

/// Upload sessions removed by one sweep.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Expired {
    /// Sessions removed.
    pub sessions: usize,
    /// The bytes they held.
    pub bytes: u64,
}

/// Removes upload sessions started more than `max_age` before `now`. Sessions that vanish
/// meanwhile (finished or cancelled by their client) are not errors.
pub async fn expire_upload_sessions(
    storage: &dyn Storage,
    max_age: Duration,
    now: SystemTime,
) -> Result<Expired, StorageError> {
    let mut removed = Expired::default();
    for upload in storage.uploads().await? {
        let age = now.duration_since(upload.started_at).unwrap_or_default();
        if age <= max_age {
            continue;
        }
        let Ok(repo) = upload.repository.parse::<RepoName>() else {
            tracing::warn!(id = %upload.id, repository = %upload.repository,
                "upload session names an invalid repository; leaving it");
            continue;
        };
        match storage.upload_delete(&repo, &upload.id).await {
            Ok(()) => {
                removed.sessions += 1;
                removed.bytes += upload.size;
                tracing::info!(id = %upload.id, repository = %repo, ?age, bytes = upload.size,
                    "removed abandoned upload session");
            }
            Err(StorageError::NotFound) => {}
            Err(err) => return Err(err),
        }
    }
    Ok(removed)
}

/// Periodically removes abandoned upload sessions older than `max_age`, at an interval
/// derived from it (half of it, between 1 s and 60 s), until `stop` completes.
async fn expire_uploads(
    storage: Arc<dyn Storage>,
    max_age: Duration,
    metrics: JobMetrics,
    stop: impl Future<Output = ()>,
) {
    let interval = (max_age / 2).clamp(Duration::from_secs(1), Duration::from_secs(60));
    let mut stop = std::pin::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => return,
            () = tokio::time::sleep(interval) => {}
        }
        match expire_upload_sessions(&*storage, max_age, SystemTime::now()).await {
            Ok(expired) => {
                metrics.uploads_expired.inc_by(expired.sessions as u64);
                metrics.uploads_expired_bytes.inc_by(expired.bytes);
            }
            Err(err) => tracing::warn!(error = %err, "expiring abandoned upload sessions failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::memory::MemoryStorage;

    #[tokio::test]
    async fn expires_only_old_sessions() {
        let storage = MemoryStorage::new();
        let repo: RepoName = "a/b".parse().unwrap();
        let session = storage.upload_create(&repo).await.unwrap();
        let body = crate::storage::conformance::stream_of(vec![vec![7; 1000]]);
        storage
            .upload_append(&repo, &session.id, 0, body)
            .await
            .unwrap();
        let max_age = Duration::from_secs(1800);

        // Younger than the timeout: kept.
        let removed = expire_upload_sessions(&storage, max_age, SystemTime::now())
            .await
            .unwrap();
        assert_eq!(removed, Expired::default());
        assert!(storage.upload_info(&repo, &session.id).await.is_ok());

        // An hour later: removed, and a second sweep finds nothing more.
        let later = SystemTime::now() + Duration::from_secs(3600);
        let removed = expire_upload_sessions(&storage, max_age, later)
            .await
            .unwrap();
        assert_eq!(
            removed,
            Expired {
                sessions: 1,
                bytes: 1000
            }
        );
        assert!(matches!(
            storage.upload_info(&repo, &session.id).await,
            Err(StorageError::NotFound)
        ));
        assert_eq!(
            expire_upload_sessions(&storage, max_age, later)
                .await
                .unwrap(),
            Expired::default()
        );
    }
}
