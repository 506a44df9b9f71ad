//! `cellctl cluster ...`, `snapshot`, `backup`.

use std::{collections::BTreeSet, path::Path};

use anyhow::bail;
use reqwest::Method;
use serde_json::{json, Value};

use crate::{client::Api, output};

pub async fn status(api: &Api, as_json: bool) -> anyhow::Result<()> {
    let mut s = api.call(Method::GET, "/admin/cluster", None).await?;
    // A node of a build from before command versions has no such endpoint.
    let versions = api
        .call(Method::GET, "/admin/cluster/versions", None)
        .await
        .unwrap_or(Value::Null);
    if as_json {
        s["versions"] = versions;
        output::json(&s);
        return Ok(());
    }
    println!(
        "cell {}  node {} ({})  leader {}  term {}  command version {}",
        output::show(&s["cell"]),
        output::show(&s["node_id"]),
        output::show(&s["role"]),
        output::show(&s["leader"]),
        output::show(&s["term"]),
        output::show(&s["command_version"]),
    );
    println!(
        "log {}  committed {}  applied {}  snapshot {}",
        output::show(&s["last_log_index"]),
        output::show(&s["committed"]),
        output::show(&s["applied"]),
        output::show(&s["snapshot_index"]),
    );
    let voters: BTreeSet<u64> = ids(&s["voters"]);
    let mut rows = Vec::new();
    if let Some(nodes) = s["nodes"].as_object() {
        for (id, n) in nodes {
            let num: u64 = id.parse().unwrap_or(0);
            let role = if s["leader"].as_u64() == Some(num) {
                "leader"
            } else if voters.contains(&num) {
                "voter"
            } else {
                "learner"
            };
            rows.push(vec![
                id.clone(),
                role.to_string(),
                output::show(&n["api_addr"]),
                output::show(&n["peer_addr"]),
                match &versions["nodes"][id] {
                    v if v["version"].is_u64() => output::show(&v["version"]),
                    v if v["error"].is_string() => "no answer".to_string(),
                    _ => "?".to_string(),
                },
            ]);
        }
    }
    println!();
    output::table(&["NODE", "ROLE", "API", "PEER", "COMMANDS"], &rows);
    Ok(())
}

fn ids(v: &Value) -> BTreeSet<u64> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default()
}

pub fn parse_node(spec: &str) -> anyhow::Result<Value> {
    // id=api_addr,peer_addr
    let Some((id, addrs)) = spec.split_once('=') else {
        bail!("node spec must be ID=API_ADDR,PEER_ADDR, got {spec}");
    };
    let Some((api, peer)) = addrs.split_once(',') else {
        bail!("node spec must be ID=API_ADDR,PEER_ADDR, got {spec}");
    };
    let id: u64 = id
        .parse()
        .map_err(|_| anyhow::anyhow!("bad node id in {spec}"))?;
    Ok(json!({"id": id, "api_addr": api, "peer_addr": peer}))
}

pub async fn init(api: &Api, nodes: &[String], as_json: bool) -> anyhow::Result<()> {
    let nodes: Vec<Value> = nodes
        .iter()
        .map(|n| parse_node(n))
        .collect::<anyhow::Result<_>>()?;
    let r = api
        .call(
            Method::POST,
            "/admin/cluster/init",
            Some(json!({ "nodes": nodes })),
        )
        .await?;
    report(&r, as_json, || {
        format!("initialised; voters {}", r["voters"])
    });
    Ok(())
}

pub async fn add_node(
    api: &Api,
    id: u64,
    api_addr: &str,
    peer_addr: &str,
    as_json: bool,
) -> anyhow::Result<()> {
    let r = api
        .call_patiently(
            Method::POST,
            "/admin/cluster/nodes",
            Some(json!({"id": id, "api_addr": api_addr, "peer_addr": peer_addr})),
        )
        .await?;
    report(&r, as_json, || {
        format!("node {id} added as a learner and caught up")
    });
    Ok(())
}

/// Make `id` a voter, keeping the current voters.
pub async fn promote(api: &Api, ids_to_add: &[u64], as_json: bool) -> anyhow::Result<()> {
    let s = api.call(Method::GET, "/admin/cluster", None).await?;
    let mut voters = ids(&s["voters"]);
    voters.extend(ids_to_add.iter().copied());
    let r = api
        .call_patiently(
            Method::POST,
            "/admin/cluster/membership",
            Some(json!({ "voters": voters })),
        )
        .await?;
    report(&r, as_json, || format!("voters now {}", r["voters"]));
    Ok(())
}

pub async fn set_voters(api: &Api, voters: &[u64], as_json: bool) -> anyhow::Result<()> {
    let r = api
        .call_patiently(
            Method::POST,
            "/admin/cluster/membership",
            Some(json!({ "voters": voters })),
        )
        .await?;
    report(&r, as_json, || format!("voters now {}", r["voters"]));
    Ok(())
}

pub async fn remove_node(api: &Api, id: u64, as_json: bool) -> anyhow::Result<()> {
    let r = api
        .call(Method::DELETE, &format!("/admin/cluster/nodes/{id}"), None)
        .await?;
    report(&r, as_json, || format!("node {id} removed"));
    Ok(())
}

pub async fn snapshot(api: &Api, as_json: bool) -> anyhow::Result<()> {
    let r = api
        .call_patiently(Method::POST, "/admin/snapshot", None)
        .await?;
    report(&r, as_json, || {
        format!("snapshot at index {}", r["snapshot_index"])
    });
    Ok(())
}

pub async fn backup(api: &Api, out: &Path, as_json: bool) -> anyhow::Result<()> {
    let n = api.download("/admin/backup", out).await?;
    let r = json!({"file": out.display().to_string(), "bytes": n});
    report(&r, as_json, || {
        format!("wrote {n} bytes to {}", out.display())
    });
    Ok(())
}

fn report(v: &Value, as_json: bool, text: impl FnOnce() -> String) {
    if as_json {
        output::json(v);
    } else {
        println!("{}", text());
    }
}
