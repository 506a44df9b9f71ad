//! Drivers by where they are: a replicated index of every driver's last
//! replicated position by grid square, kept in the same apply as the
//! position itself. The dispatcher and surge pricing read only the squares
//! around a point instead of every driver of the cell.
//!
//! Squares are [`SQUARE_DEG`] degrees on a side (≈ 2.2 km north–south, less
//! east–west away from the equator); keys are `<lat square>/<lng
//! square>/<driver id>` with squares counted from the south pole and the
//! antimeridian, zero-padded so key order is square order.

use std::ops::RangeInclusive;

use storage::{ReadTxn, Table, WriteTxn};

use crate::catalog::Location;

/// `<lat square>/<lng square>/<driver id>` → when the position was taken.
const BY_SQUARE: Table<i64> = Table::new("drivers_by_square");
pub const SQUARE_DEG: f64 = 0.02;
const LAT_SQUARES: i64 = (180.0 / SQUARE_DEG) as i64;
const LNG_SQUARES: i64 = (360.0 / SQUARE_DEG) as i64;
/// Kilometres per degree of latitude.
const KM_PER_DEG: f64 = 111.195;
/// Most rows one lookup reads.
const MAX_ROWS: usize = 100_000;

fn lat_square(lat: f64) -> i64 {
    (((lat + 90.0) / SQUARE_DEG).floor() as i64).clamp(0, LAT_SQUARES - 1)
}

fn lng_square(lng: f64) -> i64 {
    (((lng + 180.0) / SQUARE_DEG).floor() as i64).rem_euclid(LNG_SQUARES)
}

fn key(lat_sq: i64, lng_sq: i64, driver_id: &str) -> Vec<u8> {
    format!("{lat_sq:05}/{lng_sq:05}/{driver_id}").into_bytes()
}

fn key_of(l: &Location, driver_id: &str) -> Vec<u8> {
    key(lat_square(l.lat), lng_square(l.lng), driver_id)
}

/// Moves `driver_id` from its previous square (if any) to `now`'s.
pub fn moved(
    txn: &WriteTxn,
    driver_id: &str,
    before: Option<&Location>,
    now: &Location,
    at: i64,
) -> storage::Result<()> {
    if let Some(b) = before {
        let old = key_of(b, driver_id);
        if old != key_of(now, driver_id) {
            txn.delete(BY_SQUARE, &old)?;
        }
    }
    txn.put(BY_SQUARE, &key_of(now, driver_id), &at)
}

/// The squares' longitude ranges (split in two across the antimeridian).
fn lng_ranges(at: &Location, radius_km: f64) -> Vec<RangeInclusive<i64>> {
    let cos = at.lat.to_radians().cos().abs().max(1e-6);
    let half = radius_km / (KM_PER_DEG * cos);
    if half >= 180.0 {
        return vec![0..=LNG_SQUARES - 1];
    }
    let (lo, hi) = (lng_square(at.lng - half), lng_square(at.lng + half));
    if lo <= hi {
        vec![lo..=hi]
    } else {
        vec![lo..=LNG_SQUARES - 1, 0..=hi]
    }
}

/// A square: (lat square, lng square).
pub type Square = (i64, i64);

pub fn square_of(l: &Location) -> Square {
    (lat_square(l.lat), lng_square(l.lng))
}

/// The squares reaching within `radius_km` of `at`, as rows: a lat square
/// and its range of lng squares.
pub fn rows_near(at: &Location, radius_km: f64) -> Vec<(i64, RangeInclusive<i64>)> {
    let half_lat = radius_km / KM_PER_DEG;
    let lngs = lng_ranges(at, radius_km);
    (lat_square(at.lat - half_lat)..=lat_square(at.lat + half_lat))
        .flat_map(|lat| lngs.iter().map(move |r| (lat, r.clone())))
        .collect()
}

/// The squares reaching within `radius_km` of `at`, nearest first, each
/// with a lower bound on the distance from `at` to any point in it.
pub fn squares_by_distance(at: &Location, radius_km: f64) -> Vec<(Square, f64)> {
    let mut out: Vec<(Square, f64)> = rows_near(at, radius_km)
        .into_iter()
        .flat_map(|(lat, lngs)| lngs.map(move |lng| (lat, lng)))
        .map(|sq| (sq, least_km(at, sq)))
        .filter(|(_, km)| *km <= radius_km)
        .collect();
    out.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
    out
}

