//! One default expiry for new API keys, wherever they are made: the API (`expires_at` absent
//! means the default, `null` means never), the CLI (no `--expires-at` sends nothing;
//! `--expires-at never` and `--no-expiry` send `null`) and the console (the default
//! pre-selected; a form without a choice gets the default), 90 days unless configured.

use crate::cli::Cli;
use crate::console::{csrf_of, Console};
use keyplane_testkit::reqwest::StatusCode;
use keyplane_testkit::{json, spawn_app_with, Backend, Options, TestApp};
use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime};

/// Asserts `v` (a key's `expires_at`) is `days` from now, give or take two minutes.
fn expires_in_days(v: &Value, days: i64, what: &str) {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("{what}: expires_at is {v}, wanted a time {days} days ahead"));
    let at = OffsetDateTime::parse(s, &Rfc3339).expect("RFC 3339");
    let want = OffsetDateTime::now_utc() + Duration::days(days);
    assert!(
        (at - want).abs() < Duration::minutes(2),
        "{what}: expires_at {s}, wanted about {want}"
    );
}

/// Creates a key through the API with `body`; the answer.
async fn create(app: &TestApp, body: Value) -> Value {
    let r = app.post("/v1/api-keys", &app.admin_key, body).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    r.json()
}

/// The `<option>` of the create dialog's expiry list that is selected.
fn selected_expiry(page: &str) -> String {
    let start = page.find("id=\"token-expires\"").expect("the expiry list");
    let list = &page[start..start + page[start..].find("</select>").unwrap()];
    let selected: Vec<&str> = list
        .split("<option ")
        .filter(|o| o.contains(" selected"))
        .collect();
    assert_eq!(selected.len(), 1, "exactly one choice selected: {list}");
    let v = selected[0].split('"').nth(1).unwrap();
    v.to_string()
}

/// Signs in to the console with the admin key; the keys page and its CSRF token.
async fn console_keys(app: &TestApp) -> (Console, String, String) {
    let mut c = Console::new(app);
    let (_, page, _) = c.get("/console/sign-in").await;
    let pre = csrf_of(&page);
    let (status, _, _) = c
        .post(
            "/console/sign-in",
            &[
                ("csrf", &pre),
                ("method", "admin"),
                ("admin_key", &app.admin_key),
            ],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER, "admin sign-in");
    let (status, page, _) = c.get("/console/keys").await;
    assert_eq!(status, StatusCode::OK);
    let csrf = csrf_of(&page);
    (c, page, csrf)
}

/// The key the console made last, by name, through the API.
async fn key_named(app: &TestApp, name: &str) -> Value {
    let list = app.get("/v1/api-keys", &app.admin_key).await.json();
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == name)
        .unwrap_or_else(|| panic!("no key {name}: {list}"))
        .clone()
}

