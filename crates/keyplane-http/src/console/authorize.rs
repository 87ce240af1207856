//! The person's side of the authorization-code grant: `/v1/oauth/authorize` sends the browser
//! here (the console's session cookie is scoped to `/console`), where a signed-in member sees
//! what the app asks for and allows or denies it. Not signed in: to the sign-in page, which
//! comes back here. The app learns the answer at its redirect URI.

use super::views::{html, ErrorPage};
use super::{cookie, Posted, SESSION_COOKIE};
use crate::AppState;
use askama::Template;
use axum::extract::State;
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use keyplane_core::domain::error::Error;
use keyplane_core::domain::model::Member;
use keyplane_core::usecase::grants::{Authorization, AuthorizeError, AuthorizeParams, Consent};

/// The parameters an authorization request carries, in the order they are sent on.
const PARAMS: [&str; 7] = [
    "response_type",
    "client_id",
    "redirect_uri",
    "scope",
    "state",
    "code_challenge",
    "code_challenge_method",
];

#[derive(Template)]
#[template(path = "console/authorize.html")]
pub struct ConsentPage {
    pub app_name: String,
    pub client_id: String,
    pub registered: bool,
    pub logo_uri: Option<String>,
    pub client_uri: Option<String>,
    pub member_email: String,
    pub org_name: String,
    pub resource: String,
    pub service_name: Option<String>,
    pub scopes: Vec<String>,
    pub redirect_uri: String,
    pub csrf: String,
    /// The request's parameters, sent again with the decision (checked again then).
    pub params: Vec<(String, String)>,
}

/// Parses an authorization request from form-encoded pairs (a query or a posted form). A
/// parameter sent twice is refused by leaving it out (RFC 6749 §3.1: at most once), except
/// `resource`, which may repeat (RFC 8707) and is checked by the use case.
pub fn params_of(pairs: &[(String, String)]) -> AuthorizeParams {
    let one = |k: &str| {
        let mut it = pairs.iter().filter(|(n, _)| n == k);
        match (it.next(), it.next()) {
            (Some((_, v)), None) => Some(v.clone()),
            _ => None,
        }
    };
    AuthorizeParams {
        response_type: one("response_type"),
        client_id: one("client_id"),
        redirect_uri: one("redirect_uri"),
        scope: one("scope"),
        state: one("state"),
        code_challenge: one("code_challenge"),
        code_challenge_method: one("code_challenge_method"),
        resources: pairs
            .iter()
            .filter(|(n, _)| n == "resource")
            .map(|(_, v)| v.clone())
            .collect(),
    }
}

fn page_error(status: StatusCode, message: String) -> Response {
    let mut r = html(&ErrorPage {
        status: status.as_u16(),
        message,
        back: "/console".into(),
    });
    *r.status_mut() = status;
    r
}

fn refused(e: AuthorizeError) -> Response {
    match e {
        AuthorizeError::Page(m) => page_error(StatusCode::BAD_REQUEST, m),
        AuthorizeError::Redirect(to) => to_client(&to),
    }
}

/// A 303 to the app's redirect URI.
fn to_client(url: &str) -> Response {
    let mut r = Redirect::to(url).into_response();
    // Form submissions may only lead to where `form-action` allows, redirects included.
    if let Some(origin) = origin_of(url) {
        if let Ok(v) = HeaderValue::from_str(&csp_for(&origin)) {
            r.headers_mut().insert(header::CONTENT_SECURITY_POLICY, v);
        }
    }
    r
}

/// `scheme://host[:port]` of a URL.
fn origin_of(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    if authority.is_empty()
        || authority
            .chars()
            .any(|c| c.is_whitespace() || c == ';' || c == ',' || c == '\'')
    {
        return None;
    }
    Some(format!("{}://{}", scheme.to_ascii_lowercase(), authority))
}

/// The consent page's policy: the console's, with the app's logo (any https image) and its
/// redirect URI's origin as a place the form may lead.
fn csp_for(redirect_origin: &str) -> String {
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' https:; \
         form-action 'self' {redirect_origin}; frame-ancestors 'none'; base-uri 'none'"
    )
}

