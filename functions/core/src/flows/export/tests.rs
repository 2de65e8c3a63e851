//! Unit tests of the export flow against the in-memory doubles.

use super::memory::{
    CountingStore, FixedDestinations, InstrumentedEcm, MemoryDestinations, MemoryStore,
};
use super::*;
use crate::domain::export_route::ExportConfig;
use crate::ports::ecm::memory::MemoryEcm;
use crate::ports::ecm::{Content, UploadRequest};
use crate::ports::events::MemoryEvents;
use async_trait::async_trait;
use serde_json::json;
use std::sync::Arc;

const YEAR_DIR: fn() -> String = || Utc::now().format("%Y").to_string();

#[tokio::test]
async fn read_ahead_passes_chunks_in_order_and_stops_after_an_error() {
    let p = crate::domain::paths::RemoteRoot::parse("/data")
        .and_then(|r| r.resolve("x.bin"))
        .expect("path");
    let items: Vec<Result<Bytes, FileStoreError>> = vec![
        Ok(Bytes::from_static(b"one")),
        Ok(Bytes::from_static(b"two")),
        Err(FileStoreError::source(&p, "connection reset")),
        Ok(Bytes::from_static(b"never")),
    ];
    let mut out = read_ahead(Box::pin(futures_util::stream::iter(items)));
    assert_eq!(out.next().await.expect("1").expect("ok"), "one");
    assert_eq!(out.next().await.expect("2").expect("ok"), "two");
    let e = out.next().await.expect("3").expect_err("the error");
    assert!(e.to_string().contains("connection reset"), "{e}");
    assert!(out.next().await.is_none(), "nothing after the error");
}

#[tokio::test]
async fn read_ahead_lets_go_of_the_download_when_the_writer_stops() {
    // The source notices it was dropped when the consumer goes away.
    struct Guard(Option<tokio::sync::oneshot::Sender<()>>);
    impl Drop for Guard {
        fn drop(&mut self) {
            if let Some(tx) = self.0.take() {
                let _ = tx.send(());
            }
        }
    }
    let (tx, dropped) = tokio::sync::oneshot::channel();
    let guard = Guard(Some(tx));
    let endless = futures_util::stream::repeat_with(move || {
        let _keep = &guard;
        Ok::<_, FileStoreError>(Bytes::from_static(b"chunk"))
    });
    let mut out = read_ahead(Box::pin(endless));
    assert!(out.next().await.is_some());
    drop(out);
    tokio::time::timeout(Duration::from_secs(5), dropped)
        .await
        .expect("the download is dropped once the writer stops")
        .expect("guard fired");
}

fn routes(overwrite: bool) -> ExportRoutes {
    routes_named(overwrite, "{stem}_v{version}.{ext}")
}

fn routes_named(overwrite: bool, file_name: &str) -> ExportRoutes {
    ExportConfig::from_json(
        &json!({
            "export_history": {"category_id": 9003, "attributes": {"version": 2, "exported_at": 3, "destination": 4, "sha256": 5, "deliveries": 6}},
            "routes": [{
                "name": "price-lists",
                "approval": {"category_id": 9001, "attribute": "9001_2", "value": "Approved"},
                "destinations": [{
                    "name": "dist", "sftp_secret": "sftp", "directory": "outbound/{yyyy}",
                    "file_name": file_name, "overwrite": overwrite, "sha256_sidecar": true
                }]
            }]
        })
        .to_string(),
    )
    .unwrap()
}

struct World {
    ecm: InstrumentedEcm<MemoryEcm>,
    events: MemoryEvents,
    mem: Arc<MemoryStore>,
    counting: Arc<CountingStore>,
    dest: FixedDestinations,
    routes: ExportRoutes,
    folder: NodeId,
}

impl World {
    async fn new(overwrite: bool) -> Self {
        Self::with_routes(routes(overwrite)).await
    }

    async fn with_routes(routes: ExportRoutes) -> Self {
        let ecm = InstrumentedEcm::new(MemoryEcm::new());
        let folder = ecm
            .create_folder(NodeId::new(2000).unwrap(), "Pricing")
            .await
            .unwrap();
        let mem = MemoryDestinations::new().unwrap().store;
        let counting = Arc::new(CountingStore::new(mem.clone()));
        World {
            ecm,
            events: MemoryEvents::new(),
            mem,
            counting: counting.clone(),
            dest: FixedDestinations(counting),
            routes,
            folder,
        }
    }

    fn cx(&self) -> ExportContext<'_> {
        ExportContext {
            ecm: &self.ecm,
            events: &self.events,
            destinations: &self.dest,
            routes: &self.routes,
            invocation_id: "inv-1",
            deadline: None,
        }
    }

    fn store(&self) -> &MemoryStore {
        &self.mem
    }

    async fn doc(&self, parent: NodeId, name: &str, status: &str, body: &[u8]) -> NodeId {
        let bytes = Bytes::copy_from_slice(body);
        self.ecm
            .upload(UploadRequest {
                parent,
                name: name.into(),
                description: None,
                categories: vec![AppliedCategory {
                    category_id: 9001,
                    values: [("9001_2".to_string(), json!(status))].into(),
                }],
                classifications: vec![],
                content: Content {
                    length: bytes.len() as u64,
                    stream: Box::pin(futures_util::stream::iter([Ok(bytes)])),
                    file_name: name.into(),
                    mime_type: "application/octet-stream".into(),
                },
            })
            .await
            .unwrap()
            .node_id
    }

    async fn new_version(&self, id: NodeId, body: &[u8]) {
        let bytes = Bytes::copy_from_slice(body);
        self.ecm
            .add_version(
                id,
                None,
                Content {
                    length: bytes.len() as u64,
                    stream: Box::pin(futures_util::stream::iter([Ok(bytes)])),
                    file_name: "x".into(),
                    mime_type: "application/octet-stream".into(),
                },
            )
            .await
            .unwrap();
    }

    fn exported(&self) -> Vec<serde_json::Value> {
        self.events
            .events()
            .into_iter()
            .filter(|e| e.detail_type == DetailType::DocumentExported)
            .map(|e| e.detail)
            .collect()
    }
}

