//! The SFTP `FileStore` adapters (ssh2 and russh) against a real OpenSSH
//! sshd (one per test). Most tests run once per client, through the
//! `both_clients!` list at the end.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Result;
use bytes::Bytes;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use xecm_core::adapters::sftp::{SftpClient, SftpSettings, open_store};
use xecm_core::domain::paths::{RemotePath, RemoteRoot};
use xecm_core::ports::file_store::{ByteStream, EntryKind, FileStore, FileStoreError, RenameMode};
use xecm_stack::sshd::{KEY_PASSPHRASE, Sshd, SshdOptions};

fn settings_from(json: &str, client: SftpClient) -> SftpSettings {
    let mut s = SftpSettings::from_secret_json("test-sftp", json)
        .and_then(|s| s.with_root("/data"))
        .unwrap_or_else(|e| panic!("settings: {e}"));
    s.connect_timeout = Duration::from_secs(5);
    s.io_timeout = Duration::from_secs(20);
    s.client = client;
    s
}

fn store(sshd: &Sshd, client: SftpClient) -> Arc<dyn FileStore> {
    open_store(settings_from(&sshd.sftp_secret_json(), client)).expect("store")
}

fn with_key(sshd: &Sshd, pem: &str, passphrase: Option<&str>) -> String {
    let mut v: serde_json::Value = serde_json::from_str(&sshd.sftp_secret_json()).expect("json");
    v["private_key"] = pem.into();
    v["passphrase"] = passphrase.into();
    v.to_string()
}

fn p(store: &Arc<dyn FileStore>, rel: &str) -> RemotePath {
    store.root().resolve(rel).expect("path")
}

/// A body of `len` pseudo-random bytes in `chunk`-sized pieces, with its
/// SHA-256.
fn body(len: usize, chunk: usize, seed: u8) -> (ByteStream, String) {
    let data: Vec<u8> = (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1] ^ seed)
        .collect();
    let sha = hex::encode(Sha256::digest(&data));
    let chunks: Vec<Result<Bytes, FileStoreError>> = data
        .chunks(chunk.max(1))
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    (Box::pin(futures_util::stream::iter(chunks)), sha)
}

async fn read_all(
    store: &Arc<dyn FileStore>,
    path: &RemotePath,
) -> Result<Vec<u8>, FileStoreError> {
    let mut h = store.open_read(path).await?;
    let mut out = Vec::new();
    while let Some(c) = h.body.next().await {
        out.extend_from_slice(&c?);
    }
    Ok(out)
}

async fn key_auth_round_trips_a_file_with_matching_hash(client: SftpClient) -> Result<()> {
    let sshd = Sshd::start()?;
    let s = store(&sshd, client);
    s.check().await?;
    let target = p(&s, "out/deep/file.bin");
    s.mkdir_all(&target.parent().expect("parent")).await?;
    // Odd sizes and a small chunk size exercise the block coalescing.
    let len = 5 * 1024 * 1024 + 17;
    let (b, sha) = body(len, 8 * 1024 + 3, 1);
    let receipt = s
        .put_atomic(&target, b, Some(len as u64), RenameMode::NoReplace)
        .await?;
    assert_eq!(receipt.size, len as u64);
    assert_eq!(receipt.sha256, sha);
    assert!(receipt.synced, "OpenSSH supports fsync@openssh.com");
    let local = std::fs::read(sshd.data_root().join("out/deep/file.bin"))?;
    assert_eq!(hex::encode(Sha256::digest(&local)), sha);

    let meta = s.stat(&target).await?;
    assert_eq!(meta.kind, EntryKind::File);
    assert_eq!(meta.size, Some(len as u64));
    assert!(meta.mtime.is_some());

    let back = read_all(&s, &target).await?;
    assert_eq!(back.len(), len);
    assert_eq!(hex::encode(Sha256::digest(&back)), sha);

    // No temporary file left behind.
    let names: Vec<String> = s
        .list(&target.parent().expect("parent"))
        .await?
        .into_iter()
        .map(|e| e.display_name)
        .collect();
    assert_eq!(names, ["file.bin"]);
    Ok(())
}

async fn negotiates_the_fastest_safe_cipher_with_strict_kex(client: SftpClient) -> Result<()> {
    let sshd = Sshd::start_with(SshdOptions {
        log_level: Some("DEBUG3"),
        ..Default::default()
    })?;
    store(&sshd, client).check().await?;
    let log = sshd.log();
    // libssh2 is fastest with AES-CTR + EtM MAC, russh (aws-lc) with GCM.
    let expected = match client {
        SftpClient::Ssh2 => "client->server cipher: aes128-ctr MAC: hmac-sha2-256-etm@openssh.com",
        SftpClient::Russh => "client->server cipher: aes128-gcm@openssh.com MAC: <implicit>",
    };
    assert!(log.contains(expected), "{log}");
    assert!(log.contains("kex: algorithm: curve25519-sha256"), "{log}");
    // Terrapin (CVE-2023-48795) mitigation negotiated.
    assert!(log.contains("will use strict KEX ordering"), "{log}");
    Ok(())
}

