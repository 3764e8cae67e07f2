//! Migrations on this side. A migration entry pulled from the group's log
//! is verified (signature, chain, digest, the schema it makes) and applied
//! in the same local transaction as the commits around it: the tables and
//! their base logs change by statements built here from the migration's
//! operations (never from text the witness sent), pending rows are carried
//! across (a new column takes its default; a value of a dropped column, a
//! row of a dropped table, that this database changed is recorded in
//! `pdb_conflicts` as kind `schema`), and the state root moves as the
//! witness moved it (docs/protocol.md, "Migrations"): each row of a table
//! whose rows change, as the server has it, out in its old form and in in
//! its new one. Capture is paused by the caller and resumed on the new
//! tables.
//!
//! The app states the schema versions its code understands (`pdb_open`'s
//! `schema_versions`); a migration past them is never applied: sync stops
//! with `app_upgrade_required` while local reads and writes go on.

use crate::baselog::base_table;
use crate::client::WitnessApi;
use crate::conflicts::{self, values_json};
use crate::db::{as_i64, transaction, Db};
use crate::error::{Error, Result};
use crate::merge::{Conflict, Kept};
use crate::pending;
use crate::seal;
use crate::state::{self, Head, Local};
use crate::tables::{self, read_local, SyncTable};
use pdb_protocol::migration::literal_value;
use pdb_protocol::records::Signed;
use pdb_protocol::value::encode_values;
use pdb_protocol::wire::{unb64, LogEntryJson};
use pdb_protocol::{
    now_ms, quote_ident, sha256, Column, Index, Migration, MigrationRecord, Schema, SchemaOp,
    StateRoot, Table, Value,
};
use std::collections::HashSet;

/// The `pdb_state` keys of the app's range of schema versions.
const APP_MIN: &str = "app_schema_min";
const APP_MAX: &str = "app_schema_max";

/// The schema versions the app's code understands: `(min, max)`.
pub fn app_range(db: &Db) -> Result<(u32, u32)> {
    let get = |k: &str, default: u32| -> Result<u32> {
        Ok(state::get_i64(db, k)?
            .and_then(|v| u32::try_from(v).ok())
            .unwrap_or(default))
    };
    Ok((get(APP_MIN, 0)?, get(APP_MAX, u32::MAX)?))
}

/// Stores the app's range (`None`: any version).
pub fn set_app_range(db: &Db, range: Option<(u32, u32)>) -> Result<()> {
    match range {
        Some((min, max)) => {
            state::set(db, APP_MIN, Value::Integer(min.into()))?;
            state::set(db, APP_MAX, Value::Integer(max.into()))
        }
        None => {
            state::delete(db, APP_MIN)?;
            state::delete(db, APP_MAX)
        }
    }
}

/// Sync stops: the group's schema has moved past what the app knows.
pub fn upgrade_required(group_version: u32, max: u32) -> Error {
    Error::Stopped {
        code: "app_upgrade_required",
        message: format!(
            "app_upgrade_required: the group's schema is version {group_version}; this app understands up to version {max}: upgrade the app (and call pdb_open with schema_versions including {group_version}); local reads and writes go on, and sync resumes where it stopped"
        ),
    }
}

/// The group's schema is older than the app needs.
pub fn group_too_old(group_version: u32, min: u32) -> Error {
    Error::Stopped {
        code: "schema_too_old",
        message: format!(
            "schema_too_old: the group's schema is version {group_version}; this app needs at least version {min}: the group's admin must migrate it first (POST /v1/groups/<g>/migrations)"
        ),
    }
}

