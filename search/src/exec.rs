//! The query engine: evaluates a [`SearchQuery`] on a searcher directly over
//! posting lists and fast fields, one window of documents at a time.
//!
//! tantivy's boolean query machinery scores every match through a tree of
//! boxed scorers (a union per term over four fields and the approximate
//! words, an intersection of the terms, exclusions), several virtual calls
//! per posting, and visits every match. Here each window of at most
//! [`WINDOW`] documents is filled term by term: every posting list of a term
//! sets its document's bit in the term's window bitset and adds its score
//! to a per-window score array; the terms' bitsets are intersected, filters
//! and exclusions applied as bitsets, and only the surviving documents are
//! checked against the post-filters (price, radius), counted and offered to
//! the top-k. Windows start at the first document every required part (each
//! term, each filter) can still match, so a rare term or filter skips the
//! posting lists of the others ahead.
//!
//! Counting stops at [`TRACK_TOTAL_HITS`] matches (like Elasticsearch's
//! `track_total_hits`): past it, `total` stays at the cap and is reported
//! as a lower bound, the facets cover the counted matches, and the engine
//! only looks for better hits. When the order is index order (no words,
//! relevance) the page is then settled and it stops. When ranking by
//! relevance, a window whose best possible score cannot beat the current
//! last hit of the page is skipped without reading it: the bound adds, per
//! term and field, the best BM25 the index records for the current posting
//! block (block-max, see [`Scored::block_bound`]) and the fuzzy bonus, in the
//! same order and f32 arithmetic as the scores themselves. Skipping never
//! changes the hits: a skipped document scores at most the bound, and at
//! equal score the page already holds an earlier document.
//!
//! Scores are those of the boolean query this replaced: per term and field,
//! BM25 × the field boost for the exact word, plus `boost * FUZZY_WEIGHT`
//! once for any word within the term's edit distance (or starting with its
//! prefix) when such words exist; summed over fields and terms.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap};
use std::ops::Bound;
use std::sync::Arc;

use tantivy::columnar::{Column, ColumnIndex, StrColumn};
use tantivy::fieldnorm::FieldNormReader;
use tantivy::postings::{BlockSegmentPostings, SegmentPostings, TermInfo};
use tantivy::query::{Bm25Weight, EnableScoring, Query, RangeQuery, Scorer, Weight};
use tantivy::schema::{Field, IndexRecordOption};
use tantivy::{
    DocAddress, DocId, DocSet, Score, Searcher, SegmentOrdinal, SegmentReader, Term, TERMINATED,
};

use crate::cache::{self, ColumnCache, SegmentColumns, Vocab};
use crate::query::{bounding_box, dfa, haversine_km, Dfa, Kind, QueryTerm, SearchQuery, Sort};
use crate::schema::{Fields, KIND_VENDOR};

/// Documents per window (a multiple of 64).
const WINDOW: u32 = 16384;
const WORDS: usize = (WINDOW / 64) as usize;
/// One bit per document of a window.
type Bits = [u64; WORDS];

/// Approximate words of a term looked up one by one in every segment
/// (from the index-wide dictionary); past this many, each segment's
/// dictionary is walked instead.
const MAX_LOOKUPS: usize = 24;

/// How many candidates ahead their columns are asked for.
const PREFETCH_AHEAD: usize = 32;

/// Beyond this many approximate words of a term in one field of one
/// segment, their documents are gathered into one bitset up front instead
/// of walking that many posting lists window by window.
const MAX_APPROX_LISTS: usize = 16;

/// Matches counted exactly (`total`, facets); past this many, `total` is
/// this lower bound and `total_exact` false.
pub const TRACK_TOTAL_HITS: u64 = 1_000;

/// BM25's saturation parameters (tantivy's).
const K1: Score = 1.2;

/// Relative margin added to score bounds: far above f32 rounding, far
/// below any difference that matters for skipping.
const BOUND_SLACK: Score = 1e-4;

/// Full-text fields and their boosts.
fn text_fields(f: &Fields) -> [(Field, Score); 4] {
    [
        (f.name, 3.0),
        (f.tags, 2.0),
        (f.vendor_name, 1.5),
        (f.description, 1.0),
    ]
}

/// Fuzzy and prefix matches score a constant `boost * FUZZY_WEIGHT`, so exact
/// matches (BM25 plus this) always rank above them within a field.
const FUZZY_WEIGHT: Score = 0.3;

/// One query term in one field of one segment.
struct SegmentTerms {
    exact: Option<TermInfo>,
    approx: Vec<TermInfo>,
    /// Tokens of the field in the segment (its average field length is
    /// what the index chose each posting block's best entry with).
    tokens: u64,
}

/// One query term in one field, resolved against every segment.
struct FieldPlan {
    field: Field,
    /// BM25 of the exact word, boosted.
    weight: Bm25Weight,
    /// The multiplier of `weight` (idf × (1 + k1) × boost).
    weight_scale: Score,
    /// Average length of the field over the index (BM25's).
    avg_fieldnorm: Score,
    /// Added once for any approximate (or exact) occurrence, when the index
    /// holds approximate words for this term in this field.
    bonus: Option<Score>,
    /// Per segment ordinal.
    segments: Vec<SegmentTerms>,
}

struct TermPlan {
    fields: Vec<FieldPlan>,
}

impl TermPlan {
    /// Documents in its posting lists (with repeats across fields).
    fn postings(&self) -> u64 {
        self.fields
            .iter()
            .flat_map(|f| &f.segments)
            .flat_map(|s| s.exact.iter().chain(&s.approx))
            .map(|i| u64::from(i.doc_freq))
            .sum()
    }
}

enum Required {
    Term(Term),
    Range(Box<dyn Weight>),
    /// A range over the coordinates, unless the segment has a grid.
    PlaceRange(Box<dyn Weight>),
}

/// A query resolved against one searcher.
pub(crate) struct Plan {
    terms: Vec<TermPlan>,
    required: Vec<Required>,
    excluded: Vec<Term>,
    near: Option<(f64, f64)>,
    /// Exact radius check on the matches, with its bounding box.
    radius: Option<Radius>,
    /// Inclusive; documents without a price do not match.
    price_range: Option<(i64, i64)>,
    sort: Sort,
    keep: usize,
    /// Matches sort in index order (all scores equal, no sort key): once
    /// counting stops and the page is full, nothing can change.
    index_order: bool,
}

#[derive(Clone, Copy)]
struct Radius {
    km: f64,
    lat: (f64, f64),
    lng: Option<(f64, f64)>,
}

fn f64_range(field: Field, lo: f64, hi: f64) -> RangeQuery {
    RangeQuery::new(
        Bound::Included(Term::from_field_f64(field, lo)),
        Bound::Included(Term::from_field_f64(field, hi)),
    )
}

