//! Member visibility and cross-organization isolation, route by route.
//!
//! One world: org A (`org_default`) with an owner, an admin, members M1 and M2 (each with an API
//! key of their own), a service token S (no owner, no roles) and an `ORG-ADMIN` service key; org
//! B with an owner and their key. Every actor, the admin key included, is tried on every
//! management route: on the key and OAuth client routes against a key or client of every kind
//! (owned by each kind of member of A, unowned in A, in B) and against an id that does not
//! exist. A row that may change its target gets a fresh one, so rows do not affect each other. A
//! refusal must leave the target as it was, and a 404 must be the very answer an unknown id gets,
//! so it teaches nothing.
//!
//! Expectations follow docs/authorization.md: first reach (what an actor may see), then the
//! ceiling, computed from each actor's and target's authority with the spec's rule
//! ([`Authority::within`], [`Authority::may_remove`] in `support.rs`) — so an admin member's key
//! may see the owner's key but not regenerate it, and no API key may add a member (a member may
//! use every scope; a key holds a fixed set).
//!
//! Mismatches are collected, and all of them are reported at the end.

use crate::support::{
    client_snapshot, ghost_client, member_role_perms, token, Authority, ALL_PERMISSIONS,
};
use keyplane_testkit::reqwest::{Method, StatusCode};
use keyplane_testkit::{json, Answer, TestApp};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

const DEFAULT_ORG: &str = "org_default";
/// Well-formed ids that exist nowhere: what every refused id must look like.
const GHOST_KEY: &str = "key_00000000000000000000";
const GHOST_MEMBER: &str = "mem_00000000000000000000";
const GHOST_PROJECT: &str = "prj_00000000000000000000";
const GHOST_SECRET: &str = "sec_00000000000000000000";

/// Someone calling the management API.
#[derive(Clone, Debug)]
struct Actor {
    name: &'static str,
    token: String,
    /// `None` for the admin key, which may act in any organization.
    org: Option<String>,
    member: Option<String>,
    /// Holds every management permission in its organization (owner, admin, `ORG-ADMIN`).
    manager: bool,
    /// Its permissions, scopes and rank: what the ceiling compares (docs/authorization.md).
    auth: Authority,
}

impl Actor {
    /// Whether `org` exists for this actor at all.
    fn in_org(&self, org: &str) -> bool {
        self.org.as_deref().is_none_or(|o| o == org)
    }
    /// The organization a request without `org_id` acts in.
    fn home(&self) -> &str {
        self.org.as_deref().unwrap_or(DEFAULT_ORG)
    }
    /// The spec's rule for API keys.
    fn sees_key(&self, org: &str, owner: Option<&str>) -> bool {
        self.in_org(org)
            && (self.manager || (self.member.is_some() && owner == self.member.as_deref()))
    }
    /// The status of an operation needing an organization-wide permission in `org`.
    fn manages(&self, org: &str, ok: u16) -> u16 {
        if !self.in_org(org) {
            404
        } else if self.manager {
            ok
        } else {
            403
        }
    }
    /// The status of listing or creating API keys in `org` (a member: their own).
    fn keys_status(&self, org: &str, ok: u16) -> u16 {
        if !self.in_org(org) {
            404
        } else if self.manager || self.member.is_some() {
            ok
        } else {
            403
        }
    }
    /// The status of an operation on a credential this actor may reach, by the ceiling:
    /// `hands_over` operations (edit, copy, regenerate, secrets, tokens) need the target within
    /// the actor's ceiling; removals (revoke, delete) only that owners touch owners.
    fn ceiling(&self, target: &Authority, hands_over: bool, ok: u16) -> u16 {
        let allowed = if hands_over {
            self.auth.within(target)
        } else {
            self.auth.may_remove(target)
        };
        if allowed {
            ok
        } else {
            403
        }
    }
}

/// The authority of a credential (key or client, no scopes, no roles) owned by a member with
/// `role`, or by nobody: its member's permissions for a key, none for a client.
fn credential_authority(owner_role: Option<&str>, key: bool) -> Authority {
    let perms = match owner_role {
        Some(r) if key => member_role_perms(r),
        _ => BTreeSet::new(),
    };
    Authority::new(owner_role == Some("owner"), perms, Some(&[]))
}

/// The authority of a member with `role`: the role's permissions, every scope.
fn member_authority(role: &str) -> Authority {
    Authority {
        top: false,
        owner: role == "owner",
        perms: member_role_perms(role),
        scopes: None,
    }
}

/// A kind of target key or client.
#[derive(Clone, Debug)]
struct Kind {
    label: &'static str,
    org: String,
    owner: Option<String>,
    /// The owner's member role.
    owner_role: Option<&'static str>,
}

/// An API key made during set-up.
#[derive(Clone, Debug)]
struct Fixed {
    id: String,
    org: String,
    owner: Option<String>,
}

struct World {
    a: String,
    b: String,
    actors: Vec<Actor>,
    kinds: Vec<Kind>,
    keys: Vec<Fixed>,
    /// An OAuth client of every kind, made during set-up (`id` is the client id).
    clients: Vec<Fixed>,
    /// (id, org) of every member.
    members: Vec<(String, String)>,
    /// Names for ids in failure messages.
    labels: BTreeMap<String, String>,
    b_project: String,
}

impl World {
    fn actor(&self, name: &str) -> &Actor {
        self.actors.iter().find(|a| a.name == name).expect("actor")
    }
    fn member(&self, actor: &str) -> String {
        self.actor(actor).member.clone().expect("a member")
    }
    fn show(&self, ids: &BTreeSet<String>) -> String {
        let shown: Vec<&str> = ids
            .iter()
            .take(12)
            .map(|i| self.labels.get(i).map_or(i.as_str(), String::as_str))
            .collect();
        let more = ids.len().saturating_sub(shown.len());
        if more > 0 {
            format!("{shown:?} and {more} more")
        } else {
            format!("{shown:?}")
        }
    }
    fn diff(&self, want: &BTreeSet<String>, got: &BTreeSet<String>) -> Option<String> {
        if want == got {
            return None;
        }
        let missing: BTreeSet<String> = want.difference(got).cloned().collect();
        let extra: BTreeSet<String> = got.difference(want).cloned().collect();
        Some(format!(
            "expected {} ids, got {}; missing {}, unexpected {}",
            want.len(),
            got.len(),
            self.show(&missing),
            self.show(&extra)
        ))
    }
}

/// The table's runner: sends rows, keeps every mismatch.
struct Table<'a> {
    app: &'a TestApp,
    rows: usize,
    failures: Vec<String>,
}

impl Table<'_> {
    async fn call(&self, who: &Actor, method: Method, path: &str, body: Option<Value>) -> Answer {
        self.app.call(method, path, Some(&who.token), body).await
    }

    /// One row: `who` sends `method path` (shown as `route`), expecting `want`.
    async fn row(
        &mut self,
        who: &Actor,
        method: Method,
        path: &str,
        route: &str,
        body: Option<Value>,
        want: u16,
    ) -> Answer {
        self.rows += 1;
        let a = self.call(who, method.clone(), path, body).await;
        if a.status.as_u16() != want {
            self.fail(
                who,
                &method,
                route,
                format!(
                    "expected {want}, got {}: {}",
                    a.status.as_u16(),
                    short(&a.text)
                ),
            );
        }
        a
    }

    fn fail(&mut self, who: &Actor, method: &Method, route: &str, what: String) {
        self.failures
            .push(format!("[{}] {method} {route}: {what}", who.name));
    }

    /// A 404 must be the answer an id that exists nowhere gets.
    fn same_as_unknown(
        &mut self,
        who: &Actor,
        method: &Method,
        route: &str,
        got: &Answer,
        unknown: &Answer,
    ) {
        if got.status == unknown.status && got.text != unknown.text {
            self.fail(
                who,
                method,
                route,
                format!(
                    "answer differs from an unknown id's: {} vs {}",
                    short(&got.text),
                    short(&unknown.text)
                ),
            );
        }
    }
}

