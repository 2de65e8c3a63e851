//! The Content Server adapter of the [`Ecm`] port over reqwest, speaking the
//! REST API of otcs-api.md: ticket auth with one re-auth on 401, bounded
//! retries with backoff on 429/502/503/504 and connection failures, explicit
//! timeouts, streamed uploads hashed on the way and streamed downloads.
//!
//! Failure kinds: any 5xx (a server in trouble) and refused credentials are
//! retryable ([`EcmError::is_retryable`]), because neither says anything
//! about the document at hand; when the server refuses our credentials, the
//! client re-reads the ECM secret once (a rotation) before giving up.

pub mod wire;

use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use reqwest::multipart::{Form, Part};
use reqwest::{Body, RequestBuilder, Response, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;
use url::Url;

use super::backoff::Backoff;
use crate::ports::ecm::*;
use crate::ports::secrets::{SecretFields, Secrets, SecretsError};

/// Where the Content Server is and who we are there (the ECM secret).
#[derive(Debug, Clone)]
pub struct EcmSettings {
    /// `scheme://host[:port]`, no path.
    pub base_url: String,
    /// `/cs/cs` (Linux) or `/otcs/cs.exe` (Windows).
    pub base_path: String,
    pub username: String,
    pub password: SecretString,
}

impl EcmSettings {
    /// Parses the ECM secret of the shared contract:
    /// `{"base_url","base_path"?,"username","password"}`.
    pub fn from_secret_json(secret_id: &str, json: &str) -> Result<Self, SecretsError> {
        let f = SecretFields::parse(secret_id, json)?;
        let raw_url = f.str("base_url")?;
        let invalid = |field: &str, reason: String| SecretsError::InvalidField {
            secret_id: secret_id.into(),
            field: field.into(),
            reason,
        };
        let url = Url::parse(&raw_url).map_err(|e| invalid("base_url", e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(invalid("base_url", "expected http(s)://host[:port]".into()));
        }
        let base_path = f.opt_str("base_path")?.unwrap_or_else(|| "/cs/cs".into());
        if !base_path.starts_with('/') || base_path.contains(['?', '#']) {
            return Err(invalid("base_path", "expected a path like /cs/cs".into()));
        }
        Ok(Self {
            base_url: raw_url.trim_end_matches('/').to_string(),
            base_path: base_path.trim_end_matches('/').to_string(),
            username: f.str("username")?,
            password: f.secret("password")?,
        })
    }
}

/// Timeouts and retry policy of the client.
#[derive(Debug, Clone)]
pub struct OtcsOptions {
    pub connect_timeout: Duration,
    /// Whole-request limit of metadata calls.
    pub request_timeout: Duration,
    /// Whole-request limit of uploads and downloads (they can be large).
    pub transfer_timeout: Duration,
    /// Longest silence while reading a response; catches stalled transfers.
    pub read_timeout: Duration,
    pub backoff: Backoff,
    /// Page size of the listings the client walks itself.
    pub page_size: u32,
}

impl Default for OtcsOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            // Lambda's own limit is 15 minutes.
            transfer_timeout: Duration::from_secs(14 * 60),
            read_timeout: Duration::from_secs(60),
            backoff: Backoff::default(),
            page_size: 100,
        }
    }
}

#[derive(Default)]
struct TicketState {
    ticket: Option<SecretString>,
    /// Bumped on every login, so that of many calls failing with 401 on the
    /// same ticket only the first logs in again.
    generation: u64,
}

/// Where the ECM secret can be read again when its credentials are refused.
struct CredentialRefresh {
    secrets: Arc<dyn Secrets>,
    secret_id: String,
}

/// The user and password currently logged in with (replaced by a rotation).
struct Credentials {
    username: String,
    password: SecretString,
}

/// The reqwest client of Content Server.
pub struct OtcsClient {
    http: reqwest::Client,
    /// Base URL and path; the credentials in it are those of construction,
    /// `credentials` holds the ones in use.
    settings: EcmSettings,
    credentials: StdMutex<Credentials>,
    refresh: Option<CredentialRefresh>,
    opts: OtcsOptions,
    ticket: Mutex<TicketState>,
}

impl std::fmt::Debug for OtcsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtcsClient")
            .field("base_url", &self.settings.base_url)
            .field("base_path", &self.settings.base_path)
            .finish_non_exhaustive()
    }
}

/// What a call is, for errors and for the retry decision.
struct Call {
    op: &'static str,
    target: String,
    /// Safe to send twice (reads, PUTs, deletes). Only idempotent calls are
    /// retried after a timeout, when the server may have acted already.
    idempotent: bool,
}

impl Call {
    fn new(op: &'static str, target: impl Into<String>, idempotent: bool) -> Self {
        Self {
            op,
            target: target.into(),
            idempotent,
        }
    }

