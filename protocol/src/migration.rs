//! Schema migrations as data: the operations of one migration, applying
//! them to a schema (structure) and turning them into the statements both
//! sides run, and translating a changeset made on an older version into
//! the current one. A migration is an entry of the group's signed log
//! (`records::MigrationRecord`), between commits.

use crate::changeset::{Change, Changeset, Op as RowOp, TableChanges};
use crate::schema::{Column, Index, Schema, Table};
use crate::sql::quote_ident;
use crate::value::Value;
use serde::{Deserialize, Serialize};

/// One change of a schema. The only kinds there are; each is what one
/// admin DDL statement may do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum SchemaOp {
    /// `ALTER TABLE t ADD COLUMN ...`: existing rows take the default.
    AddColumn {
        table: String,
        column: Column,
    },
    /// `ALTER TABLE t DROP COLUMN c`: the column's values are gone.
    DropColumn {
        table: String,
        column: String,
    },
    /// `ALTER TABLE t RENAME COLUMN a TO b`: values kept.
    RenameColumn {
        table: String,
        from: String,
        to: String,
    },
    CreateTable {
        table: Table,
    },
    /// `DROP TABLE t`: its rows are gone.
    DropTable {
        table: String,
    },
    CreateIndex {
        table: String,
        index: Index,
    },
    DropIndex {
        table: String,
        index: String,
    },
}

/// A migration: from one schema version to the next.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Migration {
    pub from_version: u32,
    pub to_version: u32,
    pub ops: Vec<SchemaOp>,
    /// The schema after it (structure; its hash is in the signed record).
    pub tables: Vec<Table>,
    /// The oldest schema version whose commits the witness still accepts
    /// (translated to the new one) once this migration is in force.
    pub accepts_from: u32,
    /// The admin's DDL it was made from, for people (never run by anyone).
    #[serde(default)]
    pub ddl: String,
}

impl SchemaOp {
    /// The table the operation concerns.
    pub fn table(&self) -> &str {
        match self {
            SchemaOp::AddColumn { table, .. }
            | SchemaOp::DropColumn { table, .. }
            | SchemaOp::RenameColumn { table, .. }
            | SchemaOp::DropTable { table }
            | SchemaOp::CreateIndex { table, .. }
            | SchemaOp::DropIndex { table, .. } => table,
            SchemaOp::CreateTable { table } => &table.name,
        }
    }

    /// Whether the operation changes the rows' values (their state-root
    /// contribution): a column added or dropped, a table dropped.
    pub fn changes_rows(&self) -> bool {
        matches!(
            self,
            SchemaOp::AddColumn { .. } | SchemaOp::DropColumn { .. } | SchemaOp::DropTable { .. }
        )
    }

    /// The statements that make the change on a database that has the
    /// schema before it (built from checked data; names quoted).
    pub fn ddl(&self) -> Vec<String> {
        let t = quote_ident(self.table());
        match self {
            SchemaOp::AddColumn { column, .. } => vec![format!(
                "ALTER TABLE {t} ADD COLUMN {}",
                add_column_sql(column)
            )],
            SchemaOp::DropColumn { column, .. } => {
                vec![format!(
                    "ALTER TABLE {t} DROP COLUMN {}",
                    quote_ident(column)
                )]
            }
            SchemaOp::RenameColumn { from, to, .. } => vec![format!(
                "ALTER TABLE {t} RENAME COLUMN {} TO {}",
                quote_ident(from),
                quote_ident(to)
            )],
            SchemaOp::CreateTable { table } => {
                let mut out = vec![table.create_sql()];
                out.extend(table.index_sql());
                out
            }
            SchemaOp::DropTable { .. } => vec![format!("DROP TABLE {t}")],
            SchemaOp::CreateIndex { table, index } => {
                let holder = Table {
                    name: table.clone(),
                    indexes: vec![index.clone()],
                    ..Table::default()
                };
                holder.index_sql()
            }
            SchemaOp::DropIndex { index, .. } => {
                vec![format!("DROP INDEX {}", quote_ident(index))]
            }
        }
    }
}

