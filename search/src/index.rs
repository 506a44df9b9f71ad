//! [`SearchIndex`]: one tantivy index, its writer and its reader.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};

use tantivy::directory::MmapDirectory;
use tantivy::error::DataCorruption;
use tantivy::index::SegmentComponent;
use tantivy::indexer::LogMergePolicy;
use tantivy::schema::Value;
use tantivy::tokenizer::TextAnalyzer;
use tantivy::{
    Index, IndexReader, IndexSettings, IndexWriter, ReloadPolicy, SegmentReader, TantivyDocument,
    Term, Warmer,
};

use crate::cache::{check_segment, ColumnCache};
use crate::error::SearchError;
use crate::exec::{execute, Candidate, Plan};
use crate::query::{
    query_terms, validate, Hit, QueryTerm, SearchQuery, SearchResults, TermMatcher, MAX_LIMIT,
};
use crate::schema::{analyzer, build_schema, Change, Fields, TOKENIZER};
use crate::snippet::snippet;
use crate::workers::Workers;

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

/// The search index of a node. `Send + Sync`; share it through an `Arc`.
/// Writes are serialised by an internal lock; searches never block on them.
pub struct SearchIndex {
    index: Index,
    reader: IndexReader,
    /// `None` only if [`SearchIndex::wait_merges`] failed to reopen it.
    writer: Mutex<Option<IndexWriter<TantivyDocument>>>,
    fields: Fields,
    indexed: AtomicU64,
    /// Warmed by the reader (held weakly there).
    columns: Arc<ColumnCache>,
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
    /// A damaged index (a segment file failing its checksum, a segment
    /// disagreeing with `meta.json`) is an error, never a panic: rebuild it.
    pub fn open_in_dir(dir: &Path) -> Result<Self, SearchError> {
        std::fs::create_dir_all(dir)?;
        let (schema, fields) = build_schema();
        let index = Index::builder()
            .schema(schema)
            .settings(index_settings())
            .open_or_create(MmapDirectory::open(dir)?)?;
        check_on_disk(&index, dir)?;
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
        let writer = open_writer(&index)?;
        let columns = Arc::new(ColumnCache::new(vec![
            fields.name,
            fields.tags,
            fields.vendor_name,
            fields.description,
        ]));
        let warmer: Arc<dyn Warmer> = columns.clone();
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .warmers(vec![Arc::downgrade(&warmer)])
            .try_into()?;
        Ok(SearchIndex {
            index,
            reader,
            writer: Mutex::new(Some(writer)),
            fields,
            indexed: AtomicU64::new(indexed),
            columns,
        })
    }

