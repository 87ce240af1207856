//! Secrets: generation, the readable format with its checksum, and keyed digests.
//!
//! A secret is `prefix` + 43 base62 characters (32 bytes from the OS random source) + 6 base62
//! characters of CRC32 over everything before them, in the manner of GitHub's tokens. The
//! checksum lets a mistyped or truncated secret be refused without a storage lookup and lets
//! secret scanners recognise ours. Storage only ever sees an HMAC-SHA256 digest under the pepper.

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use std::fmt;

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
/// Base62 characters needed for 32 bytes: 62^43 > 2^256.
pub const BODY_LEN: usize = 43;
/// Base62 characters needed for a CRC32: 62^6 > 2^32.
pub const CHECKSUM_LEN: usize = 6;

/// Encodes `bytes` as a big-endian number in base62, left-padded with '0' to `width` characters.
pub fn base62_fixed(bytes: &[u8], width: usize) -> String {
    let mut num = bytes.to_vec();
    let mut out = vec![b'0'; width];
    for slot in out.iter_mut().rev() {
        let mut rem: u32 = 0;
        for b in num.iter_mut() {
            let acc = (rem << 8) | u32::from(*b);
            *b = (acc / 62) as u8;
            rem = acc % 62;
        }
        *slot = ALPHABET[rem as usize];
    }
    String::from_utf8(out).expect("alphabet is ASCII")
}

/// Random base62 text of `len` characters (rejection sampling keeps it unbiased), straight
/// from the operating system: for secrets (session ids, one-time links).
pub fn random_base62(len: usize) -> String {
    base62_from(&mut rand::rngs::OsRng, len)
}

/// Random base62 text for identifiers (ids, token `jti`s): the thread's CSPRNG (ChaCha, seeded
/// and reseeded from the OS), so the hot paths that mint ids make no system call.
pub fn random_id_text(len: usize) -> String {
    base62_from(&mut rand::thread_rng(), len)
}

fn base62_from(rng: &mut impl RngCore, len: usize) -> String {
    let mut out = String::with_capacity(len);
    while out.len() < len {
        let mut buf = [0u8; 32];
        rng.fill_bytes(&mut buf);
        for b in buf {
            // 248 = 4 * 62: values above would favour the first characters.
            if b < 248 && out.len() < len {
                out.push(ALPHABET[(b % 62) as usize] as char);
            }
        }
    }
    out
}

/// The base62 CRC32 of `text`, on the stack: checked on every presented credential.
pub fn crc_text(text: &[u8]) -> [u8; CHECKSUM_LEN] {
    let mut n = crc32fast::hash(text);
    let mut out = [b'0'; CHECKSUM_LEN];
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(n % 62) as usize];
        n /= 62;
    }
    out
}

fn checksum(text: &str) -> String {
    String::from_utf8(crc_text(text.as_bytes()).to_vec()).expect("alphabet is ASCII")
}

/// A secret in clear text. It cannot be printed by accident: `Debug` and `Display` redact it.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretString(String);

impl SecretString {
    pub fn new(text: impl Into<String>) -> Self {
        Self(text.into())
    }
    /// The clear text, for the one response that shows it or for computing its digest.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretString(<redacted>)")
    }
}

/// The readable prefix of one kind of secret (`kp_`, `kpc_`, `kps_`, ...). Configurable per deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretFormat {
    prefix: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("the credential does not start with the expected prefix")]
    Prefix,
    #[error("the credential has the wrong length")]
    Length,
    #[error("the credential contains characters outside base62")]
    Alphabet,
    #[error("the credential's checksum does not match")]
    Checksum,
}

