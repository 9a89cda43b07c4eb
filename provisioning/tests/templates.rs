//! Golden and structural tests of the rendered CloudFormation templates.
//!
//! Every structural check runs on the YAML *as parsed back* by an independent YAML 1.1 parser, so the tests
//! check what CloudFormation would read, not what we meant to write.
//!
//! Regenerate the golden files after an intended change with `UPDATE_GOLDEN=1 cargo test -p tandem-provisioning`
//! and review the diff.

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde_json::Value;
use tandem_provisioning::carwash::{self, CarwashSpec};
use tandem_provisioning::resource::{Kind, Tagging};
use tandem_provisioning::spec::IngressMode;
use tandem_provisioning::{TenantSpec, plan, render};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn example(name: &str) -> TenantSpec {
    let path = root().join("../docs/examples").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    TenantSpec::load(&text).unwrap_or_else(|errs| panic!("{name}: {errs:#?}"))
}

fn single() -> TenantSpec {
    example("tenant-single.toml")
}

fn double() -> TenantSpec {
    example("tenant-double.toml")
}

fn carwash_tenant(tenant: &str, slot: u8) -> TenantSpec {
    let mut s = double();
    s.tenant = tenant.to_owned();
    s.dns.name = format!("{tenant}-billing");
    s.ingress.mode = IngressMode::Carwash;
    s.ingress.slot = Some(slot);
    s.validate().unwrap();
    s
}

/// Renders, parses the YAML back, and checks it equals the JSON template.
fn rendered(plan: &tandem_provisioning::Plan) -> (String, Value) {
    let yaml = render::cloudformation(plan);
    let parsed: Value = serde_norway::from_str(&yaml)
        .unwrap_or_else(|e| panic!("rendered YAML does not parse: {e}"));
    assert_eq!(
        parsed,
        render::template(plan),
        "YAML round trip differs from the JSON template"
    );
    (yaml, parsed)
}

fn golden(name: &str, actual: &str) {
    let path = root().join("tests/golden").join(format!("{name}.yaml"));
    if std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run with UPDATE_GOLDEN=1 to create it",
            path.display()
        )
    });
    if expected != actual {
        let line = expected
            .lines()
            .zip(actual.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(0);
        panic!(
            "{} differs from the rendered template at line {}:\n expected: {:?}\n   actual: {:?}\nrun with UPDATE_GOLDEN=1 to accept",
            path.display(),
            line + 1,
            expected.lines().nth(line),
            actual.lines().nth(line)
        );
    }
}

fn resources(t: &Value) -> &serde_json::Map<String, Value> {
    t["Resources"].as_object().unwrap()
}

fn of_type<'a>(t: &'a Value, cfn: &'a str) -> impl Iterator<Item = (&'a String, &'a Value)> + 'a {
    resources(t).iter().filter(move |(_, r)| r["Type"] == cfn)
}

/// Every Ref / GetAtt / Sub reference / DependsOn names something defined.
fn check_references(t: &Value) {
    let res: BTreeSet<&str> = resources(t).keys().map(String::as_str).collect();
    let params: BTreeSet<&str> = t
        .get("Parameters")
        .and_then(Value::as_object)
        .map(|m| m.keys().map(String::as_str).collect())
        .unwrap_or_default();
    let mut problems = Vec::new();
    fn walk(
        v: &Value,
        at: &str,
        res: &BTreeSet<&str>,
        params: &BTreeSet<&str>,
        problems: &mut Vec<String>,
    ) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(id)) = m.get("Ref")
                    && !id.starts_with("AWS::")
                    && !res.contains(id.as_str())
                    && !params.contains(id.as_str())
                {
                    problems.push(format!("{at}: Ref {id}"));
                }
                if let Some(ga) = m.get("Fn::GetAtt") {
                    let id = ga[0].as_str().unwrap_or_default();
                    if !res.contains(id) || !ga[1].is_string() {
                        problems.push(format!("{at}: GetAtt {ga}"));
                    }
                }
                if let Some(Value::String(s)) = m.get("Fn::Sub") {
                    for part in s.split("${").skip(1) {
                        let name = part.split('}').next().unwrap_or_default();
                        let id = name.split('.').next().unwrap_or_default();
                        let ok = name.starts_with('!')
                            || id.starts_with("AWS::")
                            || res.contains(id)
                            || (params.contains(id) && !name.contains('.'));
                        if !ok {
                            problems.push(format!("{at}: Sub ${{{name}}}"));
                        }
                    }
                }
                for (k, v) in m {
                    walk(v, &format!("{at}.{k}"), res, params, problems);
                }
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, at, res, params, problems)),
            _ => {}
        }
    }
    for (id, r) in resources(t) {
        walk(&r["Properties"], id, &res, &params, &mut problems);
        if let Some(deps) = r.get("DependsOn") {
            for d in deps.as_array().unwrap() {
                if !res.contains(d.as_str().unwrap()) {
                    problems.push(format!("{id}: DependsOn {d}"));
                }
            }
        }
    }
    if let Some(outputs) = t.get("Outputs") {
        walk(outputs, "Outputs", &res, &params, &mut problems);
    }
    assert!(problems.is_empty(), "dangling references: {problems:#?}");
}

