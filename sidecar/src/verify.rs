//! The verifier: re-checks a group from disk alone. Every certificate's
//! signature, the hash chain, every changeset digest, and every state root
//! by replaying the log into a fresh database; then the head row and a
//! from-scratch root of the replica itself.

use crate::store::{self, full_root, log, schema, GroupInfo};
use pdb_protocol::records::{Entry, Signed};
use pdb_protocol::KeyChain as Keys;
use pdb_protocol::Value;
use pdb_protocol::{hex, sha256, Changeset, Migration, MigrationRecord, StateRoot};
use rusqlite::session::ConflictAction;
use rusqlite::Connection;
use std::path::Path;

#[derive(Debug)]
pub struct Report {
    pub group: String,
    pub commits: u64,
    pub rows: u64,
    pub head_hash: String,
    pub state_root: String,
}

/// `snapshots` is the group's snapshot directory: a pruned log is replayed
/// from the first snapshot at or after its pruning point.
pub fn verify_file(path: &Path, snapshots: &Path, key: &Keys) -> Result<Report, String> {
    let conn =
        store::open_conn(path, false).map_err(|e| format!("opening {}: {e}", path.display()))?;
    conn.execute_batch("BEGIN").map_err(|e| e.to_string())?;
    let info = store::load_info(&conn).map_err(|e| e.to_string())?;
    let report = verify_conn(&conn, &info, snapshots, key);
    let _ = conn.execute_batch("COMMIT");
    report
}

