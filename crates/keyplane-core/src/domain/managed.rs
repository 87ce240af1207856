//! Objects managed by a configuration file (issue 13): an organization, project, service, role,
//! member or OAuth client declared in keyplane's TOML file is marked `managed_by: "config"`, and
//! the management API refuses to change a marked service, member or client unless the request
//! says it means to (`Keyplane-Override-Config: true`), since the next `keyplane apply` or start
//! would put the file's values back.

use crate::domain::model::{Member, OAuthClient, Org, Project, Role, Service};

/// The header with which a management request changes a configuration-managed object anyway.
pub const OVERRIDE_HEADER: &str = "keyplane-override-config";

/// What `managed_by` says of an object a configuration file declares.
pub const MANAGED_BY_CONFIG: &str = "config";

/// The kinds of objects a configuration file declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ManagedKind {
    Org,
    Project,
    Service,
    Role,
    Member,
    Client,
}

impl ManagedKind {
    pub const ALL: [ManagedKind; 6] = [
        ManagedKind::Org,
        ManagedKind::Project,
        ManagedKind::Service,
        ManagedKind::Role,
        ManagedKind::Member,
        ManagedKind::Client,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ManagedKind::Org => "org",
            ManagedKind::Project => "project",
            ManagedKind::Service => "service",
            ManagedKind::Role => "role",
            ManagedKind::Member => "member",
            ManagedKind::Client => "client",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// One marked object: its kind, id, and what manages it (`config`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagedObject {
    pub kind: ManagedKind,
    pub id: String,
    pub managed_by: String,
}

/// How a request treats configuration-managed objects.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ConfigWrite {
    /// A management request: a managed object is refused (409) with the way out.
    #[default]
    Refuse,
    /// A management request with `Keyplane-Override-Config: true`: allowed, and its events say so.
    Override,
    /// The configuration file itself being applied.
    Declaration,
}

/// A record that a configuration file may declare.
pub trait Declarable {
    const KIND: ManagedKind;
    fn declared_id(&self) -> &str;
    fn set_managed_by(&mut self, by: Option<String>);
}

macro_rules! declarable {
    ($t:ty, $kind:expr, $id:ident) => {
        impl Declarable for $t {
            const KIND: ManagedKind = $kind;
            fn declared_id(&self) -> &str {
                &self.$id
            }
            fn set_managed_by(&mut self, by: Option<String>) {
                self.managed_by = by;
            }
        }
    };
}

declarable!(Org, ManagedKind::Org, id);
declarable!(Project, ManagedKind::Project, id);
declarable!(Service, ManagedKind::Service, id);
declarable!(Role, ManagedKind::Role, id);
declarable!(Member, ManagedKind::Member, id);
declarable!(OAuthClient, ManagedKind::Client, client_id);
