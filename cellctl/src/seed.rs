//! `cellctl seed --demo`: a believable demo region loaded through the
//! public API, as apps would create it (and slowed by its rate limits,
//! which it honours): vendors of every kind with their own catalogs (a few
//! hundred products at believable prices), customers, and drivers who are
//! ready to work — with a vehicle profile, approved by ops, online, and
//! placed by one location ping near the region's vendors.
//!
//! Everything drawn at random comes from `--seed`, so a seed always loads
//! the same region; the accounts' emails depend on it too, so loading the
//! same seed into a cell twice fails at the first signup (`409`), before
//! anything is written twice.

use std::time::Duration;

use anyhow::{bail, Context};
use futures::{StreamExt, TryStreamExt};
use rand::{rngs::StdRng, seq::SliceRandom, Rng, SeedableRng};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// A product: its name and typical price in cents (each vendor prices it a
/// little differently).
type Item = (&'static str, u32);

/// Categories and their items.
type Menu = &'static [(&'static str, &'static [Item])];

/// A vendor: kind, name, tags, catalog, and the share of the catalog it
/// carries (grocers and pharmacies stock part of a common range).
struct Spec {
    kind: &'static str,
    name: &'static str,
    tags: &'static [&'static str],
    menu: Menu,
    carries: f64,
}

const TRATTORIA: Menu = &[
    (
        "antipasti",
        &[
            ("Bruschetta", 895),
            ("Caprese Salad", 1095),
            ("Arancini", 995),
            ("Garlic Bread", 595),
        ],
    ),
    (
        "pizza",
        &[
            ("Margherita", 1399),
            ("Diavola", 1599),
            ("Quattro Formaggi", 1699),
            ("Marinara", 1199),
            ("Funghi", 1499),
            ("Prosciutto e Rucola", 1799),
        ],
    ),
    (
        "pasta",
        &[
            ("Penne Arrabbiata", 1395),
            ("Lasagna", 1695),
            ("Spaghetti Carbonara", 1595),
            ("Fettuccine Alfredo", 1595),
            ("Gnocchi al Pesto", 1495),
        ],
    ),
    (
        "desserts",
        &[("Tiramisu", 795), ("Panna Cotta", 695), ("Cannoli", 595)],
    ),
    (
        "drinks",
        &[
            ("San Pellegrino", 350),
            ("Espresso", 300),
            ("Lemonade", 395),
        ],
    ),
];

const NOODLE_BAR: Menu = &[
    (
        "starters",
        &[
            ("Pork Gyoza", 795),
            ("Vegetable Spring Rolls", 695),
            ("Edamame", 495),
            ("Chicken Satay", 895),
        ],
    ),
    (
        "noodles",
        &[
            ("Pad Thai", 1395),
            ("Tonkotsu Ramen", 1595),
            ("Shoyu Ramen", 1445),
            ("Beef Pho", 1495),
            ("Dan Dan Noodles", 1295),
            ("Chicken Lo Mein", 1295),
            ("Drunken Noodles", 1395),
        ],
    ),
    (
        "rice",
        &[
            ("Egg Fried Rice", 995),
            ("Thai Green Curry", 1495),
            ("Kung Pao Chicken", 1445),
        ],
    ),
    (
        "drinks",
        &[
            ("Thai Iced Tea", 450),
            ("Jasmine Tea", 300),
            ("Coconut Water", 395),
            ("Lychee Soda", 395),
        ],
    ),
];

const TAQUERIA: Menu = &[
    (
        "tacos",
        &[
            ("Al Pastor Tacos", 1095),
            ("Carnitas Tacos", 1095),
            ("Carne Asada Tacos", 1195),
            ("Fish Tacos", 1195),
            ("Veggie Tacos", 995),
        ],
    ),
    (
        "burritos",
        &[
            ("Beef Burrito", 1295),
            ("Chicken Burrito", 1195),
            ("Bean and Cheese Burrito", 995),
            ("Breakfast Burrito", 1095),
        ],
    ),
    (
        "plates",
        &[
            ("Cheese Quesadilla", 995),
            ("Chicken Enchiladas", 1395),
            ("Loaded Nachos", 1095),
            ("Chips and Guacamole", 795),
            ("Elote", 595),
            ("Churros", 595),
        ],
    ),
    (
        "drinks",
        &[("Horchata", 395), ("Jarritos", 350), ("Agua Fresca", 395)],
    ),
];