fn verify_conn(
    conn: &Connection,
    info: &GroupInfo,
    snapshots: &Path,
    key: &Keys,
) -> Result<Report, String> {
    let fail = |seq: u64, what: &str| format!("group {:?}, commit {seq}: {what}", info.id);
    let first = info
        .history
        .first()
        .ok_or_else(|| format!("group {:?}: no schema history", info.id))?;
    // The schema in force at each point of the replay, as a group's info.
    let first_schema = crate::store::schema_of(conn, first.version)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("group {:?}: its first schema is missing", info.id))?;
    let mut at = GroupInfo::new(info.id.clone(), first_schema, Vec::new());
    let replica = Connection::open_in_memory().map_err(|e| e.to_string())?;
    let mut prev = info.genesis();
    let mut root = StateRoot::empty();
    let mut st = conn
        .prepare(
            "SELECT seq, idem_key, head_hash, changeset, record, signature, migration FROM pdb_log ORDER BY seq",
        )
        .map_err(|e| e.to_string())?;
    let mut rows = st.query([]).map_err(|e| e.to_string())?;
    let pruned = log::pruned_through(conn).map_err(|e| e.to_string())?;
    // The log is pruned up to a window before a snapshot: the replay
    // restarts from the first snapshot at or after the pruning point.
    let restart = if pruned == 0 {
        0
    } else {
        crate::snapshot::first_from(snapshots, pruned).ok_or_else(|| {
            format!(
                "group {:?}: the log is pruned through {pruned} but no snapshot at or after it is kept",
                info.id
            )
        })?
    };
    if restart == 0 {
        schema::create(&replica, &at.schema)?;
    }
    let mut expected_seq = 1u64;
    while let Some(r) = rows.next().map_err(|e| e.to_string())? {
        let get_blob = |i| r.get::<_, Vec<u8>>(i).map_err(|e| e.to_string());
        let seq = r.get::<_, i64>(0).map_err(|e| e.to_string())? as u64;
        let idem: String = r.get(1).map_err(|e| e.to_string())?;
        let (stored_hash, cs, record) = (get_blob(2)?, get_blob(3)?, get_blob(4)?);
        let migration: Option<Vec<u8>> = r.get(6).map_err(|e| e.to_string())?;
        let signature: [u8; 64] = get_blob(5)?
            .try_into()
            .map_err(|_| fail(seq, "signature is not 64 bytes"))?;
        if seq != expected_seq {
            return Err(fail(
                seq,
                &format!("gap in the log: expected commit {expected_seq}"),
            ));
        }
        let signed = Signed {
            bytes: record,
            signature,
        };
        let entry = signed.entry(key).map_err(|e| fail(seq, &e.to_string()))?;
        let head_hash = sha256(&signed.bytes);
        let base_checks = [
            (entry.seq() == seq, "certificate names another sequence"),
            (entry.group() == info.id, "certificate names another group"),
            (
                entry.prev_head() == prev,
                "certificate does not chain to the previous head",
            ),
            (
                stored_hash == head_hash,
                "stored head hash is not the certificate's hash",
            ),
        ];
        if let Some((_, what)) = base_checks.iter().find(|(ok, _)| !ok) {
            return Err(fail(seq, what));
        }
        let rec = match entry {
            Entry::Migration(m) => {
                let bytes = migration
                    .ok_or_else(|| fail(seq, "a migration entry without its migration"))?;
                let replayed = seq > restart;
                root = replay_migration(&replica, &mut at, &m, &bytes, &idem, root, replayed)
                    .map_err(|e| fail(seq, &e))?;
                if seq == restart {
                    root = restart_from(
                        &replica,
                        &at,
                        snapshots,
                        seq,
                        &head_hash,
                        &m.state_root,
                        key,
                    )
                    .map_err(|e| fail(seq, &e))?;
                }
                prev = head_hash;
                expected_seq += 1;
                continue;
            }
            Entry::Commit(c) => c,
        };
        let checks = [
            (migration.is_none(), "a commit entry with a migration"),
            (
                seq <= pruned || rec.changeset_digest == sha256(&cs),
                "changeset digest does not match",
            ),
            (
                rec.idempotency_key == idem,
                "idempotency key does not match the log",
            ),
            (
                rec.schema_version == at.schema.version && rec.schema_hash == at.schema_hash,
                "certificate names another schema than the one in force",
            ),
        ];
        if let Some((_, what)) = checks.iter().find(|(ok, _)| !ok) {
            return Err(fail(seq, what));
        }
        if seq <= restart {
            // Up to the pruning point the changeset is gone; the chain and
            // signature still verify (and the digest, where it is kept). At
            // the restart point, the snapshot stands in for the replay.
            if seq == restart {
                root = restart_from(
                    &replica,
                    &at,
                    snapshots,
                    seq,
                    &head_hash,
                    &rec.state_root,
                    key,
                )
                .map_err(|e| fail(seq, &e))?;
            }
            prev = head_hash;
            expected_seq += 1;
            continue;
        }
        let decoded = Changeset::decode(&cs).map_err(|e| fail(seq, &e.to_string()))?;
        decoded
            .validate(&at.schema)
            .map_err(|e| fail(seq, &e.to_string()))?;
        let touched = at.touched_keys(&decoded);
        session_apply(&replica, &at, &cs, &touched, &mut root)
            .map_err(|e| fail(seq, &format!("replay failed: {e}")))?;
        if root.digest() != rec.state_root {
            return Err(fail(
                seq,
                "state root after replay differs from the certified one",
            ));
        }
        prev = head_hash;
        expected_seq += 1;
    }
    let last = expected_seq - 1;
    let head = log::head(conn).map_err(|e| e.to_string())?;
    if head.seq != last || head.hash != prev {
        return Err(format!(
            "group {:?}: head is at {} but the log ends at {last}",
            info.id, head.seq
        ));
    }
    if head.root != root {
        return Err(format!(
            "group {:?}: stored head root differs from the replayed root",
            info.id
        ));
    }
    if at.schema != info.schema || head.schema_version != info.schema.version {
        return Err(format!(
            "group {:?}: the replayed migrations do not end at the schema in force",
            info.id
        ));
    }
    let (disk_root, rows) = full_root(conn, info).map_err(|e| e.to_string())?;
    if disk_root != root {
        return Err(format!(
            "group {:?}: the replica's content does not match the certified state root",
            info.id
        ));
    }
    let (replay_root, _) = full_root(&replica, info).map_err(|e| e.to_string())?;
    if replay_root != root {
        return Err(format!(
            "group {:?}: incremental root differs from a full recount",
            info.id
        ));
    }
    Ok(Report {
        group: info.id.clone(),
        commits: last,
        rows,
        head_hash: hex(&prev),
        state_root: hex(&root.digest()),
    })
}

