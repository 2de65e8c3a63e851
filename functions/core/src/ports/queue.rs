//! Port: the work queue of a fan-out route (docs/fanout.md). One method:
//! send one message body. Receiving is Lambda's event source mapping (or,
//! locally, the test driver), not ours.

use std::sync::Mutex;

/// A message that could not be sent. Nothing is lost by it: the file stays
/// in its claim and a later run takes the claim over after its lease.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("sending to the work queue {queue} failed: {reason}")]
pub struct QueueError {
    pub queue: String,
    pub reason: String,
}

#[async_trait::async_trait]
pub trait WorkQueue: Send + Sync {
    /// Sends `body`; `group` is the FIFO message group (`None` on a standard
    /// queue), `dedup_id` the FIFO deduplication id. Returns the message id.
    async fn send(
        &self,
        body: &str,
        group: Option<&str>,
        dedup_id: &str,
    ) -> Result<String, QueueError>;
    /// Messages waiting or in flight (SQS's approximate counts).
    async fn backlog(&self) -> Result<u64, QueueError>;
    /// The queue's URL, for reports and logs.
    fn url(&self) -> &str;
}

/// Opens the work queue a route names (one client shared by all queues).
pub trait WorkQueues: Send + Sync {
    fn open(&self, url: &str) -> std::sync::Arc<dyn WorkQueue>;
}

/// In-memory stand-in: keeps what was sent; can be told to refuse.
#[derive(Debug, Default)]
pub struct MemoryQueue {
    pub sent: Mutex<Vec<(String, Option<String>)>>,
    pub refuse: std::sync::atomic::AtomicBool,
    /// What [`WorkQueue::backlog`] answers.
    pub backlog: std::sync::atomic::AtomicU64,
}

impl MemoryQueue {
    pub fn new() -> Self {
        Self::default()
    }

    /// The bodies sent so far.
    pub fn bodies(&self) -> Vec<String> {
        self.sent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(b, _)| b.clone())
            .collect()
    }
}

#[async_trait::async_trait]
impl WorkQueue for MemoryQueue {
    async fn send(
        &self,
        body: &str,
        group: Option<&str>,
        _dedup_id: &str,
    ) -> Result<String, QueueError> {
        if self.refuse.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(QueueError {
                queue: "memory".into(),
                reason: "refused (test)".into(),
            });
        }
        let mut sent = self.sent.lock().unwrap_or_else(|p| p.into_inner());
        sent.push((body.to_owned(), group.map(str::to_owned)));
        Ok(format!("m-{}", sent.len()))
    }

    async fn backlog(&self) -> Result<u64, QueueError> {
        Ok(self.backlog.load(std::sync::atomic::Ordering::SeqCst))
    }

    fn url(&self) -> &str {
        "memory"
    }
}

/// Every URL opens the same in-memory queue.
impl WorkQueues for std::sync::Arc<MemoryQueue> {
    fn open(&self, _url: &str) -> std::sync::Arc<dyn WorkQueue> {
        self.clone()
    }
}
