//! Retention end to end on the harness cluster: 30 tags pushed, a `dryRun` policy whose plan
//! is read from the object, an image a Pod runs on the harness node spared with its reason,
//! and a real run that deletes exactly the planned tags while every kept tag still pulls with
//! a real client; the data plane's garbage collection then frees exactly the bytes the plan
//! announced. (Where no node can start, the Pod's status is written as its kubelet would
//! write it, and the test says so.)

mod common;

use std::time::Duration;

use crds::v1alpha1::{RegistryNamespace, RetentionPolicy};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::Api;
use kube::api::{Patch, PatchParams};
use testkit::clients::{Client, pull_image};

use common::{
    Region, basic, cluster, credentials_of, push, ready, running_pod, served, tags, wait_object,
};

const CONVERGE: Duration = Duration::from_secs(30);
/// A run happens at the next minute of the schedule `* * * * *`.
const RUN: Duration = Duration::from_secs(100);

/// `dataplane_gc_freed_bytes_total` of the data plane at `host`.
async fn freed_bytes(http: &reqwest::Client, host: &str) -> u64 {
    let text = http
        .get(format!("http://{host}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix("dataplane_gc_freed_bytes_total "))
        .and_then(|value| value.trim().parse::<f64>().ok())
        .map_or(0, |value| value as u64)
}

/// Waits (up to a minute) until the collector has freed at least `at_least` bytes in all.
async fn wait_for_freed(http: &reqwest::Client, host: &str, at_least: u64) -> u64 {
    for _ in 0..120 {
        let freed = freed_bytes(http, host).await;
        if freed >= at_least {
            // One more interval: a run still going on finishes, and nothing more is freed.
            tokio::time::sleep(Duration::from_secs(3)).await;
            return freed_bytes(http, host).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!(
        "the collector freed {} of {at_least} bytes",
        freed_bytes(http, host).await
    );
}

/// Set (to anything) to take the path a machine without a node takes, on one with a node.
const WITHOUT_NODE: &str = "REGISTRY_E2E_WITHOUT_NODE";

/// The digest of the manifest `reference` names in `repo`, as the registry serves it.
async fn manifest_digest(
    http: &reqwest::Client,
    host: &str,
    repo: &str,
    reference: &str,
    auth: &str,
) -> String {
    let response = http
        .head(format!("http://{host}/v2/{repo}/manifests/{reference}"))
        .header("authorization", auth)
        .header(
            "accept",
            "application/vnd.oci.image.manifest.v1+json, \
             application/vnd.docker.distribution.manifest.v2+json",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "HEAD {repo}:{reference}");
    response.headers()["docker-content-digest"]
        .to_str()
        .unwrap()
        .to_owned()
}

/// Runs `image` in a Pod on the harness node, pulled with a synced copy of a pull-only
/// credential of `registry_namespace` in a second project of the organisation; returns that
/// project once the Pod runs (its status, with the `imageID`, written by the kubelet).
async fn run_on_the_node(
    region: &Region,
    project: &str,
    registry_namespace: &str,
    image: &str,
) -> testkit::cluster::TestNamespace {
    let cluster = cluster();
    let web = region
        .project_with_pull_secret("acme", project, "deploy", &[registry_namespace])
        .await;
    let client = cluster.client().await.unwrap();
    // No arguments: the sandbox image runs until it is stopped.
    cluster
        .apply(&testkit::cluster::pull_pod(
            web.name(),
            "runs-t03",
            image,
            Some("registry-pull"),
            &[],
        ))
        .unwrap();
    let pods = Api::<Pod>::namespaced(client, web.name());
    let started =
        testkit::cluster::wait_for("the Pod to run", Duration::from_secs(120), || async {
            let status = pods.get("runs-t03").await.ok()?.status?;
            let container = status.container_statuses?.into_iter().next()?;
            (container.state?.running.is_some() && !container.image_id.is_empty()).then_some(())
        })
        .await;
    if let Err(e) = started {
        panic!("{e}\n{}", cluster.describe_pods(web.name()));
    }
    web
}

/// The planned tags of a policy's status, with their reasons.
fn planned_tags(policy: &RetentionPolicy) -> Option<Vec<(String, String)>> {
    let plan = policy.status.as_ref()?.plan.as_ref()?;
    Some(
        plan.items
            .iter()
            .filter_map(|i| Some((i.tag.clone()?, format!("{:?}", i.reason))))
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dry_run_plan_spares_a_running_image_and_the_run_deletes_exactly_the_plan() {
    // Collection every 2 s of what stayed unreferenced for 5 s; metering every second, its
    // usage published in the RegistryNamespace's status every second.
    let region = Region::start_with_both_settings(
        &["acme"],
        "usageInterval: 1s\n",
        "gc: {grace: 5s, interval: 2s}\nmetering: {interval: 1s}\n",
    )
    .await;
    let project = region.project(Some("acme")).await;
    let p = project.name();
    region
        .apply(&region.namespace_manifest(p, "shop", ""))
        .unwrap();
    region
        .apply(&region.credential_manifest(p, "ci", "containerRegistry", &["shop"], ""))
        .unwrap();
    let client = cluster().client().await.unwrap();
    let secrets = Api::<Secret>::namespaced(client.clone(), p);
    let ci = wait_object(&secrets, "ci", CONVERGE, |s| Some(credentials_of(s))).await;
    let auth = basic(&ci);
    let http = reqwest::Client::new();
    let repo = "shop/app";
    served(&http, &region.host, &auth).await;

    // The harness node, where a Pod will run t03.
    let node = match std::env::var_os(WITHOUT_NODE) {
        Some(_) => Err(format!("{WITHOUT_NODE} is set")),
        None => tokio::task::block_in_place(|| cluster().add_node()).map_err(|e| e.to_string()),
    };
    if let Err(why) = &node {
        eprintln!(
            "\n*** retention: NO NODE: {why}\n*** The running Pod's status is written as its \
             kubelet would write it; NOT checked: a node pulling and running the spared image.\n"
        );
    }

    // 30 tags, oldest first: t01 .. t30; t03 is the sandbox image, which the node can run.
    let mut digests = Vec::new();
    for i in 1..=30 {
        let tag = format!("t{i:02}");
        let digest = if i == 3 && node.is_ok() {
            let reference = format!("{}/{repo}:{tag}", region.host);
            let pushed = tokio::task::block_in_place(|| {
                testkit::cluster::push_sandbox_image(&reference, Some((&ci.username, &ci.password)))
            })
            .unwrap();
            assert!(pushed.status.success(), "{}", pushed.stderr);
            manifest_digest(&http, &region.host, repo, &tag, &auth).await
        } else {
            push(&http, &region.host, repo, &tag, &auth).await
        };
        digests.push((tag, digest));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A dry-run policy keeping the 5 most recent tags: 25 planned, read from the object.
    let policy = format!(
        "apiVersion: registry.thalassa.cloud/v1alpha1\nkind: RetentionPolicy\n\
         metadata: {{name: keep-five, namespace: {p}}}\n\
         spec:\n  region: {}\n  namespaces: [shop]\n  schedule: '* * * * *'\n  dryRun: true\n  \
         rules:\n    keepLast: [{{tags: '*', count: 5}}]\n",
        region.name
    );
    region.apply(&policy).unwrap();
    let policies = Api::<RetentionPolicy>::namespaced(client.clone(), p);
    let planned = wait_object(&policies, "keep-five", CONVERGE, |rp| {
        let status = rp.status.as_ref()?;
        let (ready, _) = ready(rp, &status.conditions)?;
        (ready == "True" && status.plan.as_ref()?.tags == 25).then(|| status.clone())
    })
    .await;
    let plan = planned.plan.as_ref().unwrap();
    assert_eq!(plan.manifests, 25);
    assert!(plan.bytes > 0);
    assert!(planned.next_run.is_some());
    assert!(planned.last_run.is_none(), "a dry run deletes nothing");
    let yaml = cluster()
        .kubectl_ok(["get", "retentionpolicy", "-n", p, "keep-five", "-o", "yaml"])
        .unwrap();
    assert!(yaml.contains("reason: BeyondKeepLast"), "{yaml}");
    assert!(yaml.contains("tag: t01"), "{yaml}");
    assert_eq!(tags(&http, &region.host, repo, &auth).await.len(), 30);

    // A Pod runs t03: on the node, pulled by tag with a synced pull Secret; without a node,
    // its status as a kubelet reports it (the Pod stays unscheduled and nothing else writes
    // its container statuses).
    let (_, t03) = &digests[2];
    let t03_reference = format!("{}/{repo}:t03", region.host);
    let web = match &node {
        Ok(_) => Some(run_on_the_node(&region, p, "shop", &t03_reference).await),
        Err(_) => {
            let pods = Api::<Pod>::namespaced(client.clone(), p);
            let image_id = format!("{}/{repo}@{t03}", region.host);
            running_pod(&pods, "runs-t03", &t03_reference, &image_id).await;
            None
        }
    };
    let spared = wait_object(&policies, "keep-five", CONVERGE, |rp| {
        let plan = rp.status.as_ref()?.plan.as_ref()?;
        (plan.tags == 24).then(|| plan.clone())
    })
    .await;
    assert_eq!(spared.spared.len(), 1, "{spared:?}");
    assert_eq!(format!("{:?}", spared.spared[0].reason), "InUse");
    assert_eq!(spared.spared[0].count, 1);
    let policy_now = policies.get("keep-five").await.unwrap();
    let still_planned = planned_tags(&policy_now).unwrap();
    assert!(
        !still_planned.iter().any(|(t, _)| t == "t03"),
        "{still_planned:?}"
    );
    let message = &policy_now.status.as_ref().unwrap().conditions[0].message;
    assert!(message.contains("InUse"), "{message}");

    // Usage as metered, in the RegistryNamespace's status: 30 images pushed, pulled nothing.
    let namespaces = Api::<RegistryNamespace>::namespaced(client.clone(), p);
    let before = wait_object(&namespaces, "shop", CONVERGE, |ns| {
        let usage = ns.status.as_ref()?.usage.clone()?;
        (usage.stored_bytes > 0 && usage.pushed_bytes >= usage.stored_bytes).then_some(usage)
    })
    .await;

    // The real run: exactly the planned tags go, at the next minute.
    let freed_before = freed_bytes(&http, &region.host).await;
    policies
        .patch(
            "keep-five",
            &PatchParams::default(),
            &Patch::Merge(&serde_json::json!({"spec": {"dryRun": false}})),
        )
        .await
        .unwrap();
    let ran = wait_object(&policies, "keep-five", RUN, |rp| {
        rp.status.as_ref()?.last_run.clone()
    })
    .await;
    assert_eq!((ran.deleted.tags, ran.deleted.manifests), (24, 24));
    let kept = tags(&http, &region.host, repo, &auth).await;
    assert_eq!(kept, ["t03", "t26", "t27", "t28", "t29", "t30"]);

    // Every kept tag pulls with a real client; a deleted one does not.
    for tag in &kept {
        let reference = format!("{}/{repo}:{tag}", region.host);
        let pulled = pull_image(Client::Crane, &reference, Some(&ci)).unwrap();
        let expected = &digests.iter().find(|(t, _)| t == tag).unwrap().1;
        assert_eq!(pulled.digest_or_error(&reference).unwrap(), *expected);
    }
    let gone = pull_image(
        Client::Crane,
        &format!("{}/{repo}:t01", region.host),
        Some(&ci),
    )
    .unwrap();
    assert!(!gone.succeeded());

    // After the grace period the collector frees the deleted images' own blobs (layer,
    // config, manifest): exactly the bytes the plan announced; shared and kept blobs stay.
    let freed = wait_for_freed(&http, &region.host, freed_before + spared.bytes).await;
    assert_eq!(freed - freed_before, spared.bytes);
    let blob_status = |tag: &str| {
        let (http, host, auth) = (&http, &region.host, &auth);
        let digest = testkit::clients::sha256_digest(format!("layer of {tag}").as_bytes());
        async move {
            http.head(format!("http://{host}/v2/{repo}/blobs/{digest}"))
                .header("authorization", auth)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(blob_status("t01").await, 404, "a deleted tag's own layer");
    assert_eq!(blob_status("t30").await, 200, "a kept tag's layer");
    // The spared image still pulls, every blob of it, after the collection.
    let pulled = pull_image(Client::Crane, &t03_reference, Some(&ci)).unwrap();
    assert_eq!(pulled.digest_or_error(&t03_reference).unwrap(), *t03);

    // The status follows: stored bytes drop by exactly what was freed; crane's pulls counted.
    let after = wait_object(&namespaces, "shop", CONVERGE, |ns| {
        let usage = ns.status.as_ref()?.usage.clone()?;
        (usage.stored_bytes == before.stored_bytes - spared.bytes && usage.pulled_bytes > 0)
            .then_some(usage)
    })
    .await;
    assert!(after.pushed_bytes >= before.pushed_bytes);
    assert!(after.sampled_at.is_some());
    if let Some(web) = web {
        web.cleanup().await.unwrap();
    }
    project.cleanup().await.unwrap();
}
