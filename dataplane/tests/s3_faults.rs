//! S3 faults seen through the real binary: the S3 server is SIGKILLed in the middle of 20
//! concurrent pushes and restarted on the same port and data. Clients see clean OCI 503 errors
//! (never a hang), the data plane stays alive and reports itself unready, retries succeed once
//! the bucket is back, every acknowledged push is intact and nothing partial is visible.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{S3Dataplane, absolute, image_manifest, pseudo_random, sha256, with_query};
use reqwest::StatusCode;
use testkit::s3::S3Server;
use tokio::sync::watch;

const PUSHES: usize = 20;
/// The S3 server is killed once this many pushes were acknowledged (manifest `201`).
const KILL_AFTER_PUSHES: usize = 5;
const MIB: usize = 1024 * 1024;
/// Chunk size of the chunked uploads.
const CHUNK: usize = MIB;
/// Bound on every request: an outage must give an answer well before this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on the data plane becoming ready again once the S3 server is back.
const READY_AGAIN_TIMEOUT: Duration = Duration::from_secs(60);

/// A step of one push, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// `POST` starting the chunked upload.
    Start,
    /// One `PATCH` of the chunked upload (its index).
    Chunk(usize),
    /// The final `PUT ?digest=` of the chunked upload.
    Finish,
    /// The monolithic `POST ?digest=`.
    Monolithic,
    /// The manifest `PUT` by tag.
    Manifest,
}

/// What one push sends: a chunked layer, a monolithic config blob and a manifest by tag, in a
/// repository of its own.
struct Push {
    repo: String,
    tag: String,
    layer: Vec<u8>,
    config: Vec<u8>,
    manifest: Vec<u8>,
}

fn plan(i: usize) -> Push {
    // 2 to 4 MiB and a bit (3 to 5 chunks), so pushes finish at different times.
    let layer = pseudo_random(100 + i as u64, 2 * MIB + (i % 3) * MIB + i * 4099);
    let mut config =
        format!(r#"{{"architecture":"amd64","os":"linux","push":{i},"pad":""#).into_bytes();
    config.extend(std::iter::repeat_n(b'x', 32 * 1024 + i));
    config.extend_from_slice(br#""}"#);
    let manifest = image_manifest(
        (&sha256(&config), config.len()),
        &[(&sha256(&layer), layer.len())],
    );
    Push {
        repo: format!("faults/r{i}"),
        tag: format!("v{i}"),
        layer,
        config,
        manifest,
    }
}

/// Where a held push waits for the outage before its next request. Pushes are held at every
/// step kind, so each kind of request meets the dead S3 server.
fn hold_before(i: usize) -> Option<Step> {
    if i.is_multiple_of(2) {
        return None;
    }
    Some(match (i / 2) % 5 {
        0 => Step::Start,
        1 => Step::Chunk(1),
        2 => Step::Finish,
        3 => Step::Monolithic,
        _ => Step::Manifest,
    })
}

/// How a request that did not succeed failed.
#[derive(Debug)]
struct Failure {
    push: usize,
    step: Step,
    kind: FailureKind,
}

#[derive(Debug)]
enum FailureKind {
    /// A 503 `UNAVAILABLE` OCI error body: the expected answer during an outage.
    Clean { status: u16, body: String },
    /// Any other status or body.
    Unclean { status: u16, body: String },
    /// No response: a timeout (a hang) or a broken connection.
    Transport { timed_out: bool, error: String },
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "push {} at {:?}: ", self.push, self.step)?;
        match &self.kind {
            FailureKind::Clean { status, body } => write!(f, "clean {status}: {body}"),
            FailureKind::Unclean { status, body } => {
                write!(f, "{status} without an OCI error body: {body:?}")
            }
            FailureKind::Transport {
                timed_out: true,
                error,
            } => {
                write!(f, "no answer within {REQUEST_TIMEOUT:?} (hang): {error}")
            }
            FailureKind::Transport { error, .. } => write!(f, "no response: {error}"),
        }
    }
}

/// Whether `body` is an OCI error body: `{"errors":[{"code":..,"message":..},..]}` with at
/// least one error.
fn is_oci_error_body(body: &str) -> bool {
    let Ok(value) = serde_json::from_str::<serde_json::Value>(body) else {
        return false;
    };
    let Some(errors) = value.get("errors").and_then(|e| e.as_array()) else {
        return false;
    };
    !errors.is_empty()
        && errors.iter().all(|e| {
            e.get("code").and_then(|c| c.as_str()).is_some()
                && e.get("message").and_then(|m| m.as_str()).is_some()
        })
}