fn tag_value<'a>(tags: &'a Value, key: &str) -> Option<&'a str> {
    match tags {
        Value::Array(list) => list
            .iter()
            .find(|t| t["Key"] == key)
            .and_then(|t| t["Value"].as_str()),
        Value::Object(m) => m.get(key).and_then(Value::as_str),
        _ => None,
    }
}

/// Every resource has a known type; every taggable one carries tenant, model, lane and managed-by=tandem.
fn check_tags(t: &Value, tenant: &str, model: &str) {
    for (id, r) in resources(t) {
        let cfn = r["Type"].as_str().unwrap();
        let kind = Kind::ALL
            .iter()
            .find(|k| k.cfn_type() == cfn)
            .unwrap_or_else(|| panic!("{id}: unknown type {cfn}"));
        let props = &r["Properties"];
        let tag_sets: Vec<&Value> = match kind.tagging() {
            Tagging::None => continue,
            Tagging::List(p) | Tagging::Map(p) => vec![&props[p]],
            Tagging::AutoScaling => {
                assert!(
                    props["Tags"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .all(|t| t["PropagateAtLaunch"] == true),
                    "{id}"
                );
                vec![&props["Tags"]]
            }
            Tagging::LaunchTemplate => {
                let mut v = vec![&props["TagSpecifications"][0]["Tags"]];
                let inner = props["LaunchTemplateData"]["TagSpecifications"]
                    .as_array()
                    .unwrap();
                assert!(
                    inner.iter().any(|s| s["ResourceType"] == "instance"),
                    "{id}: instances untagged"
                );
                v.extend(inner.iter().map(|s| &s["Tags"]));
                v
            }
        };
        for tags in tag_sets {
            assert_eq!(
                tag_value(tags, "managed-by"),
                Some("tandem"),
                "{id}: {tags}"
            );
            let owner = tag_value(tags, "tenant").unwrap_or_else(|| panic!("{id}: no tenant tag"));
            assert!(owner == tenant || tenant == "*", "{id}: tenant tag {owner}");
            let m = tag_value(tags, "model").unwrap_or_else(|| panic!("{id}: no model tag"));
            assert!(m == model || model == "*", "{id}: model tag {m}");
            let lane = tag_value(tags, "lane").unwrap_or_else(|| panic!("{id}: no lane tag"));
            assert!(
                ["a", "b", "shared"].contains(&lane),
                "{id}: lane tag {lane}"
            );
        }
    }
}

/// All CIDR ingress (inline or separate rules) comes from the allowed list.
fn ingress_cidrs(t: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for (_, r) in of_type(t, "AWS::EC2::SecurityGroup") {
        for rule in r["Properties"]["SecurityGroupIngress"]
            .as_array()
            .into_iter()
            .flatten()
        {
            assert!(rule.get("CidrIpv6").is_none());
            if let Some(c) = rule["CidrIp"].as_str() {
                out.push(c.to_owned());
            }
        }
    }
    for (_, r) in of_type(t, "AWS::EC2::SecurityGroupIngress") {
        assert!(r["Properties"].get("CidrIpv6").is_none());
        if let Some(c) = r["Properties"]["CidrIp"].as_str() {
            out.push(c.to_owned());
        }
    }
    out
}

fn common_tenant_checks(spec: &TenantSpec) -> (String, Value) {
    let p = plan::plan(spec);
    let (yaml, t) = rendered(&p);
    check_references(&t);
    check_tags(&t, &spec.tenant, &spec.model);
    for c in ingress_cidrs(&t) {
        assert!(
            spec.allowed_cidrs.contains(&c),
            "ingress from {c}, which the spec does not allow"
        );
    }
    (yaml, t)
}

#[test]
fn golden_single_lane() {
    let (yaml, _) = common_tenant_checks(&single());
    golden("tenant-single", &yaml);
}

#[test]
fn golden_double_lane() {
    let (yaml, _) = common_tenant_checks(&double());
    golden("tenant-double", &yaml);
}

#[test]
fn golden_carwash() {
    let tenants = [carwash_tenant("globex", 7), carwash_tenant("initech", 3)];
    let p = carwash::plan(&CarwashSpec::default(), &tenants).unwrap();
    let (yaml, t) = rendered(&p);
    check_references(&t);
    check_tags(&t, "*", "*");
    golden("carwash", &yaml);
    // Each tenant's front allows exactly that tenant's ranges.
    let front = &resources(&t)["Route007FrontSecurityGroup"]["Properties"]["SecurityGroupIngress"];
    let cidrs: BTreeSet<&str> = front
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["CidrIp"].as_str().unwrap())
        .collect();
    assert_eq!(
        cidrs,
        tenants[0]
            .allowed_cidrs
            .iter()
            .map(String::as_str)
            .collect()
    );
    // Routes are tagged with their tenant.
    assert_eq!(
        tag_value(
            &resources(&t)["Route003LoadBalancer"]["Properties"]["Tags"],
            "tenant"
        ),
        Some("initech")
    );
    // Target groups start empty (the applier registers the endpoint's addresses) and the ENIs are exported.
    for (id, tg) in of_type(&t, "AWS::ElasticLoadBalancingV2::TargetGroup") {
        assert!(tg["Properties"].get("Targets").is_none(), "{id}");
        assert_eq!(tg["Properties"]["TargetType"], "ip", "{id}");
    }
    for slot in ["Route003", "Route007"] {
        let out = &t["Outputs"][&format!("{slot}EndpointNetworkInterfaceIds")]["Value"]["Fn::Join"]
            [1]["Fn::GetAtt"];
        assert_eq!(out[0], format!("{slot}Endpoint"));
    }
}

