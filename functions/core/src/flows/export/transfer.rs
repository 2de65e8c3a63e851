//! The transfer: a version's download opened (its size checked against the
//! version's), read ahead on a task of its own and streamed into an atomic
//! SFTP put that hashes on the way; SHA-256 helpers for both sides.

use super::*;

pub(crate) fn remote_path(
    store: &dyn FileStore,
    segments: &[String],
) -> Result<RemotePath, PathError> {
    let mut p = store.root().path();
    for s in segments {
        p = p.join(s.as_bytes())?;
    }
    Ok(p)
}

pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A version's download, opened, with the length it must have.
pub(crate) struct VersionSource {
    pub(crate) download: crate::ports::ecm::Download,
    pub(crate) expected_len: Option<u64>,
}

/// Opens the download of `version` of `node` (response headers received).
pub(crate) async fn open_version(
    ecm: &dyn Ecm,
    node: NodeId,
    version: u32,
) -> Result<VersionSource, ExportError> {
    let expected = ecm
        .versions(node)
        .await?
        .into_iter()
        .find(|v| v.number == version)
        .map(|v| v.size);
    let download = ecm.download(node, Some(version)).await?;
    // The version's recorded size is the contract; the HTTP length must agree.
    let expected_len = match (expected, download.length) {
        (Some(a), Some(b)) if a != b => {
            return Err(ExportError::Ecm(EcmError::Transient {
                op: "download",
                target: format!("node {node} version {version}"),
                detail: format!("Content-Length {b} differs from the version size {a}"),
            }));
        }
        (Some(a), _) => Some(a),
        (None, b) => b,
    };
    Ok(VersionSource {
        download,
        expected_len,
    })
}

/// Streams an opened version into `path` atomically.
pub(crate) async fn put_version(
    store: &dyn FileStore,
    source: VersionSource,
    path: &RemotePath,
    mode: RenameMode,
) -> Result<crate::ports::file_store::PutReceipt, ExportError> {
    let p = path.clone();
    let body: ByteStream = Box::pin(
        source
            .download
            .stream
            .map(move |r| r.map_err(|e| FileStoreError::source(&p, e))),
    );
    Ok(store
        .put_atomic(
            path,
            with_upload_faults(read_ahead(body), path),
            source.expected_len,
            mode,
        )
        .await?)
}

/// The upload's fault points (see [`fault`]): after its first chunk and
/// after its last one, before the put renames. Nothing in a release build.
pub(crate) fn with_upload_faults(body: ByteStream, path: &RemotePath) -> ByteStream {
    if cfg!(not(debug_assertions)) {
        return body;
    }
    let (p1, p2) = (path.clone(), path.clone());
    let mut first = true;
    let body = body.map(move |r| {
        if r.is_ok() && std::mem::take(&mut first) {
            fault::hit(fault::Point::MidUpload).map_err(|e| FileStoreError::source(&p1, e))?;
        }
        r
    });
    let tail = futures_util::stream::once(async move { fault::hit(fault::Point::AfterUpload) })
        .filter_map(move |r| {
            let p2 = p2.clone();
            async move { r.err().map(|e| Err(FileStoreError::source(&p2, e))) }
        });
    Box::pin(body.chain(tail))
}

/// Streams a version from the ECM into `path` atomically.
pub(crate) async fn stream_version(
    ecm: &dyn Ecm,
    store: &dyn FileStore,
    node: NodeId,
    version: u32,
    path: &RemotePath,
    mode: RenameMode,
) -> Result<crate::ports::file_store::PutReceipt, ExportError> {
    let source = open_version(ecm, node, version).await?;
    put_version(store, source, path, mode).await
}

/// Chunks of the ECM download kept ready for the SFTP writer.
pub(crate) const DOWNLOAD_AHEAD: usize = 8;

/// Reads `body` on a task of its own, up to [`DOWNLOAD_AHEAD`] chunks ahead
/// of the consumer. An HTTP/1 response body is read from the socket only
/// when asked for its next chunk; read inline, each chunk cost the writer a
/// hand-off to the connection task and back, and the writer was idle for a
/// third of a large export waiting on them.
pub(crate) fn read_ahead(mut body: ByteStream) -> ByteStream {
    let (tx, rx) = tokio::sync::mpsc::channel(DOWNLOAD_AHEAD);
    tokio::spawn(async move {
        while let Some(item) = body.next().await {
            let stop = item.is_err();
            // A closed channel: the writer stopped (it reports why).
            if tx.send(item).await.is_err() || stop {
                break;
            }
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// SHA-256 of a version's content in the ECM, streamed.
pub(crate) async fn version_sha256(
    ecm: &dyn Ecm,
    id: NodeId,
    version: u32,
) -> Result<String, ExportError> {
    let dl = ecm.download(id, Some(version)).await?;
    let mut hasher = Sha256::new();
    let mut s = dl.stream;
    while let Some(chunk) = s.next().await {
        let chunk = chunk.map_err(|e| EcmError::Transient {
            op: "download",
            target: format!("node {id} version {version}"),
            detail: e.to_string(),
        })?;
        hasher.update(&chunk);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// SHA-256 of a remote file, streamed (constant memory).
pub(crate) async fn remote_sha256(
    store: &dyn FileStore,
    path: &RemotePath,
) -> Result<String, ExportError> {
    let mut h = store.open_read(path).await?;
    let mut hasher = Sha256::new();
    while let Some(chunk) = h.body.next().await {
        hasher.update(&chunk?);
    }
    Ok(hex::encode(hasher.finalize()))
}
