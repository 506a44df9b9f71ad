//! A fault-injecting TCP proxy in front of each node's peer port.
//!
//! Nodes dial peers from their own loopback address (127.0.0.(10+id), via
//! `--peer-source-ip`), so the proxy in front of node `to` knows which
//! node `from` each connection comes from and can cut any pair.

use std::{
    collections::HashSet,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{Arc, Mutex},
};

use tokio::{
    net::{TcpListener, TcpStream},
    task::AbortHandle,
};

pub fn source_ip(node: u64) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 10 + node as u8))
}

fn node_of(ip: IpAddr) -> Option<u64> {
    match ip {
        IpAddr::V4(v4) if v4.octets()[..3] == [127, 0, 0] && v4.octets()[3] > 10 => {
            Some(v4.octets()[3] as u64 - 10)
        }
        _ => None,
    }
}

#[derive(Default)]
struct State {
    blocked: HashSet<(u64, u64)>,
    conns: Vec<(u64, u64, AbortHandle)>,
}

/// Cuts and heals links between nodes.
#[derive(Clone, Default)]
pub struct Network {
    state: Arc<Mutex<State>>,
}

impl Network {
    /// Start a proxy for node `to` forwarding to `target`; returns its address.
    pub async fn proxy(&self, to: u64, target: SocketAddr) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let net = self.clone();
        tokio::spawn(async move {
            loop {
                let Ok((inbound, peer)) = listener.accept().await else {
                    continue;
                };
                let from = node_of(peer.ip()).unwrap_or(0);
                if net.is_blocked(from, to) {
                    drop(inbound);
                    continue;
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let mut inbound = inbound;
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                net.state
                    .lock()
                    .expect("proxy state")
                    .conns
                    .push((from, to, task.abort_handle()));
            }
        });
        addr
    }

    fn is_blocked(&self, from: u64, to: u64) -> bool {
        self.state
            .lock()
            .expect("proxy state")
            .blocked
            .contains(&(from, to))
    }

    /// Cut every link between `a` and the rest of `all`, both ways.
    pub fn isolate(&self, a: u64, all: &[u64]) {
        let mut st = self.state.lock().expect("proxy state");
        for &b in all {
            if b != a {
                st.blocked.insert((a, b));
                st.blocked.insert((b, a));
            }
        }
        let blocked = st.blocked.clone();
        st.conns.retain(|(f, t, h)| {
            if blocked.contains(&(*f, *t)) {
                h.abort();
                false
            } else {
                !h.is_finished()
            }
        });
    }

    pub fn heal(&self) {
        self.state.lock().expect("proxy state").blocked.clear();
    }
}
