//! Leader election on a `Lease` (kube-lease-manager): only the leader reconciles.

use std::time::Duration;

use kube::Client;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
use tokio::sync::watch;

/// How long a Lease stays valid without renewal: the longest a dead leader blocks the next.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// How long before expiry the holder renews.
pub const LEASE_GRACE: Duration = Duration::from_secs(5);

/// A running election: a channel that says whether this process leads.
#[derive(Debug)]
pub struct Election {
    /// `true` while this process holds the Lease.
    pub leading: watch::Receiver<bool>,
    task: tokio::task::JoinHandle<kube_lease_manager::Result<LeaseManager>>,
}

/// Starts taking part in the election for `lease` in `namespace` as `identity`.
pub async fn join(
    client: Client,
    namespace: &str,
    lease: &str,
    identity: &str,
) -> kube_lease_manager::Result<Election> {
    let manager = LeaseManagerBuilder::new(client, lease)
        .with_namespace(namespace)
        .with_identity(identity)
        .with_duration(LEASE_DURATION.as_secs())
        .with_grace(LEASE_GRACE.as_secs())
        .with_field_manager(crate::FIELD_MANAGER)
        .build()
        .await?;
    let (leading, task) = manager.watch().await;
    Ok(Election { leading, task })
}

impl Election {
    /// Waits until this process leads.
    pub async fn until_leading(&mut self) {
        let _ = self.leading.wait_for(|leading| *leading).await;
    }

    /// Waits until this process stops leading (another took over, or the Lease was lost).
    pub async fn until_lost(&mut self) {
        let _ = self.leading.wait_for(|leading| !*leading).await;
    }

    /// Leaves the election and frees the Lease at once, so another process takes over
    /// without waiting for it to expire.
    pub async fn release(self) {
        drop(self.leading);
        match self.task.await {
            Ok(Ok(manager)) => {
                if let Err(error) = manager.release().await {
                    tracing::warn!(%error, "could not release the leader Lease");
                }
            }
            Ok(Err(error)) => tracing::warn!(%error, "leader election ended with an error"),
            Err(error) => tracing::warn!(%error, "leader election task failed"),
        }
    }
}
