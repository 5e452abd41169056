//! The authorization table: every kind of caller × public and private namespaces × every
//! operation, through the real router, both with Basic credentials sent directly and with
//! tokens from the token endpoint. Zero unauthorized successes, and every denial is
//! byte-for-byte the same whether or not the target exists.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::http::{Method, StatusCode};
use base64::Engine as _;

use super::{OCI_MANIFEST, Reply, TestApp, image_manifest};
use crate::auth::Transport;
use crate::auth::secret::hash_secret;
use crate::config::Config;
use crate::http::{AppState, build_app};
use crate::oci::Digest;
use crate::registry::Registry;
use crate::storage::Storage;
use crate::storage::memory::MemoryStorage;

pub(super) mod issuer;

use issuer::TestIssuer;

/// Who calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caller {
    Anonymous,
    PullCredential,
    PushCredential,
    ExpiredCredential,
    RotatedOutSecret,
    RotationOverlapSecret,
    WrongNamespaceCredential,
    OidcMatching,
    OidcOtherClaims,
    OidcExpired,
    OidcWrongAudience,
}

const CALLERS: [Caller; 11] = [
    Caller::Anonymous,
    Caller::PullCredential,
    Caller::PushCredential,
    Caller::ExpiredCredential,
    Caller::RotatedOutSecret,
    Caller::RotationOverlapSecret,
    Caller::WrongNamespaceCredential,
    Caller::OidcMatching,
    Caller::OidcOtherClaims,
    Caller::OidcExpired,
    Caller::OidcWrongAudience,
];

/// What is attempted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Pull,
    Push,
    Delete,
    Mount,
    TagsList,
    Catalog,
    Referrers,
}

const OPS: [Op; 7] = [
    Op::Pull,
    Op::Push,
    Op::Delete,
    Op::Mount,
    Op::TagsList,
    Op::Catalog,
    Op::Referrers,
];

/// How a caller presents itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    /// `Authorization: Basic` on the registry request itself.
    Basic,
    /// A token from `GET /token`, then `Authorization: Bearer`.
    Token,
}

/// The truth table, written out by hand (not computed by the code under test): the
/// namespace-level rights of each caller, `(pull, push)`.
fn expected_rights(caller: Caller, public: bool) -> (bool, bool) {
    match caller {
        // Refused authentication: nothing at all, not even public pulls.
        Caller::ExpiredCredential
        | Caller::RotatedOutSecret
        | Caller::OidcOtherClaims
        | Caller::OidcExpired
        | Caller::OidcWrongAudience => (false, false),
        Caller::Anonymous | Caller::WrongNamespaceCredential => (public, false),
        Caller::PullCredential | Caller::OidcMatching => (true, false),
        Caller::PushCredential | Caller::RotationOverlapSecret => (true, true),
    }
}

/// Whether authentication itself fails.
fn refused(caller: Caller) -> bool {
    matches!(
        caller,
        Caller::ExpiredCredential
            | Caller::RotatedOutSecret
            | Caller::OidcOtherClaims
            | Caller::OidcExpired
            | Caller::OidcWrongAudience
    )
}

