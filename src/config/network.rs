//! Network prefixes (`server.allowed_networks`, an app's `networks`): a
//! value type of the configuration, matched by `policy` and `inbound`.
//!
//! An IPv4 client seen through an IPv6 socket (`::ffff:a.b.c.d`) is matched as
//! IPv4, so `127.0.0.0/8` keeps working on a dual-stack listener.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// An address prefix such as `127.0.0.0/8` or `::1/128`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    address: IpAddr,
    prefix: u8,
}

impl Network {
    /// The prefix of `address` of `prefix` bits, taken as written (an
    /// IPv4-mapped address stays IPv6); `None` past the family's bits.
    pub fn new(address: IpAddr, prefix: u8) -> Option<Network> {
        let max = if address.is_ipv4() { 32 } else { 128 };
        (prefix <= max).then_some(Network { address, prefix })
    }

    /// True when `ip` lies inside this prefix; a client seen as
    /// `::ffff:a.b.c.d` is matched as IPv4.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.contains_as_written(canonical(ip))
    }

    /// True when `ip` lies inside this prefix, `ip` taken as written: an
    /// address of the other family never is (SPF's rule, RFC 7208 5.6).
    pub fn contains_as_written(&self, ip: IpAddr) -> bool {
        match (self.address, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                prefix_matches(&net.octets(), &ip.octets(), self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_matches(&net.octets(), &ip.octets(), self.prefix)
            }
            _ => false,
        }
    }

    /// True when any network in `list` contains `ip`.
    pub fn any_contains(list: &[Network], ip: IpAddr) -> bool {
        list.iter().any(|network| network.contains(ip))
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

fn prefix_matches(net: &[u8], ip: &[u8], prefix: u8) -> bool {
    let full = usize::from(prefix / 8);
    let rest = prefix % 8;
    if net[..full] != ip[..full] {
        return false;
    }
    if rest == 0 {
        return true;
    }
    let mask = 0xFFu8 << (8 - rest);
    net[full] & mask == ip[full] & mask
}

impl FromStr for Network {
    type Err = ();

    /// Accepts `addr/prefix` or a bare address (a single host).
    fn from_str(text: &str) -> Result<Self, ()> {
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let address: IpAddr = address.trim().parse().map_err(|_| ())?;
        let max = if address.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(prefix) => prefix.trim().parse::<u8>().map_err(|_| ())?,
            None => max,
        };
        if prefix > max {
            return Err(());
        }
        // An IPv4-mapped network (`::ffff:10.0.0.0/104`) is the IPv4 one
        // with the 96 bits of the mapping taken off its prefix, as clients
        // are matched; a shorter prefix spans more than the mapped range and
        // stays IPv6.
        Ok(match canonical(address) {
            IpAddr::V4(v4) if address.is_ipv6() && prefix >= 96 => Network {
                address: IpAddr::V4(v4),
                prefix: prefix - 96,
            },
            IpAddr::V4(_) if address.is_ipv6() => Network { address, prefix },
            address => Network { address, prefix },
        })
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(text: &str) -> Network {
        text.parse().unwrap()
    }

    #[test]
    fn matches_prefixes() {
        assert!(net("127.0.0.0/8").contains("127.1.2.3".parse().unwrap()));
        assert!(!net("127.0.0.0/8").contains("128.0.0.1".parse().unwrap()));
        assert!(net("10.1.0.0/20").contains("10.1.15.255".parse().unwrap()));
        assert!(!net("10.1.0.0/20").contains("10.1.16.0".parse().unwrap()));
        assert!(net("::1/128").contains("::1".parse().unwrap()));
        assert!(net("0.0.0.0/0").contains("8.8.8.8".parse().unwrap()));
        assert!(!net("::1/128").contains("127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn mapped_ipv4_matches_ipv4_networks() {
        assert!(net("127.0.0.0/8").contains("::ffff:127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn mapped_ipv4_networks_take_the_mapping_off_their_prefix() {
        let mapped = net("::ffff:10.0.0.0/104");
        assert_eq!(mapped, net("10.0.0.0/8"));
        assert!(mapped.contains("10.1.2.3".parse().unwrap()));
        assert!(mapped.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!mapped.contains("11.0.0.1".parse().unwrap()));
        assert_eq!(net("::ffff:192.0.2.1"), net("192.0.2.1/32"));
        // Wider than the mapped range: an IPv6 network, matched as such.
        let wide = net("::ffff:0.0.0.0/80");
        assert!(!wide.contains("10.1.2.3".parse().unwrap()));
        assert!(wide.contains("::1".parse().unwrap()));
    }

    #[test]
    fn as_written_a_mapped_address_is_ipv6() {
        let v4 = Network::new("10.0.0.0".parse().unwrap(), 8).unwrap();
        assert!(v4.contains_as_written("10.1.2.3".parse().unwrap()));
        assert!(!v4.contains_as_written("::ffff:10.1.2.3".parse().unwrap()));
        assert!(v4.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert_eq!(Network::new("10.0.0.0".parse().unwrap(), 33), None);
        assert_eq!(Network::new("::".parse().unwrap(), 129), None);
        assert!(Network::new("::".parse().unwrap(), 0).is_some());
    }

    #[test]
    fn rejects_bad_prefixes() {
        assert!("127.0.0.1/33".parse::<Network>().is_err());
        assert!("localhost/8".parse::<Network>().is_err());
        assert!("::1/129".parse::<Network>().is_err());
        assert_eq!(net("192.168.1.7"), net("192.168.1.7/32"));
    }
}
