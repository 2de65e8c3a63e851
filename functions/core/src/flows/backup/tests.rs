//! The backup flow against the in-memory ECM, SFTP store and event sink.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, TimeZone, Utc};

use super::*;
use crate::domain::backup::{BackupEvent, parse_backup_event};
use crate::domain::manifest::parse_backup_manifest;
use crate::domain::paths::RemoteRoot;
use crate::ports::ecm::memory::{ENTERPRISE, MemoryEcm};
use crate::ports::ecm::{Content, UploadRequest};
use crate::ports::events::MemoryEvents;
use crate::ports::file_store::memory::MemoryFileStore;

fn content(b: &[u8]) -> Content {
    let bytes = Bytes::copy_from_slice(b);
    Content {
        length: bytes.len() as u64,
        stream: Box::pin(futures_util::stream::iter([Ok(bytes)])),
        file_name: "f".into(),
        mime_type: "application/pdf".into(),
    }
}

struct World {
    ecm: MemoryEcm,
    store: Arc<MemoryFileStore>,
    events: MemoryEvents,
    /// Seconds since 2026-12-01, advanced by each run.
    clock: Arc<AtomicI64>,
    root_a: NodeId,
    root_b: NodeId,
    docs: Vec<(NodeId, Vec<u8>)>,
}

async fn doc(ecm: &MemoryEcm, parent: NodeId, name: &str, body: &[u8]) -> NodeId {
    ecm.upload(UploadRequest {
        parent,
        name: name.into(),
        description: None,
        categories: vec![],
        classifications: vec![],
        content: content(body),
    })
    .await
    .unwrap()
    .node_id
}

async fn world() -> World {
    let ecm = MemoryEcm::new();
    let ent = NodeId::new(ENTERPRISE).unwrap();
    let root_a = ecm.create_folder(ent, "Suppliers").await.unwrap();
    let root_b = ecm.create_folder(ent, "Contracts").await.unwrap();
    let sub = ecm.create_folder(root_a, "Acme/Invoices").await.unwrap();
    let mut docs = Vec::new();
    for (parent, name, body) in [
        (root_a, "price list.pdf", b"prices".to_vec()),
        (sub, "inv-1.pdf", b"invoice one".to_vec()),
        (sub, "inv-2.pdf", b"invoice two".to_vec()),
        (root_b, "MSA.pdf", b"master agreement".to_vec()),
        (root_b, "a/b.pdf", b"slash".to_vec()),
        (root_b, "a_b.pdf", b"underscore".to_vec()),
        (root_b, "A_B.pdf", b"upper".to_vec()),
        (root_b, "dots...", b"dots".to_vec()),
    ] {
        let id = doc(&ecm, parent, name, &body).await;
        docs.push((id, body));
    }
    World {
        ecm,
        store: Arc::new(MemoryFileStore::new(RemoteRoot::parse("/").unwrap())),
        events: MemoryEvents::new(),
        clock: Arc::new(AtomicI64::new(0)),
        root_a,
        root_b,
        docs,
    }
}

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).single().unwrap()
}

impl World {
    fn backup(&self, retention: u32) -> BackupConfig {
        serde_json::from_value(serde_json::json!({
            "name": "t", "roots": [self.root_a.get(), self.root_b.get()], "sftp_secret": "s",
            "directory": "backups/t", "retention": retention, "page_size": 2, "parallelism": 3
        }))
        .unwrap()
    }

    async fn run_with(
        &self,
        backup: &BackupConfig,
        event: Option<&str>,
        deadline: Option<Instant>,
    ) -> Result<SnapshotOutcome, BackupError> {
        let clock = Arc::clone(&self.clock);
        let now = move || t0() + chrono::Duration::seconds(clock.load(Ordering::SeqCst));
        let cx = BackupContext {
            ecm: &self.ecm,
            store: self.store.as_ref(),
            events: &self.events,
            invocation_id: "test",
            deadline,
            margin: Duration::from_secs(3600),
            clock: &now,
        };
        let r = match event {
            None => run_scheduled(&cx, backup).await,
            Some(id) => run_continue(&cx, backup, id).await,
        };
        self.clock.fetch_add(60, Ordering::SeqCst);
        r
    }

    async fn run(&self, backup: &BackupConfig) -> SnapshotOutcome {
        self.run_with(backup, None, None).await.unwrap()
    }

