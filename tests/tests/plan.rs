//! Validate-and-plan against the real parts (sshd, the Content Server
//! emulator): a plan of a mixed partner drop reports, per file, what a run
//! would do (ready or not, the rule, workspace and folder by name and id,
//! existing or to be created, the document name, the conflict outcome, the
//! metadata), changes nothing on the SFTP server or in the ECM, and agrees
//! with what the run then does. The real `sftp-ingest` binary plans with
//! `--plan`, and refuses a bad route naming the field and the value.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use xecm_core::domain::route::{IngestEvent, Route, parse_ingest_event};
use xecm_core::flows::ingest::{FileOutcome, IngestDeps, RunContext, SystemClock};
use xecm_core::flows::plan::{self, IngestPlan, PlanAction};
use xecm_core::ports::ecm::{BusinessObject, ChildFilter, Ecm, NodeId};

#[path = "common/ingest_env.rs"]
mod ingest_env;
use ingest_env::Env;

fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
}

/// The demo route (`events/ingest-demo.json`), asked to plan, with files
/// also needing to be a minute old (so a fresh file is not ready).
fn demo_event(action: Option<&str>) -> Value {
    let text = std::fs::read_to_string(workspace_root().join("events/ingest-demo.json"))
        .expect("demo event");
    let mut ev: Value = serde_json::from_str(&text).expect("json");
    ev["route"]["readiness"]["min_age_secs"] = json!(60);
    if let Some(a) = action {
        ev["action"] = json!(a);
    }
    ev
}

/// Every entry under the SFTP data root (dot-files and work folders too):
/// path → (kind, size, mtime in ns, mode).
fn sftp_snapshot(root: &Path) -> BTreeMap<PathBuf, (bool, u64, i128, u32)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let p = e.path();
            let m = std::fs::symlink_metadata(&p).expect("metadata");
            let rel = p.strip_prefix(root).unwrap_or(&p).to_path_buf();
            if m.is_dir() {
                stack.push(p.clone());
                // A directory's mtime changes with any entry made or removed in it.
                out.insert(rel, (true, 0, mtime_ns(&m), m.mode()));
            } else {
                out.insert(rel, (false, m.len(), mtime_ns(&m), m.mode()));
            }
        }
    }
    out
}

fn mtime_ns(m: &std::fs::Metadata) -> i128 {
    i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec())
}

/// Every node under the Enterprise volume and the seeded workspaces: id →
/// its name, parent, type, size, versions and categories (as text).
async fn ecm_snapshot(env: &Env) -> BTreeMap<i64, String> {
    let ecm = &env.ecm;
    let mut out = BTreeMap::new();
    let mut stack = vec![ecm.enterprise_volume().await.expect("volume")];
    stack.extend(
        [5001, 5002, 5101, 5201, 5301, 5401]
            .into_iter()
            .filter_map(NodeId::new),
    );
    let mut seen = std::collections::BTreeSet::new();
    while let Some(id) = stack.pop() {
        if !seen.insert(id.get()) {
            continue;
        }
        let mut page = 1;
        loop {
            let p = ecm
                .children(id, &ChildFilter::default(), page, 500)
                .await
                .expect("children");
            for n in &p.items {
                let mut text = format!(
                    "{:?} in {:?} type {} size {:?}",
                    n.name, n.parent_id, n.node_type, n.size
                );
                if n.is_container() {
                    stack.push(n.id);
                } else {
                    let versions = ecm.versions(n.id).await.expect("versions");
                    let cats = ecm.categories(n.id).await.expect("categories");
                    text.push_str(&format!(" versions {} categories {cats:?}", versions.len()));
                }
                out.insert(n.id.get(), text);
            }
            if !p.has_next() {
                break;
            }
            page += 1;
        }
    }
    out
}

