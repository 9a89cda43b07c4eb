//! apply and destroy: drive one stack to its goal through [`CloudFormationApi`], streaming its events.
//!
//! apply: absent → CreateStack; present → UpdateStack ("no updates" is success, so applying twice is a
//! no-op); `*_IN_PROGRESS` (an interrupted earlier run, or someone else) → wait for it to settle, then decide
//! again; `ROLLBACK_COMPLETE` / `REVIEW_IN_PROGRESS` (a failed or never-executed first create, which
//! CloudFormation only lets you delete) → delete, then create, and say so. A failure names each failed
//! resource's logical id and reason.
//!
//! destroy: absent → success; otherwise DeleteStack and watch it by stack id until `DELETE_COMPLETE`.
//!
//! Every wait polls DescribeStacks and DescribeStackEvents every `poll` until `timeout`; decisions loop at
//! most [`MAX_ROUNDS`] times, so a stack that keeps changing under us is an error, not a hang.

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use super::{
    AwsError, CloudFormationApi, ParamValue, Progress, StackEvent, StackRequest, UpdateStarted,
};
use crate::render::TEMPLATE_BODY_LIMIT;

/// How many times apply re-reads the stack and decides (wait, delete, create/update) before giving up.
pub const MAX_ROUNDS: usize = 4;

/// How apply and destroy wait.
#[derive(Debug, Clone, Copy)]
pub struct WaitOptions {
    /// Between two DescribeStacks/DescribeStackEvents polls.
    pub poll: Duration,
    /// For one stack operation to settle.
    pub timeout: Duration,
}

impl Default for WaitOptions {
    fn default() -> Self {
        Self {
            poll: Duration::from_secs(5),
            timeout: Duration::from_secs(60 * 60),
        }
    }
}

/// A resource that failed during an operation, from its `*_FAILED` event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedResource {
    pub logical_id: String,
    pub status: String,
    pub reason: String,
}

/// Why apply or destroy did not reach its goal.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error(transparent)]
    Aws(#[from] AwsError),
    #[error(
        "stack {stack}: template is {bytes} bytes, over CloudFormation's {limit}-byte limit for an inline \
         template; it would have to go through S3 (TemplateURL), which tandem does not do yet: split the stack"
    )]
    TemplateTooLarge {
        stack: String,
        bytes: usize,
        limit: usize,
    },
    #[error("stack {stack}: parameter {parameter} has no value: {hint}")]
    MissingParameter {
        stack: String,
        parameter: String,
        hint: String,
    },
    #[error("stack {stack} ended in {status}{}{}", reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default(), failures_text(failed))]
    Failed {
        stack: String,
        status: String,
        reason: Option<String>,
        failed: Vec<FailedResource>,
    },
    #[error("stack {stack} is {status}, which needs a person: {hint}")]
    Stuck {
        stack: String,
        status: String,
        hint: String,
    },
    #[error(
        "stack {stack}: still {status} after {waited:?}; run the command again to keep waiting"
    )]
    Timeout {
        stack: String,
        status: String,
        waited: Duration,
    },
    #[error("stack {stack}: kept changing state under apply ({rounds} rounds); run it again")]
    TooManyRounds { stack: String, rounds: usize },
}

fn failures_text(failed: &[FailedResource]) -> String {
    failed
        .iter()
        .map(|f| format!("\n  {} {}: {}", f.logical_id, f.status, f.reason))
        .collect()
}

/// What apply did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplyOutcome {
    Created {
        stack_id: String,
    },
    Updated {
        stack_id: String,
    },
    /// The stack already matched the template and parameters.
    Unchanged {
        stack_id: String,
    },
}

/// What destroy did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DestroyOutcome {
    Deleted {
        stack_id: String,
    },
    /// There was no such stack.
    Absent,
}

fn in_progress(status: &str) -> bool {
    status.ends_with("_IN_PROGRESS") && status != "REVIEW_IN_PROGRESS"
}

/// A resource status that counts towards "done" on the progress bar.
fn resource_done(status: &str) -> bool {
    matches!(
        status,
        "CREATE_COMPLETE"
            | "UPDATE_COMPLETE"
            | "DELETE_COMPLETE"
            | "DELETE_SKIPPED"
            | "IMPORT_COMPLETE"
    )
}

/// Turns successive pages of DescribeStackEvents (newest first) into new events in the order they happened.
///
/// The events that already existed when the operation began are marked seen first, so a stack's history is
/// not replayed. Memory grows with the events of one operation only (a few per resource).
#[derive(Debug, Default)]
pub struct EventTail {
    seen: HashSet<String>,
    /// The newest event seen: where the next poll may stop paging back.
    newest: Option<String>,
    done: BTreeSet<String>,
    failed: Vec<FailedResource>,
}

