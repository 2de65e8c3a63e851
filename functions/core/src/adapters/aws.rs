//! AWS adapters: Secrets Manager behind the [`Secrets`] port (cached per cold
//! start with a TTL, so a rotation is picked up) and EventBridge behind the
//! [`EventSink`] port (batched PutEvents, failed entries retried).
//!
//! Clients are built from the shared `SdkConfig` of
//! `aws_config::defaults(..).load()`, which honours `AWS_ENDPOINT_URL`: the
//! local stack (moto) and AWS take the same code path.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use aws_config::{BehaviorVersion, SdkConfig};
use aws_sdk_eventbridge::types::PutEventsRequestEntry;
use aws_sdk_secretsmanager::config::timeout::TimeoutConfig;
use aws_sdk_secretsmanager::error::{ProvideErrorMetadata, SdkError};
use secrecy::SecretString;
use tokio::sync::Mutex;

use super::backoff::Backoff;
use crate::ports::events::{Event, EventSink, PublishReport, SOURCE, Undelivered};
use crate::ports::secrets::{Secrets, SecretsError};

/// The SDK configuration from the environment (region, credentials,
/// `AWS_ENDPOINT_URL`), loaded once per cold start.
pub async fn load_sdk_config() -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest()).load().await
}

/// Timeouts of every AWS call: a Lambda must not hang on a slow endpoint. The
/// SDK's own bounded retry (standard mode) runs inside `operation_timeout`.
fn timeouts() -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(3))
        // Generous per attempt: a timed-out PutEvents attempt that did reach
        // the service is retried and delivers its events twice.
        .operation_attempt_timeout(Duration::from_secs(10))
        .operation_timeout(Duration::from_secs(25))
        .build()
}

// ---------------------------------------------------------------- Secrets --

/// Secrets Manager with a per-process cache.
pub struct SecretsManagerSecrets {
    client: aws_sdk_secretsmanager::Client,
    ttl: Duration,
    cache: Mutex<HashMap<String, (Instant, SecretString)>>,
}

