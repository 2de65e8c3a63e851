//! The function binaries under a Lambda Runtime API emulator (cargo-lambda):
//! the same handler code that runs locally serves invocations there, and
//! errors reach the caller with their retry class.

use xecm_stack::lambda::{LambdaHarness, function_binary};

#[tokio::test]
async fn malformed_event_is_reported_as_a_permanent_error_through_the_runtime_api() {
    let binary = function_binary("sftp-ingest").expect("sftp-ingest binary");
    let harness = LambdaHarness::start(&binary, &[]).expect("runtime API emulator");
    let result = harness
        .invoke(&serde_json::json!({"unexpected": true}))
        .await
        .expect("invoke");
    let error = result.expect_err("a malformed event must fail");
    let error_type = error["errorType"].as_str().unwrap_or_default();
    assert!(error_type.starts_with("Permanent."), "{error}");
}