struct Fixture {
    app: TestApp,
    /// An open app over the same storage, to set things up.
    admin: TestApp,
    issuer: TestIssuer,
    tokens: std::collections::HashMap<&'static str, String>,
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

async fn fixture() -> Fixture {
    let issuer = TestIssuer::start().await;
    let now = SystemTime::now();
    let day = Duration::from_secs(24 * 3600);
    let h = |s: &str| hash_secret(s).unwrap();
    let yaml = format!(
        r#"
apiVersion: registry.thalassa.cloud/v1alpha1
kind: DataPlaneConfig
region: test
namespaces:
  - {{name: pub, visibility: public}}
  - {{name: priv, visibility: private}}
  - {{name: other, visibility: private}}
credentials:
  - {{id: puller, secretHash: "{puller}", scope: "containerRegistry:pull", namespaces: [pub, priv]}}
  - {{id: pusher, secretHash: "{pusher}", scope: containerRegistry, namespaces: [pub, priv]}}
  - {{id: expired, secretHash: "{expired}", scope: "containerRegistry:all", namespaces: [pub, priv], expiresAt: "{past}"}}
  - id: rotated
    secretHash: "{new}"
    scope: containerRegistry
    namespaces: [pub, priv]
    previousSecrets:
      - {{secretHash: "{old}", expiresAt: "{past}"}}
  - id: overlap
    secretHash: "{new}"
    scope: containerRegistry
    namespaces: [pub, priv]
    previousSecrets:
      - {{secretHash: "{old}", expiresAt: "{future}"}}
  - {{id: elsewhere, secretHash: "{elsewhere}", scope: containerRegistry, namespaces: [other]}}
federations:
  - name: ci
    issuer: "{iss}"
    audience: registry
    claimRules:
      - {{claim: project_path, values: ["acme/*"]}}
      - {{claim: ref, values: [main]}}
    scope: "containerRegistry:pull"
    namespaces: [pub, priv]
"#,
        puller = h("puller-secret"),
        pusher = h("pusher-secret"),
        expired = h("expired-secret"),
        new = h("new-secret"),
        old = h("old-secret"),
        elsewhere = h("elsewhere-secret"),
        past = rfc3339(now - day),
        future = rfc3339(now + day),
        iss = issuer.url(),
    );
    let config = Config::from_yaml_str(&yaml).expect("valid configuration");
    let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
    let registry = Arc::new(Registry::new(Arc::clone(&storage)));
    let state = AppState::with_config(registry, config, Transport::default()).expect("applies");
    let app = TestApp {
        router: build_app(state),
        storage: Arc::clone(&storage),
    };
    let admin = TestApp::over(storage);
    for ns in ["pub", "priv", "other"] {
        let repo = format!("{ns}/app");
        let (manifest, subject) = admin.push_image(&repo, "v1", ns).await;
        // A referrer of v1, so that the referrers list is not empty.
        let config = admin.push_blob(&repo, b"{}").await;
        let layer = admin.push_blob(&repo, b"sig").await;
        let extra = format!(
            r#","subject":{{"mediaType":"{OCI_MANIFEST}","digest":"{subject}","size":{}}},"artifactType":"application/example""#,
            manifest.len()
        );
        let body = image_manifest(&config, &layer, &extra);
        let r = admin.put_manifest(&repo, "sig", OCI_MANIFEST, &body).await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    }
    let hour = Duration::from_secs(3600);
    let claims = |project: &str, aud: &str, exp: SystemTime| {
        serde_json::json!({
            "iss": issuer.url(), "sub": "project_path:acme/app:ref:main", "aud": aud,
            "exp": crate::auth::token::unix_seconds(exp), "iat": crate::auth::token::unix_seconds(now),
            "project_path": project, "ref": "main",
        })
    };
    let tokens = [
        ("matching", claims("acme/app", "registry", now + hour)),
        ("other-claims", claims("evil/app", "registry", now + hour)),
        ("expired", claims("acme/app", "registry", now - hour)),
        (
            "wrong-audience",
            claims("acme/app", "elsewhere", now + hour),
        ),
    ]
    .into_iter()
    .map(|(k, c)| (k, issuer.sign(&c)))
    .collect();
    Fixture {
        app,
        admin,
        issuer,
        tokens,
    }
}

impl Fixture {
    /// The user name and password of a caller.
    fn login(&self, caller: Caller) -> Option<(String, String)> {
        let pair = |u: &str, p: &str| Some((u.to_owned(), p.to_owned()));
        match caller {
            Caller::Anonymous => None,
            Caller::PullCredential => pair("puller", "puller-secret"),
            Caller::PushCredential => pair("pusher", "pusher-secret"),
            Caller::ExpiredCredential => pair("expired", "expired-secret"),
            Caller::RotatedOutSecret => pair("rotated", "old-secret"),
            Caller::RotationOverlapSecret => pair("overlap", "old-secret"),
            Caller::WrongNamespaceCredential => pair("elsewhere", "elsewhere-secret"),
            Caller::OidcMatching => pair("oidc", &self.tokens["matching"]),
            Caller::OidcOtherClaims => pair("oidc", &self.tokens["other-claims"]),
            Caller::OidcExpired => pair("oidc", &self.tokens["expired"]),
            Caller::OidcWrongAudience => pair("oidc", &self.tokens["wrong-audience"]),
        }
    }

    /// The `Authorization` header for a request, or `Err(reply)` when the token endpoint
    /// refused the caller.
    async fn authorization(
        &self,
        caller: Caller,
        via: Via,
        scopes: &[String],
    ) -> Result<Option<String>, Reply> {
        let login = self.login(caller);
        let basic = login.as_ref().map(|(u, p)| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
            )
        });
        match via {
            Via::Basic => Ok(basic),
            Via::Token => {
                let query: Vec<String> = scopes
                    .iter()
                    .map(|s| format!("scope={}", s.replace(':', "%3A").replace(',', "%2C")))
                    .collect();
                let uri = format!("/token?service=test&{}", query.join("&"));
                let headers: Vec<(&str, &str)> = basic
                    .as_deref()
                    .map(|b| vec![("authorization", b)])
                    .unwrap_or_default();
                let r = self.app.call_with(Method::GET, &uri, &headers, "").await;
                if r.status != StatusCode::OK {
                    return Err(r);
                }
                let token = r.json()["token"].as_str().expect("token").to_owned();
                Ok(Some(format!("Bearer {token}")))
            }
        }
    }
}

