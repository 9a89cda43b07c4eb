//! The tenant spec: what an operator writes (TOML) to describe one tenant model's deployment.
//!
//! Parsing is strict (`deny_unknown_fields` everywhere, so a typo is an error that names the key), and
//! [`TenantSpec::validate`] checks every value and returns *all* problems at once, each naming the key, what is
//! wrong and how to fix it. The planner and the local layout assume a validated spec.

use std::collections::BTreeSet;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// CloudWatch Logs accepts only these retention periods (days).
pub const LOG_RETENTION_DAYS: [u32; 22] = [
    1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922,
    3288, 3653,
];

/// Longest tenant or model name: both end up in resource names with length limits; the tightest is the AWS
/// Backup vault/plan name `tandem-<tenant>-<model>` (at most 50 characters).
pub const MAX_NAME_LEN: usize = 20;

/// One problem in a spec: the key it is about, what is wrong, and how to fix it.
///
/// Displays as `key: problem; fix`, e.g. `lanes: must be 1 or 2 (got 3); use 2 for an active/dormant pair`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {problem}; {fix}")]
pub struct SpecError {
    /// Dotted path of the offending key (`ports.jms`, `allowed_cidrs[1]`).
    pub key: String,
    /// What is wrong, including the value that was given.
    pub problem: String,
    /// What to write instead.
    pub fix: String,
}

impl SpecError {
    pub fn new(key: impl Into<String>, problem: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            problem: problem.into(),
            fix: fix.into(),
        }
    }
}

/// The whole spec for one tenant model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantSpec {
    /// Customer name, a DNS label (`acme`).
    pub tenant: String,
    /// The customer's model (one VPC per model), a DNS label (`orders`).
    pub model: String,
    /// Home region.
    #[serde(default = "default_region")]
    pub region: String,
    /// Region that receives the EFS replica; where the tenant is rebuilt if the home region is lost.
    pub contingency_region: String,
    /// 1 = single lane, 2 = active/dormant pair in two availability zones.
    pub lanes: u8,
    /// Size of each lane's machine.
    #[serde(default)]
    pub compute: ComputeSize,
    /// VPC address range; split into four equal subnets (public and private, two zones).
    #[serde(default = "default_vpc_cidr")]
    pub vpc_cidr: String,
    #[serde(default)]
    pub ports: Ports,
    /// Client ranges allowed to reach the endpoint (at the tenant's load balancer, or at the carwash).
    pub allowed_cidrs: Vec<String>,
    #[serde(default)]
    pub ingress: Ingress,
    pub dns: Dns,
    /// Route lane egress through one NAT gateway with an Elastic IP, so partners can allowlist one address.
    #[serde(default)]
    pub fixed_outbound_ip: bool,
    /// Create an encrypted S3 bucket that receives dead-lettered messages.
    #[serde(default)]
    pub data_sink: bool,
    #[serde(default = "default_log_retention")]
    pub log_retention_days: u32,
    #[serde(default = "default_backup_retention")]
    pub backup_retention_days: u32,
    #[serde(default)]
    pub alarms: Alarms,
}

fn default_region() -> String {
    "eu-central-1".to_owned()
}
fn default_vpc_cidr() -> String {
    "10.20.0.0/16".to_owned()
}
fn default_log_retention() -> u32 {
    30
}
fn default_backup_retention() -> u32 {
    35
}

/// Lane machine size. Each maps to an arm64 instance type (see [`ComputeSize::instance_type`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ComputeSize {
    /// 2 burstable vCPU, 2 GiB.
    #[default]
    Small,
    /// 1 vCPU, 4 GiB.
    Medium,
    /// 2 vCPU, 8 GiB.
    Large,
    /// 4 vCPU, 16 GiB.
    Xlarge,
}

impl ComputeSize {
    pub fn instance_type(self) -> &'static str {
        match self {
            ComputeSize::Small => "t4g.small",
            ComputeSize::Medium => "m7g.medium",
            ComputeSize::Large => "m7g.large",
            ComputeSize::Xlarge => "m7g.xlarge",
        }
    }
    pub fn vcpus(self) -> u32 {
        match self {
            ComputeSize::Small => 2,
            ComputeSize::Medium => 1,
            ComputeSize::Large => 2,
            ComputeSize::Xlarge => 4,
        }
    }
    pub fn memory_mib(self) -> u32 {
        match self {
            ComputeSize::Small => 2048,
            ComputeSize::Medium => 4096,
            ComputeSize::Large => 8192,
            ComputeSize::Xlarge => 16384,
        }
    }
}

