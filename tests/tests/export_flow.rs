//! The export flow against the real parts: OpenSSH sshd (SFTP), the Content
//! Server emulator (ECM, through our reqwest client) and moto (Secrets
//! Manager, EventBridge). The flow is called in-process; `export_function.rs`
//! runs the real `ecm-export` binary behind a Function URL.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use xecm_core::adapters::aws::{EventBridgeSink, SecretsManagerSecrets};
use xecm_core::adapters::otcs::{EcmSettings, OtcsClient, OtcsOptions};
use xecm_core::adapters::sftp_destinations::SftpDestinations;
use xecm_core::domain::export_route::{ExportConfig, ExportRoutes};
use xecm_core::domain::manifest::PackageManifest;
use xecm_core::domain::webhook::ApprovalCallback;
use xecm_core::flows::export::{self, ExportContext, ExportError, ExportOutcome};
use xecm_core::ports::ecm::{AppliedCategory, Content, Ecm, NodeId, UploadRequest};
use xecm_core::ports::secrets::Secrets;
use xecm_stack::moto::{EventCapture, Moto};
use xecm_stack::sshd::Sshd;

const SFTP_SECRET: &str = "xecm/sftp/partner";
const BUS: &str = "xecm-export-test";
/// Seed folder "Outbound/Pricing" and workspace 5101 (Customer, type 101).
const PRICING: i64 = 3101;
const GLOBEX: i64 = 5101;
const GLOBEX_ONBOARDING: i64 = 510101;

fn routes_json() -> Value {
    json!({
        "export_history": {"category_id": 9003, "attributes": {"version": 2, "exported_at": 3, "destination": 4, "sha256": 5, "deliveries": 6}},
        "routes": [
            {"name": "price-lists",
             "approval": {"category_id": 9001, "attribute": "9001_2", "value": "Approved", "ancestor_id": PRICING},
             "destinations": [
                {"name": "replace", "when": {"categories": {"9001_3": "Replaceable"}}, "sftp_secret": SFTP_SECRET,
                 "directory": "outbound", "file_name": "{stem}.{ext}", "overwrite": true},
                {"name": "dist", "sftp_secret": SFTP_SECRET, "directory": "outbound",
                 "file_name": "{stem}_v{version}.{ext}", "overwrite": false, "sha256_sidecar": true}
             ]},
            {"name": "customer-packages",
             "approval": {"category_id": 9001, "attribute": "9001_2", "value": "Approved", "ancestor_id": GLOBEX},
             "destinations": [
                {"name": "portal", "when": {"workspace_type_id": 101}, "sftp_secret": SFTP_SECRET,
                 "directory": "packages", "package": "dir"}
             ]}
        ]
    })
}

struct Stack {
    sshd: Sshd,
    _moto: Moto,
    emu: otcs_emulator::RunningEmulator,
    ecm: OtcsClient,
    events: EventBridgeSink,
    capture: EventCapture,
    destinations: SftpDestinations,
    routes: ExportRoutes,
}

impl Stack {
    async fn start() -> Stack {
        let sshd = Sshd::start().expect("sshd starts");
        let moto = Moto::start().expect("moto starts");
        let emu = otcs_emulator::start(otcs_emulator::EmulatorConfig::default())
            .await
            .expect("emulator starts");
        // As the local stack does: the account's root is the chroot's
        // writable directory, and route directories are relative to it.
        let mut secret: Value = serde_json::from_str(&sshd.sftp_secret_json()).expect("json");
        secret["root"] = json!(sshd.remote_root());
        moto.put_json_secret(SFTP_SECRET, &secret)
            .await
            .expect("sftp secret");
        moto.create_event_bus(BUS).await.expect("bus");
        let capture = moto.capture_events(BUS).await.expect("capture");
        let sdk = moto.sdk_config().await;
        let secrets: Arc<dyn Secrets> = Arc::new(SecretsManagerSecrets::new(&sdk));
        let settings = EcmSettings::from_secret_json(
            "ecm",
            &json!({"base_url": emu.base_url(), "username": "admin", "password": "admin"})
                .to_string(),
        )
        .expect("ecm settings");
        let ecm = OtcsClient::new(settings, OtcsOptions::default()).expect("ecm client");
        Stack {
            events: EventBridgeSink::new(&sdk, BUS),
            destinations: SftpDestinations::new(secrets, Default::default()),
            routes: ExportConfig::from_json(&routes_json().to_string()).expect("routes"),
            sshd,
            _moto: moto,
            emu,
            ecm,
            capture,
        }
    }

