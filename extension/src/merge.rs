//! Row arithmetic, as pure functions: the net change of a row between its
//! base and its current value (what a commit carries), a change applied
//! to the row it was made against, and the three-way merge of a pending
//! row with a remote change. No I/O: callers read and write the rows.

use pdb_protocol::{Change, Op, Value};

pub type Row = Vec<Value>;

/// What a conflict does (docs/extension.md has the table of outcomes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// The remote side goes in the table; the local side is recorded.
    RemoteWins,
    /// The local side stays and is pushed over the remote one; the remote
    /// side is recorded.
    LocalWins,
    /// Nothing is decided: the local side stays in the table but the row is
    /// held back from pushing, and the conflict stays open until the app
    /// settles it with `pdb_resolve(id, 'local' | 'remote')`.
    Manual,
}

impl Policy {
    pub fn parse(s: &str) -> Option<Policy> {
        match s {
            "remote_wins" => Some(Policy::RemoteWins),
            "local_wins" => Some(Policy::LocalWins),
            "manual" => Some(Policy::Manual),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Policy::RemoteWins => "remote_wins",
            Policy::LocalWins => "local_wins",
            Policy::Manual => "manual",
        }
    }

    /// What a conflict settled under this policy keeps.
    pub fn kept(self) -> Kept {
        match self {
            Policy::RemoteWins => Kept::Remote,
            Policy::LocalWins => Kept::Local,
            Policy::Manual => Kept::Open,
        }
    }
}

/// Which side of a conflict is in the table, and whether it is settled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kept {
    Remote,
    Local,
    /// The local side, until the app resolves it (policy manual).
    Open,
}

impl Kept {
    pub fn name(self) -> &'static str {
        match self {
            Kept::Remote => "remote",
            Kept::Local => "local",
            Kept::Open => "open",
        }
    }

    fn takes_remote(self) -> bool {
        self == Kept::Remote
    }
}

/// The net change of one row from `base` (None: it did not exist) to
/// `cur` (None: it does not exist now), or None when they agree.
/// `key` holds the primary-key columns' indexes. An UPDATE carries the
/// key and the changed columns' old values, and the changed columns' new
/// values, as SQLite's session extension writes it.
pub fn diff(key: &[usize], base: Option<&[Value]>, cur: Option<&[Value]>) -> Option<Change> {
    let change = |op, old: Vec<Option<Value>>, new: Vec<Option<Value>>| Change {
        op,
        indirect: false,
        old,
        new,
    };
    let all = |r: &[Value]| r.iter().cloned().map(Some).collect();
    match (base, cur) {
        (None, None) => None,
        (None, Some(c)) => Some(change(Op::Insert, vec![], all(c))),
        (Some(b), None) => Some(change(Op::Delete, all(b), vec![])),
        (Some(b), Some(c)) => {
            let mut old = vec![None; b.len()];
            let mut new = vec![None; b.len()];
            let mut changed = false;
            for (i, (bv, cv)) in b.iter().zip(c).enumerate() {
                if key.contains(&i) {
                    old[i] = Some(bv.clone());
                } else if bv != cv {
                    old[i] = Some(bv.clone());
                    new[i] = Some(cv.clone());
                    changed = true;
                }
            }
            changed.then(|| change(Op::Update, old, new))
        }
    }
}

/// The row after `c`, applied to the row it was made against (`before`;
/// None: no such row). `Err(())` when `c` does not fit `before`: an
/// insert of a row that exists, or an update or delete whose old values
/// differ from the row's.
#[allow(clippy::result_unit_err)]
pub fn apply(c: &Change, before: Option<&[Value]>) -> Result<Option<Row>, ()> {
    match (c.op, before) {
        (Op::Insert, None) => Ok(c.row_after(None)),
        (Op::Update | Op::Delete, Some(row)) => {
            let fits = c
                .old
                .iter()
                .enumerate()
                .all(|(i, want)| want.as_ref().is_none_or(|w| row.get(i) == Some(w)));
            if fits {
                Ok(c.row_after(Some(row)))
            } else {
                Err(())
            }
        }
        _ => Err(()),
    }
}

/// Both sides of a change made differently here and remotely.
#[derive(Clone, Debug, PartialEq)]
pub enum Conflict {
    /// The same column set to different values on both sides.
    Column {
        index: usize,
        base: Option<Value>,
        local: Value,
        remote: Value,
        kept: Kept,
    },
    /// The row deleted on one side and changed on the other.
    Row {
        base: Option<Row>,
        local: Option<Row>,
        remote: Option<Row>,
        kept: Kept,
    },
    /// The local row could not stand beside the remote state (a UNIQUE
    /// value a remote row took, a CHECK the merged row fails): the local
    /// side was set aside and the row holds the server's value. Not made
    /// by [`merge`] (it needs the database); `rebase` finds it.
    SetAside {
        base: Option<Row>,
        local: Option<Row>,
        remote: Option<Row>,
        kept: Kept,
    },
}

