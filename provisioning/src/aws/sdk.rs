//! The real [`CloudFormationApi`] and [`EfsApi`]: aws-sdk-cloudformation and aws-sdk-efs.
//!
//! Configuration comes from the default chain (credentials from the environment, profile incl. SSO and
//! credential_process, web identity, container or instance metadata); the region is the spec's; `endpoint_url` (or
//! `AWS_ENDPOINT_URL`, which aws-config reads itself) points every client at another server, such as a local
//! moto in tests. HTTPS goes through rustls with the ring provider, so nothing needs cmake or a C toolchain.
//!
//! Each SDK error becomes an [`AwsError`] with the service's code and message and the resource it concerns;
//! the two "errors" that are answers (a stack that does not exist, an update with nothing to do) become
//! `None` and [`UpdateStarted::NoChanges`].

use aws_config::{BehaviorVersion, Region};
use aws_sdk_cloudformation::config::http::HttpResponse;
use aws_sdk_cloudformation::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_cloudformation::types::{Capability, Parameter};
use aws_smithy_http_client::tls;

use super::{
    AwsError, CloudFormationApi, EfsApi, FileSystemInfo, ParamValue, ReplicaInfo, ReplicationInfo,
    StackEvent, StackInfo, StackRequest, UpdateStarted,
};

/// Clients for one region.
#[derive(Debug, Clone)]
pub struct Sdk {
    cf: aws_sdk_cloudformation::Client,
    efs: aws_sdk_efs::Client,
}

impl Sdk {
    /// Loads the shared configuration for `region`. Nothing is sent until the first call.
    pub async fn connect(region: &str, endpoint_url: Option<&str>) -> Sdk {
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(
                tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(region.to_owned()))
            .http_client(http);
        if let Some(url) = endpoint_url {
            loader = loader.endpoint_url(url);
        }
        let conf = loader.load().await;
        Sdk {
            cf: aws_sdk_cloudformation::Client::new(&conf),
            efs: aws_sdk_efs::Client::new(&conf),
        }
    }
}

fn aws_err<E>(operation: &'static str, resource: &str, err: &SdkError<E, HttpResponse>) -> AwsError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match err.as_service_error() {
        // An answer with neither code nor message (an HTTP 500 with an HTML body, say): its HTTP status.
        Some(service) if service.code().is_none() && service.message().is_none() => {
            let status = err.raw_response().map(|r| r.status().as_u16());
            AwsError::new(
                operation,
                resource,
                None,
                format!(
                    "HTTP {} with no AWS error code or message",
                    status.map_or("?".to_owned(), |s| s.to_string())
                ),
            )
        }
        Some(service) => AwsError::new(
            operation,
            resource,
            service.code().map(str::to_owned),
            service.message().unwrap_or("(no message)"),
        ),
        // Not an answer from AWS: no connection, timeout, credentials missing…, with its causes.
        None => AwsError::new(operation, resource, None, causes(err)),
    }
}

/// An error and its sources, one after the other (the SDK's own rendering adds a Debug dump).
fn causes(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut next = err.source();
    // Bounded: error chains are short, but a cycle must not hang the CLI.
    for _ in 0..16 {
        let Some(e) = next else { break };
        text.push_str(": ");
        text.push_str(&e.to_string());
        next = e.source();
    }
    text
}

fn is_code<E: ProvideErrorMetadata, R>(
    err: &SdkError<E, R>,
    code: &str,
    message_part: &str,
) -> bool {
    err.as_service_error().is_some_and(|e| {
        e.code() == Some(code) && e.message().is_some_and(|m| m.contains(message_part))
    })
}

/// A fresh ClientRequestToken. The SDK retries a call whose answer was lost (timeout, 5xx) with the same
/// input, token included, so CloudFormation treats the retry as the same request instead of answering
/// "already exists" or starting a second operation.
fn request_token(operation: &str) -> String {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("tandem-{operation}-{}-{nanos}-{seq}", std::process::id())
}

fn parameters(req: &StackRequest) -> Vec<Parameter> {
    req.parameters
        .iter()
        .map(|(k, v)| {
            let p = Parameter::builder().parameter_key(k);
            match v {
                ParamValue::Value(v) => p.parameter_value(v),
                ParamValue::UsePrevious => p.use_previous_value(true),
            }
            .build()
        })
        .collect()
}

impl CloudFormationApi for Sdk {
    async fn describe_stack(&self, stack: &str) -> Result<Option<StackInfo>, AwsError> {
        let out = match self.cf.describe_stacks().stack_name(stack).send().await {
            Ok(out) => out,
            Err(e) if is_code(&e, "ValidationError", "does not exist") => return Ok(None),
            Err(e) => return Err(aws_err("DescribeStacks", stack, &e)),
        };
        let Some(s) = out.stacks().first() else {
            return Ok(None);
        };
        let status = s
            .stack_status()
            .map(|s| s.as_str().to_owned())
            .unwrap_or_default();
        if status == "DELETE_COMPLETE" {
            return Ok(None);
        }
        Ok(Some(StackInfo {
            stack_id: s.stack_id().unwrap_or(stack).to_owned(),
            name: s.stack_name().unwrap_or(stack).to_owned(),
            status,
            status_reason: s.stack_status_reason().map(str::to_owned),
            outputs: s
                .outputs()
                .iter()
                .map(|o| {
                    (
                        o.output_key().unwrap_or_default().to_owned(),
                        o.output_value().unwrap_or_default().to_owned(),
                    )
                })
                .collect(),
        }))
    }

