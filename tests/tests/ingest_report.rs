//! The bounded response of a large drop (issue 20), through the real
//! `sftp-ingest` binary against OpenSSH sshd, the Content Server emulator
//! and moto: more failures than the response lists and more files than it
//! lists; the response stays under its cap with exact counts, and the run
//! report it points to on the SFTP server has every file exactly once.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use xecm_core::flows::ingest::{FAILURES_LISTED, FILES_LISTED, RESPONSE_MAX_BYTES};
use xecm_stack::stack::SFTP_SECRET_ID;

#[path = "common/ingest_env.rs"]
mod ingest_env;
use ingest_env::Env;

const INGESTED: usize = 30;
const FAILED: usize = 110;

fn route(source: &str) -> Value {
    json!({"route": {
        "name": "big-drop",
        "sftp_secret": SFTP_SECRET_ID,
        "source_dir": source,
        "readiness": {"min_age_secs": 1},
        "rules": [{
            "name": "ok",
            "match": {"glob": "ok-*.pdf"},
            "place": {"workspace": {"by": "node", "node_id": 540102}, "name": "{name}",
                      "on_existing": "fail"}
        }],
        "fallback": "fail",
        "limits": {"max_files": 10000, "parallelism": 4, "max_attempts": 3, "lease_secs": 1800},
        "transfer_history": {"category_id": 9002, "attributes": {
            "route": 2, "host": 3, "source_path": 4, "size": 5, "sha256": 6, "received_at": 7,
            "ingested_at": 8, "invocation_id": 9, "idempotency_key": 10, "original_name": 11}}
    }})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drop_beyond_the_response_is_counted_exactly_and_reported_whole_on_sftp() {
    let binary = xecm_stack::lambda::function_binary("sftp-ingest").expect("binary built");
    let env = Env::start().await;
    let src = "inbound/big";
    let mut dropped = Vec::new();
    for i in 0..INGESTED {
        let name = format!("ok-{i:04}.pdf");
        let body = format!("%PDF-1.7\n% {name}\n%%EOF\n");
        env.drop_file(
            format!("{src}/{name}").as_bytes(),
            body.as_bytes(),
            Duration::from_secs(60),
        );
        dropped.push(name);
    }
    for i in 0..FAILED {
        // A long name, so reasons and paths weigh something.
        let name = format!("unmatched-{i:04}-{}.bin", "x".repeat(120));
        env.drop_file(
            format!("{src}/{name}").as_bytes(),
            b"no rule takes this",
            Duration::from_secs(60),
        );
        dropped.push(name);
    }
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("event.json");
    std::fs::write(&file, route(src).to_string()).expect("event file");
    let out = Command::new(binary)
        .arg("--event")
        .arg(&file)
        .envs(
            env.stack
                .env()
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str())),
        )
        .env("XECM_LOCAL_TIMEOUT_SECS", "600")
        .output()
        .expect("run sftp-ingest");
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );

    // The response: under its cap, exact counts, the first outcomes and failures.
    assert!(
        out.stdout.len() <= RESPONSE_MAX_BYTES,
        "{} bytes",
        out.stdout.len()
    );
    let rep: Value = serde_json::from_slice(&out.stdout).expect("JSON response");
    assert_eq!(
        rep["counts"]["ingested"],
        json!(INGESTED),
        "{:#}",
        rep["counts"]
    );
    assert_eq!(rep["counts"]["failed"], json!(FAILED));
    assert_eq!(rep["counts"]["deferred"], json!(0));
    assert_eq!(rep["left_for_next_run"], json!(0));
    let files = rep["files"].as_array().expect("files");
    assert_eq!(files.len(), FILES_LISTED);
    assert_eq!(
        rep["files_not_listed"],
        json!(INGESTED + FAILED - FILES_LISTED)
    );
    let failures = rep["failures"].as_array().expect("failures");
    assert_eq!(failures.len(), FAILURES_LISTED);
    assert_eq!(rep["failures_not_listed"], json!(FAILED - FAILURES_LISTED));
    for f in failures {
        assert_eq!(f["outcome"], json!("failed"), "{f}");
        assert!(f["reason"].as_str().is_some_and(|r| !r.is_empty()), "{f}");
        assert!(
            f["source_path"].as_str().unwrap().starts_with("unmatched-"),
            "{f}"
        );
    }

    // Where the response points: every file once, the listed ones first.
    let o = &rep["outcomes"];
    assert_eq!(o["all_listed"], json!(false), "{o}");
    assert!(o.get("report_error").is_none(), "{o}");
    let path = o["report"].as_str().expect("a run report");
    assert!(
        path.starts_with(&format!("{src}/.reports/big-drop/")),
        "{path}"
    );
    let text = std::fs::read_to_string(env.data_root().join(path)).expect("the run report on SFTP");
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(o["report_lines"], json!(lines.len()));
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for l in &lines {
        *seen
            .entry(l["source_path"].as_str().expect("path").to_owned())
            .or_default() += 1;
        match l["outcome"].as_str() {
            Some("created") => assert!(l["node_id"].as_i64().is_some(), "{l}"),
            Some("failed") => {
                let moved = l["moved_to"].as_str().expect("moved to failed/");
                assert!(env.data_root().join(src).join(moved).is_file(), "{l}");
                assert!(l["reason"].as_str().is_some(), "{l}");
            }
            other => panic!("unexpected outcome {other:?}: {l}"),
        }
    }
    dropped.sort();
    assert_eq!(
        seen.keys().cloned().collect::<Vec<_>>(),
        dropped,
        "every file"
    );
    assert!(seen.values().all(|n| *n == 1), "none twice");
    for (f, l) in files.iter().zip(&lines) {
        assert_eq!(f["source_path"], l["source_path"]);
    }
    // Published whole: no temporary file beside it.
    let report_dir = env.data_root().join(path).parent().expect("dir").to_owned();
    let names: Vec<String> = std::fs::read_dir(&report_dir)
        .expect("report dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
}
