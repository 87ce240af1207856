//! Resource indicators (RFC 8707): a service's resource URIs, and how a token request naming
//! some of them chooses the token's audience and scopes.

use std::collections::BTreeSet;

/// The longest resource URI accepted.
pub const MAX_RESOURCE_LEN: usize = 512;

/// A resource URI as RFC 8707 §2 requires it: absolute (`https://` or `http://` with a host),
/// without a fragment; without userinfo, whitespace or control characters either. Normalized
/// as RFC 3986 §6.2.2–6.2.3 allow without knowing more of the URI: the scheme and host
/// lowercased (they are case-insensitive), the scheme's default port (`:443`, `:80`) or an
/// empty port dropped; the rest is kept as written, and the URI is then compared exactly. So
/// `https://API.example:443/mcp` names the resource `https://api.example/mcp`.
pub fn parse_resource(text: &str) -> Result<String, String> {
    if text.is_empty() || text.len() > MAX_RESOURCE_LEN {
        return Err(format!(
            "a resource URI has 1 to {MAX_RESOURCE_LEN} characters"
        ));
    }
    if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("a resource URI has no spaces or control characters".into());
    }
    if text.contains('#') {
        return Err("a resource URI has no fragment (RFC 8707 §2)".into());
    }
    let Some((scheme, rest)) = text.split_once("://") else {
        return Err("a resource URI is absolute: `https://host/path` (RFC 8707 §2)".into());
    };
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "https" && scheme != "http" {
        return Err("a resource URI is an `https://` (or `http://`) URL".into());
    }
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    if authority.is_empty() {
        return Err("a resource URI names a host".into());
    }
    if authority.contains('@') {
        return Err("a resource URI has no user information".into());
    }
    let authority = authority.to_ascii_lowercase();
    let authority = without_default_port(&scheme, &authority);
    if authority.is_empty() || authority.starts_with(':') {
        return Err("a resource URI names a host".into());
    }
    Ok(format!("{scheme}://{authority}{tail}"))
}

/// The default port of `scheme` as an authority's suffix: `:443` for https, `:80` for http.
fn default_port(scheme: &str) -> &'static str {
    if scheme.eq_ignore_ascii_case("https") {
        ":443"
    } else {
        ":80"
    }
}

/// `authority` (lowercased) without the scheme's default port or an empty port (RFC 3986
/// §6.2.3): `api.example:443` is `api.example` for https, and `api.example:` is too.
pub(crate) fn without_default_port<'a>(scheme: &str, authority: &'a str) -> &'a str {
    let a = authority
        .strip_suffix(default_port(scheme))
        .unwrap_or(authority);
    // An IPv6 literal's last colon is inside its brackets, not before a port.
    match a.strip_suffix(':') {
        Some(rest) if !rest.ends_with('[') => rest,
        _ => a,
    }
}

/// A stored resource URI as [`parse_resource`] writes it now (rows written before it dropped
/// default ports keep matching), or as stored when it does not parse.
pub fn normalized(resource: &str) -> String {
    parse_resource(resource).unwrap_or_else(|_| resource.to_string())
}

/// Whether a request's `host` (its `Host`, lowercased) is a resource's `authority` for
/// `scheme`: the same, or the same with the scheme's default port written out.
fn same_host(scheme: &str, authority: &str, host: &str) -> bool {
    host == authority || without_default_port(scheme, host) == authority
}

/// The well-known path of protected resource metadata (RFC 9728 §3).
pub const METADATA_WELL_KNOWN: &str = "/.well-known/oauth-protected-resource";

/// A protected resource (RFC 9728): one resource URI of a service, with the service's name and
/// scopes (what a token for it may carry, and so what a client asks for).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtectedResource {
    /// The resource URI exactly as the service declares it (scheme and host lowercased).
    pub resource: String,
    /// The service's name (`resource_name`).
    pub name: String,
    /// The service's scopes (`scopes_supported`).
    pub scopes: Vec<String>,
}

/// A resource URI's parts: scheme, authority (lowercased by [`parse_resource`]) and the rest
/// (path and query, possibly empty).
pub fn split_resource(resource: &str) -> Option<(&str, &str, &str)> {
    let (scheme, rest) = resource.split_once("://")?;
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    Some((scheme, authority, tail))
}

/// The path and query a resource's metadata URL puts after the well-known segment (RFC 9728
/// §3.1): the URI's path and query, with a lone terminating `/` after the host dropped.
pub fn well_known_suffix(tail: &str) -> &str {
    if tail == "/" {
        ""
    } else {
        tail
    }
}