/// One attempt: the request for `op` in namespace `ns` against repository `repo` (which
/// exists as `<ns>/app` or not as `<ns>/ghost`).
struct Attempt {
    method: Method,
    uri: String,
    body: Vec<u8>,
    scopes: Vec<String>,
    /// Status when allowed and the target exists.
    ok: StatusCode,
}

async fn attempt(fx: &Fixture, op: Op, ns: &str, repo: &str, caller: Caller) -> Attempt {
    let pull = |repo: &str| format!("repository:{repo}:pull");
    match op {
        Op::Pull => Attempt {
            method: Method::GET,
            uri: format!("/v2/{repo}/manifests/v1"),
            body: Vec::new(),
            scopes: vec![pull(repo)],
            ok: StatusCode::OK,
        },
        Op::Push => {
            let data = format!("pushed by {caller:?}").into_bytes();
            Attempt {
                method: Method::POST,
                uri: format!(
                    "/v2/{repo}/blobs/uploads/?digest={}",
                    Digest::sha256_of(&data)
                ),
                body: data,
                scopes: vec![format!("repository:{repo}:pull,push")],
                ok: StatusCode::CREATED,
            }
        }
        Op::Delete => {
            // A fresh manifest to delete, so that every row has one.
            let target = if repo.ends_with("/app") {
                let (_, d) = fx
                    .admin
                    .push_image(repo, &format!("del-{caller:?}"), &format!("del {caller:?}"))
                    .await;
                d
            } else {
                Digest::sha256_of(format!("del {caller:?}").as_bytes())
            };
            Attempt {
                method: Method::DELETE,
                uri: format!("/v2/{repo}/manifests/{target}"),
                body: Vec::new(),
                scopes: vec![format!("repository:{repo}:delete")],
                ok: StatusCode::ACCEPTED,
            }
        }
        Op::Mount => {
            // Into a repository the caller may push to (if any), from the namespace tested.
            let into = match caller {
                Caller::WrongNamespaceCredential => "other/mounted",
                _ => "priv/mounted",
            };
            let layer = Digest::sha256_of(format!("layer {ns}").as_bytes());
            Attempt {
                method: Method::POST,
                uri: format!("/v2/{into}/blobs/uploads/?mount={layer}&from={repo}"),
                body: Vec::new(),
                scopes: vec![format!("repository:{into}:pull,push"), pull(repo)],
                ok: StatusCode::CREATED,
            }
        }
        Op::TagsList => Attempt {
            method: Method::GET,
            uri: format!("/v2/{repo}/tags/list"),
            body: Vec::new(),
            scopes: vec![pull(repo)],
            ok: StatusCode::OK,
        },
        Op::Catalog => Attempt {
            method: Method::GET,
            uri: "/v2/_catalog".into(),
            body: Vec::new(),
            scopes: vec!["registry:catalog:*".into()],
            ok: StatusCode::OK,
        },
        Op::Referrers => {
            let subject = if repo.ends_with("/app") {
                let r = fx
                    .admin
                    .call(Method::HEAD, &format!("/v2/{repo}/manifests/v1"), "")
                    .await;
                r.header("docker-content-digest").unwrap().to_owned()
            } else {
                Digest::sha256_of(b"none").to_string()
            };
            Attempt {
                method: Method::GET,
                uri: format!("/v2/{repo}/referrers/{subject}"),
                body: Vec::new(),
                scopes: vec![pull(repo)],
                ok: StatusCode::OK,
            }
        }
    }
}

/// Runs one attempt; `Err` holds the token endpoint's refusal.
async fn run(fx: &Fixture, caller: Caller, via: Via, a: &Attempt) -> Result<Reply, Reply> {
    let auth = fx.authorization(caller, via, &a.scopes).await?;
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|v| vec![("authorization", v)])
        .unwrap_or_default();
    Ok(fx
        .app
        .call_with(a.method.clone(), &a.uri, &headers, a.body.clone())
        .await)
}

/// A denial, with the repository name taken out so that denials on an existing and a
/// missing repository can be compared.
fn anonymized(r: &Reply, repo: &str) -> (StatusCode, String, Option<String>) {
    let body = String::from_utf8_lossy(&r.body).replace(repo, "<repo>");
    let challenge = r
        .header("www-authenticate")
        .map(|c| c.replace(repo, "<repo>"));
    (r.status, body, challenge)
}

