//! The controllers and the renderer, wired to the cluster.
//!
//! - [`renderer`]: keeps caches of every input (namespaces, credentials, Kubernetes namespaces
//!   for their organisation labels, the operator's own Secrets), renders the region's
//!   document on every change and writes it into the configuration Secret (and shards).
//! - [`namespace`] and [`credential`]: one kube-runtime controller per kind. A reconcile opens
//!   a span, times itself, and hands over to the per-kind `apply` (and `cleanup`, through the
//!   finalizer, for credentials), which is idempotent.
//! - [`pull_secrets`] and [`clusters`]: pull-Secret sync into this cluster and remote ones.
//! - [`retention`]: retention policies, planned and run by the data plane; [`in_use`]: the
//!   images Pods run, which they never delete.
//! - [`status`]: conditions from verdicts, written by server-side apply.

pub mod clusters;
pub mod credential;
pub mod in_use;
pub mod namespace;
pub mod pull_secrets;
pub mod renderer;
pub mod retention;
pub mod status;
pub mod usage;

use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use kube::Client;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use tokio::sync::{Notify, watch};

use crds::v1alpha1::{RegistryCredential, RegistryNamespace};

use crate::resolve::{NamespaceIndex, Organisations};
use crate::settings::Settings;
use crate::telemetry::Metrics;

/// What the document last written contains, for the controllers to report `Ready` only once
/// the data plane can serve an object.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Published {
    /// The revision written.
    pub revision: u64,
    /// Registry namespaces in it.
    pub namespaces: HashSet<String>,
    /// Credential ids in it, with their current secret hash (empty for federations).
    pub credentials: HashMap<String, String>,
}

/// Caches of every object the operator decides on.
#[derive(Debug, Clone)]
pub struct Stores {
    /// Every `RegistryNamespace` of the cluster.
    pub namespaces: Store<RegistryNamespace>,
    /// Every `RegistryCredential` of the cluster.
    pub credentials: Store<RegistryCredential>,
    /// Every Kubernetes namespace (for the organisation label).
    pub projects: Store<Namespace>,
    /// The operator's own Secrets in its namespace.
    pub own_secrets: Store<Secret>,
    /// Secrets the operator delivered into credentials' namespaces, and the copies it synced
    /// (labelled as its own, with the credential's uid).
    pub delivered: Store<Secret>,
    /// Every ServiceAccount of the cluster (for `imagePullSecrets` of sync targets).
    pub service_accounts: Store<ServiceAccount>,
}

impl Stores {
    /// The organisation of every Kubernetes namespace that has one.
    pub fn organisations(&self) -> Organisations {
        self.projects
            .state()
            .iter()
            .filter_map(|ns| {
                let org = ns.metadata.labels.as_ref()?.get(crds::ORGANISATION_LABEL)?;
                Some((ns.metadata.name.clone()?, org.clone()))
            })
            .collect()
    }

    /// The current decisions on every `RegistryNamespace`.
    pub fn namespace_index(&self, settings: &Settings) -> NamespaceIndex {
        let namespaces = self.namespaces.state();
        NamespaceIndex::build(
            settings,
            &self.organisations(),
            namespaces.iter().map(|ns| ns.as_ref()),
        )
    }

    /// One of the operator's own Secrets.
    pub fn own_secret(&self, namespace: &str, name: &str) -> Option<Arc<Secret>> {
        self.own_secrets
            .get(&ObjectRef::new(name).within(namespace))
    }
}

/// Objects whose `Ready` waits for a document that contains them. The controller reconciles
/// them again as soon as a new document is written, instead of polling.
#[derive(Debug)]
pub struct AwaitingDocument<K: kube::Resource<DynamicType = ()>> {
    refs: Mutex<HashSet<ObjectRef<K>>>,
}

impl<K: kube::Resource<DynamicType = ()>> Default for AwaitingDocument<K> {
    fn default() -> Self {
        Self {
            refs: Mutex::new(HashSet::new()),
        }
    }
}

