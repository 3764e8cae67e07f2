//! The static tokens file: `[{"identity": "alice", "sha256": "<hex>"}, ...]`.
//! Tokens are shown once when made; only their SHA-256 is stored.

use crate::auth::valid_token_identity;
use crate::keys;
use pdb_protocol::{hex, unhex32};
use std::collections::HashMap;
use std::path::Path;

/// Token hash → identity. A missing file is an empty list.
pub fn load(path: &Path) -> Result<HashMap<[u8; 32], String>, String> {
    let mut out = HashMap::new();
    for e in entries(path)? {
        let id = e["identity"].as_str().filter(|i| valid_token_identity(i));
        let hash = e["sha256"].as_str().and_then(unhex32);
        match (id, hash) {
            (Some(id), Some(h)) => {
                out.insert(h, id.to_string());
            }
            _ => {
                return Err(format!(
                    "{}: each entry needs an identity (no spaces or ':') and a sha256",
                    path.display()
                ))
            }
        }
    }
    Ok(out)
}

fn entries(path: &Path) -> Result<Vec<serde_json::Value>, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .map_err(|e| format!("{} is not a JSON list: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(format!("reading {}: {e}", path.display())),
    }
}

/// Makes a token for `identity`, appends its hash to the file and returns
/// the token (to be shown once).
pub fn add(path: &Path, identity: &str) -> Result<String, String> {
    if !valid_token_identity(identity) {
        return Err(
            "a token's identity is 1-256 printable characters without spaces or ':' (':' marks JWT identities)"
                .into(),
        );
    }
    let mut list = entries(path)?;
    let token = keys::new_token().map_err(|e| e.to_string())?;
    list.push(serde_json::json!({
        "identity": identity,
        "sha256": hex(&keys::token_hash(&token)),
    }));
    let text = serde_json::to_string_pretty(&list).map_err(|e| e.to_string())?;
    keys::write_private(path, &text).map_err(|e| format!("writing {}: {e}", path.display()))?;
    Ok(token)
}
