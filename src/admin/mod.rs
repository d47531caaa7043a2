//! The admin server of `winback run` (axum, on its own thread): `/metrics` in
//! the Prometheus text format, `/healthz` (the process serves), `/readyz`
//! (every assigned partition restored and the loop fetching), the contact
//! view `/contacts/{id}`, and the live conversation page `/` with its data,
//! `/api/flow`. Nothing here touches the engine: the loop records metrics
//! and readiness and writes the store, the server reads them.

pub mod contact;
pub mod flow;
mod health;
mod page;

pub use health::Health;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::oneshot;

use crate::domain::Definitions;
use crate::store::rocks::Store;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(
        "admin server: cannot listen on {addr}: {source} (set admin.listen to a free address, or empty to serve nothing)"
    )]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("admin server: {what}: {source}")]
    Io {
        what: &'static str,
        source: std::io::Error,
    },
}

/// What the handlers read.
struct Shared {
    metrics: PrometheusHandle,
    health: Arc<Health>,
    store: Arc<Store>,
    defs: Arc<Definitions>,
    /// The pending-wait counts, scanned at most every [`WAITS_EVERY`].
    waits: tokio::sync::Mutex<Option<WaitCounts>>,
    /// The page's data, scanned at most every [`FLOW_EVERY`].
    flow: tokio::sync::Mutex<Option<(Instant, String)>>,
}

/// When the pending waits were counted, and per partition how many.
type WaitCounts = (Instant, Vec<(u32, u64)>);

/// A scrape counts the pending waits by a key scan of the store; scrapes
/// closer together than this reuse the last count.
const WAITS_EVERY: Duration = Duration::from_secs(10);

/// The page's counts scan the held partitions' contacts; requests closer
/// together than this (several open pages) share one scan.
const FLOW_EVERY: Duration = Duration::from_secs(2);

/// The running server; dropping it stops it.
pub struct AdminServer {
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AdminServer {
    /// Binds `addr` now (so that a taken port is an error at start) and
    /// serves on a thread of its own.
    pub fn start(
        addr: SocketAddr,
        metrics: PrometheusHandle,
        health: Arc<Health>,
        store: Arc<Store>,
        defs: Arc<Definitions>,
    ) -> Result<AdminServer, AdminError> {
        let listener = std::net::TcpListener::bind(addr)
            .map_err(|source| AdminError::Bind { addr, source })?;
        let local = listener.local_addr().map_err(|source| AdminError::Io {
            what: "local address",
            source,
        })?;
        listener
            .set_nonblocking(true)
            .map_err(|source| AdminError::Io {
                what: "non-blocking socket",
                source,
            })?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(|source| AdminError::Io {
                what: "runtime",
                source,
            })?;
        let shared = Arc::new(Shared {
            metrics,
            health,
            store,
            defs,
            waits: tokio::sync::Mutex::new(None),
            flow: tokio::sync::Mutex::new(None),
        });
        let app = Router::new()
            .route("/metrics", get(metrics_page))
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(ready))
            .route("/contacts/{id}", get(contact_page))
            .route("/api/flow", get(flow_data))
            .merge(page::routes())
            .with_state(shared);
        let (tx, rx) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("winback-admin".into())
            .spawn(move || {
                rt.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => {
                            tracing::error!(error = %e, "admin server: socket");
                            return;
                        }
                    };
                    let serve = axum::serve(listener, app).with_graceful_shutdown(async {
                        rx.await.ok();
                    });
                    if let Err(e) = serve.await {
                        tracing::error!(error = %e, "admin server stopped");
                    }
                });
            })
            .map_err(|source| AdminError::Io {
                what: "thread",
                source,
            })?;
        tracing::info!(
            addr = %local,
            "admin server: / (conversation page), /metrics, /healthz, /readyz, /contacts/ID"
        );
        Ok(AdminServer {
            addr: local,
            shutdown: Some(tx),
            thread: Some(thread),
        })
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            tx.send(()).ok();
        }
        if let Some(t) = self.thread.take() {
            t.join().ok();
        }
    }
}

async fn ready(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    match s.health.not_ready() {
        None => (StatusCode::OK, "ready\n".to_string()),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

/// `GET /contacts/{id}`: the contact explained ([`contact::view`]) as JSON,
/// 404 when the store knows nothing of it.
async fn contact_page(State(s): State<Arc<Shared>>, Path(id): Path<String>) -> impl IntoResponse {
    let json = [(header::CONTENT_TYPE, "application/json")];
    let Some(partitions) = s.health.input_partitions() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            json,
            "{\"error\":\"starting: the input partition count is not known yet\"}\n".to_string(),
        );
    };
    let shared = Arc::clone(&s);
    let found = tokio::task::spawn_blocking(move || {
        contact::view(&shared.store, &shared.defs, partitions, &id)
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|r| r.map_err(|e| e.to_string()));
    match found {
        Ok(Some(v)) => (StatusCode::OK, json, format!("{v:#}\n")),
        Ok(None) => (
            StatusCode::NOT_FOUND,
            json,
            "{\"error\":\"no such contact in this process's partitions\"}\n".to_string(),
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            json,
            format!("{}\n", serde_json::json!({ "error": e })),
        ),
    }
}

/// `GET /api/flow`: the conversations with their live counts
/// ([`flow::flow`]).
async fn flow_data(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    let json = [(header::CONTENT_TYPE, "application/json")];
    let mut cached = s.flow.lock().await;
    if let Some((at, body)) = cached.as_ref()
        && at.elapsed() < FLOW_EVERY
    {
        return (StatusCode::OK, json, body.clone());
    }
    let shared = Arc::clone(&s);
    let found = tokio::task::spawn_blocking(move || {
        let parts: Vec<u32> = shared.health.partitions().into_iter().collect();
        flow::counts(&shared.store, &shared.defs, &parts)
            .map(|c| format!("{:#}\n", flow::flow(&shared.defs, &c)))
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|r| r.map_err(|e| e.to_string()));
    match found {
        Ok(body) => {
            *cached = Some((Instant::now(), body.clone()));
            (StatusCode::OK, json, body)
        }
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            json,
            format!("{}\n", serde_json::json!({ "error": e })),
        ),
    }
}

async fn metrics_page(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    let waits = pending_waits(&s).await;
    s.metrics.run_upkeep();
    let mut body = s.metrics.render();
    // Counted here, from the store: the loop keeps no count of its own.
    body.push_str(
        "# HELP winback_pending_waits Waits pending in the partition, as last written (counted at most every 10 s).\n\
         # TYPE winback_pending_waits gauge\n",
    );
    for (p, n) in waits {
        body.push_str(&format!("winback_pending_waits{{partition=\"{p}\"}} {n}\n"));
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}

async fn pending_waits(s: &Arc<Shared>) -> Vec<(u32, u64)> {
    let mut cached = s.waits.lock().await;
    if let Some((at, counts)) = cached.as_ref()
        && at.elapsed() < WAITS_EVERY
    {
        return counts.clone();
    }
    let parts = s.health.partitions();
    let store = Arc::clone(&s.store);
    let counts = tokio::task::spawn_blocking(move || {
        parts
            .into_iter()
            .filter_map(|p| match store.count_timers(p) {
                Ok(n) => Some((p, n)),
                Err(e) => {
                    tracing::warn!(partition = p, error = %e, "admin server: counting waits");
                    None
                }
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap_or_default();
    *cached = Some((Instant::now(), counts.clone()));
    counts
}
