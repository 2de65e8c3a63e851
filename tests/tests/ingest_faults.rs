//! sftp-ingest under faults, against the real parts (OpenSSH sshd, the
//! Content Server emulator, moto): an ECM outage (HTTP 500) mid-run, the
//! real `sftp-ingest` process aborted at named crash points
//! (`XECM_INGEST_CRASH_AT`, honoured by debug builds only) and rerun, and a
//! partner re-sending an older version on an add-version route.

use std::process::Command;
use std::time::Duration;

use secrecy::ExposeSecret;
use serde_json::{Value, json};
use xecm_core::adapters::aws::{EventBridgeSink, SecretsManagerSecrets};
use xecm_core::adapters::otcs::{EcmSettings, OtcsClient, OtcsOptions};
use xecm_core::adapters::sftp::{SftpSettings, open_store};
use xecm_core::flows::ingest::{FileOutcome, RunContext};
use xecm_core::ports::ecm::{ChildFilter, Ecm, NodeId};
use xecm_core::ports::secrets::Secrets;
use xecm_stack::fault_proxy::FaultProxy;
use xecm_stack::stack::{EVENT_BUS, LocalStack, SFTP_SECRET_ID};

#[path = "common/ingest_env.rs"]
mod ingest_env;
use ingest_env::{Ahead, Env, pdf, route, sha_hex, simple_route, simple_route_json};

impl Env {
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
}

/// Every document in `folder` with that name, with its version count.
async fn docs_named(env: &Env, folder: i64, name: &str) -> Vec<(NodeId, usize)> {
    let page = env
        .ecm
        .children(
            NodeId::new(folder).expect("id"),
            &ChildFilter::default(),
            1,
            500,
        )
        .await
        .expect("children");
    let mut out = Vec::new();
    for n in page.items.into_iter().filter(|n| n.name == name) {
        let v = env.ecm.versions(n.id).await.expect("versions").len();
        out.push((n.id, v));
    }
    out
}

/// An ECM outage mid-run (every look-up answers HTTP 500): nothing goes to
/// failed/, the run stops, and the next run ingests every file at once
/// (the claims were released, not left to their lease).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ecm_http_500_mid_run_leaves_claims_and_the_next_run_ingests_all() {
    let env = Env::start().await;
    let src = "inbound/outage";
    let r = simple_route("outage", src, 540101, json!({"min_age_secs": 1}), "fail");
    let names: Vec<String> = (0..5).map(|i| format!("outage-{i}.pdf")).collect();
    for n in &names {
        env.drop_file(
            format!("{src}/{n}").as_bytes(),
            &pdf(n),
            Duration::from_secs(60),
        );
    }
    // Look-ups in the target folder fail for a while (every retry of the
    // adapter included).
    env.fault(json!({"status": 500, "count": 60, "path_contains": "/nodes/540101/nodes"}))
        .await;

    let first = env.run(&r, "it-outage-1").await;

    assert_eq!(first.counts.failed, 0, "{first:#?}");
    assert_eq!(first.counts.ingested, 0, "{first:#?}");
    assert!(first.stopped_early, "{first:#?}");
    assert!(env.files_in(&format!("{src}/failed")).is_empty());
    // Use up what is left of the fault (the outage ends).
    for _ in 0..60 {
        if env
            .ecm
            .children(
                NodeId::new(540101).expect("id"),
                &ChildFilter::default(),
                1,
                1,
            )
            .await
            .is_ok()
        {
            break;
        }
    }
    let next = env.run(&r, "it-outage-2").await;
    assert_eq!(next.counts.ingested, 5, "{next:#?}");
    for n in &names {
        assert_eq!(docs_named(&env, 540101, n).await.len(), 1, "{n}");
    }
    assert!(env.files_in(&format!("{src}/.inflight")).is_empty());
    assert_eq!(env.files_in(&format!("{src}/archive")).len(), 5);
}