#[test]
fn rendering_is_deterministic() {
    for spec in [single(), double(), carwash_tenant("globex", 7)] {
        let a = render::cloudformation(&plan::plan(&spec));
        let reparsed = TenantSpec::load(&toml::to_string(&spec).unwrap()).unwrap();
        let b = render::cloudformation(&plan::plan(&reparsed));
        assert_eq!(a, b);
    }
}

#[test]
fn health_checks_ask_the_broker_health_endpoint() {
    for spec in [single(), double()] {
        let t = render::template(&plan::plan(&spec));
        let tgs: Vec<_> = of_type(&t, "AWS::ElasticLoadBalancingV2::TargetGroup").collect();
        assert_eq!(tgs.len(), 3);
        for (id, tg) in tgs {
            let p = &tg["Properties"];
            assert_eq!(p["HealthCheckPath"], "/health", "{id}");
            assert_eq!(p["HealthCheckProtocol"], "HTTP", "{id}");
            assert_eq!(p["HealthCheckPort"], spec.ports.http.to_string(), "{id}");
            assert_eq!(p["Matcher"]["HttpCode"], "200", "{id}");
            assert!(
                p["HealthCheckIntervalSeconds"].as_u64().unwrap() <= 10,
                "{id}: slow health checks"
            );
            assert!(p["UnhealthyThresholdCount"].as_u64().unwrap() <= 3, "{id}");
        }
    }
}

