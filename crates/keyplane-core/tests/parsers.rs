//! Property tests of the credential parsers (issue 11 §10): whatever arrives, they answer
//! without panicking, accept exactly what this deployment made, and refuse every one-character
//! change of it — the CRC32 of the key format catches a mistyped key before any storage read,
//! and the seal or signature catches everything else.

use keyplane_core::domain::secret::SecretFormat;
use keyplane_core::domain::token::{
    generate_pkcs8, Alg, Audience, JwtClaims, Keyring, OpaqueClaims, Sealer, SigningKey,
};
use proptest::prelude::*;

fn format() -> SecretFormat {
    SecretFormat::new("kp_").unwrap()
}

fn sealer() -> Sealer {
    Sealer::new([7u8; 32], "kpt_")
}

fn keyring() -> Keyring {
    Keyring::new(vec![
        SigningKey::from_pkcs8(
            "es".into(),
            Alg::ES256,
            &generate_pkcs8(Alg::ES256),
            0,
            None,
        )
        .unwrap(),
        SigningKey::from_pkcs8(
            "ed".into(),
            Alg::EdDSA,
            &generate_pkcs8(Alg::EdDSA),
            0,
            None,
        )
        .unwrap(),
    ])
}

fn claims(j: &str) -> JwtClaims {
    JwtClaims {
        iss: "https://issuer.example".into(),
        sub: "kpc_x".into(),
        aud: Audience::one("https://issuer.example".into()),
        exp: 2_000_000_000,
        iat: 1_700_000_000,
        nbf: 1_700_000_000,
        jti: j.into(),
        client_id: "kpc_x".into(),
        scope: "a b".into(),
        cnf: None,
        act: None,
        subject_credentials: None,
        federated: None,
    }
}

/// Replaces the character at `at` (modulo the length) by `with`, if that changes the text.
fn mutate(text: &str, at: usize, with: char) -> Option<String> {
    let chars: Vec<char> = text.chars().collect();
    let i = at % chars.len();
    if chars[i] == with {
        return None;
    }
    let mut out = chars;
    out[i] = with;
    Some(out.into_iter().collect())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn key_checks_never_panic(text in ".{0,120}") {
        let _ = format().check(&text);
        let _ = sealer().open(&text);
        let _ = keyring().verify_jwt(&text);
    }

    #[test]
    fn generated_keys_pass_and_any_typo_is_refused(at in 0usize..200, with in "[A-Za-z0-9_!%. ]") {
        let f = format();
        let key = f.generate();
        prop_assert!(f.check(key.expose()).is_ok());
        if let Some(bad) = mutate(key.expose(), at, with.chars().next().unwrap()) {
            prop_assert!(f.check(&bad).is_err(), "a typo passed: {}", bad);
        }
    }

    #[test]
    fn sealed_tokens_open_and_any_change_is_refused(
        c in "[a-z_]{1,20}", s in "[a-z: ]{0,40}", i in 0i64..i64::MAX / 2,
        at in 0usize..400, with in "[A-Za-z0-9_\\-]",
    ) {
        let sealer = sealer();
        let claims = OpaqueClaims { c, s, i, e: i + 1, j: "j".into(), k: None, a: vec![], d: None, f: None, u: None };
        let token = sealer.seal(&claims);
        prop_assert_eq!(sealer.open(&token), Some(claims));
        if let Some(bad) = mutate(&token, at, with.chars().next().unwrap()) {
            prop_assert!(sealer.open(&bad).is_none(), "a changed token opened: {}", bad);
        }
        // Another deployment's key opens nothing of ours.
        prop_assert!(Sealer::new([8u8; 32], "kpt_").open(&token).is_none());
    }

    #[test]
    fn signed_jwts_verify_and_any_change_is_refused(
        jti in "[a-zA-Z0-9]{1,22}", es in any::<bool>(),
        at in 0usize..600, with in "[A-Za-z0-9_\\-.]",
    ) {
        let ring = keyring();
        let key = ring.get(if es { "es" } else { "ed" }).unwrap();
        let token = Keyring::sign_jwt(key, &claims(&jti));
        prop_assert_eq!(ring.verify_jwt(&token), Some(claims(&jti)));
        if let Some(bad) = mutate(&token, at, with.chars().next().unwrap()) {
            // base64url has slack in its last character; a change that decodes to the same
            // bytes is the same token, everything else is refused.
            if let Some(c) = ring.verify_jwt(&bad) {
                prop_assert_eq!(c, claims(&jti));
            }
        }
    }
}
