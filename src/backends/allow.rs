//! What the operator allows a `Backend` beyond the safe defaults. Whoever may write
//! `Backend`s in a namespace must not reach beyond it through one:
//!
//! - A `kubernetes` backend places its Pods (run images, and the Secrets of resolved
//!   environment values) only in its own namespace, or in one the operator lists
//!   ([`Allowances::kubernetes_namespaces`], `--kubernetes-backend-namespaces`; `*` allows
//!   any).
//! - Credentials go only to the provider's official endpoint — `aws`:
//!   `https://ec2.<region>.amazonaws.com` (`.amazonaws.com.cn` in China) of one of the
//!   backend's regions; `lambda`: [`super::lambda::DEFAULT_ENDPOINT`] — or to an endpoint
//!   the operator lists ([`Allowances::endpoints`], `--allow-endpoint`).
//!
//! A `Backend` breaking a rule cannot be built: the factory (and the Pod executor) answer
//! `InvalidConfig` naming the field and its value, which the Backend's `Ready` condition
//! and every instance trying it show. Nothing has been read or sent by then.

use hyper::http::uri::Uri;

use super::BackendError;
use crate::api::backend::{Backend as BackendObject, BackendType};

/// Allows any namespace in [`Allowances::kubernetes_namespaces`].
pub const ANY_NAMESPACE: &str = "*";

/// The operator's allowances; the default allows nothing beyond the rules above.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Allowances {
    /// Namespaces, besides its own, where a `kubernetes` backend may place Pods
    /// ([`ANY_NAMESPACE`]: any).
    pub kubernetes_namespaces: Vec<String>,
    /// Endpoint URLs, besides the providers' official ones, that `aws` and `lambda`
    /// backends may send credentials (or requests signed with them) to. Compared by
    /// scheme, host, port and path (a trailing `/` aside).
    pub endpoints: Vec<String>,
}

impl Allowances {
    /// Allows `kubernetes` backends to place Pods in `namespaces` too.
    pub fn with_kubernetes_namespaces<S: Into<String>>(mut self, namespaces: impl IntoIterator<Item = S>) -> Self {
        self.kubernetes_namespaces.extend(namespaces.into_iter().map(Into::into));
        self
    }

    /// Allows backends to send credentials to `endpoints` too.
    pub fn with_endpoints<S: Into<String>>(mut self, endpoints: impl IntoIterator<Item = S>) -> Self {
        self.endpoints.extend(endpoints.into_iter().map(Into::into));
        self
    }

    /// Checks every rule that applies to `object`.
    pub fn check(&self, object: &BackendObject) -> Result<(), BackendError> {
        self.check_kubernetes_namespace(object)?;
        self.check_endpoint(object)
    }

    /// A `kubernetes` backend's `spec.kubernetes.namespace` is its own namespace or allowed.
    pub fn check_kubernetes_namespace(&self, object: &BackendObject) -> Result<(), BackendError> {
        if object.spec.type_ != BackendType::Kubernetes {
            return Ok(());
        }
        let Some(target) = object.spec.kubernetes.as_ref().and_then(|k| k.namespace.as_deref()) else {
            return Ok(());
        };
        let own = object.metadata.namespace.as_deref().unwrap_or_default();
        if target == own || self.kubernetes_namespaces.iter().any(|n| n == ANY_NAMESPACE || n == target) {
            return Ok(());
        }
        let allowed = match self.kubernetes_namespaces.as_slice() {
            [] => "none".to_string(),
            list => list.join(", "),
        };
        Err(BackendError::InvalidConfig(format!(
            "spec.kubernetes.namespace: {target:?} is not allowed: a kubernetes backend places Pods only in its own \
             namespace ({own}) or one the operator allows with --kubernetes-backend-namespaces (allowed: {allowed})"
        )))
    }

