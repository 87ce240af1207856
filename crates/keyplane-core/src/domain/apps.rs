//! Clients nobody registered through the management API: those that registered themselves
//! (RFC 7591 dynamic client registration) and those identified by the URL of their client ID
//! metadata document (CIMD). Both ask people for access (the authorization-code grant); an
//! operator can block one. Pure: the metadata's rules.

use crate::domain::authcode::{check_redirect_uri, MAX_CLIENT_ID_LEN, MAX_REDIRECT_URIS};
use crate::domain::secret::Digest;
use async_trait::async_trait;
use serde_json::Value;
use time::{Duration, OffsetDateTime};

/// How long a fetched client ID metadata document is used before it is fetched again (at the
/// next authorization request; the token endpoint uses what was stored).
pub const METADATA_MAX_AGE: Duration = Duration::hours(1);

/// Fetches a client ID metadata document. The implementation must not follow redirects, must
/// give up after a short timeout, must stop reading past [`MAX_METADATA_BYTES`], and must not
/// connect to private or internal addresses (the URL is the requester's choice).
#[async_trait]
pub trait MetadataFetcher: Send + Sync {
    /// The document's bytes, or why it could not be had.
    async fn fetch(&self, url: &str) -> Result<Vec<u8>, String>;
}

/// Whether `client_id` is a client ID metadata document URL keyplane will fetch: `https://`
/// with a host and a path (not just `/`), no fragment, no user information, no `.`/`..`
/// segments (draft-ietf-oauth-client-id-metadata-document §3); `http://` on a loopback host
/// only when `allow_loopback_http` (tests and development).
pub fn check_client_id_url(url: &str, allow_loopback_http: bool) -> Result<(), String> {
    if url.len() > MAX_CLIENT_ID_LEN || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("the client id is not a usable URL".into());
    }
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| "the client id is not a URL".to_string())?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    if authority.is_empty() || authority.contains('@') {
        return Err("the client id URL must name a host, without user information".into());
    }
    if url.contains('#') {
        return Err("the client id URL has no fragment".into());
    }
    let path = tail.split('?').next().unwrap_or("");
    if path.len() <= 1 {
        return Err(
            "the client id URL must have a path (e.g. https://app.example/client.json)".into(),
        );
    }
    if path.split('/').any(|seg| seg == "." || seg == "..") {
        return Err("the client id URL has no `.` or `..` segments".into());
    }
    let host = if authority.starts_with('[') {
        authority
            .split(']')
            .next()
            .unwrap_or("")
            .trim_start_matches('[')
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, _)| h)
    };
    let loopback = host == "127.0.0.1" || host == "::1" || host.eq_ignore_ascii_case("localhost");
    match scheme {
        "https" => Ok(()),
        "http" if allow_loopback_http && loopback => Ok(()),
        _ => Err("a client id URL must be https://".into()),
    }
}

/// Checks a fetched client ID metadata document against the URL it came from: its
/// `client_id` must be that URL exactly, it holds no secret, and its metadata passes
/// [`check_metadata`] for a public client.
pub fn check_document(url: &str, body: &[u8]) -> Result<(AppMetadata, Value), MetadataError> {
    if body.len() > MAX_METADATA_BYTES {
        return Err(meta_err(format!(
            "the client metadata document is larger than {MAX_METADATA_BYTES} bytes"
        )));
    }
    let doc: Value = serde_json::from_slice(body)
        .map_err(|_| meta_err("the client metadata document is not JSON"))?;
    if doc.get("client_id").and_then(Value::as_str) != Some(url) {
        return Err(meta_err(
            "the document's `client_id` is not the URL it was fetched from",
        ));
    }
    for field in ["client_secret", "client_secret_expires_at"] {
        if doc.get(field).is_some() {
            return Err(meta_err(format!(
                "a client metadata document must not hold `{field}`"
            )));
        }
    }
    let m = check_metadata(&doc, AppKind::Metadata)?;
    Ok((m, doc))
}

