use std::collections::{BTreeMap, BTreeSet};

use crate::query::{bounding_box, edit_distance, query_terms};
use crate::*;

const CENTER: (f64, f64) = (52.52, 13.405);
const CATEGORIES: [&str; 6] = [
    "pizza",
    "asian",
    "mexican",
    "drinks",
    "desserts",
    "groceries",
];
const VENDOR_KINDS: [&str; 3] = ["restaurant", "grocery", "pharmacy"];
const TAGS: [&str; 5] = ["vegan", "spicy", "gluten-free", "halal", "organic"];
const ADJ: [&str; 8] = [
    "classic", "fresh", "crispy", "smoky", "sweet", "green", "golden", "hearty",
];
const NOUN: [&str; 10] = [
    "bowl", "wrap", "soup", "plate", "box", "roll", "cake", "juice", "tea", "bread",
];

/// Deterministic pseudo-random numbers (no rand dependency).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn unit(&mut self) -> f64 {
        (self.next() % 1_000_000) as f64 / 1_000_000.0
    }
}

fn vendors() -> Vec<VendorDoc> {
    let names = [
        "Luigi Trattoria",
        "Tokyo Garden",
        "Casa Jalisco",
        "Corner Market",
        "Sunny Pharmacy",
        "Bella Napoli",
        "Green Leaf Grocer",
        "Spice Route",
        "Sugar Bakery",
        "Night Owl Drinks",
    ];
    let mut rng = Lcg(7);
    names
        .iter()
        .enumerate()
        .map(|(i, n)| VendorDoc {
            id: format!("v{i:02}"),
            name: n.to_string(),
            kind: VENDOR_KINDS[i % 3].to_string(),
            description: format!("{n} delivers across the city"),
            tags: vec![TAGS[i % 5].to_string()],
            lat: CENTER.0 + (rng.unit() - 0.5) * 0.3,
            lng: CENTER.1 + (rng.unit() - 0.5) * 0.5,
            rating: if i % 4 == 0 {
                None
            } else {
                Some(3.0 + (i as f64) / 10.0)
            },
        })
        .collect()
}

fn products() -> Vec<ProductDoc> {
    let vs = vendors();
    let fixed = [
        (
            "Margherita Pizza",
            "Tomato, mozzarella and fresh basil on a thin crust",
            "pizza",
        ),
        ("Pepperoni Pizza", "Spicy salami with mozzarella", "pizza"),
        (
            "Vegan Burrito",
            "Black beans, rice and guacamole wrapped in a tortilla",
            "mexican",
        ),
        (
            "Chicken Tikka Masala",
            "Tender chicken in a creamy tomato curry sauce",
            "asian",
        ),
        (
            "Pad Thai",
            "Rice noodles with peanuts, tofu and lime",
            "asian",
        ),
        (
            "Chocolate Brownie",
            "Rich fudge brownie with walnuts",
            "desserts",
        ),
        (
            "Sparkling Lemonade",
            "Homemade lemonade with mint",
            "drinks",
        ),
        (
            "Organic Bananas",
            "A bunch of fair trade bananas",
            "groceries",
        ),
    ];
    let mut rng = Lcg(42);
    (0..200)
        .map(|i| {
            let v = &vs[i % vs.len()];
            let (name, description, category) = if i < fixed.len() {
                let (n, d, c) = fixed[i];
                (n.to_string(), d.to_string(), c.to_string())
            } else {
                let a = ADJ[rng.next() as usize % ADJ.len()];
                let n = NOUN[rng.next() as usize % NOUN.len()];
                (
                    format!("{a} {n} {i}"),
                    format!("A {a} {n} made to order, item number {i}"),
                    CATEGORIES[rng.next() as usize % CATEGORIES.len()].to_string(),
                )
            };
            let tags = TAGS
                .iter()
                .filter(|_| rng.next().is_multiple_of(3))
                .map(|t| t.to_string())
                .collect();
            ProductDoc {
                id: format!("p{i:03}"),
                vendor_id: v.id.clone(),
                vendor_name: v.name.clone(),
                vendor_kind: v.kind.clone(),
                name,
                description,
                category,
                tags,
                price: 100 + (rng.next() % 4900) as i64,
                in_stock: i % 5 != 3,
                lat: CENTER.0 + (rng.unit() - 0.5) * 0.4,
                lng: CENTER.1 + (rng.unit() - 0.5) * 0.6,
                rating: if i % 4 == 1 {
                    None
                } else {
                    Some(1.0 + (rng.next() % 40) as f64 / 10.0)
                },
            }
        })
        .collect()
}

fn corpus() -> SearchIndex {
    let idx = SearchIndex::open_in_ram().unwrap();
    let mut changes: Vec<Change> = products().into_iter().map(Change::UpsertProduct).collect();
    changes.extend(vendors().into_iter().map(Change::UpsertVendor));
    idx.apply(&changes, 10).unwrap();
    idx
}

fn q(text: &str) -> SearchQuery {
    SearchQuery {
        text: text.to_string(),
        ..SearchQuery::default()
    }
}

fn all(mut q: SearchQuery) -> SearchQuery {
    q.limit = MAX_LIMIT;
    q
}

