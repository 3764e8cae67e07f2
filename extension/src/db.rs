//! A small safe layer over the host's SQLite, reached through the
//! extension API table the host hands to the entry point. Statements,
//! exact values in and out, errors that carry SQLite's result code and
//! message, and the one way to run work in a local transaction.
//!
//! sqlite-loadable wraps only part of the API table, so the entry point
//! keeps its own copy of the table pointer for the calls made here.

use crate::error::{Error, Result};
use pdb_protocol::Value;
use sqlite_loadable::ext::{sqlite3, sqlite3_api_routines, sqlite3_stmt};
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::sync::atomic::{AtomicPtr, Ordering};

static API: AtomicPtr<sqlite3_api_routines> = AtomicPtr::new(std::ptr::null_mut());

const SQLITE_OK: c_int = 0;
const SQLITE_ROW: c_int = 100;
const SQLITE_DONE: c_int = 101;
const SQLITE_INTEGER: c_int = 1;
const SQLITE_FLOAT: c_int = 2;
const SQLITE_TEXT: c_int = 3;
const SQLITE_BLOB: c_int = 4;

/// Called once from the entry point with the host's API table.
pub fn set_api(api: *mut sqlite3_api_routines) {
    if !api.is_null() {
        API.store(api, Ordering::Release);
    }
}

/// Looks up one routine of the API table, or fails cleanly.
macro_rules! api {
    ($name:ident) => {{
        let table = API.load(Ordering::Acquire);
        if table.is_null() {
            return Err(Error::invalid("the extension was not initialised"));
        }
        // SAFETY: the table was handed to the entry point by SQLite and
        // lives as long as the process.
        match unsafe { (*table).$name } {
            Some(f) => f,
            None => {
                return Err(Error::invalid(concat!(
                    "host SQLite lacks ",
                    stringify!($name)
                )))
            }
        }
    }};
}

fn transient() -> Option<unsafe extern "C" fn(*mut c_void)> {
    // SQLITE_TRANSIENT: SQLite copies the bytes before the call returns.
    // SAFETY: SQLite compares this pointer to -1 and never calls it.
    Some(unsafe { std::mem::transmute::<isize, unsafe extern "C" fn(*mut c_void)>(-1) })
}

/// A borrowed handle to the host's connection.
#[derive(Clone, Copy)]
pub struct Db(*mut sqlite3);

impl Db {
    pub fn new(raw: *mut sqlite3) -> Db {
        Db(raw)
    }

    /// The connection's last error: SQLite's extended result code and
    /// message, the message followed by `suffix`.
    fn error(&self, suffix: &str) -> Error {
        let (errmsg, errcode) =
            match (|| -> Result<_> { Ok((api!(errmsg), api!(extended_errcode))) })() {
                Ok(f) => f,
                Err(e) => return e,
            };
        // SAFETY: errmsg returns a NUL-terminated string owned by SQLite,
        // copied before any other call.
        let (code, message) = unsafe {
            let p = errmsg(self.0);
            let message = if p.is_null() {
                "unknown SQLite error".into()
            } else {
                CStr::from_ptr(p).to_string_lossy().into_owned()
            };
            (errcode(self.0), message)
        };
        Error::Sqlite {
            code,
            message: message + suffix,
        }
    }