impl SecretFormat {
    /// A prefix is 1 to 16 characters of `[A-Za-z0-9]` ending in `_`.
    pub fn new(prefix: &str) -> Result<Self, String> {
        let ok = prefix.len() >= 2
            && prefix.len() <= 16
            && prefix.ends_with('_')
            && prefix[..prefix.len() - 1]
                .bytes()
                .all(|b| b.is_ascii_alphanumeric());
        if ok {
            Ok(Self {
                prefix: prefix.to_string(),
            })
        } else {
            Err(format!(
                "invalid secret prefix {prefix:?}: use 1-15 ASCII letters or digits followed by '_'"
            ))
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A fresh secret: prefix, 32 random bytes in base62, checksum.
    pub fn generate(&self) -> SecretString {
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        let mut text = String::with_capacity(self.prefix.len() + BODY_LEN + CHECKSUM_LEN);
        text.push_str(&self.prefix);
        text.push_str(&base62_fixed(&bytes, BODY_LEN));
        let sum = checksum(&text);
        text.push_str(&sum);
        SecretString(text)
    }

    /// Checks prefix, length, alphabet and checksum without touching storage.
    pub fn check(&self, text: &str) -> Result<(), FormatError> {
        let rest = text.strip_prefix(&self.prefix).ok_or(FormatError::Prefix)?;
        if rest.len() != BODY_LEN + CHECKSUM_LEN {
            return Err(FormatError::Length);
        }
        if !rest.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(FormatError::Alphabet);
        }
        let split = text.len() - CHECKSUM_LEN;
        if crc_text(&text.as_bytes()[..split]) != text.as_bytes()[split..] {
            return Err(FormatError::Checksum);
        }
        Ok(())
    }

    /// Whether `text` starts with this prefix (it may still be malformed).
    pub fn claims(&self, text: &str) -> bool {
        text.starts_with(&self.prefix)
    }
}

/// A keyed digest of a secret: HMAC-SHA256 under one version of the pepper.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digest(pub [u8; 32]);

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Digests are not secrets, but eight bytes are enough to tell them apart in a log.
        write!(f, "Digest(")?;
        for b in &self.0[..8] {
            write!(f, "{b:02x}")?;
        }
        write!(f, "…)")
    }
}

impl Digest {
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        <[u8; 32]>::try_from(bytes).ok().map(Digest)
    }
}

/// The server-side key for digests. Two versions may be live while it is rotated: digests are
/// made with the current one, and a lookup that misses tries the previous one.
#[derive(Clone)]
pub struct Pepper {
    current: (u32, Vec<u8>),
    previous: Option<(u32, Vec<u8>)>,
    keyed: Hmac<Sha256>,
}

impl fmt::Debug for Pepper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Pepper(v{}, previous: {:?}, <redacted>)",
            self.current.0,
            self.previous.as_ref().map(|p| p.0)
        )
    }
}

impl Pepper {
    /// A pepper must carry at least 32 bytes of key material.
    pub fn new(version: u32, key: &[u8]) -> Result<Self, String> {
        if key.len() < 32 {
            return Err("the pepper must be at least 32 bytes long".into());
        }
        Ok(Self {
            current: (version, key.to_vec()),
            previous: None,
            keyed: <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length"),
        })
    }

    pub fn with_previous(mut self, version: u32, key: &[u8]) -> Self {
        self.previous = Some((version, key.to_vec()));
        self
    }

    pub fn version(&self) -> u32 {
        self.current.0
    }

    pub fn digest(&self, secret: &str) -> Digest {
        // The keyed state (the key through the inner and outer pads) is computed once; each
        // digest clones it instead of hashing the key again.
        let mut mac = self.keyed.clone();
        mac.update(secret.as_bytes());
        Digest(mac.finalize().into_bytes().into())
    }

    /// The digest under the previous pepper, when one is still live.
    pub fn previous_digest(&self, secret: &str) -> Option<Digest> {
        self.previous.as_ref().map(|(_, k)| Self::hmac(k, secret))
    }

    /// A key for another purpose (e.g. encrypting tokens), derived so it never equals the pepper.
    pub fn derive(&self, purpose: &str) -> [u8; 32] {
        Self::hmac(&self.current.1, &format!("keyplane-derive:{purpose}")).0
    }

