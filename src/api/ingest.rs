//! `callstore.v1.IngestService`: calls in, acknowledged only once committed.

use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status, Streaming};

use crate::api::convert::{CallLimits, call_from_proto};
use crate::api::convert_catalog::{
    level_from_proto, tag_from_proto, tag_group_from_proto, task_from_proto, task_number_from_proto,
};
use crate::api::tenant_of;
use crate::db::DbError;
use crate::db::calls::{StoreOutcome, StoredCall};
use crate::domain::{SourceKey, TenantId};
use crate::error::{ApiError, FieldViolation};
use crate::ingest::group_commit::GroupCommitter;
use crate::ingest::payload::{IngestedPayload, PayloadOptions, ingest_payload};
use crate::ingest::writer::CatalogItem;
use crate::ingest::{Batch, writer};
use crate::limits::IngestRateLimiter;
use crate::proto::ingest_service_server::IngestService;
use crate::proto::{
    CallRecord, IngestCallStreamRequest, IngestCallStreamResponse, IngestCallsRequest,
    IngestCallsResponse, IngestItemResult, IngestOutcome, IngestVendorPayloadRequest,
    IngestVendorPayloadResponse, PayloadFormat, UpsertLevelsRequest, UpsertLevelsResponse,
    UpsertTagGroupsRequest, UpsertTagGroupsResponse, UpsertTagsRequest, UpsertTagsResponse,
    UpsertTaskNumbersRequest, UpsertTaskNumbersResponse, UpsertTasksRequest, UpsertTasksResponse,
};

/// What one ingest request may carry.
#[derive(Debug, Clone)]
pub struct IngestLimits {
    /// Calls per IngestCalls request.
    pub max_batch: usize,
    pub call: CallLimits,
}

impl Default for IngestLimits {
    fn default() -> Self {
        Self {
            max_batch: 1000,
            call: CallLimits::default(),
        }
    }
}

/// Implements `callstore.v1.IngestService`.
#[derive(Debug, Clone)]
pub struct IngestApi {
    pool: PgPool,
    limits: IngestLimits,
    store: GroupCommitter,
    rate: IngestRateLimiter,
}

impl IngestApi {
    pub fn new(
        pool: PgPool,
        limits: IngestLimits,
        store: GroupCommitter,
        rate: IngestRateLimiter,
    ) -> Self {
        Self {
            pool,
            limits,
            store,
            rate,
        }
    }

    /// Takes `calls` from the tenant's ingest rate, waiting until the bucket holds them: a
    /// burst at a time, so that more calls than a burst wait for the rate too.
    async fn wait_for_rate(&self, tenant: &TenantId, calls: usize) {
        let mut left = u32::try_from(calls).unwrap_or(u32::MAX);
        while left > 0 {
            let part = left.min(self.rate.burst().unwrap_or(left));
            while let Err(retry_after) = self.rate.check(tenant, part) {
                tracing::debug!(tenant = %tenant, calls = part, wait_ms = retry_after.as_millis() as u64, "ingest stream held to the tenant's rate");
                tokio::time::sleep(retry_after).await;
            }
            left -= part;
        }
    }

    /// Takes `calls` from the tenant's ingest rate, or refuses the request with
    /// RESOURCE_EXHAUSTED and how long to wait.
    fn take_rate(&self, tenant: &TenantId, calls: usize) -> Result<(), Status> {
        let calls = u32::try_from(calls).unwrap_or(u32::MAX);
        self.rate.check(tenant, calls).map_err(|retry_after| {
            tracing::info!(tenant = %tenant, calls, retry_after_ms = retry_after.as_millis() as u64, "ingest over the tenant's rate");
            crate::limits::rate_limited_status(retry_after)
        })
    }
}

#[tonic::async_trait]
impl IngestService for IngestApi {
    #[tracing::instrument(skip_all, fields(tenant, calls))]
    async fn ingest_calls(
        &self,
        request: Request<IngestCallsRequest>,
    ) -> Result<Response<IngestCallsResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let records = request.into_inner().calls;
        tracing::Span::current()
            .record("tenant", tenant.as_str())
            .record("calls", records.len());
        if records.len() > self.limits.max_batch {
            return Err(ApiError::invalid_field(
                "calls",
                format!("at most {} calls per request", self.limits.max_batch),
            )
            .into());
        }
        self.take_rate(&tenant, records.len())?;

