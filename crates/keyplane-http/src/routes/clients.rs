//! OAuth clients: `/v1/oauth-clients`, their secrets, and tokens issued from the console.

use crate::auth::Caller;
use crate::dto::*;
use crate::error::{ApiResult, AppJson, AppPath, AppQuery, OptionalJson};
use crate::etag::{IfMatch, Tagged};
use crate::no_store::NoStore;
use crate::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use keyplane_core::usecase::clients::{ClientPatch, NewClient};
use serde::Deserialize;
use utoipa::IntoParams;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/oauth-clients", post(create).get(list))
        .route(
            "/v1/oauth-clients/{client_id}",
            get(get_one).patch(update).delete(remove),
        )
        .route("/v1/oauth-clients/{client_id}/secrets", post(add_secret))
        .route(
            "/v1/oauth-clients/{client_id}/secrets/{secret_id}",
            delete(retire_secret),
        )
        .route("/v1/oauth-clients/{client_id}/tokens", post(issue_token))
}

const NO_SECRET: &str = "This client authenticates with private_key_jwt: it has no secret. Sign client assertions with the private key of one of its registered public keys.";

const SHOWN_ONCE: &str =
    "Store this client secret now: it is shown only once. keyplane keeps only a keyed hash of it.";

/// Register a client-credentials client. The secret is in this response only; a
/// `private_key_jwt` client (RFC 7591 `token_endpoint_auth_method`, with `jwks` or `jwks_uri`)
/// gets none.
#[utoipa::path(post, path = "/v1/oauth-clients", operation_id = "oauth_clients_create", tag = "oauth-clients", request_body = CreateClient,
    responses((status = 201, body = ClientWithSecret, headers(("Cache-Control" = String, description = "`no-store`: the answer carries a secret"), ("Pragma" = String, description = "`no-cache`"))), (status = 409, body = crate::error::Problem), (status = 422, body = crate::error::Problem)),
    security(("bearer" = [])))]
pub async fn create(
    State(s): State<AppState>,
    c: Caller,
    AppJson(b): AppJson<CreateClient>,
) -> ApiResult<NoStore<(StatusCode, Json<ClientWithSecret>)>> {
    let input = NewClient {
        org_id: b.org_id,
        project_id: b.project_id,
        owner_member_id: b.owner_member_id,
        name: b.name,
        description: b.description,
        scopes: b.scopes,
        access_token_ttl_seconds: b.access_token_ttl_seconds,
        token_format: b.token_format,
        signing_alg: b.signing_alg,
        audience: b.audience,
        secret_rotation_days: b.secret_rotation_days,
        token_endpoint_auth_method: b.token_endpoint_auth_method,
        // The body's types are checked as it is read (an object, an array), so a request that
        // breaks the document is 422 before anything else, an `If-Match` included.
        jwks: b.jwks.map(serde_json::Value::Object),
        jwks_uri: b.jwks_uri,
        federated_credentials: b.federated_credentials.map(serde_json::Value::Array),
        dpop_bound_access_tokens: b.dpop_bound_access_tokens,
        may_act: b.may_act,
        rate_limits: rate_limits_in(b.rate_limits)?,
    };
    let (client, first) = s.app.client_create(&c.principal, input, &c.meta).await?;
    let secrets = s.app.client_get(&c.principal, &client.client_id).await?.1;
    let (client_secret, secret_id, message) = match first {
        Some((cs, secret)) => (Some(secret.expose().to_string()), Some(cs.id), SHOWN_ONCE),
        None => (None, None, NO_SECRET),
    };
    Ok(NoStore((
        StatusCode::CREATED,
        Json(ClientWithSecret {
            client: ClientView::new(client, secrets, s.app.now()),
            client_secret,
            secret_id,
            message: message.into(),
        }),
    )))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ClientListQuery {
    pub org_id: Option<String>,
    pub project_id: Option<String>,
    pub cursor: Option<String>,
    pub limit: Option<i64>,
}

/// List clients (never their secrets' values), oldest first, by cursor.
#[utoipa::path(get, path = "/v1/oauth-clients", operation_id = "oauth_clients_list", tag = "oauth-clients", params(ClientListQuery),
    responses((status = 200, body = List<ClientView>)), security(("bearer" = [])))]