fn callback(node: NodeId, version: u32) -> ApprovalCallback {
    serde_json::from_value(json!({
        "event": "document.approved", "event_id": format!("evt-{node}-{version}"),
        "node_id": node.get(), "version": version, "category_id": 9001,
        "attribute": "9001_2", "value": "Approved", "approved_at": "2026-11-27T10:00:00Z"
    }))
    .unwrap()
}

#[tokio::test]
async fn approved_document_is_delivered_with_sidecar_history_and_event() {
    let w = World::new(false).await;
    let id = w
        .doc(w.folder, "Prices 2026.xlsx", "Approved", b"price data")
        .await;
    let out = handle_callback(&w.cx(), &callback(id, 1)).await.unwrap();
    let ExportOutcome::Delivered(r) = out else {
        panic!("not delivered: {out:?}")
    };
    let path = format!("/outbound/{}/Prices 2026_v1.xlsx", YEAR_DIR());
    assert_eq!(w.store().file(&path).as_deref(), Some(&b"price data"[..]));
    let sha = sha256_hex(b"price data");
    assert_eq!(r.sha256, sha);
    assert_eq!(
        w.store().file(&format!("{path}.sha256")).as_deref(),
        Some(format!("{sha}  Prices 2026_v1.xlsx\n").as_bytes())
    );
    let hist = w.ecm.categories(id).await.unwrap();
    let h = hist.iter().find(|c| c.category_id == 9003).unwrap();
    assert_eq!(h.values["9003_2"], json!(1));
    assert_eq!(h.values["9003_5"], json!(sha));
    let ev = w.exported();
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0]["resend"], json!(false));
    assert_eq!(ev[0]["event_id"], json!(format!("evt-{id}-1")));
    // The transfer's own time is reported and is part of the delivery's.
    let transfer = r.transfer_ms.expect("a delivery reports its transfer time");
    assert_eq!(ev[0]["transfer_ms"], json!(transfer));
    assert!(
        ev[0]["duration_ms"].as_u64().unwrap() >= transfer,
        "{:?}",
        ev[0]
    );
    // No temporary file is left beside it.
    assert!(
        !w.store().paths().iter().any(|p| p.contains("/.")),
        "{:?}",
        w.store().paths()
    );
}

#[tokio::test]
async fn duplicate_callback_is_acknowledged_without_second_delivery() {
    let w = World::new(false).await;
    let id = w.doc(w.folder, "a.pdf", "Approved", b"one").await;
    handle_callback(&w.cx(), &callback(id, 1)).await.unwrap();
    let puts = w.store().put_count();
    let out = handle_callback(&w.cx(), &callback(id, 1)).await.unwrap();
    let ExportOutcome::Duplicate(r) = out else {
        panic!("not a duplicate: {out:?}")
    };
    assert_eq!(r.transfer_ms, None, "nothing was sent");
    assert_eq!(w.store().put_count(), puts);
    assert_eq!(w.exported().len(), 1);
}

#[tokio::test]
async fn a_new_version_is_delivered_again_under_its_own_name() {
    let w = World::new(false).await;
    let id = w.doc(w.folder, "a.pdf", "Approved", b"one").await;
    handle_callback(&w.cx(), &callback(id, 1)).await.unwrap();
    w.new_version(id, b"two!").await;
    let out = handle_callback(&w.cx(), &callback(id, 2)).await.unwrap();
    assert!(
        matches!(out, ExportOutcome::Delivered(ref r) if r.version == 2),
        "{out:?}"
    );
    let y = YEAR_DIR();
    assert_eq!(
        w.store()
            .file(&format!("/outbound/{y}/a_v2.pdf"))
            .as_deref(),
        Some(&b"two!"[..])
    );
    assert_eq!(
        w.store()
            .file(&format!("/outbound/{y}/a_v1.pdf"))
            .as_deref(),
        Some(&b"one"[..])
    );
}

#[tokio::test]
async fn not_approved_document_is_rejected_with_event_and_not_delivered() {
    let w = World::new(false).await;
    let id = w.doc(w.folder, "a.pdf", "In Review", b"draft").await;
    let out = handle_callback(&w.cx(), &callback(id, 1)).await.unwrap();
    let ExportOutcome::Rejected { reasons, .. } = out else {
        panic!("{out:?}")
    };
    assert!(reasons[0].1.contains("In Review"), "{reasons:?}");
    assert_eq!(w.store().put_count(), 0);
    let ev = w.events.events();
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].detail_type, DetailType::ExportRejected);
}

#[tokio::test]
async fn callback_for_a_version_the_ecm_does_not_show_yet_is_retried() {
    let w = World::new(false).await;
    let id = w.doc(w.folder, "a.pdf", "Approved", b"x").await;
    let err = handle_callback(&w.cx(), &callback(id, 7))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ExportError::VersionNotVisible {
                version: 7,
                latest: 1,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.is_retryable());
    assert_eq!(w.store().put_count(), 0);
    assert!(w.events.events().is_empty());
}

#[tokio::test]
async fn the_approved_version_is_delivered_even_if_a_newer_one_was_added() {
    let w = World::new(false).await;
    let id = w.doc(w.folder, "a.pdf", "Approved", b"one").await;
    // v2 arrives (status carried over) before v1's callback is handled.
    w.new_version(id, b"two!").await;
    let out = handle_callback(&w.cx(), &callback(id, 1)).await.unwrap();
    assert!(
        matches!(out, ExportOutcome::Delivered(ref r) if r.version == 1),
        "{out:?}"
    );
    let y = YEAR_DIR();
    let s = w.store();
    assert_eq!(
        s.file(&format!("/outbound/{y}/a_v1.pdf")).as_deref(),
        Some(&b"one"[..])
    );
    assert!(s.file(&format!("/outbound/{y}/a_v2.pdf")).is_none());
}