    fn cx_for<'a>(
        &'a self,
        clock: &'a (dyn Fn() -> DateTime<Utc> + Send + Sync),
    ) -> BackupContext<'a> {
        BackupContext {
            ecm: &self.ecm,
            store: self.store.as_ref(),
            events: &self.events,
            invocation_id: "manual",
            deadline: None,
            margin: Duration::ZERO,
            clock,
        }
    }

    fn manifest(&self, id: &str) -> Vec<BackupRecord> {
        let text = self
            .store
            .file(&format!("/backups/t/{id}/manifest.jsonl"))
            .expect("manifest");
        parse_backup_manifest(std::str::from_utf8(&text).unwrap()).unwrap()
    }
}

fn completed(o: &SnapshotOutcome) -> &SnapshotSummary {
    match o {
        SnapshotOutcome::Completed { summary, .. } => summary,
        other => panic!("not completed: {other:?}"),
    }
}

#[tokio::test]
async fn given_two_roots_when_snapshot_taken_then_every_document_copied_with_manifest_and_summary()
{
    let w = world().await;
    let o = w.run(&w.backup(3)).await;
    let s = completed(&o);
    assert_eq!(s.counts.documents, 8);
    assert_eq!(s.counts.copied, 8);
    assert_eq!(s.counts.referenced, 0);
    assert_eq!(s.base_snapshot, None);
    let lines = w.manifest(&s.snapshot_id);
    assert_eq!(lines.len(), 8);
    for (id, body) in &w.docs {
        let l = lines.iter().find(|l| l.node_id == id.get()).expect("line");
        let file = w
            .store
            .file(&format!("/backups/t/{}/{}", s.snapshot_id, l.path))
            .unwrap_or_else(|| panic!("file {}", l.path));
        assert_eq!(&file[..], &body[..], "{}", l.path);
        assert_eq!(
            l.sha256,
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(body))
        );
    }
    // Folder structure kept, hostile names made safe, originals kept.
    let inv = lines
        .iter()
        .find(|l| l.ecm_path.last().unwrap() == "inv-1.pdf")
        .unwrap();
    assert_eq!(
        inv.ecm_path,
        vec!["Suppliers", "Acme/Invoices", "inv-1.pdf"]
    );
    assert!(
        inv.path.starts_with("Suppliers/Acme_Invoices~"),
        "{}",
        inv.path
    );
    let paths: std::collections::BTreeSet<String> =
        lines.iter().map(|l| l.path.to_lowercase()).collect();
    assert_eq!(paths.len(), 8, "no two documents share a path: {paths:?}");
    let dots = lines
        .iter()
        .find(|l| l.ecm_path.last().unwrap() == "dots...")
        .unwrap();
    assert!(!dots.path.ends_with('.'), "{}", dots.path);
    // Nothing of the work left: no .partial, no checkpoint, no parts.
    let all = w.store.paths();
    assert!(
        !all.iter()
            .any(|p| p.contains(".partial") || p.contains(".checkpoint") || p.contains(".parts")),
        "{all:?}"
    );
    assert!(
        w.store
            .file(&format!("/backups/t/{}/snapshot.json", s.snapshot_id))
            .is_some()
    );
    let ev = w.events.events();
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].detail_type, DetailType::SnapshotCompleted);
    assert_eq!(ev[0].detail["copied"], 8);
}

#[tokio::test]
async fn given_one_new_version_when_incremental_taken_then_only_it_is_copied_and_rest_point_at_base()
 {
    let w = world().await;
    let b = w.backup(3);
    let first = completed(&w.run(&b).await).snapshot_id.clone();
    let (changed, _) = w.docs[1].clone();
    w.ecm
        .add_version(changed, None, content(b"invoice one, corrected"))
        .await
        .unwrap();
    let puts_before = w.store.put_count();
    let o = w.run(&b).await;
    let s = completed(&o);
    assert_eq!(s.base_snapshot.as_deref(), Some(first.as_str()));
    assert_eq!((s.counts.copied, s.counts.referenced), (1, 7));
    assert_eq!(s.references, vec![first.clone()]);
    let lines = w.manifest(&s.snapshot_id);
    let l = lines.iter().find(|l| l.node_id == changed.get()).unwrap();
    assert_eq!((l.version, l.snapshot.as_deref()), (2, None));
    for l in lines.iter().filter(|l| l.node_id != changed.get()) {
        assert_eq!(l.snapshot.as_deref(), Some(first.as_str()));
        assert!(
            w.store
                .file(&format!("/backups/t/{first}/{}", l.path))
                .is_some()
        );
    }
    // One document's bytes, plus checkpoints, parts, manifest and summary.
    let doc_files = w
        .store
        .paths()
        .into_iter()
        .filter(|p| p.starts_with(&format!("/backups/t/{}/", s.snapshot_id)) && p.ends_with(".pdf"))
        .count();
    assert_eq!(doc_files, 1);
    assert!(w.store.put_count() > puts_before);
    // A third snapshot with nothing changed points at the holders, never at
    // the second snapshot for bytes it does not hold.
    let o3 = w.run(&b).await;
    let third = completed(&o3);
    assert_eq!(third.counts.copied, 0);
    let l3 = w.manifest(&third.snapshot_id);
    let changed3 = l3.iter().find(|l| l.node_id == changed.get()).unwrap();
    assert_eq!(changed3.snapshot.as_deref(), Some(s.snapshot_id.as_str()));
    assert_eq!(third.references.len(), 2);
}

