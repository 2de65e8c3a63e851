//! The function binaries under a Lambda Runtime API emulator (cargo-lambda):
//! the same handler code that runs locally serves invocations there, a
//! permanent failure is answered as handled (so Lambda's async retry never
//! runs it again) with its record in the failure queue, a configuration error
//! is reported on every invocation rather than killing the runtime, and every
//! sample event in events/ succeeds or fails as documented.

use serde_json::json;
use xecm_core::adapters::sftp::{SftpSettings, SftpStore};
use xecm_core::ports::file_store::FileStore;
use xecm_stack::lambda::{LambdaHarness, function_binary};
use xecm_stack::stack::LocalStack;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configuration_error_is_answered_on_each_invocation() {
    let binary = function_binary("sftp-ingest").expect("sftp-ingest binary");
    let harness = LambdaHarness::start(&binary, &[]).expect("runtime API emulator");
    for _ in 0..2 {
        // Permanent: answered as a handled failure (no queue configured
        // here, so only logged), not as an error Lambda would retry.
        let failed = harness
            .invoke(&json!({"route": {}}))
            .await
            .expect("invoke")
            .expect("a permanent failure is answered as handled");
        assert_eq!(failed["status"], "failed", "{failed}");
        assert_eq!(failed["errorType"], "Permanent.InvalidConfig", "{failed}");
        let message = failed["errorMessage"].as_str().unwrap_or_default();
        assert!(message.contains("XECM_ECM_SECRET_ID"), "{failed}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transient_failure_is_returned_as_an_error_so_lambda_retries_it() {
    // Secrets Manager unreachable (nothing listens on the endpoint's port).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let env: Vec<(String, String)> = [
        ("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}")),
        ("AWS_REGION", "us-east-1".to_string()),
        ("AWS_ACCESS_KEY_ID", "test".to_string()),
        ("AWS_SECRET_ACCESS_KEY", "test".to_string()),
        ("XECM_ECM_SECRET_ID", "xecm/local/ecm".to_string()),
        ("XECM_EVENT_BUS", "bus".to_string()),
    ]
    .map(|(k, v)| (k.to_string(), v))
    .into();
    let binary = function_binary("sftp-ingest").expect("sftp-ingest binary");
    let harness = LambdaHarness::start(&binary, &env).expect("runtime API emulator");
    let error = harness
        .invoke(&json!({"route": {}}))
        .await
        .expect("invoke")
        .expect_err("a transient failure must reach Lambda as an error (its async retry)");
    assert_eq!(error["errorType"], "Transient.SecretUnavailable", "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sftp_ingest_serves_scheduled_events_and_refuses_malformed_ones() {
    let stack = LocalStack::start().await.expect("local stack");
    // The sample route's source directory, created over SFTP so that the
    // SFTP account owns it.
    let secret = stack.sshd.sftp_secret_json();
    let settings = SftpSettings::from_secret_json("test", &secret)
        .expect("settings")
        .with_root(stack.sshd.remote_root())
        .expect("root");
    let store = SftpStore::new(settings).expect("store");
    let dir = store.root().resolve("outbound/invoices").expect("path");
    store.mkdir_all(&dir).await.expect("mkdir");

    let binary = function_binary("sftp-ingest").expect("sftp-ingest binary");
    let harness = LambdaHarness::start(&binary, stack.env()).expect("runtime API emulator");

    let failed = harness
        .invoke(&json!({"unexpected": true}))
        .await
        .expect("invoke")
        .expect("a malformed event is a permanent failure, answered as handled");
    assert_eq!(failed["status"], "failed", "{failed}");
    assert_eq!(failed["errorType"], "Permanent.InvalidEvent", "{failed}");

    let sample = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../events/ingest-scheduled.json"),
    )
    .expect("sample event");
    let mut event: serde_json::Value = serde_json::from_str(&sample).expect("JSON");
    event["route"]["sftp_secret"] = json!(xecm_stack::stack::SFTP_SECRET_ID);
    let response = harness
        .invoke(&event)
        .await
        .expect("invoke")
        .unwrap_or_else(|e| panic!("scheduled ingest failed: {e}"));
    assert_eq!(response["counts"]["ingested"], 0, "{response}");
    assert_eq!(response["counts"]["failed"], 0, "{response}");
}

