//! `callstore.v1.QueryService`: reads of the caller's tenant. Each RPC takes the tenant from the
//! request, hands the message to the module of its concern (call lists, call detail, catalog
//! lists, statistics) and answers with what it returns; errors become statuses in `error.rs`.

use sqlx::PgPool;
use tonic::{Request, Response, Status};

use crate::api::tenant_of;
use crate::api::{query_calls, query_catalog, query_detail, query_stats};
use crate::proto::query_service_server::QueryService;
use crate::proto::{
    GetCallDetailRequest, GetCallDetailResponse, GetCallRequest, GetCallResponse, GetTaskRequest,
    GetTaskResponse, GetTaskStatsRequest, GetTaskStatsResponse, ListCallsRequest,
    ListCallsResponse, ListLevelsRequest, ListLevelsResponse, ListTagGroupsRequest,
    ListTagGroupsResponse, ListTagsRequest, ListTagsResponse, ListTaskNumbersRequest,
    ListTaskNumbersResponse, ListTasksRequest, ListTasksResponse,
};

/// Implements `callstore.v1.QueryService`.
#[derive(Debug, Clone)]
pub struct QueryApi {
    pool: PgPool,
}

impl QueryApi {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

#[tonic::async_trait]
impl QueryService for QueryApi {
    #[tracing::instrument(skip_all, fields(tenant))]
    async fn list_calls(
        &self,
        request: Request<ListCallsRequest>,
    ) -> Result<Response<ListCallsResponse>, Status> {
        let tenant = tenant_of(&request)?;
        tracing::Span::current().record("tenant", tenant.as_str());
        let response = query_calls::list_calls(&self.pool, &tenant, request.into_inner()).await?;
        Ok(Response::new(response))
    }

    #[tracing::instrument(skip_all, fields(tenant))]
    async fn get_call(
        &self,
        request: Request<GetCallRequest>,
    ) -> Result<Response<GetCallResponse>, Status> {
        let tenant = tenant_of(&request)?;
        tracing::Span::current().record("tenant", tenant.as_str());
        let response = query_detail::get_call(&self.pool, &tenant, request.into_inner()).await?;
        Ok(Response::new(response))
    }

    #[tracing::instrument(skip_all, fields(tenant))]
    async fn get_call_detail(
        &self,
        request: Request<GetCallDetailRequest>,
    ) -> Result<Response<GetCallDetailResponse>, Status> {
        let tenant = tenant_of(&request)?;
        tracing::Span::current().record("tenant", tenant.as_str());
        let response =
            query_detail::get_call_detail(&self.pool, &tenant, request.into_inner()).await?;
        Ok(Response::new(response))
    }

    #[tracing::instrument(skip_all, fields(tenant))]
    async fn list_task_numbers(
        &self,
        request: Request<ListTaskNumbersRequest>,
    ) -> Result<Response<ListTaskNumbersResponse>, Status> {
        let tenant = tenant_of(&request)?;
        tracing::Span::current().record("tenant", tenant.as_str());
        let response =
            query_catalog::list_task_numbers(&self.pool, &tenant, request.into_inner()).await?;
        Ok(Response::new(response))
    }

    #[tracing::instrument(skip_all, fields(tenant))]
    async fn get_task(
        &self,
        request: Request<GetTaskRequest>,
    ) -> Result<Response<GetTaskResponse>, Status> {
        let tenant = tenant_of(&request)?;
        tracing::Span::current().record("tenant", tenant.as_str());
        let response = query_catalog::get_task(&self.pool, &tenant, request.into_inner()).await?;
        Ok(Response::new(response))
    }

    #[tracing::instrument(skip_all, fields(tenant))]
    async fn list_tasks(
        &self,
        request: Request<ListTasksRequest>,
    ) -> Result<Response<ListTasksResponse>, Status> {
        let tenant = tenant_of(&request)?;
        tracing::Span::current().record("tenant", tenant.as_str());
        let response = query_catalog::list_tasks(&self.pool, &tenant, request.into_inner()).await?;
        Ok(Response::new(response))
    }

    #[tracing::instrument(skip_all, fields(tenant))]
    async fn list_tags(
        &self,
        request: Request<ListTagsRequest>,
    ) -> Result<Response<ListTagsResponse>, Status> {
        let tenant = tenant_of(&request)?;
        tracing::Span::current().record("tenant", tenant.as_str());
        let response = query_catalog::list_tags(&self.pool, &tenant, request.into_inner()).await?;
        Ok(Response::new(response))
    }

    #[tracing::instrument(skip_all, fields(tenant))]
    async fn list_tag_groups(
        &self,
        request: Request<ListTagGroupsRequest>,
    ) -> Result<Response<ListTagGroupsResponse>, Status> {
        let tenant = tenant_of(&request)?;
        tracing::Span::current().record("tenant", tenant.as_str());
        let response =
            query_catalog::list_tag_groups(&self.pool, &tenant, request.into_inner()).await?;
        Ok(Response::new(response))
    }

    #[tracing::instrument(skip_all, fields(tenant))]
    async fn list_levels(
        &self,
        request: Request<ListLevelsRequest>,
    ) -> Result<Response<ListLevelsResponse>, Status> {
        let tenant = tenant_of(&request)?;
        tracing::Span::current().record("tenant", tenant.as_str());
        let response =
            query_catalog::list_levels(&self.pool, &tenant, request.into_inner()).await?;
        Ok(Response::new(response))
    }

    #[tracing::instrument(skip_all, fields(tenant))]
    async fn get_task_stats(
        &self,
        request: Request<GetTaskStatsRequest>,
    ) -> Result<Response<GetTaskStatsResponse>, Status> {
        let tenant = tenant_of(&request)?;
        tracing::Span::current().record("tenant", tenant.as_str());
        let response =
            query_stats::get_task_stats(&self.pool, &tenant, request.into_inner()).await?;
        Ok(Response::new(response))
    }
}
