//! Quotes as sealed tokens.
//!
//! A quote is priced by whichever node is asked and handed to the customer
//! whole: its fields, bincode-encoded and sealed with HMAC-SHA256 under a
//! secret every node of the cell derives from its access-token signing key.
//! Checkout opens the token instead of reading a replicated row, so pricing
//! costs no Raft write, works on every node (also while a leader is being
//! elected), and the order's apply has one row less to read and rewrite.
//!
//! A token names its quote first (`<cell>.quo_<ULID>.<sealed>`), so logs
//! and support tools can tell quotes apart without opening them. Until it
//! expires a quote may back more than one checkout (each with its own
//! `Idempotency-Key`), all at the price it locked. Quotes are sealed under
//! the key that signs and open under any private key the key file holds,
//! so one made just before a rotation (or on a node whose clock is past a
//! staged key's time) stays good until it expires; once its key is gone
//! from the file, checkout answers `409 quote_expired`.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use edge::token::KeySet;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::orders::Quote;

/// Names the derived secret, and changes with the token layout.
const PURPOSE: &str = "quote-token-v1";
/// Bytes of the HMAC kept in the token (128 bits).
const TAG_LEN: usize = 16;
/// Longer strings are refused before any decoding (a sealed quote is
/// about 300 characters).
const MAX_TOKEN_LEN: usize = 1024;

fn mac(secret: &[u8; 32]) -> Hmac<Sha256> {
    // An HMAC takes a key of any length; 32 bytes cannot be refused.
    <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC accepts 32-byte keys")
}

/// The token a customer checks out with.
pub fn seal(keys: &KeySet, quote: &Quote) -> storage::Result<String> {
    let mut sealed = storage::encode(quote)?;
    let mut m = mac(&keys.derive_secret(PURPOSE));
    m.update(&sealed);
    sealed.extend_from_slice(&m.finalize().into_bytes()[..TAG_LEN]);
    Ok(format!("{}.{}", quote.id, URL_SAFE_NO_PAD.encode(sealed)))
}

/// The quote in `token` if this cell sealed it and nobody changed it since;
/// `None` for anything else (expiry and ownership are the caller's to check).
pub fn open(keys: &KeySet, token: &str) -> Option<Quote> {
    if token.len() > MAX_TOKEN_LEN {
        return None;
    }
    let (id, sealed) = token.rsplit_once('.')?;
    let sealed = URL_SAFE_NO_PAD.decode(sealed).ok()?;
    let body_len = sealed.len().checked_sub(TAG_LEN)?;
    let (body, tag) = sealed.split_at(body_len);
    // Sealed under any key the file still holds (a quote made just before
    // a rotation stays good until it expires). Constant-time per key: a
    // forger learns nothing from how fast it is refused.
    keys.derive_secrets(PURPOSE).iter().find(|secret| {
        let mut m = mac(secret);
        m.update(body);
        m.verify_truncated_left(tag).is_ok()
    })?;
    let quote: Quote = storage::decode(body).ok()?;
    (quote.id == id).then_some(quote)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{Location, Money};
    use crate::orders::{Mode, OrderKind};

    fn quote() -> Quote {
        let here = Location {
            lat: 40.72,
            lng: -74.0,
        };
        Quote {
            id: "nyc.quo_01J0000000000000000000000".into(),
            customer_id: "nyc.usr_a".into(),
            vendor_id: "nyc.ven_b".into(),
            kind: OrderKind::Delivery,
            mode: Mode::OnDemand,
            pickup: here,
            dropoff: here,
            window_start: None,
            fee: Money {
                amount: 399,
                currency: "USD".into(),
            },
            surge_milli: 1000,
            eta_minutes: 25,
            expires_at: 1_700_000_300_000,
            created_at: 1_700_000_000_000,
        }
    }

    #[test]
    fn a_sealed_quote_opens_to_itself() {
        let keys = KeySet::generate();
        let token = seal(&keys, &quote()).unwrap();
        assert!(token.starts_with("nyc.quo_01J0000000000000000000000."));
        assert!(token.len() < MAX_TOKEN_LEN);
        assert_eq!(open(&keys, &token), Some(quote()));
    }

    #[test]
    fn a_quote_sealed_before_a_rotation_opens_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.pem");
        let (before, _) = KeySet::load_or_create(&path).unwrap();
        let token = seal(&before, &quote()).unwrap();
        KeySet::rotate_file(&path).unwrap();
        let (after, _) = KeySet::load_or_create(&path).unwrap();
        assert_ne!(after.active_kid(), before.active_kid());
        assert_eq!(open(&after, &token), Some(quote()));
        // A new quote is sealed under the new key: a node still holding
        // only the old file cannot open it.
        let fresh = seal(&after, &quote()).unwrap();
        assert_eq!(open(&before, &fresh), None);
    }

    #[test]
    fn anything_but_an_untouched_token_of_this_cell_is_refused() {
        let keys = KeySet::generate();
        let token = seal(&keys, &quote()).unwrap();
        assert_eq!(open(&KeySet::generate(), &token), None, "another key");
        let (id, sealed) = token.rsplit_once('.').unwrap();
        // Every single-character change of the sealed part.
        for i in 0..sealed.len() {
            let mut b = sealed.as_bytes().to_vec();
            b[i] = if b[i] == b'A' { b'B' } else { b'A' };
            let t = format!("{id}.{}", String::from_utf8(b).unwrap());
            assert_eq!(open(&keys, &t), None, "changed at {i}");
        }
        // A valid seal under another quote's name.
        assert_eq!(open(&keys, &format!("nyc.quo_other.{sealed}")), None);
        // A cheaper quote sealed by someone without the key.
        let mut cheap = quote();
        cheap.fee.amount = 1;
        let body = URL_SAFE_NO_PAD.encode(storage::encode(&cheap).unwrap());
        assert_eq!(open(&keys, &format!("{id}.{body}")), None);
        for junk in [
            "",
            ".",
            "x",
            "nyc.quo_1",
            "a.b.c",
            "a.!!!!",
            &"a".repeat(5000),
        ] {
            assert_eq!(open(&keys, junk), None, "{junk:.20}");
        }
    }
}
