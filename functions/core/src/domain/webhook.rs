//! Verification of the approval webhook (Lambda Function URL, HTTP API v2
//! payload), strictly in this order, and only then parsing of the body:
//!
//! 1. method `POST` (405), path (404), `Content-Type: application/json` (415),
//!    body size cap (413) — cheap checks that need no secret;
//! 2. `X-Xecm-Timestamp` within ±300 s of now (401): bounds replay;
//! 3. `X-Xecm-Signature: sha256=<hex>`, HMAC-SHA256 over `"<timestamp>.<raw body>"`
//!    with any of the configured keys (two during rotation), compared in
//!    constant time by `hmac`'s `verify_slice` (401);
//! 4. strict parse of the callback (unknown or duplicate fields refused, 400).
//!
//! The body is never parsed before the signature holds, so an unauthenticated
//! caller cannot reach serde with arbitrary input. Rejections carry a short,
//! fixed reason for the response and a detail for the log only. The body is a
//! claim, not a fact: the flow re-reads the node and checks the route's
//! approval predicate (see `export_route.rs`).

use std::collections::BTreeMap;

use base64::Engine;
use chrono::{DateTime, FixedOffset};
use hmac::{Hmac, KeyInit, Mac};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

pub const TIMESTAMP_HEADER: &str = "x-xecm-timestamp";
pub const SIGNATURE_HEADER: &str = "x-xecm-signature";
/// Replay window either side of now.
pub const REPLAY_WINDOW_SECS: i64 = 300;
/// Default body cap: a callback is a few hundred bytes.
pub const DEFAULT_MAX_BODY_BYTES: usize = 16 * 1024;
/// The only event we act on.
pub const APPROVED_EVENT: &str = "document.approved";

/// A refused request: HTTP status, short public reason, and a log-only detail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status} {reason}{}", detail.as_ref().map(|d| format!(" ({d})")).unwrap_or_default())]
pub struct Rejection {
    pub status: u16,
    pub reason: &'static str,
    /// For logs; never secrets or the body.
    pub detail: Option<String>,
}

impl Rejection {
    fn new(status: u16, reason: &'static str) -> Self {
        Rejection {
            status,
            reason,
            detail: None,
        }
    }

    fn with(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// The response body: `{"error":"<reason>"}`.
    pub fn body(&self) -> String {
        serde_json::json!({ "error": self.reason }).to_string()
    }

    /// Only a misconfigured server (5xx) might succeed later; a caller's bad
    /// request will not.
    pub fn is_retryable(&self) -> bool {
        self.status >= 500
    }
}

/// The parts of a Function URL (HTTP API v2) event that verification needs.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FunctionUrlEvent {
    pub raw_path: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub body: Option<String>,
    #[serde(default)]
    pub is_base64_encoded: bool,
    pub request_context: RequestContext,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RequestContext {
    pub http: HttpContext,
}

#[derive(Debug, Clone, Deserialize)]
pub struct HttpContext {
    pub method: String,
}

/// A request reduced to what is verified: header names lowercased, body raw bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookRequest {
    pub method: String,
    pub path: String,
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
}

/// What the endpoint accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookPolicy {
    pub path: String,
    pub max_body_bytes: usize,
}

impl Default for WebhookPolicy {
    fn default() -> Self {
        WebhookPolicy {
            path: "/".to_owned(),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        }
    }
}

impl WebhookRequest {
    /// From a Function URL event; the size cap applies before base64 decoding
    /// so an oversized body is never decoded.
    pub fn from_function_url(
        ev: FunctionUrlEvent,
        policy: &WebhookPolicy,
    ) -> Result<Self, Rejection> {
        let raw = ev.body.unwrap_or_default();
        let body = if ev.is_base64_encoded {
            if raw.len() > policy.max_body_bytes.div_ceil(3) * 4 {
                return Err(Rejection::new(413, "body too large"));
            }
            base64::engine::general_purpose::STANDARD
                .decode(raw.as_bytes())
                .map_err(|e| Rejection::new(400, "invalid body encoding").with(e.to_string()))?
        } else {
            raw.into_bytes()
        };
        Ok(WebhookRequest {
            method: ev.request_context.http.method,
            path: ev.raw_path,
            headers: ev
                .headers
                .into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v))
                .collect(),
            body,
        })
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.trim())
    }
}

/// The approval callback, exactly as the contract defines it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalCallback {
    pub event: String,
    pub event_id: String,
    pub node_id: i64,
    pub version: u32,
    pub category_id: i64,
    pub attribute: String,
    pub value: String,
    pub approved_at: DateTime<FixedOffset>,
}

