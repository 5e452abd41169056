//! `dataplane serve --config-secret` end to end: the real binary follows its configuration
//! Secret (and the shard Secrets it names) on a harness cluster's apiserver, through the
//! watch API, and swaps every new document in through the apply step.
//!
//! Each test has its own Kubernetes namespace (deleted at the end) and its own data plane;
//! they share one cluster, torn down by its watchdog when the test process ends.
//!
//! Needs the binaries from `tests/harness/install`; without them the tests fail.

mod common;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::{Dataplane, image_manifest, push_blob_monolithic, put_manifest, sha256};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, ObjectMeta, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;
use testkit::cluster::Cluster;

/// How long a change to the Secret may take to be served.
const SWAP_WITHIN: Duration = Duration::from_secs(2);
/// The index Secret's name.
const INDEX: &str = "region-config";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| Cluster::start("cfg-secret").expect("start cluster"))
}

/// A data plane following `namespace/region-config`, with its own storage root.
fn follow(namespace: &str, listen: &str) -> (Dataplane, tempfile::TempDir) {
    let root = tempfile::tempdir().unwrap();
    let args: Vec<String> = [
        "serve",
        "--listen",
        listen,
        "--root",
        root.path().to_str().unwrap(),
        "--config-secret",
        &format!("{namespace}/{INDEX}"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let kubeconfig = cluster().kubeconfig_path().to_str().unwrap().to_owned();
    let server =
        Dataplane::start_args_env(&args, &[("KUBECONFIG", &kubeconfig), ("RUST_LOG", "info")])
            .unwrap_or_else(|log| panic!("dataplane did not start:\n{log}"));
    (server, root)
}

/// Writes (creates or replaces) a Secret holding `document` under `config.yaml`.
async fn put_secret(api: &Api<Secret>, name: &str, document: &serde_json::Value) {
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..ObjectMeta::default()
        },
        data: Some(
            [(
                "config.yaml".to_owned(),
                ByteString(serde_json::to_vec_pretty(document).unwrap()),
            )]
            .into(),
        ),
        ..Secret::default()
    };
    api.patch(
        name,
        &PatchParams::apply("config-secret-test").force(),
        &Patch::Apply(&secret),
    )
    .await
    .expect("apply the Secret");
}

/// An index document: namespace `acme` with `visibility`, the push credential `ci`, the
/// signing key `key` (PEM), at `revision`. JSON is YAML.
fn document(revision: u64, visibility: &str, key: &str, hash: &str) -> serde_json::Value {
    json!({
        "apiVersion": "registry.thalassa.cloud/v1alpha1",
        "kind": "DataPlaneConfig",
        "region": "e2e",
        "revision": revision,
        "namespaces": [{"name": "acme", "visibility": visibility}],
        "credentials": [{
            "id": "ci", "secretHash": hash, "scope": "containerRegistry", "namespaces": ["acme"],
        }],
        "tokens": {"active": "k1", "keys": [{"id": "k1", "algorithm": "ES256", "privateKey": key}]},
    })
}