impl fmt::Display for ComputeSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            ComputeSize::Small => "small",
            ComputeSize::Medium => "medium",
            ComputeSize::Large => "large",
            ComputeSize::Xlarge => "xlarge",
        };
        f.write_str(s)
    }
}

/// Ports. `jms`, `stomp` and `http` are what a lane listens on and (except `http`) what clients use;
/// `https` is the public TLS port at the load balancer, forwarded to the lane's `http` port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Ports {
    pub jms: u16,
    pub stomp: u16,
    pub http: u16,
    pub https: u16,
}

impl Default for Ports {
    fn default() -> Self {
        Self {
            jms: 61616,
            stomp: 61613,
            http: 8161,
            https: 443,
        }
    }
}

/// How clients reach the tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Ingress {
    pub mode: IngressMode,
    /// Carwash only: a number 1..=200 unique among the carwash's tenants; names this tenant's route in the
    /// carwash stack (`RouteNNN…`), so its logical ids do not move when other tenants come and go.
    pub slot: Option<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IngressMode {
    /// The tenant's load balancer is internet-facing; its security group allows only `allowed_cidrs`.
    #[default]
    Direct,
    /// The tenant's load balancer is internal and published as a PrivateLink endpoint service; the shared
    /// carwash stack owns the public entry, the allowlist and the DNS record.
    Carwash,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dns {
    /// Route 53 public hosted zone (`tandem.example.com`).
    pub zone: String,
    /// Record name inside the zone (`acme-orders`); the endpoint is `name.zone`.
    pub name: String,
}

impl Dns {
    /// Fully qualified endpoint name, without the trailing dot.
    pub fn fqdn(&self) -> String {
        format!("{}.{}", self.name, self.zone)
    }
}

/// Alarm thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Alarms {
    /// Deepest queue (messages) before alarming.
    pub queue_depth: u64,
    /// Messages in dead-letter queues before alarming.
    pub dlq_depth: u64,
    /// EFS throughput used, as a percentage of what is permitted.
    pub efs_throughput_percent: u8,
}

impl Default for Alarms {
    fn default() -> Self {
        Self {
            queue_depth: 10_000,
            dlq_depth: 1,
            efs_throughput_percent: 80,
        }
    }
}

/// A parsed IPv4 CIDR block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Cidr {
    /// Block number `index` of the `2^bits` equal blocks this one splits into.
    pub fn subdivide(self, bits: u8, index: u32) -> Cidr {
        let prefix = self.prefix + bits;
        let size = 1u64 << (32 - u32::from(prefix));
        let base = u64::from(u32::from(self.addr)) + size * u64::from(index);
        Cidr {
            addr: Ipv4Addr::from(base as u32),
            prefix,
        }
    }
    /// The address `offset` past the network address.
    pub fn host(self, offset: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) + offset)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Why a CIDR string was rejected (the `fix` half of a [`SpecError`] is written by the caller).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CidrError {
    Syntax,
    HostBits(Cidr),
}

impl FromStr for Cidr {
    type Err = CidrError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = s.split_once('/').ok_or(CidrError::Syntax)?;
        // Ipv4Addr's parser rejects leading zeros and out-of-range octets, which is what we want.
        let addr: Ipv4Addr = addr.parse().map_err(|_| CidrError::Syntax)?;
        if prefix.is_empty() || prefix.len() > 2 || !prefix.bytes().all(|b| b.is_ascii_digit()) {
            return Err(CidrError::Syntax);
        }
        let prefix: u8 = prefix.parse().map_err(|_| CidrError::Syntax)?;
        if prefix > 32 {
            return Err(CidrError::Syntax);
        }
        let mask = if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(prefix))
        };
        let bits = u32::from(addr);
        if bits & !mask != 0 {
            return Err(CidrError::HostBits(Cidr {
                addr: Ipv4Addr::from(bits & mask),
                prefix,
            }));
        }
        Ok(Cidr { addr, prefix })
    }
}

fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[b.len() - 1] != b'-'
}

fn is_region(s: &str) -> bool {
    // e.g. eu-central-1, us-gov-west-1, ap-southeast-3
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() >= 3
        && parts[0].len() == 2
        && parts[0].bytes().all(|c| c.is_ascii_lowercase())
        && parts[1..parts.len() - 1]
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|c| c.is_ascii_lowercase()))
        && parts[parts.len() - 1].parse::<u8>().is_ok_and(|n| n > 0)
}

impl TenantSpec {
    /// Parses a spec. Fails on the first syntax, type, missing-key or unknown-key error; the error names the
    /// key. Values are not checked here: call [`TenantSpec::validate`] (or use [`TenantSpec::load`]).
    pub fn from_toml_str(input: &str) -> Result<TenantSpec, SpecError> {
        toml::from_str(input).map_err(|e| toml_error(input, &e))
    }

    /// Parses and validates; every problem found is returned.
    pub fn load(input: &str) -> Result<TenantSpec, Vec<SpecError>> {
        let spec = Self::from_toml_str(input).map_err(|e| vec![e])?;
        spec.validate()?;
        Ok(spec)
    }

    /// `tenant-model`, the stem of stack and resource names.
    pub fn stack_name(&self) -> String {
        format!("tandem-{}-{}", self.tenant, self.model)
    }