async fn passphrase_protected_key_authenticates_and_a_wrong_passphrase_is_an_auth_error(
    client: SftpClient,
) -> Result<()> {
    let sshd = Sshd::start()?;
    let good = with_key(&sshd, sshd.encrypted_client_key(), Some(KEY_PASSPHRASE));
    let s = open_store(settings_from(&good, client))?;
    assert_eq!(s.check().await?.kind, EntryKind::Dir);

    let bad = with_key(&sshd, sshd.encrypted_client_key(), Some("Zq9-not-it"));
    let err = open_store(settings_from(&bad, client))?
        .check()
        .await
        .unwrap_err();
    assert!(matches!(err, FileStoreError::Auth { .. }), "{err}");
    assert!(!err.is_retryable());
    assert!(
        !err.to_string().contains("Zq9-not-it"),
        "passphrase leaked: {err}"
    );
    Ok(())
}

async fn rsa_key_in_legacy_pem_format_authenticates(client: SftpClient) -> Result<()> {
    let sshd = Sshd::start_with(SshdOptions {
        rsa_pem_key: true,
        ..Default::default()
    })?;
    let pem = sshd.rsa_pem_client_key().expect("rsa key").to_owned();
    assert!(pem.starts_with("-----BEGIN RSA PRIVATE KEY-----"));
    let s = open_store(settings_from(&with_key(&sshd, &pem, None), client))?;
    s.check().await?;
    Ok(())
}

async fn password_auth_works_for_the_password_account_only(client: SftpClient) -> Result<()> {
    let sshd = Sshd::start()?;
    let s = open_store(settings_from(&sshd.password_secret_json(), client))?;
    assert_eq!(s.check().await?.kind, EntryKind::Dir);

    let mut v: serde_json::Value = serde_json::from_str(&sshd.password_secret_json())?;
    v["password"] = "not-the-password".into();
    let err = open_store(settings_from(&v.to_string(), client))?
        .check()
        .await
        .unwrap_err();
    assert!(matches!(err, FileStoreError::Auth { .. }), "{err}");
    assert!(!err.to_string().contains("not-the-password"));

    // The key account has password authentication off.
    let mut v: serde_json::Value = serde_json::from_str(&sshd.password_secret_json())?;
    v["username"] = sshd.username().into();
    let err = open_store(settings_from(&v.to_string(), client))?
        .check()
        .await
        .unwrap_err();
    assert!(matches!(err, FileStoreError::Auth { .. }), "{err}");
    Ok(())
}

async fn host_key_mismatch_fails_closed_and_names_the_presented_key(
    client: SftpClient,
) -> Result<()> {
    let sshd = Sshd::start()?;
    let other = "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU";
    let mut v: serde_json::Value = serde_json::from_str(&sshd.sftp_secret_json())?;
    v["host_key_sha256"] = serde_json::json!([other]);
    let err = open_store(settings_from(&v.to_string(), client))?
        .check()
        .await
        .unwrap_err();
    match &err {
        FileStoreError::HostKeyMismatch { presented, .. } => {
            assert_eq!(presented, sshd.host_key_fingerprint());
        }
        e => panic!("expected a host key mismatch, got {e}"),
    }
    assert!(!err.is_retryable());
    // We never authenticated: sshd saw no auth attempt from us.
    assert!(
        !sshd.log().contains("Accepted publickey"),
        "authenticated despite mismatch:\n{}",
        sshd.log()
    );

    // Rotation: the old pin first, the current one second.
    v["host_key_sha256"] = serde_json::json!([other, sshd.host_key_fingerprint()]);
    open_store(settings_from(&v.to_string(), client))?
        .check()
        .await?;
    Ok(())
}

async fn lists_ten_thousand_entries_in_pages_with_metadata(client: SftpClient) -> Result<()> {
    let sshd = Sshd::start()?;
    let dir = sshd.data_root().join("big");
    std::fs::create_dir(&dir)?;
    for i in 0..10_000 {
        std::fs::write(dir.join(format!("f{i:05}.txt")), vec![b'x'; i % 7])?;
    }
    std::fs::create_dir(dir.join("sub"))?;
    let s = store(&sshd, client);
    let t0 = std::time::Instant::now();
    let mut pages = s.list_pages(&p(&s, "big")).await?;
    let mut all = Vec::new();
    let mut page_count = 0;
    while let Some(page) = pages.next().await {
        let page = page?;
        assert!(
            !page.is_empty() && page.len() <= 1000,
            "page of {}",
            page.len()
        );
        page_count += 1;
        all.extend(page);
    }
    let took = t0.elapsed();
    assert_eq!(all.len(), 10_001);
    assert!(page_count >= 11, "{page_count} pages");
    let mut names: Vec<_> = all.iter().map(|e| e.display_name.clone()).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), 10_001, "duplicates in listing");
    for e in &all {
        if e.display_name == "sub" {
            assert_eq!(e.meta.kind, EntryKind::Dir);
            continue;
        }
        let i: usize = e.display_name[1..6].parse()?;
        assert_eq!(e.meta.kind, EntryKind::File);
        assert_eq!(e.meta.size, Some((i % 7) as u64), "{}", e.display_name);
        assert_eq!(e.path, p(&s, &format!("big/{}", e.display_name)));
    }
    eprintln!("listed 10,001 entries in {took:?} (incl. connect)");
    Ok(())
}

