//! The clusters pull Secrets are synced into: this one, and remote ones reached through
//! tenants' kubeconfig Secrets.
//!
//! Each remote cluster is identified by its kubeconfig Secret (the credential's Kubernetes
//! namespace, the Secret's name and key), so credentials of one tenant that use the same
//! Secret share one client and one set of watches, and no two tenants ever share one. For
//! each, the operator watches its namespaces, its ServiceAccounts and its own copies, and, in
//! this cluster, the kubeconfig Secret itself: a changed kubeconfig rebuilds the client and
//! the watches. A watch that fails is restarted with backoff; every failure is counted
//! (`registry_operator_watch_failures_total`) and the cluster counts as unreachable until a
//! watch succeeds again, which wakes the credentials that sync there.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use kube::runtime::reflector::{self, ObjectRef, Store, store};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client};
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crds::v1alpha1::{KubeconfigSecretRef, RegistryCredential};

use crate::kubeconfig::{self, KubeconfigError};
use crate::sync::Reach;
use crate::telemetry::Metrics;
use crate::{CREDENTIAL_UID_LABEL, MANAGED_BY, REGION_LABEL};

/// How long one request to a remote cluster (other than a watch) may take.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// The name of this cluster in status, logs and metrics.
pub const LOCAL: &str = "local";

/// A remote cluster: the kubeconfig Secret it is reached through.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClusterKey {
    /// The credential's (and the Secret's) Kubernetes namespace.
    pub namespace: String,
    /// The Secret's name.
    pub secret: String,
    /// The key holding the kubeconfig.
    pub key: String,
}

impl ClusterKey {
    /// The key of a kubeconfig reference of a credential in `namespace` (the reference's own
    /// namespace is checked by the caller: only the credential's is permitted).
    pub fn of(namespace: &str, reference: &KubeconfigSecretRef) -> Self {
        Self {
            namespace: namespace.to_owned(),
            secret: reference.name.clone(),
            key: reference.key.clone(),
        }
    }

    /// `namespace/secret`, for metrics and logs.
    pub fn label(&self) -> String {
        format!("{}/{}", self.namespace, self.secret)
    }
}

/// A change a cache has taken in that may concern the pull-Secret sync of credentials. It is
/// sent once the cache holds the change, so a reconcile it starts reads the new state.
/// `cluster` is `None` for this cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncTrigger {
    /// A Kubernetes namespace was created, changed or deleted.
    Namespace {
        /// Its cluster.
        cluster: Option<ClusterKey>,
        /// Its name.
        name: String,
    },
    /// A ServiceAccount was created, changed or deleted.
    ServiceAccount {
        /// Its cluster.
        cluster: Option<ClusterKey>,
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// One of the operator's Secrets of this credential changed or went away.
    Credential {
        /// The Secret's cluster.
        cluster: Option<ClusterKey>,
        /// The credential it names.
        credential: ObjectRef<RegistryCredential>,
    },
    /// A cache listed everything again (after a watch was restarted), or a kubeconfig Secret
    /// changed: every credential syncing into the cluster.
    Relisted(Option<ClusterKey>),
}

/// A cluster as the sync writes see it: a client and caches.
#[derive(Clone)]
pub struct TargetCluster {
    /// Its name in status (`local`, or the target's cluster name).
    pub name: String,
    /// Its remote key; `None` for this cluster.
    pub key: Option<ClusterKey>,
    /// A client for it.
    pub client: Client,
    /// Its Kubernetes namespaces.
    pub namespaces: Store<Namespace>,
    /// The operator's Secrets there (copies, and in this cluster the delivered Secrets).
    pub copies: Store<Secret>,
    /// Its ServiceAccounts.
    pub service_accounts: Store<ServiceAccount>,
}

impl TargetCluster {
    /// Which tenancy rule applies: this cluster's, or a remote (the tenant's own) cluster's.
    pub fn reach(&self) -> Reach {
        if self.key.is_some() {
            Reach::Remote
        } else {
            Reach::Local
        }
    }
}

impl std::fmt::Debug for TargetCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TargetCluster")
            .field("name", &self.name)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote")
            .field("cluster", &self.cluster)
            .field("failing", &self.failing())
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for RemoteClusters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteClusters").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch")
            .field("cluster", &self.cluster)
            .field("resource", &self.resource)
            .finish_non_exhaustive()
    }
}