    fn cx(&self) -> ExportContext<'_> {
        ExportContext {
            ecm: &self.ecm,
            events: &self.events,
            destinations: &self.destinations,
            routes: &self.routes,
            invocation_id: "it-invocation",
            deadline: None,
        }
    }

    fn local(&self, rel: &str) -> PathBuf {
        self.sshd.data_root().join(rel)
    }

    async fn doc(&self, parent: i64, name: &str, cats: Value, body: Bytes) -> NodeId {
        let values = cats
            .as_object()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        self.ecm
            .upload(UploadRequest {
                parent: NodeId::new(parent).expect("id"),
                name: name.into(),
                description: None,
                categories: vec![AppliedCategory {
                    category_id: 9001,
                    values,
                }],
                classifications: vec![],
                content: Content {
                    length: body.len() as u64,
                    stream: Box::pin(futures_util::stream::iter([Ok(body)])),
                    file_name: name.into(),
                    mime_type: "application/octet-stream".into(),
                },
            })
            .await
            .expect("upload")
            .node_id
    }

    async fn fault(&self, status: u16, count: u32, path_prefix: &str) {
        let r = reqwest::Client::new()
            .post(format!("{}/__emulator/faults", self.emu.base_url()))
            .json(&json!({"status": status, "count": count, "path_prefix": path_prefix}))
            .send()
            .await
            .expect("fault control");
        assert!(r.status().is_success());
    }
}

fn callback(node: NodeId, version: u32, event_id: &str) -> ApprovalCallback {
    serde_json::from_value(json!({
        "event": "document.approved", "event_id": event_id, "node_id": node.get(),
        "version": version, "category_id": 9001, "attribute": "9001_2", "value": "Approved",
        "approved_at": "2026-11-27T10:00:00Z"
    }))
    .expect("callback")
}

fn sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

