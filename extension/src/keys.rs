//! The witness keys this database trusts: the key pinned at `pdb_open`
//! (given as `public_key`, or the one first seen) and the chain of
//! rotations leading from it to the witness's current key, each rotation
//! signed by the key before and the key after it. A key no rotation from
//! the pinned one vouches for is refused.

use crate::client::WitnessApi;
use crate::db::Db;
use crate::error::{Error, Result};
use crate::kv;
use ed25519_dalek::VerifyingKey;
use pdb_protocol::wire::{RotationJson, WitnessJson};
use pdb_protocol::{unhex32, KeyChain, Rotation, Value};

fn key(hex: &str, what: &str) -> Result<VerifyingKey> {
    unhex32(hex)
        .and_then(|k| VerifyingKey::from_bytes(&k).ok())
        .ok_or_else(|| Error::invalid(format!("{what} is not an Ed25519 public key in hex")))
}

fn rotations(list: &[RotationJson]) -> Result<Vec<Rotation>> {
    list.iter()
        .map(|r| {
            r.to_rotation()
                .ok_or_else(|| Error::untrusted("the witness sent a malformed key rotation"))
        })
        .collect()
}

/// The chain from `pinned` (hex) to the key the witness serves, or why it
/// cannot be trusted.
pub fn chain_to_served(pinned: &str, info: &WitnessJson) -> Result<KeyChain> {
    let Ok(pinned) = key(pinned, "the pinned key") else {
        return Err(Error::untrusted(format!(
            "the witness's key {} is not the pinned key {pinned} (which is not an Ed25519 public key); refusing to sync",
            info.public_key
        )));
    };
    let served = key(&info.public_key, "the witness's public key")?;
    let chain = KeyChain::from_rotations(&pinned, &rotations(&info.rotations)?)
        .map_err(|e| Error::untrusted(format!("the witness's key rotations are refused: {e}")))?;
    if chain.current() != &served {
        return Err(Error::untrusted(format!(
            "the witness's key {} is not the pinned key {}, and no key rotation leads from one to the other; refusing to sync",
            info.public_key,
            pdb_protocol::hex(pinned.as_bytes())
        )));
    }
    Ok(chain)
}

/// The chain the witness serves, when this database already trusts a
/// chain: accepted only if it extends that one (the trusted keys, then
/// rotations after them). A chain that forks from it — a rotation from an
/// old key to another key, signed by whoever holds the old key — is
/// refused by name (`key_fork`).
pub fn check_extends(db: &Db, served: &KeyChain) -> Result<()> {
    if kv::get_text(db, "public_key")?.is_none() {
        return Ok(());
    }
    let trusted = load(db)?;
    if served.extends(&trusted) {
        return Ok(());
    }
    let show = |c: &KeyChain| {
        c.keys()
            .iter()
            .map(|(k, _)| pdb_protocol::hex(&k.as_bytes()[..4]))
            .collect::<Vec<_>>()
            .join(" → ")
    };
    Err(Error::refused_stop(
        "key_fork",
        format!(
            "key_fork: the witness's key rotations ({}) fork from the chain this database trusts ({}): someone holding an earlier witness key signed a rotation of their own, or the witness runs from a backup made before its last rotation; nothing was used and sync stopped (see docs/operations.md, \"Key rotation\"). Sync resumes once the witness serves a chain that extends the trusted one",
            show(served),
            show(&trusted)
        ),
    ))
}

/// The chain from `pinned` to the key the witness serves, which must
/// extend the chain this database trusts ([`check_extends`]). A served
/// chain that does not pass through the pin but starts from the trusted
/// chain's first key forks from it: refused as `key_fork`.
pub fn served_chain(db: &Db, pinned: &str, info: &WitnessJson) -> Result<KeyChain> {
    match chain_to_served(pinned, info) {
        Ok(chain) => {
            check_extends(db, &chain)?;
            Ok(chain)
        }
        Err(e) => {
            if kv::get_text(db, "public_key")?.is_some() {
                let trusted = load(db)?;
                if let Some((first, _)) = trusted.keys().first() {
                    if let Ok(other) = chain_to_served(&pdb_protocol::hex(first.as_bytes()), info) {
                        check_extends(db, &other)?;
                    }
                }
            }
            Err(e)
        }
    }
}

/// The chain this database stored.
pub fn load(db: &Db) -> Result<KeyChain> {
    let pinned = kv::get_text(db, "public_key")?
        .ok_or_else(|| Error::invalid("sync state has no pinned key; call pdb_open again"))?;
    let list: Vec<RotationJson> = match kv::get_text(db, "key_rotations")? {
        None => Vec::new(),
        Some(t) => serde_json::from_str(&t)
            .map_err(|_| Error::invalid("the stored key rotations are corrupt"))?,
    };
    KeyChain::from_rotations(&key(&pinned, "the pinned key")?, &rotations(&list)?)
        .map_err(|e| Error::invalid(format!("the stored key rotations are refused: {e}")))
}

/// Stores the rotations of `chain` (which `info` served) and pins its
/// current key: the pin moves forward with each verified rotation, so a
/// chain that does not pass through it is refused from then on.
pub fn save(db: &Db, chain: &KeyChain, info: &WitnessJson) -> Result<()> {
    kv::set(
        db,
        "public_key",
        Value::text(&pdb_protocol::hex(chain.current().as_bytes())),
    )?;
    let text = serde_json::to_string(&info.rotations).map_err(|e| Error::invalid(e.to_string()))?;
    kv::set(db, "key_rotations", Value::text(&text))
}

/// Asks the witness for its key and rotations, and stores them when they
/// extend the chain from the pinned key. Whether the chain grew.
pub fn follow(db: &Db, w: &dyn WitnessApi) -> Result<bool> {
    let before = load(db)?;
    let pinned = kv::get_text(db, "public_key")?.unwrap_or_default();
    let info = w.witness()?;
    let chain = served_chain(db, &pinned, &info)?;
    if chain == before {
        return Ok(false);
    }
    save(db, &chain, &info)?;
    Ok(true)
}