impl EventTail {
    /// Marks the events of a page as already shown.
    pub fn skip(&mut self, page: &[StackEvent]) {
        self.seen.extend(page.iter().map(|e| e.event_id.clone()));
        if let Some(e) = page.first() {
            self.newest = Some(e.event_id.clone());
        }
    }

    /// The newest event seen so far (events come newest first).
    pub fn newest(&self) -> Option<&str> {
        self.newest.as_deref()
    }

    /// The events of `page` not seen before, oldest first, and records their effect.
    pub fn take_new(&mut self, page: &[StackEvent], stack_name: &str) -> Vec<StackEvent> {
        let new: Vec<StackEvent> = page
            .iter()
            .rev()
            .filter(|e| !self.seen.contains(&e.event_id))
            .cloned()
            .collect();
        if let Some(e) = new.last() {
            self.newest = Some(e.event_id.clone());
        }
        for e in &new {
            self.seen.insert(e.event_id.clone());
            // The stack's own events carry its name as logical id; they are not resources of the template.
            if e.logical_id == stack_name {
                continue;
            }
            if resource_done(&e.status) {
                self.done.insert(e.logical_id.clone());
            }
            if e.status.ends_with("_FAILED") {
                self.failed.push(FailedResource {
                    logical_id: e.logical_id.clone(),
                    status: e.status.clone(),
                    reason: e.reason.clone().unwrap_or_default(),
                });
            }
        }
        new
    }

    /// Distinct resources that reached a complete state.
    pub fn done(&self) -> u64 {
        self.done.len() as u64
    }

    /// Failed resources, in event order. CloudFormation also reports "Resource creation cancelled" for the
    /// bystanders of a failure; those are kept after the real causes.
    pub fn failures(&self) -> Vec<FailedResource> {
        let cancelled = |f: &FailedResource| f.reason.contains("cancelled");
        let mut v: Vec<FailedResource> = self
            .failed
            .iter()
            .filter(|f| !cancelled(f))
            .cloned()
            .collect();
        v.extend(self.failed.iter().filter(|f| cancelled(f)).cloned());
        v
    }
}

/// Watches one operation on `stack_id` until its status leaves `*_IN_PROGRESS`; returns the final status
/// (`DELETE_COMPLETE` when the stack is gone). Events are streamed to `progress` as they arrive.
async fn wait_settled<C: CloudFormationApi, P: Progress>(
    cf: &C,
    stack_name: &str,
    stack_id: &str,
    tail: &mut EventTail,
    total: u64,
    progress: &mut P,
    opts: WaitOptions,
) -> Result<(String, Option<String>), DeployError> {
    let start = tokio::time::Instant::now();
    loop {
        let page = cf.stack_events(stack_id, tail.newest()).await?;
        for e in tail.take_new(&page, stack_name) {
            progress.event(&e);
        }
        progress.progress(tail.done().min(total), total);
        let (status, reason) = match cf.describe_stack(stack_id).await? {
            Some(s) => (s.status, s.status_reason),
            None => ("DELETE_COMPLETE".to_owned(), None),
        };
        if !in_progress(&status) {
            // The events that led to the final status may land after the previous page: read once more.
            let page = cf.stack_events(stack_id, tail.newest()).await?;
            for e in tail.take_new(&page, stack_name) {
                progress.event(&e);
            }
            progress.progress(tail.done().min(total), total);
            return Ok((status, reason));
        }
        if start.elapsed() >= opts.timeout {
            return Err(DeployError::Timeout {
                stack: stack_name.to_owned(),
                status,
                waited: start.elapsed(),
            });
        }
        tokio::time::sleep(opts.poll).await;
    }
}

/// A tail that skips the stack's existing history.
async fn fresh_tail<C: CloudFormationApi>(cf: &C, stack: &str) -> Result<EventTail, DeployError> {
    let mut tail = EventTail::default();
    // History is skipped, not shown: its newest page is enough to know where "new" begins.
    tail.skip(&cf.stack_events(stack, None).await?);
    Ok(tail)
}

fn failed(stack: &str, status: String, reason: Option<String>, tail: &EventTail) -> DeployError {
    DeployError::Failed {
        stack: stack.to_owned(),
        status,
        reason,
        failed: tail.failures(),
    }
}

