//! What every commit of one batch is checked and maintained against: the
//! write rules and projections in force, loaded once per batch inside its
//! transaction, the budget their SQL runs under, and what broke.

use super::rules::Rule;
use crate::projection::Projection;
use crate::sandbox::{Budget, Limits};
use crate::store::GroupInfo;
use rusqlite::Connection;
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};

/// What every commit of one batch is checked and maintained against:
/// loaded once per batch, inside its transaction, with the budget its
/// admin SQL runs under.
pub struct Batch<'a> {
    /// Write rules by lower-cased table.
    pub rules: HashMap<String, Rule>,
    /// The projections in step when the batch began.
    pub projections: Vec<Projection>,
    pub budget: &'a Budget,
    pub limits: Limits,
    /// Projections that broke during this batch, and why.
    pub broken: RefCell<BTreeMap<String, String>>,
    /// The projection whose SQL is running, if any: if SQLite drops the
    /// transaction under it (out of memory), it is the one to blame.
    pub running: RefCell<Option<String>>,
}

impl<'a> Batch<'a> {
    pub fn load(
        conn: &Connection,
        info: &GroupInfo,
        budget: &'a Budget,
        limits: Limits,
        broken: BTreeMap<String, String>,
    ) -> rusqlite::Result<Batch<'a>> {
        let mut projections = crate::projection::load_all(conn, info)?;
        projections.retain(|p| p.broken.is_none() && !broken.contains_key(&p.name));
        Ok(Batch {
            rules: super::rules::load(conn, info)?,
            projections,
            budget,
            limits,
            broken: RefCell::new(broken),
            running: RefCell::new(None),
        })
    }
}
