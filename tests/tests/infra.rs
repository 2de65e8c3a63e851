//! Offline checks of the Terraform in `infra/`: no provider can be downloaded
//! here, so these parse every `.tf` file and check what a plan would reject
//! or what would break the wiring to the functions:
//!
//! - a schema check of every resource and data source type, argument, block,
//!   required argument and referenced attribute against the AWS provider
//!   schema derived from `@cdktf/provider-aws`'s `.jsii`
//!   (`tests/infra/derive_schema.py`, run by `tests/lib/prereqs.sh`, which
//!   exports `XECM_AWS_PROVIDER_SCHEMA`), and a test that it catches six
//!   apply-breaking edits;
//! - `checkov -d infra` (pinned, `XECM_CHECKOV`): 0 failed, parse errors fail;
//! - `terraform fmt -check` where a terraform binary is on PATH.
//!
//! Under CI (`CI` set) a missing schema or checkov fails the test; elsewhere
//! the test says what it skipped.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use hcl::{Block, Body};
use serde_json::Value;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

fn tf_files() -> Vec<(PathBuf, String)> {
    let dir = repo_root().join("infra");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("infra/ exists")
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "tf"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("readable .tf");
            (p, text)
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no .tf files in infra/");
    files
}

fn blocks<'a>(body: &'a Body, ident: &str) -> Vec<&'a Block> {
    body.blocks().filter(|b| b.identifier() == ident).collect()
}

fn label(block: &Block, i: usize) -> String {
    block
        .labels()
        .get(i)
        .map(|l| l.as_str().to_string())
        .unwrap_or_default()
}

fn parse_all() -> Vec<(PathBuf, String, Body)> {
    tf_files()
        .into_iter()
        .map(|(p, text)| {
            let body: Body = hcl::from_str(&text)
                .unwrap_or_else(|e| panic!("{} does not parse as HCL: {e}", p.display()));
            (p, text, body)
        })
        .collect()
}

#[test]
fn every_terraform_file_parses_and_every_variable_used_is_declared_and_described() {
    let files = parse_all();
    let mut declared = BTreeSet::new();
    for (path, _, body) in &files {
        for var in blocks(body, "variable") {
            let name = label(var, 0);
            let attrs: Vec<_> = var
                .body()
                .attributes()
                .map(|a| a.key().to_string())
                .collect();
            assert!(
                attrs.contains(&"description".to_string()) && attrs.contains(&"type".to_string()),
                "variable {name} in {} needs a type and a description",
                path.display()
            );
            declared.insert(name);
        }
    }
    let reference = regex::Regex::new(r"\bvar\.([A-Za-z_][A-Za-z0-9_]*)").expect("regex");
    for (path, text, _) in &files {
        for cap in reference.captures_iter(text) {
            assert!(
                declared.contains(&cap[1]),
                "{} uses var.{} which no variable block declares",
                path.display(),
                &cap[1]
            );
        }
    }
}

#[test]
fn functions_match_the_workspace_binaries_and_run_on_al2023_arm64() {
    let root = repo_root();
    let files = parse_all();
    let main = files
        .iter()
        .find(|(p, _, _)| p.ends_with("main.tf"))
        .expect("infra/main.tf");
    for name in ["sftp-ingest", "ecm-export", "backup-snapshot"] {
        assert!(
            main.1.contains(&format!("\"{name}\"")),
            "infra/main.tf does not deploy {name}"
        );
        assert!(
            root.join("functions")
                .join(name)
                .join("Cargo.toml")
                .exists(),
            "functions/{name} is missing"
        );
    }
    let lambda = blocks(&main.2, "resource")
        .into_iter()
        .find(|b| label(b, 0) == "aws_lambda_function")
        .expect("an aws_lambda_function resource");
    let text = hcl::to_string(lambda.body()).expect("render");
    for needle in ["provided.al2023", "\"bootstrap\"", "arm64", "bootstrap.zip"] {
        assert!(text.contains(needle), "aws_lambda_function lacks {needle}");
    }
}

