//! Snippets: the passage of the description (else the name) with the most
//! query words, matched words in `<b>…</b>`, HTML-escaped.
//!
//! The same passages as tantivy's `SnippetGenerator` (fragments of at most
//! [`SNIPPET_CHARS`] characters cut at token boundaries, the one with the
//! most matched tokens, the first of equals), in one pass over the text
//! with one analyzer per search instead of two analyzers and three passes
//! per hit.

use std::ops::Range;

use tantivy::tokenizer::{TextAnalyzer, TokenStream};

use crate::query::TermMatcher;

/// Characters of a snippet.
pub(crate) const SNIPPET_CHARS: usize = 150;

/// The snippet of a hit; `analyzer` is the index analyzer.
pub(crate) fn snippet(
    analyzer: &mut TextAnalyzer,
    terms: &[TermMatcher],
    name: &str,
    description: &str,
) -> String {
    if !terms.is_empty() {
        for text in [description, name] {
            if let Some(html) = highlight(analyzer, terms, text) {
                return html;
            }
        }
    }
    let base = if description.is_empty() {
        name
    } else {
        description
    };
    let mut out = String::new();
    escape_into(
        &mut out,
        &base.chars().take(SNIPPET_CHARS).collect::<String>(),
        "&#39;",
    );
    out
}

struct Fragment {
    matches: usize,
    start: usize,
    stop: usize,
    highlighted: Vec<Range<usize>>,
}

impl Fragment {
    fn at(start: usize) -> Fragment {
        Fragment {
            matches: 0,
            start,
            stop: start,
            highlighted: Vec::new(),
        }
    }
}

/// The best fragment of `text` with its matched tokens in `<b>`, if any
/// token matches.
fn highlight(analyzer: &mut TextAnalyzer, terms: &[TermMatcher], text: &str) -> Option<String> {
    let mut best: Option<Fragment> = None;
    let keep = |f: Fragment, best: &mut Option<Fragment>| {
        if f.matches > best.as_ref().map_or(0, |b| b.matches) {
            *best = Some(f);
        }
    };
    let mut fragment = Fragment::at(0);
    let mut stream = analyzer.token_stream(text);
    while stream.advance() {
        let token = stream.token();
        if token.offset_to - fragment.start > SNIPPET_CHARS {
            let next = Fragment::at(token.offset_from);
            keep(std::mem::replace(&mut fragment, next), &mut best);
        }
        fragment.stop = token.offset_to;
        if terms.iter().any(|t| t.matches(&token.text)) {
            fragment.matches += 1;
            fragment
                .highlighted
                .push(token.offset_from..token.offset_to);
        }
    }
    keep(fragment, &mut best);
    let best = best?;
    let mut html = String::with_capacity(best.stop - best.start + 8 * best.highlighted.len());
    let mut from = best.start;
    for r in &best.highlighted {
        escape_into(&mut html, &text[from..r.start], "&#x27;");
        html.push_str("<b>");
        escape_into(&mut html, &text[r.clone()], "&#x27;");
        html.push_str("</b>");
        from = r.end;
    }
    escape_into(&mut html, &text[from..best.stop], "&#x27;");
    Some(html)
}

/// Escapes `& < > " '` (the apostrophe as `apostrophe`).
fn escape_into(out: &mut String, s: &str, apostrophe: &str) {
    for ch in s.chars() {
        match ch {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str(apostrophe),
            c => out.push(c),
        }
    }
}
