//! The console's pages (GET). Each makes the same use-case calls as the management API's
//! listing routes, with the session's principal, and renders what they answer.

use super::views::*;
use super::{cookie, set_cookie, Fail, Session, PRE_COOKIE};
use crate::AppState;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Redirect, Response};
use keyplane_core::domain::console::SignedIn;
use keyplane_core::domain::perm::Permission;
use keyplane_core::domain::secret::random_base62;
use keyplane_core::store::EventFilter;
use keyplane_core::Error;
use serde::Deserialize;

/// The organization and project a session works in: its choice, else its own organization
/// (the default one for the admin key) and that organization's default project.
pub(crate) async fn scope(s: &AppState, signed: &SignedIn) -> Result<(String, String), Error> {
    let p = &signed.principal;
    let org = match &signed.session.org_id {
        Some(o) if p.org_for(Some(o)).is_ok() => o.clone(),
        _ => p.org_for(None)?,
    };
    let projects = s.app.project_list(p, Some(&org)).await?;
    let project = signed
        .session
        .project_id
        .as_ref()
        .filter(|id| projects.iter().any(|pr| &pr.id == *id))
        .cloned()
        .or_else(|| {
            projects
                .iter()
                .find(|pr| pr.name == "default")
                .or(projects.first())
                .map(|pr| pr.id.clone())
        })
        .ok_or(Error::NotFound("project"))?;
    Ok((org, project))
}

async fn layout(
    s: &AppState,
    sess: &Session,
    title: &str,
    nav: &'static str,
) -> Result<(Layout, String, String), Fail> {
    let fail = |e: Error| Fail::new(false, "/console/overview", e.into());
    let p = &sess.signed.principal;
    let (org, project) = scope(s, &sess.signed).await.map_err(fail)?;
    let orgs = s.app.console_orgs(&sess.signed).await.map_err(fail)?;
    let projects = s.app.project_list(p, Some(&org)).await.map_err(fail)?;
    let who = match &sess.signed.member {
        Some(m) => format!("{} ({})", m.name, m.role.as_str()),
        None => "Admin key".into(),
    };
    let org_name = orgs
        .iter()
        .find(|o| o.id == org)
        .map(|o| o.name.clone())
        .unwrap_or_default();
    let project_name = projects
        .iter()
        .find(|pr| pr.id == project)
        .map(|pr| pr.name.clone())
        .unwrap_or_default();
    Ok((
        Layout {
            title: title.to_string(),
            nav,
            csrf: sess.csrf.clone(),
            who,
            is_admin: p.is_admin_key(),
            show_orgs: p.is_admin_key() || orgs.len() > 1,
            orgs: orgs
                .into_iter()
                .map(|o| Opt {
                    selected: o.id == org,
                    id: o.id,
                    name: o.name,
                })
                .collect(),
            projects: projects
                .into_iter()
                .map(|pr| Opt {
                    selected: pr.id == project,
                    id: pr.id,
                    name: pr.name,
                })
                .collect(),
            org_name,
            project_name,
            query: String::new(),
        },
        org,
        project,
    ))
}

pub async fn root(State(s): State<AppState>, headers: HeaderMap) -> Response {
    let id = cookie(&headers, super::SESSION_COOKIE).unwrap_or("");
    match s.app.console_session(id).await {
        Ok(Some(_)) => Redirect::to("/console/overview").into_response(),
        _ => Redirect::to("/console/sign-in").into_response(),
    }
}

/// A pre-session CSRF token: the forms before sign-in are bound to a random cookie.
pub(crate) fn pre_session(s: &AppState, headers: &HeaderMap) -> (String, Option<String>) {
    match cookie(headers, PRE_COOKIE).filter(|v| v.len() == 32) {
        Some(v) => (s.app.console_csrf_token(v), None),
        None => {
            let v = random_base62(32);
            (
                s.app.console_csrf_token(&v),
                Some(set_cookie(headers, PRE_COOKIE, &v, 3600)),
            )
        }
    }
}