/// How close `at` comes to square `sq`: the distance to the square's
/// nearest corner or edge point, shaved by 1% and 10 m so that it stays a
/// lower bound despite treating the square as flat.
fn least_km(at: &Location, (lat_sq, lng_sq): Square) -> f64 {
    let south = lat_sq as f64 * SQUARE_DEG - 90.0;
    let west = lng_sq as f64 * SQUARE_DEG - 180.0;
    let lat = at.lat.clamp(south, south + SQUARE_DEG);
    // How far east of the west edge `at` lies, going round the globe.
    let east = (at.lng - west).rem_euclid(360.0);
    let lng = if east <= SQUARE_DEG {
        at.lng
    } else if east - SQUARE_DEG < 360.0 - east {
        west + SQUARE_DEG
    } else {
        west
    };
    let km = crate::http::orders_api::haversine_km(at, &Location { lat, lng });
    (km * 0.99 - 0.01).max(0.0)
}

/// Ids of drivers whose replicated position lies in square `sq`.
pub fn in_square(read: &ReadTxn, (lat, lng): Square) -> storage::Result<Vec<String>> {
    ids_in(
        read,
        key(lat, lng, "")..format!("{lat:05}/{lng:05}0").into_bytes(),
        MAX_ROWS,
    )
}

/// The driver ids of up to `limit` index rows in `keys`.
fn ids_in(
    read: &ReadTxn,
    keys: std::ops::Range<Vec<u8>>,
    limit: usize,
) -> storage::Result<Vec<String>> {
    Ok(read
        .range(BY_SQUARE, keys, limit)?
        .into_iter()
        .filter_map(|(k, _)| {
            std::str::from_utf8(&k)
                .ok()
                .and_then(|k| k.get(12..))
                .map(str::to_string)
        })
        .collect())
}

/// Ids of drivers whose replicated position lies in a square that reaches
/// within `radius_km` of `at` (a superset: callers measure the distance).
pub fn near(read: &ReadTxn, at: &Location, radius_km: f64) -> storage::Result<Vec<String>> {
    let mut ids = Vec::new();
    for (lat, lng) in rows_near(at, radius_km) {
        let from = key(lat, *lng.start(), "");
        // Past every id of the last square: '/' + 1 = '0'.
        let to = format!("{lat:05}/{:05}0", lng.end()).into_bytes();
        ids.extend(ids_in(read, from..to, MAX_ROWS - ids.len())?);
        if ids.len() >= MAX_ROWS {
            return Ok(ids);
        }
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(lat: f64, lng: f64) -> Location {
        Location { lat, lng }
    }

    fn ids(db: &storage::Store, l: &Location, km: f64) -> Vec<String> {
        let mut v = near(&db.read().unwrap(), l, km).unwrap();
        v.sort();
        v
    }

    #[test]
    fn finds_drivers_in_the_squares_around_a_point_and_follows_moves() {
        let dir = tempfile::tempdir().unwrap();
        let db = storage::Store::open(dir.path().join("s.redb"), 1 << 20).unwrap();
        let places = [
            ("a", at(40.7000, -74.0000)),
            ("b", at(40.7100, -74.0100)),
            ("c", at(41.5000, -73.0000)),
            ("d", at(-33.8700, 151.2100)),
            ("e", at(0.0, 179.999)),
            ("f", at(0.0, -179.999)),
        ];
        let txn = db.write().unwrap();
        for (id, l) in &places {
            moved(&txn, id, None, l, 1).unwrap();
        }
        txn.commit(storage::Durability::Deferred).unwrap();
        assert_eq!(ids(&db, &at(40.705, -74.005), 3.0), ["a", "b"]);
        assert_eq!(ids(&db, &at(-33.87, 151.21), 1.0), ["d"]);
        // Across the antimeridian.
        assert_eq!(ids(&db, &at(0.0, 180.0), 5.0), ["e", "f"]);
        // Every driver within the radius is found (brute force).
        for (lat, lng, km) in [
            (40.7, -74.0, 200.0),
            (41.0, -73.5, 80.0),
            (40.71, -74.01, 0.5),
        ] {
            let c = at(lat, lng);
            let found = ids(&db, &c, km);
            for (id, l) in &places {
                if crate::http::orders_api::haversine_km(l, &c) <= km {
                    assert!(
                        found.contains(&id.to_string()),
                        "{id} within {km} km of {c:?}"
                    );
                }
            }
        }
        // A move leaves the old square.
        let txn = db.write().unwrap();
        moved(&txn, "a", Some(&places[0].1), &at(41.5001, -73.0001), 2).unwrap();
        txn.commit(storage::Durability::Deferred).unwrap();
        assert_eq!(ids(&db, &at(40.705, -74.005), 3.0), ["b"]);
        assert_eq!(ids(&db, &at(41.5, -73.0), 1.0), ["a", "c"]);
    }
}