type HmacSha256 = Hmac<Sha256>;

/// `sha256=<lowercase hex>` over `"<timestamp>.<body>"`; for the emulator,
/// tests and sample events.
pub fn sign(key: &[u8], timestamp: i64, body: &[u8]) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = match HmacSha256::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

fn content_type_ok(ct: &str) -> bool {
    let mut parts = ct.split(';');
    let media = parts.next().unwrap_or("").trim();
    if !media.eq_ignore_ascii_case("application/json") {
        return false;
    }
    parts.all(|p| match p.split_once('=') {
        Some((k, v)) if k.trim().eq_ignore_ascii_case("charset") => {
            v.trim().trim_matches('"').eq_ignore_ascii_case("utf-8")
        }
        Some(_) => true,
        None => p.trim().is_empty(),
    })
}

/// Verify and parse. `now` is Unix seconds; `keys` are the current and, during
/// rotation, previous HMAC keys.
pub fn verify(
    policy: &WebhookPolicy,
    req: &WebhookRequest,
    keys: &[SecretString],
    now: i64,
) -> Result<ApprovalCallback, Rejection> {
    if !req.method.eq_ignore_ascii_case("POST") {
        return Err(Rejection::new(405, "method not allowed").with(req.method.clone()));
    }
    if req.path != policy.path {
        return Err(Rejection::new(404, "not found"));
    }
    match req.header("content-type") {
        Some(ct) if content_type_ok(ct) => {}
        other => {
            return Err(Rejection::new(415, "content type must be application/json")
                .with(format!("{other:?}")));
        }
    }
    if req.body.len() > policy.max_body_bytes {
        return Err(Rejection::new(413, "body too large").with(req.body.len().to_string()));
    }
    let ts_raw = req
        .header(TIMESTAMP_HEADER)
        .ok_or_else(|| Rejection::new(401, "missing timestamp"))?;
    // Digits only: `+5`, ` 5`, `5.0` would sign differently than they parse.
    if ts_raw.is_empty() || ts_raw.len() > 12 || !ts_raw.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Rejection::new(401, "bad timestamp"));
    }
    let ts: i64 = ts_raw
        .parse()
        .map_err(|_| Rejection::new(401, "bad timestamp"))?;
    if (now - ts).abs() > REPLAY_WINDOW_SECS {
        return Err(Rejection::new(401, "stale timestamp").with(format!("skew {} s", now - ts)));
    }
    let sig_raw = req
        .header(SIGNATURE_HEADER)
        .ok_or_else(|| Rejection::new(401, "missing signature"))?;
    let sig = sig_raw
        .strip_prefix("sha256=")
        .filter(|h| h.len() == 64)
        .and_then(|h| hex::decode(h).ok())
        .ok_or_else(|| Rejection::new(401, "malformed signature"))?;
    if keys.is_empty() {
        return Err(Rejection::new(500, "server not configured").with("no HMAC keys"));
    }
    let mut valid = false;
    for key in keys {
        let Ok(mut mac) = HmacSha256::new_from_slice(key.expose_secret().as_bytes()) else {
            continue;
        };
        mac.update(ts_raw.as_bytes());
        mac.update(b".");
        mac.update(&req.body);
        // Every key is tried, so timing does not tell which one matched.
        valid |= mac.verify_slice(&sig).is_ok();
    }
    if !valid {
        return Err(Rejection::new(401, "bad signature"));
    }
    let cb: ApprovalCallback = serde_json::from_slice(&req.body)
        .map_err(|e| Rejection::new(400, "invalid callback body").with(e.to_string()))?;
    if cb.event != APPROVED_EVENT {
        return Err(Rejection::new(400, "unsupported event").with(cb.event.clone()));
    }
    if cb.event_id.trim().is_empty()
        || cb.event_id.len() > 200
        || cb.event_id.chars().any(char::is_control)
    {
        return Err(Rejection::new(400, "invalid event_id"));
    }
    // `version` is 0 only for a folder or workspace (containers have no
    // versions); the flow refuses 0 for a document.
    if cb.node_id <= 0 || cb.category_id <= 0 {
        return Err(Rejection::new(
            400,
            "invalid node_id, category_id or version",
        ));
    }
    let attr_ok = cb.attribute.split('_').count() >= 2
        && cb.attribute.len() <= 64
        && cb
            .attribute
            .split('_')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    if !attr_ok || !cb.attribute.starts_with(&format!("{}_", cb.category_id)) {
        return Err(Rejection::new(400, "invalid attribute key").with(cb.attribute.clone()));
    }
    Ok(cb)
}