/// Checks what CloudFormation would refuse anyway, before any call: the inline template size and parameters
/// without a value. On an update, a parameter not given keeps the stack's previous value.
fn request_for(
    req: &StackRequest,
    required: &[(String, String)],
    exists: bool,
) -> Result<StackRequest, DeployError> {
    if req.template.len() > TEMPLATE_BODY_LIMIT {
        return Err(DeployError::TemplateTooLarge {
            stack: req.name.clone(),
            bytes: req.template.len(),
            limit: TEMPLATE_BODY_LIMIT,
        });
    }
    let mut out = req.clone();
    for (param, hint) in required {
        if out.parameters.iter().any(|(k, _)| k == param) {
            continue;
        }
        if !exists {
            return Err(DeployError::MissingParameter {
                stack: req.name.clone(),
                parameter: param.clone(),
                hint: hint.clone(),
            });
        }
        out.parameters
            .push((param.clone(), ParamValue::UsePrevious));
    }
    Ok(out)
}

/// Creates or updates the stack so it matches `req`. `required` lists the template's parameters that have
/// no default, each with a hint on how to give it; `total` is the template's resource count (progress bar).
pub async fn apply<C: CloudFormationApi, P: Progress>(
    cf: &C,
    req: &StackRequest,
    required: &[(String, String)],
    total: u64,
    progress: &mut P,
    opts: WaitOptions,
) -> Result<ApplyOutcome, DeployError> {
    let name = req.name.as_str();
    for _ in 0..MAX_ROUNDS {
        let Some(stack) = cf.describe_stack(name).await? else {
            let create = request_for(req, required, false)?;
            // The new stack has no history, but a deleted namesake's events are not ours either.
            let mut tail = EventTail::default();
            let stack_id = cf.create_stack(&create).await?;
            progress.note(&format!("creating stack {name}"));
            let (status, reason) =
                wait_settled(cf, name, &stack_id, &mut tail, total, progress, opts).await?;
            return if status == "CREATE_COMPLETE" {
                Ok(ApplyOutcome::Created { stack_id })
            } else {
                Err(failed(name, status, reason, &tail))
            };
        };
        let status = stack.status.as_str();
        if in_progress(status) {
            progress.note(&format!(
                "stack {name} is {status} (an earlier run or someone else): waiting for it to finish"
            ));
            let mut tail = fresh_tail(cf, &stack.stack_id).await?;
            wait_settled(cf, name, &stack.stack_id, &mut tail, total, progress, opts).await?;
            continue;
        }
        match status {
            "ROLLBACK_COMPLETE" | "REVIEW_IN_PROGRESS" => {
                progress.note(&format!(
                    "stack {name} is {status} (its first create never completed; CloudFormation only allows \
                     deleting it): deleting it, then creating it again"
                ));
                delete_and_wait(cf, name, &stack.stack_id, total, progress, opts).await?;
                continue;
            }
            "DELETE_FAILED" | "ROLLBACK_FAILED" | "UPDATE_ROLLBACK_FAILED" | "CREATE_FAILED" => {
                return Err(DeployError::Stuck {
                    stack: name.to_owned(),
                    status: status.to_owned(),
                    hint: stuck_hint(status),
                });
            }
            _ => {}
        }
        let update = request_for(req, required, true)?;
        let mut tail = fresh_tail(cf, &stack.stack_id).await?;
        match cf.update_stack(&update).await? {
            UpdateStarted::NoChanges => {
                progress.note(&format!("stack {name}: no changes"));
                progress.progress(total, total);
                return Ok(ApplyOutcome::Unchanged {
                    stack_id: stack.stack_id,
                });
            }
            UpdateStarted::Started { stack_id } => {
                progress.note(&format!("updating stack {name}"));
                let (status, reason) =
                    wait_settled(cf, name, &stack_id, &mut tail, total, progress, opts).await?;
                return if status == "UPDATE_COMPLETE" {
                    Ok(ApplyOutcome::Updated { stack_id })
                } else {
                    Err(failed(name, status, reason, &tail))
                };
            }
        }
    }
    Err(DeployError::TooManyRounds {
        stack: name.to_owned(),
        rounds: MAX_ROUNDS,
    })
}

fn stuck_hint(status: &str) -> String {
    match status {
        "DELETE_FAILED" => "see the failed resources with `tandem provision status`, fix or retain them, then \
                            run destroy again"
            .to_owned(),
        "UPDATE_ROLLBACK_FAILED" => {
            "continue the rollback (aws cloudformation continue-update-rollback), then apply again".to_owned()
        }
        _ => "the stack was created with rollback disabled or its rollback failed: inspect it, then destroy it \
              and apply again"
            .to_owned(),
    }
}

