//! The interop suite: one conformance sequence through the `FileStore`
//! port, for both SFTP clients (ssh2, russh) against six server
//! implementations (see `xecm_stack::sftp_servers`), each started on
//! 127.0.0.1 with its own host key and key authentication.
//!
//! Each test prints a line `interop: <server> × <client>: <result> in <s>`;
//! the table in `docs/interop.md` is made from these lines.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use bytes::Bytes;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use xecm_core::adapters::sftp::{SftpClient, SftpSettings, open_store};
use xecm_core::domain::paths::RemotePath;
use xecm_core::ports::file_store::{ByteStream, EntryKind, FileStore, FileStoreError, RenameMode};
use xecm_stack::sftp_servers::{ServerKind, SftpServer};

fn settings(server: &SftpServer, client: SftpClient, secret: &str) -> Result<SftpSettings> {
    let mut s = SftpSettings::from_secret_json("interop", secret)
        .and_then(|s| s.with_root(server.remote_root()))
        .map_err(|e| anyhow!("settings: {e}"))?;
    s.connect_timeout = Duration::from_secs(10);
    s.io_timeout = Duration::from_secs(30);
    s.client = client;
    Ok(s)
}

fn p(s: &Arc<dyn FileStore>, rel: &str) -> RemotePath {
    s.root()
        .resolve(rel)
        .unwrap_or_else(|e| panic!("path {rel}: {e}"))
}

/// `len` pseudo-random bytes (varied by `seed`) in 256 KiB chunks, and
/// their SHA-256.
fn body(len: usize, seed: u8) -> (ByteStream, String) {
    let data: Vec<u8> = (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1] ^ seed)
        .collect();
    let sha = hex::encode(Sha256::digest(&data));
    let chunks: Vec<Result<Bytes, FileStoreError>> = data
        .chunks(256 * 1024)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    (Box::pin(futures_util::stream::iter(chunks)), sha)
}

async fn read_sha(s: &Arc<dyn FileStore>, path: &RemotePath) -> Result<(u64, String)> {
    let mut h = s.open_read(path).await?;
    let mut sha = Sha256::new();
    let mut n = 0u64;
    while let Some(c) = h.body.next().await {
        let c = c?;
        n += c.len() as u64;
        sha.update(&c);
    }
    Ok((n, hex::encode(sha.finalize())))
}

async fn put(
    s: &Arc<dyn FileStore>,
    path: &RemotePath,
    len: usize,
    seed: u8,
    mode: RenameMode,
) -> Result<String, FileStoreError> {
    let (b, sha) = body(len, seed);
    let r = s.put_atomic(path, b, Some(len as u64), mode).await?;
    if r.sha256 != sha || r.size != len as u64 {
        return Err(FileStoreError::Failed {
            op: "put",
            path: path.to_string(),
            reason: format!("receipt {r:?} does not match the body"),
        });
    }
    Ok(sha)
}

/// Names in `dir` that are not dot-files (temporary files are dot-files).
async fn names(s: &Arc<dyn FileStore>, dir: &RemotePath) -> Result<Vec<String>> {
    let mut v: Vec<String> = s
        .list(dir)
        .await?
        .into_iter()
        .map(|e| e.display_name)
        .collect();
    v.sort();
    Ok(v)
}

/// Every entry of `dir`, dot-files included.
async fn all_names(s: &Arc<dyn FileStore>, dir: &RemotePath) -> Result<Vec<String>> {
    names(s, dir).await
}

/// Whether the server replaces an existing target on a plain SFTP rename;
/// there the store must refuse no-replace renames instead.
fn replaces_on_rename(kind: ServerKind) -> bool {
    kind == ServerKind::Paramiko
}

fn is_refused_as_unsafe(e: &FileStoreError) -> bool {
    matches!(e, FileStoreError::Unsupported { .. })
}

async fn step<T>(name: &str, f: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    let t0 = Instant::now();
    let r = f.await.with_context(|| format!("step {name:?}"));
    eprintln!("  {name}: {:.2} s", t0.elapsed().as_secs_f64());
    r
}