#[tokio::test]
async fn given_deadline_near_when_run_then_continuation_event_resumes_to_one_complete_snapshot() {
    let w = world().await;
    let b = w.backup(3);
    // Always near the deadline: each invocation does one page.
    let o = w.run_with(&b, None, Some(Instant::now())).await.unwrap();
    let SnapshotOutcome::Continuing { snapshot_id, .. } = o else {
        panic!("{o:?}")
    };
    let mut invocations = 1;
    let summary = loop {
        let ev = w.events.events();
        let last = ev.last().unwrap();
        assert_eq!(last.detail_type, DetailType::SnapshotContinuation);
        // The detail is exactly the next invocation's event.
        let BackupEvent::Continue {
            backup,
            snapshot_id: id,
        } = parse_backup_event(last.detail.clone()).unwrap()
        else {
            panic!("not a continue event")
        };
        assert_eq!((&backup, &id), (&b, &snapshot_id));
        invocations += 1;
        assert!(invocations < 50, "no progress");
        match w
            .run_with(&backup, Some(&id), Some(Instant::now()))
            .await
            .unwrap()
        {
            SnapshotOutcome::Continuing { .. } => continue,
            done => break completed(&done).clone(),
        }
    };
    assert_eq!(summary.snapshot_id, snapshot_id);
    assert_eq!((summary.counts.documents, summary.counts.copied), (8, 8));
    assert_eq!(summary.invocations, invocations);
    // A duplicate continuation is harmless.
    let again = w.run_with(&b, Some(&snapshot_id), None).await.unwrap();
    assert!(
        matches!(again, SnapshotOutcome::AlreadyComplete { .. }),
        "{again:?}"
    );
    // Every document was written once.
    assert_eq!(w.manifest(&snapshot_id).len(), 8);
}

#[tokio::test]
async fn given_snapshot_held_by_a_live_lease_when_scheduled_then_busy_and_untouched() {
    let w = world().await;
    let b = w.backup(3);
    let SnapshotOutcome::Continuing { snapshot_id, .. } =
        w.run_with(&b, None, Some(Instant::now())).await.unwrap()
    else {
        panic!()
    };
    let path = format!("/backups/t/{snapshot_id}.partial/.checkpoint.json");
    let mut cp: Checkpoint = serde_json::from_slice(&w.store.file(&path).unwrap()).unwrap();
    cp.lease = Some(Lease {
        owner: "someone-else".into(),
        until: t0() + chrono::Duration::days(1),
    });
    w.store
        .insert_file(&path, &serde_json::to_vec(&cp).unwrap());
    let o = w.run(&b).await;
    assert!(
        matches!(o, SnapshotOutcome::Busy { ref owner, .. } if owner == "someone-else"),
        "{o:?}"
    );
}

