//! The kubelet credential provider (`registry-credential-provider`), driven through its
//! stdin/stdout protocol as the kubelet drives it, with real ServiceAccount tokens from the
//! harness apiserver's TokenRequest API: the token of a ServiceAccount that a
//! `workloadIdentity` credential trusts becomes pull-only registry credentials that real
//! clients pull with; any other ServiceAccount's token gets nothing, with the registry's
//! reason on stderr. Then the kubelet of the harness node runs it: a Pod with no
//! `imagePullSecrets` pulls a private image with its ServiceAccount's token, and a Pod of a
//! ServiceAccount the federation does not trust cannot pull, and a Pod with a synced copy of a
//! pull credential's Secret as its `imagePullSecret` runs. (Where the node cannot start,
//! that second test says so and leaves the provider to the first.)

mod common;

use std::io::Write as _;
use std::process::{Command, Stdio};

use crds::v1alpha1::RegistryCredential;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use testkit::clients::{Client, Credentials, pull_image, push_image, unique_repo_in};

use common::{Region, cluster, credentials_of, ready, wait_object, workspace_bin};

const CONVERGE: std::time::Duration = std::time::Duration::from_secs(20);
/// The audience of the tokens the kubelet passes to the provider (`tokenAttributes`).
const AUDIENCE: &str = "registry.thalassa.cloud";

