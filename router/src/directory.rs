//! The region directory: which cell serves which area, and at which node
//! addresses. Comes from the config file and `PUT /admin/regions/{name}`,
//! and is persisted so a restarted router routes exactly as before.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::write_private;
use crate::error::RouterError;

/// Node addresses per region; more is a configuration mistake.
const MAX_NODES: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Location {
    pub lat: f64,
    pub lng: f64,
}

impl Location {
    pub fn new(lat: f64, lng: f64) -> Option<Self> {
        let ok = lat.is_finite()
            && lng.is_finite()
            && (-90.0..=90.0).contains(&lat)
            && (-180.0..=180.0).contains(&lng);
        ok.then_some(Location { lat, lng })
    }

    /// Great-circle distance in km.
    pub fn distance_km(self, other: Location) -> f64 {
        const EARTH_RADIUS_KM: f64 = 6371.0;
        let (la1, la2) = (self.lat.to_radians(), other.lat.to_radians());
        let dlat = la2 - la1;
        let dlng = (other.lng - self.lng).to_radians();
        let h = (dlat / 2.0).sin().powi(2) + la1.cos() * la2.cos() * (dlng / 2.0).sin().powi(2);
        2.0 * EARTH_RADIUS_KM * h.sqrt().min(1.0).asin()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BBox {
    pub min_lat: f64,
    pub min_lng: f64,
    pub max_lat: f64,
    pub max_lng: f64,
}

/// A region as written by an operator (config file table or admin PUT body).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionSpec {
    pub cell: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub center: Option<Location>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub radius_km: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bbox: Option<BBox>,
    pub nodes: Vec<String>,
}

/// The area a region covers: exactly one of the two shapes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Area {
    Circle { center: Location, radius_km: f64 },
    Box(BBox),
}

impl Area {
    pub fn contains(&self, at: Location) -> bool {
        match self {
            Area::Circle { center, radius_km } => center.distance_km(at) <= *radius_km,
            Area::Box(b) => {
                let lat_ok = (b.min_lat..=b.max_lat).contains(&at.lat);
                // A box whose min_lng > max_lng crosses the antimeridian.
                let lng_ok = if b.min_lng <= b.max_lng {
                    (b.min_lng..=b.max_lng).contains(&at.lng)
                } else {
                    at.lng >= b.min_lng || at.lng <= b.max_lng
                };
                lat_ok && lng_ok
            }
        }
    }

    pub fn center(&self) -> Location {
        match self {
            Area::Circle { center, .. } => *center,
            Area::Box(b) => {
                let mut lng = (b.min_lng + b.max_lng) / 2.0;
                if b.min_lng > b.max_lng {
                    lng = if lng > 0.0 { lng - 180.0 } else { lng + 180.0 };
                }
                Location {
                    lat: (b.min_lat + b.max_lat) / 2.0,
                    lng,
                }
            }
        }
    }
}

/// A validated region.
#[derive(Debug, Clone, PartialEq)]
pub struct Region {
    pub name: String,
    pub cell: String,
    pub area: Area,
    /// Base URLs (`http://host:port` or `https://…`), without a trailing `/`.
    pub nodes: Vec<String>,
    pub draining: bool,
}

/// Cell and region names: `[a-z][a-z0-9-]{0,31}`, the id prefix syntax.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some('a'..='z'))
        && name.len() <= 32
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

