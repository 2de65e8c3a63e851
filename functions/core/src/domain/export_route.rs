//! Export routes (`ecm-export`): when an approved document goes out, where to,
//! under which name; and the manual console events.
//!
//! The webhook body only says *which* node to look at. The flow re-reads the
//! node (version, categories, ancestors, workspace type) into [`NodeFacts`],
//! and [`decide`] applies the configured routes to those facts:
//! the first route whose approval predicate holds and which has a matching
//! destination rule wins; every route's reason for saying no is kept for the
//! `Export Rejected` event.
//!
//! Export routes are not carried in the webhook (the ECM does not know them);
//! they come from the function's configuration as an [`ExportConfig`] JSON
//! document (e.g. an environment variable set by Terraform). Manual events
//! name a route by its `name`.
//!
//! The idempotency key of a delivery is (route, destination, node, version):
//! a repeated callback for the same version delivers nothing new, while a
//! `resend` bypasses the check and is recorded as a resend.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::names::sftp_safe_name;
use super::route::RouteError;
use super::schema_ref::SchemaRef;
use super::template::{Scope, Template, TemplateContext, TemplateError};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExportConfig {
    /// The JSON Schema this file follows (for editors); ignored.
    #[serde(rename = "$schema", default, skip_serializing)]
    pub schema: SchemaRef,
    /// Where each export is recorded on the node; required, like the ingest
    /// side's transfer history, because the category belongs to the site.
    pub export_history: ExportHistoryConfig,
    pub routes: Vec<ExportRouteConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExportHistoryConfig {
    pub category_id: i64,
    pub attributes: ExportHistoryAttributes,
    /// Delivery records kept in `attributes.deliveries` (at most the
    /// attribute's maximum number of values; default
    /// [`super::export_history::DEFAULT_MAX_DELIVERIES`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_deliveries: Option<u32>,
}

/// Attribute ids within the export-history category.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExportHistoryAttributes {
    /// Last exported version number.
    pub version: u32,
    pub exported_at: u32,
    /// `<route>/<destination>:<path>` of the last delivery.
    pub destination: u32,
    pub sha256: u32,
    /// A multi-value text attribute: one record per (route, destination,
    /// version) delivered (`domain::export_history`).
    pub deliveries: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExportRouteConfig {
    pub name: String,
    pub approval: ApprovalPredicate,
    pub destinations: Vec<DestinationConfig>,
}

/// `category attribute == value`, optionally a minimum version and an ancestor
/// folder or workspace the node must live under.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApprovalPredicate {
    pub category_id: i64,
    /// Attribute key, `{cat}_{attr}` (e.g. `9001_2`).
    pub attribute: String,
    pub value: String,
    #[serde(default)]
    pub min_version: Option<u32>,
    #[serde(default)]
    pub ancestor_id: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PackageFormat {
    /// A directory with the files and `manifest.json`, renamed into place.
    #[default]
    Dir,
    /// One zip with the files and `manifest.json`.
    Zip,
}

/// Conditions on the node; all given ones must hold, none means "always".
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DestinationWhen {
    #[serde(default)]
    pub workspace_type_id: Option<i64>,
    /// Attribute key → required value.
    #[serde(default)]
    pub categories: BTreeMap<String, String>,
    #[serde(default)]
    pub ancestor_id: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DestinationConfig {
    pub name: String,
    #[serde(default)]
    pub when: DestinationWhen,
    pub sftp_secret: String,
    /// Directory template on the SFTP server (`outbound/{cat.9001_5}`).
    pub directory: String,
    /// File-name template (`{stem}_v{version}.{ext}`).
    #[serde(default = "default_file_name")]
    pub file_name: String,
    /// Replace an existing file of the same name; otherwise that is a failure.
    #[serde(default)]
    pub overwrite: bool,
    /// Also write `<file>.sha256` (`<hex>  <file>`, as `sha256sum` prints).
    #[serde(default)]
    pub sha256_sidecar: bool,
    #[serde(default)]
    pub package: PackageFormat,
}

fn default_file_name() -> String {
    "{name}".to_owned()
}

/// A compiled destination.
#[derive(Debug, Clone)]
pub struct Destination {
    pub config: DestinationConfig,
    pub directory: Template,
    pub file_name: Template,
}

#[derive(Debug, Clone)]
pub struct ExportRoute {
    pub name: String,
    pub approval: ApprovalPredicate,
    pub destinations: Vec<Destination>,
}

/// Validated export routes.
#[derive(Debug, Clone)]
pub struct ExportRoutes {
    pub export_history: ExportHistoryConfig,
    pub routes: Vec<ExportRoute>,
}

fn err(field: String, value: impl std::fmt::Display, problem: &str) -> RouteError {
    RouteError {
        field,
        value: value.to_string(),
        problem: problem.to_owned(),
        detail: None,
    }
}

fn attr_key_ok(k: &str) -> bool {
    let parts: Vec<&str> = k.split('_').collect();
    (parts.len() == 2 || parts.len() == 4)
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 9 && p.bytes().all(|b| b.is_ascii_digit()))
}

impl ExportConfig {
    /// Parse JSON with field paths in errors, then validate.
    pub fn from_json(text: &str) -> Result<ExportRoutes, RouteError> {
        let mut de = serde_json::Deserializer::from_str(text);
        let cfg: ExportConfig = serde_path_to_error::deserialize(&mut de)
            .map_err(|e| super::route::serde_error(e, ""))?;
        cfg.validate()
    }

    pub fn validate(self) -> Result<ExportRoutes, RouteError> {
        if self.routes.is_empty() {
            return Err(err(
                "routes".into(),
                "[]",
                "at least one export route is needed",
            ));
        }
        let h = &self.export_history;
        if h.category_id <= 0 {
            return Err(err(
                "export_history.category_id".into(),
                h.category_id,
                "must be positive",
            ));
        }
        let a = &h.attributes;
        let mut ids = BTreeSet::new();
        for (f, id) in [
            ("version", a.version),
            ("exported_at", a.exported_at),
            ("destination", a.destination),
            ("sha256", a.sha256),
            ("deliveries", a.deliveries),
        ] {
            if id == 0 || !ids.insert(id) {
                return Err(err(
                    format!("export_history.attributes.{f}"),
                    id,
                    "must be a positive attribute id, used once",
                ));
            }
        }
        if h.max_deliveries == Some(0) {
            return Err(err(
                "export_history.max_deliveries".into(),
                0,
                "must keep at least one record",
            ));
        }
        let mut names = BTreeSet::new();
        let mut routes = Vec::new();
        for (i, r) in self.routes.into_iter().enumerate() {
            let f = format!("routes[{i}]");
            let name_ok = !r.name.is_empty()
                && r.name.len() <= 64
                && r.name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !name_ok {
                return Err(err(
                    format!("{f}.name"),
                    &r.name,
                    "must be 1-64 of [A-Za-z0-9_-]",
                ));
            }
            if !names.insert(r.name.clone()) {
                return Err(err(format!("{f}.name"), &r.name, "duplicate route name"));
            }
            let a = &r.approval;
            if a.category_id <= 0 {
                return Err(err(
                    format!("{f}.approval.category_id"),
                    a.category_id,
                    "must be positive",
                ));
            }
            if !attr_key_ok(&a.attribute)
                || !a.attribute.starts_with(&format!("{}_", a.category_id))
            {
                return Err(err(
                    format!("{f}.approval.attribute"),
                    &a.attribute,
                    "must be a key of the category, like 9001_2",
                ));
            }
            if a.ancestor_id.is_some_and(|x| x <= 0) {
                return Err(err(
                    format!("{f}.approval.ancestor_id"),
                    a.ancestor_id.unwrap_or(0),
                    "must be positive",
                ));
            }
            if r.destinations.is_empty() {
                return Err(err(
                    format!("{f}.destinations"),
                    "[]",
                    "at least one destination is needed",
                ));
            }
            let mut destinations = Vec::new();
            let mut dnames = BTreeSet::new();
            for (j, d) in r.destinations.into_iter().enumerate() {
                let df = format!("{f}.destinations[{j}]");
                if d.name.is_empty() || !dnames.insert(d.name.clone()) {
                    return Err(err(
                        format!("{df}.name"),
                        &d.name,
                        "empty or duplicate destination name",
                    ));
                }
                if d.sftp_secret.trim().is_empty() {
                    return Err(err(
                        format!("{df}.sftp_secret"),
                        &d.sftp_secret,
                        "must not be empty",
                    ));
                }
                for k in d.when.categories.keys() {
                    if !attr_key_ok(k) {
                        return Err(err(
                            format!("{df}.when.categories"),
                            k,
                            "must be an attribute key like 9001_2",
                        ));
                    }
                }
                if d.directory.starts_with('/') || d.directory.split('/').any(|s| s == "..") {
                    return Err(err(
                        format!("{df}.directory"),
                        &d.directory,
                        "must be relative without '..'",
                    ));
                }
                let scope = Scope::export_name();
                let directory = Template::parse(&d.directory, &scope).map_err(|e| {
                    let mut x = err(format!("{df}.directory"), &d.directory, "invalid template");
                    x.detail = Some(e.to_string());
                    x
                })?;
                if d.file_name.contains('/') {
                    return Err(err(
                        format!("{df}.file_name"),
                        &d.file_name,
                        "must not contain '/'",
                    ));
                }
                let file_name = Template::parse(&d.file_name, &scope).map_err(|e| {
                    let mut x = err(format!("{df}.file_name"), &d.file_name, "invalid template");
                    x.detail = Some(e.to_string());
                    x
                })?;
                destinations.push(Destination {
                    config: d,
                    directory,
                    file_name,
                });
            }
            routes.push(ExportRoute {
                name: r.name,
                approval: r.approval,
                destinations,
            });
        }
        Ok(ExportRoutes {
            export_history: self.export_history,
            routes,
        })
    }
}

/// What the flow read back from the ECM about the node.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeFacts {
    pub node_id: i64,
    pub name: String,
    /// Latest version number.
    pub version: u32,
    /// Category attribute key → value (multi-values joined by the flow).
    pub categories: BTreeMap<String, String>,
    /// Parent chain, nearest first (folder, ..., workspace, volume).
    pub ancestors: Vec<i64>,
    pub workspace_type_id: Option<i64>,
}

