//! The token service and the challenge flow, in-process: challenges and realms, the OAuth
//! grants, refresh tokens, invalid tokens, live revocation by a configuration reload, and the
//! closed mode of a public listener without access control.

use std::sync::Arc;

use axum::http::{Method, StatusCode};
use base64::Engine as _;

use super::{Reply, TestApp};
use crate::auth::secret::hash_secret;
use crate::auth::{AuthService, Transport};
use crate::config::{Config, ConfigReloader, ConfigSource};
use crate::http::{AppState, build_app};
use crate::live::{Applier, Source};
use crate::oci::Digest;
use crate::registry::Registry;
use crate::storage::memory::MemoryStorage;
use crate::telemetry::ConfigMetrics;

fn document(extra_credential: bool, tokens: &str) -> String {
    let ci = hash_secret("ci-secret").unwrap();
    let mut doc = format!(
        r#"
apiVersion: registry.thalassa.cloud/v1alpha1
kind: DataPlaneConfig
region: test
namespaces: [{{name: acme, visibility: private}}]
tokens: {tokens}
credentials:
  - {{id: ci, secretHash: "{ci}", scope: containerRegistry, namespaces: [acme]}}
"#
    );
    if extra_credential {
        let deploy = hash_secret("deploy-secret").unwrap();
        doc.push_str(&format!(
            "  - {{id: deploy, secretHash: \"{deploy}\", scope: \"containerRegistry:pull\", namespaces: [acme]}}\n"
        ));
    }
    doc
}

pub(super) fn app_for(config: Config, transport: Transport) -> TestApp {
    let storage: Arc<dyn crate::storage::Storage> = Arc::new(MemoryStorage::new());
    let registry = Arc::new(Registry::new(Arc::clone(&storage)));
    let state = AppState::with_config(registry, config, transport).expect("applies");
    TestApp {
        router: build_app(state),
        storage,
    }
}

fn enforced(tokens: &str) -> TestApp {
    let config = crate::config::Config::from_yaml_str(&document(true, tokens)).unwrap();
    app_for(config, Transport::default())
}

/// An app whose one namespace `acme` trusts the tokens of `issuer_url` for audience `registry`
/// (federation `ci`, push and pull).
fn federated_app(issuer_url: &str) -> TestApp {
    let yaml = format!(
        r#"
apiVersion: registry.thalassa.cloud/v1alpha1
kind: DataPlaneConfig
namespaces: [{{name: acme}}]
federations:
  - {{name: ci, issuer: "{issuer_url}", audience: registry, scope: containerRegistry, namespaces: [acme]}}
"#
    );
    app_for(
        crate::config::Config::from_yaml_str(&yaml).unwrap(),
        Transport::default(),
    )
}

pub(super) fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

pub(super) async fn post_form(app: &TestApp, form: &str) -> Reply {
    app.call_with(
        Method::POST,
        "/token",
        &[("content-type", "application/x-www-form-urlencoded")],
        form.to_owned(),
    )
    .await
}

async fn push_with(app: &TestApp, authorization: &str, data: &[u8]) -> Reply {
    app.call_with(
        Method::POST,
        &format!(
            "/v2/acme/app/blobs/uploads/?digest={}",
            Digest::sha256_of(data)
        ),
        &[("authorization", authorization)],
        data.to_vec(),
    )
    .await
}

