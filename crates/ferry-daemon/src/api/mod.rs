//! The HTTP API: routes, handlers and the OpenAPI document (served at `/openapi.json`).

pub mod types;

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use futures_util::{Stream, StreamExt};
use serde::Deserialize;
use tokio_stream::wrappers::BroadcastStream;
use utoipa::OpenApi;

use crate::daemon::{Daemon, Failure};
use crate::planner::{Plan, PlannedMove, Prediction, Reason};
use types::*;

/// The OpenAPI document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "ferry daemon API",
        description = "One ferry daemon per host: its VMs, its migrations, its load. Served over \
                       HTTPS with client certificates of the cluster CA, and on a local Unix socket."
    ),
    paths(
        host_self,
        hosts,
        drain_host,
        list_vms,
        create_vm,
        get_vm,
        stop_vm,
        list_migrations,
        start_migration,
        get_migration,
        incoming,
        cancel_incoming,
        events,
        metrics,
        plan,
        plan_apply,
        cluster,
        symptoms,
        migration_bandwidth
    ),
    components(schemas(
        VmState,
        VmInfo,
        CreateVm,
        CapacityInfo,
        LoadInfo,
        HostInfo,
        StartMigration,
        MigrationState,
        VmWhere,
        MigrationFailure,
        MigrationInfo,
        IncomingRequest,
        IncomingReady,
        DrainRequest,
        ClusterInfo,
        VmRecordInfo,
        BandwidthRequest,
        Plan,
        PlannedMove,
        Prediction,
        Reason,
        DaemonEvent,
        ApiError
    ))
)]
pub struct ApiDoc;

/// The router with every route.
pub fn router(daemon: Arc<Daemon>) -> Router {
    Router::new()
        .route("/openapi.json", get(openapi))
        .route("/metrics", get(metrics))
        .route("/v1/hosts/self", get(host_self))
        .route("/v1/hosts", get(hosts))
        .route("/v1/hosts/{name}/drain", post(drain_host))
        .route("/v1/vms", get(list_vms).post(create_vm))
        .route("/v1/vms/{name}", get(get_vm))
        .route("/v1/vms/{name}/stop", post(stop_vm))
        .route("/v1/migrations", get(list_migrations).post(start_migration))
        .route("/v1/migrations/{id}", get(get_migration))
        .route("/v1/incoming", post(incoming))
        .route("/v1/incoming/{vm}", delete(cancel_incoming))
        .route("/v1/events", get(events))
        .route("/v1/plan", get(plan))
        .route("/v1/plan/apply", post(plan_apply))
        .route("/v1/cluster", get(cluster))
        .route("/v1/hosts/self/symptoms", post(symptoms))
        .route("/v1/migrations/{id}/bandwidth", post(migration_bandwidth))
        .with_state(daemon)
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (
            self.status(),
            Json(ApiError {
                error: self.to_string(),
            }),
        )
            .into_response()
    }
}

type D = State<Arc<Daemon>>;

async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        ApiDoc::openapi().to_pretty_json().unwrap_or_default(),
    )
        .into_response()
}

/// Prometheus metrics (OpenMetrics text).
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "OpenMetrics text exposition", content_type = "application/openmetrics-text")))]
async fn metrics(State(d): D) -> Response {
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        d.metrics_text(),
    )
        .into_response()
}

/// This host: name, addresses, capacity, load.
#[utoipa::path(get, path = "/v1/hosts/self", responses((status = 200, body = HostInfo)))]
async fn host_self(State(d): D) -> Json<HostInfo> {
    Json(d.host_info())
}

/// The hosts this daemon knows (itself, and those of the cluster store when one is configured).
#[utoipa::path(get, path = "/v1/hosts", responses((status = 200, body = [HostInfo])))]
async fn hosts(State(d): D) -> Result<Json<Vec<HostInfo>>, Failure> {
    if d.cluster.is_none() {
        return Ok(Json(vec![d.host_info()]));
    }
    Ok(Json(d.cluster_info().await?.hosts))
}

/// The cluster store's view: hosts, VM ownership records, migrations in flight, the leader.
#[utoipa::path(get, path = "/v1/cluster", responses((status = 200, body = ClusterInfo),
    (status = 503, description = "no cluster store", body = ApiError)))]