/// Drops the demo delivery (tests/demo/drop.sh, which also puts the draft
/// the redline versions into the contract workspace), makes it two minutes
/// old, and adds one invoice still being written (fresh).
fn drop_mixed(env: &Env) {
    let status = Command::new(workspace_root().join("tests/demo/drop.sh"))
        .arg(env.data_root())
        .env("XECM_ECM_URL", env.stack.emulator.base_url())
        .stdout(std::process::Stdio::null())
        .status()
        .expect("drop.sh");
    assert!(status.success());
    let dir = env.data_root().join("inbound/partners");
    let old = SystemTime::now() - Duration::from_secs(120);
    for e in std::fs::read_dir(&dir).expect("drop dir").flatten() {
        let f = std::fs::File::options()
            .write(true)
            .open(e.path())
            .expect("open");
        f.set_modified(old).expect("mtime");
    }
    env.drop_file(
        b"inbound/partners/INV-004714_0000100002.pdf",
        b"%PDF-1.7\n% still being written",
        Duration::ZERO,
    );
}

fn route_of(ev: Value) -> Route {
    match parse_ingest_event(ev).expect("valid event") {
        IngestEvent::Plan(r) | IngestEvent::Scheduled(r) => r,
        other => panic!("unexpected event {other:?}"),
    }
}

