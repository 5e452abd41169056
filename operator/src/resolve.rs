//! Sans-IO decisions: which object claims which registry namespace, what a credential may
//! be granted, and the conditions that follow. Everything here is a function of the objects
//! and the settings, so the renderer and the controllers always agree.
//!
//! The rules:
//! - Only objects of the operator's region are considered; others are never touched.
//! - Two `RegistryNamespace`s claiming one registry namespace: the one already serving it
//!   keeps it, else the older (by creation time, then Kubernetes namespace and name) wins; the
//!   other is `Conflict` and changes nothing.
//! - An object whose Kubernetes namespace belongs to an organisation without the
//!   `containerRegistry` feature gate (or to none) is `FeatureGateDisabled` and not served.
//! - A credential may be granted a registry namespace only when the winning
//!   `RegistryNamespace` is in the same Kubernetes namespace, or is organisation-scoped and
//!   in a project of the same organisation. Otherwise the credential is `NotPermitted` and
//!   nothing is issued: the message is the same whether the registry namespace exists
//!   elsewhere or not at all, so it tells nothing about other tenants.

use std::collections::{BTreeMap, HashMap};

use crds::config::{Scope, Visibility, check_namespace_name};
use crds::v1alpha1::{NamespaceScope, RegistryCredential, RegistryNamespace, reasons};
use k8s_openapi::jiff::Timestamp;

use crate::settings::Settings;

/// A Kubernetes object by namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    /// Kubernetes namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl Key {
    /// The key of an object.
    pub fn of<K: kube::Resource>(obj: &K) -> Self {
        Self {
            namespace: obj.meta().namespace.clone().unwrap_or_default(),
            name: obj.meta().name.clone().unwrap_or_default(),
        }
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// What the operator decided about an object: served, or why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Served as described.
    Served,
    /// Not served; `reason` is one of [`reasons`], `message` says what to fix.
    Refused {
        /// Stable reason.
        reason: &'static str,
        /// For people.
        message: String,
        /// Whether only a change by the owner can fix it (kstatus `Stalled`), as opposed to
        /// something that may resolve itself (a namespace that appears later).
        stalled: bool,
    },
}

impl Verdict {
    fn refused(reason: &'static str, message: String) -> Self {
        Self::Refused {
            reason,
            message,
            stalled: true,
        }
    }
}

/// The organisation of each Kubernetes namespace (its organisation label).
pub type Organisations = HashMap<String, String>;

/// The registry namespaces of the region and who claims them.
#[derive(Debug, Default)]
pub struct NamespaceIndex {
    /// Served registry namespace name → the object serving it.
    served: BTreeMap<String, ServedNamespace>,
    /// Every own-region object's verdict.
    verdicts: BTreeMap<Key, Verdict>,
}

/// A registry namespace that is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedNamespace {
    /// The object.
    pub key: Key,
    /// Its organisation.
    pub organisation: String,
    /// Its scope.
    pub scope: NamespaceScope,
    /// Its visibility.
    pub visibility: Visibility,
    /// Its immutable tag patterns.
    pub immutable_tags: Vec<String>,
}

/// Why an object's project cannot use the registry, if it cannot.
fn gate(settings: &Settings, orgs: &Organisations, namespace: &str) -> Result<String, Verdict> {
    match orgs.get(namespace) {
        None => Err(Verdict::refused(
            reasons::FEATURE_GATE_DISABLED,
            format!(
                "Kubernetes namespace {namespace:?} has no {:?} label: the container registry \
                 is available to organisations with the containerRegistry feature gate",
                crds::ORGANISATION_LABEL
            ),
        )),
        Some(org) if !settings.registry_enabled(org) => Err(Verdict::refused(
            reasons::FEATURE_GATE_DISABLED,
            format!(
                "organisation {org:?} does not have the containerRegistry feature gate; \
                 contact your account team to enable it"
            ),
        )),
        Some(org) => Ok(org.clone()),
    }
}

/// Whether an object's status says it is served (it won its name earlier).
fn serving(ns: &RegistryNamespace) -> bool {
    ns.status.as_ref().is_some_and(|status| {
        status.namespace.as_deref() == Some(ns.registry_name())
            && status
                .conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == crds::v1alpha1::ConditionStatus::True)
    })
}

fn deleting<K: kube::Resource>(obj: &K) -> bool {
    obj.meta().deletion_timestamp.is_some()
}

