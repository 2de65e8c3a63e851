//! Unit tests of the ingest flow over in-memory doubles: a small in-memory
//! `FileStore` (below), `MemoryEcm` and `MemoryEvents`. The same behaviours
//! run against real sshd + emulator in `tests/tests/ingest_*.rs`.

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, TimeZone, Utc};
use futures_util::StreamExt;

use super::faulty_ecm::{Fault, FaultyEcm};
use super::*;
use crate::domain::paths::{RemotePath, RemoteRoot};
use crate::domain::route::{IngestEvent, parse_ingest_event};
use crate::ports::ecm::memory::MemoryEcm;
use crate::ports::ecm::{ChildFilter, UploadReceipt};
use crate::ports::events::MemoryEvents;
use crate::ports::file_store::{
    ByteStream, DirEntry, EntryKind, FileMeta, FileStore, FileStoreError, PageStream, PutReceipt,
    ReadHandle, RenameMode,
};

#[derive(Clone)]
enum Node {
    Dir,
    File { data: Vec<u8>, mtime: i64 },
}

/// A file tree in memory with the port's rename semantics.
struct MemStore {
    root: RemoteRoot,
    nodes: Mutex<BTreeMap<Vec<u8>, Node>>,
    /// Plays a server whose rename replaces an existing target.
    replaces_on_rename: std::sync::atomic::AtomicBool,
}

