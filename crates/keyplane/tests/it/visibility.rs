//! Member visibility and cross-organization isolation, route by route.
