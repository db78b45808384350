//! The HTTP/JSON API (axum). Routes are thin: they parse JSON (or, for the
//! two routes that carry ciphertexts, a binary `application/octet-stream`
//! body, [`hetee_proto::bodies`]), run the host's logic ([`App`]) on a
//! blocking thread and map errors to statuses with a JSON body. Limits:
//! request bodies, per-request timeout.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http_body_util::BodyExt;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::app::{ApiError, App};
use crate::host_model::PublicMeta;
use hetee_proto::api::{ErrorBody, ModelInfo};
use hetee_proto::bodies::{QueryBody, UploadBody, OCTET_STREAM};

/// Largest model upload body, bytes.
pub const MAX_MODEL_BODY: usize = 1 << 30;
/// Largest query body (input ciphertexts), bytes.
pub const MAX_QUERY_BODY: usize = 64 << 20;
/// Largest body of every other request, bytes.
pub const MAX_SMALL_BODY: usize = 1 << 20;
/// Longest a request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(600);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (
            status,
            Json(ErrorBody {
                error: self.message,
            }),
        )
            .into_response()
    }
}

/// Reads a request body of at most `limit` bytes. A larger body is drained
/// (up to a cap) before the 413 goes out, so that the client, still
/// sending, reads the answer instead of a reset connection.
async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let mut body = body;
    let mut buf = Vec::new();
    let mut seen = 0usize;
    let drain_cap = limit.saturating_mul(2).max(8 << 20);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ApiError::bad(format!("cannot read the body: {e}")))?;
        if let Ok(data) = frame.into_data() {
            seen += data.len();
            if seen <= limit {
                buf.extend_from_slice(&data);
            } else if seen > drain_cap {
                break;
            }
        }
    }
    if seen > limit {
        return Err(ApiError {
            status: 413,
            message: format!(
                "request body of at least {seen} bytes is over this route's limit of {limit} \
                 bytes; send less per request"
            ),
        });
    }
    Ok(Bytes::from(buf))
}

fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad(format!(
            "malformed JSON body: {e}; see openapi.yaml for the schema"
        ))
    })
}

async fn blocking<T, F>(f: F) -> Result<Json<T>, ApiError>
where
    T: Serialize + Send + 'static,
    F: FnOnce() -> Result<T, ApiError> + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map(Json),
        Err(e) => Err(ApiError {
            status: 500,
            message: format!("internal error: {e}"),
        }),
    }
}

type S = State<Arc<App>>;

/// `GET /v1/health`: 200 when the enclave and the store answer, 503 (same body) otherwise.
async fn health(State(app): S) -> Result<Response, ApiError> {
    let Json(h) = blocking(move || Ok(app.health())).await?;
    let code = match h.base.status.as_str() {
        "ok" => StatusCode::OK,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    Ok((code, Json(h)).into_response())
}

async fn create_keys(State(app): S, body: Body) -> Result<impl IntoResponse, ApiError> {
    let req = parse(&read_body(body, MAX_SMALL_BODY).await?)?;
    blocking(move || app.create_keys(req)).await
}

async fn get_keys(State(app): S, Path(id): Path<String>) -> Result<impl IntoResponse, ApiError> {
    blocking(move || app.get_keys(&id)).await
}

/// Whether the request carries a binary body ([`hetee_proto::bodies`]).
fn is_binary(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with(OCTET_STREAM))
}

/// The query of `POST /v1/models`: the model's public metadata.
#[derive(Debug, Default, Deserialize)]
struct UploadParams {
    /// The preprocessing spec of image inputs (opaque to the host).
    preprocess: Option<String>,
    /// The model's output shape for one sample, comma separated.
    output_shape: Option<String>,
}

impl UploadParams {
    fn public(self) -> Result<PublicMeta, ApiError> {
        let output_shape = self
            .output_shape
            .map(|s| {
                s.split(',')
                    .map(|d| d.trim().parse::<u32>())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|_| ApiError::bad("output_shape must be comma-separated dimensions"))
            })
            .transpose()?;
        let public = PublicMeta {
            preprocess: self.preprocess,
            output_shape,
        };
        public.check().map_err(ApiError::bad)?;
        Ok(public)
    }
}

