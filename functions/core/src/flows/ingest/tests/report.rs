//! The bounded response and the run report (issue 20): the response lists
//! the first outcomes and failures within a count and a size, counts every
//! file, and points to the run report on SFTP, which has every file once.

use super::*;

fn failed(path: &str, reason: &str) -> FileReport {
    let mut f = FileReport::new(path, FileOutcome::Failed);
    f.reason = Some(reason.to_owned());
    f
}

#[test]
fn given_more_outcomes_than_listed_when_recorded_then_the_first_are_listed_and_all_counted() {
    let mut rep = IngestReport::new("acme", "req");
    for i in 0..150 {
        assert_eq!(
            rep.record(&FileReport::new(&format!("ok-{i}"), FileOutcome::Created)),
            i < FILES_LISTED
        );
    }
    for i in 0..130 {
        rep.record(&failed(&format!("bad-{i}"), "no rule matches"));
    }
    rep.record(&FileReport::left(
        "late",
        "not claimed: the invocation's deadline is near",
    ));
    assert_eq!(rep.counts.ingested, 150);
    assert_eq!(rep.counts.failed, 130);
    assert_eq!(rep.left_for_next_run, 1);
    assert_eq!(rep.files.len(), FILES_LISTED);
    assert_eq!(rep.files_not_listed, 150 + 130 + 1 - FILES_LISTED as u32);
    // The first ones, in order.
    assert!(
        rep.files
            .iter()
            .enumerate()
            .all(|(i, f)| f.source_path == format!("ok-{i}"))
    );
    assert_eq!(rep.failures.len(), FAILURES_LISTED);
    assert_eq!(rep.failures_not_listed, 30);
    assert_eq!(rep.failures[0].source_path, "bad-0");
    assert_eq!(rep.failures[99].source_path, "bad-99");
    assert!(!rep.outcomes.all_listed);
}

#[test]
fn given_huge_paths_and_reasons_when_recorded_then_the_response_stays_under_the_cap() {
    let mut rep = IngestReport::new("acme", "req");
    // 16 levels of 250-byte names (each byte escaped as %XX: 3 bytes), and
    // reasons far over what is listed.
    let seg = "%FF".repeat(250);
    let long_path = vec![seg.as_str(); 16].join("/");
    let reason = "é".repeat(20_000);
    for i in 0..1000 {
        let mut f = failed(&format!("{long_path}/{i}"), &reason);
        f.moved_to = Some(format!("failed/{long_path}/{i}"));
        rep.record(&f);
    }
    let json = serde_json::to_vec_pretty(&rep).unwrap();
    assert!(json.len() <= RESPONSE_MAX_BYTES, "{} bytes", json.len());
    assert_eq!(rep.counts.failed, 1000);
    assert_eq!(rep.failures.len() as u32 + rep.failures_not_listed, 1000);
    assert_eq!(rep.files.len() as u32 + rep.files_not_listed, 1000);
    assert!(!rep.failures.is_empty(), "some fit");
    // Listed reasons are cut (on a character boundary), not dropped.
    let r = rep.failures[0].reason.as_deref().unwrap();
    assert!(
        r.len() <= LISTED_REASON_BYTES + 4 && r.ends_with('…'),
        "{}",
        r.len()
    );
}

#[test]
fn given_an_entry_that_does_not_fit_when_later_ones_would_then_the_list_stays_a_prefix() {
    let mut rep = IngestReport::new("acme", "req");
    rep.record(&FileReport::new("a", FileOutcome::Created));
    rep.record(&FileReport::new(
        &"x".repeat(LIST_BYTES),
        FileOutcome::Created,
    ));
    rep.record(&FileReport::new("b", FileOutcome::Created));
    let listed: Vec<&str> = rep.files.iter().map(|f| f.source_path.as_str()).collect();
    assert_eq!(listed, vec!["a"]);
    assert_eq!(rep.files_not_listed, 2);
}

