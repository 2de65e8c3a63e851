//! Runs a function binary under a Lambda Runtime API emulator: cargo-lambda's
//! `cargo lambda watch --only-lambda-apis` serves the Runtime API, invokes and
//! Function URLs on 127.0.0.1, and our real `lambda_runtime` binary polls it,
//! exactly as it would poll the Runtime API on AWS.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

use crate::process::{ChildGuard, free_port, wait_for_port};

/// The cargo-lambda executable: `XECM_CARGO_LAMBDA` (tests/run.sh sets it),
/// else `cargo-lambda` on PATH.
pub fn cargo_lambda_executable() -> PathBuf {
    std::env::var_os("XECM_CARGO_LAMBDA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("cargo-lambda"))
}

/// The directory holding this build's binaries (`target/debug` in tests).
pub fn binaries_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot locate the running executable")?;
    let mut dir = exe
        .parent()
        .map(Path::to_path_buf)
        .context("executable has no directory")?;
    // Test binaries live in target/<profile>/deps.
    if dir.ends_with("deps") {
        dir.pop();
    }
    Ok(dir)
}

/// Path of a workspace binary such as `sftp-ingest`, checked to exist.
pub fn function_binary(name: &str) -> anyhow::Result<PathBuf> {
    let path = binaries_dir()?.join(name);
    if !path.is_file() {
        bail!(
            "{} is not built; run `cargo build -p {name}` (tests/run.sh builds every binary)",
            path.display()
        );
    }
    Ok(path)
}

/// A Runtime API emulator with one function process attached to it.
#[derive(Debug)]
pub struct LambdaHarness {
    port: u16,
    // Field order: the function stops before the API it polls.
    _function: ChildGuard,
    _api: ChildGuard,
}

impl LambdaHarness {
    /// Starts the Runtime API on a free port and `binary` against it, with
    /// the extra environment `env` (e.g. the local stack's variables).
    pub fn start(binary: &Path, env: &[(String, String)]) -> anyhow::Result<Self> {
        let port = free_port()?;
        let mut api_cmd = Command::new(cargo_lambda_executable());
        api_cmd
            .args([
                "lambda",
                "watch",
                "--only-lambda-apis",
                "-A",
                "127.0.0.1",
                "-P",
            ])
            .arg(port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut api = ChildGuard::spawn("cargo lambda watch", api_cmd)?;
        wait_for_port(&mut api, port, Duration::from_secs(30))?;

        let mut fn_cmd = Command::new(binary);
        fn_cmd
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            // `_` is the function name cargo-lambda routes to in this mode.
            .env("AWS_LAMBDA_FUNCTION_NAME", "_")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "1024")
            .env(
                "AWS_LAMBDA_RUNTIME_API",
                format!("http://127.0.0.1:{port}/.rt"),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        let function = ChildGuard::spawn(binary.display().to_string(), fn_cmd)?;
        Ok(Self {
            port,
            _function: function,
            _api: api,
        })
    }

    /// Base URL of the emulator (invoke API and Function URLs).
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The Function URL of the attached function.
    pub fn function_url(&self) -> String {
        format!("{}/lambda-url/_", self.base_url())
    }

    /// Invokes the function synchronously (RequestResponse) with `event`.
    /// `Ok(Ok(response))` on success, `Ok(Err(error))` with the function's
    /// `errorType`/`errorMessage` body when the function reported an error.
    pub async fn invoke(
        &self,
        event: &serde_json::Value,
    ) -> anyhow::Result<Result<serde_json::Value, serde_json::Value>> {
        let url = format!("{}/2015-03-31/functions/_/invocations", self.base_url());
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()?;
        let response = client
            .post(&url)
            .json(event)
            .send()
            .await
            .with_context(|| format!("POST {url}"))?;
        let function_error = response.headers().contains_key("x-amz-function-error");
        let status = response.status();
        let body: serde_json::Value = response
            .json()
            .await
            .with_context(|| format!("response of {url} ({status}) is not JSON"))?;
        Ok(if function_error || !status.is_success() {
            Err(body)
        } else {
            Ok(body)
        })
    }
}
