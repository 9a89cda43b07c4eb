//! The resource graph: typed resource kinds, logical ids, dependencies, tags, parameters and outputs.
//!
//! A [`Plan`] is what both renderers (CloudFormation now, the AWS SDK applier later) consume. Properties are
//! CloudFormation-shaped JSON built by the planners; the *kind* of each resource is a closed enum that knows its
//! CloudFormation type and how that type carries tags, so tagging is done once, here, for every resource.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use serde_json::{Map, Value, json};

/// A lane: "a" (first availability zone) or "b" (second).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Lane {
    A,
    B,
}

impl Lane {
    pub const ALL: [Lane; 2] = [Lane::A, Lane::B];
    /// "a" / "b": tags, environment, log streams.
    pub fn name(self) -> &'static str {
        match self {
            Lane::A => "a",
            Lane::B => "b",
        }
    }
    /// "A" / "B": logical ids.
    pub fn id(self) -> &'static str {
        match self {
            Lane::A => "A",
            Lane::B => "B",
        }
    }
    /// Index of the availability zone this lane is pinned to in a double-lane tenant.
    pub fn az_index(self) -> usize {
        match self {
            Lane::A => 0,
            Lane::B => 1,
        }
    }
}

/// How a CloudFormation type carries tags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tagging {
    /// The type has no tags in CloudFormation.
    None,
    /// `prop: [{Key, Value}]`.
    List(&'static str),
    /// `prop: {key: value}`.
    Map(&'static str),
    /// Auto Scaling: `Tags: [{Key, Value, PropagateAtLaunch: true}]`, so instances carry them too.
    AutoScaling,
    /// Launch template: the template itself, plus the instances, volumes and ENIs it launches.
    LaunchTemplate,
}

macro_rules! kinds {
    ($($variant:ident => $cfn:literal, $tagging:expr;)*) => {
        /// Every resource type the planners emit.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum Kind { $($variant),* }
        impl Kind {
            pub const ALL: &'static [Kind] = &[$(Kind::$variant),*];
            /// The CloudFormation resource type.
            pub fn cfn_type(self) -> &'static str { match self { $(Kind::$variant => $cfn),* } }
            pub fn tagging(self) -> Tagging { match self { $(Kind::$variant => $tagging),* } }
        }
    };
}

kinds! {
    Vpc => "AWS::EC2::VPC", Tagging::List("Tags");
    Subnet => "AWS::EC2::Subnet", Tagging::List("Tags");
    InternetGateway => "AWS::EC2::InternetGateway", Tagging::List("Tags");
    GatewayAttachment => "AWS::EC2::VPCGatewayAttachment", Tagging::None;
    Eip => "AWS::EC2::EIP", Tagging::List("Tags");
    NatGateway => "AWS::EC2::NatGateway", Tagging::List("Tags");
    RouteTable => "AWS::EC2::RouteTable", Tagging::List("Tags");
    Route => "AWS::EC2::Route", Tagging::None;
    RouteTableAssociation => "AWS::EC2::SubnetRouteTableAssociation", Tagging::None;
    SecurityGroup => "AWS::EC2::SecurityGroup", Tagging::List("Tags");
    SecurityGroupIngress => "AWS::EC2::SecurityGroupIngress", Tagging::None;
    SecurityGroupEgress => "AWS::EC2::SecurityGroupEgress", Tagging::None;
    VpcEndpoint => "AWS::EC2::VPCEndpoint", Tagging::List("Tags");
    VpcEndpointService => "AWS::EC2::VPCEndpointService", Tagging::List("Tags");
    VpcEndpointServicePermissions => "AWS::EC2::VPCEndpointServicePermissions", Tagging::None;
    FileSystem => "AWS::EFS::FileSystem", Tagging::List("FileSystemTags");
    MountTarget => "AWS::EFS::MountTarget", Tagging::None;
    AccessPoint => "AWS::EFS::AccessPoint", Tagging::List("AccessPointTags");
    BackupVault => "AWS::Backup::BackupVault", Tagging::Map("BackupVaultTags");
    BackupPlan => "AWS::Backup::BackupPlan", Tagging::Map("BackupPlanTags");
    BackupSelection => "AWS::Backup::BackupSelection", Tagging::None;
    Role => "AWS::IAM::Role", Tagging::List("Tags");
    InstanceProfile => "AWS::IAM::InstanceProfile", Tagging::None;
    LaunchTemplate => "AWS::EC2::LaunchTemplate", Tagging::LaunchTemplate;
    AutoScalingGroup => "AWS::AutoScaling::AutoScalingGroup", Tagging::AutoScaling;
    LoadBalancer => "AWS::ElasticLoadBalancingV2::LoadBalancer", Tagging::List("Tags");
    TargetGroup => "AWS::ElasticLoadBalancingV2::TargetGroup", Tagging::List("Tags");
    Listener => "AWS::ElasticLoadBalancingV2::Listener", Tagging::None;
    RecordSet => "AWS::Route53::RecordSet", Tagging::None;
    LogGroup => "AWS::Logs::LogGroup", Tagging::List("Tags");
    MetricFilter => "AWS::Logs::MetricFilter", Tagging::None;
    Alarm => "AWS::CloudWatch::Alarm", Tagging::List("Tags");
    Topic => "AWS::SNS::Topic", Tagging::List("Tags");
    Bucket => "AWS::S3::Bucket", Tagging::List("Tags");
    BucketPolicy => "AWS::S3::BucketPolicy", Tagging::None;
}

/// One resource in a plan.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    /// CloudFormation logical id: PascalCase, unique, stable for a given spec.
    pub logical_id: String,
    pub kind: Kind,
    /// CloudFormation `Properties` (tags included once the plan is finished).
    pub properties: Map<String, Value>,
    /// Explicit ordering beyond what `Ref`/`GetAtt` imply (sorted, unique).
    pub depends_on: Vec<String>,
    /// Values of the `tenant`, `model` and `lane` tags.
    pub tenant: String,
    pub model: String,
    pub lane: Option<Lane>,
    /// Holds data: keep it when the stack is deleted or the resource replaced.
    pub retain: bool,
    /// CloudFormation `UpdatePolicy`, when the type needs one.
    pub update_policy: Option<Value>,
}

