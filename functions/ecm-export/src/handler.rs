//! Translates `ecm-export` invocations ⇄ the export flow, and nothing else:
//!
//! - a Lambda Function URL request (HTTP API v2 payload) is the approval
//!   webhook: verified (`domain::webhook`), then `flows::export::handle_callback`.
//!   It is always answered with an HTTP response object: 2xx after a delivery
//!   or an acknowledged duplicate, 4xx with a short reason for a refusal, 503
//!   for a transient failure so that the caller retries;
//! - a manual console event (`{"action":"resend"|"export-package",…}`), bare
//!   or as the `detail` of an EventBridge event, returns the flow's JSON
//!   report; failures are `FunctionError`s, transient ones retryable.

use std::sync::Arc;

use serde_json::{Value, json};
use xecm_core::domain::export_route::{ExportManualEvent, ExportRoutes};
use xecm_core::domain::webhook::{
    self, Admission, FunctionUrlEvent, ReplayGuard, WebhookPolicy, WebhookRequest,
};
use xecm_core::flows::export::{self, Destinations, ExportContext, ExportError, ExportOutcome};
use xecm_core::ports::ecm::Ecm;
use xecm_core::ports::events::EventSink;
use xecm_core::ports::secrets::{Secrets, WebhookSecret, get_parsed};
use xecm_core::runtime::{FunctionError, Invocation};

/// Everything built once per cold start and borrowed by each invocation.
pub struct State {
    pub ecm: Arc<dyn Ecm>,
    pub events: Arc<dyn EventSink>,
    pub destinations: Arc<dyn Destinations>,
    pub secrets: Arc<dyn Secrets>,
    pub routes: ExportRoutes,
    /// Secret holding `{"hmac_keys":[…]}`; without it every webhook is 500.
    pub webhook_secret_id: Option<String>,
    pub policy: WebhookPolicy,
    /// Verified callbacks of this process by `event_id` (replays within the
    /// window are answered from here, without the ECM).
    pub replays: std::sync::Mutex<ReplayGuard>,
}

impl State {
    fn context<'a>(&'a self, invocation: &'a Invocation) -> ExportContext<'a> {
        ExportContext {
            ecm: self.ecm.as_ref(),
            events: self.events.as_ref(),
            destinations: self.destinations.as_ref(),
            routes: &self.routes,
            invocation_id: &invocation.request_id,
            deadline: Some(std::time::Instant::now() + invocation.remaining()),
        }
    }
}

/// A Function URL response. `cookies` and `multiValueHeaders` are empty but
/// present: Lambda ignores them, and cargo-lambda's local Function URL
/// (older `aws_lambda_events` response type) refuses a response without them.
fn http(status: u16, body: Value) -> Value {
    json!({
        "statusCode": status,
        "headers": {"content-type": "application/json"},
        "multiValueHeaders": {},
        "cookies": [],
        "body": body.to_string(),
        "isBase64Encoded": false,
    })
}

fn is_function_url(event: &Value) -> bool {
    event
        .get("requestContext")
        .and_then(|c| c.get("http"))
        .is_some()
}

/// The Lambda entry point.
pub async fn handle(
    state: &State,
    event: Value,
    invocation: Invocation,
) -> Result<Value, FunctionError> {
    if is_function_url(&event) {
        return Ok(handle_http(state, event, &invocation, chrono::Utc::now().timestamp()).await);
    }
    // An EventBridge event carries the manual event as its detail.
    let manual = match event.get("detail-type") {
        Some(_) => event.get("detail").cloned().unwrap_or(Value::Null),
        None => event,
    };
    handle_manual(state, manual, &invocation).await
}

