//! The emulator over HTTP: refusals, tickets, paging, shapes, workspaces,
//! records management, test controls and persistence.

mod common;

use std::time::Duration;

use common::{App, error_of, id_of, spawn, spawn_with};
use otcs_emulator::EmulatorConfig;
use reqwest::Method;
use reqwest::multipart::{Form, Part};
use serde_json::{Value, json};

// ---------- refusals ----------

#[tokio::test]
async fn name_collision_on_create_is_a_500_already_exists() {
    let app = spawn().await;
    app.new_folder("Twice").await;
    let (s, v) = app.create_folder(2000, "Twice").await;
    assert_eq!(s, 500);
    assert!(error_of(&v).contains("already exists"), "{v}");
    // Same for a document upload under the same parent.
    let (s, v) = app.upload(2000, "Twice", b"x".to_vec(), json!({})).await;
    assert_eq!(s, 500, "{v}");
    assert!(error_of(&v).contains("already exists"));
}

#[tokio::test]
async fn names_with_colon_or_over_248_characters_are_refused() {
    let app = spawn().await;
    let (s, v) = app.create_folder(2000, "a:b").await;
    assert_eq!(s, 400, "{v}");
    assert!(error_of(&v).contains(':'));
    let (s, v) = app.create_folder(2000, &"n".repeat(249)).await;
    assert_eq!(s, 400, "{v}");
    let (s, v) = app.create_folder(2000, &"n".repeat(248)).await;
    assert_eq!(s, 200, "248 characters are allowed: {v}");
    let (s, _) = app.upload(2000, "x:y.pdf", b"x".to_vec(), json!({})).await;
    assert_eq!(s, 400);
    // Renames obey the same rules.
    let id = app.new_folder("rename me").await;
    let (s, _) = app
        .send_body(
            Method::PUT,
            &format!("/v2/nodes/{id}"),
            json!({"name": "bad:name"}),
        )
        .await;
    assert_eq!(s, 400);
}

#[tokio::test]
async fn unknown_node_is_404() {
    let app = spawn().await;
    for path in [
        "/v2/nodes/987654",
        "/v1/nodes/987654",
        "/v2/nodes/987654/nodes",
        "/v2/nodes/987654/versions",
        "/v1/nodes/987654/content",
        "/v2/nodes/987654/categories",
        "/v2/nodes/987654/audit",
    ] {
        let (s, v) = app.get(path).await;
        assert_eq!(s, 404, "{path}: {v}");
        assert!(!error_of(&v).is_empty(), "{path} has an error body");
    }
    let (s, _) = app.create_folder(987654, "orphan").await;
    assert_eq!(s, 404);
    let r = app
        .http
        .delete(app.url("/v2/nodes/987654"))
        .header("OTCSTicket", &app.ticket)
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status().as_u16(), 404);
}

