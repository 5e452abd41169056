//! What the operator reports on objects it cannot serve: conflicts, grants across tenants,
//! disabled feature gates, expired credentials, Secrets it did not make, and objects of other
//! regions (left untouched).

mod common;

use std::time::Duration;

use crds::v1alpha1::{RegistryCredential, RegistryNamespace};
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::PostParams;

use common::{Region, cluster, ready, wait_object};

const CONVERGE: Duration = Duration::from_secs(15);

async fn reason_of_credential(api: &Api<RegistryCredential>, name: &str, want: &str) -> String {
    wait_object(api, name, CONVERGE, |c| {
        let status = c.status.as_ref()?;
        let (state, reason) = ready(c, &status.conditions)?;
        (reason == want).then(|| {
            assert_eq!(state, "False", "{name}: {status:?}");
            let stalled = status.conditions.iter().find(|c| c.type_ == "Stalled");
            assert!(
                stalled.is_some(),
                "{name}: refusals are Stalled for kstatus: {status:?}"
            );
            status.conditions[0].message.clone()
        })
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn refusals_are_reported_in_conditions() {
    let region = Region::operator_only(&["acme", "beta"]).await;
    let client = cluster().client().await.unwrap();
    let a = region.project(Some("acme")).await;
    let a2 = region.project(Some("acme")).await;
    let b = region.project(Some("beta")).await;
    let gated = region.project(Some("nogate")).await;
    let (a, a2, b, gated) = (a, a2, b, gated);

    region
        .apply(&region.namespace_manifest(a.name(), "shared", "  scope: organisation\n"))
        .unwrap();
    region
        .apply(&region.namespace_manifest(a.name(), "private-a", ""))
        .unwrap();
    let rns_a = Api::<RegistryNamespace>::namespaced(client.clone(), a.name());
    wait_object(&rns_a, "shared", CONVERGE, |n| {
        (ready(n, &n.status.as_ref()?.conditions)?.0 == "True").then_some(())
    })
    .await;

    // The same registry namespace claimed later from another project: Conflict.
    region
        .apply(&region.namespace_manifest(b.name(), "shared", ""))
        .unwrap();
    let rns_b = Api::<RegistryNamespace>::namespaced(client.clone(), b.name());
    let message = wait_object(&rns_b, "shared", CONVERGE, |n| {
        let status = n.status.as_ref()?;
        let (state, reason) = ready(n, &status.conditions)?;
        (reason == "Conflict").then(|| {
            assert_eq!(state, "False");
            status.conditions[0].message.clone()
        })
    })
    .await;
    assert!(
        message.contains("already claimed") && !message.contains(a.name()),
        "{message}"
    );

    // Tenancy.
    let creds = |ns: &str| Api::<RegistryCredential>::namespaced(client.clone(), ns);
    region
        .apply(&region.credential_manifest(a2.name(), "org", "containerRegistry", &["shared"], ""))
        .unwrap();
    region
        .apply(&region.credential_manifest(
            a2.name(),
            "proj",
            "containerRegistry",
            &["private-a"],
            "",
        ))
        .unwrap();
    region
        .apply(&region.credential_manifest(
            b.name(),
            "cross",
            "containerRegistry:pull",
            &["shared"],
            "",
        ))
        .unwrap();
    wait_object(&creds(a2.name()), "org", CONVERGE, |c| {
        (ready(c, &c.status.as_ref()?.conditions)?.0 == "True").then_some(())
    })
    .await;
    let message = reason_of_credential(&creds(a2.name()), "proj", "NotPermitted").await;
    assert!(
        message.contains("\"private-a\"") && message.contains("nothing was issued"),
        "{message}"
    );
    reason_of_credential(&creds(b.name()), "cross", "NotPermitted").await;
    // Nothing is issued for a refused credential.
    let secrets = |ns: &str| Api::<Secret>::namespaced(client.clone(), ns);
    assert!(secrets(a2.name()).get_opt("proj").await.unwrap().is_none());
    assert!(secrets(b.name()).get_opt("cross").await.unwrap().is_none());

    // A disabled feature gate.
    region
        .apply(&region.namespace_manifest(gated.name(), "gated", ""))
        .unwrap();
    let message = wait_object(
        &Api::<RegistryNamespace>::namespaced(client.clone(), gated.name()),
        "gated",
        CONVERGE,
        |n| {
            let status = n.status.as_ref()?;
            (ready(n, &status.conditions)?.1 == "FeatureGateDisabled")
                .then(|| status.conditions[0].message.clone())
        },
    )
    .await;
    assert!(
        message.contains("\"nogate\"") && message.contains("containerRegistry"),
        "{message}"
    );
    region
        .apply(&region.credential_manifest(gated.name(), "c", "containerRegistry", &["gated"], ""))
        .unwrap();
    reason_of_credential(&creds(gated.name()), "c", "FeatureGateDisabled").await;

    // Expiry in the past.
    region
        .apply(&region.credential_manifest(
            a.name(),
            "old",
            "containerRegistry",
            &["private-a"],
            "  expiresAt: 2020-01-01T00:00:00Z\n",
        ))
        .unwrap();
    let message = reason_of_credential(&creds(a.name()), "old", "Expired").await;
    assert!(message.contains("in the past"), "{message}");

    // A Secret of the same name that someone else made is never taken over.
    let squatter = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some("taken".into()),
            ..Default::default()
        },
        string_data: Some([("password".to_string(), "mine".to_string())].into()),
        ..Default::default()
    };
    secrets(a.name())
        .create(&PostParams::default(), &squatter)
        .await
        .unwrap();
    region
        .apply(&region.credential_manifest(
            a.name(),
            "wants-taken",
            "containerRegistry",
            &["private-a"],
            "  secretName: taken\n",
        ))
        .unwrap();
    let message = reason_of_credential(&creds(a.name()), "wants-taken", "SecretConflict").await;
    assert!(message.contains("\"taken\""), "{message}");
    let kept = secrets(a.name()).get("taken").await.unwrap();
    assert_eq!(kept.data.unwrap()["password"].0, b"mine");

    // Objects of another region are not touched: no status, no finalizer.
    let other = region
        .credential_manifest(
            a.name(),
            "elsewhere",
            "containerRegistry",
            &["private-a"],
            "",
        )
        .replace(&format!("region: {}", region.name), "region: other-region");
    region.apply(&other).unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let untouched = creds(a.name()).get("elsewhere").await.unwrap();
    assert!(untouched.status.is_none(), "{:?}", untouched.status);
    assert!(untouched.metadata.finalizers.unwrap_or_default().is_empty());

    for ns in [a, a2, b, gated] {
        ns.cleanup().await.unwrap();
    }
}