/// `GET /console/authorize`: the request checked, then the consent page (or, when the
/// person's grant already covers it, straight back to the app with a code).
pub async fn show(State(s): State<AppState>, parts: Parts) -> Response {
    let headers = &parts.headers;
    let query = parts.uri.query().unwrap_or("").to_string();
    if query.len() > 8 * 1024 {
        return page_error(
            StatusCode::URI_TOO_LONG,
            "This authorization request is too long.".into(),
        );
    }
    let pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let meta = crate::auth::request_meta(&parts);
    let a = match s.app.authorize_check(&params_of(&pairs), &meta).await {
        Ok(a) => a,
        Err(e) => return refused(e),
    };
    let id = cookie(headers, SESSION_COOKIE).unwrap_or("").to_string();
    let signed = match s.app.console_session(&id).await {
        Ok(Some(signed)) => signed,
        Ok(None) => {
            let next = format!("/console/authorize?{query}");
            let to = format!(
                "/console/sign-in?{}",
                form_urlencoded::Serializer::new(String::new())
                    .append_pair("next", &next)
                    .finish()
            );
            return Redirect::to(&to).into_response();
        }
        Err(e) => return page_error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    };
    let member = match s.app.authorize_consent(&signed.principal, &a).await {
        Ok(Consent::Given(m)) => {
            return match s.app.authorize_approve(&m, &a, &meta).await {
                Ok(to) => to_client(&to),
                Err(e) => page_error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
            };
        }
        Ok(Consent::Ask(m)) => m,
        Err(Error::Forbidden(m)) => return page_error(StatusCode::FORBIDDEN, capitalize(&m)),
        Err(e) => return page_error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    };
    let org_name = match s.app.console_orgs(&signed).await {
        Ok(orgs) => orgs
            .into_iter()
            .find(|o| o.id == member.org_id)
            .map(|o| o.name)
            .unwrap_or_else(|| member.org_id.clone()),
        Err(_) => member.org_id.clone(),
    };
    let mut resp = html(&consent_page(
        &a,
        &member,
        org_name,
        s.app.console_csrf_token(&id),
        &pairs,
    ));
    if let Some(origin) = origin_of(&a.redirect_uri) {
        if let Ok(v) = HeaderValue::from_str(&csp_for(&origin)) {
            resp.headers_mut()
                .insert(header::CONTENT_SECURITY_POLICY, v);
        }
    }
    resp
}

fn consent_page(
    a: &Authorization,
    member: &Member,
    org_name: String,
    csrf: String,
    pairs: &[(String, String)],
) -> ConsentPage {
    let params = pairs
        .iter()
        .filter(|(k, _)| PARAMS.contains(&k.as_str()) || k == "resource")
        .cloned()
        .collect();
    ConsentPage {
        app_name: if a.app.name.is_empty() {
            a.app.client_id.clone()
        } else {
            a.app.name.clone()
        },
        client_id: a.app.client_id.clone(),
        registered: a.app.kind == keyplane_core::domain::apps::AppKind::Registered,
        logo_uri: a.app.logo_uri.clone(),
        client_uri: a.app.client_uri.clone(),
        member_email: member.email.clone(),
        org_name,
        resource: a.resource.clone(),
        service_name: None,
        scopes: a.scopes.clone(),
        redirect_uri: a.redirect_uri.clone(),
        csrf,
        params,
    }
}

/// `POST /console/authorize`: the person's decision (the session's CSRF token checked by
/// [`Posted`]); the request is checked again, as if it had just arrived.
pub async fn decide(State(s): State<AppState>, p: Posted) -> Response {
    let a = match s.app.authorize_check(&params_of(&p.form.0), &p.meta).await {
        Ok(a) => a,
        Err(e) => return refused(e),
    };
    if p.form.get("decision") == Some("deny") {
        return to_client(&s.app.authorize_deny(&a));
    }
    if p.form.get("decision") != Some("approve") {
        return page_error(StatusCode::BAD_REQUEST, "Choose Allow or Deny.".into());
    }
    let member = match s.app.authorize_consent(&p.signed.principal, &a).await {
        Ok(Consent::Given(m) | Consent::Ask(m)) => m,
        Err(Error::Forbidden(m)) => return page_error(StatusCode::FORBIDDEN, capitalize(&m)),
        Err(e) => return page_error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    };
    match s.app.authorize_approve(&member, &a, &p.meta).await {
        Ok(to) => to_client(&to),
        Err(e) => page_error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect::<String>() + ".",
        None => String::new(),
    }
}

/// Where the sign-in page may send the browser back to: only the console's own authorize page
/// (never another site, never a path that leaves it).
pub fn safe_next(next: &str) -> Option<&str> {
    // What follows the `?` is the query, whatever it holds; only the path is pinned.
    let ok = next.starts_with("/console/authorize?")
        && !next.contains(['\\', '\r', '\n', '#'])
        && next.len() <= 8 * 1024;
    ok.then_some(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_stays_on_the_authorize_page() {
        assert!(safe_next("/console/authorize?client_id=x").is_some());
        for bad in [
            "https://evil.example/",
            "//evil.example/console/authorize?x",
            "/console/authorize/../keys?x",
            "/console/authorize?x#y",
            "/console/authorizex?y",
            "/console/authorize?a=\\evil",
            "/console/authorize?a=\r\nSet-Cookie:x",
            "/console/keys",
        ] {
            assert!(safe_next(bad).is_none(), "{bad}");
        }
        // An unencoded URL in the query stays in the query.
        assert!(safe_next("/console/authorize?redirect_uri=https://a.example/cb").is_some());
    }

    #[test]
    fn origins() {
        assert_eq!(
            origin_of("http://127.0.0.1:4455/cb?code=x").as_deref(),
            Some("http://127.0.0.1:4455")
        );
        assert_eq!(
            origin_of("https://a.example/cb").as_deref(),
            Some("https://a.example")
        );
        assert!(origin_of("https://a.example;script-src */cb").is_none());
    }
}
