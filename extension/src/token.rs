//! Bearer tokens an app hands to the extension for this process only
//! (`pdb_set_token`), so they never have to be stored in the database
//! file; kept per database file, so every connection to it (the
//! background worker's too) uses the newest one. A token set here stands
//! before the one `pdb_open` stored, if it stored one.

use crate::db::Db;
use crate::error::Result;
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

fn tokens() -> &'static Mutex<HashMap<String, String>> {
    static TOKENS: OnceLock<Mutex<HashMap<String, String>>> = OnceLock::new();
    TOKENS.get_or_init(Default::default)
}

/// Sets (or, with `None`, forgets) this process's token for `db`'s file.
pub fn set(db: &Db, token: Option<&str>) -> Result<()> {
    let id = db.identity()?;
    let mut map = tokens().lock().unwrap_or_else(|p| p.into_inner());
    match token {
        Some(t) => map.insert(id, t.to_string()),
        None => map.remove(&id),
    };
    Ok(())
}

/// This process's token for `db`'s file, if one was set.
pub fn get(db: &Db) -> Result<Option<String>> {
    let id = db.identity()?;
    Ok(tokens()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&id)
        .cloned())
}
