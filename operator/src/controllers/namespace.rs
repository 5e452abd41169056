//! The `RegistryNamespace` controller: reports each own-region object's state. What is
//! served is decided by [`crate::resolve`] and written by the renderer; there is nothing to
//! clean up outside the object (its images stay in storage), so no finalizer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use kube::Api;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use tokio_stream::wrappers::WatchStream;
use tracing::Instrument as _;

use crds::v1alpha1::{RegistryNamespace, RegistryNamespaceStatus};

use super::status::{Phase, apply_status, event_on_change, now, ready_reason, same_conditions};
use super::{AWAIT_DOCUMENT_FALLBACK, Context, backoff, woken_by_document};
use crate::resolve::Key;
use crate::{Error, Result};

const CONTROLLER: &str = "namespace";

/// Runs the controller until `shutdown`.
pub async fn controller(
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let api = Api::<RegistryNamespace>::all(ctx.client.clone());
    Controller::new(api, watcher::Config::default().any_semantic())
        .reconcile_all_on(WatchStream::new(ctx.decisions.clone()).map(|_| ()))
        .reconcile_on(woken_by_document(&ctx, |ctx| &ctx.awaiting_namespaces))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, Arc::clone(&ctx))
        .for_each(|_| futures::future::ready(()))
        .await;
}

async fn reconcile(ns: Arc<RegistryNamespace>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    let key = Key::of(ns.as_ref());
    let span = tracing::info_span!("reconcile", kind = "RegistryNamespace", object = %key);
    if ns.spec.region != ctx.settings.region {
        // Another region's object: never touched, not even its status.
        return Ok(Action::await_change());
    }
    if ns.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let result = apply(&ns, &ctx).instrument(span).await;
    ctx.metrics.reconciled(CONTROLLER, started.elapsed());
    result
}

fn error_policy(ns: Arc<RegistryNamespace>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.failed(CONTROLLER, error);
    tracing::warn!(object = %Key::of(ns.as_ref()), %error, "reconcile failed");
    if error.is_transient() {
        Action::requeue(backoff(1))
    } else {
        Action::requeue(Duration::from_secs(300))
    }
}

/// Writes the conditions that the current decisions and the last document imply.
async fn apply(ns: &RegistryNamespace, ctx: &Context) -> Result<Action> {
    let key = Key::of(ns);
    let index = ctx.stores.namespace_index(&ctx.settings);
    let Some(verdict) = index.verdict(&key).cloned() else {
        // The shared cache has not seen this object yet (the controller's own watch was
        // faster): look again shortly.
        return Ok(Action::requeue(Duration::from_millis(200)));
    };
    let name = ns.registry_name().to_owned();
    // Waiting before the document is read: a document written from here on wakes it again.
    ctx.awaiting_namespaces.wait(ns);
    let in_document = ctx.published.borrow().namespaces.contains(&name)
        && index.served_name(&key) == Some(name.as_str());
    let phase = Phase::of(
        verdict,
        in_document,
        format!("served by region {:?}", ctx.settings.region),
    );
    let previous = ns.status.clone().unwrap_or_default();
    let generation = ns.metadata.generation.unwrap_or_default();
    let status = RegistryNamespaceStatus {
        conditions: phase.conditions(generation, &previous.conditions, &now()),
        observed_generation: Some(generation),
        namespace: Some(name.clone()),
        endpoint: matches!(phase, Phase::Ready(_))
            .then(|| format!("{}/{name}", ctx.settings.registry_host)),
        repository_count: previous.repository_count,
        stored_bytes: previous.stored_bytes,
        usage: previous.usage.clone(),
    };
    let unchanged = same_conditions(&status.conditions, &previous.conditions)
        && status.observed_generation == previous.observed_generation
        && status.namespace == previous.namespace
        && status.endpoint == previous.endpoint;
    if !unchanged {
        let api = Api::<RegistryNamespace>::namespaced(ctx.client.clone(), &key.namespace);
        apply_status(&api, ns, &status).await?;
        event_on_change(ctx, ns, ready_reason(&previous.conditions), &phase).await;
    }
    Ok(match phase {
        Phase::Converging(_) => Action::requeue(AWAIT_DOCUMENT_FALLBACK),
        _ => {
            ctx.awaiting_namespaces.done(ns);
            Action::requeue(Duration::from_secs(300))
        }
    })
}
