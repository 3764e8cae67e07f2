//! Keeping projections in step with the commits of a batch, inside the
//! batch's transaction: table-form projections row by row, query-form ones
//! recomputed once at the end of a batch that accepted anything.

use crate::error::ApiError;
use crate::projection::{self, Kind, Projection};
use crate::store::value::Bind;
use pdb_protocol::Value;
use rusqlite::Connection;

/// Re-selects the projected rows of every key one commit touched.
pub fn maintain(
    conn: &Connection,
    projections: &[Projection],
    touched: &[(String, Vec<Value>)],
) -> Result<(), ApiError> {
    for p in projections {
        if let Kind::Incremental {
            source,
            delete_key,
            insert_key,
            ..
        } = &p.kind
        {
            for (_, key) in touched.iter().filter(|(t, _)| t == source) {
                let binds: Vec<Bind<'_>> = key.iter().map(Bind).collect();
                for sql in [delete_key, insert_key] {
                    conn.prepare_cached(sql)
                        .and_then(|mut st| st.execute(rusqlite::params_from_iter(binds.iter())))
                        .map_err(|e| ApiError::internal("maintaining a projection", e))?;
                }
            }
        }
    }
    Ok(())
}

/// Recomputes the projections that cannot follow row by row.
pub fn after_batch(conn: &Connection, projections: &[Projection]) -> Result<(), ApiError> {
    for p in projections {
        if matches!(p.kind, Kind::Recompute { .. }) {
            projection::refill(conn, p)?;
        }
    }
    Ok(())
}
