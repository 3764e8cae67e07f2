//! The directory, `DATA/directory.sqlite`: which groups exist and who holds
//! which role in each (with a numbered log of member changes). Access
//! checks and `GET /v1/groups` read only this, so they never open a
//! group's file: a caller with no role in a group makes the witness open
//! nothing, and listing costs the same with ten groups or a hundred
//! thousand.
//!
//! The first time a witness runs with a directory, it builds it from the
//! group files (their `pdb_members`, which earlier versions used); from
//! then on the directory is the only place members live.

use crate::error::ApiError;
use crate::grant::Grant;
use crate::store;
use pdb_protocol::now_ms;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub const FILE: &str = "directory.sqlite";
const MIGRATIONS: &[&str] = &[include_str!("../../sql/directory/001_directory.sql")];
/// Read connections kept open.
const READERS: usize = 4;
/// Most groups one listing page holds.
pub const MAX_LIST: u32 = 1000;

pub struct Directory {
    path: PathBuf,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
}

fn sql(context: &'static str) -> impl Fn(rusqlite::Error) -> ApiError {
    move |e| ApiError::sqlite(context, e)
}

/// One page of group ids and where the next starts.
pub struct GroupPage {
    pub groups: Vec<String>,
    pub next_after: Option<String>,
}

impl Directory {
    /// Opens (or creates) the directory of the data directory `data_dir`;
    /// a new directory is filled from the group files in `groups_dir`.
    pub fn open(data_dir: &Path, groups_dir: &Path) -> Result<Directory, String> {
        let path = data_dir.join(FILE);
        let conn =
            Connection::open(&path).map_err(|e| format!("opening {}: {e}", path.display()))?;
        let setup = || -> rusqlite::Result<()> {
            conn.busy_timeout(std::time::Duration::from_secs(10))?;
            conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))?;
            conn.execute_batch("PRAGMA synchronous = FULL")?;
            let done: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
            for (i, m) in MIGRATIONS.iter().enumerate().skip(done.max(0) as usize) {
                conn.execute_batch(&format!(
                    "BEGIN; {m}; PRAGMA user_version = {}; COMMIT;",
                    i + 1
                ))?;
            }
            Ok(())
        };
        setup().map_err(|e| format!("preparing {}: {e}", path.display()))?;
        let d = Directory {
            path,
            writer: Mutex::new(conn),
            readers: Mutex::new(Vec::new()),
        };
        d.import(groups_dir)?;
        Ok(d)
    }

    /// Fills a new directory from the group files (once).
    fn import(&self, groups_dir: &Path) -> Result<(), String> {
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let imported: Option<i64> = w
            .query_row("SELECT v FROM meta WHERE k = 'imported_ms'", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| e.to_string())?;
        if imported.is_some() {
            return Ok(());
        }
        let tx = w.transaction().map_err(|e| e.to_string())?;
        let now = now_ms() as i64;
        let entries = std::fs::read_dir(groups_dir)
            .into_iter()
            .flatten()
            .flatten();
        let mut n = 0;
        for entry in entries {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(id) = name.strip_suffix(".sqlite") else {
                continue;
            };
            if !store::valid_id(id) {
                continue;
            }
            let members = legacy_members(&entry.path())
                .map_err(|e| format!("reading the members of group {id}: {e}"))?;
            tx.execute(
                "INSERT OR IGNORE INTO groups(grp, created_ms) VALUES (?1, ?2)",
                params![id, now],
            )
            .map_err(|e| e.to_string())?;
            for (v, (identity, role, projections)) in members.iter().enumerate() {
                let version = v as i64 + 1;
                tx.execute(
                    "INSERT OR REPLACE INTO members(identity, grp, role, projections, version) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![identity, id, role, projections, version],
                )
                .and_then(|_| {
                    tx.execute(
                        "INSERT INTO member_log(grp, version, identity, value, changed_by, time_ms) VALUES (?1, ?2, ?3, ?4, 'imported', ?5)",
                        params![id, version, identity, role, now],
                    )
                })
                .map_err(|e| e.to_string())?;
            }
            n += 1;
        }
        tx.execute("INSERT INTO meta(k, v) VALUES ('imported_ms', ?1)", [now])
            .map_err(|e| e.to_string())?;
        tx.commit().map_err(|e| e.to_string())?;
        if n > 0 {
            tracing::info!(groups = n, "directory built from the group files");
        }
        Ok(())
    }

    fn read<T>(
        &self,
        context: &'static str,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, ApiError> {
        let pooled = self.readers.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let conn = match pooled {
            Some(c) => c,
            None => {
                let c = Connection::open_with_flags(
                    &self.path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )
                .map_err(sql(context))?;
                c.busy_timeout(std::time::Duration::from_secs(10))
                    .map_err(sql(context))?;
                c
            }
        };
        let out = f(&conn).map_err(sql(context));
        let mut pool = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < READERS {
            pool.push(conn);
        }
        out
    }

    /// Records a new group.
    pub fn add_group(&self, id: &str) -> Result<(), ApiError> {
        let w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        w.execute(
            "INSERT OR IGNORE INTO groups(grp, created_ms) VALUES (?1, ?2)",
            params![id, now_ms() as i64],
        )
        .map(|_| ())
        .map_err(sql("recording a group"))
    }

    pub fn has_group(&self, id: &str) -> Result<bool, ApiError> {
        self.read("looking up a group", |c| {
            c.query_row("SELECT 1 FROM groups WHERE grp = ?1", [id], |_| Ok(()))
                .optional()
                .map(|r| r.is_some())
        })
    }

    /// How many groups there are.
    pub fn count(&self) -> Result<u64, ApiError> {
        self.read("counting groups", |c| {
            c.query_row("SELECT count(*) FROM groups", [], |r| r.get::<_, i64>(0))
                .map(|n| n as u64)
        })
    }

    /// Groups after `after` in id order, at most `limit`: every group
    /// (`member` is `None`, the operator), or those `member` holds a role
    /// in; only ids starting with `prefix`.
    pub fn list(
        &self,
        member: Option<&str>,
        prefix: &str,
        after: &str,
        limit: u32,
    ) -> Result<GroupPage, ApiError> {
        let limit = limit.clamp(1, MAX_LIST);
        // Ids are a-z 0-9 _ -, so '~' sorts after every id with the prefix.
        let upper = format!("{prefix}~");
        let groups: Vec<String> = self.read("listing groups", |c| {
            let bounds = "grp > ?1 AND grp >= ?2 AND grp < ?3 ORDER BY grp LIMIT ?4";
            match member {
                None => c
                    .prepare_cached(&format!("SELECT grp FROM groups WHERE {bounds}"))?
                    .query_map(params![after, prefix, upper, limit], |r| r.get(0))?
                    .collect(),
                Some(m) => c
                    .prepare_cached(&format!(
                        "SELECT grp FROM members WHERE identity = ?5 AND {bounds}"
                    ))?
                    .query_map(params![after, prefix, upper, limit, m], |r| r.get(0))?
                    .collect(),
            }
        })?;
        let next_after = (groups.len() as u32 == limit)
            .then(|| groups.last().cloned())
            .flatten();
        Ok(GroupPage { groups, next_after })
    }

    /// The grant of `identity` in group `id` (`None`: no role).
    pub fn grant(&self, id: &str, identity: &str) -> Result<Option<Grant>, ApiError> {
        let row: Option<(String, Option<String>)> = self.read("reading members", |c| {
            c.prepare_cached(
                "SELECT role, projections FROM members WHERE identity = ?1 AND grp = ?2",
            )?
            .query_row([identity, id], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()
        })?;
        Ok(row.and_then(|(role, names)| Grant::from_stored(&role, names.as_deref())))
    }

    /// The members of group `id` and the number of the last change.
    pub fn members(&self, id: &str) -> Result<(Vec<(String, Grant)>, i64), ApiError> {
        self.read("reading members", |c| {
            let mut st = c.prepare_cached(
                "SELECT identity, role, projections FROM members WHERE grp = ?1 ORDER BY identity",
            )?;
            let rows = st.query_map([id], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Option<String>>(2)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (who, role, names) = row?;
                if let Some(g) = Grant::from_stored(&role, names.as_deref()) {
                    out.push((who, g));
                }
            }
            let version: i64 = c.query_row(
                "SELECT coalesce(max(version), 0) FROM member_log WHERE grp = ?1",
                [id],
                |r| r.get(0),
            )?;
            Ok((out, version))
        })
    }

    /// Gives `identity` a grant in group `id` (or takes it away, `None`),
    /// logged with the group's next member version, which is returned.
    pub fn set(
        &self,
        id: &str,
        identity: &str,
        grant: Option<&Grant>,
        by: &str,
    ) -> Result<i64, ApiError> {
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let mut change = || -> rusqlite::Result<i64> {
            let tx = w.transaction()?;
            let version: i64 = tx.query_row(
                "SELECT coalesce(max(version), 0) + 1 FROM member_log WHERE grp = ?1",
                [id],
                |r| r.get(0),
            )?;
            match grant {
                Some(g) => tx.execute(
                    "INSERT OR REPLACE INTO members(identity, grp, role, projections, version) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![identity, id, g.role.name(), g.stored_projections(), version],
                )?,
                None => tx.execute(
                    "DELETE FROM members WHERE identity = ?1 AND grp = ?2",
                    [identity, id],
                )?,
            };
            tx.execute(
                "INSERT INTO member_log(grp, version, identity, value, changed_by, time_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![id, version, identity, grant.map(Grant::describe), by, now_ms() as i64],
            )?;
            tx.commit()?;
            Ok(version)
        };
        let version = change().map_err(sql("changing members"))?;
        tracing::info!(
            group = id,
            identity,
            value = grant.map(Grant::describe),
            by,
            version,
            "member changed"
        );
        Ok(version)
    }

    /// A consistent copy of the directory at `to` (blocking).
    pub fn copy_to(&self, to: &Path) -> Result<(), String> {
        self.read("copying the directory", |c| {
            c.execute("VACUUM INTO ?1", [to.to_string_lossy()])
                .map(|_| ())
        })
        .map_err(|e| e.to_string())
    }
}

/// The members a group file recorded before the directory existed.
fn legacy_members(path: &Path) -> rusqlite::Result<Vec<(String, String, Option<String>)>> {
    let c = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let has_table: bool = c
        .query_row(
            "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = 'pdb_members'",
            [],
            |_| Ok(()),
        )
        .optional()?
        .is_some();
    if !has_table {
        return Ok(Vec::new());
    }
    let with_projections: bool = c
        .query_row(
            "SELECT 1 FROM pragma_table_info('pdb_members') WHERE name = 'projections'",
            [],
            |_| Ok(()),
        )
        .optional()?
        .is_some();
    let q = if with_projections {
        "SELECT identity, role, projections FROM pdb_members ORDER BY identity"
    } else {
        "SELECT identity, role, NULL FROM pdb_members ORDER BY identity"
    };
    let mut st = c.prepare(q)?;
    let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    rows.collect()
}