async fn delete_and_wait<C: CloudFormationApi, P: Progress>(
    cf: &C,
    name: &str,
    stack_id: &str,
    total: u64,
    progress: &mut P,
    opts: WaitOptions,
) -> Result<(), DeployError> {
    let mut tail = fresh_tail(cf, stack_id).await?;
    cf.delete_stack(stack_id).await?;
    let (status, reason) =
        wait_settled(cf, name, stack_id, &mut tail, total, progress, opts).await?;
    if status == "DELETE_COMPLETE" {
        Ok(())
    } else {
        Err(failed(name, status, reason, &tail))
    }
}

/// Deletes the stack and waits until it is gone; an absent stack is success. A stack already being deleted
/// (an interrupted destroy) is just watched. Resources the template marks `Retain` (the file system, the
/// data-sink bucket) stay behind, as they should.
pub async fn destroy<C: CloudFormationApi, P: Progress>(
    cf: &C,
    name: &str,
    total: u64,
    progress: &mut P,
    opts: WaitOptions,
) -> Result<DestroyOutcome, DeployError> {
    for _ in 0..MAX_ROUNDS {
        let Some(stack) = cf.describe_stack(name).await? else {
            return Ok(DestroyOutcome::Absent);
        };
        if in_progress(&stack.status) && stack.status != "DELETE_IN_PROGRESS" {
            progress.note(&format!(
                "stack {name} is {}: waiting for it to finish before deleting",
                stack.status
            ));
            let mut tail = fresh_tail(cf, &stack.stack_id).await?;
            wait_settled(cf, name, &stack.stack_id, &mut tail, total, progress, opts).await?;
            continue;
        }
        progress.note(&format!("deleting stack {name}"));
        delete_and_wait(cf, name, &stack.stack_id, total, progress, opts).await?;
        return Ok(DestroyOutcome::Deleted {
            stack_id: stack.stack_id,
        });
    }
    Err(DeployError::TooManyRounds {
        stack: name.to_owned(),
        rounds: MAX_ROUNDS,
    })
}

#[cfg(test)]
pub(crate) mod fake {
    //! An in-memory CloudFormation: each operation is a script of (status, events) steps that successive
    //! DescribeStacks calls walk through, so tests decide exactly what AWS "does" with no clock or network.

    use std::collections::VecDeque;
    use std::sync::Mutex;

    use super::super::*;

    /// A scripted event: logical id, status, reason.
    pub type Ev = (String, String, Option<String>);
    /// One poll's worth of an operation: the stack status after it, and the events it emits.
    pub type Step = (String, Vec<Ev>);

    #[derive(Debug, Default)]
    pub struct State {
        pub stack: Option<StackInfo>,
        /// Newest first, like the API.
        pub events: Vec<StackEvent>,
        /// Steps the current operation still has to go through: a status and the events it emits.
        pub script: VecDeque<Step>,
        /// What the next operation will do: (status after each poll, events) steps.
        pub next_ops: VecDeque<Vec<Step>>,
        pub calls: Vec<String>,
        pub no_changes: bool,
        pub seq: u64,
        pub stack_seq: u64,
        pub last_request: Option<StackRequest>,
    }

    #[derive(Debug, Default)]
    pub struct FakeCf(pub Mutex<State>);

    impl State {
        fn push_event(&mut self, logical: &str, status: &str, reason: Option<String>) {
            self.seq += 1;
            let ev = StackEvent {
                event_id: format!("ev{}", self.seq),
                timestamp: format!("2026-01-01T00:00:{:02}Z", self.seq % 60),
                logical_id: logical.to_owned(),
                resource_type: if logical.starts_with("tandem-") {
                    "AWS::CloudFormation::Stack".to_owned()
                } else {
                    "AWS::EC2::VPC".to_owned()
                },
                status: status.to_owned(),
                reason,
            };
            self.events.insert(0, ev);
        }

        pub fn push_old_history(&mut self) {
            self.push_event("OldResource", "CREATE_COMPLETE", None);
        }

        fn start(&mut self, status: &str) {
            let name = self
                .stack
                .as_ref()
                .map(|s| s.name.clone())
                .unwrap_or_default();
            self.stack.as_mut().unwrap().status = status.to_owned();
            self.push_event(&name, status, None);
            self.script = self.next_ops.pop_front().unwrap_or_default().into();
        }

