//! The real `backup-snapshot` binary (one invocation per process, as
//! `--event -`) against the local stack: sshd, the Content Server emulator
//! and moto. Full and incremental snapshots, a continuation chain across an
//! artificially short deadline fed by the event captured from the bus with
//! the deployed rule's pattern and input path, a run killed with SIGKILL and
//! resumed, verify catching damage, retention, hostile names and a restore
//! round trip.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use xecm_core::adapters::otcs::{EcmSettings, OtcsClient, OtcsOptions};
use xecm_core::domain::manifest::{BackupRecord, parse_backup_manifest};
use xecm_core::ports::ecm::{Content, Ecm, NodeId, UploadRequest};
use xecm_stack::lambda::function_binary;
use xecm_stack::stack::{EVENT_BUS, LocalStack, SFTP_SECRET_ID};

const ENTERPRISE: i64 = 2000;

struct Setup {
    stack: LocalStack,
    ecm: OtcsClient,
    bin: PathBuf,
    /// Local path of the backup directory (`backups/t` over SFTP).
    dir: PathBuf,
}

fn content(b: &[u8]) -> Content {
    let bytes = Bytes::copy_from_slice(b);
    Content {
        length: bytes.len() as u64,
        stream: Box::pin(futures_util::stream::iter([Ok(bytes)])),
        file_name: "f".into(),
        mime_type: "application/octet-stream".into(),
    }
}

fn sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// What one process run gave.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        assert_eq!(self.code, Some(0), "run failed: {}", self.stderr);
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("{e}: {}", self.stdout))
    }
}

impl Setup {
    async fn start() -> Setup {
        let stack = LocalStack::start().await.expect("stack");
        let settings = EcmSettings::from_secret_json(
            "ecm",
            &json!({"base_url": stack.emulator.base_url(), "username": "admin", "password": "admin"})
                .to_string(),
        )
        .expect("ecm settings");
        let ecm = OtcsClient::new(settings, OtcsOptions::default()).expect("ecm client");
        let dir = stack.sshd.data_root().join("backups").join("t");
        Setup {
            stack,
            ecm,
            bin: function_binary("backup-snapshot").expect("binary"),
            dir,
        }
    }

    async fn folder(&self, parent: i64, name: &str) -> i64 {
        self.ecm
            .create_folder(NodeId::new(parent).unwrap(), name)
            .await
            .expect("folder")
            .get()
    }

    async fn doc(&self, parent: i64, name: &str, body: &[u8]) -> i64 {
        self.ecm
            .upload(UploadRequest {
                parent: NodeId::new(parent).unwrap(),
                name: name.into(),
                description: None,
                categories: vec![],
                classifications: vec![],
                content: content(body),
            })
            .await
            .expect("upload")
            .node_id
            .get()
    }

    /// How often the ECM served a document's content.
    async fn fetches(&self, node: i64) -> usize {
        let page = self
            .ecm
            .audit(NodeId::new(node).unwrap(), 1, 100)
            .await
            .expect("audit");
        page.items
            .iter()
            .filter(|e| e.audit_name.as_deref() == Some("Fetch"))
            .count()
    }

    fn backup(&self, roots: &[i64], retention: u32, page_size: u32) -> Value {
        json!({"name": "t", "roots": roots, "sftp_secret": SFTP_SECRET_ID, "directory": "backups/t",
               "retention": retention, "page_size": page_size, "parallelism": 2})
    }

