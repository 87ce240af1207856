//! What the console's templates show: one struct per page (askama checks each template
//! against its struct at build time) and the small view types they list.

use askama::Template;
use axum::response::{Html, IntoResponse, Response};
use keyplane_core::domain::model::{ApiKey, ClientSecret, Event, OAuthClient, Service};
use std::fmt;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Renders a page; a template error (which askama makes unlikely) is a logged 500.
pub fn html<T: Template>(t: &T) -> Response {
    match t.render() {
        Ok(body) => Html(body).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "a console template failed to render");
            (
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                "internal error; it has been logged",
            )
                .into_response()
        }
    }
}

/// A moment, shown in the viewer's local time by the script, with the UTC value on hover.
/// Rendered as a `<time>` element (or "—" when absent).
pub struct When(pub Option<OffsetDateTime>);

impl fmt::Display for When {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(t) = self.0 else {
            return f.write_str("<span class=\"muted\">—</span>");
        };
        let t = t.to_offset(time::UtcOffset::UTC);
        let iso = t.format(&Rfc3339).unwrap_or_default();
        let utc = format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        );
        write!(f, "<time datetime=\"{iso}\" title=\"{utc}\">{utc}</time>")
    }
}

/// A duration in words, for token lifetimes, ages and rotation periods.
pub fn span_words(seconds: i64) -> String {
    let (n, unit) = if seconds % 86_400 == 0 && seconds >= 86_400 {
        (seconds / 86_400, "day")
    } else if seconds % 3600 == 0 && seconds >= 3600 {
        (seconds / 3600, "hour")
    } else if seconds % 60 == 0 && seconds >= 60 {
        (seconds / 60, "minute")
    } else {
        (seconds, "second")
    };
    format!("{n} {unit}{}", if n == 1 { "" } else { "s" })
}

/// A rough age: "just now", "5 minutes", "3 days".
pub fn age_words(from: OffsetDateTime, now: OffsetDateTime) -> String {
    let s = (now - from).whole_seconds().max(0);
    if s < 60 {
        "just now".into()
    } else if s < 3600 {
        span_words(s / 60 * 60)
    } else if s < 86_400 {
        span_words(s / 3600 * 3600)
    } else {
        span_words(s / 86_400 * 86_400)
    }
}

pub struct Opt {
    pub id: String,
    pub name: String,
    pub selected: bool,
}

/// What every signed-in page shows around its content.
pub struct Layout {
    pub title: String,
    pub nav: &'static str,
    pub csrf: String,
    pub who: String,
    pub is_admin: bool,
    pub orgs: Vec<Opt>,
    /// Whether to offer the organization switcher (the admin key, or a member of several).
    pub show_orgs: bool,
    pub projects: Vec<Opt>,
    pub org_name: String,
    pub project_name: String,
    /// What the header's search box holds (the search page's query).
    pub query: String,
}

impl Layout {
    /// An id shortened, the whole on hover and behind a copy button (HTML).
    pub fn ident(&self, id: &str) -> String {
        super::present::Ident(id).to_string()
    }
}

#[derive(Template)]
#[template(path = "console/error.html")]
pub struct ErrorPage {
    pub status: u16,
    pub message: String,
    pub back: String,
}

#[derive(Template)]
#[template(path = "console/sign_in.html")]
pub struct SignInPage {
    pub csrf: String,
    pub error: Option<String>,
    pub notice: Option<String>,
    pub email: String,
    pub mode: &'static str,
    /// Back to the authorize page after signing in.
    pub next: Option<String>,
}

#[derive(Template)]
#[template(path = "console/welcome.html")]
pub struct WelcomePage {
    pub csrf: String,
    pub error: Option<String>,
}

/// A service and its scopes, for the scope pickers.
pub struct ServiceScopes {
    pub name: String,
    pub scopes: Vec<String>,
}

impl From<&Service> for ServiceScopes {
    fn from(s: &Service) -> Self {
        ServiceScopes {
            name: s.name.clone(),
            scopes: s.scopes.clone(),
        }
    }
}