async fn claim_rename_race_has_exactly_one_winner(client: SftpClient) -> Result<()> {
    let sshd = Sshd::start()?;
    // Two stores = two independent sessions, like two Lambda invocations.
    let a = store(&sshd, client);
    let b = store(&sshd, client);
    a.mkdir_all(&p(&a, "in/.inflight")).await?;
    for round in 0..20 {
        let src = p(&a, &format!("in/doc{round}.pdf"));
        let (body1, _) = body(1000, 1000, round as u8);
        a.put_atomic(&src, body1, Some(1000), RenameMode::NoReplace)
            .await?;
        let dst = p(&a, &format!("in/.inflight/doc{round}.pdf"));
        let (ra, rb) = tokio::join!(
            a.rename(&src, &dst, RenameMode::NoReplace),
            b.rename(&src, &dst, RenameMode::NoReplace)
        );
        let wins = [&ra, &rb].iter().filter(|r| r.is_ok()).count();
        assert_eq!(wins, 1, "round {round}: {ra:?} / {rb:?}");
        let loser = if ra.is_err() { ra } else { rb };
        assert!(
            matches!(
                loser,
                Err(FileStoreError::NotFound { .. } | FileStoreError::AlreadyExists { .. })
            ),
            "round {round}: loser got {loser:?}"
        );
        assert_eq!(a.stat(&dst).await?.size, Some(1000));
        assert!(a.try_stat(&src).await?.is_none());
    }
    Ok(())
}

async fn claim_race_has_one_winner_also_for_files_owned_by_another_user(
    client: SftpClient,
) -> Result<()> {
    // Partners upload as their own user. With fs.protected_hardlinks=1
    // OpenSSH cannot link() such a file and falls back to stat+rename; a
    // shared claim target must still leave exactly one winner.
    let sshd = Sshd::start()?;
    let a = store(&sshd, client);
    let b = store(&sshd, client);
    a.mkdir_all(&p(&a, "in/.inflight")).await?;
    for round in 0..20 {
        // Written by root, not by the SFTP user.
        std::fs::write(sshd.data_root().join(format!("in/up{round}.csv")), b"a,b\n")?;
        let src = p(&a, &format!("in/up{round}.csv"));
        let dst = p(&a, &format!("in/.inflight/up{round}.csv"));
        let (ra, rb) = tokio::join!(
            a.rename(&src, &dst, RenameMode::NoReplace),
            b.rename(&src, &dst, RenameMode::NoReplace)
        );
        assert_eq!(
            [&ra, &rb].iter().filter(|r| r.is_ok()).count(),
            1,
            "round {round}: {ra:?} / {rb:?}"
        );
        assert_eq!(a.stat(&dst).await?.size, Some(4));
    }
    Ok(())
}

async fn rename_no_replace_refuses_an_existing_target_and_replace_overwrites(
    client: SftpClient,
) -> Result<()> {
    let sshd = Sshd::start()?;
    let s = store(&sshd, client);
    let (x, y) = (p(&s, "x.txt"), p(&s, "y.txt"));
    s.write_small(&x, Bytes::from_static(b"new"), RenameMode::NoReplace)
        .await?;
    s.write_small(&y, Bytes::from_static(b"old!"), RenameMode::NoReplace)
        .await?;
    let err = s.rename(&x, &y, RenameMode::NoReplace).await.unwrap_err();
    assert!(matches!(err, FileStoreError::AlreadyExists { .. }), "{err}");
    assert_eq!(&s.read_small(&y, 100).await?[..], b"old!");
    assert_eq!(&s.read_small(&x, 100).await?[..], b"new");

    s.rename(&x, &y, RenameMode::Replace).await?;
    assert_eq!(&s.read_small(&y, 100).await?[..], b"new");
    assert!(s.try_stat(&x).await?.is_none());
    // The aside copy is gone too.
    let names: Vec<_> = s
        .list(&s.root().path())
        .await?
        .into_iter()
        .map(|e| e.display_name)
        .collect();
    assert_eq!(names, ["y.txt"]);

    // An overwriting put, and a refused one.
    let err = s
        .write_small(&y, Bytes::from_static(b"v3"), RenameMode::NoReplace)
        .await
        .unwrap_err();
    assert!(matches!(err, FileStoreError::AlreadyExists { .. }), "{err}");
    s.write_small(&y, Bytes::from_static(b"v3"), RenameMode::Replace)
        .await?;
    assert_eq!(&s.read_small(&y, 100).await?[..], b"v3");
    assert_eq!(s.list(&s.root().path()).await?.len(), 1, "temp files left");

    let err = s.read_small(&y, 1).await.unwrap_err();
    assert!(matches!(err, FileStoreError::TooLarge { .. }), "{err}");
    let err = s.rename(&x, &y, RenameMode::NoReplace).await.unwrap_err();
    assert!(matches!(err, FileStoreError::NotFound { .. }), "{err}");
    s.remove(&y).await?;
    let err = s.remove(&y).await.unwrap_err();
    assert!(matches!(err, FileStoreError::NotFound { .. }), "{err}");
    Ok(())
}

