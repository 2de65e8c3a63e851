//! Translates an `sftp-ingest` invocation to the ingest flow and back:
//! event → validated route, route's SFTP secret → a store rooted at `/`,
//! flow report → response JSON, failures → permanent/transient errors.

use std::sync::Arc;
use std::time::Duration;

use secrecy::ExposeSecret;
use serde_json::Value;
use xecm_core::adapters::sftp::{SftpSettings, open_store as open_sftp};
use xecm_core::config::Config;
use xecm_core::domain::route::{IngestEvent, Route, parse_ingest_event};
use xecm_core::domain::work_message::parse_sqs_event;
use xecm_core::flows::ingest::{self, IngestDeps, RunContext, SystemClock};
use xecm_core::ports::ecm::Ecm;
use xecm_core::ports::events::EventSink;
use xecm_core::ports::file_store::FileStore;
use xecm_core::ports::queue::WorkQueues;
use xecm_core::ports::secrets::Secrets;
use xecm_core::runtime::{FunctionError, Invocation};

/// Built once per cold start, borrowed by every invocation.
pub struct State {
    pub config: Config,
    pub secrets: Arc<dyn Secrets>,
    pub ecm: Arc<dyn Ecm>,
    pub events: Arc<dyn EventSink>,
    /// Work queues of fan-out routes (docs/fanout.md).
    pub queues: Arc<dyn WorkQueues>,
}

/// SFTP sessions beyond the route's parallelism: listings and renames must
/// not wait behind streaming reads (see the adapter's module docs), and a
/// large run's report streams into a session of its own. Sessions are
/// opened on first use, so a run that writes no report opens no more.
const SPARE_SESSIONS: usize = 2;

fn store_error(e: xecm_core::ports::file_store::FileStoreError, host: &str) -> FunctionError {
    if e.is_retryable() {
        FunctionError::transient("SftpUnavailable", format!("SFTP server {host}: {e}"))
    } else {
        FunctionError::permanent("SftpRefused", format!("SFTP server {host}: {e}"))
    }
}

pub(crate) async fn open_store(
    state: &State,
    route: &Route,
) -> Result<(std::sync::Arc<dyn FileStore>, String), FunctionError> {
    let secret_id = state.config.sftp_secret_id(&route.config.sftp_secret);
    let json = state.secrets.get(secret_id).await.map_err(|e| {
        if e.is_retryable() {
            FunctionError::transient("SecretUnavailable", e.to_string())
        } else {
            FunctionError::permanent("SecretInvalid", e.to_string())
        }
    })?;
    // The secret's optional `root` is the directory routes' `source_dir`
    // is relative to (a chroot's writable `/data`, a home directory).
    let mut settings = SftpSettings::from_secret_json(secret_id, json.expose_secret())
        .map_err(|e| FunctionError::permanent("SecretInvalid", e.to_string()))?;
    settings.max_sessions = route.limits().parallelism as usize + SPARE_SESSIONS;
    let host = format!("{}:{}", settings.host, settings.port);
    let sftp_host = settings.host.clone();
    let store = open_sftp(settings).map_err(|e| store_error(e, &host))?;
    // Fail the invocation (not each file) when the server is unreachable or
    // refuses our key.
    store.check().await.map_err(|e| store_error(e, &host))?;
    Ok((store, sftp_host))
}

