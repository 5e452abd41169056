//! Pull-Secret sync in this cluster (`RegistryCredential.spec.sync`): copies reach the
//! namespaces a target selects inside the tenant, and their ServiceAccounts; they follow
//! namespaces and ServiceAccounts created later and hand edits within seconds; other teams'
//! `imagePullSecrets` entries survive every merge and removal; nothing is written outside the
//! tenant or over a Secret the operator did not create.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use crds::v1alpha1::RegistryCredential;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use testkit::clients::{Client, push_image, unique_repo_in};
use testkit::cluster::TestNamespace;

use common::{
    Region, cluster, create_service_account, credentials_of, image_pull_secrets, ready,
    skopeo_inspect, wait_object,
};

const CONVERGE: Duration = Duration::from_secs(20);
/// How soon a namespace or ServiceAccount created later must have the Secret.
const PROMPT: Duration = Duration::from_secs(5);
const PULL_SECRETS: &str = "registry.thalassa.cloud/pull-secrets";
const ADDED: &str = "registry.thalassa.cloud/image-pull-secrets";

async fn label(ns: &str, labels: serde_json::Value) {
    let api = Api::<Namespace>::all(cluster().client().await.unwrap());
    api.patch(
        ns,
        &PatchParams::default(),
        &Patch::Merge(&serde_json::json!({ "metadata": { "labels": labels } })),
    )
    .await
    .unwrap();
}

/// A namespace of `organisation` that accepts synced pull Secrets and is labelled `team=web`.
async fn web_namespace(region: &Region, organisation: &str) -> TestNamespace {
    let ns = region.project(Some(organisation)).await;
    label(
        ns.name(),
        serde_json::json!({ PULL_SECRETS: "accept", "team": "web" }),
    )
    .await;
    ns
}

/// Waits until the Secret is gone.
async fn gone(api: &Api<Secret>, name: &str) {
    let deadline = std::time::Instant::now() + CONVERGE;
    while api.get_opt(name).await.unwrap().is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "{name} is still there after {CONVERGE:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn service_account(ns: &str, name: &str, pull_secrets: &[&str]) {
    create_service_account(cluster().client().await.unwrap(), ns, name, pull_secrets).await;
}

async fn ready_reason(project: &str, name: &str) -> (String, String) {
    let api = Api::<RegistryCredential>::namespaced(cluster().client().await.unwrap(), project);
    wait_object(&api, name, CONVERGE, |c| {
        let status = c.status.as_ref()?;
        let (s, reason) = ready(c, &status.conditions)?;
        (reason != "Reconciling").then(|| {
            let message = status
                .conditions
                .iter()
                .find(|c| c.type_ == "Ready")
                .map(|c| c.message.clone())
                .unwrap_or_default();
            (format!("{s}/{reason}"), message)
        })
    })
    .await
}

