//! The carwash: one shared ingress stack per region in front of every tenant whose `ingress.mode` is
//! `carwash`. It is the only thing with public addresses for those tenants; it enforces each tenant's allowlist
//! and routes to the tenant over PrivateLink, so tenant VPCs need no public load balancer and may even overlap
//! in address space.
//!
//! Per tenant route (`RouteNNN…`, NNN = the tenant's `ingress.slot`, so ids stay stable as tenants come and go):
//!
//! ```text
//!  client ──▶ RouteNNNLoadBalancer (public NLB, SG = tenant's allowed_cidrs on jms/stomp/https)
//!               └─▶ target groups (IP) ─▶ RouteNNNEndpoint (interface endpoint, one ENI per zone)
//!                                           └─▶ tenant EndpointService ─▶ tenant internal NLB ─▶ active lane
//!  RouteNNNDnsRecord: name.zone ─▶ RouteNNNLoadBalancer
//! ```
//!
//! TLS is not terminated here: port 443 passes through to the tenant's TLS listener, so certificates and keys
//! stay in the tenant stack.
//!
//! Each route is 17 resources, so one carwash stack serves about 28 tenants before CloudFormation's
//! 500-resource limit; [`plan`] refuses more (split the tenants over several carwash stacks).
//!
//! One step is left to the apply phase: CloudFormation cannot read the private addresses of an interface
//! endpoint's network interfaces (`AWS::EC2::VPCEndpoint` has no `SubnetConfigurations` property, only the
//! API does), so the target groups are created empty and the applier registers the addresses behind the
//! `RouteNNNEndpointNetworkInterfaceIds` output (DescribeNetworkInterfaces → RegisterTargets) after each
//! carwash update.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::resource::{Builder, Kind, Plan, att, az, no_egress, r};
use crate::spec::{Cidr, IngressMode, SpecError, TenantSpec};

/// The carwash's own settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CarwashSpec {
    #[serde(default = "default_region")]
    pub region: String,
    /// Must be a /16, split into four /18 subnets (public and private, two zones).
    #[serde(default = "default_cidr")]
    pub vpc_cidr: String,
}

fn default_region() -> String {
    "eu-central-1".to_owned()
}
fn default_cidr() -> String {
    "10.250.0.0/16".to_owned()
}

impl CarwashSpec {
    /// Parses a carwash spec (strict: unknown keys are errors naming the key).
    pub fn from_toml_str(input: &str) -> Result<CarwashSpec, SpecError> {
        toml::from_str(input).map_err(|e| crate::spec::toml_error(input, &e))
    }
}

impl Default for CarwashSpec {
    fn default() -> Self {
        Self {
            region: default_region(),
            vpc_cidr: default_cidr(),
        }
    }
}

/// Logical-id prefix of a tenant's route.
pub fn route_prefix(slot: u8) -> String {
    format!("Route{slot:03}")
}

/// Plans the carwash stack for `tenants` (each validated, with `ingress.mode = "carwash"`).
pub fn plan(carwash: &CarwashSpec, tenants: &[TenantSpec]) -> Result<Plan, Vec<SpecError>> {
    let mut errs = Vec::new();
    let vpc = match carwash.vpc_cidr.parse::<Cidr>() {
        Ok(c) if c.prefix == 16 => Some(c),
        _ => {
            errs.push(SpecError::new(
                "carwash.vpc_cidr",
                format!("must be a /16 block (got {:?})", carwash.vpc_cidr),
                "use e.g. \"10.250.0.0/16\"",
            ));
            None
        }
    };
    let mut slots: BTreeMap<u8, &TenantSpec> = BTreeMap::new();
    for (i, t) in tenants.iter().enumerate() {
        let key = format!("tenants[{i}]");
        if t.ingress.mode != IngressMode::Carwash {
            errs.push(SpecError::new(
                format!("{key}.ingress.mode"),
                format!("tenant {}/{} is not behind the carwash", t.tenant, t.model),
                "set ingress.mode = \"carwash\" in its spec, or leave it out of the carwash",
            ));
            continue;
        }
        if t.region != carwash.region {
            errs.push(SpecError::new(
                format!("{key}.region"),
                format!(
                    "tenant {}/{} is in {}, the carwash in {}",
                    t.tenant, t.model, t.region, carwash.region
                ),
                "plan one carwash per region",
            ));
        }
        match t.ingress.slot {
            None => errs.push(SpecError::new(
                format!("{key}.ingress.slot"),
                "is missing",
                "validate the tenant spec",
            )),
            Some(slot) => {
                if let Some(other) = slots.insert(slot, t) {
                    errs.push(SpecError::new(
                        format!("{key}.ingress.slot"),
                        format!(
                            "slot {slot} is also used by {}/{}",
                            other.tenant, other.model
                        ),
                        "give every carwash tenant its own slot",
                    ));
                }
            }
        }
    }
    let Some(vpc) = vpc else { return Err(errs) };
    if !errs.is_empty() {
        return Err(errs);
    }

    let mut b = Builder::new(
        "tandem-carwash".to_owned(),
        format!(
            "tandem carwash: shared ingress for {} tenant(s) (generated by tandem-provisioning; do not edit)",
            slots.len()
        ),
        carwash.region.clone(),
        "carwash",
        "shared",
    );
    shared_network(&mut b, vpc);
    for (slot, t) in &slots {
        route(&mut b, *slot, t);
    }
    b.output("VpcId", "The carwash VPC", r("Vpc"));
    let plan = b.finish();
    if plan.resources.len() > crate::render::STACK_RESOURCE_LIMIT {
        return Err(vec![SpecError::new(
            "tenants",
            format!(
                "{} tenants need {} resources, over CloudFormation's {} per stack",
                slots.len(),
                plan.resources.len(),
                crate::render::STACK_RESOURCE_LIMIT
            ),
            "split the tenants across several carwash stacks",
        )]);
    }
    Ok(plan)
}