#[tokio::test]
async fn given_retention_one_when_incrementals_taken_then_snapshots_they_point_at_survive() {
    let w = world().await;
    let b = w.backup(1);
    let first = completed(&w.run(&b).await).snapshot_id.clone();
    // Nothing changed: the second points at the first for every document.
    let o = w.run(&b).await;
    let second = completed(&o);
    assert!(second.counts.referenced == 8);
    let SnapshotOutcome::Completed { retention, .. } = &o else {
        unreachable!()
    };
    assert!(retention.delete.is_empty(), "{retention:?}");
    assert_eq!(retention.kept_for_references, vec![first.clone()]);
    assert!(
        w.store
            .file(&format!("/backups/t/{first}/snapshot.json"))
            .is_some()
    );
    // A full snapshot (not incremental) owns all its bytes: now the older
    // ones can go, and the only complete snapshot left is the newest.
    let mut full = b.clone();
    full.incremental = false;
    let o3 = w.run(&full).await;
    let SnapshotOutcome::Completed {
        retention, summary, ..
    } = &o3
    else {
        panic!()
    };
    assert_eq!(
        retention.delete,
        vec![first.clone(), second.snapshot_id.clone()]
    );
    let dirs: Vec<String> = w
        .store
        .paths()
        .into_iter()
        .filter(|p| p.starts_with("/backups/t/") && p.matches('/').count() == 3)
        .collect();
    assert_eq!(dirs, vec![format!("/backups/t/{}", summary.snapshot_id)]);
}

#[tokio::test]
async fn given_corrupted_and_missing_files_when_verified_then_both_reported_by_path() {
    let w = world().await;
    let b = w.backup(3);
    let first = completed(&w.run(&b).await).snapshot_id.clone();
    w.ecm
        .add_version(w.docs[0].0, None, content(b"new prices"))
        .await
        .unwrap();
    let second = completed(&w.run(&b).await).snapshot_id.clone();
    let clock = || t0();
    let cx = w.cx_for(&clock);
    let ok = verify::verify(&cx, &b, &second).await.unwrap();
    assert_eq!(ok.files_checked, 8);
    assert_eq!(ok.referenced_snapshots, vec![first.clone()]);
    // Corrupt a file the second snapshot points at (in the first), and
    // remove one it holds itself.
    let lines = w.manifest(&second);
    let referenced = lines.iter().find(|l| l.snapshot.is_some()).unwrap();
    let own = lines.iter().find(|l| l.snapshot.is_none()).unwrap();
    let corrupt = format!("/backups/t/{first}/{}", referenced.path);
    let mut bytes = w.store.file(&corrupt).unwrap().to_vec();
    bytes[0] ^= 1;
    w.store.insert_file(&corrupt, &bytes);
    let missing = w
        .store
        .root()
        .resolve(&format!("/backups/t/{second}/{}", own.path))
        .unwrap();
    w.store.remove(&missing).await.unwrap();
    let Err(BackupError::VerifyFailed { report, .. }) = verify::verify(&cx, &b, &second).await
    else {
        panic!("verify passed")
    };
    let kinds: Vec<(&str, &str)> = report
        .problems
        .iter()
        .map(|p| (p.path.as_str(), p.kind.as_str()))
        .collect();
    assert!(kinds.contains(&(corrupt.as_str(), "sha256")), "{kinds:?}");
    assert!(
        kinds.contains(&(missing.to_string().as_str(), "missing")),
        "{kinds:?}"
    );
    assert_eq!(report.problems.len(), 2);
    assert_eq!(
        w.events.events().last().unwrap().detail_type,
        DetailType::SnapshotVerifyFailed
    );
}

#[tokio::test]
async fn given_incremental_snapshot_when_restored_into_empty_folder_then_byte_identical_tree() {
    let w = world().await;
    let b = w.backup(3);
    completed(&w.run(&b).await);
    w.ecm
        .add_version(w.docs[3].0, None, content(b"master agreement v2"))
        .await
        .unwrap();
    let second = completed(&w.run(&b).await).snapshot_id.clone();
    let target = w
        .ecm
        .create_folder(NodeId::new(ENTERPRISE).unwrap(), "Restore drill")
        .await
        .unwrap();
    let clock = || t0();
    let cx = w.cx_for(&clock);
    let r = restore::restore(&cx, &b, &second, target.get(), None)
        .await
        .unwrap();
    assert_eq!(r.restored.len(), 8);
    for d in &r.restored {
        let got = w
            .ecm
            .content(NodeId::new(d.node_id).unwrap(), None)
            .unwrap();
        let want = w
            .ecm
            .content(NodeId::new(d.source_node_id).unwrap(), None)
            .unwrap();
        assert_eq!(got, want, "{:?}", d.ecm_path);
    }
    let acme = w
        .ecm
        .child_by_name(target, "Suppliers")
        .await
        .unwrap()
        .unwrap();
    assert!(
        w.ecm
            .child_by_name(acme.id, "Acme/Invoices")
            .await
            .unwrap()
            .is_some()
    );
    // A rerun of the drill finds everything in place and duplicates nothing.
    let again = restore::restore(&cx, &b, &second, target.get(), None)
        .await
        .unwrap();
    assert!(again.restored.iter().all(|d| d.already_present));
    // One node only.
    let t2 = w
        .ecm
        .create_folder(NodeId::new(ENTERPRISE).unwrap(), "One")
        .await
        .unwrap();
    let one = restore::restore(&cx, &b, &second, t2.get(), Some(w.docs[3].0.get()))
        .await
        .unwrap();
    assert_eq!(one.restored.len(), 1);
    assert_eq!(
        w.events.events().last().unwrap().detail_type,
        DetailType::SnapshotRestored
    );
}