/// The largest client metadata accepted (a registration request or a fetched document).
pub const MAX_METADATA_BYTES: usize = 5 * 1024;
const MAX_NAME_LEN: usize = 100;
const MAX_URI_LEN: usize = 512;

/// How an app came to be known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppKind {
    /// RFC 7591 dynamic registration at `/v1/oauth/register`.
    Registered,
    /// A client ID metadata document: the `client_id` is its HTTPS URL.
    Metadata,
}

impl AppKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AppKind::Registered => "registered",
            AppKind::Metadata => "metadata",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "registered" => Some(AppKind::Registered),
            "metadata" => Some(AppKind::Metadata),
            _ => None,
        }
    }
}

/// How an app authenticates at the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppAuth {
    /// A public client (RFC 7591 `none`): PKCE is its only proof.
    None,
    /// A registered client's secret, in HTTP Basic or in the form.
    ClientSecretBasic,
    ClientSecretPost,
}

impl AppAuth {
    pub fn as_str(self) -> &'static str {
        match self {
            AppAuth::None => "none",
            AppAuth::ClientSecretBasic => "client_secret_basic",
            AppAuth::ClientSecretPost => "client_secret_post",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "none" => Some(AppAuth::None),
            "client_secret_basic" => Some(AppAuth::ClientSecretBasic),
            "client_secret_post" => Some(AppAuth::ClientSecretPost),
            _ => None,
        }
    }
    pub fn uses_secret(self) -> bool {
        !matches!(self, AppAuth::None)
    }
}

/// An app as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppClient {
    pub client_id: String,
    pub kind: AppKind,
    pub name: String,
    pub logo_uri: Option<String>,
    pub client_uri: Option<String>,
    pub redirect_uris: Vec<String>,
    pub auth_method: AppAuth,
    /// The digest of a registered confidential client's secret.
    pub secret_digest: Option<Digest>,
    /// The metadata as registered or fetched.
    pub document: Value,
    pub created_at: OffsetDateTime,
    /// For a metadata document: when it was last fetched.
    pub fetched_at: Option<OffsetDateTime>,
    pub blocked_at: Option<OffsetDateTime>,
    pub blocked_by: Option<String>,
}

/// Client metadata (RFC 7591 §2) as keyplane takes it, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppMetadata {
    pub name: String,
    pub logo_uri: Option<String>,
    pub client_uri: Option<String>,
    pub redirect_uris: Vec<String>,
    pub auth_method: AppAuth,
}

/// Why metadata was refused: RFC 7591 §3.2.2's error code and a description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataError {
    /// `invalid_redirect_uri` or `invalid_client_metadata`.
    pub code: &'static str,
    pub description: String,
}

fn meta_err(description: impl Into<String>) -> MetadataError {
    MetadataError {
        code: "invalid_client_metadata",
        description: description.into(),
    }
}

