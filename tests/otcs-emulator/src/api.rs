//! The REST surface: routes under both base paths, ticket checks, request
//! decoding (form `body` JSON, plain forms, multipart) and v1/v2 response
//! shapes. Decisions about the repository live in `model.rs`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde_json::{Map, Value, json};

use crate::content::Stored;
use crate::error::ApiError;
use crate::model::{
    self, Model, Node, RawValues, TYPE_DOCUMENT, TYPE_WORKSPACE, Version, WorkspaceRef,
    audit_event, cs_date,
};
use crate::state::{AppState, Fault};

type St = State<Arc<AppState>>;
type Res = Result<Response, ApiError>;
type Q = Query<HashMap<String, String>>;

/// The authenticated user of a request.
#[derive(Clone, Copy)]
struct User(i64);

/// Largest non-multipart request body we read.
const FORM_LIMIT: usize = 16 * 1024 * 1024;

pub fn router(state: Arc<AppState>) -> Router {
    let open = Router::new()
        .route("/{ver}/ping", get(ping))
        .route("/{ver}/auth", post(auth));
    let protected = Router::new()
        .route("/{ver}/volumes", get(volumes))
        .route("/{ver}/volumes/{vt}", get(volume))
        .route("/{ver}/nodes", post(create_node))
        .route(
            "/{ver}/nodes/{id}",
            get(get_node).put(update_node).delete(delete_node),
        )
        .route("/{ver}/nodes/{id}/nodes", get(children))
        .route(
            "/{ver}/nodes/{id}/versions",
            get(versions).post(add_version),
        )
        .route("/{ver}/nodes/{id}/versions/{n}", get(version_info))
        .route("/{ver}/nodes/{id}/content", get(content_latest))
        .route(
            "/{ver}/nodes/{id}/versions/{n}/content",
            get(content_version),
        )
        .route(
            "/{ver}/nodes/{id}/categories",
            get(categories).post(assign_category),
        )
        .route(
            "/{ver}/nodes/{id}/categories/{cat}",
            get(category).put(update_category).delete(remove_category),
        )
        .route(
            "/{ver}/nodes/{id}/categories/{cat}/inheritance",
            post(inheritance).put(inheritance).delete(inheritance),
        )
        .route(
            "/{ver}/nodes/{id}/rmclassifications",
            get(rm_list).post(rm_assign),
        )
        .route("/{ver}/nodes/{id}/holds", get(node_holds).post(hold_assign))
        .route("/{ver}/nodes/{id}/audit", get(audit))
        .route("/{ver}/holds", get(holds))
        .route("/{ver}/businessworkspacetypes", get(workspace_types))
        .route(
            "/{ver}/businessworkspaces",
            get(workspaces).post(create_workspace),
        )
        .route("/{ver}/businessworkspaces/{id}", get(workspace))
        .route(
            "/{ver}/externalsystems/{ext}/botypes/{bo_type}/boids/{bo_id}",
            get(workspace_by_bo),
        )
        .route("/{ver}/search", post(search))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_ticket,
        ));
    let api = open
        .merge(protected)
        .fallback(|| async { ApiError::not_found("No such REST resource.") });
    let mut app = Router::new()
        .nest("/cs/cs/api", api.clone())
        .nest("/otcs/cs.exe/api", api)
        .merge(crate::html::routes());
    if state.test_controls {
        app = app
            .route("/__emulator/faults", post(add_fault))
            .route("/__emulator/expire-tickets", post(expire_tickets))
            .route("/__emulator/set-password", post(set_password))
            .route(
                "/__emulator/health",
                get(|| async { Json(json!({"status": "ok"})) }),
            )
            .layer(middleware::from_fn_with_state(state.clone(), inject_faults));
    }
    app.layer(DefaultBodyLimit::disable()).with_state(state)
}

// ---------- middleware ----------

fn ticket_of(headers: &HeaderMap) -> Option<String> {
    for name in ["otcsticket", "llcookie"] {
        if let Some(v) = headers.get(name).and_then(|v| v.to_str().ok()) {
            return Some(v.to_string());
        }
    }
    for cookie in headers.get_all(header::COOKIE) {
        let Ok(cookie) = cookie.to_str() else {
            continue;
        };
        for part in cookie.split(';') {
            if let Some((k, v)) = part.split_once('=') {
                let k = k.trim();
                if k.eq_ignore_ascii_case("LLCookie") || k.eq_ignore_ascii_case("otcsticket") {
                    return Some(v.trim().to_string());
                }
            }
        }
    }
    None
}

async fn require_ticket(State(state): St, mut req: Request, next: Next) -> Response {
    let Some(ticket) = ticket_of(req.headers()) else {
        return ApiError::unauthorized("Authentication required: send the OTCSTicket header.")
            .into_response();
    };
    match state.check_ticket(&ticket) {
        Some(user) => {
            req.extensions_mut().insert(User(user));
            next.run(req).await
        }
        None => ApiError::unauthorized("Your session has expired or the ticket is invalid.")
            .into_response(),
    }
}

async fn inject_faults(State(state): St, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    if !path.starts_with("/__emulator/")
        && let Some(fault) = state.take_fault(&path)
    {
        if fault.delay_ms > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(fault.delay_ms)).await;
        }
        if fault.status != 0 {
            let status =
                StatusCode::from_u16(fault.status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            return ApiError::new(status, format!("Injected fault for {path}.")).into_response();
        }
    }
    next.run(req).await
}