/// `pdb_migrate(ddl [, options])`: submits a migration to the group, as
/// its admin, from any device opened for it. `options` may give
/// `schema_version` (default: the group's + 1) and `accepts_from` (the
/// oldest version whose commits stay accepted; default: the group's
/// current one). Nothing changes here: the next `pdb_sync()` pulls the
/// migration, verified like every entry, and applies it when the app's
/// `schema_versions` include it. The answer is the witness's, summed up.
pub fn submit(db: Db, ddl: &str, options: Option<&str>) -> Result<serde_json::Value> {
    let opts: serde_json::Value = match options {
        None => serde_json::json!({}),
        Some(s) => serde_json::from_str(s)
            .map_err(|e| Error::invalid(format!("options must be a JSON object: {e}")))?,
    };
    let obj = opts
        .as_object()
        .ok_or_else(|| Error::invalid("options must be a JSON object"))?;
    let version = |k: &str| -> Result<Option<u32>> {
        match obj.get(k) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .filter(|n| *n > 0)
                .map(Some)
                .ok_or_else(|| Error::invalid(format!("{k} must be a schema version (1, 2, ...)"))),
        }
    };
    if let Some(k) = obj
        .keys()
        .find(|k| !["schema_version", "accepts_from"].contains(&k.as_str()))
    {
        return Err(Error::invalid(format!(
            "unknown option {k:?} (expected schema_version, accepts_from)"
        )));
    }
    if ddl.trim().is_empty() {
        return Err(Error::invalid(
            "the migration is empty: give its DDL (ALTER TABLE, CREATE TABLE, CREATE INDEX, ...)",
        ));
    }
    let req = pdb_protocol::wire::MigrationRequest {
        ddl: ddl.to_string(),
        schema_version: version("schema_version")?,
        accepts_from: version("accepts_from")?,
    };
    let l = state::load(db)?;
    let r = l.witness()?.submit_migration(&req)?;
    Ok(serde_json::json!({
        "schema_version": r.schema.version,
        "seq": r.certificate.seq,
        "accepts_from": r.accepts_from,
        "operations": r.ops.iter().map(describe).collect::<Vec<_>>(),
        "replay": r.replay,
        "projections_rebuilt": r.projections_rebuilt,
        "rules_removed": r.rules_removed,
        "next": "pdb_sync() applies it here once this app's schema_versions include it",
    }))
}

/// A migration entry, verified.
pub struct Verified {
    pub seq: u64,
    pub migration: Migration,
    pub record: MigrationRecord,
    pub cert: Signed,
    /// The schema it makes.
    pub schema: Schema,
}

/// Verifies a log entry that carries a migration: the certificate's
/// signature, that it follows `after` (its seq and, when `chained`, its
/// previous head), the migration's digest, and that applied to this
/// database's schema it makes exactly the schema the certificate names.
pub fn verify(l: &Local, after: &Head, e: &LogEntryJson, chained: bool) -> Result<Verified> {
    let seq = e.seq;
    let fail = |m: &str| Error::untrusted(format!("migration {seq}: {m}; nothing was applied"));
    let bytes = e
        .migration
        .as_deref()
        .and_then(unb64)
        .ok_or_else(|| fail("its migration is not base64"))?;
    let cert = e
        .certificate
        .signed
        .to_signed()
        .ok_or_else(|| fail("malformed certificate"))?;
    let rec = cert
        .migration(&l.key)
        .map_err(|e| fail(&format!("certificate rejected ({e})")))?;
    let checks = [
        (
            rec.seq == seq && (!chained || seq == after.seq + 1),
            "it does not follow the verified head",
        ),
        (rec.group == l.group, "the certificate names another group"),
        (
            !chained || rec.prev_head == after.hash,
            "the certificate does not chain to the verified head",
        ),
        (
            rec.migration_digest == sha256(&bytes),
            "the migration does not match its certificate",
        ),
        (
            rec.from_version == l.schema.version,
            "it does not follow this database's schema version",
        ),
    ];
    if let Some((_, m)) = checks.iter().find(|(ok, _)| !ok) {
        return Err(fail(m));
    }
    let m = Migration::decode(&bytes).map_err(|e| fail(&e))?;
    let schema = m.apply_to(&l.schema).map_err(|e| {
        fail(&format!(
            "it does not apply to this database's schema ({e})"
        ))
    })?;
    if schema.tables != m.tables
        || schema.hash() != rec.schema_hash
        || schema.version != rec.schema_version
        || m.accepts_from != rec.accepts_from
    {
        return Err(fail(
            "the certificate names another schema than the migration makes",
        ));
    }
    Ok(Verified {
        seq,
        migration: m,
        record: rec,
        cert,
        schema,
    })
}

