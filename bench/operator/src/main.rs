//! `operator-bench`: the operator's figures.
//!
//! ```text
//! operator-bench [--credentials N] [--render N] [--scale N] [--output FILE]
//! ```
//!
//! 1. **Apply to first push**: on a harness cluster with the release `operator` and
//!    `dataplane` binaries, `kubectl apply` of one credential at a time, then a blob push with
//!    the delivered secret, retried every 20 ms until it succeeds; p50/p99 over N credentials
//!    (default 100; target p99 <= 2 s).
//! 2. **Render**: the renderer's pure part (decisions, document, shards, validation of the
//!    merged document) for a region of N credentials (default 20 000), timed in process, with
//!    the process's peak resident memory before and after.
//! 3. **Scale** (with `--scale N`): N real credentials in one region: time until all are in
//!    the document, render passes, shards, the operator's memory, and every credential
//!    logging in at the data plane.
//!
//! 4. **Sync** (with `--sync N`, alone, written to `bench/OPERATOR-SYNC.md`): N credentials,
//!    provisioned first, then each given three sync targets at once (this cluster and two
//!    remote harness clusters, one namespace each): time until all 3N copies exist, the
//!    operator's CPU time and peak memory, and the requests each apiserver served meanwhile.
//!
//! No peer registry has an operator to compare with, so these figures stand on their own.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use sha2::{Digest as _, Sha256};
use testkit::cluster::Cluster;
use testkit::process::{ChildGuard, Readiness, free_port};

fn main() -> anyhow::Result<()> {
    let mut credentials = 100usize;
    let mut render_n = 20_000usize;
    let mut scale_n = 0usize;
    let mut sync_n = 0usize;
    let mut output = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--credentials" => credentials = args.next().context("--credentials N")?.parse()?,
            "--render" => render_n = args.next().context("--render N")?.parse()?,
            "--scale" => scale_n = args.next().context("--scale N")?.parse()?,
            "--sync" => sync_n = args.next().context("--sync N")?.parse()?,
            "--output" => output = Some(PathBuf::from(args.next().context("--output FILE")?)),
            other => bail!(
                "unknown argument {other}; usage: operator-bench [--credentials N] [--render N] [--scale N] [--sync N] [--output FILE]"
            ),
        }
    }
    if sync_n > 0 {
        let output =
            output.unwrap_or_else(|| testkit::tools::repo_root().join("bench/OPERATOR-SYNC.md"));
        let mut report = String::new();
        writeln!(report, "# Operator benchmark: pull-Secret sync\n")?;
        writeln!(
            report,
            "Written by `bench/operator/run --sync {sync_n}` on {} ({} cores).\n",
            date(),
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(0)
        )?;
        let runtime = tokio::runtime::Runtime::new()?;
        report.push_str(&runtime.block_on(sync_scale(sync_n))?);
        std::fs::write(&output, &report)
            .with_context(|| format!("writing {}", output.display()))?;
        print!("{report}");
        return Ok(());
    }
    let output = output.unwrap_or_else(|| testkit::tools::repo_root().join("bench/OPERATOR.md"));
    let mut report = String::new();
    writeln!(report, "# Operator benchmarks\n")?;
    writeln!(
        report,
        "Written by `bench/operator/run` (`cargo run --release -p operator-bench`) on {} ({} cores).\n",
        date(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    )?;
    let render = render_figures(render_n);
    let runtime = tokio::runtime::Runtime::new()?;
    let latency = runtime.block_on(apply_to_push(credentials))?;
    report.push_str(&latency);
    report.push_str(&render);
    if scale_n > 0 {
        report.push_str(&runtime.block_on(scale(scale_n))?);
    }
    std::fs::write(&output, &report).with_context(|| format!("writing {}", output.display()))?;
    print!("{report}");
    Ok(())
}