pub async fn list(
    State(s): State<AppState>,
    c: Caller,
    AppQuery(q): AppQuery<ClientListQuery>,
) -> ApiResult<Json<List<ClientView>>> {
    let page = s
        .app
        .client_list(
            &c.principal,
            q.org_id.as_deref(),
            q.project_id.as_deref(),
            q.cursor.as_deref(),
            q.limit,
        )
        .await?;
    let now = s.app.now();
    Ok(Json(List {
        items: page
            .items
            .into_iter()
            .map(|(cl, sec)| ClientView::new(cl, sec, now))
            .collect(),
        next_cursor: page.next_cursor,
    }))
}

/// Get one client, with its secrets' ages, expiry and use.
#[utoipa::path(get, path = "/v1/oauth-clients/{client_id}", operation_id = "oauth_clients_get", tag = "oauth-clients", params(("client_id" = String, Path)),
    responses((status = 200, body = ClientView, headers(("ETag" = String, description = "The version, for If-Match"))), (status = 404, body = crate::error::Problem)), security(("bearer" = [])))]
pub async fn get_one(
    State(s): State<AppState>,
    c: Caller,
    AppPath(id): AppPath<String>,
) -> ApiResult<Tagged<Json<ClientView>>> {
    let (cl, sec) = s.app.client_get(&c.principal, &id).await?;
    Ok(Tagged(
        cl.version,
        Json(ClientView::new(cl, sec, s.app.now())),
    ))
}

/// Edit name, scopes, token lifetime, format, algorithm, audience, rotation policy, how the
/// client authenticates (`token_endpoint_auth_method`, `jwks`, `jwks_uri`,
/// `federated_credentials`), or whether it must use DPoP (`dpop_bound_access_tokens`).
#[utoipa::path(patch, path = "/v1/oauth-clients/{client_id}", operation_id = "oauth_clients_update", tag = "oauth-clients", params(("client_id" = String, Path), ("If-Match" = Option<String>, Header, description = "Only if the resource is still at this entity tag (its `ETag`); otherwise 412")), request_body = UpdateClient,
    responses((status = 403, body = crate::error::Problem, description = "beyond the caller's ceiling"), (status = 412, body = crate::error::Problem, description = "If-Match names an older version"), (status = 200, body = ClientView)), security(("bearer" = [])))]
pub async fn update(
    State(s): State<AppState>,
    c: Caller,
    AppPath(id): AppPath<String>,
    IfMatch(if_match): IfMatch,
    AppJson(b): AppJson<UpdateClient>,
) -> ApiResult<Tagged<Json<ClientView>>> {
    let patch = ClientPatch {
        name: b.name,
        description: b.description,
        scopes: b.scopes,
        access_token_ttl_seconds: b.access_token_ttl_seconds,
        token_format: b.token_format,
        signing_alg: b.signing_alg,
        audience: b.audience,
        secret_rotation_days: b.secret_rotation_days,
        token_endpoint_auth_method: b.token_endpoint_auth_method,
        jwks: b.jwks.map(|j| j.map(serde_json::Value::Object)),
        jwks_uri: b.jwks_uri,
        federated_credentials: b
            .federated_credentials
            .map(|f| f.map(serde_json::Value::Array)),
        // `null` is the RFC 9449 default, `false`.
        dpop_bound_access_tokens: b.dpop_bound_access_tokens.map(|d| d.unwrap_or(false)),
        may_act: b.may_act,
        rate_limits: b.rate_limits.map(rate_limits_in).transpose()?,
    };
    let (cl, sec) = s
        .app
        .client_update(&c.principal, &id, patch, if_match, &c.meta)
        .await?;
    Ok(Tagged(
        cl.version,
        Json(ClientView::new(cl, sec, s.app.now())),
    ))
}

/// Delete a client; its access tokens stop working at once.
#[utoipa::path(delete, path = "/v1/oauth-clients/{client_id}", operation_id = "oauth_clients_delete", tag = "oauth-clients", params(("client_id" = String, Path), ("If-Match" = Option<String>, Header, description = "Only if the resource is still at this entity tag (its `ETag`); otherwise 412")),
    responses((status = 403, body = crate::error::Problem, description = "beyond the caller's ceiling"), (status = 412, body = crate::error::Problem, description = "If-Match names an older version"), (status = 204)), security(("bearer" = [])))]
