//! Tests of the access-control service's pure parts; the flows are tested through HTTP in
//! `crate::http::tests::{authz, token}`.

use super::*;

#[test]
fn scopes_parse_like_docker_clients_send_them() {
    let parsed = ScopeRequest::parse_all([
        "repository:acme/app:pull,push repository(plugin):acme/x:pull",
        "registry:catalog:*",
        "repository:acme/app:",
        "repository:Bad/Name:pull",
        "unknown:thing:pull",
        "garbage",
    ]);
    let repo = |s: &str| s.parse::<RepoName>().unwrap();
    assert_eq!(
        parsed,
        vec![
            ScopeRequest::Repository(repo("acme/app"), vec!["pull".into(), "push".into()]),
            ScopeRequest::Repository(repo("acme/x"), vec!["pull".into()]),
            ScopeRequest::Catalog,
            ScopeRequest::Repository(repo("acme/app"), vec![]),
        ]
    );
}

#[test]
fn principals_name_themselves_in_tokens_and_logs() {
    assert_eq!(Principal::Anonymous.subject(), "");
    assert_eq!(Principal::Anonymous.to_string(), "anonymous");
    assert_eq!(
        Principal::Credential("ci".into()).to_string(),
        "credential:ci"
    );
    let federated = Principal::Federated {
        federation: "gitlab".into(),
        subject: "project_path:acme/app".into(),
    };
    assert_eq!(
        federated.subject(),
        "federation:gitlab:project_path:acme/app"
    );
}

#[tokio::test]
async fn tokens_grant_the_intersection_of_request_and_rights() {
    let yaml = format!(
        r#"
apiVersion: registry.thalassa.cloud/v1alpha1
kind: DataPlaneConfig
namespaces: [{{name: acme, visibility: private}}, {{name: shared, visibility: public}}]
credentials:
  - {{id: ci, secretHash: "{}", scope: "containerRegistry:pull", namespaces: [acme]}}
"#,
        secret::hash_secret("s").unwrap()
    );
    let config = Config::from_yaml_str(&yaml).unwrap();
    let auth = AuthService::new(Transport::default());
    let index = auth
        .build_index(Arc::new(config))
        .expect("the index builds");
    assert_eq!(index.mode(), Mode::Enforced);
    let identity = auth
        .authenticate_password(&index, "ci", "s", None, SystemTime::now())
        .await
        .unwrap();
    let requested = ScopeRequest::parse_all([
        "repository:acme/app:pull,push,delete repository:shared/base:* \
         repository:other/x:pull registry:catalog:*",
    ]);
    let issued = auth
        .issue_access_token(&index, &identity, &requested, SystemTime::now())
        .unwrap();
    let c = &issued.claims;
    assert!(c.grants("repository", "acme/app", "pull"));
    assert!(!c.grants("repository", "acme/app", "push"));
    assert!(c.grants("repository", "shared/base", "pull"));
    assert!(!c.grants("repository", "shared/base", "push"));
    let other = c.access.iter().find(|a| a.name == "other/x").unwrap();
    assert!(other.actions.is_empty(), "asked, answered: nothing");
    assert_eq!(c.catalog, vec!["acme".to_owned(), "shared".to_owned()]);
    let verified = index.verify_access_token(&issued.token).unwrap();
    assert_eq!(*verified, issued.claims);
}

#[tokio::test]
async fn unknown_ids_are_checked_against_a_decoy_that_costs_what_the_stored_hashes_cost() {
    use argon2::password_hash::{PasswordHash, PasswordHasher, SaltString};
    let params = argon2::Params::new(32, 1, 1, None).unwrap();
    let cheap = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
        .hash_password(b"s", &SaltString::from_b64("c2FsdHNhbHQ").unwrap())
        .unwrap()
        .to_string();
    let yaml = format!(
        "apiVersion: registry.thalassa.cloud/v1alpha1\nkind: DataPlaneConfig\n\
         namespaces: [{{name: acme, visibility: private}}]\n\
         credentials: [{{id: ci, secretHash: \"{cheap}\", scope: containerRegistry, namespaces: [acme]}}]\n"
    );
    let auth = AuthService::new(Transport::default());
    let index = auth
        .build_index(Arc::new(Config::from_yaml_str(&yaml).unwrap()))
        .unwrap();
    let decoy = PasswordHash::new(&index.decoy).unwrap();
    assert_eq!(decoy.params, PasswordHash::new(&cheap).unwrap().params);
    let unknown = auth
        .authenticate_password(&index, "nobody", "s", None, SystemTime::now())
        .await;
    assert!(
        matches!(unknown, Err(AuthError::InvalidCredentials)),
        "{unknown:?}"
    );

    let without = auth.build_index(Arc::new(Config::default())).unwrap();
    assert_eq!(
        without.decoy,
        secret::default_decoy(),
        "no credential: default parameters"
    );
}