impl Region {
    pub fn from_spec(name: &str, spec: RegionSpec) -> Result<Self, RouterError> {
        let bad = |why: String| RouterError::InvalidRegion {
            name: name.chars().take(40).collect(),
            why,
        };
        if !valid_name(name) {
            return Err(bad("region names match [a-z][a-z0-9-]{0,31}".into()));
        }
        if !valid_name(&spec.cell) {
            return Err(bad("cell names match [a-z][a-z0-9-]{0,31}".into()));
        }
        let area = match (spec.center, spec.radius_km, spec.bbox) {
            (Some(c), Some(r), None) => {
                if Location::new(c.lat, c.lng).is_none() {
                    return Err(bad(
                        "center must have lat in [-90, 90], lng in [-180, 180]".into()
                    ));
                }
                if !(r.is_finite() && r > 0.0 && r <= 20_000.0) {
                    return Err(bad("radius_km must be in (0, 20000]".into()));
                }
                Area::Circle {
                    center: c,
                    radius_km: r,
                }
            }
            (None, None, Some(b)) => {
                let corners_ok = Location::new(b.min_lat, b.min_lng).is_some()
                    && Location::new(b.max_lat, b.max_lng).is_some();
                if !corners_ok || b.min_lat > b.max_lat {
                    return Err(bad(
                        "bbox needs valid coordinates with min_lat <= max_lat".into()
                    ));
                }
                Area::Box(b)
            }
            _ => return Err(bad("give either center + radius_km, or bbox".into())),
        };
        if spec.nodes.is_empty() || spec.nodes.len() > MAX_NODES {
            return Err(bad(format!("nodes must list 1 to {MAX_NODES} base URLs")));
        }
        let mut nodes = Vec::with_capacity(spec.nodes.len());
        for n in &spec.nodes {
            let url = n.trim_end_matches('/');
            let ok = url.len() <= 200
                && url
                    .parse::<http::Uri>()
                    .ok()
                    .filter(|u| {
                        matches!(u.scheme_str(), Some("http" | "https"))
                            && u.authority().is_some()
                            && u.path() == "/"
                            && u.query().is_none()
                    })
                    .is_some();
            if !ok {
                return Err(bad(format!(
                    "node {:?} is not a base URL like http://10.0.0.1:8080",
                    n.chars().take(60).collect::<String>()
                )));
            }
            if !nodes.iter().any(|x: &String| x == url) {
                nodes.push(url.to_string());
            }
        }
        Ok(Region {
            name: name.to_string(),
            cell: spec.cell,
            area,
            nodes,
            draining: false,
        })
    }

