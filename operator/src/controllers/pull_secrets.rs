//! Pull-Secret sync, the writes: copies of a credential's pull Secret in the namespaces its
//! sync targets reach in this cluster, the `imagePullSecrets` of their ServiceAccounts, and
//! the removal of copies that no target wants any more. The decisions are in
//! [`crate::sync`].

use std::collections::{BTreeMap, BTreeSet};

use crds::v1alpha1::{RegistryCredential, SyncTarget, SyncTargetStatus, reasons};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt as _};

use super::Context;
use crate::resolve::Key;
use crate::secrets::{CredentialState, docker_config_json};
use crate::sync::{self, NamespaceView, Reach, Tenant};
use crate::{
    CONTENT_HASH_ANNOTATION, CREDENTIAL_UID_LABEL, FIELD_MANAGER, MANAGED_BY, REGION_LABEL, Result,
};

/// The Secret type of every copy.
const DOCKER_CONFIG_JSON: &str = "kubernetes.io/dockerconfigjson";
/// Annotation naming the credential (`namespace/name`) a Secret was written for.
pub const CREDENTIAL_ANNOTATION: &str = "registry.thalassa.cloud/credential";
/// The cluster name of this cluster in status.
pub const LOCAL: &str = "local";
/// Attempts of a read-merge-write of a ServiceAccount that keeps meeting newer versions.
const SERVICE_ACCOUNT_ATTEMPTS: usize = 5;