    /// An `aws` or `lambda` backend's `spec.endpoint` is unset, the provider's official
    /// endpoint, or allowed.
    pub fn check_endpoint(&self, object: &BackendObject) -> Result<(), BackendError> {
        let Some(endpoint) = object.spec.endpoint.as_deref().map(str::trim).filter(|e| !e.is_empty()) else {
            return Ok(());
        };
        let official: Vec<String> = match object.spec.type_ {
            BackendType::Aws => object.spec.regions.iter().map(|r| aws_endpoint(r)).collect(),
            BackendType::Lambda => vec![super::lambda::DEFAULT_ENDPOINT.to_string()],
            // Neither sends credentials to an endpoint.
            BackendType::Kubernetes | BackendType::Ssh => return Ok(()),
        };
        let want = normalize(endpoint).map_err(|e| BackendError::InvalidConfig(format!("spec.endpoint: {e}")))?;
        if official.iter().chain(&self.endpoints).any(|e| normalize(e).is_ok_and(|e| e == want)) {
            return Ok(());
        }
        Err(BackendError::InvalidConfig(format!(
            "spec.endpoint: {endpoint:?} is not allowed: credentials go only to the provider's official endpoint \
             ({}) or to one the operator allows with --allow-endpoint",
            if official.is_empty() { "none for no regions".to_string() } else { official.join(", ") }
        )))
    }
}

/// EC2's official endpoint in `region`.
pub fn aws_endpoint(region: &str) -> String {
    let suffix = if region.starts_with("cn-") { "amazonaws.com.cn" } else { "amazonaws.com" };
    format!("https://ec2.{region}.{suffix}")
}

