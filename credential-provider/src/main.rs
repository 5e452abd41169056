//! `registry-credential-provider`: the kubelet runs it with a `CredentialProviderRequest` on
//! stdin and reads a `CredentialProviderResponse` from stdout. See the crate documentation.

use std::io::Read as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use credential_provider::ProviderError;
use credential_provider::exchange::{self, Options};
use credential_provider::protocol::CredentialProviderRequest;

/// Exchanges a pod's ServiceAccount token for registry credentials (a kubelet image
/// credential provider, credentialprovider.kubelet.k8s.io/v1).
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Reach the registry over plain HTTP (a registry on loopback, for tests only).
    #[arg(long)]
    plain_http: bool,
    /// PEM certificates trusted for the registry's HTTPS, besides the system's.
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// Seconds each request to the registry may take.
    #[arg(long, default_value_t = 10)]
    timeout_seconds: u64,
}

/// The largest request read from stdin.
const REQUEST_LIMIT: u64 = 1024 * 1024;

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(json) => {
            println!("{json}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("registry-credential-provider: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<String, ProviderError> {
    let mut input = Vec::new();
    std::io::stdin()
        .take(REQUEST_LIMIT)
        .read_to_end(&mut input)
        .map_err(|e| ProviderError::Request(format!("reading stdin: {e}")))?;
    let request = CredentialProviderRequest::parse(&input)?;
    let options = Options {
        plain_http: args.plain_http,
        ca_file: args.ca_file.clone(),
        timeout: Duration::from_secs(args.timeout_seconds),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ProviderError::Http(e.to_string()))?;
    let response = runtime.block_on(exchange::credentials(&request, &options))?;
    serde_json::to_string(&response).map_err(|e| ProviderError::Http(e.to_string()))
}
