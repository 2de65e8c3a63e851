//! In-memory stand-in for the export flow's SFTP side: [`MemoryDestinations`]
//! hands out one [`MemoryStore`] (the port's `MemoryFileStore`, rooted at
//! `/`) for every secret name. For unit tests of the flow and the handler;
//! integration tests use real sshd.

use std::sync::Arc;

use async_trait::async_trait;

use super::{Destinations, ExportError};
use crate::domain::paths::{PathError, RemoteRoot};
use crate::ports::file_store::FileStore;
pub use crate::ports::file_store::memory::MemoryFileStore as MemoryStore;

/// Every secret name maps to the same in-memory store.
#[derive(Debug, Clone)]
pub struct MemoryDestinations {
    pub store: Arc<MemoryStore>,
}

impl MemoryDestinations {
    pub fn new() -> Result<Self, PathError> {
        Ok(Self {
            store: Arc::new(MemoryStore::new(RemoteRoot::parse("/")?)),
        })
    }
}

#[async_trait]
impl Destinations for MemoryDestinations {
    async fn store(&self, _sftp_secret: &str) -> Result<Arc<dyn FileStore>, ExportError> {
        Ok(Arc::clone(&self.store) as Arc<dyn FileStore>)
    }
}