fn shared_network(b: &mut Builder, vpc: Cidr) {
    b.add(
        "Vpc",
        Kind::Vpc,
        None,
        json!({"CidrBlock": vpc.to_string(), "EnableDnsHostnames": true, "EnableDnsSupport": true}),
    );
    b.add("InternetGateway", Kind::InternetGateway, None, json!({}));
    b.add(
        "InternetGatewayAttachment",
        Kind::GatewayAttachment,
        None,
        json!({"VpcId": r("Vpc"), "InternetGatewayId": r("InternetGateway")}),
    );
    b.add(
        "PublicRouteTable",
        Kind::RouteTable,
        None,
        json!({"VpcId": r("Vpc")}),
    );
    b.add(
        "PublicDefaultRoute",
        Kind::Route,
        None,
        json!({"RouteTableId": r("PublicRouteTable"), "DestinationCidrBlock": "0.0.0.0/0", "GatewayId": r("InternetGateway")}),
    )
    .depends_on
    .push("InternetGatewayAttachment".into());
    b.add(
        "PrivateRouteTable",
        Kind::RouteTable,
        None,
        json!({"VpcId": r("Vpc")}),
    );
    for i in 0..2 {
        for (kind, quarter, table) in [
            ("Public", i, "PublicRouteTable"),
            ("Private", i + 2, "PrivateRouteTable"),
        ] {
            let subnet = format!("{kind}SubnetAz{}", i + 1);
            b.add(
                &subnet,
                Kind::Subnet,
                None,
                json!({"VpcId": r("Vpc"), "CidrBlock": vpc.subdivide(2, quarter as u32).to_string(),
                       "AvailabilityZone": az(i), "MapPublicIpOnLaunch": false}),
            );
            b.add(
                format!("{kind}RouteAssociationAz{}", i + 1),
                Kind::RouteTableAssociation,
                None,
                json!({"SubnetId": r(&subnet), "RouteTableId": r(table)}),
            );
        }
    }
}

