//! Workload identity end to end: a harness cluster's kube-apiserver is the OIDC issuer, and
//! its ServiceAccount tokens (TokenRequest API, `kubectl create token`) are used with real
//! clients and with the OAuth token exchange against the real binary.
//!
//! The federation trusts tokens for audience `registry` whose `sub` is the ServiceAccount
//! `ci` of a test namespace, with `containerRegistry:pull` on the private namespace
//! `harness`; the issuer's HTTPS endpoints are trusted through the cluster CA (`caBundle`).
//!
//! Needs the binaries from `tests/harness/install`; without them the test fails.

mod common;

use anyhow::{Result, ensure};
use common::{ConfiguredDataplane, Dataplane};
use dataplane::auth::secret::hash_secret;
use dataplane::config::{
    ClaimRule, Config, CredentialConfig, FederationConfig, NamespaceConfig, RegionSpec, Scope,
    Visibility,
};
use testkit::clients::{Client, Credentials, Transfer, pull_image, push_image, unique_repo};
use testkit::cluster::Cluster;

/// The audience the federation requires.
const AUDIENCE: &str = "registry";
/// The user name under which clients present an OIDC token as their password.
const OIDC_USER: &str = dataplane::auth::OIDC_USERNAME;
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// The configuration: private `harness`, a push credential on it, and the federation.
fn config(cluster: &Cluster, ca_bundle: String, subject: String, pusher: &Credentials) -> Config {
    Config {
        spec: RegionSpec {
            region: "access-workload-identity".to_owned(),
            namespaces: vec![NamespaceConfig {
                name: "harness".to_owned(),
                visibility: Visibility::Private,
                immutable_tags: Vec::new(),
            }],
            credentials: vec![CredentialConfig {
                id: pusher.username.clone(),
                secret_hash: hash_secret(&pusher.password).expect("hashing a secret"),
                scope: Scope::ContainerRegistry,
                namespaces: vec!["harness".to_owned()],
                not_before: None,
                expires_at: None,
                previous_secrets: Vec::new(),
            }],
            federations: vec![FederationConfig {
                name: "cluster-ci".to_owned(),
                issuer: cluster.server().to_owned(),
                audience: AUDIENCE.to_owned(),
                claim_rules: vec![ClaimRule {
                    claim: "sub".to_owned(),
                    values: vec![subject],
                }],
                scope: Scope::ContainerRegistryPull,
                namespaces: vec!["harness".to_owned()],
                ca_bundle: Some(ca_bundle),
            }],
            ..RegionSpec::default()
        },
        ..Config::default()
    }
}

/// The transfer failed, and the client's stderr names an authentication or authorization
/// refusal (`401`/`403`), not some other failure.
fn ensure_refused(what: &str, transfer: &Transfer) -> Result<()> {
    ensure!(
        !transfer.succeeded(),
        "{what} succeeded:\n{}",
        transfer.output.stdout
    );
    let stderr = transfer.output.stderr.to_lowercase();
    let last = transfer
        .output
        .stderr
        .trim()
        .lines()
        .last()
        .unwrap_or_default();
    eprintln!("{what}: refused: {last}");
    ensure!(
        ["unauthorized", "denied", "authentication required", "401"]
            .iter()
            .any(|w| stderr.contains(w)),
        "{what} failed, but not with a refusal:\n{}",
        transfer.output.stderr
    );
    Ok(())
}

#[test]
fn service_account_tokens_pull_with_real_clients_and_the_token_exchange() {
    let cluster = Cluster::start("wi").expect("start cluster");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let namespace = runtime
        .block_on(cluster.test_namespace())
        .expect("namespace");
    let ns = namespace.name().to_owned();
    for account in ["ci", "other"] {
        cluster
            .kubectl_ok(["create", "serviceaccount", account, "--namespace", &ns])
            .expect("service account");
    }
    let ca_bundle = std::fs::read_to_string(cluster.ca_path()).expect("cluster CA");
    let pusher = Credentials::new("ci-push", "push-secret-5e8a21");
    let config = config(
        &cluster,
        ca_bundle,
        format!("system:serviceaccount:{ns}:ci"),
        &pusher,
    );
    let server = ConfiguredDataplane::start(&config);
    let host = server.host();

    let ci = Credentials::new(
        OIDC_USER,
        cluster
            .service_account_token(&ns, "ci", AUDIENCE)
            .expect("kubectl create token"),
    );
    let other = Credentials::new(
        OIDC_USER,
        cluster
            .service_account_token(&ns, "other", AUDIENCE)
            .expect("kubectl create token"),
    );
    let elsewhere = Credentials::new(
        OIDC_USER,
        cluster
            .service_account_token(&ns, "ci", "elsewhere")
            .expect("kubectl create token"),
    );

    let check = || -> Result<()> {
        // The push credential pushes the image the workload will pull.
        let repo = unique_repo("workload");
        let reference = format!("{host}/{repo}:v1");
        let pushed = push_image(Client::Crane, &reference, Some(&pusher))?
            .digest_or_error("crane push with the push credential")?;

        // The `ci` token pulls it, with crane (`crane auth login -u oidc -p <token>`) and
        // with skopeo (`--src-creds oidc:<token>`).
        for client in [Client::Crane, Client::Skopeo] {
            let pulled = pull_image(client, &reference, Some(&ci))?
                .digest_or_error(&format!("{} pull with the ci token", client.name()))?;
            ensure!(
                pulled == pushed,
                "{} pulled {pulled} with the ci token, but {pushed} was pushed",
                client.name()
            );
        }

        // The federation grants pull only: a push with the `ci` token is refused, and
        // nothing is stored.
        for client in [Client::Crane, Client::Skopeo] {
            let denied_repo = unique_repo(&format!("workload-{}-push", client.name()));
            let denied_ref = format!("{host}/{denied_repo}:v1");
            let transfer = push_image(client, &denied_ref, Some(&ci))?;
            ensure_refused(
                &format!("{} push with the ci token", client.name()),
                &transfer,
            )?;
            let status = runtime.block_on(manifest_status(&server, &denied_repo, &pusher))?;
            ensure!(
                status == 404,
                "after a refused {} push, HEAD answers {status}",
                client.name()
            );
        }

        // Tokens of another ServiceAccount, or for another audience, are not accepted.
        for (what, token) in [
            ("the other ServiceAccount's token", &other),
            ("a token for audience elsewhere", &elsewhere),
        ] {
            for client in [Client::Crane, Client::Skopeo] {
                let what = format!("{} pull with {what}", client.name());
                let transfer = pull_image(client, &reference, Some(token))?;
                ensure_refused(&what, &transfer)?;
                // The token endpoint answered 401 UNAUTHORIZED (not a 403 on the manifest).
                ensure!(
                    transfer
                        .output
                        .stderr
                        .to_lowercase()
                        .contains("unauthorized"),
                    "{what}: not refused with 401 UNAUTHORIZED:\n{}",
                    transfer.output.stderr
                );
            }
        }

        // The OAuth token exchange: the `ci` token becomes a registry access token.
        runtime.block_on(token_exchange(&server, &repo, &pushed, &ci, &other))
    };
    if let Err(err) = check() {
        panic!("{err:#}\n---- server log ----\n{}", server.log());
    }
    drop(server);
    drop(namespace);
}

