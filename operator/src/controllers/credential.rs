//! The `RegistryCredential` controller: issues and rotates secrets, delivers them into the
//! credential's Secret, reports state, and revokes everything on deletion (finalizer).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::finalizer::{Error as FinalizerError, Event as Finalizer, finalizer};
use kube::runtime::watcher;
use kube::{Api, Resource as _, ResourceExt as _};
use tokio_stream::wrappers::WatchStream;
use tracing::Instrument as _;

use crds::v1alpha1::{RegistryCredential, RegistryCredentialStatus, reasons};

use super::clusters::{ClusterKey, SyncTrigger};
use super::status::{Phase, apply_status, event_on_change, now, ready_reason, same_conditions};
use super::{AWAIT_DOCUMENT_FALLBACK, Context, backoff, pull_secrets, woken_by_document};
use crate::resolve::{self, Key, Verdict};
use crate::secrets::{CredentialState, LEGACY_SECRET, docker_config_json};
use kube::runtime::reflector::ObjectRef;
use sha2::{Digest as _, Sha256};

use crate::{
    CONTENT_HASH_ANNOTATION, CREDENTIAL_FINALIZER, CREDENTIAL_UID_LABEL, DOCKER_CONFIG_JSON, Error,
    FIELD_MANAGER, MANAGED_BY, REGION_LABEL, ROTATE_ANNOTATION, Result,
};

const CONTROLLER: &str = "credential";

/// Name of the state Secret of the credential with this uid.
pub fn state_secret_name(uid: &str) -> String {
    format!("regcred-{uid}")
}

/// Labels of every Secret made for a credential.
fn labels(region: &str, uid: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/managed-by".to_owned(),
            MANAGED_BY.to_owned(),
        ),
        (REGION_LABEL.to_owned(), region.to_owned()),
        (CREDENTIAL_UID_LABEL.to_owned(), uid.to_owned()),
    ])
}

/// Runs the controller until `shutdown`.
pub async fn controller(
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let api = Api::<RegistryCredential>::all(ctx.client.clone());
    let triggers = ctx
        .sync_triggers
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .take()
        .map(tokio_stream::wrappers::UnboundedReceiverStream::new);
    let credentials = ctx.stores.credentials.clone();
    // Changes of the operator's Secrets (a copy deleted or edited by hand is written again),
    // of namespaces (entering or leaving a target) and of ServiceAccounts (to patch), taken
    // from the caches once they hold them.
    let synced = futures::stream::iter(triggers)
        .flatten()
        .flat_map(move |trigger| futures::stream::iter(triggered(&credentials.state(), trigger)));
    Controller::new(api, watcher::Config::default().any_semantic())
        .reconcile_on(synced)
        .reconcile_all_on(WatchStream::new(ctx.decisions.clone()).map(|_| ()))
        .reconcile_on(woken_by_document(&ctx, |ctx| &ctx.awaiting_credentials))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, Arc::clone(&ctx))
        .for_each(|_| futures::future::ready(()))
        .await;
}

/// The credential a Secret of the operator was written for: its owner, or the credential its
/// annotation names (state Secrets and synced copies live outside the credential's
/// namespace, where an owner reference cannot point).
pub fn credential_of(secret: &Secret) -> Option<ObjectRef<RegistryCredential>> {
    if let Some(owner) = secret
        .owner_references()
        .iter()
        .find(|o| o.kind == "RegistryCredential")
    {
        return Some(ObjectRef::new(&owner.name).within(&secret.namespace()?));
    }
    let key = secret
        .annotations()
        .get(pull_secrets::CREDENTIAL_ANNOTATION)?;
    let (namespace, name) = key.split_once('/')?;
    Some(ObjectRef::new(name).within(namespace))
}

