//! A real node: kubelet with containerd and runc joined to a harness cluster
//! (`tests/harness/node`).
//!
//! - It pulls a private image from a registry behind htpasswd authentication: the pod runs
//!   to completion when, and only when, its imagePullSecret holds the right credentials.
//! - Its pods reach the apiserver with in-cluster configuration (the `kubernetes` Service's
//!   ClusterIP, the mounted ServiceAccount token, CA verification), and RBAC applies to
//!   that token.
//!
//! Needs root, the binaries from `tests/harness/install`, Go, and the Debian packages
//! containerd, runc, containernetworking-plugins and iptables. The tests take turns: one
//! node per host.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::Api;
use testkit::cluster::{Cluster, go_image, pull_pod, wait_for};
use testkit::process::{self, ChildGuard, READY_TIMEOUT, Readiness};
use testkit::tools;

const USER: &str = "puller";
const PASSWORD: &str = "s3cret-pull-password";
const MESSAGE: &str = "pulled-with-the-right-secret";

/// One node per host (kubelets share the host's cgroups): the tests of this binary, which
/// run in parallel otherwise, hold this while their node exists.
static ONE_NODE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A registry (CNCF Distribution) on loopback that requires htpasswd authentication.
struct AuthRegistry {
    host: String,
    _server: ChildGuard,
    _dir: tempfile::TempDir,
}

fn start_auth_registry() -> AuthRegistry {
    // Distribution v3 from the harness cache, else Debian's Distribution 2.8.
    let binary = tools::try_bin("registry")
        .or_else(|| tools::try_bin("docker-registry"))
        .expect("no `registry` or `docker-registry`: run `tests/harness/install`");
    let dir = tempfile::tempdir().expect("tempdir");
    let hash = bcrypt::hash(PASSWORD, 5).expect("bcrypt");
    std::fs::write(dir.path().join("htpasswd"), format!("{USER}:{hash}\n")).expect("htpasswd");
    let host = format!("127.0.0.1:{}", process::free_port());
    let config = format!(
        "version: 0.1\nhttp:\n  addr: {host}\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
         auth:\n  htpasswd:\n    realm: harness\n    path: {}\n",
        dir.path().join("data").display(),
        dir.path().join("htpasswd").display()
    );
    std::fs::write(dir.path().join("config.yml"), config).expect("config");
    let mut cmd = Command::new(binary);
    cmd.arg("serve")
        .arg(dir.path().join("config.yml"))
        .env("OTEL_TRACES_EXPORTER", "none");
    let mut server = ChildGuard::spawn("auth-registry", cmd).expect("start registry");
    server
        .wait_ready(
            &Readiness::Tcp(host.parse().expect("socket address")),
            READY_TIMEOUT,
        )
        .expect("registry ready");
    AuthRegistry {
        host,
        _server: server,
        _dir: dir,
    }
}

