//! The repository model: nodes, versions, categories, classifications, holds
//! and audit, with the rules a real Content Server enforces. Pure data and
//! checks; no HTTP and no file I/O (content bytes live in `content.rs`).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::seed::{AttrType, AttributeDef, CategoryDef, Seed};

pub const TYPE_FOLDER: i64 = 0;
pub const TYPE_DOCUMENT: i64 = 144;
pub const TYPE_WORKSPACE: i64 = 848;
pub const TYPE_VOLUME_ENTERPRISE: i64 = 141;

/// Enterprise volume node id on most installs.
pub const ENTERPRISE_ID: i64 = 2000;
/// Longest node name a real server accepts.
pub const MAX_NAME_CHARS: usize = 248;

/// Volumes the emulator has: (volume type, node id, name).
const VOLUMES: &[(i64, i64, &str)] = &[
    (
        TYPE_VOLUME_ENTERPRISE,
        ENTERPRISE_ID,
        "Enterprise Workspace",
    ),
    (133, 2003, "Categories Volume"),
    (550, 2005, "Records Management"),
    (862, 2006, "Business Workspaces"),
];

/// Audit event ids and names. The names follow Content Server's audit
/// vocabulary; the numeric ids are *unverified* and kept here only.
pub mod audit_event {
    pub const CREATE: (i64, &str) = (1, "Create");
    pub const ADD_VERSION: (i64, &str) = (3, "Add Version");
    pub const FETCH: (i64, &str) = (8, "Fetch");
    pub const CATEGORY_CHANGE: (i64, &str) = (26, "Attribute Value Changed");
    pub const CATEGORY_ADDED: (i64, &str) = (27, "Category Added");
    pub const CLASSIFY: (i64, &str) = (264, "RM Classification Assigned");
    pub const HOLD: (i64, &str) = (265, "Hold Applied");
    pub const RENAME: (i64, &str) = (12, "Rename");
    pub const MOVE: (i64, &str) = (13, "Move");
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Version {
    pub number: i64,
    pub file_name: String,
    pub file_size: u64,
    pub mime_type: String,
    pub description: String,
    pub create_date: DateTime<Utc>,
    pub create_user_id: i64,
    /// File name inside the content directory.
    pub content: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkspaceRef {
    pub type_id: i64,
    pub template_id: i64,
    pub ext_system_id: Option<String>,
    pub bo_type: Option<String>,
    pub bo_id: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Node {
    pub id: i64,
    pub parent_id: i64,
    pub name: String,
    pub node_type: i64,
    pub description: String,
    pub create_date: DateTime<Utc>,
    pub modify_date: DateTime<Utc>,
    pub create_user_id: i64,
    #[serde(default)]
    pub versions: Vec<Version>,
    /// category id → attribute key → value.
    #[serde(default)]
    pub categories: BTreeMap<i64, BTreeMap<String, Value>>,
    #[serde(default)]
    pub rm_classifications: Vec<i64>,
    #[serde(default)]
    pub holds: Vec<i64>,
    #[serde(default)]
    pub workspace: Option<WorkspaceRef>,
    #[serde(default)]
    pub volume_type: Option<i64>,
}

impl Node {
    pub fn is_container(&self) -> bool {
        self.node_type != TYPE_DOCUMENT
    }

    pub fn latest_version(&self) -> Option<&Version> {
        self.versions.last()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditEvent {
    pub id: i64,
    pub node_id: i64,
    pub event_type: i64,
    pub audit_name: String,
    pub audit_date: DateTime<Utc>,
    pub user_id: i64,
}

/// An approval that the callback sender must report.
#[derive(Debug, Clone, PartialEq)]
pub struct Approval {
    pub node_id: i64,
    pub version: i64,
    pub category_id: i64,
    pub attribute: String,
    pub value: String,
}

/// Category values as they arrive: attribute key → one or more values.
pub type RawValues = Vec<(String, Vec<Value>)>;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Model {
    pub seed: Seed,
    pub nodes: BTreeMap<i64, Node>,
    pub audit: Vec<AuditEvent>,
    pub next_id: i64,
    pub next_audit_id: i64,
    /// Derived from `nodes`, never persisted: rebuilt on load.
    #[serde(skip)]
    index: NodeIndex,
    /// What changed since the state was last persisted.
    #[serde(skip)]
    changes: Changes,
}

/// The lookups a real Content Server answers from its database indexes: the
/// children of a container in listing order, by name, and the business
/// workspaces. Without it every create, name check, listing page and folder
/// size scanned the whole repository, so a folder of 16,000 documents made
/// each upload cost as much as the repository is large.
#[derive(Debug, Clone, Default)]
struct NodeIndex {
    /// Parent id → (lowercase name, id), the order listings use.
    children: HashMap<i64, BTreeSet<(String, i64)>>,
    workspaces: BTreeSet<i64>,
}

impl NodeIndex {
    fn insert(&mut self, parent: i64, name: &str, id: i64) {
        self.children
            .entry(parent)
            .or_default()
            .insert((name.to_lowercase(), id));
    }

    fn remove(&mut self, parent: i64, name: &str, id: i64) {
        if let Some(set) = self.children.get_mut(&parent) {
            set.remove(&(name.to_lowercase(), id));
            if set.is_empty() {
                self.children.remove(&parent);
            }
        }
    }

    fn children(&self, parent: i64) -> impl Iterator<Item = i64> + '_ {
        self.children
            .get(&parent)
            .into_iter()
            .flatten()
            .map(|(_, id)| *id)
    }

    /// Ids of the children whose name lowercases to `name`'s lowercase.
    fn named(&self, parent: i64, name: &str) -> impl Iterator<Item = i64> + '_ {
        let lc = name.to_lowercase();
        self.children.get(&parent).into_iter().flat_map(move |set| {
            set.range((lc.clone(), i64::MIN)..=(lc.clone(), i64::MAX))
                .map(|(_, id)| *id)
        })
    }
}

/// Nodes changed or removed since the last save, and whether anything else
/// (the seed: users, definitions) changed, which needs a full snapshot.
#[derive(Debug, Clone, Default)]
pub struct Changes {
    pub nodes: BTreeSet<i64>,
    pub full: bool,
}

/// CS date format: ISO 8601 without zone.
pub fn cs_date(d: &DateTime<Utc>) -> String {
    d.format("%Y-%m-%dT%H:%M:%S").to_string()
}

/// Trim and check a node name the way a real server does.
pub fn check_name(name: &str) -> Result<String, ApiError> {
    let name = name.trim();
    if name.is_empty() {
        return Err(ApiError::bad_request("The name must not be empty."));
    }
    if name.contains(':') {
        return Err(ApiError::bad_request(format!(
            "The name '{name}' contains the character ':' which is not allowed."
        )));
    }
    let chars = name.chars().count();
    if chars > MAX_NAME_CHARS {
        return Err(ApiError::bad_request(format!(
            "The name is {chars} characters long; at most {MAX_NAME_CHARS} are allowed."
        )));
    }
    Ok(name.to_string())
}

impl Model {
    /// A fresh repository built from a seed.
    pub fn from_seed(seed: Seed) -> Result<Model, String> {
        let now = Utc::now();
        let admin = seed.users.first().map(|u| u.id).unwrap_or(1000);
        let mut model = Model {
            seed: seed.clone(),
            nodes: BTreeMap::new(),
            audit: Vec::new(),
            next_id: 100_000,
            next_audit_id: 1,
            index: NodeIndex::default(),
            changes: Changes {
                full: true,
                ..Changes::default()
            },
        };
        let put = |m: &mut Model, id: i64, parent: i64, name: &str, t: i64| -> Result<(), String> {
            if m.nodes.contains_key(&id) {
                return Err(format!("seed id {id} ('{name}') is used twice"));
            }
            m.nodes.insert(
                id,
                Node {
                    id,
                    parent_id: parent,
                    name: name.to_string(),
                    node_type: t,
                    description: String::new(),
                    create_date: now,
                    modify_date: now,
                    create_user_id: admin,
                    versions: Vec::new(),
                    categories: BTreeMap::new(),
                    rm_classifications: Vec::new(),
                    holds: Vec::new(),
                    workspace: None,
                    volume_type: None,
                },
            );
            Ok(())
        };
        for (vt, id, name) in VOLUMES {
            put(&mut model, *id, -1, name, *vt)?;
            if let Some(n) = model.nodes.get_mut(id) {
                n.volume_type = Some(*vt);
            }
        }
        for f in &seed.folders {
            if !model.nodes.contains_key(&f.parent_id) {
                return Err(format!(
                    "seed folder {} has unknown parent {}",
                    f.id, f.parent_id
                ));
            }
            put(&mut model, f.id, f.parent_id, &f.name, TYPE_FOLDER)?;
        }
        for c in &seed.categories {
            put(&mut model, c.id, 2003, &c.name, 131)?;
        }
        for w in &seed.workspaces {
            let wt = seed
                .workspace_types
                .iter()
                .find(|t| t.id == w.type_id)
                .ok_or_else(|| format!("seed workspace {} has unknown type {}", w.id, w.type_id))?;
            let parent = w.parent_id.unwrap_or(wt.location_id);
            if !model.nodes.contains_key(&parent) {
                return Err(format!(
                    "seed workspace {} has unknown parent {parent}",
                    w.id
                ));
            }
            put(&mut model, w.id, parent, &w.name, TYPE_WORKSPACE)?;
            if let Some(n) = model.nodes.get_mut(&w.id) {
                n.workspace = Some(WorkspaceRef {
                    type_id: w.type_id,
                    template_id: w.template_id,
                    ext_system_id: w.ext_system_id.clone(),
                    bo_type: w.bo_type.clone(),
                    bo_id: w.bo_id.clone(),
                });
            }
            for (i, folder) in w.folders.iter().enumerate() {
                let fid = w.id * 100 + i as i64 + 1;
                put(&mut model, fid, w.id, folder, TYPE_FOLDER)?;
            }
        }
        model.rebuild_index();
        for w in &seed.workspaces {
            let values: RawValues = w
                .category_values
                .iter()
                .map(|(k, v)| match v {
                    Value::Array(vs) => (k.clone(), vs.clone()),
                    v => (k.clone(), vec![v.clone()]),
                })
                .collect();
            model
                .assign_type_category(w.id, w.type_id, &values, admin)
                .map_err(|e| format!("seed workspace {}: {}", w.id, e.message))?;
        }
        model.audit.clear();
        model.next_audit_id = 1;
        Ok(model)
    }

    /// Builds the derived lookups from `nodes` (after loading a saved state).
    pub fn rebuild_index(&mut self) {
        let mut index = NodeIndex::default();
        for n in self.nodes.values() {
            index.insert(n.parent_id, &n.name, n.id);
            if n.workspace.is_some() {
                index.workspaces.insert(n.id);
            }
        }
        self.index = index;
    }

    /// Takes the record of what changed since the last call (for saving).
    pub fn take_changes(&mut self) -> Changes {
        std::mem::take(&mut self.changes)
    }

    /// Marks a change outside the nodes (users, definitions): the next save
    /// writes a full snapshot.
    pub fn mark_full_change(&mut self) {
        self.changes.full = true;
    }

    pub fn node(&self, id: i64) -> Result<&Node, ApiError> {
        self.nodes
            .get(&id)
            .ok_or_else(|| ApiError::not_found(format!("Node {id} does not exist.")))
    }

    /// A node to change. Its name, parent and workspace reference must only
    /// change through the methods that keep the index (`update_node`,
    /// `set_workspace`).
    pub fn node_mut(&mut self, id: i64) -> Result<&mut Node, ApiError> {
        self.changes.nodes.insert(id);
        self.nodes
            .get_mut(&id)
            .ok_or_else(|| ApiError::not_found(format!("Node {id} does not exist.")))
    }

    pub fn volume_node(&self, volume_type: i64) -> Result<&Node, ApiError> {
        VOLUMES
            .iter()
            .filter(|(vt, _, _)| *vt == volume_type)
            .find_map(|(_, id, _)| self.nodes.get(id))
            .filter(|n| n.volume_type == Some(volume_type))
            .ok_or_else(|| {
                ApiError::not_found(format!("Volume type {volume_type} does not exist."))
            })
    }

    /// Children sorted by name, as a real server lists them by default.
    pub fn children(&self, parent: i64) -> Vec<&Node> {
        self.children_where(parent, |_| true)
    }

    /// The children that pass `keep`, sorted by name (case-insensitive, then
    /// id). Filtering before sorting and one lowercase key per node keep an
    /// exact-name lookup in a folder of thousands cheap.
    pub fn children_where(&self, parent: i64, keep: impl Fn(&Node) -> bool) -> Vec<&Node> {
        self.index
            .children(parent)
            .filter_map(|id| self.nodes.get(&id))
            .filter(|n| keep(n))
            .collect()
    }

    pub fn child_count(&self, parent: i64) -> usize {
        self.index.children.get(&parent).map_or(0, BTreeSet::len)
    }

    pub fn audit(&mut self, node_id: i64, event: (i64, &str), user_id: i64) {
        let id = self.next_audit_id;
        self.next_audit_id += 1;
        self.audit.push(AuditEvent {
            id,
            node_id,
            event_type: event.0,
            audit_name: event.1.to_string(),
            audit_date: Utc::now(),
            user_id,
        });
    }

    fn check_unique(&self, parent: i64, name: &str, except: Option<i64>) -> Result<(), ApiError> {
        let clash = self
            .index
            .named(parent, name)
            .filter_map(|id| self.nodes.get(&id))
            .any(|n| n.name == name && Some(n.id) != except);
        if clash {
            return Err(ApiError::internal(format!(
                "An item with the name '{name}' already exists."
            )));
        }
        Ok(())
    }

    /// Checks everything a create would refuse, without creating.
    pub fn check_create(&self, parent_id: i64, name: &str) -> Result<String, ApiError> {
        let parent = self.node(parent_id)?;
        if !parent.is_container() {
            return Err(ApiError::bad_request(format!(
                "Node {parent_id} is not a container."
            )));
        }
        let name = check_name(name)?;
        self.check_unique(parent_id, &name, None)?;
        Ok(name)
    }

    /// Creates a node (folder, document shell, workspace) and audits it.
    pub fn create_node(
        &mut self,
        parent_id: i64,
        node_type: i64,
        name: &str,
        description: &str,
        user_id: i64,
    ) -> Result<i64, ApiError> {
        let name = self.check_create(parent_id, name)?;
        let now = Utc::now();
        // Seeded ids may lie in the run-time range; skip them.
        while self.nodes.contains_key(&self.next_id) {
            self.next_id += 1;
        }
        let id = self.next_id;
        self.next_id += 1;
        self.index.insert(parent_id, &name, id);
        self.nodes.insert(
            id,
            Node {
                id,
                parent_id,
                name,
                node_type,
                description: description.to_string(),
                create_date: now,
                modify_date: now,
                create_user_id: user_id,
                versions: Vec::new(),
                categories: BTreeMap::new(),
                rm_classifications: Vec::new(),
                holds: Vec::new(),
                workspace: None,
                volume_type: None,
            },
        );
        self.changes.nodes.insert(id);
        self.touch(parent_id);
        self.audit(id, audit_event::CREATE, user_id);
        Ok(id)
    }

    fn touch(&mut self, id: i64) {
        if let Some(n) = self.nodes.get_mut(&id) {
            self.changes.nodes.insert(id);
            n.modify_date = Utc::now();
        }
    }

    pub fn add_version(
        &mut self,
        node_id: i64,
        mut version: Version,
        user_id: i64,
    ) -> Result<i64, ApiError> {
        let node = self.node_mut(node_id)?;
        if node.node_type != TYPE_DOCUMENT {
            return Err(ApiError::bad_request(format!(
                "Node {node_id} is not a document; versions can only be added to documents."
            )));
        }
        let number = node.versions.len() as i64 + 1;
        version.number = number;
        node.versions.push(version);
        node.modify_date = Utc::now();
        if number > 1 {
            self.audit(node_id, audit_event::ADD_VERSION, user_id);
        }
        Ok(number)
    }

    pub fn update_node(
        &mut self,
        id: i64,
        name: Option<&str>,
        description: Option<&str>,
        parent_id: Option<i64>,
        user_id: i64,
    ) -> Result<(), ApiError> {
        let current = self.node(id)?.clone();
        let new_parent = parent_id.unwrap_or(current.parent_id);
        let new_name = match name {
            Some(n) => check_name(n)?,
            None => current.name.clone(),
        };
        if new_parent != current.parent_id {
            let p = self.node(new_parent)?;
            if !p.is_container() {
                return Err(ApiError::bad_request(format!(
                    "Node {new_parent} is not a container."
                )));
            }
            // A node cannot move below itself.
            let mut cursor = new_parent;
            while cursor > 0 {
                if cursor == id {
                    return Err(ApiError::bad_request(format!(
                        "Node {id} cannot be moved into its own subtree."
                    )));
                }
                cursor = self.nodes.get(&cursor).map(|n| n.parent_id).unwrap_or(-1);
            }
        }
        if new_name != current.name || new_parent != current.parent_id {
            self.check_unique(new_parent, &new_name, Some(id))?;
        }
        self.index.remove(current.parent_id, &current.name, id);
        self.index.insert(new_parent, &new_name, id);
        let node = self.node_mut(id)?;
        node.name = new_name.clone();
        if let Some(d) = description {
            node.description = d.to_string();
        }
        node.parent_id = new_parent;
        node.modify_date = Utc::now();
        if new_name != current.name {
            self.audit(id, audit_event::RENAME, user_id);
        }
        if new_parent != current.parent_id {
            self.audit(id, audit_event::MOVE, user_id);
        }
        Ok(())
    }

    /// Ids of the node and everything below it.
    pub fn subtree(&self, id: i64) -> Vec<i64> {
        let mut out = vec![id];
        let mut i = 0;
        while i < out.len() {
            let p = out[i];
            out.extend(self.index.children(p));
            i += 1;
        }
        out
    }

    /// Deletes a node and its subtree; returns the content files to remove.
    pub fn delete_node(&mut self, id: i64) -> Result<Vec<String>, ApiError> {
        let node = self.node(id)?;
        if node.volume_type.is_some() {
            return Err(ApiError::forbidden(format!(
                "Volume {id} cannot be deleted."
            )));
        }
        let ids = self.subtree(id);
        if let Some(held) = ids
            .iter()
            .filter_map(|i| self.nodes.get(i))
            .find(|n| !n.holds.is_empty())
        {
            return Err(ApiError::forbidden(format!(
                "Node {} ('{}') is under hold and cannot be deleted.",
                held.id, held.name
            )));
        }
        let mut files = Vec::new();
        for i in ids {
            if let Some(n) = self.nodes.remove(&i) {
                self.index.remove(n.parent_id, &n.name, n.id);
                self.index.workspaces.remove(&n.id);
                self.changes.nodes.insert(n.id);
                files.extend(n.versions.into_iter().map(|v| v.content));
            }
        }
        Ok(files)
    }

    pub fn category_def(&self, id: i64) -> Result<&CategoryDef, ApiError> {
        self.seed
            .categories
            .iter()
            .find(|c| c.id == id)
            .ok_or_else(|| ApiError::bad_request(format!("Category {id} does not exist.")))
    }

    /// Validates category values for a create call before anything exists.
    pub fn check_categories(&self, cats: &BTreeMap<i64, RawValues>) -> Result<(), ApiError> {
        for (cat, vals) in cats {
            let def = self.category_def(*cat)?;
            for (k, v) in vals {
                validate_attribute(def, k, v)?;
            }
        }
        Ok(())
    }

    /// Applies (assign = true) or updates category values after validating
    /// every key and value against the definition. Returns an approval when
    /// the configured approval attribute became the approved value.
    pub fn set_category(
        &mut self,
        node_id: i64,
        category_id: i64,
        values: &RawValues,
        assign: bool,
        user_id: i64,
    ) -> Result<Option<Approval>, ApiError> {
        let def = self.category_def(category_id)?.clone();
        let node = self.node(node_id)?;
        let assigned = node.categories.contains_key(&category_id);
        if !assign && !assigned {
            return Err(ApiError::bad_request(format!(
                "Category {category_id} is not assigned to node {node_id}."
            )));
        }
        let mut checked = Vec::new();
        for (key, vals) in values {
            checked.push((key.clone(), validate_attribute(&def, key, vals)?));
        }
        let rule = self.seed.approval.clone();
        let before = node
            .categories
            .get(&category_id)
            .and_then(|c| c.get(&rule.attribute))
            .cloned();
        let node = self.node_mut(node_id)?;
        let entry = node
            .categories
            .entry(category_id)
            .or_insert_with(|| default_values(&def));
        for (k, v) in checked {
            entry.insert(k, v);
        }
        let after = entry.get(&rule.attribute).cloned();
        node.modify_date = Utc::now();
        // Documents, and folders or workspaces approved as a whole (the
        // export function sends those as packages).
        let is_doc = matches!(node.node_type, TYPE_DOCUMENT | TYPE_FOLDER | TYPE_WORKSPACE);
        let version = node.latest_version().map(|v| v.number).unwrap_or(0);
        if assigned {
            self.audit(node_id, audit_event::CATEGORY_CHANGE, user_id);
        } else {
            self.audit(node_id, audit_event::CATEGORY_ADDED, user_id);
        }
        let approved =
            |v: &Option<Value>| v.as_ref().and_then(Value::as_str) == Some(rule.value.as_str());
        if category_id == rule.category_id && is_doc && approved(&after) && !approved(&before) {
            return Ok(Some(Approval {
                node_id,
                version,
                category_id,
                attribute: rule.attribute.clone(),
                value: rule.value.clone(),
            }));
        }
        Ok(None)
    }

    pub fn remove_category(
        &mut self,
        node_id: i64,
        category_id: i64,
        user_id: i64,
    ) -> Result<(), ApiError> {
        let node = self.node_mut(node_id)?;
        if node.categories.remove(&category_id).is_none() {
            return Err(ApiError::not_found(format!(
                "Category {category_id} is not assigned to node {node_id}."
            )));
        }
        self.audit(node_id, audit_event::CATEGORY_CHANGE, user_id);
        Ok(())
    }

    pub fn classify(&mut self, node_id: i64, class_id: i64, user_id: i64) -> Result<(), ApiError> {
        if !self
            .seed
            .rm_classifications
            .iter()
            .any(|c| c.id == class_id)
        {
            return Err(ApiError::bad_request(format!(
                "RM classification {class_id} does not exist."
            )));
        }
        let node = self.node_mut(node_id)?;
        if !node.rm_classifications.contains(&class_id) {
            node.rm_classifications.push(class_id);
        }
        self.audit(node_id, audit_event::CLASSIFY, user_id);
        Ok(())
    }

    pub fn apply_hold(&mut self, node_id: i64, hold_id: i64, user_id: i64) -> Result<(), ApiError> {
        if !self.seed.holds.iter().any(|h| h.id == hold_id) {
            return Err(ApiError::bad_request(format!(
                "Hold {hold_id} does not exist."
            )));
        }
        let node = self.node_mut(node_id)?;
        if !node.holds.contains(&hold_id) {
            node.holds.push(hold_id);
        }
        self.audit(node_id, audit_event::HOLD, user_id);
        Ok(())
    }

    /// Gives a workspace its type's category (when the type has one), with
    /// `values` over the empty defaults, as a workspace created from a
    /// template carries the type's category in Extended ECM. Values for
    /// another category, or for an unknown attribute, are refused.
    pub fn assign_type_category(
        &mut self,
        id: i64,
        type_id: i64,
        values: &RawValues,
        user_id: i64,
    ) -> Result<(), ApiError> {
        let wt = self
            .seed
            .workspace_types
            .iter()
            .find(|t| t.id == type_id)
            .ok_or_else(|| {
                ApiError::bad_request(format!("Workspace type {type_id} does not exist."))
            })?;
        let Some(cat) = wt.category_id else {
            if let Some((key, _)) = values.first() {
                return Err(ApiError::bad_request(format!(
                    "Workspace type {type_id} has no category; attribute '{key}' cannot be set."
                )));
            }
            return Ok(());
        };
        let assign = !self.node(id)?.categories.contains_key(&cat);
        self.set_category(id, cat, values, assign, user_id)?;
        Ok(())
    }

    /// Makes a node a business workspace of `bo`.
    pub fn set_workspace(&mut self, id: i64, bo: WorkspaceRef) -> Result<(), ApiError> {
        self.node_mut(id)?.workspace = Some(bo);
        self.index.workspaces.insert(id);
        Ok(())
    }

    pub fn find_workspace_by_bo(&self, ext: &str, bo_type: &str, bo_id: &str) -> Option<&Node> {
        let workspaces = self.index.workspaces.iter();
        workspaces.filter_map(|id| self.nodes.get(id)).find(|n| {
            n.workspace.as_ref().is_some_and(|w| {
                w.ext_system_id.as_deref() == Some(ext)
                    && w.bo_type.as_deref() == Some(bo_type)
                    && w.bo_id.as_deref() == Some(bo_id)
            })
        })
    }

    /// The `properties` object of a node, as v2 (and v1) return it.
    pub fn properties(&self, n: &Node) -> Value {
        let size: Value = if n.is_container() {
            json!(self.child_count(n.id))
        } else {
            json!(n.latest_version().map(|v| v.file_size).unwrap_or(0))
        };
        let mut p = json!({
            "id": n.id,
            "parent_id": n.parent_id,
            "name": n.name,
            "type": n.node_type,
            "type_name": type_name(n.node_type),
            "description": n.description,
            "create_date": cs_date(&n.create_date),
            "modify_date": cs_date(&n.modify_date),
            "create_user_id": n.create_user_id,
            "owner_user_id": n.create_user_id,
            "container": n.is_container(),
            "size": size,
            "size_formatted": if n.is_container() { format!("{} Items", self.child_count(n.id)) } else { format!("{} Bytes", size) },
            "volume_id": -(self.volume_of(n.id)),
            "hidden": false,
        });
        if n.is_container() {
            p["container_size"] = json!(self.child_count(n.id));
        }
        if let Some(v) = n.latest_version() {
            p["mime_type"] = json!(v.mime_type);
            p["file_name"] = json!(v.file_name);
            p["version_number"] = json!(v.number);
        }
        if let Some(w) = &n.workspace {
            p["wnf_att_type_id"] = json!(w.type_id);
            p["workspace_type_id"] = json!(w.type_id);
        }
        p
    }

    fn volume_of(&self, id: i64) -> i64 {
        let mut cursor = id;
        let mut guard = 0;
        while let Some(n) = self.nodes.get(&cursor) {
            if n.parent_id < 0 || guard > 10_000 {
                return n.id;
            }
            cursor = n.parent_id;
            guard += 1;
        }
        cursor
    }
}

fn type_name(t: i64) -> &'static str {
    match t {
        0 => "Folder",
        131 => "Category",
        141 => "Enterprise Workspace",
        144 => "Document",
        848 => "Business Workspace",
        _ => "Volume",
    }
}

/// The values of a freshly assigned category: every attribute present, empty.
fn default_values(def: &CategoryDef) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for a in &def.attributes {
        if a.kind == AttrType::Set {
            for m in &a.attributes {
                out.insert(format!("{}_{}_1_{}", def.id, a.id, m.id), empty_value(m));
            }
        } else {
            out.insert(format!("{}_{}", def.id, a.id), empty_value(a));
        }
    }
    out
}

fn empty_value(a: &AttributeDef) -> Value {
    if a.max_values > 1 {
        json!([])
    } else {
        Value::Null
    }
}

/// Resolves `{cat}_{attr}` or `{cat}_{set}_{row}_{attr}` to its definition.
fn resolve_key<'a>(def: &'a CategoryDef, key: &str) -> Option<&'a AttributeDef> {
    let parts: Vec<&str> = key.split('_').collect();
    if parts.first() != Some(&def.id.to_string().as_str()) {
        return None;
    }
    let num = |s: &str| s.parse::<i64>().ok();
    match parts.len() {
        2 => def
            .attributes
            .iter()
            .find(|a| Some(a.id) == num(parts[1]) && a.kind != AttrType::Set),
        4 => {
            let set = def
                .attributes
                .iter()
                .find(|a| Some(a.id) == num(parts[1]) && a.kind == AttrType::Set)?;
            let row = parts[2].parse::<usize>().ok()?;
            if row == 0 || row > set.max_rows {
                return None;
            }
            set.attributes.iter().find(|a| Some(a.id) == num(parts[3]))
        }
        _ => None,
    }
}