    fn transient(&self, detail: impl Into<String>) -> EcmError {
        EcmError::Transient {
            op: self.op,
            target: self.target.clone(),
            detail: detail.into(),
        }
    }

    fn invalid(&self, detail: impl Into<String>) -> EcmError {
        EcmError::Invalid {
            op: self.op,
            target: self.target.clone(),
            detail: detail.into(),
        }
    }
}

fn is_transient_status(s: StatusCode) -> bool {
    matches!(s.as_u16(), 429 | 502 | 503 | 504)
}

/// Maps a non-2xx answer (other than a handled 401/transient) to the error kinds.
fn status_error(call: &Call, status: StatusCode, message: String) -> EcmError {
    let code = status.as_u16();
    if wire::is_name_collision(code, &message) {
        return EcmError::Conflict {
            op: call.op,
            target: call.target.clone(),
        };
    }
    match code {
        404 => EcmError::NotFound {
            op: call.op,
            target: call.target.clone(),
        },
        401 => EcmError::Auth {
            op: call.op,
            detail: format!("HTTP 401 after re-authentication: {message}"),
        },
        _ if is_transient_status(status) => {
            call.transient(format!("HTTP {code} after retries: {message}"))
        }
        // A server error says the server is in trouble, not that this request
        // is wrong (a name collision, which Content Server also answers with
        // 500, was recognised above): retryable, but not repeated here, since a
        // create may have acted before the error.
        500..=599 => call.transient(format!("HTTP {code}: {message}")),
        _ => EcmError::Refused {
            op: call.op,
            target: call.target.clone(),
            status: code,
            message,
        },
    }
}

/// Describes a reqwest error without its URL query (kept short for logs).
fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_body() {
        "body error"
    } else {
        "request failed"
    };
    let mut msg = format!("{kind}: {e}");
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

fn retry_after(resp: &Response) -> Option<Duration> {
    let v = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?;
    v.trim().parse::<u64>().ok().map(Duration::from_secs)
}

impl OtcsClient {
    pub fn new(settings: EcmSettings, opts: OtcsOptions) -> Result<Self, EcmError> {
        let http = reqwest::Client::builder()
            .connect_timeout(opts.connect_timeout)
            .read_timeout(opts.read_timeout)
            .user_agent(concat!("xecm-sftp/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| EcmError::Invalid {
                op: "build HTTP client",
                target: settings.base_url.clone(),
                detail: describe(&e),
            })?;
        let credentials = StdMutex::new(Credentials {
            username: settings.username.clone(),
            password: settings.password.clone(),
        });
        Ok(Self {
            http,
            settings,
            credentials,
            refresh: None,
            opts,
            ticket: Mutex::new(TicketState::default()),
        })
    }

    /// Lets the client re-read the ECM secret `secret_id` once when Content
    /// Server refuses its credentials, so a password rotated while the
    /// function stays warm is picked up instead of failing every call for
    /// the container's life.
    pub fn with_credential_refresh(mut self, secrets: Arc<dyn Secrets>, secret_id: &str) -> Self {
        self.refresh = Some(CredentialRefresh {
            secrets,
            secret_id: secret_id.to_string(),
        });
        self
    }

    fn credentials(&self) -> (String, SecretString) {
        let c = self
            .credentials
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        (c.username.clone(), c.password.clone())
    }

    fn url(&self, api_path: &str) -> String {
        format!(
            "{}{}/api{}",
            self.settings.base_url, self.settings.base_path, api_path
        )
    }

    /// A GET with query parameters (encoded by `url`: names and ids can come
    /// from partner data).
    fn get_q<K: AsRef<str>, V: AsRef<str>>(
        &self,
        api_path: &str,
        query: &[(K, V)],
    ) -> RequestBuilder {
        let mut url = self.url(api_path);
        if !query.is_empty() {
            let mut ser = url::form_urlencoded::Serializer::new(String::new());
            for (k, v) in query {
                ser.append_pair(k.as_ref(), v.as_ref());
            }
            url.push('?');
            url.push_str(&ser.finish());
        }
        self.http.get(url).timeout(self.opts.request_timeout)
    }

    fn get(&self, api_path: &str) -> RequestBuilder {
        self.http
            .get(self.url(api_path))
            .timeout(self.opts.request_timeout)
    }

    fn post(&self, api_path: &str) -> RequestBuilder {
        self.http
            .post(self.url(api_path))
            .timeout(self.opts.request_timeout)
    }

    fn put(&self, api_path: &str) -> RequestBuilder {
        self.http
            .put(self.url(api_path))
            .timeout(self.opts.request_timeout)
    }

