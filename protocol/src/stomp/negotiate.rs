//! Pure CONNECT-time negotiation: protocol version (`accept-version` → `version`) and
//! heart-beating (`heart-beat: cx,cy` against `sx,sy`). No clocks here: the connection turns
//! the negotiated intervals into timers.

use std::fmt;
use std::time::Duration;

use super::error::{StompError, snippet};

/// A STOMP protocol version, ordered oldest to newest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StompVersion {
    V1_0,
    V1_1,
    V1_2,
}

/// Every version this codec speaks, oldest first.
pub const SUPPORTED_VERSIONS: [StompVersion; 3] =
    [StompVersion::V1_0, StompVersion::V1_1, StompVersion::V1_2];

impl StompVersion {
    pub const fn as_str(self) -> &'static str {
        match self {
            StompVersion::V1_0 => "1.0",
            StompVersion::V1_1 => "1.1",
            StompVersion::V1_2 => "1.2",
        }
    }

    /// Parses one version token such as `1.2`; unknown versions are `None`.
    pub fn parse(token: &str) -> Option<StompVersion> {
        SUPPORTED_VERSIONS.into_iter().find(|v| v.as_str() == token)
    }

    /// Header escaping exists from 1.1 on; 1.0 frames carry header bytes verbatim.
    pub const fn escapes_headers(self) -> bool {
        !matches!(self, StompVersion::V1_0)
    }
}

impl fmt::Display for StompVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Chooses the session's version from a CONNECT/STOMP frame's `accept-version` header.
///
/// A missing header means a 1.0-only client (spec). The value is a comma-separated list; we
/// ignore versions we do not know (a client may offer `2.0`), empty items and spaces around
/// items, and pick the highest version that is also in `supported`. Nothing in common is an
/// error whose `supported` field is ready for the ERROR frame's `version` header.
pub fn negotiate_version(
    accept_version: Option<&str>,
    supported: &[StompVersion],
) -> Result<StompVersion, StompError> {
    let chosen = match accept_version {
        None => supported
            .contains(&StompVersion::V1_0)
            .then_some(StompVersion::V1_0),
        Some(list) => list
            .split(',')
            .filter_map(|item| StompVersion::parse(item.trim_matches(' ')))
            .filter(|v| supported.contains(v))
            .max(),
    };
    chosen.ok_or_else(|| {
        let mut sorted = supported.to_vec();
        sorted.sort();
        sorted.dedup();
        StompError::NoCommonVersion {
            offered: snippet(accept_version.unwrap_or("1.0").as_bytes()),
            supported: sorted
                .iter()
                .map(|v| v.as_str())
                .collect::<Vec<_>>()
                .join(","),
        }
    })
}

/// One side's `heart-beat` header: what it can send and what it wants to receive, in
/// milliseconds, 0 meaning "cannot" / "does not want".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HeartBeat {
    /// Smallest interval at which this side guarantees to send something (`cx` or `sx`).
    pub send_ms: u32,
    /// Interval at which this side would like to receive something (`cy` or `sy`).
    pub recv_ms: u32,
}

impl HeartBeat {
    /// No heart-beats either way: the meaning of a missing header.
    pub const OFF: HeartBeat = HeartBeat {
        send_ms: 0,
        recv_ms: 0,
    };

    /// Reads an optional `heart-beat` header; missing means [`HeartBeat::OFF`] (spec).
    pub fn from_header(value: Option<&str>) -> Result<HeartBeat, StompError> {
        value.map_or(Ok(HeartBeat::OFF), HeartBeat::parse)
    }

    /// Parses `x,y`: exactly two decimal integers that fit in `u32`, separated by one comma.
    /// Spaces around a number are tolerated (some 1.0-era clients pad headers); signs, other
    /// separators, empty numbers and overflow are errors.
    pub fn parse(value: &str) -> Result<HeartBeat, StompError> {
        let bad = || StompError::InvalidHeartBeat {
            value: snippet(value.as_bytes()),
        };
        let number = |s: &str| -> Result<u32, StompError> {
            let s = s.trim_matches(' ');
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            s.parse::<u32>().map_err(|_| bad())
        };
        let (x, y) = value.split_once(',').ok_or_else(bad)?;
        Ok(HeartBeat {
            send_ms: number(x)?,
            recv_ms: number(y)?,
        })
    }
}

impl fmt::Display for HeartBeat {
    /// The header value, `send,recv`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{},{}", self.send_ms, self.recv_ms)
    }
}

/// The outcome of heart-beat negotiation, in milliseconds, 0 meaning off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HeartBeatIntervals {
    /// How often the client must send something (and the server may expect it).
    pub client_to_server_ms: u32,
    /// How often the server must send something (an EOL when idle).
    pub server_to_client_ms: u32,
}

impl HeartBeatIntervals {
    pub fn client_to_server(&self) -> Option<Duration> {
        interval(self.client_to_server_ms)
    }