#[tokio::test]
async fn unknown_category_attribute_or_wrong_type_is_400_naming_it() {
    let app = spawn().await;
    let (_, v) = app.upload(2000, "cat.pdf", b"x".to_vec(), json!({})).await;
    let id = id_of(&v);
    let path = format!("/v2/nodes/{id}/categories");
    let (s, v) = app
        .send_form(
            Method::POST,
            &path,
            &[("category_id", "9002"), ("9002_77", "x")],
        )
        .await;
    assert_eq!(s, 400);
    assert!(error_of(&v).contains("9002_77"), "{v}");
    let (s, v) = app
        .send_form(
            Method::POST,
            &path,
            &[("category_id", "9002"), ("9002_5", "not a number")],
        )
        .await;
    assert_eq!(s, 400);
    assert!(error_of(&v).contains("9002_5"), "{v}");
    let (s, v) = app
        .send_form(
            Method::POST,
            &path,
            &[("category_id", "9002"), ("9002_7", "yesterday")],
        )
        .await;
    assert_eq!(s, 400);
    assert!(error_of(&v).contains("9002_7"), "{v}");
    // Nothing was assigned by the refused calls.
    let (_, v) = app.get(&path).await;
    assert_eq!(v["results"].as_array().map(Vec::len), Some(0), "{v}");
    // Valid values pass and are typed.
    let (s, v) = app
        .send_form(
            Method::POST,
            &path,
            &[
                ("category_id", "9002"),
                ("9002_5", "1048576"),
                ("9002_7", "2026-01-31T10:00:00Z"),
            ],
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (_, v) = app.get(&format!("{path}/9002")).await;
    assert_eq!(v["results"]["data"]["categories"]["9002_5"], json!(1048576));
    assert_eq!(
        v["results"]["data"]["categories"]["9002_7"],
        json!("2026-01-31T10:00:00")
    );
    // Update with a wrong type is refused, naming the attribute.
    let (s, v) = app
        .send_form(
            Method::PUT,
            &format!("{path}/9002"),
            &[("category_id", "9002"), ("9002_5", "1.5")],
        )
        .await;
    assert_eq!(s, 400);
    assert!(error_of(&v).contains("9002_5"));
    // Text popups accept only their values.
    let (s, v) = app
        .send_form(
            Method::POST,
            &path,
            &[("category_id", "9001"), ("9001_2", "Done")],
        )
        .await;
    assert_eq!(s, 400);
    assert!(error_of(&v).contains("9001_2"));
    // Upload roles are validated before anything is created.
    let (s, v) = app
        .upload(
            2000,
            "roles.pdf",
            b"x".to_vec(),
            json!({"roles": {"categories": {"9004": {"9004_5": "maybe"}}}}),
        )
        .await;
    assert_eq!(s, 400);
    assert!(error_of(&v).contains("9004_5"), "{v}");
    let (_, v) = app.get("/v2/nodes/2000/nodes?where_name=roles.pdf").await;
    assert_eq!(v["results"].as_array().map(Vec::len), Some(0));
}

#[tokio::test]
async fn multi_values_and_set_rows_are_validated() {
    let app = spawn().await;
    let id = app.new_folder("sets").await;
    let path = format!("/v2/nodes/{id}/categories");
    let (s, v) = app
        .send_form(
            Method::POST,
            &path,
            &[
                ("category_id", "9006"),
                ("9006_5_1_6", "F-1"),
                ("9006_5_1_7", "3"),
                ("9006_5_2_6", "F-2"),
            ],
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let c = &v["results"]["data"]["categories"];
    assert_eq!(c["9006_5_1_7"], json!(3));
    assert_eq!(c["9006_5_2_6"], json!("F-2"));
    let (s, v) = app
        .send_form(
            Method::PUT,
            &format!("{path}/9006"),
            &[("9006_5_11_6", "beyond max rows")],
        )
        .await;
    assert_eq!(s, 400);
    assert!(error_of(&v).contains("9006_5_11_6"));
    // Repeated keys make a multi-value; more than allowed is refused.
    let (s, v) = app
        .send_form(
            Method::POST,
            &path,
            &[
                ("category_id", "9005"),
                ("9005_5", "PO-1"),
                ("9005_5", "PO-2"),
            ],
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v["results"]["data"]["categories"]["9005_5"],
        json!(["PO-1", "PO-2"])
    );
    let many: Vec<(&str, &str)> = std::iter::repeat_n(("9005_5", "PO"), 11).collect();
    let (s, v) = app
        .send_form(Method::PUT, &format!("{path}/9005"), &many)
        .await;
    assert_eq!(s, 400);
    assert!(error_of(&v).contains("9005_5"));
}

#[tokio::test]
async fn upload_without_file_is_400() {
    let app = spawn().await;
    let form = Form::new().text(
        "body",
        json!({"type": 144, "parent_id": 2000, "name": "nofile.pdf"}).to_string(),
    );
    let r = app
        .http
        .post(app.url("/v2/nodes"))
        .header("OTCSTicket", &app.ticket)
        .multipart(form)
        .send()
        .await
        .expect("request");
    assert_eq!(r.status().as_u16(), 400);
    let v: Value = r.json().await.expect("json");
    assert!(error_of(&v).contains("file"), "{v}");
    // Also as a plain form request.
    let (s, _) = app
        .post_body(
            "/v2/nodes",
            json!({"type": 144, "parent_id": 2000, "name": "nofile.pdf"}),
        )
        .await;
    assert_eq!(s, 400);
    // And for a new version.
    let (_, v) = app
        .upload(2000, "doc.pdf", b"one".to_vec(), json!({}))
        .await;
    let id = id_of(&v);
    let r = app
        .http
        .post(app.url(&format!("/v2/nodes/{id}/versions")))
        .header("OTCSTicket", &app.ticket)
        .multipart(Form::new().text("description", "no file"))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status().as_u16(), 400);
}

#[tokio::test]
async fn a_held_node_and_its_ancestors_cannot_be_deleted() {
    let app = spawn().await;
    let folder = app.new_folder("Held").await;
    let (_, v) = app
        .upload(folder, "evidence.pdf", b"e".to_vec(), json!({}))
        .await;
    let doc = id_of(&v);
    let (s, v) = app
        .post_body(&format!("/v1/nodes/{doc}/holds"), json!({"hold_id": 8001}))
        .await;
    assert_eq!(s, 200, "{v}");
    let delete = |id: i64| {
        app.http
            .delete(app.url(&format!("/v2/nodes/{id}")))
            .header("OTCSTicket", &app.ticket)
            .send()
    };
    for id in [doc, folder] {
        let r = delete(id).await.expect("delete");
        assert_eq!(r.status().as_u16(), 403, "node {id}");
    }
    let (s, _) = app.get(&format!("/v2/nodes/{doc}")).await;
    assert_eq!(s, 200, "still there");
    let (s, v) = app
        .post_body(&format!("/v1/nodes/{doc}/holds"), json!({"hold_id": 999}))
        .await;
    assert_eq!(s, 400, "unknown hold: {v}");
    let (_, v) = app.get("/v2/holds").await;
    assert_eq!(v["results"]["data"]["holds"][0]["HoldID"], json!(8001));
    // An unheld node deletes.
    let other = app.new_folder("Free").await;
    let r = delete(other).await.expect("delete");
    assert_eq!(r.status().as_u16(), 200);
    let (s, _) = app.get(&format!("/v2/nodes/{other}")).await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn non_loopback_listen_address_is_refused_unless_allowed() {
    let config = EmulatorConfig {
        listen: "0.0.0.0:0".parse().expect("addr"),
        ..EmulatorConfig::default()
    };
    let err = otcs_emulator::start(config).await.err().expect("refused");
    assert!(err.to_string().contains("non-loopback"), "{err}");
}

// ---------- tickets ----------

#[tokio::test]
async fn every_call_but_ping_and_auth_needs_a_ticket() {
    let app = spawn().await;
    let r = app
        .http
        .get(app.url("/v1/ping"))
        .send()
        .await
        .expect("ping");
    assert_eq!(r.status().as_u16(), 200);
    let v: Value = r.json().await.expect("json");
    assert!(v.as_object().is_some_and(|o| !o.is_empty()));
    let r = app
        .http
        .get(app.url("/v2/nodes/2000"))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status().as_u16(), 401);
    let r = app
        .http
        .get(app.url("/v2/nodes/2000"))
        .header("OTCSTicket", "forged")
        .send()
        .await
        .expect("request");
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!(
        app.login("admin", "wrong").await,
        Err(reqwest::StatusCode::UNAUTHORIZED)
    );
    // LLCookie as header and as cookie are accepted too.
    let r = app
        .http
        .get(app.url("/v2/nodes/2000"))
        .header("LLCookie", &app.ticket)
        .send()
        .await
        .expect("request");
    assert_eq!(r.status().as_u16(), 200);
    let r = app
        .http
        .get(app.url("/v2/nodes/2000"))
        .header("Cookie", format!("other=1; LLCookie={}", app.ticket))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status().as_u16(), 200);
}

