//! The ingest route: what one scheduled `sftp-ingest` invocation does, carried
//! in the schedule's input (see `events/ingest-scheduled.json`).
//!
//! [`RouteConfig`] is the wire shape (serde, unknown fields refused);
//! [`RouteConfig::validate`] turns it into a [`Route`] with every glob, regex
//! and template compiled, or fails with a [`RouteError`] naming the field path
//! and the offending value. Nothing here touches the network or the clock.
//!
//! Decisions:
//! - Readiness conditions that are configured must *all* hold (a marker and a
//!   settle interval together are stricter, never looser); at least one of
//!   `done_marker`, `settle_secs`, `min_age_secs` is required, because a route
//!   without any would ingest files still being written.
//! - `lease_secs` must exceed 900 s, Lambda's maximum timeout, so a claim can
//!   only be taken over once its owner is certainly dead, whatever timeout the
//!   function is deployed with.
//! - Work folders `.inflight/`, `failed/` and the archive root live under
//!   `source_dir`; they and dot-files are never listed as input.
//! - Transfer-history attribute ids are required route fields: the category
//!   layout belongs to the customer's Content Server, so there is no default.
//! - Include/exclude globs match the path relative to `source_dir`; `*` does not
//!   cross `/` (use `**` for that).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use globset::{Glob, GlobBuilder, GlobMatcher, GlobSet, GlobSetBuilder};
use regex::Regex;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::classify::FileType;
use super::placement::ConflictPolicy;
use super::schema_ref::SchemaRef;
use super::template::{Scope, Template};

/// Lambda's maximum function timeout; a lease must outlive any invocation.
pub const MAX_FUNCTION_TIMEOUT_SECS: u64 = 900;
/// Claims of files being worked on.
pub const INFLIGHT_DIR: &str = ".inflight";
/// Permanently failed files and their `.error.json` reports.
pub const FAILED_DIR: &str = "failed";

/// A route (or ingest event) that cannot be used, naming the field and value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}{}{}",
    if value.is_empty() { String::new() } else { format!(" {value:?}") },
    detail.as_ref().map(|d| format!(": {d}")).unwrap_or_default())]
pub struct RouteError {
    /// Field path, e.g. `rules[2].match.regex`.
    pub field: String,
    /// The offending value as configured (never a secret: routes hold only secret *names*).
    pub value: String,
    pub problem: String,
    pub detail: Option<String>,
}

impl RouteError {
    fn new(field: impl Into<String>, value: impl fmt::Display, problem: &str) -> Self {
        RouteError {
            field: field.into(),
            value: value.to_string(),
            problem: problem.to_owned(),
            detail: None,
        }
    }

    fn with(mut self, detail: impl fmt::Display) -> Self {
        self.detail = Some(detail.to_string());
        self
    }

    /// A bad route stays bad until someone edits it.
    pub fn is_retryable(&self) -> bool {
        false
    }
}