        let records = records.into_iter().map(Some).collect();
        let results = self
            .store_records(&tenant, 0, records, |index| format!("calls[{index}]"))
            .await?;
        Ok(Response::new(IngestCallsResponse { results }))
    }

    #[tracing::instrument(skip_all, fields(tenant))]
    async fn ingest_call_stream(
        &self,
        request: Request<Streaming<IngestCallStreamRequest>>,
    ) -> Result<Response<BoxStream<IngestCallStreamResponse>>, Status> {
        let tenant = tenant_of(&request)?;
        tracing::Span::current().record("tenant", tenant.as_str());
        let mut inbound = request.into_inner();

        // A reader drains the request stream into a bounded queue; the writer takes whatever
        // has queued up (at most a batch) into one transaction and acknowledges each item once
        // it is committed. A slow database therefore slows the client, not memory.
        let (queue, mut queued) = mpsc::channel::<IngestCallStreamRequest>(STREAM_QUEUE);
        let (acks, acknowledged) = mpsc::channel(STREAM_QUEUE);
        let reader_acks = acks.clone();
        tokio::spawn(async move {
            loop {
                match inbound.message().await {
                    Ok(Some(message)) => {
                        if queue.send(message).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => return,
                    Err(status) => {
                        let _ = reader_acks.send(Err(status)).await;
                        return;
                    }
                }
            }
        });

        let api = self.clone();
        tokio::spawn(async move {
            let mut next_index = 0usize;
            while let Some(first) = queued.recv().await {
                let mut messages = vec![first];
                while messages.len() < api.limits.max_batch {
                    match queued.try_recv() {
                        Ok(message) => messages.push(message),
                        Err(_) => break,
                    }
                }
                // A stream is slowed to the tenant's ingest rate rather than refused: while it
                // waits, its queue fills and HTTP/2 flow control holds the client back.
                api.wait_for_rate(&tenant, messages.len()).await;
                let first_index = next_index;
                next_index += messages.len();
                let responses = match api.store_stream_batch(&tenant, first_index, messages).await {
                    Ok(responses) => responses,
                    Err(error) => {
                        let _ = acks.send(Err(Status::from(error))).await;
                        return;
                    }
                };
                for response in responses {
                    if acks.send(Ok(response)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(acknowledged))))
    }

    async fn upsert_tasks(
        &self,
        request: Request<UpsertTasksRequest>,
    ) -> Result<Response<UpsertTasksResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let results = self
            .upsert_each(
                &tenant,
                "tasks",
                request.into_inner().tasks,
                |item| item.source_task_id.clone(),
                |item, path| task_from_proto(item, path).map(CatalogItem::Task),
            )
            .await?;
        Ok(Response::new(UpsertTasksResponse { results }))
    }

    async fn upsert_tag_groups(
        &self,
        request: Request<UpsertTagGroupsRequest>,
    ) -> Result<Response<UpsertTagGroupsResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let results = self
            .upsert_each(
                &tenant,
                "tag_groups",
                request.into_inner().tag_groups,
                |item| item.source_tag_group_id.clone(),
                |item, path| tag_group_from_proto(item, path).map(CatalogItem::TagGroup),
            )
            .await?;
        Ok(Response::new(UpsertTagGroupsResponse { results }))
    }

    async fn upsert_tags(
        &self,
        request: Request<UpsertTagsRequest>,
    ) -> Result<Response<UpsertTagsResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let results = self
            .upsert_each(
                &tenant,
                "tags",
                request.into_inner().tags,
                |item| item.source_tag_id.clone(),
                |item, path| tag_from_proto(item, path).map(CatalogItem::Tag),
            )
            .await?;
        Ok(Response::new(UpsertTagsResponse { results }))
    }

    async fn upsert_levels(
        &self,
        request: Request<UpsertLevelsRequest>,
    ) -> Result<Response<UpsertLevelsResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let results = self
            .upsert_each(
                &tenant,
                "levels",
                request.into_inner().levels,
                |item| item.source_level_id.clone(),
                |item, path| level_from_proto(item, path).map(CatalogItem::Level),
            )
            .await?;
        Ok(Response::new(UpsertLevelsResponse { results }))
    }

    async fn upsert_task_numbers(
        &self,
        request: Request<UpsertTaskNumbersRequest>,
    ) -> Result<Response<UpsertTaskNumbersResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let request = request.into_inner();
        self.check_batch("numbers", request.numbers.len())?;
        let task = self.task_key(&tenant, &request).await?;
        let results = self
            .upsert_each(
                &tenant,
                "numbers",
                request.numbers,
                |number| number.number.clone(),
                |number, path| task_number_from_proto(number, &task, path).map(CatalogItem::Number),
            )
            .await?;
        Ok(Response::new(UpsertTaskNumbersResponse { results }))
    }

    #[tracing::instrument(skip_all, fields(tenant, format))]
    async fn ingest_vendor_payload(
        &self,
        request: Request<IngestVendorPayloadRequest>,
    ) -> Result<Response<IngestVendorPayloadResponse>, Status> {
        let tenant = tenant_of(&request)?;
        // A payload is taken as one call of the rate: it is refused before it is parsed.
        self.take_rate(&tenant, 1)?;
        let request = request.into_inner();
        let format = PayloadFormat::try_from(request.format)
            .map_err(|_| ApiError::invalid_field("format", "is not a known payload format"))?;
        tracing::Span::current()
            .record("tenant", tenant.as_str())
            .record("format", format.as_str_name());
        let options = PayloadOptions {
            source_system: Some(request.source_system),
            time_zone: Some(request.time_zone),
            source_task_id: Some(request.source_task_id),
        };
        let IngestedPayload {
            batch,
            results: stored,
        } = ingest_payload(&self.store, &tenant, format, &request.payload, &options).await?;
        let calls = batch
            .calls
            .iter()
            .zip(stored.calls)
            .enumerate()
            .map(|(index, (call, outcome))| IngestItemResult {
                item_type: "call".to_owned(),
                ..item_result(index, &call.key.id, outcome)
            })
            .collect();
        let catalog =
            |item_type: &str,
             source_ids: Vec<&str>,
             results: Vec<Result<(uuid::Uuid, StoreOutcome), DbError>>| {
                source_ids
                    .into_iter()
                    .zip(results)
                    .enumerate()
                    .map(|(index, (source_id, outcome))| {
                        let outcome = outcome
                            .map(|(id, outcome)| Stored {
                                id,
                                version: 0,
                                outcome,
                            })
                            .map_err(ApiError::from);
                        IngestItemResult {
                            item_type: item_type.to_owned(),
                            ..stored_result(index, source_id, outcome)
                        }
                    })
                    .collect::<Vec<_>>()
            };
        let mut other = Vec::new();
        other.extend(catalog(
            "task",
            batch
                .tasks
                .iter()
                .map(|task| task.key.id.as_str())
                .collect(),
            stored.tasks,
        ));
        other.extend(catalog(
            "tag_group",
            batch
                .tag_groups
                .iter()
                .map(|group| group.key.id.as_str())
                .collect(),
            stored.tag_groups,
        ));
        other.extend(catalog(
            "tag",
            batch.tags.iter().map(|tag| tag.key.id.as_str()).collect(),
            stored.tags,
        ));
        other.extend(catalog(
            "level",
            batch
                .levels
                .iter()
                .map(|level| level.key.id.as_str())
                .collect(),
            stored.levels,
        ));
        other.extend(catalog(
            "task_number",
            batch
                .numbers
                .iter()
                .map(|number| number.number.as_str())
                .collect(),
            stored.numbers,
        ));
        let quality = batch.quality.iter().zip(stored.quality).enumerate().map(
            |(index, (imported, outcome))| {
                let outcome = outcome
                    .map(|stored| Stored {
                        id: stored.id,
                        version: stored.version,
                        outcome: stored.outcome,
                    })
                    .map_err(|error| match error {
                        DbError::NotFound => ApiError::FailedPrecondition(format!(
                            "the call {}/{} is not stored yet; send it first",
                            imported.call.system, imported.call.id
                        )),
                        other => ApiError::from(other),
                    });
                IngestItemResult {
                    item_type: "quality_result".to_owned(),
                    ..stored_result(index, &imported.call.id, outcome)
                }
            },
        );
        other.extend(quality);
        Ok(Response::new(IngestVendorPayloadResponse { calls, other }))
    }

    async fn open_call(
        &self,
        request: Request<crate::proto::OpenCallRequest>,
    ) -> Result<Response<crate::proto::OpenCallResponse>, Status> {
        self.take_rate(&tenant_of(&request)?, 1)?;
        let response = super::ingest_live::open_call(&self.pool, &self.limits, request).await?;
        Ok(Response::new(response))
    }

    async fn append_turns(
        &self,
        request: Request<crate::proto::AppendTurnsRequest>,
    ) -> Result<Response<crate::proto::AppendTurnsResponse>, Status> {
        let response = super::ingest_live::append_turns(&self.pool, &self.limits, request).await?;
        Ok(Response::new(response))
    }

    async fn complete_call(
        &self,
        request: Request<crate::proto::CompleteCallRequest>,
    ) -> Result<Response<crate::proto::CompleteCallResponse>, Status> {
        self.take_rate(&tenant_of(&request)?, 1)?;
        let response = super::ingest_live::complete_call(
            &self.pool,
            &self.limits,
            self.store.write_options(),
            request,
        )
        .await?;
        Ok(Response::new(response))
    }
}

