//! The registry operator: runs one region from `RegistryNamespace` and `RegistryCredential`
//! objects.
//!
//! Layout (pure core, thin IO):
//! - [`settings`]: the operator's own settings (region, host, feature gates).
//! - [`resolve`]: sans-IO decisions: which object claims which registry namespace, what a
//!   credential may be granted (tenancy, feature gates), the conditions that follow.
//! - [`render`]: sans-IO rendering of the region's configuration document, split into shards
//!   when large.
//! - [`keys`], [`secrets`]: token-signing keys with rotation, credential secrets and their
//!   hashes, and the Secrets that hold them.
//! - [`controllers`]: the kube-runtime controllers and the renderer loop that apply the
//!   above to the cluster.
//! - [`sync`]: sans-IO decisions of pull-Secret sync (which namespaces a target may reach,
//!   how `imagePullSecrets` change); [`kubeconfig`]: checks of tenants' kubeconfigs.
//! - [`telemetry`]: metrics and logs; [`leader`]: leader election on a Lease.

pub mod controllers;
pub mod dataplane;
pub mod error;
pub mod keys;
pub mod kubeconfig;
pub mod leader;
pub mod render;
pub mod resolve;
pub mod secrets;
pub mod settings;
pub mod sync;
pub mod telemetry;

pub use error::{Error, Result};

/// The field manager of every write the operator makes.
pub const FIELD_MANAGER: &str = "registry-operator";
/// The `app.kubernetes.io/managed-by` value on the operator's objects.
pub const MANAGED_BY: &str = "registry-operator";
/// Label naming the region an operator-made object belongs to.
pub const REGION_LABEL: &str = "registry.thalassa.cloud/region";
/// Label naming the credential (by uid) an operator-made Secret belongs to.
pub const CREDENTIAL_UID_LABEL: &str = "registry.thalassa.cloud/credential-uid";
/// Annotation with the hash of a Secret's content as the operator wrote it.
pub const CONTENT_HASH_ANNOTATION: &str = "registry.thalassa.cloud/content-hash";
/// Annotation that asks for a new secret now (any new value triggers one rotation).
pub const ROTATE_ANNOTATION: &str = "registry.thalassa.cloud/rotate";
/// The type of a credential's Secret and of its synced copies.
pub const DOCKER_CONFIG_JSON: &str = "kubernetes.io/dockerconfigjson";
/// The finalizer on credentials.
pub const CREDENTIAL_FINALIZER: &str = "registry.thalassa.cloud/credential";