async fn cluster(State(d): D) -> Result<Json<ClusterInfo>, Failure> {
    Ok(Json(d.cluster_info().await?))
}

/// Change a running migration's bandwidth limit.
#[utoipa::path(post, path = "/v1/migrations/{id}/bandwidth", request_body = BandwidthRequest,
    params(("id" = String, Path, description = "migration id")),
    responses((status = 200, body = BandwidthRequest)))]
async fn migration_bandwidth(
    State(d): D,
    Path(id): Path<String>,
    Json(req): Json<BandwidthRequest>,
) -> Result<Json<BandwidthRequest>, Failure> {
    let b = d.set_migration_bandwidth(&id, req.bytes_per_sec).await?;
    Ok(Json(BandwidthRequest { bytes_per_sec: b }))
}

/// Failure symptoms this host reports (a monitoring agent sets them; evacuation's trigger).
#[utoipa::path(post, path = "/v1/hosts/self/symptoms", request_body = Vec<serde_json::Value>,
    responses((status = 204, description = "recorded")))]
async fn symptoms(
    State(d): D,
    Json(req): Json<Vec<ferry_store::cluster::HealthSymptom>>,
) -> Result<StatusCode, Failure> {
    let Some(link) = &d.cluster else {
        return Err(Failure::Refused("no cluster store".into()));
    };
    *link.symptoms.lock().unwrap_or_else(|p| p.into_inner()) = req;
    Ok(StatusCode::NO_CONTENT)
}

/// Empty a host by a deadline (the planner does it).
#[utoipa::path(post, path = "/v1/hosts/{name}/drain", request_body = DrainRequest,
    params(("name" = String, Path, description = "host")),
    responses((status = 204, description = "the host drains"),
        (status = 503, description = "no planner runs", body = ApiError)))]
async fn drain_host(
    State(d): D,
    Path(name): Path<String>,
    Json(req): Json<DrainRequest>,
) -> Result<StatusCode, Failure> {
    d.drain_host(&name, std::time::Duration::from_secs(req.by_secs))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The VMs on this host.
#[utoipa::path(get, path = "/v1/vms", responses((status = 200, body = [VmInfo])))]
async fn list_vms(State(d): D) -> Json<Vec<VmInfo>> {
    Json(d.state().vm_infos())
}

/// Boot a VM on this host.
#[utoipa::path(post, path = "/v1/vms", request_body = CreateVm, responses(
    (status = 201, body = VmInfo), (status = 400, body = ApiError), (status = 409, body = ApiError),
    (status = 503, description = "over capacity", body = ApiError)))]
async fn create_vm(
    State(d): D,
    Json(req): Json<CreateVm>,
) -> Result<(StatusCode, Json<VmInfo>), Failure> {
    Ok((StatusCode::CREATED, Json(d.create_vm(req).await?)))
}

/// One VM.
#[utoipa::path(get, path = "/v1/vms/{name}", params(("name" = String, Path, description = "VM")),
    responses((status = 200, body = VmInfo), (status = 404, body = ApiError)))]
async fn get_vm(State(d): D, Path(name): Path<String>) -> Result<Json<VmInfo>, Failure> {
    Ok(Json(d.state().vm_info(&name)?))
}

/// Stop a VM and remove it from this host.
#[utoipa::path(post, path = "/v1/vms/{name}/stop", params(("name" = String, Path, description = "VM")),
    responses((status = 204), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
async fn stop_vm(State(d): D, Path(name): Path<String>) -> Result<StatusCode, Failure> {
    d.stop_vm(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `?all=true` includes ended migrations.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
struct ListQuery {
    /// Include ended migrations (the last 256).
    #[serde(default)]
    all: bool,
}

/// Migrations of this host, in and out (in flight; `?all=true` adds ended ones).
#[utoipa::path(get, path = "/v1/migrations", params(ListQuery), responses((status = 200, body = [MigrationInfo])))]
async fn list_migrations(State(d): D, Query(q): Query<ListQuery>) -> Json<Vec<MigrationInfo>> {
    Json(d.state().migration_infos(!q.all))
}

/// Start migrating a VM of this host to another host; follow it on `/v1/events?migration=ID`.
#[utoipa::path(post, path = "/v1/migrations", request_body = StartMigration, responses(
    (status = 202, body = MigrationInfo), (status = 400, body = ApiError), (status = 404, body = ApiError),
    (status = 409, body = ApiError), (status = 503, description = "too many migrations", body = ApiError)))]
