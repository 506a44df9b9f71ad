//! Vendor webhooks: a vendor's events POSTed to its URL, signed with
//! HMAC-SHA256, at least once.
//!
//! The outbox is the vendor owner's event feed itself (written in the same
//! transaction as every change); a webhook only keeps a replicated cursor.
//! The leader sends what lies past the cursor and advances it through Raft
//! after a 2xx, so a leader change re-sends at most what was in flight —
//! never skips. The feed keeps what a webhook has not sent past its usual
//! window (`events::hold`, up to `events::MAX_HELD` events), so a long
//! outage is caught up too. Each webhook has its own task and backoff: a
//! dead endpoint delays nobody else.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use raft::RaftNode;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use storage::{ReadTxn, Table, WriteTxn};

use edge::token::KeySet;

use crate::{
    app::{CellApp, Command},
    events,
    metrics::{Metrics, OutcomeLabels},
    sealed::{self, Sealed},
};

/// What webhook secrets are sealed for (`sealed`).
const SEAL_PURPOSE: &str = "webhook secret";

/// `<vendor id>/<webhook id>` → webhook (a vendor's are listed together).
const WEBHOOKS: Table<Webhook> = Table::new("webhooks");
/// Webhook id → its vendor id: deliveries, failures and deletes name a
/// webhook by id alone, and every apply of theirs must not scan them all.
const BY_ID: Table<String> = Table::new("webhooks_by_id");