// ---------------------------------------------------------------- wire shape

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// The JSON Schema this file follows (for editors); ignored.
    #[serde(rename = "$schema", default, skip_serializing)]
    pub schema: SchemaRef,
    pub name: String,
    /// Secrets Manager id of the SFTP secret (not the secret itself).
    pub sftp_secret: String,
    /// Directory on the SFTP server, relative to the login root.
    pub source_dir: String,
    #[serde(default)]
    pub recursive: bool,
    /// Globs on the relative path; empty means every file.
    #[serde(default)]
    pub include: Vec<String>,
    #[serde(default)]
    pub exclude: Vec<String>,
    pub readiness: ReadinessConfig,
    #[serde(default)]
    pub sidecars: SidecarConfig,
    #[serde(default)]
    pub index: Option<IndexConfig>,
    pub rules: Vec<RuleConfig>,
    pub fallback: FallbackConfig,
    #[serde(default)]
    pub post_action: PostActionConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    pub transfer_history: TransferHistoryConfig,
    /// SQS fan-out (docs/fanout.md); absent: the scheduled run streams every file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fan_out: Option<super::fanout::FanOutConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReadinessConfig {
    /// Suffix of the done-marker file, e.g. `.done` for `x.pdf.done`.
    #[serde(default)]
    pub done_marker: Option<String>,
    /// Size and mtime must be unchanged across this many seconds.
    #[serde(default)]
    pub settle_secs: Option<u64>,
    /// The file's mtime must be at least this old.
    #[serde(default)]
    pub min_age_secs: Option<u64>,
    #[serde(default)]
    pub allow_empty: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SidecarMode {
    /// Sidecar files are ordinary input.
    Off,
    /// Use `<name>.json` / `<name>.xml` when present.
    #[default]
    Optional,
    /// A document without a sidecar is a permanent failure.
    Required,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SidecarFormat {
    Json,
    Xml,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SidecarConfig {
    #[serde(default)]
    pub mode: SidecarMode,
    #[serde(default = "default_sidecar_formats")]
    pub formats: Vec<SidecarFormat>,
}

fn default_sidecar_formats() -> Vec<SidecarFormat> {
    vec![SidecarFormat::Json, SidecarFormat::Xml]
}

impl Default for SidecarConfig {
    fn default() -> Self {
        SidecarConfig {
            mode: SidecarMode::Optional,
            formats: default_sidecar_formats(),
        }
    }
}

/// CSV index files: one file lists many documents with their metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IndexConfig {
    /// Glob on the relative path that marks a file as an index, e.g. `index-*.csv`.
    pub pattern: String,
    /// Column holding the listed file's name (relative to the index's directory).
    pub file_column: String,
    #[serde(default = "default_delimiter")]
    pub delimiter: char,
}

fn default_delimiter() -> char {
    ','
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub name: String,
    #[serde(rename = "match")]
    pub matcher: MatchConfig,
    pub place: PlaceConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum MatchOn {
    /// The file name only.
    #[default]
    Name,
    /// The path relative to `source_dir`.
    Path,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MatchConfig {
    #[serde(default)]
    pub glob: Option<String>,
    /// Regex (whole-string match) with named captures usable in templates.
    #[serde(default)]
    pub regex: Option<String>,
    #[serde(default)]
    pub on: MatchOn,
    /// Accepted content types (by magic bytes); absent means any.
    #[serde(default)]
    pub file_types: Option<Vec<FileType>>,
    #[serde(default)]
    pub min_size: Option<u64>,
    #[serde(default)]
    pub max_size: Option<u64>,
    /// Metadata fields (sidecar/index) that must equal these values.
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PlaceConfig {
    pub workspace: WorkspaceConfig,
    /// Folder path template under the workspace; empty means the workspace itself.
    #[serde(default)]
    pub folder: String,
    /// Document name template.
    #[serde(default = "default_doc_name")]
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub categories: Vec<CategoryConfig>,
    #[serde(default)]
    pub rm_classification: Option<i64>,
    #[serde(default)]
    pub hold: Option<i64>,
    /// What to do when the name exists; `fail` unless the rule says otherwise.
    #[serde(default)]
    pub on_existing: ConflictPolicy,
}

fn default_doc_name() -> String {
    "{name}".to_owned()
}

/// How the target business workspace is found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "by", rename_all = "snake_case", deny_unknown_fields)]
pub enum WorkspaceConfig {
    /// External system + business object type + id (template), within a workspace type.
    BusinessObject {
        type_id: i64,
        ext_system: String,
        bo_type: String,
        bo_id: String,
        #[serde(default)]
        create: Option<CreateWorkspaceConfig>,
    },
    /// Workspace type + exact name (template).
    Name {
        type_id: i64,
        name: String,
        #[serde(default)]
        create: Option<CreateWorkspaceConfig>,
    },
    /// A fixed container node (e.g. a records folder), no workspace lookup.
    Node { node_id: i64 },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWorkspaceConfig {
    pub template_id: i64,
    /// Name template of the new workspace.
    pub name: String,
    #[serde(default)]
    pub parent_id: Option<i64>,
    #[serde(default)]
    pub categories: Vec<CategoryConfig>,
}

/// Values for one category: attribute id (`2`, or `set_row_attr` such as
/// `5_1_3`) → value template (a constant is a template without placeholders).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CategoryConfig {
    pub category_id: i64,
    pub attributes: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FallbackConfig {
    /// No rule matched: permanent failure (`failed/` + `Transfer Failed`).
    Fail,
    /// No rule matched: place like this.
    Place(Box<PlaceConfig>),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum PostActionConfig {
    /// Move the source into this directory (template, relative to `source_dir`).
    Archive {
        #[serde(default = "default_archive_dir")]
        dir: String,
    },
    Delete,
}

fn default_archive_dir() -> String {
    "archive/{yyyy-mm-dd}/".to_owned()
}

impl Default for PostActionConfig {
    fn default() -> Self {
        PostActionConfig::Archive {
            dir: default_archive_dir(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Files claimed per invocation.
    pub max_files: u32,
    /// Bytes claimed per invocation.
    pub max_bytes: u64,
    /// Files transferred in parallel (one SFTP session each).
    pub parallelism: u32,
    /// Attempts before a file is quarantined.
    pub max_attempts: u32,
    /// Age after which a claim is considered abandoned.
    pub lease_secs: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_files: 100,
            max_bytes: 10 * 1024 * 1024 * 1024,
            parallelism: 4,
            max_attempts: 5,
            lease_secs: 1800,
        }
    }
}

/// Where transfer history is written: one category, one attribute per fact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TransferHistoryConfig {
    pub category_id: i64,
    pub attributes: TransferHistoryAttributes,
}

/// Attribute ids within the transfer-history category.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TransferHistoryAttributes {
    pub route: u32,
    pub host: u32,
    pub source_path: u32,
    pub size: u32,
    pub sha256: u32,
    pub received_at: u32,
    pub ingested_at: u32,
    pub invocation_id: u32,
    /// Where the idempotency key is stored and searched.
    pub idempotency_key: u32,
    /// The original (unsanitised) file name; without it, it goes to the description.
    #[serde(default)]
    pub original_name: Option<u32>,
}

// ---------------------------------------------------------------- validated

/// A compiled category assignment.
#[derive(Debug, Clone)]
pub struct CategoryValues {
    pub category_id: i64,
    /// (attribute key `{cat}_{attr}`, value template)
    pub attributes: Vec<(String, Template)>,
}

#[derive(Debug, Clone)]
pub enum WorkspaceRule {
    BusinessObject {
        type_id: i64,
        ext_system: String,
        bo_type: String,
        bo_id: Template,
        create: Option<CreateWorkspace>,
    },
    Name {
        type_id: i64,
        name: Template,
        create: Option<CreateWorkspace>,
    },
    Node {
        node_id: i64,
    },
}

#[derive(Debug, Clone)]
pub struct CreateWorkspace {
    pub template_id: i64,
    pub name: Template,
    pub parent_id: Option<i64>,
    pub categories: Vec<CategoryValues>,
}

/// A compiled placement.
#[derive(Debug, Clone)]
pub struct Place {
    pub workspace: WorkspaceRule,
    pub folder: Template,
    pub name: Template,
    pub description: Option<Template>,
    pub categories: Vec<CategoryValues>,
    pub rm_classification: Option<i64>,
    pub hold: Option<i64>,
    pub on_existing: ConflictPolicy,
}

/// A compiled rule match.
#[derive(Debug, Clone)]
pub struct Matcher {
    pub glob: Option<GlobMatcher>,
    pub regex: Option<Regex>,
    pub on: MatchOn,
    pub file_types: Option<Vec<FileType>>,
    pub min_size: Option<u64>,
    pub max_size: Option<u64>,
    pub meta: BTreeMap<String, String>,
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub matcher: Matcher,
    pub place: Place,
}

#[derive(Debug, Clone)]
pub enum Fallback {
    Fail,
    Place(Box<Place>),
}

#[derive(Debug, Clone)]
pub enum PostAction {
    Archive { dir: Template },
    Delete,
}

#[derive(Debug, Clone)]
pub struct Index {
    pub pattern: GlobMatcher,
    pub file_column: String,
    pub delimiter: u8,
}

/// A validated route. Keeps its [`RouteConfig`] for events and error reports.
#[derive(Debug, Clone)]
pub struct Route {
    pub config: RouteConfig,
    include: Option<GlobSet>,
    exclude: GlobSet,
    pub index: Option<Index>,
    pub rules: Vec<Rule>,
    pub fallback: Fallback,
    pub post_action: PostAction,
}

/// What a listed entry is to this route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryRole {
    /// A candidate document.
    Document,
    /// A done-marker for the document at this relative path.
    Marker { document: String },
    /// A sidecar for the document at this relative path.
    Sidecar {
        document: String,
        format: SidecarFormat,
    },
    /// A CSV index file.
    Index,
    /// Not ours to touch (work folder, dot-file, excluded, not included).
    Ignored(&'static str),
}

fn glob(field: &str, pattern: &str) -> Result<Glob, RouteError> {
    GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()
        .map_err(|e| RouteError::new(field, pattern, "invalid glob").with(e.kind()))
}

fn glob_set(field: &str, patterns: &[String]) -> Result<GlobSet, RouteError> {
    let mut b = GlobSetBuilder::new();
    for (i, p) in patterns.iter().enumerate() {
        b.add(glob(&format!("{field}[{i}]"), p)?);
    }
    b.build()
        .map_err(|e| RouteError::new(field, patterns.join(","), "invalid glob set").with(e))
}

/// A relative directory setting: no absolute path, no `..`, no NUL.
fn check_rel_dir(field: &str, dir: &str, allow_empty: bool) -> Result<(), RouteError> {
    if dir.is_empty() && !allow_empty {
        return Err(RouteError::new(field, dir, "must not be empty"));
    }
    if dir.contains('\0') || dir.chars().any(char::is_control) {
        return Err(RouteError::new(
            field,
            dir.escape_debug(),
            "contains control characters",
        ));
    }
    if dir.starts_with('/') || dir.contains('\\') {
        return Err(RouteError::new(
            field,
            dir,
            "must be relative with '/' separators",
        ));
    }
    if dir.split('/').any(|s| s == "..") {
        return Err(RouteError::new(field, dir, "must not contain '..'"));
    }
    Ok(())
}

fn check_name(field: &str, v: &str, max: usize) -> Result<(), RouteError> {
    let ok = !v.is_empty()
        && v.len() <= max
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    if ok {
        Ok(())
    } else {
        Err(RouteError::new(
            field,
            v,
            &format!("must be 1-{max} characters of [A-Za-z0-9._/-]"),
        ))
    }
}

fn check_id(field: &str, v: i64) -> Result<(), RouteError> {
    if v > 0 {
        Ok(())
    } else {
        Err(RouteError::new(field, v, "must be a positive node id"))
    }
}

fn template(field: &str, src: &str, scope: &Scope) -> Result<Template, RouteError> {
    Template::parse(src, scope).map_err(|e| RouteError::new(field, src, "invalid template").with(e))
}

/// `2` or `set_row_attr` such as `5_1_3`.
fn check_attr_id(field: &str, key: &str) -> Result<(), RouteError> {
    let parts: Vec<&str> = key.split('_').collect();
    let ok = (parts.len() == 1 || parts.len() == 3)
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 9 && p.bytes().all(|b| b.is_ascii_digit()));
    if ok {
        Ok(())
    } else {
        Err(RouteError::new(
            field,
            key,
            "attribute id must be N or SET_ROW_ATTR (digits)",
        ))
    }
}

fn categories(
    field: &str,
    cats: &[CategoryConfig],
    scope: &Scope,
) -> Result<Vec<CategoryValues>, RouteError> {
    let mut seen = BTreeSet::new();
    cats.iter()
        .enumerate()
        .map(|(i, c)| {
            let f = format!("{field}[{i}]");
            check_id(&format!("{f}.category_id"), c.category_id)?;
            if !seen.insert(c.category_id) {
                return Err(RouteError::new(
                    format!("{f}.category_id"),
                    c.category_id,
                    "category listed twice",
                ));
            }
            let attributes = c
                .attributes
                .iter()
                .map(|(k, v)| {
                    let af = format!("{f}.attributes.{k}");
                    check_attr_id(&af, k)?;
                    Ok((format!("{}_{k}", c.category_id), template(&af, v, scope)?))
                })
                .collect::<Result<_, RouteError>>()?;
            Ok(CategoryValues {
                category_id: c.category_id,
                attributes,
            })
        })
        .collect()
}

fn place(field: &str, p: &PlaceConfig, captures: BTreeSet<String>) -> Result<Place, RouteError> {
    let names = Scope::ingest_name(captures.clone());
    let values = Scope::ingest_value(captures);
    let create = |f: String, c: &Option<CreateWorkspaceConfig>| -> Result<_, RouteError> {
        c.as_ref()
            .map(|c| {
                check_id(&format!("{f}.template_id"), c.template_id)?;
                if let Some(p) = c.parent_id {
                    check_id(&format!("{f}.parent_id"), p)?;
                }
                Ok(CreateWorkspace {
                    template_id: c.template_id,
                    name: template(&format!("{f}.name"), &c.name, &names)?,
                    parent_id: c.parent_id,
                    categories: categories(&format!("{f}.categories"), &c.categories, &values)?,
                })
            })
            .transpose()
    };
    let wf = format!("{field}.workspace");
    let workspace = match &p.workspace {
        WorkspaceConfig::BusinessObject {
            type_id,
            ext_system,
            bo_type,
            bo_id,
            create: c,
        } => {
            check_id(&format!("{wf}.type_id"), *type_id)?;
            check_name(&format!("{wf}.ext_system"), ext_system, 64)?;
            check_name(&format!("{wf}.bo_type"), bo_type, 64)?;
            WorkspaceRule::BusinessObject {
                type_id: *type_id,
                ext_system: ext_system.clone(),
                bo_type: bo_type.clone(),
                bo_id: template(&format!("{wf}.bo_id"), bo_id, &names)?,
                create: create(format!("{wf}.create"), c)?,
            }
        }
        WorkspaceConfig::Name {
            type_id,
            name,
            create: c,
        } => {
            check_id(&format!("{wf}.type_id"), *type_id)?;
            WorkspaceRule::Name {
                type_id: *type_id,
                name: template(&format!("{wf}.name"), name, &names)?,
                create: create(format!("{wf}.create"), c)?,
            }
        }
        WorkspaceConfig::Node { node_id } => {
            check_id(&format!("{wf}.node_id"), *node_id)?;
            WorkspaceRule::Node { node_id: *node_id }
        }
    };
    if p.name.trim().is_empty() {
        return Err(RouteError::new(
            format!("{field}.name"),
            &p.name,
            "must not be empty",
        ));
    }
    if p.name.contains('/') {
        return Err(RouteError::new(
            format!("{field}.name"),
            &p.name,
            "a document name cannot contain '/' (use folder for paths)",
        ));
    }
    for (f, id) in [("rm_classification", p.rm_classification), ("hold", p.hold)] {
        if let Some(id) = id {
            check_id(&format!("{field}.{f}"), id)?;
        }
    }
    Ok(Place {
        workspace,
        folder: template(&format!("{field}.folder"), &p.folder, &names)?,
        name: template(&format!("{field}.name"), &p.name, &names)?,
        description: p
            .description
            .as_ref()
            .map(|d| template(&format!("{field}.description"), d, &values))
            .transpose()?,
        categories: categories(&format!("{field}.categories"), &p.categories, &values)?,
        rm_classification: p.rm_classification,
        hold: p.hold,
        on_existing: p.on_existing,
    })
}

fn rule(i: usize, r: &RuleConfig) -> Result<Rule, RouteError> {
    let f = format!("rules[{i}]");
    if r.name.trim().is_empty() {
        return Err(RouteError::new(
            format!("{f}.name"),
            &r.name,
            "must not be empty",
        ));
    }
    let m = &r.matcher;
    let mf = format!("{f}.match");
    let glob = m
        .glob
        .as_deref()
        .map(|g| glob(&format!("{mf}.glob"), g).map(|g| g.compile_matcher()))
        .transpose()?;
    let regex = m
        .regex
        .as_deref()
        .map(|r| {
            // Anchored so a rule says what the whole name looks like; a
            // partial match would make `inv` match `not-an-invoice.pdf`.
            Regex::new(&format!("^(?:{r})$"))
                .map_err(|e| RouteError::new(format!("{mf}.regex"), r, "invalid regex").with(e))
        })
        .transpose()?;
    if let (Some(lo), Some(hi)) = (m.min_size, m.max_size)
        && lo > hi
    {
        return Err(
            RouteError::new(format!("{mf}.min_size"), lo, "is larger than max_size")
                .with(format!("max_size is {hi}")),
        );
    }
    if let Some(types) = &m.file_types
        && types.is_empty()
    {
        return Err(RouteError::new(
            format!("{mf}.file_types"),
            "[]",
            "would match nothing; omit it to accept any type",
        ));
    }
    let captures: BTreeSet<String> = regex
        .as_ref()
        .map(|r| r.capture_names().flatten().map(str::to_owned).collect())
        .unwrap_or_default();
    Ok(Rule {
        name: r.name.clone(),
        matcher: Matcher {
            glob,
            regex,
            on: m.on,
            file_types: m.file_types.clone(),
            min_size: m.min_size,
            max_size: m.max_size,
            meta: m.meta.clone(),
        },
        place: place(&format!("{f}.place"), &r.place, captures)?,
    })
}

impl RouteConfig {
    /// Check every field and compile globs, regexes and templates.
    pub fn validate(self) -> Result<Route, RouteError> {
        check_name("name", &self.name, 64)?;
        if self.name.contains('/') {
            return Err(RouteError::new("name", &self.name, "must not contain '/'"));
        }
        if self.sftp_secret.trim().is_empty() || self.sftp_secret.len() > 512 {
            return Err(RouteError::new(
                "sftp_secret",
                &self.sftp_secret,
                "must be a Secrets Manager id or ARN",
            ));
        }
        check_rel_dir("source_dir", &self.source_dir, true)?;
        if let Some(f) = &self.fan_out {
            f.check()
                .map_err(|e| RouteError::new(e.field, &e.value, e.problem))?;
        }
        let include = if self.include.is_empty() {
            None
        } else {
            Some(glob_set("include", &self.include)?)
        };
        let exclude = glob_set("exclude", &self.exclude)?;

        let r = &self.readiness;
        if r.done_marker.is_none() && r.settle_secs.is_none() && r.min_age_secs.is_none() {
            return Err(RouteError::new(
                "readiness",
                "{}",
                "needs done_marker, settle_secs or min_age_secs (else files still being written would be taken)",
            ));
        }
        if let Some(m) = &r.done_marker
            && (m.len() < 2 || !m.starts_with('.') || m.contains('/') || m.contains('\0'))
        {
            return Err(RouteError::new(
                "readiness.done_marker",
                m,
                "must be a file suffix like \".done\"",
            ));
        }
        for (f, v) in [
            ("settle_secs", r.settle_secs),
            ("min_age_secs", r.min_age_secs),
        ] {
            if let Some(v) = v
                && !(1..=86_400).contains(&v)
            {
                return Err(RouteError::new(
                    format!("readiness.{f}"),
                    v,
                    "must be within 1..=86400",
                ));
            }
        }
        if let Some(v) = r.settle_secs
            && v > 300
        {
            // The settle check lists twice within one invocation.
            return Err(RouteError::new(
                "readiness.settle_secs",
                v,
                "must be at most 300 (both listings happen within one invocation)",
            ));
        }
        if self.sidecars.formats.is_empty() && self.sidecars.mode != SidecarMode::Off {
            return Err(RouteError::new(
                "sidecars.formats",
                "[]",
                "is empty; set mode \"off\" instead",
            ));
        }
        let index = self
            .index
            .as_ref()
            .map(|ix| {
                if ix.file_column.trim().is_empty() {
                    return Err(RouteError::new(
                        "index.file_column",
                        &ix.file_column,
                        "must not be empty",
                    ));
                }
                if !ix.delimiter.is_ascii() || ix.delimiter.is_ascii_alphanumeric() {
                    return Err(RouteError::new(
                        "index.delimiter",
                        ix.delimiter,
                        "must be an ASCII punctuation or whitespace character",
                    ));
                }
                Ok(Index {
                    pattern: glob("index.pattern", &ix.pattern)?.compile_matcher(),
                    file_column: ix.file_column.clone(),
                    delimiter: ix.delimiter as u8,
                })
            })
            .transpose()?;

        let mut rule_names = BTreeSet::new();
        let mut rules = Vec::with_capacity(self.rules.len());
        for (i, r) in self.rules.iter().enumerate() {
            if !rule_names.insert(r.name.as_str()) {
                return Err(RouteError::new(
                    format!("rules[{i}].name"),
                    &r.name,
                    "duplicate rule name",
                ));
            }
            rules.push(rule(i, r)?);
        }
        let fallback = match &self.fallback {
            FallbackConfig::Fail => Fallback::Fail,
            FallbackConfig::Place(p) => {
                Fallback::Place(Box::new(place("fallback.place", p, BTreeSet::new())?))
            }
        };
        if rules.is_empty() && matches!(fallback, Fallback::Fail) {
            return Err(RouteError::new(
                "rules",
                "[]",
                "no rules and fallback \"fail\" would fail every file",
            ));
        }
        let post_action = match &self.post_action {
            PostActionConfig::Archive { dir } => {
                check_rel_dir("post_action.dir", dir, false)?;
                let t = template("post_action.dir", dir, &Scope::dates_only())?;
                let first = dir.trim_start_matches('/').split('/').next().unwrap_or("");
                if first == INFLIGHT_DIR || first == FAILED_DIR {
                    return Err(RouteError::new(
                        "post_action.dir",
                        dir,
                        "must not be inside a work folder",
                    ));
                }
                PostAction::Archive { dir: t }
            }
            PostActionConfig::Delete => PostAction::Delete,
        };
        let l = &self.limits;
        let ranges: [(&str, u64, u64, u64); 4] = [
            ("limits.max_files", l.max_files.into(), 1, 100_000),
            ("limits.parallelism", l.parallelism.into(), 1, 16),
            ("limits.max_attempts", l.max_attempts.into(), 1, 100),
            ("limits.max_bytes", l.max_bytes, 1, u64::MAX),
        ];
        for (f, v, lo, hi) in ranges {
            if !(lo..=hi).contains(&v) {
                return Err(RouteError::new(
                    f,
                    v,
                    &format!("must be within {lo}..={hi}"),
                ));
            }
        }
        if l.lease_secs <= MAX_FUNCTION_TIMEOUT_SECS || l.lease_secs > 7 * 86_400 {
            return Err(RouteError::new(
                "limits.lease_secs",
                l.lease_secs,
                "must be longer than Lambda's 900 s maximum timeout and at most 7 days",
            ));
        }
        let th = &self.transfer_history;
        check_id("transfer_history.category_id", th.category_id)?;
        let a = &th.attributes;
        let mut ids = BTreeMap::new();
        for (f, id) in [
            ("route", Some(a.route)),
            ("host", Some(a.host)),
            ("source_path", Some(a.source_path)),
            ("size", Some(a.size)),
            ("sha256", Some(a.sha256)),
            ("received_at", Some(a.received_at)),
            ("ingested_at", Some(a.ingested_at)),
            ("invocation_id", Some(a.invocation_id)),
            ("idempotency_key", Some(a.idempotency_key)),
            ("original_name", a.original_name),
        ] {
            let Some(id) = id else { continue };
            let field = format!("transfer_history.attributes.{f}");
            if id == 0 {
                return Err(RouteError::new(
                    field,
                    id,
                    "must be a positive attribute id",
                ));
            }
            if let Some(other) = ids.insert(id, f) {
                return Err(RouteError::new(field, id, "attribute id used twice")
                    .with(format!("also used by {other}")));
            }
        }
        // Rule values in the transfer-history category must not overwrite
        // the history itself (the idempotency key lives there).
        let reserved: BTreeSet<String> = ids
            .keys()
            .map(|id| format!("{}_{id}", th.category_id))
            .collect();
        let places = rules
            .iter()
            .enumerate()
            .map(|(i, r)| (format!("rules[{i}].place"), &r.place))
            .chain(match &fallback {
                Fallback::Place(p) => Some(("fallback.place".to_owned(), p.as_ref())),
                Fallback::Fail => None,
            });
        for (field, place) in places {
            for (j, c) in place.categories.iter().enumerate() {
                if let Some((key, _)) = c.attributes.iter().find(|(k, _)| reserved.contains(k)) {
                    return Err(RouteError::new(
                        format!("{field}.categories[{j}].attributes"),
                        key,
                        "is a transfer-history attribute and cannot be set by a rule",
                    ));
                }
            }
        }
        Ok(Route {
            include,
            exclude,
            index,
            rules,
            fallback,
            post_action,
            config: self,
        })
    }
}

impl Route {
    pub fn name(&self) -> &str {
        &self.config.name
    }

    pub fn limits(&self) -> &LimitsConfig {
        &self.config.limits
    }

    pub fn readiness(&self) -> &ReadinessConfig {
        &self.config.readiness
    }

    /// The archive directory (relative to `source_dir`) is a work folder too;
    /// its first segment is what listings skip.
    fn archive_root(&self) -> Option<&str> {
        match &self.config.post_action {
            PostActionConfig::Archive { dir } => dir
                .trim_start_matches('/')
                .split('/')
                .next()
                .filter(|s| !s.is_empty()),
            PostActionConfig::Delete => None,
        }
    }

    /// Classify a listed entry by its path relative to `source_dir` (`/`-separated,
    /// already lossily decoded). Sidecars, markers and index files are recognised
    /// by name so they are never ingested as documents of their own.
    pub fn entry_role(&self, rel_path: &str) -> EntryRole {
        if rel_path.is_empty() || rel_path.contains('\0') {
            return EntryRole::Ignored("empty or NUL in name");
        }
        let segments: Vec<&str> = rel_path.split('/').collect();
        if segments
            .iter()
            .any(|s| s.is_empty() || *s == "." || *s == "..")
        {
            return EntryRole::Ignored("not a normalised relative path");
        }
        if segments.iter().any(|s| s.starts_with('.')) {
            return EntryRole::Ignored("dot-file or work folder");
        }
        if segments.len() > 1 {
            if !self.config.recursive {
                return EntryRole::Ignored("in a subdirectory of a non-recursive route");
            }
            if segments[0] == FAILED_DIR || Some(segments[0]) == self.archive_root() {
                return EntryRole::Ignored("work folder");
            }
        }
        if let Some(ix) = &self.index
            && ix.pattern.is_match(rel_path)
        {
            return EntryRole::Index;
        }
        if let Some(m) = &self.config.readiness.done_marker
            && let Some(doc) = rel_path.strip_suffix(m.as_str())
            && !doc.is_empty()
            && !doc.ends_with('/')
        {
            return EntryRole::Marker {
                document: doc.to_owned(),
            };
        }
        if self.config.sidecars.mode != SidecarMode::Off {
            for format in &self.config.sidecars.formats {
                let suffix = match format {
                    SidecarFormat::Json => ".json",
                    SidecarFormat::Xml => ".xml",
                };
                // `a.pdf.json` is a sidecar of `a.pdf`; `a.json` alone (no inner
                // extension) is a document in its own right.
                if let Some(doc) = rel_path.strip_suffix(suffix)
                    && doc
                        .rsplit('/')
                        .next()
                        .is_some_and(|n| n.contains('.') && !n.starts_with('.'))
                {
                    return EntryRole::Sidecar {
                        document: doc.to_owned(),
                        format: *format,
                    };
                }
            }
        }
        if self.exclude.is_match(rel_path) {
            return EntryRole::Ignored("excluded");
        }
        if let Some(inc) = &self.include
            && !inc.is_match(rel_path)
        {
            return EntryRole::Ignored("not included");
        }
        EntryRole::Document
    }
}

// ---------------------------------------------------------------- events

/// What an `sftp-ingest` invocation was asked to do.
#[derive(Debug, Clone)]
pub enum IngestEvent {
    /// A scheduled run of this route.
    Scheduled(Route),
    /// Move these files (names in `failed/`) back into the source directory.
    Retry { route: Route, files: Vec<String> },
    /// Report what a run of this route would do, changing nothing
    /// (`flows::plan`).
    Plan(Route),
}

/// A serde error as a [`RouteError`] naming the field path (under `prefix`,
/// which may be empty). serde reports a missing field at its parent's path,
/// so the missing field's name is appended from the message.
pub(crate) fn serde_error(
    e: serde_path_to_error::Error<serde_json::Error>,
    prefix: &str,
) -> RouteError {
    let path = e.path().to_string();
    let inner = e.into_inner();
    let msg = inner.to_string();
    let mut field = match (prefix.is_empty(), path == ".") {
        (true, _) => path,
        (false, true) => prefix.to_owned(),
        (false, false) => format!("{prefix}.{path}"),
    };
    if let Some(missing) = msg
        .strip_prefix("missing field `")
        .and_then(|m| m.split('`').next())
    {
        field = if field == "." || field.is_empty() {
            missing.to_owned()
        } else {
            format!("{field}.{missing}")
        };
    }
    RouteError::new(field, "", "cannot be read").with(msg)
}

fn parse_route(value: serde_json::Value, prefix: &str) -> Result<Route, RouteError> {
    let config: RouteConfig =
        serde_path_to_error::deserialize(value).map_err(|e| serde_error(e, prefix))?;
    config.validate().map_err(|mut e| {
        e.field = format!("{prefix}.{}", e.field);
        e
    })
}

/// Parse an invocation payload: `{"route": {...}}` from a schedule (also inside
/// an EventBridge envelope's `detail`), or `{"action":"retry","route":{...},"files":[...]}`.
pub fn parse_ingest_event(mut value: serde_json::Value) -> Result<IngestEvent, RouteError> {
    // EventBridge rules and Scheduler "templated" targets wrap the input.
    if value.get("detail-type").is_some() || value.get("source").is_some() {
        value = value
            .get_mut("detail")
            .map(serde_json::Value::take)
            .ok_or_else(|| RouteError::new("detail", "", "missing in EventBridge envelope"))?;
    }
    super::schema_ref::strip(&mut value);
    let serde_json::Value::Object(mut obj) = value else {
        return Err(RouteError::new("$", "", "event must be a JSON object"));
    };
    let route = obj
        .remove("route")
        .ok_or_else(|| RouteError::new("route", "", "missing"))?;
    match obj.remove("action") {
        None => {
            if let Some(k) = obj.keys().next() {
                return Err(RouteError::new(
                    k.clone(),
                    "",
                    "unknown field in scheduled event",
                ));
            }
            Ok(IngestEvent::Scheduled(parse_route(route, "route")?))
        }
        Some(serde_json::Value::String(a)) if a == "retry" => {
            let files = obj
                .remove("files")
                .ok_or_else(|| RouteError::new("files", "", "missing"))?;
            let files: Vec<String> = serde_json::from_value(files)
                .map_err(|e| RouteError::new("files", "", "must be a list of names").with(e))?;
            if files.is_empty() {
                return Err(RouteError::new(
                    "files",
                    "[]",
                    "must name at least one file",
                ));
            }
            for (i, f) in files.iter().enumerate() {
                if f.is_empty()
                    || f.contains('/')
                    || f.contains('\\')
                    || f.contains('\0')
                    || f == "."
                    || f == ".."
                    || f.ends_with(".error.json")
                {
                    return Err(RouteError::new(
                        format!("files[{i}]"),
                        f.escape_debug(),
                        "must be a plain file name in failed/",
                    ));
                }
            }
            if let Some(k) = obj.keys().next() {
                return Err(RouteError::new(
                    k.clone(),
                    "",
                    "unknown field in retry event",
                ));
            }
            Ok(IngestEvent::Retry {
                route: parse_route(route, "route")?,
                files,
            })
        }
        Some(serde_json::Value::String(a)) if a == "plan" => {
            if let Some(k) = obj.keys().next() {
                return Err(RouteError::new(
                    k.clone(),
                    "",
                    "unknown field in plan event",
                ));
            }
            Ok(IngestEvent::Plan(parse_route(route, "route")?))
        }
        Some(other) => Err(RouteError::new(
            "action",
            other,
            "unknown action (expected \"retry\" or \"plan\")",
        )),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    pub(crate) fn sample() -> serde_json::Value {
        json!({
            "name": "acme-invoices",
            "sftp_secret": "xecm/sftp/acme",
            "source_dir": "outbound/invoices",
            "recursive": true,
            "include": ["**/*.pdf", "**/*.csv"],
            "exclude": ["**/tmp-*"],
            "readiness": {"done_marker": ".done", "settle_secs": 10},
            "index": {"pattern": "**/index-*.csv", "file_column": "file"},
            "rules": [{
                "name": "invoice",
                "match": {"regex": "INV-(?P<invoice_no>\\d+)_(?P<vendor>[A-Z]+)\\.pdf", "file_types": ["pdf"], "max_size": 50000000},
                "place": {
                    "workspace": {"by": "business_object", "type_id": 310, "ext_system": "SAP", "bo_type": "LFA1", "bo_id": "{vendor}",
                                  "create": {"template_id": 17, "name": "Vendor {vendor}"}},
                    "folder": "Invoices/{yyyy}/{mm}",
                    "name": "Invoice {invoice_no}.{ext}",
                    "categories": [{"category_id": 9100, "attributes": {"2": "{invoice_no}", "3": "{transfer.received_at}"}}],
                    "rm_classification": 7001,
                    "on_existing": "add-version"
                }
            }],
            "fallback": "fail",
            "transfer_history": {"category_id": 9002, "attributes": {
                "route": 2, "host": 3, "source_path": 4, "size": 5, "sha256": 6,
                "received_at": 7, "ingested_at": 8, "invocation_id": 9, "idempotency_key": 10}}
        })
    }

    fn load(v: serde_json::Value) -> Result<Route, RouteError> {
        parse_route(v, "route")
    }

    fn err_with(mutate: impl FnOnce(&mut serde_json::Value)) -> RouteError {
        let mut v = sample();
        mutate(&mut v);
        match load(v) {
            Ok(_) => panic!("route was accepted"),
            Err(e) => e,
        }
    }

    #[test]
    fn given_realistic_route_when_loaded_then_rules_and_defaults_are_compiled() {
        let r = load(sample()).unwrap();
        assert_eq!(r.name(), "acme-invoices");
        assert_eq!(r.rules.len(), 1);
        assert_eq!(r.limits().max_attempts, 5);
        assert!(matches!(r.post_action, PostAction::Archive { .. }));
        assert!(matches!(
            r.rules[0].place.on_existing,
            ConflictPolicy::AddVersion
        ));
        assert_eq!(r.rules[0].place.categories[0].attributes[0].0, "9100_2");
    }

    #[test]
    fn given_invalid_regex_when_loaded_then_error_names_rule_field_and_value() {
        let e = err_with(|v| v["rules"][0]["match"]["regex"] = json!("(?P<x"));
        assert_eq!(e.field, "route.rules[0].match.regex");
        assert_eq!(e.value, "(?P<x");
        assert!(
            e.to_string()
                .starts_with("route.rules[0].match.regex: invalid regex \"(?P<x\": "),
            "{e}"
        );
    }

    #[test]
    fn given_unknown_field_when_loaded_then_error_names_its_path() {
        let e = err_with(|v| v["rules"][0]["match"]["regexx"] = json!("x"));
        assert_eq!(e.field, "route.rules[0].match.regexx");
        assert!(
            e.to_string()
                .starts_with("route.rules[0].match.regexx: cannot be read: unknown field `regexx`"),
            "{e}"
        );
        let e = err_with(|v| v["readiness"]["settle"] = json!(3));
        assert!(e.to_string().contains("settle"), "{e}");
    }

    #[test]
    fn given_template_using_capture_the_regex_lacks_when_loaded_then_refused() {
        let e = err_with(|v| v["rules"][0]["place"]["name"] = json!("{invoice_number}.pdf"));
        assert_eq!(e.field, "route.rules[0].place.name");
        assert!(e.to_string().contains("invoice_number"), "{e}");
    }

    #[test]
    fn given_bad_limits_and_readiness_when_loaded_then_each_is_named() {
        type Mutation = Box<dyn Fn(&mut serde_json::Value)>;
        let cases: Vec<(Mutation, &str)> = vec![
            (
                Box::new(|v| v["limits"] = json!({"lease_secs": 600})),
                "route.limits.lease_secs",
            ),
            (
                Box::new(|v| v["limits"] = json!({"parallelism": 0})),
                "route.limits.parallelism",
            ),
            (
                Box::new(|v| v["readiness"] = json!({"allow_empty": true})),
                "route.readiness",
            ),
            (
                Box::new(|v| v["readiness"]["done_marker"] = json!("done")),
                "route.readiness.done_marker",
            ),
            (
                Box::new(|v| v["source_dir"] = json!("../etc")),
                "route.source_dir",
            ),
            (
                Box::new(|v| v["source_dir"] = json!("/abs")),
                "route.source_dir",
            ),
            (
                Box::new(|v| v["include"] = json!(["a[", "b"])),
                "route.include[0]",
            ),
            (
                Box::new(|v| {
                    v["post_action"] = json!({"action": "archive", "dir": "failed/{yyyy}"})
                }),
                "route.post_action.dir",
            ),
            (
                Box::new(|v| v["post_action"] = json!({"action": "archive", "dir": "a/{name}"})),
                "route.post_action.dir",
            ),
            (
                Box::new(|v| v["transfer_history"]["attributes"]["host"] = json!(2)),
                "route.transfer_history.attributes.host",
            ),
            (
                Box::new(|v| v["rules"][0]["match"]["min_size"] = json!(60000000)),
                "route.rules[0].match.min_size",
            ),
            (
                Box::new(|v| {
                    v["rules"][0]["place"]["categories"][0]["attributes"]["x"] = json!("1")
                }),
                "route.rules[0].place.categories[0].attributes.x",
            ),
            (
                Box::new(|v| v["rules"][0]["place"]["workspace"]["type_id"] = json!(0)),
                "route.rules[0].place.workspace.type_id",
            ),
            (Box::new(|v| v["name"] = json!("bad name")), "route.name"),
            (
                Box::new(|v| {
                    v["rules"][0]["place"]["categories"] =
                        json!([{"category_id": 9002, "attributes": {"10": "forged"}}])
                }),
                "route.rules[0].place.categories[0].attributes",
            ),
            (
                Box::new(|v| {
                    v["rules"] = json!([]);
                }),
                "route.rules",
            ),
        ];
        for (mutate, field) in cases {
            let e = err_with(|v| mutate(v));
            assert_eq!(e.field, field, "{e}");
        }
    }

    #[test]
    fn given_missing_transfer_history_when_loaded_then_refused_without_hidden_default() {
        let e = err_with(|v| {
            v.as_object_mut().map(|o| o.remove("transfer_history"));
        });
        assert!(e.to_string().contains("transfer_history"), "{e}");
    }

    #[test]
    fn given_listing_entries_when_roles_assigned_then_work_files_and_companions_are_not_documents()
    {
        let r = load(sample()).unwrap();
        assert_eq!(r.entry_role("a/INV-1_X.pdf"), EntryRole::Document);
        assert_eq!(
            r.entry_role("a/INV-1_X.pdf.done"),
            EntryRole::Marker {
                document: "a/INV-1_X.pdf".into()
            }
        );
        assert_eq!(
            r.entry_role("INV-1_X.pdf.json"),
            EntryRole::Sidecar {
                document: "INV-1_X.pdf".into(),
                format: SidecarFormat::Json
            }
        );
        assert_eq!(r.entry_role("b/index-2026.csv"), EntryRole::Index);
        assert!(matches!(
            r.entry_role(".inflight/x.pdf"),
            EntryRole::Ignored(_)
        ));
        assert!(matches!(
            r.entry_role("failed/x.pdf"),
            EntryRole::Ignored(_)
        ));
        assert!(matches!(
            r.entry_role("archive/2026-01-01/x.pdf"),
            EntryRole::Ignored(_)
        ));
        assert!(matches!(
            r.entry_role("a/.hidden.pdf"),
            EntryRole::Ignored(_)
        ));
        assert!(matches!(
            r.entry_role("a/tmp-1.pdf"),
            EntryRole::Ignored("excluded")
        ));
        assert!(matches!(
            r.entry_role("a/x.docx"),
            EntryRole::Ignored("not included")
        ));
        assert!(matches!(r.entry_role("../x.pdf"), EntryRole::Ignored(_)));
        assert!(matches!(r.entry_role("a//x.pdf"), EntryRole::Ignored(_)));
    }

    #[test]
    fn given_non_recursive_route_when_entry_in_subdir_then_ignored() {
        let mut v = sample();
        v["recursive"] = json!(false);
        v["include"] = json!(["*.pdf"]);
        let r = load(v).unwrap();
        assert_eq!(r.entry_role("x.pdf"), EntryRole::Document);
        assert!(matches!(r.entry_role("sub/x.pdf"), EntryRole::Ignored(_)));
    }

    #[test]
    fn given_scheduled_and_enveloped_events_when_parsed_then_route_is_loaded() {
        let e = parse_ingest_event(json!({"route": sample()})).unwrap();
        assert!(matches!(e, IngestEvent::Scheduled(ref r) if r.name() == "acme-invoices"));
        let env = json!({"version": "0", "id": "1", "detail-type": "Scheduled Event", "source": "aws.events",
                         "detail": {"route": sample()}});
        assert!(matches!(
            parse_ingest_event(env).unwrap(),
            IngestEvent::Scheduled(_)
        ));
        let e = parse_ingest_event(json!({"route": sample(), "extra": 1})).unwrap_err();
        assert_eq!(e.field, "extra");
    }

    #[test]
    fn given_retry_event_when_parsed_then_files_are_checked_as_plain_names() {
        let ok = parse_ingest_event(
            json!({"action": "retry", "route": sample(), "files": ["INV-1_X.pdf"]}),
        )
        .unwrap();
        assert!(matches!(ok, IngestEvent::Retry { ref files, .. } if files == &["INV-1_X.pdf"]));
        for bad in ["../x", "a/b", "", "x.pdf.error.json", "a\0b"] {
            let e =
                parse_ingest_event(json!({"action": "retry", "route": sample(), "files": [bad]}))
                    .unwrap_err();
            assert_eq!(e.field, "files[0]", "{bad:?}");
        }
        let e = parse_ingest_event(json!({"action": "purge", "route": sample()})).unwrap_err();
        assert_eq!(e.field, "action");
    }
}
