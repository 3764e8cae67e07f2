//! PersonalDB as a SQLite loadable extension: `.load ./libpdb`, then sync
//! with plain SQL (`pdb_open`, `pdb_sync`, `pdb_head`, ...). The files, by
//! the path of `pdb_sync()`: docs/extension.md.

mod baselog;
mod bootstrap;
mod capture;
mod changes;
mod client;
mod conflicts;
mod db;
mod error;
mod failpoint;
mod functions;
mod hold;
mod keys;
mod kv;
mod merge;
mod migrate;
mod open;
mod pending;
mod projection;
mod pull;
mod push;
mod rebase;
mod recover;
mod resolve;
mod seal;
mod signed;
mod state;
mod status;
mod sync;
mod tables;
#[cfg(test)]
mod testing;
mod token;
mod transport;
mod unique;
mod worker;

use sqlite_loadable::ext::{sqlite3, sqlite3_api_routines};
use sqlite_loadable::prelude::register_entrypoint;
use std::ffi::{c_char, c_uint};

/// The entry point SQLite derives from the file name `libpdb.so`.
///
/// # Safety
/// Called by SQLite with a valid connection and its API table.
#[no_mangle]
pub unsafe extern "C" fn sqlite3_pdb_init(
    db: *mut sqlite3,
    pz_err_msg: *mut *mut c_char,
    p_api: *mut sqlite3_api_routines,
) -> c_uint {
    db::set_api(p_api);
    register_entrypoint(db, pz_err_msg, p_api, functions::register)
}
