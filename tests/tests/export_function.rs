//! The real `ecm-export` binary behind a Function URL (cargo-lambda's local
//! Runtime API), against the local stack: the emulator's own approval
//! callback reaches it and the file appears on sshd; hand-made requests
//! check every refusal of the webhook (bad signature, stale timestamp,
//! oversized body, unknown fields, wrong method/type) end to end.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use xecm_stack::ecm_user::{admin_ticket, approval_body, signed_post, unix_now, upload_document};
use xecm_stack::lambda::{LambdaHarness, function_binary};
use xecm_stack::stack::{LocalStack, SFTP_SECRET_ID, StackOptions, WEBHOOK_HMAC_KEY};

fn routes() -> Value {
    json!({
        "export_history": {"category_id": 9003, "attributes": {"version": 2, "exported_at": 3, "destination": 4, "sha256": 5, "deliveries": 6}},
        "routes": [{
            "name": "price-lists",
            "approval": {"category_id": 9001, "attribute": "9001_2", "value": "Approved", "ancestor_id": 3101},
            "destinations": [{"name": "dist", "sftp_secret": SFTP_SECRET_ID, "directory": "outbound",
                              "file_name": "{stem}_v{version}.{ext}", "sha256_sidecar": true}]
        }]
    })
}

/// Forwards TCP from a port known before the stack starts to the harness,
/// whose port is only known after: the emulator's callback URL is fixed at
/// its start, the harness needs the stack's environment.
struct Forwarder {
    port: u16,
    target: Arc<tokio::sync::OnceCell<u16>>,
    task: tokio::task::JoinHandle<()>,
}

impl Forwarder {
    async fn start() -> Forwarder {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let target: Arc<tokio::sync::OnceCell<u16>> = Arc::new(tokio::sync::OnceCell::new());
        let t = Arc::clone(&target);
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let Some(p) = t.get().copied() else {
                    continue; // not ready: drop the connection, the caller retries
                };
                tokio::spawn(async move {
                    if let Ok(mut out) = TcpStream::connect(("127.0.0.1", p)).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
            }
        });
        Forwarder { port, target, task }
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Setup {
    stack: LocalStack,
    harness: LambdaHarness,
    _fwd: Forwarder,
    http: reqwest::Client,
}

async fn setup() -> Setup {
    setup_with(true, None).await
}

/// `callbacks`: whether the emulator sends its own approval callbacks.
async fn setup_with(callbacks: bool, sftp_client: Option<String>) -> Setup {
    let fwd = Forwarder::start().await;
    let stack = LocalStack::start_with(StackOptions {
        callback_url: callbacks.then(|| format!("http://127.0.0.1:{}/lambda-url/_", fwd.port)),
        sftp_client,
        ..Default::default()
    })
    .await
    .expect("stack");
    let mut env = stack.env().to_vec();
    env.push(("XECM_EXPORT_ROUTES".into(), routes().to_string()));
    env.push(("RUST_LOG".into(), "info".into()));
    let harness = LambdaHarness::start(&function_binary("ecm-export").expect("binary"), &env)
        .expect("harness");
    let port: u16 = harness
        .base_url()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("harness port");
    let _ = fwd.target.set(port);
    Setup {
        stack,
        harness,
        _fwd: fwd,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("client"),
    }
}

impl Setup {
    fn ecm(&self, path: &str) -> String {
        format!("{}/cs/cs/api{path}", self.stack.emulator.base_url())
    }

    async fn ticket(&self) -> String {
        admin_ticket(&self.http, &self.stack.emulator.base_url()).await
    }

    /// Uploads a document with a Document Control status, as a user would.
    async fn upload(&self, ticket: &str, name: &str, status: &str, body: &[u8]) -> i64 {
        self.upload_to(ticket, 3101, name, status, body).await
    }

    async fn upload_to(
        &self,
        ticket: &str,
        parent: i64,
        name: &str,
        status: &str,
        body: &[u8],
    ) -> i64 {
        let base = self.stack.emulator.base_url();
        let values = json!({ "9001_2": status });
        upload_document(&self.http, &base, ticket, parent, name, values, body).await
    }

    async fn approve(&self, ticket: &str, id: i64) {
        let r = self
            .http
            .put(self.ecm(&format!("/v2/nodes/{id}/categories/9001")))
            .header("OTCSTicket", ticket)
            .form(&[("9001_2", "Approved")])
            .send()
            .await
            .expect("approve");
        assert!(r.status().is_success(), "approve: {}", r.status());
    }

