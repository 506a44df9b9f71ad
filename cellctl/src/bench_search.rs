//! `cellctl bench search`: our tantivy search (`search::SearchIndex`,
//! called in-process) against PostgreSQL full-text search (tsvector + GIN,
//! pg_trgm for typos) on the same generated catalog and the same query mix,
//! in the same run.
//!
//! The catalog is deterministic (seeded): vendors of four kinds around a
//! city, products with names built from real dish / grocery / shop words,
//! descriptions drawn from a few hundred words with a Zipf-like frequency,
//! tags, prices, stock and ratings. The query mix is drawn from that
//! vocabulary: single words, typos, prefixes, multi-word, filtered and geo.
//!
//! Without `--pg-url` the benchmark runs its own scratch PostgreSQL in a
//! temp dir on a free loopback port (as the `postgres` user when run as
//! root) and stops it at the end.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Arc, LazyLock},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use bytes::Bytes;
use futures::SinkExt;
use rand::{rngs::StdRng, Rng, SeedableRng};
use search::{Change, ProductDoc, SearchIndex, SearchQuery, Sort, VendorDoc};
use serde_json::{json, Value};
use tokio_postgres::{types::Type, Client, NoTls, Statement};

use crate::{
    bench::{closed_loop, median_f64, median_round, us, LevelResult, Op, TempDir},
    output,
};

pub struct SearchBenchOptions {
    pub products: Vec<usize>,
    pub clients: Vec<usize>,
    pub seconds: u64,
    pub rounds: usize,
    /// Skip PostgreSQL.
    pub no_pg: bool,
    /// Use this PostgreSQL instead of a scratch server.
    pub pg_url: Option<String>,
    /// Where to put the indexes and the scratch server (default: a temp dir).
    pub dir: Option<PathBuf>,
    /// Changes per `SearchIndex::apply` (one commit each) while indexing.
    pub batch: usize,
    /// Distinct queries in the mix.
    pub queries: usize,
    pub seed: u64,
    pub json: bool,
}

// ---------------------------------------------------------------- corpus

