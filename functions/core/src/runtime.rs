//! Runs a function's handler either under the Lambda Runtime API or exactly
//! once from the command line, with the same handler code in both modes.
//!
//! - `AWS_LAMBDA_RUNTIME_API` set: `lambda_runtime::run`, logs as JSON.
//! - otherwise: `--event FILE` (or `-` for stdin) is read, the handler runs
//!   once, its JSON response is printed on stdout and the process exits 0; an
//!   error is printed on stderr and the exit code says whether a retry can help
//!   (1 permanent, 75 transient, 2 bad command line).

use std::future::Future;
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use serde_json::Value;

/// What the handler knows about the invocation it serves.
#[derive(Debug, Clone)]
pub struct Invocation {
    /// The Lambda request id, or a generated one in local mode.
    pub request_id: String,
    /// When the invocation is cut off; flows stop claiming work before this.
    pub deadline: SystemTime,
    /// The Lambda function ARN, or `local:<name>` in local mode.
    pub function_arn: String,
}

impl Invocation {
    /// Time left until the deadline (zero when it has passed).
    pub fn remaining(&self) -> Duration {
        self.deadline
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO)
    }
}

/// The invocation deadline from `Lambda-Runtime-Deadline-Ms`. Lambda sends
/// Unix epoch milliseconds; a value too small to be one (before 2001) is read
/// as milliseconds from now, which is what local Runtime API emulators
/// (cargo-lambda sends its timeout, e.g. `600000`) mean by it. Without this
/// every local invocation would look past its deadline.
pub fn deadline_from_header(deadline_ms: u64, now: SystemTime) -> SystemTime {
    const EPOCH_MS_2001: u64 = 978_307_200_000;
    if deadline_ms < EPOCH_MS_2001 {
        now + Duration::from_millis(deadline_ms)
    } else {
        SystemTime::UNIX_EPOCH + Duration::from_millis(deadline_ms)
    }
}

/// Whether a failed invocation can succeed when tried again unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Network, throttling, 5xx, a deadline: Lambda's async retry may help.
    Transient,
    /// Bad input or configuration, a refusal: retrying changes nothing.
    Permanent,
}

/// The error a handler returns: what failed, in words a person can act on,
/// and whether a retry can help.
#[derive(Debug, Clone)]
pub struct FunctionError {
    pub retry: Retry,
    /// A short machine-readable kind, e.g. `InvalidEvent`, `SecretNotFound`.
    pub kind: String,
    pub message: String,
}

impl FunctionError {
    pub fn permanent(kind: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            retry: Retry::Permanent,
            kind: kind.into(),
            message: message.into(),
        }
    }

    pub fn transient(kind: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            retry: Retry::Transient,
            kind: kind.into(),
            message: message.into(),
        }
    }

    /// The `errorType` reported to Lambda: `Permanent.<Kind>` or `Transient.<Kind>`.
    pub fn error_type(&self) -> String {
        match self.retry {
            Retry::Transient => format!("Transient.{}", self.kind),
            Retry::Permanent => format!("Permanent.{}", self.kind),
        }
    }
}

impl std::fmt::Display for FunctionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.error_type(), self.message)
    }
}

impl std::error::Error for FunctionError {}

impl From<FunctionError> for lambda_runtime::Diagnostic {
    fn from(e: FunctionError) -> Self {
        lambda_runtime::Diagnostic {
            error_type: e.error_type(),
            error_message: e.message,
        }
    }
}

/// Initialise logging once: JSON lines on Lambda (CloudWatch parses them),
/// human-readable on stderr locally. `RUST_LOG` overrides the level.
pub fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    // A second initialisation (tests) is harmless: the first subscriber stays.
    if on_lambda() {
        let _ = builder.json().with_current_span(true).try_init();
    } else {
        let _ = builder.compact().try_init();
    }
}

/// True when running under a Lambda Runtime API (real or emulated).
pub fn on_lambda() -> bool {
    std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some()
}

/// Where a local invocation's event comes from.
#[derive(Debug, PartialEq, Eq)]
enum EventSource {
    Stdin,
    File(PathBuf),
}

#[derive(Debug, PartialEq, Eq)]
enum LocalArgs {
    Help,
    Run(EventSource),
}

fn parse_args(args: &[String]) -> Result<LocalArgs, String> {
    let mut source = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "-h" | "--help" => return Ok(LocalArgs::Help),
            "--event" => {
                let value = it.next().ok_or_else(|| {
                    "--event needs a value: a file path or - for stdin".to_string()
                })?;
                source = Some(if value == "-" {
                    EventSource::Stdin
                } else {
                    EventSource::File(PathBuf::from(value))
                });
            }
            other => {
                if let Some(value) = other.strip_prefix("--event=") {
                    source = Some(if value == "-" {
                        EventSource::Stdin
                    } else {
                        EventSource::File(PathBuf::from(value))
                    });
                } else {
                    return Err(format!("unknown argument {other:?}; usage: --event FILE|-"));
                }
            }
        }
    }
    source
        .map(LocalArgs::Run)
        .ok_or_else(|| "missing --event FILE (or --event - to read the event from stdin)".into())
}

