//! Query types and the translation of a [`SearchQuery`] into a tantivy query.
//!
//! Free text is never parsed as query syntax: it is cut to
//! [`MAX_QUERY_CHARS`] characters, split and normalised by the index analyzer
//! and at most [`MAX_QUERY_TERMS`] terms are kept, so no input can produce a
//! parse error.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use levenshtein_automata::{Distance, LevenshteinAutomatonBuilder, DFA, SINK_STATE};
use serde::{Deserialize, Serialize};
use tantivy::tokenizer::TokenStream;

use crate::error::SearchError;
use crate::schema::analyzer;

/// Query text beyond this many characters is ignored.
pub const MAX_QUERY_CHARS: usize = 256;
/// Terms beyond this many are ignored.
pub const MAX_QUERY_TERMS: usize = 16;
/// Largest page size; bigger limits are clamped.
pub const MAX_LIMIT: usize = 1000;
/// Mean earth radius used by the haversine distance.
pub const EARTH_RADIUS_KM: f64 = 6371.0088;

/// What to search for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    #[default]
    Product,
    Vendor,
}

/// Result order. Ties are broken by relevance, then index order.
/// `Distance` without `near` orders by relevance. Missing prices / ratings sort last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sort {
    #[default]
    Relevance,
    Distance,
    PriceAsc,
    PriceDesc,
    Rating,
}

/// A search request. Filters are conjunctive; `tags` must all be present
/// (exact, case-sensitive, like `category`, `vendor_id` and `vendor_kind`).
/// Product-only filters (category, price, in_stock) match no vendor.
/// `radius_km` is ignored without `near`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SearchQuery {
    pub text: String,
    pub kind: Kind,
    /// (lat, lng) in degrees.
    pub near: Option<(f64, f64)>,
    pub radius_km: Option<f64>,
    pub category: Option<String>,
    pub vendor_id: Option<String>,
    pub vendor_kind: Option<String>,
    pub min_price: Option<i64>,
    pub max_price: Option<i64>,
    pub in_stock: Option<bool>,
    pub tags: Vec<String>,
    /// Vendors left out, with their products (e.g. those closed now).
    pub exclude_vendors: Vec<String>,
    pub sort: Sort,
    pub limit: usize,
    /// Number of hits to skip (the cursor is handled by the caller).
    pub offset: usize,
}

impl Default for SearchQuery {
    fn default() -> Self {
        SearchQuery {
            text: String::new(),
            kind: Kind::Product,
            near: None,
            radius_km: None,
            category: None,
            vendor_id: None,
            vendor_kind: None,
            min_price: None,
            max_price: None,
            in_stock: None,
            tags: Vec::new(),
            exclude_vendors: Vec::new(),
            sort: Sort::Relevance,
            limit: 20,
            offset: 0,
        }
    }
}

/// One result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hit {
    pub id: String,
    pub kind: Kind,
    pub name: String,
    /// HTML: the fragment is escaped, matched words are wrapped in `<b>…</b>`.
    pub snippet: String,
    pub score: f32,
    pub distance_km: Option<f64>,
    pub price: Option<i64>,
    pub vendor_id: Option<String>,
    pub vendor_name: Option<String>,
}

/// A page of results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchResults {
    pub hits: Vec<Hit>,
    /// Number of matching documents (after the exact radius check); a lower
    /// bound when `total_exact` is false.
    pub total: u64,
    /// False when counting stopped at [`crate::TRACK_TOTAL_HITS`] matches: there
    /// are more than `total`, and the facets count only the first `total`.
    /// The hits are exact either way.
    pub total_exact: bool,
    /// Category → number of matching documents, over all matches (over the
    /// counted ones when `total_exact` is false).
    pub facets: BTreeMap<String, u64>,
}

impl Default for SearchResults {
    fn default() -> Self {
        SearchResults {
            hits: Vec::new(),
            total: 0,
            total_exact: true,
            facets: BTreeMap::new(),
        }
    }
}

/// One normalised query term.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct QueryTerm {
    pub text: String,
    /// Allowed edits (0, 1 or 2).
    pub distance: u8,
    /// Matches any word starting with (a fuzzy variant of) the term.
    pub prefix: bool,
}

/// Edits allowed for a term of this many characters.
pub(crate) fn fuzzy_distance(chars: usize) -> u8 {
    match chars {
        0..=4 => 0,
        5..=8 => 1,
        _ => 2,
    }
}

/// Splits free text into at most [`MAX_QUERY_TERMS`] normalised terms; the
/// last one is a prefix term if it ends the text (the user is still typing
/// it): "marg" is a prefix, "marg " is not.
pub(crate) fn query_terms(text: &str) -> Vec<QueryTerm> {
    let capped: String = text.chars().take(MAX_QUERY_CHARS).collect();
    let mut analyzer = analyzer();
    let mut stream = analyzer.token_stream(&capped);
    let mut terms: Vec<QueryTerm> = Vec::new();
    let mut last_end = 0;
    while terms.len() < MAX_QUERY_TERMS && stream.advance() {
        let t = stream.token().text.clone();
        if t.is_empty() {
            continue;
        }
        last_end = stream.token().offset_to;
        let distance = fuzzy_distance(t.chars().count());
        terms.push(QueryTerm {
            text: t,
            distance,
            prefix: false,
        });
    }
    // the last word is still being typed only if nothing follows it
    if let Some(last) = terms.last_mut() {
        last.prefix = last_end == capped.len();
    }
    terms
}

/// A Levenshtein DFA as an FST automaton (the same construction tantivy's
/// `FuzzyTermQuery` uses: transpositions cost one edit).
pub(crate) struct Dfa(DFA);

