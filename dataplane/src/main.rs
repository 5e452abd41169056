//! `dataplane`: the regional OCI registry data plane.
//!
//! ```text
//! dataplane serve [--config FILE] [--config-secret NAMESPACE/NAME] [--listen ADDR]
//!                 [--root DIR] [--log-format text|json]
//!                 [--shutdown-timeout 30s] [--drain-delay 0s]
//!                 [--tls-cert FILE --tls-key FILE]
//! dataplane check-config FILE             # the same apply step as serve, shards included
//! dataplane hash-secret < SECRET          # prints the argon2id hash of a credential secret
//! dataplane generate-secret               # a new random secret and its hash
//! dataplane generate-key ID               # a new ES256 token-signing key, as YAML
//! ```
//!
//! Once `serve` accepts requests, it logs `listening on <ADDR>` (the bound address, also when
//! the port is 0) on stderr: the first line (`fields.message` of the first object in JSON mode),
//! unless opening storage reported something first (e.g. cleaning up after a crash). Scripts and
//! tests wait for the first line containing `listening on `. The line carries `tls = true` when
//! serving HTTPS.
//!
//! `serve` refuses to start on an address reachable from other hosts (not loopback) when the
//! configuration declares no access control. With `--config-secret` the document comes from
//! a Kubernetes Secret (in-cluster, or through `KUBECONFIG`): the server starts with nothing
//! in force (not ready, every request denied) until the first document is applied, and takes
//! its process settings (storage, uploads, connections, logins) from `--config FILE` (which
//! may then hold nothing else), `--root`, or the defaults.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};

use dataplane::auth::{AuthService, Transport};
use dataplane::caches::CacheMemory;
use dataplane::config::{
    Config, ConfigReloader, ConfigSource, KIND, ProcessSettings, RegionSpec, SecretRef,
    SecretSource,
};
use dataplane::live::{Applier, Source};
use dataplane::server::{ServeOptions, Server, check_exposure, open_storage};
use dataplane::telemetry::{self, ConfigMetrics, LogFormat};
use dataplane::tls::TlsFiles;

/// The regional OCI registry data plane.
#[derive(Debug, Parser)]
#[command(name = "dataplane", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the registry API, health and metrics.
    Serve(ServeArgs),
    /// Validate a configuration document as `serve` applies it (schema, rules, shard files,
    /// token keys, federations); prints the problems and exits 1 when it would be refused.
    CheckConfig {
        /// The YAML document (its shards are read from files next to it).
        file: PathBuf,
    },
    /// Read a credential secret on standard input (one line) and print its argon2id hash,
    /// the `secretHash` of the configuration.
    HashSecret,
    /// Print a new random credential secret and its hash.
    GenerateSecret,
    /// Print a new ES256 token-signing key with this id, as a `tokens.keys` entry (YAML).
    GenerateKey {
        /// The key id (the `kid` of the tokens it signs).
        id: String,
    },
    /// Check the storage: blobs that manifests need and the store lacks, indexes listing
    /// manifests the repository does not hold, tags and blob links that lead nowhere, and
    /// blobs no manifest references. Exits 1 when problems remain (unreferenced blobs are
    /// not problems), 2 when the storage cannot be read.
    Fsck(FsckArgs),
}

#[derive(Debug, clap::Args)]
struct FsckArgs {
    /// Configuration document whose storage to check; without it, filesystem storage under
    /// ./registry-data (as `serve`).
    #[arg(long, env = "DATAPLANE_CONFIG")]
    config: Option<PathBuf>,
    /// Filesystem storage root; replaces the storage of the configuration document.
    #[arg(long, env = "DATAPLANE_ROOT")]
    root: Option<PathBuf>,
    /// Repair what is safe: delete tags naming a manifest the repository does not hold, and
    /// remove links to blobs the store lacks (each checked again right before).
    #[arg(long)]
    repair: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Configuration document (YAML), reloaded when it or a shard file it names changes.
    /// Without it: filesystem storage under ./registry-data. With --config-secret: the process
    /// settings only (storage, uploads, connections, logins), read once.
    #[arg(long, env = "DATAPLANE_CONFIG")]
    config: Option<PathBuf>,
    /// Follow the configuration document in this Kubernetes Secret (data key `config.yaml`)
    /// and the shard Secrets it names, through the API (in-cluster, or `KUBECONFIG`).
    #[arg(long, env = "DATAPLANE_CONFIG_SECRET", value_name = "NAMESPACE/NAME")]
    config_secret: Option<SecretRef>,
    /// Address to listen on; with port 0 a free port is picked, and the log line
    /// `listening on ADDR` names it.
    #[arg(long, env = "DATAPLANE_LISTEN", default_value = "127.0.0.1:5000")]
    listen: String,
    /// Filesystem storage root; replaces the storage of the configuration document.
    #[arg(long, env = "DATAPLANE_ROOT")]
    root: Option<PathBuf>,
    /// Log format.
    #[arg(long, env = "DATAPLANE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Longest wait for in-flight requests (uploads) after a SIGTERM or SIGINT.
    #[arg(long, env = "DATAPLANE_SHUTDOWN_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    shutdown_timeout: Duration,
    /// Time between readiness turning 503 and the listener closing, on shutdown.
    #[arg(long, env = "DATAPLANE_DRAIN_DELAY", default_value = "0s", value_parser = parse_duration)]
    drain_delay: Duration,
    /// Memory the in-memory caches share (manifests, tags on the filesystem, bucket facts on
    /// S3, upload hash states): bytes, or KiB/MiB/GiB (Ki/Mi/Gi); 0 turns caching off. Size a
    /// pod's memory limit as the process's working memory plus this.
    #[arg(long, env = "DATAPLANE_CACHE_MEMORY", default_value_t = CacheMemory::DEFAULT)]
    cache_memory: CacheMemory,
    /// Serve HTTPS with this PEM certificate chain (end-entity certificate first); re-read when
    /// it changes. Requires --tls-key.
    #[arg(
        long,
        env = "DATAPLANE_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    tls_cert: Option<PathBuf>,
    /// The PEM private key (PKCS#8, RSA or EC) of --tls-cert; re-read when it changes.
    /// Requires --tls-cert.
    #[arg(
        long,
        env = "DATAPLANE_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    tls_key: Option<PathBuf>,
}

