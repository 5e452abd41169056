//! Workload identity against a real issuer: the harness cluster's kube-apiserver, whose
//! ServiceAccount tokens (TokenRequest API, via `kubectl create token`) are verified through
//! its OIDC discovery document and JWKS over HTTPS, trusting the cluster CA through the
//! federation's `caBundle`.
//!
//! Needs the binaries from `tests/harness/install`; without them the test fails.

use std::time::SystemTime;

use dataplane::auth::oidc::{OidcError, OidcVerifier};
use dataplane::config::{ClaimRule, FederationConfig, Scope};
use testkit::cluster::Cluster;

const AUDIENCE: &str = "registry";

fn federation(cluster: &Cluster, ca_bundle: &str, subject: &str) -> FederationConfig {
    FederationConfig {
        name: "cluster-ci".to_owned(),
        issuer: cluster.server().to_owned(),
        audience: AUDIENCE.to_owned(),
        claim_rules: vec![ClaimRule {
            claim: "sub".to_owned(),
            values: vec![subject.to_owned()],
        }],
        scope: Scope::ContainerRegistryPull,
        namespaces: vec!["team".to_owned()],
        ca_bundle: Some(ca_bundle.to_owned()),
    }
}

#[test]
fn service_account_tokens_verify_through_the_apiserver_discovery_document() {
    let cluster = Cluster::start("oidc").expect("start cluster");
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
    let subject = format!("system:serviceaccount:{ns}:ci");
    let federations = [federation(&cluster, &ca_bundle, &subject)];
    let verifier = OidcVerifier::new();

    let ci = cluster
        .service_account_token(&ns, "ci", AUDIENCE)
        .expect("kubectl create token");
    let other = cluster
        .service_account_token(&ns, "other", AUDIENCE)
        .expect("kubectl create token");
    let elsewhere = cluster
        .service_account_token(&ns, "ci", "someone-else")
        .expect("kubectl create token");

    runtime.block_on(async {
        let identities = verifier
            .verify(&ci, &federations, SystemTime::now())
            .await
            .expect("the ci token verifies");
        assert_eq!(identities.len(), 1);
        assert_eq!(identities[0].federation, 0);
        assert_eq!(identities[0].issuer, cluster.server());
        assert_eq!(identities[0].subject, subject);

        let err = verifier
            .verify(&other, &federations, SystemTime::now())
            .await
            .expect_err("another ServiceAccount is not accepted");
        assert!(matches!(err, OidcError::ClaimsMismatch), "{err:?}");

        let err = verifier
            .verify(&elsewhere, &federations, SystemTime::now())
            .await
            .expect_err("another audience is not accepted");
        assert!(matches!(err, OidcError::AudienceMismatch), "{err:?}");

        // Without the cluster CA the issuer's certificate is not trusted.
        let untrusted = [FederationConfig {
            ca_bundle: None,
            ..federations[0].clone()
        }];
        let err = OidcVerifier::new()
            .verify(&ci, &untrusted, SystemTime::now())
            .await
            .expect_err("untrusted issuer certificate");
        assert!(
            matches!(err, OidcError::IssuerUnavailable { .. }),
            "{err:?}"
        );
    });
    drop(namespace);
}
