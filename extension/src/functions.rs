//! The SQL functions. Every body — and every method of the
//! `pdb_projection` virtual table — runs behind a panic guard ([`guard`]:
//! a panic must never unwind into the host), errors start with the
//! function's name, and flags are honest: only pdb_version is
//! DETERMINISTIC; everything that reads sync state, changes it or uses
//! the network is DIRECTONLY.

use crate::db::Db;
use crate::error::{guard, Error};
use crate::{open, resolve, seal, status, sync};
use sqlite_loadable::api;
use sqlite_loadable::ext::{sqlite3, sqlite3_context, sqlite3_value};
use sqlite_loadable::{define_scalar_function, FunctionFlags};

type Body = fn(Db, &[*mut sqlite3_value]) -> Result<String, Error>;

fn run(
    name: &str,
    ctx: *mut sqlite3_context,
    args: &[*mut sqlite3_value],
    body: Body,
) -> sqlite_loadable::Result<()> {
    let db = Db::new(api::context_db_handle(ctx));
    let text = guard(name, || body(db, args))?;
    api::result_text(ctx, text)
}

fn text_arg(args: &[*mut sqlite3_value], i: usize, what: &str) -> Result<Option<String>, Error> {
    let Some(v) = args.get(i) else {
        return Ok(None);
    };
    if api::value_is_null(v) {
        return Ok(None);
    }
    api::value_text(v)
        .map(|s| Some(s.to_string()))
        .map_err(|_| Error::invalid(format!("argument {} ({what}) must be UTF-8 text", i + 1)))
}

fn required(args: &[*mut sqlite3_value], i: usize, what: &str) -> Result<String, Error> {
    text_arg(args, i, what)?
        .ok_or_else(|| Error::invalid(format!("argument {} ({what}) is required text", i + 1)))
}

fn int_arg(args: &[*mut sqlite3_value], i: usize, what: &str) -> Result<i64, Error> {
    let bad = || Error::invalid(format!("argument {} ({what}) must be an integer", i + 1));
    let v = args.get(i).ok_or_else(bad)?;
    if api::value_type(v) != api::ValueType::Integer {
        return Err(bad());
    }
    Ok(api::value_int64(v))
}

fn version(_: Db, _: &[*mut sqlite3_value]) -> Result<String, Error> {
    Ok(env!("CARGO_PKG_VERSION").to_string())
}

fn debug(db: Db, _: &[*mut sqlite3_value]) -> Result<String, Error> {
    Ok(format!(
        "pdb {} (git {}), host SQLite {}",
        env!("CARGO_PKG_VERSION"),
        option_env!("PDB_GIT_REV").unwrap_or("unknown"),
        db.sqlite_version()?
    ))
}

fn open_fn(db: Db, args: &[*mut sqlite3_value]) -> Result<String, Error> {
    let url = required(args, 0, "witness url")?;
    let group = required(args, 1, "group id")?;
    let opts = open::parse_options(text_arg(args, 2, "options JSON")?.as_deref())?;
    Ok(open::open(db, &url, &group, opts)?.to_string())
}

fn set_token(db: Db, args: &[*mut sqlite3_value]) -> Result<String, Error> {
    let token = text_arg(args, 0, "bearer token, or NULL to forget it")?;
    crate::token::set(&db, token.as_deref())?;
    Ok(serde_json::json!({ "token": if token.is_some() { "set" } else { "forgotten" }, "scope": "this process" }).to_string())
}

fn sync_fn(db: Db, _: &[*mut sqlite3_value]) -> Result<String, Error> {
    // One sync at a time per file in this process (the worker's too).
    let _one = db.file()?.map(|f| crate::worker::sync_lock(&f));
    Ok(sync::sync(db)?.to_string())
}

fn sync_start(db: Db, args: &[*mut sqlite3_value]) -> Result<String, Error> {
    let opts = crate::worker::parse_options(text_arg(args, 0, "options JSON")?.as_deref())?;
    Ok(crate::worker::start(db, opts)?.to_string())
}

fn sync_stop(db: Db, _: &[*mut sqlite3_value]) -> Result<String, Error> {
    Ok(crate::worker::stop(db)?.to_string())
}

