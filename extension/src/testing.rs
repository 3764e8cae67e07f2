//! Test support: a real SQLite (the one `sqlite3ext-sys` compiles in)
//! behind the same API table a host hands to the entry point, and a fake
//! witness that signs with its own key, so open, push and pull run in
//! unit tests without a network.

use crate::client::WitnessApi;
use crate::db::{self, Db};
use crate::error::{Error, Rejection, Result, Stage};
use crate::merge::{self, Row};
use crate::tables::read_local;
use ed25519_dalek::SigningKey;
use pdb_protocol::value::encode_values;
use pdb_protocol::wire::{
    b64, unb64, CertificateJson, CommitRequest, CommitResponse, CommitsPage, ErrorJson, GroupJson,
    HeadJson, LogEntryJson, MigrationsPage, MinimalCommitResponse, ProjectionList, ProjectionPage,
    SchemaJson, SignedJson, SnapshotJson, WitnessJson,
};
use pdb_protocol::{
    genesis_hash, hex, sha256, Change, Changeset, CommitRecord, HeadRecord, Schema, Signed,
    StateRoot, TableChanges, Value,
};
use sqlite3ext_sys as c;
use sqlite_loadable::ext::{sqlite3, sqlite3_api_routines};
use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::CString;
use std::sync::OnceLock;

/// Fills the API table from the compiled-in SQLite, once per process.
fn install_api() {
    static TABLE: OnceLock<usize> = OnceLock::new();
    let table = *TABLE.get_or_init(|| {
        // SAFETY: an all-None table is valid; db.rs fails cleanly on a
        // routine that is missing.
        let mut t: sqlite3_api_routines = unsafe { std::mem::zeroed() };
        t.errmsg = Some(c::sqlite3_errmsg);
        t.extended_errcode = Some(c::sqlite3_extended_errcode);
        t.exec = Some(c::sqlite3_exec);
        t.prepare_v2 = Some(c::sqlite3_prepare_v2);
        t.get_autocommit = Some(c::sqlite3_get_autocommit);
        t.libversion = Some(c::sqlite3_libversion);
        t.reset = Some(c::sqlite3_reset);
        t.bind_null = Some(c::sqlite3_bind_null);
        t.bind_int64 = Some(c::sqlite3_bind_int64);
        t.bind_double = Some(c::sqlite3_bind_double);
        t.bind_text = Some(c::sqlite3_bind_text);
        t.bind_blob = Some(c::sqlite3_bind_blob);
        t.step = Some(c::sqlite3_step);
        t.column_count = Some(c::sqlite3_column_count);
        t.column_type = Some(c::sqlite3_column_type);
        t.column_int64 = Some(c::sqlite3_column_int64);
        t.column_double = Some(c::sqlite3_column_double);
        t.column_text = Some(c::sqlite3_column_text);
        t.column_blob = Some(c::sqlite3_column_blob);
        t.column_bytes = Some(c::sqlite3_column_bytes);
        t.finalize = Some(c::sqlite3_finalize);
        Box::into_raw(Box::new(t)) as usize
    });
    db::set_api(table as *mut sqlite3_api_routines);
}

/// A connection of its own, closed on drop.
pub struct Conn {
    raw: *mut sqlite3,
}

impl Conn {
    /// Opens `path` (":memory:" for a private database).
    pub fn open(path: &str) -> Conn {
        install_api();
        let name = CString::new(path).unwrap();
        let mut raw = std::ptr::null_mut();
        // SAFETY: a NUL-terminated name and an out-pointer.
        let rc = unsafe { c::sqlite3_open(name.as_ptr(), &mut raw) };
        assert_eq!(rc, 0, "opening {path}");
        Conn { raw }
    }

    pub fn memory() -> Conn {
        Conn::open(":memory:")
    }

    pub fn db(&self) -> Db {
        Db::new(self.raw)
    }

    pub fn exec(&self, sql: &str) {
        self.db().exec(sql).unwrap();
    }

    /// Every row of `table`, ordered by its first column.
    pub fn dump(&self, table: &str) -> Vec<Vec<Value>> {
        self.db()
            .rows(&format!("SELECT * FROM {table} ORDER BY 1"), &[])
            .unwrap()
    }

