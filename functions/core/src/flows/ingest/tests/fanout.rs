//! Fan-out (docs/fanout.md) over the in-memory doubles: the poller claims
//! and sends, a worker finishes each message's file exactly once.

use std::sync::Arc;

use super::*;
use crate::domain::work_message::WorkMessage;
use crate::flows::ingest::fanout::{WorkResult, run_poller, work};
use crate::ports::queue::MemoryQueue;

fn fan_out_route(max_receives: u32) -> Route {
    let mut ev = route_json(serde_json::json!([]), "fail");
    ev["route"]["fan_out"] =
        serde_json::json!({"queue_url": "http://q.test/acme", "max_receives": max_receives});
    parse_route(ev)
}

impl World {
    async fn poll(&self, r: &Route, id: &str, q: &Arc<MemoryQueue>) -> IngestReport {
        let deps = IngestDeps {
            store: &self.store,
            ecm: &self.ecm,
            events: &self.events,
            clock: &self.clock,
            sftp_host: "sftp.test".into(),
        };
        let ctx = RunContext::new(id, Duration::from_secs(300));
        run_poller(r, &deps, &ctx, q.clone()).await.unwrap()
    }

    async fn work_on(&self, body: &str, id: &str, receive: u32) -> WorkResult {
        let w = WorkMessage::parse(body).unwrap();
        let deps = IngestDeps {
            store: &self.store,
            ecm: &self.ecm,
            events: &self.events,
            clock: &self.clock,
            sftp_host: "sftp.test".into(),
        };
        let ctx = RunContext::new(id, Duration::from_secs(300));
        work(&w, &deps, &ctx, receive).await
    }

    /// Documents in the folder holding document `node`.
    async fn documents_beside(&self, node: i64) -> usize {
        let n = self.ecm.node(NodeId::new(node).unwrap()).await.unwrap();
        let folder = n.parent_id.unwrap();
        self.ecm
            .children(folder, &ChildFilter::default(), 1, 100)
            .await
            .unwrap()
            .items
            .len()
    }
}

#[tokio::test]
async fn given_fan_out_route_when_polled_then_each_claimed_file_is_sent_not_ingested() {
    let w = World::new();
    for i in 0..3 {
        w.store.put(
            &format!("in/INV-200{i}_0000100001.pdf"),
            &pdf(&format!("f{i}")),
            NOW - 3600,
        );
    }
    let q = Arc::new(MemoryQueue::new());
    let rep = w.poll(&fan_out_route(5), "poll-1", &q).await;

    assert_eq!(rep.counts.dispatched, 3, "{rep:#?}");
    assert_eq!(rep.counts.ingested + rep.counts.deferred, 0, "{rep:#?}");
    assert!(
        rep.files
            .iter()
            .all(|f| f.outcome == FileOutcome::Dispatched)
    );
    assert_eq!(q.bodies().len(), 3);
    // Claimed, not streamed: nothing in the ECM, every file in its claim.
    assert_eq!(w.ecm.calls("upload"), 0);
    assert_eq!(inflight_files(&w).len(), 3);
    assert!(w.store.files_under("/in/INV").is_empty());
    // The response counts them; a route without fan-out never says so.
    let json = serde_json::to_value(&rep).unwrap();
    assert_eq!(json["counts"]["dispatched"], 3);
    let plain = w.run(&route(serde_json::json!([]), "fail"), "r").await;
    assert!(
        serde_json::to_value(&plain).unwrap()["counts"]
            .get("dispatched")
            .is_none()
    );
}

#[tokio::test]
async fn given_sent_file_when_worked_twice_then_one_document_and_the_second_is_acknowledged() {
    let w = World::new();
    let body = pdf("invoice 3001");
    w.store.put("in/INV-3001_0000100001.pdf", &body, NOW - 3600);
    let q = Arc::new(MemoryQueue::new());
    w.poll(&fan_out_route(5), "poll-1", &q).await;
    let msg = q.bodies().pop().unwrap();

    let first = w.work_on(&msg, "worker-1", 1).await;
    let WorkResult::Done { report } = &first else {
        panic!("{first:?}")
    };
    assert_eq!(report.outcome, FileOutcome::Created, "{report:#?}");
    assert!(inflight_files(&w).is_empty());
    assert_eq!(w.store.files_under("/in/archive/").len(), 1);

    // The same message again (SQS delivers at least once): acknowledged,
    // nothing uploaded, still one document with one version.
    let uploads = w.ecm.calls("upload");
    let again = w.work_on(&msg, "worker-2", 2).await;
    assert!(matches!(again, WorkResult::Done { .. }), "{again:?}");
    assert_eq!(w.ecm.calls("upload"), uploads);
    assert_eq!(w.documents_beside(report.node_id.unwrap()).await, 1);
    let (_, versions, hist) = w.doc(report.node_id.unwrap()).await;
    assert_eq!(versions, vec![1]);
    assert_eq!(hist["9002_9"], "worker-1");
    let ingested = w
        .events
        .events()
        .iter()
        .filter(|e| e.detail_type == DetailType::TransferIngested)
        .count();
    assert_eq!(ingested, 1);
}