/// The webhook. `now` is injected so tests can pin the replay window.
pub async fn handle_http(state: &State, event: Value, invocation: &Invocation, now: i64) -> Value {
    let ev: FunctionUrlEvent = match serde_json::from_value(event) {
        Ok(ev) => ev,
        Err(e) => {
            tracing::warn!(error = %e, "not a Function URL request");
            return http(400, json!({"error": "malformed request"}));
        }
    };
    let req = match WebhookRequest::from_function_url(ev, &state.policy) {
        Ok(r) => r,
        Err(rej) => return refusal(&rej),
    };
    let Some(secret_id) = state.webhook_secret_id.as_deref() else {
        tracing::error!("XECM_WEBHOOK_SECRET_ID is not set; refusing every webhook");
        return http(500, json!({"error": "server not configured"}));
    };
    let keys = match get_parsed(state.secrets.as_ref(), secret_id, WebhookSecret::from_json).await {
        Ok(s) => s.hmac_keys,
        Err(e) if e.is_retryable() => {
            tracing::warn!(error = %e, "webhook secret unavailable");
            return http(503, json!({"error": "temporarily unavailable"}));
        }
        Err(e) => {
            tracing::error!(error = %e, "webhook secret unusable");
            return http(500, json!({"error": "server not configured"}));
        }
    };
    let cb = match webhook::verify(&state.policy, &req, &keys, now) {
        Ok(cb) => cb,
        Err(rej) => return refusal(&rej),
    };
    let admission = match state.replays.lock() {
        Ok(mut g) => g.admit(&cb.event_id, &req.body, now),
        // A poisoned lock only loses the shortcut; the history still holds.
        Err(_) => Admission::New,
    };
    match admission {
        Admission::New => {}
        Admission::Replay { status, answer } => {
            tracing::info!(event_id = %cb.event_id, status, "replayed callback answered from memory");
            let answer = if status == 200 {
                json!({"status": "duplicate", "replay": true, "event_id": cb.event_id, "first": answer})
            } else {
                json!({"error": answer.get("error").cloned().unwrap_or(Value::Null), "replay": true, "event_id": cb.event_id})
            };
            return http(status, answer);
        }
        Admission::InFlight => {
            return http(
                503,
                json!({"error": "in progress", "kind": "InProgress", "event_id": cb.event_id}),
            );
        }
        Admission::OtherBody => {
            tracing::warn!(event_id = %cb.event_id, "event_id seen before with another body; handled in full");
            return answer_callback(state, invocation, &cb).await;
        }
    }
    let answer = answer_callback(state, invocation, &cb).await;
    let status = answer["statusCode"].as_u64().unwrap_or(500) as u16;
    // Only final answers are remembered: a failure may succeed on retry.
    let keep = (status == 200 || status == 422).then(|| {
        let body = answer["body"]
            .as_str()
            .and_then(|b| serde_json::from_str(b).ok())
            .unwrap_or(Value::Null);
        (status, body)
    });
    if let Ok(mut g) = state.replays.lock() {
        g.finish(&cb.event_id, keep);
    }
    answer
}

async fn answer_callback(
    state: &State,
    invocation: &Invocation,
    cb: &webhook::ApprovalCallback,
) -> Value {
    let cx = state.context(invocation);
    match export::handle_callback(&cx, cb).await {
        Ok(ExportOutcome::Delivered(r)) => http(200, json!({"status": "delivered", "delivery": r})),
        Ok(ExportOutcome::Duplicate(r)) => http(200, json!({"status": "duplicate", "delivery": r})),
        Ok(ExportOutcome::Superseded {
            delivery,
            newest_version,
            newest_path,
        }) => http(
            200,
            json!({"status": "superseded", "delivery": delivery,
                   "newest_version": newest_version, "newest_path": newest_path}),
        ),
        Ok(ExportOutcome::Packaged(r)) => http(200, json!({"status": "packaged", "package": r})),
        Ok(ExportOutcome::PackageDuplicate { node_id, package }) => http(
            200,
            json!({"status": "duplicate", "node_id": node_id, "package": package}),
        ),
        Ok(ExportOutcome::Rejected { node_id, .. }) => http(
            422,
            json!({"error": "not approved for export", "node_id": node_id}),
        ),
        Err(e) => error_response(&e),
    }
}

fn refusal(rej: &webhook::Rejection) -> Value {
    tracing::warn!(status = rej.status, reason = rej.reason, detail = ?rej.detail, "webhook refused");
    http(rej.status, json!({"error": rej.reason}))
}

fn error_response(e: &ExportError) -> Value {
    if e.is_retryable() {
        tracing::warn!(error = %e, "export failed transiently; the caller should retry");
        return http(
            503,
            json!({"error": "temporarily unavailable", "kind": e.kind()}),
        );
    }
    tracing::error!(error = %e, "export failed");
    let status = match e {
        ExportError::TargetExists { .. } => 409,
        _ => 422,
    };
    http(status, json!({"error": "export failed", "kind": e.kind()}))
}

