//! Validate-and-plan: what a run of an ingest route would do with the files
//! now in its source directory, decided by the same domain rules the run
//! uses (`entry_role`, readiness, metadata, classification, placement,
//! conflict resolution), without changing anything.
//!
//! A plan only lists, stats and reads on the SFTP server (a document's first
//! bytes for its type, its sidecar and index rows, and, when its target name
//! is taken, the whole file for its SHA-256) and only looks up in the ECM
//! (workspaces, folders by name, the existing document's transfer history
//! and versions). It claims, uploads, creates, moves, deletes and publishes
//! nothing; the rename probe a run starts with (which writes) is not made.
//!
//! Where the run decides on facts a plan cannot have, the plan says so: a
//! file that needs a second look (`settle_secs`) is looked at again after
//! the settle interval, as the run does; files beyond `limits.max_files` /
//! `max_bytes` are reported as left for a later run; two files of the drop
//! with the same target are placed one after the other by the run, so the
//! second is reported with the first one's name. Under `add-version` the
//! run also compares the file with older versions of the same size (it
//! downloads them); a plan compares only with the recorded SHA-256, so it
//! may say `add-version` where the run finds the bytes already there and
//! skips.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use chrono::{SecondsFormat, TimeZone, Utc};
use serde::Serialize;

use super::ingest::{
    IngestDeps, IngestError, Listed, ReadyDoc, RunContext, archive_root, assess_all, hash_rest,
    join_all, read_head, rel_text, text, walk,
};
use crate::domain::classify::{self, Candidate, HEAD_LEN, MAX_INDEX_BYTES, MAX_SIDECAR_BYTES};
use crate::domain::names::hidden_name_problem;
use crate::domain::paths::RemotePath;
use crate::domain::placement::{
    self, CategoryMap, ConflictAction, ConflictPolicy, WorkspaceTarget,
};
use crate::domain::readiness::{self, Evidence, Observation, Readiness};
use crate::domain::route::{
    EntryRole, FAILED_DIR, INFLIGHT_DIR, ReadinessConfig, Route, SidecarFormat,
};
use crate::domain::transfer::{TransferFacts, idempotency_key};
use crate::ports::ecm::{self as ecm_port, BusinessObject, EcmError, NodeId};
use crate::ports::file_store::{EntryKind, FileStoreError};

/// What a run would do with one listed file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PlanAction {
    /// A new document (under `document_name`).
    Create,
    /// A new version of the document already there.
    AddVersion,
    /// Nothing uploaded: the content is there already; the source is archived.
    Skip,
    /// A permanent failure: the file would go to `failed/` with `reason`.
    Fail,
    /// Not ready: left in place for a later run.
    Wait,
    /// Ready, but beyond this run's limits: a later run takes it.
    NextRun,
    /// Not a document of its own (sidecar, done-marker, index): it goes
    /// with the document(s) it belongs to.
    Companion,
    /// Not this route's input (excluded, not included, a subdirectory of a
    /// non-recursive route).
    Ignore,
}

/// How the target workspace is found, and whether it is there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkspacePlan {
    /// The look-up, e.g. `business object SAP/LFA1/4711 (type 100)`.
    pub lookup: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<i64>,
    pub name: String,
    pub exists: bool,
    /// When it is not there: the template it would be created from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub create_from_template: Option<i64>,
}

/// One folder below the workspace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FolderStep {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<i64>,
    pub exists: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FolderPlan {
    /// `Workspace name/Folder/Sub`, the path a person sees.
    pub path: String,
    /// The target container's id, when it exists.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<i64>,
    pub steps: Vec<FolderStep>,
}

/// The document already carrying the target name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExistingPlan {
    pub node_id: i64,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latest_version: Option<u32>,
}

/// One listed file and what a run would do with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FilePlan {
    /// Relative to `source_dir`, as a run reports it.
    pub source_path: String,
    pub size: u64,
    /// `document`, `sidecar`, `done-marker`, `index` or `ignored`.
    pub role: &'static str,
    pub action: PlanAction,
    /// Why: not ready, the failure, what it is a companion of, the conflict.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ready: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sidecar: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file_type: Option<&'static str>,
    /// The matching rule; `(fallback)` when the route's fallback places it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// From its sidecar and/or its index row.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<classify::Metadata>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workspace: Option<WorkspacePlan>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub folder: Option<FolderPlan>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub document_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_existing: Option<ConflictPolicy>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub existing: Option<ExistingPlan>,
    /// Category values by category id and attribute key (`{cat}_{attr}`);
    /// the transfer history's SHA-256 and ingest time are set by the run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub categories: Option<CategoryMap>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rm_classification: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hold: Option<i64>,
}

impl FilePlan {
    fn new(l: &Listed, role: &'static str, action: PlanAction) -> Self {
        FilePlan {
            source_path: l.rel.clone(),
            size: l.size,
            role,
            action,
            reason: None,
            ready: None,
            sidecar: None,
            file_type: None,
            rule: None,
            metadata: None,
            workspace: None,
            folder: None,
            document_name: None,
            on_existing: None,
            existing: None,
            categories: None,
            rm_classification: None,
            hold: None,
        }
    }

    fn because(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }

    fn fail(mut self, reason: impl Into<String>) -> Self {
        self.action = PlanAction::Fail;
        self.reason = Some(reason.into());
        self
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PlanCounts {
    pub create: u32,
    pub add_version: u32,
    pub skip: u32,
    pub fail: u32,
    pub wait: u32,
    pub next_run: u32,
    pub companion: u32,
    pub ignore: u32,
}

/// The plan of one route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IngestPlan {
    /// Always `true`: a plan changes nothing.
    pub dry_run: bool,
    pub route: String,
    /// The directory listed on the SFTP server.
    pub source_dir: String,
    pub planned_at: String,
    /// Claim directories earlier runs left in `.inflight/`, which a run
    /// looks at first (finishing or releasing them); not planned here.
    pub claims_in_progress: u32,
    /// Files in `failed/`, waiting for a retry event.
    pub failed_waiting: u32,
    pub counts: PlanCounts,
    /// Every listed file (dot-files and work folders aside), in path order,
    /// up to [`MAX_LISTED_FILES`]; `counts` covers them all.
    pub files: Vec<FilePlan>,
    /// Files planned and counted but left out of `files` (a Lambda response
    /// is at most 6 MB).
    pub files_omitted: u32,
}

/// Files a plan lists one by one (about 1 KiB each in JSON).
pub const MAX_LISTED_FILES: usize = 2000;

/// A look-up in the ECM failed in a way a retry may cure; other ECM
/// answers become the file's reason.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Ingest(#[from] IngestError),
    #[error("route {route}: {what}: {source}")]
    Ecm {
        route: String,
        what: String,
        #[source]
        source: EcmError,
    },
    #[error("route {route}: {what}: {source}")]
    Sftp {
        route: String,
        what: String,
        #[source]
        source: FileStoreError,
    },
}

impl PlanError {
    pub fn is_retryable(&self) -> bool {
        match self {
            PlanError::Ingest(e) => e.is_retryable(),
            PlanError::Ecm { source, .. } => source.is_retryable(),
            PlanError::Sftp { source, .. } => source.is_retryable(),
        }
    }
}

/// A folder path's steps and the target container's id, when it exists.
type FolderLookup = (Vec<FolderStep>, Option<i64>);

/// A failure of one file's planning: the file's reason, or the whole plan's.
enum Stop {
    Reason(String),
    Plan(PlanError),
}

struct Planner<'a> {
    route: &'a Route,
    deps: &'a IngestDeps<'a>,
    src: RemotePath,
    index_rows: BTreeMap<String, classify::Metadata>,
    refused_rows: BTreeMap<String, (String, classify::RefusedRow)>,
    /// Workspaces looked up, by their rendered target.
    workspaces: BTreeMap<String, WorkspacePlan>,
    /// Folders looked up, by (workspace id, segments).
    folders: BTreeMap<(i64, Vec<String>), FolderLookup>,
    /// Targets (folder path, lower-case name) earlier files of this plan take.
    targets: BTreeMap<(String, String), String>,
}

fn ecm_stop(route: &Route, what: String, e: EcmError) -> Stop {
    if e.is_retryable() {
        Stop::Plan(PlanError::Ecm {
            route: route.name().to_owned(),
            what,
            source: e,
        })
    } else {
        Stop::Reason(format!("{what}: {e}"))
    }
}

fn sftp_stop(route: &Route, what: String, e: FileStoreError) -> Stop {
    if e.is_retryable() {
        Stop::Plan(PlanError::Sftp {
            route: route.name().to_owned(),
            what,
            source: e,
        })
    } else {
        Stop::Reason(format!("{what}: {e}"))
    }
}