fn read_event(source: &EventSource) -> Result<Value, String> {
    let (text, name) = match source {
        EventSource::Stdin => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|e| format!("cannot read the event from stdin: {e}"))?;
            (text, "stdin".to_string())
        }
        EventSource::File(path) => (
            std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read event file {}: {e}", path.display()))?,
            path.display().to_string(),
        ),
    };
    serde_json::from_str(&text).map_err(|e| format!("event {name} is not valid JSON: {e}"))
}

/// The local invocation's time budget: `XECM_LOCAL_TIMEOUT_SECS`, default 900
/// (the Lambda maximum), so deadline-aware flows behave as they would there.
fn local_timeout() -> Duration {
    std::env::var("XECM_LOCAL_TIMEOUT_SECS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(900))
}

fn usage(function: &str) -> String {
    format!(
        "{function}: an xecm-sftp Lambda function.\n\
         Under Lambda (AWS_LAMBDA_RUNTIME_API set) it serves invocations.\n\
         Locally it runs one invocation:\n  {function} --event FILE   (or --event - for stdin)\n\
         prints the JSON response on stdout and exits 0; on error it prints the\n\
         error on stderr and exits 1 (permanent) or 75 (transient, retry may help)."
    )
}

/// Report a failure that happened before the handler could run (configuration,
/// secrets) and return the exit code for it.
pub fn fail_init(function: &str, error: &FunctionError) -> ExitCode {
    tracing::error!(error_type = %error.error_type(), "{function} failed to start: {}", error.message);
    eprintln!("{function}: {error}");
    exit_code(error)
}

fn exit_code(error: &FunctionError) -> ExitCode {
    match error.retry {
        Retry::Permanent => ExitCode::from(1),
        Retry::Transient => ExitCode::from(75),
    }
}

/// In local mode, reads the event named on the command line, before any
/// initialisation, so a bad command line or a malformed event is reported as
/// such and not masked by a configuration or network error. `Ok(None)` under
/// Lambda; `Err(code)` after printing the problem (or `--help`).
pub fn local_event(function: &str) -> Result<Option<Value>, ExitCode> {
    if on_lambda() {
        return Ok(None);
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let source = match parse_args(&args) {
        Ok(LocalArgs::Help) => {
            println!("{}", usage(function));
            return Err(ExitCode::SUCCESS);
        }
        Ok(LocalArgs::Run(source)) => source,
        Err(message) => {
            eprintln!("{function}: {message}\n\n{}", usage(function));
            return Err(ExitCode::from(2));
        }
    };
    match read_event(&source) {
        Ok(event) => Ok(Some(event)),
        Err(message) => {
            let error = FunctionError::permanent("InvalidEvent", message);
            eprintln!("{function}: {error}");
            Err(exit_code(&error))
        }
    }
}

/// The future a stateful handler returns; it may borrow the state.
pub type HandlerFuture<'a> =
    std::pin::Pin<Box<dyn Future<Output = Result<Value, FunctionError>> + 'a>>;

/// Serve a handler that needs state built once per cold start (configuration,
/// clients, secrets). Locally: the event is read first, then `init`, then one
/// invocation. Under Lambda: `init` runs at cold start; if it fails, every
/// invocation answers with that error (and tries `init` again, so a
/// transient failure such as an unreachable Secrets Manager heals), instead
/// of the process exiting with an error no caller gets to read.
pub async fn serve_with_init<S, I, IFut, H>(function: &'static str, init: I, handler: H) -> ExitCode
where
    I: Fn() -> IFut,
    IFut: Future<Output = Result<S, FunctionError>>,
    H: for<'a> Fn(&'a S, Value, Invocation) -> HandlerFuture<'a>,
{
    let local = match local_event(function) {
        Ok(local) => local,
        Err(code) => return code,
    };
    if local.is_some() {
        let state = match init().await {
            Ok(state) => state,
            Err(e) => return fail_init(function, &e),
        };
        return serve_event(function, local, |event, inv| handler(&state, event, inv)).await;
    }
    let cell: tokio::sync::OnceCell<S> = tokio::sync::OnceCell::new();
    if let Err(e) = cell.get_or_try_init(&init).await {
        tracing::error!(error_type = %e.error_type(), "{function}: initialisation failed: {}", e.message);
    }
    let (cell, init, handler) = (&cell, &init, &handler);
    serve_event(function, None, move |event, inv| async move {
        let state = cell.get_or_try_init(init).await?;
        handler(state, event, inv).await
    })
    .await
}

/// Serve `handler` under Lambda, or run it once locally (see module docs).
pub async fn serve<H, Fut>(function: &'static str, handler: H) -> ExitCode
where
    H: Fn(Value, Invocation) -> Fut,
    Fut: Future<Output = Result<Value, FunctionError>>,
{
    match local_event(function) {
        Ok(local) => serve_event(function, local, handler).await,
        Err(code) => code,
    }
}

/// Keeps glibc malloc from handing freed memory back to the kernel after
/// every transfer buffer. SFTP reads and writes go through 255 KiB buffers
/// allocated and freed at a high rate on several threads; with glibc's
/// defaults each arena trims its heap as soon as 128 KiB at its top are
/// free, so the next buffer costs fresh pages again (page faults, kernel
/// zeroing, unmapping). A profile of a 1 GiB ingest put a third of the
/// function's system CPU there; with a 128 MiB trim threshold (and a fixed
/// 32 MiB mmap threshold, so buffers never get their own mappings) system
/// CPU fell from ~0.75 s to ~0.4 s per GiB and peak RSS stayed at ~34 MiB.
/// Other C libraries (musl) are left alone.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const MMAP_THRESHOLD: libc::c_int = 32 << 20;
        const TRIM_THRESHOLD: libc::c_int = 128 << 20;
        // SAFETY: mallopt only adjusts malloc's tunables; it is thread-safe
        // and both values are within glibc's accepted ranges. A refusal
        // (return 0) leaves the defaults, which are merely slower.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
            libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
        }
    }
}