    pub fn server_to_client(&self) -> Option<Duration> {
        interval(self.server_to_client_ms)
    }
}

fn interval(ms: u32) -> Option<Duration> {
    (ms != 0).then(|| Duration::from_millis(u64::from(ms)))
}

/// The spec's rule: client→server beats happen only if the client can send (`cx`) and the server
/// wants them (`sy`), every `max(cx, sy)` ms; server→client likewise with `sx` and `cy`.
///
/// How much slack to allow before declaring the peer dead is the connection's choice (the spec
/// only says to be tolerant); this function returns the nominal intervals.
pub fn negotiate_heart_beat(client: HeartBeat, server: HeartBeat) -> HeartBeatIntervals {
    let pick = |can_send: u32, wants: u32| {
        if can_send == 0 || wants == 0 {
            0
        } else {
            can_send.max(wants)
        }
    };
    HeartBeatIntervals {
        client_to_server_ms: pick(client.send_ms, server.recv_ms),
        server_to_client_ms: pick(server.send_ms, client.recv_ms),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use StompVersion::*;

    #[test]
    fn version_negotiation() {
        let all = &SUPPORTED_VERSIONS;
        assert_eq!(negotiate_version(None, all).unwrap(), V1_0);
        assert_eq!(negotiate_version(Some("1.2"), all).unwrap(), V1_2);
        assert_eq!(negotiate_version(Some("1.0,1.1,2.0"), all).unwrap(), V1_1);
        assert_eq!(negotiate_version(Some("1.2,1.0"), all).unwrap(), V1_2);
        assert_eq!(negotiate_version(Some(" 1.1 , ,1.0"), all).unwrap(), V1_1);
        assert_eq!(
            negotiate_version(Some("1.1,1.2"), &[V1_0, V1_1]).unwrap(),
            V1_1
        );
        for bad in ["", "2.0", "1.3,2.1", "1.2x", ","] {
            match negotiate_version(Some(bad), all) {
                Err(StompError::NoCommonVersion { supported, .. }) => {
                    assert_eq!(supported, "1.0,1.1,1.2")
                }
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        // A 1.0-only client against a server that dropped 1.0.
        match negotiate_version(None, &[V1_2, V1_1]) {
            Err(StompError::NoCommonVersion { offered, supported }) => {
                assert_eq!(offered, "1.0");
                assert_eq!(supported, "1.1,1.2");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn version_names() {
        for v in SUPPORTED_VERSIONS {
            assert_eq!(StompVersion::parse(v.as_str()), Some(v));
        }
        assert!(V1_0 < V1_1 && V1_1 < V1_2);
        assert!(!V1_0.escapes_headers() && V1_1.escapes_headers() && V1_2.escapes_headers());
    }

    #[test]
    fn heart_beat_header_parsing() {
        assert_eq!(HeartBeat::from_header(None).unwrap(), HeartBeat::OFF);
        let hb = HeartBeat::parse("1000,5000").unwrap();
        assert_eq!((hb.send_ms, hb.recv_ms), (1000, 5000));
        assert_eq!(hb.to_string(), "1000,5000");
        assert_eq!(HeartBeat::parse(" 0 , 10 ").unwrap().recv_ms, 10);
        assert_eq!(HeartBeat::parse("4294967295,0").unwrap().send_ms, u32::MAX);
        for bad in [
            "",
            "1000",
            "1000,",
            ",1000",
            "1,2,3",
            "-1,0",
            "+1,0",
            "1;2",
            "a,b",
            "1.5,2",
            "4294967296,0",
            "1,\t2",
        ] {
            assert!(
                matches!(
                    HeartBeat::parse(bad),
                    Err(StompError::InvalidHeartBeat { .. })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn heart_beat_negotiation_follows_the_spec() {
        let hb = |send_ms, recv_ms| HeartBeat { send_ms, recv_ms };
        // Both directions on: the slower of offer and wish wins.
        let n = negotiate_heart_beat(hb(1000, 2000), hb(3000, 500));
        assert_eq!(n.client_to_server_ms, 1000);
        assert_eq!(n.server_to_client_ms, 3000);
        assert_eq!(n.client_to_server(), Some(Duration::from_millis(1000)));
        // Client cannot send: nothing client→server, whatever the server wants.
        let n = negotiate_heart_beat(hb(0, 2000), hb(3000, 500));
        assert_eq!((n.client_to_server_ms, n.server_to_client_ms), (0, 3000));
        assert_eq!(n.client_to_server(), None);
        // Server does not want any / client does not want any.
        let n = negotiate_heart_beat(hb(1000, 0), hb(3000, 0));
        assert_eq!((n.client_to_server_ms, n.server_to_client_ms), (0, 0));
        assert_eq!(
            negotiate_heart_beat(HeartBeat::OFF, HeartBeat::OFF),
            HeartBeatIntervals::default()
        );
    }
}
