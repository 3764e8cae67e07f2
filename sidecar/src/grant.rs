//! What an identity may do in a group: its role, and for a viewer the
//! projections it may read. Stored in the directory (`crate::directory`);
//! administered in `crate::access`.

use crate::auth::Role;

/// What an identity may do in a group: its role, and for a viewer the
/// projections it may read (`None`: all of them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub role: Role,
    pub projections: Option<Vec<String>>,
}

impl Grant {
    /// Whether this grant lets its holder read projection `name`.
    pub fn may_read_projection(&self, name: &str) -> bool {
        self.role > Role::Viewer
            || self
                .projections
                .as_ref()
                .is_none_or(|names| names.iter().any(|n| n == name))
    }

    /// The grant from its stored role and projection list (`None` for an
    /// unknown role).
    pub fn from_stored(role: &str, projections: Option<&str>) -> Option<Grant> {
        Some(Grant {
            role: Role::parse(role)?,
            projections: projections.and_then(|n| serde_json::from_str(n).ok()),
        })
    }

    /// The stored projection list.
    pub fn stored_projections(&self) -> Option<String> {
        self.projections
            .as_ref()
            .map(|n| serde_json::json!(n).to_string())
    }

    /// How the member log records it: the role, then the names if any.
    pub fn describe(&self) -> String {
        match self.stored_projections() {
            Some(n) => format!("{} {n}", self.role.name()),
            None => self.role.name().to_string(),
        }
    }
}
