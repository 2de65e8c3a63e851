//! The Content Server client (`adapters::otcs::OtcsClient`) against the
//! emulator: ticket expiry and re-auth, retry of 503s, error mapping, streamed
//! upload/download with SHA-256, mkdir -p, exact-name lookup over pages,
//! categories, workspaces, RM, holds, search and audit.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use secrecy::SecretString;
use serde_json::json;
use sha2::{Digest, Sha256};
use xecm_core::adapters::backoff::Backoff;
use xecm_core::adapters::otcs::{EcmSettings, OtcsClient, OtcsOptions};
use xecm_core::ports::ecm::*;
use xecm_core::ports::secrets::MemorySecrets;

const ENTERPRISE: i64 = 2000;

struct Stack {
    emu: otcs_emulator::RunningEmulator,
    http: reqwest::Client,
}

async fn emulator() -> Stack {
    let emu = otcs_emulator::start(otcs_emulator::EmulatorConfig::default())
        .await
        .expect("emulator starts");
    Stack {
        emu,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap(),
    }
}

fn fast_options() -> OtcsOptions {
    OtcsOptions {
        backoff: Backoff {
            max_attempts: 4,
            base: Duration::from_millis(20),
            cap: Duration::from_millis(100),
        },
        ..OtcsOptions::default()
    }
}

impl Stack {
    fn client_at(&self, base_path: &str, password: &str, opts: OtcsOptions) -> OtcsClient {
        OtcsClient::new(
            EcmSettings {
                base_url: self.emu.base_url(),
                base_path: base_path.into(),
                username: "admin".into(),
                password: SecretString::from(password.to_string()),
            },
            opts,
        )
        .unwrap()
    }

    fn client(&self) -> OtcsClient {
        self.client_at("/cs/cs", "admin", fast_options())
    }

    async fn control(&self, path: &str, body: serde_json::Value) {
        let resp = self
            .http
            .post(format!("{}/__emulator/{path}", self.emu.base_url()))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(
            resp.status().is_success(),
            "test control {path}: {}",
            resp.status()
        );
    }

    async fn fail_next(&self, status: u16, count: u32, path_prefix: &str) {
        self.control(
            "faults",
            json!({"status": status, "count": count, "path_prefix": path_prefix}),
        )
        .await;
    }
}

fn id(n: i64) -> NodeId {
    NodeId::new(n).unwrap()
}

/// `data` as a stream of `chunk`-byte pieces.
fn content_of(data: Bytes, chunk: usize, file_name: &str) -> Content {
    let length = data.len() as u64;
    let pieces: Vec<Result<Bytes, std::io::Error>> = (0..data.len())
        .step_by(chunk)
        .map(|i| Ok(data.slice(i..(i + chunk).min(data.len()))))
        .collect();
    Content {
        stream: Box::pin(futures_util::stream::iter(pieces)),
        length,
        file_name: file_name.into(),
        mime_type: "application/pdf".into(),
    }
}

fn upload_req(parent: NodeId, name: &str, data: Bytes) -> UploadRequest {
    UploadRequest {
        parent,
        name: name.into(),
        description: Some("from a partner".into()),
        categories: vec![],
        classifications: vec![],
        content: content_of(data, 7000, name),
    }
}

async fn read_all(d: Download) -> Vec<u8> {
    let mut out = Vec::new();
    let mut s = d.stream;
    while let Some(chunk) = s.next().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    out
}

fn pseudo_random(n: usize, seed: u64) -> Bytes {
    let mut rng = fastrand_like(seed);
    Bytes::from((0..n).map(|_| rng()).collect::<Vec<u8>>())
}

fn fastrand_like(mut x: u64) -> impl FnMut() -> u8 {
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x >> 24) as u8
    }
}