const CURRY_HOUSE: Menu = &[
    (
        "starters",
        &[
            ("Vegetable Samosas", 695),
            ("Onion Bhaji", 595),
            ("Chicken Pakora", 795),
            ("Papadums and Chutneys", 395),
        ],
    ),
    (
        "curries",
        &[
            ("Chicken Tikka Masala", 1695),
            ("Butter Chicken", 1695),
            ("Lamb Rogan Josh", 1895),
            ("Chicken Vindaloo", 1695),
            ("Chana Masala", 1295),
            ("Palak Paneer", 1395),
            ("Dal Makhani", 1195),
            ("Lamb Biryani", 1895),
        ],
    ),
    (
        "sides",
        &[
            ("Garlic Naan", 395),
            ("Plain Naan", 325),
            ("Pilau Rice", 450),
            ("Raita", 295),
        ],
    ),
    (
        "drinks",
        &[
            ("Mango Lassi", 495),
            ("Masala Chai", 350),
            ("Sparkling Water", 300),
        ],
    ),
];

const BURGER_JOINT: Menu = &[
    (
        "burgers",
        &[
            ("Cheeseburger", 1095),
            ("Bacon Burger", 1295),
            ("Double Smash Burger", 1395),
            ("Mushroom Swiss Burger", 1295),
            ("Veggie Burger", 1095),
            ("Crispy Chicken Sandwich", 1195),
        ],
    ),
    (
        "sides",
        &[
            ("Fries", 395),
            ("Sweet Potato Fries", 495),
            ("Onion Rings", 495),
            ("Chili Cheese Fries", 695),
            ("Coleslaw", 295),
        ],
    ),
    (
        "shakes",
        &[
            ("Vanilla Shake", 595),
            ("Chocolate Shake", 595),
            ("Strawberry Shake", 595),
        ],
    ),
    (
        "drinks",
        &[
            ("Cola", 295),
            ("Root Beer", 295),
            ("Iced Tea", 295),
            ("Lemonade", 350),
        ],
    ),
];

const SUSHI_COUNTER: Menu = &[
    (
        "nigiri",
        &[
            ("Salmon Nigiri", 695),
            ("Tuna Nigiri", 795),
            ("Yellowtail Nigiri", 795),
            ("Eel Nigiri", 795),
        ],
    ),
    (
        "rolls",
        &[
            ("Tuna Roll", 795),
            ("California Roll", 895),
            ("Spicy Tuna Roll", 995),
            ("Salmon Avocado Roll", 895),
            ("Avocado Roll", 595),
            ("Dragon Roll", 1495),
            ("Rainbow Roll", 1595),
        ],
    ),
    (
        "bowls",
        &[
            ("Salmon Poke Bowl", 1595),
            ("Chirashi Bowl", 2295),
            ("Chicken Teriyaki Bowl", 1395),
        ],
    ),
    (
        "sides",
        &[("Miso Soup", 350), ("Seaweed Salad", 550), ("Edamame", 495)],
    ),
    (
        "drinks",
        &[
            ("Green Tea", 300),
            ("Ramune", 395),
            ("Sparkling Water", 300),
        ],
    ),
];

