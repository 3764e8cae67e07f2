//! The PersonalDB witness: authorises calls, orders each group's commits
//! into one signed, linear, durable history, and serves it.
//!
//! Layers, bottom up (docs/witness.md): `store` (a group's file),
//! `sandbox` (admin SQL's allow-lists and budgets), `write` (the write
//! path and its thread pool), `projection`, `group` (an open group),
//! `registry` (the open groups), `directory` (groups and members),
//! `access`, `snapshot`, `read` (the read path), `admit` (bounds on
//! concurrent work), `witness` (all of it), `http` (the API), `cli` (the
//! command line).

pub mod access;
pub mod admit;
pub mod auth;
pub mod backup;
pub mod cli;
pub mod directory;
pub mod error;
pub mod failpoint;
pub mod grant;
pub mod group;
pub mod http;
pub mod jwt;
pub mod keys;
pub mod limits;
pub mod metrics;
pub mod projection;
pub mod read;
pub mod registry;
pub mod sandbox;
pub mod snapshot;
pub mod store;
pub mod tokens;
pub mod verify;
pub mod watch;
pub mod witness;
pub mod write;

pub use http::run;
pub use witness::{Settings, Witness};