impl ApprovalPredicate {
    /// `Ok` if the node, as re-read from the ECM, is approved; else why not.
    pub fn check(&self, node: &NodeFacts) -> Result<(), String> {
        match node.categories.get(&self.attribute) {
            None => return Err(format!("attribute {} not set", self.attribute)),
            Some(v) if v != &self.value => {
                return Err(format!(
                    "attribute {} is {v:?}, not {:?}",
                    self.attribute, self.value
                ));
            }
            Some(_) => {}
        }
        if let Some(min) = self.min_version
            && node.version < min
        {
            return Err(format!("version {} is below {min}", node.version));
        }
        if let Some(a) = self.ancestor_id
            && !node.ancestors.contains(&a)
        {
            return Err(format!("not under node {a}"));
        }
        Ok(())
    }
}

impl DestinationWhen {
    pub fn matches(&self, node: &NodeFacts) -> bool {
        self.workspace_type_id
            .is_none_or(|t| node.workspace_type_id == Some(t))
            && self.ancestor_id.is_none_or(|a| node.ancestors.contains(&a))
            && self
                .categories
                .iter()
                .all(|(k, v)| node.categories.get(k) == Some(v))
    }
}

/// A planned delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub route: String,
    pub destination: String,
    pub sftp_secret: String,
    /// Directory segments on the SFTP server.
    pub directory: Vec<String>,
    pub file_name: String,
    pub overwrite: bool,
    pub sha256_sidecar: bool,
    pub package: PackageFormat,
    pub node_id: i64,
    pub version: u32,
    pub idempotency_key: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExportDecision {
    Deliver(Delivery),
    /// No route applies; reasons per route, for the `Export Rejected` event.
    Rejected {
        reasons: Vec<(String, String)>,
    },
}