pub(crate) fn sign_in_page(
    s: &AppState,
    headers: &HeaderMap,
    error: Option<String>,
    notice: Option<String>,
    email: String,
    mode: &'static str,
    next: Option<String>,
) -> Response {
    let (csrf, set) = pre_session(s, headers);
    let mut resp = html(&SignInPage {
        csrf,
        error,
        notice,
        email,
        mode,
        next,
    });
    if let Some(c) = set.and_then(|c| c.parse().ok()) {
        resp.headers_mut().append(header::SET_COOKIE, c);
    }
    resp
}

#[derive(Deserialize)]
pub struct SignInQuery {
    #[serde(default)]
    pub done: Option<String>,
    /// Where to go once signed in: only the authorize page (an app asking for access).
    #[serde(default)]
    pub next: Option<String>,
}

pub async fn sign_in(
    State(s): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<SignInQuery>,
) -> Response {
    let notice = match q.done.as_deref() {
        Some("password") => Some("Your password is set. Sign in with your email and it.".into()),
        Some("out") => Some("You have signed out.".into()),
        _ => None,
    };
    let next = q
        .next
        .as_deref()
        .and_then(super::authorize::safe_next)
        .map(str::to_string);
    let (notice, mode) = match &next {
        Some(_) => (
            Some(
                "An application asks for access on your behalf: sign in as a member to review it."
                    .into(),
            ),
            "member",
        ),
        None => (notice, "admin"),
    };
    sign_in_page(&s, &headers, None, notice, String::new(), mode, next)
}

pub async fn welcome(State(s): State<AppState>, headers: HeaderMap) -> Response {
    let (csrf, set) = pre_session(&s, &headers);
    let mut resp = html(&WelcomePage { csrf, error: None });
    if let Some(c) = set.and_then(|c| c.parse().ok()) {
        resp.headers_mut().append(header::SET_COOKIE, c);
    }
    resp
}

#[derive(Deserialize)]
pub struct RangeQuery {
    #[serde(default)]
    pub range: Option<String>,
}

pub async fn overview(
    State(s): State<AppState>,
    sess: Session,
    Query(q): Query<RangeQuery>,
) -> Result<Response, Fail> {
    let (layout, org, project) = layout(&s, &sess, "Overview", "overview").await?;
    let range = super::chart::Range::parse(q.range.as_deref());
    let p = &sess.signed.principal;
    let fail = |e: Error| Fail::new(false, "/console/overview", e.into());
    let services = s.app.service_list(p).await.map_err(fail)?;
    let keys = s
        .app
        .api_key_list(p, Some(&org), Some(&project), false, None, Some(200))
        .await
        .map_err(fail)?
        .items;
    let services = services
        .iter()
        .map(|svc| ServiceView {
            name: svc.name.clone(),
            description: svc.description.clone(),
            scopes: svc.scopes.clone(),
            default_token: keys
                .iter()
                .find(|k| k.default_for_service.as_deref() == Some(svc.name.as_str()))
                .map(|k| (k.name.clone(), format!("{}••••••••", k.start))),
        })
        .collect();
    let (activity, activity_note) = match s
        .app
        .activity_query(p, Some(&org), EventFilter::default(), None, Some(10))
        .await
    {
        Ok(page) => (page.items.into_iter().map(EventView::from).collect(), None),
        Err(Error::Forbidden(_)) => (
            vec![],
            Some("Your role does not include reading the activity log.".to_string()),
        ),
        Err(e) => return Err(fail(e)),
    };
    let subject = super::usage::Subject::Project {
        org: &org,
        project: &project,
    };
    let (chart, usage_seen, top_traffic, top_refusals, usage_note) =
        match super::usage::series(&s, p, subject, range).await {
            Ok(series) => {
                let (traffic, refusals) = super::usage::top(&s, p, &org, &project, range)
                    .await
                    .map_err(fail)?;
                (
                    super::chart::render(&series, "overview", "Requests"),
                    series.total() > 0,
                    traffic,
                    refusals,
                    None,
                )
            }
            Err(Error::Forbidden(_)) => (
                String::new(),
                false,
                vec![],
                vec![],
                Some("Your role does not include the project's usage; your own keys' charts are on their pages.".to_string()),
            ),
            Err(e) => return Err(fail(e)),
        };
    Ok(html(&OverviewPage {
        layout,
        services,
        activity,
        activity_note,
        can_register: p.is_admin_key(),
        range_links: super::chart::range_links("/console/overview?", range),
        chart,
        usage_seen,
        usage_note,
        top_traffic,
        top_refusals,
    }))
}

