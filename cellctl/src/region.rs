//! `cellctl region add|list|drain|remove`: the routers' region directory.
//! Every router has its own directory, so each command goes to every
//! router given (`--endpoint` takes a comma-separated list).

use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::client::Api;
use crate::output;

pub struct RegionDef {
    pub cell: String,
    pub center: Option<(f64, f64)>,
    pub radius_km: Option<f64>,
    pub bbox: Option<Vec<f64>>,
    pub nodes: Vec<String>,
}

impl RegionDef {
    fn body(&self) -> anyhow::Result<Value> {
        let mut v = json!({"cell": self.cell, "nodes": self.nodes});
        match (&self.center, self.radius_km, &self.bbox) {
            (Some((lat, lng)), Some(r), None) => {
                v["center"] = json!({"lat": lat, "lng": lng});
                v["radius_km"] = json!(r);
            }
            (None, None, Some(b)) if b.len() == 4 => {
                v["bbox"] =
                    json!({"min_lat": b[0], "min_lng": b[1], "max_lat": b[2], "max_lng": b[3]});
            }
            _ => bail!(
                "give --center LAT,LNG with --radius-km, or --bbox MIN_LAT,MIN_LNG,MAX_LAT,MAX_LNG"
            ),
        }
        Ok(v)
    }
}

pub fn parse_point(s: &str) -> anyhow::Result<(f64, f64)> {
    let (lat, lng) = s
        .split_once(',')
        .context("expected LAT,LNG (e.g. 40.73,-73.99)")?;
    Ok((lat.trim().parse()?, lng.trim().parse()?))
}

pub async fn add(
    routers: &[Api],
    name: &str,
    def: &RegionDef,
    json_out: bool,
) -> anyhow::Result<()> {
    let body = def.body()?;
    let mut rows = Vec::new();
    for r in routers {
        let v = r
            .call(
                reqwest::Method::PUT,
                &format!("/admin/regions/{name}"),
                Some(body.clone()),
            )
            .await
            .with_context(|| format!("router {}", r.base))?;
        rows.push((r.base.clone(), v));
    }
    report(rows, json_out);
    Ok(())
}

pub async fn drain(routers: &[Api], name: &str, json_out: bool) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    for r in routers {
        let v = r
            .call(
                reqwest::Method::POST,
                &format!("/admin/regions/{name}/drain"),
                None,
            )
            .await
            .with_context(|| format!("router {}", r.base))?;
        rows.push((r.base.clone(), v));
    }
    report(rows, json_out);
    Ok(())
}

pub async fn remove(routers: &[Api], name: &str) -> anyhow::Result<()> {
    for r in routers {
        r.call(
            reqwest::Method::DELETE,
            &format!("/admin/regions/{name}"),
            None,
        )
        .await
        .with_context(|| format!("router {}", r.base))?;
        println!("{}: region {name} removed", r.base);
    }
    Ok(())
}

pub async fn list(routers: &[Api], json_out: bool) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    for r in routers {
        let v = r
            .call(reqwest::Method::GET, "/admin/regions", None)
            .await
            .with_context(|| format!("router {}", r.base))?;
        for region in v["regions"].as_array().cloned().unwrap_or_default() {
            rows.push((r.base.clone(), region));
        }
    }
    report(rows, json_out);
    Ok(())
}

fn report(rows: Vec<(String, Value)>, json_out: bool) {
    if json_out {
        let all: Vec<Value> = rows
            .into_iter()
            .map(|(router, mut v)| {
                v["router"] = json!(router);
                v
            })
            .collect();
        output::json(&json!(all));
        return;
    }
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|(router, v)| {
            let area = match (&v["center"], &v["bbox"]) {
                (c, _) if c.is_object() => format!(
                    "{},{} r={}km",
                    output::show(&c["lat"]),
                    output::show(&c["lng"]),
                    output::show(&v["radius_km"])
                ),
                (_, b) => format!(
                    "box {},{} {},{}",
                    output::show(&b["min_lat"]),
                    output::show(&b["min_lng"]),
                    output::show(&b["max_lat"]),
                    output::show(&b["max_lng"])
                ),
            };
            vec![
                router.clone(),
                output::show(&v["name"]),
                output::show(&v["cell"]),
                area,
                healthy_of(v),
                output::show(&v["leader"]),
                output::show(&v["draining"]),
                output::show(&v["in_flight"]),
                output::show(&v["idle"]),
            ]
        })
        .collect();
    output::table(
        &[
            "ROUTER",
            "REGION",
            "CELL",
            "AREA",
            "HEALTHY",
            "LEADER",
            "DRAINING",
            "IN FLIGHT",
            "IDLE",
        ],
        &table,
    );
}

/// `healthy/total` nodes of a region view, and how many no check has
/// answered for yet (a region just added).
fn healthy_of(v: &Value) -> String {
    let total = v["nodes"].as_array().map(|a| a.len()).unwrap_or(0);
    let shown = format!("{}/{total}", output::show(&v["healthy_nodes"]));
    match v["unchecked_nodes"].as_u64().unwrap_or(0) {
        0 => shown,
        k => format!("{shown} ({k} unchecked)"),
    }
}