fn approved() -> Value {
    json!({"9001_2": "Approved"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approved_document_is_delivered_once_with_sidecar_history_and_event() {
    let s = Stack::start().await;
    let body = Bytes::from_static(b"sku;price\n1;9.99\n");
    let id = s
        .doc(PRICING, "Prices EU.csv", approved(), body.clone())
        .await;
    let out = export::handle_callback(&s.cx(), &callback(id, 1, "evt-1"))
        .await
        .expect("export");
    let ExportOutcome::Delivered(r) = out else {
        panic!("not delivered: {out:?}")
    };
    let file = s.local("outbound/Prices EU_v1.csv");
    assert_eq!(std::fs::read(&file).expect("delivered file"), body);
    assert_eq!(r.sha256, sha(&body));
    assert_eq!(
        std::fs::read_to_string(s.local("outbound/Prices EU_v1.csv.sha256")).expect("sidecar"),
        format!("{}  Prices EU_v1.csv\n", sha(&body))
    );
    // Export history on the node, re-read from the emulator.
    let cats = s.ecm.categories(id).await.expect("categories");
    let h = cats
        .iter()
        .find(|c| c.category_id == 9003)
        .expect("history");
    assert_eq!(h.values["9003_2"].to_string().trim_matches('"'), "1");
    assert_eq!(h.values["9003_5"], json!(sha(&body)));
    assert_eq!(
        h.values["9003_4"],
        json!("price-lists/dist:outbound/Prices EU_v1.csv")
    );

    // The same callback again (the emulator retries, a replay inside the
    // window): acknowledged, nothing new written.
    let mtime = std::fs::metadata(&file)
        .and_then(|m| m.modified())
        .expect("mtime");
    let again = export::handle_callback(&s.cx(), &callback(id, 1, "evt-2"))
        .await
        .expect("duplicate");
    assert!(matches!(again, ExportOutcome::Duplicate(_)), "{again:?}");
    assert_eq!(
        std::fs::metadata(&file)
            .and_then(|m| m.modified())
            .expect("mtime"),
        mtime
    );
    let events = s
        .capture
        .receive(1, Duration::from_secs(10))
        .await
        .expect("events");
    let exported: Vec<&Value> = events
        .iter()
        .filter(|e| e["detail-type"] == "Document Exported")
        .collect();
    assert_eq!(exported.len(), 1, "{events:?}");
    assert_eq!(exported[0]["source"], "xecm-sftp");
    assert_eq!(exported[0]["detail"]["node_id"], json!(id.get()));
    assert_eq!(exported[0]["detail"]["event_id"], "evt-1");
    // The transfer's own time, within the whole delivery's.
    let transfer = exported[0]["detail"]["transfer_ms"].as_u64();
    let whole = exported[0]["detail"]["duration_ms"].as_u64();
    assert!(transfer.is_some() && transfer <= whole, "{:?}", exported[0]);
    // Only one delivery event even after waiting for stragglers.
    let more = s
        .capture
        .receive(1, Duration::from_secs(2))
        .await
        .expect("events");
    assert!(
        !more.iter().any(|e| e["detail-type"] == "Document Exported"),
        "{more:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_approved_node_is_rejected_with_an_event_and_nothing_is_written() {
    let s = Stack::start().await;
    let id = s
        .doc(
            PRICING,
            "Draft.csv",
            json!({"9001_2": "In Review"}),
            Bytes::from_static(b"x"),
        )
        .await;
    // The body claims approval; the ECM says otherwise.
    let out = export::handle_callback(&s.cx(), &callback(id, 1, "evt-x"))
        .await
        .expect("decision");
    assert!(matches!(out, ExportOutcome::Rejected { .. }), "{out:?}");
    assert!(
        !s.local("outbound").exists()
            || std::fs::read_dir(s.local("outbound"))
                .map(|d| d.count())
                .unwrap_or(0)
                == 0
    );
    let events = s
        .capture
        .receive(1, Duration::from_secs(10))
        .await
        .expect("events");
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["detail-type"], "Export Rejected");
    assert_eq!(events[0]["detail"]["node_id"], json!(id.get()));
    // Approved but outside every route's folder: rejected too.
    let elsewhere = s
        .doc(3102, "Other.csv", approved(), Bytes::from_static(b"y"))
        .await;
    let out = export::handle_callback(&s.cx(), &callback(elsewhere, 1, "evt-y"))
        .await
        .expect("decision");
    assert!(matches!(out, ExportOutcome::Rejected { .. }), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overwrite_policy_keeps_foreign_files_and_replaces_where_allowed() {
    let s = Stack::start().await;
    // Created here as the test's user: open it to the SFTP account.
    std::fs::create_dir_all(s.local("outbound")).expect("mkdir");
    std::fs::set_permissions(
        s.local("outbound"),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .expect("chmod");
    // Route "dist" (no overwrite): a different file already there stays.
    std::fs::write(s.local("outbound/List_v1.csv"), b"partner's own file").expect("seed");
    let id = s
        .doc(PRICING, "List.csv", approved(), Bytes::from_static(b"ours"))
        .await;
    let err = export::handle_callback(&s.cx(), &callback(id, 1, "e1"))
        .await
        .expect_err("refused");
    assert!(matches!(err, ExportError::TargetExists { .. }), "{err}");
    assert!(!err.is_retryable());
    assert_eq!(
        std::fs::read(s.local("outbound/List_v1.csv")).expect("kept"),
        b"partner's own file"
    );
    // Route "replace" (overwrite): the old file is replaced.
    std::fs::write(s.local("outbound/Repl.csv"), b"old old old").expect("seed");
    let id = s
        .doc(
            PRICING,
            "Repl.csv",
            json!({"9001_2": "Approved", "9001_3": "Replaceable"}),
            Bytes::from_static(b"new"),
        )
        .await;
    let out = export::handle_callback(&s.cx(), &callback(id, 1, "e2"))
        .await
        .expect("replaced");
    assert!(matches!(out, ExportOutcome::Delivered(_)), "{out:?}");
    assert_eq!(
        std::fs::read(s.local("outbound/Repl.csv")).expect("file"),
        b"new"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resend_replaces_a_damaged_delivery_and_is_audited_as_resend() {
    let s = Stack::start().await;
    let body = Bytes::from(vec![7u8; 300_000]);
    let id = s
        .doc(PRICING, "Catalogue.pdf", approved(), body.clone())
        .await;
    export::handle_callback(&s.cx(), &callback(id, 1, "e1"))
        .await
        .expect("export");
    let file = s.local("outbound/Catalogue_v1.pdf");
    std::fs::write(&file, &body[..1000]).expect("truncate");
    let r = export::resend(&s.cx(), id.get(), "price-lists", Some("truncated"))
        .await
        .expect("resend");
    assert!(r.resend);
    assert_eq!(std::fs::read(&file).expect("file"), body);
    let events = s
        .capture
        .receive(2, Duration::from_secs(10))
        .await
        .expect("events");
    let resends: Vec<&Value> = events
        .iter()
        .filter(|e| e["detail-type"] == "Document Exported" && e["detail"]["resend"] == true)
        .collect();
    assert_eq!(resends.len(), 1, "{events:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_ecm_failure_is_retryable_and_leaves_nothing_visible() {
    let s = Stack::start().await;
    let id = s
        .doc(PRICING, "Flaky.csv", approved(), Bytes::from_static(b"abc"))
        .await;
    // More 503s than the client's own bounded retries.
    s.fault(503, 20, "/cs/cs/api/v2/nodes").await;
    let err = export::handle_callback(&s.cx(), &callback(id, 1, "e1"))
        .await
        .expect_err("fails");
    assert!(err.is_retryable(), "{err}");
    assert!(!s.local("outbound/Flaky_v1.csv").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reader_never_sees_a_partial_file() {
    let s = Stack::start().await;
    let size = 48 * 1024 * 1024;
    let body: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    let body = Bytes::from(body);
    let id = s.doc(PRICING, "Big.bin", approved(), body.clone()).await;
    let file = s.local("outbound/Big_v1.bin");
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (stop, file) = (Arc::clone(&stop), file.clone());
        std::thread::spawn(move || {
            let mut seen_sizes = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                if let Ok(m) = std::fs::metadata(&file) {
                    seen_sizes.push(m.len());
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            seen_sizes
        })
    };
    export::handle_callback(&s.cx(), &callback(id, 1, "e1"))
        .await
        .expect("export");
    stop.store(true, Ordering::Relaxed);
    let seen = watcher.join().expect("watcher");
    assert!(
        seen.iter().all(|n| *n == size as u64),
        "a reader saw sizes {:?}",
        seen.iter()
            .filter(|n| **n != size as u64)
            .take(5)
            .collect::<Vec<_>>()
    );
    assert_eq!(sha(&std::fs::read(&file).expect("file")), sha(&body));
    // No temporary file left behind.
    let leftovers: Vec<String> = std::fs::read_dir(s.local("outbound"))
        .expect("dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn package_has_a_correct_manifest_and_safe_entry_names() {
    let s = Stack::start().await;
    let kit = NodeId::new(GLOBEX_ONBOARDING).expect("id");
    let sub = s.ecm.create_folder(kit, "Manuals").await.expect("folder");
    let welcome = Bytes::from_static(b"Welcome to Globex");
    s.doc(kit.get(), "Welcome.pdf", approved(), welcome.clone())
        .await;
    // Hostile names: each must stay one segment inside the package.
    s.doc(sub.get(), "..", approved(), Bytes::from_static(b"dots"))
        .await;
    s.doc(
        sub.get(),
        "a\\..\\..\\evil.txt",
        approved(),
        Bytes::from_static(b"bs"),
    )
    .await;
    s.doc(
        sub.get(),
        "Draft.pdf",
        json!({"9001_2": "Draft"}),
        Bytes::from_static(b"d"),
    )
    .await;
    let r = export::export_package(
        &s.cx(),
        kit.get(),
        "customer-packages",
        Some("Globex-kit"),
        None,
    )
    .await
    .expect("package");
    assert_eq!(r.files, 3, "{r:?}");
    assert_eq!(r.skipped.len(), 1, "{r:?}");
    let base = s.local("packages/Globex-kit");
    let text = std::fs::read_to_string(base.join("manifest.json")).expect("manifest");
    assert_eq!(sha(text.as_bytes()), r.manifest_sha256);
    let m = PackageManifest::from_json(&text).expect("valid manifest");
    assert_eq!(m.entries.len(), 3);
    assert_eq!(m.root_node_id, GLOBEX_ONBOARDING);
    for e in &m.entries {
        let p = base.join(&e.path);
        // Inside the package directory, whatever the node name was.
        let canon = p.canonicalize().expect("entry exists");
        assert!(
            canon.starts_with(base.canonicalize().expect("base")),
            "{}",
            e.path
        );
        let bytes = std::fs::read(&p).expect("entry");
        assert_eq!(bytes.len() as u64, e.size, "{}", e.path);
        assert_eq!(sha(&bytes), e.sha256, "{}", e.path);
    }
    assert!(m.entries.iter().any(|e| e.path == "Welcome.pdf"));
    // Built under a dot-name, renamed at the end: nothing else is visible.
    let names: Vec<String> = std::fs::read_dir(s.local("packages"))
        .expect("dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["Globex-kit".to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_package_that_fails_midway_leaves_nothing_on_the_server() {
    let s = Stack::start().await;
    let kit = NodeId::new(GLOBEX_ONBOARDING).expect("id");
    let sub = s.ecm.create_folder(kit, "Manuals").await.expect("folder");
    s.doc(kit.get(), "A.pdf", approved(), Bytes::from_static(b"first"))
        .await;
    let second = s
        .doc(
            sub.get(),
            "B.pdf",
            approved(),
            Bytes::from_static(b"second"),
        )
        .await;
    // The second document's content download is refused for good (its
    // metadata still reads fine, so the package is under way by then).
    let r = reqwest::Client::new()
        .post(format!("{}/__emulator/faults", s.emu.base_url()))
        .json(&json!({"status": 404, "count": 5,
            "path_prefix": format!("/cs/cs/api/v2/nodes/{}/", second.get()),
            "path_contains": "/content"}))
        .send()
        .await
        .expect("fault control");
    assert!(r.status().is_success());
    let err = export::export_package(&s.cx(), kit.get(), "customer-packages", Some("Half"), None)
        .await
        .expect_err("package must fail");
    assert!(!err.is_retryable(), "{err}");
    assert!(err.to_string().contains(&second.get().to_string()), "{err}");
    // Neither the package nor its temporary directory tree is left.
    let left: Vec<String> = std::fs::read_dir(s.local("packages"))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zip_package_on_sftp_is_readable_and_has_no_unsafe_names() {
    let s = Stack::start().await;
    let kit = NodeId::new(GLOBEX_ONBOARDING).expect("id");
    let sub = s.ecm.create_folder(kit, "..").await.expect("folder");
    let big = Bytes::from(vec![42u8; 3 * 1024 * 1024 + 17]);
    s.doc(
        kit.get(),
        "Welcome.pdf",
        approved(),
        Bytes::from_static(b"hi"),
    )
    .await;
    s.doc(sub.get(), "/etc/passwd", approved(), big.clone())
        .await;
    let r = export::export_package(
        &s.cx(),
        kit.get(),
        "customer-packages",
        Some("kit"),
        Some(xecm_core::domain::export_route::PackageFormat::Zip),
    )
    .await
    .expect("zip package");
    assert_eq!(r.files, 2, "{r:?}");
    let zip = s.local("packages/kit.zip");
    // An independent reader: Python's zipfile checks every CRC, and every
    // name must stay inside an extraction directory.
    let script = "import sys,zipfile,json,hashlib,os\nz=zipfile.ZipFile(sys.argv[1])\nassert z.testzip() is None\nm=json.loads(z.read('manifest.json'))\nfor e in m['entries']:\n  assert hashlib.sha256(z.read(e['path'])).hexdigest()==e['sha256'], e\nfor n in z.namelist():\n  p=os.path.normpath(os.path.join('/x',n))\n  assert p.startswith('/x/') and '..' not in n.split('/'), n\nprint(len(z.namelist()))";
    let o = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(&zip)
        .output()
        .expect("python3");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "3");
    let names: Vec<String> = std::fs::read_dir(s.local("packages"))
        .expect("dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["kit.zip".to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_the_callbacks_version_goes_out_and_an_unseen_one_is_retried() {
    let s = Stack::start().await;
    let id = s
        .doc(PRICING, "Rates.csv", approved(), Bytes::from_static(b"one"))
        .await;
    // v2 is added (its status carried over) before v1's callback is handled.
    let two = Bytes::from_static(b"two!");
    s.ecm
        .add_version(
            id,
            None,
            Content {
                length: two.len() as u64,
                stream: Box::pin(futures_util::stream::iter([Ok(two)])),
                file_name: "Rates.csv".into(),
                mime_type: "text/csv".into(),
            },
        )
        .await
        .expect("version 2");
    let out = export::handle_callback(&s.cx(), &callback(id, 1, "evt-v1"))
        .await
        .expect("export");
    assert!(
        matches!(out, ExportOutcome::Delivered(ref r) if r.version == 1),
        "{out:?}"
    );
    assert_eq!(
        std::fs::read(s.local("outbound/Rates_v1.csv")).expect("v1"),
        b"one"
    );
    assert!(!s.local("outbound/Rates_v2.csv").exists());
    // A version the ECM does not show (yet) is retried, not refused.
    let err = export::handle_callback(&s.cx(), &callback(id, 5, "evt-v5"))
        .await
        .expect_err("not visible");
    assert!(
        matches!(
            err,
            ExportError::VersionNotVisible {
                version: 5,
                latest: 2,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.is_retryable());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_finishes_a_delivery_that_stopped_after_its_rename() {
    let s = Stack::start().await;
    let body = Bytes::from_static(b"sku;price\n7;1.50\n");
    let id = s.doc(PRICING, "Tariff.csv", approved(), body.clone()).await;
    // The file is in place, but the run stopped before its sidecar,
    // history and event.
    // Owned like the rest of the SFTP user's data, as if it had written them.
    use std::os::unix::fs::MetadataExt;
    let owner = std::fs::metadata(s.local("")).expect("data root");
    for (path, content) in [("outbound", None), ("outbound/Tariff_v1.csv", Some(&body))] {
        match content {
            None => std::fs::create_dir_all(s.local(path)).expect("dir"),
            Some(b) => std::fs::write(s.local(path), b).expect("file"),
        }
        std::os::unix::fs::chown(s.local(path), Some(owner.uid()), Some(owner.gid()))
            .expect("chown");
    }
    let out = export::handle_callback(&s.cx(), &callback(id, 1, "evt-retry"))
        .await
        .expect("export");
    assert!(matches!(out, ExportOutcome::Duplicate(_)), "{out:?}");
    assert_eq!(
        std::fs::read_to_string(s.local("outbound/Tariff_v1.csv.sha256")).expect("sidecar"),
        format!("{}  Tariff_v1.csv\n", sha(&body))
    );
    let cats = s.ecm.categories(id).await.expect("categories");
    let h = cats
        .iter()
        .find(|c| c.category_id == 9003)
        .expect("history");
    assert_eq!(h.values["9003_5"], json!(sha(&body)));
    let events = s
        .capture
        .receive(1, Duration::from_secs(10))
        .await
        .expect("events");
    assert!(
        events
            .iter()
            .any(|e| e["detail-type"] == "Document Exported"
                && e["detail"]["node_id"] == json!(id.get())),
        "{events:?}"
    );
}