    /// Checks every value; returns all problems, each naming the key and the fix.
    pub fn validate(&self) -> Result<(), Vec<SpecError>> {
        let mut errs = Vec::new();
        for (key, value) in [("tenant", &self.tenant), ("model", &self.model)] {
            if !is_dns_label(value) || value.len() > MAX_NAME_LEN {
                errs.push(SpecError::new(
                    key,
                    format!("must be a DNS-safe name of 1..={MAX_NAME_LEN} characters (got {value:?})"),
                    "use lowercase letters, digits and '-', starting with a letter and not ending with '-', e.g. \"acme\"",
                ));
            }
        }
        if !is_region(&self.region) {
            errs.push(SpecError::new(
                "region",
                format!("is not an AWS region name (got {:?})", self.region),
                "use a region code such as \"eu-central-1\"",
            ));
        }
        if !is_region(&self.contingency_region) {
            errs.push(SpecError::new(
                "contingency_region",
                format!(
                    "is not an AWS region name (got {:?})",
                    self.contingency_region
                ),
                "use a region code such as \"eu-west-1\"",
            ));
        } else if self.contingency_region == self.region {
            errs.push(SpecError::new(
                "contingency_region",
                format!("must differ from region (both are {:?})", self.region),
                "pick another region in the same jurisdiction, e.g. \"eu-west-1\" for \"eu-central-1\"",
            ));
        }
        if !(1..=2).contains(&self.lanes) {
            errs.push(SpecError::new(
                "lanes",
                format!("must be 1 or 2 (got {})", self.lanes),
                "use 2 for an active/dormant pair, 1 for a single lane",
            ));
        }
        match self.vpc_cidr.parse::<Cidr>() {
            Ok(c) if (16..=24).contains(&c.prefix) && is_private(c) => {}
            Ok(c) => errs.push(SpecError::new(
                "vpc_cidr",
                format!("must be a private (RFC 1918) block of size /16../24 (got {c})"),
                "use e.g. \"10.20.0.0/16\"",
            )),
            Err(e) => errs.push(cidr_error("vpc_cidr", &self.vpc_cidr, &e)),
        }
        self.validate_ports(&mut errs);
        if self.allowed_cidrs.is_empty() {
            errs.push(SpecError::new(
                "allowed_cidrs",
                "is empty, so no client could connect",
                "list your clients' ranges, e.g. [\"203.0.113.0/24\"]; write [\"0.0.0.0/0\"] only if the endpoint is meant to be public",
            ));
        }
        let mut seen = BTreeSet::new();
        for (i, c) in self.allowed_cidrs.iter().enumerate() {
            let key = format!("allowed_cidrs[{i}]");
            match c.parse::<Cidr>() {
                Ok(cidr) => {
                    if !seen.insert(cidr) {
                        errs.push(SpecError::new(
                            key,
                            format!("{c} is listed twice"),
                            "remove the duplicate",
                        ));
                    }
                }
                Err(e) => errs.push(cidr_error(&key, c, &e)),
            }
        }
        match (self.ingress.mode, self.ingress.slot) {
            (IngressMode::Carwash, None) => errs.push(SpecError::new(
                "ingress.slot",
                "is required when ingress.mode = \"carwash\"",
                "add slot = N (1..=200), unique among the carwash's tenants",
            )),
            (IngressMode::Carwash, Some(s)) if !(1..=200).contains(&s) => {
                errs.push(SpecError::new(
                    "ingress.slot",
                    format!("must be 1..=200 (got {s})"),
                    "pick an unused slot number between 1 and 200",
                ))
            }
            (IngressMode::Direct, Some(_)) => errs.push(SpecError::new(
                "ingress.slot",
                "only applies when ingress.mode = \"carwash\"",
                "remove slot, or set mode = \"carwash\"",
            )),
            _ => {}
        }
        let zone_labels: Vec<&str> = self.dns.zone.trim_end_matches('.').split('.').collect();
        if zone_labels.len() < 2 || !zone_labels.iter().all(|l| is_dns_label_loose(l)) {
            errs.push(SpecError::new(
                "dns.zone",
                format!("is not a DNS domain (got {:?})", self.dns.zone),
                "use the hosted zone's domain, e.g. \"tandem.example.com\"",
            ));
        }
        if !self.dns.name.split('.').all(is_dns_label_loose) {
            errs.push(SpecError::new(
                "dns.name",
                format!(
                    "is not a DNS name inside the zone (got {:?})",
                    self.dns.name
                ),
                "use lowercase labels, e.g. \"acme-orders\"",
            ));
        }
        if self.dns.fqdn().len() > 253 {
            errs.push(SpecError::new(
                "dns.name",
                "name.zone is longer than 253 characters",
                "use a shorter name",
            ));
        }
        if !LOG_RETENTION_DAYS.contains(&self.log_retention_days) {
            let nearest = LOG_RETENTION_DAYS
                .iter()
                .min_by_key(|d| d.abs_diff(self.log_retention_days))
                .copied()
                .unwrap_or(30);
            errs.push(SpecError::new(
                "log_retention_days",
                format!(
                    "{} is not a value CloudWatch Logs accepts",
                    self.log_retention_days
                ),
                format!("use one of {LOG_RETENTION_DAYS:?}; the nearest is {nearest}"),
            ));
        }
        if !(1..=36500).contains(&self.backup_retention_days) {
            errs.push(SpecError::new(
                "backup_retention_days",
                format!("must be 1..=36500 (got {})", self.backup_retention_days),
                "use e.g. 35 (AWS Backup's default for EFS)",
            ));
        }
        if self.alarms.queue_depth == 0 {
            errs.push(SpecError::new(
                "alarms.queue_depth",
                "is 0, so the alarm would always fire",
                "use the deepest backlog that is still normal, e.g. 10000",
            ));
        }
        if self.alarms.dlq_depth == 0 {
            errs.push(SpecError::new(
                "alarms.dlq_depth",
                "is 0, so the alarm would always fire",
                "use 1 to alarm on the first dead-lettered message",
            ));
        }
        if !(1..=100).contains(&self.alarms.efs_throughput_percent) {
            errs.push(SpecError::new(
                "alarms.efs_throughput_percent",
                format!(
                    "must be 1..=100 (got {})",
                    self.alarms.efs_throughput_percent
                ),
                "use e.g. 80",
            ));
        }
        if errs.is_empty() { Ok(()) } else { Err(errs) }
    }