fn top_ids(idx: &SearchIndex, query: &SearchQuery, n: usize) -> Vec<String> {
    let r = idx.search(query).unwrap();
    r.hits.into_iter().take(n).map(|h| h.id).collect()
}

fn ids(r: &SearchResults) -> BTreeSet<String> {
    r.hits.iter().map(|h| h.id.clone()).collect()
}

#[test]
fn exact_typo_prefix_and_multi_word() {
    let idx = corpus();
    assert_eq!(top_ids(&idx, &q("margherita"), 1), ["p000"]);
    assert_eq!(top_ids(&idx, &q("Margherita"), 1), ["p000"]);
    assert!(top_ids(&idx, &q("margherta"), 3).contains(&"p000".to_string()));
    assert!(
        top_ids(&idx, &q("margheirta"), 3).contains(&"p000".to_string()),
        "transposition"
    );
    assert!(top_ids(&idx, &q("marg"), 3).contains(&"p000".to_string()));
    assert!(top_ids(&idx, &q("chicken tikka"), 3).contains(&"p003".to_string()));
    assert!(top_ids(&idx, &q("tikka chick"), 3).contains(&"p003".to_string()));
    assert!(top_ids(&idx, &q("vegan burrito"), 3).contains(&"p002".to_string()));
    assert!(top_ids(&idx, &q("burito"), 3).contains(&"p002".to_string()));
    assert!(top_ids(&idx, &q("pad thai"), 3).contains(&"p004".to_string()));
    // vendor name and description are searched too
    let r = idx.search(&all(q("guacamole"))).unwrap();
    assert_eq!(ids(&r), BTreeSet::from(["p002".to_string()]));
    let r = idx.search(&all(q("jalisco "))).unwrap();
    assert!(r.total > 0 && r.hits.iter().all(|h| h.vendor_id.as_deref() == Some("v02")));
    // a finished word is not a prefix: "pizz " is a short exact term
    assert_eq!(idx.search(&q("pizz ")).unwrap().total, 0);
    assert!(idx.search(&q("pizz")).unwrap().total >= 2);
    // all terms must match
    assert_eq!(idx.search(&q("margherita burrito")).unwrap().total, 0);
    // no match
    assert_eq!(idx.search(&q("xylophone")).unwrap().total, 0);
}

#[test]
fn snippets_highlight_fuzzy_and_exact_matches() {
    let idx = corpus();
    let r = idx.search(&q("mozarella")).unwrap();
    let hit = r.hits.iter().find(|h| h.id == "p000").unwrap();
    assert!(hit.snippet.contains("<b>mozzarella</b>"), "{}", hit.snippet);
    let r = idx.search(&q("margh")).unwrap();
    assert_eq!(r.hits[0].id, "p000");
    assert!(
        r.hits[0].snippet.contains("<b>Margherita</b>"),
        "{}",
        r.hits[0].snippet
    );
    assert_eq!(r.hits[0].vendor_id.as_deref(), Some("v00"));
    assert_eq!(r.hits[0].vendor_name.as_deref(), Some("Luigi Trattoria"));
    assert!(r.hits[0].price.is_some());
}

fn brute(filter: impl Fn(&ProductDoc) -> bool) -> (BTreeSet<String>, BTreeMap<String, u64>) {
    let mut set = BTreeSet::new();
    let mut facets = BTreeMap::new();
    for p in products().iter().filter(|p| filter(p)) {
        set.insert(p.id.clone());
        *facets.entry(p.category.clone()).or_insert(0) += 1;
    }
    (set, facets)
}

fn check(idx: &SearchIndex, query: SearchQuery, filter: impl Fn(&ProductDoc) -> bool) {
    let r = idx.search(&all(query.clone())).unwrap();
    let (expected, facets) = brute(filter);
    assert_eq!(ids(&r), expected, "{query:?}");
    assert_eq!(r.total, expected.len() as u64, "{query:?}");
    assert_eq!(r.facets, facets, "{query:?}");
}

