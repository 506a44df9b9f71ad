//! Values on disk are bincode 2 (serde) prefixed with one schema-version
//! byte, so a future layout change can be detected instead of misread.

use serde::{de::DeserializeOwned, Serialize};

use crate::{Result, StorageError};

/// The layout version written in front of every value.
pub const SCHEMA_VERSION: u8 = 1;

/// Upper bound on what a single decoded value may allocate: protects a node
/// from a corrupt length prefix on disk or on the wire.
const DECODE_LIMIT: usize = 256 * 1024 * 1024;

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Encode a value with its schema-version byte.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(64);
    out.push(SCHEMA_VERSION);
    bincode::serde::encode_into_std_write(value, &mut out, config())?;
    Ok(out)
}

/// Decode a value written by [`encode`], rejecting other schema versions and
/// trailing garbage.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    let (&version, body) = bytes.split_first().ok_or(StorageError::EmptyValue)?;
    if version != SCHEMA_VERSION {
        return Err(StorageError::SchemaVersion {
            found: version,
            expected: SCHEMA_VERSION,
        });
    }
    let cfg = config().with_limit::<DECODE_LIMIT>();
    let (value, used) = bincode::serde::decode_from_slice(body, cfg)?;
    if used != body.len() {
        return Err(StorageError::Decode(
            bincode::error::DecodeError::OtherString(format!(
                "{} trailing bytes after value",
                body.len() - used
            )),
        ));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct Thing {
        name: String,
        n: u64,
    }

    #[test]
    fn roundtrip_and_version_checks() {
        let t = Thing {
            name: "a".into(),
            n: 7,
        };
        let bytes = encode(&t).unwrap();
        assert_eq!(bytes[0], SCHEMA_VERSION);
        assert_eq!(decode::<Thing>(&bytes).unwrap(), t);

        let mut other = bytes.clone();
        other[0] = 99;
        assert!(matches!(
            decode::<Thing>(&other),
            Err(StorageError::SchemaVersion { found: 99, .. })
        ));
        assert!(matches!(
            decode::<Thing>(&[]),
            Err(StorageError::EmptyValue)
        ));
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(decode::<Thing>(&trailing).is_err());
        assert!(decode::<Thing>(&bytes[..bytes.len() - 1]).is_err());
    }

    #[test]
    fn garbage_never_panics() {
        for seed in 0u32..2000 {
            let bytes: Vec<u8> = (0..(seed % 40))
                .map(|i| (seed.wrapping_mul(2654435761).rotate_left(i)) as u8)
                .collect();
            let mut v = vec![SCHEMA_VERSION];
            v.extend(bytes);
            let _ = decode::<Thing>(&v);
            let _ = decode::<Vec<String>>(&v);
        }
    }
}