impl Plan {
    pub(crate) fn new(
        f: &Fields,
        q: &SearchQuery,
        terms: &[QueryTerm],
        keep: usize,
        searcher: &Searcher,
        cache: &ColumnCache,
    ) -> tantivy::Result<Plan> {
        let mut term_plans = Vec::with_capacity(terms.len());
        let vocab = cache.vocab();
        for t in terms {
            term_plans.push(term_plan(f, t, searcher, vocab.as_deref())?);
        }
        // the rarest term first: the others are then only read where it
        // matched (scores add up in this order, the bounds too)
        term_plans.sort_by_key(TermPlan::postings);
        let mut required = Vec::new();
        let mut excluded = Vec::new();
        // Products are nearly every document: excluding the few vendors is
        // cheaper than intersecting with the "product" posting list.
        match q.kind {
            Kind::Product => excluded.push(Term::from_field_text(f.kind, KIND_VENDOR)),
            Kind::Vendor => {
                required.push(Required::Term(Term::from_field_text(f.kind, KIND_VENDOR)))
            }
        }
        if let Some(c) = &q.category {
            required.push(Required::Term(Term::from_field_text(f.category, c)));
        }
        if let Some(v) = &q.vendor_id {
            required.push(Required::Term(Term::from_field_text(f.vendor_id, v)));
        }
        if let Some(v) = &q.vendor_kind {
            required.push(Required::Term(Term::from_field_text(f.vendor_kind, v)));
        }
        for tag in &q.tags {
            required.push(Required::Term(Term::from_field_text(f.tags_exact, tag)));
        }
        // A vendor's document carries its own id as `vendor_id`: one term
        // leaves out the vendor and its products.
        for v in &q.exclude_vendors {
            excluded.push(Term::from_field_text(f.vendor_id, v));
        }
        match (q.in_stock, q.kind) {
            // few products are out of stock, and vendors are excluded already
            (Some(true), Kind::Product) => excluded.push(Term::from_field_bool(f.in_stock, false)),
            (Some(s), _) => required.push(Required::Term(Term::from_field_bool(f.in_stock, s))),
            (None, _) => {}
        }
        let radius = match (q.near, q.radius_km) {
            (Some((lat, lng)), Some(km)) => {
                let (lat_range, lng_range) = bounding_box(lat, lng, km);
                Some(Radius {
                    km,
                    lat: lat_range,
                    lng: lng_range,
                })
            }
            _ => None,
        };
        let mut price_range = (q.min_price.is_some() || q.max_price.is_some()).then(|| {
            (
                q.min_price.unwrap_or(i64::MIN),
                q.max_price.unwrap_or(i64::MAX),
            )
        });
        if terms.is_empty() {
            // Without words to drive the search, price and the radius's
            // bounding box are range queries over the columns; with words,
            // they are checked on the (fewer) word matches.
            if let Some((lo, hi)) = price_range.take() {
                let range = RangeQuery::new(
                    Bound::Included(Term::from_field_i64(f.price, lo)),
                    Bound::Included(Term::from_field_i64(f.price, hi)),
                );
                let scoring = EnableScoring::disabled_from_searcher(searcher);
                required.push(Required::Range(range.weight(scoring)?));
            }
            if let Some(r) = &radius {
                let scoring = EnableScoring::disabled_from_searcher(searcher);
                required.push(Required::PlaceRange(
                    f64_range(f.lat, r.lat.0, r.lat.1).weight(scoring)?,
                ));
                if let Some((lo, hi)) = r.lng {
                    let scoring = EnableScoring::disabled_from_searcher(searcher);
                    required.push(Required::PlaceRange(
                        f64_range(f.lng, lo, hi).weight(scoring)?,
                    ));
                }
            }
        }
        let index_order = terms.is_empty()
            && match q.sort {
                Sort::Relevance => true,
                Sort::Distance => q.near.is_none(),
                Sort::PriceAsc | Sort::PriceDesc | Sort::Rating => false,
            };
        Ok(Plan {
            terms: term_plans,
            required,
            excluded,
            near: q.near,
            radius,
            price_range,
            sort: q.sort,
            keep,
            index_order,
        })
    }
}

/// tantivy's BM25 idf.
fn idf(doc_freq: u64, doc_count: u64) -> Score {
    let x = ((doc_count - doc_freq) as Score + 0.5) / (doc_freq as Score + 0.5);
    (1.0 + x).ln()
}

/// Looks up a term's exact word and approximate words in every segment,
/// with the BM25 statistics of the exact word over the whole index.
fn term_plan(
    f: &Fields,
    t: &QueryTerm,
    searcher: &Searcher,
    vocab: Option<&Vocab>,
) -> tantivy::Result<TermPlan> {
    let automaton: Option<Dfa> = (t.prefix || t.distance > 0).then(|| dfa(t));
    let readers = searcher.segment_readers();
    let total_docs: u64 = readers.iter().map(|r| u64::from(r.max_doc())).sum();
    let mut fields = Vec::with_capacity(4);
    for (field, boost) in text_fields(f) {
        // the approximate words, from the index-wide dictionary when it has
        // few of them (else each segment's dictionary is walked)
        let words: Option<Vec<Vec<u8>>> =
            match (&automaton, vocab.and_then(|v| v.words(field, searcher))) {
                (Some(automaton), Some(map)) => {
                    use tantivy_fst::{IntoStreamer, Streamer};
                    let mut stream = map.search(automaton).into_stream();
                    let mut words = Vec::new();
                    while let Some((key, _)) = stream.next() {
                        if key != t.text.as_bytes() {
                            words.push(key.to_vec());
                            if words.len() > MAX_LOOKUPS {
                                break;
                            }
                        }
                    }
                    (words.len() <= MAX_LOOKUPS).then_some(words)
                }
                _ => None,
            };
        let mut segments = Vec::with_capacity(readers.len());
        let mut doc_freq = 0u64;
        let mut total_tokens = 0u64;
        let mut any_approx = false;
        for reader in readers {
            let inverted = reader.inverted_index(field)?;
            let tokens = inverted.total_num_tokens();
            total_tokens += tokens;
            let dict = inverted.terms();
            let exact = dict.get(t.text.as_bytes())?;
            doc_freq += exact.as_ref().map_or(0, |i| u64::from(i.doc_freq));
            let mut approx = Vec::new();
            match (&words, &automaton) {
                (Some(words), _) => {
                    for w in words {
                        if let Some(info) = dict.get(w)? {
                            approx.push(info);
                        }
                    }
                }
                (None, Some(automaton)) => {
                    let mut stream = dict.search(automaton).into_stream()?;
                    while stream.advance() {
                        if stream.key() != t.text.as_bytes() {
                            approx.push(stream.value().clone());
                        }
                    }
                }
                (None, None) => {}
            }
            any_approx |= !approx.is_empty();
            segments.push(SegmentTerms {
                exact,
                approx,
                tokens,
            });
        }
        let total_docs = total_docs.max(doc_freq);
        let avg_fieldnorm = if total_docs == 0 {
            0.0
        } else {
            total_tokens as Score / total_docs as Score
        };
        let weight = Bm25Weight::for_one_term_without_explain(doc_freq, total_docs, avg_fieldnorm)
            .boost_by(boost);
        fields.push(FieldPlan {
            field,
            weight,
            weight_scale: idf(doc_freq, total_docs) * (1.0 + K1) * boost,
            avg_fieldnorm,
            bonus: any_approx.then_some(boost * FUZZY_WEIGHT),
            segments,
        });
    }
    Ok(TermPlan { fields })
}