/// Messages of IngestCallStream waiting to be written, and acknowledgements waiting to be sent.
const STREAM_QUEUE: usize = 256;

impl IngestApi {
    fn check_batch(&self, field: &str, len: usize) -> Result<(), ApiError> {
        if len > self.limits.max_batch {
            return Err(ApiError::invalid_field(
                field,
                format!("at most {} items per request", self.limits.max_batch),
            ));
        }
        Ok(())
    }

    /// The key of the task an UpsertTaskNumbers request names, by server id or source id.
    async fn task_key(
        &self,
        tenant: &TenantId,
        request: &UpsertTaskNumbersRequest,
    ) -> Result<SourceKey, ApiError> {
        if request.task_id.is_empty() {
            let system = if request.source_system.is_empty() {
                "native"
            } else {
                request.source_system.as_str()
            };
            return SourceKey::parse(system, &request.source_task_id).map_err(
                |(part, description)| {
                    let field = if part == "source_system" {
                        "source_system"
                    } else {
                        "source_task_id"
                    };
                    ApiError::invalid_field(field, description)
                },
            );
        }
        let task_id = uuid::Uuid::parse_str(&request.task_id)
            .map_err(|_| ApiError::invalid_field("task_id", "must be a task id (a UUID)"))?;
        let (system, id) = crate::db::catalog_read::task_source_key(&self.pool, tenant, task_id)
            .await?
            .ok_or(ApiError::NotFound { resource: "task" })?;
        Ok(SourceKey { system, id })
    }

