//! SQS fan-out of a route (docs/fanout.md): the scheduled poller claims, a
//! worker per message streams, places and finishes.
//!
//! Poller ([`run_poller`]): nothing is claimed while the queue holds
//! `fan_out.max_backlog` messages (default: the route's `max_files`);
//! otherwise the ordinary run (recovery of expired claims,
//! listing, readiness, claims) with one difference: a claimed file is not
//! processed but sent as one [`WorkMessage`] to the route's queue. The hook
//! is a task-local [`Dispatcher`] that `process_claimed` asks first, so the
//! run's steps stay one code path for both modes. A send that fails stops
//! the run like an outage: nothing more is claimed and this run's claims are
//! released for the next run (nothing is lost, the file is still claimed).
//!
//! Worker ([`work`]): one message, one claimed file, through the same
//! `process_claimed` as a scheduled run. Exactly once rests on the claim
//! and idempotency-key rules of the ingest flow, not on the queue:
//! - the file is no longer in the claim named by the message (an earlier
//!   delivery finished it, or a later run took the claim over and sends its
//!   own message): acknowledged, nothing done;
//! - a redelivery after a worker died mid-file finds the pending or final
//!   key on the document and completes it, as a takeover would;
//! - a transient failure is retried by SQS (the message reported in
//!   `batchItemFailures`); at the route's `fan_out.max_receives`-th receive
//!   the file goes to `failed/` with the reason and the message is acknowledged.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use serde::Serialize;

use super::*;
use crate::domain::fanout::{FanOutConfig, WorkDecision, WorkState, decide, may_claim};
use crate::domain::route::RouteConfig;
use crate::domain::work_message::{
    WORK_MESSAGE_VERSION, Work, WorkMessage, WorkSidecar, encode_segments,
};
use crate::ports::queue::WorkQueue;

/// Sends the claimed files of one poller run.
pub struct Dispatcher {
    queue: Arc<dyn WorkQueue>,
    route: RouteConfig,
    group: Option<String>,
    sent: AtomicU32,
    send_failed: AtomicU32,
}

tokio::task_local! {
    /// Set for the duration of a poller run (see the module docs).
    static DISPATCH: Arc<Dispatcher>;
}

impl Dispatcher {
    pub fn new(queue: Arc<dyn WorkQueue>, route: &Route, fan_out: &FanOutConfig) -> Self {
        let group = fan_out.group_for(queue.url(), route.name());
        Self {
            queue,
            route: route.config.clone(),
            group,
            sent: AtomicU32::new(0),
            send_failed: AtomicU32::new(0),
        }
    }
}

/// The body of the message for claimed file `c` (in `claim_dir`); `None`
/// if its path is not below that directory (not a claim of this run).
fn message_for(
    route: &RouteConfig,
    c: &Claimed,
    claim_dir: &RemotePath,
    run_id: &str,
) -> Option<WorkMessage> {
    let claim = c.tag.dir_name();
    // The raw segments below the claim directory (escaped text can't be
    // trusted to round-trip).
    let below = c
        .path
        .as_bytes()
        .strip_prefix(claim_dir.as_bytes())?
        .strip_prefix(b"/")?;
    let segs: Vec<Vec<u8>> = below.split(|b| *b == b'/').map(<[u8]>::to_vec).collect();
    let sidecar = c.sidecar.as_ref().map(|(format, _, s)| WorkSidecar {
        format: *format,
        segments_hex: encode_segments(s),
    });
    Some(WorkMessage {
        v: WORK_MESSAGE_VERSION,
        route: route.clone(),
        claim: claim.clone(),
        source_path: c.rel.clone(),
        segments_hex: encode_segments(&segs),
        claimed_path: format!("{INFLIGHT_DIR}/{claim}/{}", c.rel),
        size: c.size,
        mtime: c.mtime,
        sidecar,
        index_meta: None,
        run_id: run_id.to_owned(),
    })
}