/// Checks one attribute's values against its definition; the error names
/// the attribute, as a real server's 400 does.
pub fn validate_attribute(def: &CategoryDef, key: &str, vals: &[Value]) -> Result<Value, ApiError> {
    let attr = resolve_key(def, key).ok_or_else(|| {
        ApiError::bad_request(format!(
            "Attribute '{key}' does not exist in category {} ('{}').",
            def.id, def.name
        ))
    })?;
    let vals: Vec<&Value> = vals
        .iter()
        .filter(|v| !(v.is_null() || v.as_str() == Some("")))
        .collect();
    if vals.len() > attr.max_values {
        return Err(ApiError::bad_request(format!(
            "Attribute '{key}' ('{}') takes at most {} value(s); {} given.",
            attr.name,
            attr.max_values,
            vals.len()
        )));
    }
    let mut out = Vec::new();
    for v in vals {
        out.push(convert_value(attr, key, v)?);
    }
    if attr.max_values > 1 {
        Ok(Value::Array(out))
    } else {
        Ok(out.into_iter().next().unwrap_or(Value::Null))
    }
}

fn convert_value(attr: &AttributeDef, key: &str, v: &Value) -> Result<Value, ApiError> {
    let wrong = |expected: &str| {
        ApiError::bad_request(format!(
            "Attribute '{key}' ('{}') expects {expected}; got {v}.",
            attr.name
        ))
    };
    let text = match v {
        Value::String(s) => Some(s.trim().to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    };
    match attr.kind {
        AttrType::Text => {
            let s = text.ok_or_else(|| wrong("a text value"))?;
            if !attr.valid_values.is_empty() && !attr.valid_values.contains(&s) {
                return Err(ApiError::bad_request(format!(
                    "Attribute '{key}' ('{}') does not accept '{s}'; valid values are {:?}.",
                    attr.name, attr.valid_values
                )));
            }
            Ok(Value::String(s))
        }
        AttrType::Integer => match v {
            Value::Number(n) if n.is_i64() => Ok(v.clone()),
            Value::String(s) => s
                .trim()
                .parse::<i64>()
                .map(|i| json!(i))
                .map_err(|_| wrong("an integer")),
            _ => Err(wrong("an integer")),
        },
        AttrType::Boolean => match v {
            Value::Bool(_) => Ok(v.clone()),
            Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
                "true" | "1" => Ok(json!(true)),
                "false" | "0" => Ok(json!(false)),
                _ => Err(wrong("a boolean (true/false)")),
            },
            Value::Number(n) if n.as_i64() == Some(0) || n.as_i64() == Some(1) => {
                Ok(json!(n.as_i64() == Some(1)))
            }
            _ => Err(wrong("a boolean (true/false)")),
        },
        AttrType::Date => {
            let s = text.ok_or_else(|| wrong("a date"))?;
            parse_date(&s)
                .map(|d| json!(d.format("%Y-%m-%dT%H:%M:%S").to_string()))
                .ok_or_else(|| wrong("a date (YYYY-MM-DD or ISO 8601)"))
        }
        AttrType::Set => Err(wrong("row values (use {cat}_{set}_{row}_{attr})")),
    }
}