impl tantivy_fst::Automaton for Dfa {
    type State = u32;

    fn start(&self) -> u32 {
        self.0.initial_state()
    }

    fn is_match(&self, state: &u32) -> bool {
        matches!(self.0.distance(*state), Distance::Exact(_))
    }

    fn can_match(&self, state: &u32) -> bool {
        *state != SINK_STATE
    }

    fn accept(&self, state: &u32, byte: u8) -> u32 {
        self.0.transition(*state, byte)
    }
}

/// Whether an indexed token matches a query term, exactly or through the
/// term's automaton (used to highlight fuzzy and prefix matches in snippets).
pub(crate) struct TermMatcher {
    text: String,
    dfa: Option<Dfa>,
}

impl TermMatcher {
    pub(crate) fn matches(&self, token: &str) -> bool {
        if token == self.text {
            return true;
        }
        let Some(Dfa(dfa)) = &self.dfa else {
            return false;
        };
        let mut state = dfa.initial_state();
        for b in token.bytes() {
            state = dfa.transition(state, b);
            if state == SINK_STATE {
                return false;
            }
        }
        matches!(dfa.distance(state), Distance::Exact(_))
    }
}

impl QueryTerm {
    pub(crate) fn matcher(&self) -> TermMatcher {
        TermMatcher {
            text: self.text.clone(),
            dfa: (self.prefix || self.distance > 0).then(|| dfa(self)),
        }
    }
}

pub(crate) fn dfa(t: &QueryTerm) -> Dfa {
    static BUILDERS: [OnceLock<LevenshteinAutomatonBuilder>; 3] =
        [OnceLock::new(), OnceLock::new(), OnceLock::new()];
    let d = t.distance.min(2);
    let builder =
        BUILDERS[usize::from(d)].get_or_init(|| LevenshteinAutomatonBuilder::new(d, true));
    Dfa(if t.prefix {
        builder.build_prefix_dfa(&t.text)
    } else {
        builder.build_dfa(&t.text)
    })
}

/// Degrees of latitude / longitude spanned by `radius_km` around `lat`;
/// `None` for longitude when the box would reach a pole or wrap the antimeridian.
pub(crate) fn bounding_box(lat: f64, lng: f64, radius_km: f64) -> ((f64, f64), Option<(f64, f64)>) {
    let dlat = (radius_km / EARTH_RADIUS_KM).to_degrees();
    let lat_lo = (lat - dlat).max(-90.0);
    let lat_hi = (lat + dlat).min(90.0);
    let lng_range = if lat_lo <= -90.0 || lat_hi >= 90.0 {
        None
    } else {
        // the widest longitude span is at the latitude farthest from the equator
        let max_abs_lat = lat_lo.abs().max(lat_hi.abs()).to_radians();
        let dlng = (radius_km / (EARTH_RADIUS_KM * max_abs_lat.cos())).to_degrees();
        if lng - dlng < -180.0 || lng + dlng > 180.0 || dlng >= 180.0 {
            None
        } else {
            Some((lng - dlng, lng + dlng))
        }
    };
    ((lat_lo, lat_hi), lng_range)
}

/// Great-circle distance in km.
pub fn haversine_km(a: (f64, f64), b: (f64, f64)) -> f64 {
    let (lat1, lng1) = (a.0.to_radians(), a.1.to_radians());
    let (lat2, lng2) = (b.0.to_radians(), b.1.to_radians());
    let dlat = lat2 - lat1;
    let dlng = lng2 - lng1;
    let h = (dlat / 2.0).sin().powi(2) + lat1.cos() * lat2.cos() * (dlng / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_KM * h.sqrt().min(1.0).asin()
}

pub(crate) fn validate(q: &SearchQuery) -> Result<(), SearchError> {
    if let Some((lat, lng)) = q.near {
        if !lat.is_finite() || !lng.is_finite() || lat.abs() > 90.0 || lng.abs() > 180.0 {
            return Err(SearchError::InvalidQuery(format!(
                "near must be a valid (lat, lng), got ({lat}, {lng})"
            )));
        }
    }
    if let Some(r) = q.radius_km {
        if !r.is_finite() || r < 0.0 {
            return Err(SearchError::InvalidQuery(format!(
                "radius_km must be finite and non-negative, got {r}"
            )));
        }
    }
    Ok(())
}

/// Optimal string alignment distance (Levenshtein with adjacent
/// transpositions), as used by the fuzzy queries (the reference the
/// automata are tested against).
#[cfg(test)]
pub(crate) fn edit_distance(a: &[char], b: &[char]) -> usize {
    let (n, m) = (a.len(), b.len());
    let mut d = vec![vec![0usize; m + 1]; n + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=n {
        for j in 1..=m {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = v;
        }
    }
    d[n][m]
}

#[cfg(test)]
impl QueryTerm {
    /// Whether an indexed token matches this term, by brute force (the
    /// reference for [`TermMatcher`]).
    pub(crate) fn matches(&self, token: &str) -> bool {
        if token == self.text {
            return true;
        }
        let q: Vec<char> = self.text.chars().collect();
        let t: Vec<char> = token.chars().collect();
        let d = usize::from(self.distance);
        if self.prefix {
            let lo = q.len().saturating_sub(d);
            let hi = (q.len() + d).min(t.len());
            (lo..=hi).any(|k| k <= t.len() && edit_distance(&q, &t[..k]) <= d)
        } else {
            d > 0 && q.len().abs_diff(t.len()) <= d && edit_distance(&q, &t) <= d
        }
    }
}
