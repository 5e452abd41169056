//! Operations of the real binary: health, readiness, metrics, logs, configuration handling.

mod common;

use std::time::{Duration, Instant};

use common::{Dataplane, binary, client, get, pseudo_random, push_blob_monolithic, sha256};

const HEAD: &str = "apiVersion: registry.thalassa.cloud/v1alpha1\nkind: DataPlaneConfig\n";

fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let root = tempfile::tempdir().unwrap();
    let server = Dataplane::start(root.path(), &[]);
    let client = client();
    let base = server.url();

    assert_eq!(get(&client, &format!("{base}/healthz")).await.0, 200);
    assert_eq!(get(&client, &format!("{base}/readyz")).await.0, 200);
    assert_eq!(get(&client, &format!("{base}/v2/")).await.0, 200);

    let data = pseudo_random(1, 300_000);
    let status = push_blob_monolithic(&client, &base, "ops/metrics", &data)
        .await
        .unwrap();
    assert_eq!(status, 201);
    let (status, _, body) = get(
        &client,
        &format!("{base}/v2/ops/metrics/blobs/{}", sha256(&data)),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body, data);
    let (status, _, _) = get(&client, &format!("{base}/v2/ops/metrics/manifests/missing")).await;
    assert_eq!(status, 404);

    let (status, _, body) = get(&client, &format!("{base}/metrics")).await;
    assert_eq!(status, 200);
    let text = String::from_utf8(body).unwrap();
    for series in [
        r#"dataplane_http_requests_total{route="health",method="GET",status="200"}"#,
        r#"dataplane_http_requests_total{route="base",method="GET",status="200"}"#,
        r#"dataplane_http_requests_total{route="blob_upload",method="POST",status="201"}"#,
        r#"dataplane_http_requests_total{route="blob",method="GET",status="200"}"#,
        r#"dataplane_http_requests_total{route="manifest",method="GET",status="404"}"#,
        r#"dataplane_http_request_duration_seconds_count{route="blob",method="GET"}"#,
    ] {
        assert!(
            metric_value(&text, series).is_some_and(|v| v >= 1.0),
            "{series} missing in\n{text}"
        );
    }
    assert!(
        !text.contains("ops/metrics"),
        "raw paths must not be labels"
    );
    let bytes_in = metric_value(
        &text,
        r#"dataplane_http_request_bytes_total{route="blob_upload"}"#,
    )
    .unwrap();
    let bytes_out = metric_value(
        &text,
        r#"dataplane_http_response_bytes_total{route="blob"}"#,
    )
    .unwrap();
    assert!(bytes_in >= data.len() as f64, "{bytes_in}");
    assert!(bytes_out >= data.len() as f64, "{bytes_out}");
    assert_eq!(
        metric_value(&text, "dataplane_uploads_in_flight"),
        Some(0.0)
    );

    // The counters grow with further traffic.
    push_blob_monolithic(&client, &base, "ops/metrics", &pseudo_random(2, 1000))
        .await
        .unwrap();
    let (_, _, body) = get(&client, &format!("{base}/metrics")).await;
    let text = String::from_utf8(body).unwrap();
    let later = metric_value(
        &text,
        r#"dataplane_http_request_bytes_total{route="blob_upload"}"#,
    )
    .unwrap();
    assert!(later >= bytes_in + 1000.0, "{later} vs {bytes_in}");
}

#[tokio::test]
async fn json_logs_are_json() {
    let root = tempfile::tempdir().unwrap();
    let server = Dataplane::start(root.path(), &["--log-format", "json"]);
    let client = client();
    // Successful reads are logged at debug (not shown by default); errors and writes at info.
    assert_eq!(get(&client, &format!("{}/v2/", server.url())).await.0, 200);
    let missing = format!("{}/v2/ops/json/manifests/missing", server.url());
    assert_eq!(get(&client, &missing).await.0, 404);
    // The access log line is written after the response; give it a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !server.log().contains("request served") && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let log = server.log();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 2, "{log}");
    let mut listening = false;
    let mut served = false;
    for line in lines {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        let message = value["fields"]["message"].as_str().unwrap_or_default();
        listening |= message == format!("listening on {}", server.addr);
        if message == "request served" {
            served = true;
            assert_eq!(value["fields"]["status"], 404, "{line}");
            assert_eq!(value["level"], "INFO", "{line}");
            assert_eq!(value["span"]["route"], "manifest", "{line}");
            assert!(value["span"]["request_id"].as_str().is_some(), "{line}");
        }
        assert!(
            value["level"].is_string() && value["timestamp"].is_string(),
            "{line}"
        );
    }
    assert!(listening && served, "{log}");
}