    /// [`Pepper::derive`] under the pepper of `version`, when that one is live here.
    pub fn derive_version(&self, version: u32, purpose: &str) -> Option<[u8; 32]> {
        let key = if self.current.0 == version {
            &self.current.1
        } else {
            match &self.previous {
                Some((v, k)) if *v == version => k,
                _ => return None,
            }
        };
        Some(Self::hmac(key, &format!("keyplane-derive:{purpose}")).0)
    }

    /// HMAC-SHA256 of `message` under `key` (e.g. a key from [`Pepper::derive`]).
    pub fn mac(key: &[u8], message: &str) -> [u8; 32] {
        Self::hmac(key, message).0
    }

    fn hmac(key: &[u8], secret: &str) -> Digest {
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
        mac.update(secret.as_bytes());
        Digest(mac.finalize().into_bytes().into())
    }
}

/// Whether an operator-supplied admin key is strong enough; otherwise why not. Generated keys
/// (`kpa_` and 43 base62 characters) always pass. A key must have at least 32 characters, an
/// estimated strength of at least 128 bits counted as length × log2(size of the character
/// classes it uses: lower case 26, upper case 26, digits 10, anything else 33), and at least 2.9
/// bits per character of Shannon entropy over its own characters — which refuses repetitions
/// and cycles of up to 7 characters (`aaaa…`, `abab…`, `abcdefgabcdefg…`) that the class count
/// alone would let through. Random keys measure far more: 32 random hexadecimal characters
/// about 3.6 (fewer than 1 in 40,000 fall under 2.9), 64 of them 3.9, 32 base62 ones 4.6.
pub fn admin_key_strength(key: &str) -> Result<(), String> {
    let chars: Vec<char> = key.chars().collect();
    let n = chars.len();
    if n < 32 {
        return Err(format!("it has {n} characters; at least 32 are needed"));
    }
    let (mut lower, mut upper, mut digit, mut other) = (false, false, false, false);
    let mut counts: std::collections::HashMap<char, usize> = Default::default();
    for c in &chars {
        match c {
            'a'..='z' => lower = true,
            'A'..='Z' => upper = true,
            '0'..='9' => digit = true,
            _ => other = true,
        }
        *counts.entry(*c).or_default() += 1;
    }
    let pool = 26 * u32::from(lower)
        + 26 * u32::from(upper)
        + 10 * u32::from(digit)
        + 33 * u32::from(other);
    let estimate = n as f64 * f64::from(pool).log2();
    if estimate < 128.0 {
        return Err(format!(
            "its {n} characters come from a set of {pool}, an estimated {estimate:.0} bits; at least 128 are needed (use more characters, or mix upper and lower case, digits and symbols)"
        ));
    }
    let per_char: f64 = counts
        .values()
        .map(|&k| {
            let p = k as f64 / n as f64;
            -p * p.log2()
        })
        .sum();
    if per_char < 2.9 {
        return Err(format!(
            "it repeats characters too much ({per_char:.2} bits of entropy per character, at least 2.9 needed; {} distinct characters)",
            counts.len()
        ));
    }
    Ok(())
}

