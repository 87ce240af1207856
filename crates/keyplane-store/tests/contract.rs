//! The storage contract: one suite, run against SQLite and PostgreSQL on real databases.

use keyplane_core::domain::activity::{ChainVerifier, Checkpoint, GENESIS_HASH};
use keyplane_core::domain::clock::{from_ms, to_ms};
use keyplane_core::domain::console::{ConsoleSession, PasswordLink};
use keyplane_core::domain::ids::{new_id, DEFAULT_ORG_ID, DEFAULT_PROJECT_ID};
use keyplane_core::domain::model::*;
use keyplane_core::domain::perm::{Access, Actor, MemberRole, Permission, Principal};
use keyplane_core::domain::secret::Digest;
use keyplane_core::store::{EventFilter, JtiUse, KeyFilter, Store};
use keyplane_core::Error;
use keyplane_testkit::{Backend, TestDb};
use std::sync::Arc;
use time::OffsetDateTime;

/// Millisecond precision, as stored.
fn now() -> OffsetDateTime {
    from_ms(to_ms(OffsetDateTime::now_utc()))
}

async fn store(backend: Backend) -> Option<(Arc<dyn Store>, TestDb)> {
    let db = TestDb::fresh(backend).await?;
    let s = keyplane_store::open(&db.url).await.expect("open store");
    s.ensure_defaults(now()).await.expect("defaults");
    // Idempotent.
    s.ensure_defaults(now()).await.expect("defaults twice");
    Some((s, db))
}

fn key(org: &str, project: &str, owner: Option<&str>) -> ApiKey {
    ApiKey {
        id: new_id("key"),
        org_id: org.into(),
        project_id: project.into(),
        owner_member_id: owner.map(str::to_string),
        name: "k".into(),
        description: String::new(),
        scopes: vec!["svc:read".into()],
        roles: vec![],
        start: "kp_abcd".into(),
        created_at: now(),
        created_by: "test".into(),
        expires_at: None,
        last_used_at: None,
        is_active: true,
        deactivated_at: None,
        default_for_service: None,
        may_act: vec!["kpc_actor".into()],
        rate_limits: vec![],
        seq: 0,
        version: 1,
    }
}

/// A digest no other test value shares (`n` sets its first byte, for ordering).
fn digest(n: u8) -> Digest {
    let mut d = [0u8; 32];
    d[0] = n;
    d[1..].copy_from_slice(&keyplane_core::domain::secret::random_base62(31).into_bytes());
    Digest(d)
}

fn secret(key_id: &str, n: u8) -> KeySecret {
    let mut d = [0u8; 32];
    d[0] = n;
    d[1..9].copy_from_slice(&(key_id.len() as u64).to_le_bytes());
    d[9..].copy_from_slice(&keyplane_core::domain::secret::random_base62(23).into_bytes());
    KeySecret {
        digest: Digest(d),
        key_id: key_id.into(),
        pepper_version: 1,
        created_at: now(),
        expires_at: None,
    }
}

fn member(email: &str, role: MemberRole) -> Member {
    Member {
        managed_by: None,
        id: new_id("mem"),
        org_id: DEFAULT_ORG_ID.into(),
        email: email.into(),
        name: email.into(),
        role,
        created_at: now(),
        version: 1,
    }
}

fn client(name: &str, owner: Option<&str>) -> OAuthClient {
    OAuthClient {
        managed_by: None,
        seq: 0,
        client_id: new_id("cli"),
        org_id: DEFAULT_ORG_ID.into(),
        project_id: DEFAULT_PROJECT_ID.into(),
        owner_member_id: owner.map(str::to_string),
        name: name.into(),
        description: String::new(),
        scopes: vec!["svc:read".into()],
        access_token_ttl_seconds: 3600,
        token_format: TokenFormat::Opaque,
        signing_alg: None,
        audience: None,
        secret_rotation_days: None,
        auth_method: keyplane_core::domain::client_auth::AuthMethod::ClientSecretBasic,
        jwks: None,
        jwks_uri: None,
        federated_credentials: Vec::new(),
        may_act: vec!["kpc_a".into(), "kpc_b".into()],
        dpop_bound_access_tokens: false,
        rate_limits: vec![],
        not_before: None,
        created_at: now(),
        created_by: "test".into(),
        disabled_at: None,
        version: 1,
    }
}

fn client_secret(client_id: &str, n: u8) -> ClientSecret {
    ClientSecret {
        id: new_id("cs"),
        client_id: client_id.into(),
        digest: digest(n),
        pepper_version: 1,
        start: format!("kpcs_{n}"),
        created_at: now(),
        expires_at: None,
        last_used_at: None,
        use_count: 0,
        expiry_warned_at: None,
    }
}

fn session(member_id: Option<&str>) -> ConsoleSession {
    ConsoleSession {
        digest: digest(1),
        member_id: member_id.map(str::to_string),
        admin_key_digest: member_id.is_none().then(|| digest(2)),
        org_id: Some(DEFAULT_ORG_ID.into()),
        project_id: None,
        member_ids: member_id.map(str::to_string).into_iter().collect(),
        created_at: now(),
        expires_at: now() + time::Duration::hours(8),
    }
}

fn link(member_id: &str) -> PasswordLink {
    PasswordLink {
        digest: digest(3),
        member_id: member_id.into(),
        created_at: now(),
        expires_at: now() + time::Duration::hours(24),
        created_by: "test".into(),
    }
}

/// Access to every key of the default organization (the admin key's).
fn admin_access() -> Access {
    Principal::admin()
        .access(Some(DEFAULT_ORG_ID), Permission::KeysManage)
        .unwrap()
}

/// Access limited to what `member_id` owns (a `member` of the default organization).
fn member_access(member_id: &str) -> Access {
    let p = Principal {
        actor: Actor::ConsoleMember {
            member_id: member_id.into(),
            member_role: MemberRole::Member,
        },
        org_id: Some(DEFAULT_ORG_ID.into()),
        project_id: None,
        permissions: MemberRole::Member.permissions(),
        scopes: vec![],
    };
    let access = p.access(None, Permission::KeysManage).unwrap();
    assert_eq!(access.only_member(), Some(member_id));
    access
}

macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test] async fn $name() { if let Some((s, _db)) = super::store(keyplane_testkit::Backend::Sqlite).await { super::$name(s).await } })*
        }
        mod postgres {
            $(#[tokio::test] async fn $name() { if let Some((s, _db)) = super::store(keyplane_testkit::Backend::Postgres).await { super::$name(s).await } })*
        }
    };
}

contract!(
    authorization_codes_and_refresh_tokens,
    defaults_exist,
    names_are_unique,
    keys_round_trip_and_paginate,
    active_key_limit_holds_under_concurrency,
    default_mark_moves,
    deactivate_and_replace_secret,
    lookup_carries_owner_role_and_roles,
    lookups_page_through_active_keys,
    member_delete_revokes_their_keys,
    activity_chain_and_queries,
    admin_key_is_replaced,
    changes_commit_with_their_event,
    failed_changes_write_no_event,
    versions_bump_by_one_and_stale_versions_are_refused,
    concurrent_rotations_from_one_version_one_wins,
    member_removal_takes_keys_clients_sessions_and_links,
    new_password_ends_only_that_members_sessions,
    activity_checkpoints_round_trip,
    private_key_jwt_clients_keep_keys_and_no_secrets,
    assertion_ids_are_single_use_until_they_expire,
    checkpoints_run_beside_writes_and_lose_nothing,
    dpop_requirement_round_trips,
    usage_rows_add_up_and_are_purged,
    rate_limit_windows_add_up,
    webhook_outbox_matches_patterns_and_claims_once,
    notices_are_given_once_per_credential_and_threshold,
);

/// An event recording a change in the default organization.
fn ev(action: &str, target: &str) -> NewEvent {
    NewEvent {
        target: Some(target.into()),
        ..event(action, Some(DEFAULT_ORG_ID), "test")
    }
}

/// Walks the whole chain with the verifier and checks it against the recorded head; returns
/// how many events it checked.
async fn verify_chain(s: &dyn Store) -> u64 {
    let mut v = ChainVerifier::default();
    let mut after = 0;
    loop {
        let page = s.activity_page(after, 7).await.unwrap();
        let Some(last) = page.last() else { break };
        after = last.seq;
        for e in &page {
            assert!(v.feed(e), "event {} breaks the chain", e.seq);
        }
    }
    let report = v.finish(s.activity_head().await.unwrap());
    assert!(report.intact, "{report:?}");
    report.checked
}

async fn head(s: &dyn Store) -> (i64, String) {
    s.activity_head().await.unwrap().expect("a chain head")
}

/// The event `e` was committed exactly once, as given, and is the newest in the chain.
async fn assert_recorded(s: &dyn Store, e: &NewEvent) {
    let found = s
        .activity_query(
            &EventFilter {
                action: Some(e.action.clone()),
                target: e.target.clone(),
                ..Default::default()
            },
            None,
            100,
        )
        .await
        .unwrap();
    assert_eq!(
        found.iter().map(|x| x.id.as_str()).collect::<Vec<_>>(),
        vec![e.id.as_str()],
        "exactly the event of `{}` is recorded",
        e.action
    );
    let got = &found[0];
    assert_eq!(
        (
            got.at,
            &got.org_id,
            &got.actor,
            &got.target,
            got.outcome,
            &got.client_addr,
            &got.user_agent,
            &got.details
        ),
        (
            e.at,
            &e.org_id,
            &e.actor,
            &e.target,
            e.outcome,
            &e.client_addr,
            &e.user_agent,
            &e.details.to_string()
        )
    );
    assert_eq!(head(s).await, (got.seq, got.hash.clone()));
}

/// No event with this id was committed.
async fn assert_not_recorded(s: &dyn Store, e: &NewEvent) {
    let all = s
        .activity_query(&EventFilter::default(), None, 10_000)
        .await
        .unwrap();
    assert!(
        all.iter().all(|x| x.id != e.id),
        "the event of a failed `{}` was recorded",
        e.action
    );
}

fn is_version_conflict<T>(r: &keyplane_core::Result<T>) -> bool {
    matches!(r, Err(Error::VersionConflict(_)))
}

async fn defaults_exist(s: Arc<dyn Store>) {
    assert!(s.org_get(DEFAULT_ORG_ID).await.unwrap().is_some());
    assert_eq!(
        s.project_get(DEFAULT_PROJECT_ID)
            .await
            .unwrap()
            .unwrap()
            .org_id,
        DEFAULT_ORG_ID
    );
    let roles = s.role_list(DEFAULT_ORG_ID).await.unwrap();
    assert!(roles
        .iter()
        .any(|r| r.name == "ORG-ADMIN" && r.org_id.is_none()));
    assert_eq!(
        s.activity_head().await.unwrap(),
        Some((0, GENESIS_HASH.to_string()))
    );
    s.ping().await.unwrap();
}

