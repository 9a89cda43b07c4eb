//! Applying a plan to AWS: `tandem provision apply|status|destroy|promote-region`.
//!
//! This is the only part of the crate that does I/O. It is split at a trait seam so the logic can be
//! tested without a network:
//!
//! ```text
//!  deploy::apply / destroy ──▶ CloudFormationApi ──▶ sdk::Sdk (aws-sdk-cloudformation)   or a fake in tests
//!  status::status / promote ─▶ CloudFormationApi + EfsApi ──▶ sdk::Sdk (aws-sdk-efs)
//!         │
//!         └──▶ Progress (events as they arrive, resources done / total): the CLI draws it with indicatif
//! ```
//!
//! Invariants: every wait is bounded by a deadline; every AWS failure is an [`AwsError`] naming the call and
//! the resource it concerns; apply and destroy are idempotent (a no-op update and an absent stack are
//! successes) and resumable (a stack left `*_IN_PROGRESS` by an interrupted run is waited for, not fought).
//! The AWS SDKs live here and in the `tandem` binary only, never in the broker or client crates.

pub mod deploy;
pub mod sdk;
pub mod status;

use std::future::Future;

use serde::Serialize;

/// An AWS call that failed, with the resource it concerns (a stack name, a file system id).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{operation} {resource}: {}{message}", code.as_deref().map(|c| format!("{c}: ")).unwrap_or_default())]
pub struct AwsError {
    /// The API call, e.g. `CreateStack`.
    pub operation: &'static str,
    /// What it was about.
    pub resource: String,
    /// The service's error code (`ValidationError`, `AccessDenied`…), when the service answered.
    pub code: Option<String>,
    pub message: String,
}

impl AwsError {
    pub fn new(
        operation: &'static str,
        resource: impl Into<String>,
        code: Option<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            operation,
            resource: resource.into(),
            code,
            message: message.into(),
        }
    }
}

/// A stack as DescribeStacks reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StackInfo {
    pub stack_id: String,
    pub name: String,
    pub status: String,
    pub status_reason: Option<String>,
    /// Output key → value.
    pub outputs: Vec<(String, String)>,
}

impl StackInfo {
    pub fn output(&self, key: &str) -> Option<&str> {
        self.outputs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// One entry of DescribeStackEvents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StackEvent {
    pub event_id: String,
    /// RFC 3339, as AWS gives it.
    pub timestamp: String,
    pub logical_id: String,
    pub resource_type: String,
    pub status: String,
    pub reason: Option<String>,
}

/// A parameter of CreateStack/UpdateStack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParamValue {
    Value(String),
    /// Keep what the stack has (updates only).
    UsePrevious,
}

/// What CreateStack/UpdateStack send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StackRequest {
    pub name: String,
    /// The template body (compact JSON; see [`crate::render::cloudformation_json`]).
    pub template: String,
    pub parameters: Vec<(String, ParamValue)>,
}

/// The outcome of UpdateStack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpdateStarted {
    Started {
        stack_id: String,
    },
    /// CloudFormation said "No updates are to be performed": the stack already matches.
    NoChanges,
}

/// The CloudFormation calls apply/destroy/status need. `stack` may be a name or a stack id (an id still
/// resolves after the stack is deleted, which is how a delete is watched to its end).
pub trait CloudFormationApi {
    /// `Ok(None)` when the stack does not exist (or is `DELETE_COMPLETE`).
    fn describe_stack(
        &self,
        stack: &str,
    ) -> impl Future<Output = Result<Option<StackInfo>, AwsError>> + Send;
    /// Returns the new stack's id.
    fn create_stack(
        &self,
        req: &StackRequest,
    ) -> impl Future<Output = Result<String, AwsError>> + Send;
    fn update_stack(
        &self,
        req: &StackRequest,
    ) -> impl Future<Output = Result<UpdateStarted, AwsError>> + Send;
    fn delete_stack(&self, stack: &str) -> impl Future<Output = Result<(), AwsError>> + Send;
    /// The most recent events, newest first, as DescribeStackEvents returns them: with `until`, page back
    /// until the page holding that event (the newest one already shown), within a bound; without, the
    /// newest page only.
    fn stack_events(
        &self,
        stack: &str,
        until: Option<&str>,
    ) -> impl Future<Output = Result<Vec<StackEvent>, AwsError>> + Send;
}

/// An EFS file system as DescribeFileSystems reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileSystemInfo {
    pub file_system_id: String,
    pub name: Option<String>,
    /// `creating`, `available`, …
    pub state: String,
    /// `ENABLED`, `DISABLED` or `REPLICATING` (the latter: this is a read-only replica).
    pub replication_overwrite_protection: Option<String>,
}

/// One destination of a replication configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReplicaInfo {
    pub region: String,
    pub file_system_id: String,
    /// `ENABLED`, `ENABLING`, `DELETING`, `ERROR`, …
    pub status: String,
}

/// A replication configuration (DescribeReplicationConfigurations).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReplicationInfo {
    pub source_file_system_id: String,
    pub source_region: String,
    pub destinations: Vec<ReplicaInfo>,
}

/// The EFS calls status and promote-region need.
pub trait EfsApi {
    /// `Ok(None)` when there is no such file system.
    fn describe_file_system(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<Option<FileSystemInfo>, AwsError>> + Send;
    /// The replication configurations `id` takes part in (as source or destination); empty when none.
    fn replications(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<Vec<ReplicationInfo>, AwsError>> + Send;
    fn delete_replication(
        &self,
        source_file_system_id: &str,
    ) -> impl Future<Output = Result<(), AwsError>> + Send;
}

/// Where stack events and progress go while apply/destroy wait (the CLI draws an indicatif bar; tests record).
pub trait Progress {
    /// A new stack event, in the order CloudFormation produced them.
    fn event(&mut self, event: &StackEvent);
    /// A decision worth telling the user ("stack is UPDATE_IN_PROGRESS: waiting for it").
    fn note(&mut self, message: &str);
    /// Resources that reached a complete state in this operation, out of the template's total.
    fn progress(&mut self, done: u64, total: u64);
}
