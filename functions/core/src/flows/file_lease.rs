//! A lease held as a small file on the SFTP server, taken atomically: the
//! file is created with a no-replace put, so of two takers exactly one wins;
//! an expired lease (its holder stopped) is moved aside with one no-replace
//! rename, which only one taker can win, and checked to be the lease that was
//! read before it is dropped. The export's delivery lease and the backup's
//! run lease are both this mechanism, each with its own record.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::domain::paths::RemotePath;
use crate::ports::file_store::{FileStore, FileStoreError, RenameMode};

/// Lease files are tiny; anything bigger under the name is not a lease.
pub const LEASE_MAX_BYTES: u64 = 4096;

/// What a lease file holds.
pub trait LeaseRecord: Serialize + DeserializeOwned + Clone + Send + Sync {
    /// When the holder's claim ends (it stopped, or its deadline passed).
    fn expires_at(&self) -> DateTime<Utc>;
}

/// A lease this invocation holds.
#[derive(Debug, Clone)]
pub struct Held<L> {
    pub path: RemotePath,
    pub lease: L,
    /// The bytes written, to tell this lease from a later one on release.
    bytes: Bytes,
    /// The expired lease this one replaced (its holder stopped).
    pub taken_over: Option<L>,
}

#[derive(Debug, Clone)]
pub enum Acquired<L> {
    Held(Held<L>),
    /// Someone else holds it (their live lease; `None` when it changed
    /// hands too often to read).
    Busy(Option<L>),
}

fn parse<L: LeaseRecord>(b: &[u8]) -> Option<L> {
    serde_json::from_slice(b).ok()
}

/// Takes the lease at `path` for `lease`. `nonce` names the aside file of an
/// expired lease (unique per taker); `now` is the time expiry is judged by.
pub async fn acquire<L: LeaseRecord>(
    store: &dyn FileStore,
    path: &RemotePath,
    lease: L,
    nonce: &str,
    now: DateTime<Utc>,
) -> Result<Acquired<L>, FileStoreError> {
    let bytes = Bytes::from(serde_json::to_vec(&lease).unwrap_or_default());
    let mut taken_over = None;
    for _ in 0..3 {
        match store
            .write_small(path, bytes.clone(), RenameMode::NoReplace)
            .await
        {
            Ok(_) => {
                return Ok(Acquired::Held(Held {
                    path: path.clone(),
                    lease,
                    bytes,
                    taken_over,
                }));
            }
            Err(FileStoreError::AlreadyExists { .. }) => {}
            Err(e) => return Err(e),
        }
        let seen = match store.read_small(path, LEASE_MAX_BYTES).await {
            Ok(b) => b,
            // Released meanwhile: try again.
            Err(FileStoreError::NotFound { .. }) => continue,
            Err(e) => return Err(e),
        };
        let other: Option<L> = parse(&seen);
        if let Some(o) = &other
            && o.expires_at() > now
        {
            return Ok(Acquired::Busy(Some(o.clone())));
        }
        // Expired (or not a lease at all: nothing else is written under
        // this name). One rename moves it aside; only one taker wins it.
        let name = path.file_name_lossy();
        let Some(parent) = path.parent() else {
            return Err(FileStoreError::Config(format!(
                "lease {path} has no parent directory"
            )));
        };
        let aside = parent.join(format!("{name}.stale-{nonce}").as_bytes())?;
        match store.rename(path, &aside, RenameMode::NoReplace).await {
            Ok(()) => {}
            Err(FileStoreError::NotFound { .. }) => continue,
            Err(e) => return Err(e),
        }
        let moved = store.read_small(&aside, LEASE_MAX_BYTES).await?;
        if moved != seen {
            // Another taker replaced the stale lease between our read and
            // our rename: that one is live. Put it back.
            if let Err(e) = store.rename(&aside, path, RenameMode::NoReplace).await {
                tracing::warn!(path = %aside, error = %e, "cannot put a live lease back");
            }
            return Ok(Acquired::Busy(parse(&moved)));
        }
        if let Err(e) = store.remove(&aside).await {
            tracing::warn!(path = %aside, error = %e, "cannot remove a stale lease");
        }
        tracing::warn!(path = %path, "took over an expired lease (its holder stopped)");
        taken_over = other;
    }
    Ok(Acquired::Busy(None))
}

/// Removes the lease if it is still the one written (best effort: a lease
/// left behind only delays the next taker until it expires).
pub async fn release<L: LeaseRecord>(store: &dyn FileStore, held: &Held<L>) {
    match store.read_small(&held.path, LEASE_MAX_BYTES).await {
        Ok(b) if b == held.bytes => {
            if let Err(e) = store.remove(&held.path).await {
                tracing::warn!(path = %held.path, error = %e, "cannot release the lease");
            }
        }
        Ok(_) => tracing::warn!(path = %held.path, "the lease was taken over meanwhile"),
        Err(FileStoreError::NotFound { .. }) => {}
        Err(e) => tracing::warn!(path = %held.path, error = %e, "cannot read the lease back"),
    }
}

impl LeaseRecord for crate::domain::export_history::Lease {
    fn expires_at(&self) -> DateTime<Utc> {
        self.expires_at
    }
}

impl LeaseRecord for crate::domain::backup::Lease {
    fn expires_at(&self) -> DateTime<Utc> {
        self.until
    }
}
