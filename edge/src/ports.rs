//! Free loopback ports for processes about to be started (local clusters,
//! tests, benchmarks).

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU32, Ordering};

/// Where the kernel takes ports for `bind(0)` and outgoing connections
/// when it cannot read its setting.
const DEFAULT_EPHEMERAL: (u32, u32) = (32768, 60999);

/// A loopback address nothing listens on, for a process to bind soon.
///
/// The port comes from outside the kernel's ephemeral range: a port taken
/// with `bind(0)` and released belongs to that range, and an outgoing
/// connection may be given it before the new process binds it — the process
/// then fails to start. Each call in a process tries the next port, so one
/// process never hands out the same port twice.
pub fn free_loopback_addr() -> std::io::Result<SocketAddr> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let (lo, hi) = ephemeral_range().unwrap_or(DEFAULT_EPHEMERAL);
    let (start, end) = if lo >= 12_000 {
        (lo - 10_000, lo)
    } else if hi <= 55_000 {
        (hi + 1, 65_535)
    } else {
        return any_port();
    };
    let span = end - start;
    // Processes started together begin at different places.
    let seed = std::process::id().wrapping_mul(2_654_435_761);
    for _ in 0..span.min(2_000) {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = start + seed.wrapping_add(n) % span;
        let Ok(port) = u16::try_from(port) else {
            continue;
        };
        if let Ok(l) = TcpListener::bind(("127.0.0.1", port)) {
            return l.local_addr();
        }
    }
    any_port()
}

fn any_port() -> std::io::Result<SocketAddr> {
    TcpListener::bind("127.0.0.1:0")?.local_addr()
}

fn ephemeral_range() -> Option<(u32, u32)> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut parts = text.split_whitespace().map(|p| p.parse::<u32>().ok());
    Some((parts.next()??, parts.next()??))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_free_and_outside_the_ephemeral_range() {
        let (lo, hi) = ephemeral_range().unwrap_or(DEFAULT_EPHEMERAL);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..50 {
            let a = free_loopback_addr().unwrap();
            assert!(a.ip().is_loopback());
            let p = u32::from(a.port());
            if lo >= 12_000 || hi <= 55_000 {
                assert!(p < lo || p > hi, "{p} is in {lo}-{hi}");
            }
            assert!(seen.insert(p), "{p} handed out twice");
            TcpListener::bind(a).unwrap();
        }
    }
}