    async fn create_stack(&self, req: &StackRequest) -> Result<String, AwsError> {
        let out = self
            .cf
            .create_stack()
            .stack_name(&req.name)
            .client_request_token(request_token("create"))
            .template_body(&req.template)
            .set_parameters(Some(parameters(req)))
            .capabilities(Capability::CapabilityIam)
            .capabilities(Capability::CapabilityNamedIam)
            .send()
            .await
            .map_err(|e| aws_err("CreateStack", &req.name, &e))?;
        Ok(out.stack_id().unwrap_or(&req.name).to_owned())
    }

    async fn update_stack(&self, req: &StackRequest) -> Result<UpdateStarted, AwsError> {
        match self
            .cf
            .update_stack()
            .stack_name(&req.name)
            .client_request_token(request_token("update"))
            .template_body(&req.template)
            .set_parameters(Some(parameters(req)))
            .capabilities(Capability::CapabilityIam)
            .capabilities(Capability::CapabilityNamedIam)
            .send()
            .await
        {
            Ok(out) => Ok(UpdateStarted::Started {
                stack_id: out.stack_id().unwrap_or(&req.name).to_owned(),
            }),
            Err(e) if is_code(&e, "ValidationError", "No updates are to be performed") => {
                Ok(UpdateStarted::NoChanges)
            }
            Err(e) => Err(aws_err("UpdateStack", &req.name, &e)),
        }
    }

    async fn delete_stack(&self, stack: &str) -> Result<(), AwsError> {
        self.cf
            .delete_stack()
            .stack_name(stack)
            .client_request_token(request_token("delete"))
            .send()
            .await
            .map_err(|e| aws_err("DeleteStack", stack, &e))?;
        Ok(())
    }

    async fn stack_events(
        &self,
        stack: &str,
        until: Option<&str>,
    ) -> Result<Vec<StackEvent>, AwsError> {
        let mut events = Vec::new();
        let mut token: Option<String> = None;
        for _ in 0..MAX_EVENT_PAGES {
            let out = match self
                .cf
                .describe_stack_events()
                .stack_name(stack)
                .set_next_token(token.take())
                .send()
                .await
            {
                Ok(out) => out,
                // A stack that never existed has no events; apply asks before its first create.
                Err(e) if is_code(&e, "ValidationError", "does not exist") => return Ok(vec![]),
                Err(e) => return Err(aws_err("DescribeStackEvents", stack, &e)),
            };
            let page: Vec<StackEvent> = out.stack_events().iter().map(event).collect();
            let reached = until.is_none_or(|id| page.iter().any(|e| e.event_id == id));
            events.extend(page);
            token = out.next_token().map(str::to_owned);
            if reached || token.is_none() {
                break;
            }
        }
        Ok(events)
    }
}

/// Pages of DescribeStackEvents (100 events each) read per poll at most: far more than a stack produces
/// between two polls, and a bound on a stack with a long history.
const MAX_EVENT_PAGES: usize = 10;

fn event(e: &aws_sdk_cloudformation::types::StackEvent) -> StackEvent {
    StackEvent {
        event_id: e.event_id().unwrap_or_default().to_owned(),
        timestamp: e.timestamp().map(|t| t.to_string()).unwrap_or_default(),
        logical_id: e.logical_resource_id().unwrap_or_default().to_owned(),
        resource_type: e.resource_type().unwrap_or_default().to_owned(),
        status: e
            .resource_status()
            .map(|s| s.as_str().to_owned())
            .unwrap_or_default(),
        reason: e.resource_status_reason().map(str::to_owned),
    }
}

impl EfsApi for Sdk {
    async fn describe_file_system(&self, id: &str) -> Result<Option<FileSystemInfo>, AwsError> {
        let out = match self
            .efs
            .describe_file_systems()
            .file_system_id(id)
            .send()
            .await
        {
            Ok(out) => out,
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_file_system_not_found()) =>
            {
                return Ok(None);
            }
            Err(e) => return Err(aws_err("DescribeFileSystems", id, &e)),
        };
        Ok(out.file_systems().first().map(|f| FileSystemInfo {
            file_system_id: f.file_system_id().to_owned(),
            name: f.name().map(str::to_owned),
            state: f.life_cycle_state().as_str().to_owned(),
            replication_overwrite_protection: f
                .file_system_protection()
                .and_then(|p| p.replication_overwrite_protection())
                .map(|p| p.as_str().to_owned()),
        }))
    }

    async fn replications(&self, id: &str) -> Result<Vec<ReplicationInfo>, AwsError> {
        let out = match self
            .efs
            .describe_replication_configurations()
            .file_system_id(id)
            .send()
            .await
        {
            Ok(out) => out,
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_replication_not_found()) =>
            {
                return Ok(vec![]);
            }
            Err(e) => return Err(aws_err("DescribeReplicationConfigurations", id, &e)),
        };
        Ok(out
            .replications()
            .iter()
            .map(|r| ReplicationInfo {
                source_file_system_id: r.source_file_system_id().to_owned(),
                source_region: r.source_file_system_region().to_owned(),
                destinations: r
                    .destinations()
                    .iter()
                    .map(|d| ReplicaInfo {
                        region: d.region().to_owned(),
                        file_system_id: d.file_system_id().to_owned(),
                        status: d.status().as_str().to_owned(),
                    })
                    .collect(),
            })
            .collect())
    }

    async fn delete_replication(&self, source_file_system_id: &str) -> Result<(), AwsError> {
        self.efs
            .delete_replication_configuration()
            .source_file_system_id(source_file_system_id)
            .send()
            .await
            .map_err(|e| aws_err("DeleteReplicationConfiguration", source_file_system_id, &e))?;
        Ok(())
    }
}