/// The range grocers stock from.
const GROCERY: Menu = &[
    (
        "produce",
        &[
            ("Bananas (bunch)", 149),
            ("Hass Avocado", 129),
            ("Baby Spinach 5 oz", 399),
            ("Gala Apples 3 lb", 499),
            ("Cherry Tomatoes 1 pint", 349),
            ("Strawberries 1 lb", 449),
            ("Blueberries 6 oz", 399),
            ("Carrots 2 lb", 199),
            ("Yellow Onions 3 lb", 349),
            ("Russet Potatoes 5 lb", 499),
            ("Lemon", 79),
            ("Broccoli Crowns 1 lb", 249),
        ],
    ),
    (
        "dairy",
        &[
            ("Whole Milk 1 gal", 429),
            ("Oat Milk 64 oz", 499),
            ("Greek Yogurt 32 oz", 599),
            ("Sharp Cheddar 8 oz", 449),
            ("Unsalted Butter 1 lb", 549),
            ("Large Eggs (12)", 399),
            ("Fresh Mozzarella 8 oz", 399),
            ("Cream Cheese 8 oz", 299),
            ("Heavy Cream 1 pint", 449),
            ("Parmesan Wedge", 699),
        ],
    ),
    (
        "bakery",
        &[
            ("Sourdough Loaf", 599),
            ("Whole Wheat Bread", 449),
            ("Plain Bagels (6)", 499),
            ("Butter Croissants (4)", 599),
            ("Flour Tortillas (10)", 329),
            ("Blueberry Muffins (4)", 549),
        ],
    ),
    (
        "meat and fish",
        &[
            ("Chicken Breast 1 lb", 699),
            ("Ground Beef 1 lb", 649),
            ("Salmon Fillet 1 lb", 1299),
            ("Smoked Bacon 12 oz", 699),
            ("Pork Sausages 1 lb", 599),
            ("Sliced Turkey 8 oz", 599),
        ],
    ),
    (
        "pantry",
        &[
            ("Basmati Rice 2 lb", 499),
            ("Extra Virgin Olive Oil 500 ml", 899),
            ("Penne 1 lb", 199),
            ("Black Beans 15 oz", 129),
            ("Peanut Butter 16 oz", 399),
            ("Rolled Oats 42 oz", 549),
            ("Clover Honey 12 oz", 699),
            ("Crushed Tomatoes 28 oz", 249),
            ("Chicken Broth 32 oz", 299),
            ("Ground Coffee 12 oz", 899),
            ("Corn Flakes 18 oz", 499),
            ("Marinara Sauce 24 oz", 449),
        ],
    ),
    (
        "snacks",
        &[
            ("Tortilla Chips", 449),
            ("Sea Salt Potato Chips", 429),
            ("Roasted Almonds 8 oz", 599),
            ("Dark Chocolate Bar", 349),
            ("Granola Bars (6)", 449),
            ("Microwave Popcorn (3)", 349),
        ],
    ),
    (
        "beverages",
        &[
            ("Orange Juice 52 oz", 499),
            ("Sparkling Water (12 cans)", 599),
            ("Cola (12 cans)", 799),
            ("Spring Water (24 bottles)", 599),
            ("Green Tea (20 bags)", 399),
            ("Ginger Kombucha", 399),
        ],
    ),
    (
        "household",
        &[
            ("Paper Towels (6 rolls)", 999),
            ("Dish Soap", 349),
            ("Laundry Detergent", 1299),
            ("Trash Bags (30)", 899),
            ("Toilet Paper (12 rolls)", 1199),
            ("Aluminum Foil", 449),
        ],
    ),
];

const GADGETS: Menu = &[
    (
        "cables and power",
        &[
            ("USB-C Cable 1 m", 1299),
            ("Lightning Cable 1 m", 1499),
            ("HDMI Cable 2 m", 1499),
            ("USB-C Wall Charger 20 W", 1999),
            ("Power Bank 10000 mAh", 2999),
            ("USB-C Hub 4-Port", 2499),
            ("Car Charger", 1499),
        ],
    ),
    (
        "audio",
        &[
            ("Wireless Earbuds", 4999),
            ("Over-Ear Headphones", 7999),
            ("Bluetooth Speaker", 3999),
            ("Wired Earphones", 1299),
        ],
    ),
    (
        "accessories",
        &[
            ("Phone Case", 1999),
            ("Screen Protector", 999),
            ("Phone Stand", 1299),
            ("Laptop Sleeve 13 in", 2999),
        ],
    ),
    (
        "computing",
        &[
            ("Wireless Mouse", 2499),
            ("Wireless Keyboard", 3999),
            ("USB Flash Drive 64 GB", 1299),
            ("microSD Card 128 GB", 1999),
            ("HD Webcam", 4999),
        ],
    ),
];

const BOOKS: Menu = &[
    (
        "fiction",
        &[
            ("Pride and Prejudice", 999),
            ("Moby-Dick", 1199),
            ("Jane Eyre", 999),
            ("The Great Gatsby", 1099),
            ("Frankenstein", 899),
            ("Crime and Punishment", 1299),
            ("Little Women", 999),
            ("The Count of Monte Cristo", 1499),
        ],
    ),
    (
        "nonfiction",
        &[
            ("City Walking Guide", 1899),
            ("Weeknight Cooking", 2499),
            ("The Houseplant Handbook", 1999),
            ("World Atlas", 2999),
        ],
    ),
    (
        "children",
        &[
            ("Alice's Adventures in Wonderland", 899),
            ("Treasure Island", 899),
            ("Bedtime Stories", 1299),
            ("Animal Coloring Book", 699),
        ],
    ),
    (
        "stationery",
        &[
            ("Dotted Notebook A5", 1299),
            ("Sketchbook", 1499),
            ("Gel Pens (10)", 899),
            ("Bookmark Set", 499),
        ],
    ),
];