    /// Applies `changes` in order and commits once, recording `applied_index`
    /// in the commit payload; the results are searchable when this returns.
    /// On error nothing of this call is committed.
    pub fn apply(&self, changes: &[Change], applied_index: u64) -> Result<(), SearchError> {
        let mut guard = self.writer.lock().map_err(|_| SearchError::Poisoned)?;
        let writer = guard.as_mut().ok_or(SearchError::Poisoned)?;
        let result = self.apply_locked(writer, changes, applied_index);
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
        let mut guard = self.writer.lock().map_err(|_| SearchError::Poisoned)?;
        let writer = guard.as_mut().ok_or(SearchError::Poisoned)?;
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

    /// Waits until the background merges of committed segments are done
    /// and searches see the merged segments (for benchmarks and tools that
    /// want the steady state after a bulk load). Returns the number of
    /// segments.
    pub fn wait_merges(&self) -> Result<usize, SearchError> {
        let mut guard = self.writer.lock().map_err(|_| SearchError::Poisoned)?;
        if let Some(writer) = guard.take() {
            writer.wait_merging_threads()?;
        }
        *guard = Some(open_writer(&self.index)?);
        drop(guard);
        self.reader.reload()?;
        Ok(self.reader.searcher().segment_readers().len())
    }

    /// Number of live documents (products and vendors).
    pub fn doc_count(&self) -> u64 {
        self.reader.searcher().num_docs()
    }

    /// Runs a query on the calling thread. Free text never causes an
    /// error; only structurally invalid coordinates or radius do. Servers
    /// use [`SearchIndex::search_on_workers`].
    pub fn search(&self, q: &SearchQuery) -> Result<SearchResults, SearchError> {
        validate(q)?;
        let terms = query_terms(&q.text);
        let searcher = self.reader.searcher();
        let limit = q.limit.min(MAX_LIMIT);
        let keep = q.offset.saturating_add(limit);
        let plan = Plan::new(&self.fields, q, &terms, keep, &searcher, &self.columns)?;
        let found = execute(&plan, &searcher, &self.columns)?;
        let mut hits = Vec::with_capacity(limit);
        let matchers: Vec<TermMatcher> = terms.iter().map(QueryTerm::matcher).collect();
        let mut analyzer = analyzer();
        for c in found.top.iter().skip(q.offset).take(limit) {
            let doc: TantivyDocument = searcher.doc(c.addr)?;
            hits.push(self.hit(&doc, c, q, &matchers, &mut analyzer));
        }

        Ok(SearchResults {
            hits,
            total: found.total,
            total_exact: found.total_exact,
            facets: found.facets,
        })
    }

    /// Runs a query on the search workers (one per core, in arrival order);
    /// [`SearchError::Interrupted`] if it panicked there.
    pub async fn search_on_workers(
        self: &Arc<Self>,
        q: SearchQuery,
    ) -> Result<SearchResults, SearchError> {
        let (tx, rx) = futures::channel::oneshot::channel();
        let index = self.clone();
        Workers::get().run(move || {
            let _ = tx.send(index.search(&q));
        });
        rx.await.map_err(|_| SearchError::Interrupted)?
    }

    fn hit(
        &self,
        doc: &TantivyDocument,
        c: &Candidate,
        q: &SearchQuery,
        terms: &[TermMatcher],
        analyzer: &mut TextAnalyzer,
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
            snippet: snippet(analyzer, terms, &name, &description),
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

fn open_writer(index: &Index) -> Result<IndexWriter<TantivyDocument>, SearchError> {
    let writer = index.writer_with_num_threads(1, WRITER_MEMORY_BYTES)?;
    // Every query pays per segment (term dictionary lookups, posting
    // lists): merge sooner than tantivy's default of 8.
    let mut merge_policy = LogMergePolicy::default();
    merge_policy.set_min_num_segments(MERGE_MIN_SEGMENTS);
    writer.set_merge_policy(Box::new(merge_policy));
    Ok(writer)
}

/// Bytes at the end of every segment file: the footer's length and magic
/// number. tantivy reads them from any file of at least 4 bytes (and
/// panics on one of 4 to 7).
const FOOTER_TRAILER_BYTES: u64 = 8;

/// Refuses an index on disk that tantivy would panic on instead of failing:
/// a segment file too short for its footer, one whose checksum does not
/// match (a flipped bit in a term dictionary or a column trips assertions
/// and overflows), or a segment whose files disagree with `meta.json`
/// ([`check_segment`]). Runs before anything reads a segment: the reader's
/// warming builds our column arrays, and a panic in the writer's merge
/// threads aborts the process. The caller rebuilds the index on an error.
fn check_on_disk(index: &Index, dir: &Path) -> Result<(), SearchError> {
    let damaged = |file: &Path, comment: &str| {
        SearchError::Tantivy(tantivy::TantivyError::DataCorruption(DataCorruption::new(
            file.to_path_buf(),
            comment.to_string(),
        )))
    };
    for segment in index.searchable_segments()? {
        let meta = segment.meta();
        for file in meta.list_files() {
            let len = match std::fs::metadata(dir.join(&file)) {
                Ok(m) => m.len(),
                // not every component exists; opening the segment fails
                // on a missing one it needs
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e.into()),
            };
            if len < FOOTER_TRAILER_BYTES {
                return Err(damaged(&file, "shorter than a footer"));
            }
            let intact = index
                .directory()
                .validate_checksum(&file)
                .map_err(tantivy::TantivyError::from)?;
            if !intact {
                return Err(damaged(&file, "checksum mismatch"));
            }
        }
        let reader = SegmentReader::open(&segment)?;
        check_segment(&reader)?;
        let deleted = reader.max_doc() - reader.num_docs();
        if meta.num_deleted_docs() != deleted {
            return Err(damaged(
                &meta.relative_path(SegmentComponent::Delete),
                &format!(
                    "meta.json counts {} deleted documents, the deletes hold {deleted}",
                    meta.num_deleted_docs()
                ),
            ));
        }
    }
    Ok(())
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
