//! The crash matrix (issue 15): for every crash point and every kind of
//! transfer, a run is killed at that point, the next runs (after the lease)
//! finish the work, and the end state is checked: 0 lost, 0 duplicated
//! documents and versions, metadata and transfer history complete, source
//! and sidecar archived exactly once. Also two runs started together on one
//! drop. The matrix is printed (`cargo test ... crash_matrix -- --nocapture`).

use std::panic::AssertUnwindSafe;

use futures_util::FutureExt;

use super::*;
use crate::flows::ingest::crash::{self, CRASH_AT};

#[derive(Clone, Copy)]
struct Scenario {
    name: &'static str,
    policy: &'static str,
    large: bool,
    /// A version 1 exists (a clean earlier run); the crashed run adds v2.
    add_version: bool,
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "new doc, small",
        policy: "add-version",
        large: false,
        add_version: false,
    },
    Scenario {
        name: "new doc, large",
        policy: "rename",
        large: true,
        add_version: false,
    },
    Scenario {
        name: "add version, small",
        policy: "add-version",
        large: false,
        add_version: true,
    },
    Scenario {
        name: "add version, large",
        policy: "add-version",
        large: true,
        add_version: true,
    },
];

const REL: &str = "INV-5003_0000100001.pdf";

fn matrix_route(policy: &str) -> Route {
    let mut ev = route_json(serde_json::json!([]), policy);
    ev["route"]["rules"][0]["place"]["categories"][0]["attributes"]["3"] =
        serde_json::json!("{meta.po}");
    parse_route(ev)
}

fn body(s: Scenario, text: &str) -> Vec<u8> {
    if s.large { large_pdf(text) } else { pdf(text) }
}

