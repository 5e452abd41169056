//! Which image manifests Pods run: retention never deletes them (nor an index holding one).
//!
//! The digests come from every container's status (`imageID`, of regular, init and ephemeral
//! containers) and from images the spec pins by digest (a Pod not started yet). A cache of
//! the Pods of each cluster (this one, and every remote sync target), stripped to those
//! fields, keeps its set current; each change of a set is published to the retention
//! controller. A set is unknown until its cache has listed, and again from a watch failure
//! until it has listed anew.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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

/// What the Pods of one cluster run: the digests, or `None` while that is unknown (before
/// the first list, and from a watch failure until the watch has listed again). Retention
/// never runs on an unknown set.
pub type PodImages = Option<Arc<BTreeSet<String>>>;

/// Starts a cache of the Pods of the cluster `client` reaches (named `cluster` in logs and
/// metrics); the receiver holds the digests they run, updated about a second after each
/// change. `on_change` is called after each change of the receiver's value.
pub fn watch_pods(
    client: &Client,
    cluster: &str,
    tasks: &mut JoinSet<()>,
    metrics: &Arc<Metrics>,
    on_change: impl Fn() + Send + Sync + 'static,
) -> watch::Receiver<PodImages> {
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
    let (sender, receiver) = watch::channel(None);
    let sender = Arc::new(sender);
    let on_change = Arc::new(on_change);
    // Whether the cache holds a complete list that no failure has followed since.
    let listed = Arc::new(AtomicBool::new(false));
    {
        let (notify, sender, on_change, listed) = (
            Arc::clone(&changed),
            Arc::clone(&sender),
            Arc::clone(&on_change),
            Arc::clone(&listed),
        );
        let (metrics, cluster) = (Arc::clone(metrics), cluster.to_owned());
        tasks.spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                match event {
                    Ok(watcher::Event::InitDone) => {
                        listed.store(true, Ordering::Release);
                        notify.notify_one();
                    }
                    Ok(_) => notify.notify_one(),
                    Err(error) => {
                        metrics.watch_failed(&cluster, "pods");
                        tracing::warn!(%cluster, %error,
                            "pod watch failed; images in use unknown until it lists again");
                        listed.store(false, Ordering::Release);
                        if sender.send_replace(None).is_some() {
                            on_change();
                        }
                    }
                }
            }
        });
    }
    tasks.spawn(async move {
        loop {
            changed.notified().await;
            tokio::time::sleep(SETTLE).await;
            if !listed.load(Ordering::Acquire) {
                continue;
            }
            let digests: BTreeSet<String> = reader
                .state()
                .iter()
                .flat_map(|pod| pod_digests(pod).collect::<Vec<_>>())
                .collect();
            let modified = sender.send_if_modified(|current| {
                if current.as_deref() == Some(&digests) {
                    false
                } else {
                    *current = Some(Arc::new(digests));
                    true
                }
            });
            if modified {
                on_change();
            }
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
