//! `callstore.v1.WatchService`. Every RPC still answers UNIMPLEMENTED (the generated default).

use crate::proto::watch_service_server::WatchService;

/// Implements `callstore.v1.WatchService`.
#[derive(Debug, Clone, Default)]
pub struct WatchApi;

#[tonic::async_trait]
impl WatchService for WatchApi {}
