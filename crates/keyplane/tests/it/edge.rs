//! Issue 11, the connection edge: slow clients over raw TCP (a request head or body that never
//! finishes, idle keep-alive, the connection cap) on the API — hot routes and router alike —
//! and on the gateway; trusted proxies and the client address; the throttle on management
//! authentication; refusals aggregated with bounded cardinality; incremental verification.

use crate::support::client_from;
use keyplane_testkit::reqwest::{self, StatusCode};
use keyplane_testkit::{json, spawn_app_with, Backend, Options, TempDir, TestApp};
use std::net::IpAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Short limits, so slow clients are cut off within the test's patience.
fn slow_client_options() -> Options {
    Options::default()
        .env("KEYPLANE_HEADER_READ_TIMEOUT_SECONDS", "1")
        .env("KEYPLANE_REQUEST_BODY_TIMEOUT_SECONDS", "1")
        .env("KEYPLANE_IDLE_TIMEOUT_SECONDS", "3")
}

fn host_port(base: &str) -> String {
    base.trim_start_matches("http://").to_string()
}

/// Reads until the server closes the connection (or `patience` runs out); returns what was
/// read, how long it took, and whether the connection was closed.
async fn read_until_closed(s: &mut TcpStream, patience: Duration) -> (String, Duration, bool) {
    let started = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = patience.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => {
                return (
                    String::from_utf8_lossy(&out).into(),
                    started.elapsed(),
                    false,
                )
            }
            Ok(Ok(0)) | Ok(Err(_)) => {
                return (
                    String::from_utf8_lossy(&out).into(),
                    started.elapsed(),
                    true,
                )
            }
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// Sends `bytes` on a fresh connection and waits for the server to close it.
async fn send_and_wait(addr: &str, bytes: &str, patience: Duration) -> (String, Duration, bool) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let started = Instant::now();
    s.write_all(bytes.as_bytes()).await.expect("write");
    let (text, _, closed) = read_until_closed(&mut s, patience).await;
    (text, started.elapsed(), closed)
}

fn assert_cut_off_in_time(what: &str, took: Duration, closed: bool) {
    assert!(
        closed,
        "{what}: the connection was still open after {took:?}"
    );
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(2500),
        "{what}: closed after {took:?}, expected about 1 s"
    );
}

