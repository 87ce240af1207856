//! [`Keyplane`] use cases of the web console's own: signing in (with the admin key, or as a
//! member with email and password), sessions, CSRF tokens and the one-time links that set a
//! member's password.
//!
//! Everything the console *does* once signed in goes through the same use cases as the
//! management API, with the [`Principal`] a session resolves to: a console session of a member
//! acts with the member's current role ([`Actor::ConsoleMember`]), one opened with the admin key
//! with the admin key's authority ([`Actor::ConsoleAdmin`]). Only digests are stored: of session
//! ids and of link tokens (HMAC under the pepper, like every other secret).

use crate::app::Keyplane;
use crate::domain::ceiling::{within, Authority};
use crate::domain::clock::rfc3339;
use crate::domain::console::{
    ConsoleSession, PasswordLink, SignInAttempt, SignedIn, VerifiedMember, LINK_TTL, SESSION_TTL,
};
use crate::domain::error::{Error, Result};
use crate::domain::ids::{is_id, new_id};
use crate::domain::model::{Member, NewEvent, Org, Outcome};
use crate::domain::perm::{Actor, Principal};
use crate::domain::request::RequestMeta;
use crate::domain::secret::{ct_eq, random_base62, Digest, SecretString};
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use time::OffsetDateTime;

#[allow(clippy::too_many_arguments)]
fn console_event(
    at: OffsetDateTime,
    actor: String,
    org_id: Option<String>,
    action: &str,
    target: Option<String>,
    outcome: Outcome,
    meta: &RequestMeta,
    details: serde_json::Value,
) -> NewEvent {
    NewEvent {
        id: new_id("evt"),
        at,
        org_id,
        actor,
        action: action.into(),
        target,
        outcome,
        client_addr: meta.addr_text(),
        user_agent: meta.agent_text(),
        details: meta.details(details),
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl Keyplane {
    fn console_mac(&self, purpose: &str, value: &str) -> String {
        let key = self.rt.pepper.derive(purpose);
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

    /// Opens a session and records the sign-in with it.
    async fn console_session_open(
        &self,
        member: Option<&Member>,
        member_ids: Vec<String>,
        admin_key_digest: Option<Digest>,
        event: NewEvent,
    ) -> Result<(SecretString, ConsoleSession)> {
        let now = self.rt.now();
        let _ = self.rt.store.console_sessions_purge(now).await;
        let id = SecretString::new(random_base62(43));
        let session = ConsoleSession {
            digest: self.rt.pepper.digest(id.expose()),
            member_id: member.map(|m| m.id.clone()),
            admin_key_digest,
            org_id: member.map(|m| m.org_id.clone()),
            project_id: None,
            member_ids,
            created_at: now,
            expires_at: now + SESSION_TTL,
        };
        self.rt
            .store
            .console_session_create(&session, &event)
            .await?;
        Ok((id, session))
    }

    /// Opens a console session with the admin key. A wrong key is `Unauthenticated`.
    pub async fn console_sign_in_admin(
        &self,
        admin_key: &str,
        meta: &RequestMeta,
    ) -> Result<(SecretString, ConsoleSession)> {
        let digest = self.rt.pepper.digest(admin_key.trim());
        let ok = match self.rt.store.admin_key_get().await? {
            Some((stored, _)) => ct_eq(&stored.0, &digest.0),
            None => false,
        };
        if !ok || admin_key.len() > 512 {
            // Aggregated and bounded like every refusal: a flood of wrong keys writes a bounded log.
            self.rt
                .note_denied("console.sign_in", "wrong_admin_key", None, None, meta);
            return Err(Error::Unauthenticated("that is not the admin key".into()));
        }
        let event = console_event(
            self.rt.now(),
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
        );
        self.console_session_open(None, vec![], Some(digest), event)
            .await
    }

    /// The members an email may sign in as, with their password hashes; verify it off the
    /// executor, then call [`Keyplane::console_sign_in_member`].
    pub async fn console_sign_in_attempt(&self, email: &str) -> Result<SignInAttempt> {
        let email = email.trim().to_lowercase();
        let candidates = if email.is_empty() || email.len() > 254 {
            vec![]
        } else {
            let mut c = self.rt.store.member_credentials(&email).await?;
            c.truncate(8);
            c
        };
        Ok(SignInAttempt::new(candidates))
    }

    /// Records a failed member sign-in (the email is not logged: it may be a typo of a password).
    pub async fn console_sign_in_failed(&self, meta: &RequestMeta) -> Result<()> {
        self.rt
            .note_denied("console.sign_in", "wrong_password", None, None, meta);
        Ok(())
    }

    /// Opens a member's session after their password was verified.
    pub async fn console_sign_in_member(
        &self,
        verified: VerifiedMember,
        meta: &RequestMeta,
    ) -> Result<(SecretString, ConsoleSession)> {
        let mut proved = verified.into_members();
        let ids: Vec<String> = proved.iter().map(|m| m.id.clone()).collect();
        let m = proved.swap_remove(0);
        let event = console_event(
            self.rt.now(),
            format!("member:{} via console", m.id),
            Some(m.org_id.clone()),
            "console.sign_in",
            Some(m.id.clone()),
            Outcome::Success,
            meta,
            serde_json::json!({ "with": "password" }),
        );
        self.console_session_open(Some(&m), ids, None, event).await
    }

    /// Resolves a session id to who is signed in; `None` when unknown, expired, or no longer
    /// valid (the admin key was rotated, the member was removed).
    pub async fn console_session(&self, session_id: &str) -> Result<Option<SignedIn>> {
        if session_id.is_empty() || session_id.len() > 128 {
            return Ok(None);
        }
        let digest = self.rt.pepper.digest(session_id);
        let Some(session) = self.rt.store.console_session_get(&digest).await? else {
            return Ok(None);
        };
        if session.expires_at <= self.rt.now() {
            self.rt.store.console_session_delete(&digest, None).await?;
            return Ok(None);
        }
        match &session.member_id {
            None => {
                let current = self.rt.store.admin_key_get().await?;
                let valid = match (current, &session.admin_key_digest) {
                    (Some((stored, _)), Some(at_sign_in)) => ct_eq(&stored.0, &at_sign_in.0),
                    _ => false,
                };
                if !valid {
                    self.rt.store.console_session_delete(&digest, None).await?;
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
                let Some(m) = self.rt.store.member_get(member_id).await? else {
                    self.rt.store.console_session_delete(&digest, None).await?;
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
        let event = console_event(
            self.rt.now(),
            signed_in.principal.actor_label(),
            signed_in.principal.org_id.clone(),
            "console.sign_out",
            None,
            Outcome::Success,
            meta,
            serde_json::Value::Null,
        );
        self.rt
            .store
            .console_session_delete(&signed_in.session.digest, Some(&event))
            .await
    }

    /// The organizations the switcher offers: every one for the admin key; for a member, those
    /// of each member the password proved at sign-in.
    pub async fn console_orgs(&self, signed_in: &SignedIn) -> Result<Vec<Org>> {
        if signed_in.member.is_none() {
            return self.rt.store.org_list().await;
        }
        let mut orgs = Vec::new();
        for id in &signed_in.session.member_ids {
            if let Some(m) = self.rt.store.member_get(id).await? {
                if let Some(o) = self.rt.store.org_get(&m.org_id).await? {
                    orgs.push(o);
                }
            }
        }
        if orgs.is_empty() {
            let own = signed_in.principal.org_for(None)?;
            orgs.extend(self.rt.store.org_get(&own).await?);
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
                    if let Some(other) = self.rt.store.member_get(id).await? {
                        if other.org_id == asked {
                            return self
                                .rt
                                .store
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
        self.rt.existing_org(&org).await?;
        let org_changed = signed_in.session.org_id.as_deref() != Some(org.as_str());
        let project = match project_id.filter(|x| !x.is_empty()) {
            Some(id) => match self.rt.project_in(&org, Some(id)).await {
                Ok(pr) => Some(pr.id),
                // The project picked belonged to the organization switched away from.
                Err(_) if org_changed => None,
                Err(e) => return Err(e),
            },
            None => None,
        };
        self.rt
            .store
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
        let (m, _) = self.rt.member_in_reach(p, member_id).await?;
        // The link takes over the account: the caller must hold all the member holds.
        within(
            &p.authority(),
            &Authority::of_member(m.role),
            "send this member a password link",
        )?;
        let token = SecretString::new(random_base62(43));
        let now = self.rt.now();
        let link = PasswordLink {
            digest: self.rt.pepper.digest(token.expose()),
            member_id: m.id.clone(),
            created_at: now,
            expires_at: now + LINK_TTL,
            created_by: p.actor_label(),
        };
        let event = self.rt.event(
            p,
            Some(&m.org_id),
            "member.password_link",
            Some(&m.id),
            meta,
            serde_json::json!({ "expires_at": rfc3339(link.expires_at) }),
        );
        self.rt.store.console_link_create(&link, &event).await?;
        Ok((token, link))
    }

    /// The member a link is for, while it is unused and unexpired.
    pub async fn console_link_member(&self, token: &str) -> Result<Member> {
        let gone = || Error::NotFound("password link");
        if token.is_empty() || token.len() > 128 {
            return Err(gone());
        }
        let link = self
            .rt
            .store
            .console_link_get(&self.rt.pepper.digest(token))
            .await?
            .filter(|l| l.expires_at > self.rt.now())
            .ok_or_else(gone)?;
        self.rt
            .store
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
        let now = self.rt.now();
        let member_id = self
            .rt
            .store
            .console_link_consume(&self.rt.pepper.digest(token), now)
            .await?
            .ok_or_else(gone)?;
        if !is_id("mem", &member_id) {
            return Err(gone());
        }
        let m = self
            .rt
            .store
            .member_get(&member_id)
            .await?
            .ok_or_else(gone)?;
        let event = console_event(
            now,
            format!("member:{} via console", m.id),
            Some(m.org_id.clone()),
            "member.password_set",
            Some(m.id.clone()),
            Outcome::Success,
            meta,
            serde_json::Value::Null,
        );
        self.rt
            .store
            .member_password_set(&m.id, password_hash, now, &event)
            .await?;
        Ok(m)
    }
}