#[test]
fn schedules_and_webhook_target_the_right_functions() {
    let files = parse_all();
    let all: String = files.iter().map(|(_, t, _)| t.as_str()).collect();
    let mut schedules = 0;
    for (_, _, body) in &files {
        for res in blocks(body, "resource") {
            if label(res, 0) == "aws_scheduler_schedule" {
                schedules += 1;
                let text = hcl::to_string(res.body()).expect("render");
                let target_ok = (label(res, 1) == "ingest" && text.contains("fn[\"sftp-ingest\"]"))
                    || (label(res, 1) == "backup" && text.contains("fn[\"backup-snapshot\"]"))
                    || (label(res, 1) == "export_sweep" && text.contains("fn[\"ecm-export\"]"));
                assert!(
                    target_ok,
                    "schedule {} targets the wrong function",
                    label(res, 1)
                );
                assert!(
                    text.contains("dead_letter_config"),
                    "schedule {} has no DLQ",
                    label(res, 1)
                );
            }
        }
    }
    assert_eq!(
        schedules, 3,
        "one schedule resource each for ingest routes, backups and export sweeps"
    );
    assert!(
        all.contains("resource \"aws_lambda_function_url\" \"export_webhook\""),
        "the webhook Function URL is missing"
    );
    assert!(
        all.contains("fn[\"ecm-export\"].function_name"),
        "the Function URL must front ecm-export"
    );
}

/// The fan-out wiring (docs/fanout.md): the worker's answer is read per
/// message, concurrency is bounded, a redelivery never overtakes a running
/// worker, and the DLQ and the backlog alarm.
#[test]
fn fan_out_queues_report_batch_item_failures_and_outlast_the_function() {
    let files = parse_all();
    let mut seen = BTreeSet::new();
    for (_, _, body) in &files {
        for res in blocks(body, "resource") {
            let text = hcl::to_string(res.body()).expect("render");
            match (label(res, 0).as_str(), label(res, 1).as_str()) {
                ("aws_lambda_event_source_mapping", "fan_out") => {
                    assert!(text.contains("ReportBatchItemFailures"), "{text}");
                    assert!(text.contains("maximum_concurrency"), "{text}");
                    assert!(text.contains("fn[\"sftp-ingest\"]"), "{text}");
                }
                ("aws_sqs_queue", "fan_out") => {
                    assert!(text.contains("redrive_policy"), "{text}");
                    assert!(text.contains("6 * local.ingest_timeout"), "{text}");
                    assert!(
                        text.contains("> local.ingest_timeout"),
                        "precondition: visibility timeout longer than the function's: {text}"
                    );
                    assert!(text.contains("kms_master_key_id"), "{text}");
                }
                ("aws_cloudwatch_metric_alarm", "fan_out_dlq_depth") => {
                    assert!(
                        text.contains("ApproximateNumberOfMessagesVisible"),
                        "{text}"
                    );
                }
                ("aws_cloudwatch_metric_alarm", "fan_out_oldest_message") => {
                    assert!(text.contains("ApproximateAgeOfOldestMessage"), "{text}");
                }
                ("aws_scheduler_schedule", "ingest") => {
                    assert!(
                        text.contains("local.ingest_route_inputs"),
                        "the schedule's input carries the route's queue URL: {text}"
                    );
                }
                _ => continue,
            }
            seen.insert(format!("{}.{}", label(res, 0), label(res, 1)));
        }
    }
    assert_eq!(seen.len(), 5, "fan-out resources found: {seen:?}");
}