pub struct ServiceView {
    pub name: String,
    pub description: String,
    pub scopes: Vec<String>,
    /// The default token, masked: its name and the start of its secret.
    pub default_token: Option<(String, String)>,
}

pub struct EventView {
    pub at: When,
    /// The actor, escaped, its ids shortened with copy buttons.
    pub actor_html: String,
    pub action: String,
    pub target: String,
    pub target_html: String,
    pub outcome: String,
    pub addr: String,
    /// The details in one line (empty for none), and as indented JSON.
    pub summary: String,
    pub details: String,
}

impl From<Event> for EventView {
    fn from(e: Event) -> Self {
        let target = e.target.unwrap_or_default();
        let details = if e.details == "null" {
            String::new()
        } else {
            e.details
        };
        EventView {
            at: When(Some(e.at)),
            actor_html: super::present::with_ids(&e.actor),
            action: e.action,
            target_html: super::present::with_ids(&target),
            target,
            outcome: e.outcome.as_str().to_string(),
            addr: e.client_addr.unwrap_or_default(),
            summary: super::present::details_summary(&details),
            details: super::present::details_pretty(&details),
        }
    }
}

#[derive(Template)]
#[template(path = "console/overview.html")]
pub struct OverviewPage {
    pub layout: Layout,
    pub services: Vec<ServiceView>,
    pub activity: Vec<EventView>,
    pub activity_note: Option<String>,
    pub can_register: bool,
    /// The usage chart (SVG, made by `chart::render`), its period links, and the top lists.
    pub range_links: String,
    pub chart: String,
    pub usage_seen: bool,
    pub usage_note: Option<String>,
    pub top_traffic: Vec<super::usage::TopRow>,
    pub top_refusals: Vec<super::usage::TopRow>,
}

pub struct RoleView {
    pub name: String,
    pub description: String,
}

pub struct KeyView {
    pub id: String,
    pub name: String,
    pub description: String,
    pub start: String,
    pub scopes: Vec<String>,
    pub roles: Vec<String>,
    pub owner: String,
    pub owner_id: String,
    pub created: When,
    pub last_used: When,
    pub expires: When,
    pub status: &'static str,
    pub active: bool,
    pub default_for: String,
    /// Its rate limits in words, one per entry, and as the edit form's text.
    pub limits: Vec<String>,
    pub limits_text: String,
}

impl KeyView {
    pub fn new(k: ApiKey, now: OffsetDateTime) -> Self {
        let status = if !k.is_active {
            "Revoked"
        } else if k.is_expired(now) {
            "Expired"
        } else {
            "Active"
        };
        KeyView {
            owner: match &k.owner_member_id {
                Some(m) => format!("member {m}"),
                None => "service token".into(),
            },
            owner_id: k.owner_member_id.clone().unwrap_or_default(),
            id: k.id,
            name: k.name,
            description: k.description,
            start: k.start,
            scopes: k.scopes,
            roles: k.roles,
            created: When(Some(k.created_at)),
            last_used: When(k.last_used_at),
            expires: When(k.expires_at),
            status,
            active: k.is_active,
            default_for: k.default_for_service.unwrap_or_default(),
            limits: k
                .rate_limits
                .iter()
                .map(|l| super::present::LimitText::from(l).to_string())
                .collect(),
            limits_text: super::present::limits_text(&k.rate_limits),
        }
    }
    pub fn has_scope(&self, s: &str) -> bool {
        self.scopes.iter().any(|x| x == s)
    }
    pub fn has_role(&self, r: &str) -> bool {
        self.roles.iter().any(|x| x == r)
    }
}

#[derive(Template)]
#[template(path = "console/keys.html")]
pub struct KeysPage {
    pub layout: Layout,
    pub keys: Vec<KeyView>,
    pub services: Vec<ServiceScopes>,
    pub roles: Vec<RoleView>,
    pub next: Option<String>,
    pub can_service_token: bool,
    /// The create dialog's expiry choices, the deployment's default selected.
    pub expiry_choices: Vec<ExpiryChoice>,
    /// The details panel of the key chosen by name.
    pub selected: Option<KeyDetails>,
}