/// The credentials a cache change concerns.
fn triggered(
    credentials: &[Arc<RegistryCredential>],
    trigger: SyncTrigger,
) -> Vec<ObjectRef<RegistryCredential>> {
    match trigger {
        SyncTrigger::Credential {
            cluster: None,
            credential,
        } => vec![credential],
        // A copy in a remote cluster names its credential by an annotation anyone with access
        // to that cluster can write: only a credential that syncs there is woken.
        SyncTrigger::Credential {
            cluster: Some(cluster),
            credential,
        } => credentials
            .iter()
            .filter(|c| ObjectRef::from_obj(c.as_ref()) == credential)
            .filter(|c| uses_cluster(c, &cluster))
            .map(|c| ObjectRef::from_obj(c.as_ref()))
            .collect(),
        SyncTrigger::Namespace { cluster, name } => {
            syncing_into(credentials, cluster.as_ref(), &name, None)
        }
        SyncTrigger::ServiceAccount {
            cluster,
            namespace,
            name,
        } => syncing_into(credentials, cluster.as_ref(), &namespace, Some(&name)),
        SyncTrigger::Relisted(None) => credentials
            .iter()
            .filter(|c| !c.spec.sync.is_empty())
            .map(|c| ObjectRef::from_obj(c.as_ref()))
            .collect(),
        SyncTrigger::Relisted(Some(cluster)) => credentials
            .iter()
            .filter(|c| uses_cluster(c, &cluster))
            .map(|c| ObjectRef::from_obj(c.as_ref()))
            .collect(),
    }
}

/// The remote cluster a target writes to; `None` for this cluster.
fn target_cluster(
    c: &RegistryCredential,
    target: &crds::v1alpha1::SyncTarget,
) -> Option<ClusterKey> {
    let remote = target.cluster.as_ref()?;
    Some(ClusterKey::of(
        c.metadata.namespace.as_deref().unwrap_or_default(),
        &remote.kubeconfig_secret,
    ))
}

fn uses_cluster(c: &RegistryCredential, cluster: &ClusterKey) -> bool {
    pull_secrets::remote_clusters(c).contains_key(cluster)
}

/// The credentials with a sync target in `cluster` that may write into `namespace`: every
/// target naming it, and every selector target (whether it still matches is decided by the
/// reconcile; it also removes copies from a namespace that left). With `account`, only
/// targets that patch that ServiceAccount.
fn syncing_into(
    credentials: &[Arc<RegistryCredential>],
    cluster: Option<&ClusterKey>,
    namespace: &str,
    account: Option<&str>,
) -> Vec<ObjectRef<RegistryCredential>> {
    credentials
        .iter()
        .filter(|c| {
            c.spec.sync.iter().any(|t| {
                target_cluster(c, t).as_ref() == cluster
                    && match &t.namespaces {
                        Some(names) => names.iter().any(|n| n == namespace),
                        None => true,
                    }
                    && account.is_none_or(|name| crate::sync::wants_service_account(t, name))
            })
        })
        .map(|c| ObjectRef::from_obj(c.as_ref()))
        .collect()
}

/// Every minute, stops the watches of remote clusters no credential uses any more.
pub async fn forget_unused_clusters(ctx: Arc<Context>) {
    let mut every = tokio::time::interval(Duration::from_secs(60));
    loop {
        every.tick().await;
        let used = ctx
            .stores
            .credentials
            .state()
            .iter()
            .flat_map(|c| pull_secrets::remote_clusters(c).into_keys())
            .collect();
        ctx.remotes.retain(&used).await;
    }
}

async fn reconcile(credential: Arc<RegistryCredential>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    let key = Key::of(credential.as_ref());
    let span = tracing::info_span!("reconcile", kind = "RegistryCredential", object = %key);
    if credential.spec.region != ctx.settings.region {
        // Another region's object: never touched, not even its finalizers or status.
        return Ok(Action::await_change());
    }
    let api = Api::<RegistryCredential>::namespaced(ctx.client.clone(), &key.namespace);
    let result = finalizer(&api, CREDENTIAL_FINALIZER, credential, |event| async {
        match event {
            Finalizer::Apply(c) => apply(&c, &ctx).await,
            Finalizer::Cleanup(c) => cleanup(&c, &ctx).await,
        }
    })
    .instrument(span)
    .await;
    let result = match result {
        // A second cleanup pass on a cached copy of an object already gone: nothing to do.
        Err(FinalizerError::RemoveFinalizer(kube::Error::Api(e))) if e.code == 404 => {
            Ok(Action::await_change())
        }
        other => other.map_err(|e| Error::Finalizer(Box::new(e))),
    };
    ctx.metrics.reconciled(CONTROLLER, started.elapsed());
    result
}

