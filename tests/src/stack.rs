//! The whole local stack in one guard: a real OpenSSH sshd, moto (Secrets
//! Manager, EventBridge) and the Content Server emulator, all on 127.0.0.1,
//! with the SFTP, ECM and webhook secrets seeded in moto and an event bus
//! whose events are captured into an SQS queue. Dropping [`LocalStack`]
//! stops every process it started, also when a test panics.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use aws_config::SdkConfig;
use otcs_emulator::{CallbackConfig, EmulatorConfig, RunningEmulator};
use serde_json::{Value, json};

use crate::latency_proxy::LatencyProxy;
use crate::moto::{EventCapture, Moto};
use crate::sshd::Sshd;

/// Secret ids the local stack seeds (the sample events use them).
pub const SFTP_SECRET_ID: &str = "xecm/local/sftp";
pub const SFTP_PASSWORD_SECRET_ID: &str = "xecm/local/sftp-password";
pub const ECM_SECRET_ID: &str = "xecm/local/ecm";
pub const WEBHOOK_SECRET_ID: &str = "xecm/local/webhook";
pub const EVENT_BUS: &str = "xecm-sftp-local";
/// HMAC key of the local webhook secret and the emulator's callbacks (a demo
/// value, documented in events/README.md; never use it anywhere real).
pub const WEBHOOK_HMAC_KEY: &str = "local-demo-hmac-key";
/// The emulator's built-in administrator (tests/otcs-emulator/README.md).
pub const ECM_USER: &str = "admin";
pub const ECM_PASSWORD: &str = "admin";

/// How to start the stack.
#[derive(Debug, Clone, Default)]
pub struct StackOptions {
    /// Where the emulator POSTs approval callbacks (e.g. the ecm-export
    /// Function URL); signed with [`WEBHOOK_HMAC_KEY`].
    pub callback_url: Option<String>,
    /// Persist the emulator's state here (in memory otherwise).
    pub emulator_data_dir: Option<PathBuf>,
    /// Emulator port (a free one when `None`).
    pub emulator_port: Option<u16>,
    /// The `client` of the seeded SFTP secrets (`ssh2` or `russh`); the
    /// adapters' default (ssh2) when `None`.
    pub sftp_client: Option<String>,
    /// Put a [`LatencyProxy`] with this round-trip time in front of sshd:
    /// the seeded secrets and `XECM_SFTP_PORT` then name the proxy, so the
    /// functions (and OpenSSH clients using the env) see a WAN-like server.
    pub sftp_rtt: Option<Duration>,
}

/// The running stack. Field order is drop order: the emulator, then moto,
/// then sshd.
pub struct LocalStack {
    pub emulator: RunningEmulator,
    pub events: EventCapture,
    pub moto: Moto,
    /// In front of sshd when [`StackOptions::sftp_rtt`] is set.
    pub sftp_proxy: Option<LatencyProxy>,
    pub sshd: Sshd,
    env: Vec<(String, String)>,
}

impl std::fmt::Debug for LocalStack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalStack")
            .field("sftp_port", &self.sshd.port())
            .field("ecm_url", &self.emulator.base_url())
            .field("aws_endpoint", &self.moto.endpoint())
            .finish_non_exhaustive()
    }
}

impl LocalStack {
    pub async fn start() -> Result<Self> {
        Self::start_with(StackOptions::default()).await
    }

