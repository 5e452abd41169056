//! A retention-and-collection pass over a large region, on the filesystem or on S3 (a MinIO
//! server the bench starts), and Distribution v3's offline `garbage-collect` on the same data
//! and the same storage as the peer figure. Writes `bench/GC.md` (or `--output`).
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
//! written as files or objects (the same blobs and manifests, and the tags our run kept), and
//! `registry garbage-collect --delete-untagged` runs on it with the registry stopped, as it
//! must. Both must remove the same blobs.

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
use dataplane::storage::s3::{S3Credentials, S3Settings, S3Storage};
use futures::{StreamExt as _, TryStreamExt as _};
use sha2::Digest as _;
use testkit::s3::S3Server;

const MANIFESTS: usize = 34;
const CONFIGS: usize = 33;
const LAYERS: usize = 33;
const KEPT_TAGS: usize = 100;
const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// Repositories populated at once on the filesystem.
const PARALLEL: usize = 8;
/// Repositories populated at once on S3 (each one's tags in order, one request at a time).
const PARALLEL_S3: usize = 64;
/// Objects of Distribution's layout written at once on S3.
const PEER_WRITES: usize = 64;
/// Key prefix of our layout in the bucket.
const OURS_PREFIX: &str = "dataplane/";
/// Distribution's `rootdirectory` in the bucket.
const PEER_ROOT: &str = "distribution";

/// Where both registries keep their data.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Directories under `--dir` (tmpfs by default, see `bench/gc/run`).
    Fs,
    /// A MinIO server started for the run (its data directory under `TMPDIR`).
    S3,
}

struct Args {
    repos: usize,
    tags: usize,
    dir: PathBuf,
    storage: Kind,
    distribution: Option<PathBuf>,
    /// The report; `bench/GC.md` on the filesystem, `bench/GC-s3.md` on S3.
    output: Option<PathBuf>,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        repos: 1000,
        tags: 1000,
        dir: std::env::temp_dir().join("gc-bench"),
        storage: Kind::Fs,
        distribution: None,
        output: None,
    };
    let mut no_peer = false;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--repos" => args.repos = value()?.parse()?,
            "--tags" => args.tags = value()?.parse()?,
            "--dir" => args.dir = value()?.into(),
            "--storage" => {
                args.storage = match value()?.as_str() {
                    "fs" => Kind::Fs,
                    "s3" => Kind::S3,
                    other => bail!("--storage is fs or s3, not {other}"),
                }
            }
            "--distribution" => args.distribution = Some(value()?.into()),
            "--no-peer" => no_peer = true,
            "--output" => args.output = Some(value()?.into()),
            other => bail!(
                "unknown argument {other}; use --repos N --tags N --storage fs|s3 --dir DIR --distribution BIN --no-peer --output FILE"
            ),
        }
    }
    if no_peer {
        args.distribution = None;
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
    // In push order, one at a time: the policy keeps the most recently pushed.
    for j in 0..tags {
        let tag: Tag = tag_name(j).parse()?;
        storage
            .tag_create(&repo, &tag, &digests[manifest_of_tag(j, tags)])
            .await?;
    }
    Ok(())
}

/// Where Distribution's layout is written and counted: a directory, or its root directory
/// in the bucket.
enum PeerStore {
    Dir(PathBuf),
    Bucket {
        client: aws_sdk_s3::Client,
        bucket: String,
    },
}

impl PeerStore {
    fn for_bucket(server: &S3Server) -> PeerStore {
        let credentials = aws_sdk_s3::config::Credentials::new(
            server.access_key(),
            server.secret_key(),
            None,
            None,
            "gc-bench",
        );
        let config = aws_sdk_s3::Config::builder()
            .behavior_version_latest()
            .region(aws_sdk_s3::config::Region::new(server.region().to_owned()))
            .endpoint_url(server.endpoint())
            .credentials_provider(credentials)
            .force_path_style(true)
            .build();
        PeerStore::Bucket {
            client: aws_sdk_s3::Client::from_conf(config),
            bucket: server.bucket().to_owned(),
        }
    }

