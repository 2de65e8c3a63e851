//! Delivering one document: history verdict, lease, transfer or the
//! identical-copy path, sidecar, event, history.

use super::*;

/// The `<file>.sha256` sidecar beside a delivered file (replaced if there).
pub(crate) async fn write_sidecar(
    store: &dyn FileStore,
    dir: &RemotePath,
    d: &Delivery,
    sha256: &str,
) -> Result<(), ExportError> {
    let name = format!("{}.sha256", d.file_name);
    let side = dir.join(name.as_bytes())?;
    let text = format!("{}  {}\n", sha256, d.file_name);
    store
        .write_small(&side, Bytes::from(text), RenameMode::Replace)
        .await?;
    Ok(())
}

/// Delivers one planned document; `resend` forces `Replace` and skips the
/// idempotency checks (history, "never older").
///
/// 1. the history read with the node's facts answers a duplicate or a
///    superseded version at once, without reaching the destination;
/// 2. a lease per (route, destination, node) on the SFTP side: an
///    overlapping delivery of the same node to the same destination is
///    answered "in progress" (retryable) without a transfer;
/// 3. under the lease the history is read again (the other delivery may
///    have finished between the first read and the lease);
/// 4. the transfer, or the identical-copy path when the bytes are already
///    there; sidecar, `Document Exported`, history; the lease is released.
pub(crate) async fn deliver(
    cx: &ExportContext<'_>,
    d: &Delivery,
    applied: &[AppliedCategory],
    resend: bool,
    event_id: Option<&str>,
) -> Result<ExportOutcome, ExportError> {
    let started = Instant::now();
    let to = destination_key(&d.route, &d.destination);
    if !resend
        && let Some(out) = settled(d, &history_of(cx.routes, applied).verdict(&to, d.version))
    {
        return Ok(out);
    }
    cx.check_deadline(|| format!("delivering node {} to {}", d.node_id, d.remote_path()))?;
    let id = node_id(d.node_id)?;
    let store = cx.destinations.store(&d.sftp_secret).await?;
    let dir = remote_path(store.as_ref(), &d.directory)?;
    let target = dir.join(d.file_name.as_bytes())?;
    store.mkdir_all(&dir).await?;
    let lease = match acquire_lease(cx, store.as_ref(), &dir, d).await? {
        LeaseOutcome::Held(l) => l,
        LeaseOutcome::Busy(other) => {
            tracing::info!(key = %d.idempotency_key, holder = %other.holder, version = other.version, "another delivery of this node to this destination is in progress");
            return Err(ExportError::InProgress {
                node_id: d.node_id,
                version: other.version,
                destination: to,
                expires_at: other.expires_at,
            });
        }
    };
    let leased = Leased {
        store: store.as_ref(),
        dir: &dir,
        target: &target,
        lease: &lease,
    };
    let result = deliver_leased(cx, d, id, resend, event_id, started, &leased).await;
    // A fault switch stands for a crash: nothing after it runs, the lease
    // stays until it expires.
    if !matches!(result, Err(ExportError::Fault { .. })) {
        release_lease(store.as_ref(), &lease).await;
    }
    result
}

/// The outcome the history already settles (a duplicate, or a version
/// older than the one delivered), `None` to deliver.
pub(crate) fn settled(d: &Delivery, verdict: &HistoryVerdict) -> Option<ExportOutcome> {
    let report = |r: &DeliveryRecord| DeliveryReport {
        route: d.route.clone(),
        destination: d.destination.clone(),
        node_id: d.node_id,
        version: d.version,
        // The path is the recorded one: it may hold a date that has moved
        // on since (`outbound/{yyyy}` across New Year), and a retried
        // callback must not deliver a second copy elsewhere.
        remote_path: r.path.clone(),
        size: None,
        sha256: r.sha256.clone(),
        idempotency_key: d.idempotency_key.clone(),
        resend: false,
        transfer_ms: None,
    };
    match verdict {
        HistoryVerdict::New => None,
        HistoryVerdict::Delivered(r) => {
            tracing::info!(key = %d.idempotency_key, path = %r.path, "already delivered; acknowledged without a second delivery");
            Some(ExportOutcome::Duplicate(report(r)))
        }
        HistoryVerdict::Superseded(newest) => {
            tracing::info!(key = %d.idempotency_key, newest = newest.version, "a newer version already went to this destination; not delivered");
            let mut r = report(newest);
            r.sha256 = String::new();
            r.remote_path = d.remote_path();
            Some(ExportOutcome::Superseded {
                delivery: r,
                newest_version: newest.version,
                newest_path: newest.path.clone(),
            })
        }
    }
}

