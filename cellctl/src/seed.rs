//! `cellctl seed --demo`: a believable demo region loaded through the
//! public API, as apps would create it (and slowed by its rate limits,
//! which it honours).

use std::time::Duration;

use anyhow::{bail, Context};
use rand::{rngs::StdRng, seq::SliceRandom, Rng, SeedableRng};
use serde_json::{json, Value};

/// A category and its items.
type Menu = &'static [(&'static str, &'static [&'static str])];

const DRINKS: (&str, &[&str]) = (
    "drinks",
    &["Lemonade", "Iced Tea", "Cola", "Sparkling Water"],
);

/// Each restaurant cooks its own cuisine (a pizza from the sushi counter
/// would not be believable).
fn restaurant_menu(name: &str) -> Menu {
    match name {
        "Trattoria" => &[
            (
                "pizza",
                &[
                    "Margherita",
                    "Diavola",
                    "Quattro Formaggi",
                    "Marinara",
                    "Funghi",
                ],
            ),
            (
                "pasta",
                &["Penne Arrabbiata", "Lasagna", "Spaghetti Carbonara"],
            ),
            DRINKS,
        ],
        "Noodle Bar" => &[
            (
                "noodles",
                &["Pad Thai", "Ramen", "Pho", "Dan Dan Noodles", "Lo Mein"],
            ),
            DRINKS,
        ],
        "Taqueria" => &[
            (
                "mexican",
                &[
                    "Beef Burrito",
                    "Al Pastor Tacos",
                    "Carnitas Tacos",
                    "Quesadilla",
                    "Nachos",
                ],
            ),
            DRINKS,
        ],
        "Curry House" => &[
            (
                "curry",
                &[
                    "Chicken Tikka Masala",
                    "Lamb Rogan Josh",
                    "Chana Masala",
                    "Palak Paneer",
                    "Garlic Naan",
                ],
            ),
            ("drinks", &["Mango Lassi", "Masala Chai", "Sparkling Water"]),
        ],
        "Burger Joint" => &[
            (
                "burgers",
                &[
                    "Cheeseburger",
                    "Bacon Burger",
                    "Veggie Burger",
                    "Fries",
                    "Onion Rings",
                ],
            ),
            DRINKS,
        ],
        _ => &[
            (
                "sushi",
                &[
                    "Salmon Nigiri",
                    "Tuna Roll",
                    "California Roll",
                    "Salmon Bowl",
                    "Miso Soup",
                ],
            ),
            ("drinks", &["Green Tea", "Ramune", "Sparkling Water"]),
        ],
    }
}

/// Vendor kind, vendor names, menu (restaurants: see [`restaurant_menu`]).
const KINDS: [(&str, &[&str], Menu); 4] = [
    (
        "restaurant",
        &[
            "Trattoria",
            "Noodle Bar",
            "Taqueria",
            "Curry House",
            "Burger Joint",
            "Sushi Counter",
        ],
        &[],
    ),
    (
        "grocery",
        &[
            "Corner Market",
            "Fresh Grocer",
            "Green Basket",
            "Daily Pantry",
        ],
        &[
            (
                "produce",
                &[
                    "Bananas",
                    "Avocados",
                    "Baby Spinach",
                    "Gala Apples",
                    "Cherry Tomatoes",
                ],
            ),
            (
                "dairy",
                &[
                    "Whole Milk",
                    "Greek Yogurt",
                    "Cheddar",
                    "Butter",
                    "Eggs (12)",
                ],
            ),
            (
                "pantry",
                &[
                    "Basmati Rice",
                    "Olive Oil",
                    "Penne",
                    "Black Beans",
                    "Peanut Butter",
                ],
            ),
        ],
    ),
    (
        "retail",
        &["Gadget Shop", "Book Nook", "Hardware Hub"],
        &[
            (
                "electronics",
                &[
                    "USB-C Cable",
                    "Phone Charger",
                    "Earbuds",
                    "Power Bank",
                    "HDMI Cable",
                ],
            ),
            (
                "books",
                &[
                    "Cookbook",
                    "Mystery Novel",
                    "City Guide",
                    "Notebook",
                    "Sketchbook",
                ],
            ),
            (
                "tools",
                &[
                    "Screwdriver Set",
                    "Tape Measure",
                    "LED Bulb",
                    "Batteries AA",
                    "Duct Tape",
                ],
            ),
        ],
    ),
    (
        "pharmacy",
        &["Care Pharmacy", "Wellness Drugstore"],
        &[
            (
                "health",
                &[
                    "Ibuprofen",
                    "Bandages",
                    "Vitamin C",
                    "Hand Sanitizer",
                    "Cough Drops",
                ],
            ),
            (
                "personal care",
                &[
                    "Toothpaste",
                    "Shampoo",
                    "Sunscreen",
                    "Lip Balm",
                    "Face Masks",
                ],
            ),
        ],
    ),
];

