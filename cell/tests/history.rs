//! Concurrent clients read, write and compare-and-set a few config-store
//! keys on every node while the leader is killed, restarted and cut off;
//! the recorded history must be linearizable.

mod common;

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use common::{
    harness::TestCell,
    linearizability::{check, Event, Op, Outcome},
};
use rand::{rngs::StdRng, Rng, SeedableRng};
use reqwest::StatusCode;

const KEYS: [&str; 3] = ["lin/a", "lin/b", "lin/c"];

fn etag(r: &reqwest::Response) -> Option<u64> {
    r.headers()
        .get("etag")?
        .to_str()
        .ok()?
        .trim_matches('"')
        .parse()
        .ok()
}

/// One client's loop; returns its recorded events.
async fn client(id: usize, urls: Vec<String>, token: String, stop: Arc<AtomicBool>) -> Vec<Event> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(12))
        .build()
        .expect("client");
    let mut rng = StdRng::seed_from_u64(id as u64 * 7919 + 1);
    let mut seen: HashMap<&str, u64> = HashMap::new();
    let mut events = Vec::new();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let key = KEYS[rng.gen_range(0..KEYS.len())];
        let url = format!("{}/v1/kv/{key}", urls[rng.gen_range(0..urls.len())]);
        let roll: f64 = rng.gen();
        n += 1;
        let value = format!("c{id}-{n}").into_bytes();
        let (op, req) = if roll < 0.4 {
            (Op::Read, http.get(&url))
        } else if roll < 0.75 {
            (
                Op::Write(Some(value.clone())),
                http.put(&url).body(value.clone()),
            )
        } else {
            let expect = seen.get(key).copied();
            let req = match expect {
                Some(v) => http.put(&url).header("if-match", format!("\"{v}\"")),
                None => http.put(&url).header("if-none-match", "*"),
            };
            (
                Op::Cas {
                    expect,
                    new: value.clone(),
                },
                req.body(value.clone()),
            )
        };
        let invoke = Instant::now();
        let result = req.bearer_auth(&token).send().await;
        let outcome = match result {
            // Never reached the node: nothing happened.
            Err(e) if e.is_connect() => None,
            Err(_) => Some((Outcome::Unknown, None)),
            Ok(r) => {
                let status = r.status();
                let version = etag(&r);
                let body = r.bytes().await.map(|b| b.to_vec());
                let done = Instant::now();
                match (&op, status, body) {
                    (Op::Read, StatusCode::OK, Ok(b)) => match version {
                        Some(v) => {
                            seen.insert(key, v);
                            Some((Outcome::Read(Some((b, v))), Some(done)))
                        }
                        None => None,
                    },
                    (Op::Read, StatusCode::NOT_FOUND, _) => {
                        seen.remove(key);
                        Some((Outcome::Read(None), Some(done)))
                    }
                    // A failed read changed nothing: leave it out.
                    (Op::Read, _, _) => None,
                    (_, s, _) if s.is_success() => match version {
                        Some(v) => {
                            seen.insert(key, v);
                            Some((Outcome::Written(v), Some(done)))
                        }
                        None => Some((Outcome::Unknown, None)),
                    },
                    (Op::Cas { .. }, StatusCode::PRECONDITION_FAILED, _) => {
                        Some((Outcome::CasFailed, Some(done)))
                    }
                    // 503 and friends: the write may still commit.
                    _ => Some((Outcome::Unknown, None)),
                }
            }
        };
        if let Some((outcome, complete)) = outcome {
            events.push(Event {
                client: id,
                key: key.to_string(),
                op,
                invoke,
                complete,
                outcome,
            });
        }
        if events.last().is_some_and(|e| e.outcome == Outcome::Unknown) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    events
}

async fn leader_among(tc: &TestCell, ids: &[u64]) -> Option<u64> {
    for &id in ids {
        if let Ok(s) = tc.status(id).await {
            if s["role"] == "leader" {
                return Some(id);
            }
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_store_history_is_linearizable_under_kills_and_partitions() {
    let mut tc = TestCell::start(3, true, &[]).await.expect("cell");
    let net = tc.net.clone().expect("proxies");
    let urls: Vec<String> = (1..=3).map(|i| tc.url(i)).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..6)
        .map(|id| {
            tokio::spawn(client(
                id,
                urls.clone(),
                tc.cell.token.clone(),
                stop.clone(),
            ))
        })
        .collect();
    let faults = Arc::new(Mutex::new(Vec::new()));
    let log = |what: String| faults.lock().expect("faults").push(what);

    tokio::time::sleep(Duration::from_millis(1500)).await;
    let leader = tc
        .cell
        .wait_leader(Duration::from_secs(10))
        .await
        .expect("leader");
    tc.cell.kill(leader);
    log(format!("killed leader {leader}"));
    tokio::time::sleep(Duration::from_millis(2000)).await;
    tc.start_node(leader).expect("restart");
    log(format!("restarted {leader}"));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut cut = None;
    for _ in 0..100 {
        if let Some(l) = leader_among(&tc, &[1, 2, 3]).await {
            cut = Some(l);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cut = cut.expect("a leader before the partition");
    net.isolate(cut, &[1, 2, 3]);
    log(format!("isolated leader {cut}"));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    net.heal();
    log("healed".into());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);

    let mut history = Vec::new();
    for c in clients {
        history.extend(c.await.expect("client task"));
    }
    let count = |f: fn(&Outcome) -> bool| history.iter().filter(|e| f(&e.outcome)).count();
    let reads = count(|o| matches!(o, Outcome::Read(_)));
    let writes = count(|o| matches!(o, Outcome::Written(_)));
    let cas_failed = count(|o| matches!(o, Outcome::CasFailed));
    let unknown = count(|o| matches!(o, Outcome::Unknown));
    eprintln!(
        "faults: {:?}; {} ops: {reads} reads, {writes} writes, {cas_failed} failed CAS, {unknown} unknown",
        faults.lock().expect("faults"),
        history.len()
    );
    assert!(
        reads > 20 && writes > 20,
        "too little traffic to mean anything"
    );
    let started = Instant::now();
    if let Err(e) = check(&history) {
        panic!("history is not linearizable: {e}");
    }
    eprintln!("checked in {:?}", started.elapsed());
}