/// `exp1-<route>-<destination>-<node>-v<version>`; readable on purpose, it is
/// stored on the node as "last exported" and shown to people.
pub fn export_key(route: &str, destination: &str, node_id: i64, version: u32) -> String {
    format!("exp1-{route}-{destination}-{node_id}-v{version}")
}

fn render(
    dest: &Destination,
    node: &NodeFacts,
    route: &str,
    at: DateTime<Utc>,
) -> Result<(Vec<String>, String), TemplateError> {
    let ctx = TemplateContext {
        name: Some(node.name.clone()),
        date: Some(at),
        version: Some(node.version),
        node_id: Some(node.node_id),
        route: Some(route.to_owned()),
        categories: node.categories.clone(),
        ..TemplateContext::default()
    };
    let dir = dest.directory.render_path(&ctx)?;
    let file = dest.file_name.render_segment(&ctx)?;
    // Node names may hold anything Content Server allows; the SFTP side gets
    // a name that is one harmless segment.
    Ok((
        dir.iter().map(|s| sftp_safe_name(s)).collect(),
        sftp_safe_name(&file),
    ))
}

/// Apply the routes to a node. `only_route` restricts to one route (manual
/// events). `at` is the time date placeholders render.
pub fn decide(
    routes: &ExportRoutes,
    node: &NodeFacts,
    only_route: Option<&str>,
    at: DateTime<Utc>,
) -> Result<ExportDecision, TemplateError> {
    let mut reasons = Vec::new();
    for r in &routes.routes {
        if only_route.is_some_and(|o| o != r.name) {
            continue;
        }
        if let Err(why) = r.approval.check(node) {
            reasons.push((r.name.clone(), why));
            continue;
        }
        let Some(dest) = r.destinations.iter().find(|d| d.config.when.matches(node)) else {
            reasons.push((r.name.clone(), "no destination rule matches".into()));
            continue;
        };
        let (directory, file_name) = render(dest, node, &r.name, at)?;
        return Ok(ExportDecision::Deliver(Delivery {
            route: r.name.clone(),
            destination: dest.config.name.clone(),
            sftp_secret: dest.config.sftp_secret.clone(),
            directory,
            file_name,
            overwrite: dest.config.overwrite,
            sha256_sidecar: dest.config.sha256_sidecar,
            package: dest.config.package,
            node_id: node.node_id,
            version: node.version,
            idempotency_key: export_key(&r.name, &dest.config.name, node.node_id, node.version),
        }));
    }
    if let Some(o) = only_route
        && !routes.routes.iter().any(|r| r.name == o)
    {
        reasons.push((o.to_owned(), "no such export route".into()));
    }
    Ok(ExportDecision::Rejected { reasons })
}

