//! A lean EC2 query-API client: form-encoded POSTs signed with SigV4, XML answers.
//!
//! HTTP/1.1 over hyper and rustls with ring (the stack kube already builds), trusting the
//! system's CA certificates. One client serves every region: the endpoint is
//! `https://ec2.REGION.amazonaws.com/` (`.amazonaws.com.cn` for China regions) unless an
//! endpoint override is given, and the signature carries the region either way.

use std::fmt;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::http::uri::Uri;

use crate::backends::http::{exchange, truncate, HttpsClient, USER_AGENT};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::sigv4::{self, Credentials};

/// The EC2 API version kpool speaks.
pub const API_VERSION: &str = "2016-11-15";
const CONTENT_TYPE: &str = "application/x-www-form-urlencoded; charset=utf-8";
/// Larger answers are refused (a page of 1000 instances is a few MB).
const MAX_BODY: usize = 64 << 20;

/// Parameters of one call, in the order they were set (`Filter.1.Name`, `Tag.2.Key`, …).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Params(Vec<(String, String)>);

impl Params {
    pub fn new() -> Self {
        Params::default()
    }

    /// Sets `key` to `value` (appends; query APIs ignore duplicate keys' later values).
    pub fn set(&mut self, key: impl Into<String>, value: impl Into<String>) -> &mut Self {
        self.0.push((key.into(), value.into()));
        self
    }

    /// Adds the next `Filter.N` with these values.
    pub fn filter(&mut self, name: &str, values: &[&str]) -> &mut Self {
        let n = self.0.iter().filter(|(k, _)| k.starts_with("Filter.") && k.ends_with(".Name")).count() + 1;
        self.set(format!("Filter.{n}.Name"), name);
        for (i, v) in values.iter().enumerate() {
            self.set(format!("Filter.{n}.Value.{}", i + 1), *v);
        }
        self
    }

    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// The form body of `action` with these parameters.
    pub fn encode(&self, action: &str) -> String {
        let mut body = format!("Action={}&Version={API_VERSION}", sigv4::uri_encode(action));
        for (k, v) in &self.0 {
            body.push('&');
            body.push_str(&sigv4::uri_encode(k));
            body.push('=');
            body.push_str(&sigv4::uri_encode(v));
        }
        body
    }
}

/// Why a call failed.
#[derive(Clone, Debug, PartialEq)]
pub enum CallError {
    /// EC2 answered with an error: HTTP status, error code (e.g. `InvalidAMIID.NotFound`;
    /// empty when the body carried none) and message.
    Api { status: u16, code: String, message: String, retry_after: Option<Duration> },
    /// No usable answer: connection failure, timeout, unreadable response.
    Transport(String),
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::Api { status, code, message, .. } if code.is_empty() => write!(f, "HTTP {status}: {message}"),
            CallError::Api { code, message, .. } => write!(f, "{code}: {message}"),
            CallError::Transport(message) => f.write_str(message),
        }
    }
}

/// See the module docs.
pub struct Ec2Client {
    http: HttpsClient,
    endpoint: Option<Uri>,
    credentials: Credentials,
    timeout: Duration,
}

impl fmt::Debug for Ec2Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ec2Client")
            .field("endpoint", &self.endpoint)
            .field("credentials", &self.credentials)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Ec2Client {
    /// A client for `endpoint` (`http(s)://host[:port][/path]`, every region) or AWS's
    /// regional endpoints when `None`. Each call, body included, must finish within
    /// `timeout`. Fails on a malformed endpoint or when HTTPS is needed and the system's
    /// CA certificates cannot be loaded.
    pub fn new(credentials: Credentials, endpoint: Option<&str>, timeout: Duration) -> Result<Self, String> {
        let endpoint = endpoint.map(parse_endpoint).transpose()?;
        let http_only = endpoint.as_ref().is_some_and(|u| u.scheme_str() == Some("http"));
        let http = crate::backends::http::client(http_only)?;
        Ok(Ec2Client { http, endpoint, credentials, timeout })
    }

    /// Sets how long one call may take, answer included.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// The URL calls for `region` go to.
    pub fn endpoint(&self, region: &str) -> Uri {
        if let Some(uri) = &self.endpoint {
            return uri.clone();
        }
        let suffix = if region.starts_with("cn-") { "amazonaws.com.cn" } else { "amazonaws.com" };
        format!("https://ec2.{region}.{suffix}/").parse().expect("region names are validated")
    }

    /// Calls `action` in `region`; the body of a 2xx answer.
    pub async fn call(&self, region: &str, action: &str, params: &Params) -> Result<String, CallError> {
        let uri = self.endpoint(region);
        let body = params.encode(action);
        let amz_date = jiff::Timestamp::now().strftime("%Y%m%dT%H%M%SZ").to_string();
        let host = uri.authority().map(|a| a.as_str().to_string()).unwrap_or_default();
        let mut headers =
            vec![("content-type", CONTENT_TYPE), ("host", host.as_str()), ("x-amz-date", amz_date.as_str())];
        if let Some(token) = &self.credentials.session_token {
            headers.push(("x-amz-security-token", token.as_str()));
        }
        let authorization = sigv4::authorization(
            &self.credentials,
            &sigv4::Request {
                method: "POST",
                path: uri.path(),
                query: "",
                headers: &headers,
                payload: body.as_bytes(),
                region,
                service: "ec2",
                amz_date: &amz_date,
            },
        );
        let mut request = hyper::Request::post(uri);
        for (k, v) in &headers {
            request = request.header(*k, *v);
        }
        let request = request
            .header("authorization", authorization)
            .header("user-agent", USER_AGENT)
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| CallError::Transport(format!("failed to build the request: {e}")))?;
        let answer =
            exchange(&self.http, request, self.timeout, MAX_BODY, "EC2").await.map_err(CallError::Transport)?;
        let (status, retry_after) = (answer.status, answer.retry_after);
        let text = String::from_utf8_lossy(&answer.body).into_owned();
        if (200..300).contains(&status) {
            return Ok(text);
        }
        let (code, message) = parse_error(&text).unwrap_or_else(|| (String::new(), truncate(text.trim(), 200)));
        Err(CallError::Api { status, code, message, retry_after })
    }
}

