//! Which image manifests Pods run: retention never deletes them (nor an index holding one).
//!
//! The digests come from every container's status (`imageID`, of regular, init and ephemeral
//! containers) and from images the spec pins by digest (a Pod not started yet). A cache of
//! this cluster's Pods, stripped to those fields, keeps the set current; each change of the
//! set is published to the retention controller.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod, PodSpec, PodStatus};
use kube::runtime::{WatchStreamExt as _, reflector, watcher};
use kube::{Api, Client};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;

use crate::telemetry::Metrics;

/// Time to let a burst of Pod changes settle before the set is recomputed.
const SETTLE: Duration = Duration::from_secs(1);

/// The digest of an image reference or `imageID` (`host/repo@sha256:<hex>`,
/// `docker-pullable://...@sha256:<hex>`), when it names one.
pub fn digest_of(reference: &str) -> Option<String> {
    let (_, digest) = reference.rsplit_once('@')?;
    let (algorithm, hex) = digest.split_once(':')?;
    let length = match algorithm {
        "sha256" => 64,
        "sha512" => 128,
        _ => return None,
    };
    (hex.len() == length && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| format!("{algorithm}:{}", hex.to_ascii_lowercase()))
}

/// The manifest digests a Pod runs or is about to run.
pub fn pod_digests(pod: &Pod) -> impl Iterator<Item = String> + '_ {
    let statuses = pod.status.iter().flat_map(|s: &PodStatus| {
        [
            s.container_statuses.as_deref(),
            s.init_container_statuses.as_deref(),
            s.ephemeral_container_statuses.as_deref(),
        ]
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|c: &ContainerStatus| [c.image_id.as_str(), c.image.as_str()])
    });
    let pinned = pod.spec.iter().flat_map(|s: &PodSpec| {
        let regular = s.containers.iter().filter_map(|c| c.image.as_deref());
        let init = s
            .init_containers
            .iter()
            .flatten()
            .filter_map(|c| c.image.as_deref());
        let ephemeral = s
            .ephemeral_containers
            .iter()
            .flatten()
            .filter_map(|c| c.image.as_deref());
        regular.chain(init).chain(ephemeral)
    });
    statuses.chain(pinned).filter_map(digest_of)
}

/// Keeps only what [`pod_digests`] reads, so the cache holds little per Pod.
fn strip(pod: &mut Pod) {
    pod.metadata.managed_fields = None;
    pod.metadata.annotations = None;
    pod.metadata.labels = None;
    pod.metadata.owner_references = None;
    if let Some(spec) = &mut pod.spec {
        let slim = |c: &mut k8s_openapi::api::core::v1::Container| {
            *c = k8s_openapi::api::core::v1::Container {
                name: std::mem::take(&mut c.name),
                image: c.image.take(),
                ..Default::default()
            };
        };
        spec.containers.iter_mut().for_each(slim);
        spec.init_containers.iter_mut().flatten().for_each(slim);
        spec.volumes = None;
        spec.affinity = None;
        spec.tolerations = None;
    }
    if let Some(status) = &mut pod.status {
        status.conditions = None;
    }
}

/// Starts a cache of this cluster's Pods; the receiver holds the digests they run, updated
/// about a second after each change.
pub fn watch_pods(
    client: &Client,
    tasks: &mut JoinSet<()>,
    metrics: &Arc<Metrics>,
) -> watch::Receiver<Arc<BTreeSet<String>>> {
    let (reader, writer) = reflector::store();
    let changed = Arc::new(Notify::new());
    let stream = reflector::reflector(
        writer,
        watcher(
            Api::<Pod>::all(client.clone()),
            watcher::Config::default().any_semantic(),
        )
        .default_backoff()
        .modify(strip),
    );
    let (sender, receiver) = watch::channel(Arc::new(BTreeSet::new()));
    let notify = Arc::clone(&changed);
    let metrics = Arc::clone(metrics);
    tasks.spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(_) => notify.notify_one(),
                Err(error) => {
                    metrics.watch_failed(super::clusters::LOCAL, "pods");
                    tracing::warn!(%error, "pod watch failed; restarting");
                }
            }
        }
    });
    tasks.spawn(async move {
        loop {
            changed.notified().await;
            tokio::time::sleep(SETTLE).await;
            let digests: BTreeSet<String> = reader
                .state()
                .iter()
                .flat_map(|pod| pod_digests(pod).collect::<Vec<_>>())
                .collect();
            sender.send_if_modified(|current| {
                if **current == digests {
                    false
                } else {
                    *current = Arc::new(digests);
                    true
                }
            });
        }
    });
    receiver
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn digests_are_read_from_references_and_image_ids() {
        for (reference, expected) in [
            (format!("registry.example/acme/app@sha256:{HEX}"), true),
            (
                format!("docker-pullable://registry.example/acme/app@sha256:{HEX}"),
                true,
            ),
            (
                format!("registry.example:5000/acme/app:v1@sha256:{HEX}"),
                true,
            ),
            (
                format!("registry.example/acme/app@sha256:{}", HEX.to_uppercase()),
                true,
            ),
            ("registry.example/acme/app:v1".to_owned(), false),
            (format!("sha256:{HEX}"), false),
            ("app@sha256:short".to_owned(), false),
            (format!("app@md5:{HEX}"), false),
        ] {
            let got = digest_of(&reference);
            assert_eq!(got.is_some(), expected, "{reference}");
            if let Some(d) = got {
                assert_eq!(d, format!("sha256:{HEX}"));
            }
        }
    }

    #[test]
    fn every_kind_of_container_counts() {
        let digest = |n: u8| format!("sha256:{}", format!("{n:02x}").repeat(32));
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "n"},
            "spec": {
                "containers": [{"name": "pinned", "image": format!("r.example/a@{}", digest(1))},
                               {"name": "by-tag", "image": "r.example/a:v1"}],
                "initContainers": [{"name": "i", "image": "r.example/init:v1"}]
            },
            "status": {
                "containerStatuses": [{"name": "by-tag", "image": "r.example/a:v1",
                    "imageID": format!("r.example/a@{}", digest(2)),
                    "ready": true, "restartCount": 0}],
                "initContainerStatuses": [{"name": "i", "image": "r.example/init:v1",
                    "imageID": format!("r.example/init@{}", digest(3)),
                    "ready": true, "restartCount": 0}],
                "ephemeralContainerStatuses": [{"name": "debug", "image": "r.example/dbg:v1",
                    "imageID": format!("docker-pullable://r.example/dbg@{}", digest(4)),
                    "ready": false, "restartCount": 0}]
            }
        }))
        .unwrap();
        let mut stripped = pod.clone();
        strip(&mut stripped);
        for pod in [pod, stripped] {
            let found: BTreeSet<String> = pod_digests(&pod).collect();
            let expected: BTreeSet<String> = (1..=4).map(digest).collect();
            assert_eq!(found, expected);
        }
    }
}