impl Delivery {
    /// `<dir>/<file>` on the SFTP server.
    pub fn remote_path(&self) -> String {
        let mut parts = self.directory.clone();
        parts.push(self.file_name.clone());
        parts.join("/")
    }
}

/// Export-history category values recording a delivery on the node.
pub fn export_history_values(
    h: &ExportHistoryConfig,
    d: &Delivery,
    sha256: &str,
    at: DateTime<Utc>,
) -> BTreeMap<String, String> {
    let key = |id: u32| format!("{}_{id}", h.category_id);
    let a = &h.attributes;
    BTreeMap::from([
        (key(a.version), d.version.to_string()),
        (
            key(a.exported_at),
            at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        ),
        (
            key(a.destination),
            format!("{}/{}:{}", d.route, d.destination, d.remote_path()),
        ),
        (key(a.sha256), sha256.to_ascii_lowercase()),
    ])
}

/// Name to upload under before the atomic rename into place: a dot-file in
/// the same directory (same filesystem, so the rename is atomic; hidden, so
/// partner pollers that skip dot-files never see a partial file). The nonce
/// (invocation id) keeps concurrent deliveries apart.
pub fn temp_name(file_name: &str, nonce: &str) -> String {
    let nonce: String = nonce
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(12)
        .collect();
    let stem: String = file_name.chars().take(180).collect();
    format!(".{stem}.{nonce}.part")
}