impl MemStore {
    fn new() -> Self {
        let mut nodes = BTreeMap::new();
        nodes.insert(b"/".to_vec(), Node::Dir);
        Self {
            root: RemoteRoot::parse("/").unwrap(),
            nodes: Mutex::new(nodes),
            replaces_on_rename: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn put(&self, path: &str, data: &[u8], mtime: i64) {
        let mut n = self.nodes.lock().unwrap();
        let mut cur = String::new();
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        for p in &parts[..parts.len() - 1] {
            cur.push('/');
            cur.push_str(p);
            n.entry(cur.clone().into_bytes()).or_insert(Node::Dir);
        }
        n.insert(
            format!("/{}", path.trim_start_matches('/')).into_bytes(),
            Node::File {
                data: data.to_vec(),
                mtime,
            },
        );
    }

    fn files_under(&self, prefix: &str) -> Vec<String> {
        let n = self.nodes.lock().unwrap();
        n.iter()
            .filter(|(k, v)| matches!(v, Node::File { .. }) && k.starts_with(prefix.as_bytes()))
            .map(|(k, _)| String::from_utf8_lossy(k).into_owned())
            .collect()
    }

    fn read(&self, path: &str) -> Option<Vec<u8>> {
        match self.nodes.lock().unwrap().get(path.as_bytes()) {
            Some(Node::File { data, .. }) => Some(data.clone()),
            _ => None,
        }
    }
}

fn nf(p: &RemotePath) -> FileStoreError {
    FileStoreError::NotFound {
        path: p.to_string(),
    }
}

#[async_trait]
impl FileStore for MemStore {
    fn root(&self) -> &RemoteRoot {
        &self.root
    }

    async fn verify_no_replace(&self, dir: &RemotePath) -> Result<(), FileStoreError> {
        if self
            .replaces_on_rename
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            return Err(FileStoreError::Unsupported {
                op: "rename",
                path: dir.to_string(),
                reason: "the server's rename replaces an existing target".into(),
            });
        }
        Ok(())
    }

    async fn list_pages(&self, dir: &RemotePath) -> Result<PageStream, FileStoreError> {
        let n = self.nodes.lock().unwrap();
        if !matches!(n.get(dir.as_bytes()), Some(Node::Dir)) {
            return Err(nf(dir));
        }
        let mut prefix = dir.as_bytes().to_vec();
        if prefix != b"/" {
            prefix.push(b'/');
        }
        let mut out = Vec::new();
        for (k, v) in n.iter() {
            if k.len() <= prefix.len() || !k.starts_with(&prefix) {
                continue;
            }
            let name = &k[prefix.len()..];
            if name.contains(&b'/') {
                continue;
            }
            let (kind, size, mtime) = match v {
                Node::Dir => (EntryKind::Dir, None, None),
                Node::File { data, mtime } => (
                    EntryKind::File,
                    Some(data.len() as u64),
                    Utc.timestamp_opt(*mtime, 0).single(),
                ),
            };
            out.push(DirEntry {
                name: name.to_vec(),
                display_name: String::from_utf8_lossy(name).into_owned(),
                path: dir.join(name)?,
                meta: FileMeta { kind, size, mtime },
            });
        }
        Ok(Box::pin(futures_util::stream::iter([Ok(out)])))
    }

    async fn stat(&self, path: &RemotePath) -> Result<FileMeta, FileStoreError> {
        match self.nodes.lock().unwrap().get(path.as_bytes()) {
            Some(Node::Dir) => Ok(FileMeta {
                kind: EntryKind::Dir,
                size: None,
                mtime: None,
            }),
            Some(Node::File { data, mtime }) => Ok(FileMeta {
                kind: EntryKind::File,
                size: Some(data.len() as u64),
                mtime: Utc.timestamp_opt(*mtime, 0).single(),
            }),
            None => Err(nf(path)),
        }
    }

    async fn open_read(&self, path: &RemotePath) -> Result<ReadHandle, FileStoreError> {
        let meta = self.stat(path).await?;
        let data = self.read(&path.to_string_lossy()).ok_or_else(|| nf(path))?;
        // Small chunks, so the head is assembled from several of them.
        let chunks: Vec<Result<Bytes, FileStoreError>> = data
            .chunks(100)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        Ok(ReadHandle {
            meta,
            body: Box::pin(futures_util::stream::iter(chunks)),
        })
    }

    async fn put_atomic(
        &self,
        path: &RemotePath,
        mut body: ByteStream,
        _expected_len: Option<u64>,
        mode: RenameMode,
    ) -> Result<PutReceipt, FileStoreError> {
        let mut data = Vec::new();
        while let Some(c) = body.next().await {
            data.extend_from_slice(&c?);
        }
        let mut n = self.nodes.lock().unwrap();
        if mode == RenameMode::NoReplace && n.contains_key(path.as_bytes()) {
            return Err(FileStoreError::AlreadyExists {
                path: path.to_string(),
            });
        }
        let size = data.len() as u64;
        n.insert(path.as_bytes().to_vec(), Node::File { data, mtime: 0 });
        Ok(PutReceipt {
            size,
            sha256: String::new(),
            synced: true,
        })
    }

    async fn mkdir_all(&self, dir: &RemotePath) -> Result<(), FileStoreError> {
        let mut n = self.nodes.lock().unwrap();
        for a in dir.ancestors_below_root() {
            n.entry(a.as_bytes().to_vec()).or_insert(Node::Dir);
        }
        Ok(())
    }

    async fn rename(
        &self,
        from: &RemotePath,
        to: &RemotePath,
        mode: RenameMode,
    ) -> Result<(), FileStoreError> {
        let mut n = self.nodes.lock().unwrap();
        if !n.contains_key(from.as_bytes()) {
            return Err(nf(from));
        }
        if mode == RenameMode::NoReplace && n.contains_key(to.as_bytes()) {
            return Err(FileStoreError::AlreadyExists {
                path: to.to_string(),
            });
        }
        if let Some(p) = to.parent()
            && !n.contains_key(p.as_bytes())
        {
            return Err(nf(&p));
        }
        // Move the entry and everything below it (directories too).
        let mut prefix = from.as_bytes().to_vec();
        prefix.push(b'/');
        let moved: Vec<Vec<u8>> = n
            .keys()
            .filter(|k| k.as_slice() == from.as_bytes() || k.starts_with(&prefix))
            .cloned()
            .collect();
        for k in moved {
            if let Some(v) = n.remove(&k) {
                let mut nk = to.as_bytes().to_vec();
                nk.extend_from_slice(&k[from.as_bytes().len()..]);
                n.insert(nk, v);
            }
        }
        Ok(())
    }

    async fn remove(&self, path: &RemotePath) -> Result<(), FileStoreError> {
        match self.nodes.lock().unwrap().remove(path.as_bytes()) {
            Some(_) => Ok(()),
            None => Err(nf(path)),
        }
    }

    async fn remove_dir(&self, dir: &RemotePath) -> Result<(), FileStoreError> {
        let mut n = self.nodes.lock().unwrap();
        let mut prefix = dir.as_bytes().to_vec();
        prefix.push(b'/');
        if n.keys().any(|k| k.starts_with(&prefix)) {
            return Err(FileStoreError::Failed {
                op: "rmdir",
                path: dir.to_string(),
                reason: "directory not empty".into(),
            });
        }
        match n.remove(dir.as_bytes()) {
            Some(Node::Dir) => Ok(()),
            Some(other) => {
                n.insert(dir.as_bytes().to_vec(), other);
                Err(FileStoreError::WrongKind {
                    path: dir.to_string(),
                    kind: EntryKind::File,
                })
            }
            None => Err(nf(dir)),
        }
    }
}

struct FixedClock(DateTime<Utc>);
impl Clock for FixedClock {
    fn now(&self) -> DateTime<Utc> {
        self.0
    }
}

/// The id MemoryEcm gives the one template seeded in `World::new` (its
/// first node after the Enterprise volume).
const TEMPLATE: i64 = 10_001;

const NOW: i64 = 1_795_000_000; // 2026-11-18T11:06:40Z

fn pdf(body: &str) -> Vec<u8> {
    format!("%PDF-1.7\n{body}\n%%EOF\n").into_bytes()
}

fn route(extra_rules: serde_json::Value, on_existing: &str) -> Route {
    parse_route(route_json(extra_rules, on_existing))
}

fn parse_route(ev: serde_json::Value) -> Route {
    match parse_ingest_event(ev).unwrap() {
        IngestEvent::Scheduled(r) => r,
        other => panic!("{other:?}"),
    }
}

fn route_json(extra_rules: serde_json::Value, on_existing: &str) -> serde_json::Value {
    let mut rules = vec![serde_json::json!({
        "name": "supplier-invoice",
        "match": {
            "regex": "INV-(?P<invoice_no>[0-9]{4,10})_(?P<vendor_id>[0-9]{10})\\.pdf",
            "file_types": ["pdf"]
        },
        "place": {
            "workspace": {"by": "business_object", "type_id": 100, "ext_system": "SAP",
                          "bo_type": "LFA1", "bo_id": "{vendor_id}",
                          "create": {"template_id": TEMPLATE, "name": "Supplier {vendor_id}"}},
            "folder": "Invoices/{yyyy}/{mm}",
            "name": "Invoice {invoice_no}.{ext}",
            "categories": [{"category_id": 9005, "attributes": {"2": "{invoice_no}"}}],
            "rm_classification": 7002,
            "on_existing": on_existing
        }
    })];
    if let serde_json::Value::Array(a) = extra_rules {
        rules.extend(a);
    }
    let ev = serde_json::json!({"route": {
        "name": "acme",
        "sftp_secret": "xecm/local/sftp",
        "source_dir": "in",
        "readiness": {"min_age_secs": 60},
        "rules": rules,
        "fallback": "fail",
        "limits": {"max_files": 100, "max_bytes": 1_000_000_000u64, "parallelism": 3,
                   "max_attempts": 3, "lease_secs": 1800},
        "transfer_history": {"category_id": 9002, "attributes": {
            "route": 2, "host": 3, "source_path": 4, "size": 5, "sha256": 6,
            "received_at": 7, "ingested_at": 8, "invocation_id": 9,
            "idempotency_key": 10, "original_name": 11}}
    }});
    ev
}

struct World {
    store: MemStore,
    ecm: FaultyEcm,
    events: MemoryEvents,
    clock: FixedClock,
}

impl World {
    /// A file claimed by a run that died (lease long expired), mtime
    /// `NOW - 5000`.
    fn put_crashed_claim(&self, rel: &str, body: &[u8]) {
        let tag = ClaimTag::new("acme", 1, NOW - 4000, "crashed-run");
        self.store.put(
            &format!("in/.inflight/{}/{rel}", tag.dir_name()),
            body,
            NOW - 5000,
        );
    }
    /// The workspace folder the default rule files supplier 0000100001's
    /// November 2026 invoices into, as a run would create it.
    async fn supplier_invoice_folder(&self) -> NodeId {
        let ws = self
            .ecm
            .create_workspace(&CreateWorkspace {
                template_id: NodeId::new(TEMPLATE).unwrap(),
                type_id: 100,
                name: "Supplier 0000100001".into(),
                parent: None,
                business_object: Some(BusinessObject {
                    ext_system_id: "SAP".into(),
                    bo_type: "LFA1".into(),
                    bo_id: "0000100001".into(),
                }),
                categories: vec![],
            })
            .await
            .unwrap();
        self.ecm
            .ensure_folder_path(ws, &["Invoices".into(), "2026".into(), "11".into()])
            .await
            .unwrap()
    }

    /// A document whose transfer history carries `key` (what a run leaves).
    async fn doc_with_key(
        &self,
        folder: NodeId,
        name: &str,
        body: &[u8],
        key: &str,
    ) -> UploadReceipt {
        let mut vals = CategoryValues::new();
        vals.insert("9002_10".into(), serde_json::json!(key));
        let bytes = Bytes::from(body.to_vec());
        self.ecm
            .upload(UploadRequest {
                parent: folder,
                name: name.into(),
                description: None,
                categories: vec![AppliedCategory {
                    category_id: 9002,
                    values: vals,
                }],
                classifications: vec![],
                content: Content {
                    stream: Box::pin(futures_util::stream::iter([Ok(bytes)])),
                    length: body.len() as u64,
                    file_name: name.into(),
                    mime_type: "application/pdf".into(),
                },
            })
            .await
            .unwrap()
    }
    fn new() -> Self {
        let ecm = MemoryEcm::new();
        ecm.add_workspace_type(100, "Supplier", &["Supplier template"]);
        Self {
            store: MemStore::new(),
            ecm: FaultyEcm::new(ecm),
            events: MemoryEvents::new(),
            clock: FixedClock(Utc.timestamp_opt(NOW, 0).unwrap()),
        }
    }

