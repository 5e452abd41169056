//! `operator`: runs one region of the registry from its custom resources.
//!
//! ```text
//! operator run --settings FILE [--listen ADDR] [--identity ID] [--log-format text|json]
//! ```
//!
//! Every replica takes part in leader election on a Lease in the operator's namespace; only
//! the leader reconciles. All replicas serve `/healthz`, `/readyz` and `/metrics`. On SIGTERM
//! the leader stops reconciling and releases the Lease so another replica takes over at once.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use axum::Router;
use axum::routing::get;
use clap::{Parser, Subcommand};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

use operator::settings::Settings;
use operator::telemetry::{self, LogFormat, Metrics};

/// The registry operator.
#[derive(Debug, Parser)]
#[command(name = "operator", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Reconcile the region's objects (as the leader) until SIGTERM.
    Run(RunArgs),
    /// Validate a settings file.
    CheckSettings {
        /// The YAML file.
        file: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// The operator's settings (YAML).
    #[arg(long, env = "OPERATOR_SETTINGS")]
    settings: PathBuf,
    /// Address of `/healthz`, `/readyz` and `/metrics`.
    #[arg(long, env = "OPERATOR_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// This replica's name in the leader election (default: the host name).
    #[arg(long, env = "OPERATOR_IDENTITY")]
    identity: Option<String>,
    /// Name of the leader-election Lease (in the settings' namespace).
    #[arg(long, env = "OPERATOR_LEASE", default_value = "registry-operator")]
    lease: String,
    /// Log format.
    #[arg(long, env = "OPERATOR_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckSettings { file } => match Settings::load(&file) {
            Ok(s) => {
                println!(
                    "{}: valid settings for region {:?}",
                    file.display(),
                    s.region
                );
                std::process::ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("{}: {err}", file.display());
                std::process::ExitCode::FAILURE
            }
        },
        Command::Run(args) => {
            let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
            match runtime.block_on(run(args)) {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(err) => {
                    eprintln!("error: {err:#}");
                    std::process::ExitCode::FAILURE
                }
            }
        }
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    telemetry::init_logging(args.log_format);
    // The workspace enables both rustls providers (ring here, aws-lc through the AWS SDK), so
    // the process names its own: ring, as the data plane does.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut terminate = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing a SIGINT handler")?;
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        tokio::select! {
            _ = terminate.recv() => tracing::info!("received SIGTERM"),
            _ = interrupt.recv() => tracing::info!("received SIGINT"),
        }
        let _ = stop_tx.send(true);
    });
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };

    let settings = Arc::new(Settings::load(&args.settings)?);
    let identity = args.identity.clone().unwrap_or_else(default_identity);
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API (in-cluster or KUBECONFIG)")?;
    let metrics = Arc::new(Metrics::default());

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let served = Arc::clone(&metrics);
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(|| async { "ok\n" }))
        .route(
            "/metrics",
            get(move || {
                let metrics = Arc::clone(&served);
                async move { metrics.encode() }
            }),
        );
    tracing::info!(listen = %listener.local_addr()?, region = %settings.region, %identity, "operator started");
    let health = tokio::spawn({
        let stopped = stopped.clone();
        async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(stopped())
                .await
        }
    });

    let mut election =
        operator::leader::join(client.clone(), &settings.namespace, &args.lease, &identity)
            .await
            .context("joining the leader election")?;
    tokio::select! {
        _ = stopped() => {
            election.release().await;
            let _ = health.await;
            return Ok(());
        }
        _ = election.until_leading() => {}
    }
    metrics.leader.set(1);
    tracing::info!(%identity, "leading; starting controllers");
    let (lost_tx, lost_rx) = watch::channel(false);
    let controllers = tokio::spawn(operator::controllers::run(
        client,
        Arc::clone(&settings),
        Arc::clone(&metrics),
        identity.clone(),
        {
            let stopped = stopped.clone();
            let mut lost = lost_rx.clone();
            async move {
                tokio::select! {
                    _ = stopped() => {}
                    _ = lost.wait_for(|l| *l) => {}
                }
            }
        },
    ));
    let lost = tokio::select! {
        _ = stopped() => false,
        _ = election.until_lost() => true,
    };
    let _ = lost_tx.send(true);
    let _ = controllers.await;
    metrics.leader.set(0);
    if lost {
        // Another replica leads now; this one exits so that it restarts as a follower with
        // fresh caches rather than acting on what it saw as leader.
        anyhow::bail!("lost the leader Lease");
    }
    election.release().await;
    let _ = health.await;
    tracing::info!("stopped");
    Ok(())
}

fn default_identity() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "operator".to_owned())
        + &format!("-{}", std::process::id())
}
