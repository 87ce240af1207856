//! Changes that cannot race (docs/authorization.md, "Changes that cannot race"; issue 10).
//!
//! Each race runs [`ITERATIONS`] times on a fresh key or client, with the racing requests sent
//! together (`tokio::join!`, each on its own connection). What every iteration must leave is
//! checked the way a user would: `GET` the resource, present the secrets at `/v1/authz` or the
//! token endpoint. Problems are collected over all iterations and reported together, so the
//! failure says how often an edit was lost, not only that it was.
//!
//! - `patch_vs_regenerate`: `PATCH {scopes: [read, write]}` racing `POST …/regenerate`: the
//!   edit is never lost, the PATCH answer is what is stored, the new secret has the new scope,
//!   the old secret is refused.
//! - `three_regenerates`: three regenerations without grace: exactly one of their secrets
//!   works, and it is the one the key shows.
//! - `three_client_rotations`: three `POST …/secrets {old_secrets_expire_in_seconds: 0}`:
//!   exactly one of the four secrets obtains a token.
//! - `revoke_vs_regenerate`: afterwards the key is revoked and no secret works.
//! - `etags`: `ETag` on `GET`, `If-Match` on `PATCH` and the secret routes (412
//!   `precondition-failed` when stale, nothing changed), and two PATCHes with the same
//!   `If-Match` racing: exactly one wins.

use crate::support::*;
use keyplane_testkit::reqwest::{Method, StatusCode};
use keyplane_testkit::{json, Answer, TestApp};
use serde_json::Value;
use std::net::{IpAddr, Ipv4Addr};

const ITERATIONS: usize = 20;
const R: &str = "svc:read";
const W: &str = "svc:write";

fn report(app: &TestApp, what: &str, problems: Vec<String>) {
    assert!(
        problems.is_empty(),
        "{what} on {:?}: {} problems over {ITERATIONS} iterations:\n  {}",
        app.backend(),
        problems.len(),
        problems.join("\n  ")
    );
}

/// A request with extra headers (`If-Match`).
async fn call_with(
    app: &TestApp,
    method: Method,
    path: &str,
    body: Option<Value>,
    headers: &[(&str, &str)],
) -> Answer {
    let mut req = app
        .http
        .request(method, format!("{}{path}", app.base))
        .bearer_auth(&app.admin_key);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("request");
    Answer {
        status: resp.status(),
        headers: resp.headers().clone(),
        text: resp.text().await.expect("body"),
    }
}

async fn patch_vs_regenerate(app: TestApp) {
    app.service("svc", &[R, W]).await;
    let admin = app.admin_key.clone();
    let mut problems = Vec::new();
    let mut lost = 0;
    for i in 0..ITERATIONS {
        let (id, old) = app
            .key(
                &admin,
                json!({ "name": format!("race-{i}"), "scopes": [R] }),
            )
            .await;
        let path = format!("/v1/api-keys/{id}");
        let regenerate = format!("{path}/regenerate");
        let (p, r) = tokio::join!(
            patch(&app, &path, &admin, json!({ "scopes": [R, W] })),
            app.post(&regenerate, &admin, json!({})),
        );
        if p.status != StatusCode::OK || r.status != StatusCode::OK {
            problems.push(format!(
                "#{i}: PATCH answered {} {}, regenerate {} {}",
                p.status,
                short(&p.text),
                r.status,
                short(&r.text)
            ));
            continue;
        }
        let stored = app.get(&path, &admin).await.json();
        let scopes = str_list(&stored["scopes"]);
        if scopes != [R, W] {
            lost += 1;
            problems.push(format!(
                "#{i}: the edit was lost: GET shows scopes {scopes:?} after PATCH answered {:?}",
                str_list(&p.json()["scopes"])
            ));
        }
        if str_list(&p.json()["scopes"]) != scopes {
            problems.push(format!(
                "#{i}: the PATCH answered scopes {:?}, GET shows {scopes:?}",
                str_list(&p.json()["scopes"])
            ));
        }
        let new = r.json()["key"].as_str().unwrap_or_default().to_string();
        let s = app.authz(Some(&new), Some(W)).await.status;
        if s != StatusCode::OK {
            problems.push(format!(
                "#{i}: the regenerated secret answers {s} at /v1/authz?scope={W}"
            ));
        }
        let s = app.authz(Some(&old), None).await.status;
        if s != StatusCode::UNAUTHORIZED {
            problems.push(format!("#{i}: the old secret answers {s}"));
        }
    }
    if lost > 0 {
        problems.insert(0, format!("{lost} of {ITERATIONS} edits lost"));
    }
    report(&app, "PATCH racing regenerate", problems);
}
on_both!(patch_racing_regenerate, patch_vs_regenerate);

