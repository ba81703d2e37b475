//! The SSRF guard: which IP addresses a webhook may be delivered to.
//!
//! A `webhookUrl` comes from callers, so without a guard the service could be steered at
//! its own loopback, the cloud metadata endpoint (169.254.169.254) or the private network.
//!
//! Guarantees of [`check_destination`]: it refuses every address in the ranges [`classify`]
//! lists (loopback, private, link-local, unspecified and "this network", multicast, limited
//! broadcast, shared CGNAT space, reserved and special-purpose ranges, IPv6 unique-local,
//! site-local, documentation, discard and Teredo) unless the address is inside an
//! allow-listed [`Cidr`]. IPv6 forms that embed an IPv4 address (IPv4-mapped `::ffff:a.b.c.d`,
//! IPv4-compatible `::a.b.c.d`, NAT64 `64:ff9b::/96`, 6to4 `2002::/16`) are judged by the
//! IPv4 address inside, so `::ffff:127.0.0.1` is loopback. An allow-list entry written in
//! IPv4 also covers the IPv4-mapped form of its addresses.
//!
//! It judges addresses, not names: the delivery worker resolves the host, checks *every*
//! resolved address, and connects to the address it checked (so a second DNS answer cannot
//! swap in a private one).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use thiserror::Error;

/// Why a destination or an allow-list entry was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SsrfError {
    #[error("refusing to deliver a webhook to {ip}: {kind} address ({range}); allow-list it only if that receiver is trusted")]
    Refused { ip: IpAddr, kind: Reserved, range: &'static str },
    #[error("invalid network {input:?} in the webhook allow-list: {why}")]
    BadCidr { input: String, why: String },
}

/// The kind of non-public range an address is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reserved {
    Loopback,
    Private,
    LinkLocal,
    Unspecified,
    Multicast,
    Broadcast,
    SharedAddressSpace,
    Documentation,
    SpecialPurpose,
}

impl fmt::Display for Reserved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Reserved::Loopback => "loopback",
            Reserved::Private => "private",
            Reserved::LinkLocal => "link-local",
            Reserved::Unspecified => "unspecified",
            Reserved::Multicast => "multicast",
            Reserved::Broadcast => "broadcast",
            Reserved::SharedAddressSpace => "shared (carrier-grade NAT)",
            Reserved::Documentation => "documentation",
            Reserved::SpecialPurpose => "special-purpose",
        })
    }
}

/// IPv4 ranges refused, most specific first where they overlap.
const V4: &[(u32, u8, Reserved, &str)] = &[
    (0xffff_ffff, 32, Reserved::Broadcast, "255.255.255.255/32"),
    (0x0000_0000, 32, Reserved::Unspecified, "0.0.0.0/32"),
    (0x0000_0000, 8, Reserved::Unspecified, "0.0.0.0/8 this network"),
    (0x0a00_0000, 8, Reserved::Private, "10.0.0.0/8"),
    (0x6440_0000, 10, Reserved::SharedAddressSpace, "100.64.0.0/10"),
    (0x7f00_0000, 8, Reserved::Loopback, "127.0.0.0/8"),
    (0xa9fe_0000, 16, Reserved::LinkLocal, "169.254.0.0/16 (includes cloud metadata)"),
    (0xac10_0000, 12, Reserved::Private, "172.16.0.0/12"),
    (0xc000_0000, 24, Reserved::SpecialPurpose, "192.0.0.0/24 IETF protocol assignments"),
    (0xc000_0200, 24, Reserved::Documentation, "192.0.2.0/24"),
    (0xc058_6300, 24, Reserved::SpecialPurpose, "192.88.99.0/24 6to4 relay anycast"),
    (0xc0a8_0000, 16, Reserved::Private, "192.168.0.0/16"),
    (0xc612_0000, 15, Reserved::SpecialPurpose, "198.18.0.0/15 benchmarking"),
    (0xc633_6400, 24, Reserved::Documentation, "198.51.100.0/24"),
    (0xcb00_7100, 24, Reserved::Documentation, "203.0.113.0/24"),
    (0xe000_0000, 4, Reserved::Multicast, "224.0.0.0/4"),
    (0xf000_0000, 4, Reserved::SpecialPurpose, "240.0.0.0/4 reserved"),
];