#[tokio::test]
async fn a_callback_retried_after_the_date_moved_on_is_not_delivered_again() {
    let w = World::new(false).await;
    let id = w.doc(w.folder, "a.pdf", "Approved", b"ours").await;
    handle_callback(&w.cx(), &callback(id, 1)).await.unwrap();
    let puts = w.store().put_count();
    // As if delivered last year: the history's path has another year
    // than `outbound/{yyyy}` renders now.
    let old = "outbound/1999/a_v1.pdf";
    w.ecm
        .update_category(
            id,
            9003,
            &[
                (
                    "9003_4".to_string(),
                    json!(format!("price-lists/dist:{old}")),
                ),
                (
                    "9003_6".to_string(),
                    json!([crate::domain::export_history::DeliveryRecord {
                        to: "price-lists/dist".into(),
                        version: 1,
                        sha256: sha256_hex(b"ours"),
                        path: old.into(),
                    }
                    .encode()]),
                ),
            ]
            .into(),
        )
        .await
        .unwrap();
    let out = handle_callback(&w.cx(), &callback(id, 1)).await.unwrap();
    let ExportOutcome::Duplicate(r) = out else {
        panic!("{out:?}")
    };
    assert_eq!(r.remote_path, old);
    assert_eq!(w.store().put_count(), puts);
}

#[tokio::test]
async fn resend_does_not_replace_another_documents_file_when_overwrite_is_off() {
    let w = World::new(false).await;
    let id = w.doc(w.folder, "a.pdf", "Approved", b"ours").await;
    // Not delivered by this node: someone else's file of the same name.
    let path = format!("/outbound/{}/a_v1.pdf", YEAR_DIR());
    w.store().insert_file(&path, b"theirs");
    let err = resend(&w.cx(), id.get(), "price-lists", None)
        .await
        .unwrap_err();
    assert!(matches!(err, ExportError::TargetExists { .. }), "{err}");
    assert_eq!(w.store().file(&path).as_deref(), Some(&b"theirs"[..]));
}

#[tokio::test]
async fn unknown_node_is_rejected_not_retried() {
    let w = World::new(false).await;
    let out = handle_callback(&w.cx(), &callback(NodeId::new(999_999).unwrap(), 1))
        .await
        .unwrap();
    assert!(matches!(out, ExportOutcome::Rejected { .. }), "{out:?}");
}

#[tokio::test]
async fn foreign_file_at_target_is_kept_when_overwrite_is_off() {
    let w = World::new(false).await;
    let id = w.doc(w.folder, "a.pdf", "Approved", b"ours").await;
    let path = format!("/outbound/{}/a_v1.pdf", YEAR_DIR());
    w.store().insert_file(&path, b"theirs");
    let err = handle_callback(&w.cx(), &callback(id, 1))
        .await
        .unwrap_err();
    assert!(matches!(err, ExportError::TargetExists { .. }), "{err}");
    assert!(!err.is_retryable());
    assert_eq!(w.store().file(&path).as_deref(), Some(&b"theirs"[..]));
}

#[tokio::test]
async fn identical_file_at_target_counts_as_delivered_when_overwrite_is_off() {
    let w = World::new(false).await;
    let id = w.doc(w.folder, "a.pdf", "Approved", b"ours").await;
    let path = format!("/outbound/{}/a_v1.pdf", YEAR_DIR());
    w.store().insert_file(&path, b"ours");
    let out = handle_callback(&w.cx(), &callback(id, 1)).await.unwrap();
    assert!(matches!(out, ExportOutcome::Duplicate(_)), "{out:?}");
    // The history now records it, so the next duplicate is cheap.
    let hist = w.ecm.categories(id).await.unwrap();
    assert!(hist.iter().any(|c| c.category_id == 9003));
    // An earlier run that stopped after its rename is finished: the
    // sidecar a partner may wait for, and the event.
    let side = w.store().file(&format!("{path}.sha256")).expect("sidecar");
    assert!(String::from_utf8_lossy(&side).ends_with("  a_v1.pdf\n"));
    let ev = w.exported();
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(ev[0]["version"], json!(1));
}

#[tokio::test]
async fn existing_file_is_replaced_when_overwrite_is_on() {
    let w = World::new(true).await;
    let id = w.doc(w.folder, "a.pdf", "Approved", b"ours").await;
    let path = format!("/outbound/{}/a_v1.pdf", YEAR_DIR());
    w.store().insert_file(&path, b"old");
    let out = handle_callback(&w.cx(), &callback(id, 1)).await.unwrap();
    assert!(matches!(out, ExportOutcome::Delivered(_)), "{out:?}");
    assert_eq!(w.store().file(&path).as_deref(), Some(&b"ours"[..]));
}

#[tokio::test]
async fn an_identical_copy_is_not_delivered_again_when_overwrite_is_on() {
    let w = World::new(true).await;
    let id = w.doc(w.folder, "a.pdf", "Approved", b"ours").await;
    // Delivered by a run that stopped after its rename (no history).
    let path = format!("/outbound/{}/a_v1.pdf", YEAR_DIR());
    w.store().insert_file(&path, b"ours");
    let out = handle_callback(&w.cx(), &callback(id, 1)).await.unwrap();
    assert!(matches!(out, ExportOutcome::Duplicate(_)), "{out:?}");
    assert!(w.store().file(&format!("{path}.sha256")).is_some());
    assert_eq!(w.exported().len(), 1);
    // A file of the same size but other bytes is replaced.
    let id2 = w.doc(w.folder, "b.pdf", "Approved", b"new!").await;
    let path2 = format!("/outbound/{}/b_v1.pdf", YEAR_DIR());
    w.store().insert_file(&path2, b"old!");
    let out = handle_callback(&w.cx(), &callback(id2, 1)).await.unwrap();
    assert!(matches!(out, ExportOutcome::Delivered(_)), "{out:?}");
    assert_eq!(w.store().file(&path2).as_deref(), Some(&b"new!"[..]));
}

#[tokio::test]
async fn resend_redelivers_a_delivered_version_and_is_audited_as_resend() {
    let w = World::new(false).await;
    let id = w.doc(w.folder, "a.pdf", "Approved", b"good").await;
    handle_callback(&w.cx(), &callback(id, 1)).await.unwrap();
    let path = format!("/outbound/{}/a_v1.pdf", YEAR_DIR());
    // The partner reports a truncated file.
    w.store().insert_file(&path, b"go");
    let r = resend(&w.cx(), id.get(), "price-lists", Some("truncated"))
        .await
        .unwrap();
    assert!(r.resend);
    assert_eq!(w.store().file(&path).as_deref(), Some(&b"good"[..]));
    let ev = w.exported();
    assert_eq!(ev.len(), 2);
    assert_eq!(ev[1]["resend"], json!(true));
}

