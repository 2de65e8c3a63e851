//! Ordering of callbacks through the real `ecm-export` binary (cargo-lambda's
//! local Runtime API) against sshd, the emulator and moto: v1 and v2
//! callbacks in every order with retries in between, two overlapping
//! callbacks for one slow (large) version, a lost callback caught by the
//! sweep, a callback arriving after the sweep delivered. Each prints what it
//! saw; every assertion is about deliveries per version and destination.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};
use xecm_stack::ecm_user::{admin_ticket, approval_body, send_callback, upload_document};
use xecm_stack::lambda::{LambdaHarness, function_binary};
use xecm_stack::stack::{LocalStack, SFTP_SECRET_ID, StackOptions};

/// `{stem}_v{version}` on a route without overwrite, and `{stem}` on one
/// that overwrites (where an older version could replace a newer one).
fn routes() -> Value {
    json!({
        "export_history": {"category_id": 9003, "attributes": {"version": 2, "exported_at": 3, "destination": 4, "sha256": 5, "deliveries": 6}},
        "routes": [{
            "name": "price-lists",
            "approval": {"category_id": 9001, "attribute": "9001_2", "value": "Approved", "ancestor_id": 3101},
            "destinations": [
                {"name": "latest", "when": {"categories": {"9001_3": "Latest"}}, "sftp_secret": SFTP_SECRET_ID,
                 "directory": "latest", "file_name": "{stem}.{ext}", "overwrite": true, "sha256_sidecar": true},
                {"name": "dist", "sftp_secret": SFTP_SECRET_ID, "directory": "outbound",
                 "file_name": "{stem}_v{version}.{ext}", "sha256_sidecar": true}
            ]
        }]
    })
}

struct Setup {
    stack: LocalStack,
    harness: LambdaHarness,
    http: reqwest::Client,
    ticket: String,
}

async fn setup() -> Setup {
    // Only our own signed callbacks: the emulator's would race them.
    let stack = LocalStack::start_with(StackOptions::default())
        .await
        .expect("stack");
    let mut env = stack.env().to_vec();
    env.push(("XECM_EXPORT_ROUTES".into(), routes().to_string()));
    env.push(("RUST_LOG".into(), "info".into()));
    let harness = LambdaHarness::start(&function_binary("ecm-export").expect("binary"), &env)
        .expect("harness");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .expect("client");
    let mut s = Setup {
        stack,
        harness,
        http,
        ticket: String::new(),
    };
    s.ticket = admin_ticket(&s.http, &s.stack.emulator.base_url()).await;
    s
}

impl Setup {
    fn ecm(&self, path: &str) -> String {
        format!("{}/cs/cs/api{path}", self.stack.emulator.base_url())
    }

    async fn upload(&self, parent: i64, name: &str, doc_type: &str, body: &[u8]) -> i64 {
        let base = self.stack.emulator.base_url();
        let values = json!({"9001_2": "Approved", "9001_3": doc_type});
        upload_document(&self.http, &base, &self.ticket, parent, name, values, body).await
    }

    async fn add_version(&self, id: i64, body: &[u8]) {
        let form = reqwest::multipart::Form::new()
            .text("description", "v2")
            .part(
                "file",
                reqwest::multipart::Part::bytes(body.to_vec()).file_name("v2"),
            );
        let r = self
            .http
            .post(self.ecm(&format!("/v2/nodes/{id}/versions")))
            .header("OTCSTicket", &self.ticket)
            .multipart(form)
            .send()
            .await
            .expect("add version");
        assert!(r.status().is_success(), "add version: {}", r.status());
    }

    async fn folder(&self, name: &str) -> i64 {
        let v: Value = self
            .http
            .post(self.ecm("/v2/nodes"))
            .header("OTCSTicket", &self.ticket)
            .form(&[(
                "body",
                json!({"type": 0, "parent_id": 3101, "name": name}).to_string(),
            )])
            .send()
            .await
            .expect("folder")
            .json()
            .await
            .expect("json");
        v["results"]["data"]["properties"]["id"]
            .as_i64()
            .unwrap_or_else(|| panic!("no id in {v}"))
    }

    /// A signed callback for `version` of `node` with `event_id`: (HTTP
    /// status, the answer's `status` or `kind`).
    async fn callback(&self, node: i64, version: u32, event_id: &str) -> (u16, String) {
        self.callback_to(&self.harness, node, version, event_id)
            .await
    }