/// Applies a verified migration to this database (inside the caller's
/// transaction, capture paused) and returns the head after it. With
/// `check_root`, the state root must come out as certified (a pull); a
/// catch-up from a snapshot replaces the rows afterwards, so it does not
/// check it.
pub fn apply(l: &Local, v: &Verified, head: &Head, check_root: bool) -> Result<Head> {
    // A commit sealed but never sent is sealed again on the new schema;
    // one sent may have landed, so it is sent again as it was (the witness
    // carries it across while its version is accepted).
    if let Some(o) = pending::outbox(&l.db)? {
        if o.attempts == 0 {
            seal::unseal(l, &o)?;
        }
    }
    let mut root = head.root.clone();
    let mut at = l.schema.clone();
    for op in &v.migration.ops {
        step(l, &mut at, op, &mut root, v.seq).map_err(|e| {
            e.context(|m| {
                format!(
                    "migration {} ({}): {m}; nothing was applied",
                    v.seq,
                    describe(op)
                )
            })
        })?;
    }
    if check_root && root.digest() != v.record.state_root {
        return Err(Error::untrusted(format!(
            "migration {}: the state root after it differs from the certified one (tampered response or diverged copy); nothing was applied",
            v.seq
        )));
    }
    tables::check_local(&l.db, &v.schema)?;
    state::set_schema(&l.db, &v.schema)?;
    let rec = &v.record;
    l.sql.run(
        "INSERT OR REPLACE INTO pdb_certificates(seq, idem_key, author, mine, head_hash, state_root, time_ms, record, signature)
         VALUES (?1, ?2, ?3, 0, ?4, ?5, ?6, ?7, ?8)",
        &[
            Value::Integer(v.seq as i64),
            Value::text(&format!("migration/{}", rec.schema_version)),
            Value::text(&rec.author),
            Value::Blob(sha256(&v.cert.bytes).to_vec()),
            Value::Blob(rec.state_root.to_vec()),
            Value::Integer(rec.time_ms as i64),
            Value::Blob(v.cert.bytes.clone()),
            Value::Blob(v.cert.signature.to_vec()),
        ],
    )?;
    Ok(Head {
        seq: v.seq,
        hash: sha256(&v.cert.bytes),
        root,
    })
}

/// Brings this database's schema to `target` (a snapshot's version) with
/// the migrations the witness lists, verified by their signatures (the
/// log between is pruned, so not by the chain), in one transaction.
/// Pending rows are carried across; the rows and the head come from the
/// snapshot next. Returns the database reloaded.
pub fn catch_up_schema(l: &Local, w: &dyn WitnessApi, target: u32) -> Result<Local> {
    let (_, max) = app_range(&l.db)?;
    if target > max {
        return Err(upgrade_required(target, max));
    }
    let page = migrations_until(w, l.schema.version, target)?;
    transaction(&l.db, || {
        crate::capture::pause(l)?;
        let mut cur: Option<Local> = None;
        let mut head = l.head()?;
        for e in &page.migrations {
            let here = cur.as_ref().unwrap_or(l);
            if here.schema.version >= target {
                break;
            }
            let v = verify(here, &head, e, false)?;
            if v.schema.version > target {
                return Err(Error::invalid(
                    "the witness's migrations skip the snapshot's schema version",
                ));
            }
            // The head stays the old one: the snapshot's replaces it.
            apply(here, &v, &head, false)?;
            head = here.head()?;
            let next = state::load(here.db)?;
            cur = Some(next);
        }
        let here = cur.unwrap_or(state::load(l.db)?);
        if here.schema.version != target {
            return Err(Error::invalid(format!(
                "the witness lists no migrations up to the snapshot's schema version {target}"
            )));
        }
        crate::capture::resume(&here)?;
        Ok(())
    })?;
    state::load(l.db)
}

fn describe(op: &SchemaOp) -> String {
    let t = op.table();
    match op {
        SchemaOp::AddColumn { column, .. } => format!("adding column {:?} to {t:?}", column.name),
        SchemaOp::DropColumn { column, .. } => format!("dropping column {column:?} of {t:?}"),
        SchemaOp::RenameColumn { from, to, .. } => {
            format!("renaming column {from:?} of {t:?} to {to:?}")
        }
        SchemaOp::CreateTable { .. } => format!("creating table {t:?}"),
        SchemaOp::DropTable { .. } => format!("dropping table {t:?}"),
        SchemaOp::CreateIndex { index, .. } => format!("creating index {:?}", index.name),
        SchemaOp::DropIndex { index, .. } => format!("dropping index {index:?}"),
    }
}

