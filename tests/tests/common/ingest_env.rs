//! The ingest test environment both ingest test files use: the local stack
//! (sshd, emulator, moto), an SFTP store on it, our Content Server client and
//! the EventBridge sink, with helpers to drop files as a partner would, run
//! the flow and inject emulator faults. Each file adds its own `impl Env`.
#![allow(dead_code)]

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use xecm_core::adapters::aws::{EventBridgeSink, SecretsManagerSecrets};
use xecm_core::adapters::otcs::{EcmSettings, OtcsClient, OtcsOptions};
use xecm_core::adapters::sftp::{SftpClient, SftpSettings, open_store};
use xecm_core::domain::route::{IngestEvent, Route, parse_ingest_event};
use xecm_core::flows::ingest::{self, Clock, IngestDeps, IngestReport, RunContext, SystemClock};
use xecm_core::ports::file_store::FileStore;
use xecm_core::ports::secrets::Secrets;
use xecm_stack::stack::{EVENT_BUS, LocalStack, SFTP_SECRET_ID};

pub struct Env {
    pub stack: LocalStack,
    pub store: std::sync::Arc<dyn FileStore>,
    pub ecm: OtcsClient,
    pub events: EventBridgeSink,
}

impl Env {
    pub async fn start() -> Env {
        Env::start_with(SftpClient::Ssh2).await
    }

    pub async fn start_with(client: SftpClient) -> Env {
        let stack = LocalStack::start().await.expect("local stack");
        let sdk = stack.sdk_config().await;
        let secrets = SecretsManagerSecrets::new(&sdk);
        let json = secrets.get(SFTP_SECRET_ID).await.expect("sftp secret");
        let mut settings = SftpSettings::from_secret_json(SFTP_SECRET_ID, json.expose_secret())
            .expect("settings")
            .with_root(stack.sshd.remote_root())
            .expect("root");
        settings.max_sessions = 4;
        settings.client = client;
        let store = open_store(settings).expect("store");
        let ecm = OtcsClient::new(
            EcmSettings::from_secret_json(
                "ecm",
                &json!({"base_url": stack.emulator.base_url(), "username": "admin", "password": "admin"})
                    .to_string(),
            )
            .expect("ecm settings"),
            OtcsOptions::default(),
        )
        .expect("ecm client");
        let events = EventBridgeSink::new(&sdk, EVENT_BUS);
        Env {
            stack,
            store,
            ecm,
            events,
        }
    }

    pub fn data_root(&self) -> PathBuf {
        self.stack.sshd.data_root()
    }

    /// Writes a file as the partner would (then hands it to the SFTP account),
    /// with its mtime `age` in the past.
    pub fn drop_file(&self, rel: &[u8], bytes: &[u8], age: Duration) -> PathBuf {
        use std::os::unix::ffi::OsStrExt;
        let path = self.data_root().join(std::ffi::OsStr::from_bytes(rel));
        let parent = path.parent().expect("parent");
        std::fs::create_dir_all(parent).expect("mkdir");
        std::fs::write(&path, bytes).expect("write");
        let f = std::fs::File::options()
            .write(true)
            .open(&path)
            .expect("open");
        f.set_modified(SystemTime::now() - age).expect("mtime");
        self.hand_over();
        path
    }

    /// Everything under the data root belongs to the SFTP account, as if it
    /// had uploaded it (we write as root).
    pub fn hand_over(&self) {
        let root = self.data_root();
        let meta = std::fs::metadata(&root).expect("data root");
        let status = Command::new("chown")
            .arg("-R")
            .arg(format!("{}:{}", meta.uid(), meta.gid()))
            .arg(&root)
            .status()
            .expect("chown");
        assert!(status.success());
    }

    pub async fn run_with(
        &self,
        route: &Route,
        clock: &dyn Clock,
        ctx: &RunContext,
    ) -> IngestReport {
        let deps = IngestDeps {
            store: self.store.as_ref(),
            ecm: &self.ecm,
            events: &self.events,
            clock,
            sftp_host: "127.0.0.1".into(),
        };
        ingest::run(route, &deps, ctx).await.expect("ingest run")
    }

    pub async fn run(&self, route: &Route, id: &str) -> IngestReport {
        let ctx = RunContext::new(id, Duration::from_secs(300));
        self.run_with(route, &SystemClock, &ctx).await
    }

    /// Injects an emulator fault (`/__emulator/faults`).
    pub async fn fault(&self, fault: Value) {
        let r = reqwest::Client::new()
            .post(format!(
                "{}/__emulator/faults",
                self.stack.emulator.base_url()
            ))
            .json(&fault)
            .send()
            .await
            .expect("faults");
        assert!(r.status().is_success());
    }

    /// Every file below `rel_dir` of the SFTP data root, relative to it, sorted.
    pub fn files_in(&self, rel_dir: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![self.data_root().join(rel_dir)];
        while let Some(d) = stack.pop() {
            let Ok(rd) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    out.push(
                        p.strip_prefix(self.data_root())
                            .unwrap_or(&p)
                            .to_string_lossy()
                            .into_owned(),
                    );
                }
            }
        }
        out.sort();
        out
    }
}

pub fn route(v: Value) -> Route {
    match parse_ingest_event(json!({ "route": v })).expect("valid route") {
        IngestEvent::Scheduled(r) => r,
        other => panic!("not scheduled: {other:?}"),
    }
}

pub fn history_cfg() -> Value {
    json!({"category_id": 9002, "attributes": {
        "route": 2, "host": 3, "source_path": 4, "size": 5, "sha256": 6, "received_at": 7,
        "ingested_at": 8, "invocation_id": 9, "idempotency_key": 10, "original_name": 11}})
}

/// A route placing every file into the seeded records folder `folder`.
pub fn simple_route(
    name: &str,
    source: &str,
    folder: i64,
    readiness: Value,
    policy: &str,
) -> Route {
    route(simple_route_json(name, source, folder, readiness, policy))
}

pub fn simple_route_json(
    name: &str,
    source: &str,
    folder: i64,
    readiness: Value,
    policy: &str,
) -> Value {
    json!({
        "name": name,
        "sftp_secret": SFTP_SECRET_ID,
        "source_dir": source,
        "readiness": readiness,
        "rules": [],
        "fallback": {"place": {
            "workspace": {"by": "node", "node_id": folder},
            "name": "{name}",
            "rm_classification": 7004,
            "on_existing": policy
        }},
        "limits": {"parallelism": 3, "max_attempts": 3, "lease_secs": 1800},
        "transfer_history": history_cfg()
    })
}

pub fn pdf(text: &str) -> Vec<u8> {
    format!("%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\n% {text}\ntrailer << /Root 1 0 R >>\n%%EOF\n")
        .into_bytes()
}

pub fn sha_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// A clock running `.0` ahead of the system clock (past leases, ages).
pub struct Ahead(pub chrono::Duration);
impl Clock for Ahead {
    fn now(&self) -> DateTime<Utc> {
        Utc::now() + self.0
    }
}
