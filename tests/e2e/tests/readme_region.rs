//! The README's third path, "A region on Kubernetes", works as written: its five commands
//! (a harness cluster with a node, the images pushed into the first command's registry,
//! `helm install`, a project applied with kubectl, a port-forward) give a region that the
//! README's next commands push to with the delivered `ci` credential, and from which the
//! `deploy` credential pulls what was pushed.
//!
//! The commands are read from README.md, not copied here. The README's first command (the
//! registry on `127.0.0.1:5000`) runs as the workspace's debug `dataplane serve` in a
//! temporary directory rather than through `cargo run --release`, which would build the
//! workspace once more. The README uses fixed ports (5000, 5050) and the cluster name `demo`;
//! the test checks that they are free first and says so when they are not.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use testkit::clients::{Client, Credentials, pull_image};
use testkit::process::{self, ChildGuard, Output, Readiness, run_unchecked};
use testkit::tools::{cache_dir, repo_root, workspace_bin};

/// The cluster name the README uses.
const CLUSTER: &str = "demo";
/// Longest the README's command block may take (it installs and waits for a rollout).
const BLOCK_LIMIT: Duration = Duration::from_secs(900);

/// The shell lines of the first ` ```sh ` block after `heading` (comments and blank lines
/// left out; a trailing `# ...` comment is the shell's business).
fn commands_after(readme: &str, heading: &str, skip_blocks: usize) -> Vec<String> {
    let start = readme
        .find(heading)
        .unwrap_or_else(|| panic!("README.md has no {heading:?} section"));
    let mut blocks = readme[start..].split("```sh\n").skip(1 + skip_blocks);
    let block = blocks
        .next()
        .expect("a sh block")
        .split("```")
        .next()
        .unwrap();
    block
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

fn assert_port_free(port: u16) {
    if let Err(e) = TcpListener::bind(("127.0.0.1", port)) {
        panic!(
            "the README's commands use 127.0.0.1:{port}, which is taken here ({e}): stop what \
             listens there and run the test again"
        );
    }
}

/// Runs `script` with bash (`-euo pipefail`) in the repository, with the harness binaries
/// on `PATH` and this process as the owner of any harness cluster it starts.
fn bash(script: &str, limit: Duration) -> Output {
    let mut command = Command::new("bash");
    command
        .args(["-euo", "pipefail", "-c", script])
        .current_dir(repo_root())
        .env("PATH", path_with_harness())
        .env(
            "REGISTRY_HARNESS_CLUSTER_OWNER",
            std::process::id().to_string(),
        );
    run_unchecked(&mut command, limit).expect("bash runs")
}

fn path_with_harness() -> String {
    format!(
        "{}:{}",
        cache_dir().join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// The README's `demo` cluster, stopped (with its node) on drop.
struct DemoCluster;

impl Drop for DemoCluster {
    fn drop(&mut self) {
        let down = bash(
            &format!("tests/harness/cluster down {CLUSTER}"),
            Duration::from_secs(120),
        );
        if !down.status.success() {
            eprintln!("warning: cluster down {CLUSTER}: {}", down.stderr);
        }
    }
}

/// The lines that load the `demo` cluster's environment (KUBECONFIG) into a script.
fn with_cluster_env(script: &str) -> String {
    format!("eval \"$(tests/harness/cluster env {CLUSTER})\"\n{script}")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_readmes_region_on_kubernetes_works_as_written() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).expect("README.md");
    let commands = commands_after(&readme, "## A region on Kubernetes", 0);
    assert!(
        commands.len() <= 5,
        "the path must stay at most 5 commands: {commands:#?}"
    );
    let (forward, setup) = commands.split_last().expect("commands");
    assert!(
        forward.contains("port-forward") && forward.contains("5050:5000"),
        "the last command forwards 127.0.0.1:5050 to the region: {forward}"
    );
    let usage = commands_after(&readme, "## A region on Kubernetes", 1);
    assert!(
        usage.last().is_some_and(|l| l.contains("cluster down")),
        "{usage:#?}"
    );

    let state = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp"))
        .join("registry-harness/clusters")
        .join(CLUSTER);
    assert!(
        !state.exists(),
        "a harness cluster named {CLUSTER} exists ({}): the README's commands would reuse \
         it; remove it with `tests/harness/cluster down {CLUSTER}`",
        state.display()
    );
    assert_port_free(5000);
    assert_port_free(5050);

    // The README's first command: the registry on 127.0.0.1:5000.
    let data = tempfile::tempdir().expect("tempdir");
    let mut first = Command::new(workspace_bin("dataplane"));
    first.arg("serve").current_dir(data.path());
    let mut registry = ChildGuard::spawn("first-command", first).expect("dataplane serve");
    registry
        .wait_ready(
            &Readiness::Http("http://127.0.0.1:5000/readyz".to_owned()),
            process::READY_TIMEOUT,
        )
        .expect("the first command's registry is ready");

    let _cluster = DemoCluster;
    let out = bash(&setup.join("\n"), BLOCK_LIMIT);
    assert!(
        out.status.success(),
        "the README's commands failed:\n{}\n{}",
        out.stdout,
        out.stderr
    );

    let mut port_forward = Command::new("bash");
    port_forward
        .args(["-c", &with_cluster_env(&format!("exec {forward}"))])
        .current_dir(repo_root())
        .env("PATH", path_with_harness())
        .stdin(std::process::Stdio::null());
    let mut forwarding = ChildGuard::spawn("port-forward", port_forward).expect("port-forward");
    forwarding
        .wait_ready(
            &Readiness::Http("http://127.0.0.1:5050/readyz".to_owned()),
            process::READY_TIMEOUT,
        )
        .expect("the region answers on 127.0.0.1:5050");

    // The README's next commands, but the last (`cluster down`, which the guard runs).
    let (_, push) = usage.split_last().unwrap();
    let home = tempfile::tempdir().expect("crane home");
    let out = bash(
        &with_cluster_env(&format!(
            "export DOCKER_CONFIG={}\n{}",
            home.path().display(),
            push.join("\n")
        )),
        Duration::from_secs(300),
    );
    assert!(
        out.status.success(),
        "the README's push failed:\n{}\n{}",
        out.stdout,
        out.stderr
    );

    // What was pushed is served to the pull-only credential, and anonymous pulls are refused.
    let deploy = {
        let field = |key: &str| {
            let out = bash(
                &with_cluster_env(&format!(
                    "kubectl -n team-a get secret deploy -o jsonpath='{{.data.{key}}}' | base64 -d"
                )),
                Duration::from_secs(60),
            );
            assert!(out.status.success(), "{}", out.stderr);
            out.stdout
        };
        Credentials::new(field("username"), field("password"))
    };
    let reference = "127.0.0.1:5050/apps/dataplane:0.1.0";
    let pulled = pull_image(Client::Crane, reference, Some(&deploy)).expect("crane runs");
    assert!(pulled.succeeded(), "{}", pulled.output.stderr);
    let original = pull_image(
        Client::Crane,
        "127.0.0.1:5000/quickstart/registry-dataplane:0.1.0",
        None,
    )
    .expect("crane runs");
    assert_eq!(
        pulled.digest, original.digest,
        "the region serves what was copied"
    );
    let anonymous = pull_image(Client::Crane, reference, None).expect("crane runs");
    assert!(
        !anonymous.succeeded(),
        "apps is private: an anonymous pull must be refused"
    );
}
