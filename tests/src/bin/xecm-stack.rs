//! `xecm-stack`: the local stack from the command line.
//!
//! - `xecm-stack up --env-file FILE`: starts OpenSSH sshd, moto and the Content
//!   Server emulator on 127.0.0.1, seeds the secrets, writes every address,
//!   port, secret id and data path a function needs to FILE, and runs in the
//!   foreground until Ctrl-C or SIGTERM, then stops everything it started.
//! - `xecm-stack report --env-file FILE`: prints what is on the SFTP server
//!   and in the Content Server, for a person to see what a run did.
//! - `xecm-stack sftp-read PATH` (with the env file's variables in the
//!   environment): streams PATH through the SFTP adapter, configured from
//!   the stack's SFTP secret in Secrets Manager as the functions are, and
//!   prints `bytes seconds` — the adapter's own read throughput, for the
//!   ingest benchmark to compare against.
//! - `xecm-stack put-secret NAME FILE`: stores a JSON secret in the stack's
//!   Secrets Manager (moto), as `aws secretsmanager create-secret` would.
//! - `xecm-stack events`: prints the audit events published on the stack's
//!   bus since the last call (from its capture queue).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use xecm_stack::stack::{LocalStack, StackOptions};

#[derive(Parser)]
#[command(
    name = "xecm-stack",
    about = "The xecm-sftp local stack: sshd + moto + Content Server emulator"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the stack in the foreground until Ctrl-C / SIGTERM.
    Up {
        /// Where to write the env file (KEY='value' lines).
        #[arg(long)]
        env_file: PathBuf,
        /// URL the emulator POSTs approval callbacks to (signed HMAC-SHA256).
        #[arg(long)]
        callback_url: Option<String>,
        /// Port of the Content Server emulator (default: a free one).
        #[arg(long)]
        emulator_port: Option<u16>,
        /// Persist the emulator's state in this directory.
        #[arg(long)]
        emulator_data: Option<PathBuf>,
        /// SSH client named in the seeded SFTP secrets (default: ssh2).
        #[arg(long, value_parser = ["ssh2", "russh"])]
        sftp_client: Option<String>,
        /// Put a proxy adding this round-trip time (ms) in front of sshd;
        /// the secrets and XECM_SFTP_PORT name the proxy.
        #[arg(long)]
        sftp_rtt_ms: Option<u64>,
    },
    /// Read PATH (relative to the SFTP secret's root) through the SFTP
    /// adapter and print `bytes seconds`; needs the env file's variables.
    SftpRead { path: String },
    /// Print the SFTP data root and the Content Server tree of a running stack.
    Report {
        #[arg(long)]
        env_file: PathBuf,
    },
    /// Store FILE (a JSON object; - for stdin) as the secret NAME in the
    /// stack's Secrets Manager (moto), creating or replacing it: what
    /// `aws secretsmanager create-secret` does in an account. Needs the env
    /// file's variables.
    PutSecret { name: String, file: PathBuf },
    /// Print the audit events published on the stack's bus since the last
    /// call (read from its capture queue, XECM_EVENT_QUEUE_URL), one line
    /// each; `--json` prints the EventBridge envelopes instead.
    Events {
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("xecm-stack: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Up {
                env_file,
                callback_url,
                emulator_port,
                emulator_data,
                sftp_client,
                sftp_rtt_ms,
            } => {
                up(
                    &env_file,
                    StackOptions {
                        callback_url,
                        emulator_data_dir: emulator_data,
                        emulator_port,
                        sftp_client,
                        sftp_rtt: sftp_rtt_ms.map(std::time::Duration::from_millis),
                    },
                )
                .await
            }
            Command::Report { env_file } => report(&env_file).await,
            Command::SftpRead { path } => sftp_read(&path).await,
            Command::PutSecret { name, file } => put_secret(&name, &file).await,
            Command::Events { json } => events(json).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xecm-stack: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn up(env_file: &Path, options: StackOptions) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    // Install the handlers first, so a signal during start-up still stops
    // what was started (the guards drop on return).
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let stack = tokio::select! {
        stack = LocalStack::start_with(options) => stack?,
        _ = term.recv() => bail!("stopped by SIGTERM during start-up"),
        _ = int.recv() => bail!("stopped by Ctrl-C during start-up"),
    };
    stack.write_env_file(env_file)?;
    eprintln!(
        "xecm-stack: up — SFTP 127.0.0.1:{} (data root {}), Content Server {} (browse {}/ui), AWS (moto) {}; env in {}; Ctrl-C stops",
        stack.sshd.port(),
        stack.sshd.data_root().display(),
        stack.emulator.base_url(),
        stack.emulator.base_url(),
        stack.moto.endpoint(),
        env_file.display()
    );
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    eprintln!("xecm-stack: stopping");
    let _ = std::fs::remove_file(env_file);
    drop(stack);
    Ok(())
}

fn read_env_file(path: &Path) -> Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading env file {}", path.display()))?;
    let mut out = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let (k, v) = line
            .split_once('=')
            .with_context(|| format!("{}: not a KEY=value line: {line}", path.display()))?;
        let v = v.trim_matches('\'').replace(r"'\''", "'");
        out.push((k.to_string(), v));
    }
    Ok(out)
}