    fn validate_ports(&self, errs: &mut Vec<SpecError>) {
        let p = self.ports;
        for (key, port) in [
            ("ports.jms", p.jms),
            ("ports.stomp", p.stomp),
            ("ports.http", p.http),
        ] {
            if port < 1024 {
                errs.push(SpecError::new(
                    key,
                    format!("lanes listen on this port and it must be 1024..=65535 (got {port})"),
                    "lanes run unprivileged; use the default (jms 61616, stomp 61613, http 8161)",
                ));
            }
        }
        if p.https == 0 {
            errs.push(SpecError::new("ports.https", "must not be 0", "use 443"));
        }
        let named = [
            ("ports.jms", p.jms),
            ("ports.stomp", p.stomp),
            ("ports.http", p.http),
            ("ports.https", p.https),
        ];
        for (i, (ka, a)) in named.iter().enumerate() {
            for (kb, b) in &named[i + 1..] {
                if a == b {
                    errs.push(SpecError::new(
                        *kb,
                        format!("uses port {b}, which {ka} already uses"),
                        "give every port its own number",
                    ));
                }
            }
        }
        // The local topology puts the lanes on derived ports; they must fit and not collide.
        if p.jms >= 1024 && p.stomp >= 1024 && p.http >= 1024 {
            match crate::local::lane_ports(&p, 2) {
                Ok(_) => {}
                Err(problem) => errs.push(SpecError::new(
                    "ports",
                    problem,
                    "keep jms, stomp and http more than 20 apart and below 65500 (the defaults work)",
                )),
            }
        }
    }
}

fn is_dns_label_loose(s: &str) -> bool {
    // Zone labels may start with a digit.
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[b.len() - 1] != b'-'
}

fn is_private(c: Cidr) -> bool {
    let o = c.addr.octets();
    o[0] == 10 || (o[0] == 172 && (16..=31).contains(&o[1])) || (o[0] == 192 && o[1] == 168)
}

fn cidr_error(key: &str, given: &str, e: &CidrError) -> SpecError {
    match e {
        CidrError::Syntax => SpecError::new(
            key,
            format!("{given:?} is not an IPv4 CIDR block"),
            "write address/prefix, e.g. \"203.0.113.0/24\" (one address: \"203.0.113.7/32\")",
        ),
        CidrError::HostBits(network) => SpecError::new(
            key,
            format!("{given:?} has host bits set"),
            format!("use the network address: \"{network}\""),
        ),
    }
}

/// Turns a TOML/serde error into a [`SpecError`] that names the key (with its table, e.g. `ports.jmss`).
pub(crate) fn toml_error(input: &str, e: &toml::de::Error) -> SpecError {
    let msg = e.message().to_owned();
    let start = e.span().map(|s| s.start).unwrap_or(0).min(input.len());
    let mut table = enclosing_table(input, start);
    if let Some(parent) = inline_table_key(input, start) {
        // `ports = { jmss = 1 }`: the error points inside the inline table.
        table = if table.is_empty() {
            parent
        } else {
            format!("{table}.{parent}")
        };
    }
    let qualify = |k: &str| {
        if table.is_empty() {
            k.to_owned()
        } else {
            format!("{table}.{k}")
        }
    };
    if let Some(rest) = msg.strip_prefix("unknown field `") {
        let field = rest.split('`').next().unwrap_or_default();
        let expected = rest
            .split_once(", expected ")
            .map(|(_, x)| x)
            .unwrap_or("no other keys");
        return SpecError::new(
            qualify(field),
            "is not a known key",
            format!("remove it or fix the spelling; expected {expected}"),
        );
    }
    if let Some(rest) = msg.strip_prefix("missing field `") {
        let field = rest.split('`').next().unwrap_or_default();
        return SpecError::new(
            qualify(field),
            "is required",
            "add it (see docs/examples/tenant-single.toml)",
        );
    }
    if let Some(rest) = msg.strip_prefix("unknown variant `") {
        let expected = rest
            .split_once(", expected ")
            .map(|(_, x)| x)
            .unwrap_or("a known value");
        return SpecError::new(
            qualify(&key_on_line(input, start)),
            format!(
                "unknown value `{}",
                rest.split(", expected").next().unwrap_or(rest)
            ),
            format!("use {expected}"),
        );
    }
    let key = key_on_line(input, start);
    SpecError::new(
        if key.is_empty() {
            "(spec)".to_owned()
        } else {
            qualify(&key)
        },
        msg.trim().to_owned(),
        "fix the value's type or the TOML syntax at that key",
    )
}

/// The `[table]` header in force at byte `offset`, or "" for the top level.
fn enclosing_table(input: &str, offset: usize) -> String {
    let mut table = String::new();
    for line in input[..offset].lines() {
        let t = line.trim();
        if t.starts_with('[') && !t.starts_with("[[") {
            table = t
                .trim_start_matches('[')
                .split(']')
                .next()
                .unwrap_or_default()
                .trim()
                .to_owned();
        }
    }
    table
}

