//! Which network addresses keyplane itself may connect to when a URL comes from someone else
//! (client ID metadata documents, webhook endpoints): public unicast addresses only, loopback
//! and private ranges only when the operator allows them — so nobody can make keyplane probe
//! the network it sits in (server-side request forgery). The binary's DNS resolvers and the
//! checks of URLs written with a literal address both ask [`reachable`].

use std::net::IpAddr;

/// What an operator allows besides public addresses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EgressPolicy {
    /// Loopback (`127.0.0.0/8`, `::1`): tests and development.
    pub allow_loopback: bool,
    /// Private, link-local, shared and unique-local ranges (RFC 1918, RFC 6598, RFC 4193, …):
    /// a deployment whose receivers live on its own network.
    pub allow_private: bool,
}

/// Whether keyplane may connect to `ip` under `policy`. Unspecified, broadcast and multicast
/// addresses are never reachable.
pub fn reachable_with(ip: IpAddr, policy: EgressPolicy) -> bool {
    if let IpAddr::V6(v6) = ip {
        if let Some(v4) = v6.to_ipv4_mapped() {
            return reachable_with(IpAddr::V4(v4), policy);
        }
    }
    if ip.is_loopback() {
        return policy.allow_loopback;
    }
    if ip.is_unspecified() || ip.is_multicast() {
        return false;
    }
    if let IpAddr::V4(v4) = ip {
        if v4.is_broadcast() {
            return false;
        }
    }
    if is_public(ip) {
        return true;
    }
    policy.allow_private
}

/// [`reachable_with`] with only loopback possibly allowed (client metadata documents).
pub fn reachable(ip: IpAddr, allow_loopback: bool) -> bool {
    reachable_with(
        ip,
        EgressPolicy {
            allow_loopback,
            allow_private: false,
        },
    )
}

/// Public unicast: none of the special-purpose ranges.
fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64) // 100.64.0.0/10, shared address space
                || (o[0] == 192 && o[1] == 0 && o[2] == 0) // 192.0.0.0/24
                || (o[0] == 198 && (o[1] & 0xfe) == 18) // 198.18.0.0/15, benchmarking
                || o[0] >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let s = v6.segments();
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local
                || (s[0] & 0xffc0) == 0xfe80 // link-local
                || (s[0] == 0x64 && s[1] == 0xff9b) // NAT64: an IPv4 address in disguise
                || (s[0] == 0x2001 && s[1] == 0xdb8)) // documentation
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses() {
        for internal in [
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "127.0.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "fc00::1",
            "fe80::1",
            "::",
            "::ffff:10.0.0.1",
            "::ffff:127.0.0.1",
            "64:ff9b::a00:1",
            "198.18.0.1",
        ] {
            let ip: IpAddr = internal.parse().unwrap();
            assert!(!reachable(ip, false), "{internal}");
        }
        for public in ["1.1.1.1", "93.184.216.34", "2606:4700:4700::1111"] {
            assert!(reachable(public.parse().unwrap(), false), "{public}");
        }
        assert!(reachable("127.0.0.1".parse().unwrap(), true));
        assert!(reachable("::1".parse().unwrap(), true));
        assert!(
            !reachable("10.0.0.1".parse().unwrap(), true),
            "loopback, not private"
        );
    }

    #[test]
    fn private_ranges_when_allowed() {
        let private = EgressPolicy {
            allow_loopback: false,
            allow_private: true,
        };
        for ip in ["10.1.2.3", "192.168.1.1", "fc00::1", "169.254.169.254"] {
            assert!(reachable_with(ip.parse().unwrap(), private), "{ip}");
        }
        for never in ["0.0.0.0", "255.255.255.255", "224.0.0.1", "::", "127.0.0.1"] {
            assert!(!reachable_with(never.parse().unwrap(), private), "{never}");
        }
    }
}