// ------------------------------------------------------------ execution

/// The exact word's posting list in one field of a segment, walked block by
/// block, scored.
struct Scored<'p> {
    block: BlockSegmentPostings,
    /// Position in the loaded block.
    cur: usize,
    weight: &'p Bm25Weight,
    norms: FieldNormReader,
    /// The same field lengths, in the segment's cached rows (at `.1`).
    rows: Option<(Arc<SegmentColumns>, usize)>,
    bound: BlockBound,
}

/// Turns the best entry the index recorded for a posting block into an
/// upper bound of the block's scores at query time.
///
/// The index records, per full block, the (field length, term frequency)
/// of its entry with the highest BM25 saturation `tf / (tf + n(len))`,
/// `n(len) = k1 (1 - b + b len / avg)`, computed with the segment's own
/// average length `a_w` when the segment was written. Queries use the
/// index-wide average `a_q`. With `F` that recorded maximum and
/// `r = a_w / a_q`, every entry of the block has, at query time,
/// saturation ≤ `F` when `r ≥ 1` (every `n` grows) and
/// ≤ `F / (F + r (1 - F))` otherwise (since `n_q ≥ r n_w` and
/// `n_w ≥ tf (1 - F) / F`).
struct BlockBound {
    /// A BM25 weight with the segment's average length `a_w` and a known
    /// multiplier ([`Self::writer_scale`]): reads back `F` (made when
    /// first needed).
    writer: Option<Bm25Weight>,
    writer_avg: Score,
    writer_scale: Score,
    ratio: Score,
    /// The query weight's multiplier.
    query_scale: Score,
}

impl Scored<'_> {
    #[inline]
    fn doc(&self) -> DocId {
        self.block
            .docs()
            .get(self.cur)
            .copied()
            .unwrap_or(TERMINATED)
    }

    /// The first document at or after `target` (never moves backwards).
    fn seek(&mut self, target: DocId) -> DocId {
        let d = self.doc();
        if d >= target {
            return d;
        }
        let docs = self.block.docs();
        if docs.last().is_some_and(|&last| last >= target) {
            self.cur = docs.partition_point(|&x| x < target);
            return docs[self.cur];
        }
        self.block.seek(target);
        let docs = self.block.docs();
        self.cur = docs.partition_point(|&x| x < target);
        if self.cur >= docs.len() {
            if docs.is_empty() {
                return TERMINATED;
            }
            self.block.advance();
            self.cur = 0;
        }
        self.doc()
    }

    /// The last document of the loaded block.
    fn block_last(&self) -> DocId {
        self.block.docs().last().copied().unwrap_or(TERMINATED)
    }

    /// An upper bound of all its scores (saturation below 1).
    fn list_bound(&self) -> Score {
        self.bound.query_scale
    }

    /// An upper bound of the scores (boosted BM25) in the loaded block.
    ///
    /// When every document of the block has the word once, the best score
    /// is the shortest field's at any average length, and the entry the
    /// index recorded is that one (adjacent field lengths are far apart in
    /// f32 for the lengths our fields have), so the bound is that entry's
    /// score under the query's weight: computed like the scores themselves,
    /// exact, and equal to the best score of the block, not above it —
    /// blocks that can only tie the page's last hit are skipped.
    fn block_bound(&mut self) -> Score {
        if self.block.freqs().iter().all(|&tf| tf == 1) {
            return self.block.block_max_score(&self.norms, self.weight);
        }
        let b = &mut self.bound;
        let writer_avg = b.writer_avg;
        let writer = b
            .writer
            .get_or_insert_with(|| Bm25Weight::for_one_term_without_explain(0, 0, writer_avg));
        let recorded = self.block.block_max_score(&self.norms, writer) / b.writer_scale;
        if !(0.0..=1.0).contains(&recorded) {
            return b.query_scale;
        }
        let saturation = if b.ratio >= 1.0 {
            recorded
        } else {
            recorded / (recorded + b.ratio * (1.0 - recorded))
        };
        b.query_scale * (saturation * (1.0 + BOUND_SLACK)).min(1.0)
    }

    /// Sets the bits of its documents in `[start, end)` (only those in
    /// `mask`, if any) in `slot.exact` and records their term frequencies
    /// for scoring. With `prune`, the documents of a posting block whose
    /// best score cannot lift any document past the page's last hit are
    /// left out, and the bound of each block kept is recorded.
    #[inline]
    fn collect(
        &mut self,
        start: DocId,
        end: DocId,
        mask: &Bits,
        slot: &mut Slot,
        range: &mut (usize, usize),
        prune: Option<&Prune>,
    ) {
        if self.seek(start) >= end {
            return;
        }
        let Slot {
            exact: bits,
            postings,
            len,
            blocks,
            ..
        } = slot;
        let mut n = *len;
        loop {
            let from = self.cur;
            let to = from + self.block.docs()[from..].partition_point(|&d| d < end);
            let keep_block = match prune {
                Some(p) if to > from => {
                    let best = self.block_bound() + p.bonus;
                    let keep = p.can_beat(best);
                    if keep {
                        blocks.push(((self.block.docs()[to - 1] - start) as u16, best));
                    }
                    keep
                }
                _ => true,
            };
            let docs = self.block.docs();
            if keep_block && to > from {
                let freqs = self.block.freqs();
                range.0 = range.0.min(((docs[from] - start) / 64) as usize);
                for (&d, &tf) in docs[from..to].iter().zip(&freqs[from..to]) {
                    let i = d - start;
                    let (w, shift) = ((i / 64) as usize, i % 64);
                    // without branching: keep it if the mask has it
                    let keep = (mask[w] >> shift) & 1;
                    bits[w] |= keep << shift;
                    postings[n] = (i as u16, tf);
                    n += keep as usize;
                }
                range.1 = range.1.max(((docs[to - 1] - start) / 64) as usize + 1);
            }
            self.cur = to;
            if to < docs.len() || docs.is_empty() {
                break;
            }
            self.block.advance();
            self.cur = 0;
        }
        *len = n;
    }

    /// Adds BM25 + `bonus` to the scores of the recorded postings in `only`.
    #[inline]
    fn score(
        &self,
        start: DocId,
        postings: &[(u16, u32)],
        only: &Bits,
        bonus: Score,
        scores: &mut [Score; WINDOW as usize],
    ) {
        let rows = self.rows.as_ref().map(|(c, k)| (&c.rows[..], *k));
        for &(i, tf) in postings {
            if only[usize::from(i / 64)] & (1 << (i % 64)) != 0 {
                let doc = start + DocId::from(i);
                let norm = match rows {
                    Some((rows, k)) => rows[doc as usize][k],
                    None => self.norms.fieldnorm_id(doc),
                };
                scores[usize::from(i)] += self.weight.score(norm, tf) + bonus;
            }
        }
    }
}