/// A column definition as `ADD COLUMN` takes it: SQLite allows no
/// parenthesised default there, so the default (a literal) goes bare.
pub fn add_column_sql(c: &Column) -> String {
    crate::schema::column_sql(c, false)
}

/// Whether a default can stand bare in `ADD COLUMN`: a literal (a number
/// with an optional sign, a string, a blob, NULL, TRUE, FALSE), not an
/// expression or a time.
fn literal_default(d: &str) -> bool {
    use crate::sqltext::{tokenize, Token};
    let Ok(tokens) = tokenize(d) else {
        return false;
    };
    match tokens.as_slice() {
        [Token::Op("-" | "+"), Token::Number(_)] => true,
        [Token::Number(_) | Token::Str(_) | Token::Blob(_)] => true,
        [Token::Word(w)] => matches!(w.to_ascii_uppercase().as_str(), "NULL" | "TRUE" | "FALSE"),
        _ => false,
    }
}

/// The value a literal default stands for (before the column's affinity):
/// what a row that predates an added column holds in it.
pub fn literal_value(d: Option<&str>) -> Result<Value, String> {
    use crate::sqltext::{tokenize, Token};
    let Some(d) = d else {
        return Ok(Value::Null);
    };
    let bad = || format!("default {d:?} is not a literal");
    let tokens = tokenize(d).map_err(|_| bad())?;
    let (negative, token) = match tokens.as_slice() {
        [Token::Op("-"), t] => (true, t),
        [Token::Op("+"), t] | [t] => (false, t),
        _ => return Err(bad()),
    };
    let number = |n: &str| -> Result<Value, String> {
        let lower = n.to_ascii_lowercase();
        if let Some(hex) = lower.strip_prefix("0x") {
            let v = u64::from_str_radix(hex, 16).map_err(|_| bad())? as i64;
            return Ok(Value::Integer(if negative { v.wrapping_neg() } else { v }));
        }
        let signed = if negative {
            format!("-{n}")
        } else {
            n.to_string()
        };
        if !lower.contains(['.', 'e']) {
            if let Ok(i) = signed.parse::<i64>() {
                return Ok(Value::Integer(i));
            }
        }
        signed.parse::<f64>().map(Value::Real).map_err(|_| bad())
    };
    match token {
        Token::Number(n) => number(n),
        Token::Str(t) if !negative => Ok(Value::text(t)),
        Token::Blob(h) if !negative => crate::unhex(&h.to_ascii_lowercase())
            .map(Value::Blob)
            .ok_or_else(bad),
        Token::Word(w) if !negative => match w.to_ascii_uppercase().as_str() {
            "NULL" => Ok(Value::Null),
            "TRUE" => Ok(Value::Integer(1)),
            "FALSE" => Ok(Value::Integer(0)),
            _ => Err(bad()),
        },
        _ => Err(bad()),
    }
}

fn find<'a>(s: &'a mut Schema, table: &str) -> Result<&'a mut Table, String> {
    let i = s
        .table_index(table)
        .ok_or_else(|| format!("no table {table:?}"))?;
    Ok(&mut s.tables[i])
}

impl Migration {
    /// The schema this migration makes from `old` (checked: every
    /// operation must fit, and the result must pass the grammar).
    pub fn apply_to(&self, old: &Schema) -> Result<Schema, String> {
        if old.version != self.from_version || self.to_version <= self.from_version {
            return Err(format!(
                "a migration from version {} to {} does not follow version {}",
                self.from_version, self.to_version, old.version
            ));
        }
        if self.accepts_from > self.to_version {
            return Err("accepts_from is after the new version".into());
        }
        if self.ops.is_empty() {
            return Err("a migration makes at least one change".into());
        }
        // Each step must pass the grammar, not just the end: both sides
        // build statements from every operation.
        let mut s = Schema::new(self.to_version, old.tables.clone());
        for op in &self.ops {
            op.apply(&mut s)?;
            s.validate()?;
        }
        Ok(s)
    }

