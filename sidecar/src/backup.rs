//! `pdb-witness backup` and `restore`: a consistent copy of everything a
//! witness keeps, taken while it serves, and putting one back.
//!
//! A backup holds the signing key, its rotations and the admin token's
//! hash, the static tokens, the directory (groups and members), every group's file, and the
//! snapshots. Each database is copied with `VACUUM INTO`, which reads one
//! snapshot of it (a WAL read transaction: the witness goes on committing)
//! and writes a compact, consistent copy. A group's snapshots are copied
//! after its file, and only those at or below the head copied, so a
//! restored group never offers a snapshot past its own head.
//! `backup.json`, written last, lists each group's head in the backup.

use crate::directory;
use crate::keys;
use crate::store::{self, log};
use crate::witness::groups_dir;
use pdb_protocol::{hex, now_ms};
use rusqlite::Connection;
use serde_json::json;
use std::path::Path;

pub const MANIFEST: &str = "backup.json";
const TOKENS: &str = "tokens.json";

fn io(what: &Path) -> impl Fn(std::io::Error) -> String + '_ {
    move |e| format!("{}: {e}", what.display())
}

/// Copies `from` to `to` (`None` when `from` does not exist), synced.
fn copy_file(from: &Path, to: &Path) -> Result<Option<()>, String> {
    match std::fs::copy(from, to) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("copying {}: {e}", from.display())),
    }
    std::fs::File::open(to)
        .and_then(|f| f.sync_all())
        .map_err(io(to))?;
    Ok(Some(()))
}

/// A consistent copy of the SQLite database `from` at `to`.
fn copy_database(from: &Path, to: &Path) -> Result<(), String> {
    let conn = Connection::open_with_flags(from, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| format!("opening {}: {e}", from.display()))?;
    conn.busy_timeout(std::time::Duration::from_secs(30))
        .map_err(|e| e.to_string())?;
    conn.execute("VACUUM INTO ?1", [to.to_string_lossy()])
        .map_err(|e| format!("copying {}: {e}", from.display()))?;
    std::fs::File::open(to)
        .and_then(|f| f.sync_all())
        .map_err(io(to))
}

/// Backs up the data directory `data` into `to` (which must not exist or
/// be empty). `tokens` is the static tokens file when it is kept
/// elsewhere. Returns the manifest.
pub fn backup(data: &Path, to: &Path, tokens: Option<&Path>) -> Result<serde_json::Value, String> {
    if std::fs::read_dir(to).is_ok_and(|mut d| d.next().is_some()) {
        return Err(format!("{} is not empty", to.display()));
    }
    keys::load_key(data).map_err(|e| e.to_string())?;
    keys::private_dir(to).map_err(io(to))?;
    std::fs::create_dir_all(to.join("groups")).map_err(io(to))?;
    for f in [keys::KEY_FILE, keys::TOKEN_HASH_FILE, keys::ROTATIONS_FILE] {
        copy_file(&data.join(f), &to.join(f))?;
    }
    let tokens = tokens.map_or_else(|| data.join(TOKENS), Path::to_path_buf);
    copy_file(&tokens, &to.join(TOKENS))?;
    if data.join(directory::FILE).exists() {
        copy_database(&data.join(directory::FILE), &to.join(directory::FILE))?;
    }
    let mut ids: Vec<String> = std::fs::read_dir(groups_dir(data))
        .map_err(io(&groups_dir(data)))?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_suffix(".sqlite")
                .filter(|id| store::valid_id(id))
                .map(str::to_string)
        })
        .collect();
    ids.sort();
    let mut groups = serde_json::Map::new();
    for id in &ids {
        let file = store::file_name(id);
        let copy = to.join("groups").join(&file);
        copy_database(&groups_dir(data).join(&file), &copy)?;
        let head = Connection::open(&copy)
            .map_err(|e| e.to_string())
            .and_then(|c| log::head(&c).map_err(|e| e.to_string()))
            .map_err(|e| format!("reading the copy of group {id}: {e}"))?;
        let snaps = copy_snapshots(data, to, id, head.seq)?;
        groups.insert(
            id.clone(),
            json!({"seq": head.seq, "head_hash": hex(&head.hash), "snapshots": snaps}),
        );
    }
    let manifest = json!({"format": 1, "time_ms": now_ms(), "groups": groups});
    let text = serde_json::to_string_pretty(&manifest).map_err(|e| e.to_string())?;
    keys::write_private(&to.join(MANIFEST), &text).map_err(io(&to.join(MANIFEST)))?;
    Ok(manifest)
}

