//! Crash matrix with the real `ecm-export` binary: a debug build honours
//! `XECM_EXPORT_FAULT=<step>` by aborting the process at that step (a crash:
//! no clean-up, no answer; release builds ignore the variable). For each
//! step a fresh document is approved, the crashing instance takes its
//! callback and dies, then the caller retries against a healthy instance —
//! first while the dead instance's lease still holds ("in progress"), then
//! once it has expired. Every row must end with one copy at the partner,
//! one history record (a further callback is a duplicate) and one
//! `Document Exported` event. The matrix is printed.

use std::time::Duration;

use serde_json::{Value, json};
use xecm_stack::ecm_user::{admin_ticket, approval_body, send_callback, upload_document};
use xecm_stack::lambda::{LambdaHarness, function_binary};
use xecm_stack::stack::{LocalStack, SFTP_SECRET_ID, StackOptions};

fn routes(overwrite: bool) -> Value {
    json!({
        "export_history": {"category_id": 9003, "attributes": {"version": 2, "exported_at": 3, "destination": 4, "sha256": 5, "deliveries": 6}},
        "routes": [{
            "name": "price-lists",
            "approval": {"category_id": 9001, "attribute": "9001_2", "value": "Approved", "ancestor_id": 3101},
            "destinations": [{"name": "dist", "sftp_secret": SFTP_SECRET_ID, "directory": "outbound",
                              "file_name": "{stem}_v{version}.{ext}", "overwrite": overwrite, "sha256_sidecar": true}]
        }]
    })
}

struct Setup {
    stack: LocalStack,
    http: reqwest::Client,
    ticket: String,
}

impl Setup {
    async fn start() -> Setup {
        let stack = LocalStack::start_with(StackOptions::default())
            .await
            .expect("stack");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .expect("client");
        let ticket = admin_ticket(&http, &stack.emulator.base_url()).await;
        Setup {
            stack,
            http,
            ticket,
        }
    }

    fn harness(&self, overwrite: bool, fault: Option<&str>) -> LambdaHarness {
        let mut env = self.stack.env().to_vec();
        env.push(("XECM_EXPORT_ROUTES".into(), routes(overwrite).to_string()));
        if let Some(f) = fault {
            env.push(("XECM_EXPORT_FAULT".into(), f.into()));
        }
        LambdaHarness::start(&function_binary("ecm-export").expect("binary"), &env)
            .expect("harness")
    }

    async fn upload(&self, name: &str, body: &[u8]) -> i64 {
        let base = self.stack.emulator.base_url();
        let approved = json!({"9001_2": "Approved"});
        upload_document(&self.http, &base, &self.ticket, 3101, name, approved, body).await
    }

    /// (HTTP status or 0 when the connection died, `status`/`kind`).
    async fn callback(&self, h: &LambdaHarness, node: i64) -> (u16, String) {
        self.callback_within(h, node, Duration::from_secs(60)).await
    }

    async fn callback_within(
        &self,
        h: &LambdaHarness,
        node: i64,
        timeout: Duration,
    ) -> (u16, String) {
        let body = approval_body(&format!("evt-{node}"), node, 1);
        match send_callback(&self.http, &h.function_url(), &body, Some(timeout)).await {
            Ok(answer) => answer,
            Err(e) => (0, if e.is_timeout() { "timeout" } else { "gone" }.into()),
        }
    }

    fn outbound(&self) -> std::path::PathBuf {
        self.stack.sshd.data_root().join("outbound")
    }

