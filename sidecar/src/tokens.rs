//! The static tokens file: `[{"identity": "alice", "sha256": "<hex>"}, ...]`.
//! Tokens are shown once when made; only their SHA-256 is stored. A
//! running witness makes and revokes them itself (`POST /v1/tokens`,
//! `DELETE /v1/tokens/<identity>`), and notices when the file is changed
//! under it: the next token it does not know makes it read the file again
//! if the file changed, so no change needs a restart.

use crate::auth::valid_token_identity;
use crate::keys;
use pdb_protocol::{hex, now_ms, unhex32};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};

/// What identifies a version of the file: modification time, length, inode.
type Stamp = (std::time::SystemTime, u64, u64);

#[derive(Default)]
struct Loaded {
    by_hash: HashMap<[u8; 32], String>,
    stamp: Option<Stamp>,
}

/// The tokens file, as the running witness knows it.
#[derive(Default)]
pub struct Tokens {
    path: PathBuf,
    loaded: RwLock<Loaded>,
    /// Held while the file is rewritten, so two changes never lose one.
    write: Mutex<()>,
}

/// One identity's tokens, as listed (never a hash).
#[derive(serde::Serialize, Debug, PartialEq, Eq)]
pub struct Listed {
    pub identity: String,
    pub tokens: usize,
}

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

fn bad_identity() -> String {
    "a token's identity is 1-256 printable characters without spaces or ':' (':' marks JWT identities)"
        .into()
}

impl Tokens {
    /// Reads the file (a missing one is an empty list).
    pub fn open(path: &Path) -> Result<Tokens, String> {
        let t = Tokens {
            path: path.to_path_buf(),
            ..Default::default()
        };
        let stamp = stamp(path);
        let by_hash = index(&entries(path)?, path)?;
        *t.loaded.write().map_err(|_| "tokens lock poisoned")? = Loaded { by_hash, stamp };
        Ok(t)
    }

    /// The identity a token's hash belongs to. On a miss, the file is read
    /// again when it changed since it was last read (so a token added by
    /// hand, or by another tool, works at once).
    pub fn identity(&self, hash: &[u8; 32]) -> Option<String> {
        if let Some(id) = self.lookup(hash) {
            return Some(id);
        }
        if self.path.as_os_str().is_empty() {
            return None;
        }
        let now = stamp(&self.path);
        let known = self.loaded.read().ok()?.stamp;
        if now == known {
            return None;
        }
        let _w = self.write.lock().ok()?;
        match entries(&self.path).and_then(|e| index(&e, &self.path)) {
            Ok(by_hash) => {
                if let Ok(mut l) = self.loaded.write() {
                    *l = Loaded {
                        by_hash,
                        stamp: now,
                    };
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "the tokens file changed and cannot be read: keeping the tokens read before");
                if let Ok(mut l) = self.loaded.write() {
                    l.stamp = now;
                }
            }
        }
        self.lookup(hash)
    }

    fn lookup(&self, hash: &[u8; 32]) -> Option<String> {
        self.loaded.read().ok()?.by_hash.get(hash).cloned()
    }

    /// Makes a token for `identity`, stores its hash and returns the token
    /// (to be shown once). It works at once.
    pub fn add(&self, identity: &str) -> Result<String, String> {
        if !valid_token_identity(identity) {
            return Err(bad_identity());
        }
        let token = keys::new_token().map_err(|e| e.to_string())?;
        self.change(|list| {
            list.push(serde_json::json!({
                "identity": identity,
                "sha256": hex(&keys::token_hash(&token)),
                "created_ms": now_ms(),
            }));
        })?;
        Ok(token)
    }

    /// Removes every token of `identity` (its roles in groups stay: a new
    /// token for it has them again). Returns how many were removed.
    pub fn revoke(&self, identity: &str) -> Result<usize, String> {
        if !valid_token_identity(identity) {
            return Err(bad_identity());
        }
        let mut removed = 0;
        self.change(|list| {
            let before = list.len();
            list.retain(|e| e["identity"].as_str() != Some(identity));
            removed = before - list.len();
        })?;
        Ok(removed)
    }

    /// Every identity with tokens, and how many it has, by identity.
    pub fn list(&self) -> Result<Vec<Listed>, String> {
        let mut n: std::collections::BTreeMap<String, usize> = Default::default();
        for e in entries(&self.path)? {
            if let Some(id) = e["identity"].as_str() {
                *n.entry(id.to_string()).or_default() += 1;
            }
        }
        Ok(n.into_iter()
            .map(|(identity, tokens)| Listed { identity, tokens })
            .collect())
    }

    /// Rewrites the file with `f` applied to its entries (read afresh, so
    /// a change made by hand meanwhile is kept), then uses the result.
    fn change(&self, f: impl FnOnce(&mut Vec<serde_json::Value>)) -> Result<(), String> {
        let _w = self.write.lock().map_err(|_| "tokens lock poisoned")?;
        let mut list = entries(&self.path)?;
        f(&mut list);
        let by_hash = index(&list, &self.path)?;
        let text = serde_json::to_string_pretty(&list).map_err(|e| e.to_string())?;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        }
        keys::write_private(&self.path, &text)
            .map_err(|e| format!("writing {}: {e}", self.path.display()))?;
        let stamp = stamp(&self.path);
        *self.loaded.write().map_err(|_| "tokens lock poisoned")? = Loaded { by_hash, stamp };
        Ok(())
    }
}

/// Token hash → identity, from the file's entries.
fn index(list: &[serde_json::Value], path: &Path) -> Result<HashMap<[u8; 32], String>, String> {
    let mut out = HashMap::new();
    for e in list {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_made_revoked_and_edited_by_hand_work_at_once() {
        let dir = std::env::temp_dir().join(format!("pdb-tokens-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("tokens.json");
        let t = Tokens::open(&path).unwrap();
        let a = t.add("alice").unwrap();
        assert_eq!(t.identity(&keys::token_hash(&a)).as_deref(), Some("alice"));
        assert!(t.add("no spaces").is_err());
        assert!(t.add("jwt:x").is_err());
        // Another writer (an older CLI, a hand edit) adds one: seen at once.
        let other = Tokens::open(&path).unwrap();
        let b = other.add("bob").unwrap();
        assert_eq!(t.identity(&keys::token_hash(&b)).as_deref(), Some("bob"));
        assert_eq!(
            t.list().unwrap(),
            vec![
                Listed {
                    identity: "alice".into(),
                    tokens: 1
                },
                Listed {
                    identity: "bob".into(),
                    tokens: 1
                }
            ]
        );
        assert_eq!(t.revoke("alice").unwrap(), 1);
        assert_eq!(t.identity(&keys::token_hash(&a)), None);
        assert_eq!(t.revoke("alice").unwrap(), 0);
        // A broken file keeps the tokens read before.
        std::fs::write(&path, "not json").unwrap();
        assert_eq!(t.identity(&[7; 32]), None);
        assert_eq!(t.identity(&keys::token_hash(&b)).as_deref(), Some("bob"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