fn error_policy(credential: Arc<RegistryCredential>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.failed(CONTROLLER, error);
    tracing::warn!(object = %Key::of(credential.as_ref()), %error, "reconcile failed");
    if error.is_transient() {
        Action::requeue(backoff(2))
    } else {
        Action::requeue(Duration::from_secs(300))
    }
}

fn uid_str(c: &RegistryCredential) -> &str {
    c.metadata.uid.as_deref().unwrap_or_default()
}

fn owner_reference(c: &RegistryCredential) -> OwnerReference {
    c.controller_owner_ref(&())
        .expect("a stored object has a name and uid")
}

/// Issues what the credential may have, delivers it and reports its state.
async fn apply(c: &RegistryCredential, ctx: &Context) -> Result<Action> {
    if project_terminating(c, ctx) {
        // Its Kubernetes namespace is being deleted, and the credential with it (cleanup
        // follows): nothing can be delivered there any more.
        return Ok(Action::await_change());
    }
    // Waiting before the document is read: a document written from here on wakes it again.
    ctx.awaiting_credentials.wait(c);
    let namespaces = ctx.stores.namespace_index(&ctx.settings);
    let orgs = ctx.stores.organisations();
    let mut sync = Vec::new();
    let verdict = match resolve::credential(&ctx.settings, &orgs, &namespaces, c, Timestamp::now())
    {
        Ok(_) if c.spec.workload_identity.is_some() => Verdict::Served,
        Ok(_) => match provision(c, ctx).await? {
            (Verdict::Served, state) => {
                let outcome = pull_secrets::apply(c, ctx, &state).await?;
                sync = outcome.targets;
                match (outcome.refused, outcome.degraded) {
                    (Some((reason, message)), _) => Verdict::Refused {
                        reason,
                        message,
                        stalled: true,
                    },
                    // Served, but a remote cluster is behind: retried, and woken when it
                    // answers again.
                    (None, Some(message)) => Verdict::Refused {
                        reason: reasons::DEGRADED,
                        message,
                        stalled: false,
                    },
                    (None, None) => Verdict::Served,
                }
            }
            (refused, _) => refused,
        },
        Err(verdict) => verdict,
    };
    let username = c.username();
    let state = ctx
        .stores
        .own_secret(&ctx.settings.namespace, &state_secret_name(uid_str(c)))
        .and_then(|s| CredentialState::from_data("", s.data.as_ref()?).ok());
    let in_document = {
        let published = ctx.published.borrow();
        match (&c.spec.workload_identity, &state) {
            (Some(_), _) => published.credentials.contains_key(&username),
            (None, Some(state)) => published.credentials.get(&username) == Some(&state.secret_hash),
            (None, None) => false,
        }
    };
    let phase = Phase::of(
        verdict,
        in_document,
        format!("served by region {:?}", ctx.settings.region),
    );
    let previous = c.status.clone().unwrap_or_default();
    let generation = c.metadata.generation.unwrap_or_default();
    let secret_based = c.spec.workload_identity.is_none();
    let status = RegistryCredentialStatus {
        conditions: phase.conditions(generation, &previous.conditions, &now()),
        observed_generation: Some(generation),
        username: Some(if secret_based {
            username
        } else {
            "oidc".to_owned()
        }),
        secret_name: (secret_based && state.is_some()).then(|| c.secret_name().to_owned()),
        expires_at: c.spec.expires_at.clone(),
        last_rotated: state.as_ref().map(|s| Time(s.issued_at)),
        previous_expires_at: state.as_ref().and_then(|s| {
            s.previous
                .iter()
                .map(|p| p.expires_at)
                .filter(|at| *at > Timestamp::now())
                .max()
                .map(Time)
        }),
        sync,
    };
    record_expiry(c, ctx, state.as_ref());
    let unchanged = same_conditions(&status.conditions, &previous.conditions)
        && status.observed_generation == previous.observed_generation
        && status.username == previous.username
        && status.secret_name == previous.secret_name
        && status.expires_at == previous.expires_at
        && status.last_rotated == previous.last_rotated
        && status.previous_expires_at == previous.previous_expires_at
        && status.sync == previous.sync;
    if !unchanged {
        let api = Api::<RegistryCredential>::namespaced(
            ctx.client.clone(),
            c.metadata.namespace.as_deref().unwrap_or_default(),
        );
        apply_status(&api, c, &status).await?;
        event_on_change(ctx, c, ready_reason(&previous.conditions), &phase).await;
    }
    ctx.render.notify_one();
    Ok(match phase {
        Phase::Converging(_) => Action::requeue(AWAIT_DOCUMENT_FALLBACK),
        Phase::Refused(Verdict::Refused { reason, .. }) if reason == reasons::DEGRADED => {
            Action::requeue(DEGRADED_RETRY)
        }
        _ => {
            ctx.awaiting_credentials.done(c);
            Action::requeue(next_check(c, state.as_ref()))
        }
    })
}