/// `url` as `scheme://host:port/path`, lowercase, with the scheme's default port made
/// explicit and no trailing `/`: two URLs that reach the same place compare equal.
pub fn normalize(url: &str) -> Result<String, String> {
    let uri: Uri = url.trim().parse().map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    let scheme = uri.scheme_str().map(str::to_ascii_lowercase);
    let default_port = match scheme.as_deref() {
        Some("https") => 443,
        Some("http") => 80,
        _ => return Err(format!("{url:?} is not an http:// or https:// URL")),
    };
    let host = uri.host().filter(|h| !h.is_empty()).ok_or_else(|| format!("{url:?} has no host"))?;
    if uri.query().is_some() {
        return Err(format!("{url:?} must have no query"));
    }
    let port = uri.port_u16().unwrap_or(default_port);
    let path = uri.path().trim_end_matches('/');
    Ok(format!("{}://{}:{port}{path}", scheme.unwrap_or_default(), host.to_ascii_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::backend::{BackendSpec, KubernetesBackendConfig};

    fn kubernetes(ns: &str, target: Option<&str>) -> BackendObject {
        let mut b = BackendObject::new(
            "k",
            BackendSpec {
                type_: BackendType::Kubernetes,
                kubernetes: Some(KubernetesBackendConfig { namespace: target.map(Into::into), ..Default::default() }),
                ..Default::default()
            },
        );
        b.metadata.namespace = Some(ns.into());
        b
    }

    fn cloud(type_: BackendType, regions: &[&str], endpoint: Option<&str>) -> BackendObject {
        BackendObject::new(
            "c",
            BackendSpec {
                type_,
                regions: regions.iter().map(|r| r.to_string()).collect(),
                endpoint: endpoint.map(Into::into),
                ..Default::default()
            },
        )
    }

    fn refusal(r: Result<(), BackendError>) -> String {
        match r {
            Err(BackendError::InvalidConfig(m)) => m,
            other => panic!("expected InvalidConfig, got {other:?}"),
        }
    }

    #[test]
    fn pods_go_to_the_backends_own_namespace_or_an_allowed_one() {
        let none = Allowances::default();
        assert!(none.check(&kubernetes("ml", None)).is_ok());
        assert!(none.check(&kubernetes("ml", Some("ml"))).is_ok());
        let msg = refusal(none.check(&kubernetes("ml", Some("kube-system"))));
        assert!(msg.starts_with("spec.kubernetes.namespace: \"kube-system\" is not allowed"), "{msg}");
        assert!(msg.contains("(ml)") && msg.contains("--kubernetes-backend-namespaces"), "{msg}");

        let some = Allowances::default().with_kubernetes_namespaces(["kpool-machines"]);
        assert!(some.check(&kubernetes("ml", Some("kpool-machines"))).is_ok());
        assert!(refusal(some.check(&kubernetes("ml", Some("other")))).contains("allowed: kpool-machines"));
        let any = Allowances::default().with_kubernetes_namespaces([ANY_NAMESPACE]);
        assert!(any.check(&kubernetes("ml", Some("other"))).is_ok());
    }

    #[test]
    fn credentials_go_to_official_endpoints_or_allowed_ones() {
        let none = Allowances::default();
        assert!(none.check(&cloud(BackendType::Aws, &["us-east-1"], None)).is_ok());
        assert!(none.check(&cloud(BackendType::Lambda, &[], None)).is_ok());
        for ok in ["https://ec2.us-west-2.amazonaws.com", "https://EC2.us-west-2.amazonaws.com:443/"] {
            assert!(none.check(&cloud(BackendType::Aws, &["us-east-1", "us-west-2"], Some(ok))).is_ok(), "{ok}");
        }
        assert!(none
            .check(&cloud(BackendType::Aws, &["cn-north-1"], Some("https://ec2.cn-north-1.amazonaws.com.cn")))
            .is_ok());
        assert!(none.check(&cloud(BackendType::Lambda, &[], Some("https://cloud.lambda.ai/api/v1/"))).is_ok());
        for bad in [
            "http://ec2.us-east-1.amazonaws.com",
            "https://ec2.eu-west-1.amazonaws.com",
            "https://ec2.us-east-1.amazonaws.com.evil.example",
            "https://ec2.us-east-1.amazonaws.com:8443",
            "http://127.0.0.1:5000",
        ] {
            let msg = refusal(none.check(&cloud(BackendType::Aws, &["us-east-1"], Some(bad))));
            assert!(msg.starts_with(&format!("spec.endpoint: {bad:?} is not allowed")), "{msg}");
            assert!(msg.contains("https://ec2.us-east-1.amazonaws.com") && msg.contains("--allow-endpoint"), "{msg}");
        }
        let msg = refusal(none.check(&cloud(BackendType::Lambda, &[], Some("https://collector.example/api/v1"))));
        assert!(msg.contains("\"https://collector.example/api/v1\"") && msg.contains("cloud.lambda.ai"), "{msg}");
        assert!(refusal(none.check(&cloud(BackendType::Lambda, &[], Some("ftp://x")))).starts_with("spec.endpoint"));

        let local = Allowances::default().with_endpoints(["http://127.0.0.1:5000/"]);
        assert!(local.check(&cloud(BackendType::Aws, &["us-east-1"], Some("http://127.0.0.1:5000"))).is_ok());
        assert!(local.check(&cloud(BackendType::Aws, &["us-east-1"], Some("http://127.0.0.1:5001"))).is_err());
        // The endpoint field means nothing to kubernetes and ssh backends.
        assert!(none.check(&cloud(BackendType::Ssh, &[], Some("http://x"))).is_ok());
    }

    #[test]
    fn urls_compare_by_where_they_lead() {
        assert_eq!(normalize("HTTPS://Example.com/api/v1/").unwrap(), "https://example.com:443/api/v1");
        assert_eq!(normalize("http://127.0.0.1").unwrap(), "http://127.0.0.1:80");
        assert_eq!(normalize("http://user@127.0.0.1:5000").unwrap(), "http://127.0.0.1:5000");
        assert!(normalize("127.0.0.1:5000").is_err());
        assert!(normalize("https://x/?a=b").is_err());
    }
}
