//! The ceiling (docs/authorization.md, issue 10) as a table: actor × target × operation →
//! status.
//!
//! One organization with a service `svc` (`svc:read`, `svc:write`), an owner, an admin and a
//! plain member, and these callers:
//!
//! | actor | what it is | permissions | scopes | rank |
//! |---|---|---|---|---|
//! | `admin-key` | the admin key | all | all | above owners |
//! | `owner-key` | the owner's key, scopes read+write | all | read, write | owner |
//! | `admin-key-of-admin` | the admin member's key, read+write | all | read, write | — |
//! | `plain-key` | the plain member's key, read | `keys:own` | read | — |
//! | `keys-manager` | service token, role with only `keys:manage`, read | `keys:manage` | read | — |
//! | `clients-manager` | service token, role with only `clients:manage`, read | `clients:manage` | read | — |
//! | `org-admin` | service token with `ORG-ADMIN`, no scopes | all | none | — |
//! | console sessions of the admin key, the owner and the admin member (member routes only) |
//!
//! Every expected status is computed from the spec's rule, written once in
//! [`Authority::within`] / [`Authority::may_remove`] (`support.rs`), never special-cased: first
//! reach (404 for what the caller may not see, as an unknown id), then the permission (403), then
//! the ceiling (403 `forbidden`). Each row gets a fresh target; a refused row must leave its
//! target exactly as it was (read back with the admin key) and must create nothing; an allowed
//! row must answer 2xx and have its effect (a regenerated secret works at `/v1/authz`, a new
//! client secret obtains a token, ...). So the table fails both ways.
//!
//! The cases issue 10 names are rows here (labelled "issue 10"):
//! - a credential with only `keys:manage` creates a key with `owner_member_id` = the owner
//!   (that key would act with the owner's role: all eight permissions at `GET /v1/me`) → 403;
//! - an admin member's key regenerates the owner's key → 403;
//! - a key holding only `svc:read` creates a key, or a client, with `svc:write` → 403;
//! - a member acting through a key holding only `svc:read` PATCHes their other key to
//!   `svc:write` → 403.
//!
//! Mismatches are collected and all reported at the end.

use crate::console::Console;
use crate::support::*;
use keyplane_testkit::reqwest::{Method, StatusCode};
use keyplane_testkit::{json, Answer, TestApp};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

/// A key to make: its label, owner, scopes and roles.
type KeyCase<'a> = (String, Option<Who>, Vec<&'a str>, Vec<&'a str>);

const R: &str = "svc:read";
const W: &str = "svc:write";
const ORG: &str = "org_default";
const KEYS_MANAGER: &str = "KEYS-MANAGER";
const CLIENTS_MANAGER: &str = "CLIENTS-MANAGER";
const ORG_ADMIN: &str = "ORG-ADMIN";

/// The members of the organization that own things.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Who {
    Owner,
    Admin,
    Plain,
}

impl Who {
    fn role(self) -> &'static str {
        match self {
            Who::Owner => "owner",
            Who::Admin => "admin",
            Who::Plain => "member",
        }
    }
}

/// The permissions of the roles keys carry here.
fn role_perms(role: &str) -> BTreeSet<String> {
    match role {
        KEYS_MANAGER => set(&["keys:manage"]),
        CLIENTS_MANAGER => set(&["clients:manage"]),
        ORG_ADMIN => set(&ALL_PERMISSIONS),
        other => panic!("no role {other} in this world"),
    }
}

fn roles_perms(roles: &[&str]) -> BTreeSet<String> {
    roles.iter().flat_map(|r| role_perms(r)).collect()
}

/// The authority of an API key (spec: "API key of member M" / "service token").
fn key_authority(owner: Option<Who>, scopes: &[&str], roles: &[&str]) -> Authority {
    let mut perms = owner
        .map(|w| member_role_perms(w.role()))
        .unwrap_or_default();
    perms.extend(roles_perms(roles));
    Authority::new(owner == Some(Who::Owner), perms, Some(scopes))
}

