//! A region too large for one Secret: the document is split into shards, the data plane
//! merges them, and every credential logs in. (The figures for 20 000 credentials are in
//! `bench/`; this test uses fewer, with small shards, to stay fast.)

mod common;

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::ListParams;

use common::{Region, cluster};

const CREDENTIALS: usize = 1000;

#[tokio::test(flavor = "multi_thread")]
async fn a_sharded_region_serves_every_credential() {
    let region = Region::start_with_settings(&["acme"], "shardBytes: 32768\n").await;
    let client = cluster().client().await.unwrap();
    let project = region.project(Some("acme")).await;
    let p = project.name();
    let mut manifest = region.namespace_manifest(p, "fleet", "");
    for i in 0..CREDENTIALS {
        manifest += "---\n";
        manifest += &region.credential_manifest(
            p,
            &format!("c{i:04}"),
            "containerRegistry:pull",
            &["fleet"],
            "",
        );
    }
    region.apply(&manifest).unwrap();

    // Every credential's Secret is delivered.
    let secrets = Api::<Secret>::namespaced(client.clone(), p);
    let deadline = Instant::now() + Duration::from_secs(300);
    let delivered = loop {
        // A busy apiserver may drop a connection now and then: that is not what is tested.
        let count = match secrets
            .list(&ListParams::default().labels(operator::CREDENTIAL_UID_LABEL))
            .await
        {
            Ok(list) if list.items.len() == CREDENTIALS => break list.items,
            Ok(list) => list.items.len(),
            Err(_) => 0,
        };
        assert!(
            Instant::now() < deadline,
            "{count} of {CREDENTIALS} Secrets delivered"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    };

    // The document is sharded.
    let own = Api::<Secret>::namespaced(client.clone(), region.system.name());
    let shards = own
        .list(
            &ListParams::default()
                .labels("registry.thalassa.cloud/config-shard-of=registry-config"),
        )
        .await
        .unwrap()
        .items;
    assert!(shards.len() >= 4, "{} shards", shards.len());

    // Every credential logs in at the data plane (token endpoint, Basic authentication),
    // two at a time (the data plane verifies at most that many secrets at once).
    let http = reqwest::Client::new();
    let url = format!(
        "http://{}/token?service={}&scope=repository:fleet/app:pull",
        region.host, region.name
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    let logins: Vec<(String, String)> = delivered
        .iter()
        .map(|s| {
            let data = s.data.as_ref().unwrap();
            let text = |k: &str| String::from_utf8(data[k].0.clone()).unwrap();
            (text("username"), text("password"))
        })
        .collect();
    let mut failed: Vec<String> = Vec::new();
    for pair in logins.chunks(2) {
        let mut pending = Vec::new();
        for (user, password) in pair {
            let (http, url) = (&http, &url);
            pending.push(async move {
                loop {
                    let status = http
                        .get(url.as_str())
                        .basic_auth(user, Some(password))
                        .send()
                        .await
                        .map(|r| r.status().as_u16())
                        .unwrap_or(0);
                    // The newest shards may still be on their way to the data plane.
                    if status == 200 || Instant::now() > deadline {
                        return (user.clone(), status);
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            });
        }
        for (user, status) in futures::future::join_all(pending).await {
            if status != 200 {
                failed.push(format!("{user}: {status}"));
            }
        }
    }
    assert!(
        failed.is_empty(),
        "{} logins failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(10)]
    );
    project.cleanup().await.unwrap();
}