/// Copies a group's snapshots at or below `upto`; returns their seqs.
fn copy_snapshots(data: &Path, to: &Path, id: &str, upto: u64) -> Result<Vec<u64>, String> {
    let from = crate::snapshot::dir(data, id);
    let dest = crate::snapshot::dir(to, id);
    let mut copied = Vec::new();
    for seq in crate::snapshot::list(&from)
        .into_iter()
        .filter(|s| *s <= upto)
    {
        std::fs::create_dir_all(&dest).map_err(io(&dest))?;
        let data_file = crate::snapshot::data_path(&from, seq);
        let manifest = crate::snapshot::manifest_path(&from, seq);
        // A snapshot dropped meanwhile (only the newest two are kept) is
        // simply not in the backup.
        if copy_file(&data_file, &crate::snapshot::data_path(&dest, seq))?.is_none() {
            continue;
        }
        match copy_file(&manifest, &crate::snapshot::manifest_path(&dest, seq))? {
            Some(()) => copied.push(seq),
            None => {
                let _ = std::fs::remove_file(crate::snapshot::data_path(&dest, seq));
            }
        }
    }
    Ok(copied)
}

/// Restores the backup `from` into the data directory `data`, which must
/// hold no witness yet. Returns the backup's manifest.
pub fn restore(from: &Path, data: &Path) -> Result<serde_json::Value, String> {
    let manifest: serde_json::Value = std::fs::read(from.join(MANIFEST))
        .map_err(|e| {
            format!(
                "{} has no {MANIFEST} (not a complete backup): {e}",
                from.display()
            )
        })
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))?;
    if data.join(keys::KEY_FILE).exists()
        || std::fs::read_dir(groups_dir(data)).is_ok_and(|mut d| d.next().is_some())
    {
        return Err(format!(
            "{} already holds a witness: restore into an empty data directory (move this one aside)",
            data.display()
        ));
    }
    std::fs::create_dir_all(groups_dir(data)).map_err(io(data))?;
    for f in [
        keys::KEY_FILE,
        keys::TOKEN_HASH_FILE,
        keys::ROTATIONS_FILE,
        TOKENS,
    ] {
        if let Ok(text) = std::fs::read_to_string(from.join(f)) {
            keys::write_private(&data.join(f), &text).map_err(io(&data.join(f)))?;
        }
    }
    copy_file(&from.join(directory::FILE), &data.join(directory::FILE))?;
    let groups = manifest["groups"].as_object().cloned().unwrap_or_default();
    for (id, g) in &groups {
        if !store::valid_id(id) {
            return Err(format!("the backup names an invalid group id {id:?}"));
        }
        let file = store::file_name(id);
        copy_file(
            &from.join("groups").join(&file),
            &groups_dir(data).join(&file),
        )?
        .ok_or_else(|| format!("the backup lacks the file of group {id}"))?;
        let (src, dest) = (
            crate::snapshot::dir(from, id),
            crate::snapshot::dir(data, id),
        );
        for seq in g["snapshots"].as_array().into_iter().flatten() {
            let Some(seq) = seq.as_u64() else { continue };
            std::fs::create_dir_all(&dest).map_err(io(&dest))?;
            copy_file(
                &crate::snapshot::data_path(&src, seq),
                &crate::snapshot::data_path(&dest, seq),
            )?;
            copy_file(
                &crate::snapshot::manifest_path(&src, seq),
                &crate::snapshot::manifest_path(&dest, seq),
            )?;
        }
    }
    for d in [data.to_path_buf(), groups_dir(data)] {
        std::fs::File::open(&d)
            .and_then(|f| f.sync_all())
            .map_err(io(&d))?;
    }
    Ok(manifest)
}
