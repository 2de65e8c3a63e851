//! Runs a function's handler either under the Lambda Runtime API or exactly
//! once from the command line, with the same handler code in both modes.
//!
//! - `AWS_LAMBDA_RUNTIME_API` set: `lambda_runtime::run`, logs as JSON.
//! - otherwise: `--event FILE` (or `-` for stdin) is read, the handler runs
//!   once, its JSON response is printed on stdout and the process exits 0; an
//!   error is printed on stderr and the exit code says whether a retry can help
//!   (1 permanent, 75 transient, 2 bad command line). With `--plan` the
//!   event gets `"action": "plan"`: the function reports what it would do
//!   and changes nothing.
//!
//! Under Lambda a handler error is answered by its retry class (see
//! [`answer`]): a transient error is returned as an error, so Lambda's async
//! retry runs the event again; a permanent one is answered as a *handled
//! failure*: its failure record (the event and the error, in the shape of
//! Lambda's own destination records) goes to the failure queue named by
//! `XECM_FAILURE_QUEUE_URL` and the invocation succeeds with a response that
//! says it failed, so Lambda never re-runs an event that cannot succeed.

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

/// Where a permanent failure's record goes (the failure queue on Lambda).
#[async_trait::async_trait]
pub trait FailureSink: Send + Sync {
    /// Stores `record`; returns an id of the stored copy (the queue's
    /// message id) or why it could not be stored.
    async fn send(&self, record: &Value) -> Result<String, String>;
    /// Where records go, for the response (e.g. the queue URL).
    fn name(&self) -> String;
}

/// [`FailureSink`] over an SQS queue (`XECM_FAILURE_QUEUE_URL`).
pub struct SqsFailureQueue {
    client: aws_sdk_sqs::Client,
    queue_url: String,
}

impl SqsFailureQueue {
    /// From `XECM_FAILURE_QUEUE_URL`; `None` when it is not set (local
    /// setups), in which case the record is only logged.
    pub async fn from_env() -> Option<Self> {
        let queue_url = std::env::var("XECM_FAILURE_QUEUE_URL")
            .ok()
            .filter(|v| !v.trim().is_empty())?;
        let sdk = crate::adapters::aws::load_sdk_config().await;
        Some(Self {
            client: aws_sdk_sqs::Client::new(&sdk),
            queue_url: queue_url.trim().to_string(),
        })
    }
}

#[async_trait::async_trait]
impl FailureSink for SqsFailureQueue {
    async fn send(&self, record: &Value) -> Result<String, String> {
        let body = record.to_string();
        let out = tokio::time::timeout(
            Duration::from_secs(20),
            self.client
                .send_message()
                .queue_url(&self.queue_url)
                .message_body(body)
                .send(),
        )
        .await
        .map_err(|_| format!("SendMessage to {} timed out", self.queue_url))?
        .map_err(|e| {
            format!(
                "SendMessage to {}: {}",
                self.queue_url,
                aws_sdk_sqs::error::DisplayErrorContext(&e)
            )
        })?;
        Ok(out.message_id().unwrap_or_default().to_string())
    }

    fn name(&self) -> String {
        self.queue_url.clone()
    }
}

/// The record of a permanent failure: the fields of Lambda's own
/// asynchronous-invocation destination record, so one consumer reads both
/// kinds from the failure queue. `condition` is `PermanentFailure` here
/// (Lambda writes `RetriesExhausted` or `EventAgeExceeded`).
pub fn failure_record(error: &FunctionError, event: &Value, invocation: &Invocation) -> Value {
    serde_json::json!({
        "version": "1.0",
        "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "requestContext": {
            "requestId": invocation.request_id,
            "functionArn": invocation.function_arn,
            "condition": "PermanentFailure",
            "approximateInvokeCount": 1,
        },
        "requestPayload": event,
        "responseContext": {"functionError": "Handled"},
        "responsePayload": {
            "errorType": error.error_type(),
            "errorMessage": error.message,
        },
    })
}

/// True for a Lambda Function URL (HTTP) request: always synchronous, so
/// there is no Lambda retry to avoid and its caller needs an HTTP error.
fn is_http_request(event: &Value) -> bool {
    event
        .get("requestContext")
        .and_then(|c| c.get("http"))
        .is_some()
}

