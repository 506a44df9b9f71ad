//! The cell's replicated state machine: every command the cell can commit,
//! and what happens on each node after a batch is applied.

use serde::{Deserialize, Serialize};
use storage::WriteTxn;
use tokio::sync::broadcast;

use std::{collections::BTreeMap, sync::Arc};

use crate::{
    catalog::{self, CatalogCommand, CatalogResponse, Touched},
    command_version::{self, ClusterCommand},
    drivers::{self, DriverCommand, DriverResponse},
    identity::{self, IdentityCommand, IdentityResponse},
    kv::{self, KvCommand, KvResponse},
    orders::{self, OrderCommand, OrderResponse},
    read_models::ReadModels,
    routes::{self, RouteCommand, RouteResponse},
    search_service::{Dirty, IndexFeed},
    webhooks::{self, WebhookCommand, WebhookResponse},
};

/// Everything that goes through the Raft log.
#[derive(Debug, Serialize, Deserialize)]
pub enum Command {
    Kv(KvCommand),
    Identity(IdentityCommand),
    Catalog(Box<CatalogCommand>),
    Orders(Box<OrderCommand>),
    Drivers(Box<DriverCommand>),
    Webhooks(Box<WebhookCommand>),
    Routes(Box<RouteCommand>),
    Cluster(ClusterCommand),
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Response {
    Kv(KvResponse),
    Identity(IdentityResponse),
    Catalog(Box<CatalogResponse>),
    Orders(Box<OrderResponse>),
    Drivers(Box<DriverResponse>),
    Webhooks(Box<WebhookResponse>),
    Routes(Box<RouteResponse>),
    /// The recorded command version after the command.
    Cluster(u32),
}

/// What changed, announced in-process after commit.
#[derive(Debug, Clone)]
pub enum Change {
    Kv {
        key: String,
    },
    Vendor {
        id: String,
    },
    /// A product of this vendor was added, changed or removed (its stock
    /// included): the cached pages of the vendor's menu are retired.
    Menu {
        vendor: String,
    },
    Product {
        id: String,
        /// Its search document may have changed too. A checkout or refund
        /// moves only the stock count, which the index sees solely as
        /// `in_stock`: re-indexing every ordered product on every node
        /// several times a second would be work for nothing.
        search: bool,
    },
    /// A delivery may need a driver now (opened, or an offer declined or
    /// expired): the leader's dispatcher runs at once.
    Dispatchable,
    /// These principals' event feeds grew: their long polls wake.
    Feeds {
        principals: Vec<String>,
    },
    /// The route marketplace's version moved: its long polls wake.
    Market,
    /// A snapshot replaced the whole state.
    Everything,
}

pub struct CellApp {
    changes: broadcast::Sender<Change>,
    feeds: crate::feed_waiters::FeedWaiters,
    /// Bumped whenever the route market's version moves (or a snapshot
    /// replaced state): what route-market long polls wait on.
    market: tokio::sync::watch::Sender<u64>,
    route_board: crate::route_board::RouteBoard,
    read_models: Arc<ReadModels>,
    search: std::sync::OnceLock<Arc<IndexFeed>>,
}

impl CellApp {
    pub fn new(read_models: Arc<ReadModels>) -> Self {
        let (changes, _) = broadcast::channel(4096);
        Self {
            changes,
            feeds: Default::default(),
            market: tokio::sync::watch::Sender::new(0),
            route_board: Default::default(),
            read_models,
            search: std::sync::OnceLock::new(),
        }
    }

    /// Where catalog changes go to be indexed (set before Raft starts, so
    /// no applied change is missed).
    pub fn set_search(&self, feed: Arc<IndexFeed>) {
        let _ = self.search.set(feed);
    }

    /// Ask the indexer to rebuild from state (`POST /admin/search/reindex`).
    pub fn reindex(&self) {
        self.index(Dirty::All, 0);
    }

    /// `d` changed at log index `at`.
    fn index(&self, d: Dirty, at: u64) {
        if let Some(feed) = self.search.get() {
            feed.send(d, at);
        }
    }

