//! What a classified inbound file becomes in Content Server: the target
//! workspace (how to find or create it), folder path, document name,
//! category values, RM classification, hold, the conflict policy and the
//! transfer-history attributes with the idempotency key.
//!
//! [`plan`] is pure: the flow resolves the plan against the ECM (look up or
//! create the workspace and folders, search the idempotency key, upload) and
//! uses [`resolve_conflict`] when the name is taken.
//!
//! Decisions:
//! - Names and folder segments are rendered from templates, then sanitised
//!   for Content Server ([`cs_name`]); the original file name is kept in the
//!   transfer-history `original_name` attribute when the route maps one, else
//!   in the description.
//! - Transfer-history attributes are written last and win over a rule's own
//!   value for the same key: they are what exactly-once relies on.
//! - `add-version` and `skip-if-identical` skip when the existing document
//!   already has the same SHA-256: a new identical version helps nobody.
//!   `skip-if-identical` with different or unknown content fails (a conflict
//!   a person must look at); it never overwrites.

use std::collections::{BTreeMap, BTreeSet};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::classify::{Classification, Metadata};
use super::names::{CS_NAME_MAX_CHARS, NameError, cs_name, numbered};
use super::route::{CategoryValues, Route, WorkspaceRule};
use super::template::{TemplateContext, TemplateError};
use super::transfer::TransferFacts;

/// What to do when the document name already exists in the target folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ConflictPolicy {
    /// The file becomes the next version of the existing document.
    AddVersion,
    /// Create `name (2).ext`, `name (3).ext`, ...
    Rename,
    /// Skip when the content is identical (same SHA-256), fail otherwise.
    SkipIfIdentical,
    /// Permanent failure.
    #[default]
    Fail,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    #[error("{what}: {source}")]
    Template {
        what: String,
        #[source]
        source: TemplateError,
    },
    #[error("{what}: {source}")]
    Name {
        what: String,
        #[source]
        source: NameError,
    },
}

impl PlacementError {
    /// Missing metadata or unusable names need a corrected file or route.
    pub fn is_retryable(&self) -> bool {
        false
    }
}

/// Category values: category id → attribute key (`{cat}_{attr}`) → value.
pub type CategoryMap = BTreeMap<i64, BTreeMap<String, String>>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkspaceCreate {
    pub template_id: i64,
    pub type_id: i64,
    pub name: String,
    pub parent_id: Option<i64>,
    pub categories: CategoryMap,
}

/// How to find the target workspace, with every template rendered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkspaceTarget {
    BusinessObject {
        type_id: i64,
        ext_system: String,
        bo_type: String,
        bo_id: String,
        create: Option<WorkspaceCreate>,
    },
    Name {
        type_id: i64,
        name: String,
        create: Option<WorkspaceCreate>,
    },
    Node {
        node_id: i64,
    },
}

/// Everything the flow needs to put one file into Content Server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacementPlan {
    pub rule: Option<String>,
    pub workspace: WorkspaceTarget,
    /// Folder names under the workspace, sanitised; empty = the workspace itself.
    pub folder: Vec<String>,
    pub document_name: String,
    pub original_name: String,
    pub description: Option<String>,
    pub mime_type: &'static str,
    /// Rule categories plus transfer history.
    pub categories: CategoryMap,
    pub rm_classification: Option<i64>,
    pub hold: Option<i64>,
    pub on_existing: ConflictPolicy,
    pub idempotency_key: String,
    /// Where the idempotency key lives, to search for it before uploading.
    pub idempotency_attribute: (i64, String),
}

fn render_categories(
    what: &str,
    cats: &[CategoryValues],
    ctx: &TemplateContext,
) -> Result<CategoryMap, PlacementError> {
    let mut out = CategoryMap::new();
    for c in cats {
        let entry = out.entry(c.category_id).or_default();
        for (key, t) in &c.attributes {
            let v = t
                .render_value(ctx)
                .map_err(|source| PlacementError::Template {
                    what: format!("{what} attribute {key}"),
                    source,
                })?;
            entry.insert(key.clone(), v);
        }
    }
    Ok(out)
}

