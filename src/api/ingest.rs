//! `callstore.v1.IngestService`. Every RPC still answers UNIMPLEMENTED (the generated default).

use crate::proto::ingest_service_server::IngestService;

/// Implements `callstore.v1.IngestService`.
#[derive(Debug, Clone, Default)]
pub struct IngestApi;

#[tonic::async_trait]
impl IngestService for IngestApi {}
