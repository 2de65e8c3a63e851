//! The delivery lease on the SFTP side, one per (route, destination, node):
//! taken with a no-replace rename, expiring with its holder's invocation.

use super::*;

/// A lease this invocation holds.
pub(crate) struct HeldLease {
    pub(crate) path: RemotePath,
    pub(crate) lease: Lease,
    /// The expired lease this one replaced (its holder stopped).
    pub(crate) taken_over: Option<Lease>,
}

pub(crate) enum LeaseOutcome {
    Held(HeldLease),
    Busy(Lease),
}

/// How long a lease lasts: as long as this invocation can, plus a margin;
/// a crashed holder blocks the node's deliveries to that destination no
/// longer than that.
pub(crate) fn lease_ttl(cx: &ExportContext<'_>) -> chrono::Duration {
    let left = cx
        .deadline
        .map_or(Duration::from_secs(900), |d| {
            d.saturating_duration_since(Instant::now())
        })
        .min(Duration::from_secs(900));
    chrono::Duration::from_std(left + Duration::from_secs(5))
        .unwrap_or_else(|_| chrono::Duration::seconds(905))
}

pub(crate) const LEASE_MAX_BYTES: u64 = 4096;

/// Takes the lease for `d` in `dir`: created with a no-replace put, so of
/// two overlapping deliveries exactly one gets it; an expired lease is taken
/// over by one rename only one taker can win (`flows::file_lease`, shared
/// with the backup's run lease).
pub(crate) async fn acquire_lease(
    cx: &ExportContext<'_>,
    store: &dyn FileStore,
    dir: &RemotePath,
    d: &Delivery,
) -> Result<LeaseOutcome, ExportError> {
    let name = lease_name(&d.route, &d.destination, d.node_id);
    let path = dir.join(name.as_bytes())?;
    let now = Utc::now();
    let lease = Lease {
        node_id: d.node_id,
        version: d.version,
        holder: cx.invocation_id.to_owned(),
        nonce: format!("{:016x}", fastrand::u64(..)),
        expires_at: now + lease_ttl(cx),
        published_sha256: None,
    };
    let nonce = lease.nonce.clone();
    match crate::flows::file_lease::acquire(store, &path, lease.clone(), &nonce, now).await? {
        crate::flows::file_lease::Acquired::Held(h) => {
            if let Some(old) = &h.taken_over {
                tracing::warn!(lease = ?old, "took over an expired delivery lease (its holder stopped)");
            }
            Ok(LeaseOutcome::Held(HeldLease {
                path,
                lease,
                taken_over: h.taken_over,
            }))
        }
        crate::flows::file_lease::Acquired::Busy(other) => {
            Ok(LeaseOutcome::Busy(other.unwrap_or(lease)))
        }
    }
}

/// Notes on the lease that the event went out (see [`Lease::published_sha256`]).
pub(crate) async fn mark_published(store: &dyn FileStore, held: &HeldLease, sha256: &str) {
    let mut l = held.lease.clone();
    l.published_sha256 = Some(sha256.to_owned());
    if let Err(e) = store
        .write_small(&held.path, Bytes::from(l.to_bytes()), RenameMode::Replace)
        .await
    {
        tracing::warn!(path = %held.path, error = %e, "cannot note the published event on the lease");
    }
}

/// Removes the lease if it is still ours (best effort: an expired lease left
/// behind only delays the next delivery of this node until it expires).
pub(crate) async fn release_lease(store: &dyn FileStore, held: &HeldLease) {
    match store.read_small(&held.path, LEASE_MAX_BYTES).await {
        Ok(b) if Lease::parse(&b).is_ok_and(|l| l.nonce == held.lease.nonce) => {
            if let Err(e) = store.remove(&held.path).await {
                tracing::warn!(path = %held.path, error = %e, "cannot release the delivery lease");
            }
        }
        Ok(_) => tracing::warn!(path = %held.path, "the delivery lease was taken over meanwhile"),
        Err(e) => {
            tracing::warn!(path = %held.path, error = %e, "cannot read the delivery lease back")
        }
    }
}
