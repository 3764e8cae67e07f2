//! Applying a migration to a group's file: one log entry, in one
//! transaction with the change of the replica's tables. The tables change
//! by statements built from the migration's operations (never from the
//! admin's text); the state root moves by every row of each table whose
//! rows change (a column added or dropped, a table dropped): each row's
//! old form is taken out and its new form put in, so the cost is one pass
//! over those tables. The group's definitions follow the schema: write
//! rules and projections are checked again on the new schema, projections
//! rebuilt, rules of a dropped table removed; one the migration would
//! break refuses it, naming it.

use crate::error::ApiError;
use crate::projection::{self, MaintainError};
use crate::sandbox::{Budget, Limits};
use crate::store::log::{self, HeadState};
use crate::store::{self, GroupInfo, TableSql};
use ed25519_dalek::SigningKey;
use pdb_protocol::records::Signed;
use pdb_protocol::wire::{MigrationResponse, SchemaJson};
use pdb_protocol::{now_ms, sha256, Migration, MigrationRecord, Schema, SchemaOp, StateRoot};
use rusqlite::{params, Connection, OptionalExtension};

/// Most older schema versions a migration may keep accepting.
pub const MAX_WINDOW: usize = 16;

/// A projection's rebuild may take this many times a unit's budget (as
/// when it is first defined).
const REBUILD_BUDGETS: u32 = 10;

/// A migration an admin submitted, derived from their DDL
/// (`store::migrate::derive`) on the schema then in force.
pub struct MigrationInput {
    pub migration: Migration,
    pub author: String,
}

/// The idempotency key a migration's log entry takes: one no client can
/// send (clients' keys have no `/`).
pub fn entry_key(version: u32) -> String {
    format!("migration/{version}")
}

fn db(context: &'static str) -> impl Fn(rusqlite::Error) -> ApiError {
    move |e| ApiError::sqlite(context, e)
}