    /// Rewrites every lease file as expired (the dead holder's time ran out).
    fn expire_leases(&self) -> usize {
        let mut n = 0;
        for e in std::fs::read_dir(self.outbound())
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(".xecm-lease-") {
                let mut v: Value = serde_json::from_slice(&std::fs::read(e.path()).expect("lease"))
                    .expect("lease JSON");
                v["expires_at"] = json!("2000-01-01T00:00:00Z");
                std::fs::write(e.path(), v.to_string()).expect("rewrite lease");
                n += 1;
            }
        }
        n
    }

    async fn exported(&self) -> Vec<Value> {
        self.stack
            .received_events(10_000, Duration::from_secs(4))
            .await
            .expect("events")
            .into_iter()
            .filter(|e| e["detail-type"] == "Document Exported")
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_at_every_step_then_retry_delivers_exactly_once_with_the_real_binary() {
    let s = Setup::start().await;
    let points = [
        "leased",
        "mid-upload",
        "after-upload",
        "after-rename",
        "before-event",
        "before-history",
    ];
    let mut rows = vec![format!(
        "{:<15} {:<10} {:<14} {:<22} {:<7} {:<14} {:<6} {:<7} {:<6}",
        "crash at",
        "route",
        "crashed call",
        "retry, lease held",
        "leases",
        "retry",
        "again",
        "copies",
        "events"
    )];
    let mut healthy = [None, None];
    let mut all_events = Vec::new();
    for overwrite in [false, true] {
        for point in points {
            let name = format!("crash-{point}-{}.bin", if overwrite { "ow" } else { "nr" });
            let body: Vec<u8> = (0..512 * 1024u32).map(|i| (i % 251) as u8).collect();
            let id = s.upload(&name, &body).await;
            let crashed = {
                let dying = s.harness(overwrite, Some(point));
                // The process aborts; its request is never answered.
                s.callback_within(&dying, id, Duration::from_secs(8)).await
            };
            let h =
                healthy[usize::from(overwrite)].get_or_insert_with(|| s.harness(overwrite, None));
            let held = s.callback(h, id).await;
            let leases = s.expire_leases();
            let retry = s.callback(h, id).await;
            let again = s.callback(h, id).await;
            let stem = name.trim_end_matches(".bin");
            let copies: Vec<String> = std::fs::read_dir(s.outbound())
                .expect("outbound")
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(stem) && !n.ends_with(".sha256"))
                .collect();
            let events = s.exported().await;
            let mine = events
                .iter()
                .filter(|e| e["detail"]["node_id"] == json!(id))
                .count();
            all_events.extend(events);
            rows.push(format!(
                "{:<15} {:<10} {:<14} {:<22} {:<7} {:<14} {:<6} {:<7} {:<6}",
                point,
                if overwrite { "overwrite" } else { "no-replace" },
                format!("{} {}", crashed.0, crashed.1),
                format!("{} {}", held.0, held.1),
                leases,
                format!("{} {}", retry.0, retry.1),
                again.1,
                copies.len(),
                mine
            ));
            assert!(
                crashed.0 / 100 != 2,
                "{point}: the crash did not happen: {crashed:?}"
            );
            assert_eq!(retry.0, 200, "{point}: {retry:?}");
            assert_eq!(again, (200, "duplicate".to_owned()), "{point}");
            assert_eq!(copies, vec![format!("{stem}_v1.bin")], "{point}");
            let file = std::fs::read(s.outbound().join(&copies[0])).expect("copy");
            assert!(file == body, "{point}: the copy differs");
            assert_eq!(mine, 1, "{point}: {mine} Document Exported events");
        }
    }
    println!("{}", rows.join("\n"));
    // Nothing partial under a final name, no lease left behind.
    let hidden: Vec<String> = std::fs::read_dir(s.outbound())
        .expect("outbound")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    println!("dot-files left in outbound/ (temporary uploads of crashed runs): {hidden:?}");
    assert!(
        hidden.iter().all(|n| !n.starts_with(".xecm-lease-")),
        "{hidden:?}"
    );
}

