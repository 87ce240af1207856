//! The web console's own use cases: signing in (with the admin key, or as a member with email
//! and password), sessions, CSRF tokens, the one-time links that set a member's password, and
//! the throttle on failed sign-ins.
//!
//! Everything the console *does* once signed in goes through the same use cases as the
//! management API, with the [`Principal`] a session resolves to: a console session of a member
//! acts with the member's current role ([`Actor::ConsoleMember`]), one opened with the admin key
//! with the admin key's authority ([`Actor::ConsoleAdmin`]).
//!
//! Only digests are stored: of session ids and of link tokens (HMAC under the pepper, like every
//! other secret), and member passwords as argon2id hashes. Hashing a password is slow on
//! purpose, so [`hash_password`] and [`SignInAttempt::verify`] are plain functions the caller
//! runs off its async executor.

use crate::app::{Keyplane, RequestMeta};
use crate::error::{Error, Result};
use crate::ids::{is_id, new_id};
use crate::model::{Member, NewEvent, Org, Outcome};
use crate::perm::{Actor, MemberRole, Permission, Principal};
use crate::secret::{ct_eq, random_base62, Digest, SecretString};
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::collections::HashMap;
use std::sync::Mutex;
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

impl SignInAttempt {
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

/// Failed sign-ins, counted per (who, address) and per address in one-minute windows.
#[derive(Default)]
pub struct SignInThrottle {
    failures: Mutex<HashMap<String, (u32, i64)>>,
}

impl SignInThrottle {
    pub const PER_ACCOUNT_AND_ADDRESS: u32 = 5;
    pub const PER_ADDRESS: u32 = 20;
    const WINDOW_MS: i64 = 60_000;

    fn keys(who: &str, addr: &str) -> [(String, u32); 2] {
        [
            (format!("{who}|{addr}"), Self::PER_ACCOUNT_AND_ADDRESS),
            (addr.to_string(), Self::PER_ADDRESS),
        ]
    }

    /// `Some(seconds to wait)` when `who` from `addr` has failed too often lately.
    pub fn blocked(&self, who: &str, addr: &str, now_ms: i64) -> Option<u64> {
        let f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        Self::keys(who, addr).into_iter().find_map(|(k, limit)| {
            f.get(&k).and_then(|(count, start)| {
                (now_ms - start < Self::WINDOW_MS && *count >= limit)
                    .then(|| ((start + Self::WINDOW_MS - now_ms) / 1000 + 1) as u64)
            })
        })
    }

    pub fn failed(&self, who: &str, addr: &str, now_ms: i64) {
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if f.len() > 100_000 {
            f.retain(|_, (_, start)| now_ms - *start < Self::WINDOW_MS);
        }
        for (k, _) in Self::keys(who, addr) {
            let e = f.entry(k).or_insert((0, now_ms));
            if now_ms - e.1 >= Self::WINDOW_MS {
                *e = (0, now_ms);
            }
            e.0 += 1;
        }
    }