/// Whether a cluster's watches are failing, and since when.
#[derive(Debug, Default)]
struct Health {
    failing: Mutex<Option<(String, Instant)>>,
}

impl Health {
    fn failed(&self, error: String) {
        let mut failing = self.lock();
        let since = failing
            .as_ref()
            .map_or_else(Instant::now, |(_, since)| *since);
        *failing = Some((error, since));
    }

    /// Clears a failure; true when there was one.
    fn recovered(&self) -> bool {
        self.lock().take().is_some()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(String, Instant)>> {
        self.failing
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A remote cluster with its watches (stopped when the last reference goes).
pub struct Remote {
    /// The cluster.
    pub cluster: TargetCluster,
    fingerprint: String,
    /// The kubeconfig Secret (in this cluster), cached.
    kubeconfig: Store<Secret>,
    health: Arc<Health>,
    /// The images its Pods run (for retention); its failures do not make the cluster
    /// unreachable for sync.
    pub pods: tokio::sync::watch::Receiver<super::in_use::PodImages>,
    _tasks: JoinSet<()>,
}

impl Remote {
    /// The last watch error and how long the watches have been failing, if they are.
    pub fn failing(&self) -> Option<(String, Duration)> {
        self.health
            .lock()
            .as_ref()
            .map(|(error, since)| (error.clone(), since.elapsed()))
    }

    /// Waits up to `timeout` for the caches' first list; false if they have none yet.
    pub async fn ready(&self, timeout: Duration) -> bool {
        let all = async {
            let _ = tokio::join!(
                self.cluster.namespaces.wait_until_ready(),
                self.cluster.copies.wait_until_ready(),
                self.cluster.service_accounts.wait_until_ready(),
            );
        };
        tokio::time::timeout(timeout, all).await.is_ok()
    }
}

/// The remote clusters in use, by kubeconfig Secret.
pub struct RemoteClusters {
    local: Client,
    region: String,
    triggers: mpsc::UnboundedSender<SyncTrigger>,
    metrics: Arc<Metrics>,
    entries: tokio::sync::Mutex<HashMap<ClusterKey, Arc<Remote>>>,
    /// Bumped whenever what the Pods of a remote cluster run changes.
    pods_changed: Arc<tokio::sync::watch::Sender<u64>>,
}

impl RemoteClusters {
    /// No remote clusters yet; `local` reads the kubeconfig Secrets.
    pub fn new(
        local: Client,
        region: String,
        triggers: mpsc::UnboundedSender<SyncTrigger>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            local,
            region,
            triggers,
            metrics,
            entries: tokio::sync::Mutex::new(HashMap::new()),
            pods_changed: Arc::new(tokio::sync::watch::channel(0).0),
        }
    }

    /// Changes whenever what the Pods of any remote cluster run changes.
    pub fn pods_changed(&self) -> tokio::sync::watch::Receiver<u64> {
        self.pods_changed.subscribe()
    }

    /// The cluster reached with `kubeconfig`: the one in use when the kubeconfig is the same,
    /// else a new client with new watches (replacing the old ones).
    pub async fn connect(
        &self,
        key: &ClusterKey,
        name: &str,
        kubeconfig: &[u8],
    ) -> Result<Arc<Remote>, KubeconfigError> {
        let fingerprint = hex::encode(Sha256::digest(kubeconfig));
        let mut entries = self.entries.lock().await;
        if let Some(remote) = entries.get(key)
            && remote.fingerprint == fingerprint
        {
            return Ok(Arc::clone(remote));
        }
        let config = kubeconfig::tenant_config(kubeconfig).await?;
        let client = |config: kube::Config| {
            Client::try_from(config).map_err(|e| KubeconfigError::Unusable(e.to_string()))
        };
        // Watches wait for minutes on one response; a write that hangs must not hold up the
        // reconcile (and the other targets) for longer than WRITE_TIMEOUT.
        let mut for_writes = config.clone();
        for_writes.read_timeout = Some(WRITE_TIMEOUT);
        for_writes.write_timeout = Some(WRITE_TIMEOUT);
        let remote =
            Arc::new(self.start(key, name, client(config)?, client(for_writes)?, fingerprint));
        if entries.insert(key.clone(), Arc::clone(&remote)).is_some() {
            tracing::info!(cluster = %key.label(), "kubeconfig changed; client and watches rebuilt");
        }
        Ok(remote)
    }

    /// The kubeconfig of `key` as cached, once a cluster was connected through it and its
    /// cache holds a list: `Some(None)` when the Secret (or its key) is gone. `None` when
    /// there is no cache: the caller reads the Secret from the API.
    pub async fn cached_kubeconfig(&self, key: &ClusterKey) -> Option<Option<Vec<u8>>> {
        use futures::FutureExt as _;
        let remote = self.entries.lock().await.get(key).cloned()?;
        remote.kubeconfig.wait_until_ready().now_or_never()?.ok()?;
        let secret = remote
            .kubeconfig
            .get(&ObjectRef::new(&key.secret).within(&key.namespace));
        Some(secret.and_then(|s| s.data.as_ref()?.get(&key.key).map(|b| b.0.clone())))
    }

    /// The cluster last connected through `key`, if any: copies can still be removed after
    /// the kubeconfig Secret went (for example with the namespace being deleted).
    pub async fn last(&self, key: &ClusterKey) -> Option<Arc<Remote>> {
        self.entries.lock().await.get(key).cloned()
    }

    /// Stops the watches of clusters no credential uses any more.
    pub async fn retain(&self, used: &HashSet<ClusterKey>) {
        self.entries
            .lock()
            .await
            .retain(|key, _| used.contains(key));
    }

    fn start(
        &self,
        key: &ClusterKey,
        name: &str,
        client: Client,
        for_writes: Client,
        fingerprint: String,
    ) -> Remote {
        let mut tasks = JoinSet::new();
        let health = Arc::new(Health::default());
        let label = key.label();
        let watch = |resource: &'static str| Watch {
            cluster: label.clone(),
            resource,
            metrics: Arc::clone(&self.metrics),
            health: Some(Arc::clone(&health)),
            triggers: Some((
                self.triggers.clone(),
                SyncTrigger::Relisted(Some(key.clone())),
            )),
        };
        let cluster = Some(key.clone());
        let namespaces = {
            let cluster = cluster.clone();
            reflect(
                &mut tasks,
                Api::<Namespace>::all(client.clone()),
                watcher::Config::default().any_semantic(),
                watch("namespaces"),
                move |ns: &Namespace| {
                    Some(SyncTrigger::Namespace {
                        cluster: cluster.clone(),
                        name: ns.metadata.name.clone()?,
                    })
                },
            )
        };
        let copies = {
            let cluster = cluster.clone();
            reflect(
                &mut tasks,
                Api::<Secret>::all(client.clone()),
                watcher::Config::default()
                    .any_semantic()
                    .labels(&copies_selector(&self.region)),
                watch("secrets"),
                move |secret: &Secret| {
                    Some(SyncTrigger::Credential {
                        cluster: cluster.clone(),
                        credential: super::credential::credential_of(secret)?,
                    })
                },
            )
        };
        let service_accounts = reflect(
            &mut tasks,
            Api::<ServiceAccount>::all(client.clone()),
            watcher::Config::default().any_semantic(),
            watch("serviceaccounts"),
            move |sa: &ServiceAccount| {
                Some(SyncTrigger::ServiceAccount {
                    cluster: cluster.clone(),
                    namespace: sa.metadata.namespace.clone()?,
                    name: sa.metadata.name.clone()?,
                })
            },
        );
        // The kubeconfig Secret, in this cluster, cached (reconciles read it from here): a
        // change wakes the credentials using it, and their reconcile connects again with the
        // new kubeconfig.
        let relisted = std::sync::atomic::AtomicBool::new(false);
        let (triggers, changed) = (
            self.triggers.clone(),
            SyncTrigger::Relisted(Some(key.clone())),
        );
        let kubeconfig = reflect_with(
            &mut tasks,
            Api::<Secret>::namespaced(self.local.clone(), &key.namespace),
            watcher::Config::default().fields(&format!("metadata.name={}", key.secret)),
            Watch::local("secrets", &self.metrics, None),
            move |event| {
                let wake = match event {
                    watcher::Event::Apply(_) | watcher::Event::Delete(_) => true,
                    // The first list is what `connect` read already.
                    watcher::Event::InitDone => {
                        relisted.swap(true, std::sync::atomic::Ordering::Relaxed)
                    }
                    _ => false,
                };
                if wake {
                    let _ = triggers.send(changed.clone());
                }
            },
        );
        let pods = {
            let changed = Arc::clone(&self.pods_changed);
            super::in_use::watch_pods(&client, &label, &mut tasks, &self.metrics, move || {
                changed.send_modify(|n| *n = n.wrapping_add(1));
            })
        };
        Remote {
            cluster: TargetCluster {
                name: name.to_owned(),
                key: Some(key.clone()),
                client: for_writes,
                namespaces,
                copies,
                service_accounts,
            },
            fingerprint,
            kubeconfig,
            health,
            pods,
            _tasks: tasks,
        }
    }
}

/// The label selector of the operator's copies in a cluster.
pub fn copies_selector(region: &str) -> String {
    format!(
        "app.kubernetes.io/managed-by={MANAGED_BY},{REGION_LABEL}={region},{CREDENTIAL_UID_LABEL}"
    )
}

/// How a reflector reports.
pub struct Watch {
    /// The cluster's label in metrics.
    cluster: String,
    /// The resource, for metrics and logs.
    resource: &'static str,
    /// Where failures are counted.
    metrics: Arc<Metrics>,
    /// The cluster's health, for remote clusters.
    health: Option<Arc<Health>>,
    /// Where sync triggers go, with the one sent when a re-list is in the cache.
    triggers: Option<(mpsc::UnboundedSender<SyncTrigger>, SyncTrigger)>,
}

impl Watch {
    /// A watch of this cluster.
    pub fn local(
        resource: &'static str,
        metrics: &Arc<Metrics>,
        relisted: Option<&mpsc::UnboundedSender<SyncTrigger>>,
    ) -> Self {
        Self {
            cluster: LOCAL.to_owned(),
            resource,
            metrics: Arc::clone(metrics),
            health: None,
            triggers: relisted.map(|t| (t.clone(), SyncTrigger::Relisted(None))),
        }
    }
}

/// What a cache can hold: a Kubernetes object type the watcher can decode.
pub trait Cached:
    kube::Resource<DynamicType = ()>
    + Clone
    + std::fmt::Debug
    + serde::de::DeserializeOwned
    + Send
    + Sync
    + 'static
{
}

impl<K> Cached for K where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static
{
}

/// Keeps a cache of `api` filled by a watch, restarted with backoff when it fails, and sends
/// `trigger(object)` for each object created, changed or deleted once the cache holds it.
pub fn reflect<K>(
    tasks: &mut JoinSet<()>,
    api: Api<K>,
    config: watcher::Config,
    watch: Watch,
    trigger: impl Fn(&K) -> Option<SyncTrigger> + Send + Sync + 'static,
) -> Store<K>
where
    K: Cached,
{
    let triggers = watch.triggers.as_ref().map(|(t, _)| t.clone());
    reflect_with(tasks, api, config, watch, move |event| {
        if let (watcher::Event::Apply(obj) | watcher::Event::Delete(obj), Some(triggers)) =
            (event, &triggers)
            && let Some(sent) = trigger(obj)
        {
            let _ = triggers.send(sent);
        }
    })
}

/// [`reflect`], with every event.
pub fn reflect_with<K>(
    tasks: &mut JoinSet<()>,
    api: Api<K>,
    config: watcher::Config,
    watch: Watch,
    on_event: impl Fn(&watcher::Event<K>) + Send + Sync + 'static,
) -> Store<K>
where
    K: Cached,
{
    let (reader, writer) = store::store();
    let stream = reflector::reflector(writer, watcher(api, config).default_backoff());
    tasks.spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(event) => {
                    // `Init` starts a (re)list before any answer: only what follows it shows
                    // that the cluster answers. Counting it would restart the failure clock
                    // at every retry, and a cluster that never answers would never be given up.
                    let answered = !matches!(event, watcher::Event::Init);
                    let recovered =
                        answered && watch.health.as_ref().is_some_and(|h| h.recovered());
                    if recovered {
                        tracing::info!(cluster = %watch.cluster, resource = watch.resource, "watch recovered");
                    }
                    if let (watcher::Event::InitDone, Some((triggers, relisted))) =
                        (&event, &watch.triggers)
                    {
                        let _ = triggers.send(relisted.clone());
                    }
                    on_event(&event);
                }
                Err(error) => {
                    watch.metrics.watch_failed(&watch.cluster, watch.resource);
                    if let Some(health) = &watch.health {
                        health.failed(error.to_string());
                    }
                    tracing::warn!(cluster = %watch.cluster, resource = watch.resource, %error, "watch failed; restarting");
                }
            }
        }
    });
    reader
}
