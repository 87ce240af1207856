//! Resource indicators (RFC 8707): a service's resource URIs, and how a token request naming
//! some of them chooses the token's audience and scopes.

use std::collections::BTreeSet;

/// The longest resource URI accepted.
pub const MAX_RESOURCE_LEN: usize = 512;

/// A resource URI as RFC 8707 §2 requires it: absolute (`https://` or `http://` with a host),
/// without a fragment; without userinfo, whitespace or control characters either. The scheme
/// and host are lowercased (they are case-insensitive), the rest is kept as written, and the
/// URI is then compared exactly.
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
    Ok(format!(
        "{scheme}://{}{tail}",
        authority.to_ascii_lowercase()
    ))
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
}