/// One invocation: a scheduled run, a manual retry, a plan or (SQS) a
/// batch of a fan-out route's work messages.
pub async fn handle(
    state: &State,
    event: Value,
    invocation: Invocation,
) -> Result<Value, FunctionError> {
    if let Some(records) = parse_sqs_event(&event) {
        // Never a permanent error here: Lambda would take the handled
        // answer for a successful batch and delete every message.
        let records = records.map_err(|e| {
            FunctionError::transient(
                "InvalidSqsEvent",
                format!("{e}; the whole batch is returned to the queue"),
            )
        })?;
        return Ok(crate::worker::handle_batch(state, records, &invocation).await);
    }
    let event = parse_ingest_event(event)
        .map_err(|e| FunctionError::permanent("InvalidEvent", e.to_string()))?;
    let route = match &event {
        IngestEvent::Scheduled(r) | IngestEvent::Plan(r) => r,
        IngestEvent::Retry { route, .. } => route,
    };
    let (store, host) = open_store(state, route).await?;
    if let IngestEvent::Scheduled(_) | IngestEvent::Plan(_) = &event {
        // The ECM is needed for every file: check it once up front.
        state.ecm.enterprise_volume().await.map_err(|e| {
            if e.is_retryable() {
                FunctionError::transient("EcmUnavailable", e.to_string())
            } else {
                FunctionError::permanent("EcmRefused", e.to_string())
            }
        })?;
    }
    let clock = SystemClock;
    let deps = IngestDeps {
        store: store.as_ref(),
        ecm: state.ecm.as_ref(),
        events: state.events.as_ref(),
        clock: &clock,
        sftp_host: host,
    };
    let ctx = RunContext::new(
        invocation.request_id.clone(),
        invocation.remaining().max(Duration::from_secs(1)),
    );
    let report = match &event {
        // Lists, reads and looks up; changes nothing (flows::plan).
        IngestEvent::Plan(route) => {
            let plan = xecm_core::flows::plan::ingest(route, &deps, &ctx)
                .await
                .map_err(|e| {
                    if e.is_retryable() {
                        FunctionError::transient("PlanUnavailable", e.to_string())
                    } else {
                        FunctionError::permanent("PlanFailed", e.to_string())
                    }
                })?;
            return serde_json::to_value(&plan).map_err(|e| {
                FunctionError::permanent("Internal", format!("plan not serialisable: {e}"))
            });
        }
        IngestEvent::Scheduled(route) if route.config.fan_out.is_some() => {
            let url = route
                .config
                .fan_out
                .as_ref()
                .map(|f| f.queue_url.as_str())
                .unwrap_or_default();
            ingest::fanout::run_poller(route, &deps, &ctx, state.queues.open(url)).await
        }
        IngestEvent::Scheduled(route) => ingest::run(route, &deps, &ctx).await,
        IngestEvent::Retry { route, files } => ingest::retry(route, files, &deps, &ctx).await,
    }
    .map_err(|e| {
        if e.is_retryable() {
            FunctionError::transient("IngestUnavailable", e.to_string())
        } else {
            FunctionError::permanent("IngestFailed", e.to_string())
        }
    })?;
    serde_json::to_value(&report)
        .map_err(|e| FunctionError::permanent("Internal", format!("report not serialisable: {e}")))
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use xecm_core::ports::ecm::memory::MemoryEcm;
    use xecm_core::ports::events::MemoryEvents;
    use xecm_core::ports::queue::MemoryQueue;
    use xecm_core::ports::secrets::MemorySecrets;
    use xecm_core::runtime::Retry;

    use super::*;

    fn state(secrets: MemorySecrets) -> State {
        let config = Config::from_lookup(|k| match k {
            "XECM_ECM_SECRET_ID" => Some("ecm".into()),
            "XECM_EVENT_BUS" => Some("bus".into()),
            _ => None,
        })
        .unwrap();
        State {
            config,
            secrets: Arc::new(secrets),
            ecm: Arc::new(MemoryEcm::new()),
            events: Arc::new(MemoryEvents::new()),
            queues: Arc::new(Arc::new(MemoryQueue::new())),
        }
    }

    fn inv() -> Invocation {
        Invocation {
            request_id: "req-1".into(),
            deadline: SystemTime::now() + Duration::from_secs(60),
            function_arn: "local:sftp-ingest".into(),
        }
    }

    fn sample() -> Value {
        let text = include_str!("../../../events/ingest-scheduled.json");
        serde_json::from_str(text).unwrap()
    }

    #[tokio::test]
    async fn invalid_route_is_permanent_and_names_the_field() {
        let mut ev = sample();
        ev["route"]["limits"]["parallelism"] = serde_json::json!(0);
        let e = handle(&state(MemorySecrets::new()), ev, inv())
            .await
            .unwrap_err();
        assert_eq!(e.retry, Retry::Permanent);
        assert!(e.message.contains("route.limits.parallelism"), "{e}");
    }

    #[tokio::test]
    async fn malformed_sftp_secret_is_permanent_and_names_the_secret() {
        let s = MemorySecrets::new();
        s.insert("xecm/sftp/acme", r#"{"host":"127.0.0.1","username":"u"}"#);
        let e = handle(&state(s), sample(), inv()).await.unwrap_err();
        assert_eq!(e.retry, Retry::Permanent);
        assert!(e.message.contains("xecm/sftp/acme"), "{e}");
        assert!(!e.message.contains("PRIVATE KEY"));
    }

    #[tokio::test]
    async fn an_unreadable_work_message_is_listed_for_redelivery_never_acknowledged() {
        let mut ev: Value =
            serde_json::from_str(include_str!("../../../events/ingest-sqs-worker.json")).unwrap();
        let mut bad = ev["Records"][0].clone();
        bad["messageId"] = serde_json::json!("m-bad");
        bad["body"] = serde_json::json!("{\"v\": 2}");
        let mut not_json = ev["Records"][0].clone();
        not_json["messageId"] = serde_json::json!("m-text");
        not_json["body"] = serde_json::json!("hello");
        ev["Records"] = serde_json::json!([bad, not_json]);
        let answer = handle(&state(MemorySecrets::new()), ev, inv())
            .await
            .expect("a batch is always answered");
        assert_eq!(
            answer,
            serde_json::json!({"batchItemFailures": [
                {"itemIdentifier": "m-bad"}, {"itemIdentifier": "m-text"}]})
        );
    }

    #[tokio::test]
    async fn an_sqs_event_without_message_ids_is_transient_so_the_batch_comes_back() {
        let ev = serde_json::json!({"Records": [{"eventSource": "aws:sqs", "body": "{}"}]});
        let e = handle(&state(MemorySecrets::new()), ev, inv())
            .await
            .unwrap_err();
        assert_eq!(e.retry, Retry::Transient, "{e}");
        assert!(e.message.contains("Records[0].messageId"), "{e}");
    }

    #[tokio::test]
    async fn a_worker_batch_whose_sftp_secret_is_missing_lists_every_message() {
        // The sample's route names xecm/sftp/acme, absent here.
        let ev: Value =
            serde_json::from_str(include_str!("../../../events/ingest-sqs-worker.json")).unwrap();
        let answer = handle(&state(MemorySecrets::new()), ev, inv())
            .await
            .expect("a batch is always answered");
        assert_eq!(
            answer["batchItemFailures"][0]["itemIdentifier"],
            "059f36b4-87a3-44ab-83d2-661975830a7d"
        );
    }

    #[tokio::test]
    async fn unreachable_sftp_server_is_transient() {
        let s = MemorySecrets::new();
        // Port 9 on loopback: nothing listens, the connect is refused.
        s.insert(
            "xecm/sftp/acme",
            r#"{"host":"127.0.0.1","port":9,"username":"u","password":"p",
                "host_key_sha256":["SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"]}"#,
        );
        let e = handle(&state(s), sample(), inv()).await.unwrap_err();
        assert_eq!(e.retry, Retry::Transient, "{e}");
    }
}
