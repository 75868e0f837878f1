//! `callstore.v1.QualityService`. Every RPC still answers UNIMPLEMENTED (the generated default).

use crate::proto::quality_service_server::QualityService;

/// Implements `callstore.v1.QualityService`.
#[derive(Debug, Clone, Default)]
pub struct QualityApi;

#[tonic::async_trait]
impl QualityService for QualityApi {}