/// How soon a credential with a remote cluster behind is looked at again (its watches
/// recovering wake it sooner).
const DEGRADED_RETRY: Duration = Duration::from_secs(10);

/// When the current secret stops working: `spec.expiresAt`, or the next rotation, whichever
/// is first.
fn secret_expiry(c: &RegistryCredential, state: &CredentialState) -> Option<Timestamp> {
    let rotation = c
        .spec
        .rotation_period
        .as_deref()
        .and_then(|p| humantime::parse_duration(p).ok())
        .and_then(|p| k8s_openapi::jiff::SignedDuration::try_from(p).ok())
        .and_then(|p| state.issued_at.checked_add(p).ok());
    let expires = c.spec.expires_at.as_ref().map(|t| t.0);
    match (rotation, expires) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Sets the expiry gauge of the credential (removed when its secret never expires).
fn record_expiry(c: &RegistryCredential, ctx: &Context, state: Option<&CredentialState>) {
    let labels = crate::telemetry::CredentialLabels {
        credential: Key::of(c).to_string(),
    };
    match state.and_then(|state| secret_expiry(c, state)) {
        Some(at) => {
            let left = at.duration_since(Timestamp::now()).as_secs();
            ctx.metrics
                .credential_expiry
                .get_or_create(&labels)
                .set(left);
        }
        None => {
            ctx.metrics.credential_expiry.remove(&labels);
        }
    }
}

/// When to look again: the next rotation, or in five minutes.
fn next_check(c: &RegistryCredential, state: Option<&CredentialState>) -> Duration {
    let default = Duration::from_secs(300);
    let (Some(state), Some(period)) = (
        state,
        c.spec
            .rotation_period
            .as_deref()
            .and_then(|p| humantime::parse_duration(p).ok()),
    ) else {
        return default;
    };
    let age = Timestamp::now().duration_since(state.issued_at);
    let left = Duration::try_from(
        k8s_openapi::jiff::SignedDuration::try_from(period).unwrap_or_default() - age,
    )
    .unwrap_or_default();
    left.clamp(Duration::from_secs(1), default)
}

/// Makes sure the state Secret holds a current secret and the credential's Secret
/// delivers it. A Secret of that name that the operator did not make is never touched.
async fn provision(c: &RegistryCredential, ctx: &Context) -> Result<(Verdict, CredentialState)> {
    let ns = c.metadata.namespace.as_deref().unwrap_or_default();
    let own = Api::<Secret>::namespaced(ctx.client.clone(), &ctx.settings.namespace);
    let state_name = state_secret_name(uid_str(c));
    let rotation_request = c.annotations().get(ROTATE_ANNOTATION).cloned();
    let period = c
        .spec
        .rotation_period
        .as_deref()
        .and_then(|p| humantime::parse_duration(p).ok());
    let now = Timestamp::now();

    // The state: from the cache, else from the API (never issue twice from a cache that has
    // not seen the state yet).
    let existing = match ctx.stores.own_secret(&ctx.settings.namespace, &state_name) {
        Some(cached) => Some(cached.as_ref().clone()),
        None => own.get_opt(&state_name).await?,
    };
    let current = match &existing {
        Some(secret) => Some(CredentialState::from_data(
            &state_name,
            secret.data.as_ref().unwrap_or(&BTreeMap::new()),
        )?),
        None => None,
    };
    let legacy = existing
        .as_ref()
        .and_then(|s| s.data.as_ref())
        .is_some_and(|d| d.contains_key(LEGACY_SECRET));
    let overlap = c
        .spec
        .rotation_overlap
        .as_deref()
        .and_then(|o| humantime::parse_duration(o).ok())
        .unwrap_or(crate::secrets::DEFAULT_ROTATION_OVERLAP);
    let rotate = |state: CredentialState, why: &'static str| {
        let request = rotation_request.clone();
        let existing = existing.clone();
        let state_name = state_name.clone();
        let own = own.clone();
        async move {
            let next = off_runtime(ctx, move || state.rotate(now, request, overlap)).await?;
            let mut secret = state_secret(c, ctx, &state_name, &next);
            secret.metadata.resource_version = existing.and_then(|s| s.metadata.resource_version);
            // A conflicting write (409) is retried by the controller with fresh state.
            own.replace(&state_name, &PostParams::default(), &secret)
                .await?;
            tracing::info!(credential = %Key::of(c), why, "secret rotated");
            Ok::<_, Error>(next)
        }
    };
    let state = match current {
        None => {
            let request = rotation_request.clone();
            let state = off_runtime(ctx, move || CredentialState::issue(now, request)).await?;
            let secret = state_secret(c, ctx, &state_name, &state);
            match own.create(&PostParams::default(), &secret).await {
                Ok(_) => state,
                // Another pass created it meanwhile: the controller looks again.
                Err(kube::Error::Api(e)) if e.code == 409 => return Err(kube::Error::Api(e).into()),
                Err(e) => return Err(e.into()),
            }
        }
        Some(state) if state.rotation_due(now, period, rotation_request.as_deref()) => {
            rotate(state, "due").await?
        }
        // The secret itself is only in the credential's Secret: taken from there.
        Some(mut state) => match delivered_secret(c, ctx, ns, &state).await? {
            Delivered::Current(secret) => {
                state.secret = secret;
                if legacy {
                    // Written by an earlier version with the secret itself: written again
                    // without it.
                    let mut secret = state_secret(c, ctx, &state_name, &state);
                    secret.metadata.resource_version =
                        existing.and_then(|s| s.metadata.resource_version);
                    own.replace(&state_name, &PostParams::default(), &secret)
                        .await?;
                }
                state
            }
            Delivered::Legacy if legacy => state,
            Delivered::Foreign => return Ok((secret_conflict(c.secret_name()), state)),
            // Deleted or edited by hand: nobody can recover it, so a new one is issued (the
            // copies still holding the old one work for the overlap).
            Delivered::Lost | Delivered::Legacy => {
                rotate(state, "the credential's Secret lost it").await?
            }
        },
    };
    let verdict = deliver(c, ctx, ns, &state).await?;
    Ok((verdict, state))
}

