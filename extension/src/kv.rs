//! `pdb_state`, the extension's key/value settings table: reading and
//! writing one key. What the keys mean is said where they are used
//! (`state`, `keys`, `transport`, ...) and in sql/extension/001_local.sql.

use crate::db::{as_i64, as_text, Db};
use crate::error::Result;
use pdb_protocol::Value;

pub fn get(db: &Db, k: &str) -> Result<Option<Value>> {
    Ok(db
        .row("SELECT v FROM pdb_state WHERE k = ?1", &[Value::text(k)])?
        .and_then(|r| r.into_iter().next()))
}

pub fn set(db: &Db, k: &str, v: Value) -> Result<()> {
    db.run(
        "INSERT OR REPLACE INTO pdb_state(k, v) VALUES (?1, ?2)",
        &[Value::text(k), v],
    )
}

pub fn delete(db: &Db, k: &str) -> Result<()> {
    db.run("DELETE FROM pdb_state WHERE k = ?1", &[Value::text(k)])
}

pub fn get_text(db: &Db, k: &str) -> Result<Option<String>> {
    Ok(get(db, k)?.as_ref().and_then(as_text))
}

pub fn get_i64(db: &Db, k: &str) -> Result<Option<i64>> {
    Ok(get(db, k)?.as_ref().and_then(as_i64))
}