/// "a|b|c" → ["a", "b", "c"]
fn words(s: &'static str) -> Vec<&'static str> {
    s.split('|').map(str::trim).collect()
}

/// "a:x|b:y" → [("a", "x"), ("b", "y")]
fn pairs(s: &'static str) -> Vec<(&'static str, &'static str)> {
    words(s)
        .into_iter()
        .map(|w| w.split_once(':').expect("item:category"))
        .collect()
}

fn word(rng: &mut StdRng, v: &[&'static str]) -> &'static str {
    v[rng.gen_range(0..v.len())]
}

/// City centre the vendors are spread around (Manhattan).
const CITY: (f64, f64) = (40.73, -73.99);

static FOOD_ADJ: LazyLock<Vec<&str>> = LazyLock::new(|| {
    words(
        "Spicy|Crispy|Grilled|Smoked|Classic|Vegan|Sweet|Garlic|Honey|Teriyaki|Barbecue|Buffalo|Lemon|Roasted|Fried|Braised|Creamy|Tangy|Korean|Thai|Mexican|Italian|Cajun|Sesame|Chipotle|Pesto|Truffle|Jerk|Tandoori|Szechuan",
    )
});
static PROTEIN: LazyLock<Vec<&str>> = LazyLock::new(|| {
    words(
        "Chicken|Beef|Pork|Tofu|Shrimp|Salmon|Tuna|Lamb|Duck|Mushroom|Veggie|Egg|Paneer|Falafel|Brisket|Chorizo|Turkey|Cod|Bacon|Halloumi",
    )
});
/// dish:category:meal (takes a protein) or side
static DISH: LazyLock<Vec<(&str, &str, bool)>> = LazyLock::new(|| {
    pairs(
        "Ramen:noodles:meal|Burger:burgers:meal|Pizza:pizza:meal|Tacos:mexican:meal|Burrito:mexican:meal|Salad:salads:meal|Sandwich:sandwiches:meal|Curry:curry:meal|Noodles:noodles:meal|Fried \
Rice:rice:meal|Dumplings:dumplings:meal|Wrap:sandwiches:meal|Bowl:bowls:meal|Soup:soups:meal|Pho:noodles:meal|Sushi \
Roll:sushi:meal|Pasta:pasta:meal|Risotto:rice:meal|Kebab:grill:meal|Skewers:grill:meal|Quesadilla:mexican:meal|Bao:dumplings:meal|Pad \
Thai:noodles:meal|Lasagna:pasta:meal|Flatbread:pizza:meal|Poke \
Bowl:bowls:meal|Biryani:rice:meal|Gyoza:dumplings:meal|Enchiladas:mexican:meal|Stew:soups:meal|Cheesecake:desserts:side|Brownie:desserts:side|Tiramisu:desserts:side|Milkshake:drinks:side|Lemonade:drinks:side|Iced \
Tea:drinks:side",
    )
    .into_iter()
    .map(|(dish, rest)| {
        let (category, kind) = rest.split_once(':').expect("dish:category:kind");
        (dish, category, kind == "meal")
    })
    .collect()
});
static GROCERY_ADJ: LazyLock<Vec<&str>> = LazyLock::new(|| {
    words(
        "Organic|Fresh|Whole Grain|Low Fat|Free Range|Local|Premium|Unsalted|Extra \
Virgin|Wild|Natural|Sliced|Smoked|Frozen|Gluten Free",
    )
});
/// item:category
static GROCERY_ITEM: LazyLock<Vec<(&str, &str)>> = LazyLock::new(|| {
    pairs(
        "Whole Milk:dairy|Eggs:dairy|Sourdough Bread:bakery|Butter:dairy|Cheddar \
Cheese:dairy|Greek \
Yogurt:dairy|Bananas:produce|Apples:produce|Avocados:produce|Tomatoes:produce|Spinach:produce|Coffee \
Beans:beverages|Olive Oil:pantry|Basmati Rice:pantry|Spaghetti:pantry|Orange \
Juice:beverages|Almond Milk:dairy|Peanut Butter:pantry|Honey:pantry|Oat \
Flakes:pantry|Chicken Breast:meat|Ground Beef:meat|Salmon Fillet:seafood|Sparkling \
Water:beverages|Dark Chocolate:snacks|Potato \
Chips:snacks|Granola:pantry|Mozzarella:dairy|Blueberries:produce|Carrots:produce|Onions:produce|Green \
Tea:beverages|Croissants:bakery|Bagels:bakery|Hummus:deli|Tortillas:bakery|Tomato \
Sauce:pantry|Black Beans:pantry|Ice Cream:frozen|Frozen Peas:frozen",
    )
});
static SIZES: LazyLock<Vec<&str>> =
    LazyLock::new(|| words("1L|2L|500ml|250g|500g|1kg|6 Pack|12 Pack|Family Size|330ml"));
static SHOP_ADJ: LazyLock<Vec<&str>> = LazyLock::new(|| {
    words(
        "Wireless|Stainless|Cotton|Leather|Portable|Ceramic|Bamboo|Waterproof|Rechargeable|Vintage|Compact|Ergonomic|Recycled|Insulated|Scented",
    )
});
/// item:category
static SHOP_ITEM: LazyLock<Vec<(&str, &str)>> = LazyLock::new(|| {
    pairs(
        "Headphones:electronics|Phone Charger:electronics|Water \
Bottle:home|T-Shirt:apparel|Notebook:stationery|Backpack:apparel|Desk \
Lamp:home|Mug:home|Umbrella:apparel|Socks:apparel|Candle:home|Plant \
Pot:garden|Speaker:electronics|Power \
Bank:electronics|Hoodie:apparel|Sunglasses:apparel|Pen \
Set:stationery|Towel:home|Blanket:home|Phone Case:electronics|Yoga \
Mat:sports|Dumbbells:sports|Shampoo:beauty|Toothbrush:beauty|Hand \
Cream:beauty|Batteries:electronics|Cutting Board:kitchen|Frying \
Pan:kitchen|Kettle:kitchen|Scissors:stationery",
    )
});
static VARIANT: LazyLock<Vec<&str>> =
    LazyLock::new(|| words("Black|White|Blue|Red|Green|Large|Small|Medium|Set of 2|Pack of 3"));
static TAXI_ITEM: LazyLock<Vec<&str>> = LazyLock::new(|| {
    words(
        "Standard Ride|XL Ride|Premium Ride|Airport Transfer|Hourly Chauffeur|Pet Friendly \
Ride|Green Electric Ride|Moto Taxi",
    )
});
static VENDOR_PREFIX: LazyLock<Vec<&str>> = LazyLock::new(|| {
    words(
        "Golden|Blue|Happy|Little|Old Town|Urban|Sunny|Green|Royal|Lucky|Mama's|Papa's|Uncle \
Joe's|Corner|Main Street|Harbor|Downtown|Village|Red \
Lantern|Silver|Bright|Twin|Liberty|Empire|Brooklyn|Hudson|Midtown|Park|River|Crown",
    )
});
static RESTAURANT_SUFFIX: LazyLock<Vec<&str>> = LazyLock::new(|| {
    words(
        "Kitchen|Grill|Bistro|Diner|Noodle House|Pizzeria|Taqueria|Cafe|Eatery|Curry House|Sushi \
Bar|Burger Joint|Dumpling House|Trattoria|Canteen",
    )
});
static GROCERY_SUFFIX: LazyLock<Vec<&str>> =
    LazyLock::new(|| words("Market|Grocers|Pantry|Foods|Deli|Fresh Market|Supermarket|Farm Stand"));
static SHOP_SUFFIX: LazyLock<Vec<&str>> =
    LazyLock::new(|| words("Goods|Supply|Store|Emporium|Outfitters|Gadgets|Home Store|Boutique"));
static TAXI_SUFFIX: LazyLock<Vec<&str>> =
    LazyLock::new(|| words("Cabs|Rides|Taxi|Car Service|Limo"));
static TAGS: LazyLock<Vec<&str>> = LazyLock::new(|| {
    words(
        "bestseller|vegetarian|spicy|new|vegan|gluten-free|organic|local|halal|family-size|value|premium|low-sugar|dairy-free|keto|kosher|seasonal|nut-free|eco|gift",
    )
});
/// Description words, most frequent first (drawn with a Zipf-like law).
const DESC_WORDS: &str = "with and fresh our the made house served sauce delicious classic \
daily homemade local best hand perfect rich light crispy tender slow cooked baked grilled topped \
side savory sweet spicy warm creamy signature favorite seasonal premium quality natural organic \
healthy hearty simple traditional authentic recipe flavor taste blend mix ingredients garden farm \
market family portion large small extra choice option serving meal lunch dinner breakfast snack \
delivery fast hot cold chilled roasted toasted smoked marinated seasoned herbs spices garlic onion \
pepper salt lemon lime ginger chili basil oregano cilantro parsley mint rosemary thyme cumin \
paprika sesame soy vinegar honey maple sugar butter cream cheese milk yogurt eggs flour bread \
rice noodles potatoes tomatoes beans corn lettuce cabbage carrots cucumber avocado mushrooms \
olives pickles jalapenos peppers spinach kale broth stock dressing mayo aioli salsa guacamole \
mustard ketchup glaze crust dough filling layer slice piece bite crunch texture aroma golden \
brown green red bright bold smooth juicy zesty tangy smoky nutty fruity earthy delicate generous \
satisfying comforting refreshing wholesome nourishing balanced protein fiber vitamins calories \
vegan vegetarian gluten dairy free low sodium keto friendly kids everyone sharing party weekend \
morning evening night summer winter autumn spring imported sourced sustainably ethically raised \
wild caught grown picked ripe packed sealed bottled canned jar bag box pack bundle durable \
lightweight soft sturdy stylish modern elegant comfortable practical everyday travel office home \
kitchen outdoor gift design material cotton steel wood glass plastic recycled eco battery charge \
hours wireless bluetooth compatible adjustable washable reusable warranty size color ride driver \
clean safe airport city trip luggage seats quick reliable professional licensed available anytime \
around minutes pickup dropoff neighborhood favourite award winning chef inspired street style \
grandma secret famous original double triple stacked loaded melted charred caramelized pickled \
fermented aged cured infused drizzled tossed folded rolled stuffed wrapped steamed poached seared \
whipped frozen iced sparkling brewed roast dark mild medium strong decaf espresso latte mocha \
vanilla chocolate caramel cinnamon nutmeg coconut almond peanut cashew walnut pistachio hazelnut \
berries strawberry raspberry mango pineapple peach apple banana cherry orange grape watermelon";

/// Draws indexes 0..n with probability ∝ 1 / (rank + 1)^s.
struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    fn new(n: usize, s: f64) -> Self {
        let mut acc = 0.0;
        let mut cdf = Vec::with_capacity(n);
        for i in 0..n {
            acc += 1.0 / ((i + 1) as f64).powf(s);
            cdf.push(acc);
        }
        for c in &mut cdf {
            *c /= acc;
        }
        Zipf { cdf }
    }

    fn sample(&self, rng: &mut StdRng) -> usize {
        let u: f64 = rng.gen();
        self.cdf.partition_point(|&c| c < u).min(self.cdf.len() - 1)
    }
}

fn pick<'a, T>(rng: &mut StdRng, v: &'a [T]) -> &'a T {
    &v[rng.gen_range(0..v.len())]
}

/// A point about `sd_km` (normal) around `center`.
fn near(rng: &mut StdRng, center: (f64, f64), sd_km: f64) -> (f64, f64) {
    // Box–Muller
    let (u1, u2): (f64, f64) = (rng.gen_range(1e-12..1.0), rng.gen());
    let r = (-2.0 * u1.ln()).sqrt() * sd_km;
    let (dy, dx) = (
        r * (2.0 * std::f64::consts::PI * u2).sin(),
        r * (2.0 * std::f64::consts::PI * u2).cos(),
    );
    let lat = center.0 + dy / 111.195;
    let lng = center.1 + dx / (111.195 * center.0.to_radians().cos());
    (lat, lng)
}

pub struct Corpus {
    pub vendors: Vec<VendorDoc>,
    pub products: Vec<ProductDoc>,
}

struct Gen {
    rng: StdRng,
    words: Vec<&'static str>,
    word_law: Zipf,
    tag_law: Zipf,
    /// Popular dishes / items come up more often.
    dish_law: Zipf,
    grocery_law: Zipf,
    shop_law: Zipf,
}

impl Gen {
    fn new(seed: u64) -> Self {
        let mut words: Vec<&'static str> = Vec::new();
        for w in DESC_WORDS.split_whitespace() {
            if !words.contains(&w) {
                words.push(w);
            }
        }
        Gen {
            rng: StdRng::seed_from_u64(seed),
            word_law: Zipf::new(words.len(), 1.0),
            words,
            tag_law: Zipf::new(TAGS.len(), 1.0),
            dish_law: Zipf::new(DISH.len(), 0.8),
            grocery_law: Zipf::new(GROCERY_ITEM.len(), 0.8),
            shop_law: Zipf::new(SHOP_ITEM.len(), 0.8),
        }
    }