async fn three_regenerates(app: TestApp) {
    app.service("svc", &[R, W]).await;
    let admin = app.admin_key.clone();
    let mut problems = Vec::new();
    for i in 0..ITERATIONS {
        let (id, original) = app
            .key(
                &admin,
                json!({ "name": format!("race-{i}"), "scopes": [R] }),
            )
            .await;
        let path = format!("/v1/api-keys/{id}/regenerate");
        let (a, b, c) = tokio::join!(
            app.post(&path, &admin, json!({})),
            app.post(&path, &admin, json!({})),
            app.post(&path, &admin, json!({})),
        );
        let mut secrets = Vec::new();
        for x in [&a, &b, &c] {
            if x.status == StatusCode::OK {
                secrets.push(x.json()["key"].as_str().unwrap_or_default().to_string());
            } else {
                problems.push(format!(
                    "#{i}: a regeneration answered {} {}",
                    x.status,
                    short(&x.text)
                ));
            }
        }
        let mut working = Vec::new();
        for s in &secrets {
            if app.authz(Some(s), None).await.status == StatusCode::OK {
                working.push(s.clone());
            }
        }
        if working.len() != 1 {
            problems.push(format!(
                "#{i}: {} of the {} regenerated secrets work at /v1/authz, expected exactly one",
                working.len(),
                secrets.len()
            ));
        }
        let s = app.authz(Some(&original), None).await.status;
        if s != StatusCode::UNAUTHORIZED {
            problems.push(format!("#{i}: the original secret answers {s}"));
        }
        // The key shows the beginning of the secret that works.
        let shown = app.get(&format!("/v1/api-keys/{id}"), &admin).await.json()["prefix"]
            .as_str()
            .unwrap_or_default()
            .trim_end_matches('…')
            .to_string();
        if let [w] = working.as_slice() {
            if shown.is_empty() || !w.starts_with(&shown) {
                problems.push(format!(
                    "#{i}: the key shows prefix {shown:?}, not the working secret's"
                ));
            }
        }
    }
    report(&app, "three concurrent regenerations", problems);
}
on_both!(three_concurrent_regenerations, three_regenerates);