// ---------------------------------------------------------------------------
// Every sample event in events/, through the Runtime API emulator, against
// the local stack, with the deployed wiring: SFTP secret names mapped by
// XECM_SFTP_SECRETS (as Terraform sets it), export routes loaded from SSM
// Parameter Store (moto) one parameter per route, and a failure queue for
// permanent failures' records.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::Value;
use xecm_core::domain::webhook::sign;
use xecm_stack::stack::{SFTP_SECRET_ID, WEBHOOK_HMAC_KEY};

fn events_dir() -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../events")
}

fn sample(name: &str) -> Value {
    let path = events_dir().join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name} is not JSON: {e}"))
}

/// What a sample event must produce.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// A successful response whose `field` equals `value`.
    Success(&'static str, &'static str),
    /// A Function URL response with this HTTP status and `error` text.
    Http(u16, &'static str),
    /// A permanent failure answered as handled (not retried by Lambda), its
    /// record in the failure queue.
    Handled(&'static str),
}

/// The documented outcome of every file in events/ against the local stack.
/// `export-routes.json` is not an event: it is ecm-export's configuration,
/// loaded from SSM here.
fn documented(file: &str) -> Option<(&'static str, Expect)> {
    Some(match file {
        // The supplier-invoice route: its directory is empty here, so a run
        // that ingests nothing and fails nothing.
        "ingest-scheduled.json" => ("sftp-ingest", Expect::Success("counts.failed", "0")),
        // The demo route on the local stack's own secret (no files dropped).
        "ingest-demo.json" => ("sftp-ingest", Expect::Success("counts.failed", "0")),
        // A fan-out worker's batch: the message's claim is not on the local
        // server (nothing was claimed), so the message is acknowledged
        // without work and no failure is reported back to SQS.
        "ingest-sqs-worker.json" => ("sftp-ingest", Expect::Success("batchItemFailures", "[]")),
        // A manual retry of two files that are not in failed/.
        "ingest-manual-retry.json" => ("sftp-ingest", MANUAL_RETRY_EXPECTED),
        // Node 4711 is illustrative (the emulator's seed has no such node).
        "export-manual-resend.json" => ("ecm-export", MANUAL_RESEND_EXPECTED),
        "export-manual-package.json" => ("ecm-export", MANUAL_PACKAGE_EXPECTED),
        // Signed for 2026-11-18T11:06:40Z: outside the ±300 s window.
        "export-webhook-approved.json" => ("ecm-export", Expect::Http(401, "stale timestamp")),
        // The price-lists route's folder holds no approved document here: a
        // sweep that examines it and catches nothing up.
        "export-sweep.json" => ("ecm-export", Expect::Success("status", "swept")),
        // Roots 3001 and 3003 of the seed: a complete (full) snapshot.
        "backup-scheduled.json" => ("backup-snapshot", Expect::Success("status", "completed")),
        // Snapshot 20261203T020000Z is illustrative: neither unfinished nor
        // complete on the local server, so there is nothing to continue,
        // verify or restore (a permanent refusal naming the snapshot). The
        // envelope is the continuation as EventBridge delivers it.
        "backup-continue.json"
        | "backup-continuation-envelope.json"
        | "backup-manual-verify.json"
        | "backup-manual-restore.json" => {
            ("backup-snapshot", Expect::Handled("Permanent.Snapshot"))
        }
        _ => return None,
    })
}

/// Neither file is in `failed/`: the report says so for each of them.
const MANUAL_RETRY_EXPECTED: Expect = Expect::Success("counts.failed", "2");
/// The Content Server has no node 4711: a permanent failure.
const MANUAL_RESEND_EXPECTED: Expect = Expect::Handled("Permanent.EcmError");
/// Workspace 5101 (Globex, a Customer workspace) as a zip package: the seed
/// has no approved document under it, a permanent refusal.
const MANUAL_PACKAGE_EXPECTED: Expect = Expect::Handled("Permanent.NotApproved");
/// The sample callback re-signed now with the local key: the signature is
/// accepted, then node 4711 (absent from the seed) is not approved for export.
const WEBHOOK_RESIGNED_EXPECTED: (u16, &str) = (422, "not approved for export");

fn field<'a>(v: &'a Value, dotted: &str) -> &'a Value {
    dotted.split('.').fold(v, |v, k| &v[k])
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Creates the directories the sample routes read, over SFTP, so that the
/// SFTP account owns them.
async fn prepare_directories(stack: &LocalStack, dirs: &[&str]) {
    let settings = SftpSettings::from_secret_json("test", &stack.sshd.sftp_secret_json())
        .expect("settings")
        .with_root(stack.sshd.remote_root())
        .expect("root");
    let store = SftpStore::new(settings).expect("store");
    for dir in dirs {
        let path = store.root().resolve(dir).expect("path");
        store.mkdir_all(&path).await.expect("mkdir");
    }
}