impl NamespaceIndex {
    /// Decides every `RegistryNamespace` of the region.
    pub fn build<'a>(
        settings: &Settings,
        orgs: &Organisations,
        objects: impl IntoIterator<Item = &'a RegistryNamespace>,
    ) -> Self {
        let mut own: Vec<&RegistryNamespace> = objects
            .into_iter()
            .filter(|ns| ns.spec.region == settings.region && !deleting(*ns))
            .collect();
        // The object already serving a name keeps it; otherwise the oldest claim wins
        // (creation times have one-second resolution, so the incumbent rule is what keeps a
        // newcomer created in the same second from taking a name over).
        own.sort_by_key(|ns| {
            (
                !serving(ns),
                ns.metadata.creation_timestamp.clone().map(|t| t.0),
                Key::of(*ns),
            )
        });
        let mut index = Self::default();
        for ns in own {
            let key = Key::of(ns);
            let name = ns.registry_name().to_owned();
            let verdict = if let Err(message) = check_namespace_name(&name) {
                Verdict::refused(reasons::INVALID_SPEC, message)
            } else if let Some(bad) = ns
                .spec
                .immutable_tags
                .iter()
                .find_map(|p| crds::config::check_tag_pattern(p).err())
            {
                Verdict::refused(reasons::INVALID_SPEC, format!("spec.immutableTags: {bad}"))
            } else if let Some(winner) = index.served.get(&name) {
                Verdict::refused(
                    reasons::CONFLICT,
                    format!(
                        "registry namespace {name:?} is already claimed in region {:?} by an \
                         older RegistryNamespace; choose another spec.name",
                        settings.region
                    ),
                )
                .with_detail_if(winner.key.namespace == key.namespace, || {
                    format!(" ({})", winner.key.name)
                })
            } else {
                match gate(settings, orgs, &key.namespace) {
                    Err(verdict) => verdict,
                    Ok(organisation) => {
                        index.served.insert(
                            name,
                            ServedNamespace {
                                key: key.clone(),
                                organisation,
                                scope: ns.spec.scope,
                                visibility: ns.spec.visibility,
                                immutable_tags: ns.spec.immutable_tags.clone(),
                            },
                        );
                        Verdict::Served
                    }
                }
            };
            index.verdicts.insert(key, verdict);
        }
        index
    }

    /// The verdict on an own-region object (`None` for other regions).
    pub fn verdict(&self, key: &Key) -> Option<&Verdict> {
        self.verdicts.get(key)
    }

    /// The served registry namespaces by name.
    pub fn served(&self) -> &BTreeMap<String, ServedNamespace> {
        &self.served
    }

    /// The registry namespace an object serves, if it is served.
    pub fn served_name(&self, key: &Key) -> Option<&str> {
        self.served
            .iter()
            .find(|(_, s)| &s.key == key)
            .map(|(name, _)| name.as_str())
    }
}

impl Verdict {
    /// Adds detail to a refusal's message when `cond` holds (used to name the winner of a
    /// conflict only to objects of the same project, never across tenants).
    fn with_detail_if(mut self, cond: bool, detail: impl FnOnce() -> String) -> Self {
        if cond && let Self::Refused { message, .. } = &mut self {
            message.push_str(&detail());
        }
        self
    }
}

/// What a credential is granted, when it is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The scope.
    pub scope: Scope,
    /// The registry namespaces.
    pub namespaces: Vec<String>,
    /// When it stops working.
    pub expires_at: Option<Timestamp>,
}

/// Decides one credential: what it is granted, or why it is refused.
pub fn credential(
    settings: &Settings,
    orgs: &Organisations,
    namespaces: &NamespaceIndex,
    credential: &RegistryCredential,
    now: Timestamp,
) -> Result<Grant, Verdict> {
    let key = Key::of(credential);
    let organisation = gate(settings, orgs, &key.namespace)?;
    let expires_at = credential.spec.expires_at.as_ref().map(|t| t.0);
    if let Some(exp) = expires_at
        && exp <= now
    {
        return Err(Verdict::refused(
            reasons::EXPIRED,
            format!("spec.expiresAt {exp} is in the past: set a later time or remove it"),
        ));
    }
    if let Some(period) = &credential.spec.rotation_period
        && humantime::parse_duration(period).is_err()
    {
        return Err(Verdict::refused(
            reasons::INVALID_SPEC,
            format!("spec.rotationPeriod {period:?} is not a duration (write e.g. 720h)"),
        ));
    }
    // The admission rule admits https:// issuers the data plane still refuses (a query, a
    // fragment, credentials): refuse this object here rather than the region's document.
    if let Some(wi) = &credential.spec.workload_identity
        && let Err(message) = crds::config::check_issuer(&wi.issuer)
    {
        return Err(Verdict::refused(
            reasons::INVALID_SPEC,
            format!("spec.workloadIdentity.issuer {message}"),
        ));
    }
    let mut granted = Vec::with_capacity(credential.spec.namespaces.len());
    for name in &credential.spec.namespaces {
        let permitted = namespaces.served.get(name).is_some_and(|ns| {
            ns.key.namespace == key.namespace
                || (ns.scope == NamespaceScope::Organisation && ns.organisation == organisation)
        });
        if !permitted {
            return Err(Verdict::refused(
                reasons::NOT_PERMITTED,
                format!(
                    "registry namespace {name:?} is not a RegistryNamespace of region {:?} in \
                     this Kubernetes namespace, nor an organisation-scoped one of organisation \
                     {organisation:?}; nothing was issued",
                    settings.region
                ),
            ));
        }
        if !granted.contains(name) {
            granted.push(name.clone());
        }
    }
    Ok(Grant {
        scope: credential.spec.scope,
        namespaces: granted,
        expires_at,
    })
}

#[cfg(test)]
mod tests;
