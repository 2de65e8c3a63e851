//! The function binaries in local mode (`--event FILE`) fail clearly: a
//! malformed event, a wrong host-key pin, a missing secret or an unreachable
//! stack each give a non-zero exit and an error naming what is wrong, never a
//! panic.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::{Value, json};
use xecm_stack::lambda::function_binary;
use xecm_stack::process::free_port;
use xecm_stack::stack::LocalStack;

fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
}

/// A scheduled-ingest event: the sample route, pointed at `secret`.
fn ingest_event(secret: &str) -> Value {
    let text = std::fs::read_to_string(repo_root().join("events/ingest-scheduled.json"))
        .expect("events/ingest-scheduled.json");
    let mut event: Value = serde_json::from_str(&text).expect("sample is JSON");
    event["route"]["sftp_secret"] = json!(secret);
    event
}

fn run(binary: &str, event: &Value, env: &[(String, String)]) -> Output {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("event.json");
    std::fs::write(&path, event.to_string()).expect("write event");
    Command::new(function_binary(binary).expect("binary built"))
        .arg("--event")
        .arg(&path)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .expect("run function")
}

fn assert_clear_failure(out: &Output, needles: &[&str]) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "expected a failure, got success; stderr:\n{stderr}"
    );
    assert!(
        !stderr.contains("panicked"),
        "a panic is a defect:\n{stderr}"
    );
    for needle in needles {
        assert!(
            stderr.contains(needle),
            "stderr does not name {needle:?}:\n{stderr}"
        );
    }
    stderr
}

#[test]
fn a_malformed_event_file_names_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("broken-event.json");
    std::fs::write(&path, "{\"route\": ").expect("write");
    for binary in ["sftp-ingest", "ecm-export", "backup-snapshot"] {
        let out = Command::new(function_binary(binary).expect("built"))
            .arg("--event")
            .arg(&path)
            .output()
            .expect("run");
        assert_clear_failure(&out, &["broken-event.json", "not valid JSON"]);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{binary}: a bad event is permanent"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_route_a_wrong_host_key_pin_and_a_missing_secret_are_named() {
    let stack = LocalStack::start().await.expect("local stack");
    let mut wrong: Value = serde_json::from_str(&stack.sshd.sftp_secret_json()).expect("json");
    wrong["host_key_sha256"] = json!(["SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"]);
    stack
        .moto
        .put_json_secret("xecm/local/sftp-wrong-pin", &wrong)
        .await
        .expect("seed");
    let env = stack.env().to_vec();

    let mut invalid = ingest_event("xecm/local/sftp");
    invalid["route"]["limits"]["parallelism"] = json!(0);
    let out = tokio::task::spawn_blocking({
        let env = env.clone();
        move || run("sftp-ingest", &invalid, &env)
    })
    .await
    .expect("join");
    assert_clear_failure(&out, &["parallelism"]);
    assert_eq!(out.status.code(), Some(1), "an invalid route is permanent");

    let out = tokio::task::spawn_blocking({
        let env = env.clone();
        move || {
            run(
                "sftp-ingest",
                &ingest_event("xecm/local/sftp-wrong-pin"),
                &env,
            )
        }
    })
    .await
    .expect("join");
    assert_clear_failure(&out, &[stack.sshd.host_key_fingerprint()]);

    let out = tokio::task::spawn_blocking(move || {
        run(
            "sftp-ingest",
            &ingest_event("xecm/local/no-such-secret"),
            &env,
        )
    })
    .await
    .expect("join");
    assert_clear_failure(&out, &["xecm/local/no-such-secret"]);
}

#[test]
fn an_unreachable_stack_is_a_transient_failure() {
    let port = free_port().expect("port");
    let endpoint = format!("http://127.0.0.1:{port}");
    let env = [
        ("AWS_ENDPOINT_URL", endpoint.as_str()),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("XECM_ECM_SECRET_ID", "xecm/local/ecm"),
        ("XECM_EVENT_BUS", "xecm-sftp-local"),
    ]
    .map(|(k, v)| (k.to_string(), v.to_string()));
    let out = run("sftp-ingest", &ingest_event("xecm/local/sftp"), &env);
    let stderr = assert_clear_failure(&out, &["Transient"]);
    assert_eq!(
        out.status.code(),
        Some(75),
        "unreachable is transient:\n{stderr}"
    );
}