/// Packages: the process aborted while the package is half built, and when
/// it is complete under its temporary name; the rerun publishes it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn package_crash_mid_build_or_before_the_final_rename_publishes_once() {
    let s = Setup::start().await;
    let mut rows = vec![format!(
        "{:<22} {:<5} {:<16} {:<9} {:<8} {}",
        "crash at", "kind", "crashed run", "rerun", "visible", "dot-names left"
    )];
    let healthy = s.harness(false, None);
    for point in ["package-mid-build", "package-before-rename"] {
        for format in ["dir", "zip"] {
            let folder_name = format!("kit-{point}-{format}");
            let v: Value = s
                .http
                .post(format!(
                    "{}/cs/cs/api/v2/nodes",
                    s.stack.emulator.base_url()
                ))
                .header("OTCSTicket", &s.ticket)
                .form(&[(
                    "body",
                    json!({"type": 0, "parent_id": 3101, "name": folder_name}).to_string(),
                )])
                .send()
                .await
                .expect("folder")
                .json()
                .await
                .expect("json");
            let kit = v["results"]["data"]["properties"]["id"]
                .as_i64()
                .expect("folder id");
            for n in ["one", "two"] {
                let meta = json!({"type": 144, "parent_id": kit, "name": format!("{n}.txt"),
                    "roles": {"categories": {"9001": {"9001_2": "Approved"}}}});
                let form = reqwest::multipart::Form::new()
                    .text("body", meta.to_string())
                    .part(
                        "file",
                        reqwest::multipart::Part::bytes(n.as_bytes().to_vec())
                            .file_name(format!("{n}.txt")),
                    );
                let r = s
                    .http
                    .post(format!(
                        "{}/cs/cs/api/v2/nodes",
                        s.stack.emulator.base_url()
                    ))
                    .header("OTCSTicket", &s.ticket)
                    .multipart(form)
                    .send()
                    .await
                    .expect("upload");
                assert!(r.status().is_success());
            }
            let package = format!("P-{point}-{format}");
            let event = json!({"action": "export-package", "node_id": kit, "route": "price-lists",
                               "package_name": package, "format": format});
            let crashed = {
                let dying = s.harness(false, Some(point));
                match tokio::time::timeout(Duration::from_secs(8), dying.invoke(&event)).await {
                    Ok(Ok(Ok(v))) => format!("answered {}", v["status"]),
                    Ok(Ok(Err(e))) => format!("error {}", e["errorType"].as_str().unwrap_or("?")),
                    Ok(Err(_)) => "gone".to_owned(),
                    Err(_) => "no answer".to_owned(),
                }
            };
            assert!(
                !crashed.starts_with("answered"),
                "{point}: no crash: {crashed}"
            );
            let final_name = if format == "zip" {
                format!("{package}.zip")
            } else {
                package.clone()
            };
            let names = || -> Vec<String> {
                std::fs::read_dir(s.outbound())
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            };
            assert!(
                !names().contains(&final_name),
                "{point} {format}: visible after the crash"
            );
            let r = healthy
                .invoke(&event)
                .await
                .expect("invoke")
                .expect("rerun packaged");
            assert_eq!(r["status"], "packaged", "{r}");
            assert_eq!(r["package"]["files"], 2, "{r}");
            let visible = names().iter().filter(|n| **n == final_name).count();
            assert_eq!(visible, 1);
            // A permanent failure is answered as handled (so Lambda does
            // not retry it): `status: failed` with its error type.
            let again = healthy.invoke(&event).await.expect("invoke");
            let refused = match &again {
                Err(e) => e["errorType"] == "Permanent.TargetExists",
                Ok(v) => v["status"] == "failed" && v["errorType"] == "Permanent.TargetExists",
            };
            assert!(refused, "a second run must not publish again: {again:?}");
            let left: Vec<String> = names()
                .into_iter()
                .filter(|n| n.starts_with('.') && n.contains(&package))
                .collect();
            // What the crash left is only ever under a dot-name (the
            // package's own name is checked above); counted for the table.
            rows.push(format!(
                "{:<22} {:<5} {:<16} {:<9} {:<8} {}",
                point,
                format,
                crashed,
                "packaged",
                visible,
                left.len()
            ));
        }
    }
    println!("{}", rows.join("\n"));
}
