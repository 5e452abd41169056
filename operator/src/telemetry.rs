//! Logs and Prometheus metrics of the operator.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tracing_subscriber::EnvFilter;

/// Log format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Installs the global logger (`RUST_LOG` sets the filter; default `info`).
pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Labels naming a controller.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ControllerLabels {
    /// `namespace`, `credential` or `render`.
    pub controller: String,
}

/// Labels of a failed reconcile.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ErrorLabels {
    /// The controller.
    pub controller: String,
    /// [`crate::Error::metric_label`].
    pub error: String,
}

/// Labels of an object count by condition.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ConditionLabels {
    /// `RegistryNamespace` or `RegistryCredential`.
    pub kind: String,
    /// The `Ready` condition's reason.
    pub reason: String,
}

/// Labels of a watch.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct WatchLabels {
    /// `local`, or a remote cluster's kubeconfig Secret (`namespace/name`).
    pub cluster: String,
    /// The resource watched (`namespaces`, `secrets`, ...).
    pub resource: String,
}

/// Labels naming a credential.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct CredentialLabels {
    /// `<kubernetes namespace>/<name>`.
    pub credential: String,
}

/// Every metric of the operator.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Reconciles by controller.
    pub reconciles: Family<ControllerLabels, Counter>,
    /// Failed reconciles by controller and error.
    pub errors: Family<ErrorLabels, Counter>,
    /// Reconcile durations by controller.
    pub duration: Family<ControllerLabels, Histogram>,
    /// Own-region objects by kind and `Ready` reason (as of the last render).
    pub objects: Family<ConditionLabels, Gauge>,
    /// Revision of the configuration document last written.
    pub revision: Gauge,
    /// Bytes of the document last written (index and shards).
    pub document_bytes: Gauge,
    /// Shards of the document last written.
    pub shards: Gauge,
    /// 1 while this process holds the leader Lease.
    pub leader: Gauge,
    /// Failed watches by cluster and resource (each is restarted with backoff).
    pub watch_failures: Family<WatchLabels, Counter>,
    /// Seconds until a credential's current secret expires: its `expiresAt`, or its next
    /// rotation, whichever is first (absent when neither is set).
    pub credential_expiry: Family<CredentialLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("registry_operator");
        let reconciles = Family::<ControllerLabels, Counter>::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        let duration = Family::<ControllerLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 14))
        });
        let objects = Family::<ConditionLabels, Gauge>::default();
        let revision = Gauge::default();
        let document_bytes = Gauge::default();
        let shards = Gauge::default();
        let leader = Gauge::default();
        let watch_failures = Family::<WatchLabels, Counter>::default();
        let credential_expiry = Family::<CredentialLabels, Gauge>::default();
        registry.register("reconciles", "Reconciles by controller", reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Failed reconciles by controller and error",
            errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Reconcile durations",
            duration.clone(),
        );
        registry.register(
            "objects",
            "Own-region objects by kind and Ready reason",
            objects.clone(),
        );
        registry.register(
            "config_revision",
            "Revision of the configuration document last written",
            revision.clone(),
        );
        registry.register(
            "config_bytes",
            "Bytes of the configuration document last written",
            document_bytes.clone(),
        );
        registry.register(
            "config_shards",
            "Shards of the configuration document last written",
            shards.clone(),
        );
        registry.register(
            "leader",
            "1 while this process holds the leader Lease",
            leader.clone(),
        );
        registry.register(
            "watch_failures",
            "Failed watches by cluster and resource; each is restarted with backoff",
            watch_failures.clone(),
        );
        registry.register(
            "credential_expiry_seconds",
            "Seconds until a credential's current secret expires (expiresAt or next rotation)",
            credential_expiry.clone(),
        );
        Self {
            registry,
            reconciles,
            errors,
            duration,
            objects,
            revision,
            document_bytes,
            shards,
            leader,
            watch_failures,
            credential_expiry,
        }
    }
}

impl Metrics {
    /// Counts a reconcile and its duration.
    pub fn reconciled(&self, controller: &str, took: Duration) {
        let labels = ControllerLabels {
            controller: controller.to_owned(),
        };
        self.reconciles.get_or_create(&labels).inc();
        self.duration
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }

    /// Counts a failed reconcile.
    pub fn failed(&self, controller: &str, error: &crate::Error) {
        self.errors
            .get_or_create(&ErrorLabels {
                controller: controller.to_owned(),
                error: error.metric_label().to_owned(),
            })
            .inc();
    }

    /// Counts a failed watch of `resource` in `cluster`.
    pub fn watch_failed(&self, cluster: &str, resource: &str) {
        self.watch_failures
            .get_or_create(&WatchLabels {
                cluster: cluster.to_owned(),
                resource: resource.to_owned(),
            })
            .inc();
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
