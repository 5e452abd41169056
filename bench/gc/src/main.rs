//! A retention-and-collection pass over a large region on the filesystem, and Distribution
//! v3's offline `garbage-collect` on the same data as the peer figure. Writes `bench/GC.md`.
//!
//! The region: `--repos` repositories (`bench/r0000` ...), each with 34 image manifests (a
//! config and two layers each, from 33 configs and 33 layers of its own: 100 blobs per
//! repository) and `--tags` tags, pushed in order; tag `j` points at manifest
//! `j * 34 / tags`, so consecutive tags share a manifest. The policy keeps the 100 most
//! recently pushed tags of each repository (tags pushed within the same clock tick as the
//! 100th count as one, and are kept together): the older tags go, with the manifests only
//! they pointed at; collection then frees those manifests, their configs and the layers no
//! kept manifest names.
//!
//! Ours is populated through the data plane's own registry and storage (uploads, manifest
//! pushes, tag writes) and measured in three steps: the retention plan over every
//! repository, the run that deletes it, and one garbage collection. Distribution's layout is
//! written as files (the same blobs and manifests, and the tags our run kept), and `registry
//! garbage-collect --delete-untagged` runs on it with the registry stopped, as it must. Both
//! must remove the same blobs.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, Result, bail};
use bytes::Bytes;
use crds::retention::{KeepLast, RetentionRules, RetentionScope};
use dataplane::oci::{Digest, RepoName, Tag};
use dataplane::registry::gc::{Collector, GcMetrics};
use dataplane::registry::{PutTarget, Registry};
use dataplane::storage::Storage;
use dataplane::storage::fs::FsStorage;
use futures::StreamExt as _;
use sha2::Digest as _;

const MANIFESTS: usize = 34;
const CONFIGS: usize = 33;
const LAYERS: usize = 33;
const KEPT_TAGS: usize = 100;
const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// Repositories populated at once.
const PARALLEL: usize = 8;

struct Args {
    repos: usize,
    tags: usize,
    dir: PathBuf,
    distribution: Option<PathBuf>,
    output: PathBuf,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        repos: 1000,
        tags: 1000,
        dir: std::env::temp_dir().join("gc-bench"),
        distribution: None,
        output: PathBuf::from("bench/GC.md"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--repos" => args.repos = value()?.parse()?,
            "--tags" => args.tags = value()?.parse()?,
            "--dir" => args.dir = value()?.into(),
            "--distribution" => args.distribution = Some(value()?.into()),
            "--output" => args.output = value()?.into(),
            other => bail!(
                "unknown argument {other}; use --repos N --tags N --dir DIR --distribution BIN --output FILE"
            ),
        }
    }
    if args.tags < KEPT_TAGS * 2 {
        bail!("--tags must be at least {}", KEPT_TAGS * 2);
    }
    Ok(args)
}

fn sha256(data: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(data))
}

/// The blobs and manifests of one repository, deterministic.
struct RepoContent {
    name: String,
    configs: Vec<Vec<u8>>,
    layers: Vec<Vec<u8>>,
    manifests: Vec<Vec<u8>>,
}