#[tokio::test]
async fn the_base_endpoint_challenges_anonymous_callers_with_the_realm_of_the_host() {
    let app = enforced("{}");
    let r = app
        .call_with(
            Method::GET,
            "/v2/",
            &[("host", "registry.example:5000")],
            "",
        )
        .await;
    r.assert_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    assert_eq!(
        r.header("www-authenticate"),
        Some(r#"Bearer realm="http://registry.example:5000/token",service="test""#)
    );
    let r = app
        .call_with(
            Method::GET,
            "/v2/",
            &[("host", "registry.example"), ("x-forwarded-proto", "https")],
            "",
        )
        .await;
    assert_eq!(
        r.header("www-authenticate"),
        Some(r#"Bearer realm="https://registry.example/token",service="test""#)
    );
    // A Host header that could break out of the quoted realm is not echoed.
    let r = app
        .call_with(Method::GET, "/v2/", &[("host", "evil\",x=\"y")], "")
        .await;
    assert_eq!(
        r.header("www-authenticate"),
        Some(r#"Bearer realm="http://localhost/token",service="test""#)
    );
    let r = app
        .call_with(
            Method::GET,
            "/v2/",
            &[("authorization", &basic("ci", "ci-secret"))],
            "",
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);

    let app = enforced("{realm: \"https://auth.example/token\", service: registry.example}");
    let r = app.call(Method::GET, "/v2/", "").await;
    assert_eq!(
        r.header("www-authenticate"),
        Some(r#"Bearer realm="https://auth.example/token",service="registry.example""#)
    );
}

#[tokio::test]
async fn oauth_password_grant_with_refresh_token() {
    let app = enforced("{ttl: 2m}");
    let r = post_form(
        &app,
        "grant_type=password&username=ci&password=ci-secret&service=test&client_id=test\
         &access_type=offline&scope=repository%3Aacme%2Fapp%3Apull%2Cpush",
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let body = r.json();
    assert_eq!(body["expires_in"], 120);
    assert_eq!(body["scope"], "repository:acme/app:pull,push");
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let access = body["access_token"].as_str().unwrap().to_owned();
    let refresh = body["refresh_token"].as_str().unwrap().to_owned();

    let r = push_with(&app, &format!("Bearer {access}"), b"via access token").await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);

    // A refresh token is not an access token.
    let r = push_with(&app, &format!("Bearer {refresh}"), b"x").await;
    r.assert_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    assert!(
        r.header("www-authenticate")
            .unwrap()
            .contains("error=\"invalid_token\"")
    );

    let r = post_form(
        &app,
        &format!(
            "grant_type=refresh_token&refresh_token={refresh}&service=test\
             &scope=repository%3Aacme%2Fapp%3Apull"
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.json()["scope"], "repository:acme/app:pull");
    assert!(r.json().get("refresh_token").is_none());
    // An access token is not a refresh token.
    let r = post_form(
        &app,
        &format!("grant_type=refresh_token&refresh_token={access}"),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.json()["error"], "invalid_grant");
}

#[tokio::test]
async fn refused_grants_say_what_is_wrong() {
    let app = enforced("{}");
    let r = post_form(&app, "grant_type=password&username=ci&password=wrong").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.json()["error"], "invalid_grant");
    assert_eq!(
        r.json()["error_description"],
        "invalid username or password"
    );
    let r = post_form(
        &app,
        "grant_type=password&username=nobody&password=ci-secret",
    )
    .await;
    assert_eq!(
        r.json()["error_description"],
        "invalid username or password"
    );
    let r = post_form(&app, "grant_type=client_credentials").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.json()["error"], "unsupported_grant_type");
    let r = post_form(
        &app,
        "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange&subject_token=nope",
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    let r = app
        .call_with(
            Method::GET,
            "/token?scope=repository%3Aacme%2Fapp%3Apull",
            &[("authorization", &basic("ci", "wrong"))],
            "",
        )
        .await;
    r.assert_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED");

    // Anonymous tokens grant nothing in a private namespace.
    let r = app
        .call(
            Method::GET,
            "/token?scope=repository%3Aacme%2Fapp%3Apull%2Cpush",
            "",
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["scope"], "");

    let r = push_with(&app, "Bearer not-a-token", b"x").await;
    r.assert_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    let r = push_with(&app, "Digest whatever", b"x").await;
    r.assert_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
}

#[tokio::test]
async fn pull_only_tokens_are_refused_push_with_a_challenge_for_the_missing_action() {
    let app = enforced("{}");
    let r = app
        .call_with(
            Method::GET,
            "/token?scope=repository%3Aacme%2Fapp%3Apull%2Cpush",
            &[("authorization", &basic("deploy", "deploy-secret"))],
            "",
        )
        .await;
    assert_eq!(r.json()["scope"], "repository:acme/app:pull");
    let token = r.json()["token"].as_str().unwrap().to_owned();
    let r = push_with(&app, &format!("Bearer {token}"), b"denied").await;
    r.assert_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    assert!(
        r.json()["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("does not grant push"),
        "{:?}",
        r.body
    );
    let challenge = r.header("www-authenticate").unwrap();
    assert!(
        challenge.contains(r#"scope="repository:acme/app:pull,push""#),
        "{challenge}"
    );
    assert!(
        challenge.contains(r#"error="insufficient_scope""#),
        "{challenge}"
    );
    // Basic credentials that lack the right get a plain 403.
    let r = push_with(&app, &basic("deploy", "deploy-secret"), b"denied").await;
    r.assert_error(StatusCode::FORBIDDEN, "DENIED");
}

#[tokio::test]
async fn a_reload_revokes_credentials_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, document(true, "{}")).unwrap();
    let (first, reloader) =
        ConfigReloader::start(ConfigSource::new(Some(path.clone()), None)).expect("config");
    let mut reloader = reloader.expect("a file source reloads");
    let auth = AuthService::new(Transport::default());
    let (applier, live) = Applier::new(
        Arc::clone(&auth),
        first.config.settings.clone(),
        ConfigMetrics::default(),
    );
    applier.apply(Source::Startup, first).expect("applies");
    let storage: Arc<dyn crate::storage::Storage> = Arc::new(MemoryStorage::new());
    let registry = Arc::new(Registry::new(Arc::clone(&storage)));
    let app = TestApp {
        router: build_app(AppState::new(registry, auth, live)),
        storage,
    };

    let deploy = basic("deploy", "deploy-secret");
    let r = app
        .call_with(
            Method::GET,
            "/v2/acme/app/tags/list",
            &[("authorization", &deploy)],
            "",
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::NOT_FOUND,
        "allowed, nothing there: {:?}",
        r.body
    );
    let r = post_form(
        &app,
        "grant_type=password&username=deploy&password=deploy-secret&access_type=offline",
    )
    .await;
    let refresh = r.json()["refresh_token"].as_str().unwrap().to_owned();

    std::fs::write(&path, document(false, "{}")).unwrap();
    match reloader.poll().await {
        crate::config::ReloadOutcome::Changed(document) => {
            applier.apply(Source::File, *document).expect("applies");
        }
        other => panic!("expected a changed document, got {other:?}"),
    }
    let r = app
        .call_with(
            Method::GET,
            "/v2/acme/app/tags/list",
            &[("authorization", &deploy)],
            "",
        )
        .await;
    r.assert_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    let r = post_form(
        &app,
        &format!("grant_type=refresh_token&refresh_token={refresh}"),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{:?}", r.body);
}

#[tokio::test]
async fn a_public_listener_without_access_control_allows_nothing() {
    let app = app_for(
        Config::default(),
        Transport {
            tls: false,
            public: true,
        },
    );
    let r = app.call(Method::GET, "/v2/", "").await;
    r.assert_error(StatusCode::FORBIDDEN, "DENIED");
    let r = app
        .call(Method::GET, "/v2/any/repo/manifests/latest", "")
        .await;
    r.assert_error(StatusCode::FORBIDDEN, "DENIED");
    let data = b"nope";
    let r = app
        .call(
            Method::POST,
            &format!(
                "/v2/any/repo/blobs/uploads/?digest={}",
                Digest::sha256_of(data)
            ),
            data.to_vec(),
        )
        .await;
    r.assert_error(StatusCode::FORBIDDEN, "DENIED");
    let r = app.call(Method::GET, "/v2/_catalog", "").await;
    r.assert_error(StatusCode::FORBIDDEN, "DENIED");
}

#[tokio::test]
async fn an_unreachable_identity_provider_is_a_retryable_503() {
    let issuer = super::authz::issuer::TestIssuer::start().await;
    let url = issuer.url().to_owned();
    let now = crate::auth::token::unix_seconds(std::time::SystemTime::now());
    let token = issuer.sign(&serde_json::json!({
        "iss": url, "sub": "job", "aud": "registry", "exp": now + 600, "iat": now,
    }));
    drop(issuer);
    let app = federated_app(&url);
    let r = post_form(
        &app,
        &format!("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange&subject_token={token}"),
    )
    .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", r.body);
    assert_eq!(r.json()["error"], "temporarily_unavailable");
    let r = app
        .call_with(
            Method::GET,
            "/v2/acme/app/tags/list",
            &[("authorization", &basic("oidc", &token))],
            "",
        )
        .await;
    r.assert_error(StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE");
    assert_eq!(r.header("retry-after"), Some("5"));
}

#[tokio::test]
async fn a_mount_with_a_token_that_does_not_cover_the_source_asks_for_one_that_does() {
    let app = enforced("{}");
    let ci = basic("ci", "ci-secret");
    let data = b"shared layer";
    let digest = Digest::sha256_of(data);
    let r = app
        .call_with(
            Method::POST,
            &format!("/v2/acme/src/blobs/uploads/?digest={digest}"),
            &[("authorization", &ci)],
            data.to_vec(),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let token = |scope: &'static str| {
        let app = &app;
        let ci = ci.clone();
        async move {
            let r = app
                .call_with(
                    Method::GET,
                    &format!("/token?{scope}"),
                    &[("authorization", &ci)],
                    "",
                )
                .await;
            format!("Bearer {}", r.json()["token"].as_str().unwrap())
        }
    };
    let mount = format!("/v2/acme/app/blobs/uploads/?mount={digest}&from=acme/src");

    let narrow = token("scope=repository%3Aacme%2Fapp%3Apull%2Cpush").await;
    let r = app
        .call_with(Method::POST, &mount, &[("authorization", &narrow)], "")
        .await;
    r.assert_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    let challenge = r.header("www-authenticate").unwrap();
    assert!(
        challenge.contains(r#"scope="repository:acme/app:pull,push repository:acme/src:pull""#),
        "{challenge}"
    );

    let wide =
        token("scope=repository%3Aacme%2Fapp%3Apull%2Cpush&scope=repository%3Aacme%2Fsrc%3Apull")
            .await;
    let r = app
        .call_with(Method::POST, &mount, &[("authorization", &wide)], "")
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);

    // A token that asked for a source it may not read gets an ordinary session, no challenge.
    let denied = token(
        "scope=repository%3Aacme%2Fapp%3Apull%2Cpush&scope=repository%3Aelsewhere%2Fsrc%3Apull",
    )
    .await;
    let r = app
        .call_with(
            Method::POST,
            &format!("/v2/acme/app/blobs/uploads/?mount={digest}&from=elsewhere/src"),
            &[("authorization", &denied)],
            "",
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
}

#[tokio::test]
async fn a_workload_identity_gets_a_pull_only_refresh_token_that_works_as_a_password() {
    let issuer = super::authz::issuer::TestIssuer::start().await;
    let url = issuer.url().to_owned();
    let now = crate::auth::token::unix_seconds(std::time::SystemTime::now());
    let token = issuer.sign(&serde_json::json!({
        "iss": url, "sub": "system:serviceaccount:apps:puller", "aud": "registry",
        "exp": now + 600, "iat": now,
    }));
    let app = federated_app(&url);
    let scope = "scope=repository%3Aacme%2Fapp%3Apull%2Cpush";
    let exchange = format!(
        "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange&subject_token={token}&{scope}"
    );
    // Without access_type=offline: an access token only (the federation may push).
    let r = post_form(&app, &exchange).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.json()["scope"], "repository:acme/app:pull,push");
    assert!(r.json().get("refresh_token").is_none());
    let r = post_form(&app, &format!("{exchange}&access_type=offline")).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let refresh = r.json()["refresh_token"].as_str().unwrap().to_owned();
    // It never outlives the OIDC token that proved the identity.
    let payload = refresh.split('.').nth(1).unwrap();
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    assert!(claims["exp"].as_u64().unwrap() <= now + 600, "{claims}");
    assert_eq!(claims["federations"], serde_json::json!(["ci"]));

    // Presented as the password of `<token>`: pull only, through the password grant and
    // through Basic authentication at GET /token.
    let r = post_form(
        &app,
        &format!("grant_type=password&username=%3Ctoken%3E&password={refresh}&{scope}"),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.json()["scope"], "repository:acme/app:pull");
    let r = app
        .call_with(
            Method::GET,
            &format!("/token?service=registry&{scope}"),
            &[("authorization", &basic("<token>", &refresh))],
            "",
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.json()["scope"], "repository:acme/app:pull");
    // As the refresh token grant, the same.
    let r = post_form(
        &app,
        &format!("grant_type=refresh_token&refresh_token={refresh}&{scope}"),
    )
    .await;
    assert_eq!(r.json()["scope"], "repository:acme/app:pull");
    // An access token is no refresh token, and a forged one is refused.
    let access = r.json()["token"].as_str().unwrap().to_owned();
    for password in [access.as_str(), "not-a-token"] {
        let r = post_form(
            &app,
            &format!("grant_type=password&username=%3Ctoken%3E&password={password}&{scope}"),
        )
        .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{:?}", r.body);
    }
}
