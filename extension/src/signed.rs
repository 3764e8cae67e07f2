//! What the witness signs, checked before anything it states is used: a
//! head against the trusted keys and the group, and against time — never
//! older than the newest head this database has seen, nor than the
//! device's clock by more than `max_head_age_ms`.

use crate::db::Db;
use crate::error::{Error, Result};
use crate::state;
use pdb_protocol::wire::HeadJson;
use pdb_protocol::{now_ms, HeadRecord, KeyChain, Value};

/// The witness's clock may step back this much between two heads.
const CLOCK_ALLOWANCE_MS: u64 = 1_000;
/// By default a head older than the device's clock by an hour is refused.
pub const DEFAULT_MAX_HEAD_AGE_MS: u64 = 3_600_000;

pub fn verify_head(keys: &KeyChain, group: &str, h: &HeadJson) -> Result<HeadRecord> {
    let signed = h
        .signed
        .to_signed()
        .ok_or_else(|| Error::untrusted("the witness sent a malformed signed head"))?;
    let rec = signed
        .head(keys)
        .map_err(|e| Error::untrusted(format!("the witness's signed head was rejected ({e})")))?;
    if rec.group != group {
        return Err(Error::untrusted("the signed head is for another group"));
    }
    Ok(rec)
}

/// The age bound `pdb_open` stored.
pub fn max_head_age(db: &Db) -> Result<u64> {
    Ok(state::get_i64(db, "max_head_age_ms")?.map_or(DEFAULT_MAX_HEAD_AGE_MS, |t| t.max(0) as u64))
}

/// Refuses a head that moved back in time or is older than the device's
/// clock by more than `max_age` ms (0: no bound), and remembers the
/// newest head time seen (`pdb_status` shows its age).
pub fn check_fresh(db: &Db, rec: &HeadRecord, max_age: u64) -> Result<()> {
    let newest = state::get_i64(db, "head_time_ms")?.map_or(0, |t| t.max(0) as u64);
    if rec.time_ms.saturating_add(CLOCK_ALLOWANCE_MS) < newest {
        return Err(Error::untrusted(format!(
            "the witness's signed head is from {} ms before a head this database already saw: a replayed or rolled-back answer; refusing it",
            newest - rec.time_ms
        )));
    }
    let age = now_ms().saturating_sub(rec.time_ms);
    if max_age > 0 && age > max_age {
        return Err(Error::untrusted(format!(
            "the witness's signed head is {} s old (the bound is {} s): a replayed answer, or this device's clock is wrong; refusing it",
            age / 1000,
            max_age / 1000
        )));
    }
    if rec.time_ms > newest {
        state::set(db, "head_time_ms", Value::Integer(rec.time_ms as i64))?;
    }
    Ok(())
}