#[test]
fn listeners_jms_stomp_tcp_https_tls() {
    let spec = double();
    let t = render::template(&plan::plan(&spec));
    let l = |id: &str| resources(&t)[id]["Properties"].clone();
    assert_eq!(
        (
            l("JmsListener")["Protocol"].clone(),
            l("JmsListener")["Port"].clone()
        ),
        ("TCP".into(), 61616.into())
    );
    assert_eq!(l("StompListener")["Protocol"], "TCP");
    let https = l("HttpsListener");
    assert_eq!(
        (https["Protocol"].as_str(), https["Port"].as_u64()),
        (Some("TLS"), Some(443))
    );
    assert_eq!(
        https["Certificates"][0]["CertificateArn"]["Ref"],
        "TlsCertificateArn"
    );
    assert_eq!(
        https["DefaultActions"][0]["TargetGroupArn"]["Ref"],
        "HttpTargetGroup"
    );
}

#[test]
fn no_open_ingress_unless_the_spec_says_so() {
    for spec in [single(), double()] {
        let t = render::template(&plan::plan(&spec));
        assert!(!ingress_cidrs(&t).contains(&"0.0.0.0/0".to_owned()));
    }
    let mut open = single();
    open.allowed_cidrs = vec!["0.0.0.0/0".into()];
    let t = render::template(&plan::plan(&open));
    let cidrs = ingress_cidrs(&t);
    assert!(
        cidrs.iter().all(|c| c == "0.0.0.0/0") && cidrs.len() == 3,
        "{cidrs:?}"
    );
    // Only the load balancer's group is open; lanes and EFS still accept only their neighbours.
    for sg in ["LaneSecurityGroup", "EfsSecurityGroup"] {
        assert!(
            resources(&t)[sg]["Properties"]
                .get("SecurityGroupIngress")
                .is_none(),
            "{sg}"
        );
    }
}

#[test]
fn security_groups_are_least_privilege() {
    let spec = double();
    let t = render::template(&plan::plan(&spec));
    let rules: Vec<(String, String, u64)> = of_type(&t, "AWS::EC2::SecurityGroupIngress")
        .map(|(_, r)| {
            let p = &r["Properties"];
            assert_eq!(p["FromPort"], p["ToPort"]);
            (
                p["GroupId"]["Fn::GetAtt"][0].as_str().unwrap().to_owned(),
                p["SourceSecurityGroupId"]["Fn::GetAtt"][0]
                    .as_str()
                    .unwrap()
                    .to_owned(),
                p["FromPort"].as_u64().unwrap(),
            )
        })
        .collect();
    let lane_ports: BTreeSet<u64> = rules
        .iter()
        .filter(|(g, s, _)| g == "LaneSecurityGroup" && s == "LoadBalancerSecurityGroup")
        .map(|r| r.2)
        .collect();
    assert_eq!(lane_ports, [8161, 61613, 61616].into_iter().collect());
    assert!(rules.contains(&("EfsSecurityGroup".into(), "LaneSecurityGroup".into(), 2049)));
    assert_eq!(rules.len(), 4, "{rules:?}");
    // Lanes talk to EFS on 2049 and to AWS APIs on 443, nothing else.
    let egress: Vec<u64> = of_type(&t, "AWS::EC2::SecurityGroupEgress")
        .filter(|(_, r)| r["Properties"]["GroupId"]["Fn::GetAtt"][0] == "LaneSecurityGroup")
        .map(|(_, r)| r["Properties"]["FromPort"].as_u64().unwrap())
        .collect();
    assert_eq!(egress, vec![2049]);
    let inline = resources(&t)["LaneSecurityGroup"]["Properties"]["SecurityGroupEgress"]
        .as_array()
        .unwrap();
    assert_eq!(inline.len(), 1);
    assert_eq!(
        (inline[0]["FromPort"].as_u64(), inline[0]["ToPort"].as_u64()),
        (Some(443), Some(443))
    );
}