/// Decodes an answer into `T`.
pub fn from_xml<T: DeserializeOwned>(action: &str, body: &str) -> Result<T, CallError> {
    quick_xml::de::from_str(body).map_err(|e| CallError::Transport(format!("unreadable {action} response: {e}")))
}

fn parse_endpoint(s: &str) -> Result<Uri, String> {
    let uri: Uri = s.parse().map_err(|e| format!("endpoint: {s:?} is not a URL: {e}"))?;
    match (uri.scheme_str(), uri.authority(), uri.query()) {
        (Some("http" | "https"), Some(_), None) => Ok(uri),
        _ => Err(format!("endpoint: {s:?} must be an http:// or https:// URL with a host and no query")),
    }
}

/// Code and message of an error answer: `<Response><Errors><Error>` (EC2) or
/// `<ErrorResponse><Error>` / `<ErrorResponse><Errors><Error>`.
fn parse_error(body: &str) -> Option<(String, String)> {
    #[derive(Deserialize)]
    struct Doc {
        #[serde(rename = "Errors")]
        errors: Option<Errors>,
        #[serde(rename = "Error")]
        error: Option<Item>,
    }
    #[derive(Deserialize)]
    struct Errors {
        #[serde(rename = "Error", default)]
        items: Vec<Item>,
    }
    #[derive(Deserialize)]
    struct Item {
        #[serde(rename = "Code")]
        code: String,
        #[serde(rename = "Message", default)]
        message: String,
    }
    let doc: Doc = quick_xml::de::from_str(body).ok()?;
    let item = doc.error.or_else(|| doc.errors.and_then(|e| e.items.into_iter().next()))?;
    Some((item.code, item.message))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_params_with_numbered_filters() {
        let mut p = Params::new();
        p.filter("tag:kpool.dev/machine", &["kpool-1"]).filter("instance-state-name", &["pending", "running"]);
        p.set("MaxResults", "5");
        assert_eq!(
            p.encode("DescribeInstances"),
            "Action=DescribeInstances&Version=2016-11-15&Filter.1.Name=tag%3Akpool.dev%2Fmachine\
             &Filter.1.Value.1=kpool-1&Filter.2.Name=instance-state-name&Filter.2.Value.1=pending\
             &Filter.2.Value.2=running&MaxResults=5"
        );
        assert_eq!(p.get("MaxResults"), Some("5"));
    }

    #[test]
    fn parses_error_documents() {
        let ec2 = "<?xml version=\"1.0\"?><Response><Errors><Error><Code>InvalidAMIID.NotFound</Code>\
                   <Message>The image id &apos;[ami-1]&apos; does not exist</Message></Error></Errors>\
                   <RequestID>r</RequestID></Response>";
        assert_eq!(
            parse_error(ec2),
            Some(("InvalidAMIID.NotFound".into(), "The image id '[ami-1]' does not exist".into()))
        );
        let moto = "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<ErrorResponse><Errors><Error><Code>AuthFailure</Code>\
                    <Message>AWS was not able to validate the provided access credentials</Message>\
                    <Type>Sender</Type></Error></Errors></ErrorResponse>";
        assert_eq!(parse_error(moto).map(|e| e.0), Some("AuthFailure".into()));
        let sts = "<ErrorResponse><Error><Type>Sender</Type><Code>Throttling</Code><Message>Rate exceeded</Message>\
                   </Error></ErrorResponse>";
        assert_eq!(parse_error(sts), Some(("Throttling".into(), "Rate exceeded".into())));
        assert_eq!(parse_error("<html><body>502 Bad Gateway</body></html>"), None);
        assert_eq!(parse_error("not xml"), None);
    }

    #[test]
    fn endpoints() {
        let creds = Credentials { access_key_id: "a".into(), secret_access_key: "s".into(), session_token: None };
        let aws = Ec2Client::new(creds.clone(), None, Duration::from_secs(1));
        // Without CA certificates on the machine there is nothing more to check.
        if let Ok(aws) = aws {
            assert_eq!(aws.endpoint("us-east-1").to_string(), "https://ec2.us-east-1.amazonaws.com/");
            assert_eq!(aws.endpoint("cn-north-1").to_string(), "https://ec2.cn-north-1.amazonaws.com.cn/");
        }
        let local = Ec2Client::new(creds.clone(), Some("http://127.0.0.1:5000"), Duration::from_secs(1)).unwrap();
        assert_eq!(local.endpoint("eu-west-1").to_string(), "http://127.0.0.1:5000/");
        assert!(!format!("{local:?}").contains("\"s\""));
        for bad in ["127.0.0.1:5000", "ftp://host/", "http://host/?a=b", "not a url"] {
            assert!(Ec2Client::new(creds.clone(), Some(bad), Duration::from_secs(1)).is_err(), "{bad}");
        }
    }
}