    pub async fn start_with(options: StackOptions) -> Result<Self> {
        // sshd and moto are blocking to start; keep the runtime free meanwhile.
        let sshd = tokio::task::spawn_blocking(Sshd::start)
            .await
            .context("sshd start-up task")?
            .context("starting OpenSSH sshd")?;
        let moto = tokio::task::spawn_blocking(Moto::start)
            .await
            .context("moto start-up task")?
            .context("starting moto")?;

        let mut config = EmulatorConfig::default();
        if let Some(port) = options.emulator_port {
            config.listen.set_port(port);
        }
        config.data_dir = options.emulator_data_dir.clone();
        config.callback = options
            .callback_url
            .as_ref()
            .map(|url| CallbackConfig::new(url.clone(), WEBHOOK_HMAC_KEY));
        let emulator = otcs_emulator::start(config)
            .await
            .context("starting the Content Server emulator")?;

        let ecm_secret = json!({
            "base_url": emulator.base_url(),
            "base_path": "/cs/cs",
            "username": ECM_USER,
            "password": ECM_PASSWORD,
        });
        // The account is chrooted; its writable root is sshd's remote root.
        let mut sftp_secret: Value = serde_json::from_str(&sshd.sftp_secret_json())
            .context("sshd's SFTP secret is not JSON")?;
        sftp_secret["root"] = json!(sshd.remote_root());
        let mut sftp_pw_secret: Value = serde_json::from_str(&sshd.password_secret_json())
            .context("sshd's password secret is not JSON")?;
        sftp_pw_secret["root"] = json!(sshd.remote_root());
        if let Some(client) = &options.sftp_client {
            sftp_secret["client"] = json!(client);
            sftp_pw_secret["client"] = json!(client);
        }
        let sftp_proxy = match options.sftp_rtt {
            Some(rtt) => {
                let upstream = std::net::SocketAddr::from(([127, 0, 0, 1], sshd.port()));
                Some(
                    LatencyProxy::start(upstream, rtt / 2)
                        .await
                        .context("starting the SFTP latency proxy")?,
                )
            }
            None => None,
        };
        let sftp_port = sftp_proxy.as_ref().map_or(sshd.port(), LatencyProxy::port);
        sftp_secret["port"] = json!(sftp_port);
        sftp_pw_secret["port"] = json!(sftp_port);
        moto.put_json_secret(SFTP_SECRET_ID, &sftp_secret).await?;
        moto.put_json_secret(SFTP_PASSWORD_SECRET_ID, &sftp_pw_secret)
            .await?;
        moto.put_json_secret(ECM_SECRET_ID, &ecm_secret).await?;
        moto.put_json_secret(WEBHOOK_SECRET_ID, &json!({"hmac_keys": [WEBHOOK_HMAC_KEY]}))
            .await?;
        moto.create_event_bus(EVENT_BUS).await?;
        let events = moto.capture_events(EVENT_BUS).await?;

        let mut env: Vec<(String, String)> = moto
            .env()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        env.extend(
            [
                ("XECM_SFTP_SECRET_ID", SFTP_SECRET_ID.to_string()),
                ("XECM_ECM_SECRET_ID", ECM_SECRET_ID.to_string()),
                ("XECM_WEBHOOK_SECRET_ID", WEBHOOK_SECRET_ID.to_string()),
                ("XECM_EVENT_BUS", EVENT_BUS.to_string()),
                ("XECM_SFTP_HOST", sshd.host().to_string()),
                ("XECM_SFTP_PORT", sftp_port.to_string()),
                ("XECM_SFTP_REMOTE_ROOT", sshd.remote_root().to_string()),
                ("XECM_SFTP_USER", sshd.username().to_string()),
                (
                    "XECM_SFTP_KEY_FILE",
                    sshd.client_key_path().display().to_string(),
                ),
                ("XECM_EVENT_QUEUE_URL", events.queue_url().to_string()),
                (
                    "XECM_SFTP_DATA_ROOT",
                    sshd.data_root().display().to_string(),
                ),
                ("XECM_ECM_URL", emulator.base_url()),
            ]
            .map(|(k, v)| (k.to_string(), v)),
        );
        Ok(Self {
            emulator,
            events,
            moto,
            sftp_proxy,
            sshd,
            env,
        })
    }

    /// Everything a function needs to run against this stack: the AWS SDK
    /// settings (endpoint, region, dummy credentials) and the `XECM_*`
    /// identifiers, and the path of the SFTP client key file (for OpenSSH
    /// clients playing the partner). Never a credential other than moto's
    /// dummy keys.
    pub fn env(&self) -> &[(String, String)] {
        &self.env
    }

    /// The port SFTP clients should use: the latency proxy's when there is
    /// one, sshd's otherwise.
    pub fn sftp_port(&self) -> u16 {
        self.sftp_proxy
            .as_ref()
            .map_or(self.sshd.port(), LatencyProxy::port)
    }

    /// The value of one variable of [`LocalStack::env`].
    pub fn env_var(&self, name: &str) -> Option<&str> {
        self.env
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Writes [`LocalStack::env`] as a `KEY=value` file (shell-quoted).
    pub fn write_env_file(&self, path: &Path) -> Result<()> {
        let mut text =
            String::from("# written by xecm-stack; identifiers, addresses and paths only\n");
        for (k, v) in &self.env {
            let _ = writeln!(text, "{k}='{}'", v.replace('\'', r"'\''"));
        }
        // Write then rename, so a reader polling for the file never sees half.
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }

    /// The AWS SDK configuration pointed at moto.
    pub async fn sdk_config(&self) -> SdkConfig {
        self.moto.sdk_config().await
    }

    /// Events published on the bus so far (waits up to `timeout` for `count`).
    pub async fn received_events(&self, count: usize, timeout: Duration) -> Result<Vec<Value>> {
        self.events.receive(count, timeout).await
    }
}