async fn add_fault(State(state): St, Json(fault): Json<Fault>) -> Response {
    state.add_fault(fault);
    Json(json!({"ok": true})).into_response()
}

async fn expire_tickets(State(state): St) -> Response {
    state.expire_tickets();
    Json(json!({"ok": true})).into_response()
}

#[derive(serde::Deserialize)]
struct SetPassword {
    username: String,
    password: String,
}

/// A password rotation: the user's password changes and every ticket ends,
/// as when an administrator rotates a service account's credentials.
async fn set_password(State(state): St, Json(body): Json<SetPassword>) -> Response {
    match state.set_password(&body.username, &body.password) {
        Ok(()) => {
            state.expire_tickets();
            Json(json!({"ok": true})).into_response()
        }
        Err(e) => e.into_response(),
    }
}

// ---------- request decoding ----------

fn is_v2(ver: &str) -> Result<bool, ApiError> {
    match ver {
        "v1" => Ok(false),
        "v2" => Ok(true),
        _ => Err(ApiError::not_found(format!("Unknown API version '{ver}'."))),
    }
}

/// Form fields in order (repeated keys kept), or a JSON object body.
struct Form {
    pairs: Vec<(String, String)>,
    json: Option<Value>,
}

impl Form {
    fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The request's parameters as one JSON object: the `body` field's JSON
    /// when present (the usual CS encoding), else a JSON body, else the
    /// plain form fields.
    fn params(&self) -> Result<Value, ApiError> {
        if let Some(body) = self.get("body") {
            return serde_json::from_str(body).map_err(|e| {
                ApiError::bad_request(format!("The 'body' field is not valid JSON: {e}"))
            });
        }
        if let Some(j) = &self.json {
            return Ok(j.clone());
        }
        let mut m = Map::new();
        for (k, v) in &self.pairs {
            m.insert(k.clone(), Value::String(v.clone()));
        }
        Ok(Value::Object(m))
    }

    /// Attribute values grouped by key: repeated form keys and JSON arrays
    /// become multi-values.
    fn values(&self) -> Result<RawValues, ApiError> {
        let mut out: RawValues = Vec::new();
        let mut push = |k: &str, v: Value| {
            if !k.starts_with(|c: char| c.is_ascii_digit()) {
                return;
            }
            match out.iter_mut().find(|(key, _)| key == k) {
                Some((_, vals)) => vals.push(v),
                None => out.push((k.to_string(), vec![v])),
            }
        };
        let from_json = if self.get("body").is_some() || self.json.is_some() {
            Some(self.params()?)
        } else {
            None
        };
        match from_json {
            Some(Value::Object(m)) => {
                for (k, v) in m {
                    match v {
                        Value::Array(a) => a.into_iter().for_each(|x| push(&k, x)),
                        other => push(&k, other),
                    }
                }
            }
            Some(_) => {
                return Err(ApiError::bad_request(
                    "The request body must be a JSON object.",
                ));
            }
            None => {
                for (k, v) in &self.pairs {
                    push(k, Value::String(v.clone()));
                }
            }
        }
        Ok(out)
    }
}

async fn read_form(req: Request) -> Result<Form, ApiError> {
    let is_json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/json"));
    let bytes = axum::body::to_bytes(req.into_body(), FORM_LIMIT)
        .await
        .map_err(|e| ApiError::bad_request(format!("Cannot read the request body: {e}")))?;
    if is_json && !bytes.is_empty() {
        let json: Value = serde_json::from_slice(&bytes).map_err(|e| {
            ApiError::bad_request(format!("The request body is not valid JSON: {e}"))
        })?;
        return Ok(Form {
            pairs: Vec::new(),
            json: Some(json),
        });
    }
    let pairs = url::form_urlencoded::parse(&bytes).into_owned().collect();
    Ok(Form { pairs, json: None })
}

fn is_multipart(req: &Request) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("multipart/form-data"))
}

/// Reads a multipart request: text fields into a form, the `file` part
/// streamed to disk.
async fn read_multipart(
    state: &AppState,
    req: Request,
) -> Result<(Form, Option<Stored>), ApiError> {
    let mut mp = Multipart::from_request(req, &())
        .await
        .map_err(|e| ApiError::bad_request(format!("Invalid multipart request: {e}")))?;
    let mut pairs = Vec::new();
    let mut stored: Option<Stored> = None;
    let result: Result<(), ApiError> = async {
        while let Some(field) = mp
            .next_field()
            .await
            .map_err(|e| ApiError::bad_request(format!("Invalid multipart request: {e}")))?
        {
            let name = field.name().unwrap_or_default().to_string();
            if name == "file" {
                let s = state.content.store_field(field).await?;
                if let Some(old) = stored.replace(s) {
                    state.content.remove(&old.name);
                }
            } else {
                let text = field.text().await.map_err(|e| {
                    ApiError::bad_request(format!("Invalid multipart field '{name}': {e}"))
                })?;
                pairs.push((name, text));
            }
        }
        Ok(())
    }
    .await;
    if let Err(e) = result {
        if let Some(s) = stored {
            state.content.remove(&s.name);
        }
        return Err(e);
    }
    Ok((Form { pairs, json: None }, stored))
}

