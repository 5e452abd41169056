//! The operator under failure: exactly one leader among replicas, hand-over when the leader
//! dies, and convergence without orphaned or duplicated Secrets after SIGKILLs at arbitrary
//! points while hundreds of objects reconcile.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use crds::v1alpha1::RegistryCredential;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::ListParams;

use common::{Operator, Region, cluster};

/// How long a dead leader's Lease blocks the next (the operator's lease duration) plus time
/// to start reconciling.
const HANDOVER: Duration = Duration::from_secs(25);

async fn leaders(operators: &[&Operator]) -> usize {
    let mut n = 0;
    for op in operators {
        if op.leading().await {
            n += 1;
        }
    }
    n
}

async fn holder(region: &Region) -> Option<String> {
    let api = Api::<Lease>::namespaced(cluster().client().await.unwrap(), region.system.name());
    api.get_opt("registry-operator")
        .await
        .ok()??
        .spec?
        .holder_identity
}

#[tokio::test(flavor = "multi_thread")]
async fn one_leader_and_a_hand_over_within_the_lease_time() {
    let mut region = Region::operator_only(&["acme"]).await;
    let first = region.operator.take().unwrap();
    let second = region.spawn_operator("second");
    let deadline = Instant::now() + HANDOVER;
    while leaders(&[&first, &second]).await != 1 {
        assert!(Instant::now() < deadline, "no single leader");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Still exactly one a while later.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(leaders(&[&first, &second]).await, 1);
    let (mut leader, follower, follower_id) = if first.leading().await {
        (first, second, "second")
    } else {
        (second, first, "operator")
    };
    leader.kill();
    let killed = Instant::now();
    while !(follower.leading().await && holder(&region).await.as_deref() == Some(follower_id)) {
        assert!(
            killed.elapsed() < HANDOVER,
            "no hand-over within {HANDOVER:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The new leader reconciles.
    let project = region.project(Some("acme")).await;
    region
        .apply(&region.namespace_manifest(project.name(), "after", ""))
        .unwrap();
    region
        .apply(&region.credential_manifest(
            project.name(),
            "c",
            "containerRegistry",
            &["after"],
            "",
        ))
        .unwrap();
    let creds =
        Api::<RegistryCredential>::namespaced(cluster().client().await.unwrap(), project.name());
    common::wait_object(&creds, "c", HANDOVER, |c| {
        (common::ready(c, &c.status.as_ref()?.conditions)?.0 == "True").then_some(())
    })
    .await;
    // Cleaning up needs an operator: credentials carry its finalizer.
    project.cleanup().await.unwrap();
    drop(follower);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkills_while_hundreds_of_objects_reconcile_leave_no_orphans_or_duplicates() {
    const CREDENTIALS: usize = 480;
    let mut region = Region::operator_only(&["acme"]).await;
    let client = cluster().client().await.unwrap();
    let projects = [
        region.project(Some("acme")).await,
        region.project(Some("acme")).await,
    ];
    // 500 objects: 20 namespaces and 480 credentials across two projects.
    let mut manifest = String::new();
    for (i, p) in projects.iter().enumerate() {
        for n in 0..10 {
            manifest += &region.namespace_manifest(p.name(), &format!("ns-{i}-{n}"), "");
            manifest += "---\n";
        }
        for c in 0..CREDENTIALS / 2 {
            let ns = format!("ns-{i}-{}", c % 10);
            manifest += &region.credential_manifest(
                p.name(),
                &format!("cred-{c}"),
                "containerRegistry:pull",
                &[&ns],
                "",
            );
            manifest += "---\n";
        }
    }
    region.apply(&manifest).unwrap();

    // SIGKILL the operator at points spread over the reconcile, restarting it each time.
    for (round, delay_ms) in [900u64, 2300, 400, 1700].into_iter().enumerate() {
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        region.operator.as_mut().unwrap().kill();
        region.operator = Some(region.spawn_operator(&format!("restart-{round}")));
    }

    // Converges: every credential Ready, one state Secret and one delivered Secret each.
    let deadline = Instant::now() + Duration::from_secs(240);
    let creds_api = Api::<RegistryCredential>::all(client.clone());
    loop {
        let creds: Vec<RegistryCredential> = creds_api
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|c| c.spec.region == region.name)
            .collect();
        let ready = creds
            .iter()
            .filter(|c| {
                c.status
                    .as_ref()
                    .and_then(|s| common::ready(*c, &s.conditions))
                    .is_some_and(|(s, _)| s == "True")
            })
            .count();
        if ready == CREDENTIALS {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {ready} of {CREDENTIALS} credentials Ready"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let creds: Vec<RegistryCredential> = creds_api
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|c| c.spec.region == region.name)
        .collect();
    let uids: HashSet<String> = creds
        .iter()
        .filter_map(|c| c.metadata.uid.clone())
        .collect();
    let own = Api::<Secret>::namespaced(client.clone(), region.system.name());
    let states: Vec<Secret> = own
        .list(&ListParams::default().labels(operator::CREDENTIAL_UID_LABEL))
        .await
        .unwrap()
        .items;
    let state_uids: BTreeMap<String, usize> = states.iter().fold(BTreeMap::new(), |mut m, s| {
        *m.entry(s.metadata.labels.as_ref().unwrap()[operator::CREDENTIAL_UID_LABEL].clone())
            .or_default() += 1;
        m
    });
    assert_eq!(
        state_uids.len(),
        CREDENTIALS,
        "state Secrets: one per credential"
    );
    assert!(
        state_uids.values().all(|n| *n == 1),
        "duplicated state Secrets"
    );
    assert!(
        state_uids.keys().all(|u| uids.contains(u)),
        "orphaned state Secrets"
    );
    for p in &projects {
        let delivered = Api::<Secret>::namespaced(client.clone(), p.name())
            .list(&ListParams::default().labels(operator::CREDENTIAL_UID_LABEL))
            .await
            .unwrap()
            .items;
        assert_eq!(
            delivered.len(),
            CREDENTIALS / 2,
            "delivered Secrets in {}",
            p.name()
        );
        // Each delivers the secret the state knows (no secret issued twice).
        for secret in delivered {
            let uid = &secret.metadata.labels.as_ref().unwrap()[operator::CREDENTIAL_UID_LABEL];
            let state = states
                .iter()
                .find(|s| {
                    &s.metadata.labels.as_ref().unwrap()[operator::CREDENTIAL_UID_LABEL] == uid
                })
                .unwrap();
            let password =
                String::from_utf8(secret.data.as_ref().unwrap()["password"].0.clone()).unwrap();
            assert_eq!(
                operator::secrets::fingerprint(&password).into_bytes(),
                state.data.as_ref().unwrap()["secretFingerprint"].0,
                "the delivered secret is the one whose fingerprint the state holds"
            );
            assert!(
                !state.data.as_ref().unwrap().contains_key("secret"),
                "the state never holds the secret itself"
            );
        }
    }
    // The document names every credential exactly once.
    let index = own.get("registry-config").await.unwrap();
    let text = String::from_utf8(index.data.unwrap()["config.yaml"].0.clone()).unwrap();
    let mut config = crds::config::Config::parse_unvalidated(&text).unwrap();
    let mut shards = Vec::new();
    for s in &config.spec.shards {
        let shard = own.get(&s.name).await.unwrap();
        let text = String::from_utf8(shard.data.unwrap()["config.yaml"].0.clone()).unwrap();
        shards.push((
            s.name.clone(),
            crds::config::ConfigShard::from_yaml_str(&text).unwrap(),
        ));
    }
    config.merge_shards(shards).unwrap();
    let ids: HashSet<&str> = config
        .spec
        .credentials
        .iter()
        .map(|c| c.id.as_str())
        .collect();
    assert_eq!(config.spec.credentials.len(), CREDENTIALS);
    assert_eq!(ids.len(), CREDENTIALS);

    // Deleting everything leaves nothing behind. All namespaces go at once; each credential's
    // finalizer waits for a document without it, so on two busy cores this takes minutes
    // (its speed is measured in bench/, not here).
    futures::future::try_join_all(
        projects
            .into_iter()
            .map(|p| p.cleanup_within(Duration::from_secs(480))),
    )
    .await
    .unwrap();
    let left = own
        .list(&ListParams::default().labels(operator::CREDENTIAL_UID_LABEL))
        .await
        .unwrap()
        .items;
    assert!(
        left.is_empty(),
        "{} state Secrets left after the credentials were deleted",
        left.len()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_state_of_a_credential_deleted_behind_the_operators_back_is_swept() {
    let region = Region::start_with_operator_settings(&["acme"], "orphanGrace: 2s\n").await;
    let client = cluster().client().await.unwrap();
    let project = region.project(Some("acme")).await;
    let p = project.name();
    region
        .apply(&region.namespace_manifest(p, "ns", ""))
        .unwrap();
    region
        .apply(&region.credential_manifest(p, "gone", "containerRegistry", &["ns"], ""))
        .unwrap();
    let creds = Api::<RegistryCredential>::namespaced(client.clone(), p);
    // This binary's other tests load the shared cluster with hundreds of objects at the same
    // time: what is asserted here is the sweep, not how fast the credential first converges.
    let uid = common::wait_object(&creds, "gone", Duration::from_secs(90), |c| {
        (common::ready(c, &c.status.as_ref()?.conditions)?.0 == "True")
            .then(|| c.metadata.uid.clone().unwrap())
    })
    .await;
    let own = Api::<Secret>::namespaced(client.clone(), region.system.name());
    let selector = format!("{}={uid}", operator::CREDENTIAL_UID_LABEL);
    assert_eq!(
        own.list(&ListParams::default().labels(&selector))
            .await
            .unwrap()
            .items
            .len(),
        1
    );
    // Bypass the finalizer, as someone with enough rights might.
    cluster()
        .kubectl_ok([
            "patch",
            "rcred",
            "-n",
            p,
            "gone",
            "--type",
            "merge",
            "-p",
            r#"{"metadata":{"finalizers":null}}"#,
        ])
        .unwrap();
    cluster()
        .kubectl_ok(["delete", "rcred", "-n", p, "gone"])
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    while !own
        .list(&ListParams::default().labels(&selector))
        .await
        .unwrap()
        .items
        .is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "the orphaned state Secret was not deleted"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    project.cleanup().await.unwrap();
}