    async fn post(&self, body: &str, ts: i64, key: &str, content_type: &str) -> (u16, Value) {
        let r = signed_post(
            &self.http,
            &self.harness.function_url(),
            body,
            key,
            ts,
            content_type,
        )
        .send()
        .await
        .expect("webhook request");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }
}

fn now() -> i64 {
    unix_now()
}

fn body_for(node: i64) -> String {
    approval_body(&format!("evt-manual-{node}"), node, 1)
}

async fn wait_for(path: &std::path::Path, timeout: Duration) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if path.exists() {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emulator_approval_callback_reaches_the_function_and_the_file_appears() {
    let s = setup().await;
    let t = s.ticket().await;
    let id = s
        .upload(&t, "Price list Q4.csv", "In Review", b"sku;price\n")
        .await;
    s.approve(&t, id).await;
    let file = s
        .stack
        .sshd
        .data_root()
        .join("outbound/Price list Q4_v1.csv");
    let took = wait_for(&file, Duration::from_secs(60)).await;
    assert!(took.is_some(), "file did not appear: {}", file.display());
    assert_eq!(std::fs::read(&file).expect("file"), b"sku;price\n");
    let events = s
        .stack
        .received_events(1, Duration::from_secs(15))
        .await
        .expect("events");
    assert!(
        events.iter().any(|e| e["detail-type"] == "Document Exported"
            && e["detail"]["node_id"] == json!(id)),
        "{events:?}"
    );
    // A hand-made duplicate of the callback, validly signed: acknowledged.
    let (status, v) = s
        .post(&body_for(id), now(), WEBHOOK_HMAC_KEY, "application/json")
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["status"], "duplicate", "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emulator_callback_for_an_approved_folder_delivers_a_package_once() {
    let s = setup().await;
    let t = s.ticket().await;
    let v: Value = s
        .http
        .post(s.ecm("/v2/nodes"))
        .header("OTCSTicket", &t)
        .form(&[(
            "body",
            json!({"type": 0, "parent_id": 3101, "name": "Launch kit"}).to_string(),
        )])
        .send()
        .await
        .expect("folder")
        .json()
        .await
        .expect("json");
    let kit = v["results"]["data"]["properties"]["id"]
        .as_i64()
        .unwrap_or_else(|| panic!("no id in {v}"));
    // One approved document (its own callback delivers it as a file too)
    // and one draft inside the folder.
    let doc = s
        .upload_to(&t, kit, "Datasheet.pdf", "Approved", b"%PDF-1.7 data")
        .await;
    s.upload_to(&t, kit, "Notes.txt", "Draft", b"draft").await;
    // The folder itself is approved: the emulator's callback names it.
    let r = s
        .http
        .post(s.ecm(&format!("/v2/nodes/{kit}/categories")))
        .header("OTCSTicket", &t)
        .form(&[("category_id", "9001"), ("9001_2", "Approved")])
        .send()
        .await
        .expect("approve folder");
    assert!(r.status().is_success(), "approve folder: {}", r.status());

    let outbound = s.stack.sshd.data_root().join("outbound");
    let t0 = Instant::now();
    let package = loop {
        let found = std::fs::read_dir(&outbound).ok().and_then(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .find(|n| n.starts_with("Launch kit-evt-"))
        });
        if let Some(p) = found {
            break outbound.join(p);
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no package appeared in {}",
            outbound.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        std::fs::read(package.join("Datasheet.pdf")).expect("packaged document"),
        b"%PDF-1.7 data"
    );
    assert!(!package.join("Notes.txt").exists(), "draft packaged");
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(package.join("manifest.json")).expect("manifest"))
            .expect("manifest JSON");
    assert_eq!(manifest["root_node_id"], json!(kit), "{manifest}");
    let entries = manifest["entries"].as_array().expect("entries");
    assert_eq!(entries.len(), 1, "{manifest}");
    assert_eq!(entries[0]["node_id"], json!(doc), "{manifest}");

    // The same callback again, validly signed by hand: acknowledged, and
    // still exactly one package.
    let event_id = package
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("Launch kit-"))
        .expect("event id in the package name")
        .to_owned();
    let body = json!({"event": "document.approved", "event_id": event_id, "node_id": kit,
           "version": 0, "category_id": 9001, "attribute": "9001_2", "value": "Approved",
           "approved_at": "2026-11-27T10:00:00Z"})
    .to_string();
    let (status, v) = s
        .post(&body, now(), WEBHOOK_HMAC_KEY, "application/json")
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["status"], "duplicate", "{v}");
    let packages = std::fs::read_dir(&outbound)
        .expect("outbound")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("Launch kit"))
        .count();
    assert_eq!(packages, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_refuses_bad_requests_before_any_delivery() {
    let s = setup().await;
    let t = s.ticket().await;
    // A draft: no emulator callback, and a validly signed claim of approval
    // must still be refused after the re-read.
    let id = s.upload(&t, "Refusals.csv", "Draft", b"x").await;
    let body = body_for(id);
    let json_ct = "application/json";

    let (st, v) = s.post(&body, now(), "wrong-key", json_ct).await;
    assert_eq!((st, v["error"].as_str()), (401, Some("bad signature")));

    let (st, v) = s.post(&body, now() - 3600, WEBHOOK_HMAC_KEY, json_ct).await;
    assert_eq!((st, v["error"].as_str()), (401, Some("stale timestamp")));

    let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(64 * 1024));
    let (st, _) = s.post(&big, now(), WEBHOOK_HMAC_KEY, json_ct).await;
    assert_eq!(st, 413);

    let extra = body.replacen('{', "{\"admin\":true,", 1);
    let (st, v) = s.post(&extra, now(), WEBHOOK_HMAC_KEY, json_ct).await;
    assert_eq!(
        (st, v["error"].as_str()),
        (400, Some("invalid callback body"))
    );

    let (st, _) = s.post(&body, now(), WEBHOOK_HMAC_KEY, "text/plain").await;
    assert_eq!(st, 415);

    let r = s
        .http
        .get(s.harness.function_url())
        .send()
        .await
        .expect("get");
    assert_eq!(r.status().as_u16(), 405);

    // Validly signed, but the node is a draft: refused, nothing written.
    let (st, v) = s.post(&body, now(), WEBHOOK_HMAC_KEY, json_ct).await;
    assert_eq!(st, 422, "{v}");
    let out = s.stack.sshd.data_root().join("outbound");
    assert!(!out.join("Refusals_v1.csv").exists());
}