impl<K: kube::Resource<DynamicType = ()>> AwaitingDocument<K>
where
    ObjectRef<K>: Hash + Eq,
{
    /// Records that `object` waits for the next document.
    pub fn wait(&self, object: &K) {
        self.lock().insert(ObjectRef::from_obj(object));
    }

    /// Records that `object` no longer waits.
    pub fn done(&self, object: &K) {
        self.lock().remove(&ObjectRef::from_obj(object));
    }

    /// Every waiting object, forgotten until it waits again.
    pub fn take(&self) -> Vec<ObjectRef<K>> {
        self.lock().drain().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<ObjectRef<K>>> {
        self.refs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The objects of `awaiting` each time a new document is written: the controller's
/// `reconcile_on` stream.
pub fn woken_by_document<K>(
    ctx: &Arc<Context>,
    awaiting: fn(&Context) -> &AwaitingDocument<K>,
) -> impl futures::Stream<Item = ObjectRef<K>> + Send + 'static
where
    K: kube::Resource<DynamicType = ()> + Send + Sync + 'static,
    ObjectRef<K>: Hash + Eq,
{
    use futures::StreamExt as _;
    let ctx = Arc::clone(ctx);
    tokio_stream::wrappers::WatchStream::from_changes(ctx.published.clone())
        .flat_map(move |_| futures::stream::iter(awaiting(&ctx).take()))
}

/// How long an object waiting for the document waits before it is looked at anyway (it is
/// normally reconciled as soon as a new document is written).
pub const AWAIT_DOCUMENT_FALLBACK: Duration = Duration::from_secs(5);

/// Shared by every reconcile.
pub struct Context {
    /// The API client.
    pub client: Client,
    /// The operator's settings.
    pub settings: Arc<Settings>,
    /// Caches of the inputs.
    pub stores: Stores,
    /// What the document last written contains.
    pub published: watch::Receiver<Arc<Published>>,
    /// Changes whenever a decision that other objects depend on changes (which object
    /// serves which registry namespace, organisations): every object is then reconciled.
    pub decisions: watch::Receiver<u64>,
    /// Wakes the renderer.
    pub render: Arc<Notify>,
    /// Permits for argon2 hashing (one per core).
    pub hashing: tokio::sync::Semaphore,
    /// Namespaces waiting for a document that serves them.
    pub awaiting_namespaces: AwaitingDocument<RegistryNamespace>,
    /// Credentials waiting for a document that contains them.
    pub awaiting_credentials: AwaitingDocument<RegistryCredential>,
    /// Changes the caches took in that concern pull-Secret sync; taken by the credential
    /// controller.
    pub sync_triggers: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<clusters::SyncTrigger>>>,
    /// Remote sync target clusters in use.
    pub remotes: clusters::RemoteClusters,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Events, deduplicated.
    pub recorder: Recorder,
    /// The data plane's internal endpoints.
    pub dataplane: crate::dataplane::DataPlane,
    /// Digests of the images this cluster's Pods run (remote clusters: [`Self::remotes`]).
    pub in_use: watch::Receiver<in_use::PodImages>,
    /// The last plan made of each retention policy.
    pub plans: retention::Plans,
}

impl Context {
    /// This cluster, as a sync target.
    pub fn local_cluster(&self) -> clusters::TargetCluster {
        clusters::TargetCluster {
            name: clusters::LOCAL.to_owned(),
            key: None,
            client: self.client.clone(),
            namespaces: self.stores.projects.clone(),
            copies: self.stores.delivered.clone(),
            service_accounts: self.stores.service_accounts.clone(),
        }
    }
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// Per-object exponential backoff for transient errors: 250 ms doubling to 5 minutes.
pub fn backoff(attempt: u32) -> Duration {
    let millis = 250u64.saturating_mul(1u64 << attempt.min(11));
    Duration::from_millis(millis.min(300_000))
}

/// Runs the renderer and both controllers until `shutdown` completes.
pub async fn run(
    client: Client,
    settings: Arc<Settings>,
    metrics: Arc<Metrics>,
    identity: String,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let render = Arc::new(Notify::new());
    let (stores, mut reflectors, trigger_sender, sync_triggers) =
        renderer::start_reflectors(&client, &settings, &metrics, Arc::clone(&render));
    let in_use = in_use::watch_pods(&client, clusters::LOCAL, &mut reflectors, &metrics, || {});
    let dataplane =
        match crate::dataplane::DataPlane::new(settings.dataplane_url(), settings.region.clone()) {
            Ok(dataplane) => dataplane,
            Err(error) => {
                tracing::error!(%error, "cannot reach the data plane; not reconciling");
                return;
            }
        };
    let (published_tx, published) = watch::channel(Arc::new(Published::default()));
    let (decisions_tx, decisions) = watch::channel(0u64);
    let ctx = Arc::new(Context {
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: crate::FIELD_MANAGER.into(),
                instance: Some(identity),
            },
        ),
        client: client.clone(),
        settings: Arc::clone(&settings),
        stores: stores.clone(),
        published,
        decisions,
        render: Arc::clone(&render),
        hashing: tokio::sync::Semaphore::new(
            std::thread::available_parallelism().map_or(1, |n| n.get()),
        ),
        awaiting_namespaces: AwaitingDocument::default(),
        awaiting_credentials: AwaitingDocument::default(),
        sync_triggers: Mutex::new(Some(sync_triggers)),
        remotes: clusters::RemoteClusters::new(
            client.clone(),
            settings.region.clone(),
            trigger_sender,
            Arc::clone(&metrics),
        ),
        metrics,
        dataplane,
        in_use,
        plans: retention::Plans::default(),
    });
    let shutdown = futures::future::FutureExt::shared(Box::pin(shutdown));
    let _ = tokio::join!(
        stores.namespaces.wait_until_ready(),
        stores.credentials.wait_until_ready(),
        stores.projects.wait_until_ready(),
        stores.own_secrets.wait_until_ready(),
        stores.delivered.wait_until_ready(),
        stores.service_accounts.wait_until_ready(),
    );
    tracing::info!(region = %settings.region, "caches synced; reconciling");
    let renderer = tokio::spawn(renderer::run(
        Arc::clone(&ctx),
        published_tx,
        decisions_tx,
        shutdown.clone(),
    ));
    let forget = tokio::spawn(credential::forget_unused_clusters(Arc::clone(&ctx)));
    let usage = tokio::spawn(usage::run(Arc::clone(&ctx), shutdown.clone()));
    let namespaces = namespace::controller(Arc::clone(&ctx), shutdown.clone());
    let credentials = credential::controller(Arc::clone(&ctx), shutdown.clone());
    let policies = retention::controller(Arc::clone(&ctx), shutdown.clone());
    tokio::join!(namespaces, credentials, policies);
    renderer.abort();
    forget.abort();
    usage.abort();
    reflectors.abort_all();
}
