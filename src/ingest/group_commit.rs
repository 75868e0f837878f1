//! Group commit: concurrent small ingest requests share transactions.
//!
//! A durable commit waits for the WAL flush; one commit per call would cap ingest at the
//! flush rate. Requests hand their calls to a few writer tasks; each takes whatever has queued
//! up (up to a group's size) and writes it as one batch, in one transaction per tenant. Every
//! request still gets its answer only once its calls are committed, and a call that fails is
//! rejected alone (the batch writer isolates it), so coalescing changes speed, never results.

use std::collections::BTreeMap;
use std::sync::Arc;

use sqlx::PgPool;
use tokio::sync::{Mutex, mpsc, oneshot};
use tracing::Instrument as _;

use crate::db::DbError;
use crate::db::calls::StoredCall;
use crate::domain::TenantId;
use crate::domain::call::Call;
use crate::error::ApiError;
use crate::ingest::Batch;
use crate::ingest::writer::{BatchResults, WriteOptions, store_batch};

/// How calls are coalesced.
#[derive(Debug, Clone)]
pub struct GroupCommitSettings {
    /// Writer tasks, each with at most one transaction open: the number of group commits in
    /// flight at once.
    pub writers: usize,
    /// Most calls in one group.
    pub max_group: usize,
    /// Calls waiting for a writer; when full, requests wait (backpressure, not memory).
    pub queue: usize,
    /// Requests with at most this many calls are coalesced; larger ones are a batch already
    /// and get a transaction of their own.
    pub max_request: usize,
    /// How every batch is written (quality inspection at ingest).
    pub write: WriteOptions,
}

impl Default for GroupCommitSettings {
    fn default() -> Self {
        Self {
            writers: 4,
            max_group: 256,
            queue: 4096,
            max_request: 16,
            write: WriteOptions::default(),
        }
    }
}

/// Why a call handed to the group writer was not stored.
#[derive(Debug)]
pub enum GroupError {
    /// The call itself was rejected by the database.
    Call(DbError),
    /// The whole group's transaction failed; nothing of it was committed.
    Group(Arc<DbError>),
}

type Reply = oneshot::Sender<Result<StoredCall, GroupError>>;

struct Job {
    tenant: TenantId,
    call: Call,
    reply: Reply,
}

/// The way into the store for ingest: small batches of calls through the group commit,
/// anything else in a transaction of its own. Cheap to clone. The writer tasks end once every
/// handle is dropped and the queue is drained, so calls accepted before a shutdown are still
/// written.
#[derive(Debug, Clone)]
pub struct GroupCommitter {
    pool: PgPool,
    queue: mpsc::Sender<Job>,
    max_request: usize,
    write: WriteOptions,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Job")
            .field("tenant", &self.tenant)
            .field("call", &self.call.key)
            .finish()
    }
}

impl GroupCommitter {
    /// Starts the writer tasks on the current runtime.
    pub fn start(pool: PgPool, settings: &GroupCommitSettings) -> Self {
        let (queue, receiver) = mpsc::channel(settings.queue.max(1));
        let receiver = Arc::new(Mutex::new(receiver));
        for writer in 0..settings.writers.max(1) {
            let pool = pool.clone();
            let receiver = Arc::clone(&receiver);
            let max_group = settings.max_group.max(1);
            let write = settings.write;
            tokio::spawn(async move {
                while let Some(jobs) = next_group(&receiver, max_group).await {
                    write_group(&pool, writer, jobs, write).await;
                }
            });
        }
        Self {
            pool,
            queue,
            max_request: settings.max_request,
            write: settings.write,
        }
    }

    /// How batches are written.
    pub fn write_options(&self) -> WriteOptions {
        self.write
    }