#[derive(Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    pub cursor: Option<String>,
    #[serde(default)]
    pub selected: Option<String>,
    #[serde(default)]
    pub range: Option<String>,
}

pub async fn keys(
    State(s): State<AppState>,
    sess: Session,
    Query(q): Query<ListQuery>,
) -> Result<Response, Fail> {
    let (layout, org, project) = layout(&s, &sess, "API keys", "keys").await?;
    let p = &sess.signed.principal;
    let fail = |e: Error| Fail::new(false, "/console/keys", e.into());
    let page = s
        .app
        .api_key_list(
            p,
            Some(&org),
            Some(&project),
            true,
            q.cursor.as_deref(),
            Some(50),
        )
        .await
        .map_err(fail)?;
    let now = s.app.now();
    let services = s.app.service_list(p).await.map_err(fail)?;
    let roles = s.app.role_list(p, Some(&org)).await.map_err(fail)?;
    // Owners by email where the caller may see them (a member sees themself only).
    let emails: std::collections::HashMap<String, String> = s
        .app
        .member_list(p, Some(&org))
        .await
        .map_err(fail)?
        .into_iter()
        .map(|m| (m.id, m.email))
        .collect();
    // The details panel: the key by id through the use case (so one found by the search in
    // another project opens too), with its requests over the chosen period.
    let selected = match q.selected.as_deref() {
        None => None,
        Some(id) => {
            let key = s.app.api_key_get(p, id).await.map_err(fail)?;
            let range = super::chart::Range::parse(q.range.as_deref());
            let series =
                super::usage::series(&s, p, super::usage::Subject::Credential(&key.id), range)
                    .await
                    .map_err(fail)?;
            let mut view = KeyView::new(key, now);
            if let Some(email) = emails.get(&view.owner_id) {
                view.owner = email.clone();
            }
            Some(KeyDetails {
                chart: super::chart::render(&series, "key", "Requests with this key"),
                range_links: super::chart::range_links(
                    &format!("/console/keys?selected={}&", view.id),
                    range,
                ),
                seen: series.total() > 0,
                key: view,
            })
        }
    };
    // Offer only the roles this user could grant (the use case refuses the others anyway).
    let perms = p.permissions;
    Ok(html(&KeysPage {
        selected,
        layout,
        keys: page
            .items
            .into_iter()
            .map(|k| {
                let mut v = KeyView::new(k, now);
                if let Some(email) = emails.get(&v.owner_id) {
                    v.owner = email.clone();
                }
                v
            })
            .collect(),
        services: services.iter().map(ServiceScopes::from).collect(),
        roles: roles
            .into_iter()
            .filter(|r| perms.contains(r.perm_set()))
            .map(|r| RoleView {
                name: r.name,
                description: r.description,
            })
            .collect(),
        next: page.next_cursor,
        can_service_token: sess.signed.member.is_some() && perms.has(Permission::KeysManage),
        expiry_choices: super::views::expiry_choices(s.app.settings().api_key_default_ttl_days),
    }))
}

