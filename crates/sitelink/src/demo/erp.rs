//! The demo's simulated ERP: an HTTP server whose availability follows a
//! schedule, so that a few minutes of the demo show every status.
//!
//! The cycle (two minutes at speed 1, shorter at higher speeds): up for
//! 30 s, answering 503 for 30 s, slow (3 s, longer than the sites' 2 s
//! timeout) for 15 s, up for 45 s. While up, article `X-999` is refused
//! with 400 (a permanent error: Failed). `POST /control/{up|down|auto}`
//! pins or releases the schedule (try `curl -X POST …/control/down`).

use std::{
    sync::{
        atomic::{AtomicU8, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use axum::{
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

/// What the ERP does now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Up,
    Unavailable,
    Slow,
}

/// Seconds of the cycle at speed 1: up, 503, slow, up.
const CYCLE: [(Phase, f64); 4] = [
    (Phase::Up, 30.0),
    (Phase::Unavailable, 30.0),
    (Phase::Slow, 15.0),
    (Phase::Up, 45.0),
];

/// The phase `elapsed` into the schedule at `speed`.
pub fn phase_at(elapsed: Duration, speed: f64) -> Phase {
    let total: f64 = CYCLE.iter().map(|(_, s)| s).sum();
    let mut t = (elapsed.as_secs_f64() * speed) % total;
    for (phase, secs) in CYCLE {
        if t < secs {
            return phase;
        }
        t -= secs;
    }
    Phase::Up
}

#[derive(Clone)]
struct Erp {
    started: Instant,
    speed: f64,
    /// 0: follow the schedule, 1: pinned up, 2: pinned down (503).
    pinned: Arc<AtomicU8>,
}

impl Erp {
    fn phase(&self) -> Phase {
        match self.pinned.load(Ordering::Relaxed) {
            1 => Phase::Up,
            2 => Phase::Unavailable,
            _ => phase_at(self.started.elapsed(), self.speed),
        }
    }
}

/// Serves the ERP on `listener` until `cancel` fires.
pub async fn serve(
    listener: tokio::net::TcpListener,
    speed: f64,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let erp = Erp {
        started: Instant::now(),
        speed,
        pinned: Arc::default(),
    };
    let app = Router::new()
        .route("/api/health", get(health))
        .route("/api/orders", post(accept))
        .route("/api/output", post(accept))
        .route("/control/{mode}", post(control))
        .with_state(erp);
    axum::serve(listener, app)
        .with_graceful_shutdown(cancel.cancelled_owned())
        .await?;
    Ok(())
}

/// The schedule's answer before any business rule, if it refuses.
async fn schedule(erp: &Erp) -> Option<Response> {
    match erp.phase() {
        Phase::Up => None,
        Phase::Unavailable => Some(
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "ERP maintenance window: try again later",
            )
                .into_response(),
        ),
        Phase::Slow => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            None
        }
    }
}

async fn health(State(erp): State<Erp>) -> Response {
    match schedule(&erp).await {
        Some(refusal) => refusal,
        None => Json(json!({ "ok": true })).into_response(),
    }
}

async fn accept(State(erp): State<Erp>, Json(body): Json<Value>) -> Response {
    if let Some(refusal) = schedule(&erp).await {
        return refusal;
    }
    if body["article"] == "X-999" {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({ "error": "unknown article X-999" })),
        )
            .into_response();
    }
    Json(
        json!({ "ok": true, "erp_document": format!("DOC-{}", rand::random::<u32>() % 1_000_000) }),
    )
    .into_response()
}

async fn control(State(erp): State<Erp>, Path(mode): Path<String>) -> Response {
    let v = match mode.as_str() {
        "auto" => 0,
        "up" => 1,
        "down" => 2,
        _ => {
            return (
                StatusCode::NOT_FOUND,
                "use /control/up, /control/down or /control/auto",
            )
                .into_response()
        }
    };
    erp.pinned.store(v, Ordering::Relaxed);
    format!("ERP schedule: {mode}\n").into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_cycles_and_scales_with_speed() {
        let at = |s: f64, speed: f64| phase_at(Duration::from_secs_f64(s), speed);
        assert_eq!(at(0.0, 1.0), Phase::Up);
        assert_eq!(at(31.0, 1.0), Phase::Unavailable);
        assert_eq!(at(61.0, 1.0), Phase::Slow);
        assert_eq!(at(80.0, 1.0), Phase::Up);
        assert_eq!(at(121.0, 1.0), Phase::Up);
        assert_eq!(at(3.1, 10.0), Phase::Unavailable);
    }
}