fn int(v: Option<&Value>) -> Option<i64> {
    match v? {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn required_int(p: &Value, key: &str) -> Result<i64, ApiError> {
    int(p.get(key)).ok_or_else(|| {
        ApiError::bad_request(format!("The parameter '{key}' is missing or not a number."))
    })
}

fn qint(q: &HashMap<String, String>, key: &str) -> Option<i64> {
    q.get(key).and_then(|v| v.trim().parse().ok())
}

// ---------- response shaping ----------

struct Page {
    start: usize,
    end: usize,
    paging: Value,
}

/// CS paging: `limit` per page, `page` from 1. No limit means everything.
fn page(total: usize, q: &HashMap<String, String>) -> Page {
    let limit = qint(q, "limit")
        .filter(|l| *l > 0)
        .map(|l| l as usize)
        .unwrap_or(total.max(1));
    let page = qint(q, "page")
        .filter(|p| *p > 0)
        .map(|p| p as usize)
        .unwrap_or(1);
    let start = ((page - 1).saturating_mul(limit)).min(total);
    let end = (start + limit).min(total);
    let page_total = total.div_ceil(limit).max(1);
    Page {
        start,
        end,
        paging: json!({
            "limit": limit,
            "page": page,
            "page_total": page_total,
            "range_min": if end > start { start + 1 } else { 0 },
            "range_max": end,
            "total_count": total,
            "actual_count": end - start,
        }),
    }
}

fn ok(v: Value) -> Res {
    Ok(Json(v).into_response())
}

fn node_result(m: &Model, n: &Node, v2: bool) -> Value {
    let p = m.properties(n);
    if v2 {
        json!({"results": {"data": {"properties": p}}})
    } else {
        json!({"data": p})
    }
}

fn version_json(node: &Node, v: &Version) -> Value {
    json!({
        "id": node.id,
        "version_id": node.id * 1000 + v.number,
        "version_number": v.number,
        "version_number_name": v.number.to_string(),
        "file_name": v.file_name,
        "file_size": v.file_size,
        "mime_type": v.mime_type,
        "description": v.description,
        "create_date": cs_date(&v.create_date),
        "owner_id": v.create_user_id,
    })
}

fn business_properties(m: &Model, n: &Node) -> Value {
    let Some(w) = &n.workspace else {
        return json!({});
    };
    let type_name = m
        .seed
        .workspace_types
        .iter()
        .find(|t| t.id == w.type_id)
        .map(|t| t.name.clone())
        .unwrap_or_default();
    json!({
        "workspace_type_id": w.type_id,
        "workspace_type_name": type_name,
        "template_id": w.template_id,
        "external_system_id": w.ext_system_id,
        "external_system_name": w.ext_system_id,
        "business_object_type": w.bo_type,
        "business_object_id": w.bo_id,
    })
}

fn workspace_item(m: &Model, n: &Node) -> Value {
    json!({"data": {"properties": m.properties(n), "business_properties": business_properties(m, n)}})
}

// ---------- handlers: session ----------

async fn ping(Path(ver): Path<String>) -> Res {
    is_v2(&ver)?;
    ok(json!({
        "rest_api": [
            {"build": 1, "href": "api/v1", "version": 1},
            {"build": 1, "href": "api/v2", "version": 2}
        ],
        "service": "otcs-emulator"
    }))
}

async fn auth(State(state): St, Path(ver): Path<String>, req: Request) -> Res {
    is_v2(&ver)?;
    let form = read_form(req).await?;
    let p = form.params()?;
    let user = text(p.get("username")).unwrap_or_default();
    let password = text(p.get("password")).unwrap_or_default();
    let ticket = state
        .login(&user, &password)
        .ok_or_else(|| ApiError::unauthorized("Invalid username or password."))?;
    let mut resp = Json(json!({"ticket": ticket})).into_response();
    if let Ok(v) = HeaderValue::from_str(&ticket) {
        resp.headers_mut().insert("OTCSTicket", v);
    }
    Ok(resp)
}

// ---------- handlers: volumes and nodes ----------

async fn volumes(State(state): St, Path(ver): Path<String>) -> Res {
    let v2 = is_v2(&ver)?;
    let items: Vec<Value> = state.read(|m| {
        m.nodes
            .values()
            .filter(|n| n.volume_type.is_some())
            .map(|n| {
                let p = m.properties(n);
                if v2 {
                    json!({"data": {"properties": p}})
                } else {
                    p
                }
            })
            .collect()
    });
    ok(if v2 {
        json!({"results": items})
    } else {
        json!({"data": items})
    })
}

async fn volume(State(state): St, Path((ver, vt)): Path<(String, i64)>) -> Res {
    let v2 = is_v2(&ver)?;
    ok(state.read(|m| m.volume_node(vt).map(|n| node_result(m, n, v2)))?)
}

async fn get_node(State(state): St, Path((ver, id)): Path<(String, i64)>) -> Res {
    let v2 = is_v2(&ver)?;
    ok(state.read(|m| m.node(id).map(|n| node_result(m, n, v2)))?)
}

async fn create_node(
    State(state): St,
    Path(ver): Path<String>,
    Extension(User(user)): Extension<User>,
    req: Request,
) -> Res {
    let v2 = is_v2(&ver)?;
    let (form, file) = if is_multipart(&req) {
        read_multipart(&state, req).await?
    } else {
        (read_form(req).await?, None)
    };
    let result = create_node_inner(&state, &form, file.as_ref(), user);
    if result.is_err()
        && let Some(f) = &file
    {
        state.content.remove(&f.name);
    }
    let id = result?;
    if v2 {
        ok(state.read(|m| m.node(id).map(|n| node_result(m, n, true)))?)
    } else {
        ok(json!({"id": id}))
    }
}

fn create_node_inner(
    state: &AppState,
    form: &Form,
    file: Option<&Stored>,
    user: i64,
) -> Result<i64, ApiError> {
    let p = form.params()?;
    let node_type = required_int(&p, "type")?;
    let parent_id = required_int(&p, "parent_id")?;
    let name = text(p.get("name"))
        .ok_or_else(|| ApiError::bad_request("The parameter 'name' is missing."))?;
    let description = text(p.get("description")).unwrap_or_default();
    match (node_type, file) {
        (TYPE_DOCUMENT, None) => {
            return Err(ApiError::bad_request(
                "A document upload needs a multipart part named 'file'.",
            ));
        }
        (TYPE_DOCUMENT, Some(_)) | (model::TYPE_FOLDER, None) => {}
        (model::TYPE_FOLDER, Some(_)) => {
            return Err(ApiError::bad_request("A folder takes no 'file' part."));
        }
        (TYPE_WORKSPACE, _) => {
            return Err(ApiError::bad_request(
                "Business workspaces are created with POST /api/v2/businessworkspaces.",
            ));
        }
        (t, _) => {
            return Err(ApiError::bad_request(format!(
                "Creating nodes of type {t} is not supported."
            )));
        }
    }
    let cats = model::group_role_categories(p.get("roles").unwrap_or(&Value::Null))?;
    let (id, approvals) = state.mutate(|m| {
        // Check everything first so a refused request leaves nothing behind.
        m.check_create(parent_id, &name)?;
        m.check_categories(&cats)?;
        let id = m.create_node(parent_id, node_type, &name, &description, user)?;
        if let Some(f) = file {
            m.add_version(id, new_version(f, &description, user), user)?;
        }
        let mut approvals = Vec::new();
        for (cat, vals) in &cats {
            approvals.push(m.set_category(id, *cat, vals, true, user)?);
        }
        Ok((id, approvals))
    })?;
    for a in approvals {
        state.notify(a);
    }
    Ok(id)
}

fn new_version(f: &Stored, description: &str, user: i64) -> Version {
    Version {
        number: 0,
        file_name: f.file_name.clone(),
        file_size: f.size,
        mime_type: f.mime_type.clone(),
        description: description.to_string(),
        create_date: chrono::Utc::now(),
        create_user_id: user,
        content: f.name.clone(),
    }
}

async fn update_node(
    State(state): St,
    Path((ver, id)): Path<(String, i64)>,
    Extension(User(user)): Extension<User>,
    req: Request,
) -> Res {
    let v2 = is_v2(&ver)?;
    let p = read_form(req).await?.params()?;
    let name = text(p.get("name"));
    let description = text(p.get("description"));
    let parent = int(p.get("parent_id"));
    state.mutate(|m| m.update_node(id, name.as_deref(), description.as_deref(), parent, user))?;
    ok(state.read(|m| m.node(id).map(|n| node_result(m, n, v2)))?)
}

async fn delete_node(State(state): St, Path((ver, id)): Path<(String, i64)>) -> Res {
    is_v2(&ver)?;
    let files = state.mutate(|m| m.delete_node(id))?;
    for f in files {
        state.content.remove(&f);
    }
    ok(json!({"results": {}}))
}

/// `where_type`: -1 containers, -2 everything, -3 non-containers, else exact.
fn type_matches(n: &Node, where_type: Option<i64>) -> bool {
    match where_type {
        None | Some(-2) => true,
        Some(-1) => n.is_container(),
        Some(-3) => !n.is_container(),
        Some(t) => n.node_type == t,
    }
}

/// Whether `hay` contains `needle_lower` (already lowercase), ignoring case;
/// without allocating for ASCII names, the common case in large folders.
fn contains_ci(hay: &str, needle_lower: &str) -> bool {
    if hay.is_ascii() && needle_lower.is_ascii() {
        let (h, n) = (hay.as_bytes(), needle_lower.as_bytes());
        n.is_empty() || h.windows(n.len()).any(|w| w.eq_ignore_ascii_case(n))
    } else {
        hay.to_lowercase().contains(needle_lower)
    }
}

async fn children(State(state): St, Path((ver, id)): Path<(String, i64)>, Query(q): Q) -> Res {
    let v2 = is_v2(&ver)?;
    let name = q.get("where_name").map(|s| s.to_lowercase());
    let where_type = qint(&q, "where_type");
    let limit_default = {
        let mut q = q.clone();
        q.entry("limit".into()).or_insert_with(|| "100".into());
        q
    };
    state.read(|m| {
        let parent = m.node(id)?;
        if !parent.is_container() {
            return Err(ApiError::bad_request(format!(
                "Node {id} is not a container."
            )));
        }
        let items: Vec<&Node> = m.children_where(id, |n| {
            type_matches(n, where_type) && name.as_ref().is_none_or(|w| contains_ci(&n.name, w))
        });
        let pg = page(items.len(), &limit_default);
        let slice = &items[pg.start..pg.end];
        if v2 {
            let results: Vec<Value> = slice
                .iter()
                .map(|n| json!({"data": {"properties": m.properties(n)}}))
                .collect();
            ok(json!({"results": results, "collection": {"paging": pg.paging}}))
        } else {
            let data: Vec<Value> = slice.iter().map(|n| m.properties(n)).collect();
            ok(json!({"data": data, "paging": pg.paging, "total_count": items.len()}))
        }
    })
}

// ---------- handlers: versions and content ----------

fn document(m: &Model, id: i64) -> Result<&Node, ApiError> {
    let n = m.node(id)?;
    if n.node_type != TYPE_DOCUMENT {
        return Err(ApiError::bad_request(format!(
            "Node {id} is not a document."
        )));
    }
    Ok(n)
}

async fn versions(State(state): St, Path((ver, id)): Path<(String, i64)>) -> Res {
    let v2 = is_v2(&ver)?;
    state.read(|m| {
        let n = document(m, id)?;
        if v2 {
            let r: Vec<Value> = n
                .versions
                .iter()
                .map(|v| json!({"data": {"versions": version_json(n, v)}}))
                .collect();
            ok(json!({"results": r}))
        } else {
            let r: Vec<Value> = n.versions.iter().map(|v| version_json(n, v)).collect();
            ok(json!({"data": r}))
        }
    })
}

fn find_version<'a>(n: &'a Node, which: &str) -> Result<&'a Version, ApiError> {
    let v = if which == "latest" {
        n.latest_version()
    } else {
        which
            .parse::<i64>()
            .ok()
            .and_then(|num| n.versions.iter().find(|v| v.number == num))
    };
    v.ok_or_else(|| {
        ApiError::not_found(format!(
            "Version '{which}' of node {} does not exist.",
            n.id
        ))
    })
}

