//! The write path: one writer per group takes queued commits in batches
//! (`writer`, run by a bounded pool of threads, `pool`), validates and
//! certifies each (`commit`), applies its rows (`apply`) under the table's
//! write rule (`rules`), and keeps projections in step (`projections`) —
//! all inside one transaction per batch, with what it is checked against
//! loaded once (`batch`).

pub mod apply;
pub mod batch;
pub mod commit;
pub mod migration;
pub mod pool;
pub mod projections;
pub mod rules;
pub mod writer;