    /// Runs SQL without results (may hold several statements).
    pub fn exec(&self, sql: &str) -> Result<()> {
        let f = api!(exec);
        let c = CString::new(sql).map_err(|_| Error::invalid("SQL contains a NUL byte"))?;
        // SAFETY: valid connection and NUL-terminated SQL; no callback.
        let rc = unsafe {
            f(
                self.0,
                c.as_ptr(),
                None,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        };
        if rc != SQLITE_OK {
            return Err(self.error(""));
        }
        Ok(())
    }

    pub fn prepare(&self, sql: &str) -> Result<Stmt> {
        let f = api!(prepare_v2);
        let mut raw: *mut sqlite3_stmt = std::ptr::null_mut();
        let c = CString::new(sql).map_err(|_| Error::invalid("SQL contains a NUL byte"))?;
        // SAFETY: valid connection, SQL and out-pointer.
        let rc = unsafe { f(self.0, c.as_ptr(), -1, &mut raw, std::ptr::null_mut()) };
        if rc != SQLITE_OK || raw.is_null() {
            return Err(self.error(&format!(" (in: {sql})")));
        }
        Ok(Stmt { raw, db: *self })
    }

    /// All rows of a query, each as values.
    pub fn rows(&self, sql: &str, params: &[Value]) -> Result<Vec<Vec<Value>>> {
        let mut st = self.prepare(sql)?;
        st.bind_all(params)?;
        let mut out = Vec::new();
        while st.step()? {
            out.push(st.row()?);
        }
        Ok(out)
    }

    /// The rows of a query one at a time, in bounded memory, until `f`
    /// returns false. `f` must not write to the tables being read.
    pub fn each(
        &self,
        sql: &str,
        params: &[Value],
        mut f: impl FnMut(Vec<Value>) -> Result<bool>,
    ) -> Result<()> {
        let mut st = self.prepare(sql)?;
        st.bind_all(params)?;
        while st.step()? {
            if !f(st.row()?)? {
                break;
            }
        }
        Ok(())
    }

    /// The first row, if any.
    pub fn row(&self, sql: &str, params: &[Value]) -> Result<Option<Vec<Value>>> {
        let mut st = self.prepare(sql)?;
        st.bind_all(params)?;
        if st.step()? {
            Ok(Some(st.row()?))
        } else {
            Ok(None)
        }
    }

    /// Runs one statement with parameters to completion.
    pub fn run(&self, sql: &str, params: &[Value]) -> Result<()> {
        let mut st = self.prepare(sql)?;
        st.bind_all(params)?;
        while st.step()? {}
        Ok(())
    }

    pub fn in_transaction(&self) -> Result<bool> {
        let f = api!(get_autocommit);
        // SAFETY: valid connection.
        Ok(unsafe { f(self.0) } == 0)
    }

    /// The main database's file, `None` when it has none (in memory, or a
    /// temporary database).
    pub fn file(&self) -> Result<Option<String>> {
        let rows = self.rows(
            "SELECT file FROM pragma_database_list WHERE name = 'main'",
            &[],
        )?;
        Ok(rows
            .first()
            .and_then(|r| r.first())
            .and_then(as_text)
            .filter(|f| !f.is_empty()))
    }

    /// A name for this connection's database that other connections to
    /// the same file share: its path, or the connection's address for a
    /// database without a file.
    pub fn identity(&self) -> Result<String> {
        Ok(match self.file()? {
            Some(f) => format!("file:{f}"),
            None => format!("conn:{:p}", self.0),
        })
    }

    pub fn sqlite_version(&self) -> Result<String> {
        let f = api!(libversion);
        // SAFETY: returns a static NUL-terminated string.
        Ok(unsafe { CStr::from_ptr(f()) }
            .to_string_lossy()
            .into_owned())
    }
}

/// A connection of the extension's own (the background worker's), opened
/// through the host's SQLite and closed on drop.
pub struct Owned(Db);

const SQLITE_OPEN_READWRITE: c_int = 0x0000_0002;
const SQLITE_OPEN_CREATE: c_int = 0x0000_0004;
const SQLITE_OPEN_NOMUTEX: c_int = 0x0000_8000;

impl Owned {
    /// Opens `path` read-write (never creating it), waiting up to
    /// `busy_ms` for locks other connections hold.
    pub fn open(path: &str, busy_ms: i32) -> Result<Owned> {
        Owned::open_flags(path, busy_ms, 0)
    }

    /// [`Owned::open`], creating the file when it does not exist.
    pub fn create(path: &str, busy_ms: i32) -> Result<Owned> {
        Owned::open_flags(path, busy_ms, SQLITE_OPEN_CREATE)
    }