async fn names_are_unique(s: Arc<dyn Store>) {
    let org = Org {
        managed_by: None,
        id: new_id("org"),
        name: "acme".into(),
        created_at: now(),
    };
    let prj = Project {
        managed_by: None,
        id: new_id("prj"),
        org_id: org.id.clone(),
        name: "default".into(),
        created_at: now(),
    };
    s.org_create(&org, &prj, &ev("org.create", &org.id))
        .await
        .unwrap();
    let dup = Org {
        managed_by: None,
        id: new_id("org"),
        name: "acme".into(),
        created_at: now(),
    };
    let prj2 = Project {
        managed_by: None,
        id: new_id("prj"),
        org_id: dup.id.clone(),
        name: "default".into(),
        created_at: now(),
    };
    let before = head(&*s).await;
    let refused = ev("org.create", &dup.id);
    assert!(matches!(
        s.org_create(&dup, &prj2, &refused).await,
        Err(Error::Conflict(_))
    ));
    // The failed organization left nothing behind, its event included.
    assert!(s.project_get(&prj2.id).await.unwrap().is_none());
    assert_eq!(head(&*s).await, before);
    assert_not_recorded(&*s, &refused).await;
    assert!(matches!(
        s.project_create(
            &Project {
                managed_by: None,
                id: new_id("prj"),
                org_id: org.id.clone(),
                name: "default".into(),
                created_at: now()
            },
            &ev("project.create", "prj_dup")
        )
        .await,
        Err(Error::Conflict(_))
    ));
    let m = Member {
        org_id: org.id.clone(),
        ..member("a@x.io", MemberRole::Owner)
    };
    s.member_create(&m, &ev("member.create", &m.id))
        .await
        .unwrap();
    let m2 = Member {
        id: new_id("mem"),
        ..m.clone()
    };
    assert!(matches!(
        s.member_create(&m2, &ev("member.create", &m2.id)).await,
        Err(Error::Conflict(_))
    ));
    let svc = Service {
        managed_by: None,
        id: new_id("svc"),
        name: "ai-guard".into(),
        description: String::new(),
        scopes: vec!["ai-guard:read".into()],
        resources: vec!["https://guard.example.com".into()],
        created_at: now(),
    };
    s.service_create(&svc, &ev("service.create", &svc.id))
        .await
        .unwrap();
    let svc2 = Service {
        id: new_id("svc"),
        ..svc.clone()
    };
    assert!(matches!(
        s.service_create(&svc2, &ev("service.create", &svc2.id))
            .await,
        Err(Error::Conflict(_))
    ));
    assert_eq!(s.service_list().await.unwrap(), vec![svc.clone()]);
    assert_eq!(s.org_list().await.unwrap().len(), 2);
    // Only the three changes that committed are in the chain.
    assert_eq!(verify_chain(&*s).await, 3);
    // A service's description and resource URIs change; an unknown one is NotFound.
    let changed = Service {
        description: "guards prompts".into(),
        resources: vec![],
        ..svc.clone()
    };
    s.service_update(&changed, &ev("service.update", &svc.id))
        .await
        .unwrap();
    assert_eq!(s.service_list().await.unwrap(), vec![changed.clone()]);
    let ghost = Service {
        id: new_id("svc"),
        ..changed
    };
    assert!(matches!(
        s.service_update(&ghost, &ev("service.update", &ghost.id))
            .await,
        Err(Error::NotFound(_))
    ));
    assert_eq!(verify_chain(&*s).await, 4);
}

async fn keys_round_trip_and_paginate(s: Arc<dyn Store>) {
    // A credential's owner must be a member of its organization.
    let mut owner = member("a@example.com", MemberRole::Member);
    owner.id = "mem_a".into();
    s.member_create(&owner, &ev("member.create", &owner.id))
        .await
        .unwrap();
    let mut ghost = key(DEFAULT_ORG_ID, DEFAULT_PROJECT_ID, Some("mem_ghost"));
    ghost.name = "owned by nobody".into();
    assert!(matches!(
        s.api_key_create(
            &ghost,
            &secret(&ghost.id, 99),
            None,
            now(),
            &ev("api_key.create", &ghost.id)
        )
        .await,
        Err(Error::Invalid { .. })
    ));
    let mut ids = vec![];
    for i in 0..5 {
        let mut k = key(
            DEFAULT_ORG_ID,
            DEFAULT_PROJECT_ID,
            if i % 2 == 0 { Some("mem_a") } else { None },
        );
        k.expires_at = Some(now() + time::Duration::days(1));
        s.api_key_create(
            &k,
            &secret(&k.id, i),
            None,
            now(),
            &ev("api_key.create", &k.id),
        )
        .await
        .unwrap();
        let got = s.api_key_get(&k.id).await.unwrap().unwrap();
        assert_eq!(
            ApiKey {
                seq: got.seq,
                ..k.clone()
            },
            got
        );
        ids.push(k.id);
    }
    let f = KeyFilter::new(&admin_access(), None, false);
    let p1 = s.api_key_list(&f, None, 2).await.unwrap();
    let p2 = s.api_key_list(&f, Some(p1[1].seq), 2).await.unwrap();
    let p3 = s.api_key_list(&f, Some(p2[1].seq), 2).await.unwrap();
    let all: Vec<String> = p1
        .iter()
        .chain(&p2)
        .chain(&p3)
        .map(|k| k.id.clone())
        .collect();
    assert_eq!(all, ids);
    let own = KeyFilter::new(&member_access("mem_a"), None, false);
    assert_eq!(s.api_key_list(&own, None, 10).await.unwrap().len(), 3);
    let in_project = KeyFilter::new(&admin_access(), Some(DEFAULT_PROJECT_ID), false);
    assert_eq!(
        s.api_key_list(&in_project, None, 10).await.unwrap().len(),
        5
    );
    let elsewhere = KeyFilter::new(&admin_access(), Some("prj_other"), false);
    assert!(s
        .api_key_list(&elsewhere, None, 10)
        .await
        .unwrap()
        .is_empty());
    s.api_key_deactivate(&ids[0], 1, now(), &ev("api_key.revoke", &ids[0]))
        .await
        .unwrap();
    assert_eq!(s.api_key_list(&f, None, 10).await.unwrap().len(), 4);
    let incl = KeyFilter::new(&admin_access(), None, true);
    assert_eq!(s.api_key_list(&incl, None, 10).await.unwrap().len(), 5);
    s.api_keys_touch(&[(ids[1].clone(), now())]).await.unwrap();
    let touched = s.api_key_get(&ids[1]).await.unwrap().unwrap();
    assert!(touched.last_used_at.is_some());
    assert_eq!(touched.version, 1, "recording a use is not a change");
}

async fn active_key_limit_holds_under_concurrency(s: Arc<dyn Store>) {
    let mut tasks = vec![];
    for i in 0..30u8 {
        let s = Arc::clone(&s);
        tasks.push(tokio::spawn(async move {
            let k = key(DEFAULT_ORG_ID, DEFAULT_PROJECT_ID, None);
            s.api_key_create(
                &k,
                &secret(&k.id, i),
                Some(10),
                now(),
                &ev("api_key.create", &k.id),
            )
            .await
        }));
    }
    let mut ok = 0;
    let mut refused = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => ok += 1,
            Err(Error::LimitExceeded(_)) => refused += 1,
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!((ok, refused), (10, 20));
    // Only the creations that committed have an event.
    assert_eq!(verify_chain(&*s).await, 10);
    // Expired keys do not count.
    let f = KeyFilter::new(&admin_access(), None, false);
    let first = &s.api_key_list(&f, None, 1).await.unwrap()[0];
    let mut expired = first.clone();
    expired.expires_at = Some(now() - time::Duration::seconds(1));
    s.api_key_update(&expired, &ev("api_key.update", &expired.id))
        .await
        .unwrap();
    let k = key(DEFAULT_ORG_ID, DEFAULT_PROJECT_ID, None);
    s.api_key_create(
        &k,
        &secret(&k.id, 99),
        Some(10),
        now(),
        &ev("api_key.create", &k.id),
    )
    .await
    .unwrap();
}

async fn default_mark_moves(s: Arc<dyn Store>) {
    let mut a = key(DEFAULT_ORG_ID, DEFAULT_PROJECT_ID, None);
    a.default_for_service = Some("svc".into());
    s.api_key_create(
        &a,
        &secret(&a.id, 1),
        None,
        now(),
        &ev("api_key.create", &a.id),
    )
    .await
    .unwrap();
    let mut b = key(DEFAULT_ORG_ID, DEFAULT_PROJECT_ID, None);
    b.default_for_service = Some("svc".into());
    s.api_key_create(
        &b,
        &secret(&b.id, 2),
        None,
        now(),
        &ev("api_key.create", &b.id),
    )
    .await
    .unwrap();
    assert_eq!(
        s.api_key_get(&a.id)
            .await
            .unwrap()
            .unwrap()
            .default_for_service,
        None
    );
    assert_eq!(
        s.api_key_get(&b.id)
            .await
            .unwrap()
            .unwrap()
            .default_for_service
            .as_deref(),
        Some("svc")
    );
    let mut a2 = s.api_key_get(&a.id).await.unwrap().unwrap();
    a2.default_for_service = Some("svc".into());
    let (a2, _) = s
        .api_key_update(&a2, &ev("api_key.update", &a.id))
        .await
        .unwrap();
    assert_eq!(a2.default_for_service.as_deref(), Some("svc"));
    assert_eq!(
        s.api_key_get(&b.id)
            .await
            .unwrap()
            .unwrap()
            .default_for_service,
        None
    );
    // A revoked key loses the mark.
    s.api_key_deactivate(&a.id, a2.version, now(), &ev("api_key.revoke", &a.id))
        .await
        .unwrap();
    assert_eq!(
        s.api_key_get(&a.id)
            .await
            .unwrap()
            .unwrap()
            .default_for_service,
        None
    );
}

async fn deactivate_and_replace_secret(s: Arc<dyn Store>) {
    let k = key(DEFAULT_ORG_ID, DEFAULT_PROJECT_ID, None);
    let s1 = secret(&k.id, 1);
    s.api_key_create(&k, &s1, None, now(), &ev("api_key.create", &k.id))
        .await
        .unwrap();
    assert!(s.api_key_lookup(&s1.digest).await.unwrap().is_some());

    // Replace with a grace period: both secrets resolve, the old one with an expiry.
    let s2 = secret(&k.id, 2);
    let until = now() + time::Duration::minutes(5);
    let affected = s
        .api_key_replace_secret(
            &k.id,
            1,
            &s2,
            "kp_two",
            Some(until),
            &ev("api_key.regenerate", &k.id),
        )
        .await
        .unwrap();
    assert_eq!(affected, vec![s1.digest]);
    assert_eq!(
        s.api_key_lookup(&s1.digest)
            .await
            .unwrap()
            .unwrap()
            .secret
            .expires_at,
        Some(until)
    );
    assert_eq!(
        s.api_key_lookup(&s2.digest)
            .await
            .unwrap()
            .unwrap()
            .secret
            .expires_at,
        None
    );
    // The display start changes with the secret.
    assert_eq!(s.api_key_get(&k.id).await.unwrap().unwrap().start, "kp_two");

    // Replace without grace: every earlier secret is gone.
    let s3 = secret(&k.id, 3);
    let mut affected = s
        .api_key_replace_secret(
            &k.id,
            2,
            &s3,
            "kp_three",
            None,
            &ev("api_key.regenerate", &k.id),
        )
        .await
        .unwrap();
    affected.sort_by_key(|d| d.0);
    assert_eq!(affected, vec![s1.digest, s2.digest]);
    assert!(s.api_key_lookup(&s1.digest).await.unwrap().is_none());
    assert!(s.api_key_lookup(&s2.digest).await.unwrap().is_none());
    assert_eq!(
        s.api_key_get(&k.id).await.unwrap().unwrap().start,
        "kp_three"
    );

    let at = now();
    assert_eq!(
        s.api_key_deactivate(&k.id, 3, at, &ev("api_key.revoke", &k.id))
            .await
            .unwrap(),
        vec![s3.digest]
    );
    s.api_key_deactivate(
        &k.id,
        4,
        at + time::Duration::hours(1),
        &ev("api_key.revoke", &k.id),
    )
    .await
    .unwrap();
    let got = s.api_key_get(&k.id).await.unwrap().unwrap();
    assert!(!got.is_active);
    assert_eq!(
        got.deactivated_at,
        Some(at),
        "the first deactivation time is kept"
    );
    assert!(
        !s.api_key_lookup(&s3.digest)
            .await
            .unwrap()
            .unwrap()
            .key
            .is_active
    );
    // A revoked key gets no new secret.
    let s4 = secret(&k.id, 4);
    assert!(is_version_conflict(
        &s.api_key_replace_secret(
            &k.id,
            got.version,
            &s4,
            "kp_four",
            None,
            &ev("api_key.regenerate", &k.id)
        )
        .await
    ));
    assert!(s.api_key_lookup(&s4.digest).await.unwrap().is_none());
}

