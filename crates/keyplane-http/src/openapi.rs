//! The OpenAPI 3.1 document, generated from the handlers' annotations.
//!
//! The annotations say what each operation answers when it succeeds and the errors peculiar to
//! it; the modifiers below add what every operation of a kind shares, so no operation can forget
//! it: the error answers of the management API (problem+json) and of the OAuth endpoints
//! (RFC 6749 §5.2 bodies, never cached), and the seed documents' paths, which are the same
//! operations under other names. Every operation has a unique `operationId`
//! (`<resource>_<verb>`), which client generators use as the function's name.

use crate::dto::*;
use crate::error::Problem;
use crate::routes::{activity, apps, authz, clients, keys, leaks, mgmt, oauth, ops, usage};
use utoipa::openapi::content::ContentBuilder;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::{Operation, ParameterBuilder, ParameterIn, PathItem};
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::schema::{Ref, Schema, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ObjectBuilder, RefOr, Required};
use utoipa::{Modify, OpenApi};

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("The admin key or an API key"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "client_basic",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Basic)
                    .description(Some(
                        "An OAuth client's client_id and client_secret, each form-urlencoded first \
                         (RFC 6749 §2.3.1). The same credentials may instead be sent in the form.",
                    ))
                    .build(),
            ),
        );
    }
}

/// The operations of a path item, mutably.
fn operations_mut(item: &mut PathItem) -> impl Iterator<Item = (&'static str, &mut Operation)> {
    [
        ("get", item.get.as_mut()),
        ("put", item.put.as_mut()),
        ("post", item.post.as_mut()),
        ("delete", item.delete.as_mut()),
        ("options", item.options.as_mut()),
        ("head", item.head.as_mut()),
        ("patch", item.patch.as_mut()),
        ("trace", item.trace.as_mut()),
    ]
    .into_iter()
    .filter_map(|(m, op)| Some((m, op?)))
}

fn string_header(description: &str) -> utoipa::openapi::header::Header {
    HeaderBuilder::new()
        .schema(ObjectBuilder::new().schema_type(Type::String))
        .description(Some(description))
        .build()
}

fn problem(description: &str) -> Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/problem+json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("Problem")))
                .build(),
        )
        .build()
}

fn oauth_error(description: &str) -> Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("OAuthErrorBody")))
                .build(),
        )
        .header("Cache-Control", string_header("`no-store`"))
        .header("Pragma", string_header("`no-cache`"))
        .build()
}

fn add(op: &mut Operation, status: &str, response: Response) {
    op.responses
        .responses
        .entry(status.to_string())
        .or_insert(RefOr::T(response));
}

/// Whether a path belongs to the management API (bearer-authenticated, problem+json errors).
fn is_management(path: &str) -> bool {
    (path.starts_with("/v1/") || path.starts_with("/auth/"))
        && !path.starts_with("/v1/authz")
        && !oauth::is_oauth_path(path)
}

/// The error answers every operation of a kind shares.
struct ErrorAnswers;

impl Modify for ErrorAnswers {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (path, item) in openapi.paths.paths.iter_mut() {
            let management = is_management(path);
            let oauth_endpoint = oauth::is_oauth_path(path);
            for (method, op) in operations_mut(item) {
                if management {
                    management_errors(method, op);
                } else if path == oauth::REGISTER_PATH {
                    // RFC 7591's own errors, as annotated: never cached either.
                    no_store_errors(op);
                } else if oauth_endpoint && method == "post" {
                    oauth_errors(op);
                }
            }
        }
    }
}

fn management_errors(method: &str, op: &mut Operation) {
    // Problems the annotations name keep their description but are problem+json.
    for r in op.responses.responses.values_mut() {
        if let RefOr::T(r) = r {
            if let Some(c) = r.content.shift_remove("application/json") {
                let is_problem = matches!(&c.schema, Some(RefOr::Ref(x)) if x.ref_location.ends_with("/Problem"));
                let key = if is_problem {
                    "application/problem+json"
                } else {
                    "application/json"
                };
                r.content.insert(key.to_string(), c);
            }
        }
    }
    let has_body = op.request_body.is_some();
    let has_if_match = op.parameters.iter().flatten().any(|p| p.name == "If-Match");
    add(
        op,
        "400",
        problem("Malformed: the JSON, the query string or a path parameter cannot be read"),
    );
    let unauthenticated = ResponseBuilder::from(problem(
        "No credential, or one that is malformed, unknown, revoked or expired",
    ))
    .header(
        "WWW-Authenticate",
        string_header("`Bearer realm=\"keyplane\", error=\"invalid_token\", ...`"),
    )
    .build();
    add(op, "401", unauthenticated);
    add(
        op,
        "403",
        problem("The credential lacks the permission, or the change is beyond its ceiling"),
    );
    add(
        op,
        "404",
        problem("No such resource, or one this credential may not see (the two answer alike)"),
    );
    if method != "get" {
        add(
            op,
            "409",
            problem("A name already taken, a limit reached, or a concurrent change"),
        );
    }
    if has_if_match {
        add(op, "412", problem("If-Match names an older version"));
    }
    if has_body {
        add(op, "413", problem("The body is larger than 64 KiB"));
        add(
            op,
            "415",
            problem("The body is not sent as `application/json`"),
        );
    }
    add(
        op,
        "422",
        problem("A field or query parameter breaks a rule; `field` names it"),
    );
    add(
        op,
        "500",
        problem("An internal error; the cause is in the server's log"),
    );
}

