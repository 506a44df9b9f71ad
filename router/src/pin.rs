//! Which cell a request belongs to (DESIGN.md §10): an id in the path names
//! its cell; an authenticated request goes to its token's home cell; signup
//! and anonymous browsing go by location or explicit region; login asks
//! every cell; a refresh token carries its cell like an id.

use edge::token::Claims;
use http::{Method, StatusCode};
use serde_json::Value;

use crate::directory::{valid_name, Directory, Location};
use crate::problem::Problem;

pub const SIGNUP: &str = "/v1/auth/signup";
pub const LOGIN: &str = "/v1/auth/login";
pub const REFRESH: &str = "/v1/auth/refresh";

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pin {
    Cell(String),
    /// A login: the home cell of this (lower-cased) email is not known yet.
    Login {
        email: String,
    },
}

/// Paths whose answer is the same whichever cell gives it.
const SAME_ON_EVERY_CELL: [&str; 2] = ["/openapi.json", "/graphql/schema.graphql"];

/// Whether the router must read the body to route the request.
pub fn needs_body(method: &Method, path: &str) -> bool {
    method == Method::POST && matches!(path, SIGNUP | LOGIN | REFRESH)
}

/// The cell named by an id-shaped path segment (`<cell>.<kind>_<id>`), if
/// any.
pub fn cell_in_path(path: &str) -> Option<&str> {
    path.split('/').find_map(|seg| {
        let (cell, rest) = seg.split_once('.')?;
        let (kind, id) = rest.split_once('_')?;
        let shaped = valid_name(cell)
            && !kind.is_empty()
            && kind.len() <= 16
            && kind.bytes().all(|b| b.is_ascii_lowercase())
            && !id.is_empty()
            && id.len() <= 64
            && id.bytes().all(|b| b.is_ascii_alphanumeric());
        shaped.then_some(cell)
    })
}

/// A query parameter, percent-decoded as the cell decodes it (so a
/// `%2D74.0` or `lo%6E` pins where the cell will read it); an empty one
/// counts as absent.
fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, v)| k == name && !v.is_empty())
        .map(|(_, v)| v.into_owned())
}

/// The region for anonymous requests: `?region=` or `?lat=&lng=`.
fn region_from_query(dir: &Directory, query: Option<&str>) -> Option<Result<String, Problem>> {
    if let Some(name) = query_param(query, "region") {
        return Some(named_region(dir, &name));
    }
    let lat = query_param(query, "lat")?;
    let lng = query_param(query, "lng")?;
    let at = lat
        .parse::<f64>()
        .ok()
        .zip(lng.parse::<f64>().ok())
        .and_then(|(lat, lng)| Location::new(lat, lng));
    Some(match at {
        Some(at) => located(dir, at),
        None => Err(Problem::bad_request(
            "lat must be in [-90, 90] and lng in [-180, 180]",
        )),
    })
}

fn named_region(dir: &Directory, name: &str) -> Result<String, Problem> {
    match dir.get(name) {
        Some(r) if r.draining => Err(draining(&r.name)),
        Some(r) => Ok(r.cell.clone()),
        None => Err(Problem::not_found(
            "unknown_region",
            format!(
                "no region named {:?}",
                name.chars().take(40).collect::<String>()
            ),
        )),
    }
}

fn located(dir: &Directory, at: Location) -> Result<String, Problem> {
    match dir.at(at) {
        Some(r) if r.draining => Err(draining(&r.name)),
        Some(r) => Ok(r.cell.clone()),
        None => Err(Problem::not_found(
            "no_region",
            format!("no region serves ({}, {})", at.lat, at.lng),
        )),
    }
}

pub fn draining(region: &str) -> Problem {
    Problem::unavailable(
        "region_draining",
        format!("region {region:?} is draining and takes no new sessions"),
    )
}