#[tokio::test]
async fn the_listening_line_survives_a_quiet_log_filter() {
    let root = tempfile::tempdir().unwrap();
    let args: Vec<String> = ["serve", "--listen", "127.0.0.1:0", "--root"]
        .iter()
        .map(|s| s.to_string())
        .chain([root.path().display().to_string()])
        .collect();
    let server = Dataplane::start_args_env(&args, &[("RUST_LOG", "warn")]).unwrap();
    let client = client();
    assert_eq!(get(&client, &format!("{}/v2/", server.url())).await.0, 200);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = server.log();
    assert_eq!(
        log.lines().count(),
        1,
        "only the listening line at warn:\n{log}"
    );
    assert!(log.contains("listening on"), "{log}");
}

#[test]
fn unknown_config_field_stops_serve_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(
        &path,
        format!("{HEAD}storage:\n  filesystem: {{rot: /tmp/x}}\n"),
    )
    .unwrap();
    let output = std::process::Command::new(binary())
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("unknown field `rot`"), "{stderr}");
    assert!(stderr.contains("storage.filesystem"), "{stderr}");
    assert!(stderr.contains("`root`"), "{stderr}");
    assert!(stderr.contains("line 4"), "{stderr}");
}

#[test]
fn a_cache_memory_that_is_not_a_size_stops_serve_saying_how_to_write_it() {
    let dir = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(binary())
        .args(["serve", "--listen", "127.0.0.1:0", "--root"])
        .arg(dir.path())
        .args(["--cache-memory", "48MB"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--cache-memory"), "{stderr}");
    assert!(stderr.contains("\"48MB\" is not a size"), "{stderr}");
    assert!(stderr.contains("48MiB"), "{stderr}");
}

/// A federation whose issuer is plain HTTP on a host that is not loopback.
const PLAIN_HTTP_ISSUER: &str = "namespaces: [{name: acme}]\nfederations:\n- {issuer: \"http://issuer.example.com\", audience: registry, scope: containerRegistry, namespaces: [acme]}\n";

#[test]
fn check_config_validates_documents() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.yaml");
    std::fs::write(
        &good,
        format!("{HEAD}region: nl-01\nnamespaces: [{{name: acme, visibility: public}}]\n"),
    )
    .unwrap();
    let output = std::process::Command::new(binary())
        .args(["check-config"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stdout).contains("nl-01"));

    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        format!("{HEAD}namespaces: [{{name: acme}}, {{name: acme}}, {{name: Bad}}]\n"),
    )
    .unwrap();
    let output = std::process::Command::new(binary())
        .args(["check-config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("namespaces[1].name") && stderr.contains("duplicate"),
        "{stderr}"
    );
    assert!(stderr.contains("namespaces[2].name"), "{stderr}");

    let plain = dir.path().join("plain.yaml");
    std::fs::write(&plain, format!("{HEAD}{PLAIN_HTTP_ISSUER}")).unwrap();
    let output = std::process::Command::new(binary())
        .args(["check-config"])
        .arg(&plain)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("federations[0].issuer") && stderr.contains("only for loopback issuers"),
        "{stderr}"
    );
    std::fs::write(
        &plain,
        format!(
            "{HEAD}{}",
            PLAIN_HTTP_ISSUER.replace("issuer.example.com", "127.0.0.1:5556")
        ),
    )
    .unwrap();
    let output = std::process::Command::new(binary())
        .args(["check-config"])
        .arg(&plain)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");

    let other = dir.path().join("other.yaml");
    std::fs::write(
        &other,
        "apiVersion: registry.thalassa.cloud/v9\nkind: DataPlaneConfig\n",
    )
    .unwrap();
    let output = std::process::Command::new(binary())
        .args(["check-config"])
        .arg(&other)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("registry.thalassa.cloud/v1alpha1"),
        "{stderr}"
    );
}