async fn atomic_put_is_never_visible_half_written_to_a_concurrent_lister(
    client: SftpClient,
) -> Result<()> {
    let sshd = Sshd::start()?;
    let s = store(&sshd, client);
    let lister = store(&sshd, client);
    s.mkdir_all(&p(&s, "drop")).await?;
    let target = p(&s, "drop/report.csv");
    let len: usize = 24 * 1024 * 1024;

    // A slow producer: 96 chunks of 256 KiB with pauses, so the write takes
    // long enough for many listings to happen during it.
    let (fast, sha) = body(len, 256 * 1024, 7);
    let slow: ByteStream = Box::pin(fast.then(|c| async move {
        tokio::time::sleep(Duration::from_millis(5)).await;
        c
    }));

    let done = Arc::new(AtomicBool::new(false));
    let watch = {
        let (lister, done, dir) = (Arc::clone(&lister), Arc::clone(&done), p(&s, "drop"));
        tokio::spawn(async move {
            let (mut listings, mut saw_part, mut saw_final) = (0, false, false);
            while !done.load(Ordering::SeqCst) {
                for e in lister.list(&dir).await? {
                    if e.display_name == "report.csv" {
                        saw_final = true;
                        assert_eq!(e.meta.size, Some(len as u64), "half-written file visible");
                    } else {
                        assert!(
                            e.display_name.starts_with(".report.csv."),
                            "{}",
                            e.display_name
                        );
                        saw_part = true;
                    }
                }
                listings += 1;
            }
            anyhow::Ok((listings, saw_part, saw_final))
        })
    };
    let receipt = s
        .put_atomic(&target, slow, Some(len as u64), RenameMode::NoReplace)
        .await?;
    done.store(true, Ordering::SeqCst);
    let (listings, saw_part, _) = watch.await??;
    assert_eq!(receipt.sha256, sha);
    assert!(listings > 5, "only {listings} listings during the put");
    assert!(
        saw_part,
        "the lister never saw the temporary file: test proves nothing"
    );
    assert_eq!(s.stat(&target).await?.size, Some(len as u64));
    Ok(())
}

async fn failed_puts_leave_neither_target_nor_temporary_file(client: SftpClient) -> Result<()> {
    let sshd = Sshd::start()?;
    let s = store(&sshd, client);
    let target = p(&s, "short.bin");

    // Fewer bytes than announced.
    let (b, _) = body(1000, 100, 1);
    let err = s
        .put_atomic(&target, b, Some(2000), RenameMode::NoReplace)
        .await
        .unwrap_err();
    assert!(matches!(err, FileStoreError::SizeMismatch { .. }), "{err}");

    // More bytes than announced.
    let (b, _) = body(3000, 100, 1);
    let err = s
        .put_atomic(&target, b, Some(2000), RenameMode::NoReplace)
        .await
        .unwrap_err();
    assert!(matches!(err, FileStoreError::SizeMismatch { .. }), "{err}");

    // The source fails midway.
    let failing: ByteStream = Box::pin(futures_util::stream::iter(vec![
        Ok(Bytes::from(vec![1u8; 100_000])),
        Err(FileStoreError::Transient {
            op: "download",
            path: "ecm:1234".into(),
            reason: "connection reset".into(),
        }),
    ]));
    let err = s
        .put_atomic(&target, failing, None, RenameMode::NoReplace)
        .await
        .unwrap_err();
    assert!(matches!(err, FileStoreError::Source { .. }), "{err}");

    assert!(s.list(&s.root().path()).await?.is_empty(), "leftovers");
    // The store still works after the failures.
    s.write_small(&target, Bytes::from_static(b"ok"), RenameMode::NoReplace)
        .await?;
    Ok(())
}

async fn path_escapes_are_refused_before_reaching_the_server(client: SftpClient) -> Result<()> {
    let sshd = Sshd::start()?;
    let s = store(&sshd, client);
    let root = s.root().clone();
    assert!(root.resolve("../etc/passwd").is_err());
    assert!(root.resolve("/etc/passwd").is_err());
    assert!(root.resolve("in/../../etc").is_err());
    assert!(root.resolve("a\0b").is_err());
    assert!(root.path().join("../x").is_err());
    assert!(root.path().join("a/b").is_err());

    // A path checked against another root is refused by this store.
    let wider = RemoteRoot::parse("/")?.resolve("/etc/passwd")?;
    let err = s.stat(&wider).await.unwrap_err();
    assert!(matches!(err, FileStoreError::InvalidPath(_)), "{err}");
    let err = s.remove(&wider).await.unwrap_err();
    assert!(matches!(err, FileStoreError::InvalidPath(_)), "{err}");

    // A narrower store cannot be steered to its parent.
    std::fs::create_dir(sshd.data_root().join("partner"))?;
    let narrow = open_store(
        settings_from(&sshd.sftp_secret_json(), client)
            .with_root("/data/partner")
            .expect("root"),
    )?;
    let sibling = root.resolve("other.txt")?;
    let err = narrow.stat(&sibling).await.unwrap_err();
    assert!(matches!(err, FileStoreError::InvalidPath(_)), "{err}");
    Ok(())
}