pub async fn clients(
    State(s): State<AppState>,
    sess: Session,
    Query(q): Query<ListQuery>,
) -> Result<Response, Fail> {
    let (layout, org, project) = layout(&s, &sess, "Service clients", "clients").await?;
    let p = &sess.signed.principal;
    let fail = |e: Error| Fail::new(false, "/console/clients", e.into());
    let page = s
        .app
        .client_list(p, Some(&org), Some(&project), q.cursor.as_deref(), Some(50))
        .await
        .map_err(fail)?;
    let now = s.app.now();
    let services = s.app.service_list(p).await.map_err(fail)?;
    let mut clients: Vec<ClientView> = page
        .items
        .into_iter()
        .map(|(c, secrets)| {
            let selected = q.selected.as_deref() == Some(c.client_id.as_str());
            ClientView::new(c, secrets, now, selected)
        })
        .collect();
    // A client chosen by id that is not on this page (another project, found by the search):
    // read through the use case, which answers only what the session may see.
    if let Some(id) = q.selected.as_deref() {
        if !clients.iter().any(|c| c.selected) {
            let (c, secrets) = s.app.client_get(p, id).await.map_err(fail)?;
            clients.push(ClientView::new(c, secrets, now, true));
        }
    }
    let (mut chart, mut range_links, mut usage_seen) = (String::new(), String::new(), false);
    if let Some(c) = clients.iter().find(|c| c.selected) {
        let range = super::chart::Range::parse(q.range.as_deref());
        let series = super::usage::series(
            &s,
            p,
            super::usage::Subject::Credential(&c.client_id),
            range,
        )
        .await
        .map_err(fail)?;
        chart = super::chart::render(&series, "client", "Requests with this client's tokens");
        range_links = super::chart::range_links(
            &format!(
                "/console/clients?selected={}&",
                form_urlencoded::byte_serialize(c.client_id.as_bytes()).collect::<String>()
            ),
            range,
        );
        usage_seen = series.total() > 0;
    }
    Ok(html(&ClientsPage {
        chart,
        range_links,
        usage_seen,
        layout,
        methods: AUTH_METHODS.to_vec(),
        no_federated: Vec::new(),
        clients,
        services: services.iter().map(ServiceScopes::from).collect(),
        next: page.next_cursor,
        rotations: vec![30, 90, 180, 365],
        lifetimes: [300, 900, 3600, 21_600, 86_400]
            .into_iter()
            .map(|t| (t, span_words(t)))
            .collect(),
    }))
}

pub async fn members(State(s): State<AppState>, sess: Session) -> Result<Response, Fail> {
    let (layout, org, _) = layout(&s, &sess, "Members", "members").await?;
    let p = &sess.signed.principal;
    let fail = |e: Error| Fail::new(false, "/console/members", e.into());
    let members = s.app.member_list(p, Some(&org)).await.map_err(fail)?;
    let can_manage = p.permissions.has(Permission::MembersManage);
    Ok(html(&MembersPage {
        layout,
        members: members
            .into_iter()
            .map(|m| MemberView {
                is_self: p.member_id() == Some(m.id.as_str()),
                id: m.id,
                name: m.name,
                email: m.email,
                role: m.role.as_str(),
                created: When(Some(m.created_at)),
            })
            .collect(),
        can_manage,
        note: (!can_manage).then(|| {
            "Your role shows you only yourself here; an owner or admin manages members.".into()
        }),
    }))
}