/// Events per POST at most (the body is a JSON array).
const BATCH: usize = 50;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Most webhooks per vendor.
pub const MAX_PER_VENDOR: usize = 5;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Webhook {
    pub id: String,
    pub vendor_id: String,
    /// Whose feed is the outbox (the vendor's owner account).
    pub owner_id: String,
    pub url: String,
    /// Sealed (`sealed::seal`, bound to the webhook's id); plain text in
    /// rows from before sealing, which the leader re-seals.
    pub secret: String,
    /// Last event sequence delivered (acknowledged with a 2xx).
    pub cursor: u64,
    pub delivered: u64,
    pub last_error: Option<String>,
    pub failures: u32,
    pub updated_at: i64,
    pub created_at: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum WebhookCommand {
    Register {
        webhook: Webhook,
    },
    /// The leader delivered everything up to `cursor`.
    Delivered {
        id: String,
        cursor: u64,
        count: u64,
        now: i64,
    },
    /// The leader's latest attempt failed (status for the vendor).
    Failed {
        id: String,
        error: String,
        failures: u32,
        now: i64,
    },
    Delete {
        id: String,
    },
    /// The leader re-sealed the secret under the active key: `to` replaces
    /// `from`, if the row still holds `from`.
    Reseal {
        id: String,
        from: String,
        to: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum WebhookResponse {
    Webhook(Webhook),
    Done,
    NotFound,
    TooMany,
}

fn key(vendor_id: &str, id: &str) -> Vec<u8> {
    format!("{vendor_id}/{id}").into_bytes()
}

/// Deterministic: reads only the command and the transaction.
pub fn apply(txn: &WriteTxn, cmd: WebhookCommand) -> storage::Result<WebhookResponse> {
    use WebhookResponse as R;
    match cmd {
        WebhookCommand::Register { mut webhook } => {
            let prefix = format!("{}/", webhook.vendor_id);
            let existing = txn
                .range(
                    WEBHOOKS,
                    storage::within(prefix.as_bytes().to_vec(), prefix.as_bytes()),
                    MAX_PER_VENDOR + 1,
                )?
                .into_iter()
                .take_while(|(k, _)| k.starts_with(prefix.as_bytes()))
                .count();
            if existing >= MAX_PER_VENDOR {
                return Ok(R::TooMany);
            }
            // Start after what the feed already holds: a new webhook gets
            // the events from now on.
            webhook.cursor = events::last_seq_in(txn, &webhook.owner_id)?;
            events::hold(txn, &webhook.owner_id, &webhook.id, Some(webhook.cursor))?;
            txn.put(BY_ID, webhook.id.as_bytes(), &webhook.vendor_id)?;
            txn.put(WEBHOOKS, &key(&webhook.vendor_id, &webhook.id), &webhook)?;
            Ok(R::Webhook(webhook))
        }
        WebhookCommand::Delivered {
            id,
            cursor,
            count,
            now,
        } => {
            let Some((k, mut w)) = find(txn, &id)? else {
                return Ok(R::NotFound);
            };
            // Never move backwards (a deposed leader's late report).
            if cursor > w.cursor {
                w.cursor = cursor;
                w.delivered += count;
                w.failures = 0;
                w.last_error = None;
                w.updated_at = now;
                events::hold(txn, &w.owner_id, &w.id, Some(cursor))?;
                txn.put(WEBHOOKS, &k, &w)?;
            }
            Ok(R::Done)
        }
        WebhookCommand::Failed {
            id,
            error,
            failures,
            now,
        } => {
            let Some((k, mut w)) = find(txn, &id)? else {
                return Ok(R::NotFound);
            };
            w.last_error = Some(error.chars().take(200).collect());
            w.failures = failures;
            w.updated_at = now;
            txn.put(WEBHOOKS, &k, &w)?;
            Ok(R::Done)
        }
        WebhookCommand::Delete { id } => match find(txn, &id)? {
            Some((k, w)) => {
                events::hold(txn, &w.owner_id, &w.id, None)?;
                txn.delete(BY_ID, w.id.as_bytes())?;
                txn.delete(WEBHOOKS, &k)?;
                Ok(R::Done)
            }
            None => Ok(R::NotFound),
        },
        WebhookCommand::Reseal { id, from, to } => {
            let Some((k, mut w)) = find(txn, &id)? else {
                return Ok(R::NotFound);
            };
            if w.secret == from {
                w.secret = to;
                txn.put(WEBHOOKS, &k, &w)?;
            }
            Ok(R::Done)
        }
    }
}

/// A webhook's secret as it goes into the log: sealed, bound to `id`.
pub fn seal_secret(keys: &KeySet, id: &str, secret: &str) -> String {
    sealed::seal(keys, SEAL_PURPOSE, id, secret)
}

fn open_secret(keys: &KeySet, w: &Webhook) -> Result<Sealed, String> {
    sealed::open(keys, SEAL_PURPOSE, &w.id, &w.secret)
}

fn find(txn: &WriteTxn, id: &str) -> storage::Result<Option<(Vec<u8>, Webhook)>> {
    if let Some(vendor) = txn.get(BY_ID, id.as_bytes())? {
        let k = key(&vendor, id);
        return Ok(txn.get(WEBHOOKS, &k)?.map(|w| (k, w)));
    }
    // From command version 4 every webhook is indexed (`index_all` ran
    // as the version rose): a miss is a deleted webhook — whose sender's
    // late report otherwise scanned every webhook on every node.
    if crate::command_version::recorded_in(txn)? >= 4 {
        return Ok(None);
    }
    // Registered before the index existed: scan (and index it, so this
    // happens once per such webhook).
    let found = txn
        .range(WEBHOOKS, Vec::new().., 100_000)?
        .into_iter()
        .find(|(_, w)| w.id == id);
    if let Some((_, w)) = &found {
        txn.put(BY_ID, w.id.as_bytes(), &w.vendor_id)?;
    }
    Ok(found)
}

/// A webhook by id, as this node's state has it.
fn get(read: &ReadTxn, id: &str) -> storage::Result<Option<Webhook>> {
    match read.get(BY_ID, id.as_bytes())? {
        Some(vendor) => read.get(WEBHOOKS, &key(&vendor, id)),
        None if crate::command_version::recorded(read)? >= 4 => Ok(None),
        None => Ok(all(read)?.into_iter().find(|w| w.id == id)),
    }
}

/// Indexes every webhook by id (as the command version rises to 4, in
/// that command's apply).
pub fn index_all(txn: &WriteTxn) -> storage::Result<()> {
    for (_, w) in txn.range(WEBHOOKS, Vec::new().., usize::MAX)? {
        txn.put(BY_ID, w.id.as_bytes(), &w.vendor_id)?;
    }
    Ok(())
}

pub fn for_vendor(read: &ReadTxn, vendor_id: &str) -> storage::Result<Vec<Webhook>> {
    let prefix = format!("{vendor_id}/");
    Ok(read
        .range(
            WEBHOOKS,
            storage::within(prefix.as_bytes().to_vec(), prefix.as_bytes()),
            MAX_PER_VENDOR,
        )?
        .into_iter()
        .take_while(|(k, _)| k.starts_with(prefix.as_bytes()))
        .map(|(_, w)| w)
        .collect())
}

fn all(read: &ReadTxn) -> storage::Result<Vec<Webhook>> {
    Ok(read
        .range(WEBHOOKS, Vec::new().., 100_000)?
        .into_iter()
        .map(|(_, w)| w)
        .collect())
}

/// `sha256=<hex>` of the parts, in order, under the webhook's secret.
pub fn signature(secret: &str, parts: &[&[u8]]) -> String {
    // HMAC accepts keys of any length.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    for part in parts {
        mac.update(part);
    }
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The leader's sender: one task per webhook while this node leads.
/// Unless `private_targets`, only public addresses are reached
/// (`outbound`).
pub fn start(
    node: Arc<RaftNode<CellApp>>,
    keys: Arc<KeySet>,
    private_targets: bool,
    metrics: Arc<Metrics>,
) {
    tokio::spawn(async move {
        // Public endpoints are HTTPS with public certificates (the Mozilla
        // roots built in); no proxy from the environment, which would
        // resolve names past `PublicOnly`.
        let mut builder = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .tls_built_in_webpki_certs(true)
            .no_proxy();
        if !private_targets {
            builder = builder.dns_resolver(Arc::new(crate::outbound::PublicOnly));
        }
        let http = match builder.build() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "webhook client");
                return;
            }
        };
        let mut running: HashMap<String, tokio::task::JoinHandle<()>> = HashMap::new();
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tick.tick().await;
            running.retain(|_, h| !h.is_finished());
            if !node.is_leader() {
                for (_, h) in running.drain() {
                    h.abort();
                }
                continue;
            }
            let hooks = match node.store().read().and_then(|r| all(&r)) {
                Ok(h) => h,
                Err(_) => continue,
            };
            for w in hooks {
                reseal_if_stale(&node, &keys, &w).await;
                if running.contains_key(&w.id) {
                    continue;
                }
                let task = tokio::spawn(send_loop(
                    Sender {
                        node: node.clone(),
                        http: http.clone(),
                        keys: keys.clone(),
                        private_targets,
                        metrics: metrics.clone(),
                    },
                    w.id.clone(),
                ));
                running.insert(w.id, task);
            }
        }
    });
}