    fn sentence(&mut self, extra: &[&str], min: usize, max: usize) -> String {
        let n = self.rng.gen_range(min..=max);
        let mut out: Vec<String> = Vec::with_capacity(n);
        for _ in 0..n {
            // a fifth of the words repeat the item's own words
            if !extra.is_empty() && self.rng.gen_bool(0.2) {
                out.push(pick(&mut self.rng, extra).to_lowercase());
            } else {
                out.push(self.words[self.word_law.sample(&mut self.rng)].to_string());
            }
        }
        let mut s = out.join(" ");
        if let Some(first) = s.get_mut(0..1) {
            first.make_ascii_uppercase();
        }
        s.push('.');
        s
    }

    fn tags(&mut self) -> Vec<String> {
        let n = self.rng.gen_range(0..=3);
        let mut tags: Vec<String> = Vec::new();
        for _ in 0..n {
            let t = TAGS[self.tag_law.sample(&mut self.rng)].to_string();
            if !tags.contains(&t) {
                tags.push(t);
            }
        }
        tags
    }

    fn vendor(&mut self, i: usize) -> VendorDoc {
        let kind = match self.rng.gen_range(0..100) {
            0..=49 => "restaurant",
            50..=74 => "grocery",
            75..=94 => "shop",
            _ => "taxi",
        };
        let suffix: &[&'static str] = match kind {
            "restaurant" => &RESTAURANT_SUFFIX,
            "grocery" => &GROCERY_SUFFIX,
            "shop" => &SHOP_SUFFIX,
            _ => &TAXI_SUFFIX,
        };
        let name = format!(
            "{} {}",
            word(&mut self.rng, &VENDOR_PREFIX),
            word(&mut self.rng, suffix)
        );
        let (lat, lng) = near(&mut self.rng, CITY, 5.0);
        let words: Vec<&str> = name.split(' ').collect();
        VendorDoc {
            id: format!("v{i:05}"),
            description: self.sentence(&words, 8, 16),
            name,
            kind: kind.to_string(),
            tags: self.tags(),
            lat,
            lng,
            rating: self
                .rng
                .gen_bool(0.9)
                .then(|| (30.0 + self.rng.gen_range(0.0..20.0f64)).round() / 10.0),
        }
    }

    fn product(&mut self, i: usize, v: &VendorDoc) -> ProductDoc {
        let rng = &mut self.rng;
        let (name, category, price) = match v.kind.as_str() {
            "restaurant" => {
                let (dish, cat, protein) = DISH[self.dish_law.sample(rng)];
                let mut name = String::new();
                if rng.gen_bool(0.7) {
                    name.push_str(word(rng, &FOOD_ADJ));
                    name.push(' ');
                }
                if protein {
                    name.push_str(word(rng, &PROTEIN));
                    name.push(' ');
                }
                name.push_str(dish);
                let price = if protein {
                    rng.gen_range(700..3500)
                } else {
                    rng.gen_range(300..900)
                };
                (name, cat, price)
            }
            "grocery" => {
                let (item, cat) = GROCERY_ITEM[self.grocery_law.sample(rng)];
                let mut name = String::new();
                if rng.gen_bool(0.6) {
                    name.push_str(word(rng, &GROCERY_ADJ));
                    name.push(' ');
                }
                name.push_str(item);
                if rng.gen_bool(0.7) {
                    name.push(' ');
                    name.push_str(word(rng, &SIZES));
                }
                (name, cat, rng.gen_range(99..2000))
            }
            "shop" => {
                let (item, cat) = SHOP_ITEM[self.shop_law.sample(rng)];
                let mut name = String::new();
                if rng.gen_bool(0.6) {
                    name.push_str(word(rng, &SHOP_ADJ));
                    name.push(' ');
                }
                name.push_str(item);
                if rng.gen_bool(0.5) {
                    name.push_str(" - ");
                    name.push_str(word(rng, &VARIANT));
                }
                (name, cat, rng.gen_range(499..15000))
            }
            _ => (
                word(rng, &TAXI_ITEM).to_string(),
                "rides",
                rng.gen_range(1500..8000),
            ),
        };
        let words: Vec<&str> = name.split(' ').filter(|w| w.len() > 2).collect();
        let description = self.sentence(&words, 10, 28);
        let tags = self.tags();
        let rng = &mut self.rng;
        ProductDoc {
            id: format!("p{i:07}"),
            vendor_id: v.id.clone(),
            vendor_name: v.name.clone(),
            vendor_kind: v.kind.clone(),
            name,
            description,
            category: category.to_string(),
            tags,
            price,
            in_stock: !rng.gen_bool(0.07),
            lat: v.lat,
            lng: v.lng,
            rating: rng
                .gen_bool(0.85)
                .then(|| (30.0 + rng.gen_range(0.0..20.0f64)).round() / 10.0),
        }
    }
}

/// `products` products over a few thousand vendors (fewer for small catalogs).
pub fn corpus(products: usize, seed: u64) -> Corpus {
    let mut g = Gen::new(seed);
    let n_vendors = (products / 250).clamp(50, 4000);
    let vendors: Vec<VendorDoc> = (0..n_vendors).map(|i| g.vendor(i)).collect();
    let sellers: Vec<usize> = (0..n_vendors)
        .filter(|&i| vendors[i].kind != "taxi")
        .collect();
    let taxis: Vec<usize> = (0..n_vendors)
        .filter(|&i| vendors[i].kind == "taxi")
        .collect();
    let products = (0..products)
        .map(|i| {
            // ride offers are few; vendors that sell things have the rest
            let v = if !taxis.is_empty() && g.rng.gen_bool(0.01) {
                *pick(&mut g.rng, &taxis)
            } else {
                *pick(&mut g.rng, &sellers)
            };
            g.product(i, &vendors[v])
        })
        .collect();
    Corpus { vendors, products }
}

// ---------------------------------------------------------------- queries

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Class {
    Word,
    Typo,
    Prefix,
    Multi,
    Filtered,
    Geo,
}

impl Class {
    fn name(self) -> &'static str {
        match self {
            Class::Word => "word",
            Class::Typo => "typo",
            Class::Prefix => "prefix",
            Class::Multi => "multi-word",
            Class::Filtered => "filtered",
            Class::Geo => "geo",
        }
    }
}

/// The PostgreSQL form of a query (parameters of one of the prepared statements).
#[derive(Debug, Clone)]
enum PgQuery {
    Text {
        tsq: String,
    },
    Category {
        tsq: String,
        category: String,
    },
    Price {
        tsq: String,
        lo: i64,
        hi: i64,
    },
    InStock {
        tsq: String,
    },
    Typo {
        text: String,
    },
    Geo {
        tsq: String,
        lat: f64,
        lng: f64,
        radius_km: f64,
    },
}

#[derive(Debug, Clone)]
struct MixQuery {
    class: Class,
    ours: SearchQuery,
    pg: PgQuery,
}

/// Lowercase alphabetic words of a product name (what both analyzers keep).
fn name_words(name: &str) -> Vec<String> {
    name.split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| w.len() >= 3 && w.chars().all(|c| c.is_ascii_alphabetic()))
        .map(|w| w.to_ascii_lowercase())
        .collect()
}