    /// A run whose clock reads `now` (Unix seconds).
    async fn run_at(&self, route: &Route, id: &str, now: i64) -> IngestReport {
        let clock = FixedClock(Utc.timestamp_opt(now, 0).unwrap());
        let deps = IngestDeps {
            store: &self.store,
            ecm: &self.ecm,
            events: &self.events,
            clock: &clock,
            sftp_host: "sftp.test".into(),
        };
        let ctx = RunContext::new(id, Duration::from_secs(300));
        run(route, &deps, &ctx).await.unwrap()
    }

    async fn run(&self, route: &Route, id: &str) -> IngestReport {
        let deps = IngestDeps {
            store: &self.store,
            ecm: &self.ecm,
            events: &self.events,
            clock: &self.clock,
            sftp_host: "sftp.test".into(),
        };
        let ctx = RunContext::new(id, Duration::from_secs(300));
        run(route, &deps, &ctx).await.unwrap()
    }

    async fn doc(&self, node: i64) -> (String, Vec<u32>, BTreeMap<String, String>) {
        let id = NodeId::new(node).unwrap();
        let n = self.ecm.node(id).await.unwrap();
        let versions = self
            .ecm
            .versions(id)
            .await
            .unwrap()
            .iter()
            .map(|v| v.number)
            .collect();
        let hist = self
            .ecm
            .categories(id)
            .await
            .unwrap()
            .into_iter()
            .find(|c| c.category_id == 9002)
            .map(|c| {
                c.values
                    .iter()
                    .filter_map(|(k, v)| text(v).map(|t| (k.clone(), t)))
                    .collect()
            })
            .unwrap_or_default();
        (n.name, versions, hist)
    }
}

fn sha_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

#[tokio::test]
async fn given_ready_invoice_when_run_then_created_with_history_and_archived() {
    let w = World::new();
    let body = pdf("invoice 4711");
    w.store.put("in/INV-4711_0000100001.pdf", &body, NOW - 3600);
    let r = route(serde_json::json!([]), "fail");

    let rep = w.run(&r, "req-1").await;

    assert_eq!(rep.counts.ingested, 1, "{rep:#?}");
    let f = &rep.files[0];
    assert_eq!(f.outcome, FileOutcome::Created);
    // The file's own duration is reported (as in the Transfer Ingested event).
    assert!(f.duration_ms.is_some(), "{f:#?}");
    let (name, versions, hist) = w.doc(f.node_id.unwrap()).await;
    assert_eq!(name, "Invoice 4711.pdf");
    assert_eq!(versions, vec![1]);
    assert_eq!(hist["9002_6"], sha_hex(&body));
    assert_eq!(
        hist["9002_10"],
        idempotency_key(
            "acme",
            "INV-4711_0000100001.pdf",
            body.len() as u64,
            &sha_hex(&body)
        )
    );
    assert_eq!(hist["9002_4"], "INV-4711_0000100001.pdf");
    assert_eq!(hist["9002_9"], "req-1");
    assert_eq!(
        w.ecm
            .rm_classifications(NodeId::new(f.node_id.unwrap()).unwrap())
            .await
            .unwrap(),
        vec![7002]
    );
    // Received in the month of the file's mtime: 2026/11.
    assert!(
        f.ecm_path.as_deref().unwrap().contains("Invoices/2026/11"),
        "{f:?}"
    );
    assert!(w.store.files_under("/in/INV").is_empty());
    assert_eq!(
        w.store.files_under("/in/archive/2026-11-18/"),
        vec!["/in/archive/2026-11-18/INV-4711_0000100001.pdf".to_string()]
    );
    // The claim directory went with the file.
    let left: Vec<String> = w
        .store
        .nodes
        .lock()
        .unwrap()
        .keys()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .filter(|k| k.starts_with("/in/.inflight/"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    let evs = w.events.events();
    assert_eq!(evs.len(), 1);
    assert_eq!(evs[0].detail_type, DetailType::TransferIngested);
    assert_eq!(evs[0].detail["sha256"], sha_hex(&body));
    assert_eq!(evs[0].detail["duration_ms"], f.duration_ms.unwrap_or(0));
}

#[tokio::test]
async fn given_young_file_when_run_then_deferred_and_left_in_place() {
    let w = World::new();
    w.store
        .put("in/INV-4711_0000100001.pdf", &pdf("x"), NOW - 10);
    let rep = w.run(&route(serde_json::json!([]), "fail"), "req-1").await;
    assert_eq!(rep.counts.deferred, 1);
    assert_eq!(rep.counts.ingested, 0);
    assert_eq!(w.store.files_under("/in/INV").len(), 1);
}

#[tokio::test]
async fn given_fake_pdf_and_unmatched_file_when_run_then_both_failed_with_reports() {
    let w = World::new();
    w.store.put(
        "in/INV-4712_0000100001.pdf",
        b"MZ\x90\x00 not a pdf",
        NOW - 3600,
    );
    w.store.put("in/holiday.txt", b"hello", NOW - 3600);
    let rep = w.run(&route(serde_json::json!([]), "fail"), "req-1").await;

    assert_eq!(rep.counts.failed, 2, "{rep:#?}");
    let failed = w.store.files_under("/in/failed/");
    assert!(failed.contains(&"/in/failed/INV-4712_0000100001.pdf".to_string()));
    let report: serde_json::Value = serde_json::from_slice(
        &w.store
            .read("/in/failed/INV-4712_0000100001.pdf.error.json")
            .unwrap(),
    )
    .unwrap();
    assert!(report["reason"].as_str().unwrap().contains("promises pdf"));
    let report: serde_json::Value =
        serde_json::from_slice(&w.store.read("/in/failed/holiday.txt.error.json").unwrap())
            .unwrap();
    assert!(
        report["reason"]
            .as_str()
            .unwrap()
            .contains("no rule matches")
    );
    assert!(
        w.events
            .events()
            .iter()
            .all(|e| e.detail_type == DetailType::TransferFailed)
    );
}

#[tokio::test]
async fn given_same_name_again_when_policy_add_version_then_version_two() {
    let w = World::new();
    let r = route(serde_json::json!([]), "add-version");
    w.store
        .put("in/INV-4711_0000100001.pdf", &pdf("draft"), NOW - 3600);
    let first = w.run(&r, "req-1").await;
    let node = first.files[0].node_id.unwrap();
    w.store
        .put("in/INV-4711_0000100001.pdf", &pdf("redline v2"), NOW - 1800);
    let second = w.run(&r, "req-2").await;

    assert_eq!(
        second.files[0].outcome,
        FileOutcome::VersionAdded,
        "{second:#?}"
    );
    assert_eq!(second.files[0].node_id, Some(node));
    let (_, versions, hist) = w.doc(node).await;
    assert_eq!(versions, vec![1, 2]);
    assert_eq!(hist["9002_6"], sha_hex(&pdf("redline v2")));
}

#[tokio::test]
async fn given_identical_file_again_when_skip_if_identical_then_skipped_else_failed() {
    let w = World::new();
    let r = route(serde_json::json!([]), "skip-if-identical");
    w.store
        .put("in/INV-4711_0000100001.pdf", &pdf("same"), NOW - 3600);
    w.run(&r, "req-1").await;
    // Same bytes, another mtime (a re-drop).
    w.store
        .put("in/INV-4711_0000100001.pdf", &pdf("same"), NOW - 1000);
    let again = w.run(&r, "req-2").await;
    assert!(
        matches!(
            again.files[0].outcome,
            FileOutcome::SkippedIdentical | FileOutcome::AlreadyIngested
        ),
        "{again:#?}"
    );
    w.store
        .put("in/INV-4711_0000100001.pdf", &pdf("other"), NOW - 1000);
    let other = w.run(&r, "req-3").await;
    assert_eq!(other.files[0].outcome, FileOutcome::Failed, "{other:#?}");
}

#[tokio::test]
async fn given_taken_name_when_policy_rename_then_numbered_copy() {
    let w = World::new();
    let r = route(serde_json::json!([]), "rename");
    w.store
        .put("in/INV-4711_0000100001.pdf", &pdf("one"), NOW - 3600);
    w.run(&r, "req-1").await;
    w.store
        .put("in/INV-4711_0000100001.pdf", &pdf("two"), NOW - 1000);
    let rep = w.run(&r, "req-2").await;
    let (name, _, _) = w.doc(rep.files[0].node_id.unwrap()).await;
    assert_eq!(name, "Invoice 4711 (2).pdf");
}

#[tokio::test]
async fn given_crash_after_upload_when_rerun_after_lease_then_one_document_and_archived() {
    let w = World::new();
    let r = route(serde_json::json!([]), "fail");
    let body = pdf("crash");
    // What a crashed run leaves: the file claimed (old tag, lease expired)
    // and a document carrying the pending key, without SHA-256.
    let rel = "INV-4711_0000100001.pdf";
    w.put_crashed_claim(rel, &body);
    let folder = w.supplier_invoice_folder().await;
    let key = pending_key("acme", rel, body.len() as u64, NOW - 5000, 1);
    let receipt = w
        .doc_with_key(folder, "Invoice 4711.pdf", &body, &key)
        .await;

    let rep = w.run(&r, "req-2").await;

    assert_eq!(rep.counts.skipped + rep.counts.ingested, 1, "{rep:#?}");
    assert_eq!(rep.files[0].node_id, Some(receipt.node_id.get()));
    let (_, versions, hist) = w.doc(receipt.node_id.get()).await;
    assert_eq!(versions, vec![1], "no second upload");
    assert_eq!(hist["9002_6"], sha_hex(&body));
    assert!(hist["9002_10"].starts_with("ik1-"));
    assert_eq!(
        w.store.files_under("/in/archive/").len(),
        1,
        "archived after finishing"
    );
    // And a further run does nothing.
    let again = w.run(&r, "req-3").await;
    assert!(again.files.is_empty(), "{again:#?}");
}

#[tokio::test]
async fn given_crash_after_a_numbered_copy_when_rerun_with_rename_policy_then_that_copy_is_finished()
 {
    let w = World::new();
    let r = route(serde_json::json!([]), "rename");
    let body = pdf("crash, second file of the name");
    let rel = "INV-4711_0000100001.pdf";
    w.put_crashed_claim(rel, &body);
    let folder = w.supplier_invoice_folder().await;
    // The name was taken by an earlier, different file ...
    let other = pdf("the first file of the name");
    w.doc_with_key(
        folder,
        "Invoice 4711.pdf",
        &other,
        &idempotency_key(
            "acme",
            "old/INV-4711.pdf",
            other.len() as u64,
            &sha_hex(&other),
        ),
    )
    .await;
    // ... so the crashed run had created the numbered copy.
    let key = pending_key("acme", rel, body.len() as u64, NOW - 5000, 1);
    let copy = w
        .doc_with_key(folder, "Invoice 4711 (2).pdf", &body, &key)
        .await;

    let rep = w.run(&r, "req-2").await;

    assert_eq!(rep.files.len(), 1, "{rep:#?}");
    assert_eq!(
        rep.files[0].outcome,
        FileOutcome::AlreadyIngested,
        "{rep:#?}"
    );
    assert_eq!(rep.files[0].node_id, Some(copy.node_id.get()));
    let names: Vec<String> = w
        .ecm
        .children(folder, &ChildFilter::default(), 1, 100)
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|n| n.name)
        .collect();
    assert_eq!(names.len(), 2, "no third copy: {names:?}");
    let (_, versions, hist) = w.doc(copy.node_id.get()).await;
    assert_eq!(versions, vec![1]);
    assert_eq!(hist["9002_6"], sha_hex(&body));
    assert_eq!(w.store.files_under("/in/archive/").len(), 1);
}

#[tokio::test]
async fn given_held_claim_when_run_then_deferred_and_expired_last_attempt_quarantined() {
    let w = World::new();
    let r = route(serde_json::json!([]), "fail");
    let held = ClaimTag::new("acme", 1, NOW - 10, "other-run");
    w.store.put(
        &format!("in/.inflight/{}/INV-1111_0000100001.pdf", held.dir_name()),
        &pdf("a"),
        NOW - 100,
    );
    let spent = ClaimTag::new("acme", 3, NOW - 4000, "third-run");
    w.store.put(
        &format!("in/.inflight/{}/INV-2222_0000100001.pdf", spent.dir_name()),
        &pdf("b"),
        NOW - 5000,
    );
    let rep = w.run(&r, "req-4").await;
    let by_path: BTreeMap<_, _> = rep
        .files
        .iter()
        .map(|f| (f.source_path.as_str(), f.outcome))
        .collect();
    assert_eq!(by_path["INV-1111_0000100001.pdf"], FileOutcome::Deferred);
    assert_eq!(by_path["INV-2222_0000100001.pdf"], FileOutcome::Quarantined);
    assert!(w.store.read("/in/failed/INV-2222_0000100001.pdf").is_some());
}

#[tokio::test]
async fn given_passed_deadline_when_run_then_nothing_claimed_and_count_reported() {
    let w = World::new();
    for i in 0..3 {
        w.store.put(
            &format!("in/INV-100{i}_0000100001.pdf"),
            &pdf("x"),
            NOW - 3600,
        );
    }
    let deps = IngestDeps {
        store: &w.store,
        ecm: &w.ecm,
        events: &w.events,
        clock: &w.clock,
        sftp_host: "h".into(),
    };
    let ctx = RunContext {
        invocation_id: "req".into(),
        deadline: Instant::now() + Duration::from_secs(5),
        stop_margin: Duration::from_secs(10),
    };
    let rep = run(&route(serde_json::json!([]), "fail"), &deps, &ctx)
        .await
        .unwrap();
    assert_eq!(rep.left_for_next_run, 3);
    assert!(rep.stopped_early);
    assert_eq!(w.store.files_under("/in/INV").len(), 3);
}

#[tokio::test]
async fn given_sidecar_and_index_when_run_then_metadata_used_and_all_archived() {
    let w = World::new();
    let ev = serde_json::json!({"route": {
        "name": "qms",
        "sftp_secret": "s",
        "source_dir": "q",
        "readiness": {"min_age_secs": 60},
        "index": {"pattern": "index-*.csv", "file_column": "file", "delimiter": ";"},
        "rules": [{
            "name": "report",
            "match": {"glob": "*.pdf", "meta": {"type": "audit"}},
            "place": {"workspace": {"by": "node", "node_id": 5301},
                      "folder": "Reports/{meta.period}",
                      "name": "{meta.title}.{ext}"}
        }],
        "fallback": "fail",
        "transfer_history": {"category_id": 9002, "attributes": {
            "route": 2, "host": 3, "source_path": 4, "size": 5, "sha256": 6,
            "received_at": 7, "ingested_at": 8, "invocation_id": 9, "idempotency_key": 10}}
    }});
    let IngestEvent::Scheduled(r) = parse_ingest_event(ev).unwrap() else {
        panic!()
    };
    w.ecm
        .create_folder(NodeId::new(2000).unwrap(), "ws")
        .await
        .ok();
    w.store.put(
        "q/index-2026.csv",
        b"file;type;period;title\na.pdf;audit;2026-Q3;Audit A\n",
        NOW - 3600,
    );
    w.store.put("q/a.pdf", &pdf("a"), NOW - 3600);
    w.store.put("q/b.pdf", &pdf("b"), NOW - 3600);
    w.store.put(
        "q/b.pdf.json",
        br#"{"type":"audit","period":"2026-Q4","title":"Audit B"}"#,
        NOW - 3600,
    );
    let rep = w.run(&r, "req").await;
    // Node 5301 does not exist in MemoryEcm: both fail the same way, but
    // after classification (metadata matched the rule).
    for f in &rep.files {
        assert!(
            f.reason.as_deref().unwrap_or("").contains("5301") || f.outcome == FileOutcome::Created,
            "{f:?}"
        );
    }
    assert_eq!(rep.files.len(), 2, "{rep:#?}");
}

#[tokio::test]
async fn given_failed_file_when_manual_retry_then_back_in_intake_without_report_and_ingested_next()
{
    let w = World::new();
    let r = route(serde_json::json!([]), "fail");
    // No rule matches the name at first: it fails.
    w.store
        .put("in/INV-47_0000100001.pdf", &pdf("x"), NOW - 3600);
    let first = w.run(&r, "req-1").await;
    assert_eq!(first.counts.failed, 1);
    assert!(
        w.store
            .read("/in/failed/INV-47_0000100001.pdf.error.json")
            .is_some()
    );

    let deps = IngestDeps {
        store: &w.store,
        ecm: &w.ecm,
        events: &w.events,
        clock: &w.clock,
        sftp_host: "h".into(),
    };
    let ctx = RunContext::new("req-2", Duration::from_secs(60));
    let rep = retry(
        &r,
        &[
            "INV-47_0000100001.pdf".to_string(),
            "missing.pdf".to_string(),
        ],
        &deps,
        &ctx,
    )
    .await
    .unwrap();
    assert_eq!(rep.counts.requeued, 1, "{rep:#?}");
    assert_eq!(rep.files[1].outcome, FileOutcome::Failed);
    assert!(w.store.read("/in/INV-47_0000100001.pdf").is_some());
    assert!(w.store.files_under("/in/failed/").is_empty());
}

// ------------------------------------------------------------ issue 15

fn content_of(body: &[u8]) -> Content {
    Content {
        stream: Box::pin(futures_util::stream::iter([Ok(Bytes::from(body.to_vec()))])),
        length: body.len() as u64,
        file_name: "x.pdf".into(),
        mime_type: "application/pdf".into(),
    }
}

/// A PDF above the size up to which files are read whole before the upload.
fn large_pdf(body: &str) -> Vec<u8> {
    let mut b = pdf(body);
    b.extend(std::iter::repeat_n(b'.', SMALL_FILE_BYTES as usize + 1000));
    b
}

fn inflight_files(w: &World) -> Vec<String> {
    w.store.files_under("/in/.inflight/")
}

/// Defect 3: a partner re-sending yesterday's redline (same bytes) on an
/// add-version route must not become a further version.
#[tokio::test]
async fn given_add_version_route_when_an_older_version_is_resent_then_no_duplicate_version() {
    for (label, make) in [
        ("small", pdf as fn(&str) -> Vec<u8>),
        ("large", large_pdf as fn(&str) -> Vec<u8>),
    ] {
        let w = World::new();
        let r = route(serde_json::json!([]), "add-version");
        let path = "in/INV-4711_0000100001.pdf";
        w.store.put(path, &make("draft one"), NOW - 7200);
        let first = w.run(&r, "req-1").await;
        let node = first.files[0].node_id.unwrap();
        w.store.put(path, &make("redline two"), NOW - 3600);
        let second = w.run(&r, "req-2").await;
        assert_eq!(
            second.files[0].outcome,
            FileOutcome::VersionAdded,
            "{label}"
        );
        // The partner sends the first file again (same bytes, new mtime).
        w.store.put(path, &make("draft one"), NOW - 600);
        let third = w.run(&r, "req-3").await;

        assert!(
            matches!(
                third.files[0].outcome,
                FileOutcome::AlreadyIngested | FileOutcome::SkippedIdentical
            ),
            "{label}: {third:#?}"
        );
        assert_eq!(third.files[0].node_id, Some(node), "{label}");
        let (_, versions, _) = w.doc(node).await;
        assert_eq!(versions, vec![1, 2], "{label}: no third version");
        assert_eq!(w.store.files_under("/in/archive/").len(), 3, "{label}");
    }
}

/// Defect 4: an ECM outage stops the run after the first retryable failure;
/// nothing goes to `failed/`, and the next run (ECM back) ingests everything
/// without waiting for the lease.
#[tokio::test]
async fn given_ecm_outage_when_run_then_run_stops_claims_stay_and_next_run_ingests_all() {
    let w = World::new();
    let r = route(serde_json::json!([]), "fail");
    for i in 0..6 {
        w.store.put(
            &format!("in/INV-100{i}_0000100001.pdf"),
            &pdf(&format!("x{i}")),
            NOW - 3600,
        );
    }
    w.ecm.arm("upload", u32::MAX, Fault::Transient);

    let rep = w.run(&r, "req-1").await;

    assert_eq!(rep.counts.failed, 0, "{rep:#?}");
    assert!(rep.stopped_early, "{rep:#?}");
    assert!(
        w.ecm.calls("upload") <= 3,
        "kept uploading during an outage: {}",
        w.ecm.calls("upload")
    );
    assert!(w.store.files_under("/in/failed/").is_empty());
    let intake = w.store.files_under("/in/INV").len();
    assert_eq!(intake + inflight_files(&w).len(), 6);

    w.ecm.disarm();
    let next = w.run(&r, "req-2").await;
    assert_eq!(next.counts.ingested, 6, "{next:#?}");
    assert!(inflight_files(&w).is_empty());
    assert_eq!(w.store.files_under("/in/archive/").len(), 6);
}

/// Defect 4: an outage on a claim's last allowed attempt does not quarantine
/// it, and does not spend the attempt.
#[tokio::test]
async fn given_outage_on_the_last_attempt_when_run_then_not_quarantined() {
    let w = World::new();
    let r = route(serde_json::json!([]), "fail");
    let tag = ClaimTag::new("acme", 2, NOW - 4000, "second-run");
    w.store.put(
        &format!("in/.inflight/{}/INV-4711_0000100001.pdf", tag.dir_name()),
        &pdf("late"),
        NOW - 5000,
    );
    w.ecm.arm("upload", u32::MAX, Fault::Transient);
    let rep = w.run(&r, "req-3").await;
    assert_eq!(rep.counts.failed, 0, "{rep:#?}");
    assert!(w.store.files_under("/in/failed/").is_empty());
    assert_eq!(inflight_files(&w).len(), 1);

    w.ecm.disarm();
    let next = w.run(&r, "req-4").await;
    assert_eq!(next.counts.ingested, 1, "{next:#?}");
}

/// Defect 9: after a crash between marking the document for our version and
/// uploading it, someone else checked in that version number. Ours must still
/// be added, not their version taken for ours.
#[tokio::test]
async fn given_foreign_version_checked_in_during_crash_when_rerun_then_our_content_is_added() {
    for (label, body, theirs) in [
        ("small", pdf("our redline"), pdf("his redline")),
        ("large", large_pdf("our redline"), large_pdf("his redline")),
    ] {
        let w = World::new();
        let r = route(serde_json::json!([]), "add-version");
        let rel = "INV-4711_0000100001.pdf";
        w.put_crashed_claim(rel, &body);
        let folder = w.supplier_invoice_folder().await;
        let first = pdf("first version");
        let doc = w
            .doc_with_key(
                folder,
                "Invoice 4711.pdf",
                &first,
                &idempotency_key("acme", rel, first.len() as u64, &sha_hex(&first)),
            )
            .await;
        // Our crashed run had marked the document for its version 2 ...
        let mut mark = CategoryValues::new();
        mark.insert(
            "9002_10".into(),
            serde_json::json!(pending_key("acme", rel, body.len() as u64, NOW - 5000, 2)),
        );
        w.ecm
            .update_category(doc.node_id, 9002, &mark)
            .await
            .unwrap();
        // ... and a colleague checked in version 2 (same size) before ours.
        w.ecm
            .add_version(doc.node_id, None, content_of(&theirs))
            .await
            .unwrap();

        let rep = w.run(&r, "req-2").await;

        assert_eq!(rep.files.len(), 1, "{label}: {rep:#?}");
        assert_eq!(rep.files[0].outcome, FileOutcome::VersionAdded, "{label}");
        let (_, versions, hist) = w.doc(doc.node_id.get()).await;
        assert_eq!(versions, vec![1, 2, 3], "{label}");
        assert_eq!(
            w.ecm.inner.content(doc.node_id, Some(2)).as_deref(),
            Some(theirs.as_slice()),
            "{label}"
        );
        assert_eq!(
            w.ecm.inner.content(doc.node_id, Some(3)).as_deref(),
            Some(body.as_slice()),
            "{label}"
        );
        assert_eq!(
            hist["9002_10"],
            idempotency_key("acme", rel, body.len() as u64, &sha_hex(&body)),
            "{label}"
        );
    }
}

/// The default route with a CSV index whose `po` column fills attribute 3.
fn index_route() -> Route {
    let mut ev = route_json(serde_json::json!([]), "fail");
    ev["route"]["index"] =
        serde_json::json!({"pattern": "index-*.csv", "file_column": "file", "delimiter": ";"});
    ev["route"]["rules"][0]["place"]["categories"][0]["attributes"]["3"] =
        serde_json::json!("{meta.po}");
    parse_route(ev)
}

async fn attr(w: &World, node: i64, cat: i64, key: &str) -> Option<String> {
    w.ecm
        .categories(NodeId::new(node).unwrap())
        .await
        .unwrap()
        .into_iter()
        .find(|c| c.category_id == cat)
        .and_then(|c| c.values.get(key).and_then(text))
}

/// Defect 1: an index outlives every file it lists, also one claimed by
/// another run when the index's other files are done.
#[tokio::test]
async fn given_index_file_claimed_elsewhere_when_run_then_index_kept_until_that_file_is_done() {
    let w = World::new();
    let r = index_route();
    w.store.put(
        "in/index-1.csv",
        b"file;po\nINV-1001_0000100001.pdf;PO-1\nINV-1002_0000100001.pdf;PO-2\n",
        NOW - 3600,
    );
    w.store
        .put("in/INV-1001_0000100001.pdf", &pdf("one"), NOW - 3600);
    // Another run claimed the second file ten seconds ago (and then died).
    let held = ClaimTag::new("acme", 1, NOW - 10, "other-run");
    w.store.put(
        &format!("in/.inflight/{}/INV-1002_0000100001.pdf", held.dir_name()),
        &pdf("two"),
        NOW - 3600,
    );

    let first = w.run(&r, "req-1").await;
    assert_eq!(first.counts.ingested, 1, "{first:#?}");
    assert!(
        w.store.read("/in/index-1.csv").is_some(),
        "index archived while a file it lists is still claimed"
    );

    // After the lease, a later run takes the claim over: its index row is there.
    let later = w.run_at(&r, "req-2", NOW + 2000).await;
    let f = later
        .files
        .iter()
        .find(|f| f.source_path == "INV-1002_0000100001.pdf")
        .unwrap_or_else(|| panic!("{later:#?}"));
    assert_eq!(f.outcome, FileOutcome::Created, "{later:#?}");
    assert_eq!(
        attr(&w, f.node_id.unwrap(), 9005, "9005_3")
            .await
            .as_deref(),
        Some("PO-2")
    );
    assert!(
        w.store.read("/in/index-1.csv").is_none(),
        "index archived at the end"
    );
}

/// Defect 7: a sidecar still being written holds its document back.
#[tokio::test]
async fn given_sidecar_still_being_written_when_run_then_document_waits() {
    let w = World::new();
    let r = route(serde_json::json!([]), "fail");
    w.store
        .put("in/INV-4711_0000100001.pdf", &pdf("x"), NOW - 3600);
    w.store
        .put("in/INV-4711_0000100001.pdf.json", br#"{"po": "45"#, NOW - 5);

    let rep = w.run(&r, "req-1").await;

    assert_eq!(rep.counts.failed, 0, "{rep:#?}");
    assert_eq!(rep.counts.deferred, 1, "{rep:#?}");
    assert!(w.store.files_under("/in/failed/").is_empty());
    assert_eq!(w.store.files_under("/in/INV").len(), 2);
}

/// Defect 7: a crash between the document's and the sidecar's claim renames;
/// the takeover brings the sidecar along and ingests with its metadata.
#[tokio::test]
async fn given_crash_between_document_and_sidecar_claim_when_rerun_then_sidecar_used_and_archived()
{
    let w = World::new();
    let mut ev = route_json(serde_json::json!([]), "fail");
    ev["route"]["rules"][0]["place"]["categories"][0]["attributes"]["3"] =
        serde_json::json!("{meta.po}");
    let r = parse_route(ev);
    let rel = "INV-4711_0000100001.pdf";
    w.put_crashed_claim(rel, &pdf("x"));
    w.store
        .put(&format!("in/{rel}.json"), br#"{"po": "PO-9"}"#, NOW - 5000);

    let rep = w.run(&r, "req-2").await;

    assert_eq!(rep.counts.ingested, 1, "{rep:#?}");
    let node = rep.files[0].node_id.unwrap();
    assert_eq!(
        attr(&w, node, 9005, "9005_3").await.as_deref(),
        Some("PO-9")
    );
    assert!(
        w.store.files_under("/in/INV").is_empty(),
        "sidecar left behind"
    );
    assert_eq!(w.store.files_under("/in/archive/").len(), 2);
}

/// A route whose `SAME-*.pdf` files all go to one document name in `folder`.
fn same_name_route(folder: NodeId, on_existing: &str) -> Route {
    route(
        serde_json::json!([{
            "name": "same",
            "match": {"glob": "SAME-*.pdf"},
            "place": {"workspace": {"by": "node", "node_id": folder.get()},
                      "name": "Same.pdf", "on_existing": on_existing}
        }]),
        "fail",
    )
}

/// Defect 6: two files with one target name in one parallel run.
#[tokio::test]
async fn given_two_files_with_one_target_name_in_a_parallel_run_then_policy_applies_to_both() {
    for policy in ["add-version", "rename"] {
        let w = World::new();
        let folder = w
            .ecm
            .create_folder(NodeId::new(2000).unwrap(), "drop")
            .await
            .unwrap();
        let r = same_name_route(folder, policy);
        w.store.put("in/SAME-1.pdf", &pdf("one"), NOW - 3600);
        w.store.put("in/SAME-2.pdf", &pdf("two two"), NOW - 3600);
        w.ecm.interleave();

        let rep = w.run(&r, "req-1").await;

        assert_eq!(rep.counts.ingested, 2, "{policy}: {rep:#?}");
        assert!(w.store.files_under("/in/failed/").is_empty(), "{policy}");
        let docs = w
            .ecm
            .children(folder, &ChildFilter::default(), 1, 100)
            .await
            .unwrap()
            .items;
        let versions: u32 = {
            let mut n = 0;
            for d in &docs {
                n += w.ecm.versions(d.id).await.unwrap().len() as u32;
            }
            n
        };
        assert_eq!(versions, 2, "{policy}: {docs:?}");
        assert_eq!(
            docs.len(),
            if policy == "rename" { 2 } else { 1 },
            "{policy}"
        );
    }
}

/// Defect 6: the ECM answers `Conflict` (a writer outside this run took the
/// name between our look-up and our create): the policy is applied again.
#[tokio::test]
async fn given_conflict_from_the_ecm_when_policy_add_version_then_resolved_again() {
    let w = World::new();
    let folder = w
        .ecm
        .create_folder(NodeId::new(2000).unwrap(), "drop")
        .await
        .unwrap();
    let r = same_name_route(folder, "add-version");
    let theirs = w
        .doc_with_key(folder, "Same.pdf", &pdf("theirs"), "k")
        .await;
    w.store.put("in/SAME-1.pdf", &pdf("ours"), NOW - 3600);
    // Our first look-up does not see their document yet.
    w.ecm.arm("child_by_name", 1, Fault::Hidden);

    let rep = w.run(&r, "req-1").await;

    assert_eq!(rep.counts.ingested, 1, "{rep:#?}");
    assert_eq!(rep.files[0].outcome, FileOutcome::VersionAdded, "{rep:#?}");
    assert_eq!(rep.files[0].node_id, Some(theirs.node_id.get()));
    assert!(w.store.files_under("/in/failed/").is_empty());
}

/// Defect 5: under `rename`, a run that died after finishing a large file's
/// numbered copy (final key written, source not yet archived) is recognised
/// by the takeover, which hashes the file: no `name (3).pdf`.
#[tokio::test]
async fn given_finished_numbered_copy_of_a_large_file_when_taken_over_then_no_third_copy() {
    let w = World::new();
    let r = route(serde_json::json!([]), "rename");
    let body = large_pdf("second file of the name");
    let rel = "INV-4711_0000100001.pdf";
    w.put_crashed_claim(rel, &body);
    let folder = w.supplier_invoice_folder().await;
    let other = pdf("first file of the name");
    w.doc_with_key(
        folder,
        "Invoice 4711.pdf",
        &other,
        &idempotency_key("acme", "old.pdf", other.len() as u64, &sha_hex(&other)),
    )
    .await;
    let copy = w
        .doc_with_key(
            folder,
            "Invoice 4711 (2).pdf",
            &body,
            &idempotency_key("acme", rel, body.len() as u64, &sha_hex(&body)),
        )
        .await;
    let mut hist = CategoryValues::new();
    for (k, v) in [
        ("9002_2", "acme".to_string()),
        ("9002_4", rel.to_string()),
        ("9002_5", body.len().to_string()),
        ("9002_6", sha_hex(&body)),
    ] {
        hist.insert(k.into(), serde_json::json!(v));
    }
    w.ecm
        .update_category(copy.node_id, 9002, &hist)
        .await
        .unwrap();

    let rep = w.run(&r, "req-2").await;

    assert_eq!(rep.files.len(), 1, "{rep:#?}");
    assert_eq!(
        rep.files[0].outcome,
        FileOutcome::AlreadyIngested,
        "{rep:#?}"
    );
    assert_eq!(rep.files[0].node_id, Some(copy.node_id.get()));
    let names: Vec<String> = w
        .ecm
        .children(folder, &ChildFilter::default(), 1, 100)
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|n| n.name)
        .collect();
    assert_eq!(names.len(), 2, "no third copy: {names:?}");
    assert_eq!(w.store.files_under("/in/archive/").len(), 1);
}

fn failed_report(w: &World, name: &str) -> serde_json::Value {
    let bytes = w
        .store
        .read(&format!("/in/failed/{name}.error.json"))
        .unwrap_or_else(|| panic!("no report for {name}: {:?}", w.store.files_under("/in/")));
    serde_json::from_slice(&bytes).unwrap()
}

/// Defect 2: one bad index row is refused (reported with its line), the
/// others are used, and the file of a refused row says why it failed.
#[tokio::test]
async fn given_index_with_bad_rows_when_run_then_other_rows_used_and_refusals_reported() {
    let w = World::new();
    let r = index_route();
    w.store.put(
        "in/index-1.csv",
        b"file;po\n../../etc/passwd;PO-X\nINV-1001_0000100001.pdf;PO-1\nINV-1003_0000100001.pdf;P\0O\n",
        NOW - 3600,
    );
    w.store
        .put("in/INV-1001_0000100001.pdf", &pdf("one"), NOW - 3600);
    w.store
        .put("in/INV-1003_0000100001.pdf", &pdf("three"), NOW - 3600);

    let rep = w.run(&r, "req-1").await;

    let ok = rep
        .files
        .iter()
        .find(|f| f.source_path == "INV-1001_0000100001.pdf")
        .unwrap();
    assert_eq!(ok.outcome, FileOutcome::Created, "{rep:#?}");
    assert_eq!(
        attr(&w, ok.node_id.unwrap(), 9005, "9005_3")
            .await
            .as_deref(),
        Some("PO-1")
    );
    let bad = failed_report(&w, "INV-1003_0000100001.pdf");
    let reason = bad["reason"].as_str().unwrap();
    assert!(
        reason.contains("index-1.csv") && reason.contains("line 4") && reason.contains("refused"),
        "{reason}"
    );
    let ix = failed_report(&w, "index-1.csv");
    let text = ix.to_string();
    assert!(
        text.contains("line 2") && text.contains("plain relative path"),
        "{text}"
    );
    assert!(text.contains("line 4"), "{text}");
}

/// Defect 8: a manual retry puts a recursive route's file back at its own
/// path (same identity) and brings its sidecar along.
#[tokio::test]
async fn given_failed_file_in_a_subdirectory_when_retried_then_original_path_and_sidecar_restored()
{
    let w = World::new();
    let mut ev = route_json(serde_json::json!([]), "fail");
    ev["route"]["recursive"] = serde_json::json!(true);
    let r = parse_route(ev);
    w.store
        .put("in/a/INV-47_0000100001.pdf", &pdf("x"), NOW - 3600);
    w.store.put(
        "in/a/INV-47_0000100001.pdf.json",
        br#"{"po": "1"}"#,
        NOW - 3600,
    );
    let first = w.run(&r, "req-1").await;
    assert_eq!(first.counts.failed, 1, "{first:#?}");
    let failed_name = first.files[0]
        .moved_to
        .clone()
        .unwrap()
        .trim_start_matches("in/failed/")
        .trim_start_matches("failed/")
        .to_owned();

    let deps = IngestDeps {
        store: &w.store,
        ecm: &w.ecm,
        events: &w.events,
        clock: &w.clock,
        sftp_host: "h".into(),
    };
    let ctx = RunContext::new("req-2", Duration::from_secs(60));
    let rep = retry(&r, &[failed_name], &deps, &ctx).await.unwrap();

    assert_eq!(rep.counts.requeued, 1, "{rep:#?}");
    assert!(
        w.store.read("/in/a/INV-47_0000100001.pdf").is_some(),
        "{:?}",
        w.store.files_under("/in/")
    );
    assert!(w.store.read("/in/a/INV-47_0000100001.pdf.json").is_some());
    assert!(
        w.store.files_under("/in/failed/").is_empty(),
        "{:?}",
        w.store.files_under("/in/failed/")
    );
}

fn inflight_entries(w: &World) -> Vec<String> {
    w.store
        .nodes
        .lock()
        .unwrap()
        .keys()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .filter(|k| k.starts_with("/in/.inflight/"))
        .collect()
}

/// Defect 11: two stale claims taken over in one second by one run get
/// distinct new names.
#[tokio::test]
async fn given_two_stale_claims_when_taken_over_in_one_second_then_both_processed() {
    let w = World::new();
    let r = route(serde_json::json!([]), "fail");
    for (i, run) in ["died-a", "died-b"].iter().enumerate() {
        let tag = ClaimTag::new("acme", 1, NOW - 4000, run);
        w.store.put(
            &format!("in/.inflight/{}/INV-200{i}_0000100001.pdf", tag.dir_name()),
            &pdf(run),
            NOW - 5000,
        );
    }
    let rep = w.run(&r, "req-2").await;
    assert_eq!(rep.counts.ingested, 2, "{rep:#?}");
    assert!(
        inflight_entries(&w).is_empty(),
        "{:?}",
        inflight_entries(&w)
    );
}

/// Defect 12: an empty claim folder left by a kill is removed, not taken over
/// again and again.
#[tokio::test]
async fn given_empty_stale_claim_folder_when_run_then_removed() {
    let w = World::new();
    let r = route(serde_json::json!([]), "fail");
    let tag = ClaimTag::new("acme", 1, NOW - 4000, "killed");
    let dir = w
        .store
        .root()
        .resolve(&format!("in/.inflight/{}/sub", tag.dir_name()))
        .unwrap();
    w.store.mkdir_all(&dir).await.unwrap();
    let rep = w.run(&r, "req-2").await;
    assert!(
        inflight_entries(&w).is_empty(),
        "{:?} {rep:#?}",
        inflight_entries(&w)
    );
}

/// Defect 10: a settled empty file on a route that does not allow them is
/// refused into `failed/` with a reason; a young one still waits.
#[tokio::test]
async fn given_settled_empty_file_when_empty_not_allowed_then_failed_with_reason() {
    let w = World::new();
    let r = route(serde_json::json!([]), "fail");
    w.store.put("in/INV-4711_0000100001.pdf", b"", NOW - 3600);
    w.store.put("in/INV-4712_0000100001.pdf", b"", NOW - 10);
    let rep = w.run(&r, "req-1").await;
    let rep_old = failed_report(&w, "INV-4711_0000100001.pdf");
    assert!(
        rep_old["reason"].as_str().unwrap().contains("empty"),
        "{rep_old}"
    );
    assert!(
        w.store.read("/in/INV-4712_0000100001.pdf").is_some(),
        "{rep:#?}"
    );
}

/// Defect 13: a right-to-left override hiding the real extension is named
/// as the problem, and the raw character does not reach `failed/`.
#[tokio::test]
async fn given_rtl_override_in_name_when_run_then_failed_naming_the_hidden_extension() {
    let w = World::new();
    let r = route(serde_json::json!([]), "fail");
    w.store
        .put("in/invoice\u{202E}fdp.exe", b"MZ\x90\x00", NOW - 3600);
    let rep = w.run(&r, "req-1").await;
    assert_eq!(rep.counts.failed, 1, "{rep:#?}");
    let failed = w.store.files_under("/in/failed/");
    assert!(failed.iter().all(|f| !f.contains('\u{202E}')), "{failed:?}");
    let reason = rep.files[0].reason.clone().unwrap();
    assert!(
        reason.contains("U+202E") && reason.contains(".exe"),
        "{reason}"
    );
}

mod crash_matrix;
mod fanout;
mod report;

#[tokio::test]
async fn given_a_server_whose_rename_replaces_when_run_then_refused_before_any_claim() {
    let w = World::new();
    w.store
        .put("in/INV-4711_0000100001.pdf", &pdf("x"), NOW - 4000);
    w.store
        .replaces_on_rename
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let deps = IngestDeps {
        store: &w.store,
        ecm: &w.ecm,
        events: &w.events,
        clock: &w.clock,
        sftp_host: "sftp.test".into(),
    };
    let ctx = RunContext::new("req-1", Duration::from_secs(300));
    let err = run(&route(serde_json::json!([]), "fail"), &deps, &ctx)
        .await
        .expect_err("a replacing server is refused");
    assert!(matches!(err, IngestError::UnsafeServer { .. }), "{err:?}");
    assert!(!err.is_retryable());
    assert!(
        err.to_string().contains("replaces an existing target"),
        "{err}"
    );
    // Nothing was claimed, moved or failed.
    assert_eq!(
        w.store.files_under("/in"),
        vec!["/in/INV-4711_0000100001.pdf".to_string()]
    );
}