fn state_secret(
    c: &RegistryCredential,
    ctx: &Context,
    name: &str,
    state: &CredentialState,
) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(ctx.settings.namespace.clone()),
            labels: Some(labels(&ctx.settings.region, uid_str(c))),
            annotations: Some(BTreeMap::from([(
                "registry.thalassa.cloud/credential".to_owned(),
                Key::of(c).to_string(),
            )])),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".into()),
        data: Some(state.to_data()),
        ..Secret::default()
    }
}

/// Writes the credential's Secret (a `kubernetes.io/dockerconfigjson` Secret with
/// `username` and `password` too), unless a Secret of that name belongs to someone else.
async fn deliver(
    c: &RegistryCredential,
    ctx: &Context,
    ns: &str,
    state: &CredentialState,
) -> Result<Verdict> {
    let api = Api::<Secret>::namespaced(ctx.client.clone(), ns);
    let name = c.secret_name();
    const TYPE: &str = DOCKER_CONFIG_JSON;
    let username = c.username();
    let host = &ctx.settings.registry_host;
    let content_hash = content_hash(host, &username, &state.secret);
    let data = BTreeMap::from([
        (
            ".dockerconfigjson".to_owned(),
            ByteString(docker_config_json(host, &username, &state.secret).into_bytes()),
        ),
        ("username".to_owned(), ByteString(username.into_bytes())),
        (
            "password".to_owned(),
            ByteString(state.secret.clone().into_bytes()),
        ),
        ("registry".to_owned(), ByteString(host.clone().into_bytes())),
    ]);
    // Already delivered as it should be (and not edited by hand since): nothing to write.
    let cached = ctx.stores.delivered.get(&ObjectRef::new(name).within(ns));
    if cached.is_some_and(|s| {
        s.owner_references().iter().any(|o| o.uid == uid_str(c))
            && s.annotations().get(CONTENT_HASH_ANNOTATION) == Some(&content_hash)
            && s.data.as_ref() == Some(&data)
    }) {
        return Ok(Verdict::Served);
    }
    if let Some(existing) = api.get_opt(name).await? {
        let ours = existing
            .owner_references()
            .iter()
            .any(|o| o.uid == uid_str(c));
        if !ours || existing.type_.as_deref() != Some(TYPE) {
            return Ok(secret_conflict(name));
        }
    }
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(ns.to_owned()),
            labels: Some(labels(&ctx.settings.region, uid_str(c))),
            annotations: Some(BTreeMap::from([(
                CONTENT_HASH_ANNOTATION.to_owned(),
                content_hash,
            )])),
            owner_references: Some(vec![owner_reference(c)]),
            ..ObjectMeta::default()
        },
        type_: Some(TYPE.into()),
        data: Some(data),
        ..Secret::default()
    };
    match api
        .patch(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&secret),
        )
        .await
    {
        Ok(_) => Ok(Verdict::Served),
        // The namespace began terminating after the cache last saw it: the credential goes
        // with it, so this is not retried.
        Err(kube::Error::Api(e)) if is_namespace_terminating(&e) => Ok(Verdict::Served),
        Err(e) => Err(e.into()),
    }
}

