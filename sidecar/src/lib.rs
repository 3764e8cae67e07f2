//! The PersonalDB witness: authorises calls, orders each group's commits
//! into one signed, linear, durable history, and serves it.

pub mod access;
pub mod apply;
pub mod auth;
pub mod commit;
pub mod error;
pub mod group;
pub mod http;
pub mod keys;
pub mod projection;
pub mod read;
pub mod schema_ddl;
pub mod snapshot;
pub mod sqlvalue;
pub mod verify;
pub mod witness;
pub mod writer;

pub use http::run;
pub use witness::{Settings, Witness};