/// One or (for words of 9+ characters, half the time) two edits, never on
/// the first letter, keeping the typed word long enough for its edits to
/// be tolerated (1 edit from 5 characters, 2 from 9): what a user
/// mistyping a word looks like to our typo tolerance.
fn typo(rng: &mut StdRng, w: &str) -> String {
    let (edits, min_len) = if w.len() >= 10 && rng.gen_bool(0.5) {
        (2, 9)
    } else {
        (1, 5)
    };
    let mut c: Vec<char> = w.chars().collect();
    for _ in 0..edits {
        let i = rng.gen_range(1..c.len());
        match rng.gen_range(0..4) {
            0 => c[i] = (b'a' + rng.gen_range(0..26u8)) as char, // substitute
            1 if c.len() > min_len => {
                c.remove(i); // delete
            }
            2 if i + 1 < c.len() => c.swap(i, i + 1), // transpose
            _ => c.insert(i, (b'a' + rng.gen_range(0..26u8)) as char), // insert
        }
    }
    c.into_iter().collect()
}

fn tsquery(words: &[String], prefix_last: bool) -> String {
    let mut parts: Vec<String> = words.to_vec();
    if prefix_last {
        if let Some(l) = parts.last_mut() {
            l.push_str(":*");
        }
    }
    parts.join(" & ")
}

/// The query mix, drawn from products of the corpus so that most queries
/// match something, deterministic for a seed. Complete words are sent
/// with a trailing space: our engine treats a last word that ends the text
/// as a prefix (as-you-type) and one followed by a space as a whole word.
fn query_mix(c: &Corpus, n: usize, seed: u64) -> Vec<MixQuery> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5EED_F9E7);
    let mut out = Vec::with_capacity(n);
    let base = |text: String| SearchQuery {
        text,
        limit: 20,
        ..SearchQuery::default()
    };
    while out.len() < n {
        let p = pick(&mut rng, &c.products);
        let words = name_words(&p.name);
        if words.is_empty() {
            continue;
        }
        let class = match rng.gen_range(0..100) {
            0..=24 => Class::Word,
            25..=39 => Class::Typo,
            40..=59 => Class::Prefix,
            60..=74 => Class::Multi,
            75..=89 => Class::Filtered,
            _ => Class::Geo,
        };
        let one = pick(&mut rng, &words).clone();
        let q = match class {
            Class::Word => MixQuery {
                class,
                ours: base(format!("{one} ")),
                pg: PgQuery::Text {
                    tsq: tsquery(&[one], false),
                },
            },
            Class::Typo => {
                let long: Vec<&String> = words.iter().filter(|w| w.len() >= 5).collect();
                if long.is_empty() {
                    continue;
                }
                let w = *pick(&mut rng, &long);
                let mut text = typo(&mut rng, w);
                if words.len() > 1 && rng.gen_bool(0.4) {
                    // a correct neighbour word as well
                    let other = words.iter().find(|o| *o != w).cloned().unwrap_or_default();
                    text = format!("{other} {text}");
                }
                MixQuery {
                    class,
                    ours: base(format!("{text} ")),
                    pg: PgQuery::Typo { text },
                }
            }
            Class::Prefix => {
                let start = rng.gen_range(0..words.len());
                let take = rng.gen_range(1..=2).min(words.len() - start);
                let mut ws: Vec<String> = words[start..start + take].to_vec();
                let last = ws.last_mut().expect("take >= 1");
                if last.len() > 3 {
                    let k = rng.gen_range(3..last.len());
                    last.truncate(k);
                }
                MixQuery {
                    class,
                    ours: base(ws.join(" ")),
                    pg: PgQuery::Text {
                        tsq: tsquery(&ws, true),
                    },
                }
            }
            Class::Multi => {
                if words.len() < 2 {
                    continue;
                }
                let take = rng.gen_range(2..=words.len().min(3));
                let start = rng.gen_range(0..=words.len() - take);
                let ws = words[start..start + take].to_vec();
                MixQuery {
                    class,
                    ours: base(format!("{} ", ws.join(" "))),
                    pg: PgQuery::Text {
                        tsq: tsquery(&ws, false),
                    },
                }
            }
            Class::Filtered => {
                let mut ours = base(format!("{one} "));
                let tsq = tsquery(&[one], false);
                let pg = match rng.gen_range(0..3) {
                    0 => {
                        ours.category = Some(p.category.clone());
                        PgQuery::Category {
                            tsq,
                            category: p.category.clone(),
                        }
                    }
                    1 => {
                        let (lo, hi) = (p.price / 2, p.price * 2);
                        ours.min_price = Some(lo);
                        ours.max_price = Some(hi);
                        PgQuery::Price { tsq, lo, hi }
                    }
                    _ => {
                        ours.in_stock = Some(true);
                        PgQuery::InStock { tsq }
                    }
                };
                MixQuery { class, ours, pg }
            }
            Class::Geo => {
                let (lat, lng) = near(&mut rng, (p.lat, p.lng), 1.0);
                let radius_km = f64::from(rng.gen_range(1..=5u32));
                let mut ours = base(format!("{one} "));
                ours.near = Some((lat, lng));
                ours.radius_km = Some(radius_km);
                ours.sort = Sort::Distance;
                MixQuery {
                    class,
                    ours,
                    pg: PgQuery::Geo {
                        tsq: tsquery(&[one], false),
                        lat,
                        lng,
                        radius_km,
                    },
                }
            }
        };
        out.push(q);
    }
    out
}

// ---------------------------------------------------------------- ours

fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => total += dir_bytes(&e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

struct IndexReport {
    docs: usize,
    seconds: f64,
    bytes: u64,
    /// Seconds of the PostgreSQL COPY alone (the rest is index builds and VACUUM ANALYZE).
    copy_seconds: Option<f64>,
}

impl IndexReport {
    fn docs_per_sec(&self) -> f64 {
        self.docs as f64 / self.seconds.max(1e-9)
    }

    fn to_json(&self) -> Value {
        json!({"docs": self.docs, "seconds": self.seconds, "docs_per_sec": self.docs_per_sec(),
               "bytes": self.bytes, "copy_seconds": self.copy_seconds})
    }
}

/// Index the corpus the way the cell's indexer does: batches of changes,
/// one commit per batch.
fn index_ours(c: &Corpus, dir: &Path, batch: usize) -> anyhow::Result<(SearchIndex, IndexReport)> {
    let started = Instant::now();
    let index = SearchIndex::open_in_dir(dir)?;
    let mut changes: Vec<Change> = Vec::with_capacity(batch);
    let mut applied = 0u64;
    let all = c
        .vendors
        .iter()
        .map(|v| Change::UpsertVendor(v.clone()))
        .chain(c.products.iter().map(|p| Change::UpsertProduct(p.clone())));
    for change in all {
        changes.push(change);
        if changes.len() >= batch {
            applied += 1;
            index.apply(&changes, applied)?;
            changes.clear();
        }
    }
    applied += 1;
    index.apply(&changes, applied)?;
    let seconds = started.elapsed().as_secs_f64();
    let docs = c.vendors.len() + c.products.len();
    eprintln!(
        "ours: {} segments after indexing",
        index.tantivy_index().searchable_segment_metas()?.len()
    );
    anyhow::ensure!(
        index.doc_count() == docs as u64,
        "indexed {} documents, expected {docs}",
        index.doc_count()
    );
    Ok((
        index,
        IndexReport {
            docs,
            seconds,
            bytes: dir_bytes(dir),
            copy_seconds: None,
        },
    ))
}

// ---------------------------------------------------------------- PostgreSQL

/// A throwaway PostgreSQL server in a directory; stopped on drop.
struct ScratchPg {
    bin: PathBuf,
    data: PathBuf,
    as_postgres: bool,
    url: String,
}

fn pg_bin_dir() -> anyhow::Result<PathBuf> {
    if let Some(d) = std::env::var_os("PG_BIN") {
        return Ok(PathBuf::from(d));
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((v, bin))
        })
        .collect();
    found.sort();
    if let Some((_, bin)) = found.pop() {
        return Ok(bin);
    }
    cell::local::which("initdb")
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .context("PostgreSQL not found (apt-get install postgresql postgresql-contrib, set PG_BIN, or pass --pg-url / --no-pg)")
}