/// IPv6 ranges refused (embedded-IPv4 forms are handled before these).
const V6: &[(u128, u8, Reserved, &str)] = &[
    (0, 128, Reserved::Unspecified, "::/128"),
    (1, 128, Reserved::Loopback, "::1/128"),
    (0x0100_0000_0000_0000 << 64, 64, Reserved::SpecialPurpose, "100::/64 discard"),
    (0x2001_0db8 << 96, 32, Reserved::Documentation, "2001:db8::/32"),
    (0x2001_0000 << 96, 32, Reserved::SpecialPurpose, "2001::/32 Teredo"),
    (0xfc00 << 112, 7, Reserved::Private, "fc00::/7 unique local"),
    (0xfe80 << 112, 10, Reserved::LinkLocal, "fe80::/10"),
    (0xfec0 << 112, 10, Reserved::Private, "fec0::/10 site-local"),
    (0xff00 << 112, 8, Reserved::Multicast, "ff00::/8"),
];

fn in_v4(ip: u32, net: u32, prefix: u8) -> bool {
    prefix == 0 || (ip ^ net) >> (32 - u32::from(prefix)) == 0
}

fn in_v6(ip: u128, net: u128, prefix: u8) -> bool {
    prefix == 0 || (ip ^ net) >> (128 - u32::from(prefix)) == 0
}

/// The IPv4 address an IPv6 address stands for, if it embeds one.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let n = u128::from(ip);
    let low = Ipv4Addr::from(n as u32);
    if n >> 32 == 0xffff {
        return Some(low); // ::ffff:a.b.c.d, IPv4-mapped
    }
    if n >> 32 == 0 && n > 1 {
        return Some(low); // ::a.b.c.d, IPv4-compatible (deprecated, still routable by some stacks)
    }
    if n >> 32 == 0x0064_ff9b << 64 {
        return Some(low); // 64:ff9b::a.b.c.d, NAT64 well-known prefix
    }
    if n >> 112 == 0x2002 {
        return Some(Ipv4Addr::from((n >> 80) as u32)); // 2002:aabb:ccdd::/48, 6to4
    }
    None
}

/// The non-public range `ip` falls in, if any.
pub fn classify(ip: IpAddr) -> Option<(Reserved, &'static str)> {
    match ip {
        IpAddr::V4(v4) => {
            let n = u32::from(v4);
            V4.iter().find(|(net, p, _, _)| in_v4(n, *net, *p)).map(|(_, _, k, r)| (*k, *r))
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = embedded_v4(v6) {
                return classify(IpAddr::V4(v4));
            }
            let n = u128::from(v6);
            V6.iter().find(|(net, p, _, _)| in_v6(n, *net, *p)).map(|(_, _, k, r)| (*k, *r))
        }
    }
}

/// Whether a webhook may be delivered to `ip` (module docs).
pub fn check_destination(ip: IpAddr, allow: &[Cidr]) -> Result<(), SsrfError> {
    let Some((kind, range)) = classify(ip) else { return Ok(()) };
    if allow.iter().any(|c| c.contains(ip)) {
        return Ok(());
    }
    Err(SsrfError::Refused { ip, kind, range })
}

