//! The registered services as the token endpoint and the checks need them (RFC 8707): which
//! service a resource URI names, and which resource URIs an access token must be for to use a
//! scope. Read from storage on first use and again after any change to a service (on this node
//! or, through the change feed, another).

use super::Runtime;
use crate::domain::error::Result;
use crate::domain::model::Service;
use crate::domain::resource::{normalized, ProtectedResource};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// Services by resource URI and by scope.
#[derive(Debug, Default)]
pub struct ServiceIndex {
    /// A resource URI → the scopes of the service that declares it.
    by_resource: HashMap<String, Arc<[String]>>,
    /// A scope → the resource URIs of its service, for services that declare any.
    audience_of_scope: HashMap<String, Arc<[String]>>,
    /// Every resource URI as a protected resource (RFC 9728).
    protected: Vec<ProtectedResource>,
    /// A scope → the name of the service that declares it (usage is counted by service).
    service_of_scope: HashMap<String, Arc<str>>,
}

impl ServiceIndex {
    pub fn new(services: &[Service]) -> Self {
        let mut idx = ServiceIndex::default();
        for s in services {
            let name: Arc<str> = s.name.as_str().into();
            for sc in &s.scopes {
                idx.service_of_scope
                    .entry(sc.clone())
                    .or_insert_with(|| Arc::clone(&name));
            }
        }
        for s in services.iter().filter(|s| !s.resources.is_empty()) {
            let scopes: Arc<[String]> = s.scopes.clone().into();
            // As `parse_resource` writes them today (a row from before default ports were
            // dropped still names the same resource).
            let normal: Vec<String> = s.resources.iter().map(|r| normalized(r)).collect();
            let resources: Arc<[String]> = normal.clone().into();
            for r in &normal {
                idx.by_resource.insert(r.clone(), Arc::clone(&scopes));
                idx.protected.push(ProtectedResource {
                    resource: r.clone(),
                    name: s.name.clone(),
                    scopes: s.scopes.clone(),
                });
            }
            for sc in &s.scopes {
                idx.audience_of_scope
                    .insert(sc.clone(), Arc::clone(&resources));
            }
        }
        idx
    }

    /// The service that declares `scope`.
    pub fn service_of_scope(&self, scope: &str) -> Option<&Arc<str>> {
        self.service_of_scope.get(scope)
    }

    /// The scopes of the service a resource URI names.
    pub fn scopes_of_resource(&self, resource: &str) -> Option<&Arc<[String]>> {
        self.by_resource.get(resource)
    }

    /// The protected resource a resource URI names.
    pub fn protected_resource(&self, resource: &str) -> Option<&ProtectedResource> {
        self.protected.iter().find(|r| r.resource == resource)
    }

    /// Every protected resource.
    pub fn protected_resources(&self) -> impl Iterator<Item = &ProtectedResource> {
        self.protected.iter()
    }

    /// Whether an access token with audience `aud` may be used for every scope in `required`:
    /// for each scope whose service declares resource URIs, `aud` must name one of them.
    pub fn audience_allows<S: AsRef<str>>(&self, aud: &[String], required: &[S]) -> bool {
        if self.audience_of_scope.is_empty() {
            return true;
        }
        required
            .iter()
            .all(|s| match self.audience_of_scope.get(s.as_ref()) {
                None => true,
                Some(resources) => resources.iter().any(|r| aud.iter().any(|a| a == r)),
            })
    }

    /// Whether no service declares a resource URI (then no audience is ever checked).
    pub fn is_empty(&self) -> bool {
        self.audience_of_scope.is_empty()
    }
}

/// The cached index, and a generation that an invalidation bumps so a read that raced one is
/// not kept.
#[derive(Default)]
pub struct ServiceCache {
    index: RwLock<Option<Arc<ServiceIndex>>>,
    generation: AtomicU64,
}

impl ServiceCache {
    pub fn clear(&self) {
        let mut index = self.index.write().unwrap_or_else(|e| e.into_inner());
        self.generation.fetch_add(1, Ordering::AcqRel);
        *index = None;
    }
}

impl Runtime {
    /// The services index: from the cache, or read from storage (every time while the change
    /// feed is down, like every other cache).
    pub async fn services(&self) -> Result<Arc<ServiceIndex>> {
        let trusted = self.feed_status().cache_trusted();
        if trusted {
            if let Some(idx) = self
                .services
                .index
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
            {
                return Ok(Arc::clone(idx));
            }
        }
        let generation = self.services.generation.load(Ordering::Acquire);
        let idx = Arc::new(ServiceIndex::new(&self.store.service_list().await?));
        if trusted {
            let mut slot = self
                .services
                .index
                .write()
                .unwrap_or_else(|e| e.into_inner());
            if self.services.generation.load(Ordering::Acquire) == generation {
                *slot = Some(Arc::clone(&idx));
            }
        }
        Ok(idx)
    }
}

impl Runtime {
    /// Whether the configured gateway resource (if any) is still a resource URI of a service:
    /// checked at start and whenever the route rules are reloaded.
    pub async fn check_gateway_resource(&self) -> std::result::Result<(), String> {
        let configured = self
            .gateway_resource
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let Some(resource) = configured else {
            return Ok(());
        };
        let idx = self.services().await.map_err(|e| e.to_string())?;
        if idx.protected_resource(&resource).is_none() {
            return Err(format!(
                "gateway_resource {resource:?} is not a resource URI of any service (declare it in a service's `resources`)"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(scopes: &[&str], resources: &[&str]) -> Service {
        Service {
            id: "svc".into(),
            name: "s".into(),
            description: String::new(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            resources: resources.iter().map(|s| s.to_string()).collect(),
            created_at: time::OffsetDateTime::UNIX_EPOCH,
            managed_by: None,
        }
    }

    #[test]
    fn audience_is_checked_only_for_services_that_declare_resources() {
        let idx = ServiceIndex::new(&[
            svc(&["a:read"], &["https://a.example", "https://a2.example"]),
            svc(&["b:read"], &[]),
        ]);
        let aud = |x: &[&str]| x.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(idx.audience_allows(&aud(&["https://a.example"]), &["a:read"]));
        assert!(idx.audience_allows(&aud(&["x", "https://a2.example"]), &["a:read", "b:read"]));
        assert!(!idx.audience_allows(&aud(&["https://issuer"]), &["a:read"]));
        assert!(!idx.audience_allows(&aud(&[]), &["a:read"]));
        // b declares none: any audience will do, as will a route needing no scope.
        assert!(idx.audience_allows(&aud(&["https://issuer"]), &["b:read"]));
        assert!(idx.audience_allows::<&str>(&aud(&["https://issuer"]), &[]));
        assert_eq!(
            idx.scopes_of_resource("https://a2.example")
                .map(|s| s.len()),
            Some(1)
        );
        assert!(idx.scopes_of_resource("https://b.example").is_none());
        assert!(ServiceIndex::new(&[svc(&["b:read"], &[])]).is_empty());
    }

    /// A resource stored before default ports were dropped (`https://a.example:443/mcp`) names
    /// the same resource as the normalized form that requests and tokens now carry.
    #[test]
    fn stored_resources_are_read_normalized() {
        let idx = ServiceIndex::new(&[svc(&["a:read"], &["HTTPS://A.example:443/mcp"])]);
        assert!(idx.scopes_of_resource("https://a.example/mcp").is_some());
        assert!(idx.protected_resource("https://a.example/mcp").is_some());
        assert!(idx.audience_allows(&["https://a.example/mcp".to_string()], &["a:read"]));
    }
}