    /// The new schema as the migration states it.
    pub fn schema(&self) -> Schema {
        Schema::new(self.to_version, self.tables.clone())
    }

    /// Canonical bytes, as the signed record's digest covers them.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Migration, String> {
        let m: Migration =
            serde_json::from_slice(bytes).map_err(|e| format!("malformed migration: {e}"))?;
        if m.encode() != bytes {
            return Err("the migration is not in its canonical form".into());
        }
        Ok(m)
    }
}

impl SchemaOp {
    /// Makes the change to a schema's structure (checked: it must fit).
    pub fn apply(&self, s: &mut Schema) -> Result<(), String> {
        apply_op(s, self)
    }
}

fn apply_op(s: &mut Schema, op: &SchemaOp) -> Result<(), String> {
    match op {
        SchemaOp::AddColumn { table, column } => {
            let t = find(s, table)?;
            if t.columns
                .iter()
                .any(|c| c.name.eq_ignore_ascii_case(&column.name))
            {
                return Err(format!(
                    "table {table:?} already has a column {:?}",
                    column.name
                ));
            }
            if column.pk != 0 {
                return Err("an added column cannot be part of the primary key".into());
            }
            if column.not_null && column.default.as_deref().is_none_or(|d| d == "NULL") {
                return Err(format!(
                    "added column {:?} is NOT NULL, so it needs a default for the rows already there",
                    column.name
                ));
            }
            if let Some(d) = &column.default {
                if !literal_default(d) {
                    return Err(format!(
                        "added column {:?}: its default must be a literal (SQLite cannot add a column with an expression or time default)",
                        column.name
                    ));
                }
            }
            t.columns.push(column.clone());
        }
        SchemaOp::DropColumn { table, column } => {
            let t = find(s, table)?;
            let i = t
                .columns
                .iter()
                .position(|c| c.name.eq_ignore_ascii_case(column))
                .ok_or_else(|| format!("table {table:?} has no column {column:?}"))?;
            let name = t.columns[i].name.clone();
            let uses = |cols: &[crate::schema::IndexColumn]| {
                cols.iter().any(|c| c.name.eq_ignore_ascii_case(&name))
            };
            if t.columns[i].pk > 0
                || t.unique.iter().any(|u| uses(u))
                || t.indexes.iter().any(|x| uses(&x.columns))
                || t.checks
                    .iter()
                    .any(|c| crate::sqltext::names_column(c, &name))
            {
                return Err(format!(
                    "column {name:?} of {table:?} is in its key, a UNIQUE constraint, an index or a CHECK: drop those first (or keep the column)"
                ));
            }
            t.columns.remove(i);
        }
        SchemaOp::RenameColumn { table, from, to } => {
            let t = find(s, table)?;
            if t.columns.iter().any(|c| c.name.eq_ignore_ascii_case(to)) {
                return Err(format!("table {table:?} already has a column {to:?}"));
            }
            let c = t
                .columns
                .iter_mut()
                .find(|c| c.name.eq_ignore_ascii_case(from))
                .ok_or_else(|| format!("table {table:?} has no column {from:?}"))?;
            let old = std::mem::replace(&mut c.name, to.clone());
            let rename = |cols: &mut Vec<crate::schema::IndexColumn>| {
                for ic in cols.iter_mut().filter(|ic| ic.name == old) {
                    ic.name = to.clone();
                }
            };
            t.unique.iter_mut().for_each(rename);
            for x in &mut t.indexes {
                rename(&mut x.columns);
            }
            // Rewritten from their tokens: a literal holding the name
            // (`CHECK (title <> '"title"')`) is not a reference to it.
            let names: Vec<String> = t.columns.iter().map(|c| c.name.clone()).collect();
            for ch in &mut t.checks {
                *ch = crate::sqltext::rename_column(ch, &old, to, &names)?;
            }
            t.checks.sort();
        }
        SchemaOp::CreateTable { table } => {
            if s.table_index(&table.name).is_some() {
                return Err(format!("table {:?} already exists", table.name));
            }
            s.tables.push(table.clone());
            s.tables.sort_by_key(|t| t.name.to_ascii_lowercase());
        }
        SchemaOp::DropTable { table } => {
            let i = s
                .table_index(table)
                .ok_or_else(|| format!("no table {table:?}"))?;
            s.tables.remove(i);
        }
        SchemaOp::CreateIndex { table, index } => {
            let t = find(s, table)?;
            t.indexes.push(index.clone());
            t.indexes.sort_by_key(|x| x.name.to_ascii_lowercase());
        }
        SchemaOp::DropIndex { table, index } => {
            let t = find(s, table)?;
            let before = t.indexes.len();
            t.indexes.retain(|x| !x.name.eq_ignore_ascii_case(index));
            if t.indexes.len() == before {
                return Err(format!("table {table:?} has no index {index:?}"));
            }
        }
    }
    Ok(())
}

