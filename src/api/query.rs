//! `callstore.v1.QueryService`. Every RPC still answers UNIMPLEMENTED (the generated default).

use crate::proto::query_service_server::QueryService;

/// Implements `callstore.v1.QueryService`.
#[derive(Debug, Clone, Default)]
pub struct QueryApi;

#[tonic::async_trait]
impl QueryService for QueryApi {}
