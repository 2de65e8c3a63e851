//! What the export tests do as Content Server's users and its event handler
//! would: log in to the emulator as the administrator, upload documents, and
//! send signed approval callbacks to the `ecm-export` Function URL.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use xecm_core::domain::webhook::sign;

use crate::stack::{ECM_PASSWORD, ECM_USER, WEBHOOK_HMAC_KEY};

/// The emulator administrator's ticket (`POST /api/v1/auth`), for tests that
/// upload, approve or inspect documents as a user would.
pub async fn admin_ticket(http: &reqwest::Client, emulator_base: &str) -> String {
    let v: Value = http
        .post(format!("{emulator_base}/cs/cs/api/v1/auth"))
        .form(&[("username", ECM_USER), ("password", ECM_PASSWORD)])
        .send()
        .await
        .expect("auth request")
        .json()
        .await
        .expect("auth answer is JSON");
    v["ticket"]
        .as_str()
        .unwrap_or_else(|| panic!("no ticket in {v}"))
        .to_owned()
}

/// Uploads `body` as a new document `name` into `parent` with `doc_control`
/// as the values of its Document Control category (9001, e.g.
/// `{"9001_2": "Approved"}`), as a user would; returns its id.
pub async fn upload_document(
    http: &reqwest::Client,
    emulator_base: &str,
    ticket: &str,
    parent: i64,
    name: &str,
    doc_control: Value,
    body: &[u8],
) -> i64 {
    let meta = json!({"type": 144, "parent_id": parent, "name": name,
        "roles": {"categories": {"9001": doc_control}}});
    let form = reqwest::multipart::Form::new()
        .text("body", meta.to_string())
        .part(
            "file",
            reqwest::multipart::Part::bytes(body.to_vec()).file_name(name.to_owned()),
        );
    let v: Value = http
        .post(format!("{emulator_base}/cs/cs/api/v2/nodes"))
        .header("OTCSTicket", ticket)
        .multipart(form)
        .send()
        .await
        .expect("upload request")
        .json()
        .await
        .expect("upload answer is JSON");
    v["results"]["data"]["properties"]["id"]
        .as_i64()
        .unwrap_or_else(|| panic!("no id in {v}"))
}

/// The body of a `document.approved` callback for `version` of `node`.
pub fn approval_body(event_id: &str, node: i64, version: u32) -> String {
    json!({"event": "document.approved", "event_id": event_id, "node_id": node,
        "version": version, "category_id": 9001, "attribute": "9001_2", "value": "Approved",
        "approved_at": "2026-11-27T10:00:00Z"})
    .to_string()
}

/// Now, in Unix seconds (the callbacks' `x-xecm-timestamp`).
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A webhook request to `url`, signed with `key` for timestamp `ts`.
pub fn signed_post(
    http: &reqwest::Client,
    url: &str,
    body: &str,
    key: &str,
    ts: i64,
    content_type: &str,
) -> reqwest::RequestBuilder {
    http.post(url)
        .header("content-type", content_type)
        .header("x-xecm-timestamp", ts.to_string())
        .header(
            "x-xecm-signature",
            sign(key.as_bytes(), ts, body.as_bytes()),
        )
        .body(body.to_owned())
}

/// Sends `body` as the local stack's emulator would (JSON, signed with the
/// local webhook key, now) and answers (HTTP status, the answer's `status`,
/// `kind` or `error`, `?` without one). `Err` when the connection failed or
/// `timeout` passed (a Lambda instance killed mid-request).
pub async fn send_callback(
    http: &reqwest::Client,
    url: &str,
    body: &str,
    timeout: Option<Duration>,
) -> reqwest::Result<(u16, String)> {
    let mut req = signed_post(
        http,
        url,
        body,
        WEBHOOK_HMAC_KEY,
        unix_now(),
        "application/json",
    );
    if let Some(t) = timeout {
        req = req.timeout(t);
    }
    let r = req.send().await?;
    let status = r.status().as_u16();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    let what = v["status"]
        .as_str()
        .or(v["kind"].as_str())
        .or(v["error"].as_str())
        .unwrap_or("?")
        .to_owned();
    Ok((status, what))
}