fn table_at(at: &Schema, name: &str) -> Result<Table> {
    at.table(name)
        .cloned()
        .ok_or_else(|| Error::invalid(format!("no table {name:?} in this database's schema")))
}

/// One operation: the table, its base log, the pending rows and the root.
fn step(l: &Local, at: &mut Schema, op: &SchemaOp, root: &mut StateRoot, seq: u64) -> Result<()> {
    let name = op.table().to_string();
    match op {
        SchemaOp::AddColumn { column, .. } => {
            server_rows(l, &table_at(at, &name)?, root, false)?;
            run(l, op)?;
            l.db.exec(&format!(
                "ALTER TABLE {} ADD COLUMN {}",
                base_table(&name),
                base_column(column)
            ))?;
            op.apply(at).map_err(Error::invalid)?;
            server_rows(l, &table_at(at, &name)?, root, true)?;
        }
        SchemaOp::DropColumn { column, .. } => {
            let t = table_at(at, &name)?;
            server_rows(l, &t, root, false)?;
            dropped_values(l, &t, column, seq)?;
            run(l, op)?;
            l.db.exec(&format!(
                "ALTER TABLE {} DROP COLUMN {}",
                base_table(&name),
                quote_ident(column)
            ))?;
            settle_open_conflicts(l, &t.name, Some(column))?;
            op.apply(at).map_err(Error::invalid)?;
            server_rows(l, &table_at(at, &name)?, root, true)?;
        }
        SchemaOp::RenameColumn { from, to, .. } => {
            run(l, op)?;
            l.db.exec(&format!(
                "ALTER TABLE {} RENAME COLUMN {} TO {}",
                base_table(&name),
                quote_ident(from),
                quote_ident(to)
            ))?;
            op.apply(at).map_err(Error::invalid)?;
        }
        SchemaOp::CreateTable { table } => {
            create_table(l, table)?;
            op.apply(at).map_err(Error::invalid)?;
        }
        SchemaOp::DropTable { .. } => {
            let t = table_at(at, &name)?;
            server_rows(l, &t, root, false)?;
            dropped_rows(l, &t, seq)?;
            run(l, op)?;
            l.db.exec(&format!("DROP TABLE IF EXISTS {}", base_table(&t.name)))?;
            l.db.run(
                "DELETE FROM pdb_blocked WHERE tbl = ?1",
                &[Value::text(&t.name)],
            )?;
            settle_open_conflicts(l, &t.name, None)?;
            op.apply(at).map_err(Error::invalid)?;
        }
        SchemaOp::CreateIndex { index, .. } => {
            if index.unique {
                set_aside_duplicates(l, &table_at(at, &name)?, index, seq)?;
            }
            run(l, op)?;
            op.apply(at).map_err(Error::invalid)?;
        }
        SchemaOp::DropIndex { .. } => {
            run(l, op)?;
            op.apply(at).map_err(Error::invalid)?;
        }
    }
    Ok(())
}

/// The operation's statements on the app's table, built from the
/// operation (checked data, names quoted).
fn run(l: &Local, op: &SchemaOp) -> Result<()> {
    for sql in op.ddl() {
        l.db.exec(&sql).map_err(|e| {
            e.context(|m| {
                format!(
                    "{m} (an index, trigger or view of this app's own on table {:?} may stand in the way: change it, and sync resumes)",
                    op.table()
                )
            })
        })?;
    }
    Ok(())
}

/// A column of a base log: name, declared type (so the same affinity) and
/// the default, so entries logged before it hold what the server's rows
/// hold; no constraint.
fn base_column(c: &Column) -> String {
    let mut d = format!("{} {}", quote_ident(&c.name), c.decl_type);
    if let Some(v) = &c.default {
        d.push_str(&format!(" DEFAULT {v}"));
    }
    d
}