impl ServeArgs {
    /// The TLS files, when both are given (clap insists on both or neither).
    fn tls_files(&self) -> Option<TlsFiles> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            }),
            _ => None,
        }
    }
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{e} (write e.g. 30s, 2m)"))
}

/// jemalloc rather than the C library's allocator: under a long mixed load (requests on the
/// async workers, filesystem work on up to hundreds of blocking threads) glibc's per-thread
/// arenas keep freed memory, and the process grows long after its live heap stopped growing.
/// jemalloc returns unused pages to the system after a few seconds.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { file } => check_config(&file),
        Command::HashSecret => hash_secret(),
        Command::GenerateSecret => generate_secret(),
        Command::GenerateKey { id } => generate_key(&id),
        Command::Fsck(args) => fsck(&args),
        Command::Serve(args) => {
            let Some(runtime) = runtime() else {
                return ExitCode::FAILURE;
            };
            match runtime.block_on(serve(args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    eprintln!("error: {err:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// The multi-threaded runtime of `serve` and `fsck`; `None` (said on stderr) when it cannot
/// start.
fn runtime() -> Option<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .inspect_err(|err| eprintln!("error: cannot start the async runtime: {err}"))
        .ok()
}

/// `dataplane fsck`: prints the report; exit 0 when no problem remains.
fn fsck(args: &FsckArgs) -> ExitCode {
    let run = async {
        let source = ConfigSource::new(args.config.clone(), args.root.clone());
        let settings = source.load()?.config.settings;
        let storage = open_storage(&settings.storage, CacheMemory::DEFAULT).await?;
        let mut report = dataplane::fsck::check(&*storage).await?;
        if args.repair {
            dataplane::fsck::repair(&*storage, &mut report).await?;
        }
        anyhow::Ok(report)
    };
    let Some(runtime) = runtime() else {
        return ExitCode::from(2);
    };
    let report = match runtime.block_on(run) {
        Ok(report) => report,
        Err(err) => {
            eprintln!("error: {err:#}");
            return ExitCode::from(2);
        }
    };
    if args.json {
        match serde_json::to_string_pretty(&report) {
            Ok(json) => println!("{json}"),
            Err(err) => {
                eprintln!("error: {err}");
                return ExitCode::from(2);
            }
        }
    } else {
        println!(
            "{} repositories, {} manifests, {} tags, {} blobs ({} bytes)",
            report.repositories, report.manifests, report.tags, report.blobs, report.blob_bytes
        );
        println!(
            "{} blobs ({} bytes) no manifest references (those of pushes in progress among them)",
            report.unreferenced.len(),
            report.unreferenced_bytes()
        );
        for problem in &report.repaired {
            println!("repaired: {problem}");
        }
        for problem in &report.problems {
            let hint = if problem.repairable() {
                " (--repair removes it)"
            } else {
                ""
            };
            println!("problem: {problem}{hint}");
        }
        println!(
            "{} problems, {} repaired",
            report.problems.len(),
            report.repaired.len()
        );
    }
    if report.problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn check_config(file: &std::path::Path) -> ExitCode {
    let loaded = match ConfigSource::new(Some(file.to_owned()), None).load() {
        Ok(loaded) => loaded,
        Err(err) => {
            eprintln!("{}: {err}", file.display());
            return ExitCode::FAILURE;
        }
    };
    // The apply step of `serve`, with nothing to swap into.
    let (region, shards) = (
        loaded.config.spec.region.clone(),
        loaded.config.spec.shards.len(),
    );
    let settings = loaded.config.settings.clone();
    let auth = AuthService::new(Transport::default());
    let (applier, _live) = Applier::new(auth, settings, ConfigMetrics::default());
    match applier.apply(Source::Check, loaded) {
        Ok(applied) => {
            let shards = match shards {
                0 => String::new(),
                1 => " with 1 shard".to_owned(),
                n => format!(" with {n} shards"),
            };
            println!(
                "{}: valid {KIND} document for region {region:?}, revision {}{shards}",
                file.display(),
                applied.revision,
            );
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("{}: {err}", file.display());
            ExitCode::FAILURE
        }
    }
}

fn hash_secret() -> ExitCode {
    let mut line = String::new();
    if let Err(err) = std::io::stdin().read_line(&mut line) {
        eprintln!("error: cannot read the secret from standard input: {err}");
        return ExitCode::FAILURE;
    }
    let secret = line.strip_suffix('\n').unwrap_or(&line);
    let secret = secret.strip_suffix('\r').unwrap_or(secret);
    if secret.is_empty() {
        eprintln!("error: the secret is empty (write it on standard input)");
        return ExitCode::FAILURE;
    }
    match dataplane::auth::secret::hash_secret(secret) {
        Ok(hash) => {
            println!("{hash}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

fn generate_secret() -> ExitCode {
    let secret = dataplane::auth::secret::generate_secret();
    match dataplane::auth::secret::hash_secret(&secret) {
        Ok(hash) => {
            println!("secret: {secret}\nsecretHash: '{hash}'");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

fn generate_key(id: &str) -> ExitCode {
    let key = dataplane::auth::token::generate_key(id);
    match serde_norway::to_string(&vec![key]) {
        Ok(yaml) => {
            print!("{yaml}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    telemetry::init_logging(args.log_format)?;
    // Signal handlers first: a signal arriving during startup must shut down gracefully, not
    // kill the process.
    let mut terminate = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing a SIGINT handler")?;
    let shutdown = async move {
        tokio::select! {
            _ = terminate.recv() => tracing::info!("received SIGTERM"),
            _ = interrupt.recv() => tracing::info!("received SIGINT"),
        }
    };

    let server = match &args.config_secret {
        Some(secret) => {
            let settings = secret_process_settings(&args)?;
            // kube's TLS client takes the process-wide default provider, which rustls cannot
            // pick by itself here (the AWS SDK compiles in a second one).
            let _ = rustls::crypto::ring::default_provider().install_default();
            let source = SecretSource::connect(secret.clone())
                .await
                .with_context(|| format!("cannot reach the Kubernetes API for {secret}"))?;
            Server::following_secret(settings, source)
        }
        None => {
            let source = ConfigSource::new(args.config.clone(), args.root.clone());
            let (first, reloader) = ConfigReloader::start(source)?;
            // Refuse open access before binding when the address is literal; `serve` checks
            // the bound address again in any case.
            if let Ok(addr) = args.listen.parse() {
                check_exposure(&first.config, addr)?;
            }
            Server::new(first.config).with_reloader(reloader)
        }
    };
    let listener = TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    server
        .with_tls(args.tls_files())
        .with_options(ServeOptions {
            shutdown_timeout: args.shutdown_timeout,
            drain_delay: args.drain_delay,
            cache_memory: args.cache_memory,
            ..ServeOptions::default()
        })
        .serve(listener, shutdown)
        .await?;
    Ok(())
}

/// The process settings of `serve --config-secret`: from `--config FILE` (which may hold
/// only them), with `--root`, else the defaults.
fn secret_process_settings(args: &ServeArgs) -> anyhow::Result<ProcessSettings> {
    let source = ConfigSource::new(args.config.clone(), args.root.clone());
    let config: Config = source.load()?.config;
    let owned = operator_owned_fields(&config.spec);
    if !owned.is_empty() {
        anyhow::bail!(
            "{}: with --config-secret the configuration file holds only the process settings \
             (storage, uploads, connections, logins); it also sets {}, which come from the \
             Secret: remove them from the file",
            args.config
                .as_deref()
                .map_or_else(|| "--config".into(), |p| p.display().to_string()),
            owned.join(", ")
        );
    }
    Ok(config.settings)
}

/// The operator-owned fields a document sets (differing from the defaults).
fn operator_owned_fields(spec: &RegionSpec) -> Vec<&'static str> {
    let empty = RegionSpec::default();
    [
        ("region", spec.region != empty.region),
        ("revision", spec.revision != empty.revision),
        ("namespaces", !spec.namespaces.is_empty()),
        ("credentials", !spec.credentials.is_empty()),
        ("federations", !spec.federations.is_empty()),
        ("tokens", spec.tokens != empty.tokens),
        ("retention", !spec.retention.is_empty()),
        ("shards", !spec.shards.is_empty()),
    ]
    .into_iter()
    .filter_map(|(field, set)| set.then_some(field))
    .collect()
}