/// An IP network, `addr/prefix`, for the allow-list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// `10.0.0.0/8`, `fd00::/8`, or a bare address (a single host). Host bits must be zero,
    /// so a typo cannot silently widen or shift the allowed range.
    pub fn parse(text: &str) -> Result<Cidr, SsrfError> {
        let t = text.trim();
        let bad = |why: String| SsrfError::BadCidr { input: t.chars().take(60).collect(), why };
        let (addr_text, prefix_text) = match t.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (t, None),
        };
        let addr: IpAddr = addr_text.parse().map_err(|_| {
            bad(format!("{addr_text:?} is not an IPv4 or IPv6 address (write e.g. 10.0.0.0/8 or fd00::/8)"))
        })?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix_text {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => return Err(bad(format!("the prefix length must be a number from 0 to {max}"))),
            },
        };
        let cidr = Cidr { addr, prefix };
        let net = cidr.network();
        if net != addr {
            return Err(bad(format!("host bits are set; did you mean {net}/{prefix}?")));
        }
        // `::ffff:a.b.c.d/96+` is an IPv4 network in disguise: keep it as one.
        if let IpAddr::V6(v6) = addr {
            if prefix >= 96 && u128::from(v6) >> 32 == 0xffff {
                return Ok(Cidr { addr: IpAddr::V4(Ipv4Addr::from(u128::from(v6) as u32)), prefix: prefix - 96 });
            }
        }
        Ok(cidr)
    }

    fn network(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => {
                let mask = if self.prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(self.prefix)) };
                IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
            }
            IpAddr::V6(a) => {
                let mask = if self.prefix == 0 { 0 } else { u128::MAX << (128 - u32::from(self.prefix)) };
                IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
            }
        }
    }

    /// Whether `ip` is in this network; an IPv4-mapped IPv6 address counts as its IPv4 form.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(a)) => in_v4(u32::from(a), u32::from(net), self.prefix),
            (IpAddr::V6(net), IpAddr::V6(a)) => in_v6(u128::from(a), u128::from(net), self.prefix),
            _ => false,
        }
    }

    /// Parses a whole allow-list, naming the first bad entry.
    pub fn parse_list<S: AsRef<str>>(entries: &[S]) -> Result<Vec<Cidr>, SsrfError> {
        entries.iter().map(|e| Cidr::parse(e.as_ref())).collect()
    }
}

impl FromStr for Cidr {
    type Err = SsrfError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Cidr::parse(s)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn classification_table() {
        use Reserved::*;
        let table: &[(&str, Option<Reserved>)] = &[
            ("127.0.0.1", Some(Loopback)),
            ("127.255.255.254", Some(Loopback)),
            ("::1", Some(Loopback)),
            ("10.0.0.1", Some(Private)),
            ("10.255.255.255", Some(Private)),
            ("172.16.0.1", Some(Private)),
            ("172.31.255.255", Some(Private)),
            ("172.15.255.255", None),
            ("172.32.0.0", None),
            ("192.168.1.1", Some(Private)),
            ("192.169.0.1", None),
            ("fc00::1", Some(Private)),
            ("fd12:3456::1", Some(Private)),
            ("fec0::1", Some(Private)),
            ("169.254.169.254", Some(LinkLocal)),
            ("169.254.0.1", Some(LinkLocal)),
            ("fe80::1", Some(LinkLocal)),
            ("febf::1", Some(LinkLocal)),
            ("0.0.0.0", Some(Unspecified)),
            ("0.1.2.3", Some(Unspecified)),
            ("::", Some(Unspecified)),
            ("224.0.0.1", Some(Multicast)),
            ("239.255.255.250", Some(Multicast)),
            ("ff02::1", Some(Multicast)),
            ("255.255.255.255", Some(Broadcast)),
            ("100.64.0.1", Some(SharedAddressSpace)),
            ("100.127.255.255", Some(SharedAddressSpace)),
            ("100.63.255.255", None),
            ("100.128.0.0", None),
            ("192.0.2.10", Some(Documentation)),
            ("198.51.100.7", Some(Documentation)),
            ("203.0.113.9", Some(Documentation)),
            ("2001:db8::1", Some(Documentation)),
            ("198.18.0.1", Some(SpecialPurpose)),
            ("240.0.0.1", Some(SpecialPurpose)),
            ("192.0.0.8", Some(SpecialPurpose)),
            ("2001::1", Some(SpecialPurpose)),
            ("100::1", Some(SpecialPurpose)),
            // IPv4 inside IPv6.
            ("::ffff:127.0.0.1", Some(Loopback)),
            ("::ffff:10.1.2.3", Some(Private)),
            ("::ffff:169.254.169.254", Some(LinkLocal)),
            ("::ffff:100.64.0.1", Some(SharedAddressSpace)),
            ("::ffff:8.8.8.8", None),
            ("::127.0.0.1", Some(Loopback)),
            ("64:ff9b::a9fe:a9fe", Some(LinkLocal)),
            ("64:ff9b::808:808", None),
            ("2002:7f00:0001::1", Some(Loopback)),
            ("2002:0808:0808::1", None),
            // Public.
            ("8.8.8.8", None),
            ("1.1.1.1", None),
            ("93.184.216.34", None),
            ("2606:4700:4700::1111", None),
            ("2a00:1450:4001:80b::200e", None),
        ];
        for (addr, want) in table {
            assert_eq!(classify(ip(addr)).map(|(k, _)| k), *want, "{addr}");
            assert_eq!(check_destination(ip(addr), &[]).is_ok(), want.is_none(), "{addr}");
        }
    }