    fn open_flags(path: &str, busy_ms: i32, extra: c_int) -> Result<Owned> {
        let (open, busy) = (api!(open_v2), api!(busy_timeout));
        let c = CString::new(path).map_err(|_| Error::invalid("path contains a NUL byte"))?;
        let mut raw: *mut sqlite3 = std::ptr::null_mut();
        // SAFETY: NUL-terminated path, valid out-pointer; one thread uses
        // the connection (NOMUTEX).
        let rc = unsafe {
            open(
                c.as_ptr(),
                &mut raw,
                SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX | extra,
                std::ptr::null(),
            )
        };
        if raw.is_null() {
            return Err(Error::Sqlite {
                code: rc,
                message: format!("opening {path}: out of memory"),
            });
        }
        let owned = Owned(Db(raw));
        if rc != SQLITE_OK {
            let e = owned.0.error(&format!(" (opening {path})"));
            drop(owned);
            return Err(e);
        }
        // SAFETY: valid connection.
        unsafe { busy(raw, busy_ms) };
        Ok(owned)
    }

    pub fn db(&self) -> Db {
        self.0
    }

    /// `PRAGMA data_version`: changes when another connection commits to
    /// the file.
    pub fn data_version(&self) -> Result<i64> {
        self.0
            .row("PRAGMA data_version", &[])?
            .and_then(|r| r.first().and_then(as_i64))
            .ok_or_else(|| Error::invalid("PRAGMA data_version answered nothing"))
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        let table = API.load(Ordering::Acquire);
        if !table.is_null() {
            // SAFETY: closing the connection we opened, once; every
            // statement on it was finalised (Stmt and Cache drop first).
            unsafe {
                if let Some(f) = (*table).close_v2 {
                    f(self.0 .0);
                }
            }
        }
    }
}

impl Db {
    /// The raw handle (for hooks keyed by connection).
    pub fn raw(&self) -> *mut sqlite3 {
        self.0
    }

    /// Registers a function on this connection whose only use is its
    /// destructor: SQLite calls `on_close(app)` when the connection
    /// closes (or the function is registered again).
    pub fn on_close(
        &self,
        name: &str,
        app: *mut c_void,
        on_close: unsafe extern "C" fn(*mut c_void),
    ) -> Result<()> {
        let f = api!(create_function_v2);
        let c = CString::new(name).map_err(|_| Error::invalid("name contains a NUL byte"))?;
        // SAFETY: valid connection and name; a function with no body (it
        // cannot be called: nArg 127 is never given by SQL calls of a
        // sane length) and a destructor SQLite calls once.
        let rc = unsafe {
            f(
                self.0,
                c.as_ptr(),
                127,
                1, // SQLITE_UTF8
                app,
                Some(never_called),
                None,
                None,
                Some(on_close),
            )
        };
        if rc != SQLITE_OK {
            // SQLite calls the destructor itself when registration fails.
            return Err(self.error(""));
        }
        Ok(())
    }
}

unsafe extern "C" fn never_called(
    ctx: *mut sqlite_loadable::ext::sqlite3_context,
    _n: c_int,
    _v: *mut *mut sqlite_loadable::ext::sqlite3_value,
) {
    let table = API.load(Ordering::Acquire);
    if !table.is_null() {
        if let Some(f) = (*table).result_null {
            f(ctx);
        }
    }
}

/// A prepared statement, finalised on drop.
pub struct Stmt {
    raw: *mut sqlite3_stmt,
    db: Db,
}

impl Stmt {
    fn check(&self, rc: c_int) -> Result<()> {
        if rc == SQLITE_OK {
            Ok(())
        } else {
            Err(self.db.error(""))
        }
    }

    /// Binds `params` to ?1..?n after resetting the statement.
    pub fn bind_all(&mut self, params: &[Value]) -> Result<()> {
        let reset = api!(reset);
        // SAFETY: valid statement.
        unsafe { reset(self.raw) };
        for (i, v) in params.iter().enumerate() {
            self.bind(i as c_int + 1, v)?;
        }
        Ok(())
    }

