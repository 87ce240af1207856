//! Outgoing HTTP to URLs someone else chose (client ID metadata documents, webhook endpoints):
//! a DNS resolver that answers only addresses the [`EgressPolicy`] allows, and the same check
//! for a URL that writes its host as an address (which is never resolved). Which addresses are
//! allowed is `keyplane_core::domain::egress`.

use keyplane_core::domain::egress::{reachable_with, EgressPolicy};
use std::net::{IpAddr, SocketAddr};

/// A DNS resolver that answers only addresses keyplane may connect to: a name that resolves to
/// an internal address (a DNS rebinding attempt, or a typo) cannot be reached.
pub struct GuardedResolver {
    pub policy: EgressPolicy,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy;
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| reachable_with(a.ip(), policy))
                .collect();
            if addrs.is_empty() {
                return Err(format!("{host} resolves to no public address").into());
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Refuses a URL whose host is written as an address the policy does not allow (the resolver
/// never sees those).
pub fn check_literal_host(url: &reqwest::Url, policy: EgressPolicy) -> Result<(), String> {
    let host = url.host_str().ok_or("the URL names no host")?;
    if let Ok(ip) = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    {
        if !reachable_with(ip, policy) {
            return Err(format!("{ip} is not a public address"));
        }
    }
    Ok(())
}
