//! Read-only HTML view of the repository (placeholder, filled in below).
use crate::state::AppState;
use axum::Router;
use std::sync::Arc;
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
}