    /// Changes whenever the route market does.
    pub fn market_watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.market.subscribe()
    }

    /// Route eligibility per market version and driver class.
    pub fn route_board(&self) -> &crate::route_board::RouteBoard {
        &self.route_board
    }

    /// Long polls waiting on event feeds.
    pub fn feeds(&self) -> &crate::feed_waiters::FeedWaiters {
        &self.feeds
    }

    pub fn read_models(&self) -> &Arc<ReadModels> {
        &self.read_models
    }

    /// In-process change notifications (cache invalidation, indexers,
    /// long-poll waiters). Lagging subscribers must resynchronise.
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }
}

impl raft::Application for CellApp {
    type Command = Command;
    type Response = Response;
    type Effect = Change;

    fn apply(
        &self,
        txn: &WriteTxn,
        ctx: &mut raft::ApplyContext<Change>,
        cmd: Command,
    ) -> storage::Result<Response> {
        // Route commands and order changes (a scheduled order joins a route)
        // may move the market.
        // Of drivers' commands only those that may hand routes back (a
        // stand-down, a narrowed profile): location pings, the hottest
        // write, read no market version.
        let market_may_move = match &cmd {
            Command::Routes(_) | Command::Orders(_) => true,
            Command::Drivers(c) => matches!(
                c.as_ref(),
                DriverCommand::SetStatus { .. } | DriverCommand::PutProfile { .. }
            ),
            _ => false,
        };
        let before = if market_may_move {
            Some(crate::routes::market_version(txn)?)
        } else {
            None
        };
        let (resp, fed) = crate::events::collect_appends(|| self.apply_command(txn, ctx, cmd));
        if !fed.is_empty() {
            ctx.emit(Change::Feeds { principals: fed });
        }
        if let Some(before) = before {
            if crate::routes::market_version(txn)? != before {
                ctx.emit(Change::Market);
            }
        }
        resp
    }

    /// Runs before the applied index advances: cached read models are
    /// dropped before any reader can wait for this index.
    fn committed(&self, applied_index: u64, effects: Vec<Change>) {
        for e in effects {
            match &e {
                Change::Vendor { id } => {
                    self.read_models.invalidate(&format!("vendor/{id}"));
                    self.read_models.menu_changed(id);
                    self.index(Dirty::Vendor(id.clone()), applied_index);
                }
                Change::Menu { vendor } => self.read_models.menu_changed(vendor),
                Change::Product { id, search } => {
                    self.read_models.invalidate(&format!("product/{id}"));
                    if *search {
                        self.index(Dirty::Product(id.clone()), applied_index);
                    }
                }
                Change::Feeds { principals } => {
                    for p in principals {
                        self.feeds.wake(p);
                    }
                }
                Change::Market => {
                    self.market.send_modify(|n| *n += 1);
                }
                Change::Kv { .. } | Change::Dispatchable | Change::Everything => {}
            }
            let _ = self.changes.send(e);
        }
    }

    const VERSION: u32 = command_version::CURRENT;

    fn required_version(cmd: &Command) -> u32 {
        command_version::required(cmd)
    }

    fn version_command(version: u32) -> Option<Command> {
        Some(Command::Cluster(ClusterCommand::RaiseVersion { version }))
    }

    fn cluster_version(&self, read: &storage::ReadTxn) -> storage::Result<u32> {
        command_version::recorded(read)
    }

    fn snapshot_installed(&self, applied_index: u64) {
        self.read_models.invalidate_all();
        self.index(Dirty::All, applied_index);
        self.feeds.wake_all();
        self.route_board.reset();
        self.market.send_modify(|n| *n += 1);
        let _ = self.changes.send(Change::Everything);
    }
}