async fn version_info(
    State(state): St,
    Path((ver, id, which)): Path<(String, i64, String)>,
) -> Res {
    let v2 = is_v2(&ver)?;
    state.read(|m| {
        let n = document(m, id)?;
        let v = version_json(n, find_version(n, &which)?);
        ok(versioned(v2, "versions", v))
    })
}

/// A v2 single result `{"results":{"data":{key: value}}}`, or v1 `{"data": value}`.
fn versioned(v2: bool, key: &str, value: impl Into<Value>) -> Value {
    let value = value.into();
    if v2 {
        json!({"results": {"data": {key: value}}})
    } else {
        json!({"data": value})
    }
}

async fn add_version(
    State(state): St,
    Path((ver, id)): Path<(String, i64)>,
    Extension(User(user)): Extension<User>,
    req: Request,
) -> Res {
    let v2 = is_v2(&ver)?;
    if !is_multipart(&req) {
        return Err(ApiError::bad_request(
            "A new version needs a multipart request with a part named 'file'.",
        ));
    }
    let (form, file) = read_multipart(&state, req).await?;
    let Some(file) = file else {
        return Err(ApiError::bad_request(
            "A new version needs a multipart part named 'file'.",
        ));
    };
    let description = form
        .get("description")
        .map(str::to_string)
        .or_else(|| form.params().ok().and_then(|p| text(p.get("description"))))
        .unwrap_or_default();
    let result = state.mutate(|m| {
        document(m, id)?;
        m.add_version(id, new_version(&file, &description, user), user)
    });
    let number = match result {
        Ok(n) => n,
        Err(e) => {
            state.content.remove(&file.name);
            return Err(e);
        }
    };
    state.read(|m| {
        let n = m.node(id)?;
        let v = version_json(n, find_version(n, &number.to_string())?);
        ok(versioned(v2, "versions", v))
    })
}

