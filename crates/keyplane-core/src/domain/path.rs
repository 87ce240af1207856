//! The one request-path normalizer. Route rules, the gateway and every `/v1/authz` form match
//! the path this returns, and the gateway forwards exactly it (plus the original query), so
//! what was authorized is what the upstream is asked for.
//!
//! Rules (input: the raw request-target path, without the query):
//! - It starts with `/`.
//! - Percent-escapes are strict: `%` and exactly two hex digits. An escape of an unreserved
//!   character (`A-Z a-z 0-9 - . _ ~`, RFC 3986 §2.3) is decoded; every other escape is kept,
//!   with its hex digits in upper case (§6.2.2.1–2).
//! - Dot segments are removed (§5.2.4): `/a/b/../c` is `/a/c`, `/a/./b/` is `/a/b/`, `/..` is `/`.
//! - What stays ambiguous — what a proxy, a framework or a file server may read differently —
//!   is refused with a [`PathError`]: an encoded `/` (`%2F`), `\` or `%5C`, a control byte,
//!   space or NUL (raw or encoded), a raw non-ASCII byte, `#` or `?`, an invalid or truncated
//!   escape (`%zz`, `%4`, `%+2`), a `.` or `..` segment written with an escape (`%2e%2e`,
//!   `.%2E`), a dot segment with parameters (`..;x`, which Java servlet containers read as
//!   `..`), and an empty segment (`//`) anywhere but at the end: servers disagree on merging
//!   slashes, and merging changes what a following `..` removes (`/a//../b`).
//!
//! A path that is already normal is returned borrowed: the hot path does not allocate.

use std::borrow::Cow;

/// Why a request path is refused as ambiguous. The HTTP layer answers 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the request path must start with '/'")]
    NotAbsolute,
    #[error("the request path has an invalid or truncated percent-escape ('%' must be followed by two hex digits)")]
    BadEscape,
    #[error("the request path has an encoded '/' (%2F)")]
    EncodedSlash,
    #[error("the request path has a backslash ('\\' or %5C)")]
    Backslash,
    #[error("the request path has a space, NUL or another control byte")]
    ControlByte,
    #[error("the request path has a byte outside ASCII that is not percent-encoded")]
    NonAscii,
    #[error("the request path has a '#' or '?' where only a path may be")]
    Delimiter,
    #[error("the request path has a '.' or '..' segment written with a percent-escape")]
    EncodedDotSegment,
    #[error("the request path has a '.' or '..' segment with ';' parameters")]
    DotSegmentParameters,
    #[error("the request path has an empty segment ('//')")]
    EmptySegment,
}

/// A request path in normal form: the only thing route rules match, and what the gateway
/// forwards. Made only by [`NormalPath::parse`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalPath<'a>(Cow<'a, str>);

impl<'a> NormalPath<'a> {
    /// Normalizes a raw request-target path (without the query).
    pub fn parse(raw: &'a str) -> Result<Self, PathError> {
        normalize(raw).map(NormalPath)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether normalizing copied the path (it was not already normal).
    pub fn is_rewritten(&self) -> bool {
        matches!(self.0, Cow::Owned(_))
    }

    pub fn into_inner(self) -> Cow<'a, str> {
        self.0
    }
}

impl AsRef<str> for NormalPath<'_> {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Splits a request target (`/path?query`) at its first `?`.
pub fn split_target(target: &str) -> (&str, Option<&str>) {
    match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    }
}

