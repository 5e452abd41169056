//! Background jobs of a running registry: work no request does, run on a timer until the
//! process stops. Today: removing abandoned upload sessions. [`spawn`] starts them all; the
//! server calls it once and waits for the tasks at shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::task::JoinHandle;

use crate::config::ProcessSettings;
use crate::oci::RepoName;
use crate::storage::{Storage, StorageError};

/// Starts every background job over `storage` with these settings; each ends when `stop`
/// completes.
pub fn spawn(
    storage: Arc<dyn Storage>,
    settings: &ProcessSettings,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Vec<JoinHandle<()>> {
    vec![tokio::spawn(expire_uploads(
        storage,
        settings.uploads.session_timeout.0,
        stop,
    ))]
}

/// Removes upload sessions started more than `max_age` before `now`; returns how many.
/// Sessions that vanish meanwhile (finished or cancelled by their client) are not errors.
pub async fn expire_upload_sessions(
    storage: &dyn Storage,
    max_age: Duration,
    now: SystemTime,
) -> Result<usize, StorageError> {
    let mut removed = 0;
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
                removed += 1;
                tracing::info!(id = %upload.id, repository = %repo, ?age, "removed abandoned upload session");
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
    stop: impl Future<Output = ()>,
) {
    let interval = (max_age / 2).clamp(Duration::from_secs(1), Duration::from_secs(60));
    let mut stop = std::pin::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => return,
            () = tokio::time::sleep(interval) => {}
        }
        if let Err(err) = expire_upload_sessions(&*storage, max_age, SystemTime::now()).await {
            tracing::warn!(error = %err, "expiring abandoned upload sessions failed");
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
        let max_age = Duration::from_secs(1800);

        // Younger than the timeout: kept.
        let removed = expire_upload_sessions(&storage, max_age, SystemTime::now())
            .await
            .unwrap();
        assert_eq!(removed, 0);
        assert!(storage.upload_info(&repo, &session.id).await.is_ok());

        // An hour later: removed, and a second sweep finds nothing more.
        let later = SystemTime::now() + Duration::from_secs(3600);
        let removed = expire_upload_sessions(&storage, max_age, later)
            .await
            .unwrap();
        assert_eq!(removed, 1);
        assert!(matches!(
            storage.upload_info(&repo, &session.id).await,
            Err(StorageError::NotFound)
        ));
        assert_eq!(
            expire_upload_sessions(&storage, max_age, later)
                .await
                .unwrap(),
            0
        );
    }
}