#[tokio::test]
async fn given_transient_failure_when_worked_then_retried_until_max_receives_then_failed_with_reason()
 {
    let w = World::new();
    w.store
        .put("in/INV-3002_0000100001.pdf", &pdf("x"), NOW - 3600);
    let q = Arc::new(MemoryQueue::new());
    w.poll(&fan_out_route(3), "poll-1", &q).await;
    let msg = q.bodies().pop().unwrap();
    w.ecm.arm("upload", u32::MAX, Fault::Transient);

    for receive in 1..3 {
        let r = w.work_on(&msg, &format!("worker-{receive}"), receive).await;
        assert!(r.is_retry(), "receive {receive}: {r:?}");
        // The claim stays for the redelivery; nothing in failed/.
        assert_eq!(inflight_files(&w).len(), 1);
        assert!(w.store.files_under("/in/failed/").is_empty());
    }
    let last = w.work_on(&msg, "worker-3", 3).await;
    let WorkResult::Done { report } = &last else {
        panic!("{last:?}")
    };
    assert_eq!(report.outcome, FileOutcome::Quarantined, "{report:#?}");
    let reason = report.reason.clone().unwrap();
    assert!(
        reason.contains("receive 3") && reason.contains("max_receives = 3"),
        "{reason}"
    );
    assert!(inflight_files(&w).is_empty());
    let failed = w.store.files_under("/in/failed/");
    assert!(
        failed.contains(&"/in/failed/INV-3002_0000100001.pdf".to_string()),
        "{failed:?}"
    );
    let rep = w
        .store
        .read("/in/failed/INV-3002_0000100001.pdf.error.json")
        .unwrap();
    let rep: serde_json::Value = serde_json::from_slice(&rep).unwrap();
    assert!(
        rep.to_string().contains("max_receives = 3"),
        "the failure report names the reason: {rep}"
    );
}

#[tokio::test]
async fn given_queue_refusing_when_polled_then_claims_released_and_next_poll_sends_them() {
    let w = World::new();
    for i in 0..3 {
        w.store.put(
            &format!("in/INV-400{i}_0000100001.pdf"),
            &pdf(&format!("f{i}")),
            NOW - 3600,
        );
    }
    let q = Arc::new(MemoryQueue::new());
    q.refuse.store(true, std::sync::atomic::Ordering::SeqCst);
    let rep = w.poll(&fan_out_route(5), "poll-1", &q).await;
    assert_eq!(rep.counts.dispatched, 0, "{rep:#?}");
    assert!(rep.stopped_early, "{rep:#?}");
    assert_eq!(w.ecm.calls("upload"), 0);

    // The queue is back: the next poll sends every file at once (released
    // claims are taken over without waiting for the lease).
    q.refuse.store(false, std::sync::atomic::Ordering::SeqCst);
    let next = w.poll(&fan_out_route(5), "poll-2", &q).await;
    assert_eq!(next.counts.dispatched, 3, "{next:#?}");
    assert_eq!(q.bodies().len(), 3);
    let mut node = 0;
    for (i, b) in q.bodies().iter().enumerate() {
        let r = w.work_on(b, &format!("worker-{i}"), 1).await;
        let WorkResult::Done { report } = &r else {
            panic!("{r:?}")
        };
        node = report.node_id.unwrap();
    }
    assert_eq!(w.documents_beside(node).await, 3);
    assert!(inflight_files(&w).is_empty());
}

#[tokio::test]
async fn given_message_of_a_taken_over_claim_when_worked_then_acknowledged_without_work() {
    let w = World::new();
    w.store
        .put("in/INV-3003_0000100001.pdf", &pdf("x"), NOW - 3600);
    let q = Arc::new(MemoryQueue::new());
    let r = fan_out_route(5);
    w.poll(&r, "poll-1", &q).await;
    // Past the lease, a later poll takes the claim over and sends anew.
    let deps = IngestDeps {
        store: &w.store,
        ecm: &w.ecm,
        events: &w.events,
        clock: &FixedClock(Utc.timestamp_opt(NOW + 4000, 0).unwrap()),
        sftp_host: "sftp.test".into(),
    };
    let ctx = RunContext::new("poll-2", Duration::from_secs(300));
    let later = run_poller(&r, &deps, &ctx, q.clone()).await.unwrap();
    assert_eq!(later.counts.dispatched, 1, "{later:#?}");
    let bodies = q.bodies();
    assert_eq!(bodies.len(), 2);
    let stale = w.work_on(&bodies[0], "worker-1", 1).await;
    assert!(matches!(stale, WorkResult::Done { .. }), "{stale:?}");
    assert_eq!(w.ecm.calls("upload"), 0, "the stale message did no work");
    let fresh = w.work_on(&bodies[1], "worker-2", 1).await;
    let WorkResult::Done { report } = &fresh else {
        panic!("{fresh:?}")
    };
    assert_eq!(report.outcome, FileOutcome::Created);
    assert_eq!(w.documents_beside(report.node_id.unwrap()).await, 1);
}

#[tokio::test]
async fn given_queue_backlog_at_the_limit_when_polled_then_nothing_is_claimed() {
    let w = World::new();
    w.store
        .put("in/INV-5001_0000100001.pdf", &pdf("x"), NOW - 3600);
    let q = Arc::new(MemoryQueue::new());
    // limits.max_files of the test route is 100.
    q.backlog.store(100, std::sync::atomic::Ordering::SeqCst);
    let rep = w.poll(&fan_out_route(5), "poll-1", &q).await;
    assert!(rep.stopped_early, "{rep:#?}");
    assert_eq!(rep.counts.dispatched, 0);
    assert!(q.bodies().is_empty());
    assert_eq!(w.store.files_under("/in/INV").len(), 1, "left in intake");
    assert!(inflight_files(&w).is_empty());

    q.backlog.store(99, std::sync::atomic::Ordering::SeqCst);
    let rep = w.poll(&fan_out_route(5), "poll-2", &q).await;
    assert_eq!(rep.counts.dispatched, 1, "{rep:#?}");
}
