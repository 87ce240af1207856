//! Route rules: which scopes a request to the platform's APIs needs, by method and path.
//! Used by forward auth (`/v1/authz`, from the original request's method and URI) and by the
//! gateway. The first matching rule wins; a request no rule matches is denied unless the
//! deployment says otherwise. Rules match only a [`NormalPath`] (see `path.rs`), and a rule's
//! own path must already be in normal form, so a rule means what it says.

use super::path::{normalize, NormalPath};
use std::borrow::Cow;
use std::collections::BTreeSet;

/// Where route rules come from, so they can be reloaded without a restart (the binary reads
/// them from its configuration file).
pub trait RulesSource: Send + Sync {
    /// The rules and whether a request no rule matches is allowed.
    fn load(&self) -> Result<(Vec<RuleInput>, bool), String>;
}

/// A rule as configured, before validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleInput {
    /// Methods it applies to; empty or `["*"]` means any.
    pub methods: Vec<String>,
    /// `/v1/text/guard` (exact), `/v1/items/{id}` (one segment each), `/v1/admin/*` (prefix).
    pub path: String,
    pub scopes: Vec<String>,
    /// Where the rule is written (line in the configuration file), for error messages.
    pub line: usize,
    /// The credential rate limit a matching request is counted against with `cost` (`None`:
    /// every limit of the credential).
    pub rate_limit: Option<String>,
    /// Units a matching request costs (`None`: each limit's own cost, 1 by default).
    pub cost: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param,
    /// `*`, last: any number of further segments.
    Rest,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Uppercase; `None` means any method.
    methods: Option<BTreeSet<String>>,
    segments: Vec<Segment>,
    pub path: String,
    pub scopes: Vec<String>,
    pub line: usize,
    /// The limit name (empty: every limit) and the cost of a matching request.
    pub cost: Option<(String, u64)>,
}

/// What the rules say about a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision<'a> {
    /// Allowed for a credential holding all of these scopes (possibly none).
    Require(&'a [String]),
    /// No rule matches and the default is to deny.
    Deny,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleSet {
    rules: Vec<Rule>,
    allow_unmatched: bool,
}

fn parse_path(path: &str) -> Result<Vec<Segment>, String> {
    if !path.starts_with('/') {
        return Err(format!("path {path:?} must start with '/'"));
    }
    // Requests are matched after normalization, so a rule written any other way could never
    // match what it seems to name.
    match normalize(path) {
        Ok(Cow::Borrowed(_)) => {}
        Ok(Cow::Owned(normal)) => {
            return Err(format!(
                "path {path:?} is not in normal form: write it as {normal:?}"
            ))
        }
        Err(e) => return Err(format!("path {path:?} cannot match a request: {e}")),
    }
    let parts: Vec<&str> = path[1..].split('/').collect();
    let mut out = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        let seg = if *p == "*" {
            if i != parts.len() - 1 {
                return Err(format!(
                    "in path {path:?}, '*' may only be the last segment"
                ));
            }
            Segment::Rest
        } else if p.starts_with('{') && p.ends_with('}') && p.len() > 2 {
            Segment::Param
        } else if p.contains(['{', '}', '*', '?', '#']) {
            return Err(format!(
                "in path {path:?}, segment {p:?} is neither a literal, a {{param}} nor '*'"
            ));
        } else {
            Segment::Literal((*p).to_string())
        };
        out.push(seg);
    }
    Ok(out)
}

/// Whether pattern `a` matches every path pattern `b` matches.
fn covers(a: &[Segment], b: &[Segment]) -> bool {
    for (i, sa) in a.iter().enumerate() {
        match (sa, b.get(i)) {
            (Segment::Rest, _) => return true,
            (_, None) => return false,
            (_, Some(Segment::Rest)) => return false,
            (Segment::Param, Some(_)) => {}
            (Segment::Literal(x), Some(Segment::Literal(y))) if x == y => {}
            (Segment::Literal(_), Some(_)) => return false,
        }
    }
    a.len() == b.len()
}

fn matches(segments: &[Segment], path: &NormalPath<'_>) -> bool {
    let Some(rest) = path.as_str().strip_prefix('/') else {
        return false;
    };
    let mut parts = rest.split('/');
    for seg in segments {
        match seg {
            Segment::Rest => return true,
            Segment::Param => match parts.next() {
                Some(p) if !p.is_empty() => {}
                _ => return false,
            },
            Segment::Literal(l) => match parts.next() {
                Some(p) if p == l => {}
                _ => return false,
            },
        }
    }
    parts.next().is_none()
}

fn name_of(path: &str, line: usize) -> String {
    format!("route rule at line {line} (`{path}`)")
}

