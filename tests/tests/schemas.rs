//! The JSON Schemas in `docs/schema/` and the route reference `docs/routes.md`
//! against the Rust types they describe:
//!
//! - every committed schema equals the one generated from the types (and no
//!   stale schema file lies beside them);
//! - every sample in `events/` and `infra/examples/` names its schema with
//!   `$schema` and validates against it (the two samples that are not
//!   configurations are named below, with what is checked instead);
//! - every property of the three configurations (ingest route, export
//!   routes, backup plan) is documented in `docs/routes.md` by its path,
//!   and every path the reference documents exists.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::Value;
use xecm_stack::reference::{REGENERATE, SCHEMA_DIR, generated};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

#[test]
fn committed_schemas_equal_the_generated_ones() {
    let root = repo_root();
    let mut expected = BTreeSet::new();
    for (rel, text) in generated() {
        let path = root.join(&rel);
        let committed = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{rel} is missing ({e}); run `{REGENERATE}`"));
        let generated: Value = serde_json::from_str(&text).expect("generated schema is JSON");
        let committed_value: Value = serde_json::from_str(&committed)
            .unwrap_or_else(|e| panic!("{rel} is not JSON ({e}); run `{REGENERATE}`"));
        assert!(
            committed_value == generated,
            "{rel} differs from the schema generated from the Rust types; run `{REGENERATE}` and commit it"
        );
        expected.insert(rel.rsplit('/').next().unwrap_or_default().to_owned());
    }
    for entry in std::fs::read_dir(root.join(SCHEMA_DIR)).expect("docs/schema") {
        let name = entry
            .expect("entry")
            .file_name()
            .to_string_lossy()
            .into_owned();
        assert!(
            expected.contains(&name),
            "{SCHEMA_DIR}/{name} is not generated from any type; remove it or add its type to xecm_core::schema::all"
        );
    }
}

/// Samples that are not configurations a person writes, and what part of
/// them is validated instead (`None`: nothing, with the reason).
fn carried(file: &str) -> Option<(Option<(&'static str, &'static str)>, &'static str)> {
    match file {
        "export-webhook-approved.json" => Some((
            None,
            "a Function URL request as Lambda builds it (its body is the signed callback)",
        )),
        "ingest-sqs-worker.json" => Some((
            None,
            "an SQS batch as the event source mapping delivers it (each body is a work message the poller wrote)",
        )),
        "backup-continuation-envelope.json" => Some((
            Some(("/detail", "backup-event.schema.json")),
            "an EventBridge event as the function publishes it; its detail is the event",
        )),
        _ => None,
    }
}

fn validate(instance: &Value, schema_file: &Path, what: &str) {
    let schema = read_json(schema_file);
    let validator = jsonschema::validator_for(&schema)
        .unwrap_or_else(|e| panic!("{} is not a usable schema: {e}", schema_file.display()));
    let errors: Vec<String> = validator
        .iter_errors(instance)
        .map(|e| format!("  at {}: {e}", e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{what} does not validate against {}:\n{}",
        schema_file.display(),
        errors.join("\n")
    );
}

fn json_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            json_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "json") {
            out.push(path);
        }
    }
}

#[test]
fn every_sample_names_its_schema_and_validates() {
    let root = repo_root();
    let schema_dir = root.join(SCHEMA_DIR).canonicalize().expect("docs/schema");
    let mut files = Vec::new();
    json_files(&root.join("events"), &mut files);
    json_files(&root.join("infra/examples"), &mut files);
    files.sort();
    assert!(files.len() >= 10, "samples found: {files:?}");
    let mut checked = 0;
    for path in &files {
        let rel = path
            .strip_prefix(&root)
            .unwrap_or(path)
            .display()
            .to_string();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let value = read_json(path);
        if let Some((part, why)) = carried(&name) {
            assert!(
                value.get("$schema").is_none(),
                "{rel} is {why}: it carries no $schema"
            );
            if let Some((pointer, schema)) = part {
                let inner = value
                    .pointer(pointer)
                    .unwrap_or_else(|| panic!("{rel} has no {pointer}"));
                validate(inner, &schema_dir.join(schema), &format!("{rel}{pointer}"));
                checked += 1;
            }
            continue;
        }
        let reference = value
            .get("$schema")
            .and_then(Value::as_str)
            .unwrap_or_else(|| {
                panic!(
                    "{rel} names no schema: add \"$schema\": \"<relative path to docs/schema/…>\""
                )
            });
        let dir = path.parent().expect("file has a directory");
        let schema_file = dir
            .join(reference)
            .canonicalize()
            .unwrap_or_else(|e| panic!("{rel}: $schema {reference:?} does not name a file ({e})"));
        assert!(
            schema_file.starts_with(&schema_dir),
            "{rel}: $schema {reference:?} is not one of the schemas in {SCHEMA_DIR}/"
        );
        validate(&value, &schema_file, &rel);
        checked += 1;
    }
    assert!(checked >= 10, "validated {checked} samples");
}