/// Called first by `process_claimed`: inside a poller run, sends `c` to the
/// queue and returns its report; elsewhere (a worker, a scheduled run of a
/// route without fan-out) `None`. A file the poller already knows will not
/// go in is not sent but processed right here as in a normal run: its
/// sidecar could not be claimed (it waits in its claim) or its index row was
/// refused (it goes to `failed/`).
pub(super) async fn dispatched(run: &Run<'_>, c: &Claimed) -> Option<FileReport> {
    let d = DISPATCH.try_with(Arc::clone).ok()?;
    if c.sidecar_error.is_some()
        || (!run.index_rows.contains_key(&c.rel) && run.refused_rows.contains_key(&c.rel))
    {
        return None;
    }
    if run.outage.load(Ordering::SeqCst) {
        run.hold(c);
        return Some(FileReport::deferred(
            &c.rel,
            "not sent: the work queue refused an earlier message; the claim is released for the next run",
        ));
    }
    let msg = run
        .inflight
        .join(c.tag.dir_name())
        .ok()
        .and_then(|dir| message_for(&d.route, c, &dir, &run.ctx.invocation_id));
    let Some(mut msg) = msg else {
        // Not a path this run can describe: processed here instead.
        return None;
    };
    msg.index_meta = run.index_rows.get(&c.rel).cloned();
    let body = match serde_json::to_string(&msg) {
        Ok(b) => b,
        Err(e) => {
            run.hold(c);
            return Some(FileReport::deferred(
                &c.rel,
                format!("work message not serialisable: {e}"),
            ));
        }
    };
    // Same claim, same file: same FIFO deduplication id (a resend within
    // SQS's 5-minute window is dropped by the queue itself).
    let dedup = hex::encode(&Sha256::digest(format!("{}\0{}", msg.claim, msg.source_path))[..16]);
    match d.queue.send(&body, d.group.as_deref(), &dedup).await {
        Ok(id) => {
            d.sent.fetch_add(1, Ordering::Relaxed);
            info!(message = %id, claim = %msg.claim, "claimed file sent to the work queue");
            let mut r = FileReport::new(&c.rel, FileOutcome::Dispatched);
            r.reason = Some(format!("sent to the work queue (message {id})"));
            r.size = Some(c.size);
            Some(r)
        }
        Err(e) => {
            d.send_failed.fetch_add(1, Ordering::Relaxed);
            if !run.outage.swap(true, Ordering::SeqCst) {
                warn!(error = %e, "work queue unavailable: the run stops claiming; claims are released for the next run");
            }
            run.stopped.store(true, Ordering::Relaxed);
            run.hold(c);
            Some(FileReport::deferred(
                &c.rel,
                format!("not sent, the claim is released for the next run: {e}"),
            ))
        }
    }
}

/// A scheduled run of a fan-out route: claims, then one message per file.
/// The report is the run's own, each sent file with outcome `dispatched`
/// (counted in `counts.dispatched`).
pub async fn run_poller(
    route: &Route,
    deps: &IngestDeps<'_>,
    ctx: &RunContext,
    queue: Arc<dyn WorkQueue>,
) -> Result<IngestReport, IngestError> {
    let fan_out = route.config.fan_out.clone().unwrap_or(FanOutConfig {
        queue_url: String::new(),
        max_receives: crate::domain::fanout::DEFAULT_MAX_RECEIVES,
        message_group: None,
        max_backlog: None,
    });
    // Backpressure: while the workers have not caught up, nothing new is
    // claimed (a claim waiting in the queue past its lease would be taken
    // over and sent again). Unknown backlog: the run goes ahead (a queue
    // that is really down refuses the first send, which stops the run).
    match queue.backlog().await {
        Ok(n) if !may_claim(n, fan_out.max_backlog, route.limits().max_files) => {
            info!(
                route = %route.name(),
                queue = %queue.url(),
                backlog = n,
                "fan-out poller: the work queue still holds a backlog; nothing claimed this time"
            );
            let mut report = IngestReport::new(route.name(), &ctx.invocation_id);
            report.stopped_early = true;
            return Ok(report);
        }
        Ok(_) => {}
        Err(e) => warn!(error = %e, "work queue backlog unknown; claiming as usual"),
    }
    let d = Arc::new(Dispatcher::new(queue, route, &fan_out));
    let report = DISPATCH.scope(d.clone(), run(route, deps, ctx)).await?;
    info!(
        route = %route.name(),
        queue = %d.queue.url(),
        sent = d.sent.load(Ordering::Relaxed),
        send_failed = d.send_failed.load(Ordering::Relaxed),
        "fan-out poller finished"
    );
    Ok(report)
}

/// What a worker did with one message.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum WorkResult {
    /// Acknowledge: the file has left its claim (ingested, skipped, in
    /// `failed/`), or had already left it before this delivery.
    Done { report: FileReport },
    /// Not acknowledged: SQS delivers it again after the visibility timeout.
    Retry { reason: String },
}

impl WorkResult {
    pub fn is_retry(&self) -> bool {
        matches!(self, WorkResult::Retry { .. })
    }
}