    /// A successful sign-in clears that account's count from that address.
    pub fn succeeded(&self, who: &str, addr: &str) {
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        f.remove(&format!("{who}|{addr}"));
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl Keyplane {
    fn console_mac(&self, purpose: &str, value: &str) -> String {
        let key = self.pepper().derive(purpose);
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key).expect("any key length");
        mac.update(value.as_bytes());
        b64(&mac.finalize().into_bytes())
    }

    /// The CSRF token of a session: a keyed hash of its id, so nothing more is stored.
    pub fn console_csrf_token(&self, session_id: &str) -> String {
        self.console_mac("console-csrf", session_id)
    }

    /// Whether `token` is the CSRF token of the session (or of a pre-session cookie).
    pub fn console_csrf_valid(&self, session_id: &str, token: &str) -> bool {
        ct_eq(
            self.console_csrf_token(session_id).as_bytes(),
            token.as_bytes(),
        )
    }

    #[allow(clippy::too_many_arguments)]
    async fn console_event(
        &self,
        actor: String,
        org_id: Option<String>,
        action: &str,
        target: Option<String>,
        outcome: Outcome,
        meta: &RequestMeta,
        details: serde_json::Value,
    ) -> Result<()> {
        self.store()
            .activity_append(&[NewEvent {
                id: new_id("evt"),
                at: self.now(),
                org_id,
                actor,
                action: action.into(),
                target,
                outcome,
                client_addr: meta.addr_text(),
                user_agent: meta.agent_text(),
                details,
            }])
            .await
    }

    async fn console_session_open(
        &self,
        member: Option<&Member>,
        member_ids: Vec<String>,
        admin_key_digest: Option<Digest>,
    ) -> Result<(SecretString, ConsoleSession)> {
        let now = self.now();
        let _ = self.store().console_sessions_purge(now).await;
        let id = SecretString::new(random_base62(43));
        let session = ConsoleSession {
            digest: self.pepper().digest(id.expose()),
            member_id: member.map(|m| m.id.clone()),
            admin_key_digest,
            org_id: member.map(|m| m.org_id.clone()),
            project_id: None,
            member_ids,
            created_at: now,
            expires_at: now + SESSION_TTL,
        };
        self.store().console_session_create(&session).await?;
        Ok((id, session))
    }

    /// Opens a console session with the admin key. A wrong key is `Unauthenticated`.
    pub async fn console_sign_in_admin(
        &self,
        admin_key: &str,
        meta: &RequestMeta,
    ) -> Result<(SecretString, ConsoleSession)> {
        let digest = self.pepper().digest(admin_key.trim());
        let ok = match self.store().admin_key_get().await? {
            Some((stored, _)) => ct_eq(&stored.0, &digest.0),
            None => false,
        };
        if !ok || admin_key.len() > 512 {
            self.console_event(
                "anonymous".into(),
                None,
                "console.sign_in",
                None,
                Outcome::Denied,
                meta,
                serde_json::json!({ "with": "admin-key" }),
            )
            .await?;
            return Err(Error::Unauthenticated("that is not the admin key".into()));
        }
        let opened = self
            .console_session_open(None, vec![], Some(digest))
            .await?;
        self.console_event(
            Principal {
                actor: Actor::ConsoleAdmin,
                ..Principal::admin()
            }
            .actor_label(),
            None,
            "console.sign_in",
            None,
            Outcome::Success,
            meta,
            serde_json::json!({ "with": "admin-key" }),
        )
        .await?;
        Ok(opened)
    }

    /// The members an email may sign in as, with their password hashes; verify it off the
    /// executor, then call [`Keyplane::console_sign_in_member`].
    pub async fn console_sign_in_attempt(&self, email: &str) -> Result<SignInAttempt> {
        let email = email.trim().to_lowercase();
        let candidates = if email.is_empty() || email.len() > 254 {
            vec![]
        } else {
            let mut c = self.store().member_credentials(&email).await?;
            c.truncate(8);
            c
        };
        Ok(SignInAttempt { candidates })
    }

    /// Records a failed member sign-in (the email is not logged: it may be a typo of a password).
    pub async fn console_sign_in_failed(&self, meta: &RequestMeta) -> Result<()> {
        self.console_event(
            "anonymous".into(),
            None,
            "console.sign_in",
            None,
            Outcome::Denied,
            meta,
            serde_json::json!({ "with": "password" }),
        )
        .await
    }

    /// Opens a member's session after their password was verified.
    pub async fn console_sign_in_member(
        &self,
        verified: VerifiedMember,
        meta: &RequestMeta,
    ) -> Result<(SecretString, ConsoleSession)> {
        let mut proved = verified.0;
        let ids: Vec<String> = proved.iter().map(|m| m.id.clone()).collect();
        let m = proved.swap_remove(0);
        let opened = self.console_session_open(Some(&m), ids, None).await?;
        self.console_event(
            format!("member:{} via console", m.id),
            Some(m.org_id.clone()),
            "console.sign_in",
            Some(m.id.clone()),
            Outcome::Success,
            meta,
            serde_json::json!({ "with": "password" }),
        )
        .await?;
        Ok(opened)
    }

    /// Resolves a session id to who is signed in; `None` when unknown, expired, or no longer
    /// valid (the admin key was rotated, the member was removed).
    pub async fn console_session(&self, session_id: &str) -> Result<Option<SignedIn>> {
        if session_id.is_empty() || session_id.len() > 128 {
            return Ok(None);
        }
        let digest = self.pepper().digest(session_id);
        let Some(session) = self.store().console_session_get(&digest).await? else {
            return Ok(None);
        };
        if session.expires_at <= self.now() {
            self.store().console_session_delete(&digest).await?;
            return Ok(None);
        }
        match &session.member_id {
            None => {
                let current = self.store().admin_key_get().await?;
                let valid = match (current, &session.admin_key_digest) {
                    (Some((stored, _)), Some(at_sign_in)) => ct_eq(&stored.0, &at_sign_in.0),
                    _ => false,
                };
                if !valid {
                    self.store().console_session_delete(&digest).await?;
                    return Ok(None);
                }
                let principal = Principal {
                    actor: Actor::ConsoleAdmin,
                    project_id: session.project_id.clone(),
                    ..Principal::admin()
                };
                Ok(Some(SignedIn {
                    session,
                    principal,
                    member: None,
                }))
            }
            Some(member_id) => {
                let Some(m) = self.store().member_get(member_id).await? else {
                    self.store().console_session_delete(&digest).await?;
                    return Ok(None);
                };
                let principal = Principal {
                    actor: Actor::ConsoleMember {
                        member_id: m.id.clone(),
                        member_role: m.role,
                    },
                    org_id: Some(m.org_id.clone()),
                    project_id: session.project_id.clone(),
                    permissions: m.role.permissions(),
                    scopes: vec![],
                };
                Ok(Some(SignedIn {
                    session,
                    principal,
                    member: Some(m),
                }))
            }
        }
    }

    /// Ends a session.
    pub async fn console_sign_out(&self, signed_in: &SignedIn, meta: &RequestMeta) -> Result<()> {
        self.store()
            .console_session_delete(&signed_in.session.digest)
            .await?;
        self.console_event(
            signed_in.principal.actor_label(),
            signed_in.principal.org_id.clone(),
            "console.sign_out",
            None,
            Outcome::Success,
            meta,
            serde_json::Value::Null,
        )
        .await
    }

    /// The organizations the switcher offers: every one for the admin key; for a member, those
    /// of each member the password proved at sign-in.
    pub async fn console_orgs(&self, signed_in: &SignedIn) -> Result<Vec<Org>> {
        if signed_in.member.is_none() {
            return self.org_list(&signed_in.principal).await;
        }
        let mut orgs = Vec::new();
        for id in &signed_in.session.member_ids {
            if let Some(m) = self.store().member_get(id).await? {
                if let Some(o) = self.store().org_get(&m.org_id).await? {
                    orgs.push(o);
                }
            }
        }
        if orgs.is_empty() {
            orgs = self.org_list(&signed_in.principal).await?;
        }
        Ok(orgs)
    }

    /// Switches the organization and project the console shows. The organization must be one
    /// the principal may see (members: their own), the project one of its projects.
    pub async fn console_switch(
        &self,
        signed_in: &SignedIn,
        org_id: Option<&str>,
        project_id: Option<&str>,
    ) -> Result<()> {
        let p = &signed_in.principal;
        let asked = org_id.filter(|o| !o.is_empty());
        // A member who signed in to several organizations moves to their member there.
        if let (Some(m), Some(asked)) = (&signed_in.member, asked) {
            if m.org_id != asked {
                for id in &signed_in.session.member_ids {
                    if let Some(other) = self.store().member_get(id).await? {
                        if other.org_id == asked {
                            return self
                                .store()
                                .console_session_set_member(
                                    &signed_in.session.digest,
                                    &other.id,
                                    &other.org_id,
                                )
                                .await;
                        }
                    }
                }
                return Err(Error::NotFound("organization"));
            }
        }
        let org = p.org_for(asked)?;
        self.existing_org(&org).await?;
        let org_changed = signed_in.session.org_id.as_deref() != Some(org.as_str());
        let project = match project_id.filter(|x| !x.is_empty()) {
            Some(id) => match self.project_in(&org, Some(id)).await {
                Ok(pr) => Some(pr.id),
                // The project picked belonged to the organization switched away from.
                Err(_) if org_changed => None,
                Err(e) => return Err(e),
            },
            None => None,
        };
        self.store()
            .console_session_set_context(&signed_in.session.digest, Some(&org), project.as_deref())
            .await
    }

    /// Creates a one-time link that sets `member_id`'s password (first sign-in, or a reset).
    /// Needs `members:manage` in the member's organization; only an owner (or the admin key)
    /// may create one for an owner, since the link takes over the account. Earlier unused
    /// links of the member stop working.
    pub async fn console_link_create(
        &self,
        p: &Principal,
        member_id: &str,
        meta: &RequestMeta,
    ) -> Result<(SecretString, PasswordLink)> {
        let m = self.member_get(p, member_id).await?;
        p.access_in(m.org_id.clone(), Permission::MembersManage)
            .map_err(|e| match e {
                Error::NotFound(_) => Error::NotFound("member"),
                other => other,
            })?;
        if m.role == MemberRole::Owner && p.member_role().is_some_and(|r| r != MemberRole::Owner) {
            return Err(Error::Forbidden(
                "only an owner may create a password link for an owner".into(),
            ));
        }
        let token = SecretString::new(random_base62(43));
        let now = self.now();
        let link = PasswordLink {
            digest: self.pepper().digest(token.expose()),
            member_id: m.id.clone(),
            created_at: now,
            expires_at: now + LINK_TTL,
            created_by: p.actor_label(),
        };
        self.store().console_link_create(&link).await?;
        self.record_event(
            p,
            Some(&m.org_id),
            "member.password_link",
            Some(&m.id),
            meta,
            serde_json::json!({ "expires_at": crate::clock::to_ms(link.expires_at) }),
        )
        .await?;
        Ok((token, link))
    }

    /// The member a link is for, while it is unused and unexpired.
    pub async fn console_link_member(&self, token: &str) -> Result<Member> {
        let gone = || Error::NotFound("password link");
        if token.is_empty() || token.len() > 128 {
            return Err(gone());
        }
        let link = self
            .store()
            .console_link_get(&self.pepper().digest(token))
            .await?
            .filter(|l| l.expires_at > self.now())
            .ok_or_else(gone)?;
        self.store()
            .member_get(&link.member_id)
            .await?
            .ok_or_else(gone)
    }

    /// Uses a link once: stores the member's new password hash (made by [`hash_password`]) and
    /// ends the member's other sessions.
    pub async fn console_link_redeem(
        &self,
        token: &str,
        password_hash: &str,
        meta: &RequestMeta,
    ) -> Result<Member> {
        let gone = || Error::NotFound("password link");
        if token.is_empty() || token.len() > 128 || !password_hash.starts_with("$argon2id$") {
            return Err(gone());
        }
        let now = self.now();
        let member_id = self
            .store()
            .console_link_consume(&self.pepper().digest(token), now)
            .await?
            .ok_or_else(gone)?;
        if !is_id("mem", &member_id) {
            return Err(gone());
        }
        let m = self
            .store()
            .member_get(&member_id)
            .await?
            .ok_or_else(gone)?;
        self.store()
            .member_password_set(&m.id, password_hash, now)
            .await?;
        self.store().console_sessions_delete_member(&m.id).await?;
        self.console_event(
            format!("member:{} via console", m.id),
            Some(m.org_id.clone()),
            "member.password_set",
            Some(m.id.clone()),
            Outcome::Success,
            meta,
            serde_json::Value::Null,
        )
        .await?;
        Ok(m)
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

    #[test]
    fn throttle_blocks_then_expires() {
        let t = SignInThrottle::default();
        for _ in 0..SignInThrottle::PER_ACCOUNT_AND_ADDRESS {
            assert!(t.blocked("a", "1.2.3.4", 0).is_none());
            t.failed("a", "1.2.3.4", 0);
        }
        assert!(t.blocked("a", "1.2.3.4", 1000).is_some());
        // Another account from the same address is not blocked yet; the same one elsewhere isn't.
        assert!(t.blocked("b", "1.2.3.4", 1000).is_none());
        assert!(t.blocked("a", "5.6.7.8", 1000).is_none());
        assert!(t.blocked("a", "1.2.3.4", 61_000).is_none());
    }
}
