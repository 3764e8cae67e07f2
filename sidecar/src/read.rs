//! The read path: group info, signed heads, catch-up pages and projection
//! pages, each read from one WAL snapshot on a reader connection (blocking:
//! call off the async workers). Reads never wait for the writer.

use crate::auth::Role;
use crate::error::ApiError;
use crate::group::Group;
use crate::store::log;
use crate::witness::Witness;
use pdb_protocol::wire::{
    CommitsPage, GroupJson, HeadJson, MigrationsPage, ProjectionPage, SchemaJson,
};

fn sql(e: rusqlite::Error) -> ApiError {
    ApiError::internal("reading the head", e)
}

/// The group's head, signed now.
pub fn head(w: &Witness, g: &Group) -> Result<HeadJson, ApiError> {
    let head = g.read("reading the head", |c| log::head(c).map_err(sql))?;
    Ok(g.info().sign_head(&w.key, &head))
}

/// The group, its schema in force and its history, and its head.
pub fn group(w: &Witness, g: &Group) -> Result<GroupJson, ApiError> {
    let (info, head) = g.read("reading the group", |c| {
        let head = log::head(c).map_err(sql)?;
        Ok((g.info_at(c, &head)?, head))
    })?;
    Ok(GroupJson {
        group: g.id.clone(),
        schema: info.schema_json(),
        schema_history: if info.history.len() > 1 {
            info.history.iter().map(|v| v.json()).collect()
        } else {
            Vec::new()
        },
        head: info.sign_head(&w.key, &head),
    })
}

/// The migrations to versions after `after_version` with their signed
/// entries (kept whatever the log's pruning), a page of about
/// `max_page_bytes` (at least one), and the first schema's structure when
/// `after_version` is before it.
pub fn migrations(w: &Witness, g: &Group, after_version: u32) -> Result<MigrationsPage, ApiError> {
    g.read("reading the migrations", |c| {
        let first = g.info().history.first().map(|f| f.version);
        let first_schema = match first.filter(|v| *v > after_version) {
            Some(v) => crate::store::schema_of(c, v)
                .map_err(|e| ApiError::internal("reading the first schema", e))?
                .map(|s| SchemaJson::new(&s)),
            None => None,
        };
        let (migrations, next_after_version) =
            log::migrations(c, after_version, w.settings.max_page_bytes)?;
        Ok(MigrationsPage {
            migrations,
            first_schema,
            next_after_version,
        })
    })
}

/// Commits after `after` (at most `limit` and about `max_page_bytes` of
/// changesets, never past the head stated with them), or
/// `snapshot_required` when they are no longer kept. `after` past the head,
/// or not with `after_hash` when given, is `unknown_head`: the caller has a
/// history this witness does not.
pub fn commits_page(
    w: &Witness,
    g: &Group,
    after: u64,
    after_hash: Option<[u8; 32]>,
    limit: u32,
) -> Result<CommitsPage, ApiError> {
    let (head, commits) = g.read("reading the log", |c| {
        let head = log::head(c).map_err(sql)?;
        let known = after <= head.seq
            && after_hash.is_none_or(|h| {
                let at = if after == 0 {
                    Ok(Some(g.info().genesis()))
                } else {
                    log::head_hash_at(c, after)
                };
                matches!(at, Ok(Some(x)) if x == h)
            });
        if !known {
            return Err(ApiError::UnknownHead {
                message: crate::write::commit::unknown_head(after, head.seq),
                head: Box::new(g.info().sign_head(&w.key, &head)),
            });
        }
        let pruned = log::pruned_through(c)?;
        if after < pruned {
            return Err(ApiError::SnapshotRequired {
                pruned_through: pruned,
                snapshot: crate::snapshot::latest(&w.snapshots_dir(g))?.map(Box::new),
            });
        }
        let bound = log::PageBound {
            commits: limit,
            bytes: w.settings.max_page_bytes,
        };
        let commits = log::log_page(c, after, bound, head.seq)?;
        Ok((head, commits))
    })?;
    let next_after = commits.last().map(|c| c.seq).filter(|s| *s < head.seq);
    Ok(CommitsPage {
        commits,
        head: g.info().sign_head(&w.key, &head),
        next_after,
    })
}

/// One page of a projection's rows visible to `identity` holding `role`,
/// with the signed head they reflect. The page is bounded by rows, bytes
/// and the budget of its visibility rule (`crate::projection::read_page`).
pub fn projection_page(
    w: &Witness,
    g: &Group,
    name: &str,
    identity: &str,
    role: Role,
    after: i64,
    limit: u32,
) -> Result<ProjectionPage, ApiError> {
    let (head, columns, page) = g.read_sandboxed("reading a projection", |c, scope| {
        let head = log::head(c).map_err(sql)?;
        let p = crate::projection::load(c, &*g.info_at(c, &head)?, name)?
            .ok_or_else(|| ApiError::NotFound(format!("no projection {name:?}")))?;
        let page = crate::projection::read_page(c, scope, &p, identity, role.name(), after, limit)?;
        Ok((head, p.columns, page))
    })?;
    Ok(ProjectionPage {
        columns,
        rows: page.rows,
        next_after: page.next_after,
        head: g.info().sign_head(&w.key, &head),
    })
}