/// Applies `input` to the group inside the caller's write transaction and
/// moves `head`; the caller commits. Returns the answer and the group's
/// info on the new schema (read back from the file, so it is checked
/// against the tables on disk).
pub fn apply(
    conn: &mut Connection,
    info: &GroupInfo,
    key: &SigningKey,
    head: &mut HeadState,
    input: &MigrationInput,
    budget: &Budget,
    limits: Limits,
) -> Result<(MigrationResponse, GroupInfo), ApiError> {
    let m = &input.migration;
    if m.to_version <= info.schema.version {
        return replay(conn, info, m);
    }
    if m.from_version != info.schema.version {
        return Err(ApiError::MigrationConflict(format!(
            "the migration was made for schema version {}, but the group is at version {} now: submit it again",
            m.from_version, info.schema.version
        )));
    }
    // The versions whose commits stay accepted are kept in memory while
    // the group is open: a bounded number of them.
    let window = info
        .history
        .iter()
        .filter(|v| v.version >= m.accepts_from)
        .count();
    if window > MAX_WINDOW {
        return Err(ApiError::BadRequest(format!(
            "accepts_from {} would keep {window} older schema versions accepted; at most {MAX_WINDOW} may be (raise accepts_from)",
            m.accepts_from
        )));
    }
    let new = m.apply_to(&info.schema).map_err(ApiError::BadRequest)?;
    if new.tables != m.tables {
        return Err(ApiError::BadRequest(
            "the migration's schema is not the one its operations make".into(),
        ));
    }
    let mut root = head.root.clone();
    let mut at = info.schema.clone();
    for op in &m.ops {
        change_tables(conn, &mut at, op, &mut root)?;
        if let SchemaOp::DropTable { table } = op {
            // The witness's own record of which commit last wrote each row
            // (not part of the replica the verifier rebuilds).
            conn.execute("DELETE FROM pdb_row_version WHERE tbl = ?1", [table])
                .map_err(db("migrating the replica"))?;
        }
    }
    let new_info = GroupInfo::new(info.id.clone(), new.clone(), Vec::new());
    // Everything the migration would break is named at once.
    let (rules_removed, mut broken) = follow_rules(conn, &new_info)?;
    let (projections_rebuilt, more) = follow_projections(conn, &new_info, budget, limits)?;
    broken.extend(more);
    if !broken.is_empty() {
        return Err(breaks(&broken));
    }

    let seq = head.seq + 1;
    let bytes = m.encode();
    let hash = new.hash();
    let record = MigrationRecord {
        group: info.id.clone(),
        seq,
        prev_head: head.hash,
        migration_digest: sha256(&bytes),
        state_root: root.digest(),
        from_version: m.from_version,
        schema_version: m.to_version,
        schema_hash: hash,
        accepts_from: m.accepts_from,
        author: input.author.clone(),
        time_ms: now_ms().max(head.time_ms),
    };
    let signed = Signed::sign(key, record.encode());
    let head_hash = sha256(&signed.bytes);
    let structure =
        serde_json::to_string(&new.tables).map_err(|e| ApiError::internal("migrating", e))?;
    conn.execute(
        "INSERT INTO pdb_log(seq, idem_key, head_hash, changeset, record, signature, migration)
         VALUES (?1, ?2, ?3, x'', ?4, ?5, ?6)",
        params![
            seq as i64,
            entry_key(m.to_version),
            head_hash.to_vec(),
            signed.bytes,
            signed.signature.to_vec(),
            bytes
        ],
    )
    .map_err(db("appending a migration to the log"))?;
    conn.execute(
        "INSERT INTO pdb_schemas(version, seq, structure, hash, accepts_from, ddl)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            m.to_version,
            seq as i64,
            structure,
            hash.to_vec(),
            m.accepts_from,
            m.ddl
        ],
    )
    .map_err(db("recording a schema version"))?;
    for (k, v) in [
        ("schema", rusqlite::types::Value::Text(structure)),
        (
            "schema_version",
            rusqlite::types::Value::Integer(m.to_version.into()),
        ),
        ("schema_hash", rusqlite::types::Value::Blob(hash.to_vec())),
    ] {
        conn.execute(
            "INSERT OR REPLACE INTO pdb_meta(k, v) VALUES (?1, ?2)",
            params![k, v],
        )
        .map_err(db("recording the schema"))?;
    }
    let next = HeadState {
        seq,
        hash: head_hash,
        root,
        time_ms: record.time_ms,
        schema_version: m.to_version,
        schema_hash: hash,
    };
    log::set_head(conn, &next).map_err(db("moving the head"))?;
    let info = store::load_info(conn).map_err(|e| ApiError::internal("migrating", e))?;
    *head = next;
    let certificate = log::certificate_json(signed.bytes, signed.signature.to_vec())?;
    Ok((
        MigrationResponse {
            replay: false,
            certificate,
            schema: SchemaJson::new(&new),
            accepts_from: m.accepts_from,
            ops: m.ops.clone(),
            projections_rebuilt,
            rules_removed,
        },
        info,
    ))
}

