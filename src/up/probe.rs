//! Reading a lane's `/health` and `/metrics` over loopback HTTP, with a bounded time and size.
//!
//! A lane is a local process the supervisor started, so a tiny HTTP/1.1 client (one GET, read to
//! close) is enough and keeps an HTTP client library out of the CLI. Parsing is separate and
//! pure: a lane that answers garbage is reported as such, never a panic.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::policy::Probe;

/// The broker's HTTP request buffer is 16 KiB; a health answer is far smaller. Metrics grow with
/// the number of destinations, so they get more room.
const MAX_HEALTH: usize = 16 * 1024;
const MAX_METRICS: usize = 4 * 1024 * 1024;

/// What one GET returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpAnswer {
    pub status: u16,
    pub body: String,
}

/// `GET path` on `addr`, all of it (connect, write, read) within `timeout`; `None` if the lane
/// did not answer in time, refused, or answered something that is not HTTP.
pub async fn get(
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
    max: usize,
) -> Option<HttpAnswer> {
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut buf = Vec::with_capacity(1024);
        // `take` bounds what a misbehaving peer can make us hold.
        (&mut s).take(max as u64).read_to_end(&mut buf).await.ok()?;
        parse_response(&buf)
    };
    tokio::time::timeout(timeout, fetch).await.ok().flatten()
}

/// Status code and body of an HTTP/1.x response read to the end.
pub fn parse_response(raw: &[u8]) -> Option<HttpAnswer> {
    let text = std::str::from_utf8(raw).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let mut status_line = head.lines().next()?.split_whitespace();
    if !status_line.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let status = status_line.next()?.parse().ok()?;
    Some(HttpAnswer {
        status,
        body: body.to_owned(),
    })
}

/// One probe of a lane's `/health` as the router sees it.
pub async fn health(http: SocketAddr, timeout: Duration) -> (Probe, Option<Health>) {
    match get(http, "/health", timeout, MAX_HEALTH).await {
        None => (Probe::Unreachable, None),
        Some(a) => {
            let h = parse_health(&a.body);
            let probe = match &h {
                Some(h) if a.status == 200 && h.role == "active" => {
                    Probe::Active { epoch: h.epoch }
                }
                _ => Probe::NotActive,
            };
            (probe, h)
        }
    }
}

pub async fn metrics(http: SocketAddr, timeout: Duration) -> Option<String> {
    get(http, "/metrics", timeout, MAX_METRICS)
        .await
        .filter(|a| a.status == 200)
        .map(|a| a.body)
}

/// The fields of a lane's `/health` JSON that `status` shows.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct Health {
    pub role: String,
    #[serde(default)]
    pub epoch: Option<u64>,
    #[serde(default)]
    pub state: Option<String>,
}

pub fn parse_health(body: &str) -> Option<Health> {
    serde_json::from_str(body.trim()).ok()
}

/// `(kind, name, depth)` of every destination in a Prometheus exposition, from
/// `tandem_destination_depth{kind="queue",name="orders"} 42`.
pub fn queue_depths(metrics: &str) -> Vec<(String, String, u64)> {
    let mut out = Vec::new();
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix("tandem_destination_depth{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let Ok(depth) = value.trim().parse::<u64>() else {
            continue;
        };
        let label = |key: &str| -> Option<String> {
            let start = labels.find(&format!("{key}=\""))? + key.len() + 2;
            // Names cannot hold `"` (escaped if they did), so the next unescaped quote ends it.
            let mut end = start;
            let bytes = labels.as_bytes();
            while end < bytes.len() && !(bytes[end] == b'"' && bytes[end - 1] != b'\\') {
                end += 1;
            }
            Some(
                labels
                    .get(start..end)?
                    .replace("\\\"", "\"")
                    .replace("\\\\", "\\"),
            )
        };
        if let (Some(kind), Some(name)) = (label("kind"), label("name")) {
            out.push((kind, name, depth));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_are_parsed_or_refused() {
        let a = parse_response(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 2\r\n\r\n{}")
            .unwrap();
        assert_eq!((a.status, a.body.as_str()), (503, "{}"));
        for bad in [
            &b""[..],
            b"HTTP/1.1 200 OK\r\n",
            b"SSH-2.0-OpenSSH\r\n\r\n",
            b"HTTP/1.1 abc\r\n\r\n",
            b"\xff\xfe\r\n\r\n",
        ] {
            assert_eq!(parse_response(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn health_bodies() {
        let h = parse_health(
            "{\"state\":\"ok\",\"role\":\"active\",\"lane\":\"a\",\"epoch\":3,\"version\":\"0.1.0\",\"uptime_secs\":1}\n",
        )
        .unwrap();
        assert_eq!((h.role.as_str(), h.epoch), ("active", Some(3)));
        let h = parse_health("{\"role\":\"dormant\",\"epoch\":null}").unwrap();
        assert_eq!(h.epoch, None);
        assert_eq!(parse_health("<html>"), None);
    }

    #[test]
    fn depths_from_metrics() {
        let m = "# HELP tandem_destination_depth Messages.\n# TYPE tandem_destination_depth gauge\n\
                 tandem_destination_depth{kind=\"queue\",name=\"orders\"} 42\n\
                 tandem_destination_depth{kind=\"topic\",name=\"a\\\"b\"} 0\n\
                 tandem_destination_depth{kind=\"queue\",name=\"x\"} notanumber\n\
                 tandem_destination_inflight{kind=\"queue\",name=\"orders\"} 3\n";
        assert_eq!(
            queue_depths(m),
            vec![
                ("queue".to_owned(), "orders".to_owned(), 42),
                ("topic".to_owned(), "a\"b".to_owned(), 0)
            ]
        );
    }

    #[tokio::test]
    async fn an_unreachable_lane_is_reported_within_the_timeout() {
        // A bound but never-accepting listener: connect succeeds (backlog), no answer comes.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t0 = std::time::Instant::now();
        let (p, h) = health(addr, Duration::from_millis(200)).await;
        assert_eq!((p, h), (Probe::Unreachable, None));
        assert!(t0.elapsed() < Duration::from_secs(5));
        drop(l);
        assert_eq!(
            health(addr, Duration::from_millis(200)).await.0,
            Probe::Unreachable
        );
    }
}
