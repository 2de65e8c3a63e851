//! [`Destinations`] over Secrets Manager and the SFTP adapters: the client
//! the secret names (ssh2 or russh). Stores are kept per secret id for a
//! TTL so warm invocations reuse SSH sessions, and rebuilt afterwards so a
//! rotated key or host key takes effect.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use secrecy::ExposeSecret;

use super::sftp::{SftpSettings, open_store};
use crate::ports::destinations::{DestinationError, Destinations};
use crate::ports::file_store::FileStore;
use crate::ports::secrets::Secrets;

/// A store and when it was opened.
type CachedStore = (Instant, Arc<dyn FileStore>);

pub struct SftpDestinations {
    secrets: Arc<dyn Secrets>,
    /// Route secret names → secret ids (`Config::sftp_secrets`).
    names: BTreeMap<String, String>,
    ttl: Duration,
    cache: tokio::sync::Mutex<HashMap<String, CachedStore>>,
}

impl std::fmt::Debug for SftpDestinations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SftpDestinations")
            .field("names", &self.names)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl SftpDestinations {
    pub fn new(secrets: Arc<dyn Secrets>, names: BTreeMap<String, String>) -> Self {
        Self {
            secrets,
            names,
            ttl: Duration::from_secs(300),
            cache: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }
}

#[async_trait]
impl Destinations for SftpDestinations {
    async fn store(&self, sftp_secret: &str) -> Result<Arc<dyn FileStore>, DestinationError> {
        let secret_id = self
            .names
            .get(sftp_secret)
            .map(String::as_str)
            .unwrap_or(sftp_secret)
            .to_owned();
        let mut cache = self.cache.lock().await;
        if let Some((at, store)) = cache.get(&secret_id)
            && at.elapsed() < self.ttl
        {
            return Ok(Arc::clone(store));
        }
        let raw = self.secrets.get(&secret_id).await?;
        let settings =
            SftpSettings::from_secret_json(&secret_id, raw.expose_secret()).map_err(|e| {
                DestinationError::Secret {
                    secret_id: secret_id.clone(),
                    reason: e.to_string(),
                }
            })?;
        let store = open_store(settings)?;
        cache.insert(secret_id, (Instant::now(), Arc::clone(&store)));
        Ok(store)
    }
}