/// A partner re-sends yesterday's file on an add-version route: the
/// document keeps its two versions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_version_sent_again_adds_no_version() {
    let env = Env::start().await;
    let src = "inbound/resend";
    let r = simple_route(
        "resend",
        src,
        540101,
        json!({"min_age_secs": 1}),
        "add-version",
    );
    let name = "contract-resend.pdf";
    let path = format!("{src}/{name}");
    env.drop_file(path.as_bytes(), &pdf("draft"), Duration::from_secs(600));
    env.run(&r, "it-resend-1").await;
    env.drop_file(
        path.as_bytes(),
        &pdf("redline with changes"),
        Duration::from_secs(300),
    );
    env.run(&r, "it-resend-2").await;
    env.drop_file(path.as_bytes(), &pdf("draft"), Duration::from_secs(60));
    let third = env.run(&r, "it-resend-3").await;
    assert!(
        matches!(
            third.files[0].outcome,
            FileOutcome::SkippedIdentical | FileOutcome::AlreadyIngested
        ),
        "{third:#?}"
    );
    let docs = docs_named(&env, 540101, name).await;
    assert_eq!(docs.len(), 1);
    assert_eq!(docs[0].1, 2, "no third version");
}

/// The real binary aborted at crash points (debug builds honour
/// `XECM_INGEST_CRASH_AT`), then a run after the lease: one document, one
/// version, history final, the file and its sidecar archived once. Prints
/// the rows as a table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sftp_ingest_aborted_at_crash_points_then_rerun_loses_and_duplicates_nothing() {
    let binary = xecm_stack::lambda::function_binary("sftp-ingest").expect("binary built");
    let env = Env::start().await;
    let points = [
        "claimed",
        "mid-upload",
        "uploaded",
        "history-written",
        "archived",
    ];
    let mut table = String::from(
        "| crash point (real process) | aborted | documents | versions | archived | left in claims |\n|---|---|---|---|---|---|\n",
    );
    let mut bad = Vec::new();
    for (i, point) in points.iter().enumerate() {
        let src = format!("inbound/crash{i}");
        let name = format!("crash-{point}.pdf");
        let mut body = pdf(point);
        body.extend(std::iter::repeat_n(b'%', 1024 * 1024));
        env.drop_file(
            format!("{src}/{name}").as_bytes(),
            &body,
            Duration::from_secs(60),
        );
        env.drop_file(
            format!("{src}/{name}.json").as_bytes(),
            br#"{"po": "1"}"#,
            Duration::from_secs(60),
        );
        let rj = simple_route_json(
            &format!("crash{i}"),
            &src,
            540101,
            json!({"min_age_secs": 1}),
            "fail",
        );
        let r = route(rj.clone());
        let dir = tempfile::tempdir().expect("tmp");
        let file = dir.path().join("event.json");
        std::fs::write(&file, json!({ "route": rj }).to_string()).expect("event file");
        let status = Command::new(&binary)
            .arg("--event")
            .arg(&file)
            .envs(
                env.stack
                    .env()
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str())),
            )
            .env("XECM_LOCAL_TIMEOUT_SECS", "300")
            .env("XECM_INGEST_CRASH_AT", point)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .expect("run sftp-ingest");
        let aborted = std::os::unix::process::ExitStatusExt::signal(&status) == Some(6);
        let ctx = RunContext::new(format!("it-crash-rerun-{i}"), Duration::from_secs(300));
        env.run_with(&r, &Ahead(chrono::Duration::seconds(1900)), &ctx)
            .await;
        let docs = docs_named(&env, 540101, &name).await;
        let versions: usize = docs.iter().map(|d| d.1).sum();
        let archived = env.files_in(&format!("{src}/archive"));
        let left = env.files_in(&format!("{src}/.inflight"));
        let mut ok =
            aborted && docs.len() == 1 && versions == 1 && archived.len() == 2 && left.is_empty();
        if let Some((node, _)) = docs.first() {
            let h = env.history(node.get()).await;
            ok &= h.get("9002_6") == Some(&json!(sha_hex(&body)));
        }
        if !ok {
            bad.push(format!(
                "{point}: aborted {aborted}, docs {docs:?}, archive {archived:?}, left {left:?}"
            ));
        }
        table.push_str(&format!(
            "| {point} | {aborted} | {} | {versions} | {} | {} |\n",
            docs.len(),
            archived.len(),
            left.len()
        ));
    }
    println!("\n{table}");
    assert!(bad.is_empty(), "{bad:#?}\n{table}");
}

