//! Network faults under the real `ecm-export` binary: a TCP proxy in front of
//! sshd cuts the connection that carries the upload in the middle of the
//! transfer (once). Nothing partial may ever be visible under the final
//! name, the caller's retry must deliver, and exactly once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use xecm_stack::ecm_user::{admin_ticket, approval_body, send_callback};
use xecm_stack::lambda::{LambdaHarness, function_binary};
use xecm_stack::stack::{LocalStack, SFTP_SECRET_ID, StackOptions};

const FLAKY_SECRET: &str = "xecm/local/sftp-flaky";

/// Forwards to `upstream`; the first connection that sends more than
/// `cut_after` bytes upstream is closed there (both directions), once.
struct CuttingProxy {
    port: u16,
    cuts: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl CuttingProxy {
    async fn start(upstream: u16, cut_after: u64) -> CuttingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let armed = Arc::new(AtomicBool::new(true));
        let cuts = Arc::new(AtomicU64::new(0));
        let (a, c) = (Arc::clone(&armed), Arc::clone(&cuts));
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let (armed, cuts) = (Arc::clone(&a), Arc::clone(&c));
                tokio::spawn(async move {
                    let Ok(out) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                        return;
                    };
                    let (mut ci, mut co) = inbound.into_split();
                    let (mut si, mut so) = out.into_split();
                    let up = async {
                        let mut buf = vec![0u8; 64 * 1024];
                        let mut sent = 0u64;
                        loop {
                            let n = match ci.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            sent += n as u64;
                            if sent > cut_after && armed.swap(false, Ordering::SeqCst) {
                                cuts.fetch_add(1, Ordering::SeqCst);
                                break;
                            }
                            if so.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    };
                    let down = async {
                        let _ = tokio::io::copy(&mut si, &mut co).await;
                    };
                    // Whichever side ends first ends the connection.
                    tokio::select! {
                        () = up => {}
                        () = down => {}
                    }
                });
            }
        });
        CuttingProxy { port, cuts, task }
    }
}

impl Drop for CuttingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sftp_connection_cut_mid_transfer_leaves_nothing_visible_and_the_retry_delivers_once() {
    let stack = LocalStack::start_with(StackOptions::default())
        .await
        .expect("stack");
    // A second SFTP secret naming the proxy instead of sshd.
    let sm = aws_sdk_secretsmanager::Client::new(&stack.sdk_config().await);
    let raw = sm
        .get_secret_value()
        .secret_id(SFTP_SECRET_ID)
        .send()
        .await
        .expect("sftp secret");
    let mut secret: Value =
        serde_json::from_str(raw.secret_string().expect("string")).expect("secret JSON");
    let sshd_port = secret["port"].as_u64().expect("port") as u16;
    let proxy = CuttingProxy::start(sshd_port, 1024 * 1024).await;
    secret["port"] = json!(proxy.port);
    stack
        .moto
        .put_json_secret(FLAKY_SECRET, &secret)
        .await
        .expect("flaky secret");
    let routes = json!({
        "export_history": {"category_id": 9003, "attributes": {"version": 2, "exported_at": 3, "destination": 4, "sha256": 5, "deliveries": 6}},
        "routes": [{
            "name": "price-lists",
            "approval": {"category_id": 9001, "attribute": "9001_2", "value": "Approved", "ancestor_id": 3101},
            "destinations": [{"name": "dist", "sftp_secret": FLAKY_SECRET, "directory": "outbound",
                              "file_name": "{stem}_v{version}.{ext}", "sha256_sidecar": true}]
        }]
    });
    let mut env = stack.env().to_vec();
    env.push(("XECM_EXPORT_ROUTES".into(), routes.to_string()));
    let harness = LambdaHarness::start(&function_binary("ecm-export").expect("binary"), &env)
        .expect("harness");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .expect("client");
    let base = stack.emulator.base_url();
    let ticket = admin_ticket(&http, &base).await;
    let body: Vec<u8> = (0..6 * 1024 * 1024u32).map(|i| (i % 253) as u8).collect();
    let meta = json!({"type": 144, "parent_id": 3101, "name": "cut.bin",
        "roles": {"categories": {"9001": {"9001_2": "Approved"}}}});
    let form = reqwest::multipart::Form::new()
        .text("body", meta.to_string())
        .part(
            "file",
            reqwest::multipart::Part::bytes(body.clone()).file_name("cut.bin"),
        );
    let v: Value = http
        .post(format!("{base}/cs/cs/api/v2/nodes"))
        .header("OTCSTicket", &ticket)
        .multipart(form)
        .send()
        .await
        .expect("upload")
        .json()
        .await
        .expect("json");
    let id = v["results"]["data"]["properties"]["id"]
        .as_i64()
        .expect("id");
    let final_path = stack.sshd.data_root().join("outbound/cut_v1.bin");

    // Watch the final name while the callbacks run: it must never hold a
    // partial file.
    let watching = Arc::new(AtomicBool::new(true));
    let w = Arc::clone(&watching);
    let (fp, expected) = (final_path.clone(), body.len() as u64);
    let watcher = tokio::spawn(async move {
        let mut partial_seen = Vec::new();
        while w.load(Ordering::SeqCst) {
            if let Ok(m) = std::fs::metadata(&fp)
                && m.len() != expected
            {
                partial_seen.push(m.len());
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        partial_seen
    });

    let mut answers = Vec::new();
    let mut delivered = false;
    for _ in 0..40 {
        let cb = approval_body(&format!("evt-{id}"), id, 1);
        let (st, what) = send_callback(&http, &harness.function_url(), &cb, None)
            .await
            .expect("callback");
        answers.push(format!("{st} {what}"));
        if st == 200 {
            delivered = true;
            break;
        }
        assert_eq!(st, 503, "a cut connection must be retryable: {v}");
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    watching.store(false, Ordering::SeqCst);
    let partial_seen = watcher.await.expect("watcher");
    println!(
        "connections cut: {}; answers in order: {answers:?}",
        proxy.cuts.load(Ordering::SeqCst)
    );
    assert_eq!(proxy.cuts.load(Ordering::SeqCst), 1, "the proxy never cut");
    assert!(delivered, "{answers:?}");
    assert!(answers[0].starts_with("503"), "{answers:?}");
    assert!(
        partial_seen.is_empty(),
        "partial sizes seen: {partial_seen:?}"
    );
    assert_eq!(std::fs::read(&final_path).expect("delivered"), body);
    let events = stack
        .received_events(10_000, Duration::from_secs(4))
        .await
        .expect("events");
    let n = events
        .iter()
        .filter(|e| e["detail-type"] == "Document Exported" && e["detail"]["node_id"] == json!(id))
        .count();
    assert_eq!(n, 1, "{events:?}");
}