// ----------------------------------------------------------------- replays --

/// How long a seen `event_id` is remembered: a signed request is accepted
/// while its timestamp is within [`REPLAY_WINDOW_SECS`] of now, so a replay
/// of a request first seen at `t` can arrive until `t + 2 × window`.
pub const REPLAY_MEMORY_SECS: i64 = 2 * REPLAY_WINDOW_SECS + 5;
/// Longest a Lambda invocation can run (15 minutes), with a margin.
const MAX_INVOCATION_SECS: i64 = 905;
/// Event ids remembered at most (bounded memory whatever the traffic).
pub const REPLAY_CAPACITY: usize = 10_000;

/// What to do with a verified callback, by its `event_id`.
#[derive(Debug, Clone, PartialEq)]
pub enum Admission {
    /// Not seen (or its last attempt failed): handle it.
    New,
    /// Answered before: answer the same again, without touching the ECM.
    Replay {
        status: u16,
        answer: serde_json::Value,
    },
    /// Being handled right now by another request of this process.
    InFlight,
    /// The same `event_id` came with another body: not a replay, so it is
    /// handled in full (the export history answers it) and not remembered.
    OtherBody,
}

#[derive(Debug, Clone)]
enum Seen {
    InFlight,
    Answered {
        status: u16,
        answer: serde_json::Value,
    },
}

#[derive(Debug, Clone)]
struct SeenEntry {
    body_sha256: [u8; 32],
    at: i64,
    state: Seen,
}

/// The replay memory of one process: verified callbacks by `event_id`,
/// with the answer they got. It only saves work (a replay goes no further
/// than here); what keeps a delivery single across processes is the export
/// history and the delivery lease.
#[derive(Debug, Default)]
pub struct ReplayGuard {
    seen: std::collections::HashMap<String, SeenEntry>,
}

fn body_digest(body: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    Sha256::digest(body).into()
}

impl ReplayGuard {
    /// Decides about a verified callback `event_id` with raw `body` at
    /// `now` (Unix seconds); a `New` one is remembered as in flight until
    /// [`ReplayGuard::finish`].
    pub fn admit(&mut self, event_id: &str, body: &[u8], now: i64) -> Admission {
        self.prune(now);
        let digest = body_digest(body);
        if let Some(e) = self.seen.get(event_id) {
            if e.body_sha256 != digest {
                return Admission::OtherBody;
            }
            return match &e.state {
                Seen::InFlight => Admission::InFlight,
                Seen::Answered { status, answer } => Admission::Replay {
                    status: *status,
                    answer: answer.clone(),
                },
            };
        }
        if self.seen.len() >= REPLAY_CAPACITY {
            // Forget the oldest answered one; in-flight ones stay.
            if let Some(oldest) = self
                .seen
                .iter()
                .filter(|(_, e)| matches!(e.state, Seen::Answered { .. }))
                .min_by_key(|(_, e)| e.at)
                .map(|(k, _)| k.clone())
            {
                self.seen.remove(&oldest);
            }
        }
        self.seen.insert(
            event_id.to_owned(),
            SeenEntry {
                body_sha256: digest,
                at: now,
                state: Seen::InFlight,
            },
        );
        Admission::New
    }

    /// Records the final answer of `event_id` (`None`: it failed and may be
    /// tried again, so it is forgotten).
    pub fn finish(&mut self, event_id: &str, answer: Option<(u16, serde_json::Value)>) {
        match answer {
            Some((status, answer)) => {
                if let Some(e) = self.seen.get_mut(event_id) {
                    e.state = Seen::Answered { status, answer };
                }
            }
            None => {
                self.seen.remove(event_id);
            }
        }
    }

