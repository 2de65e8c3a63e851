//! The function binaries under a Lambda Runtime API emulator (cargo-lambda):
//! the same handler code that runs locally serves invocations there, errors
//! reach the caller with their retry class, and a configuration error is
//! reported on every invocation rather than killing the runtime.

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
        let error = harness
            .invoke(&json!({"route": {}}))
            .await
            .expect("invoke")
            .expect_err("no configuration: the invocation must fail");
        assert_eq!(error["errorType"], "Permanent.InvalidConfig", "{error}");
        let message = error["errorMessage"].as_str().unwrap_or_default();
        assert!(message.contains("XECM_ECM_SECRET_ID"), "{error}");
    }
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

    let error = harness
        .invoke(&json!({"unexpected": true}))
        .await
        .expect("invoke")
        .expect_err("a malformed event must fail");
    assert_eq!(error["errorType"], "Permanent.InvalidEvent", "{error}");

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
