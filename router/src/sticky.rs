//! Which node a request sticks to, when it should stick to one.
//!
//! Pages of one search read from different nodes can disagree: hits that tie
//! come in each node's index order, and BM25's statistics count deleted
//! documents until segments merge, which each node does on its own schedule.
//! So one client's search — its query without the cursor — keeps to one node
//! while that node is available, the way search engines route a session's
//! "preference"; other clients and other queries still spread over the cell.
//! The choice is rendezvous hashing with a fixed hash: every router picks
//! the same node, and a node that goes away moves only its own share.

use std::net::IpAddr;

use edge::token::Claims;
use http::Method;

/// FNV-1a over `parts`, each ended by a separator byte no part contains
/// where it matters (`&` never appears inside a query parameter).
fn hash(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in part.iter().chain(&[0xff]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// splitmix64's finaliser: FNV's low bits mix poorly on their own.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A node's fixed identity for ranking.
pub fn node_hash(url: &str) -> u64 {
    hash(&[url.as_bytes()])
}

/// How strongly `key` prefers the node with `node_hash`; the highest wins.
pub fn rank(key: u64, node_hash: u64) -> u64 {
    mix(key ^ mix(node_hash))
}

/// The key of a search read: the client (its account when it sent a token,
/// else its address) and the query's parameters but the cursor, in any
/// order. `None` for every other request.
pub fn search_key(
    method: &Method,
    uri: &http::Uri,
    claims: Option<&Claims>,
    peer: Option<IpAddr>,
) -> Option<u64> {
    if method != Method::GET || uri.path() != "/v1/search" {
        return None;
    }
    let mut params: Vec<&str> = uri
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|kv| !kv.is_empty() && !kv.starts_with("cursor="))
        .collect();
    params.sort_unstable();
    let peer = peer.map(|ip| ip.to_string()).unwrap_or_default();
    let mut parts: Vec<&[u8]> = Vec::with_capacity(params.len() + 2);
    match claims {
        Some(c) => parts.extend([c.cell.as_bytes(), c.sub.as_bytes()]),
        None => parts.push(peer.as_bytes()),
    }
    parts.extend(params.iter().map(|p| p.as_bytes()));
    Some(hash(&parts))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(uri: &str, ip: &str) -> Option<u64> {
        search_key(&Method::GET, &uri.parse().unwrap(), None, ip.parse().ok())
    }

    #[test]
    fn the_pages_of_one_search_share_a_key() {
        let first = key("/v1/search?q=pizza&lat=1&lng=2", "10.0.0.1").unwrap();
        assert_eq!(
            key("/v1/search?q=pizza&cursor=20&lat=1&lng=2", "10.0.0.1"),
            Some(first)
        );
        assert_eq!(
            key("/v1/search?lng=2&lat=1&q=pizza&cursor=40", "10.0.0.1"),
            Some(first)
        );
        assert_ne!(
            key("/v1/search?q=pasta&lat=1&lng=2", "10.0.0.1"),
            Some(first)
        );
        assert_ne!(
            key("/v1/search?q=pizza&lat=1&lng=2", "10.0.0.2"),
            Some(first)
        );
        assert_eq!(key("/v1/products/x", "10.0.0.1"), None);
        assert_eq!(
            search_key(
                &Method::POST,
                &"/v1/search?q=a".parse().unwrap(),
                None,
                None
            ),
            None
        );
    }

    #[test]
    fn keys_spread_over_nodes_and_a_lost_node_moves_only_its_share() {
        let nodes: Vec<u64> = (1..=3)
            .map(|i| node_hash(&format!("http://127.0.0.1:80{i}0")))
            .collect();
        let best = |k: u64, of: &[u64]| *of.iter().max_by_key(|&&n| rank(k, n)).unwrap();
        let keys: Vec<u64> = (0..3000)
            .map(|i| key(&format!("/v1/search?q=item{i}"), "10.0.0.1").unwrap())
            .collect();
        for n in &nodes {
            let share = keys.iter().filter(|&&k| best(k, &nodes) == *n).count();
            assert!((800..1200).contains(&share), "{share} of 3000");
        }
        for &k in &keys {
            let before = best(k, &nodes);
            if before != nodes[2] {
                assert_eq!(best(k, &nodes[..2]), before);
            }
        }
    }
}