    fn prune(&mut self, now: i64) {
        // An in-flight entry whose request never finished (a panic, a
        // cancelled invocation) goes once no invocation can still run.
        self.seen.retain(|_, e| match e.state {
            Seen::InFlight => now - e.at <= MAX_INVOCATION_SECS,
            Seen::Answered { .. } => now - e.at <= REPLAY_MEMORY_SECS,
        });
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod replay_tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_replay_gets_the_first_answer_and_a_failure_is_forgotten() {
        let mut g = ReplayGuard::default();
        assert_eq!(g.admit("e1", b"body", 100), Admission::New);
        assert_eq!(g.admit("e1", b"body", 101), Admission::InFlight);
        g.finish("e1", Some((200, json!({"status": "delivered"}))));
        assert_eq!(
            g.admit("e1", b"body", 300),
            Admission::Replay {
                status: 200,
                answer: json!({"status": "delivered"})
            }
        );
        assert_eq!(g.admit("e1", b"other body", 300), Admission::OtherBody);
        // Past the memory it is new again (the timestamp check refuses it
        // by then anyway).
        assert_eq!(
            g.admit("e1", b"body", 100 + REPLAY_MEMORY_SECS + 1),
            Admission::New
        );
        g.finish("e1", None);
        assert_eq!(g.admit("e1", b"body", 1000), Admission::New);
    }

    #[test]
    fn memory_is_bounded() {
        let mut g = ReplayGuard::default();
        for i in 0..REPLAY_CAPACITY + 10 {
            let id = format!("e{i}");
            assert_eq!(g.admit(&id, b"b", 5), Admission::New);
            g.finish(&id, Some((200, json!({}))));
        }
        assert!(g.len() <= REPLAY_CAPACITY);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "current-key";
    const NOW: i64 = 1_795_000_000;
    const BODY: &str = r#"{"event":"document.approved","event_id":"evt-1","node_id":4711,"version":3,"category_id":9001,"attribute":"9001_2","value":"Approved","approved_at":"2026-11-18T10:15:00Z"}"#;

    fn keys() -> Vec<SecretString> {
        vec![SecretString::from(KEY), SecretString::from("previous-key")]
    }

    fn req(body: &str, ts: i64, key: &str) -> WebhookRequest {
        let headers = [
            (
                "content-type".to_string(),
                "application/json; charset=utf-8".to_string(),
            ),
            (TIMESTAMP_HEADER.to_string(), ts.to_string()),
            (
                SIGNATURE_HEADER.to_string(),
                sign(key.as_bytes(), ts, body.as_bytes()),
            ),
        ]
        .into();
        WebhookRequest {
            method: "POST".into(),
            path: "/".into(),
            headers,
            body: body.as_bytes().to_vec(),
        }
    }

    fn status(r: Result<ApprovalCallback, Rejection>) -> u16 {
        match r {
            Ok(_) => 200,
            Err(e) => e.status,
        }
    }

    #[test]
    fn given_correctly_signed_callback_when_verified_then_parsed() {
        let cb = verify(
            &WebhookPolicy::default(),
            &req(BODY, NOW, KEY),
            &keys(),
            NOW,
        )
        .unwrap();
        assert_eq!(
            (cb.node_id, cb.version, cb.attribute.as_str()),
            (4711, 3, "9001_2")
        );
        assert_eq!(cb.approved_at.to_rfc3339(), "2026-11-18T10:15:00+00:00");
    }

    #[test]
    fn given_previous_key_during_rotation_when_verified_then_accepted_and_unknown_key_refused() {
        let p = WebhookPolicy::default();
        assert_eq!(
            status(verify(&p, &req(BODY, NOW, "previous-key"), &keys(), NOW)),
            200
        );
        let e = verify(&p, &req(BODY, NOW, "attacker"), &keys(), NOW).unwrap_err();
        assert_eq!((e.status, e.reason), (401, "bad signature"));
    }

    #[test]
    fn given_known_hmac_vector_when_signed_then_matches_independent_computation() {
        // Computed independently: printf '0.x' | openssl dgst -sha256 -hmac Jefe
        assert_eq!(
            sign(b"Jefe", 0, b"x"),
            "sha256=6d15f8f565f81ca17757f8569ccb192a1f1e1b2695979a6115221439a5eb67cb"
        );
    }

    #[test]
    fn given_timestamp_outside_window_when_verified_then_stale() {
        let p = WebhookPolicy::default();
        assert_eq!(
            status(verify(&p, &req(BODY, NOW - 300, KEY), &keys(), NOW)),
            200
        );
        assert_eq!(
            status(verify(&p, &req(BODY, NOW + 300, KEY), &keys(), NOW)),
            200
        );
        let e = verify(&p, &req(BODY, NOW - 301, KEY), &keys(), NOW).unwrap_err();
        assert_eq!((e.status, e.reason), (401, "stale timestamp"));
        assert_eq!(
            status(verify(&p, &req(BODY, NOW + 301, KEY), &keys(), NOW)),
            401
        );
    }

    #[test]
    fn given_tampered_body_or_header_when_verified_then_refused_before_parsing() {
        let p = WebhookPolicy::default();
        let mut r = req(BODY, NOW, KEY);
        r.body = BODY.replace("4711", "4712").into_bytes();
        assert_eq!(
            verify(&p, &r, &keys(), NOW).unwrap_err().reason,
            "bad signature"
        );
        // Invalid JSON with a bad signature is a 401, proving the parse comes later.
        let mut r = req(BODY, NOW, KEY);
        r.body = b"{not json".to_vec();
        assert_eq!(status(verify(&p, &r, &keys(), NOW)), 401);
        for (h, v, reason) in [
            (SIGNATURE_HEADER, "sha256=zz", "malformed signature"),
            (SIGNATURE_HEADER, "md5=00", "malformed signature"),
            (TIMESTAMP_HEADER, "+1795000000", "bad timestamp"),
            (TIMESTAMP_HEADER, "abc", "bad timestamp"),
        ] {
            let mut r = req(BODY, NOW, KEY);
            r.headers.insert(h.into(), v.into());
            assert_eq!(
                verify(&p, &r, &keys(), NOW).unwrap_err().reason,
                reason,
                "{h}: {v}"
            );
        }
        for h in [SIGNATURE_HEADER, TIMESTAMP_HEADER] {
            let mut r = req(BODY, NOW, KEY);
            r.headers.remove(h);
            assert_eq!(status(verify(&p, &r, &keys(), NOW)), 401);
        }
    }

    #[test]
    fn given_wrong_method_path_type_or_size_when_verified_then_4xx() {
        let p = WebhookPolicy {
            path: "/".into(),
            max_body_bytes: 100,
        };
        let mut r = req(BODY, NOW, KEY);
        r.method = "GET".into();
        assert_eq!(status(verify(&p, &r, &keys(), NOW)), 405);
        let mut r = req(BODY, NOW, KEY);
        r.path = "/admin".into();
        assert_eq!(status(verify(&p, &r, &keys(), NOW)), 404);
        for ct in [
            "text/plain",
            "application/json; charset=latin1",
            "application/jsonx",
        ] {
            let mut r = req(BODY, NOW, KEY);
            r.headers.insert("content-type".into(), ct.into());
            assert_eq!(status(verify(&p, &r, &keys(), NOW)), 415, "{ct}");
        }
        assert_eq!(status(verify(&p, &req(BODY, NOW, KEY), &keys(), NOW)), 413);
        assert_eq!(
            status(verify(
                &WebhookPolicy::default(),
                &req(BODY, NOW, KEY),
                &[],
                NOW
            )),
            500
        );
    }

    #[test]
    fn given_signed_but_off_contract_body_when_verified_then_400() {
        let p = WebhookPolicy::default();
        let extra = BODY.replace("\"value\"", "\"admin\":true,\"value\"");
        let dup = BODY.replace("\"version\":3", "\"version\":3,\"version\":4");
        let other_event = BODY.replace("document.approved", "document.deleted");
        let bad_attr = BODY.replace("9001_2", "9002_2");
        let bad_node = BODY.replace("4711", "-1");
        let bad_date = BODY.replace("2026-11-18T10:15:00Z", "yesterday");
        for b in [extra, dup, other_event, bad_attr, bad_node, bad_date] {
            let e = verify(&p, &req(&b, NOW, KEY), &keys(), NOW).unwrap_err();
            assert_eq!(e.status, 400, "{b}: {e}");
        }
    }

    #[test]
    fn given_function_url_event_when_converted_then_base64_body_decoded_and_headers_lowercased() {
        let sig = sign(KEY.as_bytes(), NOW, BODY.as_bytes());
        let ev: FunctionUrlEvent = serde_json::from_value(serde_json::json!({
            "version": "2.0", "rawPath": "/", "rawQueryString": "",
            "headers": {"Content-Type": "application/json", "X-Xecm-Timestamp": NOW.to_string(), "X-Xecm-Signature": sig},
            "requestContext": {"http": {"method": "POST", "path": "/"}},
            "body": base64::engine::general_purpose::STANDARD.encode(BODY), "isBase64Encoded": true
        }))
        .unwrap();
        let r = WebhookRequest::from_function_url(ev.clone(), &WebhookPolicy::default()).unwrap();
        assert_eq!(
            status(verify(&WebhookPolicy::default(), &r, &keys(), NOW)),
            200
        );
        let tiny = WebhookPolicy {
            path: "/".into(),
            max_body_bytes: 10,
        };
        assert_eq!(
            WebhookRequest::from_function_url(ev, &tiny)
                .unwrap_err()
                .status,
            413
        );
    }

    #[test]
    fn given_rejection_when_rendered_then_short_json_reason_without_detail() {
        let e = Rejection::new(401, "bad signature").with("secret detail");
        assert_eq!(e.body(), r#"{"error":"bad signature"}"#);
        assert!(!e.is_retryable());
    }
}