#[test]
fn name_locks_are_removed_by_their_last_holder() {
    let locks: std::sync::Mutex<BTreeMap<(NodeId, String), NameLock>> =
        std::sync::Mutex::new(BTreeMap::new());
    let key = (NodeId::new(7).unwrap(), "a.pdf".to_owned());
    let take = || {
        let lock = locks
            .lock()
            .unwrap()
            .entry(key.clone())
            .or_default()
            .clone();
        HeldNameLock {
            locks: &locks,
            key: key.clone(),
            lock,
        }
    };
    let first = take();
    let second = take();
    drop(first);
    assert_eq!(locks.lock().unwrap().len(), 1, "the second still holds it");
    drop(second);
    assert!(locks.lock().unwrap().is_empty());
}

/// `n_ok` invoices (ingested) and `n_bad` files no rule takes (failed) in `in/`.
fn drop_files(w: &World, n_ok: usize, n_bad: usize) -> Vec<String> {
    let mut names = Vec::new();
    for i in 0..n_ok {
        let name = format!("INV-{:06}_0000100001.pdf", i + 1);
        w.store.put(&format!("in/{name}"), &pdf(&name), NOW - 3600);
        names.push(name);
    }
    for i in 0..n_bad {
        let name = format!("unknown-{i:04}.txt");
        w.store
            .put(&format!("in/{name}"), b"not an invoice", NOW - 3600);
        names.push(name);
    }
    names
}

fn report_lines(w: &World, path: &str) -> Vec<serde_json::Value> {
    let bytes = w.store.read(&format!("/{path}")).expect("run report");
    bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).expect("a JSON line"))
        .collect()
}

#[tokio::test]
async fn given_a_drop_larger_than_the_response_when_run_then_the_run_report_has_every_file_once() {
    let w = World::new();
    let mut names = drop_files(&w, 40, 130);
    let mut r = route_json(serde_json::json!([]), "fail");
    r["route"]["limits"]["max_files"] = serde_json::json!(1000);
    let r = parse_route(r);

    let rep = w.run(&r, "req-big").await;

    assert_eq!(rep.counts.ingested, 40, "{:#?}", rep.counts);
    assert_eq!(rep.counts.failed, 130);
    assert_eq!(rep.files.len(), FILES_LISTED);
    assert_eq!(rep.files_not_listed, 70);
    assert_eq!(rep.failures.len(), FAILURES_LISTED);
    assert_eq!(rep.failures_not_listed, 30);
    assert!(rep.failures.iter().all(|f| f.reason.is_some()));
    assert!(serde_json::to_vec(&rep).unwrap().len() <= RESPONSE_MAX_BYTES);
    let o = &rep.outcomes;
    assert!(!o.all_listed);
    assert_eq!(o.report_error, None);
    let path = o.report.clone().expect("a run report");
    assert_eq!(path, "in/.reports/acme/20261118T110640Z-req-big.jsonl");
    assert_eq!(o.report_lines, Some(170));
    let lines = report_lines(&w, &path);
    let mut seen: Vec<String> = lines
        .iter()
        .map(|l| l["source_path"].as_str().unwrap().to_owned())
        .collect();
    seen.sort();
    names.sort();
    assert_eq!(seen, names, "every file once");
    let failed = lines.iter().filter(|l| l["outcome"] == "failed").count();
    assert_eq!(failed, 130);
    // The listed ones are the report's first lines.
    for (f, l) in rep.files.iter().zip(&lines) {
        assert_eq!(l["source_path"], f.source_path.as_str());
    }
    // Nothing of the report is taken as a document by the next run.
    let again = w.run(&r, "req-again").await;
    assert!(again.files.is_empty(), "{again:#?}");
}

#[tokio::test]
async fn given_a_small_drop_when_run_then_every_outcome_is_listed_and_no_report_written() {
    let w = World::new();
    drop_files(&w, 2, 1);
    let rep = w.run(&route(serde_json::json!([]), "fail"), "req").await;
    assert_eq!(rep.files.len(), 3);
    assert!(rep.outcomes.all_listed);
    assert_eq!(rep.outcomes.report, None);
    assert!(w.store.files_under("/in/.reports").is_empty());
}

