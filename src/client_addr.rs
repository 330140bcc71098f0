//! The client's address, one rule for the proxy's IP allow-lists, the admin login throttle and
//! the logs (SPEC §11.3): the TCP peer, unless the peer is one of `server.trusted_proxies`;
//! then the `X-Forwarded-For` entry added by the last trusted hop, found by walking the list
//! right to left past trusted addresses. Entries left of the first untrusted one were written
//! by whoever the client is and are never believed.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use axum::extract::ConnectInfo;
use axum::http::{Extensions, HeaderMap};
use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// One allow-list or trusted-proxy entry: a CIDR range, or a bare address (`/32`, `/128`).
/// Host bits are cleared (`10.1.2.3/8` is `10.0.0.0/8`); an IPv4-mapped IPv6 client address
/// is compared as IPv4.
pub fn parse_cidr(entry: &str) -> Result<IpNet, String> {
    let s = entry.trim();
    let net = if s.contains('/') {
        IpNet::from_str(s).ok()
    } else {
        IpAddr::from_str(s).ok().map(IpNet::from)
    };
    net.map(|n| n.trunc()).ok_or_else(|| {
        format!(
            "`{entry}` is not an IP address or CIDR range (such as 10.0.0.0/8 or 2001:db8::/32)"
        )
    })
}

/// A list of CIDR ranges, written and read as strings (`["10.0.0.0/8", "::1"]`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CidrList(pub Vec<IpNet>);

impl CidrList {
    /// Every entry parsed, or the message naming the first bad one.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<CidrList, String> {
        entries
            .iter()
            .map(|e| parse_cidr(e.as_ref()))
            .collect::<Result<_, _>>()
            .map(CidrList)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|n| n.contains(&ip))
    }

    /// The entries as they are stored and shown (`10.0.0.0/8`, `192.0.2.7/32`).
    pub fn to_strings(&self) -> Vec<String> {
        self.0.iter().map(ToString::to_string).collect()
    }
}

impl fmt::Display for CidrList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_strings().join(", "))
    }
}

impl Serialize for CidrList {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_strings().serialize(s)
    }
}

impl<'de> Deserialize<'de> for CidrList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<CidrList, D::Error> {
        let entries = Vec::<String>::deserialize(d)?;
        CidrList::parse(&entries).map_err(serde::de::Error::custom)
    }
}

/// The client address of a request, worked out once by `http::edge` and kept in the
/// request's extensions for the steps after it (the proxy's allow-list, the login throttle).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

impl ClientAddr {
    pub fn of(ext: &Extensions) -> Option<IpAddr> {
        ext.get::<ClientAddr>().map(|c| c.0)
    }
}

/// The TCP peer the server recorded on the request (`app::App::serve`), if any.
pub fn peer(ext: &Extensions) -> Option<IpAddr> {
    ext.get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_canonical())
}

/// The client's address: see the module documentation. `None` only when the server recorded
/// no peer (a request built in process).
pub fn client_addr(
    peer: Option<IpAddr>,
    headers: &HeaderMap,
    trusted: &CidrList,
) -> Option<IpAddr> {
    let peer = peer?.to_canonical();
    if trusted.is_empty() || !trusted.contains(peer) {
        return Some(peer);
    }
    // Every X-Forwarded-For header, in order, is one list; the rightmost entry is the newest.
    let entries: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .collect();
    let mut last = peer;
    for entry in entries.iter().rev() {
        // A garbled entry was written by someone we cannot vouch for: the last trusted hop
        // that passed it on is the client as far as we know.
        let Some(ip) = forwarded_ip(entry) else {
            return Some(last);
        };
        if !trusted.contains(ip) {
            return Some(ip);
        }
        last = ip;
    }
    Some(last)
}

/// The client address of a request as axum sees it (peer from `ConnectInfo`).
pub fn of_request(ext: &Extensions, headers: &HeaderMap, trusted: &CidrList) -> Option<IpAddr> {
    client_addr(peer(ext), headers, trusted)
}