async fn lookup_carries_owner_role_and_roles(s: Arc<dyn Store>) {
    let m = member("m@x.io", MemberRole::Member);
    s.member_create(&m, &ev("member.create", &m.id))
        .await
        .unwrap();
    let role = Role {
        managed_by: None,
        id: new_id("role"),
        org_id: Some(DEFAULT_ORG_ID.into()),
        name: "READER".into(),
        description: String::new(),
        permissions: vec![],
        scopes: vec!["svc:read".into()],
        created_at: now(),
    };
    s.role_create(&role, &ev("role.create", &role.id))
        .await
        .unwrap();
    let mut k = key(DEFAULT_ORG_ID, DEFAULT_PROJECT_ID, Some(&m.id));
    k.roles = vec!["READER".into(), "ORG-ADMIN".into()];
    let sec = secret(&k.id, 7);
    s.api_key_create(&k, &sec, None, now(), &ev("api_key.create", &k.id))
        .await
        .unwrap();
    let l = s.api_key_lookup(&sec.digest).await.unwrap().unwrap();
    assert_eq!(l.owner_role, Some(MemberRole::Member));
    let mut names: Vec<_> = l.roles.iter().map(|r| r.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["ORG-ADMIN", "READER"]);
    s.member_set_role(&m.id, MemberRole::Admin, 1, &ev("member.update", &m.id))
        .await
        .unwrap();
    assert_eq!(
        s.api_key_lookup(&sec.digest)
            .await
            .unwrap()
            .unwrap()
            .owner_role,
        Some(MemberRole::Admin)
    );
    assert!(s.api_key_lookup(&Digest([9; 32])).await.unwrap().is_none());
}

async fn lookups_page_through_active_keys(s: Arc<dyn Store>) {
    let mut digests = vec![];
    for i in 0..7u8 {
        let k = key(DEFAULT_ORG_ID, DEFAULT_PROJECT_ID, None);
        let sec = secret(&k.id, 200 - i * 10);
        s.api_key_create(&k, &sec, None, now(), &ev("api_key.create", &k.id))
            .await
            .unwrap();
        if i == 3 {
            s.api_key_deactivate(&k.id, 1, now(), &ev("api_key.revoke", &k.id))
                .await
                .unwrap();
        } else {
            digests.push(sec.digest);
        }
    }
    digests.sort_by_key(|d| d.0);
    let mut seen = vec![];
    let mut after = None;
    loop {
        let page = s.api_key_lookups_after(after.as_ref(), 4).await.unwrap();
        assert!(page.len() <= 4);
        let Some(last) = page.last() else { break };
        after = Some(last.secret.digest);
        for l in &page {
            assert!(l.key.is_active);
            assert_eq!(l.secret.key_id, l.key.id);
        }
        seen.extend(page.iter().map(|l| l.secret.digest));
    }
    assert_eq!(seen, digests, "every active key once, in digest order");
}

async fn member_delete_revokes_their_keys(s: Arc<dyn Store>) {
    let m = member("gone@x.io", MemberRole::Admin);
    s.member_create(&m, &ev("member.create", &m.id))
        .await
        .unwrap();
    let k = key(DEFAULT_ORG_ID, DEFAULT_PROJECT_ID, Some(&m.id));
    let sec = secret(&k.id, 3);
    s.api_key_create(&k, &sec, None, now(), &ev("api_key.create", &k.id))
        .await
        .unwrap();
    let other = key(DEFAULT_ORG_ID, DEFAULT_PROJECT_ID, None);
    s.api_key_create(
        &other,
        &secret(&other.id, 4),
        None,
        now(),
        &ev("api_key.create", &other.id),
    )
    .await
    .unwrap();
    let removal = s
        .member_delete(&m.id, 1, now(), &ev("member.delete", &m.id))
        .await
        .unwrap();
    assert_eq!(removal.digests, vec![sec.digest]);
    assert!(removal.client_ids.is_empty());
    assert!(s.member_get(&m.id).await.unwrap().is_none());
    assert!(!s.api_key_get(&k.id).await.unwrap().unwrap().is_active);
    assert!(s.api_key_get(&other.id).await.unwrap().unwrap().is_active);
}

fn event(action: &str, org: Option<&str>, actor: &str) -> NewEvent {
    NewEvent {
        id: new_id("evt"),
        at: now(),
        org_id: org.map(str::to_string),
        actor: actor.into(),
        action: action.into(),
        target: Some("key_x".into()),
        outcome: Outcome::Success,
        client_addr: Some("127.0.0.1".into()),
        user_agent: None,
        details: serde_json::json!({ "n": 1 }),
    }
}