/// Every error answer of `op` says `Cache-Control: no-store` and `Pragma: no-cache`.
fn no_store_errors(op: &mut Operation) {
    for (status, r) in op.responses.responses.iter_mut() {
        if let (RefOr::T(r), true) = (r, status.starts_with('4') || status.starts_with('5')) {
            r.headers
                .entry("Cache-Control".into())
                .or_insert_with(|| string_header("`no-store`"));
            r.headers
                .entry("Pragma".into())
                .or_insert_with(|| string_header("`no-cache`"));
        }
    }
}

fn oauth_errors(op: &mut Operation) {
    // Errors the annotations name are never cached either.
    for (status, r) in op.responses.responses.iter_mut() {
        if let (RefOr::T(r), true) = (r, status.starts_with('4') || status.starts_with('5')) {
            r.headers
                .entry("Cache-Control".into())
                .or_insert_with(|| string_header("`no-store`"));
            r.headers
                .entry("Pragma".into())
                .or_insert_with(|| string_header("`no-cache`"));
        }
    }
    add(
        op,
        "400",
        oauth_error(
            "`invalid_request` (a missing, repeated or malformed parameter, or not a form), \
             `invalid_scope`, `unauthorized_client` or `unsupported_grant_type`",
        ),
    );
    let invalid_client = ResponseBuilder::from(oauth_error(
        "`invalid_client`: client authentication failed",
    ))
    .header(
        "WWW-Authenticate",
        string_header("`Basic realm=\"keyplane\"` when the client used HTTP Basic"),
    )
    .build();
    add(op, "401", invalid_client);
    add(
        op,
        "413",
        oauth_error("`invalid_request`: the form is larger than 16 KiB"),
    );
    let throttled = ResponseBuilder::from(oauth_error(
        "`invalid_client`: too many failed client authentications from this address",
    ))
    .header(
        "Retry-After",
        string_header("Seconds to wait before trying again"),
    )
    .build();
    add(op, "429", throttled);
    add(
        op,
        "500",
        oauth_error("`server_error`; the cause is in the server's log"),
    );
}

/// Bodies that may be left out (`request_body = Option<T>`, read with `OptionalJson`): utoipa
/// writes them as `oneOf: [null, T]`, which says a JSON `null` is a fine body — it is not (it is
/// a 422). What is optional is the body itself: `required` is already absent, so the schema is
/// just `T`.
struct OptionalBodies;

impl Modify for OptionalBodies {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for item in openapi.paths.paths.values_mut() {
            for (_, op) in operations_mut(item) {
                let Some(body) = op.request_body.as_mut() else {
                    continue;
                };
                if matches!(body.required, Some(Required::True)) {
                    continue;
                }
                for content in body.content.values_mut() {
                    let Some(RefOr::T(Schema::OneOf(one))) = &content.schema else {
                        continue;
                    };
                    let refs: Vec<&RefOr<Schema>> = one
                        .items
                        .iter()
                        .filter(|i| matches!(i, RefOr::Ref(_)))
                        .collect();
                    if one.items.len() == 2 && refs.len() == 1 {
                        content.schema = Some(refs[0].clone());
                    }
                }
                body.description
                    .get_or_insert_with(|| "Optional: without a body, the defaults apply".into());
            }
        }
    }
}

/// The seed documents' paths and Envoy's form of forward auth: the same handlers as keyplane's
/// own paths, each documented as an operation of its own.
struct Aliases;