    /// Writes every `(path under docker/registry/v2, content)`.
    async fn write_all(&self, files: Vec<(String, Vec<u8>)>) -> Result<()> {
        match self {
            PeerStore::Dir(root) => {
                let v2 = root.join("docker/registry/v2");
                for (path, data) in files {
                    let path = v2.join(path);
                    std::fs::create_dir_all(path.parent().context("a parent")?)?;
                    std::fs::write(&path, data)?;
                }
                Ok(())
            }
            PeerStore::Bucket { client, bucket } => {
                futures::stream::iter(files)
                    .map(|(path, data)| async move {
                        client
                            .put_object()
                            .bucket(bucket)
                            .key(format!("{PEER_ROOT}/docker/registry/v2/{path}"))
                            .body(data.into())
                            .send()
                            .await
                            .with_context(|| format!("writing {path}"))
                    })
                    .buffer_unordered(PEER_WRITES)
                    .try_for_each(|_| async { Ok(()) })
                    .await
            }
        }
    }

    /// The number of blob data files (`blobs/sha256/xx/<hex>/data`).
    async fn blob_files(&self) -> Result<u64> {
        match self {
            PeerStore::Dir(root) => Ok(count_files(&root.join("docker/registry/v2/blobs"))),
            PeerStore::Bucket { client, bucket } => {
                let mut pages = client
                    .list_objects_v2()
                    .bucket(bucket)
                    .prefix(format!("{PEER_ROOT}/docker/registry/v2/blobs/"))
                    .into_paginator()
                    .send();
                let mut count = 0;
                while let Some(page) = pages.next().await {
                    count += page?
                        .contents()
                        .iter()
                        .filter(|o| o.key().is_some_and(|k| k.ends_with("/data")))
                        .count() as u64;
                }
                Ok(count)
            }
        }
    }

    /// Distribution's `storage` section for this store.
    fn config(&self, server: Option<&S3Server>) -> String {
        match (self, server) {
            (PeerStore::Bucket { bucket, .. }, Some(s3)) => format!(
                "  s3:\n    accesskey: {}\n    secretkey: {}\n    region: {}\n    \
                 regionendpoint: {}\n    bucket: {bucket}\n    rootdirectory: /{PEER_ROOT}\n    \
                 forcepathstyle: true\n    secure: false\n    v4auth: true\n",
                s3.access_key(),
                s3.secret_key(),
                s3.region(),
                s3.endpoint()
            ),
            (PeerStore::Dir(root), _) => {
                format!("  filesystem: {{rootdirectory: {}}}\n", root.display())
            }
            (PeerStore::Bucket { .. }, None) => unreachable!("a bucket store has a server"),
        }
    }
}