async fn report(env_file: &Path) -> Result<()> {
    let env = read_env_file(env_file)?;
    let get = |name: &str| {
        env.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .with_context(|| format!("{} has no {name}", env_file.display()))
    };
    let data_root = PathBuf::from(get("XECM_SFTP_DATA_ROOT")?);
    println!("SFTP server (data root {}):", data_root.display());
    print_tree(&data_root, 1)?;
    let ecm = get("XECM_ECM_URL")?;
    println!(
        "\nContent Server: {ecm}/ui (read-only view of workspaces, folders, documents, versions, categories, audit)"
    );
    Ok(())
}

async fn sftp_read(path: &str) -> Result<()> {
    use futures_util::StreamExt;
    use secrecy::ExposeSecret;
    use xecm_core::adapters::aws::{SecretsManagerSecrets, load_sdk_config};
    use xecm_core::adapters::sftp::{SftpSettings, open_store};
    use xecm_core::ports::secrets::Secrets;
    xecm_core::runtime::tune_allocator();
    let id = std::env::var("XECM_SFTP_SECRET_ID")
        .context("XECM_SFTP_SECRET_ID is not set (source the stack's env file)")?;
    let secrets = SecretsManagerSecrets::new(&load_sdk_config().await);
    let json = secrets.get(&id).await?;
    let store = open_store(SftpSettings::from_secret_json(&id, json.expose_secret())?)?;
    // Connected outside the timed part, like `sftp -b` and the functions'
    // own pool.
    store.check().await?;
    let p = store.root().resolve(path)?;
    let t0 = std::time::Instant::now();
    let mut h = store.open_read(&p).await?;
    let mut n: u64 = 0;
    while let Some(chunk) = h.body.next().await {
        n += chunk?.len() as u64;
    }
    println!("{n} {}", t0.elapsed().as_secs_f64());
    Ok(())
}

async fn put_secret(name: &str, file: &Path) -> Result<()> {
    use std::io::Read;
    let mut text = String::new();
    if file == Path::new("-") {
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading the secret from stdin")?;
    } else {
        text = std::fs::read_to_string(file)
            .with_context(|| format!("reading the secret {}", file.display()))?;
    }
    let value: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("the secret in {} is not JSON", file.display()))?;
    if !value.is_object() {
        bail!(
            "the secret in {} is not a JSON object: {}",
            file.display(),
            value
        );
    }
    let endpoint = std::env::var("AWS_ENDPOINT_URL")
        .context("AWS_ENDPOINT_URL is not set (source the stack's env file)")?;
    let sdk = xecm_core::adapters::aws::load_sdk_config().await;
    xecm_stack::moto::put_secret_string(&sdk, name, &value.to_string()).await?;
    println!("secret {name} stored in Secrets Manager at {endpoint}");
    Ok(())
}

async fn events(as_json: bool) -> Result<()> {
    let url = std::env::var("XECM_EVENT_QUEUE_URL")
        .context("XECM_EVENT_QUEUE_URL is not set (source the stack's env file)")?;
    let sdk = xecm_core::adapters::aws::load_sdk_config().await;
    let capture = xecm_stack::moto::EventCapture::attach(&sdk, &url);
    let events = capture.drain().await?;
    if as_json {
        for e in &events {
            println!("{e}");
        }
        return Ok(());
    }
    if events.is_empty() {
        println!("  (no events)");
    }
    for e in &events {
        println!("  {}", event_line(e));
    }
    Ok(())
}

/// One line for a person: time, detail-type and the detail's fields, less
/// the ones only a machine needs (ids, keys, timestamps the line already
/// shows), SHA-256 values shortened.
fn event_line(e: &serde_json::Value) -> String {
    use serde_json::Value;
    const SKIPPED: &[&str] = &[
        "idempotency_key",
        "invocation_id",
        "host",
        "ingested_at",
        "exported_at",
        "failed_at",
        "started_at",
        "finished_at",
        "manifest_sha256",
    ];
    let time = e["time"].as_str().unwrap_or("?");
    let time = time.split('T').nth(1).unwrap_or(time).trim_end_matches('Z');
    let mut line = format!(
        "{time}  {}:",
        e["detail-type"].as_str().unwrap_or("(no detail-type)")
    );
    if let Some(detail) = e["detail"].as_object() {
        for (k, v) in detail {
            if SKIPPED.contains(&k.as_str()) {
                continue;
            }
            let v = match v {
                Value::Null => continue,
                Value::String(s) if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) => {
                    format!("{}…", &s[..12])
                }
                Value::String(s) if s.contains(' ') => format!("{s:?}"),
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let v = if v.chars().count() > 120 {
                format!("{}…", v.chars().take(119).collect::<String>())
            } else {
                v
            };
            line.push_str(&format!(" {k}={v}"));
        }
    }
    line
}

fn print_tree(dir: &Path, depth: usize) -> Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok())
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let meta = entry
            .metadata()
            .with_context(|| format!("stat {}", path.display()))?;
        if meta.is_dir() {
            println!("{}{name}/", "  ".repeat(depth));
            print_tree(&path, depth + 1)?;
        } else {
            println!("{}{name}  ({} bytes)", "  ".repeat(depth), meta.len());
        }
    }
    Ok(())
}
