//! Observability (issue 13 §5): `/metrics` parsed as Prometheus text by a strict parser (the
//! request histograms by route and outcome, build and process metrics, the metrics listener),
//! request ids (echoed only from a trusted proxy, in activity events and log lines, through the
//! gateway), plain logs when stderr is a pipe, and traces exported to an OTLP/HTTP collector
//! run by the test.

use crate::support::{admin_client, basic, token, well_formed_unknown, FORM};
use keyplane_testkit::reqwest::{header, Method, StatusCode};
use keyplane_testkit::{json, Answer, Backend, Options, TestApp, TestDb};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

// ----- a strict Prometheus text-format (0.0.4) parser -----

/// One sample: its name, labels and value.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A metric family: its `# TYPE`, `# HELP` and samples.
#[derive(Debug, Default, Clone)]
struct Family {
    kind: String,
    help: Option<String>,
    samples: Vec<Sample>,
}

/// A parsed exposition, by family name.
#[derive(Debug, Default)]
struct Exposition {
    families: BTreeMap<String, Family>,
}

fn is_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ if s.is_empty()
            || !s
                .bytes()
                .all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b)) =>
        {
            Err(format!("{s:?} is not a sample value"))
        }
        _ => s
            .parse()
            .map_err(|e| format!("{s:?} is not a sample value: {e}")),
    }
}

/// `{a="x",b="y"}` at the start of `s`: the labels and what follows.
fn parse_labels(s: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    let mut rest = s.strip_prefix('{').ok_or("labels must start with {")?;
    loop {
        if let Some(after) = rest.strip_prefix('}') {
            return Ok((labels, after));
        }
        let eq = rest.find('=').ok_or("a label without =")?;
        let name = &rest[..eq];
        if !is_label_name(name) {
            return Err(format!("{name:?} is not a label name"));
        }
        rest = rest[eq + 1..]
            .strip_prefix('"')
            .ok_or("a label value must be quoted")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err("an unterminated label value".into()),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => return Err(format!("a bad escape in a label value: {other:?}")),
                },
                Some((_, '\n')) => return Err("a newline in a label value".into()),
                Some((_, c)) => value.push(c),
            }
        };
        if labels.insert(name.to_string(), value).is_some() {
            return Err(format!("the label {name} twice"));
        }
        rest = &rest[end + 1..];
        if let Some(after) = rest.strip_prefix(',') {
            rest = after;
        } else if !rest.starts_with('}') {
            return Err("labels must be separated by commas".into());
        }
    }
}

/// The family a sample named `name` belongs to, given the family being read.
fn family_of<'a>(name: &'a str, current: Option<(&'a str, &str)>) -> &'a str {
    if let Some((family, kind)) = current {
        if name == family {
            return family;
        }
        if kind == "histogram" || kind == "summary" {
            for suffix in ["_bucket", "_sum", "_count"] {
                if name.strip_suffix(suffix) == Some(family) {
                    return family;
                }
            }
        }
    }
    name
}

/// Parses an exposition strictly: every line a comment, a `# HELP`/`# TYPE` or a well-formed
/// sample; a family's lines together, its `# TYPE` before its samples; no series twice; and
/// every histogram whole (cumulative buckets ending in `+Inf` equal to `_count`, and `_sum`).
fn parse(text: &str) -> Result<Exposition, String> {
    if !text.is_empty() && !text.ends_with('\n') {
        return Err("the exposition must end with a newline".into());
    }
    let mut out = Exposition::default();
    let mut current: Option<String> = None;
    let mut seen = std::collections::HashSet::new();
    for (n, line) in text.lines().enumerate() {
        let at = |e: String| format!("line {}: {e}: {line:?}", n + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut parts = comment.trim_start().splitn(3, ' ');
            let (word, name, rest) = (parts.next(), parts.next(), parts.next());
            match word {
                Some("HELP") | Some("TYPE") => {
                    let name = name.ok_or_else(|| at("no metric name".into()))?;
                    if !is_metric_name(name) {
                        return Err(at(format!("{name:?} is not a metric name")));
                    }
                    if current.as_deref() != Some(name) {
                        if out.families.contains_key(name) {
                            return Err(at(format!("the family {name} is split")));
                        }
                        current = Some(name.to_string());
                    }
                    let f = out.families.entry(name.to_string()).or_default();
                    if word == Some("TYPE") {
                        let kind = rest.ok_or_else(|| at("no type".into()))?;
                        if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind)
                        {
                            return Err(at(format!("{kind:?} is not a metric type")));
                        }
                        if !f.kind.is_empty() || !f.samples.is_empty() {
                            return Err(at("a TYPE after the family's samples or TYPE".into()));
                        }
                        f.kind = kind.to_string();
                    } else {
                        if f.help.is_some() {
                            return Err(at("a second HELP".into()));
                        }
                        f.help = Some(rest.unwrap_or("").to_string());
                    }
                }
                // Any other comment is allowed.
                _ => {}
            }
            continue;
        }
        let name_end = line.find(['{', ' ']).ok_or_else(|| at("no value".into()))?;
        let name = &line[..name_end];
        if !is_metric_name(name) {
            return Err(at(format!("{name:?} is not a metric name")));
        }
        let (labels, rest) = if line[name_end..].starts_with('{') {
            parse_labels(&line[name_end..]).map_err(at)?
        } else {
            (BTreeMap::new(), &line[name_end..])
        };
        let rest = rest
            .strip_prefix(' ')
            .ok_or_else(|| at("no space before the value".into()))?;
        let mut fields = rest.split(' ');
        let value = parse_value(fields.next().unwrap_or("")).map_err(at)?;
        if let Some(ts) = fields.next() {
            ts.parse::<i64>()
                .map_err(|_| at(format!("{ts:?} is not a timestamp")))?;
        }
        if fields.next().is_some() {
            return Err(at("trailing fields".into()));
        }
        let cur = current
            .as_deref()
            .map(|c| (c, out.families[c].kind.as_str()));
        let family = family_of(name, cur).to_string();
        if current.as_deref() != Some(family.as_str()) {
            if out.families.contains_key(&family) {
                return Err(at(format!("the family {family} is split")));
            }
            current = Some(family.clone());
        }
        if !seen.insert((name.to_string(), labels.clone())) {
            return Err(at("the same series twice".into()));
        }
        out.families
            .entry(family)
            .or_default()
            .samples
            .push(Sample {
                name: name.to_string(),
                labels,
                value,
            });
    }
    for (name, f) in &out.families {
        if f.kind == "counter" && !name.ends_with("_total") {
            return Err(format!("the counter {name} does not end in _total"));
        }
        if f.kind == "histogram" {
            check_histogram(name, f)?;
        }
    }
    Ok(out)
}