/// Puts events/export-routes.json into moto's Parameter Store the way
/// infra/export_routes.tf does: one parameter per route, one for the
/// history; every destination on the local SFTP secret.
async fn put_export_routes(sdk: &aws_config::SdkConfig, path: &str) {
    let ssm = aws_sdk_ssm::Client::new(sdk);
    let routes = sample("export-routes.json");
    let mut params = vec![(
        format!("{path}export_history"),
        json!({"export_history": routes["export_history"]}),
    )];
    for route in routes["routes"].as_array().expect("routes") {
        params.push((
            format!("{path}routes/{}", route["name"].as_str().expect("name")),
            json!({"routes": [route]}),
        ));
    }
    for (name, value) in params {
        ssm.put_parameter()
            .name(&name)
            .value(value.to_string())
            .r#type(aws_sdk_ssm::types::ParameterType::String)
            .send()
            .await
            .unwrap_or_else(|e| panic!("PutParameter {name}: {e:?}"));
    }
}

/// Every `sftp_secret` the samples name → the local stack's SFTP secret.
fn sftp_secret_map() -> String {
    let mut names = BTreeMap::new();
    let mut visit = vec![];
    for entry in std::fs::read_dir(events_dir()).expect("events/") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "json") {
            visit.push(
                serde_json::from_str::<Value>(&std::fs::read_to_string(&path).unwrap()).unwrap(),
            );
        }
    }
    while let Some(v) = visit.pop() {
        match v {
            Value::Object(map) => {
                for (k, v) in map {
                    if k == "sftp_secret"
                        && let Value::String(s) = &v
                    {
                        names.insert(s.clone(), SFTP_SECRET_ID.to_string());
                    }
                    visit.push(v);
                }
            }
            Value::Array(list) => visit.extend(list),
            _ => {}
        }
    }
    serde_json::to_string(&names).expect("map")
}

async fn failure_queue(sdk: &aws_config::SdkConfig) -> (aws_sdk_sqs::Client, String) {
    let sqs = aws_sdk_sqs::Client::new(sdk);
    let url = sqs
        .create_queue()
        .queue_name("xecm-failed-invocations")
        .send()
        .await
        .expect("CreateQueue")
        .queue_url()
        .expect("queue url")
        .to_string();
    (sqs, url)
}