/// A sample that breaks the schema is caught: the check above is not vacuous.
#[test]
fn a_sample_with_an_unknown_or_mistyped_field_does_not_validate() {
    let root = repo_root();
    let schema = read_json(&root.join(SCHEMA_DIR).join("ingest-event.schema.json"));
    let validator = jsonschema::validator_for(&schema).expect("schema");
    let good = read_json(&root.join("events/ingest-scheduled.json"));
    assert!(validator.is_valid(&good));
    let mut unknown = good.clone();
    unknown["route"]["readiness"]["done_marke"] = Value::String(".done".into());
    assert!(!validator.is_valid(&unknown), "a misspelt field validates");
    let mut mistyped = good.clone();
    mistyped["route"]["rules"][0]["place"]["on_existing"] = Value::String("overwrite".into());
    assert!(
        !validator.is_valid(&mistyped),
        "an unknown policy validates"
    );
    let mut wrong_by = good;
    wrong_by["route"]["rules"][0]["place"]["workspace"] =
        serde_json::json!({"by": "node", "node_id": "2000"});
    assert!(
        !validator.is_valid(&wrong_by),
        "a node id as a string validates"
    );
}

// ---------------------------------------------------------------- routes.md

/// Every property path of a schema: `a.b`, `a[].b` for list items, and `a.*`
/// for map values; variants of a tagged enum share their parent's path.
fn property_paths(
    schema: &Value,
    defs: &Value,
    prefix: &str,
    depth: usize,
    out: &mut BTreeSet<String>,
) {
    if depth > 24 {
        return;
    }
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        let name = r.trim_start_matches("#/$defs/");
        if let Some(d) = defs.get(name) {
            property_paths(d, defs, prefix, depth + 1, out);
        }
    }
    for key in ["oneOf", "anyOf", "allOf"] {
        if let Some(Value::Array(vs)) = schema.get(key) {
            for v in vs {
                property_paths(v, defs, prefix, depth + 1, out);
            }
        }
    }
    if let Some(Value::Object(props)) = schema.get("properties") {
        for (name, sub) in props {
            if name == "$schema" {
                continue;
            }
            let path = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}.{name}")
            };
            out.insert(path.clone());
            property_paths(sub, defs, &path, depth + 1, out);
        }
    }
    if let Some(items) = schema.get("items") {
        property_paths(items, defs, &format!("{prefix}[]"), depth + 1, out);
    }
    if let Some(ap) = schema.get("additionalProperties")
        && ap.is_object()
    {
        property_paths(ap, defs, &format!("{prefix}.*"), depth + 1, out);
    }
}

fn documented_paths(reference: &str) -> BTreeSet<String> {
    // A documented field is a table row whose first cell is a code span.
    let mut out = BTreeSet::new();
    for line in reference.lines() {
        let Some(rest) = line.strip_prefix("| `") else {
            continue;
        };
        if let Some((path, _)) = rest.split_once('`') {
            out.insert(path.to_owned());
        }
    }
    out
}

/// The sections of `docs/routes.md` that document each configuration, and the
/// prefix its table paths carry.
const DOCUMENTED: [(&str, &str); 3] = [
    ("ingest-route.schema.json", "route."),
    ("export-routes.schema.json", "export."),
    ("backup-plan.schema.json", "backup."),
];

/// Objects of one type used in two places are documented once: a path
/// under the first is documented by the row of the second.
const SAME_AS: [(&str, &str); 1] = [("route.fallback.place.", "route.rules[].place.")];

fn documented_as(path: &str) -> String {
    for (alias, target) in SAME_AS {
        if let Some(rest) = path.strip_prefix(alias) {
            return format!("{target}{rest}");
        }
    }
    path.to_owned()
}

#[test]
fn the_route_reference_documents_every_property_and_no_other() {
    let root = repo_root();
    let path = root.join("docs/routes.md");
    let reference = std::fs::read_to_string(&path).expect("docs/routes.md");
    let documented = documented_paths(&reference);
    let mut known = BTreeSet::new();
    let mut missing = Vec::new();
    for (file, prefix) in DOCUMENTED {
        let schema = read_json(&root.join(SCHEMA_DIR).join(file));
        let defs = schema.get("$defs").cloned().unwrap_or(Value::Null);
        let mut paths = BTreeSet::new();
        property_paths(&schema, &defs, "", 0, &mut paths);
        assert!(paths.len() > 5, "{file}: {paths:?}");
        for p in paths {
            let full = documented_as(&format!("{prefix}{p}"));
            if !documented.contains(&full) {
                missing.push(full.clone());
            }
            known.insert(full);
        }
    }
    assert!(
        missing.is_empty(),
        "docs/routes.md documents no table row for these properties (add a row starting with | `path` |):\n  {}",
        missing.join("\n  ")
    );
    let unknown: Vec<&String> = documented
        .iter()
        .filter(|d| DOCUMENTED.iter().any(|(_, p)| d.starts_with(p)) && !known.contains(*d))
        .collect();
    assert!(
        unknown.is_empty(),
        "docs/routes.md documents properties the schemas do not have: {unknown:?}"
    );
}
