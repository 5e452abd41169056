//! `RegistryNamespace`: a registry namespace of one region.

// Repeated `printcolumn(type_ = ...)` and `validation` entries are distinct items of the
// kube derive, not duplicates.
#![allow(clippy::duplicated_attributes)]

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::conditions::{Condition, conditions_schema};
use crate::config::Visibility;

/// Who may be granted a registry namespace.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum NamespaceScope {
    /// Only credentials in the same Kubernetes namespace (project).
    #[default]
    Project,
    /// Credentials in any project of the same organisation (the
    /// `registry.thalassa.cloud/organisation` label of the Kubernetes namespaces).
    Organisation,
}

/// A registry namespace: the first path component of its repositories
/// (`<registry host>/<namespace>/<repository>:<tag>`). Repositories appear on first push.
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "registry.thalassa.cloud",
    version = "v1alpha1",
    kind = "RegistryNamespace",
    namespaced,
    status = "RegistryNamespaceStatus",
    shortname = "rns",
    shortname = "regns",
    category = "registry",
    doc = "A registry namespace of one region: the first path component of its repositories' names. Visibility decides anonymous pull; scope decides which projects' credentials may be granted it.",
    printcolumn(name = "Region", type_ = "string", json_path = ".spec.region"),
    printcolumn(name = "Visibility", type_ = "string", json_path = ".spec.visibility"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].reason"),
    printcolumn(name = "Endpoint", type_ = "string", json_path = ".status.endpoint", description = "Where to push and pull"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("has(self.spec.name) || self.metadata.name.matches('^[a-z0-9]+((\\\\.|_|__|-+)[a-z0-9]+)*$') && size(self.metadata.name) <= 63")
        .message("metadata.name is not a valid registry namespace name: set spec.name to 1-63 lowercase letters and digits separated by '.', '_', '__' or dashes"),
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(has(self.name) ? self.name : '') == (has(oldSelf.name) ? oldSelf.name : '')")
    .message("spec.name cannot be added, removed or changed: create a new RegistryNamespace instead"))]
pub struct RegistryNamespaceSpec {
    /// The registry namespace name, as it appears in image references. Defaults to
    /// `metadata.name`. 1-63 lowercase letters and digits separated by `.`, `_`, `__` or
    /// dashes. Cannot change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(
        validation = Rule::new("self.matches('^[a-z0-9]+((\\\\.|_|__|-+)[a-z0-9]+)*$') && size(self) <= 63")
            .message("must be 1-63 lowercase letters and digits separated by '.', '_', '__' or dashes (for example acme-platform)"),
    )]
    #[schemars(length(max = 63))]
    pub name: Option<String>,
    /// The region that serves the namespace (for example `nl-01`): only that region's operator
    /// acts on the object. Cannot change.
    #[x_kube(
        validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$') && size(self) <= 63")
            .message("must be a region name: 1-63 lowercase letters, digits and '-' (for example nl-01)"),
        validation = Rule::new("self == oldSelf").message("spec.region cannot change: create the namespace in the other region instead"),
    )]
    #[schemars(length(max = 63))]
    pub region: String,
    /// `private` (default): only credentials may pull. `public`: anyone may pull without
    /// credentials; pushing always needs a credential.
    #[serde(default)]
    pub visibility: Visibility,
    /// `project` (default): only credentials in this Kubernetes namespace may be granted the
    /// registry namespace. `organisation`: credentials in any project of this project's
    /// organisation may.
    #[serde(default)]
    pub scope: NamespaceScope,
    /// Tag patterns that cannot be moved once pushed (`*` any run of characters, `?` one
    /// character; for example `v*`). Pushing another manifest under such a tag is denied;
    /// pushing the same digest again is allowed.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self.all(p, p.matches('^[A-Za-z0-9_.*?-]{1,128}$'))")
        .message("each pattern is 1-128 tag characters (A-Z a-z 0-9 _ . -) and the wildcards * and ?"))]
    #[schemars(length(max = 64), inner(length(max = 128)))]
    pub immutable_tags: Vec<String>,
    /// Free text for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub description: Option<String>,
}

/// What the operator observed of a `RegistryNamespace`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RegistryNamespaceStatus {
    /// `Ready`, and `Reconciling` or `Stalled` while it is not.
    #[serde(default)]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` last reconciled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The registry namespace served (`spec.name` or `metadata.name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Where to push and pull: `<registry host>/<namespace>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Repositories in the namespace (filled by metering).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository_count: Option<i64>,
    /// Bytes stored in the namespace (filled by metering).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored_bytes: Option<i64>,
    /// What the namespace stores and transfers, as the data plane meters it: stored bytes (each
    /// blob once per namespace that links it), gigabyte-hours, bytes pulled and pushed.
    /// Refreshed every few minutes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<crate::usage::NamespaceUsage>,
}

impl RegistryNamespace {
    /// The registry namespace this object claims: `spec.name`, else `metadata.name`.
    pub fn registry_name(&self) -> &str {
        self.spec
            .name
            .as_deref()
            .or(self.metadata.name.as_deref())
            .unwrap_or_default()
    }
}