async fn content_latest(
    State(state): St,
    Path((ver, id)): Path<(String, i64)>,
    Extension(User(user)): Extension<User>,
) -> Res {
    is_v2(&ver)?;
    stream_content(&state, id, "latest", user).await
}

async fn content_version(
    State(state): St,
    Path((ver, id, which)): Path<(String, i64, String)>,
    Extension(User(user)): Extension<User>,
) -> Res {
    is_v2(&ver)?;
    stream_content(&state, id, &which, user).await
}

/// Streams a version's bytes from disk with its exact length.
async fn stream_content(state: &AppState, id: i64, which: &str, user: i64) -> Res {
    let v = state.mutate(|m| {
        let v = find_version(document(m, id)?, which)?.clone();
        m.audit(id, audit_event::FETCH, user);
        Ok(v)
    })?;
    let file = std::fs::File::open(state.content.path(&v.content)).map_err(|e| {
        ApiError::internal(format!(
            "Content of node {id} version {} is missing: {e}",
            v.number
        ))
    })?;
    let stream = crate::content::read_ahead(file);
    let disposition = format!(
        "attachment; filename=\"{}\"",
        v.file_name.replace(['"', '\\', '\r', '\n'], "_")
    );
    let mut resp = Response::new(Body::from_stream(stream));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(v.file_size));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(&v.mime_type)
            .unwrap_or(HeaderValue::from_static("application/octet-stream")),
    );
    if let Ok(d) = HeaderValue::from_str(&disposition) {
        h.insert(header::CONTENT_DISPOSITION, d);
    }
    Ok(resp)
}

// ---------- handlers: categories ----------