/// The URL of a resource's metadata (RFC 9728 §3.1): `/.well-known/oauth-protected-resource`
/// goes between the host and the path, so `https://mcp.example.com/mcp` has
/// `https://mcp.example.com/.well-known/oauth-protected-resource/mcp`.
pub fn metadata_url(resource: &str) -> Option<String> {
    let (scheme, authority, tail) = split_resource(resource)?;
    Some(format!(
        "{scheme}://{authority}{METADATA_WELL_KNOWN}{}",
        well_known_suffix(tail)
    ))
}

/// The resource among `resources` whose metadata is at `suffix` (what follows
/// `/.well-known/oauth-protected-resource` in the request's path and query) on `host` (the
/// authority the request was addressed to). The host is compared case-insensitively, the
/// suffix exactly. `scheme`, when known, decides between resources that differ only by it
/// (behind a TLS terminator the scheme is often not known). `None` for anything else: a
/// document is never answered for another host or path than its own.
pub fn resource_for_metadata<'a>(
    resources: impl Iterator<Item = &'a ProtectedResource>,
    scheme: Option<&str>,
    host: &str,
    suffix: &str,
) -> Option<&'a ProtectedResource> {
    let host = host.to_ascii_lowercase();
    let mut found: Vec<&ProtectedResource> = resources
        .filter(|r| {
            split_resource(&r.resource).is_some_and(|(s, a, tail)| {
                same_host(s, a, &host) && well_known_suffix(tail) == suffix
            })
        })
        .collect();
    pick_by_scheme(&mut found, scheme)
}

/// The resource a request to `scheme://host{path}` is for: the one on that host whose path is
/// the longest whole-segment prefix of `path` (`https://h/mcp` covers `/mcp` and `/mcp/x`, not
/// `/mcpx`). `path` is the request's normalized path, without its query.
pub fn resource_for_request<'a>(
    resources: impl Iterator<Item = &'a ProtectedResource>,
    scheme: Option<&str>,
    host: &str,
    path: &str,
) -> Option<&'a ProtectedResource> {
    let host = host.to_ascii_lowercase();
    let covers = |tail: &str| {
        if tail.contains('?') {
            return None;
        }
        let base = tail.trim_end_matches('/');
        (base.is_empty()
            || path == base
            || path
                .strip_prefix(base)
                .is_some_and(|rest| rest.starts_with('/')))
        .then_some(base.len())
    };
    let mut best: Vec<&ProtectedResource> = Vec::new();
    let mut best_len = 0usize;
    for r in resources {
        let Some((s, a, tail)) = split_resource(&r.resource) else {
            continue;
        };
        if !same_host(s, a, &host) {
            continue;
        }
        let Some(len) = covers(tail) else { continue };
        if best.is_empty() || len > best_len {
            best = vec![r];
            best_len = len;
        } else if len == best_len {
            best.push(r);
        }
    }
    pick_by_scheme(&mut best, scheme)
}

/// One of resources that differ only by scheme: the one with `scheme`, else the only one.
fn pick_by_scheme<'a>(
    found: &mut Vec<&'a ProtectedResource>,
    scheme: Option<&str>,
) -> Option<&'a ProtectedResource> {
    if let Some(scheme) = scheme {
        if let Some(r) = found.iter().find(|r| {
            split_resource(&r.resource).is_some_and(|(s, _, _)| s.eq_ignore_ascii_case(scheme))
        }) {
            return Some(r);
        }
    }
    found.sort_by(|a, b| a.resource.cmp(&b.resource));
    found.dedup_by(|a, b| a.resource == b.resource);
    (found.len() == 1).then(|| found[0])
}

/// Why a token request's `resource` and `scope` cannot be honoured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetError {
    /// `invalid_target` (RFC 8707 §2).
    Target(String),
    /// `invalid_scope` (RFC 6749 §5.2).
    Scope(String),
}

/// What a token may carry: scopes (sorted, unique) and, when resources were named, its audience.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub scopes: Vec<String>,
    pub audience: Vec<String>,
}

