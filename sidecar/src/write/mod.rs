//! The write path: one writer per group takes queued commits in batches
//! (`writer`), validates and certifies each (`commit`), applies its rows
//! (`apply`) under the table's write rule (`rules`), and keeps projections
//! in step (`projections`) — all inside one transaction per batch.

pub mod apply;
pub mod batch;
pub mod commit;
pub mod projections;
pub mod rules;
pub mod writer;
