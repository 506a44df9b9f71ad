//! [`SearchIndex`]: one tantivy index, its writer and its reader.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::Mutex;

use tantivy::collector::{Collector, SegmentCollector};
use tantivy::columnar::{Column, StrColumn};
use tantivy::directory::MmapDirectory;
use tantivy::indexer::LogMergePolicy;
use tantivy::schema::Value;
use tantivy::snippet::SnippetGenerator;
use tantivy::tokenizer::TokenStream;
use tantivy::{
    DocAddress, DocId, Index, IndexReader, IndexSettings, IndexWriter, ReloadPolicy, Score,
    SegmentOrdinal, SegmentReader, TantivyDocument, Term,
};

use crate::error::SearchError;
use crate::query::{
    build_query, haversine_km, query_terms, validate, Hit, QueryTerm, SearchQuery, SearchResults,
    Sort, TermMatcher, MAX_LIMIT,
};
use crate::schema::{
    analyzer, build_schema, Change, Fields, F_CATEGORY, F_LAT, F_LNG, F_PRICE, F_RATING, TOKENIZER,
};

/// Memory budget of the (single-threaded) index writer.
const WRITER_MEMORY_BYTES: usize = 50_000_000;
/// Segments of one size class merged together.
const MERGE_MIN_SEGMENTS: usize = 4;
/// Bytes of a compressed doc-store block. Every hit of a page reads (and
/// decompresses) the block holding its document; small blocks keep that
/// cheap (tantivy's default is 16 KiB).
const DOCSTORE_BLOCK_BYTES: usize = 4096;

fn index_settings() -> IndexSettings {
    IndexSettings {
        docstore_blocksize: DOCSTORE_BLOCK_BYTES,
        ..IndexSettings::default()
    }
}

/// Characters of a snippet.
const SNIPPET_CHARS: usize = 150;

/// The search index of a node. `Send + Sync`; share it through an `Arc`.
/// Writes are serialised by an internal lock; searches never block on them.
pub struct SearchIndex {
    index: Index,
    reader: IndexReader,
    writer: Mutex<IndexWriter<TantivyDocument>>,
    fields: Fields,
    indexed: AtomicU64,
}

impl std::fmt::Debug for SearchIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SearchIndex")
            .field("indexed_index", &self.indexed_index())
            .field("doc_count", &self.doc_count())
            .finish()
    }
}

impl SearchIndex {
    /// Opens (or creates) the index stored in `dir`, creating the directory if missing.
    pub fn open_in_dir(dir: &Path) -> Result<Self, SearchError> {
        std::fs::create_dir_all(dir)?;
        let (schema, fields) = build_schema();
        let index = Index::builder()
            .schema(schema)
            .settings(index_settings())
            .open_or_create(MmapDirectory::open(dir)?)?;
        Self::with_index(index, fields)
    }

    /// A fresh index in memory.
    pub fn open_in_ram() -> Result<Self, SearchError> {
        let (schema, fields) = build_schema();
        let index = Index::builder()
            .schema(schema)
            .settings(index_settings())
            .create_in_ram()?;
        Self::with_index(index, fields)
    }

    fn with_index(index: Index, fields: Fields) -> Result<Self, SearchError> {
        index.tokenizers().register(TOKENIZER, analyzer());
        let indexed = parse_payload(index.load_metas()?.payload.as_deref())?;
        let writer = index.writer_with_num_threads(1, WRITER_MEMORY_BYTES)?;
        // Every query pays per segment (term dictionary walks for fuzzy
        // terms, scorers): merge sooner than tantivy's default of 8.
        let mut merge_policy = LogMergePolicy::default();
        merge_policy.set_min_num_segments(MERGE_MIN_SEGMENTS);
        writer.set_merge_policy(Box::new(merge_policy));
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()?;
        Ok(SearchIndex {
            index,
            reader,
            writer: Mutex::new(writer),
            fields,
            indexed: AtomicU64::new(indexed),
        })
    }

    /// Applies `changes` in order and commits once, recording `applied_index`
    /// in the commit payload; the results are searchable when this returns.
    /// On error nothing of this call is committed.
    pub fn apply(&self, changes: &[Change], applied_index: u64) -> Result<(), SearchError> {
        let mut writer = self.writer.lock().map_err(|_| SearchError::Poisoned)?;
        let result = self.apply_locked(&mut writer, changes, applied_index);
        if result.is_err() {
            if let Err(e) = writer.rollback() {
                tracing::warn!(error = %e, "search index rollback failed");
            }
        }
        result?;
        self.reader.reload()?;
        self.indexed.store(applied_index, AtomicOrdering::Release);
        tracing::debug!(
            changes = changes.len(),
            applied_index,
            "search index committed"
        );
        Ok(())
    }