/// What syncing a credential came to.
#[derive(Debug, Default)]
pub struct Outcome {
    /// One entry per target.
    pub targets: Vec<SyncTargetStatus>,
    /// A refusal for the `Ready` condition (`NotPermitted`, `SecretConflict`, `InvalidSpec`),
    /// naming the target and the namespace or object.
    pub refused: Option<(&'static str, String)>,
}

/// Syncs every target of `c` with the current secret in `state`, and removes copies no
/// target wants.
pub async fn apply(
    c: &RegistryCredential,
    ctx: &Context,
    state: &CredentialState,
) -> Result<Outcome> {
    // Most credentials have no targets and never had one (their status lists none): nothing
    // to write or remove, and no cache to scan on every reconcile. (The copies of a target
    // removed from the spec are found through the status that listed it, and every copy is
    // removed when the credential is deleted, status or not.)
    if c.spec.sync.is_empty() && c.status.as_ref().is_none_or(|s| s.sync.is_empty()) {
        return Ok(Outcome::default());
    }
    let own_namespace = c.metadata.namespace.clone().unwrap_or_default();
    let organisations = ctx.stores.organisations();
    let tenant = Tenant {
        namespace: &own_namespace,
        organisation: organisations.get(&own_namespace).map(String::as_str),
    };
    let projects: Vec<std::sync::Arc<Namespace>> = ctx
        .stores
        .projects
        .state()
        .into_iter()
        .filter(|ns| ns.metadata.deletion_timestamp.is_none())
        .collect();
    let empty = BTreeMap::new();
    let views = || {
        projects.iter().map(|ns| NamespaceView {
            name: ns.metadata.name.as_deref().unwrap_or_default(),
            labels: ns.metadata.labels.as_ref().unwrap_or(&empty),
        })
    };
    let content = Content::of(c, ctx, state);
    let mut outcome = Outcome::default();
    // Every (namespace, Secret name) some target wants, for the removal of the others.
    let mut wanted: BTreeSet<(String, String)> = BTreeSet::new();
    for target in &c.spec.sync {
        let secret_name = target
            .secret_name
            .clone()
            .unwrap_or_else(|| c.secret_name().to_owned());
        let mut status = SyncTargetStatus {
            cluster: target
                .cluster
                .as_ref()
                .map_or(LOCAL.to_owned(), |r| r.name.clone()),
            secret_name: secret_name.clone(),
            ..SyncTargetStatus::default()
        };
        if let Some(remote) = &target.cluster {
            let namespace = remote
                .kubeconfig_secret
                .namespace
                .as_deref()
                .unwrap_or(&own_namespace);
            if namespace != own_namespace {
                let message = format!(
                    "sync target {:?}: the kubeconfig Secret {namespace}/{} is not in the \
                     credential's namespace {own_namespace:?}; only a kubeconfig of the \
                     credential's own namespace may be used",
                    remote.name, remote.kubeconfig_secret.name
                );
                status.state = "NotPermitted".into();
                status.message = Some(message.clone());
                outcome
                    .refused
                    .get_or_insert((reasons::NOT_PERMITTED, message));
            } else {
                status.state = "Progressing".into();
                status.message = Some(format!(
                    "remote cluster {:?}: remote targets are not synced by this operator \
                     version yet",
                    remote.name
                ));
            }
            outcome.targets.push(status);
            continue;
        }
        let selection = match sync::select(target, tenant, Reach::Local, views()) {
            Ok(selection) => selection,
            Err(e) => {
                let message = format!("sync target {LOCAL:?}: {e}");
                status.state = "Invalid".into();
                status.message = Some(message.clone());
                outcome
                    .refused
                    .get_or_insert((reasons::INVALID_SPEC, message));
                outcome.targets.push(status);
                continue;
            }
        };
        status.namespaces = i32::try_from(selection.permitted.len()).unwrap_or(i32::MAX);
        let mut conflicts = Vec::new();
        for namespace in &selection.permitted {
            wanted.insert((namespace.clone(), secret_name.clone()));
            match write_copy(c, ctx, namespace, &secret_name, &content).await? {
                Written::Ok => {
                    merge_service_accounts(ctx, target, namespace, &secret_name).await?;
                    status.synced += 1;
                }
                Written::Conflict(why) => conflicts.push(why),
            }
        }
        if !selection.not_permitted.is_empty() {
            let (namespace, why) = &selection.not_permitted[0];
            let more = selection.not_permitted.len() - 1;
            let message = format!(
                "sync target {LOCAL:?}: nothing written to namespace {namespace:?}: {why}{}",
                if more > 0 {
                    format!(" (and {more} more namespaces)")
                } else {
                    String::new()
                }
            );
            status.state = "NotPermitted".into();
            status.message = Some(message.clone());
            outcome
                .refused
                .get_or_insert((reasons::NOT_PERMITTED, message));
        } else if let Some(why) = conflicts.first() {
            let message = format!("sync target {LOCAL:?}: {why}");
            status.state = "Conflict".into();
            status.message = Some(message.clone());
            outcome
                .refused
                .get_or_insert((reasons::SECRET_CONFLICT, message));
        } else if !selection.missing.is_empty() {
            status.state = "Progressing".into();
            status.message = Some(format!(
                "namespace {:?} does not exist (yet)",
                selection.missing[0]
            ));
        } else {
            status.state = "Synced".into();
            if let Some(first) = selection.skipped.first() {
                status.message = Some(format!(
                    "{} matching namespaces of the organisation do not accept synced pull \
                     Secrets (label {} = {}), for example {first:?}",
                    selection.skipped.len(),
                    crds::v1alpha1::PULL_SECRETS_LABEL,
                    sync::ACCEPT
                ));
            }
        }
        outcome.targets.push(status);
    }
    remove_unwanted(c, ctx, &wanted).await?;
    Ok(outcome)
}

/// Removes every copy of `c` and every `imagePullSecrets` entry it added (the credential is
/// going away). Its own delivered Secret is left to the credential's cleanup.
pub async fn cleanup(c: &RegistryCredential, ctx: &Context) -> Result<()> {
    remove_unwanted(c, ctx, &BTreeSet::new()).await
}

/// What every copy of a credential's Secret holds, and the hash that says so.
struct Content {
    data: BTreeMap<String, ByteString>,
    hash: String,
}

impl Content {
    fn of(c: &RegistryCredential, ctx: &Context, state: &CredentialState) -> Self {
        let host = &ctx.settings.registry_host;
        let username = c.username();
        let hash = super::credential::content_hash(host, &username, &state.secret);
        let data = BTreeMap::from([(
            ".dockerconfigjson".to_owned(),
            ByteString(docker_config_json(host, &username, &state.secret).into_bytes()),
        )]);
        Self { data, hash }
    }
}

enum Written {
    Ok,
    /// A Secret of that name exists and is not a copy of this credential.
    Conflict(String),
}

/// Whether `secret` is the credential's own delivered Secret (written by the credential
/// controller, with an owner reference).
fn is_delivered(c: &RegistryCredential, namespace: &str, secret: &str) -> bool {
    c.metadata.namespace.as_deref() == Some(namespace) && c.secret_name() == secret
}

fn uid(c: &RegistryCredential) -> &str {
    c.metadata.uid.as_deref().unwrap_or_default()
}

/// Writes the copy in `namespace`, unless it is current already or the name is taken.
async fn write_copy(
    c: &RegistryCredential,
    ctx: &Context,
    namespace: &str,
    name: &str,
    content: &Content,
) -> Result<Written> {
    if is_delivered(c, namespace, name) {
        // The credential's own Secret, written by its controller.
        return Ok(Written::Ok);
    }
    let ours = |s: &Secret| {
        s.labels().get(CREDENTIAL_UID_LABEL).map(String::as_str) == Some(uid(c))
            && s.type_.as_deref() == Some(DOCKER_CONFIG_JSON)
    };
    let cached = ctx
        .stores
        .delivered
        .get(&ObjectRef::new(name).within(namespace));
    if let Some(cached) = &cached
        && ours(cached)
        && cached.annotations().get(CONTENT_HASH_ANNOTATION) == Some(&content.hash)
        && cached.data.as_ref() == Some(&content.data)
    {
        return Ok(Written::Ok);
    }
    let api = Api::<Secret>::namespaced(ctx.client.clone(), namespace);
    if cached.is_none_or(|s| !ours(&s))
        && let Some(existing) = api.get_opt(name).await?
        && !ours(&existing)
    {
        return Ok(Written::Conflict(format!(
            "Secret {namespace}/{name} exists and is not a copy of this credential (type {:?}); \
             the operator does not take it over: delete it or set the target's secretName",
            existing.type_.as_deref().unwrap_or("Opaque")
        )));
    }
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(BTreeMap::from([
                (
                    "app.kubernetes.io/managed-by".to_owned(),
                    MANAGED_BY.to_owned(),
                ),
                (REGION_LABEL.to_owned(), ctx.settings.region.clone()),
                (CREDENTIAL_UID_LABEL.to_owned(), uid(c).to_owned()),
            ])),
            annotations: Some(BTreeMap::from([
                (CONTENT_HASH_ANNOTATION.to_owned(), content.hash.clone()),
                (CREDENTIAL_ANNOTATION.to_owned(), Key::of(c).to_string()),
            ])),
            ..ObjectMeta::default()
        },
        type_: Some(DOCKER_CONFIG_JSON.into()),
        data: Some(content.data.clone()),
        ..Secret::default()
    };
    api.patch(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&secret),
    )
    .await?;
    Ok(Written::Ok)
}