        /// One poll advances the script by a step.
        fn step(&mut self) {
            if let Some((status, evs)) = self.script.pop_front() {
                for (l, s, r) in evs {
                    self.push_event(&l, &s, r);
                }
                let name = self.stack.as_ref().unwrap().name.clone();
                self.push_event(&name, &status, None);
                if status == "DELETE_COMPLETE" {
                    self.stack = None;
                } else {
                    self.stack.as_mut().unwrap().status = status;
                }
            }
        }
    }

    pub fn stack(name: &str, status: &str) -> StackInfo {
        StackInfo {
            stack_id: format!("arn:stack/{name}/1"),
            name: name.to_owned(),
            status: status.to_owned(),
            status_reason: None,
            outputs: vec![],
        }
    }

    impl CloudFormationApi for FakeCf {
        async fn describe_stack(&self, _stack: &str) -> Result<Option<StackInfo>, AwsError> {
            let mut s = self.0.lock().unwrap();
            s.calls.push("DescribeStacks".into());
            let out = s.stack.clone();
            s.step();
            Ok(out)
        }
        async fn create_stack(&self, req: &StackRequest) -> Result<String, AwsError> {
            let mut s = self.0.lock().unwrap();
            s.calls.push("CreateStack".into());
            s.last_request = Some(req.clone());
            s.stack_seq += 1;
            let mut st = stack(&req.name, "CREATE_IN_PROGRESS");
            st.stack_id = format!("arn:stack/{}/{}", req.name, s.stack_seq + 1);
            let id = st.stack_id.clone();
            s.stack = Some(st);
            s.start("CREATE_IN_PROGRESS");
            Ok(id)
        }
        async fn update_stack(&self, req: &StackRequest) -> Result<UpdateStarted, AwsError> {
            let mut s = self.0.lock().unwrap();
            s.calls.push("UpdateStack".into());
            s.last_request = Some(req.clone());
            if s.no_changes {
                return Ok(UpdateStarted::NoChanges);
            }
            s.start("UPDATE_IN_PROGRESS");
            Ok(UpdateStarted::Started {
                stack_id: s.stack.as_ref().unwrap().stack_id.clone(),
            })
        }
        async fn delete_stack(&self, _stack: &str) -> Result<(), AwsError> {
            let mut s = self.0.lock().unwrap();
            s.calls.push("DeleteStack".into());
            s.start("DELETE_IN_PROGRESS");
            Ok(())
        }
        async fn stack_events(
            &self,
            _stack: &str,
            _until: Option<&str>,
        ) -> Result<Vec<StackEvent>, AwsError> {
            Ok(self.0.lock().unwrap().events.clone())
        }
    }

    #[derive(Debug, Default)]
    pub struct Recorder {
        pub events: Vec<String>,
        pub notes: Vec<String>,
        pub progress: Vec<(u64, u64)>,
    }

