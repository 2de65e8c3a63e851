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
use xecm_core::domain::webhook::{self, FunctionUrlEvent, WebhookPolicy, WebhookRequest};
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
}

impl State {
    fn context<'a>(&'a self, invocation: &'a Invocation) -> ExportContext<'a> {
        ExportContext {
            ecm: self.ecm.as_ref(),
            events: self.events.as_ref(),
            destinations: self.destinations.as_ref(),
            routes: &self.routes,
            invocation_id: &invocation.request_id,
        }
    }
}

fn http(status: u16, body: Value) -> Value {
    json!({
        "statusCode": status,
        "headers": {"content-type": "application/json"},
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
    let cx = state.context(invocation);
    match export::handle_callback(&cx, &cb).await {
        Ok(ExportOutcome::Delivered(r)) => http(200, json!({"status": "delivered", "delivery": r})),
        Ok(ExportOutcome::Duplicate(r)) => http(200, json!({"status": "duplicate", "delivery": r})),
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
    }
}