impl Modify for Aliases {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let paths = &mut openapi.paths.paths;
        let aliases = [
            (
                "/v1/oauth/token",
                "/v1beta/oauth/token",
                "oauth_token_v1beta",
            ),
            ("/v1/oauth/token", "/api/oauth/token", "oauth_token_api"),
            (
                "/v1/oauth/token/introspect",
                "/v1beta/oauth/token/introspect",
                "oauth_introspect_v1beta",
            ),
            (
                "/v1/oauth/token/revoke",
                "/v1beta/oauth/token/revoke",
                "oauth_revoke_v1beta",
            ),
        ];
        for (original, alias, operation_id) in aliases {
            let Some(mut item) = paths.get(original).cloned() else {
                continue;
            };
            for (_, op) in operations_mut(&mut item) {
                op.operation_id = Some(operation_id.into());
                op.summary = Some(format!(
                    "{} (the path the seed documents use)",
                    op.summary.as_deref().unwrap_or(original)
                ));
            }
            paths.insert(alias.into(), item);
        }
        if let Some(mut item) = paths.get("/v1/authz").cloned() {
            for (_, op) in operations_mut(&mut item) {
                op.operation_id = Some("authz_check_original".into());
                op.summary = Some(
                    "Forward auth for Envoy's HTTP ext_authz: the original request's path follows \
                     /v1/authz, with its method"
                        .into(),
                );
                op.description = Some(
                    "Route rules decide the scopes the original request needs. Any method is \
                     accepted (the original request's)."
                        .into(),
                );
                op.parameters = Some(vec![ParameterBuilder::new()
                    .name("original")
                    .parameter_in(ParameterIn::Path)
                    .required(Required::True)
                    .description(Some(
                        "The original request's path, without its leading slash (it may itself \
                         contain slashes)",
                    ))
                    .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
                    .build()]);
            }
            paths.insert("/v1/authz/{original}".into(), item);
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "keyplane", description = "The credential plane of an API platform: admin key, API keys, OAuth 2.0 client credentials, activity log, forward auth.\n\nErrors on the management API are RFC 9457 `application/problem+json`; on the OAuth endpoints they are RFC 6749 §5.2 bodies (`error`, `error_description`) with `Cache-Control: no-store`."),
    modifiers(&SecuritySchemes, &OptionalBodies, &ErrorAnswers, &Aliases),
    paths(
        keys::create, keys::list, keys::get_one, keys::update, keys::delete_key, keys::revoke, keys::copy, keys::regenerate,
        keys::seed_list, keys::seed_create, keys::seed_deactivate,
        mgmt::org_create, mgmt::org_list, mgmt::project_create, mgmt::project_list,
        mgmt::service_create, mgmt::service_list, mgmt::service_update,
        mgmt::member_create, mgmt::member_list, mgmt::member_get, mgmt::member_update, mgmt::member_delete,
        mgmt::role_create, mgmt::role_list, mgmt::whoami, mgmt::routes_list, mgmt::routes_reload, mgmt::config_apply,
        activity::query, activity::verify,
        usage::usage, usage::top,
        apps::authorize, apps::register, apps::grants_list, apps::grant_revoke, apps::apps_list, apps::app_block, apps::app_unblock,
        authz::authz,
        clients::create, clients::list, clients::get_one, clients::update, clients::remove,
        clients::add_secret, clients::retire_secret, clients::issue_token,
        oauth::token, oauth::introspect, oauth::revoke, oauth::metadata, oauth::jwks,
        crate::protected_resource::metadata_root, crate::protected_resource::metadata,
        ops::healthz, ops::readyz, ops::metrics, ops::openapi,
        leaks::github, leaks::patterns, leaks::report,
    ),
    components(schemas(apps::RegisteredApp, apps::GrantView, apps::AppView, apps::AppRef, List<apps::GrantView>, List<apps::AppView>, Problem, ApiKeyView, ApiKeyWithSecret, CreateApiKey, UpdateApiKey, CopyApiKey, RegenerateApiKey,
        SeedCreateApiKey, OrgView, CreateOrg, ProjectView, CreateProject, ServiceView, CreateService, UpdateService, MemberView,
        CreateMember, UpdateMember, RoleView, CreateRole, EventView, VerifyView, BrokenView, WhoAmI,
        mgmt::RulesView, mgmt::RuleView, mgmt::ConfigApplyRequest, mgmt::ConfigApplyView, mgmt::ConfigApplyItemView, ClientView, ClientSecretView, ClientWithSecret, CreateClient, UpdateClient, AddClientSecret, NewClientSecret,
        IssueClientToken, IssuedTokenView, oauth::TokenRequest, oauth::GrantType, oauth::IntrospectionRequest, oauth::RevocationRequest,
        oauth::TokenResponse, oauth::IntrospectionResponse, oauth::AudienceValue, oauth::OAuthErrorBody, oauth::AuthorizationServerMetadata,
        oauth::JwkSet, oauth::Jwk, ops::Health, ops::ReadinessView,
        crate::protected_resource::ProtectedResourceMetadata,
        leaks::LeakFeedback, leaks::LeakPatternView, leaks::LeakPatternsView, leaks::LeakReportRequest, leaks::LeakedCredentialView, leaks::LeakReportView,
        RateLimitView, UsageView, UsageBucketView, TopCredentialView))
)]
pub struct ApiDoc;

/// The document as pretty JSON (what `/openapi.json` serves and `openapi.json` commits).
pub fn document() -> String {
    ApiDoc::openapi()
        .to_pretty_json()
        .expect("the OpenAPI document serializes")
}

#[cfg(test)]
mod tests {
    use super::is_management;

    #[test]
    fn kinds_of_path() {
        assert!(is_management("/v1/api-keys"));
        assert!(is_management("/auth/api_keys"));
        assert!(!is_management("/v1/oauth/token"));
        assert!(!is_management("/v1/authz"));
        assert!(!is_management("/healthz"));
    }
}