/// The local stack with sshd and the emulator reached through fault proxies.
async fn env_behind_proxies() -> (Env, FaultProxy, FaultProxy) {
    let stack = LocalStack::start().await.expect("local stack");
    let sshd_addr: std::net::SocketAddr = format!("127.0.0.1:{}", stack.sshd.port())
        .parse()
        .expect("addr");
    let sftp_proxy = FaultProxy::start(sshd_addr).await.expect("sftp proxy");
    let ecm_proxy = FaultProxy::start(stack.emulator.addr())
        .await
        .expect("ecm proxy");
    let sdk = stack.sdk_config().await;
    let secrets = SecretsManagerSecrets::new(&sdk);
    let json = secrets.get(SFTP_SECRET_ID).await.expect("sftp secret");
    let mut settings = SftpSettings::from_secret_json(SFTP_SECRET_ID, json.expose_secret())
        .expect("settings")
        .with_root(stack.sshd.remote_root())
        .expect("root");
    settings.max_sessions = 4;
    settings.port = sftp_proxy.port();
    let store = open_store(settings).expect("store");
    let ecm = OtcsClient::new(
        EcmSettings::from_secret_json(
            "ecm",
            &json!({"base_url": format!("http://{}", ecm_proxy.addr()), "username": "admin", "password": "admin"})
                .to_string(),
        )
        .expect("ecm settings"),
        OtcsOptions::default(),
    )
    .expect("ecm client");
    let events = EventBridgeSink::new(&sdk, EVENT_BUS);
    (
        Env {
            stack,
            store,
            ecm,
            events,
        },
        sftp_proxy,
        ecm_proxy,
    )
}

/// Connections to sshd, then to the emulator, are cut in the middle of
/// transfers; the reruns finish with every file in exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_cut_mid_transfer_then_reruns_finish_without_loss_or_duplicates() {
    let (env, sftp_proxy, ecm_proxy) = env_behind_proxies().await;
    let src = "inbound/netcut";
    let r = simple_route("netcut", src, 540101, json!({"min_age_secs": 1}), "fail");
    let mut files = Vec::new();
    for i in 0..4 {
        let name = format!("netcut-{i}.pdf");
        let mut body = pdf(&name);
        body.extend(std::iter::repeat_n(b'%', 2 * 1024 * 1024));
        env.drop_file(
            format!("{src}/{name}").as_bytes(),
            &body,
            Duration::from_secs(60),
        );
        files.push((name, body));
    }
    // The SFTP link drops while the first files stream.
    sftp_proxy.cut_after(3 * 1024 * 1024);
    let first = env.run(&r, "it-netcut-1").await;
    assert!(sftp_proxy.cuts() >= 1, "no SFTP cut happened: {first:#?}");
    assert_eq!(first.counts.failed, 0, "{first:#?}");
    // The ECM link drops while the next files upload.
    ecm_proxy.cut_after(3 * 1024 * 1024);
    let ctx = RunContext::new("it-netcut-2", Duration::from_secs(300));
    let second = env
        .run_with(&r, &Ahead(chrono::Duration::seconds(1900)), &ctx)
        .await;
    assert_eq!(second.counts.failed, 0, "{second:#?}");
    // Links healthy again: reruns (after any lease) finish the rest.
    for (i, ahead) in [3800, 5700].into_iter().enumerate() {
        let ctx = RunContext::new(format!("it-netcut-{}", i + 3), Duration::from_secs(300));
        env.run_with(&r, &Ahead(chrono::Duration::seconds(ahead)), &ctx)
            .await;
    }
    println!(
        "network cuts: sftp {}, ecm {}",
        sftp_proxy.cuts(),
        ecm_proxy.cuts()
    );
    for (name, body) in &files {
        let docs = docs_named(&env, 540101, name).await;
        assert_eq!(docs.len(), 1, "{name}: {docs:?}");
        assert_eq!(docs[0].1, 1, "{name}: one version");
        let h = env.history(docs[0].0.get()).await;
        assert_eq!(h["9002_6"], json!(sha_hex(body)), "{name}");
    }
    assert_eq!(env.files_in(&format!("{src}/archive")).len(), files.len());
    assert!(env.files_in(&format!("{src}/.inflight")).is_empty());
    assert!(env.files_in(&format!("{src}/failed")).is_empty());
}

