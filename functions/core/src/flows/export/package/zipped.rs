//! Packages as one zip: produced and uploaded concurrently through a bounded
//! channel, in one atomic put.

use super::super::*;
use super::*;

/// Streams a zip package (entries, then `manifest.json`, then the central
/// directory) into one atomic put: produced and uploaded concurrently through
/// a bounded channel, so memory stays constant whatever the package size.
/// A package's final name taken meanwhile (an overlapping invocation for
/// the same event won the rename) is [`ExportError::TargetExists`], which a
/// callback acknowledges as a duplicate, not a failed export.
pub(crate) fn taken_is_target_exists(
    e: ExportError,
    route: &ExportRoute,
    dest: &Destination,
    path: &RemotePath,
) -> ExportError {
    match e {
        ExportError::Store(FileStoreError::AlreadyExists { .. }) => ExportError::TargetExists {
            route: route.name.clone(),
            destination: dest.config.name.clone(),
            path: path.to_string(),
        },
        e => e,
    }
}

pub(crate) async fn write_zip(
    ecm: &dyn Ecm,
    store: &dyn FileStore,
    path: &RemotePath,
    items: &[PackageItem],
    paths: &[String],
    meta: ManifestMeta,
) -> Result<(Vec<PackageEntry>, String), ExportError> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, FileStoreError>>(8);
    let producer = async move {
        let result: Result<(Vec<PackageEntry>, String), ExportError> = async {
            let gone = || {
                ExportError::Store(FileStoreError::Transient {
                    op: "put",
                    path: path.to_string(),
                    reason: "the upload stopped".into(),
                })
            };
            let mut w = zip::ZipWriter::new();
            let mut entries = Vec::with_capacity(items.len());
            for (item, rel) in items.iter().zip(paths) {
                let header = w.begin_entry(rel).map_err(|e| ExportError::InvalidNode {
                    node_id: item.node.get(),
                    reason: e.to_string(),
                })?;
                tx.send(Ok(Bytes::from(header))).await.map_err(|_| gone())?;
                let dl = ecm.download(item.node, Some(item.version)).await?;
                let mut stream = dl.stream;
                let (mut crc, mut sha, mut n) = (zip::Crc32::default(), Sha256::new(), 0u64);
                while let Some(chunk) = stream.next().await {
                    let chunk = chunk.map_err(|e| EcmError::Transient {
                        op: "download",
                        target: format!("node {} version {}", item.node, item.version),
                        detail: e.to_string(),
                    })?;
                    crc.update(&chunk);
                    sha.update(&chunk);
                    n += chunk.len() as u64;
                    w.data(chunk.len() as u64);
                    tx.send(Ok(chunk)).await.map_err(|_| gone())?;
                }
                if let Some(len) = dl.length
                    && len != n
                {
                    return Err(ExportError::Ecm(EcmError::Transient {
                        op: "download",
                        target: format!("node {} version {}", item.node, item.version),
                        detail: format!("received {n} of {len} bytes"),
                    }));
                }
                let descriptor = w.end_entry(crc.finish(), n);
                tx.send(Ok(Bytes::from(descriptor)))
                    .await
                    .map_err(|_| gone())?;
                if entries.is_empty() {
                    fault::hit(fault::Point::PackageMidBuild)?;
                }
                entries.push(PackageEntry {
                    path: rel.clone(),
                    node_id: item.node.get(),
                    name: item.name.clone(),
                    version: item.version,
                    size: n,
                    sha256: hex::encode(sha.finalize()),
                });
            }
            let manifest = PackageManifest {
                format: PACKAGE_MANIFEST_FORMAT.to_owned(),
                package: meta.package,
                route: meta.route,
                root_node_id: meta.root_node_id,
                created_at: meta.created_at,
                entries: entries.clone(),
            }
            .to_json()?;
            let manifest_sha = sha256_hex(manifest.as_bytes());
            let header =
                w.begin_entry(PACKAGE_MANIFEST_NAME)
                    .map_err(|e| ExportError::Unsupported {
                        what: e.to_string(),
                    })?;
            let mut crc = zip::Crc32::default();
            crc.update(manifest.as_bytes());
            let len = manifest.len() as u64;
            w.data(len);
            let descriptor = w.end_entry(crc.finish(), len);
            let end = w.finish();
            fault::hit(fault::Point::PackageBeforeRename)?;
            for block in [header, manifest.into_bytes(), descriptor, end] {
                tx.send(Ok(Bytes::from(block))).await.map_err(|_| gone())?;
            }
            Ok((entries, manifest_sha))
        }
        .await;
        if let Err(e) = &result {
            // Makes the put fail and remove its temporary file.
            let _ = tx.send(Err(FileStoreError::source(path, e))).await;
        }
        result
    };
    let body: ByteStream = Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx));
    let consumer = store.put_atomic(path, body, None, RenameMode::NoReplace);
    let (produced, put) = tokio::join!(producer, consumer);
    match (produced, put) {
        (Ok(out), Ok(_)) => Ok(out),
        // The put failed because the producer did (it passed its error on).
        (Err(e), Ok(_) | Err(FileStoreError::Source { .. })) => Err(e),
        // The put gave up on its own (refused, wrong kind, name taken): its
        // error is the cause, not the producer's "the upload stopped".
        (_, Err(e)) => Err(e.into()),
    }
}