    /// Stores a batch and returns once it is committed, one result per item. A batch of only
    /// calls, and few of them, shares a group commit; the outer error means nothing of it was
    /// committed.
    pub async fn store_batch(
        &self,
        tenant: &TenantId,
        batch: &Batch,
    ) -> Result<BatchResults, ApiError> {
        if !batch.has_only_calls() || batch.calls.is_empty() || batch.calls.len() > self.max_request
        {
            return Ok(store_batch(&self.pool, tenant, batch, self.write)
                .instrument(crate::telemetry::db_span("store_batch"))
                .await?);
        }
        let mut results = BatchResults::default();
        for result in self.store(tenant, batch.calls.clone()).await {
            match result {
                Ok(call) => results.calls.push(Ok(call)),
                Err(GroupError::Call(error)) => results.calls.push(Err(error)),
                Err(GroupError::Group(error)) => return Err(ApiError::from(error.as_ref())),
            }
        }
        Ok(results)
    }

    /// Calls waiting for a writer.
    pub fn queued(&self) -> usize {
        self.queue.max_capacity() - self.queue.capacity()
    }

    /// Stores calls of one tenant through the group commit; returns once they are committed (or rejected), one result
    /// per call, in order.
    pub async fn store(
        &self,
        tenant: &TenantId,
        calls: Vec<Call>,
    ) -> Vec<Result<StoredCall, GroupError>> {
        let mut replies = Vec::with_capacity(calls.len());
        for call in calls {
            let (reply, answer) = oneshot::channel();
            let job = Job {
                tenant: tenant.clone(),
                call,
                reply,
            };
            if self.queue.send(job).await.is_err() {
                replies.push(None);
            } else {
                replies.push(Some(answer));
            }
        }
        let mut results = Vec::with_capacity(replies.len());
        for answer in replies {
            let result = match answer {
                Some(answer) => answer.await.unwrap_or_else(|_| Err(stopped())),
                None => Err(stopped()),
            };
            results.push(result);
        }
        results
    }
}

/// The error of a call that no writer took: the service is shutting down.
fn stopped() -> GroupError {
    GroupError::Group(Arc::new(DbError::Unavailable(sqlx::Error::PoolClosed)))
}

/// Waits for a call, then takes what else has queued, up to `max_group` calls. `None` once
/// every handle is dropped and the queue is empty.
async fn next_group(receiver: &Mutex<mpsc::Receiver<Job>>, max_group: usize) -> Option<Vec<Job>> {
    let mut receiver = receiver.lock().await;
    let first = receiver.recv().await?;
    let mut jobs = Vec::with_capacity(max_group.min(64));
    jobs.push(first);
    while jobs.len() < max_group {
        match receiver.try_recv() {
            Ok(job) => jobs.push(job),
            Err(_) => break,
        }
    }
    Some(jobs)
}

/// Writes a group: one transaction per tenant (each transaction belongs to one tenant), then
/// answers every call.
async fn write_group(pool: &PgPool, writer: usize, jobs: Vec<Job>, write: WriteOptions) {
    let mut by_tenant: BTreeMap<TenantId, Vec<Job>> = BTreeMap::new();
    for job in jobs {
        by_tenant.entry(job.tenant.clone()).or_default().push(job);
    }
    for (tenant, jobs) in by_tenant {
        let (calls, replies): (Vec<Call>, Vec<Reply>) =
            jobs.into_iter().map(|job| (job.call, job.reply)).unzip();
        let batch = Batch {
            calls,
            ..Batch::default()
        };
        let started = std::time::Instant::now();
        crate::metrics::global().observe_group_commit(batch.calls.len());
        let stored = store_batch(pool, &tenant, &batch, write)
            .instrument(crate::telemetry::db_span("group_commit"))
            .await;
        tracing::debug!(
            writer,
            tenant = %tenant,
            calls = batch.calls.len(),
            elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
            committed = stored.is_ok(),
            "group commit"
        );
        match stored {
            Ok(results) => {
                for (reply, result) in replies.into_iter().zip(results.calls) {
                    // A requester that went away no longer needs its answer; the call is stored.
                    let _ = reply.send(result.map_err(GroupError::Call));
                }
            }
            Err(error) => {
                let error = Arc::new(error);
                for reply in replies {
                    let _ = reply.send(Err(GroupError::Group(Arc::clone(&error))));
                }
            }
        }
    }
}
