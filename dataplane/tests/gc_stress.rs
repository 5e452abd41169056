//! Online garbage collection under load: the collector runs every second with a one-second
//! grace period while 20 clients push images that share layers, delete some of them and pull
//! the rest. Every manifest the registry acknowledged (and the client did not delete) must stay
//! pullable with every blob, and the collector must really have removed garbage meanwhile.
//!
//! Once on the filesystem, and once on S3 with two replicas: one collecting, the other taking
//! the pushes; pulls go through both.

mod common;
mod s3_common;

use std::time::{Duration, Instant};

use common::{
    ConfiguredDataplane, S3Dataplane, client, image_manifest, metrics_text, pseudo_random,
    push_blob_monolithic, put_manifest, sha256,
};
use reqwest::StatusCode;
use s3_common::{shared_server, unique_prefix};

const CLIENTS: u64 = 20;
const REPOSITORIES: u64 = 4;
/// Layers the clients share; each push takes three neighbours from a window that moves on, so
/// old shared layers fall out of use, get collected, and are pushed again later.
const SHARED_LAYERS: u64 = 10;
const LOAD: Duration = Duration::from_secs(20);
const GC_DOCUMENT: &str = "gc: {grace: 1s, interval: 1s}\n";
const MANIFEST_BLOB_UNKNOWN_ATTEMPTS: usize = 6;

/// An image a client pushed and the registry acknowledged.
#[derive(Debug, Clone)]
struct Pushed {
    repo: String,
    tag: String,
    digest: String,
    blobs: Vec<Vec<u8>>,
}

/// What one client did.
#[derive(Debug, Default)]
struct Ledger {
    live: Vec<Pushed>,
    deleted: usize,
    /// Manifest pushes refused because a named blob had been collected (then pushed again).
    refused: usize,
    pulls: usize,
}

fn shared_layer(index: u64) -> Vec<u8> {
    pseudo_random(1_000 + index % SHARED_LAYERS, 2048)
}

/// Pushes a blob unless the repository already has it (the client's `HEAD` check, as docker
/// and crane do).
async fn ensure_blob(http: &reqwest::Client, base: &str, repo: &str, blob: &[u8]) {
    let head = http
        .head(format!("{base}/v2/{repo}/blobs/{}", sha256(blob)))
        .send()
        .await
        .unwrap();
    if head.status() == StatusCode::OK {
        return;
    }
    for _ in 0..5 {
        match push_blob_monolithic(http, base, repo, blob).await.unwrap() {
            StatusCode::CREATED => return,
            // Collected while being stored: the registry asks to upload again.
            StatusCode::SERVICE_UNAVAILABLE => continue,
            other => panic!("blob push answered {other}"),
        }
    }
    panic!("blob push kept failing");
}

/// Fetches a manifest and every blob it names through `base`, checking digests.
async fn pull(http: &reqwest::Client, base: &str, image: &Pushed, by: &str) -> Result<(), String> {
    let response = http
        .get(format!("{base}/v2/{}/manifests/{by}", image.repo))
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if response.status() != StatusCode::OK {
        return Err(format!("manifest {by}: {}", response.status()));
    }
    let body = response.bytes().await.map_err(|e| e.to_string())?;
    if sha256(&body) != image.digest {
        return Err(format!("manifest {by}: other content"));
    }
    for blob in &image.blobs {
        let digest = sha256(blob);
        let response = http
            .get(format!("{base}/v2/{}/blobs/{digest}", image.repo))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if response.status() != StatusCode::OK {
            return Err(format!("blob {digest} of {by}: {}", response.status()));
        }
        let bytes = response.bytes().await.map_err(|e| e.to_string())?;
        if sha256(&bytes) != digest {
            return Err(format!("blob {digest} of {by}: other content"));
        }
    }
    Ok(())
}