impl Resource {
    /// The tags every taggable resource carries, sorted by key.
    pub fn tags(&self, stack: &str) -> Vec<(String, String)> {
        vec![
            ("Name".to_owned(), format!("{stack}-{}", self.logical_id)),
            (
                "lane".to_owned(),
                self.lane.map_or("shared", Lane::name).to_owned(),
            ),
            ("managed-by".to_owned(), "tandem".to_owned()),
            ("model".to_owned(), self.model.clone()),
            ("tenant".to_owned(), self.tenant.clone()),
        ]
    }
}

/// A template parameter: something only known at apply time (an image, a certificate, a principal).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parameter {
    pub id: String,
    pub kind: String,
    pub description: String,
    pub default: Option<String>,
    pub allowed_pattern: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    pub id: String,
    pub description: String,
    pub value: Value,
}

/// A renderable resource graph for one stack.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub stack_name: String,
    pub description: String,
    pub region: String,
    pub parameters: Vec<Parameter>,
    /// In planning order (roughly: network, security, storage, compute, traffic, monitoring).
    pub resources: Vec<Resource>,
    pub outputs: Vec<Output>,
}

impl Plan {
    pub fn resource(&self, logical_id: &str) -> Option<&Resource> {
        self.resources.iter().find(|r| r.logical_id == logical_id)
    }

    pub fn of_kind(&self, kind: Kind) -> impl Iterator<Item = &Resource> {
        self.resources.iter().filter(move |r| r.kind == kind)
    }

    /// A human-readable table of the resources.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "stack {} in {}: {} resources, {} parameters, {} outputs",
            self.stack_name,
            self.region,
            self.resources.len(),
            self.parameters.len(),
            self.outputs.len()
        );
        let idw = self
            .resources
            .iter()
            .map(|r| r.logical_id.len())
            .max()
            .unwrap_or(0)
            .max(10);
        let tw = self
            .resources
            .iter()
            .map(|r| r.kind.cfn_type().len())
            .max()
            .unwrap_or(0)
            .max(4);
        let _ = writeln!(
            s,
            "{:idw$}  {:tw$}  {:6}  DEPENDS ON",
            "LOGICAL ID", "TYPE", "LANE"
        );
        for r in &self.resources {
            let lane = r.lane.map_or("shared", Lane::name);
            let line = format!(
                "{:idw$}  {:tw$}  {:6}  {}",
                r.logical_id,
                r.kind.cfn_type(),
                lane,
                r.depends_on.join(", ")
            );
            let _ = writeln!(s, "{}", line.trim_end());
        }
        if !self.parameters.is_empty() {
            let ids: Vec<&str> = self.parameters.iter().map(|p| p.id.as_str()).collect();
            let _ = writeln!(s, "parameters: {}", ids.join(", "));
        }
        let ids: Vec<&str> = self.outputs.iter().map(|o| o.id.as_str()).collect();
        let _ = writeln!(s, "outputs: {}", ids.join(", "));
        s
    }
}

/// Collects resources; [`Builder::finish`] tags them and checks the graph's ids.
#[derive(Debug)]
pub struct Builder {
    plan: Plan,
    tenant: String,
    model: String,
}

impl Builder {
    pub fn new(
        stack_name: String,
        description: String,
        region: String,
        tenant: &str,
        model: &str,
    ) -> Self {
        let plan = Plan {
            stack_name,
            description,
            region,
            parameters: Vec::new(),
            resources: Vec::new(),
            outputs: Vec::new(),
        };
        Self {
            plan,
            tenant: tenant.to_owned(),
            model: model.to_owned(),
        }
    }

