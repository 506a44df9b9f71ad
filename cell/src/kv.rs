//! The config store: a small linearizable key-value store for ops settings
//! (surge caps, matching windows, feature flags) with compare-and-set.
//!
//! Every write bumps a store-wide revision; a key's version is the revision
//! of its last write, so versions only grow, even across delete/recreate.

use serde::{Deserialize, Serialize};
use storage::{ReadTxn, Table, WriteTxn};

pub const MAX_KEY_LEN: usize = 256;
pub const MAX_VALUE_LEN: usize = 64 * 1024;
pub const MAX_CONTENT_TYPE_LEN: usize = 128;

const KV: Table<KvEntry> = Table::new("kv");
const KV_META: Table<u64> = Table::new("kv_meta");
const REVISION: &[u8] = b"revision";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvEntry {
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    pub content_type: String,
    pub version: u64,
}

/// A condition on the key's current version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Expect {
    Any,
    /// `If-Match: "<version>"`.
    Version(u64),
    /// `If-None-Match: *`: only create.
    Absent,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum KvCommand {
    Put {
        key: String,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        content_type: String,
        expect: Expect,
    },
    Delete {
        key: String,
        expect: Expect,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvResponse {
    Put {
        version: u64,
        created: bool,
    },
    Deleted {
        version: u64,
    },
    NotFound,
    /// The condition failed; `current` is the key's version, if it exists.
    PreconditionFailed {
        current: Option<u64>,
    },
}

/// Why a key is not acceptable.
pub fn validate_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(format!("key must be 1..={MAX_KEY_LEN} bytes"));
    }
    if let Some(c) = key
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '/')))
    {
        return Err(format!(
            "key contains {c:?}; allowed: A-Z a-z 0-9 . _ - : /"
        ));
    }
    if key.starts_with('/') || key.ends_with('/') || key.contains("//") {
        return Err("key must not start or end with '/' or contain '//'".into());
    }
    Ok(())
}

fn matches(expect: Expect, current: Option<u64>) -> bool {
    match expect {
        Expect::Any => true,
        Expect::Version(v) => current == Some(v),
        Expect::Absent => current.is_none(),
    }
}

/// Deterministic: reads only the command and the transaction.
pub fn apply(txn: &WriteTxn, cmd: KvCommand) -> storage::Result<(KvResponse, Option<String>)> {
    match cmd {
        KvCommand::Put {
            key,
            value,
            content_type,
            expect,
        } => {
            let current = txn.get(KV, key.as_bytes())?.map(|e| e.version);
            if !matches(expect, current) {
                return Ok((KvResponse::PreconditionFailed { current }, None));
            }
            let version = next_revision(txn)?;
            let entry = KvEntry {
                value,
                content_type,
                version,
            };
            txn.put(KV, key.as_bytes(), &entry)?;
            Ok((
                KvResponse::Put {
                    version,
                    created: current.is_none(),
                },
                Some(key),
            ))
        }
        KvCommand::Delete { key, expect } => {
            let current = txn.get(KV, key.as_bytes())?.map(|e| e.version);
            // With `If-Match`, a missing key fails the precondition (RFC
            // 9110): the client learns its version is gone, not a 404.
            if current.is_none() && expect == Expect::Any {
                return Ok((KvResponse::NotFound, None));
            }
            if !matches(expect, current) {
                return Ok((KvResponse::PreconditionFailed { current }, None));
            }
            let version = next_revision(txn)?;
            txn.delete(KV, key.as_bytes())?;
            Ok((KvResponse::Deleted { version }, Some(key)))
        }
    }
}

fn next_revision(txn: &WriteTxn) -> storage::Result<u64> {
    let rev = txn.get(KV_META, REVISION)?.unwrap_or(0) + 1;
    txn.put(KV_META, REVISION, &rev)?;
    Ok(rev)
}

pub fn get(read: &ReadTxn, key: &str) -> storage::Result<Option<KvEntry>> {
    read.get(KV, key.as_bytes())
}

/// A setting, inside another module's apply.
pub fn get_in(txn: &WriteTxn, key: &str) -> storage::Result<Option<KvEntry>> {
    txn.get(KV, key.as_bytes())
}

