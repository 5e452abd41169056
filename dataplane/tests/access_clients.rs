//! Access control end to end, with real registry clients against the real binary.
//!
//! One data plane declares a private namespace `harness` and a public namespace `public-ns`,
//! a push credential and a pull-only credential on both. Against it:
//! - skopeo, podman, crane, oras, helm and containerd `ctr` complete their round trips with
//!   the push credential (the token flow: `401` challenge, `/token`, bearer token);
//! - crane and skopeo are refused pushes into `harness` without a credential and with the
//!   pull-only one, say so on stderr, and nothing is stored;
//! - the pull-only credential pulls what the push credential pushed;
//! - anyone pulls from `public-ns` without a credential, and nobody pulls from `harness`
//!   without one.
//!
//! The server is shared by every step, so the steps run inside one test, a few at a time;
//! each uses its own repositories, so their order does not matter. A failing step does not
//! stop the others: the test fails at the end naming every failed step.

mod common;

use std::panic::AssertUnwindSafe;
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{Context, Result, anyhow, ensure};
use common::ConfiguredDataplane;
use dataplane::auth::secret::hash_secret;
use dataplane::config::{Config, CredentialConfig, NamespaceConfig, RegionSpec, Scope, Visibility};
use testkit::clients::{
    Client, Credentials, Transfer, pull_image, push_image, unique_repo, unique_repo_in,
};

/// The private namespace the testkit round trips push into.
const PRIVATE: &str = "harness";
/// A namespace anyone may pull from.
const PUBLIC: &str = "public-ns";
/// How many steps run at once (each starts client processes; the machine may be small).
const PARALLEL_STEPS: usize = 3;

const MANIFEST_TYPES: &str = "application/vnd.oci.image.manifest.v1+json, \
     application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json";

/// The data plane under test and the identities it knows.
struct Fixture {
    server: ConfiguredDataplane,
    /// `containerRegistry` (push and pull) on both namespaces.
    pusher: Credentials,
    /// `containerRegistry:pull` on both namespaces.
    puller: Credentials,
    http: reqwest::Client,
    runtime: tokio::runtime::Runtime,
}

impl Fixture {
    fn start() -> Self {
        let pusher = Credentials::new("ci-push", "push-secret-4f1c9a");
        let puller = Credentials::new("ci-pull", "pull-secret-7d2e0b");
        let credential = |c: &Credentials, scope| CredentialConfig {
            id: c.username.clone(),
            secret_hash: hash_secret(&c.password).expect("hashing a secret"),
            scope,
            namespaces: vec![PRIVATE.to_owned(), PUBLIC.to_owned()],
            not_before: None,
            expires_at: None,
            previous_secrets: Vec::new(),
        };
        let config = Config {
            spec: RegionSpec {
                region: "access-clients".to_owned(),
                namespaces: vec![
                    NamespaceConfig {
                        name: PRIVATE.to_owned(),
                        visibility: Visibility::Private,
                        immutable_tags: Vec::new(),
                    },
                    NamespaceConfig {
                        name: PUBLIC.to_owned(),
                        visibility: Visibility::Public,
                        immutable_tags: Vec::new(),
                    },
                ],
                credentials: vec![
                    credential(&pusher, Scope::ContainerRegistry),
                    credential(&puller, Scope::ContainerRegistryPull),
                ],
                ..RegionSpec::default()
            },
            ..Config::default()
        };
        Self {
            server: ConfiguredDataplane::start(&config),
            pusher,
            puller,
            http: common::client(),
            runtime: tokio::runtime::Runtime::new().unwrap(),
        }
    }

    fn host(&self) -> String {
        self.server.host()
    }

    /// `host/repo:v1`.
    fn reference(&self, repo: &str) -> String {
        format!("{}/{repo}:v1", self.host())
    }

    /// The status of `HEAD /v2/<repo>/manifests/<reference>` with the push credential sent
    /// directly (Basic), which may read everything.
    fn manifest_status(&self, repo: &str, reference: &str) -> Result<u16> {
        let url = format!("{}/v2/{repo}/manifests/{reference}", self.server.url());
        let response = self.runtime.block_on(async {
            self.http
                .head(url)
                .header("accept", MANIFEST_TYPES)
                .basic_auth(&self.pusher.username, Some(&self.pusher.password))
                .send()
                .await
        })?;
        Ok(response.status().as_u16())
    }