#[test]
fn filters_and_facets_agree_with_brute_force() {
    let idx = corpus();
    check(&idx, q(""), |_| true);
    for c in CATEGORIES {
        check(
            &idx,
            SearchQuery {
                category: Some(c.into()),
                ..q("")
            },
            |p| p.category == c,
        );
    }
    check(
        &idx,
        SearchQuery {
            vendor_id: Some("v03".into()),
            ..q("")
        },
        |p| p.vendor_id == "v03",
    );
    check(
        &idx,
        SearchQuery {
            vendor_kind: Some("grocery".into()),
            ..q("")
        },
        |p| p.vendor_kind == "grocery",
    );
    check(
        &idx,
        SearchQuery {
            exclude_vendors: vec!["v03".into(), "v05".into()],
            ..q("")
        },
        |p| p.vendor_id != "v03" && p.vendor_id != "v05",
    );
    for t in TAGS {
        check(
            &idx,
            SearchQuery {
                tags: vec![t.into()],
                ..q("")
            },
            |p| p.tags.iter().any(|x| x == t),
        );
    }
    check(
        &idx,
        SearchQuery {
            tags: vec!["vegan".into(), "spicy".into()],
            ..q("")
        },
        |p| p.tags.iter().any(|x| x == "vegan") && p.tags.iter().any(|x| x == "spicy"),
    );
    check(
        &idx,
        SearchQuery {
            min_price: Some(1000),
            max_price: Some(2500),
            ..q("")
        },
        |p| (1000..=2500).contains(&p.price),
    );
    check(
        &idx,
        SearchQuery {
            min_price: Some(4000),
            ..q("")
        },
        |p| p.price >= 4000,
    );
    check(
        &idx,
        SearchQuery {
            max_price: Some(500),
            ..q("")
        },
        |p| p.price <= 500,
    );
    check(
        &idx,
        SearchQuery {
            in_stock: Some(true),
            ..q("")
        },
        |p| p.in_stock,
    );
    check(
        &idx,
        SearchQuery {
            in_stock: Some(false),
            ..q("")
        },
        |p| !p.in_stock,
    );
    check(
        &idx,
        SearchQuery {
            category: Some("asian".into()),
            in_stock: Some(true),
            max_price: Some(3000),
            vendor_kind: Some("restaurant".into()),
            ..q("")
        },
        |p| p.category == "asian" && p.in_stock && p.price <= 3000 && p.vendor_kind == "restaurant",
    );
    // text + filter: "bowl" is only in generated names/descriptions
    check(
        &idx,
        SearchQuery {
            category: Some("drinks".into()),
            ..q("bowl ")
        },
        |p| p.category == "drinks" && p.name.contains("bowl"),
    );
    // unknown filter values match nothing
    check(
        &idx,
        SearchQuery {
            category: Some("nope".into()),
            ..q("")
        },
        |_| false,
    );
}

#[test]
fn geo_radius_and_distance_order() {
    let idx = corpus();
    for radius in [0.5, 2.0, 5.0, 10.0] {
        let query = SearchQuery {
            near: Some(CENTER),
            radius_km: Some(radius),
            sort: Sort::Distance,
            ..all(q(""))
        };
        let r = idx.search(&query).unwrap();
        let (expected, facets) = brute(|p| haversine_km(CENTER, (p.lat, p.lng)) <= radius);
        assert_eq!(ids(&r), expected, "radius {radius}");
        assert_eq!(r.total, expected.len() as u64);
        assert_eq!(r.facets, facets);
        let d: Vec<f64> = r.hits.iter().map(|h| h.distance_km.unwrap()).collect();
        assert!(d.iter().all(|&x| x <= radius));
        assert!(d.windows(2).all(|w| w[0] <= w[1]), "{d:?}");
    }
    // distance without radius: every hit has a distance, ordered
    let r = idx
        .search(&SearchQuery {
            near: Some(CENTER),
            sort: Sort::Distance,
            ..all(q(""))
        })
        .unwrap();
    assert_eq!(r.total, 200);
    assert!(r
        .hits
        .windows(2)
        .all(|w| w[0].distance_km.unwrap() <= w[1].distance_km.unwrap()));
    // vendors too
    let r = idx
        .search(&SearchQuery {
            kind: Kind::Vendor,
            near: Some(CENTER),
            radius_km: Some(8.0),
            ..all(q(""))
        })
        .unwrap();
    let expected: BTreeSet<String> = vendors()
        .into_iter()
        .filter(|v| haversine_km(CENTER, (v.lat, v.lng)) <= 8.0)
        .map(|v| v.id)
        .collect();
    assert_eq!(ids(&r), expected);
    // invalid coordinates are an error, not a panic
    assert!(idx
        .search(&SearchQuery {
            near: Some((f64::NAN, 0.0)),
            ..q("")
        })
        .is_err());
    assert!(idx
        .search(&SearchQuery {
            near: Some(CENTER),
            radius_km: Some(-1.0),
            ..q("")
        })
        .is_err());
}

#[test]
fn bounding_box_near_poles_and_antimeridian() {
    let (lat, lng) = bounding_box(89.99, 0.0, 50.0);
    assert_eq!(lat.1, 90.0);
    assert!(lng.is_none());
    let (_, lng) = bounding_box(0.0, 179.99, 50.0);
    assert!(lng.is_none());
    let (lat, lng) = bounding_box(52.0, 13.0, 10.0);
    let (lo, hi) = lng.unwrap();
    // points on the box edge are at least the radius away
    assert!(haversine_km((52.0, 13.0), (lat.1, 13.0)) >= 9.99);
    assert!(haversine_km((52.0, 13.0), (52.0, hi)) >= 10.0);
    assert!(haversine_km((52.0, 13.0), (52.0, lo)) >= 10.0);
}