async fn plan_of(env: &Env, route: &Route) -> IngestPlan {
    let deps = IngestDeps {
        store: env.store.as_ref(),
        ecm: &env.ecm,
        events: &env.events,
        clock: &SystemClock,
        sftp_host: "127.0.0.1".into(),
    };
    let ctx = RunContext::new("plan-test", Duration::from_secs(120));
    plan::ingest(route, &deps, &ctx).await.expect("plan")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_of_a_mixed_drop_says_what_a_run_does_and_changes_nothing() {
    let env = Env::start().await;
    drop_mixed(&env);
    // The console form: {"action":"plan", "route": {...}}.
    let planned = route_of(demo_event(Some("plan")));
    assert!(matches!(
        parse_ingest_event(demo_event(Some("plan"))),
        Ok(IngestEvent::Plan(_))
    ));

    let sftp_before = sftp_snapshot(&env.data_root());
    let ecm_before = ecm_snapshot(&env).await;
    let p = plan_of(&env, &planned).await;
    let text = serde_json::to_string_pretty(&p).expect("plan json");
    let by: BTreeMap<&str, &plan::FilePlan> = p
        .files
        .iter()
        .map(|f| (f.source_path.as_str(), f))
        .collect();
    let file = |name: &str| -> &plan::FilePlan {
        by.get(name)
            .copied()
            .unwrap_or_else(|| panic!("{name} not in the plan:\n{text}"))
    };
    assert!(p.dry_run);
    assert_eq!(p.route, "demo-partner-drop");

    // Ready, existing workspace, folders partly there.
    let inv = file("INV-004711_0000100001.pdf");
    assert_eq!(inv.action, PlanAction::Create, "{text}");
    assert_eq!(inv.ready, Some(true));
    assert_eq!(inv.rule.as_deref(), Some("supplier-invoice"));
    assert_eq!(inv.file_type, Some("pdf"));
    assert_eq!(inv.document_name.as_deref(), Some("Invoice 004711.pdf"));
    let ws = inv.workspace.as_ref().expect("workspace");
    assert!(ws.exists);
    assert_eq!(ws.id, Some(5001));
    assert_eq!(ws.name, "Acme Supplies GmbH (0000100001)");
    let folder = inv.folder.as_ref().expect("folder");
    assert!(
        folder
            .path
            .starts_with("Acme Supplies GmbH (0000100001)/Invoices/"),
        "{folder:?}"
    );
    assert_eq!(folder.steps[0].name, "Invoices");
    assert!(
        folder.steps[0].exists && folder.steps[0].id.is_some(),
        "{folder:?}"
    );
    assert!(
        !folder.steps[1].exists,
        "a year folder is created: {folder:?}"
    );
    let cats = inv.categories.as_ref().expect("categories");
    assert_eq!(cats[&9005]["9005_2"], "004711");
    assert_eq!(cats[&9002]["9002_4"], "INV-004711_0000100001.pdf");
    assert_eq!(inv.rm_classification, Some(7002));

    // A new supplier: its workspace would be created from the template.
    let new = file("INV-004712_0000100003.pdf");
    assert_eq!(new.action, PlanAction::Create);
    let ws = new.workspace.as_ref().expect("workspace");
    assert!(!ws.exists && ws.id.is_none(), "{ws:?}");
    assert_eq!(ws.create_from_template, Some(20001));
    assert_eq!(ws.name, "Supplier 0000100003");
    assert!(
        new.folder
            .as_ref()
            .expect("folder")
            .steps
            .iter()
            .all(|s| !s.exists)
    );

    // The name is taken: add-version makes it version 2.
    let redline = file("4600000001_MSA_redline.docx");
    assert_eq!(redline.action, PlanAction::AddVersion, "{text}");
    assert_eq!(redline.rule.as_deref(), Some("contract-redline"));
    let existing = redline.existing.as_ref().expect("existing document");
    assert_eq!(existing.name, "Master Supply Agreement.docx");
    assert_eq!(existing.latest_version, Some(1));
    assert!(
        redline
            .reason
            .as_deref()
            .unwrap_or("")
            .contains("version 2"),
        "{redline:?}"
    );
    assert_eq!(
        redline
            .folder
            .as_ref()
            .and_then(|f| f.steps.first())
            .map(|s| s.exists),
        Some(true)
    );

    // Metadata from the CSV index picks the rule, the workspace and the folder.
    let qr = file("QR-2026-Q3-audit.pdf");
    assert_eq!(qr.action, PlanAction::Create, "{text}");
    assert_eq!(qr.rule.as_deref(), Some("compliance-report"));
    let meta = qr.metadata.as_ref().expect("metadata");
    assert_eq!(meta["period"], "2026-Q3");
    assert_eq!(meta["report_type"], "audit");
    assert_eq!(qr.workspace.as_ref().and_then(|w| w.id), Some(5301));
    assert_eq!(
        qr.folder.as_ref().map(|f| f.path.as_str()),
        Some("Quality Reports Plant 1000/Reports/2026-Q3")
    );
    assert_eq!(
        qr.categories.as_ref().expect("cats")[&9006]["9006_3"],
        "2026-Q3"
    );
    let index = file("index-2026-11.csv");
    assert_eq!(index.role, "index");
    assert_eq!(index.action, PlanAction::Companion);
    assert!(
        index.reason.as_deref().unwrap_or("").contains("2 document"),
        "{index:?}"
    );

    // Unmatched, a fake PDF, and a file still being written.
    let notes = file("notes-for-accounting.txt");
    assert_eq!(notes.action, PlanAction::Fail);
    assert!(
        notes
            .reason
            .as_deref()
            .unwrap_or("")
            .contains("no rule matches"),
        "{notes:?}"
    );
    let fake = file("INV-004713_0000100001.pdf");
    assert_eq!(fake.action, PlanAction::Fail);
    assert!(
        fake.reason
            .as_deref()
            .unwrap_or("")
            .contains("promises pdf"),
        "{fake:?}"
    );
    let fresh = file("INV-004714_0000100002.pdf");
    assert_eq!(fresh.action, PlanAction::Wait, "{fresh:?}");
    assert_eq!(fresh.ready, Some(false));
    assert!(
        fresh.reason.as_deref().unwrap_or("").contains("not ready"),
        "{fresh:?}"
    );
    assert_eq!(file("TX_1000_20261126.csv").action, PlanAction::Create);
    assert_eq!(p.counts.create, 5, "{text}");
    assert_eq!(p.counts.add_version, 1);
    assert_eq!(p.counts.fail, 2);
    assert_eq!(p.counts.wait, 1);
    assert_eq!(
        p.files.len(),
        10,
        "every listed file is accounted for:\n{text}"
    );

    // Nothing changed: not one file, directory or mtime on the SFTP server,
    // not one node, version or category value in the ECM.
    assert_eq!(sftp_snapshot(&env.data_root()), sftp_before);
    assert_eq!(ecm_snapshot(&env).await, ecm_before);
    let bo = BusinessObject {
        ext_system_id: "SAP".into(),
        bo_type: "LFA1".into(),
        bo_id: "0000100003".into(),
    };
    assert!(
        env.ecm
            .workspace_by_business_object(&bo)
            .await
            .expect("lookup")
            .is_none()
    );

    // And the run does what the plan said.
    let scheduled = route_of(demo_event(None));
    let run = env.run(&scheduled, "after-plan").await;
    for f in &run.files {
        let planned = file(&f.source_path);
        let expected = match planned.action {
            PlanAction::Create => FileOutcome::Created,
            PlanAction::AddVersion => FileOutcome::VersionAdded,
            PlanAction::Fail => FileOutcome::Failed,
            PlanAction::Wait => FileOutcome::Deferred,
            other => panic!(
                "{}: the run reported {:?}, the plan {other:?}",
                f.source_path, f.outcome
            ),
        };
        assert_eq!(
            f.outcome, expected,
            "{}: {f:?}\nplan: {planned:?}",
            f.source_path
        );
    }
    assert_eq!(run.counts.ingested, 6, "{run:#?}");
    let created = run
        .files
        .iter()
        .find(|f| f.source_path == "4600000001_MSA_redline.docx")
        .expect("redline");
    assert_eq!(created.version, Some(2));
    let qr_run = run
        .files
        .iter()
        .find(|f| f.source_path == "QR-2026-Q3-audit.pdf")
        .expect("report");
    assert_eq!(
        qr_run.node_id.map(|n| n > 0),
        Some(true),
        "the report was created where the plan said"
    );
    let qr_node = NodeId::new(qr_run.node_id.unwrap_or(0)).expect("node");
    let parent = env
        .ecm
        .node(qr_node)
        .await
        .expect("node")
        .parent_id
        .expect("parent");
    assert_eq!(env.ecm.node(parent).await.expect("folder").name, "2026-Q3");
}

/// A second plan after the run: the same files are now conflicts (or, for
/// identical content, skips), still without a change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_after_a_run_reports_the_conflicts_of_a_second_delivery() {
    let env = Env::start().await;
    let mut ev = demo_event(None);
    ev["route"]["source_dir"] = json!("inbound/again");
    ev["route"]["readiness"] = json!({"min_age_secs": 1});
    let route = route_of(ev);
    let pdf = b"%PDF-1.7\n1 0 obj << >> endobj\n%%EOF\n";
    env.drop_file(
        b"inbound/again/INV-004720_0000100001.pdf",
        pdf,
        Duration::from_secs(30),
    );
    env.drop_file(
        b"inbound/again/TX_1000_20261201.csv",
        b"a;b\n1;2\n",
        Duration::from_secs(30),
    );
    let run = env.run(&route, "first").await;
    assert_eq!(run.counts.ingested, 2, "{run:#?}");
    // The partner sends both again: the invoice unchanged, the
    // transactions with new content (on_existing "fail").
    env.drop_file(
        b"inbound/again/INV-004720_0000100001.pdf",
        pdf,
        Duration::from_secs(30),
    );
    env.drop_file(
        b"inbound/again/TX_1000_20261201.csv",
        b"a;b\n1;3\n",
        Duration::from_secs(30),
    );
    let sftp_before = sftp_snapshot(&env.data_root());
    let ecm_before = ecm_snapshot(&env).await;
    let p = plan_of(&env, &route).await;
    let text = serde_json::to_string_pretty(&p).expect("json");
    let inv = p
        .files
        .iter()
        .find(|f| f.source_path == "INV-004720_0000100001.pdf")
        .expect("invoice");
    assert_eq!(inv.action, PlanAction::Skip, "{text}");
    assert!(inv.existing.is_some());
    let tx = p
        .files
        .iter()
        .find(|f| f.source_path == "TX_1000_20261201.csv")
        .expect("tx");
    assert_eq!(tx.action, PlanAction::Fail, "{text}");
    assert!(
        tx.reason.as_deref().unwrap_or("").contains("on_existing"),
        "{tx:?}"
    );
    assert_eq!(sftp_snapshot(&env.data_root()), sftp_before);
    assert_eq!(ecm_snapshot(&env).await, ecm_before);
}

