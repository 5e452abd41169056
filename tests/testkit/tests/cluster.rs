//! Acceptance tests for the harness clusters (`tests/harness/cluster`, `testkit::cluster`).
//!
//! Each test starts its own real control plane (etcd, kube-apiserver,
//! kube-controller-manager, kube-scheduler) on loopback and checks behaviour that only the
//! real component provides: schema validation of custom resources (apiserver), garbage
//! collection and namespace finalization (controller manager), and service-account tokens
//! that verify against the apiserver's published JWKS.
//!
//! Needs the binaries from `tests/harness/install`; without them every test fails.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{ApiResource, DeleteParams, DynamicObject, GroupVersionKind, PostParams};
use kube::{Api, Client};
use serde::Deserialize;
use testkit::cluster::{Cluster, TestNamespace, cluster_script, wait_for};

fn config_map(name: &str, owner: Option<&ConfigMap>) -> ConfigMap {
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some(name.to_owned());
    cm.data = Some(BTreeMap::from([("k".to_owned(), "v".to_owned())]));
    if let Some(owner) = owner {
        cm.metadata.owner_references = Some(vec![OwnerReference {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            name: owner.metadata.name.clone().expect("owner has a name"),
            uid: owner.metadata.uid.clone().expect("owner has a uid"),
            ..OwnerReference::default()
        }]);
    }
    cm
}

const WIDGET_CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.harness.example.com
spec:
  group: harness.example.com
  scope: Namespaced
  names: {kind: Widget, plural: widgets, singular: widget, listKind: WidgetList}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [size]
            properties:
              size: {type: integer, minimum: 1}
"#;

fn widget(namespace: &str, name: &str, size: i64) -> String {
    format!(
        "apiVersion: harness.example.com/v1\nkind: Widget\nmetadata:\n  name: {name}\n  \
         namespace: {namespace}\nspec:\n  size: {size}\n"
    )
}

#[tokio::test]
async fn apiserver_accepts_a_crd_and_validates_its_custom_resources() {
    let cluster = Cluster::start("crd").expect("start cluster");
    let ns = cluster.test_namespace().await.expect("namespace");

    let out = cluster.apply(WIDGET_CRD).expect("apply CRD");
    assert!(out.contains("widgets.harness.example.com"), "{out}");
    cluster
        .wait_crd_established("widgets.harness.example.com", Duration::from_secs(60))
        .expect("CRD established");

    let out = cluster
        .apply(&widget(ns.name(), "small", 3))
        .expect("apply a valid Widget");
    assert!(out.contains("widget.harness.example.com/small"), "{out}");

    // The apiserver enforces the CRD's schema: size must be at least 1.
    let err = cluster
        .apply(&widget(ns.name(), "broken", 0))
        .expect_err("a Widget violating the schema must be rejected");
    assert!(err.to_string().contains("spec.size"), "{err}");

    // The stored object reads back through the typed client too.
    let gvk = GroupVersionKind::gvk("harness.example.com", "v1", "Widget");
    let api: Api<DynamicObject> = Api::namespaced_with(
        cluster.client().await.expect("client"),
        ns.name(),
        &ApiResource::from_gvk(&gvk),
    );
    let stored = api.get("small").await.expect("get Widget");
    assert_eq!(stored.data["spec"]["size"], 3);
    assert!(api.get_opt("broken").await.expect("get").is_none());
}

#[tokio::test]
async fn controller_manager_collects_garbage_and_finishes_namespace_deletion() {
    let cluster = Cluster::start("gc").expect("start cluster");
    let client = cluster.client().await.expect("client");
    let ns = cluster.test_namespace().await.expect("namespace");
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns.name());
    let pp = PostParams::default();

    let owner = cms
        .create(&pp, &config_map("owner", None))
        .await
        .expect("owner");
    cms.create(&pp, &config_map("dependent", Some(&owner)))
        .await
        .expect("dependent");
    cms.create(&pp, &config_map("bystander", None))
        .await
        .expect("bystander");

    cms.delete("owner", &DeleteParams::background())
        .await
        .expect("delete owner");
    wait_for(
        "the garbage collector to delete the dependent",
        Duration::from_secs(90),
        || async { matches!(cms.get_opt("dependent").await, Ok(None)).then_some(()) },
    )
    .await
    .expect("dependent collected");
    assert!(
        cms.get_opt("bystander").await.expect("get").is_some(),
        "an object without owner must survive"
    );

    // A namespace with content is only gone once the namespace controller has emptied
    // and finalized it.
    let doomed = TestNamespace::create(&client).await.expect("namespace");
    let doomed_cms: Api<ConfigMap> = Api::namespaced(client.clone(), doomed.name());
    doomed_cms
        .create(&pp, &config_map("content", None))
        .await
        .expect("content");
    doomed.cleanup().await.expect("namespace deleted");
}

/// Claims the apiserver puts in service-account tokens (those checked here).
#[derive(Debug, Deserialize)]
struct Claims {
    iss: String,
    sub: String,
    aud: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

fn verify(
    token: &str,
    jwks: &JwkSet,
    issuer: &str,
    audience: &str,
) -> jsonwebtoken::errors::Result<Claims> {
    let header = jsonwebtoken::decode_header(token)?;
    assert_eq!(header.alg, Algorithm::RS256);
    let kid = header.kid.expect("token header names its key");
    let jwk = jwks.find(&kid).expect("the JWKS holds the token's key");
    let key = DecodingKey::from_jwk(jwk)?;
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&[audience]);
    validation.set_issuer(&[issuer]);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    Ok(jsonwebtoken::decode::<Claims>(token, &key, &validation)?.claims)
}

