//! Per-segment copies of the columns every match reads, as plain arrays.
//!
//! Reading a tantivy fast field costs a codec decode per value, plus a rank
//! lookup when the column is optional (vendors have no category); the
//! query engine reads the category of every counted match (facets) and,
//! for a radius or a distance sort, the coordinates of every word match. Segments are immutable, so
//! these arrays are built once per segment when a new searcher is warmed
//! (before queries see it) and dropped with the last searcher that uses it.
//! About 28 bytes per document.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use tantivy::columnar::{Column, ColumnIndex, StrColumn};
use tantivy::fieldnorm::FieldNormReader;
use tantivy::index::SegmentId;
use tantivy::schema::Field;
use tantivy::{Searcher, SearcherGeneration, SegmentReader, Warmer};

use crate::schema::{F_CATEGORY, F_LAT, F_LNG, F_PRICE, F_RATING};

/// Per document: the field length ids of the text fields (in the order
/// given to [`ColumnCache::new`], at most [`ROW_NORMS`]) and the category
/// term ordinal + 1 (0: none), little-endian in the last two bytes; what
/// scoring and counting a match read, in one cache line access.
pub(crate) type Row = [u8; 8];
pub(crate) const ROW_NORMS: usize = 4;

impl SegmentColumns {
    #[inline]
    pub(crate) fn category(&self, doc: u32) -> Option<u64> {
        let r = self.rows.get(doc as usize)?;
        u64::from(u16::from_le_bytes([r[6], r[7]])).checked_sub(1)
    }
}

/// Dense per-document values of one segment.
pub(crate) struct SegmentColumns {
    /// See [`Row`]. Empty when the segment has more categories than fit.
    pub rows: Vec<Row>,
    /// Coordinates (NaN: none), the values of the columns.
    pub lat: Vec<f64>,
    pub lng: Vec<f64>,
    /// The documents with a place, by grid cell.
    pub grid: Grid,
    /// Opened once: the columns and the field lengths of the text fields.
    pub columns: Columns,
    pub norms: Vec<(Field, FieldNormReader)>,
}

/// The fast fields a query may read.
#[derive(Clone)]
pub(crate) struct Columns {
    pub category: Option<StrColumn>,
    pub lat: Option<Column<f64>>,
    pub lng: Option<Column<f64>>,
    pub price: Option<Column<i64>>,
    pub rating: Option<Column<f64>>,
}

impl Columns {
    pub(crate) fn open(reader: &SegmentReader) -> tantivy::Result<Columns> {
        let ff = reader.fast_fields();
        Ok(Columns {
            category: ff.str(F_CATEGORY)?,
            lat: ff.column_opt(F_LAT)?,
            lng: ff.column_opt(F_LNG)?,
            price: ff.column_opt(F_PRICE)?,
            rating: ff.column_opt(F_RATING)?,
        })
    }
}

/// A vector of `n` copies of `fill` in transparent huge pages where the
/// system allows them (random reads of large arrays miss the TLB on every
/// 4 KiB page).
pub(crate) fn huge_vec<T: Copy>(n: usize, fill: T) -> Vec<T> {
    let mut v: Vec<T> = Vec::with_capacity(n);
    #[cfg(target_os = "linux")]
    {
        let bytes = n * std::mem::size_of::<T>();
        if bytes >= 2 << 20 {
            let page = 4096usize;
            let start = v.as_ptr() as usize;
            let aligned = start.next_multiple_of(page);
            let len = (start + bytes).saturating_sub(aligned) / page * page;
            if len > 0 {
                // SAFETY: advice on whole pages of this vector's own
                // allocation; it changes how they are backed, not their
                // contents.
                unsafe {
                    libc::madvise(aligned as *mut libc::c_void, len, libc::MADV_HUGEPAGE);
                }
            }
        }
    }
    v.resize(n, fill);
    v
}

fn dense(column: Option<Column<f64>>, max_doc: u32) -> Vec<f64> {
    let mut out = huge_vec(max_doc as usize, f64::NAN);
    let Some(column) = column else {
        return out;
    };
    match &column.index {
        ColumnIndex::Full => column.values.get_range(0, &mut out),
        _ => {
            for (doc, v) in out.iter_mut().enumerate() {
                if let Some(x) = column.first(doc as u32) {
                    *v = x;
                }
            }
        }
    }
    out
}