    pub fn count(&self, sql: &str) -> i64 {
        let r = self.db().row(sql, &[]).unwrap().unwrap();
        crate::db::as_i64(&r[0]).unwrap()
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        // SAFETY: our own connection, every statement already finalised.
        unsafe { c::sqlite3_close(self.raw) };
    }
}

/// Faults the fake witness can be told to make, each once.
#[derive(Default)]
pub struct Faults {
    /// Accept the next commit, then lose its answer.
    pub lose_commit_answer: bool,
    /// Answer the next commit with this status and code.
    pub reject_commit: Option<(u16, &'static str)>,
    /// Flip a bit of the first certificate in the next page.
    pub tamper_page: bool,
    /// Refuse every commit holding a row with this key (first column),
    /// with this code, naming the row or not (until cleared).
    pub refuse_key: Option<(Value, &'static str, bool)>,
    /// Advertise these limits in `GET /v1/witness`.
    pub limits: Option<pdb_protocol::wire::LimitsJson>,
    /// Answer commits without the head, as witnesses before it did
    /// (until cleared).
    pub no_head: bool,
    /// The witness's clock is off by this much (ms; until cleared).
    pub clock_offset_ms: i64,
}

pub struct Log {
    pub entries: Vec<LogEntryJson>,
    head_hash: [u8; 32],
    root: StateRoot,
    /// The group's rows by (table, encoded key).
    rows: HashMap<(String, Vec<u8>), Row>,
    /// Accepted commits by idempotency key: (changeset digest, answer).
    accepted: HashMap<String, ([u8; 32], CommitResponse)>,
}

/// A witness in memory: one group, a linear log, strict base checks
/// (anything not built on the head is `stale_head`), signed records.
pub struct FakeWitness {
    key: SigningKey,
    pub group: String,
    schema: Schema,
    pub log: RefCell<Log>,
    pub faults: RefCell<Faults>,
    /// Commit requests received.
    pub commits_sent: std::cell::Cell<usize>,
    /// Pages of the log read.
    pub pages_read: std::cell::Cell<usize>,
}

fn rejected(status: u16, code: &str, message: &str) -> Error {
    Error::Rejected(Box::new(Rejection {
        endpoint: "fake://witness".into(),
        status,
        body: ErrorJson {
            code: code.into(),
            message: message.into(),
            ..ErrorJson::default()
        },
        retry_after: None,
    }))
}

impl FakeWitness {
    pub fn new(group: &str, ddl: &str, tables: &[&str]) -> FakeWitness {
        let scratch = Conn::memory();
        scratch.exec(ddl);
        let names: Vec<String> = tables.iter().map(|t| t.to_string()).collect();
        let schema =
            pdb_protocol::Schema::new(1, read_local(&scratch.db(), &names).unwrap().unwrap());
        FakeWitness {
            key: SigningKey::from_bytes(&[7; 32]),
            group: group.into(),
            log: RefCell::new(Log {
                entries: Vec::new(),
                head_hash: genesis_hash(group, 1, &schema.hash()),
                root: StateRoot::empty(),
                rows: HashMap::new(),
                accepted: HashMap::new(),
            }),
            schema,
            faults: RefCell::default(),
            commits_sent: Default::default(),
            pages_read: Default::default(),
        }
    }

    pub fn public_key(&self) -> String {
        hex(self.key.verifying_key().as_bytes())
    }

    pub fn seq(&self) -> u64 {
        self.log.borrow().entries.len() as u64
    }

    /// The log entry `seq`'s author.
    pub fn author(&self, seq: u64) -> String {
        let log = self.log.borrow();
        let e = &log.entries[seq as usize - 1];
        let signed = e.certificate.signed.to_signed().unwrap();
        signed.commit(&self.key.verifying_key()).unwrap().author
    }

    /// The group's rows of `table`, by key order.
    pub fn rows(&self, table: &str) -> Vec<Row> {
        let log = self.log.borrow();
        let mut rows: Vec<(Vec<u8>, Row)> = log
            .rows
            .iter()
            .filter(|((t, _), _)| t == table)
            .map(|((_, k), r)| (k.clone(), r.clone()))
            .collect();
        rows.sort_by_key(|(_, r)| crate::db::as_i64(&r[0]));
        rows.into_iter().map(|(_, r)| r).collect()
    }

    /// Another device commits these changes to `table` at the head.
    pub fn remote(&self, table: &str, changes: Vec<Change>) {
        let t = self.schema.table(table).unwrap();
        let cs = Changeset {
            tables: vec![TableChanges {
                name: t.name.clone(),
                pk_flags: t.pk_flags(),
                changes,
            }],
        };
        let key = format!("other-{}", self.seq() + 1);
        self.accept(&cs.encode(), "other", &key).unwrap();
    }

    fn head(&self) -> HeadJson {
        let log = self.log.borrow();
        let rec = HeadRecord {
            group: self.group.clone(),
            seq: log.entries.len() as u64,
            head_hash: log.head_hash,
            state_root: log.root.digest(),
            schema_version: 1,
            schema_hash: self.schema.hash(),
            time_ms: pdb_protocol::now_ms()
                .saturating_add_signed(self.faults.borrow().clock_offset_ms),
        };
        let signed = Signed::sign(&self.key, rec.encode());
        HeadJson {
            group: rec.group,
            seq: rec.seq,
            head_hash: hex(&rec.head_hash),
            state_root: hex(&rec.state_root),
            schema_version: 1,
            schema_hash: hex(&rec.schema_hash),
            time_ms: rec.time_ms,
            signed: SignedJson::from(&signed),
        }
    }

    /// Applies a changeset at the head, all or nothing, and certifies it.
    fn accept(&self, changeset: &[u8], author: &str, idem: &str) -> Result<CommitResponse> {
        let cs = Changeset::decode(changeset)
            .map_err(|e| rejected(422, "invalid_changeset", &e.to_string()))?;
        let mut log = self.log.borrow_mut();
        let mut rows = log.rows.clone();
        let mut root = log.root.clone();
        for t in &cs.tables {
            for ch in &t.changes {
                let k = (t.name.clone(), encode_values(&ch.pk(&t.pk_flags)));
                let before = rows.get(&k).cloned();
                let after = merge::apply(ch, before.as_deref())
                    .map_err(|()| rejected(409, "changeset_conflict", "does not fit"))?;
                if let Some(b) = &before {
                    root.remove_row(&t.name, b);
                }
                match after {
                    Some(a) => {
                        root.add_row(&t.name, &a);
                        rows.insert(k, a);
                    }
                    None => {
                        rows.remove(&k);
                    }
                }
            }
        }
        let rec = CommitRecord {
            group: self.group.clone(),
            seq: log.entries.len() as u64 + 1,
            prev_head: log.head_hash,
            changeset_digest: sha256(changeset),
            state_root: root.digest(),
            schema_version: 1,
            schema_hash: self.schema.hash(),
            author: author.into(),
            idempotency_key: idem.into(),
            time_ms: 0,
        };
        let signed = Signed::sign(&self.key, rec.encode());
        let certificate = CertificateJson {
            seq: rec.seq,
            head_hash: hex(&rec.head_hash()),
            prev_head: hex(&rec.prev_head),
            state_root: hex(&rec.state_root),
            changeset_digest: hex(&rec.changeset_digest),
            author: rec.author.clone(),
            idempotency_key: rec.idempotency_key.clone(),
            time_ms: 0,
            signed: SignedJson::from(&signed),
        };
        log.entries.push(LogEntryJson {
            seq: rec.seq,
            changeset: b64(changeset),
            migration: None,
            certificate: certificate.clone(),
        });
        log.head_hash = rec.head_hash();
        log.root = root;
        log.rows = rows;
        let resp = CommitResponse {
            replay: false,
            certificate,
            head: None,
        };
        log.accepted
            .insert(idem.into(), (rec.changeset_digest, resp.clone()));
        Ok(resp)
    }
}

impl FakeWitness {
    /// The full answer to a commit, as a witness gives it without
    /// `Prefer: return=minimal`.
    fn commit_full(&self, req: &CommitRequest) -> Result<CommitResponse> {
        self.commits_sent.set(self.commits_sent.get() + 1);
        if let Some((status, code)) = self.faults.borrow_mut().reject_commit.take() {
            return Err(rejected(status, code, "refused by the test"));
        }
        let cs = unb64(&req.changeset).unwrap();
        let refuse = self.faults.borrow().refuse_key.clone();
        if let Some((key, code, named)) = refuse {
            let decoded = Changeset::decode(&cs).unwrap();
            for t in &decoded.tables {
                for c in &t.changes {
                    if c.pk(&t.pk_flags).first() == Some(&key) {
                        let mut e = ErrorJson {
                            code: code.into(),
                            message: "this row is refused by the test".into(),
                            ..ErrorJson::default()
                        };
                        if named {
                            e.table = Some(t.name.clone());
                            e.key = Some(vec![pdb_protocol::wire::value_json(&key)]);
                        }
                        return Err(Error::Rejected(Box::new(Rejection {
                            endpoint: "fake://witness".into(),
                            status: 409,
                            body: e,
                            retry_after: None,
                        })));
                    }
                }
            }
        }
        let replay = self
            .log
            .borrow()
            .accepted
            .get(&req.idempotency_key)
            .cloned();
        if let Some((digest, resp)) = replay {
            if digest != sha256(&cs) {
                return Err(rejected(409, "idempotency_conflict", "key reused"));
            }
            return Ok(CommitResponse {
                replay: true,
                ..resp
            });
        }
        if req.base.seq != self.seq() {
            return Err(rejected(409, "stale_head", "the head moved"));
        }
        let resp = self.accept(&cs, "device", &req.idempotency_key)?;
        if std::mem::take(&mut self.faults.borrow_mut().lose_commit_answer) {
            return Err(Error::Network {
                stage: Stage::Answer,
                message: "reading response from fake://witness: connection reset".into(),
            });
        }
        Ok(resp)
    }
}

impl WitnessApi for FakeWitness {
    fn witness(&self) -> Result<WitnessJson> {
        Ok(WitnessJson {
            public_key: self.public_key(),
            version: "fake".into(),
            limits: self.faults.borrow().limits.clone(),
            rotations: Vec::new(),
        })
    }

    fn group(&self) -> Result<GroupJson> {
        Ok(GroupJson {
            group: self.group.clone(),
            schema: SchemaJson::new(&self.schema),
            head: self.head(),
            schema_history: Vec::new(),
        })
    }

    fn migrations(&self, _after_version: u32) -> Result<MigrationsPage> {
        Ok(MigrationsPage {
            migrations: Vec::new(),
            first_schema: None,
            next_after_version: None,
        })
    }

    fn commits(
        &self,
        after: u64,
        _after_hash: Option<[u8; 32]>,
        limit: u32,
    ) -> Result<CommitsPage> {
        self.pages_read.set(self.pages_read.get() + 1);
        let head = self.head();
        let mut commits: Vec<LogEntryJson> = self
            .log
            .borrow()
            .entries
            .iter()
            .filter(|e| e.seq > after)
            .take(limit as usize)
            .cloned()
            .collect();
        if std::mem::take(&mut self.faults.borrow_mut().tamper_page) {
            if let Some(e) = commits.first_mut() {
                let mut sig = unb64(&e.certificate.signed.signature).unwrap();
                sig[5] ^= 1;
                e.certificate.signed.signature = b64(&sig);
            }
        }
        let next_after = commits.last().map(|e| e.seq).filter(|s| *s < head.seq);
        Ok(CommitsPage {
            commits,
            head,
            next_after,
        })
    }

    fn commit(&self, req: &CommitRequest) -> Result<MinimalCommitResponse> {
        let mut resp = self.commit_full(req)?;
        let head = self.head();
        if head.seq == resp.certificate.seq && !self.faults.borrow().no_head {
            resp.head = Some(head);
        }
        Ok(resp.minimal())
    }

    fn latest_snapshot(&self) -> Result<Option<SnapshotJson>> {
        Ok(None)
    }

    fn snapshot_range(&self, _: u64, _: u64, _: u64) -> Result<Vec<u8>> {
        Err(rejected(404, "not_found", "no snapshots here"))
    }

    fn projections(&self) -> Result<ProjectionList> {
        Err(rejected(404, "not_found", "no projections here"))
    }

    fn projection_page(&self, _: &str, _: i64, _: u32) -> Result<ProjectionPage> {
        Err(rejected(404, "not_found", "no projections here"))
    }
}