/// `sftp-ingest --plan --event FILE`: the local invocation plans; an event
/// with another action and a route with a bad value are refused, naming
/// the field and the value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_plans_with_the_plan_flag_and_names_bad_fields() {
    let binary = xecm_stack::lambda::function_binary("sftp-ingest").expect("binary built");
    let env = Env::start().await;
    env.drop_file(
        b"inbound/cli/INV-004799_0000100002.pdf",
        b"%PDF-1.7\n1 0 obj << >> endobj\n%%EOF\n",
        Duration::from_secs(120),
    );
    let dir = tempfile::tempdir().expect("tmp");
    let run = |ev: &Value, plan: bool| {
        let file = dir.path().join("event.json");
        std::fs::write(&file, ev.to_string()).expect("event file");
        let mut cmd = Command::new(&binary);
        if plan {
            cmd.arg("--plan");
        }
        cmd.arg("--event")
            .arg(&file)
            .envs(
                env.stack
                    .env()
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str())),
            )
            .env("XECM_LOCAL_TIMEOUT_SECS", "120")
            .output()
            .expect("run sftp-ingest")
    };
    let mut ev = demo_event(None);
    ev["route"]["source_dir"] = json!("inbound/cli");
    let before = sftp_snapshot(&env.data_root());
    let out = run(&ev, true);
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    let p: Value = serde_json::from_slice(&out.stdout).expect("JSON plan");
    assert_eq!(p["dry_run"], json!(true), "{p:#}");
    assert_eq!(
        p["files"][0]["source_path"],
        json!("INV-004799_0000100002.pdf")
    );
    assert_eq!(p["files"][0]["action"], json!("create"), "{p:#}");
    assert_eq!(p["files"][0]["workspace"]["id"], json!(5002));
    assert_eq!(
        sftp_snapshot(&env.data_root()),
        before,
        "the plan moved something"
    );

    let mut retry = ev.clone();
    retry["action"] = json!("retry");
    let out = run(&retry, true);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("\"retry\""), "{err}");

    let mut bad = ev.clone();
    bad["route"]["rules"][0]["place"]["on_existing"] = json!("overwrite");
    let out = run(&bad, true);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("route.rules[0].place.on_existing"), "{err}");
    assert!(err.contains("overwrite"), "{err}");

    let mut bad = ev;
    bad["route"]["limits"]["lease_secs"] = json!(60);
    let out = run(&bad, true);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("route.limits.lease_secs"), "{err}");
    assert!(err.contains("60"), "{err}");
    assert_eq!(sftp_snapshot(&env.data_root()), before);
}