#[test]
fn nat_and_eip_exist_iff_fixed_outbound_ip() {
    for fixed in [false, true] {
        for mut spec in [single(), double()] {
            spec.fixed_outbound_ip = fixed;
            let t = render::template(&plan::plan(&spec));
            assert_eq!(
                of_type(&t, "AWS::EC2::NatGateway").count(),
                usize::from(fixed)
            );
            assert_eq!(of_type(&t, "AWS::EC2::EIP").count(), usize::from(fixed));
            assert_eq!(t["Outputs"].get("OutboundIp").is_some(), fixed);
            // Lanes sit behind the NAT (private, no public IP) exactly when the outbound IP is fixed.
            let lt = &resources(&t)["LaneALaunchTemplate"]["Properties"]["LaunchTemplateData"];
            assert_eq!(
                lt["NetworkInterfaces"][0]["AssociatePublicIpAddress"],
                !fixed
            );
            let subnet = resources(&t)["LaneAAutoScalingGroup"]["Properties"]["VPCZoneIdentifier"]
                [0]["Ref"]
                .clone();
            assert_eq!(subnet.as_str().unwrap().starts_with("Private"), fixed);
        }
    }
}

#[test]
fn double_lanes_are_pinned_to_different_zones() {
    let t = render::template(&plan::plan(&double()));
    let zone_of_lane = |lane: &str| {
        let subnets = resources(&t)[&format!("Lane{lane}AutoScalingGroup")]["Properties"]["VPCZoneIdentifier"].clone();
        let subnets = subnets.as_array().unwrap();
        assert_eq!(subnets.len(), 1, "lane {lane} is not pinned to one subnet");
        let subnet = subnets[0]["Ref"].as_str().unwrap();
        resources(&t)[subnet]["Properties"]["AvailabilityZone"].clone()
    };
    let (a, b) = (zone_of_lane("A"), zone_of_lane("B"));
    assert_ne!(a, b);
    assert_eq!(a["Fn::Select"][0], 0);
    assert_eq!(b["Fn::Select"][0], 1);
    // Lanes roll one at a time.
    let deps = &resources(&t)["LaneBAutoScalingGroup"]["DependsOn"];
    assert!(
        deps.as_array()
            .unwrap()
            .contains(&"LaneAAutoScalingGroup".into())
    );
}

