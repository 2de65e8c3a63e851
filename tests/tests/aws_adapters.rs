//! The AWS adapters against a real moto server: Secrets Manager (typed
//! secrets, cache TTL, errors naming secret and field) and EventBridge
//! (batched delivery observed through an SQS capture queue).

use std::time::Duration;

use secrecy::ExposeSecret;
use serde_json::json;
use xecm_core::adapters::aws::{EventBridgeSink, SecretsManagerSecrets};
use xecm_core::adapters::otcs::EcmSettings;
use xecm_core::adapters::sftp::{SettingsError, SftpSettings};
use xecm_core::ports::events::{DetailType, Event, EventSink, TransferEvent};
use xecm_core::ports::secrets::{Secrets, SecretsError, get_parsed};
use xecm_stack::moto::Moto;

#[tokio::test]
async fn typed_secrets_are_read_from_secrets_manager() {
    let moto = Moto::start().unwrap();
    let conf = moto.sdk_config().await;
    moto.put_json_secret(
        "xecm/ecm",
        &json!({"base_url":"http://127.0.0.1:8080","username":"admin","password":"admin-pw"}),
    )
    .await
    .unwrap();
    moto.put_json_secret(
        "xecm/sftp",
        &json!({"host":"127.0.0.1","port":2222,"username":"xecm","host_key_sha256":["SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU","SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"],"private_key":"-----BEGIN OPENSSH PRIVATE KEY-----\nx","passphrase":null,"password":null}),
    )
    .await
    .unwrap();
    let secrets = SecretsManagerSecrets::new(&conf);

    let ecm = get_parsed(&secrets, "xecm/ecm", EcmSettings::from_secret_json)
        .await
        .unwrap();
    assert_eq!(ecm.base_path, "/cs/cs");
    assert_eq!(ecm.password.expose_secret(), "admin-pw");

    let raw = secrets.get("xecm/sftp").await.unwrap();
    let sftp = SftpSettings::from_secret_json("xecm/sftp", raw.expose_secret()).unwrap();
    assert_eq!(sftp.port, 2222);
    assert_eq!(sftp.host_key_sha256.len(), 2);
}

#[tokio::test]
async fn secret_missing_field_names_secret_and_field() {
    let moto = Moto::start().unwrap();
    moto.put_json_secret(
        "xecm/sftp-broken",
        &json!({"host":"h","port":22,"host_key_sha256":["SHA256:x"],"password":"p"}),
    )
    .await
    .unwrap();
    let secrets = SecretsManagerSecrets::new(&moto.sdk_config().await);
    let raw = secrets.get("xecm/sftp-broken").await.unwrap();
    let err = SftpSettings::from_secret_json("xecm/sftp-broken", raw.expose_secret()).unwrap_err();
    match &err {
        SettingsError::Missing { secret_id, field } => {
            assert_eq!(
                (secret_id.as_str(), *field),
                ("xecm/sftp-broken", "username")
            );
        }
        other => panic!("expected Missing, got {other:?}"),
    }
    assert!(err.to_string().contains("xecm/sftp-broken") && err.to_string().contains("username"));
}

#[tokio::test]
async fn unknown_secret_is_not_found_and_not_json_is_reported() {
    let moto = Moto::start().unwrap();
    moto.put_secret_string("xecm/plain", "not json at all")
        .await
        .unwrap();
    let secrets = SecretsManagerSecrets::new(&moto.sdk_config().await);
    let err = secrets.get("xecm/nope").await.unwrap_err();
    assert!(
        matches!(err, SecretsError::NotFound { ref secret_id } if secret_id == "xecm/nope"),
        "{err:?}"
    );
    let err = get_parsed(&secrets, "xecm/plain", EcmSettings::from_secret_json)
        .await
        .unwrap_err();
    assert!(matches!(err, SecretsError::NotJson { .. }), "{err:?}");
    assert!(!err.to_string().contains("not json at all"));
}

#[tokio::test]
async fn secrets_are_cached_until_the_ttl_passes() {
    let moto = Moto::start().unwrap();
    moto.put_json_secret("xecm/webhook", &json!({"hmac_keys":["k1"]}))
        .await
        .unwrap();
    let secrets =
        SecretsManagerSecrets::new(&moto.sdk_config().await).with_ttl(Duration::from_millis(700));
    assert!(
        secrets
            .get("xecm/webhook")
            .await
            .unwrap()
            .expose_secret()
            .contains("k1")
    );

    // Rotated in Secrets Manager: the cached value is still served ...
    moto.put_json_secret("xecm/webhook", &json!({"hmac_keys":["k2","k1"]}))
        .await
        .unwrap();
    assert!(
        !secrets
            .get("xecm/webhook")
            .await
            .unwrap()
            .expose_secret()
            .contains("k2")
    );

    // ... until the TTL has passed.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        secrets
            .get("xecm/webhook")
            .await
            .unwrap()
            .expose_secret()
            .contains("k2")
    );
}