/// The refusal for a Secret of the credential's name that the operator did not create.
fn secret_conflict(name: &str) -> Verdict {
    Verdict::Refused {
        reason: reasons::SECRET_CONFLICT,
        message: format!(
            "Secret {name:?} exists and was not created for this credential; the operator \
             does not take it over: delete it or set spec.secretName"
        ),
        stalled: true,
    }
}

/// What the credential's Secret holds of the current secret.
enum Delivered {
    /// The current secret (its fingerprint matches).
    Current(String),
    /// Not the current secret, or no Secret: the secret is lost.
    Lost,
    /// A Secret of that name the operator did not create.
    Foreign,
    /// Not delivered yet, but the state Secret (of an earlier version) holds the secret.
    Legacy,
}

/// The current secret, from the credential's Secret: the cache when it holds it, else the
/// API (a cache that has not seen the latest write must not make the operator think the
/// secret is lost).
async fn delivered_secret(
    c: &RegistryCredential,
    ctx: &Context,
    ns: &str,
    state: &CredentialState,
) -> Result<Delivered> {
    let name = c.secret_name();
    let ours = |s: &Secret| {
        s.owner_references().iter().any(|o| o.uid == uid_str(c))
            && s.type_.as_deref() == Some(DOCKER_CONFIG_JSON)
    };
    let current = |s: &Secret| {
        let password = s.data.as_ref()?.get("password")?;
        let password = std::str::from_utf8(&password.0).ok()?;
        state.knows(password).then(|| password.to_owned())
    };
    if let Some(cached) = ctx.stores.delivered.get(&ObjectRef::new(name).within(ns))
        && ours(&cached)
        && let Some(secret) = current(&cached)
    {
        return Ok(Delivered::Current(secret));
    }
    let fallback = if state.secret.is_empty() {
        Delivered::Lost
    } else {
        Delivered::Legacy
    };
    Ok(
        match Api::<Secret>::namespaced(ctx.client.clone(), ns)
            .get_opt(name)
            .await?
        {
            Some(secret) if !ours(&secret) => Delivered::Foreign,
            Some(secret) => current(&secret).map_or(fallback, Delivered::Current),
            None => fallback,
        },
    )
}