/// [`serve`] with the local event already read by [`local_event`]: `None`
/// serves Lambda invocations, `Some(event)` runs that one invocation.
pub async fn serve_event<H, Fut>(
    function: &'static str,
    local: Option<Value>,
    handler: H,
) -> ExitCode
where
    H: Fn(Value, Invocation) -> Fut,
    Fut: Future<Output = Result<Value, FunctionError>>,
{
    tune_allocator();
    let Some(event) = local else {
        let handler = &handler;
        let service =
            lambda_runtime::service_fn(move |event: lambda_runtime::LambdaEvent<Value>| {
                let ctx = event.context;
                let invocation = Invocation {
                    request_id: ctx.request_id.clone(),
                    deadline: deadline_from_header(ctx.deadline, SystemTime::now()),
                    function_arn: ctx.invoked_function_arn.clone(),
                };
                async move { handler(event.payload, invocation).await }
            });
        return match lambda_runtime::run(service).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("{function}: Lambda runtime stopped: {e}");
                ExitCode::FAILURE
            }
        };
    };
    let invocation = Invocation {
        request_id: format!("local-{:016x}", fastrand::u64(..)),
        deadline: SystemTime::now() + local_timeout(),
        function_arn: format!("local:{function}"),
    };
    match handler(event, invocation).await {
        Ok(response) => match serde_json::to_string_pretty(&response) {
            Ok(text) => {
                println!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{function}: cannot print the response as JSON: {e}");
                ExitCode::FAILURE
            }
        },
        Err(error) => {
            eprintln!("{function}: {error}");
            exit_code(&error)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn deadline_header_is_epoch_ms_from_lambda_and_relative_from_emulators() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_000);
        // Lambda: absolute.
        let abs = 1_795_000_300_000;
        assert_eq!(
            deadline_from_header(abs, now),
            SystemTime::UNIX_EPOCH + Duration::from_millis(abs)
        );
        // cargo-lambda: its timeout, relative to now.
        assert_eq!(
            deadline_from_header(600_000, now),
            now + Duration::from_secs(600)
        );
    }

    #[test]
    fn event_file_and_stdin_are_accepted() {
        assert_eq!(
            parse_args(&args(&["--event", "e.json"])),
            Ok(LocalArgs::Run(EventSource::File("e.json".into())))
        );
        assert_eq!(
            parse_args(&args(&["--event=-"])),
            Ok(LocalArgs::Run(EventSource::Stdin))
        );
    }

    #[test]
    fn missing_or_unknown_arguments_are_named() {
        assert!(parse_args(&[]).unwrap_err().contains("missing --event"));
        assert!(
            parse_args(&args(&["--event"]))
                .unwrap_err()
                .contains("needs a value")
        );
        assert!(
            parse_args(&args(&["--evnt", "x"]))
                .unwrap_err()
                .contains("\"--evnt\"")
        );
    }

    #[test]
    fn malformed_event_file_error_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.json");
        std::fs::write(&path, "{not json").unwrap();
        let err = read_event(&EventSource::File(path.clone())).unwrap_err();
        assert!(err.contains("bad.json"), "{err}");
        assert!(err.contains("not valid JSON"), "{err}");
    }

    #[test]
    fn error_type_carries_retry_class() {
        assert_eq!(
            FunctionError::transient("EcmUnavailable", "x").error_type(),
            "Transient.EcmUnavailable"
        );
        assert_eq!(
            FunctionError::permanent("InvalidRoute", "x").error_type(),
            "Permanent.InvalidRoute"
        );
    }
}
