//! The backup-snapshot Lambda function: scheduled snapshots of ECM subtrees
//! to SFTP, their continuations, and the manual verify and restore actions.
//! Only wiring lives here; see `handler.rs`.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use secrecy::ExposeSecret;
use xecm_core::adapters::aws::{EventBridgeSink, SecretsManagerSecrets, load_sdk_config};
use xecm_core::adapters::otcs::{EcmSettings, OtcsClient, OtcsOptions};
use xecm_core::config::Config;
use xecm_core::ports::secrets::Secrets;
use xecm_core::runtime::{self, FunctionError};

mod handler;

/// Secrets are re-read after this, so a rotated key takes effect.
const SECRET_TTL: Duration = Duration::from_secs(300);
/// Time kept free at the end of an invocation by default: one page of
/// downloads must fit in it (`XECM_BACKUP_MARGIN_MS` overrides).
const DEFAULT_MARGIN: Duration = Duration::from_secs(120);

fn margin_from_env() -> Result<Duration, FunctionError> {
    match std::env::var("XECM_BACKUP_MARGIN_MS") {
        Err(_) => Ok(DEFAULT_MARGIN),
        Ok(v) => v.trim().parse::<u64>().map(Duration::from_millis).map_err(|e| {
            FunctionError::permanent(
                "InvalidConfig",
                format!("environment variable XECM_BACKUP_MARGIN_MS={v:?} is not a number of milliseconds: {e}"),
            )
        }),
    }
}

async fn init() -> Result<handler::State, FunctionError> {
    let config =
        Config::from_env().map_err(|e| FunctionError::permanent("InvalidConfig", e.to_string()))?;
    let margin = margin_from_env()?;
    let sdk = load_sdk_config().await;
    let secrets: Arc<dyn Secrets> = Arc::new(SecretsManagerSecrets::new(&sdk).with_ttl(SECRET_TTL));
    let ecm_json = secrets.get(&config.ecm_secret_id).await.map_err(|e| {
        if e.is_retryable() {
            FunctionError::transient("SecretUnavailable", e.to_string())
        } else {
            FunctionError::permanent("SecretInvalid", e.to_string())
        }
    })?;
    let settings = EcmSettings::from_secret_json(&config.ecm_secret_id, ecm_json.expose_secret())
        .map_err(|e| FunctionError::permanent("SecretInvalid", e.to_string()))?;
    let ecm = OtcsClient::new(settings, OtcsOptions::default())
        .map_err(|e| FunctionError::permanent("EcmClient", e.to_string()))?;
    Ok(handler::State {
        events: Arc::new(EventBridgeSink::new(&sdk, config.event_bus.clone())),
        config,
        secrets,
        ecm: Arc::new(ecm),
        margin,
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    runtime::init_tracing();
    runtime::serve_with_init("backup-snapshot", init, |state, event, inv| {
        Box::pin(handler::handle(state, event, inv))
    })
    .await
}