async fn failure_records(sqs: &aws_sdk_sqs::Client, url: &str) -> Vec<Value> {
    let mut out = Vec::new();
    loop {
        let got = sqs
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .send()
            .await
            .expect("ReceiveMessage");
        let messages = got.messages();
        if messages.is_empty() {
            return out;
        }
        for m in messages {
            out.push(serde_json::from_str(m.body().unwrap_or_default()).expect("record is JSON"));
            sqs.delete_message()
                .queue_url(url)
                .receipt_handle(m.receipt_handle().unwrap_or_default())
                .send()
                .await
                .expect("DeleteMessage");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sample_event_succeeds_or_fails_as_documented_under_the_runtime_api() {
    let stack = LocalStack::start().await.expect("local stack");
    let sdk = stack.sdk_config().await;
    prepare_directories(&stack, &["outbound/invoices", "inbound/partners"]).await;
    let routes_path = "/xecm-sftp-local/export-routes/";
    put_export_routes(&sdk, routes_path).await;
    let (sqs, queue_url) = failure_queue(&sdk).await;

    let mut env = stack.env().to_vec();
    env.push(("XECM_SFTP_SECRETS".into(), sftp_secret_map()));
    env.push(("XECM_FAILURE_QUEUE_URL".into(), queue_url.clone()));
    env.push(("XECM_EXPORT_ROUTES_SSM_PATH".into(), routes_path.into()));
    let mut harnesses = BTreeMap::new();
    for name in ["sftp-ingest", "ecm-export", "backup-snapshot"] {
        let binary = function_binary(name).expect("function binary");
        let harness = LambdaHarness::start(&binary, &env).expect("runtime API emulator");
        harnesses.insert(name, harness);
    }

    let mut files: Vec<String> = std::fs::read_dir(events_dir())
        .expect("events/")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".json"))
        .collect();
    files.sort();
    let mut checked = 0;
    for file in &files {
        if file == "export-routes.json" {
            continue; // configuration, loaded above from Parameter Store
        }
        let (function, expect) = documented(file)
            .unwrap_or_else(|| panic!("events/{file} has no documented outcome in this test"));
        let event = sample(file);
        let answer = harnesses[function]
            .invoke(&event)
            .await
            .unwrap_or_else(|e| panic!("{file}: invoke {function}: {e:#}"));
        match expect {
            Expect::Success(path, value) => {
                let response = answer.unwrap_or_else(|e| panic!("{file}: {function} failed: {e}"));
                assert_eq!(text(field(&response, path)), value, "{file}: {response}");
                assert_ne!(response["status"], "failed", "{file}: {response}");
            }
            Expect::Http(status, error) => {
                let response = answer.unwrap_or_else(|e| panic!("{file}: {function} failed: {e}"));
                assert_eq!(response["statusCode"], status, "{file}: {response}");
                let body: Value = serde_json::from_str(response["body"].as_str().unwrap_or("null"))
                    .expect("body is JSON");
                assert_eq!(body["error"], error, "{file}: {response}");
            }
            Expect::Handled(error_type) => {
                let response = answer.unwrap_or_else(|e| {
                    panic!("{file}: a permanent failure must be answered as handled (no Lambda retry), got the error {e}")
                });
                assert_eq!(response["status"], "failed", "{file}: {response}");
                assert_eq!(response["errorType"], error_type, "{file}: {response}");
                assert_eq!(response["event"], event, "{file}: {response}");
                let records = failure_records(&sqs, &queue_url).await;
                assert_eq!(records.len(), 1, "{file}: one failure record: {records:?}");
                assert_eq!(records[0]["requestPayload"], event, "{file}");
                assert_eq!(
                    records[0]["requestContext"]["condition"],
                    "PermanentFailure"
                );
                assert_eq!(records[0]["responsePayload"]["errorType"], error_type);
            }
        }
        if !matches!(expect, Expect::Handled(_)) {
            let stray = failure_records(&sqs, &queue_url).await;
            assert!(
                stray.is_empty(),
                "{file}: unexpected failure records {stray:?}"
            );
        }
        checked += 1;
    }
    assert_eq!(checked, files.len() - 1, "every event file was invoked");

    // The webhook through the emulator's Function URL (it builds the HTTP
    // API v2 payload), as shipped and re-signed now with the local key.
    let export = &harnesses["ecm-export"];
    let webhook = sample("export-webhook-approved.json");
    let body = webhook["body"].as_str().expect("body").to_string();
    let http = reqwest::Client::new();
    let post = |ts: String, sig: String| {
        http.post(export.function_url())
            .header("content-type", "application/json")
            .header("x-xecm-timestamp", ts)
            .header("x-xecm-signature", sig)
            .body(body.clone())
            .send()
    };
    let stale = post(
        webhook["headers"]["x-xecm-timestamp"]
            .as_str()
            .expect("ts")
            .into(),
        webhook["headers"]["x-xecm-signature"]
            .as_str()
            .expect("sig")
            .into(),
    )
    .await
    .expect("POST");
    assert_eq!(stale.status().as_u16(), 401);
    let stale: Value = stale.json().await.expect("JSON");
    assert_eq!(stale["error"], "stale timestamp", "{stale}");

    let now = chrono::Utc::now().timestamp();
    let fresh = post(
        now.to_string(),
        sign(WEBHOOK_HMAC_KEY.as_bytes(), now, body.as_bytes()),
    )
    .await
    .expect("POST");
    let status = fresh.status().as_u16();
    let fresh: Value = fresh.json().await.expect("JSON");
    assert_eq!(
        (status, fresh["error"].as_str().unwrap_or_default()),
        WEBHOOK_RESIGNED_EXPECTED,
        "{fresh}"
    );
}