/// The authority of an OAuth client: no permissions, its scopes, an owner's if its member is.
fn client_authority(owner: Option<Who>, scopes: &[&str]) -> Authority {
    Authority::new(owner == Some(Who::Owner), BTreeSet::new(), Some(scopes))
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

/// Someone calling the management API with a bearer credential.
struct Actor {
    name: &'static str,
    token: String,
    /// The member the credential belongs to.
    who: Option<Who>,
    auth: Authority,
}

impl Actor {
    /// Whether a credential owned by `owner` is within reach, for the permission that manages
    /// its kind (`keys:manage` or `clients:manage`); `keys:own` reaches one's own.
    fn reaches(&self, owner: Option<Who>, manage: &str) -> bool {
        self.auth.has(manage)
            || (self.auth.has("keys:own") && self.who.is_some() && owner == self.who)
    }

    /// The status of creating a credential of the kind `manage` manages, owned by `owner`,
    /// with the authority `result` (and, for a key of a member, `roles`).
    fn creates(&self, manage: &str, owner: Option<Who>, result: &Authority, roles: &[&str]) -> u16 {
        let own_only = !self.auth.has(manage);
        if own_only && !(self.auth.has("keys:own") && self.who.is_some()) {
            return 403; // no permission for this kind at all
        }
        if own_only && owner != self.who {
            return 403; // a member makes only their own
        }
        if let Some(m) = owner {
            // A key made for member M may not carry roles whose permissions M's role lacks.
            if !roles_perms(roles).is_subset(&member_role_perms(m.role())) {
                return 403;
            }
        }
        if self.auth.within(result) {
            201
        } else {
            403
        }
    }
}

/// A console session (member routes, and the one-time password link, are tried through it).
struct ConsoleActor {
    name: &'static str,
    console: Console,
    csrf: String,
    auth: Authority,
}

struct World {
    members: BTreeMap<Who, String>,
    actors: Vec<Actor>,
    consoles: Vec<ConsoleActor>,
}

impl World {
    fn member(&self, who: Who) -> &str {
        &self.members[&who]
    }
    fn member_of(&self, who: Option<Who>) -> Option<String> {
        who.map(|w| self.member(w).to_string())
    }
}

/// The table's runner: sends rows, keeps every mismatch.
struct Table<'a> {
    app: &'a TestApp,
    rows: usize,
    failures: Vec<String>,
    n: usize,
    /// Names (or emails) of things a refused create must not have made: (kind, name).
    refused_creates: Vec<(&'static str, String)>,
    /// Names of things an allowed create made: (kind, name).
    made: Vec<(&'static str, String)>,
}

impl Table<'_> {
    fn next(&mut self) -> usize {
        self.n += 1;
        self.n
    }

    fn fail(&mut self, who: &str, label: &str, what: String) {
        self.failures.push(format!("[{who}] {label}: {what}"));
    }

    /// One row: `who` sends `method path`, expecting `want`. A 403 must be a problem of type
    /// `forbidden`.
    #[allow(clippy::too_many_arguments)]
    async fn row(
        &mut self,
        who: &str,
        token: &str,
        method: Method,
        path: &str,
        label: &str,
        body: Option<Value>,
        want: u16,
    ) -> Answer {
        self.rows += 1;
        let a = self.app.call(method, path, Some(token), body).await;
        self.check(who, label, a.status, &a.text, want);
        a
    }

    fn check(&mut self, who: &str, label: &str, got: StatusCode, text: &str, want: u16) {
        if got.as_u16() != want {
            self.fail(
                who,
                label,
                format!("expected {want}, got {}: {}", got.as_u16(), short(text)),
            );
        } else if want == 403 {
            let kind = serde_json::from_str::<Value>(text)
                .ok()
                .and_then(|v| v["type"].as_str().map(str::to_string))
                .unwrap_or_default();
            // The console answers its script with {"error": ...}; the API with a problem.
            if !kind.is_empty() && !kind.ends_with("forbidden") {
                self.fail(who, label, format!("a 403 of type {kind}: {}", short(text)));
            }
        }
    }
}

async fn setup(app: &TestApp) -> World {
    app.service("svc", &[R, W]).await;
    for (name, perms) in [
        (KEYS_MANAGER, ["keys:manage"]),
        (CLIENTS_MANAGER, ["clients:manage"]),
    ] {
        admin_create(
            app,
            "/v1/roles",
            json!({ "name": name, "permissions": perms }),
        )
        .await;
    }
    let mut members = BTreeMap::new();
    for (who, email) in [
        (Who::Owner, "owner@ceiling.test"),
        (Who::Admin, "admin@ceiling.test"),
        (Who::Plain, "plain@ceiling.test"),
    ] {
        members.insert(who, admin_member(app, ORG, email, who.role()).await);
    }
    let all = set(&ALL_PERMISSIONS);
    let mut actors = vec![Actor {
        name: "admin-key",
        token: app.admin_key.clone(),
        who: None,
        auth: Authority::admin_key(),
    }];
    let member_keys = [
        ("owner-key", Who::Owner, vec![R, W]),
        ("admin-key-of-admin", Who::Admin, vec![R, W]),
        ("plain-key", Who::Plain, vec![R]),
    ];
    for (name, who, scopes) in member_keys {
        let (_, secret) = app
            .key(
                &app.admin_key,
                json!({ "name": name, "owner_member_id": members[&who], "scopes": scopes }),
            )
            .await;
        actors.push(Actor {
            name,
            token: secret,
            who: Some(who),
            auth: Authority::new(
                who == Who::Owner,
                member_role_perms(who.role()),
                Some(&scopes),
            ),
        });
    }
    let service_tokens: [(&str, &str, Vec<&str>); 3] = [
        ("keys-manager", KEYS_MANAGER, vec![R]),
        ("clients-manager", CLIENTS_MANAGER, vec![R]),
        ("org-admin", ORG_ADMIN, vec![]),
    ];
    for (name, role, scopes) in service_tokens {
        let (_, secret) = app
            .key(
                &app.admin_key,
                json!({ "name": name, "roles": [role], "scopes": scopes }),
            )
            .await;
        actors.push(Actor {
            name,
            token: secret,
            who: None,
            auth: Authority::new(false, role_perms(role), Some(&scopes)),
        });
    }

    let (mut admin_console, admin_csrf) = admin_console(app).await;
    let (owner_console, owner_csrf) = member_console(
        app,
        &mut admin_console,
        &admin_csrf,
        &members[&Who::Owner],
        "owner@ceiling.test",
    )
    .await;
    let (admin_member_console, admin_member_csrf) = member_console(
        app,
        &mut admin_console,
        &admin_csrf,
        &members[&Who::Admin],
        "admin@ceiling.test",
    )
    .await;
    let consoles = vec![
        ConsoleActor {
            name: "console: admin key",
            console: admin_console,
            csrf: admin_csrf,
            auth: Authority::admin_key(),
        },
        ConsoleActor {
            name: "console: owner",
            console: owner_console,
            csrf: owner_csrf,
            auth: Authority::new(true, all.clone(), None),
        },
        ConsoleActor {
            name: "console: admin member",
            console: admin_member_console,
            csrf: admin_member_csrf,
            auth: Authority::new(false, all, None),
        },
    ];
    World {
        members,
        actors,
        consoles,
    }
}

async fn table(app: TestApp) {
    let mut w = setup(&app).await;
    let mut t = Table {
        app: &app,
        rows: 0,
        failures: Vec::new(),
        n: 0,
        refused_creates: Vec::new(),
        made: Vec::new(),
    };
    key_creation(&mut t, &w).await;
    key_routes(&mut t, &w).await;
    client_creation(&mut t, &w).await;
    client_routes(&mut t, &w).await;
    role_creation(&mut t, &w).await;
    member_routes(&mut t, &w).await;
    console_member_routes(&mut t, &mut w).await;
    nothing_refused_was_made(&mut t).await;

    let (backend, rows) = (app.backend(), t.rows);
    assert!(
        t.failures.is_empty(),
        "{} of {rows} ceiling rows failed on {backend:?}:\n  {}",
        t.failures.len(),
        t.failures.join("\n  ")
    );
    eprintln!("ceiling on {backend:?}: {rows} rows, all as expected");
}
on_both!(
    ceiling_table,
    table,
    keyplane_testkit::Options::default().env("KEYPLANE_MAX_ACTIVE_KEYS_PER_ORG", "0")
);

// ----- API keys -----

/// `POST /v1/api-keys`: for whom, with which scopes and roles.
async fn key_creation(t: &mut Table<'_>, w: &World) {
    let app = t.app;
    for a in &w.actors {
        // (label, owner named in the body, scopes, roles)
        let mut cases: Vec<KeyCase> = vec![
            ("no owner, scopes [read]".into(), None, vec![R], vec![]),
            (
                "owner_member_id = the owner, scopes [read] (issue 10)".into(),
                Some(Who::Owner),
                vec![R],
                vec![],
            ),
            (
                "owner_member_id = the plain member, no scopes".into(),
                Some(Who::Plain),
                vec![],
                vec![],
            ),
            (
                "scopes [write] (issue 10: wider than a read-only key)".into(),
                None,
                vec![W],
                vec![],
            ),
            (
                format!("roles [{CLIENTS_MANAGER}]"),
                None,
                vec![],
                vec![CLIENTS_MANAGER],
            ),
        ];
        if let Some(me) = a.who {
            cases.push((
                "for themself, scopes [read]".into(),
                Some(me),
                vec![R],
                vec![],
            ));
        }
        if a.name != "admin-key" {
            // The admin key is left out: whether the member-role rule binds it is not said.
            cases.push((
                format!("owner_member_id = the plain member, roles [{ORG_ADMIN}]"),
                Some(Who::Plain),
                vec![],
                vec![ORG_ADMIN],
            ));
        }
        for (what, named, scopes, roles) in cases {
            let n = t.next();
            let name = format!("create-key-{n}");
            // Without owner_member_id, a member's key is their own; a service token's has none.
            let owner = named.or(a.who);
            let result = key_authority(owner, &scopes, &roles);
            let want = a.creates("keys:manage", owner, &result, &roles);
            let mut body = json!({ "name": name, "scopes": scopes, "roles": roles });
            if let Some(m) = named {
                body["owner_member_id"] = json!(w.member(m));
            }
            let label = format!("POST /v1/api-keys {{{what}}}");
            let got = t
                .row(
                    a.name,
                    &a.token,
                    Method::POST,
                    "/v1/api-keys",
                    &label,
                    Some(body),
                    want,
                )
                .await;
            if got.status == StatusCode::CREATED {
                t.made.push(("key", name.clone()));
                let v = got.json();
                let id = v["id"].as_str().unwrap_or_default().to_string();
                if want != 201 && named == Some(Who::Owner) {
                    // What the issue saw: the new key acts with the owner's role.
                    let me = app.get("/v1/me", v["key"].as_str().unwrap_or("")).await;
                    let perms = str_list(&me.json()["permissions"]);
                    t.fail(
                        a.name,
                        &label,
                        format!("the key made for the owner acts with {} permissions at /v1/me: {perms:?}", perms.len()),
                    );
                }
                let got = app
                    .get(&format!("/v1/api-keys/{id}"), &app.admin_key)
                    .await
                    .json();
                let ok = got["owner_member_id"].as_str() == w.member_of(owner).as_deref()
                    && str_list(&got["scopes"]) == scopes
                    && str_list(&got["roles"]) == roles;
                if !ok {
                    t.fail(a.name, &label, format!("made something else: {got}"));
                }
            } else if want != 201 {
                t.refused_creates.push(("key", name));
            }
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum KeyOp {
    Rename,
    WidenScopes,
    AddRole(&'static str),
    Copy,
    Regenerate,
    Revoke,
}

/// A kind of target key: made fresh by the admin key for every row.
struct KeyTarget {
    label: &'static str,
    owner: Option<Who>,
    scopes: &'static [&'static str],
}

const KEY_TARGETS: [KeyTarget; 5] = [
    KeyTarget {
        label: "the owner's key [read, write]",
        owner: Some(Who::Owner),
        scopes: &[R, W],
    },
    KeyTarget {
        label: "the admin member's key [read, write]",
        owner: Some(Who::Admin),
        scopes: &[R, W],
    },
    KeyTarget {
        label: "the plain member's key [read]",
        owner: Some(Who::Plain),
        scopes: &[R],
    },
    KeyTarget {
        label: "a service token [read]",
        owner: None,
        scopes: &[R],
    },
    KeyTarget {
        label: "a service token [read, write]",
        owner: None,
        scopes: &[R, W],
    },
];

/// Every key route that changes or hands over a key × every actor × every kind of key.
async fn key_routes(t: &mut Table<'_>, w: &World) {
    let app = t.app;
    let admin = app.admin_key.clone();
    for a in &w.actors {
        for target in &KEY_TARGETS {
            let mut ops = vec![KeyOp::Rename, KeyOp::Copy, KeyOp::Regenerate, KeyOp::Revoke];
            if target.scopes == [R] {
                ops.push(KeyOp::WidenScopes);
            }
            if target.owner.is_none() && target.scopes == [R] {
                ops.push(KeyOp::AddRole(KEYS_MANAGER));
                ops.push(KeyOp::AddRole(ORG_ADMIN));
            }
            for op in ops {
                let n = t.next();
                let created = admin_create(
                    app,
                    "/v1/api-keys",
                    json!({ "name": format!("target-{n}"), "owner_member_id": w.member_of(target.owner), "scopes": target.scopes }),
                )
                .await;
                let id = created["id"].as_str().unwrap().to_string();
                let secret = created["key"].as_str().unwrap().to_string();
                let before_view = key_snapshot(created);
                let before = key_authority(target.owner, target.scopes, &[]);
                let (method, path, body, what) = match op {
                    KeyOp::Rename => (
                        Method::PATCH,
                        format!("/v1/api-keys/{id}"),
                        json!({ "name": format!("renamed-{n}") }),
                        "PATCH {name}".to_string(),
                    ),
                    KeyOp::WidenScopes => (
                        Method::PATCH,
                        format!("/v1/api-keys/{id}"),
                        json!({ "scopes": [R, W] }),
                        "PATCH {scopes: [read, write]}".to_string(),
                    ),
                    KeyOp::AddRole(role) => (
                        Method::PATCH,
                        format!("/v1/api-keys/{id}"),
                        json!({ "roles": [role] }),
                        format!("PATCH {{roles: [{role}]}}"),
                    ),
                    KeyOp::Copy => (
                        Method::POST,
                        format!("/v1/api-keys/{id}/copy"),
                        json!({ "name": format!("copy-{n}") }),
                        "POST …/copy".to_string(),
                    ),
                    KeyOp::Regenerate => (
                        Method::POST,
                        format!("/v1/api-keys/{id}/regenerate"),
                        json!({}),
                        "POST …/regenerate".to_string(),
                    ),
                    KeyOp::Revoke => (
                        Method::POST,
                        format!("/v1/api-keys/{id}/revoke"),
                        json!({}),
                        "POST …/revoke".to_string(),
                    ),
                };
                let want = if !a.reaches(target.owner, "keys:manage") {
                    404
                } else {
                    let ok = match op {
                        KeyOp::Rename | KeyOp::Regenerate | KeyOp::Copy => a.auth.within(&before),
                        KeyOp::WidenScopes => {
                            a.auth.within(&before)
                                && a.auth.within(&key_authority(target.owner, &[R, W], &[]))
                        }
                        KeyOp::AddRole(role) => {
                            a.auth.within(&before)
                                && a.auth.within(&key_authority(
                                    target.owner,
                                    target.scopes,
                                    &[role],
                                ))
                        }
                        KeyOp::Revoke => a.auth.may_remove(&before),
                    };
                    match (ok, op) {
                        (false, _) => 403,
                        (true, KeyOp::Copy) => 201,
                        (true, _) => 200,
                    }
                };
                let mut label = format!("{what} on {}", target.label);
                if matches!(op, KeyOp::Regenerate) && target.owner == Some(Who::Owner) {
                    label.push_str(" (issue 10)");
                }
                if matches!(op, KeyOp::WidenScopes) && target.owner == Some(Who::Plain) {
                    label.push_str(" (issue 10 when it is the member's own)");
                }
                let got = t
                    .row(a.name, &a.token, method, &path, &label, Some(body), want)
                    .await;
                let after = app.get(&format!("/v1/api-keys/{id}"), &admin).await.json();
                let old_works = app.authz(Some(&secret), None).await.status;
                if !got.status.is_success() {
                    if key_snapshot(after.clone()) != before_view {
                        t.fail(
                            a.name,
                            &label,
                            format!("refused, yet the key changed: {before_view} → {after}"),
                        );
                    }
                    if old_works != StatusCode::OK {
                        t.fail(
                            a.name,
                            &label,
                            format!("refused, yet the key's secret now answers {old_works}"),
                        );
                    }
                    if let KeyOp::Copy = op {
                        t.refused_creates.push(("key", format!("copy-{n}")));
                    }
                    continue;
                }
                // Allowed: the effect must be there.
                let v = got.json();
                let mut problems = Vec::new();
                match op {
                    KeyOp::Rename => {
                        if after["name"] != format!("renamed-{n}").as_str() {
                            problems.push(format!("not renamed: {after}"));
                        }
                    }
                    KeyOp::WidenScopes => {
                        if str_list(&after["scopes"]) != [R, W] {
                            problems.push(format!("scopes not widened: {after}"));
                        }
                        let s = app.authz(Some(&secret), Some(W)).await.status;
                        if s != StatusCode::OK {
                            problems.push(format!("the secret answers {s} for {W}"));
                        }
                    }
                    KeyOp::AddRole(role) => {
                        if str_list(&after["roles"]) != [role] {
                            problems.push(format!("role not added: {after}"));
                        }
                    }
                    KeyOp::Copy => {
                        t.made.push(("key", format!("copy-{n}")));
                        if v["id"] == id.as_str()
                            || v["owner_member_id"] != before_view["owner_member_id"]
                        {
                            problems.push(format!("not a copy: {v}"));
                        }
                    }
                    KeyOp::Regenerate => {
                        if old_works != StatusCode::UNAUTHORIZED {
                            problems.push(format!("the old secret answers {old_works}"));
                        }
                        let new = v["key"].as_str().unwrap_or_default();
                        let s = app.authz(Some(new), Some(R)).await.status;
                        if s != StatusCode::OK {
                            problems.push(format!("the new secret answers {s}"));
                        }
                    }
                    KeyOp::Revoke => {
                        if after["is_active"] != false || old_works != StatusCode::UNAUTHORIZED {
                            problems
                                .push(format!("not revoked ({old_works} at /v1/authz): {after}"));
                        }
                    }
                }
                for p in problems {
                    t.fail(a.name, &label, p);
                }
            }
        }
    }
}

// ----- OAuth clients -----

/// `POST /v1/oauth-clients`: for whom, with which scopes.
async fn client_creation(t: &mut Table<'_>, w: &World) {
    for a in &w.actors {
        let cases: Vec<(&str, Option<Who>, Vec<&str>)> = vec![
            ("no owner, scopes [read]", None, vec![R]),
            (
                "scopes [write] (issue 10: wider than a read-only key)",
                None,
                vec![W],
            ),
            (
                "owner_member_id = the owner, scopes [read]",
                Some(Who::Owner),
                vec![R],
            ),
        ];
        for (what, named, scopes) in cases {
            let n = t.next();
            let name = format!("create-client-{n}");
            let owner = named.or(a.who);
            let want = a.creates(
                "clients:manage",
                owner,
                &client_authority(owner, &scopes),
                &[],
            );
            let mut body = json!({ "name": name, "scopes": scopes });
            if let Some(m) = named {
                body["owner_member_id"] = json!(w.member(m));
            }
            let label = format!("POST /v1/oauth-clients {{{what}}}");
            let got = t
                .row(
                    a.name,
                    &a.token,
                    Method::POST,
                    "/v1/oauth-clients",
                    &label,
                    Some(body),
                    want,
                )
                .await;
            if got.status == StatusCode::CREATED {
                t.made.push(("client", name.clone()));
                let v = got.json();
                if v["owner_member_id"].as_str() != w.member_of(owner).as_deref()
                    || str_list(&v["scopes"]) != scopes
                {
                    t.fail(a.name, &label, format!("made something else: {v}"));
                }
            } else if want != 201 {
                t.refused_creates.push(("client", name));
            }
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum ClientOp {
    Rename,
    WidenScopes,
    AddSecret,
    RetireSecret,
    IssueToken,
    Delete,
}

struct ClientTarget {
    label: &'static str,
    owner: Option<Who>,
    scopes: &'static [&'static str],
}

const CLIENT_TARGETS: [ClientTarget; 4] = [
    ClientTarget {
        label: "the owner's client [read]",
        owner: Some(Who::Owner),
        scopes: &[R],
    },
    ClientTarget {
        label: "the plain member's client [read]",
        owner: Some(Who::Plain),
        scopes: &[R],
    },
    ClientTarget {
        label: "a project client [read]",
        owner: None,
        scopes: &[R],
    },
    ClientTarget {
        label: "a project client [read, write]",
        owner: None,
        scopes: &[R, W],
    },
];

/// Every client route that changes or hands over a client × every actor × every kind.
async fn client_routes(t: &mut Table<'_>, w: &World) {
    let app = t.app;
    let admin = app.admin_key.clone();
    for a in &w.actors {
        for target in &CLIENT_TARGETS {
            let mut ops = vec![
                ClientOp::Rename,
                ClientOp::AddSecret,
                ClientOp::RetireSecret,
                ClientOp::IssueToken,
                ClientOp::Delete,
            ];
            if target.scopes == [R] && target.owner != Some(Who::Owner) {
                ops.push(ClientOp::WidenScopes);
            }
            for op in ops {
                let n = t.next();
                let (cid, _, first_secret) = admin_client(
                    app,
                    json!({ "name": format!("target-client-{n}"), "owner_member_id": w.member_of(target.owner), "scopes": target.scopes }),
                )
                .await;
                if let ClientOp::RetireSecret = op {
                    // A second secret, so that retiring the first leaves the client usable.
                    let s = app
                        .post(
                            &format!("/v1/oauth-clients/{cid}/secrets"),
                            &admin,
                            json!({}),
                        )
                        .await;
                    assert_eq!(s.status, StatusCode::CREATED, "set-up: {}", s.text);
                }
                let before_view = client_snapshot(
                    app.get(&format!("/v1/oauth-clients/{cid}"), &admin)
                        .await
                        .json(),
                );
                let before = client_authority(target.owner, target.scopes);
                let base = format!("/v1/oauth-clients/{cid}");
                let (method, path, body, what) = match op {
                    ClientOp::Rename => (
                        Method::PATCH,
                        base.clone(),
                        Some(json!({ "name": format!("renamed-client-{n}") })),
                        "PATCH {name}",
                    ),
                    ClientOp::WidenScopes => (
                        Method::PATCH,
                        base.clone(),
                        Some(json!({ "scopes": [R, W] })),
                        "PATCH {scopes: [read, write]}",
                    ),
                    ClientOp::AddSecret => (
                        Method::POST,
                        format!("{base}/secrets"),
                        Some(json!({})),
                        "POST …/secrets",
                    ),
                    ClientOp::RetireSecret => (
                        Method::DELETE,
                        format!("{base}/secrets/{first_secret}"),
                        None,
                        "DELETE …/secrets/{first}",
                    ),
                    ClientOp::IssueToken => (
                        Method::POST,
                        format!("{base}/tokens"),
                        Some(json!({})),
                        "POST …/tokens",
                    ),
                    ClientOp::Delete => (Method::DELETE, base.clone(), None, "DELETE"),
                };
                let want = if !a.reaches(target.owner, "clients:manage") {
                    404
                } else {
                    let ok = match op {
                        ClientOp::Rename
                        | ClientOp::AddSecret
                        | ClientOp::RetireSecret
                        | ClientOp::IssueToken => a.auth.within(&before),
                        ClientOp::WidenScopes => {
                            a.auth.within(&before)
                                && a.auth.within(&client_authority(target.owner, &[R, W]))
                        }
                        ClientOp::Delete => a.auth.may_remove(&before),
                    };
                    match (ok, op) {
                        (false, _) => 403,
                        (true, ClientOp::AddSecret | ClientOp::IssueToken) => 201,
                        (true, ClientOp::RetireSecret | ClientOp::Delete) => 204,
                        (true, _) => 200,
                    }
                };
                let label = format!("{what} on {}", target.label);
                let got = t
                    .row(a.name, &a.token, method, &path, &label, body, want)
                    .await;
                let after = app.get(&base, &admin).await;
                if !got.status.is_success() {
                    let same = after.status == StatusCode::OK
                        && client_snapshot(after.json()) == before_view;
                    if !same {
                        t.fail(
                            a.name,
                            &label,
                            format!(
                                "refused, yet the client changed: {before_view} → {} {}",
                                after.status,
                                short(&after.text)
                            ),
                        );
                    }
                    continue;
                }
                let mut problems = Vec::new();
                match op {
                    ClientOp::Rename => {
                        if after.json()["name"] != format!("renamed-client-{n}").as_str() {
                            problems.push(format!("not renamed: {}", after.text));
                        }
                    }
                    ClientOp::WidenScopes => {
                        if str_list(&after.json()["scopes"]) != [R, W] {
                            problems.push(format!("scopes not widened: {}", after.text));
                        }
                    }
                    ClientOp::AddSecret => {
                        let s = got.json()["client_secret"]
                            .as_str()
                            .unwrap_or("")
                            .to_string();
                        let tk = token(app, &cid, &s).await;
                        if tk.status != StatusCode::OK {
                            problems.push(format!(
                                "the new secret gets {} at the token endpoint",
                                tk.status
                            ));
                        }
                    }
                    ClientOp::RetireSecret => {
                        let ids: Vec<Value> = after.json()["secrets"]
                            .as_array()
                            .map(|s| s.iter().map(|x| x["id"].clone()).collect())
                            .unwrap_or_default();
                        if ids.contains(&json!(first_secret)) {
                            problems.push(format!("the secret is still listed: {}", after.text));
                        }
                    }
                    ClientOp::IssueToken => {
                        let at = got.json()["access_token"]
                            .as_str()
                            .unwrap_or("")
                            .to_string();
                        let s = app.authz(Some(&at), Some(R)).await.status;
                        if s != StatusCode::OK {
                            problems.push(format!("the issued token answers {s} at /v1/authz"));
                        }
                    }
                    ClientOp::Delete => {
                        if after.status != StatusCode::NOT_FOUND {
                            problems.push(format!("not deleted: {} {}", after.status, after.text));
                        }
                    }
                }
                for p in problems {
                    t.fail(a.name, &label, p);
                }
            }
        }
    }
}

// ----- roles -----

/// `POST /v1/roles`: a role holds no more permissions or scopes than its maker.
async fn role_creation(t: &mut Table<'_>, w: &World) {
    for a in &w.actors {
        let cases: Vec<(&str, Vec<&str>, Vec<&str>)> = vec![
            ("permissions [keys:manage]", vec!["keys:manage"], vec![]),
            (
                "permissions [members:manage]",
                vec!["members:manage"],
                vec![],
            ),
            ("scopes [read, write]", vec![], vec![R, W]),
            ("scopes [read]", vec![], vec![R]),
        ];
        for (what, perms, scopes) in cases {
            let n = t.next();
            let name = format!("ROLE-{n}");
            let result = Authority::new(false, set(&perms), Some(&scopes));
            let want = if !a.auth.has("roles:manage") || !a.auth.within(&result) {
                403
            } else {
                201
            };
            let label = format!("POST /v1/roles {{{what}}}");
            let got = t
                .row(
                    a.name,
                    &a.token,
                    Method::POST,
                    "/v1/roles",
                    &label,
                    Some(json!({ "name": name, "permissions": perms, "scopes": scopes })),
                    want,
                )
                .await;
            if got.status == StatusCode::CREATED {
                t.made.push(("role", name));
            } else if want != 201 {
                t.refused_creates.push(("role", name));
            }
        }
    }
}

// ----- members -----

/// `/v1/members` with bearer credentials: create, change a role, remove.
async fn member_routes(t: &mut Table<'_>, w: &World) {
    let app = t.app;
    let admin = app.admin_key.clone();
    for a in &w.actors {
        for role in ["owner", "admin", "member"] {
            let n = t.next();
            let email = format!("new-{n}@ceiling.test");
            let want = if a.auth.has("members:manage") && a.auth.within(&member_authority(role)) {
                201
            } else {
                403
            };
            let label = format!("POST /v1/members {{role: {role}}}");
            let got = t
                .row(
                    a.name,
                    &a.token,
                    Method::POST,
                    "/v1/members",
                    &label,
                    Some(json!({ "email": email, "role": role })),
                    want,
                )
                .await;
            if got.status == StatusCode::CREATED {
                t.made.push(("member", email));
            } else if want != 201 {
                t.refused_creates.push(("member", email));
            }
        }
        for (from, to, what) in [
            ("member", "owner", "to owner"),
            ("owner", "member", "from owner"),
            ("member", "admin", "member to admin"),
        ] {
            let n = t.next();
            let id = admin_member(app, ORG, &format!("target-{n}@ceiling.test"), from).await;
            let want = if !a.auth.has("members:manage") {
                404
            } else if a.auth.within(&member_authority(from)) && a.auth.within(&member_authority(to))
            {
                200
            } else {
                403
            };
            let label = format!("PATCH /v1/members/{{{from}}} {{role: {to}}} ({what})");
            let got = t
                .row(
                    a.name,
                    &a.token,
                    Method::PATCH,
                    &format!("/v1/members/{id}"),
                    &label,
                    Some(json!({ "role": to })),
                    want,
                )
                .await;
            let after = app.get(&format!("/v1/members/{id}"), &admin).await.json();
            let expected = if got.status.is_success() { to } else { from };
            if after["role"] != expected {
                t.fail(
                    a.name,
                    &label,
                    format!(
                        "answered {}, and the member's role is {}",
                        got.status, after["role"]
                    ),
                );
            }
        }
        for role in ["owner", "member"] {
            let n = t.next();
            let id = admin_member(app, ORG, &format!("target-{n}@ceiling.test"), role).await;
            let want = if !a.auth.has("members:manage") {
                404
            } else if a.auth.may_remove(&member_authority(role)) {
                204
            } else {
                403
            };
            let label = format!("DELETE /v1/members/{{{role}}}");
            let got = t
                .row(
                    a.name,
                    &a.token,
                    Method::DELETE,
                    &format!("/v1/members/{id}"),
                    &label,
                    None,
                    want,
                )
                .await;
            let after = app.get(&format!("/v1/members/{id}"), &admin).await.status;
            let expected = if got.status.is_success() {
                StatusCode::NOT_FOUND
            } else {
                StatusCode::OK
            };
            if after != expected {
                t.fail(
                    a.name,
                    &label,
                    format!("answered {}, and the member answers {after}", got.status),
                );
            }
        }
    }
}

/// The same member operations through console sessions (people may add members; what they
/// make is capped by the rule), and the one-time password link, which exists only there.
async fn console_member_routes(t: &mut Table<'_>, w: &mut World) {
    let app = t.app;
    let admin = app.admin_key.clone();
    for c in &mut w.consoles {
        for role in ["owner", "admin"] {
            t.n += 1;
            let email = format!("console-new-{}@ceiling.test", t.n);
            let want = if c.auth.within(&member_authority(role)) {
                200
            } else {
                403
            };
            t.rows += 1;
            let (status, body, _) = c
                .console
                .post(
                    "/console/members",
                    &[("email", email.as_str()), ("role", role)],
                    Some(&c.csrf),
                )
                .await;
            let label = format!("POST /console/members {{role: {role}}}");
            t.check(c.name, &label, status, &body, want);
            if status.is_success() {
                t.made.push(("member", email));
            } else if want != 200 {
                t.refused_creates.push(("member", email));
            }
        }
        for (from, to) in [
            ("member", "owner"),
            ("owner", "member"),
            ("member", "admin"),
        ] {
            t.n += 1;
            let id = admin_member(
                app,
                ORG,
                &format!("console-target-{}@ceiling.test", t.n),
                from,
            )
            .await;
            let want =
                if c.auth.within(&member_authority(from)) && c.auth.within(&member_authority(to)) {
                    200
                } else {
                    403
                };
            t.rows += 1;
            let (status, body, _) = c
                .console
                .post(
                    &format!("/console/members/{id}/role"),
                    &[("role", to)],
                    Some(&c.csrf),
                )
                .await;
            let label = format!("POST /console/members/{{{from}}}/role {{role: {to}}}");
            t.check(c.name, &label, status, &body, want);
            let after = app.get(&format!("/v1/members/{id}"), &admin).await.json();
            let expected = if status.is_success() { to } else { from };
            if after["role"] != expected {
                t.fail(
                    c.name,
                    &label,
                    format!("answered {status}, and the role is {}", after["role"]),
                );
            }
        }
        for role in ["owner", "member"] {
            t.n += 1;
            let id = admin_member(
                app,
                ORG,
                &format!("console-target-{}@ceiling.test", t.n),
                role,
            )
            .await;
            let want = if c.auth.may_remove(&member_authority(role)) {
                200
            } else {
                403
            };
            t.rows += 1;
            let (status, body, _) = c
                .console
                .post(&format!("/console/members/{id}/remove"), &[], Some(&c.csrf))
                .await;
            let label = format!("POST /console/members/{{{role}}}/remove");
            t.check(c.name, &label, status, &body, want);
            let after = app.get(&format!("/v1/members/{id}"), &admin).await.status;
            if (after == StatusCode::NOT_FOUND) != status.is_success() {
                t.fail(
                    c.name,
                    &label,
                    format!("answered {status}, and the member answers {after}"),
                );
            }
        }
        for role in ["owner", "member"] {
            t.n += 1;
            let id = admin_member(
                app,
                ORG,
                &format!("console-target-{}@ceiling.test", t.n),
                role,
            )
            .await;
            // A link hands the member's account over: within(caller, member).
            let want = if c.auth.within(&member_authority(role)) {
                200
            } else {
                403
            };
            t.rows += 1;
            let (status, body, _) = c
                .console
                .post(&format!("/console/members/{id}/link"), &[], Some(&c.csrf))
                .await;
            let label = format!("POST /console/members/{{{role}}}/link (one-time password link)");
            t.check(c.name, &label, status, &body, want);
            if status.is_success() && !body.contains("#token=") {
                t.fail(c.name, &label, format!("no link in {}", short(&body)));
            }
        }
    }
}

/// No refused create made anything; every allowed one is there.
async fn nothing_refused_was_made(t: &mut Table<'_>) {
    let app = t.app;
    let admin = app.admin_key.clone();
    let mut names: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    let keys = all_pages(app, "/v1/api-keys?include_inactive=true&limit=200", &admin).await;
    names.insert(
        "key",
        keys.iter()
            .filter_map(|k| k["name"].as_str().map(str::to_string))
            .collect(),
    );
    let clients = all_pages(app, "/v1/oauth-clients?limit=200", &admin).await;
    names.insert(
        "client",
        clients
            .iter()
            .filter_map(|k| k["name"].as_str().map(str::to_string))
            .collect(),
    );
    let roles = app.get("/v1/roles", &admin).await.json();
    names.insert(
        "role",
        roles["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|r| r["name"].as_str().map(str::to_string))
            .collect(),
    );
    let members = all_pages(app, "/v1/members", &admin).await;
    names.insert(
        "member",
        members
            .iter()
            .filter_map(|m| m["email"].as_str().map(str::to_string))
            .collect(),
    );
    for (kind, name) in t.refused_creates.clone() {
        t.rows += 1;
        if names[kind].contains(&name) {
            t.fail(
                "—",
                &format!("refused {kind} create"),
                format!("{name} exists all the same"),
            );
        }
    }
    for (kind, name) in t.made.clone() {
        if !names[kind].contains(&name) {
            t.fail(
                "—",
                &format!("allowed {kind} create"),
                format!("{name} is not there"),
            );
        }
    }
}