/// Moves `root` by every row of table `t` as the server has it (a row
/// nobody changed here, or a pending row's base): out (`add` false) or in.
/// Rows with a NULL key never reach the witness and are not in the root.
fn server_rows(l: &Local, t: &Table, root: &mut StateRoot, add: bool) -> Result<()> {
    let st = SyncTable::new(t);
    let pending = pending::rows(l, &st)?;
    let keys: HashSet<Vec<u8>> = pending.iter().map(|p| encode_values(&p.key)).collect();
    let mut touch = |row: &[Value]| {
        if add {
            root.add_row(&st.name, row)
        } else {
            root.remove_row(&st.name, row)
        }
    };
    l.db.each(&st.rows.scan, &[], |r| {
        let k = st.key_of(&r);
        if !k.contains(&Value::Null) && !keys.contains(&encode_values(&k)) {
            touch(&r);
        }
        Ok(true)
    })?;
    for p in &pending {
        if let (false, Some(b)) = (p.key.contains(&Value::Null), &p.base) {
            touch(b);
        }
    }
    Ok(())
}

/// Values of `column` this database changed (or set on a row it
/// inserted, other than the default): recorded before the column goes.
fn dropped_values(l: &Local, t: &Table, column: &str, seq: u64) -> Result<()> {
    let st = SyncTable::new(t);
    let Some(i) = t
        .columns
        .iter()
        .position(|c| c.name.eq_ignore_ascii_case(column))
    else {
        return Ok(());
    };
    let default = literal_value(t.columns[i].default.as_deref()).unwrap_or(Value::Null);
    for p in pending::rows(l, &st)? {
        let Some(local) = p.cur.as_ref().and_then(|c| c.get(i)).cloned() else {
            continue;
        };
        let base = p.base.as_ref().and_then(|b| b.get(i)).cloned();
        let edited = match &base {
            Some(b) => *b != local,
            None => local != default,
        };
        if edited {
            conflicts::record_schema(
                l,
                &t.name,
                seq,
                &p.key,
                Some(&t.columns[i].name),
                base.unwrap_or(Value::Null),
                local,
            )?;
        }
    }
    Ok(())
}

/// Every pending row of a table about to be dropped: recorded (its base
/// and local rows) before it goes.
fn dropped_rows(l: &Local, t: &Table, seq: u64) -> Result<()> {
    let st = SyncTable::new(t);
    let row = |r: &Option<Vec<Value>>| {
        r.as_deref()
            .map_or(Value::Null, |r| Value::text(&values_json(r)))
    };
    for p in pending::rows(l, &st)? {
        conflicts::record_schema(l, &t.name, seq, &p.key, None, row(&p.base), row(&p.cur))?;
    }
    Ok(())
}

/// Open conflicts (policy manual) on what a migration removes can no
/// longer be resolved: they are settled as the group has it, and rows held
/// only for them are released.
fn settle_open_conflicts(l: &Local, table: &str, column: Option<&str>) -> Result<()> {
    let t = Value::text(table);
    l.db.run(
        "UPDATE pdb_conflicts SET kept = 'remote', resolved_ms = ?3
          WHERE kept = 'open' AND tbl = ?1 AND (?2 IS NULL OR col = ?2 OR col IS NULL)",
        &[
            t.clone(),
            column.map_or(Value::Null, Value::text),
            Value::Integer(now_ms() as i64),
        ],
    )?;
    l.db.run(
        "DELETE FROM pdb_blocked WHERE tbl = ?1 AND code = ?2 AND pk NOT IN
           (SELECT key_values FROM pdb_conflicts WHERE tbl = ?1 AND kept = 'open' AND key_values IS NOT NULL)",
        &[t, Value::text(crate::hold::OPEN_CONFLICT)],
    )
}

/// The `pdb_state` key that records the app's choice to let a migration
/// take its own table `name` into the group (`pdb_adopt`).
fn adopt_key(name: &str) -> String {
    format!("adopt_table:{}", name.to_ascii_lowercase())
}