/// Replaces one character in the middle of the token's signature, changing its bytes.
fn tamper_signature(token: &str) -> String {
    let (signed, signature) = token.rsplit_once('.').expect("three JWT parts");
    let mut sig: Vec<char> = signature.chars().collect();
    let mid = sig.len() / 2;
    sig[mid] = if sig[mid] == 'A' { 'B' } else { 'A' };
    format!("{signed}.{}", sig.into_iter().collect::<String>())
}

#[tokio::test]
async fn service_account_tokens_verify_against_the_published_jwks() {
    const AUDIENCE: &str = "registry.harness.test";
    let cluster = Cluster::start("token").expect("start cluster");
    let client: Client = cluster.client().await.expect("client");
    let ns = cluster.test_namespace().await.expect("namespace");

    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), ns.name());
    let mut sa = ServiceAccount::default();
    sa.metadata.name = Some("puller".into());
    sas.create(&PostParams::default(), &sa)
        .await
        .expect("service account");
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![AUDIENCE.into()],
            expiration_seconds: Some(600),
            ..TokenRequestSpec::default()
        },
        ..TokenRequest::default()
    };
    let issued = sas
        .create_token_request("puller", &PostParams::default(), &request)
        .await
        .expect("TokenRequest");
    let token = issued.status.expect("token status").token;

    // OIDC discovery and the JWKS, fetched anonymously over HTTPS trusting the cluster CA.
    let http = cluster.anonymous_http().expect("http client");
    let discovery_url = format!("{}/.well-known/openid-configuration", cluster.server());
    let discovery: Discovery = http
        .get(&discovery_url)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .expect("discovery document")
        .json()
        .await
        .expect("discovery JSON");
    assert_eq!(discovery.issuer, cluster.server());
    assert!(
        discovery.jwks_uri.starts_with(cluster.server()),
        "{}",
        discovery.jwks_uri
    );
    let jwks: JwkSet = http
        .get(&discovery.jwks_uri)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .expect("JWKS")
        .json()
        .await
        .expect("JWKS JSON");

    let claims = verify(&token, &jwks, &discovery.issuer, AUDIENCE).expect("token verifies");
    assert_eq!(claims.iss, cluster.server());
    assert_eq!(claims.aud, vec![AUDIENCE.to_owned()]);
    assert_eq!(
        claims.sub,
        format!("system:serviceaccount:{}:puller", ns.name())
    );

    let err = verify(
        &tamper_signature(&token),
        &jwks,
        &discovery.issuer,
        AUDIENCE,
    )
    .expect_err("a tampered signature must not verify");
    assert!(
        matches!(
            err.kind(),
            jsonwebtoken::errors::ErrorKind::InvalidSignature
        ),
        "{err:?}"
    );
    let err = verify(&token, &jwks, &discovery.issuer, "someone-else")
        .expect_err("the token is not for another audience");
    assert!(
        matches!(err.kind(), jsonwebtoken::errors::ErrorKind::InvalidAudience),
        "{err:?}"
    );
}

fn pids_of(state_dir: &Path) -> Vec<u32> {
    std::fs::read_dir(state_dir.join("pids"))
        .expect("pids dir")
        .map(|e| {
            std::fs::read_to_string(e.expect("entry").path())
                .expect("pid file")
                .trim()
                .parse()
                .expect("pid")
        })
        .collect()
}

/// Whether `pid` is a live process (a zombie awaiting its reaper does not count).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // The state follows the parenthesised command name.
            let after = stat.rsplit_once(')')?.1;
            after.split_whitespace().next().map(|state| state != "Z")
        })
        .unwrap_or(false)
}

#[test]
fn clusters_run_side_by_side_and_down_leaves_nothing_behind() {
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| Cluster::start("pair").expect("start cluster a"));
        let b = s.spawn(|| Cluster::start("pair").expect("start cluster b"));
        (a.join().expect("a"), b.join().expect("b"))
    });
    assert_ne!(a.server(), b.server());
    for cluster in [&a, &b] {
        let out = cluster
            .kubectl_ok(["get", "--raw", "/readyz"])
            .expect("readyz");
        assert_eq!(out.trim(), "ok");
    }
    // Objects are per cluster: each has its own etcd.
    a.kubectl_ok(["create", "configmap", "only-in-a"])
        .expect("create in a");
    let in_b = b
        .kubectl(["get", "configmap", "only-in-a"])
        .expect("kubectl");
    assert!(!in_b.status.success());

    let dir = a.state_dir().to_path_buf();
    let pids = pids_of(&dir);
    assert!(
        pids.len() >= 4,
        "etcd, apiserver, controller manager, scheduler: {pids:?}"
    );
    a.stop().expect("cluster down");
    assert!(!dir.exists(), "state dir removed");
    for pid in pids {
        assert!(!running(pid), "process {pid} still running after down");
    }
    // b is untouched by a's teardown.
    assert_eq!(
        b.kubectl_ok(["get", "--raw", "/readyz"])
            .expect("readyz")
            .trim(),
        "ok"
    );
}

#[test]
fn missing_binaries_name_the_install_script() {
    let empty = tempfile::tempdir().expect("tempdir");
    let out = Command::new("bash")
        .arg(cluster_script())
        .args(["up", "never-started"])
        .env("REGISTRY_HARNESS_CACHE", empty.path())
        .output()
        .expect("run cluster script");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("tests/harness/install"), "{stderr}");
}