fn date() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn release_bin(name: &str) -> anyhow::Result<PathBuf> {
    let path = testkit::tools::repo_root()
        .join("target/release")
        .join(name);
    if !path.exists() {
        bail!(
            "{} is missing: run `cargo build --release -p {name}`",
            path.display()
        );
    }
    Ok(path)
}

/// A region on a fresh harness cluster: release operator and data plane, one project
/// (organisation `bench`) and its registry namespace `bench`.
struct BenchRegion {
    cluster: Cluster,
    client: kube::Client,
    system: testkit::cluster::TestNamespace,
    project: testkit::cluster::TestNamespace,
    host: String,
    metrics: u16,
    operator: ChildGuard,
    dataplane: ChildGuard,
}

impl BenchRegion {
    async fn start() -> anyhow::Result<Self> {
        let cluster = Cluster::start("opbench")?;
        let crds = testkit::tools::repo_root().join("crds/yaml");
        cluster.kubectl_ok(["apply", "--server-side", "-f", crds.to_str().unwrap()])?;
        cluster.wait_crd_established(
            "registrycredentials.registry.thalassa.cloud",
            Duration::from_secs(30),
        )?;
        let client = cluster.client().await?;
        let system = cluster.test_namespace().await?;
        let project = cluster.test_namespace().await?;
        cluster.kubectl_ok([
            "label",
            "namespace",
            project.name(),
            "registry.thalassa.cloud/organisation=bench",
        ])?;
        let dir = tempfile_dir()?;
        let port = free_port();
        let host = format!("127.0.0.1:{port}");
        let settings = dir.join("settings.yaml");
        std::fs::write(
            &settings,
            format!(
                "region: bench\nregistryHost: \"{host}\"\nnamespace: {}\norganisations: {{bench: {{containerRegistry: true}}}}\n",
                system.name()
            ),
        )?;
        let metrics = free_port();
        let mut op = Command::new(release_bin("operator")?);
        op.args(["run", "--settings"])
            .arg(&settings)
            .args(["--listen", &format!("127.0.0.1:{metrics}")])
            .env("KUBECONFIG", cluster.kubeconfig_path());
        let mut operator = ChildGuard::spawn("operator", op)?;
        operator.wait_ready(
            &Readiness::Http(format!("http://127.0.0.1:{metrics}/healthz")),
            Duration::from_secs(30),
        )?;
        // The pushes below retry every 20 ms with a credential the data plane may not serve
        // yet: each refusal is a failed login, and the limits on those would make the bench
        // measure them rather than the operator. They are lifted for the bench.
        let dataplane_settings = dir.join("dataplane.yaml");
        std::fs::write(
            &dataplane_settings,
            "apiVersion: registry.thalassa.cloud/v1alpha1\nkind: DataPlaneConfig\n\
             logins: {perSource: {failures: 1000000, per: 1s}, perCredential: {failures: 1000000, per: 1s}}\n",
        )?;
        let mut dp = Command::new(release_bin("dataplane")?);
        dp.args(["serve", "--listen", &host, "--config"])
            .arg(&dataplane_settings)
            .arg("--root")
            .arg(dir.join("data"))
            .args([
                "--config-secret",
                &format!("{}/registry-config", system.name()),
            ])
            .env("KUBECONFIG", cluster.kubeconfig_path());
        let mut dataplane = ChildGuard::spawn("dataplane", dp)?;
        dataplane.wait_ready(&Readiness::Tcp(host.parse()?), Duration::from_secs(30))?;
        cluster.apply(&format!(
            "apiVersion: registry.thalassa.cloud/v1alpha1\nkind: RegistryNamespace\nmetadata: {{name: bench, namespace: {}}}\nspec: {{region: bench}}\n",
            project.name()
        ))?;
        Ok(Self {
            cluster,
            client,
            system,
            project,
            host,
            metrics,
            operator,
            dataplane,
        })
    }

    fn credential(&self, name: &str) -> String {
        format!(
            "apiVersion: registry.thalassa.cloud/v1alpha1\nkind: RegistryCredential\nmetadata: {{name: {name}, namespace: {}}}\nspec: {{region: bench, scope: containerRegistry, namespaces: [bench]}}\n",
            self.project.name()
        )
    }

