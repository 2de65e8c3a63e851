//! The local stack as a whole: the secrets it seeds in moto are read through
//! the real Secrets Manager adapter and drive the real ssh2 adapter against
//! the real sshd (host key pinned), the emulator answers, and the
//! `xecm-stack up` command writes its env file and stops everything on SIGTERM.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use secrecy::ExposeSecret;
use xecm_core::adapters::aws::SecretsManagerSecrets;
use xecm_core::adapters::sftp::{SftpSettings, SftpStore};
use xecm_core::ports::file_store::{FileStore, FileStoreError, RenameMode};
use xecm_core::ports::secrets::{Secrets, SecretsError};
use xecm_stack::stack::{ECM_SECRET_ID, LocalStack, SFTP_SECRET_ID};

async fn sftp_settings_from_moto(stack: &LocalStack) -> SftpSettings {
    let secrets = SecretsManagerSecrets::new(&stack.sdk_config().await);
    let json = secrets
        .get(SFTP_SECRET_ID)
        .await
        .expect("SFTP secret in moto");
    // The seeded secret carries the account's root (`/data` in the chroot).
    SftpSettings::from_secret_json(SFTP_SECRET_ID, json.expose_secret()).expect("valid SFTP secret")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_secrets_drive_a_pinned_sftp_round_trip_and_the_ecm_answers() {
    let stack = LocalStack::start().await.expect("local stack");
    let store = SftpStore::new(sftp_settings_from_moto(&stack).await).expect("store");

    let path = store.root().resolve("roundtrip/hello.txt").expect("path");
    store
        .mkdir_all(&path.parent().expect("parent"))
        .await
        .expect("mkdir");
    let receipt = store
        .write_small(
            &path,
            Bytes::from_static(b"hello, sftp"),
            RenameMode::NoReplace,
        )
        .await
        .expect("atomic put");
    assert_eq!(receipt.size, 11);
    let back = store.read_small(&path, 1024).await.expect("read back");
    assert_eq!(&back[..], b"hello, sftp");
    // The bytes really are on the server's disk, under the data root.
    let on_disk =
        std::fs::read(stack.sshd.data_root().join("roundtrip/hello.txt")).expect("file on disk");
    assert_eq!(on_disk, b"hello, sftp");

    // The ECM secret points at the emulator, which answers its ping.
    let secrets = SecretsManagerSecrets::new(&stack.sdk_config().await);
    let ecm: serde_json::Value = serde_json::from_str(
        secrets
            .get(ECM_SECRET_ID)
            .await
            .expect("ECM secret")
            .expose_secret(),
    )
    .expect("ECM secret is JSON");
    let base = ecm["base_url"].as_str().expect("base_url");
    let ping = reqwest::get(format!("{base}/cs/cs/api/v1/ping"))
        .await
        .expect("ping");
    assert!(
        ping.status().is_success(),
        "ping answered {}",
        ping.status()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_host_key_pin_fails_closed_naming_the_presented_key() {
    let stack = LocalStack::start().await.expect("local stack");
    let mut secret: serde_json::Value =
        serde_json::from_str(&stack.sshd.sftp_secret_json()).expect("json");
    secret["host_key_sha256"] =
        serde_json::json!(["SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"]);
    let settings = SftpSettings::from_secret_json("test/wrong-pin", &secret.to_string())
        .expect("settings")
        .with_root(stack.sshd.remote_root())
        .expect("root");
    let store = SftpStore::new(settings).expect("store");
    let dir = store.root().resolve(".").expect("root path");
    let err = store
        .list(&dir)
        .await
        .expect_err("a wrong pin must refuse the connection");
    match &err {
        FileStoreError::HostKeyMismatch { presented, .. } => {
            assert_eq!(presented, stack.sshd.host_key_fingerprint(), "{err}")
        }
        other => panic!("expected a host-key mismatch, got {other}"),
    }
    assert!(
        err.to_string().contains(stack.sshd.host_key_fingerprint()),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_secret_is_named() {
    let stack = LocalStack::start().await.expect("local stack");
    let secrets = SecretsManagerSecrets::new(&stack.sdk_config().await);
    let err = secrets
        .get("xecm/local/no-such-secret")
        .await
        .expect_err("missing secret");
    assert!(matches!(err, SecretsError::NotFound { .. }), "{err:?}");
    assert!(
        err.to_string().contains("xecm/local/no-such-secret"),
        "{err}"
    );
}

fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

#[test]
fn stack_command_writes_its_env_file_and_leaves_nothing_running_after_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let env_file = dir.path().join("stack.env");
    let mut child = Command::new(env!("CARGO_BIN_EXE_xecm-stack"))
        .args(["up", "--env-file"])
        .arg(&env_file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("xecm-stack up");
    let start = Instant::now();
    while !env_file.exists() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("xecm-stack exited early: {status}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "no env file after 90 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let text = std::fs::read_to_string(&env_file).expect("env file");
    let var = |name: &str| -> String {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("{name} missing from env file:\n{text}"))
            .trim_matches('\'')
            .to_string()
    };
    for name in [
        "AWS_ENDPOINT_URL",
        "XECM_SFTP_SECRET_ID",
        "XECM_ECM_SECRET_ID",
        "XECM_EVENT_BUS",
        "XECM_SFTP_DATA_ROOT",
        "XECM_ECM_URL",
    ] {
        assert!(!var(name).is_empty(), "{name} is empty");
    }
    assert!(
        !text.contains("PRIVATE KEY"),
        "the env file must hold no credential"
    );
    for name in [
        "XECM_SFTP_USER",
        "XECM_SFTP_KEY_FILE",
        "XECM_EVENT_QUEUE_URL",
    ] {
        assert!(!var(name).is_empty(), "{name} is empty");
    }
    assert!(
        std::path::Path::new(&var("XECM_SFTP_KEY_FILE")).is_file(),
        "the client key file named in the env file exists"
    );

    // put-secret and events, with the env file's variables (the README's
    // walkthrough uses both).
    let envs: Vec<(String, String)> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches('\'').to_string()))
        .collect();
    let stack_cmd = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_xecm-stack"))
            .args(args)
            .envs(envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output()
            .expect("xecm-stack")
    };
    let secret = dir.path().join("secret.json");
    std::fs::write(&secret, r#"{"host": "127.0.0.1"}"#).expect("write secret");
    let out = stack_cmd(&[
        "put-secret",
        "xecm/test/put",
        secret.to_str().expect("utf-8"),
    ]);
    assert!(
        out.status.success()
            && String::from_utf8_lossy(&out.stdout).contains("secret xecm/test/put stored"),
        "put-secret: {out:?}"
    );
    std::fs::write(&secret, "[1, 2]").expect("write secret");
    let out = stack_cmd(&[
        "put-secret",
        "xecm/test/put",
        secret.to_str().expect("utf-8"),
    ]);
    assert!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("is not a JSON object"),
        "a secret that is not a JSON object is refused naming the file: {out:?}"
    );
    let out = stack_cmd(&["events"]);
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("(no events)"),
        "events on a fresh stack: {out:?}"
    );
    let sftp_port: u16 = var("XECM_SFTP_PORT").parse().expect("port");
    let moto_port: u16 = var("AWS_ENDPOINT_URL")
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("moto port");
    assert!(
        port_open(sftp_port) && port_open(moto_port),
        "stack not listening"
    );

    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let status = child.wait().expect("wait");
    assert!(status.success(), "xecm-stack exit status {status}");
    assert!(
        !port_open(sftp_port),
        "sshd still listening after the stack stopped"
    );
    assert!(
        !port_open(moto_port),
        "moto still listening after the stack stopped"
    );
    assert!(!env_file.exists(), "env file left behind");
}

/// With a round trip asked for, the seeded secrets and `XECM_SFTP_PORT`
/// name the latency proxy, not sshd, and the adapter works through it;
/// `xecm-stack sftp-read` reads a file through the secret it finds in moto.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_trip_puts_the_proxy_in_the_secrets_and_sftp_read_goes_through_it() {
    let stack = LocalStack::start_with(xecm_stack::stack::StackOptions {
        sftp_rtt: Some(Duration::from_millis(10)),
        ..Default::default()
    })
    .await
    .expect("local stack");
    let proxy = stack.sftp_port();
    assert_ne!(proxy, stack.sshd.port());
    assert_eq!(
        stack.env_var("XECM_SFTP_PORT"),
        Some(proxy.to_string().as_str())
    );
    let settings = sftp_settings_from_moto(&stack).await;
    assert_eq!(settings.port, proxy);

    std::fs::write(stack.sshd.data_root().join("far.bin"), vec![7u8; 300_000]).expect("file");
    let out = Command::new(env!("CARGO_BIN_EXE_xecm-stack"))
        .args(["sftp-read", "far.bin"])
        .envs(stack.env().iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .expect("xecm-stack sftp-read");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.split_whitespace().next(), Some("300000"), "{text}");

    // A missing file is an error that names it.
    let out = Command::new(env!("CARGO_BIN_EXE_xecm-stack"))
        .args(["sftp-read", "nope.bin"])
        .envs(stack.env().iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .expect("xecm-stack sftp-read");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope.bin"));
}