/// Cells per side of a segment's [`Grid`].
const GRID_CELLS: usize = 256;

/// The documents of a segment bucketed by place: a regular grid over the
/// bounding box of their coordinates, each cell listing its documents in
/// index order. A radius query takes the documents of the cells its
/// bounding box touches (a superset of the matches, checked exactly after)
/// instead of reading the coordinates of every word match.
pub(crate) struct Grid {
    lat0: f64,
    lng0: f64,
    /// Cell height and width in degrees.
    dlat: f64,
    dlng: f64,
    /// Documents of cell `c`: `docs[offsets[c]..offsets[c + 1]]`.
    offsets: Vec<u32>,
    docs: Vec<u32>,
}

impl Grid {
    fn build(lat: &[f64], lng: &[f64]) -> Grid {
        let placed = || {
            lat.iter()
                .zip(lng)
                .enumerate()
                .filter(|(_, (a, b))| a.is_finite() && b.is_finite())
        };
        let (mut lat0, mut lat1, mut lng0, mut lng1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
        for (_, (&a, &b)) in placed() {
            lat0 = lat0.min(a);
            lat1 = lat1.max(a);
            lng0 = lng0.min(b);
            lng1 = lng1.max(b);
        }
        let side = |lo: f64, hi: f64| ((hi - lo) / GRID_CELLS as f64).max(1e-9);
        let mut grid = Grid {
            lat0,
            lng0,
            dlat: side(lat0, lat1),
            dlng: side(lng0, lng1),
            offsets: vec![0; GRID_CELLS * GRID_CELLS + 1],
            docs: Vec::new(),
        };
        let cells: Vec<(u32, u32)> = placed()
            .map(|(doc, (&a, &b))| (doc as u32, grid.cell(a, b) as u32))
            .collect();
        for &(_, c) in &cells {
            grid.offsets[c as usize + 1] += 1;
        }
        for c in 0..GRID_CELLS * GRID_CELLS {
            grid.offsets[c + 1] += grid.offsets[c];
        }
        let mut next = grid.offsets.clone();
        grid.docs = vec![0; cells.len()];
        for (doc, c) in cells {
            grid.docs[next[c as usize] as usize] = doc;
            next[c as usize] += 1;
        }
        grid
    }

    fn index(x: f64, origin: f64, step: f64) -> usize {
        (((x - origin) / step).floor().max(0.0) as usize).min(GRID_CELLS - 1)
    }

    fn cell(&self, lat: f64, lng: f64) -> usize {
        Self::index(lat, self.lat0, self.dlat) * GRID_CELLS + Self::index(lng, self.lng0, self.dlng)
    }

    /// Sets in `bits` (one per document of the segment) the documents of the
    /// cells meeting the box (every longitude when `lng` is `None`).
    pub(crate) fn cover(&self, lat: (f64, f64), lng: Option<(f64, f64)>, bits: &mut [u64]) {
        if self.docs.is_empty() {
            return;
        }
        let rows =
            Self::index(lat.0, self.lat0, self.dlat)..=Self::index(lat.1, self.lat0, self.dlat);
        let cols = match lng {
            Some((lo, hi)) => {
                Self::index(lo, self.lng0, self.dlng)..=Self::index(hi, self.lng0, self.dlng)
            }
            None => 0..=GRID_CELLS - 1,
        };
        for row in rows {
            let from = self.offsets[row * GRID_CELLS + cols.start()] as usize;
            let to = self.offsets[row * GRID_CELLS + cols.end() + 1] as usize;
            for &doc in &self.docs[from..to] {
                bits[(doc / 64) as usize] |= 1 << (doc % 64);
            }
        }
    }
}

/// Checks that a segment's files agree with its `max_doc`, which comes from
/// `meta.json` (a file without a checksum): every field-length table and
/// every column the queries read holds one entry per document, and the
/// deletes cover exactly the segment. tantivy reads these by document id
/// without bounds checks, so a disagreement would panic in our column
/// arrays, in queries, or in its merge threads (which aborts the process).
pub(crate) fn check_segment(reader: &SegmentReader) -> tantivy::Result<()> {
    let max_doc = reader.max_doc();
    let damaged = |what: String| {
        Err(tantivy::TantivyError::DataCorruption(
            tantivy::error::DataCorruption::comment_only(format!(
                "segment {}: {what}, but the segment has {max_doc} documents",
                reader.segment_id().uuid_string()
            )),
        ))
    };
    for (field, entry) in reader.schema().fields() {
        if entry.is_indexed() && entry.has_fieldnorms() {
            let n = reader.get_fieldnorms_reader(field)?.num_docs();
            if n != max_doc {
                return damaged(format!(
                    "field lengths of {:?} for {n} documents",
                    entry.name()
                ));
            }
        }
    }
    let columns = Columns::open(reader)?;
    let counts = [
        (
            F_CATEGORY,
            columns.category.as_ref().map(|c| c.ords().num_docs()),
        ),
        (F_LAT, columns.lat.as_ref().map(Column::num_docs)),
        (F_LNG, columns.lng.as_ref().map(Column::num_docs)),
        (F_PRICE, columns.price.as_ref().map(Column::num_docs)),
        (F_RATING, columns.rating.as_ref().map(Column::num_docs)),
    ];
    for (name, n) in counts {
        if let Some(n) = n.filter(|&n| n != max_doc) {
            return damaged(format!("column {name:?} for {n} documents"));
        }
    }
    if let Some(alive) = reader.alive_bitset() {
        let bits = alive.bitset().max_value();
        if bits != max_doc || reader.num_docs() > max_doc {
            return damaged(format!(
                "deletes for {bits} documents ({} alive)",
                reader.num_docs()
            ));
        }
    }
    Ok(())
}

fn build(reader: &SegmentReader, text_fields: &[Field]) -> tantivy::Result<SegmentColumns> {
    check_segment(reader)?;
    let columns = Columns::open(reader)?;
    let max_doc = reader.max_doc();
    let mut norms = Vec::with_capacity(text_fields.len());
    for &field in text_fields {
        norms.push((field, reader.get_fieldnorms_reader(field)?));
    }
    let rows = match &columns.category {
        Some(col) if col.num_terms() >= usize::from(u16::MAX) => Vec::new(),
        _ if norms.len() > ROW_NORMS => Vec::new(),
        category => {
            let mut rows = huge_vec(max_doc as usize, [0u8; 8]);
            for (doc, row) in rows.iter_mut().enumerate() {
                let doc = doc as u32;
                for (k, (_, n)) in norms.iter().enumerate() {
                    row[k] = n.fieldnorm_id(doc);
                }
                let ord = category
                    .as_ref()
                    .and_then(|c| c.ords().first(doc))
                    .map_or(0, |o| o as u16 + 1);
                row[6..8].copy_from_slice(&ord.to_le_bytes());
            }
            rows
        }
    };
    let lat = dense(columns.lat.clone(), max_doc);
    let lng = dense(columns.lng.clone(), max_doc);
    Ok(SegmentColumns {
        rows,
        grid: Grid::build(&lat, &lng),
        lat,
        lng,
        columns,
        norms,
    })
}

/// The words of the text fields over many segments: a fuzzy or prefix
/// term is expanded by one automaton walk per field over this dictionary,
/// then its few words are looked up in each segment, instead of one walk
/// per field and segment (a walk within two edits costs microseconds).
pub(crate) struct Vocab {
    /// Per text field: every word of every segment in `segments` (and
    /// possibly words no live segment has any more).
    pub fields: Vec<(Field, Arc<tantivy_fst::Map<Vec<u8>>>)>,
    pub segments: HashSet<SegmentId>,
}

impl Vocab {
    /// The words of `field`, if they include those of every segment of
    /// `searcher`.
    pub(crate) fn words(
        &self,
        field: Field,
        searcher: &Searcher,
    ) -> Option<&tantivy_fst::Map<Vec<u8>>> {
        let covered = searcher
            .segment_readers()
            .iter()
            .all(|r| self.segments.contains(&r.segment_id()));
        covered
            .then(|| {
                self.fields
                    .iter()
                    .find(|(f, _)| *f == field)
                    .map(|(_, m)| &**m)
            })
            .flatten()
    }
}

/// `vocab` plus the words of `new` segments.
fn extend_vocab(
    vocab: &Vocab,
    new: &[&SegmentReader],
    text_fields: &[Field],
) -> tantivy::Result<Vocab> {
    use tantivy_fst::{IntoStreamer, Streamer};
    let mut fields = Vec::with_capacity(text_fields.len());
    for &field in text_fields {
        let old = vocab
            .fields
            .iter()
            .find(|(f, _)| *f == field)
            .map(|(_, m)| m);
        let mut added: std::collections::BTreeSet<Vec<u8>> = Default::default();
        for reader in new {
            let inverted = reader.inverted_index(field)?;
            let mut terms = inverted.terms().stream()?;
            while terms.advance() {
                let key = terms.key();
                if !old.is_some_and(|m| m.contains_key(key)) {
                    added.insert(key.to_vec());
                }
            }
        }
        let map = match old {
            Some(m) if added.is_empty() => m.clone(),
            _ => {
                // merge the old words and the added ones, in order
                let mut words: Vec<Vec<u8>> = Vec::new();
                if let Some(m) = old {
                    let mut stream = m.into_stream();
                    while let Some((k, _)) = stream.next() {
                        words.push(k.to_vec());
                    }
                }
                words.extend(added);
                words.sort_unstable();
                words.dedup();
                Arc::new(
                    tantivy_fst::Map::from_iter(words.into_iter().map(|w| (w, 0u64)))
                        .map_err(|e| tantivy::TantivyError::InternalError(e.to_string()))?,
                )
            }
        };
        fields.push((field, map));
    }
    let mut segments = vocab.segments.clone();
    segments.extend(new.iter().map(|r| r.segment_id()));
    Ok(Vocab { fields, segments })
}

/// The arrays of every segment of the live searchers, and the words of
/// their text fields.
pub(crate) struct ColumnCache {
    text_fields: Vec<Field>,
    segments: RwLock<HashMap<SegmentId, Arc<SegmentColumns>>>,
    vocab: RwLock<Arc<Vocab>>,
}

impl ColumnCache {
    pub(crate) fn new(text_fields: Vec<Field>) -> ColumnCache {
        ColumnCache {
            text_fields,
            segments: RwLock::default(),
            vocab: RwLock::new(Arc::new(Vocab {
                fields: Vec::new(),
                segments: HashSet::new(),
            })),
        }
    }