impl std::fmt::Debug for SecretsManagerSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretsManagerSecrets")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl SecretsManagerSecrets {
    /// Default time a secret is served from the cache.
    pub const DEFAULT_TTL: Duration = Duration::from_secs(300);

    pub fn new(sdk: &SdkConfig) -> Self {
        let conf = aws_sdk_secretsmanager::config::Builder::from(sdk)
            .timeout_config(timeouts())
            .build();
        Self {
            client: aws_sdk_secretsmanager::Client::from_conf(conf),
            ttl: Self::DEFAULT_TTL,
            cache: Mutex::new(HashMap::new()),
        }
    }

    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Drops a cached secret, e.g. after its credentials were refused, so the
    /// next `get` fetches the rotated value.
    pub async fn invalidate(&self, secret_id: &str) {
        self.cache.lock().await.remove(secret_id);
    }

    async fn fetch(&self, secret_id: &str) -> Result<SecretString, SecretsError> {
        let id = || secret_id.to_string();
        match self
            .client
            .get_secret_value()
            .secret_id(secret_id)
            .send()
            .await
        {
            Ok(out) => match out.secret_string() {
                Some(s) => Ok(SecretString::from(s.to_string())),
                None => Err(SecretsError::NotString { secret_id: id() }),
            },
            Err(SdkError::ServiceError(se)) => {
                let err = se.err();
                let code = err.code().unwrap_or("unknown");
                let message = err.message().unwrap_or_default().to_string();
                if err.is_resource_not_found_exception() {
                    Err(SecretsError::NotFound { secret_id: id() })
                } else if code == "AccessDeniedException" || code == "DecryptionFailure" {
                    Err(SecretsError::AccessDenied { secret_id: id() })
                } else if err.is_internal_service_error() || code == "ThrottlingException" {
                    Err(SecretsError::Transient {
                        secret_id: id(),
                        detail: format!("{code}: {message}"),
                    })
                } else {
                    Err(SecretsError::Other {
                        secret_id: id(),
                        detail: format!("{code}: {message}"),
                    })
                }
            }
            Err(
                e @ (SdkError::TimeoutError(_)
                | SdkError::DispatchFailure(_)
                | SdkError::ResponseError(_)),
            ) => Err(SecretsError::Transient {
                secret_id: id(),
                detail: error_chain(&e),
            }),
            Err(e) => Err(SecretsError::Other {
                secret_id: id(),
                detail: error_chain(&e),
            }),
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

#[async_trait]
impl Secrets for SecretsManagerSecrets {
    #[tracing::instrument(skip(self))]
    async fn get(&self, secret_id: &str) -> Result<SecretString, SecretsError> {
        if let Some((at, v)) = self.cache.lock().await.get(secret_id)
            && at.elapsed() < self.ttl
        {
            return Ok(v.clone());
        }
        let v = self.fetch(secret_id).await?;
        self.cache
            .lock()
            .await
            .insert(secret_id.to_string(), (Instant::now(), v.clone()));
        Ok(v)
    }

    #[tracing::instrument(skip(self))]
    async fn refresh(&self, secret_id: &str) -> Result<SecretString, SecretsError> {
        self.invalidate(secret_id).await;
        self.get(secret_id).await
    }
}

// ------------------------------------------------------------- EventBridge --

/// PutEvents limits: entries per call and bytes per call (the size of an
/// entry is its Source + DetailType + Detail in UTF-8 bytes; we set no Time
/// or Resources).
pub const MAX_ENTRIES_PER_CALL: usize = 10;
pub const MAX_BYTES_PER_CALL: usize = 256 * 1024;

/// What one entry costs against [`MAX_BYTES_PER_CALL`].
pub fn entry_size(detail_type: &str, detail: &str) -> usize {
    SOURCE.len() + detail_type.len() + detail.len()
}

/// Groups entry indexes into calls of at most `max_entries` and `max_bytes`,
/// in order. Entries larger than `max_bytes` alone are returned separately:
/// no call can carry them.
pub fn plan_batches(
    sizes: &[usize],
    max_entries: usize,
    max_bytes: usize,
) -> (Vec<Vec<usize>>, Vec<usize>) {
    let mut batches: Vec<Vec<usize>> = Vec::new();
    let mut too_large = Vec::new();
    let mut cur: Vec<usize> = Vec::new();
    let mut cur_bytes = 0usize;
    for (i, &size) in sizes.iter().enumerate() {
        if size > max_bytes {
            too_large.push(i);
            continue;
        }
        if !cur.is_empty() && (cur.len() >= max_entries || cur_bytes + size > max_bytes) {
            batches.push(std::mem::take(&mut cur));
            cur_bytes = 0;
        }
        cur.push(i);
        cur_bytes += size;
    }
    if !cur.is_empty() {
        batches.push(cur);
    }
    (batches, too_large)
}

/// Per-entry outcome of one PutEvents call: `None` delivered, `Some((code,
/// message))` failed.
type EntryResults = Vec<Option<(String, String)>>;

/// One PutEvents call; a trait so the retry logic is unit-tested with a double.
#[async_trait]
trait PutEvents: Send + Sync {
    async fn put(
        &self,
        entries: Vec<PutEventsRequestEntry>,
    ) -> Result<EntryResults, (String, String)>;
}

#[async_trait]
impl PutEvents for aws_sdk_eventbridge::Client {
    async fn put(
        &self,
        entries: Vec<PutEventsRequestEntry>,
    ) -> Result<EntryResults, (String, String)> {
        let n = entries.len();
        let out = self
            .put_events()
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|e| {
                let code = e.code().unwrap_or("RequestFailed").to_string();
                // The service's own message when there is one; otherwise the
                // transport error chain (timeouts, connection failures).
                let message = e
                    .message()
                    .map(str::to_string)
                    .unwrap_or_else(|| error_chain(&e));
                (code, message)
            })?;
        let results: EntryResults = out
            .entries()
            .iter()
            .map(|r| {
                r.error_code().map(|c| {
                    (
                        c.to_string(),
                        r.error_message().unwrap_or_default().to_string(),
                    )
                })
            })
            .collect();
        if results.len() != n {
            // The API answers entry by entry in order; anything else cannot be
            // matched up, so nothing is counted as delivered and all are retried.
            return Err((
                "MismatchedResponse".into(),
                format!("{} results for {n} entries", results.len()),
            ));
        }
        Ok(results)
    }
}

/// Entry error codes that no retry can fix.
fn is_permanent_entry_error(code: &str) -> bool {
    matches!(
        code,
        "MalformedDetail"
            | "InvalidArgument"
            | "ResourceNotFoundException"
            | "ValidationException"
            | "AccessDeniedException"
            | "NotAuthorizedForSourceException"
    )
}

/// EventBridge PutEvents on one bus.
pub struct EventBridgeSink {
    client: Box<dyn PutEvents>,
    bus: String,
    backoff: Backoff,
}

impl std::fmt::Debug for EventBridgeSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventBridgeSink")
            .field("bus", &self.bus)
            .finish_non_exhaustive()
    }
}

