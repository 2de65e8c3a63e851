//! The seed: users, category definitions, workspace types and instances, RM
//! classifications and holds — everything a real site configures in its admin
//! UI and REST cannot create. Read from JSON; the built-in default covers the
//! eight flows of DESIGN.md §1 (ids documented in README.md).

use serde::{Deserialize, Serialize};

/// The built-in seed, `seed/default.json`.
pub const DEFAULT_SEED_JSON: &str = include_str!("../seed/default.json");

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Seed {
    pub users: Vec<SeedUser>,
    /// Which attribute value counts as "approved" for the callback.
    pub approval: ApprovalRule,
    #[serde(default)]
    pub categories: Vec<CategoryDef>,
    #[serde(default)]
    pub workspace_types: Vec<WorkspaceTypeDef>,
    #[serde(default)]
    pub folders: Vec<SeedFolder>,
    #[serde(default)]
    pub workspaces: Vec<SeedWorkspace>,
    #[serde(default)]
    pub rm_classifications: Vec<NamedDef>,
    #[serde(default)]
    pub holds: Vec<NamedDef>,
}

impl Seed {
    /// The built-in default seed.
    pub fn builtin() -> Result<Seed, serde_json::Error> {
        Self::from_json(DEFAULT_SEED_JSON)
    }

    pub fn from_json(text: &str) -> Result<Seed, serde_json::Error> {
        serde_json::from_str(text)
    }
}

#[derive(Clone, Serialize, Deserialize)]
pub struct SeedUser {
    pub id: i64,
    pub name: String,
    pub password: String,
}

impl std::fmt::Debug for SeedUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeedUser")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("password", &"<redacted>")
            .finish()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ApprovalRule {
    pub category_id: i64,
    /// Attribute key, e.g. `9001_2`.
    pub attribute: String,
    pub value: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CategoryDef {
    pub id: i64,
    pub name: String,
    pub attributes: Vec<AttributeDef>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AttrType {
    Text,
    Integer,
    Date,
    Boolean,
    Set,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AttributeDef {
    pub id: i64,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: AttrType,
    /// More than 1 makes it multi-value.
    #[serde(default = "one")]
    pub max_values: usize,
    /// Allowed values of a text attribute (a "text popup" on a real server).
    #[serde(default)]
    pub valid_values: Vec<String>,
    #[serde(default)]
    pub required: bool,
    /// Sets only: their rows and member attributes.
    #[serde(default = "one")]
    pub max_rows: usize,
    #[serde(default)]
    pub attributes: Vec<AttributeDef>,
}

fn one() -> usize {
    1
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkspaceTypeDef {
    pub id: i64,
    pub name: String,
    /// The folder new workspaces of this type go to when no parent is given.
    pub location_id: i64,
    pub templates: Vec<NamedDef>,
    /// The type's category: every workspace of this type carries it (with
    /// the values its business object gave), as a workspace created from a
    /// template does in Extended ECM.
    #[serde(default)]
    pub category_id: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NamedDef {
    pub id: i64,
    pub name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SeedFolder {
    pub id: i64,
    pub parent_id: i64,
    pub name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SeedWorkspace {
    pub id: i64,
    pub name: String,
    pub type_id: i64,
    pub template_id: i64,
    /// Defaults to the workspace type's location.
    #[serde(default)]
    pub parent_id: Option<i64>,
    #[serde(default)]
    pub ext_system_id: Option<String>,
    #[serde(default)]
    pub bo_type: Option<String>,
    #[serde(default)]
    pub bo_id: Option<String>,
    /// Sub-folders; the i-th (from 0) gets id `id * 100 + i + 1`.
    #[serde(default)]
    pub folders: Vec<String>,
    /// Values of the workspace type's category, by attribute key
    /// (`{category}_{attribute}`); a list for a multi-value attribute.
    #[serde(default)]
    pub category_values: std::collections::BTreeMap<String, serde_json::Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_seed_parses_and_has_the_approval_attribute() {
        let seed = Seed::builtin().expect("built-in seed parses");
        let cat = seed
            .categories
            .iter()
            .find(|c| c.id == seed.approval.category_id)
            .expect("approval category defined");
        assert!(
            cat.attributes
                .iter()
                .any(|a| format!("{}_{}", cat.id, a.id) == seed.approval.attribute)
        );
        assert!(seed.users.iter().any(|u| u.name == "admin"));
    }
}