impl RuleSet {
    /// Validates the rules: path syntax, methods, and that no rule is unreachable because an
    /// earlier one already matches everything it would.
    pub fn new(inputs: Vec<RuleInput>, allow_unmatched: bool) -> Result<Self, String> {
        let mut rules: Vec<Rule> = Vec::new();
        for (n, r) in inputs.into_iter().enumerate() {
            let name = format!("route rule #{} (line {}, `{}`)", n + 1, r.line, r.path);
            let segments = parse_path(&r.path).map_err(|e| format!("{name}: {e}"))?;
            let methods = if r.methods.is_empty() || r.methods.iter().any(|m| m == "*") {
                None
            } else {
                let mut set = BTreeSet::new();
                for m in &r.methods {
                    let up = m.to_ascii_uppercase();
                    if up.is_empty() || !up.bytes().all(|b| b.is_ascii_uppercase()) {
                        return Err(format!("{name}: {m:?} is not an HTTP method"));
                    }
                    set.insert(up);
                }
                Some(set)
            };
            let cost = match (r.rate_limit, r.cost) {
                (None, None) => None,
                (Some(name), None) => Some((name, 1)),
                (name, Some(c)) => {
                    if c == 0 {
                        return Err(format!(
                            "{name}: `cost` must be at least 1",
                            name = name_of(&r.path, r.line)
                        ));
                    }
                    Some((name.unwrap_or_default(), c))
                }
            };
            let rule = Rule {
                methods,
                segments,
                path: r.path,
                scopes: r.scopes,
                line: r.line,
                cost,
            };
            if let Some(earlier) = rules.iter().find(|e| {
                let methods_covered = match (&e.methods, &rule.methods) {
                    (None, _) => true,
                    (Some(_), None) => false,
                    (Some(a), Some(b)) => b.is_subset(a),
                };
                methods_covered && covers(&e.segments, &rule.segments)
            }) {
                return Err(format!(
                    "{name} overlaps route rule at line {} (`{}`), which comes first and matches every request it would: it can never apply; remove it or move it above",
                    earlier.line, earlier.path
                ));
            }
            rules.push(rule);
        }
        Ok(Self {
            rules,
            allow_unmatched,
        })
    }

    /// Every scope a rule names that is not in `known`, with the rule that names it.
    pub fn check_scopes(&self, known: &BTreeSet<String>) -> Result<(), String> {
        for r in &self.rules {
            if let Some(s) = r.scopes.iter().find(|s| !known.contains(*s)) {
                return Err(format!(
                    "route rule at line {} (`{}`) requires the unknown scope `{s}`: register it with a service first",
                    r.line, r.path
                ));
            }
        }
        Ok(())
    }

    /// The rules in order, for display: methods (`["*"]` for any), path, scopes, line.
    pub fn describe(&self) -> Vec<(Vec<String>, String, Vec<String>, usize)> {
        self.rules
            .iter()
            .map(|r| {
                let methods = match &r.methods {
                    None => vec!["*".to_string()],
                    Some(m) => m.iter().cloned().collect(),
                };
                (methods, r.path.clone(), r.scopes.clone(), r.line)
            })
            .collect()
    }