    pub fn bind(&mut self, idx: c_int, v: &Value) -> Result<()> {
        let len =
            |b: &[u8]| c_int::try_from(b.len()).map_err(|_| Error::invalid("value too large"));
        let rc = match v {
            Value::Null => {
                let f = api!(bind_null);
                // SAFETY: valid statement.
                unsafe { f(self.raw, idx) }
            }
            Value::Integer(i) => {
                let f = api!(bind_int64);
                // SAFETY: valid statement.
                unsafe { f(self.raw, idx, *i) }
            }
            Value::Real(x) => {
                let f = api!(bind_double);
                // SAFETY: valid statement.
                unsafe { f(self.raw, idx, *x) }
            }
            Value::Text(t) => {
                let f = api!(bind_text);
                let n = len(t)?;
                // SAFETY: valid statement; SQLite copies the bytes (TRANSIENT).
                unsafe { f(self.raw, idx, t.as_ptr() as *const c_char, n, transient()) }
            }
            Value::Blob(b) => {
                let f = api!(bind_blob);
                let n = len(b)?;
                // SAFETY: valid statement; SQLite copies the bytes (TRANSIENT).
                unsafe { f(self.raw, idx, b.as_ptr() as *const c_void, n, transient()) }
            }
        };
        self.check(rc)
    }

    pub fn reset(&mut self) -> Result<()> {
        let f = api!(reset);
        // SAFETY: valid statement. Its return code repeats the last step's
        // error, which the step already reported.
        unsafe { f(self.raw) };
        Ok(())
    }

    /// Advances: true when a row is available.
    pub fn step(&mut self) -> Result<bool> {
        let f = api!(step);
        // SAFETY: valid statement.
        match unsafe { f(self.raw) } {
            SQLITE_ROW => Ok(true),
            SQLITE_DONE => Ok(false),
            _ => Err(self.db.error("")),
        }
    }

    pub fn column_count(&self) -> Result<usize> {
        let f = api!(column_count);
        // SAFETY: valid statement.
        Ok(unsafe { f(self.raw) }.max(0) as usize)
    }

    /// Column `i` of the current row, exactly as stored.
    pub fn value(&self, i: usize) -> Result<Value> {
        let i = i as c_int;
        let (ty, int64, double) = (api!(column_type), api!(column_int64), api!(column_double));
        let (text, blob, bytes) = (api!(column_text), api!(column_blob), api!(column_bytes));
        // SAFETY: valid statement positioned on a row; the pointers from
        // column_text/blob stay valid until the next step and are copied.
        unsafe {
            Ok(match ty(self.raw, i) {
                SQLITE_INTEGER => Value::Integer(int64(self.raw, i)),
                SQLITE_FLOAT => Value::Real(double(self.raw, i)),
                SQLITE_TEXT => {
                    let p = text(self.raw, i);
                    let n = bytes(self.raw, i).max(0) as usize;
                    Value::Text(if p.is_null() {
                        Vec::new()
                    } else {
                        std::slice::from_raw_parts(p, n).to_vec()
                    })
                }
                SQLITE_BLOB => {
                    let p = blob(self.raw, i) as *const u8;
                    let n = bytes(self.raw, i).max(0) as usize;
                    Value::Blob(if p.is_null() {
                        Vec::new()
                    } else {
                        std::slice::from_raw_parts(p, n).to_vec()
                    })
                }
                _ => Value::Null,
            })
        }
    }