#[tokio::test]
async fn eventbridge_batch_of_25_events_is_delivered() {
    let moto = Moto::start().unwrap();
    let conf = moto.sdk_config().await;
    moto.create_event_bus("xecm-test").await.unwrap();
    let capture = moto.capture_events("xecm-test").await.unwrap();
    let sink = EventBridgeSink::new(&conf, "xecm-test");

    let events: Vec<Event> = (0..25)
        .map(|i| {
            Event::transfer(
                if i % 5 == 4 {
                    DetailType::TransferFailed
                } else {
                    DetailType::TransferIngested
                },
                &TransferEvent {
                    route: "acme-invoices".into(),
                    direction: "ingest".into(),
                    source_path: Some(format!("/inbound/inv-{i:02}.pdf")),
                    node_id: Some(10_000 + i),
                    size: Some(1024),
                    sha256: Some("ab".repeat(32)),
                    invocation_id: "req-25".into(),
                    ..Default::default()
                },
            )
        })
        .collect();
    let report = sink.publish(&events).await;
    assert_eq!(report.delivered, 25, "{report:?}");
    assert!(report.all_delivered(), "{report:?}");

    // Delivery is at least once: when a PutEvents attempt times out on a
    // loaded box, the SDK's retry can deliver a batch twice. So events are
    // read until 25 distinct ones arrived (generous deadline, returns early)
    // and compared as a set.
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let mut by_path: std::collections::BTreeMap<String, serde_json::Value> = Default::default();
    while by_path.len() < 25 && std::time::Instant::now() < deadline {
        for e in capture
            .receive(25 - by_path.len(), Duration::from_secs(5))
            .await
            .unwrap()
        {
            assert_eq!(e["source"], "xecm-sftp");
            let path = e["detail"]["source_path"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            by_path.insert(path, e);
        }
    }
    let expected: Vec<String> = (0..25)
        .map(|i| format!("/inbound/inv-{i:02}.pdf"))
        .collect();
    assert_eq!(by_path.keys().cloned().collect::<Vec<_>>(), expected);
    let failed = by_path
        .values()
        .filter(|e| e["detail-type"] == "Transfer Failed")
        .count();
    assert_eq!(failed, 5);
}

#[tokio::test]
async fn oversized_event_is_reported_not_sent() {
    let moto = Moto::start().unwrap();
    let conf = moto.sdk_config().await;
    moto.create_event_bus("xecm-big").await.unwrap();
    let sink = EventBridgeSink::new(&conf, "xecm-big");
    let big = Event {
        detail_type: DetailType::SnapshotCompleted,
        detail: json!({"blob": "x".repeat(300 * 1024)}),
    };
    let small = Event {
        detail_type: DetailType::SnapshotCompleted,
        detail: json!({"ok": true}),
    };
    let report = sink.publish(&[big, small]).await;
    assert_eq!(report.delivered, 1);
    assert_eq!(report.undelivered.len(), 1);
    assert_eq!(
        (
            report.undelivered[0].index,
            report.undelivered[0].error_code.as_str()
        ),
        (0, "EntryTooLarge")
    );
}

#[test]
fn moto_is_stopped_when_the_guard_drops() {
    let moto = Moto::start().unwrap();
    let port = moto.port();
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    drop(moto);
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "moto still listens on {port} after drop"
    );
}

#[tokio::test]
async fn events_to_a_missing_bus_are_reported_undelivered() {
    let moto = Moto::start().unwrap();
    let sink = EventBridgeSink::new(&moto.sdk_config().await, "no-such-bus");
    let events = vec![
        Event {
            detail_type: DetailType::TransferIngested,
            detail: json!({"n": 1}),
        };
        3
    ];
    let report = sink.publish(&events).await;
    assert_eq!(report.delivered, 0, "{report:?}");
    assert_eq!(
        report
            .undelivered
            .iter()
            .map(|u| u.index)
            .collect::<Vec<_>>(),
        [0, 1, 2]
    );
    let u = &report.undelivered[0];
    assert_eq!(u.error_code, "ResourceNotFoundException");
    assert!(u.message.contains("no-such-bus"), "{u:?}");
}