    /// Validates catalog messages (`field[i]` names their fields) and stores the valid ones.
    async fn upsert_each<M>(
        &self,
        tenant: &TenantId,
        field: &str,
        messages: Vec<M>,
        source_id: impl Fn(&M) -> String,
        convert: impl Fn(M, &str) -> Result<CatalogItem, Vec<FieldViolation>>,
    ) -> Result<Vec<IngestItemResult>, ApiError> {
        self.check_batch(field, messages.len())?;
        let items = messages
            .into_iter()
            .enumerate()
            .map(|(index, message)| {
                let id = source_id(&message);
                (id, convert(message, &format!("{field}[{index}]")))
            })
            .collect();
        self.upsert_catalog(tenant, items).await
    }

    /// Stores validated catalog items; one result per item, in order.
    async fn upsert_catalog(
        &self,
        tenant: &TenantId,
        items: Vec<(String, Result<CatalogItem, Vec<FieldViolation>>)>,
    ) -> Result<Vec<IngestItemResult>, ApiError> {
        let mut results: Vec<Option<IngestItemResult>> = vec![None; items.len()];
        let mut valid = Vec::with_capacity(items.len());
        let mut positions = Vec::with_capacity(items.len());
        let mut source_ids = Vec::with_capacity(items.len());
        for (index, (source_id, item)) in items.into_iter().enumerate() {
            match item {
                Ok(item) => {
                    positions.push(index);
                    valid.push(item);
                }
                Err(violations) => {
                    let error = ApiError::InvalidArgument(violations);
                    results[index] = Some(rejected(index, source_id.clone(), error));
                }
            }
            source_ids.push(source_id);
        }
        if !valid.is_empty() {
            let stored = writer::store_catalog(&self.pool, tenant, &valid).await?;
            for (index, outcome) in positions.into_iter().zip(stored) {
                let outcome = outcome
                    .map(|(id, outcome)| Stored {
                        id,
                        version: 0,
                        outcome,
                    })
                    .map_err(ApiError::from);
                results[index] = Some(stored_result(index, &source_ids[index], outcome));
            }
        }
        Ok(results.into_iter().flatten().collect())
    }