/// Works on one message received for the `receive_count`-th time.
pub async fn work(
    w: &Work,
    deps: &IngestDeps<'_>,
    ctx: &RunContext,
    receive_count: u32,
) -> WorkResult {
    let route = &w.route;
    let cfg = &route.config;
    let max_receives = cfg
        .fan_out
        .as_ref()
        .map(|f| f.max_receives)
        .unwrap_or(crate::domain::fanout::DEFAULT_MAX_RECEIVES);
    let retry = |reason: String| WorkResult::Retry { reason };
    let src = if cfg.source_dir.trim_matches('/').is_empty() {
        deps.store.root().path()
    } else {
        match deps
            .store
            .root()
            .resolve(cfg.source_dir.trim_end_matches('/'))
        {
            Ok(p) => p,
            Err(e) => return retry(format!("source_dir {:?}: {e}", cfg.source_dir)),
        }
    };
    let (Ok(inflight), Ok(claim_dir)) = (
        src.join(INFLIGHT_DIR),
        src.join(INFLIGHT_DIR).and_then(|d| d.join(&w.msg.claim)),
    ) else {
        return retry(format!("claim {:?} is not a valid path", w.msg.claim));
    };
    let path = match join_all(&claim_dir, &w.segments) {
        Ok(p) => p,
        Err(e) => return retry(format!("claimed path {}: {e}", w.msg.claimed_path)),
    };
    let mut index_rows = BTreeMap::new();
    if let Some(meta) = &w.msg.index_meta {
        index_rows.insert(w.msg.source_path.clone(), meta.clone());
    }
    let run = Run {
        route,
        deps,
        ctx,
        src,
        inflight,
        index_rows,
        claimed_files: AtomicU32::new(0),
        claimed_bytes: AtomicU64::new(0),
        stopped: std::sync::atomic::AtomicBool::new(false),
        workspaces: tokio::sync::Mutex::new(BTreeMap::new()),
        folders: tokio::sync::Mutex::new(BTreeMap::new()),
        dirs: std::sync::Mutex::new(BTreeSet::new()),
        released: std::sync::Mutex::new(BTreeSet::new()),
        events: tokio::sync::Mutex::new(Vec::new()),
        outage: std::sync::atomic::AtomicBool::new(false),
        held: std::sync::Mutex::new(BTreeMap::new()),
        name_locks: std::sync::Mutex::new(BTreeMap::new()),
        refused_rows: BTreeMap::new(),
    };
    let span = info_span!("work", route = %cfg.name, path = %w.msg.source_path, claim = %w.msg.claim, receive = receive_count);
    async {
        match deps.store.try_stat(&path).await {
            Ok(Some(_)) => {}
            Ok(None) => {
                info!("the claim no longer holds the file: finished by an earlier delivery or taken over by a later run");
                let mut r = FileReport::new(&w.msg.source_path, FileOutcome::AlreadyIngested);
                r.reason = Some(
                    "not in its claim any more: finished by an earlier delivery, or taken over by a later run that sends its own message"
                        .into(),
                );
                debug_assert_eq!(decide(&WorkState::NotInClaim, receive_count, max_receives), WorkDecision::Ack);
                return WorkResult::Done { report: r };
            }
            Err(e) => return retry(format!("cannot look at the claimed file: {e}")),
        }
        let mut sidecar = None;
        if let (Some(s), Some(segs)) = (&w.msg.sidecar, &w.sidecar_segments) {
            let p = match join_all(&claim_dir, segs) {
                Ok(p) => p,
                Err(e) => return retry(format!("claimed sidecar path: {e}")),
            };
            match deps.store.try_stat(&p).await {
                Ok(Some(_)) => sidecar = Some((s.format, p, segs.clone())),
                // The poller claimed it with its document: gone means a
                // takeover is moving the claim right now.
                Ok(None) => {
                    return retry("its sidecar is no longer in the claim (a takeover is under way?)".into());
                }
                Err(e) => return retry(format!("cannot look at the claimed sidecar: {e}")),
            }
        }
        let c = Claimed {
            rel: w.msg.source_path.clone(),
            tag: w.tag.clone(),
            path,
            sidecar,
            sidecar_error: None,
            size: w.msg.size,
            mtime: w.msg.mtime,
        };
        let report = run.process_claimed(c.clone()).await;
        let state = if report.moved_to.is_some() {
            WorkState::Finished
        } else {
            WorkState::StillClaimed {
                reason: report
                    .reason
                    .clone()
                    .unwrap_or_else(|| "the file is still in its claim".into()),
            }
        };
        let result = match decide(&state, receive_count, max_receives) {
            WorkDecision::Ack => WorkResult::Done { report },
            WorkDecision::Retry { reason } => retry(reason),
            WorkDecision::MoveToFailed { reason } => {
                let f = run.fail(&c, FailureKind::Quarantined, &reason, None).await;
                if f.moved_to.is_some() {
                    WorkResult::Done { report: f }
                } else {
                    retry(format!("could not be moved to failed/: {reason}"))
                }
            }
        };
        run.remove_released_dirs().await;
        run.flush_events().await;
        result
    }
    .instrument(span)
    .await
}