    /// The same, to the function behind `harness` (a second process stands
    /// for a second Lambda instance: one process takes one request at a
    /// time).
    async fn callback_to(
        &self,
        harness: &LambdaHarness,
        node: i64,
        version: u32,
        event_id: &str,
    ) -> (u16, String) {
        let body = approval_body(event_id, node, version);
        send_callback(&self.http, &harness.function_url(), &body, None)
            .await
            .expect("webhook request")
    }

    async fn fault(&self, body: Value) {
        let r = self
            .http
            .post(format!(
                "{}/__emulator/faults",
                self.stack.emulator.base_url()
            ))
            .json(&body)
            .send()
            .await
            .expect("fault control");
        assert!(r.status().is_success());
    }

    /// Every `Document Exported` event so far, as (node, version, path).
    async fn exported(&self) -> Vec<(i64, u64, String)> {
        let events = self
            .stack
            .received_events(10_000, Duration::from_secs(4))
            .await
            .expect("events");
        events
            .iter()
            .filter(|e| e["detail-type"] == "Document Exported")
            .map(|e| {
                (
                    e["detail"]["node_id"].as_i64().unwrap_or(0),
                    e["detail"]["version"].as_u64().unwrap_or(0),
                    e["detail"]["remote_path"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect()
    }

    fn file(&self, rel: &str) -> Option<Vec<u8>> {
        std::fs::read(self.stack.sshd.data_root().join(rel)).ok()
    }
}

/// Every order of two callbacks per version (the second one a retry),
/// on both destinations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_and_v2_callbacks_in_every_order_deliver_each_version_at_most_once_never_older_after_newer()
 {
    let s = setup().await;
    let orders: [[u32; 4]; 6] = [
        [1, 1, 2, 2],
        [1, 2, 1, 2],
        [1, 2, 2, 1],
        [2, 1, 1, 2],
        [2, 1, 2, 1],
        [2, 2, 1, 1],
    ];
    let mut rows = vec![format!(
        "{:<8} {:<9} {:<55} {:<9} {:<9} {}",
        "order", "dest", "answers", "v1 out", "v2 out", "at the partner"
    )];
    let mut expect = BTreeMap::new();
    for (i, order) in orders.iter().enumerate() {
        for doc_type in ["Latest", "Versioned"] {
            let name = format!("o{i}-{doc_type}.txt");
            let id = s
                .upload(3101, &name, doc_type, format!("v1 of {name}").as_bytes())
                .await;
            s.add_version(id, format!("v2 of {name}").as_bytes()).await;
            let mut answers = Vec::new();
            let mut seen = [0u32; 3];
            for v in order {
                seen[*v as usize] += 1;
                // The first callback of a version, then a retry of it
                // under a new event id (a replay of the same id is
                // answered from memory; this one reaches the history).
                let event_id = format!("evt-{id}-v{v}-{}", seen[*v as usize]);
                let (st, what) = s.callback(id, *v, &event_id).await;
                assert_eq!(st, 200, "{name}: v{v}: {what}");
                answers.push(format!("v{v}:{what}"));
            }
            // v1 goes out only if its first callback came before v2's.
            let v1_first = order.iter().position(|v| *v == 1) < order.iter().position(|v| *v == 2);
            expect.insert(id, (doc_type, v1_first, name.clone(), answers));
        }
    }
    let exported = s.exported().await;
    for (id, (doc_type, v1_first, name, answers)) in &expect {
        let count = |v: u64| exported.iter().filter(|e| e.0 == *id && e.1 == v).count();
        let (v1, v2) = (count(1), count(2));
        assert_eq!(v2, 1, "{name}: v2 delivered {v2} times ({answers:?})");
        assert_eq!(
            v1,
            usize::from(*v1_first),
            "{name}: v1 delivered {v1} times ({answers:?})"
        );
        let stem = name.trim_end_matches(".txt");
        let partner = if *doc_type == "Latest" {
            let there = s.file(&format!("latest/{stem}.txt")).unwrap_or_default();
            assert_eq!(
                String::from_utf8_lossy(&there),
                format!("v2 of {name}"),
                "{name}: an older version replaced the newer one"
            );
            format!("latest/{stem}.txt = v2")
        } else {
            let v1_there = s.file(&format!("outbound/{stem}_v1.txt")).is_some();
            let v2_there = s.file(&format!("outbound/{stem}_v2.txt")).is_some();
            assert!(v2_there, "{name}");
            assert_eq!(v1_there, *v1_first, "{name}");
            format!("v1 file: {v1_there}, v2 file: {v2_there}")
        };
        let order: String = answers
            .iter()
            .map(|a| a[1..2].to_owned())
            .collect::<Vec<_>>()
            .join("");
        rows.push(format!(
            "{:<8} {:<9} {:<55} {:<9} {:<9} {}",
            order,
            doc_type.to_lowercase(),
            answers.join(" "),
            v1,
            v2,
            partner
        ));
    }
    println!("{}", rows.join("\n"));
}

/// A caller retrying during a large transfer: the first callback's
/// download is slow (the emulator holds it), the second overlaps it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_overlapping_callbacks_for_one_large_version_transfer_once() {
    let s = setup().await;
    // A second instance of the function (Lambda runs overlapping requests
    // in separate instances).
    let mut env = s.stack.env().to_vec();
    env.push(("XECM_EXPORT_ROUTES".into(), routes().to_string()));
    let second_instance =
        LambdaHarness::start(&function_binary("ecm-export").expect("binary"), &env)
            .expect("second harness");
    let body = vec![b'L'; 8 * 1024 * 1024];
    let id = s.upload(3101, "large.bin", "Versioned", &body).await;
    s.fault(json!({"status": 0, "count": 1, "path_prefix": "/cs/cs/api",
                   "path_contains": format!("/nodes/{id}/versions/1/content"), "delay_ms": 3000}))
        .await;
    let first_id = format!("evt-{id}-a");
    let first = s.callback(id, 1, &first_id);
    let second = async {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        s.callback_to(&second_instance, id, 1, &format!("evt-{id}-b"))
            .await
    };
    let (a, b) = tokio::join!(first, second);
    println!("overlapping callbacks: first {a:?}, second {b:?}");
    assert_eq!(a, (200, "delivered".to_owned()), "{a:?}");
    // The first holds the lease for its whole (slow) download.
    assert_eq!(b, (503, "InProgress".to_owned()), "{b:?}");
    // The caller retries the refused one later: a duplicate.
    let c = s.callback(id, 1, &format!("evt-{id}-b")).await;
    assert_eq!(c, (200, "duplicate".to_owned()), "{c:?}");
    let exported = s.exported().await;
    let n = exported.iter().filter(|e| e.0 == id).count();
    println!("Document Exported events for the large version: {n}");
    assert_eq!(n, 1, "{exported:?}");
    assert_eq!(
        s.file("outbound/large_v1.bin").map(|b| b.len()),
        Some(body.len())
    );
    let leftovers: Vec<String> = std::fs::read_dir(s.stack.sshd.data_root().join("outbound"))
        .expect("outbound")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// A callback that never arrived is delivered by the sweep; the callback
/// arriving after that is a duplicate; a second sweep delivers nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_callback_is_caught_by_the_sweep_and_a_late_one_is_a_duplicate() {
    let s = setup().await;
    let folder = s.folder("Sweep").await;
    let called = s.upload(folder, "called.txt", "Versioned", b"called").await;
    let lost = s.upload(folder, "lost.txt", "Versioned", b"lost").await;
    assert_eq!(
        s.callback(called, 1, &format!("evt-{called}")).await,
        (200, "delivered".to_owned())
    );
    let sweep = json!({"action": "sweep", "route": "price-lists", "roots": [folder]});
    let r = s
        .harness
        .invoke(&sweep)
        .await
        .expect("invoke")
        .expect("sweep ok");
    println!("first sweep: {}", r["sweep"]);
    let caught: Vec<i64> = r["sweep"]["caught_up"]
        .as_array()
        .expect("caught_up")
        .iter()
        .filter_map(|d| d["node_id"].as_i64())
        .collect();
    assert_eq!(caught, vec![lost], "{r}");
    assert_eq!(r["sweep"]["already_delivered"], 1, "{r}");
    assert_eq!(
        s.file("outbound/lost_v1.txt").as_deref(),
        Some(&b"lost"[..])
    );
    // The lost callback arrives after all.
    let late = s.callback(lost, 1, &format!("evt-{lost}")).await;
    println!("callback after the sweep: {late:?}");
    assert_eq!(late, (200, "duplicate".to_owned()));
    let r = s
        .harness
        .invoke(&sweep)
        .await
        .expect("invoke")
        .expect("sweep ok");
    println!("second sweep: {}", r["sweep"]);
    assert_eq!(r["sweep"]["caught_up"], json!([]), "{r}");
    let exported = s.exported().await;
    for id in [called, lost] {
        assert_eq!(
            exported.iter().filter(|e| e.0 == id).count(),
            1,
            "{id}: {exported:?}"
        );
    }
}