    pub fn row(&self) -> Result<Vec<Value>> {
        (0..self.column_count()?).map(|i| self.value(i)).collect()
    }
}

impl Drop for Stmt {
    fn drop(&mut self) {
        let table = API.load(Ordering::Acquire);
        if !table.is_null() {
            // SAFETY: finalising a statement we own, once.
            unsafe {
                if let Some(f) = (*table).finalize {
                    f(self.raw);
                }
            }
        }
    }
}

/// Value helpers for reading rows back.
pub fn as_i64(v: &Value) -> Option<i64> {
    match v {
        Value::Integer(i) => Some(*i),
        _ => None,
    }
}

pub fn as_text(v: &Value) -> Option<String> {
    match v {
        Value::Text(t) => Some(String::from_utf8_lossy(t).into_owned()),
        _ => None,
    }
}

pub fn as_blob(v: &Value) -> Option<&[u8]> {
    match v {
        Value::Blob(b) => Some(b),
        _ => None,
    }
}

/// Prepared statements kept for the length of one SQL function call, keyed
/// by their text (a pull or a seal runs the same few statements per row).
/// Dropped, and so finalised, when the call ends: a statement left
/// behind would keep the host from closing its connection.
pub struct Cache {
    db: Db,
    stmts: std::cell::RefCell<std::collections::HashMap<String, Stmt>>,
}

impl Cache {
    pub fn new(db: Db) -> Cache {
        Cache {
            db,
            stmts: Default::default(),
        }
    }

    fn with<T>(
        &self,
        sql: &str,
        params: &[Value],
        f: impl FnOnce(&mut Stmt) -> Result<T>,
    ) -> Result<T> {
        let mut map = self.stmts.borrow_mut();
        if !map.contains_key(sql) {
            let st = self.db.prepare(sql)?;
            map.insert(sql.to_string(), st);
        }
        let st = map
            .get_mut(sql)
            .ok_or_else(|| Error::invalid("statement cache lost a statement"))?;
        st.bind_all(params)?;
        let out = f(st);
        // Reset so no statement stays active between uses.
        st.reset()?;
        out
    }

    /// The first row of a query (or of `... RETURNING`), if any.
    pub fn row(&self, sql: &str, params: &[Value]) -> Result<Option<Vec<Value>>> {
        self.with(sql, params, |st| {
            let r = if st.step()? { Some(st.row()?) } else { None };
            while st.step()? {}
            Ok(r)
        })
    }

    /// Every row of a query.
    pub fn rows(&self, sql: &str, params: &[Value]) -> Result<Vec<Vec<Value>>> {
        self.with(sql, params, |st| {
            let mut out = Vec::new();
            while st.step()? {
                out.push(st.row()?);
            }
            Ok(out)
        })
    }

    pub fn run(&self, sql: &str, params: &[Value]) -> Result<()> {
        self.with(sql, params, |st| {
            while st.step()? {}
            Ok(())
        })
    }
}

/// Runs `f` in one transaction: BEGIN IMMEDIATE when the host is in
/// autocommit, a savepoint inside the host's own transaction. Whatever
/// ends it other than a COMMIT that succeeded — an error from `f`, a
/// failed COMMIT (busy), a panic unwinding through — rolls it back, so
/// the host's connection is never left inside our transaction or holding
/// part of our writes.
pub fn transaction<T>(db: &Db, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let nested = db.in_transaction()?;
    db.exec(if nested {
        "SAVEPOINT pdb_tx"
    } else {
        "BEGIN IMMEDIATE"
    })?;
    let mut open = Open {
        db: *db,
        nested,
        done: false,
    };
    let v = f()?;
    crate::failpoint::hit("transaction");
    db.exec(if nested { "RELEASE pdb_tx" } else { "COMMIT" })?;
    open.done = true;
    Ok(v)
}

/// A transaction of [`transaction`]'s, rolled back on drop unless it
/// committed.
struct Open {
    db: Db,
    nested: bool,
    done: bool,
}

impl Drop for Open {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let _ = self.db.exec(if self.nested {
            "ROLLBACK TO pdb_tx; RELEASE pdb_tx"
        } else {
            "ROLLBACK"
        });
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::Conn;
    use pdb_protocol::Value;