    #[test]
    fn refusals_say_what_and_how_to_fix() {
        let e = check_destination(ip("169.254.169.254"), &[]).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("169.254.169.254") && text.contains("link-local") && text.contains("metadata"), "{text}");
        assert!(text.contains("allow-list"), "{text}");
    }

    #[test]
    fn allow_list() {
        let allow = Cidr::parse_list(&["10.20.0.0/16", "fd00:1::/32", "127.0.0.1", "::ffff:192.168.0.0/112"]).unwrap();
        let table: &[(&str, bool)] = &[
            ("10.20.3.4", true),
            ("10.21.0.1", false),
            ("::ffff:10.20.3.4", true), // mapped form of an allowed IPv4
            ("fd00:1:2::3", true),
            ("fd00:2::3", false),
            ("127.0.0.1", true),
            ("127.0.0.2", false),
            ("::1", false), // IPv6 loopback is not 127.0.0.1
            ("192.168.7.7", true),
            ("8.8.8.8", true), // public addresses need no allow-listing
        ];
        for (addr, ok) in table {
            assert_eq!(check_destination(ip(addr), &allow).is_ok(), *ok, "{addr}");
        }
        // Allowing everything is expressible, for test rigs.
        let all = Cidr::parse_list(&["0.0.0.0/0", "::/0"]).unwrap();
        assert!(check_destination(ip("127.0.0.1"), &all).is_ok());
        assert!(check_destination(ip("fe80::1"), &all).is_ok());
    }

    #[test]
    fn cidr_parsing() {
        let good: &[(&str, &str)] = &[
            ("10.0.0.0/8", "10.0.0.0/8"),
            (" 192.168.1.0/24 ", "192.168.1.0/24"),
            ("127.0.0.1", "127.0.0.1/32"),
            ("::1", "::1/128"),
            ("fd00::/8", "fd00::/8"),
            ("0.0.0.0/0", "0.0.0.0/0"),
            ("::ffff:10.0.0.0/104", "10.0.0.0/8"),
        ];
        for (text, shown) in good {
            assert_eq!(Cidr::parse(text).unwrap().to_string(), *shown, "{text}");
        }
        let bad: &[(&str, &str)] = &[
            ("10.0.0.1/8", "did you mean 10.0.0.0/8"),
            ("10.0.0.0/33", "0 to 32"),
            ("fd00::/129", "0 to 128"),
            ("10.0.0.0/", "0 to 32"),
            ("10.0.0.0/x", "0 to 32"),
            ("localhost", "not an IPv4 or IPv6 address"),
            ("10.0.0/8", "not an IPv4 or IPv6 address"),
            ("", "not an IPv4 or IPv6 address"),
        ];
        for (text, hint) in bad {
            let e = Cidr::parse(text).unwrap_err().to_string();
            assert!(e.contains(hint), "{text}: {e}");
        }
        let e = Cidr::parse_list(&["10.0.0.0/8", "nope"]).unwrap_err();
        assert!(e.to_string().contains("\"nope\""), "{e}");
    }
}