    /// Logs in; when the credentials are refused and the client may re-read
    /// its secret, reads it once and tries again with what it holds now.
    async fn login(&self) -> Result<SecretString, EcmError> {
        let refused = match self.login_once().await {
            Err(e @ EcmError::Auth { .. }) => e,
            other => return other,
        };
        let Some(refresh) = &self.refresh else {
            return Err(refused);
        };
        let fresh = refresh
            .secrets
            .refresh(&refresh.secret_id)
            .await
            .and_then(|raw| EcmSettings::from_secret_json(&refresh.secret_id, raw.expose_secret()));
        let fresh = match fresh {
            Ok(f) => f,
            Err(e) => {
                return Err(EcmError::Auth {
                    op: "authenticate",
                    detail: format!("{refused}; re-reading the ECM secret failed: {e}"),
                });
            }
        };
        let (user, password) = self.credentials();
        if fresh.username == user && fresh.password.expose_secret() == password.expose_secret() {
            return Err(EcmError::Auth {
                op: "authenticate",
                detail: format!(
                    "{refused}; secret {} still holds the refused credentials",
                    refresh.secret_id
                ),
            });
        }
        tracing::info!(
            secret_id = %refresh.secret_id,
            "credentials refused; logging in with the re-read ECM secret"
        );
        {
            let mut c = self
                .credentials
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            c.username = fresh.username;
            c.password = fresh.password;
        }
        self.login_once().await
    }

