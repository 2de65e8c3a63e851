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

fn verified(o: VerifyOutcome) -> VerifyReport {
    match o {
        VerifyOutcome::Verified(r) => r,
        other => panic!("not verified: {other:?}"),
    }
}

fn restored(o: RestoreOutcome) -> RestoreReport {
    match o {
        RestoreOutcome::Restored(r) => r,
        other => panic!("not restored: {other:?}"),
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
    let cp_path = format!("/backups/t/{snapshot_id}.partial/.checkpoint.json");
    let before = w.store.file(&cp_path).unwrap();
    // Another invocation holds the plan's run lease.
    let lease = Lease {
        owner: "someone-else".into(),
        until: t0() + chrono::Duration::days(1),
    };
    w.store.insert_file(
        &format!("/backups/t/{RUN_LEASE_NAME}"),
        &serde_json::to_vec(&lease).unwrap(),
    );
    let o = w.run(&b).await;
    assert!(
        matches!(o, SnapshotOutcome::Busy { ref owner, .. } if owner.as_deref() == Some("someone-else")),
        "{o:?}"
    );
    let o = w.run_with(&b, Some(&snapshot_id), None).await.unwrap();
    assert!(matches!(o, SnapshotOutcome::Busy { .. }), "{o:?}");
    assert_eq!(
        w.store.file(&cp_path).unwrap(),
        before,
        "checkpoint untouched"
    );
    // Expired, it is taken over and the snapshot finishes.
    let lease = Lease {
        owner: "someone-else".into(),
        until: t0() - chrono::Duration::seconds(1),
    };
    w.store.insert_file(
        &format!("/backups/t/{RUN_LEASE_NAME}"),
        &serde_json::to_vec(&lease).unwrap(),
    );
    completed(&w.run(&b).await);
    assert!(
        w.store
            .file(&format!("/backups/t/{RUN_LEASE_NAME}"))
            .is_none()
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
    let ok = verified(verify::verify(&cx, &b, &second, None).await.unwrap());
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
    let Err(BackupError::VerifyFailed { report, .. }) =
        verify::verify(&cx, &b, &second, None).await
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
    let r = restored(
        restore::restore(&cx, &b, &second, target.get(), None, None)
            .await
            .unwrap(),
    );
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
    let again = restored(
        restore::restore(&cx, &b, &second, target.get(), None, None)
            .await
            .unwrap(),
    );
    assert!(again.restored.iter().all(|d| d.already_present));
    // One node only.
    let t2 = w
        .ecm
        .create_folder(NodeId::new(ENTERPRISE).unwrap(), "One")
        .await
        .unwrap();
    let one = restored(
        restore::restore(&cx, &b, &second, t2.get(), Some(w.docs[3].0.get()), None)
            .await
            .unwrap(),
    );
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

fn all_versions(b: &BackupConfig) -> BackupConfig {
    let mut b = b.clone();
    b.versions = crate::domain::backup::Versions::All;
    b
}

#[tokio::test]
async fn given_versions_all_when_snapshots_taken_then_every_version_is_a_line_incrementals_compare_per_version_and_restore_keeps_order()
 {
    let w = world().await;
    let b = all_versions(&w.backup(3));
    let (msa, _) = w.docs[3].clone();
    for body in [b"msa v2".as_slice(), b"msa v3 longer"] {
        w.ecm.add_version(msa, None, content(body)).await.unwrap();
    }
    let o = w.run(&b).await;
    let first = completed(&o).clone();
    // 8 documents, one of them with 3 versions: 10 lines.
    assert_eq!(first.counts.documents, 10);
    assert_eq!(first.counts.copied, 10);
    let lines = w.manifest(&first.snapshot_id);
    let msa_lines: Vec<&BackupRecord> = lines.iter().filter(|l| l.node_id == msa.get()).collect();
    assert_eq!(
        msa_lines.iter().map(|l| l.version).collect::<Vec<_>>(),
        vec![1, 2, 3],
        "one line per version, oldest first, consecutive"
    );
    for l in &msa_lines {
        let want = w.ecm.content(msa, Some(l.version)).unwrap();
        let got = w
            .store
            .file(&format!("/backups/t/{}/{}", first.snapshot_id, l.path))
            .unwrap();
        assert_eq!(got, want, "version {}", l.version);
    }
    // The latest sits under the document's own name, older ones beside it.
    assert_eq!(msa_lines[2].path, "Contracts/MSA.pdf");
    assert_eq!(
        msa_lines[0].path,
        format!("Contracts/MSA~{}v1.pdf", msa.get())
    );
    // A fourth version: only it is copied; the three older ones point at
    // the first snapshot.
    w.ecm
        .add_version(msa, None, content(b"msa v4"))
        .await
        .unwrap();
    let o = w.run(&b).await;
    let second = completed(&o).clone();
    assert_eq!(second.counts.documents, 11);
    assert_eq!(second.counts.copied, 1, "{:?}", second.counts);
    assert_eq!(second.counts.referenced, 10);
    let lines2 = w.manifest(&second.snapshot_id);
    let v4 = lines2
        .iter()
        .find(|l| l.node_id == msa.get() && l.version == 4)
        .unwrap();
    assert!(v4.snapshot.is_none());
    let v3 = lines2
        .iter()
        .find(|l| l.node_id == msa.get() && l.version == 3)
        .unwrap();
    assert_eq!(v3.snapshot.as_deref(), Some(first.snapshot_id.as_str()));
    assert_eq!(
        v3.path, "Contracts/MSA.pdf",
        "bytes where the first holds them"
    );
    let clock = || t0();
    let cx = w.cx_for(&clock);
    let ok = verified(
        verify::verify(&cx, &b, &second.snapshot_id, None)
            .await
            .unwrap(),
    );
    assert_eq!(ok.files_checked, 11);
    // Restore: the document comes back with its four versions in order.
    let target = w
        .ecm
        .create_folder(NodeId::new(ENTERPRISE).unwrap(), "Versions drill")
        .await
        .unwrap();
    let r = restored(
        restore::restore(&cx, &b, &second.snapshot_id, target.get(), None, None)
            .await
            .unwrap(),
    );
    assert_eq!(r.restored_total, 8);
    assert_eq!(r.versions, 11);
    let back = r
        .restored
        .iter()
        .find(|d| d.source_node_id == msa.get())
        .unwrap();
    assert_eq!(back.versions, 4);
    let node = NodeId::new(back.node_id).unwrap();
    let vs = w.ecm.versions(node).await.unwrap();
    assert_eq!(vs.len(), 4);
    for (i, v) in vs.iter().enumerate() {
        assert_eq!(
            w.ecm.content(node, Some(v.number)).unwrap(),
            w.ecm.content(msa, Some(i as u32 + 1)).unwrap(),
            "version {}",
            i + 1
        );
    }
    // A rerun adds no version.
    let again = restored(
        restore::restore(&cx, &b, &second.snapshot_id, target.get(), None, None)
            .await
            .unwrap(),
    );
    assert_eq!(again.already_present, 8);
    assert_eq!(w.ecm.versions(node).await.unwrap().len(), 4);
    // The default stays "latest": one line per document.
    let latest = w.backup(3);
    assert_eq!(latest.versions, crate::domain::backup::Versions::Latest);
    let o = w.run(&latest).await;
    assert_eq!(completed(&o).counts.documents, 8);
}

/// Runs a manual event to its end the way the deployed rule does: each
/// `Snapshot Continuation` published is fed back as the next event.
async fn chain(w: &World, first: serde_json::Value) -> (Vec<serde_json::Value>, u32) {
    let mut event = first;
    let mut outs = Vec::new();
    let mut n = 0;
    loop {
        n += 1;
        assert!(n < 50, "no end to the chain");
        let before = w.events.events().len();
        let clock = || t0();
        let cx = BackupContext {
            deadline: Some(Instant::now()),
            margin: Duration::from_secs(3600),
            ..w.cx_for(&clock)
        };
        let v = match parse_backup_event(event.clone()).unwrap() {
            BackupEvent::Verify {
                backup,
                snapshot_id,
                resume,
            } => serde_json::to_value(
                verify::verify(&cx, &backup, &snapshot_id, resume.as_deref())
                    .await
                    .unwrap(),
            ),
            BackupEvent::Restore {
                backup,
                snapshot_id,
                target_folder,
                node_id,
                resume,
            } => serde_json::to_value(
                restore::restore(
                    &cx,
                    &backup,
                    &snapshot_id,
                    target_folder,
                    node_id,
                    resume.as_deref(),
                )
                .await
                .unwrap(),
            ),
            other => panic!("{other:?}"),
        }
        .unwrap();
        outs.push(v.clone());
        if v["status"] != "continuing" {
            return (outs, n);
        }
        let new: Vec<_> = w.events.events()[before..]
            .iter()
            .filter(|e| e.detail_type == DetailType::SnapshotContinuation)
            .cloned()
            .collect();
        assert_eq!(new.len(), 1, "one continuation per invocation");
        event = new[0].detail.clone();
        assert!(event["resume"].is_string(), "{event}");
    }
}

#[tokio::test]
async fn given_deadline_near_when_verified_and_restored_then_they_continue_by_event_and_do_each_item_once()
 {
    let w = world().await;
    let b = w.backup(3);
    let id = completed(&w.run(&b).await).snapshot_id.clone();
    let bj = serde_json::to_value(&b).unwrap();
    let (outs, n) = chain(
        &w,
        serde_json::json!({"action": "verify", "backup": bj, "snapshot_id": id}),
    )
    .await;
    // Parallelism 3, at least one result per invocation before the deadline
    // stops new work: 8 files take 3 invocations.
    assert!(n >= 3, "{n}");
    let last = outs.last().unwrap();
    assert_eq!(last["status"], "verified", "{last}");
    assert_eq!(last["files_checked"], 8, "each file checked once: {last}");
    assert_eq!(last["invocations"], n);
    // The job's checkpoint is gone, its report is there.
    let report = format!("{}/report.json", last["report_path"].as_str().unwrap());
    assert!(w.store.file(&report).is_some(), "{report}");
    assert!(!w.store.paths().iter().any(|p| p.contains(".checkpoint")));
    // A duplicate of the last continuation finds nothing to do.
    let clock = || t0();
    let cx = w.cx_for(&clock);
    let job = last["job"].as_str().unwrap();
    let again = verify::verify(&cx, &b, &id, Some(job)).await.unwrap();
    assert!(
        matches!(again, VerifyOutcome::NothingToContinue { .. }),
        "{again:?}"
    );

    let target = w
        .ecm
        .create_folder(NodeId::new(ENTERPRISE).unwrap(), "Chained drill")
        .await
        .unwrap();
    let (outs, n) = chain(
        &w,
        serde_json::json!({"action": "restore", "backup": bj, "snapshot_id": id, "target_folder": target.get()}),
    )
    .await;
    assert!(n >= 3, "{n}");
    let last = outs.last().unwrap();
    assert_eq!(last["status"], "restored", "{last}");
    assert_eq!(last["restored_total"], 8, "{last}");
    assert_eq!(
        last["already_present"], 0,
        "no document was restored twice: {last}"
    );
    for (src, _) in &w.docs {
        let d = last["restored"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["source_node_id"] == src.get())
            .unwrap();
        let node = NodeId::new(d["node_id"].as_i64().unwrap()).unwrap();
        assert_eq!(w.ecm.versions(node).await.unwrap().len(), 1);
        assert_eq!(w.ecm.content(node, None), w.ecm.content(*src, None));
    }
}

#[tokio::test]
async fn given_more_problems_than_listed_when_verified_then_response_is_capped_and_the_report_holds_all()
 {
    let w = world().await;
    let ent = NodeId::new(ENTERPRISE).unwrap();
    let big = w.ecm.create_folder(ent, "Many").await.unwrap();
    for i in 0..150 {
        doc(
            &w.ecm,
            big,
            &format!("d{i:03}.txt"),
            format!("{i}").as_bytes(),
        )
        .await;
    }
    let mut b = w.backup(3);
    b.roots = vec![big.get()];
    b.page_size = 50;
    let id = completed(&w.run(&b).await).snapshot_id.clone();
    // A restore of 150 documents answers with counts and the first 100.
    let target = w.ecm.create_folder(ent, "Many back").await.unwrap();
    let clock0 = || t0();
    let r = restored(
        restore::restore(&w.cx_for(&clock0), &b, &id, target.get(), None, None)
            .await
            .unwrap(),
    );
    assert_eq!((r.restored.len(), r.restored_total), (job::LISTED_MAX, 150));
    let prefix = format!("{}/", r.report_path);
    let restored_lines: usize = w
        .store
        .paths()
        .iter()
        .filter(|p| p.starts_with(&prefix) && p.ends_with(".jsonl"))
        .map(|p| {
            std::str::from_utf8(&w.store.file(p).unwrap())
                .unwrap()
                .lines()
                .count()
        })
        .sum();
    assert_eq!(restored_lines, 150, "every restored document in the report");
    assert!(serde_json::to_vec(&r).unwrap().len() < 256 << 10);
    for l in w.manifest(&id) {
        let p = w
            .store
            .root()
            .resolve(&format!("/backups/t/{id}/{}", l.path))
            .unwrap();
        w.store.remove(&p).await.unwrap();
    }
    let clock = || t0();
    let cx = w.cx_for(&clock);
    let Err(e @ BackupError::VerifyFailed { .. }) = verify::verify(&cx, &b, &id, None).await else {
        panic!("verify passed")
    };
    let BackupError::VerifyFailed { ref report, .. } = e else {
        unreachable!()
    };
    assert_eq!(report.problems_total, 150);
    assert_eq!(report.problems.len(), job::LISTED_MAX);
    assert!(e.to_string().contains("and 130 more"), "{e}");
    let answer = serde_json::to_vec(report.as_ref()).unwrap();
    assert!(answer.len() < 256 << 10, "{} bytes", answer.len());
    assert!(e.to_string().len() < 16 << 10);
    // Every problem is in the report's parts.
    let prefix = format!("{}/", report.report_path);
    let lines: usize = w
        .store
        .paths()
        .iter()
        .filter(|p| p.starts_with(&prefix) && p.ends_with(".jsonl"))
        .map(|p| {
            std::str::from_utf8(&w.store.file(p).unwrap())
                .unwrap()
                .lines()
                .count()
        })
        .sum();
    assert_eq!(lines, 150);
    let event = w.events.events().last().unwrap().clone();
    assert_eq!(event.detail["problems_total"], 150);
    assert_eq!(event.detail["problems"].as_array().unwrap().len(), 100);
}

/// A store that yields to the scheduler before every operation, so two runs
/// on one thread interleave at each SFTP call as two invocations would.
struct Yielding(Arc<MemoryFileStore>);

#[async_trait::async_trait]
impl FileStore for Yielding {
    fn root(&self) -> &crate::domain::paths::RemoteRoot {
        self.0.root()
    }
    async fn list_pages(
        &self,
        dir: &RemotePath,
    ) -> Result<crate::ports::file_store::PageStream, FileStoreError> {
        tokio::task::yield_now().await;
        self.0.list_pages(dir).await
    }
    async fn stat(
        &self,
        path: &RemotePath,
    ) -> Result<crate::ports::file_store::FileMeta, FileStoreError> {
        tokio::task::yield_now().await;
        self.0.stat(path).await
    }
    async fn open_read(
        &self,
        path: &RemotePath,
    ) -> Result<crate::ports::file_store::ReadHandle, FileStoreError> {
        tokio::task::yield_now().await;
        self.0.open_read(path).await
    }
    async fn put_atomic(
        &self,
        path: &RemotePath,
        body: crate::ports::file_store::ByteStream,
        expected_len: Option<u64>,
        mode: crate::ports::file_store::RenameMode,
    ) -> Result<crate::ports::file_store::PutReceipt, FileStoreError> {
        tokio::task::yield_now().await;
        self.0.put_atomic(path, body, expected_len, mode).await
    }
    async fn mkdir_all(&self, dir: &RemotePath) -> Result<(), FileStoreError> {
        tokio::task::yield_now().await;
        self.0.mkdir_all(dir).await
    }
    async fn rename(
        &self,
        from: &RemotePath,
        to: &RemotePath,
        mode: crate::ports::file_store::RenameMode,
    ) -> Result<(), FileStoreError> {
        tokio::task::yield_now().await;
        self.0.rename(from, to, mode).await
    }
    async fn remove(&self, path: &RemotePath) -> Result<(), FileStoreError> {
        tokio::task::yield_now().await;
        self.0.remove(path).await
    }
    async fn remove_dir(&self, dir: &RemotePath) -> Result<(), FileStoreError> {
        tokio::task::yield_now().await;
        self.0.remove_dir(dir).await
    }
}

#[tokio::test]
async fn given_two_runs_racing_on_one_plan_when_scheduled_then_exactly_one_proceeds() {
    let w = world().await;
    let b = w.backup(3);
    let store = Yielding(Arc::clone(&w.store));
    let now = || t0();
    let cx = |id: &'static str| BackupContext {
        ecm: &w.ecm,
        store: &store,
        events: &w.events,
        invocation_id: id,
        deadline: None,
        margin: Duration::ZERO,
        clock: &now,
    };
    let (a, c) = (cx("run-a"), cx("run-b"));
    let (ra, rb) = tokio::join!(run_scheduled(&a, &b), run_scheduled(&c, &b));
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    let outcomes = [&ra, &rb];
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| matches!(o, SnapshotOutcome::Completed { .. }))
            .count(),
        1,
        "{ra:?}\n{rb:?}"
    );
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| matches!(o, SnapshotOutcome::Busy { .. }))
            .count(),
        1,
        "{ra:?}\n{rb:?}"
    );
    // One snapshot, each document once.
    let dirs: Vec<String> = w
        .store
        .paths()
        .into_iter()
        .filter(|p| p.starts_with("/backups/t/") && p.matches('/').count() == 3)
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    let id = dirs[0].rsplit('/').next().unwrap();
    assert_eq!(w.manifest(id).len(), 8);
    assert_eq!(
        w.events
            .events()
            .iter()
            .filter(|e| e.detail_type == DetailType::SnapshotCompleted)
            .count(),
        1
    );
}

