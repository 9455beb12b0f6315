//! What the controllers ask of the Kubernetes API: every request, counted by verb, API
//! group, resource and outcome, as the API server's authorizer sees it.
//!
//! [`counting`] wraps a client; the counts feed the `kpool_api_requests_total` metric and
//! [`ApiRequests::snapshot`], which the placement benchmark reads to report requests per
//! placed run. Labels are bounded: a handful of verbs, the resources kpool touches, and an
//! outcome class (`2xx`, `404`, `409`, `4xx`, `5xx`, `error` for no answer).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use kube::client::Body;
use kube::Client;

/// One API request as RBAC authorizes it: verb, API group, resource (with subresource).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ApiCall {
    pub verb: String,
    pub group: String,
    pub resource: String,
}

/// Reads an API request the way the API server's authorizer does.
pub fn api_call(method: &http::Method, uri: &http::Uri) -> ApiCall {
    let parts: Vec<&str> = uri.path().trim_matches('/').split('/').collect();
    // /api/v1/... or /apis/GROUP/VERSION/...
    let (group, rest): (String, &[&str]) = match parts.first() {
        Some(&"api") => (String::new(), parts.get(2..).unwrap_or_default()),
        _ => (parts.get(1).copied().unwrap_or_default().to_string(), parts.get(3..).unwrap_or_default()),
    };
    let rest: &[&str] = if rest.first() == Some(&"namespaces") && rest.len() > 2 { &rest[2..] } else { rest };
    let resource = match rest {
        [plural, _name, sub] => format!("{plural}/{sub}"),
        [plural, ..] => plural.to_string(),
        [] => String::new(),
    };
    let named = rest.len() >= 2;
    let query = uri.query().unwrap_or_default();
    let verb = match *method {
        http::Method::GET if query.contains("watch=true") || query.contains("watch=1") => "watch",
        http::Method::GET if named => "get",
        http::Method::GET => "list",
        http::Method::POST => "create",
        http::Method::PUT => "update",
        http::Method::PATCH => "patch",
        http::Method::DELETE if named => "delete",
        http::Method::DELETE => "deletecollection",
        _ => "unknown",
    };
    ApiCall { verb: verb.to_string(), group, resource }
}

/// The outcome class of an answer (`None`: no answer came).
pub fn outcome(status: Option<http::StatusCode>) -> &'static str {
    match status.map(|s| s.as_u16()) {
        None => "error",
        Some(200..=299) => "2xx",
        Some(404) => "404",
        Some(409) => "409",
        Some(400..=499) => "4xx",
        Some(_) => "5xx",
    }
}

/// Called for every request counted, with its call and outcome class.
type Hook = Arc<dyn Fn(&ApiCall, &'static str) + Send + Sync>;

/// Counts of requests by call and outcome. Cloning shares the counts.
#[derive(Clone, Default)]
pub struct ApiRequests {
    counts: Arc<Mutex<BTreeMap<(ApiCall, &'static str), u64>>>,
    on_count: Option<Hook>,
}

impl ApiRequests {
    /// Counts that also call `f` for every request counted (the metrics hook).
    pub fn with_hook(f: impl Fn(&ApiCall, &'static str) + Send + Sync + 'static) -> Self {
        ApiRequests { counts: Arc::default(), on_count: Some(Arc::new(f)) }
    }

    fn count(&self, call: ApiCall, outcome: &'static str) {
        if let Some(f) = &self.on_count {
            f(&call, outcome);
        }
        *self.counts.lock().expect("api request counts").entry((call, outcome)).or_default() += 1;
    }

    /// Every count so far, by call and outcome.
    pub fn snapshot(&self) -> BTreeMap<(ApiCall, &'static str), u64> {
        self.counts.lock().expect("api request counts").clone()
    }
}

/// Wraps `inner` so that every request it sends is counted in `requests` once its answer
/// (or the lack of one) is known. Watches count when the stream opens.
pub fn counting(inner: Client, requests: ApiRequests) -> Client {
    let namespace = inner.default_namespace().to_string();
    let service = tower::service_fn(move |req: http::Request<Body>| {
        let call = api_call(req.method(), req.uri());
        let inner = inner.clone();
        let requests = requests.clone();
        async move {
            let answer = inner.send(req).await;
            requests.count(call, outcome(answer.as_ref().ok().map(|r| r.status())));
            answer
        }
    });
    Client::new(service, namespace)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(method: http::Method, uri: &str) -> ApiCall {
        api_call(&method, &uri.parse().unwrap())
    }

    #[test]
    fn requests_read_as_the_authorizer_reads_them() {
        let c = call(http::Method::GET, "/apis/kpool.dev/v1alpha1/namespaces/ns/runs?labelSelector=x");
        assert_eq!((c.verb.as_str(), c.group.as_str(), c.resource.as_str()), ("list", "kpool.dev", "runs"));
        let c = call(http::Method::GET, "/apis/kpool.dev/v1alpha1/runs?watch=true&resourceVersion=1");
        assert_eq!((c.verb.as_str(), c.resource.as_str()), ("watch", "runs"));
        let c = call(http::Method::PATCH, "/apis/kpool.dev/v1alpha1/namespaces/ns/instances/i-1/status");
        assert_eq!((c.verb.as_str(), c.resource.as_str()), ("patch", "instances/status"));
        let c = call(http::Method::GET, "/api/v1/namespaces/kube-system");
        assert_eq!((c.verb.as_str(), c.group.as_str(), c.resource.as_str()), ("get", "", "namespaces"));
        let c = call(http::Method::DELETE, "/api/v1/namespaces/ns/pods");
        assert_eq!((c.verb.as_str(), c.resource.as_str()), ("deletecollection", "pods"));
        let c = call(http::Method::GET, "/version");
        assert_eq!((c.verb.as_str(), c.group.as_str(), c.resource.as_str()), ("list", "", ""));
    }

    #[test]
    fn outcomes_are_bounded_classes() {
        assert_eq!(outcome(Some(http::StatusCode::CREATED)), "2xx");
        assert_eq!(outcome(Some(http::StatusCode::CONFLICT)), "409");
        assert_eq!(outcome(Some(http::StatusCode::NOT_FOUND)), "404");
        assert_eq!(outcome(Some(http::StatusCode::FORBIDDEN)), "4xx");
        assert_eq!(outcome(Some(http::StatusCode::BAD_GATEWAY)), "5xx");
        assert_eq!(outcome(None), "error");
    }
}