    /// Logs in (`POST /api/v1/auth`), retrying transient failures.
    async fn login_once(&self) -> Result<SecretString, EcmError> {
        let op = "authenticate";
        let (username, password) = self.credentials();
        let call = Call::new(op, username.clone(), true);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let sent = self
                .post("/v1/auth")
                .form(&[
                    ("username", username.as_str()),
                    ("password", password.expose_secret()),
                ])
                .send()
                .await;
            let (retryable, detail) = match sent {
                Ok(resp) if resp.status().is_success() => {
                    let v = read_json(&call, resp).await?;
                    return match v.get("ticket").and_then(Value::as_str) {
                        Some(t) if !t.is_empty() => Ok(SecretString::from(t.to_string())),
                        _ => Err(EcmError::Auth {
                            op,
                            detail: "the login response has no ticket".into(),
                        }),
                    };
                }
                Ok(resp) => {
                    let status = resp.status();
                    let body = resp.bytes().await.unwrap_or_default();
                    let message = wire::error_message(&body);
                    if !is_transient_status(status) {
                        return Err(EcmError::Auth {
                            op,
                            detail: format!("user {username}: HTTP {}: {message}", status.as_u16()),
                        });
                    }
                    (true, format!("HTTP {}: {message}", status.as_u16()))
                }
                Err(e) => (e.is_connect() || e.is_timeout(), describe(&e)),
            };
            if !(retryable && self.opts.backoff.wait(attempt).await) {
                return Err(call.transient(detail));
            }
        }
    }

    /// The current ticket (logging in when there is none) and its generation.
    async fn current_ticket(&self) -> Result<(SecretString, u64), EcmError> {
        let mut state = self.ticket.lock().await;
        if state.ticket.is_none() {
            // Holding the lock while logging in: concurrent callers wait for
            // this one login instead of each opening a session.
            state.ticket = Some(self.login().await?);
            state.generation += 1;
        }
        match &state.ticket {
            Some(t) => Ok((t.clone(), state.generation)),
            None => Err(EcmError::Auth {
                op: "authenticate",
                detail: "no ticket after login".into(),
            }),
        }
    }

    /// Replaces the ticket of `generation`, which the server refused.
    async fn renew_ticket(&self, generation: u64) -> Result<(), EcmError> {
        let mut state = self.ticket.lock().await;
        if state.generation == generation {
            state.ticket = None;
            state.ticket = Some(self.login().await?);
            state.generation += 1;
        }
        Ok(())
    }

    /// Sends a request built by `build` with the ticket; one re-auth on 401;
    /// retries with backoff per the call's idempotency. Returns a 2xx response.
    async fn send(
        &self,
        call: &Call,
        build: impl Fn() -> RequestBuilder,
    ) -> Result<Response, EcmError> {
        let mut attempt = 0u32;
        let mut reauthenticated = false;
        loop {
            attempt += 1;
            let (ticket, generation) = self.current_ticket().await?;
            let sent = build()
                .header("OTCSTicket", ticket.expose_secret())
                .send()
                .await;
            let (wait_at_least, detail) = match sent {
                Ok(resp) if resp.status().is_success() => return Ok(resp),
                Ok(resp) if resp.status() == StatusCode::UNAUTHORIZED && !reauthenticated => {
                    // An expired ticket: log in again once and repeat at once.
                    tracing::info!(op = call.op, "ticket refused, re-authenticating");
                    reauthenticated = true;
                    self.renew_ticket(generation).await?;
                    attempt -= 1;
                    continue;
                }
                Ok(resp) if is_transient_status(resp.status()) => {
                    let status = resp.status();
                    let after = retry_after(&resp);
                    let body = resp.bytes().await.unwrap_or_default();
                    (
                        after,
                        format!("HTTP {}: {}", status.as_u16(), wire::error_message(&body)),
                    )
                }
                Ok(resp) => {
                    let status = resp.status();
                    let body = resp.bytes().await.unwrap_or_default();
                    return Err(status_error(call, status, wire::error_message(&body)));
                }
                Err(e) => {
                    // A connect error means nothing was sent; a timeout may
                    // mean the server acted, so only idempotent calls repeat.
                    let retryable =
                        e.is_connect() || (call.idempotent && (e.is_timeout() || e.is_request()));
                    if !retryable {
                        return Err(call.transient(describe(&e)));
                    }
                    (None, describe(&e))
                }
            };
            match self.opts.backoff.delay(attempt) {
                Some(d) => {
                    let d = wait_at_least.map_or(d, |a| d.max(a.min(self.opts.backoff.cap)));
                    tracing::warn!(op = call.op, target = %call.target, attempt, delay_ms = d.as_millis() as u64, %detail, "transient failure, retrying");
                    tokio::time::sleep(d).await;
                }
                None => return Err(call.transient(format!("after {attempt} attempts: {detail}"))),
            }
        }
    }

    /// Like [`send`](Self::send) for a request that can be sent only once (its
    /// body is a stream): no retry, errors mapped the same way.
    async fn send_once(&self, call: &Call, req: RequestBuilder) -> Result<Response, EcmError> {
        let (ticket, _) = self.current_ticket().await?;
        let resp = req
            .header("OTCSTicket", ticket.expose_secret())
            .send()
            .await
            .map_err(|e| call.transient(describe(&e)))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let body = resp.bytes().await.unwrap_or_default();
        let message = wire::error_message(&body);
        if status == StatusCode::UNAUTHORIZED {
            // The stream is spent; the caller's retry starts from the source.
            let mut state = self.ticket.lock().await;
            state.ticket = None;
            return Err(call.transient(format!("ticket refused during upload: {message}")));
        }
        Err(status_error(call, status, message))
    }

    async fn send_json(
        &self,
        call: &Call,
        build: impl Fn() -> RequestBuilder,
    ) -> Result<Value, EcmError> {
        let resp = self.send(call, build).await?;
        read_json(call, resp).await
    }

    /// Makes sure the ticket is fresh before a one-shot streamed request, so a
    /// ticket that expired while idle is renewed by a cheap, repeatable call
    /// rather than failing the upload; also checks that `node` exists.
    async fn preflight(&self, call: &Call, node: NodeId) -> Result<Node, EcmError> {
        self.node(node).await.map_err(|e| match e {
            EcmError::NotFound { .. } => EcmError::NotFound {
                op: call.op,
                target: format!("{} (node {node} does not exist)", call.target),
            },
            other => other,
        })
    }

    async fn streamed_upload(
        &self,
        call: &Call,
        url: String,
        fields: Vec<(&'static str, String)>,
        content: Content,
    ) -> Result<(Value, u64, String), EcmError> {
        let tally = Arc::new(StdMutex::new((Sha256::new(), 0u64)));
        let counter = Arc::clone(&tally);
        let length = content.length;
        let stream = content.stream.map(move |chunk| {
            if let Ok(bytes) = &chunk {
                let mut t = counter.lock().unwrap_or_else(|e| e.into_inner());
                t.0.update(bytes);
                t.1 += bytes.len() as u64;
            }
            chunk
        });
        let part = Part::stream_with_length(Body::wrap_stream(stream), length)
            .file_name(content.file_name.clone())
            .mime_str(&content.mime_type)
            .map_err(|_| call.invalid(format!("bad MIME type {:?}", content.mime_type)))?;
        // Field order matters to some servers: `body` (or `description`) first, then `file`.
        let mut form = Form::new();
        for (k, v) in fields {
            form = form.text(k, v);
        }
        form = form.part("file", part);
        let req = self
            .http
            .post(url)
            .timeout(self.opts.transfer_timeout)
            .multipart(form);
        let resp = self.send_once(call, req).await?;
        let v = read_json(call, resp).await?;
        let (hasher, sent) = {
            let mut t = tally.lock().unwrap_or_else(|e| e.into_inner());
            std::mem::replace(&mut *t, (Sha256::new(), 0))
        };
        if sent != length {
            // The server accepted a different byte count than declared; never
            // report a hash of something that is not what was stored.
            return Err(call.invalid(format!("sent {sent} bytes, {length} declared")));
        }
        Ok((v, sent, hex::encode(hasher.finalize())))
    }
}