async fn app_with_gateway(opts: Options, dir: &TempDir) -> (TestApp, String) {
    let up = crate::gateway::upstream().await;
    let config = dir.path().join("keyplane.toml");
    std::fs::write(&config, "# rules are added once the service exists\n").unwrap();
    let app = spawn_app_with(
        Backend::Sqlite,
        opts.env("KEYPLANE_CONFIG", config.to_str().unwrap())
            .env("KEYPLANE_GATEWAY_LISTEN", "127.0.0.1:0")
            .env("KEYPLANE_UPSTREAM", &up)
            .env("KEYPLANE_UPSTREAM_TIMEOUT_MS", "10000"),
    )
    .await
    .expect("SQLite always runs");
    app.service("ai-guard", &["ai-guard:read"]).await;
    std::fs::write(&config, crate::gateway::RULES).unwrap();
    let r = app
        .post("/v1/admin/routes/reload", &app.admin_key.clone(), json!({}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let gw = app.gateway_base().expect("the gateway runs");
    (app, gw)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_a_header_line_is_closed_in_time() {
    let dir = TempDir::new();
    let (app, gw) = app_with_gateway(slow_client_options(), &dir).await;
    for (name, base) in [("API", &app.base), ("gateway", &gw)] {
        // Half a header line, then nothing: closed without an answer after the header timeout.
        let (text, took, closed) = send_and_wait(
            &host_port(base),
            "GET /v1/authz HTTP/1.1\r\nHost: x\r\nAuthoriz",
            Duration::from_secs(10),
        )
        .await;
        assert_cut_off_in_time(name, took, closed);
        assert!(text.is_empty(), "{name}: answered {text:?}");
        // A connection that sends nothing at all is closed the same way.
        let (_, took, closed) = send_and_wait(&host_port(base), "", Duration::from_secs(10)).await;
        assert_cut_off_in_time(name, took, closed);
        // Trickling the head byte by byte does not extend it.
        let mut s = TcpStream::connect(host_port(base)).await.unwrap();
        let started = Instant::now();
        let mut closed = false;
        for b in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaa" {
            if s.write_all(&[*b]).await.is_err() {
                closed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        if !closed {
            closed = read_until_closed(&mut s, Duration::from_secs(5)).await.2;
        }
        assert!(closed, "{name}: a trickled head was never cut off");
        assert!(
            started.elapsed() < Duration::from_millis(3000),
            "{name}: a trickled head was cut off only after {:?}",
            started.elapsed()
        );
    }
    // Complete requests are answered as before.
    assert_eq!(
        app.call(reqwest::Method::GET, "/healthz", None, None)
            .await
            .status,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_is_answered_408_and_closed() {
    let dir = TempDir::new();
    let (app, gw) = app_with_gateway(slow_client_options(), &dir).await;
    let admin = app.admin_key.clone();
    let (_, key) = app
        .key(&admin, json!({ "name": "k", "scopes": ["ai-guard:read"] }))
        .await;
    let api = host_port(&app.base);
    let cases = [
        // A hot route, dispatched before the router, that reads its own form.
        (
            "token endpoint",
            api.clone(),
            "POST /v1/oauth/token HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\ngr".to_string(),
        ),
        // A router route, after authentication.
        (
            "management route",
            api.clone(),
            format!("POST /v1/orgs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {admin}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\""),
        ),
        // The gateway, streaming the body to the upstream.
        (
            "gateway",
            host_port(&gw),
            format!("POST /upload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nContent-Length: 100\r\n\r\nab"),
        ),
    ];
    for (name, addr, request) in cases {
        let (text, took, closed) = send_and_wait(&addr, &request, Duration::from_secs(10)).await;
        assert_cut_off_in_time(name, took, closed);
        assert!(
            text.starts_with("HTTP/1.1 408"),
            "{name}: answered {text:?}"
        );
        assert!(text.contains("application/problem+json"), "{name}: {text}");
        assert!(text.contains("request-timeout"), "{name}: {text}");
        assert!(
            text.to_ascii_lowercase().contains("connection: close"),
            "{name}: {text}"
        );
    }
    // The example: 99,999,999,999 bytes announced, two sent. Answered at once (413)
    // or when the body's time is up (408); never left waiting.
    for (path, content_type) in [
        ("/v1/oauth/token", "application/x-www-form-urlencoded"),
        ("/v1/orgs", "application/json"),
    ] {
        let request = format!("POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {admin}\r\nContent-Type: {content_type}\r\nContent-Length: 99999999999\r\n\r\nab");
        let (text, took, closed) = send_and_wait(&api, &request, Duration::from_secs(10)).await;
        assert!(closed, "{path}: still open after {took:?}");
        assert!(took < Duration::from_millis(2500), "{path}: {took:?}");
        assert!(
            text.starts_with("HTTP/1.1 408") || text.starts_with("HTTP/1.1 413"),
            "{path}: answered {text:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_is_closed_after_the_idle_timeout() {
    let app = spawn_app_with(Backend::Sqlite, slow_client_options())
        .await
        .unwrap();
    let mut s = TcpStream::connect(host_port(&app.base)).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // Kept alive past the header timeout (1 s): idle is not a slow head...
    tokio::time::sleep(Duration::from_millis(1500)).await;
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // ...and closed once idle for the idle timeout (3 s).
    let (_, took, closed) = read_until_closed(&mut s, Duration::from_secs(10)).await;
    assert!(closed);
    assert!(
        took >= Duration::from_millis(2800) && took < Duration::from_millis(4500),
        "closed after {took:?}, expected about 3 s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_connection_cap_new_connections_wait() {
    let app = spawn_app_with(
        Backend::Sqlite,
        Options::default().env("KEYPLANE_MAX_CONNECTIONS", "3"),
    )
    .await
    .unwrap();
    let addr = host_port(&app.base);
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(&addr).await.unwrap());
    }
    // The fourth connection is queued by the operating system, not served.
    let mut fourth = TcpStream::connect(&addr).await.unwrap();
    fourth
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    assert!(
        tokio::time::timeout(Duration::from_millis(700), fourth.read(&mut buf))
            .await
            .is_err(),
        "a fourth connection was served past a cap of 3"
    );
    // Once one closes, it is served.
    drop(held.pop());
    let n = tokio::time::timeout(Duration::from_secs(5), fourth.read(&mut buf))
        .await
        .expect("served once a slot is free")
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
}

// ----- trusted proxies, the throttle on management authentication -----

const WRONG_ADMIN_KEY: &str = "kpa_this-is-not-the-admin-key-of-this-deployment-0123";

async fn whoami(
    http: &reqwest::Client,
    app: &TestApp,
    token: &str,
    xff: Option<&str>,
) -> reqwest::Response {
    let mut r = http.get(format!("{}/v1/me", app.base)).bearer_auth(token);
    if let Some(x) = xff {
        r = r.header("x-forwarded-for", x);
    }
    r.send().await.unwrap()
}

async fn throttled_per_address(app: TestApp) {
    let admin = app.admin_key.clone();
    let a = client_from("127.0.0.2".parse::<IpAddr>().unwrap());
    let b = client_from("127.0.0.3".parse::<IpAddr>().unwrap());
    // 20 failures a minute per address (admin-key guesses and bad API keys alike) are 401...
    for i in 0..20 {
        let token = if i % 2 == 0 {
            WRONG_ADMIN_KEY.to_string()
        } else {
            format!("kp_{}", "x".repeat(49))
        };
        let r = whoami(&a, &app, &token, None).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "attempt {i}");
    }
    // ...then 429 problem+json with Retry-After, even for the right key from that address.
    for token in [WRONG_ADMIN_KEY, admin.as_str()] {
        let r = whoami(&a, &app, token, None).await;
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        let wait: u64 = r.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=60).contains(&wait), "{wait}");
        assert_eq!(r.headers()["content-type"], "application/problem+json");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["status"], 429);
        assert_eq!(
            body["type"],
            "https://keyplane.dev/problems/too-many-requests"
        );
    }
    // Every other address is untouched: the right key works, a wrong one is a plain 401.
    assert_eq!(
        whoami(&b, &app, &admin, None).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        whoami(&b, &app, WRONG_ADMIN_KEY, None).await.status(),
        StatusCode::UNAUTHORIZED
    );
    // Without a trusted proxy, X-Forwarded-For is the caller's claim and changes nothing.
    let r = whoami(&a, &app, &admin, Some("198.51.100.1")).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    app.flush().await;
    let events = app
        .get("/v1/activity?action=credential.refused&limit=200", &admin)
        .await
        .json();
    let addrs: Vec<&str> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["client_addr"].as_str())
        .collect();
    assert!(addrs.contains(&"127.0.0.2"), "{addrs:?}");
    assert!(!addrs.contains(&"198.51.100.1"), "{addrs:?}");
}
on_both!(
    management_authentication_is_throttled,
    throttled_per_address
);

async fn behind_a_trusted_proxy(app: TestApp) {
    let admin = app.admin_key.clone();
    // The test's connections come from 127.0.0.1, configured as the trusted proxy.
    let proxy = client_from("127.0.0.1".parse::<IpAddr>().unwrap());
    let (bad, good) = ("203.0.113.7", "203.0.113.8");
    for i in 0..20 {
        // A client's own claim to the left of what the proxy appended is not believed.
        let xff = format!("10.9.9.{i}, {bad}");
        let r = whoami(&proxy, &app, WRONG_ADMIN_KEY, Some(&xff)).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "attempt {i}");
    }
    assert_eq!(
        whoami(&proxy, &app, WRONG_ADMIN_KEY, Some(bad))
            .await
            .status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    // Another client behind the same proxy is not locked out.
    assert_eq!(
        whoami(&proxy, &app, &admin, Some(good)).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        whoami(&proxy, &app, WRONG_ADMIN_KEY, Some(good))
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
    // An untrusted peer's header is ignored: it is throttled (or not) as itself.
    let direct = client_from("127.0.0.5".parse::<IpAddr>().unwrap());
    assert_eq!(
        whoami(&direct, &app, &admin, Some(bad)).await.status(),
        StatusCode::OK
    );
    // Events record the forwarded address.
    let created = proxy
        .post(format!("{}/v1/orgs", app.base))
        .bearer_auth(&admin)
        .header("x-forwarded-for", good)
        .json(&json!({ "name": "from-behind-the-proxy" }))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    app.flush().await;
    let events = app.get("/v1/activity?limit=200", &admin).await.json();
    let items = events["items"].as_array().unwrap();
    let org = items
        .iter()
        .find(|e| e["action"] == "org.create")
        .expect("org.create");
    assert_eq!(org["client_addr"], good);
    // The refusals are aggregated per flush: a flush during the loop splits them in two.
    let refused: i64 = items
        .iter()
        .filter(|e| {
            e["action"] == "credential.refused"
                && e["details"]["reason"] == "unknown"
                && e["client_addr"] == bad
        })
        .map(|e| e["details"]["count"].as_i64().unwrap())
        .sum();
    assert_eq!(refused, 20, "the forwarded client's refusals");
    assert!(items
        .iter()
        .all(|e| e["client_addr"] != "127.0.0.1" || e["action"] != "credential.refused"));
}
on_both!(
    trusted_proxy_names_the_client,
    behind_a_trusted_proxy,
    keyplane_testkit::Options::default()
        .env("KEYPLANE_TRUSTED_PROXIES", "127.0.0.1/32, 10.0.0.0/8")
);

// ----- bounded refusals -----

async fn flood_of_refusals(app: TestApp) {
    let admin = app.admin_key.clone();
    let before = refusal_events(&app, &admin).await;
    // 2,000 bad credentials, each with its own User-Agent; half from one address, half from
    // 1,000 forwarded addresses (the proxy, 127.0.0.1, is trusted). The first one goes alone,
    // so the unforwarded address holds one of the aggregates.
    let send = |http: reqwest::Client, base: String, n: usize| async move {
        let mut r = http
            .get(format!("{base}/v1/authz"))
            .bearer_auth(format!("kp_bad{n}"))
            .header("user-agent", format!("flood/{n}"));
        if n % 2 == 1 {
            r = r.header("x-forwarded-for", format!("198.51.{}.{}", n / 250, n % 250));
        }
        assert_eq!(r.send().await.unwrap().status(), StatusCode::UNAUTHORIZED);
    };
    send(app.http.clone(), app.base.clone(), 0).await;
    let mut tasks = Vec::new();
    for chunk in 0..40 {
        let (http, base) = (app.http.clone(), app.base.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..50 {
                let n = chunk * 50 + i;
                if n > 0 {
                    send(http.clone(), base.clone(), n).await;
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    app.flush().await;
    let after = refusal_events(&app, &admin).await;
    let new: Vec<&serde_json::Value> = after.iter().filter(|e| !before.contains(e)).collect();
    // A cap of 10 aggregates per flush, plus one event counting the rest.
    assert!(new.len() <= 11, "{} events for one flush", new.len());
    let total: u64 = new
        .iter()
        .map(|e| e["details"]["count"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 2000, "every refusal is counted");
    let one_address = new
        .iter()
        .find(|e| e["client_addr"] == "127.0.0.1")
        .expect("the unforwarded half is one event");
    assert_eq!(one_address["details"]["count"], 1000);
    assert_eq!(one_address["details"]["user_agents"], 64);
    let flood = new
        .iter()
        .find(|e| e["details"]["reason"] == "flood")
        .expect("the overflow is one event");
    assert!(flood["details"]["addresses"].as_u64().unwrap() >= 990);
    let v = app.get("/v1/activity/verify", &admin).await.json();
    assert_eq!(v["intact"], true, "{v}");
}
on_both!(
    refusals_are_bounded,
    flood_of_refusals,
    keyplane_testkit::Options::default()
        .env("KEYPLANE_TRUSTED_PROXIES", "127.0.0.1")
        .env("KEYPLANE_REFUSAL_EVENTS_PER_FLUSH", "10")
        // Only the test's own flush writes refusals.
        .env("KEYPLANE_FLUSH_INTERVAL_MS", "3600000")
);

async fn refusal_events(app: &TestApp, admin: &str) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/activity?action=credential.refused&limit=200&cursor={c}"),
            None => "/v1/activity?action=credential.refused&limit=200".into(),
        };
        let page = app.get(&path, admin).await.json();
        out.extend(page["items"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return out,
        }
    }
}