/// One X-Forwarded-For entry: an address, possibly with a port (`192.0.2.1:4711`,
/// `[2001:db8::1]:4711`) as some proxies write it.
fn forwarded_ip(entry: &str) -> Option<IpAddr> {
    if let Ok(ip) = IpAddr::from_str(entry) {
        return Some(ip.to_canonical());
    }
    if let Ok(sa) = SocketAddr::from_str(entry) {
        return Some(sa.ip().to_canonical());
    }
    let bracketed = entry.strip_prefix('[')?.strip_suffix(']')?;
    IpAddr::from_str(bracketed).ok().map(|ip| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn ip(s: &str) -> IpAddr {
        IpAddr::from_str(s).expect("an address")
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(
                "x-forwarded-for",
                HeaderValue::from_str(v).expect("a header"),
            );
        }
        h
    }

    #[test]
    fn entries_parse_and_bad_ones_are_named() {
        let l = CidrList::parse(&[
            "10.0.0.0/8",
            "192.0.2.7",
            "2001:db8::/32",
            "::1",
            "10.1.2.3/16",
        ])
        .expect("valid");
        assert_eq!(
            l.to_strings(),
            [
                "10.0.0.0/8",
                "192.0.2.7/32",
                "2001:db8::/32",
                "::1/128",
                "10.1.0.0/16"
            ]
        );
        for bad in [
            "10.0.0.0/33",
            "300.1.1.1",
            "fe80::/129",
            "example.com",
            "",
            "10.0.0.0/",
        ] {
            let e = CidrList::parse(&["10.0.0.0/8", bad]).expect_err(bad);
            assert!(e.contains(&format!("`{bad}`")), "{bad}: {e}");
        }
    }

    #[test]
    fn membership_covers_v4_v6_and_mapped_v4() {
        let l = CidrList::parse(&["10.0.0.0/8", "2001:db8::/32"]).expect("valid");
        assert!(l.contains(ip("10.200.3.4")));
        assert!(!l.contains(ip("11.0.0.1")));
        assert!(l.contains(ip("2001:db8:1::5")));
        assert!(!l.contains(ip("2001:db9::1")));
        assert!(
            l.contains(ip("::ffff:10.0.0.1")),
            "IPv4-mapped counts as IPv4"
        );
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_hops() {
        let trusted = CidrList::parse(&["10.0.0.0/8", "fd00::/8"]).expect("valid");
        let none = CidrList::default();
        let peer = Some(ip("10.0.0.2"));
        // No trusted proxies: the peer, whatever the header says.
        assert_eq!(
            client_addr(peer, &xff(&["203.0.113.9"]), &none),
            Some(ip("10.0.0.2"))
        );
        // An untrusted peer's header is ignored.
        assert_eq!(
            client_addr(Some(ip("198.51.100.1")), &xff(&["203.0.113.9"]), &trusted),
            Some(ip("198.51.100.1"))
        );
        // A trusted peer: the entry its last trusted hop added, not what the client forged.
        assert_eq!(
            client_addr(peer, &xff(&["1.1.1.1, 203.0.113.9, 10.0.0.7"]), &trusted),
            Some(ip("203.0.113.9"))
        );
        // Several headers are one list.
        assert_eq!(
            client_addr(peer, &xff(&["1.1.1.1", "2001:db8::9", "fd00::1"]), &trusted),
            Some(ip("2001:db8::9"))
        );
        // Ports and brackets as some proxies write them.
        assert_eq!(
            client_addr(peer, &xff(&["[2001:db8::9]:443"]), &trusted),
            Some(ip("2001:db8::9"))
        );
        assert_eq!(
            client_addr(peer, &xff(&["203.0.113.9:5000"]), &trusted),
            Some(ip("203.0.113.9"))
        );
        // All trusted: the leftmost; none at all: the peer; garbage: the hop that passed it.
        assert_eq!(
            client_addr(peer, &xff(&["10.9.9.9, 10.0.0.7"]), &trusted),
            Some(ip("10.9.9.9"))
        );
        assert_eq!(
            client_addr(peer, &HeaderMap::new(), &trusted),
            Some(ip("10.0.0.2"))
        );
        assert_eq!(
            client_addr(peer, &xff(&["1.1.1.1, garbage, 10.0.0.7"]), &trusted),
            Some(ip("10.0.0.7"))
        );
        assert_eq!(client_addr(None, &xff(&["1.1.1.1"]), &trusted), None);
    }
}
