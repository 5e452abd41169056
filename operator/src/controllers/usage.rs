//! Publishes metered usage: every `usageInterval`, reads every namespace's usage from the data
//! plane (`GET /internal/v1/usage`) and writes it into the `status.usage` (and
//! `status.storedBytes`) of the `RegistryNamespace` serving it, when it changed.
//!
//! Only objects of this region that serve their registry namespace are written; a namespace
//! the data plane has no usage of yet gets zeros once it is served.

use std::sync::Arc;

use crds::usage::{NamespaceUsage, gigabyte_hours};
use crds::v1alpha1::RegistryNamespace;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{Patch, PatchParams};

use super::Context;
use super::retention::active_key;
use crate::resolve::Key;
use crate::{Error, Result};

/// Refreshes usage every interval until `shutdown`.
pub async fn run(ctx: Arc<Context>, shutdown: impl std::future::Future<Output = ()>) {
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        if let Err(error) = publish(&ctx).await {
            tracing::warn!(%error, "refreshing namespace usage failed; trying at the next interval");
        }
        tokio::select! {
            () = &mut shutdown => return,
            () = tokio::time::sleep(ctx.settings.usage_interval.0) => {}
        }
    }
}

/// One refresh.
async fn publish(ctx: &Context) -> Result<()> {
    let Some(key) = active_key(ctx) else {
        return Ok(());
    };
    let token = ctx.dataplane.token(&key, Timestamp::now(), "usage")?;
    let usage = ctx.dataplane.usage(&token).await?;
    let index = ctx.stores.namespace_index(&ctx.settings);
    for ns in ctx.stores.namespaces.state() {
        if ns.spec.region != ctx.settings.region || ns.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let object = Key::of(ns.as_ref());
        let name = ns.registry_name();
        if index.served_name(&object) != Some(name) {
            continue;
        }
        let current = usage
            .namespaces
            .get(name)
            .cloned()
            .unwrap_or(NamespaceUsage {
                gigabyte_hours: gigabyte_hours(0),
                ..NamespaceUsage::default()
            });
        let previous = ns.status.as_ref().and_then(|s| s.usage.as_ref());
        if previous == Some(&current) {
            continue;
        }
        let api = Api::<RegistryNamespace>::namespaced(ctx.client.clone(), &object.namespace);
        let patch = serde_json::json!({
            "status": {
                "usage": current,
                "storedBytes": i64::try_from(current.stored_bytes).unwrap_or(i64::MAX),
            }
        });
        let params = PatchParams {
            field_manager: Some(crate::FIELD_MANAGER.to_owned()),
            ..PatchParams::default()
        };
        match api
            .patch_status(&object.name, &params, &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {}
            // Deleted meanwhile.
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(e) => return Err(Error::from(e)),
        }
    }
    Ok(())
}