/// Runs the provider with a request for `image` carrying `token`.
fn provide(image: &str, token: &str) -> std::process::Output {
    let request = serde_json::json!({
        "apiVersion": "credentialprovider.kubelet.k8s.io/v1",
        "kind": "CredentialProviderRequest",
        "image": image,
        "serviceAccountToken": token,
        "serviceAccountAnnotations": {},
    });
    let mut child = Command::new(workspace_bin("registry-credential-provider"))
        .arg("--plain-http")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(request.to_string().as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// A project with ServiceAccounts `puller` and `stranger`, the registry namespace `apps`,
/// a push credential `ci` (returned) and a pull-only federation `nodes` that trusts the
/// cluster's tokens of `puller` for [`AUDIENCE`]; both Ready.
async fn tenant(region: &Region) -> (testkit::cluster::TestNamespace, Credentials) {
    let cluster = cluster();
    let client = cluster.client().await.unwrap();
    let project = region.project(Some("acme")).await;
    let p = project.name();
    for sa in ["puller", "stranger"] {
        cluster
            .kubectl_ok(["create", "serviceaccount", sa, "--namespace", p])
            .unwrap();
    }
    region
        .apply(&region.namespace_manifest(p, "apps", ""))
        .unwrap();
    region
        .apply(&region.credential_manifest(p, "ci", "containerRegistry", &["apps"], ""))
        .unwrap();
    let ca = std::fs::read_to_string(cluster.ca_path()).unwrap();
    let indented: String = ca.lines().map(|l| format!("      {l}\n")).collect();
    let identity = format!(
        "  workloadIdentity:\n    issuer: {}\n    audience: {AUDIENCE}\n    claimRules:\n    \
         - claim: sub\n      values: [\"system:serviceaccount:{p}:puller\"]\n    caBundle: |\n{indented}",
        cluster.server()
    );
    region
        .apply(&region.credential_manifest(
            p,
            "nodes",
            "containerRegistry:pull",
            &["apps"],
            &identity,
        ))
        .unwrap();
    let creds = Api::<RegistryCredential>::namespaced(client.clone(), p);
    for name in ["ci", "nodes"] {
        wait_object(&creds, name, CONVERGE, |c| {
            let status = c.status.as_ref()?;
            (ready(c, &status.conditions)?.0 == "True").then_some(())
        })
        .await;
    }
    let ci = wait_object(&Api::<Secret>::namespaced(client, p), "ci", CONVERGE, |s| {
        Some(credentials_of(s))
    })
    .await;
    (project, ci)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trusted_service_account_token_becomes_pull_only_credentials() {
    let region = Region::start(&["acme"]).await;
    let cluster = cluster();
    let (project, ci) = tenant(&region).await;
    let p = project.name();
    let image = format!("{}/{}:v1", region.host, unique_repo_in("apps", "provided"));
    let pushed =
        tokio::task::block_in_place(|| push_image(Client::Crane, &image, Some(&ci))).unwrap();
    assert!(pushed.succeeded(), "{}", pushed.output.stderr);

    // The trusted ServiceAccount: credentials for the registry host, cached for less than
    // they live.
    let token = cluster
        .service_account_token(p, "puller", AUDIENCE)
        .unwrap();
    let out = provide(&image, &token);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let response: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(response["kind"], "CredentialProviderResponse");
    assert_eq!(response["cacheKeyType"], "Registry");
    let cache: u64 = response["cacheDuration"]
        .as_str()
        .unwrap()
        .trim_end_matches('s')
        .parse()
        .unwrap();
    assert!(cache > 0 && cache < 3600, "{response}");
    let auth = &response["auth"][&region.host];
    assert_eq!(auth["username"], "<token>");
    let provided = Credentials::new("<token>", auth["password"].as_str().unwrap());
    for client in [Client::Crane, Client::Skopeo] {
        let pulled =
            tokio::task::block_in_place(|| pull_image(client, &image, Some(&provided))).unwrap();
        assert_eq!(
            pulled.digest, pushed.digest,
            "{client:?} pull with the provided credentials: {}",
            pulled.output.stderr
        );
    }
    // Pull only, even though the token came from a ServiceAccount.
    let other = format!("{}/{}:v1", region.host, unique_repo_in("apps", "provided"));
    let push =
        tokio::task::block_in_place(|| push_image(Client::Crane, &other, Some(&provided))).unwrap();
    assert!(!push.succeeded(), "the provided credentials pushed");

    // Another ServiceAccount: nothing, and the registry's reason on stderr.
    let stranger = cluster
        .service_account_token(p, "stranger", AUDIENCE)
        .unwrap();
    let out = provide(&image, &stranger);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("refused the token exchange"), "{stderr}");
    // No token at all: what to configure.
    let out = provide(&image, "");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("tokenAttributes"), "{stderr}");
}

/// The kubelet's `CredentialProviderConfig` for the registry at `host`.
fn provider_config(host: &str) -> String {
    serde_json::json!({
        "apiVersion": "kubelet.config.k8s.io/v1",
        "kind": "CredentialProviderConfig",
        "providers": [{
            "name": "registry-credential-provider",
            "apiVersion": "credentialprovider.kubelet.k8s.io/v1",
            "matchImages": [host],
            "defaultCacheDuration": "1m",
            "args": ["--plain-http"],
            "tokenAttributes": {
                "serviceAccountTokenAudience": AUDIENCE,
                "requireServiceAccount": true,
                "cacheType": "ServiceAccount",
            },
        }],
    })
    .to_string()
}

/// RBAC that lets kubelets request ServiceAccount tokens for the provider's audience
/// (the `NodeRestriction` admission plugin refuses any audience not granted).
fn node_audience_rbac() -> String {
    format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {{name: registry-credential-provider-audience}}\n\
         rules:\n- apiGroups: [\"\"]\n  resources: [\"{AUDIENCE}\"]\n  verbs: [request-serviceaccounts-token-audience]\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {{name: registry-credential-provider-audience}}\n\
         roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: registry-credential-provider-audience}}\n\
         subjects:\n- {{apiGroup: rbac.authorization.k8s.io, kind: Group, name: \"system:nodes\"}}\n"
    )
}

/// A Pod of ServiceAccount `account` running `image` (the sandbox image prints its args).
fn pod_of(namespace: &str, name: &str, account: &str, image: &str) -> String {
    let mut pod: serde_json::Value = serde_json::from_str(&testkit::cluster::pull_pod(
        namespace,
        name,
        image,
        None,
        &["pulled-without-a-secret"],
    ))
    .unwrap();
    pod["spec"]["serviceAccountName"] = account.into();
    pod.to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pod_pulls_with_no_stored_secret_through_the_kubelet_provider() {
    let region = Region::start(&["acme"]).await;
    let cluster = cluster();
    let dir = tempfile::tempdir().unwrap();
    let bin_dir = dir.path().join("bin");
    std::fs::create_dir(&bin_dir).unwrap();
    std::os::unix::fs::symlink(
        workspace_bin("registry-credential-provider"),
        bin_dir.join("registry-credential-provider"),
    )
    .unwrap();
    let config = dir.path().join("credential-provider.json");
    std::fs::write(&config, provider_config(&region.host)).unwrap();
    cluster.apply(&node_audience_rbac()).unwrap();
    if let Err(e) = tokio::task::block_in_place(|| cluster.add_node_with(Some((&config, &bin_dir))))
    {
        eprintln!(
            "\n*** no harness node ({e}): the kubelet running the provider is not checked here; \
             the provider's protocol is, with real tokens, by \
             a_trusted_service_account_token_becomes_pull_only_credentials ***\n"
        );
        return;
    }

    let (project, ci) = tenant(&region).await;
    let p = project.name();
    let image = format!("{}/{}:v1", region.host, unique_repo_in("apps", "kubelet"));
    let pushed = tokio::task::block_in_place(|| {
        testkit::cluster::push_sandbox_image(&image, Some((&ci.username, &ci.password)))
    })
    .unwrap();
    assert!(pushed.status.success(), "{}", pushed.stderr);

    // The trusted ServiceAccount's Pod has no imagePullSecrets, and runs.
    cluster
        .apply(&pod_of(p, "trusted", "puller", &image))
        .unwrap();
    let phase = cluster
        .pod_finished(p, "trusted", std::time::Duration::from_secs(120))
        .await
        .unwrap();
    assert_eq!(phase, "Succeeded", "{}", cluster.describe_pods(p));
    let logs = cluster.kubectl_ok(["logs", "-n", p, "trusted"]).unwrap();
    assert!(logs.contains("pulled-without-a-secret"), "{logs}");
    // A synced copy of a pull credential's Secret, in a namespace of the organisation that
    // accepts them, is a working imagePullSecret on the node.
    let web = region
        .project_with_pull_secret("acme", p, "deploy", &["apps"])
        .await;
    let synced = testkit::cluster::pull_pod(
        web.name(),
        "synced",
        &image,
        Some("registry-pull"),
        &["pulled-with-a-synced-secret"],
    );
    cluster.apply(&synced).unwrap();
    let phase = cluster
        .pod_finished(web.name(), "synced", std::time::Duration::from_secs(120))
        .await
        .unwrap();
    assert_eq!(phase, "Succeeded", "{}", cluster.describe_pods(web.name()));

    // Another ServiceAccount's Pod cannot pull.
    cluster
        .apply(&pod_of(p, "untrusted", "stranger", &image))
        .unwrap();
    let refused = cluster
        .pod_pull_refused(p, "untrusted", std::time::Duration::from_secs(120))
        .await
        .unwrap();
    assert!(
        refused.contains("ErrImagePull") || refused.contains("ImagePullBackOff"),
        "{refused}"
    );
}