const HARDWARE: Menu = &[
    (
        "tools",
        &[
            ("Screwdriver Set", 2499),
            ("Claw Hammer", 1999),
            ("Tape Measure 25 ft", 1299),
            ("Adjustable Wrench", 1599),
            ("Cordless Drill", 8999),
            ("Utility Knife", 899),
            ("Spirit Level 24 in", 1799),
        ],
    ),
    (
        "electrical",
        &[
            ("LED Bulbs (4)", 1299),
            ("Extension Cord 15 ft", 1499),
            ("AA Batteries (8)", 999),
            ("AAA Batteries (8)", 999),
            ("Smoke Detector", 2499),
            ("Surge Protector Power Strip", 1999),
        ],
    ),
    (
        "supplies",
        &[
            ("Duct Tape", 799),
            ("WD-40 8 oz", 699),
            ("Wood Glue", 599),
            ("Picture Hanging Kit", 899),
            ("Work Gloves", 1099),
            ("Sandpaper Assortment", 699),
            ("Zip Ties (100)", 599),
        ],
    ),
];

/// The range pharmacies stock from.
const PHARMACY: Menu = &[
    (
        "health",
        &[
            ("Ibuprofen 200 mg (100)", 899),
            ("Acetaminophen 500 mg (100)", 899),
            ("Allergy Relief (30)", 1499),
            ("Cough Syrup", 1099),
            ("Cough Drops (30)", 399),
            ("Antacid Tablets", 599),
            ("Cold and Flu Relief", 1199),
            ("Saline Nasal Spray", 699),
            ("Digital Thermometer", 1299),
            ("Vitamin C 1000 mg", 999),
            ("Vitamin D3", 899),
            ("Daily Multivitamin", 1499),
        ],
    ),
    (
        "first aid",
        &[
            ("Adhesive Bandages (100)", 599),
            ("Gauze Pads", 499),
            ("Antiseptic Wipes", 449),
            ("Antibiotic Ointment", 699),
            ("Elastic Bandage", 599),
            ("First Aid Kit", 1999),
        ],
    ),
    (
        "personal care",
        &[
            ("Toothpaste", 499),
            ("Toothbrushes (2)", 599),
            ("Dental Floss", 399),
            ("Shampoo", 799),
            ("Conditioner", 799),
            ("Deodorant", 599),
            ("Sunscreen SPF 50", 1299),
            ("Lip Balm", 299),
            ("Hand Sanitizer", 399),
            ("Face Masks (50)", 999),
            ("Body Lotion", 899),
            ("Razor Cartridges (4)", 1599),
        ],
    ),
];

/// The demo region's vendors (taxi companies apart: they sell rides).
const VENDORS: &[Spec] = &[
    Spec {
        kind: "restaurant",
        name: "Trattoria",
        tags: &["italian", "pizza"],
        menu: TRATTORIA,
        carries: 1.0,
    },
    Spec {
        kind: "restaurant",
        name: "Noodle Bar",
        tags: &["asian", "noodles"],
        menu: NOODLE_BAR,
        carries: 1.0,
    },
    Spec {
        kind: "restaurant",
        name: "Taqueria",
        tags: &["mexican"],
        menu: TAQUERIA,
        carries: 1.0,
    },
    Spec {
        kind: "restaurant",
        name: "Curry House",
        tags: &["indian", "curry"],
        menu: CURRY_HOUSE,
        carries: 1.0,
    },
    Spec {
        kind: "restaurant",
        name: "Burger Joint",
        tags: &["american", "burgers"],
        menu: BURGER_JOINT,
        carries: 1.0,
    },
    Spec {
        kind: "restaurant",
        name: "Sushi Counter",
        tags: &["japanese", "sushi"],
        menu: SUSHI_COUNTER,
        carries: 1.0,
    },
    Spec {
        kind: "grocery",
        name: "Corner Market",
        tags: &["groceries", "convenience"],
        menu: GROCERY,
        carries: 0.5,
    },
    Spec {
        kind: "grocery",
        name: "Fresh Grocer",
        tags: &["groceries", "fresh"],
        menu: GROCERY,
        carries: 0.75,
    },
    Spec {
        kind: "grocery",
        name: "Green Basket",
        tags: &["groceries", "organic"],
        menu: GROCERY,
        carries: 0.6,
    },
    Spec {
        kind: "grocery",
        name: "Daily Pantry",
        tags: &["groceries"],
        menu: GROCERY,
        carries: 0.55,
    },
    Spec {
        kind: "retail",
        name: "Gadget Shop",
        tags: &["electronics"],
        menu: GADGETS,
        carries: 1.0,
    },
    Spec {
        kind: "retail",
        name: "Book Nook",
        tags: &["books", "stationery"],
        menu: BOOKS,
        carries: 1.0,
    },
    Spec {
        kind: "retail",
        name: "Hardware Hub",
        tags: &["hardware", "tools"],
        menu: HARDWARE,
        carries: 1.0,
    },
    Spec {
        kind: "pharmacy",
        name: "Care Pharmacy",
        tags: &["pharmacy", "health"],
        menu: PHARMACY,
        carries: 0.85,
    },
    Spec {
        kind: "pharmacy",
        name: "Wellness Drugstore",
        tags: &["pharmacy", "health"],
        menu: PHARMACY,
        carries: 0.85,
    },
];