/// Adds `secret` to the `imagePullSecrets` of the ServiceAccounts of `namespace` the target
/// wants, keeping every other entry.
async fn merge_service_accounts(
    ctx: &Context,
    target: &SyncTarget,
    namespace: &str,
    secret: &str,
) -> Result<()> {
    if target.service_accounts.is_empty() {
        return Ok(());
    }
    let accounts: Vec<_> = ctx
        .stores
        .service_accounts
        .state()
        .into_iter()
        .filter(|sa| sa.metadata.namespace.as_deref() == Some(namespace))
        .filter(|sa| sync::wants_service_account(target, &sa.name_any()))
        .collect();
    for sa in accounts {
        if sync::with_pull_secret(&sa, secret).is_some() {
            update_service_account(ctx, namespace, &sa.name_any(), |sa| {
                sync::with_pull_secret(sa, secret)
            })
            .await?;
        }
    }
    Ok(())
}

/// Read, change, write with the `resourceVersion` read; again on a conflict (409).
async fn update_service_account(
    ctx: &Context,
    namespace: &str,
    name: &str,
    change: impl Fn(&ServiceAccount) -> Option<ServiceAccount>,
) -> Result<()> {
    let api = Api::<ServiceAccount>::namespaced(ctx.client.clone(), namespace);
    for attempt in 1..=SERVICE_ACCOUNT_ATTEMPTS {
        let Some(current) = api.get_opt(name).await? else {
            return Ok(());
        };
        let Some(next) = change(&current) else {
            return Ok(());
        };
        // `next` carries the resourceVersion read: a concurrent write makes this a 409.
        match api.replace(name, &PostParams::default(), &next).await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(e)) if e.code == 409 && attempt < SERVICE_ACCOUNT_ATTEMPTS => {
                tracing::debug!(%namespace, %name, "ServiceAccount changed meanwhile; merging again");
            }
            Err(kube::Error::Api(e)) if e.code == 404 => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Deletes the copies of `c` that are not in `wanted`, and takes their entries out of the
/// ServiceAccounts of those namespaces.
async fn remove_unwanted(
    c: &RegistryCredential,
    ctx: &Context,
    wanted: &BTreeSet<(String, String)>,
) -> Result<()> {
    let copies: Vec<(String, String)> = ctx
        .stores
        .delivered
        .state()
        .iter()
        // Copies and the delivered Secret; the credential's state (Opaque, in the operator's
        // namespace) carries the same label and is never one of them.
        .filter(|s| s.labels().get(CREDENTIAL_UID_LABEL).map(String::as_str) == Some(uid(c)))
        .filter(|s| s.type_.as_deref() == Some(DOCKER_CONFIG_JSON))
        .filter_map(|s| Some((s.metadata.namespace.clone()?, s.metadata.name.clone()?)))
        .filter(|(ns, name)| !wanted.contains(&(ns.clone(), name.clone())))
        .collect();
    for (namespace, name) in copies {
        // The credential's own Secret stays (its controller owns it); only the entries a
        // target added for it go.
        let accounts: Vec<_> = ctx
            .stores
            .service_accounts
            .state()
            .into_iter()
            .filter(|sa| sa.metadata.namespace.as_deref() == Some(namespace.as_str()))
            .filter(|sa| sync::added_by_us(sa).contains(&name))
            .collect();
        for sa in accounts {
            update_service_account(ctx, &namespace, &sa.name_any(), |sa| {
                sync::without_pull_secret(sa, &name)
            })
            .await?;
        }
        if is_delivered(c, &namespace, &name) {
            continue;
        }
        let api = Api::<Secret>::namespaced(ctx.client.clone(), &namespace);
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {
                tracing::info!(credential = %Key::of(c), %namespace, secret = %name, "copy removed")
            }
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