/// The approximate words of a term in one field of a segment.
// Few of these live per query; boxing the postings would add a pointer chase
// to every posting read in the window loop.
#[allow(clippy::large_enum_variant)]
enum Approx {
    Docs(SegmentPostings),
    /// Many approximate words, gathered.
    Bits {
        bits: Vec<u64>,
        next: DocId,
    },
}

fn next_set_bit(bits: &[u64], from: DocId) -> DocId {
    let mut w = (from / 64) as usize;
    if w >= bits.len() {
        return TERMINATED;
    }
    let mut word = bits[w] & (!0u64 << (from % 64));
    loop {
        if word != 0 {
            return (w as u32) * 64 + word.trailing_zeros();
        }
        w += 1;
        if w >= bits.len() {
            return TERMINATED;
        }
        word = bits[w];
    }
}

/// Asks the CPU to start loading `v[i]` (no effect elsewhere than x86-64).
#[inline(always)]
fn prefetch<T>(v: &[T], i: usize) {
    #[cfg(target_arch = "x86_64")]
    if let Some(x) = v.get(i) {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // SAFETY: SSE is part of the x86-64 baseline, and a prefetch of a
        // valid address has no effect on memory.
        unsafe { _mm_prefetch::<_MM_HINT_T0>((x as *const T).cast()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (v, i);
}

/// The 64 bits of `bits` from bit `from` on (zeros past the end).
#[inline]
fn bits_at(bits: &[u64], from: u32) -> u64 {
    let (i, o) = ((from / 64) as usize, from % 64);
    let lo = bits.get(i).copied().unwrap_or(0) >> o;
    if o == 0 {
        lo
    } else {
        lo | (bits.get(i + 1).copied().unwrap_or(0) << (64 - o))
    }
}

fn seek_postings(p: &mut SegmentPostings, target: DocId) -> DocId {
    let d = p.doc();
    if d >= target {
        d
    } else {
        p.seek(target)
    }
}

impl Approx {
    /// The first document at or after `target` (never moves backwards).
    fn seek(&mut self, target: DocId) -> DocId {
        match self {
            Approx::Docs(postings) => seek_postings(postings, target),
            Approx::Bits { bits, next } => {
                if *next < target {
                    *next = next_set_bit(bits, target);
                }
                *next
            }
        }
    }

    /// Sets the bits of its documents in `[start, end)` (only those in
    /// `mask`, if any).
    fn collect(
        &mut self,
        start: DocId,
        end: DocId,
        mask: &Bits,
        bits: &mut Bits,
        range: &mut (usize, usize),
    ) {
        match self {
            Approx::Docs(postings) => {
                let mut d = seek_postings(postings, start);
                if d < end {
                    range.0 = range.0.min(((d - start) / 64) as usize);
                }
                while d < end {
                    let i = d - start;
                    range.1 = range.1.max((i / 64) as usize + 1);
                    bits[(i / 64) as usize] |= mask[(i / 64) as usize] & (1u64 << (i % 64));
                    d = postings.advance();
                }
            }
            Approx::Bits { bits: all, next } => {
                let n = end - start;
                *range = (0, range.1.max(n.div_ceil(64) as usize));
                for (w, out) in bits.iter_mut().enumerate().take(n.div_ceil(64) as usize) {
                    let lo = w as u32 * 64;
                    let mut word = bits_at(all, start + lo);
                    if n - lo < 64 {
                        word &= (1u64 << (n - lo)) - 1;
                    }
                    *out |= word & mask[w];
                }
                *next = next_set_bit(all, end);
            }
        }
    }
}

/// What a window's collection knows once only better hits matter: the
/// score to beat and every field's bound in the window (see
/// [`window_bound`]).
struct Prune<'a> {
    threshold: Score,
    slot_bounds: &'a [(Score, Score)],
    /// The slot being collected, and its field's bonus.
    slot: usize,
    bonus: Score,
}

impl Prune<'_> {
    /// Whether a document whose contribution in this slot is at most
    /// `best` can beat the threshold, given what the other slots can add
    /// (summed in the order of the scores, so f32 rounding matches).
    fn can_beat(&self, best: Score) -> bool {
        let mut bound: Score = 0.0;
        for (j, &(exact, approx)) in self.slot_bounds.iter().enumerate() {
            bound += if j == self.slot {
                best
            } else {
                exact.max(approx)
            };
        }
        bound > self.threshold
    }
}

struct FieldRun<'p> {
    scored: Option<Scored<'p>>,
    approx: Vec<Approx>,
    bonus: Option<Score>,
}

struct TermRun<'p> {
    fields: Vec<FieldRun<'p>>,
}

