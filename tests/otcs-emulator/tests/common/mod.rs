//! Test helpers: an in-process emulator and a small client for it.

#![allow(dead_code)]

use otcs_emulator::{EmulatorConfig, RunningEmulator};
use reqwest::multipart::{Form, Part};
use serde_json::Value;

pub const BASE: &str = "/cs/cs/api";

pub struct App {
    pub emu: RunningEmulator,
    pub http: reqwest::Client,
    pub ticket: String,
    pub base_path: &'static str,
}

pub async fn spawn() -> App {
    spawn_with(EmulatorConfig::default()).await
}

pub async fn spawn_with(config: EmulatorConfig) -> App {
    let emu = otcs_emulator::start(config).await.expect("emulator starts");
    let http = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(60))
        .build()
        .expect("client");
    let mut app = App {
        emu,
        http,
        ticket: String::new(),
        base_path: BASE,
    };
    app.ticket = app.login("admin", "admin").await.expect("admin login");
    app
}

impl App {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}{}", self.emu.base_url(), self.base_path, path)
    }

    pub async fn login(&self, user: &str, password: &str) -> Result<String, reqwest::StatusCode> {
        let r = self
            .http
            .post(self.url("/v1/auth"))
            .form(&[("username", user), ("password", password)])
            .send()
            .await
            .expect("auth request");
        if !r.status().is_success() {
            return Err(r.status());
        }
        let v: Value = r.json().await.expect("auth json");
        Ok(v["ticket"].as_str().expect("ticket").to_string())
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .http
            .get(self.url(path))
            .header("OTCSTicket", &self.ticket)
            .send()
            .await
            .expect("request");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// POST/PUT with the usual CS encoding: one `body` field holding JSON.
    pub async fn send_body(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Value,
    ) -> (u16, Value) {
        let r = self
            .http
            .request(method, self.url(path))
            .header("OTCSTicket", &self.ticket)
            .form(&[("body", body.to_string())])
            .send()
            .await
            .expect("request");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn post_body(&self, path: &str, body: Value) -> (u16, Value) {
        self.send_body(reqwest::Method::POST, path, body).await
    }

    /// Plain form fields (category and search calls).
    pub async fn send_form(
        &self,
        method: reqwest::Method,
        path: &str,
        fields: &[(&str, &str)],
    ) -> (u16, Value) {
        let r = self
            .http
            .request(method, self.url(path))
            .header("OTCSTicket", &self.ticket)
            .form(fields)
            .send()
            .await
            .expect("request");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn create_folder(&self, parent: i64, name: &str) -> (u16, Value) {
        self.post_body(
            "/v2/nodes",
            serde_json::json!({"type": 0, "parent_id": parent, "name": name}),
        )
        .await
    }

    pub async fn upload(
        &self,
        parent: i64,
        name: &str,
        bytes: Vec<u8>,
        extra: Value,
    ) -> (u16, Value) {
        let mut body = serde_json::json!({"type": 144, "parent_id": parent, "name": name});
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                b.insert(k.clone(), v.clone());
            }
        }
        let form = Form::new().text("body", body.to_string()).part(
            "file",
            Part::bytes(bytes)
                .file_name(name.to_string())
                .mime_str("application/pdf")
                .expect("mime"),
        );
        let r = self
            .http
            .post(self.url("/v2/nodes"))
            .header("OTCSTicket", &self.ticket)
            .multipart(form)
            .send()
            .await
            .expect("request");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// `GET v1/nodes/{doc}/content` with the ticket.
    pub async fn content(&self, doc: i64) -> reqwest::Response {
        self.http
            .get(self.url(&format!("/v1/nodes/{doc}/content")))
            .header("OTCSTicket", &self.ticket)
            .send()
            .await
            .expect("content request")
    }

    pub async fn new_folder(&self, name: &str) -> i64 {
        let (s, v) = self.create_folder(2000, name).await;
        assert_eq!(s, 200, "{v}");
        id_of(&v)
    }
}

pub fn id_of(v: &Value) -> i64 {
    v["results"]["data"]["properties"]["id"]
        .as_i64()
        .unwrap_or_else(|| panic!("no id in {v}"))
}

pub fn error_of(v: &Value) -> String {
    v["error"].as_str().unwrap_or_default().to_string()
}