fn short(text: &str) -> String {
    let t: String = text.chars().take(300).collect();
    if t.len() < text.len() {
        format!("{t}…")
    } else {
        t
    }
}

fn ids_of(items: &Value) -> BTreeSet<String> {
    items
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|i| i["id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn org_q(org: Option<&str>) -> String {
    org.map(|o| format!("org_id={o}")).unwrap_or_default()
}

fn with_query(path: &str, query: &str) -> String {
    match (query.is_empty(), path.contains('?')) {
        (true, _) => path.to_string(),
        (false, true) => format!("{path}&{query}"),
        (false, false) => format!("{path}?{query}"),
    }
}

/// A key view as a comparable snapshot: what a refused request must not change.
fn snapshot(mut v: Value) -> Value {
    if let Some(o) = v.as_object_mut() {
        for volatile in ["key", "message", "last_used_at"] {
            o.remove(volatile);
        }
    }
    v
}

async fn admin_post(app: &TestApp, path: &str, body: Value) -> Value {
    let a = app.post(path, &app.admin_key, body).await;
    assert_eq!(
        a.status,
        StatusCode::CREATED,
        "set-up: POST {path}: {}",
        a.text
    );
    a.json()
}

/// Every API key `token` lists (all pages, revoked ones included), or the refusal.
async fn list_keys(app: &TestApp, token: &str, org: Option<&str>) -> Result<Vec<Value>, Answer> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = with_query("/v1/api-keys?include_inactive=true&limit=200", &org_q(org));
        if let Some(c) = &cursor {
            path = format!("{path}&cursor={c}");
        }
        let a = app.get(&path, token).await;
        if a.status != StatusCode::OK {
            return Err(a);
        }
        let v = a.json();
        out.extend(v["items"].as_array().expect("items").iter().cloned());
        match v["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return Ok(out),
        }
    }
}

async fn setup(app: &TestApp) -> World {
    let a = DEFAULT_ORG.to_string();
    let b = admin_post(app, "/v1/orgs", json!({ "name": "beta" })).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut labels = BTreeMap::new();
    labels.insert(a.clone(), "org A".to_string());
    labels.insert(b.clone(), "org B".to_string());

    let mut members = Vec::new();
    let mut actors = Vec::new();
    let mut keys = Vec::new();
    actors.push(Actor {
        name: "admin-key",
        token: app.admin_key.clone(),
        org: None,
        member: None,
        manager: true,
        auth: Authority::admin_key(),
    });

    // Members, each with a key of their own made by the admin key.
    for (name, org, role) in [
        ("A-owner", &a, "owner"),
        ("A-admin", &a, "admin"),
        ("M1", &a, "member"),
        ("M2", &a, "member"),
        ("B-owner", &b, "owner"),
    ] {
        let email = format!("{}@example.test", name.to_lowercase());
        let m = admin_post(
            app,
            "/v1/members",
            json!({ "org_id": org, "email": email, "role": role }),
        )
        .await;
        let mid = m["id"].as_str().unwrap().to_string();
        assert_eq!(m["org_id"], org.as_str());
        labels.insert(mid.clone(), format!("member {name}"));
        members.push((mid.clone(), org.clone()));
        let (kid, secret) = app
            .key(
                &app.admin_key,
                json!({ "org_id": org, "owner_member_id": mid, "name": format!("{name}'s key") }),
            )
            .await;
        labels.insert(kid.clone(), format!("{name}'s key"));
        keys.push(Fixed {
            id: kid,
            org: org.clone(),
            owner: Some(mid.clone()),
        });
        actors.push(Actor {
            name,
            token: secret,
            org: Some(org.clone()),
            member: Some(mid),
            manager: role != "member",
            // A member's key: the member's role, the key's scopes (none here), owner's rank.
            auth: Authority::new(role == "owner", member_role_perms(role), Some(&[])),
        });
    }
    // Keys without an owner: a service token with no permissions, and an ORG-ADMIN key.
    for (name, roles, manager) in [
        ("S", json!([]), false),
        ("ORG-ADMIN-key", json!(["ORG-ADMIN"]), true),
    ] {
        let (kid, secret) = app
            .key(
                &app.admin_key,
                json!({ "org_id": a, "name": name, "roles": roles }),
            )
            .await;
        labels.insert(kid.clone(), format!("{name} (unowned)"));
        keys.push(Fixed {
            id: kid,
            org: a.clone(),
            owner: None,
        });
        let perms = if manager {
            ALL_PERMISSIONS.iter().map(|p| p.to_string()).collect()
        } else {
            BTreeSet::new()
        };
        actors.push(Actor {
            name,
            token: secret,
            org: Some(a.clone()),
            member: None,
            manager,
            // A service token: its roles' permissions, its scopes (none).
            auth: Authority::new(false, perms, Some(&[])),
        });
    }
    // More keys, so that lists have something to leave out.
    let m1 = actors
        .iter()
        .find(|x| x.name == "M1")
        .unwrap()
        .member
        .clone();
    for (label, org, owner) in [("M1's second key", &a, m1), ("B's service token", &b, None)] {
        let (kid, _) = app
            .key(
                &app.admin_key,
                json!({ "org_id": org, "owner_member_id": owner, "name": label }),
            )
            .await;
        labels.insert(kid.clone(), label.to_string());
        keys.push(Fixed {
            id: kid,
            org: org.clone(),
            owner,
        });
    }
    // A role of each organization's own.
    admin_post(
        app,
        "/v1/roles",
        json!({ "org_id": a, "name": "TEAM-A", "permissions": [] }),
    )
    .await;
    admin_post(
        app,
        "/v1/roles",
        json!({ "org_id": b, "name": "TEAM-B", "permissions": [] }),
    )
    .await;

    let projects = app
        .get(&format!("/v1/projects?org_id={b}"), &app.admin_key)
        .await
        .json();
    let b_project = projects["items"][0]["id"]
        .as_str()
        .expect("B's default project")
        .to_string();
    labels.insert(b_project.clone(), "B's default project".into());

    let mut w = World {
        a,
        b,
        actors,
        kinds: vec![],
        keys,
        clients: vec![],
        members,
        labels,
        b_project,
    };
    let owner_of = |who: &str| Some(w.member(who));
    let kinds = vec![
        Kind {
            label: "A: A-owner's",
            org: w.a.clone(),
            owner: owner_of("A-owner"),
            owner_role: Some("owner"),
        },
        Kind {
            label: "A: A-admin's",
            org: w.a.clone(),
            owner: owner_of("A-admin"),
            owner_role: Some("admin"),
        },
        Kind {
            label: "A: M1's",
            org: w.a.clone(),
            owner: owner_of("M1"),
            owner_role: Some("member"),
        },
        Kind {
            label: "A: M2's",
            org: w.a.clone(),
            owner: owner_of("M2"),
            owner_role: Some("member"),
        },
        Kind {
            label: "A: unowned",
            org: w.a.clone(),
            owner: None,
            owner_role: None,
        },
        Kind {
            label: "B: B-owner's",
            org: w.b.clone(),
            owner: owner_of("B-owner"),
            owner_role: Some("owner"),
        },
        Kind {
            label: "B: unowned",
            org: w.b.clone(),
            owner: None,
            owner_role: None,
        },
    ];
    // An OAuth client of every kind, so that lists have something to show and leave out.
    for k in &kinds {
        let c = admin_post(
            app,
            "/v1/oauth-clients",
            json!({ "org_id": k.org, "owner_member_id": k.owner, "name": format!("{} client", k.label) }),
        )
        .await;
        let id = c["client_id"].as_str().unwrap().to_string();
        w.labels.insert(id.clone(), format!("{} client", k.label));
        w.clients.push(Fixed {
            id,
            org: k.org.clone(),
            owner: k.owner.clone(),
        });
    }
    w.kinds = kinds;
    w
}