/// `key` when byte `offset` lies inside an inline table `key = { … }` on its line.
fn inline_table_key(input: &str, offset: usize) -> Option<String> {
    let line_start = input[..offset].rfind('\n').map(|i| i + 1).unwrap_or(0);
    let before = &input[line_start..offset];
    let (key, rest) = before.split_once('=')?;
    rest.contains('{')
        .then(|| key.trim().trim_matches('"').to_owned())
}

/// The key assigned on the line containing byte `offset`.
fn key_on_line(input: &str, offset: usize) -> String {
    let line_start = input[..offset].rfind('\n').map(|i| i + 1).unwrap_or(0);
    let line = input[line_start..].lines().next().unwrap_or_default();
    match line.split_once('=') {
        Some((k, _)) => k.trim().trim_matches('"').to_owned(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal() -> &'static str {
        r#"
tenant = "acme"
model = "orders"
contingency_region = "eu-west-1"
lanes = 2
allowed_cidrs = ["203.0.113.0/24"]
[dns]
zone = "tandem.example.com"
name = "acme-orders"
"#
    }

    #[test]
    fn minimal_spec_gets_defaults_and_validates() {
        let spec = TenantSpec::load(minimal()).unwrap();
        assert_eq!(spec.region, "eu-central-1");
        assert_eq!(
            spec.ports,
            Ports {
                jms: 61616,
                stomp: 61613,
                http: 8161,
                https: 443
            }
        );
        assert_eq!(spec.log_retention_days, 30);
        assert_eq!(spec.compute, ComputeSize::Small);
        assert_eq!(spec.ingress.mode, IngressMode::Direct);
        assert!(!spec.fixed_outbound_ip && !spec.data_sink);
    }

    #[test]
    fn unknown_top_level_key_is_named() {
        let e = TenantSpec::from_toml_str(&format!("{}\nlane = 2\n", minimal())).unwrap_err();
        // `lane` would land in [dns] because it follows that table; put it first instead.
        assert!(e.key.ends_with("lane"), "{e}");
        let e = TenantSpec::from_toml_str(&format!("colour = \"red\"\n{}", minimal())).unwrap_err();
        assert_eq!(e.key, "colour");
        assert!(
            e.to_string()
                .starts_with("colour: is not a known key; remove it"),
            "{e}"
        );
    }

    #[test]
    fn unknown_nested_key_is_named_with_its_table() {
        let e =
            TenantSpec::from_toml_str(&format!("{}\n[ports]\njmss = 1\n", minimal())).unwrap_err();
        assert_eq!(e.key, "ports.jmss");
    }

    #[test]
    fn unknown_key_in_an_inline_table_is_named_with_its_table() {
        let e = TenantSpec::from_toml_str(&format!("ports = {{ jmss = 1 }}\n{}", minimal()))
            .unwrap_err();
        assert_eq!(e.key, "ports.jmss", "{e}");
    }

    #[test]
    fn missing_and_mistyped_keys_are_named() {
        let e = TenantSpec::from_toml_str("tenant = \"a\"\n").unwrap_err();
        assert_eq!(e.problem, "is required");
        let e = TenantSpec::from_toml_str(&minimal().replace("lanes = 2", "lanes = \"two\""))
            .unwrap_err();
        assert_eq!(e.key, "lanes", "{e}");
        let e =
            TenantSpec::from_toml_str(&format!("compute = \"huge\"\n{}", minimal())).unwrap_err();
        assert_eq!(e.key, "compute", "{e}");
        assert!(e.fix.contains("small"), "{e}");
    }

    #[test]
    fn validation_returns_every_error_with_key_and_fix() {
        let bad = minimal()
            .replace(
                "lanes = 2",
                "lanes = 3\nlog_retention_days = 31\nregion = \"eu-west-1\"",
            )
            .replace(
                "\"203.0.113.0/24\"",
                "\"203.0.113.7/24\", \"nonsense\", \"10.0.0.0/8\", \"10.0.0.0/8\"",
            )
            .replace("tenant = \"acme\"", "tenant = \"Acme_Corp\"");
        let spec = TenantSpec::from_toml_str(&bad).unwrap();
        let errs = spec.validate().unwrap_err();
        let text: Vec<String> = errs.iter().map(ToString::to_string).collect();
        let keys: Vec<&str> = errs.iter().map(|e| e.key.as_str()).collect();
        assert!(text.contains(&"lanes: must be 1 or 2 (got 3); use 2 for an active/dormant pair, 1 for a single lane".to_owned()), "{text:#?}");
        for k in [
            "tenant",
            "contingency_region",
            "allowed_cidrs[0]",
            "allowed_cidrs[1]",
            "allowed_cidrs[3]",
            "log_retention_days",
        ] {
            assert!(keys.contains(&k), "missing {k} in {text:#?}");
        }
        assert!(
            text.iter()
                .any(|t| t.contains("use the network address: \"203.0.113.0/24\"")),
            "{text:#?}"
        );
        assert!(
            text.iter().any(|t| t.contains("the nearest is 30")),
            "{text:#?}"
        );
        assert_eq!(errs.len(), 7, "{text:#?}");
    }

    #[test]
    fn port_rules() {
        let mut spec = TenantSpec::load(minimal()).unwrap();
        spec.ports.stomp = spec.ports.jms;
        spec.ports.http = 80;
        let keys: Vec<String> = spec
            .validate()
            .unwrap_err()
            .into_iter()
            .map(|e| e.key)
            .collect();
        assert!(
            keys.contains(&"ports.stomp".to_owned()) && keys.contains(&"ports.http".to_owned()),
            "{keys:?}"
        );
        let mut spec = TenantSpec::load(minimal()).unwrap();
        spec.ports.jms = 65530;
        assert!(
            spec.validate()
                .unwrap_err()
                .iter()
                .any(|e| e.key == "ports")
        );
    }

    #[test]
    fn carwash_needs_a_slot_and_direct_refuses_one() {
        let mut spec = TenantSpec::load(minimal()).unwrap();
        spec.ingress.mode = IngressMode::Carwash;
        assert_eq!(spec.validate().unwrap_err()[0].key, "ingress.slot");
        spec.ingress.slot = Some(7);
        spec.validate().unwrap();
        spec.ingress.mode = IngressMode::Direct;
        assert_eq!(spec.validate().unwrap_err()[0].key, "ingress.slot");
    }

    #[test]
    fn cidr_parsing() {
        assert_eq!(
            "10.0.0.0/16".parse::<Cidr>().unwrap().to_string(),
            "10.0.0.0/16"
        );
        assert_eq!("0.0.0.0/0".parse::<Cidr>().unwrap().prefix, 0);
        for bad in [
            "10.0.0.0",
            "10.0.0/8",
            "10.0.0.0/33",
            "10.0.0.0/-1",
            "010.0.0.0/8",
            "10.0.0.0/ 8",
            "a/8",
        ] {
            assert_eq!(bad.parse::<Cidr>(), Err(CidrError::Syntax), "{bad}");
        }
        assert!(matches!(
            "10.0.0.1/8".parse::<Cidr>(),
            Err(CidrError::HostBits(_))
        ));
        let vpc: Cidr = "10.20.0.0/16".parse().unwrap();
        assert_eq!(vpc.subdivide(2, 3).to_string(), "10.20.192.0/18");
        assert_eq!(vpc.subdivide(2, 3).host(21).to_string(), "10.20.192.21");
    }

    #[test]
    fn longest_names_fit_aws_name_limits() {
        let mut spec = TenantSpec::load(minimal()).unwrap();
        spec.tenant = "t".repeat(MAX_NAME_LEN);
        spec.model = "m".repeat(MAX_NAME_LEN);
        spec.validate().unwrap();
        assert!(spec.stack_name().len() <= 50, "backup vault and plan names");
        spec.model.push('m');
        assert_eq!(spec.validate().unwrap_err()[0].key, "model");
    }

    #[test]
    fn region_names() {
        for ok in ["eu-central-1", "us-gov-west-1", "ap-southeast-3"] {
            assert!(is_region(ok), "{ok}");
        }
        for bad in ["eu-central", "EU-central-1", "eu-central-0", "europe", ""] {
            assert!(!is_region(bad), "{bad}");
        }
    }
}