async fn activity_chain_and_queries(s: Arc<dyn Store>) {
    s.activity_append(&[
        event("a.one", Some("org_a"), "admin-key"),
        event("a.two", Some("org_b"), "api-key:key_1"),
    ])
    .await
    .unwrap();
    // Concurrent appends keep one unbroken chain.
    let mut tasks = vec![];
    for i in 0..20 {
        let s = Arc::clone(&s);
        tasks.push(tokio::spawn(async move {
            s.activity_append(&[event(&format!("c.{i}"), None, "system")])
                .await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let page = s.activity_page(0, 100).await.unwrap();
    assert_eq!(page.len(), 22);
    let mut v = ChainVerifier::default();
    for e in &page {
        assert!(v.feed(e), "event {} breaks the chain", e.seq);
    }
    let report = v.finish(s.activity_head().await.unwrap());
    assert!(report.intact, "{report:?}");
    assert_eq!(report.checked, 22);

    let newest = s
        .activity_query(&EventFilter::default(), None, 5)
        .await
        .unwrap();
    assert_eq!(
        newest.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![22, 21, 20, 19, 18]
    );
    let older = s
        .activity_query(&EventFilter::default(), Some(18), 5)
        .await
        .unwrap();
    assert_eq!(older[0].seq, 17);
    let by_org = s
        .activity_query(
            &EventFilter {
                org_id: Some("org_b".into()),
                ..Default::default()
            },
            None,
            10,
        )
        .await
        .unwrap();
    assert_eq!(by_org.len(), 1);
    assert_eq!(by_org[0].action, "a.two");
    let by_actor = s
        .activity_query(
            &EventFilter {
                actor: Some("key_1".into()),
                ..Default::default()
            },
            None,
            10,
        )
        .await
        .unwrap();
    assert_eq!(by_actor.len(), 1);
    let by_action = s
        .activity_query(
            &EventFilter {
                action: Some("c.3".into()),
                ..Default::default()
            },
            None,
            10,
        )
        .await
        .unwrap();
    assert_eq!(by_action.len(), 1);
    let future = s
        .activity_query(
            &EventFilter {
                since: Some(now() + time::Duration::hours(1)),
                ..Default::default()
            },
            None,
            10,
        )
        .await
        .unwrap();
    assert!(future.is_empty());
}

async fn admin_key_is_replaced(s: Arc<dyn Store>) {
    assert_eq!(s.admin_key_get().await.unwrap(), None);
    s.admin_key_set(Digest([1; 32]), 1, now(), &ev("admin_key.set", "admin"))
        .await
        .unwrap();
    let rotate = ev("admin_key.rotate", "admin");
    s.admin_key_set(Digest([2; 32]), 2, now(), &rotate)
        .await
        .unwrap();
    assert_eq!(s.admin_key_get().await.unwrap(), Some((Digest([2; 32]), 2)));
    assert_recorded(&*s, &rotate).await;
}

/// Each change appends exactly its own event, in the same commit, and the chain stays intact.
async fn changes_commit_with_their_event(s: Arc<dyn Store>) {
    let m = member("owner@x.io", MemberRole::Admin);
    s.member_create(&m, &ev("member.create", &m.id))
        .await
        .unwrap();
    let k = key(DEFAULT_ORG_ID, DEFAULT_PROJECT_ID, Some(&m.id));
    let created = ev("api_key.create", &k.id);
    s.api_key_create(&k, &secret(&k.id, 1), None, now(), &created)
        .await
        .unwrap();
    assert_recorded(&*s, &created).await;
    assert_eq!(verify_chain(&*s).await, 2);

    let revoked = ev("api_key.revoke", &k.id);
    s.api_key_deactivate(&k.id, 1, now(), &revoked)
        .await
        .unwrap();
    assert_recorded(&*s, &revoked).await;
    assert_eq!(verify_chain(&*s).await, 3);

    let c = client("svc-client", Some(&m.id));
    s.client_create(
        &c,
        Some(&client_secret(&c.client_id, 1)),
        &ev("client.create", &c.client_id),
    )
    .await
    .unwrap();
    let added = ev("client.secret_add", &c.client_id);
    s.client_secret_add(&client_secret(&c.client_id, 2), 1, None, &added)
        .await
        .unwrap();
    assert_recorded(&*s, &added).await;
    assert_eq!(verify_chain(&*s).await, 5);

    let removed = ev("member.delete", &m.id);
    s.member_delete(&m.id, 1, now(), &removed).await.unwrap();
    assert_recorded(&*s, &removed).await;
    assert_eq!(verify_chain(&*s).await, 6);

    // The remaining changing methods record theirs too.
    let (c_now, secrets) = s.client_get(&c.client_id).await.unwrap().unwrap();
    // A leak report finds a secret's client by the secret's digest alone.
    assert_eq!(
        s.client_secret_find(&secrets[0].digest).await.unwrap(),
        Some((c.client_id.clone(), secrets[0].id.clone()))
    );
    assert_eq!(s.client_secret_find(&Digest([7; 32])).await.unwrap(), None);
    let retired = ev("client.secret_delete", &c.client_id);
    assert!(s
        .client_secret_delete(&c.client_id, &secrets[0].id, c_now.version, now(), &retired)
        .await
        .unwrap());
    assert_eq!(
        s.client_secret_find(&secrets[0].digest).await.unwrap(),
        None
    );
    assert_recorded(&*s, &retired).await;
    let deleted = ev("client.delete", &c.client_id);
    s.client_delete(&c.client_id, c_now.version + 1, &deleted)
        .await
        .unwrap();
    assert_recorded(&*s, &deleted).await;
    let sess = session(None);
    let signed_in = ev("console.sign_in", "session");
    s.console_session_create(&sess, &signed_in).await.unwrap();
    assert_recorded(&*s, &signed_in).await;
    let signed_out = ev("console.sign_out", "session");
    s.console_session_delete(&sess.digest, Some(&signed_out))
        .await
        .unwrap();
    assert_recorded(&*s, &signed_out).await;
    // Ending a session without an event (an expiry) appends nothing.
    let sess2 = ConsoleSession {
        digest: digest(9),
        ..session(None)
    };
    s.console_session_create(&sess2, &ev("console.sign_in", "session2"))
        .await
        .unwrap();
    let before = head(&*s).await;
    s.console_session_delete(&sess2.digest, None).await.unwrap();
    assert!(s
        .console_session_get(&sess2.digest)
        .await
        .unwrap()
        .is_none());
    assert_eq!(head(&*s).await, before);
    assert_eq!(verify_chain(&*s).await, 11);
}

/// A change refused by its version check writes nothing: no event, no row change.
async fn failed_changes_write_no_event(s: Arc<dyn Store>) {
    let m = member("m@x.io", MemberRole::Member);
    s.member_create(&m, &ev("member.create", &m.id))
        .await
        .unwrap();
    let k = key(DEFAULT_ORG_ID, DEFAULT_PROJECT_ID, Some(&m.id));
    let s1 = secret(&k.id, 1);
    s.api_key_create(&k, &s1, None, now(), &ev("api_key.create", &k.id))
        .await
        .unwrap();
    let stale = s.api_key_get(&k.id).await.unwrap().unwrap();
    let mut renamed = stale.clone();
    renamed.name = "first".into();
    let (current, _) = s
        .api_key_update(&renamed, &ev("api_key.update", &k.id))
        .await
        .unwrap();
    let c = client("cl", Some(&m.id));
    let cs1 = client_secret(&c.client_id, 1);
    s.client_create(&c, Some(&cs1), &ev("client.create", &c.client_id))
        .await
        .unwrap();
    s.client_secret_add(
        &client_secret(&c.client_id, 2),
        1,
        None,
        &ev("client.secret_add", &c.client_id),
    )
    .await
    .unwrap();
    let client_before = s.client_get(&c.client_id).await.unwrap().unwrap();
    let checked = verify_chain(&*s).await;
    let head_before = head(&*s).await;

    // An edit computed from the stale version is refused and changes nothing.
    let mut lost = stale.clone();
    lost.name = "second".into();
    lost.scopes = vec!["svc:write".into()];
    let e = ev("api_key.update", &k.id);
    assert!(is_version_conflict(&s.api_key_update(&lost, &e).await));
    assert_eq!(head(&*s).await, head_before);
    assert_not_recorded(&*s, &e).await;
    assert_eq!(s.api_key_get(&k.id).await.unwrap().unwrap(), current);

    // So is every other versioned change of a key.
    let e = ev("api_key.revoke", &k.id);
    assert!(is_version_conflict(
        &s.api_key_deactivate(&k.id, stale.version, now(), &e).await
    ));
    assert_not_recorded(&*s, &e).await;
    let s2 = secret(&k.id, 2);
    let e = ev("api_key.regenerate", &k.id);
    assert!(is_version_conflict(
        &s.api_key_replace_secret(&k.id, stale.version, &s2, "kp_new", None, &e)
            .await
    ));
    assert_not_recorded(&*s, &e).await;
    assert!(s.api_key_lookup(&s2.digest).await.unwrap().is_none());
    assert!(s.api_key_lookup(&s1.digest).await.unwrap().is_some());
    assert_eq!(s.api_key_get(&k.id).await.unwrap().unwrap(), current);

    // Of a member.
    let e = ev("member.update", &m.id);
    assert!(is_version_conflict(
        &s.member_set_role(&m.id, MemberRole::Owner, 7, &e).await
    ));
    assert_not_recorded(&*s, &e).await;
    let e = ev("member.delete", &m.id);
    assert!(is_version_conflict(
        &s.member_delete(&m.id, 7, now(), &e).await
    ));
    assert_not_recorded(&*s, &e).await;
    assert_eq!(s.member_get(&m.id).await.unwrap(), Some(m.clone()));
    assert!(s.api_key_get(&k.id).await.unwrap().unwrap().is_active);

    // Of a client.
    let mut edited = client_before.0.clone();
    edited.version = 1;
    edited.name = "renamed".into();
    let e = ev("client.update", &c.client_id);
    assert!(is_version_conflict(&s.client_update(&edited, &e).await));
    assert_not_recorded(&*s, &e).await;
    let cs3 = client_secret(&c.client_id, 3);
    let e = ev("client.secret_add", &c.client_id);
    assert!(is_version_conflict(
        &s.client_secret_add(&cs3, 1, Some(now()), &e).await
    ));
    assert_not_recorded(&*s, &e).await;
    let e = ev("client.secret_delete", &c.client_id);
    assert!(is_version_conflict(
        &s.client_secret_delete(&c.client_id, &cs1.id, 1, now(), &e)
            .await
    ));
    assert_not_recorded(&*s, &e).await;
    let e = ev("client.delete", &c.client_id);
    assert!(is_version_conflict(
        &s.client_delete(&c.client_id, 1, &e).await
    ));
    assert_not_recorded(&*s, &e).await;
    // Retiring a secret the client does not have is no change either: no event, no bump.
    let e = ev("client.secret_delete", &c.client_id);
    assert!(!s
        .client_secret_delete(
            &c.client_id,
            "cs_unknown",
            client_before.0.version,
            now(),
            &e
        )
        .await
        .unwrap());
    assert_not_recorded(&*s, &e).await;
    assert_eq!(
        s.client_get(&c.client_id).await.unwrap().unwrap(),
        client_before
    );

    // A refused creation writes no event either.
    let limited = key(DEFAULT_ORG_ID, DEFAULT_PROJECT_ID, None);
    let e = ev("api_key.create", &limited.id);
    assert!(matches!(
        s.api_key_create(&limited, &secret(&limited.id, 9), Some(1), now(), &e)
            .await,
        Err(Error::LimitExceeded(_))
    ));
    assert_not_recorded(&*s, &e).await;
    assert!(s.api_key_get(&limited.id).await.unwrap().is_none());

    assert_eq!(head(&*s).await, head_before, "the chain head did not move");
    assert_eq!(verify_chain(&*s).await, checked);
}

/// Every change bumps the version by one; a change naming any other version is refused.
async fn versions_bump_by_one_and_stale_versions_are_refused(s: Arc<dyn Store>) {
    // API keys.
    let k = key(DEFAULT_ORG_ID, DEFAULT_PROJECT_ID, None);
    s.api_key_create(
        &k,
        &secret(&k.id, 1),
        None,
        now(),
        &ev("api_key.create", &k.id),
    )
    .await
    .unwrap();
    let v1 = s.api_key_get(&k.id).await.unwrap().unwrap();
    assert_eq!(v1.version, 1);
    let mut edit = v1.clone();
    edit.description = "edited".into();
    let (v2, _) = s
        .api_key_update(&edit, &ev("api_key.update", &k.id))
        .await
        .unwrap();
    assert_eq!(v2.version, 2);
    assert_eq!(v2.description, "edited");
    assert_eq!(
        s.api_key_get(&k.id).await.unwrap().unwrap(),
        v2,
        "returned as stored"
    );
    assert!(is_version_conflict(
        &s.api_key_update(&edit, &ev("api_key.update", &k.id)).await
    ));
    // A version from the future is no better than a stale one.
    let ahead = ApiKey {
        version: 3,
        ..v2.clone()
    };
    assert!(is_version_conflict(
        &s.api_key_update(&ahead, &ev("api_key.update", &k.id)).await
    ));
    s.api_key_replace_secret(
        &k.id,
        2,
        &secret(&k.id, 2),
        "kp_2",
        None,
        &ev("api_key.regenerate", &k.id),
    )
    .await
    .unwrap();
    assert_eq!(s.api_key_get(&k.id).await.unwrap().unwrap().version, 3);
    assert!(is_version_conflict(
        &s.api_key_replace_secret(
            &k.id,
            2,
            &secret(&k.id, 3),
            "kp_3",
            None,
            &ev("api_key.regenerate", &k.id)
        )
        .await
    ));
    assert!(is_version_conflict(
        &s.api_key_deactivate(&k.id, 2, now(), &ev("api_key.revoke", &k.id))
            .await
    ));
    s.api_key_deactivate(&k.id, 3, now(), &ev("api_key.revoke", &k.id))
        .await
        .unwrap();
    assert_eq!(s.api_key_get(&k.id).await.unwrap().unwrap().version, 4);
    // The use counter is not a change.
    s.api_keys_touch(&[(k.id.clone(), now())]).await.unwrap();
    assert_eq!(s.api_key_get(&k.id).await.unwrap().unwrap().version, 4);

    // Members.
    let m = member("v@x.io", MemberRole::Member);
    s.member_create(&m, &ev("member.create", &m.id))
        .await
        .unwrap();
    assert_eq!(s.member_get(&m.id).await.unwrap().unwrap().version, 1);
    s.member_set_role(&m.id, MemberRole::Admin, 1, &ev("member.update", &m.id))
        .await
        .unwrap();
    let got = s.member_get(&m.id).await.unwrap().unwrap();
    assert_eq!((got.version, got.role), (2, MemberRole::Admin));
    assert!(is_version_conflict(
        &s.member_set_role(&m.id, MemberRole::Owner, 1, &ev("member.update", &m.id))
            .await
    ));
    assert_eq!(
        s.member_get(&m.id).await.unwrap().unwrap().role,
        MemberRole::Admin
    );
    assert!(is_version_conflict(
        &s.member_delete(&m.id, 1, now(), &ev("member.delete", &m.id))
            .await
    ));
    s.member_delete(&m.id, 2, now(), &ev("member.delete", &m.id))
        .await
        .unwrap();
    assert!(s.member_get(&m.id).await.unwrap().is_none());
    // A member that is gone cannot be changed.
    assert!(is_version_conflict(
        &s.member_set_role(&m.id, MemberRole::Admin, 3, &ev("member.update", &m.id))
            .await
    ));

    // OAuth clients and their secrets.
    let c = client("versioned", None);
    let cs1 = client_secret(&c.client_id, 1);
    s.client_create(&c, Some(&cs1), &ev("client.create", &c.client_id))
        .await
        .unwrap();
    let (got, _) = s.client_get(&c.client_id).await.unwrap().unwrap();
    assert_eq!(got.version, 1);
    let mut edit = got.clone();
    edit.description = "edited".into();
    edit.access_token_ttl_seconds = 600;
    let stored = s
        .client_update(&edit, &ev("client.update", &c.client_id))
        .await
        .unwrap();
    assert_eq!(stored.version, 2);
    assert_eq!(
        (stored.description.as_str(), stored.access_token_ttl_seconds),
        ("edited", 600)
    );
    assert_eq!(s.client_get(&c.client_id).await.unwrap().unwrap().0, stored);
    assert!(is_version_conflict(
        &s.client_update(&edit, &ev("client.update", &c.client_id))
            .await
    ));
    let cs2 = client_secret(&c.client_id, 2);
    let grace = now() + time::Duration::minutes(10);
    s.client_secret_add(&cs2, 2, Some(grace), &ev("client.secret_add", &c.client_id))
        .await
        .unwrap();
    let (got, secrets) = s.client_get(&c.client_id).await.unwrap().unwrap();
    assert_eq!(got.version, 3);
    assert_eq!(secrets.len(), 2);
    let old = secrets.iter().find(|x| x.id == cs1.id).unwrap();
    assert_eq!(old.expires_at, Some(grace), "the older secret expires then");
    assert!(is_version_conflict(
        &s.client_secret_add(
            &client_secret(&c.client_id, 3),
            2,
            None,
            &ev("client.secret_add", &c.client_id)
        )
        .await
    ));
    let not_before = now();
    assert!(is_version_conflict(
        &s.client_secret_delete(
            &c.client_id,
            &cs1.id,
            2,
            not_before,
            &ev("client.secret_delete", &c.client_id)
        )
        .await
    ));
    assert!(s
        .client_secret_delete(
            &c.client_id,
            &cs1.id,
            3,
            not_before,
            &ev("client.secret_delete", &c.client_id)
        )
        .await
        .unwrap());
    let (got, secrets) = s.client_get(&c.client_id).await.unwrap().unwrap();
    assert_eq!(got.version, 4);
    assert_eq!(got.not_before, Some(not_before), "not-before moves");
    assert_eq!(
        secrets.iter().map(|x| x.id.as_str()).collect::<Vec<_>>(),
        vec![cs2.id.as_str()]
    );
    // Not-before never moves back.
    let earlier = not_before - time::Duration::minutes(1);
    let cs4 = client_secret(&c.client_id, 4);
    s.client_secret_add(&cs4, 4, None, &ev("client.secret_add", &c.client_id))
        .await
        .unwrap();
    assert!(s
        .client_secret_delete(
            &c.client_id,
            &cs4.id,
            5,
            earlier,
            &ev("client.secret_delete", &c.client_id)
        )
        .await
        .unwrap());
    let (got, _) = s.client_get(&c.client_id).await.unwrap().unwrap();
    assert_eq!((got.version, got.not_before), (6, Some(not_before)));
    assert!(is_version_conflict(
        &s.client_delete(&c.client_id, 5, &ev("client.delete", &c.client_id))
            .await
    ));
    assert!(s.client_get(&c.client_id).await.unwrap().is_some());
    s.client_delete(&c.client_id, 6, &ev("client.delete", &c.client_id))
        .await
        .unwrap();
    assert!(s.client_get(&c.client_id).await.unwrap().is_none());
    verify_chain(&*s).await;
}

/// Rotations computed from the same version race: exactly one commits, the others are told
/// another change came first, and only the winner's secret and event exist.
async fn concurrent_rotations_from_one_version_one_wins(s: Arc<dyn Store>) {
    const N: u8 = 8;
    let k = key(DEFAULT_ORG_ID, DEFAULT_PROJECT_ID, None);
    let s0 = secret(&k.id, 0);
    s.api_key_create(&k, &s0, None, now(), &ev("api_key.create", &k.id))
        .await
        .unwrap();
    let before = head(&*s).await;
    let barrier = Arc::new(tokio::sync::Barrier::new(N as usize));
    let mut tasks = vec![];
    for i in 1..=N {
        let s = Arc::clone(&s);
        let barrier = Arc::clone(&barrier);
        let key_id = k.id.clone();
        tasks.push(tokio::spawn(async move {
            let sec = secret(&key_id, i);
            let start = format!("kp_{i}");
            let e = ev("api_key.regenerate", &key_id);
            barrier.wait().await;
            let r = s
                .api_key_replace_secret(&key_id, 1, &sec, &start, None, &e)
                .await;
            (r, sec, start, e)
        }));
    }
    let mut winners = vec![];
    let mut losers = vec![];
    for t in tasks {
        let (r, sec, start, e) = t.await.unwrap();
        match r {
            Ok(affected) => {
                assert_eq!(affected, vec![s0.digest]);
                winners.push((sec, start, e));
            }
            Err(Error::VersionConflict(_)) => losers.push((sec, e)),
            Err(other) => panic!("unexpected {other}"),
        }
    }
    assert_eq!((winners.len(), losers.len()), (1, N as usize - 1));
    let (won, start, e) = &winners[0];
    let got = s.api_key_get(&k.id).await.unwrap().unwrap();
    assert_eq!((got.version, got.start.as_str()), (2, start.as_str()));
    assert!(s.api_key_lookup(&won.digest).await.unwrap().is_some());
    assert!(s.api_key_lookup(&s0.digest).await.unwrap().is_none());
    for (sec, e) in &losers {
        assert!(s.api_key_lookup(&sec.digest).await.unwrap().is_none());
        assert_not_recorded(&*s, e).await;
    }
    assert_recorded(&*s, e).await;
    assert_eq!(head(&*s).await.0, before.0 + 1);

    // The same for a client's secrets.
    let c = client("raced", None);
    s.client_create(
        &c,
        Some(&client_secret(&c.client_id, 0)),
        &ev("client.create", &c.client_id),
    )
    .await
    .unwrap();
    let mut tasks = vec![];
    let barrier = Arc::new(tokio::sync::Barrier::new(N as usize));
    for i in 1..=N {
        let s = Arc::clone(&s);
        let barrier = Arc::clone(&barrier);
        let client_id = c.client_id.clone();
        tasks.push(tokio::spawn(async move {
            let sec = client_secret(&client_id, i);
            let e = ev("client.secret_add", &client_id);
            barrier.wait().await;
            s.client_secret_add(&sec, 1, None, &e)
                .await
                .map(|()| sec.id)
        }));
    }
    let mut won = vec![];
    let mut lost = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(id) => won.push(id),
            Err(Error::VersionConflict(_)) => lost += 1,
            Err(other) => panic!("unexpected {other}"),
        }
    }
    assert_eq!((won.len(), lost), (1, N as usize - 1));
    let (got, secrets) = s.client_get(&c.client_id).await.unwrap().unwrap();
    assert_eq!(got.version, 2);
    assert_eq!(secrets.len(), 2);
    assert!(secrets.iter().any(|x| x.id == won[0]));
    assert_eq!(verify_chain(&*s).await, 4);
}

/// Removing a member revokes their keys, disables their clients and ends their sessions and
/// links, all at once; other members' things are untouched.
async fn member_removal_takes_keys_clients_sessions_and_links(s: Arc<dyn Store>) {
    let gone = member("gone@x.io", MemberRole::Admin);
    let stays = member("stays@x.io", MemberRole::Admin);
    for m in [&gone, &stays] {
        s.member_create(m, &ev("member.create", &m.id))
            .await
            .unwrap();
    }
    // Two keys of the member, one of them mid-rotation (two secrets), and one already revoked.
    let k1 = key(DEFAULT_ORG_ID, DEFAULT_PROJECT_ID, Some(&gone.id));
    let k1s1 = secret(&k1.id, 1);
    s.api_key_create(&k1, &k1s1, None, now(), &ev("api_key.create", &k1.id))
        .await
        .unwrap();
    let k1s2 = secret(&k1.id, 2);
    s.api_key_replace_secret(
        &k1.id,
        1,
        &k1s2,
        "kp_2",
        Some(now() + time::Duration::minutes(5)),
        &ev("api_key.regenerate", &k1.id),
    )
    .await
    .unwrap();
    let mut k2 = key(DEFAULT_ORG_ID, DEFAULT_PROJECT_ID, Some(&gone.id));
    k2.default_for_service = Some("svc".into());
    let k2s = secret(&k2.id, 3);
    s.api_key_create(&k2, &k2s, None, now(), &ev("api_key.create", &k2.id))
        .await
        .unwrap();
    let k3 = key(DEFAULT_ORG_ID, DEFAULT_PROJECT_ID, Some(&gone.id));
    let k3s = secret(&k3.id, 4);
    let revoked_at = now() - time::Duration::hours(1);
    s.api_key_create(&k3, &k3s, None, now(), &ev("api_key.create", &k3.id))
        .await
        .unwrap();
    s.api_key_deactivate(&k3.id, 1, revoked_at, &ev("api_key.revoke", &k3.id))
        .await
        .unwrap();
    let theirs = key(DEFAULT_ORG_ID, DEFAULT_PROJECT_ID, Some(&stays.id));
    s.api_key_create(
        &theirs,
        &secret(&theirs.id, 5),
        None,
        now(),
        &ev("api_key.create", &theirs.id),
    )
    .await
    .unwrap();
    let service_token = key(DEFAULT_ORG_ID, DEFAULT_PROJECT_ID, None);
    s.api_key_create(
        &service_token,
        &secret(&service_token.id, 6),
        None,
        now(),
        &ev("api_key.create", &service_token.id),
    )
    .await
    .unwrap();

    // Two clients of the member, one of another member, one of the project.
    let mut owned = vec![];
    for name in ["gone-1", "gone-2"] {
        let c = client(name, Some(&gone.id));
        s.client_create(
            &c,
            Some(&client_secret(&c.client_id, 7)),
            &ev("client.create", &c.client_id),
        )
        .await
        .unwrap();
        owned.push(c.client_id);
    }
    let other_clients: Vec<OAuthClient> =
        vec![client("stays", Some(&stays.id)), client("project", None)];
    for c in &other_clients {
        s.client_create(
            c,
            Some(&client_secret(&c.client_id, 8)),
            &ev("client.create", &c.client_id),
        )
        .await
        .unwrap();
    }

    // Sessions and links: the member's, the other member's, and an admin-key session.
    let gone_session = ConsoleSession {
        digest: digest(10),
        ..session(Some(&gone.id))
    };
    let stays_session = ConsoleSession {
        digest: digest(11),
        ..session(Some(&stays.id))
    };
    let admin_session = ConsoleSession {
        digest: digest(12),
        ..session(None)
    };
    for sess in [&gone_session, &stays_session, &admin_session] {
        s.console_session_create(sess, &ev("console.sign_in", "session"))
            .await
            .unwrap();
    }
    let gone_link = link(&gone.id);
    let stays_link = link(&stays.id);
    for l in [&gone_link, &stays_link] {
        s.console_link_create(l, &ev("console.link", &l.member_id))
            .await
            .unwrap();
    }
    s.member_password_set(
        &gone.id,
        "$argon2id$fake",
        now(),
        &ev("member.password", &gone.id),
    )
    .await
    .unwrap();
    // Setting the password ended the session the member had: open another.
    s.console_session_create(&gone_session, &ev("console.sign_in", "session"))
        .await
        .unwrap();
    assert_eq!(s.member_credentials(&gone.email).await.unwrap().len(), 1);

    let at = now();
    let removed = ev("member.delete", &gone.id);
    let removal = s.member_delete(&gone.id, 1, at, &removed).await.unwrap();

    // What it returns: every digest of every key the member owned, and their clients.
    let mut digests = removal.digests.clone();
    digests.sort_by_key(|d| d.0);
    let mut expected = vec![k1s1.digest, k1s2.digest, k2s.digest, k3s.digest];
    expected.sort_by_key(|d| d.0);
    assert_eq!(digests, expected);
    let mut client_ids = removal.client_ids.clone();
    client_ids.sort();
    owned.sort();
    assert_eq!(client_ids, owned);

    // The member is gone and their keys revoked (versions bumped, marks dropped).
    assert!(s.member_get(&gone.id).await.unwrap().is_none());
    for (id, version) in [(&k1.id, 3), (&k2.id, 2)] {
        let got = s.api_key_get(id).await.unwrap().unwrap();
        assert!(!got.is_active);
        assert_eq!(got.deactivated_at, Some(at));
        assert_eq!(got.version, version);
        assert_eq!(got.default_for_service, None);
    }
    let got = s.api_key_get(&k3.id).await.unwrap().unwrap();
    assert_eq!(
        got.deactivated_at,
        Some(revoked_at),
        "an earlier revocation time is kept"
    );
    for d in &expected {
        assert!(!s.api_key_lookup(d).await.unwrap().unwrap().key.is_active);
    }
    let active = s.api_key_lookups_after(None, 100).await.unwrap();
    let mut active_ids: Vec<&str> = active.iter().map(|l| l.key.id.as_str()).collect();
    active_ids.sort();
    let mut expected_ids = vec![theirs.id.as_str(), service_token.id.as_str()];
    expected_ids.sort();
    assert_eq!(active_ids, expected_ids);

    // Their clients are disabled, with their secrets kept; the others are not.
    for id in &owned {
        let (c, secrets) = s.client_get(id).await.unwrap().unwrap();
        assert_eq!(c.disabled_at, Some(at));
        assert_eq!(c.version, 2);
        assert_eq!(secrets.len(), 1);
    }
    for c in &other_clients {
        let (got, _) = s.client_get(&c.client_id).await.unwrap().unwrap();
        assert_eq!((got.disabled_at, got.version), (None, 1));
    }

    // Their sessions, links and password are gone; everyone else's stay.
    assert!(s
        .console_session_get(&gone_session.digest)
        .await
        .unwrap()
        .is_none());
    assert!(s
        .console_link_get(&gone_link.digest)
        .await
        .unwrap()
        .is_none());
    assert!(s.member_credentials(&gone.email).await.unwrap().is_empty());
    assert_eq!(
        s.console_session_get(&stays_session.digest).await.unwrap(),
        Some(stays_session.clone())
    );
    assert_eq!(
        s.console_session_get(&admin_session.digest).await.unwrap(),
        Some(admin_session.clone())
    );
    assert_eq!(
        s.console_link_get(&stays_link.digest).await.unwrap(),
        Some(stays_link.clone())
    );
    assert!(s.member_get(&stays.id).await.unwrap().is_some());

    assert_recorded(&*s, &removed).await;
    verify_chain(&*s).await;

    // A disabled client is a version further on: a change computed before the removal is refused.
    let stale = client_secret(&owned[0], 9);
    assert!(is_version_conflict(
        &s.client_secret_add(&stale, 1, None, &ev("client.secret_add", &owned[0]))
            .await
    ));
}

/// A new password ends every session of that member, and only theirs.
async fn new_password_ends_only_that_members_sessions(s: Arc<dyn Store>) {
    let a = member("a@x.io", MemberRole::Member);
    let b = member("b@x.io", MemberRole::Member);
    for m in [&a, &b] {
        s.member_create(m, &ev("member.create", &m.id))
            .await
            .unwrap();
    }
    let a1 = ConsoleSession {
        digest: digest(20),
        ..session(Some(&a.id))
    };
    let a2 = ConsoleSession {
        digest: digest(21),
        ..session(Some(&a.id))
    };
    let b1 = ConsoleSession {
        digest: digest(22),
        ..session(Some(&b.id))
    };
    for sess in [&a1, &a2, &b1] {
        s.console_session_create(sess, &ev("console.sign_in", "session"))
            .await
            .unwrap();
    }
    let set = ev("member.password", &a.id);
    s.member_password_set(&a.id, "$argon2id$fake", now(), &set)
        .await
        .unwrap();
    assert!(s.console_session_get(&a1.digest).await.unwrap().is_none());
    assert!(s.console_session_get(&a2.digest).await.unwrap().is_none());
    assert_eq!(
        s.console_session_get(&b1.digest).await.unwrap(),
        Some(b1.clone())
    );
    let creds = s.member_credentials(&a.email).await.unwrap();
    assert_eq!(creds.len(), 1);
    assert_eq!(creds[0].0, a);
    assert_eq!(creds[0].1, "$argon2id$fake");
    assert_recorded(&*s, &set).await;
    verify_chain(&*s).await;
}

#[test]
fn both_backends_have_the_same_migrations() {
    assert_eq!(
        keyplane_store::migration_names("sqlite"),
        keyplane_store::migration_names("postgres")
    );
    assert!(!keyplane_store::migration_names("sqlite").is_empty());
}

/// Checkpoints of the activity chain (issue 11): stored as given, one per `seq` (a second at
/// the same `seq` is ignored, so racing nodes cannot replace one), the newest found, paged
/// oldest first; they change nothing in the chain.
async fn activity_checkpoints_round_trip(s: Arc<dyn Store>) {
    assert_eq!(s.activity_checkpoint_last().await.unwrap(), None);
    assert!(s.activity_checkpoints(0, 10).await.unwrap().is_empty());
    let pepper = keyplane_core::domain::secret::Pepper::new(3, &[9u8; 32]).unwrap();
    let events: Vec<NewEvent> = (0..5).map(|i| ev("c.event", &format!("t{i}"))).collect();
    s.activity_append(&events).await.unwrap();
    let page = s.activity_page(0, 100).await.unwrap();
    let before = head(&*s).await;

    let cps: Vec<Checkpoint> = [2usize, 5, 3]
        .iter()
        .map(|&n| Checkpoint::new(&pepper, page[n - 1].seq, page[n - 1].hash.clone(), now()))
        .collect();
    for cp in &cps {
        s.activity_checkpoint_add(cp).await.unwrap();
    }
    // The same seq again, with another hash: ignored.
    let mut again = cps[0].clone();
    again.hash = "f".repeat(64);
    s.activity_checkpoint_add(&again).await.unwrap();

    let last = s.activity_checkpoint_last().await.unwrap().unwrap();
    assert_eq!(last, cps[1]);
    assert_eq!(last.pepper_version, 3);
    assert_eq!(last.authentic(&pepper), Some(true));
    let all = s.activity_checkpoints(0, 10).await.unwrap();
    assert_eq!(
        all.iter().map(|c| c.seq).collect::<Vec<_>>(),
        vec![page[1].seq, page[2].seq, page[4].seq]
    );
    assert_eq!(all[0], cps[0]);
    assert_eq!(all[1], cps[2]);
    let rest = s.activity_checkpoints(page[1].seq, 1).await.unwrap();
    assert_eq!(rest, vec![cps[2].clone()]);

    // A verification resumed from the newest checkpoint checks only what follows it.
    s.activity_append(&[ev("c.after", "t9")]).await.unwrap();
    let mut v = ChainVerifier::resume(last.seq, last.hash.clone());
    for e in s.activity_page(last.seq, 100).await.unwrap() {
        assert!(v.feed(&e));
    }
    let report = v.finish(s.activity_head().await.unwrap());
    assert!(report.intact, "{report:?}");
    assert_eq!(report.checked, 1);
    assert_eq!(before.0 + 1, head(&*s).await.0);
    assert_eq!(verify_chain(&*s).await, before.0 as u64 + 1);
}

/// A `private_key_jwt` client: stored without a secret, its JWK set and method read back as
/// written; switching a secret client to it deletes its secrets in the same change.
async fn private_key_jwt_clients_keep_keys_and_no_secrets(s: Arc<dyn Store>) {
    use keyplane_core::domain::client_auth::AuthMethod;
    use keyplane_core::domain::jose::JwkSet;
    let set = JwkSet::from_json(&serde_json::json!({"keys": [{
        "kty": "OKP", "crv": "Ed25519", "kid": "k1",
        "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
    }]}))
    .unwrap();
    let mut c = client("keyed", None);
    c.auth_method = AuthMethod::PrivateKeyJwt;
    c.jwks = Some(set.clone());
    s.client_create(&c, None, &ev("client.create", &c.client_id))
        .await
        .unwrap();
    let (got, secrets) = s.client_get(&c.client_id).await.unwrap().unwrap();
    assert!(secrets.is_empty());
    assert_eq!(got.auth_method, AuthMethod::PrivateKeyJwt);
    assert_eq!(got.jwks, Some(set.clone()));
    assert_eq!(got.jwks_uri, None);

    // Another client, with a secret, moves to a jwks_uri.
    let mut d = client("was secret", None);
    s.client_create(
        &d,
        Some(&client_secret(&d.client_id, 9)),
        &ev("client.create", &d.client_id),
    )
    .await
    .unwrap();
    d.auth_method = AuthMethod::PrivateKeyJwt;
    d.jwks_uri = Some("https://keys.example.com/jwks.json".into());
    let stored = s
        .client_update(&d, &ev("client.update", &d.client_id))
        .await
        .unwrap();
    assert_eq!(stored.version, 2);
    let (got, secrets) = s.client_get(&d.client_id).await.unwrap().unwrap();
    assert!(secrets.is_empty(), "its secret went with the switch");
    assert_eq!(
        got.jwks_uri.as_deref(),
        Some("https://keys.example.com/jwks.json")
    );
    assert_eq!(got.auth_method, AuthMethod::PrivateKeyJwt);
    assert!(got.federated_credentials.is_empty());

    // Federated credentials (workload identity federation) round-trip, and clear.
    let mut d = got;
    d.federated_credentials = vec![
        keyplane_core::domain::federation::FederatedCredential {
            issuer: "https://token.actions.githubusercontent.com".into(),
            subject: Some("repo:acme/app:ref:refs/heads/main".into()),
            subject_pattern: None,
            audience: "https://keyplane.example".into(),
        },
        keyplane_core::domain::federation::FederatedCredential {
            issuer: "https://k8s.example".into(),
            subject: None,
            subject_pattern: Some("system:serviceaccount:jobs:*".into()),
            audience: "keyplane".into(),
        },
    ];
    let stored = s
        .client_update(&d, &ev("client.update", &d.client_id))
        .await
        .unwrap();
    assert_eq!(stored.federated_credentials, d.federated_credentials);
    let (mut got, _) = s.client_get(&d.client_id).await.unwrap().unwrap();
    assert_eq!(got.federated_credentials, d.federated_credentials);
    got.federated_credentials.clear();
    s.client_update(&got, &ev("client.update", &got.client_id))
        .await
        .unwrap();
    let (got, _) = s.client_get(&d.client_id).await.unwrap().unwrap();
    assert!(got.federated_credentials.is_empty());
}

/// RFC 9449 §5.2 `dpop_bound_access_tokens`: false unless set, written at creation and by an
/// update, read back by `client_get` and `client_list`, and cleared again; each change bumps
/// the version and is recorded with its event.
async fn dpop_requirement_round_trips(s: Arc<dyn Store>) {
    let plain = client("plain", None);
    s.client_create(&plain, None, &ev("client.create", &plain.client_id))
        .await
        .unwrap();
    let (got, _) = s.client_get(&plain.client_id).await.unwrap().unwrap();
    assert!(!got.dpop_bound_access_tokens, "false unless set");

    let mut c = client("dpop only", None);
    c.dpop_bound_access_tokens = true;
    s.client_create(&c, None, &ev("client.create", &c.client_id))
        .await
        .unwrap();
    let (got, _) = s.client_get(&c.client_id).await.unwrap().unwrap();
    assert!(got.dpop_bound_access_tokens);
    let listed = s
        .client_list(&KeyFilter::new(&admin_access(), None, true), None, 10)
        .await
        .unwrap();
    let flags: Vec<(String, bool)> = listed
        .iter()
        .map(|c| (c.name.clone(), c.dpop_bound_access_tokens))
        .collect();
    assert!(flags.contains(&("plain".into(), false)), "{flags:?}");
    assert!(flags.contains(&("dpop only".into(), true)), "{flags:?}");

    let mut off = got;
    off.dpop_bound_access_tokens = false;
    let e = ev("client.update", &off.client_id);
    let stored = s.client_update(&off, &e).await.unwrap();
    assert!(!stored.dpop_bound_access_tokens);
    assert_eq!(stored.version, off.version + 1);
    assert_recorded(&*s, &e).await;
    let (mut got, _) = s.client_get(&off.client_id).await.unwrap().unwrap();
    assert!(!got.dpop_bound_access_tokens);
    got.dpop_bound_access_tokens = true;
    let stored = s
        .client_update(&got, &ev("client.update", &got.client_id))
        .await
        .unwrap();
    assert!(stored.dpop_bound_access_tokens);
    // A stale version changes nothing.
    let mut stale = got.clone();
    stale.dpop_bound_access_tokens = false;
    assert!(is_version_conflict(
        &s.client_update(&stale, &ev("client.update", &stale.client_id))
            .await
    ));
    let (got, _) = s.client_get(&stale.client_id).await.unwrap().unwrap();
    assert!(got.dpop_bound_access_tokens);
}

/// The replay cache: a (client, jti) is accepted once until it expires, on any connection; an
/// expired entry neither blocks a new assertion that reuses its jti nor outlives a purge.
/// Background checkpoints (SQLite's log copied into its file on a connection of its own)
/// while writes go on: every write is kept, and the store still answers afterwards.
async fn checkpoints_run_beside_writes_and_lose_nothing(s: Arc<dyn Store>) {
    let t0 = now();
    let later = t0 + time::Duration::seconds(120);
    let checkpoints = {
        let s = Arc::clone(&s);
        tokio::spawn(async move {
            for _ in 0..50 {
                s.checkpoint().await.expect("checkpoint");
                tokio::task::yield_now().await;
            }
        })
    };
    let uses = |batch: usize| -> Vec<JtiUse> {
        (0..50)
            .map(|i| JtiUse {
                scope: "ckpt".into(),
                jti: format!("j-{batch}-{i}"),
                expires_at: later,
            })
            .collect()
    };
    for batch in 0..20 {
        let fresh = s.client_assertion_jtis_use(&uses(batch), t0).await.unwrap();
        assert!(fresh.iter().all(|f| *f), "batch {batch}: {fresh:?}");
    }
    checkpoints.await.unwrap();
    s.checkpoint().await.expect("a last checkpoint");
    for batch in 0..20 {
        let fresh = s.client_assertion_jtis_use(&uses(batch), t0).await.unwrap();
        assert!(
            fresh.iter().all(|f| !*f),
            "batch {batch} was lost: {fresh:?}"
        );
    }
}

async fn assertion_ids_are_single_use_until_they_expire(s: Arc<dyn Store>) {
    let t0 = now();
    let later = t0 + time::Duration::seconds(120);
    assert!(s
        .client_assertion_jti_use("c1", "j1", later, t0)
        .await
        .unwrap());
    assert!(!s
        .client_assertion_jti_use("c1", "j1", later, t0)
        .await
        .unwrap());
    // Another client may use the same jti.
    assert!(s
        .client_assertion_jti_use("c2", "j1", later, t0)
        .await
        .unwrap());
    // Concurrent uses of one fresh jti: exactly one wins.
    let tries = (0..8).map(|_| {
        let s = Arc::clone(&s);
        tokio::spawn(async move { s.client_assertion_jti_use("c1", "race", later, t0).await })
    });
    let mut won = 0;
    for t in tries {
        if t.await.unwrap().unwrap() {
            won += 1;
        }
    }
    assert_eq!(won, 1);
    // Many at once (one statement): one flag per entry, in order; an entry repeated within the
    // batch is fresh only the first time, one already recorded is a replay.
    let u = |scope: &str, jti: &str| JtiUse {
        scope: scope.into(),
        jti: jti.into(),
        expires_at: later,
    };
    assert_eq!(
        s.client_assertion_jtis_use(
            &[
                u("c3", "a"),
                u("c3", "b"),
                u("c3", "a"),
                u("c1", "j1"),
                u("c4", "a")
            ],
            t0
        )
        .await
        .unwrap(),
        vec![true, true, false, false, true]
    );
    assert_eq!(
        s.client_assertion_jtis_use(&[], t0).await.unwrap(),
        Vec::<bool>::new()
    );
    // Concurrent batches sharing an entry: exactly one of them gets it.
    let batches = (0..6).map(|i| {
        let s = Arc::clone(&s);
        let mine = u("c5", &format!("own{i}"));
        let shared = u("c5", "shared");
        tokio::spawn(async move { s.client_assertion_jtis_use(&[mine, shared], t0).await })
    });
    let mut shared_won = 0;
    for b in batches {
        let flags = b.await.unwrap().unwrap();
        assert!(flags[0], "each batch's own entry is fresh");
        shared_won += usize::from(flags[1]);
    }
    assert_eq!(shared_won, 1);
    // Past its expiry it may be taken again (before or after the purge).
    let after = later + time::Duration::seconds(1);
    let next = after + time::Duration::seconds(120);
    assert!(s
        .client_assertion_jti_use("c1", "j1", next, after)
        .await
        .unwrap());
    assert!(!s
        .client_assertion_jti_use("c1", "j1", next, after)
        .await
        .unwrap());
    assert_eq!(
        s.client_assertion_jtis_purge(after).await.unwrap(),
        2 + 3 + 7,
        "c2/j1, c1/race, c3/a, c3/b, c4/a and c5's seven"
    );
    assert_eq!(s.client_assertion_jtis_purge(after).await.unwrap(), 0);
    assert!(!s
        .client_assertion_jti_use("c1", "j1", next, after)
        .await
        .unwrap());
}

/// The authorization-code grant's storage: a code is redeemed once (then `Reused`), a refresh
/// token is used once by its own client with its own key (else `Refused`, still unused), a
/// revoked grant forgets its codes and refresh tokens, and the purge forgets only what expired.
async fn authorization_codes_and_refresh_tokens(s: Arc<dyn Store>) {
    use keyplane_core::domain::apps::{AppAuth, AppClient, AppKind};
    use keyplane_core::domain::authcode::{AuthCode, CodeUse, Grant, RefreshToken, RefreshUse};
    let t0 = now();
    let m = Member {
        org_id: DEFAULT_ORG_ID.into(),
        ..member("g@x.io", MemberRole::Member)
    };
    s.member_create(&m, &ev("member.create", &m.id))
        .await
        .unwrap();
    let app = AppClient {
        client_id: "app_1".into(),
        kind: AppKind::Registered,
        name: "App".into(),
        logo_uri: None,
        client_uri: None,
        redirect_uris: vec!["https://a.example/cb".into()],
        auth_method: AppAuth::None,
        secret_digest: None,
        document: serde_json::json!({}),
        created_at: t0,
        fetched_at: None,
        blocked_at: None,
        blocked_by: None,
    };
    s.app_put(&app, None).await.unwrap();
    assert_eq!(s.app_get("app_1").await.unwrap().unwrap().name, "App");
    let grant = Grant {
        id: "grt_1".into(),
        org_id: DEFAULT_ORG_ID.into(),
        project_id: DEFAULT_PROJECT_ID.into(),
        member_id: m.id.clone(),
        client_id: "app_1".into(),
        resource: "https://r.example/mcp".into(),
        scopes: vec!["a".into(), "b".into()],
        created_at: t0,
        updated_at: t0,
        last_used_at: None,
        revoked_at: None,
        revoked_reason: None,
    };
    let code = |n: u8| AuthCode {
        digest: Digest([n; 32]),
        grant_id: "grt_1".into(),
        client_id: "app_1".into(),
        redirect_uri: "https://a.example/cb".into(),
        code_challenge: "c".repeat(43),
        scopes: vec!["a".into()],
        created_at: t0,
        expires_at: t0 + time::Duration::seconds(60),
    };
    s.grant_save(&grant, &code(1), &ev("oauth_grant.consent", "grt_1"))
        .await
        .unwrap();
    assert!(
        matches!(s.code_redeem(&Digest([1; 32]), t0).await.unwrap(), CodeUse::Fresh(c) if c.scopes == vec!["a".to_string()])
    );
    assert!(matches!(
        s.code_redeem(&Digest([1; 32]), t0).await.unwrap(),
        CodeUse::Reused(_)
    ));
    assert!(matches!(
        s.code_redeem(&Digest([9; 32]), t0).await.unwrap(),
        CodeUse::Unknown
    ));
    let live = s
        .grant_live_for(&m.id, "app_1", "https://r.example/mcp")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(live.scopes, vec!["a".to_string(), "b".to_string()]);

    let refresh = |n: u8, jkt: Option<&str>| RefreshToken {
        digest: Digest([n; 32]),
        grant_id: "grt_1".into(),
        client_id: "app_1".into(),
        scopes: vec!["a".into()],
        jkt: jkt.map(String::from),
        created_at: t0,
        expires_at: t0 + time::Duration::days(30),
        used_at: None,
    };
    s.refresh_put(&refresh(2, Some("key-a"))).await.unwrap();
    let d = Digest([2; 32]);
    assert!(matches!(
        s.refresh_redeem(&d, t0, "app_other", Some("key-a"))
            .await
            .unwrap(),
        RefreshUse::Refused(_)
    ));
    assert!(matches!(
        s.refresh_redeem(&d, t0, "app_1", None).await.unwrap(),
        RefreshUse::Refused(_)
    ));
    assert!(matches!(
        s.refresh_redeem(&d, t0, "app_1", Some("key-b"))
            .await
            .unwrap(),
        RefreshUse::Refused(_)
    ));
    assert!(matches!(
        s.refresh_redeem(&d, t0, "app_1", Some("key-a"))
            .await
            .unwrap(),
        RefreshUse::Fresh(_)
    ));
    assert!(matches!(
        s.refresh_redeem(&d, t0, "app_1", Some("key-a"))
            .await
            .unwrap(),
        RefreshUse::Reused(_)
    ));
    // An unbound one is used by its client with or without a key.
    s.refresh_put(&refresh(3, None)).await.unwrap();
    assert!(matches!(
        s.refresh_redeem(&Digest([3; 32]), t0, "app_1", Some("any"))
            .await
            .unwrap(),
        RefreshUse::Fresh(_)
    ));

    // The purge: a minute on, the expired code goes, the refresh tokens stay; a month on, they go.
    s.grant_save(&grant, &code(4), &ev("oauth_grant.consent", "grt_1"))
        .await
        .unwrap();
    s.refresh_put(&refresh(5, None)).await.unwrap();
    assert_eq!(
        s.authcode_purge(t0 + time::Duration::seconds(61))
            .await
            .unwrap(),
        2,
        "two codes"
    );
    assert!(matches!(
        s.code_redeem(&Digest([4; 32]), t0).await.unwrap(),
        CodeUse::Unknown
    ));
    assert_eq!(
        s.authcode_purge(t0 + time::Duration::days(31))
            .await
            .unwrap(),
        3,
        "three refresh tokens"
    );
    assert!(matches!(
        s.refresh_redeem(&Digest([5; 32]), t0, "app_1", None)
            .await
            .unwrap(),
        RefreshUse::Unknown
    ));

    // Revoking the grant forgets what it issued.
    s.refresh_put(&refresh(6, None)).await.unwrap();
    assert!(s
        .grant_revoke("grt_1", t0, "member", &ev("oauth_grant.revoke", "grt_1"))
        .await
        .unwrap());
    assert!(
        !s.grant_revoke("grt_1", t0, "member", &ev("oauth_grant.revoke", "grt_1"))
            .await
            .unwrap(),
        "once"
    );
    assert!(matches!(
        s.refresh_redeem(&Digest([6; 32]), t0, "app_1", None)
            .await
            .unwrap(),
        RefreshUse::Unknown
    ));
    assert!(s
        .grant_live_for(&m.id, "app_1", "https://r.example/mcp")
        .await
        .unwrap()
        .is_none());
    assert_eq!(
        s.grant_get("grt_1")
            .await
            .unwrap()
            .unwrap()
            .revoked_reason
            .as_deref(),
        Some("member")
    );
}

/// Usage counts are added, never overwritten (two flushes, or two nodes, merge), kept per
/// minute and per hour, filtered and ranked, and purged by age.
async fn usage_rows_add_up_and_are_purged(s: Arc<dyn Store>) {
    use keyplane_core::domain::usage::{Granularity, Outcome, UsageCount};
    use keyplane_core::store::UsageFilter;
    let c = |minute: i64, cred: &str, outcome: Outcome, count: u64| UsageCount {
        minute,
        org_id: if cred.is_empty() { "" } else { DEFAULT_ORG_ID }.into(),
        project_id: if cred.is_empty() {
            ""
        } else {
            DEFAULT_PROJECT_ID
        }
        .into(),
        credential_id: cred.into(),
        service: "svc".into(),
        outcome,
        count,
    };
    let m = 29_000_000; // a minute number, on an hour boundary (29e6 / 60 is whole)
    s.usage_add(&[
        c(m, "key_a", Outcome::Allowed, 3),
        c(m + 1, "key_a", Outcome::Revoked, 1),
        c(m, "key_b", Outcome::Allowed, 1),
        c(m, "", Outcome::Unknown, 7),
    ])
    .await
    .unwrap();
    // A second flush of the same minute adds to the row.
    s.usage_add(&[c(m, "key_a", Outcome::Allowed, 2)])
        .await
        .unwrap();
    let one = UsageFilter {
        credential_id: Some("key_a".into()),
        ..Default::default()
    };
    let rows = s
        .usage_series(&one, Granularity::Minute, m, m + 10)
        .await
        .unwrap();
    assert_eq!(
        rows,
        vec![(m, Outcome::Allowed, 5), (m + 1, Outcome::Revoked, 1)]
    );
    let hours = s
        .usage_series(&one, Granularity::Hour, m / 60, m / 60 + 1)
        .await
        .unwrap();
    assert_eq!(hours.len(), 2);
    assert_eq!(hours.iter().map(|r| r.2).sum::<u64>(), 6);
    let org = UsageFilter {
        org_id: Some(DEFAULT_ORG_ID.into()),
        outcome: Some(Outcome::Allowed),
        ..Default::default()
    };
    let rows = s
        .usage_series(&org, Granularity::Minute, m, m + 10)
        .await
        .unwrap();
    assert_eq!(rows, vec![(m, Outcome::Allowed, 6)]);
    let everything = s
        .usage_series(&UsageFilter::default(), Granularity::Minute, m, m + 10)
        .await
        .unwrap();
    assert_eq!(everything.iter().map(|r| r.2).sum::<u64>(), 14);
    let top = s
        .usage_top(&UsageFilter::default(), m / 60, m / 60 + 1, false, 10)
        .await
        .unwrap();
    assert_eq!(
        top.len(),
        2,
        "unattributed requests are not a credential: {top:?}"
    );
    assert_eq!(
        (
            top[0].credential_id.as_str(),
            top[0].requests,
            top[0].refusals
        ),
        ("key_a", 6, 1)
    );
    let by_refusals = s
        .usage_top(&UsageFilter::default(), m / 60, m / 60 + 1, true, 10)
        .await
        .unwrap();
    assert_eq!(by_refusals.len(), 1);
    // Purging minutes before m + 1 leaves that minute and every hour.
    s.usage_purge(m + 1, 0).await.unwrap();
    let rows = s
        .usage_series(&one, Granularity::Minute, m, m + 10)
        .await
        .unwrap();
    assert_eq!(rows, vec![(m + 1, Outcome::Revoked, 1)]);
    s.usage_purge(m + 1, m / 60 + 1).await.unwrap();
    assert!(s
        .usage_series(&one, Granularity::Hour, m / 60, m / 60 + 1)
        .await
        .unwrap()
        .is_empty());
}

/// Rate-limit windows are added to, read back while open, and purged once ended.
async fn rate_limit_windows_add_up(s: Arc<dyn Store>) {
    s.rate_windows_add(&[("key_a/daily".into(), 0, 1000, 3)])
        .await
        .unwrap();
    s.rate_windows_add(&[
        ("key_a/daily".into(), 0, 1000, 2),
        ("owner:mem_x/daily".into(), 0, 500, 1),
    ])
    .await
    .unwrap();
    let mut live = s.rate_windows_live(400).await.unwrap();
    live.sort();
    assert_eq!(
        live,
        vec![
            ("key_a/daily".to_string(), 0, 5),
            ("owner:mem_x/daily".to_string(), 0, 1)
        ]
    );
    assert_eq!(s.rate_windows_live(600).await.unwrap().len(), 1);
    assert_eq!(s.rate_windows_purge(600).await.unwrap(), 1);
    assert_eq!(s.rate_windows_live(0).await.unwrap().len(), 1);
}

fn endpoint(
    id: &str,
    events: &[&str],
    project: Option<&str>,
) -> keyplane_core::domain::webhook::Endpoint {
    keyplane_core::domain::webhook::Endpoint {
        id: id.into(),
        org_id: DEFAULT_ORG_ID.into(),
        project_id: project.map(str::to_string),
        url: format!("https://hooks.example.com/{id}"),
        description: String::new(),
        events: events.iter().map(|e| e.to_string()).collect(),
        enabled: true,
        disabled_reason: None,
        secret_sealed: vec![1, 2, 3],
        pepper_version: 1,
        previous_sealed: None,
        previous_until: None,
        created_at: now(),
        updated_at: now(),
        failing_since: None,
    }
}

/// Deliveries are queued with the event, for matching enabled endpoints only (exact names,
/// `area.*`, `*`, the project filter); a claim takes each due delivery once, however many claim
/// at the same time, until its result is recorded; a failure is retried when due.
async fn webhook_outbox_matches_patterns_and_claims_once(s: Arc<dyn Store>) {
    use keyplane_core::domain::webhook::{Attempt, DeliveryResult, DeliveryState};
    s.ensure_defaults(now()).await.unwrap();
    for ep in [
        endpoint("whk_exact", &["api_key.revoke"], None),
        endpoint("whk_area", &["api_key.*"], None),
        endpoint("whk_all", &["*"], None),
        endpoint("whk_project", &["*"], Some("prj_other")),
    ] {
        s.webhook_create(&ep, 50, &ev("webhook.create", &ep.id))
            .await
            .unwrap();
    }
    let mut off = endpoint("whk_off", &["*"], None);
    s.webhook_create(&off, 50, &ev("webhook.create", &off.id))
        .await
        .unwrap();
    off.enabled = false;
    s.webhook_update(&off, &ev("webhook.update", &off.id))
        .await
        .unwrap();
    // Queued only from here on: the endpoints' own events went to those created before them.
    let before: usize = {
        let mut n = 0;
        for id in ["whk_exact", "whk_area", "whk_all", "whk_project", "whk_off"] {
            n += s.webhook_deliveries(id, None, 100).await.unwrap().len();
        }
        n
    };
    let mut revoke = ev("api_key.revoke", "key_x");
    revoke.details = serde_json::json!({ "project_id": DEFAULT_PROJECT_ID });
    s.activity_append(&[revoke.clone(), ev("member.create", "mem_x")])
        .await
        .unwrap();
    let count = |v: Vec<(keyplane_core::domain::webhook::Delivery, Vec<Attempt>)>, id: &str| {
        v.iter().filter(|(d, _)| d.event_id == id).count()
    };
    let member = "member.create";
    for (ep, revokes, members) in [
        ("whk_exact", 1, 0),
        ("whk_area", 1, 0),
        ("whk_all", 1, 1),
        ("whk_project", 0, 0),
        ("whk_off", 0, 0),
    ] {
        let d = s.webhook_deliveries(ep, None, 100).await.unwrap();
        assert_eq!(count(d.clone(), &revoke.id), revokes, "{ep}");
        assert_eq!(
            d.iter().filter(|(x, _)| x.event_type == member).count(),
            members,
            "{ep}"
        );
    }
    assert!(before > 0, "endpoints are told of one another's creation");

    // Claims race: every due delivery is claimed exactly once.
    let t = now();
    let lease = t + time::Duration::seconds(30);
    let claims = futures_join(&s, t, lease).await;
    let mut ids: Vec<String> = claims.iter().map(|(d, _)| d.id.clone()).collect();
    let total = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), total, "no delivery claimed twice");
    assert!(
        s.webhook_claim(t, lease, 100).await.unwrap().is_empty(),
        "leased, or past the cap"
    );
    let mut per_endpoint: std::collections::HashMap<&str, i64> = Default::default();
    for (d, _) in &claims {
        *per_endpoint.entry(d.endpoint_id.as_str()).or_default() += 1;
    }
    assert!(
        per_endpoint
            .values()
            .all(|n| *n <= keyplane_core::domain::webhook::PER_ENDPOINT_IN_FLIGHT),
        "at most a few per endpoint at once: {per_endpoint:?}"
    );
    // One fails and is due again later; the rest are delivered (first: a success clears the
    // endpoint's `failing_since`).
    let (first, _) = &claims[0];
    for (d, _) in claims.iter().rev() {
        let failed = d.id == first.id;
        s.webhook_record(
            &DeliveryResult {
                attempt: Attempt {
                    delivery_id: d.id.clone(),
                    endpoint_id: d.endpoint_id.clone(),
                    at: t,
                    duration_ms: 3,
                    status: Some(if failed { 503 } else { 204 }),
                    error: failed.then(|| "answered 503".to_string()),
                },
                delivered: !failed,
                next_attempt_at: failed.then(|| t + time::Duration::seconds(5)),
            },
            None,
        )
        .await
        .unwrap();
    }
    // What the cap held back is claimed now; nothing recorded is claimed again, and the
    // failure only once it is due.
    let rest = s.webhook_claim(t, lease, 100).await.unwrap();
    assert!(rest.iter().all(|(d, _)| !ids.contains(&d.id)), "{rest:?}");
    let later = t + time::Duration::seconds(6);
    let again = s
        .webhook_claim(later, later + time::Duration::seconds(30), 100)
        .await
        .unwrap();
    let (retried, ep) = again
        .iter()
        .find(|(d, _)| d.id == first.id)
        .expect("the failure is retried");
    assert_eq!(retried.attempts, 2);
    assert_eq!(ep.failing_since, Some(t));
    assert!(again
        .iter()
        .all(|(d, _)| d.id == first.id || !ids.contains(&d.id)));
    let log = s
        .webhook_deliveries(&first.endpoint_id, None, 100)
        .await
        .unwrap();
    let (d, attempts) = log.iter().find(|(d, _)| d.id == first.id).unwrap();
    assert_eq!(d.state, DeliveryState::Pending);
    assert_eq!(attempts[0].status, Some(503));
    // A purge forgets what was delivered, never what is pending.
    let purged = s
        .webhook_purge(later + time::Duration::days(1))
        .await
        .unwrap();
    assert_eq!(purged as usize, total - 1);
    let log = s
        .webhook_deliveries(&first.endpoint_id, None, 100)
        .await
        .unwrap();
    assert!(log.iter().any(|(d, _)| d.id == first.id));
    assert!(log.iter().all(|(d, _)| d.state == DeliveryState::Pending));
}