#[test]
fn single_lane_may_move_between_zones() {
    let t = render::template(&plan::plan(&single()));
    assert!(resources(&t).get("LaneBAutoScalingGroup").is_none());
    assert_eq!(
        resources(&t)["LaneAAutoScalingGroup"]["Properties"]["VPCZoneIdentifier"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
}

#[test]
fn lanes_heal_without_killing_the_dormant() {
    let spec = double();
    let t = render::template(&plan::plan(&spec));
    for lane in ["A", "B"] {
        let asg = &resources(&t)[&format!("Lane{lane}AutoScalingGroup")];
        let p = &asg["Properties"];
        assert_eq!(
            p["HealthCheckType"], "EC2",
            "ELB health would replace the dormant lane"
        );
        assert_eq!(
            (p["MinSize"].as_str(), p["MaxSize"].as_str()),
            (Some("1"), Some("1"))
        );
        assert_eq!(
            asg["UpdatePolicy"]["AutoScalingRollingUpdate"]["MinInstancesInService"],
            0
        );
        assert_eq!(
            p["LaunchTemplate"]["LaunchTemplateId"]["Ref"],
            format!("Lane{lane}LaunchTemplate")
        );
        let data = &resources(&t)[&format!("Lane{lane}LaunchTemplate")]["Properties"]["LaunchTemplateData"];
        let script = data["UserData"]["Fn::Base64"]["Fn::Sub"].as_str().unwrap();
        assert!(script.contains("Restart=always"));
        assert!(script.contains(&format!("accesspoint=${{Lane{lane}AccessPoint}}")));
        assert!(script.contains(&format!("-e TANDEM_LANE={}", lane.to_lowercase())));
        assert!(script.contains("-e TANDEM_DATA_DIR=/var/lib/tandem"));
    }
}

#[test]
fn efs_is_encrypted_backed_up_replicated_and_mounted_per_zone() {
    for spec in [single(), double()] {
        let t = render::template(&plan::plan(&spec));
        let fs = &resources(&t)["FileSystem"];
        assert_eq!(fs["DeletionPolicy"], "Retain");
        let p = &fs["Properties"];
        assert_eq!(p["Encrypted"], true);
        assert_eq!(p["BackupPolicy"]["Status"], "ENABLED");
        assert_eq!(
            p["ReplicationConfiguration"]["Destinations"][0]["Region"],
            spec.contingency_region.as_str()
        );
        assert_eq!(of_type(&t, "AWS::EFS::MountTarget").count(), 2);
        assert_eq!(
            of_type(&t, "AWS::EFS::AccessPoint").count(),
            usize::from(spec.lanes)
        );
        let plan_rule =
            &resources(&t)["BackupPlan"]["Properties"]["BackupPlan"]["BackupPlanRule"][0];
        assert_eq!(
            plan_rule["Lifecycle"]["DeleteAfterDays"],
            spec.backup_retention_days
        );
        // All access points share one root: the lanes must see the same journal and lease.
        let roots: BTreeSet<String> = of_type(&t, "AWS::EFS::AccessPoint")
            .map(|(_, a)| {
                a["Properties"]["RootDirectory"]["Path"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        assert_eq!(roots.len(), 1);
    }
}

#[test]
fn monitoring() {
    let spec = double();
    let t = render::template(&plan::plan(&spec));
    assert_eq!(
        resources(&t)["LogGroup"]["Properties"]["RetentionInDays"],
        spec.log_retention_days
    );
    let alarms: BTreeSet<&str> = of_type(&t, "AWS::CloudWatch::Alarm")
        .map(|(id, _)| id.as_str())
        .collect();
    let expected = [
        "DlqDepthAlarm",
        "EfsThroughputAlarm",
        "FailoverAlarm",
        "LaneADownAlarm",
        "LaneBDownAlarm",
        "NoActiveLaneAlarm",
        "QueueDepthAlarm",
    ];
    assert_eq!(alarms, expected.into_iter().collect());
    for (id, a) in of_type(&t, "AWS::CloudWatch::Alarm") {
        assert_eq!(
            a["Properties"]["AlarmActions"][0]["Ref"], "AlarmTopic",
            "{id}"
        );
    }
    let q = &resources(&t)["QueueDepthAlarm"]["Properties"];
    assert_eq!(q["Threshold"], spec.alarms.queue_depth);
    let efs = &resources(&t)["EfsThroughputAlarm"]["Properties"];
    assert_eq!(
        efs["Threshold"],
        u64::from(spec.alarms.efs_throughput_percent)
    );
    assert_eq!(
        efs["Metrics"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["ReturnData"] == true)
            .count(),
        1
    );
}

#[test]
fn data_sink_bucket_iff_requested_and_locked_down() {
    let t = render::template(&plan::plan(&single()));
    assert_eq!(of_type(&t, "AWS::S3::Bucket").count(), 0);
    let t = render::template(&plan::plan(&double()));
    let (_, bucket) = of_type(&t, "AWS::S3::Bucket").next().unwrap();
    let p = &bucket["Properties"];
    let block = p["PublicAccessBlockConfiguration"].as_object().unwrap();
    assert_eq!(block.len(), 4);
    assert!(block.values().all(|v| v == true));
    assert!(p["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"]["SSEAlgorithm"].is_string());
    // Lanes may write dead letters and nothing else there.
    let lane_policy =
        resources(&t)["LaneARole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
            .clone();
    assert!(
        lane_policy
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["Action"] == "s3:PutObject")
    );
}

#[test]
fn direct_vs_carwash_ingress() {
    let t = render::template(&plan::plan(&double()));
    assert_eq!(
        resources(&t)["LoadBalancer"]["Properties"]["Scheme"],
        "internet-facing"
    );
    let dns = &resources(&t)["DnsRecord"]["Properties"];
    assert_eq!(dns["Name"], "globex-billing.tandem.example.com.");
    assert_eq!(dns["HostedZoneName"], "tandem.example.com.");
    assert!(resources(&t).get("EndpointService").is_none());

    let (_, t) = common_tenant_checks(&carwash_tenant("globex", 7));
    let lb = &resources(&t)["LoadBalancer"]["Properties"];
    assert_eq!(lb["Scheme"], "internal");
    assert_eq!(
        lb["EnforceSecurityGroupInboundRulesOnPrivateLinkTraffic"],
        "off"
    );
    assert!(
        resources(&t).get("DnsRecord").is_none(),
        "the carwash owns the public record"
    );
    assert!(resources(&t).get("EndpointService").is_some());
    assert!(ingress_cidrs(&t).is_empty());
    assert!(t["Outputs"].get("EndpointServiceName").is_some());
    assert!(t["Parameters"].get("CarwashPrincipal").is_some());
}

#[test]
fn carwash_rejects_bad_tenant_sets() {
    let errs = carwash::plan(
        &CarwashSpec::default(),
        &[carwash_tenant("a", 5), carwash_tenant("b", 5)],
    )
    .unwrap_err();
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].key, "tenants[1].ingress.slot");
    let errs = carwash::plan(&CarwashSpec::default(), &[double()]).unwrap_err();
    assert_eq!(errs[0].key, "tenants[0].ingress.mode");
    let mut far = carwash_tenant("a", 1);
    far.region = "us-east-1".into();
    far.contingency_region = "us-west-2".into();
    let bad = CarwashSpec {
        vpc_cidr: "10.0.0.0/20".into(),
        ..CarwashSpec::default()
    };
    let keys: Vec<String> = carwash::plan(&bad, &[far])
        .unwrap_err()
        .into_iter()
        .map(|e| e.key)
        .collect();
    assert_eq!(keys, ["carwash.vpc_cidr", "tenants[0].region"]);
}

#[test]
fn outputs_name_endpoint_and_file_system() {
    let t = render::template(&plan::plan(&double()));
    let o = t["Outputs"].as_object().unwrap();
    assert_eq!(
        o["EndpointDnsName"]["Value"],
        "globex-billing.tandem.example.com"
    );
    assert_eq!(o["FileSystemId"]["Value"]["Ref"], "FileSystem");
    assert_eq!(
        o["LoadBalancerDnsName"]["Value"]["Fn::GetAtt"][0],
        "LoadBalancer"
    );
    assert!(o.values().all(|v| {
        v["Export"]["Name"]["Fn::Sub"]
            .as_str()
            .unwrap()
            .starts_with("${AWS::StackName}-")
    }));
}

#[test]
fn summary_lists_every_resource() {
    let p = plan::plan(&double());
    let s = p.summary();
    assert!(
        s.starts_with("stack tandem-globex-billing in eu-central-1:"),
        "{s}"
    );
    for r in &p.resources {
        assert!(
            s.lines()
                .any(|l| l.split_whitespace().next() == Some(r.logical_id.as_str())),
            "{} missing",
            r.logical_id
        );
    }
    assert!(s.contains("AWS::EFS::FileSystem"));
}

#[test]
fn example_carwash_spec_parses_and_rejects_unknown_keys() {
    let text = std::fs::read_to_string(root().join("../docs/examples/carwash.toml")).unwrap();
    let cw = CarwashSpec::from_toml_str(&text).unwrap();
    assert_eq!(cw, CarwashSpec::default());
    let e = CarwashSpec::from_toml_str("regoin = \"eu-west-1\"\n").unwrap_err();
    assert_eq!(e.key, "regoin");
}

#[test]
fn every_kind_has_a_distinct_cloudformation_type() {
    let types: BTreeSet<&str> = Kind::ALL.iter().map(|k| k.cfn_type()).collect();
    assert_eq!(types.len(), Kind::ALL.len());
    assert!(
        types
            .iter()
            .all(|t| t.starts_with("AWS::") && t.matches("::").count() == 2)
    );
}

#[test]
fn templates_fit_cloudformation_limits() {
    for spec in [single(), double(), carwash_tenant("globex", 7)] {
        let p = plan::plan(&spec);
        assert!(p.resources.len() <= render::STACK_RESOURCE_LIMIT);
        let json = render::cloudformation_json(&p);
        assert!(
            json.len() < render::TEMPLATE_BODY_LIMIT,
            "{}: {} bytes",
            p.stack_name,
            json.len()
        );
        assert_eq!(
            serde_json::from_str::<Value>(&json).unwrap(),
            render::template(&p)
        );
    }
    // The carwash grows by one route per tenant and refuses to outgrow a stack.
    let many: Vec<TenantSpec> = (1..=40)
        .map(|i| carwash_tenant(&format!("t{i}"), i))
        .collect();
    let errs = carwash::plan(&CarwashSpec::default(), &many).unwrap_err();
    assert_eq!(errs[0].key, "tenants");
    assert!(carwash::plan(&CarwashSpec::default(), &many[..20]).is_ok());
}