#[tokio::test]
async fn expired_ticket_is_renewed_once_and_the_call_succeeds() {
    let s = emulator().await;
    let c = s.client();
    assert_eq!(c.node(id(ENTERPRISE)).await.unwrap().id.get(), ENTERPRISE);

    s.control("expire-tickets", json!({})).await;
    let n = c
        .node(id(ENTERPRISE))
        .await
        .expect("re-authenticated after expiry");
    assert_eq!(n.id.get(), ENTERPRISE);

    // And once more: the renewed ticket is kept and expiry can happen again.
    s.control("expire-tickets", json!({})).await;
    let page = c
        .children(id(ENTERPRISE), &ChildFilter::default(), 1, 50)
        .await
        .unwrap();
    assert!(page.items.iter().any(|n| n.name == "Business Workspaces"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_after_ticket_expiry_all_succeed() {
    let s = emulator().await;
    let c = std::sync::Arc::new(s.client());
    c.node(id(ENTERPRISE)).await.unwrap();
    s.control("expire-tickets", json!({})).await;
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move { c.node(id(ENTERPRISE)).await })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap().id.get(), ENTERPRISE);
    }
}

#[tokio::test]
async fn ticket_expired_before_an_upload_is_renewed_by_the_preflight() {
    let s = emulator().await;
    let c = s.client();
    c.node(id(ENTERPRISE)).await.unwrap();
    s.control("expire-tickets", json!({})).await;
    let r = c
        .upload(upload_req(
            id(ENTERPRISE),
            "after-expiry.pdf",
            Bytes::from_static(b"%PDF-1.7 x"),
        ))
        .await
        .unwrap();
    assert_eq!(r.size, 10);
}

#[tokio::test]
async fn wrong_password_is_an_auth_error_that_a_later_run_may_retry() {
    let s = emulator().await;
    let c = s.client_at("/cs/cs", "wrong", fast_options());
    let err = c.node(id(ENTERPRISE)).await.unwrap_err();
    assert!(matches!(err, EcmError::Auth { .. }), "{err:?}");
    // Our credentials say nothing about the document at hand: the work must
    // wait for the next run (or the caller's retry), not fail for good.
    assert!(err.is_retryable());
}

fn ecm_secret(s: &Stack, password: &str) -> String {
    json!({"base_url": s.emu.base_url(), "username": "admin", "password": password}).to_string()
}

#[tokio::test]
async fn a_rotated_password_is_picked_up_by_re_reading_the_secret_once() {
    let s = emulator().await;
    let secrets = Arc::new(MemorySecrets::new());
    secrets.insert("xecm/ecm", &ecm_secret(&s, "admin"));
    let c = s
        .client()
        .with_credential_refresh(secrets.clone(), "xecm/ecm");
    c.node(id(ENTERPRISE)).await.unwrap();

    // The password rotates (every ticket ends) and the secret is updated.
    s.control(
        "set-password",
        json!({"username": "admin", "password": "rotated-1"}),
    )
    .await;
    secrets.insert("xecm/ecm", &ecm_secret(&s, "rotated-1"));
    assert_eq!(c.node(id(ENTERPRISE)).await.unwrap().id.get(), ENTERPRISE);

    // Rotated again, but the secret still holds the old password: one
    // re-read, then a retryable Auth error that says so.
    s.control(
        "set-password",
        json!({"username": "admin", "password": "rotated-2"}),
    )
    .await;
    let err = c.node(id(ENTERPRISE)).await.unwrap_err();
    assert!(matches!(err, EcmError::Auth { .. }), "{err:?}");
    assert!(err.is_retryable());
    assert!(err.to_string().contains("still holds"), "{err}");
    assert!(
        !err.to_string().contains("rotated"),
        "no password in errors: {err}"
    );
}

#[tokio::test]
async fn server_errors_are_retryable_not_refusals() {
    let s = emulator().await;
    let c = s.client();
    c.node(id(ENTERPRISE)).await.unwrap();
    for status in [500, 501, 507] {
        s.fail_next(status, 1, "/cs/cs/api/v2/nodes").await;
        let err = c.node(id(ENTERPRISE)).await.unwrap_err();
        assert!(
            matches!(err, EcmError::Transient { .. }),
            "HTTP {status}: {err:?}"
        );
        assert!(err.is_retryable());
        assert!(err.to_string().contains(&status.to_string()), "{err}");
    }
    // An upload refused with 500 is retryable as well (nothing was created).
    s.fail_next(500, 1, "/cs/cs/api/v2/nodes").await;
    let err = c
        .upload(upload_req(
            id(ENTERPRISE),
            "five-hundred.pdf",
            Bytes::from_static(b"x"),
        ))
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
}

