//! Translates `backup-snapshot` invocations ⇄ the backup flow, and nothing
//! else: the event (bare, or as the `detail` of an EventBridge event) →
//! `domain::backup::BackupEvent`; the job's SFTP secret → a store; the flow's
//! outcome → response JSON; failures → permanent / transient errors.

use std::sync::Arc;
use std::time::Duration;

use secrecy::ExposeSecret;
use serde_json::Value;
use xecm_core::adapters::sftp::{SftpSettings, open_store};
use xecm_core::config::Config;
use xecm_core::domain::backup::{BackupConfig, BackupEvent, parse_backup_event};
use xecm_core::flows::backup::{self, BackupContext, BackupError};
use xecm_core::ports::ecm::Ecm;
use xecm_core::ports::events::EventSink;
use xecm_core::ports::file_store::FileStore;
use xecm_core::ports::secrets::Secrets;
use xecm_core::runtime::{FunctionError, Invocation};

/// Built once per cold start, borrowed by every invocation.
pub struct State {
    pub config: Config,
    pub secrets: Arc<dyn Secrets>,
    pub ecm: Arc<dyn Ecm>,
    pub events: Arc<dyn EventSink>,
    /// Time left at which a snapshot stops and continues by event.
    pub margin: Duration,
}

/// One SFTP session beyond the downloads, for listings, checkpoints and renames.
const SPARE_SESSIONS: usize = 1;

async fn store_for(
    state: &State,
    backup: &BackupConfig,
) -> Result<Arc<dyn FileStore>, FunctionError> {
    let secret_id = state.config.sftp_secret_id(&backup.sftp_secret);
    let json = state.secrets.get(secret_id).await.map_err(|e| {
        if e.is_retryable() {
            FunctionError::transient("SecretUnavailable", e.to_string())
        } else {
            FunctionError::permanent("SecretInvalid", e.to_string())
        }
    })?;
    let mut settings = SftpSettings::from_secret_json(secret_id, json.expose_secret())
        .map_err(|e| FunctionError::permanent("SecretInvalid", e.to_string()))?;
    settings.max_sessions = backup.parallelism as usize + SPARE_SESSIONS;
    let host = format!("{}:{}", settings.host, settings.port);
    let fail = |e: xecm_core::ports::file_store::FileStoreError| {
        if e.is_retryable() {
            FunctionError::transient("SftpUnavailable", format!("SFTP server {host}: {e}"))
        } else {
            FunctionError::permanent("SftpRefused", format!("SFTP server {host}: {e}"))
        }
    };
    let store = open_store(settings).map_err(&fail)?;
    store.check().await.map_err(&fail)?;
    Ok(store)
}

fn flow_error(e: BackupError) -> FunctionError {
    if e.is_retryable() {
        FunctionError::transient(e.kind(), e.to_string())
    } else {
        FunctionError::permanent(e.kind(), e.to_string())
    }
}

fn to_json(v: impl serde::Serialize) -> Result<Value, FunctionError> {
    serde_json::to_value(v).map_err(|e| FunctionError::permanent("Response", e.to_string()))
}

/// The Lambda entry point.
pub async fn handle(
    state: &State,
    event: Value,
    invocation: Invocation,
) -> Result<Value, FunctionError> {
    // The continuation rule passes `$.detail`; an event passed whole (a rule
    // without an input path, a console test) carries it as its detail.
    let event = match event.get("detail-type") {
        Some(_) => event.get("detail").cloned().unwrap_or(Value::Null),
        None => event,
    };
    let event = parse_backup_event(event)
        .map_err(|e| FunctionError::permanent("InvalidEvent", e.to_string()))?;
    let store = store_for(state, event.backup()).await?;
    let cx = BackupContext {
        ecm: state.ecm.as_ref(),
        store: store.as_ref(),
        events: state.events.as_ref(),
        invocation_id: &invocation.request_id,
        deadline: Some(std::time::Instant::now() + invocation.remaining()),
        margin: state.margin,
        clock: &backup::system_clock,
    };
    match &event {
        BackupEvent::Scheduled(b) => {
            to_json(backup::run_scheduled(&cx, b).await.map_err(flow_error)?)
        }
        BackupEvent::Continue {
            backup: b,
            snapshot_id,
        } => to_json(
            backup::run_continue(&cx, b, snapshot_id)
                .await
                .map_err(flow_error)?,
        ),
        BackupEvent::Verify {
            backup: b,
            snapshot_id,
            resume,
        } => to_json(
            backup::verify::verify(&cx, b, snapshot_id, resume.as_deref())
                .await
                .map_err(flow_error)?,
        ),
        BackupEvent::Restore {
            backup: b,
            snapshot_id,
            target_folder,
            node_id,
            resume,
        } => to_json(
            backup::restore::restore(
                &cx,
                b,
                snapshot_id,
                *target_folder,
                *node_id,
                resume.as_deref(),
            )
            .await
            .map_err(flow_error)?,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_backup_event_file_parses() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../events");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).expect("events dir") {
            let path = entry.expect("entry").path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_owned();
            if !name.starts_with("backup-") || !name.ends_with(".json") {
                continue;
            }
            let v: Value =
                serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("json");
            let v = match v.get("detail-type") {
                Some(_) => v["detail"].clone(),
                None => v,
            };
            parse_backup_event(v).unwrap_or_else(|e| panic!("{name}: {e}"));
            n += 1;
        }
        assert!(n >= 4, "expected the backup events, found {n}");
    }
}