#[tokio::test]
async fn resend_of_a_no_longer_approved_document_is_refused() {
    let w = World::new(false).await;
    let id = w.doc(w.folder, "a.pdf", "Draft", b"x").await;
    let err = resend(&w.cx(), id.get(), "price-lists", None)
        .await
        .unwrap_err();
    assert!(matches!(err, ExportError::NotApproved { .. }), "{err}");
    let err = resend(&w.cx(), id.get(), "nope", None).await.unwrap_err();
    assert!(matches!(err, ExportError::UnknownRoute { .. }), "{err}");
}

#[tokio::test]
async fn zip_package_is_one_atomic_file_that_an_independent_reader_accepts() {
    let w = World::new(false).await;
    let kit = w.ecm.create_folder(w.folder, "Kit").await.unwrap();
    let sub = w.ecm.create_folder(kit, "Manuals").await.unwrap();
    w.doc(kit, "Welcome.pdf", "Approved", b"welcome").await;
    w.doc(sub, "../../etc/passwd", "Approved", &[7u8; 70_000])
        .await;
    w.doc(sub, "Draft.pdf", "Draft", b"not yet").await;
    let r = export_package(
        &w.cx(),
        kit.get(),
        "price-lists",
        Some("Kit"),
        Some(PackageFormat::Zip),
    )
    .await
    .unwrap();
    assert_eq!(r.files, 2, "{r:?}");
    let path = format!("/outbound/{}/Kit.zip", YEAR_DIR());
    let bytes = w.store().file(&path).unwrap();
    let only: Vec<String> = w
        .store()
        .paths()
        .into_iter()
        .filter(|p| p.contains("Kit"))
        .collect();
    assert_eq!(only, vec![path.clone()]);
    let dir = tempfile::tempdir().unwrap();
    let zp = dir.path().join("k.zip");
    std::fs::write(&zp, &bytes).unwrap();
    // Python's zipfile: CRCs checked, names listed, manifest read back.
    let script = "import sys,zipfile,json,hashlib\nz=zipfile.ZipFile(sys.argv[1])\nassert z.testzip() is None\nm=json.loads(z.read('manifest.json'))\nfor e in m['entries']:\n  assert hashlib.sha256(z.read(e['path'])).hexdigest()==e['sha256']\nprint(sorted(z.namelist()))";
    let o = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(&zp)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let names = String::from_utf8_lossy(&o.stdout).trim().to_owned();
    assert_eq!(
        names,
        "['Manuals/_._.._etc_passwd', 'Welcome.pdf', 'manifest.json']"
    );
}

#[tokio::test]
async fn package_holds_approved_documents_with_a_correct_manifest() {
    let w = World::new(false).await;
    let kit = w.ecm.create_folder(w.folder, "Kit").await.unwrap();
    let sub2 = w.ecm.create_folder(kit, "Manuals").await.unwrap();
    w.doc(kit, "Welcome.pdf", "Approved", b"welcome").await;
    w.doc(sub2, "../../etc/passwd", "Approved", b"evil name")
        .await;
    w.doc(sub2, "Draft.pdf", "Draft", b"not yet").await;
    // A document may be called like the manifest.
    w.doc(kit, "manifest.json", "Approved", b"{\"mine\": true}")
        .await;
    let r = export_package(&w.cx(), kit.get(), "price-lists", Some("Kit-2026"), None)
        .await
        .unwrap();
    assert_eq!(r.files, 3, "{r:?}");
    assert_eq!(r.skipped.len(), 1);
    let base = format!("/outbound/{}/Kit-2026", YEAR_DIR());
    assert_eq!(
        w.store()
            .file(&format!("{base}/manifest (2).json"))
            .as_deref(),
        Some(&b"{\"mine\": true}"[..])
    );
    let text = w.store().file(&format!("{base}/manifest.json")).unwrap();
    assert_eq!(sha256_hex(&text), r.manifest_sha256);
    let m = PackageManifest::from_json(std::str::from_utf8(&text).unwrap()).unwrap();
    for e in &m.entries {
        let body = w.store().file(&format!("{base}/{}", e.path)).unwrap();
        assert_eq!(sha256_hex(&body), e.sha256, "{}", e.path);
        assert_eq!(body.len() as u64, e.size);
        assert!(
            crate::domain::manifest::is_safe_entry_path(&e.path)
                && !e.path.split('/').any(|seg| seg == ".."),
            "{}",
            e.path
        );
    }
    assert!(m.entries.iter().any(|e| e.path == "Welcome.pdf"));
    assert!(m.entries.iter().all(|e| e.path == "Welcome.pdf"
        || e.path == "manifest (2).json"
        || e.path.starts_with("Manuals/")));
    // Nothing under a temporary name remains; nothing escaped the package.
    for p in w.store().paths() {
        assert!(!p.contains(".partial"), "{p}");
        assert!(p == "/" || p.starts_with("/outbound"), "{p}");
    }
    // A second export of the same package name is refused, not merged.
    let err = export_package(&w.cx(), kit.get(), "price-lists", Some("Kit-2026"), None)
        .await
        .unwrap_err();
    assert!(matches!(err, ExportError::TargetExists { .. }), "{err}");
}

#[tokio::test]
async fn a_retried_package_is_not_blocked_by_a_killed_attempts_leftovers() {
    let w = World::new(false).await;
    let kit = w.ecm.create_folder(w.folder, "Kit").await.unwrap();
    w.doc(kit, "Welcome.pdf", "Approved", b"welcome").await;
    // A killed attempt of the same invocation (Lambda retries under the
    // same id) left its build directory under the id-only name.
    w.store().insert_file(
        &format!(
            "/outbound/{}/.Kit-2026.partial-inv1/Welcome.pdf",
            YEAR_DIR()
        ),
        b"stale",
    );
    let r = export_package(&w.cx(), kit.get(), "price-lists", Some("Kit-2026"), None)
        .await
        .unwrap();
    assert_eq!(r.files, 1, "{r:?}");
    let base = format!("/outbound/{}/Kit-2026", YEAR_DIR());
    assert_eq!(
        w.store().file(&format!("{base}/Welcome.pdf")).as_deref(),
        Some(&b"welcome"[..])
    );
}