async fn conformance(kind: ServerKind, client: SftpClient) -> Result<()> {
    let t0 = Instant::now();
    let server = SftpServer::start(kind)?;
    let r = run_sequence(&server, client).await;
    let cname = match client {
        SftpClient::Ssh2 => "ssh2",
        SftpClient::Russh => "russh",
    };
    match &r {
        Ok(()) => eprintln!(
            "interop: {} × {cname}: pass in {:.1} s",
            kind.name(),
            t0.elapsed().as_secs_f64()
        ),
        Err(e) => eprintln!(
            "interop: {} × {cname}: FAIL in {:.1} s: {e:#}\n--- server log ---\n{}",
            kind.name(),
            t0.elapsed().as_secs_f64(),
            server
                .log()
                .chars()
                .rev()
                .take(4000)
                .collect::<String>()
                .chars()
                .rev()
                .collect::<String>()
        ),
    }
    r
}

async fn run_sequence(server: &SftpServer, client: SftpClient) -> Result<()> {
    let kind = server.kind();
    let secret = server.sftp_secret_json();

    step("a wrong pin is refused", async {
        let mut v: serde_json::Value = serde_json::from_str(&secret)?;
        v["host_key_sha256"] =
            serde_json::json!(["SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU"]);
        let err = open_store(settings(server, client, &v.to_string())?)?
            .check()
            .await
            .err()
            .ok_or_else(|| anyhow!("connected despite a wrong pin"))?;
        match err {
            FileStoreError::HostKeyMismatch { presented, .. } => {
                ensure!(
                    presented == server.host_key_fingerprint(),
                    "presented {presented}"
                );
                Ok(())
            }
            e => bail!("expected a host key mismatch, got {e}"),
        }
    })
    .await?;

    let s = open_store(settings(server, client, &secret)?)?;
    step("connect and pin", async {
        ensure!(s.check().await?.kind == EntryKind::Dir);
        Ok(())
    })
    .await?;

    let work = p(&s, "conf/deep/er");
    // A server whose rename replaces refuses first-delivery (no-replace)
    // puts; they are checked below.
    let create_mode = if replaces_on_rename(kind) {
        RenameMode::Replace
    } else {
        RenameMode::NoReplace
    };
    step("mkdir -p (twice)", async {
        s.mkdir_all(&work).await?;
        s.mkdir_all(&work).await?;
        ensure!(s.stat(&work).await?.kind == EntryKind::Dir);
        Ok(())
    })
    .await?;

    for (len, name) in [
        (1024 * 1024 + 7, "one-mib.bin"),
        (64 * 1024 * 1024, "64-mib.bin"),
    ] {
        let f = work.join(name.as_bytes())?;
        step(&format!("atomic put {len} bytes, read back"), async {
            let sha = put(&s, &f, len, 3, create_mode).await?;
            let (n, back) = read_sha(&s, &f).await?;
            ensure!(
                n == len as u64 && back == sha,
                "read back {n} bytes, {back}"
            );
            let m = s.stat(&f).await?;
            ensure!(
                m.kind == EntryKind::File && m.size == Some(len as u64),
                "{m:?}"
            );
            Ok(())
        })
        .await?;
    }
    step("no temporary file left", async {
        let v = all_names(&s, &work).await?;
        ensure!(v == ["64-mib.bin", "one-mib.bin"], "{v:?}");
        let local: Vec<_> = std::fs::read_dir(server.data_root().join("conf/deep/er"))?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        ensure!(local.is_empty(), "left behind: {local:?}");
        Ok(())
    })
    .await?;
    let f64m = work.join(b"64-mib.bin")?;
    let _ = s.remove(&f64m).await;

    step("a 2,000-entry listing", async {
        let dir = server.data_root().join("many");
        std::fs::create_dir(&dir)?;
        for i in 0..2000 {
            std::fs::write(dir.join(format!("entry-{i:04}.txt")), format!("{i}"))?;
        }
        let listed = s.list(&p(&s, "many")).await?;
        ensure!(listed.len() == 2000, "{} entries", listed.len());
        let mut seen: Vec<_> = listed.iter().map(|e| e.display_name.clone()).collect();
        seen.sort();
        seen.dedup();
        ensure!(seen.len() == 2000 && seen[0] == "entry-0000.txt");
        ensure!(
            listed
                .iter()
                .all(|e| e.meta.kind == EntryKind::File && e.meta.size.is_some())
        );
        Ok(())
    })
    .await?;

    step("many handles on one connection", async {
        // asyncssh's handles are binary counters: text handles break
        // after ~128 opens.
        for i in 0..300 {
            let f = p(&s, &format!("many/entry-{i:04}.txt"));
            let b = s.read_small(&f, 100).await?;
            ensure!(b == i.to_string().as_bytes(), "entry {i}: {b:?}");
        }
        Ok(())
    })
    .await?;

    let a = work.join(b"a.txt")?;
    let b = work.join(b"b.txt")?;
    step(
        "no-replace rename onto an existing file is refused",
        async {
            // Replace mode: a replacing server refuses no-replace puts.
            s.write_small(&a, Bytes::from_static(b"new"), RenameMode::Replace)
                .await?;
            s.write_small(&b, Bytes::from_static(b"old target"), RenameMode::Replace)
                .await?;
            match s.rename(&a, &b, RenameMode::NoReplace).await {
                Err(FileStoreError::AlreadyExists { .. }) if !replaces_on_rename(kind) => {}
                Err(e) if replaces_on_rename(kind) && is_refused_as_unsafe(&e) => {
                    ensure!(!e.is_retryable());
                }
                other => bail!("expected a refusal, got {other:?}"),
            }
            ensure!(
                &s.read_small(&b, 100).await?[..] == b"old target",
                "target changed"
            );
            ensure!(
                &s.read_small(&a, 100).await?[..] == b"new",
                "source changed"
            );
            Ok(())
        },
    )
    .await?;

    step("atomic put onto an existing file is refused", async {
        match put(&s, &b, 1000, 9, RenameMode::NoReplace).await {
            Err(FileStoreError::AlreadyExists { .. }) if !replaces_on_rename(kind) => {}
            Err(e) if replaces_on_rename(kind) && is_refused_as_unsafe(&e) => {}
            other => bail!("expected a refusal, got {other:?}"),
        }
        ensure!(
            &s.read_small(&b, 100).await?[..] == b"old target",
            "target changed"
        );
        let v = all_names(&s, &work).await?;
        ensure!(v == ["a.txt", "b.txt", "one-mib.bin"], "{v:?}");
        Ok(())
    })
    .await?;

    step("verify_no_replace tells the route up front", async {
        match s.verify_no_replace(&work).await {
            Ok(()) if !replaces_on_rename(kind) => Ok(()),
            Err(e) if replaces_on_rename(kind) && is_refused_as_unsafe(&e) => {
                ensure!(e.to_string().contains("replaces an existing target"), "{e}");
                Ok(())
            }
            other => bail!("unexpected: {other:?}"),
        }
    })
    .await?;

    step("replace rename", async {
        s.rename(&a, &b, RenameMode::Replace).await?;
        ensure!(&s.read_small(&b, 100).await?[..] == b"new");
        ensure!(s.try_stat(&a).await?.is_none(), "source still there");
        Ok(())
    })
    .await?;

    step("replace put", async {
        let sha = put(&s, &b, 4096, 5, RenameMode::Replace).await?;
        let (n, back) = read_sha(&s, &b).await?;
        ensure!(n == 4096 && back == sha);
        Ok(())
    })
    .await?;

    step("claim race: exactly one winner", async {
        let inbox = p(&s, "conf/inbox");
        let inflight = p(&s, "conf/inbox/.inflight");
        s.mkdir_all(&inflight).await?;
        for round in 0..3 {
            let src = inbox.join(format!("drop {round}.pdf").as_bytes())?;
            let dst = inflight.join(format!("drop {round}.pdf").as_bytes())?;
            std::fs::write(
                server
                    .data_root()
                    .join(format!("conf/inbox/drop {round}.pdf")),
                b"claim me",
            )?;
            // Separate stores: separate connections, as separate Lambdas.
            let mut tasks = Vec::new();
            for _ in 0..4 {
                let st = open_store(settings(server, client, &secret)?)?;
                let (src, dst) = (src.clone(), dst.clone());
                tasks.push(tokio::spawn(async move {
                    st.rename(&src, &dst, RenameMode::NoReplace).await
                }));
            }
            let mut wins = 0;
            for t in tasks {
                match t.await? {
                    Ok(()) => wins += 1,
                    Err(FileStoreError::NotFound { .. } | FileStoreError::AlreadyExists { .. })
                        if !replaces_on_rename(kind) => {}
                    Err(e) if replaces_on_rename(kind) && is_refused_as_unsafe(&e) => {}
                    Err(e) => bail!(
                        "round {round}: a loser was told {e} (retryable: {})",
                        e.is_retryable()
                    ),
                }
            }
            if replaces_on_rename(kind) {
                ensure!(
                    wins == 0,
                    "round {round}: {wins} claims on a replacing server"
                );
            } else {
                ensure!(wins == 1, "round {round}: {wins} winners");
                ensure!(&s.read_small(&dst, 100).await?[..] == b"claim me");
            }
        }
        Ok(())
    })
    .await?;

    step("UTF-8 names with spaces", async {
        let d = p(&s, "conf/Prüfberichte März");
        s.mkdir_all(&d).await?;
        let f = d.join("Bericht Nr 7 – Übersicht ä.pdf".as_bytes())?;
        let sha = put(&s, &f, 3000, 7, RenameMode::Replace).await?;
        let (_, back) = read_sha(&s, &f).await?;
        ensure!(back == sha);
        let v = names(&s, &d).await?;
        ensure!(v == ["Bericht Nr 7 – Übersicht ä.pdf"], "{v:?}");
        let g = d.join("zweiter Name ß.pdf".as_bytes())?;
        s.rename(&f, &g, RenameMode::Replace).await?;
        ensure!(s.stat(&g).await?.size == Some(3000));
        s.remove(&g).await?;
        s.remove_dir(&d).await?;
        Ok(())
    })
    .await?;

    step("remove and rmdir", async {
        let d = p(&s, "conf/rm");
        s.mkdir_all(&d).await?;
        let f = d.join(b"x")?;
        s.write_small(&f, Bytes::from_static(b"x"), RenameMode::Replace)
            .await?;
        ensure!(
            s.remove_dir(&d).await.is_err(),
            "a non-empty directory was removed"
        );
        s.remove(&f).await?;
        s.remove_dir(&d).await?;
        ensure!(s.try_stat(&d).await?.is_none());
        Ok(())
    })
    .await?;

    step("NotFound", async {
        let missing = p(&s, "conf/missing/nothing.bin");
        let nf = |r: Result<(), FileStoreError>, what: &str| match r {
            Err(FileStoreError::NotFound { .. }) => Ok(()),
            other => Err(anyhow!("{what}: expected NotFound, got {other:?}")),
        };
        nf(s.stat(&missing).await.map(|_| ()), "stat")?;
        nf(s.open_read(&missing).await.map(|_| ()), "open")?;
        nf(s.remove(&missing).await, "remove")?;
        nf(s.list(&missing).await.map(|_| ()), "list")?;
        let there = p(&s, "conf/deep/er/one-mib.bin");
        let gone = p(&s, "conf/deep/er/no-such-file");
        nf(
            s.rename(
                &gone,
                &there.with_name(b"t")?.expect("name"),
                RenameMode::Replace,
            )
            .await,
            "rename",
        )?;
        ensure!(s.try_stat(&there).await?.is_some());
        Ok(())
    })
    .await?;
    Ok(())
}

macro_rules! matrix {
    ($($name:ident: $kind:expr, $client:expr;)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() -> Result<()> {
                conformance($kind, $client).await
            }
        )*
    };
}

matrix! {
    openssh_ssh2: ServerKind::OpenSsh, SftpClient::Ssh2;
    openssh_russh: ServerKind::OpenSsh, SftpClient::Russh;
    proftpd_ssh2: ServerKind::ProFtpd, SftpClient::Ssh2;
    proftpd_russh: ServerKind::ProFtpd, SftpClient::Russh;
    dropbear_ssh2: ServerKind::Dropbear, SftpClient::Ssh2;
    dropbear_russh: ServerKind::Dropbear, SftpClient::Russh;
    tinysshd_ssh2: ServerKind::Tinysshd, SftpClient::Ssh2;
    tinysshd_russh: ServerKind::Tinysshd, SftpClient::Russh;
    asyncssh_ssh2: ServerKind::Asyncssh, SftpClient::Ssh2;
    asyncssh_russh: ServerKind::Asyncssh, SftpClient::Russh;
    paramiko_ssh2: ServerKind::Paramiko, SftpClient::Ssh2;
    paramiko_russh: ServerKind::Paramiko, SftpClient::Russh;
}