/// The same migration again (a retry after a lost answer) answers with
/// its entry; another one to a version the group already has is refused.
fn replay(
    conn: &Connection,
    info: &GroupInfo,
    m: &Migration,
) -> Result<(MigrationResponse, GroupInfo), ApiError> {
    let row: Option<(Vec<u8>, Vec<u8>, Vec<u8>)> = conn
        .query_row(
            "SELECT record, signature, migration FROM pdb_log WHERE idem_key = ?1",
            [entry_key(m.to_version)],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()
        .map_err(db("reading a migration"))?;
    let done = row
        .as_ref()
        .and_then(|(_, _, bytes)| Migration::decode(bytes).ok());
    let (Some((record, signature, _)), true) = (row, done.as_ref() == Some(m)) else {
        return Err(ApiError::MigrationConflict(format!(
            "the group's schema is already at version {}: a migration must make a later version",
            info.schema.version
        )));
    };
    let schema = SchemaJson::new(&m.schema());
    let answer = MigrationResponse {
        replay: true,
        certificate: log::certificate_json(record, signature)?,
        schema,
        accepts_from: m.accepts_from,
        ops: m.ops.clone(),
        projections_rebuilt: Vec::new(),
        rules_removed: Vec::new(),
    };
    let info = store::load_info(conn).map_err(|e| ApiError::internal("migrating", e))?;
    Ok((answer, info))
}

/// Makes one operation's change to the replica's tables, moving `root` by
/// the rows it changes; `at` is the schema before it, and after it on
/// return. Only the group's own tables are touched (the verifier replays
/// migrations with it into a database that has nothing else).
pub fn change_tables(
    conn: &Connection,
    at: &mut Schema,
    op: &SchemaOp,
    root: &mut StateRoot,
) -> Result<(), ApiError> {
    let sql = db("migrating the replica");
    let before = at.table(op.table()).map(TableSql::new);
    if op.changes_rows() {
        if let Some(t) = &before {
            t.scan(conn, |row| -> rusqlite::Result<()> {
                root.remove_row(&t.name, &row);
                Ok(())
            })
            .map_err(&sql)?;
        }
    }
    op.apply(at).map_err(ApiError::BadRequest)?;
    for stmt in op.ddl() {
        conn.execute_batch(&stmt).map_err(|e| {
            ApiError::BadRequest(format!(
                "the group's data does not allow this migration ({e}); nothing was changed"
            ))
        })?;
    }
    if matches!(op, SchemaOp::AddColumn { .. } | SchemaOp::DropColumn { .. }) {
        if let Some(t) = at.table(op.table()).map(TableSql::new) {
            t.add_all(conn, root).map_err(&sql)?;
        }
    }
    Ok(())
}

/// Write rules on the new schema: those of a dropped table go with it
/// (returned first); every other one must still pass its checks (those
/// that do not, returned second).
fn follow_rules(
    conn: &mut Connection,
    info: &GroupInfo,
) -> Result<(Vec<String>, Vec<String>), ApiError> {
    let sql = db("checking write rules");
    let rules: Vec<(String, String, Option<String>)> = {
        let mut st = conn
            .prepare("SELECT tbl, expr, ops FROM pdb_rules ORDER BY tbl")
            .map_err(&sql)?;
        let rows = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .map_err(&sql)?;
        rows.collect::<rusqlite::Result<_>>().map_err(&sql)?
    };
    let mut removed = Vec::new();
    let mut broken = Vec::new();
    for (table, expr, ops) in rules {
        if info.schema.table(&table).is_none() {
            conn.execute("DELETE FROM pdb_rules WHERE tbl = ?1", [&table])
                .map_err(&sql)?;
            removed.push(table);
            continue;
        }
        let each: Vec<(String, String)> = match ops {
            None => vec![("rule".into(), expr)],
            Some(ops) => super::rules::OPS
                .iter()
                .zip(super::rules::parse_ops(&ops))
                .filter_map(|(op, e)| Some((format!("{op} rule"), e?)))
                .collect(),
        };
        for (what, e) in each {
            if let Err(why) = crate::access::check_rule(conn, info, &table, &what, &e) {
                broken.push(format!("the {what} of table {table:?} ({why})"));
            }
        }
    }
    Ok((removed, broken))
}

/// Projections on the new schema: each is checked again, its table made
/// anew and refilled (returned first); those that no longer check or fill
/// (returned second) refuse the migration.
fn follow_projections(
    conn: &mut Connection,
    info: &GroupInfo,
    budget: &Budget,
    limits: Limits,
) -> Result<(Vec<String>, Vec<String>), ApiError> {
    let sql = db("rebuilding projections");
    let defs: Vec<(String, String, i64)> = {
        let mut st = conn
            .prepare("SELECT name, definition, version FROM pdb_projections ORDER BY name")
            .map_err(&sql)?;
        let rows = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .map_err(&sql)?;
        rows.collect::<rusqlite::Result<_>>().map_err(&sql)?
    };
    let mut rebuilt = Vec::new();
    let mut broken = Vec::new();
    for (name, text, version) in defs {
        let def: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| ApiError::internal("reading a projection", e))?;
        let p = match projection::check(conn, info, &name, &def) {
            Ok(p) => p,
            Err(e) => {
                broken.push(format!("projection {name:?} ({})", e.body().error.message));
                continue;
            }
        };
        projection::create(conn, &p)?;
        match projection::refill(conn, &budget.scope(limits.times(REBUILD_BUDGETS)), &p) {
            Ok(()) => {}
            Err(MaintainError::Witness(e)) => return Err(e),
            Err(MaintainError::Broken(f)) => {
                broken.push(format!("projection {name:?} (its SQL {f})"));
                continue;
            }
        }
        projection::store(conn, &p, &def, version).map_err(&sql)?;
        rebuilt.push(name);
    }
    Ok((rebuilt, broken))
}

