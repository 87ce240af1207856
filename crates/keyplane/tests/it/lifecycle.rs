//! Lifecycle rules of docs/authorization.md (issue 10).
//!
//! - `retired_secret_dead_on_arrival`: retiring a client secret moves the client's not-before
//!   to the next whole second; a token obtained right after (the same second) with the remaining
//!   secret must work at `/v1/authz` and be active at introspection, for opaque and JWT tokens,
//!   while a token obtained before the retirement is cut off.
//! - `member_removal_ends_everything`: removing a member revokes their keys, disables their
//!   OAuth clients (their tokens stop at once, the token endpoint refuses the client), ends
//!   their console sessions and their unused password links.
//! - `clients_of_other_orgs_look_unknown`: for an organization-scoped caller, another
//!   organization's client answers exactly like a well-formed id that exists nowhere, on every
//!   client route, and is left untouched.

use crate::support::*;
use keyplane_testkit::reqwest::{Method, StatusCode};
use keyplane_testkit::{json, TestApp};
use std::net::{IpAddr, Ipv4Addr};

const R: &str = "svc:read";
const ROUNDS: usize = 10;

async fn dead_on_arrival(app: TestApp) {
    app.service("svc", &[R]).await;
    let admin = app.admin_key.clone();
    let mut problems = Vec::new();
    for format in ["opaque", "jwt"] {
        for i in 0..ROUNDS {
            let (cid, first, first_id) = admin_client(
                &app,
                json!({ "name": format!("{format}-{i}"), "scopes": [R], "token_format": format }),
            )
            .await;
            let before = token(&app, &cid, &first).await;
            assert_eq!(before.status, StatusCode::OK, "{}", before.text);
            let before = before.json()["access_token"].as_str().unwrap().to_string();
            let second = app
                .post(
                    &format!("/v1/oauth-clients/{cid}/secrets"),
                    &admin,
                    json!({}),
                )
                .await;
            assert_eq!(second.status, StatusCode::CREATED, "{}", second.text);
            let second = second.json()["client_secret"].as_str().unwrap().to_string();
            let retired = delete(
                &app,
                &format!("/v1/oauth-clients/{cid}/secrets/{first_id}"),
                &admin,
            )
            .await;
            assert_eq!(retired.status, StatusCode::NO_CONTENT, "{}", retired.text);

            // At once, with the remaining secret.
            let t = token(&app, &cid, &second).await;
            if t.status != StatusCode::OK {
                problems.push(format!(
                    "{format} #{i}: the token endpoint answered {} right after the retirement: {}",
                    t.status,
                    short(&t.text)
                ));
                continue;
            }
            let at = t.json()["access_token"].as_str().unwrap().to_string();
            let s = app.authz(Some(&at), Some(R)).await.status;
            if s != StatusCode::OK {
                problems.push(format!(
                    "{format} #{i}: a token obtained right after the retirement answers {s} at /v1/authz (dead on arrival)"
                ));
            }
            let v = introspect(&app, &at).await;
            if v["active"] != true {
                problems.push(format!(
                    "{format} #{i}: a token obtained right after the retirement introspects as {v}"
                ));
            }
            // What was obtained before the retirement is cut off.
            let s = app.authz(Some(&before), None).await.status;
            if s != StatusCode::UNAUTHORIZED {
                problems.push(format!(
                    "{format} #{i}: a token obtained before the retirement answers {s}"
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "retiring a secret on {:?}: {} problems over {} rounds:\n  {}",
        app.backend(),
        problems.len(),
        2 * ROUNDS,
        problems.join("\n  ")
    );
}
on_both!(retired_secret_dead_on_arrival, dead_on_arrival);

async fn member_removal(app: TestApp) {
    app.service("svc", &[R]).await;
    let admin = app.admin_key.clone();
    let org = "org_default";
    let email = "leaver@lifecycle.test";
    let leaver = admin_member(&app, org, email, "member").await;
    let (_, key) = app
        .key(
            &admin,
            json!({ "name": "leaver's key", "owner_member_id": leaver, "scopes": [R] }),
        )
        .await;
    let mut clients = Vec::new();
    for format in ["opaque", "jwt"] {
        let (cid, secret, _) = admin_client(
            &app,
            json!({ "name": format!("leaver's {format} client"), "owner_member_id": leaver, "scopes": [R], "token_format": format }),
        )
        .await;
        let t = token(&app, &cid, &secret).await;
        assert_eq!(t.status, StatusCode::OK, "{}", t.text);
        let at = t.json()["access_token"].as_str().unwrap().to_string();
        clients.push((format, cid, secret, at));
    }
    // A colleague's key, which must keep working.
    let colleague = admin_member(&app, org, "stays@lifecycle.test", "member").await;
    let (_, colleague_key) = app
        .key(
            &admin,
            json!({ "name": "colleague's key", "owner_member_id": colleague, "scopes": [R] }),
        )
        .await;
    // A console session of the leaver, and an unused password link.
    let (mut admin_c, admin_csrf) = admin_console(&app).await;
    let (mut session, session_csrf) =
        member_console(&app, &mut admin_c, &admin_csrf, &leaver, email).await;
    let unused_link = password_link(&mut admin_c, &admin_csrf, &leaver).await;

    // Everything works before.
    assert_eq!(app.authz(Some(&key), Some(R)).await.status, StatusCode::OK);
    for (format, _, _, at) in &clients {
        assert_eq!(
            app.authz(Some(at), Some(R)).await.status,
            StatusCode::OK,
            "{format}"
        );
    }
    assert_eq!(session.get("/console/overview").await.0, StatusCode::OK);

    let d = delete(&app, &format!("/v1/members/{leaver}"), &admin).await;
    assert_eq!(d.status, StatusCode::NO_CONTENT, "{}", d.text);

    let mut problems = Vec::new();
    let s = app.authz(Some(&key), Some(R)).await.status;
    if s != StatusCode::UNAUTHORIZED {
        problems.push(format!("the removed member's key answers {s} at /v1/authz"));
    }
    // Two expected refusals per client at the token endpoint: from an address of their own.
    let from = client_from(IpAddr::V4(Ipv4Addr::new(127, 0, 2, 1)));
    for (format, cid, secret, at) in &clients {
        let s = app.authz(Some(at), Some(R)).await.status;
        if s != StatusCode::UNAUTHORIZED {
            problems.push(format!(
                "an {format} access token of the removed member's client answers {s} at /v1/authz"
            ));
        }
        let v = introspect(&app, at).await;
        if v != json!({ "active": false }) {
            problems.push(format!(
                "an {format} access token of the removed member's client introspects as {v}"
            ));
        }
        let t = token_with(&app, &from, cid, secret).await;
        let error = serde_json::from_str::<serde_json::Value>(&t.text)
            .map(|v| v["error"].clone())
            .unwrap_or_default();
        if t.status != StatusCode::UNAUTHORIZED || error != "invalid_client" {
            problems.push(format!(
                "the removed member's {format} client gets {} at the token endpoint: {}",
                t.status,
                short(&t.text)
            ));
        }
    }
    // The console session has ended: pages send to the sign-in page, the script gets 401.
    let (status, _, location) = session.get("/console/overview").await;
    if status != StatusCode::SEE_OTHER || location.as_deref() != Some("/console/sign-in") {
        problems.push(format!(
            "the removed member's console session still gets {status} (location {location:?}) at /console/overview"
        ));
    }
    let (status, body, _) = session
        .post(
            "/console/keys",
            &[("name", "after removal")],
            Some(&session_csrf),
        )
        .await;
    if status != StatusCode::UNAUTHORIZED {
        problems.push(format!(
            "the removed member's console session may still post: {status} {}",
            short(&body)
        ));
    }
    let s = redeem_link(&app, &unused_link).await;
    if s != StatusCode::NOT_FOUND {
        problems.push(format!(
            "the removed member's unused password link answers {s} at /console/welcome"
        ));
    }
    let s = app.authz(Some(&colleague_key), Some(R)).await.status;
    if s != StatusCode::OK {
        problems.push(format!("a colleague's key answers {s} after the removal"));
    }
    assert!(
        problems.is_empty(),
        "removing a member on {:?}:\n  {}",
        app.backend(),
        problems.join("\n  ")
    );
}
on_both!(member_removal_ends_everything, member_removal);

async fn other_org_clients(app: TestApp) {
    app.service("svc", &[R]).await;
    let admin = app.admin_key.clone();
    let b = admin_create(&app, "/v1/orgs", json!({ "name": "beta" })).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let b_owner = admin_member(&app, &b, "owner@beta.test", "owner").await;
    let (_, b_key) = app
        .key(
            &admin,
            json!({ "org_id": b, "owner_member_id": b_owner, "name": "B owner's key", "scopes": [R] }),
        )
        .await;
    let (cid, secret, sid) =
        admin_client(&app, json!({ "name": "A's client", "scopes": [R] })).await;
    let before = client_snapshot(
        app.get(&format!("/v1/oauth-clients/{cid}"), &admin)
            .await
            .json(),
    );
    let ghost = ghost_client();

    let routes: Vec<(Method, &str, Option<serde_json::Value>)> = vec![
        (Method::GET, "/v1/oauth-clients/{c}", None),
        (
            Method::PATCH,
            "/v1/oauth-clients/{c}",
            Some(json!({ "name": "taken" })),
        ),
        (Method::DELETE, "/v1/oauth-clients/{c}", None),
        (
            Method::POST,
            "/v1/oauth-clients/{c}/secrets",
            Some(json!({})),
        ),
        (Method::DELETE, "/v1/oauth-clients/{c}/secrets/{s}", None),
        (
            Method::POST,
            "/v1/oauth-clients/{c}/tokens",
            Some(json!({})),
        ),
    ];
    let mut problems = Vec::new();
    for (method, route, body) in routes {
        let path = |c: &str| route.replace("{c}", c).replace("{s}", &sid);
        let theirs = app
            .call(method.clone(), &path(&cid), Some(&b_key), body.clone())
            .await;
        let unknown = app
            .call(method.clone(), &path(&ghost), Some(&b_key), body.clone())
            .await;
        if theirs.status != StatusCode::NOT_FOUND
            || theirs.status != unknown.status
            || theirs.text != unknown.text
        {
            problems.push(format!(
                "{method} {route}: another organization's client answers {} {}, an unknown id {} {}",
                theirs.status,
                short(&theirs.text),
                unknown.status,
                short(&unknown.text)
            ));
        }
        let after = app.get(&format!("/v1/oauth-clients/{cid}"), &admin).await;
        if after.status != StatusCode::OK || client_snapshot(after.json()) != before {
            problems.push(format!(
                "{method} {route}: the other organization's client changed: {} {}",
                after.status,
                short(&after.text)
            ));
        }
    }
    let t = token(&app, &cid, &secret).await.status;
    if t != StatusCode::OK {
        problems.push(format!(
            "A's client gets {t} at the token endpoint afterwards"
        ));
    }
    assert!(
        problems.is_empty(),
        "another organization's clients on {:?}:\n  {}",
        app.backend(),
        problems.join("\n  ")
    );
}
on_both!(clients_of_other_orgs_look_unknown, other_org_clients);
