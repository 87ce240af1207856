//! Interoperability: keyplane driven by a third-party OAuth 2.0 client, the `oauth2` crate's
//! `BasicClient`, configured from keyplane's metadata the way an integration written against any
//! RFC 6749 / 7662 / 7009 server would be. Client credentials with HTTP Basic and in the body,
//! a downscoped token, introspection, revocation; opaque and JWT clients; both backends.

use keyplane_testkit::reqwest::{Method, StatusCode};
use keyplane_testkit::{json, TestApp};
use oauth2::basic::{BasicClient, BasicErrorResponseType, BasicTokenResponse, BasicTokenType};
use oauth2::{
    AccessToken, AsyncHttpClient, AuthType, ClientId, ClientSecret, EndpointNotSet, EndpointSet,
    HttpClientError, HttpRequest, HttpResponse, IntrospectionUrl, RequestTokenError, RevocationUrl,
    Scope, StandardRevocableToken, TokenIntrospectionResponse, TokenResponse, TokenUrl,
};
use std::time::Duration;

const READ: &str = "ai-guard:read";
const WRITE: &str = "ai-guard:write";
const NAME: &str = "oauth2-crate interop";

/// A `BasicClient` with token, introspection and revocation endpoints set.
type Client = BasicClient<EndpointNotSet, EndpointNotSet, EndpointSet, EndpointSet, EndpointSet>;
type HttpError = HttpClientError<oauth2::reqwest::Error>;

/// oauth2 refuses a revocation endpoint that is not `https://` (RFC 7009 §2: "Clients MUST
/// verify that the URL is an HTTPS URL"). keyplane speaks plain HTTP behind a TLS-terminating
/// proxy; in this test the proxy is this function: oauth2's `https://` requests go to the same
/// address over `http://`. Everything else is oauth2's own reqwest client, unchanged.
async fn via_tls_terminator(
    http: &oauth2::reqwest::Client,
    mut req: HttpRequest,
) -> Result<HttpResponse, HttpError> {
    if req.uri().scheme_str() == Some("https") {
        let plain = req.uri().to_string().replacen("https://", "http://", 1);
        *req.uri_mut() = plain.parse().expect("an http URI");
    }
    http.call(req).await
}

/// The endpoints keyplane's RFC 8414 metadata advertises, on the test server's address (the
/// issuer names the configured listen address, port 0 in tests).
struct Endpoints {
    token: String,
    introspection: String,
    revocation: String,
}