fn function_error(e: ExportError) -> FunctionError {
    if e.is_retryable() {
        FunctionError::transient(e.kind(), e.to_string())
    } else {
        FunctionError::permanent(e.kind(), e.to_string())
    }
}

/// Manual console events.
pub async fn handle_manual(
    state: &State,
    event: Value,
    invocation: &Invocation,
) -> Result<Value, FunctionError> {
    let ev = ExportManualEvent::from_json(event)
        .map_err(|e| FunctionError::permanent("InvalidEvent", e.to_string()))?;
    let cx = state.context(invocation);
    match ev {
        ExportManualEvent::Resend {
            node_id,
            route,
            reason,
        } => {
            let r = export::resend(&cx, node_id, &route, reason.as_deref())
                .await
                .map_err(function_error)?;
            Ok(json!({"status": "resent", "delivery": r}))
        }
        ExportManualEvent::ExportPackage {
            node_id,
            route,
            package_name,
            format,
        } => {
            let r = export::export_package(&cx, node_id, &route, package_name.as_deref(), format)
                .await
                .map_err(function_error)?;
            Ok(json!({"status": "packaged", "package": r}))
        }
        ExportManualEvent::Sweep {
            route,
            roots,
            max_documents,
            cursor,
        } => {
            let r = export::sweep(&cx, &route, roots.as_deref(), max_documents, cursor)
                .await
                .map_err(function_error)?;
            Ok(json!({"status": "swept", "sweep": r}))
        }
        // Reads the node and its history; delivers, records and publishes nothing.
        ExportManualEvent::Plan { node_id, route } => {
            let p = xecm_core::flows::plan::export(
                state.ecm.as_ref(),
                &state.routes,
                node_id,
                route.as_deref(),
            )
            .await
            .map_err(function_error)?;
            serde_json::to_value(&p).map_err(|e| {
                FunctionError::permanent("Internal", format!("plan not serialisable: {e}"))
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use bytes::Bytes;
    use xecm_core::domain::export_route::ExportConfig;
    use xecm_core::flows::export::memory::{InstrumentedEcm, MemoryDestinations};
    use xecm_core::ports::ecm::EcmError;
    use xecm_core::ports::ecm::memory::MemoryEcm;
    use xecm_core::ports::ecm::{AppliedCategory, Content, NodeId, UploadRequest};
    use xecm_core::ports::events::MemoryEvents;
    use xecm_core::ports::secrets::MemorySecrets;

    use super::*;

    const NOW: i64 = 1_795_000_000;

    async fn state() -> (State, Arc<InstrumentedEcm<MemoryEcm>>, MemoryDestinations) {
        let ecm = Arc::new(InstrumentedEcm::new(MemoryEcm::new()));
        let secrets = MemorySecrets::new();
        secrets.insert("hook", r#"{"hmac_keys":["new-key","old-key"]}"#);
        let dest = MemoryDestinations::new().unwrap();
        let routes = ExportConfig::from_json(
            &json!({
                "export_history": {"category_id": 9003, "attributes": {"version": 2, "exported_at": 3, "destination": 4, "sha256": 5, "deliveries": 6}},
                "routes": [{"name": "r", "approval": {"category_id": 9001, "attribute": "9001_2", "value": "Approved"},
                    "destinations": [{"name": "d", "sftp_secret": "s", "directory": "out"}]}]
            })
            .to_string(),
        )
        .unwrap();
        let state = State {
            ecm: ecm.clone(),
            events: Arc::new(MemoryEvents::new()),
            destinations: Arc::new(dest.clone()),
            secrets: Arc::new(secrets),
            routes,
            webhook_secret_id: Some("hook".into()),
            policy: WebhookPolicy::default(),
            replays: Default::default(),
        };
        (state, ecm, dest)
    }

    async fn doc(ecm: &dyn Ecm, status: &str) -> NodeId {
        let b = Bytes::from_static(b"content");
        ecm.upload(UploadRequest {
            parent: NodeId::new(2000).unwrap(),
            name: format!("{status}.txt"),
            description: None,
            categories: vec![AppliedCategory {
                category_id: 9001,
                values: [("9001_2".to_string(), json!(status))].into(),
            }],
            classifications: vec![],
            content: Content {
                length: b.len() as u64,
                stream: Box::pin(futures_util::stream::iter([Ok(b)])),
                file_name: "a.txt".into(),
                mime_type: "text/plain".into(),
            },
        })
        .await
        .unwrap()
        .node_id
    }

    fn request(node: NodeId, key: &str, ts: i64) -> Value {
        let body = json!({"event": "document.approved", "event_id": "e1", "node_id": node.get(), "version": 1,
            "category_id": 9001, "attribute": "9001_2", "value": "Approved", "approved_at": "2026-11-18T11:06:36Z"})
        .to_string();
        json!({
            "version": "2.0", "rawPath": "/", "rawQueryString": "",
            "headers": {"content-type": "application/json", "x-xecm-timestamp": ts.to_string(),
                        "x-xecm-signature": webhook::sign(key.as_bytes(), ts, body.as_bytes())},
            "requestContext": {"http": {"method": "POST", "path": "/"}},
            "body": body, "isBase64Encoded": false
        })
    }

    fn inv() -> Invocation {
        Invocation {
            request_id: "req-1".into(),
            deadline: SystemTime::now() + Duration::from_secs(60),
            function_arn: "local:ecm-export".into(),
        }
    }

    #[tokio::test]
    async fn signed_callback_with_the_previous_key_delivers_and_answers_200() {
        let (state, ecm, dest) = state().await;
        let id = doc(ecm.as_ref(), "Approved").await;
        let r = handle_http(&state, request(id, "old-key", NOW), &inv(), NOW + 10).await;
        assert_eq!(r["statusCode"], 200, "{r}");
        assert!(dest.store.file("/out/Approved.txt").is_some());
        let again = handle_http(&state, request(id, "new-key", NOW), &inv(), NOW).await;
        let body: Value = serde_json::from_str(again["body"].as_str().unwrap()).unwrap();
        assert_eq!(body["status"], "duplicate");
    }

    #[tokio::test]
    async fn refusals_are_4xx_with_a_short_reason_and_deliver_nothing() {
        let (state, ecm, dest) = state().await;
        let id = doc(ecm.as_ref(), "Approved").await;
        let r = handle_http(&state, request(id, "forged", NOW), &inv(), NOW).await;
        assert_eq!(r["statusCode"], 401);
        assert_eq!(r["body"], json!({"error": "bad signature"}).to_string());
        let r = handle_http(&state, request(id, "new-key", NOW - 301), &inv(), NOW).await;
        assert_eq!(r["statusCode"], 401);
        let mut ev = request(id, "new-key", NOW);
        ev["requestContext"]["http"]["method"] = json!("GET");
        assert_eq!(
            handle_http(&state, ev, &inv(), NOW).await["statusCode"],
            405
        );
        let draft = doc(ecm.as_ref(), "Draft").await;
        let r = handle_http(&state, request(draft, "new-key", NOW), &inv(), NOW).await;
        assert_eq!(r["statusCode"], 422);
        assert_eq!(dest.store.put_count(), 0);
    }

    #[tokio::test]
    async fn manual_events_are_routed_and_bad_ones_are_permanent_errors() {
        let (state, ecm, dest) = state().await;
        let id = doc(ecm.as_ref(), "Approved").await;
        let out = handle(
            &state,
            json!({"action": "resend", "node_id": id.get(), "route": "r"}),
            inv(),
        )
        .await
        .unwrap();
        assert_eq!(out["status"], "resent");
        // The file, and no lease left behind (the lease's own writes count
        // as puts too).
        assert!(dest.store.file("/out/Approved.txt").is_some());
        assert!(
            dest.store.paths().iter().all(|p| !p.contains("lease")),
            "{:?}",
            dest.store.paths()
        );
        // The same as the detail of an EventBridge event.
        let out = handle(
            &state,
            json!({"detail-type": "Export Requested", "source": "console",
                   "detail": {"action": "resend", "node_id": id.get(), "route": "r"}}),
            inv(),
        )
        .await
        .unwrap();
        assert_eq!(out["status"], "resent");
        let err = handle(
            &state,
            json!({"action": "resend", "node_id": id.get()}),
            inv(),
        )
        .await
        .unwrap_err();
        assert_eq!(err.error_type(), "Permanent.InvalidEvent");
        let err = handle(
            &state,
            json!({"action": "resend", "node_id": id.get(), "route": "nope"}),
            inv(),
        )
        .await
        .unwrap_err();
        assert_eq!(err.error_type(), "Permanent.UnknownRoute");
    }

    #[tokio::test]
    async fn a_plan_event_reports_the_delivery_and_writes_nothing() {
        let (state, ecm, dest) = state().await;
        let id = doc(ecm.as_ref(), "Approved").await;
        let review = doc(ecm.as_ref(), "Draft").await;
        let writes_before =
            ["apply_category", "update_category", "upload", "add_version"].map(|op| ecm.calls(op));
        let out = handle(
            &state,
            json!({"action": "plan", "node_id": id.get()}),
            inv(),
        )
        .await
        .unwrap();
        assert_eq!(out["dry_run"], json!(true), "{out:#}");
        assert_eq!(out["verdict"], "deliver");
        assert_eq!(out["route"], "r");
        assert_eq!(out["destination"], "d");
        assert_eq!(out["remote_path"], "out/Approved.txt");
        let out = handle(
            &state,
            json!({"action": "plan", "node_id": review.get(), "route": "r"}),
            inv(),
        )
        .await
        .unwrap();
        assert_eq!(out["verdict"], "rejected");
        assert!(
            out["routes"][0]["reason"]
                .as_str()
                .unwrap_or("")
                .contains("\"Draft\""),
            "{out:#}"
        );
        let err = handle(&state, json!({"action": "plan", "node_id": 0}), inv())
            .await
            .unwrap_err();
        assert_eq!(err.error_type(), "Permanent.InvalidEvent");
        assert!(err.message.contains("node_id"), "{err}");
        assert!(
            dest.store.paths().iter().all(|p| !p.contains("out")),
            "{:?}",
            dest.store.paths()
        );
        assert_eq!(
            ["apply_category", "update_category", "upload", "add_version"].map(|op| ecm.calls(op)),
            writes_before
        );
    }

    fn body_of(r: &Value) -> Value {
        serde_json::from_str(r["body"].as_str().unwrap_or("null")).unwrap_or(Value::Null)
    }

    #[tokio::test]
    async fn a_replay_inside_the_window_is_a_duplicate_without_touching_the_ecm() {
        let (state, ecm, dest) = state().await;
        let id = doc(ecm.as_ref(), "Approved").await;
        let r = handle_http(&state, request(id, "new-key", NOW), &inv(), NOW).await;
        assert_eq!(r["statusCode"], 200, "{r}");
        let calls = ecm.total_calls();
        let puts = dest.store.put_count();
        // The same request again, and re-signed with a later timestamp.
        for ts in [NOW, NOW + 200] {
            let again = handle_http(&state, request(id, "new-key", ts), &inv(), NOW + 250).await;
            assert_eq!(again["statusCode"], 200, "{again}");
            assert_eq!(body_of(&again)["status"], "duplicate", "{again}");
        }
        assert_eq!(ecm.total_calls(), calls, "the replay reached the ECM");
        assert_eq!(dest.store.put_count(), puts);
    }

    #[tokio::test]
    async fn a_transient_or_auth_ecm_failure_answers_503_and_the_retry_delivers() {
        let (state, ecm, dest) = state().await;
        let id = doc(ecm.as_ref(), "Approved").await;
        ecm.fail(
            "node",
            1,
            Box::new(|| EcmError::Transient {
                op: "get node",
                target: "node".into(),
                detail: "HTTP 500".into(),
            }),
        );
        let r = handle_http(&state, request(id, "new-key", NOW), &inv(), NOW).await;
        assert_eq!(r["statusCode"], 503, "{r}");
        assert_eq!(dest.store.put_count(), 0);
        // Refused credentials (a password rotated under the client) too.
        ecm.fail(
            "categories",
            1,
            Box::new(|| EcmError::Auth {
                op: "get categories",
                detail: "HTTP 401".into(),
            }),
        );
        let r = handle_http(&state, request(id, "new-key", NOW + 1), &inv(), NOW + 1).await;
        assert_eq!(r["statusCode"], 503, "{r}");
        assert_eq!(dest.store.put_count(), 0);
        // Not remembered as answered: the caller's retry goes through.
        let r = handle_http(&state, request(id, "new-key", NOW + 5), &inv(), NOW + 5).await;
        assert_eq!(r["statusCode"], 200, "{r}");
        assert_eq!(body_of(&r)["status"], "delivered", "{r}");
    }
}
