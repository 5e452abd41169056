//! Pull-Secret sync, the decisions (sans IO): which Kubernetes namespaces a sync target of a
//! credential may reach, and how a ServiceAccount's `imagePullSecrets` list changes.
//!
//! **Tenancy.** In this cluster a credential reaches its own Kubernetes namespace, and the
//! namespaces of its own organisation that opt in with [`PULL_SECRETS_LABEL`]` = accept`.
//! A namespace a target names that it may not reach is `NotPermitted` and receives nothing.
//! A selector is matched within the tenant: namespaces of other organisations never count,
//! whatever labels they carry (so no other tenant can change what a credential's selector
//! does), and a selector that asks for another organisation is `NotPermitted`. Matching
//! namespaces of the organisation that have not opted in are skipped and reported.
//! A remote cluster is reached only through a kubeconfig Secret of the credential's own
//! namespace (the CRD has no field for any other), and every namespace of it is permitted.
//!
//! **ServiceAccounts.** `imagePullSecrets` is an atomic list: a server-side apply or strategic
//! merge would replace it whole. The operator therefore reads it, adds its entry once, keeps
//! every other entry, and writes it back with the `resourceVersion` it read. Which entries it
//! added is recorded in [`ADDED_ANNOTATION`] on the ServiceAccount, so that cleanup removes
//! those and never an entry of the same name that someone else put there first.

use std::collections::{BTreeMap, BTreeSet};

use crds::v1alpha1::{PULL_SECRETS_LABEL, SyncTarget};
use k8s_openapi::api::core::v1::{LocalObjectReference, ServiceAccount};
use kube::core::{Selector, SelectorExt as _};

/// Annotation on a ServiceAccount listing the `imagePullSecrets` entries the operator added
/// (comma-separated names).
pub const ADDED_ANNOTATION: &str = "registry.thalassa.cloud/image-pull-secrets";

/// The value of [`PULL_SECRETS_LABEL`] by which a namespace accepts synced pull Secrets.
pub const ACCEPT: &str = "accept";

/// What the tenancy check needs of a Kubernetes namespace.
#[derive(Debug, Clone, Copy)]
pub struct NamespaceView<'a> {
    /// Its name.
    pub name: &'a str,
    /// Its labels.
    pub labels: &'a BTreeMap<String, String>,
}

/// Who is asking: the credential's Kubernetes namespace and its organisation.
#[derive(Debug, Clone, Copy)]
pub struct Tenant<'a> {
    /// The credential's Kubernetes namespace.
    pub namespace: &'a str,
    /// Its organisation (the namespace's organisation label), if any.
    pub organisation: Option<&'a str>,
}

/// Which cluster a target writes to, for the tenancy rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// This cluster: the tenancy rule applies.
    Local,
    /// A remote cluster reached through the tenant's own kubeconfig: every namespace.
    Remote,
}

/// The namespaces of one target, decided.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    /// Namespaces that get the Secret.
    pub permitted: BTreeSet<String>,
    /// Namespaces the target names or selects that the credential may not reach, each with
    /// the reason.
    pub not_permitted: Vec<(String, String)>,
    /// Namespaces the target names that do not exist (yet).
    pub missing: Vec<String>,
    /// Namespaces of the organisation the selector matches that do not accept synced pull
    /// Secrets.
    pub skipped: Vec<String>,
}

/// Errors in a target that admission could not catch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// The label selector does not parse.
    #[error("namespaceSelector is not a valid label selector: {0}")]
    Selector(String),
}

/// Whether the tenant may write into `namespace` of this cluster; `Err` says why not.
pub fn permitted_locally(tenant: Tenant<'_>, namespace: NamespaceView<'_>) -> Result<(), String> {
    if namespace.name == tenant.namespace {
        return Ok(());
    }
    let organisation = namespace.labels.get(crds::ORGANISATION_LABEL);
    match (tenant.organisation, organisation) {
        (Some(ours), Some(theirs)) if ours == theirs => {
            if namespace.labels.get(PULL_SECRETS_LABEL).map(String::as_str) == Some(ACCEPT) {
                Ok(())
            } else {
                Err(format!(
                    "namespace {:?} does not accept synced pull Secrets (label it {PULL_SECRETS_LABEL}={ACCEPT})",
                    namespace.name
                ))
            }
        }
        _ => Err(format!(
            "namespace {:?} belongs to another organisation or project",
            namespace.name
        )),
    }
}