async fn missing_files_and_directories_are_not_found_and_mkdir_is_idempotent(
    client: SftpClient,
) -> Result<()> {
    let sshd = Sshd::start()?;
    let s = store(&sshd, client);
    let err = s.stat(&p(&s, "nope")).await.unwrap_err();
    assert!(matches!(err, FileStoreError::NotFound { .. }), "{err}");
    let err = s.open_read(&p(&s, "nope")).await.unwrap_err();
    assert!(matches!(err, FileStoreError::NotFound { .. }), "{err}");
    let err = s.list(&p(&s, "nope")).await.unwrap_err();
    assert!(matches!(err, FileStoreError::NotFound { .. }), "{err}");

    let d = p(&s, "a/b/c");
    s.mkdir_all(&d).await?;
    s.mkdir_all(&d).await?;
    assert_eq!(s.stat(&d).await?.kind, EntryKind::Dir);
    // Deepest first: a new chain below an existing level, a new leaf.
    s.mkdir_all(&p(&s, "a/x/y/z")).await?;
    s.mkdir_all(&p(&s, "a/b/c/d")).await?;
    for dir in ["a/x", "a/x/y", "a/x/y/z", "a/b/c/d"] {
        assert_eq!(s.stat(&p(&s, dir)).await?.kind, EntryKind::Dir, "{dir}");
    }
    s.remove_dir(&p(&s, "a/b/c/d")).await?;
    s.write_small(
        &p(&s, "a/file"),
        Bytes::from_static(b"x"),
        RenameMode::NoReplace,
    )
    .await?;
    let err = s.mkdir_all(&p(&s, "a/file/sub")).await.unwrap_err();
    assert!(matches!(err, FileStoreError::WrongKind { .. }), "{err}");
    // rmdir removes empty directories only.
    let err = s.remove_dir(&p(&s, "a/b")).await.unwrap_err();
    assert!(!matches!(err, FileStoreError::NotFound { .. }), "{err}");
    assert_eq!(s.stat(&p(&s, "a/b/c")).await?.kind, EntryKind::Dir);
    s.remove_dir(&p(&s, "a/b/c")).await?;
    s.remove_dir(&p(&s, "a/b")).await?;
    assert!(s.try_stat(&p(&s, "a/b")).await?.is_none());
    let err = s.remove_dir(&p(&s, "a/b")).await.unwrap_err();
    assert!(matches!(err, FileStoreError::NotFound { .. }), "{err}");
    // The chroot keeps us out of the root-owned parent.
    let err = open_store(
        settings_from(&sshd.sftp_secret_json(), client)
            .with_root("/")
            .expect("root"),
    )?
    .mkdir_all(&RemoteRoot::parse("/")?.resolve("/forbidden")?)
    .await
    .unwrap_err();
    assert!(
        matches!(err, FileStoreError::PermissionDenied { .. }),
        "{err}"
    );
    Ok(())
}

async fn a_dropped_connection_is_reopened_transparently_for_idempotent_calls(
    client: SftpClient,
) -> Result<()> {
    let sshd = Sshd::start()?;
    let s = store(&sshd, client);
    s.check().await?;
    sshd.kill_connections();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The pooled session is dead; stat reconnects and succeeds.
    assert_eq!(s.check().await?.kind, EntryKind::Dir);
    Ok(())
}

async fn a_session_that_died_while_idle_is_replaced_before_a_rename(
    client: SftpClient,
) -> Result<()> {
    let sshd = Sshd::start()?;
    let mut settings = settings_from(&sshd.sftp_secret_json(), client);
    settings.max_sessions = 1;
    settings.idle_probe_after = Duration::from_millis(50);
    let s = open_store(settings)?;
    s.write_small(&p(&s, "a"), Bytes::from_static(b"x"), RenameMode::NoReplace)
        .await?;
    sshd.kill_connections();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Renames are never retried blindly; the idle probe finds the dead
    // session and reconnects first.
    s.rename(&p(&s, "a"), &p(&s, "b"), RenameMode::NoReplace)
        .await?;
    assert!(sshd.data_root().join("b").exists());
    Ok(())
}

async fn parallel_reads_use_parallel_sessions(client: SftpClient) -> Result<()> {
    let sshd = Sshd::start()?;
    let s = store(&sshd, client);
    let mut shas = Vec::new();
    for i in 0..4u8 {
        let (b, sha) = body(3 * 1024 * 1024, 1 << 20, i);
        s.put_atomic(&p(&s, &format!("f{i}")), b, None, RenameMode::NoReplace)
            .await?;
        shas.push(sha);
    }
    let mut tasks = Vec::new();
    for i in 0..4u8 {
        let s = Arc::clone(&s);
        tasks.push(tokio::spawn(async move {
            let path = s.root().resolve(&format!("f{i}"))?;
            let data = read_all(&s, &path).await?;
            anyhow::Ok(hex::encode(Sha256::digest(&data)))
        }));
    }
    for (t, sha) in tasks.into_iter().zip(shas) {
        assert_eq!(t.await??, sha);
    }
    // Four transfers at once means four sessions were opened.
    let accepted = sshd.log().matches("Accepted publickey").count();
    assert!(accepted >= 2, "only {accepted} sessions:\n{}", sshd.log());
    Ok(())
}