fn drop_pair(w: &World, rel: &str, body: &[u8], po: &str, mtime: i64) {
    w.store.put(&format!("in/{rel}"), body, mtime);
    w.store.put(
        &format!("in/{rel}.json"),
        format!(r#"{{"po": "{po}"}}"#).as_bytes(),
        mtime,
    );
}

/// What one cell of the matrix found.
struct Cell {
    reached: bool,
    lost: u32,
    duplicated: u32,
    problems: Vec<String>,
}

async fn supplier_folder(w: &World) -> Option<NodeId> {
    let bo = BusinessObject {
        ext_system_id: "SAP".into(),
        bo_type: "LFA1".into(),
        bo_id: "0000100001".into(),
    };
    let ws = w.ecm.workspace_by_business_object(&bo).await.ok()??;
    w.ecm
        .ensure_folder_path(ws.id, &["Invoices".into(), "2026".into(), "11".into()])
        .await
        .ok()
}

/// Checks the end state for `REL` after the reruns.
async fn check(
    w: &World,
    s: Scenario,
    route_name: &str,
    bodies: &[(Vec<u8>, &str)],
    cell: &mut Cell,
) {
    let (latest, po) = bodies.last().map(|(b, p)| (b.clone(), *p)).unwrap();
    let docs: Vec<crate::ports::ecm::Node> = match supplier_folder(w).await {
        Some(f) => w
            .ecm
            .children(f, &ChildFilter::default(), 1, 100)
            .await
            .map(|p| p.items)
            .unwrap_or_default(),
        None => Vec::new(),
    };
    match docs.len() {
        0 => {
            cell.lost += 1;
            cell.problems.push("no document".into());
            return;
        }
        1 => {}
        n => {
            cell.duplicated += n as u32 - 1;
            cell.problems.push(format!("{n} documents"));
        }
    }
    let node = docs[0].id;
    let versions: Vec<u32> = w
        .ecm
        .versions(node)
        .await
        .unwrap_or_default()
        .iter()
        .map(|v| v.number)
        .collect();
    let want = bodies.len() as u32;
    if (versions.len() as u32) < want {
        cell.lost += want - versions.len() as u32;
    }
    if versions.len() as u32 > want {
        cell.duplicated += versions.len() as u32 - want;
    }
    if versions.len() as u32 != want {
        cell.problems.push(format!("versions {versions:?}"));
    }
    for (i, (b, _)) in bodies.iter().enumerate() {
        let v = i as u32 + 1;
        if w.ecm.inner.content(node, Some(v)).as_deref() != Some(b.as_slice()) {
            cell.lost += 1;
            cell.problems
                .push(format!("version {v} is not the file's content"));
        }
    }
    let (_, _, hist) = w.doc(node.get()).await;
    let sha = sha_hex(&latest);
    let expect = [
        ("9002_2", route_name.to_owned()),
        ("9002_4", REL.to_owned()),
        ("9002_5", latest.len().to_string()),
        ("9002_6", sha.clone()),
        (
            "9002_10",
            idempotency_key(route_name, REL, latest.len() as u64, &sha),
        ),
    ];
    for (k, v) in expect {
        if hist.get(k) != Some(&v) {
            cell.problems
                .push(format!("history {k} = {:?}, want {v:?}", hist.get(k)));
        }
    }
    for k in ["9002_7", "9002_8", "9002_9"] {
        if !hist.contains_key(k) {
            cell.problems.push(format!("history {k} missing"));
        }
    }
    if attr(w, node.get(), 9005, "9005_3").await.as_deref() != Some(po) {
        cell.problems
            .push("metadata from the sidecar missing".into());
    }
    if !w
        .ecm
        .rm_classifications(node)
        .await
        .unwrap_or_default()
        .contains(&7002)
    {
        cell.problems.push("RM classification not applied".into());
    }
    // Source: every drop archived once (document and sidecar), nothing
    // left in intake, claims or failed/.
    let archived = w.store.files_under("/in/archive/");
    let docs_archived = archived.iter().filter(|p| p.ends_with(".pdf")).count();
    let sidecars_archived = archived.iter().filter(|p| p.ends_with(".json")).count();
    if docs_archived != bodies.len() || sidecars_archived != bodies.len() {
        cell.problems.push(format!("archive holds {archived:?}"));
        if docs_archived < bodies.len() {
            cell.lost += 1;
        }
    }
    let left: Vec<String> = w
        .store
        .files_under("/in/")
        .into_iter()
        .filter(|p| !p.starts_with("/in/archive/"))
        .collect();
    if !left.is_empty() {
        cell.problems.push(format!("left behind: {left:?}"));
    }
    let _ = s;
}

async fn run_cell(point: &'static str, s: Scenario) -> Cell {
    let w = World::new();
    let r = matrix_route(s.policy);
    let mut bodies: Vec<(Vec<u8>, &str)> = Vec::new();
    if s.add_version {
        let v1 = body(s, "version one");
        drop_pair(&w, REL, &v1, "PO-1", NOW - 7200);
        let first = w.run(&r, "clean-run").await;
        assert_eq!(first.counts.ingested, 1, "{first:#?}");
        bodies.push((v1, "PO-1"));
    }
    let b = body(s, "the version the crash is about");
    drop_pair(&w, REL, &b, "PO-2", NOW - 3600);
    bodies.push((b, "PO-2"));

    let crashed = AssertUnwindSafe(CRASH_AT.scope(point, w.run_at(&r, "crashing-run", NOW)))
        .catch_unwind()
        .await
        .is_err();
    // After the lease: the next run finishes; a further one finds nothing to do.
    w.run_at(&r, "rerun-1", NOW + 2000).await;
    let idle = w.run_at(&r, "rerun-2", NOW + 4000).await;
    let mut cell = Cell {
        reached: crashed,
        lost: 0,
        duplicated: 0,
        problems: Vec::new(),
    };
    if idle.counts.ingested > 0 {
        cell.problems
            .push(format!("the second rerun still ingested: {idle:#?}"));
    }
    check(&w, s, r.name(), &bodies, &mut cell).await;
    cell
}

#[tokio::test]
async fn crash_matrix_every_point_every_transfer_kind_zero_lost_zero_duplicated() {
    let mut table = String::from("| crash point |");
    for s in SCENARIOS {
        table.push_str(&format!(" {} |", s.name));
    }
    table.push('\n');
    table.push_str(&"|---".repeat(SCENARIOS.len() + 1));
    table.push_str("|\n");
    let mut failures = Vec::new();
    let mut reached = 0;
    for point in crash::POINTS {
        table.push_str(&format!("| {point} |"));
        for s in SCENARIOS {
            let cell = run_cell(point, *s).await;
            reached += cell.reached as u32;
            let text = match (cell.reached, cell.problems.is_empty()) {
                (false, true) => "not on this path".to_owned(),
                (true, true) => format!("ok: {} lost, {} dup", cell.lost, cell.duplicated),
                _ => format!("FAIL: {} lost, {} dup", cell.lost, cell.duplicated),
            };
            if !cell.problems.is_empty() {
                failures.push(format!("{point} / {}: {:?}", s.name, cell.problems));
            }
            table.push_str(&format!(" {text} |"));
        }
        table.push('\n');
    }
    println!("\nCrash matrix (killed at the point, rerun after the lease):\n{table}");
    assert!(failures.is_empty(), "{failures:#?}\n{table}");
    // Every point is reached by at least one kind of transfer.
    assert!(reached as usize >= crash::POINTS.len(), "{table}");
}

/// The scheduled run and a manual one started together on the same drop:
/// each file goes in once, and is archived once.
#[tokio::test]
async fn two_runs_started_together_on_one_drop_ingest_each_file_once() {
    let w = World::new();
    let r = matrix_route("add-version");
    let mut want = Vec::new();
    for i in 0..6 {
        let rel = format!("INV-60{i:02}_0000100001.pdf");
        let b = if i % 2 == 0 {
            pdf(&format!("small {i}"))
        } else {
            large_pdf(&format!("large {i}"))
        };
        drop_pair(&w, &rel, &b, &format!("PO-{i}"), NOW - 3600);
        want.push((rel, b));
    }
    w.ecm.interleave();
    let (a, b) = tokio::join!(w.run(&r, "scheduled"), w.run(&r, "manual"));
    assert_eq!(a.counts.ingested + b.counts.ingested, 6, "{a:#?}\n{b:#?}");
    assert_eq!(a.counts.failed + b.counts.failed, 0, "{a:#?}\n{b:#?}");
    let folder = supplier_folder(&w).await.unwrap();
    let docs = w
        .ecm
        .children(folder, &ChildFilter::default(), 1, 100)
        .await
        .unwrap()
        .items;
    assert_eq!(docs.len(), 6, "{docs:?}");
    for d in &docs {
        assert_eq!(w.ecm.versions(d.id).await.unwrap().len(), 1, "{d:?}");
    }
    let archived = w.store.files_under("/in/archive/");
    assert_eq!(archived.len(), 12, "{archived:?}");
    for (rel, _) in &want {
        assert_eq!(
            archived
                .iter()
                .filter(|p| p.ends_with(&format!("/{rel}")))
                .count(),
            1,
            "{rel}: {archived:?}"
        );
    }
    assert!(inflight_files(&w).is_empty());
}