impl ScratchPg {
    /// PostgreSQL refuses to run as root: then it runs as `postgres`.
    fn command(&self, program: &str) -> Command {
        let exe = self.bin.join(program);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        }
    }

    fn run(&self, program: &str, args: &[&std::ffi::OsStr]) -> anyhow::Result<()> {
        let out = self
            .command(program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {program}"))?;
        if !out.status.success() {
            bail!(
                "{program} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Settings for this machine class (24 GiB, 2 cores): generous memory,
    /// no durability (a scratch copy; our index is not fsynced by the
    /// benchmark either), no autovacuum (the table is static and is
    /// VACUUM ANALYZEd after the load), JIT off (it only slows short
    /// queries). Parallel query stays at its default.
    const SETTINGS: &'static str = "
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
max_connections = 100
shared_buffers = 2GB
effective_cache_size = 12GB
work_mem = 64MB
maintenance_work_mem = 1GB
random_page_cost = 1.1
effective_io_concurrency = 200
fsync = off
synchronous_commit = off
full_page_writes = off
wal_level = minimal
max_wal_senders = 0
max_wal_size = 8GB
checkpoint_timeout = 30min
autovacuum = off
jit = off
";

    fn start(dir: &Path) -> anyhow::Result<Self> {
        let bin = pg_bin_dir()?;
        let as_postgres = unsafe { libc::geteuid() } == 0;
        std::fs::create_dir_all(dir)?;
        if as_postgres {
            let st = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir)
                .status()?;
            anyhow::ensure!(st.success(), "chown {} to postgres failed", dir.display());
        }
        let data = dir.join("data");
        let port = edge::ports::free_loopback_addr()?.port();
        let mut pg = ScratchPg {
            bin,
            data,
            as_postgres,
            url: format!("host=127.0.0.1 port={port} user=postgres dbname=postgres"),
        };
        pg.run(
            "initdb",
            &[
                "-D".as_ref(),
                pg.data.as_os_str(),
                "-U".as_ref(),
                "postgres".as_ref(),
                "--auth=trust".as_ref(),
                "--encoding=UTF8".as_ref(),
                "--locale=C".as_ref(),
                "--no-sync".as_ref(),
            ],
        )?;
        {
            use std::io::Write;
            let mut conf = std::fs::OpenOptions::new()
                .append(true)
                .open(pg.data.join("postgresql.conf"))?;
            writeln!(conf, "{}\nport = {port}", Self::SETTINGS)?;
        }
        let log = dir.join("postgres.log");
        let started = pg.run(
            "pg_ctl",
            &[
                "-D".as_ref(),
                pg.data.as_os_str(),
                "-l".as_ref(),
                log.as_os_str(),
                "-w".as_ref(),
                "-t".as_ref(),
                "60".as_ref(),
                "start".as_ref(),
            ],
        );
        if let Err(e) = started {
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            pg.data = PathBuf::new(); // nothing to stop
            bail!("{e:#}\n{tail}");
        }
        Ok(pg)
    }
}

impl Drop for ScratchPg {
    fn drop(&mut self) {
        if self.data.as_os_str().is_empty() {
            return;
        }
        let data = self.data.clone();
        if let Err(e) = self.run(
            "pg_ctl",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-m".as_ref(),
                "fast".as_ref(),
                "-w".as_ref(),
                "stop".as_ref(),
            ],
        ) {
            eprintln!("stopping the scratch PostgreSQL: {e:#}");
        }
    }
}

async fn pg_connect(url: &str) -> anyhow::Result<Client> {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .with_context(|| format!("connecting to PostgreSQL at {url}"))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            eprintln!("postgres connection: {e}");
        }
    });
    Ok(client)
}

const T_PRODUCTS: &str = "mc_bench_products";
const T_VENDORS: &str = "mc_bench_vendors";

/// COPY text format: escape the four special characters.
fn copy_text(out: &mut String, s: &str) {
    for ch in s.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
}

fn copy_opt(out: &mut String, v: Option<f64>) {
    match v {
        Some(x) => out.push_str(&x.to_string()),
        None => out.push_str("\\N"),
    }
}

async fn copy_rows<T>(
    client: &Client,
    sql: &str,
    rows: &[T],
    mut line: impl FnMut(&mut String, &T),
) -> anyhow::Result<()> {
    let sink = client.copy_in::<_, Bytes>(sql).await?;
    futures::pin_mut!(sink);
    let mut buf = String::with_capacity(1 << 20);
    for r in rows {
        line(&mut buf, r);
        buf.push('\n');
        if buf.len() >= 1 << 20 {
            sink.send(Bytes::from(std::mem::take(&mut buf))).await?;
            buf.reserve(1 << 20);
        }
    }
    if !buf.is_empty() {
        sink.send(Bytes::from(buf)).await?;
    }
    sink.finish().await?;
    Ok(())
}