fn content(index: usize) -> RepoContent {
    let name = format!("bench/r{index:04}");
    let configs: Vec<Vec<u8>> = (0..CONFIGS)
        .map(|i| format!(r#"{{"repo":"{name}","config":{i}}}"#).into_bytes())
        .collect();
    let layers: Vec<Vec<u8>> = (0..LAYERS)
        .map(|i| format!("layer {i} of {name} ").repeat(40).into_bytes())
        .collect();
    let manifests = (0..MANIFESTS)
        .map(|m| {
            let config = &configs[m % CONFIGS];
            let (a, b) = (&layers[m % LAYERS], &layers[(m + 1) % LAYERS]);
            format!(
                r#"{{"schemaVersion":2,"mediaType":"{MANIFEST_TYPE}","annotations":{{"bench.manifest":"{m}"}},"config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:{}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:{}","size":{}}},{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:{}","size":{}}}]}}"#,
                sha256(config),
                config.len(),
                sha256(a),
                a.len(),
                sha256(b),
                b.len()
            )
            .into_bytes()
        })
        .collect();
    RepoContent {
        name,
        configs,
        layers,
        manifests,
    }
}

fn tag_name(j: usize) -> String {
    format!("ci-{j:06}")
}

fn manifest_of_tag(j: usize, tags: usize) -> usize {
    j * MANIFESTS / tags
}

async fn populate_ours(registry: &Registry, index: usize, tags: usize) -> Result<()> {
    let repo_content = content(index);
    let repo: RepoName = repo_content.name.parse()?;
    for blob in repo_content.configs.iter().chain(&repo_content.layers) {
        let digest: Digest = format!("sha256:{}", sha256(blob)).parse()?;
        let body = futures::stream::once({
            let data = Bytes::from(blob.clone());
            async move { Ok(data) }
        });
        registry
            .upload_monolithic(&repo, &digest, Some(blob.len() as u64), Box::pin(body))
            .await?;
    }
    let mut digests = Vec::new();
    for manifest in &repo_content.manifests {
        let put = registry
            .manifest_put(
                &repo,
                &PutTarget::default(),
                Some(MANIFEST_TYPE),
                Bytes::from(manifest.clone()),
            )
            .await?;
        digests.push(put.digest);
    }
    let storage = registry.storage();
    for j in 0..tags {
        let tag: Tag = tag_name(j).parse()?;
        storage
            .tag_set(&repo, &tag, &digests[manifest_of_tag(j, tags)])
            .await?;
    }
    Ok(())
}

fn write(path: &Path, data: &[u8]) -> Result<()> {
    std::fs::create_dir_all(path.parent().context("a parent")?)?;
    std::fs::write(path, data)?;
    Ok(())
}

/// Distribution's filesystem layout of the same region, with only the tags our run kept
/// (`kept`: per repository in order, tag and manifest digest), as a tool deleting the others through
/// the API would leave it.
fn populate_distribution(root: &Path, kept: &[Vec<(String, String)>]) -> Result<()> {
    let v2 = root.join("docker/registry/v2");
    for (index, kept_tags) in kept.iter().enumerate() {
        let repo_content = content(index);
        let repo_dir = v2.join("repositories").join(&repo_content.name);
        let blob = |data: &[u8]| -> Result<String> {
            let hex = sha256(data);
            write(
                &v2.join("blobs/sha256")
                    .join(&hex[..2])
                    .join(&hex)
                    .join("data"),
                data,
            )?;
            Ok(hex)
        };
        for data in repo_content.configs.iter().chain(&repo_content.layers) {
            let hex = blob(data)?;
            write(
                &repo_dir.join("_layers/sha256").join(&hex).join("link"),
                format!("sha256:{hex}").as_bytes(),
            )?;
        }
        for data in &repo_content.manifests {
            let hex = blob(data)?;
            write(
                &repo_dir
                    .join("_manifests/revisions/sha256")
                    .join(&hex)
                    .join("link"),
                format!("sha256:{hex}").as_bytes(),
            )?;
        }
        for (tag, digest) in kept_tags {
            let hex = digest.trim_start_matches("sha256:");
            let tag_dir = repo_dir.join("_manifests/tags").join(tag);
            write(&tag_dir.join("current/link"), digest.as_bytes())?;
            write(
                &tag_dir.join("index/sha256").join(hex).join("link"),
                digest.as_bytes(),
            )?;
        }
    }
    Ok(())
}

fn count_files(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => count_files(&e.path()),
            Ok(_) => 1,
            Err(_) => 0,
        })
        .sum()
}

