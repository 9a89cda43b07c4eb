//! tandem-provisioning: tenant spec → validated plan → CloudFormation YAML, or the same topology on one machine.
//!
//! ```text
//!  tenant.toml ──TenantSpec::from_toml_str──▶ TenantSpec ──validate()──▶ (all errors, each with key + fix)
//!                                                 │
//!                        plan::plan(&spec) ◀──────┼──────▶ local::plan(&spec, dir) ─▶ LocalLayout (CLI runs it)
//!                              │                  │
//!                              ▼                  └──────▶ carwash::plan(&carwash, &[specs]) ─▶ Plan
//!                     Plan (typed resource graph: ids, deps, tags)
//!                              │
//!          render::cloudformation(&plan) ─▶ YAML      plan.summary() ─▶ table      aws::deploy::apply ─▶ stack
//! ```
//!
//! Everything but [`aws`] is pure: no I/O, no clock. The same spec always renders byte-identical YAML.
//! [`aws`] applies a plan through the AWS SDK (apply, destroy, status, promote-region) behind a trait seam;
//! see docs/PROVISIONING.md.
//!
//! # Using it (what `tandem provision plan|render` does)
//!
//! ```
//! use std::path::Path;
//! use tandem_provisioning::{TenantSpec, local, plan, render};
//!
//! let spec = TenantSpec::from_toml_str(r#"
//!     tenant = "acme"
//!     model = "orders"
//!     contingency_region = "eu-west-1"
//!     lanes = 2
//!     allowed_cidrs = ["203.0.113.0/24"]
//!     [dns]
//!     zone = "tandem.example.com"
//!     name = "acme-orders"
//! "#).expect("parses");
//! spec.validate().expect("valid");          // Err(Vec<SpecError>) lists every problem with its fix
//!
//! let plan = plan::plan(&spec);
//! assert!(plan.summary().contains("LaneBAutoScalingGroup"));
//! let yaml = render::cloudformation(&plan);
//! assert!(yaml.contains("HealthCheckPath: /health"));
//!
//! let layout = local::plan(&spec, Path::new("/var/tmp/acme"));
//! assert_eq!(layout.lanes.len(), 2);
//! assert_eq!(layout.proxy.health_path, "/health");
//!
//! let bad = TenantSpec::from_toml_str("lanes = 3\n").unwrap_err();
//! assert_eq!(bad.key, "tenant"); // missing keys and unknown keys are named too
//! ```
//!
//! # The AWS layout of one tenant model (double lane, direct ingress)
//!
//! ```text
//!                   clients (allowed_cidrs only)            Route 53: name.zone ─ alias ─┐
//!                              │                                                        │
//!  ┌ VPC (vpc_cidr) ───────────┼────────────────────────────────────────────────────────┼──────────────┐
//!  │                  ┌────────▼──────────────────────────────────────────────────────────▼─┐          │
//!  │  public subnets  │ NLB (cross-zone)  TCP jms ─┐  TCP stomp ─┐  TLS https → http ─┐     │  IGW     │
//!  │  az1 / az2       └────────────────────────────┼─────────────┼───────────────────┼─────┘          │
//!  │                     target groups, health check: HTTP GET /health on the http port, every 5 s     │
//!  │                     (200 only on the lane holding the lease ⇒ traffic follows the lease)           │
//!  │           ┌──────────────────────────────┐        ┌──────────────────────────────┐               │
//!  │  az1      │ lane a: ASG 1..1, EC2        │        │ lane b: ASG 1..1, EC2        │  az2          │
//!  │           │ systemd ▸ docker ▸ tandem    │        │ systemd ▸ docker ▸ tandem    │               │
//!  │           └──────────────┬───────────────┘        └───────────────┬──────────────┘               │
//!  │   (lanes sit in the public subnets with public IPs, or in the private subnets behind one NAT        │
//!  │    gateway + Elastic IP when fixed_outbound_ip)                                                     │
//!  │                 access point a │ NFS 2049 (TLS, IAM)               │ access point b                 │
//!  │  private   ┌────────────────────▼───────────────────────────────────▼───────────────┐              │
//!  │  subnets   │ EFS (encrypted, elastic): mount target az1, az2; one /tandem directory │── replication ─▶ contingency region
//!  │            └────────────────────────────────────────────────────────────────────────┘── AWS Backup (daily)
//!  └─────────────────────────────────────────────────────────────────────────────────────────────────────┘
//!   CloudWatch: log group (retention), alarms (lane down, no active lane, failover, queue depth, DLQ depth,
//!   EFS throughput) ─▶ SNS topic.   S3 data-sink bucket when data_sink.
//! ```
//!
//! With `ingress.mode = "carwash"` the NLB is internal, published as a PrivateLink endpoint service, and the
//! shared [`carwash`] stack owns the public entry, the allowlist and the DNS record.
//!
//! # Choice: lanes on EC2 Auto Scaling groups, not ECS/Fargate
//!
//! Fargate looked like the obvious fit (EFS volumes with access points are first-class, one task per lane,
//! restarts for free, no AMI to patch). It breaks on the one thing this design relies on: the load balancer
//! health check *is* `/health`, which answers 200 only on the lane holding the lease, so the dormant lane is
//! always "unhealthy" in its target group — and the ECS service scheduler stops and replaces tasks that fail
//! their target group's health check (ECS developer guide, "Amazon ECS services"; there is no switch to turn
//! that off, see aws/containers-roadmap#1271). ECS would kill the dormant lane in a loop and a deployment would
//! never reach a steady state. The known workaround (a health-check grace period of decades) also silences
//! ECS's container health checks, leaving only "the process exited" as a restart trigger.
//!
//! So each lane is an Auto Scaling group of exactly one instance:
//! - auto-healing at two levels: the group uses EC2 status checks (`HealthCheckType: EC2`) and replaces a dead
//!   instance; systemd (`Restart=always`) restarts a crashed broker within seconds. The NLB's view of health
//!   only steers traffic.
//! - pinning: in a double lane each group has one subnet, so lane a lives in zone 1 and lane b in zone 2; a
//!   single lane's group has both subnets, so a zone outage moves it (its data is on multi-zone EFS).
//! - never two instances of a lane: `MaxSize` 1 and a rolling update that terminates before it launches; lane
//!   b's group depends on lane a's, so updates roll one lane at a time.
//! - EFS: mounted by `amazon-efs-utils` with TLS, IAM and the lane's own access point.
//! - cost: a `t4g.small` (2 vCPU burst, 2 GiB) costs less than the closest Fargate size (0.5 vCPU, 1 GiB) and
//!   the broker gets more memory for paging; the price is an AMI to keep current (the `LaneAmi` parameter
//!   resolves the latest Amazon Linux 2023 through SSM, so an update picks it up).
//!
//! Contract this puts on the broker/CLI (the lanes are started with `tandem run` and these variables, see
//! [`lane_env`]): `TANDEM_TENANT`, `TANDEM_MODEL`, `TANDEM_LANE` (a|b), `TANDEM_LANES` (1|2),
//! `TANDEM_DATA_DIR` (the shared directory), `TANDEM_JMS_ADDR`, `TANDEM_STOMP_ADDR`, `TANDEM_HTTP_ADDR`,
//! `TANDEM_LOG_FORMAT` (json), `TANDEM_METRICS_NAMESPACE`, and `TANDEM_DATA_SINK` (`s3://bucket` or
//! `file:///dir`) when the spec has a data sink. `GET /health` returns 200 only while
//! the lane holds the lease; a dormant lane must not accept JMS/STOMP connections (when every target is
//! unhealthy, an NLB fails open and sends traffic to all of them). Logs are JSON lines; a lease acquisition is
//! logged as `{"event":"lease_acquired",…}` (the failover alarm counts these); queue depth and DLQ depth are
//! published as CloudWatch embedded-metric-format lines in namespace `Tandem/<tenant>/<model>`, metrics
//! `QueueDepthMax` and `DlqDepth`.
//!
//! # Choice: a hand-rolled YAML emitter
//!
//! See [`yaml`]: `serde_yaml` and `serde_yml` are deprecated; the maintained forks wrap a mechanical port of
//! libyaml. A template is JSON-shaped, so a ~150-line emitter over `serde_json::Value` gives byte-stable output
//! without a dependency. `serde_norway` (pinned, dev-dependency only) parses every rendered template back in the
//! tests, as a YAML 1.1 reader like CloudFormation's, and the result must equal the JSON template.
//!
//! # What the apply phase needs (see [`aws`]; not all of it is done yet, docs/PROVISIONING.md says what is)
//!
//! - Stacks: `CreateStack`/`UpdateStack` via change sets with `CAPABILITY_IAM`, parameters `BrokerImage`,
//!   `TlsCertificateArn` (an ACM certificate for `name.zone`, DNS-validated in the zone), `LaneAmi` (default);
//!   carwash tenants also need `CarwashPrincipal`, then a carwash update with each tenant's
//!   `EndpointServiceName` output as `RouteNNNEndpointServiceName`.
//! - Size: send [`render::cloudformation_json`] (compact, about half the YAML) as `TemplateBody`; a tenant
//!   stack stays under the 51,200-byte limit (tested), a carwash with more than a few tenants does not and
//!   goes through S3 (`TemplateURL`). A carwash stack holds about 28 tenants before CloudFormation's
//!   500-resource limit ([`carwash::plan`] refuses more).
//! - Order: tenant stack → (carwash tenants) carwash stack. The contingency region needs nothing up front:
//!   EFS replication creates the read-only replica there; "promote region" = delete the replication
//!   configuration (the replica becomes writable) and create the tenant stack there pointing at it.
//! - Destroy: the file system and the data-sink bucket are `Retain`ed; destroy must delete the replication
//!   configuration, then (only when asked) the file system, the bucket's objects and versions, and the backup
//!   vault's recovery points.
//! - Status: stack events/outputs, target health (which lane is active), alarm states.
//! - Alarm subscriptions (e-mail, pager) are attached to the `AlarmTopicArn` output.
//! - Known trade-offs to revisit: EFS automatic backups (`BackupPolicy`) and the tenant's own AWS Backup plan
//!   (`backup_retention_days`) both run, so EFS is backed up twice; the single NAT gateway lives in zone 1.