async fn upload_model(
    State(app): S,
    headers: HeaderMap,
    params: Result<Query<UploadParams>, QueryRejection>,
    body: Body,
) -> Result<impl IntoResponse, ApiError> {
    let params = params.map_err(|e| ApiError::bad(format!("malformed query string: {e}")))?;
    let public = params.0.public()?;
    let body = read_body(body, MAX_MODEL_BODY).await?;
    blocking(move || {
        if is_binary(&headers) {
            let req = UploadBody::decode(&body).map_err(ApiError::bad)?;
            drop(body);
            return app.upload_model_bytes_with(req, public);
        }
        let req = parse(&body)?;
        drop(body);
        app.upload_model_with(req, public)
    })
    .await
}

/// `GET /v1/models/{id}`: the model's attested key set and its public
/// metadata (fields `preprocess`, `output_shape` when declared).
#[derive(Serialize)]
struct ModelPublic {
    #[serde(flatten)]
    info: ModelInfo,
    #[serde(flatten)]
    public: PublicMeta,
}

async fn get_model(State(app): S, Path(id): Path<String>) -> Result<impl IntoResponse, ApiError> {
    blocking(move || {
        app.get_model_public(&id)
            .map(|(info, public)| ModelPublic { info, public })
    })
    .await
}

async fn open_session(State(app): S, body: Body) -> Result<impl IntoResponse, ApiError> {
    let req = parse(&read_body(body, MAX_SMALL_BODY).await?)?;
    blocking(move || app.open_session(req)).await
}

async fn finish_session(
    State(app): S,
    Path(id): Path<String>,
    body: Body,
) -> Result<impl IntoResponse, ApiError> {
    let req = parse(&read_body(body, MAX_SMALL_BODY).await?)?;
    blocking(move || app.finish_session(&id, req)).await
}

async fn query(
    State(app): S,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<impl IntoResponse, ApiError> {
    let body = read_body(body, MAX_QUERY_BODY).await?;
    blocking(move || {
        if is_binary(&headers) {
            let req = QueryBody::decode(&body).map_err(ApiError::bad)?;
            drop(body);
            return app.query_bytes(&id, req);
        }
        let req = parse(&body)?;
        drop(body);
        app.query(&id, req)
    })
    .await
}

async fn close_session(
    State(app): S,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    blocking(move || {
        app.close_session(&id)
            .map(|_| serde_json::json!({"closed": true}))
    })
    .await
}

/// `POST /v1/peer/share`: relays a joining replica's offer (binary body) to this enclave.
async fn share_sealing_key(State(app): S, body: Body) -> Result<impl IntoResponse, ApiError> {
    let body = read_body(body, MAX_SMALL_BODY).await?;
    blocking(move || app.share_sealing_key(&body)).await
}

async fn fallback() -> ApiError {
    ApiError::not_found("no such route; see openapi.yaml")
}

/// The API's routes.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/keys", post(create_keys))
        .route("/v1/keys/{key_id}", get(get_keys))
        .route("/v1/models", post(upload_model))
        .route("/v1/models/{model_id}", get(get_model))
        .route("/v1/sessions", post(open_session))
        .route("/v1/sessions/{session}/finish", post(finish_session))
        .route("/v1/sessions/{session}/query", post(query))
        .route(
            "/v1/sessions/{session}",
            axum::routing::delete(close_session),
        )
        .route(crate::peer::SHARE_PATH, post(share_sealing_key))
        .fallback(fallback)
        // Each handler enforces its own limit (see `read_body`).
        .layer(DefaultBodyLimit::disable())
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        .layer(TraceLayer::new_for_http())
        .with_state(app)
}

/// Serves the API on `listener` until Ctrl-C.
pub async fn serve(listener: tokio::net::TcpListener, app: Arc<App>) -> std::io::Result<()> {
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    tracing::info!(?addr, "hetee server listening");
    axum::serve(listener, router(app))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
}