#[test]
fn sorts_by_price_and_rating() {
    let idx = corpus();
    let prices = |sort| -> Vec<i64> {
        let r = idx.search(&SearchQuery { sort, ..all(q("")) }).unwrap();
        r.hits.iter().map(|h| h.price.unwrap()).collect()
    };
    let asc = prices(Sort::PriceAsc);
    assert_eq!(asc.len(), 200);
    assert!(asc.windows(2).all(|w| w[0] <= w[1]));
    let desc = prices(Sort::PriceDesc);
    assert!(desc.windows(2).all(|w| w[0] >= w[1]));
    let ps = products();
    let r = idx
        .search(&SearchQuery {
            sort: Sort::Rating,
            ..all(q(""))
        })
        .unwrap();
    let ratings: Vec<Option<f64>> = r
        .hits
        .iter()
        .map(|h| ps.iter().find(|p| p.id == h.id).unwrap().rating)
        .collect();
    let first_none = ratings.iter().position(Option::is_none).unwrap();
    assert!(
        ratings[first_none..].iter().all(Option::is_none),
        "unrated last"
    );
    assert!(ratings[..first_none]
        .windows(2)
        .all(|w| w[0].unwrap() >= w[1].unwrap()));
}

#[test]
fn pagination_is_consistent() {
    let idx = corpus();
    for sort in [Sort::Relevance, Sort::PriceAsc, Sort::Rating] {
        let whole = top_ids(
            &idx,
            &SearchQuery {
                sort,
                limit: 30,
                ..q("fresh")
            },
            30,
        );
        let mut paged = Vec::new();
        for page in 0..3 {
            let query = SearchQuery {
                sort,
                limit: 10,
                offset: page * 10,
                ..q("fresh")
            };
            paged.extend(top_ids(&idx, &query, 10));
        }
        assert_eq!(whole, paged, "{sort:?}");
    }
    let r = idx.search(&SearchQuery { limit: 0, ..q("") }).unwrap();
    assert!(r.hits.is_empty());
    assert_eq!(r.total, 200);
    let r = idx
        .search(&SearchQuery {
            offset: 10_000,
            ..q("")
        })
        .unwrap();
    assert!(r.hits.is_empty());
    assert_eq!(r.total, 200);
}

#[test]
fn update_delete_and_stock() {
    let idx = corpus();
    assert_eq!(idx.doc_count(), 210);
    let mut p = products()[0].clone();
    p.name = "Quattro Formaggi".into();
    p.description = "Four cheeses".into();
    p.in_stock = false;
    idx.apply(&[Change::UpsertProduct(p)], 11).unwrap();
    assert_eq!(idx.doc_count(), 210);
    assert!(!ids(&idx.search(&all(q("margherita"))).unwrap()).contains("p000"));
    assert_eq!(top_ids(&idx, &q("formaggi"), 1), ["p000"]);
    // out of stock excluded
    let r = idx
        .search(&SearchQuery {
            in_stock: Some(true),
            ..q("formaggi")
        })
        .unwrap();
    assert_eq!(r.total, 0);
    let r = idx
        .search(&SearchQuery {
            in_stock: Some(true),
            ..all(q(""))
        })
        .unwrap();
    assert!(r.hits.iter().all(|h| products()
        .iter()
        .any(|p| p.id == h.id && p.in_stock && p.id != "p000")));
    // delete
    idx.apply(
        &[
            Change::Delete { id: "p000".into() },
            Change::Delete { id: "v01".into() },
        ],
        12,
    )
    .unwrap();
    assert_eq!(idx.doc_count(), 208);
    assert_eq!(idx.search(&q("formaggi")).unwrap().total, 0);
    assert_eq!(
        idx.search(&SearchQuery {
            kind: Kind::Vendor,
            ..q("tokyo")
        })
        .unwrap()
        .total,
        0
    );
    // upsert then delete in one batch: deleted
    let p = products()[1].clone();
    idx.apply(
        &[
            Change::UpsertProduct(p),
            Change::Delete { id: "p001".into() },
        ],
        13,
    )
    .unwrap();
    assert_eq!(idx.search(&q("pepperoni")).unwrap().total, 0);
    assert_eq!(idx.indexed_index(), 13);
    // clear
    idx.clear().unwrap();
    assert_eq!(idx.doc_count(), 0);
    assert_eq!(idx.indexed_index(), 0);
}

#[test]
fn vendors_are_searched_separately() {
    let idx = corpus();
    let r = idx
        .search(&SearchQuery {
            kind: Kind::Vendor,
            ..q("napoli")
        })
        .unwrap();
    assert_eq!(ids(&r), BTreeSet::from(["v05".to_string()]));
    assert_eq!(r.hits[0].kind, Kind::Vendor);
    assert_eq!(r.hits[0].price, None);
    let r = idx
        .search(&SearchQuery {
            kind: Kind::Vendor,
            ..all(q(""))
        })
        .unwrap();
    assert_eq!(r.total, 10);
    assert!(r.facets.is_empty());
    let r = idx
        .search(&SearchQuery {
            kind: Kind::Vendor,
            vendor_kind: Some("pharmacy".into()),
            ..all(q(""))
        })
        .unwrap();
    assert_eq!(
        ids(&r),
        BTreeSet::from(["v02".to_string(), "v05".to_string(), "v08".to_string()])
    );
    // product text does not find vendors
    assert_eq!(
        idx.search(&SearchQuery {
            kind: Kind::Vendor,
            ..q("margherita")
        })
        .unwrap()
        .total,
        0
    );
}