/// Connected apps: the grants the signed-in member gave, or, for a manager, the organization's.
pub async fn apps(State(s): State<AppState>, sess: Session) -> Result<Response, Fail> {
    let (layout, org, _) = layout(&s, &sess, "Connected apps", "apps").await?;
    let p = &sess.signed.principal;
    let fail = |e: Error| Fail::new(false, "/console/apps", e.into());
    let grants = s.app.grants_list(p, Some(&org), None).await.map_err(fail)?;
    let org_wide = p.permissions.has(Permission::ClientsManage) || p.is_admin_key();
    let members = if org_wide {
        s.app
            .member_list(p, Some(&org))
            .await
            .map_err(fail)?
            .into_iter()
            .map(|m| (m.id, m.email))
            .collect::<std::collections::HashMap<_, _>>()
    } else {
        Default::default()
    };
    let mut rows = Vec::with_capacity(grants.len());
    for g in grants {
        let app_name = s
            .app
            .app_name(&g.client_id)
            .await
            .unwrap_or_else(|| g.client_id.clone());
        rows.push(super::views::GrantRow {
            person: members
                .get(&g.member_id)
                .cloned()
                .unwrap_or_else(|| g.member_id.clone()),
            active: g.revoked_at.is_none(),
            reason: g.revoked_reason.clone(),
            id: g.id,
            client_id: g.client_id,
            app_name,
            resource: g.resource,
            scopes: g.scopes,
            created: When(Some(g.created_at)),
            last_used: When(g.last_used_at),
        });
    }
    Ok(html(&super::views::AppsPage {
        layout,
        grants: rows,
        org_wide,
    }))
}

#[derive(Deserialize)]
pub struct ActivityQuery {
    #[serde(default)]
    pub action: Option<String>,
    #[serde(default)]
    pub actor: Option<String>,
    #[serde(default)]
    pub target: Option<String>,
    #[serde(default)]
    pub since: Option<String>,
    #[serde(default)]
    pub until: Option<String>,
    #[serde(default)]
    pub cursor: Option<String>,
}

pub async fn activity(
    State(s): State<AppState>,
    sess: Session,
    Query(q): Query<ActivityQuery>,
) -> Result<Response, Fail> {
    let (layout, org, _) = layout(&s, &sess, "Activity log", "activity").await?;
    let p = &sess.signed.principal;
    let clean = |v: Option<String>| v.map(|x| x.trim().to_string()).unwrap_or_default();
    let (action, actor, target) = (clean(q.action), clean(q.actor), clean(q.target));
    let some = |v: &String| (!v.is_empty()).then(|| v.clone());
    // The date range: read as UTC; one that does not read is said so, not silently dropped.
    let (since_text, until_text) = (clean(q.since), clean(q.until));
    let mut filter_error = None;
    let mut when = |text: &String, what: &str| -> Option<time::OffsetDateTime> {
        if text.is_empty() {
            return None;
        }
        let t = super::present::parse_when(text);
        if t.is_none() {
            filter_error = Some(format!(
                "“{text}” is not a date and time; {what} is left out. Use the date picker or YYYY-MM-DDTHH:MM."
            ));
        }
        t
    };
    let (since, until) = (when(&since_text, "since"), when(&until_text, "until"));
    let filter = EventFilter {
        org_id: None,
        action: some(&action),
        actor: some(&actor),
        target: some(&target),
        since,
        until,
    };
    let mut page = ActivityPage {
        layout,
        events: vec![],
        next: None,
        action,
        actor,
        target,
        since: since.map(super::present::when_input).unwrap_or(since_text),
        until: until.map(super::present::when_input).unwrap_or(until_text),
        filter_error,
        now: s.app.now(),
        verify: None,
        note: None,
    };
    match s
        .app
        .activity_query(p, Some(&org), filter, q.cursor.as_deref(), Some(50))
        .await
    {
        Ok(events) => {
            page.events = events.items.into_iter().map(EventView::from).collect();
            page.next = events.next_cursor;
        }
        Err(Error::Forbidden(_)) => {
            page.note = Some(
                "Your role does not include reading the activity log; ask an owner or admin."
                    .into(),
            );
            return Ok(html(&page));
        }
        Err(e) => return Err(Fail::new(false, "/console/activity", e.into())),
    }
    if let Ok(report) = s.app.activity_verify(p, false).await {
        page.verify = Some(VerifyView {
            intact: report.intact,
            checked: report.checked,
            broken: report
                .first_broken
                .map(|b| format!("event #{} ({}): {}", b.seq, b.id, b.reason))
                .unwrap_or_default(),
        });
    }
    Ok(html(&page))
}