/// Sends one request of push `push`; `Ok(response)` if its status is `expected`.
async fn send(
    request: reqwest::RequestBuilder,
    push: usize,
    step: Step,
    expected: StatusCode,
) -> Result<reqwest::Response, Failure> {
    let failure = |kind| Failure { push, step, kind };
    let response = match request.send().await {
        Ok(response) => response,
        Err(err) => {
            return Err(failure(FailureKind::Transport {
                timed_out: err.is_timeout(),
                error: format!("{err:#}"),
            }));
        }
    };
    let status = response.status();
    if status == expected {
        return Ok(response);
    }
    let body = match response.text().await {
        Ok(body) => body,
        Err(err) => {
            return Err(failure(FailureKind::Transport {
                timed_out: err.is_timeout(),
                error: format!("reading the {status} body: {err:#}"),
            }));
        }
    };
    let status = status.as_u16();
    Err(failure(
        if status == 503 && is_oci_error_body(&body) && body.contains("\"UNAVAILABLE\"") {
            FailureKind::Clean { status, body }
        } else {
            FailureKind::Unclean { status, body }
        },
    ))
}

fn location(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .expect("upload responses carry a Location")
        .to_owned()
}

/// Runs push `i` from scratch through `base`. Before the step `hold` names (if any) it waits
/// until `outage` turns true. Stops at the first failing request.
async fn run_push(
    http: &reqwest::Client,
    base: &str,
    i: usize,
    hold: Option<Step>,
    mut outage: watch::Receiver<bool>,
) -> Result<(), Failure> {
    let push = plan(i);
    let mut wait = async |step: Step| {
        if hold == Some(step) {
            let _ = outage.wait_for(|down| *down).await;
        }
    };
    let repo = &push.repo;

    wait(Step::Start).await;
    let response = send(
        http.post(format!("{base}/v2/{repo}/blobs/uploads/")),
        i,
        Step::Start,
        StatusCode::ACCEPTED,
    )
    .await?;
    let mut url = absolute(base, &location(&response));
    for (n, piece) in push.layer.chunks(CHUNK).enumerate() {
        wait(Step::Chunk(n)).await;
        let offset = n * CHUNK;
        let response = send(
            http.patch(&url)
                .header("content-type", "application/octet-stream")
                .header(
                    "content-range",
                    format!("{offset}-{}", offset + piece.len() - 1),
                )
                .body(piece.to_vec()),
            i,
            Step::Chunk(n),
            StatusCode::ACCEPTED,
        )
        .await?;
        url = absolute(base, &location(&response));
    }
    wait(Step::Finish).await;
    send(
        http.put(with_query(&url, "digest", &sha256(&push.layer))),
        i,
        Step::Finish,
        StatusCode::CREATED,
    )
    .await?;

    wait(Step::Monolithic).await;
    send(
        http.post(format!(
            "{base}/v2/{repo}/blobs/uploads/?digest={}",
            sha256(&push.config)
        ))
        .header("content-type", "application/octet-stream")
        .body(push.config.clone()),
        i,
        Step::Monolithic,
        StatusCode::CREATED,
    )
    .await?;

    wait(Step::Manifest).await;
    send(
        http.put(format!("{base}/v2/{repo}/manifests/{}", push.tag))
            .header("content-type", "application/vnd.oci.image.manifest.v1+json")
            .body(push.manifest.clone()),
        i,
        Step::Manifest,
        StatusCode::CREATED,
    )
    .await?;
    Ok(())
}

/// A client whose every request is bounded by [`REQUEST_TIMEOUT`], never reusing connections.
fn bounded_client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(REQUEST_TIMEOUT)
        .build()
        .unwrap()
}

