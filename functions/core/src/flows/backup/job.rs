//! Verify and restore as jobs that outlast one invocation, like a snapshot:
//! the manifest is read line by line in order, a few items at a time; when
//! the deadline nears no new item is started, the ones under way finish, the
//! job's checkpoint (how many manifest lines are done, the counts, the first
//! problems) is saved on SFTP and a `Snapshot Continuation` event whose
//! detail is the same manual event plus `"resume": "<job>"` goes out (the
//! rule of `infra/continuation.tf` passes it back as it is). The next
//! invocation skips the lines done and goes on; nothing is checked or
//! restored twice.
//!
//! Each job writes its full outcome (every problem, every restored document)
//! as JSON lines under `{directory}/reports/{kind}-{snapshot}-{job}/`, a part
//! per flush, and `report.json` at the end; the response and the events carry
//! counts, the first [`LISTED_MAX`] entries and that path, so they stay small
//! at any size. While a job is unfinished, a marker beside the snapshots
//! (`domain::backup::job_marker`) keeps retention off the snapshot it reads.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{BackupContext, BackupError};
use crate::domain::backup::{Lease, job_marker};
use crate::domain::paths::RemotePath;
use crate::flows::file_lease::{self, Acquired, Held};
use crate::ports::file_store::{FileStoreError, RenameMode};

/// Entries listed in a response or event; the rest are counted and on SFTP.
pub const LISTED_MAX: usize = 100;
/// Report lines held before they are written out as a part.
const FLUSH_EVERY: usize = 1000;
pub const REPORTS_DIR: &str = "reports";
const JOB_CHECKPOINT: &str = ".checkpoint.json";
const CHECKPOINT_LIMIT: u64 = 16 << 20;

/// Where a job stands, saved between invocations.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobCheckpoint<S> {
    pub job: String,
    pub snapshot_id: String,
    /// Manifest lines (of `snapshot_id`) fully handled.
    pub lines_done: u64,
    pub invocations: u32,
    pub started_at: DateTime<Utc>,
    /// Report parts written.
    pub report_parts: u32,
    pub state: S,
}

/// A running job: its directory, checkpoint and unwritten report lines.
pub struct Job<S> {
    pub dir: RemotePath,
    /// The marker beside the snapshots that keeps retention off this one.
    marker: RemotePath,
    pub cp: JobCheckpoint<S>,
    pending: String,
    pending_lines: usize,
}

/// What [`begin`] found.
pub enum Begin<S> {
    Run(Box<Job<S>>, Held<Lease>),
    /// Another invocation runs this job (or a job of the same kind on the
    /// same snapshot and target).
    Busy(Option<Lease>),
    /// A continuation whose job has no checkpoint: it finished (a duplicate
    /// event) or never existed.
    Gone(String),
}

pub fn report_dir(
    dir: &RemotePath,
    kind: &str,
    snapshot_id: &str,
    job: &str,
) -> Result<RemotePath, BackupError> {
    Ok(dir
        .join(REPORTS_DIR)?
        .join(format!("{kind}-{snapshot_id}-{job}"))?)
}

/// Takes the job's lease (`lease_key`, e.g. `verify-{snapshot}`) and loads or
/// starts its checkpoint.
pub async fn begin<S: Serialize + DeserializeOwned + Default>(
    cx: &BackupContext<'_>,
    dir: &RemotePath,
    kind: &str,
    lease_key: &str,
    snapshot_id: &str,
    resume: Option<&str>,
) -> Result<Begin<S>, BackupError> {
    cx.store.mkdir_all(dir).await?;
    let now = (cx.clock)();
    let lease = Lease {
        owner: cx.invocation_id.to_owned(),
        until: cx.lease_until(now),
    };
    let held = match file_lease::acquire(
        cx.store,
        &dir.join(format!(".lease-{lease_key}"))?,
        lease,
        &format!("{:016x}", fastrand::u64(..)),
        now,
    )
    .await?
    {
        Acquired::Held(h) => h,
        Acquired::Busy(l) => return Ok(Begin::Busy(l)),
    };
    let r = load_or_start(cx, dir, kind, snapshot_id, resume, now).await;
    match r {
        Ok(Some(job)) => Ok(Begin::Run(Box::new(job), held)),
        Ok(None) => {
            file_lease::release(cx.store, &held).await;
            Ok(Begin::Gone(resume.unwrap_or_default().to_owned()))
        }
        Err(e) => {
            file_lease::release(cx.store, &held).await;
            Err(e)
        }
    }
}