/// `HEAD /v2/<repo>/manifests/v1` with Basic credentials.
async fn manifest_status(server: &Dataplane, repo: &str, who: &Credentials) -> Result<u16> {
    let response = common::client()
        .head(format!("{}/v2/{repo}/manifests/v1", server.url()))
        .header("accept", OCI_MANIFEST)
        .basic_auth(&who.username, Some(&who.password))
        .send()
        .await?;
    Ok(response.status().as_u16())
}

/// `POST /token` with a token-exchange form; returns the status and the JSON body.
async fn exchange(
    server: &Dataplane,
    subject_token: &str,
    scope: &str,
) -> Result<(u16, serde_json::Value)> {
    let form = [
        ("grant_type", dataplane::http::token::TOKEN_EXCHANGE_GRANT),
        ("subject_token", subject_token),
        ("scope", scope),
    ];
    let response = common::client()
        .post(format!("{}/token", server.url()))
        .form(&form)
        .send()
        .await?;
    let status = response.status().as_u16();
    let body = response.json().await?;
    Ok((status, body))
}

/// The token exchange turns the `ci` token into an access token that pulls `repo:v1` (and
/// nothing more), and refuses the `other` token.
async fn token_exchange(
    server: &Dataplane,
    repo: &str,
    pushed: &str,
    ci: &Credentials,
    other: &Credentials,
) -> Result<()> {
    let http = common::client();
    let manifest_url = format!("{}/v2/{repo}/manifests/v1", server.url());

    // Without a token the manifest is not served.
    let anonymous = http
        .get(&manifest_url)
        .header("accept", OCI_MANIFEST)
        .send()
        .await?;
    ensure!(
        anonymous.status() == 401,
        "anonymous GET of the manifest answers {}",
        anonymous.status()
    );

    let (status, body) = exchange(server, &ci.password, &format!("repository:{repo}:pull")).await?;
    ensure!(status == 200, "token exchange answered {status}: {body}");
    let access_token = body["access_token"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("no access_token in {body}"))?
        .to_owned();
    let response = http
        .get(&manifest_url)
        .header("accept", OCI_MANIFEST)
        .bearer_auth(&access_token)
        .send()
        .await?;
    ensure!(
        response.status() == 200,
        "GET of the manifest with the exchanged token answers {}",
        response.status()
    );
    let digest = response
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let bytes = response.bytes().await?;
    let served = common::sha256(&bytes);
    ensure!(
        served == pushed,
        "served manifest {served}, pushed {pushed}"
    );
    ensure!(
        digest.as_deref() == Some(pushed),
        "Docker-Content-Digest {digest:?}, pushed {pushed}"
    );

    // Asking for push as well yields a token that still only pulls.
    let (status, body) = exchange(
        server,
        &ci.password,
        &format!("repository:{repo}:pull,push"),
    )
    .await?;
    ensure!(
        status == 200,
        "token exchange for pull,push answered {status}: {body}"
    );
    let granted = body["scope"].as_str().unwrap_or_default();
    ensure!(
        !granted.contains("push"),
        "the exchange granted push to a pull-only federation: {body}"
    );
    let token = body["access_token"].as_str().unwrap_or_default();
    let upload = http
        .post(format!("{}/v2/{repo}/blobs/uploads/", server.url()))
        .bearer_auth(token)
        .send()
        .await?;
    ensure!(
        upload.status() == 401,
        "an upload with a pull-only exchanged token answers {}",
        upload.status()
    );

    // Another ServiceAccount's token is not exchanged.
    let (status, body) =
        exchange(server, &other.password, &format!("repository:{repo}:pull")).await?;
    ensure!(
        status == 401 && body["error"] == "invalid_grant",
        "token exchange of the other ServiceAccount's token answered {status}: {body}"
    );
    Ok(())
}