    pub fn allows_unmatched(&self) -> bool {
        self.allow_unmatched
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// What the first matching rule requires for `method` and the normalized `path`.
    pub fn decide(&self, method: &str, path: &NormalPath<'_>) -> Decision<'_> {
        self.decide_rule(method, path).0
    }

    /// [`Self::decide`], with the matching rule's rate-limit cost (a limit name, empty for
    /// every limit, and the units), when it names one.
    pub fn decide_rule(
        &self,
        method: &str,
        path: &NormalPath<'_>,
    ) -> (Decision<'_>, Option<&(String, u64)>) {
        for r in &self.rules {
            let method_ok = r
                .methods
                .as_ref()
                .is_none_or(|m| m.iter().any(|x| x.eq_ignore_ascii_case(method)));
            if method_ok && matches(&r.segments, path) {
                return (Decision::Require(&r.scopes), r.cost.as_ref());
            }
        }
        if self.allow_unmatched {
            (Decision::Require(&[]), None)
        } else {
            (Decision::Deny, None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::path::split_target;

    /// What the rules say about a raw request target, normalized as the HTTP layer does.
    fn decide<'a>(set: &'a RuleSet, method: &str, target: &str) -> Decision<'a> {
        let (path, _query) = split_target(target);
        set.decide(method, &NormalPath::parse(path).unwrap())
    }

    fn rule(methods: &[&str], path: &str, scopes: &[&str], line: usize) -> RuleInput {
        RuleInput {
            methods: methods.iter().map(|s| s.to_string()).collect(),
            path: path.into(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            line,
            rate_limit: None,
            cost: None,
        }
    }

    #[test]
    fn first_match_wins_and_unmatched_is_denied() {
        let set = RuleSet::new(
            vec![
                rule(&["POST"], "/v1/text/guard", &["ai-guard:read"], 1),
                rule(&["GET"], "/v1/items/{id}", &["items:read"], 5),
                rule(&[], "/v1/admin/*", &["admin"], 9),
            ],
            false,
        )
        .unwrap();
        assert_eq!(
            decide(&set, "POST", "/v1/text/guard?x=1"),
            Decision::Require(&["ai-guard:read".to_string()])
        );
        assert_eq!(decide(&set, "GET", "/v1/text/guard"), Decision::Deny);
        assert_eq!(
            decide(&set, "get", "/v1/items/42"),
            Decision::Require(&["items:read".to_string()])
        );
        assert_eq!(decide(&set, "GET", "/v1/items/42/more"), Decision::Deny);
        assert_eq!(decide(&set, "GET", "/v1/items/"), Decision::Deny);
        assert_eq!(
            decide(&set, "DELETE", "/v1/admin/a/b"),
            Decision::Require(&["admin".to_string()])
        );
        assert_eq!(
            decide(&set, "DELETE", "/v1/admin"),
            Decision::Require(&["admin".to_string()])
        );
        assert_eq!(decide(&set, "GET", "/elsewhere"), Decision::Deny);
        let open = RuleSet::new(vec![], true).unwrap();
        assert_eq!(decide(&open, "GET", "/elsewhere"), Decision::Require(&[]));
    }

    #[test]
    fn unreachable_rules_and_bad_paths_are_errors_naming_the_line() {
        let e = RuleSet::new(
            vec![
                rule(&[], "/v1/*", &[], 3),
                rule(&["POST"], "/v1/text/guard", &[], 7),
            ],
            false,
        )
        .unwrap_err();
        assert!(e.contains("line 7") && e.contains("line 3"), "{e}");
        let e = RuleSet::new(
            vec![
                rule(&["GET"], "/a/{x}", &[], 1),
                rule(&["GET"], "/a/b", &[], 2),
            ],
            false,
        )
        .unwrap_err();
        assert!(e.contains("line 2"), "{e}");
        // A specific rule before a general one is fine.
        RuleSet::new(
            vec![
                rule(&["GET"], "/a/b", &[], 1),
                rule(&["GET"], "/a/{x}", &[], 2),
            ],
            false,
        )
        .unwrap();
        // Different methods do not overlap.
        RuleSet::new(
            vec![rule(&["GET"], "/a", &[], 1), rule(&["POST"], "/a", &[], 2)],
            false,
        )
        .unwrap();
        assert!(RuleSet::new(vec![rule(&[], "a/b", &[], 4)], false)
            .unwrap_err()
            .contains("line 4"));
        assert!(RuleSet::new(vec![rule(&[], "/a/*/b", &[], 4)], false).is_err());
        assert!(RuleSet::new(vec![rule(&["G E T"], "/a", &[], 4)], false).is_err());
    }

    #[test]
    fn unknown_scopes_are_named() {
        let set = RuleSet::new(
            vec![rule(&["POST"], "/v1/text/guard", &["ai-guard:read"], 2)],
            false,
        )
        .unwrap();
        let known: BTreeSet<String> = ["other".to_string()].into();
        let e = set.check_scopes(&known).unwrap_err();
        assert!(e.contains("line 2") && e.contains("ai-guard:read"), "{e}");
    }

    #[test]
    fn rules_match_the_normalized_path() {
        let set = RuleSet::new(
            vec![
                rule(&["GET"], "/public/*", &["files:public"], 1),
                rule(&["GET"], "/admin/*", &["files:admin"], 2),
            ],
            false,
        )
        .unwrap();
        let admin = Decision::Require(&["files:admin".to_string()][..]);
        let public = Decision::Require(&["files:public".to_string()][..]);
        assert_eq!(decide(&set, "GET", "/public/../admin/secret.txt"), admin);
        assert_eq!(decide(&set, "GET", "/public/./a.txt"), public);
        assert_eq!(decide(&set, "GET", "/%70ublic/a.txt"), public);
        assert_eq!(
            decide(&set, "GET", "/public/a/../../admin/x?y=/public/"),
            admin
        );
        for raw in [
            "/public/%2e%2e/admin/secret.txt",
            "/public/..%2fadmin/secret.txt",
            "/public/..\\admin/secret.txt",
            "/public/..;/admin/secret.txt",
        ] {
            assert!(NormalPath::parse(raw).is_err(), "{raw}");
        }
    }

    #[test]
    fn a_rule_path_must_be_normal() {
        for (path, hint) in [
            ("/public/../admin/*", "\"/admin/*\""),
            ("/%7euser/*", "\"/~user/*\""),
            ("/a%2fb", "encoded '/'"),
            ("/a//b", "empty segment"),
            ("/a/%2e%2e/b", "'..'"),
        ] {
            let e = RuleSet::new(vec![rule(&["GET"], path, &[], 6)], false).unwrap_err();
            assert!(e.contains("line 6") && e.contains(hint), "{path}: {e}");
        }
    }
}