fn category_metadata(m: &Model, cat: i64) -> Result<(Value, Vec<String>), ApiError> {
    let def = m.category_def(cat)?;
    let mut meta = Map::new();
    meta.insert(
        cat.to_string(),
        json!({"key": cat.to_string(), "name": def.name, "persona": "category", "type": -18, "type_name": "Category"}),
    );
    // pyxecm reads category ids (not attribute keys) from metadata_order.
    let order = vec![cat.to_string()];
    let mut put = |key: String, a: &crate::seed::AttributeDef| {
        let (t, tn) = match a.kind {
            crate::seed::AttrType::Text => (-1, "String"),
            crate::seed::AttrType::Integer => (2, "Integer"),
            crate::seed::AttrType::Date => (-7, "Date"),
            crate::seed::AttrType::Boolean => (5, "Boolean"),
            crate::seed::AttrType::Set => (-18, "Set"),
        };
        // pyxecm's get_node_category_definition reads every attribute's persona.
        let persona = if a.kind == crate::seed::AttrType::Set {
            "set"
        } else {
            "categoryattribute"
        };
        meta.insert(
            key.clone(),
            json!({
                "key": key, "name": a.name, "type": t, "type_name": tn, "persona": persona,
                "multi_value": a.max_values > 1, "multi_value_length_max": a.max_values,
                "required": a.required, "valid_values": a.valid_values,
            }),
        );
    };
    for a in &def.attributes {
        put(format!("{cat}_{}", a.id), a);
        for s in &a.attributes {
            put(format!("{cat}_{}_1_{}", a.id, s.id), s);
        }
    }
    Ok((Value::Object(meta), order))
}

fn category_item(m: &Model, n: &Node, cat: i64) -> Result<Value, ApiError> {
    let values = n.categories.get(&cat).ok_or_else(|| {
        ApiError::not_found(format!("Category {cat} is not assigned to node {}.", n.id))
    })?;
    let (meta, order) = category_metadata(m, cat)?;
    Ok(json!({
        "data": {"categories": values},
        "metadata": {"categories": meta},
        "metadata_order": {"categories": order},
    }))
}

async fn categories(State(state): St, Path((ver, id)): Path<(String, i64)>) -> Res {
    is_v2(&ver)?;
    state.read(|m| {
        let n = m.node(id)?;
        let items = n
            .categories
            .keys()
            .map(|c| category_item(m, n, *c))
            .collect::<Result<Vec<_>, _>>()?;
        ok(json!({"results": items}))
    })
}

async fn category(State(state): St, Path((ver, id, cat)): Path<(String, i64, i64)>) -> Res {
    is_v2(&ver)?;
    state.read(|m| {
        let n = m.node(id)?;
        ok(json!({"results": category_item(m, n, cat)?}))
    })
}

async fn assign_category(
    State(state): St,
    Path((ver, id)): Path<(String, i64)>,
    Extension(User(user)): Extension<User>,
    req: Request,
) -> Res {
    is_v2(&ver)?;
    let form = read_form(req).await?;
    let p = form.params()?;
    let cat = required_int(&p, "category_id")?;
    let values = form.values()?;
    let approval = state.mutate(|m| {
        m.category_def(cat)?;
        if m.node(id)?.categories.contains_key(&cat) {
            return Err(ApiError::bad_request(format!(
                "Category {cat} is already assigned to node {id}."
            )));
        }
        m.set_category(id, cat, &values, true, user)
    })?;
    state.notify(approval);
    state.read(|m| ok(json!({"results": category_item(m, m.node(id)?, cat)?})))
}

async fn update_category(
    State(state): St,
    Path((ver, id, cat)): Path<(String, i64, i64)>,
    Extension(User(user)): Extension<User>,
    req: Request,
) -> Res {
    is_v2(&ver)?;
    let values = read_form(req).await?.values()?;
    let approval = state.mutate(|m| m.set_category(id, cat, &values, false, user))?;
    state.notify(approval);
    state.read(|m| ok(json!({"results": category_item(m, m.node(id)?, cat)?})))
}

async fn remove_category(
    State(state): St,
    Path((ver, id, cat)): Path<(String, i64, i64)>,
    Extension(User(user)): Extension<User>,
) -> Res {
    is_v2(&ver)?;
    state.mutate(|m| m.remove_category(id, cat, user))?;
    ok(json!({"results": {}}))
}

/// Category inheritance only matters for items created later below the
/// node; the emulator accepts the switch and keeps nothing.
async fn inheritance(State(state): St, Path((ver, id, cat)): Path<(String, i64, i64)>) -> Res {
    is_v2(&ver)?;
    state.read(|m| {
        m.node(id)?;
        m.category_def(cat)?;
        ok(json!({"results": {"ok": true}}))
    })
}

// ---------- handlers: records management ----------

fn rm_list_json(m: &Model, n: &Node, v2: bool) -> Value {
    let data: Vec<Value> = n
        .rm_classifications
        .iter()
        .map(|c| {
            let name = m
                .seed
                .rm_classifications
                .iter()
                .find(|d| d.id == *c)
                .map(|d| d.name.clone());
            json!({"rmclassification_id": c, "class_id": c, "name": name})
        })
        .collect();
    if v2 {
        json!({"results": {"data": data}})
    } else {
        json!({"data": data})
    }
}

async fn rm_list(State(state): St, Path((ver, id)): Path<(String, i64)>) -> Res {
    let v2 = is_v2(&ver)?;
    ok(state.read(|m| m.node(id).map(|n| rm_list_json(m, n, v2)))?)
}

async fn rm_assign(
    State(state): St,
    Path((ver, id)): Path<(String, i64)>,
    Extension(User(user)): Extension<User>,
    req: Request,
) -> Res {
    let v2 = is_v2(&ver)?;
    let p = read_form(req).await?.params()?;
    let class_id = required_int(&p, "class_id")?;
    state.mutate(|m| m.classify(id, class_id, user))?;
    let mut body = state.read(|m| m.node(id).map(|n| rm_list_json(m, n, v2)))?;
    body["ok"] = json!(true);
    ok(body)
}