    /// Pushes a fresh image to `repo:v1` with the push credential; returns its digest.
    fn push_as_pusher(&self, client: Client, repo: &str) -> Result<String> {
        push_image(client, &self.reference(repo), Some(&self.pusher))?
            .digest_or_error(&format!("{} push with the push credential", client.name()))
    }

    /// `client` pushing to a fresh repository of `harness` as `credentials` is refused, says
    /// why, and leaves nothing behind.
    fn push_is_refused(&self, client: Client, credentials: Option<&Credentials>) -> Result<()> {
        let repo = unique_repo(&format!("{}-refused", client.name()));
        let transfer = push_image(client, &self.reference(&repo), credentials)?;
        ensure!(
            !transfer.succeeded(),
            "{} push was accepted:\n{}",
            client.name(),
            transfer.output.stdout
        );
        ensure_denial(client, &transfer)?;
        let digest = transfer.digest.as_deref().unwrap_or_default();
        for reference in ["v1", digest] {
            let status = self.manifest_status(&repo, reference)?;
            ensure!(
                status == 404,
                "after a refused push, HEAD {repo}:{reference} answers {status}, not 404"
            );
        }
        Ok(())
    }

    /// What the push credential pushed to `namespace`, `client` pulls as `credentials`.
    fn pull_after_push(
        &self,
        client: Client,
        namespace: &str,
        credentials: Option<&Credentials>,
    ) -> Result<()> {
        let repo = unique_repo_in(namespace, &format!("{}-pull", client.name()));
        let pushed = self.push_as_pusher(Client::Crane, &repo)?;
        let pulled = pull_image(client, &self.reference(&repo), credentials)?
            .digest_or_error(&format!("{} pull", client.name()))?;
        ensure!(
            pulled == pushed,
            "{} pulled {pulled}, but {pushed} was pushed",
            client.name()
        );
        Ok(())
    }

    /// What the push credential pushed to `harness`, `client` cannot pull anonymously.
    fn anonymous_pull_is_refused(&self, client: Client) -> Result<()> {
        let repo = unique_repo(&format!("{}-private", client.name()));
        self.push_as_pusher(Client::Crane, &repo)?;
        let transfer = pull_image(client, &self.reference(&repo), None)?;
        ensure!(
            !transfer.succeeded(),
            "{} pulled {repo} anonymously ({:?})",
            client.name(),
            transfer.digest
        );
        ensure_denial(client, &transfer)
    }
}

/// The client's stderr names the refusal (the registry's `UNAUTHORIZED`/`DENIED` error or
/// the client's words for a `401`/`403`), not some other failure.
fn ensure_denial(client: Client, transfer: &Transfer) -> Result<()> {
    let stderr = transfer.output.stderr.to_lowercase();
    let named = ["unauthorized", "denied", "authentication required"]
        .iter()
        .any(|word| stderr.contains(word));
    let last = transfer
        .output
        .stderr
        .trim()
        .lines()
        .last()
        .unwrap_or_default();
    eprintln!("       {} says: {last}", client.name());
    ensure!(
        named,
        "{}'s error does not name the denial:\n{}",
        client.name(),
        transfer.output.stderr
    );
    Ok(())
}

/// The message of a caught panic.
fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "(no message)".to_owned())
}

type Step = (String, Box<dyn Fn(&Fixture) -> Result<()> + Send + Sync>);