    impl Progress for Recorder {
        fn event(&mut self, e: &StackEvent) {
            self.events.push(format!("{} {}", e.logical_id, e.status));
        }
        fn note(&mut self, m: &str) {
            self.notes.push(m.to_owned());
        }
        fn progress(&mut self, done: u64, total: u64) {
            self.progress.push((done, total));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::*;
    use super::*;

    const NAME: &str = "tandem-acme-orders";
    const OPTS: WaitOptions = WaitOptions {
        poll: Duration::ZERO,
        timeout: Duration::from_secs(30),
    };

    fn step(status: &str, evs: &[(&str, &str, Option<&str>)]) -> Step {
        (
            status.to_owned(),
            evs.iter()
                .map(|(l, s, r)| ((*l).to_owned(), (*s).to_owned(), r.map(str::to_owned)))
                .collect(),
        )
    }

    fn req() -> StackRequest {
        StackRequest {
            name: NAME.into(),
            template: "{}".into(),
            parameters: vec![("BrokerImage".into(), ParamValue::Value("img:1".into()))],
        }
    }

    fn required() -> Vec<(String, String)> {
        vec![
            ("BrokerImage".into(), "--broker-image".into()),
            ("TlsCertificateArn".into(), "--certificate-arn".into()),
        ]
    }

    fn req_full() -> StackRequest {
        let mut r = req();
        r.parameters.push((
            "TlsCertificateArn".into(),
            ParamValue::Value("arn:aws:acm:x".into()),
        ));
        r
    }

    fn run<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn create_streams_events_in_order_and_counts_progress() {
        let cf = FakeCf::default();
        cf.0.lock().unwrap().next_ops.push_back(vec![
            step("CREATE_IN_PROGRESS", &[("Vpc", "CREATE_IN_PROGRESS", None)]),
            step(
                "CREATE_IN_PROGRESS",
                &[
                    ("Vpc", "CREATE_COMPLETE", None),
                    ("Igw", "CREATE_IN_PROGRESS", None),
                ],
            ),
            step("CREATE_COMPLETE", &[("Igw", "CREATE_COMPLETE", None)]),
        ]);
        let mut rec = Recorder::default();
        let out = run(apply(&cf, &req_full(), &required(), 2, &mut rec, OPTS)).unwrap();
        assert!(matches!(out, ApplyOutcome::Created { .. }), "{out:?}");
        assert_eq!(
            rec.events,
            [
                "tandem-acme-orders CREATE_IN_PROGRESS",
                "Vpc CREATE_IN_PROGRESS",
                "tandem-acme-orders CREATE_IN_PROGRESS",
                "Vpc CREATE_COMPLETE",
                "Igw CREATE_IN_PROGRESS",
                "tandem-acme-orders CREATE_IN_PROGRESS",
                "Igw CREATE_COMPLETE",
                "tandem-acme-orders CREATE_COMPLETE",
            ]
        );
        assert_eq!(rec.progress.last(), Some(&(2, 2)));
        // Progress never goes backwards.
        assert!(
            rec.progress.windows(2).all(|w| w[0].0 <= w[1].0),
            "{:?}",
            rec.progress
        );
        let s = cf.0.lock().unwrap();
        assert_eq!(s.calls.iter().filter(|c| *c == "CreateStack").count(), 1);
        assert_eq!(s.last_request.as_ref().unwrap().parameters.len(), 2);
    }

    #[test]
    fn a_create_without_a_required_parameter_fails_before_any_call_that_changes_things() {
        let cf = FakeCf::default();
        let err = run(apply(
            &cf,
            &req(),
            &required(),
            2,
            &mut Recorder::default(),
            OPTS,
        ))
        .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("TlsCertificateArn") && text.contains("--certificate-arn"),
            "{text}"
        );
        assert!(
            !cf.0
                .lock()
                .unwrap()
                .calls
                .contains(&"CreateStack".to_owned())
        );
    }

    #[test]
    fn an_oversized_template_is_refused_with_its_size() {
        let cf = FakeCf::default();
        let mut r = req_full();
        r.template = "x".repeat(TEMPLATE_BODY_LIMIT + 1);
        let err = run(apply(
            &cf,
            &r,
            &required(),
            2,
            &mut Recorder::default(),
            OPTS,
        ))
        .unwrap_err();
        assert!(err.to_string().contains("51201 bytes"), "{err}");
    }

    #[test]
    fn update_of_an_existing_stack_keeps_previous_parameters_not_given() {
        let cf = FakeCf::default();
        {
            let mut s = cf.0.lock().unwrap();
            s.stack = Some(stack(NAME, "CREATE_COMPLETE"));
            s.push_old_history();
            s.next_ops.push_back(vec![step(
                "UPDATE_COMPLETE",
                &[("Vpc", "UPDATE_COMPLETE", None)],
            )]);
        }
        let mut rec = Recorder::default();
        let out = run(apply(&cf, &req(), &required(), 2, &mut rec, OPTS)).unwrap();
        assert!(matches!(out, ApplyOutcome::Updated { .. }), "{out:?}");
        // The old history is not replayed.
        assert!(
            !rec.events.iter().any(|e| e.contains("Old")),
            "{:?}",
            rec.events
        );
        assert!(rec.events.contains(&"Vpc UPDATE_COMPLETE".to_owned()));
        let s = cf.0.lock().unwrap();
        let params = &s.last_request.as_ref().unwrap().parameters;
        assert!(
            params.contains(&("TlsCertificateArn".into(), ParamValue::UsePrevious)),
            "{params:?}"
        );
        assert!(params.contains(&("BrokerImage".into(), ParamValue::Value("img:1".into()))));
    }

    #[test]
    fn no_changes_is_success_and_touches_nothing() {
        let cf = FakeCf::default();
        {
            let mut s = cf.0.lock().unwrap();
            s.stack = Some(stack(NAME, "UPDATE_COMPLETE"));
            s.no_changes = true;
        }
        let mut rec = Recorder::default();
        let out = run(apply(&cf, &req_full(), &required(), 2, &mut rec, OPTS)).unwrap();
        assert!(matches!(out, ApplyOutcome::Unchanged { .. }), "{out:?}");
        assert!(
            rec.notes.iter().any(|n| n.contains("no changes")),
            "{:?}",
            rec.notes
        );
        let calls = &cf.0.lock().unwrap().calls;
        assert!(
            !calls
                .iter()
                .any(|c| c == "CreateStack" || c == "DeleteStack"),
            "{calls:?}"
        );
    }