fn breaks(what: &[String]) -> ApiError {
    ApiError::BadRequest(format!(
        "the migration would break {}: change or drop {} first; nothing was changed",
        what.join("; "),
        if what.len() == 1 { "it" } else { "them" }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::Sandbox;
    use crate::store::full_root;
    use crate::write::batch::Batch;
    use crate::write::commit::{process, CommitInput};
    use pdb_protocol::wire::Policy;
    use pdb_protocol::{Change, Changeset, KeyChain, Op, TableChanges, Value};
    use std::collections::BTreeMap;

    fn insert(table: &str, pk_flags: Vec<u8>, row: Vec<Value>) -> Vec<u8> {
        Changeset {
            tables: vec![TableChanges {
                name: table.into(),
                pk_flags,
                changes: vec![Change {
                    op: Op::Insert,
                    indirect: false,
                    old: vec![],
                    new: row.into_iter().map(Some).collect(),
                }],
            }],
        }
        .encode()
    }

    #[test]
    fn a_migration_is_an_entry_and_old_commits_are_carried_across_it() {
        let dir =
            std::env::temp_dir().join(format!("pdb-migration-{}-{}", std::process::id(), now_ms()));
        std::fs::create_dir_all(&dir).unwrap();
        let ddl = "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, old TEXT)";
        let schema = store::schema::parse(ddl, 1).unwrap();
        store::create(&dir, "g", ddl, &schema).unwrap();
        let path = dir.join(store::file_name("g"));
        let (mut conn, info, mut head) = store::open(&path).unwrap();
        let key = SigningKey::from_bytes(&[9; 32]);
        let budget = Sandbox::default().budget(&mut conn).unwrap();
        let v1 = |info: &GroupInfo, head: &HeadState, k: &str, cs: Vec<u8>| CommitInput {
            author: "alice".into(),
            base_seq: head.seq,
            base_hash: head.hash,
            schema_version: info.history[0].version,
            schema_hash: info.history[0].hash,
            idempotency_key: k.into(),
            changeset: cs,
            policy: Policy::RebaseIfClean,
            client_time: None,
        };
        let row = |id: i64| vec![Value::Integer(id), Value::text("v"), Value::text("o")];
        {
            let batch =
                Batch::load(&conn, &info, &budget, Limits::default(), BTreeMap::new()).unwrap();
            let c = v1(&info, &head, "k1", insert("t", vec![1, 0, 0], row(1)));
            process(&conn, &info, &key, &mut head, &c, &batch).unwrap();
        }
        let base_before = head.clone();

        let m = store::migrate::derive(
            &info.schema,
            "ALTER TABLE t ADD COLUMN n INTEGER NOT NULL DEFAULT 7; ALTER TABLE t DROP COLUMN old;
             CREATE TABLE u(k TEXT PRIMARY KEY)",
            2,
            1,
            Limits::default(),
        )
        .unwrap();
        let input = MigrationInput {
            migration: m.clone(),
            author: "admin".into(),
        };
        conn.execute_batch("BEGIN").unwrap();
        let (answer, info2) = apply(
            &mut conn,
            &info,
            &key,
            &mut head,
            &input,
            &budget,
            Limits::default(),
        )
        .unwrap();
        conn.execute_batch("COMMIT").unwrap();
        assert_eq!((answer.certificate.seq, head.seq), (2, 2));
        assert_eq!((info2.schema.version, info2.history.len()), (2, 2));
        assert_eq!(head.schema_version, 2);
        // The root moved by the rows' new form: a full recount agrees.
        assert_eq!(full_root(&conn, &info2).unwrap().0, head.root);
        let stored = info2.tables[0].fetch(&conn, &[Value::Integer(1)]).unwrap();
        assert_eq!(
            stored,
            Some(vec![Value::Integer(1), Value::text("v"), Value::Integer(7)])
        );

        // The same migration again replays; another to a taken version is
        // refused; one made for an older schema is refused.
        conn.execute_batch("BEGIN").unwrap();
        let (again, _) = apply(
            &mut conn,
            &info2,
            &key,
            &mut head,
            &input,
            &budget,
            Limits::default(),
        )
        .unwrap();
        assert!(again.replay);
        assert_eq!(again.certificate, answer.certificate);
        let mut other = m.clone();
        other.accepts_from = 2;
        let e = apply(
            &mut conn,
            &info2,
            &key,
            &mut head,
            &MigrationInput {
                migration: other,
                author: "admin".into(),
            },
            &budget,
            Limits::default(),
        )
        .err()
        .unwrap();
        assert_eq!(e.code(), "migration_conflict");
        conn.execute_batch("ROLLBACK").unwrap();

        // A commit sealed on version 1 before the migration is carried to
        // version 2: the dropped column goes, the added one takes its default.
        let batch =
            Batch::load(&conn, &info2, &budget, Limits::default(), BTreeMap::new()).unwrap();
        let old = v1(
            &info2,
            &base_before,
            "k2",
            insert("t", vec![1, 0, 0], row(2)),
        );
        let r = process(&conn, &info2, &key, &mut head, &old, &batch).unwrap();
        assert!(!r.replay);
        let stored = info2.tables[0].fetch(&conn, &[Value::Integer(2)]).unwrap();
        assert_eq!(
            stored,
            Some(vec![Value::Integer(2), Value::text("v"), Value::Integer(7)])
        );
        // Its retry with the same bytes replays.
        assert!(
            process(&conn, &info2, &key, &mut head, &old, &batch)
                .unwrap()
                .replay
        );
        log::set_head(&conn, &head).unwrap();
        // With a window that no longer takes version 1: schema_mismatch,
        // with what the client needs.
        let mut closed = store::load_info(&conn).unwrap();
        closed.history.last_mut().unwrap().accepts_from = 2;
        let late = v1(
            &closed,
            &base_before,
            "k3",
            insert("t", vec![1, 0, 0], row(3)),
        );
        let e = process(&conn, &closed, &key, &mut head, &late, &batch).unwrap_err();
        let body = e.body().error;
        assert_eq!(
            (body.code.as_str(), body.accepts_from),
            ("schema_mismatch", Some(2))
        );
        assert_eq!(
            body.migrations
                .iter()
                .map(|m| m.version)
                .collect::<Vec<_>>(),
            vec![2]
        );
        drop(batch);

        // The verifier replays it all.
        let report = crate::verify::verify_file(
            &path,
            &dir.join("snapshots"),
            &KeyChain::single(key.verifying_key()),
        )
        .unwrap();
        assert_eq!(report.commits, 3);
        drop(conn);
        let _ = std::fs::remove_dir_all(dir);
    }
}