/// Distribution's layout of the same region, with only the tags our run kept (`kept`: per
/// repository in order, tag and manifest digest), as a tool deleting the others through the
/// API would leave it.
async fn populate_distribution(store: &PeerStore, kept: &[Vec<(String, String)>]) -> Result<()> {
    for (index, kept_tags) in kept.iter().enumerate() {
        let repo_content = content(index);
        let repo_dir = format!("repositories/{}", repo_content.name);
        let mut files = Vec::new();
        let mut blob = |data: &[u8]| -> String {
            let hex = sha256(data);
            files.push((
                format!("blobs/sha256/{}/{hex}/data", &hex[..2]),
                data.to_vec(),
            ));
            hex
        };
        let mut links = Vec::new();
        for data in repo_content.configs.iter().chain(&repo_content.layers) {
            let hex = blob(data);
            links.push((
                format!("{repo_dir}/_layers/sha256/{hex}/link"),
                format!("sha256:{hex}").into_bytes(),
            ));
        }
        for data in &repo_content.manifests {
            let hex = blob(data);
            links.push((
                format!("{repo_dir}/_manifests/revisions/sha256/{hex}/link"),
                format!("sha256:{hex}").into_bytes(),
            ));
        }
        for (tag, digest) in kept_tags {
            let hex = digest.trim_start_matches("sha256:");
            let tag_dir = format!("{repo_dir}/_manifests/tags/{tag}");
            links.push((
                format!("{tag_dir}/current/link"),
                digest.clone().into_bytes(),
            ));
            links.push((
                format!("{tag_dir}/index/sha256/{hex}/link"),
                digest.clone().into_bytes(),
            ));
        }
        files.extend(links);
        store.write_all(files).await?;
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
    std::fs::create_dir_all(&args.dir)?;
    let (storage, server, peer_store): (Arc<dyn Storage>, _, _) = match args.storage {
        Kind::Fs => (
            Arc::new(FsStorage::open(&args.dir.join("dataplane")).await?),
            None,
            PeerStore::Dir(args.dir.join("distribution")),
        ),
        Kind::S3 => {
            let server = S3Server::try_start()?;
            let settings = S3Settings {
                bucket: server.bucket().to_owned(),
                region: server.region().to_owned(),
                endpoint: Some(server.endpoint().to_owned()),
                prefix: OURS_PREFIX.to_owned(),
                force_path_style: true,
                redirect_ttl: None,
                cache_memory: dataplane::caches::CacheMemory::DEFAULT,
            };
            let credentials = S3Credentials {
                access_key_id: server.access_key().to_owned(),
                secret_access_key: server.secret_key().to_owned(),
            };
            let storage = S3Storage::connect_with_credentials(settings, credentials).await?;
            storage.check().await?;
            let peer = PeerStore::for_bucket(&server);
            (Arc::new(storage), Some(server), peer)
        }
    };
    let parallel = match args.storage {
        Kind::Fs => PARALLEL,
        Kind::S3 => PARALLEL_S3,
    };

    eprintln!("populating {repos} repositories x {tags} tags (ours)");
    let started = Instant::now();
    let registry = Arc::new(Registry::new(Arc::clone(&storage)));
    let results: Vec<Result<()>> = futures::stream::iter(0..repos)
        .map(|index| {
            let registry = Arc::clone(&registry);
            async move { populate_ours(&registry, index, tags).await }
        })
        .buffer_unordered(parallel)
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
            populate_distribution(&peer_store, &kept).await?;
            let populate_peer_time = started.elapsed();
            let blob_files_before = peer_store.blob_files().await?;
            let config = args.dir.join("distribution.yml");
            std::fs::write(
                &config,
                format!(
                    "version: 0.1\nlog: {{level: error}}\nstorage:\n{}  delete: {{enabled: true}}\nhttp: {{addr: 127.0.0.1:0}}\n",
                    peer_store.config(server.as_ref())
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
            let blob_files_after = peer_store.blob_files().await?;
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
    let (title, flag, where_, target) = match args.storage {
        Kind::Fs => (
            "the filesystem",
            "",
            "filesystem storage on tmpfs",
            "target: under 60 s",
        ),
        Kind::S3 => (
            "S3",
            " --storage s3",
            "S3 storage on one MinIO server (its data on tmpfs) on the same machine, both \
             registries in the same bucket under their own prefixes",
            "no target on S3",
        ),
    };
    md.push_str(&format!(
        "# Retention and collection over a large region on {title}\n\n"
    ));
    md.push_str(&format!(
        "Measured by `bench/gc/run{flag}` (`gc-bench{flag} --repos {repos} --tags {tags}`) on \
         {}, a 2-core machine, {where_}. {repos} repositories, {} tags, {} blobs \
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
        "| **pass** | **{}** ({target}) | |\n\n",
        seconds(total)
    ));
    md.push_str(&format!(
        "Blobs left: {blobs_after}. Populating took {} for ours (through the registry: \
         uploads, manifest pushes, tag writes){}.\n",
        seconds(populate_ours_time),
        peer.as_ref()
            .map(|(p, ..)| format!(
                ", {} for Distribution's layout (written directly as files or objects)",
                seconds(*p)
            ))
            .unwrap_or_default()
    ));
    let output = args.output.clone().unwrap_or_else(|| match args.storage {
        Kind::Fs => PathBuf::from("bench/GC.md"),
        Kind::S3 => PathBuf::from("bench/GC-s3.md"),
    });
    std::fs::write(&output, md)?;
    eprintln!("wrote {}", output.display());
    let _ = std::fs::remove_dir_all(&args.dir);
    Ok(())
}

fn humantime_now() -> String {
    let now = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    now[..10].to_owned()
}