/// Where a column of a table at the newest version comes from at an older
/// one: an old column's position, or added since (with its default).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    Old(usize),
    Added(Option<String>),
}

/// For a table named `table` at an older version (columns `old_cols`), its
/// name and columns' origins after `migrations` (in order), or `None` when
/// one of them drops the table.
pub fn trace_table(
    table: &str,
    old_cols: &[String],
    migrations: &[Migration],
) -> Option<(String, Vec<(String, Origin)>)> {
    let mut cols: Vec<(String, Origin)> = old_cols
        .iter()
        .enumerate()
        .map(|(i, c)| (c.clone(), Origin::Old(i)))
        .collect();
    let name = table.to_string();
    for m in migrations {
        for op in &m.ops {
            if !op.table().eq_ignore_ascii_case(&name) {
                continue;
            }
            match op {
                SchemaOp::DropTable { .. } => return None,
                SchemaOp::AddColumn { column, .. } => {
                    cols.push((column.name.clone(), Origin::Added(column.default.clone())))
                }
                SchemaOp::DropColumn { column, .. } => {
                    cols.retain(|(c, _)| !c.eq_ignore_ascii_case(column))
                }
                SchemaOp::RenameColumn { from, to, .. } => {
                    for (c, _) in cols
                        .iter_mut()
                        .filter(|(c, _)| c.eq_ignore_ascii_case(from))
                    {
                        *c = to.clone();
                    }
                }
                _ => {}
            }
        }
    }
    Some((name, cols))
}

/// Why a changeset made on an older version cannot be carried forward.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Untranslatable {
    pub table: String,
    pub message: String,
}

/// Reads the stored row of a table (in the newest schema) by its key.
pub type CurrentRow<'a> = dyn FnMut(&str, &[Value]) -> Result<Option<Vec<Value>>, String> + 'a;