/// A put whose caller gives up (drops the future: a timeout, a failed
/// sibling in `try_join!`) while the body is still coming never appears
/// under its name, even with no announced length to check against.
async fn an_abandoned_put_never_appears_under_its_name(client: SftpClient) -> Result<()> {
    let sshd = Sshd::start()?;
    let s = store(&sshd, client);
    let target = p(&s, "abandoned.bin");
    let started: ByteStream = Box::pin(
        futures_util::stream::iter(
            (0..3).map(|_| Ok::<_, FileStoreError>(Bytes::from(vec![5u8; 1024 * 1024]))),
        )
        .chain(futures_util::stream::pending()),
    );
    let r = tokio::time::timeout(
        Duration::from_millis(500),
        s.put_atomic(&target, started, None, RenameMode::NoReplace),
    )
    .await;
    assert!(r.is_err(), "the put should still be waiting for its body");
    // The client notices the abandoned body and removes the temporary file
    // in the background.
    let root = sshd.data_root();
    let mut left = Vec::new();
    for _ in 0..100 {
        left = std::fs::read_dir(&root)?.collect::<Result<_, _>>()?;
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !root.join("abandoned.bin").exists(),
        "a partial body was renamed into place"
    );
    assert!(left.is_empty(), "leftovers: {left:?}");
    // The store still works.
    put_small(&s, "after.bin").await?;
    Ok(())
}

/// One call after another stays on one connection however many sessions
/// the store may open: each call goes to the session that was used last,
/// not to one that has yet to connect (a handshake and a login on the
/// partner's server per idle session, at every warm invocation).
async fn sequential_calls_reuse_one_connection(client: SftpClient) -> Result<()> {
    let sshd = Sshd::start()?;
    let mut settings = settings_from(&sshd.sftp_secret_json(), client);
    settings.max_sessions = 4;
    let s = open_store(settings)?;
    for i in 0..6 {
        let dir = p(&s, &format!("seq{i}"));
        s.mkdir_all(&dir).await?;
        put_small(&s, &format!("seq{i}/f.bin")).await?;
        assert_eq!(s.list(&dir).await?.len(), 1);
        let data = read_all(&s, &p(&s, &format!("seq{i}/f.bin"))).await?;
        assert_eq!(data.len(), 1024 * 1024);
        s.stat(&p(&s, &format!("seq{i}/f.bin"))).await?;
    }
    let log = sshd.log();
    assert_eq!(log.matches("Accepted publickey").count(), 1, "{log}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sshd_and_its_session_processes_die_when_a_test_panics() -> Result<()> {
    let (tx, rx) = std::sync::mpsc::channel();
    let t = std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let sshd = Sshd::start().expect("sshd");
        let s = store(&sshd, SftpClient::Ssh2);
        rt.block_on(s.check()).expect("connect");
        // The listener and the per-connection child (still connected).
        let pids: Vec<u32> = std::fs::read_dir("/proc")
            .expect("proc")
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|p| {
                std::fs::read_to_string(format!("/proc/{p}/stat"))
                    .ok()
                    .and_then(|st| {
                        let rest = st.rsplit_once(')')?.1.to_owned();
                        rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                    })
                    == sshd.pid()
            })
            .chain(sshd.pid())
            .collect();
        tx.send(pids).expect("send");
        panic!("simulated test failure");
    });
    assert!(t.join().is_err());
    let pids = rx.recv()?;
    assert!(pids.len() >= 2, "expected a session child too: {pids:?}");
    for pid in pids {
        let alive = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.contains(") Z "))
            .unwrap_or(false);
        assert!(!alive, "process {pid} survived the panic");
    }
    Ok(())
}

async fn names_that_are_not_utf8_are_listed_and_addressable(client: SftpClient) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let sshd = Sshd::start()?;
    let raw: &[u8] = b"r\xe9sum\xe9\t1.pdf";
    std::fs::write(
        sshd.data_root().join(std::ffi::OsStr::from_bytes(raw)),
        b"12345",
    )?;
    let s = store(&sshd, client);
    let entries = s.list(&s.root().path()).await?;
    assert_eq!(entries.len(), 1);
    let e = &entries[0];
    assert_eq!(e.name, raw);
    assert!(e.display_name.contains('\u{fffd}'), "{}", e.display_name);
    assert_eq!(s.stat(&e.path).await?.size, Some(5));
    assert_eq!(&s.read_small(&e.path, 100).await?[..], b"12345");
    // Claimable like any other name (russh used to refuse these).
    let to = s.root().path().join(b"claimed \xff.pdf")?;
    s.rename(&e.path, &to, RenameMode::NoReplace).await?;
    assert_eq!(s.stat(&to).await?.size, Some(5));
    Ok(())
}