pub async fn remove(
    State(s): State<AppState>,
    c: Caller,
    AppPath(id): AppPath<String>,
    IfMatch(if_match): IfMatch,
) -> ApiResult<StatusCode> {
    s.app
        .client_delete(&c.principal, &id, if_match, &c.meta)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Add a secret (shown once); optionally give the other secrets a grace period.
#[utoipa::path(post, path = "/v1/oauth-clients/{client_id}/secrets", operation_id = "oauth_clients_secrets_add", tag = "oauth-clients", params(("client_id" = String, Path), ("If-Match" = Option<String>, Header, description = "Only if the resource is still at this entity tag (its `ETag`); otherwise 412")), request_body = Option<AddClientSecret>,
    responses((status = 403, body = crate::error::Problem, description = "beyond the caller's ceiling"), (status = 412, body = crate::error::Problem, description = "If-Match names an older version"), (status = 201, body = NewClientSecret, headers(("Cache-Control" = String, description = "`no-store`: the answer carries a secret"), ("Pragma" = String, description = "`no-cache`")))), security(("bearer" = [])))]
pub async fn add_secret(
    State(s): State<AppState>,
    c: Caller,
    AppPath(id): AppPath<String>,
    IfMatch(if_match): IfMatch,
    OptionalJson(b): OptionalJson<AddClientSecret>,
) -> ApiResult<NoStore<(StatusCode, Json<NewClientSecret>)>> {
    let grace = b.old_secrets_expire_in_seconds.map(time::Duration::seconds);
    let (cs, secret) = s
        .app
        .client_secret_add(&c.principal, &id, grace, if_match, &c.meta)
        .await?;
    Ok(NoStore((
        StatusCode::CREATED,
        Json(NewClientSecret {
            secret_id: cs.id,
            client_id: cs.client_id,
            client_secret: secret.expose().to_string(),
            created_at: rfc3339(cs.created_at),
            message: SHOWN_ONCE.into(),
        }),
    )))
}

/// Retire a secret at once. Access tokens issued before now stop working.
#[utoipa::path(delete, path = "/v1/oauth-clients/{client_id}/secrets/{secret_id}", operation_id = "oauth_clients_secrets_retire", tag = "oauth-clients",
    params(("client_id" = String, Path), ("secret_id" = String, Path), ("If-Match" = Option<String>, Header, description = "Only if the resource is still at this entity tag (its `ETag`); otherwise 412")), responses((status = 403, body = crate::error::Problem, description = "beyond the caller's ceiling"), (status = 412, body = crate::error::Problem, description = "If-Match names an older version"), (status = 204)), security(("bearer" = [])))]
pub async fn retire_secret(
    State(s): State<AppState>,
    c: Caller,
    AppPath((id, secret_id)): AppPath<(String, String)>,
    IfMatch(if_match): IfMatch,
) -> ApiResult<StatusCode> {
    s.app
        .client_secret_retire(&c.principal, &id, &secret_id, if_match, &c.meta)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Issue an access token for the client (the console's "create access token"). Not for a
/// client with `dpop_bound_access_tokens` (409): its tokens are bound to a key only it holds.
#[utoipa::path(post, path = "/v1/oauth-clients/{client_id}/tokens", operation_id = "oauth_clients_tokens_issue", tag = "oauth-clients", params(("client_id" = String, Path)), request_body = Option<IssueClientToken>,
    responses((status = 409, body = crate::error::Problem, description = "The client requires DPoP-bound access tokens (`dpop_bound_access_tokens`)"), (status = 201, body = IssuedTokenView, headers(("Cache-Control" = String, description = "`no-store`: the answer carries an access token"), ("Pragma" = String, description = "`no-cache`")))), security(("bearer" = [])))]
pub async fn issue_token(
    State(s): State<AppState>,
    c: Caller,
    AppPath(id): AppPath<String>,
    OptionalJson(b): OptionalJson<IssueClientToken>,
) -> ApiResult<NoStore<(StatusCode, Json<IssuedTokenView>)>> {
    let t = s
        .app
        .client_token(&c.principal, &id, b.scope.as_deref(), &c.meta)
        .await?;
    Ok(NoStore((
        StatusCode::CREATED,
        Json(IssuedTokenView {
            access_token: t.access_token,
            token_type: "Bearer".into(),
            expires_in: t.expires_in,
            scope: t.scope,
        }),
    )))
}