#[test]
fn indexed_index_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("search");
    {
        let idx = SearchIndex::open_in_dir(&path).unwrap();
        assert_eq!(idx.indexed_index(), 0);
        let changes: Vec<Change> = products()
            .into_iter()
            .take(20)
            .map(Change::UpsertProduct)
            .collect();
        idx.apply(&changes, 41).unwrap();
        idx.apply(&[Change::Delete { id: "p005".into() }], 42)
            .unwrap();
        assert_eq!(idx.indexed_index(), 42);
    }
    let idx = SearchIndex::open_in_dir(&path).unwrap();
    assert_eq!(idx.indexed_index(), 42);
    assert_eq!(idx.doc_count(), 19);
    assert_eq!(top_ids(&idx, &q("margherita"), 1), ["p000"]);
    idx.clear().unwrap();
    drop(idx);
    let idx = SearchIndex::open_in_dir(&path).unwrap();
    assert_eq!(idx.indexed_index(), 0);
    assert_eq!(idx.doc_count(), 0);
}

/// An index on disk of two segments, the first with deletes; returns its
/// directory and the first segment's number of documents.
fn index_on_disk(parent: &std::path::Path) -> (std::path::PathBuf, usize) {
    let path = parent.join("good");
    let idx = SearchIndex::open_in_dir(&path).unwrap();
    let ps = products();
    let changes: Vec<Change> = ps.iter().cloned().map(Change::UpsertProduct).collect();
    idx.apply(&changes, 1).unwrap();
    let again: Vec<Change> = ps[..5].iter().cloned().map(Change::UpsertProduct).collect();
    idx.apply(&again, 2).unwrap();
    (path, ps.len())
}