/// Keys (with versions) starting with `prefix`, after `after`, in order.
pub fn list(
    read: &ReadTxn,
    prefix: &str,
    after: Option<&str>,
    limit: usize,
) -> storage::Result<Vec<(String, u64)>> {
    let start = match after {
        Some(a) if a.as_bytes() >= prefix.as_bytes() => {
            let mut k = a.as_bytes().to_vec();
            k.push(0);
            k
        }
        _ => prefix.as_bytes().to_vec(),
    };
    // `after` past every key with the prefix: nothing to list (and a range
    // whose start lies past its end is not one to hand to redb).
    if storage::prefix_end(prefix.as_bytes()).is_some_and(|end| start >= end) {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for (k, e) in read.range(KV, storage::within(start, prefix.as_bytes()), limit)? {
        if !k.starts_with(prefix.as_bytes()) {
            break;
        }
        out.push((String::from_utf8_lossy(&k).into_owned(), e.version));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use storage::{Durability, Store};

    fn put(key: &str, v: &str, expect: Expect) -> KvCommand {
        KvCommand::Put {
            key: key.into(),
            value: v.as_bytes().to_vec(),
            content_type: "text/plain".into(),
            expect,
        }
    }

    #[test]
    fn listing_pages_within_the_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("s.redb"), 1 << 20).unwrap();
        let w = store.write().unwrap();
        for k in ["a/1", "a/2", "b/1"] {
            apply(&w, put(k, "v", Expect::Any)).unwrap();
        }
        w.commit(Durability::Immediate).unwrap();
        let read = store.read().unwrap();
        let keys = |prefix: &str, after: Option<&str>| -> Vec<String> {
            list(&read, prefix, after, 10)
                .unwrap()
                .into_iter()
                .map(|(k, _)| k)
                .collect()
        };
        assert_eq!(keys("a/", None), ["a/1", "a/2"]);
        assert_eq!(keys("a/", Some("a/1")), ["a/2"]);
        // A cursor before the prefix starts at it; one past it lists nothing.
        assert_eq!(keys("b/", Some("a/9")), ["b/1"]);
        assert!(keys("a/", Some("b")).is_empty());
        assert!(keys("a/", Some("a/2")).is_empty());
    }

    #[test]
    fn cas_semantics() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("s.redb"), 1 << 20).unwrap();
        let w = store.write().unwrap();
        let (r, _) = apply(&w, put("a", "1", Expect::Absent)).unwrap();
        assert_eq!(
            r,
            KvResponse::Put {
                version: 1,
                created: true
            }
        );
        let (r, _) = apply(&w, put("a", "2", Expect::Absent)).unwrap();
        assert_eq!(r, KvResponse::PreconditionFailed { current: Some(1) });
        let (r, _) = apply(&w, put("a", "2", Expect::Version(7))).unwrap();
        assert_eq!(r, KvResponse::PreconditionFailed { current: Some(1) });
        let (r, _) = apply(&w, put("a", "2", Expect::Version(1))).unwrap();
        assert_eq!(
            r,
            KvResponse::Put {
                version: 2,
                created: false
            }
        );
        let (r, _) = apply(
            &w,
            KvCommand::Delete {
                key: "b".into(),
                expect: Expect::Any,
            },
        )
        .unwrap();
        assert_eq!(r, KvResponse::NotFound);
        let (r, _) = apply(
            &w,
            KvCommand::Delete {
                key: "b".into(),
                expect: Expect::Version(1),
            },
        )
        .unwrap();
        assert_eq!(r, KvResponse::PreconditionFailed { current: None });
        let (r, _) = apply(
            &w,
            KvCommand::Delete {
                key: "a".into(),
                expect: Expect::Version(2),
            },
        )
        .unwrap();
        assert_eq!(r, KvResponse::Deleted { version: 3 });
        let (r, _) = apply(&w, put("a", "x", Expect::Any)).unwrap();
        assert_eq!(
            r,
            KvResponse::Put {
                version: 4,
                created: true
            }
        );
        w.commit(Durability::Immediate).unwrap();
        let read = store.read().unwrap();
        assert_eq!(get(&read, "a").unwrap().unwrap().value, b"x");
        assert_eq!(
            list(&read, "", None, 10).unwrap(),
            vec![("a".to_string(), 4)]
        );
    }

    #[test]
    fn key_rules() {
        assert!(validate_key("surge/max").is_ok());
        assert!(validate_key("feature.flag_1:on").is_ok());
        assert!(validate_key("").is_err());
        assert!(validate_key("a b").is_err());
        assert!(validate_key("/a").is_err());
        assert!(validate_key("a//b").is_err());
        assert!(validate_key("é").is_err());
        assert!(validate_key(&"k".repeat(257)).is_err());
    }
}
