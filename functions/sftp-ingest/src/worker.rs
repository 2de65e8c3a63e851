//! The SQS-triggered worker of fan-out routes (docs/fanout.md): a batch of
//! work messages → one file each, streamed, placed and finished by the
//! ingest flow → `batchItemFailures` (the event source mapping's
//! `ReportBatchItemFailures`): every message not listed is deleted by
//! Lambda, every listed one comes back after the visibility timeout.
//!
//! A message is listed when its file is still in its claim (a transient
//! failure before its `fan_out.max_receives`-th receive), when its body
//! cannot be read, or when the route's SFTP server or the ECM cannot be
//! reached for the batch. It is never acknowledged without its file having
//! left its claim (or having left it before).

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};
use tracing::{error, info, warn};
use xecm_core::domain::fanout::batch_item_failures;
use xecm_core::domain::work_message::{SqsRecord, Work, WorkMessage};
use xecm_core::flows::ingest::fanout::{WorkResult, work};
use xecm_core::flows::ingest::{IngestDeps, RunContext, SystemClock};
use xecm_core::runtime::Invocation;

use crate::handler::{State, open_store};

/// Works on one batch; the answer is always a batch response (never an
/// error, which would put every message back, the finished ones too).
pub async fn handle_batch(state: &State, records: Vec<SqsRecord>, inv: &Invocation) -> Value {
    let mut retry: BTreeMap<String, bool> = records
        .iter()
        .map(|r| (r.message_id.clone(), false))
        .collect();
    // Readable messages, grouped by route (one SFTP connection each).
    let mut by_route: BTreeMap<String, Vec<(&SqsRecord, Work)>> = BTreeMap::new();
    for r in &records {
        match WorkMessage::parse(&r.body) {
            Ok(w) => by_route
                .entry(w.route.config.name.clone())
                .or_default()
                .push((r, w)),
            // Never acknowledged (domain::fanout::decide, `Unreadable`):
            // the queue's redrive moves it to the DLQ, whose alarm shows it.
            Err(e) => {
                error!(message = %r.message_id, receive = ?r.receive_count, "work message cannot be worked on; it goes to the DLQ after the queue's maxReceiveCount: {e}");
                retry.insert(r.message_id.clone(), true);
            }
        }
    }
    if !by_route.is_empty()
        && let Err(e) = state.ecm.enterprise_volume().await
    {
        warn!(error = %e, messages = records.len(), "the ECM is unavailable; the batch comes back after the visibility timeout");
        for v in retry.values_mut() {
            *v = true;
        }
        return answer(&records, &retry);
    }
    let clock = SystemClock;
    for (name, works) in by_route {
        let parallelism = works[0].1.route.limits().parallelism.max(1) as usize;
        let (store, host) = match open_store(state, &works[0].1.route).await {
            Ok(s) => s,
            Err(e) => {
                warn!(route = %name, error = %e, messages = works.len(), "SFTP server unavailable; these messages come back after the visibility timeout");
                for (r, _) in &works {
                    retry.insert(r.message_id.clone(), true);
                }
                continue;
            }
        };
        let deps = IngestDeps {
            store: store.as_ref(),
            ecm: state.ecm.as_ref(),
            events: state.events.as_ref(),
            clock: &clock,
            sftp_host: host,
        };
        let ctx = RunContext::new(
            inv.request_id.clone(),
            inv.remaining().max(Duration::from_secs(1)),
        );
        let deps = &deps;
        let ctx = &ctx;
        // The same file twice in one batch (a duplicate message): worked
        // on once, the copy answered like the original.
        let mut seen: BTreeMap<(String, String), String> = BTreeMap::new();
        let mut copies: Vec<(String, String)> = Vec::new();
        let works: Vec<_> = works
            .into_iter()
            .filter(|(r, w)| {
                let key = (w.msg.claim.clone(), w.msg.source_path.clone());
                match seen.get(&key) {
                    Some(first) => {
                        info!(message = %r.message_id, original = %first, "duplicate of a message in this batch");
                        copies.push((r.message_id.clone(), first.clone()));
                        false
                    }
                    None => {
                        seen.insert(key, r.message_id.clone());
                        true
                    }
                }
            })
            .collect();
        let results: Vec<(String, WorkResult)> = futures_util::stream::iter(works)
            .map(|(r, w)| async move {
                let n = r.receive_count.unwrap_or_else(|| {
                    warn!(message = %r.message_id, "no ApproximateReceiveCount: counted as a first receive");
                    1
                });
                (r.message_id.clone(), work(&w, deps, ctx, n).await)
            })
            .buffer_unordered(parallelism)
            .collect()
            .await;
        for (id, res) in results {
            match &res {
                WorkResult::Done { report } => {
                    info!(message = %id, path = %report.source_path, outcome = ?report.outcome, "work message done")
                }
                WorkResult::Retry { reason } => {
                    warn!(message = %id, "work message comes back after the visibility timeout: {reason}")
                }
            }
            retry.insert(id, res.is_retry());
        }
        for (copy, first) in copies {
            let again = retry.get(&first).copied().unwrap_or(true);
            retry.insert(copy, again);
        }
    }
    answer(&records, &retry)
}

fn answer(records: &[SqsRecord], retry: &BTreeMap<String, bool>) -> Value {
    let fifo = records.iter().any(|r| r.fifo);
    let failures = batch_item_failures(
        records.iter().map(|r| {
            (
                r.message_id.as_str(),
                retry.get(&r.message_id).copied().unwrap_or(true),
            )
        }),
        fifo,
    );
    json!({
        "batchItemFailures": failures
            .into_iter()
            .map(|id| json!({"itemIdentifier": id}))
            .collect::<Vec<_>>()
    })
}