/// The three-way merge of one row: `base` is its value at the verified
/// head, `remote` the value a remote commit gives it, `local` its value
/// here (None: no such row). A column changed on one side only takes
/// that side; the same column changed differently on both is a conflict
/// the policy settles; a delete against a change is a row conflict.
/// Returns the row to keep and the conflicts met.
pub fn merge(
    key: &[usize],
    policy: Policy,
    base: Option<&Row>,
    remote: Option<&Row>,
    local: Option<&Row>,
) -> (Option<Row>, Vec<Conflict>) {
    if remote == local || remote == base {
        return (local.cloned(), vec![]);
    }
    if local == base {
        return (remote.cloned(), vec![]);
    }
    let kept = policy.kept();
    let kept_remote = kept.takes_remote();
    match (remote, local) {
        (Some(r), Some(lo)) => {
            let mut merged = lo.clone();
            let mut conflicts = Vec::new();
            for (i, (lv, rv)) in lo.iter().zip(r).enumerate() {
                if key.contains(&i) || lv == rv {
                    continue;
                }
                let b = base.and_then(|b| b.get(i));
                if b == Some(lv) {
                    merged[i] = rv.clone();
                } else if b == Some(rv) {
                    // The local change stands.
                } else {
                    if kept_remote {
                        merged[i] = rv.clone();
                    }
                    conflicts.push(Conflict::Column {
                        index: i,
                        base: b.cloned(),
                        local: lv.clone(),
                        remote: rv.clone(),
                        kept,
                    });
                }
            }
            (Some(merged), conflicts)
        }
        _ => {
            let c = Conflict::Row {
                base: base.cloned(),
                local: local.cloned(),
                remote: remote.cloned(),
                kept,
            };
            let merged = if kept_remote { remote } else { local };
            (merged.cloned(), vec![c])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn i(v: i64) -> Value {
        Value::Integer(v)
    }
    fn t(s: &str) -> Value {
        Value::text(s)
    }
    /// A row (id, title, n).
    fn row(id: i64, title: &str, n: i64) -> Row {
        vec![i(id), t(title), i(n)]
    }
    const KEY: &[usize] = &[0];

    #[test]
    fn diff_of_nothing_is_nothing() {
        assert_eq!(diff(KEY, None, None), None);
        let r = row(1, "a", 1);
        assert_eq!(diff(KEY, Some(&r), Some(&r)), None, "changed back");
    }

    #[test]
    fn diff_gives_insert_delete_and_update_with_only_changed_columns() {
        let a = row(1, "a", 1);
        let ins = diff(KEY, None, Some(&a)).unwrap();
        assert_eq!((ins.op, ins.old.len()), (Op::Insert, 0));
        assert_eq!(ins.new, vec![Some(i(1)), Some(t("a")), Some(i(1))]);
        let del = diff(KEY, Some(&a), None).unwrap();
        assert_eq!((del.op, del.new.len()), (Op::Delete, 0));
        assert_eq!(del.old, vec![Some(i(1)), Some(t("a")), Some(i(1))]);
        let upd = diff(KEY, Some(&a), Some(&row(1, "a", 2))).unwrap();
        assert_eq!(upd.op, Op::Update);
        assert_eq!(upd.old, vec![Some(i(1)), None, Some(i(1))]);
        assert_eq!(upd.new, vec![None, None, Some(i(2))]);
    }

    #[test]
    fn diff_keeps_value_types_apart() {
        // 1 and 1.0 and '1' are different values, so a change.
        let a = vec![i(1), i(1)];
        let b = vec![i(1), Value::Real(1.0)];
        assert!(diff(KEY, Some(&a), Some(&b)).is_some());
        let c = vec![i(1), t("1")];
        assert!(diff(KEY, Some(&a), Some(&c)).is_some());
    }

    #[test]
    fn apply_reverses_diff_and_refuses_what_does_not_fit() {
        let a = row(1, "a", 1);
        let b = row(1, "b", 1);
        let up = diff(KEY, Some(&a), Some(&b)).unwrap();
        assert_eq!(apply(&up, Some(&a)), Ok(Some(b.clone())));
        assert_eq!(apply(&up, Some(&row(1, "a", 7))), Ok(Some(row(1, "b", 7))));
        assert_eq!(
            apply(&up, Some(&row(1, "x", 1))),
            Err(()),
            "old value differs"
        );
        assert_eq!(apply(&up, None), Err(()), "no row to update");
        let ins = diff(KEY, None, Some(&a)).unwrap();
        assert_eq!(apply(&ins, None), Ok(Some(a.clone())));
        assert_eq!(apply(&ins, Some(&a)), Err(()), "insert of an existing row");
        let del = diff(KEY, Some(&a), None).unwrap();
        assert_eq!(apply(&del, Some(&a)), Ok(None));
        assert_eq!(apply(&del, Some(&b)), Err(()));
    }

    #[test]
    fn one_sided_changes_take_that_side() {
        let base = row(1, "a", 1);
        let remote = row(1, "b", 1);
        let local = row(1, "a", 2);
        for p in [Policy::RemoteWins, Policy::LocalWins, Policy::Manual] {
            let (m, c) = merge(KEY, p, Some(&base), Some(&remote), Some(&local));
            assert_eq!(m, Some(row(1, "b", 2)), "different columns both survive");
            assert!(c.is_empty());
        }
        // Only remote changed / only local changed.
        let (m, c) = merge(
            KEY,
            Policy::LocalWins,
            Some(&base),
            Some(&remote),
            Some(&base),
        );
        assert_eq!((m, c.len()), (Some(remote.clone()), 0));
        let (m, c) = merge(
            KEY,
            Policy::RemoteWins,
            Some(&base),
            Some(&base),
            Some(&local),
        );
        assert_eq!((m, c.len()), (Some(local.clone()), 0));
        // Both made the same change.
        let (m, c) = merge(
            KEY,
            Policy::RemoteWins,
            Some(&base),
            Some(&local),
            Some(&local),
        );
        assert_eq!((m, c.len()), (Some(local), 0));
    }

    #[test]
    fn the_same_column_changed_on_both_sides_is_a_conflict_the_policy_settles() {
        let base = row(1, "a", 1);
        let remote = row(1, "remote", 1);
        let local = row(1, "local", 5);
        let (m, c) = merge(
            KEY,
            Policy::RemoteWins,
            Some(&base),
            Some(&remote),
            Some(&local),
        );
        assert_eq!(m, Some(row(1, "remote", 5)));
        assert_eq!(
            c,
            vec![Conflict::Column {
                index: 1,
                base: Some(t("a")),
                local: t("local"),
                remote: t("remote"),
                kept: Kept::Remote,
            }]
        );
        let (m, c) = merge(
            KEY,
            Policy::LocalWins,
            Some(&base),
            Some(&remote),
            Some(&local),
        );
        assert_eq!(m, Some(local.clone()));
        assert!(matches!(
            c[..],
            [Conflict::Column {
                kept: Kept::Local,
                ..
            }]
        ));
        // Manual: the local side stays, and the conflict is open.
        let (m, c) = merge(
            KEY,
            Policy::Manual,
            Some(&base),
            Some(&remote),
            Some(&local),
        );
        assert_eq!(m, Some(local.clone()), "manual keeps the local side");
        assert!(matches!(
            c[..],
            [Conflict::Column {
                kept: Kept::Open,
                ..
            }]
        ));
    }

    #[test]
    fn delete_against_update_is_a_row_conflict() {
        let base = row(1, "a", 1);
        let changed = row(1, "b", 1);
        // Remote deleted, local updated.
        let (m, c) = merge(KEY, Policy::RemoteWins, Some(&base), None, Some(&changed));
        assert_eq!(m, None);
        assert_eq!(
            c,
            vec![Conflict::Row {
                base: Some(base.clone()),
                local: Some(changed.clone()),
                remote: None,
                kept: Kept::Remote,
            }]
        );
        let (m, _) = merge(KEY, Policy::LocalWins, Some(&base), None, Some(&changed));
        assert_eq!(m, Some(changed.clone()));
        // Remote updated, local deleted.
        let (m, c) = merge(KEY, Policy::RemoteWins, Some(&base), Some(&changed), None);
        assert_eq!(m, Some(changed.clone()));
        assert!(matches!(c[..], [Conflict::Row { local: None, .. }]));
        let (m, _) = merge(KEY, Policy::LocalWins, Some(&base), Some(&changed), None);
        assert_eq!(m, None);
        // Deleted on both sides: nothing to settle.
        let (m, c) = merge(KEY, Policy::RemoteWins, Some(&base), None, None);
        assert_eq!((m, c.len()), (None, 0));
    }

    #[test]
    fn insert_on_both_sides_merges_column_by_column_without_a_base() {
        let remote = row(1, "same", 1);
        let local = row(1, "same", 2);
        let (m, c) = merge(KEY, Policy::RemoteWins, None, Some(&remote), Some(&local));
        assert_eq!(m, Some(remote.clone()));
        assert_eq!(
            c,
            vec![Conflict::Column {
                index: 2,
                base: None,
                local: i(2),
                remote: i(1),
                kept: Kept::Remote,
            }]
        );
        let (m, _) = merge(KEY, Policy::LocalWins, None, Some(&remote), Some(&local));
        assert_eq!(m, Some(local));
    }

    #[test]
    fn key_columns_are_never_merged() {
        // A key change shows up as a delete of the old key and an insert
        // of the new one; the merge of the new key's row never rewrites
        // its key, even where the sides differ there.
        let remote = vec![i(1), t("r"), i(0)];
        let local = vec![i(2), t("r"), i(0)];
        let (m, c) = merge(KEY, Policy::RemoteWins, None, Some(&remote), Some(&local));
        assert_eq!(m, Some(local));
        assert!(c.is_empty());
    }

    #[test]
    fn key_change_diffs_as_delete_and_insert() {
        // The base log holds both keys: the old one existed, the new did not.
        let old = row(1, "a", 1);
        let new = row(2, "a", 1);
        let del = diff(KEY, Some(&old), None).unwrap();
        let ins = diff(KEY, None, Some(&new)).unwrap();
        assert_eq!((del.op, ins.op), (Op::Delete, Op::Insert));
        assert_eq!(apply(&ins, None), Ok(Some(new)));
    }
}
