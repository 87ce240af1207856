//! The storage contract: one suite, run against SQLite and PostgreSQL on real databases.

use keyplane_core::domain::activity::GENESIS_HASH;
use keyplane_core::domain::clock::{from_ms, to_ms};
use keyplane_core::domain::ids::{new_id, DEFAULT_ORG_ID, DEFAULT_PROJECT_ID};
use keyplane_core::domain::model::*;
use keyplane_core::domain::perm::MemberRole;
use keyplane_core::domain::secret::Digest;
use keyplane_core::store::{EventFilter, KeyFilter, Store};
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
        seq: 0,
    }
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
);

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
        id: new_id("org"),
        name: "acme".into(),
        created_at: now(),
    };
    let prj = Project {
        id: new_id("prj"),
        org_id: org.id.clone(),
        name: "default".into(),
        created_at: now(),
    };
    s.org_create(&org, &prj).await.unwrap();
    let dup = Org {
        id: new_id("org"),
        name: "acme".into(),
        created_at: now(),
    };
    let prj2 = Project {
        id: new_id("prj"),
        org_id: dup.id.clone(),
        name: "default".into(),
        created_at: now(),
    };
    assert!(matches!(
        s.org_create(&dup, &prj2).await,
        Err(Error::Conflict(_))
    ));
    // The failed organization left nothing behind.
    assert!(s.project_get(&prj2.id).await.unwrap().is_none());
    assert!(matches!(
        s.project_create(&Project {
            id: new_id("prj"),
            org_id: org.id.clone(),
            name: "default".into(),
            created_at: now()
        })
        .await,
        Err(Error::Conflict(_))
    ));
    let m = Member {
        id: new_id("mem"),
        org_id: org.id.clone(),
        email: "a@x.io".into(),
        name: "A".into(),
        role: MemberRole::Owner,
        created_at: now(),
    };
    s.member_create(&m).await.unwrap();
    let m2 = Member {
        id: new_id("mem"),
        ..m.clone()
    };
    assert!(matches!(
        s.member_create(&m2).await,
        Err(Error::Conflict(_))
    ));
    let svc = Service {
        id: new_id("svc"),
        name: "ai-guard".into(),
        description: String::new(),
        scopes: vec!["ai-guard:read".into()],
        created_at: now(),
    };
    s.service_create(&svc).await.unwrap();
    assert!(matches!(
        s.service_create(&Service {
            id: new_id("svc"),
            ..svc.clone()
        })
        .await,
        Err(Error::Conflict(_))
    ));
    assert_eq!(s.service_list().await.unwrap(), vec![svc]);
    assert_eq!(s.org_list().await.unwrap().len(), 2);
}