    fn apply_locked(
        &self,
        writer: &mut IndexWriter<TantivyDocument>,
        changes: &[Change],
        applied_index: u64,
    ) -> Result<(), SearchError> {
        let f = &self.fields;
        for change in changes {
            match change {
                Change::UpsertProduct(p) => {
                    writer.delete_term(Term::from_field_text(f.id, &p.id));
                    writer.add_document(f.product_doc(p))?;
                }
                Change::UpsertVendor(v) => {
                    writer.delete_term(Term::from_field_text(f.id, &v.id));
                    writer.add_document(f.vendor_doc(v))?;
                }
                Change::Delete { id } => {
                    writer.delete_term(Term::from_field_text(f.id, id));
                }
            }
        }
        let mut commit = writer.prepare_commit()?;
        commit.set_payload(&applied_index.to_string());
        commit.commit()?;
        Ok(())
    }

    /// The log index recorded by the last commit (0 if none).
    pub fn indexed_index(&self) -> u64 {
        self.indexed.load(AtomicOrdering::Acquire)
    }

    /// Deletes every document and resets the indexed log index to 0 (for rebuilds).
    pub fn clear(&self) -> Result<(), SearchError> {
        let mut writer = self.writer.lock().map_err(|_| SearchError::Poisoned)?;
        let result = (|| -> Result<(), SearchError> {
            writer.delete_all_documents()?;
            let mut commit = writer.prepare_commit()?;
            commit.set_payload("0");
            commit.commit()?;
            Ok(())
        })();
        if result.is_err() {
            if let Err(e) = writer.rollback() {
                tracing::warn!(error = %e, "search index rollback failed");
            }
        }
        result?;
        self.reader.reload()?;
        self.indexed.store(0, AtomicOrdering::Release);
        Ok(())
    }

    /// Number of live documents (products and vendors).
    pub fn doc_count(&self) -> u64 {
        self.reader.searcher().num_docs()
    }

    /// Runs a query. Free text never causes an error; only structurally
    /// invalid coordinates or radius do.
    pub fn search(&self, q: &SearchQuery) -> Result<SearchResults, SearchError> {
        validate(q)?;
        let terms = query_terms(&q.text);
        let searcher = self.reader.searcher();
        let query = build_query(&self.fields, q, &terms, &searcher);
        let limit = q.limit.min(MAX_LIMIT);
        let keep = q.offset.saturating_add(limit);
        let collector = MatchCollector {
            near: q.near,
            radius_km: q.near.and(q.radius_km),
            // the query has no price clause when there is text (see build_query)
            price_range: (!terms.is_empty() && (q.min_price.is_some() || q.max_price.is_some()))
                .then(|| {
                    (
                        q.min_price.unwrap_or(i64::MIN),
                        q.max_price.unwrap_or(i64::MAX),
                    )
                }),
            sort: q.sort,
            keep,
        };
        let fruit = searcher.search(query.as_ref(), &collector)?;
        let mut hits = Vec::with_capacity(limit);
        let matchers: Vec<TermMatcher> = terms.iter().map(QueryTerm::matcher).collect();
        for c in fruit.top.iter().skip(q.offset).take(limit) {
            let doc: TantivyDocument = searcher.doc(c.addr)?;
            hits.push(self.hit(&doc, c, q, &matchers));
        }
        Ok(SearchResults {
            hits,
            total: fruit.total,
            facets: fruit.facets,
        })
    }

    fn hit(
        &self,
        doc: &TantivyDocument,
        c: &Candidate,
        q: &SearchQuery,
        terms: &[TermMatcher],
    ) -> Hit {
        let f = &self.fields;
        let text = |field| {
            doc.get_first(field)
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_string()
        };
        let name = text(f.name);
        let description = text(f.description);
        let (vendor_id, vendor_name) = match q.kind {
            crate::Kind::Product => (Some(text(f.vendor_id)), Some(text(f.vendor_name))),
            crate::Kind::Vendor => (None, None),
        };
        Hit {
            id: text(f.id),
            kind: q.kind,
            snippet: snippet(f, terms, &name, &description),
            name,
            score: c.score,
            distance_km: c.distance,
            price: doc.get_first(f.price).and_then(|v| v.as_i64()),
            vendor_id,
            vendor_name,
        }
    }

