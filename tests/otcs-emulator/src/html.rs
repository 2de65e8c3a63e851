//! A read-only HTML view so a person can see what a demo or test did:
//! workspaces → folders → documents, with versions, categories, records
//! management and audit. No ticket is needed (the emulator listens on
//! loopback by default) and nothing can be changed or downloaded here.

use std::fmt::Write;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use serde_json::Value;

use crate::model::{ENTERPRISE_ID, Model, Node, cs_date};
use crate::seed::{AttrType, CategoryDef};
use crate::state::AppState;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui") }))
        .route("/ui", get(home))
        .route("/ui/nodes/{id}", get(node_page))
}

fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn page(title: &str, body: &str) -> Html<String> {
    Html(format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{t} — OTCS emulator</title><style>\
         body{{font-family:system-ui,sans-serif;margin:2em;color:#222}}\
         table{{border-collapse:collapse;margin:.5em 0 1.5em}}\
         td,th{{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top}}\
         th{{background:#f3f3f3}} a{{color:#0a58ca;text-decoration:none}} .muted{{color:#777}}\
         </style></head><body><p class=\"muted\"><a href=\"/ui\">OTCS emulator</a> (read-only view)</p>\
         <h1>{t}</h1>{body}</body></html>",
        t = esc(title)
    ))
}

fn link(n: &Node) -> String {
    format!("<a href=\"/ui/nodes/{}\">{}</a>", n.id, esc(&n.name))
}

async fn home(State(state): State<Arc<AppState>>) -> Html<String> {
    state.read(|m| {
        let mut b = String::new();
        let _ = write!(
            b,
            "<p>Browse the <a href=\"/ui/nodes/{ENTERPRISE_ID}\">Enterprise Workspace</a>.</p><h2>Business workspaces</h2>"
        );
        for t in &m.seed.workspace_types {
            let _ = write!(
                b,
                "<h3>{} <span class=\"muted\">(type {})</span></h3><table><tr><th>Workspace</th><th>Business object</th><th>Items</th></tr>",
                esc(&t.name),
                t.id
            );
            let mut ws: Vec<&Node> = m
                .nodes
                .values()
                .filter(|n| n.workspace.as_ref().is_some_and(|w| w.type_id == t.id))
                .collect();
            ws.sort_by_key(|n| n.name.to_lowercase());
            for n in ws {
                let bo = n
                    .workspace
                    .as_ref()
                    .map(|w| {
                        [&w.ext_system_id, &w.bo_type, &w.bo_id]
                            .iter()
                            .map(|x| x.as_deref().unwrap_or("-"))
                            .collect::<Vec<_>>()
                            .join(" / ")
                    })
                    .unwrap_or_default();
                let _ = write!(
                    b,
                    "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                    link(n),
                    esc(&bo),
                    m.child_count(n.id)
                );
            }
            b.push_str("</table>");
        }
        page("Repository", &b)
    })
}

fn breadcrumb(m: &Model, n: &Node) -> String {
    let mut trail = Vec::new();
    let mut cursor = m.nodes.get(&n.parent_id);
    while let Some(p) = cursor {
        trail.push(link(p));
        if trail.len() > 100 {
            break;
        }
        cursor = m.nodes.get(&p.parent_id);
    }
    trail.reverse();
    trail.join(" › ")
}

fn value_text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Array(a) => a.iter().map(value_text).collect::<Vec<_>>().join(", "),
        other => other.to_string(),
    }
}

fn attribute_name(def: &CategoryDef, key: &str) -> String {
    let parts: Vec<i64> = key.split('_').filter_map(|p| p.parse().ok()).collect();
    match parts.as_slice() {
        [_, a] => def
            .attributes
            .iter()
            .find(|x| x.id == *a)
            .map(|x| x.name.clone()),
        [_, s, row, a] => def
            .attributes
            .iter()
            .find(|x| x.id == *s && x.kind == AttrType::Set)
            .and_then(|set| {
                set.attributes
                    .iter()
                    .find(|x| x.id == *a)
                    .map(|x| format!("{} [{row}] {}", set.name, x.name))
            }),
        _ => None,
    }
    .unwrap_or_else(|| key.to_string())
}

async fn node_page(State(state): State<Arc<AppState>>, Path(id): Path<i64>) -> Response {
    state.read(|m| {
        let Some(n) = m.nodes.get(&id) else {
            return (StatusCode::NOT_FOUND, page("Not found", &format!("<p>Node {id} does not exist.</p>")))
                .into_response();
        };
        let mut b = String::new();
        let _ = write!(b, "<p>{}</p><table>", breadcrumb(m, n));
        let props = m.properties(n);
        for key in ["id", "type_name", "description", "create_date", "modify_date", "size"] {
            let _ = write!(b, "<tr><th>{key}</th><td>{}</td></tr>", esc(&value_text(&props[key])));
        }
        if let Some(w) = &n.workspace {
            let _ = write!(
                b,
                "<tr><th>workspace</th><td>type {} · template {} · {}</td></tr>",
                w.type_id,
                w.template_id,
                esc(&format!(
                    "{} / {} / {}",
                    w.ext_system_id.as_deref().unwrap_or("-"),
                    w.bo_type.as_deref().unwrap_or("-"),
                    w.bo_id.as_deref().unwrap_or("-")
                ))
            );
        }
        b.push_str("</table>");

        let children = m.children(id);
        if n.is_container() {
            let _ = write!(
                b,
                "<h2>Items ({})</h2><table><tr><th>Name</th><th>Type</th><th>Size</th><th>Modified</th></tr>",
                children.len()
            );
            for c in children {
                let p = m.properties(c);
                let _ = write!(
                    b,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    link(c),
                    esc(&value_text(&p["type_name"])),
                    esc(&value_text(&p["size_formatted"])),
                    cs_date(&c.modify_date)
                );
            }
            b.push_str("</table>");
        }
        if !n.versions.is_empty() {
            b.push_str("<h2>Versions</h2><table><tr><th>#</th><th>File</th><th>Size</th><th>Type</th><th>Created</th><th>Description</th></tr>");
            for v in &n.versions {
                let _ = write!(
                    b,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    v.number,
                    esc(&v.file_name),
                    v.file_size,
                    esc(&v.mime_type),
                    cs_date(&v.create_date),
                    esc(&v.description)
                );
            }
            b.push_str("</table>");
        }
        for (cat, values) in &n.categories {
            let Some(def) = m.seed.categories.iter().find(|c| c.id == *cat) else { continue };
            let _ = write!(b, "<h2>Category: {} <span class=\"muted\">({cat})</span></h2><table>", esc(&def.name));
            for (key, v) in values {
                let _ = write!(
                    b,
                    "<tr><th>{}</th><td>{}</td><td class=\"muted\">{}</td></tr>",
                    esc(&attribute_name(def, key)),
                    esc(&value_text(v)),
                    esc(key)
                );
            }
            b.push_str("</table>");
        }
        if !n.rm_classifications.is_empty() || !n.holds.is_empty() {
            b.push_str("<h2>Records management</h2><table>");
            for c in &n.rm_classifications {
                let name = m.seed.rm_classifications.iter().find(|d| d.id == *c).map(|d| d.name.as_str()).unwrap_or("");
                let _ = write!(b, "<tr><th>Classification</th><td>{} ({c})</td></tr>", esc(name));
            }
            for h in &n.holds {
                let name = m.seed.holds.iter().find(|d| d.id == *h).map(|d| d.name.as_str()).unwrap_or("");
                let _ = write!(b, "<tr><th>Hold</th><td>{} ({h})</td></tr>", esc(name));
            }
            b.push_str("</table>");
        }
        let events: Vec<_> = m.audit.iter().filter(|e| e.node_id == id).rev().collect();
        if !events.is_empty() {
            b.push_str("<h2>Audit</h2><table><tr><th>When</th><th>Event</th><th>User</th></tr>");
            for e in events {
                let user = m.seed.users.iter().find(|u| u.id == e.user_id).map(|u| u.name.as_str()).unwrap_or("");
                let _ = write!(
                    b,
                    "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                    cs_date(&e.audit_date),
                    esc(&e.audit_name),
                    esc(user)
                );
            }
            b.push_str("</table>");
        }
        page(&n.name, &b).into_response()
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn markup_is_escaped() {
        assert_eq!(
            super::esc("<a href='x'>&\"</a>"),
            "&lt;a href=&#39;x&#39;&gt;&amp;&quot;&lt;/a&gt;"
        );
    }
}