fn wait_fn(db: Db, args: &[*mut sqlite3_value]) -> Result<String, Error> {
    let seq = int_arg(args, 0, "sequence number")?;
    let timeout = int_arg(args, 1, "timeout in milliseconds")?;
    Ok(crate::worker::wait(db, seq, timeout)?.to_string())
}

fn commit(db: Db, _: &[*mut sqlite3_value]) -> Result<String, Error> {
    Ok(seal::commit(db)?.to_string())
}

fn resolve_fn(db: Db, args: &[*mut sqlite3_value]) -> Result<String, Error> {
    let id = int_arg(args, 0, "conflict id")?;
    let side = required(args, 1, "side: 'local' or 'remote'")?;
    Ok(resolve::resolve(db, id, &side)?.to_string())
}

fn migrate_fn(db: Db, args: &[*mut sqlite3_value]) -> Result<String, Error> {
    let ddl = required(args, 0, "the migration's DDL")?;
    let opts = text_arg(args, 1, "options JSON")?;
    Ok(crate::migrate::submit(db, &ddl, opts.as_deref())?.to_string())
}

fn adopt_fn(db: Db, args: &[*mut sqlite3_value]) -> Result<String, Error> {
    let table = required(args, 0, "the name of this database's own table")?;
    Ok(crate::migrate::adopt(db, &table)?.to_string())
}

fn recover_fn(db: Db, args: &[*mut sqlite3_value]) -> Result<String, Error> {
    let mode = required(args, 0, "mode: 'recommit' or 'in_place'")?;
    let opts = text_arg(args, 1, "options JSON")?;
    // One sync at a time per file in this process (the worker's too).
    let _one = db.file()?.map(|f| crate::worker::sync_lock(&f));
    Ok(crate::recover::recover(db, &mode, opts.as_deref())?.to_string())
}

fn head(db: Db, _: &[*mut sqlite3_value]) -> Result<String, Error> {
    Ok(status::head(db)?.to_string())
}

fn status_fn(db: Db, _: &[*mut sqlite3_value]) -> Result<String, Error> {
    Ok(status::status(db)?.to_string())
}

fn verify(db: Db, _: &[*mut sqlite3_value]) -> Result<String, Error> {
    Ok(status::verify(db)?.to_string())
}

pub fn register(db: *mut sqlite3) -> sqlite_loadable::Result<()> {
    let pure = FunctionFlags::UTF8 | FunctionFlags::DETERMINISTIC | FunctionFlags::INNOCUOUS;
    let stateful = FunctionFlags::UTF8 | FunctionFlags::DIRECTONLY;
    let table: &[(&'static str, i32, Body, FunctionFlags)] = &[
        ("pdb_version", 0, version, pure),
        ("pdb_debug", 0, debug, FunctionFlags::UTF8),
        ("pdb_open", 2, open_fn, stateful),
        ("pdb_open", 3, open_fn, stateful),
        ("pdb_set_token", 1, set_token, stateful),
        ("pdb_sync", 0, sync_fn, stateful),
        ("pdb_sync_start", 0, sync_start, stateful),
        ("pdb_sync_start", 1, sync_start, stateful),
        ("pdb_sync_stop", 0, sync_stop, stateful),
        ("pdb_wait", 2, wait_fn, stateful),
        ("pdb_commit", 0, commit, stateful),
        ("pdb_resolve", 2, resolve_fn, stateful),
        ("pdb_migrate", 1, migrate_fn, stateful),
        ("pdb_migrate", 2, migrate_fn, stateful),
        ("pdb_recover", 1, recover_fn, stateful),
        ("pdb_recover", 2, recover_fn, stateful),
        ("pdb_adopt", 1, adopt_fn, stateful),
        ("pdb_head", 0, head, stateful),
        ("pdb_status", 0, status_fn, stateful),
        ("pdb_verify", 0, verify, stateful),
    ];
    for (name, n, body, flags) in table.iter().copied() {
        define_scalar_function(
            db,
            name,
            n,
            move |ctx, args| run(name, ctx, args, body),
            flags,
        )?;
    }
    // `CREATE VIRTUAL TABLE temp.x USING pdb_projection('<name>')`.
    sqlite_loadable::define_virtual_table::<crate::projection::ProjectionTable>(
        db,
        "pdb_projection",
        None,
    )?;
    Ok(())
}