/// Chooses a token's scopes and audience.
///
/// `allowed` is what the requester may hold at most (a client's scopes; for an exchange, the
/// part of those the subject credential holds too). `requested` is the `scope` parameter
/// (`None`: everything allowed). `targets` are the named resources, each with the scopes of the
/// service it belongs to: with any, the scopes are narrowed to those services' (a requested
/// scope of another service is `invalid_scope`; no allowed scope of theirs is
/// `invalid_target`) and the audience is exactly the resources.
pub fn grant(
    allowed: &[String],
    requested: Option<&str>,
    targets: &[(String, Vec<String>)],
) -> Result<Grant, TargetError> {
    let of_targets: BTreeSet<&str> = targets
        .iter()
        .flat_map(|(_, scopes)| scopes.iter().map(String::as_str))
        .collect();
    let in_targets = |s: &str| targets.is_empty() || of_targets.contains(s);
    let scopes: BTreeSet<String> = match requested {
        Some(text) => {
            let mut out = BTreeSet::new();
            for x in text.split(' ').filter(|x| !x.is_empty()) {
                if !allowed.iter().any(|y| y == x) {
                    return Err(TargetError::Scope(format!(
                        "the client may not request the scope `{x}`"
                    )));
                }
                if !in_targets(x) {
                    return Err(TargetError::Scope(format!(
                        "the scope `{x}` does not belong to the service of any requested resource"
                    )));
                }
                out.insert(x.to_string());
            }
            out
        }
        None => allowed.iter().filter(|s| in_targets(s)).cloned().collect(),
    };
    if !targets.is_empty() && scopes.is_empty() {
        return Err(TargetError::Target(
            "the client holds no scope of the service of the requested resource".into(),
        ));
    }
    let audience: BTreeSet<String> = targets.iter().map(|(r, _)| r.clone()).collect();
    Ok(Grant {
        scopes: scopes.into_iter().collect(),
        audience: audience.into_iter().collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(x: &[&str]) -> Vec<String> {
        x.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn resource_uris_are_absolute_without_fragment_or_userinfo() {
        assert_eq!(
            parse_resource("HTTPS://API.Example.com/MCP").unwrap(),
            "https://api.example.com/MCP"
        );
        assert_eq!(
            parse_resource("http://127.0.0.1:8080").unwrap(),
            "http://127.0.0.1:8080"
        );
        for bad in [
            "",
            "/relative",
            "api.example.com",
            "urn:x:y",
            "ftp://x/y",
            "https://",
            "https:///path",
            "https://x/y#frag",
            "https://user:pw@x/",
            "https://x/a b",
            "https://x/\u{7}",
        ] {
            assert!(parse_resource(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(parse_resource(&format!("https://x/{}", "a".repeat(600))).is_err());
    }

    /// RFC 3986 §6.2.3: a scheme's default port, or an empty port, is no part of the
    /// resource's name; any other port is.
    #[test]
    fn default_ports_are_dropped() {
        for (given, want) in [
            ("https://API.example:443/mcp", "https://api.example/mcp"),
            ("https://api.example:/mcp", "https://api.example/mcp"),
            ("http://api.example:80", "http://api.example"),
            ("https://[::1]:443/x", "https://[::1]/x"),
            ("https://api.example:80/mcp", "https://api.example:80/mcp"),
            ("http://api.example:443/mcp", "http://api.example:443/mcp"),
            (
                "https://api.example:8443/mcp",
                "https://api.example:8443/mcp",
            ),
            (
                "https://api.example:4430/mcp",
                "https://api.example:4430/mcp",
            ),
        ] {
            assert_eq!(parse_resource(given).as_deref(), Ok(want), "{given}");
        }
        for bad in ["https://:443/x", "https://:/x"] {
            assert!(parse_resource(bad).is_err(), "{bad:?} was accepted");
        }
        assert_eq!(normalized("https://a.example:443"), "https://a.example");
        assert_eq!(normalized("not a uri"), "not a uri");
    }

    /// A request's `Host` with the default port written out is the resource's host.
    #[test]
    fn a_host_with_its_default_port_finds_its_resource() {
        let rs = [
            pr("https://mcp.example.com/mcp"),
            pr("http://plain.example/x"),
        ];
        let found = |scheme, host, path| {
            resource_for_request(rs.iter(), scheme, host, path).map(|r| r.resource.as_str())
        };
        assert_eq!(
            found(None, "MCP.example.com:443", "/mcp"),
            Some("https://mcp.example.com/mcp")
        );
        assert_eq!(
            found(Some("https"), "mcp.example.com:443", "/mcp/x"),
            Some("https://mcp.example.com/mcp")
        );
        assert_eq!(found(None, "mcp.example.com:80", "/mcp"), None);
        assert_eq!(found(None, "mcp.example.com:8443", "/mcp"), None);
        assert_eq!(
            found(None, "plain.example:80", "/x"),
            Some("http://plain.example/x")
        );
        assert_eq!(found(None, "plain.example:443", "/x"), None);
        assert_eq!(
            resource_for_metadata(rs.iter(), None, "mcp.example.com:443", "/mcp")
                .map(|r| r.resource.as_str()),
            Some("https://mcp.example.com/mcp")
        );
    }

    #[test]
    fn resources_narrow_scopes_and_set_the_audience() {
        let allowed = v(&["a:read", "a:write", "b:read"]);
        let a = ("https://a.example".to_string(), v(&["a:read", "a:write"]));
        let b = ("https://b.example".to_string(), v(&["b:read", "b:admin"]));
        // No resource: the request as before.
        assert_eq!(
            grant(&allowed, None, &[]).unwrap(),
            Grant {
                scopes: allowed.clone(),
                audience: vec![]
            }
        );
        // One resource: only its service's scopes, and it is the audience.
        assert_eq!(
            grant(&allowed, None, std::slice::from_ref(&a)).unwrap(),
            Grant {
                scopes: v(&["a:read", "a:write"]),
                audience: v(&["https://a.example"])
            }
        );
        assert_eq!(
            grant(&allowed, Some("a:read"), std::slice::from_ref(&a))
                .unwrap()
                .scopes,
            v(&["a:read"])
        );
        // Two resources: both audiences, the union of their scopes the client holds.
        let g = grant(&allowed, None, &[b.clone(), a.clone()]).unwrap();
        assert_eq!(g.scopes, v(&["a:read", "a:write", "b:read"]));
        assert_eq!(g.audience, v(&["https://a.example", "https://b.example"]));
        // A scope of another service than the target's: invalid_scope.
        assert!(matches!(
            grant(&allowed, Some("b:read"), std::slice::from_ref(&a)),
            Err(TargetError::Scope(_))
        ));
        // A scope the client does not hold: invalid_scope, resource or not.
        assert!(matches!(
            grant(&allowed, Some("b:admin"), std::slice::from_ref(&b)),
            Err(TargetError::Scope(_))
        ));
        // A service none of whose scopes the client holds: invalid_target.
        let c = ("https://c.example".to_string(), v(&["c:read"]));
        assert!(matches!(
            grant(&allowed, None, &[c]),
            Err(TargetError::Target(_))
        ));
    }

    fn pr(uri: &str) -> ProtectedResource {
        ProtectedResource {
            resource: uri.into(),
            name: "svc".into(),
            scopes: vec![],
        }
    }

    #[test]
    fn metadata_urls_put_the_well_known_segment_between_host_and_path() {
        // RFC 9728 §3.1 and its examples.
        for (resource, url) in [
            (
                "https://mcp.example.com/mcp",
                "https://mcp.example.com/.well-known/oauth-protected-resource/mcp",
            ),
            (
                "https://resource.example.com",
                "https://resource.example.com/.well-known/oauth-protected-resource",
            ),
            (
                "https://resource.example.com/",
                "https://resource.example.com/.well-known/oauth-protected-resource",
            ),
            (
                "https://resource.example.com/resource1",
                "https://resource.example.com/.well-known/oauth-protected-resource/resource1",
            ),
            (
                "http://127.0.0.1:9000/a/b/?x=1",
                "http://127.0.0.1:9000/.well-known/oauth-protected-resource/a/b/?x=1",
            ),
        ] {
            assert_eq!(metadata_url(resource).unwrap(), url);
        }
        assert_eq!(metadata_url("not a uri"), None);
    }

    #[test]
    fn a_metadata_request_finds_only_its_own_resource() {
        let all = [
            pr("https://mcp.example.com/mcp"),
            pr("https://other.example.com/mcp"),
            pr("http://plain.example.com/"),
            pr("https://twice.example.com/x"),
            pr("http://twice.example.com/x"),
        ];
        let find = |scheme, host, suffix| {
            resource_for_metadata(all.iter(), scheme, host, suffix).map(|r| r.resource.as_str())
        };
        assert_eq!(
            find(None, "MCP.example.com", "/mcp"),
            Some("https://mcp.example.com/mcp")
        );
        assert_eq!(find(Some("https"), "mcp.example.com", "/mcp/"), None);
        assert_eq!(find(None, "mcp.example.com", ""), None);
        assert_eq!(find(None, "evil.example.com", "/mcp"), None);
        assert_eq!(
            find(None, "plain.example.com", ""),
            Some("http://plain.example.com/")
        );
        assert_eq!(
            find(None, "twice.example.com", "/x"),
            None,
            "ambiguous without a scheme"
        );
        assert_eq!(
            find(Some("http"), "twice.example.com", "/x"),
            Some("http://twice.example.com/x")
        );
    }

    #[test]
    fn a_request_is_for_the_longest_resource_covering_its_path() {
        let all = [
            pr("https://h.example/"),
            pr("https://h.example/mcp"),
            pr("https://h.example/mcp/admin/"),
        ];
        let find = |path| {
            resource_for_request(all.iter(), Some("https"), "h.example", path)
                .map(|r| r.resource.as_str())
        };
        assert_eq!(find("/mcp"), Some("https://h.example/mcp"));
        assert_eq!(find("/mcp/tools"), Some("https://h.example/mcp"));
        assert_eq!(find("/mcpx"), Some("https://h.example/"));
        assert_eq!(find("/mcp/admin/x"), Some("https://h.example/mcp/admin/"));
        assert_eq!(
            resource_for_request(all.iter(), None, "x.example", "/mcp"),
            None
        );
    }
}