fn holds_of(m: &Model, n: &Node) -> Vec<Value> {
    n.holds
        .iter()
        .map(|h| {
            let name = m
                .seed
                .holds
                .iter()
                .find(|d| d.id == *h)
                .map(|d| d.name.clone());
            json!({"HoldID": h, "HoldName": name, "hold_id": h})
        })
        .collect()
}

async fn node_holds(State(state): St, Path((ver, id)): Path<(String, i64)>) -> Res {
    let v2 = is_v2(&ver)?;
    state.read(|m| {
        let h = holds_of(m, m.node(id)?);
        ok(versioned(v2, "holds", h))
    })
}

async fn hold_assign(
    State(state): St,
    Path((ver, id)): Path<(String, i64)>,
    Extension(User(user)): Extension<User>,
    req: Request,
) -> Res {
    let v2 = is_v2(&ver)?;
    let p = read_form(req).await?.params()?;
    let hold_id = required_int(&p, "hold_id")?;
    state.mutate(|m| m.apply_hold(id, hold_id, user))?;
    state.read(|m| {
        let h = holds_of(m, m.node(id)?);
        ok(if v2 {
            json!({"results": {"data": {"holds": h}}})
        } else {
            json!({"data": h, "ok": true})
        })
    })
}

async fn holds(State(state): St, Path(ver): Path<String>) -> Res {
    let v2 = is_v2(&ver)?;
    let h: Vec<Value> = state.read(|m| {
        m.seed
            .holds
            .iter()
            .map(|h| json!({"HoldID": h.id, "HoldName": h.name}))
            .collect()
    });
    ok(versioned(v2, "holds", h))
}

// ---------- handlers: audit and search ----------

async fn audit(State(state): St, Path((ver, id)): Path<(String, i64)>, Query(q): Q) -> Res {
    is_v2(&ver)?;
    state.read(|m| {
        m.node(id)?;
        let mut events: Vec<&model::AuditEvent> =
            m.audit.iter().filter(|e| e.node_id == id).collect();
        if q.get("sort").map(String::as_str) != Some("asc_audit_date") {
            events.reverse();
        }
        let pg = page(events.len(), &q);
        let items: Vec<Value> = events[pg.start..pg.end]
            .iter()
            .map(|e| {
                json!({
                    "id": e.node_id,
                    "audit_id": e.id,
                    "event_type": e.event_type,
                    "audit_name": e.audit_name,
                    "audit_date": e.audit_date.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    "user_id": e.user_id,
                    "agent_id": null,
                    "audit_language_code": null,
                    "target_user_id": null,
                })
            })
            .collect();
        let types: Vec<Value> = [
            audit_event::CREATE,
            audit_event::ADD_VERSION,
            audit_event::FETCH,
            audit_event::CATEGORY_CHANGE,
            audit_event::CATEGORY_ADDED,
            audit_event::CLASSIFY,
            audit_event::HOLD,
            audit_event::RENAME,
            audit_event::MOVE,
        ]
        .iter()
        .map(|(id, name)| json!({"id": id, "name": name}))
        .collect();
        ok(json!({
            "results": {"data": {"audit": items, "audit_event_types": types}},
            "collection": {"paging": pg.paging},
        }))
    })
}

/// The name term of a search: `OTName: x`, quoted phrases and wildcards are
/// reduced to a case-insensitive substring.
fn search_term(where_: &str) -> String {
    let mut t = where_.trim();
    for prefix in ["OTName:", "OTName :", "otname:"] {
        if let Some(rest) = t.strip_prefix(prefix) {
            t = rest.trim();
        }
    }
    t.trim_matches(|c| c == '"' || c == '*' || c == '\'')
        .to_lowercase()
}

async fn search(State(state): St, Path(ver): Path<String>, req: Request) -> Res {
    is_v2(&ver)?;
    let p = read_form(req).await?.params()?;
    let term = search_term(&text(p.get("where")).unwrap_or_default());
    let mut q = HashMap::new();
    for key in ["limit", "page"] {
        if let Some(v) = int(p.get(key)) {
            q.insert(key.to_string(), v.to_string());
        }
    }
    q.entry("limit".into()).or_insert_with(|| "10".into());
    state.read(|m| {
        let hits: Vec<&Node> = m
            .nodes
            .values()
            .filter(|n| n.volume_type.is_none() && n.node_type != 131)
            .filter(|n| !term.is_empty() && n.name.to_lowercase().contains(&term))
            .collect();
        let pg = page(hits.len(), &q);
        let results: Vec<Value> = hits[pg.start..pg.end]
            .iter()
            .map(|n| json!({"data": {"properties": m.properties(n)}}))
            .collect();
        ok(json!({"results": results, "collection": {"paging": pg.paging}}))
    })
}

// ---------- handlers: business workspaces ----------

async fn workspace_types(State(state): St, Path(ver): Path<String>) -> Res {
    is_v2(&ver)?;
    let items: Vec<Value> = state.read(|m| {
        m.seed
            .workspace_types
            .iter()
            .map(|t| {
                let templates: Vec<Value> = t
                    .templates
                    .iter()
                    .map(|x| json!({"id": x.id, "name": x.name, "subtype": TYPE_WORKSPACE}))
                    .collect();
                json!({"data": {
                    "properties": {"wksp_type_id": t.id, "wksp_type_name": t.name, "templates": templates, "location_id": t.location_id},
                    "templates": templates,
                    "wksp_info": {"wksp_type_icon": ""},
                }})
            })
            .collect()
    });
    ok(json!({"results": items}))
}

