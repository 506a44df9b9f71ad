//! Accounts and refresh-token families, as replicated state.
//!
//! Everything non-deterministic (ids, password hashes, token hashes,
//! timestamps) is decided at the edge and carried in the command; apply
//! only checks and records.

use serde::{Deserialize, Serialize};
use storage::{ReadTxn, Table, WriteTxn};

use edge::token::Role;

const ACCOUNTS: Table<Account> = Table::new("accounts");

/// The cell whose accounts the state holds (their ids begin with its
/// name), if it holds any.
pub fn cell_of_accounts(txn: &WriteTxn) -> storage::Result<Option<String>> {
    let any = txn.last_key_in(ACCOUNTS, Vec::new()..)?;
    Ok(any.and_then(|k| {
        let k = String::from_utf8(k).ok()?;
        k.split_once('.').map(|(cell, _)| cell.to_string())
    }))
}
const ACCOUNT_BY_EMAIL: Table<String> = Table::new("account_by_email");
const REFRESH: Table<RefreshRecord> = Table::new("refresh_tokens");
const FAMILIES: Table<Family> = Table::new("refresh_families");

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub id: String,
    /// Lower-cased.
    pub email: String,
    pub name: String,
    pub role: Role,
    pub cell: String,
    /// argon2id PHC string.
    pub password_hash: String,
    /// Unix milliseconds.
    pub created_at: i64,
}

/// A refresh token as stored: only its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefreshRecord {
    pub family: String,
    pub account_id: String,
    /// Unix milliseconds.
    pub expires_at: i64,
    /// Set once the token was exchanged for a new one.
    pub rotated: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Family {
    pub account_id: String,
    pub revoked: bool,
}