#[tokio::test]
async fn given_folder_of_10001_children_when_walked_in_pages_then_each_once_in_order() {
    let w = world().await;
    let big = w.ecm.create_folder(w.root_b, "big").await.unwrap();
    for i in 0..10_001 {
        doc(
            &w.ecm,
            big,
            &format!("d{i:05}.txt"),
            format!("{i}").as_bytes(),
        )
        .await;
    }
    let mut b = w.backup(3);
    b.page_size = 1000;
    let s = completed(&w.run(&b).await).clone();
    let lines = w.manifest(&s.snapshot_id);
    assert_eq!(lines.len(), 10_009);
    let names: Vec<&str> = lines
        .iter()
        .filter(|l| l.path.contains("/big/"))
        .map(|l| l.ecm_path.last().unwrap().as_str())
        .collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "stable listing order");
    assert_eq!(names.len(), 10_001);
}

#[tokio::test]
async fn given_crash_after_files_written_but_before_their_page_was_recorded_when_resumed_then_files_recorded_not_copied_again()
 {
    let w = world().await;
    let b = w.backup(3);
    let SnapshotOutcome::Continuing { snapshot_id, .. } =
        w.run_with(&b, None, Some(Instant::now())).await.unwrap()
    else {
        panic!()
    };
    // What a run killed mid-page leaves: the next page's documents written
    // (atomically, complete), listed as pending, the page not recorded.
    let cp_path = format!("/backups/t/{snapshot_id}.partial/.checkpoint.json");
    let mut cp: Checkpoint = serde_json::from_slice(&w.store.file(&cp_path).unwrap()).unwrap();
    let top = cp.stack.last().unwrap().clone();
    let page = walk::list_page(&w.ecm, &top, b.page_size).await.unwrap();
    assert!(!page.documents.is_empty(), "the next page has documents");
    for d in &page.documents {
        let body = &w.docs.iter().find(|(id, _)| *id == d.node.id).unwrap().1;
        w.store.insert_file(
            &format!("/backups/t/{snapshot_id}.partial/{}", d.path),
            body,
        );
        cp.pending.push(Pending {
            node_id: d.node.id.get(),
            version: 1,
            size: body.len() as u64,
            path: d.path.clone(),
            alt_path: d.alt_path.clone(),
        });
    }
    w.store
        .insert_file(&cp_path, &serde_json::to_vec(&cp).unwrap());
    let o = w.run_with(&b, Some(&snapshot_id), None).await.unwrap();
    let s = completed(&o);
    let lines = w.manifest(&s.snapshot_id);
    assert_eq!(lines.len(), 8);
    for d in &page.documents {
        let l = lines.iter().find(|l| l.node_id == d.node.id.get()).unwrap();
        // Recorded where the crashed run wrote it; no second copy beside it.
        assert_eq!(l.path, d.path);
        assert!(
            w.store
                .file(&format!("/backups/t/{}/{}", s.snapshot_id, d.alt_path))
                .is_none(),
            "copied again to {}",
            d.alt_path
        );
    }
}

#[tokio::test]
async fn given_a_root_that_is_a_document_when_scheduled_then_permanent_error_and_snapshot_failed_event()
 {
    let w = world().await;
    let mut b = w.backup(3);
    b.roots = vec![w.docs[0].0.get()];
    let e = w.run_with(&b, None, None).await.unwrap_err();
    assert!(!e.is_retryable(), "{e}");
    assert!(e.to_string().contains("not a folder"), "{e}");
    let ev = w.events.events();
    assert_eq!(
        ev.last().map(|e| e.detail_type),
        Some(DetailType::SnapshotFailed)
    );
    assert_eq!(ev.last().unwrap().detail["retryable"], false);
    // Nothing was started.
    assert!(!w.store.paths().iter().any(|p| p.contains(".partial")));
}