    #[test]
    fn resume_waits_for_an_operation_in_progress_then_updates() {
        let cf = FakeCf::default();
        {
            let mut s = cf.0.lock().unwrap();
            s.stack = Some(stack(NAME, "CREATE_IN_PROGRESS"));
            // The interrupted create finishes over the next polls (the first is apply's own look).
            s.script = vec![
                step("CREATE_IN_PROGRESS", &[]),
                step("CREATE_IN_PROGRESS", &[("Vpc", "CREATE_COMPLETE", None)]),
                step("CREATE_COMPLETE", &[]),
            ]
            .into();
            s.no_changes = true;
        }
        let mut rec = Recorder::default();
        let out = run(apply(&cf, &req_full(), &required(), 2, &mut rec, OPTS)).unwrap();
        assert!(matches!(out, ApplyOutcome::Unchanged { .. }), "{out:?}");
        assert!(
            rec.notes[0].contains("CREATE_IN_PROGRESS") && rec.notes[0].contains("waiting"),
            "{:?}",
            rec.notes
        );
        assert!(
            rec.events.contains(&"Vpc CREATE_COMPLETE".to_owned()),
            "{:?}",
            rec.events
        );
        let calls = &cf.0.lock().unwrap().calls;
        assert!(!calls.iter().any(|c| c == "CreateStack"), "{calls:?}");
        assert_eq!(calls.last().map(String::as_str), Some("UpdateStack"));
    }

    #[test]
    fn rollback_complete_is_deleted_then_created_and_said() {
        let cf = FakeCf::default();
        {
            let mut s = cf.0.lock().unwrap();
            s.stack = Some(stack(NAME, "ROLLBACK_COMPLETE"));
            s.next_ops.push_back(vec![
                step("DELETE_IN_PROGRESS", &[("Vpc", "DELETE_COMPLETE", None)]),
                step("DELETE_COMPLETE", &[]),
            ]);
            s.next_ops.push_back(vec![step(
                "CREATE_COMPLETE",
                &[("Vpc", "CREATE_COMPLETE", None)],
            )]);
        }
        let mut rec = Recorder::default();
        let out = run(apply(&cf, &req_full(), &required(), 1, &mut rec, OPTS)).unwrap();
        assert!(matches!(out, ApplyOutcome::Created { .. }), "{out:?}");
        assert!(
            rec.notes
                .iter()
                .any(|n| n.contains("ROLLBACK_COMPLETE") && n.contains("deleting")),
            "{:?}",
            rec.notes
        );
        let calls = cf.0.lock().unwrap().calls.clone();
        let del = calls.iter().position(|c| c == "DeleteStack").unwrap();
        let create = calls.iter().position(|c| c == "CreateStack").unwrap();
        assert!(del < create, "{calls:?}");
    }

    #[test]
    fn a_failed_create_names_the_failed_resources_and_reasons_cause_first() {
        let cf = FakeCf::default();
        cf.0.lock().unwrap().next_ops.push_back(vec![
            step(
                "CREATE_IN_PROGRESS",
                &[
                    ("Igw", "CREATE_FAILED", Some("Resource creation cancelled")),
                    (
                        "FileSystem",
                        "CREATE_FAILED",
                        Some("AccessDenied: elasticfilesystem:CreateFileSystem"),
                    ),
                ],
            ),
            step("ROLLBACK_IN_PROGRESS", &[("Vpc", "DELETE_COMPLETE", None)]),
            step("ROLLBACK_COMPLETE", &[]),
        ]);
        let mut rec = Recorder::default();
        let err = run(apply(&cf, &req_full(), &required(), 3, &mut rec, OPTS)).unwrap_err();
        let DeployError::Failed { status, failed, .. } = &err else {
            panic!("{err:?}")
        };
        assert_eq!(status, "ROLLBACK_COMPLETE");
        assert_eq!(failed[0].logical_id, "FileSystem");
        assert!(failed[0].reason.contains("AccessDenied"));
        assert_eq!(failed[1].logical_id, "Igw");
        let text = err.to_string();
        assert!(
            text.contains("FileSystem CREATE_FAILED: AccessDenied"),
            "{text}"
        );
    }

