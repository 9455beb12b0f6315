//! The HTTP plumbing the cloud API clients share (EC2's query API, Lambda's REST API):
//! a hyper client over rustls with ring, one exchange with a deadline and a bounded
//! answer, and readable transport errors.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper_rustls::{ConfigBuilderExt, HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Value of the `user-agent` header.
pub const USER_AGENT: &str = concat!("kpool/", env!("CARGO_PKG_VERSION"));

/// An HTTP/1 client for `http://` and `https://` URLs.
pub type HttpsClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A client. `http_only`: the peer is plain HTTP (an emulator on loopback), so the
/// system's CA certificates are not needed; otherwise failing to load them is an error.
pub fn client(http_only: bool) -> Result<HttpsClient, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("failed to set up TLS: {e}"))?;
    let tls = if http_only {
        tls.with_root_certificates(rustls::RootCertStore::empty())
    } else {
        tls.with_native_roots().map_err(|e| format!("failed to load the system's CA certificates: {e}"))?
    };
    let connector =
        HttpsConnectorBuilder::new().with_tls_config(tls.with_no_client_auth()).https_or_http().enable_http1().build();
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}

/// What came back: status, `retry-after` in seconds when given, the body.
pub struct Answer {
    pub status: u16,
    pub retry_after: Option<Duration>,
    pub body: Bytes,
}

/// Sends `request` and reads the answer (a longer one than `max_body` bytes is an error),
/// all within `timeout`. The error is a message naming `peer`, for a transport error.
pub async fn exchange(
    http: &HttpsClient,
    request: hyper::Request<Full<Bytes>>,
    timeout: Duration,
    max_body: usize,
    peer: &str,
) -> Result<Answer, String> {
    let exchange = async {
        let response = http.request(request).await.map_err(|e| transport_message(peer, &e))?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = Limited::new(response.into_body(), max_body)
            .collect()
            .await
            .map_err(|e| format!("failed to read the response of {peer}: {e}"))?
            .to_bytes();
        Ok(Answer { status, retry_after, body })
    };
    tokio::time::timeout(timeout, exchange).await.map_err(|_| format!("no answer from {peer} within {timeout:?}"))?
}

/// The error chain of a hyper error (the top level alone says little: "client error").
fn transport_message(peer: &str, err: &(dyn std::error::Error + 'static)) -> String {
    let mut message = format!("failed to reach {peer}: {err}");
    let mut source = err.source();
    while let Some(e) = source {
        message.push_str(&format!(": {e}"));
        source = e.source();
    }
    message
}

/// At most `max` characters of `s`, with `…` when cut.
pub fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncates_on_char_boundaries() {
        assert_eq!(truncate("ééé", 2), "éé…");
        assert_eq!(truncate("ab", 2), "ab");
    }

    #[tokio::test]
    async fn a_peer_that_does_not_answer_is_named_in_the_error() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let request = hyper::Request::get(url).body(Full::new(Bytes::new())).unwrap();
        let err = exchange(&client(true).unwrap(), request, Duration::from_millis(200), 1024, "EC2").await.err();
        assert_eq!(err.as_deref(), Some("no answer from EC2 within 200ms"));
        drop(listener);
    }
}
