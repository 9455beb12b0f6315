//! A small HTTP/1.1 proxy in front of moto that records every request and can answer
//! the next calls of an EC2 action with an error, hold them back for a while, or forward
//! them and lose moto's answer (the call takes effect, the caller never learns it).
//!
//! One request per connection: each answer carries `Connection: close`.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What to do to a call instead of (or before) forwarding it.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Answer with this HTTP status and EC2 error, without forwarding.
    Error { status: u16, code: &'static str, message: &'static str },
    /// Answer with this HTTP status and body, without forwarding.
    Respond { status: u16, body: String },
    /// Forward after this delay.
    Delay(Duration),
    /// Forward, then lose the answer this way.
    LoseReply(Lost),
}

/// How a forwarded call's answer is lost.
#[derive(Clone, Copy, Debug)]
pub enum Lost {
    /// The connection is closed without an answer.
    Drop,
    /// The caller gets this HTTP status (a 5xx) with an error body instead.
    Status(u16),
    /// Nothing comes back for this long, then the connection is closed.
    Hang(Duration),
}

/// One request the proxy saw, and its answer.
#[derive(Clone, Debug)]
pub struct Seen {
    pub action: String,
    pub params: BTreeMap<String, String>,
    /// The request head and body as received.
    pub raw: String,
    pub status: u16,
    pub response: String,
}

#[derive(Default)]
struct State {
    faults: VecDeque<(String, Fault)>,
    seen: Vec<Seen>,
}

/// See the module docs.
#[derive(Clone)]
pub struct Proxy {
    /// `http://127.0.0.1:PORT`
    pub endpoint: String,
    state: Arc<Mutex<State>>,
}

impl Proxy {
    /// A proxy on a free loopback port in front of `upstream` (`http://host:port`),
    /// serving until the test's runtime ends.
    pub async fn start(upstream: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy");
        let endpoint = format!("http://{}", listener.local_addr().expect("proxy address"));
        let upstream = upstream.trim_start_matches("http://").trim_end_matches('/').to_string();
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (state, upstream) = (shared.clone(), upstream.clone());
                tokio::spawn(async move {
                    if let Err(e) = serve(client, &upstream, &state).await {
                        eprintln!("proxy: {e}");
                    }
                });
            }
        });
        Proxy { endpoint, state }
    }

    /// The next `n` calls of `action` meet `fault`.
    pub fn fail_next(&self, action: &str, n: usize, fault: Fault) {
        let mut state = self.state.lock().unwrap();
        for _ in 0..n {
            state.faults.push_back((action.to_string(), fault.clone()));
        }
    }

    /// The calls of `action` so far (every call when `action` is empty).
    pub fn seen(&self, action: &str) -> Vec<Seen> {
        self.state.lock().unwrap().seen.iter().filter(|s| action.is_empty() || s.action == action).cloned().collect()
    }
}

async fn serve(mut client: TcpStream, upstream: &str, state: &Mutex<State>) -> std::io::Result<()> {
    let Some((head, body)) = read_message(&mut client, true).await? else { return Ok(()) };
    let params = parse_form(&String::from_utf8_lossy(&body));
    let action = params.get("Action").cloned().unwrap_or_default();
    let fault = {
        let mut s = state.lock().unwrap();
        let i = s.faults.iter().position(|(a, _)| *a == action);
        i.and_then(|i| s.faults.remove(i)).map(|(_, f)| f)
    };
    let answer = match fault {
        Some(Fault::Error { status, code, message }) => {
            let xml = format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{code}</Code>\
                 <Message>{message}</Message></Error></Errors><RequestID>injected</RequestID></Response>"
            );
            canned(status, &xml)
        }
        Some(Fault::Respond { status, body }) => canned(status, &body),
        other => {
            if let Some(Fault::Delay(d)) = other {
                tokio::time::sleep(d).await;
            }
            let mut up = TcpStream::connect(upstream).await?;
            up.write_all(&head).await?;
            up.write_all(&body).await?;
            let (rhead, rbody) = read_message(&mut up, false).await?.unwrap_or_default();
            let answer = [rhead, rbody].concat();
            match other {
                Some(Fault::LoseReply(lost)) => {
                    let text = String::from_utf8_lossy(&answer).into_owned();
                    let raw = format!("{}{}", String::from_utf8_lossy(&head), String::from_utf8_lossy(&body));
                    let response = format!("lost ({lost:?}): {text}");
                    state.lock().unwrap().seen.push(Seen { action, params, raw, status: 0, response });
                    match lost {
                        Lost::Drop => {}
                        Lost::Hang(d) => tokio::time::sleep(d).await,
                        Lost::Status(status) => {
                            let xml = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error>\
                                       <Code>InternalError</Code><Message>An internal error has occurred</Message>\
                                       </Error></Errors><RequestID>injected</RequestID></Response>";
                            client.write_all(&canned(status, xml)).await?;
                        }
                    }
                    return client.shutdown().await;
                }
                _ => answer,
            }
        }
    };
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let response = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    let raw = format!("{}{}", String::from_utf8_lossy(&head), String::from_utf8_lossy(&body));
    state.lock().unwrap().seen.push(Seen { action, params, raw, status, response });
    client.write_all(&answer).await?;
    client.shutdown().await
}

fn canned(status: u16, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status} Injected\r\nContent-Type: text/xml;charset=UTF-8\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// One HTTP message: its head (through the blank line) and body (`Content-Length`
/// bytes, or everything up to EOF for an answer without one). `None` on a connection
/// closed before any byte.
async fn read_message<S: AsyncRead + Unpin>(s: &mut S, request: bool) -> std::io::Result<Option<(Vec<u8>, Vec<u8>)>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return if buf.is_empty() { Ok(None) } else { Err(std::io::ErrorKind::UnexpectedEof.into()) };
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let mut body = buf.split_off(end);
    let head = String::from_utf8_lossy(&buf).to_ascii_lowercase();
    let length =
        head.lines().find_map(|l| l.strip_prefix("content-length:")).and_then(|v| v.trim().parse::<usize>().ok());
    match length {
        Some(len) => {
            while body.len() < len {
                let n = s.read(&mut chunk).await?;
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            }
        }
        None if !request => {
            s.read_to_end(&mut body).await?;
        }
        None => {}
    }
    Ok(Some((buf, body)))
}

/// The parameters of a form-encoded body.
pub fn parse_form(body: &str) -> BTreeMap<String, String> {
    body.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