const TAXI_COMPANIES: [&str; 2] = ["Yellow Cab Co", "City Rides"];

const FIRST_NAMES: [&str; 24] = [
    "Ada", "Ben", "Chloe", "Diego", "Elena", "Farah", "George", "Hana", "Isaac", "Julia", "Kofi",
    "Lena", "Marco", "Nadia", "Omar", "Priya", "Quinn", "Rosa", "Sam", "Tariq", "Uma", "Victor",
    "Wen", "Yusuf",
];
const LAST_NAMES: [&str; 19] = [
    "Alvarez", "Brooks", "Chen", "Dubois", "Evans", "Fischer", "Garcia", "Haddad", "Ito", "Jensen",
    "Kim", "Lopez", "Moreau", "Nguyen", "Okafor", "Patel", "Rossi", "Silva", "Walsh",
];

/// A believable full name for the `i`-th person of a list.
fn person(i: usize, offset: usize) -> String {
    format!(
        "{} {}",
        FIRST_NAMES[(i + offset) % FIRST_NAMES.len()],
        LAST_NAMES[(i * 7 + offset) % LAST_NAMES.len()]
    )
}

/// Drivers' vehicles, in turn, and the orders each carries at once.
const FLEET: [(&str, u32); 10] = [
    ("car", 4),
    ("bike", 2),
    ("scooter", 3),
    ("car", 4),
    ("bike", 2),
    ("van", 10),
    ("car", 4),
    ("scooter", 3),
    ("bike", 2),
    ("car", 4),
];

/// `typical` cents as this vendor prices it: within -10%..+15%, ending in 9.
fn price(rng: &mut StdRng, typical: u32) -> i64 {
    let cents = (f64::from(typical) * rng.gen_range(0.9..1.15)).round() as i64;
    ((cents + 5) / 10 * 10 - 1).max(49)
}

/// Sends a request, waiting out `429` as its `Retry-After` says; answers
/// the status and the JSON body (`null` when there is none).
async fn call(
    http: &reqwest::Client,
    method: Method,
    url: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> anyhow::Result<(StatusCode, Value)> {
    for _ in 0..60 {
        let mut req = http.request(method.clone(), url);
        if let Some(b) = body {
            req = req.json(b);
        }
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let r = req
            .send()
            .await
            .with_context(|| format!("cannot reach {url}"))?;
        let status = r.status();
        if status == StatusCode::TOO_MANY_REQUESTS {
            let wait = r
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(1);
            tokio::time::sleep(Duration::from_secs(wait.min(30))).await;
            continue;
        }
        let text = r.text().await.unwrap_or_default();
        return Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)));
    }
    bail!("{method} {url}: still rate limited after many retries")
}

