//! The sftp-ingest Lambda function: wiring only. State (configuration, the
//! Secrets Manager cache, the Content Server client, the EventBridge sink)
//! is built once per cold start; `handler` translates each invocation.

mod handler;
mod worker;

use std::process::ExitCode;
use std::sync::Arc;

use secrecy::ExposeSecret;
use xecm_core::adapters::aws::{EventBridgeSink, SecretsManagerSecrets, load_sdk_config};
use xecm_core::adapters::otcs::{EcmSettings, OtcsClient, OtcsOptions};
use xecm_core::adapters::sqs::SqsQueues;
use xecm_core::config::Config;
use xecm_core::ports::secrets::Secrets;
use xecm_core::runtime::{self, FunctionError};

const NAME: &str = "sftp-ingest";

async fn init() -> Result<handler::State, FunctionError> {
    let config =
        Config::from_env().map_err(|e| FunctionError::permanent("InvalidConfig", e.to_string()))?;
    let sdk = load_sdk_config().await;
    let secrets = Arc::new(SecretsManagerSecrets::new(&sdk));
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
        .map_err(|e| FunctionError::permanent("EcmClient", e.to_string()))?
        .with_credential_refresh(secrets.clone(), &config.ecm_secret_id);
    let events = EventBridgeSink::new(&sdk, config.event_bus.clone());
    Ok(handler::State {
        config,
        secrets,
        ecm: Arc::new(ecm),
        events: Arc::new(events),
        queues: Arc::new(SqsQueues::new(&sdk)),
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    runtime::init_tracing();
    runtime::serve_with_init(NAME, init, |state, event, inv| {
        Box::pin(handler::handle(state, event, inv))
    })
    .await
}