    fn command(&self, env: &[(&str, String)]) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--event")
            .arg("-")
            .envs(
                self.stack
                    .env()
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str())),
            )
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env("RUST_LOG", "info")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    async fn run(&self, event: &Value, env: &[(&str, String)]) -> Run {
        let mut cmd = self.command(env);
        let event = event.to_string();
        tokio::task::spawn_blocking(move || {
            let mut child = cmd.spawn().expect("spawn backup-snapshot");
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(event.as_bytes())
                .expect("event");
            let out = child.wait_with_output().expect("wait");
            Run {
                code: out.status.code(),
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            }
        })
        .await
        .expect("join")
    }

    fn manifest(&self, id: &str) -> Vec<BackupRecord> {
        let text =
            std::fs::read_to_string(self.dir.join(id).join("manifest.jsonl")).expect("manifest");
        parse_backup_manifest(&text).expect("valid manifest")
    }

    /// The snapshot directories (complete, `.partial`, `.deleting`): the
    /// run lease and job reports beside them are not snapshots.
    fn snapshot_dirs(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.dir)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n != "reports")
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    async fn fault(&self, body: Value) {
        let r = reqwest::Client::new()
            .post(format!(
                "{}/__emulator/faults",
                self.stack.emulator.base_url()
            ))
            .json(&body)
            .send()
            .await
            .expect("fault");
        assert!(r.status().is_success());
    }

    /// The seeded tree: two roots, a nested folder, names legal in Content
    /// Server but not on SFTP. Returns (roots, documents by name → (id, bytes)).
    async fn seed(&self) -> (Vec<i64>, BTreeMap<String, (i64, Vec<u8>)>) {
        let a = self.folder(ENTERPRISE, "Backup Suppliers").await;
        let b = self.folder(ENTERPRISE, "Backup Contracts").await;
        let nested = self.folder(a, "Acme/Invoices 2026").await;
        let mut docs = BTreeMap::new();
        for (parent, name, body) in [
            (a, "price list.pdf", b"prices 2026".to_vec()),
            (nested, "inv-1.pdf", b"invoice one".to_vec()),
            (nested, "inv-2.pdf", vec![7u8; 300_000]),
            (b, "MSA.pdf", b"master agreement".to_vec()),
            (b, "a/b.pdf", b"a slash".to_vec()),
            (b, "a_b.pdf", b"an underscore".to_vec()),
            (b, "trailing dots...", b"dots".to_vec()),
            (
                b,
                "back\\slash \"quoted\" *?.txt",
                b"windows-hostile".to_vec(),
            ),
            (b, ".hidden", b"leading dot".to_vec()),
            (b, &"Ü".repeat(240), b"long".to_vec()),
        ] {
            let id = self.doc(parent, name, &body).await;
            docs.insert(name.to_string(), (id, body));
        }
        (vec![a, b], docs)
    }
}

fn completed(v: &Value) -> (String, &Value) {
    assert_eq!(v["status"], "completed", "{v}");
    (
        v["summary"]["snapshot_id"].as_str().expect("id").to_owned(),
        &v["summary"],
    )
}