/// Translates a changeset made on an older schema into the newest one,
/// given the migrations since (in order) and the newest schema: columns
/// renamed follow, dropped ones (and tables dropped) are left out, added
/// ones take `default_of`
/// on an INSERT and stay unchanged in an UPDATE; an UPDATE left with no
/// change goes away. `current_row` gives the stored row for a DELETE's
/// added columns (a DELETE states every old value).
pub fn translate(
    cs: &Changeset,
    old: &Schema,
    migrations: &[Migration],
    new: &Schema,
    default_of: &mut dyn FnMut(&Option<String>) -> Result<Value, String>,
    current_row: &mut CurrentRow<'_>,
) -> Result<Changeset, Untranslatable> {
    let mut out = Changeset::default();
    for t in &cs.tables {
        let bad = |message: String| Untranslatable {
            table: t.name.clone(),
            message,
        };
        let old_table = old
            .table(&t.name)
            .ok_or_else(|| bad("no such table at the commit's schema version".into()))?;
        let old_cols: Vec<String> = old_table.columns.iter().map(|c| c.name.clone()).collect();
        // A table dropped since: its changes go with it (the devices that
        // made them record them when they migrate).
        let Some((name, cols)) = trace_table(&old_table.name, &old_cols, migrations) else {
            continue;
        };
        let new_table = new
            .table(&name)
            .ok_or_else(|| bad("the table is not in the current schema".into()))?;
        // The new table's columns in its order, each with its origin.
        let origins: Vec<Origin> = new_table
            .columns
            .iter()
            .map(|c| {
                cols.iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case(&c.name))
                    .map(|(_, o)| o.clone())
                    .unwrap_or(Origin::Added(c.default.clone()))
            })
            .collect();
        let mut changes = Vec::with_capacity(t.changes.len());
        for c in &t.changes {
            let pick =
                |row: &[Option<Value>], added: &dyn Fn() -> Option<Value>| -> Vec<Option<Value>> {
                    origins
                        .iter()
                        .map(|o| match o {
                            Origin::Old(i) => row.get(*i).cloned().flatten(),
                            Origin::Added(_) => added(),
                        })
                        .collect()
                };
            match c.op {
                RowOp::Insert => {
                    let mut new_row = Vec::with_capacity(origins.len());
                    for o in &origins {
                        new_row.push(Some(match o {
                            Origin::Old(i) => {
                                c.new.get(*i).cloned().flatten().unwrap_or(Value::Null)
                            }
                            Origin::Added(d) => default_of(d).map_err(bad)?,
                        }));
                    }
                    changes.push(Change {
                        op: RowOp::Insert,
                        indirect: c.indirect,
                        old: vec![],
                        new: new_row,
                    });
                }
                RowOp::Update => {
                    let old_v = pick(&c.old, &|| None);
                    let new_v = pick(&c.new, &|| None);
                    if new_table
                        .columns
                        .iter()
                        .zip(&new_v)
                        .any(|(col, v)| col.pk == 0 && v.is_some())
                    {
                        changes.push(Change {
                            op: RowOp::Update,
                            indirect: c.indirect,
                            old: old_v,
                            new: new_v,
                        });
                    }
                }
                RowOp::Delete => {
                    let key = c.pk(&t.pk_flags);
                    let stored = current_row(&new_table.name, &key).map_err(bad)?;
                    let mut old_v = pick(&c.old, &|| None);
                    for (j, o) in origins.iter().enumerate() {
                        if matches!(o, Origin::Added(_)) {
                            old_v[j] = Some(
                                stored
                                    .as_ref()
                                    .and_then(|r| r.get(j).cloned())
                                    .unwrap_or(Value::Null),
                            );
                        }
                    }
                    changes.push(Change {
                        op: RowOp::Delete,
                        indirect: c.indirect,
                        old: old_v,
                        new: vec![],
                    });
                }
            }
        }
        if !changes.is_empty() {
            out.tables.push(TableChanges {
                name: new_table.name.clone(),
                pk_flags: new_table.pk_flags(),
                changes,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::Column;

    fn v1() -> Schema {
        Schema::new(
            1,
            vec![Table {
                name: "notes".into(),
                columns: vec![
                    Column {
                        pk: 1,
                        ..Column::new("id", "INTEGER")
                    },
                    Column::new("title", "TEXT"),
                    Column::new("old", "TEXT"),
                ],
                ..Table::default()
            }],
        )
    }

    fn migration() -> Migration {
        let ops = vec![
            SchemaOp::AddColumn {
                table: "notes".into(),
                column: Column {
                    not_null: true,
                    default: Some("0".into()),
                    ..Column::new("done", "INTEGER")
                },
            },
            SchemaOp::DropColumn {
                table: "notes".into(),
                column: "old".into(),
            },
            SchemaOp::RenameColumn {
                table: "notes".into(),
                from: "title".into(),
                to: "body".into(),
            },
        ];
        let mut m = Migration {
            from_version: 1,
            to_version: 2,
            ops,
            tables: vec![],
            accepts_from: 1,
            ddl: String::new(),
        };
        m.tables = m.apply_to(&v1()).unwrap().tables;
        m
    }

    #[test]
    fn literal_defaults_have_their_values() {
        for (d, v) in [
            ("0", Value::Integer(0)),
            ("-12", Value::Integer(-12)),
            ("+3", Value::Integer(3)),
            ("0x1F", Value::Integer(31)),
            ("1.5", Value::Real(1.5)),
            ("-2e3", Value::Real(-2000.0)),
            ("'it''s'", Value::text("it's")),
            ("X'00ff'", Value::Blob(vec![0, 255])),
            ("NULL", Value::Null),
            ("true", Value::Integer(1)),
        ] {
            assert_eq!(literal_value(Some(d)).unwrap(), v, "{d}");
            assert!(literal_default(d), "{d}");
        }
        assert_eq!(literal_value(None).unwrap(), Value::Null);
        for d in ["CURRENT_TIME", "1 + 1", "(1)", "-'x'", "abs(1)"] {
            assert!(literal_value(Some(d)).is_err(), "{d}");
            assert!(!literal_default(d), "{d}");
        }
    }

    #[test]
    fn operations_apply_to_the_structure() {
        let m = migration();
        let s = m.apply_to(&v1()).unwrap();
        let names: Vec<&str> = s.tables[0]
            .columns
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(names, ["id", "body", "done"]);
        assert_eq!(Migration::decode(&m.encode()).unwrap(), m);
        // Ops that do not fit are refused.
        let mut bad = m.clone();
        bad.ops.push(SchemaOp::DropColumn {
            table: "notes".into(),
            column: "id".into(),
        });
        assert!(bad.apply_to(&v1()).is_err());
        let mut nn = m.clone();
        nn.ops = vec![SchemaOp::AddColumn {
            table: "notes".into(),
            column: Column {
                not_null: true,
                ..Column::new("x", "TEXT")
            },
        }];
        assert!(nn.apply_to(&v1()).unwrap_err().contains("needs a default"));
    }

    #[test]
    fn old_changesets_are_carried_to_the_new_version() {
        let m = migration();
        let new = m.schema();
        let row = |vals: Vec<Value>| vals.into_iter().map(Some).collect::<Vec<_>>();
        let cs = Changeset {
            tables: vec![TableChanges {
                name: "notes".into(),
                pk_flags: vec![1, 0, 0],
                changes: vec![
                    Change {
                        op: RowOp::Insert,
                        indirect: false,
                        old: vec![],
                        new: row(vec![Value::Integer(1), Value::text("a"), Value::text("x")]),
                    },
                    // Changes only the dropped column: nothing left.
                    Change {
                        op: RowOp::Update,
                        indirect: false,
                        old: vec![Some(Value::Integer(2)), None, Some(Value::text("p"))],
                        new: vec![None, None, Some(Value::text("q"))],
                    },
                    Change {
                        op: RowOp::Update,
                        indirect: false,
                        old: vec![Some(Value::Integer(3)), Some(Value::text("t")), None],
                        new: vec![None, Some(Value::text("u")), None],
                    },
                ],
            }],
        };
        let out = translate(
            &cs,
            &v1(),
            std::slice::from_ref(&m),
            &new,
            &mut |d| Ok(Value::Integer(d.as_deref().unwrap_or("0").parse().unwrap())),
            &mut |_, _| Ok(None),
        )
        .unwrap();
        let t = &out.tables[0];
        assert_eq!(t.pk_flags, vec![1, 0, 0]);
        assert_eq!(t.changes.len(), 2);
        assert_eq!(
            t.changes[0].new,
            row(vec![Value::Integer(1), Value::text("a"), Value::Integer(0)])
        );
        assert_eq!(t.changes[1].new, vec![None, Some(Value::text("u")), None]);
        out.validate(&new).unwrap();
    }
}