impl TermRun<'_> {
    fn seek(&mut self, target: DocId) -> DocId {
        let mut first = TERMINATED;
        for f in &mut self.fields {
            if let Some(s) = &mut f.scored {
                first = first.min(s.seek(target));
            }
            for a in &mut f.approx {
                first = first.min(a.seek(target));
            }
        }
        first
    }

    /// Collects the term's postings in `[start, end)` (only documents in
    /// `mask`, if any) into its fields' slots, the first of which is slot
    /// `first` of the window; sets its matches in `term`. With a
    /// threshold, leaves out posting blocks that cannot beat it (see
    /// [`Scored::collect`]) and lowers each field's exact bound in
    /// `slot_bounds` to the best block it kept.
    #[allow(clippy::too_many_arguments)]
    fn collect(
        &mut self,
        start: DocId,
        end: DocId,
        mask: &Bits,
        slots: &mut [Slot],
        first: usize,
        threshold: Option<Score>,
        slot_bounds: &mut [(Score, Score)],
        term: &mut Bits,
    ) {
        for (j, (f, slot)) in self.fields.iter_mut().zip(slots).enumerate() {
            let (lo, hi) = slot.range;
            slot.exact[lo..hi].fill(0);
            slot.any[lo..hi].fill(0);
            slot.len = 0;
            slot.blocks.clear();
            slot.cursor = 0;
            let mut range = (WORDS, 0);
            if let Some(s) = &mut f.scored {
                let prune = threshold.map(|threshold| Prune {
                    threshold,
                    slot_bounds,
                    slot: first + j,
                    bonus: f.bonus.unwrap_or(0.0),
                });
                s.collect(start, end, mask, slot, &mut range, prune.as_ref());
                if threshold.is_some() {
                    // the window bound of a dense list is its list bound;
                    // the blocks read give the real one
                    let kept = slot.blocks.iter().map(|b| b.1).fold(0.0, Score::max);
                    let exact = &mut slot_bounds[first + j].0;
                    *exact = exact.min(kept);
                }
            }
            for a in &mut f.approx {
                a.collect(start, end, mask, &mut slot.any, &mut range);
            }
            slot.range = if range.0 < range.1 { range } else { (0, 0) };
            let (lo, hi) = slot.range;
            for ((any, exact), t) in slot.any[lo..hi]
                .iter_mut()
                .zip(&slot.exact[lo..hi])
                .zip(&mut term[lo..hi])
            {
                *any |= *exact;
                *t |= *any;
            }
        }
    }

    /// Adds the term's scores, for the documents in `only`, in the order
    /// [`window_bound`] assumes: per field, once, BM25 + bonus or the bonus.
    fn score(
        &self,
        start: DocId,
        slots: &[Slot],
        only: &Bits,
        scores: &mut [Score; WINDOW as usize],
    ) {
        for (f, slot) in self.fields.iter().zip(slots) {
            let bonus = f.bonus.unwrap_or(0.0);
            if let Some(s) = &f.scored {
                s.score(start, &slot.postings[..slot.len], only, bonus, scores);
            }
            if f.bonus.is_some() {
                for w in slot.range.0..slot.range.1 {
                    let mut word = slot.any[w] & !slot.exact[w] & only[w];
                    while word != 0 {
                        scores[w * 64 + word.trailing_zeros() as usize] += bonus;
                        word &= word - 1;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
thread_local! {
    /// Set by tests: read every window and offer every match (the reference
    /// that skipping must agree with).
    pub(crate) static EXHAUSTIVE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

#[inline]
fn exhaustive() -> bool {
    #[cfg(test)]
    return EXHAUSTIVE.get();
    #[cfg(not(test))]
    false
}

/// Window buffers, kept per thread between searches (the scores are all
/// zero between windows).
struct Scratch {
    scores: Box<[Score; WINDOW as usize]>,
    slots: Vec<Slot>,
    /// Window positions of the candidates, and their distances.
    cands: Vec<u16>,
    dists: Box<[Option<f64>; WINDOW as usize]>,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch {
        scores: Box::new([0.0; WINDOW as usize]),
        slots: Vec::new(),
        cands: Vec::with_capacity(WINDOW as usize),
        dists: Box::new([None; WINDOW as usize]),
    });
}

impl Slot {
    fn new() -> Slot {
        Slot {
            exact: [0; WORDS],
            any: [0; WORDS],
            postings: vec![(0, 0); WINDOW as usize].into_boxed_slice(),
            len: 0,
            blocks: Vec::new(),
            cursor: 0,
            range: (0, 0),
        }
    }

    /// Empties its bits.
    fn clear(&mut self) {
        let (lo, hi) = self.range;
        self.exact[lo..hi].fill(0);
        self.any[lo..hi].fill(0);
        self.range = (0, 0);
        self.len = 0;
    }
}

/// One window's postings of one term in one field.
struct Slot {
    /// Documents with the exact word.
    exact: Bits,
    /// Documents with the exact word or an approximate one.
    any: Bits,
    /// (window position, term frequency) of the exact word: the first
    /// `len` (room for a whole window).
    postings: Box<[(u16, u32)]>,
    len: usize,
    /// When pruning: per posting block collected, its last window position
    /// and the best contribution of its documents (BM25 bound + bonus), in
    /// window order; `cursor` is where [`doc_bound`] is in them.
    blocks: Vec<(u16, Score)>,
    cursor: usize,
    /// The words of the window it has bits in (zero elsewhere).
    range: (usize, usize),
}

// As for `Approx`: unboxed so the window loop reads postings directly.
#[allow(clippy::large_enum_variant)]
enum Filter {
    Postings(SegmentPostings),
    Scorer(Box<dyn Scorer>),
    /// One bit per document of the segment.
    Bits {
        bits: Vec<u64>,
        next: DocId,
    },
}

impl Filter {
    fn seek(&mut self, target: DocId) -> DocId {
        match self {
            Filter::Postings(p) => seek_postings(p, target),
            Filter::Scorer(s) => {
                let d = s.doc();
                if d >= target {
                    d
                } else {
                    s.seek(target)
                }
            }
            Filter::Bits { bits, next } => {
                if *next < target {
                    *next = next_set_bit(bits, target);
                }
                *next
            }
        }
    }

    /// Sets the bits of this filter's documents in `[start, end)`.
    fn fill(&mut self, start: DocId, end: DocId, out: &mut [u64; WORDS]) {
        if let Filter::Bits { bits, next } = self {
            let n = end - start;
            for (w, o) in out.iter_mut().enumerate().take(n.div_ceil(64) as usize) {
                let lo = w as u32 * 64;
                let mut word = bits_at(bits, start + lo);
                if n - lo < 64 {
                    word &= (1u64 << (n - lo)) - 1;
                }
                *o |= word;
            }
            *next = next_set_bit(bits, end);
            return;
        }
        let mut d = self.seek(start);
        while d < end {
            let i = d - start;
            out[(i / 64) as usize] |= 1 << (i % 64);
            d = match self {
                Filter::Postings(p) => p.advance(),
                Filter::Scorer(s) => s.advance(),
                Filter::Bits { .. } => unreachable!("handled above"),
            };
        }
    }
}

/// A matching document with what it is sorted by.
#[derive(Debug, Clone)]
pub(crate) struct Candidate {
    pub addr: DocAddress,
    pub score: Score,
    pub distance: Option<f64>,
    pub price: Option<i64>,
    pub rating: Option<f64>,
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

/// Result order: `Less` comes first. Ties are broken by relevance, then
/// index order.
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

/// A candidate in the top-k heap: the greatest is the last of the page.
struct Ranked(Candidate, Sort);

impl PartialEq for Ranked {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Ranked {}
impl PartialOrd for Ranked {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Ranked {
    fn cmp(&self, other: &Self) -> Ordering {
        compare(self.1, &self.0, &other.0)
    }
}

/// The first `keep` matches seen, in result order.
struct TopK {
    sort: Sort,
    keep: usize,
    heap: BinaryHeap<Ranked>,
}

impl TopK {
    fn full(&self) -> bool {
        self.heap.len() >= self.keep
    }

    /// The last candidate of a full page.
    fn last(&self) -> Option<&Candidate> {
        if self.full() {
            self.heap.peek().map(|r| &r.0)
        } else {
            None
        }
    }

    fn offer(&mut self, c: Candidate) {
        if self.keep == 0 {
            return;
        }
        if self.heap.len() < self.keep {
            self.heap.push(Ranked(c, self.sort));
        } else if let Some(mut last) = self.heap.peek_mut() {
            if compare(self.sort, &c, &last.0) == Ordering::Less {
                *last = Ranked(c, self.sort);
            }
        }
    }

    fn into_sorted(self) -> Vec<Candidate> {
        self.heap
            .into_sorted_vec()
            .into_iter()
            .map(|r| r.0)
            .collect()
    }
}

/// What a search found.
pub(crate) struct Found {
    pub total: u64,
    /// False when counting stopped at [`TRACK_TOTAL_HITS`]: `total` and the
    /// facets are then lower bounds.
    pub total_exact: bool,
    pub facets: BTreeMap<String, u64>,
    /// The first `keep` matches in order.
    pub top: Vec<Candidate>,
}

/// Reads one value of a column; `None` when the document has none.
#[inline]
fn first<T>(column: &Option<Column<T>>, doc: DocId) -> Option<T>
where
    T: PartialOrd + Copy + std::fmt::Debug + Send + Sync + 'static,
{
    value(column.as_ref()?, doc)
}

#[inline]
fn value<T>(c: &Column<T>, doc: DocId) -> Option<T>
where
    T: PartialOrd + Copy + std::fmt::Debug + Send + Sync + 'static,
{
    match &c.index {
        ColumnIndex::Full => Some(c.values.get_val(doc)),
        _ => c.first(doc),
    }
}

struct Collect<'p> {
    plan: &'p Plan,
    total: u64,
    /// Every match so far was counted.
    exact: bool,
    /// Nothing further can change the result.
    stopped: bool,
    facets: BTreeMap<String, u64>,
    top: TopK,
    /// The box of [`Collect::update_nearer`].
    nearer: Option<Radius>,
}

/// Per-segment columns the query reads (`None` when absent from the
/// segment or not needed).
struct Columns {
    cached: Option<Arc<SegmentColumns>>,
    lat: Option<Column<f64>>,
    lng: Option<Column<f64>>,
    price: Option<Column<i64>>,
    rating: Option<Column<f64>>,
    category: Option<StrColumn>,
    category_counts: Vec<u64>,
}

impl Collect<'_> {
    /// The score a document must beat to enter the page, once skipping
    /// unread windows is allowed (relevance order, counting over).
    fn threshold(&self) -> Option<Score> {
        if self.exact || self.plan.sort != Sort::Relevance || exhaustive() {
            return None;
        }
        self.top.last().map(|c| c.score)
    }

    /// Whether the document is within the radius (and, once only nearer
    /// documents can enter the page, within that distance); with its
    /// distance when the query has a place. `Err` when it cannot match.
    #[inline]
    fn locate(&self, doc: DocId, cols: &Columns) -> Result<Option<f64>, ()> {
        let Some(near) = self.plan.near else {
            return Ok(None);
        };
        let (lat, lng) = match &cols.cached {
            Some(c) => (c.lat[doc as usize], c.lng[doc as usize]),
            None => (
                first(&cols.lat, doc).unwrap_or(f64::NAN),
                first(&cols.lng, doc).unwrap_or(f64::NAN),
            ),
        };
        if lat.is_nan() || lng.is_nan() {
            // no place: only matches without a radius, and sorts last
            return match (&self.plan.radius, &self.nearer) {
                (None, None) => Ok(None),
                _ => Err(()),
            };
        }
        for r in [&self.plan.radius, &self.nearer].into_iter().flatten() {
            let in_box = lat >= r.lat.0
                && lat <= r.lat.1
                && r.lng.is_none_or(|(lo, hi)| lng >= lo && lng <= hi);
            if !in_box {
                return Err(());
            }
        }
        let d = haversine_km(near, (lat, lng));
        match &self.plan.radius {
            Some(r) if d > r.km => Err(()),
            _ => Ok(Some(d)),
        }
    }

    /// Nearest first, once counting is over and the page full: only what is
    /// within the distance of the page's last hit can still enter it.
    fn update_nearer(&mut self) {
        let plan = self.plan;
        let (Sort::Distance, Some((lat, lng)), false) = (plan.sort, plan.near, self.exact) else {
            return;
        };
        let Some(km) = self.top.last().and_then(|c| c.distance) else {
            return;
        };
        if self.nearer.is_some_and(|r| r.km == km) {
            return;
        }
        let (lat_range, lng_range) = bounding_box(lat, lng, km);
        self.nearer = Some(Radius {
            km,
            lat: lat_range,
            lng: lng_range,
        });
    }

    /// Offers a located document of the window's intersection; returns
    /// false to stop.
    #[inline]
    fn offer(
        &mut self,
        segment: SegmentOrdinal,
        doc: DocId,
        score: Score,
        distance: Option<f64>,
        cols: &mut Columns,
    ) -> bool {
        let plan = self.plan;
        let price = first(&cols.price, doc);
        if let Some((lo, hi)) = plan.price_range {
            match price {
                Some(p) if lo <= p && p <= hi => {}
                _ => return true,
            }
        }
        if self.total < TRACK_TOTAL_HITS {
            self.total += 1;
            let ord = match cols.cached.as_deref() {
                Some(cached) if !cached.rows.is_empty() => cached.category(doc),
                _ => cols
                    .category
                    .as_ref()
                    .and_then(|col| value(col.ords(), doc)),
            };
            if let Some(n) = ord.and_then(|o| cols.category_counts.get_mut(o as usize)) {
                *n += 1;
            }
        } else {
            self.exact = false;
            // nothing left to rank, or nothing can rank before the page
            if plan.keep == 0 || (plan.index_order && self.top.full()) {
                self.stopped = true;
                return false;
            }
        }
        self.top.offer(Candidate {
            addr: DocAddress::new(segment, doc),
            score,
            distance,
            price,
            rating: first(&cols.rating, doc),
        });
        self.update_nearer();
        true
    }

    fn harvest_facets(&mut self, cols: &Columns) {
        let Some(col) = &cols.category else {
            return;
        };
        let mut name = String::new();
        for (ord, &count) in cols.category_counts.iter().enumerate() {
            if count == 0 {
                continue;
            }
            name.clear();
            match col.ord_to_str(ord as u64, &mut name) {
                Ok(true) => *self.facets.entry(name.clone()).or_insert(0) += count,
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "reading category dictionary"),
            }
        }
    }
}

/// Runs `plan` over every segment of `searcher`.
pub(crate) fn execute(
    plan: &Plan,
    searcher: &Searcher,
    cache: &ColumnCache,
) -> tantivy::Result<Found> {
    let mut c = Collect {
        plan,
        total: 0,
        exact: true,
        stopped: false,
        facets: BTreeMap::new(),
        top: TopK {
            sort: plan.sort,
            keep: plan.keep,
            heap: BinaryHeap::with_capacity(plan.keep.min(4096)),
        },
        nearer: None,
    };
    for (ord, reader) in searcher.segment_readers().iter().enumerate() {
        SCRATCH.with_borrow_mut(|scratch| {
            run_segment(
                &mut c,
                ord as SegmentOrdinal,
                reader,
                cache.get(reader),
                scratch,
            )
        })?;
        if c.stopped {
            break;
        }
    }
    Ok(Found {
        total: c.total,
        total_exact: c.exact,
        facets: c.facets,
        top: c.top.into_sorted(),
    })
}

/// The sources of one term in one segment; `None` when the term matches
/// nothing there.
fn term_run<'p>(
    plan: &'p TermPlan,
    ord: usize,
    reader: &SegmentReader,
    cached: Option<&Arc<SegmentColumns>>,
) -> tantivy::Result<Option<TermRun<'p>>> {
    let mut fields = Vec::with_capacity(plan.fields.len());
    let mut any = false;
    let max_doc = reader.max_doc();
    for fp in &plan.fields {
        let seg = &fp.segments[ord];
        let inverted = reader.inverted_index(fp.field)?;
        let scored = match &seg.exact {
            Some(info) => {
                let block = inverted
                    .read_block_postings_from_terminfo(info, IndexRecordOption::WithFreqs)?;
                let writer_avg = seg.tokens as Score / max_doc as Score;
                Some(Scored {
                    block,
                    cur: 0,
                    weight: &fp.weight,
                    norms: match cached.and_then(|c| c.norms.iter().find(|n| n.0 == fp.field)) {
                        Some((_, norms)) => norms.clone(),
                        None => reader.get_fieldnorms_reader(fp.field)?,
                    },
                    rows: cached.and_then(|c| {
                        let k = c.norms.iter().position(|n| n.0 == fp.field)?;
                        (!c.rows.is_empty()).then(|| (c.clone(), k))
                    }),
                    bound: BlockBound {
                        // idf(0, 0) = ln 2
                        writer: None,
                        writer_avg,
                        writer_scale: idf(0, 0) * (1.0 + K1),
                        ratio: writer_avg / fp.avg_fieldnorm,
                        query_scale: fp.weight_scale,
                    },
                })
            }
            None => None,
        };
        let mut approx = Vec::new();
        if seg.approx.len() > MAX_APPROX_LISTS {
            let mut bits = vec![0u64; max_doc.div_ceil(64) as usize];
            for info in &seg.approx {
                let mut p = inverted.read_postings_from_terminfo(info, IndexRecordOption::Basic)?;
                let mut d = p.doc();
                while d != TERMINATED {
                    bits[(d / 64) as usize] |= 1 << (d % 64);
                    d = p.advance();
                }
            }
            let next = next_set_bit(&bits, 0);
            approx.push(Approx::Bits { bits, next });
        } else {
            for info in &seg.approx {
                approx.push(Approx::Docs(
                    inverted.read_postings_from_terminfo(info, IndexRecordOption::Basic)?,
                ));
            }
        }
        any |= scored.is_some() || !approx.is_empty();
        fields.push(FieldRun {
            scored,
            approx,
            bonus: fp.bonus,
        });
    }
    Ok(any.then_some(TermRun { fields }))
}

/// The best score any document in `[start, end)` can reach, accumulated in
/// the order and precision of the scores; shrinks `end` to the loaded
/// posting blocks of the scored lists so their block bounds apply, and
/// records per field (slot) the best contribution of an exact occurrence
/// (BM25 bound + bonus) and of an approximate one (the bonus).
fn window_bound(
    terms: &mut [TermRun<'_>],
    start: DocId,
    end: &mut DocId,
    slot_bounds: &mut [(Score, Score)],
) -> Score {
    // A list whose current block ends in the first half of the window
    // (a dense list: frequent words score little) is bounded by its best
    // possible score instead, so windows stay large.
    let half = start + (*end - start) / 2;
    for t in terms.iter_mut() {
        for f in &mut t.fields {
            if let Some(s) = &mut f.scored {
                if s.seek(start) < *end {
                    let last = s.block_last();
                    if last >= half {
                        *end = (*end).min(last.saturating_add(1));
                    }
                }
            }
        }
    }
    let mut bound: Score = 0.0;
    let fields = terms.iter_mut().flat_map(|t| &mut t.fields);
    for (f, slot) in fields.zip(slot_bounds.iter_mut()) {
        let bonus = f.bonus.unwrap_or(0.0);
        let mut exact: Score = 0.0;
        if let Some(s) = &mut f.scored {
            if s.doc() < *end {
                let best = if s.block_last() >= *end - 1 {
                    s.block_bound()
                } else {
                    s.list_bound()
                };
                exact = best + bonus;
            }
        }
        *slot = (exact, bonus);
        let e = *end;
        if exact > 0.0 {
            bound += exact;
        } else if f.approx.iter_mut().any(|a| a.seek(start) < e) {
            bound += bonus;
        }
    }
    bound
}

/// The best score of the document at window position `i`, from the fields
/// it occurs in: per field, the bound of the posting block that holds it
/// or the bonus of an approximate word (see [`Scored::collect`]). Asked in
/// increasing `i` within a window.
#[inline]
fn doc_bound(slots: &mut [Slot], slot_bounds: &[(Score, Score)], i: u32) -> Score {
    let (w, b) = ((i / 64) as usize, 1u64 << (i % 64));
    let mut bound: Score = 0.0;
    for (slot, &(exact, approx)) in slots.iter_mut().zip(slot_bounds) {
        if w < slot.range.0 || w >= slot.range.1 {
            continue;
        }
        if slot.exact[w] & b != 0 {
            bound += loop {
                match slot.blocks.get(slot.cursor) {
                    Some(&(last, best)) if u32::from(last) >= i => break best,
                    Some(_) => slot.cursor += 1,
                    // no block recorded for it: the field's window bound
                    None => break exact,
                }
            };
        } else if slot.any[w] & b != 0 {
            bound += approx;
        }
    }
    bound
}

/// Drops, 64 documents at a time, those occurring in too few fields to
/// beat `threshold`: a document in `c` fields scores at most the sum of the
/// `c` largest field bounds.
fn drop_by_field_count(
    matched: &mut Bits,
    nw: usize,
    slots: &[Slot],
    slot_bounds: &[(Score, Score)],
    threshold: Score,
) {
    // the three largest field bounds
    let mut best: [Score; 3] = [0.0; 3];
    for &(e, a) in slot_bounds {
        let mut x = e.max(a);
        for b in &mut best {
            if x > *b {
                std::mem::swap(&mut x, b);
            }
        }
    }
    // the sum of the c best, with room for f32 rounding in another order
    let top = |c: usize| best[..c].iter().sum::<Score>() * (1.0 + BOUND_SLACK);
    let need = (1..=3).take_while(|&c| top(c) <= threshold).count();
    if need == 0 {
        return;
    }
    for (w, m) in matched[..nw].iter_mut().enumerate() {
        if *m == 0 {
            continue;
        }
        // documents in at least 1, 2, 3, 4 fields
        let mut at_least = [0u64; 4];
        for slot in slots {
            if w < slot.range.0 || w >= slot.range.1 {
                continue;
            }
            let x = slot.any[w];
            at_least[3] |= at_least[2] & x;
            at_least[2] |= at_least[1] & x;
            at_least[1] |= at_least[0] & x;
            at_least[0] |= x;
        }
        *m &= at_least[need];
    }
}

fn run_segment(
    c: &mut Collect,
    ord: SegmentOrdinal,
    reader: &SegmentReader,
    cached: Option<Arc<SegmentColumns>>,
    scratch: &mut Scratch,
) -> tantivy::Result<()> {
    let plan = c.plan;
    let max_doc = reader.max_doc();
    if max_doc == 0 {
        return Ok(());
    }
    let mut terms = Vec::with_capacity(plan.terms.len());
    for tp in &plan.terms {
        match term_run(tp, ord as usize, reader, cached.as_ref())? {
            Some(t) => terms.push(t),
            None => return Ok(()),
        }
    }
    let mut filters = Vec::with_capacity(plan.required.len());
    for r in &plan.required {
        match r {
            Required::Term(term) => {
                let inverted = reader.inverted_index(term.field())?;
                match inverted.get_term_info(term)? {
                    Some(info) => filters.push(Filter::Postings(
                        inverted.read_postings_from_terminfo(&info, IndexRecordOption::Basic)?,
                    )),
                    None => return Ok(()),
                }
            }
            Required::Range(w) => filters.push(Filter::Scorer(w.scorer(reader, 1.0)?)),
            Required::PlaceRange(w) => {
                if cached.is_none() {
                    filters.push(Filter::Scorer(w.scorer(reader, 1.0)?));
                }
            }
        }
    }
    if let (Some(r), Some(c)) = (&plan.radius, &cached) {
        // the documents placed in the grid cells the radius's box meets
        let mut bits = vec![0u64; max_doc.div_ceil(64) as usize];
        c.grid.cover(r.lat, r.lng, &mut bits);
        let next = next_set_bit(&bits, 0);
        filters.push(Filter::Bits { bits, next });
    }
    let mut excluded = Vec::new();
    for term in &plan.excluded {
        let inverted = reader.inverted_index(term.field())?;
        if let Some(info) = inverted.get_term_info(term)? {
            excluded.push(Filter::Postings(
                inverted.read_postings_from_terminfo(&info, IndexRecordOption::Basic)?,
            ));
        }
    }
    let opened = match &cached {
        Some(c) => c.columns.clone(),
        None => cache::Columns::open(reader)?,
    };
    let categories = opened.category.as_ref().map_or(0, |col| col.num_terms());
    let mut cols = Columns {
        cached,
        lat: opened.lat.filter(|_| plan.near.is_some()),
        lng: opened.lng.filter(|_| plan.near.is_some()),
        price: match (plan.sort, plan.price_range) {
            (Sort::PriceAsc | Sort::PriceDesc, _) | (_, Some(_)) => opened.price,
            _ => None,
        },
        rating: opened.rating.filter(|_| plan.sort == Sort::Rating),
        category: opened.category,
        category_counts: vec![0; categories],
    };
    let alive = reader.alive_bitset();
    let cached = cols.cached.clone();
    let Scratch {
        scores,
        slots,
        cands,
        dists,
    } = scratch;
    let scores: &mut [Score; WINDOW as usize] = scores;
    let wanted: usize = terms.iter().map(|t| t.fields.len()).sum();
    for slot in slots.iter_mut() {
        slot.clear();
    }
    while slots.len() < wanted {
        slots.push(Slot::new());
    }
    let slots = &mut slots[..wanted];
    let mut slot_bounds: Vec<(Score, Score)> = vec![(0.0, 0.0); slots.len()];
    let mut pos: DocId = 0;
    while pos < max_doc {
        // the first document every required part can still match
        let mut start = pos;
        for t in &mut terms {
            start = start.max(t.seek(start));
        }
        for f in &mut filters {
            start = start.max(f.seek(start));
        }
        if start >= max_doc {
            break;
        }
        let mut end = (start + WINDOW).min(max_doc);
        let threshold = c.threshold();
        if let Some(threshold) = threshold {
            if window_bound(&mut terms, start, &mut end, &mut slot_bounds) <= threshold {
                pos = end;
                continue;
            }
        }
        let n = end - start;
        let nw = n.div_ceil(64) as usize;
        // what the filters allow
        let mut matched = [0u64; WORDS];
        for (w, m) in matched.iter_mut().enumerate().take(nw) {
            let lo = w as u32 * 64;
            *m = if n - lo >= 64 {
                !0
            } else {
                (1u64 << (n - lo)) - 1
            };
        }
        for f in &mut filters {
            let mut fb = [0u64; WORDS];
            f.fill(start, end, &mut fb);
            for (m, b) in matched[..nw].iter_mut().zip(fb) {
                *m &= b;
            }
        }
        for e in &mut excluded {
            let mut eb = [0u64; WORDS];
            e.fill(start, end, &mut eb);
            for (m, b) in matched[..nw].iter_mut().zip(eb) {
                *m &= !b;
            }
        }
        // the terms, each only where the previous ones matched
        let mut k = 0;
        for t in &mut terms {
            let fields = t.fields.len();
            let mut tb = [0u64; WORDS];
            t.collect(
                start,
                end,
                &matched,
                &mut slots[k..k + fields],
                k,
                threshold,
                &mut slot_bounds,
                &mut tb,
            );
            k += fields;
            let mut any = 0;
            for (m, b) in matched[..nw].iter_mut().zip(tb) {
                *m &= b;
                any |= *m;
            }
            if any == 0 {
                break;
            }
        }
        if let Some(threshold) = threshold {
            drop_by_field_count(&mut matched, nw, slots, &slot_bounds, threshold);
        }
        // the candidates, with what they read loaded a few ahead
        cands.clear();
        for (w, &m) in matched[..nw].iter().enumerate() {
            let mut word = m;
            while word != 0 {
                cands.push((w as u32 * 64 + word.trailing_zeros()) as u16);
                word &= word - 1;
            }
        }
        let counting = c.total < TRACK_TOTAL_HITS;
        let located = plan.near.is_some();
        let scoring = !terms.is_empty();
        let ahead = |j: usize, cands: &[u16]| {
            if let (Some(&i), Some(cached)) = (cands.get(j + PREFETCH_AHEAD), &cached) {
                let doc = (start + u32::from(i)) as usize;
                if located {
                    prefetch(&cached.lat, doc);
                    prefetch(&cached.lng, doc);
                }
                if counting || scoring {
                    prefetch(&cached.rows, doc);
                }
            }
        };
        // deleted documents, those outside the radius, and those whose
        // fields cannot add up to the page's last score
        let mut kept = 0;
        for j in 0..cands.len() {
            ahead(j, cands);
            let i = cands[j];
            let doc = start + u32::from(i);
            let place = if alive.is_some_and(|a| !a.is_alive(doc))
                || threshold.is_some_and(|t| doc_bound(slots, &slot_bounds, u32::from(i)) <= t)
            {
                Err(())
            } else {
                c.locate(doc, &cols)
            };
            match place {
                Ok(d) => {
                    cands[kept] = i;
                    dists[kept] = d;
                    kept += 1;
                }
                Err(()) => matched[usize::from(i / 64)] &= !(1u64 << (i % 64)),
            }
        }
        cands.truncate(kept);
        if kept == 0 {
            pos = end;
            continue;
        }
        let mut k = 0;
        for t in &terms {
            let fields = t.fields.len();
            t.score(start, &slots[k..k + fields], &matched, scores);
            k += fields;
        }
        let mut go_on = true;
        for j in 0..kept {
            if counting {
                ahead(j, cands);
            }
            let i = usize::from(cands[j]);
            if go_on && !c.offer(ord, start + i as u32, scores[i], dists[j], &mut cols) {
                go_on = false;
            }
            scores[i] = 0.0;
        }
        if !go_on {
            c.stopped = true;
            break;
        }
        pos = end;
    }
    c.harvest_facets(&cols);
    Ok(())
}