/// Plan the placement of one classified file.
pub fn plan(
    route: &Route,
    classification: &Classification<'_>,
    facts: &TransferFacts,
    meta: &Metadata,
) -> Result<PlacementPlan, PlacementError> {
    let place = classification.place;
    let original_name = facts
        .source_path
        .rsplit('/')
        .next()
        .unwrap_or(&facts.source_path)
        .to_owned();
    let ctx = TemplateContext {
        name: Some(original_name.clone()),
        date: Some(facts.received_at),
        route: Some(route.name().to_owned()),
        captures: classification.captures.clone(),
        meta: meta.clone(),
        transfer: Some(facts.clone()),
        ..TemplateContext::default()
    };
    // `Name`: a Content Server name; `Url`: goes into a URL path (bo_id);
    // `Value`: free text.
    #[derive(Clone, Copy)]
    enum As {
        Name,
        Url,
        Value,
    }
    let tpl = |what: &str, t: &super::template::Template, how: As| {
        match how {
            As::Name => t.render_name(&ctx),
            As::Url => t.render_segment(&ctx),
            As::Value => t.render_value(&ctx),
        }
        .map_err(|source| PlacementError::Template {
            what: what.to_owned(),
            source,
        })
    };
    let sanitise = |what: &str, s: &str| {
        cs_name(s).map_err(|source| PlacementError::Name {
            what: what.to_owned(),
            source,
        })
    };
    let create = |type_id: i64,
                  c: &Option<super::route::CreateWorkspace>|
     -> Result<Option<WorkspaceCreate>, PlacementError> {
        c.as_ref()
            .map(|c| {
                Ok(WorkspaceCreate {
                    template_id: c.template_id,
                    type_id,
                    name: sanitise(
                        "workspace.create.name",
                        &tpl("workspace.create.name", &c.name, As::Name)?,
                    )?,
                    parent_id: c.parent_id,
                    categories: render_categories(
                        "workspace.create.categories",
                        &c.categories,
                        &ctx,
                    )?,
                })
            })
            .transpose()
    };
    let workspace = match &place.workspace {
        WorkspaceRule::BusinessObject {
            type_id,
            ext_system,
            bo_type,
            bo_id,
            create: c,
        } => WorkspaceTarget::BusinessObject {
            type_id: *type_id,
            ext_system: ext_system.clone(),
            bo_type: bo_type.clone(),
            // The id goes into a URL path segment, hence the segment check.
            bo_id: tpl("workspace.bo_id", bo_id, As::Url)?,
            create: create(*type_id, c)?,
        },
        WorkspaceRule::Name {
            type_id,
            name,
            create: c,
        } => WorkspaceTarget::Name {
            type_id: *type_id,
            name: sanitise("workspace.name", &tpl("workspace.name", name, As::Name)?)?,
            create: create(*type_id, c)?,
        },
        WorkspaceRule::Node { node_id } => WorkspaceTarget::Node { node_id: *node_id },
    };
    let folder = place
        .folder
        .render_name_path(&ctx)
        .map_err(|source| PlacementError::Template {
            what: "folder".into(),
            source,
        })?
        .iter()
        .map(|s| sanitise("folder", s))
        .collect::<Result<Vec<_>, _>>()?;
    let document_name = sanitise("name", &tpl("name", &place.name, As::Name)?)?;

    let mut categories = render_categories("categories", &place.categories, &ctx)?;
    let th = &route.config.transfer_history;
    let a = &th.attributes;
    let key = |id: u32| format!("{}_{id}", th.category_id);
    let history = categories.entry(th.category_id).or_default();
    for (id, field) in [
        (a.route, "route"),
        (a.host, "host"),
        (a.source_path, "source_path"),
        (a.size, "size"),
        (a.sha256, "sha256"),
        (a.received_at, "received_at"),
        (a.ingested_at, "ingested_at"),
        (a.invocation_id, "invocation_id"),
        (a.idempotency_key, "idempotency_key"),
    ] {
        if let Some(v) = facts.field(field) {
            history.insert(key(id), v);
        }
    }
    let mut description = place
        .description
        .as_ref()
        .map(|d| tpl("description", d, As::Value))
        .transpose()?;
    match a.original_name {
        Some(id) => {
            history.insert(key(id), original_name.clone());
        }
        None if document_name != original_name => {
            let note = format!("Original file name: {original_name}");
            description = Some(match description {
                Some(d) if !d.is_empty() => format!("{d}\n{note}"),
                _ => note,
            });
        }
        None => {}
    }
    let mime_type = classification
        .detected
        .mime(super::template::split_ext(&original_name).1);
    Ok(PlacementPlan {
        rule: classification.rule.map(str::to_owned),
        workspace,
        folder,
        document_name,
        original_name,
        description,
        mime_type,
        categories,
        rm_classification: place.rm_classification,
        hold: place.hold,
        on_existing: place.on_existing,
        idempotency_key: facts.idempotency_key(),
        idempotency_attribute: (th.category_id, key(a.idempotency_key)),
    })
}