#[derive(Deserialize)]
pub struct SearchQuery {
    #[serde(default)]
    pub q: Option<String>,
}

/// How many of each kind the search reads at most (pages of the list use cases).
const SEARCH_SCAN: usize = 1000;

/// The header's search: keys, clients and members of the session's organization whose name,
/// prefix, id or email holds the query. It reads through the same list use cases as the pages,
/// with the session's principal, so it finds exactly what the signed-in person may see: a
/// member's own keys and clients and themself, never another organization's.
pub async fn search(
    State(s): State<AppState>,
    sess: Session,
    Query(q): Query<SearchQuery>,
) -> Result<Response, Fail> {
    let (mut layout, org, _) = layout(&s, &sess, "Search", "search").await?;
    let p = &sess.signed.principal;
    let fail = |e: Error| Fail::new(false, "/console/overview", e.into());
    let query: String = q.q.unwrap_or_default().trim().chars().take(128).collect();
    layout.query = query.clone();
    let needle = query.to_lowercase();
    let hit = |fields: &[&str]| fields.iter().any(|f| f.to_lowercase().contains(&needle));
    let mut page = SearchPage {
        layout,
        query: query.clone(),
        keys: vec![],
        clients: vec![],
        members: vec![],
    };
    if needle.is_empty() {
        return Ok(html(&page));
    }
    let projects: std::collections::HashMap<String, String> = s
        .app
        .project_list(p, Some(&org))
        .await
        .map_err(fail)?
        .into_iter()
        .map(|pr| (pr.id, pr.name))
        .collect();
    let project_name = |id: &str| projects.get(id).cloned().unwrap_or_else(|| id.into());
    let now = s.app.now();
    // Keys: a role without key management sees none (answered like an empty list).
    let mut cursor: Option<String> = None;
    let mut seen = 0;
    loop {
        let chunk = match s
            .app
            .api_key_list(p, Some(&org), None, true, cursor.as_deref(), Some(200))
            .await
        {
            Ok(c) => c,
            Err(Error::Forbidden(_)) => break,
            Err(e) => return Err(fail(e)),
        };
        seen += chunk.items.len();
        for k in chunk.items {
            if hit(&[&k.name, &k.id, &k.start, &k.description]) {
                let project = project_name(&k.project_id);
                let v = KeyView::new(k, now);
                page.keys.push(SearchKey {
                    project,
                    href: format!("/console/keys?selected={}", v.id),
                    key: v,
                });
            }
        }
        match chunk.next_cursor {
            Some(c) if seen < SEARCH_SCAN => cursor = Some(c),
            _ => break,
        }
    }
    let mut cursor: Option<String> = None;
    let mut seen = 0;
    loop {
        let chunk = match s
            .app
            .client_list(p, Some(&org), None, cursor.as_deref(), Some(200))
            .await
        {
            Ok(c) => c,
            Err(Error::Forbidden(_)) => break,
            Err(e) => return Err(fail(e)),
        };
        seen += chunk.items.len();
        for (c, _) in chunk.items {
            if hit(&[&c.name, &c.client_id, &c.description]) {
                page.clients.push(SearchClient {
                    href: format!("/console/clients?selected={}", c.client_id),
                    project: project_name(&c.project_id),
                    ttl: span_words(c.access_token_ttl_seconds),
                    name: c.name,
                    client_id: c.client_id,
                });
            }
        }
        match chunk.next_cursor {
            Some(c) if seen < SEARCH_SCAN => cursor = Some(c),
            _ => break,
        }
    }
    for m in s.app.member_list(p, Some(&org)).await.map_err(fail)? {
        if hit(&[&m.name, &m.email, &m.id]) {
            page.members.push(MemberView {
                is_self: p.member_id() == Some(m.id.as_str()),
                id: m.id,
                name: m.name,
                email: m.email,
                role: m.role.as_str(),
                created: When(Some(m.created_at)),
            });
        }
    }
    Ok(html(&page))
}
