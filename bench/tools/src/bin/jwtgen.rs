//! Pre-signs what the `private_key_jwt` and DPoP scenarios send, one per request, so the load
//! generator does no cryptography and every request carries a fresh `jti`:
//!
//! ```text
//! jwtgen key DIR                                   ES256 key: DIR/key.p8, DIR/jwk.json (public)
//! jwtgen assertions DIR N OUT CLIENT_ID AUD        N client assertions (RFC 7523), one a line
//! jwtgen proofs DIR N OUT HTM HTU [ACCESS_TOKEN]   N DPoP proofs (RFC 9449), with `ath` when a
//!                                                  token is given
//! ```
//!
//! Every token gets a unique `jti` (a random prefix for the run and a counter) and `iat` = now,
//! so proofs must be made just before the scenario that sends them (servers accept a proof's
//! `iat` only within a window). Signing runs on every core.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::{json, Value};
use std::io::Write;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

const KID: &str = "bench-es256";
/// A client assertion's lifetime: under keyplane's and oidc-provider's maximum (300 s).
const ASSERTION_LIFETIME_S: i64 = 240;

fn fail(msg: &str) -> ! {
    eprintln!("jwtgen: {msg}");
    std::process::exit(2)
}

fn now_s() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn load(dir: &Path) -> EcdsaKeyPair {
    let der = std::fs::read(dir.join("key.p8")).unwrap_or_else(|e| fail(&format!("key.p8: {e}")));
    EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der, &SystemRandom::new())
        .unwrap_or_else(|_| fail("key.p8 is not a P-256 PKCS#8 key"))
}

fn public_jwk(key: &EcdsaKeyPair) -> Value {
    // The uncompressed point: 0x04, then x and y (32 bytes each).
    let point = key.public_key().as_ref();
    json!({"kty": "EC", "crv": "P-256", "x": B64.encode(&point[1..33]), "y": B64.encode(&point[33..65])})
}

fn b64_json(v: &Value) -> String {
    B64.encode(serde_json::to_vec(v).expect("JSON"))
}

/// Signs `N` tokens whose claims `claims(i)` makes, on every core; writes them to `out` in order.
fn sign_all(
    key: &EcdsaKeyPair,
    header: &Value,
    n: usize,
    out: &Path,
    claims: impl Fn(usize) -> Value + Sync,
) {
    let header = b64_json(header);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = n.div_ceil(threads.max(1)).max(1);
    let parts: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .step_by(chunk)
            .map(|start| {
                let (header, claims) = (&header, &claims);
                s.spawn(move || {
                    let rng = SystemRandom::new();
                    let mut text = String::with_capacity(chunk * 400);
                    for i in start..(start + chunk).min(n) {
                        let input = format!("{header}.{}", b64_json(&claims(i)));
                        let sig = key.sign(&rng, input.as_bytes()).expect("ES256 signature");
                        text.push_str(&input);
                        text.push('.');
                        text.push_str(&B64.encode(sig.as_ref()));
                        text.push('\n');
                    }
                    text
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("signer"))
            .collect()
    });
    let mut f = std::io::BufWriter::new(
        std::fs::File::create(out).unwrap_or_else(|e| fail(&format!("{}: {e}", out.display()))),
    );
    for p in parts {
        f.write_all(p.as_bytes()).expect("write");
    }
    f.flush().expect("write");
}

/// A random prefix for this run's `jti`s (a counter follows it).
fn run_id() -> String {
    let mut b = [0u8; 9];
    SystemRandom::new().fill(&mut b).expect("random");
    B64.encode(b)
}

fn count(s: &str) -> usize {
    s.parse()
        .unwrap_or_else(|_| fail(&format!("not a count: {s}")))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    match a.as_slice() {
        ["key", dir] => {
            let dir = Path::new(dir);
            std::fs::create_dir_all(dir).unwrap_or_else(|e| fail(&e.to_string()));
            let der = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .unwrap_or_else(|_| fail("key generation"));
            std::fs::write(dir.join("key.p8"), der.as_ref()).unwrap_or_else(|e| fail(&e.to_string()));
            let mut jwk = public_jwk(&load(dir));
            jwk["kid"] = json!(KID);
            jwk["alg"] = json!("ES256");
            jwk["use"] = json!("sig");
            std::fs::write(dir.join("jwk.json"), jwk.to_string()).unwrap_or_else(|e| fail(&e.to_string()));
        }
        ["assertions", dir, n, out, client_id, aud] => {
            let key = load(Path::new(dir));
            let (run, iat) = (run_id(), now_s());
            let header = json!({"alg": "ES256", "typ": "JWT", "kid": KID});
            sign_all(&key, &header, count(n), Path::new(out), |i| {
                json!({"iss": client_id, "sub": client_id, "aud": aud, "jti": format!("{run}.{i}"),
                       "iat": iat, "exp": iat + ASSERTION_LIFETIME_S})
            });
        }
        ["proofs", dir, n, out, htm, htu, rest @ ..] if rest.len() <= 1 => {
            let key = load(Path::new(dir));
            let (run, iat) = (run_id(), now_s());
            let header = json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": public_jwk(&key)});
            let ath = rest.first().map(|t| B64.encode(ring::digest::digest(&ring::digest::SHA256, t.as_bytes())));
            sign_all(&key, &header, count(n), Path::new(out), |i| {
                let mut c = json!({"jti": format!("{run}.{i}"), "htm": htm, "htu": htu, "iat": iat});
                if let Some(ath) = &ath {
                    c["ath"] = json!(ath);
                }
                c
            });
        }
        _ => fail("usage: jwtgen key DIR | assertions DIR N OUT CLIENT_ID AUD | proofs DIR N OUT HTM HTU [ACCESS_TOKEN]"),
    }
}