#[test]
fn every_checkov_skip_carries_its_reason() {
    for (path, text) in tf_files() {
        for line in text.lines().filter(|l| l.contains("checkov:skip=")) {
            let reason = line
                .split_once(':')
                .and_then(|(_, rest)| rest.split_once(':'))
                .map(|(_, r)| r.trim());
            assert!(
                reason.is_some_and(|r| r.len() > 10),
                "{}: checkov skip without a reason: {line}",
                path.display()
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Schema check against the AWS provider schema.

/// A block's schema as derived by tests/infra/derive_schema.py.
struct BlockSchema<'a>(&'a Value);

impl<'a> BlockSchema<'a> {
    fn args(&self) -> impl Iterator<Item = (&'a String, &'a Value)> {
        self.0["args"].as_object().into_iter().flatten()
    }
    fn has_arg(&self, name: &str) -> bool {
        self.0["args"].get(name).is_some()
    }
    fn block(&self, name: &str) -> Option<BlockSchema<'a>> {
        self.0["blocks"]
            .get(name)
            .map(|b| BlockSchema(&b["schema"]))
    }
    fn blocks(&self) -> impl Iterator<Item = (&'a String, &'a Value)> {
        self.0["blocks"].as_object().into_iter().flatten()
    }
    fn recursive(&self) -> bool {
        self.0["recursive"].as_bool().unwrap_or(false)
    }
    fn has_attr(&self, name: &str) -> bool {
        self.0["attrs"]
            .as_array()
            .is_some_and(|a| a.iter().any(|v| v == name))
    }
}

/// Meta-arguments and meta-blocks Terraform accepts on every resource.
const META_ARGS: &[&str] = &["count", "for_each", "depends_on", "provider"];
const META_BLOCKS: &[&str] = &["lifecycle", "provisioner", "connection"];

/// Resources of Terraform itself (not in the AWS schema): their arguments.
fn builtin_resource(kind: &str) -> Option<&'static [&'static str]> {
    match kind {
        "terraform_data" => Some(&["input", "triggers_replace"]),
        _ => None,
    }
}

fn check_body(
    problems: &mut Vec<String>,
    place: &str,
    body: &Body,
    schema: &BlockSchema<'_>,
    top: bool,
) {
    if schema.recursive() {
        return;
    }
    let mut present = BTreeSet::new();
    for attr in body.attributes() {
        let key = attr.key();
        present.insert(key.to_string());
        if top && META_ARGS.contains(&key) {
            continue;
        }
        if !schema.has_arg(key) {
            if schema.block(key).is_some() {
                problems.push(format!("{place}: {key} is a block, not an argument"));
            } else {
                problems.push(format!("{place}: unknown argument {key}"));
            }
        }
    }
    for block in body.blocks() {
        let ident = block.identifier();
        if top && META_BLOCKS.contains(&ident) {
            continue;
        }
        let (name, inner) = if ident == "dynamic" {
            let name = label(block, 0);
            let content = block.body().blocks().find(|b| b.identifier() == "content");
            match content {
                Some(c) => (name, c.body()),
                None => {
                    problems.push(format!("{place}: dynamic \"{name}\" has no content block"));
                    continue;
                }
            }
        } else {
            (ident.to_string(), block.body())
        };
        present.insert(name.clone());
        match schema.block(&name) {
            Some(nested) => check_body(problems, &format!("{place}.{name}"), inner, &nested, false),
            None if schema.has_arg(&name) => {
                problems.push(format!("{place}: {name} is an argument, not a block"))
            }
            None => problems.push(format!("{place}: unknown block {name}")),
        }
    }
    for (name, arg) in schema.args() {
        if arg["required"].as_bool() == Some(true) && !present.contains(name.as_str()) {
            problems.push(format!("{place}: missing required argument {name}"));
        }
    }
    for (name, block) in schema.blocks() {
        if block["required"].as_bool() == Some(true) && !present.contains(name.as_str()) {
            problems.push(format!("{place}: missing required block {name}"));
        }
    }
}

/// Every problem the schema finds in `files` (name → text): unknown
/// resource or data source types, arguments, blocks, missing required
/// arguments and blocks, references to undeclared resources or to
/// attributes the type does not have.
fn schema_problems(schema: &Value, files: &[(String, String)]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut declared: BTreeMap<(bool, String, String), String> = BTreeMap::new();
    let mut bodies = Vec::new();
    for (name, text) in files {
        match hcl::from_str::<Body>(text) {
            Ok(body) => bodies.push((name.clone(), body)),
            Err(e) => problems.push(format!("{name}: does not parse as HCL: {e}")),
        }
    }
    for (file, body) in &bodies {
        for block in body.blocks() {
            let data = match block.identifier() {
                "resource" => false,
                "data" => true,
                _ => continue,
            };
            let (kind, name) = (label(block, 0), label(block, 1));
            let place = format!("{file}: {}{kind}.{name}", if data { "data." } else { "" });
            declared.insert((data, kind.clone(), name.clone()), kind.clone());
            if !data && let Some(args) = builtin_resource(&kind) {
                for attr in block.body().attributes() {
                    if !args.contains(&attr.key()) && !META_ARGS.contains(&attr.key()) {
                        problems.push(format!("{place}: unknown argument {}", attr.key()));
                    }
                }
                continue;
            }
            let section = if data { "data" } else { "resource" };
            match schema[section].get(&kind) {
                Some(s) => check_body(&mut problems, &place, block.body(), &BlockSchema(s), true),
                None => problems.push(format!(
                    "{place}: unknown {} type {kind}",
                    if data { "data source" } else { "resource" }
                )),
            }
        }
    }
    // References: `aws_x.name[...].attr` and `data.aws_x.name[...].attr`.
    let reference = regex::Regex::new(
        r"(?:^|[^A-Za-z0-9_.])(data\.)?((?:aws|terraform)_[a-z0-9_]+)\.([A-Za-z0-9_-]+)((?:\[[^\]\n]*\])*)(?:\.([a-z0-9_]+))?",
    )
    .expect("regex");
    for (file, text) in files {
        for (n, line) in text.lines().enumerate() {
            let code = line.split('#').next().unwrap_or_default();
            for cap in reference.captures_iter(code) {
                let data = cap.get(1).is_some();
                let (kind, name) = (cap[2].to_string(), cap[3].to_string());
                let at = format!("{file}:{}", n + 1);
                if !declared.contains_key(&(data, kind.clone(), name.clone())) {
                    problems.push(format!(
                        "{at}: reference to undeclared {}{kind}.{name}",
                        if data { "data." } else { "" }
                    ));
                    continue;
                }
                let Some(attr) = cap.get(5).map(|m| m.as_str()) else {
                    continue;
                };
                if builtin_resource(&kind).is_some() {
                    continue;
                }
                let section = if data { "data" } else { "resource" };
                if let Some(s) = schema[section].get(&kind)
                    && !BlockSchema(s).has_attr(attr)
                {
                    problems.push(format!(
                        "{at}: {}{kind} has no attribute {attr}",
                        if data { "data." } else { "" }
                    ));
                }
            }
        }
    }
    problems
}

/// The derived schema, or `None` (with a message) outside CI when it has not
/// been derived; under CI its absence fails.
fn provider_schema() -> Option<Value> {
    let Some(path) = std::env::var_os("XECM_AWS_PROVIDER_SCHEMA") else {
        let msg = "XECM_AWS_PROVIDER_SCHEMA is not set: derive the AWS provider schema with \
                   `. tests/lib/prereqs.sh && ensure_infra_tools` (tests/run.sh does)";
        if std::env::var_os("CI").is_some() {
            panic!("{msg}");
        }
        eprintln!("SKIPPED: {msg}");
        return None;
    };
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read the provider schema {path:?}: {e}"));
    let schema: Value = serde_json::from_str(&text).expect("provider schema is JSON");
    assert!(
        schema["resource"]
            .as_object()
            .is_some_and(|r| r.len() > 1000),
        "{path:?} does not look like the AWS provider schema"
    );
    Some(schema)
}

fn infra_texts() -> Vec<(String, String)> {
    tf_files()
        .into_iter()
        .map(|(p, text)| {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            (name, text)
        })
        .collect()
}

#[test]
fn every_type_argument_block_and_attribute_is_in_the_provider_schema() {
    let Some(schema) = provider_schema() else {
        return;
    };
    assert_eq!(
        schema["provider_version"], "6.25.0",
        "the schema must match the pinned provider (versions.tf ~> 6.25)"
    );
    let problems = schema_problems(&schema, &infra_texts());
    assert!(
        problems.is_empty(),
        "infra/ does not match the AWS provider 6.25 schema:\n  {}",
        problems.join("\n  ")
    );
}

/// The six apply-breaking edits from the issue, each made to the real files
/// in memory: the check must name every one of them.
#[test]
fn the_schema_check_catches_six_apply_breaking_edits() {
    let Some(schema) = provider_schema() else {
        return;
    };
    let edits: [(&str, &str, &str, &str); 6] = [
        (
            "main.tf",
            "runtime          =",
            "runtme           =",
            "unknown argument runtme",
        ),
        (
            "main.tf",
            "reserved_concurrent_executions =",
            "reserved_concurrency =",
            "unknown argument reserved_concurrency",
        ),
        (
            "main.tf",
            "log_format = \"JSON\"",
            "format = \"JSON\"",
            "unknown argument format",
        ),
        (
            "schedules.tf",
            "flexible_time_window {",
            "flexible_window {",
            "unknown block flexible_window",
        ),
        (
            "schedules.tf",
            "arn      = aws_lambda_function.fn[\"sftp-ingest\"].arn",
            "function_arn = aws_lambda_function.fn[\"sftp-ingest\"].arn",
            "missing required argument arn",
        ),
        (
            "outputs.tf",
            "aws_lambda_function_url.export_webhook.function_url",
            "aws_lambda_function_url.export_webhook.url",
            "has no attribute url",
        ),
    ];
    let original = infra_texts();
    assert!(schema_problems(&schema, &original).is_empty());
    for (file, from, to, expected) in edits {
        let edited: Vec<_> = original
            .iter()
            .map(|(name, text)| {
                if name == file {
                    assert!(text.contains(from), "{file} no longer contains {from:?}");
                    (name.clone(), text.replacen(from, to, 1))
                } else {
                    (name.clone(), text.clone())
                }
            })
            .collect();
        let problems = schema_problems(&schema, &edited);
        assert!(
            problems
                .iter()
                .any(|p| p.contains(file) && p.contains(expected)),
            "editing {file} ({from:?} -> {to:?}) was not caught as {expected:?}; found: {problems:?}"
        );
    }
}

fn tool(env: &str, what: &str) -> Option<PathBuf> {
    match std::env::var_os(env) {
        Some(p) => Some(PathBuf::from(p)),
        None => {
            let msg = format!(
                "{env} is not set ({what}; `. tests/lib/prereqs.sh && ensure_infra_tools`)"
            );
            if std::env::var_os("CI").is_some() {
                panic!("{msg}");
            }
            eprintln!("SKIPPED: {msg}");
            None
        }
    }
}

#[test]
fn checkov_finds_no_failed_check_and_no_parse_error() {
    let Some(checkov) = tool("XECM_CHECKOV", "the pinned checkov") else {
        return;
    };
    let out = std::process::Command::new(&checkov)
        .args([
            "-d",
            "infra",
            "--framework",
            "terraform",
            "--skip-download",
            "--quiet",
            "--compact",
            "--output",
            "json",
        ])
        .env("CKV_PARSE_ERROR_FAIL", "true")
        .current_dir(repo_root())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", checkov.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "checkov did not print a JSON report ({e}); status {}; stderr:\n{}\nstdout:\n{stdout}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let summary = &report["summary"];
    assert_eq!(summary["failed"], 0, "checkov failed checks:\n{stdout}");
    assert_eq!(
        summary["parsing_errors"], 0,
        "checkov parse errors:\n{stdout}"
    );
    assert!(
        summary["passed"].as_u64().unwrap_or(0) > 50,
        "checkov ran too few checks: {summary}"
    );
    assert!(
        out.status.success(),
        "checkov exited {}:\n{stdout}",
        out.status
    );
}

#[test]
fn terraform_fmt_check_where_terraform_is_installed() {
    let probe = std::process::Command::new("terraform")
        .arg("version")
        .output();
    if probe.is_err() {
        eprintln!("SKIPPED: no terraform binary on PATH; terraform fmt -check not run");
        return;
    }
    let out = std::process::Command::new("terraform")
        .args(["fmt", "-check", "-diff", "-recursive", "infra"])
        .current_dir(repo_root())
        .output()
        .expect("terraform fmt");
    assert!(
        out.status.success(),
        "terraform fmt -check failed (run `terraform fmt -recursive infra`):\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// `examples/` is the README's deployment: its route and backup files are
/// the samples in events/ with every `sftp_secret` on the one SFTP secret
/// that terraform.tfvars maps.
#[test]
fn examples_match_the_sample_events_and_map_every_secret_they_name() {
    let root = repo_root();
    let read = |p: &str| -> Value {
        let path = root.join(p);
        serde_json::from_str(
            &std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
        )
        .unwrap_or_else(|e| panic!("{p} is not JSON: {e}"))
    };
    fn resecret(v: &Value, names: &mut BTreeSet<String>) -> Value {
        match v {
            Value::Object(m) => Value::Object(
                m.iter()
                    .map(|(k, v)| {
                        if k == "sftp_secret" {
                            names.insert(v.as_str().unwrap_or_default().to_string());
                            (k.clone(), Value::String("xecm/sftp/partner".into()))
                        } else {
                            (k.clone(), resecret(v, names))
                        }
                    })
                    .collect(),
            ),
            Value::Array(a) => Value::Array(a.iter().map(|v| resecret(v, names)).collect()),
            other => other.clone(),
        }
    }
    let mut sample_names = BTreeSet::new();
    let mut example_names = BTreeSet::new();
    for (example, sample, key) in [
        (
            "infra/examples/routes/acme-supplier-invoices.json",
            "events/ingest-scheduled.json",
            Some("route"),
        ),
        (
            "infra/examples/backups/critical-records.json",
            "events/backup-scheduled.json",
            Some("backup"),
        ),
        (
            "infra/examples/export-routes.json",
            "events/export-routes.json",
            None,
        ),
    ] {
        let s = read(sample);
        let mut s = key.map_or(s.clone(), |k| s[k].clone());
        let mut e = read(example);
        // Each names its own schema (an event's, or the bare configuration's).
        for v in [&mut s, &mut e] {
            if let Value::Object(m) = v {
                m.remove("$schema");
            }
        }
        resecret(&e, &mut example_names);
        assert_eq!(
            e,
            resecret(&s, &mut sample_names),
            "{example} is no longer {sample} (with sftp_secret xecm/sftp/partner)"
        );
    }
    let tfvars =
        std::fs::read_to_string(root.join("infra/examples/terraform.tfvars")).expect("tfvars");
    for name in example_names {
        assert!(
            tfvars.contains(&format!("\"{name}\" =")),
            "examples name the SFTP secret {name}, which terraform.tfvars does not map"
        );
    }
    let main = std::fs::read_to_string(root.join("infra/examples/main.tf")).expect("main.tf");
    for file in [
        "routes/acme-supplier-invoices.json",
        "backups/critical-records.json",
        "export-routes.json",
    ] {
        assert!(main.contains(file), "examples/main.tf does not use {file}");
    }
}

/// The build script leaves the zips where the module looks by default.
#[test]
fn the_build_script_writes_the_zips_terraform_deploys() {
    let root = repo_root();
    let script =
        std::fs::read_to_string(root.join("tests/infra/build-lambdas.sh")).expect("script");
    assert!(
        script.contains("LAMBDA_DIR=\"$XECM_ROOT/target/lambda\""),
        "build dir"
    );
    assert!(
        script.contains("--lambda-dir \"$LAMBDA_DIR\""),
        "--lambda-dir"
    );
    for f in ["sftp-ingest", "ecm-export", "backup-snapshot"] {
        assert!(
            script.contains(&format!("-p {f}")),
            "build script lacks -p {f}"
        );
    }
    assert!(
        !script.contains("--workspace"),
        "only the three function crates"
    );
    let main = std::fs::read_to_string(root.join("infra/main.tf")).expect("main.tf");
    assert!(
        main.contains("\"${path.module}/../target/lambda\""),
        "artifacts_dir default"
    );
    assert!(main.contains("\"${local.artifacts_dir}/${each.key}/bootstrap.zip\""));
}