pub mod aws;
pub mod carwash;
pub mod local;
pub mod plan;
pub mod render;
pub mod resource;
pub mod spec;
pub mod yaml;

use std::collections::BTreeMap;

pub use carwash::CarwashSpec;
pub use local::LocalLayout;
pub use resource::{Kind, Lane, Plan, Resource};
pub use spec::{SpecError, TenantSpec};

/// The broker's health endpoint: 200 only on the lane that holds the lease.
pub const HEALTH_PATH: &str = "/health";

/// Where the shared volume is mounted on an AWS lane.
pub const DATA_DIR: &str = "/var/lib/tandem";

/// The environment a lane process is started with (AWS and local alike). `data_sink` is where dead-lettered
/// messages go when the spec asks for a sink: `s3://bucket` on AWS, `file:///dir` locally.
pub fn lane_env(
    spec: &TenantSpec,
    lane: &str,
    data_dir: &str,
    bind: &str,
    ports: local::LanePorts,
    data_sink: Option<&str>,
) -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = [
        ("TANDEM_TENANT", spec.tenant.clone()),
        ("TANDEM_MODEL", spec.model.clone()),
        ("TANDEM_LANE", lane.to_owned()),
        ("TANDEM_LANES", spec.lanes.to_string()),
        ("TANDEM_DATA_DIR", data_dir.to_owned()),
        ("TANDEM_JMS_ADDR", format!("{bind}:{}", ports.jms)),
        ("TANDEM_STOMP_ADDR", format!("{bind}:{}", ports.stomp)),
        ("TANDEM_HTTP_ADDR", format!("{bind}:{}", ports.http)),
        ("TANDEM_LOG_FORMAT", "json".to_owned()),
        ("TANDEM_METRICS_NAMESPACE", plan::metric_namespace(spec)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    if let Some(sink) = data_sink {
        env.insert("TANDEM_DATA_SINK".to_owned(), sink.to_owned());
    }
    env
}
