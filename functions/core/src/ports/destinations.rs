//! Where export deliveries go: a route's SFTP secret name → a connected
//! [`FileStore`]. The flows ask this port; the adapter
//! (`adapters::sftp_destinations`) reads the secret, opens the SFTP client it
//! names and keeps it warm; tests hand out in-memory stores.

use std::sync::Arc;

use async_trait::async_trait;

use super::file_store::{FileStore, FileStoreError};
use super::secrets::SecretsError;

/// Why a destination could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum DestinationError {
    #[error("SFTP: {0}")]
    Store(#[from] FileStoreError),
    #[error("{0}")]
    Secrets(#[from] SecretsError),
    #[error("SFTP secret {secret_id} is unusable: {reason}")]
    Secret { secret_id: String, reason: String },
}

impl DestinationError {
    pub fn is_retryable(&self) -> bool {
        match self {
            DestinationError::Store(e) => e.is_retryable(),
            DestinationError::Secrets(e) => e.is_retryable(),
            DestinationError::Secret { .. } => false,
        }
    }
}

#[async_trait]
pub trait Destinations: Send + Sync {
    /// The store for the route's `sftp_secret` name.
    async fn store(&self, sftp_secret: &str) -> Result<Arc<dyn FileStore>, DestinationError>;
}
