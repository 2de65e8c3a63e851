//! Offline checks of the Terraform in `infra/`: no provider can be downloaded
//! here, so these parse every `.tf` file and check what a plan would reject
//! or what would break the wiring to the functions.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use hcl::{Block, Body};

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