/// The vendor an event is about: named in it (order events), or the vendor
/// of the order it names (delivery events).
fn vendor_of(read: &ReadTxn, data: &serde_json::Value) -> Option<String> {
    if let Some(v) = data["vendor_id"].as_str() {
        return Some(v.to_string());
    }
    let order_id = data["order_id"].as_str()?;
    crate::orders::order(read, order_id)
        .ok()
        .flatten()
        .map(|o| o.vendor_id)
}

/// An error with its causes (reqwest's own message hides why a name did not
/// resolve).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// A secret sealed under an older key, or stored before sealing, is sealed
/// again under the active key (one command; the apply checks it replaces
/// what was read, so a concurrent change wins).
async fn reseal_if_stale(node: &RaftNode<CellApp>, keys: &KeySet, w: &Webhook) {
    if sealed::is_current(keys, &w.secret) {
        return;
    }
    let Ok(Sealed::Stale(secret)) = open_secret(keys, w) else {
        return;
    };
    let cmd = WebhookCommand::Reseal {
        id: w.id.clone(),
        from: w.secret.clone(),
        to: seal_secret(keys, &w.id, &secret),
    };
    if let Err(e) = node.write(&Command::Webhooks(Box::new(cmd))).await {
        tracing::debug!(webhook = %w.id, error = %e, "re-sealing a webhook secret");
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Delivers one webhook's backlog until it is empty or leadership is lost.
/// What a webhook's send loop works with.
struct Sender {
    node: Arc<RaftNode<CellApp>>,
    http: reqwest::Client,
    keys: Arc<KeySet>,
    private_targets: bool,
    metrics: Arc<Metrics>,
}

async fn send_loop(sender: Sender, id: String) {
    let Sender {
        node,
        http,
        keys,
        private_targets,
        metrics,
    } = sender;
    let mut failures: u32 = 0;
    loop {
        if !node.is_leader() {
            return;
        }
        let (hook, batch) = {
            let Ok(read) = node.store().read() else {
                return;
            };
            let Ok(Some(w)) = get(&read, &id) else {
                return;
            };
            // Past the feed's window if need be: the webhook's hold kept
            // what it has not sent.
            let Ok(evs) = events::after_stored(&read, &w.owner_id, w.cursor, BATCH) else {
                return;
            };
            (w, evs)
        };
        if let Some(first) = batch.first().filter(|e| e.seq > hook.cursor + 1) {
            tracing::warn!(
                webhook = %id,
                missed = first.seq - hook.cursor - 1,
                "events fell out of the feed before this webhook could send them"
            );
        }
        // Only this vendor's events go to its webhook (its owner's feed may
        // carry other vendors' too).
        let last = match batch.last() {
            Some(e) => e.seq,
            None => return,
        };
        let mine: Vec<serde_json::Value> = {
            let Ok(read) = node.store().read() else {
                return;
            };
            batch
                .iter()
                .map(crate::http::events_api::event_json)
                .filter(|e| {
                    vendor_of(&read, &e["data"]).as_deref() == Some(hook.vendor_id.as_str())
                })
                .collect()
        };
        let count = mine.len() as u64;
        let secret = open_secret(&keys, &hook);
        let outcome = if mine.is_empty() {
            Ok(())
        } else if let Err(why) = &secret {
            Err(format!(
                "cannot sign: the webhook's secret is {why}; register it again"
            ))
        } else if let Err(why) = crate::outbound::check_url(&hook.url, private_targets) {
            Err(why)
        } else {
            let body = serde_json::to_vec(&mine).unwrap_or_default();
            let secret = secret.as_ref().map_or("", Sealed::secret);
            // The body's signature alone stays valid forever; the second
            // covers the send time too, so a receiver can refuse replays.
            let sent_at = (crate::http::identity_api::now_ms() / 1000).to_string();
            let sig = signature(secret, &[&body]);
            let timed = signature(secret, &[sent_at.as_bytes(), b".", &body]);
            let sent = http
                .post(&hook.url)
                .header("content-type", "application/json")
                .header("x-marketcell-signature", sig)
                .header("x-marketcell-timestamp", sent_at)
                .header("x-marketcell-timestamped-signature", timed)
                .header("x-marketcell-webhook", hook.id.as_str())
                .body(body)
                .send()
                .await;
            match sent {
                Ok(r) if r.status().is_success() => Ok(()),
                Ok(r) => Err(format!("HTTP {}", r.status().as_u16())),
                Err(e) if e.is_timeout() => Err("timed out".to_string()),
                Err(e) => Err(format!("unreachable: {}", error_chain(&e.without_url()))),
            }
        };
        if count > 0 {
            let outcome = if outcome.is_ok() {
                "delivered"
            } else {
                "failed"
            };
            metrics
                .webhook_posts
                .get_or_create(&OutcomeLabels { outcome })
                .inc();
        }
        match outcome {
            Ok(()) => {
                failures = 0;
                metrics.webhook_events.inc_by(count);
                let cmd = WebhookCommand::Delivered {
                    id: id.clone(),
                    cursor: last,
                    count,
                    now: now_ms(),
                };
                if node.write(&Command::Webhooks(Box::new(cmd))).await.is_err() {
                    return;
                }
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                tracing::debug!(webhook = %id, %error, failures, "webhook delivery failed");
                let cmd = WebhookCommand::Failed {
                    id: id.clone(),
                    error,
                    failures,
                    now: now_ms(),
                };
                let _ = node.write(&Command::Webhooks(Box::new(cmd))).await;
                // Exponential backoff with jitter (half to all of the cap).
                let cap = Duration::from_millis(250u64 << failures.min(8)).min(MAX_BACKOFF);
                let wait = cap.mul_f64(0.5 + rand::random::<f64>() * 0.5);
                tokio::time::sleep(wait).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use storage::{Durability, Store};

    fn sample(id: &str, vendor: &str, owner: &str) -> Webhook {
        Webhook {
            id: id.into(),
            vendor_id: vendor.into(),
            owner_id: owner.into(),
            url: "https://example.test/hook".into(),
            secret: "s".into(),
            cursor: 0,
            delivered: 0,
            last_error: None,
            failures: 0,
            updated_at: 0,
            created_at: 0,
        }
    }

    fn append(store: &Store, n: u64) {
        let txn = store.write().unwrap();
        for _ in 0..n {
            events::append(&txn, "acc_o", "order.placed", 0, &serde_json::json!({})).unwrap();
        }
        txn.commit(Durability::Immediate).unwrap();
    }

    fn first_unsent(store: &Store) -> Option<u64> {
        let read = store.read().unwrap();
        let w = all(&read).unwrap().pop()?;
        let evs = events::after_stored(&read, "acc_o", w.cursor, 1).unwrap();
        evs.first().map(|e| e.seq)
    }

    fn run(store: &Store, cmd: WebhookCommand) -> WebhookResponse {
        let txn = store.write().unwrap();
        let r = apply(&txn, cmd).unwrap();
        txn.commit(Durability::Immediate).unwrap();
        r
    }

    #[test]
    fn a_webhook_behind_by_more_than_the_feed_window_still_gets_every_event() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("s.redb"), 1 << 20).unwrap();
        append(&store, 10);
        let webhook = sample("whk_1", "ven_v", "acc_o");
        run(&store, WebhookCommand::Register { webhook });
        // The endpoint is down while the feed grows well past its window.
        let behind = events::RETAINED + 500;
        append(&store, behind);
        assert_eq!(first_unsent(&store), Some(11));
        // It comes back and takes everything: the feed shrinks to its window.
        let last = 10 + behind;
        let delivered = WebhookCommand::Delivered {
            id: "whk_1".into(),
            cursor: last,
            count: behind,
            now: 1,
        };
        assert_eq!(run(&store, delivered), WebhookResponse::Done);
        append(&store, 64);
        assert_eq!(first_unsent(&store), Some(last + 1));
        // What the hold kept is gone at the next prune (feeds are pruned
        // every 64 appends, down to their window).
        let read = store.read().unwrap();
        let oldest = events::after_stored(&read, "acc_o", 0, 1).unwrap()[0].seq;
        assert!(oldest > last + 64 - events::RETAINED - 64, "{oldest}");
        drop(read);
        // A deleted webhook holds nothing back, and is gone by id too.
        assert!(get(&store.read().unwrap(), "whk_1").unwrap().is_some());
        run(&store, WebhookCommand::Delete { id: "whk_1".into() });
        assert!(get(&store.read().unwrap(), "whk_1").unwrap().is_none());
        append(&store, 2000);
        let read = store.read().unwrap();
        let oldest = events::after_stored(&read, "acc_o", 0, 1).unwrap()[0].seq;
        assert!(
            oldest > last + 64 + 2000 - events::RETAINED - 64,
            "{oldest}"
        );
    }

    /// Rising to command version 4 indexes webhooks registered before the
    /// id index; from then on a miss is a miss, without a scan.
    #[test]
    fn version_4_finds_webhooks_through_the_index_only() {
        use crate::command_version::{self, ClusterCommand};
        let (_dir, store) = command_version::store_at(3);
        let txn = store.write().unwrap();
        let old = sample("nyc.whk_old", "nyc.ven_a", "nyc.acc_o");
        // As a build before the index stored it.
        txn.put(WEBHOOKS, &key(&old.vendor_id, &old.id), &old)
            .unwrap();
        assert!(txn.get(BY_ID, old.id.as_bytes()).unwrap().is_none());
        command_version::apply(&txn, ClusterCommand::RaiseVersion { version: 4 }).unwrap();
        assert_eq!(
            txn.get(BY_ID, old.id.as_bytes()).unwrap(),
            Some(old.vendor_id.clone())
        );
        assert_eq!(
            find(&txn, &old.id).unwrap().map(|(_, w)| w),
            Some(old.clone())
        );
        // A row the index does not name is not looked for.
        let mut unindexed = old.clone();
        unindexed.id = "nyc.whk_stray".into();
        txn.put(
            WEBHOOKS,
            &key(&unindexed.vendor_id, &unindexed.id),
            &unindexed,
        )
        .unwrap();
        assert!(find(&txn, &unindexed.id).unwrap().is_none());
        txn.commit(Durability::Immediate).unwrap();
        let read = store.read().unwrap();
        assert_eq!(get(&read, &old.id).unwrap(), Some(old));
        assert!(get(&read, &unindexed.id).unwrap().is_none());
    }
}