#[tokio::test]
async fn full_then_incremental_copy_only_the_changed_document_and_restore_is_byte_identical() {
    let s = Setup::start().await;
    let (roots, docs) = s.seed().await;
    let refused = docs["MSA.pdf"].0;
    // The ECM refuses to serve one document in the first run.
    s.fault(json!({"status": 403, "count": 1, "path_contains": format!("/nodes/{refused}/versions/1/content")})).await;
    let backup = s.backup(&roots, 5, 3);
    let full = s.run(&json!({"backup": backup}), &[]).await.json();
    let (first, sum) = completed(&full);
    assert_eq!(sum["counts"]["documents"], docs.len() - 1, "{sum}");
    assert_eq!(sum["counts"]["copied"], docs.len() - 1);
    assert_eq!(sum["counts"]["skipped"], 1);
    assert_eq!(sum["skipped"][0]["node_id"], refused);
    assert!(
        sum["skipped"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("refused"),
        "{sum}"
    );
    let lines = s.manifest(&first);
    for (name, (id, body)) in &docs {
        if *id == refused {
            assert!(!lines.iter().any(|l| l.node_id == *id));
            continue;
        }
        let l = lines
            .iter()
            .find(|l| l.node_id == *id)
            .unwrap_or_else(|| panic!("{name}"));
        assert_eq!(l.ecm_path.last(), Some(name), "original name kept");
        let on_disk = std::fs::read(s.dir.join(&first).join(&l.path)).expect("file");
        assert_eq!(on_disk, *body, "{name}");
        assert_eq!(l.sha256, sha(body));
        for seg in l.path.split('/') {
            assert!(
                seg.len() <= 255
                    && !seg.ends_with('.')
                    && !seg.starts_with('.')
                    && !seg.contains(['\\', '"', '*', '?']),
                "{seg:?}"
            );
        }
    }
    let snapshot_json: Value =
        serde_json::from_slice(&std::fs::read(s.dir.join(&first).join("snapshot.json")).unwrap())
            .unwrap();
    assert_eq!(
        snapshot_json["manifest_sha256"],
        sha(&std::fs::read(s.dir.join(&first).join("manifest.jsonl")).unwrap())
    );

    // One document changes (a new version); the refused one is served now.
    let changed = docs["inv-1.pdf"].0;
    s.ecm
        .add_version(
            NodeId::new(changed).unwrap(),
            None,
            content(b"invoice one, corrected"),
        )
        .await
        .expect("version");
    let before: BTreeMap<i64, usize> = {
        let mut m = BTreeMap::new();
        for (id, _) in docs.values() {
            m.insert(*id, s.fetches(*id).await);
        }
        m
    };
    let inc = s.run(&json!({"backup": backup}), &[]).await.json();
    let (second, sum) = completed(&inc);
    assert_eq!(sum["base_snapshot"], first.as_str());
    assert_eq!(sum["counts"]["copied"], 2, "{sum}");
    assert_eq!(sum["counts"]["referenced"], docs.len() - 2);
    for (id, _) in docs.values() {
        let fetched = s.fetches(*id).await - before[id];
        let want = usize::from(*id == changed || *id == refused);
        assert_eq!(fetched, want, "node {id} downloaded {fetched} times");
    }
    let lines2 = s.manifest(&second);
    assert_eq!(lines2.len(), docs.len());
    for l in &lines2 {
        let holder = l.snapshot.clone().unwrap_or_else(|| second.clone());
        assert_eq!(
            holder == second,
            l.node_id == changed || l.node_id == refused,
            "{l:?}"
        );
    }

    // Both verify.
    for id in [&first, &second] {
        let v = s
            .run(
                &json!({"action": "verify", "backup": backup, "snapshot_id": id}),
                &[],
            )
            .await
            .json();
        assert!(v["problems"].as_array().unwrap().is_empty(), "{v}");
    }

    // Restore the incremental one into an empty folder: byte-identical.
    let target = s.folder(ENTERPRISE, "DR drill").await;
    let r = s
        .run(&json!({"action": "restore", "backup": backup, "snapshot_id": second, "target_folder": target}), &[])
        .await
        .json();
    let restored = r["restored"].as_array().unwrap();
    assert_eq!(restored.len(), docs.len(), "{r}");
    for d in restored {
        let node = NodeId::new(d["node_id"].as_i64().unwrap()).unwrap();
        let src = d["source_node_id"].as_i64().unwrap();
        let mut got = Vec::new();
        let mut dl = s.ecm.download(node, None).await.expect("download");
        use futures_util::StreamExt;
        while let Some(c) = dl.stream.next().await {
            got.extend_from_slice(&c.expect("chunk"));
        }
        let want = if src == changed {
            b"invoice one, corrected".to_vec()
        } else {
            docs.values().find(|(id, _)| *id == src).unwrap().1.clone()
        };
        assert_eq!(got, want, "{d}");
    }
    let suppliers = s
        .ecm
        .child_by_name(NodeId::new(target).unwrap(), "Backup Suppliers")
        .await
        .unwrap()
        .expect("root folder restored");
    assert!(
        s.ecm
            .child_by_name(suppliers.id, "Acme/Invoices 2026")
            .await
            .unwrap()
            .is_some()
    );
    let events = s
        .stack
        .received_events(20, Duration::from_secs(10))
        .await
        .unwrap();
    let types: Vec<&str> = events
        .iter()
        .filter_map(|e| e["detail-type"].as_str())
        .collect();
    for t in [
        "Snapshot Completed",
        "Snapshot Verified",
        "Snapshot Restored",
    ] {
        assert!(types.contains(&t), "{types:?}");
    }
}

/// The continuation rule as deployed: pattern and input path from the
/// Terraform file.
fn continuation_rule() -> (Value, String) {
    let tf = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../infra/continuation.tf"
    ))
    .expect("continuation.tf");
    let body: hcl::Body = hcl::from_str(&tf).expect("continuation.tf parses");
    let resource = |kind: &str| -> String {
        let block = body
            .blocks()
            .find(|b| {
                let l: Vec<&str> = b.labels().iter().map(|l| l.as_str()).collect();
                b.identifier() == "resource" && l == [kind, "snapshot_continuation"]
            })
            .unwrap_or_else(|| panic!("resource {kind}.snapshot_continuation"));
        hcl::to_string(block.body()).expect("render")
    };
    let rule = resource("aws_cloudwatch_event_rule");
    let target = resource("aws_cloudwatch_event_target");
    let one = |text: &str, re: &str| -> String {
        regex::Regex::new(re)
            .unwrap()
            .captures(text)
            .unwrap_or_else(|| panic!("{re} not in {text}"))[1]
            .to_owned()
    };
    let detail_type = one(&rule, r#""detail-type"\s*=\s*\[\s*"([^"]+)""#);
    let source = one(&rule, r#"source"?\s*=\s*\[\s*"([^"]+)""#);
    let input_path = one(&target, r#"input_path\s*=\s*"([^"]+)""#);
    (
        json!({"source": [source], "detail-type": [detail_type]}),
        input_path,
    )
}

/// `$.a.b` applied to `v`, as EventBridge's InputPath does.
fn apply_input_path(v: &Value, path: &str) -> Value {
    let rest = path.strip_prefix('$').expect("a JSONPath");
    rest.split('.')
        .filter(|s| !s.is_empty())
        .fold(v.clone(), |v, k| v[k].clone())
}

#[tokio::test]
async fn continuation_across_a_short_deadline_chains_to_one_complete_snapshot_copying_each_document_once()
 {
    let s = Setup::start().await;
    let (roots, docs) = s.seed().await;
    let (pattern, input_path) = continuation_rule();
    let capture = s
        .stack
        .moto
        .capture_events_matching(EVENT_BUS, "continuation-rule", &pattern.to_string())
        .await
        .expect("rule");
    let backup = s.backup(&roots, 5, 2);
    // Two seconds per invocation and a margin of 1.9: after the first page
    // every run is near its deadline.
    let env = [
        ("XECM_LOCAL_TIMEOUT_SECS", "2".to_string()),
        ("XECM_BACKUP_MARGIN_MS", "1900".to_string()),
    ];
    let mut event = json!({"backup": backup});
    let mut invocations = 0;
    let done = loop {
        invocations += 1;
        assert!(invocations <= 40, "no end to the chain");
        let out = s.run(&event, &env).await.json();
        match out["status"].as_str() {
            Some("continuing") => {
                let got = capture
                    .receive(1, Duration::from_secs(20))
                    .await
                    .expect("receive");
                assert_eq!(
                    got.len(),
                    1,
                    "the continuation event reached the deployed rule's pattern"
                );
                assert_eq!(got[0]["source"], "xecm-sftp");
                // What the rule's target passes to the function.
                event = apply_input_path(&got[0], &input_path);
                assert_eq!(event["action"], "continue", "{event}");
            }
            Some("completed") => break out,
            other => panic!("unexpected outcome {other:?}: {out}"),
        }
    };
    assert!(
        invocations >= 3,
        "the deadline should have split the snapshot: {invocations}"
    );
    let (id, sum) = completed(&done);
    assert_eq!(sum["invocations"], invocations);
    assert_eq!(sum["counts"]["documents"], docs.len());
    assert_eq!(s.snapshot_dirs(), vec![id.clone()]);
    assert_eq!(s.manifest(&id).len(), docs.len());
    for (name, (node, _)) in &docs {
        assert_eq!(s.fetches(*node).await, 1, "{name}");
    }
}

#[tokio::test]
async fn a_run_killed_mid_snapshot_is_resumed_by_the_next_with_nothing_copied_twice() {
    let s = Setup::start().await;
    let (roots, docs) = s.seed().await;
    // Every download waits 700 ms before it is served, so the kill lands
    // while downloads wait (a cancelled request is never served).
    s.fault(
        json!({"status": 0, "delay_ms": 700, "count": docs.len(), "path_contains": "/content"}),
    )
    .await;
    let backup = s.backup(&roots, 5, 2);
    let env = [
        ("XECM_LOCAL_TIMEOUT_SECS", "4".to_string()),
        ("XECM_BACKUP_MARGIN_MS", "0".to_string()),
    ];
    let mut cmd = s.command(&env);
    // Never read: keep the log out of a pipe that could fill.
    cmd.stderr(Stdio::null());
    let mut child = cmd.spawn().expect("spawn");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(json!({"backup": backup}).to_string().as_bytes())
        .unwrap();
    let started = Instant::now();
    // Kill once at least one page is recorded.
    let parts = loop {
        let n = std::fs::read_dir(&s.dir)
            .ok()
            .and_then(|d| {
                d.filter_map(|e| e.ok())
                    .find(|e| e.file_name().to_string_lossy().ends_with(".partial"))
            })
            .and_then(|p| std::fs::read_dir(p.path().join(".parts")).ok())
            .map(|d| d.count())
            .unwrap_or(0);
        if n >= 1 {
            break n;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no progress before the kill"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it was killed"
        );
        // Not a blocking sleep: the emulator runs on this test's runtime.
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    assert!(parts >= 1);
    assert_eq!(s.snapshot_dirs().len(), 1, "{:?}", s.snapshot_dirs());
    assert!(s.snapshot_dirs()[0].ends_with(".partial"));
    // The killed run's lease lasts until its deadline (4 s) plus 5 s slack.
    let wait = Duration::from_secs(10).saturating_sub(started.elapsed());
    tokio::time::sleep(wait).await;
    let out = s.run(&json!({"backup": backup}), &[]).await.json();
    let (id, sum) = completed(&out);
    assert_eq!(sum["invocations"], 2);
    assert_eq!(sum["counts"]["documents"], docs.len());
    let lines = s.manifest(&id);
    assert_eq!(lines.len(), docs.len());
    for (name, (node, body)) in &docs {
        assert_eq!(
            s.fetches(*node).await,
            1,
            "{name} downloaded more than once"
        );
        let l = lines.iter().find(|l| l.node_id == *node).unwrap();
        assert_eq!(std::fs::read(s.dir.join(&id).join(&l.path)).unwrap(), *body);
    }
    // No leftovers of the interrupted puts in the complete snapshot.
    let mut stack = vec![s.dir.join(&id)];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            assert!(
                !e.file_name().to_string_lossy().starts_with('.'),
                "leftover {:?}",
                e.path()
            );
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            }
        }
    }
}

