//! Property tests of the one path normalizer (`domain::path`) and of route matching on its
//! output: raw paths are built from an alphabet rich in what traversal attacks are made of
//! ('/', '.', '%', '2', 'e', 'f', 'F', '5', 'c', ';', '\', …) and matched against random rule sets.
//!
//! What must hold for every raw path the normalizer accepts as `n`:
//! - normalizing is idempotent, and `n` is returned borrowed (already normal);
//! - `n` has no `.` or `..` segment, no `//`, `%2F`, `%2f`, `\` or NUL;
//! - every way a server may read a path — decode then remove dot segments, remove dot segments
//!   then decode, merge slashes first, strip `;` parameters first (servlet containers) — reads
//!   the raw path and `n` alike: nothing the normalizer accepts is ambiguous;
//! - the rule matching `n` is the rule matching what the gateway forwards (`upstream_target`),
//!   normalized again.

use keyplane_core::domain::path::{normalize, split_target, upstream_target, NormalPath};
use keyplane_core::domain::routes::{RuleInput, RuleSet};
use proptest::prelude::*;
use std::borrow::Cow;

/// Pieces of raw paths: single characters, and the escapes and dot runs attacks use. The
/// first list is mostly accepted; the second mostly refused, and drawn less often so that many
/// generated paths are accepted (the properties are about those).
const PIECES: &[&str] = &[
    "/", "/", "/", "/", ".", ".", "..", "2", "e", "E", "f", "F", "a", "d", "m", "i", "n", "5", "c",
    "C", "0", ";", "~", "%2e", "%2E", "%41", "%7e", "%3f", "%3F", "%25", "%20", "%c3", "/..", "/.",
    "admin", "public", "..;x", "a;b",
];
const DANGEROUS: &[&str] = &[
    "%", "\\", "%2f", "%2F", "%5c", "%5C", "%00", "%0a", "//", "#", "?", "%2e%2e", "..%2f", ".%2e",
    "%2e.", "..;", "%4", "%zz", "%+2", " ",
];

fn raw_path() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        12 => prop::sample::select(PIECES),
        1 => prop::sample::select(DANGEROUS),
    ];
    (
        prop_oneof![8 => Just("/"), 1 => Just("")],
        prop::collection::vec(piece, 0..16),
    )
        .prop_map(|(lead, pieces)| format!("{lead}{}", pieces.concat()))
}

const SEGMENTS: &[&str] = &[
    "admin", "public", "a", "d", "e", "f", "ad", "{p}", "%3F", "~",
];

fn rule_set() -> impl Strategy<Value = (RuleSet, usize)> {
    let pattern = (
        prop::collection::vec(prop::sample::select(SEGMENTS), 0..4),
        any::<bool>(),
    );
    let method = prop::sample::select(&["GET", "POST", "*"][..]);
    (
        prop::collection::vec((method, pattern), 1..8),
        any::<bool>(),
    )
        .prop_map(|(candidates, allow_unmatched)| {
            // Keep each candidate that leaves the set valid (no unreachable rule).
            let mut inputs: Vec<RuleInput> = Vec::new();
            for (i, (method, (segments, rest))) in candidates.into_iter().enumerate() {
                let mut path = format!("/{}", segments.join("/"));
                if rest {
                    path = if path == "/" {
                        "/*".into()
                    } else {
                        format!("{path}/*")
                    };
                }
                let mut next = inputs.clone();
                next.push(RuleInput {
                    methods: vec![method.to_string()],
                    path,
                    scopes: vec![format!("s{i}")],
                    line: i + 1,
                    rate_limit: None,
                    cost: None,
                });
                if RuleSet::new(next.clone(), allow_unmatched).is_ok() {
                    inputs = next;
                }
            }
            let n = inputs.len();
            (RuleSet::new(inputs, allow_unmatched).unwrap(), n)
        })
}

fn hex(b: u8) -> u8 {
    (b as char)
        .to_digit(16)
        .expect("an accepted path has only valid escapes") as u8
}

/// Every escape decoded, as a server that decodes the whole path would.
fn decode_all(p: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(p.len());
    let mut i = 0;
    while i < p.len() {
        if p[i] == b'%' {
            out.push(hex(p[i + 1]) << 4 | hex(p[i + 2]));
            i += 3;
        } else {
            out.push(p[i]);
            i += 1;
        }
    }
    out
}

/// RFC 3986 §5.2.4, written as the RFC's loop over an input and an output buffer (a reference
/// independent of the normalizer's segment stack).
fn remove_dot_segments(input: &[u8]) -> Vec<u8> {
    fn pop_last(out: &mut Vec<u8>) {
        let at = out.iter().rposition(|b| *b == b'/').unwrap_or(0);
        out.truncate(at);
    }
    let mut inp = input.to_vec();
    let mut out = Vec::new();
    while !inp.is_empty() {
        if inp.starts_with(b"../") {
            inp.drain(..3);
        } else if inp.starts_with(b"./") || inp.starts_with(b"/./") {
            inp.drain(..2);
        } else if inp == b"/." {
            inp = b"/".to_vec();
        } else if inp.starts_with(b"/../") {
            inp.drain(..3);
            pop_last(&mut out);
        } else if inp == b"/.." {
            inp = b"/".to_vec();
            pop_last(&mut out);
        } else if inp == b"." || inp == b".." {
            inp.clear();
        } else {
            let start = usize::from(inp[0] == b'/');
            let end = inp[start..]
                .iter()
                .position(|b| *b == b'/')
                .map_or(inp.len(), |i| i + start);
            out.extend(inp.drain(..end));
        }
    }
    out
}

