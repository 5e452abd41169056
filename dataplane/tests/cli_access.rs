//! The standalone access-control workflow through the real binary: hash a secret and make a
//! token key with the CLI, check the document, serve it, and log in through the token flow.

mod common;

use std::io::Write as _;
use std::process::{Command, Stdio};

use common::{Dataplane, binary, client, pseudo_random, sha256};

fn run_with_stdin(args: &[&str], stdin: &str) -> std::process::Output {
    let mut child = Command::new(binary())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn stdout(output: &std::process::Output) -> String {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

#[tokio::test]
async fn hash_a_secret_make_a_key_check_and_serve() {
    let hash = stdout(&run_with_stdin(&["hash-secret"], "s3cret-value\n"));
    let hash = hash.trim();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    assert!(dataplane::auth::secret::verify_secret("s3cret-value", hash));
    let empty = run_with_stdin(&["hash-secret"], "\n");
    assert!(!empty.status.success());

    let generated = stdout(&run_with_stdin(&["generate-secret"], ""));
    let secret = generated
        .lines()
        .find_map(|l| l.strip_prefix("secret: "))
        .unwrap();
    let generated_hash = generated
        .lines()
        .find_map(|l| l.strip_prefix("secretHash: "))
        .unwrap()
        .trim_matches('\'');
    assert!(dataplane::auth::secret::verify_secret(
        secret,
        generated_hash
    ));

    let key = stdout(&run_with_stdin(&["generate-key", "k1"], ""));
    let indented: String = key.lines().map(|l| format!("    {l}\n")).collect();
    let dir = tempfile::tempdir().unwrap();
    let document = format!(
        "apiVersion: registry.thalassa.cloud/v1alpha1\nkind: DataPlaneConfig\nregion: test\n\
         namespaces: [{{name: acme, visibility: private}}]\n\
         credentials:\n  - {{id: ci, secretHash: '{hash}', scope: containerRegistry, namespaces: [acme]}}\n\
         tokens:\n  active: k1\n  keys:\n{indented}"
    );
    let path = dir.path().join("region.yaml");
    std::fs::write(&path, &document).unwrap();
    let checked = Command::new(binary())
        .args(["check-config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        checked.status.success(),
        "{}\n{document}",
        String::from_utf8_lossy(&checked.stderr)
    );
    // A key that does not load fails the check, naming the key.
    let broken_path = dir.path().join("broken.yaml");
    let broken = document.replace("MIG", "XXX");
    std::fs::write(&broken_path, &broken).unwrap();
    let checked = Command::new(binary())
        .args(["check-config", broken_path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!checked.status.success());
    assert!(String::from_utf8_lossy(&checked.stderr).contains("\"k1\""));

    let root = tempfile::tempdir().unwrap();
    let server = Dataplane::start(root.path(), &["--config", path.to_str().unwrap()]);
    let http = client();
    let base = server.url();
    let r = http.get(format!("{base}/v2/")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let challenge = r.headers()["www-authenticate"].to_str().unwrap().to_owned();
    assert_eq!(
        challenge,
        format!("Bearer realm=\"{base}/token\",service=\"test\"")
    );
    let token: serde_json::Value = http
        .get(format!(
            "{base}/token?service=test&scope=repository:acme/app:pull,push"
        ))
        .basic_auth("ci", Some("s3cret-value"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = token["token"].as_str().unwrap();
    let header = jsonwebtoken::decode_header(token).unwrap();
    assert_eq!(
        header.kid.as_deref(),
        Some("k1"),
        "signed by the configured key"
    );
    let data = pseudo_random(7, 10_000);
    let r = http
        .post(format!(
            "{base}/v2/acme/app/blobs/uploads/?digest={}",
            sha256(&data)
        ))
        .bearer_auth(token)
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", server.log());
    let r = http
        .get(format!("{base}/v2/acme/app/blobs/{}", sha256(&data)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "anonymous pull of a private namespace");
    let log = server.log();
    assert!(
        log.contains("token issued") && log.contains("credential:ci"),
        "audit events in the log:\n{log}"
    );
    assert!(
        !log.contains("s3cret-value"),
        "the secret never reaches the log"
    );
}