    /// The underlying tantivy index (for diagnostics).
    pub fn tantivy_index(&self) -> &Index {
        &self.index
    }
}

fn parse_payload(payload: Option<&str>) -> Result<u64, SearchError> {
    match payload {
        None => Ok(0),
        Some(p) => p
            .trim()
            .parse()
            .map_err(|_| SearchError::BadPayload(p.to_string())),
    }
}

/// Highlights the query terms (including their fuzzy / prefix matches) in the
/// description, else in the name; falls back to the start of the description.
fn snippet(f: &Fields, terms: &[TermMatcher], name: &str, description: &str) -> String {
    for (field, text) in [(f.description, description), (f.name, name)] {
        let matched = matched_tokens(terms, text);
        if matched.is_empty() {
            continue;
        }
        let generator = SnippetGenerator::new(matched, analyzer(), field, SNIPPET_CHARS);
        let s = generator.snippet(text);
        if !s.is_empty() {
            return s.to_html();
        }
    }
    let base = if description.is_empty() {
        name
    } else {
        description
    };
    escape_html(&base.chars().take(SNIPPET_CHARS).collect::<String>())
}

fn matched_tokens(terms: &[TermMatcher], text: &str) -> BTreeMap<String, Score> {
    let mut out = BTreeMap::new();
    if terms.is_empty() {
        return out;
    }
    let mut a = analyzer();
    let mut stream = a.token_stream(text);
    while stream.advance() {
        let tok = &stream.token().text;
        if !out.contains_key(tok) && terms.iter().any(|t| t.matches(tok)) {
            out.insert(tok.clone(), 1.0);
        }
    }
    out
}

fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A matching document with what it is sorted by.
#[derive(Debug, Clone)]
struct Candidate {
    addr: DocAddress,
    score: Score,
    distance: Option<f64>,
    price: Option<i64>,
    rating: Option<f64>,
}

/// `None` sorts after every value.
fn cmp_some_first<T>(a: Option<T>, b: Option<T>, cmp: impl Fn(T, T) -> Ordering) -> Ordering {
    match (a, b) {
        (Some(x), Some(y)) => cmp(x, y),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    }
}

fn compare(sort: Sort, a: &Candidate, b: &Candidate) -> Ordering {
    let primary = match sort {
        Sort::Relevance => Ordering::Equal,
        Sort::Distance => cmp_some_first(a.distance, b.distance, |x, y| x.total_cmp(&y)),
        Sort::PriceAsc => cmp_some_first(a.price, b.price, |x, y| x.cmp(&y)),
        Sort::PriceDesc => cmp_some_first(a.price, b.price, |x, y| y.cmp(&x)),
        Sort::Rating => cmp_some_first(a.rating, b.rating, |x, y| y.total_cmp(&x)),
    };
    primary
        .then_with(|| b.score.total_cmp(&a.score))
        .then_with(|| a.addr.cmp(&b.addr))
}

fn sort_and_truncate(sort: Sort, v: &mut Vec<Candidate>, keep: usize) {
    if v.len() > keep {
        if keep == 0 {
            v.clear();
            return;
        }
        v.select_nth_unstable_by(keep - 1, |a, b| compare(sort, a, b));
        v.truncate(keep);
    }
    v.sort_by(|a, b| compare(sort, a, b));
}

/// Counts all matches and their categories, applies the exact radius check
/// and keeps the first `keep` matches in `sort` order.
struct MatchCollector {
    near: Option<(f64, f64)>,
    radius_km: Option<f64>,
    /// Inclusive; documents without a price do not match.
    price_range: Option<(i64, i64)>,
    sort: Sort,
    keep: usize,
}

struct MatchFruit {
    total: u64,
    facets: BTreeMap<String, u64>,
    top: Vec<Candidate>,
}

struct MatchSegmentCollector {
    segment: SegmentOrdinal,
    near: Option<(f64, f64)>,
    radius_km: Option<f64>,
    price_range: Option<(i64, i64)>,
    sort: Sort,
    keep: usize,
    // `None` when no document of the segment has a value, or when the
    // query does not need the field (only read what the sort needs)
    lat: Option<Column<f64>>,
    lng: Option<Column<f64>>,
    price: Option<Column<i64>>,
    rating: Option<Column<f64>>,
    category: Option<StrColumn>,
    /// Matches per category term ordinal of this segment.
    category_counts: Vec<u64>,
    total: u64,
    top: Vec<Candidate>,
    /// Once `top` has been cut to `keep`, its last (worst) candidate: a
    /// match that does not sort before it cannot make the page.
    worst: Option<Candidate>,
}