/// Plans one run of `route` (see the module docs). `ctx` bounds the second
/// look a settle interval needs.
pub async fn ingest(
    route: &Route,
    deps: &IngestDeps<'_>,
    ctx: &RunContext,
) -> Result<IngestPlan, PlanError> {
    let cfg = &route.config;
    let src = super::ingest::source_dir(route, deps.store)?;
    let list_err = |source| IngestError::List {
        route: cfg.name.clone(),
        dir: src.to_string(),
        source,
    };
    let mut skip_top: BTreeSet<&[u8]> = BTreeSet::new();
    skip_top.insert(FAILED_DIR.as_bytes());
    let archive = archive_root(route);
    if let Some(a) = &archive {
        skip_top.insert(a.as_bytes());
    }
    let mut listed = walk(deps.store, &src, cfg.recursive, &skip_top)
        .await
        .map_err(list_err)?;
    let mut at = deps.clock.now().timestamp();
    let mut ready = Vec::new();
    let mut waiting = Vec::new();
    // The plan keeps the listing (it reports on every entry), so the
    // assessment gets a copy.
    let observed = assess_all(
        route,
        listed.clone(),
        None,
        at,
        &mut ready,
        &mut waiting,
        true,
    );
    if cfg.readiness.settle_secs.is_some() && !waiting.is_empty() {
        let wait = waiting.iter().filter_map(|(_, w)| *w).max().unwrap_or(0);
        let left = ctx.deadline.saturating_duration_since(Instant::now());
        if wait > 0 && Duration::from_secs(wait) < left {
            tokio::time::sleep(Duration::from_secs(wait)).await;
            listed = walk(deps.store, &src, cfg.recursive, &skip_top)
                .await
                .map_err(list_err)?;
            let first_at = at;
            at = deps.clock.now().timestamp();
            ready.clear();
            waiting.clear();
            assess_all(
                route,
                listed.clone(),
                Some((&observed, first_at)),
                at,
                &mut ready,
                &mut waiting,
                false,
            );
        }
    }
    let claims_in_progress = count_entries(deps, &src, INFLIGHT_DIR).await;
    let failed_waiting = count_entries(deps, &src, FAILED_DIR).await;

    let mut planner = Planner {
        route,
        deps,
        src,
        index_rows: BTreeMap::new(),
        refused_rows: BTreeMap::new(),
        workspaces: BTreeMap::new(),
        folders: BTreeMap::new(),
        targets: BTreeMap::new(),
    };
    let mut files: BTreeMap<String, FilePlan> = BTreeMap::new();

    // Indexes first: their rows are documents' metadata.
    for l in &listed {
        if route.entry_role(&l.rel) == EntryRole::Index {
            let f = planner.index(l).await?;
            files.insert(l.rel.clone(), f);
        }
    }
    // Companions and ignored entries.
    for l in &listed {
        let f = match route.entry_role(&l.rel) {
            EntryRole::Index | EntryRole::Document => continue,
            EntryRole::Marker { document } => {
                FilePlan::new(l, "done-marker", PlanAction::Companion)
                    .because(format!("done-marker of {document}"))
            }
            EntryRole::Sidecar { document, .. } => {
                FilePlan::new(l, "sidecar", PlanAction::Companion)
                    .because(format!("sidecar of {document}"))
            }
            EntryRole::Ignored(why) => FilePlan::new(l, "ignored", PlanAction::Ignore).because(why),
        };
        files.insert(l.rel.clone(), f);
    }
    for ((rel, why), _) in &waiting {
        let size = listed.iter().find(|l| &l.rel == rel).map_or(0, |l| l.size);
        let mut f = FilePlan {
            size,
            ..FilePlan::new(
                &Listed {
                    segs: Vec::new(),
                    rel: rel.clone(),
                    size,
                    mtime: 0,
                },
                "document",
                PlanAction::Wait,
            )
        };
        f.ready = Some(false);
        f.reason = Some(why.clone());
        files.insert(rel.clone(), f);
    }
    // Ready documents in the order a run claims them, within its limits.
    let limits = route.limits();
    let (mut claimed, mut bytes) = (0u32, 0u64);
    for doc in ready {
        let l = doc.0.clone();
        let within =
            claimed < limits.max_files && (bytes == 0 || bytes + l.size <= limits.max_bytes);
        claimed += 1;
        bytes += l.size;
        let f = if within {
            planner.document(doc).await?
        } else {
            let mut f = FilePlan::new(&l, "document", PlanAction::NextRun).because(format!(
                "ready, but beyond one run's limits (limits.max_files {}, limits.max_bytes {}): a later run takes it",
                limits.max_files, limits.max_bytes
            ));
            f.ready = Some(true);
            f
        };
        files.insert(l.rel.clone(), f);
    }

    let mut counts = PlanCounts::default();
    for f in files.values() {
        let c = match f.action {
            PlanAction::Create => &mut counts.create,
            PlanAction::AddVersion => &mut counts.add_version,
            PlanAction::Skip => &mut counts.skip,
            PlanAction::Fail => &mut counts.fail,
            PlanAction::Wait => &mut counts.wait,
            PlanAction::NextRun => &mut counts.next_run,
            PlanAction::Companion => &mut counts.companion,
            PlanAction::Ignore => &mut counts.ignore,
        };
        *c += 1;
    }
    let planned_at = Utc
        .timestamp_opt(at, 0)
        .single()
        .unwrap_or_else(Utc::now)
        .to_rfc3339_opts(SecondsFormat::Secs, true);
    Ok(IngestPlan {
        dry_run: true,
        route: cfg.name.clone(),
        source_dir: planner.src.to_string(),
        planned_at,
        claims_in_progress,
        failed_waiting,
        counts,
        files_omitted: files.len().saturating_sub(MAX_LISTED_FILES) as u32,
        files: files.into_values().take(MAX_LISTED_FILES).collect(),
    })
}

/// Claim directories in `.inflight/`, or files (not reports) in `failed/`;
/// 0 when the folder does not exist.
async fn count_entries(deps: &IngestDeps<'_>, src: &RemotePath, dir: &str) -> u32 {
    let Ok(d) = src.join(dir) else { return 0 };
    match deps.store.list(&d).await {
        Ok(entries) => entries
            .iter()
            .filter(|e| e.name.first() != Some(&b'.'))
            .filter(|e| {
                dir == INFLIGHT_DIR
                    || (e.meta.kind == EntryKind::File && !e.name.ends_with(b".error.json"))
            })
            .count() as u32,
        Err(_) => 0,
    }
}