async fn put_small(s: &Arc<dyn FileStore>, rel: &str) -> Result<()> {
    let (b, sha) = body(1024 * 1024, 64 * 1024, 9);
    let r = s
        .put_atomic(&p(s, rel), b, Some(1024 * 1024), RenameMode::NoReplace)
        .await?;
    assert_eq!(r.sha256, sha);
    Ok(())
}

/// Settings for `sshd` reached through a proxy adding a 5 ms round trip
/// (a "distant" server); the proxy lives as long as the returned guard.
async fn distant(
    sshd: &Sshd,
    client: SftpClient,
) -> Result<(SftpSettings, xecm_stack::latency_proxy::LatencyProxy)> {
    let proxy = xecm_stack::latency_proxy::LatencyProxy::start(
        std::net::SocketAddr::from(([127, 0, 0, 1], sshd.port())),
        Duration::from_millis(5),
    )
    .await?;
    let mut v: serde_json::Value = serde_json::from_str(&sshd.sftp_secret_json())?;
    v["port"] = proxy.port().into();
    Ok((settings_from(&v.to_string(), client), proxy))
}

/// A large put to a distant server (behind a 5 ms RTT proxy) goes over
/// several SFTP channels of one connection, writing the same temporary
/// file; the result is whole and exact, and sshd saw several sessions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn russh_spreads_a_large_put_to_a_distant_server_over_several_channels() -> Result<()> {
    let sshd = Sshd::start()?;
    let (settings, _proxy) = distant(&sshd, SftpClient::Russh).await?;
    let s = open_store(settings)?;
    let len = 80 * 1024 * 1024;
    let (b, sha) = body(len, 1024 * 1024, 7);
    let target = p(&s, "far/big.bin");
    s.mkdir_all(&p(&s, "far")).await?;
    let r = s
        .put_atomic(&target, b, Some(len as u64), RenameMode::NoReplace)
        .await?;
    assert_eq!((r.size, r.sha256.as_str()), (len as u64, sha.as_str()));
    let on_disk = std::fs::read(sshd.data_root().join("far/big.bin"))?;
    assert_eq!(on_disk.len(), len);
    assert_eq!(hex::encode(Sha256::digest(&on_disk)), sha);
    // Nothing left under a temporary name.
    let names: Vec<_> = s
        .list(&p(&s, "far"))
        .await?
        .into_iter()
        .map(|e| e.display_name)
        .collect();
    assert_eq!(names, ["big.bin"]);
    // One connection, three SFTP sessions on it (ids 0, 1 and 2).
    let log = sshd.log();
    assert_eq!(log.matches("Accepted publickey").count(), 1, "{log}");
    for id in ["id 0", "id 1", "id 2"] {
        assert!(
            log.lines()
                .any(|l| l.contains("Starting session: forced-command") && l.ends_with(id)),
            "no SFTP session {id} in the sshd log:\n{log}"
        );
    }
    // A small put to the same server stays on one channel.
    put_small(&s, "far/small.bin").await?;
    assert!(!sshd.log().lines().any(|l| l.ends_with("id 3")));
    // The extra channels were closed after the put (no leak towards the
    // server's MaxSessions).
    let closed = |log: &str| {
        ["id 1", "id 2"].iter().all(|id| {
            log.lines()
                .any(|l| l.starts_with("Close session") && l.ends_with(id))
        })
    };
    for _ in 0..50 {
        if closed(&sshd.log()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(closed(&sshd.log()), "{}", sshd.log());
    Ok(())
}

/// The ssh2 client spreads a large put to a distant server (behind a 5 ms
/// RTT proxy) over four connections writing stripes of the same temporary
/// file; the result is whole and exact, and a small put stays on one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh2_stripes_a_large_put_to_a_distant_server_over_several_connections() -> Result<()> {
    let sshd = Sshd::start()?;
    let (mut settings, _proxy) = distant(&sshd, SftpClient::Ssh2).await?;
    // One session thread, so every connection counted below is the put's.
    settings.max_sessions = 1;
    let s = open_store(settings)?;
    s.mkdir_all(&p(&s, "far")).await?;
    let before = sshd.log().matches("Accepted publickey").count();
    // Not a multiple of the stripe: the last stripe is a short one.
    let len = 80 * 1024 * 1024 + 12345;
    let (b, sha) = body(len, 1024 * 1024, 7);
    let target = p(&s, "far/big.bin");
    let r = s
        .put_atomic(&target, b, Some(len as u64), RenameMode::NoReplace)
        .await?;
    assert_eq!((r.size, r.sha256.as_str()), (len as u64, sha.as_str()));
    // Three more connections were opened for it (the put ran on the
    // connection the mkdir opened).
    let log = sshd.log();
    assert_eq!(
        log.matches("Accepted publickey").count() - before,
        3,
        "{log}"
    );
    let on_disk = std::fs::read(sshd.data_root().join("far/big.bin"))?;
    assert_eq!(on_disk.len(), len);
    assert_eq!(hex::encode(Sha256::digest(&on_disk)), sha);
    // Nothing left under a temporary name.
    let names: Vec<_> = std::fs::read_dir(sshd.data_root().join("far"))?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()?;
    assert_eq!(names, ["big.bin"]);
    let before = sshd.log().matches("Accepted publickey").count();
    // A small put to the same server stays on the one connection.
    put_small(&s, "far/small.bin").await?;
    let log = sshd.log();
    assert_eq!(log.matches("Accepted publickey").count(), before, "{log}");
    Ok(())
}