#[tokio::test]
async fn tickets_expire_after_the_idle_time_with_401() {
    let config = EmulatorConfig {
        ticket_idle: Duration::from_millis(800),
        ..EmulatorConfig::default()
    };
    let app = spawn_with(config).await;
    // Use keeps a ticket alive.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let (s, _) = app.get("/v2/nodes/2000").await;
        assert_eq!(s, 200);
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (s, v) = app.get("/v2/nodes/2000").await;
    assert_eq!(s, 401, "{v}");
    assert!(!error_of(&v).is_empty());
    // A new login works.
    assert!(app.login("admin", "admin").await.is_ok());
}

#[tokio::test]
async fn test_control_expires_all_tickets() {
    let app = spawn().await;
    let r = app
        .http
        .post(format!("{}/__emulator/expire-tickets", app.emu.base_url()))
        .send()
        .await
        .expect("r");
    assert_eq!(r.status().as_u16(), 200);
    let (s, _) = app.get("/v2/nodes/2000").await;
    assert_eq!(s, 401);
}

// ---------- wire shapes and paging ----------

#[tokio::test]
async fn both_base_paths_serve_the_same_repository() {
    let mut app = spawn().await;
    let id = app.new_folder("Shared by both").await;
    app.base_path = "/otcs/cs.exe/api";
    let (s, v) = app.get(&format!("/v2/nodes/{id}")).await;
    assert_eq!(s, 200);
    assert_eq!(
        v["results"]["data"]["properties"]["name"],
        json!("Shared by both")
    );
    let (_, v) = app.get("/v2/volumes/141").await;
    assert_eq!(id_of(&v), 2000);
}

