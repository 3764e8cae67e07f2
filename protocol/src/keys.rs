//! The witness's keys over time: the key a device pinned, and the chain of
//! rotations that leads from it to the key in force now. A key no rotation
//! vouches for is refused; each key in the chain checks the records whose
//! time falls in its period.

use crate::records::{Period, Rotation, Signed, Verifier, VerifyError};
use ed25519_dalek::VerifyingKey;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyChain {
    /// Keys with the time each came into force (the first from 0), in order.
    keys: Vec<(VerifyingKey, u64)>,
}

/// Why a chain of rotations is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChainError {
    /// A rotation's record or signatures do not verify.
    Rotation(u32, VerifyError),
    /// The rotations do not follow each other (index, keys or times).
    Broken(String),
    /// The pinned key is not in the chain.
    NotVouched,
}

impl std::fmt::Display for ChainError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChainError::Rotation(i, e) => write!(f, "key rotation {i}: {e}"),
            ChainError::Broken(m) => f.write_str(m),
            ChainError::NotVouched => {
                f.write_str("no key rotation leads from the pinned key to the witness's key")
            }
        }
    }
}

impl KeyChain {
    /// A chain of one key, in force from the start.
    pub fn single(key: VerifyingKey) -> KeyChain {
        KeyChain {
            keys: vec![(key, 0)],
        }
    }

    /// The chain the rotations (all of them, in order) make, provided
    /// `pinned` is one of its keys.
    pub fn from_rotations(
        pinned: &VerifyingKey,
        rotations: &[Rotation],
    ) -> Result<KeyChain, ChainError> {
        let mut keys: Vec<(VerifyingKey, u64)> = Vec::new();
        for (n, r) in rotations.iter().enumerate() {
            let index = u32::try_from(n + 1).unwrap_or(u32::MAX);
            let rec = r.verify().map_err(|e| ChainError::Rotation(index, e))?;
            if rec.index != index {
                return Err(ChainError::Broken(format!(
                    "key rotation {index} says it is rotation {}",
                    rec.index
                )));
            }
            let prev = VerifyingKey::from_bytes(&rec.prev_key)
                .map_err(|_| ChainError::Rotation(index, VerifyError::BadSignature))?;
            let new = VerifyingKey::from_bytes(&rec.new_key)
                .map_err(|_| ChainError::Rotation(index, VerifyError::BadSignature))?;
            match keys.last() {
                None => keys.push((prev, 0)),
                Some((last, since)) => {
                    if *last != prev {
                        return Err(ChainError::Broken(format!(
                            "key rotation {index} does not start from the key rotation {} made",
                            index - 1
                        )));
                    }
                    if rec.start_ms < *since {
                        return Err(ChainError::Broken(format!(
                            "key rotation {index} starts before the one before it"
                        )));
                    }
                }
            }
            if keys.iter().any(|(k, _)| *k == new) {
                return Err(ChainError::Broken(format!(
                    "key rotation {index} goes back to an earlier key"
                )));
            }
            keys.push((new, rec.start_ms));
        }
        if keys.is_empty() {
            keys.push((*pinned, 0));
        }
        if !keys.iter().any(|(k, _)| k == pinned) {
            return Err(ChainError::NotVouched);
        }
        Ok(KeyChain { keys })
    }

    /// The key in force now (the newest).
    pub fn current(&self) -> &VerifyingKey {
        &self.keys[self.keys.len() - 1].0
    }

    /// The keys in order, each with the time it came into force.
    pub fn keys(&self) -> &[(VerifyingKey, u64)] {
        &self.keys
    }

    /// Whether this chain is `trusted` followed by zero or more
    /// rotations: every key of it, with the same start, in the same
    /// place. A chain that differs anywhere in that part forks from it.
    pub fn extends(&self, trusted: &KeyChain) -> bool {
        self.keys.len() >= trusted.keys.len() && self.keys[..trusted.keys.len()] == trusted.keys[..]
    }
}

