//! The tantivy schema, the text analyzer and the documents fed to the index.

use serde::{Deserialize, Serialize};
use tantivy::schema::{
    Field, IndexRecordOption, NumericOptions, Schema, TextFieldIndexing, TextOptions, FAST,
    INDEXED, STORED, STRING,
};
use tantivy::tokenizer::{
    AsciiFoldingFilter, LowerCaser, RemoveLongFilter, SimpleTokenizer, TextAnalyzer,
};
use tantivy::TantivyDocument;

/// Name under which [`analyzer`] is registered on every index.
pub const TOKENIZER: &str = "mc_text";

/// Tokens longer than this (in bytes) are dropped, at index and query time.
pub const MAX_TOKEN_LEN: usize = 40;

/// The analyzer of every full-text field, also used to split query text:
/// split on non-alphanumerics, drop very long tokens, lowercase, fold accents.
pub fn analyzer() -> TextAnalyzer {
    TextAnalyzer::builder(SimpleTokenizer::default())
        .filter(RemoveLongFilter::limit(MAX_TOKEN_LEN))
        .filter(LowerCaser)
        .filter(AsciiFoldingFilter)
        .build()
}

/// A product as indexed (denormalised with its vendor).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProductDoc {
    pub id: String,
    pub vendor_id: String,
    pub vendor_name: String,
    pub vendor_kind: String,
    pub name: String,
    pub description: String,
    pub category: String,
    pub tags: Vec<String>,
    /// Minor units.
    pub price: i64,
    pub in_stock: bool,
    pub lat: f64,
    pub lng: f64,
    pub rating: Option<f64>,
}

/// A vendor (store) as indexed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VendorDoc {
    pub id: String,
    pub name: String,
    pub kind: String,
    pub description: String,
    pub tags: Vec<String>,
    pub lat: f64,
    pub lng: f64,
    pub rating: Option<f64>,
}

/// One change fed to [`crate::SearchIndex::apply`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Change {
    UpsertProduct(ProductDoc),
    UpsertVendor(VendorDoc),
    /// Deletes the product or vendor with this id (ids are unique across kinds).
    Delete {
        id: String,
    },
}

pub(crate) const KIND_PRODUCT: &str = "product";
pub(crate) const KIND_VENDOR: &str = "vendor";

/// Field handles of the schema.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Fields {
    pub id: Field,
    pub kind: Field,
    pub name: Field,
    pub description: Field,
    pub tags: Field,
    pub tags_exact: Field,
    pub vendor_id: Field,
    pub vendor_name: Field,
    pub vendor_kind: Field,
    pub category: Field,
    pub price: Field,
    pub in_stock: Field,
    pub lat: Field,
    pub lng: Field,
    pub rating: Field,
}

pub(crate) const F_CATEGORY: &str = "category";
pub(crate) const F_PRICE: &str = "price";
pub(crate) const F_LAT: &str = "lat";
pub(crate) const F_LNG: &str = "lng";
pub(crate) const F_RATING: &str = "rating";

pub(crate) fn build_schema() -> (Schema, Fields) {
    let mut b = Schema::builder();
    let text = |stored: bool| {
        let o = TextOptions::default().set_indexing_options(
            TextFieldIndexing::default()
                .set_tokenizer(TOKENIZER)
                .set_index_option(IndexRecordOption::WithFreqsAndPositions),
        );
        if stored {
            o.set_stored()
        } else {
            o
        }
    };
    let num = || {
        NumericOptions::default()
            .set_indexed()
            .set_fast()
            .set_stored()
    };
    let fields = Fields {
        id: b.add_text_field("id", STRING | STORED),
        kind: b.add_text_field("kind", STRING),
        name: b.add_text_field("name", text(true)),
        description: b.add_text_field("description", text(true)),
        tags: b.add_text_field("tags", text(false)),
        tags_exact: b.add_text_field("tags_exact", STRING),
        vendor_id: b.add_text_field("vendor_id", STRING | STORED),
        vendor_name: b.add_text_field("vendor_name", text(true)),
        vendor_kind: b.add_text_field("vendor_kind", STRING),
        category: b.add_text_field(F_CATEGORY, STRING | FAST | STORED),
        price: b.add_i64_field(F_PRICE, num()),
        in_stock: b.add_bool_field("in_stock", INDEXED | FAST),
        lat: b.add_f64_field(F_LAT, num()),
        lng: b.add_f64_field(F_LNG, num()),
        rating: b.add_f64_field(F_RATING, FAST | STORED),
    };
    (b.build(), fields)
}

impl Fields {
    pub(crate) fn product_doc(&self, p: &ProductDoc) -> TantivyDocument {
        let mut d = TantivyDocument::default();
        d.add_text(self.id, &p.id);
        d.add_text(self.kind, KIND_PRODUCT);
        d.add_text(self.name, &p.name);
        d.add_text(self.description, &p.description);
        for t in &p.tags {
            d.add_text(self.tags, t);
            d.add_text(self.tags_exact, t);
        }
        d.add_text(self.vendor_id, &p.vendor_id);
        d.add_text(self.vendor_name, &p.vendor_name);
        d.add_text(self.vendor_kind, &p.vendor_kind);
        d.add_text(self.category, &p.category);
        d.add_i64(self.price, p.price);
        d.add_bool(self.in_stock, p.in_stock);
        d.add_f64(self.lat, p.lat);
        d.add_f64(self.lng, p.lng);
        if let Some(r) = p.rating.filter(|r| r.is_finite()) {
            d.add_f64(self.rating, r);
        }
        d
    }

    /// A vendor's own id doubles as its `vendor_id` and its kind as its
    /// `vendor_kind`, so those filters work for both kinds.
    pub(crate) fn vendor_doc(&self, v: &VendorDoc) -> TantivyDocument {
        let mut d = TantivyDocument::default();
        d.add_text(self.id, &v.id);
        d.add_text(self.kind, KIND_VENDOR);
        d.add_text(self.name, &v.name);
        d.add_text(self.description, &v.description);
        for t in &v.tags {
            d.add_text(self.tags, t);
            d.add_text(self.tags_exact, t);
        }
        d.add_text(self.vendor_id, &v.id);
        d.add_text(self.vendor_kind, &v.kind);
        d.add_f64(self.lat, v.lat);
        d.add_f64(self.lng, v.lng);
        if let Some(r) = v.rating.filter(|r| r.is_finite()) {
            d.add_f64(self.rating, r);
        }
        d
    }
}