fn seconds(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = parse_args()?;
    let (repos, tags) = (args.repos, args.tags);
    let _ = std::fs::remove_dir_all(&args.dir);
    let ours_root = args.dir.join("dataplane");
    let peer_root = args.dir.join("distribution");

    eprintln!("populating {repos} repositories x {tags} tags (ours)");
    let started = Instant::now();
    let storage: Arc<dyn Storage> = Arc::new(FsStorage::open(&ours_root).await?);
    let registry = Arc::new(Registry::new(Arc::clone(&storage)));
    let results: Vec<Result<()>> = futures::stream::iter(0..repos)
        .map(|index| {
            let registry = Arc::clone(&registry);
            async move { populate_ours(&registry, index, tags).await }
        })
        .buffer_unordered(PARALLEL)
        .collect()
        .await;
    results.into_iter().collect::<Result<Vec<()>>>()?;
    let populate_ours_time = started.elapsed();
    let blobs_before = storage.blobs().await?;
    eprintln!(
        "populated in {}: {} blobs",
        seconds(populate_ours_time),
        blobs_before.len()
    );

    // The pass: plan, run, collect.
    let scope = RetentionScope {
        namespaces: vec!["bench".into()],
        repositories: Vec::new(),
    };
    let rules = RetentionRules {
        keep_last: vec![KeepLast {
            tags: "*".into(),
            count: KEPT_TAGS as u32,
        }],
        ..RetentionRules::default()
    };
    let none = BTreeSet::new();
    let started = Instant::now();
    let planned =
        dataplane::retention::plan(&registry, &scope, &rules, &none, SystemTime::now()).await?;
    let plan_time = started.elapsed();
    let summary = planned.plan.summary();
    eprintln!(
        "planned in {}: {} tags, {} manifests, {} bytes",
        seconds(plan_time),
        summary.tags,
        summary.manifests,
        summary.bytes
    );
    let items: Vec<_> = planned.plan.items.clone();
    let started = Instant::now();
    let ran =
        dataplane::retention::apply(&registry, &scope, &rules, &none, SystemTime::now(), &items)
            .await?;
    let run_time = started.elapsed();
    let deleted = ran.plan.summary();
    eprintln!(
        "ran in {}: deleted {} tags, {} manifests",
        seconds(run_time),
        deleted.tags,
        deleted.manifests
    );
    // Everything was written more than a second ago: a one-second grace lets it all go.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut collector = Collector::new(
        Arc::clone(&registry),
        Duration::from_secs(1),
        GcMetrics::default(),
    );
    let started = Instant::now();
    let report = collector
        .run_once()
        .await?
        .context("the lease is free in a fresh root")?;
    let gc_time = started.elapsed();
    collector.release().await;
    eprintln!(
        "collected in {}: {} blobs, {} bytes",
        seconds(gc_time),
        report.collected,
        report.freed_bytes
    );
    if report.freed_bytes != summary.bytes {
        bail!(
            "collection freed {} bytes, the plan announced {}",
            report.freed_bytes,
            summary.bytes
        );
    }

    // The peer, with the tags our run kept.
    let peer = match &args.distribution {
        Some(binary) => {
            eprintln!("populating Distribution's layout");
            let mut kept = Vec::with_capacity(repos);
            for index in 0..repos {
                let repo: RepoName = content(index).name.parse()?;
                kept.push(
                    storage
                        .tag_records(&repo)
                        .await?
                        .into_iter()
                        .map(|t| (t.tag.as_str().to_owned(), t.digest.to_string()))
                        .collect::<Vec<_>>(),
                );
            }
            let started = Instant::now();
            populate_distribution(&peer_root, &kept)?;
            let populate_peer_time = started.elapsed();
            let blob_files_before = count_files(&peer_root.join("docker/registry/v2/blobs"));
            let config = args.dir.join("distribution.yml");
            std::fs::write(
                &config,
                format!(
                    "version: 0.1\nlog: {{level: error}}\nstorage:\n  filesystem: {{rootdirectory: {}}}\n  delete: {{enabled: true}}\nhttp: {{addr: 127.0.0.1:0}}\n",
                    peer_root.display()
                ),
            )?;
            eprintln!("running Distribution's garbage-collect");
            let started = Instant::now();
            let out = Command::new(binary)
                .args(["garbage-collect", "--delete-untagged"])
                .arg(&config)
                .env("OTEL_TRACES_EXPORTER", "none")
                .output()?;
            let peer_time = started.elapsed();
            if !out.status.success() {
                bail!(
                    "garbage-collect failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            let blob_files_after = count_files(&peer_root.join("docker/registry/v2/blobs"));
            Some((
                populate_peer_time,
                peer_time,
                blob_files_before,
                blob_files_after,
            ))
        }
        None => None,
    };

    let blobs_after = storage.blobs().await?.len();
    if let Some((_, _, before, after)) = &peer
        && (before - after) as usize != report.collected
    {
        eprintln!(
            "warning: Distribution removed {} blob files, the data plane collected {}",
            before - after,
            report.collected
        );
    }
    let total = plan_time + run_time + gc_time;
    let mut md = String::new();
    md.push_str("# Retention and collection over a large region\n\n");
    md.push_str(&format!(
        "Measured by `bench/gc/run` (`gc-bench --repos {repos} --tags {tags}`) on {}, a 2-core \
         machine, filesystem storage on tmpfs. {repos} repositories, {} tags, {} blobs \
         ({MANIFESTS} image manifests and {} configs and layers per repository). The policy \
         keeps the {KEPT_TAGS} most recently pushed tags of each repository.\n\n",
        humantime_now(),
        repos * tags,
        blobs_before.len(),
        CONFIGS + LAYERS,
    ));
    md.push_str("| step | data plane (online) | Distribution v3 (offline `garbage-collect --delete-untagged`) |\n|---|---|---|\n");
    md.push_str(&format!(
        "| plan (status shows it) | {} | no equivalent |\n",
        seconds(plan_time)
    ));
    md.push_str(&format!(
        "| run: delete {} tags and {} manifests | {} | tags removed beforehand (not timed) |\n",
        deleted.tags,
        deleted.manifests,
        seconds(run_time)
    ));
    match &peer {
        Some((_, peer_time, before, after)) => md.push_str(&format!(
            "| collect | {} ({} of {} blobs, {} bytes) | {} ({} of {} blob files removed; registry stopped) |\n",
            seconds(gc_time),
            report.collected,
            blobs_before.len(),
            report.freed_bytes,
            seconds(*peer_time),
            before - after,
            before,
        )),
        None => md.push_str(&format!(
            "| collect | {} ({} of {} blobs, {} bytes) | not run |\n",
            seconds(gc_time),
            report.collected,
            blobs_before.len(),
            report.freed_bytes
        )),
    }
    md.push_str(&format!(
        "| **pass** | **{}** (target: under 60 s) | |\n\n",
        seconds(total)
    ));
    md.push_str(&format!(
        "Blobs left: {blobs_after}. Populating took {} for ours (through the registry: \
         uploads, manifest pushes, tag writes){}.\n",
        seconds(populate_ours_time),
        peer.as_ref()
            .map(|(p, ..)| format!(", {} for Distribution's layout (plain files)", seconds(*p)))
            .unwrap_or_default()
    ));
    std::fs::write(&args.output, md)?;
    eprintln!("wrote {}", args.output.display());
    let _ = std::fs::remove_dir_all(&args.dir);
    Ok(())
}

fn humantime_now() -> String {
    let now = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    now[..10].to_owned()
}
