//! The SSRF guard's rules: which IP addresses a push may never reach unless allowed.
//!
//! A webhook address is typed in by a customer, so without a guard the gateway would POST to
//! its own loopback, the cloud metadata service or the private network behind it. Every IP a
//! name resolves to is checked here at connect time, including the IPv4 forms hidden inside
//! IPv6 addresses (mapped, NAT64, 6to4), so no spelling slips through.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// What may be reached: nothing internal, unless `allow_private` or an allowed CIDR says so.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressPolicy {
    pub allow_private: bool,
    pub allowed: Vec<IpNet>,
}

impl AddressPolicy {
    /// `Err(reason)` when a push to `ip` must be refused.
    pub fn check(&self, ip: IpAddr) -> Result<(), &'static str> {
        if self.allow_private || self.allowed.iter().any(|net| net.contains(&ip)) {
            return Ok(());
        }
        match blocked_reason(ip) {
            Some(reason) => Err(reason),
            None => Ok(()),
        }
    }
}

/// Why `ip` is internal, or `None` for a public unicast address.
pub fn blocked_reason(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => blocked_v4(v4),
        IpAddr::V6(v6) => blocked_v6(v6),
    }
}

fn blocked_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    let reason = match (a, b, c) {
        (0, _, _) => "a \"this network\" address (0.0.0.0/8)",
        (127, _, _) => "a loopback address",
        (10, _, _) => "a private address (10.0.0.0/8)",
        (172, 16..=31, _) => "a private address (172.16.0.0/12)",
        (192, 168, _) => "a private address (192.168.0.0/16)",
        (169, 254, _) => "a link-local address (169.254.0.0/16, cloud metadata)",
        (100, 64..=127, _) => "a carrier-grade NAT address (100.64.0.0/10)",
        (192, 0, 0) => "an IETF protocol address (192.0.0.0/24)",
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "a documentation address",
        (198, 18..=19, _) => "a benchmarking address (198.18.0.0/15)",
        (224..=239, _, _) => "a multicast address",
        (240..=255, _, _) => "a reserved or broadcast address (240.0.0.0/4)",
        _ => return None,
    };
    Some(reason)
}

fn blocked_v6(ip: Ipv6Addr) -> Option<&'static str> {
    if let Some(v4) = embedded_v4(ip) {
        return blocked_v4(v4);
    }
    let segments = ip.segments();
    let reason = match segments[0] {
        _ if ip.is_unspecified() => "the unspecified address (::)",
        _ if ip.is_loopback() => "a loopback address (::1)",
        0xfc00..=0xfdff => "a unique local address (fc00::/7)",
        0xfe80..=0xfebf => "a link-local address (fe80::/10)",
        0xfec0..=0xfeff => "a site-local address (fec0::/10)",
        0xff00..=0xffff => "a multicast address (ff00::/8)",
        0x0100 if segments[1..4] == [0, 0, 0] => "a discard-only address (100::/64)",
        0x2001 if segments[1] == 0x0db8 => "a documentation address (2001:db8::/32)",
        _ => return None,
    };
    Some(reason)
}

/// The IPv4 address carried inside an IPv6 one: IPv4-mapped (`::ffff:a.b.c.d`),
/// IPv4-compatible (`::a.b.c.d`), NAT64 (`64:ff9b::a.b.c.d`) and 6to4 (`2002:aabb:ccdd::`).
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let tail = || Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s {
        [0, 0, 0, 0, 0, 0xffff, _, _] => Some(tail()),
        // IPv4-compatible, but not :: and ::1 themselves.
        [0, 0, 0, 0, 0, 0, hi, _] if hi != 0 => Some(tail()),
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(tail()),
        [0x2002, hi, lo, ..] => Some(Ipv4Addr::new(
            (hi >> 8) as u8,
            hi as u8,
            (lo >> 8) as u8,
            lo as u8,
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let blocked = [
            "127.0.0.1",
            "127.255.0.9",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.255",
            "0.0.0.0",
            "0.1.2.3",
            "192.0.0.8",
            "198.18.0.1",
            "224.0.0.1",
            "240.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b::7f00:1",
            "2002:7f00:1::",
            "2002:a00:1::1",
            "::127.0.0.1",
            "2001:db8::1",
        ];
        let public = [
            "8.8.8.8",
            "1.1.1.1",
            "172.15.255.255",
            "172.32.0.1",
            "100.63.255.255",
            "100.128.0.1",
            "192.169.0.1",
            "2606:4700::1111",
            "2001:4860:4860::8888",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ];
        let policy = AddressPolicy::default();
        for ip in blocked {
            assert!(
                policy.check(ip.parse().unwrap()).is_err(),
                "{ip} must be blocked"
            );
        }
        for ip in public {
            assert_eq!(
                policy.check(ip.parse().unwrap()),
                Ok(()),
                "{ip} must be allowed"
            );
        }
    }

    #[test]
    fn allow_private_and_allowed_cidrs_open_the_guard() {
        let open = AddressPolicy {
            allow_private: true,
            allowed: vec![],
        };
        assert_eq!(open.check("127.0.0.1".parse().unwrap()), Ok(()));
        let listed = AddressPolicy {
            allow_private: false,
            allowed: vec!["10.20.0.0/16".parse().unwrap()],
        };
        assert_eq!(listed.check("10.20.3.4".parse().unwrap()), Ok(()));
        assert!(listed.check("10.21.3.4".parse().unwrap()).is_err());
        assert!(listed.check("::1".parse().unwrap()).is_err());
    }
}
