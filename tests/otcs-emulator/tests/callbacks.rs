//! Approval callbacks reach a local receiver, signed, and are retried.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use common::{id_of, spawn_with};
use hmac::{KeyInit, Mac};
use otcs_emulator::{CallbackConfig, EmulatorConfig};
use reqwest::Method;
use serde_json::{Value, json};

const KEY: &str = "test-callback-key";

#[derive(Default)]
struct Received {
    attempts: usize,
    accepted: Vec<Value>,
}

/// A receiver that refuses the first attempt with 500 and checks the HMAC
/// on every later one, the way ecm-export's Function URL will.
async fn receiver() -> (String, Arc<Mutex<Received>>, tokio::task::JoinHandle<()>) {
    let got = Arc::new(Mutex::new(Received::default()));
    let shared = got.clone();
    let app = Router::new().route(
        "/hook",
        post(move |headers: HeaderMap, body: String| {
            let got = shared.clone();
            async move {
                let mut g = got.lock().expect("lock");
                g.attempts += 1;
                if g.attempts == 1 {
                    return StatusCode::INTERNAL_SERVER_ERROR;
                }
                let ts = headers
                    .get("x-xecm-timestamp")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                let sig = headers
                    .get("x-xecm-signature")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                let mut mac =
                    hmac::Hmac::<sha2::Sha256>::new_from_slice(KEY.as_bytes()).expect("key");
                mac.update(format!("{ts}.{body}").as_bytes());
                let want = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
                if sig != want {
                    return StatusCode::UNAUTHORIZED;
                }
                g.accepted
                    .push(serde_json::from_str(&body).expect("json body"));
                StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, got, task)
}

#[tokio::test]
async fn approval_sends_one_signed_callback_after_a_retry() {
    let (url, got, task) = receiver().await;
    let mut cb = CallbackConfig::new(url, KEY);
    cb.initial_backoff = Duration::from_millis(50);
    let app = spawn_with(EmulatorConfig {
        callback: Some(cb),
        ..EmulatorConfig::default()
    })
    .await;
    let (_, v) = app
        .upload(
            2000,
            "approve me.pdf",
            b"v1".to_vec(),
            json!({"roles": {"categories": {"9001": {"9001_2": "Draft"}}}}),
        )
        .await;
    let id = id_of(&v);
    let put = |value: &'static str| {
        let path = format!("/v2/nodes/{id}/categories/9001");
        let app = &app;
        async move {
            app.send_form(
                Method::PUT,
                &path,
                &[("category_id", "9001"), ("9001_2", value)],
            )
            .await
        }
    };
    let (s, _) = put("In Review").await;
    assert_eq!(s, 200);
    let (s, _) = put("Approved").await;
    assert_eq!(s, 200);
    // Setting Approved again is not a new approval.
    let (s, _) = put("Approved").await;
    assert_eq!(s, 200);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if !got.lock().expect("lock").accepted.is_empty() || tokio::time::Instant::now() > deadline
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let g = got.lock().expect("lock");
    assert_eq!(g.accepted.len(), 1, "exactly one approval delivered");
    assert_eq!(g.attempts, 2, "first attempt refused, second accepted");
    let body = &g.accepted[0];
    assert_eq!(body["event"], json!("document.approved"));
    assert_eq!(body["node_id"], json!(id));
    assert_eq!(body["version"], json!(1));
    assert_eq!(body["category_id"], json!(9001));
    assert_eq!(body["attribute"], json!("9001_2"));
    assert_eq!(body["value"], json!("Approved"));
    assert!(body["event_id"].as_str().is_some_and(|s| !s.is_empty()));
    assert!(
        chrono::DateTime::parse_from_rfc3339(body["approved_at"].as_str().unwrap_or("")).is_ok()
    );
    task.abort();
}

#[tokio::test]
async fn a_callback_refused_with_a_client_error_is_not_retried() {
    let attempts = Arc::new(Mutex::new(0usize));
    let counter = attempts.clone();
    let app = Router::new().route(
        "/hook",
        post(move || {
            let counter = counter.clone();
            async move {
                *counter.lock().expect("lock") += 1;
                StatusCode::UNPROCESSABLE_ENTITY
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let mut cb = CallbackConfig::new(url, KEY);
    cb.initial_backoff = Duration::from_millis(20);
    let emulator = spawn_with(EmulatorConfig {
        callback: Some(cb),
        ..EmulatorConfig::default()
    })
    .await;
    let (_, v) = emulator
        .upload(
            2000,
            "refused.pdf",
            b"v1".to_vec(),
            json!({"roles": {"categories": {"9001": {"9001_2": "Draft"}}}}),
        )
        .await;
    let id = id_of(&v);
    let (s, _) = emulator
        .send_form(
            Method::PUT,
            &format!("/v2/nodes/{id}/categories/9001"),
            &[("category_id", "9001"), ("9001_2", "Approved")],
        )
        .await;
    assert_eq!(s, 200);
    // With 20 ms initial backoff, retries (if any) would all land well
    // within this wait.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while *attempts.lock().expect("lock") == 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        *attempts.lock().expect("lock"),
        1,
        "a 422 must not be retried"
    );
    task.abort();
}