async fn table(app: TestApp) {
    let w = setup(&app).await;
    let mut t = Table {
        app: &app,
        rows: 0,
        failures: Vec::new(),
    };

    whoami(&mut t, &w).await;
    key_lists(&mut t, &w).await;
    let copies = key_routes(&mut t, &w).await;
    key_creation(&mut t, &w).await;
    client_lists(&mut t, &w).await;
    client_routes(&mut t, &w).await;
    client_creation(&mut t, &w).await;
    members(&mut t, &w).await;
    orgs_projects_services_roles(&mut t, &w).await;
    activity(&mut t, &w).await;
    lists_after_all(&mut t, &w, &copies).await;

    let (backend, rows) = (app.backend(), t.rows);
    assert!(
        t.failures.is_empty(),
        "{} of {rows} visibility rows failed on {backend:?}:\n  {}",
        t.failures.len(),
        t.failures.join("\n  ")
    );
    eprintln!("visibility on {backend:?}: {rows} rows, all as expected");
}
on_both!(
    visibility_table,
    table,
    keyplane_testkit::Options::default().env("KEYPLANE_MAX_ACTIVE_KEYS_PER_ORG", "0")
);

/// `GET /v1/me`: each credential is who it was made to be.
async fn whoami(t: &mut Table<'_>, w: &World) {
    for who in &w.actors {
        let a = t.row(who, Method::GET, "/v1/me", "/v1/me", None, 200).await;
        if a.status != StatusCode::OK {
            continue;
        }
        let v = a.json();
        if v["org_id"].as_str() != who.org.as_deref()
            || v["member_id"].as_str() != who.member.as_deref()
        {
            t.fail(who, &Method::GET, "/v1/me", format!("wrong identity: {v}"));
        }
    }
}