/// Same documents in PostgreSQL: a weighted tsvector (name A, tags and
/// vendor name B, description C — our boosts are name 3, tags 2, vendor
/// name 1.5, description 1) with the `simple` configuration (lowercase, no
/// stemming and no stop words, like our analyzer), GIN on it, pg_trgm GIN on
/// the name, btrees for the filters and the bounding box. Timed from table
/// creation to the end of VACUUM ANALYZE.
async fn load_pg(client: &Client, c: &Corpus) -> anyhow::Result<IndexReport> {
    client
        .batch_execute(&format!(
            "CREATE EXTENSION IF NOT EXISTS pg_trgm;
             DROP TABLE IF EXISTS {T_PRODUCTS}, {T_VENDORS};"
        ))
        .await?;
    let started = Instant::now();
    client
        .batch_execute(&format!(
            "CREATE TABLE {T_VENDORS} (
                id text NOT NULL, name text NOT NULL, kind text NOT NULL,
                description text NOT NULL, tags text NOT NULL,
                lat float8 NOT NULL, lng float8 NOT NULL, rating float8,
                tsv tsvector GENERATED ALWAYS AS (
                    setweight(to_tsvector('simple', name), 'A') ||
                    setweight(to_tsvector('simple', tags), 'B') ||
                    setweight(to_tsvector('simple', description), 'C')) STORED);
             CREATE TABLE {T_PRODUCTS} (
                id text NOT NULL, vendor_id text NOT NULL, vendor_name text NOT NULL,
                vendor_kind text NOT NULL, name text NOT NULL, description text NOT NULL,
                category text NOT NULL, tags text NOT NULL, price bigint NOT NULL,
                in_stock boolean NOT NULL, lat float8 NOT NULL, lng float8 NOT NULL,
                rating float8,
                tsv tsvector GENERATED ALWAYS AS (
                    setweight(to_tsvector('simple', name), 'A') ||
                    setweight(to_tsvector('simple', tags || ' ' || vendor_name), 'B') ||
                    setweight(to_tsvector('simple', description), 'C')) STORED);"
        ))
        .await?;
    copy_rows(
        client,
        &format!(
            "COPY {T_VENDORS} (id, name, kind, description, tags, lat, lng, rating) FROM STDIN"
        ),
        &c.vendors,
        |b, v| {
            for s in [&v.id, &v.name, &v.kind, &v.description, &v.tags.join(" ")] {
                copy_text(b, s);
                b.push('\t');
            }
            b.push_str(&format!("{}\t{}\t", v.lat, v.lng));
            copy_opt(b, v.rating);
        },
    )
    .await?;
    copy_rows(
        client,
        &format!(
            "COPY {T_PRODUCTS} (id, vendor_id, vendor_name, vendor_kind, name, description, \
             category, tags, price, in_stock, lat, lng, rating) FROM STDIN"
        ),
        &c.products,
        |b, p| {
            for s in [
                &p.id,
                &p.vendor_id,
                &p.vendor_name,
                &p.vendor_kind,
                &p.name,
                &p.description,
                &p.category,
                &p.tags.join(" "),
            ] {
                copy_text(b, s);
                b.push('\t');
            }
            b.push_str(&format!(
                "{}\t{}\t{}\t{}\t",
                p.price,
                if p.in_stock { "t" } else { "f" },
                p.lat,
                p.lng
            ));
            copy_opt(b, p.rating);
        },
    )
    .await?;
    let copy_seconds = started.elapsed().as_secs_f64();
    // Our index also has the id (updates and deletes), vendor id, category,
    // price, stock and coordinates indexed.
    for sql in [
        format!("ALTER TABLE {T_VENDORS} ADD PRIMARY KEY (id)"),
        format!("CREATE INDEX ON {T_VENDORS} USING gin (tsv)"),
        format!("ALTER TABLE {T_PRODUCTS} ADD PRIMARY KEY (id)"),
        format!("CREATE INDEX ON {T_PRODUCTS} USING gin (tsv)"),
        format!("CREATE INDEX ON {T_PRODUCTS} USING gin (name gin_trgm_ops)"),
        format!("CREATE INDEX ON {T_PRODUCTS} (vendor_id)"),
        format!("CREATE INDEX ON {T_PRODUCTS} (category)"),
        format!("CREATE INDEX ON {T_PRODUCTS} (price)"),
        format!("CREATE INDEX ON {T_PRODUCTS} (lat, lng)"),
        format!("VACUUM ANALYZE {T_VENDORS}"),
        format!("VACUUM ANALYZE {T_PRODUCTS}"),
    ] {
        client.batch_execute(&sql).await?;
    }
    let seconds = started.elapsed().as_secs_f64();
    let row = client
        .query_one(
            &format!(
                "SELECT pg_total_relation_size('{T_PRODUCTS}') + pg_total_relation_size('{T_VENDORS}')"
            ),
            &[],
        )
        .await?;
    let bytes: i64 = row.get(0);
    Ok(IndexReport {
        docs: c.vendors.len() + c.products.len(),
        seconds,
        bytes: bytes as u64,
        copy_seconds: Some(copy_seconds),
    })
}

async fn drop_pg_tables(client: &Client) -> anyhow::Result<()> {
    client
        .batch_execute(&format!("DROP TABLE IF EXISTS {T_PRODUCTS}, {T_VENDORS}"))
        .await?;
    Ok(())
}

/// The statements, prepared once per connection. Each returns the top 20
/// (id, name, vendor name, price, score) and the number of matches
/// (`count(*) OVER ()`, like our `total`).
///
/// Where PostgreSQL does less than our engine (so the comparison favours
/// it): no category facet counts and no highlighted snippets; exact words
/// only, where we also match every word within the typo distance in every
/// text field.
/// Where it differs: typo queries are matched by pg_trgm word similarity
/// against the name only (`<%`, threshold 0.6), ordered by similarity,
/// where we match each word within 1–2 edits in all text fields with BM25;
/// `ts_rank` is not BM25.
struct PgStatements {
    text: Statement,
    category: Statement,
    price: Statement,
    in_stock: Statement,
    typo: Statement,
    geo: Statement,
}

const PG_COLUMNS: &str = "id, name, vendor_name, price";

impl PgStatements {
    async fn prepare(client: &Client) -> anyhow::Result<Self> {
        let fts = |filter: &str| {
            format!(
                "SELECT {PG_COLUMNS}, ts_rank(tsv, q) AS score, count(*) OVER () AS total
                 FROM {T_PRODUCTS}, to_tsquery('simple', $1) q
                 WHERE tsv @@ q {filter}
                 ORDER BY score DESC LIMIT 20"
            )
        };
        Ok(PgStatements {
            text: client.prepare(&fts("")).await?,
            category: client.prepare(&fts("AND category = $2")).await?,
            price: client.prepare(&fts("AND price BETWEEN $2 AND $3")).await?,
            in_stock: client.prepare(&fts("AND in_stock")).await?,
            typo: client
                .prepare(&format!(
                    "SELECT {PG_COLUMNS}, word_similarity($1, name) AS score,
                            count(*) OVER () AS total
                     FROM {T_PRODUCTS} WHERE $1 <% name
                     ORDER BY score DESC LIMIT 20"
                ))
                .await?,
            // Bounding box on the (lat, lng) btree, then exact haversine
            // (the same two steps as ours), nearest first.
            geo: client
                .prepare_typed(
                    &format!(
                        "SELECT {PG_COLUMNS}, d AS score, count(*) OVER () AS total FROM (
                        SELECT {PG_COLUMNS}, 2 * 6371.0088 * asin(sqrt(
                                 power(sin(radians(lat - $2) / 2), 2) +
                                 cos(radians($2)) * cos(radians(lat)) *
                                 power(sin(radians(lng - $3) / 2), 2))) AS d
                        FROM {T_PRODUCTS}
                        WHERE tsv @@ to_tsquery('simple', $1)
                          AND lat BETWEEN $2 - $4 / 111.195 AND $2 + $4 / 111.195
                          AND lng BETWEEN $3 - $4 / (111.195 * cos(radians($2)))
                                      AND $3 + $4 / (111.195 * cos(radians($2)))
                     ) s WHERE d <= $4
                     ORDER BY d LIMIT 20"
                    ),
                    &[Type::TEXT, Type::FLOAT8, Type::FLOAT8, Type::FLOAT8],
                )
                .await?,
        })
    }

    /// Runs `q`; returns (rows, total matches).
    async fn run(
        &self,
        client: &Client,
        q: &PgQuery,
    ) -> Result<(usize, u64), tokio_postgres::Error> {
        let rows = match q {
            PgQuery::Text { tsq } => client.query(&self.text, &[tsq]).await?,
            PgQuery::Category { tsq, category } => {
                client.query(&self.category, &[tsq, category]).await?
            }
            PgQuery::Price { tsq, lo, hi } => client.query(&self.price, &[tsq, lo, hi]).await?,
            PgQuery::InStock { tsq } => client.query(&self.in_stock, &[tsq]).await?,
            PgQuery::Typo { text } => client.query(&self.typo, &[text]).await?,
            PgQuery::Geo {
                tsq,
                lat,
                lng,
                radius_km,
            } => client.query(&self.geo, &[tsq, lat, lng, radius_km]).await?,
        };
        let total = rows
            .first()
            .map(|r| r.get::<_, i64>("total") as u64)
            .unwrap_or(0);
        Ok((rows.len(), total))
    }
}

// ---------------------------------------------------------------- driver

/// Per-class figures of one sequential pass over the mix.
#[derive(Default, Clone)]
struct ClassStats {
    n: usize,
    micros: u64,
    nonempty: usize,
    total: u64,
}

impl ClassStats {
    fn add(&mut self, d: Duration, hits: usize, total: u64) {
        self.n += 1;
        self.micros += d.as_micros() as u64;
        self.nonempty += usize::from(hits > 0);
        self.total += total;
    }