/// [`call`], with anything but success an error.
async fn send(
    http: &reqwest::Client,
    method: Method,
    url: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> anyhow::Result<Value> {
    let (status, v) = call(http, method.clone(), url, token, body).await?;
    if !status.is_success() {
        bail!("{method} {url}: {status}: {v}");
    }
    Ok(v)
}

async fn post(
    http: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    body: &Value,
) -> anyhow::Result<Value> {
    send(http, Method::POST, url, token, Some(body)).await
}

/// Requests run at once while loading products and drivers.
const PARALLEL: usize = 8;

/// A driver as drawn: account, profile, and where its one ping puts it.
struct DriverPlan {
    email: String,
    name: String,
    profile: Value,
    ping: Value,
}

/// Makes a signed-up driver ready to work: profile, ops approval, online,
/// and one location ping.
async fn ready(
    http: &reqwest::Client,
    base: &str,
    ops: &str,
    id: &str,
    token: &str,
    plan: &DriverPlan,
) -> anyhow::Result<()> {
    let me = format!("{base}/v1/drivers/me");
    send(http, Method::PUT, &me, Some(token), Some(&plan.profile)).await?;
    let approve = format!("{base}/v1/drivers/{id}/approve");
    send(http, Method::POST, &approve, Some(ops), None).await?;
    let online = json!({"online": true});
    let availability = format!("{me}/availability");
    send(http, Method::PUT, &availability, Some(token), Some(&online)).await?;
    let location = format!("{me}/location");
    send(http, Method::PUT, &location, Some(token), Some(&plan.ping)).await?;
    Ok(())
}

pub struct SeedOptions {
    pub base: String,
    pub ops_token: Option<String>,
    pub lat: f64,
    pub lng: f64,
    pub customers: usize,
    pub drivers: usize,
    pub seed: u64,
    pub password: String,
    /// After seeding, keep pinging every driver's position this often until
    /// interrupted (dispatch forgets a position after a minute).
    pub keep_pinging: Option<Duration>,
}

/// How far a kept-up driver wanders from where it was placed, in degrees
/// (about 30 m), as a parked phone's GPS does.
const WANDER_DEG: f64 = 0.0003;

/// Keeps the seeded drivers located until Ctrl-C: each pings `every`, a
/// few metres around where the seed placed it, and logs in again once its
/// access token runs out. A ping that fails (a node restarting, say) is
/// reported and retried at the next tick rather than ending the loop.
async fn keep_pinging(
    http: &reqwest::Client,
    base: &str,
    password: &str,
    mut drivers: Vec<(String, String, Value)>,
    every: Duration,
    seed: u64,
) -> anyhow::Result<()> {
    let mut rng = StdRng::seed_from_u64(seed.rotate_left(17));
    let location = format!("{base}/v1/drivers/me/location");
    let login = format!("{base}/v1/auth/login");
    let mut stop = std::pin::pin!(tokio::signal::ctrl_c());
    let mut tick = tokio::time::interval(every);
    // The seed's own ping just went out.
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut stop => return Ok(()),
        }
        for (email, token, placed) in drivers.iter_mut() {
            let mut ping = placed.clone();
            for axis in ["lat", "lng"] {
                let at = placed[axis].as_f64().unwrap_or_default();
                ping[axis] = json!(at + rng.gen_range(-WANDER_DEG..WANDER_DEG));
            }
            let mut sent = call(http, Method::PUT, &location, Some(token), Some(&ping)).await;
            if matches!(&sent, Ok((StatusCode::UNAUTHORIZED, _))) {
                let body = json!({"email": email, "password": password});
                match send(http, Method::POST, &login, None, Some(&body)).await {
                    Ok(v) => {
                        *token = v["access_token"].as_str().unwrap_or_default().to_string();
                        sent = call(http, Method::PUT, &location, Some(token), Some(&ping)).await;
                    }
                    Err(e) => sent = Err(e),
                }
            }
            match sent {
                Ok((status, _)) if status.is_success() => {}
                Ok((status, v)) => eprintln!("ping of {email}: {status}: {v}"),
                Err(e) => eprintln!("ping of {email}: {e:#}"),
            }
        }
    }
}

