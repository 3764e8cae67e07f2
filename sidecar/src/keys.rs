//! The witness's signing key and the admin token, both kept in the data
//! directory. The key file holds the 32-byte Ed25519 seed (hex, mode 0600);
//! the token is stored only as its SHA-256.

use ed25519_dalek::SigningKey;
use pdb_protocol::wire::RotationJson;
use pdb_protocol::{hex, now_ms, sha256, unhex32, KeyChain, Rotation};
use std::io::Write;
use std::path::Path;

pub const KEY_FILE: &str = "witness.key";
pub const TOKEN_HASH_FILE: &str = "admin-token.sha256";
/// Every rotation of the signing key, in order (JSON list of signed
/// rotation records).
pub const ROTATIONS_FILE: &str = "rotations.json";
/// The next key while a rotation is being made (see [`rotate`]).
const NEXT_KEY_FILE: &str = "witness.key.next";

/// Makes `dir` (created if missing) readable by the witness's user only:
/// a data directory made by an older witness, or by hand, becomes private.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

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
/// Finishes a rotation a crash interrupted.
pub fn load_key(data_dir: &Path) -> std::io::Result<SigningKey> {
    finish_rotation(data_dir)?;
    read_seed(&data_dir.join(KEY_FILE))
}

fn read_seed(path: &Path) -> std::io::Result<SigningKey> {
    let s = std::fs::read_to_string(path).map_err(|e| {
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
    finish_rotation(data_dir)?;
    if !data_dir.join(KEY_FILE).exists() {
        let seed = random32()?;
        write_private(&data_dir.join(KEY_FILE), &hex(&seed))?;
        return Ok((SigningKey::from_bytes(&seed), true));
    }
    load_key(data_dir).map(|k| (k, false))
}

/// The rotations made so far, in order.
pub fn load_rotations(data_dir: &Path) -> std::io::Result<Vec<Rotation>> {
    let path = data_dir.join(ROTATIONS_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let bad = || std::io::Error::other(format!("{} is corrupt", path.display()));
    let list: Vec<RotationJson> = serde_json::from_str(&text).map_err(|_| bad())?;
    list.iter()
        .map(|r| r.to_rotation().ok_or_else(bad))
        .collect()
}

/// The chain from the first key to `key`, checked: what the verifier and
/// the served `rotations` rest on.
pub fn chain(data_dir: &Path, key: &SigningKey) -> std::io::Result<(Vec<Rotation>, KeyChain)> {
    let rotations = load_rotations(data_dir)?;
    let chain = KeyChain::from_rotations(&key.verifying_key(), &rotations)
        .map_err(|e| std::io::Error::other(format!("{ROTATIONS_FILE}: {e}")))?;
    if chain.current() != &key.verifying_key() {
        return Err(std::io::Error::other(format!(
            "{ROTATIONS_FILE} does not end at the key in {KEY_FILE}"
        )));
    }
    Ok((rotations, chain))
}

/// Replaces the signing key with a new one. The rotation record, signed by
/// both keys, names the new key and when it takes over. Crash-safe: the
/// new key is written aside first, then the record, then the new key takes
/// the old one's place; a start after a crash finishes or forgets it.
pub fn rotate(data_dir: &Path) -> std::io::Result<Rotation> {
    let old = load_key(data_dir)?;
    let (mut rotations, _) = chain(data_dir, &old)?;
    let index = u32::try_from(rotations.len() + 1).map_err(std::io::Error::other)?;
    let start = now_ms();
    if let Some(last) = rotations.last().and_then(|r| r.verify().ok()) {
        if start <= last.start_ms {
            return Err(std::io::Error::other(format!(
                "refusing to rotate: the last rotation started at {} ms, after this machine's clock ({start} ms); check the clock",
                last.start_ms
            )));
        }
    }
    let new = SigningKey::from_bytes(&random32()?);
    write_private(&data_dir.join(NEXT_KEY_FILE), &hex(new.as_bytes()))?;
    let rotation = Rotation::sign(index, &old, &new, start);
    rotations.push(rotation.clone());
    let list: Vec<RotationJson> = rotations.iter().map(RotationJson::from).collect();
    let text = serde_json::to_string_pretty(&list).map_err(std::io::Error::other)?;
    write_private(&data_dir.join(ROTATIONS_FILE), &text)?;
    finish_rotation(data_dir)?;
    Ok(rotation)
}

/// A `witness.key.next` left by an interrupted rotation becomes the key
/// when the rotations name it, and is dropped when they do not.
fn finish_rotation(data_dir: &Path) -> std::io::Result<()> {
    let next = data_dir.join(NEXT_KEY_FILE);
    if !next.exists() {
        return Ok(());
    }
    let key = read_seed(&next)?;
    let named = load_rotations(data_dir)?
        .last()
        .and_then(|r| r.verify().ok())
        .is_some_and(|r| r.new_key == key.verifying_key().to_bytes());
    if named {
        std::fs::rename(&next, data_dir.join(KEY_FILE))?;
    } else {
        std::fs::remove_file(&next)?;
    }
    std::fs::File::open(data_dir)?.sync_all()
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