/// Polls `probe` every 50 ms until it returns `Some`, for at most `timeout`; returns the value
/// and how long it took.
async fn within<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> (T, Duration)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = probe().await {
            return (value, start.elapsed());
        }
        assert!(start.elapsed() < timeout, "not within {timeout:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn readyz(http: &reqwest::Client, base: &str) -> (u16, String) {
    let r = http.get(format!("{base}/readyz")).send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// The value of the metric line starting with `series` (0 when absent).
async fn metric(http: &reqwest::Client, base: &str, series: &str) -> f64 {
    common::metrics_text(http, base)
        .await
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

async fn revision_served(http: &reqwest::Client, base: &str, revision: u64) -> Option<()> {
    let (status, body) = readyz(http, base).await;
    (status == 200 && body.trim() == format!("ready revision={revision}")).then_some(())
}

async fn anonymous_pull(http: &reqwest::Client, base: &str) -> u16 {
    http.get(format!("{base}/v2/acme/app/manifests/v1"))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

fn basic_client(user: &str, password: &str) -> reqwest::Client {
    let value = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    );
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("authorization", value.parse().unwrap());
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap()
}

#[tokio::test]
async fn follows_the_secret_and_refuses_documents_it_cannot_apply() {
    let cluster = cluster();
    let namespace = cluster.test_namespace().await.expect("namespace");
    let ns = namespace.name().to_owned();
    let client: Client = cluster.client().await.expect("client");
    let secrets: Api<Secret> = Api::namespaced(client, &ns);
    let (server, _root) = follow(&ns, "127.0.0.1:0");
    let base = server.url();
    let http = reqwest::Client::new();

    // No Secret yet: not ready, and nothing is allowed.
    let (status, body) = readyz(&http, &base).await;
    assert_eq!(
        (status, body.as_str()),
        (503, "no configuration in force yet\n")
    );
    let r = http.get(format!("{base}/v2/")).send().await.unwrap();
    assert_eq!(r.status(), 403);
    // The missing Secret is a refusal, counted.
    within(
        "the missing Secret is counted",
        Duration::from_secs(10),
        || async {
            (metric(
                &http,
                &base,
                r#"dataplane_config_refusals_total{source="secret",reason="unavailable"}"#,
            )
            .await
                >= 1.0)
                .then_some(())
        },
    )
    .await;

    // The Secret appears: ready with its revision within 2 s.
    let key = dataplane::auth::token::generate_key("k1").private_key;
    let hash = dataplane::auth::secret::hash_secret("ci-secret").unwrap();
    put_secret(&secrets, INDEX, &document(1, "private", &key, &hash)).await;
    let (_, took) = within("revision 1 in force", SWAP_WITHIN, || {
        revision_served(&http, &base, 1)
    })
    .await;
    eprintln!("revision 1 served {took:?} after the Secret was created");
    assert_eq!(metric(&http, &base, "dataplane_config_revision").await, 1.0);

    // Push an image with the credential; anonymous pulls are refused (private).
    let ci = basic_client("ci", "ci-secret");
    let config = br#"{"architecture":"amd64","os":"linux"}"#;
    let layer = b"a layer";
    for blob in [&config[..], &layer[..]] {
        assert_eq!(
            push_blob_monolithic(&ci, &base, "acme/app", blob)
                .await
                .unwrap(),
            201
        );
    }
    let manifest = image_manifest(
        (&sha256(config), config.len()),
        &[(&sha256(layer), layer.len())],
    );
    assert_eq!(
        put_manifest(&ci, &base, "acme/app", "v1", &manifest)
            .await
            .unwrap(),
        201
    );
    assert_eq!(anonymous_pull(&http, &base).await, 401);

    // The namespace becomes public: anonymous pull works within 2 s.
    put_secret(&secrets, INDEX, &document(2, "public", &key, &hash)).await;
    let (_, took) = within("anonymous pull after revision 2", SWAP_WITHIN, || async {
        (anonymous_pull(&http, &base).await == 200).then_some(())
    })
    .await;
    eprintln!("anonymous pull works {took:?} after the update");
    within("revision 2 reported", SWAP_WITHIN, || {
        revision_served(&http, &base, 2)
    })
    .await;

    // A document whose signing key is broken is refused; revision 2 keeps serving.
    let keys = r#"dataplane_config_refusals_total{source="secret",reason="keys"}"#;
    let broken = key.replace("MIG", "XXX");
    put_secret(&secrets, INDEX, &document(3, "private", &broken, &hash)).await;
    within("the broken key is refused", SWAP_WITHIN, || async {
        (metric(&http, &base, keys).await == 1.0).then_some(())
    })
    .await;
    revision_served(&http, &base, 2)
        .await
        .expect("revision 2 stays in force");
    assert_eq!(anonymous_pull(&http, &base).await, 200);
    assert!(
        server.log().contains("tokens.keys[0].privateKey"),
        "{}",
        server.log()
    );

    // A document that fails validation is refused too.
    let invalid_series = r#"dataplane_config_refusals_total{source="secret",reason="invalid"}"#;
    let mut invalid = document(4, "private", &key, &hash);
    invalid["credentials"][0]["namespaces"] = json!(["undeclared"]);
    put_secret(&secrets, INDEX, &invalid).await;
    within("the invalid document is refused", SWAP_WITHIN, || async {
        (metric(&http, &base, invalid_series).await == 1.0).then_some(())
    })
    .await;
    revision_served(&http, &base, 2)
        .await
        .expect("revision 2 stays in force");
    assert_eq!(anonymous_pull(&http, &base).await, 200);
    assert!(
        server.log().contains("credentials[0].namespaces[0]"),
        "{}",
        server.log()
    );
    // Credentials pushed before keep working.
    assert_eq!(
        put_manifest(&ci, &base, "acme/app", "v1", &manifest)
            .await
            .unwrap(),
        201
    );

    // Sharded: the index names a shard that is not there yet (waiting), then it arrives.
    let mut index = document(5, "private", &key, &hash);
    index["shards"] = json!([{"name": "region-config-1", "revision": 5}]);
    index["credentials"][0]["namespaces"] = json!(["acme", "sharded"]);
    put_secret(&secrets, INDEX, &index).await;
    let incomplete = r#"dataplane_config_refusals_total{source="secret",reason="incomplete"}"#;
    within("the incomplete document waits", SWAP_WITHIN, || async {
        (metric(&http, &base, incomplete).await == 1.0).then_some(())
    })
    .await;
    revision_served(&http, &base, 2)
        .await
        .expect("revision 2 stays in force while a shard is missing");
    let shard = json!({
        "apiVersion": "registry.thalassa.cloud/v1alpha1",
        "kind": "DataPlaneConfigShard",
        "revision": 5,
        "namespaces": [{"name": "sharded", "visibility": "public"}],
    });
    put_secret(&secrets, "region-config-1", &shard).await;
    within("revision 5 with its shard", SWAP_WITHIN, || {
        revision_served(&http, &base, 5)
    })
    .await;
    assert_eq!(
        anonymous_pull(&http, &base).await,
        401,
        "acme is private again"
    );
    let r = http
        .get(format!("{base}/v2/sharded/app/tags/list"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        404,
        "the shard's public namespace is served (empty)"
    );

    // Deleting the index Secret keeps the running document, with a warning.
    secrets
        .delete(INDEX, &DeleteParams::default())
        .await
        .expect("delete the index Secret");
    within("the deletion is logged", SWAP_WITHIN, || async {
        server.log().contains("was deleted").then_some(())
    })
    .await;
    revision_served(&http, &base, 5)
        .await
        .expect("revision 5 stays in force");

    namespace.cleanup().await.expect("cleanup");
}

#[tokio::test]
async fn on_a_public_address_it_stays_closed_without_access_control() {
    let cluster = cluster();
    let namespace = cluster.test_namespace().await.expect("namespace");
    let ns = namespace.name().to_owned();
    let secrets: Api<Secret> = Api::namespaced(cluster.client().await.expect("client"), &ns);
    // Open access would be refused at start on this address with --config; with
    // --config-secret the server starts closed instead.
    let (server, _root) = follow(&ns, "0.0.0.0:0");
    let base = format!("http://127.0.0.1:{}", server.addr.port());
    let http = reqwest::Client::new();
    assert_eq!(readyz(&http, &base).await.0, 503);

    // A document without access control: in force, but everything stays denied.
    put_secret(
        &secrets,
        INDEX,
        &json!({"apiVersion": "registry.thalassa.cloud/v1alpha1", "kind": "DataPlaneConfig", "revision": 1}),
    )
    .await;
    within("revision 1 in force", SWAP_WITHIN, || {
        revision_served(&http, &base, 1)
    })
    .await;
    let r = http.get(format!("{base}/v2/")).send().await.unwrap();
    assert_eq!(
        r.status(),
        403,
        "closed: no open access on a public address"
    );
    let r = http
        .post(format!("{base}/v2/any/repo/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    // With access control declared, the token flow starts.
    put_secret(
        &secrets,
        INDEX,
        &json!({
            "apiVersion": "registry.thalassa.cloud/v1alpha1", "kind": "DataPlaneConfig",
            "revision": 2, "namespaces": [{"name": "acme", "visibility": "public"}],
        }),
    )
    .await;
    within("revision 2 in force", SWAP_WITHIN, || {
        revision_served(&http, &base, 2)
    })
    .await;
    let r = http.get(format!("{base}/v2/")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().contains_key("www-authenticate"));

    namespace.cleanup().await.expect("cleanup");
}

#[test]
fn a_settings_file_with_operator_owned_parts_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("settings.yaml");
    std::fs::write(
        &path,
        "apiVersion: registry.thalassa.cloud/v1alpha1\nkind: DataPlaneConfig\n\
         uploads: {sessionTimeout: 1h}\nnamespaces: [{name: acme}]\n",
    )
    .unwrap();
    let output = std::process::Command::new(common::binary())
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&path)
        .args(["--config-secret", "registry/region-config"])
        .env("KUBECONFIG", dir.path().join("no-such-kubeconfig"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("holds only the process settings") && stderr.contains("namespaces"),
        "{stderr}"
    );
}