/// Checks client metadata. `kind` decides what is allowed: a metadata document's app is
/// public (`none`; RFC 7591's secret methods make no sense for a document anyone can read),
/// a registered one may also be confidential. Unknown fields are kept in the document and
/// otherwise ignored (RFC 7591 §2).
pub fn check_metadata(doc: &Value, kind: AppKind) -> Result<AppMetadata, MetadataError> {
    let obj = doc
        .as_object()
        .ok_or_else(|| meta_err("client metadata is a JSON object"))?;
    let text = |field: &str| -> Result<Option<String>, MetadataError> {
        match obj.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(meta_err(format!("`{field}` must be a string"))),
        }
    };
    let redirect_uris = match obj.get("redirect_uris") {
        Some(Value::Array(list)) if !list.is_empty() => list
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<Vec<String>>>()
            .ok_or_else(|| meta_err("`redirect_uris` must be a list of strings"))?,
        _ => {
            return Err(MetadataError {
                code: "invalid_redirect_uri",
                description: "`redirect_uris` must list at least one redirect URI".into(),
            })
        }
    };
    if redirect_uris.len() > MAX_REDIRECT_URIS {
        return Err(MetadataError {
            code: "invalid_redirect_uri",
            description: format!("at most {MAX_REDIRECT_URIS} redirect URIs"),
        });
    }
    for uri in &redirect_uris {
        check_redirect_uri(uri).map_err(|e| MetadataError {
            code: "invalid_redirect_uri",
            description: e,
        })?;
    }
    let auth_method = match text("token_endpoint_auth_method")? {
        // RFC 7591 §2's default is `client_secret_basic`; a document cannot hold a secret,
        // so its default is `none`.
        None => match kind {
            AppKind::Registered => AppAuth::ClientSecretBasic,
            AppKind::Metadata => AppAuth::None,
        },
        Some(m) => AppAuth::parse(&m).ok_or_else(|| {
            meta_err(format!(
                "`token_endpoint_auth_method` `{}` is not supported: use `none`{}",
                m.chars().take(40).collect::<String>(),
                if kind == AppKind::Registered {
                    ", `client_secret_basic` or `client_secret_post`"
                } else {
                    " (a client ID metadata document's client is public)"
                }
            ))
        })?,
    };
    if kind == AppKind::Metadata && auth_method.uses_secret() {
        return Err(meta_err(
            "a client ID metadata document's client cannot use a client secret: use `none`",
        ));
    }
    if let Some(v) = obj.get("grant_types") {
        let list = v
            .as_array()
            .ok_or_else(|| meta_err("`grant_types` must be a list"))?;
        for g in list {
            match g.as_str() {
                Some("authorization_code") | Some("refresh_token") => {}
                other => {
                    return Err(meta_err(format!(
                        "grant type {} is not available to this client: only `authorization_code` and `refresh_token`",
                        other.map_or("(not a string)".into(), |s| format!("`{}`", s.chars().take(60).collect::<String>()))
                    )))
                }
            }
        }
    }
    if let Some(v) = obj.get("response_types") {
        let ok = v
            .as_array()
            .is_some_and(|l| l.iter().all(|r| r.as_str() == Some("code")));
        if !ok {
            return Err(meta_err("`response_types` may only be [\"code\"]"));
        }
    }
    let name = text("client_name")?.unwrap_or_default();
    let name = name.trim().to_string();
    if name.chars().count() > MAX_NAME_LEN || name.chars().any(char::is_control) {
        return Err(meta_err(format!(
            "`client_name` has at most {MAX_NAME_LEN} characters and no control characters"
        )));
    }
    let https = |field: &str| -> Result<Option<String>, MetadataError> {
        match text(field)? {
            None => Ok(None),
            Some(u)
                if u.len() <= MAX_URI_LEN
                    && u.starts_with("https://")
                    && !u
                        .chars()
                        .any(|c| c.is_whitespace() || c.is_control() || c == '"') =>
            {
                Ok(Some(u))
            }
            Some(_) => Err(meta_err(format!(
                "`{field}` must be an https:// URL of at most {MAX_URI_LEN} characters"
            ))),
        }
    };
    Ok(AppMetadata {
        name,
        logo_uri: https("logo_uri")?,
        client_uri: https("client_uri")?,
        redirect_uris,
        auth_method,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn client_id_urls() {
        assert!(check_client_id_url("https://app.example/client.json", false).is_ok());
        assert!(check_client_id_url("http://127.0.0.1:8080/c.json", true).is_ok());
        for bad in [
            "http://app.example/client.json",
            "http://127.0.0.1:8080/c.json",
            "https://app.example",
            "https://app.example/",
            "https://user@app.example/c.json",
            "https://app.example/c.json#x",
            "https://app.example/a/../c.json",
            "ftp://app.example/c.json",
        ] {
            assert!(check_client_id_url(bad, false).is_err(), "{bad}");
        }
    }

    #[test]
    fn documents_must_name_their_url() {
        let url = "https://app.example/client.json";
        let good = json!({ "client_id": url, "client_name": "App", "redirect_uris": ["https://app.example/cb"] });
        let (m, _) = check_document(url, good.to_string().as_bytes()).unwrap();
        assert_eq!(m.auth_method, AppAuth::None);
        let liar = json!({ "client_id": "https://other.example/client.json", "redirect_uris": ["https://app.example/cb"] });
        assert!(check_document(url, liar.to_string().as_bytes()).is_err());
        let secret = json!({ "client_id": url, "client_secret": "x", "redirect_uris": ["https://app.example/cb"] });
        assert!(check_document(url, secret.to_string().as_bytes()).is_err());
        assert!(check_document(url, &vec![b' '; MAX_METADATA_BYTES + 1]).is_err());
        assert!(check_document(url, b"not json").is_err());
    }

    #[test]
    fn registration_metadata() {
        let m = check_metadata(
            &json!({
                "client_name": "Claude",
                "redirect_uris": ["https://claude.ai/api/mcp/auth_callback", "http://127.0.0.1/cb"],
                "token_endpoint_auth_method": "none",
                "grant_types": ["authorization_code", "refresh_token"],
                "response_types": ["code"],
                "logo_uri": "https://claude.ai/logo.png",
                "software_id": "kept, ignored"
            }),
            AppKind::Registered,
        )
        .unwrap();
        assert_eq!(m.auth_method, AppAuth::None);
        assert_eq!(m.name, "Claude");
        assert_eq!(m.redirect_uris.len(), 2);
        // RFC 7591's default for a registered client.
        let m = check_metadata(
            &json!({"redirect_uris": ["https://a.example/cb"]}),
            AppKind::Registered,
        )
        .unwrap();
        assert_eq!(m.auth_method, AppAuth::ClientSecretBasic);
        // A document's client is public by default, and may not claim a secret.
        let m = check_metadata(
            &json!({"redirect_uris": ["https://a.example/cb"]}),
            AppKind::Metadata,
        )
        .unwrap();
        assert_eq!(m.auth_method, AppAuth::None);
        assert!(check_metadata(
            &json!({"redirect_uris": ["https://a.example/cb"], "token_endpoint_auth_method": "client_secret_post"}),
            AppKind::Metadata
        )
        .is_err());
    }

    #[test]
    fn refusals_name_the_field() {
        let cases = [
            (json!({}), "invalid_redirect_uri"),
            (json!({"redirect_uris": []}), "invalid_redirect_uri"),
            (
                json!({"redirect_uris": ["http://evil.example/cb"]}),
                "invalid_redirect_uri",
            ),
            (
                json!({"redirect_uris": ["https://a.example/cb#x"]}),
                "invalid_redirect_uri",
            ),
            (
                json!({"redirect_uris": ["https://a.example/cb"], "grant_types": ["client_credentials"]}),
                "invalid_client_metadata",
            ),
            (
                json!({"redirect_uris": ["https://a.example/cb"], "response_types": ["token"]}),
                "invalid_client_metadata",
            ),
            (
                json!({"redirect_uris": ["https://a.example/cb"], "token_endpoint_auth_method": "private_key_jwt"}),
                "invalid_client_metadata",
            ),
            (
                json!({"redirect_uris": ["https://a.example/cb"], "logo_uri": "javascript:alert(1)"}),
                "invalid_client_metadata",
            ),
            (
                json!({"redirect_uris": ["https://a.example/cb"], "client_name": "x\u{7}"}),
                "invalid_client_metadata",
            ),
            (json!([1]), "invalid_client_metadata"),
        ];
        for (doc, code) in cases {
            let e = check_metadata(&doc, AppKind::Registered).expect_err(&doc.to_string());
            assert_eq!(e.code, code, "{doc}: {}", e.description);
        }
    }
}