impl KeysPage {
    pub fn is_selected(&self, id: &str) -> bool {
        self.selected.as_ref().is_some_and(|d| d.key.id == id)
    }
}

/// One key's details panel: its facts and its requests over the chosen period.
pub struct KeyDetails {
    pub key: KeyView,
    pub chart: String,
    pub range_links: String,
    pub seen: bool,
}

/// One `<option>` of the create dialog's expiry list.
pub struct ExpiryChoice {
    /// `never`, or a number of days.
    pub value: String,
    pub label: String,
    pub selected: bool,
}

/// The create dialog's expiry choices: never, a week, a month, a quarter and a year, and the
/// deployment's default wherever it falls, which is selected (`None`: never).
pub fn expiry_choices(default_days: Option<i64>) -> Vec<ExpiryChoice> {
    let mut days = vec![7, 30, 90, 365];
    if let Some(d) = default_days {
        if !days.contains(&d) {
            days.push(d);
            days.sort_unstable();
        }
    }
    let never = ExpiryChoice {
        value: "never".into(),
        label: "Never".into(),
        selected: default_days.is_none(),
    };
    std::iter::once(never)
        .chain(days.into_iter().map(|d| ExpiryChoice {
            value: d.to_string(),
            label: match d {
                1 => "Tomorrow".into(),
                365 => "In a year".into(),
                d => format!("In {d} days"),
            },
            selected: default_days == Some(d),
        }))
        .collect()
}

pub struct SecretView {
    pub id: String,
    pub start: String,
    pub age: String,
    pub expires: When,
    pub last_used: When,
    pub uses: i64,
}

/// One public key of a `private_key_jwt` client, as the panel lists it.
pub struct ClientKeyView {
    pub kid: String,
    pub kty: &'static str,
    pub alg: String,
    /// RFC 7638 thumbprint: the key's own name, whatever its `kid`.
    pub thumbprint: String,
}

/// One external identity a client trusts (workload identity federation).
pub struct FederatedView {
    pub issuer: String,
    /// `subject` (exact) or `subject_pattern`.
    pub kind: &'static str,
    pub subject: String,
    pub audience: String,
}

/// The RFC 7591 authentication methods the console offers, with words for each.
pub const AUTH_METHODS: [(&str, &str); 3] = [
    (
        "client_secret_basic",
        "Client secret, in HTTP Basic (client_secret_basic)",
    ),
    (
        "client_secret_post",
        "Client secret, in the form (client_secret_post)",
    ),
    (
        "private_key_jwt",
        "Signed assertion with a private key (private_key_jwt)",
    ),
];

pub struct ClientView {
    pub client_id: String,
    /// RFC 7591 `token_endpoint_auth_method`.
    pub auth_method: &'static str,
    pub uses_secret: bool,
    pub jwks_uri: Option<String>,
    pub keys: Vec<ClientKeyView>,
    /// The registered JWK set as pretty JSON, for editing (empty when none).
    pub jwks_json: String,
    pub federated: Vec<FederatedView>,
    /// RFC 9449 §5.2 `dpop_bound_access_tokens`.
    pub dpop_required: bool,
    pub name: String,
    pub description: String,
    pub scopes: Vec<String>,
    pub ttl: String,
    pub rotation_days: Option<i64>,
    pub rotation: String,
    pub format: &'static str,
    pub created: When,
    pub secrets: Vec<SecretView>,
    pub selected: bool,
    /// Its rate limits in words, one per entry, and as the edit form's text.
    pub limits: Vec<String>,
    pub limits_text: String,
}