/// Decides where a request goes. `claims` are already verified; `body` is
/// the parsed JSON body when `needs_body` said so.
/// `up` says whether a cell has a node to take requests; it picks the cell
/// for what every cell serves alike.
pub fn decide(
    dir: &Directory,
    method: &Method,
    path: &str,
    query: Option<&str>,
    claims: Option<&Claims>,
    body: Option<&Value>,
    up: &dyn Fn(&str) -> bool,
) -> Result<Pin, Problem> {
    if let Some(cell) = cell_in_path(path) {
        return match dir.by_cell(cell) {
            Some(_) => Ok(Pin::Cell(cell.to_string())),
            None => Err(Problem::not_found(
                "unknown_cell",
                format!("no cell named {cell:?} is known to this router"),
            )),
        };
    }
    if needs_body(method, path) {
        let body = body.ok_or_else(|| Problem::bad_request("expected a JSON object body"))?;
        let field = |name: &str| body.get(name).and_then(Value::as_str);
        return match path {
            LOGIN => {
                let email = field("email")
                    .filter(|e| !e.is_empty() && e.len() <= 254)
                    .ok_or_else(|| Problem::bad_request("email is required"))?;
                return Ok(Pin::Login {
                    email: email.trim().to_lowercase(),
                });
            }
            REFRESH => {
                let cell = field("refresh_token")
                    .and_then(|t| t.split_once('.'))
                    .map(|(cell, _)| cell)
                    .filter(|c| valid_name(c) && dir.by_cell(c).is_some());
                return match cell {
                    Some(c) => Ok(Pin::Cell(c.to_string())),
                    None => Err(Problem::unauthorized("refresh token not recognised")),
                };
            }
            _ => {
                if let Some(region) = body.get("region") {
                    let name = region
                        .as_str()
                        .ok_or_else(|| Problem::bad_request("region must be a string"))?;
                    named_region(dir, name)
                } else if let Some(loc) = body.get("location") {
                    let at = loc
                        .get("lat")
                        .and_then(Value::as_f64)
                        .zip(loc.get("lng").and_then(Value::as_f64))
                        .and_then(|(lat, lng)| Location::new(lat, lng))
                        .ok_or_else(|| {
                            Problem::bad_request(
                                "location must be {lat in [-90, 90], lng in [-180, 180]}",
                            )
                        })?;
                    located(dir, at)
                } else {
                    Err(Problem::new(
                        StatusCode::BAD_REQUEST,
                        "region_required",
                        "signup through the router needs a location or a region",
                    ))
                }
            }
        }
        .map(Pin::Cell);
    }
    if let Some(c) = claims {
        return Ok(Pin::Cell(c.cell.clone()));
    }
    match region_from_query(dir, query) {
        Some(r) => r.map(Pin::Cell),
        // Documents every cell serves alike: any cell answers them.
        None if SAME_ON_EVERY_CELL.contains(&path) => dir
            .regions()
            .find(|r| !r.draining && up(&r.cell))
            .or_else(|| dir.regions().find(|r| up(&r.cell)))
            .or_else(|| dir.regions().next())
            .map(|r| Pin::Cell(r.cell.clone()))
            .ok_or_else(|| Problem::unavailable("cell_unavailable", "no cells are configured")),
        None => Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "region_required",
            "anonymous requests through the router need lat and lng, or region, in the query",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::directory::{Region, RegionSpec};
    use edge::token::Role;
    use serde_json::json;

    fn dir() -> (tempfile::TempDir, Directory) {
        let t = tempfile::tempdir().unwrap();
        let mut d = Directory::load(&t.path().join("r.json")).unwrap();
        for (name, lat, lng) in [("nyc", 40.71, -74.0), ("lon", 51.5, -0.12)] {
            let spec = RegionSpec {
                cell: name.into(),
                center: Some(Location { lat, lng }),
                radius_km: Some(80.0),
                bbox: None,
                nodes: vec!["http://127.0.0.1:9".into()],
            };
            d.put(Region::from_spec(name, spec).unwrap()).unwrap();
        }
        (t, d)
    }

    fn claims(cell: &str) -> Claims {
        Claims {
            sub: "x".into(),
            role: Role::Customer,
            cell: cell.into(),
            exp: 0,
            iat: 0,
            jti: "j".into(),
            sid: None,
        }
    }

    #[test]
    fn ids_in_paths() {
        assert_eq!(
            cell_in_path("/v1/orders/nyc.ord_01JD3ABC/accept"),
            Some("nyc")
        );
        assert_eq!(
            cell_in_path("/v1/vendors/lon.ven_01X/products"),
            Some("lon")
        );
        assert_eq!(cell_in_path("/v1/me"), None);
        assert_eq!(cell_in_path("/v1/orders/NYC.ord_1"), None);
        assert_eq!(cell_in_path("/v1/orders/nyc.ord_"), None);
        assert_eq!(cell_in_path("/openapi.json"), None);
    }

    #[test]
    fn decisions() {
        let (_t, d) = dir();
        let get = Method::GET;
        let post = Method::POST;
        let pin = |m: &Method, p: &str, q: Option<&str>, c: Option<&Claims>, b: Option<&Value>| {
            decide(&d, m, p, q, c, b, &|_| true)
        };
        // Path id beats the token.
        assert_eq!(
            pin(
                &get,
                "/v1/orders/lon.ord_1",
                None,
                Some(&claims("nyc")),
                None
            )
            .unwrap(),
            Pin::Cell("lon".into())
        );
        assert_eq!(
            pin(&get, "/v1/orders/par.ord_1", None, None, None)
                .unwrap_err()
                .code,
            "unknown_cell"
        );
        assert_eq!(
            pin(&get, "/v1/me", None, Some(&claims("nyc")), None).unwrap(),
            Pin::Cell("nyc".into())
        );
        // Anonymous by location or region.
        assert_eq!(
            pin(
                &get,
                "/v1/search",
                Some("q=pho&lat=51.51&lng=-0.1"),
                None,
                None
            )
            .unwrap(),
            Pin::Cell("lon".into())
        );
        assert_eq!(
            pin(&get, "/v1/search", Some("region=nyc&q=x"), None, None).unwrap(),
            Pin::Cell("nyc".into())
        );
        // Percent-encoded, read as the cell reads it.
        for query in [
            "lat=51.51&lng=%2D0.1",
            "region=lo%6E",
            "q=x&%72egion=lon",
            "region&lat=51.51&lng=-0.1",
        ] {
            assert_eq!(
                pin(&get, "/v1/search", Some(query), None, None).unwrap(),
                Pin::Cell("lon".into()),
                "{query}"
            );
        }
        assert_eq!(
            pin(&get, "/v1/search", Some("q=x"), None, None)
                .unwrap_err()
                .code,
            "region_required"
        );
        assert_eq!(
            pin(&get, "/v1/search", Some("lat=0&lng=0"), None, None)
                .unwrap_err()
                .code,
            "no_region"
        );
        // What every cell serves alike needs no region; a region given is
        // still honoured.
        for doc in SAME_ON_EVERY_CELL {
            assert!(matches!(pin(&get, doc, None, None, None), Ok(Pin::Cell(_))));
            // a cell that is up, whichever comes first
            for up in ["nyc", "lon"] {
                assert_eq!(
                    decide(&d, &get, doc, None, None, None, &|c| c == up).unwrap(),
                    Pin::Cell(up.into())
                );
            }
            assert_eq!(
                pin(&get, doc, Some("region=nyc"), None, None).unwrap(),
                Pin::Cell("nyc".into())
            );
        }
        assert_eq!(
            pin(&get, "/.well-known/jwks.json", None, None, None)
                .unwrap_err()
                .code,
            "region_required",
            "each cell has its own keys"
        );
        assert_eq!(
            pin(&get, "/v1/search", Some("lat=999&lng=0"), None, None)
                .unwrap_err()
                .code,
            "validation_failed"
        );
        // Signup by location / region; login fans out; refresh by prefix.
        let b = json!({"email": "A@x.io", "location": {"lat": 40.7, "lng": -74.01}});
        assert_eq!(
            pin(&post, SIGNUP, None, None, Some(&b)).unwrap(),
            Pin::Cell("nyc".into())
        );
        let b = json!({"email": "a@x.io", "region": "mars"});
        assert_eq!(
            pin(&post, SIGNUP, None, None, Some(&b)).unwrap_err().code,
            "unknown_region"
        );
        assert_eq!(
            pin(&post, LOGIN, None, None, Some(&json!({"email": " A@X.io"}))).unwrap(),
            Pin::Login {
                email: "a@x.io".into()
            }
        );
        assert_eq!(
            pin(
                &post,
                REFRESH,
                None,
                None,
                Some(&json!({"refresh_token": "lon.mcr_abc"}))
            )
            .unwrap(),
            Pin::Cell("lon".into())
        );
        assert_eq!(
            pin(
                &post,
                REFRESH,
                None,
                None,
                Some(&json!({"refresh_token": "mcr_abc"}))
            )
            .unwrap_err()
            .code,
            "unauthorized"
        );
    }
}