/// The destination and the lease a delivery holds.
pub(crate) struct Leased<'a> {
    pub(crate) store: &'a dyn FileStore,
    pub(crate) dir: &'a RemotePath,
    pub(crate) target: &'a RemotePath,
    pub(crate) lease: &'a HeldLease,
}

pub(crate) async fn deliver_leased(
    cx: &ExportContext<'_>,
    d: &Delivery,
    id: NodeId,
    resend: bool,
    event_id: Option<&str>,
    started: Instant,
    l: &Leased<'_>,
) -> Result<ExportOutcome, ExportError> {
    let (store, dir, target) = (l.store, l.dir, l.target);
    let to = destination_key(&d.route, &d.destination);
    // Read again under the lease.
    let applied = cx.ecm.categories(id).await?;
    let history = history_of(cx.routes, &applied);
    if !resend && let Some(out) = settled(d, &history.verdict(&to, d.version)) {
        return Ok(out);
    }
    fault::hit(fault::Point::Leased)?;
    let report = |size: Option<u64>, sha256: String, transfer_ms: Option<u64>| DeliveryReport {
        route: d.route.clone(),
        destination: d.destination.clone(),
        node_id: d.node_id,
        version: d.version,
        remote_path: d.remote_path(),
        size,
        sha256,
        idempotency_key: d.idempotency_key.clone(),
        resend,
        transfer_ms,
    };
    // A resend replaces what this node delivered to that very path before
    // (the partner may hold a damaged copy); on a route without overwrite
    // it never replaces anything else, such as another document's file of
    // the same name.
    let ours_there = history
        .records
        .iter()
        .any(|r| r.to == to && r.path == d.remote_path());
    let mode = if d.overwrite || (resend && ours_there) {
        RenameMode::Replace
    } else {
        RenameMode::NoReplace
    };
    let source = open_version(cx.ecm, id, d.version).await?;
    // What is known without reading anything: the version's SHA-256 from an
    // earlier delivery of it, the file's from its sidecar.
    let known = history.sha256_of(d.version).map(str::to_owned);
    // An identical copy already in place means an earlier invocation
    // delivered this version and stopped after its rename: finish what it
    // would have done next (sidecar, event unless it went out, history)
    // instead of delivering a second time.
    let identical = |ours: String, size: Option<u64>| {
        let (history, applied, to) = (&history, &applied, &to);
        async move {
            if d.sha256_sidecar {
                write_sidecar(store, dir, d, &ours).await?;
            }
            let at = Utc::now();
            let already_published = l
                .lease
                .taken_over
                .as_ref()
                .and_then(|t| t.published_sha256.as_deref())
                == Some(ours.as_str());
            if let Some(size) = size
                && !already_published
            {
                let detail = exported_detail(
                    cx, d, target, size, &ours, resend, event_id, at, started, None,
                );
                publish(cx.events, DetailType::DocumentExported, detail).await;
            }
            let record = DeliveryRecord {
                to: to.clone(),
                version: d.version,
                sha256: ours.clone(),
                path: d.remote_path(),
            };
            record_history(cx.ecm, cx.routes, applied, history, id, record, at).await?;
            Ok::<_, ExportError>(ExportOutcome::Duplicate(report(size, ours, None)))
        }
    };
    // On a route that overwrites, a same-size file there may be that copy
    // (a resend delivers again on purpose).
    if !resend
        && d.overwrite
        && let Some(there) = store.try_stat(target).await?
        && there.size.is_some()
        && there.size == source.expected_len
    {
        let remote = match read_sidecar(store, dir, d).await {
            Some(sha) => sha,
            None => remote_sha256(store, target).await?,
        };
        let ours = match &known {
            Some(sha) => sha.clone(),
            // Compared only when the file may be ours.
            None => version_sha256(cx.ecm, id, d.version).await?,
        };
        if remote == ours {
            return identical(ours, there.size).await;
        }
    }
    let transfer_started = Instant::now();
    let receipt = match put_version(store, source, target, mode).await {
        Ok(r) => r,
        Err(ExportError::Store(FileStoreError::AlreadyExists { .. })) => {
            // Overwrite is not allowed. The same bytes there: see
            // `identical`. Anything else is someone else's file and stays.
            let existing = match read_sidecar(store, dir, d).await {
                Some(sha) => sha,
                None => remote_sha256(store, target).await?,
            };
            let ours = match &known {
                Some(sha) => sha.clone(),
                None => version_sha256(cx.ecm, id, d.version).await?,
            };
            if existing != ours {
                return Err(ExportError::TargetExists {
                    route: d.route.clone(),
                    destination: d.destination.clone(),
                    path: target.to_string(),
                });
            }
            let size = store.stat(target).await?.size;
            return identical(ours, size).await;
        }
        Err(e) => return Err(e),
    };
    fault::hit(fault::Point::AfterRename)?;
    let transfer_ms = millis(transfer_started.elapsed());
    if d.sha256_sidecar {
        write_sidecar(store, dir, d, &receipt.sha256).await?;
    }
    fault::hit(fault::Point::BeforeEvent)?;
    let at = Utc::now();
    let detail = exported_detail(
        cx,
        d,
        target,
        receipt.size,
        &receipt.sha256,
        resend,
        event_id,
        at,
        started,
        Some(transfer_ms),
    );
    publish(cx.events, DetailType::DocumentExported, detail).await;
    mark_published(store, l.lease, &receipt.sha256).await;
    fault::hit(fault::Point::BeforeHistory)?;
    let record = DeliveryRecord {
        to: to.clone(),
        version: d.version,
        sha256: receipt.sha256.clone(),
        path: d.remote_path(),
    };
    record_history(cx.ecm, cx.routes, &applied, &history, id, record, at).await?;
    tracing::info!(
        route = %d.route, destination = %d.destination, node_id = d.node_id, version = d.version,
        path = %target, size = receipt.size, resend, "document exported"
    );
    Ok(ExportOutcome::Delivered(report(
        Some(receipt.size),
        receipt.sha256,
        Some(transfer_ms),
    )))
}

/// The SHA-256 a `<file>.sha256` sidecar beside the target names, if the
/// route writes sidecars and one is there and well-formed. The sidecar is
/// written after its file, so it never names bytes that are not complete;
/// it may name an older file's bytes (a rename that stopped before its
/// sidecar), which only makes the comparison say "different" and the
/// delivery go ahead.
pub(crate) async fn read_sidecar(
    store: &dyn FileStore,
    dir: &RemotePath,
    d: &Delivery,
) -> Option<String> {
    if !d.sha256_sidecar {
        return None;
    }
    let path = dir
        .join(format!("{}.sha256", d.file_name).as_bytes())
        .ok()?;
    let text = store.read_small(&path, 4096).await.ok()?;
    let text = std::str::from_utf8(&text).ok()?;
    let (sha, name) = text.trim_end().split_once("  ")?;
    (name == d.file_name && sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| sha.to_ascii_lowercase())
}
