//! Errors: the API's `{"error": ...}` replies, and the library's own errors.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// A refusal as a real server sends it: a status and `{"error": message}`.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }
    pub fn bad_request(m: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, m)
    }
    pub fn not_found(m: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, m)
    }
    pub fn forbidden(m: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, m)
    }
    pub fn unauthorized(m: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, m)
    }
    /// Real servers answer a name collision with a 500.
    pub fn internal(m: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, m)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

/// Why the emulator could not start or keep its state.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "refusing to listen on non-loopback address {0}; allow it explicitly (--allow-non-loopback)"
    )]
    NonLoopback(std::net::SocketAddr),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("invalid seed: {0}")]
    Seed(String),
    #[error("state file {path}: {source}")]
    State {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("state file {path} is not valid: {source}")]
    StateFormat {
        path: std::path::PathBuf,
        source: serde_json::Error,
    },
    #[error("content directory {path}: {source}")]
    Content {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot build the callback HTTP client: {0}")]
    Client(String),
}