async fn three_client_rotations(app: TestApp) {
    app.service("svc", &[R, W]).await;
    let admin = app.admin_key.clone();
    let mut problems = Vec::new();
    for i in 0..ITERATIONS {
        let (cid, original, _) =
            admin_client(&app, json!({ "name": format!("race-{i}"), "scopes": [R] })).await;
        let path = format!("/v1/oauth-clients/{cid}/secrets");
        let body = json!({ "old_secrets_expire_in_seconds": 0 });
        let (a, b, c) = tokio::join!(
            app.post(&path, &admin, body.clone()),
            app.post(&path, &admin, body.clone()),
            app.post(&path, &admin, body.clone()),
        );
        let mut secrets = vec![original];
        for x in [&a, &b, &c] {
            if x.status == StatusCode::CREATED {
                secrets.push(
                    x.json()["client_secret"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                );
            } else {
                problems.push(format!(
                    "#{i}: a new secret answered {} {}",
                    x.status,
                    short(&x.text)
                ));
            }
        }
        // The refused secrets are expected failures: spread them over addresses so the
        // per-address throttle of failed authentications stays out of the way.
        let from = client_from(IpAddr::V4(Ipv4Addr::new(127, 0, 1, 10 + i as u8)));
        let mut working = 0;
        for s in &secrets {
            let t = token_with(&app, &from, &cid, s).await;
            match t.status {
                StatusCode::OK => working += 1,
                StatusCode::UNAUTHORIZED => {}
                other => problems.push(format!(
                    "#{i}: the token endpoint answered {other}: {}",
                    short(&t.text)
                )),
            }
        }
        if working != 1 {
            problems.push(format!(
                "#{i}: {working} of the {} secrets (original and new) obtain a token, expected exactly one",
                secrets.len()
            ));
        }
        let view = app
            .get(&format!("/v1/oauth-clients/{cid}"), &admin)
            .await
            .json();
        let active = view["secrets"]
            .as_array()
            .map(|s| s.iter().filter(|x| x["status"] == "active").count())
            .unwrap_or(0);
        if active != 1 {
            problems.push(format!(
                "#{i}: the client lists {active} active secrets, expected one: {}",
                short(&view["secrets"].to_string())
            ));
        }
    }
    report(&app, "three concurrent client secret rotations", problems);
}
on_both!(three_concurrent_client_rotations, three_client_rotations);

async fn revoke_vs_regenerate(app: TestApp) {
    app.service("svc", &[R, W]).await;
    let admin = app.admin_key.clone();
    let mut problems = Vec::new();
    for i in 0..ITERATIONS {
        let (id, old) = app
            .key(
                &admin,
                json!({ "name": format!("race-{i}"), "scopes": [R] }),
            )
            .await;
        let path = format!("/v1/api-keys/{id}");
        let (revoke, regenerate) = (format!("{path}/revoke"), format!("{path}/regenerate"));
        let (rv, rg) = tokio::join!(
            app.post(&revoke, &admin, json!({})),
            app.post(&regenerate, &admin, json!({})),
        );
        if rv.status != StatusCode::OK {
            problems.push(format!(
                "#{i}: revoke answered {} {}",
                rv.status,
                short(&rv.text)
            ));
        }
        // Regenerating a revoked key is a conflict; before the revocation it succeeds.
        if rg.status != StatusCode::OK && rg.status != StatusCode::CONFLICT {
            problems.push(format!(
                "#{i}: regenerate answered {} {}",
                rg.status,
                short(&rg.text)
            ));
        }
        let stored = app.get(&path, &admin).await.json();
        if stored["is_active"] != false {
            problems.push(format!(
                "#{i}: the revoked key is active again (regenerate answered {}): {stored}",
                rg.status
            ));
        }
        let s = app.authz(Some(&old), None).await.status;
        if s != StatusCode::UNAUTHORIZED {
            problems.push(format!("#{i}: the old secret answers {s}"));
        }
        if rg.status == StatusCode::OK {
            let new = rg.json()["key"].as_str().unwrap_or_default().to_string();
            let s = app.authz(Some(&new), None).await.status;
            if s != StatusCode::UNAUTHORIZED {
                problems.push(format!(
                    "#{i}: the regenerated secret of a revoked key answers {s}"
                ));
            }
        }
    }
    report(&app, "revoke racing regenerate", problems);
}
on_both!(revoke_racing_regenerate, revoke_vs_regenerate);

/// The `ETag` of `GET path`, which must be there.
async fn etag(app: &TestApp, path: &str, problems: &mut Vec<String>) -> String {
    let a = app.get(path, &app.admin_key).await;
    match a.header("etag") {
        Some(e) if e.starts_with('"') && e.ends_with('"') && e.len() > 2 => e.to_string(),
        other => {
            problems.push(format!(
                "GET {path} answered ETag {other:?}, expected a quoted version"
            ));
            String::new()
        }
    }
}

/// 412, `application/problem+json`, of type `…/precondition-failed`.
fn precondition_failed(what: &str, a: &Answer, problems: &mut Vec<String>) {
    let ctype = a.header("content-type").unwrap_or_default().to_string();
    let kind = serde_json::from_str::<Value>(&a.text)
        .ok()
        .and_then(|v| v["type"].as_str().map(str::to_string))
        .unwrap_or_default();
    if a.status != StatusCode::PRECONDITION_FAILED
        || !ctype.starts_with("application/problem+json")
        || !kind.ends_with("precondition-failed")
    {
        problems.push(format!(
            "{what} with a stale If-Match: expected 412 problem+json precondition-failed, got {} ({ctype}): {}",
            a.status,
            short(&a.text)
        ));
    }
}

/// `ETag`/`If-Match` on one resource at `path`, whose `name` is edited. Returns an ETag that
/// is stale from then on.
async fn if_match_on(app: &TestApp, kind: &str, path: &str, problems: &mut Vec<String>) -> String {
    let mut e1 = etag(app, path, problems).await;
    if e1.is_empty() {
        // No ETag at all (said above): a version the resource is past once edited below.
        e1 = "\"0\"".into();
    }
    // Someone else's change makes e1 stale.
    let first = patch(
        app,
        path,
        &app.admin_key,
        json!({ "name": format!("{kind}-first") }),
    )
    .await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text);
    let e2 = etag(app, path, problems).await;
    if e2 == e1 {
        problems.push(format!("{kind}: a PATCH left the ETag at {e1}"));
    }
    let stale = call_with(
        app,
        Method::PATCH,
        path,
        Some(json!({ "name": format!("{kind}-stale") })),
        &[("if-match", &e1)],
    )
    .await;
    precondition_failed(&format!("{kind}: PATCH"), &stale, problems);
    let after = app.get(path, &app.admin_key).await;
    if after.json()["name"] != format!("{kind}-first").as_str() || after.header("etag") != Some(&e2)
    {
        problems.push(format!(
            "{kind}: a PATCH refused for a stale If-Match changed it: ETag {:?}, {}",
            after.header("etag"),
            short(&after.text)
        ));
    }
    let current = call_with(
        app,
        Method::PATCH,
        path,
        Some(json!({ "name": format!("{kind}-current") })),
        &[("if-match", &e2)],
    )
    .await;
    if current.status != StatusCode::OK {
        problems.push(format!(
            "{kind}: PATCH with the current If-Match answered {} {}",
            current.status,
            short(&current.text)
        ));
    }
    let e3 = etag(app, path, problems).await;
    if e3 == e2 {
        problems.push(format!(
            "{kind}: the PATCH with If-Match left the ETag at {e2}"
        ));
    }
    if let Some(answered) = current.header("etag") {
        if answered != e3 {
            problems.push(format!(
                "{kind}: the PATCH answered ETag {answered}, GET shows {e3}"
            ));
        }
    }
    if app.get(path, &app.admin_key).await.json()["name"] != format!("{kind}-current").as_str() {
        problems.push(format!(
            "{kind}: the PATCH with the current If-Match did not apply"
        ));
    }
    e1
}