async fn load_or_start<S: Serialize + DeserializeOwned + Default>(
    cx: &BackupContext<'_>,
    dir: &RemotePath,
    kind: &str,
    snapshot_id: &str,
    resume: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Option<Job<S>>, BackupError> {
    match resume {
        Some(job) => {
            let jdir = report_dir(dir, kind, snapshot_id, job)?;
            let path = jdir.join(JOB_CHECKPOINT)?;
            let bytes = match cx.store.read_small(&path, CHECKPOINT_LIMIT).await {
                Ok(b) => b,
                Err(FileStoreError::NotFound { .. }) => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            let mut cp: JobCheckpoint<S> =
                serde_json::from_slice(&bytes).map_err(|e| BackupError::Corrupt {
                    path: path.to_string(),
                    problem: format!("job checkpoint is not valid: {e}"),
                })?;
            cp.invocations += 1;
            Ok(Some(Job {
                marker: dir.join(job_marker(kind, snapshot_id, job))?,
                dir: jdir,
                cp,
                pending: String::new(),
                pending_lines: 0,
            }))
        }
        None => {
            let job = format!(
                "{}-{:08x}",
                crate::domain::backup::snapshot_id(now),
                fastrand::u32(..)
            );
            let jdir = report_dir(dir, kind, snapshot_id, &job)?;
            cx.store.mkdir_all(&jdir).await?;
            // Retention keeps the snapshot while the marker is there.
            cx.store
                .write_small(
                    &dir.join(job_marker(kind, snapshot_id, &job))?,
                    Bytes::new(),
                    RenameMode::Replace,
                )
                .await?;
            let j = Job {
                marker: dir.join(job_marker(kind, snapshot_id, &job))?,
                dir: jdir,
                cp: JobCheckpoint {
                    job,
                    snapshot_id: snapshot_id.to_owned(),
                    lines_done: 0,
                    invocations: 1,
                    started_at: now,
                    report_parts: 0,
                    state: S::default(),
                },
                pending: String::new(),
                pending_lines: 0,
            };
            Ok(Some(j))
        }
    }
}

impl<S: Serialize> Job<S> {
    /// Adds one line to the full report (written out every so often).
    pub async fn report(
        &mut self,
        cx: &BackupContext<'_>,
        entry: &impl Serialize,
    ) -> Result<(), BackupError> {
        let line = serde_json::to_string(entry).map_err(|e| BackupError::Corrupt {
            path: self.dir.to_string(),
            problem: e.to_string(),
        })?;
        self.pending.push_str(&line);
        self.pending.push('\n');
        self.pending_lines += 1;
        if self.pending_lines >= FLUSH_EVERY {
            self.flush(cx).await?;
        }
        Ok(())
    }

    /// Writes the held report lines as the next part.
    async fn flush(&mut self, cx: &BackupContext<'_>) -> Result<(), BackupError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let n = self.cp.report_parts + 1;
        let text = std::mem::take(&mut self.pending);
        cx.store
            .write_small(
                &self.dir.join(format!("{n:06}.jsonl"))?,
                Bytes::from(text),
                RenameMode::Replace,
            )
            .await?;
        self.cp.report_parts = n;
        self.pending_lines = 0;
        Ok(())
    }

    /// Report lines flushed, then the checkpoint saved.
    pub async fn save(&mut self, cx: &BackupContext<'_>) -> Result<(), BackupError> {
        self.flush(cx).await?;
        let text = serde_json::to_vec(&self.cp).map_err(|e| BackupError::Corrupt {
            path: self.dir.to_string(),
            problem: e.to_string(),
        })?;
        cx.store
            .write_small(
                &self.dir.join(JOB_CHECKPOINT)?,
                Bytes::from(text),
                RenameMode::Replace,
            )
            .await?;
        Ok(())
    }

    /// The job is done: report flushed, `report.json` written, checkpoint
    /// removed. Returns the report directory.
    pub async fn finish(
        &mut self,
        cx: &BackupContext<'_>,
        summary: &impl Serialize,
    ) -> Result<String, BackupError> {
        self.flush(cx).await?;
        let text = serde_json::to_vec_pretty(summary).map_err(|e| BackupError::Corrupt {
            path: self.dir.to_string(),
            problem: e.to_string(),
        })?;
        cx.store
            .write_small(
                &self.dir.join("report.json")?,
                Bytes::from(text),
                RenameMode::Replace,
            )
            .await?;
        for done in [self.dir.join(JOB_CHECKPOINT)?, self.marker.clone()] {
            match cx.store.remove(&done).await {
                Ok(()) | Err(FileStoreError::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(self.dir.to_string())
    }
}

impl<S> Job<S> {
    /// After a failure no later invocation will resume this job (permanent,
    /// or a first invocation whose retry starts a new job): its checkpoint
    /// and marker go, so retention is not held back by it. Best effort.
    pub async fn abandon(&self, cx: &BackupContext<'_>) {
        let Ok(cp) = self.dir.join(JOB_CHECKPOINT) else {
            return;
        };
        for p in [cp, self.marker.clone()] {
            match cx.store.remove(&p).await {
                Ok(()) | Err(FileStoreError::NotFound { .. }) => {}
                Err(e) => {
                    tracing::warn!(path = %p, error = %e, "cannot remove an abandoned job's file")
                }
            }
        }
    }
}

/// Whether a job that failed with `e` is left for a retry to resume: only a
/// retryable failure of a continuation (its event names the job).
pub fn resumable(e: &BackupError, resume: Option<&str>) -> bool {
    e.is_retryable() && resume.is_some()
}

/// Keeps the first [`LISTED_MAX`] entries and counts all.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capped<T> {
    pub listed: Vec<T>,
    pub total: u64,
}

impl<T> Default for Capped<T> {
    fn default() -> Self {
        Capped {
            listed: Vec::new(),
            total: 0,
        }
    }
}

impl<T> Capped<T> {
    pub fn push(&mut self, t: T) {
        self.total += 1;
        if self.listed.len() < LISTED_MAX {
            self.listed.push(t);
        }
    }

    /// How many are counted but not listed.
    pub fn unlisted(&self) -> u64 {
        self.total - self.listed.len() as u64
    }
}

/// An item of [`drive`].
pub enum Driven<R> {
    /// The next unit's result, in source order.
    Done(R),
    /// The deadline neared: no unit was started after this point, every one
    /// started is above. The stream ends here.
    Deadline,
    /// Reading the source failed (the units before it are above).
    Failed(BackupError),
}

/// Runs `work` over the units of `source`, `parallelism` at a time, results
/// in source order. Once the deadline nears (and at least one unit is done
/// in this invocation) no new unit starts; those started still finish.
pub fn drive<'a, T, R, Fut>(
    cx: &'a BackupContext<'a>,
    parallelism: usize,
    source: impl futures_util::Stream<Item = Result<T, BackupError>> + Unpin + Send + 'a,
    work: impl Fn(T) -> Fut + Send + 'a,
) -> impl futures_util::Stream<Item = Driven<R>> + Send + 'a
where
    T: Send + 'a,
    R: Send + 'a,
    Fut: std::future::Future<Output = R> + Send + 'a,
{
    use futures_util::StreamExt;
    use futures_util::stream::FuturesOrdered;
    struct St<S, W, F: std::future::Future> {
        source: S,
        work: W,
        inflight: FuturesOrdered<F>,
        /// No more units: the source ended, failed, or the deadline neared.
        closed: bool,
        deadline: bool,
        failure: Option<BackupError>,
        done: u64,
        ended: bool,
    }
    let st = St {
        source,
        work,
        inflight: FuturesOrdered::new(),
        closed: false,
        deadline: false,
        failure: None,
        done: 0,
        ended: false,
    };
    futures_util::stream::unfold(st, move |mut st| async move {
        if st.ended {
            return None;
        }
        while !st.closed && st.inflight.len() < parallelism.max(1) {
            if st.done > 0 && cx.deadline_near() {
                st.closed = true;
                st.deadline = true;
                break;
            }
            match st.source.next().await {
                Some(Ok(t)) => st.inflight.push_back((st.work)(t)),
                Some(Err(e)) => {
                    st.closed = true;
                    st.failure = Some(e);
                }
                None => st.closed = true,
            }
        }
        match st.inflight.next().await {
            Some(r) => {
                st.done += 1;
                Some((Driven::Done(r), st))
            }
            None => {
                st.ended = true;
                if let Some(e) = st.failure.take() {
                    Some((Driven::Failed(e), st))
                } else if st.deadline {
                    Some((Driven::Deadline, st))
                } else {
                    None
                }
            }
        }
    })
}
