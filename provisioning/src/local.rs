//! "The same topology on one machine": the lanes as processes sharing one directory, a TCP proxy that plays
//! the load balancer by following each lane's `/health`, and a monitor that restarts a lane that dies.
//!
//! This module only *describes* the layout ([`LocalLayout`]); the CLI executes it. Nothing here touches the
//! file system or the network, so the layout is a pure function of the spec and the base directory.
//!
//! Ports: the proxy listens on the spec's ports (what clients use, as on AWS); lane *n* (1-based) listens on
//! each port + 10·n, all bound to 127.0.0.1 so only the proxy reaches them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::spec::{Ports, TenantSpec};

/// Offset between the proxy's port and lane n's port, per lane.
pub const LANE_PORT_STEP: u16 = 10;

/// Ports one lane listens on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LanePorts {
    pub jms: u16,
    pub stomp: u16,
    pub http: u16,
}

/// The ports of `lanes` lanes derived from the spec's ports, or why they cannot be derived (overflow or a
/// collision with another lane's or the proxy's port).
pub fn lane_ports(ports: &Ports, lanes: u8) -> Result<Vec<LanePorts>, String> {
    let mut all: BTreeMap<u16, String> = BTreeMap::new();
    for (name, p) in [
        ("proxy jms", ports.jms),
        ("proxy stomp", ports.stomp),
        ("proxy http", ports.http),
    ] {
        all.insert(p, name.to_owned());
    }
    let mut out = Vec::new();
    for n in 1..=u16::from(lanes) {
        let off = LANE_PORT_STEP * n;
        let derive = |base: u16, what: &str| {
            base.checked_add(off)
                .ok_or_else(|| format!("lane {n}'s {what} port ({base} + {off}) is above 65535"))
        };
        let lp = LanePorts {
            jms: derive(ports.jms, "jms")?,
            stomp: derive(ports.stomp, "stomp")?,
            http: derive(ports.http, "http")?,
        };
        for (what, p) in [("jms", lp.jms), ("stomp", lp.stomp), ("http", lp.http)] {
            let name = format!("lane {n} {what}");
            if let Some(other) = all.insert(p, name.clone()) {
                return Err(format!("local {name} port {p} collides with {other}"));
            }
        }
        out.push(lp);
    }
    Ok(out)
}

/// Everything the CLI needs to run a tenant locally.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalLayout {
    pub tenant: String,
    pub model: String,
    pub base_dir: PathBuf,
    /// The shared volume: journal and lease live here (EFS's role on AWS).
    pub shared_dir: PathBuf,
    /// Where dead-lettered messages are written when the spec has a data sink (the S3 bucket's role).
    pub data_sink_dir: Option<PathBuf>,
    pub lanes: Vec<LocalLane>,
    pub proxy: LocalProxy,
    pub monitor: LocalMonitor,
}

/// One lane process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalLane {
    /// "a" or "b".
    pub name: String,
    pub ports: LanePorts,
    /// Arguments after the `tandem` binary.
    pub args: Vec<String>,
    /// Environment: the same `TANDEM_*` contract as the AWS lanes (see the crate docs).
    pub env: BTreeMap<String, String>,
    pub log_file: PathBuf,
    pub pid_file: PathBuf,
    /// Where the monitor and the proxy probe this lane: `http://127.0.0.1:<http>/health`.
    pub health_url: String,
}

/// The load balancer's stand-in: forwards each listen port to the lane whose `/health` answers 200.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalProxy {
    pub bind: String,
    /// (listen port, name, per-lane target port) for jms, stomp and http.
    pub routes: Vec<ProxyRoute>,
    pub health_path: String,
    pub check_interval_ms: u64,
    pub check_timeout_ms: u64,
    /// Consecutive results needed to change a lane's state, as on the NLB.
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
    /// Close client connections to a lane that turns unhealthy (clients then reconnect to the new active).
    pub close_on_unhealthy: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyRoute {
    pub name: String,
    pub listen_port: u16,
    /// Target port on each lane, in lane order.
    pub lane_ports: Vec<u16>,
}

