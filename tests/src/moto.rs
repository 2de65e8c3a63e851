//! moto (`moto_server`, PyPI `moto[server]`) on 127.0.0.1 and a free port:
//! Secrets Manager, EventBridge and SQS for the local stack. Reached through
//! the standard `AWS_ENDPOINT_URL` and dummy credentials, so the adapters
//! under test take the same code path as on AWS.
//!
//! [`Moto`] is a guard: dropping it (also while unwinding from a failed test)
//! kills moto's whole process group, so nothing is left running.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_secretsmanager::config::Credentials;
use serde_json::Value;

use crate::process::{ChildGuard, free_port, wait_for_port};

/// The region every local-stack client uses.
pub const REGION: &str = "us-east-1";

/// A running moto server; stopped with its process group on drop.
pub struct Moto {
    child: ChildGuard,
    port: u16,
    // Keeps moto's log file alive until the guard goes.
    dir: tempfile::TempDir,
}

impl std::fmt::Debug for Moto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Moto")
            .field("pid", &self.child.pid())
            .field("port", &self.port)
            .finish()
    }
}

/// `XECM_MOTO_SERVER`, or `moto_server` found on `PATH`.
fn moto_executable() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("XECM_MOTO_SERVER") {
        return Ok(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("moto_server"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            anyhow!("moto_server not found on PATH (pip install 'moto[server]', or set XECM_MOTO_SERVER)")
        })
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

impl Moto {
    /// Starts moto and waits until it accepts connections (at most 30 s).
    pub fn start() -> Result<Self> {
        let exe = moto_executable()?;
        // A few tries: another process may take the port between our probe and moto's bind.
        let mut last_err = None;
        for _ in 0..3 {
            let dir = tempfile::tempdir().context("creating moto's temp dir")?;
            let log_path = dir.path().join("moto.log");
            let log = File::create(&log_path).context("creating moto's log file")?;
            let port = free_port()?;
            let mut cmd = Command::new(&exe);
            cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log);
            // Own process group: the guard stops moto and anything it spawned.
            let child = ChildGuard::spawn(format!("moto_server ({})", exe.display()), cmd)?;
            let mut moto = Moto { child, port, dir };
            match moto.wait_ready(Duration::from_secs(30)) {
                Ok(()) => return Ok(moto),
                // Dropping the guard kills what was started before the next try.
                Err(e) => last_err = Some(e.context(log_tail(&log_path))),
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow!("moto did not start")))
    }

    /// moto's combined stdout/stderr so far (last lines), for failing tests.
    pub fn log_tail(&self) -> String {
        log_tail(&self.dir.path().join("moto.log"))
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        Ok(wait_for_port(&mut self.child, self.port, timeout)?)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The environment a function needs to reach this moto (`AWS_ENDPOINT_URL`
    /// and dummy credentials), for child processes and `.env` files.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_REGION", REGION.into()),
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
        ]
    }

    /// The SDK configuration `aws_config::defaults(..).load()` yields with
    /// [`Moto::env`] set, built without touching this process's environment
    /// (tests run in parallel threads).
    pub async fn sdk_config(&self) -> SdkConfig {
        aws_config::defaults(BehaviorVersion::latest())
            .endpoint_url(self.endpoint())
            .region(Region::new(REGION))
            .credentials_provider(Credentials::new(
                "test",
                "test",
                None,
                None,
                "xecm-local-stack",
            ))
            .load()
            .await
    }

    /// Creates (or replaces the value of) a JSON secret.
    pub async fn put_json_secret(&self, secret_id: &str, value: &Value) -> Result<()> {
        self.put_secret_string(secret_id, &value.to_string()).await
    }

    /// Creates (or replaces the value of) a string secret.
    pub async fn put_secret_string(&self, secret_id: &str, value: &str) -> Result<()> {
        put_secret_string(&self.sdk_config().await, secret_id, value).await
    }

    /// Creates an EventBridge bus; returns its ARN.
    pub async fn create_event_bus(&self, name: &str) -> Result<String> {
        let eb = aws_sdk_eventbridge::Client::new(&self.sdk_config().await);
        let out = eb
            .create_event_bus()
            .name(name)
            .send()
            .await
            .with_context(|| format!("creating event bus {name} in moto"))?;
        out.event_bus_arn()
            .map(str::to_string)
            .ok_or_else(|| anyhow!("moto returned no ARN for bus {name}"))
    }

    /// Routes every `xecm-sftp` event on `bus` into a new SQS queue, so tests
    /// can read what was published (moto keeps no other record of events).
    pub async fn capture_events(&self, bus: &str) -> Result<EventCapture> {
        let name = format!("capture-{bus}-{}", std::process::id());
        self.capture_events_matching(bus, &name, r#"{"source":["xecm-sftp"]}"#)
            .await
    }

    /// Routes the events on `bus` that match `pattern` (an EventBridge event
    /// pattern, e.g. a deployed rule's) into a new SQS queue named `name`.
    pub async fn capture_events_matching(
        &self,
        bus: &str,
        name: &str,
        pattern: &str,
    ) -> Result<EventCapture> {
        let conf = self.sdk_config().await;
        let sqs = aws_sdk_sqs::Client::new(&conf);
        let eb = aws_sdk_eventbridge::Client::new(&conf);
        let queue_url = sqs
            .create_queue()
            .queue_name(name)
            .send()
            .await
            .context("creating the capture queue")?
            .queue_url()
            .map(str::to_string)
            .ok_or_else(|| anyhow!("moto returned no queue URL"))?;
        let attrs = sqs
            .get_queue_attributes()
            .queue_url(&queue_url)
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
            .send()
            .await
            .context("reading the capture queue's ARN")?;
        let queue_arn = attrs
            .attributes()
            .and_then(|a| a.get(&aws_sdk_sqs::types::QueueAttributeName::QueueArn))
            .cloned()
            .ok_or_else(|| anyhow!("moto returned no queue ARN"))?;
        eb.put_rule()
            .name(name)
            .event_bus_name(bus)
            .event_pattern(pattern)
            .send()
            .await
            .with_context(|| format!("creating the capture rule on bus {bus}"))?;
        let target = aws_sdk_eventbridge::types::Target::builder()
            .id("capture")
            .arn(queue_arn)
            .build()
            .context("building the capture target")?;
        eb.put_targets()
            .rule(name)
            .event_bus_name(bus)
            .targets(target)
            .send()
            .await
            .context("attaching the capture queue to the rule")?;
        Ok(EventCapture { sqs, queue_url })
    }
}

/// Events captured through an SQS queue.
#[derive(Debug)]
pub struct EventCapture {
    sqs: aws_sdk_sqs::Client,
    queue_url: String,
}

impl EventCapture {
    /// The capture queue of a running stack, from its URL (the env file's
    /// `XECM_EVENT_QUEUE_URL`).
    pub fn attach(sdk: &SdkConfig, queue_url: &str) -> Self {
        Self {
            sqs: aws_sdk_sqs::Client::new(sdk),
            queue_url: queue_url.to_string(),
        }
    }

    pub fn queue_url(&self) -> &str {
        &self.queue_url
    }

    /// Every event waiting in the queue now (read until one receive comes
    /// back empty), oldest first by the envelope's `time`.
    pub async fn drain(&self) -> Result<Vec<Value>> {
        let mut out = Vec::new();
        loop {
            let got = self.receive(10, Duration::from_millis(1)).await?;
            if got.is_empty() {
                break;
            }
            out.extend(got);
        }
        out.sort_by(|a, b| a["time"].as_str().cmp(&b["time"].as_str()));
        Ok(out)
    }

    /// Reads events until `count` arrived or `timeout` passed; returns what
    /// arrived (the EventBridge envelopes: `source`, `detail-type`, `detail`...).
    pub async fn receive(&self, count: usize, timeout: Duration) -> Result<Vec<Value>> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        while out.len() < count && Instant::now() < deadline {
            let msgs = self
                .sqs
                .receive_message()
                .queue_url(&self.queue_url)
                .max_number_of_messages(10)
                .wait_time_seconds(1)
                .send()
                .await
                .context("receiving from the capture queue")?;
            for m in msgs.messages() {
                let body = m.body().unwrap_or_default();
                out.push(
                    serde_json::from_str(body)
                        .with_context(|| format!("captured message is not JSON: {body}"))?,
                );
                if let Some(h) = m.receipt_handle() {
                    self.sqs
                        .delete_message()
                        .queue_url(&self.queue_url)
                        .receipt_handle(h)
                        .send()
                        .await
                        .context("deleting a captured message")?;
                }
            }
        }
        Ok(out)
    }
}

/// Creates (or replaces the value of) a string secret in the Secrets Manager
/// `sdk` points at (moto's, for the local stack).
pub async fn put_secret_string(sdk: &SdkConfig, secret_id: &str, value: &str) -> Result<()> {
    let sm = aws_sdk_secretsmanager::Client::new(sdk);
    let created = sm
        .create_secret()
        .name(secret_id)
        .secret_string(value)
        .send()
        .await;
    match created {
        Ok(_) => Ok(()),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_resource_exists_exception()) =>
        {
            sm.put_secret_value()
                .secret_id(secret_id)
                .secret_string(value)
                .send()
                .await
                .with_context(|| format!("updating secret {secret_id} in moto"))?;
            Ok(())
        }
        Err(e) => Err(anyhow!(e).context(format!("creating secret {secret_id} in moto"))),
    }
}
