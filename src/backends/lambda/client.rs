//! A lean JSON client for Lambda Cloud's REST API: `Authorization: Bearer <key>`, JSON bodies,
//! answers `{"data": …}` or `{"error": {"code", "message", "suggestion"?}}`.
//!
//! HTTP/1.1 over hyper and rustls with ring (the stack the `aws` backend already uses),
//! trusting the system's CA certificates (none are needed for an `http://` endpoint).

use std::fmt;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::http::uri::Uri;

use crate::backends::http::{exchange, truncate, HttpsClient, USER_AGENT};
use serde::Deserialize;

/// Larger answers are refused.
const MAX_BODY: usize = 16 << 20;

/// Why a call failed.
#[derive(Clone, Debug, PartialEq)]
pub enum CallError {
    /// Lambda answered with an error: HTTP status, error code (e.g.
    /// `instance-operations/launch/insufficient-capacity`; empty when the body carried none)
    /// and message.
    Api { status: u16, code: String, message: String, retry_after: Option<Duration> },
    /// No usable answer: connection failure, timeout, unreadable response.
    Transport(String),
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::Api { status, code, message, .. } if code.is_empty() => write!(f, "HTTP {status}: {message}"),
            CallError::Api { status, code, message, .. } => write!(f, "HTTP {status} {code}: {message}"),
            CallError::Transport(message) => f.write_str(message),
        }
    }
}

/// See the module docs.
pub struct LambdaClient {
    http: HttpsClient,
    /// The API base, without a trailing slash (e.g. `https://cloud.lambda.ai/api/v1`).
    base: String,
    api_key: String,
    timeout: Duration,
}

impl fmt::Debug for LambdaClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LambdaClient")
            .field("base", &self.base)
            .field("api_key", &"<redacted>")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl LambdaClient {
    /// A client for the API at `endpoint` (`http(s)://host[:port]/path`). Fails on a
    /// malformed endpoint or when HTTPS is needed and the system's CA certificates cannot be
    /// loaded.
    pub fn new(endpoint: &str, api_key: String, timeout: Duration) -> Result<Self, String> {
        let uri: Uri = endpoint.parse().map_err(|e| format!("endpoint: {endpoint:?} is not a URL: {e}"))?;
        let http_only = match (uri.scheme_str(), uri.authority(), uri.query()) {
            (Some(s @ ("http" | "https")), Some(_), None) => s == "http",
            _ => {
                return Err(format!(
                    "endpoint: {endpoint:?} must be an http:// or https:// URL with a host and no query"
                ))
            }
        };
        let http = crate::backends::http::client(http_only)?;
        Ok(LambdaClient { http, base: endpoint.trim_end_matches('/').to_string(), api_key, timeout })
    }

    /// Sets how long one call may take, answer included.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// The API base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `GET base+path`; the `data` of a 2xx answer.
    pub async fn get<T: for<'de> Deserialize<'de>>(&self, path: &str) -> Result<T, CallError> {
        self.call(hyper::Method::GET, path, None).await
    }

    /// `POST base+path` with a JSON body; the `data` of a 2xx answer.
    pub async fn post<T: for<'de> Deserialize<'de>>(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<T, CallError> {
        self.call(hyper::Method::POST, path, Some(body.to_string())).await
    }

    /// `DELETE base+path`; the `data` of a 2xx answer.
    pub async fn delete<T: for<'de> Deserialize<'de>>(&self, path: &str) -> Result<T, CallError> {
        self.call(hyper::Method::DELETE, path, None).await
    }

    async fn call<T: for<'de> Deserialize<'de>>(
        &self,
        method: hyper::Method,
        path: &str,
        body: Option<String>,
    ) -> Result<T, CallError> {
        let url = format!("{}{path}", self.base);
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(&url)
            .header("accept", "application/json")
            .header("authorization", format!("Bearer {}", self.api_key))
            .header("user-agent", USER_AGENT);
        if body.is_some() {
            request = request.header("content-type", "application/json");
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| CallError::Transport(format!("failed to build the request to {url}: {e}")))?;
        let answer = exchange(&self.http, request, self.timeout, MAX_BODY, "Lambda Cloud")
            .await
            .map_err(CallError::Transport)?;
        let (status, retry_after, bytes) = (answer.status, answer.retry_after, answer.body);
        if (200..300).contains(&status) {
            #[derive(Deserialize)]
            struct Envelope<T> {
                data: T,
            }
            return serde_json::from_slice::<Envelope<T>>(&bytes)
                .map(|e| e.data)
                .map_err(|e| CallError::Transport(format!("unreadable answer to {path}: {e}")));
        }
        let text = String::from_utf8_lossy(&bytes);
        let (code, message) = parse_error(&text).unwrap_or_else(|| (String::new(), truncate(text.trim(), 200)));
        Err(CallError::Api { status, code, message, retry_after })
    }
}

/// Code and message of an error answer `{"error": {"code", "message", "suggestion"?}}`.
pub fn parse_error(body: &str) -> Option<(String, String)> {
    #[derive(Deserialize)]
    struct Doc {
        error: Item,
    }
    #[derive(Deserialize)]
    struct Item {
        code: String,
        #[serde(default)]
        message: String,
        #[serde(default)]
        suggestion: Option<String>,
    }
    let doc: Doc = serde_json::from_str(body).ok()?;
    let message = match doc.error.suggestion.filter(|s| !s.is_empty()) {
        Some(s) => format!("{} ({s})", doc.error.message),
        None => doc.error.message,
    };
    Some((doc.error.code, message))
}