async fn start_migration(
    State(d): D,
    Json(req): Json<StartMigration>,
) -> Result<(StatusCode, Json<MigrationInfo>), Failure> {
    Ok((StatusCode::ACCEPTED, Json(d.start_migration(req).await?)))
}

/// One migration (in flight or among the last ended ones).
#[utoipa::path(get, path = "/v1/migrations/{id}", params(("id" = String, Path, description = "migration")),
    responses((status = 200, body = MigrationInfo), (status = 404, body = ApiError)))]
async fn get_migration(
    State(d): D,
    Path(id): Path<String>,
) -> Result<Json<MigrationInfo>, Failure> {
    Ok(Json(d.state().migration_info(&id)?))
}

/// (Daemon to daemon) get ready to receive a VM: answers where to send it.
#[utoipa::path(post, path = "/v1/incoming", request_body = IncomingRequest, responses(
    (status = 200, body = IncomingReady), (status = 409, body = ApiError), (status = 503, body = ApiError)))]
async fn incoming(
    State(d): D,
    Json(req): Json<IncomingRequest>,
) -> Result<Json<IncomingReady>, Failure> {
    Ok(Json(d.prepare_incoming(req).await?))
}

/// (Daemon to daemon) the source gave up: drop the receiver if nothing has arrived.
#[utoipa::path(delete, path = "/v1/incoming/{vm}", params(("vm" = String, Path, description = "VM")),
    responses((status = 200), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
async fn cancel_incoming(
    State(d): D,
    Path(vm): Path<String>,
) -> Result<Json<serde_json::Value>, Failure> {
    d.cancel_incoming(&vm).await?;
    Ok(Json(serde_json::json!({ "cancelled": vm })))
}

/// Which events to send.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
struct EventQuery {
    /// Only this migration's events (its current state is sent first).
    migration: Option<String>,
    /// Only this VM's events.
    vm: Option<String>,
}

/// Server-Sent Events: migration progress and state, VM state changes. Each event's `data` is a
/// JSON `DaemonEvent`; its SSE `event` name is the `type`.
#[utoipa::path(get, path = "/v1/events", params(EventQuery), responses(
    (status = 200, description = "text/event-stream of DaemonEvent", content_type = "text/event-stream", body = DaemonEvent)))]
async fn events(
    State(d): D,
    Query(q): Query<EventQuery>,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    // Subscribe before reading the snapshot: an event in between is sent twice, never lost.
    let rx = d.subscribe();
    let first = q.migration.as_deref().and_then(|id| {
        d.state()
            .migration_info(id)
            .ok()
            .map(|m| DaemonEvent::Migration {
                migration: Box::new(m),
            })
    });
    let keep = move |e: &DaemonEvent| {
        q.migration
            .as_deref()
            .is_none_or(|id| e.migration_id() == Some(id))
            && q.vm.as_deref().is_none_or(|vm| e.vm() == vm)
    };
    let live = BroadcastStream::new(rx).filter_map(|r| async move {
        // A subscriber that fell behind skips what it missed.
        r.ok()
    });
    let stream = futures_util::stream::iter(first)
        .chain(live)
        .filter(move |e| std::future::ready(keep(e)))
        .map(|e| {
            Ok(SseEvent::default()
                .event(e.kind())
                .json_data(&e)
                .unwrap_or_default())
        });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// What the planner would do now.
#[utoipa::path(get, path = "/v1/plan", responses((status = 200, body = Plan),
    (status = 503, description = "no planner runs", body = ApiError)))]
async fn plan(State(d): D) -> Result<Json<Plan>, Failure> {
    Ok(Json(d.plan_request(false).await?))
}

/// Carry out the planner's current plan.
#[utoipa::path(post, path = "/v1/plan/apply", responses((status = 200, body = Plan),
    (status = 503, description = "no planner runs", body = ApiError)))]
async fn plan_apply(State(d): D) -> Result<Json<Plan>, Failure> {
    Ok(Json(d.plan_request(true).await?))
}