impl ClientView {
    pub fn new(
        c: OAuthClient,
        secrets: Vec<ClientSecret>,
        now: OffsetDateTime,
        selected: bool,
    ) -> Self {
        let limits = c
            .rate_limits
            .iter()
            .map(|l| super::present::LimitText::from(l).to_string())
            .collect();
        let limits_text = super::present::limits_text(&c.rate_limits);
        ClientView {
            ttl: span_words(c.access_token_ttl_seconds),
            rotation: match c.secret_rotation_days {
                Some(d) => format!("every {}", span_words(d * 86_400)),
                None => "never".into(),
            },
            rotation_days: c.secret_rotation_days,
            format: c.token_format.as_str(),
            auth_method: c.auth_method.as_str(),
            uses_secret: c.auth_method.uses_secret(),
            keys: c
                .jwks
                .as_ref()
                .map(|set| {
                    set.keys()
                        .iter()
                        .map(|k| ClientKeyView {
                            kid: k.kid().unwrap_or("").to_string(),
                            kty: k.kty_name(),
                            alg: k.alg().map(|a| a.as_str().to_string()).unwrap_or_default(),
                            thumbprint: k.thumbprint(),
                        })
                        .collect()
                })
                .unwrap_or_default(),
            jwks_json: c
                .jwks
                .as_ref()
                .and_then(|j| serde_json::to_string_pretty(&j.to_json()).ok())
                .unwrap_or_default(),
            federated: c
                .federated_credentials
                .iter()
                .map(|f| FederatedView {
                    issuer: f.issuer.clone(),
                    kind: if f.subject.is_some() {
                        "subject"
                    } else {
                        "subject_pattern"
                    },
                    subject: f
                        .subject
                        .clone()
                        .or_else(|| f.subject_pattern.clone())
                        .unwrap_or_default(),
                    audience: f.audience.clone(),
                })
                .collect(),
            dpop_required: c.dpop_bound_access_tokens,
            jwks_uri: c.jwks_uri,
            client_id: c.client_id,
            name: c.name,
            description: c.description,
            scopes: c.scopes,
            created: When(Some(c.created_at)),
            secrets: secrets
                .into_iter()
                .map(|s| {
                    // A rotation policy bounds a secret's age even without an explicit expiry.
                    let by_policy = c
                        .secret_rotation_days
                        .map(|d| s.created_at + time::Duration::days(d));
                    let expires = match (s.expires_at, by_policy) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                    SecretView {
                        age: age_words(s.created_at, now),
                        id: s.id,
                        start: s.start,
                        expires: When(expires),
                        last_used: When(s.last_used_at),
                        uses: s.use_count,
                    }
                })
                .collect(),
            selected,
            limits,
            limits_text,
        }
    }
    pub fn has_scope(&self, s: &str) -> bool {
        self.scopes.iter().any(|x| x == s)
    }
    pub fn rotation_is(&self, d: &i64) -> bool {
        self.rotation_days == Some(*d)
    }
    /// Whether the management API may issue it a token (not when it requires DPoP).
    pub fn can_issue(&self) -> bool {
        !self.dpop_required
    }
}

#[derive(Template)]
#[template(path = "console/clients.html")]
pub struct ClientsPage {
    pub layout: Layout,
    pub methods: Vec<(&'static str, &'static str)>,
    /// No trusted issuers yet (the create dialog's).
    pub no_federated: Vec<FederatedView>,
    pub clients: Vec<ClientView>,
    pub services: Vec<ServiceScopes>,
    pub next: Option<String>,
    pub rotations: Vec<i64>,
    pub lifetimes: Vec<(i64, String)>,
    /// The selected client's requests: the chart, its period links, and whether it has any.
    pub chart: String,
    pub range_links: String,
    pub usage_seen: bool,
}

impl ClientsPage {
    pub fn selected(&self) -> Option<&ClientView> {
        self.clients.iter().find(|c| c.selected)
    }
}

pub struct MemberView {
    pub id: String,
    pub name: String,
    pub email: String,
    pub role: &'static str,
    pub created: When,
    pub is_self: bool,
}

#[derive(Template)]
#[template(path = "console/members.html")]
pub struct MembersPage {
    pub layout: Layout,
    pub members: Vec<MemberView>,
    pub can_manage: bool,
    pub note: Option<String>,
}

pub struct VerifyView {
    pub intact: bool,
    pub checked: u64,
    pub broken: String,
}