/// What the gateway sends upstream for an authorized path: the upstream's base path (no
/// trailing `/`), the normalized path, and the caller's query unchanged.
pub fn upstream_target(base: &str, path: &NormalPath<'_>, query: Option<&str>) -> String {
    let base = base.trim_end_matches('/');
    let mut out =
        String::with_capacity(base.len() + path.as_str().len() + query.map_or(0, |q| q.len() + 1));
    out.push_str(base);
    out.push_str(path.as_str());
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// Normalizes a raw request-target path (see the module's rules): borrowed when it already
/// is normal.
pub fn normalize(raw: &str) -> Result<Cow<'_, str>, PathError> {
    if is_normal(raw.as_bytes()) {
        Ok(Cow::Borrowed(raw))
    } else {
        normalize_slow(raw.as_bytes()).map(Cow::Owned)
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Bytes that may stand raw in a normal path (`%` is handled apart).
fn is_plain(b: u8) -> bool {
    (0x21..0x7f).contains(&b) && !matches!(b, b'%' | b'\\' | b'#' | b'?')
}

/// An escaped byte that may stay escaped in a normal path.
fn keeps_escape(v: u8) -> bool {
    !is_unreserved(v) && v != b'/' && v != b'\\' && v >= 0x20 && v != 0x7f
}

fn upper_hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => upper_hex(b),
    }
}

fn is_dot_like(seg: &[u8]) -> bool {
    seg == b"." || seg == b".." || seg.starts_with(b".;") || seg.starts_with(b"..;")
}

/// The fast check: already normal, so nothing to copy. One pass, no allocation.
fn is_normal(p: &[u8]) -> bool {
    if p.first() != Some(&b'/') {
        return false;
    }
    let mut start = 1;
    let mut i = 1;
    while i <= p.len() {
        let end = i == p.len();
        let b = if end { b'/' } else { p[i] };
        match b {
            b'/' => {
                let seg = &p[start..i];
                if (seg.is_empty() && !end) || is_dot_like(seg) {
                    return false;
                }
                start = i + 1;
                i += 1;
            }
            b'%' => {
                let v = match (
                    p.get(i + 1).copied().and_then(upper_hex),
                    p.get(i + 2).copied().and_then(upper_hex),
                ) {
                    (Some(h), Some(l)) => h << 4 | l,
                    _ => return false,
                };
                if !keeps_escape(v) {
                    return false;
                }
                i += 3;
            }
            _ if is_plain(b) => i += 1,
            _ => return false,
        }
    }
    true
}

/// Decodes one raw segment into `out`; returns whether any `.` in it was written escaped.
fn decode_segment(raw: &[u8], out: &mut String) -> Result<bool, PathError> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut encoded_dot = false;
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if b == b'%' {
            let v = match (
                raw.get(i + 1).copied().and_then(hex),
                raw.get(i + 2).copied().and_then(hex),
            ) {
                (Some(h), Some(l)) => h << 4 | l,
                _ => return Err(PathError::BadEscape),
            };
            if is_unreserved(v) {
                encoded_dot |= v == b'.';
                out.push(v as char);
            } else if v == b'/' {
                return Err(PathError::EncodedSlash);
            } else if v == b'\\' {
                return Err(PathError::Backslash);
            } else if v < 0x20 || v == 0x7f {
                return Err(PathError::ControlByte);
            } else {
                out.push('%');
                out.push(HEX[usize::from(v >> 4)] as char);
                out.push(HEX[usize::from(v & 15)] as char);
            }
            i += 3;
            continue;
        }
        match b {
            b'\\' => return Err(PathError::Backslash),
            b'#' | b'?' => return Err(PathError::Delimiter),
            0x80.. => return Err(PathError::NonAscii),
            _ if !is_plain(b) => return Err(PathError::ControlByte),
            _ => out.push(b as char),
        }
        i += 1;
    }
    Ok(encoded_dot)
}