    #[test]
    fn errors_keep_sqlites_result_code() {
        let c = Conn::memory();
        c.exec("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT NOT NULL)");
        c.exec("INSERT INTO t VALUES (1, 'a')");
        let db = c.db();
        let e = db.run("INSERT INTO t VALUES (1, 'b')", &[]).unwrap_err();
        assert_eq!(
            e.sqlite_code(),
            Some((19, 1555)),
            "CONSTRAINT_PRIMARYKEY: {e}"
        );
        let e = db
            .run("INSERT INTO t VALUES (?1, NULL)", &[Value::Integer(2)])
            .unwrap_err();
        assert_eq!(e.sqlite_code(), Some((19, 1299)), "CONSTRAINT_NOTNULL: {e}");
        let e = db.prepare("SELECT nope FROM t").err().unwrap();
        assert_eq!(e.sqlite_code(), Some((1, 1)));
        assert!(e.to_string().ends_with("(in: SELECT nope FROM t)"), "{e}");
    }

    #[test]
    fn a_panic_inside_a_transaction_rolls_it_back() {
        let c = Conn::memory();
        c.exec("CREATE TABLE t(x)");
        let db = c.db();
        // In autocommit: the BEGIN IMMEDIATE and the write are undone.
        let r = std::panic::catch_unwind(|| {
            super::transaction(&db, || -> crate::error::Result<()> {
                db.run("INSERT INTO t VALUES (1)", &[])?;
                panic!("a bug");
            })
        });
        assert!(r.is_err());
        assert!(!db.in_transaction().unwrap(), "left inside BEGIN IMMEDIATE");
        assert_eq!(c.count("SELECT count(*) FROM t"), 0);
        // Inside the host's transaction: our savepoint is undone, the
        // host's own write and transaction stay.
        c.exec("BEGIN; INSERT INTO t VALUES (2)");
        let r = std::panic::catch_unwind(|| {
            super::transaction(&db, || -> crate::error::Result<()> {
                db.run("INSERT INTO t VALUES (3)", &[])?;
                panic!("a bug");
            })
        });
        assert!(r.is_err());
        assert!(db.in_transaction().unwrap());
        c.exec("COMMIT");
        assert_eq!(c.dump("t"), vec![vec![Value::Integer(2)]]);
        // The savepoint is gone: a new transaction of ours works.
        super::transaction(&db, || db.run("INSERT INTO t VALUES (4)", &[])).unwrap();
        assert_eq!(c.count("SELECT count(*) FROM t"), 2);
    }

    #[test]
    fn a_commit_that_fails_leaves_no_transaction_open() {
        let dir = std::env::temp_dir().join(format!("pdb-commit-busy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("busy.db");
        let path = path.to_str().unwrap();
        let a = Conn::open(path);
        let b = Conn::open(path);
        a.exec("CREATE TABLE t(x); INSERT INTO t VALUES (0)");
        // Rollback journal: a's read transaction keeps b's COMMIT from
        // taking the exclusive lock (no busy timeout: it fails at once).
        a.exec("BEGIN; SELECT * FROM t");
        let e = super::transaction(&b.db(), || b.db().run("INSERT INTO t VALUES (1)", &[]))
            .unwrap_err();
        assert_eq!(e.sqlite_code().map(|c| c.0), Some(5), "SQLITE_BUSY: {e}");
        assert!(
            !b.db().in_transaction().unwrap(),
            "COMMIT failed and left the transaction open"
        );
        a.exec("COMMIT");
        assert_eq!(
            b.count("SELECT count(*) FROM t"),
            1,
            "the failed write is not there"
        );
        drop((a, b));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_busy_database_is_told_from_a_failed_statement() {
        let dir = std::env::temp_dir().join(format!("pdb-busy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("busy.db");
        let path = path.to_str().unwrap();
        let a = Conn::open(path);
        let b = Conn::open(path);
        a.exec("CREATE TABLE t(x)");
        a.exec("BEGIN IMMEDIATE");
        let e = super::transaction(&b.db(), || Ok(())).unwrap_err();
        assert_eq!(e.sqlite_code().map(|c| c.0), Some(5), "SQLITE_BUSY: {e}");
        a.exec("COMMIT");
        drop((a, b));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