impl CellApp {
    fn apply_command(
        &self,
        txn: &WriteTxn,
        ctx: &mut raft::ApplyContext<Change>,
        cmd: Command,
    ) -> storage::Result<Response> {
        match cmd {
            Command::Kv(c) => {
                let (resp, changed) = kv::apply(txn, c)?;
                if let Some(key) = changed {
                    ctx.emit(Change::Kv { key });
                }
                Ok(Response::Kv(resp))
            }
            Command::Identity(c) => Ok(Response::Identity(identity::apply(txn, c)?)),
            Command::Catalog(c) => {
                let (resp, touched) = catalog::apply(txn, *c)?;
                for t in touched {
                    ctx.emit(match t {
                        Touched::Vendor(id) => Change::Vendor { id },
                        Touched::Product(id) => Change::Product { id, search: true },
                        Touched::Menu(vendor) => Change::Menu { vendor },
                    });
                }
                Ok(Response::Catalog(Box::new(resp)))
            }
            Command::Orders(c) => {
                let resp = orders::apply(txn, *c)?;
                // The vendor's rating moved: its view and search documents.
                if let OrderResponse::Rated(r) = &resp {
                    ctx.emit(Change::Vendor {
                        id: r.vendor_id.clone(),
                    });
                }
                // Checkout reserves stock and a refund returns it: those
                // products' cached views and search documents change (only
                // products whose stock is counted; other transitions and
                // unlimited products change nothing there).
                if let OrderResponse::Placed(o) | OrderResponse::Order(o) = &resp {
                    let stock_moved = match &resp {
                        OrderResponse::Placed(_) => true,
                        _ => matches!(
                            o.status,
                            orders::OrderStatus::Rejected
                                | orders::OrderStatus::Cancelled
                                | orders::OrderStatus::Failed
                        ),
                    };
                    let mut moved: BTreeMap<&str, i64> = BTreeMap::new();
                    let mut menu_moved = false;
                    for item in o.items.iter().filter(|_| stock_moved) {
                        *moved.entry(&item.product_id).or_default() += item.quantity as i64;
                    }
                    for (id, quantity) in moved {
                        let stock = txn
                            .get(crate::catalog::PRODUCTS_TABLE, id.as_bytes())?
                            .and_then(|p| p.stock);
                        if let Some(stock) = stock {
                            ctx.emit(Change::Product {
                                id: id.to_string(),
                                search: availability_may_have_flipped(stock, quantity),
                            });
                            menu_moved = true;
                        }
                    }
                    if menu_moved {
                        ctx.emit(Change::Menu {
                            vendor: o.vendor_id.clone(),
                        });
                    }
                    let opened = match &resp {
                        OrderResponse::Placed(o) => o.kind == orders::OrderKind::Ride,
                        _ => o.status == orders::OrderStatus::Accepted,
                    };
                    if opened {
                        ctx.emit(Change::Dispatchable);
                    }
                }
                Ok(Response::Orders(Box::new(resp)))
            }
            Command::Drivers(c) => {
                // Anything that may free a delivery or end a round of
                // offers: a decline, an expiry, a driver going offline or
                // stood down (suspended, or a profile back in review).
                let redispatch = matches!(
                    *c,
                    DriverCommand::DeclineOffer { .. }
                        | DriverCommand::ExpireOffer { .. }
                        | DriverCommand::SetOnline { online: false, .. }
                        | DriverCommand::SetStatus { .. }
                        | DriverCommand::PutProfile { .. }
                );
                let resp = drivers::apply(txn, *c)?;
                if redispatch {
                    ctx.emit(Change::Dispatchable);
                }
                Ok(Response::Drivers(Box::new(resp)))
            }
            Command::Webhooks(c) => Ok(Response::Webhooks(Box::new(webhooks::apply(txn, *c)?))),
            Command::Routes(c) => {
                let resp = routes::apply(txn, *c)?;
                if matches!(&resp, routes::RouteResponse::Released(r) if !r.is_empty()) {
                    ctx.emit(Change::Dispatchable);
                }
                Ok(Response::Routes(Box::new(resp)))
            }
            Command::Cluster(c) => Ok(Response::Cluster(command_version::apply(txn, c)?)),
        }
    }
}

/// Whether moving `quantity` units, leaving `stock`, may have changed a
/// product's availability (`stock > 0`): a sale that left none, or a refund
/// that brought back the first. Errs towards yes, which costs only a
/// needless re-index.
fn availability_may_have_flipped(stock: i64, quantity: i64) -> bool {
    stock <= quantity
}