#[tokio::test]
async fn a_zip_put_refused_early_reports_its_own_error() {
    let w = World::new(false).await;
    let mut items = Vec::new();
    // More entries than the channel holds, so the producer is still
    // sending when the put gives up.
    for i in 0..20 {
        let name = format!("f{i}.txt");
        let node = w.doc(w.folder, &name, "Approved", b"x").await;
        items.push(PackageItem {
            names: vec![name.clone()],
            node,
            name,
            version: 1,
        });
    }
    let paths: Vec<String> = items.iter().map(|i| i.name.clone()).collect();
    let meta = ManifestMeta {
        package: "Kit".into(),
        route: "price-lists".into(),
        root_node_id: w.folder.get(),
        created_at: Utc::now(),
    };
    // No such directory: the put fails before it reads the body.
    let path = w.store().root().resolve("missing/Kit.zip").unwrap();
    let err = write_zip(&w.ecm, w.store(), &path, &items, &paths, meta)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ExportError::Store(FileStoreError::NotFound { .. })),
        "{err}"
    );
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn document_callback_without_a_version_is_rejected() {
    let w = World::new(false).await;
    let id = w.doc(w.folder, "Prices.xlsx", "Approved", b"p").await;
    let out = handle_callback(&w.cx(), &callback(id, 0)).await.unwrap();
    let ExportOutcome::Rejected { reasons, .. } = out else {
        panic!("{out:?}")
    };
    assert!(reasons[0].1.contains("no version"), "{reasons:?}");
    assert_eq!(w.store().put_count(), 0);
}

#[tokio::test]
async fn near_the_deadline_nothing_is_started_and_the_error_is_retryable() {
    let w = World::new(false).await;
    let id = w.doc(w.folder, "Prices.xlsx", "Approved", b"p").await;
    let kit = w.ecm.create_folder(w.folder, "Kit").await.unwrap();
    w.doc(kit, "Welcome.pdf", "Approved", b"welcome").await;
    let mut cx = w.cx();
    cx.deadline = Some(Instant::now() + Duration::from_secs(3));
    let err = handle_callback(&cx, &callback(id, 1)).await.unwrap_err();
    assert!(matches!(err, ExportError::DeadlineNear { .. }), "{err}");
    assert!(err.is_retryable());
    let err = export_package(&cx, kit.get(), "price-lists", Some("K"), None)
        .await
        .unwrap_err();
    assert!(matches!(err, ExportError::DeadlineNear { .. }), "{err}");
    assert_eq!(w.store().put_count(), 0);
    assert!(
        w.store().paths().iter().all(|p| !p.contains("partial")),
        "{:?}",
        w.store().paths()
    );
    // With time left the same calls go through.
    cx.deadline = Some(Instant::now() + Duration::from_secs(600));
    handle_callback(&cx, &callback(id, 1)).await.unwrap();
}

#[tokio::test]
async fn an_unreachable_destination_is_retryable_and_records_nothing() {
    // The destination is reached while the ECM opens the download; the
    // destination's failure must still end the delivery cleanly.
    struct Unreachable;
    #[async_trait]
    impl Destinations for Unreachable {
        async fn store(&self, sftp_secret: &str) -> Result<Arc<dyn FileStore>, DestinationError> {
            Err(DestinationError::Store(FileStoreError::Transient {
                op: "connect",
                path: format!("{sftp_secret}: 192.0.2.1:22"),
                reason: "connection refused".into(),
            }))
        }
    }
    let w = World::new(false).await;
    let id = w.doc(w.folder, "Prices.xlsx", "Approved", b"p").await;
    let mut cx = w.cx();
    cx.destinations = &Unreachable;
    let err = handle_callback(&cx, &callback(id, 1)).await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert!(err.to_string().contains("connection refused"), "{err}");
    assert!(w.exported().is_empty());
    let history = w.ecm.categories(id).await.unwrap();
    assert!(
        !history.iter().any(|c| c.category_id == 9003),
        "{history:?}"
    );
    // The next attempt, with the destination back, delivers.
    let out = handle_callback(&w.cx(), &callback(id, 1)).await.unwrap();
    assert!(matches!(out, ExportOutcome::Delivered(_)), "{out:?}");
}

#[tokio::test]
async fn callback_naming_an_approved_folder_exports_a_package_once() {
    let w = World::new(false).await;
    let kit = w.ecm.create_folder(w.folder, "Kit").await.unwrap();
    w.doc(kit, "Welcome.pdf", "Approved", b"welcome").await;
    w.doc(kit, "Draft.pdf", "Draft", b"not yet").await;

    // Not approved as a whole yet: rejected, nothing sent.
    let out = handle_callback(&w.cx(), &callback(kit, 1)).await.unwrap();
    let ExportOutcome::Rejected { reasons, .. } = out else {
        panic!("{out:?}")
    };
    assert!(reasons[0].1.contains("9001_2"), "{reasons:?}");
    assert_eq!(w.store().put_count(), 0);

    w.ecm
        .apply_category(
            kit,
            9001,
            &[("9001_2".to_string(), json!("Approved"))].into(),
        )
        .await
        .unwrap();
    let cb = callback(kit, 1);
    let out = handle_callback(&w.cx(), &cb).await.unwrap();
    let ExportOutcome::Packaged(r) = out else {
        panic!("{out:?}")
    };
    assert_eq!((r.files, r.skipped.len()), (1, 1), "{r:?}");
    let base = format!("/outbound/{}/Kit-{}", YEAR_DIR(), cb.event_id);
    assert_eq!(r.remote_path, base);
    assert_eq!(
        &w.store().file(&format!("{base}/Welcome.pdf")).unwrap()[..],
        b"welcome"
    );
    let puts = w.store().put_count();

    // The same callback again: acknowledged, no second package.
    let out = handle_callback(&w.cx(), &cb).await.unwrap();
    assert!(
        matches!(out, ExportOutcome::PackageDuplicate { ref package, .. } if package.ends_with(&cb.event_id)),
        "{out:?}"
    );
    assert_eq!(w.store().put_count(), puts);
}

// ------------------------------------------- issue 16: defects 1, 2, 4 --