/// `GET /v1/api-keys` (with and without `org_id`) and `GET /auth/api_keys` on the set-up keys.
async fn key_lists(t: &mut Table<'_>, w: &World) {
    for who in &w.actors {
        for asked in [None, Some(w.a.as_str()), Some(w.b.as_str())] {
            let org = asked.unwrap_or(who.home());
            let path = with_query(
                "/v1/api-keys?include_inactive=true&limit=200",
                &org_q(asked),
            );
            let route = with_query(
                "/v1/api-keys",
                &asked
                    .map(|o| format!("org_id={}", w.labels[o]))
                    .unwrap_or_default(),
            );
            let a = t
                .row(
                    who,
                    Method::GET,
                    &path,
                    &route,
                    None,
                    who.keys_status(org, 200),
                )
                .await;
            if a.status == StatusCode::OK {
                let want: BTreeSet<String> = w
                    .keys
                    .iter()
                    .filter(|k| k.org == org && who.sees_key(&k.org, k.owner.as_deref()))
                    .map(|k| k.id.clone())
                    .collect();
                if let Some(d) = w.diff(&want, &ids_of(&a.json()["items"])) {
                    t.fail(who, &Method::GET, &route, d);
                }
            }
        }
        let org = who.home();
        let a = t
            .row(
                who,
                Method::GET,
                "/auth/api_keys",
                "/auth/api_keys",
                None,
                who.keys_status(org, 200),
            )
            .await;
        if a.status == StatusCode::OK {
            let want: BTreeSet<String> = w
                .keys
                .iter()
                .filter(|k| k.org == org && who.sees_key(&k.org, k.owner.as_deref()))
                .map(|k| k.id.clone())
                .collect();
            if let Some(d) = w.diff(&want, &ids_of(&a.json())) {
                t.fail(who, &Method::GET, "/auth/api_keys", d);
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KeyRoute {
    Get,
    Patch,
    Revoke,
    Regenerate,
    Copy,
    Delete,
    SeedDeactivate,
    SeedRegenerate,
}

impl KeyRoute {
    const ALL: [KeyRoute; 8] = [
        KeyRoute::Get,
        KeyRoute::Patch,
        KeyRoute::Revoke,
        KeyRoute::Regenerate,
        KeyRoute::Copy,
        KeyRoute::Delete,
        KeyRoute::SeedDeactivate,
        KeyRoute::SeedRegenerate,
    ];

    fn request(self, id: &str) -> (Method, String, Option<Value>) {
        match self {
            KeyRoute::Get => (Method::GET, format!("/v1/api-keys/{id}"), None),
            KeyRoute::Patch => (
                Method::PATCH,
                format!("/v1/api-keys/{id}"),
                Some(json!({ "name": "renamed" })),
            ),
            KeyRoute::Revoke => (
                Method::POST,
                format!("/v1/api-keys/{id}/revoke"),
                Some(json!({})),
            ),
            KeyRoute::Regenerate => (
                Method::POST,
                format!("/v1/api-keys/{id}/regenerate"),
                Some(json!({})),
            ),
            KeyRoute::Copy => (
                Method::POST,
                format!("/v1/api-keys/{id}/copy"),
                Some(json!({})),
            ),
            KeyRoute::Delete => (Method::DELETE, format!("/v1/api-keys/{id}"), None),
            KeyRoute::SeedDeactivate => (
                Method::DELETE,
                format!("/auth/api_keys/deactivate/{id}"),
                None,
            ),
            KeyRoute::SeedRegenerate => (
                Method::POST,
                "/auth/api_keys".into(),
                Some(json!({ "id": id })),
            ),
        }
    }

    fn ok(self) -> u16 {
        if self == KeyRoute::Copy {
            201
        } else {
            200
        }
    }

    /// What the ceiling asks of the route: nothing (a read), that the target is within the
    /// caller's (it changes or hands over the key), or only that owners touch owners (removal).
    fn want(self, who: &Actor, target: &Authority) -> u16 {
        match self {
            KeyRoute::Get => self.ok(),
            KeyRoute::Patch | KeyRoute::Regenerate | KeyRoute::Copy | KeyRoute::SeedRegenerate => {
                who.ceiling(target, true, self.ok())
            }
            KeyRoute::Revoke | KeyRoute::Delete | KeyRoute::SeedDeactivate => {
                who.ceiling(target, false, self.ok())
            }
        }
    }
}

/// Every key route × every actor × every kind of target (a fresh one per row) and an unknown id.
/// Returns the names the allowed copies were given.
async fn key_routes(t: &mut Table<'_>, w: &World) -> BTreeSet<String> {
    let app = t.app;
    let admin = app.admin_key.clone();
    let mut copies = BTreeSet::new();
    let mut n = 0;
    for route in KeyRoute::ALL {
        for who in &w.actors {
            let (method, path, body) = route.request(GHOST_KEY);
            let label = format!(
                "{path} {}",
                body.as_ref().map(Value::to_string).unwrap_or_default()
            )
            .replace(GHOST_KEY, "{unknown id}");
            let unknown = t.row(who, method, &path, &label, body, 404).await;

            for kind in &w.kinds {
                n += 1;
                let name = format!("t{n}");
                let created = admin_post(
                    app,
                    "/v1/api-keys",
                    json!({ "org_id": kind.org, "owner_member_id": kind.owner, "name": name }),
                )
                .await;
                let (id, secret) = (
                    created["id"].as_str().unwrap().to_string(),
                    created["key"].as_str().unwrap().to_string(),
                );
                let before = snapshot(created);

                let allowed = who.sees_key(&kind.org, kind.owner.as_deref());
                let target = credential_authority(kind.owner_role, true);
                let want = if allowed {
                    route.want(who, &target)
                } else {
                    404
                };
                let (method, path, body) = route.request(&id);
                let label = format!(
                    "{path} {}",
                    body.as_ref().map(Value::to_string).unwrap_or_default()
                )
                .replace(&id, &format!("{{{} key}}", kind.label));
                let got = t.row(who, method.clone(), &path, &label, body, want).await;

                let after = app.get(&format!("/v1/api-keys/{id}"), &admin).await.json();
                let authz = app.authz(Some(&secret), None).await.status;
                if want == 404 || want == 403 {
                    if want == 404 {
                        t.same_as_unknown(who, &method, &label, &got, &unknown);
                    }
                    if snapshot(after.clone()) != before {
                        t.fail(
                            who,
                            &method,
                            &label,
                            format!("not allowed, yet the key changed: {before} → {after}"),
                        );
                    }
                    if authz != StatusCode::OK {
                        t.fail(
                            who,
                            &method,
                            &label,
                            format!("not allowed, yet the key's secret now answers {authz}"),
                        );
                    }
                    continue;
                }
                if got.status.as_u16() != want {
                    continue;
                }
                let v = got.json();
                let mut effect = |ok: bool, what: String| {
                    if !ok {
                        t.failures
                            .push(format!("[{}] {method} {label}: {what}", who.name));
                    }
                };
                match route {
                    KeyRoute::Get => {
                        effect(v["id"] == id.as_str(), format!("answered another key: {v}"))
                    }
                    KeyRoute::Patch => {
                        effect(after["name"] == "renamed", format!("not renamed: {after}"))
                    }
                    KeyRoute::Revoke | KeyRoute::Delete | KeyRoute::SeedDeactivate => {
                        effect(after["is_active"] == false, format!("not revoked: {after}"));
                        effect(
                            authz == StatusCode::UNAUTHORIZED,
                            format!("the revoked secret answers {authz}"),
                        );
                    }
                    KeyRoute::Regenerate | KeyRoute::SeedRegenerate => {
                        effect(
                            authz == StatusCode::UNAUTHORIZED,
                            format!("the old secret answers {authz}"),
                        );
                        let new = v["key"].as_str().unwrap_or_default().to_string();
                        let new_status = app.authz(Some(&new), None).await.status;
                        effect(
                            new_status == StatusCode::OK,
                            format!("the new secret answers {new_status}"),
                        );
                    }
                    KeyRoute::Copy => {
                        copies.insert(format!("{name} (copy)"));
                        effect(v["id"] != id.as_str(), format!("not a new key: {v}"));
                        effect(
                            v["org_id"] == kind.org.as_str(),
                            format!("the copy left the organization: {v}"),
                        );
                        effect(
                            v["name"] == format!("{name} (copy)").as_str(),
                            format!("unexpected name: {v}"),
                        );
                        if kind.owner.is_some() {
                            effect(
                                v["owner_member_id"].as_str() == kind.owner.as_deref(),
                                format!("the copy changed owner: {v}"),
                            );
                        }
                    }
                }
            }
        }
    }
    copies
}

/// `POST /v1/api-keys` and `POST /auth/api_keys`: where a key may be made, and for whom.
async fn key_creation(t: &mut Table<'_>, w: &World) {
    for who in &w.actors {
        for asked in [None, Some(w.a.as_str()), Some(w.b.as_str())] {
            let org = asked.unwrap_or(who.home());
            let route = format!(
                "/v1/api-keys {{org_id: {}}}",
                asked.map_or("-", |o| w.labels[o].as_str())
            );
            let a = t
                .row(
                    who,
                    Method::POST,
                    "/v1/api-keys",
                    &route,
                    Some(json!({ "org_id": asked, "name": "made" })),
                    who.keys_status(org, 201),
                )
                .await;
            if a.status == StatusCode::CREATED {
                let v = a.json();
                if v["org_id"] != org || v["owner_member_id"].as_str() != who.member.as_deref() {
                    t.fail(
                        who,
                        &Method::POST,
                        &route,
                        format!("made in the wrong place or for the wrong owner: {v}"),
                    );
                }
            }
        }
        let a = t
            .row(
                who,
                Method::POST,
                "/auth/api_keys",
                "/auth/api_keys {}",
                Some(json!({})),
                who.keys_status(who.home(), 201),
            )
            .await;
        if a.status == StatusCode::CREATED {
            let v = a.json();
            if v["org_id"] != who.home() || v["owner_member_id"].as_str() != who.member.as_deref() {
                t.fail(
                    who,
                    &Method::POST,
                    "/auth/api_keys {}",
                    format!("made in the wrong place or for the wrong owner: {v}"),
                );
            }
        }
    }

    // Owners named in the body: a member only ever makes keys of their own, and a member of
    // another organization looks exactly like one that does not exist.
    let (m1, m2, ob) = (w.member("M1"), w.member("M2"), w.member("B-owner"));
    let rows: Vec<(&str, Value, &str, u16, Option<Value>)> = vec![
        (
            "M1",
            json!({ "owner_member_id": m1 }),
            "owner: M1",
            201,
            None,
        ),
        (
            "M1",
            json!({ "owner_member_id": m2 }),
            "owner: M2",
            403,
            Some(json!({ "owner_member_id": GHOST_MEMBER })),
        ),
        (
            "M1",
            json!({ "owner_member_id": ob }),
            "owner: B-owner",
            403,
            Some(json!({ "owner_member_id": GHOST_MEMBER })),
        ),
        (
            "A-owner",
            json!({ "owner_member_id": m1 }),
            "owner: M1",
            201,
            None,
        ),
        (
            "A-owner",
            json!({ "owner_member_id": ob }),
            "owner: B-owner",
            422,
            Some(json!({ "owner_member_id": GHOST_MEMBER })),
        ),
        (
            "ORG-ADMIN-key",
            json!({ "owner_member_id": ob }),
            "owner: B-owner",
            422,
            Some(json!({ "owner_member_id": GHOST_MEMBER })),
        ),
        (
            "B-owner",
            json!({ "owner_member_id": m1 }),
            "owner: M1",
            422,
            Some(json!({ "owner_member_id": GHOST_MEMBER })),
        ),
        (
            "A-owner",
            json!({ "project_id": w.b_project }),
            "project: B's",
            404,
            Some(json!({ "project_id": GHOST_PROJECT })),
        ),
        (
            "admin-key",
            json!({ "org_id": w.a, "project_id": w.b_project }),
            "org A, project: B's",
            404,
            Some(json!({ "org_id": w.a, "project_id": GHOST_PROJECT })),
        ),
        (
            "M1",
            json!({ "roles": ["ORG-ADMIN"] }),
            "roles: ORG-ADMIN",
            403,
            None,
        ),
        (
            "A-admin",
            json!({ "roles": ["ORG-ADMIN"] }),
            "roles: ORG-ADMIN",
            201,
            None,
        ),
    ];
    for (name, body, what, want, unknown_body) in rows {
        let who = w.actor(name);
        let route = format!("/v1/api-keys {{{what}}}");
        let a = t
            .row(who, Method::POST, "/v1/api-keys", &route, Some(body), want)
            .await;
        if let Some(ub) = unknown_body {
            let unknown = t.call(who, Method::POST, "/v1/api-keys", Some(ub)).await;
            if a.status != unknown.status || a.text != unknown.text {
                t.fail(
                    who,
                    &Method::POST,
                    &route,
                    format!(
                        "answer differs from an unknown id's: {} vs {} {}",
                        short(&a.text),
                        unknown.status,
                        short(&unknown.text)
                    ),
                );
            }
        }
    }

    // Owners named in the body, within the organization: the key acts with its owner's role,
    // so it is within the maker's ceiling only if that role is (only owners make owners' keys).
    for who in w.actors.iter().filter(|a| a.in_org(&w.a)) {
        for (owner, role) in [("A-owner", "owner"), ("A-admin", "admin"), ("M1", "member")] {
            let owner_id = w.member(owner);
            let want = if !who.manager && who.member.as_deref() != Some(owner_id.as_str()) {
                // No key permission, or a member naming someone else.
                403
            } else {
                who.ceiling(&credential_authority(Some(role), true), true, 201)
            };
            let route = format!("/v1/api-keys {{org_id: org A, owner: {owner}}}");
            t.row(
                who,
                Method::POST,
                "/v1/api-keys",
                &route,
                Some(json!({ "org_id": w.a, "owner_member_id": owner_id, "name": "named" })),
                want,
            )
            .await;
        }
    }

    // A member cannot give their own key a role holding more than they hold.
    let m1_actor = w.actor("M1");
    let (id, _) = t.app.key(&m1_actor.token, json!({ "name": "mine" })).await;
    let path = format!("/v1/api-keys/{id}");
    t.row(
        m1_actor,
        Method::PATCH,
        &path,
        "/v1/api-keys/{M1's key} {roles: ORG-ADMIN}",
        Some(json!({ "roles": ["ORG-ADMIN"] })),
        403,
    )
    .await;
}

/// Member routes: lists, gets, creates, role changes and removals.
async fn members(t: &mut Table<'_>, w: &World) {
    let app = t.app;
    let admin = app.admin_key.clone();

    for who in &w.actors {
        for asked in [None, Some(w.a.as_str()), Some(w.b.as_str())] {
            let org = asked.unwrap_or(who.home());
            let route = with_query(
                "/v1/members",
                &asked
                    .map(|o| format!("org_id={}", w.labels[o]))
                    .unwrap_or_default(),
            );
            let want = if who.in_org(org) { 200 } else { 404 };
            let a = t
                .row(
                    who,
                    Method::GET,
                    &with_query("/v1/members", &org_q(asked)),
                    &route,
                    None,
                    want,
                )
                .await;
            if a.status == StatusCode::OK {
                let expected: BTreeSet<String> = w
                    .members
                    .iter()
                    .filter(|(id, o)| {
                        *o == org && (who.manager || who.member.as_deref() == Some(id.as_str()))
                    })
                    .map(|(id, _)| id.clone())
                    .collect();
                if let Some(d) = w.diff(&expected, &ids_of(&a.json()["items"])) {
                    t.fail(who, &Method::GET, &route, d);
                }
            }
        }
        let unknown = t
            .row(
                who,
                Method::GET,
                &format!("/v1/members/{GHOST_MEMBER}"),
                "/v1/members/{unknown id}",
                None,
                404,
            )
            .await;
        for (id, org) in &w.members {
            let route = format!("/v1/members/{{{}}}", w.labels[id]);
            let sees =
                who.in_org(org) && (who.manager || who.member.as_deref() == Some(id.as_str()));
            let a = t
                .row(
                    who,
                    Method::GET,
                    &format!("/v1/members/{id}"),
                    &route,
                    None,
                    if sees { 200 } else { 404 },
                )
                .await;
            if sees && a.status == StatusCode::OK && a.json()["id"] != id.as_str() {
                t.fail(
                    who,
                    &Method::GET,
                    &route,
                    format!("answered another member: {}", a.text),
                );
            } else if !sees {
                t.same_as_unknown(who, &Method::GET, &route, &a, &unknown);
            }
        }
    }

    // Creating members (only org-wide managers; other organizations do not exist).
    let mut n = 0;
    for who in &w.actors {
        for asked in [None, Some(w.a.as_str()), Some(w.b.as_str())] {
            n += 1;
            let org = asked.unwrap_or(who.home());
            let route = format!(
                "/v1/members {{org_id: {}, role: member}}",
                asked.map_or("-", |o| w.labels[o].as_str())
            );
            let body = json!({ "org_id": asked, "email": format!("new{n}@example.test"), "role": "member" });
            // A member may use every scope: within no API key's ceiling.
            let want = match who.manages(org, 201) {
                201 => who.ceiling(&member_authority("member"), true, 201),
                other => other,
            };
            let a = t
                .row(who, Method::POST, "/v1/members", &route, Some(body), want)
                .await;
            if a.status == StatusCode::CREATED && a.json()["org_id"] != org {
                t.fail(
                    who,
                    &Method::POST,
                    &route,
                    format!("made in the wrong organization: {}", a.text),
                );
            }
        }
    }
    for name in ["admin-key", "A-owner", "A-admin", "M1"] {
        n += 1;
        let who = w.actor(name);
        let want = match who.manages(DEFAULT_ORG, 201) {
            201 => who.ceiling(&member_authority("owner"), true, 201),
            other => other,
        };
        let body = json!({ "email": format!("new{n}@example.test"), "role": "owner" });
        t.row(
            who,
            Method::POST,
            "/v1/members",
            "/v1/members {role: owner}",
            Some(body),
            want,
        )
        .await;
    }

    // Changing a role and removing: a fresh member per row, in A and in B.
    for (method, ok) in [(Method::PATCH, 200), (Method::DELETE, 204)] {
        let body = (method == Method::PATCH).then(|| json!({ "role": "admin" }));
        for who in &w.actors {
            let path = format!("/v1/members/{GHOST_MEMBER}");
            let unknown = t
                .row(
                    who,
                    method.clone(),
                    &path,
                    "/v1/members/{unknown id}",
                    body.clone(),
                    404,
                )
                .await;
            for (org, label) in [(&w.a, "a member of A"), (&w.b, "a member of B")] {
                n += 1;
                let m = admin_post(app, "/v1/members", json!({ "org_id": org, "email": format!("target{n}@example.test"), "role": "member" })).await;
                let id = m["id"].as_str().unwrap().to_string();
                let route = format!("/v1/members/{{{label}}}");
                // The target is a plain member; a role change must have them within the caller's
                // ceiling before and after (an admin: every scope), a removal only owners' rule.
                let want = if !(who.in_org(org) && who.manager) {
                    404
                } else if method == Method::PATCH {
                    match who.ceiling(&member_authority("member"), true, ok) {
                        200 => who.ceiling(&member_authority("admin"), true, ok),
                        other => other,
                    }
                } else {
                    who.ceiling(&member_authority("member"), false, ok)
                };
                let a = t
                    .row(
                        who,
                        method.clone(),
                        &format!("/v1/members/{id}"),
                        &route,
                        body.clone(),
                        want,
                    )
                    .await;
                let after = app.get(&format!("/v1/members/{id}"), &admin).await;
                if want == 404 || want == 403 {
                    if want == 404 {
                        t.same_as_unknown(who, &method, &route, &a, &unknown);
                    }
                    if after.status != StatusCode::OK || after.json()["role"] != "member" {
                        t.fail(
                            who,
                            &method,
                            &route,
                            format!("not allowed, yet the member changed: {}", after.text),
                        );
                    }
                } else if a.status.as_u16() == want {
                    let done = if method == Method::PATCH {
                        after.status == StatusCode::OK && after.json()["role"] == "admin"
                    } else {
                        after.status == StatusCode::NOT_FOUND
                    };
                    if !done {
                        t.fail(
                            who,
                            &method,
                            &route,
                            format!(
                                "answered {want} but the member is: {} {}",
                                after.status, after.text
                            ),
                        );
                    }
                }
            }
        }
    }

    // A member may see themself, but not promote or remove themself.
    let m1 = w.actor("M1");
    let path = format!("/v1/members/{}", w.member("M1"));
    t.row(
        m1,
        Method::PATCH,
        &path,
        "/v1/members/{M1 themself} {role: owner}",
        Some(json!({ "role": "owner" })),
        403,
    )
    .await;
    t.row(
        m1,
        Method::DELETE,
        &path,
        "/v1/members/{M1 themself}",
        None,
        403,
    )
    .await;
    let after = app.get(&path, &admin).await;
    if after.status != StatusCode::OK || after.json()["role"] != "member" {
        t.fail(
            m1,
            &Method::PATCH,
            "/v1/members/{M1 themself}",
            format!("refused, yet M1 is now: {}", after.text),
        );
    }
}

/// Organizations, projects, services and roles.
async fn orgs_projects_services_roles(t: &mut Table<'_>, w: &World) {
    let app = t.app;
    let admin = w.actor("admin-key").clone();
    let mut n = 0;

    // Organizations: the admin key sees and makes them all; anyone else sees their own only.
    for who in &w.actors {
        let a = t
            .row(who, Method::GET, "/v1/orgs", "/v1/orgs", None, 200)
            .await;
        if a.status == StatusCode::OK {
            let got = ids_of(&a.json()["items"]);
            let ok = match &who.org {
                None => got.contains(&w.a) && got.contains(&w.b),
                Some(own) => got == BTreeSet::from([own.clone()]),
            };
            if !ok {
                t.fail(
                    who,
                    &Method::GET,
                    "/v1/orgs",
                    format!("sees {}", w.show(&got)),
                );
            }
        }
        n += 1;
        let want = if who.org.is_none() { 201 } else { 403 };
        t.row(
            who,
            Method::POST,
            "/v1/orgs",
            "/v1/orgs",
            Some(json!({ "name": format!("org-{n}") })),
            want,
        )
        .await;
    }

    // Projects: anyone in an organization lists its projects; managers make them.
    let mut truth = BTreeMap::new();
    for org in [&w.a, &w.b] {
        let items = app
            .get(&format!("/v1/projects?org_id={org}"), &admin.token)
            .await
            .json()["items"]
            .clone();
        truth.insert(org.clone(), ids_of(&items));
    }
    for who in &w.actors {
        for asked in [None, Some(w.a.as_str()), Some(w.b.as_str())] {
            let org = asked.unwrap_or(who.home());
            let route = with_query(
                "/v1/projects",
                &asked
                    .map(|o| format!("org_id={}", w.labels[o]))
                    .unwrap_or_default(),
            );
            let want = if who.in_org(org) { 200 } else { 404 };
            let a = t
                .row(
                    who,
                    Method::GET,
                    &with_query("/v1/projects", &org_q(asked)),
                    &route,
                    None,
                    want,
                )
                .await;
            if a.status == StatusCode::OK {
                if let Some(d) = w.diff(&truth[org], &ids_of(&a.json()["items"])) {
                    t.fail(who, &Method::GET, &route, d);
                }
            }
        }
    }
    for who in &w.actors {
        for asked in [None, Some(w.a.as_str()), Some(w.b.as_str())] {
            n += 1;
            let org = asked.unwrap_or(who.home());
            let route = format!(
                "/v1/projects {{org_id: {}}}",
                asked.map_or("-", |o| w.labels[o].as_str())
            );
            let body = json!({ "org_id": asked, "name": format!("project-{n}") });
            let a = t
                .row(
                    who,
                    Method::POST,
                    "/v1/projects",
                    &route,
                    Some(body),
                    who.manages(org, 201),
                )
                .await;
            if a.status == StatusCode::CREATED && a.json()["org_id"] != org {
                t.fail(
                    who,
                    &Method::POST,
                    &route,
                    format!("made in the wrong organization: {}", a.text),
                );
            }
        }
    }

    // Services are deployment-wide: everyone reads them, only the admin key registers one.
    for who in &w.actors {
        t.row(who, Method::GET, "/v1/services", "/v1/services", None, 200)
            .await;
        n += 1;
        let body = json!({ "name": format!("svc-{n}"), "scopes": [format!("svc-{n}:read")] });
        let want = if who.org.is_none() { 201 } else { 403 };
        t.row(
            who,
            Method::POST,
            "/v1/services",
            "/v1/services",
            Some(body),
            want,
        )
        .await;
    }

    // Roles: the built-in ones and one's own organization's, never another's.
    for who in &w.actors {
        for asked in [None, Some(w.a.as_str()), Some(w.b.as_str())] {
            let org = asked.unwrap_or(who.home());
            let route = with_query(
                "/v1/roles",
                &asked
                    .map(|o| format!("org_id={}", w.labels[o]))
                    .unwrap_or_default(),
            );
            let want = if who.in_org(org) { 200 } else { 404 };
            let a = t
                .row(
                    who,
                    Method::GET,
                    &with_query("/v1/roles", &org_q(asked)),
                    &route,
                    None,
                    want,
                )
                .await;
            if a.status == StatusCode::OK {
                let v = a.json();
                let own: BTreeSet<String> = v["items"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|r| r["built_in"] == false)
                    .map(|r| {
                        format!(
                            "{} in {}",
                            r["name"].as_str().unwrap_or("?"),
                            r["org_id"].as_str().unwrap_or("?")
                        )
                    })
                    .collect();
                let expected = BTreeSet::from([if *org == w.a {
                    format!("TEAM-A in {}", w.a)
                } else {
                    format!("TEAM-B in {}", w.b)
                }]);
                if own != expected {
                    t.fail(
                        who,
                        &Method::GET,
                        &route,
                        format!("organization roles {own:?}, expected {expected:?}"),
                    );
                }
            }
        }
    }
    for who in &w.actors {
        for asked in [None, Some(w.a.as_str()), Some(w.b.as_str())] {
            n += 1;
            let org = asked.unwrap_or(who.home());
            let route = format!(
                "/v1/roles {{org_id: {}}}",
                asked.map_or("-", |o| w.labels[o].as_str())
            );
            let body = json!({ "org_id": asked, "name": format!("ROLE-{n}"), "permissions": [] });
            let a = t
                .row(
                    who,
                    Method::POST,
                    "/v1/roles",
                    &route,
                    Some(body),
                    who.manages(org, 201),
                )
                .await;
            if a.status == StatusCode::CREATED && a.json()["org_id"] != org {
                t.fail(
                    who,
                    &Method::POST,
                    &route,
                    format!("made in the wrong organization: {}", a.text),
                );
            }
        }
    }
}

/// The activity log: org-wide managers read their own organization's events, nobody another's.
async fn activity(t: &mut Table<'_>, w: &World) {
    for who in &w.actors {
        for asked in [None, Some(w.a.as_str()), Some(w.b.as_str())] {
            let org = asked.unwrap_or(who.home());
            let route = with_query(
                "/v1/activity",
                &asked
                    .map(|o| format!("org_id={}", w.labels[o]))
                    .unwrap_or_default(),
            );
            let a = t
                .row(
                    who,
                    Method::GET,
                    &with_query("/v1/activity?limit=200", &org_q(asked)),
                    &route,
                    None,
                    who.manages(org, 200),
                )
                .await;
            if a.status != StatusCode::OK || (who.org.is_none() && asked.is_none()) {
                continue;
            }
            let v = a.json();
            let items = v["items"].as_array().unwrap();
            let foreign: Vec<&Value> = items.iter().filter(|e| e["org_id"] != org).collect();
            if items.is_empty() || !foreign.is_empty() {
                t.fail(
                    who,
                    &Method::GET,
                    &route,
                    format!(
                        "{} events, of which {} not of {}: {:?}",
                        items.len(),
                        foreign.len(),
                        w.labels[org],
                        foreign.first()
                    ),
                );
            }
        }
        let want = if who.manager { 200 } else { 403 };
        t.row(
            who,
            Method::GET,
            "/v1/activity/verify",
            "/v1/activity/verify",
            None,
            want,
        )
        .await;
    }
    // Filtering by another organization's ids finds nothing.
    let k_ob = w
        .keys
        .iter()
        .find(|k| k.org == w.b && k.owner.is_some())
        .unwrap()
        .id
        .clone();
    let k_m1 = w
        .keys
        .iter()
        .find(|k| k.owner.as_deref() == Some(w.member("M1").as_str()))
        .unwrap()
        .id
        .clone();
    for (name, target, label, want_some) in [
        ("admin-key", &k_ob, "B-owner's key", true),
        ("A-owner", &k_ob, "B-owner's key", false),
        ("ORG-ADMIN-key", &k_ob, "B-owner's key", false),
        ("B-owner", &k_m1, "M1's key", false),
    ] {
        let who = w.actor(name);
        let route = format!("/v1/activity?target={{{label}}}");
        let a = t
            .row(
                who,
                Method::GET,
                &format!("/v1/activity?target={target}"),
                &route,
                None,
                200,
            )
            .await;
        if a.status == StatusCode::OK {
            let n = a.json()["items"].as_array().map_or(0, Vec::len);
            if (n > 0) != want_some {
                t.fail(who, &Method::GET, &route, format!("{n} events"));
            }
        }
    }
}

/// After everything, with hundreds of keys: lists still hold exactly what each actor may see
/// (checked against the admin key's view, across pages), and no refused copy was made.
async fn lists_after_all(t: &mut Table<'_>, w: &World, copies: &BTreeSet<String>) {
    let app = t.app;
    let mut all: Vec<Value> = Vec::new();
    for org in [&w.a, &w.b] {
        all.extend(
            list_keys(app, &app.admin_key, Some(org))
                .await
                .expect("the admin key lists keys"),
        );
    }
    let admin = w.actor("admin-key");
    let made: BTreeSet<String> = all
        .iter()
        .filter_map(|k| k["name"].as_str())
        .filter(|n| n.ends_with(" (copy)"))
        .map(str::to_string)
        .collect();
    if made != *copies {
        t.fail(
            admin,
            &Method::POST,
            "/v1/api-keys/{id}/copy",
            format!("copies made {made:?}, expected only the allowed ones {copies:?}"),
        );
    }
    for who in w.actors.iter().filter(|a| a.org.is_some()) {
        let org = who.home();
        let want: BTreeSet<String> = all
            .iter()
            .filter(|k| k["org_id"] == org && who.sees_key(org, k["owner_member_id"].as_str()))
            .map(|k| k["id"].as_str().unwrap().to_string())
            .collect();
        t.rows += 2;
        match list_keys(app, &who.token, None).await {
            Ok(items) if who.keys_status(org, 200) == 200 => {
                let got: BTreeSet<String> = items
                    .iter()
                    .map(|k| k["id"].as_str().unwrap().to_string())
                    .collect();
                if let Some(d) = w.diff(&want, &got) {
                    t.fail(who, &Method::GET, "/v1/api-keys (all pages, at the end)", d);
                }
            }
            Ok(items) => t.fail(
                who,
                &Method::GET,
                "/v1/api-keys (at the end)",
                format!("expected a refusal, got {} keys", items.len()),
            ),
            Err(a) if who.keys_status(org, 200) == 200 => t.fail(
                who,
                &Method::GET,
                "/v1/api-keys (at the end)",
                format!("{} {}", a.status, short(&a.text)),
            ),
            Err(_) => {}
        }
        let a = t.call(who, Method::GET, "/auth/api_keys", None).await;
        if a.status.as_u16() != who.keys_status(org, 200) {
            t.fail(
                who,
                &Method::GET,
                "/auth/api_keys (at the end)",
                format!("answered {}", a.status),
            );
        } else if a.status == StatusCode::OK {
            if let Some(d) = w.diff(&want, &ids_of(&a.json())) {
                t.fail(who, &Method::GET, "/auth/api_keys (at the end)", d);
            }
        }
    }
}

// ----- OAuth clients -----

/// `GET /v1/oauth-clients` (with and without `org_id`) on the set-up clients: the same
/// visibility as API keys (a member: their own; org-wide managers: all of their organization).
async fn client_lists(t: &mut Table<'_>, w: &World) {
    for who in &w.actors {
        for asked in [None, Some(w.a.as_str()), Some(w.b.as_str())] {
            let org = asked.unwrap_or(who.home());
            let path = with_query("/v1/oauth-clients?limit=200", &org_q(asked));
            let route = with_query(
                "/v1/oauth-clients",
                &asked
                    .map(|o| format!("org_id={}", w.labels[o]))
                    .unwrap_or_default(),
            );
            let a = t
                .row(
                    who,
                    Method::GET,
                    &path,
                    &route,
                    None,
                    who.keys_status(org, 200),
                )
                .await;
            if a.status == StatusCode::OK {
                let want: BTreeSet<String> = w
                    .clients
                    .iter()
                    .filter(|c| c.org == org && who.sees_key(&c.org, c.owner.as_deref()))
                    .map(|c| c.id.clone())
                    .collect();
                let got: BTreeSet<String> = a.json()["items"]
                    .as_array()
                    .map(|i| {
                        i.iter()
                            .filter_map(|c| c["client_id"].as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default();
                if let Some(d) = w.diff(&want, &got) {
                    t.fail(who, &Method::GET, &route, d);
                }
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ClientRoute {
    Get,
    Patch,
    Delete,
    AddSecret,
    RetireSecret,
    IssueToken,
}

impl ClientRoute {
    const ALL: [ClientRoute; 6] = [
        ClientRoute::Get,
        ClientRoute::Patch,
        ClientRoute::Delete,
        ClientRoute::AddSecret,
        ClientRoute::RetireSecret,
        ClientRoute::IssueToken,
    ];

    /// The request; a rename gets `name` (client names are unique within a project).
    fn request(self, id: &str, secret_id: &str, name: &str) -> (Method, String, Option<Value>) {
        let base = format!("/v1/oauth-clients/{id}");
        match self {
            ClientRoute::Get => (Method::GET, base, None),
            ClientRoute::Patch => (Method::PATCH, base, Some(json!({ "name": name }))),
            ClientRoute::Delete => (Method::DELETE, base, None),
            ClientRoute::AddSecret => (Method::POST, format!("{base}/secrets"), Some(json!({}))),
            ClientRoute::RetireSecret => {
                (Method::DELETE, format!("{base}/secrets/{secret_id}"), None)
            }
            ClientRoute::IssueToken => (Method::POST, format!("{base}/tokens"), Some(json!({}))),
        }
    }

    fn ok(self) -> u16 {
        match self {
            ClientRoute::Get | ClientRoute::Patch => 200,
            ClientRoute::AddSecret | ClientRoute::IssueToken => 201,
            ClientRoute::Delete | ClientRoute::RetireSecret => 204,
        }
    }

    /// As for keys: reads need nothing more, changes and hand-overs the ceiling, deletion only
    /// that owners touch owners.
    fn want(self, who: &Actor, target: &Authority) -> u16 {
        match self {
            ClientRoute::Get => self.ok(),
            ClientRoute::Delete => who.ceiling(target, false, self.ok()),
            _ => who.ceiling(target, true, self.ok()),
        }
    }
}

/// Every client route × every actor × every kind of client (a fresh one per row) and an
/// unknown client id.
async fn client_routes(t: &mut Table<'_>, w: &World) {
    let app = t.app;
    let admin = app.admin_key.clone();
    let ghost = ghost_client();
    let mut n = 0;
    for route in ClientRoute::ALL {
        for who in &w.actors {
            let (method, path, body) = route.request(&ghost, GHOST_SECRET, "renamed");
            let label = format!(
                "{path} {}",
                body.as_ref().map(Value::to_string).unwrap_or_default()
            )
            .replace(&ghost, "{unknown client}")
            .replace(GHOST_SECRET, "{secret}");
            let unknown = t.row(who, method, &path, &label, body, 404).await;

            for kind in &w.kinds {
                n += 1;
                let created = admin_post(
                    app,
                    "/v1/oauth-clients",
                    json!({ "org_id": kind.org, "owner_member_id": kind.owner, "name": format!("c{n}") }),
                )
                .await;
                let id = created["client_id"].as_str().unwrap().to_string();
                let first_secret = created["secret_id"].as_str().unwrap().to_string();
                if route == ClientRoute::RetireSecret {
                    // A second secret, so that retiring the first leaves the client usable.
                    admin_post(app, &format!("/v1/oauth-clients/{id}/secrets"), json!({})).await;
                }
                let view_path = format!("/v1/oauth-clients/{id}");
                let before = client_snapshot(app.get(&view_path, &admin).await.json());

                let allowed = who.sees_key(&kind.org, kind.owner.as_deref());
                let want = if allowed {
                    route.want(who, &credential_authority(kind.owner_role, false))
                } else {
                    404
                };
                let renamed = format!("renamed-{n}");
                let (method, path, body) = route.request(&id, &first_secret, &renamed);
                let label = format!(
                    "{path} {}",
                    body.as_ref().map(Value::to_string).unwrap_or_default()
                )
                .replace(&id, &format!("{{{} client}}", kind.label))
                .replace(&first_secret, "{secret}")
                .replace(&renamed, "renamed");
                let got = t.row(who, method.clone(), &path, &label, body, want).await;
                let after = app.get(&view_path, &admin).await;

                if want == 404 || want == 403 {
                    if want == 404 {
                        t.same_as_unknown(who, &method, &label, &got, &unknown);
                    }
                    if after.status != StatusCode::OK || client_snapshot(after.json()) != before {
                        t.fail(
                            who,
                            &method,
                            &label,
                            format!(
                                "not allowed, yet the client changed: {before} → {} {}",
                                after.status,
                                short(&after.text)
                            ),
                        );
                    }
                    continue;
                }
                if got.status.as_u16() != want {
                    continue;
                }
                let done = match route {
                    ClientRoute::Get => got.json()["client_id"] == id.as_str(),
                    ClientRoute::Patch => after.json()["name"] == renamed.as_str(),
                    ClientRoute::Delete => after.status == StatusCode::NOT_FOUND,
                    ClientRoute::AddSecret => {
                        let secret = got.json()["client_secret"]
                            .as_str()
                            .unwrap_or("")
                            .to_string();
                        token(app, &id, &secret).await.status == StatusCode::OK
                    }
                    ClientRoute::RetireSecret => !after.text.contains(&first_secret),
                    ClientRoute::IssueToken => {
                        let at = got.json()["access_token"]
                            .as_str()
                            .unwrap_or("")
                            .to_string();
                        app.authz(Some(&at), None).await.status == StatusCode::OK
                    }
                };
                if !done {
                    t.fail(
                        who,
                        &method,
                        &label,
                        format!(
                            "answered {want}, yet no effect: {} / the client: {} {}",
                            short(&got.text),
                            after.status,
                            short(&after.text)
                        ),
                    );
                }
            }
        }
    }
}

/// `POST /v1/oauth-clients`: where a client may be made, and for whom (a member: themself).
async fn client_creation(t: &mut Table<'_>, w: &World) {
    let mut n = 0;
    for who in &w.actors {
        for asked in [None, Some(w.a.as_str()), Some(w.b.as_str())] {
            n += 1;
            let org = asked.unwrap_or(who.home());
            let route = format!(
                "/v1/oauth-clients {{org_id: {}}}",
                asked.map_or("-", |o| w.labels[o].as_str())
            );
            let a = t
                .row(
                    who,
                    Method::POST,
                    "/v1/oauth-clients",
                    &route,
                    Some(json!({ "org_id": asked, "name": format!("made-{n}") })),
                    who.keys_status(org, 201),
                )
                .await;
            if a.status == StatusCode::CREATED {
                let v = a.json();
                if v["org_id"] != org || v["owner_member_id"].as_str() != who.member.as_deref() {
                    t.fail(
                        who,
                        &Method::POST,
                        &route,
                        format!("made in the wrong place or for the wrong owner: {v}"),
                    );
                }
            }
        }
    }
}
