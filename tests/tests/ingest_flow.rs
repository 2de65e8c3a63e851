//! The ingest flow against the real parts: OpenSSH sshd (files written into
//! its chroot data root, claimed and archived over SFTP by the ssh2 adapter),
//! the Content Server emulator (through our reqwest client) and moto
//! (events published to EventBridge and read back from the capture queue).
//! One test runs the real `sftp-ingest` binary in local mode.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use xecm_core::adapters::sftp::SftpClient;
use xecm_core::domain::route::{IngestEvent, Route, parse_ingest_event};
use xecm_core::flows::ingest::{self, FileOutcome, RunContext, SystemClock};
use xecm_core::ports::ecm::{ChildFilter, Ecm, NodeId};

#[path = "common/ingest_env.rs"]
mod ingest_env;
use ingest_env::{Ahead, Env, pdf, route, sha_hex, simple_route, simple_route_json};

impl Env {
    /// A run past the lease of a crashed run's claim on `src/name`: it
    /// must finish the one existing document (same version, RM applied,
    /// SHA-256 recorded) and archive the file. Returns the transfer history.
    async fn rerun_after_lease_finishes(
        &self,
        r: &Route,
        invocation: &str,
        src: &str,
        name: &str,
        body: &[u8],
    ) -> serde_json::Map<String, Value> {
        let ctx = RunContext::new(invocation, Duration::from_secs(300));
        let rerun = self
            .run_with(r, &Ahead(chrono::Duration::seconds(1900)), &ctx)
            .await;
        let f = &rerun.files[0];
        assert_eq!(f.outcome, FileOutcome::AlreadyIngested, "{rerun:#?}");
        assert_eq!(self.children_named(540101, name).await, 1);
        let node = NodeId::new(f.node_id.unwrap_or(0)).expect("node");
        assert_eq!(self.ecm.versions(node).await.expect("versions").len(), 1);
        assert_eq!(
            self.ecm.rm_classifications(node).await.expect("rm"),
            vec![7004],
            "RM classification applied by the rerun"
        );
        let h = self.history(node.get()).await;
        assert_eq!(h["9002_6"], json!(sha_hex(body)));
        assert!(
            self.files_in(&format!("{src}/archive"))
                .iter()
                .any(|p| p.ends_with(name))
        );
        assert!(
            self.files_in(&format!("{src}/.inflight")).is_empty(),
            "no claim left"
        );
        h
    }

    async fn history(&self, node: i64) -> serde_json::Map<String, Value> {
        let cats = self
            .ecm
            .categories(NodeId::new(node).expect("id"))
            .await
            .expect("categories");
        let h = cats
            .into_iter()
            .find(|c| c.category_id == 9002)
            .expect("transfer history on the document");
        h.values.into_iter().collect()
    }

    async fn children_named(&self, folder: i64, name: &str) -> usize {
        let page = self
            .ecm
            .children(
                NodeId::new(folder).expect("id"),
                &ChildFilter::default(),
                1,
                500,
            )
            .await
            .expect("children");
        page.items.iter().filter(|n| n.name == name).count()
    }
}

fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_partner_drop_lands_where_the_rules_say() {
    mixed_partner_drop(SftpClient::Ssh2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_partner_drop_lands_where_the_rules_say_with_the_russh_client() {
    mixed_partner_drop(SftpClient::Russh).await;
}

async fn mixed_partner_drop(client: SftpClient) {
    let env = Env::start_with(client).await;
    let status = Command::new(workspace_root().join("tests/demo/drop.sh"))
        .arg(env.data_root())
        .env("XECM_ECM_URL", env.stack.emulator.base_url())
        .status()
        .expect("drop.sh");
    assert!(status.success());
    let text = std::fs::read_to_string(workspace_root().join("events/ingest-demo.json"))
        .expect("demo event");
    let IngestEvent::Scheduled(r) =
        parse_ingest_event(serde_json::from_str(&text).expect("json")).expect("route")
    else {
        panic!("demo event is not scheduled")
    };

    let rep = env.run(&r, "it-mixed").await;
    let by: std::collections::BTreeMap<&str, &ingest::FileReport> = rep
        .files
        .iter()
        .map(|f| (f.source_path.as_str(), f))
        .collect();
    let outcome = |p: &str| by.get(p).map(|f| f.outcome);

    assert_eq!(
        outcome("INV-004711_0000100001.pdf"),
        Some(FileOutcome::Created),
        "{rep:#?}"
    );
    assert_eq!(
        outcome("INV-004712_0000100003.pdf"),
        Some(FileOutcome::Created)
    );
    assert_eq!(
        outcome("4600000001_MSA_redline.docx"),
        Some(FileOutcome::VersionAdded),
        "{:?}",
        by.get("4600000001_MSA_redline.docx")
    );
    assert_eq!(by["4600000001_MSA_redline.docx"].version, Some(2));
    assert_eq!(outcome("QR-2026-Q3-audit.pdf"), Some(FileOutcome::Created));
    assert_eq!(outcome("QR-2026-Q4-audit.pdf"), Some(FileOutcome::Created));
    assert_eq!(outcome("TX_1000_20261126.csv"), Some(FileOutcome::Created));
    assert_eq!(
        outcome("notes-for-accounting.txt"),
        Some(FileOutcome::Failed)
    );
    assert_eq!(
        outcome("INV-004713_0000100001.pdf"),
        Some(FileOutcome::Failed)
    );
    assert_eq!(rep.counts.ingested, 6);
    assert_eq!(rep.counts.failed, 2);

    // The existing supplier workspace got the first invoice; a new one was
    // created for the unknown vendor.
    let inv = by["INV-004711_0000100001.pdf"];
    assert!(
        inv.ecm_path
            .as_deref()
            .unwrap_or("")
            .starts_with("node 5001/Invoices/"),
        "{inv:?}"
    );
    let new_ws = by["INV-004712_0000100003.pdf"];
    assert!(
        !new_ws
            .ecm_path
            .as_deref()
            .unwrap_or("")
            .starts_with("node 5001/")
    );
    // Index metadata reached the compliance category.
    let qr = by["QR-2026-Q3-audit.pdf"];
    assert!(
        qr.ecm_path
            .as_deref()
            .unwrap_or("")
            .starts_with("node 5301/Reports/2026-Q3/"),
        "{qr:?}"
    );
    let cats = env
        .ecm
        .categories(NodeId::new(qr.node_id.unwrap_or(0)).expect("id"))
        .await
        .expect("categories");
    let compliance = cats
        .iter()
        .find(|c| c.category_id == 9006)
        .expect("compliance category");
    assert_eq!(compliance.values["9006_3"], json!("2026-Q3"));
    // Transfer history carries the SHA-256 of the bytes on the SFTP server.
    let archived = env.files_in("inbound/partners/archive");
    let inv_file = archived
        .iter()
        .find(|p| p.ends_with("INV-004711_0000100001.pdf"))
        .expect("invoice archived");
    let bytes = std::fs::read(env.data_root().join(inv_file)).expect("archived bytes");
    let h = env.history(inv.node_id.unwrap_or(0)).await;
    assert_eq!(h["9002_6"], json!(sha_hex(&bytes)));
    assert!(h["9002_10"].as_str().unwrap_or("").starts_with("ik1-"));
    assert_eq!(h["9002_9"], json!("it-mixed"));
    // Intake is empty; the index was archived with its reports; failures have reasons.
    let left: Vec<String> = env
        .files_in("inbound/partners")
        .into_iter()
        .filter(|p| !p.contains("/archive/") && !p.contains("/failed/"))
        .collect();
    assert!(left.is_empty(), "left in intake: {left:?}");
    assert!(archived.iter().any(|p| p.ends_with("index-2026-11.csv")));
    let report: Value = serde_json::from_slice(
        &std::fs::read(
            env.data_root()
                .join("inbound/partners/failed/INV-004713_0000100001.pdf.error.json"),
        )
        .expect("error report"),
    )
    .expect("report json");
    assert!(
        report["reason"]
            .as_str()
            .unwrap_or("")
            .contains("promises pdf")
    );
    // Every transfer was published: 6 ingested + 2 failed.
    let evs = env
        .stack
        .received_events(8, Duration::from_secs(20))
        .await
        .expect("events");
    let types: Vec<&str> = evs
        .iter()
        .filter_map(|e| e["detail-type"].as_str())
        .collect();
    assert_eq!(
        types.iter().filter(|t| **t == "Transfer Ingested").count(),
        6,
        "{types:?}"
    );
    assert_eq!(types.iter().filter(|t| **t == "Transfer Failed").count(), 2);
}

/// A clock ahead of real time, to be past a claim's lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_upload_before_archive_then_rerun_makes_exactly_one_document() {
    // Over the small-file limit (256 KiB): the upload streams and the
    // document first carries the pending key.
    crash_and_rerun(1024 * 1024).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_upload_of_a_small_file_then_rerun_makes_exactly_one_document() {
    // Small: created with its final key; the crash hits RM and verification.
    crash_and_rerun(0).await;
}

async fn crash_and_rerun(padding: usize) {
    let env = Env::start().await;
    let r = simple_route(
        "crash",
        "inbound/crash",
        540101,
        json!({"min_age_secs": 1}),
        "fail",
    );
    let mut body = pdf("daily transactions 2026-11-26");
    body.extend(std::iter::repeat_n(b'%', padding));
    env.drop_file(
        b"inbound/crash/ledger-2026-11-26.pdf",
        &body,
        Duration::from_secs(60),
    );
    // The document is created, then every call on it fails: the state a
    // process killed right after the upload leaves (document with the
    // pending key, file still claimed, nothing archived).
    env.fault(json!({"status": 503, "count": 5, "path_prefix": "/cs/cs/api/v2/nodes/1"}))
        .await;
    let first = env.run(&r, "it-crash-1").await;
    assert_eq!(first.files[0].outcome, FileOutcome::Deferred, "{first:#?}");
    assert_eq!(env.children_named(540101, "ledger-2026-11-26.pdf").await, 1);
    assert!(
        env.files_in("inbound/crash/.inflight")
            .iter()
            .any(|p| p.ends_with("ledger-2026-11-26.pdf")),
        "claim kept"
    );

    // The 503s were an outage: the run released its claim (issue 15), so
    // the next run finishes the existing document (here after the lease,
    // as it would after a kill).
    let h = env
        .rerun_after_lease_finishes(
            &r,
            "it-crash-3",
            "inbound/crash",
            "ledger-2026-11-26.pdf",
            &body,
        )
        .await;
    assert!(h["9002_10"].as_str().unwrap_or("").starts_with("ik1-"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sftp_ingest_killed_after_the_upload_then_rerun_makes_exactly_one_document() {
    // Streamed upload: the document first carries the pending key.
    killed_and_rerun(1024 * 1024).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sftp_ingest_killed_after_a_small_upload_then_rerun_makes_exactly_one_document() {
    killed_and_rerun(0).await;
}

/// The real `sftp-ingest` process is SIGKILLed while the document exists
/// in the ECM but before RM classification, verification and archive (the
/// emulator holds the RM call); a later run finishes the same document.
async fn killed_and_rerun(padding: usize) {
    let binary = xecm_stack::lambda::function_binary("sftp-ingest").expect("binary built");
    let env = Env::start().await;
    let name = "ledger-2026-11-27.pdf";
    let src = "inbound/kill";
    let mut body = pdf("daily transactions 2026-11-27");
    body.extend(std::iter::repeat_n(b'%', padding));
    env.drop_file(
        format!("{src}/{name}").as_bytes(),
        &body,
        Duration::from_secs(60),
    );
    let rj = simple_route_json("kill", src, 540101, json!({"min_age_secs": 1}), "fail");
    let r = route(rj.clone());
    env.fault(json!({"count": 1, "path_contains": "/rmclassifications", "delay_ms": 120_000}))
        .await;

    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("event.json");
    std::fs::write(&file, json!({ "route": rj }).to_string()).expect("event file");
    let mut child = Command::new(binary)
        .arg("--event")
        .arg(&file)
        .envs(
            env.stack
                .env()
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str())),
        )
        .env("XECM_LOCAL_TIMEOUT_SECS", "300")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start sftp-ingest");
    // Wait until the document is in the ECM (the process is then held in
    // the RM call), then kill it without warning.
    let t0 = Instant::now();
    while env.children_named(540101, name).await == 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the document never appeared"
        );
        assert!(
            child.try_wait().expect("wait").is_none(),
            "sftp-ingest ended before the crash point"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        child.try_wait().expect("wait").is_none(),
        "sftp-ingest must still be held in the RM call"
    );
    child.kill().expect("SIGKILL");
    let status = child.wait().expect("reap");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );

    // The crash state: one document, the file still claimed, nothing archived.
    assert_eq!(env.children_named(540101, name).await, 1);
    assert!(
        env.files_in(&format!("{src}/.inflight"))
            .iter()
            .any(|p| p.ends_with(name)),
        "claim kept"
    );
    assert!(env.files_in(&format!("{src}/archive")).is_empty());

    // After the lease the next run finishes the existing document.
    env.rerun_after_lease_finishes(&r, "it-kill-rerun", src, name, &body)
        .await;
    // The claim's directory went with the file.
    let left: Vec<_> = std::fs::read_dir(env.data_root().join(format!("{src}/.inflight")))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "claim directories left: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_growing_during_the_run_is_left_alone() {
    let env = Env::start().await;
    let r = simple_route(
        "growing",
        "inbound/growing",
        540102,
        json!({"settle_secs": 2}),
        "fail",
    );
    env.drop_file(
        b"inbound/growing/stable.pdf",
        &pdf("stable"),
        Duration::ZERO,
    );
    let growing = env.drop_file(
        b"inbound/growing/growing.pdf",
        &pdf("start"),
        Duration::ZERO,
    );
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            use std::io::Write;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(mut f) = std::fs::File::options().append(true).open(&growing) {
                    let _ = f.write_all(b"% more bytes\n");
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    let rep = env.run(&r, "it-growing").await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = writer.join();
    let by: std::collections::BTreeMap<&str, FileOutcome> = rep
        .files
        .iter()
        .map(|f| (f.source_path.as_str(), f.outcome))
        .collect();
    assert_eq!(
        by.get("stable.pdf"),
        Some(&FileOutcome::Created),
        "{rep:#?}"
    );
    assert_eq!(by.get("growing.pdf"), Some(&FileOutcome::Deferred));
    assert!(env.data_root().join("inbound/growing/growing.pdf").exists());
    assert_eq!(env.children_named(540102, "growing.pdf").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_names_get_safe_document_names_and_keep_the_original() {
    let env = Env::start().await;
    let r = simple_route(
        "hostile",
        "inbound/hostile",
        540103,
        json!({"min_age_secs": 1}),
        "rename",
    );
    let long = format!("{}.pdf", "L".repeat(251));
    let names: Vec<Vec<u8>> = vec![
        b"12:30 report.pdf".to_vec(),
        b"tab\there.pdf".to_vec(),
        b"ctl\x01\x1b[31m.pdf".to_vec(),
        b"caf\xe9 non-utf8.pdf".to_vec(),
        long.clone().into_bytes(),
        b"  padded  .pdf".to_vec(),
        b"..pdf".to_vec(),
    ];
    for n in &names {
        let mut rel = b"inbound/hostile/".to_vec();
        rel.extend_from_slice(n);
        env.drop_file(&rel, &pdf("hostile"), Duration::from_secs(60));
    }
    let rep = env.run(&r, "it-hostile").await;
    // `..pdf` starts with a dot: hidden, never taken.
    assert_eq!(rep.files.len(), names.len() - 1, "{rep:#?}");
    for f in &rep.files {
        assert_eq!(f.outcome, FileOutcome::Created, "{f:?}");
        let node = NodeId::new(f.node_id.unwrap_or(0)).expect("node");
        let n = env.ecm.node(node).await.expect("node");
        assert!(
            !n.name.contains(':') && !n.name.chars().any(char::is_control),
            "{n:?}"
        );
        assert!(
            n.name.chars().count() <= 248 && n.name.trim() == n.name,
            "{n:?}"
        );
        let h = env.history(node.get()).await;
        // The emulator trims text attribute values, as Content Server does.
        assert_eq!(
            h["9002_11"],
            json!(f.source_path.trim()),
            "original name kept"
        );
    }
    assert!(
        rep.files
            .iter()
            .any(|f| f.source_path == "caf%E9 non-utf8.pdf")
    );
    assert!(rep.files.iter().any(|f| f.source_path == long));
    // Intake holds only the dot-file.
    let left: Vec<String> = env
        .files_in("inbound/hostile")
        .into_iter()
        .filter(|p| !p.contains("/archive/"))
        .collect();
    assert_eq!(left, vec!["inbound/hostile/..pdf".to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflict_policies_on_a_taken_name() {
    let env = Env::start().await;
    for (i, policy) in ["add-version", "rename", "skip-if-identical", "fail"]
        .iter()
        .enumerate()
    {
        let dir = format!("inbound/conflict-{policy}");
        let r = simple_route(
            &format!("conflict-{policy}"),
            &dir,
            540103,
            json!({"min_age_secs": 1}),
            policy,
        );
        let name = format!("statement-{i}.pdf");
        let rel = format!("{dir}/{name}");
        env.drop_file(rel.as_bytes(), &pdf("first"), Duration::from_secs(60));
        let first = env.run(&r, "it-conflict-1").await;
        assert_eq!(first.files[0].outcome, FileOutcome::Created, "{first:#?}");
        // The same name again with other content, and for skip-if-identical
        // also the same content once more.
        env.drop_file(rel.as_bytes(), &pdf("second"), Duration::from_secs(30));
        let second = env.run(&r, "it-conflict-2").await;
        let f = &second.files[0];
        match *policy {
            "add-version" => {
                assert_eq!(f.outcome, FileOutcome::VersionAdded, "{f:?}");
                assert_eq!(f.version, Some(2));
            }
            "rename" => {
                assert_eq!(f.outcome, FileOutcome::Created, "{f:?}");
                assert_eq!(
                    env.children_named(540103, &format!("statement-{i} (2).pdf"))
                        .await,
                    1
                );
            }
            "skip-if-identical" => {
                assert_eq!(f.outcome, FileOutcome::Failed, "different content: {f:?}");
                env.drop_file(rel.as_bytes(), &pdf("first"), Duration::from_secs(20));
                let third = env.run(&r, "it-conflict-3").await;
                // Same route, path, size and SHA-256: the idempotency key of
                // the stored document, so it counts as already ingested.
                assert!(
                    matches!(
                        third.files[0].outcome,
                        FileOutcome::SkippedIdentical | FileOutcome::AlreadyIngested
                    ),
                    "{third:#?}"
                );
                assert_eq!(env.children_named(540103, &name).await, 1);
            }
            _ => {
                assert_eq!(f.outcome, FileOutcome::Failed, "{f:?}");
                assert!(f.reason.as_deref().unwrap_or("").contains("exists"));
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn near_deadline_nothing_is_claimed_and_the_rest_is_reported() {
    let env = Env::start().await;
    let r = simple_route(
        "deadline",
        "inbound/deadline",
        540102,
        json!({"min_age_secs": 1}),
        "fail",
    );
    for i in 0..5 {
        env.drop_file(
            format!("inbound/deadline/d{i}.pdf").as_bytes(),
            &pdf("x"),
            Duration::from_secs(60),
        );
    }
    let ctx = RunContext {
        invocation_id: "it-deadline".into(),
        deadline: Instant::now() + Duration::from_secs(1),
        stop_margin: Duration::from_secs(5),
    };
    let rep = env.run_with(&r, &SystemClock, &ctx).await;
    assert!(rep.stopped_early);
    assert_eq!(rep.left_for_next_run, 5, "{rep:#?}");
    assert_eq!(env.files_in("inbound/deadline").len(), 5);
    // With time, the next run takes them all.
    let next = env.run(&r, "it-deadline-2").await;
    assert_eq!(next.counts.ingested, 5, "{next:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sftp_ingest_binary_runs_a_scheduled_event_and_publishes() {
    let binary = xecm_stack::lambda::function_binary("sftp-ingest").expect("binary built");
    let env = Env::start().await;
    env.drop_file(
        b"inbound/bin/INV-004799_0000100002.pdf",
        &pdf("bin"),
        Duration::from_secs(60),
    );
    let mut ev: Value = serde_json::from_str(
        &std::fs::read_to_string(workspace_root().join("events/ingest-demo.json")).expect("demo"),
    )
    .expect("json");
    ev["route"]["source_dir"] = json!("inbound/bin");
    ev["route"]["readiness"] = json!({"min_age_secs": 1});
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("event.json");
    std::fs::write(&file, ev.to_string()).expect("event file");
    let out = Command::new(binary)
        .arg("--event")
        .arg(&file)
        .envs(
            env.stack
                .env()
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str())),
        )
        .env("XECM_LOCAL_TIMEOUT_SECS", "120")
        .output()
        .expect("run sftp-ingest");
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    let rep: Value = serde_json::from_slice(&out.stdout).expect("JSON response");
    assert_eq!(rep["counts"]["ingested"], json!(1), "{rep:#}");
    assert_eq!(rep["files"][0]["outcome"], json!("created"));
    let evs = env
        .stack
        .received_events(1, Duration::from_secs(20))
        .await
        .expect("events");
    assert_eq!(evs[0]["detail-type"], json!("Transfer Ingested"));
    assert_eq!(
        evs[0]["detail"]["source_path"],
        json!("INV-004799_0000100002.pdf")
    );
}