#[tokio::test]
async fn a_v1_callback_retried_after_v2_was_delivered_is_not_delivered_again() {
    let w = World::new(false).await;
    let id = w.doc(w.folder, "a.pdf", "Approved", b"one").await;
    handle_callback(&w.cx(), &callback(id, 1)).await.unwrap();
    w.new_version(id, b"two!").await;
    handle_callback(&w.cx(), &callback(id, 2)).await.unwrap();
    let puts = w.store().put_count();
    let out = handle_callback(&w.cx(), &callback(id, 1)).await.unwrap();
    assert!(
        !matches!(out, ExportOutcome::Delivered(_)),
        "v1 went out twice: {out:?}"
    );
    assert_eq!(w.store().put_count(), puts, "{:?}", w.store().paths());
    assert_eq!(w.exported().len(), 2);
}

#[tokio::test]
async fn an_older_version_never_replaces_a_newer_one_on_an_overwrite_route() {
    let w = World::with_routes(routes_named(true, "{stem}.{ext}")).await;
    let id = w.doc(w.folder, "a.pdf", "Approved", b"one").await;
    w.new_version(id, b"two!").await;
    // v2's callback arrives first, v1's (late) after it.
    handle_callback(&w.cx(), &callback(id, 2)).await.unwrap();
    let out = handle_callback(&w.cx(), &callback(id, 1)).await.unwrap();
    assert!(
        !matches!(out, ExportOutcome::Delivered(_)),
        "v1 replaced v2: {out:?}"
    );
    let path = format!("/outbound/{}/a.pdf", YEAR_DIR());
    assert_eq!(w.store().file(&path).as_deref(), Some(&b"two!"[..]));
    assert_eq!(w.exported().len(), 1);
    // A manual resend still may (it delivers the latest version).
    let r = resend(&w.cx(), id.get(), "price-lists", None)
        .await
        .unwrap();
    assert_eq!(r.version, 2);
}

#[tokio::test]
async fn overlapping_identical_callbacks_transfer_once() {
    // A caller retrying during a large transfer: the first callback's
    // download is held open while the second arrives.
    let w = World::new(true).await;
    let id = w.doc(w.folder, "big.bin", "Approved", b"large body").await;
    let gate = w.ecm.hold_downloads();
    let cx = w.cx();
    let cb = callback(id, 1);
    let (a, b, ()) = tokio::join!(
        handle_callback(&cx, &cb),
        handle_callback(&cx, &cb),
        async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            gate.add_permits(2);
        }
    );
    let delivered = [&a, &b]
        .iter()
        .filter(|r| matches!(r, Ok(ExportOutcome::Delivered(_))))
        .count();
    assert_eq!(delivered, 1, "{a:?} / {b:?}");
    for r in [&a, &b] {
        match r {
            Ok(ExportOutcome::Delivered(_) | ExportOutcome::Duplicate(_)) => {}
            Err(e) => assert!(e.is_retryable(), "{e}"),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(w.exported().len(), 1, "{:?}", w.exported());
    assert_eq!(w.ecm.calls("download"), 1, "the second one streamed too");
    // No lease is left behind once the delivery is done.
    assert!(
        !w.store().paths().iter().any(|p| p.contains("lease")),
        "{:?}",
        w.store().paths()
    );
    // A later retry is a plain duplicate.
    let out = handle_callback(&w.cx(), &cb).await.unwrap();
    assert!(matches!(out, ExportOutcome::Duplicate(_)), "{out:?}");
}

#[tokio::test]
async fn a_same_size_file_with_a_sidecar_is_judged_without_reading_it() {
    let w = World::new(true).await;
    let id = w.doc(w.folder, "a.pdf", "Approved", b"new content").await;
    // The version went to another destination before: its SHA-256 is
    // in the history.
    let other = crate::domain::export_history::DeliveryRecord {
        to: "price-lists/elsewhere".into(),
        version: 1,
        sha256: sha256_hex(b"new content"),
        path: "elsewhere/a_v1.pdf".into(),
    };
    w.ecm
        .apply_category(
            id,
            9003,
            &[("9003_6".to_string(), json!([other.encode()]))].into(),
        )
        .await
        .unwrap();
    let path = format!("/outbound/{}/a_v1.pdf", YEAR_DIR());
    // Another file of the same size, with its sidecar, is at the target.
    let old = b"old content";
    w.store().insert_file(&path, old);
    w.store().insert_file(
        &format!("{path}.sha256"),
        format!("{}  a_v1.pdf\n", sha256_hex(old)).as_bytes(),
    );
    let out = handle_callback(&w.cx(), &callback(id, 1)).await.unwrap();
    assert!(matches!(out, ExportOutcome::Delivered(_)), "{out:?}");
    assert_eq!(w.store().file(&path).as_deref(), Some(&b"new content"[..]));
    assert!(
        !w.counting.reads().contains(&path),
        "the remote file was read: {:?}",
        w.counting.reads()
    );
    assert_eq!(
        w.ecm.calls("download"),
        1,
        "the version was downloaded twice"
    );
}

#[tokio::test]
async fn a_package_walk_stops_at_the_deadline_instead_of_reading_every_document() {
    let w = World::new(false).await;
    let kit = w.ecm.create_folder(w.folder, "Kit").await.unwrap();
    for i in 0..20 {
        w.doc(kit, &format!("draft-{i}.pdf"), "Draft", b"d").await;
    }
    w.doc(kit, "ok.pdf", "Approved", b"ok").await;
    let before = w.ecm.calls("categories");
    let mut cx = w.cx();
    cx.deadline = Some(Instant::now() + Duration::from_secs(3));
    let err = export_package(&cx, kit.get(), "price-lists", Some("K"), None)
        .await
        .unwrap_err();
    assert!(matches!(err, ExportError::DeadlineNear { .. }), "{err}");
    let read = w.ecm.calls("categories") - before;
    assert!(read <= 2, "{read} documents read after the deadline");
}

#[tokio::test]
async fn a_transient_ecm_failure_is_retryable_and_never_a_rejection() {
    let w = World::new(false).await;
    let id = w.doc(w.folder, "a.pdf", "Approved", b"one").await;
    w.ecm.fail(
        "categories",
        1,
        Box::new(|| EcmError::Transient {
            op: "get categories",
            target: "node".into(),
            detail: "HTTP 500".into(),
        }),
    );
    let err = handle_callback(&w.cx(), &callback(id, 1))
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert!(
        !w.events
            .events()
            .iter()
            .any(|e| e.detail_type == DetailType::ExportRejected)
    );
    let out = handle_callback(&w.cx(), &callback(id, 1)).await.unwrap();
    assert!(matches!(out, ExportOutcome::Delivered(_)), "{out:?}");
}

// ------------------------------------------------------------- sweep --

#[tokio::test]
async fn the_sweep_catches_up_a_lost_callback_and_never_delivers_twice() {
    let w = World::new(false).await;
    let called = w.doc(w.folder, "a.pdf", "Approved", b"a").await;
    let lost = w.doc(w.folder, "b.pdf", "Approved", b"b").await;
    w.doc(w.folder, "c.pdf", "Draft", b"c").await;
    let sub = w.ecm.create_folder(w.folder, "Sub").await.unwrap();
    let deep = w.doc(sub, "d.pdf", "Approved", b"d").await;
    handle_callback(&w.cx(), &callback(called, 1))
        .await
        .unwrap();
    let roots = [w.folder.get()];
    let r = sweep(&w.cx(), "price-lists", Some(&roots), None, None)
        .await
        .unwrap();
    let mut caught: Vec<i64> = r.caught_up.iter().map(|d| d.node_id).collect();
    caught.sort_unstable();
    assert_eq!(caught, vec![lost.get(), deep.get()], "{r:?}");
    assert_eq!((r.examined, r.already_delivered, r.not_exported), (4, 1, 1));
    assert!(r.complete && r.cursor.is_none(), "{r:?}");
    assert_eq!(w.exported().len(), 3);
    // The lost callback arrives after all: a duplicate.
    let out = handle_callback(&w.cx(), &callback(lost, 1)).await.unwrap();
    assert!(matches!(out, ExportOutcome::Duplicate(_)), "{out:?}");
    // The next run finds nothing to do.
    let again = sweep(&w.cx(), "price-lists", Some(&roots), None, None)
        .await
        .unwrap();
    assert!(again.caught_up.is_empty(), "{again:?}");
    assert_eq!(again.already_delivered, 3);
    assert_eq!(w.exported().len(), 3);
    // It reported what it caught up.
    let reports: Vec<_> = w
        .events
        .events()
        .into_iter()
        .filter(|e| e.detail_type == DetailType::ExportSweepCompleted)
        .collect();
    assert_eq!(reports.len(), 2);
    assert_eq!(
        reports[0].detail["caught_up"].as_array().map(Vec::len),
        Some(2)
    );
}

#[tokio::test]
async fn a_bounded_sweep_resumes_from_its_cursor_until_everything_is_out() {
    let w = World::new(false).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            w.doc(w.folder, &format!("d{i}.pdf"), "Approved", b"x")
                .await,
        );
    }
    let roots = [w.folder.get()];
    let mut cursor = None;
    let mut runs = 0;
    let mut delivered = Vec::new();
    loop {
        runs += 1;
        assert!(runs < 10, "the sweep does not progress");
        let r = sweep(&w.cx(), "price-lists", Some(&roots), Some(2), cursor.take())
            .await
            .unwrap();
        assert!(r.examined <= 2, "{r:?}");
        delivered.extend(r.caught_up.iter().map(|d| d.node_id));
        if r.complete {
            break;
        }
        // The continuation event carries the same cursor.
        let cont = w
            .events
            .events()
            .into_iter()
            .rfind(|e| e.detail_type == DetailType::ExportSweepContinued)
            .expect("a continuation event");
        let ev = crate::domain::export_route::ExportManualEvent::from_json(cont.detail).unwrap();
        let crate::domain::export_route::ExportManualEvent::Sweep { cursor: c, .. } = ev else {
            panic!("not a sweep event")
        };
        assert_eq!(c, r.cursor);
        cursor = c;
    }
    delivered.sort_unstable();
    let mut want: Vec<i64> = ids.iter().map(|i| i.get()).collect();
    want.sort_unstable();
    assert_eq!(delivered, want);
    assert_eq!(w.exported().len(), 5);
}