    async fn metric(&self, name: &str) -> f64 {
        let body = reqwest::get(format!("http://127.0.0.1:{}/metrics", self.metrics))
            .await
            .ok()
            .map(|r| async { r.text().await.unwrap_or_default() });
        let body = match body {
            Some(f) => f.await,
            None => String::new(),
        };
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    async fn stop(self) -> anyhow::Result<()> {
        drop(self.dataplane);
        drop(self.operator);
        drop(self.project);
        drop(self.system);
        self.cluster.stop()?;
        Ok(())
    }
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Part 1: kubectl apply of a credential to its first successful push.
async fn apply_to_push(n: usize) -> anyhow::Result<String> {
    let region = BenchRegion::start().await?;
    let (cluster, host, project) = (&region.cluster, region.host.clone(), &region.project);
    let client = region.client.clone();
    let secrets = Api::<Secret>::namespaced(client, project.name());
    let http = reqwest::Client::new();
    let blob = b"first push";
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(blob)));
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let name = format!("cred-{i}");
        let manifest = region.credential(&name);
        let started = Instant::now();
        cluster.apply(&manifest)?;
        let deadline = started + Duration::from_secs(30);
        loop {
            if Instant::now() > deadline {
                bail!(
                    "{name}: no successful push within 30 s\noperator log:\n{}",
                    region.operator.log()
                );
            }
            if let Some(secret) = secrets.get_opt(&name).await? {
                let data = secret.data.unwrap_or_default();
                let text = |k: &str| {
                    data.get(k)
                        .map(|v| String::from_utf8_lossy(&v.0).into_owned())
                        .unwrap_or_default()
                };
                let status = http
                    .post(format!(
                        "http://{host}/v2/bench/app-{i}/blobs/uploads/?digest={digest}"
                    ))
                    .basic_auth(text("username"), Some(text("password")))
                    .body(blob.to_vec())
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0);
                if status == 201 {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        samples.push(started.elapsed());
    }
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let p99 = percentile(&samples, 0.99);
    let mut out = String::new();
    writeln!(out, "## Apply to first push\n")?;
    writeln!(
        out,
        "`kubectl apply` of one `RegistryCredential` at a time (release binaries, one harness cluster, filesystem storage), then a blob push with the delivered Secret's credentials retried every 20 ms until it succeeds. The time includes kubectl's own start (about 100 ms). The data plane runs with its failed-login limits lifted: the retries before the credential is served are failed logins, and with the default limits (10 per source per minute) the figure would be the limit's refill time, not the operator's latency.\n"
    )?;
    writeln!(
        out,
        "| credentials | p50 | p90 | p99 | max | target p99 | |"
    )?;
    writeln!(out, "|---|---|---|---|---|---|---|")?;
    writeln!(
        out,
        "| {n} | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms | <= 2000 ms | {} |\n",
        ms(percentile(&samples, 0.5)),
        ms(percentile(&samples, 0.9)),
        ms(p99),
        ms(*samples.last().unwrap()),
        if p99 <= Duration::from_secs(2) {
            "met"
        } else {
            "not met"
        }
    )?;
    let _ = project;
    region.stop().await?;
    Ok(out)
}

/// Part 3: a region of `n` real credentials: time to deliver them all, the operator's
/// memory and render passes, shards, and every credential logging in at the data plane.
async fn scale(n: usize) -> anyhow::Result<String> {
    let region = BenchRegion::start().await?;
    let started = Instant::now();
    for batch in (0..n).collect::<Vec<_>>().chunks(1000) {
        let manifest: String = batch
            .iter()
            .map(|i| format!("---\n{}", region.credential(&format!("c{i:05}"))))
            .collect();
        let file = std::env::temp_dir().join(format!("opbench-{}.yaml", std::process::id()));
        std::fs::write(&file, manifest)?;
        region
            .cluster
            .kubectl_ok(["apply", "--server-side", "-f", file.to_str().unwrap()])?;
    }
    let applied = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(3600);
    loop {
        let ready = region
            .metric("registry_operator_objects{kind=\"RegistryCredential\",reason=\"Ready\"}")
            .await as usize;
        if ready >= n {
            break;
        }
        if Instant::now() > deadline {
            bail!("only {ready} of {n} credentials in the document after an hour");
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let converged = started.elapsed();
    let secrets = Api::<Secret>::namespaced(region.client.clone(), region.project.name());
    let delivered = secrets
        .list(&kube::api::ListParams::default().labels("registry.thalassa.cloud/credential-uid"))
        .await?
        .items;
    let pid = region.operator.pid();
    let (rss, hwm) = (rss_kib(pid, "VmRSS:"), rss_kib(pid, "VmHWM:"));
    let dp_rss = rss_kib(region.dataplane.pid(), "VmRSS:");
    let passes = region
        .metric("registry_operator_reconcile_duration_seconds_count{controller=\"render\"}")
        .await;
    let pass_sum = region
        .metric("registry_operator_reconcile_duration_seconds_sum{controller=\"render\"}")
        .await;
    let shards = region.metric("registry_operator_config_shards").await;
    let bytes = region.metric("registry_operator_config_bytes").await;

    // Every credential logs in (token endpoint, Basic), four at a time.
    let http = reqwest::Client::new();
    let url = format!(
        "http://{}/token?service=bench&scope=repository:bench/app:pull",
        region.host
    );
    let logins_started = Instant::now();
    let mut ok = 0usize;
    for chunk in delivered.chunks(4) {
        let results = futures::future::join_all(chunk.iter().map(|s| {
            let data = s.data.clone().unwrap_or_default();
            let text = |k: &str| {
                data.get(k)
                    .map(|v| String::from_utf8_lossy(&v.0).into_owned())
                    .unwrap_or_default()
            };
            let (user, password) = (text("username"), text("password"));
            let (http, url) = (http.clone(), url.clone());
            async move {
                http.get(url)
                    .basic_auth(user, Some(password))
                    .send()
                    .await
                    .map(|r| r.status().as_u16() == 200)
                    .unwrap_or(false)
            }
        }))
        .await;
        ok += results.into_iter().filter(|r| *r).count();
    }
    let logins = logins_started.elapsed();
    let mut out = String::new();
    writeln!(out, "## A region of {n} credentials\n")?;
    writeln!(
        out,
        "Release operator and data plane on one harness cluster; the credentials applied with `kubectl apply --server-side` in batches of 1000, then every delivered credential logging in at the data plane's token endpoint (four at a time).\n"
    )?;
    writeln!(
        out,
        "| credentials | applied | all in the document | render passes | mean pass | shards | document | operator RSS (peak) | data plane RSS | logins ok | login time |"
    )?;
    writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|")?;
    writeln!(
        out,
        "| {n} | {:.0} s | {:.0} s | {passes:.0} | {:.0} ms | {shards:.0} | {:.1} MiB | {:.0} MiB ({:.0} MiB) | {:.0} MiB | {ok} of {} | {:.0} s |\n",
        applied.as_secs_f64(),
        converged.as_secs_f64(),
        if passes > 0.0 {
            pass_sum / passes * 1000.0
        } else {
            0.0
        },
        bytes / 1048576.0,
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0,
        dp_rss as f64 / 1024.0,
        delivered.len(),
        logins.as_secs_f64(),
    )?;
    region.stop().await?;
    Ok(out)
}

/// The namespace each sync target writes into, in every cluster.
const SYNC_TARGET: &str = "sync-target";

/// Part 4: N credentials, then three sync targets each.
async fn sync_scale(n: usize) -> anyhow::Result<String> {
    let region = BenchRegion::start().await?;
    let a = Cluster::start("opbench-a")?;
    let b = Cluster::start("opbench-b")?;
    let p = region.project.name().to_owned();
    region.cluster.apply(&format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {SYNC_TARGET}, labels: {{registry.thalassa.cloud/organisation: bench, registry.thalassa.cloud/pull-secrets: accept}}}}\n"
    ))?;
    for remote in [&a, &b] {
        remote.kubectl_ok(["create", "namespace", SYNC_TARGET])?;
    }
    let dir = tempfile_dir()?;
    for (name, remote) in [("cluster-a", &a), ("cluster-b", &b)] {
        let file = dir.join(name);
        std::fs::write(&file, remote.embedded_kubeconfig()?)?;
        region.cluster.kubectl_ok([
            "create",
            "secret",
            "generic",
            name,
            "-n",
            &p,
            &format!("--from-file=kubeconfig={}", file.display()),
        ])?;
    }
    let apply = |spec: &dyn Fn(usize) -> String| -> anyhow::Result<()> {
        for batch in (0..n).collect::<Vec<_>>().chunks(500) {
            let manifest: String = batch.iter().map(|i| format!("---\n{}", spec(*i))).collect();
            let file = dir.join("credentials.yaml");
            std::fs::write(&file, manifest)?;
            region
                .cluster
                .kubectl_ok(["apply", "--server-side", "-f", file.to_str().unwrap()])?;
        }
        Ok(())
    };
    let credential = |i: usize, sync: &str| {
        format!(
            "apiVersion: registry.thalassa.cloud/v1alpha1\nkind: RegistryCredential\nmetadata: {{name: c{i:05}, namespace: {p}}}\n\
             spec:\n  region: bench\n  scope: \"containerRegistry:pull\"\n  namespaces: [bench]\n{sync}"
        )
    };

