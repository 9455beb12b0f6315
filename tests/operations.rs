//! The operations endpoints over real HTTP on loopback: /metrics, /healthz, /readyz.

use std::sync::Arc;
use std::time::Duration;

use kpool::controllers::metrics::{serve, Metrics};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).await.unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).await.unwrap();
    let code = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (code, body)
}

#[tokio::test]
async fn health_readiness_and_metrics_are_served() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let metrics = Arc::new(Metrics::new());
    tokio::spawn(serve(listener, metrics.clone()));

    assert_eq!(get(addr, "/healthz").await.0, 200);
    assert_eq!(get(addr, "/readyz").await.0, 503, "not ready before the controllers start");
    metrics.set_ready(true);
    assert_eq!(get(addr, "/readyz").await.0, 200);

    metrics.reconciled("instance", Duration::from_millis(12));
    metrics.set_leader(true);
    let (code, body) = get(addr, "/metrics").await;
    assert_eq!(code, 200);
    assert!(body.contains("kpool_reconciles_total{kind=\"instance\"} 1"), "{body}");
    assert!(body.contains("kpool_leader 1"), "{body}");
    assert!(body.trim_end().ends_with("# EOF"), "OpenMetrics text ends with EOF");
    assert_eq!(get(addr, "/nope").await.0, 404);
}