#[derive(Template)]
#[template(path = "console/activity.html")]
pub struct ActivityPage {
    pub layout: Layout,
    pub events: Vec<EventView>,
    pub next: Option<String>,
    pub action: String,
    pub actor: String,
    pub target: String,
    /// The date range as the fields show it (`datetime-local`, UTC); empty for none.
    pub since: String,
    pub until: String,
    pub filter_error: Option<String>,
    /// Now, for the quick ranges.
    pub now: OffsetDateTime,
    pub verify: Option<VerifyView>,
    pub note: Option<String>,
}

impl ActivityPage {
    fn pairs(&self) -> [(&'static str, &String); 5] {
        [
            ("action", &self.action),
            ("actor", &self.actor),
            ("target", &self.target),
            ("since", &self.since),
            ("until", &self.until),
        ]
    }

    pub fn filtered(&self) -> bool {
        self.pairs().iter().any(|(_, v)| !v.is_empty())
    }

    /// The query string for the next page, keeping the filters.
    pub fn next_query(&self) -> String {
        let mut q = form_urlencoded::Serializer::new(String::new());
        for (k, v) in self.pairs() {
            if !v.is_empty() {
                q.append_pair(k, v);
            }
        }
        if let Some(c) = &self.next {
            q.append_pair("cursor", c);
        }
        q.finish()
    }

    /// Links for the last hour, day and week, keeping the other filters.
    pub fn quick_ranges(&self) -> Vec<(&'static str, String)> {
        [
            ("Last hour", time::Duration::hours(1)),
            ("Last 24 hours", time::Duration::days(1)),
            ("Last 7 days", time::Duration::days(7)),
        ]
        .into_iter()
        .map(|(label, back)| {
            let mut q = form_urlencoded::Serializer::new(String::new());
            for (k, v) in self.pairs().into_iter().take(3) {
                if !v.is_empty() {
                    q.append_pair(k, v);
                }
            }
            q.append_pair("since", &super::present::when_input(self.now - back));
            (label, q.finish())
        })
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_read_as_words() {
        assert_eq!(span_words(3600), "1 hour");
        assert_eq!(span_words(900), "15 minutes");
        assert_eq!(span_words(86_400 * 90), "90 days");
        assert_eq!(span_words(61), "61 seconds");
    }

    #[test]
    fn times_render_as_time_elements() {
        let t = OffsetDateTime::from_unix_timestamp(0).unwrap();
        let s = When(Some(t)).to_string();
        assert!(s.contains("datetime=\"1970-01-01T00:00:00Z\""));
        assert!(s.contains("title=\"1970-01-01 00:00:00 UTC\""));
        assert!(When(None).to_string().contains('—'));
    }
}

#[derive(Template)]
#[template(path = "console/apps.html")]
pub struct AppsPage {
    pub layout: Layout,
    pub grants: Vec<GrantRow>,
    /// A manager's view of the organization (else the member's own).
    pub org_wide: bool,
}

/// One connected app (a person's grant) in the table.
pub struct GrantRow {
    pub id: String,
    pub client_id: String,
    pub app_name: String,
    pub person: String,
    pub resource: String,
    pub scopes: Vec<String>,
    pub created: When,
    pub last_used: When,
    pub active: bool,
    pub reason: Option<String>,
}

/// A key the search found.
pub struct SearchKey {
    pub key: KeyView,
    pub project: String,
    pub href: String,
}

/// A client the search found.
pub struct SearchClient {
    pub name: String,
    pub client_id: String,
    pub project: String,
    pub ttl: String,
    pub href: String,
}

#[derive(Template)]
#[template(path = "console/search.html")]
pub struct SearchPage {
    pub layout: Layout,
    pub query: String,
    pub keys: Vec<SearchKey>,
    pub clients: Vec<SearchClient>,
    pub members: Vec<MemberView>,
}

impl SearchPage {
    pub fn found(&self) -> usize {
        self.keys.len() + self.clients.len() + self.members.len()
    }
}
