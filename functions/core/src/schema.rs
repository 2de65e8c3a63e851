//! JSON Schemas of the three configurations and their invocation events,
//! generated from the domain types (`schemars`), so an editor can complete and
//! check a route while the function stays the one authority on what it accepts.
//!
//! The committed copies live in `docs/schema/`; `cargo run -p xecm-stack --bin
//! gen-schemas` rewrites them, and the `schemas` integration test fails when
//! they differ from these, when a sample in `events/` or `infra/examples/`
//! does not validate, or when `docs/routes.md` leaves a property out.
//!
//! The schemas say what *parses*; the validation in `domain` (templates that
//! compile, ids that are positive, readiness that is configured) adds rules a
//! schema cannot express, so a file that validates can still be refused with
//! an error naming the field.

use schemars::{JsonSchema, Schema, SchemaGenerator, generate::SchemaSettings};
use serde::Deserialize;
use serde_json::Value;

use crate::domain::backup::BackupConfig;
use crate::domain::export_route::{ExportConfig, ExportManualEvent};
use crate::domain::route::RouteConfig;
use crate::domain::schema_ref::{SCHEMA_KEY, SchemaRef};

/// An `sftp-ingest` invocation: a scheduled run (no `action`), a retry of
/// files in `failed/`, or a plan of what a run would do. Only its schema is
/// used; the parser is `domain::route::parse_ingest_event`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct IngestEventDoc {
    #[serde(rename = "$schema", default)]
    schema: SchemaRef,
    /// Absent for a scheduled run.
    #[serde(default)]
    action: Option<IngestAction>,
    /// The route, as in a schedule's input (see `ingest-route.schema.json`).
    route: RouteConfig,
    /// With `retry` only: file names in the route's `failed/` folder.
    #[serde(default)]
    files: Option<Vec<String>>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum IngestAction {
    /// Move the named files from `failed/` back into the source directory.
    Retry,
    /// List the source directory and report, per file, what a run would do;
    /// claims, uploads, moves and creates nothing.
    Plan,
}

/// A `backup-snapshot` invocation: a scheduled snapshot (no `action`), or a
/// continuation, verification or restore of the snapshot `snapshot_id`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct BackupEventDoc {
    #[serde(rename = "$schema", default)]
    schema: SchemaRef,
    /// Absent for a scheduled snapshot.
    #[serde(default)]
    action: Option<BackupAction>,
    /// The backup plan (see `backup-plan.schema.json`).
    backup: BackupConfig,
    /// `YYYYMMDDTHHMMSSZ`; required by `continue`, `verify` and `restore`.
    #[serde(default)]
    snapshot_id: Option<String>,
    /// With `restore` only: the folder the snapshot is restored into.
    #[serde(default)]
    target_folder: Option<i64>,
    /// With `restore` only: restore just this node (and what is below it).
    #[serde(default)]
    node_id: Option<i64>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum BackupAction {
    /// Go on with a snapshot an earlier invocation left unfinished.
    Continue,
    /// Re-hash a snapshot against its manifest.
    Verify,
    /// Bring a snapshot (or one node of it) back into the ECM.
    Restore,
}

/// One committed schema: its file name under `docs/schema/` and its content.
pub struct SchemaFile {
    pub file: &'static str,
    pub schema: Value,
}

/// Lets every variant of a tagged enum carry `$schema` (its parser strips
/// the key before reading the variant; see `domain::schema_ref::strip`).
fn allow_schema_key_in_variants(root: &mut serde_json::Map<String, Value>) {
    for key in ["oneOf", "anyOf"] {
        let Some(Value::Array(variants)) = root.get_mut(key) else {
            continue;
        };
        for v in variants {
            if let Some(Value::Object(props)) = v.get_mut("properties")
                && !props.contains_key(SCHEMA_KEY)
            {
                let mut with = serde_json::Map::new();
                with.insert(
                    SCHEMA_KEY.to_owned(),
                    SchemaRef::json_schema(&mut SchemaGenerator::default()).to_value(),
                );
                with.extend(std::mem::take(props));
                *props = with;
            }
        }
    }
}

fn generate<T: JsonSchema>() -> Value {
    let generator = SchemaSettings::draft2020_12().into_generator();
    let schema: Schema = generator.into_root_schema_for::<T>();
    let mut v = schema.to_value();
    if let Value::Object(root) = &mut v {
        allow_schema_key_in_variants(root);
        // `$schema` first, as readers expect it.
        let mut out = serde_json::Map::new();
        out.insert(
            SCHEMA_KEY.into(),
            root.remove(SCHEMA_KEY).unwrap_or(Value::Null),
        );
        out.extend(std::mem::take(root));
        *root = out;
    }
    v
}

/// Every schema, in the order the reference documents them.
pub fn all() -> Vec<SchemaFile> {
    fn f<T: JsonSchema>(file: &'static str) -> SchemaFile {
        SchemaFile {
            file,
            schema: generate::<T>(),
        }
    }
    vec![
        f::<RouteConfig>("ingest-route.schema.json"),
        f::<IngestEventDoc>("ingest-event.schema.json"),
        f::<ExportConfig>("export-routes.schema.json"),
        f::<ExportManualEvent>("export-event.schema.json"),
        f::<BackupConfig>("backup-plan.schema.json"),
        f::<BackupEventDoc>("backup-event.schema.json"),
    ]
}

/// A schema as committed: pretty JSON with a final newline.
pub fn to_text(schema: &Value) -> String {
    let mut s = serde_json::to_string_pretty(schema).unwrap_or_default();
    s.push('\n');
    s
}