impl Planner<'_> {
    fn name(&self) -> String {
        self.route.name().to_owned()
    }

    async fn index(&mut self, l: &Listed) -> Result<FilePlan, PlanError> {
        let f = FilePlan::new(l, "index", PlanAction::Companion);
        let Some(index) = self.route.index.clone() else {
            return Ok(f);
        };
        let path = match join_all(&self.src, &l.segs) {
            Ok(p) => p,
            Err(e) => return Ok(f.fail(format!("index file is invalid: {e}"))),
        };
        let bytes = match self
            .deps
            .store
            .read_small(&path, MAX_INDEX_BYTES as u64)
            .await
        {
            Ok(b) => b,
            Err(e) if e.is_retryable() => {
                return Err(PlanError::Sftp {
                    route: self.name(),
                    what: format!("reading index {}", l.rel),
                    source: e,
                });
            }
            Err(e) => return Ok(f.fail(format!("index file is invalid: {e}"))),
        };
        match classify::parse_csv_index_rows(&l.rel, &bytes, &index) {
            Ok(parsed) => {
                let dir = l.rel.rsplit_once('/').map(|(d, _)| d.to_owned());
                let rows = classify::index_rows_by_path(&l.rel, parsed.rows);
                let mut reason = format!(
                    "index of {} document(s); archived with the last of them",
                    rows.len()
                );
                if !parsed.refused.is_empty() {
                    let lines: Vec<String> = parsed.refused.iter().map(|r| r.to_string()).collect();
                    reason.push_str(&format!(
                        "; {} row(s) refused: {}",
                        parsed.refused.len(),
                        lines.join("; ")
                    ));
                }
                for row in parsed.refused {
                    if let Some(file) = &row.file {
                        let rel = match &dir {
                            Some(d) => format!("{d}/{file}"),
                            None => file.clone(),
                        };
                        self.refused_rows.insert(rel, (l.rel.clone(), row));
                    }
                }
                self.index_rows.extend(rows);
                Ok(f.because(reason))
            }
            // The run fails an unreadable index once it is complete, and
            // waits for it before (it may still be being written).
            Err(e) => {
                let now = self.deps.clock.now().timestamp();
                let seen = Observation {
                    size: l.size,
                    mtime: l.mtime,
                };
                let complete = matches!(
                    readiness::assess(
                        &ReadinessConfig {
                            done_marker: None,
                            ..self.route.readiness().clone()
                        },
                        &Evidence {
                            now,
                            current: seen,
                            earlier: Some((seen, 0)),
                            marker_present: true,
                        }
                    ),
                    Readiness::Ready
                );
                if complete {
                    Ok(f.fail(format!("index file is invalid: {e}")))
                } else {
                    let mut f = f.because(format!("index not readable yet: {e}"));
                    f.action = PlanAction::Wait;
                    Ok(f)
                }
            }
        }
    }

    async fn document(&mut self, doc: ReadyDoc) -> Result<FilePlan, PlanError> {
        let (l, sidecar, refusal) = doc;
        let mut f = FilePlan::new(&l, "document", PlanAction::Create);
        f.ready = Some(true);
        f.sidecar = sidecar.as_ref().map(|s| s.1.rel.clone());
        if let Some(why) = refusal {
            return Ok(f.fail(why));
        }
        match self.decide(&l, sidecar.map(|s| *s), &mut f).await {
            Ok(()) => Ok(f),
            Err(Stop::Reason(r)) => Ok(f.fail(r)),
            Err(Stop::Plan(e)) => Err(e),
        }
    }

    async fn decide(
        &mut self,
        l: &Listed,
        sidecar: Option<(SidecarFormat, Listed)>,
        f: &mut FilePlan,
    ) -> Result<(), Stop> {
        let store = self.deps.store;
        let ecm = self.deps.ecm;
        let route = self.route;
        if let Some(problem) = hidden_name_problem(&l.rel) {
            return Err(Stop::Reason(problem));
        }
        if !self.index_rows.contains_key(&l.rel)
            && let Some((index, row)) = self.refused_rows.get(&l.rel)
        {
            return Err(Stop::Reason(format!(
                "its row in index {index} was refused ({row}); correct the index and retry the file"
            )));
        }
        let sidecar_bytes = match &sidecar {
            Some((format, s)) => {
                let p = join_all(&self.src, &s.segs).map_err(|e| Stop::Reason(e.to_string()))?;
                let b = store
                    .read_small(&p, MAX_SIDECAR_BYTES as u64)
                    .await
                    .map_err(|e| sftp_stop(route, format!("reading sidecar {}", s.rel), e))?;
                Some((*format, rel_text(&s.segs), b))
            }
            None => None,
        };
        let meta = classify::gather_metadata(
            route,
            &l.rel,
            sidecar_bytes
                .as_ref()
                .map(|(f, p, b)| (*f, p.as_str(), b.as_ref())),
            self.index_rows.get(&l.rel),
        )
        .map_err(|e| Stop::Reason(format!("invalid metadata: {e}")))?;
        f.metadata = Some(meta.clone());

        let path = join_all(&self.src, &l.segs).map_err(|e| Stop::Reason(e.to_string()))?;
        let head: Vec<u8> = {
            let mut h = store
                .open_read(&path)
                .await
                .map_err(|e| sftp_stop(route, format!("reading {}", l.rel), e))?;
            let chunks = read_head(&mut h)
                .await
                .map_err(|e| sftp_stop(route, format!("reading {}", l.rel), e))?;
            chunks
                .iter()
                .flat_map(|b| b.iter().copied())
                .take(HEAD_LEN)
                .collect()
        };
        let classification = classify::classify(
            route,
            &Candidate {
                rel_path: &l.rel,
                size: l.size,
                head: &head,
                meta: &meta,
            },
        )
        .map_err(|r| Stop::Reason(r.to_string()))?;
        f.file_type = Some(classification.detected.as_str());
        f.rule = Some(classification.rule.unwrap_or("(fallback)").to_owned());

        let now = self.deps.clock.now();
        let facts = TransferFacts {
            route: route.name().to_owned(),
            host: self.deps.sftp_host.clone(),
            source_path: l.rel.clone(),
            size: l.size,
            sha256: String::new(),
            received_at: Utc.timestamp_opt(l.mtime, 0).single().unwrap_or(now),
            ingested_at: now,
            invocation_id: "plan".to_owned(),
        };
        let mut plan = placement::plan(route, &classification, &facts, &meta)
            .map_err(|e| Stop::Reason(e.to_string()))?;
        let th = &route.config.transfer_history;
        if let Some(h) = plan.categories.get_mut(&th.category_id) {
            for id in [
                th.attributes.sha256,
                th.attributes.ingested_at,
                th.attributes.invocation_id,
            ] {
                h.remove(&format!("{}_{id}", th.category_id));
            }
        }
        f.document_name = Some(plan.document_name.clone());
        f.on_existing = Some(plan.on_existing);
        f.categories = Some(plan.categories.clone());
        f.rm_classification = plan.rm_classification;
        f.hold = plan.hold;

        let ws = self.workspace(&plan.workspace).await?;
        f.workspace = Some(ws.clone());
        if !ws.exists && ws.create_from_template.is_none() {
            return Err(Stop::Reason(format!(
                "no workspace for {} and the rule does not create one",
                ws.lookup
            )));
        }
        let (steps, folder_id) = match ws.id {
            Some(id) => self.folder(id, &plan.folder).await?,
            None => (
                plan.folder
                    .iter()
                    .map(|n| FolderStep {
                        name: n.clone(),
                        id: None,
                        exists: false,
                    })
                    .collect(),
                None,
            ),
        };
        let path_text = std::iter::once(ws.name.clone())
            .chain(plan.folder.iter().cloned())
            .collect::<Vec<_>>()
            .join("/");
        f.folder = Some(FolderPlan {
            path: path_text.clone(),
            id: folder_id,
            steps,
        });

        // A file earlier in this plan takes the same name: the run places
        // this one after it, so the policy applies to that document.
        let target = (path_text.clone(), plan.document_name.to_lowercase());
        if let Some(other) = self.targets.get(&target).cloned() {
            let note = format!("{other} goes to the same name first");
            return match plan.on_existing {
                ConflictPolicy::Fail => Err(Stop::Reason(format!(
                    "on_existing: {:?} will exist ({note})",
                    plan.document_name
                ))),
                ConflictPolicy::AddVersion => {
                    f.action = PlanAction::AddVersion;
                    f.reason = Some(note);
                    Ok(())
                }
                ConflictPolicy::Rename => {
                    f.reason = Some(format!("{note}; this one gets the next free numbered name"));
                    Ok(())
                }
                ConflictPolicy::SkipIfIdentical => {
                    f.reason = Some(format!(
                        "{note}; skipped if identical to it, a failure otherwise"
                    ));
                    Ok(())
                }
            };
        }
        self.targets.insert(target, l.rel.clone());

        let Some(folder_id) = folder_id.and_then(NodeId::new) else {
            return Ok(()); // a new folder: the document is created in it
        };
        let existing = ecm
            .child_by_name(folder_id, &plan.document_name)
            .await
            .map_err(|e| ecm_stop(route, format!("looking up {:?}", plan.document_name), e))?;
        let Some(node) = existing else {
            return Ok(());
        };
        if node.node_type != ecm_port::node_type::DOCUMENT {
            return Err(Stop::Reason(format!(
                "{:?} in {path_text} exists and is not a document (type {})",
                plan.document_name, node.node_type
            )));
        }
        let versions = ecm
            .versions(node.id)
            .await
            .map_err(|e| ecm_stop(route, format!("versions of node {}", node.id), e))?;
        let latest = versions.iter().map(|v| v.number).max().unwrap_or(1);
        f.existing = Some(ExistingPlan {
            node_id: node.id.get(),
            name: node.name.clone(),
            latest_version: Some(latest),
        });
        let (hist_sha, hist_key) = self.history(node.id).await?;
        // The name is taken: the run needs the SHA-256 now, and so does the plan.
        let h = store
            .open_read(&path)
            .await
            .map_err(|e| sftp_stop(route, format!("reading {}", l.rel), e))?;
        let (sha, _) = hash_rest(&[], h.body)
            .await
            .map_err(|e| sftp_stop(route, format!("reading {}", l.rel), e))?;
        if hist_key.as_deref() == Some(idempotency_key(route.name(), &l.rel, l.size, &sha).as_str())
        {
            f.action = PlanAction::Skip;
            f.reason = Some(format!(
                "already ingested as node {} (same route, path, size and SHA-256)",
                node.id
            ));
            return Ok(());
        }
        let taken = if plan.on_existing == ConflictPolicy::Rename {
            self.child_names(folder_id).await?
        } else {
            BTreeSet::new()
        };
        let existing_doc = placement::ExistingDocument {
            node_id: node.id.get(),
            sha256: hist_sha,
        };
        match placement::resolve_conflict(
            plan.on_existing,
            &plan.document_name,
            Some(&existing_doc),
            &sha,
            &taken,
        ) {
            ConflictAction::Create { name } => {
                f.reason = Some(format!(
                    "{:?} exists (node {}): created as {name:?}",
                    plan.document_name, node.id
                ));
                f.document_name = Some(name);
            }
            ConflictAction::AddVersion { .. } => {
                f.action = PlanAction::AddVersion;
                f.reason = Some(format!(
                    "{:?} exists (node {}): version {} is added",
                    plan.document_name,
                    node.id,
                    latest + 1
                ));
            }
            ConflictAction::Skip { .. } => {
                f.action = PlanAction::Skip;
                f.reason = Some(format!(
                    "{:?} exists (node {}) with identical content (SHA-256 {sha})",
                    plan.document_name, node.id
                ));
            }
            ConflictAction::Fail { reason } => {
                return Err(Stop::Reason(format!("on_existing: {reason}")));
            }
        }
        Ok(())
    }

    /// The existing document's transfer-history SHA-256 and key.
    async fn history(&self, node: NodeId) -> Result<(Option<String>, Option<String>), Stop> {
        let th = &self.route.config.transfer_history;
        let k = |id: u32| format!("{}_{id}", th.category_id);
        let cats = self
            .deps
            .ecm
            .categories(node)
            .await
            .map_err(|e| ecm_stop(self.route, format!("categories of node {node}"), e))?;
        let Some(cat) = cats.into_iter().find(|c| c.category_id == th.category_id) else {
            return Ok((None, None));
        };
        let get = |id: u32| cat.values.get(&k(id)).and_then(text);
        Ok((
            get(th.attributes.sha256).filter(|s| s.len() == 64),
            get(th.attributes.idempotency_key),
        ))
    }

    async fn child_names(&self, folder: NodeId) -> Result<BTreeSet<String>, Stop> {
        let mut names = BTreeSet::new();
        let mut page = 1;
        loop {
            let p = self
                .deps
                .ecm
                .children(folder, &ecm_port::ChildFilter::default(), page, 500)
                .await
                .map_err(|e| ecm_stop(self.route, format!("listing node {folder}"), e))?;
            names.extend(p.items.iter().map(|n| n.name.clone()));
            if !p.has_next() || page >= 100 {
                break;
            }
            page += 1;
        }
        Ok(names)
    }

    async fn workspace(&mut self, target: &WorkspaceTarget) -> Result<WorkspacePlan, Stop> {
        let key = format!("{target:?}");
        if let Some(w) = self.workspaces.get(&key) {
            return Ok(w.clone());
        }
        let ecm = self.deps.ecm;
        let route = self.route;
        let w = match target {
            WorkspaceTarget::Node { node_id } => {
                let lookup = format!("node {node_id}");
                let id = NodeId::new(*node_id)
                    .ok_or_else(|| Stop::Reason(format!("workspace node id {node_id}")))?;
                match ecm.node(id).await {
                    Ok(n) => WorkspacePlan {
                        lookup,
                        id: Some(n.id.get()),
                        name: n.name,
                        exists: true,
                        create_from_template: None,
                    },
                    Err(e) if e.is_not_found() => {
                        return Err(Stop::Reason(format!(
                            "workspace.node_id {node_id}: no such node"
                        )));
                    }
                    Err(e) => return Err(ecm_stop(route, lookup, e)),
                }
            }
            WorkspaceTarget::BusinessObject {
                type_id,
                ext_system,
                bo_type,
                bo_id,
                create,
            } => {
                let lookup =
                    format!("business object {ext_system}/{bo_type}/{bo_id} (type {type_id})");
                let bo = BusinessObject {
                    ext_system_id: ext_system.clone(),
                    bo_type: bo_type.clone(),
                    bo_id: bo_id.clone(),
                };
                match ecm.workspace_by_business_object(&bo).await {
                    Ok(Some(ws)) => WorkspacePlan {
                        lookup,
                        id: Some(ws.id.get()),
                        name: ws.name,
                        exists: true,
                        create_from_template: None,
                    },
                    Ok(None) => WorkspacePlan {
                        lookup,
                        id: None,
                        name: create.as_ref().map(|c| c.name.clone()).unwrap_or_default(),
                        exists: false,
                        create_from_template: create.as_ref().map(|c| c.template_id),
                    },
                    Err(e) => return Err(ecm_stop(route, lookup, e)),
                }
            }
            WorkspaceTarget::Name {
                type_id,
                name,
                create,
            } => {
                let lookup = format!("workspace {name:?} (type {type_id})");
                match ecm.find_workspaces(*type_id, name).await {
                    Ok(found) => match found.into_iter().next() {
                        Some(ws) => WorkspacePlan {
                            lookup,
                            id: Some(ws.id.get()),
                            name: ws.name,
                            exists: true,
                            create_from_template: None,
                        },
                        None => WorkspacePlan {
                            lookup,
                            id: None,
                            name: create.as_ref().map_or(name.clone(), |c| c.name.clone()),
                            exists: false,
                            create_from_template: create.as_ref().map(|c| c.template_id),
                        },
                    },
                    Err(e) => return Err(ecm_stop(route, lookup, e)),
                }
            }
        };
        self.workspaces.insert(key, w.clone());
        Ok(w)
    }

    /// Each folder of the path: found by name, or to be created (and so is
    /// everything below it).
    async fn folder(&mut self, ws: i64, segments: &[String]) -> Result<FolderLookup, Stop> {
        let key = (ws, segments.to_vec());
        if let Some(v) = self.folders.get(&key) {
            return Ok(v.clone());
        }
        let mut steps = Vec::new();
        let mut current = NodeId::new(ws);
        for name in segments {
            let found = match current {
                Some(parent) => self
                    .deps
                    .ecm
                    .child_by_name(parent, name)
                    .await
                    .map_err(|e| ecm_stop(self.route, format!("looking up folder {name:?}"), e))?,
                None => None,
            };
            match found {
                Some(n) if n.is_container() => {
                    steps.push(FolderStep {
                        name: name.clone(),
                        id: Some(n.id.get()),
                        exists: true,
                    });
                    current = Some(n.id);
                }
                Some(n) => {
                    return Err(Stop::Reason(format!(
                        "folder {name:?} is taken by node {} of type {}, not a container",
                        n.id, n.node_type
                    )));
                }
                None => {
                    steps.push(FolderStep {
                        name: name.clone(),
                        id: None,
                        exists: false,
                    });
                    current = None;
                }
            }
        }
        let v = (steps, current.map(NodeId::get));
        self.folders.insert(key, v.clone());
        Ok(v)
    }
}

