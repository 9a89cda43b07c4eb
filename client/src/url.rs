//! Broker URLs: `tcp://host:port`, `tls://host:port` and `failover:(tcp://a:1,tls://b:2)[?options]`.
//!
//! Parsing is separate from connecting so a bad URL fails when the factory is built, with a typed
//! reason, rather than on first connect.

use std::fmt;

use crate::error::{Error, Result};

/// One broker address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Host name or IP address (an IPv6 address without its brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// `tls://`: TLS over TCP (see [`crate::TlsOptions`]).
    pub tls: bool,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "tls" } else { "tcp" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

/// A parsed broker URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerUrl {
    /// `tcp://host:port` or `tls://host:port` (the endpoint says which).
    Tcp(Endpoint),
    /// `failover:(tcp://a:1,tcp://b:2)?k=v&...`: the endpoints in order and the options as given.
    Failover {
        /// The brokers to try, in order.
        endpoints: Vec<Endpoint>,
        /// `key=value` options after `?`, unparsed.
        options: Vec<(String, String)>,
    },
}

impl BrokerUrl {
    /// Parses a broker URL.
    pub fn parse(url: &str) -> Result<BrokerUrl> {
        let bad = |reason| Error::InvalidUrl {
            url: url.to_string(),
            reason,
        };
        let s = url.trim();
        if let Some(rest) = s.strip_prefix("failover:") {
            let (list, query) = match rest.strip_prefix('(') {
                Some(inner) => {
                    let close = inner
                        .find(')')
                        .ok_or_else(|| bad("missing ')' in failover list"))?;
                    let after = &inner[close + 1..];
                    let query = match after {
                        "" => "",
                        q => q
                            .strip_prefix('?')
                            .ok_or_else(|| bad("expected '?' after ')'"))?,
                    };
                    (&inner[..close], query)
                }
                // `failover:tcp://a:1,tcp://b:2` (no parentheses) is accepted as well.
                None => match rest.split_once('?') {
                    Some((l, q)) => (l, q),
                    None => (rest, ""),
                },
            };
            let endpoints = list
                .split(',')
                .map(|e| parse_tcp(e.trim(), url))
                .collect::<Result<Vec<_>>>()?;
            let mut options = Vec::new();
            for kv in query.split('&').filter(|kv| !kv.is_empty()) {
                let (k, v) = kv
                    .split_once('=')
                    .ok_or_else(|| bad("an option without '='"))?;
                options.push((k.to_string(), v.to_string()));
            }
            return Ok(BrokerUrl::Failover { endpoints, options });
        }
        parse_tcp(s, url).map(BrokerUrl::Tcp)
    }
}

fn parse_tcp(s: &str, url: &str) -> Result<Endpoint> {
    let bad = |reason| Error::InvalidUrl {
        url: url.to_string(),
        reason,
    };
    let (tls, rest) = match s.split_once("://") {
        Some(("tcp", rest)) => (false, rest),
        Some(("tls", rest)) => (true, rest),
        Some(_) => {
            return Err(bad(
                "unsupported scheme: use tcp://, tls:// or failover:(...)",
            ));
        }
        None => return Err(bad("expected tcp://host:port or tls://host:port")),
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains(['/', '?', '@']) {
        return Err(bad(
            "a tcp url is tcp://host:port, without path, query or user",
        ));
    }
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| bad("missing ']' after IPv6 host"))?;
        let port = after
            .strip_prefix(':')
            .ok_or_else(|| bad("missing :port"))?;
        (host, port)
    } else {
        rest.rsplit_once(':').ok_or_else(|| bad("missing :port"))?
    };
    if host.is_empty() {
        return Err(bad("empty host"));
    }
    let port: u16 = port
        .parse()
        .map_err(|_| bad("port is not a number in 1-65535"))?;
    if port == 0 {
        return Err(bad("port is not a number in 1-65535"));
    }
    Ok(Endpoint {
        host: host.to_string(),
        port,
        tls,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(host: &str, port: u16) -> Endpoint {
        Endpoint {
            host: host.into(),
            port,
            tls: false,
        }
    }

    #[test]
    fn tls_urls() {
        let u = BrokerUrl::parse("tls://broker.example:61617").unwrap();
        let tls = Endpoint {
            host: "broker.example".into(),
            port: 61617,
            tls: true,
        };
        assert_eq!(u, BrokerUrl::Tcp(tls.clone()));
        assert_eq!(tls.to_string(), "tls://broker.example:61617");
        let u = BrokerUrl::parse("failover:(tls://a:1,tcp://b:2)").unwrap();
        let BrokerUrl::Failover { endpoints, .. } = u else {
            panic!()
        };
        assert!(endpoints[0].tls && !endpoints[1].tls);
    }

    #[test]
    fn tcp_urls() {
        assert_eq!(
            BrokerUrl::parse("tcp://localhost:61616").unwrap(),
            BrokerUrl::Tcp(ep("localhost", 61616))
        );
        assert_eq!(
            BrokerUrl::parse(" tcp://10.0.0.1:1/ ").unwrap(),
            BrokerUrl::Tcp(ep("10.0.0.1", 1))
        );
        assert_eq!(
            BrokerUrl::parse("tcp://[::1]:5").unwrap(),
            BrokerUrl::Tcp(ep("::1", 5))
        );
        assert_eq!(ep("::1", 5).to_string(), "tcp://[::1]:5");
    }

    #[test]
    fn bad_urls_say_why() {
        for (u, why) in [
            ("localhost:1", "expected tcp://"),
            ("http://a:1", "unsupported scheme"),
            ("tcp://a", "missing :port"),
            ("tcp://a:0", "port"),
            ("tcp://a:70000", "port"),
            ("tcp://:1", "empty host"),
            ("tcp://a:1/x", "without path"),
            ("tcp://[::1:5", "']'"),
            ("failover:(tcp://a:1", "')'"),
            ("failover:(tcp://a:1,b:2)", "expected tcp://"),
            ("failover:(tcp://a:1)x", "'?'"),
        ] {
            let e = BrokerUrl::parse(u).unwrap_err();
            assert!(matches!(e, Error::InvalidUrl { .. }), "{u}: {e:?}");
            assert!(e.to_string().contains(why), "{u}: {e}");
        }
    }

    #[test]
    fn failover_urls() {
        let u = BrokerUrl::parse(
            "failover:(tcp://a:1, tcp://b:2)?randomize=false&maxReconnectAttempts=5",
        )
        .unwrap();
        assert_eq!(
            u,
            BrokerUrl::Failover {
                endpoints: vec![ep("a", 1), ep("b", 2)],
                options: vec![
                    ("randomize".into(), "false".into()),
                    ("maxReconnectAttempts".into(), "5".into())
                ],
            }
        );
        let u = BrokerUrl::parse("failover:tcp://a:1,tcp://b:2").unwrap();
        assert!(matches!(u, BrokerUrl::Failover { ref endpoints, .. } if endpoints.len() == 2));
    }
}