/// Pushes the locally built sandbox image as `HOST/harness/hello:1`, with a command that
/// prints [`MESSAGE`] and exits.
fn push_test_image(registry: &AuthRegistry) -> String {
    let crane = tools::bin("crane");
    let archive = tools::cache_dir().join("pause-image/pause.tar");
    assert!(
        archive.is_file(),
        "{} is built by `tests/harness/node up`",
        archive.display()
    );
    let docker_config = tempfile::tempdir().expect("tempdir");
    let image = format!("{}/harness/hello:1", registry.host);
    let crane_run = |args: &[&str]| {
        let out = Command::new(&crane)
            .args(args)
            .env("DOCKER_CONFIG", docker_config.path())
            .output()
            .expect("run crane");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let archive = archive.to_str().expect("utf-8 path");
    let (ok, stderr) = crane_run(&["push", "--insecure", archive, &image]);
    assert!(!ok, "an anonymous push must be refused");
    assert!(
        stderr.contains("401") || stderr.contains("UNAUTHORIZED"),
        "{stderr}"
    );
    let (ok, stderr) = crane_run(&["auth", "login", &registry.host, "-u", USER, "-p", PASSWORD]);
    assert!(ok, "{stderr}");
    let (ok, stderr) = crane_run(&["push", "--insecure", archive, &image]);
    assert!(ok, "{stderr}");
    let (ok, stderr) = crane_run(&[
        "mutate",
        "--insecure",
        &image,
        "--cmd",
        MESSAGE,
        "-t",
        &image,
    ]);
    assert!(ok, "{stderr}");
    image
}

/// Waits until the pod's container cannot pull its image; returns the reason.
async fn wait_pull_failure(pods: &Api<Pod>, name: &str) -> String {
    wait_for(
        &format!("pod {name} to fail pulling"),
        Duration::from_secs(120),
        || async {
            let pod = pods.get(name).await.ok()?;
            let status = pod.status?;
            assert_ne!(
                status.phase.as_deref(),
                Some("Succeeded"),
                "{name} must not run"
            );
            let waiting = status
                .container_statuses?
                .into_iter()
                .next()?
                .state?
                .waiting?;
            let reason = waiting.reason?;
            matches!(reason.as_str(), "ErrImagePull" | "ImagePullBackOff")
                .then(|| format!("{reason}: {}", waiting.message.unwrap_or_default()))
        },
    )
    .await
    .expect("pull failure")
}

#[tokio::test]
async fn node_pulls_a_private_image_only_with_the_right_pull_secret() {
    assert!(
        Path::new("/proc/self").exists(),
        "Linux with /proc is required"
    );
    let _one_node = ONE_NODE.lock().await;
    let cluster = Cluster::start("node").expect("start cluster");
    let node = cluster.add_node().expect("node up");
    assert!(!node.is_empty());
    let registry = start_auth_registry();
    let image = push_test_image(&registry);

    let client = cluster.client().await.expect("client");
    let ns = cluster.test_namespace().await.expect("namespace");
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), ns.name());
    wait_for(
        "the default ServiceAccount",
        Duration::from_secs(30),
        || async { sas.get_opt("default").await.ok().flatten() },
    )
    .await
    .expect("default ServiceAccount");

    let host = registry.host.as_str();
    for (secret, password) in [("right", PASSWORD), ("wrong", "not-the-password")] {
        cluster
            .kubectl_ok([
                "-n",
                ns.name(),
                "create",
                "secret",
                "docker-registry",
                secret,
                &format!("--docker-server={host}"),
                &format!("--docker-username={USER}"),
                &format!("--docker-password={password}"),
            ])
            .expect("create pull secret");
    }

    // Without a secret, or with a wrong one, the image cannot be pulled.
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns.name());
    cluster
        .apply(&pull_pod(ns.name(), "no-secret", &image, None, &[]))
        .expect("pod");
    cluster
        .apply(&pull_pod(
            ns.name(),
            "wrong-secret",
            &image,
            Some("wrong"),
            &[],
        ))
        .expect("pod");
    for name in ["no-secret", "wrong-secret"] {
        let reason = wait_pull_failure(&pods, name).await;
        assert!(reason.contains("401 Unauthorized"), "{name}: {reason}");
    }

    // With the right secret the pod runs to completion and prints the image's message.
    cluster
        .apply(&pull_pod(
            ns.name(),
            "right-secret",
            &image,
            Some("right"),
            &[],
        ))
        .expect("pod");
    let phase = wait_for(
        "pod right-secret to finish",
        Duration::from_secs(120),
        || async {
            let phase = pods.get("right-secret").await.ok()?.status?.phase?;
            matches!(phase.as_str(), "Succeeded" | "Failed").then_some(phase)
        },
    )
    .await
    .expect("pod finished");
    assert_eq!(phase, "Succeeded");
    let logs = cluster
        .kubectl_ok(["-n", ns.name(), "logs", "right-secret"])
        .expect("logs");
    assert_eq!(logs.trim(), MESSAGE);

    // The image is now on the node, yet the pods without the right secret still may not
    // use it: every pull (imagePullPolicy: Always) is authenticated.
    for name in ["no-secret", "wrong-secret"] {
        let pod = pods.get(name).await.expect("pod");
        let phase = pod.status.and_then(|s| s.phase).unwrap_or_default();
        assert_eq!(phase, "Pending", "{name}");
    }
}

/// The image built from `tests/harness/images/incluster`: `incluster CONFIGMAP KEY` reads
/// the key through `https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT` with the
/// mounted token, trusting only the mounted `ca.crt`; prints the value, or `HTTP <code>:
/// <body>` and exits 1.
const INCLUSTER_IMAGE: &str = "harness.local/incluster:1";
const SETTING: &str = "read-through-the-kubernetes-service";