    // The credentials first, each issued and delivered.
    let started = Instant::now();
    apply(&|i| credential(i, ""))?;
    let deadline = Instant::now() + Duration::from_secs(1800);
    while (region
        .metric("registry_operator_objects{kind=\"RegistryCredential\",reason=\"Ready\"}")
        .await as usize)
        < n
    {
        if Instant::now() > deadline {
            bail!("the {n} credentials were not Ready within 30 minutes");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let provisioned = started.elapsed();
    // Let the last status writes settle, then count from here.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let pid = region.operator.pid();
    let cpu_before = cpu_seconds(pid);
    let clusters = [("region", &region.cluster), ("a", &a), ("b", &b)];
    let mut requests_before = Vec::new();
    for (_, cluster) in clusters {
        requests_before.push(apiserver_requests(cluster).await?);
    }

    // Then three targets each, at once: server-side applies, 16 at a time (as a GitOps
    // controller applies a change to many objects).
    let credentials =
        Api::<crds::v1alpha1::RegistryCredential>::namespaced(region.client.clone(), &p);
    let started = Instant::now();
    let target = |cluster: Option<&str>, i: usize| {
        let mut t = serde_json::json!({
            "namespaces": [SYNC_TARGET],
            "secretName": format!("c{i:05}"),
        });
        if let Some(name) = cluster {
            t["cluster"] = serde_json::json!({
                "name": name,
                "kubeconfigSecret": {"name": format!("cluster-{name}")},
            });
        }
        t
    };
    let results: Vec<kube::Result<_>> = futures::stream::iter(0..n)
        .map(|i| {
            let credentials = credentials.clone();
            let patch = serde_json::json!({
                "apiVersion": "registry.thalassa.cloud/v1alpha1",
                "kind": "RegistryCredential",
                "metadata": {"name": format!("c{i:05}"), "namespace": p},
                "spec": {
                    "region": "bench",
                    "scope": "containerRegistry:pull",
                    "namespaces": ["bench"],
                    "sync": [target(None, i), target(Some("a"), i), target(Some("b"), i)],
                },
            });
            async move {
                credentials
                    .patch(
                        &format!("c{i:05}"),
                        &kube::api::PatchParams::apply("operator-bench"),
                        &kube::api::Patch::Apply(&patch),
                    )
                    .await
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    if let Some(Err(e)) = results.into_iter().find(|r| r.is_err()) {
        bail!("applying the sync targets: {e}");
    }
    let applied = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(1800);
    let mut counts = [0usize; 3];
    loop {
        for (i, (_, cluster)) in clusters.iter().enumerate() {
            counts[i] = copies(cluster).await?;
        }
        if counts.iter().all(|c| *c >= n) {
            break;
        }
        if Instant::now() > deadline {
            bail!("copies after 30 minutes: {counts:?} of {n} each");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let converged = started.elapsed();
    let cpu = cpu_seconds(pid) - cpu_before;
    let hwm = rss_kib(pid, "VmHWM:");
    let mut requests = Vec::new();
    for (i, (name, cluster)) in clusters.iter().enumerate() {
        requests.push((
            *name,
            apiserver_requests(cluster).await? - requests_before[i],
        ));
    }

    let mut out = String::new();
    writeln!(out, "## {n} credentials synced to three clusters\n")?;
    writeln!(
        out,
        "Release operator and data plane on a harness cluster (the region), and two more harness clusters reached through kubeconfig Secrets in the credentials' namespace. The {n} credentials are applied and provisioned first ({:.0} s until all were Ready: {n} argon2 hashes, delivered Secrets, state and status). Then every credential gets three sync targets at once by server-side apply, 16 requests at a time (a namespace in the region's cluster and one in each remote cluster); the time runs from the first apply until all {} copies exist. CPU is the operator's user and system time over that interval; requests are each apiserver's `apiserver_request_total` over it (every client: the operator, kubectl, the controller-manager, the data plane).\n",
        provisioned.as_secs_f64(),
        3 * n
    )?;
    writeln!(
        out,
        "| credentials | copies | apply | all copies exist | target | operator CPU | operator peak RSS | requests: region | remote a | remote b |"
    )?;
    writeln!(out, "|---|---|---|---|---|---|---|---|---|---|")?;
    writeln!(
        out,
        "| {n} | {} | {:.1} s | {:.1} s | <= 30 s: {} | {cpu:.1} s | {:.0} MiB | {:.0} | {:.0} | {:.0} |\n",
        3 * n,
        applied.as_secs_f64(),
        converged.as_secs_f64(),
        if converged <= Duration::from_secs(30) {
            "met"
        } else {
            "missed"
        },
        hwm as f64 / 1024.0,
        requests[0].1,
        requests[1].1,
        requests[2].1,
    )?;
    drop(a);
    drop(b);
    region.stop().await?;
    Ok(out)
}

/// The operator's copies in the sync target namespace of `cluster`.
async fn copies(cluster: &Cluster) -> anyhow::Result<usize> {
    let api = Api::<Secret>::namespaced(cluster.client().await?, SYNC_TARGET);
    let list = api
        .list_metadata(
            &kube::api::ListParams::default().labels("registry.thalassa.cloud/credential-uid"),
        )
        .await?;
    Ok(list.items.len())
}

/// The requests an apiserver has served (`apiserver_request_total`, every label summed).
async fn apiserver_requests(cluster: &Cluster) -> anyhow::Result<f64> {
    let client = cluster.client().await?;
    let request = http::Request::get("/metrics").body(Vec::new())?;
    let text = client.request_text(request).await?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// User and system CPU seconds of a process (`/proc/PID/stat`, 100 ticks a second).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which ends with the last ')'): utime is the 12th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("operator-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Part 2: rendering a region of `n` credentials (the renderer's pure part).
fn render_figures(n: usize) -> String {
    use crds::config::{CredentialConfig, Scope};
    let settings = operator::settings::Settings::from_yaml_str(
        "region: bench\nregistryHost: r.example.com\nnamespace: reg\norganisations: {bench: {containerRegistry: true}}\n",
    )
    .expect("settings");
    let before = peak_rss_kib();
    let credentials: Vec<CredentialConfig> = (0..n)
        .map(|i| CredentialConfig {
            id: format!("team-{}.credential-{i:06}", i % 50),
            // A real argon2id PHC string has this shape and length.
            secret_hash: format!(
                "$argon2id$v=19$m=19456,t=2,p=1${}${}",
                &hex::encode(Sha256::digest(i.to_be_bytes()))[..22],
                &hex::encode(Sha256::digest((i + 1).to_be_bytes()))[..43]
            ),
            scope: if i % 3 == 0 {
                Scope::ContainerRegistry
            } else {
                Scope::ContainerRegistryPull
            },
            namespaces: vec![format!("ns-{}", i % 200)],
            not_before: None,
            expires_at: None,
            previous_secrets: Vec::new(),
        })
        .collect();
    // The 200 registry namespaces the credentials name, each declared by a RegistryNamespace
    // in the Kubernetes namespace `team`, which belongs to the organisation `bench`.
    let objects: Vec<crds::v1alpha1::RegistryNamespace> = (0..200)
        .map(|i| {
            let mut ns = crds::v1alpha1::RegistryNamespace::new(
                &format!("ns-{i}"),
                crds::v1alpha1::RegistryNamespaceSpec {
                    name: None,
                    region: "bench".to_owned(),
                    visibility: Default::default(),
                    scope: Default::default(),
                    immutable_tags: Vec::new(),
                    description: None,
                },
            );
            ns.metadata.namespace = Some("team".to_owned());
            ns
        })
        .collect();
    let orgs = operator::resolve::Organisations::from([("team".to_owned(), "bench".to_owned())]);
    let namespaces = operator::resolve::NamespaceIndex::build(&settings, &orgs, &objects);
    assert_eq!(
        namespaces.served().len(),
        200,
        "every bench namespace is served"
    );
    let mut runs = Vec::new();
    let mut last = None;
    for _ in 0..5 {
        let started = Instant::now();
        let rendered = operator::render::render(
            &settings,
            &namespaces,
            credentials.clone(),
            Vec::new(),
            Default::default(),
            1,
        );
        let bytes: usize = rendered
            .shards
            .iter()
            .map(|(_, s)| serde_json::to_string(s).map(|t| t.len()).unwrap_or(0))
            .sum();
        let digest = rendered.content_digest();
        runs.push((
            started.elapsed(),
            rendered.shards.len(),
            bytes,
            digest.len(),
        ));
        last = Some(rendered);
    }
    // Validation of the merged document is what the data plane repeats on its side.
    let rendered = last.unwrap();
    let started = Instant::now();
    let merged = rendered.merged();
    let validate = started.elapsed();
    let after = peak_rss_kib();
    runs.sort();
    let (median, shards, bytes, _) = runs[runs.len() / 2];
    let mut out = String::new();
    let _ = writeln!(out, "## Rendering {n} credentials\n");
    let _ = writeln!(
        out,
        "The renderer's pure part in one process: the document with its shards (default `shardBytes`, 512 KiB), its content digest, and validation of the merged document. Median of 5. Peak RSS is the bench process's (the credential list itself included).\n"
    );
    let _ = writeln!(
        out,
        "| credentials | render + digest | validate merged | shards | shard bytes | peak RSS before | peak RSS after |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|");
    let _ = writeln!(
        out,
        "| {n} | {:.0} ms | {:.0} ms | {shards} | {:.1} MiB | {:.1} MiB | {:.1} MiB |\n",
        median.as_secs_f64() * 1000.0,
        validate.as_secs_f64() * 1000.0,
        bytes as f64 / 1048576.0,
        before as f64 / 1024.0,
        after as f64 / 1024.0,
    );
    // A document the data plane would refuse is no figure at all.
    if let Err(e) = merged {
        panic!("the rendered document of {n} credentials does not validate: {e}");
    }
    out
}