/// The hash of what a credential's Secret delivers (host, user name, secret), annotated on
/// every Secret written with it: a Secret with the current hash needs no write.
pub fn content_hash(host: &str, username: &str, secret: &str) -> String {
    hex::encode(Sha256::digest(format!("{host}\n{username}\n{secret}")))
}

/// Whether the credential's Kubernetes namespace is being deleted (as the cache sees it).
fn project_terminating(c: &RegistryCredential, ctx: &Context) -> bool {
    let ns = c.metadata.namespace.as_deref().unwrap_or_default();
    ctx.stores
        .projects
        .get(&ObjectRef::new(ns))
        .is_some_and(|p| p.metadata.deletion_timestamp.is_some())
}

/// Whether an API refusal says the namespace is being terminated.
fn is_namespace_terminating(status: &kube::core::Status) -> bool {
    status.code == 403
        && status.details.as_ref().is_some_and(|d| {
            d.causes
                .iter()
                .any(|cause| cause.reason == "NamespaceTerminating")
        })
}

/// Revokes the credential: its state and its Secret go (the renderer drops it from the
/// document as soon as the object is being deleted). Tolerates anything already gone.
async fn cleanup(c: &RegistryCredential, ctx: &Context) -> Result<Action> {
    ctx.render.notify_one();
    pull_secrets::cleanup(c, ctx).await?;
    record_expiry(c, ctx, None);
    let own = Api::<Secret>::namespaced(ctx.client.clone(), &ctx.settings.namespace);
    let ns = c.metadata.namespace.as_deref().unwrap_or_default();
    let delivered = Api::<Secret>::namespaced(ctx.client.clone(), ns);
    if let Some(secret) = delivered.get_opt(c.secret_name()).await?
        && secret
            .owner_references()
            .iter()
            .any(|o| o.uid == uid_str(c))
    {
        ignore_not_found(
            delivered
                .delete(c.secret_name(), &DeleteParams::default())
                .await,
        )?;
    }
    ignore_not_found(
        own.delete(&state_secret_name(uid_str(c)), &DeleteParams::default())
            .await,
    )?;
    Ok(Action::await_change())
}

/// Runs CPU-heavy work (argon2 hashing, ~19 MiB each) on the blocking pool, not on a runtime
/// thread, and at most as many at once as there are cores: a thousand new credentials hash
/// one after the other instead of taking a thread and its memory each.
async fn off_runtime<T: Send + 'static>(
    ctx: &Context,
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let _permit = ctx
        .hashing
        .acquire()
        .await
        .map_err(|e| Error::Crypto(format!("hashing closed: {e}")))?;
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Error::Crypto(format!("hashing task failed: {e}")))?
}

fn ignore_not_found<T>(result: kube::Result<T>) -> Result<()> {
    match result {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}