/// One client: push, sometimes delete an older image of its own, pull what it kept.
async fn run_client(id: u64, push_base: String, pull_bases: Vec<String>, until: Instant) -> Ledger {
    let http = client();
    let mut ledger = Ledger::default();
    let repo = format!("stress/r{}", id % REPOSITORIES);
    let mut n = 0u64;
    while Instant::now() < until {
        n += 1;
        let window = n / 2 + id;
        let mut layers: Vec<Vec<u8>> = (0..3).map(|k| shared_layer(window + k)).collect();
        layers.push(pseudo_random(id << 32 | n, 1024));
        let config = format!(r#"{{"client":{id},"push":{n}}}"#).into_bytes();
        let refs: Vec<(String, usize)> = layers.iter().map(|l| (sha256(l), l.len())).collect();
        let refs: Vec<(&str, usize)> = refs.iter().map(|(d, s)| (d.as_str(), *s)).collect();
        let manifest = image_manifest((&sha256(&config), config.len()), &refs);
        let tag = format!("c{id}-{n}");
        let mut acknowledged = false;
        for _ in 0..MANIFEST_BLOB_UNKNOWN_ATTEMPTS {
            for blob in std::iter::once(&config).chain(&layers) {
                ensure_blob(&http, &push_base, &repo, blob).await;
            }
            match put_manifest(&http, &push_base, &repo, &tag, &manifest)
                .await
                .unwrap()
            {
                StatusCode::CREATED => {
                    acknowledged = true;
                    break;
                }
                StatusCode::BAD_REQUEST => ledger.refused += 1,
                other => panic!("manifest push answered {other}"),
            }
        }
        assert!(acknowledged, "client {id}: push {n} refused every time");
        let mut blobs = vec![config];
        blobs.extend(layers);
        ledger.live.push(Pushed {
            repo: repo.clone(),
            tag,
            digest: sha256(&manifest),
            blobs,
        });
        if n.is_multiple_of(3) && ledger.live.len() > 2 {
            let old = ledger.live.remove(0);
            let status = http
                .delete(format!(
                    "{push_base}/v2/{}/manifests/{}",
                    old.repo, old.digest
                ))
                .send()
                .await
                .unwrap()
                .status();
            assert_eq!(status, StatusCode::ACCEPTED, "deleting {}", old.digest);
            ledger.deleted += 1;
        }
        let latest = ledger.live.last().expect("just pushed").clone();
        let base = &pull_bases[(n % pull_bases.len() as u64) as usize];
        if let Err(e) = pull(&http, base, &latest, &latest.tag).await {
            panic!("client {id}: an acknowledged image does not pull: {e}");
        }
        ledger.pulls += 1;
    }
    ledger
}

/// The value of a counter or gauge sample (`name{labels} value`), 0 when absent.
fn sample(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find(|line| line.starts_with(name) && line[name.len()..].starts_with(' '))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
        .unwrap_or(0.0)
}

/// Runs the load against `push_base`, with `collector` collecting, and checks every surviving
/// image afterwards through every base.
async fn stress(push_base: &str, collector: &str, pull_bases: &[String]) {
    let http = client();
    let until = Instant::now() + LOAD;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|id| {
            tokio::spawn(run_client(
                id,
                push_base.to_owned(),
                pull_bases.to_vec(),
                until,
            ))
        })
        .collect();
    let mut ledgers = Vec::new();
    for client in clients {
        ledgers.push(client.await.expect("a client panicked"));
    }
    let completed = r#"dataplane_gc_runs_total{outcome="completed"}"#;
    let runs_after_load = sample(&metrics_text(&http, collector).await, completed);
    // Two more collections after the last push: whatever they could wrongly remove, they have.
    let deadline = Instant::now() + Duration::from_secs(60);
    while sample(&metrics_text(&http, collector).await, completed) < runs_after_load + 2.0 {
        assert!(Instant::now() < deadline, "the collector stopped running");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let live: Vec<&Pushed> = ledgers.iter().flat_map(|l| &l.live).collect();
    let pushed = live.len() + ledgers.iter().map(|l| l.deleted).sum::<usize>();
    let refused: usize = ledgers.iter().map(|l| l.refused).sum();
    let mut failures = Vec::new();
    for image in &live {
        for base in pull_bases {
            for by in [image.tag.as_str(), image.digest.as_str()] {
                if let Err(e) = pull(&http, base, image, by).await {
                    failures.push(format!("{} via {base}: {e}", image.repo));
                }
            }
        }
    }
    let metrics = metrics_text(&http, collector).await;
    let collected = sample(&metrics, "dataplane_gc_blobs_collected_total");
    let freed = sample(&metrics, "dataplane_gc_freed_bytes_total");
    eprintln!(
        "{pushed} images acknowledged, {} kept, {refused} pushes refused for a collected blob, \
         {collected} blobs ({freed} bytes) collected",
        live.len()
    );
    assert!(
        failures.is_empty(),
        "{} failures: {failures:#?}",
        failures.len()
    );
    assert!(
        pushed >= CLIENTS as usize * 3,
        "too little load: {pushed} pushes"
    );
    assert!(
        collected > 0.0 && freed > 0.0,
        "the collector removed nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn filesystem_keeps_every_acknowledged_image_while_collecting() {
    let mut config = dataplane::config::Config::default();
    config.settings.gc.grace.0 = Duration::from_secs(1);
    config.settings.gc.interval.0 = Duration::from_secs(1);
    let server = ConfiguredDataplane::start(&config);
    let base = server.url();
    stress(&base, &base, std::slice::from_ref(&base)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_replicas_keep_every_acknowledged_image_while_one_collects() {
    let s3 = shared_server();
    let prefix = unique_prefix("gc-stress");
    let collector =
        S3Dataplane::start_with_document(&s3, &prefix, s3.endpoint(), &[], GC_DOCUMENT, &[]);
    let pusher = S3Dataplane::start_with_document(
        &s3,
        &prefix,
        s3.endpoint(),
        &[],
        "gc: {enabled: false, grace: 1s}\n",
        &[],
    );
    let (collecting, pushing) = (collector.url(), pusher.url());
    stress(
        &pushing,
        &collecting,
        &[collecting.clone(), pushing.clone()],
    )
    .await;
}
