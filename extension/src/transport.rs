//! How the extension reaches the witness: which URLs it accepts (`https://`,
//! or `http://` only to a loopback address unless the app opts in), which
//! TLS roots it trusts (the system's, or a CA file for a private CA), and
//! its network timeout. One HTTP agent per such setting is shared by every
//! call in the process. `pdb_open` stores the setting in `pdb_state`, so
//! later calls from any process connect the same way.

use crate::db::Db;
use crate::error::{Error, Result};
use crate::kv;
use pdb_protocol::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

pub const DEFAULT_TIMEOUT_MS: u64 = 60_000;

/// Agents by (CA file content, timeout).
type Agents = HashMap<(Vec<u8>, u64), Arc<ureq::Agent>>;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transport {
    /// A PEM file of CA certificates to trust instead of the system's.
    pub ca_file: Option<String>,
    /// Plain `http://` to hosts other than loopback: refused unless set.
    pub allow_http: bool,
    pub timeout_ms: u64,
}

impl Default for Transport {
    fn default() -> Self {
        Transport {
            ca_file: None,
            allow_http: false,
            timeout_ms: DEFAULT_TIMEOUT_MS,
        }
    }
}

/// Whether `url`'s host is a loopback address (`localhost`, 127.0.0.0/8,
/// `::1`).
fn loopback(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.split(':').next().unwrap_or(""),
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl Transport {
    /// Refuses URLs this setting may not reach.
    pub fn check_url(&self, url: &str) -> Result<()> {
        if url.starts_with("https://") {
            return Ok(());
        }
        if !url.starts_with("http://") {
            return Err(Error::invalid(
                "url must start with https:// (or http:// to a loopback address)",
            ));
        }
        if loopback(url) || self.allow_http {
            return Ok(());
        }
        Err(Error::invalid(
            "url: plain http:// to another host would send the token and every row in clear; use https://, or set the option allow_http to true",
        ))
    }

    /// The setting `pdb_open` stored (defaults where it stored none).
    pub fn load(db: &Db) -> Result<Transport> {
        Ok(Transport {
            ca_file: kv::get_text(db, "ca_file")?,
            allow_http: kv::get_i64(db, "allow_http")? == Some(1),
            timeout_ms: kv::get_i64(db, "timeout_ms")?
                .and_then(|t| u64::try_from(t).ok())
                .unwrap_or(DEFAULT_TIMEOUT_MS),
        })
    }

    pub fn save(&self, db: &Db) -> Result<()> {
        match &self.ca_file {
            Some(f) => kv::set(db, "ca_file", Value::text(f))?,
            None => kv::delete(db, "ca_file")?,
        }
        kv::set(db, "allow_http", Value::Integer(i64::from(self.allow_http)))?;
        kv::set(
            db,
            "timeout_ms",
            Value::Integer(i64::try_from(self.timeout_ms).unwrap_or(i64::MAX)),
        )
    }

    /// The HTTP agent for this setting, made once per process (per CA
    /// file content, so a renewed CA file is picked up).
    pub fn agent(&self) -> Result<Arc<ureq::Agent>> {
        static AGENTS: OnceLock<Mutex<Agents>> = OnceLock::new();
        let pem = match &self.ca_file {
            None => Vec::new(),
            Some(path) => std::fs::read(path)
                .map_err(|e| Error::invalid(format!("ca_file: reading {path}: {e}")))?,
        };
        let cache_key = (pem, self.timeout_ms);
        let mut agents = AGENTS
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(a) = agents.get(&cache_key) {
            return Ok(a.clone());
        }
        let roots = if cache_key.0.is_empty() {
            ureq::tls::RootCerts::PlatformVerifier
        } else {
            let mut certs = Vec::new();
            for item in ureq::tls::parse_pem(&cache_key.0) {
                if let Ok(ureq::tls::PemItem::Certificate(c)) = item {
                    certs.push(c);
                }
            }
            if certs.is_empty() {
                return Err(Error::invalid(
                    "ca_file holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                ));
            }
            ureq::tls::RootCerts::new_with_certs(&certs)
        };
        // The timeout bounds a stall (connecting, or any one read or write),
        // not a whole exchange: a hung witness fails the call, a large body
        // moving slowly still arrives (a total bound would fail it on every
        // retry, and sync would never get past it).
        let timeout = Some(Duration::from_millis(self.timeout_ms.max(1)));
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(timeout.map(|t| t.min(Duration::from_secs(10))))
            .timeout_per_read(timeout)
            .timeout_per_write(timeout)
            .tls_config(ureq::tls::TlsConfig::builder().root_certs(roots).build())
            .build()
            .into();
        let agent = Arc::new(agent);
        agents.insert(cache_key, agent.clone());
        Ok(agent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_to_loopback_unless_allowed() {
        let t = Transport::default();
        for ok in [
            "https://witness.example",
            "http://127.0.0.1:7070",
            "http://localhost/",
            "http://[::1]:80",
            "http://user@127.0.0.2",
        ] {
            assert!(t.check_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://witness.example",
            "http://127.0.0.1.evil.example",
            "http://localhost.evil.example",
            "http://10.0.0.1",
            "ftp://x",
            "witness.example",
        ] {
            assert!(t.check_url(bad).is_err(), "{bad}");
        }
        let open = Transport {
            allow_http: true,
            ..Transport::default()
        };
        assert!(open.check_url("http://witness.example").is_ok());
        assert!(open.check_url("ftp://x").is_err());
    }
}