/// Four claims at once.
async fn futures_join(
    s: &Arc<dyn Store>,
    t: OffsetDateTime,
    lease: OffsetDateTime,
) -> Vec<(
    keyplane_core::domain::webhook::Delivery,
    keyplane_core::domain::webhook::Endpoint,
)> {
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let s = Arc::clone(s);
            tokio::spawn(async move { s.webhook_claim(t, lease, 2).await.unwrap() })
        })
        .collect();
    let mut out = Vec::new();
    for task in tasks {
        out.extend(task.await.unwrap());
    }
    // Whatever the four left (at most two each), claimed now.
    out.extend(s.webhook_claim(t, lease, 100).await.unwrap());
    out
}

/// Candidates for a notice are the credentials past its threshold that have not had it; a
/// notice is recorded (with its event) once, and a second record of it writes nothing.
async fn notices_are_given_once_per_credential_and_threshold(s: Arc<dyn Store>) {
    use keyplane_core::domain::webhook::NoticeKind;
    s.ensure_defaults(now()).await.unwrap();
    let t = now();
    let mut soon = key(DEFAULT_ORG_ID, DEFAULT_PROJECT_ID, None);
    soon.expires_at = Some(t + time::Duration::days(2));
    s.api_key_create(
        &soon,
        &secret(&soon.id, 1),
        None,
        t,
        &ev("api_key.create", &soon.id),
    )
    .await
    .unwrap();
    let mut c = client("old-secret", None);
    c.secret_rotation_days = None;
    let mut old = client_secret(&c.client_id, 2);
    old.created_at = t - time::Duration::days(100);
    s.client_create(&c, Some(&old), &ev("oauth_client.create", &c.client_id))
        .await
        .unwrap();

    let within = |d: i64| t + time::Duration::days(d);
    let expiring = |d: i64| {
        let s = Arc::clone(&s);
        async move {
            s.notice_candidates(NoticeKind::KeyExpiring, d, t, within(d), 100)
                .await
                .unwrap()
        }
    };
    assert!(expiring(1).await.is_empty(), "two days is not within one");
    let found = expiring(7).await;
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].credential_id, soon.id);
    let e = ev("api_key.expiring", &soon.id);
    assert!(s
        .notice_record(NoticeKind::KeyExpiring, &soon.id, 7, &e)
        .await
        .unwrap());
    assert_recorded(&*s, &e).await;
    let again = ev("api_key.expiring", &soon.id);
    assert!(!s
        .notice_record(NoticeKind::KeyExpiring, &soon.id, 7, &again)
        .await
        .unwrap());
    assert_not_recorded(&*s, &again).await;
    assert!(expiring(7).await.is_empty());

    let due = |cutoff: OffsetDateTime| {
        let s = Arc::clone(&s);
        async move {
            s.notice_candidates(NoticeKind::SecretRotationDue, 90, t, cutoff, 100)
                .await
                .unwrap()
        }
    };
    let found = due(t - time::Duration::days(90)).await;
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].credential_id, old.id);
    assert_eq!(found[0].client_id.as_deref(), Some(c.client_id.as_str()));
    assert!(
        due(t - time::Duration::days(120)).await.is_empty(),
        "not 120 days old"
    );
    let e = ev("client_secret.rotation_due", &c.client_id);
    assert!(s
        .notice_record(NoticeKind::SecretRotationDue, &old.id, 90, &e)
        .await
        .unwrap());
    assert!(due(t - time::Duration::days(90)).await.is_empty());

    let unused = s
        .notice_candidates(
            NoticeKind::KeyUnused,
            30,
            t,
            t - time::Duration::days(30),
            100,
        )
        .await
        .unwrap();
    assert!(unused.is_empty(), "made today: {unused:?}");
}