    /// Stores messages of IngestCallStream together; one acknowledgement per message, in order.
    async fn store_stream_batch(
        &self,
        tenant: &TenantId,
        first_index: usize,
        messages: Vec<IngestCallStreamRequest>,
    ) -> Result<Vec<IngestCallStreamResponse>, ApiError> {
        let (records, tokens): (Vec<_>, Vec<_>) = messages
            .into_iter()
            .map(|message| (message.call, message.client_token))
            .unzip();
        let results = self
            .store_records(tenant, first_index, records, |_| "call".to_owned())
            .await?;
        Ok(results
            .into_iter()
            .zip(tokens)
            .map(|(result, client_token)| IngestCallStreamResponse {
                result: Some(result),
                client_token,
            })
            .collect())
    }

    /// Validates native records and stores the valid ones in one transaction. Returns one
    /// result per record, in order; `first_index` numbers them, `path_of` names their fields.
    async fn store_records(
        &self,
        tenant: &TenantId,
        first_index: usize,
        records: Vec<Option<CallRecord>>,
        path_of: impl Fn(usize) -> String,
    ) -> Result<Vec<IngestItemResult>, ApiError> {
        let mut results: Vec<Option<IngestItemResult>> = vec![None; records.len()];
        let mut batch = Batch::default();
        let mut positions = Vec::with_capacity(records.len());
        for (offset, record) in records.into_iter().enumerate() {
            let index = first_index + offset;
            let Some(record) = record else {
                let error = ApiError::invalid_field(path_of(index), "is required");
                results[offset] = Some(rejected(index, String::new(), error));
                continue;
            };
            let source_id = record.source_call_id.clone();
            match call_from_proto(record, &path_of(index), &self.limits.call) {
                Ok(call) => {
                    positions.push(offset);
                    batch.calls.push(call);
                }
                Err(violations) => {
                    let error = ApiError::InvalidArgument(violations);
                    results[offset] = Some(rejected(index, source_id, error));
                }
            }
        }
        if !batch.calls.is_empty() {
            let stored = self.store.store_batch(tenant, &batch).await?.calls;
            for ((offset, call), outcome) in positions.into_iter().zip(&batch.calls).zip(stored) {
                results[offset] = Some(item_result(first_index + offset, &call.key.id, outcome));
            }
        }
        Ok(results.into_iter().flatten().collect())
    }
}

/// What was stored for one item, whatever its kind.
struct Stored {
    id: uuid::Uuid,
    version: i64,
    outcome: StoreOutcome,
}

pub(super) fn item_result(
    index: usize,
    source_id: &str,
    outcome: Result<StoredCall, impl Into<ApiError>>,
) -> IngestItemResult {
    let outcome = outcome
        .map(|stored| Stored {
            id: stored.id,
            version: stored.version,
            outcome: stored.outcome,
        })
        .map_err(Into::into);
    stored_result(index, source_id, outcome)
}

fn stored_result(
    index: usize,
    source_id: &str,
    outcome: Result<Stored, ApiError>,
) -> IngestItemResult {
    match outcome {
        Ok(stored) => IngestItemResult {
            index: i32::try_from(index).unwrap_or(i32::MAX),
            outcome: match stored.outcome {
                StoreOutcome::Created => IngestOutcome::Created,
                StoreOutcome::Updated => IngestOutcome::Updated,
                StoreOutcome::Unchanged => IngestOutcome::Unchanged,
            } as i32,
            id: stored.id.to_string(),
            source_id: source_id.to_owned(),
            version: stored.version,
            error: None,
            item_type: String::new(),
        },
        Err(error) => rejected(index, source_id.to_owned(), error),
    }
}

fn rejected(index: usize, source_id: String, error: ApiError) -> IngestItemResult {
    IngestItemResult {
        index: i32::try_from(index).unwrap_or(i32::MAX),
        outcome: IngestOutcome::Rejected as i32,
        id: String::new(),
        source_id,
        version: 0,
        error: Some(error.into_rpc_status()),
        item_type: String::new(),
    }
}