/// How a handler's result is answered to the Lambda Runtime API:
/// - `Ok` stays `Ok`;
/// - a transient error stays an error (Lambda retries an async event);
/// - a permanent error is answered as a handled failure: its record goes to
///   `sink` and the answer is `Ok` with `{"status":"failed", "errorType",
///   "errorMessage", "failureRecord": {...}}`, so Lambda does not retry it.
///   If the record cannot be stored the error is returned as it is (Lambda
///   then retries and finally stores its own record: nothing is lost). With
///   no sink (no queue configured) the record is only logged;
/// - a Function URL request's error stays an error (synchronous, no retry).
pub async fn answer(
    result: Result<Value, FunctionError>,
    event: &Value,
    invocation: &Invocation,
    sink: Option<&dyn FailureSink>,
) -> Result<Value, FunctionError> {
    let error = match result {
        Ok(v) => return Ok(v),
        Err(e) => e,
    };
    if error.retry == Retry::Transient || is_http_request(event) {
        tracing::warn!(error_type = %error.error_type(), request_id = %invocation.request_id, "invocation failed: {}", error.message);
        return Err(error);
    }
    let record = failure_record(&error, event, invocation);
    let stored = match sink {
        Some(sink) => match sink.send(&record).await {
            Ok(id) => serde_json::json!({"queue": sink.name(), "messageId": id}),
            Err(why) => {
                tracing::error!(
                    error_type = %error.error_type(),
                    request_id = %invocation.request_id,
                    "permanent failure not recorded ({why}); answering it as an error so that Lambda keeps the event: {}",
                    error.message
                );
                return Err(error);
            }
        },
        None => {
            // The log is the only record: keep the event in it.
            tracing::error!(
                handled_failure = true,
                error_type = %error.error_type(),
                request_id = %invocation.request_id,
                failure_record = %record,
                "permanent failure (no XECM_FAILURE_QUEUE_URL; this log line is its record): {}",
                error.message
            );
            serde_json::Value::Null
        }
    };
    if !stored.is_null() {
        tracing::error!(
            handled_failure = true,
            error_type = %error.error_type(),
            request_id = %invocation.request_id,
            "permanent failure, recorded in the failure queue and not retried: {}",
            error.message
        );
    }
    Ok(serde_json::json!({
        "status": "failed",
        "errorType": error.error_type(),
        "errorMessage": error.message,
        "retry": "never: permanent failure, answered as handled",
        "failureRecord": stored,
        "event": event,
    }))
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
        // Colours only for a person at a terminal, not in redirected output.
        use std::io::IsTerminal;
        let _ = builder
            .compact()
            .with_ansi(std::io::stderr().is_terminal())
            .try_init();
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
    /// `--plan`: the event becomes a plan of itself (see [`as_plan`]).
    Plan(EventSource),
}

fn parse_args(args: &[String]) -> Result<LocalArgs, String> {
    let mut source = None;
    let mut plan = false;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "-h" | "--help" => return Ok(LocalArgs::Help),
            "--plan" => plan = true,
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
                    return Err(format!(
                        "unknown argument {other:?}; usage: [--plan] --event FILE|-"
                    ));
                }
            }
        }
    }
    let source =
        source.ok_or("missing --event FILE (or --event - to read the event from stdin)")?;
    Ok(if plan {
        LocalArgs::Plan(source)
    } else {
        LocalArgs::Run(source)
    })
}

