//! Pull-Secret sync into remote clusters: two more harness clusters, reached through
//! kubeconfig Secrets in the credential's namespace. A selector target reaches the matching
//! namespaces of all three clusters; namespaces and ServiceAccounts created later are served
//! within seconds; a rotation reaches every cluster that answers while a stopped one makes
//! the credential `Degraded`, and it catches up once it is back; a deleted credential's
//! copies are removed everywhere, and a cluster gone for good is given up after the timeout,
//! with an Event. A kubeconfig of another namespace, or one that would make the operator read
//! its own files, is refused and nothing is written through it; one that points nowhere is
//! `Degraded` until the Secret is fixed, which alone brings the copies.

mod common;

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crds::v1alpha1::{RegistryCredential, RetentionPolicy};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Event, Namespace, Pod, Secret, ServiceAccount};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt as _};
use testkit::clients::{Client, push_image, unique_repo_in};
use testkit::cluster::Cluster;

use common::{
    Region, basic, cluster, create_service_account, credentials_of, image_pull_secrets, push,
    running_pod, served, skopeo_inspect, tags, wait_object,
};

const CONVERGE: Duration = Duration::from_secs(30);
/// A run happens at the next minute of the schedule `* * * * *`.
const RUN: Duration = Duration::from_secs(100);
/// How soon a namespace or ServiceAccount created later must have the Secret.
const PROMPT: Duration = Duration::from_secs(5);
const PULL_SECRETS: &str = "registry.thalassa.cloud/pull-secrets";
const ADDED: &str = "registry.thalassa.cloud/image-pull-secrets";

/// The two remote clusters of this test binary, started together on first use.
fn remotes() -> &'static (Cluster, Cluster) {
    static REMOTES: OnceLock<(Cluster, Cluster)> = OnceLock::new();
    REMOTES.get_or_init(|| {
        let a = std::thread::spawn(|| Cluster::start("remote-a").expect("remote cluster a"));
        let b = Cluster::start("remote-b").expect("remote cluster b");
        (a.join().unwrap(), b)
    })
}

/// A namespace named `<prefix>-<n>` in `cluster` with `labels`.
async fn namespace_in(cluster: &Cluster, prefix: &str, labels: serde_json::Value) -> String {
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let name = format!(
        "{prefix}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let ns: Namespace = serde_json::from_value(serde_json::json!({
        "metadata": { "name": name, "labels": labels }
    }))
    .unwrap();
    Api::<Namespace>::all(cluster.client().await.unwrap())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    name
}

async fn kubeconfig_secret(project: &str, name: &str, kubeconfig: &str) {
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "metadata": { "name": name },
        "stringData": { "kubeconfig": kubeconfig },
    }))
    .unwrap();
    Api::<Secret>::namespaced(cluster().client().await.unwrap(), project)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
}

/// The copy `registry-pull` in the namespace of `api`, once it is there.
async fn copy_in(api: &Api<Secret>) -> Secret {
    wait_object(api, "registry-pull", CONVERGE, |s| Some(s.clone())).await
}

/// The `spec.sync` lines of one target in cluster `a`, through the kubeconfig Secret
/// `kubeconfig` (the fields of `kubeconfigSecret`), writing `secret_name` into `namespace`.
fn remote_target(kubeconfig: &str, namespace: &str, secret_name: &str) -> String {
    format!(
        "  sync:\n  - cluster: {{name: a, kubeconfigSecret: {{{kubeconfig}}}}}\n    \
         namespaces: [{namespace}]\n    secretName: {secret_name}\n"
    )
}

fn dockerconfig(secret: &Secret) -> ByteString {
    secret.data.as_ref().unwrap()[".dockerconfigjson"].clone()
}