async fn discover(app: &TestApp) -> Endpoints {
    let a = app
        .call(
            Method::GET,
            "/.well-known/oauth-authorization-server",
            None,
            None,
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let meta = a.json();
    let methods = meta["token_endpoint_auth_methods_supported"].clone();
    assert_eq!(
        methods,
        json!([
            "client_secret_basic",
            "client_secret_post",
            "private_key_jwt",
            "none"
        ])
    );
    assert_eq!(
        meta["grant_types_supported"],
        json!([
            "client_credentials",
            "authorization_code",
            "refresh_token",
            "urn:ietf:params:oauth:grant-type:token-exchange"
        ])
    );
    let issuer = meta["issuer"].as_str().expect("issuer");
    let at = |field: &str| {
        let url = meta[field].as_str().unwrap_or_else(|| panic!("{field}"));
        let path = url
            .strip_prefix(issuer)
            .unwrap_or_else(|| panic!("{field} {url} is not under the issuer {issuer}"));
        format!("{}{path}", app.base)
    };
    Endpoints {
        token: at("token_endpoint"),
        introspection: at("introspection_endpoint"),
        revocation: at("revocation_endpoint").replacen("http://", "https://", 1),
    }
}

fn oauth_client(e: &Endpoints, id: &str, secret: &str, auth: AuthType) -> Client {
    BasicClient::new(ClientId::new(id.into()))
        .set_client_secret(ClientSecret::new(secret.into()))
        .set_auth_type(auth)
        .set_token_uri(TokenUrl::new(e.token.clone()).expect("token URL"))
        .set_introspection_url(
            IntrospectionUrl::new(e.introspection.clone()).expect("introspection URL"),
        )
        .set_revocation_url(RevocationUrl::new(e.revocation.clone()).expect("revocation URL"))
}

fn scopes_of(s: Option<&Vec<Scope>>) -> Vec<String> {
    let mut v: Vec<String> = s
        .map(|s| s.iter().map(|x| x.to_string()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

fn assert_format(t: &BasicTokenResponse, format: &str) {
    let token = t.access_token().secret();
    match format {
        "opaque" => assert!(token.starts_with("kpt_"), "not an opaque token: {token}"),
        _ => assert_eq!(token.split('.').count(), 3, "not a JWT: {token}"),
    }
}

async fn flows(app: TestApp, format: &str) {
    app.service("ai-guard", &[READ, WRITE]).await;
    let created = app
        .post(
            "/v1/oauth-clients",
            &app.admin_key,
            json!({ "name": NAME, "scopes": [READ, WRITE], "token_format": format }),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    let v = created.json();
    let id = v["client_id"].as_str().expect("client_id").to_string();
    let secret = v["client_secret"]
        .as_str()
        .expect("client_secret")
        .to_string();

    let endpoints = discover(&app).await;
    // oauth2's documentation: no redirects, against SSRF.
    let http = oauth2::reqwest::Client::builder()
        .redirect(oauth2::reqwest::redirect::Policy::none())
        .build()
        .expect("an HTTP client");
    let send = |req| via_tls_terminator(&http, req);

    for auth in [AuthType::BasicAuth, AuthType::RequestBody] {
        let how = format!("{format} client, {auth:?}");
        let client = oauth_client(&endpoints, &id, &secret, auth.clone());

        // Every scope of the client when none is asked for.
        let all = client
            .exchange_client_credentials()
            .request_async(&send)
            .await
            .unwrap_or_else(|e| panic!("{how}: token: {e:?}"));
        assert_eq!(all.token_type(), &BasicTokenType::Bearer, "{how}");
        assert_eq!(all.expires_in(), Some(Duration::from_secs(3600)), "{how}");
        assert_eq!(scopes_of(all.scopes()), [READ, WRITE], "{how}");
        assert!(all.refresh_token().is_none(), "{how}");
        assert_format(&all, format);

        // Downscoped: one of the two.
        let read = client
            .exchange_client_credentials()
            .add_scope(Scope::new(READ.into()))
            .request_async(&send)
            .await
            .unwrap_or_else(|e| panic!("{how}: downscoped token: {e:?}"));
        assert_eq!(scopes_of(read.scopes()), [READ], "{how}");
        assert_format(&read, format);
        let token = read.access_token().secret();
        assert_eq!(
            app.authz(Some(token), Some(READ)).await.status,
            StatusCode::OK,
            "{how}"
        );
        assert_eq!(
            app.authz(Some(token), Some(WRITE)).await.status,
            StatusCode::FORBIDDEN,
            "{how}: a read-only token used for writing"
        );

        // A scope the client does not have: RFC 6749 §5.2 invalid_scope.
        let refused = client
            .exchange_client_credentials()
            .add_scope(Scope::new("ai-guard:admin".into()))
            .request_async(&send)
            .await;
        match refused {
            Err(RequestTokenError::ServerResponse(e)) => {
                assert_eq!(e.error(), &BasicErrorResponseType::InvalidScope, "{how}")
            }
            other => panic!("{how}: an unknown scope: {other:?}"),
        }

        // Introspection (RFC 7662) of the downscoped token.
        let info = client
            .introspect(read.access_token())
            .request_async(&send)
            .await
            .unwrap_or_else(|e| panic!("{how}: introspect: {e:?}"));
        assert!(info.active(), "{how}");
        assert_eq!(scopes_of(info.scopes()), [READ], "{how}");
        assert_eq!(info.client_id().map(|c| c.as_str()), Some(id.as_str()));
        assert_eq!(info.username(), Some(NAME), "{how}");
        assert_eq!(info.token_type(), Some(&BasicTokenType::Bearer), "{how}");
        assert!(info.iss().is_some() && info.sub().is_some() && info.jti().is_some());
        let (exp, iat) = (info.exp().expect("exp"), info.iat().expect("iat"));
        assert_eq!((exp - iat).num_seconds(), 3600, "{how}");
        assert_eq!(info.nbf(), Some(iat), "{how}");
        if format == "jwt" {
            assert!(info.aud().is_some_and(|a| !a.is_empty()), "{how}: aud");
        }

        // Revocation (RFC 7009), then introspection again: inactive, and nothing else.
        client
            .revoke_token(StandardRevocableToken::AccessToken(
                read.access_token().clone(),
            ))
            .expect("an https revocation URL")
            .request_async(&send)
            .await
            .unwrap_or_else(|e| panic!("{how}: revoke: {e:?}"));
        let after = client
            .introspect(read.access_token())
            .request_async(&send)
            .await
            .unwrap_or_else(|e| panic!("{how}: introspect after revocation: {e:?}"));
        assert!(!after.active(), "{how}: still active after revocation");
        assert!(after.scopes().is_none() && after.client_id().is_none() && after.exp().is_none());
        assert_eq!(
            app.authz(Some(token), Some(READ)).await.status,
            StatusCode::UNAUTHORIZED,
            "{how}: a revoked token"
        );

        // Revoking one token leaves the client's others alone.
        let other = client
            .introspect(all.access_token())
            .request_async(&send)
            .await
            .unwrap_or_else(|e| panic!("{how}: introspect: {e:?}"));
        assert!(other.active(), "{how}: the other token");
        assert_eq!(scopes_of(other.scopes()), [READ, WRITE], "{how}");

        // A token keyplane never issued: introspection says inactive, revocation is no error.
        let stranger = AccessToken::new("kpt_neverIssued".into());
        let unknown = client
            .introspect(&stranger)
            .request_async(&send)
            .await
            .unwrap_or_else(|e| panic!("{how}: introspect an unknown token: {e:?}"));
        assert!(!unknown.active(), "{how}");
        client
            .revoke_token(StandardRevocableToken::AccessToken(stranger))
            .expect("an https revocation URL")
            .request_async(&send)
            .await
            .unwrap_or_else(|e| panic!("{how}: revoke an unknown token: {e:?}"));

        // A wrong secret: RFC 6749 §5.2 invalid_client, which oauth2 parses.
        let wrong = oauth_client(&endpoints, &id, "kps_wrong", auth);
        match wrong
            .exchange_client_credentials()
            .request_async(&send)
            .await
        {
            Err(RequestTokenError::ServerResponse(e)) => {
                assert_eq!(e.error(), &BasicErrorResponseType::InvalidClient, "{how}")
            }
            other => panic!("{how}: a wrong secret: {other:?}"),
        }
    }
}

async fn opaque(app: TestApp) {
    flows(app, "opaque").await;
}

async fn jwt(app: TestApp) {
    flows(app, "jwt").await;
}

on_both!(oauth2_crate_opaque_client, opaque);
on_both!(oauth2_crate_jwt_client, jwt);
