//! The PersonalDB witness: authorises calls, orders each group's commits
//! into one signed, linear, durable history, and serves it.
//!
//! Layers, bottom up (docs/architecture.md): `store` (a group's file),
//! `write` (the write path), `projection`, `group` (a live group),
//! `access`, `snapshot`, `read` (the read path), `witness` (all groups),
//! `http` (the API), `cli` (the command line).

pub mod access;
pub mod admit;
pub mod auth;
pub mod cli;
pub mod error;
pub mod grant;
pub mod group;
pub mod http;
pub mod jwt;
pub mod keys;
pub mod limits;
pub mod projection;
pub mod read;
pub mod sandbox;
pub mod snapshot;
pub mod store;
pub mod tokens;
pub mod verify;
pub mod witness;
pub mod write;

pub use http::run;
pub use witness::{Settings, Witness};
