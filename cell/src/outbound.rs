//! Where the cell's own outbound calls (vendor webhooks) may go.
//!
//! A webhook URL is chosen by a vendor, and the leader POSTs to it from
//! inside the cell's network. Unless the operator allows private targets,
//! only public unicast addresses are reached: an address literal in the URL
//! is checked at registration and again before each send, and host names
//! are resolved through [`PublicOnly`], which drops every other address,
//! at send time (so a name that later resolves inward — DNS rebinding —
//! reaches nothing either).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Whether `ip` is a public unicast address.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(v6),
        },
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        // shared address space (carrier-grade NAT), 100.64.0.0/10
        || (a == 100 && (64..128).contains(&b))
        // benchmarking 198.18.0.0/15, reserved 240.0.0.0/4
        || (a == 198 && (18..20).contains(&b))
        // IETF protocol assignments 192.0.0.0/24
        || (a == 192 && b == 0 && ip.octets()[2] == 0)
        || a >= 240)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let seg = ip.segments();
    let embedded = |hi: u16, lo: u16| Ipv4Addr::from(((hi as u32) << 16) | lo as u32);
    // Forms that carry an IPv4 address reach that address: judge it.
    // NAT64 well-known prefix 64:ff9b::/96, 6to4 2002::/16.
    if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return is_public_v4(embedded(seg[6], seg[7]));
    }
    if seg[0] == 0x2002 {
        return is_public_v4(embedded(seg[1], seg[2]));
    }
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        // unique local fc00::/7, link-local fe80::/10, site-local fec0::/10
        || (seg[0] & 0xfe00) == 0xfc00
        || (seg[0] & 0xffc0) == 0xfe80
        || (seg[0] & 0xffc0) == 0xfec0
        // local-use NAT64 64:ff9b:1::/48 (translates to private space by
        // design), Teredo 2001::/32, documentation 2001:db8::/32
        || (seg[0] == 0x64 && seg[1] == 0xff9b)
        || (seg[0] == 0x2001 && (seg[1] == 0 || seg[1] == 0x0db8))
        // ::/64 holds nothing public: IPv4-compatible ::a.b.c.d, SIIT
        // ::ffff:0:a.b.c.d (mapped ::ffff:a.b.c.d were judged as IPv4)
        || seg[..4] == [0, 0, 0, 0])
}

/// Refuses a URL whose host is an address literal that is not public
/// (names are checked when they are resolved, by [`PublicOnly`]).
pub fn check_url(url: &str, allow_private: bool) -> Result<(), String> {
    if allow_private {
        return Ok(());
    }
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
    // The URL parser has normalised every IPv4 spelling (decimal, hex,
    // short forms) to dotted quads; IPv6 literals keep their brackets.
    let host = parsed.host_str().unwrap_or_default();
    let Ok(ip) = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    else {
        return Ok(());
    };
    if is_public(ip) {
        Ok(())
    } else {
        Err(format!(
            "{ip} is not a public address; webhooks go to the public internet only"
        ))
    }
}

/// A resolver that answers only public addresses, and fails a name that
/// has no other.
pub struct PublicOnly;

impl Resolve for PublicOnly {
    fn resolve(&self, name: Name) -> Resolving {
        Box::pin(async move {
            let host = name.as_str().to_string();
            let all: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let public: Vec<SocketAddr> =
                all.iter().copied().filter(|a| is_public(a.ip())).collect();
            if public.is_empty() && !all.is_empty() {
                return Err(format!(
                    "{host} resolves only to non-public addresses; webhooks go to the public internet only"
                )
                .into());
            }
            let addrs: Addrs = Box::new(public.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_unicast_addresses_are_public() {
        for inner in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "255.255.255.255",
            "224.0.0.1",
            "198.18.0.1",
            "::1",
            "::",
            "fc00::1",
            "fd12::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "2001:db8::1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b::7f00:1",
            "64:ff9b:1::a00:5",
            "::ffff:0:a00:1",
            "::10.0.0.1",
            "fec0::1",
            "2002:7f00:1::1",
            "2001::1",
            "192.0.0.8",
        ] {
            assert!(!is_public(inner.parse().unwrap()), "{inner}");
        }
        for public in [
            "1.1.1.1",
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "::ffff:1.1.1.1",
            "64:ff9b::101:101",
            "2002:101:101::1",
        ] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
    }

    #[test]
    fn urls_with_inner_address_literals_are_refused_unless_allowed() {
        for url in [
            "http://127.0.0.1:9081/raft/vote",
            "https://[::1]/x",
            "http://169.254.169.254/latest",
            "http://2130706433/x",
            "http://0x7f.1/x",
        ] {
            assert!(check_url(url, false).is_err(), "{url}");
            assert!(check_url(url, true).is_ok(), "{url}");
        }
        for url in ["https://hooks.example.com/x", "http://1.1.1.1/x"] {
            assert!(check_url(url, false).is_ok(), "{url}");
        }
    }

    #[tokio::test]
    async fn names_that_resolve_inward_reach_nothing() {
        let r = PublicOnly.resolve("localhost".parse().unwrap()).await;
        assert!(r.is_err());
    }
}