/// `pdb_adopt(table)`: the app's explicit choice that when a migration of
/// the group creates a table of this name, this database's own table of
/// that name (of exactly the group's structure) becomes the group's, its
/// rows this device's inserts, signed with its identity and seen by every
/// member. Without it such a migration stops sync (`local_table_exists`).
pub fn adopt(db: Db, table: &str) -> Result<serde_json::Value> {
    if table.is_empty() || table.len() > 128 {
        return Err(Error::invalid("give the name of a table of this database"));
    }
    if read_local(&db, &[table.to_string()])?.is_none() {
        return Err(Error::invalid(format!(
            "this database has no table {table:?}: nothing to adopt"
        )));
    }
    if state::load(db)?.schema.table(table).is_some() {
        return Err(Error::invalid(format!(
            "table {table:?} is already the group's"
        )));
    }
    state::set(&db, &adopt_key(table), Value::Integer(1))?;
    Ok(serde_json::json!({
        "table": table,
        "adopt": "when a migration of the group creates a table of this name with this structure, its rows become this device's inserts and are pushed to the group",
    }))
}

/// Sync stops before a migration that creates a table this database
/// already has as its own (never the group's): its rows would become the
/// group's, pushed under this device's identity, because the witness
/// said so. The app decides: rename or drop its table, or `pdb_adopt` it.
pub fn local_table_in_the_way(l: &Local, v: &Verified) -> Result<Option<Error>> {
    for op in &v.migration.ops {
        let SchemaOp::CreateTable { table } = op else {
            continue;
        };
        if read_local(&l.db, std::slice::from_ref(&table.name))?.is_none()
            || state::get_i64(&l.db, &adopt_key(&table.name))? == Some(1)
        {
            continue;
        }
        return Ok(Some(Error::Stopped {
            code: "local_table_exists",
            message: format!(
                "local_table_exists: the group's migration to schema version {} creates table {:?}, and this database has a table of that name of its own (never the group's); its rows are not sent anywhere: rename or drop it, or call pdb_adopt({:?}) to make it the group's (its rows pushed under this device's identity); then sync resumes",
                v.schema.version, table.name, table.name
            ),
        }));
    }
    Ok(None)
}

/// A table the migration adds: created from its structure, or — when the
/// app already made one of that name exactly as the group has it, and
/// chose to adopt it (`pdb_adopt`) — taken as it is, its rows becoming
/// this database's inserts. An own table not chosen is refused.
fn create_table(l: &Local, t: &Table) -> Result<()> {
    let adopt = match read_local(&l.db, std::slice::from_ref(&t.name))? {
        Some(_) if state::get_i64(&l.db, &adopt_key(&t.name))? != Some(1) => {
            return Err(Error::Stopped {
                code: "local_table_exists",
                message: format!(
                    "local_table_exists: this database has a table {:?} of its own: rename or drop it, or call pdb_adopt({:?}); then sync resumes",
                    t.name, t.name
                ),
            });
        }
        Some(local) => {
            let local = local
                .first()
                .ok_or_else(|| Error::invalid("reading a local table"))?;
            t.check_local(local).map_err(|e| {
                Error::invalid(format!(
                    "this database already has a table {:?} that differs from the group's new one ({e}): rename or drop it, and sync resumes",
                    t.name
                ))
            })?;
            true
        }
        None => false,
    };
    if adopt {
        state::delete(&l.db, &adopt_key(&t.name))?;
    } else {
        l.db.exec(&t.create_sql())?;
    }
    for sql in t.index_sql() {
        l.db.exec(&sql)?;
    }
    crate::capture::install_log(&l.db, t, &SyncTable::new(t), adopt)
}

