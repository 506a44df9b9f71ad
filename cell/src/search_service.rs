//! Keeps the node's tantivy index in step with its state: applied catalog
//! changes are batched (≤ 200 ms) into one index commit that records the
//! applied log index; a missing, stale or replaced index is rebuilt from
//! `state.redb`. A search that must see a write (`X-Cell-Index`,
//! `X-Consistency: linearizable`) waits for the commit that holds it.

use std::{
    collections::BTreeSet,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use search::{Change, ProductDoc, SearchIndex, VendorDoc};
use tokio::sync::{mpsc, watch, Notify};

use crate::{
    app::CellApp,
    catalog::{self, Product, Vendor},
};

/// What the indexer is told after commit.
#[derive(Debug)]
pub enum Dirty {
    Vendor(String),
    Product(String),
    /// Rebuild everything (snapshot installed, or notifications lost).
    All,
}

/// Longest a committed change waits before it is indexed.
const BATCH_WINDOW: Duration = Duration::from_millis(200);

/// The way from applied catalog changes to the indexer, and back from the
/// indexer to searches that wait for a change to be searchable.
pub struct IndexFeed {
    tx: mpsc::UnboundedSender<Dirty>,
    /// Log index of the newest change sent to the indexer (0: none since
    /// this node started, whose index was rebuilt or current at start).
    sent_at: AtomicU64,
    /// The indexer has every change sent at or below this log index in a
    /// searchable commit.
    indexed: watch::Sender<u64>,
    /// A search is waiting: index what is pending now, not at the end of
    /// the batch window.
    hurry: Notify,
}

impl IndexFeed {
    /// A feed and the receiving end the indexer (`start`) takes.
    pub fn new() -> (Arc<Self>, mpsc::UnboundedReceiver<Dirty>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let feed = IndexFeed {
            tx,
            sent_at: AtomicU64::new(0),
            indexed: watch::Sender::new(0),
            hurry: Notify::new(),
        };
        (Arc::new(feed), rx)
    }

    /// Queue `d`, a change applied at log index `at`. Called before the
    /// applied index reaches `at`, so a search that waited for `at` to be
    /// applied sees this send.
    pub fn send(&self, d: Dirty, at: u64) {
        self.sent_at.fetch_max(at, Ordering::AcqRel);
        let _ = self.tx.send(d);
    }

    /// Waits (at most `within`) until every catalog change applied at or
    /// below `applied` — an index this node has applied — is searchable.
    pub async fn caught_up(&self, applied: u64, within: Duration) -> bool {
        // Nothing was sent between the newest change and `applied`, so the
        // index holds `applied`'s state once it holds that change.
        let need = applied.min(self.sent_at.load(Ordering::Acquire));
        let mut indexed = self.indexed.subscribe();
        if *indexed.borrow() >= need {
            return true;
        }
        self.hurry.notify_one();
        let caught_up = tokio::time::timeout(within, indexed.wait_for(|i| *i >= need))
            .await
            .is_ok_and(|r| r.is_ok());
        caught_up
    }

    fn indexed_through(&self, applied: u64) {
        self.indexed.send_if_modified(|i| {
            let moved = applied > *i;
            *i = (*i).max(applied);
            moved
        });
    }
}

fn kind_name<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// A vendor's average stars: its documents' `rating` (and its products',
/// which customers rate through their vendor).
type Average = Option<f64>;

fn vendor_doc(v: &Vendor, rating: Average) -> VendorDoc {
    VendorDoc {
        id: v.id.clone(),
        name: v.name.clone(),
        kind: kind_name(&v.kind),
        description: v.description.clone(),
        tags: v.tags.clone(),
        lat: v.location.lat,
        lng: v.location.lng,
        rating,
    }
}

fn product_doc(p: &Product, v: &Vendor, rating: Average) -> ProductDoc {
    ProductDoc {
        id: p.id.clone(),
        vendor_id: v.id.clone(),
        vendor_name: v.name.clone(),
        vendor_kind: kind_name(&v.kind),
        name: p.name.clone(),
        description: p.description.clone(),
        category: p.category.clone(),
        tags: p.tags.clone(),
        price: p.price.amount,
        in_stock: p.available(),
        lat: v.location.lat,
        lng: v.location.lng,
        rating,
    }
}

fn average(read: &storage::ReadTxn, vendor_id: &str) -> storage::Result<Average> {
    Ok(crate::ratings::tally(read, vendor_id)?.average())
}

/// Index changes for what `dirty` names, as the state is now.
fn changes_for(
    read: &storage::ReadTxn,
    dirty: &BTreeSet<(bool, String)>,
) -> storage::Result<Vec<Change>> {
    let mut out = Vec::new();
    for (is_vendor, id) in dirty {
        if *is_vendor {
            match catalog::vendor(read, id)? {
                Some(v) => {
                    // Products carry their vendor's name, place and rating.
                    let rating = average(read, id)?;
                    for p in catalog::menu(read, id, None, usize::MAX)? {
                        out.push(Change::UpsertProduct(product_doc(&p, &v, rating)));
                    }
                    out.push(Change::UpsertVendor(vendor_doc(&v, rating)));
                }
                None => out.push(Change::Delete { id: id.clone() }),
            }
        } else {
            let p = catalog::product(read, id)?;
            let v = match &p {
                Some(p) => catalog::vendor(read, &p.vendor_id)?,
                None => None,
            };
            let doc = match (p, v) {
                (Some(p), Some(v)) => Some(product_doc(&p, &v, average(read, &v.id)?)),
                _ => None,
            };
            out.push(match doc {
                Some(d) => Change::UpsertProduct(d),
                None => Change::Delete { id: id.clone() },
            });
        }
    }
    Ok(out)
}

fn rebuild(index: &SearchIndex, store: &storage::Store, applied: u64) -> anyhow::Result<()> {
    let read = store.read()?;
    let mut changes = Vec::new();
    for v in catalog::all_vendors(&read)? {
        let rating = average(&read, &v.id)?;
        for p in catalog::menu(&read, &v.id, None, usize::MAX)? {
            changes.push(Change::UpsertProduct(product_doc(&p, &v, rating)));
        }
        changes.push(Change::UpsertVendor(vendor_doc(&v, rating)));
    }
    index.clear()?;
    index.apply(&changes, applied)?;
    tracing::info!(docs = changes.len(), applied, "search index rebuilt");
    Ok(())
}

/// Start the indexer for `node`'s state; returns the index to query.
pub fn start(
    dir: &std::path::Path,
    node: Arc<raft::RaftNode<CellApp>>,
    feed: Arc<IndexFeed>,
    mut rx: mpsc::UnboundedReceiver<Dirty>,
) -> anyhow::Result<Arc<SearchIndex>> {
    let index = match SearchIndex::open_in_dir(dir) {
        Ok(i) => i,
        Err(e) => {
            // A different schema or a damaged index: rebuild from state.
            tracing::warn!(error = %e, "search index unusable; rebuilding");
            let _ = std::fs::remove_dir_all(dir);
            SearchIndex::open_in_dir(dir)?
        }
    };
    let index = Arc::new(index);
    let applied = node.applied_index();
    if index.indexed_index() != applied || applied == 0 {
        rebuild(&index, node.store(), applied)?;
    }
    feed.indexed_through(index.indexed_index());
    let idx = index.clone();
    tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            let mut all = matches!(first, Dirty::All);
            let mut dirty = BTreeSet::new();
            let note = |d: Dirty, all: &mut bool, dirty: &mut BTreeSet<(bool, String)>| match d {
                Dirty::Vendor(id) => {
                    dirty.insert((true, id));
                }
                Dirty::Product(id) => {
                    dirty.insert((false, id));
                }
                Dirty::All => *all = true,
            };
            note(first, &mut all, &mut dirty);
            let deadline = tokio::time::sleep(BATCH_WINDOW);
            tokio::pin!(deadline);
            while dirty.len() <= 10_000 {
                tokio::select! {
                    d = rx.recv() => match d {
                        Some(d) => note(d, &mut all, &mut dirty),
                        None => break,
                    },
                    _ = &mut deadline => break,
                    _ = feed.hurry.notified() => break,
                }
            }
            // Every change applied at or below `applied` was sent before
            // the applied index got there, so it is in the channel now;
            // the state read below is at least this new.
            let applied = node.applied_index();
            while let Ok(d) = rx.try_recv() {
                note(d, &mut all, &mut dirty);
            }
            let (index, node) = (idx.clone(), node.clone());
            let result = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
                if all {
                    return rebuild(&index, node.store(), applied);
                }
                let changes = changes_for(&node.store().read()?, &dirty)?;
                index.apply(&changes, applied)?;
                Ok(())
            })
            .await;
            match result {
                Ok(Ok(())) => feed.indexed_through(applied),
                Ok(Err(e)) => tracing::error!(error = %e, "search indexing failed"),
                Err(e) => tracing::error!(error = %e, "search indexer task failed"),
            }
        }
    });
    Ok(index)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{Location, Money, VendorKind, VendorStatus};
    use crate::ratings::{Rating, Stars};
    use storage::{Durability, Store};

    #[test]
    fn documents_carry_their_vendors_rating() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("s.redb"), 1 << 20).unwrap();
        let vendor = Vendor {
            id: "nyc.ven_1".into(),
            owner_id: "nyc.acc_v".into(),
            name: "Luigi's".into(),
            kind: VendorKind::Restaurant,
            description: String::new(),
            location: Location {
                lat: 40.7,
                lng: -74.0,
            },
            address: "1 Main St".into(),
            prep_minutes: 10,
            tags: Vec::new(),
            status: VendorStatus::Active,
            created_at: 0,
            updated_at: 0,
        };
        let product = Product {
            id: "nyc.prd_1".into(),
            vendor_id: vendor.id.clone(),
            name: "Pizza".into(),
            description: String::new(),
            category: "pizza".into(),
            price: Money {
                amount: 1000,
                currency: "USD".into(),
            },
            stock: None,
            tags: Vec::new(),
            created_at: 0,
            updated_at: 0,
        };
        let rated = |n: u32, stars: u8| Rating {
            order_id: format!("nyc.ord_{n}"),
            vendor_id: vendor.id.clone(),
            vendor: Stars::new(stars).unwrap(),
            driver_id: None,
            driver: None,
            comment: None,
            at: 0,
        };
        let txn = store.write().unwrap();
        txn.put(catalog::VENDORS_TABLE, vendor.id.as_bytes(), &vendor)
            .unwrap();
        txn.put(catalog::PRODUCTS_TABLE, product.id.as_bytes(), &product)
            .unwrap();
        txn.commit(Durability::Immediate).unwrap();
        let ratings = |read: &storage::ReadTxn| -> Vec<Average> {
            let dirty = BTreeSet::from([(true, vendor.id.clone()), (false, product.id.clone())]);
            changes_for(read, &dirty)
                .unwrap()
                .into_iter()
                .filter_map(|c| match c {
                    Change::UpsertVendor(d) => Some(d.rating),
                    Change::UpsertProduct(d) => Some(d.rating),
                    Change::Delete { .. } => None,
                })
                .collect()
        };
        // Not rated yet: no rating, so `sort=rating` puts them last.
        assert!(ratings(&store.read().unwrap()).iter().all(Option::is_none));
        let txn = store.write().unwrap();
        crate::ratings::record(&txn, &rated(1, 5)).unwrap();
        crate::ratings::record(&txn, &rated(2, 4)).unwrap();
        txn.commit(Durability::Immediate).unwrap();
        let found = ratings(&store.read().unwrap());
        assert!(!found.is_empty());
        assert!(found.iter().all(|r| *r == Some(4.5)), "{found:?}");
    }
}