/// A striped put that fails leaves neither the target nor its temporary
/// file, and says why: first when the source fails midway, then when one of
/// the extra connections drops while the others write on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh2_striped_put_that_fails_leaves_nothing_behind() -> Result<()> {
    let sshd = Arc::new(Sshd::start()?);
    let (mut settings, _proxy) = distant(&sshd, SftpClient::Ssh2).await?;
    settings.max_sessions = 1;
    let s = open_store(settings)?;
    s.mkdir_all(&p(&s, "far")).await?;
    let target = p(&s, "far/big.bin");
    let len: u64 = 80 * 1024 * 1024;
    fn mib(i: u64) -> Result<Bytes, FileStoreError> {
        Ok(Bytes::from(vec![(i % 251) as u8; 1024 * 1024]))
    }

    // The source fails after 30 MiB of the announced 80.
    let failing: ByteStream = Box::pin(futures_util::stream::iter((0..31u64).map(|i| {
        if i < 30 {
            mib(i)
        } else {
            Err(FileStoreError::Transient {
                op: "download",
                path: "ecm:1234".into(),
                reason: "connection reset".into(),
            })
        }
    })));
    let err = s
        .put_atomic(&target, failing, Some(len), RenameMode::NoReplace)
        .await
        .unwrap_err();
    assert!(matches!(err, FileStoreError::Source { .. }), "{err}");
    assert!(s.list(&p(&s, "far")).await?.is_empty(), "leftovers");

    // The newest connection (an extra one: the put runs on the oldest) is
    // killed once all three extra ones have joined, 20 MiB in.
    let before = sshd.log().matches("Accepted publickey").count();
    let killer = sshd.clone();
    let killed = Arc::new(AtomicBool::new(false));
    let k = killed.clone();
    let body: ByteStream = Box::pin(futures_util::stream::unfold(0u64, move |i| {
        let (sshd, killed) = (killer.clone(), k.clone());
        async move {
            if i == 80 {
                return None;
            }
            if i == 20 {
                // Authenticated is not enough: under load the newest
                // connection may not have opened the temporary file yet,
                // and one that dies before it does is rightly left out.
                for _ in 0..1000 {
                    if sshd.log().matches("Accepted publickey").count() >= before + 3
                        && sshd.newest_connection_has_open(".part")
                    {
                        killed.store(sshd.kill_newest_connection(), Ordering::SeqCst);
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            Some((mib(i), i + 1))
        }
    }));
    let r = s
        .put_atomic(&target, body, Some(len), RenameMode::NoReplace)
        .await;
    assert!(killed.load(Ordering::SeqCst), "no extra connection to kill");
    let err = r.unwrap_err();
    // The dropped connection's own error, not this thread's "the parallel
    // writers stopped".
    assert!(
        err.to_string().contains(".part") && !err.to_string().contains("stopped"),
        "the error names the temporary file and the cause: {err}"
    );
    assert!(s.list(&p(&s, "far")).await?.is_empty(), "leftovers");
    // The store still works.
    put_small(&s, "far/small.bin").await?;
    Ok(())
}

/// Runs each listed test once per SSH client.
macro_rules! both_clients {
    ($($name:ident),* $(,)?) => {
        mod with_ssh2 {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() -> anyhow::Result<()> {
                    super::$name(xecm_core::adapters::sftp::SftpClient::Ssh2).await
                }
            )*
        }
        mod with_russh {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() -> anyhow::Result<()> {
                    super::$name(xecm_core::adapters::sftp::SftpClient::Russh).await
                }
            )*
        }
    };
}

both_clients!(
    key_auth_round_trips_a_file_with_matching_hash,
    negotiates_the_fastest_safe_cipher_with_strict_kex,
    passphrase_protected_key_authenticates_and_a_wrong_passphrase_is_an_auth_error,
    rsa_key_in_legacy_pem_format_authenticates,
    password_auth_works_for_the_password_account_only,
    host_key_mismatch_fails_closed_and_names_the_presented_key,
    lists_ten_thousand_entries_in_pages_with_metadata,
    claim_rename_race_has_exactly_one_winner,
    claim_race_has_one_winner_also_for_files_owned_by_another_user,
    rename_no_replace_refuses_an_existing_target_and_replace_overwrites,
    atomic_put_is_never_visible_half_written_to_a_concurrent_lister,
    failed_puts_leave_neither_target_nor_temporary_file,
    path_escapes_are_refused_before_reaching_the_server,
    missing_files_and_directories_are_not_found_and_mkdir_is_idempotent,
    a_dropped_connection_is_reopened_transparently_for_idempotent_calls,
    a_session_that_died_while_idle_is_replaced_before_a_rename,
    parallel_reads_use_parallel_sessions,
    sequential_calls_reuse_one_connection,
    an_abandoned_put_never_appears_under_its_name,
    names_that_are_not_utf8_are_listed_and_addressable,
);