impl Collector for MatchCollector {
    type Fruit = MatchFruit;
    type Child = MatchSegmentCollector;

    fn for_segment(
        &self,
        segment: SegmentOrdinal,
        reader: &SegmentReader,
    ) -> tantivy::Result<MatchSegmentCollector> {
        let ff = reader.fast_fields();
        let geo = self.near.is_some();
        let category = ff.str(F_CATEGORY)?;
        let categories = category.as_ref().map_or(0, |c| c.num_terms());
        Ok(MatchSegmentCollector {
            segment,
            near: self.near,
            radius_km: self.radius_km,
            price_range: self.price_range,
            sort: self.sort,
            keep: self.keep,
            lat: if geo { ff.column_opt(F_LAT)? } else { None },
            lng: if geo { ff.column_opt(F_LNG)? } else { None },
            price: match (self.sort, self.price_range) {
                (Sort::PriceAsc | Sort::PriceDesc, _) | (_, Some(_)) => ff.column_opt(F_PRICE)?,
                _ => None,
            },
            rating: match self.sort {
                Sort::Rating => ff.column_opt(F_RATING)?,
                _ => None,
            },
            category,
            category_counts: vec![0; categories],
            total: 0,
            top: Vec::new(),
            worst: None,
        })
    }

    fn requires_scoring(&self) -> bool {
        true
    }

    fn merge_fruits(&self, fruits: Vec<MatchFruit>) -> tantivy::Result<MatchFruit> {
        let mut total = 0;
        let mut facets = BTreeMap::new();
        let mut top = Vec::new();
        for fruit in fruits {
            total += fruit.total;
            for (k, v) in fruit.facets {
                *facets.entry(k).or_insert(0) += v;
            }
            top.extend(fruit.top);
        }
        sort_and_truncate(self.sort, &mut top, self.keep);
        Ok(MatchFruit { total, facets, top })
    }
}

fn first<T>(column: &Option<Column<T>>, doc: DocId) -> Option<T>
where
    T: PartialOrd + Copy + std::fmt::Debug + Send + Sync + 'static,
{
    column.as_ref().and_then(|c| c.first(doc))
}

impl SegmentCollector for MatchSegmentCollector {
    type Fruit = MatchFruit;

    fn collect(&mut self, doc: DocId, score: Score) {
        let distance = self.near.and_then(|near| {
            let lat = first(&self.lat, doc)?;
            let lng = first(&self.lng, doc)?;
            Some(haversine_km(near, (lat, lng)))
        });
        if let Some(r) = self.radius_km {
            match distance {
                Some(d) if d <= r => {}
                _ => return,
            }
        }
        let price = first(&self.price, doc);
        if let Some((lo, hi)) = self.price_range {
            match price {
                Some(p) if lo <= p && p <= hi => {}
                _ => return,
            }
        }
        self.total += 1;
        if let Some(col) = &self.category {
            for ord in col.term_ords(doc) {
                if let Some(n) = self.category_counts.get_mut(ord as usize) {
                    *n += 1;
                }
            }
        }
        if self.keep == 0 {
            return;
        }
        let candidate = Candidate {
            addr: DocAddress::new(self.segment, doc),
            score,
            distance,
            price,
            rating: first(&self.rating, doc),
        };
        if let Some(worst) = &self.worst {
            if compare(self.sort, &candidate, worst) != Ordering::Less {
                return;
            }
        }
        self.top.push(candidate);
        // bound memory: prune once the buffer is twice the page end
        if self.top.len() >= self.keep.saturating_mul(2).max(1024) {
            sort_and_truncate(self.sort, &mut self.top, self.keep);
            self.worst = self.top.last().cloned();
        }
    }

    fn harvest(mut self) -> MatchFruit {
        let mut facets = BTreeMap::new();
        if let Some(col) = &self.category {
            let mut name = String::new();
            for (ord, &count) in self.category_counts.iter().enumerate() {
                if count == 0 {
                    continue;
                }
                name.clear();
                match col.ord_to_str(ord as u64, &mut name) {
                    Ok(true) => *facets.entry(name.clone()).or_insert(0) += count,
                    Ok(false) => {}
                    Err(e) => tracing::warn!(error = %e, "reading category dictionary"),
                }
            }
        }
        sort_and_truncate(self.sort, &mut self.top, self.keep);
        MatchFruit {
            total: self.total,
            facets,
            top: self.top,
        }
    }
}