/// POST JSON, waiting out `429` as its `Retry-After` says.
async fn post(
    http: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    body: &Value,
) -> anyhow::Result<Value> {
    for _ in 0..60 {
        let mut req = http.post(url).json(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let r = req
            .send()
            .await
            .with_context(|| format!("cannot reach {url}"))?;
        let status = r.status();
        if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            let wait = r
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(1);
            tokio::time::sleep(Duration::from_secs(wait.min(30))).await;
            continue;
        }
        let v: Value = r.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("{url}: {status}: {v}");
        }
        return Ok(v);
    }
    bail!("{url}: still rate limited after many retries")
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
        .await?
        .json()
        .await?;
    let cell_name = cell["cell"].as_str().unwrap_or("local").to_string();
    let currency = cell["currency"].as_str().unwrap_or("USD").to_string();
    let mut rng = StdRng::seed_from_u64(o.seed);
    let tag = format!("{:06x}", rng.gen::<u32>() & 0xff_ffff);
    let near = |rng: &mut StdRng| json!({"lat": o.lat + rng.gen_range(-0.04..0.04), "lng": o.lng + rng.gen_range(-0.05..0.05)});
    let signup = |email: String, role: &'static str, name: String| {
        let (http, url, pw) = (
            http.clone(),
            format!("{base}/v1/auth/signup"),
            o.password.clone(),
        );
        async move {
            let v = post(
                &http,
                &url,
                None,
                &json!({"email": email, "password": pw, "name": name, "role": role}),
            )
            .await?;
            Ok::<_, anyhow::Error>((
                v["account"]["id"].as_str().unwrap_or_default().to_string(),
                v["access_token"].as_str().unwrap_or_default().to_string(),
            ))
        }
    };
    let mut vendors = Vec::new();
    let mut products = 0usize;
    for (kind, names, menu) in KINDS {
        for name in names.iter() {
            let (_, token) = signup(
                format!(
                    "{}-{tag}@demo.marketcell.dev",
                    name.to_lowercase().replace(' ', "-")
                ),
                "vendor",
                name.to_string(),
            )
            .await?;
            let v = post(
                &http,
                &format!("{base}/v1/vendors"),
                Some(&token),
                &json!({
                    "name": name, "kind": kind, "description": format!("{name}, serving the neighbourhood since {}", rng.gen_range(1980..2024)),
                    "location": near(&mut rng), "address": format!("{} {} St", rng.gen_range(1..400), ["Main", "Oak", "Pine", "Elm", "Cedar"].choose(&mut rng).unwrap_or(&"Main")),
                    "prep_minutes": if kind == "restaurant" { rng.gen_range(10..30) } else { rng.gen_range(3..10) },
                    "tags": [kind],
                }),
            )
            .await?;
            let vid = v["id"].as_str().context("vendor id")?.to_string();
            let menu = if kind == "restaurant" {
                restaurant_menu(name)
            } else {
                menu
            };
            for (category, items) in menu.iter() {
                for item in items.iter() {
                    let stock = if rng.gen_bool(0.3) {
                        Value::Null
                    } else {
                        json!(rng.gen_range(0..60))
                    };
                    post(
                        &http,
                        &format!("{base}/v1/vendors/{vid}/products"),
                        Some(&token),
                        &json!({
                            "name": item, "description": format!("{item} from {name}"), "category": category,
                            "price": {"amount": rng.gen_range(199..2999), "currency": currency}, "stock": stock, "tags": [category],
                        }),
                    )
                    .await?;
                    products += 1;
                }
            }
            vendors.push(vid);
        }
    }
    for company in ["Yellow Cab Co", "City Rides"] {
        let (_, token) = signup(
            format!(
                "{}-{tag}@demo.marketcell.dev",
                company.to_lowercase().replace(' ', "-")
            ),
            "vendor",
            company.into(),
        )
        .await?;
        let v = post(&http, &format!("{base}/v1/vendors"), Some(&token), &json!({
            "name": company, "kind": "taxi", "description": "rides across the region", "location": near(&mut rng),
            "address": "1 Depot Rd", "prep_minutes": 0, "tags": ["taxi"],
        })).await?;
        vendors.push(v["id"].as_str().unwrap_or_default().to_string());
    }
    let mut customers = Vec::new();
    for i in 0..o.customers {
        customers.push(
            signup(
                format!("customer{i}-{tag}@demo.marketcell.dev"),
                "customer",
                format!("Customer {i}"),
            )
            .await?
            .0,
        );
    }
    let mut drivers = Vec::new();
    for i in 0..o.drivers {
        drivers.push(
            signup(
                format!("driver{i}-{tag}@demo.marketcell.dev"),
                "driver",
                format!("Driver {i}"),
            )
            .await?
            .0,
        );
    }
    // Pricing defaults an operator would tune, when we may write them.
    if let Some(ops) = &o.ops_token {
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
    }
    let report = json!({
        "cell": cell_name, "vendors": vendors.len(), "products": products, "customers": customers.len(),
        "drivers": drivers.len(), "password": o.password, "email_suffix": format!("-{tag}@demo.marketcell.dev"),
    });
    if as_json {
        crate::output::json(&report);
    } else {
        println!(
            "seeded cell {cell_name}: {} vendors ({} taxi companies), {products} products, {} customers, {} drivers",
            vendors.len(),
            2,
            customers.len(),
            drivers.len()
        );
        println!(
            "log in as customer0-{tag}@demo.marketcell.dev with password {:?}",
            o.password
        );
    }
    Ok(())
}
