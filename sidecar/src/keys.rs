//! The witness's signing key and the admin token, both kept in the data
//! directory. The key file holds the 32-byte Ed25519 seed (hex, mode 0600);
//! the token is stored only as its SHA-256.

use ed25519_dalek::SigningKey;
use pdb_protocol::{hex, sha256, unhex32};
use std::io::Write;
use std::path::Path;

pub const KEY_FILE: &str = "witness.key";
pub const TOKEN_HASH_FILE: &str = "admin-token.sha256";

pub fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

fn random32() -> std::io::Result<[u8; 32]> {
    let mut b = [0u8; 32];
    getrandom::getrandom(&mut b).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(b)
}

/// A fresh bearer token: `pdb_` and 32 random bytes in hex. Only its hash
/// is ever stored.
pub fn new_token() -> std::io::Result<String> {
    Ok(format!("pdb_{}", hex(&random32()?)))
}

/// Loads the signing key of an existing data directory; an error (never a
/// new key) when there is none, so commands that only read, like
/// `verify`, cannot mint a key by being pointed at the wrong directory.
pub fn load_key(data_dir: &Path) -> std::io::Result<SigningKey> {
    let path = data_dir.join(KEY_FILE);
    let s = std::fs::read_to_string(&path).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!(
                "reading {}: {e} (is this the witness's data directory?)",
                path.display()
            ),
        )
    })?;
    let seed = unhex32(s.trim()).ok_or_else(|| {
        std::io::Error::other(format!("{} is not a 32-byte hex seed", path.display()))
    })?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Loads the signing key, creating it on first start. Returns whether it
/// was created.
pub fn load_or_create_key(data_dir: &Path) -> std::io::Result<(SigningKey, bool)> {
    if !data_dir.join(KEY_FILE).exists() {
        let seed = random32()?;
        write_private(&data_dir.join(KEY_FILE), &hex(&seed))?;
        return Ok((SigningKey::from_bytes(&seed), true));
    }
    load_key(data_dir).map(|k| (k, false))
}

pub fn token_hash(token: &str) -> [u8; 32] {
    sha256(token.as_bytes())
}

/// Where the admin token comes from: the configuration (flag or
/// environment), else a hash stored at first start. Returns the hash and,
/// only when one was just generated, the token itself to show once.
pub fn admin_token(
    data_dir: &Path,
    configured: Option<&str>,
) -> std::io::Result<([u8; 32], Option<String>)> {
    if let Some(t) = configured {
        return Ok((token_hash(t), None));
    }
    let path = data_dir.join(TOKEN_HASH_FILE);
    match std::fs::read_to_string(&path) {
        Ok(s) => unhex32(s.trim()).map(|h| (h, None)).ok_or_else(|| {
            std::io::Error::other(format!("{} is not a SHA-256 hex digest", path.display()))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let token = new_token()?;
            let h = token_hash(&token);
            write_private(&path, &hex(&h))?;
            Ok((h, Some(token)))
        }
        Err(e) => Err(e),
    }
}

/// Compares two digests without an early exit.
pub fn digest_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
