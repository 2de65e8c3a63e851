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

/// Takes the lease for `d` in `dir`: created with a no-replace rename, so of
/// two overlapping deliveries exactly one gets it. An expired lease is moved
/// aside (one rename, which only one taker can win) and checked to be the
/// one that was read before it is dropped.
pub(crate) async fn acquire_lease(
    cx: &ExportContext<'_>,
    store: &dyn FileStore,
    dir: &RemotePath,
    d: &Delivery,
) -> Result<LeaseOutcome, ExportError> {
    let name = lease_name(&d.route, &d.destination, d.node_id);
    let path = dir.join(name.as_bytes())?;
    let lease = Lease {
        node_id: d.node_id,
        version: d.version,
        holder: cx.invocation_id.to_owned(),
        nonce: format!("{:016x}", fastrand::u64(..)),
        expires_at: Utc::now() + lease_ttl(cx),
        published_sha256: None,
    };
    let mut taken_over = None;
    for _ in 0..3 {
        match store
            .write_small(&path, Bytes::from(lease.to_bytes()), RenameMode::NoReplace)
            .await
        {
            Ok(_) => {
                return Ok(LeaseOutcome::Held(HeldLease {
                    path,
                    lease,
                    taken_over,
                }));
            }
            Err(FileStoreError::AlreadyExists { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        let seen = match store.read_small(&path, LEASE_MAX_BYTES).await {
            Ok(b) => b,
            // Released meanwhile: try again.
            Err(FileStoreError::NotFound { .. }) => continue,
            Err(e) => return Err(e.into()),
        };
        let other = Lease::parse(&seen);
        if let Ok(o) = &other
            && !o.is_expired(Utc::now())
        {
            return Ok(LeaseOutcome::Busy(o.clone()));
        }
        // Expired (or not a lease at all: nothing of ours writes anything
        // else under that name).
        let aside = dir.join(format!("{name}.stale-{}", lease.nonce).as_bytes())?;
        match store.rename(&path, &aside, RenameMode::NoReplace).await {
            Ok(()) => {}
            Err(FileStoreError::NotFound { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
        let moved = store.read_small(&aside, LEASE_MAX_BYTES).await?;
        if moved != seen {
            // Another taker replaced the stale lease between our read and
            // our rename: that one is live. Put it back.
            if let Err(e) = store.rename(&aside, &path, RenameMode::NoReplace).await {
                tracing::warn!(path = %aside, error = %e, "cannot put a live lease back");
            }
            return Ok(LeaseOutcome::Busy(
                Lease::parse(&moved).unwrap_or_else(|_| lease.clone()),
            ));
        }
        if let Err(e) = store.remove(&aside).await {
            tracing::warn!(path = %aside, error = %e, "cannot remove a stale lease");
        }
        tracing::warn!(lease = ?other.as_ref().ok(), "took over an expired delivery lease (its holder stopped)");
        taken_over = other.ok();
    }
    Ok(LeaseOutcome::Busy(lease))
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