/// A refresh token to record (hash decided at the edge).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewRefresh {
    pub token_hash: String,
    pub family: String,
    pub expires_at: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum IdentityCommand {
    Signup {
        account: Account,
        refresh: NewRefresh,
    },
    /// Start a new family (login).
    IssueRefresh {
        account_id: String,
        refresh: NewRefresh,
    },
    /// Exchange `old_hash` for `new` in the same family.
    RotateRefresh {
        old_hash: String,
        new_hash: String,
        expires_at: i64,
        now: i64,
    },
    RevokeFamily {
        family: String,
        account_id: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum IdentityResponse {
    SignedUp,
    EmailTaken,
    Issued,
    Rotated {
        account_id: String,
        family: String,
    },
    /// A token that was already exchanged came back: the family is revoked.
    ReuseDetected,
    RefreshInvalid,
    Revoked,
    NoSuchAccount,
}

/// Deterministic: reads only the command and the transaction.
pub fn apply(txn: &WriteTxn, cmd: IdentityCommand) -> storage::Result<IdentityResponse> {
    use IdentityResponse as R;
    match cmd {
        IdentityCommand::Signup { account, refresh } => {
            if txn
                .get(ACCOUNT_BY_EMAIL, account.email.as_bytes())?
                .is_some()
                || txn.get(ACCOUNTS, account.id.as_bytes())?.is_some()
            {
                return Ok(R::EmailTaken);
            }
            txn.put(ACCOUNT_BY_EMAIL, account.email.as_bytes(), &account.id)?;
            record_refresh(txn, &account.id, &refresh)?;
            txn.put(ACCOUNTS, account.id.as_bytes(), &account)?;
            Ok(R::SignedUp)
        }
        IdentityCommand::IssueRefresh {
            account_id,
            refresh,
        } => {
            if txn.get(ACCOUNTS, account_id.as_bytes())?.is_none() {
                return Ok(R::NoSuchAccount);
            }
            record_refresh(txn, &account_id, &refresh)?;
            Ok(R::Issued)
        }
        IdentityCommand::RotateRefresh {
            old_hash,
            new_hash,
            expires_at,
            now,
        } => {
            let Some(mut old) = txn.get(REFRESH, old_hash.as_bytes())? else {
                return Ok(R::RefreshInvalid);
            };
            let Some(mut family) = txn.get(FAMILIES, old.family.as_bytes())? else {
                return Ok(R::RefreshInvalid);
            };
            if family.revoked {
                return Ok(R::RefreshInvalid);
            }
            if old.rotated {
                family.revoked = true;
                txn.put(FAMILIES, old.family.as_bytes(), &family)?;
                return Ok(R::ReuseDetected);
            }
            if old.expires_at <= now {
                return Ok(R::RefreshInvalid);
            }
            old.rotated = true;
            txn.put(REFRESH, old_hash.as_bytes(), &old)?;
            txn.put(
                REFRESH,
                new_hash.as_bytes(),
                &RefreshRecord {
                    family: old.family.clone(),
                    account_id: old.account_id.clone(),
                    expires_at,
                    rotated: false,
                },
            )?;
            Ok(R::Rotated {
                account_id: old.account_id,
                family: old.family,
            })
        }
        IdentityCommand::RevokeFamily { family, account_id } => {
            match txn.get(FAMILIES, family.as_bytes())? {
                Some(mut f) if f.account_id == account_id => {
                    f.revoked = true;
                    txn.put(FAMILIES, family.as_bytes(), &f)?;
                }
                _ => {}
            }
            Ok(R::Revoked)
        }
    }
}

fn record_refresh(txn: &WriteTxn, account_id: &str, r: &NewRefresh) -> storage::Result<()> {
    txn.put(
        FAMILIES,
        r.family.as_bytes(),
        &Family {
            account_id: account_id.to_string(),
            revoked: false,
        },
    )?;
    txn.put(
        REFRESH,
        r.token_hash.as_bytes(),
        &RefreshRecord {
            family: r.family.clone(),
            account_id: account_id.to_string(),
            expires_at: r.expires_at,
            rotated: false,
        },
    )
}

pub fn account(read: &ReadTxn, id: &str) -> storage::Result<Option<Account>> {
    read.get(ACCOUNTS, id.as_bytes())
}

pub fn account_by_email(read: &ReadTxn, email: &str) -> storage::Result<Option<Account>> {
    match read.get(ACCOUNT_BY_EMAIL, email.as_bytes())? {
        Some(id) => read.get(ACCOUNTS, id.as_bytes()),
        None => Ok(None),
    }
}

/// Which family a refresh token belongs to (for logout).
pub fn refresh_family(read: &ReadTxn, token_hash: &str) -> storage::Result<Option<RefreshRecord>> {
    read.get(REFRESH, token_hash.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use storage::{Durability, Store};

    fn acct(id: &str, email: &str) -> Account {
        Account {
            id: id.into(),
            email: email.into(),
            name: "N".into(),
            role: Role::Customer,
            cell: "local".into(),
            password_hash: "x".into(),
            created_at: 1,
        }
    }

    fn refresh(hash: &str, family: &str) -> NewRefresh {
        NewRefresh {
            token_hash: hash.into(),
            family: family.into(),
            expires_at: 1000,
        }
    }

    #[test]
    fn signup_rotation_and_reuse_detection() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("s.redb"), 1 << 20).unwrap();
        let w = store.write().unwrap();
        let signup = |id: &str, email: &str, h: &str| IdentityCommand::Signup {
            account: acct(id, email),
            refresh: refresh(h, &format!("fam-{id}")),
        };
        assert_eq!(
            apply(&w, signup("a1", "a@x.io", "h1")).unwrap(),
            IdentityResponse::SignedUp
        );
        assert_eq!(
            apply(&w, signup("a2", "a@x.io", "h9")).unwrap(),
            IdentityResponse::EmailTaken
        );
        let rotate = |old: &str, new: &str, now| IdentityCommand::RotateRefresh {
            old_hash: old.into(),
            new_hash: new.into(),
            expires_at: 2000,
            now,
        };
        assert!(matches!(
            apply(&w, rotate("h1", "h2", 10)).unwrap(),
            IdentityResponse::Rotated { .. }
        ));
        // h1 again: reuse, the whole family dies (h2 included).
        assert_eq!(
            apply(&w, rotate("h1", "h3", 11)).unwrap(),
            IdentityResponse::ReuseDetected
        );
        assert_eq!(
            apply(&w, rotate("h2", "h4", 12)).unwrap(),
            IdentityResponse::RefreshInvalid
        );
        assert_eq!(
            apply(&w, rotate("nope", "h5", 12)).unwrap(),
            IdentityResponse::RefreshInvalid
        );
        // Expired tokens do not rotate.
        let login = IdentityCommand::IssueRefresh {
            account_id: "a1".into(),
            refresh: refresh("k1", "fam-2"),
        };
        assert_eq!(apply(&w, login).unwrap(), IdentityResponse::Issued);
        assert_eq!(
            apply(&w, rotate("k1", "k2", 5000)).unwrap(),
            IdentityResponse::RefreshInvalid
        );
        w.commit(Durability::Immediate).unwrap();
        let r = store.read().unwrap();
        assert_eq!(account_by_email(&r, "a@x.io").unwrap().unwrap().id, "a1");
    }
}
