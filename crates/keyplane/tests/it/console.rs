//! The web console (issue 5).
//!
//! - `sessions_and_links` (both backends): the console's own storage over plain HTTP: sign-in
//!   with the admin key, the CSRF check, a member's one-time password link (single use), a
//!   member's session acting with the member's role, sign-out, and throttled sign-ins.
//! - `search_is_scoped` (both backends, issue 15): the header's search finds our key, client
//!   and member by name, prefix and id, and another organization's by none of them.
//! - `in_chromium`: the whole console in real headless Chromium, `node --test console-tests/`
//!   against this build's binary. It needs Debian's `chromium`, node, and
//!   `console-tests/node_modules` (`bash scripts/ensure-chromium.sh` installs them); without them
//!   it says SKIPPED on stderr and passes.

use keyplane_testkit::reqwest::{self, StatusCode};
use keyplane_testkit::TestApp;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A browser-less console client: keeps the console's cookies itself (also used by the
/// issue-10 tests through `support`).
pub(crate) struct Console {
    base: String,
    http: reqwest::Client,
    cookies: Vec<(String, String)>,
}

impl Console {
    pub(crate) fn new(app: &TestApp) -> Self {
        Console {
            base: app.base.clone(),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("client"),
            cookies: vec![],
        }
    }

    fn keep_cookies(&mut self, resp: &reqwest::Response) {
        for v in resp.headers().get_all("set-cookie") {
            let v = v.to_str().unwrap().to_string();
            assert!(
                v.contains("HttpOnly")
                    && v.contains("SameSite=Strict")
                    && v.contains("Path=/console"),
                "{v}"
            );
            let (kv, _) = v.split_once(';').unwrap();
            let (k, val) = kv.split_once('=').unwrap();
            self.cookies.retain(|(n, _)| n != k);
            if !val.is_empty() {
                self.cookies.push((k.to_string(), val.to_string()));
            }
        }
    }

    pub(crate) fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    pub(crate) async fn get(&mut self, path: &str) -> (StatusCode, String, Option<String>) {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .header("cookie", self.cookie_header())
            .send()
            .await
            .unwrap();
        self.keep_cookies(&resp);
        let status = resp.status();
        let location = resp
            .headers()
            .get("location")
            .map(|l| l.to_str().unwrap().to_string());
        (status, resp.text().await.unwrap(), location)
    }

    pub(crate) async fn post(
        &mut self,
        path: &str,
        form: &[(&str, &str)],
        csrf_header: Option<&str>,
    ) -> (StatusCode, String, Option<String>) {
        self.post_with(path, form, csrf_header, &[]).await
    }

    /// [`Console::post`] with extra request headers (a forged `Host`, say).
    pub(crate) async fn post_with(
        &mut self,
        path: &str,
        form: &[(&str, &str)],
        csrf_header: Option<&str>,
        headers: &[(&str, &str)],
    ) -> (StatusCode, String, Option<String>) {
        let mut req = self
            .http
            .post(format!("{}{path}", self.base))
            .header("cookie", self.cookie_header())
            .form(form);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(t) = csrf_header {
            req = req.header("x-csrf-token", t);
        }
        let resp = req.send().await.unwrap();
        self.keep_cookies(&resp);
        let status = resp.status();
        let location = resp
            .headers()
            .get("location")
            .map(|l| l.to_str().unwrap().to_string());
        (status, resp.text().await.unwrap(), location)
    }
}

/// The CSRF token a page carries in its forms.
pub(crate) fn csrf_of(html: &str) -> String {
    let at = html.find("name=\"csrf\" value=\"").expect("a csrf field") + 19;
    html[at..].split('"').next().unwrap().to_string()
}