#[tokio::test]
async fn verify_reports_a_corrupted_and_a_missing_file_and_fails_and_retention_keeps_what_is_pointed_at()
 {
    let s = Setup::start().await;
    let (roots, docs) = s.seed().await;
    let backup = s.backup(&roots, 1, 50);
    let (first, _) = completed(&s.run(&json!({"backup": backup}), &[]).await.json());
    // Retention 1, nothing changed: the second points at the first for every
    // document, so the first must stay although it is beyond the count.
    let out = s.run(&json!({"backup": backup}), &[]).await.json();
    let (second, sum) = completed(&out);
    assert_eq!(sum["counts"]["referenced"], docs.len());
    assert_eq!(out["retention"]["kept_for_references"], json!([first]));
    assert_eq!(s.snapshot_dirs(), vec![first.clone(), second.clone()]);
    // A full (non-incremental) snapshot holds its own bytes: now both older
    // ones go, and the only complete snapshot left is the newest.
    let mut full = backup.clone();
    full["incremental"] = json!(false);
    let out = s.run(&json!({"backup": full}), &[]).await.json();
    let (third, _) = completed(&out);
    assert_eq!(out["retention"]["delete"], json!([first, second]));
    assert_eq!(s.snapshot_dirs(), vec![third.clone()]);

    // Damage: one file corrupted (same size), one removed.
    let lines = s.manifest(&third);
    let corrupt = s.dir.join(&third).join(&lines[0].path);
    let mut bytes = std::fs::read(&corrupt).unwrap();
    bytes[0] ^= 0xff;
    std::fs::write(&corrupt, &bytes).unwrap();
    let missing = s.dir.join(&third).join(&lines[1].path);
    std::fs::remove_file(&missing).unwrap();
    let r = s
        .run(
            &json!({"action": "verify", "backup": backup, "snapshot_id": third}),
            &[],
        )
        .await;
    assert_eq!(r.code, Some(1), "verify must fail: {r:?}");
    assert!(r.stderr.contains("VerifyFailed"), "{}", r.stderr);
    assert!(
        r.stderr.contains(&lines[0].path) && r.stderr.contains("sha256"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains(&lines[1].path) && r.stderr.contains("missing"),
        "{}",
        r.stderr
    );
    let events = s
        .stack
        .received_events(20, Duration::from_secs(10))
        .await
        .unwrap();
    let failed = events
        .iter()
        .find(|e| e["detail-type"] == "Snapshot Verify Failed")
        .expect("Snapshot Verify Failed event");
    assert_eq!(
        failed["detail"]["problems"].as_array().unwrap().len(),
        2,
        "{failed}"
    );
}

#[tokio::test]
async fn a_transient_ecm_failure_fails_the_run_as_retryable_and_the_retry_resumes_at_once() {
    let s = Setup::start().await;
    let (roots, docs) = s.seed().await;
    let flaky = docs["MSA.pdf"].0;
    // More 503s than the client's retries of one download.
    let path = format!("/nodes/{flaky}/versions/1/content");
    s.fault(json!({"status": 503, "count": 40, "path_contains": path}))
        .await;
    let backup = s.backup(&roots, 5, 3);
    let r = s.run(&json!({"backup": backup}), &[]).await;
    assert_eq!(r.code, Some(75), "transient: {r:?}");
    assert!(r.stderr.contains("Transient."), "{}", r.stderr);
    let dirs = s.snapshot_dirs();
    assert!(dirs.len() == 1 && dirs[0].ends_with(".partial"), "{dirs:?}");
    assert!(
        s.dir.join(&dirs[0]).join(".checkpoint.json").exists(),
        "the checkpoint stays"
    );
    // The ECM recovers: use up the remaining faults.
    let http = reqwest::Client::new();
    let ticket: Value = http
        .post(format!("{}/cs/cs/api/v1/auth", s.stack.emulator.base_url()))
        .form(&[("username", "admin"), ("password", "admin")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ticket = ticket["ticket"].as_str().unwrap().to_owned();
    for _ in 0..40 {
        let st = http
            .get(format!(
                "{}/cs/cs/api/v2{path}",
                s.stack.emulator.base_url()
            ))
            .header("OTCSTicket", &ticket)
            .send()
            .await
            .unwrap()
            .status();
        if st.is_success() {
            break;
        }
    }
    // The retry (another invocation) is not kept out by the failed run's lease.
    let out = s.run(&json!({"backup": backup}), &[]).await.json();
    let (id, sum) = completed(&out);
    assert_eq!(
        dirs[0],
        format!("{id}.partial"),
        "the same snapshot was resumed"
    );
    assert_eq!(sum["counts"]["documents"], docs.len());
    assert_eq!(sum["counts"]["skipped"], 0);
    assert_eq!(sum["invocations"], 2);
}

/// The bytes of a version in the ECM.
async fn ecm_bytes(ecm: &OtcsClient, node: i64, version: Option<u32>) -> Vec<u8> {
    use futures_util::StreamExt;
    let mut dl = ecm
        .download(NodeId::new(node).unwrap(), version)
        .await
        .expect("download");
    let mut got = Vec::new();
    while let Some(c) = dl.stream.next().await {
        got.extend_from_slice(&c.expect("chunk"));
    }
    got
}

#[tokio::test]
async fn versions_all_snapshots_every_version_copies_only_new_versions_and_restores_them_in_order()
{
    let s = Setup::start().await;
    let (roots, docs) = s.seed().await;
    let msa = docs["MSA.pdf"].0;
    let bodies: Vec<Vec<u8>> = vec![
        docs["MSA.pdf"].1.clone(),
        b"master agreement, amended".to_vec(),
        vec![3u8; 200_000],
    ];
    for b in &bodies[1..] {
        s.ecm
            .add_version(NodeId::new(msa).unwrap(), None, content(b))
            .await
            .expect("version");
    }
    let mut backup = s.backup(&roots, 5, 3);
    backup["versions"] = json!("all");
    let full = s.run(&json!({"backup": backup}), &[]).await.json();
    let (first, sum) = completed(&full);
    // One line per version: the documents, and two more versions of one.
    assert_eq!(sum["counts"]["documents"], docs.len() + 2, "{sum}");
    let lines = s.manifest(&first);
    let msa_lines: Vec<&BackupRecord> = lines.iter().filter(|l| l.node_id == msa).collect();
    assert_eq!(
        msa_lines.iter().map(|l| l.version).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    for (l, body) in msa_lines.iter().zip(&bodies) {
        let on_disk = std::fs::read(s.dir.join(&first).join(&l.path)).expect("file");
        assert_eq!(&on_disk, body, "version {}", l.version);
        assert_eq!(l.sha256, sha(body));
    }
    assert_eq!(s.fetches(msa).await, 3, "each version fetched once");

    // A fourth version: only it is transferred.
    let v4 = b"master agreement v4".to_vec();
    s.ecm
        .add_version(NodeId::new(msa).unwrap(), None, content(&v4))
        .await
        .expect("version");
    let before: BTreeMap<i64, usize> = {
        let mut m = BTreeMap::new();
        for (id, _) in docs.values() {
            m.insert(*id, s.fetches(*id).await);
        }
        m
    };
    let inc = s.run(&json!({"backup": backup}), &[]).await.json();
    let (second, sum) = completed(&inc);
    assert_eq!(sum["counts"]["copied"], 1, "{sum}");
    assert_eq!(sum["counts"]["referenced"], docs.len() + 2);
    for (id, _) in docs.values() {
        let fetched = s.fetches(*id).await - before[id];
        assert_eq!(fetched, usize::from(*id == msa), "node {id}");
    }
    let v = s
        .run(
            &json!({"action": "verify", "backup": backup, "snapshot_id": second}),
            &[],
        )
        .await
        .json();
    assert_eq!(v["status"], "verified", "{v}");
    assert_eq!(v["files_checked"], docs.len() + 3);

    // Restore: the document comes back with its four versions, in order.
    let target = s.folder(ENTERPRISE, "Versions drill").await;
    let r = s
        .run(&json!({"action": "restore", "backup": backup, "snapshot_id": second, "target_folder": target}), &[])
        .await
        .json();
    assert_eq!(r["status"], "restored", "{r}");
    assert_eq!(r["restored_total"], docs.len());
    assert_eq!(r["versions"], docs.len() + 3);
    let back = r["restored"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["source_node_id"] == msa)
        .expect("restored")
        .clone();
    let node = back["node_id"].as_i64().unwrap();
    let versions = s.ecm.versions(NodeId::new(node).unwrap()).await.unwrap();
    assert_eq!(versions.len(), 4);
    let mut want = bodies.clone();
    want.push(v4);
    for (v, body) in versions.iter().zip(&want) {
        assert_eq!(&ecm_bytes(&s.ecm, node, Some(v.number)).await, body);
    }
}

static CHAINS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Invokes the real binary with `event`, then each continuation the bus
/// delivered to the deployed rule's pattern, with its input path applied,
/// until an invocation does not continue. Returns the last answer and the
/// number of invocations.
async fn run_chain(s: &Setup, event: Value, env: &[(&str, String)]) -> (Value, usize) {
    let (pattern, input_path) = continuation_rule();
    let capture = s
        .stack
        .moto
        .capture_events_matching(
            EVENT_BUS,
            &format!(
                "chain-{}",
                CHAINS.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            ),
            &pattern.to_string(),
        )
        .await
        .expect("rule");
    let mut event = event;
    let mut n = 0;
    loop {
        n += 1;
        assert!(n <= 40, "no end to the chain");
        let out = s.run(&event, env).await.json();
        if out["status"] != "continuing" {
            return (out, n);
        }
        let got = capture
            .receive(1, Duration::from_secs(20))
            .await
            .expect("receive");
        assert_eq!(got.len(), 1, "the continuation reached the rule: {out}");
        let next = apply_input_path(&got[0], &input_path);
        assert_eq!(next["action"], event["action"], "{next}");
        assert_eq!(next["resume"], out["job"], "{next}");
        event = next;
    }
}

#[tokio::test]
async fn verify_and_restore_continue_across_a_short_deadline_and_do_each_document_once() {
    let s = Setup::start().await;
    let (roots, docs) = s.seed().await;
    let backup = s.backup(&roots, 5, 50);
    let (id, _) = completed(&s.run(&json!({"backup": backup}), &[]).await.json());
    // Two seconds per invocation and a margin of 1.9: after the first
    // documents every run is near its deadline.
    let env = [
        ("XECM_LOCAL_TIMEOUT_SECS", "2".to_string()),
        ("XECM_BACKUP_MARGIN_MS", "1900".to_string()),
    ];
    let (v, n) = run_chain(
        &s,
        json!({"action": "verify", "backup": backup, "snapshot_id": id}),
        &env,
    )
    .await;
    assert_eq!(v["status"], "verified", "{v}");
    assert!(n >= 3, "the deadline should have split the verify: {n}");
    assert_eq!(v["invocations"], n);
    assert_eq!(v["files_checked"], docs.len(), "each file checked once");
    // The full report is on SFTP where the answer points.
    let job = v["job"].as_str().unwrap();
    let report = s.dir.join("reports").join(format!("verify-{id}-{job}"));
    assert!(
        v["report_path"]
            .as_str()
            .unwrap()
            .ends_with(&format!("verify-{id}-{job}")),
        "{v}"
    );
    assert!(report.join("report.json").exists(), "{report:?}");

    let target = s.folder(ENTERPRISE, "Chained drill").await;
    let before: BTreeMap<i64, usize> = {
        let mut m = BTreeMap::new();
        for (id, _) in docs.values() {
            m.insert(*id, s.fetches(*id).await);
        }
        m
    };
    let (r, n) = run_chain(
        &s,
        json!({"action": "restore", "backup": backup, "snapshot_id": id, "target_folder": target}),
        &env,
    )
    .await;
    assert_eq!(r["status"], "restored", "{r}");
    assert!(n >= 3, "the deadline should have split the restore: {n}");
    assert_eq!(r["restored_total"], docs.len());
    assert_eq!(r["already_present"], 0, "no document restored twice: {r}");
    for d in r["restored"].as_array().unwrap() {
        let node = d["node_id"].as_i64().unwrap();
        let src = d["source_node_id"].as_i64().unwrap();
        assert_eq!(
            s.ecm
                .versions(NodeId::new(node).unwrap())
                .await
                .unwrap()
                .len(),
            1,
            "{d}"
        );
        let body = &docs.values().find(|(i, _)| *i == src).unwrap().1;
        assert_eq!(&ecm_bytes(&s.ecm, node, None).await, body);
        // The source was never read: the restore reads the snapshot.
        assert_eq!(s.fetches(src).await, before[&src]);
    }
}

#[tokio::test]
async fn two_runs_started_together_on_one_plan_exactly_one_takes_the_snapshot() {
    let s = Setup::start().await;
    let (roots, docs) = s.seed().await;
    // Downloads are slowed down, so the first run is still at work when the
    // second starts.
    s.fault(
        json!({"status": 0, "delay_ms": 300, "count": docs.len(), "path_contains": "/content"}),
    )
    .await;
    let backup = s.backup(&roots, 5, 3);
    let event = json!({"backup": backup});
    let (a, b) = tokio::join!(s.run(&event, &[]), s.run(&event, &[]));
    let outs = [a.json(), b.json()];
    let statuses: Vec<&str> = outs.iter().map(|o| o["status"].as_str().unwrap()).collect();
    assert!(
        statuses.contains(&"completed") && statuses.contains(&"busy"),
        "{outs:?}"
    );
    let dirs = s.snapshot_dirs();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    assert_eq!(s.manifest(&dirs[0]).len(), docs.len());
    for (name, (node, _)) in &docs {
        assert_eq!(s.fetches(*node).await, 1, "{name}");
    }
}