fn normalize_slow(p: &[u8]) -> Result<String, PathError> {
    let Some(rest) = p.strip_prefix(b"/") else {
        return Err(PathError::NotAbsolute);
    };
    let mut out = String::with_capacity(p.len());
    // Where each kept segment's '/' starts in `out`, so `..` can drop the last one.
    let mut starts: Vec<usize> = Vec::new();
    let mut segments = rest.split(|b| *b == b'/').peekable();
    let mut seg = String::new();
    while let Some(raw) = segments.next() {
        let last = segments.peek().is_none();
        if raw.is_empty() && !last {
            return Err(PathError::EmptySegment);
        }
        seg.clear();
        let encoded_dot = decode_segment(raw, &mut seg)?;
        let head = seg.split(';').next().unwrap_or("");
        if head == "." || head == ".." {
            if head.len() != seg.len() {
                return Err(PathError::DotSegmentParameters);
            }
            if encoded_dot {
                return Err(PathError::EncodedDotSegment);
            }
            if head == ".." {
                if let Some(at) = starts.pop() {
                    out.truncate(at);
                }
            }
            if last {
                starts.push(out.len());
                out.push('/');
            }
            continue;
        }
        starts.push(out.len());
        out.push('/');
        out.push_str(&seg);
    }
    if out.is_empty() {
        out.push('/');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(p: &str) -> Result<String, PathError> {
        normalize(p).map(Cow::into_owned)
    }

    #[test]
    fn rfc3986_remove_dot_segments_examples() {
        // §5.2.4's worked example, and §5.4's results that are paths (base /b/c/d;p).
        for (input, want) in [
            ("/a/b/c/./../../g", "/a/g"),
            ("/mid/content=5/../6", "/mid/6"),
            ("/b/c/g", "/b/c/g"),
            ("/b/c/g/", "/b/c/g/"),
            ("/b/c/./g", "/b/c/g"),
            ("/b/c/.", "/b/c/"),
            ("/b/c/./", "/b/c/"),
            ("/b/c/..", "/b/"),
            ("/b/c/../", "/b/"),
            ("/b/c/../g", "/b/g"),
            ("/b/c/../..", "/"),
            ("/b/c/../../", "/"),
            ("/b/c/../../g", "/g"),
            // §5.4.2 abnormal examples: more ".." than segments stop at the root.
            ("/b/c/../../../g", "/g"),
            ("/b/c/../../../../g", "/g"),
            ("/./g", "/g"),
            ("/../g", "/g"),
            ("/b/c/g.", "/b/c/g."),
            ("/b/c/.g", "/b/c/.g"),
            ("/b/c/g..", "/b/c/g.."),
            ("/b/c/..g", "/b/c/..g"),
            ("/b/c/./../g", "/b/g"),
            ("/b/c/./g/.", "/b/c/g/"),
            ("/b/c/g/./h", "/b/c/g/h"),
            ("/b/c/g/../h", "/b/c/h"),
            ("/b/c/g;x=1/./y", "/b/c/g;x=1/y"),
            ("/b/c/g;x=1/../y", "/b/c/y"),
            ("/", "/"),
            ("/.", "/"),
            ("/..", "/"),
            ("/./", "/"),
        ] {
            assert_eq!(norm(input).as_deref(), Ok(want), "{input}");
        }
    }

    #[test]
    fn traversal_lands_where_the_upstream_would_serve() {
        assert_eq!(
            norm("/public/../admin/secret.txt").as_deref(),
            Ok("/admin/secret.txt")
        );
        assert_eq!(norm("/public/./a.txt").as_deref(), Ok("/public/a.txt"));
        assert_eq!(norm("/public/../../../etc").as_deref(), Ok("/etc"));
    }

    #[test]
    fn unreserved_escapes_are_decoded_and_the_rest_upper_cased() {
        assert_eq!(norm("/%61dmin/%7euser").as_deref(), Ok("/admin/~user"));
        assert_eq!(norm("/a%2db%5Fc%2E").as_deref(), Ok("/a-b_c."));
        assert_eq!(
            norm("/a%20b/%3f/%c3%a9").as_deref(),
            Ok("/a%20b/%3F/%C3%A9")
        );
        assert_eq!(norm("/100%25").as_deref(), Ok("/100%25"));
        // Dots written escaped inside a longer segment are just characters.
        assert_eq!(norm("/%2e%2ea/b%2e").as_deref(), Ok("/..a/b."));
        // Matrix parameters on ordinary segments are kept.
        assert_eq!(norm("/a;b=c/d").as_deref(), Ok("/a;b=c/d"));
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        use PathError::*;
        for (input, want) in [
            ("", NotAbsolute),
            ("public/a", NotAbsolute),
            ("*", NotAbsolute),
            ("/public/%2e%2e/admin/secret.txt", EncodedDotSegment),
            ("/public/%2E%2E/admin/secret.txt", EncodedDotSegment),
            ("/public/.%2e/admin/secret.txt", EncodedDotSegment),
            ("/public/%2e./admin/secret.txt", EncodedDotSegment),
            ("/public/%2e/admin", EncodedDotSegment),
            ("/public/..%2fadmin/secret.txt", EncodedSlash),
            ("/public/..%2Fadmin/secret.txt", EncodedSlash),
            ("/public%2F..%2Fadmin", EncodedSlash),
            ("/public/..\\admin/secret.txt", Backslash),
            ("/public/..%5cadmin/secret.txt", Backslash),
            ("/public/..%5Cadmin", Backslash),
            ("/public/a%00.txt", ControlByte),
            ("/public/a\0.txt", ControlByte),
            ("/public/a%0a", ControlByte),
            ("/public/a%7F", ControlByte),
            ("/public/a b", ControlByte),
            ("/public/a\tb", ControlByte),
            ("/public/\u{e9}", NonAscii),
            ("/public/%zz", BadEscape),
            ("/public/%4", BadEscape),
            ("/public/%", BadEscape),
            ("/public/%+2", BadEscape),
            ("/public/%-2a", BadEscape),
            ("/public/% 2", BadEscape),
            ("/public/a#/../../admin", Delimiter),
            ("/public/a?x", Delimiter),
            ("/public/..;/admin/secret.txt", DotSegmentParameters),
            ("/public/.;x/a", DotSegmentParameters),
            ("/public/%2e%2e;x/admin", DotSegmentParameters),
            ("//admin/secret.txt", EmptySegment),
            ("/public//../admin", EmptySegment),
            ("/admin//secret.txt", EmptySegment),
        ] {
            assert_eq!(norm(input), Err(want), "{input:?}");
        }
    }

    #[test]
    fn trailing_slash_is_kept() {
        assert_eq!(norm("/a/").as_deref(), Ok("/a/"));
        assert!(matches!(normalize("/a/"), Ok(Cow::Borrowed(_))));
    }

    #[test]
    fn a_normal_path_is_borrowed() {
        for p in [
            "/v1/text/guard",
            "/",
            "/a/b/",
            "/a%20b/%C3%A9",
            "/a;b=c/..x/.y/x..",
            "/v1/items/{id}",
        ] {
            assert!(matches!(normalize(p), Ok(Cow::Borrowed(_))), "{p}");
        }
        for p in ["/a/./b", "/a%7e", "/a%3f", "/a/.."] {
            assert!(matches!(normalize(p), Ok(Cow::Owned(_))), "{p}");
        }
    }

    #[test]
    fn the_upstream_target_is_base_path_and_query() {
        let p = NormalPath::parse("/public/./a.txt").unwrap();
        assert!(p.is_rewritten());
        assert_eq!(upstream_target("", &p, None), "/public/a.txt");
        assert_eq!(
            upstream_target("/base/", &p, Some("x=1&y=%2e")),
            "/base/public/a.txt?x=1&y=%2e"
        );
        assert_eq!(split_target("/a?b?c"), ("/a", Some("b?c")));
        assert_eq!(split_target("/a"), ("/a", None));
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config {
            cases: 2048,
            failure_persistence: None,
            ..Default::default()
        })]

        /// The fast check and the full normalizer agree: a path is taken as already normal
        /// exactly when normalizing it would give it back unchanged.
        #[test]
        fn the_fast_check_agrees_with_the_normalizer(
            pieces in proptest::collection::vec(proptest::sample::select(&[
                "/", "/", ".", "..", "%", "2", "e", "E", "f", "F", "a", "3", ";", "\\", "#",
                "%2e", "%2E", "%2f", "%5C", "%3f", "%3F", "%41", "%7E", "%00", "%C3", "%c3", " ",
                "~", "{", "*",
            ][..]), 0..12)
        ) {
            let raw = pieces.concat();
            let slow = normalize_slow(raw.as_bytes());
            proptest::prop_assert_eq!(
                is_normal(raw.as_bytes()),
                slow.as_deref() == Ok(raw.as_str()),
                "{:?} -> {:?}", raw, slow
            );
        }
    }
}
