//! Packages as a directory: built under a dot-name, the manifest last, then
//! renamed into place in one step; a failed build removes what it wrote.

use super::super::*;
use super::*;

/// Builds the package `package` in `dir` and publishes it.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn write_directory(
    cx: &ExportContext<'_>,
    route: &ExportRoute,
    dest: &Destination,
    node: i64,
    store: &dyn FileStore,
    dir: &RemotePath,
    package: String,
    now: DateTime<Utc>,
    items: Vec<PackageItem>,
    skipped: Skipped,
) -> Result<PackageReport, ExportError> {
    let final_path = dir.join(package.as_bytes())?;
    if store.try_stat(&final_path).await?.is_some() {
        return Err(ExportError::TargetExists {
            route: route.name.clone(),
            destination: dest.config.name.clone(),
            path: final_path.to_string(),
        });
    }
    // Built under a dot-name (ignored by well-behaved pollers), renamed at the
    // end: the package appears complete or not at all.
    let suffix: String = cx
        .invocation_id
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(12)
        .collect();
    // Random too: Lambda retries an invocation under the same id, and a
    // killed attempt's leftovers must not make every retry fail.
    let tmp =
        dir.join(format!(".{package}.partial-{suffix}-{:08x}", fastrand::u32(..)).as_bytes())?;
    cx.check_deadline(|| format!("package {final_path}"))?;
    store.mkdir_all(&tmp).await?;
    let paths = entry_paths(&items.iter().map(|i| i.names.clone()).collect::<Vec<_>>());
    let mut entries = Vec::with_capacity(items.len());
    let mut written = Vec::new();
    let result: Result<(), ExportError> = async {
        for (item, rel) in items.iter().zip(&paths) {
            cx.check_deadline(|| format!("package entry {rel} (package not published)"))?;
            let mut target = tmp.clone();
            for seg in rel.split('/') {
                target = target.join(seg.as_bytes())?;
            }
            if let Some(parent) = target.parent() {
                store.mkdir_all(&parent).await?;
            }
            let receipt = stream_version(
                cx.ecm,
                store,
                item.node,
                item.version,
                &target,
                RenameMode::NoReplace,
            )
            .await?;
            written.push(target);
            if written.len() == 1 {
                fault::hit(fault::Point::PackageMidBuild)?;
            }
            entries.push(PackageEntry {
                path: rel.clone(),
                node_id: item.node.get(),
                name: item.name.clone(),
                version: item.version,
                size: receipt.size,
                sha256: receipt.sha256,
            });
        }
        Ok(())
    }
    .await;
    let manifest_result = match result {
        Ok(()) => {
            let manifest = PackageManifest {
                format: PACKAGE_MANIFEST_FORMAT.to_owned(),
                package: package.clone(),
                route: route.name.clone(),
                root_node_id: node,
                created_at: now,
                entries: entries.clone(),
            };
            match manifest.to_json() {
                Ok(text) => {
                    let sha = sha256_hex(text.as_bytes());
                    let mpath = tmp.join(PACKAGE_MANIFEST_NAME.as_bytes())?;
                    match store
                        .write_small(&mpath, Bytes::from(text), RenameMode::NoReplace)
                        .await
                    {
                        Ok(_) => {
                            written.push(mpath);
                            fault::hit(fault::Point::PackageBeforeRename)?;
                            match store.rename(&tmp, &final_path, RenameMode::NoReplace).await {
                                Ok(()) => Ok(sha),
                                Err(e) => {
                                    Err(taken_is_target_exists(e.into(), route, dest, &final_path))
                                }
                            }
                        }
                        Err(e) => Err(e.into()),
                    }
                }
                Err(e) => Err(e.into()),
            }
        }
        Err(e) => Err(e),
    };
    let manifest_sha256 = match manifest_result {
        Ok(sha) => sha,
        Err(e) => {
            // Best effort: the files go, then the temporary directories
            // (deepest first; one that is not empty stays, under a dot-name
            // no partner picks up).
            for p in written.iter().rev() {
                if let Err(re) = store.remove(p).await {
                    tracing::warn!(path = %p, error = %re, "cannot remove a partial package file");
                }
            }
            // Every directory under the temporary root, including those made
            // for entries that never arrived.
            let mut dirs = vec![tmp.clone()];
            let mut i = 0;
            while i < dirs.len() {
                if let Ok(entries) = store.list(&dirs[i]).await {
                    dirs.extend(
                        entries
                            .into_iter()
                            .filter(|e| e.meta.kind == EntryKind::Dir)
                            .map(|e| e.path),
                    );
                }
                i += 1;
            }
            dirs.sort_by_key(|d| std::cmp::Reverse(d.as_bytes().len()));
            for d in dirs {
                if let Err(re) = store.remove_dir(&d).await {
                    tracing::debug!(dir = %d, error = %re, "partial package directory kept");
                }
            }
            return Err(e);
        }
    };
    let manifest = format!("{final_path}/{PACKAGE_MANIFEST_NAME}");
    finish_package(
        cx,
        route,
        dest,
        node,
        final_path,
        manifest,
        entries,
        manifest_sha256,
        skipped,
    )
    .await
}