async fn read_json(call: &Call, resp: Response) -> Result<Value, EcmError> {
    let body = resp
        .bytes()
        .await
        .map_err(|e| call.transient(format!("reading the response: {}", describe(&e))))?;
    if body.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&body).map_err(|e| call.invalid(format!("response is not JSON: {e}")))
}

fn node_target(id: NodeId) -> String {
    format!("node {id}")
}

fn check(call: &Call, name: &str) -> Result<(), EcmError> {
    check_name(name).map_err(|reason| call.invalid(format!("name {name:?}: {reason}")))
}

#[async_trait]
impl Ecm for OtcsClient {
    #[tracing::instrument(skip(self))]
    async fn node(&self, id: NodeId) -> Result<Node, EcmError> {
        let call = Call::new("get node", node_target(id), true);
        let v = self
            .send_json(&call, || {
                self.get_q(&format!("/v2/nodes/{id}"), &[("fields", "properties")])
            })
            .await?;
        wire::single_properties(&v)
            .and_then(wire::node_from_properties)
            .ok_or_else(|| call.invalid("no results.data.properties.id in the response"))
    }

    async fn enterprise_volume(&self) -> Result<NodeId, EcmError> {
        let call = Call::new("get enterprise volume", "volume 141", true);
        let v = self
            .send_json(&call, || self.get("/v2/volumes/141"))
            .await?;
        wire::single_properties(&v)
            .and_then(|p| p.get("id"))
            .and_then(wire::as_i64)
            .and_then(NodeId::new)
            .ok_or_else(|| call.invalid("no results.data.properties.id in the response"))
    }

    async fn children(
        &self,
        parent: NodeId,
        filter: &ChildFilter,
        page: u32,
        limit: u32,
    ) -> Result<Page<Node>, EcmError> {
        let call = Call::new("list children", node_target(parent), true);
        let mut query: Vec<(&str, String)> = vec![
            ("fields", "properties".into()),
            ("limit", limit.max(1).to_string()),
            ("page", page.max(1).to_string()),
        ];
        if let Some(n) = &filter.name_contains {
            query.push(("where_name", n.clone()));
        }
        if let Some(t) = filter.node_type {
            query.push(("where_type", t.to_string()));
        }
        let v = self
            .send_json(&call, || {
                self.get_q(&format!("/v2/nodes/{parent}/nodes"), &query)
            })
            .await?;
        Ok(wire::node_page(&v, page.max(1)))
    }

    async fn child_by_name(&self, parent: NodeId, name: &str) -> Result<Option<Node>, EcmError> {
        let filter = ChildFilter {
            name_contains: Some(name.to_string()),
            node_type: None,
        };
        let mut page = 1;
        loop {
            let p = self
                .children(parent, &filter, page, self.opts.page_size)
                .await?;
            let empty = p.items.is_empty();
            if let Some(n) = p.items.into_iter().find(|n| n.name == name) {
                return Ok(Some(n));
            }
            // Also stop on an empty page, so a server that misreports
            // page_total cannot keep us looping.
            if empty || page >= p.page_total || page >= 10_000 {
                return Ok(None);
            }
            page += 1;
        }
    }

    #[tracing::instrument(skip(self))]
    async fn create_folder(&self, parent: NodeId, name: &str) -> Result<NodeId, EcmError> {
        let call = Call::new("create folder", format!("{name:?} in node {parent}"), false);
        check(&call, name)?;
        let body =
            json!({"type": node_type::FOLDER, "parent_id": parent.get(), "name": name}).to_string();
        let v = self
            .send_json(&call, || {
                self.post("/v2/nodes").form(&[("body", body.as_str())])
            })
            .await?;
        wire::created_id(&v).ok_or_else(|| call.invalid("no id in the create response"))
    }

    async fn ensure_folder_path(
        &self,
        root: NodeId,
        segments: &[String],
    ) -> Result<NodeId, EcmError> {
        let mut cur = root;
        for seg in segments {
            let call = Call::new("ensure folder path", format!("{seg:?} in node {cur}"), true);
            check(&call, seg)?;
            cur = match self.child_by_name(cur, seg).await? {
                Some(n) if n.is_container() => n.id,
                Some(n) => {
                    return Err(EcmError::Conflict {
                        op: call.op,
                        target: format!("{} (node {} is not a folder)", call.target, n.id),
                    });
                }
                None => match self.create_folder(cur, seg).await {
                    Ok(id) => id,
                    // Someone else created it between our look and our create.
                    Err(EcmError::Conflict { .. }) => match self.child_by_name(cur, seg).await? {
                        Some(n) if n.is_container() => n.id,
                        _ => {
                            return Err(EcmError::Conflict {
                                op: call.op,
                                target: call.target,
                            });
                        }
                    },
                    Err(e) => return Err(e),
                },
            };
        }
        Ok(cur)
    }

