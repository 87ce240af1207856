//! [`Keyplane`] use cases that serve protected resources (RFC 9728): which resource a metadata
//! request or a refused request is about, and the resource the gateway fronts. Resources are
//! the services' resource URIs (RFC 8707), deployment-wide public metadata like the services
//! themselves; nothing here needs a caller.

use crate::app::Keyplane;
use crate::domain::resource::{
    parse_resource, resource_for_metadata, resource_for_request, ProtectedResource,
};

impl Keyplane {
    /// Sets the resource URI the gateway fronts (`None`: no metadata, no `resource_metadata` in
    /// its challenges). Refused unless it is a resource URI of a service, like a route rule
    /// naming an unknown scope; checked again whenever the rules are reloaded.
    pub async fn set_gateway_resource(
        &self,
        resource: Option<&str>,
    ) -> std::result::Result<(), String> {
        let resource = resource
            .map(|r| parse_resource(r).map_err(|e| format!("gateway_resource: {e}")))
            .transpose()?;
        let previous = std::mem::replace(
            &mut *self
                .rt
                .gateway_resource
                .write()
                .unwrap_or_else(|e| e.into_inner()),
            resource,
        );
        if let Err(e) = self.rt.check_gateway_resource().await {
            *self
                .rt
                .gateway_resource
                .write()
                .unwrap_or_else(|e| e.into_inner()) = previous;
            return Err(e);
        }
        Ok(())
    }

    /// The resource the gateway fronts: `None` when none is configured, or when its service no
    /// longer declares it (then the gateway behaves as without one).
    pub async fn gateway_resource(&self) -> Option<ProtectedResource> {
        let configured = self
            .rt
            .gateway_resource
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()?;
        let idx = self.rt.services().await.ok()?;
        idx.protected_resource(&configured).cloned()
    }

    /// The resource whose metadata a request for
    /// `/.well-known/oauth-protected-resource{suffix}` on `host` asks for (see
    /// [`resource_for_metadata`]). `None` for an unknown host or path, or when storage cannot
    /// be read.
    pub async fn resource_for_metadata(
        &self,
        scheme: Option<&str>,
        host: &str,
        suffix: &str,
    ) -> Option<ProtectedResource> {
        let idx = self.rt.services().await.ok()?;
        resource_for_metadata(idx.protected_resources(), scheme, host, suffix).cloned()
    }

    /// The resource a request to `scheme://host{path}` is for (see [`resource_for_request`]),
    /// for the `resource_metadata` of a refusal.
    pub async fn resource_for_request(
        &self,
        scheme: Option<&str>,
        host: &str,
        path: &str,
    ) -> Option<ProtectedResource> {
        let idx = self.rt.services().await.ok()?;
        resource_for_request(idx.protected_resources(), scheme, host, path).cloned()
    }
}