fn merge_slashes(p: &[u8]) -> Vec<u8> {
    let mut out: Vec<u8> = Vec::with_capacity(p.len());
    for &b in p {
        if !(b == b'/' && out.last() == Some(&b'/')) {
            out.push(b);
        }
    }
    out
}

/// A servlet container: `;` parameters stripped from each segment, then decoded, then dots.
fn servlet_view(p: &str) -> Vec<u8> {
    let stripped: Vec<&str> = p
        .split('/')
        .map(|s| s.split(';').next().unwrap_or(""))
        .collect();
    remove_dot_segments(&decode_all(stripped.join("/").as_bytes()))
}

fn has_segment(p: &str, seg: &str) -> bool {
    p.split('/').any(|s| s == seg)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 4096,
        // Nothing written into the source tree; a failure prints its minimal input.
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn normal_form_is_idempotent_clean_and_unambiguous(raw in raw_path()) {
        let Ok(n) = normalize(&raw) else { return Ok(()); };
        let n = n.as_ref();
        // Idempotent, and recognized as normal without a copy.
        prop_assert!(matches!(normalize(n), Ok(Cow::Borrowed(x)) if x == n), "{raw:?} -> {n:?}");
        // Clean.
        prop_assert!(n.starts_with('/'), "{raw:?} -> {n:?}");
        prop_assert!(!has_segment(n, ".") && !has_segment(n, ".."), "{raw:?} -> {n:?}");
        for bad in ["%2F", "%2f", "\\", "\0", "//", "%5C", "%00"] {
            prop_assert!(!n.contains(bad), "{raw:?} -> {n:?} contains {bad:?}");
        }
        // Every reading of the raw path is the reading of the normal one.
        let meaning = decode_all(n.as_bytes());
        let decoded = decode_all(raw.as_bytes());
        prop_assert_eq!(&remove_dot_segments(&decoded), &meaning, "decode first: {:?}", raw);
        prop_assert_eq!(
            &decode_all(&remove_dot_segments(raw.as_bytes())), &meaning,
            "dots first: {:?}", raw
        );
        prop_assert_eq!(
            &remove_dot_segments(&merge_slashes(&decoded)), &meaning,
            "slashes merged: {:?}", raw
        );
        prop_assert_eq!(servlet_view(&raw), servlet_view(n), "servlet: {:?}", raw);
        prop_assert_eq!(remove_dot_segments(n.as_bytes()), n.as_bytes().to_vec());
    }

    #[test]
    fn the_rule_matched_is_the_rule_of_the_forwarded_path(
        (rules, _) in rule_set(),
        raw in raw_path(),
        query in prop::option::of(prop::sample::select(&["", "x=1", "p=/admin/../public", "a=%2e%2e"][..])),
        method in prop::sample::select(&["GET", "POST", "DELETE"][..]),
    ) {
        let Ok(n) = NormalPath::parse(&raw) else { return Ok(()); };
        let decided = rules.decide(method, &n);
        // What the gateway sends upstream, read back as the upstream's request target.
        let forwarded = upstream_target("", &n, query);
        let (path, q) = split_target(&forwarded);
        prop_assert_eq!(q, query);
        let again = NormalPath::parse(path).expect("the forwarded path is normal");
        prop_assert_eq!(again.as_str(), n.as_str());
        prop_assert_eq!(rules.decide(method, &again), decided, "{:?}", raw);
    }

    #[test]
    fn anything_else_is_refused_or_normal(chars in prop::collection::vec(any::<char>(), 0..40)) {
        let raw: String = chars.into_iter().collect();
        if let Ok(n) = normalize(&raw) {
            prop_assert!(n.is_ascii() && n.starts_with('/'));
            prop_assert!(!n.bytes().any(|b| b < 0x21 || b == 0x7f || b == b'\\'));
            prop_assert!(matches!(normalize(&n), Ok(Cow::Borrowed(_))));
        }
    }
}

/// The properties are only worth something if the generators reach the cases that matter:
/// paths that are accepted, paths that normalizing rewrites, and paths a rule matches.
#[test]
fn the_generators_reach_interesting_cases() {
    use keyplane_core::domain::routes::Decision;
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let (mut accepted, mut rewritten, mut matched, mut rules_total) = (0, 0, 0, 0);
    for _ in 0..2000 {
        let raw = raw_path().new_tree(&mut runner).unwrap().current();
        let (rules, n_rules) = rule_set().new_tree(&mut runner).unwrap().current();
        rules_total += n_rules;
        if let Ok(n) = NormalPath::parse(&raw) {
            accepted += 1;
            rewritten += usize::from(n.is_rewritten());
            matched += usize::from(
                matches!(rules.decide("GET", &n), Decision::Require(s) if !s.is_empty()),
            );
        }
    }
    eprintln!("of 2000: {accepted} accepted, {rewritten} rewritten, {matched} matched a rule; {rules_total} rules");
    assert!(
        accepted > 600 && rewritten > 300 && matched > 150 && rules_total > 4000,
        "{accepted} accepted, {rewritten} rewritten, {matched} matched, {rules_total} rules"
    );
}
