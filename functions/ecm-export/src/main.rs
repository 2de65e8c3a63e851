//! The ecm-export Lambda function: approval webhook (Function URL), manual
//! resend and package export. Only wiring lives here; see `handler.rs`.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use secrecy::ExposeSecret;
use xecm_core::adapters::aws::{EventBridgeSink, SecretsManagerSecrets, load_sdk_config};
use xecm_core::adapters::otcs::{EcmSettings, OtcsClient, OtcsOptions};
use xecm_core::adapters::sftp_destinations::SftpDestinations;
use xecm_core::config::Config;
use xecm_core::domain::export_route::ExportConfig;
use xecm_core::domain::webhook::WebhookPolicy;
use xecm_core::ports::secrets::Secrets;
use xecm_core::runtime::{self, FunctionError};

mod handler;

/// Secrets are re-read after this, so a rotated key takes effect.
const SECRET_TTL: Duration = Duration::from_secs(300);

async fn init() -> Result<handler::State, FunctionError> {
    let config =
        Config::from_env().map_err(|e| FunctionError::permanent("Config", e.to_string()))?;
    let sdk = load_sdk_config().await;
    // SSM Parameter Store (deployed) or XECM_EXPORT_ROUTES (local), once per cold start.
    let (source, routes_json) = xecm_core::config::load_export_routes(&sdk).await?;
    let routes = ExportConfig::from_json(&routes_json)
        .map_err(|e| FunctionError::permanent("Config", format!("{source}: {e}")))?;
    let secrets: Arc<dyn Secrets> = Arc::new(SecretsManagerSecrets::new(&sdk).with_ttl(SECRET_TTL));
    let ecm_secret = secrets.get(&config.ecm_secret_id).await.map_err(|e| {
        if e.is_retryable() {
            FunctionError::transient("Secret", e.to_string())
        } else {
            FunctionError::permanent("Secret", e.to_string())
        }
    })?;
    let settings = EcmSettings::from_secret_json(&config.ecm_secret_id, ecm_secret.expose_secret())
        .map_err(|e| FunctionError::permanent("Secret", e.to_string()))?;
    let ecm = OtcsClient::new(settings, OtcsOptions::default())
        .map_err(|e| FunctionError::permanent("EcmClient", e.to_string()))?
        .with_credential_refresh(Arc::clone(&secrets), &config.ecm_secret_id);
    let mut policy = WebhookPolicy::default();
    if let Ok(path) = std::env::var("XECM_WEBHOOK_PATH") {
        policy.path = path;
    }
    Ok(handler::State {
        ecm: Arc::new(ecm),
        events: Arc::new(EventBridgeSink::new(&sdk, config.event_bus.clone())),
        destinations: Arc::new(
            SftpDestinations::new(Arc::clone(&secrets), config.sftp_secrets.clone())
                .with_ttl(SECRET_TTL),
        ),
        secrets,
        routes,
        webhook_secret_id: config.webhook_secret_id.clone(),
        policy,
        replays: Default::default(),
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    runtime::init_tracing();
    runtime::serve_with_init("ecm-export", init, |state, event, inv| {
        Box::pin(handler::handle(state, event, inv))
    })
    .await
}
