//! The operator's retention endpoints: only the operator's tokens may call them; a plan is
//! kept and a run deletes what it planned, and nothing when the policy changed since.

use std::time::{Duration, SystemTime};

use axum::http::{Method, StatusCode};
use serde_json::json;

use super::{Reply, TestApp};
use crate::auth::Transport;
use crate::auth::secret::hash_secret;
use crate::auth::token::{Claims, KeySet, ResourceAccess, generate_key};
use crate::config::Config;
use crate::http::internal::{INTERNAL_KIND, OPERATOR_SUBJECT, RETENTION_RESOURCE};

const PLAN: &str = "/internal/v1/retention/plan";
const RUN: &str = "/internal/v1/retention/run";

fn request(keep: u32) -> String {
    json!({
        "policy": "acme-project/nightly",
        "scope": {"namespaces": ["acme"]},
        "rules": {"keepLast": [{"tags": "*", "count": keep}]},
        "inUse": [],
    })
    .to_string()
}

async fn post(app: &TestApp, uri: &str, authorization: Option<&str>, body: String) -> Reply {
    let mut headers = vec![("content-type", "application/json")];
    if let Some(a) = authorization {
        headers.push(("authorization", a));
    }
    app.call_with(Method::POST, uri, &headers, body).await
}

/// Pushes `n` images tagged `t0..t{n-1}`, oldest first.
async fn push_tags(app: &TestApp, n: usize) {
    for i in 0..n {
        app.push_image("acme/app", &format!("t{i}"), &format!("seed {i}"))
            .await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn tags(app: &TestApp) -> Vec<String> {
    let repo = TestApp::repo("acme/app");
    let tags = app.storage.tags(&repo).await.unwrap();
    tags.iter().map(|t| t.as_str().to_owned()).collect()
}

#[tokio::test]
async fn an_open_registry_plans_and_runs_a_policy() {
    let app = TestApp::new();
    push_tags(&app, 5).await;

    let r = post(&app, RUN, None, request(2)).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{:?}", r.body);
    assert!(r.json()["message"].as_str().unwrap().contains("plan first"));

    let r = post(&app, PLAN, None, request(2)).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let plan = r.json();
    assert_eq!(plan["summary"]["tags"], 3);
    assert_eq!(plan["summary"]["manifests"], 3);
    let items: Vec<&str> = plan["summary"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["tag"].as_str())
        .collect();
    assert_eq!(items, ["t0", "t1", "t2"]);
    assert_eq!(tags(&app).await.len(), 5, "planning deletes nothing");

    // The policy changed since the plan: the run refuses.
    let r = post(&app, RUN, None, request(1)).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert!(r.json()["message"].as_str().unwrap().contains("plan again"));
    assert_eq!(tags(&app).await.len(), 5);

    let r = post(&app, RUN, None, request(2)).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.json()["summary"]["tags"], 3);
    assert_eq!(tags(&app).await, ["t3", "t4"]);
    let pulled = app.call(Method::GET, "/v2/acme/app/manifests/t4", "").await;
    assert_eq!(pulled.status, StatusCode::OK);
    let gone = app.call(Method::GET, "/v2/acme/app/manifests/t0", "").await;
    gone.assert_error(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN");
}

#[tokio::test]
async fn bad_requests_are_refused_with_what_is_wrong() {
    let app = TestApp::new();
    let unsafe_rules = json!({
        "policy": "p/n", "scope": {"namespaces": ["acme"]},
        "rules": {"deleteOlderThan": "2h"}, "inUse": []
    });
    let r = post(&app, PLAN, None, unsafe_rules.to_string()).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.json()["message"].as_str().unwrap().contains("keep rule"));
    let bad_policy = json!({
        "policy": "../../etc", "scope": {"namespaces": ["acme"]},
        "rules": {"keepLast": [{"tags": "*", "count": 1}]}
    });
    let r = post(&app, PLAN, None, bad_policy.to_string()).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = post(&app, PLAN, None, "{not json".into()).await;
    assert!(r.status.is_client_error());
}

#[tokio::test]
async fn only_the_operators_tokens_reach_the_endpoints() {
    let key = generate_key("k1");
    let ci = hash_secret("ci-secret").unwrap();
    let mut config = Config::from_yaml_str(&format!(
        r#"
apiVersion: registry.thalassa.cloud/v1alpha1
kind: DataPlaneConfig
region: test
namespaces: [{{name: acme}}]
credentials:
  - {{id: ci, secretHash: "{ci}", scope: containerRegistry, namespaces: [acme]}}
"#
    ))
    .unwrap();
    config.spec.tokens.keys = vec![key.clone()];
    config.spec.tokens.active = Some("k1".into());
    let keys = KeySet::load(&config.spec.tokens, &key).unwrap();
    let app = super::token::app_for(config, Transport::default());

    let token = |sub: &str, kind: &str, name: &str| {
        let mut claims = Claims::new("test", sub, SystemTime::now(), Duration::from_secs(60));
        claims.access = vec![ResourceAccess {
            kind: kind.into(),
            name: name.into(),
            actions: vec!["*".into()],
        }];
        format!("Bearer {}", keys.sign(&claims).unwrap())
    };
    let operator = token(OPERATOR_SUBJECT, INTERNAL_KIND, RETENTION_RESOURCE);
    for (authorization, status) in [
        (None, StatusCode::UNAUTHORIZED),
        (
            Some("Bearer not-a-token".to_owned()),
            StatusCode::UNAUTHORIZED,
        ),
        // A credential's own token, even one that lists the resource.
        (
            Some(token("ci", INTERNAL_KIND, RETENTION_RESOURCE)),
            StatusCode::FORBIDDEN,
        ),
        (
            Some(token(OPERATOR_SUBJECT, "repository", "acme/app")),
            StatusCode::FORBIDDEN,
        ),
        (Some(operator.clone()), StatusCode::OK),
    ] {
        let r = post(&app, PLAN, authorization.as_deref(), request(1)).await;
        assert_eq!(r.status, status, "{authorization:?}: {:?}", r.body);
    }

    // Basic credentials are no way in either.
    let basic = super::token::basic("ci", "ci-secret");
    let r = post(&app, PLAN, Some(&basic), request(1)).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    // The token service never issues the internal scope.
    let r = super::token::post_form(
        &app,
        "grant_type=password&service=test&client_id=x&username=ci&password=ci-secret&scope=internal:retention:*",
    )
    .await;
    if r.status == StatusCode::OK {
        let issued = r.json()["access_token"].as_str().unwrap().to_owned();
        let r = post(&app, PLAN, Some(&format!("Bearer {issued}")), request(1)).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN);
    }
}