/// Decides the namespaces of `target` among `namespaces` (every namespace of the target
/// cluster).
pub fn select<'a>(
    target: &SyncTarget,
    tenant: Tenant<'_>,
    reach: Reach,
    namespaces: impl IntoIterator<Item = NamespaceView<'a>>,
) -> Result<Selection, TargetError> {
    let mut selection = Selection::default();
    let check = |ns: NamespaceView<'_>, selection: &mut Selection| match reach {
        Reach::Remote => {
            selection.permitted.insert(ns.name.to_owned());
        }
        Reach::Local => match permitted_locally(tenant, ns) {
            Ok(()) => {
                selection.permitted.insert(ns.name.to_owned());
            }
            Err(why) => selection.not_permitted.push((ns.name.to_owned(), why)),
        },
    };
    let namespaces: Vec<NamespaceView<'a>> = namespaces.into_iter().collect();
    if let Some(names) = &target.namespaces {
        for name in names.iter().collect::<BTreeSet<_>>() {
            match namespaces.iter().find(|ns| ns.name == name) {
                Some(ns) => check(*ns, &mut selection),
                None => selection.missing.push(name.clone()),
            }
        }
    } else if let Some(label_selector) = &target.namespace_selector {
        let selector = Selector::try_from(label_selector.clone())
            .map_err(|e| TargetError::Selector(e.to_string()))?;
        if reach == Reach::Local
            && let Some(other) = foreign_organisation(label_selector, tenant.organisation)
        {
            selection.not_permitted.push((
                format!("namespaceSelector {}={other}", crds::ORGANISATION_LABEL),
                format!("the selector asks for organisation {other:?}, not the credential's own"),
            ));
            return Ok(selection);
        }
        let mut matching: Vec<_> = namespaces
            .iter()
            .filter(|ns| selector.matches(ns.labels))
            .collect();
        matching.sort_by_key(|ns| ns.name);
        for ns in matching {
            match reach {
                Reach::Remote => check(*ns, &mut selection),
                Reach::Local => match permitted_locally(tenant, *ns) {
                    Ok(()) => {
                        selection.permitted.insert(ns.name.to_owned());
                    }
                    Err(_) if same_organisation(tenant, *ns) => {
                        selection.skipped.push(ns.name.to_owned());
                    }
                    // Another tenant's namespace: never part of this selection.
                    Err(_) => {}
                },
            }
        }
    }
    Ok(selection)
}

fn same_organisation(tenant: Tenant<'_>, ns: NamespaceView<'_>) -> bool {
    tenant.organisation.is_some()
        && ns.labels.get(crds::ORGANISATION_LABEL).map(String::as_str) == tenant.organisation
}

/// The other organisation a selector requires by the organisation label (`matchLabels`, or an
/// `In` expression none of whose values is the tenant's), if any.
fn foreign_organisation(
    selector: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
    ours: Option<&str>,
) -> Option<String> {
    if let Some(value) = selector
        .match_labels
        .as_ref()
        .and_then(|l| l.get(crds::ORGANISATION_LABEL))
        && Some(value.as_str()) != ours
    {
        return Some(value.clone());
    }
    selector
        .match_expressions
        .iter()
        .flatten()
        .filter(|e| e.key == crds::ORGANISATION_LABEL && e.operator == "In")
        .find_map(|e| {
            let values = e.values.clone().unwrap_or_default();
            (!values.iter().any(|v| Some(v.as_str()) == ours))
                .then(|| values.first().cloned().unwrap_or_default())
        })
}

/// Which ServiceAccounts of a namespace get the Secret: `*` means all.
pub fn wants_service_account(target: &SyncTarget, name: &str) -> bool {
    target
        .service_accounts
        .iter()
        .any(|n| n == "*" || n == name)
}

/// The names the operator recorded as added to this ServiceAccount's list.
pub fn added_by_us(sa: &ServiceAccount) -> BTreeSet<String> {
    sa.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ADDED_ANNOTATION))
        .map(|v| {
            v.split(',')
                .filter(|n| !n.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// The ServiceAccount with `secret` in its `imagePullSecrets`, or `None` when it is there
/// already. Other entries stay as they are; `secret` appears once. It is recorded as added by
/// the operator only when the list did not hold it before.
pub fn with_pull_secret(sa: &ServiceAccount, secret: &str) -> Option<ServiceAccount> {
    let list = sa.image_pull_secrets.clone().unwrap_or_default();
    if list.iter().any(|r| r.name == secret) {
        return None;
    }
    let mut next = sa.clone();
    let mut list = list;
    list.push(LocalObjectReference {
        name: secret.to_owned(),
    });
    next.image_pull_secrets = Some(list);
    let mut added = added_by_us(sa);
    added.insert(secret.to_owned());
    set_added(&mut next, &added);
    Some(next)
}

/// The ServiceAccount without `secret` in its `imagePullSecrets`, or `None` when there is
/// nothing of ours to remove. Only an entry the operator recorded as its own is removed.
pub fn without_pull_secret(sa: &ServiceAccount, secret: &str) -> Option<ServiceAccount> {
    let mut added = added_by_us(sa);
    if !added.remove(secret) {
        return None;
    }
    let mut next = sa.clone();
    let list: Vec<LocalObjectReference> = sa
        .image_pull_secrets
        .iter()
        .flatten()
        .filter(|r| r.name != secret)
        .cloned()
        .collect();
    next.image_pull_secrets = (!list.is_empty()).then_some(list);
    set_added(&mut next, &added);
    Some(next)
}

fn set_added(sa: &mut ServiceAccount, added: &BTreeSet<String>) {
    let annotations = sa.metadata.annotations.get_or_insert_with(BTreeMap::new);
    if added.is_empty() {
        annotations.remove(ADDED_ANNOTATION);
    } else {
        let names: Vec<&str> = added.iter().map(String::as_str).collect();
        annotations.insert(ADDED_ANNOTATION.to_owned(), names.join(","));
    }
    if annotations.is_empty() {
        sa.metadata.annotations = None;
    }
}

#[cfg(test)]
mod tests;