#[tokio::test]
async fn a_sweep_leaves_a_delivery_in_progress_to_its_holder() {
    let w = World::new(true).await;
    let id = w.doc(w.folder, "big.bin", "Approved", b"large").await;
    let gate = w.ecm.hold_downloads();
    let cx = w.cx();
    let roots = [w.folder.get()];
    let first = callback(id, 1);
    let (cb, sw, ()) = tokio::join!(
        handle_callback(&cx, &first),
        async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            sweep(&cx, "price-lists", Some(&roots), None, None).await
        },
        async {
            tokio::time::sleep(Duration::from_millis(150)).await;
            gate.add_permits(5);
        }
    );
    assert!(matches!(cb, Ok(ExportOutcome::Delivered(_))), "{cb:?}");
    let sw = sw.unwrap();
    assert!(sw.caught_up.is_empty(), "{sw:?}");
    assert_eq!(sw.in_progress, vec![id.get()]);
    assert_eq!(w.exported().len(), 1);
}

// ------------------------------------------------------- crash matrix --

/// Stops a delivery at `point`, then retries it (the caller's retry,
/// after the lease of the stopped attempt expired) and checks: one copy
/// at the partner, one history record, one `Document Exported`.
async fn crash_then_retry(point: fault::Point, overwrite: bool) -> String {
    let w = World::new(overwrite).await;
    let id = w
        .doc(w.folder, "a.pdf", "Approved", b"the approved bytes")
        .await;
    fault::arm(Some(point));
    let first = handle_callback(&w.cx(), &callback(id, 1)).await;
    fault::arm(None);
    // A stop inside the upload surfaces as the upload's failure.
    assert!(first.is_err(), "{point:?}: {first:?}");
    // A stopped holder's lease stays until it expires: the retry in
    // between is told "in progress".
    let leased = w.store().paths().iter().any(|p| p.contains("xecm-lease"));
    if leased {
        let r = handle_callback(&w.cx(), &callback(id, 1)).await;
        assert!(
            matches!(&r, Err(ExportError::InProgress { .. })),
            "{point:?}: {r:?}"
        );
        expire_leases(w.store());
    }
    let retry = handle_callback(&w.cx(), &callback(id, 1)).await;
    let outcome = match &retry {
        Ok(ExportOutcome::Delivered(_)) => "delivered",
        Ok(ExportOutcome::Duplicate(_)) => "duplicate",
        other => panic!("{point:?}: {other:?}"),
    };
    let y = YEAR_DIR();
    let files: Vec<String> = w
        .store()
        .paths()
        .into_iter()
        .filter(|p| p.starts_with(&format!("/outbound/{y}/")) && !p.ends_with(".sha256"))
        .collect();
    assert_eq!(files, vec![format!("/outbound/{y}/a_v1.pdf")], "{point:?}");
    assert_eq!(
        w.store().file(&files[0]).as_deref(),
        Some(&b"the approved bytes"[..])
    );
    let hist = w.ecm.categories(id).await.unwrap();
    let h = hist
        .iter()
        .find(|c| c.category_id == 9003)
        .expect("history");
    assert_eq!(
        h.values["9003_6"].as_array().map(Vec::len),
        Some(1),
        "{point:?}"
    );
    assert_eq!(w.exported().len(), 1, "{point:?}: {:?}", w.exported());
    // And a further retry is a plain duplicate.
    let again = handle_callback(&w.cx(), &callback(id, 1)).await.unwrap();
    assert!(matches!(again, ExportOutcome::Duplicate(_)), "{again:?}");
    assert_eq!(w.exported().len(), 1);
    format!(
        "{:<16} {:<9} {:<10} {:<6} {:<7} {:<5} {:<5}",
        point.as_str(),
        if overwrite { "overwrite" } else { "no-replace" },
        outcome,
        if leased { "yes" } else { "no" },
        files.len(),
        1,
        w.exported().len()
    )
}

