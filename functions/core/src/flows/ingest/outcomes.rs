//! Where a run's per-file outcomes go, in memory that does not grow with the
//! drop: each is counted and, while there is room, listed in the response
//! ([`IngestReport::record`]); once a run has more outcomes than the response
//! lists, every one of them (the listed ones too, each file once) goes as a
//! JSON line into the run report
//! `<source_dir>/.reports/<route>/<yyyymmddThhmmssZ>-<invocation>.jsonl` on
//! the route's SFTP server. The report is one `put_atomic` fed through a
//! bounded channel while the run goes on: it appears complete at the end of
//! the run or not at all, and a run never holds more than a few chunks of it.
//! The newest [`REPORTS_KEPT`] reports of a route are kept.

use bytes::{BufMut, Bytes, BytesMut};
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::{FileReport, IngestReport};
use crate::domain::paths::RemotePath;
use crate::domain::route::MAX_FUNCTION_TIMEOUT_SECS;
use crate::ports::file_store::{ByteStream, EntryKind, FileStore, RenameMode};

/// The run reports' folder in the source directory (a dot-folder: listings
/// skip it, like `.inflight/`).
pub const REPORTS_DIR: &str = ".reports";
/// Run reports kept per route; older ones are removed after a new one is
/// written.
pub const REPORTS_KEPT: usize = 30;
/// Lines are sent to the writer in chunks of about this size.
const CHUNK_BYTES: usize = 64 * 1024;
/// Chunks in flight between the run and the writer.
const CHANNEL_CHUNKS: usize = 8;

/// Where a run's report goes.
#[derive(Debug, Clone)]
pub(super) struct ReportTarget {
    dir: RemotePath,
    path: RemotePath,
}

impl ReportTarget {
    /// The report of `route`'s run `invocation_id` started at `now`, in the
    /// source directory `src`.
    pub(super) fn new(
        src: &RemotePath,
        route: &str,
        invocation_id: &str,
        now: DateTime<Utc>,
    ) -> Result<Self, String> {
        let inv: String = invocation_id
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
            .take(64)
            .collect();
        let name = format!(
            "{}-{}.jsonl",
            now.format("%Y%m%dT%H%M%SZ"),
            if inv.is_empty() { "run" } else { &inv }
        );
        let dir = src
            .join(REPORTS_DIR)
            .and_then(|d| d.join(route))
            .map_err(|e| format!("no report folder for route {route}: {e}"))?;
        let path = dir
            .join(name.as_bytes())
            .map_err(|e| format!("no report name {name:?}: {e}"))?;
        Ok(Self { dir, path })
    }

    /// The report's path as responses show paths (from the SFTP root).
    pub(super) fn shown(&self) -> String {
        self.path.relative_to_root()
    }
}

/// What the writer did.
#[derive(Debug)]
pub(super) enum Written {
    /// The run listed every outcome in the response: no report.
    NotNeeded,
    Done,
    Failed(String),
}

/// The run's side of the report: a sink for outcomes.
pub(super) struct Outcomes {
    pub(super) report: IngestReport,
    /// `None` once the writer is gone (or never could start).
    tx: Option<mpsc::Sender<Bytes>>,
    /// Why there is no writer before anything was sent to it.
    no_writer: Option<String>,
    buf: BytesMut,
    /// The listed outcomes as they came (the response's copies may have
    /// their reasons cut), until the report starts with them.
    early: Vec<FileReport>,
    /// Lines given to the report so far; `None` until the first is.
    lines: Option<u64>,
    /// The report stopped taking lines (its writer failed).
    broken: bool,
    /// Lines given to the report before it stopped taking them.
    lines_kept: u64,
}

/// A sender for [`Outcomes::new`] and the receiver for [`write_report`].
pub(super) fn channel() -> (mpsc::Sender<Bytes>, mpsc::Receiver<Bytes>) {
    mpsc::channel(CHANNEL_CHUNKS)
}

impl Outcomes {
    /// `tx` feeds the writer; `Err` says why no report can be written.
    pub(super) fn new(report: IngestReport, tx: Result<mpsc::Sender<Bytes>, String>) -> Self {
        let (tx, no_writer) = match tx {
            Ok(tx) => (Some(tx), None),
            Err(e) => (None, Some(e)),
        };
        Self {
            report,
            tx,
            no_writer,
            buf: BytesMut::new(),
            early: Vec::new(),
            lines: None,
            broken: false,
            lines_kept: 0,
        }
    }

    /// Takes one file's outcome.
    pub(super) async fn push(&mut self, f: FileReport) {
        let listed = self.report.record(&f);
        if self.lines.is_none() {
            if listed {
                self.early.push(f);
                return;
            }
            // The first outcome the response cannot list: the report starts,
            // with everything listed so far.
            self.lines = Some(0);
            for g in std::mem::take(&mut self.early) {
                self.line(&g).await;
            }
        }
        self.line(&f).await;
    }