    /// Adds a resource owned by the builder's tenant. `props` must be a JSON object.
    pub fn add(
        &mut self,
        id: impl Into<String>,
        kind: Kind,
        lane: Option<Lane>,
        props: Value,
    ) -> &mut Resource {
        let (tenant, model) = (self.tenant.clone(), self.model.clone());
        self.add_owned(id, kind, lane, &tenant, &model, props)
    }

    /// Adds a resource tagged with another owner (the carwash's per-tenant routes).
    pub fn add_owned(
        &mut self,
        id: impl Into<String>,
        kind: Kind,
        lane: Option<Lane>,
        tenant: &str,
        model: &str,
        props: Value,
    ) -> &mut Resource {
        let id = id.into();
        assert!(
            self.plan.resource(&id).is_none(),
            "duplicate logical id {id}"
        );
        assert!(
            id.chars().all(|c| c.is_ascii_alphanumeric()),
            "logical id {id} must be alphanumeric"
        );
        let Value::Object(properties) = props else {
            panic!("properties of {id} must be an object")
        };
        self.plan.resources.push(Resource {
            logical_id: id,
            kind,
            properties,
            depends_on: Vec::new(),
            tenant: tenant.to_owned(),
            model: model.to_owned(),
            lane,
            retain: false,
            update_policy: None,
        });
        self.plan.resources.last_mut().expect("just pushed")
    }

    pub fn param(
        &mut self,
        id: &str,
        kind: &str,
        description: &str,
        default: Option<&str>,
        pattern: Option<&str>,
    ) {
        self.plan.parameters.push(Parameter {
            id: id.to_owned(),
            kind: kind.to_owned(),
            description: description.to_owned(),
            default: default.map(str::to_owned),
            allowed_pattern: pattern.map(str::to_owned),
        });
    }

    pub fn output(&mut self, id: &str, description: &str, value: Value) {
        self.plan.outputs.push(Output {
            id: id.to_owned(),
            description: description.to_owned(),
            value,
        });
    }

    /// Applies tags to every taggable resource and normalises dependencies.
    pub fn finish(mut self) -> Plan {
        let stack = self.plan.stack_name.clone();
        for r in &mut self.plan.resources {
            let tags = r.tags(&stack);
            let list = || {
                Value::Array(
                    tags.iter()
                        .map(|(k, v)| json!({"Key": k, "Value": v}))
                        .collect(),
                )
            };
            match r.kind.tagging() {
                Tagging::None => {}
                Tagging::List(prop) => {
                    r.properties.insert(prop.to_owned(), list());
                }
                Tagging::Map(prop) => {
                    let m: Map<String, Value> =
                        tags.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
                    r.properties.insert(prop.to_owned(), Value::Object(m));
                }
                Tagging::AutoScaling => {
                    let t = tags
                        .iter()
                        .map(|(k, v)| json!({"Key": k, "Value": v, "PropagateAtLaunch": true}));
                    r.properties
                        .insert("Tags".to_owned(), Value::Array(t.collect()));
                }
                Tagging::LaunchTemplate => {
                    r.properties.insert(
                        "TagSpecifications".to_owned(),
                        json!([{"ResourceType": "launch-template", "Tags": list()}]),
                    );
                    let specs: Vec<Value> = ["instance", "network-interface", "volume"]
                        .iter()
                        .map(|t| json!({"ResourceType": t, "Tags": list()}))
                        .collect();
                    if let Some(Value::Object(data)) = r.properties.get_mut("LaunchTemplateData") {
                        data.insert("TagSpecifications".to_owned(), Value::Array(specs));
                    }
                }
            }
            let deps: BTreeSet<String> = r.depends_on.drain(..).collect();
            r.depends_on = deps.into_iter().collect();
        }
        self.plan
    }
}

/// `{"Ref": id}`.
pub fn r(id: &str) -> Value {
    json!({ "Ref": id })
}

/// `{"Fn::GetAtt": [id, attribute]}`.
pub fn att(id: &str, attribute: &str) -> Value {
    json!({ "Fn::GetAtt": [id, attribute] })
}

/// `{"Fn::Sub": template}`.
pub fn sub(template: &str) -> Value {
    json!({ "Fn::Sub": template })
}

/// The name of the `index`-th availability zone of the stack's region.
pub fn az(index: usize) -> Value {
    json!({ "Fn::Select": [index, { "Fn::GetAZs": "" }] })
}

/// An IAM policy document.
pub fn policy(statements: Vec<Value>) -> Value {
    json!({ "Version": "2012-10-17", "Statement": statements })
}

/// Security-group egress that matches nothing: replaces the default allow-all egress when an explicit list of
/// egress resources follows (127.0.0.1 is never routed out of an ENI).
pub fn no_egress() -> Value {
    json!([{ "IpProtocol": "-1", "CidrIp": "127.0.0.1/32", "Description": "no egress except the rules below" }])
}