#[tokio::test]
async fn given_files_left_by_a_limit_when_run_then_each_is_accounted_for() {
    let w = World::new();
    drop_files(&w, 0, 5);
    let mut r = route_json(serde_json::json!([]), "fail");
    r["route"]["limits"]["max_files"] = serde_json::json!(2);
    let rep = w.run(&parse_route(r), "req").await;
    assert_eq!(rep.counts.failed, 2);
    assert_eq!(rep.left_for_next_run, 3);
    let left: Vec<&FileReport> = rep
        .files
        .iter()
        .filter(|f| f.outcome == FileOutcome::LeftForNextRun)
        .collect();
    assert_eq!(left.len(), 3, "{rep:#?}");
    assert!(
        left[0]
            .reason
            .as_deref()
            .unwrap()
            .contains("limit of 2 files")
    );
}

#[tokio::test]
async fn given_a_report_that_cannot_be_published_when_run_then_the_response_says_why() {
    let w = World::new();
    drop_files(&w, 0, 120);
    // The report's exact name is taken (same clock second, same invocation).
    w.store.put(
        "in/.reports/acme/20261118T110640Z-req-x.jsonl",
        b"taken",
        NOW,
    );
    let mut r = route_json(serde_json::json!([]), "fail");
    r["route"]["limits"]["max_files"] = serde_json::json!(1000);
    let rep = w.run(&parse_route(r), "req-x").await;
    assert_eq!(rep.counts.failed, 120, "the files are done all the same");
    assert_eq!(rep.outcomes.report, None);
    let e = rep.outcomes.report_error.as_deref().expect("why");
    assert!(e.contains("already exists") && e.contains("events"), "{e}");
}

#[tokio::test]
async fn given_many_old_reports_when_a_new_one_is_written_then_the_newest_are_kept() {
    let w = World::new();
    for d in 1..=(REPORTS_KEPT + 5) {
        w.store.put(
            &format!("in/.reports/acme/202610{d:02}T000000Z-old.jsonl"),
            b"{}\n",
            NOW - 86_400,
        );
    }
    // Another route's reports are not this route's to prune.
    w.store
        .put("in/.reports/other/20260101T000000Z-x.jsonl", b"{}\n", NOW);
    drop_files(&w, 0, 101);
    let mut r = route_json(serde_json::json!([]), "fail");
    r["route"]["limits"]["max_files"] = serde_json::json!(1000);
    let rep = w.run(&parse_route(r), "req-new").await;
    let path = rep.outcomes.report.expect("written");
    let kept = w.store.files_under("/in/.reports/acme/");
    assert_eq!(kept.len(), REPORTS_KEPT, "{kept:?}");
    assert!(kept.contains(&format!("/{path}")));
    // The oldest went (name order is age order).
    assert!(!kept.iter().any(|k| k.contains("20261001T")), "{kept:?}");
    assert_eq!(w.store.files_under("/in/.reports/other/").len(), 1);
}

#[tokio::test]
async fn given_a_retry_of_more_files_than_listed_when_run_then_the_run_report_has_each_once() {
    let w = World::new();
    w.store.put("in/failed/.keep", b"", NOW);
    // None of them is in failed/: each is refused, and reported once.
    let names: Vec<String> = (0..(FILES_LISTED + 20))
        .map(|i| format!("gone-{i:03}.pdf"))
        .collect();
    let deps = IngestDeps {
        store: &w.store,
        ecm: &w.ecm,
        events: &w.events,
        clock: &w.clock,
        sftp_host: "sftp.test".into(),
    };
    let ctx = RunContext::new("req-retry", Duration::from_secs(60));
    let r = route(serde_json::json!([]), "fail");
    let rep = retry(&r, &names, &deps, &ctx).await.unwrap();
    assert_eq!(rep.counts.failed as usize, names.len());
    assert_eq!(rep.files.len(), FILES_LISTED);
    let path = rep.outcomes.report.clone().expect("a run report");
    let lines = report_lines(&w, &path);
    assert_eq!(lines.len(), names.len());
    assert!(lines.iter().all(|l| l["outcome"] == "failed"));
}