/// A document that already has the wanted name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExistingDocument {
    pub node_id: i64,
    /// From its transfer history, if it has one.
    pub sha256: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConflictAction {
    /// Create a new document with this name.
    Create { name: String },
    /// Add a version to this document.
    AddVersion { node_id: i64 },
    /// Nothing to upload; the file counts as ingested as this node.
    Skip { node_id: i64 },
    /// Permanent failure with this reason.
    Fail { reason: String },
}

/// Decide what to do given the policy and what is already in the folder.
/// `taken` is every name in the target folder (for `rename`).
pub fn resolve_conflict(
    policy: ConflictPolicy,
    name: &str,
    existing: Option<&ExistingDocument>,
    new_sha256: &str,
    taken: &BTreeSet<String>,
) -> ConflictAction {
    let Some(existing) = existing else {
        return ConflictAction::Create {
            name: name.to_owned(),
        };
    };
    let same = existing
        .sha256
        .as_deref()
        .is_some_and(|s| s.eq_ignore_ascii_case(new_sha256));
    match policy {
        ConflictPolicy::AddVersion if same => ConflictAction::Skip {
            node_id: existing.node_id,
        },
        ConflictPolicy::AddVersion => ConflictAction::AddVersion {
            node_id: existing.node_id,
        },
        ConflictPolicy::SkipIfIdentical if same => ConflictAction::Skip {
            node_id: existing.node_id,
        },
        ConflictPolicy::SkipIfIdentical => ConflictAction::Fail {
            reason: match existing.sha256 {
                Some(_) => format!(
                    "{name:?} exists (node {}) with different content",
                    existing.node_id
                ),
                None => format!(
                    "{name:?} exists (node {}) and its SHA-256 is unknown",
                    existing.node_id
                ),
            },
        },
        ConflictPolicy::Rename => {
            // Content Server compares names case-insensitively on most installs.
            let lower: BTreeSet<String> = taken.iter().map(|t| t.to_lowercase()).collect();
            for n in 2..=1000 {
                let candidate = numbered(name, n, CS_NAME_MAX_CHARS);
                if !lower.contains(&candidate.to_lowercase()) {
                    return ConflictAction::Create { name: candidate };
                }
            }
            ConflictAction::Fail {
                reason: format!("{name:?}: no free name among 999 numbered alternatives"),
            }
        }
        ConflictPolicy::Fail => ConflictAction::Fail {
            reason: format!("{name:?} exists (node {})", existing.node_id),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::classify::{Candidate, classify};
    use crate::domain::route::{RouteConfig, tests::sample};
    use chrono::{TimeZone, Utc};
    use serde_json::json;

    const SHA: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
    const PDF: &[u8] = b"%PDF-1.7\n";

    fn route(mutate: impl FnOnce(&mut serde_json::Value)) -> Route {
        let mut v = sample();
        mutate(&mut v);
        serde_json::from_value::<RouteConfig>(v)
            .unwrap()
            .validate()
            .unwrap()
    }

    fn facts(path: &str) -> TransferFacts {
        TransferFacts {
            route: "acme-invoices".into(),
            host: "sftp.acme.example".into(),
            source_path: path.into(),
            size: 9,
            sha256: SHA.into(),
            received_at: Utc
                .with_ymd_and_hms(2026, 2, 28, 23, 59, 0)
                .single()
                .unwrap(),
            ingested_at: Utc.with_ymd_and_hms(2026, 3, 1, 0, 1, 0).single().unwrap(),
            invocation_id: "inv-1".into(),
        }
    }

    fn plan_for(r: &Route, path: &str, meta: &Metadata) -> Result<PlacementPlan, PlacementError> {
        let c = classify(
            r,
            &Candidate {
                rel_path: path,
                size: 9,
                head: PDF,
                meta,
            },
        )
        .unwrap();
        plan(r, &c, &facts(path), meta)
    }

    #[test]
    fn given_invoice_when_planned_then_workspace_folder_name_and_categories_are_rendered() {
        let r = route(|_| {});
        let p = plan_for(&r, "in/INV-4711_ACME.pdf", &Metadata::new()).unwrap();
        assert_eq!(p.rule.as_deref(), Some("invoice"));
        assert_eq!(
            p.workspace,
            WorkspaceTarget::BusinessObject {
                type_id: 310,
                ext_system: "SAP".into(),
                bo_type: "LFA1".into(),
                bo_id: "ACME".into(),
                create: Some(WorkspaceCreate {
                    template_id: 17,
                    type_id: 310,
                    name: "Vendor ACME".into(),
                    parent_id: None,
                    categories: CategoryMap::new(),
                }),
            }
        );
        // Dates come from the received time, not from "now".
        assert_eq!(p.folder, vec!["Invoices", "2026", "02"]);
        assert_eq!(p.document_name, "Invoice 4711.pdf");
        assert_eq!(p.categories[&9100]["9100_2"], "4711");
        assert_eq!(p.categories[&9100]["9100_3"], "2026-02-28T23:59:00Z");
        assert_eq!(p.mime_type, "application/pdf");
        assert_eq!(p.rm_classification, Some(7001));
        assert_eq!(p.on_existing, ConflictPolicy::AddVersion);
    }

    #[test]
    fn given_any_file_when_planned_then_transfer_history_and_idempotency_key_are_attached() {
        let r = route(|_| {});
        let p = plan_for(&r, "in/INV-4711_ACME.pdf", &Metadata::new()).unwrap();
        let h = &p.categories[&9002];
        assert_eq!(h["9002_2"], "acme-invoices");
        assert_eq!(h["9002_3"], "sftp.acme.example");
        assert_eq!(h["9002_4"], "in/INV-4711_ACME.pdf");
        assert_eq!(h["9002_5"], "9");
        assert_eq!(h["9002_6"], SHA);
        assert_eq!(h["9002_8"], "2026-03-01T00:01:00Z");
        assert_eq!(h["9002_9"], "inv-1");
        assert_eq!(h["9002_10"], p.idempotency_key);
        assert_eq!(p.idempotency_attribute, (9002, "9002_10".to_string()));
        assert_eq!(
            p.idempotency_key,
            facts("in/INV-4711_ACME.pdf").idempotency_key()
        );
        // No original_name attribute and the name changed: it goes to the description.
        assert_eq!(
            p.description.as_deref(),
            Some("Original file name: INV-4711_ACME.pdf")
        );
    }

    #[test]
    fn given_meta_with_colon_when_planned_then_names_are_sanitised_and_original_kept() {
        let r = route(|v| {
            v["rules"][0]["place"]["name"] = json!("{meta.title}.{ext}");
            v["rules"][0]["place"]["folder"] = json!("By vendor/{meta.vendor}");
            v["transfer_history"]["attributes"]["original_name"] = json!(11);
        });
        let meta: Metadata = [
            ("title".to_string(), " Re: Offer\t2026 ".to_string()),
            ("vendor".to_string(), "ACME: EU".to_string()),
        ]
        .into();
        let p = plan_for(&r, "INV-1_A.pdf", &meta).unwrap();
        assert_eq!(p.document_name, "Re_ Offer2026 .pdf");
        assert_eq!(p.folder, vec!["By vendor", "ACME_ EU"]);
        assert_eq!(p.categories[&9002]["9002_11"], "INV-1_A.pdf");
        assert_eq!(p.description, None);
    }

    #[test]
    fn given_missing_metadata_or_path_in_capture_when_planned_then_permanent_error() {
        let r = route(|v| v["rules"][0]["place"]["name"] = json!("{meta.title}.pdf"));
        let e = plan_for(&r, "INV-1_A.pdf", &Metadata::new()).unwrap_err();
        assert!(
            matches!(e, PlacementError::Template { ref what, .. } if what == "name"),
            "{e}"
        );
        assert!(!e.is_retryable());
        let r = route(|v| {
            v["rules"][0]["match"] = json!({"regex": "(?P<ws>.+)--.*\\.pdf", "on": "path"});
            v["rules"][0]["place"] = json!({"workspace": {"by": "business_object", "type_id": 310,
                "ext_system": "SAP", "bo_type": "LFA1", "bo_id": "{ws}"}});
        });
        let e = plan_for(&r, "a/../b--x.pdf", &Metadata::new()).unwrap_err();
        assert!(e.to_string().contains("workspace.bo_id"), "{e}");
    }

    #[test]
    fn given_each_policy_when_name_exists_then_action_follows_policy_and_content() {
        let same = ExistingDocument {
            node_id: 7,
            sha256: Some(SHA.to_uppercase()),
        };
        let other = ExistingDocument {
            node_id: 7,
            sha256: Some("00".repeat(32)),
        };
        let unknown = ExistingDocument {
            node_id: 7,
            sha256: None,
        };
        let none = BTreeSet::new();
        use ConflictAction::{AddVersion, Create, Fail, Skip};
        use ConflictPolicy as P;
        assert_eq!(
            resolve_conflict(P::Fail, "a.pdf", None, SHA, &none),
            Create {
                name: "a.pdf".into()
            }
        );
        assert_eq!(
            resolve_conflict(P::AddVersion, "a.pdf", Some(&other), SHA, &none),
            AddVersion { node_id: 7 }
        );
        assert_eq!(
            resolve_conflict(P::AddVersion, "a.pdf", Some(&same), SHA, &none),
            Skip { node_id: 7 }
        );
        assert_eq!(
            resolve_conflict(P::SkipIfIdentical, "a.pdf", Some(&same), SHA, &none),
            Skip { node_id: 7 }
        );
        assert!(matches!(
            resolve_conflict(P::SkipIfIdentical, "a.pdf", Some(&other), SHA, &none),
            Fail { .. }
        ));
        assert!(
            matches!(resolve_conflict(P::SkipIfIdentical, "a.pdf", Some(&unknown), SHA, &none), Fail { ref reason } if reason.contains("unknown"))
        );
        assert!(matches!(
            resolve_conflict(P::Fail, "a.pdf", Some(&same), SHA, &none),
            Fail { .. }
        ));
    }

    #[test]
    fn given_rename_policy_when_numbered_names_taken_then_first_free_case_insensitive() {
        let taken: BTreeSet<String> = ["a.pdf", "A (2).PDF", "a (3).pdf"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let ex = ExistingDocument {
            node_id: 1,
            sha256: None,
        };
        assert_eq!(
            resolve_conflict(ConflictPolicy::Rename, "a.pdf", Some(&ex), SHA, &taken),
            ConflictAction::Create {
                name: "a (4).pdf".into()
            }
        );
    }
}
