//! The Content Server wire format (otcs-api.md): response shapes parsed into
//! domain types and request bodies built from them. Pure functions, so the
//! shaping is unit-tested without a server; every *unverified* fact of
//! otcs-api.md that the client depends on lives here.

use serde_json::{Map, Value, json};

use crate::ports::ecm::{
    AppliedCategory, AuditEntry, CategoryValues, CreateWorkspace, Hold, Node, NodeId, Page,
    Version, WorkspaceRef, WorkspaceTemplate, WorkspaceType,
};

/// A number that servers send either as a JSON number or as a string.
pub fn as_i64(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn as_u64(v: &Value) -> Option<u64> {
    as_i64(v).and_then(|n| u64::try_from(n).ok())
}

fn as_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

/// The properties of a v2 single result (`results.data.properties`), also
/// accepting a list with one element and the v1 `data.properties` shape.
pub fn single_properties(v: &Value) -> Option<&Value> {
    let results = v.get("results").unwrap_or(v);
    let results = match results {
        Value::Array(a) => a.first()?,
        other => other,
    };
    results.get("data")?.get("properties")
}

/// The elements of a v2 list (`results[]`).
pub fn list_results(v: &Value) -> &[Value] {
    v.get("results")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// A node from a `properties` object; `None` when it has no valid id.
pub fn node_from_properties(p: &Value) -> Option<Node> {
    Some(Node {
        id: NodeId::new(as_i64(p.get("id")?)?)?,
        name: p.get("name").and_then(as_string).unwrap_or_default(),
        node_type: p.get("type").and_then(as_i64).unwrap_or(-1),
        parent_id: p.get("parent_id").and_then(as_i64).and_then(NodeId::new),
        size: p.get("size").and_then(as_u64),
        modified: p.get("modify_date").and_then(as_string),
        mime_type: p.get("mime_type").and_then(as_string),
    })
}

/// Every node of a v2 list.
pub fn nodes_from_list(v: &Value) -> Vec<Node> {
    list_results(v)
        .iter()
        .filter_map(|r| r.get("data")?.get("properties"))
        .filter_map(node_from_properties)
        .collect()
}

/// Paging from `collection.paging` or top-level `paging`; a response without
/// paging is one complete page.
pub fn paging(v: &Value, requested_page: u32, items: usize) -> (u32, u32, u64) {
    let p = v
        .get("collection")
        .and_then(|c| c.get("paging"))
        .or_else(|| v.get("paging"));
    let get = |k: &str| p.and_then(|p| p.get(k)).and_then(as_u64);
    let page = get("page")
        .and_then(|x| u32::try_from(x).ok())
        .unwrap_or(requested_page);
    let page_total = get("page_total")
        .and_then(|x| u32::try_from(x).ok())
        .unwrap_or(page);
    let total = get("total_count").unwrap_or(items as u64);
    (page, page_total, total)
}

pub fn node_page(v: &Value, requested_page: u32) -> Page<Node> {
    let items = nodes_from_list(v);
    let (page, page_total, total_count) = paging(v, requested_page, items.len());
    Page {
        items,
        page,
        page_total,
        total_count,
    }
}

pub fn versions(v: &Value) -> Vec<Version> {
    let mut out: Vec<Version> = list_results(v)
        .iter()
        .filter_map(|r| r.get("data")?.get("versions"))
        .filter_map(version_from)
        .collect();
    out.sort_by_key(|v| v.number);
    out
}

pub fn version_from(d: &Value) -> Option<Version> {
    Some(Version {
        number: u32::try_from(as_i64(d.get("version_number")?)?).ok()?,
        file_name: d.get("file_name").and_then(as_string).unwrap_or_default(),
        size: d.get("file_size").and_then(as_u64).unwrap_or(0),
        mime_type: d.get("mime_type").and_then(as_string),
        created: d.get("create_date").and_then(as_string),
    })
}

/// The version number in an add-version response, wherever the server puts it
/// (`results.data.versions`, `results.data.properties` or v1 `data`).
pub fn added_version_number(v: &Value) -> Option<u32> {
    let results = v.get("results").unwrap_or(v);
    let results = match results {
        Value::Array(a) => a.first()?,
        other => other,
    };
    let data = results.get("data").unwrap_or(results);
    [data.get("versions"), data.get("properties"), Some(data)]
        .into_iter()
        .flatten()
        .find_map(|d| d.get("version_number").and_then(as_i64))
        .and_then(|n| u32::try_from(n).ok())
}

/// The category id of an attribute key `{cat}_{attr}[...]`.
fn category_of_key(key: &str) -> Option<i64> {
    key.split('_').next()?.parse().ok()
}

/// `results[].data.categories`: one entry per applied category.
pub fn categories(v: &Value) -> Vec<AppliedCategory> {
    let mut out: Vec<AppliedCategory> = Vec::new();
    for r in list_results(v) {
        let Some(map) = r
            .get("data")
            .and_then(|d| d.get("categories"))
            .and_then(Value::as_object)
        else {
            continue;
        };
        let mut values = CategoryValues::new();
        let mut cat = None;
        for (k, val) in map {
            if let Some(c) = category_of_key(k) {
                cat.get_or_insert(c);
                values.insert(k.clone(), val.clone());
            }
        }
        if let Some(category_id) = cat {
            out.push(AppliedCategory {
                category_id,
                values,
            });
        }
    }
    out
}

/// A JSON value as form field values: arrays become repeated fields (multi-value
/// attributes), null an empty string (clears the attribute).
fn form_values(v: &Value) -> Vec<String> {
    match v {
        Value::Array(items) => items.iter().flat_map(form_values).collect(),
        Value::Null => vec![String::new()],
        Value::String(s) => vec![s.clone()],
        Value::Bool(b) => vec![if *b { "true" } else { "false" }.into()],
        other => vec![other.to_string()],
    }
}

/// Plain form fields of a category apply (`category_id` first) or update.
pub fn category_form(category_id: Option<i64>, values: &CategoryValues) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Some(id) = category_id {
        out.push(("category_id".to_string(), id.to_string()));
    }
    for (k, v) in values {
        for s in form_values(v) {
            out.push((k.clone(), s));
        }
    }
    out
}

/// The flat `roles.categories` map of an upload (as pyxecm's
/// `flatten_categories_dict` sends it).
fn flat_categories(cats: &[AppliedCategory]) -> Map<String, Value> {
    cats.iter()
        .flat_map(|c| c.values.iter().map(|(k, v)| (k.clone(), v.clone())))
        .collect()
}

/// The `body` JSON of a document upload.
pub fn upload_body(
    parent: NodeId,
    name: &str,
    description: Option<&str>,
    categories: &[AppliedCategory],
    classifications: &[i64],
) -> Value {
    let mut roles = Map::new();
    if !categories.is_empty() {
        roles.insert(
            "categories".into(),
            Value::Object(flat_categories(categories)),
        );
    }
    if !classifications.is_empty() {
        roles.insert(
            "classifications".into(),
            json!({"create_id": [], "id": classifications}),
        );
    }
    let mut body = json!({
        "type": crate::ports::ecm::node_type::DOCUMENT,
        "parent_id": parent.get(),
        "name": name,
        "roles": roles,
    });
    if let Some(d) = description {
        body["description"] = json!(d);
    }
    body
}

/// The `body` JSON of a workspace creation; categories are nested per
/// category id there (`{"cat": {"cat_attr": v}}`).
pub fn create_workspace_body(r: &CreateWorkspace) -> Value {
    let cats: Map<String, Value> = r
        .categories
        .iter()
        .map(|c| {
            let inner: Map<String, Value> = c
                .values
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            (c.category_id.to_string(), Value::Object(inner))
        })
        .collect();
    let mut body = json!({
        "template_id": r.template_id.get(),
        "wksp_type_id": r.type_id,
        "type": crate::ports::ecm::node_type::BUSINESS_WORKSPACE,
        "name": r.name,
        "roles": {"categories": cats},
    });
    if let Some(p) = r.parent {
        body["parent_id"] = json!(p.get());
    }
    if let Some(bo) = &r.business_object {
        body["ext_system_id"] = json!(bo.ext_system_id);
        body["bo_type"] = json!(bo.bo_type);
        body["bo_id"] = json!(bo.bo_id);
    }
    body
}

/// The new id of a create: `results.data.properties.id`, or `results.id`
/// (workspaces), or v1 `id`.
pub fn created_id(v: &Value) -> Option<NodeId> {
    single_properties(v)
        .and_then(|p| p.get("id"))
        .or_else(|| v.get("results").and_then(|r| r.get("id")))
        .or_else(|| v.get("id"))
        .and_then(as_i64)
        .and_then(NodeId::new)
}

pub fn workspace_types(v: &Value) -> Vec<WorkspaceType> {
    list_results(v)
        .iter()
        .filter_map(|r| r.get("data")?.get("properties"))
        .filter_map(|p| {
            Some(WorkspaceType {
                id: as_i64(p.get("wksp_type_id")?)?,
                name: p
                    .get("wksp_type_name")
                    .and_then(as_string)
                    .unwrap_or_default(),
                templates: p
                    .get("templates")
                    .and_then(Value::as_array)
                    .map(|ts| {
                        ts.iter()
                            .filter_map(|t| {
                                Some(WorkspaceTemplate {
                                    id: NodeId::new(as_i64(t.get("id")?)?)?,
                                    name: t.get("name").and_then(as_string).unwrap_or_default(),
                                })
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

pub fn workspace_from_properties(p: &Value) -> Option<WorkspaceRef> {
    Some(WorkspaceRef {
        id: NodeId::new(as_i64(p.get("id")?)?)?,
        name: p.get("name").and_then(as_string).unwrap_or_default(),
        type_id: p.get("wksp_type_id").and_then(as_i64),
    })
}

/// `data[].rmclassification_id` of the v1 RM classification listing.
pub fn rm_classifications(v: &Value) -> Vec<i64> {
    v.get("data")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|d| d.get("rmclassification_id").and_then(as_i64))
                .collect()
        })
        .unwrap_or_default()
}

/// `results.data.holds[].{HoldID,HoldName}`.
pub fn holds(v: &Value) -> Vec<Hold> {
    v.get("results")
        .and_then(|r| r.get("data"))
        .and_then(|d| d.get("holds"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|h| {
                    Some(Hold {
                        id: as_i64(h.get("HoldID")?)?,
                        name: h.get("HoldName").and_then(as_string).unwrap_or_default(),
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `results.data.audit[]` with `collection.paging`.
pub fn audit_page(v: &Value, requested_page: u32) -> Page<AuditEntry> {
    let items: Vec<AuditEntry> = v
        .get("results")
        .and_then(|r| r.get("data"))
        .and_then(|d| d.get("audit"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|e| {
                    Some(AuditEntry {
                        id: as_i64(e.get("id")?)?,
                        event_type: e.get("event_type").and_then(as_i64),
                        audit_name: e.get("audit_name").and_then(as_string),
                        audit_date: e.get("audit_date").and_then(as_string),
                        user_id: e.get("user_id").and_then(as_i64),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    let (page, page_total, total_count) = paging(v, requested_page, items.len());
    Page {
        items,
        page,
        page_total,
        total_count,
    }
}

/// The server's message from an error body (`{"error": "..."}`), or the start
/// of the body when it is not that shape.
pub fn error_message(body: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<Value>(body)
        && let Some(e) = v.get("error").and_then(as_string)
    {
        return e;
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    // Bounded: an HTML error page must not flood logs.
    text.chars().take(300).collect()
}

/// Whether a failed create means "the name already exists" (HTTP 500 with that
/// text on real servers; 409 accepted too).
pub fn is_name_collision(status: u16, message: &str) -> bool {
    (status == 409 || status == 500 || status == 400)
        && message.to_ascii_lowercase().contains("already exists")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::ecm::BusinessObject;

    #[test]
    fn node_page_reads_properties_and_collection_paging() {
        let v = json!({
            "collection": {"paging": {"limit": 2, "page": 1, "page_total": 3, "range_min": 1, "range_max": 2, "total_count": 5}},
            "results": [
                {"data": {"properties": {"id": 11, "name": "a", "type": 0, "parent_id": 2000, "size": 4, "modify_date": "2024-01-02T03:04:05", "mime_type": null}}},
                {"data": {"properties": {"id": "12", "name": "b.pdf", "type": 144, "parent_id": 2000, "size": 10, "mime_type": "application/pdf"}}},
                {"data": {"properties": {"name": "no id"}}}
            ]
        });
        let p = node_page(&v, 1);
        assert_eq!((p.page, p.page_total, p.total_count), (1, 3, 5));
        assert_eq!(p.items.len(), 2);
        assert_eq!(p.items[1].id.get(), 12);
        assert_eq!(p.items[1].mime_type.as_deref(), Some("application/pdf"));
        assert_eq!(p.items[0].modified.as_deref(), Some("2024-01-02T03:04:05"));
        assert!(p.items[0].is_container());
    }

    #[test]
    fn top_level_paging_and_missing_paging() {
        let v = json!({"paging": {"page": 2, "page_total": 2, "total_count": 3}, "results": []});
        assert_eq!(paging(&v, 2, 0), (2, 2, 3));
        assert_eq!(paging(&json!({"results": []}), 1, 0), (1, 1, 0));
    }

    #[test]
    fn single_and_created_ids() {
        let v = json!({"results": {"data": {"properties": {"id": 42, "name": "x", "type": 0}}}});
        assert_eq!(
            node_from_properties(single_properties(&v).unwrap())
                .unwrap()
                .id
                .get(),
            42
        );
        assert_eq!(created_id(&v).map(NodeId::get), Some(42));
        assert_eq!(
            created_id(&json!({"results": {"id": 7}})).map(NodeId::get),
            Some(7)
        );
        assert_eq!(created_id(&json!({"results": {}})), None);
    }

    #[test]
    fn versions_are_sorted_and_read_from_data_versions() {
        let v = json!({"results": [
            {"data": {"versions": {"version_number": 2, "file_name": "b", "file_size": 5, "mime_type": "text/plain", "create_date": "d2"}}},
            {"data": {"versions": {"version_number": 1, "file_name": "a", "file_size": 3}}}
        ]});
        let vs = versions(&v);
        assert_eq!(vs.iter().map(|v| v.number).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(vs[1].size, 5);
        assert_eq!(
            added_version_number(
                &json!({"results": {"data": {"versions": {"version_number": 3}}}})
            ),
            Some(3)
        );
        assert_eq!(
            added_version_number(&json!({"data": {"version_number": 4}})),
            Some(4)
        );
    }

    #[test]
    fn categories_group_by_category_id() {
        let v = json!({"results": [
            {"data": {"categories": {"9001_2": "Approved", "9001_3": ["a", "b"]}}, "metadata": {}},
            {"data": {"categories": {"9002_5_1_6": "row"}}}
        ]});
        let c = categories(&v);
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].category_id, 9001);
        assert_eq!(c[0].values["9001_3"], json!(["a", "b"]));
        assert_eq!(c[1].category_id, 9002);
    }

    #[test]
    fn category_form_repeats_multi_values() {
        let mut vals = CategoryValues::new();
        vals.insert("9001_2".into(), json!("Approved"));
        vals.insert("9001_3".into(), json!(["a", "b"]));
        vals.insert("9001_4".into(), json!(12));
        vals.insert("9001_5".into(), Value::Null);
        let f = category_form(Some(9001), &vals);
        let expected: Vec<(String, String)> = [
            ("category_id", "9001"),
            ("9001_2", "Approved"),
            ("9001_3", "a"),
            ("9001_3", "b"),
            ("9001_4", "12"),
            ("9001_5", ""),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        assert_eq!(f, expected);
    }

    #[test]
    fn upload_body_has_roles_with_flat_categories_and_classifications() {
        let mut vals = CategoryValues::new();
        vals.insert("9001_2".into(), json!("Draft"));
        let body = upload_body(
            NodeId::new(5).unwrap(),
            "a.pdf",
            Some("desc"),
            &[AppliedCategory {
                category_id: 9001,
                values: vals,
            }],
            &[77],
        );
        assert_eq!(
            body,
            json!({"type": 144, "parent_id": 5, "name": "a.pdf", "description": "desc",
                   "roles": {"categories": {"9001_2": "Draft"}, "classifications": {"create_id": [], "id": [77]}}})
        );
        let plain = upload_body(NodeId::new(5).unwrap(), "a.pdf", None, &[], &[]);
        assert_eq!(
            plain,
            json!({"type": 144, "parent_id": 5, "name": "a.pdf", "roles": {}})
        );
    }

    #[test]
    fn workspace_body_nests_categories_and_sets_business_object() {
        let mut vals = CategoryValues::new();
        vals.insert("5000_2".into(), json!("ACME"));
        let body = create_workspace_body(&CreateWorkspace {
            template_id: NodeId::new(900).unwrap(),
            type_id: 3,
            name: "ACME".into(),
            parent: None,
            business_object: Some(BusinessObject {
                ext_system_id: "SAP".into(),
                bo_type: "KNA1".into(),
                bo_id: "0001".into(),
            }),
            categories: vec![AppliedCategory {
                category_id: 5000,
                values: vals,
            }],
        });
        assert_eq!(body["roles"]["categories"]["5000"]["5000_2"], json!("ACME"));
        assert_eq!(body["bo_id"], json!("0001"));
        assert_eq!(body["type"], json!(848));
        assert!(body.get("parent_id").is_none());
    }

    #[test]
    fn small_readers() {
        let wt = workspace_types(
            &json!({"results": [{"data": {"properties": {"wksp_type_id": 3, "wksp_type_name": "Customer", "templates": [{"id": 900, "name": "Customer"}]}}}]}),
        );
        assert_eq!(wt[0].templates[0].id.get(), 900);
        assert_eq!(
            rm_classifications(&json!({"data": [{"rmclassification_id": 550}]})),
            [550]
        );
        assert_eq!(
            holds(&json!({"results": {"data": {"holds": [{"HoldID": 1, "HoldName": "Lit"}]}}}))[0]
                .name,
            "Lit"
        );
        let a = audit_page(
            &json!({"results": {"data": {"audit": [{"id": 1, "event_type": 2, "audit_name": "Create"}]}}, "collection": {"paging": {"total_count": 9, "page": 1, "page_total": 9}}}),
            1,
        );
        assert_eq!((a.items.len(), a.total_count), (1, 9));
    }

    #[test]
    fn error_messages_and_collisions() {
        assert_eq!(
            error_message(br#"{"error":"An item with the name 'x' already exists."}"#),
            "An item with the name 'x' already exists."
        );
        assert_eq!(error_message(b"<html>oops</html>"), "<html>oops</html>");
        assert!(is_name_collision(
            500,
            "An item with the name 'x' already exists."
        ));
        assert!(!is_name_collision(500, "Internal error"));
        assert!(!is_name_collision(404, "already exists"));
    }
}