/// The optional `<file>.sha256` sidecar: name and content in `sha256sum`
/// format, so `sha256sum -c` verifies the delivery on the partner's side.
pub fn sha256_sidecar(file_name: &str, sha256_hex: &str) -> (String, String) {
    (
        format!("{file_name}.sha256"),
        format!("{}  {file_name}\n", sha256_hex.to_ascii_lowercase()),
    )
}

/// Where a package is assembled and where it ends up (relative to the
/// destination directory): a `.partial` dot-directory renamed into place for
/// `dir`, a dot-file renamed to `<name>.zip` for `zip`.
pub fn package_paths(package_name: &str, format: PackageFormat, nonce: &str) -> (String, String) {
    let name = sftp_safe_name(package_name);
    match format {
        PackageFormat::Dir => (format!(".{name}.partial"), name),
        PackageFormat::Zip => {
            let file = format!("{name}.zip");
            (temp_name(&file, nonce), file)
        }
    }
}

// ---------------------------------------------------------------- manual events

/// Manual console events of `ecm-export`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "action", rename_all = "kebab-case", deny_unknown_fields)]
pub enum ExportManualEvent {
    /// Deliver the latest approved version again, bypassing the idempotency
    /// check; recorded as a resend.
    Resend {
        node_id: i64,
        route: String,
        #[serde(default)]
        reason: Option<String>,
    },
    /// Deliver a folder or workspace subtree as one package.
    ExportPackage {
        node_id: i64,
        route: String,
        /// Package name (directory or zip stem); defaults to the node name.
        #[serde(default)]
        package_name: Option<String>,
        /// Overrides the destination's package format.
        #[serde(default)]
        format: Option<PackageFormat>,
    },
    /// The scheduled sweep of a route: approved documents under its scope
    /// whose version has no delivery recorded go out as if their callback
    /// had arrived (a callback lost, or refused while the function was
    /// down). Bounded per run; an unfinished run continues from `cursor`.
    Sweep {
        route: String,
        /// Folders to walk; defaults to the route's `approval.ancestor_id`.
        #[serde(default)]
        roots: Option<Vec<i64>>,
        /// Documents to look at in this run (default
        /// [`SWEEP_DEFAULT_MAX_DOCUMENTS`], at most [`SWEEP_MAX_DOCUMENTS`]).
        #[serde(default)]
        max_documents: Option<u32>,
        /// Where an earlier run of this sweep stopped.
        #[serde(default)]
        cursor: Option<SweepCursor>,
    },
    /// Report what an approval of this node would do (each route's
    /// approval verdict, the route and destination that would deliver it,
    /// the rendered remote path, what the export history already holds),
    /// delivering, recording and publishing nothing.
    Plan {
        node_id: i64,
        /// Only this route (as a resend would); default: every route, as
        /// a callback.
        #[serde(default)]
        route: Option<String>,
    },
}

pub const SWEEP_DEFAULT_MAX_DOCUMENTS: u32 = 500;
pub const SWEEP_MAX_DOCUMENTS: u32 = 10_000;

/// Where a sweep stopped: the folders still to list, each with the page to
/// list next and how many of its entries are done (the last one is listed
/// first). A document whose delivery was cut short is looked at again; the
/// export history answers it as a duplicate if it went out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SweepCursor {
    pub pending: Vec<SweepFolder>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SweepFolder {
    pub node_id: i64,
    pub page: u32,
    /// Entries of that page already handled (a run that stopped inside it).
    #[serde(default)]
    pub skip: u32,
}