fn incluster_pod(namespace: &str, name: &str, service_account: &str) -> String {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": name, "namespace": namespace },
        "spec": {
            "restartPolicy": "Never",
            "serviceAccountName": service_account,
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "main",
                "image": INCLUSTER_IMAGE,
                "imagePullPolicy": "Never",
                "args": ["settings", "greeting"],
            }],
        },
    })
    .to_string()
}

/// Waits until the pod has finished; returns its phase and its log.
async fn finished(cluster: &Cluster, namespace: &str, name: &str) -> (String, String) {
    let pods: Api<Pod> = Api::namespaced(cluster.client().await.expect("client"), namespace);
    let phase = wait_for(
        &format!("pod {name} to finish"),
        Duration::from_secs(120),
        || async {
            let phase = pods.get(name).await.ok()?.status?.phase?;
            matches!(phase.as_str(), "Succeeded" | "Failed").then_some(phase)
        },
    )
    .await
    .unwrap_or_else(|e| {
        let describe = cluster
            .kubectl(["-n", namespace, "describe", "pod", name])
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        panic!("{e}\n{describe}")
    });
    let logs = cluster
        .kubectl_ok(["-n", namespace, "logs", name])
        .expect("logs");
    (phase, logs.trim().to_owned())
}

#[tokio::test]
async fn pods_reach_the_apiserver_with_in_cluster_configuration() {
    let _one_node = ONE_NODE.lock().await;
    let archive = go_image(
        &tools::repo_root().join("tests/harness/images/incluster"),
        INCLUSTER_IMAGE,
    )
    .expect("build the in-cluster test image");
    let cluster = Cluster::start("incluster").expect("start cluster");
    cluster.add_node().expect("node up");
    cluster.import_image(&archive).expect("import image");

    // The Service the pods' environment names: ClusterIP, port 443.
    let service = cluster
        .kubectl_ok([
            "get",
            "service",
            "kubernetes",
            "-n",
            "default",
            "-o",
            "jsonpath={.spec.clusterIP}:{.spec.ports[0].port}",
        ])
        .expect("Service default/kubernetes");
    assert_eq!(service, "10.0.0.1:443");

    let ns = cluster.test_namespace().await.expect("namespace");
    let namespace = ns.name();
    // `reader` may get the ConfigMap `settings`; `stranger` has no Role at all.
    cluster
        .apply(
            &serde_json::json!({
                "apiVersion": "v1",
                "kind": "List",
                "items": [
                    {
                        "apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": { "name": "settings", "namespace": namespace },
                        "data": { "greeting": SETTING },
                    },
                    {
                        "apiVersion": "v1", "kind": "ServiceAccount",
                        "metadata": { "name": "reader", "namespace": namespace },
                    },
                    {
                        "apiVersion": "v1", "kind": "ServiceAccount",
                        "metadata": { "name": "stranger", "namespace": namespace },
                    },
                    {
                        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                        "metadata": { "name": "read-settings", "namespace": namespace },
                        "rules": [{
                            "apiGroups": [""],
                            "resources": ["configmaps"],
                            "resourceNames": ["settings"],
                            "verbs": ["get"],
                        }],
                    },
                    {
                        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                        "metadata": { "name": "reader-reads-settings", "namespace": namespace },
                        "roleRef": {
                            "apiGroup": "rbac.authorization.k8s.io",
                            "kind": "Role",
                            "name": "read-settings",
                        },
                        "subjects": [{
                            "kind": "ServiceAccount",
                            "name": "reader",
                            "namespace": namespace,
                        }],
                    },
                ],
            })
            .to_string(),
        )
        .expect("ConfigMap, ServiceAccounts, Role, RoleBinding");

    for account in ["reader", "stranger"] {
        cluster
            .apply(&incluster_pod(namespace, account, account))
            .expect("pod");
    }

    let (phase, logs) = finished(&cluster, namespace, "reader").await;
    assert_eq!((phase.as_str(), logs.as_str()), ("Succeeded", SETTING));

    // The same request with a token whose ServiceAccount has no Role: authenticated as
    // exactly that account, and refused.
    let (phase, logs) = finished(&cluster, namespace, "stranger").await;
    assert_eq!(phase, "Failed", "{logs}");
    assert!(logs.starts_with("HTTP 403: "), "{logs}");
    assert!(
        logs.contains(&format!(
            r#"User \"system:serviceaccount:{namespace}:stranger\" cannot get resource \"configmaps\""#
        )),
        "{logs}"
    );
    ns.cleanup().await.expect("namespace cleanup");
    cluster.stop().expect("cluster down");
}