    fn mean_us(&self) -> u64 {
        self.micros / self.n.max(1) as u64
    }

    fn to_json(&self) -> Value {
        json!({"queries": self.n, "mean_us": self.mean_us(),
               "nonempty": self.nonempty, "mean_total": self.total / self.n.max(1) as u64})
    }
}

fn ours_op(index: Arc<SearchIndex>, mix: Arc<Vec<MixQuery>>) -> Op {
    Arc::new(move |c, i| {
        let (index, mix) = (index.clone(), mix.clone());
        Box::pin(async move {
            let q = &mix[mix_slot(c, i, mix.len())];
            index.search_on_workers(q.ours.clone()).await.is_ok()
        })
    })
}

fn pg_op(conns: Arc<Vec<(Client, PgStatements)>>, mix: Arc<Vec<MixQuery>>) -> Op {
    Arc::new(move |c, i| {
        let (conns, mix) = (conns.clone(), mix.clone());
        Box::pin(async move {
            let (client, st) = &conns[c];
            st.run(client, &mix[mix_slot(c, i, mix.len())].pg)
                .await
                .is_ok()
        })
    })
}

/// Each client walks the whole mix from its own starting point.
fn mix_slot(client: usize, i: u64, len: usize) -> usize {
    ((client as u64 * 7919 + i) % len as u64) as usize
}

fn mb(b: u64) -> String {
    format!("{:.0} MB", b as f64 / 1e6)
}

struct SizeResult {
    products: usize,
    ours_index: IndexReport,
    pg_index: Option<IndexReport>,
    classes: BTreeMap<Class, (ClassStats, Option<ClassStats>)>,
    levels: Vec<Level>,
}

/// One client count: (ours, PostgreSQL, median per-round (throughput ratio,
/// p99 ratio) ours/PostgreSQL).
type Level = (LevelResult, Option<LevelResult>, Option<(f64, f64)>);

async fn run_size(
    opts: &SearchBenchOptions,
    products: usize,
    dir: &Path,
    pg_url: Option<&str>,
) -> anyhow::Result<SizeResult> {
    let t = Instant::now();
    let c = corpus(products, opts.seed);
    eprintln!(
        "[{products}] generated {} products, {} vendors in {:.1}s",
        c.products.len(),
        c.vendors.len(),
        t.elapsed().as_secs_f64()
    );
    let ours_dir = dir.join(format!("tantivy-{products}"));
    let _ = std::fs::remove_dir_all(&ours_dir);
    let (index, ours_index) = {
        let (c, d, batch) = (&c, ours_dir.clone(), opts.batch.max(1));
        tokio::task::block_in_place(|| index_ours(c, &d, batch))?
    };
    eprintln!(
        "[{products}] ours: indexed {} docs in {:.1}s ({:.0} docs/s), {} on disk",
        ours_index.docs,
        ours_index.seconds,
        ours_index.docs_per_sec(),
        mb(ours_index.bytes)
    );
    // Queries are measured in the steady state: the background merges the
    // bulk load started are finished (they would otherwise take CPU from
    // the queries and leave more segments to search).
    let t = Instant::now();
    let segments = tokio::task::block_in_place(|| index.wait_merges())?;
    eprintln!(
        "[{products}] ours: merges done in {:.1}s more, {segments} segments",
        t.elapsed().as_secs_f64()
    );
    let index = Arc::new(index);
    let setup = match pg_url {
        Some(url) => {
            let client = pg_connect(url).await?;
            let r = load_pg(&client, &c).await?;
            eprintln!(
                "[{products}] PostgreSQL: loaded (COPY {:.1}s) and indexed in {:.1}s ({:.0} docs/s), {}",
                r.copy_seconds.unwrap_or(0.0),
                r.seconds,
                r.docs_per_sec(),
                mb(r.bytes)
            );
            Some((client, r))
        }
        None => None,
    };
    let mix = Arc::new(query_mix(&c, opts.queries, opts.seed));
    drop(c);

    // One sequential pass: warms both, and shows what each class costs and
    // finds.
    let mut classes: BTreeMap<Class, (ClassStats, Option<ClassStats>)> = BTreeMap::new();
    let pg_main = match &setup {
        Some((client, _)) => Some(PgStatements::prepare(client).await?),
        None => None,
    };
    for q in mix.iter() {
        let t = Instant::now();
        let r = tokio::task::block_in_place(|| index.search(&q.ours))?;
        let e = classes.entry(q.class).or_default();
        e.0.add(t.elapsed(), r.hits.len(), r.total);
        if let (Some((client, _)), Some(st)) = (&setup, &pg_main) {
            let t = Instant::now();
            let (rows, total) = st
                .run(client, &q.pg)
                .await
                .with_context(|| format!("PostgreSQL query {:?}", q.pg))?;
            e.1.get_or_insert_with(ClassStats::default)
                .add(t.elapsed(), rows, total);
        }
    }

    let duration = Duration::from_secs(opts.seconds);
    let mut levels = Vec::new();
    for &clients in &opts.clients {
        let conns = match pg_url {
            Some(url) => {
                let mut v = Vec::with_capacity(clients);
                for _ in 0..clients {
                    let client = pg_connect(url).await?;
                    let st = PgStatements::prepare(&client).await?;
                    v.push((client, st));
                }
                Some(Arc::new(v))
            }
            None => None,
        };
        let mut o_rounds = Vec::new();
        let mut p_rounds = Vec::new();
        for round in 0..opts.rounds.max(1) {
            let o = closed_loop(clients, duration, ours_op(index.clone(), mix.clone())).await?;
            eprintln!(
                "[{products}] round {round} ours       {clients:>3} clients: {:>8.0} q/s  p50 {}  p99 {}",
                o.throughput(),
                us(o.p50_us),
                us(o.p99_us)
            );
            o_rounds.push(o);
            if let Some(conns) = &conns {
                let p = closed_loop(clients, duration, pg_op(conns.clone(), mix.clone())).await?;
                eprintln!(
                    "[{products}] round {round} PostgreSQL {clients:>3} clients: {:>8.0} q/s  p50 {}  p99 {}",
                    p.throughput(),
                    us(p.p50_us),
                    us(p.p99_us)
                );
                p_rounds.push(p);
            }
        }
        let ratios = (!p_rounds.is_empty()).then(|| {
            let mut t: Vec<f64> = o_rounds
                .iter()
                .zip(&p_rounds)
                .map(|(o, p)| o.throughput() / p.throughput().max(1e-9))
                .collect();
            let mut l: Vec<f64> = o_rounds
                .iter()
                .zip(&p_rounds)
                .map(|(o, p)| o.p99_us as f64 / p.p99_us.max(1) as f64)
                .collect();
            (median_f64(&mut t), median_f64(&mut l))
        });
        let pg = (!p_rounds.is_empty()).then(|| median_round(p_rounds));
        levels.push((median_round(o_rounds), pg, ratios));
    }
    let pg_index = match setup {
        Some((client, r)) => {
            drop_pg_tables(&client).await?;
            Some(r)
        }
        None => None,
    };
    drop(index);
    let _ = std::fs::remove_dir_all(&ours_dir);
    Ok(SizeResult {
        products,
        ours_index,
        pg_index,
        classes,
        levels,
    })
}