impl ExportManualEvent {
    pub fn from_json(mut value: serde_json::Value) -> Result<Self, RouteError> {
        super::schema_ref::strip(&mut value);
        let ev: ExportManualEvent = serde_path_to_error::deserialize(value)
            .map_err(|e| super::route::serde_error(e, ""))?;
        let (node_id, route) = match &ev {
            ExportManualEvent::Resend { node_id, route, .. }
            | ExportManualEvent::ExportPackage { node_id, route, .. } => {
                (Some(*node_id), Some(route))
            }
            ExportManualEvent::Sweep { route, .. } => (None, Some(route)),
            ExportManualEvent::Plan { node_id, route } => (Some(*node_id), route.as_ref()),
        };
        if let Some(node_id) = node_id
            && node_id <= 0
        {
            return Err(err("node_id".into(), node_id, "must be a positive node id"));
        }
        if let ExportManualEvent::Sweep {
            roots,
            max_documents,
            cursor,
            ..
        } = &ev
        {
            if let Some(r) = roots {
                if r.is_empty() {
                    return Err(err("roots".into(), "[]", "must name at least one folder"));
                }
                if let Some(bad) = r.iter().find(|id| **id <= 0) {
                    return Err(err("roots".into(), bad, "must be positive node ids"));
                }
            }
            if let Some(m) = max_documents
                && (*m == 0 || *m > SWEEP_MAX_DOCUMENTS)
            {
                return Err(err(
                    "max_documents".into(),
                    m,
                    "must be between 1 and 10000",
                ));
            }
            if let Some(c) = cursor
                && let Some(bad) = c.pending.iter().find(|f| f.node_id <= 0 || f.page == 0)
            {
                return Err(err(
                    "cursor.pending".into(),
                    format!("{bad:?}"),
                    "needs positive node ids and pages counted from 1",
                ));
            }
        }
        if let Some(route) = route
            && route.trim().is_empty()
        {
            return Err(err("route".into(), route, "must name an export route"));
        }
        if let ExportManualEvent::ExportPackage {
            package_name: Some(p),
            ..
        } = &ev
            && sftp_safe_name(p) != *p
        {
            return Err(err(
                "package_name".into(),
                p.escape_debug(),
                "must be a plain, visible file name",
            ));
        }
        Ok(ev)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    pub(crate) fn sample_config() -> serde_json::Value {
        json!({"export_history": {"category_id": 9003, "attributes": {"version": 2, "exported_at": 3, "destination": 4, "sha256": 5, "deliveries": 6}},
            "routes": [
            {"name": "price-lists", "approval": {"category_id": 9001, "attribute": "9001_2", "value": "Approved", "min_version": 2},
             "destinations": [
                {"name": "eu-distributors", "when": {"categories": {"9001_5": "EU"}}, "sftp_secret": "xecm/sftp/distributors-eu",
                 "directory": "outbound/{cat.9001_5}/{yyyy}", "file_name": "{stem}_v{version}.{ext}", "sha256_sidecar": true},
                {"name": "default", "sftp_secret": "xecm/sftp/distributors", "directory": "outbound", "overwrite": true}
             ]},
            {"name": "audit-packs", "approval": {"category_id": 9001, "attribute": "9001_2", "value": "Released", "ancestor_id": 5000},
             "destinations": [{"name": "auditor", "sftp_secret": "xecm/sftp/auditor", "directory": "packs", "package": "zip"}]}
        ]})
    }

    fn routes() -> ExportRoutes {
        ExportConfig::from_json(&sample_config().to_string()).unwrap()
    }

    fn node(status: &str, region: &str, version: u32) -> NodeFacts {
        NodeFacts {
            node_id: 4711,
            name: "Price list: 2026.xlsx".into(),
            version,
            categories: [
                ("9001_2".to_string(), status.to_string()),
                ("9001_5".to_string(), region.to_string()),
            ]
            .into(),
            ancestors: vec![4000, 2000],
            workspace_type_id: Some(310),
        }
    }

    fn at() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 18, 10, 15, 0)
            .single()
            .unwrap()
    }

    #[test]
    fn given_approved_node_when_decided_then_first_matching_destination_with_rendered_name() {
        let ExportDecision::Deliver(d) =
            decide(&routes(), &node("Approved", "EU", 3), None, at()).unwrap()
        else {
            panic!("not delivered");
        };
        assert_eq!(
            (d.route.as_str(), d.destination.as_str()),
            ("price-lists", "eu-distributors")
        );
        assert_eq!(d.directory, vec!["outbound", "EU", "2026"]);
        assert_eq!(d.file_name, "Price list_ 2026_v3.xlsx");
        assert!(d.sha256_sidecar && !d.overwrite);
        assert_eq!(
            d.idempotency_key,
            "exp1-price-lists-eu-distributors-4711-v3"
        );
        let ExportDecision::Deliver(d) =
            decide(&routes(), &node("Approved", "US", 3), None, at()).unwrap()
        else {
            panic!("not delivered");
        };
        assert_eq!(
            (d.destination.as_str(), d.file_name.as_str()),
            ("default", "Price list_ 2026.xlsx")
        );
    }

    #[test]
    fn given_body_claims_approval_but_ecm_disagrees_when_decided_then_rejected_with_reasons() {
        let ExportDecision::Rejected { reasons } =
            decide(&routes(), &node("Draft", "EU", 3), None, at()).unwrap()
        else {
            panic!("delivered");
        };
        assert_eq!(reasons.len(), 2);
        assert!(reasons[0].1.contains("\"Draft\""), "{reasons:?}");
        let ExportDecision::Rejected { reasons } =
            decide(&routes(), &node("Approved", "EU", 1), None, at()).unwrap()
        else {
            panic!("delivered");
        };
        assert!(reasons[0].1.contains("below 2"), "{reasons:?}");
        // Released but not under the required ancestor.
        assert!(matches!(
            decide(&routes(), &node("Released", "EU", 1), None, at()).unwrap(),
            ExportDecision::Rejected { .. }
        ));
        let mut under = node("Released", "EU", 1);
        under.ancestors.push(5000);
        assert!(
            matches!(decide(&routes(), &under, None, at()).unwrap(), ExportDecision::Deliver(ref d) if d.package == PackageFormat::Zip)
        );
    }

    #[test]
    fn given_manual_route_restriction_when_decided_then_only_that_route_or_unknown_reported() {
        let n = node("Approved", "EU", 3);
        assert!(matches!(
            decide(&routes(), &n, Some("audit-packs"), at()).unwrap(),
            ExportDecision::Rejected { .. }
        ));
        let ExportDecision::Rejected { reasons } =
            decide(&routes(), &n, Some("nope"), at()).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            reasons,
            vec![("nope".to_string(), "no such export route".to_string())]
        );
    }

    #[test]
    fn given_hostile_category_value_when_rendered_then_directory_traversal_refused() {
        let mut cfg = sample_config();
        cfg["routes"][0]["destinations"][0]["when"] = json!({});
        let routes = ExportConfig::from_json(&cfg.to_string()).unwrap();
        for evil in ["../../etc", "a/b", ".."] {
            let e = decide(&routes, &node("Approved", evil, 3), None, at()).unwrap_err();
            assert!(
                matches!(e, TemplateError::UnsafeSegment { .. }),
                "{evil}: {e}"
            );
        }
        assert!(decide(&routes, &node("Approved", "EU", 3), None, at()).is_ok());
    }

    fn hist() -> serde_json::Value {
        sample_config()["export_history"].clone()
    }

    #[test]
    fn given_delivery_when_recorded_then_export_history_keys_and_values() {
        let ExportDecision::Deliver(d) =
            decide(&routes(), &node("Approved", "EU", 3), None, at()).unwrap()
        else {
            panic!("not delivered");
        };
        let v = export_history_values(&routes().export_history, &d, &"AB".repeat(32), at());
        assert_eq!(v["9003_2"], "3");
        assert_eq!(v["9003_3"], "2026-11-18T10:15:00Z");
        assert_eq!(
            v["9003_4"],
            "price-lists/eu-distributors:outbound/EU/2026/Price list_ 2026_v3.xlsx"
        );
        assert_eq!(v["9003_5"], "ab".repeat(32));
    }

    #[test]
    fn given_invalid_export_config_when_loaded_then_field_is_named() {
        let cases: Vec<(serde_json::Value, &str)> = vec![
            (json!({"export_history": hist(), "routes": []}), "routes"),
            (
                json!({"export_history": {"category_id": 9003, "attributes": {"version": 2, "exported_at": 2, "destination": 4, "sha256": 5, "deliveries": 6}}, "routes": sample_config()["routes"]}),
                "export_history.attributes.exported_at",
            ),
            (
                json!({"routes": sample_config()["routes"]}),
                "export_history",
            ),
            (
                json!({"export_history": hist(), "routes": [{"name": "a", "approval": {"category_id": 9001, "attribute": "9002_2", "value": "x"}, "destinations": [{"name": "d", "sftp_secret": "s", "directory": "o"}]}]}),
                "routes[0].approval.attribute",
            ),
            (
                json!({"export_history": hist(), "routes": [{"name": "a", "approval": {"category_id": 9001, "attribute": "9001_2", "value": "x"}, "destinations": [{"name": "d", "sftp_secret": "s", "directory": "o/{node}"}]}]}),
                "routes[0].destinations[0].directory",
            ),
            (
                json!({"export_history": hist(), "routes": [{"name": "a", "approval": {"category_id": 9001, "attribute": "9001_2", "value": "x"}, "destinations": [{"name": "d", "sftp_secret": "s", "directory": "../o"}]}]}),
                "routes[0].destinations[0].directory",
            ),
            (
                json!({"export_history": hist(), "routes": [{"name": "a", "approval": {"category_id": 9001, "attribute": "9001_2", "value": "x", "extra": 1}, "destinations": []}]}),
                "routes[0].approval.extra",
            ),
        ];
        for (v, field) in cases {
            let e = ExportConfig::from_json(&v.to_string()).unwrap_err();
            assert_eq!(e.field, field, "{e}");
        }
    }

    #[test]
    fn given_delivery_when_staged_then_temp_name_hidden_and_sidecar_checkable() {
        assert_eq!(temp_name("a.pdf", "5b2c-41d9"), ".a.pdf.5b2c41d9.part");
        assert!(temp_name(&"x".repeat(300), "n").len() < 255);
        assert_eq!(
            sha256_sidecar("a.pdf", &"AB".repeat(32)),
            (
                "a.pdf.sha256".to_string(),
                format!("{}  a.pdf\n", "ab".repeat(32))
            )
        );
        assert_eq!(
            package_paths("Kit", PackageFormat::Dir, "n"),
            (".Kit.partial".to_string(), "Kit".to_string())
        );
        assert_eq!(
            package_paths("../Kit", PackageFormat::Zip, "n"),
            ("._._Kit.zip.n.part".to_string(), "_._Kit.zip".to_string())
        );
    }

    #[test]
    fn given_manual_events_when_parsed_then_strict_and_validated() {
        let r = ExportManualEvent::from_json(
            json!({"action": "resend", "node_id": 4711, "route": "price-lists"}),
        )
        .unwrap();
        assert!(matches!(r, ExportManualEvent::Resend { node_id: 4711, .. }));
        let p = ExportManualEvent::from_json(json!({"action": "export-package", "node_id": 5000, "route": "audit-packs", "package_name": "Q4-pack", "format": "zip"})).unwrap();
        assert!(matches!(
            p,
            ExportManualEvent::ExportPackage {
                format: Some(PackageFormat::Zip),
                ..
            }
        ));
        for bad in [
            json!({"action": "resend", "node_id": 0, "route": "x"}),
            json!({"action": "resend", "node_id": 1, "route": "x", "force": true}),
            json!({"action": "delete", "node_id": 1, "route": "x"}),
            json!({"action": "export-package", "node_id": 1, "route": "x", "package_name": "../up"}),
        ] {
            assert!(ExportManualEvent::from_json(bad.clone()).is_err(), "{bad}");
        }
    }
}