/// The hostile-name corpus (tests/corpus/ingest/hostile.json): every case
/// ends as the corpus says, with a clear reason or a safe name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_name_corpus_outcomes() {
    let corpus: Value = serde_json::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/ingest/hostile.json"),
        )
        .expect("corpus"),
    )
    .expect("corpus json");
    let env = Env::start().await;
    let src = "inbound/hostile";
    let r = simple_route("hostile", src, 540101, json!({"min_age_secs": 1}), "rename");
    let repeat = |v: &Value| -> String {
        let a = v.as_array().expect("repeat");
        format!(
            "{}{}{}",
            a[0].as_str().unwrap_or(""),
            a[1].as_str().unwrap_or("").repeat(0)
                + &a[0]
                    .as_str()
                    .unwrap_or("")
                    .repeat(a[1].as_u64().unwrap_or(0) as usize),
            a[2].as_str().unwrap_or("")
        )
    };
    let cases = corpus["cases"].as_array().expect("cases").clone();
    let mut names: Vec<(Value, Vec<u8>)> = Vec::new();
    for c in &cases {
        let raw: Vec<u8> = if let Some(h) = c["name_hex"].as_str() {
            hex::decode(h).expect("hex")
        } else if c.get("name_repeat").is_some() {
            repeat(&c["name_repeat"]).into_bytes()
        } else {
            c["name"].as_str().expect("name").as_bytes().to_vec()
        };
        let body = if c["body"] == "exe" {
            b"MZ\x90\x00 not a document".to_vec()
        } else {
            pdf(c["id"].as_str().unwrap_or(""))
        };
        let mut path = format!("{src}/").into_bytes();
        path.extend_from_slice(&raw);
        env.drop_file(&path, &body, Duration::from_secs(60));
        let sidecar = if c.get("sidecar_repeat").is_some() {
            Some(repeat(&c["sidecar_repeat"]))
        } else {
            c["sidecar"].as_str().map(str::to_owned)
        };
        if let Some(s) = sidecar {
            let mut sp = path.clone();
            sp.extend_from_slice(b".json");
            env.drop_file(&sp, s.as_bytes(), Duration::from_secs(60));
        }
        names.push((c.clone(), raw));
    }
    let rep = env.run(&r, "it-hostile").await;
    let mut bad = Vec::new();
    let mut table = String::from("| case | expected | outcome |\n|---|---|---|\n");
    for (c, raw) in &names {
        let rel = xecm_core::domain::names::escape_non_utf8(raw);
        let id = c["id"].as_str().unwrap_or("?");
        let expect = c["expect"].as_str().unwrap_or("?");
        let f = rep.files.iter().find(|f| f.source_path == rel);
        let outcome = match f {
            None => "ignored".to_owned(),
            Some(f) => format!("{:?}", f.outcome),
        };
        let ok = match (expect, f) {
            ("ignored", None) => true,
            ("created", Some(f)) if f.outcome == FileOutcome::Created => {
                let node = NodeId::new(f.node_id.unwrap_or(0)).expect("node");
                let n = env.ecm.node(node).await.expect("node");
                let h = env.history(node.get()).await;
                xecm_core::ports::ecm::check_name(&n.name).is_ok()
                    // (the server may trim the recorded value)
                    && h.get("9002_4").and_then(Value::as_str).map(str::trim) == Some(rel.trim())
            }
            ("failed", Some(f)) if f.outcome == FileOutcome::Failed => {
                let reason = f.reason.clone().unwrap_or_default();
                let moved = f.moved_to.clone().unwrap_or_default();
                reason.contains(c["reason_contains"].as_str().unwrap_or(""))
                    && !moved.contains('\u{202e}')
                    && reason.len() < 4000
            }
            _ => false,
        };
        table.push_str(&format!("| {id} | {expect} | {outcome} |\n"));
        if !ok {
            bad.push(format!("{id}: expected {expect}, got {f:?}"));
        }
    }
    println!("\n{table}");
    assert!(bad.is_empty(), "{bad:#?}");
}