// ---------------------------------------------------------------- export

/// One route's view of the node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RouteVerdict {
    pub route: String,
    /// Whether the route's approval predicate holds.
    pub approved: bool,
    /// Why it does not (or which destination it picks).
    pub reason: String,
}

/// What an approval of one node would do (`ecm-export --plan`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExportPlan {
    /// Always `true`: a plan changes nothing.
    pub dry_run: bool,
    pub node_id: i64,
    pub name: String,
    pub node_type: i64,
    /// The latest version (documents); what a callback for it would deliver.
    pub version: u32,
    /// `deliver`, `duplicate` (this version already went there),
    /// `superseded` (a newer one did), `package` (a container approved as a
    /// whole) or `rejected`.
    pub verdict: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sftp_secret: Option<String>,
    /// The rendered path on the SFTP server (directory and file name; for a
    /// package, its directory).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote_path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overwrite: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256_sidecar: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// For `duplicate` and `superseded`: the delivery the history records.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recorded: Option<String>,
    /// Each route in order, with its approval verdict.
    pub routes: Vec<RouteVerdict>,
}

/// Plans an approval of `node_id` (only `route`, when given): reads the
/// node, its versions, categories and ancestors, decides with the export
/// routes and looks at the export history; delivers nothing.
pub async fn export(
    ecm: &dyn crate::ports::ecm::Ecm,
    routes: &crate::domain::export_route::ExportRoutes,
    node_id: i64,
    route: Option<&str>,
) -> Result<ExportPlan, super::export::ExportError> {
    use super::export::ExportError;
    use crate::domain::export_history::{HistoryVerdict, destination_key};
    use crate::domain::export_route::{ExportDecision, decide};

    if let Some(r) = route
        && !routes.routes.iter().any(|x| x.name == r)
    {
        return Err(ExportError::UnknownRoute {
            route: r.to_owned(),
        });
    }
    let id = NodeId::new(node_id).ok_or(ExportError::InvalidNode {
        node_id,
        reason: "not a positive node id".into(),
    })?;
    let (mut facts, node, applied) =
        super::export::read_facts(ecm, id, &super::export::route_workspace_types(routes)).await?;
    if node.is_container() {
        // A container approved as a whole goes out as a package: its own
        // id counts as an ancestor (as for a package callback).
        facts.ancestors.insert(0, node_id);
    }
    let mut verdicts = Vec::new();
    for r in &routes.routes {
        if route.is_some_and(|o| o != r.name) {
            continue;
        }
        let v = match r.approval.check(&facts) {
            Err(why) => RouteVerdict {
                route: r.name.clone(),
                approved: false,
                reason: why,
            },
            Ok(()) => match r
                .destinations
                .iter()
                .find(|d| d.config.when.matches(&facts))
            {
                Some(d) => RouteVerdict {
                    route: r.name.clone(),
                    approved: true,
                    reason: format!("approved; destination {}", d.config.name),
                },
                None => RouteVerdict {
                    route: r.name.clone(),
                    approved: true,
                    reason: "approved, but no destination rule matches".into(),
                },
            },
        };
        verdicts.push(v);
    }
    let mut plan = ExportPlan {
        dry_run: true,
        node_id,
        name: node.name.clone(),
        node_type: node.node_type,
        version: facts.version,
        verdict: "rejected",
        route: None,
        destination: None,
        sftp_secret: None,
        remote_path: None,
        overwrite: None,
        sha256_sidecar: None,
        idempotency_key: None,
        recorded: None,
        routes: verdicts,
    };
    if !node.is_container() && node.node_type != ecm_port::node_type::DOCUMENT {
        for v in &mut plan.routes {
            v.approved = false;
            v.reason = format!("not a document (type {})", node.node_type);
        }
        return Ok(plan);
    }
    let ExportDecision::Deliver(d) = decide(routes, &facts, route, Utc::now())? else {
        return Ok(plan);
    };
    plan.route = Some(d.route.clone());
    plan.destination = Some(d.destination.clone());
    plan.sftp_secret = Some(d.sftp_secret.clone());
    plan.overwrite = Some(d.overwrite);
    plan.sha256_sidecar = Some(d.sha256_sidecar);
    if node.is_container() {
        plan.verdict = "package";
        plan.remote_path = Some(d.directory.join("/"));
        return Ok(plan);
    }
    plan.remote_path = Some(d.remote_path());
    plan.idempotency_key = Some(d.idempotency_key.clone());
    let to = destination_key(&d.route, &d.destination);
    match super::export::history_of(routes, &applied).verdict(&to, d.version) {
        HistoryVerdict::New => plan.verdict = "deliver",
        HistoryVerdict::Delivered(r) => {
            plan.verdict = "duplicate";
            plan.recorded = Some(format!("version {} delivered to {}", r.version, r.path));
        }
        HistoryVerdict::Superseded(r) => {
            plan.verdict = "superseded";
            plan.recorded = Some(format!(
                "newer version {} delivered to {}",
                r.version, r.path
            ));
        }
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use chrono::{DateTime, Utc};
    use serde_json::json;

    use super::*;
    use crate::domain::paths::RemoteRoot;
    use crate::domain::route::{IngestEvent, parse_ingest_event};
    use crate::flows::ingest::Clock;
    use crate::ports::ecm::Ecm;
    use crate::ports::ecm::memory::{ENTERPRISE, MemoryEcm};
    use crate::ports::events::MemoryEvents;
    use crate::ports::file_store::memory::MemoryFileStore;

    /// An hour ahead, so the files just seeded are old enough.
    struct Later;
    impl Clock for Later {
        fn now(&self) -> DateTime<Utc> {
            Utc::now() + chrono::Duration::hours(1)
        }
    }

    fn route(max_files: u32, policy: &str) -> Route {
        let ev = json!({"action": "plan", "route": {
            "name": "r", "sftp_secret": "s", "source_dir": "in",
            "include": ["*.pdf", "*.done"],
            "readiness": {"min_age_secs": 60},
            "rules": [{"name": "all", "match": {"regex": "(?P<n>[a-z]+)-[0-9]\\.pdf"},
                       "place": {"workspace": {"by": "node", "node_id": ENTERPRISE},
                                 "folder": "Drop", "name": "{n}.pdf", "on_existing": policy}}],
            "fallback": "fail",
            "limits": {"max_files": max_files},
            "transfer_history": {"category_id": 9002, "attributes": {"route": 2, "host": 3,
                "source_path": 4, "size": 5, "sha256": 6, "received_at": 7, "ingested_at": 8,
                "invocation_id": 9, "idempotency_key": 10}}
        }});
        match parse_ingest_event(ev) {
            Ok(IngestEvent::Plan(r)) => r,
            other => panic!("{other:?}"),
        }
    }

    async fn plan_of(store: &MemoryFileStore, ecm: &MemoryEcm, route: &Route) -> IngestPlan {
        let deps = IngestDeps {
            store,
            ecm,
            events: &MemoryEvents::new(),
            clock: &Later,
            sftp_host: "h".into(),
        };
        let ctx = RunContext::new("t", Duration::from_secs(60));
        ingest(route, &deps, &ctx).await.expect("plan")
    }

    fn store() -> MemoryFileStore {
        let s = MemoryFileStore::new(RemoteRoot::parse("/").expect("root"));
        s.insert_file("/in/a-1.pdf", b"%PDF-1.7 a");
        s.insert_file("/in/a-2.pdf", b"%PDF-1.7 a again");
        s.insert_file("/in/b-1.pdf", b"%PDF-1.7 b");
        s.insert_file("/in/notes.txt", b"not included");
        s.insert_file("/in/.hidden.pdf", b"%PDF-1.7 dot-file");
        s
    }

    #[tokio::test]
    async fn files_for_one_name_are_planned_in_turn_and_limits_leave_the_rest() {
        let (s, ecm) = (store(), MemoryEcm::new());
        let before = s.paths();
        let p = plan_of(&s, &ecm, &route(2, "fail")).await;
        let by: BTreeMap<&str, &FilePlan> = p
            .files
            .iter()
            .map(|f| (f.source_path.as_str(), f))
            .collect();
        assert_eq!(by["a-1.pdf"].action, PlanAction::Create, "{p:#?}");
        // a-2 goes to the same name after a-1: under "fail" it fails.
        assert_eq!(by["a-2.pdf"].action, PlanAction::Fail, "{p:#?}");
        assert!(
            by["a-2.pdf"]
                .reason
                .as_deref()
                .unwrap_or("")
                .contains("a-1.pdf"),
            "{:?}",
            by["a-2.pdf"]
        );
        // max_files 2: the third ready document waits for another run.
        assert_eq!(by["b-1.pdf"].action, PlanAction::NextRun);
        assert_eq!(by["notes.txt"].action, PlanAction::Ignore);
        assert!(!by.contains_key(".hidden.pdf"));
        let folder = by["a-1.pdf"].folder.as_ref().expect("folder");
        assert_eq!(folder.path, "Enterprise/Drop");
        assert!(!folder.steps[0].exists);
        assert_eq!(s.paths(), before, "the plan changed the store");
        assert_eq!(s.put_count(), 0);
    }

    #[tokio::test]
    async fn a_large_drop_is_counted_whole_and_listed_up_to_the_bound() {
        let (s, ecm) = (store(), MemoryEcm::new());
        for i in 0..MAX_LISTED_FILES {
            s.insert_file(&format!("/in/z{i:05}.tmp"), b"x");
        }
        let p = plan_of(&s, &ecm, &route(2, "fail")).await;
        assert_eq!(p.files.len(), MAX_LISTED_FILES);
        assert_eq!(p.files_omitted, 4, "{:?}", p.counts);
        assert_eq!(p.counts.ignore as usize, MAX_LISTED_FILES + 1);
        assert_eq!(p.files[0].source_path, "a-1.pdf");
    }

    #[tokio::test]
    async fn an_existing_folder_and_a_taken_name_are_found_and_renamed() {
        let (s, ecm) = (store(), MemoryEcm::new());
        let enterprise = NodeId::new(ENTERPRISE).expect("id");
        let drop = ecm.create_folder(enterprise, "Drop").await.expect("folder");
        ecm.create_folder(drop, "b.pdf").await.expect("taken");
        let p = plan_of(&s, &ecm, &route(10, "rename")).await;
        let b = p
            .files
            .iter()
            .find(|f| f.source_path == "b-1.pdf")
            .expect("b");
        // A folder (not a document) holds the name: the run fails the file.
        assert_eq!(b.action, PlanAction::Fail, "{b:#?}");
        assert!(b.reason.as_deref().unwrap_or("").contains("not a document"));
        let a = p
            .files
            .iter()
            .find(|f| f.source_path == "a-2.pdf")
            .expect("a-2");
        assert_eq!(a.action, PlanAction::Create);
        assert!(
            a.reason.as_deref().unwrap_or("").contains("numbered"),
            "{a:#?}"
        );
        let folder = a.folder.as_ref().expect("folder");
        assert_eq!(folder.id, Some(drop.get()));
        assert!(folder.steps[0].exists);
    }
}