async fn status_of(http: &reqwest::Client, url: String) -> u16 {
    http.get(&url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e:#}"))
        .status()
        .as_u16()
}

/// `GET`s a blob; `None` if it does not exist, else its bytes.
async fn get_blob(http: &reqwest::Client, base: &str, repo: &str, digest: &str) -> Option<Vec<u8>> {
    let response = http
        .get(format!("{base}/v2/{repo}/blobs/{digest}"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET blob {repo}@{digest}: {e:#}"));
    match response.status() {
        StatusCode::NOT_FOUND => None,
        StatusCode::OK => Some(response.bytes().await.unwrap().to_vec()),
        other => panic!(
            "GET blob {repo}@{digest}: {other}: {}",
            response.text().await.unwrap_or_default()
        ),
    }
}

/// Asserts that push `i` is whole: both blobs byte-identical and the tag resolving to the
/// manifest.
async fn assert_push_intact(http: &reqwest::Client, base: &str, i: usize) {
    let push = plan(i);
    for blob in [&push.layer, &push.config] {
        let digest = sha256(blob);
        let got = get_blob(http, base, &push.repo, &digest)
            .await
            .unwrap_or_else(|| panic!("push {i}: blob {digest} missing"));
        assert_eq!(sha256(&got), digest, "push {i}: blob {digest} altered");
    }
    let (status, digest, body) = common::get(
        http,
        &format!("{base}/v2/{}/manifests/{}", push.repo, push.tag),
    )
    .await;
    assert_eq!(status, 200, "push {i}: manifest by tag");
    assert_eq!(body, push.manifest, "push {i}: manifest by tag");
    assert_eq!(digest.as_deref(), Some(sha256(&push.manifest).as_str()));
}

/// Asserts that nothing partial is visible in push `i`'s repository: every listed tag resolves
/// to a manifest whose bytes match its digest and whose blobs are all whole, and each blob the
/// push sends is either absent or whole. Returns the listed tags.
async fn assert_nothing_partial(http: &reqwest::Client, base: &str, i: usize) -> Vec<String> {
    let push = plan(i);
    let repo = &push.repo;
    for blob in [&push.layer, &push.config] {
        let digest = sha256(blob);
        if let Some(got) = get_blob(http, base, repo, &digest).await {
            assert_eq!(got.len(), blob.len(), "push {i}: partial blob {digest}");
            assert_eq!(sha256(&got), digest, "push {i}: corrupt blob {digest}");
        }
    }
    let response = http
        .get(format!("{base}/v2/{repo}/tags/list"))
        .send()
        .await
        .unwrap();
    let tags: Vec<String> = match response.status() {
        StatusCode::NOT_FOUND => Vec::new(),
        StatusCode::OK => {
            let list: serde_json::Value = response.json().await.unwrap();
            list["tags"]
                .as_array()
                .map(|tags| {
                    tags.iter()
                        .map(|t| t.as_str().unwrap().to_owned())
                        .collect()
                })
                .unwrap_or_default()
        }
        other => panic!("tags of {repo}: {other}"),
    };
    for tag in &tags {
        let (status, digest, body) =
            common::get(http, &format!("{base}/v2/{repo}/manifests/{tag}")).await;
        assert_eq!(status, 200, "{repo}:{tag} is listed but not served");
        assert_eq!(digest.as_deref(), Some(sha256(&body).as_str()));
        let manifest: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let mut referenced = vec![manifest["config"].clone()];
        referenced.extend(manifest["layers"].as_array().unwrap().iter().cloned());
        for descriptor in referenced {
            let digest = descriptor["digest"].as_str().unwrap();
            let got = get_blob(http, base, repo, digest)
                .await
                .unwrap_or_else(|| panic!("{repo}:{tag} references missing blob {digest}"));
            assert_eq!(sha256(&got), digest, "{repo}:{tag}: blob {digest}");
            assert_eq!(Some(got.len() as u64), descriptor["size"].as_u64());
        }
    }
    tags
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_killed_during_concurrent_pushes_then_restarted() {
    let started = Instant::now();
    let mut s3 = tokio::task::block_in_place(S3Server::start);
    let mut server = S3Dataplane::start(&s3, "faults", s3.endpoint());
    let base = server.url();
    let http = bounded_client();
    assert_eq!(status_of(&http, format!("{base}/readyz")).await, 200);

    // 20 concurrent pushes. The even ones run freely; the odd ones are held before one of
    // their steps until the S3 server is dead.
    let (acked_tx, mut acked_rx) = watch::channel(0usize);
    let (outage_tx, outage_rx) = watch::channel(false);
    let acked_tx = Arc::new(acked_tx);
    let results = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..PUSHES {
        let (http, base, outage) = (http.clone(), base.clone(), outage_rx.clone());
        let (acked_tx, results) = (acked_tx.clone(), results.clone());
        tasks.push(tokio::spawn(async move {
            let result = run_push(&http, &base, i, hold_before(i), outage).await;
            if result.is_ok() {
                acked_tx.send_modify(|n| *n += 1);
            }
            results.lock().unwrap().push((i, result));
        }));
    }

    // Kill the S3 server (SIGKILL, whole process group) after N acknowledged pushes.
    acked_rx
        .wait_for(|n| *n >= KILL_AFTER_PUSHES)
        .await
        .unwrap();
    tokio::task::block_in_place(|| s3.kill());
    let killed_at = Instant::now();
    eprintln!(
        "S3 server killed {:?} after the start, {} pushes acknowledged",
        started.elapsed(),
        *acked_rx.borrow()
    );
    outage_tx.send(true).unwrap();

    // Every first attempt ends, each request bounded by the client's timeout.
    let joined = tokio::time::timeout(REQUEST_TIMEOUT * 3, futures_util::future::join_all(tasks))
        .await
        .expect("pushes ended during the outage");
    for task in joined {
        task.unwrap();
    }
    eprintln!(
        "first attempts ended {:?} after the kill",
        killed_at.elapsed()
    );
    let mut results = std::mem::take(&mut *results.lock().unwrap());
    results.sort_by_key(|(i, _)| *i);
    let mut acknowledged = Vec::new();
    let mut failed = Vec::new();
    let mut unclean = Vec::new();
    for (i, result) in results {
        match result {
            Ok(()) => acknowledged.push(i),
            Err(failure) => {
                if !matches!(failure.kind, FailureKind::Clean { .. }) {
                    unclean.push(failure.to_string());
                } else {
                    eprintln!("{failure}");
                }
                failed.push(i);
            }
        }
    }
    assert!(
        unclean.is_empty(),
        "requests failed without a clean OCI 5xx error during the S3 outage:\n{}\nserver log:\n{}",
        unclean.join("\n"),
        server.log()
    );
    assert!(acknowledged.len() >= KILL_AFTER_PUSHES, "{acknowledged:?}");
    assert!(
        hold_before(1).is_some() && failed.len() >= PUSHES / 2,
        "every held push meets the outage: failed {failed:?}"
    );
    eprintln!("acknowledged before the outage: {acknowledged:?}; failed: {failed:?}");

    if let Some(line) = server.log().lines().find(|l| l.contains("error")) {
        eprintln!("the data plane logged: {line}");
    }

    // The data plane is alive, healthy and reports itself unready.
    assert!(
        server.wait(Duration::ZERO).is_none(),
        "the data plane exited:\n{}",
        server.log()
    );
    assert_eq!(status_of(&http, format!("{base}/healthz")).await, 200);
    assert_eq!(status_of(&http, format!("{base}/readyz")).await, 503);
    // Reads of acknowledged content fail cleanly too, rather than hang.
    let push = plan(acknowledged[0]);
    let read = send(
        http.get(format!(
            "{base}/v2/{}/manifests/{}",
            push.repo,
            sha256(&push.manifest)
        ))
        .header("accept", "application/vnd.oci.image.manifest.v1+json"),
        acknowledged[0],
        Step::Manifest,
        StatusCode::OK,
    )
    .await;
    if let Err(failure) = read {
        assert!(
            matches!(failure.kind, FailureKind::Clean { .. }),
            "manifest GET during the outage: {failure}"
        );
    }

    // The S3 server comes back on the same port and data; the data plane becomes ready.
    tokio::task::block_in_place(|| s3.restart()).expect("restarting the S3 server");
    let restarted_at = Instant::now();
    loop {
        if status_of(&http, format!("{base}/readyz")).await == 200 {
            break;
        }
        assert!(
            restarted_at.elapsed() < READY_AGAIN_TIMEOUT,
            "/readyz not 200 {READY_AGAIN_TIMEOUT:?} after the S3 server restarted:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "ready again {:?} after the S3 server restarted",
        restarted_at.elapsed()
    );

    // Before any retry: acknowledged pushes are whole, failed ones left nothing partial.
    for &i in &acknowledged {
        assert_push_intact(&http, &base, i).await;
    }
    for &i in &failed {
        // A manifest stored just as the S3 server died may be listed, but only whole.
        let tags = assert_nothing_partial(&http, &base, i).await;
        assert!(
            tags.iter().all(|t| *t == plan(i).tag),
            "push {i}: unexpected tags {tags:?}"
        );
    }

    // Each failed push, retried from scratch, succeeds.
    let (_never_tx, never) = watch::channel(false);
    let retries = failed.iter().map(|&i| {
        let (http, base, never) = (http.clone(), base.clone(), never.clone());
        async move { (i, run_push(&http, &base, i, None, never).await) }
    });
    for (i, result) in futures_util::future::join_all(retries).await {
        if let Err(failure) = result {
            panic!(
                "retry of push {i} failed: {failure:?}\nserver log:\n{}",
                server.log()
            );
        }
    }

    // Everything is whole, every repository lists exactly its complete tag, and the data plane
    // is still the same process.
    for i in 0..PUSHES {
        assert_push_intact(&http, &base, i).await;
        let tags = assert_nothing_partial(&http, &base, i).await;
        assert_eq!(tags, vec![plan(i).tag], "tags of push {i}");
    }
    assert!(
        server.wait(Duration::ZERO).is_none(),
        "the data plane exited"
    );
    assert_eq!(status_of(&http, format!("{base}/readyz")).await, 200);
    eprintln!("whole test took {:?}", started.elapsed());
    server.kill();
}