/// `{"action":"plan","node_id":N}` of `ecm-export`: per route, the approval
/// verdict; the route, destination and rendered path that would deliver
/// the node; no delivery, history or event (the ECM is unchanged).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_plan_names_route_destination_path_and_approval_verdicts() {
    use xecm_core::domain::export_route::{ExportConfig, ExportManualEvent};
    use xecm_core::ports::ecm::{AppliedCategory, Content, UploadRequest};

    let env = Env::start().await;
    let routes = ExportConfig::from_json(
        &json!({
            "export_history": {"category_id": 9003, "attributes": {"version": 2, "exported_at": 3, "destination": 4, "sha256": 5, "deliveries": 6}},
            "routes": [
                {"name": "price-lists",
                 "approval": {"category_id": 9001, "attribute": "9001_2", "value": "Approved", "ancestor_id": 3101},
                 "destinations": [
                    {"name": "eu", "when": {"categories": {"9001_4": "EU"}}, "sftp_secret": "s",
                     "directory": "outbound/{cat.9001_4}", "file_name": "{stem}_v{version}.{ext}"},
                    {"name": "rest", "sftp_secret": "s", "directory": "outbound/other"}
                 ]},
                {"name": "customer-packages",
                 "approval": {"category_id": 9001, "attribute": "9001_2", "value": "Approved", "ancestor_id": 5101},
                 "destinations": [{"name": "portal", "sftp_secret": "s", "directory": "packages"}]}
            ]
        })
        .to_string(),
    )
    .expect("routes");
    let doc = |name: &'static str, values: Value| {
        let ecm = &env.ecm;
        async move {
            let body = bytes::Bytes::from_static(b"sku;price\n1;9.99\n");
            ecm.upload(UploadRequest {
                parent: NodeId::new(3101).expect("id"),
                name: name.into(),
                description: None,
                categories: vec![AppliedCategory {
                    category_id: 9001,
                    values: values
                        .as_object()
                        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                        .unwrap_or_default(),
                }],
                classifications: vec![],
                content: Content {
                    length: body.len() as u64,
                    stream: Box::pin(futures_util::stream::iter([Ok(body)])),
                    file_name: name.into(),
                    mime_type: "text/csv".into(),
                },
            })
            .await
            .expect("upload")
            .node_id
        }
    };
    let approved = doc(
        "Prices EU.csv",
        json!({"9001_2": "Approved", "9001_4": "EU"}),
    )
    .await;
    let review = doc("Prices draft.csv", json!({"9001_2": "In Review"})).await;
    let before = ecm_snapshot(&env).await;

    // The console event parses (with `$schema`, as a sample would carry it).
    let ev = ExportManualEvent::from_json(
        json!({"$schema": "x", "action": "plan", "node_id": approved.get()}),
    )
    .expect("plan event");
    assert!(matches!(ev, ExportManualEvent::Plan { route: None, .. }));

    let p = plan::export(&env.ecm, &routes, approved.get(), None)
        .await
        .expect("plan");
    assert_eq!(p.verdict, "deliver", "{p:#?}");
    assert_eq!(p.route.as_deref(), Some("price-lists"));
    assert_eq!(p.destination.as_deref(), Some("eu"));
    assert_eq!(
        p.remote_path.as_deref(),
        Some("outbound/EU/Prices EU_v1.csv")
    );
    assert_eq!(p.version, 1);
    assert!(p.routes[0].approved, "{p:#?}");
    assert!(!p.routes[1].approved);
    assert!(p.routes[1].reason.contains("not under node 5101"), "{p:#?}");

    let p = plan::export(&env.ecm, &routes, review.get(), None)
        .await
        .expect("plan");
    assert_eq!(p.verdict, "rejected", "{p:#?}");
    assert!(p.route.is_none());
    assert!(
        p.routes[0].reason.contains("\"In Review\""),
        "{:?}",
        p.routes[0]
    );

    let p = plan::export(&env.ecm, &routes, approved.get(), Some("customer-packages"))
        .await
        .expect("plan");
    assert_eq!(p.verdict, "rejected");
    assert_eq!(p.routes.len(), 1);
    let e = plan::export(&env.ecm, &routes, approved.get(), Some("no-such-route"))
        .await
        .expect_err("unknown route");
    assert!(e.to_string().contains("no-such-route"), "{e}");

    assert_eq!(ecm_snapshot(&env).await, before, "the plan changed the ECM");
}