/// Checks a migration entry against the schema in force (`at`) and makes
/// it: on the replay database too when `replayed` (past the pruning
/// point), where the root must then be the certified one. Returns the
/// root after it.
fn replay_migration(
    replica: &Connection,
    at: &mut GroupInfo,
    rec: &MigrationRecord,
    bytes: &[u8],
    idem: &str,
    mut root: StateRoot,
    replayed: bool,
) -> Result<StateRoot, String> {
    let m = Migration::decode(bytes)?;
    let new = m.apply_to(&at.schema)?;
    let checks = [
        (
            rec.migration_digest == sha256(bytes),
            "the migration does not match its certificate",
        ),
        (
            rec.from_version == at.schema.version && m.from_version == at.schema.version,
            "the migration does not follow the schema in force",
        ),
        (
            rec.schema_version == new.version && rec.schema_hash == new.hash(),
            "the certificate names another schema than the migration makes",
        ),
        (
            rec.accepts_from == m.accepts_from,
            "the certificate names another window",
        ),
        (
            idem == crate::write::migration::entry_key(m.to_version),
            "the entry's key is not its migration's",
        ),
    ];
    if let Some((_, what)) = checks.iter().find(|(ok, _)| !ok) {
        return Err(what.to_string());
    }
    if replayed {
        let mut schema = at.schema.clone();
        for op in &m.ops {
            crate::write::migration::change_tables(replica, &mut schema, op, &mut root)
                .map_err(|e| e.body().error.message)?;
        }
        if root.digest() != rec.state_root {
            return Err("state root after the migration differs from the certified one".into());
        }
    }
    *at = GroupInfo::new(at.id.clone(), new, Vec::new());
    Ok(root)
}

/// The replay starts at `seq` from its snapshot: the replay database gets
/// the tables of the schema then in force and the snapshot's rows.
fn restart_from(
    replica: &Connection,
    at: &GroupInfo,
    dir: &Path,
    seq: u64,
    head_hash: &[u8; 32],
    certified_root: &[u8; 32],
    key: &Keys,
) -> Result<StateRoot, String> {
    schema::create(replica, &at.schema)?;
    load_snapshot(replica, at, dir, seq, head_hash, certified_root, key)
}

/// Replays a changeset with SQLite's own session apply (not the witness's
/// apply, so the verifier cross-checks it), aborting on any conflict, and
/// moves `root` by the touched rows' values before and after.
fn session_apply(
    conn: &Connection,
    info: &GroupInfo,
    changeset: &[u8],
    touched: &[(String, Vec<Value>)],
    root: &mut StateRoot,
) -> Result<(), String> {
    let fetch = |table: &str, key: &[Value]| -> Result<Option<Vec<Value>>, String> {
        let t = info
            .table_sql(table)
            .ok_or_else(|| format!("no table {table:?}"))?;
        t.fetch(conn, key).map_err(|e| e.to_string())
    };
    for (table, key) in touched {
        if let Some(row) = fetch(table, key)? {
            root.remove_row(table, &row);
        }
    }
    conn.apply_strm(&mut &changeset[..], None::<fn(&str) -> bool>, |kind, _| {
        tracing::debug!(?kind, "conflict during replay");
        ConflictAction::SQLITE_CHANGESET_ABORT
    })
    .map_err(|e| format!("SQLite's session apply refused it: {e}"))?;
    for (table, key) in touched {
        if let Some(row) = fetch(table, key)? {
            root.add_row(table, &row);
        }
    }
    Ok(())
}

/// Loads the snapshot taken at `seq` into the replay database after
/// checking its manifest (signature, head, root) and its bytes (digest),
/// and returns the root recounted from the loaded rows.
fn load_snapshot(
    replica: &Connection,
    info: &GroupInfo,
    dir: &Path,
    seq: u64,
    head_hash: &[u8; 32],
    certified_root: &[u8; 32],
    key: &Keys,
) -> Result<StateRoot, String> {
    let m = crate::snapshot::manifest(dir, seq)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| {
            format!("the log is pruned through {seq} but the snapshot at {seq} is missing")
        })?;
    let rec = m
        .signed
        .to_signed()
        .ok_or("malformed snapshot manifest")?
        .snapshot(key)
        .map_err(|e| format!("snapshot manifest: {e}"))?;
    if rec.seq != seq || &rec.head_hash != head_hash || &rec.state_root != certified_root {
        return Err("the snapshot manifest does not match the certified head".into());
    }
    if rec.schema_version != info.schema.version || rec.schema_hash != info.schema_hash {
        return Err("the snapshot manifest names another schema than the one in force".into());
    }
    let bytes = std::fs::read(crate::snapshot::data_path(dir, seq))
        .map_err(|e| format!("reading the snapshot: {e}"))?;
    if sha256(&bytes) != rec.digest || bytes.len() as u64 != rec.size {
        return Err("the snapshot file does not match its manifest".into());
    }
    replica
        .apply_strm(&mut &bytes[..], None::<fn(&str) -> bool>, |_, _| {
            ConflictAction::SQLITE_CHANGESET_ABORT
        })
        .map_err(|e| format!("loading the snapshot: {e}"))?;
    let (root, _) = full_root(replica, info).map_err(|e| e.to_string())?;
    if &root.digest() != certified_root {
        return Err("the snapshot's rows do not give the certified state root".into());
    }
    Ok(root)
}