/// Auto-healing: restart a lane process that exits, with bounded exponential backoff.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalMonitor {
    pub restart_backoff_initial_ms: u64,
    pub restart_backoff_max_ms: u64,
    /// A lane that stays up this long gets its backoff reset.
    pub backoff_reset_after_ms: u64,
    /// Give up (and report) after this many restarts without a reset; never loop forever.
    pub max_restarts_without_reset: u32,
    pub state_file: PathBuf,
}

/// The local layout for a validated spec, rooted at `base_dir`.
///
/// # Panics
/// If the spec's ports cannot be laid out locally, which [`TenantSpec::validate`] rejects.
pub fn plan(spec: &TenantSpec, base_dir: &Path) -> LocalLayout {
    let lane_ports =
        lane_ports(&spec.ports, spec.lanes).expect("validated spec: local ports are derivable");
    let base_dir = base_dir.to_path_buf();
    let shared_dir = base_dir.join("shared");
    let data_sink_dir = spec.data_sink.then(|| base_dir.join("data-sink"));
    let lanes: Vec<LocalLane> = lane_ports
        .iter()
        .zip(["a", "b"])
        .map(|(ports, name)| {
            let dir = base_dir.join(format!("lane-{name}"));
            let env = crate::lane_env(
                spec,
                name,
                &shared_dir.display().to_string(),
                "127.0.0.1",
                *ports,
                data_sink_dir
                    .as_ref()
                    .map(|d| format!("file://{}", d.display()))
                    .as_deref(),
            );
            LocalLane {
                name: name.to_owned(),
                ports: *ports,
                // Flags, not only the environment: `tandem run` reads these, and they win over
                // whatever `TANDEM_*` variables the operator's shell happens to export.
                args: [
                    "run",
                    "--lane",
                    name,
                    "--shared-dir",
                    &shared_dir.display().to_string(),
                    "--listen",
                    &format!("127.0.0.1:{}", ports.jms),
                    "--stomp",
                    &format!("127.0.0.1:{}", ports.stomp),
                    "--http",
                    &format!("127.0.0.1:{}", ports.http),
                ]
                .map(str::to_owned)
                .to_vec(),
                env,
                log_file: dir.join("tandem.log"),
                pid_file: dir.join("tandem.pid"),
                health_url: format!("http://127.0.0.1:{}/health", ports.http),
            }
        })
        .collect();
    let route = |name: &str, listen_port: u16, pick: fn(&LanePorts) -> u16| ProxyRoute {
        name: name.to_owned(),
        listen_port,
        lane_ports: lane_ports.iter().map(pick).collect(),
    };
    LocalLayout {
        tenant: spec.tenant.clone(),
        model: spec.model.clone(),
        proxy: LocalProxy {
            bind: "127.0.0.1".to_owned(),
            routes: vec![
                route("jms", spec.ports.jms, |p| p.jms),
                route("stomp", spec.ports.stomp, |p| p.stomp),
                route("http", spec.ports.http, |p| p.http),
            ],
            health_path: crate::HEALTH_PATH.to_owned(),
            // Far tighter than an NLB's 5 s: a local failover should be visible in well under a
            // second, and probing loopback costs nothing.
            check_interval_ms: 150,
            check_timeout_ms: 400,
            healthy_threshold: 2,
            unhealthy_threshold: 2,
            close_on_unhealthy: true,
        },
        monitor: LocalMonitor {
            // At least one lease TTL (1 s by default): the surviving lane gets the first go at
            // an expired lease, so a crashed active comes back as the dormant and roles stay put.
            // Safety never depends on it; the lease alone decides who writes.
            restart_backoff_initial_ms: 1_000,
            restart_backoff_max_ms: 30_000,
            backoff_reset_after_ms: 60_000,
            max_restarts_without_reset: 20,
            state_file: base_dir.join("monitor.json"),
        },
        base_dir,
        shared_dir,
        data_sink_dir,
        lanes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(lanes: u8) -> TenantSpec {
        TenantSpec::load(&format!(
            "tenant = \"acme\"\nmodel = \"orders\"\ncontingency_region = \"eu-west-1\"\nlanes = {lanes}\n\
             allowed_cidrs = [\"203.0.113.0/24\"]\n[dns]\nzone = \"tandem.example.com\"\nname = \"acme-orders\"\n"
        ))
        .unwrap()
    }

    #[test]
    fn double_lane_layout() {
        let l = plan(&spec(2), Path::new("/var/tmp/t"));
        assert_eq!(l.shared_dir, PathBuf::from("/var/tmp/t/shared"));
        assert_eq!(l.lanes.len(), 2);
        let (a, b) = (&l.lanes[0], &l.lanes[1]);
        assert_eq!((a.name.as_str(), b.name.as_str()), ("a", "b"));
        assert_eq!(
            a.ports,
            LanePorts {
                jms: 61626,
                stomp: 61623,
                http: 8171
            }
        );
        assert_eq!(
            b.ports,
            LanePorts {
                jms: 61636,
                stomp: 61633,
                http: 8181
            }
        );
        assert_eq!(a.health_url, "http://127.0.0.1:8171/health");
        assert_eq!(
            a.args.join(" "),
            "run --lane a --shared-dir /var/tmp/t/shared --listen 127.0.0.1:61626 \
             --stomp 127.0.0.1:61623 --http 127.0.0.1:8171"
        );
        // Both lanes share one data directory: the lease decides who writes.
        assert_eq!(a.env["TANDEM_DATA_DIR"], "/var/tmp/t/shared");
        assert_eq!(a.env["TANDEM_DATA_DIR"], b.env["TANDEM_DATA_DIR"]);
        assert_eq!(a.env["TANDEM_LANE"], "a");
        assert_eq!(b.env["TANDEM_JMS_ADDR"], "127.0.0.1:61636");
        assert_ne!(a.log_file, b.log_file);
        assert_ne!(a.pid_file, b.pid_file);
        assert_eq!(l.proxy.health_path, "/health");
        let jms = &l.proxy.routes[0];
        assert_eq!(
            (jms.listen_port, jms.lane_ports.clone()),
            (61616, vec![61626, 61636])
        );
        assert!(l.proxy.close_on_unhealthy);
        assert!(l.monitor.restart_backoff_initial_ms < l.monitor.restart_backoff_max_ms);
    }

    #[test]
    fn data_sink_is_a_local_directory() {
        let l = plan(&spec(1), Path::new("/x"));
        assert_eq!(l.data_sink_dir, None);
        assert!(!l.lanes[0].env.contains_key("TANDEM_DATA_SINK"));
        let mut s = spec(1);
        s.data_sink = true;
        let l = plan(&s, Path::new("/x"));
        assert_eq!(l.data_sink_dir, Some(PathBuf::from("/x/data-sink")));
        assert_eq!(l.lanes[0].env["TANDEM_DATA_SINK"], "file:///x/data-sink");
        assert_eq!(
            l.lanes[0].env["TANDEM_METRICS_NAMESPACE"],
            "Tandem/acme/orders"
        );
    }

    #[test]
    fn single_lane_keeps_the_proxy() {
        let l = plan(&spec(1), Path::new("/x"));
        assert_eq!(l.lanes.len(), 1);
        assert_eq!(l.proxy.routes.len(), 3);
        assert!(l.proxy.routes.iter().all(|r| r.lane_ports.len() == 1));
    }

    #[test]
    fn all_ports_distinct() {
        let l = plan(&spec(2), Path::new("/x"));
        let mut ports: Vec<u16> = l.proxy.routes.iter().map(|r| r.listen_port).collect();
        for lane in &l.lanes {
            ports.extend([lane.ports.jms, lane.ports.stomp, lane.ports.http]);
        }
        let n = ports.len();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), n);
    }

    #[test]
    fn colliding_ports_are_reported() {
        let p = Ports {
            jms: 6000,
            stomp: 6010,
            http: 8161,
            https: 443,
        };
        assert!(lane_ports(&p, 2).unwrap_err().contains("collides"));
        let p = Ports {
            jms: 65530,
            ..Ports::default()
        };
        assert!(lane_ports(&p, 1).unwrap_err().contains("above 65535"));
    }
}