impl Verifier for KeyChain {
    fn verify_signed(&self, signed: &Signed) -> Result<Option<Period>, VerifyError> {
        for (i, (key, from)) in self.keys.iter().enumerate().rev() {
            if signed.verify(key).is_ok() {
                let until = self.keys.get(i + 1).map_or(u64::MAX, |(_, s)| *s);
                return Ok(Some((*from, until)));
            }
        }
        Err(VerifyError::BadSignature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::{HeadRecord, Rotation};
    use ed25519_dalek::SigningKey;

    fn key(n: u8) -> SigningKey {
        SigningKey::from_bytes(&[n; 32])
    }

    fn head(time_ms: u64) -> Vec<u8> {
        HeadRecord {
            group: "g".into(),
            seq: 1,
            head_hash: [0; 32],
            state_root: [0; 32],
            schema_version: 1,
            schema_hash: [0; 32],
            time_ms,
        }
        .encode()
    }

    #[test]
    fn a_pinned_key_follows_rotations_and_old_records_still_verify() {
        let (k1, k2, k3) = (key(1), key(2), key(3));
        let rotations = vec![
            Rotation::sign(1, &k1, &k2, 1_000),
            Rotation::sign(2, &k2, &k3, 2_000),
        ];
        for pinned in [&k1, &k2, &k3] {
            let chain = KeyChain::from_rotations(&pinned.verifying_key(), &rotations).unwrap();
            assert_eq!(chain.current(), &k3.verifying_key());
            // Each record checks against the key of its time.
            let old = Signed::sign(&k1, head(500));
            let mid = Signed::sign(&k2, head(1_500));
            let new = Signed::sign(&k3, head(2_500));
            assert!(
                old.head(&chain).is_ok() && mid.head(&chain).is_ok() && new.head(&chain).is_ok()
            );
            // A retired key cannot sign for a time after its period.
            assert!(Signed::sign(&k1, head(2_500)).head(&chain).is_err());
        }
    }

    #[test]
    fn forged_and_broken_chains_are_refused() {
        let (k1, k2, k3, evil) = (key(1), key(2), key(3), key(9));
        // A key no rotation vouches for.
        let chain = [Rotation::sign(1, &k2, &k3, 1_000)];
        assert_eq!(
            KeyChain::from_rotations(&k1.verifying_key(), &chain),
            Err(ChainError::NotVouched)
        );
        // A rotation the old key did not sign.
        let mut forged = Rotation::sign(1, &k1, &evil, 1_000);
        forged.old_signature = evil.sign_bytes(&forged.bytes);
        assert!(matches!(
            KeyChain::from_rotations(&k1.verifying_key(), &[forged]),
            Err(ChainError::Rotation(1, _))
        ));
        // Rotations that do not follow each other.
        let gap = [
            Rotation::sign(1, &k1, &k2, 1_000),
            Rotation::sign(2, &evil, &k3, 2_000),
        ];
        assert!(matches!(
            KeyChain::from_rotations(&k1.verifying_key(), &gap),
            Err(ChainError::Broken(_))
        ));
        let misnumbered = [Rotation::sign(2, &k1, &k2, 1_000)];
        assert!(KeyChain::from_rotations(&k1.verifying_key(), &misnumbered).is_err());
    }

    #[test]
    fn a_chain_extends_only_the_chain_it_starts_with() {
        let (k1, k2, k3) = (key(1), key(2), key(3));
        let pinned = k1.verifying_key();
        let r12 = Rotation::sign(1, &k1, &k2, 1_000);
        let one = KeyChain::from_rotations(&pinned, &[]).unwrap();
        let followed = KeyChain::from_rotations(&pinned, std::slice::from_ref(&r12)).unwrap();
        let longer =
            KeyChain::from_rotations(&pinned, &[r12, Rotation::sign(2, &k2, &k3, 2_000)]).unwrap();
        let fork =
            KeyChain::from_rotations(&pinned, &[Rotation::sign(1, &k1, &k3, 1_000)]).unwrap();
        assert!(followed.extends(&one) && longer.extends(&followed) && longer.extends(&longer));
        // K1 → K3 by anyone holding K1 is not K1 → K2, nor its extension.
        assert!(!fork.extends(&followed));
        assert!(!one.extends(&followed));
        // The same keys with another start time fork too.
        let later =
            KeyChain::from_rotations(&pinned, &[Rotation::sign(1, &k1, &k2, 5_000)]).unwrap();
        assert!(!later.extends(&followed));
    }

    trait SignBytes {
        fn sign_bytes(&self, b: &[u8]) -> [u8; 64];
    }
    impl SignBytes for SigningKey {
        fn sign_bytes(&self, b: &[u8]) -> [u8; 64] {
            use ed25519_dalek::Signer;
            self.sign(b).to_bytes()
        }
    }
}
