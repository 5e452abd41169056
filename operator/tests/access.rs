//! Access through the operator's objects, end to end with the real data plane: tenancy
//! decides which credentials are issued and where they push, and a federated credential lets
//! a ServiceAccount token push with no Secret at all.

mod common;

use std::time::Duration;

use crds::v1alpha1::RegistryCredential;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use sha2::{Digest as _, Sha256};
use testkit::clients::{Client, Credentials, push_image, unique_repo_in};

use common::{Region, cluster, ready, wait_object};

const CONVERGE: Duration = Duration::from_secs(15);

async fn ready_reason(api: &Api<RegistryCredential>, name: &str) -> String {
    wait_object(api, name, CONVERGE, |c| {
        let (state, reason) = ready(c, &c.status.as_ref()?.conditions)?;
        (state == "True" || reason != "Reconciling").then_some(reason)
    })
    .await
}

async fn delivered(api: &Api<Secret>, name: &str) -> Credentials {
    let secret = api.get(name).await.unwrap();
    let data = secret.data.unwrap();
    let text = |k: &str| String::from_utf8(data[k].0.clone()).unwrap();
    Credentials::new(text("username"), text("password"))
}

#[tokio::test(flavor = "multi_thread")]
async fn credentials_push_only_where_their_project_may() {
    let region = Region::start(&["acme", "beta"]).await;
    let client = cluster().client().await.unwrap();
    let owner = region.project(Some("acme")).await;
    let sibling = region.project(Some("acme")).await;
    let stranger = region.project(Some("beta")).await;
    region
        .apply(&region.namespace_manifest(owner.name(), "team", ""))
        .unwrap();
    region
        .apply(&region.namespace_manifest(owner.name(), "platform", "  scope: organisation\n"))
        .unwrap();
    let creds = |p: &str| Api::<RegistryCredential>::namespaced(client.clone(), p);
    let secrets = |p: &str| Api::<Secret>::namespaced(client.clone(), p);
    for (project, name, namespace) in [
        (owner.name(), "own", "team"),
        (sibling.name(), "shared", "platform"),
        (sibling.name(), "cross", "team"),
        (stranger.name(), "foreign", "platform"),
    ] {
        region
            .apply(&region.credential_manifest(
                project,
                name,
                "containerRegistry",
                &[namespace],
                "",
            ))
            .unwrap();
    }
    assert_eq!(ready_reason(&creds(owner.name()), "own").await, "Ready");
    assert_eq!(
        ready_reason(&creds(sibling.name()), "shared").await,
        "Ready"
    );
    assert_eq!(
        ready_reason(&creds(sibling.name()), "cross").await,
        "NotPermitted"
    );
    assert_eq!(
        ready_reason(&creds(stranger.name()), "foreign").await,
        "NotPermitted"
    );

    // Issued credentials push where they were granted, and nowhere else.
    let own = delivered(&secrets(owner.name()), "own").await;
    let shared = delivered(&secrets(sibling.name()), "shared").await;
    let push = |ns: &str, who: &Credentials| {
        let reference = format!("{}/{}:v1", region.host, unique_repo_in(ns, "skopeo"));
        tokio::task::block_in_place(|| push_image(Client::Skopeo, &reference, Some(who)).unwrap())
    };
    assert!(push("team", &own).succeeded());
    assert!(
        push("platform", &shared).succeeded(),
        "organisation scope across projects"
    );
    assert!(
        !push("team", &shared).succeeded(),
        "project scope stays in its project"
    );
    assert!(!push("platform", &own).succeeded(), "not granted");
    // Refused credentials were never issued: no Secret, nothing to push with.
    assert!(
        secrets(sibling.name())
            .get_opt("cross")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        secrets(stranger.name())
            .get_opt("foreign")
            .await
            .unwrap()
            .is_none()
    );

    for p in [owner, sibling, stranger] {
        p.cleanup().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_federated_credential_lets_a_service_account_token_push_without_a_secret() {
    let region = Region::start(&["acme"]).await;
    let cluster = cluster();
    let client = cluster.client().await.unwrap();
    let project = region.project(Some("acme")).await;
    let p = project.name();
    cluster
        .kubectl_ok(["create", "serviceaccount", "deployer", "--namespace", p])
        .unwrap();
    region
        .apply(&region.namespace_manifest(p, "builds", ""))
        .unwrap();
    let ca = std::fs::read_to_string(cluster.ca_path()).unwrap();
    let indented: String = ca.lines().map(|l| format!("      {l}\n")).collect();
    let identity = format!(
        "  workloadIdentity:\n    issuer: {}\n    audience: registry\n    claimRules:\n    \
         - claim: sub\n      values: [\"system:serviceaccount:{p}:deployer\"]\n    caBundle: |\n{indented}",
        cluster.server()
    );
    region
        .apply(&region.credential_manifest(
            p,
            "deployer",
            "containerRegistry",
            &["builds"],
            &identity,
        ))
        .unwrap();
    let creds = Api::<RegistryCredential>::namespaced(client.clone(), p);
    assert_eq!(ready_reason(&creds, "deployer").await, "Ready");
    let status = creds.get("deployer").await.unwrap().status.unwrap();
    assert_eq!(status.username.as_deref(), Some("oidc"));
    assert_eq!(status.secret_name, None);
    assert!(
        Api::<Secret>::namespaced(client.clone(), p)
            .get_opt("deployer")
            .await
            .unwrap()
            .is_none()
    );

    let token = cluster
        .service_account_token(p, "deployer", "registry")
        .unwrap();
    // A real client, logging in as `oidc` with the token.
    let reference = format!("{}/{}:v1", region.host, unique_repo_in("builds", "crane"));
    let pushed = tokio::task::block_in_place(|| {
        push_image(
            Client::Crane,
            &reference,
            Some(&Credentials::new("oidc", token.clone())),
        )
        .unwrap()
    });
    assert!(
        pushed.succeeded(),
        "crane push with the token: {}",
        pushed.output.stderr
    );

    // The token exchange, then a blob upload with the access token.
    let http = reqwest::Client::new();
    let repo = unique_repo_in("builds", "exchange");
    let response = http
        .post(format!("http://{}/token", region.host))
        .form(&[
            (
                "grant_type",
                "urn:ietf:params:oauth:grant-type:token-exchange",
            ),
            ("subject_token", token.as_str()),
            ("scope", &format!("repository:{repo}:pull,push")),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    let access = body["access_token"].as_str().unwrap().to_owned();
    let blob = b"pushed through the token exchange";
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(blob)));
    let upload = http
        .post(format!(
            "http://{}/v2/{repo}/blobs/uploads/?digest={digest}",
            region.host
        ))
        .bearer_auth(&access)
        .header("content-type", "application/octet-stream")
        .body(blob.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(upload.status(), 201, "{:?}", upload.text().await);
    // Another ServiceAccount's token is refused.
    cluster
        .kubectl_ok(["create", "serviceaccount", "other", "--namespace", p])
        .unwrap();
    let other = cluster
        .service_account_token(p, "other", "registry")
        .unwrap();
    let refused = http
        .post(format!("http://{}/token", region.host))
        .form(&[
            (
                "grant_type",
                "urn:ietf:params:oauth:grant-type:token-exchange",
            ),
            ("subject_token", other.as_str()),
            ("scope", &format!("repository:{repo}:pull,push")),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    project.cleanup().await.unwrap();
}