    pub fn spec(&self) -> RegionSpec {
        let (center, radius_km, bbox) = match self.area {
            Area::Circle { center, radius_km } => (Some(center), Some(radius_km), None),
            Area::Box(b) => (None, None, Some(b)),
        };
        RegionSpec {
            cell: self.cell.clone(),
            center,
            radius_km,
            bbox,
            nodes: self.nodes.clone(),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Persisted {
    regions: BTreeMap<String, PersistedRegion>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PersistedRegion {
    #[serde(flatten)]
    spec: RegionSpec,
    #[serde(default)]
    draining: bool,
}

/// The regions, by name, persisted to a JSON file after every change.
#[derive(Debug)]
pub struct Directory {
    path: PathBuf,
    regions: BTreeMap<String, Region>,
}

impl Directory {
    /// Loads the persisted directory (empty if there is none yet).
    pub fn load(path: &Path) -> Result<Self, RouterError> {
        let regions = match std::fs::read(path) {
            Ok(bytes) => {
                let p: Persisted =
                    serde_json::from_slice(&bytes).map_err(|e| RouterError::Directory {
                        path: path.to_path_buf(),
                        why: e.to_string(),
                    })?;
                let mut regions = BTreeMap::new();
                for (name, r) in p.regions {
                    let mut region = Region::from_spec(&name, r.spec)?;
                    region.draining = r.draining;
                    regions.insert(name, region);
                }
                regions
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(RouterError::io(path, e)),
        };
        Ok(Directory {
            path: path.to_path_buf(),
            regions,
        })
    }

    fn save(&self) -> Result<(), RouterError> {
        let p = Persisted {
            regions: self
                .regions
                .iter()
                .map(|(name, r)| {
                    (
                        name.clone(),
                        PersistedRegion {
                            spec: r.spec(),
                            draining: r.draining,
                        },
                    )
                })
                .collect(),
        };
        let bytes = serde_json::to_vec_pretty(&p).map_err(|e| RouterError::Directory {
            path: self.path.clone(),
            why: e.to_string(),
        })?;
        write_private(&self.path, &bytes)
    }

    pub fn regions(&self) -> impl Iterator<Item = &Region> {
        self.regions.values()
    }

    pub fn get(&self, name: &str) -> Option<&Region> {
        self.regions.get(name)
    }

    /// The region a cell serves (one region per cell).
    pub fn by_cell(&self, cell: &str) -> Option<&Region> {
        self.regions.values().find(|r| r.cell == cell)
    }

    /// The region whose area contains `at`; where areas overlap, one that
    /// is not draining, then the one whose center is nearest. (The caller
    /// refuses new sessions for a draining region.)
    pub fn at(&self, at: Location) -> Option<&Region> {
        self.regions
            .values()
            .filter(|r| r.area.contains(at))
            .min_by(|a, b| {
                let da = a.area.center().distance_km(at);
                let db = b.area.center().distance_km(at);
                a.draining.cmp(&b.draining).then(da.total_cmp(&db))
            })
    }

    /// The base URLs of the nodes at `addrs` (`host:port`, as a cell's
    /// leader names its voters) that `cell`'s region does not list yet,
    /// reached like the ones it lists (`http` or `https`). Only when the
    /// region lists at least one node by the cell's own address: a router
    /// given other addresses (a proxy, a load balancer, other names) keeps
    /// to those.
    pub fn unlisted(&self, cell: &str, addrs: &[String]) -> Vec<String> {
        let Some(region) = self.regions.values().find(|r| r.cell == cell) else {
            return Vec::new();
        };
        let scheme = match region.nodes.first() {
            Some(n) if n.starts_with("https://") => "https",
            _ => "http",
        };
        let urls: Vec<String> = addrs.iter().map(|a| format!("{scheme}://{a}")).collect();
        if !urls.iter().any(|u| region.nodes.contains(u)) {
            return Vec::new();
        }
        let mut out: Vec<String> = Vec::new();
        for url in urls {
            if !region.nodes.contains(&url) && !out.contains(&url) {
                out.push(url);
            }
        }
        out
    }

    /// Adds `urls` to `cell`'s region, keeping a drain. A URL that is not a
    /// base URL is refused, and nothing changes.
    pub fn add_nodes(&mut self, cell: &str, urls: &[String]) -> Result<(), RouterError> {
        let Some(region) = self.regions.values().find(|r| r.cell == cell) else {
            return Ok(());
        };
        let mut spec = region.spec();
        spec.nodes.extend(urls.iter().cloned());
        let mut grown = Region::from_spec(&region.name, spec)?;
        grown.draining = region.draining;
        self.put(grown)
    }

    /// Adds or replaces a region (which also ends a drain). A cell serves one
    /// region, so another region already naming the cell is refused.
    pub fn put(&mut self, region: Region) -> Result<(), RouterError> {
        if let Some(other) = self
            .regions
            .values()
            .find(|r| r.cell == region.cell && r.name != region.name)
        {
            return Err(RouterError::InvalidRegion {
                name: region.name.clone(),
                why: format!(
                    "cell {:?} already serves region {:?}",
                    region.cell, other.name
                ),
            });
        }
        let previous = self.regions.insert(region.name.clone(), region.clone());
        if let Err(e) = self.save() {
            match previous {
                Some(p) => self.regions.insert(p.name.clone(), p),
                None => self.regions.remove(&region.name),
            };
            return Err(e);
        }
        Ok(())
    }

    pub fn set_draining(&mut self, name: &str, draining: bool) -> Result<bool, RouterError> {
        let Some(r) = self.regions.get_mut(name) else {
            return Ok(false);
        };
        let before = std::mem::replace(&mut r.draining, draining);
        if let Err(e) = self.save() {
            if let Some(r) = self.regions.get_mut(name) {
                r.draining = before;
            }
            return Err(e);
        }
        Ok(true)
    }

    pub fn remove(&mut self, name: &str) -> Result<Option<Region>, RouterError> {
        let Some(r) = self.regions.remove(name) else {
            return Ok(None);
        };
        if let Err(e) = self.save() {
            self.regions.insert(name.to_string(), r);
            return Err(e);
        }
        Ok(Some(r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn circle(cell: &str, lat: f64, lng: f64, r: f64) -> RegionSpec {
        RegionSpec {
            cell: cell.into(),
            center: Some(Location { lat, lng }),
            radius_km: Some(r),
            bbox: None,
            nodes: vec!["http://127.0.0.1:1".into()],
        }
    }

    #[test]
    fn lookup_by_location_prefers_the_nearest_center_and_skips_drains() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("regions.json");
        let mut d = Directory::load(&path).unwrap();
        d.put(Region::from_spec("nyc", circle("nyc", 40.71, -74.0, 100.0)).unwrap())
            .unwrap();
        d.put(Region::from_spec("bos", circle("bos", 42.36, -71.06, 400.0)).unwrap())
            .unwrap();
        let manhattan = Location::new(40.75, -73.98).unwrap();
        assert_eq!(d.at(manhattan).unwrap().name, "nyc");
        assert!(d.at(Location::new(51.5, -0.12).unwrap()).is_none());
        d.set_draining("nyc", true).unwrap();
        assert_eq!(d.at(manhattan).unwrap().name, "bos");
        d.set_draining("bos", true).unwrap();
        assert_eq!(d.at(manhattan).unwrap().name, "nyc");
        d.set_draining("bos", false).unwrap();

        // Persisted, including the drain.
        let again = Directory::load(&path).unwrap();
        assert!(again.get("nyc").unwrap().draining);
        assert_eq!(again.by_cell("bos").unwrap().name, "bos");
    }

    #[test]
    fn a_cells_voters_join_its_region_only_when_it_is_reached_by_their_addresses() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = Directory::load(&dir.path().join("regions.json")).unwrap();
        d.put(Region::from_spec("nyc", circle("nyc", 40.71, -74.0, 100.0)).unwrap())
            .unwrap();
        d.set_draining("nyc", true).unwrap();
        let voters = |v: &[&str]| v.iter().map(|a| a.to_string()).collect::<Vec<_>>();
        // Reached through addresses of its own choosing: left alone.
        assert!(d
            .unlisted("nyc", &voters(&["10.0.0.2:8080", "10.0.0.3:8080"]))
            .is_empty());
        // Reached by a voter's address: the others join, the drain stays.
        let new = d.unlisted(
            "nyc",
            &voters(&["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:2"]),
        );
        assert_eq!(new, ["http://127.0.0.1:2"]);
        d.add_nodes("nyc", &new).unwrap();
        let nyc = d.get("nyc").unwrap();
        assert_eq!(nyc.nodes, ["http://127.0.0.1:1", "http://127.0.0.1:2"]);
        assert!(nyc.draining);
        assert!(d
            .unlisted("nyc", &voters(&["127.0.0.1:1", "127.0.0.1:2"]))
            .is_empty());
        // What is no base URL is refused whole.
        assert!(d
            .add_nodes("nyc", &["http://x:1/path".to_string()])
            .is_err());
        assert_eq!(d.get("nyc").unwrap().nodes.len(), 2);
        assert!(d.unlisted("lon", &voters(&["127.0.0.1:1"])).is_empty());
    }

    #[test]
    fn bad_specs_are_refused() {
        let mut s = circle("nyc", 40.0, -74.0, 10.0);
        s.radius_km = Some(-1.0);
        assert!(Region::from_spec("nyc", s).is_err());
        let mut s = circle("nyc", 40.0, -74.0, 10.0);
        s.bbox = Some(BBox {
            min_lat: 0.0,
            min_lng: 0.0,
            max_lat: 1.0,
            max_lng: 1.0,
        });
        assert!(Region::from_spec("nyc", s).is_err());
        for node in ["ftp://x:1", "http://x:1/path", "not a url", ""] {
            let mut s = circle("nyc", 40.0, -74.0, 10.0);
            s.nodes = vec![node.into()];
            assert!(Region::from_spec("nyc", s).is_err(), "{node}");
        }
        assert!(Region::from_spec("NYC", circle("nyc", 0.0, 0.0, 1.0)).is_err());
        assert!(Region::from_spec("nyc", circle("bad.cell", 0.0, 0.0, 1.0)).is_err());
    }

    #[test]
    fn one_region_per_cell_and_antimeridian_boxes() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = Directory::load(&dir.path().join("r.json")).unwrap();
        d.put(Region::from_spec("a", circle("c1", 0.0, 0.0, 10.0)).unwrap())
            .unwrap();
        assert!(d
            .put(Region::from_spec("b", circle("c1", 5.0, 5.0, 10.0)).unwrap())
            .is_err());
        let fiji = Area::Box(BBox {
            min_lat: -21.0,
            min_lng: 176.0,
            max_lat: -12.0,
            max_lng: -178.0,
        });
        assert!(fiji.contains(Location::new(-17.7, 178.0).unwrap()));
        assert!(fiji.contains(Location::new(-17.7, -179.0).unwrap()));
        assert!(!fiji.contains(Location::new(-17.7, 170.0).unwrap()));
    }
}