/// The `.dockerconfigjson` of a synced Secret, given to skopeo as its auth file, reads the
/// image's manifest.
fn skopeo_inspect_with(secret: &Secret, reference: &str) -> std::process::Output {
    skopeo_inspect(
        &secret.data.as_ref().unwrap()[".dockerconfigjson"].0,
        reference,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn copies_follow_namespaces_service_accounts_and_hand_edits() {
    let region = Region::start(&["acme"]).await;
    let project = region.project(Some("acme")).await;
    let p = project.name();
    let web = web_namespace(&region, "acme").await;
    service_account(web.name(), "builder", &["other-team"]).await;
    region
        .apply(&region.namespace_manifest(p, "apps", ""))
        .unwrap();
    region
        .apply(&region.credential_manifest(p, "ci", "containerRegistry", &["apps"], ""))
        .unwrap();
    region
        .apply(&region.credential_manifest(
            p,
            "deploy",
            "containerRegistry:pull",
            &["apps"],
            "  sync:\n  - namespaceSelector: {matchLabels: {team: web}}\n    secretName: registry-pull\n    serviceAccounts: ['*']\n",
        ))
        .unwrap();
    assert_eq!(ready_reason(p, "deploy").await.0, "True/Ready");

    let client = cluster().client().await.unwrap();
    let secrets = |ns: &str| Api::<Secret>::namespaced(client.clone(), ns);
    let accounts = |ns: &str| Api::<ServiceAccount>::namespaced(client.clone(), ns);
    let copy = wait_object(&secrets(web.name()), "registry-pull", CONVERGE, |s| {
        Some(s.clone())
    })
    .await;
    assert_eq!(
        copy.type_.as_deref(),
        Some("kubernetes.io/dockerconfigjson")
    );

    // The copy pulls: push with ci, then read the manifest with the copy as skopeo's auth file.
    let ci = wait_object(&secrets(p), "ci", CONVERGE, |s| Some(credentials_of(s))).await;
    let reference = format!("{}/{}:v1", region.host, unique_repo_in("apps", "sync"));
    // The data plane serves the credentials once the document is in force.
    let mut pushed = None;
    for _ in 0..100 {
        let t = push_image(Client::Crane, &reference, Some(&ci)).unwrap();
        if t.succeeded() {
            pushed = Some(t);
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(pushed.is_some(), "ci could not push");
    let mut inspect = skopeo_inspect_with(&copy, &reference);
    for _ in 0..50 {
        if inspect.status.success() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        inspect = skopeo_inspect_with(&copy, &reference);
    }
    assert!(
        inspect.status.success(),
        "skopeo with the synced Secret: {}",
        String::from_utf8_lossy(&inspect.stderr)
    );

    // ServiceAccounts: ours appended once, the other team's entry kept, the addition recorded.
    let builder = wait_object(&accounts(web.name()), "builder", CONVERGE, |sa| {
        image_pull_secrets(sa)
            .contains(&"registry-pull".to_owned())
            .then(|| sa.clone())
    })
    .await;
    assert_eq!(
        image_pull_secrets(&builder),
        ["other-team", "registry-pull"]
    );
    wait_object(&accounts(web.name()), "default", CONVERGE, |sa| {
        (image_pull_secrets(sa) == ["registry-pull"]).then_some(())
    })
    .await;

    // A ServiceAccount created later is patched promptly.
    service_account(web.name(), "late", &["their-own"]).await;
    wait_object(&accounts(web.name()), "late", PROMPT, |sa| {
        (image_pull_secrets(sa) == ["their-own", "registry-pull"]).then_some(())
    })
    .await;

    // A namespace labelled later gets its copy promptly.
    let later = region.project(Some("acme")).await;
    label(
        later.name(),
        serde_json::json!({ PULL_SECRETS: "accept", "team": "web" }),
    )
    .await;
    wait_object(
        &secrets(later.name()),
        "registry-pull",
        PROMPT,
        |_| Some(()),
    )
    .await;

    // Deleted or edited by hand: restored.
    secrets(web.name())
        .delete("registry-pull", &DeleteParams::default())
        .await
        .unwrap();
    wait_object(&secrets(web.name()), "registry-pull", PROMPT, |s| {
        (s.metadata.deletion_timestamp.is_none()).then_some(())
    })
    .await;
    let mut edited = secrets(web.name()).get("registry-pull").await.unwrap();
    edited.data = Some(BTreeMap::from([(
        ".dockerconfigjson".to_owned(),
        ByteString(br#"{"auths":{}}"#.to_vec()),
    )]));
    edited.metadata.managed_fields = None;
    secrets(web.name())
        .replace("registry-pull", &PostParams::default(), &edited)
        .await
        .unwrap();
    wait_object(&secrets(web.name()), "registry-pull", PROMPT, |s| {
        (s.data.as_ref()?.get(".dockerconfigjson")?
            == &copy.data.as_ref().unwrap()[".dockerconfigjson"])
            .then_some(())
    })
    .await;

    // Stable: with nothing changing, nothing is written again.
    let before = secrets(web.name()).get("registry-pull").await.unwrap();
    let sa_before = accounts(web.name()).get("builder").await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = secrets(web.name()).get("registry-pull").await.unwrap();
    let sa_after = accounts(web.name()).get("builder").await.unwrap();
    assert_eq!(
        before.metadata.resource_version,
        after.metadata.resource_version
    );
    assert_eq!(
        sa_before.metadata.resource_version,
        sa_after.metadata.resource_version
    );

    // A namespace that leaves the selection loses the copy and our entries only.
    label(web.name(), serde_json::json!({ "team": null })).await;
    wait_object(&accounts(web.name()), "builder", CONVERGE, |sa| {
        (image_pull_secrets(sa) == ["other-team"]).then_some(())
    })
    .await;
    let builder = accounts(web.name()).get("builder").await.unwrap();
    assert!(
        !builder
            .metadata
            .annotations
            .unwrap_or_default()
            .contains_key(ADDED)
    );
    gone(&secrets(web.name()), "registry-pull").await;

    // Deleting the credential removes every copy and entry, and nothing else.
    let creds = Api::<RegistryCredential>::namespaced(client.clone(), p);
    creds
        .delete("deploy", &DeleteParams::default())
        .await
        .unwrap();
    gone(&secrets(later.name()), "registry-pull").await;
    let late = accounts(web.name()).get("late").await.unwrap();
    assert_eq!(image_pull_secrets(&late), ["their-own"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn nothing_is_written_outside_the_tenant_or_over_a_foreign_secret() {
    let region = Region::start(&["initech", "globex"]).await;
    let project = region.project(Some("initech")).await;
    let p = project.name();
    // Same organisation without the opt-in, and another organisation with it. (Another
    // organisation than the other test's, whose selector would otherwise reach these.)
    let closed = region.project(Some("initech")).await;
    let foreign = web_namespace(&region, "globex").await;
    region
        .apply(&region.namespace_manifest(p, "apps", ""))
        .unwrap();
    region
        .apply(&region.credential_manifest(
            p,
            "reach",
            "containerRegistry:pull",
            &["apps"],
            &format!(
                "  sync:\n  - namespaces: [{}, {}]\n",
                closed.name(),
                foreign.name()
            ),
        ))
        .unwrap();
    let (state, message) = ready_reason(p, "reach").await;
    assert_eq!(state, "False/NotPermitted", "{message}");
    assert!(
        message.contains(closed.name()) || message.contains(foreign.name()),
        "{message}"
    );

    // A kubeconfig Secret of another namespace.
    region
        .apply(&region.credential_manifest(
            p,
            "remote",
            "containerRegistry:pull",
            &["apps"],
            &format!(
                "  sync:\n  - cluster: {{name: edge, kubeconfigSecret: {{name: kc, namespace: {}}}}}\n    namespaces: [default]\n",
                foreign.name()
            ),
        ))
        .unwrap();
    let (state, message) = ready_reason(p, "remote").await;
    assert_eq!(state, "False/NotPermitted", "{message}");
    assert!(message.contains("kubeconfig"), "{message}");

    // A Secret of the target's name that is not ours: never adopted.
    let web = web_namespace(&region, "initech").await;
    let client = cluster().client().await.unwrap();
    let secrets = |ns: &str| Api::<Secret>::namespaced(client.clone(), ns);
    let theirs: Secret = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "registry-pull" },
        "type": "Opaque",
        "stringData": { "token": "theirs" },
    }))
    .unwrap();
    secrets(web.name())
        .create(&PostParams::default(), &theirs)
        .await
        .unwrap();
    region
        .apply(&region.credential_manifest(
            p,
            "clash",
            "containerRegistry:pull",
            &["apps"],
            &format!(
                "  sync:\n  - namespaces: [{}]\n    secretName: registry-pull\n",
                web.name()
            ),
        ))
        .unwrap();
    let (state, message) = ready_reason(p, "clash").await;
    assert_eq!(state, "False/SecretConflict", "{message}");
    assert!(
        message.contains(&format!("{}/registry-pull", web.name())),
        "{message}"
    );
    let kept = secrets(web.name()).get("registry-pull").await.unwrap();
    assert_eq!(kept.type_.as_deref(), Some("Opaque"));

    // Nothing of ours in the namespaces outside the tenant.
    for ns in [closed.name(), foreign.name()] {
        let list = secrets(ns)
            .list(
                &kube::api::ListParams::default()
                    .labels("app.kubernetes.io/managed-by=registry-operator"),
            )
            .await
            .unwrap();
        assert!(list.items.is_empty(), "{ns}: {:?}", list.items);
    }
}