/// Before a UNIQUE index is made: a pending row that holds the same
/// values in its columns as another row would stop it. Its local change
/// is set aside (the row back to its value on the server, or gone if only
/// this database had it) and recorded, as a pull does when a remote row
/// takes a UNIQUE value.
fn set_aside_duplicates(l: &Local, t: &Table, index: &Index, seq: u64) -> Result<()> {
    let st = SyncTable::new(t);
    let mut cols = Vec::new();
    for c in &index.columns {
        let Some(i) = t
            .columns
            .iter()
            .position(|x| x.name.eq_ignore_ascii_case(&c.name))
        else {
            return Ok(());
        };
        let coll = c
            .collation
            .clone()
            .or_else(|| t.columns[i].collation.clone())
            .unwrap_or_else(|| "BINARY".into());
        cols.push((i, coll));
    }
    let conds: Vec<String> = cols
        .iter()
        .enumerate()
        .map(|(n, (i, coll))| {
            format!(
                "{} = ?{} COLLATE {}",
                quote_ident(&t.columns[*i].name),
                n + 1,
                quote_ident(coll)
            )
        })
        .collect();
    let count = format!(
        "SELECT count(*) FROM {} WHERE {}",
        quote_ident(&t.name),
        conds.join(" AND ")
    );
    let mut aside = Vec::new();
    for p in pending::rows(l, &st)? {
        let Some(cur) = &p.cur else { continue };
        let values: Vec<Value> = cols
            .iter()
            .map(|(i, _)| cur.get(*i).cloned().unwrap_or(Value::Null))
            .collect();
        if values.contains(&Value::Null) {
            continue;
        }
        let n =
            l.db.row(&count, &values)?
                .and_then(|r| r.first().and_then(as_i64))
                .unwrap_or(0);
        if n > 1 {
            aside.push(p);
        }
    }
    for p in &aside {
        let c = Conflict::SetAside {
            base: p.base.clone(),
            local: p.cur.clone(),
            remote: None,
            kept: Kept::Remote,
        };
        conflicts::record(l, &st, seq, &p.key, &c)?;
        st.write(&l.sql, &p.key, p.cur.as_ref(), None)?;
    }
    for p in &aside {
        if let Some(b) = &p.base {
            st.write(&l.sql, &p.key, None, Some(b))?;
        }
        pending::drop_entries(l, &st, &p.seqs)?;
    }
    Ok(())
}

/// The witness's migrations after version `after` up to at least version
/// `until`, page after page (with the first schema when `after` is 0).
fn migrations_until(
    w: &dyn WitnessApi,
    after: u32,
    until: u32,
) -> Result<pdb_protocol::wire::MigrationsPage> {
    let mut page = w.migrations(after)?;
    let mut asked = after;
    while let Some(next) = page.next_after_version.take() {
        if next >= until {
            break;
        }
        if next <= asked {
            return Err(Error::invalid(
                "the witness's pages of migrations do not move forward",
            ));
        }
        asked = next;
        let more = w.migrations(next)?;
        page.migrations.extend(more.migrations);
        page.next_after_version = more.next_after_version;
    }
    Ok(page)
}

/// The schema of the group at `version`, from its first schema and
/// migrations, each checked against its signed record: for a new database
/// that starts from a snapshot made at that version (the snapshot's own
/// signed record then names the same hash) or from the log's start.
pub fn schema_at(
    l_key: &pdb_protocol::KeyChain,
    group: &str,
    w: &dyn WitnessApi,
    version: u32,
) -> Result<Schema> {
    let page = migrations_until(w, 0, version)?;
    let first = page
        .first_schema
        .as_ref()
        .ok_or_else(|| Error::invalid("the witness did not send the group's first schema"))?
        .schema()
        .map_err(|e| Error::invalid(format!("the witness sent a schema that is refused ({e})")))?;
    let mut s = first;
    for e in &page.migrations {
        if s.version >= version {
            break;
        }
        let bad = |m: &str| Error::untrusted(format!("migration {}: {m}", e.seq));
        let bytes = e
            .migration
            .as_deref()
            .and_then(unb64)
            .ok_or_else(|| bad("its migration is not base64"))?;
        let rec = e
            .certificate
            .signed
            .to_signed()
            .ok_or_else(|| bad("malformed certificate"))?
            .migration(l_key)
            .map_err(|e| bad(&format!("certificate rejected ({e})")))?;
        let m = Migration::decode(&bytes).map_err(|e| bad(&e))?;
        let next = m.apply_to(&s).map_err(|e| bad(&e))?;
        if rec.group != group
            || rec.migration_digest != sha256(&bytes)
            || rec.schema_hash != next.hash()
            || rec.from_version != s.version
        {
            return Err(bad("it does not match its certificate"));
        }
        s = next;
    }
    if s.version != version {
        return Err(Error::invalid(format!(
            "the witness lists no schema version {version} for this group"
        )));
    }
    Ok(s)
}