#[tokio::test]
async fn service_unavailable_is_retried_then_succeeds() {
    let s = emulator().await;
    let c = s.client();
    // Log in first: the fault targets nodes only.
    let before = c.node(id(ENTERPRISE)).await.unwrap();
    s.fail_next(503, 2, "/cs/cs/api/v2/nodes").await;
    let n = c
        .node(id(ENTERPRISE))
        .await
        .expect("third attempt succeeds");
    assert_eq!(n, before);
    // Both faults were consumed by the retries: the next call needs none.
    s.fail_next(503, 1, "/cs/cs/api/v2/nodes").await;
    let cheap = s.client_at(
        "/cs/cs",
        "admin",
        OtcsOptions {
            backoff: Backoff {
                max_attempts: 1,
                ..fast_options().backoff
            },
            ..fast_options()
        },
    );
    assert!(
        cheap.node(id(ENTERPRISE)).await.unwrap_err().is_retryable(),
        "one attempt, one fault"
    );
}

#[tokio::test]
async fn persistent_503_ends_as_a_transient_error_after_bounded_attempts() {
    let s = emulator().await;
    let c = s.client();
    c.node(id(ENTERPRISE)).await.unwrap();
    // More failures than attempts (4): the client gives up.
    s.fail_next(503, 10, "/cs/cs/api/v2/nodes").await;
    let err = c.node(id(ENTERPRISE)).await.unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
    assert!(err.to_string().contains("after 4 attempts"), "{err}");
    // 10 faults = 4 + 4 + 2: the second call also exhausts its 4 attempts,
    // the third succeeds on its third attempt. This pins the attempt count.
    assert!(c.node(id(ENTERPRISE)).await.unwrap_err().is_retryable());
    assert_eq!(c.node(id(ENTERPRISE)).await.unwrap().id.get(), ENTERPRISE);
}

#[tokio::test]
async fn gateway_errors_on_login_are_retried() {
    let s = emulator().await;
    s.fail_next(502, 1, "/cs/cs/api/v1/auth").await;
    let c = s.client();
    assert_eq!(c.enterprise_volume().await.unwrap().get(), ENTERPRISE);
}

#[tokio::test]
async fn name_collision_is_a_conflict() {
    let s = emulator().await;
    let c = s.client();
    c.create_folder(id(ENTERPRISE), "Incoming").await.unwrap();
    let err = c
        .create_folder(id(ENTERPRISE), "Incoming")
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            EcmError::Conflict {
                op: "create folder",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("Incoming"));

    let data = Bytes::from_static(b"%PDF-1.7 hello");
    c.upload(upload_req(id(ENTERPRISE), "dup.pdf", data.clone()))
        .await
        .unwrap();
    let err = c
        .upload(upload_req(id(ENTERPRISE), "dup.pdf", data))
        .await
        .unwrap_err();
    assert!(err.is_conflict(), "{err:?}");
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn unknown_node_is_not_found_and_bad_names_are_invalid() {
    let s = emulator().await;
    let c = s.client();
    let err = c.node(id(987_654_321)).await.unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
    assert!(err.to_string().contains("987654321"));
    let err = c
        .upload(upload_req(
            id(987_654_321),
            "orphan.pdf",
            Bytes::from_static(b"x"),
        ))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            EcmError::NotFound {
                op: "upload document",
                ..
            }
        ),
        "{err:?}"
    );
    let err = c.create_folder(id(ENTERPRISE), "a:b").await.unwrap_err();
    assert!(matches!(err, EcmError::Invalid { .. }), "{err:?}");
}

#[tokio::test]
async fn refusal_carries_the_server_message() {
    let s = emulator().await;
    let c = s.client();
    let folder = c.create_folder(id(ENTERPRISE), "Refusals").await.unwrap();
    let doc = c
        .upload(upload_req(folder, "held.pdf", Bytes::from_static(b"x")))
        .await
        .unwrap();
    c.apply_hold(doc.node_id, 8001).await.unwrap();
    let err = c.delete_node(doc.node_id).await.unwrap_err();
    match err {
        EcmError::Refused {
            status,
            ref message,
            ..
        } => {
            assert_eq!(status, 403);
            assert!(!message.is_empty());
        }
        other => panic!("expected Refused, got {other:?}"),
    }
}