#[tokio::test]
async fn children_page_with_collection_paging_and_container_size() {
    let app = spawn().await;
    let parent = app.new_folder("Paged").await;
    for i in 0..7 {
        let (s, _) = app.create_folder(parent, &format!("child {i:02}")).await;
        assert_eq!(s, 200);
    }
    app.upload(parent, "doc.pdf", b"d".to_vec(), json!({}))
        .await;
    let (_, v) = app.get(&format!("/v2/nodes/{parent}")).await;
    assert_eq!(v["results"]["data"]["properties"]["size"], json!(8));
    let mut names = Vec::new();
    for page in 1..=3 {
        let (s, v) = app
            .get(&format!(
                "/v2/nodes/{parent}/nodes?limit=3&page={page}&fields=properties"
            ))
            .await;
        assert_eq!(s, 200);
        let p = &v["collection"]["paging"];
        assert_eq!(p["total_count"], json!(8));
        assert_eq!(p["page_total"], json!(3));
        assert_eq!(p["page"], json!(page));
        for r in v["results"].as_array().expect("results") {
            names.push(
                r["data"]["properties"]["name"]
                    .as_str()
                    .expect("name")
                    .to_string(),
            );
        }
    }
    assert_eq!(names.len(), 8);
    names.dedup();
    assert_eq!(names.len(), 8);
    // where_name is a substring match; where_type filters.
    let (_, v) = app
        .get(&format!("/v2/nodes/{parent}/nodes?where_name=ILD 0"))
        .await;
    assert_eq!(v["collection"]["paging"]["total_count"], json!(7));
    let (_, v) = app
        .get(&format!("/v2/nodes/{parent}/nodes?where_type=144"))
        .await;
    assert_eq!(v["collection"]["paging"]["total_count"], json!(1));
}

