//! The sample events in `events/` parsed into the domain types. Every file in
//! that directory must be handled here, so a sample cannot drift from the
//! code (the same files feed `cargo lambda invoke --data-file`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use chrono::{TimeZone, Utc};
use secrecy::SecretString;

use super::backup::{BackupEvent, parse_backup_event};
use super::classify::{Candidate, Metadata, classify};
use super::export_route::{ExportConfig, ExportDecision, ExportManualEvent, NodeFacts, decide};
use super::placement::plan;
use super::route::{IngestEvent, parse_ingest_event};
use super::transfer::TransferFacts;
use super::webhook::{FunctionUrlEvent, WebhookPolicy, WebhookRequest, verify};

/// The HMAC key the sample webhook is signed with (see `events/README.md`).
const SAMPLE_HMAC_KEY: &str = "local-demo-hmac-key";

fn events_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../events")
}

fn read(name: &str) -> String {
    std::fs::read_to_string(events_dir().join(name)).unwrap()
}

fn json(name: &str) -> serde_json::Value {
    serde_json::from_str(&read(name)).unwrap()
}

#[test]
fn given_events_dir_when_listed_then_every_sample_is_covered_by_a_test() {
    let covered = [
        "README.md",
        "backup-continuation-envelope.json",
        "backup-continue.json",
        "backup-manual-restore.json",
        "backup-manual-verify.json",
        "backup-scheduled.json",
        "export-manual-package.json",
        "export-manual-resend.json",
        "export-routes.json",
        "export-sweep.json",
        "export-webhook-approved.json",
        "ingest-demo.json",
        "ingest-manual-retry.json",
        "ingest-scheduled.json",
        "ingest-sqs-worker.json",
    ];
    let mut found: Vec<String> = std::fs::read_dir(events_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    found.sort();
    assert_eq!(found, covered, "add a test for each new sample");
}

#[test]
fn given_demo_ingest_sample_when_parsed_then_valid_with_the_local_sftp_secret() {
    let IngestEvent::Scheduled(route) = parse_ingest_event(json("ingest-demo.json")).unwrap()
    else {
        panic!("not a scheduled event");
    };
    assert_eq!(route.config.sftp_secret, "xecm/local/sftp");
    assert_eq!(route.rules.len(), 4);
}

#[test]
fn given_scheduled_ingest_sample_when_parsed_then_invoice_is_classified_and_placed() {
    let IngestEvent::Scheduled(route) = parse_ingest_event(json("ingest-scheduled.json")).unwrap()
    else {
        panic!("not a scheduled event");
    };
    assert_eq!(route.name(), "acme-supplier-invoices");
    let meta = Metadata::new();
    let head = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n";
    let c = classify(
        &route,
        &Candidate {
            rel_path: "INV-004711_0000100001.pdf",
            size: 2048,
            head,
            meta: &meta,
        },
    )
    .unwrap();
    assert_eq!(c.rule, Some("supplier-invoice"));
    let received = Utc
        .with_ymd_and_hms(2026, 11, 27, 8, 30, 0)
        .single()
        .unwrap();
    let facts = TransferFacts {
        route: route.name().into(),
        host: "127.0.0.1".into(),
        source_path: "INV-004711_0000100001.pdf".into(),
        size: 2048,
        sha256: "ab".repeat(32),
        received_at: received,
        ingested_at: received,
        invocation_id: "local".into(),
    };
    let p = plan(&route, &c, &facts, &meta).unwrap();
    assert_eq!(p.folder, vec!["Invoices", "2026", "11"]);
    assert_eq!(p.document_name, "Invoice 004711.pdf");
    assert_eq!(p.categories[&9002]["9002_11"], "INV-004711_0000100001.pdf");
    assert_eq!(p.categories[&9005]["9005_2"], "004711");
    assert_eq!(p.rm_classification, Some(7002));

    // The indexed credit-note rule draws on CSV index metadata.
    let ix = route.index.as_ref().unwrap();
    let rows = super::classify::parse_csv_index(
        "index-20261127.csv",
        b"file;doc_type;credit_note_no;vendor_id;po_number;amount\nCN-2026-0042.pdf;credit_note;CN-42;0000100001;PO-9;-120\n",
        ix,
    )
    .unwrap();
    let meta = &rows["CN-2026-0042.pdf"];
    let c = classify(
        &route,
        &Candidate {
            rel_path: "CN-2026-0042.pdf",
            size: 2048,
            head,
            meta,
        },
    )
    .unwrap();
    assert_eq!(c.rule, Some("indexed-credit-note"));
    let p = plan(
        &route,
        &c,
        &TransferFacts {
            source_path: "CN-2026-0042.pdf".into(),
            ..facts
        },
        meta,
    )
    .unwrap();
    assert_eq!(p.document_name, "CN-2026-0042 (PO-9).pdf");
    assert_eq!(p.folder, vec!["Invoices", "Credit notes", "2026"]);
    assert_eq!(p.hold, Some(8001));
}

#[test]
fn given_sqs_worker_sample_when_parsed_then_one_message_for_the_scheduled_route_with_fan_out() {
    let ev = json("ingest-sqs-worker.json");
    let records = super::work_message::parse_sqs_event(&ev).unwrap().unwrap();
    assert_eq!(records.len(), 1);
    let w = super::work_message::WorkMessage::parse(&records[0].body).unwrap();
    // The route is the scheduled sample's, plus its fan-out setting.
    let mut route = serde_json::to_value(&w.route.config).unwrap();
    let fan_out = route.as_object_mut().unwrap().remove("fan_out").unwrap();
    assert_eq!(fan_out["max_receives"], 5);
    let IngestEvent::Scheduled(scheduled) =
        parse_ingest_event(json("ingest-scheduled.json")).unwrap()
    else {
        panic!("scheduled sample")
    };
    assert_eq!(route, serde_json::to_value(&scheduled.config).unwrap());
    assert_eq!(w.msg.source_path, "INV-1234_0000012345.pdf");
    assert_eq!(w.tag.attempt, 1);
}

#[test]
fn given_manual_retry_sample_when_parsed_then_files_and_route_loaded() {
    let IngestEvent::Retry { route, files } =
        parse_ingest_event(json("ingest-manual-retry.json")).unwrap()
    else {
        panic!("not a retry event");
    };
    assert_eq!(route.name(), "acme-supplier-invoices");
    assert_eq!(files, vec!["INV-004711_0000100001.pdf", "CN-2026-0042.pdf"]);
}

#[test]
fn given_webhook_sample_when_verified_with_demo_key_then_callback_leads_to_delivery() {
    let ev: FunctionUrlEvent =
        serde_json::from_value(json("export-webhook-approved.json")).unwrap();
    let ts: i64 = ev.headers["x-xecm-timestamp"].parse().unwrap();
    let policy = WebhookPolicy::default();
    let req = WebhookRequest::from_function_url(ev, &policy).unwrap();
    let keys = [SecretString::from(SAMPLE_HMAC_KEY)];
    let cb = verify(&policy, &req, &keys, ts + 10).unwrap();
    assert_eq!(
        (
            cb.node_id,
            cb.version,
            cb.attribute.as_str(),
            cb.value.as_str()
        ),
        (4711, 3, "9001_2", "Approved")
    );
    // Stale now, and wrong keys never verify.
    assert_eq!(
        verify(&policy, &req, &keys, ts + 301).unwrap_err().status,
        401
    );
    assert_eq!(
        verify(&policy, &req, &[SecretString::from("other")], ts)
            .unwrap_err()
            .status,
        401
    );

    let routes = ExportConfig::from_json(&read("export-routes.json")).unwrap();
    let node = NodeFacts {
        node_id: cb.node_id,
        name: "Price list 2026.xlsx".into(),
        version: cb.version,
        categories: BTreeMap::from([
            (cb.attribute.clone(), cb.value.clone()),
            ("9001_6".into(), "EU".into()),
        ]),
        ancestors: vec![3101, 3100, 2000],
        workspace_type_id: None,
    };
    let ExportDecision::Deliver(d) = decide(&routes, &node, None, cb.approved_at.to_utc()).unwrap()
    else {
        panic!("not delivered");
    };
    assert_eq!(d.destination, "distributors-eu");
    assert_eq!(d.directory, vec!["inbound", "price-lists", "2026"]);
    assert_eq!(d.file_name, "Price list 2026_v3.xlsx");
}

#[test]
fn given_manual_export_samples_when_parsed_then_they_name_configured_routes() {
    let routes = ExportConfig::from_json(&read("export-routes.json")).unwrap();
    let names: Vec<&str> = routes.routes.iter().map(|r| r.name.as_str()).collect();
    for file in [
        "export-manual-resend.json",
        "export-manual-package.json",
        "export-sweep.json",
    ] {
        let ev = ExportManualEvent::from_json(json(file)).unwrap();
        let route = match &ev {
            ExportManualEvent::Resend { route, .. }
            | ExportManualEvent::ExportPackage { route, .. }
            | ExportManualEvent::Sweep { route, .. } => route,
            other => panic!("{file}: {other:?}"),
        };
        assert!(names.contains(&route.as_str()), "{file}: {route}");
    }
}

#[test]
fn given_backup_sample_when_parsed_then_scheduled_job_is_valid() {
    let BackupEvent::Scheduled(b) = parse_backup_event(json("backup-scheduled.json")).unwrap()
    else {
        panic!("not scheduled");
    };
    assert_eq!((b.roots.as_slice(), b.retention), (&[3001, 3003][..], 14));
}

#[test]
fn given_backup_manual_and_continuation_samples_when_parsed_then_actions_match() {
    assert!(matches!(
        parse_backup_event(json("backup-continue.json")).unwrap(),
        BackupEvent::Continue { .. }
    ));
    // The envelope's detail is what the continuation rule passes on.
    let env = json("backup-continuation-envelope.json");
    assert_eq!(env["detail-type"], "Snapshot Continuation");
    assert_eq!(
        parse_backup_event(env["detail"].clone()).unwrap(),
        parse_backup_event(json("backup-continue.json")).unwrap()
    );
    assert!(matches!(
        parse_backup_event(json("backup-manual-verify.json")).unwrap(),
        BackupEvent::Verify { .. }
    ));
    assert!(matches!(
        parse_backup_event(json("backup-manual-restore.json")).unwrap(),
        BackupEvent::Restore {
            target_folder: 3100,
            ..
        }
    ));
}

#[test]
fn given_hostile_names_when_taken_through_the_ingest_decisions_then_nothing_escapes() {
    use super::claim::{ClaimTag, failed_paths, parse_claimed_path};
    use super::names::escape_non_utf8;
    use super::route::EntryRole;

    let mut v = json("ingest-scheduled.json");
    v["route"]["fallback"] = serde_json::json!({"place": {
        "workspace": {"by": "node", "node_id": 3005}, "folder": "Unsorted/{yyyy-mm-dd}", "name": "{name}"}});
    let IngestEvent::Scheduled(route) = parse_ingest_event(v).unwrap() else {
        panic!("not scheduled");
    };
    let long = format!("{}.pdf", "a".repeat(300)).into_bytes();
    let refused: [&[u8]; 5] = [
        b"../x.pdf",
        b"a\0b.pdf",
        b".hidden.pdf",
        b"sub/x.pdf",
        b"..\\..\\x.pdf",
    ];
    for raw in refused {
        let name = escape_non_utf8(raw);
        assert!(
            matches!(route.entry_role(&name), EntryRole::Ignored(_)),
            "{name:?}"
        );
    }
    let accepted: [&[u8]; 5] = [
        b"ctl\x07\x1b[31m.pdf",
        &long,
        b"r\xe9sum\xe9.pdf",
        b"Re: offer.pdf",
        b"a\\..\\x.pdf",
    ];
    let meta = Metadata::new();
    let head = b"%PDF-1.4\n";
    let at = Utc
        .with_ymd_and_hms(2026, 11, 27, 8, 30, 0)
        .single()
        .unwrap();
    for raw in accepted {
        let name = escape_non_utf8(raw);
        assert_eq!(route.entry_role(&name), EntryRole::Document, "{name:?}");
        let c = classify(
            &route,
            &Candidate {
                rel_path: &name,
                size: 9,
                head,
                meta: &meta,
            },
        )
        .unwrap();
        let facts = TransferFacts {
            route: route.name().into(),
            host: "h".into(),
            source_path: name.clone(),
            size: 9,
            sha256: "ab".repeat(32),
            received_at: at,
            ingested_at: at,
            invocation_id: "i".into(),
        };
        let p = plan(&route, &c, &facts, &meta).unwrap();
        let doc = &p.document_name;
        assert!(
            doc.chars().count() <= 248 && !doc.contains(':') && !doc.chars().any(char::is_control),
            "{doc:?}"
        );
        assert_eq!(doc.trim(), doc);
        assert!(doc.ends_with(".pdf"), "{doc:?}");
        assert_eq!(p.categories[&9002]["9002_11"], name, "original name kept");
        let (failed, report) = failed_paths(&name, 1);
        for path in [&failed, &report] {
            let rest = path.strip_prefix("failed/").unwrap();
            assert!(
                !rest.contains('/') && !rest.contains('\\') && !rest.starts_with('.'),
                "{path:?}"
            );
            assert!(
                !rest.chars().any(char::is_control) && rest.len() <= 255,
                "{path:?}"
            );
        }
        let tag = ClaimTag::new(route.name(), 1, at.timestamp(), "inv");
        assert_eq!(
            parse_claimed_path(&tag.claimed_path(&name)),
            Some((tag, name.clone()))
        );
    }
}