fn parse_date(s: &str) -> Option<NaiveDateTime> {
    if let Ok(d) = DateTime::parse_from_rfc3339(s) {
        return Some(d.with_timezone(&Utc).naive_utc());
    }
    for f in [
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%dT%H:%M:%S%.f",
    ] {
        if let Ok(d) = NaiveDateTime::parse_from_str(s, f) {
            return Some(d);
        }
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
}

/// Groups `roles.categories` of a create call by category. Accepts both the
/// nested form `{"9001": {"9001_2": v}}` and pyxecm's flat form
/// `{"9001_2": v}`.
pub fn group_role_categories(roles: &Value) -> Result<BTreeMap<i64, RawValues>, ApiError> {
    let mut out: BTreeMap<i64, RawValues> = BTreeMap::new();
    let Some(map) = roles.get("categories").and_then(Value::as_object) else {
        return Ok(out);
    };
    fn push(out: &mut BTreeMap<i64, RawValues>, key: &str, v: &Value) -> Result<(), ApiError> {
        let cat = key
            .split('_')
            .next()
            .and_then(|c| c.parse::<i64>().ok())
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "Attribute '{key}' is not a category attribute key."
                ))
            })?;
        let vals = match v {
            Value::Array(a) => a.clone(),
            other => vec![other.clone()],
        };
        out.entry(cat).or_default().push((key.to_string(), vals));
        Ok(())
    }
    for (k, v) in map {
        match (k.parse::<i64>(), v) {
            (Ok(cat), Value::Object(inner)) => {
                out.entry(cat).or_default();
                for (ik, iv) in inner {
                    push(&mut out, ik, iv)?;
                }
            }
            _ => push(&mut out, k, v)?,
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_workspace_values_must_fit_the_type_category() {
        let mut seed = Seed::builtin().expect("seed");
        seed.workspaces[0]
            .category_values
            .insert("9008_2".into(), json!("x"));
        let err = Model::from_seed(seed).expect_err("refused");
        assert!(
            err.contains("seed workspace 5001") && err.contains("9008_2"),
            "{err}"
        );
        let m = Model::from_seed(Seed::builtin().expect("seed")).expect("model");
        assert_eq!(
            m.nodes[&5001].categories[&9007]["9007_3"],
            json!("Acme Supplies GmbH")
        );
        assert!(m.audit.is_empty(), "the seed writes no audit events");
    }

    fn model() -> Model {
        Model::from_seed(Seed::builtin().expect("seed")).expect("model")
    }

    #[test]
    fn duplicate_seed_ids_are_refused_and_run_time_ids_skip_seeded_ones() {
        let mut seed = Seed::builtin().expect("seed");
        seed.folders.push(crate::seed::SeedFolder {
            id: 3001,
            parent_id: 2000,
            name: "again".into(),
        });
        assert!(Model::from_seed(seed).is_err());
        let mut seed = Seed::builtin().expect("seed");
        seed.folders.push(crate::seed::SeedFolder {
            id: 100_000,
            parent_id: 2000,
            name: "taken".into(),
        });
        let mut m = Model::from_seed(seed).expect("model");
        let id = m
            .create_node(ENTERPRISE_ID, TYPE_FOLDER, "new", "", 1000)
            .expect("create");
        assert_eq!(id, 100_001);
    }

    #[test]
    fn names_with_colon_or_too_long_are_refused() {
        assert!(check_name("a:b").is_err());
        assert!(check_name(&"x".repeat(249)).is_err());
        assert_eq!(
            check_name(&format!(" {} ", "x".repeat(248)))
                .map(|s| s.len())
                .ok(),
            Some(248)
        );
    }

    #[test]
    fn wrong_type_is_refused_naming_the_attribute() {
        let mut m = model();
        let id = m
            .create_node(ENTERPRISE_ID, TYPE_FOLDER, "f", "", 1000)
            .expect("create");
        let err = m
            .set_category(
                id,
                9002,
                &vec![("9002_5".into(), vec![json!("many")])],
                true,
                1000,
            )
            .expect_err("integer attr refuses text");
        assert!(err.message.contains("9002_5"), "{}", err.message);
        let err = m
            .set_category(
                id,
                9002,
                &vec![("9002_99".into(), vec![json!("x")])],
                true,
                1000,
            )
            .expect_err("unknown attr");
        assert!(err.message.contains("9002_99"));
    }

    #[test]
    fn set_rows_and_multi_values_validate() {
        let mut m = model();
        let id = m
            .create_node(ENTERPRISE_ID, TYPE_FOLDER, "f", "", 1000)
            .expect("create");
        m.set_category(
            id,
            9006,
            &vec![
                ("9006_5_2_7".into(), vec![json!("3")]),
                ("9005_5".into(), vec![]),
            ][..1]
                .to_vec(),
            true,
            1000,
        )
        .expect("set row");
        assert_eq!(m.nodes[&id].categories[&9006]["9006_5_2_7"], json!(3));
        assert!(
            m.set_category(
                id,
                9006,
                &vec![("9006_5_11_7".into(), vec![json!(1)])],
                false,
                1000
            )
            .is_err()
        );
    }
}
