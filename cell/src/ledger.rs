//! Double-entry ledger in integer minor units. Every money movement is one
//! transaction whose postings sum to zero; balances are kept per account
//! in the same redb transaction as the postings.
//!
//! Sign convention: a positive amount is money the platform holds for or
//! owes to the account (credit to its balance); the clearing account is
//! where outside money enters (it goes negative as customers pay).

use serde::{Deserialize, Serialize};
use storage::{ReadTxn, Table, WriteTxn};

const TRANSACTIONS: Table<LedgerTx> = Table::new("ledger_tx");
const BALANCES: Table<i64> = Table::new("ledger_balances");

pub const CLEARING: &str = "clearing:payments";
pub const PLATFORM_FEES: &str = "platform:fees";
pub const DELIVERY_FEES: &str = "platform:delivery";
pub const TIPS_PAYABLE: &str = "payable:tips";

pub fn vendor_account(vendor_id: &str) -> String {
    format!("vendor:{vendor_id}")
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Posting {
    pub account: String,
    pub amount: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerTx {
    pub id: String,
    pub order_id: String,
    pub kind: String,
    pub currency: String,
    pub postings: Vec<Posting>,
    pub at: i64,
}

impl LedgerTx {
    /// Whether its postings sum to zero (and there are any).
    pub fn balances(&self) -> bool {
        let sum: i128 = self.postings.iter().map(|p| p.amount as i128).sum();
        sum == 0 && !self.postings.is_empty()
    }
}

/// Record `tx`; refuses (returns false) anything that does not balance.
pub fn post(txn: &WriteTxn, tx: &LedgerTx) -> storage::Result<bool> {
    if !tx.balances() {
        return Ok(false);
    }
    for p in &tx.postings {
        let b = txn.get(BALANCES, p.account.as_bytes())?.unwrap_or(0);
        txn.put(
            BALANCES,
            p.account.as_bytes(),
            &(b.saturating_add(p.amount)),
        )?;
    }
    txn.put(TRANSACTIONS, tx.id.as_bytes(), tx)?;
    Ok(true)
}

/// The exact reversal of `tx` (a refund).
pub fn reversal(tx: &LedgerTx, id: String, kind: &str, at: i64) -> LedgerTx {
    LedgerTx {
        id,
        order_id: tx.order_id.clone(),
        kind: kind.to_string(),
        currency: tx.currency.clone(),
        postings: tx
            .postings
            .iter()
            .map(|p| Posting {
                account: p.account.clone(),
                amount: -p.amount,
            })
            .collect(),
        at,
    }
}

pub fn transaction(read: &WriteTxn, id: &str) -> storage::Result<Option<LedgerTx>> {
    read.get(TRANSACTIONS, id.as_bytes())
}

pub fn balance(read: &ReadTxn, account: &str) -> storage::Result<i64> {
    Ok(read.get(BALANCES, account.as_bytes())?.unwrap_or(0))
}

/// The result of checking the whole ledger.
#[derive(Debug, Clone, Serialize)]
pub struct LedgerCheck {
    pub transactions: u64,
    pub postings: u64,
    /// Sum of every posting ever made: must be 0.
    pub postings_sum: i128,
    /// Transactions whose own postings do not sum to 0.
    pub unbalanced: Vec<String>,
    /// Accounts whose stored balance differs from the sum of their postings.
    pub balance_mismatches: Vec<String>,
    /// Orders whose payments do not match their outcome (see
    /// `orders::reconcile`), filled in by the caller.
    pub order_mismatches: Vec<String>,
    pub ok: bool,
    /// What each order's transactions moved through the clearing account.
    #[serde(skip)]
    pub clearing_by_order: std::collections::HashMap<String, i128>,
}

pub fn check(read: &ReadTxn) -> storage::Result<LedgerCheck> {
    use std::collections::BTreeMap;
    let mut sums: BTreeMap<String, i128> = BTreeMap::new();
    let mut c = LedgerCheck {
        transactions: 0,
        postings: 0,
        postings_sum: 0,
        unbalanced: vec![],
        balance_mismatches: vec![],
        order_mismatches: vec![],
        ok: false,
        clearing_by_order: Default::default(),
    };
    let mut cursor: Option<Vec<u8>> = None;
    loop {
        let start = match &cursor {
            Some(k) => {
                let mut k = k.clone();
                k.push(0);
                k
            }
            None => Vec::new(),
        };
        let page = read.range(TRANSACTIONS, start.., 1000)?;
        let Some((last, _)) = page.last() else { break };
        cursor = Some(last.clone());
        for (_, tx) in page {
            c.transactions += 1;
            let mut s: i128 = 0;
            for p in &tx.postings {
                c.postings += 1;
                s += p.amount as i128;
                *sums.entry(p.account.clone()).or_default() += p.amount as i128;
                if p.account == CLEARING {
                    *c.clearing_by_order.entry(tx.order_id.clone()).or_default() +=
                        p.amount as i128;
                }
            }
            c.postings_sum += s;
            if s != 0 {
                c.unbalanced.push(tx.id.clone());
            }
        }
    }
    for (account, sum) in &sums {
        if balance(read, account)? as i128 != *sum {
            c.balance_mismatches.push(account.clone());
        }
    }
    c.ok = c.postings_sum == 0 && c.unbalanced.is_empty() && c.balance_mismatches.is_empty();
    Ok(c)
}