async fn keys_round_trip_and_paginate(s: Arc<dyn Store>) {
    let mut ids = vec![];
    for i in 0..5 {
        let mut k = key(
            DEFAULT_ORG_ID,
            DEFAULT_PROJECT_ID,
            if i % 2 == 0 { Some("mem_a") } else { None },
        );
        k.expires_at = Some(now() + time::Duration::days(1));
        s.api_key_create(&k, &secret(&k.id, i), None, now())
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
    let f = KeyFilter {
        org_id: DEFAULT_ORG_ID.into(),
        ..Default::default()
    };
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
    let own = KeyFilter {
        owner_member_id: Some("mem_a".into()),
        ..f.clone()
    };
    assert_eq!(s.api_key_list(&own, None, 10).await.unwrap().len(), 3);
    s.api_key_deactivate(&ids[0], now()).await.unwrap();
    assert_eq!(s.api_key_list(&f, None, 10).await.unwrap().len(), 4);
    let incl = KeyFilter {
        include_inactive: true,
        ..f
    };
    assert_eq!(s.api_key_list(&incl, None, 10).await.unwrap().len(), 5);
    s.api_keys_touch(&[(ids[1].clone(), now())]).await.unwrap();
    assert!(s
        .api_key_get(&ids[1])
        .await
        .unwrap()
        .unwrap()
        .last_used_at
        .is_some());
}

async fn active_key_limit_holds_under_concurrency(s: Arc<dyn Store>) {
    let mut tasks = vec![];
    for i in 0..30u8 {
        let s = Arc::clone(&s);
        tasks.push(tokio::spawn(async move {
            let k = key(DEFAULT_ORG_ID, DEFAULT_PROJECT_ID, None);
            s.api_key_create(&k, &secret(&k.id, i), Some(10), now())
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
    // Expired keys do not count.
    let f = KeyFilter {
        org_id: DEFAULT_ORG_ID.into(),
        ..Default::default()
    };
    let first = &s.api_key_list(&f, None, 1).await.unwrap()[0];
    let mut expired = first.clone();
    expired.expires_at = Some(now() - time::Duration::seconds(1));
    s.api_key_update(&expired).await.unwrap();
    let k = key(DEFAULT_ORG_ID, DEFAULT_PROJECT_ID, None);
    s.api_key_create(&k, &secret(&k.id, 99), Some(10), now())
        .await
        .unwrap();
}

async fn default_mark_moves(s: Arc<dyn Store>) {
    let mut a = key(DEFAULT_ORG_ID, DEFAULT_PROJECT_ID, None);
    a.default_for_service = Some("svc".into());
    s.api_key_create(&a, &secret(&a.id, 1), None, now())
        .await
        .unwrap();
    let mut b = key(DEFAULT_ORG_ID, DEFAULT_PROJECT_ID, None);
    b.default_for_service = Some("svc".into());
    s.api_key_create(&b, &secret(&b.id, 2), None, now())
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
    s.api_key_update(&a2).await.unwrap();
    assert_eq!(
        s.api_key_get(&b.id)
            .await
            .unwrap()
            .unwrap()
            .default_for_service,
        None
    );
    // A revoked key loses the mark.
    s.api_key_deactivate(&a.id, now()).await.unwrap();
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
    s.api_key_create(&k, &s1, None, now()).await.unwrap();
    assert!(s.api_key_lookup(&s1.digest).await.unwrap().is_some());

    // Replace with a grace period: both secrets resolve, the old one with an expiry.
    let s2 = secret(&k.id, 2);
    let until = now() + time::Duration::minutes(5);
    let affected = s
        .api_key_replace_secret(&k.id, &s2, Some(until))
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

    // Replace without grace: every earlier secret is gone.
    let s3 = secret(&k.id, 3);
    let mut affected = s.api_key_replace_secret(&k.id, &s3, None).await.unwrap();
    affected.sort_by_key(|d| d.0);
    assert_eq!(affected, vec![s1.digest, s2.digest]);
    assert!(s.api_key_lookup(&s1.digest).await.unwrap().is_none());
    assert!(s.api_key_lookup(&s2.digest).await.unwrap().is_none());

    let at = now();
    assert_eq!(
        s.api_key_deactivate(&k.id, at).await.unwrap(),
        vec![s3.digest]
    );
    s.api_key_deactivate(&k.id, at + time::Duration::hours(1))
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
}

async fn lookup_carries_owner_role_and_roles(s: Arc<dyn Store>) {
    let m = Member {
        id: new_id("mem"),
        org_id: DEFAULT_ORG_ID.into(),
        email: "m@x.io".into(),
        name: "M".into(),
        role: MemberRole::Member,
        created_at: now(),
    };
    s.member_create(&m).await.unwrap();
    let role = Role {
        id: new_id("role"),
        org_id: Some(DEFAULT_ORG_ID.into()),
        name: "READER".into(),
        description: String::new(),
        permissions: vec![],
        scopes: vec!["svc:read".into()],
        created_at: now(),
    };
    s.role_create(&role).await.unwrap();
    let mut k = key(DEFAULT_ORG_ID, DEFAULT_PROJECT_ID, Some(&m.id));
    k.roles = vec!["READER".into(), "ORG-ADMIN".into()];
    let sec = secret(&k.id, 7);
    s.api_key_create(&k, &sec, None, now()).await.unwrap();
    let l = s.api_key_lookup(&sec.digest).await.unwrap().unwrap();
    assert_eq!(l.owner_role, Some(MemberRole::Member));
    let mut names: Vec<_> = l.roles.iter().map(|r| r.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["ORG-ADMIN", "READER"]);
    s.member_set_role(&m.id, MemberRole::Admin).await.unwrap();
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
        s.api_key_create(&k, &sec, None, now()).await.unwrap();
        if i == 3 {
            s.api_key_deactivate(&k.id, now()).await.unwrap();
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
    let m = Member {
        id: new_id("mem"),
        org_id: DEFAULT_ORG_ID.into(),
        email: "gone@x.io".into(),
        name: "G".into(),
        role: MemberRole::Admin,
        created_at: now(),
    };
    s.member_create(&m).await.unwrap();
    let k = key(DEFAULT_ORG_ID, DEFAULT_PROJECT_ID, Some(&m.id));
    let sec = secret(&k.id, 3);
    s.api_key_create(&k, &sec, None, now()).await.unwrap();
    let other = key(DEFAULT_ORG_ID, DEFAULT_PROJECT_ID, None);
    s.api_key_create(&other, &secret(&other.id, 4), None, now())
        .await
        .unwrap();
    assert_eq!(
        s.member_delete(&m.id, now()).await.unwrap(),
        vec![sec.digest]
    );
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
    let mut v = keyplane_core::domain::activity::ChainVerifier::default();
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
    s.admin_key_set(Digest([1; 32]), 1, now()).await.unwrap();
    s.admin_key_set(Digest([2; 32]), 2, now()).await.unwrap();
    assert_eq!(s.admin_key_get().await.unwrap(), Some((Digest([2; 32]), 2)));
}

#[test]
fn both_backends_have_the_same_migrations() {
    assert_eq!(
        keyplane_store::migration_names("sqlite"),
        keyplane_store::migration_names("postgres")
    );
    assert!(!keyplane_store::migration_names("sqlite").is_empty());
}