    #[tracing::instrument(skip(self, request), fields(parent = %request.parent, name = %request.name, length = request.content.length))]
    async fn upload(&self, request: UploadRequest) -> Result<UploadReceipt, EcmError> {
        let call = Call::new(
            "upload document",
            format!("{:?} in node {}", request.name, request.parent),
            false,
        );
        check(&call, &request.name)?;
        // The name check before streaming: a server may answer a collision
        // before reading the body, which would surface as a broken pipe
        // (transient) instead of the conflict it is. It also refreshes the
        // ticket and proves the parent exists.
        let existing = self
            .child_by_name(request.parent, &request.name)
            .await
            .map_err(|e| match e {
                EcmError::NotFound { .. } => EcmError::NotFound {
                    op: call.op,
                    target: format!("{} (node {} does not exist)", call.target, request.parent),
                },
                other => other,
            })?;
        if existing.is_some() {
            return Err(EcmError::Conflict {
                op: call.op,
                target: call.target,
            });
        }
        let body = wire::upload_body(
            request.parent,
            &request.name,
            request.description.as_deref(),
            &request.categories,
            &request.classifications,
        );
        let (v, size, sha256) = self
            .streamed_upload(
                &call,
                self.url("/v2/nodes"),
                vec![("body", body.to_string())],
                request.content,
            )
            .await?;
        let node_id =
            wire::created_id(&v).ok_or_else(|| call.invalid("no id in the upload response"))?;
        Ok(UploadReceipt {
            node_id,
            version: Some(1),
            size,
            sha256,
        })
    }

    #[tracing::instrument(skip(self, content), fields(length = content.length))]
    async fn add_version(
        &self,
        node: NodeId,
        description: Option<&str>,
        content: Content,
    ) -> Result<UploadReceipt, EcmError> {
        let call = Call::new("add version", node_target(node), false);
        self.preflight(&call, node).await?;
        let fields = vec![("description", description.unwrap_or_default().to_string())];
        let (v, size, sha256) = self
            .streamed_upload(
                &call,
                self.url(&format!("/v2/nodes/{node}/versions")),
                fields,
                content,
            )
            .await?;
        Ok(UploadReceipt {
            node_id: node,
            version: wire::added_version_number(&v),
            size,
            sha256,
        })
    }

    async fn versions(&self, node: NodeId) -> Result<Vec<Version>, EcmError> {
        let call = Call::new("list versions", node_target(node), true);
        let v = self
            .send_json(&call, || self.get(&format!("/v2/nodes/{node}/versions")))
            .await?;
        Ok(wire::versions(&v))
    }

    #[tracing::instrument(skip(self))]
    async fn download(&self, node: NodeId, version: Option<u32>) -> Result<Download, EcmError> {
        let call = Call::new("download", format!("node {node} version {version:?}"), true);
        let path = match version {
            Some(n) => format!("/v2/nodes/{node}/versions/{n}/content"),
            None => format!("/v1/nodes/{node}/content"),
        };
        let url = self.url(&path);
        let resp = self
            .send(&call, || {
                self.http.get(&url).timeout(self.opts.transfer_timeout)
            })
            .await?;
        let mime_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let length = resp.content_length();
        let stream = resp
            .bytes_stream()
            .map(|r| r.map_err(|e| std::io::Error::other(describe(&e))));
        Ok(Download {
            length,
            mime_type,
            stream: Box::pin(stream),
        })
    }

    async fn update_node(&self, node: NodeId, update: &NodeUpdate) -> Result<(), EcmError> {
        let call = Call::new("update node", node_target(node), true);
        let mut body = serde_json::Map::new();
        if let Some(n) = &update.name {
            check(&call, n)?;
            body.insert("name".into(), json!(n));
        }
        if let Some(d) = &update.description {
            body.insert("description".into(), json!(d));
        }
        if let Some(p) = update.parent {
            body.insert("parent_id".into(), json!(p.get()));
        }
        let body = Value::Object(body).to_string();
        self.send(&call, || {
            self.put(&format!("/v2/nodes/{node}"))
                .form(&[("body", body.as_str())])
        })
        .await?;
        Ok(())
    }

    async fn delete_node(&self, node: NodeId) -> Result<(), EcmError> {
        let call = Call::new("delete node", node_target(node), true);
        let url = self.url(&format!("/v2/nodes/{node}"));
        self.send(&call, || {
            self.http.delete(&url).timeout(self.opts.request_timeout)
        })
        .await?;
        Ok(())
    }

