//! Packages: a folder or workspace subtree delivered as a directory or a zip
//! with a manifest, made visible atomically.

use super::*;

mod collect;
mod directory;
mod finish;
mod zipped;

pub(crate) use collect::*;
pub(crate) use directory::*;
pub(crate) use finish::*;
pub(crate) use zipped::*;

/// Manual (or webhook-named) package export of a folder or workspace.
#[tracing::instrument(skip(cx))]
pub async fn export_package(
    cx: &ExportContext<'_>,
    node: i64,
    route_name: &str,
    package_name: Option<&str>,
    format: Option<PackageFormat>,
) -> Result<PackageReport, ExportError> {
    let id = node_id(node)?;
    let route = cx
        .routes
        .routes
        .iter()
        .find(|r| r.name == route_name)
        .ok_or_else(|| ExportError::UnknownRoute {
            route: route_name.to_owned(),
        })?;
    let (mut facts, root, _) = read_facts(cx.ecm, id, &route_workspace_types(cx.routes)).await?;
    if !root.is_container() {
        return Err(ExportError::InvalidNode {
            node_id: node,
            reason: "a package needs a folder or workspace".into(),
        });
    }
    // The root counts as "under itself" for destination rules on a folder.
    facts.ancestors.insert(0, node);
    let dest = pick_destination(route, &facts).ok_or_else(|| ExportError::NotApproved {
        node_id: node,
        reasons: format!("{route_name}: no destination rule matches the package root"),
    })?;
    let format = format.unwrap_or(dest.config.package);
    let now = Utc::now();
    let ctx = TemplateContext {
        name: Some(root.name.clone()),
        date: Some(now),
        node_id: Some(node),
        route: Some(route.name.clone()),
        categories: facts.categories.clone(),
        ..TemplateContext::default()
    };
    let dir_segments: Vec<String> = dest
        .directory
        .render_path(&ctx)?
        .iter()
        .map(|s| sftp_safe_name(s))
        .collect();
    let package = sftp_safe_name(package_name.unwrap_or(&root.name));
    let (items, skipped) = collect_package(cx, route, id).await?;
    if items.is_empty() {
        return Err(ExportError::NotApproved {
            node_id: node,
            reasons: format!(
                "no approved documents under the node ({} skipped)",
                skipped.total
            ),
        });
    }
    let store = cx.destinations.store(&dest.config.sftp_secret).await?;
    let dir = remote_path(store.as_ref(), &dir_segments)?;
    if format == PackageFormat::Zip {
        let zip_path = dir.join(format!("{package}.zip").as_bytes())?;
        if store.try_stat(&zip_path).await?.is_some() {
            return Err(ExportError::TargetExists {
                route: route.name.clone(),
                destination: dest.config.name.clone(),
                path: zip_path.to_string(),
            });
        }
        cx.check_deadline(|| format!("zip package {zip_path}"))?;
        store.mkdir_all(&dir).await?;
        let paths = entry_paths(&items.iter().map(|i| i.names.clone()).collect::<Vec<_>>());
        let meta = ManifestMeta {
            package: package.clone(),
            route: route.name.clone(),
            root_node_id: node,
            created_at: now,
        };
        let (entries, manifest_sha256) =
            write_zip(cx.ecm, store.as_ref(), &zip_path, &items, &paths, meta)
                .await
                .map_err(|e| taken_is_target_exists(e, route, dest, &zip_path))?;
        let manifest = format!("{zip_path}:{PACKAGE_MANIFEST_NAME}");
        return finish_package(
            cx,
            route,
            dest,
            node,
            zip_path,
            manifest,
            entries,
            manifest_sha256,
            skipped,
        )
        .await;
    }
    write_directory(
        cx,
        route,
        dest,
        node,
        store.as_ref(),
        &dir,
        package,
        now,
        items,
        skipped,
    )
    .await
}

/// What `manifest.json` says about the package itself.
pub(crate) struct ManifestMeta {
    pub(crate) package: String,
    pub(crate) route: String,
    pub(crate) root_node_id: i64,
    pub(crate) created_at: DateTime<Utc>,
}