#[tokio::test]
async fn every_caller_namespace_and_operation() {
    let fx = fixture().await;
    let mut rows = 0;
    for caller in CALLERS {
        for via in [Via::Basic, Via::Token] {
            for (ns, public) in [("pub", true), ("priv", false)] {
                for op in OPS {
                    rows += 1;
                    let (may_pull, may_push) = expected_rights(caller, public);
                    let row = format!("{caller:?} via {via:?} {op:?} in {ns}");
                    let existing = format!("{ns}/app");
                    let missing = format!("{ns}/ghost");
                    let a = attempt(&fx, op, ns, &existing, caller).await;
                    let b = attempt(&fx, op, ns, &missing, caller).await;
                    let (ra, rb) = (
                        run(&fx, caller, via, &a).await,
                        run(&fx, caller, via, &b).await,
                    );

                    if refused(caller) {
                        // Authentication itself fails: at the token endpoint, or on the
                        // request with Basic; never a success, never a 404.
                        let r = match (&ra, via) {
                            (Err(r), Via::Token) => r,
                            (Ok(r), Via::Basic) => r,
                            _ => panic!("{row}: authentication must be refused: {ra:?}"),
                        };
                        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{row}: {:?}", r.body);
                        continue;
                    }
                    let (ra, rb) = (ra.expect(&row), rb.expect(&row));
                    let allowed = match op {
                        Op::Pull | Op::TagsList | Op::Referrers => may_pull,
                        Op::Push | Op::Delete => may_push,
                        // Mounting needs push on the target (checked below) and pull here.
                        Op::Mount => may_pull && expected_rights(caller, false).1,
                        Op::Catalog => true,
                    };
                    if op == Op::Catalog {
                        assert_eq!(ra.status, StatusCode::OK, "{row}: {:?}", ra.body);
                        let listed = ra.json()["repositories"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .any(|r| r == existing.as_str());
                        assert_eq!(listed, may_pull, "{row}: catalog shows {existing}");
                        let other = ra.json()["repositories"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .any(|r| r == "other/app");
                        assert_eq!(
                            other,
                            caller == Caller::WrongNamespaceCredential,
                            "{row}: catalog shows other/app"
                        );
                        continue;
                    }
                    if op == Op::Mount {
                        let can_push_target = match caller {
                            Caller::WrongNamespaceCredential => true,
                            c => expected_rights(c, false).1,
                        };
                        if !can_push_target {
                            assert!(
                                ra.status == StatusCode::UNAUTHORIZED
                                    || ra.status == StatusCode::FORBIDDEN,
                                "{row}: {:?} {:?}",
                                ra.status,
                                ra.body
                            );
                            assert_eq!(anonymized(&ra, &existing), anonymized(&rb, &missing));
                        } else {
                            // Pushing is allowed; the mount happens only from a readable
                            // source, otherwise an ordinary session opens (no leak).
                            let mounted = ra.status == StatusCode::CREATED;
                            let readable = expected_rights(caller, public).0;
                            assert_eq!(mounted, readable, "{row}: {:?}", ra.body);
                            if !mounted {
                                assert_eq!(ra.status, StatusCode::ACCEPTED, "{row}");
                                assert_eq!(rb.status, StatusCode::ACCEPTED, "{row}");
                            }
                        }
                        continue;
                    }
                    if allowed {
                        assert_eq!(ra.status, a.ok, "{row}: {:?}", ra.body);
                    } else {
                        assert!(
                            ra.status == StatusCode::UNAUTHORIZED
                                || ra.status == StatusCode::FORBIDDEN,
                            "{row}: unauthorized success or leak: {:?} {:?}",
                            ra.status,
                            ra.body
                        );
                        if via == Via::Basic && caller != Caller::Anonymous {
                            ra.assert_error(StatusCode::FORBIDDEN, "DENIED");
                        } else {
                            ra.assert_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
                            let challenge = ra.header("www-authenticate").expect(&row);
                            assert!(challenge.starts_with("Bearer realm="), "{challenge}");
                            assert!(challenge.contains(&format!("repository:{existing}:")));
                        }
                        assert_eq!(
                            anonymized(&ra, &existing),
                            anonymized(&rb, &missing),
                            "{row}: a denial must not tell whether the repository exists"
                        );
                    }
                }
            }
        }
    }
    assert_eq!(rows, CALLERS.len() * 2 * 2 * OPS.len());
    // Nothing was pushed by a caller without push rights.
    for caller in CALLERS {
        if expected_rights(caller, true).1 {
            continue;
        }
        let data = format!("pushed by {caller:?}").into_bytes();
        for ns in ["pub", "priv"] {
            let r = fx
                .admin
                .call(
                    Method::HEAD,
                    &format!("/v2/{ns}/app/blobs/{}", Digest::sha256_of(&data)),
                    "",
                )
                .await;
            assert_eq!(
                r.status,
                StatusCode::NOT_FOUND,
                "{caller:?} pushed into {ns}"
            );
        }
    }
    drop(fx.issuer);
}