async fn workspaces(State(state): St, Path(ver): Path<String>, Query(q): Q) -> Res {
    is_v2(&ver)?;
    let type_id = qint(&q, "where_workspace_type_id");
    let type_name = q.get("where_workspace_type_name").cloned();
    let name = q.get("where_name").map(|s| s.to_lowercase());
    state.read(|m| {
        let type_ids: Option<Vec<i64>> = type_name.as_ref().map(|tn| {
            m.seed
                .workspace_types
                .iter()
                .filter(|t| &t.name == tn)
                .map(|t| t.id)
                .collect()
        });
        let mut hits: Vec<&Node> = m
            .nodes
            .values()
            .filter(|n| {
                let Some(w) = &n.workspace else { return false };
                type_id.is_none_or(|t| w.type_id == t)
                    && type_ids.as_ref().is_none_or(|ids| ids.contains(&w.type_id))
                    && name
                        .as_ref()
                        .is_none_or(|s| n.name.to_lowercase().contains(s))
            })
            .collect();
        hits.sort_by_key(|n| n.name.to_lowercase());
        let pg = page(hits.len(), &q);
        let results: Vec<Value> = hits[pg.start..pg.end]
            .iter()
            .map(|n| workspace_item(m, n))
            .collect();
        ok(json!({"results": results, "paging": pg.paging, "collection": {"paging": pg.paging}}))
    })
}

fn workspace_node(m: &Model, id: i64) -> Result<&Node, ApiError> {
    let n = m.node(id)?;
    if n.workspace.is_none() {
        return Err(ApiError::not_found(format!(
            "Node {id} is not a business workspace."
        )));
    }
    Ok(n)
}

fn one_result(item: Value) -> Value {
    json!({
        "results": [item],
        "paging": {"limit": 1, "page": 1, "page_total": 1, "range_min": 1, "range_max": 1, "total_count": 1},
    })
}

async fn workspace(State(state): St, Path((ver, id)): Path<(String, i64)>) -> Res {
    is_v2(&ver)?;
    state.read(|m| ok(one_result(workspace_item(m, workspace_node(m, id)?))))
}

async fn workspace_by_bo(
    State(state): St,
    Path((ver, ext, bo_type, bo_id)): Path<(String, String, String, String)>,
) -> Res {
    is_v2(&ver)?;
    state.read(|m| {
        let n = m.find_workspace_by_bo(&ext, &bo_type, &bo_id).ok_or_else(|| {
            ApiError::not_found(format!(
                "No business workspace for external system '{ext}', type '{bo_type}', id '{bo_id}'."
            ))
        })?;
        ok(one_result(workspace_item(m, n)))
    })
}

async fn create_workspace(
    State(state): St,
    Path(ver): Path<String>,
    Extension(User(user)): Extension<User>,
    req: Request,
) -> Res {
    is_v2(&ver)?;
    let p = read_form(req).await?.params()?;
    let template_id = required_int(&p, "template_id")?;
    let type_id = required_int(&p, "wksp_type_id")?;
    let name = text(p.get("name"))
        .ok_or_else(|| ApiError::bad_request("The parameter 'name' is missing."))?;
    let description = text(p.get("description")).unwrap_or_default();
    let parent = int(p.get("parent_id"));
    let bo = WorkspaceRef {
        type_id,
        template_id,
        ext_system_id: text(p.get("ext_system_id")),
        bo_type: text(p.get("bo_type")),
        bo_id: text(p.get("bo_id")),
    };
    let cats = model::group_role_categories(p.get("roles").unwrap_or(&Value::Null))?;
    let id = state.mutate(|m| {
        let wt = m
            .seed
            .workspace_types
            .iter()
            .find(|t| t.id == type_id)
            .ok_or_else(|| {
                ApiError::bad_request(format!("Workspace type {type_id} does not exist."))
            })?;
        if !wt.templates.iter().any(|t| t.id == template_id) {
            return Err(ApiError::bad_request(format!(
                "Template {template_id} is not a template of workspace type {type_id}."
            )));
        }
        let parent = parent.unwrap_or(wt.location_id);
        let type_category = wt.category_id;
        if let (Some(e), Some(t), Some(b)) = (&bo.ext_system_id, &bo.bo_type, &bo.bo_id)
            && let Some(existing) = m.find_workspace_by_bo(e, t, b)
        {
            return Err(ApiError::internal(format!(
                "A business workspace for {e}/{t}/{b} already exists (node {}).",
                existing.id
            )));
        }
        m.check_create(parent, &name)?;
        m.check_categories(&cats)?;
        let id = m.create_node(parent, TYPE_WORKSPACE, &name, &description, user)?;
        m.set_workspace(id, bo.clone())?;
        // The template's category comes with the workspace; values given
        // for it in `roles` fill it in.
        let type_values = type_category
            .and_then(|c| cats.get(&c))
            .cloned()
            .unwrap_or_default();
        m.assign_type_category(id, type_id, &type_values, user)?;
        for (cat, vals) in &cats {
            if Some(*cat) != type_category {
                m.set_category(id, *cat, vals, true, user)?;
            }
        }
        Ok(id)
    })?;
    state.read(|m| {
        let n = m.node(id)?;
        ok(json!({"results": {"id": id, "data": {"properties": m.properties(n)}}}))
    })
}