impl EventBridgeSink {
    /// `bus`: the event bus name (`XECM_EVENT_BUS`).
    pub fn new(sdk: &SdkConfig, bus: impl Into<String>) -> Self {
        let conf = aws_sdk_eventbridge::config::Builder::from(sdk)
            .timeout_config(timeouts())
            .build();
        Self {
            client: Box::new(aws_sdk_eventbridge::Client::from_conf(conf)),
            bus: bus.into(),
            backoff: Backoff {
                max_attempts: 4,
                base: Duration::from_millis(100),
                cap: Duration::from_secs(2),
            },
        }
    }

    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    fn entry(&self, event: &Event, detail: &str) -> PutEventsRequestEntry {
        PutEventsRequestEntry::builder()
            .source(SOURCE)
            .detail_type(event.detail_type.as_str())
            .detail(detail)
            .event_bus_name(&self.bus)
            .build()
    }

    /// Sends one batch, retrying the failed entries; returns the undelivered.
    async fn send_batch(
        &self,
        events: &[Event],
        details: &[String],
        batch: &[usize],
    ) -> (usize, Vec<Undelivered>) {
        let mut pending: Vec<usize> = batch.to_vec();
        let mut undelivered = Vec::new();
        let mut delivered = 0;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let entries = pending
                .iter()
                .map(|&i| self.entry(&events[i], &details[i]))
                .collect();
            let failed: Vec<(usize, String, String)> = match self.client.put(entries).await {
                Ok(results) => pending
                    .iter()
                    .zip(results)
                    .filter_map(|(&i, r)| match r {
                        None => {
                            delivered += 1;
                            None
                        }
                        Some((code, msg)) => Some((i, code, msg)),
                    })
                    .collect(),
                Err((code, msg)) => pending
                    .iter()
                    .map(|&i| (i, code.clone(), msg.clone()))
                    .collect(),
            };
            let (permanent, retryable): (Vec<_>, Vec<_>) = failed
                .into_iter()
                .partition(|(_, code, _)| is_permanent_entry_error(code));
            let give_up = |list: Vec<(usize, String, String)>, out: &mut Vec<Undelivered>| {
                out.extend(
                    list.into_iter()
                        .map(|(i, error_code, message)| Undelivered {
                            index: i,
                            detail_type: events[i].detail_type,
                            error_code,
                            message,
                        }),
                )
            };
            give_up(permanent, &mut undelivered);
            if retryable.is_empty() {
                break;
            }
            if !self.backoff.wait(attempt).await {
                give_up(retryable, &mut undelivered);
                break;
            }
            tracing::warn!(bus = %self.bus, attempt, failed = retryable.len(), "PutEvents entries failed, retrying them");
            pending = retryable.into_iter().map(|(i, _, _)| i).collect();
        }
        (delivered, undelivered)
    }
}