    #[test]
    fn a_failed_update_is_an_error_not_success() {
        let cf = FakeCf::default();
        {
            let mut s = cf.0.lock().unwrap();
            s.stack = Some(stack(NAME, "CREATE_COMPLETE"));
            s.next_ops.push_back(vec![
                step(
                    "UPDATE_ROLLBACK_IN_PROGRESS",
                    &[("Lane", "UPDATE_FAILED", Some("bad AMI"))],
                ),
                step("UPDATE_ROLLBACK_COMPLETE", &[]),
            ]);
        }
        let err = run(apply(
            &cf,
            &req_full(),
            &required(),
            3,
            &mut Recorder::default(),
            OPTS,
        ))
        .unwrap_err();
        assert!(
            err.to_string().contains("UPDATE_ROLLBACK_COMPLETE")
                && err.to_string().contains("Lane UPDATE_FAILED: bad AMI"),
            "{err}"
        );
    }

    #[test]
    fn a_stack_that_never_settles_times_out() {
        let cf = FakeCf::default();
        {
            let mut s = cf.0.lock().unwrap();
            s.stack = Some(stack(NAME, "UPDATE_IN_PROGRESS"));
        }
        let opts = WaitOptions {
            poll: Duration::from_millis(1),
            timeout: Duration::from_millis(20),
        };
        let err = run(apply(
            &cf,
            &req_full(),
            &required(),
            3,
            &mut Recorder::default(),
            opts,
        ))
        .unwrap_err();
        assert!(matches!(err, DeployError::Timeout { .. }), "{err:?}");
    }

    #[test]
    fn destroy_deletes_and_an_absent_stack_is_success() {
        let cf = FakeCf::default();
        {
            let mut s = cf.0.lock().unwrap();
            s.stack = Some(stack(NAME, "UPDATE_COMPLETE"));
            s.next_ops.push_back(vec![
                step("DELETE_IN_PROGRESS", &[("Vpc", "DELETE_COMPLETE", None)]),
                step("DELETE_COMPLETE", &[]),
            ]);
        }
        let mut rec = Recorder::default();
        let out = run(destroy(&cf, NAME, 1, &mut rec, OPTS)).unwrap();
        assert!(matches!(out, DestroyOutcome::Deleted { .. }), "{out:?}");
        assert!(rec.events.contains(&"Vpc DELETE_COMPLETE".to_owned()));
        assert!(cf.0.lock().unwrap().stack.is_none());
        let again = run(destroy(&cf, NAME, 1, &mut rec, OPTS)).unwrap();
        assert_eq!(again, DestroyOutcome::Absent);
    }

    #[test]
    fn a_failed_delete_names_what_could_not_be_deleted() {
        let cf = FakeCf::default();
        {
            let mut s = cf.0.lock().unwrap();
            s.stack = Some(stack(NAME, "CREATE_COMPLETE"));
            s.next_ops.push_back(vec![
                step(
                    "DELETE_IN_PROGRESS",
                    &[("Vpc", "DELETE_FAILED", Some("has dependencies"))],
                ),
                step("DELETE_FAILED", &[]),
            ]);
        }
        let err = run(destroy(&cf, NAME, 1, &mut Recorder::default(), OPTS)).unwrap_err();
        assert!(
            err.to_string()
                .contains("Vpc DELETE_FAILED: has dependencies"),
            "{err}"
        );
    }

    #[test]
    fn event_tail_skips_history_and_orders_oldest_first() {
        let ev = |id: &str, l: &str, s: &str| StackEvent {
            event_id: id.into(),
            timestamp: String::new(),
            logical_id: l.into(),
            resource_type: String::new(),
            status: s.into(),
            reason: None,
        };
        let mut tail = EventTail::default();
        tail.skip(&[ev("1", "Vpc", "CREATE_COMPLETE")]);
        assert_eq!(tail.newest(), Some("1"));
        let page = [
            ev("3", "Igw", "CREATE_COMPLETE"),
            ev("2", "Vpc", "UPDATE_COMPLETE"),
            ev("1", "Vpc", "CREATE_COMPLETE"),
        ];
        let new = tail.take_new(&page, NAME);
        assert_eq!(
            new.iter().map(|e| e.event_id.as_str()).collect::<Vec<_>>(),
            ["2", "3"]
        );
        assert!(tail.take_new(&page, NAME).is_empty());
        assert_eq!(tail.done(), 2);
        // The next poll pages back no further than the newest event shown.
        assert_eq!(tail.newest(), Some("3"));
    }
}