#[tokio::test]
async fn given_manifest_split_across_chunks_when_read_line_by_line_then_every_record_and_line_number()
 {
    let store = MemoryFileStore::new(RemoteRoot::parse("/").unwrap());
    let rec = |i: i64| BackupRecord {
        node_id: i,
        ecm_path: vec![
            "r".into(),
            format!("{}", "x".repeat(i as usize * 97 % 5000)),
        ],
        path: format!("r/d{i}"),
        snapshot: None,
        version: 1,
        size: i as u64,
        sha256: "ab".repeat(32),
        modified: None,
        mime_type: None,
        metadata: Default::default(),
    };
    let mut text = String::new();
    for i in 1..=400 {
        text.push_str(&rec(i).to_line().unwrap());
        if i % 50 == 0 {
            text.push('\n');
        }
    }
    // Well over one 64 KiB chunk of the store, lines cut at chunk edges.
    assert!(text.len() > 3 * 64 * 1024);
    store.insert_file("/m.jsonl", text.as_bytes());
    let p = store.root().resolve("/m.jsonl").unwrap();
    let mut r = manifest::LineReader::open(&store, &p).await.unwrap();
    for i in 1..=400 {
        assert_eq!(r.next().await.unwrap().unwrap(), rec(i));
    }
    assert!(r.next().await.unwrap().is_none());
    let mut r = manifest::LineReader::open(&store, &p).await.unwrap();
    r.skip(399).await.unwrap();
    assert_eq!(r.next().await.unwrap().unwrap().node_id, 400);
    // A truncated last line is an error naming that line.
    store.insert_file("/m.jsonl", &text.as_bytes()[..text.len() - 10]);
    let mut r = manifest::LineReader::open(&store, &p).await.unwrap();
    let mut n = 0;
    let e = loop {
        match r.next().await {
            Ok(Some(_)) => n += 1,
            Ok(None) => panic!("truncation not seen"),
            Err(e) => break e,
        }
    };
    assert_eq!(n, 399);
    assert!(e.to_string().contains("line 407"), "{e}");
}

