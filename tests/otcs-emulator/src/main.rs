//! `otcs-emulator`: serves the Content Server REST API emulator until SIGINT
//! or SIGTERM. Only wiring; everything else is in the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use otcs_emulator::{CallbackConfig, EmulatorConfig, Seed};

#[derive(Parser)]
#[command(version, about = "OpenText Content Server REST API emulator")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Allow listening on a non-loopback address.
    #[arg(long)]
    allow_non_loopback: bool,
    /// Seed file (JSON); the built-in seed otherwise.
    #[arg(long)]
    seed: Option<PathBuf>,
    /// Persist state and content in this directory.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Idle seconds after which a ticket expires.
    #[arg(long, default_value_t = 1800)]
    ticket_idle_secs: u64,
    /// URL that receives signed approval callbacks.
    #[arg(long)]
    callback_url: Option<String>,
    /// File holding the callback HMAC key (else env OTCS_EMULATOR_CALLBACK_KEY).
    #[arg(long)]
    callback_secret_file: Option<PathBuf>,
    /// Disable the /__emulator test controls.
    #[arg(long)]
    no_test_controls: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let seed = match &args.seed {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading seed {}", path.display()))?;
            Some(
                Seed::from_json(&text)
                    .with_context(|| format!("parsing seed {}", path.display()))?,
            )
        }
        None => None,
    };
    let callback = match &args.callback_url {
        Some(url) => {
            let key = match &args.callback_secret_file {
                Some(path) => std::fs::read_to_string(path)
                    .with_context(|| format!("reading callback secret {}", path.display()))?
                    .trim()
                    .to_string(),
                None => std::env::var("OTCS_EMULATOR_CALLBACK_KEY").context(
                    "--callback-url needs --callback-secret-file or OTCS_EMULATOR_CALLBACK_KEY",
                )?,
            };
            Some(CallbackConfig::new(url.clone(), key))
        }
        None => None,
    };
    let config = EmulatorConfig {
        listen: args.listen,
        allow_non_loopback: args.allow_non_loopback,
        seed,
        data_dir: args.data.clone(),
        ticket_idle: Duration::from_secs(args.ticket_idle_secs),
        callback,
        test_controls: !args.no_test_controls,
    };
    let running = otcs_emulator::start(config).await?;
    tracing::info!(
        url = %format!("{}/cs/cs/api", running.base_url()),
        alt = %format!("{}/otcs/cs.exe/api", running.base_url()),
        ui = %format!("{}/ui", running.base_url()),
        "serving"
    );
    println!("otcs-emulator listening on {}", running.base_url());
    wait_for_signal().await;
    tracing::info!("stopping");
    running.shutdown().await;
    Ok(())
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {},
                    _ = term.recv() => {},
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