fn without_le(labels: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut l = labels.clone();
    l.remove("le");
    l
}

/// One histogram series: its buckets (upper bound, cumulative count), `_sum` and `_count`.
type HistogramSeries = (Vec<(f64, f64)>, Option<f64>, Option<f64>);

fn check_histogram(name: &str, f: &Family) -> Result<(), String> {
    let mut series: BTreeMap<BTreeMap<String, String>, HistogramSeries> = BTreeMap::new();
    for s in &f.samples {
        let entry = series.entry(without_le(&s.labels)).or_default();
        if s.name == format!("{name}_bucket") {
            let le = s
                .labels
                .get("le")
                .ok_or_else(|| format!("{name}: a bucket without le"))?;
            entry.0.push((parse_value(le)?, s.value));
        } else if s.name == format!("{name}_sum") {
            entry.1 = Some(s.value);
        } else if s.name == format!("{name}_count") {
            entry.2 = Some(s.value);
        } else {
            return Err(format!("{name}: the sample {} does not belong", s.name));
        }
    }
    for (labels, (buckets, sum, count)) in series {
        let what = format!("{name}{labels:?}");
        let count = count.ok_or_else(|| format!("{what}: no _count"))?;
        sum.ok_or_else(|| format!("{what}: no _sum"))?;
        let last = buckets
            .last()
            .ok_or_else(|| format!("{what}: no buckets"))?;
        if last.0 != f64::INFINITY || last.1 != count {
            return Err(format!("{what}: the +Inf bucket is not the count"));
        }
        for w in buckets.windows(2) {
            if w[0].0 >= w[1].0 || w[0].1 > w[1].1 {
                return Err(format!("{what}: buckets not in order or not cumulative"));
            }
        }
    }
    Ok(())
}