async fn ninety_days_everywhere(app: TestApp) {
    app.service("ai-guard", &["ai-guard:read"]).await;
    // The API: absent → the default; null → never; a time → that time; the past → refused.
    let k = create(
        &app,
        json!({ "name": "absent", "scopes": ["ai-guard:read"] }),
    )
    .await;
    expires_in_days(&k["expires_at"], 90, "API, no expires_at");
    let k = create(&app, json!({ "name": "never", "expires_at": null })).await;
    assert!(k["expires_at"].is_null(), "API, null: {k}");
    let k = create(
        &app,
        json!({ "name": "dated", "expires_at": "2999-01-01T00:00:00Z" }),
    )
    .await;
    assert_eq!(k["expires_at"], "2999-01-01T00:00:00.000Z");
    let r = app
        .post(
            "/v1/api-keys",
            &app.admin_key,
            json!({ "name": "past", "expires_at": "2001-01-01T00:00:00Z" }),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
    // The key made with the default works now (the default is ahead, not behind).
    let secret = create(
        &app,
        json!({ "name": "works", "scopes": ["ai-guard:read"] }),
    )
    .await["key"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(app.authz(Some(&secret), None).await.status, StatusCode::OK);

    // A copy of a key that never expires never expires either; of a dated one, the same date.
    let never = key_named(&app, "never").await;
    let copy = app
        .post(
            &format!("/v1/api-keys/{}/copy", never["id"].as_str().unwrap()),
            &app.admin_key,
            json!({}),
        )
        .await
        .json();
    assert!(
        copy["expires_at"].is_null(),
        "copy of a never-expiring key: {copy}"
    );

    // The CLI: no flag → the server's default; `never` and `--no-expiry` → never.
    let cli = Cli::admin(&app);
    let k = cli.json(&["keys", "create", "--name", "cli-default"]).await;
    expires_in_days(&k["expires_at"], 90, "CLI, no --expires-at");
    let k = cli
        .json(&[
            "keys",
            "create",
            "--name",
            "cli-never",
            "--expires-at",
            "never",
        ])
        .await;
    assert!(k["expires_at"].is_null(), "CLI --expires-at never: {k}");
    let k = cli
        .json(&["keys", "create", "--name", "cli-no-expiry", "--no-expiry"])
        .await;
    assert!(k["expires_at"].is_null(), "CLI --no-expiry: {k}");
    // And an update back to never by the same word.
    let dated = key_named(&app, "dated").await;
    let k = cli
        .json(&[
            "keys",
            "update",
            dated["id"].as_str().unwrap(),
            "--expires-at",
            "never",
        ])
        .await;
    assert!(
        k["expires_at"].is_null(),
        "CLI update --expires-at never: {k}"
    );

    // The console: the default pre-selected; creating with it gives the same 90 days.
    let (mut c, page, csrf) = console_keys(&app).await;
    assert_eq!(selected_expiry(&page), "90");
    let (status, _, _) = c
        .post(
            "/console/keys",
            &[("name", "console-default"), ("expires", "90")],
            Some(&csrf),
        )
        .await;
    assert!(status.is_redirection() || status.is_success(), "{status}");
    expires_in_days(
        &key_named(&app, "console-default").await["expires_at"],
        90,
        "console, default choice",
    );
    let (status, _, _) = c
        .post(
            "/console/keys",
            &[("name", "console-never"), ("expires", "never")],
            Some(&csrf),
        )
        .await;
    assert!(status.is_redirection() || status.is_success(), "{status}");
    assert!(key_named(&app, "console-never").await["expires_at"].is_null());
    // A form that sends no choice at all gets the default, as the API does.
    let (status, _, _) = c
        .post("/console/keys", &[("name", "console-none")], Some(&csrf))
        .await;
    assert!(status.is_redirection() || status.is_success(), "{status}");
    expires_in_days(
        &key_named(&app, "console-none").await["expires_at"],
        90,
        "console, no choice",
    );
}
on_both!(
    default_expiry_is_ninety_days_everywhere,
    ninety_days_everywhere
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_default_applies_everywhere() {
    let Some(app) = spawn_app_with(
        Backend::Sqlite,
        Options::default().env("KEYPLANE_API_KEY_DEFAULT_TTL_DAYS", "14"),
    )
    .await
    else {
        return;
    };
    let k = create(&app, json!({ "name": "api" })).await;
    expires_in_days(&k["expires_at"], 14, "API, configured 14 days");
    let k = Cli::admin(&app)
        .json(&["keys", "create", "--name", "cli"])
        .await;
    expires_in_days(&k["expires_at"], 14, "CLI, configured 14 days");
    let (_, page, _) = console_keys(&app).await;
    // 14 is not one of the usual choices: it is added to the list, and selected.
    assert_eq!(selected_expiry(&page), "14");
    assert!(page.contains(">In 14 days<"), "the choice is named");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_means_keys_never_expire_unless_asked() {
    let Some(app) = spawn_app_with(
        Backend::Sqlite,
        Options::default().env("KEYPLANE_API_KEY_DEFAULT_TTL_DAYS", "0"),
    )
    .await
    else {
        return;
    };
    let k = create(&app, json!({ "name": "api" })).await;
    assert!(k["expires_at"].is_null(), "{k}");
    let k = create(
        &app,
        json!({ "name": "dated", "expires_at": "2999-01-01T00:00:00Z" }),
    )
    .await;
    assert_eq!(k["expires_at"], "2999-01-01T00:00:00.000Z");
    let (_, page, _) = console_keys(&app).await;
    assert_eq!(selected_expiry(&page), "never");
}