/// `--plan`: the same event with `"action": "plan"` (in an EventBridge
/// envelope, in its `detail`), so the function reports what it would do
/// instead of doing it. An event that already asks for another action is
/// refused, naming it: a plan of a retry or a resend is not what it says.
fn as_plan(mut event: Value) -> Result<Value, String> {
    let target = if event.get("detail-type").is_some() {
        event.get_mut("detail")
    } else {
        Some(&mut event)
    };
    let Some(Value::Object(obj)) = target else {
        return Err("--plan: the event is not a JSON object".into());
    };
    match obj.get("action") {
        None => {}
        Some(Value::String(a)) if a == "plan" => {}
        Some(other) => {
            return Err(format!(
                "--plan: the event already has action {other}; plan a scheduled event (without action), or write {{\"action\":\"plan\",...}}"
            ));
        }
    }
    obj.insert("action".into(), Value::String("plan".into()));
    Ok(event)
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
         With --plan it reports what the invocation would do and changes nothing:\n  \
         {function} --plan --event FILE\n\
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
        Ok(LocalArgs::Run(source)) => (source, false),
        Ok(LocalArgs::Plan(source)) => (source, true),
        Err(message) => {
            eprintln!("{function}: {message}\n\n{}", usage(function));
            return Err(ExitCode::from(2));
        }
    };
    let (source, plan) = source;
    let event = read_event(&source).and_then(|e| if plan { as_plan(e) } else { Ok(e) });
    match event {
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
        // The failure queue's client, built on the first permanent failure.
        let failures: tokio::sync::OnceCell<Option<SqsFailureQueue>> = tokio::sync::OnceCell::new();
        let failures = &failures;
        let service =
            lambda_runtime::service_fn(move |event: lambda_runtime::LambdaEvent<Value>| {
                let ctx = event.context;
                let invocation = Invocation {
                    request_id: ctx.request_id.clone(),
                    deadline: deadline_from_header(ctx.deadline, SystemTime::now()),
                    function_arn: ctx.invoked_function_arn.clone(),
                };
                let payload = event.payload;
                async move {
                    let result = handler(payload.clone(), invocation.clone()).await;
                    if !matches!(&result, Err(e) if e.retry == Retry::Permanent) {
                        return result;
                    }
                    let sink = failures.get_or_init(SqsFailureQueue::from_env).await;
                    let sink = sink.as_ref().map(|s| s as &dyn FailureSink);
                    answer(result, &payload, &invocation, sink).await
                }
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
    fn plan_flag_turns_the_event_into_its_plan() {
        assert_eq!(
            parse_args(&args(&["--plan", "--event", "e.json"])),
            Ok(LocalArgs::Plan(EventSource::File("e.json".into())))
        );
        let plan = as_plan(serde_json::json!({"route": {"name": "r"}})).unwrap();
        assert_eq!(plan["action"], "plan");
        let wrapped =
            as_plan(serde_json::json!({"detail-type": "x", "detail": {"node_id": 1}})).unwrap();
        assert_eq!(wrapped["detail"]["action"], "plan");
        let err = as_plan(serde_json::json!({"action": "retry", "route": {}})).unwrap_err();
        assert!(err.contains("\"retry\""), "{err}");
        assert!(as_plan(serde_json::json!([1])).is_err());
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

    struct Recorder {
        fail: bool,
        records: std::sync::Mutex<Vec<Value>>,
    }

    #[async_trait::async_trait]
    impl FailureSink for Recorder {
        async fn send(&self, record: &Value) -> Result<String, String> {
            if self.fail {
                return Err("queue unreachable".into());
            }
            self.records.lock().unwrap().push(record.clone());
            Ok("m-1".into())
        }
        fn name(&self) -> String {
            "test-queue".into()
        }
    }

    fn recorder(fail: bool) -> Recorder {
        Recorder {
            fail,
            records: std::sync::Mutex::new(Vec::new()),
        }
    }

    fn invocation() -> Invocation {
        Invocation {
            request_id: "req-1".into(),
            deadline: SystemTime::now() + Duration::from_secs(60),
            function_arn: "arn:aws:lambda:eu-central-1:123456789012:function:f".into(),
        }
    }

    #[tokio::test]
    async fn a_permanent_failure_is_recorded_and_answered_as_handled() {
        let sink = recorder(false);
        let event = serde_json::json!({"route": {"name": "r"}});
        let answered = answer(
            Err(FunctionError::permanent("InvalidRoute", "route.name: bad")),
            &event,
            &invocation(),
            Some(&sink),
        )
        .await
        .expect("a permanent failure must not be returned as an error (Lambda would retry it)");
        assert_eq!(answered["status"], "failed");
        assert_eq!(answered["errorType"], "Permanent.InvalidRoute");
        assert_eq!(answered["event"], event);
        assert_eq!(answered["failureRecord"]["messageId"], "m-1");
        let records = sink.records.lock().unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0]["requestPayload"], event);
        assert_eq!(
            records[0]["requestContext"]["condition"],
            "PermanentFailure"
        );
        assert_eq!(records[0]["requestContext"]["requestId"], "req-1");
        assert_eq!(
            records[0]["responsePayload"]["errorType"],
            "Permanent.InvalidRoute"
        );
    }

    #[tokio::test]
    async fn a_transient_failure_stays_an_error_so_lambda_retries_it() {
        let sink = recorder(false);
        let err = answer(
            Err(FunctionError::transient("EcmUnavailable", "503")),
            &serde_json::json!({}),
            &invocation(),
            Some(&sink),
        )
        .await
        .unwrap_err();
        assert_eq!(err.error_type(), "Transient.EcmUnavailable");
        assert!(sink.records.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn an_unrecorded_permanent_failure_stays_an_error_so_nothing_is_lost() {
        let err = answer(
            Err(FunctionError::permanent("InvalidEvent", "x")),
            &serde_json::json!({"a": 1}),
            &invocation(),
            Some(&recorder(true)),
        )
        .await
        .unwrap_err();
        assert_eq!(err.error_type(), "Permanent.InvalidEvent");
    }

    #[tokio::test]
    async fn function_url_errors_and_successes_pass_through() {
        let http = serde_json::json!({"requestContext": {"http": {"method": "POST"}}});
        let sink = recorder(false);
        assert!(
            answer(
                Err(FunctionError::permanent("Config", "x")),
                &http,
                &invocation(),
                Some(&sink)
            )
            .await
            .is_err()
        );
        assert!(sink.records.lock().unwrap().is_empty());
        let ok = answer(
            Ok(serde_json::json!({"n": 1})),
            &http,
            &invocation(),
            Some(&sink),
        )
        .await
        .unwrap();
        assert_eq!(ok["n"], 1);
    }

    #[tokio::test]
    async fn without_a_queue_a_permanent_failure_is_handled_and_logged() {
        let answered = answer(
            Err(FunctionError::permanent("InvalidEvent", "x")),
            &serde_json::json!({}),
            &invocation(),
            None,
        )
        .await
        .unwrap();
        assert_eq!(answered["status"], "failed");
        assert!(answered["failureRecord"].is_null());
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