#[tokio::test]
async fn given_a_restore_under_way_when_retention_would_prune_its_snapshot_then_kept_until_the_restore_ends()
 {
    let w = world().await;
    let mut b = w.backup(1);
    b.incremental = false;
    let old = completed(&w.run(&b).await).snapshot_id.clone();
    let target = w
        .ecm
        .create_folder(NodeId::new(ENTERPRISE).unwrap(), "Long drill")
        .await
        .unwrap();
    // The first invocation of the restore stops at its deadline.
    let clock = || t0();
    let cx = BackupContext {
        deadline: Some(Instant::now()),
        margin: Duration::from_secs(3600),
        ..w.cx_for(&clock)
    };
    let o = restore::restore(&cx, &b, &old, target.get(), None, None)
        .await
        .unwrap();
    let RestoreOutcome::Continuing { ref job, .. } = o else {
        panic!("{o:?}")
    };
    let continuation = w.events.events().last().unwrap().detail.clone();
    assert_eq!(continuation["resume"], job.as_str());
    // A full snapshot with retention 1 would delete the old one: the
    // unfinished restore keeps it.
    let o = w.run(&b).await;
    let SnapshotOutcome::Completed { retention, .. } = &o else {
        panic!("{o:?}")
    };
    assert!(retention.delete.is_empty(), "{retention:?}");
    assert_eq!(retention.kept_for_jobs, vec![old.clone()]);
    // The restore goes on to the end, from the snapshot still there.
    let (outs, _) = chain(&w, continuation).await;
    let last = outs.last().unwrap();
    assert_eq!(last["status"], "restored", "{last}");
    assert_eq!(last["restored_total"], 8);
    // Done, it no longer holds retention back.
    let o = w.run(&b).await;
    let SnapshotOutcome::Completed { retention, .. } = &o else {
        panic!("{o:?}")
    };
    assert!(retention.delete.contains(&old), "{retention:?}");
}