    pub(crate) fn vocab(&self) -> Option<Arc<Vocab>> {
        self.vocab.read().ok().map(|v| v.clone())
    }

    /// The arrays of `reader`'s segment, if warmed.
    pub(crate) fn get(&self, reader: &SegmentReader) -> Option<Arc<SegmentColumns>> {
        self.segments
            .read()
            .ok()?
            .get(&reader.segment_id())
            .cloned()
    }
}

impl Warmer for ColumnCache {
    fn warm(&self, searcher: &Searcher) -> tantivy::Result<()> {
        for reader in searcher.segment_readers() {
            let id = reader.segment_id();
            let known = self.segments.read().is_ok_and(|s| s.contains_key(&id));
            if known {
                continue;
            }
            match build(reader, &self.text_fields) {
                Ok(columns) => {
                    if let Ok(mut s) = self.segments.write() {
                        s.insert(id, Arc::new(columns));
                    }
                }
                // queries read the columns themselves
                Err(e) => tracing::warn!(error = %e, "caching segment columns"),
            }
        }
        let Some(vocab) = self.vocab() else {
            return Ok(());
        };
        let new: Vec<&SegmentReader> = searcher
            .segment_readers()
            .iter()
            .filter(|r| !vocab.segments.contains(&r.segment_id()))
            .collect();
        if !new.is_empty() {
            match extend_vocab(&vocab, &new, &self.text_fields) {
                Ok(v) => {
                    if let Ok(mut slot) = self.vocab.write() {
                        *slot = Arc::new(v);
                    }
                }
                // queries walk every segment's dictionary
                Err(e) => tracing::warn!(error = %e, "collecting the words of new segments"),
            }
        }
        Ok(())
    }

    fn garbage_collect(&self, live_generations: &[&SearcherGeneration]) {
        let live: HashSet<SegmentId> = live_generations
            .iter()
            .flat_map(|g| g.segments().keys().copied())
            .collect();
        if let Ok(mut s) = self.segments.write() {
            s.retain(|id, _| live.contains(id));
        }
        // forget dead segments (their words stay: a superset is harmless)
        if let Ok(mut v) = self.vocab.write() {
            if v.segments.iter().any(|id| !live.contains(id)) {
                let segments = v.segments.intersection(&live).copied().collect();
                *v = Arc::new(Vocab {
                    fields: v.fields.clone(),
                    segments,
                });
            }
        }
    }
}