#[tokio::test]
async fn versions_and_content_in_v1_and_v2_shapes() {
    let app = spawn().await;
    let (s, v) = app
        .upload(
            2000,
            "versions.pdf",
            b"first".to_vec(),
            json!({"description": "d"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let id = id_of(&v);
    assert_eq!(v["results"]["data"]["properties"]["size"], json!(5));
    let form = Form::new().text("description", "second").part(
        "file",
        Part::bytes(b"second!".to_vec())
            .file_name("versions.pdf")
            .mime_str("application/pdf")
            .expect("mime"),
    );
    let r = app
        .http
        .post(app.url(&format!("/v2/nodes/{id}/versions")))
        .header("OTCSTicket", &app.ticket)
        .multipart(form)
        .send()
        .await
        .expect("add version");
    assert_eq!(r.status().as_u16(), 200);
    let (_, v) = app.get(&format!("/v2/nodes/{id}/versions")).await;
    let vs = v["results"].as_array().expect("list");
    assert_eq!(vs.len(), 2);
    assert_eq!(vs[1]["data"]["versions"]["version_number"], json!(2));
    assert_eq!(vs[1]["data"]["versions"]["file_size"], json!(7));
    let (_, v) = app.get(&format!("/v1/nodes/{id}/versions/latest")).await;
    assert_eq!(v["data"]["version_number"], json!(2));
    let (_, v) = app.get(&format!("/v1/nodes/{id}")).await;
    assert_eq!(v["data"]["id"], json!(id), "v1 has no results wrapper");
    for (path, want) in [
        (format!("/v1/nodes/{id}/content"), &b"second!"[..]),
        (format!("/v1/nodes/{id}/versions/1/content"), &b"first"[..]),
        (
            format!("/v2/nodes/{id}/versions/2/content"),
            &b"second!"[..],
        ),
    ] {
        let r = app
            .http
            .get(app.url(&path))
            .header("OTCSTicket", &app.ticket)
            .send()
            .await
            .expect("get");
        assert_eq!(r.status().as_u16(), 200);
        assert_eq!(r.content_length(), Some(want.len() as u64), "{path}");
        assert_eq!(r.headers()["content-type"], "application/pdf");
        assert_eq!(&r.bytes().await.expect("bytes")[..], want, "{path}");
    }
    let (s, _) = app.get(&format!("/v2/nodes/{id}/versions/9/content")).await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn node_audit_records_create_version_category_classify_and_download() {
    let app = spawn().await;
    let (_, v) = app
        .upload(2000, "audited.pdf", b"a".to_vec(), json!({}))
        .await;
    let id = id_of(&v);
    let form = Form::new().part("file", Part::bytes(b"b".to_vec()).file_name("audited.pdf"));
    app.http
        .post(app.url(&format!("/v2/nodes/{id}/versions")))
        .header("OTCSTicket", &app.ticket)
        .multipart(form)
        .send()
        .await
        .expect("version");
    app.send_form(
        Method::POST,
        &format!("/v2/nodes/{id}/categories"),
        &[("category_id", "9001")],
    )
    .await;
    app.send_form(
        Method::PUT,
        &format!("/v2/nodes/{id}/categories/9001"),
        &[("9001_2", "Draft")],
    )
    .await;
    let (s, v) = app
        .post_body(
            &format!("/v1/nodes/{id}/rmclassifications"),
            json!({"class_id": 7002}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = app
        .post_body(
            &format!("/v1/nodes/{id}/rmclassifications"),
            json!({"class_id": 1}),
        )
        .await;
    assert_eq!(s, 400, "unknown classification: {v}");
    let (_, v) = app.get(&format!("/v1/nodes/{id}/rmclassifications")).await;
    assert_eq!(v["data"][0]["rmclassification_id"], json!(7002));
    app.http
        .get(app.url(&format!("/v1/nodes/{id}/content")))
        .header("OTCSTicket", &app.ticket)
        .send()
        .await
        .expect("dl");
    let (_, v) = app.get(&format!("/v2/nodes/{id}/audit?limit=100")).await;
    let names: Vec<&str> = v["results"]["data"]["audit"]
        .as_array()
        .expect("audit")
        .iter()
        .filter_map(|e| e["audit_name"].as_str())
        .collect();
    for want in [
        "Create",
        "Add Version",
        "Category Added",
        "Attribute Value Changed",
        "RM Classification Assigned",
        "Fetch",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    assert_eq!(v["collection"]["paging"]["total_count"], json!(names.len()));
    let (_, v) = app
        .get(&format!("/v2/nodes/{id}/audit?limit=2&page=2"))
        .await;
    assert_eq!(
        v["results"]["data"]["audit"].as_array().map(Vec::len),
        Some(2)
    );
}

#[tokio::test]
async fn search_finds_nodes_by_name() {
    let app = spawn().await;
    app.upload(2000, "Pricing Sheet Q3.xlsx", b"p".to_vec(), json!({}))
        .await;
    let (s, v) = app
        .send_form(
            Method::POST,
            "/v2/search",
            &[
                ("where", "OTName: \"pricing sheet\""),
                ("limit", "10"),
                ("page", "1"),
            ],
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let names: Vec<&str> = v["results"]
        .as_array()
        .expect("results")
        .iter()
        .filter_map(|r| r["data"]["properties"]["name"].as_str())
        .collect();
    assert_eq!(names, vec!["Pricing Sheet Q3.xlsx"]);
    assert_eq!(v["collection"]["paging"]["total_count"], json!(1));
}

// ---------- business workspaces ----------

#[tokio::test]
async fn workspaces_by_type_by_business_object_and_created_from_template() {
    let app = spawn().await;
    let (_, v) = app
        .get("/v2/businessworkspacetypes?expand_templates=true")
        .await;
    let types: Vec<i64> = v["results"]
        .as_array()
        .expect("types")
        .iter()
        .filter_map(|t| t["data"]["properties"]["wksp_type_id"].as_i64())
        .collect();
    assert_eq!(types, vec![100, 101, 102, 103, 104]);
    let (_, v) = app
        .get("/v2/businessworkspaces?where_workspace_type_id=101&expanded_view=true")
        .await;
    assert_eq!(v["results"][0]["data"]["properties"]["id"], json!(5101));
    assert_eq!(v["paging"]["total_count"], json!(1));
    let (s, v) = app
        .get("/v2/externalsystems/SAP/botypes/KNA1/boids/0000200001")
        .await;
    assert_eq!(s, 200);
    assert_eq!(v["results"][0]["data"]["properties"]["id"], json!(5101));
    let (s, _) = app
        .get("/v2/externalsystems/SAP/botypes/KNA1/boids/nope")
        .await;
    assert_eq!(s, 404);
    let body = json!({
        "template_id": 20001, "wksp_type_id": 100, "type": 848, "name": "New Supplier (0000100099)",
        "ext_system_id": "SAP", "bo_type": "LFA1", "bo_id": "0000100099",
        "roles": {"categories": {"9004": {"9004_2": "C-99"}}}
    });
    let (s, v) = app.post_body("/v2/businessworkspaces", body.clone()).await;
    assert_eq!(s, 200, "{v}");
    let id = v["results"]["id"].as_i64().expect("id");
    let (_, v) = app.get(&format!("/v2/businessworkspaces/{id}")).await;
    assert_eq!(
        v["results"][0]["data"]["properties"]["parent_id"],
        json!(3001),
        "type location"
    );
    assert_eq!(
        v["results"][0]["data"]["business_properties"]["business_object_id"],
        json!("0000100099")
    );
    let (_, v) = app.get(&format!("/v2/nodes/{id}/categories/9004")).await;
    assert_eq!(v["results"]["data"]["categories"]["9004_2"], json!("C-99"));
    let (s, v) = app.post_body("/v2/businessworkspaces", body).await;
    assert_eq!(s, 500, "same business object twice: {v}");
    let (s, _) = app
        .post_body(
            "/v2/businessworkspaces",
            json!({"template_id": 20002, "wksp_type_id": 100, "name": "x"}),
        )
        .await;
    assert_eq!(s, 400, "template of another type");
}

#[tokio::test]
async fn workspaces_carry_their_type_category_with_its_definitions() {
    let app = spawn().await;
    // Seeded: the Supplier type's category with the business object's values
    // and every attribute's definition.
    let (s, v) = app.get("/v2/nodes/5001/categories").await;
    assert_eq!(s, 200, "{v}");
    let item = &v["results"][0];
    assert_eq!(item["metadata_order"]["categories"], json!(["9007"]));
    let meta = &item["metadata"]["categories"];
    assert_eq!(meta["9007"]["name"], json!("Supplier"));
    assert_eq!(meta["9007_2"]["name"], json!("Vendor Number"));
    assert_eq!(meta["9007_2"]["type_name"], json!("String"));
    assert_eq!(meta["9007_2"]["persona"], json!("categoryattribute"));
    assert_eq!(meta["9007_4"]["name"], json!("Country"));
    assert_eq!(item["data"]["categories"]["9007_2"], json!("0000100001"));
    assert_eq!(
        item["data"]["categories"]["9007_3"],
        json!("Acme Supplies GmbH")
    );
    // Each seeded workspace carries its own type's category.
    for (ws, cat) in [(5101, 9008), (5201, 9004), (5301, 9009), (5401, 9010)] {
        let (s, v) = app.get(&format!("/v2/nodes/{ws}/categories/{cat}")).await;
        assert_eq!(s, 200, "workspace {ws} lacks category {cat}: {v}");
    }
    // Sub-folders do not.
    let (_, v) = app.get("/v2/nodes/500101/categories").await;
    assert_eq!(v["results"], json!([]));

    // Created from a template without values: the category, empty.
    let (s, v) = app
        .post_body(
            "/v2/businessworkspaces",
            json!({"template_id": 20002, "wksp_type_id": 101, "name": "Initech (0000200099)"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let id = v["results"]["id"].as_i64().expect("id");
    let (s, v) = app.get(&format!("/v2/nodes/{id}/categories/9008")).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["results"]["data"]["categories"]["9008_2"], json!(null));
    assert_eq!(
        v["results"]["metadata"]["categories"]["9008_3"]["name"],
        json!("Customer Name")
    );

    // Values for the type's category in `roles` fill it in; another
    // category given there is assigned beside it.
    let (s, v) = app
        .post_body(
            "/v2/businessworkspaces",
            json!({"template_id": 20002, "wksp_type_id": 101, "name": "Hooli (0000200098)",
                   "roles": {"categories": {"9008": {"9008_2": "0000200098", "9008_4": "US"},
                                            "9001": {"9001_3": "Package"}}}}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let id = v["results"]["id"].as_i64().expect("id");
    let (_, v) = app.get(&format!("/v2/nodes/{id}/categories")).await;
    let cats: Vec<&Value> = v["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| &r["metadata_order"]["categories"][0])
        .collect();
    assert_eq!(cats, vec![&json!("9001"), &json!("9008")]);
    let (_, v) = app.get(&format!("/v2/nodes/{id}/categories/9008")).await;
    assert_eq!(
        v["results"]["data"]["categories"]["9008_2"],
        json!("0000200098")
    );
    assert_eq!(v["results"]["data"]["categories"]["9008_4"], json!("US"));

    // A bad value for the type's category refuses the whole create.
    let (s, v) = app
        .post_body(
            "/v2/businessworkspaces",
            json!({"template_id": 20002, "wksp_type_id": 101, "name": "Bad (0000200097)",
                   "roles": {"categories": {"9008": {"9008_77": "x"}}}}),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    assert!(v["error"].as_str().unwrap_or("").contains("9008_77"), "{v}");
    let (_, v) = app
        .get("/v2/businessworkspaces?where_name=Bad%20(0000200097)")
        .await;
    assert_eq!(v["results"], json!([]));
}

// ---------- test controls ----------

#[tokio::test]
async fn injected_faults_fail_the_next_matching_requests() {
    let app: App = spawn().await;
    let r = app
        .http
        .post(format!("{}/__emulator/faults", app.emu.base_url()))
        .json(&json!({"status": 503, "count": 2, "path_prefix": "/cs/cs/api/v2/nodes"}))
        .send()
        .await
        .expect("fault");
    assert_eq!(r.status().as_u16(), 200);
    let (s, _) = app.get("/v2/volumes/141").await;
    assert_eq!(s, 200, "other paths unaffected");
    for _ in 0..2 {
        let (s, v) = app.get("/v2/nodes/2000").await;
        assert_eq!(s, 503);
        assert!(!error_of(&v).is_empty());
    }
    let (s, _) = app.get("/v2/nodes/2000").await;
    assert_eq!(s, 200);
    let r = app
        .http
        .get(format!("{}/__emulator/health", app.emu.base_url()))
        .send()
        .await
        .expect("health");
    assert_eq!(r.status().as_u16(), 200);
}

#[tokio::test]
async fn test_controls_can_be_switched_off() {
    let app = spawn_with(EmulatorConfig {
        test_controls: false,
        ..EmulatorConfig::default()
    })
    .await;
    let r = app
        .http
        .get(format!("{}/__emulator/health", app.emu.base_url()))
        .send()
        .await
        .expect("health");
    assert_eq!(r.status().as_u16(), 404);
}

// ---------- persistence ----------

#[tokio::test]
async fn data_dir_keeps_nodes_and_content_across_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = || EmulatorConfig {
        data_dir: Some(dir.path().to_path_buf()),
        ..EmulatorConfig::default()
    };
    let app = spawn_with(config()).await;
    let folder = app.new_folder("Persistent").await;
    let (_, v) = app
        .upload(
            folder,
            "kept.pdf",
            b"kept bytes".to_vec(),
            json!({"roles": {"categories": {"9001_2": "Draft"}}}),
        )
        .await;
    let doc = id_of(&v);
    app.emu.shutdown().await;

    let app = spawn_with(config()).await;
    let (s, v) = app.get(&format!("/v2/nodes/{folder}/nodes")).await;
    assert_eq!(s, 200);
    assert_eq!(v["results"][0]["data"]["properties"]["id"], json!(doc));
    let (_, v) = app.get(&format!("/v2/nodes/{doc}/categories/9001")).await;
    assert_eq!(v["results"]["data"]["categories"]["9001_2"], json!("Draft"));
    let r = app.content(doc).await;
    assert_eq!(&r.bytes().await.expect("bytes")[..], b"kept bytes");
    // New ids continue after the old ones.
    let next = app.new_folder("After restart").await;
    assert!(next > doc);
}

#[tokio::test]
async fn renames_moves_deletes_and_many_changes_survive_a_restart() {
    // More changes than the journal holds before a snapshot (1,024), then
    // changes that stay in the journal: both must come back after a restart.
    let dir = tempfile::tempdir().expect("tempdir");
    let config = || EmulatorConfig {
        data_dir: Some(dir.path().to_path_buf()),
        ..EmulatorConfig::default()
    };
    let app = spawn_with(config()).await;
    let big = app.new_folder("Big").await;
    for i in 0..1100 {
        let (s, v) = app.create_folder(big, &format!("f{i:04}")).await;
        assert_eq!(s, 200, "{v}");
    }
    let a = app.new_folder("A").await;
    let b = app.new_folder("B").await;
    let gone = app.new_folder("Gone").await;
    let (s, v) = app
        .send_body(
            reqwest::Method::PUT,
            &format!("/v2/nodes/{a}"),
            json!({"name": "A renamed", "parent_id": b}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let r = app
        .http
        .delete(app.url(&format!("/v2/nodes/{gone}")))
        .header("OTCSTicket", &app.ticket)
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status().as_u16(), 200);
    app.emu.shutdown().await;

    let app = spawn_with(config()).await;
    let (_, v) = app.get(&format!("/v2/nodes/{big}")).await;
    assert_eq!(v["results"]["data"]["properties"]["size"], json!(1100));
    let (_, v) = app.get(&format!("/v2/nodes/{b}/nodes")).await;
    assert_eq!(
        v["results"][0]["data"]["properties"]["name"],
        json!("A renamed")
    );
    let (s, _) = app.get(&format!("/v2/nodes/{gone}")).await;
    assert_eq!(s, 404);
    // The name index came back too: the old name is free, the new one taken.
    let (s, _) = app.create_folder(big, "f0042").await;
    assert_eq!(s, 500, "f0042 exists after the restart");
    let (s, v) = app.create_folder(2000, "A").await;
    assert_eq!(s, 200, "{v}");
}

#[tokio::test]
async fn a_large_folder_lists_in_name_order_and_refuses_duplicate_names() {
    let app = spawn().await;
    let folder = app.new_folder("Large folder").await;
    // Created in reverse order, mixed case: listings sort by name, ignoring case.
    for i in (0..300).rev() {
        let name = if i % 2 == 0 {
            format!("doc{i:03}")
        } else {
            format!("DOC{i:03}")
        };
        let (s, v) = app.create_folder(folder, &name).await;
        assert_eq!(s, 200, "{v}");
    }
    let (s, v) = app.create_folder(folder, "DOC101").await;
    assert_eq!(s, 500, "duplicate: {v}");
    // Another case is another name, as in Content Server.
    let (s, v) = app.create_folder(folder, "doc101").await;
    assert_eq!(s, 200, "{v}");
    let (_, v) = app
        .get(&format!("/v2/nodes/{folder}/nodes?limit=100&page=2"))
        .await;
    let names: Vec<String> = v["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| {
            r["data"]["properties"]["name"]
                .as_str()
                .unwrap_or("")
                .to_lowercase()
        })
        .collect();
    assert_eq!(names.len(), 100);
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
    assert_eq!(v["collection"]["paging"]["total_count"], json!(301));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_upload_written_behind_comes_back_byte_exact() {
    // 40 MiB + 5 bytes: several 8 MiB ranges are sent to disk and dropped
    // from the cache while the upload is still arriving, the last one is
    // partial.
    let body: Vec<u8> = (0..40 * 1024 * 1024 + 5u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    let dir = tempfile::tempdir().expect("tempdir");
    for config in [
        EmulatorConfig::default(),
        EmulatorConfig {
            data_dir: Some(dir.path().to_path_buf()),
            ..EmulatorConfig::default()
        },
    ] {
        let app = spawn_with(config).await;
        let folder = app.new_folder("Large").await;
        let (s, v) = app
            .upload(folder, "large.bin", body.clone(), json!({}))
            .await;
        assert_eq!(s, 200, "{v}");
        let doc = id_of(&v);
        let r = app.content(doc).await;
        assert_eq!(r.content_length(), Some(body.len() as u64));
        let got = r.bytes().await.expect("bytes");
        assert!(
            got[..] == body[..],
            "content differs from what was uploaded"
        );
        app.emu.shutdown().await;
    }
}

// ---------- HTML view ----------

#[tokio::test]
async fn html_view_shows_workspaces_documents_versions_categories_and_audit() {
    let app = spawn().await;
    let home = app
        .http
        .get(format!("{}/ui", app.emu.base_url()))
        .send()
        .await
        .expect("ui");
    assert_eq!(home.status().as_u16(), 200);
    let home = home.text().await.expect("text");
    assert!(home.contains("Acme Supplies GmbH (0000100001)"));
    assert!(home.contains("SAP / LFA1 / 0000100001"));
    let (_, v) = app
        .upload(
            500101,
            "<script>x</script>.pdf",
            b"html".to_vec(),
            json!({"roles": {"categories": {"9001": {"9001_2": "In Review"}}}}),
        )
        .await;
    let id = id_of(&v);
    let page = app
        .http
        .get(format!("{}/ui/nodes/{id}", app.emu.base_url()))
        .send()
        .await
        .expect("node page")
        .text()
        .await
        .expect("text");
    assert!(
        page.contains("&lt;script&gt;x&lt;/script&gt;.pdf"),
        "name escaped"
    );
    assert!(!page.contains("<script>x"), "no raw markup");
    assert!(page.contains("Document Control") && page.contains("In Review"));
    assert!(page.contains("Versions") && page.contains("Create"));
    assert!(
        page.contains("Acme Supplies GmbH"),
        "breadcrumb reaches the workspace"
    );
    let r = app
        .http
        .get(format!("{}/ui/nodes/424242", app.emu.base_url()))
        .send()
        .await
        .expect("404");
    assert_eq!(r.status().as_u16(), 404);
}