    async fn categories(&self, node: NodeId) -> Result<Vec<AppliedCategory>, EcmError> {
        let call = Call::new("get categories", node_target(node), true);
        let v = self
            .send_json(&call, || self.get(&format!("/v2/nodes/{node}/categories")))
            .await?;
        Ok(wire::categories(&v))
    }

    async fn apply_category(
        &self,
        node: NodeId,
        category_id: i64,
        values: &CategoryValues,
    ) -> Result<(), EcmError> {
        let call = Call::new(
            "apply category",
            format!("category {category_id} on node {node}"),
            false,
        );
        let form = wire::category_form(Some(category_id), values);
        self.send(&call, || {
            self.post(&format!("/v2/nodes/{node}/categories"))
                .form(&form)
        })
        .await?;
        Ok(())
    }

    async fn update_category(
        &self,
        node: NodeId,
        category_id: i64,
        values: &CategoryValues,
    ) -> Result<(), EcmError> {
        let call = Call::new(
            "update category",
            format!("category {category_id} on node {node}"),
            true,
        );
        let form = wire::category_form(None, values);
        self.send(&call, || {
            self.put(&format!("/v2/nodes/{node}/categories/{category_id}"))
                .form(&form)
        })
        .await?;
        Ok(())
    }

    async fn workspace_types(&self) -> Result<Vec<WorkspaceType>, EcmError> {
        let call = Call::new("list workspace types", "all", true);
        let v = self
            .send_json(&call, || {
                self.get_q(
                    "/v2/businessworkspacetypes",
                    &[("expand_templates", "true")],
                )
            })
            .await?;
        Ok(wire::workspace_types(&v))
    }

    async fn find_workspaces(
        &self,
        type_id: i64,
        name: &str,
    ) -> Result<Vec<WorkspaceRef>, EcmError> {
        let call = Call::new(
            "find workspaces",
            format!("type {type_id} name {name:?}"),
            true,
        );
        let mut found = Vec::new();
        let mut page = 1u32;
        loop {
            let query = [
                ("where_workspace_type_id", type_id.to_string()),
                ("where_name", name.to_string()),
                ("expanded_view", "true".into()),
                ("fields", "properties".into()),
                ("limit", self.opts.page_size.to_string()),
                ("page", page.to_string()),
            ];
            let v = self
                .send_json(&call, || self.get_q("/v2/businessworkspaces", &query))
                .await?;
            let results = wire::list_results(&v);
            found.extend(
                results
                    .iter()
                    .filter_map(|r| r.get("data")?.get("properties"))
                    .filter_map(wire::workspace_from_properties)
                    .filter(|w| w.name == name)
                    .map(|mut w| {
                        w.type_id.get_or_insert(type_id);
                        w
                    }),
            );
            let (_, page_total, _) = wire::paging(&v, page, results.len());
            if results.is_empty() || page >= page_total || page >= 10_000 {
                return Ok(found);
            }
            page += 1;
        }
    }