/// Two PATCHes with the same (current) If-Match, sent together: exactly one applies, the other
/// is 412, and what is stored is the winner's.
async fn if_match_race(app: &TestApp, kind: &str, path: &str, problems: &mut Vec<String>) {
    for i in 0..ITERATIONS {
        let e = etag(app, path, problems).await;
        if e.is_empty() {
            return; // said once already
        }
        let if_match = [("if-match", e.as_str())];
        let (a, b) = tokio::join!(
            call_with(
                app,
                Method::PATCH,
                path,
                Some(json!({ "name": format!("{kind}-{i}-a") })),
                &if_match
            ),
            call_with(
                app,
                Method::PATCH,
                path,
                Some(json!({ "name": format!("{kind}-{i}-b") })),
                &if_match
            ),
        );
        let statuses = [a.status.as_u16(), b.status.as_u16()];
        let winner = match statuses {
            [200, 412] => "a",
            [412, 200] => "b",
            other => {
                problems.push(format!(
                    "{kind} #{i}: two PATCHes with If-Match {e} answered {other:?}, expected one 200 and one 412"
                ));
                continue;
            }
        };
        let stored = app.get(path, &app.admin_key).await.json();
        if stored["name"] != format!("{kind}-{i}-{winner}").as_str() {
            problems.push(format!(
                "{kind} #{i}: PATCH {winner} won, yet the name is {}",
                stored["name"]
            ));
        }
    }
}

async fn etags(app: TestApp) {
    app.service("svc", &[R, W]).await;
    let admin = app.admin_key.clone();
    let mut problems = Vec::new();

    let (kid, secret) = app
        .key(&admin, json!({ "name": "etag", "scopes": [R] }))
        .await;
    let kpath = format!("/v1/api-keys/{kid}");
    let stale = if_match_on(&app, "key", &kpath, &mut problems).await;
    // The regenerate route honours If-Match too: a stale one hands out nothing.
    let r = call_with(
        &app,
        Method::POST,
        &format!("{kpath}/regenerate"),
        Some(json!({})),
        &[("if-match", &stale)],
    )
    .await;
    precondition_failed("key: regenerate", &r, &mut problems);
    let s = app.authz(Some(&secret), None).await.status;
    if s != StatusCode::OK {
        problems.push(format!(
            "key: after a regenerate with a stale If-Match the secret answers {s}"
        ));
    }
    if_match_race(&app, "key", &kpath, &mut problems).await;

    let (cid, csecret, _) = admin_client(&app, json!({ "name": "etag", "scopes": [R] })).await;
    let cpath = format!("/v1/oauth-clients/{cid}");
    let stale = if_match_on(&app, "client", &cpath, &mut problems).await;
    let before = client_snapshot(app.get(&cpath, &admin).await.json());
    let r = call_with(
        &app,
        Method::POST,
        &format!("{cpath}/secrets"),
        Some(json!({ "old_secrets_expire_in_seconds": 0 })),
        &[("if-match", &stale)],
    )
    .await;
    precondition_failed("client: new secret", &r, &mut problems);
    if client_snapshot(app.get(&cpath, &admin).await.json()) != before {
        problems.push("client: a secret was added despite a stale If-Match".into());
    }
    let t = token(&app, &cid, &csecret).await.status;
    if t != StatusCode::OK {
        problems.push(format!(
            "client: after a rotation with a stale If-Match the secret gets {t}"
        ));
    }
    if_match_race(&app, "client", &cpath, &mut problems).await;

    report(&app, "ETag / If-Match", problems);
}
on_both!(etag_and_if_match, etags);