/// Polls skopeo with `config` until it succeeds (or fails, with `expect_ok` false).
async fn pulls(config: &ByteString, reference: &str, expect_ok: bool) -> String {
    let deadline = Instant::now() + CONVERGE;
    loop {
        let out = skopeo_inspect(&config.0, reference);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if out.status.success() == expect_ok {
            return stderr;
        }
        assert!(
            Instant::now() < deadline,
            "skopeo {} with this auth file: {stderr}",
            if expect_ok {
                "never succeeded"
            } else {
                "kept succeeding"
            }
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The credential's `Ready` status/reason and message, once it satisfies `want`.
async fn wait_ready(project: &str, name: &str, want: impl Fn(&str, &str) -> bool) -> String {
    let api = Api::<RegistryCredential>::namespaced(cluster().client().await.unwrap(), project);
    wait_object(&api, name, CONVERGE, |c| {
        let status = c.status.as_ref()?;
        let (s, reason) = common::ready(c, &status.conditions)?;
        let message = status
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .map(|c| c.message.clone())
            .unwrap_or_default();
        want(&format!("{s}/{reason}"), &message).then_some(message)
    })
    .await
}

async fn metric(region: &Region, prefix: &str) -> f64 {
    let port = region.operator.as_ref().unwrap().metrics;
    let body = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    body.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn remote_targets_sync_rotate_degrade_and_are_given_up() {
    let (a, b) = remotes();
    let region = Region::start_with_settings(&["acme"], "remoteGiveUp: 3s\n").await;
    let project = region.project(Some("acme")).await;
    let p = project.name();
    let local_web = region.project(Some("acme")).await;
    let client = cluster().client().await.unwrap();
    Api::<Namespace>::all(client.clone())
        .patch(
            local_web.name(),
            &PatchParams::default(),
            &Patch::Merge(&serde_json::json!({
                "metadata": {"labels": {PULL_SECRETS: "accept", "team": "web"}}
            })),
        )
        .await
        .unwrap();
    let web = serde_json::json!({ "team": "web" });
    let a_web = namespace_in(a, "web", web.clone()).await;
    let a_other = namespace_in(a, "other", serde_json::json!({ "team": "data" })).await;
    let b_web = namespace_in(b, "web", web.clone()).await;
    // Another team's ServiceAccount in a, with its own pull secret.
    let a_accounts = |ns: &str| {
        let ns = ns.to_owned();
        async move { Api::<ServiceAccount>::namespaced(a.client().await.unwrap(), &ns) }
    };
    create_service_account(
        a.client().await.unwrap(),
        &a_web,
        "builder",
        &["other-team"],
    )
    .await;
    kubeconfig_secret(p, "cluster-a", &a.embedded_kubeconfig().unwrap()).await;
    kubeconfig_secret(p, "cluster-b", &b.embedded_kubeconfig().unwrap()).await;

    region
        .apply(&region.namespace_manifest(p, "apps", ""))
        .unwrap();
    region
        .apply(&region.credential_manifest(p, "ci", "containerRegistry", &["apps"], ""))
        .unwrap();
    let targets = "  rotationOverlap: 20s\n  sync:\n\
        \x20 - namespaceSelector: {matchLabels: {team: web}}\n    secretName: registry-pull\n\
        \x20 - cluster: {name: a, kubeconfigSecret: {name: cluster-a}}\n    namespaceSelector: {matchLabels: {team: web}}\n    secretName: registry-pull\n    serviceAccounts: ['*']\n\
        \x20 - cluster: {name: b, kubeconfigSecret: {name: cluster-b}}\n    namespaceSelector: {matchLabels: {team: web}}\n    secretName: registry-pull\n";
    region
        .apply(&region.credential_manifest(
            p,
            "deploy",
            "containerRegistry:pull",
            &["apps"],
            targets,
        ))
        .unwrap();
    wait_ready(p, "deploy", |s, _| s == "True/Ready").await;

    let secrets_in = |c: &'static Cluster, ns: String| async move {
        Api::<Secret>::namespaced(c.client().await.unwrap(), &ns)
    };
    let local_copy = copy_in(&Api::namespaced(client.clone(), local_web.name())).await;
    let a_copy = copy_in(&secrets_in(a, a_web.clone()).await).await;
    let b_copy = copy_in(&secrets_in(b, b_web.clone()).await).await;
    assert_eq!(
        a_copy.type_.as_deref(),
        Some("kubernetes.io/dockerconfigjson")
    );
    assert_eq!(dockerconfig(&a_copy), dockerconfig(&local_copy));
    assert_eq!(dockerconfig(&b_copy), dockerconfig(&local_copy));
    assert!(
        secrets_in(a, a_other.clone())
            .await
            .get_opt("registry-pull")
            .await
            .unwrap()
            .is_none(),
        "a namespace the selector does not match got a copy"
    );
    let status = Api::<RegistryCredential>::namespaced(client.clone(), p)
        .get("deploy")
        .await
        .unwrap()
        .status
        .unwrap();
    let states: Vec<(String, String, i32)> = status
        .sync
        .iter()
        .map(|t| (t.cluster.clone(), t.state.clone(), t.synced))
        .collect();
    assert_eq!(
        states,
        [
            ("local".to_owned(), "Synced".to_owned(), 1),
            ("a".to_owned(), "Synced".to_owned(), 1),
            ("b".to_owned(), "Synced".to_owned(), 1)
        ]
    );
    // The other team's entry stays; ours is added once and recorded.
    let sa = wait_object(&a_accounts(&a_web).await, "builder", CONVERGE, |sa| {
        (image_pull_secrets(sa) == ["other-team", "registry-pull"]).then(|| sa.clone())
    })
    .await;
    assert_eq!(
        sa.annotations().get(ADDED).map(String::as_str),
        Some("registry-pull")
    );

    // The copy from the remote cluster pulls.
    let ci = wait_object(
        &Api::<Secret>::namespaced(client.clone(), p),
        "ci",
        CONVERGE,
        |s| Some(credentials_of(s)),
    )
    .await;
    let reference = format!("{}/{}:v1", region.host, unique_repo_in("apps", "remote"));
    let deadline = Instant::now() + CONVERGE;
    while !push_image(Client::Crane, &reference, Some(&ci))
        .unwrap()
        .succeeded()
    {
        assert!(Instant::now() < deadline, "ci could not push");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    pulls(&dockerconfig(&a_copy), &reference, true).await;

    // Created later in a remote cluster: a namespace gets its copy, a ServiceAccount its entry,
    // within seconds.
    let a_late = namespace_in(a, "late", web.clone()).await;
    wait_object(
        &secrets_in(a, a_late.clone()).await,
        "registry-pull",
        PROMPT,
        |_| Some(()),
    )
    .await;
    create_service_account(a.client().await.unwrap(), &a_web, "late", &["their-own"]).await;
    wait_object(&a_accounts(&a_web).await, "late", PROMPT, |sa| {
        (image_pull_secrets(sa) == ["their-own", "registry-pull"]).then_some(())
    })
    .await;
    // Deleted by hand in the remote cluster: restored.
    secrets_in(a, a_web.clone())
        .await
        .delete("registry-pull", &DeleteParams::default())
        .await
        .unwrap();
    wait_object(
        &secrets_in(a, a_web.clone()).await,
        "registry-pull",
        PROMPT,
        |s| s.metadata.deletion_timestamp.is_none().then_some(()),
    )
    .await;

    // Stable: with nothing changing, nothing is written again in the remote cluster.
    let copy_before = secrets_in(a, a_web.clone())
        .await
        .get("registry-pull")
        .await
        .unwrap();
    let sa_before = a_accounts(&a_web).await.get("builder").await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let copy_after = secrets_in(a, a_web.clone())
        .await
        .get("registry-pull")
        .await
        .unwrap();
    let sa_after = a_accounts(&a_web).await.get("builder").await.unwrap();
    assert_eq!(
        copy_before.metadata.resource_version,
        copy_after.metadata.resource_version
    );
    assert_eq!(
        sa_before.metadata.resource_version,
        sa_after.metadata.resource_version
    );

    // Cluster b stops answering, then the secret is rotated: local and a get the new secret,
    // the credential is Degraded naming b, and both secrets pull during the overlap.
    let failures_before = metric(&region, "registry_operator_watch_failures_total{cluster=").await;
    b.stop_apiserver().unwrap();
    let old = dockerconfig(&local_copy);
    Api::<RegistryCredential>::namespaced(client.clone(), p)
        .patch(
            "deploy",
            &PatchParams::default(),
            &Patch::Merge(&serde_json::json!({
                "metadata": {"annotations": {"registry.thalassa.cloud/rotate": "1"}}
            })),
        )
        .await
        .unwrap();
    let new_local = wait_object(
        &Api::<Secret>::namespaced(client.clone(), local_web.name()),
        "registry-pull",
        CONVERGE,
        |s| (dockerconfig(s) != old).then(|| dockerconfig(s)),
    )
    .await;
    wait_object(
        &secrets_in(a, a_web.clone()).await,
        "registry-pull",
        CONVERGE,
        |s| (dockerconfig(s) == new_local).then_some(()),
    )
    .await;
    let message = wait_ready(p, "deploy", |s, _| s == "False/Degraded").await;
    assert!(message.contains("\"b\""), "{message}");
    pulls(&new_local, &reference, true).await;
    pulls(&old, &reference, true).await;
    let status = Api::<RegistryCredential>::namespaced(client.clone(), p)
        .get("deploy")
        .await
        .unwrap()
        .status
        .unwrap();
    assert!(status.previous_expires_at.is_some(), "{status:?}");
    let b_state = status.sync.iter().find(|t| t.cluster == "b").unwrap();
    assert_eq!(b_state.state, "Unreachable", "{b_state:?}");
    assert!(
        metric(&region, "registry_operator_watch_failures_total{cluster=").await > failures_before,
        "the failed watches of b are counted"
    );

    // b answers again and catches up; then the old secret stops working after the overlap.
    b.start_apiserver().unwrap();
    wait_object(
        &secrets_in(b, b_web.clone()).await,
        "registry-pull",
        Duration::from_secs(60),
        |s| (dockerconfig(s) == new_local).then_some(()),
    )
    .await;
    wait_ready(p, "deploy", |s, _| s == "True/Ready").await;
    let overlap_end = status.previous_expires_at.unwrap().0;
    let left = overlap_end.duration_since(k8s_openapi::jiff::Timestamp::now());
    if let Ok(left) = Duration::try_from(left) {
        tokio::time::sleep(left).await;
    }
    let stderr = pulls(&old, &reference, false).await;
    assert!(
        stderr.contains("unauthorized") || stderr.contains("401"),
        "after the overlap the old secret is refused: {stderr}"
    );
    pulls(&new_local, &reference, true).await;

    // Deleted while b is gone for good: every copy that can be removed is, b is given up after
    // remoteGiveUp with a GaveUp Event, and the credential goes.
    b.stop_apiserver().unwrap();
    Api::<RegistryCredential>::namespaced(client.clone(), p)
        .delete("deploy", &DeleteParams::default())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let gone = Api::<RegistryCredential>::namespaced(client.clone(), p)
            .get_opt("deploy")
            .await
            .unwrap()
            .is_none();
        if gone {
            break;
        }
        assert!(Instant::now() < deadline, "the credential was not given up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for (api, ns) in [
        (
            Api::<Secret>::namespaced(client.clone(), local_web.name()),
            "local",
        ),
        (secrets_in(a, a_web.clone()).await, "a"),
        (secrets_in(a, a_late.clone()).await, "a (late)"),
    ] {
        assert!(
            api.get_opt("registry-pull").await.unwrap().is_none(),
            "the copy in {ns} was not removed"
        );
    }
    let sa = a_accounts(&a_web).await.get("builder").await.unwrap();
    assert_eq!(image_pull_secrets(&sa), ["other-team"]);
    assert!(sa.annotations().get(ADDED).is_none());
    let events = Api::<Event>::namespaced(client.clone(), p)
        .list(&ListParams::default())
        .await
        .unwrap();
    let gave_up = events
        .items
        .iter()
        .find(|e| e.reason.as_deref() == Some("GaveUp"))
        .expect("a GaveUp Event");
    assert!(
        gave_up
            .message
            .as_deref()
            .unwrap_or_default()
            .contains("\"b\""),
        "{gave_up:?}"
    );
    b.start_apiserver().unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn foreign_or_unsafe_kubeconfigs_are_refused_and_nothing_is_written() {
    let (a, _) = remotes();
    let region = Region::start(&["initech"]).await;
    let project = region.project(Some("initech")).await;
    let other = region.project(Some("initech")).await;
    let p = project.name();
    let a_web = namespace_in(a, "tenancy", serde_json::json!({ "team": "tenancy" })).await;
    // A valid kubeconfig, but in another Kubernetes namespace.
    kubeconfig_secret(other.name(), "cluster-a", &a.embedded_kubeconfig().unwrap()).await;
    region
        .apply(&region.namespace_manifest(p, "apps", ""))
        .unwrap();
    region
        .apply(&region.credential_manifest(
            p,
            "foreign",
            "containerRegistry:pull",
            &["apps"],
            &remote_target(
                &format!("name: cluster-a, namespace: {}", other.name()),
                &a_web,
                "foreign-pull",
            ),
        ))
        .unwrap();
    let message = wait_ready(p, "foreign", |s, _| s == "False/NotPermitted").await;
    assert!(message.contains("sync target \"a\""), "{message}");
    assert!(message.contains(other.name()), "{message}");

    // A kubeconfig that would have the operator read its own ServiceAccount token.
    let unsafe_kubeconfig = format!(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n\
         contexts: [{{name: c, context: {{cluster: k, user: u}}}}]\n\
         clusters: [{{name: k, cluster: {{server: '{}', insecure-skip-tls-verify: false}}}}]\n\
         users: [{{name: u, user: {{tokenFile: /var/run/secrets/kubernetes.io/serviceaccount/token}}}}]\n",
        a.server()
    );
    kubeconfig_secret(p, "sneaky-kubeconfig", &unsafe_kubeconfig).await;
    region
        .apply(&region.credential_manifest(
            p,
            "sneaky",
            "containerRegistry:pull",
            &["apps"],
            &remote_target("name: sneaky-kubeconfig", &a_web, "sneaky-pull"),
        ))
        .unwrap();
    let message = wait_ready(p, "sneaky", |s, _| s == "False/InvalidSpec").await;
    assert!(message.contains("tokenFile"), "{message}");

    // A kubeconfig that points nowhere: Degraded, naming the cluster. Once the Secret is
    // fixed, the change itself (not a retry timer) rebuilds the client and the copy follows.
    let nowhere = a
        .embedded_kubeconfig()
        .unwrap()
        .replace(a.server(), "https://127.0.0.1:1");
    kubeconfig_secret(p, "cluster-a-later", &nowhere).await;
    region
        .apply(&region.credential_manifest(
            p,
            "later",
            "containerRegistry:pull",
            &["apps"],
            &remote_target("name: cluster-a-later", &a_web, "later-pull"),
        ))
        .unwrap();
    let message = wait_ready(p, "later", |s, _| s == "False/Degraded").await;
    assert!(message.contains("\"a\""), "{message}");
    let secrets = Api::<Secret>::namespaced(cluster().client().await.unwrap(), p);
    let mut fixed = secrets.get("cluster-a-later").await.unwrap();
    fixed.data = None;
    fixed.string_data = Some(BTreeMap::from([(
        "kubeconfig".to_owned(),
        a.embedded_kubeconfig().unwrap(),
    )]));
    fixed.metadata.managed_fields = None;
    secrets
        .replace("cluster-a-later", &PostParams::default(), &fixed)
        .await
        .unwrap();
    wait_object(
        &Api::<Secret>::namespaced(a.client().await.unwrap(), &a_web),
        "later-pull",
        Duration::from_secs(8),
        |_| Some(()),
    )
    .await;
    wait_ready(p, "later", |s, _| s == "True/Ready").await;

    // The expiry gauge counts down to the next rotation.
    region
        .apply(&region.credential_manifest(
            p,
            "rotating",
            "containerRegistry:pull",
            &["apps"],
            "  rotationPeriod: 2h\n",
        ))
        .unwrap();
    wait_ready(p, "rotating", |s, _| s == "True/Ready").await;
    let left = metric(
        &region,
        &format!("registry_operator_credential_expiry_seconds{{credential=\"{p}/rotating\"}}"),
    )
    .await;
    assert!((7000.0..=7200.0).contains(&left), "{left}");
    let none = metric(
        &region,
        &format!("registry_operator_credential_expiry_seconds{{credential=\"{p}/foreign\"}}"),
    )
    .await;
    assert_eq!(none, 0.0, "a secret that never expires has no gauge");

    // Nothing reached cluster a.
    let copies = Api::<Secret>::all(a.client().await.unwrap())
        .list(&ListParams::default().labels("app.kubernetes.io/managed-by=registry-operator"))
        .await
        .unwrap();
    let names: BTreeMap<String, String> = copies
        .items
        .iter()
        .map(|s| (s.name_any(), s.namespace().unwrap_or_default()))
        .collect();
    assert!(
        !names.contains_key("foreign-pull") && !names.contains_key("sneaky-pull"),
        "{names:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_spares_images_remote_pods_run_and_waits_while_a_cluster_is_unseen() {
    let (a, _) = remotes();
    // The credential's copies in the unreachable cluster are given up soon at cleanup.
    let region = Region::start_with_settings(&["globex"], "remoteGiveUp: 3s\n").await;
    let project = region.project(Some("globex")).await;
    let p = project.name();
    let a_apps = namespace_in(a, "apps", serde_json::json!({})).await;
    kubeconfig_secret(p, "cluster-a", &a.embedded_kubeconfig().unwrap()).await;
    let nowhere = a
        .embedded_kubeconfig()
        .unwrap()
        .replace(a.server(), "https://127.0.0.1:1");
    kubeconfig_secret(p, "cluster-gone", &nowhere).await;
    region
        .apply(&region.namespace_manifest(p, "shop", ""))
        .unwrap();
    region
        .apply(&region.credential_manifest(p, "ci", "containerRegistry", &["shop"], ""))
        .unwrap();
    let client = cluster().client().await.unwrap();
    let ci = wait_object(
        &Api::<Secret>::namespaced(client.clone(), p),
        "ci",
        CONVERGE,
        |s| Some(credentials_of(s)),
    )
    .await;
    let auth = basic(&ci);
    let http = reqwest::Client::new();
    served(&http, &region.host, &auth).await;
    let repo = "shop/app";
    let mut digests = Vec::new();
    for tag in ["t1", "t2", "t3"] {
        digests.push(push(&http, &region.host, repo, tag, &auth).await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The tenant's workloads run in cluster a, where its pull credential syncs.
    let to_a = format!(
        "  sync:\n  - cluster: {{name: a, kubeconfigSecret: {{name: cluster-a}}}}\n    \
         namespaces: [{a_apps}]\n    secretName: registry-pull\n"
    );
    region
        .apply(&region.credential_manifest(p, "deploy", "containerRegistry:pull", &["shop"], &to_a))
        .unwrap();
    wait_ready(p, "deploy", |s, _| s == "True/Ready").await;

    // Keep the newest tag: t1 and t2 planned.
    region
        .apply(&format!(
            "apiVersion: registry.thalassa.cloud/v1alpha1\nkind: RetentionPolicy\n\
             metadata: {{name: newest, namespace: {p}}}\n\
             spec:\n  region: {}\n  namespaces: [shop]\n  schedule: '* * * * *'\n  \
             dryRun: true\n  rules:\n    keepLast: [{{tags: '*', count: 1}}]\n",
            region.name
        ))
        .unwrap();
    let policies = Api::<RetentionPolicy>::namespaced(client.clone(), p);
    let policy_state = |want: &'static str| {
        let policies = policies.clone();
        async move {
            wait_object(&policies, "newest", CONVERGE, |rp| {
                let status = rp.status.as_ref()?;
                let (ready, reason) = common::ready(rp, &status.conditions)?;
                (format!("{ready}/{reason}") == want).then(|| status.clone())
            })
            .await
        }
    };
    let planned = wait_object(&policies, "newest", CONVERGE, |rp| {
        let plan = rp.status.as_ref()?.plan.as_ref()?;
        (plan.tags == 2).then(|| plan.clone())
    })
    .await;
    assert!(planned.spared.is_empty(), "{planned:?}");
    policy_state("True/Ready").await;

    // A Pod in cluster a runs t1 (its status as a kubelet reports it): t1 is spared.
    let pods = Api::<Pod>::namespaced(a.client().await.unwrap(), &a_apps);
    let image = format!("{}/{repo}:t1", region.host);
    running_pod(
        &pods,
        "runs-t1",
        &image,
        &format!("{}/{repo}@{}", region.host, digests[0]),
    )
    .await;
    let spared = wait_object(&policies, "newest", CONVERGE, |rp| {
        let plan = rp.status.as_ref()?.plan.as_ref()?;
        (plan.tags == 1).then(|| plan.clone())
    })
    .await;
    assert_eq!(spared.spared.len(), 1, "{spared:?}");
    assert_eq!(format!("{:?}", spared.spared[0].reason), "InUse");
    assert_eq!(spared.items[0].tag.as_deref(), Some("t2"));

    // A second cluster whose Pods cannot be listed: the policy is Degraded, naming it, and
    // a due run waits (nothing is deleted) until that cluster is known or gone.
    region
        .apply(&region.credential_manifest(
            p,
            "deploy",
            "containerRegistry:pull",
            &["shop"],
            &format!(
                "{to_a}  - cluster: {{name: gone, kubeconfigSecret: {{name: cluster-gone}}}}\n    \
                 namespaces: [apps]\n    secretName: registry-pull\n"
            ),
        ))
        .unwrap();
    let blind = policy_state("False/Degraded").await;
    let message = &blind.conditions[0].message;
    assert!(message.contains("cluster \"gone\""), "{message}");
    assert!(!message.contains("cluster \"a\""), "{message}");
    policies
        .patch(
            "newest",
            &PatchParams::default(),
            &Patch::Merge(&serde_json::json!({"spec": {"dryRun": false}})),
        )
        .await
        .unwrap();
    let events = Api::<Event>::namespaced(client.clone(), p);
    let deadline = Instant::now() + RUN;
    let skipped = loop {
        let list = events.list(&ListParams::default()).await.unwrap();
        if let Some(e) = list.items.into_iter().find(|e| {
            e.reason.as_deref() == Some("RunSkipped")
                && e.involved_object.name.as_deref() == Some("newest")
        }) {
            break e;
        }
        assert!(Instant::now() < deadline, "no RunSkipped Event");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(
        skipped
            .message
            .as_deref()
            .unwrap_or_default()
            .contains("\"gone\""),
        "{skipped:?}"
    );
    assert_eq!(
        tags(&http, &region.host, repo, &auth).await,
        ["t1", "t2", "t3"]
    );
    let policy = policies.get("newest").await.unwrap();
    assert!(policy.status.unwrap().last_run.is_none());

    // The unreachable target goes: the waiting run happens, and only t2 goes.
    region
        .apply(&region.credential_manifest(p, "deploy", "containerRegistry:pull", &["shop"], &to_a))
        .unwrap();
    let ran = wait_object(&policies, "newest", RUN, |rp| {
        rp.status.as_ref()?.last_run.clone()
    })
    .await;
    assert_eq!((ran.deleted.tags, ran.deleted.manifests), (1, 1));
    assert_eq!(tags(&http, &region.host, repo, &auth).await, ["t1", "t3"]);
    // A cluster that never answered is given up like one that stopped answering.
    wait_ready(p, "deploy", |s, _| s == "True/Ready").await;
    let events = events.list(&ListParams::default()).await.unwrap();
    assert!(
        events
            .items
            .iter()
            .any(|e| e.reason.as_deref() == Some("GaveUp")
                && e.message
                    .as_deref()
                    .unwrap_or_default()
                    .contains("\"gone\"")),
        "no GaveUp Event for cluster gone"
    );
    project.cleanup().await.unwrap();
}
