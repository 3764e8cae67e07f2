//! Keeping projections in step with the commits of a batch, inside the
//! batch's transaction: table-form projections row by row, query-form ones
//! recomputed once at the end of a batch that accepted anything. Each
//! projection's SQL runs under its own budget; one that fails is marked
//! broken (at the end of the batch) and skipped from then on, and the
//! commits go on.

use super::batch::Batch;
use crate::error::ApiError;
use crate::projection::{self, Kind, MaintainError, Projection};
use pdb_protocol::Value;
use rusqlite::Connection;

/// Runs one projection's maintenance under a fresh budget; a failure of
/// its own SQL marks it broken for the rest of the batch.
fn guarded(
    conn: &Connection,
    batch: &Batch<'_>,
    p: &Projection,
    when: &str,
    f: impl FnOnce(&crate::sandbox::Scope<'_>) -> Result<(), MaintainError>,
) -> Result<(), ApiError> {
    if batch.broken.borrow().contains_key(&p.name) {
        return Ok(());
    }
    let scope = batch.budget.scope(batch.limits);
    *batch.running.borrow_mut() = Some(p.name.clone());
    let out = f(&scope);
    if conn.is_autocommit() {
        // SQLite dropped the transaction (out of memory): stop before
        // anything else is written outside it; the writer blames `p`.
        return Err(ApiError::Internal("maintaining a projection".into()));
    }
    *batch.running.borrow_mut() = None;
    match out {
        Ok(()) => Ok(()),
        Err(MaintainError::Witness(e)) => Err(e),
        Err(MaintainError::Broken(f)) => {
            tracing::warn!(projection = %p.name, reason = %f, "projection broken");
            batch
                .broken
                .borrow_mut()
                .insert(p.name.clone(), format!("its SQL {f} {when}"));
            Ok(())
        }
    }
}

/// Re-selects the projected rows of every key one commit (`seq`) touched.
pub fn maintain(
    conn: &Connection,
    batch: &Batch<'_>,
    seq: u64,
    touched: &[(String, Vec<Value>)],
) -> Result<(), ApiError> {
    for p in &batch.projections {
        let Kind::Incremental { source, .. } = &p.kind else {
            continue;
        };
        let keys: Vec<&Vec<Value>> = touched
            .iter()
            .filter(|(t, _)| t == source)
            .map(|(_, k)| k)
            .collect();
        if keys.is_empty() {
            continue;
        }
        guarded(conn, batch, p, &format!("at commit {seq}"), |scope| {
            keys.iter()
                .try_for_each(|k| projection::maintain_key(conn, scope, p, k))
        })?;
    }
    Ok(())
}

/// Recomputes the projections that cannot follow row by row, at the end
/// of a batch that ended at commit `seq`.
pub fn after_batch(conn: &Connection, batch: &Batch<'_>, seq: u64) -> Result<(), ApiError> {
    for p in &batch.projections {
        if matches!(p.kind, Kind::Recompute { .. }) {
            guarded(conn, batch, p, &format!("at commit {seq}"), |scope| {
                projection::refill(conn, scope, p)
            })?;
        }
    }
    Ok(())
}

/// Records the projections that broke in this batch (before its COMMIT).
pub fn record_broken(conn: &Connection, batch: &Batch<'_>) -> Result<(), ApiError> {
    for (name, why) in batch.broken.borrow().iter() {
        projection::mark_broken(conn, name, why)
            .map_err(|e| ApiError::sqlite("marking a projection broken", e))?;
    }
    Ok(())
}