fn steps() -> Vec<Step> {
    type Roundtrip = fn(&str, Option<&Credentials>) -> Result<()>;
    let roundtrips: [(&str, Roundtrip); 6] = [
        ("skopeo", testkit::clients::skopeo_roundtrip),
        ("podman", testkit::clients::podman_roundtrip),
        ("crane", testkit::clients::crane_roundtrip),
        ("oras", testkit::clients::oras_roundtrip),
        ("helm", testkit::clients::helm_roundtrip),
        ("ctr", testkit::clients::ctr_roundtrip),
    ];
    let mut steps: Vec<Step> = Vec::new();
    for (name, roundtrip) in roundtrips {
        steps.push((
            format!("{name} round trip with the push credential"),
            Box::new(move |f: &Fixture| roundtrip(&f.host(), Some(&f.pusher))),
        ));
    }
    for client in [Client::Crane, Client::Skopeo] {
        let name = client.name();
        steps.push((
            format!("{name}: anonymous push into {PRIVATE} is refused"),
            Box::new(move |f: &Fixture| f.push_is_refused(client, None)),
        ));
        steps.push((
            format!("{name}: push with the pull-only credential is refused"),
            Box::new(move |f: &Fixture| f.push_is_refused(client, Some(&f.puller))),
        ));
        steps.push((
            format!("{name}: the pull-only credential pulls from {PRIVATE}"),
            Box::new(move |f: &Fixture| f.pull_after_push(client, PRIVATE, Some(&f.puller))),
        ));
        steps.push((
            format!("{name}: anonymous pull from {PUBLIC}"),
            Box::new(move |f: &Fixture| f.pull_after_push(client, PUBLIC, None)),
        ));
        steps.push((
            format!("{name}: anonymous pull from {PRIVATE} is refused"),
            Box::new(move |f: &Fixture| f.anonymous_pull_is_refused(client)),
        ));
    }
    steps
}

#[test]
fn access_control_with_real_clients() {
    let started = Instant::now();
    let fixture = Fixture::start();
    let queue = Mutex::new(steps());
    let failures: Mutex<Vec<String>> = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..PARALLEL_STEPS {
            scope.spawn(|| {
                loop {
                    let Some((name, step)) = queue.lock().unwrap().pop() else {
                        break;
                    };
                    let began = Instant::now();
                    let result = std::panic::catch_unwind(AssertUnwindSafe(|| step(&fixture)))
                        .unwrap_or_else(|panic| Err(anyhow!("panicked: {}", panic_text(&panic))))
                        .with_context(|| name.clone());
                    let took = began.elapsed();
                    match result {
                        Ok(()) => eprintln!("ok     {name} ({took:.1?})"),
                        Err(err) => {
                            eprintln!("FAILED {name} ({took:.1?})");
                            failures.lock().unwrap().push(format!("{err:#}"));
                        }
                    }
                }
            });
        }
    });
    eprintln!("all steps in {:.1?}", started.elapsed());
    let failures = failures.into_inner().unwrap();
    assert!(
        failures.is_empty(),
        "{} step(s) failed:\n\n{}\n---- server log ----\n{}",
        failures.len(),
        failures.join("\n\n"),
        fixture.server.log()
    );
    // The audit trail recorded the pull-only credential's refused pushes.
    let log = fixture.server.log();
    assert!(
        log.lines()
            .any(|l| l.contains("access denied") && l.contains("credential:ci-pull")),
        "no audit event for the refused pushes in the server log:\n{log}"
    );
}

/// A denial names the repository as clients wrote it (`"harness/x"`), not the server's
/// internal representation of the name: the message ends up in every client's error output.
#[test]
fn denials_name_the_repository_as_written() {
    let fixture = Fixture::start();
    let repo = unique_repo("message");
    let (status, body) = fixture.runtime.block_on(async {
        let anonymous_token: serde_json::Value = fixture
            .http
            .get(format!(
                "{}/token?service=access-clients&scope=repository:{repo}:pull",
                fixture.server.url()
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let response = fixture
            .http
            .get(format!("{}/v2/{repo}/manifests/v1", fixture.server.url()))
            .bearer_auth(anonymous_token["token"].as_str().unwrap())
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    });
    assert_eq!(status, 401, "{body}");
    let direct = fixture.runtime.block_on(async {
        fixture
            .http
            .put(format!("{}/v2/{repo}/manifests/v1", fixture.server.url()))
            .basic_auth(&fixture.puller.username, Some(&fixture.puller.password))
            .header("content-type", "application/vnd.oci.image.manifest.v1+json")
            .body("{}")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    for message in [&body, &direct] {
        assert!(
            message.contains(&format!("{repo:?}")) && !message.contains("RepoName("),
            "the denial should name {repo:?} as written: {message}"
        );
    }
}