/// Constant-time equality of two byte strings (their lengths are not secret): every byte is
/// read whatever the others hold, eight at a time, with no branch on their contents; the
/// difference is hidden from the optimizer before it is tested.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let word = |c: &[u8]| {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        u64::from_ne_bytes(w)
    };
    let (wa, wb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (wa.remainder(), wb.remainder());
    let mut diff = wa.zip(wb).fold(0u64, |d, (x, y)| d | (word(x) ^ word(y)));
    diff |= ra
        .iter()
        .zip(rb)
        .fold(0u64, |d, (x, y)| d | u64::from(x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ct_eq_finds_any_difference_in_any_byte() {
        for len in [0usize, 1, 7, 8, 9, 32, 41, 260] {
            let a: Vec<u8> = (0..len).map(|i| (i * 31 + 7) as u8).collect();
            assert!(ct_eq(&a, &a.clone()), "{len} bytes");
            for at in 0..len {
                for bit in [0x01u8, 0x80] {
                    let mut b = a.clone();
                    b[at] ^= bit;
                    assert!(!ct_eq(&a, &b), "{len} bytes, byte {at}, bit {bit:#x}");
                }
            }
            let mut longer = a.clone();
            longer.push(0);
            assert!(!ct_eq(&a, &longer));
            assert!(!ct_eq(&longer, &a));
        }
    }

    #[test]
    fn generated_secrets_check_and_tampering_is_caught() {
        let f = SecretFormat::new("kp_").unwrap();
        let s = f.generate();
        assert_eq!(s.expose().len(), 3 + BODY_LEN + CHECKSUM_LEN);
        assert_eq!(f.check(s.expose()), Ok(()));
        // Change one character of the body: the checksum must catch it.
        let mut bytes = s.expose().as_bytes().to_vec();
        bytes[10] = if bytes[10] == b'a' { b'b' } else { b'a' };
        let tampered = String::from_utf8(bytes).unwrap();
        assert_eq!(f.check(&tampered), Err(FormatError::Checksum));
        assert_eq!(f.check("kp_short"), Err(FormatError::Length));
        assert_eq!(
            f.check(&s.expose().replace("kp_", "xx_")),
            Err(FormatError::Prefix)
        );
        assert_ne!(f.generate(), f.generate());
    }

    #[test]
    fn base62_is_fixed_width_and_big_endian() {
        assert_eq!(base62_fixed(&[0, 0], 3), "000");
        assert_eq!(base62_fixed(&[0, 61], 3), "00z");
        assert_eq!(base62_fixed(&[0, 62], 3), "010");
        assert_eq!(base62_fixed(&[0xff; 32], BODY_LEN).len(), BODY_LEN);
        for text in ["", "kp_abc", "a much longer text to checksum"] {
            let crc = crc32fast::hash(text.as_bytes()).to_be_bytes();
            assert_eq!(
                crc_text(text.as_bytes()).as_slice(),
                base62_fixed(&crc, CHECKSUM_LEN).as_bytes()
            );
        }
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let s = SecretString::new("kp_supersecret");
        assert!(!format!("{s:?}").contains("supersecret"));
    }

    #[test]
    fn prefixes_are_validated() {
        assert!(SecretFormat::new("ptg_").is_ok());
        assert!(SecretFormat::new("ptg").is_err());
        assert!(SecretFormat::new("p-g_").is_err());
    }

    #[test]
    fn weak_admin_keys_are_refused() {
        let weak = [
            "a".repeat(32),
            "short-but-Varied-1!".to_string(),
            "ab".repeat(20),
            "abcdabcd".repeat(5),
            "abcdefg".repeat(5),
            "12345678901234567890123456789012".to_string(),
        ];
        for k in &weak {
            assert!(admin_key_strength(k).is_err(), "{k} was accepted");
        }
        let f = SecretFormat::new("kpa_").unwrap();
        for _ in 0..200 {
            assert_eq!(admin_key_strength(f.generate().expose()), Ok(()));
            // `openssl rand -hex 32` and 32 random base62 characters pass.
            let hex: String = (0..32)
                .map(|_| format!("{:02x}", rand::random::<u8>()))
                .collect();
            assert_eq!(admin_key_strength(&hex), Ok(()), "{hex}");
            assert_eq!(admin_key_strength(&random_base62(32)), Ok(()));
        }
        assert!(admin_key_strength("a-very-long-admin-key-of-at-least-32-chars").is_ok());
    }

    #[test]
    fn pepper_digests_are_keyed() {
        let a = Pepper::new(1, &[1u8; 32]).unwrap();
        let b = Pepper::new(2, &[2u8; 32]).unwrap();
        assert_ne!(a.digest("x"), b.digest("x"));
        assert_eq!(a.digest("x"), a.digest("x"));
        // The precomputed keyed state gives the same digest as keying afresh.
        assert_eq!(
            a.digest("some secret"),
            Pepper::hmac(&[1u8; 32], "some secret")
        );
        assert!(Pepper::new(1, b"short").is_err());
    }
}
