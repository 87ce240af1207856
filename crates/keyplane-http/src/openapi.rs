//! The OpenAPI 3.1 document, generated from the handlers' annotations.

use crate::dto::*;
use crate::error::Problem;
use crate::routes::{activity, authz, clients, keys, mgmt, oauth, ops};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

struct BearerAuth;

impl Modify for BearerAuth {
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
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "keyplane", description = "The credential plane of an API platform: admin key, API keys, OAuth 2.0 client credentials, activity log, forward auth."),
    modifiers(&BearerAuth),
    paths(
        keys::create, keys::list, keys::get_one, keys::update, keys::revoke, keys::copy, keys::regenerate,
        keys::seed_list, keys::seed_create, keys::seed_deactivate,
        mgmt::org_create, mgmt::org_list, mgmt::project_create, mgmt::project_list,
        mgmt::service_create, mgmt::service_list,
        mgmt::member_create, mgmt::member_list, mgmt::member_get, mgmt::member_update, mgmt::member_delete,
        mgmt::role_create, mgmt::role_list, mgmt::whoami, mgmt::routes_list, mgmt::routes_reload,
        activity::query, activity::verify,
        authz::authz,
        clients::create, clients::list, clients::get_one, clients::update, clients::remove,
        clients::add_secret, clients::retire_secret, clients::issue_token,
        oauth::token, oauth::introspect, oauth::revoke, oauth::metadata, oauth::jwks,
        ops::healthz, ops::readyz, ops::metrics,
    ),
    components(schemas(Problem, ApiKeyView, ApiKeyWithSecret, CreateApiKey, UpdateApiKey, CopyApiKey, RegenerateApiKey,
        SeedCreateApiKey, OrgView, CreateOrg, ProjectView, CreateProject, ServiceView, CreateService, MemberView,
        CreateMember, UpdateMember, RoleView, CreateRole, EventView, VerifyView, BrokenView, WhoAmI,
        mgmt::RulesView, mgmt::RuleView, ClientView, ClientSecretView, ClientWithSecret, CreateClient, UpdateClient, AddClientSecret, NewClientSecret,
        IssueClientToken, IssuedTokenView, oauth::TokenResponse, oauth::IntrospectionResponse, oauth::OAuthErrorBody))
)]
pub struct ApiDoc;

/// The document as pretty JSON (what `/openapi.json` serves and `openapi.json` commits).
pub fn document() -> String {
    ApiDoc::openapi()
        .to_pretty_json()
        .expect("the OpenAPI document serializes")
}