#[tokio::test]
async fn upload_streams_hashes_and_downloads_identical_bytes() {
    let s = emulator().await;
    let c = s.client();
    let data = pseudo_random(3 * 1024 * 1024 + 17, 7);
    let expected_sha = hex::encode(Sha256::digest(&data));
    let mut req = upload_req(id(ENTERPRISE), "big.bin", data.clone());
    req.categories = vec![AppliedCategory {
        category_id: 9001,
        values: [
            ("9001_2".to_string(), json!("Draft")),
            ("9001_6".to_string(), json!(["a", "b"])),
        ]
        .into_iter()
        .collect(),
    }];
    req.classifications = vec![];
    let r = c.upload(req).await.unwrap();
    assert_eq!(r.size, data.len() as u64);
    assert_eq!(r.sha256, expected_sha);

    let node = c.node(r.node_id).await.unwrap();
    assert_eq!(
        (node.node_type, node.size),
        (node_type::DOCUMENT, Some(data.len() as u64))
    );

    let d = c.download(r.node_id, None).await.unwrap();
    assert_eq!(d.length, Some(data.len() as u64));
    let got = read_all(d).await;
    assert_eq!(hex::encode(Sha256::digest(&got)), expected_sha);

    let cats = c.categories(r.node_id).await.unwrap();
    let dc = cats
        .iter()
        .find(|c| c.category_id == 9001)
        .expect("category applied at creation");
    assert_eq!(dc.values["9001_2"], json!("Draft"));
    assert_eq!(dc.values["9001_6"], json!(["a", "b"]));
}

#[tokio::test]
async fn versions_are_added_listed_and_downloaded_by_number() {
    let s = emulator().await;
    let c = s.client();
    let r = c
        .upload(upload_req(
            id(ENTERPRISE),
            "contract.pdf",
            Bytes::from_static(b"draft one"),
        ))
        .await
        .unwrap();
    let v2 = c
        .add_version(
            r.node_id,
            Some("redline"),
            content_of(Bytes::from_static(b"signed copy!"), 4, "contract.pdf"),
        )
        .await
        .unwrap();
    assert_eq!(v2.version, Some(2));
    assert_eq!(v2.size, 12);
    let versions = c.versions(r.node_id).await.unwrap();
    assert_eq!(
        versions
            .iter()
            .map(|v| (v.number, v.size))
            .collect::<Vec<_>>(),
        [(1, 9), (2, 12)]
    );
    assert_eq!(
        read_all(c.download(r.node_id, Some(1)).await.unwrap()).await,
        b"draft one"
    );
    assert_eq!(
        read_all(c.download(r.node_id, None).await.unwrap()).await,
        b"signed copy!"
    );
}

#[tokio::test]
async fn a_failing_source_stream_fails_the_upload_as_transient() {
    let s = emulator().await;
    let c = s.client();
    let pieces: Vec<Result<Bytes, std::io::Error>> = vec![
        Ok(Bytes::from_static(b"first part")),
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "sftp connection lost",
        )),
    ];
    let req = UploadRequest {
        parent: id(ENTERPRISE),
        name: "broken.pdf".into(),
        description: None,
        categories: vec![],
        classifications: vec![],
        content: Content {
            stream: Box::pin(futures_util::stream::iter(pieces)),
            length: 1000,
            file_name: "broken.pdf".into(),
            mime_type: "application/pdf".into(),
        },
    };
    let err = c.upload(req).await.unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
    assert!(
        c.child_by_name(id(ENTERPRISE), "broken.pdf")
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn folder_paths_are_created_like_mkdir_p_even_concurrently() {
    let s = emulator().await;
    let c = std::sync::Arc::new(s.client());
    let path: Vec<String> = ["Invoices", "2026", "11"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let c = c.clone();
            let path = path.clone();
            tokio::spawn(async move { c.ensure_folder_path(id(ENTERPRISE), &path).await })
        })
        .collect();
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap().unwrap());
    }
    assert!(ids.windows(2).all(|w| w[0] == w[1]), "{ids:?}");
    let again = c.ensure_folder_path(id(ENTERPRISE), &path).await.unwrap();
    assert_eq!(again, ids[0]);
    let invoices = c
        .child_by_name(id(ENTERPRISE), "Invoices")
        .await
        .unwrap()
        .unwrap();
    let n2026 = c.child_by_name(invoices.id, "2026").await.unwrap().unwrap();
    assert_eq!(
        c.child_by_name(n2026.id, "11").await.unwrap().unwrap().id,
        ids[0]
    );
    // Exactly one "Invoices" despite four concurrent creators.
    let page = c
        .children(
            id(ENTERPRISE),
            &ChildFilter {
                name_contains: Some("Invoices".into()),
                node_type: None,
            },
            1,
            50,
        )
        .await
        .unwrap();
    assert_eq!(
        page.items.iter().filter(|n| n.name == "Invoices").count(),
        1
    );
}

