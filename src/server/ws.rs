//! One websocket endpoint for the hall display, remote viewers, the agent console and the
//! evaluation system: `GET /ws/openings/{id}?since=N`.
//!
//! The server first subscribes to the opening's broadcast, then replays stored events after
//! `since` from the database, then forwards live ones, skipping any it already sent: no event is
//! missed or repeated. A client that falls more than [`SNAPSHOT_GAP`] events behind gets a
//! snapshot instead of the backlog. A client that does not take a frame within [`WRITE_TIMEOUT`],
//! or answers no ping for `ws_client_timeout_secs`, is dropped, so a slow client never stalls the
//! others and holds no buffers for long (the broadcast never waits for anyone).

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::{HttpRequest, HttpResponse, web};
use actix_ws::{AggregatedMessage, CloseCode, CloseReason, Session};
use bytestring::ByteString;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;

use super::ApiError;
use super::auth::role_for;
use crate::hall::{BusMsg, Hall, Role};

const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
const SNAPSHOT_GAP: i64 = 2000;
const PAGE: i64 = 500;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/ws/openings/{id}", web::get().to(connect));
}

#[derive(serde::Deserialize)]
struct Since {
    #[serde(default)]
    since: i64,
}

async fn connect(
    hall: web::Data<Hall>,
    req: HttpRequest,
    id: web::Path<String>,
    q: web::Query<Since>,
    body: web::Payload,
) -> Result<HttpResponse, actix_web::Error> {
    hall.opening(&id).await.map_err(ApiError)?;
    let role = role_for(&req, &hall, &id).await;
    let (res, session, stream) = actix_ws::handle(&req, body)?;
    let rx = hall.bus().subscribe(&id);
    let stream = stream.max_frame_size(64 * 1024).aggregate_continuations();
    // Counted before the upgrade answer goes out, so a client that has its answer is counted.
    let gauge = Gauge::open(hall.into_inner());
    actix_web::rt::spawn(run(
        gauge,
        id.into_inner(),
        role,
        q.since.max(0),
        session,
        stream,
        rx,
    ));
    Ok(res)
}

/// One open websocket in the `websocket_connections` gauge, for as long as it lives.
struct Gauge(Arc<Hall>);

impl Gauge {
    fn open(hall: Arc<Hall>) -> Gauge {
        hall.metrics().ws_connections.inc();
        Gauge(hall)
    }
}

impl Drop for Gauge {
    fn drop(&mut self) {
        self.0.metrics().ws_connections.dec();
    }
}

async fn send(session: &mut Session, text: impl Into<ByteString>) -> Result<(), ()> {
    match tokio::time::timeout(WRITE_TIMEOUT, session.text(text)).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}

/// Sends every stored event after `*last` that `role` may see, advancing `*last`.
async fn catch_up(
    hall: &Hall,
    opening: &str,
    role: Role,
    last: &mut i64,
    session: &mut Session,
) -> Result<(), ()> {
    let newest = hall
        .db()
        .last_event(opening)
        .await
        .map_err(|_| ())?
        .map(|(s, _)| s)
        .unwrap_or(0);
    if newest - *last > SNAPSHOT_GAP {
        let snapshot = hall.snapshot(opening, role).await.map_err(|_| ())?;
        *last = snapshot["last_seq"].as_i64().unwrap_or(newest);
        return send(
            session,
            json!({"type": "snapshot", "snapshot": snapshot}).to_string(),
        )
        .await;
    }
    loop {
        let page = hall
            .db()
            .events_since(opening, *last, PAGE)
            .await
            .map_err(|_| ())?;
        let full = page.len() as i64 == PAGE;
        for e in page {
            if role.can_see(&e.audience) {
                send(session, crate::hall::render(&e)).await?;
            }
            *last = e.seq;
        }
        if !full {
            return Ok(());
        }
    }
}

async fn run(
    gauge: Gauge,
    opening: String,
    role: Role,
    since: i64,
    mut session: Session,
    mut stream: actix_ws::AggregatedMessageStream,
    mut rx: tokio::sync::broadcast::Receiver<BusMsg>,
) {
    let hall = gauge.0.clone();
    let mut last = since;
    let hello = json!({"type": "hello", "server_ms": hall.now(), "role": format!("{role:?}").to_lowercase(), "since": since});
    if send(&mut session, hello.to_string()).await.is_err()
        || catch_up(&hall, &opening, role, &mut last, &mut session)
            .await
            .is_err()
    {
        return;
    }
    let settings = hall.settings();
    let client_timeout = Duration::from_secs(settings.ws_client_timeout_secs.max(1));
    let mut heartbeat =
        tokio::time::interval(Duration::from_secs(settings.ws_heartbeat_secs.max(1)));
    let mut last_heard = Instant::now();
    let reason = loop {
        tokio::select! {
            msg = rx.recv() => match msg {
                Ok(BusMsg::Event(e)) => {
                    if e.row.seq <= last {
                        continue;
                    }
                    let ok = if e.row.seq == last + 1 {
                        last = e.row.seq;
                        if role.can_see(&e.row.audience) { send(&mut session, e.frame.clone()).await } else { Ok(()) }
                    } else {
                        catch_up(&hall, &opening, role, &mut last, &mut session).await
                    };
                    if ok.is_err() {
                        break None;
                    }
                }
                Ok(BusMsg::Frame(p)) => {
                    if send(&mut session, p).await.is_err() {
                        break None;
                    }
                }
                Err(RecvError::Lagged(_)) => {
                    if catch_up(&hall, &opening, role, &mut last, &mut session).await.is_err() {
                        break None;
                    }
                }
                Err(RecvError::Closed) => break Some(CloseReason { code: CloseCode::Away, description: Some("server shutting down".into()) }),
            },
            msg = stream.recv() => match msg {
                Some(Ok(AggregatedMessage::Ping(bytes))) => {
                    last_heard = Instant::now();
                    if session.pong(&bytes).await.is_err() {
                        break None;
                    }
                }
                Some(Ok(AggregatedMessage::Close(_))) | None | Some(Err(_)) => break None,
                Some(Ok(_)) => last_heard = Instant::now(),
            },
            _ = heartbeat.tick() => {
                if last_heard.elapsed() > client_timeout {
                    break Some(CloseReason { code: CloseCode::Policy, description: Some("no heartbeat".into()) });
                }
                if tokio::time::timeout(WRITE_TIMEOUT, session.ping(b"")).await.map(|r| r.is_err()).unwrap_or(true) {
                    break None;
                }
            }
        }
    };
    let _ = session.close(reason).await;
}