pub async fn run(opts: SearchBenchOptions) -> anyhow::Result<()> {
    let tmp;
    let dir = match &opts.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            tmp = TempDir::new("marketcell-bench-search")?;
            tmp.path.clone()
        }
    };
    let scratch = if opts.no_pg || opts.pg_url.is_some() {
        None
    } else {
        let pg = ScratchPg::start(&dir.join("pg"))?;
        eprintln!("scratch PostgreSQL at {}", pg.url);
        Some(pg)
    };
    let pg_url = if opts.no_pg {
        None
    } else {
        opts.pg_url
            .clone()
            .or_else(|| scratch.as_ref().map(|s| s.url.clone()))
    };
    let mut results = Vec::new();
    for &n in &opts.products {
        results.push(run_size(&opts, n, &dir, pg_url.as_deref()).await?);
    }
    drop(scratch);
    report(&opts, &results);
    Ok(())
}

fn report(opts: &SearchBenchOptions, results: &[SizeResult]) {
    if opts.json {
        output::json(&json!({
            "seconds": opts.seconds, "rounds": opts.rounds, "queries": opts.queries,
            "batch": opts.batch,
            "sizes": results.iter().map(|r| json!({
                "products": r.products,
                "index": {"ours": r.ours_index.to_json(),
                          "postgres": r.pg_index.as_ref().map(IndexReport::to_json)},
                "classes": r.classes.iter().map(|(c, (o, p))| json!({
                    "class": c.name(), "ours": o.to_json(),
                    "postgres": p.as_ref().map(ClassStats::to_json)})).collect::<Vec<_>>(),
                "levels": r.levels.iter().map(|(o, p, ratio)| json!({
                    "clients": o.clients,
                    "ours": level_json(o),
                    "postgres": p.as_ref().map(level_json),
                    "median_ratios": ratio.map(|(t, l)| json!({"throughput": t, "p99": l})),
                })).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        }));
        return;
    }
    println!(
        "\nsearch: our tantivy index (in-process) vs PostgreSQL full-text search, same catalog, \
         same {} queries;\n{} s per level, {} alternating rounds (median round shown; ratios are \
         medians of per-round ratios)\n",
        opts.queries, opts.seconds, opts.rounds
    );
    let mut rows = Vec::new();
    for r in results {
        let p = r.pg_index.as_ref();
        rows.push(vec![
            r.products.to_string(),
            format!("{:.1}s", r.ours_index.seconds),
            format!("{:.0}", r.ours_index.docs_per_sec()),
            mb(r.ours_index.bytes),
            p.map(|p| {
                format!(
                    "{:.1}s ({:.1}s COPY)",
                    p.seconds,
                    p.copy_seconds.unwrap_or(0.0)
                )
            })
            .unwrap_or("-".into()),
            p.map(|p| format!("{:.0}", p.docs_per_sec()))
                .unwrap_or("-".into()),
            p.map(|p| mb(p.bytes)).unwrap_or("-".into()),
        ]);
    }
    output::table(
        &[
            "PRODUCTS",
            "OURS INDEX",
            "DOCS/S",
            "SIZE",
            "PG LOAD+INDEX",
            "DOCS/S",
            "SIZE",
        ],
        &rows,
    );
    println!();
    let mut rows = Vec::new();
    for r in results {
        for (o, p, ratio) in &r.levels {
            rows.push(vec![
                r.products.to_string(),
                o.clients.to_string(),
                format!("{:.0}", o.throughput()),
                us(o.p50_us),
                us(o.p99_us),
                p.as_ref()
                    .map(|p| format!("{:.0}", p.throughput()))
                    .unwrap_or("-".into()),
                p.as_ref().map(|p| us(p.p50_us)).unwrap_or("-".into()),
                p.as_ref().map(|p| us(p.p99_us)).unwrap_or("-".into()),
                ratio.map(|(t, _)| format!("{t:.1}x")).unwrap_or("-".into()),
                ratio.map(|(_, l)| format!("{l:.2}x")).unwrap_or("-".into()),
            ]);
        }
    }
    output::table(
        &[
            "PRODUCTS",
            "CLIENTS",
            "OURS Q/S",
            "P50",
            "P99",
            "PG Q/S",
            "PG P50",
            "PG P99",
            "OURS/PG Q/S",
            "OURS/PG P99",
        ],
        &rows,
    );
    println!("\none sequential pass over the mix (mean latency; queries with hits; mean matches):");
    let mut rows = Vec::new();
    for r in results {
        for (c, (o, p)) in &r.classes {
            let opt = |f: &dyn Fn(&ClassStats) -> String| p.as_ref().map(f).unwrap_or("-".into());
            rows.push(vec![
                r.products.to_string(),
                c.name().to_string(),
                o.n.to_string(),
                us(o.mean_us()),
                format!("{}", o.nonempty),
                (o.total / o.n.max(1) as u64).to_string(),
                opt(&|p| us(p.mean_us())),
                opt(&|p| format!("{}", p.nonempty)),
                opt(&|p| (p.total / p.n.max(1) as u64).to_string()),
            ]);
        }
    }
    output::table(
        &[
            "PRODUCTS",
            "CLASS",
            "N",
            "OURS MEAN",
            "WITH HITS",
            "MATCHES",
            "PG MEAN",
            "WITH HITS",
            "MATCHES",
        ],
        &rows,
    );
    if let Some(r) = results.iter().max_by_key(|r| r.products) {
        println!();
        for (o, p, ratio) in &r.levels {
            let thr = ratio.map(|(t, _)| format!("{t:.1}x PostgreSQL's throughput (target ≥ 5x)"));
            println!(
                "{} products, {} clients: p99 {} (target ≤ 10 ms){}",
                r.products,
                o.clients,
                us(o.p99_us),
                thr.map(|t| format!(", {t}")).unwrap_or_default()
            );
            let _ = p;
        }
    }
}

fn level_json(r: &LevelResult) -> Value {
    json!({
        "clients": r.clients, "ops": r.ops, "errors": r.errors,
        "ops_per_sec": r.throughput(), "p50_us": r.p50_us,
        "p99_us": r.p99_us, "p999_us": r.p999_us,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corpus_and_mix_are_deterministic_and_plausible() {
        let a = corpus(2000, 7);
        let b = corpus(2000, 7);
        assert_eq!(a.products, b.products);
        assert_eq!(a.vendors, b.vendors);
        assert!(a.products.iter().any(|p| !p.in_stock));
        assert!(a.products.iter().all(|p| !p.name.is_empty()));
        let mix = query_mix(&a, 300, 7);
        assert_eq!(mix.len(), 300);
        for class in [
            Class::Word,
            Class::Typo,
            Class::Prefix,
            Class::Multi,
            Class::Filtered,
            Class::Geo,
        ] {
            assert!(mix.iter().any(|q| q.class == class), "{class:?}");
        }
        // most queries find something in our index
        let idx = SearchIndex::open_in_ram().unwrap();
        let changes: Vec<Change> = a
            .products
            .iter()
            .cloned()
            .map(Change::UpsertProduct)
            .collect();
        idx.apply(&changes, 1).unwrap();
        let found = mix
            .iter()
            .filter(|q| !idx.search(&q.ours).unwrap().hits.is_empty())
            .count();
        assert!(found * 10 >= mix.len() * 9, "{found} of {}", mix.len());
    }

    #[test]
    fn typos_stay_within_our_tolerance() {
        let mut rng = StdRng::seed_from_u64(1);
        for w in ["chicken", "ramen", "mushroom", "quesadilla", "headphones"] {
            for _ in 0..50 {
                let t = typo(&mut rng, w);
                assert_ne!(t.chars().next(), None);
                assert_eq!(t.chars().next(), w.chars().next());
            }
        }
    }

    #[test]
    fn copy_escapes_special_characters() {
        let mut s = String::new();
        copy_text(&mut s, "a\tb\\c\nd");
        assert_eq!(s, "a\\tb\\\\c\\nd");
    }
}
