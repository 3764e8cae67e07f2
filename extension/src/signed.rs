//! What the witness signs, checked before anything it states is used: a
//! head against the trusted keys and the group, and against time — never
//! behind the verified head while older than a head seen, never too far
//! after the device's clock, nor older than it by more than
//! `max_head_age_ms`.

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

/// A head dated more than this far after the device's clock is refused
/// (`clock_skew`).
pub const MAX_AHEAD_MS: u64 = 5 * 60_000;

/// Seconds as a person reads them, to the nearest unit: "90 s", "3 h",
/// "400 days" (a span measured a few milliseconds after it was signed is
/// still the span that was meant).
fn span(ms: u64) -> String {
    let s = (ms + 500) / 1000;
    match s {
        0..=5_399 => format!("{s} s"),
        5_400..=172_799 => format!("{} h", (s + 1800) / 3600),
        _ => format!("{} days", (s + 43_200) / 86_400),
    }
}

/// Refuses a head that is behind this database's verified head while
/// dated before a head it saw (a replayed or rolled-back answer), dated
/// too far after the device's clock (`clock_skew`), or older than the
/// device's clock by more than `max_age` ms (0: no bound); remembers the
/// time of the head accepted (`pdb_status` shows its age).
///
/// A head dated before one seen is not refused on time alone: a witness
/// whose clock ran ahead and was corrected signs earlier times for a
/// history that extends the verified one (its sequence is not behind,
/// and the page's entries chain from the verified head to it).
pub fn check_fresh(db: &Db, rec: &HeadRecord, max_age: u64) -> Result<()> {
    let newest = state::get_i64(db, "head_time_ms")?.map_or(0, |t| t.max(0) as u64);
    let verified = state::get_i64(db, "head_seq")?.map(|s| s.max(0) as u64);
    if rec.time_ms.saturating_add(CLOCK_ALLOWANCE_MS) < newest
        && verified.is_some_and(|v| rec.seq < v)
    {
        return Err(Error::untrusted(format!(
            "the witness's signed head (sequence {}) is behind this database's verified head and from {} ms before a head it already saw: a replayed or rolled-back answer; refusing it",
            rec.seq,
            newest - rec.time_ms
        )));
    }
    let now = now_ms();
    if rec.time_ms > now.saturating_add(MAX_AHEAD_MS) {
        return Err(Error::refused(
            "clock_skew",
            format!(
                "clock_skew: the witness's signed head is dated {} after this device's clock (which reads {now} ms since 1970): the witness's clock or this device's is wrong; nothing of it was used, and sync resumes by itself once the two agree",
                span(rec.time_ms - now)
            ),
        ));
    }
    let age = now.saturating_sub(rec.time_ms);
    if max_age > 0 && age > max_age {
        return Err(Error::untrusted(format!(
            "the witness's signed head is {} old (the bound is {}): a replayed answer, or this device's clock is wrong (it reads {now} ms since 1970); refusing it",
            span(age),
            span(max_age)
        )));
    }
    if rec.time_ms != newest {
        state::set(db, "head_time_ms", Value::Integer(rec.time_ms as i64))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::span;

    #[test]
    fn a_span_reads_to_the_nearest_unit() {
        let day = 86_400_000;
        assert_eq!(span(400 * day - 5), "400 days");
        assert_eq!(span(400 * day + 5), "400 days");
        assert_eq!(span(3 * 3_600_000 - 1), "3 h");
        assert_eq!(span(90_000), "90 s");
        assert_eq!(span(0), "0 s");
    }
}