#[async_trait]
impl EventSink for EventBridgeSink {
    #[tracing::instrument(skip(self, events), fields(bus = %self.bus, count = events.len()))]
    async fn publish(&self, events: &[Event]) -> PublishReport {
        let details: Vec<String> = events.iter().map(|e| e.detail.to_string()).collect();
        let sizes: Vec<usize> = events
            .iter()
            .zip(&details)
            .map(|(e, d)| entry_size(e.detail_type.as_str(), d))
            .collect();
        let (batches, too_large) = plan_batches(&sizes, MAX_ENTRIES_PER_CALL, MAX_BYTES_PER_CALL);
        let mut report = PublishReport::default();
        report
            .undelivered
            .extend(too_large.into_iter().map(|i| Undelivered {
                index: i,
                detail_type: events[i].detail_type,
                error_code: "EntryTooLarge".into(),
                message: format!("{} bytes, at most {MAX_BYTES_PER_CALL} per entry", sizes[i]),
            }));
        for batch in &batches {
            let (delivered, undelivered) = self.send_batch(events, &details, batch).await;
            report.delivered += delivered;
            report.undelivered.extend(undelivered);
        }
        report.undelivered.sort_by_key(|u| u.index);
        if !report.undelivered.is_empty() {
            tracing::error!(
                undelivered = report.undelivered.len(),
                "events could not be delivered"
            );
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::events::DetailType;
    use std::sync::Mutex as StdMutex;

    #[test]
    fn batches_respect_entry_and_byte_limits() {
        let (b, big) = plan_batches(&[1; 25], 10, 1000);
        assert_eq!(b.iter().map(Vec::len).collect::<Vec<_>>(), [10, 10, 5]);
        assert!(big.is_empty());
        let (b, big) = plan_batches(&[400, 400, 400, 1200, 100], 10, 1000);
        assert_eq!(b, vec![vec![0, 1], vec![2, 4]]);
        assert_eq!(big, vec![3]);
        // Exactly at the limit fits.
        let (b, _) = plan_batches(&[500, 500, 1], 10, 1000);
        assert_eq!(b, vec![vec![0, 1], vec![2]]);
    }

    /// Fails the entries whose detail contains `"fail":N` until N tries saw them.
    struct Flaky {
        seen: StdMutex<HashMap<String, u32>>,
        calls: std::sync::Arc<StdMutex<Vec<usize>>>,
    }

    #[async_trait]
    impl PutEvents for Flaky {
        async fn put(
            &self,
            entries: Vec<PutEventsRequestEntry>,
        ) -> Result<EntryResults, (String, String)> {
            self.calls.lock().unwrap().push(entries.len());
            let mut seen = self.seen.lock().unwrap();
            Ok(entries
                .iter()
                .map(|e| {
                    let d: serde_json::Value = serde_json::from_str(e.detail().unwrap()).unwrap();
                    let n = seen.entry(d["id"].to_string()).or_insert(0);
                    *n += 1;
                    let fail_times = d["fail"].as_u64().unwrap_or(0) as u32;
                    if d["bad"].as_bool() == Some(true) {
                        Some(("MalformedDetail".into(), "bad".into()))
                    } else if *n <= fail_times {
                        Some(("ThrottlingException".into(), "slow down".into()))
                    } else {
                        None
                    }
                })
                .collect())
        }
    }

    #[tokio::test]
    async fn failed_entries_are_retried_alone_and_permanent_ones_reported() {
        let calls = std::sync::Arc::new(StdMutex::new(Vec::new()));
        let sink = EventBridgeSink {
            client: Box::new(Flaky {
                seen: StdMutex::new(HashMap::new()),
                calls: calls.clone(),
            }),
            bus: "b".into(),
            backoff: Backoff {
                max_attempts: 3,
                base: Duration::from_millis(1),
                cap: Duration::from_millis(2),
            },
        };
        let mut events: Vec<Event> = (0..12)
            .map(|i| Event {
                detail_type: DetailType::TransferIngested,
                detail: serde_json::json!({"id": i}),
            })
            .collect();
        events[1].detail["fail"] = 1.into(); // recovers on the 2nd try
        events[11].detail["fail"] = 5.into(); // never within 3 attempts
        events[4].detail["bad"] = true.into(); // permanent
        let report = sink.publish(&events).await;
        assert_eq!(report.delivered, 10);
        let idx: Vec<(usize, &str)> = report
            .undelivered
            .iter()
            .map(|u| (u.index, u.error_code.as_str()))
            .collect();
        assert_eq!(idx, [(4, "MalformedDetail"), (11, "ThrottlingException")]);
        // Batch of 10, then only the failed entry; batch of 2, then entry 11 alone twice.
        assert_eq!(*calls.lock().unwrap(), [10, 1, 2, 1, 1]);
    }
}
