//! Secrets the cell must be able to read back (a webhook's signing secret)
//! are sealed before they go into a command, so neither the Raft log, nor
//! the state, nor a snapshot or backup holds them in the clear.
//!
//! The seal is ChaCha20-Poly1305 under a key derived from one of the
//! cell's access-token signing keys (`KeySet::derive_secret_for`), named by
//! its kid in the sealed text; `aad` binds a sealed secret to its owner, so
//! it cannot be moved to another row. Every node holding the key file opens
//! it; a rotation leaves older seals openable while the file keeps the old
//! private key, and the leader re-seals them under the new one.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use edge::token::KeySet;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};

const PREFIX: &str = "sealed:v1:";

/// What a stored secret is, as this node's keys see it.
#[derive(Debug, PartialEq, Eq)]
pub enum Sealed {
    /// Sealed under the active key.
    Current(String),
    /// Sealed under an older key, or stored before sealing existed: good to
    /// use, and due to be re-sealed.
    Stale(String),
}

impl Sealed {
    pub fn secret(&self) -> &str {
        match self {
            Sealed::Current(s) | Sealed::Stale(s) => s,
        }
    }
}

fn cipher(keys: &KeySet, kid: &str, purpose: &str) -> Option<LessSafeKey> {
    let key = keys.derive_secret_for(kid, purpose)?;
    UnboundKey::new(&CHACHA20_POLY1305, &key)
        .ok()
        .map(LessSafeKey::new)
}

/// Seals `secret` under the active key, bound to `aad`.
pub fn seal(keys: &KeySet, purpose: &str, aad: &str, secret: &str) -> String {
    let kid = keys.active_kid();
    let Some(cipher) = cipher(keys, kid, purpose) else {
        unreachable!("the active key always derives");
    };
    let nonce: [u8; NONCE_LEN] = rand::random();
    let mut data = secret.as_bytes().to_vec();
    cipher
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad.as_bytes()),
            &mut data,
        )
        .unwrap_or_else(|_| unreachable!("sealing a short secret cannot fail"));
    let mut sealed = nonce.to_vec();
    sealed.extend_from_slice(&data);
    format!("{PREFIX}{kid}:{}", URL_SAFE_NO_PAD.encode(sealed))
}

/// Whether `stored` is sealed under the active key (a check of its kid,
/// without opening it).
pub fn is_current(keys: &KeySet, stored: &str) -> bool {
    stored
        .strip_prefix(PREFIX)
        .and_then(|rest| rest.split_once(':'))
        .is_some_and(|(kid, _)| kid == keys.active_kid())
}

/// Opens what [`seal`] made (or passes through a secret stored before
/// sealing existed). The error says why it cannot be opened: a key this
/// node does not have, or text that is not a seal of this owner's.
pub fn open(keys: &KeySet, purpose: &str, aad: &str, stored: &str) -> Result<Sealed, String> {
    let Some(rest) = stored.strip_prefix(PREFIX) else {
        return Ok(Sealed::Stale(stored.to_string()));
    };
    let (kid, body) = rest
        .split_once(':')
        .ok_or_else(|| "a sealed secret without its key id".to_string())?;
    let cipher = cipher(keys, kid, purpose).ok_or_else(|| {
        format!("sealed with access-token key {kid}, which this cell's key file no longer holds")
    })?;
    let bytes = URL_SAFE_NO_PAD
        .decode(body)
        .map_err(|_| "a sealed secret that is not base64".to_string())?;
    if bytes.len() < NONCE_LEN {
        return Err("a sealed secret too short to hold its nonce".into());
    }
    let (nonce, data) = bytes.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce)
        .map_err(|_| "a sealed secret with a bad nonce".to_string())?;
    let mut data = data.to_vec();
    let plain = cipher
        .open_in_place(nonce, Aad::from(aad.as_bytes()), &mut data)
        .map_err(|_| {
            "a sealed secret that does not open (altered, or another owner's)".to_string()
        })?;
    let secret = String::from_utf8(plain.to_vec())
        .map_err(|_| "a sealed secret that is not UTF-8".to_string())?;
    Ok(if kid == keys.active_kid() {
        Sealed::Current(secret)
    } else {
        Sealed::Stale(secret)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_secret_opens_for_its_owner_only_and_hides_the_secret() {
        let keys = KeySet::generate();
        let sealed = seal(&keys, "webhook", "whk_1", "a shared secret!");
        assert!(!sealed.contains("a shared secret"), "{sealed}");
        assert_ne!(sealed, seal(&keys, "webhook", "whk_1", "a shared secret!"));
        assert_eq!(
            open(&keys, "webhook", "whk_1", &sealed),
            Ok(Sealed::Current("a shared secret!".into()))
        );
        assert!(is_current(&keys, &sealed));
        assert!(!is_current(&keys, "a shared secret!"));
        assert!(open(&keys, "webhook", "whk_2", &sealed).is_err());
        assert!(open(&keys, "other", "whk_1", &sealed).is_err());
        assert!(open(&KeySet::generate(), "webhook", "whk_1", &sealed).is_err());
        let mut tampered = sealed.clone();
        tampered.pop();
        tampered.push(if sealed.ends_with('A') { 'B' } else { 'A' });
        assert!(open(&keys, "webhook", "whk_1", &tampered).is_err());
        for junk in [
            "sealed:v1:",
            "sealed:v1:kid",
            "sealed:v1:kid:!!",
            "sealed:v1:kid:AA",
        ] {
            assert!(open(&keys, "webhook", "whk_1", junk).is_err(), "{junk}");
        }
    }

    #[test]
    fn secrets_from_before_sealing_and_older_keys_are_stale() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.pem");
        let (before, _) = KeySet::load_or_create(&path).unwrap();
        let sealed = seal(&before, "webhook", "whk_1", "old secret");
        KeySet::rotate_file(&path).unwrap();
        let (after, _) = KeySet::load_or_create(&path).unwrap();
        assert_eq!(
            open(&after, "webhook", "whk_1", &sealed),
            Ok(Sealed::Stale("old secret".into()))
        );
        assert!(!is_current(&after, &sealed));
        assert_eq!(
            open(&after, "webhook", "whk_1", "plain from before"),
            Ok(Sealed::Stale("plain from before".into()))
        );
    }
}
