//! Vendors (restaurants, grocers, shops, pharmacies, taxi companies) and
//! their products, as replicated state.
//!
//! Ownership is checked inside apply as well as at the edge: the log order
//! decides, so a request that raced a change of ownership cannot slip by.

use serde::{Deserialize, Serialize};
use storage::{ReadTxn, Table, WriteTxn};

use crate::hours::OpeningHours;

const VENDORS: Table<Vendor> = Table::new("vendors");
const PRODUCTS: Table<Product> = Table::new("products");
/// For checkout, which reserves stock in the same transaction.
pub(crate) const VENDORS_TABLE: Table<Vendor> = VENDORS;
pub(crate) const PRODUCTS_TABLE: Table<Product> = PRODUCTS;
/// `<vendor id>/<product id>` → product id, for listing a menu in order.
const PRODUCTS_BY_VENDOR: Table<String> = Table::new("products_by_vendor");
/// Vendor id → its opening hours; no row = always open. A table of its own
/// so that vendors stored before hours existed still decode.
const HOURS: Table<OpeningHours> = Table::new("vendor_hours");
/// One row counting vendor changes: what "who is open" depends on besides
/// the clock.
const REVISION: Table<u64> = Table::new("vendor_revision");
const REVISION_KEY: &[u8] = b"vendors";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum VendorKind {
    Restaurant,
    Grocery,
    Retail,
    Pharmacy,
    Taxi,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum VendorStatus {
    Active,
    Paused,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Location {
    pub lat: f64,
    pub lng: f64,
}

impl Location {
    pub fn is_valid(&self) -> bool {
        (-90.0..=90.0).contains(&self.lat) && (-180.0..=180.0).contains(&self.lng)
    }
}

/// Integer minor units and an ISO 4217 code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Money {
    pub amount: i64,
    pub currency: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Vendor {
    pub id: String,
    pub owner_id: String,
    pub name: String,
    pub kind: VendorKind,
    pub description: String,
    pub location: Location,
    pub address: String,
    pub prep_minutes: u32,
    pub tags: Vec<String>,
    pub status: VendorStatus,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Product {
    pub id: String,
    pub vendor_id: String,
    pub name: String,
    pub description: String,
    pub category: String,
    pub price: Money,
    /// `None` = unlimited.
    pub stock: Option<i64>,
    pub tags: Vec<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

impl Product {
    pub fn available(&self) -> bool {
        self.stock.is_none_or(|s| s > 0)
    }
}

/// Fields a vendor update may change (already validated at the edge).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VendorPatch {
    pub name: Option<String>,
    pub description: Option<String>,
    pub location: Option<Location>,
    pub address: Option<String>,
    pub prep_minutes: Option<u32>,
    pub tags: Option<Vec<String>>,
    pub status: Option<VendorStatus>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProductPatch {
    pub name: Option<String>,
    pub description: Option<String>,
    pub category: Option<String>,
    pub price: Option<Money>,
    pub tags: Option<Vec<String>>,
}

/// Who is acting, as the edge authenticated it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    pub account_id: String,
    pub is_ops: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum CatalogCommand {
    CreateVendor {
        vendor: Vendor,
    },
    UpdateVendor {
        id: String,
        actor: Actor,
        patch: VendorPatch,
        now: i64,
    },
    CreateProduct {
        product: Product,
        actor: Actor,
    },
    UpdateProduct {
        id: String,
        actor: Actor,
        patch: ProductPatch,
        now: i64,
    },
    DeleteProduct {
        id: String,
        actor: Actor,
    },
    SetStock {
        id: String,
        actor: Actor,
        stock: Option<i64>,
        now: i64,
    },
    /// `CreateVendor` with opening hours (the older variant stays for logs
    /// written before hours existed).
    CreateVendorWithHours {
        vendor: Vendor,
        hours: Option<OpeningHours>,
    },
    /// `UpdateVendor` that may also set (`Some(Some)`) or clear
    /// (`Some(None)`) the opening hours.
    UpdateVendorWithHours {
        id: String,
        actor: Actor,
        patch: VendorPatch,
        hours: Option<Option<OpeningHours>>,
        now: i64,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CatalogResponse {
    Vendor(Vendor),
    Product(Product),
    Deleted,
    NotFound,
    Forbidden,
}

/// What an applied catalog command touched (for cache invalidation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Touched {
    Vendor(String),
    Product(String),
    /// A product of this vendor was added, changed or removed.
    Menu(String),
}

fn owns(txn: &WriteTxn, vendor_id: &str, actor: &Actor) -> storage::Result<Option<bool>> {
    Ok(txn
        .get(VENDORS, vendor_id.as_bytes())?
        .map(|v| actor.is_ops || v.owner_id == actor.account_id))
}

fn create_vendor(
    txn: &WriteTxn,
    vendor: Vendor,
    hours: Option<OpeningHours>,
) -> storage::Result<(CatalogResponse, Vec<Touched>)> {
    txn.put(VENDORS, vendor.id.as_bytes(), &vendor)?;
    if let Some(h) = hours {
        txn.put(HOURS, vendor.id.as_bytes(), &h)?;
    }
    bump_revision(txn)?;
    let touched = vec![Touched::Vendor(vendor.id.clone())];
    Ok((CatalogResponse::Vendor(vendor), touched))
}

fn update_vendor(
    txn: &WriteTxn,
    id: String,
    actor: Actor,
    patch: VendorPatch,
    hours: Option<Option<OpeningHours>>,
    now: i64,
) -> storage::Result<(CatalogResponse, Vec<Touched>)> {
    use CatalogResponse as R;
    let Some(mut v) = txn.get(VENDORS, id.as_bytes())? else {
        return Ok((R::NotFound, vec![]));
    };
    if !(actor.is_ops || v.owner_id == actor.account_id) {
        return Ok((R::Forbidden, vec![]));
    }
    if let Some(x) = patch.name {
        v.name = x;
    }
    if let Some(x) = patch.description {
        v.description = x;
    }
    if let Some(x) = patch.location {
        v.location = x;
    }
    if let Some(x) = patch.address {
        v.address = x;
    }
    if let Some(x) = patch.prep_minutes {
        v.prep_minutes = x;
    }
    if let Some(x) = patch.tags {
        v.tags = x;
    }
    if let Some(x) = patch.status {
        v.status = x;
    }
    match hours {
        Some(Some(h)) => txn.put(HOURS, id.as_bytes(), &h)?,
        Some(None) => {
            txn.delete(HOURS, id.as_bytes())?;
        }
        None => {}
    }
    v.updated_at = now;
    txn.put(VENDORS, id.as_bytes(), &v)?;
    bump_revision(txn)?;
    Ok((R::Vendor(v), vec![Touched::Vendor(id)]))
}

fn bump_revision(txn: &WriteTxn) -> storage::Result<()> {
    let n = txn.get(REVISION, REVISION_KEY)?.unwrap_or(0);
    txn.put(REVISION, REVISION_KEY, &(n + 1))
}

fn menu_key(vendor_id: &str, product_id: &str) -> Vec<u8> {
    format!("{vendor_id}/{product_id}").into_bytes()
}

/// Deterministic: reads only the command and the transaction.
pub fn apply(
    txn: &WriteTxn,
    cmd: CatalogCommand,
) -> storage::Result<(CatalogResponse, Vec<Touched>)> {
    use CatalogResponse as R;
    match cmd {
        CatalogCommand::CreateVendor { vendor } => create_vendor(txn, vendor, None),
        CatalogCommand::CreateVendorWithHours { vendor, hours } => {
            create_vendor(txn, vendor, hours)
        }
        CatalogCommand::UpdateVendor {
            id,
            actor,
            patch,
            now,
        } => update_vendor(txn, id, actor, patch, None, now),
        CatalogCommand::UpdateVendorWithHours {
            id,
            actor,
            patch,
            hours,
            now,
        } => update_vendor(txn, id, actor, patch, hours, now),
        CatalogCommand::CreateProduct { product, actor } => {
            match owns(txn, &product.vendor_id, &actor)? {
                None => Ok((R::NotFound, vec![])),
                Some(false) => Ok((R::Forbidden, vec![])),
                Some(true) => {
                    txn.put(PRODUCTS, product.id.as_bytes(), &product)?;
                    txn.put(
                        PRODUCTS_BY_VENDOR,
                        &menu_key(&product.vendor_id, &product.id),
                        &product.id,
                    )?;
                    let touched = vec![
                        Touched::Product(product.id.clone()),
                        Touched::Vendor(product.vendor_id.clone()),
                        Touched::Menu(product.vendor_id.clone()),
                    ];
                    Ok((R::Product(product), touched))
                }
            }
        }
        CatalogCommand::UpdateProduct {
            id,
            actor,
            patch,
            now,
        } => {
            let Some(mut p) = txn.get(PRODUCTS, id.as_bytes())? else {
                return Ok((R::NotFound, vec![]));
            };
            if owns(txn, &p.vendor_id, &actor)? != Some(true) {
                return Ok((R::Forbidden, vec![]));
            }
            if let Some(x) = patch.name {
                p.name = x;
            }
            if let Some(x) = patch.description {
                p.description = x;
            }
            if let Some(x) = patch.category {
                p.category = x;
            }
            if let Some(x) = patch.price {
                p.price = x;
            }
            if let Some(x) = patch.tags {
                p.tags = x;
            }
            p.updated_at = now;
            txn.put(PRODUCTS, id.as_bytes(), &p)?;
            let menu = Touched::Menu(p.vendor_id.clone());
            Ok((R::Product(p), vec![Touched::Product(id), menu]))
        }
        CatalogCommand::DeleteProduct { id, actor } => {
            let Some(p) = txn.get(PRODUCTS, id.as_bytes())? else {
                return Ok((R::NotFound, vec![]));
            };
            if owns(txn, &p.vendor_id, &actor)? != Some(true) {
                return Ok((R::Forbidden, vec![]));
            }
            txn.delete(PRODUCTS, id.as_bytes())?;
            txn.delete(PRODUCTS_BY_VENDOR, &menu_key(&p.vendor_id, &id))?;
            Ok((
                R::Deleted,
                vec![
                    Touched::Product(id),
                    Touched::Menu(p.vendor_id.clone()),
                    Touched::Vendor(p.vendor_id),
                ],
            ))
        }
        CatalogCommand::SetStock {
            id,
            actor,
            stock,
            now,
        } => {
            let Some(mut p) = txn.get(PRODUCTS, id.as_bytes())? else {
                return Ok((R::NotFound, vec![]));
            };
            if owns(txn, &p.vendor_id, &actor)? != Some(true) {
                return Ok((R::Forbidden, vec![]));
            }
            p.stock = stock;
            p.updated_at = now;
            txn.put(PRODUCTS, id.as_bytes(), &p)?;
            let menu = Touched::Menu(p.vendor_id.clone());
            Ok((R::Product(p), vec![Touched::Product(id), menu]))
        }
    }
}

pub fn vendor(read: &ReadTxn, id: &str) -> storage::Result<Option<Vendor>> {
    read.get(VENDORS, id.as_bytes())
}

/// A vendor's opening hours (`None`: always open).
pub fn hours(read: &ReadTxn, vendor_id: &str) -> storage::Result<Option<OpeningHours>> {
    read.get(HOURS, vendor_id.as_bytes())
}

/// Counts vendor changes (creations, updates, hours).
pub fn vendor_revision(read: &ReadTxn) -> storage::Result<u64> {
    Ok(read.get(REVISION, REVISION_KEY)?.unwrap_or(0))
}

/// Vendors that take no orders at `now`: paused, or outside their hours.
pub fn not_taking_orders(read: &ReadTxn, now: i64) -> storage::Result<Vec<String>> {
    let mut out: Vec<String> = all_vendors(read)?
        .into_iter()
        .filter(|v| v.status == VendorStatus::Paused)
        .map(|v| v.id)
        .collect();
    for (id, h) in read.range(HOURS, Vec::new().., usize::MAX)? {
        if !h.is_open_at(now) {
            out.push(String::from_utf8_lossy(&id).into_owned());
        }
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// [`not_taking_orders`] for searches: computed once per minute and vendor
/// revision (hours change state only on whole minutes), not per query.
#[derive(Default)]
pub struct ClosedNow(std::sync::Mutex<Option<ClosedAt>>);

/// The closed vendors as of a minute and a vendor revision.
struct ClosedAt {
    minute: i64,
    revision: u64,
    ids: std::sync::Arc<Vec<String>>,
}

impl ClosedNow {
    pub fn get(&self, read: &ReadTxn, now: i64) -> storage::Result<std::sync::Arc<Vec<String>>> {
        let minute = now.div_euclid(60_000);
        let revision = vendor_revision(read)?;
        let mut memo = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = memo.as_ref() {
            if c.minute == minute && c.revision == revision {
                return Ok(c.ids.clone());
            }
        }
        let ids = std::sync::Arc::new(not_taking_orders(read, minute * 60_000)?);
        *memo = Some(ClosedAt {
            minute,
            revision,
            ids: ids.clone(),
        });
        Ok(ids)
    }
}

/// The same, inside a write (checkout checks the hours as it applies).
pub(crate) fn hours_in(txn: &WriteTxn, vendor_id: &str) -> storage::Result<Option<OpeningHours>> {
    txn.get(HOURS, vendor_id.as_bytes())
}

/// Every vendor, in id order.
pub fn all_vendors(read: &ReadTxn) -> storage::Result<Vec<Vendor>> {
    Ok(read
        .range(VENDORS, .., usize::MAX)?
        .into_iter()
        .map(|(_, v)| v)
        .collect())
}

pub fn product(read: &ReadTxn, id: &str) -> storage::Result<Option<Product>> {
    read.get(PRODUCTS, id.as_bytes())
}

/// A vendor's products in id order, after `cursor` (a product id).
pub fn menu(
    read: &ReadTxn,
    vendor_id: &str,
    cursor: Option<&str>,
    limit: usize,
) -> storage::Result<Vec<Product>> {
    let prefix = format!("{vendor_id}/");
    let start = match cursor {
        Some(c) => {
            let mut k = menu_key(vendor_id, c);
            k.push(0);
            k
        }
        None => prefix.clone().into_bytes(),
    };
    let mut out = Vec::new();
    for (k, pid) in read.range(
        PRODUCTS_BY_VENDOR,
        storage::within(start, prefix.as_bytes()),
        limit,
    )? {
        if !k.starts_with(prefix.as_bytes()) {
            break;
        }
        if let Some(p) = read.get(PRODUCTS, pid.as_bytes())? {
            out.push(p);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use storage::{Durability, Store};

    fn vendor(id: &str, owner: &str) -> Vendor {
        Vendor {
            id: id.into(),
            owner_id: owner.into(),
            name: "V".into(),
            kind: VendorKind::Restaurant,
            description: String::new(),
            location: Location { lat: 1.0, lng: 2.0 },
            address: "a".into(),
            prep_minutes: 10,
            tags: vec![],
            status: VendorStatus::Active,
            created_at: 1,
            updated_at: 1,
        }
    }

    fn product(id: &str, vendor: &str) -> Product {
        Product {
            id: id.into(),
            vendor_id: vendor.into(),
            name: "P".into(),
            description: String::new(),
            category: "c".into(),
            price: Money {
                amount: 100,
                currency: "USD".into(),
            },
            stock: Some(1),
            tags: vec![],
            created_at: 1,
            updated_at: 1,
        }
    }

    #[test]
    fn ownership_is_enforced_in_apply() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("s.redb"), 1 << 20).unwrap();
        let w = store.write().unwrap();
        let owner = Actor {
            account_id: "o".into(),
            is_ops: false,
        };
        let other = Actor {
            account_id: "x".into(),
            is_ops: false,
        };
        apply(
            &w,
            CatalogCommand::CreateVendor {
                vendor: vendor("v1", "o"),
            },
        )
        .unwrap();
        let (r, _) = apply(
            &w,
            CatalogCommand::CreateProduct {
                product: product("p1", "v1"),
                actor: other.clone(),
            },
        )
        .unwrap();
        assert_eq!(r, CatalogResponse::Forbidden);
        let (r, t) = apply(
            &w,
            CatalogCommand::CreateProduct {
                product: product("p1", "v1"),
                actor: owner.clone(),
            },
        )
        .unwrap();
        assert!(matches!(r, CatalogResponse::Product(_)));
        assert!(t.contains(&Touched::Product("p1".into())));
        let (r, _) = apply(
            &w,
            CatalogCommand::SetStock {
                id: "p1".into(),
                actor: other,
                stock: Some(9),
                now: 2,
            },
        )
        .unwrap();
        assert_eq!(r, CatalogResponse::Forbidden);
        let (r, _) = apply(
            &w,
            CatalogCommand::SetStock {
                id: "p1".into(),
                actor: owner.clone(),
                stock: Some(0),
                now: 2,
            },
        )
        .unwrap();
        let CatalogResponse::Product(p) = r else {
            panic!()
        };
        assert!(!p.available());
        w.commit(Durability::Immediate).unwrap();
        let r = store.read().unwrap();
        assert_eq!(menu(&r, "v1", None, 10).unwrap().len(), 1);
        assert_eq!(menu(&r, "v1", Some("p1"), 10).unwrap().len(), 0);
    }
}
