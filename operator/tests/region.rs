//! A region run from its objects: a namespace and a credential applied with kubectl are
//! served by the real data plane, which follows the operator's configuration Secret.

mod common;

use std::time::Duration;

use crds::v1alpha1::{RegistryCredential, RegistryNamespace};
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use testkit::clients::{Client, pull_image, push_image, unique_repo_in};

use common::{Region, cluster, credentials_of, ready, wait_object};

const CONVERGE: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread")]
async fn a_namespace_and_a_credential_are_served_pushed_to_and_revoked() {
    let region = Region::start(&["acme"]).await;
    let project = region.project(Some("acme")).await;
    let p = project.name();
    region
        .apply(&region.namespace_manifest(p, "apps", ""))
        .unwrap();
    region
        .apply(&region.credential_manifest(p, "ci", "containerRegistry", &["apps"], ""))
        .unwrap();

    let client = cluster().client().await.unwrap();
    let namespaces = Api::<RegistryNamespace>::namespaced(client.clone(), p);
    let creds = Api::<RegistryCredential>::namespaced(client.clone(), p);
    let secrets = Api::<Secret>::namespaced(client.clone(), p);
    wait_object(&creds, "ci", CONVERGE, |c| {
        let status = c.status.as_ref()?;
        (ready(c, &status.conditions)? == ("True".into(), "Ready".into())).then_some(())
    })
    .await;
    let ns = wait_object(&namespaces, "apps", CONVERGE, |n| {
        let status = n.status.as_ref()?;
        (ready(n, &status.conditions)?.0 == "True").then(|| status.clone())
    })
    .await;
    assert_eq!(
        ns.endpoint.as_deref(),
        Some(format!("{}/apps", region.host).as_str())
    );
    assert_eq!(ns.observed_generation, Some(1));

    // The printer columns.
    let table = cluster()
        .kubectl_ok(["get", "registrycredentials", "-n", p])
        .unwrap();
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME", "REGION", "SCOPE", "USERNAME", "READY", "REASON", "AGE"
        ]
    );
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(
        &row[..6],
        [
            "ci",
            region.name.as_str(),
            "containerRegistry",
            &format!("{p}.ci"),
            "True",
            "Ready"
        ]
    );
    let table = cluster().kubectl_ok(["get", "rns", "-n", p]).unwrap();
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "REGION",
            "VISIBILITY",
            "READY",
            "REASON",
            "ENDPOINT",
            "AGE"
        ]
    );
    assert!(table.contains(&format!("{}/apps", region.host)), "{table}");

    // The delivered Secret pushes and pulls with skopeo; anonymous pulls are refused.
    let secret = secrets.get("ci").await.unwrap();
    assert_eq!(
        secret.type_.as_deref(),
        Some("kubernetes.io/dockerconfigjson")
    );
    let login = credentials_of(&secret);
    assert_eq!(login.username, format!("{p}.ci"));
    let reference = format!("{}/{}:v1", region.host, unique_repo_in("apps", "skopeo"));
    let pushed = push_image(Client::Skopeo, &reference, Some(&login)).unwrap();
    assert!(pushed.succeeded(), "push: {}", pushed.output.stderr);
    let pulled = pull_image(Client::Skopeo, &reference, Some(&login)).unwrap();
    assert_eq!(
        pulled.digest, pushed.digest,
        "pull: {}",
        pulled.output.stderr
    );
    assert!(
        !pull_image(Client::Skopeo, &reference, None)
            .unwrap()
            .succeeded()
    );

    // The secret itself is kept only in the credential's Secret: nothing in the operator's
    // namespace (which the data plane may read) holds it.
    let own = Api::<Secret>::namespaced(client.clone(), region.system.name())
        .list(&Default::default())
        .await
        .unwrap();
    assert!(!own.items.is_empty());
    for secret in &own.items {
        for (key, value) in secret.data.iter().flatten() {
            assert!(
                !String::from_utf8_lossy(&value.0).contains(&login.password),
                "{}/{key} holds the secret",
                secret.metadata.name.as_deref().unwrap_or_default()
            );
        }
    }
    // So a Secret deleted by hand comes back with a new secret; the old one keeps working for
    // the overlap.
    secrets.delete("ci", &Default::default()).await.unwrap();
    let renewed = wait_object(&secrets, "ci", CONVERGE, |s| {
        let login = credentials_of(s);
        (s.metadata.deletion_timestamp.is_none() && !login.password.is_empty()).then_some(login)
    })
    .await;
    assert_ne!(renewed.password, login.password);
    for who in [&renewed, &login] {
        eventually("both secrets push during the overlap", || {
            let other = format!("{}/{}:v1", region.host, unique_repo_in("apps", "skopeo"));
            push_image(Client::Skopeo, &other, Some(who))
                .unwrap()
                .succeeded()
        })
        .await;
    }
    let login = renewed;

    // Public: anonymous pulls work.
    region
        .apply(&region.namespace_manifest(p, "apps", "  visibility: public\n"))
        .unwrap();
    eventually("anonymous pull of a public namespace", || {
        pull_image(Client::Skopeo, &reference, None).unwrap().digest == pushed.digest
    })
    .await;

    // Deleting the credential revokes it and removes its Secret.
    cluster()
        .kubectl_ok(["delete", "rcred", "-n", p, "ci", "--wait=false"])
        .unwrap();
    wait_object_gone(&secrets, "ci").await;
    eventually("the deleted credential stops working", || {
        let other = format!("{}/{}:v1", region.host, unique_repo_in("apps", "skopeo"));
        !push_image(Client::Skopeo, &other, Some(&login))
            .unwrap()
            .succeeded()
    })
    .await;

    // Deleting the namespace stops serving it.
    cluster()
        .kubectl_ok(["delete", "rns", "-n", p, "apps"])
        .unwrap();
    eventually("the deleted namespace is no longer served", || {
        !pull_image(Client::Skopeo, &reference, None)
            .unwrap()
            .succeeded()
    })
    .await;
    project.cleanup().await.unwrap();
}

/// Retries a blocking probe until it holds, or panics after the convergence time.
async fn eventually(what: &str, mut probe: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + CONVERGE;
    while !tokio::task::block_in_place(&mut probe) {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not within {CONVERGE:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn wait_object_gone(api: &Api<Secret>, name: &str) {
    let deadline = std::time::Instant::now() + CONVERGE;
    while api.get_opt(name).await.unwrap().is_some() {
        assert!(std::time::Instant::now() < deadline, "{name} still exists");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