#[tokio::test]
async fn exact_name_lookup_walks_all_pages_of_substring_matches() {
    let s = emulator().await;
    let opts = OtcsOptions {
        page_size: 2,
        ..fast_options()
    };
    let c = s.client_at("/cs/cs", "admin", opts);
    let parent = c.create_folder(id(ENTERPRISE), "Lookup").await.unwrap();
    for name in ["report-a", "report-b", "report-c", "report-d", "report"] {
        c.create_folder(parent, name).await.unwrap();
    }
    let found = c
        .child_by_name(parent, "report")
        .await
        .unwrap()
        .expect("exact match found");
    assert_eq!(found.name, "report");
    assert!(c.child_by_name(parent, "repor").await.unwrap().is_none());
    let p1 = c
        .children(parent, &ChildFilter::default(), 1, 2)
        .await
        .unwrap();
    assert_eq!((p1.items.len(), p1.page_total, p1.total_count), (2, 3, 5));
}

#[tokio::test]
async fn categories_are_applied_and_updated() {
    let s = emulator().await;
    let c = s.client();
    let r = c
        .upload(upload_req(
            id(ENTERPRISE),
            "policy.pdf",
            Bytes::from_static(b"policy"),
        ))
        .await
        .unwrap();
    let vals: CategoryValues = [
        ("9001_2".to_string(), json!("Draft")),
        ("9001_4".to_string(), json!("Legal")),
    ]
    .into_iter()
    .collect();
    c.apply_category(r.node_id, 9001, &vals).await.unwrap();
    let upd: CategoryValues = [("9001_2".to_string(), json!("In Review"))]
        .into_iter()
        .collect();
    c.update_category(r.node_id, 9001, &upd).await.unwrap();
    let cats = c.categories(r.node_id).await.unwrap();
    let dc = cats.iter().find(|c| c.category_id == 9001).unwrap();
    assert_eq!(dc.values["9001_2"], json!("In Review"));
    assert_eq!(dc.values["9001_4"], json!("Legal"));
    // A value outside the popup list is refused with the server's message.
    let bad: CategoryValues = [("9001_2".to_string(), json!("Bogus"))]
        .into_iter()
        .collect();
    let err = c.update_category(r.node_id, 9001, &bad).await.unwrap_err();
    assert!(
        matches!(err, EcmError::Refused { status: 400, .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn workspaces_are_found_by_type_name_and_business_object_and_created() {
    let s = emulator().await;
    let c = s.client();
    let types = c.workspace_types().await.unwrap();
    let supplier = types
        .iter()
        .find(|t| t.name == "Supplier")
        .expect("seeded type");
    assert_eq!(supplier.templates[0].id.get(), 20001);

    let found = c
        .find_workspaces(100, "Acme Supplies GmbH (0000100001)")
        .await
        .unwrap();
    assert_eq!(found.iter().map(|w| w.id.get()).collect::<Vec<_>>(), [5001]);
    assert!(
        c.find_workspaces(100, "Acme").await.unwrap().is_empty(),
        "exact names only"
    );

    let bo = BusinessObject {
        ext_system_id: "SAP".into(),
        bo_type: "LFA1".into(),
        bo_id: "0000100002".into(),
    };
    assert_eq!(
        c.workspace_by_business_object(&bo)
            .await
            .unwrap()
            .map(|w| w.id.get()),
        Some(5002)
    );
    let missing = BusinessObject {
        bo_id: "9999999999".into(),
        ..bo
    };
    assert!(
        c.workspace_by_business_object(&missing)
            .await
            .unwrap()
            .is_none()
    );

    let new_id = c
        .create_workspace(&CreateWorkspace {
            template_id: id(20001),
            type_id: 100,
            name: "Initech Parts (0000100077)".into(),
            parent: None,
            business_object: Some(BusinessObject {
                ext_system_id: "SAP".into(),
                bo_type: "LFA1".into(),
                bo_id: "0000100077".into(),
            }),
            categories: vec![],
        })
        .await
        .unwrap();
    let ws = c
        .find_workspaces(100, "Initech Parts (0000100077)")
        .await
        .unwrap();
    assert_eq!(ws.iter().map(|w| w.id).collect::<Vec<_>>(), [new_id]);
}

#[tokio::test]
async fn rm_classification_holds_search_and_audit() {
    let s = emulator().await;
    let c = s.client();
    let r = c
        .upload(upload_req(
            id(ENTERPRISE),
            "invoice-4711.pdf",
            Bytes::from_static(b"inv"),
        ))
        .await
        .unwrap();
    c.apply_rm_classification(r.node_id, 7002).await.unwrap();
    assert_eq!(c.rm_classifications(r.node_id).await.unwrap(), [7002]);

    let holds = c.holds().await.unwrap();
    assert!(holds.iter().any(|h| h.id == 8001));
    c.apply_hold(r.node_id, 8001).await.unwrap();

    let hits = c.search("OTName: invoice-4711", 1, 10).await.unwrap();
    assert!(hits.items.iter().any(|n| n.id == r.node_id), "{hits:?}");

    let audit = c.audit(r.node_id, 1, 50).await.unwrap();
    assert!(!audit.items.is_empty());
    assert!(audit.total_count >= audit.items.len() as u64);
}

#[tokio::test]
async fn windows_base_path_works_too() {
    let s = emulator().await;
    let c = s.client_at("/otcs/cs.exe", "admin", fast_options());
    assert_eq!(c.enterprise_volume().await.unwrap().get(), ENTERPRISE);
    let f = c
        .create_folder(id(ENTERPRISE), "Via Windows path")
        .await
        .unwrap();
    c.update_node(
        f,
        &NodeUpdate {
            name: Some("Renamed".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(c.node(f).await.unwrap().name, "Renamed");
}

/// Peak resident set size of this process (client and embedded emulator), KiB.
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Throughput and memory of a streamed upload and download through the
/// client (the emulator streams content to and from disk). Size from
/// `XECM_BENCH_MIB` (default 256). Run with
/// `cargo test -p xecm-stack --release --test otcs_client -- --ignored --nocapture bench_`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark"]
async fn bench_streamed_upload_and_download() {
    let mib: u64 = std::env::var("XECM_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let s = emulator().await;
    let c = s.client();
    let block = pseudo_random(1024 * 1024, 42);
    let chunk = 256 * 1024;
    let total = mib * 1024 * 1024;
    let chunks = total / chunk as u64;
    let stream = futures_util::stream::iter((0..chunks).map(move |i| {
        let off = (i as usize * chunk) % block.len();
        Ok::<_, std::io::Error>(block.slice(off..off + chunk))
    }));
    let rss_before = peak_rss_kib();
    let t = std::time::Instant::now();
    let r = c
        .upload(UploadRequest {
            parent: id(ENTERPRISE),
            name: "bench.bin".into(),
            description: None,
            categories: vec![],
            classifications: vec![],
            content: Content {
                stream: Box::pin(stream),
                length: total,
                file_name: "bench.bin".into(),
                mime_type: "application/octet-stream".into(),
            },
        })
        .await
        .unwrap();
    let up = t.elapsed();
    assert_eq!(r.size, total);
    let t = std::time::Instant::now();
    let d = c.download(r.node_id, None).await.unwrap();
    let mut hasher = Sha256::new();
    let mut n = 0u64;
    let mut st = d.stream;
    while let Some(b) = st.next().await {
        let b = b.unwrap();
        n += b.len() as u64;
        hasher.update(&b);
    }
    let down = t.elapsed();
    assert_eq!(n, total);
    assert_eq!(hex::encode(hasher.finalize()), r.sha256);
    let mb = total as f64 / 1e6;
    println!(
        "BENCH {mib} MiB: upload {:.0} MB/s ({:.2} s, SHA-256 on the way), download+hash {:.0} MB/s ({:.2} s), peak RSS {} MiB before, {} MiB after",
        mb / up.as_secs_f64(),
        up.as_secs_f64(),
        mb / down.as_secs_f64(),
        down.as_secs_f64(),
        rss_before / 1024,
        peak_rss_kib() / 1024
    );
}
