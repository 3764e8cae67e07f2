//! What an identity may do in a group: its role, and for a viewer the
//! projections it may read. Stored in the group's `pdb_members`;
//! administered in `crate::access`.

use crate::auth::Role;
use crate::error::ApiError;
use rusqlite::{Connection, OptionalExtension};

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
}

/// The grant of `identity` as stored (`None`: no role).
pub fn read(c: &Connection, identity: &str) -> Result<Option<Grant>, ApiError> {
    let row: Option<(String, Option<String>)> = c
        .query_row(
            "SELECT role, projections FROM pdb_members WHERE identity = ?1",
            [identity],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(|e| ApiError::internal("reading members", e))?;
    Ok(row.and_then(|(role, names)| {
        Some(Grant {
            role: Role::parse(&role)?,
            projections: names.and_then(|n| serde_json::from_str(&n).ok()),
        })
    }))
}
