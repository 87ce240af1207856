//! The web console's records and pure rules: sessions and one-time password links as stored
//! (digests only), member passwords (argon2id; slow on purpose, so [`hash_password`] and
//! [`SignInAttempt::verify`] are plain functions the caller runs off its async executor), and
//! who a signed-in session is.

use crate::domain::error::{Error, Result};
use crate::domain::model::Member;
use crate::domain::perm::Principal;
use crate::domain::secret::Digest;
use time::{Duration, OffsetDateTime};

/// How long a console session lasts from sign-in (an absolute bound, not extended by use).
pub const SESSION_TTL: Duration = Duration::hours(8);
/// How long a one-time password link stays usable.
pub const LINK_TTL: Duration = Duration::hours(24);
/// Password length bounds (characters).
pub const PASSWORD_MIN: usize = 12;
pub const PASSWORD_MAX: usize = 256;

/// A console session as stored: the digest of its id, never the id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleSession {
    pub digest: Digest,
    /// The signed-in member; `None` for a session opened with the admin key.
    pub member_id: Option<String>,
    /// For an admin-key session, the admin key's digest at sign-in: rotating the key ends it.
    pub admin_key_digest: Option<Digest>,
    /// The organization and project the console shows (the switcher's choice).
    pub org_id: Option<String>,
    pub project_id: Option<String>,
    /// Every member the password proved at sign-in: the same person in several organizations.
    pub member_ids: Vec<String>,
    pub created_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
}

/// A one-time link that sets a member's password, by the digest of its token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswordLink {
    pub digest: Digest,
    pub member_id: String,
    pub created_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
    pub created_by: String,
}

/// A signed-in console user: the session and the principal it acts as.
#[derive(Debug, Clone)]
pub struct SignedIn {
    pub session: ConsoleSession,
    pub principal: Principal,
    /// The member, for a member's session.
    pub member: Option<Member>,
}

/// Hashes a password with argon2id (the crate's defaults: 19 MiB, 2 passes). Slow on purpose:
/// run it on a blocking thread.
pub fn hash_password(password: &str) -> Result<String> {
    use argon2::password_hash::{rand_core::OsRng, PasswordHasher, SaltString};
    let salt = SaltString::generate(&mut OsRng);
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| Error::Storage(format!("cannot hash a password: {e}").into()))
}

/// Checks a password against an argon2 hash (PHC string). Slow on purpose.
pub fn verify_password(phc: &str, password: &str) -> bool {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    PasswordHash::new(phc)
        .map(|h| {
            argon2::Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// The rules a new password must meet.
pub fn check_password_rules(password: &str, confirm: &str) -> Result<()> {
    let n = password.chars().count();
    if !(PASSWORD_MIN..=PASSWORD_MAX).contains(&n) {
        return Err(Error::invalid(
            "password",
            format!("choose a password of {PASSWORD_MIN} to {PASSWORD_MAX} characters"),
        ));
    }
    if password != confirm {
        return Err(Error::invalid(
            "confirm",
            "the two passwords are not the same",
        ));
    }
    Ok(())
}

/// A hash to verify against when no member matches, so an unknown email costs as much time as
/// a wrong password and the answer's timing does not tell which emails are members.
fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| hash_password("keyplane-decoy-password-never-matches").unwrap_or_default())
}

/// The members a sign-in by email may be for, with their password hashes. Verifying it is the
/// only way to get a [`VerifiedMember`], which is what opens a member's session.
pub struct SignInAttempt {
    candidates: Vec<(Member, String)>,
}

/// The members (one per organization) whose password was just checked.
pub struct VerifiedMember(Vec<Member>);

impl VerifiedMember {
    /// The members proved, never empty.
    pub fn into_members(self) -> Vec<Member> {
        self.0
    }
}

impl SignInAttempt {
    /// The candidates for an email: members with a password, with its hash.
    pub fn new(candidates: Vec<(Member, String)>) -> Self {
        Self { candidates }
    }

    /// Checks `password` against each candidate (at most a few: one per organization the email
    /// belongs to). Slow on purpose: run it on a blocking thread.
    pub fn verify(self, password: &str) -> Option<VerifiedMember> {
        if self.candidates.is_empty() {
            let _ = verify_password(decoy_hash(), password);
            return None;
        }
        let proved: Vec<Member> = self
            .candidates
            .into_iter()
            .filter(|(_, phc)| verify_password(phc, password))
            .map(|(m, _)| m)
            .collect();
        (!proved.is_empty()).then_some(VerifiedMember(proved))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_hash_and_verify() {
        let h = hash_password("correct horse battery").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password(&h, "correct horse battery"));
        assert!(!verify_password(&h, "correct horse battery!"));
        assert!(!verify_password("not a hash", "x"));
    }

    #[test]
    fn password_rules() {
        assert!(check_password_rules("short", "short").is_err());
        assert!(check_password_rules("long enough password", "long enough passwort").is_err());
        assert!(check_password_rules("long enough password", "long enough password").is_ok());
    }
}
