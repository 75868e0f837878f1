//! Ingest load: generated `IngestCalls` requests sent by concurrent clients in a closed loop,
//! with the CPU the server and its Postgres backends used meanwhile.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use anyhow::{Context as _, ensure};
use callstore::proto::ingest_service_client::IngestServiceClient;
use callstore::proto::{IngestCallsRequest, IngestOutcome};
use tonic::transport::Channel;
use uuid::Uuid;

use super::cpu::{CpuSnapshot, CpuSplit};
use super::generator::BENCH_TENANT;
use super::server::{database_marker, tenant_request};

/// What the ingest did.
pub struct Load {
    /// Server ids of the CREATED calls.
    pub ids: Vec<Uuid>,
    /// The first item that was not CREATED, described.
    pub first_problem: Option<String>,
    pub cpu: CpuSplit,
}

/// Sends every request, the clients taking the next one from a shared queue as soon as their
/// previous request is answered (closed loop), and collects the ids of the CREATED calls.
pub async fn closed_loop_ingest(
    label: &'static str,
    clients: Vec<IngestServiceClient<Channel>>,
    requests: VecDeque<IngestCallsRequest>,
    server_pid: u32,
) -> anyhow::Result<Load> {
    let queue = Arc::new(Mutex::new(requests));
    let before = CpuSnapshot::take(Some(server_pid), &database_marker())?;
    let mut tasks = Vec::with_capacity(clients.len());
    for mut client in clients {
        let queue = Arc::clone(&queue);
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            let mut first_problem = None;
            loop {
                let next = queue.lock().ok().and_then(|mut queue| queue.pop_front());
                let Some(request) = next else { break };
                let sent = request.calls.len();
                let response = client
                    .ingest_calls(tenant_request(BENCH_TENANT, request))
                    .await
                    .with_context(|| format!("{label}: IngestCalls failed"))?
                    .into_inner();
                ensure!(
                    response.results.len() == sent,
                    "{label}: {} results for {sent} calls",
                    response.results.len()
                );
                for result in response.results {
                    if result.outcome == IngestOutcome::Created as i32 {
                        ids.push(Uuid::parse_str(&result.id).with_context(|| {
                            format!("{label}: call id {:?} is not a UUID", result.id)
                        })?);
                    } else if first_problem.is_none() {
                        first_problem = Some(format!(
                            "{} is {:?}: {:?}",
                            result.source_id,
                            IngestOutcome::try_from(result.outcome),
                            result.error
                        ));
                    }
                }
            }
            anyhow::Ok((ids, first_problem))
        }));
    }

    let mut ids = Vec::new();
    let mut first_problem = None;
    let mut failure = None;
    for task in tasks {
        match task.await {
            Ok(Ok((created, problem))) => {
                ids.extend(created);
                first_problem = first_problem.or(problem);
            }
            Ok(Err(error)) => {
                // The others stop as the queue is drained; keep the first error.
                if let Ok(mut queue) = queue.lock() {
                    queue.clear();
                }
                failure.get_or_insert(error);
            }
            Err(error) => {
                failure.get_or_insert(anyhow::anyhow!("{label}: a client task failed: {error}"));
            }
        }
    }
    let after = CpuSnapshot::take(Some(server_pid), &database_marker())?;
    if let Some(error) = failure {
        return Err(error);
    }
    Ok(Load {
        ids,
        first_problem,
        cpu: before.until(&after),
    })
}