fn copy_index(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// Opens the index in `dir` and searches it; `Err` with what went wrong
/// (a panic included).
fn open_and_search(dir: &std::path::Path) -> Result<(), String> {
    let opened = std::panic::catch_unwind(|| {
        let idx = SearchIndex::open_in_dir(dir)?;
        idx.search(&q("fresh"))?;
        idx.apply(&[Change::UpsertProduct(products()[7].clone())], 3)
    });
    match opened {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err("panicked".into()),
    }
}

/// Replaces the number after the `nth` occurrence of `"key":` (tantivy
/// writes meta.json pretty-printed).
fn set_number(json: &str, key: &str, nth: usize, value: u64) -> String {
    let pat = format!("\"{key}\":");
    let at = json.match_indices(&pat).nth(nth).unwrap().0 + pat.len();
    let rest = &json[at..];
    let from = at + rest.find(|c: char| c.is_ascii_digit()).unwrap();
    let to = from
        + json[from..]
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(json.len() - from);
    format!("{}{value}{}", &json[..from], &json[to..])
}

#[test]
fn damaged_segment_files_are_refused_at_open_without_panicking() {
    // tantivy trusts its segment files: a flipped byte in a term dictionary
    // or a column panicked while warming the reader (or aborted the
    // process in a merge thread), and a file of 4 to 7 bytes panicked
    // reading its footer. The node rebuilds an index it cannot open.
    let tmp = tempfile::tempdir().unwrap();
    let (good, _) = index_on_disk(tmp.path());
    assert_eq!(open_and_search(&good), Ok(()));
    let mut files: Vec<std::ffi::OsString> = std::fs::read_dir(&good)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|f| {
            let f = f.to_string_lossy();
            !f.starts_with('.') && f != "meta.json"
        })
        .collect();
    files.sort();
    assert!(files.iter().any(|f| f.to_string_lossy().ends_with(".del")));
    let mut n = 0;
    for file in &files {
        let bytes = std::fs::read(good.join(file)).unwrap();
        let len = bytes.len();
        let mut variants: Vec<(String, Vec<u8>)> = (1..12)
            .map(|k| {
                let mut b = bytes.clone();
                b[len * k / 12] ^= 0x5a;
                (format!("byte {} flipped", len * k / 12), b)
            })
            .collect();
        for keep in [0, 3, 5, 7] {
            variants.push((
                format!("its last {keep} bytes"),
                bytes[len - keep..].to_vec(),
            ));
        }
        for (what, content) in variants {
            n += 1;
            let dir = tmp.path().join(format!("damaged{n}"));
            copy_index(&good, &dir);
            std::fs::write(dir.join(file), content).unwrap();
            let r = open_and_search(&dir);
            assert!(
                r.as_ref().is_err_and(|e| e != "panicked"),
                "{file:?} with {what}: {r:?}"
            );
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }
}

#[test]
fn segments_disagreeing_with_meta_json_are_refused_at_open_without_panicking() {
    // meta.json has no checksum and tantivy reads a segment's files by the
    // `max_doc` it records: one too many panicked building the column
    // arrays, fewer aborted the process in a commit's delete pass, and
    // u32::MAX tried to allocate 32 GiB for them.
    let tmp = tempfile::tempdir().unwrap();
    let (good, docs) = index_on_disk(tmp.path());
    let meta = std::fs::read_to_string(good.join("meta.json")).unwrap();
    let docs = docs as u64;
    // (key, nth segment in meta.json, value): one segment holds every
    // product and 5 deletes, the other 5 documents and no deletes
    let edits = [
        ("max_doc", 1, 4),
        ("max_doc", 1, 6),
        ("max_doc", 0, 1),
        ("max_doc", 0, docs - 1),
        ("max_doc", 0, docs + 1),
        ("num_deleted_docs", 0, 4),
        ("num_deleted_docs", 0, 6),
        ("num_deleted_docs", 0, docs + 1),
        ("max_doc", 1, u64::from(u32::MAX)),
        ("max_doc", 1, 0),
    ];
    for (n, (key, segment, value)) in edits.into_iter().enumerate() {
        let dir = tmp.path().join(format!("edited{n}"));
        copy_index(&good, &dir);
        let edited = set_number(&meta, key, segment, value);
        assert_ne!(edited, meta);
        std::fs::write(dir.join("meta.json"), edited).unwrap();
        let r = open_and_search(&dir);
        assert!(
            r.as_ref().is_err_and(|e| e != "panicked"),
            "{key} of segment {segment} = {value}: {r:?}"
        );
    }
    assert_eq!(open_and_search(&good), Ok(()));
}

#[test]
fn column_arrays_are_not_built_for_a_segment_longer_than_its_files() {
    use tantivy::Warmer;
    // The column cache warms every segment a reader sees: one whose
    // `max_doc` exceeds its field lengths is left out (queries read the
    // columns themselves) instead of indexing past them.
    let tmp = tempfile::tempdir().unwrap();
    let (good, docs) = index_on_disk(tmp.path());
    let longer = 1000;
    assert!(longer > docs as u32);
    let meta = std::fs::read_to_string(good.join("meta.json")).unwrap();
    std::fs::write(
        good.join("meta.json"),
        set_number(&meta, "max_doc", 0, longer.into()),
    )
    .unwrap();
    let index = tantivy::Index::open_in_dir(&good).unwrap();
    let reader = index
        .reader_builder()
        .reload_policy(tantivy::ReloadPolicy::Manual)
        .try_into()
        .unwrap();
    let searcher = reader.searcher();
    let columns = crate::cache::ColumnCache::new(Vec::new());
    columns.warm(&searcher).unwrap();
    let segments = searcher.segment_readers();
    assert_eq!(segments.len(), 2);
    assert_eq!(segments.iter().filter(|r| r.max_doc() == longer).count(), 1);
    for r in segments {
        assert_eq!(columns.get(r).is_none(), r.max_doc() == longer);
    }
}

#[test]
fn hostile_inputs_never_fail() {
    let idx = corpus();
    let long = "pizza ".repeat(2000);
    let huge_word = "a".repeat(10_000);
    let inputs = [
        "AND OR NOT (( ]] :: ~2 ^3 \"unbalanced",
        "",
        "   ",
        "🍕🍕🍕",
        "pizza 🍕",
        "بيتزا مارغريتا",
        "שלום",
        "name:margherita",
        "*",
        "?",
        "\\",
        "\0\u{202e}\u{200b}",
        "margherita^100 OR 1=1; DROP TABLE products; --",
        long.as_str(),
        huge_word.as_str(),
        "ǅ ß İ ﬃ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    ];
    for text in inputs {
        for sort in [Sort::Relevance, Sort::Distance] {
            let query = SearchQuery {
                text: text.to_string(),
                sort,
                near: Some(CENTER),
                ..q("")
            };
            let r = idx.search(&query);
            assert!(r.is_ok(), "{text:?}: {r:?}");
        }
    }
    let mixed: String = "ab🍕ü".repeat(2500);
    assert!(idx.search(&q(&mixed)).is_ok());
    // non-Latin text is indexed and found
    let p = ProductDoc {
        id: "ar1".into(),
        name: "بيتزا مارغريتا".into(),
        ..products()[0].clone()
    };
    idx.apply(&[Change::UpsertProduct(p)], 20).unwrap();
    assert_eq!(top_ids(&idx, &q("بيتزا"), 1), ["ar1"]);
}

#[test]
fn query_terms_are_bounded() {
    assert!(query_terms("").is_empty());
    assert!(query_terms("🍕 !!").is_empty());
    let t = query_terms(&"word ".repeat(100));
    assert_eq!(t.len(), MAX_QUERY_TERMS);
    assert!(!t.last().unwrap().prefix, "trailing space");
    let t = query_terms("Crème BRÛLÉE");
    assert_eq!(
        t.iter().map(|t| t.text.as_str()).collect::<Vec<_>>(),
        ["creme", "brulee"]
    );
    assert!(t[1].prefix && !t[0].prefix);
    assert_eq!((t[0].distance, t[1].distance), (1, 1));
    assert_eq!(query_terms("margherita")[0].distance, 2);
    assert_eq!(query_terms("pad")[0].distance, 0);
    assert!(
        query_terms(&"x".repeat(10_000)).is_empty(),
        "over-long token dropped"
    );
    assert_eq!(edit_distance(&['a', 'b'], &['b', 'a']), 1);
}

#[test]
fn search_index_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<SearchIndex>();
    let idx = std::sync::Arc::new(corpus());
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let idx = idx.clone();
            std::thread::spawn(move || {
                if i == 0 {
                    idx.apply(&[Change::Delete { id: "p100".into() }], 11)
                        .unwrap();
                }
                idx.search(&q("fresh")).unwrap().total
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(idx.doc_count(), 209);
}

#[test]
fn segments_without_some_fast_fields() {
    // one segment with only vendors (no price/category), one with an unrated product
    let idx = SearchIndex::open_in_ram().unwrap();
    let mut v = vendors()[0].clone();
    v.rating = None;
    idx.apply(&[Change::UpsertVendor(v)], 1).unwrap();
    let mut p = products()[0].clone();
    p.rating = None;
    idx.apply(&[Change::UpsertProduct(p)], 2).unwrap();
    for kind in [Kind::Product, Kind::Vendor] {
        for sort in [
            Sort::Relevance,
            Sort::Distance,
            Sort::PriceAsc,
            Sort::PriceDesc,
            Sort::Rating,
        ] {
            let query = SearchQuery {
                kind,
                sort,
                near: Some(CENTER),
                radius_km: Some(100.0),
                ..q("")
            };
            let r = idx.search(&query).unwrap();
            assert_eq!(r.total, 1, "{kind:?} {sort:?}");
        }
    }
    let r = idx.search(&q("")).unwrap();
    assert_eq!(r.facets, BTreeMap::from([("pizza".to_string(), 1)]));
}

#[test]
fn snippet_automata_agree_with_brute_force_edit_distance() {
    let tokens = [
        "margherita",
        "margherta",
        "margheirta",
        "margaret",
        "marg",
        "mar",
        "mozzarella",
        "mozarella",
        "burrito",
        "burito",
        "burritos",
        "pizza",
        "pizzas",
        "piza",
        "tikka",
        "tika",
        "chicken",
        "chiken",
        "chickpea",
        "thai",
        "that",
        "creme",
        "crème",
        "brulee",
        "x",
        "",
    ];
    for text in [
        "margherita",
        "margh",
        "mozarella",
        "burito",
        "pizz",
        "pizz ",
        "tikka chick",
        "thai",
        "creme brulee",
        "ma",
        "chicken ",
    ] {
        for t in query_terms(text) {
            let m = t.matcher();
            for tok in tokens {
                assert_eq!(m.matches(tok), t.matches(tok), "{t:?} vs {tok:?}");
            }
        }
    }
}

/// Price, stock and geo filters on a text query (checked on the matches
/// rather than as range queries) select exactly the filtered text matches.
#[test]
fn filters_on_text_queries_agree_with_filtering_the_text_matches() {
    let idx = corpus();
    let by_id: BTreeMap<String, ProductDoc> =
        products().into_iter().map(|p| (p.id.clone(), p)).collect();
    for text in ["classic ", "fresh", "pizza ", "bowl ", "swete "] {
        let matches = ids(&idx.search(&all(q(text))).unwrap());
        assert!(!matches.is_empty(), "{text}");
        type Case = (SearchQuery, Box<dyn Fn(&ProductDoc) -> bool>);
        let cases: Vec<Case> = vec![
            (
                SearchQuery {
                    min_price: Some(1000),
                    max_price: Some(3000),
                    ..all(q(text))
                },
                Box::new(|p| (1000..=3000).contains(&p.price)),
            ),
            (
                SearchQuery {
                    max_price: Some(2000),
                    in_stock: Some(true),
                    ..all(q(text))
                },
                Box::new(|p| p.price <= 2000 && p.in_stock),
            ),
            (
                SearchQuery {
                    in_stock: Some(false),
                    ..all(q(text))
                },
                Box::new(|p| !p.in_stock),
            ),
            (
                SearchQuery {
                    near: Some(CENTER),
                    radius_km: Some(8.0),
                    min_price: Some(500),
                    sort: Sort::Distance,
                    ..all(q(text))
                },
                Box::new(|p| haversine_km(CENTER, (p.lat, p.lng)) <= 8.0 && p.price >= 500),
            ),
            (
                SearchQuery {
                    exclude_vendors: vec!["v01".into(), "v02".into(), "v07".into()],
                    sort: Sort::PriceAsc,
                    ..all(q(text))
                },
                Box::new(|p| !["v01", "v02", "v07"].contains(&p.vendor_id.as_str())),
            ),
        ];
        for (query, pred) in cases {
            let r = idx.search(&query).unwrap();
            let expected: BTreeSet<String> = matches
                .iter()
                .filter(|id| pred(&by_id[*id]))
                .cloned()
                .collect();
            assert_eq!(ids(&r), expected, "{query:?}");
            assert_eq!(r.total, expected.len() as u64, "{query:?}");
            let mut facets = BTreeMap::new();
            for id in &expected {
                *facets.entry(by_id[id].category.clone()).or_insert(0) += 1;
            }
            assert_eq!(r.facets, facets, "{query:?}");
        }
    }
}

#[test]
fn counting_stops_at_the_cap_but_every_page_is_still_found() {
    let idx = SearchIndex::open_in_ram().unwrap();
    let template = products()[0].clone();
    let n = 2_500usize;
    let mut rng = Lcg(11);
    // several commits, so several segments
    for (batch, chunk) in (0..n).collect::<Vec<_>>().chunks(700).enumerate() {
        let changes: Vec<Change> = chunk
            .iter()
            .map(|i| {
                Change::UpsertProduct(ProductDoc {
                    id: format!("w{i:05}"),
                    name: format!("widget {}", NOUN[i % NOUN.len()]),
                    category: CATEGORIES[i % CATEGORIES.len()].to_string(),
                    price: 100 + (rng.next() % 9000) as i64,
                    ..template.clone()
                })
            })
            .collect();
        idx.apply(&changes, batch as u64 + 1).unwrap();
    }
    for sort in [Sort::Relevance, Sort::PriceAsc] {
        let first = idx
            .search(&SearchQuery {
                sort,
                ..q("widget")
            })
            .unwrap();
        assert_eq!(first.total, TRACK_TOTAL_HITS, "{sort:?}");
        assert!(!first.total_exact, "{sort:?}");
        let mut seen = BTreeSet::new();
        let mut prices = Vec::new();
        let mut offset = 0;
        loop {
            let page = idx
                .search(&SearchQuery {
                    sort,
                    limit: MAX_LIMIT,
                    offset,
                    ..q("widget")
                })
                .unwrap();
            if page.hits.is_empty() {
                break;
            }
            offset += page.hits.len();
            for h in page.hits {
                prices.push(h.price.unwrap());
                assert!(seen.insert(h.id), "{sort:?}: a hit on two pages");
            }
        }
        assert_eq!(
            seen.len(),
            n,
            "{sort:?}: paging past the cap finds every match"
        );
        if sort == Sort::PriceAsc {
            assert!(prices.windows(2).all(|w| w[0] <= w[1]));
        }
    }
    // under the cap the count is exact, and the facets with it
    let r = idx
        .search(&SearchQuery {
            category: Some("pizza".into()),
            ..q("widget")
        })
        .unwrap();
    let pizzas = (0..n).filter(|i| i % CATEGORIES.len() == 0).count() as u64;
    assert!(r.total_exact);
    assert_eq!(r.total, pizzas);
    assert_eq!(r.facets, BTreeMap::from([("pizza".to_string(), pizzas)]));
}

/// Skipping windows, posting blocks and documents by their score bounds
/// never changes a page: the same hits, scores and order as reading every
/// match. The corpus has field lengths from 1 to ~40 words, repeated words
/// (term frequencies above 1, where block bounds are not exact) and
/// segments of different average lengths.
#[test]
fn skipping_by_score_bounds_never_changes_the_hits() {
    // fields growing segment by segment (the best scores come first and
    // later blocks tie or come close), then short and long in turn (better
    // scores turn up again once skipping has begun)
    let layouts: [(usize, &[(u64, u64)]); 2] = [
        (1500, &[(2, 5), (4, 17), (6, 29), (8, 41)]),
        (800, &[(2, 5), (6, 30), (2, 8), (8, 41), (3, 12), (2, 5)]),
    ];
    for (docs, lengths) in &layouts {
        check_skipping(*docs, lengths);
    }
}

fn check_skipping(docs: usize, lengths: &[(u64, u64)]) {
    const WORDS: [&str; 12] = [
        "fresh", "green", "bowl", "soup", "spicy", "tofu", "garden", "salad", "crispy", "roll",
        "golden", "bread",
    ];
    let idx = SearchIndex::open_in_ram().unwrap();
    let template = products()[0].clone();
    let mut rng = Lcg(7);
    let phrase = |rng: &mut Lcg, most: u64| -> String {
        let n = 1 + rng.next() % most;
        (0..n)
            .map(|_| WORDS[(rng.next() % WORDS.len() as u64) as usize])
            .collect::<Vec<_>>()
            .join(" ")
    };
    for (batch, &(name_len, desc_len)) in (0u64..).zip(lengths) {
        let changes: Vec<Change> = (0..docs)
            .map(|i| {
                Change::UpsertProduct(ProductDoc {
                    id: format!("s{batch}-{i:04}"),
                    name: phrase(&mut rng, name_len),
                    description: phrase(&mut rng, desc_len),
                    tags: vec![WORDS[(rng.next() % 4) as usize].to_string()],
                    ..template.clone()
                })
            })
            .collect();
        idx.apply(&changes, batch + 1).unwrap();
    }
    let mut pruned_somewhere = false;
    for text in [
        "fresh ",
        "bowl ",
        "spicy tofu ",
        "garden salad ",
        "golden bread roll ",
        "grean ",
        "crispi ",
        "sal",
        "tofu sou",
        "fresh green bowl soup ",
    ] {
        for limit in [1, 10, 50] {
            let query = SearchQuery { limit, ..q(text) };
            let skipping = idx.search(&query).unwrap();
            crate::exec::EXHAUSTIVE.set(true);
            let reading_all = idx.search(&query).unwrap();
            crate::exec::EXHAUSTIVE.set(false);
            let page = |r: &SearchResults| -> Vec<(String, f32)> {
                r.hits.iter().map(|h| (h.id.clone(), h.score)).collect()
            };
            assert_eq!(
                page(&skipping),
                page(&reading_all),
                "{text:?} limit {limit}"
            );
            assert_eq!(skipping.hits.len(), limit, "{text:?}");
            pruned_somewhere |= !skipping.total_exact;
        }
    }
    assert!(pruned_somewhere, "the corpus reaches the counting cap");
}