pub async fn demo(o: SeedOptions, as_json: bool) -> anyhow::Result<()> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_idle_timeout(edge::tls::CLIENT_POOL_IDLE)
        .build()?;
    let base = o.base.trim_end_matches('/');
    let cell: Value = http
        .get(format!("{base}/v1/cell"))
        .send()
        .await
        .with_context(|| format!("cannot reach {base}"))?
        .json()
        .await?;
    let cell_name = cell["cell"].as_str().unwrap_or("local").to_string();
    let currency = cell["currency"].as_str().unwrap_or("USD").to_string();
    // Drivers are approved (and pricing set) as ops: check the token before
    // writing anything, rather than leave a region whose drivers cannot work.
    let Some(ops) = o.ops_token.as_deref() else {
        bail!(
            "seed --demo approves its drivers as ops: pass the cell's ops token \
             (--token, CELLCTL_TOKEN or --token-file)"
        );
    };
    let (status, v) = call(
        &http,
        Method::GET,
        &format!("{base}/v1/kv?prefix=pricing/"),
        Some(ops),
        None,
    )
    .await?;
    if !status.is_success() {
        bail!("the ops token was refused ({status}: {v}): seed --demo needs the cell's ops token");
    }
    let mut rng = StdRng::seed_from_u64(o.seed);
    let tag = format!("{:06x}", rng.gen::<u32>() & 0xff_ffff);
    let suffix = format!("-{tag}@demo.marketcell.dev");
    let near = |rng: &mut StdRng| json!({"lat": o.lat + rng.gen_range(-0.04..0.04), "lng": o.lng + rng.gen_range(-0.05..0.05)});
    let slug = |name: &str| name.to_lowercase().replace(' ', "-");
    let mut first_signup = true;
    let mut signup = async |email: String, role: &'static str, name: String| {
        let (status, v) = call(
            &http,
            Method::POST,
            &format!("{base}/v1/auth/signup"),
            None,
            Some(&json!({"email": email, "password": o.password, "name": name, "role": role})),
        )
        .await?;
        if status == StatusCode::CONFLICT && first_signup {
            bail!(
                "{email} already exists: this cell already holds the demo region of \
                 --seed {} (perhaps partly, from an interrupted run); pass another --seed \
                 to load a second one",
                o.seed
            );
        }
        if !status.is_success() {
            bail!("signing up {email}: {status}: {v}");
        }
        first_signup = false;
        Ok::<_, anyhow::Error>((
            v["account"]["id"].as_str().unwrap_or_default().to_string(),
            v["access_token"].as_str().unwrap_or_default().to_string(),
        ))
    };

    // Vendors, one after another (signups are rate limited per address),
    // then all their products, several at a time.
    let mut vendors = Vec::new();
    let mut locations = Vec::new();
    let mut products = Vec::new();
    for spec in VENDORS {
        let (_, token) = signup(
            format!("{}{suffix}", slug(spec.name)),
            "vendor",
            spec.name.to_string(),
        )
        .await?;
        let location = near(&mut rng);
        let tags: Vec<&str> = std::iter::once(spec.kind)
            .chain(spec.tags.iter().copied())
            .collect();
        let v = post(
            &http,
            &format!("{base}/v1/vendors"),
            Some(&token),
            &json!({
                "name": spec.name, "kind": spec.kind,
                "description": format!("{}, serving the neighbourhood since {}", spec.name, rng.gen_range(1980..2024)),
                "location": location,
                "address": format!("{} {} St", rng.gen_range(1..400), ["Main", "Oak", "Pine", "Elm", "Cedar"].choose(&mut rng).unwrap_or(&"Main")),
                "prep_minutes": if spec.kind == "restaurant" { rng.gen_range(10..30) } else { rng.gen_range(3..10) },
                "tags": tags,
            }),
        )
        .await?;
        let vid = v["id"].as_str().context("vendor id")?.to_string();
        for (category, items) in spec.menu.iter() {
            for (item, typical) in items.iter() {
                if spec.carries < 1.0 && !rng.gen_bool(spec.carries) {
                    continue;
                }
                // Kitchens cook to order; shops count their shelves.
                let stock = if spec.kind == "restaurant" || rng.gen_bool(0.1) {
                    Value::Null
                } else {
                    json!(rng.gen_range(0..80))
                };
                let description = match spec.kind {
                    "restaurant" => format!("{item}, made to order at {}", spec.name),
                    _ => format!("{item} from {}", spec.name),
                };
                products.push((
                    format!("{base}/v1/vendors/{vid}/products"),
                    token.clone(),
                    json!({
                        "name": item, "description": description, "category": category,
                        "price": {"amount": price(&mut rng, *typical), "currency": currency},
                        "stock": stock, "tags": [category],
                    }),
                ));
            }
        }
        locations.push(location);
        vendors.push(vid);
    }
    for company in TAXI_COMPANIES {
        let (_, token) = signup(
            format!("{}{suffix}", slug(company)),
            "vendor",
            company.into(),
        )
        .await?;
        let location = near(&mut rng);
        let v = post(&http, &format!("{base}/v1/vendors"), Some(&token), &json!({
            "name": company, "kind": "taxi", "description": "rides across the region", "location": location,
            "address": "1 Depot Rd", "prep_minutes": 0, "tags": ["taxi"],
        })).await?;
        locations.push(location);
        vendors.push(v["id"].as_str().context("vendor id")?.to_string());
    }
    let product_count = products.len();
    futures::stream::iter(products.iter())
        .map(|(url, token, body)| post(&http, url, Some(token), body))
        .buffer_unordered(PARALLEL)
        .try_collect::<Vec<_>>()
        .await?;

    let mut customers = Vec::new();
    for i in 0..o.customers {
        customers.push(
            signup(format!("customer{i}{suffix}"), "customer", person(i, 0))
                .await?
                .0,
        );
    }

    // Drivers: drawn first (so the region does not depend on the order
    // requests finish in), signed up, then readied several at a time.
    let plans: Vec<DriverPlan> = (0..o.drivers)
        .map(|i| {
            let (vehicle, capacity) = FLEET[i % FLEET.len()];
            let mut qualifications = Vec::new();
            if rng.gen_bool(0.8) {
                qualifications.push("food");
            }
            if rng.gen_bool(0.35) {
                qualifications.push("rx");
            }
            let plate = (vehicle != "bike").then(|| {
                let letters: String = (0..3)
                    .map(|_| char::from(b'A' + rng.gen_range(0..26u8)))
                    .collect();
                format!("{letters}-{:04}", rng.gen_range(0..10_000))
            });
            // Spread around the region: each near a vendor, in turn.
            let at = &locations[(i * 7) % locations.len()];
            let lat = at["lat"].as_f64().unwrap_or(o.lat) + rng.gen_range(-0.006..0.006);
            let lng = at["lng"].as_f64().unwrap_or(o.lng) + rng.gen_range(-0.008..0.008);
            let (lat, lng) = ((lat * 1e6).round() / 1e6, (lng * 1e6).round() / 1e6);
            let speed = if rng.gen_bool(0.5) {
                0.0
            } else {
                rng.gen_range(1.0..8.0)
            };
            DriverPlan {
                email: format!("driver{i}{suffix}"),
                name: person(i, 11),
                profile: json!({
                    "vehicle": vehicle, "capacity": capacity,
                    "qualifications": qualifications, "license_plate": plate,
                }),
                ping: json!({
                    "lat": lat, "lng": lng,
                    "heading": rng.gen_range(0.0..360.0f64).round(),
                    "speed": (speed * 10.0f64).round() / 10.0,
                }),
            }
        })
        .collect();
    let mut drivers = Vec::new();
    for plan in &plans {
        let (id, token) = signup(plan.email.clone(), "driver", plan.name.clone()).await?;
        drivers.push((id, token, plan));
    }
    futures::stream::iter(drivers.iter())
        .map(|(id, token, plan)| ready(&http, base, ops, id, token, plan))
        .buffer_unordered(PARALLEL)
        .try_collect::<Vec<_>>()
        .await?;

    // Pricing defaults an operator would tune.
    for (k, v) in [
        ("pricing/base_fee", "249"),
        ("pricing/per_km", "89"),
        ("pricing/surge_max", "2.5"),
    ] {
        let r = http
            .put(format!("{base}/v1/kv/{k}"))
            .bearer_auth(ops)
            .body(v)
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("setting {k}: {}", r.status());
        }
    }
    let report = json!({
        "cell": cell_name, "vendors": vendors.len(), "vendor_ids": vendors,
        "taxi_companies": TAXI_COMPANIES.len(), "products": product_count,
        "customers": customers.len(), "drivers": drivers.len(), "drivers_online": drivers.len(),
        "password": o.password, "email_suffix": suffix,
    });
    if as_json {
        crate::output::json(&report);
    } else {
        println!(
            "seeded cell {cell_name}: {} vendors ({} taxi companies), {product_count} products, {} customers, {} drivers (approved, online, located)",
            vendors.len(),
            TAXI_COMPANIES.len(),
            customers.len(),
            drivers.len()
        );
        println!(
            "log in as customer0{suffix} (or driver0{suffix}, trattoria{suffix}, ...) with password {:?}",
            o.password
        );
    }
    let Some(every) = o.keep_pinging else {
        return Ok(());
    };
    eprintln!(
        "keeping {} drivers located: each pings every {} s (Ctrl-C to stop)",
        drivers.len(),
        every.as_secs_f64()
    );
    let drivers = drivers
        .into_iter()
        .map(|(_, token, plan)| (plan.email.clone(), token, plan.ping.clone()))
        .collect();
    keep_pinging(&http, base, &o.password, drivers, every, o.seed).await
}