    async fn line(&mut self, f: &FileReport) {
        if self.tx.is_none() || self.broken {
            if !self.broken {
                self.broken = true;
                self.lines_kept = self.lines.unwrap_or(0);
            }
            // The log keeps what the report cannot.
            warn!(line = %serde_json::to_string(f).unwrap_or_default(), "file outcome not in the run report");
            return;
        }
        let mut w = (&mut self.buf).writer();
        if serde_json::to_writer(&mut w, f).is_err() {
            warn!(path = %f.source_path, "file outcome not serialisable for the run report");
            return;
        }
        self.buf.put_u8(b'\n');
        self.lines = Some(self.lines.unwrap_or(0) + 1);
        if self.buf.len() >= CHUNK_BYTES {
            self.flush().await;
        }
    }

    async fn flush(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let chunk = self.buf.split().freeze();
        let sent = match &self.tx {
            Some(tx) => tx.send(chunk).await.is_ok(),
            None => false,
        };
        if !sent {
            // The writer gave up; its reason comes with its result. These
            // lines are lost to the report, not to the log.
            if !self.broken {
                self.broken = true;
                self.lines_kept = self.lines.unwrap_or(0);
            }
            self.tx = None;
            warn!(
                lines = self.lines.unwrap_or(0),
                "the run report stopped taking lines; further outcomes go to the log"
            );
        }
    }

    /// Ends the report's input (the writer then publishes it). Must be
    /// called before the writer is awaited to its end.
    pub(super) async fn close(&mut self) {
        if self.lines.is_some() {
            self.flush().await;
        }
        self.tx = None;
    }

    /// The response, with the writer's result.
    pub(super) fn finish(
        mut self,
        target: Option<&ReportTarget>,
        written: Written,
    ) -> IngestReport {
        let o = &mut self.report.outcomes;
        let lacks = if self.broken {
            format!(
                "outcomes from line {} on are in the log (`file outcome not in the run report`); ingested and failed files are in the events too",
                self.lines_kept + 1
            )
        } else {
            "ingested and failed files are in the events".to_owned()
        };
        match (written, target) {
            (Written::Done, Some(t)) if !self.broken => {
                o.report = Some(t.shown());
                o.report_lines = self.lines;
            }
            (Written::NotNeeded, _) if self.lines.is_none() => {}
            (Written::Failed(e), _) => o.report_error = Some(format!("{e}; {lacks}")),
            _ => {
                let why = self
                    .no_writer
                    .take()
                    .unwrap_or_else(|| "the run report was not completed".to_owned());
                o.report_error = Some(format!("{why}; {lacks}"));
            }
        }
        if let Some(e) = &o.report_error {
            warn!(error = %e, "run report not written");
        }
        self.report
    }
}

/// Writes the run report from what `rx` receives, if anything: creates the
/// folder, streams into one atomic put, then prunes the route's old reports.
pub(super) async fn write_report(
    store: &dyn FileStore,
    target: Option<&ReportTarget>,
    mut rx: mpsc::Receiver<Bytes>,
    now: DateTime<Utc>,
) -> Written {
    let Some(first) = rx.recv().await else {
        return Written::NotNeeded;
    };
    let Some(t) = target else {
        return Written::Failed("no report target".into());
    };
    if let Err(e) = store.mkdir_all(&t.dir).await {
        return Written::Failed(format!("run report folder {}: {e}", t.dir));
    }
    let body: ByteStream = Box::pin(
        futures_util::stream::once(async move { Ok(first) })
            .chain(tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok)),
    );
    match store
        .put_atomic(&t.path, body, None, RenameMode::NoReplace)
        .await
    {
        Ok(r) => {
            info!(report = %t.path, bytes = r.size, "run report written");
            prune(store, &t.dir, now).await;
            Written::Done
        }
        Err(e) => Written::Failed(format!("run report {}: {e}", t.path)),
    }
}

/// Keeps the newest [`REPORTS_KEPT`] reports in `dir` (names start with
/// their UTC time, so name order is age order) and removes temporary files
/// of writers that cannot still be running.
async fn prune(store: &dyn FileStore, dir: &RemotePath, now: DateTime<Utc>) {
    let entries = match store.list(dir).await {
        Ok(e) => e,
        Err(e) => {
            warn!(dir = %dir, error = %e, "run reports not pruned");
            return;
        }
    };
    let mut reports = Vec::new();
    for e in entries {
        if e.meta.kind != EntryKind::File {
            continue;
        }
        if e.name.first() == Some(&b'.') {
            let stale = e
                .meta
                .mtime
                .is_some_and(|t| (now - t).num_seconds() > 2 * MAX_FUNCTION_TIMEOUT_SECS as i64);
            if stale && let Err(err) = store.remove(&e.path).await {
                warn!(path = %e.path, error = %err, "stale temporary report not removed");
            }
        } else if e.name.ends_with(b".jsonl") {
            reports.push(e);
        }
    }
    if reports.len() <= REPORTS_KEPT {
        return;
    }
    reports.sort_by(|a, b| a.name.cmp(&b.name));
    let old = reports.len() - REPORTS_KEPT;
    for e in reports.into_iter().take(old) {
        if let Err(err) = store.remove(&e.path).await {
            warn!(path = %e.path, error = %err, "old run report not removed");
        }
    }
}
