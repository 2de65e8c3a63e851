//! The ingest test environment both ingest test files use: the local stack
//! (sshd, emulator, moto), an SFTP store on it, our Content Server client and
//! the EventBridge sink, with helpers to drop files as a partner would, run
//! the flow and inject emulator faults. Each file adds its own `impl Env`.
#![allow(dead_code)]

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, SystemTime};

use secrecy::ExposeSecret;
use serde_json::{Value, json};
use xecm_core::adapters::aws::{EventBridgeSink, SecretsManagerSecrets};
use xecm_core::adapters::otcs::{EcmSettings, OtcsClient, OtcsOptions};
use xecm_core::adapters::sftp::{SftpClient, SftpSettings, open_store};
use xecm_core::domain::route::Route;
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
}