/// Callback → file visible latency for a 100 KiB document, through the real
/// binary: `cargo test -p xecm-stack --test export_function -- --ignored --nocapture`
/// (`XECM_BENCH_N` callbacks, default 50; `XECM_BENCH_SFTP_CLIENT=russh` for
/// the russh client; `XECM_BENCH_VERBOSE=1` prints every latency in order).
/// It uses the `ecm-export` binary already built in the release profile, so
/// build that first. The file is watched (every millisecond) while the
/// callback is in flight: it is visible once renamed into place, before the
/// function writes the export history and publishes its event, which the
/// webhook's response waits for and which is reported beside it. The first
/// callback of the process (cold: secrets, first SSH connection) is
/// reported on its own, not in the percentiles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark; run explicitly"]
async fn bench_callback_to_file_visible_100k() {
    // Only our own signed POSTs: the emulator's callback would race them.
    let s = setup_with(false, std::env::var("XECM_BENCH_SFTP_CLIENT").ok()).await;
    let t = s.ticket().await;
    let body = vec![b'p'; 100 * 1024];
    let n: usize = std::env::var("XECM_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let (mut visible, mut answered) = (Vec::with_capacity(n + 1), Vec::with_capacity(n + 1));
    for i in 0..=n {
        let name = format!("lat-{i}.bin");
        let id = s.upload(&t, &name, "Approved", &body).await;
        let file = s
            .stack
            .sshd
            .data_root()
            .join(format!("outbound/lat-{i}_v1.bin"));
        let callback = body_for(id);
        let start = Instant::now();
        let post = async {
            let r = s
                .post(&callback, now(), WEBHOOK_HMAC_KEY, "application/json")
                .await;
            (r, start.elapsed())
        };
        let watch = async {
            while !file.exists() {
                assert!(start.elapsed() < Duration::from_secs(30), "not visible");
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            start.elapsed()
        };
        let (((st, v), done), seen) = tokio::join!(post, watch);
        assert!(st == 200, "{st} {v}");
        visible.push(seen);
        answered.push(done);
    }
    let report = |what: &str, mut lat: Vec<Duration>| {
        let cold = lat.remove(0);
        lat.sort();
        let p = |q: f64| {
            lat[((lat.len() as f64 * q).ceil() as usize)
                .saturating_sub(1)
                .min(lat.len() - 1)]
        };
        println!(
            "callback -> {what}, 100 KiB: first (cold) {cold:?}; then n={n}: p50 {:?}, p99 {:?}, max {:?}",
            p(0.50),
            p(0.99),
            lat[lat.len() - 1]
        );
    };
    if std::env::var_os("XECM_BENCH_VERBOSE").is_some() {
        println!("file visible, in order: {visible:?}");
    }
    // Warm callbacks should reuse the first one's connection.
    println!(
        "SSH logins on the server during the run: {}",
        s.stack.sshd.log().matches("Accepted publickey").count()
    );
    report("file visible", visible);
    report("webhook answered (history and event written)", answered);
}