#[test]
fn check_config_reads_the_shard_files() {
    let dir = tempfile::tempdir().unwrap();
    let index = dir.path().join("config.yaml");
    std::fs::write(
        &index,
        format!("{HEAD}revision: 4\nshards: [{{name: shard-1, revision: 4}}]\n"),
    )
    .unwrap();
    let check = || {
        std::process::Command::new(binary())
            .args(["check-config"])
            .arg(&index)
            .output()
            .unwrap()
    };
    let output = check();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("\"shard-1\"") && stderr.contains("missing"),
        "{stderr}"
    );

    std::fs::write(
        dir.path().join("shard-1"),
        "apiVersion: registry.thalassa.cloud/v1alpha1\nkind: DataPlaneConfigShard\n\
         revision: 4\nnamespaces: [{name: acme}]\n",
    )
    .unwrap();
    let output = check();
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("revision 4 with 1 shard"), "{stdout}");
}

#[tokio::test]
async fn config_reloads_live_and_ignores_invalid_documents() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    let root = dir.path().join("data");
    std::fs::write(
        &path,
        format!(
            "{HEAD}region: one\nstorage: {{filesystem: {{root: {}}}}}\n",
            root.display()
        ),
    )
    .unwrap();
    let args: Vec<String> = ["serve", "--listen", "127.0.0.1:0", "--config"]
        .iter()
        .map(|s| s.to_string())
        .chain([path.display().to_string()])
        .collect();
    let server = Dataplane::start_args(&args).unwrap();
    let wait_for = |needle: &'static str, count: usize| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if server.log().matches(needle).count() >= count {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in\n{}",
                server.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };

    std::fs::write(
        &path,
        format!("{HEAD}region: one\nnamespaces: [{{nam: x}}]\n"),
    )
    .unwrap();
    wait_for("new configuration refused", 1);
    assert!(
        server.log().contains("unknown field `nam`"),
        "{}",
        server.log()
    );

    // An OIDC issuer over plain HTTP off loopback: anyone on the path could serve keys.
    std::fs::write(
        &path,
        format!(
            "{HEAD}region: one
storage: {{filesystem: {{root: {}}}}}
{PLAIN_HTTP_ISSUER}",
            root.display()
        ),
    )
    .unwrap();
    wait_for("new configuration refused", 2);
    assert!(
        server.log().contains("federations[0].issuer")
            && server.log().contains("only for loopback issuers"),
        "{}",
        server.log()
    );

    std::fs::write(
        &path,
        format!(
            "{HEAD}region: two\nstorage: {{filesystem: {{root: {}}}}}\n",
            root.display()
        ),
    )
    .unwrap();
    wait_for("configuration reloaded", 1);

    std::fs::write(
        &path,
        format!(
            "{HEAD}region: three\nstorage: {{filesystem: {{root: {}}}}}\n",
            dir.path().join("elsewhere").display()
        ),
    )
    .unwrap();
    wait_for("configuration reloaded", 2);
    wait_for("take effect after a restart", 1);

    // Still serving from the original root throughout.
    let client = client();
    let data = pseudo_random(3, 10_000);
    assert_eq!(
        push_blob_monolithic(&client, &server.url(), "ops/reload", &data)
            .await
            .unwrap(),
        201
    );
    assert!(
        root.join("blobs/sha256")
            .join(&sha256(&data)[7..9])
            .join(&sha256(&data)[7..])
            .is_file()
    );
}