fn route(b: &mut Builder, slot: u8, t: &TenantSpec) {
    let p = route_prefix(slot);
    let (tenant, model) = (t.tenant.as_str(), t.model.as_str());
    let param = format!("{p}EndpointServiceName");
    b.param(
        &param,
        "String",
        &format!(
            "PrivateLink service name of {tenant}/{model} (its stack's EndpointServiceName output)"
        ),
        None,
        Some("com\\.amazonaws\\.vpce\\..+"),
    );
    let ports = [
        ("Jms", t.ports.jms),
        ("Stomp", t.ports.stomp),
        ("Https", t.ports.https),
    ];
    let front_sg = format!("{p}FrontSecurityGroup");
    let endpoint_sg = format!("{p}EndpointSecurityGroup");
    let ingress: Vec<Value> = t
        .allowed_cidrs
        .iter()
        .flat_map(|cidr| {
            ports.map(|(what, port)| {
                json!({"IpProtocol": "tcp", "FromPort": port, "ToPort": port, "CidrIp": cidr,
                       "Description": format!("{what} for {tenant}/{model} from allowed range {cidr}")})
            })
        })
        .collect();
    b.add_owned(
        &front_sg,
        Kind::SecurityGroup,
        None,
        tenant,
        model,
        json!({"GroupDescription": format!("carwash front of {tenant}/{model}"), "VpcId": r("Vpc"),
               "SecurityGroupIngress": ingress, "SecurityGroupEgress": no_egress()}),
    );
    b.add_owned(
        &endpoint_sg,
        Kind::SecurityGroup,
        None,
        tenant,
        model,
        json!({"GroupDescription": format!("carwash endpoint of {tenant}/{model}"), "VpcId": r("Vpc"),
               "SecurityGroupEgress": no_egress()}),
    );
    for (what, port) in ports {
        b.add_owned(
            format!("{p}{what}Egress"),
            Kind::SecurityGroupEgress,
            None,
            tenant,
            model,
            json!({"GroupId": att(&front_sg, "GroupId"), "IpProtocol": "tcp", "FromPort": port, "ToPort": port,
                   "DestinationSecurityGroupId": att(&endpoint_sg, "GroupId"), "Description": format!("{what} to the endpoint")}),
        );
        b.add_owned(
            format!("{p}{what}Ingress"),
            Kind::SecurityGroupIngress,
            None,
            tenant,
            model,
            json!({"GroupId": att(&endpoint_sg, "GroupId"), "IpProtocol": "tcp", "FromPort": port, "ToPort": port,
                   "SourceSecurityGroupId": att(&front_sg, "GroupId"), "Description": format!("{what} from the front")}),
        );
    }
    let endpoint = format!("{p}Endpoint");
    b.add_owned(
        &endpoint,
        Kind::VpcEndpoint,
        None,
        tenant,
        model,
        json!({
            "VpcEndpointType": "Interface",
            "ServiceName": r(&param),
            "VpcId": r("Vpc"),
            "SubnetIds": [r("PrivateSubnetAz1"), r("PrivateSubnetAz2")],
            "SecurityGroupIds": [att(&endpoint_sg, "GroupId")],
            "PrivateDnsEnabled": false,
        }),
    );
    let lb = format!("{p}LoadBalancer");
    b.add_owned(
        &lb,
        Kind::LoadBalancer,
        None,
        tenant,
        model,
        json!({"Type": "network", "Scheme": "internet-facing",
               "Subnets": [r("PublicSubnetAz1"), r("PublicSubnetAz2")],
               "SecurityGroups": [att(&front_sg, "GroupId")],
               "LoadBalancerAttributes": [{"Key": "load_balancing.cross_zone.enabled", "Value": "true"}]}),
    )
    .depends_on
    .push("InternetGatewayAttachment".into());
    for (what, port) in ports {
        let tg = format!("{p}{what}TargetGroup");
        b.add_owned(
            &tg,
            Kind::TargetGroup,
            None,
            tenant,
            model,
            json!({"VpcId": r("Vpc"), "Protocol": "TCP", "Port": port, "TargetType": "ip",
                   "HealthCheckProtocol": "TCP", "HealthCheckIntervalSeconds": 10,
                   "TargetGroupAttributes": [{"Key": "deregistration_delay.timeout_seconds", "Value": "10"}]}),
        );
        b.add_owned(
            format!("{p}{what}Listener"),
            Kind::Listener,
            None,
            tenant,
            model,
            json!({"LoadBalancerArn": r(&lb), "Port": port, "Protocol": "TCP",
                   "DefaultActions": [{"Type": "forward", "TargetGroupArn": r(&tg)}]}),
        );
    }
    b.add_owned(
        format!("{p}DnsRecord"),
        Kind::RecordSet,
        None,
        tenant,
        model,
        json!({"HostedZoneName": format!("{}.", t.dns.zone.trim_end_matches('.')),
               "Name": format!("{}.", t.dns.fqdn()), "Type": "A",
               "AliasTarget": {"DNSName": att(&lb, "DNSName"), "HostedZoneId": att(&lb, "CanonicalHostedZoneID"),
                               "EvaluateTargetHealth": false}}),
    );
    b.output(
        &format!("{p}DnsName"),
        &format!("Endpoint of {tenant}/{model}"),
        json!(t.dns.fqdn()),
    );
    b.output(
        &format!("{p}EndpointNetworkInterfaceIds"),
        &format!("ENIs of the endpoint to {tenant}/{model}; the applier registers their addresses as targets"),
        json!({"Fn::Join": [",", att(&endpoint, "NetworkInterfaceIds")]}),
    );
}
