//! `cqrs_kube_requests_total{verb,resource}`: every request the operator's Kubernetes client
//! sends, counted by a tower layer on the client, so its cost to the API server can be read
//! from the operator itself and checked against the API server's `apiserver_request_total`.
//!
//! Written by hand: kube's client has tracing spans per request but no per-verb, per-resource
//! counter, and no maintained crate classifies Kubernetes request paths.

use std::sync::LazyLock;

use http::{Method, Request};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

/// Labels of `cqrs_kube_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// As the API server names it: `get`, `list`, `watch`, `create`, `patch`, `update`,
    /// `delete`, `deletecollection`.
    pub verb: String,
    /// The resource with its subresource: `deployments/scale`, `cqrsapps/status`, `events`.
    pub resource: String,
}

static REQUESTS: LazyLock<Family<RequestLabels, Counter>> = LazyLock::new(Family::default);

/// The process-wide counter family (registered by [`crate::metrics::Metrics`]).
pub fn requests() -> Family<RequestLabels, Counter> {
    REQUESTS.clone()
}

/// Counts `request` and passes it on.
pub fn count<B>(request: Request<B>) -> Request<B> {
    let labels = classify(
        request.method(),
        request.uri().path(),
        request.uri().query().unwrap_or(""),
    );
    REQUESTS.get_or_create(&labels).inc();
    request
}

/// The API server's verb and resource of a request for `path`?`query`.
pub fn classify(method: &Method, path: &str, query: &str) -> RequestLabels {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let rest = match segments.first() {
        Some(&"api") => segments.get(2..),
        Some(&"apis") => segments.get(3..),
        _ => None,
    }
    .unwrap_or_default();
    // NB: `namespaces/<ns>/<resource>...` is a namespaced resource; `namespaces[/<name>]` alone
    // is the namespaces resource itself.
    let rest = match rest {
        ["namespaces", _, resource, ..] if !resource.is_empty() => &rest[2..],
        _ => rest,
    };
    let (resource, name, sub) = (rest.first(), rest.get(1), rest.get(2));
    let resource = match (resource, sub) {
        (None, _) => "nonresource".to_owned(),
        (Some(r), None) => (*r).to_owned(),
        (Some(r), Some(s)) => format!("{r}/{s}"),
    };
    let watch = query
        .split('&')
        .any(|kv| kv == "watch=true" || kv == "watch=1");
    let verb = match *method {
        Method::GET if name.is_some() => "get",
        Method::GET if watch => "watch",
        Method::GET => "list",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE if name.is_some() => "delete",
        Method::DELETE => "deletecollection",
        _ => "other",
    };
    RequestLabels {
        verb: verb.to_owned(),
        resource,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(method: Method, path: &str, query: &str) -> (String, String) {
        let l = classify(&method, path, query);
        (l.verb, l.resource)
    }

    #[test]
    fn requests_are_named_as_the_api_server_names_them() {
        let cases = [
            (
                of(
                    Method::GET,
                    "/apis/apps/v1/namespaces/shop/deployments/w/scale",
                    "",
                ),
                ("get", "deployments/scale"),
            ),
            (
                of(
                    Method::PATCH,
                    "/apis/cqrs.dev/v1alpha1/namespaces/shop/cqrsapps/a/status",
                    "fieldManager=x",
                ),
                ("patch", "cqrsapps/status"),
            ),
            (
                of(
                    Method::GET,
                    "/apis/apps/v1/deployments",
                    "labelSelector=x&watch=true&timeoutSeconds=290",
                ),
                ("watch", "deployments"),
            ),
            (
                of(Method::GET, "/api/v1/namespaces/shop/configmaps", ""),
                ("list", "configmaps"),
            ),
            (
                of(Method::GET, "/api/v1/namespaces/shop", ""),
                ("get", "namespaces"),
            ),
            (
                of(Method::GET, "/api/v1/namespaces", ""),
                ("list", "namespaces"),
            ),
            (
                of(
                    Method::POST,
                    "/apis/events.k8s.io/v1/namespaces/shop/events",
                    "",
                ),
                ("create", "events"),
            ),
            (
                of(Method::DELETE, "/api/v1/namespaces/shop/services/web", ""),
                ("delete", "services"),
            ),
            (of(Method::GET, "/version", ""), ("list", "nonresource")),
        ];
        for (got, (verb, resource)) in cases {
            assert_eq!(got, (verb.to_owned(), resource.to_owned()));
        }
    }
}