impl Exposition {
    /// The value of the sample `name` whose labels include `want` (exactly one must match).
    fn value(&self, name: &str, want: &[(&str, &str)]) -> Option<f64> {
        let matches: Vec<&Sample> = self
            .families
            .values()
            .flat_map(|f| &f.samples)
            .filter(|s| s.name == name)
            .filter(|s| {
                want.iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect();
        assert!(
            matches.len() <= 1,
            "{name} {want:?} names {} series",
            matches.len()
        );
        matches.first().map(|s| s.value)
    }

    /// A request histogram's count (0 when the series is not there yet).
    fn requests(&self, route: &str, outcome: &str, reason: Option<&str>) -> f64 {
        let f = &self.families["keyplane_http_request_duration_seconds"];
        f.samples
            .iter()
            .filter(|s| s.name == "keyplane_http_request_duration_seconds_count")
            .filter(|s| {
                s.labels.get("route").map(String::as_str) == Some(route)
                    && s.labels.get("outcome").map(String::as_str) == Some(outcome)
                    && s.labels.get("reason").map(String::as_str) == reason
            })
            .map(|s| s.value)
            .sum()
    }

    fn kind(&self, family: &str) -> &str {
        self.families.get(family).map_or("", |f| f.kind.as_str())
    }
}

#[test]
fn the_parser_refuses_malformed_expositions() {
    let good = "# HELP a_total A.\n# TYPE a_total counter\na_total 1\n\
                # TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 3\nh_count 2\n\
                g{x=\"a\\\"b\\\\c\\n\"} -1.5e-3\n";
    let e = parse(good).unwrap();
    assert_eq!(e.value("g", &[("x", "a\"b\\c\n")]), Some(-1.5e-3));
    for bad in [
        "a_total\n",
        "a_total one\n",
        "a_total 1 2 3\n",
        "1a 1\n",
        "a{x=\"y} 1\n",
        "a{x=y} 1\n",
        "a{x=\"\\t\"} 1\n",
        "a{x=\"1\",x=\"2\"} 1\n",
        "a{x=\"1\" y=\"2\"} 1\n",
        "a 1\na 2\n",
        "# TYPE a wat\n",
        "a 1\n# TYPE a gauge\n",
        "# TYPE c counter\nc 1\n",
        "a 1\nb 1\na{x=\"1\"} 2\n",
        "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 3\nh_count 3\n",
        "# TYPE h histogram\nh_bucket{le=\"1\"} 3\nh_bucket{le=\"+Inf\"} 2\nh_sum 3\nh_count 2\n",
        "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_count 2\n",
        "a 1",
    ] {
        assert!(parse(bad).is_err(), "accepted: {bad:?}");
    }
}

async fn scrape(app: &TestApp) -> Exposition {
    let a = app.call(Method::GET, "/metrics", None, None).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(
        a.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    parse(&a.text).unwrap_or_else(|e| panic!("{e}\n{}", a.text))
}

// ----- the metrics -----

const SCOPE: &str = "metrics-svc:read";

async fn metrics_move(app: TestApp) {
    let admin = app.admin_key.clone();
    app.service("metrics-svc", &[SCOPE]).await;
    let (_, key) = app
        .key(&admin, json!({ "name": "m", "scopes": [SCOPE] }))
        .await;
    let (gone_id, gone) = app
        .key(&admin, json!({ "name": "gone", "scopes": [SCOPE] }))
        .await;
    let r = app
        .post(&format!("/v1/api-keys/{gone_id}/revoke"), &admin, json!({}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let (cid, secret, _) = admin_client(&app, json!({ "name": "mc", "scopes": [SCOPE] })).await;

    let before = scrape(&app).await;
    let checks_before = before
        .value("keyplane_credential_checks_total", &[])
        .unwrap();

    // /v1/authz: allowed three times, then refused for each reason once.
    for _ in 0..3 {
        assert_eq!(
            app.authz(Some(&key), Some(SCOPE)).await.status,
            StatusCode::OK
        );
    }
    let refusals = [
        (None, Some(SCOPE), "missing"),
        (Some("garbage".to_string()), Some(SCOPE), "malformed"),
        (Some(well_formed_unknown("kp_")), Some(SCOPE), "unknown"),
        (Some(gone.clone()), Some(SCOPE), "revoked"),
        (Some(key.clone()), Some("other:write"), "insufficient_scope"),
    ];
    for (t, scope, _) in &refusals {
        let a = app.authz(t.as_deref(), *scope).await;
        assert!(a.status.is_client_error(), "{}", a.text);
    }
    // The OAuth endpoints.
    let t = token(&app, &cid, &secret).await;
    assert_eq!(t.status, StatusCode::OK, "{}", t.text);
    let access = t.json()["access_token"].as_str().unwrap().to_string();
    assert_eq!(
        token(&app, &cid, "kps_wrong").await.status,
        StatusCode::UNAUTHORIZED
    );
    let i = app
        .http
        .post(format!("{}/v1/oauth/token/introspect", app.base))
        .header(header::AUTHORIZATION, basic(&cid, &secret))
        .header(header::CONTENT_TYPE, FORM)
        .body(format!("token={access}"))
        .send()
        .await
        .unwrap();
    assert_eq!(i.status(), StatusCode::OK);
    // The management API, the console, the operations routes and an unknown path.
    assert_eq!(app.get("/v1/api-keys", &admin).await.status, StatusCode::OK);
    assert_eq!(
        app.call(Method::GET, "/v1/api-keys", None, None)
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.get("/v1/services/svc_0000000000000000000000", &admin)
            .await
            .status,
        StatusCode::METHOD_NOT_ALLOWED
    );
    assert_eq!(
        app.get("/nowhere", &admin).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.call(Method::GET, "/console/sign-in", None, None)
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        app.call(Method::GET, "/healthz", None, None).await.status,
        StatusCode::OK
    );

    let after = scrape(&app).await;
    let delta = |route, outcome, reason| {
        after.requests(route, outcome, reason) - before.requests(route, outcome, reason)
    };
    assert_eq!(delta("authz", "allowed", None), 3.0);
    for (_, _, reason) in &refusals {
        assert_eq!(
            delta("authz", "refused", Some(reason)),
            1.0,
            "authz {reason}"
        );
    }
    assert_eq!(delta("token", "allowed", None), 1.0);
    assert_eq!(delta("token", "refused", Some("invalid_client")), 1.0);
    assert_eq!(delta("introspect", "allowed", None), 1.0);
    assert_eq!(delta("management", "allowed", None), 1.0);
    assert_eq!(delta("management", "refused", Some("unauthenticated")), 1.0);
    assert_eq!(
        delta("management", "refused", Some("method_not_allowed")),
        1.0
    );
    assert_eq!(delta("other", "refused", Some("not_found")), 1.0);
    assert_eq!(delta("console", "allowed", None), 1.0);
    // The first scrape was counted once it was answered, and /healthz.
    assert_eq!(delta("ops", "allowed", None), 2.0);
    // Nothing else was counted.
    let total = |e: &Exposition| -> f64 {
        e.families["keyplane_http_request_duration_seconds"]
            .samples
            .iter()
            .filter(|s| s.name.ends_with("_count"))
            .map(|s| s.value)
            .sum()
    };
    assert_eq!(
        total(&after) - total(&before),
        3.0 + 5.0 + 2.0 + 1.0 + 4.0 + 1.0 + 2.0
    );
    // The allowed /v1/authz series: the sum moved, every request is in a bucket, and the
    // exposition says a histogram.
    assert_eq!(
        after.kind("keyplane_http_request_duration_seconds"),
        "histogram"
    );
    let sum = |e: &Exposition| {
        e.value(
            "keyplane_http_request_duration_seconds_sum",
            &[("route", "authz"), ("outcome", "allowed")],
        )
        .unwrap_or(0.0)
    };
    assert!(sum(&after) > sum(&before));
    let inf = after
        .value(
            "keyplane_http_request_duration_seconds_bucket",
            &[("route", "authz"), ("outcome", "allowed"), ("le", "+Inf")],
        )
        .unwrap();
    assert_eq!(inf, after.requests("authz", "allowed", None));
    // Eight credential checks.
    assert_eq!(
        after
            .value("keyplane_credential_checks_total", &[])
            .unwrap()
            - checks_before,
        8.0
    );

    // The metrics of earlier versions, under their names and types.
    for (name, kind) in [
        ("keyplane_credential_checks_total", "counter"),
        ("keyplane_cache_keys", "gauge"),
        ("keyplane_cache_unknown", "gauge"),
        ("keyplane_client_secrets_expiring", "gauge"),
        ("keyplane_storage_feed_up", "gauge"),
        ("keyplane_storage_feed_down_seconds", "gauge"),
        ("keyplane_cache_trusted", "gauge"),
    ] {
        assert_eq!(after.kind(name), kind, "{name}");
        assert!(after.value(name, &[]).is_some(), "{name}");
    }
    assert!(after.value("keyplane_cache_keys", &[]).unwrap() >= 1.0);

    // The build.
    assert_eq!(after.kind("keyplane_build_info"), "gauge");
    let build = &after.families["keyplane_build_info"].samples;
    assert_eq!(build.len(), 1);
    assert_eq!(build[0].value, 1.0);
    assert_eq!(build[0].labels["version"], env!("CARGO_PKG_VERSION"));
    let rustc = &build[0].labels["rustc"];
    assert_eq!(rustc.split('.').count(), 3, "rustc={rustc}");

    // The process.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let p = |name| {
        after
            .value(name, &[])
            .unwrap_or_else(|| panic!("no {name}"))
    };
    let start = p("process_start_time_seconds");
    assert!(
        start <= now + 1.0 && start > now - 86_400.0,
        "start {start}, now {now}"
    );
    assert!(p("process_resident_memory_bytes") > 1e6);
    assert!(p("process_virtual_memory_bytes") >= p("process_resident_memory_bytes"));
    assert!(p("process_open_fds") >= 3.0);
    assert!(p("process_max_fds") >= p("process_open_fds"));
    assert!(p("process_threads") >= 1.0);
    assert!(p("process_cpu_seconds_total") > 0.0);
    assert_eq!(after.kind("process_cpu_seconds_total"), "counter");

    // No credential and no identifier reaches the exposition.
    let text = app.call(Method::GET, "/metrics", None, None).await.text;
    for secret in [&key, &gone, &gone_id, &cid, &secret, &access, &admin] {
        assert!(!text.contains(secret.as_str()), "{secret} is in /metrics");
    }
}
on_both!(request_histograms_build_and_process_metrics, metrics_move);

/// `metrics_listen`: `/metrics` (behind the token too), `/healthz` and `/readyz` on their own
/// listener; the API listener no longer answers `/metrics`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_on_their_own_listener() {
    let token = "metrics-token-0123456789";
    let app = keyplane_testkit::spawn_app_with(
        Backend::Sqlite,
        Options::default()
            .env("KEYPLANE_METRICS_LISTEN", "127.0.0.1:0")
            .env("KEYPLANE_METRICS_TOKEN", token),
    )
    .await
    .unwrap();
    let base = app.metrics_base().expect("a metrics listener");
    assert_ne!(base, app.base);
    let on_api = app.get("/metrics", token).await;
    assert_eq!(on_api.status, StatusCode::NOT_FOUND, "{}", on_api.text);
    assert!(on_api.header("x-request-id").is_some());
    let get = |path: &str, t: Option<&str>| {
        let mut r = app.http.get(format!("{base}{path}"));
        if let Some(t) = t {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    assert_eq!(
        get("/metrics", None).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        get("/metrics", Some("wrong-token-0123456789"))
            .await
            .unwrap()
            .status(),
        StatusCode::UNAUTHORIZED
    );
    let ok = get("/metrics", Some(token)).await.unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    let e = parse(&ok.text().await.unwrap()).unwrap();
    // The API listener's 404 for /metrics was counted.
    assert_eq!(e.requests("ops", "refused", Some("not_found")), 1.0);
    assert_eq!(
        get("/healthz", None).await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(get("/readyz", None).await.unwrap().status(), StatusCode::OK);
    assert_eq!(
        get("/v1/api-keys", Some(&app.admin_key))
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.call(Method::GET, "/healthz", None, None).await.status,
        StatusCode::OK
    );
}

// ----- request ids -----

async fn with_request_id(
    app: &TestApp,
    method: Method,
    path: &str,
    id: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> Answer {
    let mut r = app
        .http
        .request(method, format!("{}{path}", app.base))
        .header("x-request-id", id);
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().await.unwrap();
    Answer {
        status: resp.status(),
        headers: resp.headers().clone(),
        text: resp.text().await.unwrap(),
    }
}

fn is_generated(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The activity events with `action`, newest first.
async fn events(app: &TestApp, action: &str) -> Vec<Value> {
    let a = app
        .get(
            &format!("/v1/activity?action={action}&limit=200"),
            &app.admin_key,
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    a.json()["items"].as_array().unwrap().clone()
}

/// Without trusted proxies, a caller's `X-Request-Id` is never taken: every answer (hot route,
/// router, error) carries a generated one, and the events it causes name that one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_from_an_untrusted_peer_are_generated() {
    let app = keyplane_testkit::spawn_app(Backend::Sqlite).await.unwrap();
    let admin = app.admin_key.clone();
    let mut ids = std::collections::HashSet::new();
    for (method, path) in [
        (Method::GET, "/v1/authz"),
        (Method::GET, "/healthz"),
        (Method::GET, "/nowhere"),
        (Method::POST, "/v1/oauth/token"),
    ] {
        let a = with_request_id(&app, method, path, "client-chosen-id", None, None).await;
        let id = a
            .header("x-request-id")
            .expect("an id on every answer")
            .to_string();
        assert!(is_generated(&id), "{path}: {id}");
        assert!(ids.insert(id), "ids repeat");
    }
    let a = with_request_id(
        &app,
        Method::POST,
        "/v1/api-keys",
        "spoofed-id",
        Some(&admin),
        Some(json!({ "name": "k" })),
    )
    .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    let id = a.header("x-request-id").unwrap().to_string();
    assert!(is_generated(&id));
    let key_id = a.json()["id"].as_str().unwrap().to_string();
    let created = events(&app, "api_key.create").await;
    let e = created
        .iter()
        .find(|e| e["target"] == key_id.as_str())
        .unwrap();
    assert_eq!(e["details"]["request_id"], id.as_str());
    assert!(!serde_json::to_string(&created)
        .unwrap()
        .contains("spoofed-id"));
}

/// Behind a trusted proxy its `X-Request-Id` is the request's: echoed, in the activity events
/// the request causes (a change, and an aggregated refusal), unless it is not a plain id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_from_a_trusted_proxy_are_kept() {
    let app = keyplane_testkit::spawn_app_with(
        Backend::Sqlite,
        Options::default().env("KEYPLANE_TRUSTED_PROXIES", "127.0.0.1"),
    )
    .await
    .unwrap();
    let admin = app.admin_key.clone();
    let a = with_request_id(&app, Method::GET, "/v1/authz", "edge-7f3a:01", None, None).await;
    assert_eq!(a.header("x-request-id"), Some("edge-7f3a:01"));
    for bad in ["has space", "quote\"d", &"a".repeat(65), "caf\u{e9}"] {
        let r = app
            .http
            .get(format!("{}/healthz", app.base))
            .header("x-request-id", bad.as_bytes())
            .send()
            .await
            .unwrap();
        let id = r.headers()["x-request-id"].to_str().unwrap();
        assert!(is_generated(id), "{bad:?} gave {id}");
    }
    let a = with_request_id(
        &app,
        Method::POST,
        "/v1/api-keys",
        "req-create-key-1",
        Some(&admin),
        Some(json!({ "name": "k" })),
    )
    .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    assert_eq!(a.header("x-request-id"), Some("req-create-key-1"));
    let key_id = a.json()["id"].as_str().unwrap().to_string();
    let created = events(&app, "api_key.create").await;
    let e = created
        .iter()
        .find(|e| e["target"] == key_id.as_str())
        .unwrap();
    assert_eq!(e["details"]["request_id"], "req-create-key-1");

    // Refusals are aggregated: the event names the first request it counts.
    let unknown = well_formed_unknown("kp_");
    for id in ["req-refused-1", "req-refused-2"] {
        let r = with_request_id(&app, Method::GET, "/v1/authz", id, Some(&unknown), None).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }
    app.flush().await;
    let refused = events(&app, "credential.refused").await;
    // Oldest first; the two may straddle a flush, then each has its own event.
    let mut unknown: Vec<(String, i64)> = refused
        .iter()
        .filter(|e| e["details"]["reason"] == "unknown")
        .map(|e| {
            (
                e["details"]["request_id"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
                e["details"]["count"].as_i64().unwrap(),
            )
        })
        .collect();
    unknown.reverse();
    let counted: i64 = unknown.iter().map(|(_, n)| n).sum();
    assert_eq!(counted, 2, "{refused:?}");
    assert_eq!(unknown[0].0, "req-refused-1", "{refused:?}");
    if unknown.len() == 2 {
        assert_eq!(unknown[1].0, "req-refused-2");
    }
}

/// The gateway gives the upstream the request's id (a caller's own only from a trusted
/// proxy) and answers with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_forwards_the_request_id() {
    let (upstream, _seen) = echo_upstream().await;
    let dir = keyplane_testkit::TempDir::new();
    let config = dir.path().join("keyplane.toml");
    std::fs::write(
        &config,
        "[authz]\nunmatched = \"deny\"\n[[routes]]\npath = \"/echo\"\nscopes = []\n",
    )
    .unwrap();
    let app = keyplane_testkit::spawn_app_with(
        Backend::Sqlite,
        Options::default()
            .env("KEYPLANE_CONFIG", config.to_str().unwrap())
            .env("KEYPLANE_GATEWAY_LISTEN", "127.0.0.1:0")
            .env("KEYPLANE_UPSTREAM", &upstream),
    )
    .await
    .unwrap();
    let (_, key) = app
        .key(&app.admin_key.clone(), json!({ "name": "gw" }))
        .await;
    let gw = app.gateway_base().unwrap();
    let r = app
        .http
        .get(format!("{gw}/echo"))
        .bearer_auth(&key)
        .header("x-request-id", "spoofed-id")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert!(is_generated(&id), "{id}");
    let saw: Value = r.json().await.unwrap();
    assert_eq!(saw["x-request-id"], id.as_str());
    // A refused request is answered with an id too, and counted under the gateway.
    let r = app.http.get(format!("{gw}/echo")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(is_generated(r.headers()["x-request-id"].to_str().unwrap()));
    let e = scrape(&app).await;
    assert_eq!(e.requests("gateway", "allowed", None), 1.0);
    assert_eq!(e.requests("gateway", "refused", Some("missing")), 1.0);
}

/// An upstream that answers with the request's `x-request-id` and `traceparent` as JSON, and
/// remembers every request's headers.
async fn echo_upstream() -> (String, Arc<Mutex<Vec<HashMap<String, String>>>>) {
    let seen: Arc<Mutex<Vec<HashMap<String, String>>>> = Arc::default();
    let record = seen.clone();
    let any = move |req: axum::extract::Request| {
        let record = record.clone();
        async move {
            let headers: HashMap<String, String> = req
                .headers()
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
                .collect();
            record.lock().unwrap().push(headers.clone());
            axum::Json(json!({
                "x-request-id": headers.get("x-request-id"),
                "traceparent": headers.get("traceparent"),
            }))
        }
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, axum::Router::new().fallback(any))
            .await
            .unwrap()
    });
    (format!("http://{addr}"), seen)
}

// ----- logs -----

/// Logs written to a pipe carry no ANSI escape, and every line written while a request is
/// answered names its id: as text, and as JSON.
async fn logs_through_a_pipe(format: &str) {
    let db = TestDb::fresh(Backend::Sqlite).await.unwrap();
    let server = crate::binary::Server::start(
        &db,
        &[
            ("KEYPLANE_LOG", "info,tower_http=debug"),
            ("KEYPLANE_LOG_FORMAT", format),
        ],
    )
    .await;
    let a = server.call(Method::GET, "/v1/api-keys", None, None).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    let id = a.header("x-request-id").unwrap().to_string();
    let stopped = server.terminate().await;
    let log = stopped.stderr;
    assert!(
        !log.contains('\u{1b}'),
        "ANSI escapes in a piped log:\n{log}"
    );
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(&id)).collect();
    assert!(
        lines.len() >= 2,
        "the request's lines do not name {id}:\n{log}"
    );
    for line in lines {
        if format == "json" {
            let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
            assert_eq!(v["request_id"], id.as_str(), "{line}");
        } else {
            assert!(line.ends_with(&format!(" request_id={id}")), "{line}");
        }
    }
    // Lines written outside any request name none.
    let start = log
        .lines()
        .find(|l| l.contains("keyplane is listening"))
        .unwrap();
    assert!(!start.contains("request_id"), "{start}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_text_logs_with_request_ids() {
    logs_through_a_pipe("text").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_with_request_ids() {
    logs_through_a_pipe("json").await;
}

// ----- traces -----

/// A local OTLP/HTTP collector: every `POST /v1/traces` body (JSON) it received.
async fn collector() -> (String, Arc<Mutex<Vec<Value>>>) {
    let got: Arc<Mutex<Vec<Value>>> = Arc::default();
    let sink = got.clone();
    let traces = move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
        let sink = sink.clone();
        async move {
            assert_eq!(
                headers.get("content-type").and_then(|v| v.to_str().ok()),
                Some("application/json")
            );
            let v: Value = serde_json::from_slice(&body).expect("an OTLP/JSON body");
            sink.lock().unwrap().push(v);
            ([("content-type", "application/json")], "{}")
        }
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            axum::Router::new().route("/v1/traces", axum::routing::post(traces)),
        )
        .await
        .unwrap()
    });
    (format!("http://{addr}"), got)
}

/// Every span the collector received, with its resource's `service.name`.
fn spans(got: &Arc<Mutex<Vec<Value>>>) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for body in got.lock().unwrap().iter() {
        for rs in body["resourceSpans"].as_array().unwrap() {
            let service = attr(&rs["resource"], "service.name").unwrap_or_default();
            for ss in rs["scopeSpans"].as_array().unwrap() {
                for s in ss["spans"].as_array().unwrap() {
                    out.push((service.clone(), s.clone()));
                }
            }
        }
    }
    out
}

/// An attribute's value as text (`stringValue`, or `intValue` as number or string).
fn attr(owner: &Value, key: &str) -> Option<String> {
    let a = owner["attributes"]
        .as_array()?
        .iter()
        .find(|a| a["key"] == key)?;
    let v = &a["value"];
    v["stringValue"]
        .as_str()
        .map(str::to_string)
        .or_else(|| v["intValue"].as_str().map(str::to_string))
        .or_else(|| v["intValue"].as_i64().map(|n| n.to_string()))
}

#[cfg(feature = "otel")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_go_to_an_otlp_collector_when_enabled() {
    let (endpoint, got) = collector().await;
    let mut app = keyplane_testkit::spawn_app_with(
        Backend::Sqlite,
        Options::default()
            .env("KEYPLANE_OTEL_ENDPOINT", &endpoint)
            .env("KEYPLANE_OTEL_PROTOCOL", "http/json")
            .env("KEYPLANE_OTEL_SERVICE_NAME", "keyplane-test"),
    )
    .await
    .unwrap();
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent = "00f067aa0ba902b7";
    let r = app
        .http
        .get(format!("{}/v1/api-keys", app.base))
        .bearer_auth(&app.admin_key)
        .header("traceparent", format!("00-{trace_id}-{parent}-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    // The credential path is not traced at the default hot ratio (0).
    assert_eq!(app.authz(None, None).await.status, StatusCode::UNAUTHORIZED);
    // Spans are exported in batches; stopping the server exports the last one.
    app.stop().await;
    let all = spans(&got);
    let (service, span) = all
        .iter()
        .find(|(_, s)| s["name"] == "GET management")
        .unwrap_or_else(|| panic!("no management span in {all:?}"));
    assert_eq!(service, "keyplane-test");
    assert_eq!(
        span["traceId"].as_str().map(str::to_lowercase).as_deref(),
        Some(trace_id)
    );
    assert_eq!(
        span["parentSpanId"]
            .as_str()
            .map(str::to_lowercase)
            .as_deref(),
        Some(parent)
    );
    assert!(
        span["kind"] == 2 || span["kind"] == "SPAN_KIND_SERVER",
        "a server span: {span}"
    );
    assert_eq!(
        attr(span, "keyplane.request_id").as_deref(),
        Some(id.as_str())
    );
    assert_eq!(
        attr(span, "http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(attr(span, "keyplane.route").as_deref(), Some("management"));
    assert_eq!(attr(span, "keyplane.outcome").as_deref(), Some("allowed"));
    assert_eq!(attr(span, "url.path").as_deref(), Some("/v1/api-keys"));
    assert!(
        all.iter()
            .all(|(_, s)| attr(s, "keyplane.route").as_deref() != Some("authz")),
        "the hot path was traced: {all:?}"
    );
    let text = serde_json::to_string(&all).unwrap();
    assert!(!text.contains(&app.admin_key), "a credential in a span");
}

/// At a hot ratio of 1 the credential path and the gateway are traced too; the gateway hands
/// its span to the upstream as `traceparent`.
#[cfg(feature = "otel")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hot_path_is_traced_when_asked() {
    let (endpoint, got) = collector().await;
    let (upstream, seen) = echo_upstream().await;
    let dir = keyplane_testkit::TempDir::new();
    let config = dir.path().join("keyplane.toml");
    std::fs::write(&config, "[[routes]]\npath = \"/echo\"\nscopes = []\n").unwrap();
    let mut app = keyplane_testkit::spawn_app_with(
        Backend::Sqlite,
        Options::default()
            .env("KEYPLANE_CONFIG", config.to_str().unwrap())
            .env("KEYPLANE_GATEWAY_LISTEN", "127.0.0.1:0")
            .env("KEYPLANE_UPSTREAM", &upstream)
            .env("KEYPLANE_OTEL_ENDPOINT", &format!("{endpoint}/v1/traces"))
            .env("KEYPLANE_OTEL_PROTOCOL", "http/json")
            .env("KEYPLANE_OTEL_SAMPLE_RATIO", "0")
            .env("KEYPLANE_OTEL_HOT_SAMPLE_RATIO", "1"),
    )
    .await
    .unwrap();
    let (_, key) = app
        .key(&app.admin_key.clone(), json!({ "name": "t" }))
        .await;
    assert_eq!(app.authz(None, None).await.status, StatusCode::UNAUTHORIZED);
    let r = app
        .http
        .get(format!("{}/echo", app.gateway_base().unwrap()))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    app.stop().await;
    let all = spans(&got);
    let authz = all
        .iter()
        .find(|(_, s)| attr(s, "keyplane.route").as_deref() == Some("authz"))
        .unwrap_or_else(|| panic!("no authz span in {all:?}"));
    assert_eq!(
        attr(&authz.1, "keyplane.outcome").as_deref(),
        Some("refused")
    );
    assert_eq!(
        attr(&authz.1, "keyplane.reason").as_deref(),
        Some("missing")
    );
    assert_eq!(
        attr(&authz.1, "http.response.status_code").as_deref(),
        Some("401")
    );
    let gw = all
        .iter()
        .find(|(_, s)| attr(s, "keyplane.route").as_deref() == Some("gateway"))
        .unwrap_or_else(|| panic!("no gateway span in {all:?}"));
    let tp = seen.lock().unwrap()[0]["traceparent"].clone();
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "{tp}");
    assert_eq!(Some(parts[1]), gw.1["traceId"].as_str());
    assert_eq!(Some(parts[2]), gw.1["spanId"].as_str());
    // The router's routes were not sampled (ratio 0): the key's creation made no span.
    assert!(all
        .iter()
        .all(|(_, s)| attr(s, "keyplane.route").as_deref() != Some("management")));
}

/// Without an endpoint nothing is exported, whatever is asked of the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_traces_are_sent_when_disabled() {
    let (_endpoint, got) = collector().await;
    let mut app = keyplane_testkit::spawn_app(Backend::Sqlite).await.unwrap();
    for _ in 0..5 {
        app.get("/v1/api-keys", &app.admin_key.clone()).await;
        app.authz(None, None).await;
    }
    app.stop().await;
    assert!(got.lock().unwrap().is_empty());
}

/// Bad trace settings stop the start with a message naming the setting.
#[test]
fn trace_settings_are_checked() {
    use keyplane::config::{Config, ConfigFlags};
    let load = |pairs: &[(&str, &str)]| {
        let env: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::load(&ConfigFlags::default(), None, &env)
    };
    let ok = load(&[("KEYPLANE_OTEL_ENDPOINT", "http://127.0.0.1:4318/")]).unwrap();
    let otel = ok.otel.unwrap();
    assert_eq!(otel.traces_url(), "http://127.0.0.1:4318/v1/traces");
    assert_eq!((otel.sample_ratio, otel.hot_sample_ratio), (1.0, 0.0));
    assert!(load(&[]).unwrap().otel.is_none());
    for (pairs, needle) in [
        (
            vec![("KEYPLANE_OTEL_ENDPOINT", "grpc://collector:4317")],
            "otel.endpoint",
        ),
        (
            vec![("KEYPLANE_OTEL_ENDPOINT", "not a url")],
            "otel.endpoint",
        ),
        (
            vec![
                ("KEYPLANE_OTEL_ENDPOINT", "http://c:4318"),
                ("KEYPLANE_OTEL_PROTOCOL", "grpc"),
            ],
            "otel.protocol",
        ),
        (
            vec![
                ("KEYPLANE_OTEL_ENDPOINT", "http://c:4318"),
                ("KEYPLANE_OTEL_SAMPLE_RATIO", "2"),
            ],
            "KEYPLANE_OTEL_SAMPLE_RATIO",
        ),
        (vec![("KEYPLANE_METRICS_LISTEN", "nine")], "metrics_listen"),
    ] {
        let e = format!("{:#}", load(&pairs).unwrap_err());
        assert!(e.contains(needle), "{pairs:?}: {e}");
    }
}