async fn sessions_and_links(app: TestApp) {
    let mut admin = Console::new(&app);
    let (status, _, location) = admin.get("/console/keys").await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(location.as_deref(), Some("/console/sign-in"));
    let (_, page, _) = admin.get("/console/sign-in").await;
    let pre = csrf_of(&page);
    // Without the pre-session token the sign-in form is refused.
    let (status, _, _) = admin
        .post(
            "/console/sign-in",
            &[("method", "admin"), ("admin_key", &app.admin_key)],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, location) = admin
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
    assert_eq!(location.as_deref(), Some("/console/overview"));
    let (status, page, _) = admin.get("/console/members").await;
    assert_eq!(status, StatusCode::OK);
    let csrf = csrf_of(&page);

    // Forms without the session's CSRF token change nothing.
    let (status, _, _) = admin
        .post(
            "/console/members",
            &[("email", "forged@example.com"), ("role", "owner")],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, _) = admin
        .post(
            "/console/members",
            &[("email", "forged@example.com"), ("role", "owner")],
            Some("not-the-token"),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // Add a member through the console, and a one-time link for them.
    let (status, body, _) = admin
        .post(
            "/console/members",
            &[
                ("email", "ana@example.com"),
                ("name", "Ana"),
                ("role", "admin"),
            ],
            Some(&csrf),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let members = app.get("/v1/members", &app.admin_key).await.json();
    let items = members["items"].as_array().unwrap();
    assert!(!items.iter().any(|m| m["email"] == "forged@example.com"));
    let ana = items
        .iter()
        .find(|m| m["email"] == "ana@example.com")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, body, _) = admin
        .post(&format!("/console/members/{ana}/link"), &[], Some(&csrf))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    let link = answer["secret"]["items"][0]["value"].as_str().unwrap();
    let token = link.split("#token=").nth(1).unwrap().to_string();

    // Ana sets her password with it, once.
    let mut ana_console = Console::new(&app);
    let (_, page, _) = ana_console.get("/console/welcome").await;
    let pre = csrf_of(&page);
    let password = "correct horse battery staple";
    let set = [
        ("csrf", pre.as_str()),
        ("token", token.as_str()),
        ("password", password),
        ("confirm", password),
    ];
    let (status, body, location) = ana_console.post("/console/welcome", &set, None).await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
    assert_eq!(location.as_deref(), Some("/console/sign-in?done=password"));
    let (status, _, _) = ana_console.post("/console/welcome", &set, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "a link works once");

    // A wrong password is refused, and after a few failures the sign-in is throttled.
    let (_, page, _) = ana_console.get("/console/sign-in").await;
    let pre = csrf_of(&page);
    let sign_in = |pw: &'static str| {
        [
            ("csrf", pre.clone()),
            ("method", "member".to_string()),
            ("email", "ANA@example.com".to_string()),
            ("password", pw.to_string()),
        ]
    };
    let form = sign_in("correct horse battery staple");
    let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (status, _, location) = ana_console.post("/console/sign-in", &form, None).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(location.as_deref(), Some("/console/overview"));
    let (status, page, _) = ana_console.get("/console/overview").await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("Ana (admin)"));

    // Ana's session acts as Ana: what she does is logged as her, through the console.
    let ana_csrf = csrf_of(&page);
    let (status, body, _) = ana_console
        .post(
            "/console/members",
            &[("email", "bo@example.com"), ("role", "member")],
            Some(&ana_csrf),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // An admin may not make owners (the use case's rule, not a copy of it).
    let (status, body, _) = ana_console
        .post(
            "/console/members",
            &[("email", "cy@example.com"), ("role", "owner")],
            Some(&ana_csrf),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let denied = app
        .get("/v1/activity?action=management.denied", &app.admin_key)
        .await
        .json();
    assert_eq!(
        denied["items"][0]["actor"],
        format!("member:{ana} via console"),
        "a refusal in the console is recorded like one in the API: {denied}"
    );
    assert_eq!(denied["items"][0]["outcome"], "denied");
    let events = app
        .get("/v1/activity?action=member.create", &app.admin_key)
        .await
        .json();
    assert_eq!(
        events["items"][0]["actor"],
        format!("member:{ana} via console")
    );

    // The same person in a second organization, with the same password, can switch to it;
    // an organization they were not proved in stays out of reach.
    let second = app
        .post(
            "/v1/orgs",
            &app.admin_key,
            keyplane_testkit::json!({ "name": "second" }),
        )
        .await
        .json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let third = app
        .post(
            "/v1/orgs",
            &app.admin_key,
            keyplane_testkit::json!({ "name": "third" }),
        )
        .await
        .json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let ana2 = app
        .post(
            "/v1/members",
            &app.admin_key,
            keyplane_testkit::json!({ "org_id": second, "email": "ana@example.com", "role": "member" }),
        )
        .await
        .json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, body, _) = admin
        .post(&format!("/console/members/{ana2}/link"), &[], Some(&csrf))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    let link2 = answer["secret"]["items"][0]["value"].as_str().unwrap();
    let token2 = link2.split("#token=").nth(1).unwrap().to_string();
    let mut setter = Console::new(&app);
    let (_, page, _) = setter.get("/console/welcome").await;
    let pre2 = csrf_of(&page);
    let (status, body, _) = setter
        .post(
            "/console/welcome",
            &[
                ("csrf", pre2.as_str()),
                ("token", token2.as_str()),
                ("password", password),
                ("confirm", password),
            ],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
    let mut multi = Console::new(&app);
    let (_, page, _) = multi.get("/console/sign-in").await;
    let pre3 = csrf_of(&page);
    let (status, _, _) = multi
        .post(
            "/console/sign-in",
            &[
                ("csrf", pre3.as_str()),
                ("method", "member"),
                ("email", "ana@example.com"),
                ("password", password),
            ],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let (_, page, _) = multi.get("/console/overview").await;
    assert!(
        page.contains("name=\"org_id\""),
        "a member of two organizations gets the switcher"
    );
    assert!(page.contains(&second) && !page.contains(&third));
    assert!(page.contains("Ana (admin)"));
    let multi_csrf = csrf_of(&page);
    let (status, body, _) = multi
        .post(
            "/console/context",
            &[("org_id", third.as_str())],
            Some(&multi_csrf),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "not proved in the third organization: {body}"
    );
    let (status, body, _) = multi
        .post(
            "/console/context",
            &[("org_id", second.as_str())],
            Some(&multi_csrf),
        )
        .await;
    assert!(
        status.is_success() || status == StatusCode::SEE_OTHER,
        "{status}: {body}"
    );
    let (_, page, _) = multi.get("/console/overview").await;
    assert!(
        page.contains("ana@example.com (member)")
            && page.contains(&format!("<option value=\"{second}\" selected>")),
        "now Ana's member of the second organization"
    );
    let me = multi.get("/console/keys").await;
    assert_eq!(me.0, StatusCode::OK);

    // Signing out ends the session for good.
    let (status, _, location) = ana_console
        .post("/console/sign-out", &[("csrf", &ana_csrf)], None)
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(location.as_deref(), Some("/console/sign-in?done=out"));
    let (status, _, _) = ana_console.get("/console/overview").await;
    assert_eq!(status, StatusCode::SEE_OTHER);

    let mut throttled = false;
    for _ in 0..8 {
        let form = sign_in("wrong password, surely");
        let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (status, _, _) = ana_console.post("/console/sign-in", &form, None).await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            throttled = true;
            break;
        }
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    assert!(throttled, "failed sign-ins are throttled");
}

on_both!(sessions_and_links, sessions_and_links);

/// The ids a search page lists (`data-id` of its result rows).
fn result_ids(page: &str) -> Vec<String> {
    page.split("data-result=\"")
        .skip(1)
        .filter_map(|r| r.split("data-id=\"").nth(1))
        .filter_map(|r| r.split('"').next())
        .map(str::to_string)
        .collect()
}

async fn found(admin: &mut Console, path: String) -> Vec<String> {
    let (status, page, _) = admin.get(&path).await;
    assert_eq!(status, StatusCode::OK, "{path}");
    result_ids(&page)
}

async fn search_is_scoped(app: TestApp) {
    use keyplane_testkit::json;
    let mut admin = Console::new(&app);
    let (_, page, _) = admin.get("/console/sign-in").await;
    let pre = csrf_of(&page);
    let (status, _, _) = admin
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
    assert_eq!(status, StatusCode::SEE_OTHER);
    let key = app
        .post(
            "/v1/api-keys",
            &app.admin_key,
            json!({ "name": "twin name" }),
        )
        .await
        .json();
    let client = app
        .post(
            "/v1/oauth-clients",
            &app.admin_key,
            json!({ "name": "twin name client" }),
        )
        .await
        .json();
    let member = app
        .post(
            "/v1/members",
            &app.admin_key,
            json!({ "email": "twin@example.com", "name": "twin name", "role": "member" }),
        )
        .await
        .json();
    // Another organization with the same names.
    let other = app
        .post("/v1/orgs", &app.admin_key, json!({ "name": "elsewhere" }))
        .await
        .json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let their_key = app
        .post(
            "/v1/api-keys",
            &app.admin_key,
            json!({ "org_id": other, "name": "twin name" }),
        )
        .await
        .json();
    let their_client = app
        .post(
            "/v1/oauth-clients",
            &app.admin_key,
            json!({ "org_id": other, "name": "twin name client" }),
        )
        .await
        .json();
    let their_member = app
        .post(
            "/v1/members",
            &app.admin_key,
            json!({ "org_id": other, "email": "twin@example.com", "name": "twin name", "role": "member" }),
        )
        .await
        .json();
    let id = |v: &serde_json::Value, f: &str| v[f].as_str().expect(f).to_string();
    let (key_id, client_id, member_id) =
        (id(&key, "id"), id(&client, "client_id"), id(&member, "id"));
    let theirs = [
        id(&their_key, "id"),
        id(&their_client, "client_id"),
        id(&their_member, "id"),
    ];
    let search = |q: String| {
        let q = form_urlencoded::byte_serialize(q.as_bytes()).collect::<String>();
        format!("/console/search?q={q}")
    };
    let by_name = found(&mut admin, search("twin".into())).await;
    for ours in [&key_id, &client_id, &member_id] {
        assert!(by_name.contains(ours), "{ours} in {by_name:?}");
    }
    for t in &theirs {
        assert!(
            !by_name.contains(t),
            "another organization's {t} never appears"
        );
    }
    assert_eq!(
        found(&mut admin, search(key_id.clone())).await,
        vec![key_id.clone()]
    );
    let prefix = key["key"].as_str().unwrap()[..7].to_string();
    assert!(found(&mut admin, search(prefix)).await.contains(&key_id));
    assert_eq!(
        found(&mut admin, search(client_id.clone())).await,
        vec![client_id.clone()]
    );
    assert_eq!(
        found(&mut admin, search("TWIN@example".into())).await,
        vec![member_id.clone()]
    );
    // Theirs by id or prefix: nothing, as for what does not exist.
    for q in theirs
        .iter()
        .cloned()
        .chain([their_key["key"].as_str().unwrap()[..7].to_string()])
    {
        assert_eq!(
            found(&mut admin, search(q.clone())).await,
            Vec::<String>::new(),
            "{q}"
        );
    }
    // Markup in a query is shown as text.
    let (_, page, _) = admin.get(&search("<script>x</script>".into())).await;
    assert!(!page.contains("<script>x"));
}

on_both!(search_is_scoped, search_is_scoped);

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn skipped(why: &str) {
    let _ = std::io::stderr().write_all(
        format!(
            "SKIPPED console::in_chromium: {why}; run `bash scripts/ensure-chromium.sh` to install it\n"
        )
        .as_bytes(),
    );
}

#[test]
fn in_chromium() {
    let root = workspace_root();
    let tests = root.join("console-tests");
    let chromium =
        std::env::var("KEYPLANE_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !Path::new(&chromium).exists() {
        return skipped(&format!("no Chromium at {chromium}"));
    }
    if Command::new("node").arg("--version").output().is_err() {
        return skipped("node is not installed");
    }
    if !tests.join("node_modules/playwright-core").exists() {
        return skipped("console-tests/node_modules has no playwright-core");
    }
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    let out = Command::new("node")
        .arg("--test")
        .arg("--test-reporter=spec")
        .arg(&tests)
        .current_dir(&root)
        .env("KEYPLANE_BIN", env!("CARGO_BIN_EXE_keyplane"))
        .env("KEYPLANE_CHROMIUM", &chromium)
        .env("KEYPLANE_CONSOLE_SCREENSHOTS", &shots)
        .output()
        .expect("run node");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "the console's browser tests failed:\n{report}"
    );
    let _ = std::io::stderr().write_all(
        format!(
            "console::in_chromium: passed in headless Chromium; screenshots in {}\n",
            shots.display()
        )
        .as_bytes(),
    );
}