    async fn workspace_by_business_object(
        &self,
        bo: &BusinessObject,
    ) -> Result<Option<WorkspaceRef>, EcmError> {
        let call = Call::new(
            "find workspace by business object",
            format!("{}/{}/{}", bo.ext_system_id, bo.bo_type, bo.bo_id),
            true,
        );
        // Path segments are encoded: business object ids come from partner data.
        let mut url = Url::parse(&self.url("/v2/externalsystems"))
            .map_err(|e| call.invalid(format!("bad URL: {e}")))?;
        url.path_segments_mut()
            .map_err(|_| call.invalid("base URL cannot take a path"))?
            .extend([
                bo.ext_system_id.as_str(),
                "botypes",
                bo.bo_type.as_str(),
                "boids",
                bo.bo_id.as_str(),
            ]);
        let result = self
            .send_json(&call, || {
                self.http
                    .get(url.clone())
                    .timeout(self.opts.request_timeout)
            })
            .await;
        match result {
            Ok(v) => Ok(wire::single_properties(&v).and_then(wire::workspace_from_properties)),
            Err(EcmError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn create_workspace(&self, request: &CreateWorkspace) -> Result<NodeId, EcmError> {
        let call = Call::new(
            "create workspace",
            format!("{:?} of type {}", request.name, request.type_id),
            false,
        );
        check(&call, &request.name)?;
        let body = wire::create_workspace_body(request).to_string();
        let v = self
            .send_json(&call, || {
                self.post("/v2/businessworkspaces")
                    .form(&[("body", body.as_str())])
            })
            .await?;
        wire::created_id(&v).ok_or_else(|| call.invalid("no id in the create response"))
    }

    async fn apply_rm_classification(&self, node: NodeId, class_id: i64) -> Result<(), EcmError> {
        let call = Call::new(
            "apply RM classification",
            format!("class {class_id} on node {node}"),
            true,
        );
        let body = json!({"class_id": class_id}).to_string();
        self.send(&call, || {
            self.post(&format!("/v1/nodes/{node}/rmclassifications"))
                .form(&[("body", body.as_str())])
        })
        .await?;
        Ok(())
    }

    async fn rm_classifications(&self, node: NodeId) -> Result<Vec<i64>, EcmError> {
        let call = Call::new("get RM classifications", node_target(node), true);
        let v = self
            .send_json(&call, || {
                self.get(&format!("/v1/nodes/{node}/rmclassifications"))
            })
            .await?;
        Ok(wire::rm_classifications(&v))
    }

    async fn apply_hold(&self, node: NodeId, hold_id: i64) -> Result<(), EcmError> {
        let call = Call::new("apply hold", format!("hold {hold_id} on node {node}"), true);
        let body = json!({"hold_id": hold_id}).to_string();
        self.send(&call, || {
            self.post(&format!("/v1/nodes/{node}/holds"))
                .form(&[("body", body.as_str())])
        })
        .await?;
        Ok(())
    }

    async fn holds(&self) -> Result<Vec<Hold>, EcmError> {
        let call = Call::new("list holds", "all", true);
        let v = self.send_json(&call, || self.get("/v2/holds")).await?;
        Ok(wire::holds(&v))
    }

    async fn search(&self, query: &str, page: u32, limit: u32) -> Result<Page<Node>, EcmError> {
        let call = Call::new("search", format!("{query:?}"), true);
        let form = [
            ("where", query.to_string()),
            ("limit", limit.max(1).to_string()),
            ("page", page.max(1).to_string()),
        ];
        let v = self
            .send_json(&call, || self.post("/v2/search").form(&form))
            .await?;
        Ok(wire::node_page(&v, page.max(1)))
    }

    async fn audit(
        &self,
        node: NodeId,
        page: u32,
        limit: u32,
    ) -> Result<Page<AuditEntry>, EcmError> {
        let call = Call::new("get audit", node_target(node), true);
        let query = [
            ("limit", limit.max(1).to_string()),
            ("page", page.max(1).to_string()),
        ];
        let v = self
            .send_json(&call, || {
                self.get_q(&format!("/v2/nodes/{node}/audit"), &query)
            })
            .await?;
        Ok(wire::audit_page(&v, page.max(1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ecm_secret_parses_with_default_base_path() {
        let s = EcmSettings::from_secret_json(
            "ecm",
            r#"{"base_url":"http://127.0.0.1:8080/","username":"admin","password":"s3cr3t-pw"}"#,
        )
        .unwrap();
        assert_eq!(s.base_url, "http://127.0.0.1:8080");
        assert_eq!(s.base_path, "/cs/cs");
        assert!(!format!("{s:?}").contains("s3cr3t-pw"), "{s:?}");
        let c = OtcsClient::new(s, OtcsOptions::default()).unwrap();
        assert_eq!(
            c.url("/v2/nodes/5"),
            "http://127.0.0.1:8080/cs/cs/api/v2/nodes/5"
        );
    }

    #[test]
    fn ecm_secret_errors_name_the_field() {
        let err =
            EcmSettings::from_secret_json("ecm/prod", r#"{"base_url":"http://h","username":"u"}"#)
                .unwrap_err();
        assert_eq!(err.to_string(), "secret ecm/prod: missing field `password`");
        let err = EcmSettings::from_secret_json(
            "ecm/prod",
            r#"{"base_url":"ftp://h","username":"u","password":"p","base_path":"/otcs/cs.exe"}"#,
        )
        .unwrap_err();
        assert!(
            matches!(err, SecretsError::InvalidField { ref field, .. } if field == "base_url"),
            "{err}"
        );
    }

    #[test]
    fn status_mapping() {
        let call = Call::new("create folder", "\"x\" in node 5", false);
        assert!(
            status_error(
                &call,
                StatusCode::INTERNAL_SERVER_ERROR,
                "An item with the name 'x' already exists".into()
            )
            .is_conflict()
        );
        assert!(status_error(&call, StatusCode::NOT_FOUND, "no".into()).is_not_found());
        assert!(matches!(
            status_error(&call, StatusCode::FORBIDDEN, "no permission".into()),
            EcmError::Refused { status: 403, .. }
        ));
        assert!(status_error(&call, StatusCode::SERVICE_UNAVAILABLE, "busy".into()).is_retryable());
        assert!(matches!(
            status_error(&call, StatusCode::UNAUTHORIZED, "x".into()),
            EcmError::Auth { .. }
        ));
    }
}