#[tokio::test]
async fn abandoned_upload_sessions_expire() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, format!("{HEAD}uploads: {{sessionTimeout: 2s}}\n")).unwrap();
    let root = dir.path().join("data");
    let server = Dataplane::start(&root, &["--config", path.to_str().unwrap()]);
    let client = client();
    let base = server.url();
    let response = client
        .post(format!("{base}/v2/ops/expiry/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let location = common::absolute(&base, response.headers()["location"].to_str().unwrap());
    // Five bytes, then the client goes away.
    let patched = client
        .patch(&location)
        .header("content-type", "application/octet-stream")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status(), 202);
    let location = common::absolute(&base, patched.headers()["location"].to_str().unwrap());
    assert_eq!(client.get(&location).send().await.unwrap().status(), 204);

    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let response = client.get(&location).send().await.unwrap();
        if response.status() == 404 {
            let body = response.text().await.unwrap();
            assert!(body.contains("BLOB_UPLOAD_UNKNOWN"), "{body}");
            break;
        }
        assert!(Instant::now() < deadline, "session never expired");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(server.log().contains("removed abandoned upload session"));
    // The sweep counts the session and its bytes once it has gone through all of them.
    let deadline = Instant::now() + Duration::from_secs(5);
    let text = loop {
        let text = common::metrics_text(&client, &base).await;
        if metric_value(&text, "dataplane_uploads_expired_total").is_some_and(|n| n > 0.0) {
            break text;
        }
        assert!(Instant::now() < deadline, "expiry never counted: {text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        metric_value(&text, "dataplane_uploads_expired_total"),
        Some(1.0)
    );
    assert_eq!(
        metric_value(&text, "dataplane_uploads_expired_bytes_total"),
        Some(5.0)
    );
}

/// Sends `head` and all of `body` before reading anything (as Python's `http.client` does),
/// then reads the response to the end.
fn send_whole_then_read(addr: &str, head: &str, body: &[u8]) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream.write_all(head.as_bytes()).unwrap();
    stream
        .write_all(body)
        .expect("the server reads the whole body before it answers");
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .expect("a response, not a reset");
    String::from_utf8_lossy(&response).into_owned()
}

