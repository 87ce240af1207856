//! Identifiers: a short type prefix and 20 random base62 characters (~119 bits), e.g. `key_…`.
//! Ids are not secrets; they are unguessable only so that enumeration teaches nothing.

use crate::domain::secret::random_id_text;

pub const DEFAULT_ORG_ID: &str = "org_default";
pub const DEFAULT_PROJECT_ID: &str = "prj_default";

pub fn new_id(kind: &str) -> String {
    format!("{kind}_{}", random_id_text(20))
}

/// Whether `text` looks like an id of `kind`; anything else is answered 404 without a lookup.
pub fn is_id(kind: &str, text: &str) -> bool {
    text.len() <= 64
        && text
            .strip_prefix(kind)
            .and_then(|r| r.strip_prefix('_'))
            .is_some_and(|r| !r.is_empty() && r.bytes().all(|b| b.is_ascii_alphanumeric()))
}
