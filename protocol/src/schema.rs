//! A group's schema as structured data — the only form in which it travels
//! — with its strict grammar, its canonical hash, the DDL each side builds
//! from it, and reading it back from a database.
//!
//! Nothing here runs SQL text from elsewhere: the DDL is built from checked
//! parts (quoted names, types of a fixed grammar, expressions re-emitted by
//! `sqltext::canonical_expr`), and the hash covers every part of it.

use crate::hash::Hasher;
use crate::sql::quote_ident;
use crate::sqltext::{self, canonical_expr, canonical_type, ExprContext, COLLATIONS};
use crate::value::Value;
use serde::{Deserialize, Serialize};

fn is_false(b: &bool) -> bool {
    !*b
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Column {
    pub name: String,
    /// Declared type, canonical (`sqltext::canonical_type`); may be empty.
    #[serde(rename = "type", default)]
    pub decl_type: String,
    #[serde(default, skip_serializing_if = "is_false")]
    pub not_null: bool,
    /// Default expression, canonical (`sqltext::canonical_expr`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    /// `NOCASE` or `RTRIM`; `None` is SQLite's default, `BINARY`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collation: Option<String>,
    /// 1-based position in the primary key, 0 if not a key column.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub pk: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// One column of an index or UNIQUE constraint.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexColumn {
    pub name: String,
    #[serde(default, skip_serializing_if = "is_false")]
    pub desc: bool,
    /// Set only where it differs from the column's own collation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collation: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Index {
    pub name: String,
    #[serde(default, skip_serializing_if = "is_false")]
    pub unique: bool,
    pub columns: Vec<IndexColumn>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Table {
    pub name: String,
    pub columns: Vec<Column>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub without_rowid: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub strict: bool,
    /// UNIQUE constraints, sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unique: Vec<Vec<IndexColumn>>,
    /// CHECK constraints, canonical, sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<String>,
    /// Indexes (`CREATE INDEX`), sorted by lower-cased name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub indexes: Vec<Index>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schema {
    pub version: u32,
    /// Tables sorted by lower-cased name.
    pub tables: Vec<Table>,
}

const TAG: &[u8] = b"personaldb/schema";
const FORMAT: u8 = 2;

/// Table and index names the schema may not use (bookkeeping).
pub const RESERVED_PREFIXES: &[&str] = &["pdb_", "sqlite_"];
pub const MAX_TABLES: usize = 256;
pub const MAX_COLUMNS: usize = 2000;
pub const MAX_NAME: usize = 128;
pub const MAX_CHECKS: usize = 32;
pub const MAX_INDEXES: usize = 64;
const STRICT_TYPES: &[&str] = &["INT", "INTEGER", "REAL", "TEXT", "BLOB", "ANY"];

impl Schema {
    pub fn new(version: u32, mut tables: Vec<Table>) -> Schema {
        tables.sort_by_key(|t| t.name.to_ascii_lowercase());
        Schema { version, tables }
    }

    /// SQLite names are case-insensitive (ASCII only).
    pub fn table_index(&self, name: &str) -> Option<usize> {
        self.tables
            .iter()
            .position(|t| t.name.eq_ignore_ascii_case(name))
    }

    pub fn table(&self, name: &str) -> Option<&Table> {
        self.table_index(name).map(|i| &self.tables[i])
    }

    /// SHA-256 over every part of the structure (see docs/protocol.md).
    /// The version is not part of it: two versions may share a shape.
    pub fn hash(&self) -> [u8; 32] {
        let mut h = Hasher::tagged(TAG, FORMAT);
        h.u32(self.tables.len() as u32);
        for t in &self.tables {
            t.hash_into(&mut h);
        }
        h.finish()
    }

    /// Checks every part against the grammar: names, canonical types,
    /// defaults and CHECK expressions, collations, keys, limits. A schema
    /// that passes builds DDL holding nothing unchecked.
    pub fn validate(&self) -> Result<(), String> {
        if self.tables.is_empty() {
            return Err("the schema defines no table".into());
        }
        if self.tables.len() > MAX_TABLES {
            return Err(format!("a schema has at most {MAX_TABLES} tables"));
        }
        let mut sorted = self.tables.clone();
        sorted.sort_by_key(|t| t.name.to_ascii_lowercase());
        if sorted != self.tables {
            return Err("tables must be sorted by lower-cased name".into());
        }
        let mut names = std::collections::HashSet::new();
        for t in &self.tables {
            t.validate()?;
            if !names.insert(t.name.to_ascii_lowercase()) {
                return Err(format!("table {:?} is defined twice", t.name));
            }
            for i in &t.indexes {
                if !names.insert(i.name.to_ascii_lowercase()) {
                    return Err(format!("index {:?}: the name is taken", i.name));
                }
            }
        }
        Ok(())
    }

    /// The statements that create the schema in an empty database.
    pub fn ddl(&self) -> Vec<String> {
        let mut out = Vec::new();
        for t in &self.tables {
            out.push(t.create_sql());
            out.extend(t.index_sql());
        }
        out
    }
}

fn valid_name(what: &str, name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(format!("{what} names are 1-{MAX_NAME} bytes"));
    }
    if name.chars().any(char::is_control) {
        return Err(format!(
            "{what} {name:?}: control characters are not allowed"
        ));
    }
    let lower = name.to_ascii_lowercase();
    if let Some(p) = RESERVED_PREFIXES.iter().find(|p| lower.starts_with(*p)) {
        return Err(format!(
            "{what} {name:?}: names starting with {p:?} are reserved"
        ));
    }
    Ok(())
}

/// A column's own collation is never `BINARY` (that is `None`); an index
/// column's may be, to differ from its column's.
fn valid_collation(c: &Option<String>, binary: bool) -> Result<(), String> {
    match c {
        None => Ok(()),
        Some(c) if (binary || c != "BINARY") && COLLATIONS.contains(&c.as_str()) => Ok(()),
        Some(c) => Err(format!(
            "collation {c:?} is not allowed (NOCASE or RTRIM; BINARY is the default)"
        )),
    }
}

impl Column {
    pub fn new(name: &str, decl_type: &str) -> Column {
        Column {
            name: name.into(),
            decl_type: decl_type.into(),
            ..Column::default()
        }
    }
}

impl Table {
    fn column_names(&self) -> Vec<String> {
        self.columns.iter().map(|c| c.name.clone()).collect()
    }

    fn column(&self, name: &str) -> Option<&Column> {
        self.columns
            .iter()
            .find(|c| c.name.eq_ignore_ascii_case(name))
    }

    fn validate(&self) -> Result<(), String> {
        valid_name("table", &self.name)?;
        let t = &self.name;
        if self.columns.is_empty() || self.columns.len() > MAX_COLUMNS {
            return Err(format!("table {t:?}: 1-{MAX_COLUMNS} columns"));
        }
        let mut seen = std::collections::HashSet::new();
        let mut keys = Vec::new();
        for c in &self.columns {
            valid_name("column", &c.name)?;
            if !seen.insert(c.name.to_ascii_lowercase()) {
                return Err(format!("table {t:?}: column {:?} twice", c.name));
            }
            if canonical_type(&c.decl_type)? != c.decl_type {
                return Err(format!(
                    "table {t:?}, column {:?}: type is not canonical",
                    c.name
                ));
            }
            if self.strict && !STRICT_TYPES.contains(&c.decl_type.as_str()) {
                return Err(format!(
                    "table {t:?}, column {:?}: a STRICT table's types are {}",
                    c.name,
                    STRICT_TYPES.join(", ")
                ));
            }
            if let Some(d) = &c.default {
                if &canonical_expr(d, &ExprContext::Default)? != d {
                    return Err(format!(
                        "table {t:?}, column {:?}: default is not canonical",
                        c.name
                    ));
                }
            }
            valid_collation(&c.collation, false)?;
            if c.pk > 0 {
                keys.push(c.pk);
            }
        }
        keys.sort_unstable();
        if keys.is_empty() {
            return Err(format!("table {t:?} has no PRIMARY KEY"));
        }
        if keys.iter().enumerate().any(|(i, k)| *k as usize != i + 1) {
            return Err(format!("table {t:?}: key positions must be 1..n"));
        }
        let names = self.column_names();
        if self.checks.len() > MAX_CHECKS {
            return Err(format!(
                "table {t:?}: at most {MAX_CHECKS} CHECK constraints"
            ));
        }
        let mut sorted = self.checks.clone();
        sorted.sort();
        if sorted != self.checks {
            return Err(format!("table {t:?}: checks must be sorted"));
        }
        for c in &self.checks {
            if &canonical_expr(c, &ExprContext::Check { columns: &names })? != c {
                return Err(format!("table {t:?}: CHECK is not canonical"));
            }
        }
        let mut sorted = self.unique.clone();
        sorted.sort_by_key(|a| index_key(a));
        if sorted != self.unique {
            return Err(format!("table {t:?}: unique constraints must be sorted"));
        }
        for u in &self.unique {
            self.valid_index_columns(u)?;
        }
        if self.indexes.len() > MAX_INDEXES {
            return Err(format!("table {t:?}: at most {MAX_INDEXES} indexes"));
        }
        let mut sorted = self.indexes.clone();
        sorted.sort_by_key(|i| i.name.to_ascii_lowercase());
        if sorted != self.indexes {
            return Err(format!("table {t:?}: indexes must be sorted by name"));
        }
        for i in &self.indexes {
            valid_name("index", &i.name)?;
            self.valid_index_columns(&i.columns)?;
        }
        Ok(())
    }

    fn valid_index_columns(&self, cols: &[IndexColumn]) -> Result<(), String> {
        if cols.is_empty() || cols.len() > MAX_COLUMNS {
            return Err(format!("table {:?}: an index needs columns", self.name));
        }
        for c in cols {
            let Some(col) = self.column(&c.name) else {
                return Err(format!("table {:?} has no column {:?}", self.name, c.name));
            };
            if col.name != c.name {
                return Err(format!(
                    "index column {:?}: spell it as the table does",
                    c.name
                ));
            }
            valid_collation(&c.collation, col.collation.is_some())?;
            if c.collation.is_some() && c.collation == col.collation {
                return Err(format!(
                    "index column {:?}: collation is not canonical",
                    c.name
                ));
            }
        }
        Ok(())
    }

    fn hash_into(&self, h: &mut Hasher) {
        h.str(&self.name.to_ascii_lowercase());
        h.u8(u8::from(self.without_rowid));
        h.u8(u8::from(self.strict));
        h.u32(self.columns.len() as u32);
        let opt = |h: &mut Hasher, v: &Option<String>| match v {
            Some(s) => {
                h.u8(1);
                h.str(s);
            }
            None => h.u8(0),
        };
        for c in &self.columns {
            h.str(&c.name.to_ascii_lowercase());
            h.str(&c.decl_type.to_ascii_uppercase());
            h.u8(u8::from(c.not_null));
            opt(h, &c.default);
            opt(h, &c.collation);
            h.u32(c.pk);
        }
        let cols = |h: &mut Hasher, cols: &[IndexColumn]| {
            h.u32(cols.len() as u32);
            for c in cols {
                h.str(&c.name.to_ascii_lowercase());
                h.u8(u8::from(c.desc));
                opt(h, &c.collation);
            }
        };
        h.u32(self.unique.len() as u32);
        for u in &self.unique {
            cols(h, u);
        }
        h.u32(self.checks.len() as u32);
        for c in &self.checks {
            h.str(c);
        }
        h.u32(self.indexes.len() as u32);
        for i in &self.indexes {
            h.str(&i.name.to_ascii_lowercase());
            h.u8(u8::from(i.unique));
            cols(h, &i.columns);
        }
    }

    /// `CREATE TABLE` built from the structure (call on a validated one).
    pub fn create_sql(&self) -> String {
        let mut parts: Vec<String> = self.columns.iter().map(|c| column_sql(c, true)).collect();
        let mut keys: Vec<&Column> = self.columns.iter().filter(|c| c.pk > 0).collect();
        keys.sort_by_key(|c| c.pk);
        let keys: Vec<String> = keys.iter().map(|c| quote_ident(&c.name)).collect();
        parts.push(format!("PRIMARY KEY ({})", keys.join(", ")));
        for u in &self.unique {
            parts.push(format!("UNIQUE ({})", index_columns_sql(u)));
        }
        for c in &self.checks {
            parts.push(format!("CHECK ({c})"));
        }
        let mut options = Vec::new();
        if self.without_rowid {
            options.push("WITHOUT ROWID");
        }
        if self.strict {
            options.push("STRICT");
        }
        format!(
            "CREATE TABLE {} ({}){}{}",
            quote_ident(&self.name),
            parts.join(", "),
            if options.is_empty() { "" } else { " " },
            options.join(", ")
        )
    }

    /// `CREATE INDEX` statements (`IF NOT EXISTS`, so they can complete a
    /// table that already exists).
    pub fn index_sql(&self) -> Vec<String> {
        self.indexes
            .iter()
            .map(|i| {
                format!(
                    "CREATE {}INDEX IF NOT EXISTS {} ON {} ({})",
                    if i.unique { "UNIQUE " } else { "" },
                    quote_ident(&i.name),
                    quote_ident(&self.name),
                    index_columns_sql(&i.columns)
                )
            })
            .collect()
    }

    /// The parts that decide which rows the table accepts and how values
    /// are stored: everything but non-unique indexes.
    pub fn data_shape(&self) -> Table {
        let mut t = self.clone();
        t.indexes.retain(|i| i.unique);
        t
    }

    /// Whether `local` (read from a database that already had the table)
    /// can stand for this table: the same data shape; extra non-unique
    /// local indexes are allowed. Names the first difference.
    pub fn check_local(&self, local: &Table) -> Result<(), String> {
        let (want, have) = (self.data_shape(), local.data_shape());
        if want == have {
            return Ok(());
        }
        let t = &self.name;
        if want.columns.len() != have.columns.len() {
            return Err(format!(
                "table {t:?} has {} columns here and {} in the group",
                have.columns.len(),
                want.columns.len()
            ));
        }
        for (w, h) in want.columns.iter().zip(&have.columns) {
            if w != h {
                return Err(format!(
                    "table {t:?}, column {:?}: here {} , in the group {}",
                    w.name,
                    column_text(h),
                    column_text(w)
                ));
            }
        }
        Err(format!(
            "table {t:?}: its constraints or options (UNIQUE, CHECK, unique indexes, WITHOUT ROWID, STRICT) differ from the group's"
        ))
    }
}

fn column_text(c: &Column) -> String {
    format!(
        "{} {}{}{}{}{}",
        c.name,
        if c.decl_type.is_empty() {
            "(no type)"
        } else {
            &c.decl_type
        },
        if c.not_null { " NOT NULL" } else { "" },
        c.default
            .as_ref()
            .map(|d| format!(" DEFAULT {d}"))
            .unwrap_or_default(),
        c.collation
            .as_ref()
            .map(|d| format!(" COLLATE {d}"))
            .unwrap_or_default(),
        if c.pk > 0 {
            format!(" key {}", c.pk)
        } else {
            String::new()
        },
    )
}

fn index_key(cols: &[IndexColumn]) -> Vec<(String, bool, Option<String>)> {
    cols.iter()
        .map(|c| (c.name.to_ascii_lowercase(), c.desc, c.collation.clone()))
        .collect()
}

fn index_columns_sql(cols: &[IndexColumn]) -> String {
    cols.iter()
        .map(|c| {
            let mut s = quote_ident(&c.name);
            if let Some(coll) = &c.collation {
                s.push_str(&format!(" COLLATE {coll}"));
            }
            if c.desc {
                s.push_str(" DESC");
            }
            s
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Read access to a database's catalog, so both sides read a schema back
/// with the same code: rows of a read-only query with bound parameters.
pub trait Catalog {
    fn rows(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Vec<Value>>, String>;
}

fn text(v: Option<&Value>) -> Option<String> {
    match v {
        Some(Value::Text(t)) => Some(String::from_utf8_lossy(t).into_owned()),
        _ => None,
    }
}

fn int(v: Option<&Value>) -> i64 {
    match v {
        Some(Value::Integer(i)) => *i,
        _ => 0,
    }
}

/// The names of every table that is not bookkeeping (`pdb_*`, `sqlite_*`).
pub fn table_names(cat: &mut dyn Catalog) -> Result<Vec<String>, String> {
    let rows = cat.rows(
        "SELECT name FROM sqlite_schema WHERE type = 'table' \
         AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND name NOT LIKE 'pdb\\_%' ESCAPE '\\' \
         ORDER BY name",
        &[],
    )?;
    Ok(rows.iter().filter_map(|r| text(r.first())).collect())
}

/// Reads one table's structure, canonical (`None` if it does not exist).
/// Anything the grammar cannot express is an error naming it: generated
/// columns, foreign keys, AUTOINCREMENT, conflict clauses, partial or
/// expression indexes, key options, unknown collations.
pub fn read_table(cat: &mut dyn Catalog, name: &str) -> Result<Option<Table>, String> {
    let found = cat.rows(
        "SELECT name, sql FROM sqlite_schema WHERE type = 'table' AND name = ?1 COLLATE NOCASE",
        &[Value::text(name)],
    )?;
    let Some(row) = found.first() else {
        return Ok(None);
    };
    let name = text(row.first()).unwrap_or_default();
    let sql = text(row.get(1)).unwrap_or_default();
    let t = &name;
    let parts = sqltext::table_text(&sql).map_err(|e| format!("table {t:?}: {e}"))?;
    let tokens = sqltext::tokenize(&sql).map_err(|e| format!("table {t:?}: {e}"))?;
    let word = |w: &str| {
        tokens
            .iter()
            .any(|x| matches!(x, sqltext::Token::Word(x) if x.eq_ignore_ascii_case(w)))
    };
    if parts.foreign_keys {
        return Err(format!(
            "table {t:?}: foreign keys are not supported (the witness cannot enforce them across devices)"
        ));
    }
    if word("AUTOINCREMENT") {
        return Err(format!(
            "table {t:?}: AUTOINCREMENT is not supported (ids from a local counter collide across devices; use random or text keys)"
        ));
    }
    if tokens.windows(2).any(|w| {
        matches!((&w[0], &w[1]), (sqltext::Token::Word(a), sqltext::Token::Word(b))
            if a.eq_ignore_ascii_case("ON") && b.eq_ignore_ascii_case("CONFLICT"))
    }) {
        return Err(format!(
            "table {t:?}: ON CONFLICT clauses are not supported"
        ));
    }
    let mut columns = Vec::new();
    for r in cat.rows(
        "SELECT name, type, \"notnull\", dflt_value, pk, hidden FROM pragma_table_xinfo(?1) ORDER BY cid",
        &[Value::text(t)],
    )? {
        let cname = text(r.first()).unwrap_or_default();
        if int(r.get(5)) != 0 {
            return Err(format!(
                "table {t:?}: generated or hidden columns cannot be synced ({cname:?})"
            ));
        }
        let decl_type = canonical_type(&text(r.get(1)).unwrap_or_default())
            .map_err(|e| format!("table {t:?}, column {cname:?}: {e}"))?;
        let default = match text(r.get(3)) {
            None => None,
            Some(d) => Some(
                canonical_expr(&d, &ExprContext::Default)
                    .map_err(|e| format!("table {t:?}, column {cname:?}, default: {e}"))?,
            ),
        };
        let collation = parts
            .collations
            .iter()
            .rev()
            .find(|(c, _)| c.eq_ignore_ascii_case(&cname))
            .map(|(_, coll)| coll.to_ascii_uppercase())
            .filter(|c| c != "BINARY");
        columns.push(Column {
            name: cname,
            decl_type,
            not_null: int(r.get(2)) != 0,
            default,
            collation,
            pk: u32::try_from(int(r.get(4))).unwrap_or(0),
        });
    }
    let mut table = Table {
        name: name.clone(),
        columns,
        without_rowid: parts.without_rowid,
        strict: parts.strict,
        ..Table::default()
    };
    let names = table.column_names();
    for c in &parts.checks {
        table.checks.push(
            canonical_expr(c, &ExprContext::Check { columns: &names })
                .map_err(|e| format!("table {t:?}, CHECK: {e}"))?,
        );
    }
    table.checks.sort();
    for idx in cat.rows(
        "SELECT name, \"unique\", origin, partial FROM pragma_index_list(?1)",
        &[Value::text(t)],
    )? {
        let iname = text(idx.first()).unwrap_or_default();
        if int(idx.get(3)) != 0 {
            return Err(format!(
                "index {iname:?}: partial indexes are not supported"
            ));
        }
        let mut cols = Vec::new();
        for c in cat.rows(
            "SELECT cid, name, \"desc\", coll FROM pragma_index_xinfo(?1) WHERE key = 1 ORDER BY seqno",
            &[Value::text(&iname)],
        )? {
            if int(c.first()) < 0 {
                return Err(format!("index {iname:?}: indexes on expressions are not supported"));
            }
            let cname = text(c.get(1)).unwrap_or_default();
            let col = table
                .column(&cname)
                .ok_or_else(|| format!("index {iname:?}: unknown column {cname:?}"))?;
            let coll = text(c.get(3)).unwrap_or_else(|| "BINARY".into()).to_ascii_uppercase();
            let own = col.collation.clone().unwrap_or_else(|| "BINARY".into());
            cols.push(IndexColumn {
                name: col.name.clone(),
                desc: int(c.get(2)) != 0,
                collation: (coll != own).then_some(coll),
            });
        }
        match text(idx.get(2)).as_deref() {
            Some("pk") => {
                if cols.iter().any(|c| c.desc || c.collation.is_some()) {
                    return Err(format!(
                        "table {t:?}: PRIMARY KEY columns cannot have their own COLLATE or DESC"
                    ));
                }
            }
            Some("u") => table.unique.push(cols),
            _ => table.indexes.push(Index {
                name: iname,
                unique: int(idx.get(1)) != 0,
                columns: cols,
            }),
        }
    }
    table.unique.sort_by_key(|a| index_key(a));
    table.indexes.sort_by_key(|i| i.name.to_ascii_lowercase());
    Ok(Some(table))
}

/// Reads every named table (`Ok(None)` when none exists; an error when
/// only some do).
pub fn read_tables(cat: &mut dyn Catalog, names: &[String]) -> Result<Option<Vec<Table>>, String> {
    let mut found = Vec::new();
    let mut missing = Vec::new();
    for n in names {
        match read_table(cat, n)? {
            Some(t) => found.push(t),
            None => missing.push(n.clone()),
        }
    }
    if found.is_empty() {
        return Ok(None);
    }
    if !missing.is_empty() {
        return Err(format!(
            "the database has some of the group's tables but not {missing:?}"
        ));
    }
    Ok(Some(found))
}

/// A column's type affinity, by SQLite's rules on the declared type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Affinity {
    Integer,
    Text,
    Blob,
    Real,
    Numeric,
}

impl Affinity {
    pub fn of(decl_type: &str) -> Affinity {
        let t = decl_type.to_ascii_uppercase();
        if t.contains("INT") {
            Affinity::Integer
        } else if t.contains("CHAR") || t.contains("CLOB") || t.contains("TEXT") {
            Affinity::Text
        } else if t.contains("BLOB") || t.is_empty() {
            Affinity::Blob
        } else if t.contains("REAL") || t.contains("FLOA") || t.contains("DOUB") {
            Affinity::Real
        } else {
            Affinity::Numeric
        }
    }

    /// Whether storing `v` in a column of this affinity and reading it
    /// back surely gives `v` again, bit for bit. Conservative: `false`
    /// means "read it back", not "it changes". (Text may turn numeric in a
    /// numeric column; a REAL column keeps integral reals as integers, so
    /// -0.0 reads back as 0.0; NaN binds as NULL.)
    pub fn keeps(self, v: &crate::Value) -> bool {
        use crate::Value::*;
        match (v, self) {
            (Null, _) | (Blob(_), _) => true,
            (Integer(_), Affinity::Integer | Affinity::Numeric | Affinity::Blob) => true,
            (Real(f), Affinity::Real | Affinity::Blob) => {
                !f.is_nan() && f.to_bits() != (-0.0f64).to_bits()
            }
            (Text(_), Affinity::Text | Affinity::Blob) => true,
            _ => false,
        }
    }
}

impl Table {
    /// Indexes of the primary-key columns, in column order (the order
    /// changesets and by-key statements bind them in).
    pub fn key_columns(&self) -> Vec<usize> {
        (0..self.columns.len())
            .filter(|i| self.columns[*i].pk > 0)
            .collect()
    }

    /// Each column's affinity, in column order.
    pub fn affinities(&self) -> Vec<Affinity> {
        self.columns
            .iter()
            .map(|c| Affinity::of(&c.decl_type))
            .collect()
    }

    /// Key flags as SQLite's changesets carry them: each key column's
    /// position in the primary key, 0 for other columns.
    pub fn pk_flags(&self) -> Vec<u8> {
        self.columns.iter().map(|c| c.pk.min(255) as u8).collect()
    }
}

/// A column's definition in `CREATE TABLE` (the default in parentheses) or
/// in `ALTER TABLE ... ADD COLUMN` (where SQLite takes no parenthesised
/// default, so the default — a literal there — goes bare).
pub(crate) fn column_sql(c: &Column, default_in_parens: bool) -> String {
    let mut d = quote_ident(&c.name);
    if !c.decl_type.is_empty() {
        d.push(' ');
        d.push_str(&c.decl_type);
    }
    if c.not_null {
        d.push_str(" NOT NULL");
    }
    match (&c.default, default_in_parens) {
        (Some(v), true) => d.push_str(&format!(" DEFAULT ({v})")),
        (Some(v), false) => d.push_str(&format!(" DEFAULT {v}")),
        (None, _) => {}
    }
    if let Some(coll) = &c.collation {
        d.push_str(&format!(" COLLATE {coll}"));
    }
    d
}

#[cfg(test)]
mod tests {
    use super::Affinity::{self, *};
    use crate::Value;

    #[test]
    fn affinity_follows_sqlites_rules() {
        for (t, a) in [
            ("INTEGER", Integer),
            ("BIGINT", Integer),
            ("VARCHAR(10)", Text),
            ("TEXT", Text),
            ("", Blob),
            ("BLOB", Blob),
            ("REAL", Real),
            ("DOUBLE PRECISION", Real),
            ("FLOATING POINT", Integer),
            ("NUMERIC", Numeric),
            ("DECIMAL(10,5)", Numeric),
            ("ANY", Numeric),
        ] {
            assert_eq!(Affinity::of(t), a, "{t}");
        }
    }

    #[test]
    fn keeps_only_what_surely_round_trips() {
        assert!(Integer.keeps(&Value::Integer(1)));
        assert!(!Real.keeps(&Value::Integer(1)));
        assert!(!Text.keeps(&Value::Integer(1)));
        assert!(Real.keeps(&Value::Real(1.5)));
        assert!(!Real.keeps(&Value::Real(-0.0)));
        assert!(!Real.keeps(&Value::Real(f64::NAN)));
        assert!(!Integer.keeps(&Value::Real(2.0)));
        assert!(!Numeric.keeps(&Value::text("12")));
        assert!(Text.keeps(&Value::text("12")));
        assert!(Blob.keeps(&Value::text("12")));
        assert!(Numeric.keeps(&Value::Null));
    }
}