#[test]
fn oversized_bodies_get_their_413_even_from_clients_that_send_everything_first() {
    let dir = tempfile::tempdir().unwrap();
    let server = Dataplane::start(dir.path(), &[]);
    let addr = server.host();

    // A manifest over the 4 MiB limit, declared.
    let manifest = vec![b' '; 5 * 1024 * 1024];
    let response = send_whole_then_read(
        &addr,
        &format!(
            "PUT /v2/ops/big/manifests/v1 HTTP/1.1\r\nHost: {addr}\r\n\
             Content-Type: application/vnd.oci.image.manifest.v1+json\r\n\
             Content-Length: {}\r\n\r\n",
            manifest.len()
        ),
        &manifest,
    );
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert!(response.contains("\"SIZE_INVALID\""), "{response}");
    assert!(
        response.to_ascii_lowercase().contains("connection: close"),
        "{response}"
    );

    // The same, chunked: no length to refuse it by, so the limit is found while reading.
    let mut chunked = Vec::new();
    for chunk in manifest.chunks(64 * 1024) {
        chunked.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        chunked.extend_from_slice(chunk);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let response = send_whole_then_read(
        &addr,
        &format!(
            "PUT /v2/ops/big/manifests/v1 HTTP/1.1\r\nHost: {addr}\r\n\
             Content-Type: application/vnd.oci.image.manifest.v1+json\r\n\
             Transfer-Encoding: chunked\r\n\r\n"
        ),
        &chunked,
    );
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert!(response.contains("\"SIZE_INVALID\""), "{response}");

    // Routes that expect no body, or a small one, have a limit too.
    let big = vec![b'a'; 1024 * 1024];
    let response = send_whole_then_read(
        &addr,
        &format!(
            "GET /v2/ops/big/tags/list HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\n\r\n",
            big.len()
        ),
        &big,
    );
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert!(response.contains("\"SIZE_INVALID\""), "{response}");
    let response = send_whole_then_read(
        &addr,
        &format!(
            "POST /token HTTP/1.1\r\nHost: {addr}\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n",
            big.len()
        ),
        &big,
    );
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert!(response.contains("invalid_request"), "{response}");

    // A small body on a GET is read and the connection stays usable.
    let response = send_whole_then_read(
        &addr,
        &format!(
            "GET /v2/ HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 5\r\n\r\nhello\
             GET /v2/ HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        ),
        b"",
    );
    assert_eq!(response.matches("HTTP/1.1 200").count(), 2, "{response}");
}

#[test]
fn slow_clients_are_disconnected_after_the_configured_timeouts() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(
        &path,
        format!(
            "{HEAD}storage: {{filesystem: {{root: {}}}}}\n\
             connections: {{headerTimeout: 1s, idleTimeout: 1s}}\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let args: Vec<String> = ["serve", "--listen", "127.0.0.1:0", "--config"]
        .iter()
        .map(|s| s.to_string())
        .chain([path.display().to_string()])
        .collect();
    let server = Dataplane::start_args(&args).unwrap();
    let closed_within = |stream: &mut std::net::TcpStream| {
        stream
            .set_read_timeout(Some(Duration::from_secs(15)))
            .unwrap();
        let mut buf = [0u8; 1024];
        loop {
            match stream.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) => {
                    return !matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    );
                }
            }
        }
    };

    // Half a request's headers, then nothing.
    let mut stream = std::net::TcpStream::connect(server.host()).unwrap();
    stream
        .write_all(b"GET /v2/ HTTP/1.1\r\nHost: registry\r\n")
        .unwrap();
    assert!(closed_within(&mut stream), "headers never finished");

    // A blob upload whose body stops after 10 of 100 bytes.
    let mut stream = std::net::TcpStream::connect(server.host()).unwrap();
    stream
        .write_all(
            b"POST /v2/ops/slow/blobs/uploads/?digest=sha256:0000000000000000000000000000000000000000000000000000000000000000 HTTP/1.1\r\n\
              Host: registry\r\nContent-Length: 100\r\n\r\n0123456789",
        )
        .unwrap();
    assert!(closed_within(&mut stream), "the body stalled");

    // The server still serves.
    let mut stream = std::net::TcpStream::connect(server.host()).unwrap();
    stream
        .write_all(b"GET /v2/ HTTP/1.1\r\nHost: registry\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
}

/// Metering through the binary: stored bytes, pushes and pulls of a namespace appear at the
/// usage endpoint and in the metrics once the interval has passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_is_metered_per_namespace() {
    let mut config = dataplane::config::Config::default();
    config.settings.metering.interval.0 = Duration::from_secs(1);
    let server = common::ConfiguredDataplane::start(&config);
    let base = server.url();
    let http = client();
    let (config_blob, layer) = (b"{}".to_vec(), pseudo_random(5, 300_000));
    for blob in [&config_blob, &layer] {
        assert_eq!(
            push_blob_monolithic(&http, &base, "acme/app", blob)
                .await
                .unwrap(),
            201
        );
    }
    let manifest = common::image_manifest(
        (&sha256(&config_blob), 2),
        &[(&sha256(&layer), layer.len())],
    );
    assert_eq!(
        common::put_manifest(&http, &base, "acme/app", "v1", &manifest)
            .await
            .unwrap(),
        201
    );
    let (status, _, body) = get(
        &http,
        &format!("{base}/v2/acme/app/blobs/{}", sha256(&layer)),
    )
    .await;
    assert_eq!((status, body.len()), (200, layer.len()));

    let stored = (2 + layer.len() + manifest.len()) as u64;
    let pushed = stored;
    let pulled = layer.len() as u64;
    let deadline = Instant::now() + Duration::from_secs(30);
    let usage = loop {
        let (status, _, body) = get(&http, &format!("{base}/internal/v1/usage")).await;
        assert_eq!(status, 200);
        let usage: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let acme = &usage["namespaces"]["acme"];
        if acme["storedBytes"] == stored && acme["pushedBytes"] == pushed {
            break acme.clone();
        }
        assert!(Instant::now() < deadline, "usage never caught up: {usage}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(usage["pulledBytes"], pulled);
    assert!(usage["sampledAt"].is_string(), "{usage}");
    assert!(
        usage["gigabyteHours"]
            .as_str()
            .unwrap()
            .starts_with("0.0000"),
        "{usage}"
    );
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let series = r#"dataplane_transfer_bytes_total{namespace="acme",direction="pull"}"#;
    assert_eq!(
        metric_value(&metrics, series),
        Some(pulled as f64),
        "{metrics}"
    );
    assert_eq!(
        metric_value(
            &metrics,
            r#"dataplane_namespace_stored_bytes{namespace="acme"}"#
        ),
        Some(stored as f64)
    );
}