/// Rewrites every lease file as expired (the stopped holder's time ran out).
fn expire_leases(store: &MemoryStore) {
    for p in store.paths() {
        if p.contains("xecm-lease")
            && let Some(bytes) = store.file(&p)
            && let Ok(mut l) = Lease::parse(&bytes)
        {
            l.expires_at = Utc::now() - chrono::Duration::seconds(1);
            store.insert_file(&p, &l.to_bytes());
        }
    }
}

#[tokio::test]
async fn crash_matrix_every_stop_then_retry_delivers_exactly_once() {
    let mut rows = vec![format!(
        "{:<16} {:<9} {:<10} {:<6} {:<7} {:<5} {:<5}",
        "stopped at", "route", "retry", "lease", "copies", "hist", "events"
    )];
    for point in [
        fault::Point::Leased,
        fault::Point::MidUpload,
        fault::Point::AfterUpload,
        fault::Point::AfterRename,
        fault::Point::BeforeEvent,
        fault::Point::BeforeHistory,
    ] {
        for overwrite in [false, true] {
            rows.push(crash_then_retry(point, overwrite).await);
        }
    }
    println!("{}", rows.join("\n"));
}

#[tokio::test]
async fn crash_matrix_packages_stopped_mid_build_or_before_the_rename_publish_once() {
    let mut rows = vec![format!(
        "{:<22} {:<5} {:<8} {:<9}",
        "stopped at", "kind", "retry", "visible"
    )];
    for point in [
        fault::Point::PackageMidBuild,
        fault::Point::PackageBeforeRename,
    ] {
        for format in [PackageFormat::Dir, PackageFormat::Zip] {
            let w = World::new(false).await;
            let kit = w.ecm.create_folder(w.folder, "Kit").await.unwrap();
            w.doc(kit, "one.pdf", "Approved", b"one").await;
            w.doc(kit, "two.pdf", "Approved", b"two").await;
            fault::arm(Some(point));
            let first =
                export_package(&w.cx(), kit.get(), "price-lists", Some("K"), Some(format)).await;
            fault::arm(None);
            assert!(matches!(first, Err(ExportError::Fault { .. })), "{first:?}");
            let visible = |w: &World| {
                w.store()
                    .paths()
                    .into_iter()
                    .filter(|p| {
                        let name = p.rsplit('/').next().unwrap_or("");
                        name == "K" || name == "K.zip"
                    })
                    .count()
            };
            assert_eq!(
                visible(&w),
                0,
                "{point:?} {format:?}: {:?}",
                w.store().paths()
            );
            let r = export_package(&w.cx(), kit.get(), "price-lists", Some("K"), Some(format))
                .await
                .unwrap();
            assert_eq!(r.files, 2);
            assert_eq!(visible(&w), 1);
            // A further attempt finds it there and publishes nothing.
            let again =
                export_package(&w.cx(), kit.get(), "price-lists", Some("K"), Some(format)).await;
            assert!(
                matches!(again, Err(ExportError::TargetExists { .. })),
                "{again:?}"
            );
            assert_eq!(w.exported().len(), 2);
            rows.push(format!(
                "{:<22} {:<5} {:<8} {:<9}",
                point.as_str(),
                format!("{format:?}").to_lowercase(),
                "packaged",
                visible(&w)
            ));
        }
    }
    println!("{}", rows.join("\n"));
}

#[tokio::test]
async fn a_package_response_lists_the_first_skipped_documents_and_counts_the_rest() {
    let w = World::new(false).await;
    let kit = w.ecm.create_folder(w.folder, "Kit").await.unwrap();
    w.doc(kit, "Welcome.pdf", "Approved", b"welcome").await;
    for i in 0..(SKIPPED_LISTED + 7) {
        w.doc(kit, &format!("Draft-{i:03}.pdf"), "Draft", b"not yet")
            .await;
    }
    let r = export_package(&w.cx(), kit.get(), "price-lists", Some("Big-Kit"), None)
        .await
        .unwrap();
    assert_eq!(r.files, 1, "{r:?}");
    assert_eq!(r.skipped.len(), SKIPPED_LISTED);
    assert_eq!(r.skipped_not_listed, 7);
    assert_eq!(
        r.manifest,
        format!("/outbound/{}/Big-Kit/manifest.json", YEAR_DIR())
    );
    assert!(
        w.store().file(&r.manifest).is_some(),
        "the manifest is where the response says"
    );
}
