//! TLS for tests and the benchmark: a CA made on the spot, a server
//! certificate it signs, and an HTTP agent that trusts the CA.

use std::path::{Path, PathBuf};

pub struct Pki {
    /// The CA certificate, PEM (also written to `<label>.ca.pem`).
    pub ca_pem: String,
    pub ca_file: PathBuf,
    /// The server's certificate chain and key, PEM files.
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A CA made for this run, and a server certificate it signs for `names`
/// (host names or IP addresses), all written under `dir`.
pub fn make(dir: &Path, label: &str, names: &[&str]) -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, format!("PersonalDB test CA {label}"));
    let ca_key = KeyPair::generate().expect("CA key");
    let ca_cert = ca.self_signed(&ca_key).expect("CA certificate");
    let leaf = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
        .expect("server params");
    let leaf_key = KeyPair::generate().expect("server key");
    let leaf_cert = leaf
        .signed_by(&leaf_key, &ca_cert, &ca_key)
        .expect("server certificate");
    let cert = dir.join(format!("{label}.crt.pem"));
    let key = dir.join(format!("{label}.key.pem"));
    let ca_file = dir.join(format!("{label}.ca.pem"));
    let ca_pem = ca_cert.pem();
    std::fs::write(&cert, leaf_cert.pem()).expect("write certificate");
    std::fs::write(&key, leaf_key.serialize_pem()).expect("write key");
    std::fs::write(&ca_file, &ca_pem).expect("write CA");
    Pki {
        ca_pem,
        ca_file,
        cert,
        key,
    }
}

/// An agent like [`crate::agent`] that trusts only the CA in `ca_pem`.
pub fn agent(ca_pem: &str) -> ureq::Agent {
    let ca = ureq::tls::Certificate::from_pem(ca_pem.as_bytes()).expect("CA PEM");
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_secs(60)))
        .tls_config(
            ureq::tls::TlsConfig::builder()
                .root_certs(ureq::tls::RootCerts::new_with_certs(&[ca]))
                .build(),
        )
        .build()
        .into()
}
