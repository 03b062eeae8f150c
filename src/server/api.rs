//! JSON API: agents, openings, uploads, phones and the evaluation system.

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::cookie::{Cookie, SameSite};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header;
use actix_web::middleware::Next;
use actix_web::{HttpMessage, HttpRequest, HttpResponse, web};
use futures_util::StreamExt;
use serde_json::json;
use tokio::io::AsyncWriteExt;

use super::ApiError;
use super::auth::{Agent, Evaluator, LoggedInBidder, SESSION_COOKIE, role_for};
use crate::hall::{Hall, HallError, LogVerdict, NewBidder, NewOpening, Role};
use crate::phone::{Answer, RecordConfirmation, SignIn, SignedObjection};

type Result<T> = std::result::Result<T, ApiError>;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(healthz))
        .route("/metrics", web::get().to(metrics))
        .route("/api/login", web::post().to(login))
        .route("/api/logout", web::post().to(logout))
        .route("/api/tokens", web::post().to(new_api_token))
        .route("/api/openings", web::get().to(list_openings))
        .route("/api/openings", web::post().to(create_opening))
        .route("/api/openings/{id}", web::get().to(snapshot))
        .route("/api/openings/{id}/events", web::get().to(events))
        .route(
            "/api/openings/{id}/events/verify",
            web::get().to(verify_events),
        )
        .route("/api/openings/{id}/events/head", web::get().to(log_head))
        .route(
            "/api/openings/{id}/events/digests",
            web::get().to(event_digests),
        )
        .route("/api/openings/{id}/record", web::get().to(record))
        .route(
            "/api/openings/{id}/record/issue",
            web::post().to(issue_record),
        )
        .route(
            "/api/openings/{id}/record/issued",
            web::get().to(issued_record),
        )
        .route(
            "/api/openings/{id}/record/issued/{version}",
            web::get().to(issued_record_text),
        )
        .route(
            "/api/openings/{id}/record/issued/{version}/qr.svg",
            web::get().to(record_qr_svg),
        )
        .route(
            "/api/phone/objections/{id}",
            web::post().to(raise_signed_objection),
        )
        .route(
            "/api/openings/{id}/bidder-login",
            web::post().to(new_bidder_login),
        )
        .route(
            "/api/openings/{id}/bidder-login/{nonce}/qr.svg",
            web::get().to(bidder_login_qr_svg),
        )
        .route(
            "/api/bidder-login/{nonce}/session",
            web::post().to(take_bidder_session),
        )
        .route(
            "/api/openings/{id}/bidders/{uscc}/keys",
            web::post().to(add_bidder_keys),
        )
        .route(
            "/api/openings/{id}/bidders/{uscc}/bind-code",
            web::post().to(bind_code),
        )
        .route("/api/phone/binds/{code}", web::get().to(bind_view))
        .route("/api/phone/binds/{code}", web::post().to(bind))
        .route("/api/phone/binds/{code}/qr.svg", web::get().to(bind_qr_svg))
        .route("/api/phone/logins/{nonce}", web::get().to(login_view))
        .route("/api/phone/logins/{nonce}", web::post().to(bidder_login))
        .route("/api/openings/{id}/me", web::get().to(bidder_view))
        .route(
            "/api/openings/{id}/me/logout",
            web::post().to(end_bidder_session),
        )
        .route(
            "/api/openings/{id}/me/objections",
            web::post().to(raise_own_objection),
        )
        .route("/api/phone/sign-in/{id}", web::get().to(sign_in_view))
        .route("/api/phone/sign-in/{id}", web::post().to(sign_in))
        .route(
            "/api/openings/{id}/sign-in/qr.svg",
            web::get().to(sign_in_qr_svg),
        )
        .route(
            "/api/phone/records/{id}/{version}",
            web::get().to(record_view),
        )
        .route(
            "/api/phone/records/{id}/{version}",
            web::post().to(confirm_record),
        )
        .route("/api/platform-key", web::get().to(platform_key))
        .route(
            "/api/openings/{id}/bidders",
            web::post().to(register_bidder),
        )
        .route("/api/openings/{id}/bids/{uscc}", web::put().to(upload))
        .route(
            "/api/openings/{id}/bids/{uscc}/withdraw",
            web::post().to(withdraw),
        )
        .route(
            "/api/openings/{id}/bids/{bid}/qr.svg",
            web::get().to(qr_svg),
        )
        .route(
            "/api/openings/{id}/bids/{bid}/abandon",
            web::post().to(abandon_decryption),
        )
        .route(
            "/api/openings/{id}/start-decryption",
            web::post().to(start_decryption),
        )
        .route(
            "/api/openings/{id}/end-decryption",
            web::post().to(end_decryption),
        )
        .route("/api/openings/{id}/fail", web::post().to(fail_opening))
        .route("/api/openings/{id}/release", web::post().to(release))
        .route("/api/openings/{id}/close", web::post().to(close))
        .route(
            "/api/openings/{id}/objections",
            web::post().to(raise_objection),
        )
        .route(
            "/api/openings/{id}/objections/{n}/answer",
            web::post().to(answer_objection),
        )
        .route(
            "/api/openings/{id}/evaluator-tokens",
            web::post().to(evaluator_token),
        )
        .route("/api/phone/challenges/{nonce}", web::get().to(challenge))
        .route("/m/{nonce}", web::get().to(challenge))
        .route(
            "/api/phone/challenges/{nonce}/answer",
            web::post().to(answer),
        )
        .route("/api/eval/bids", web::get().to(eval_bids))
        .route("/api/eval/bids/{bid}/file", web::get().to(eval_file))
        .route("/api/eval/bids/{bid}/sealed", web::get().to(eval_sealed));
}

/// Records the latency of every request.
pub async fn observe_latency(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> std::result::Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let hall = req.app_data::<web::Data<Hall>>().cloned();
    let res = next.call(req).await;
    if let Some(hall) = hall {
        hall.metrics()
            .request_seconds
            .observe(started.elapsed().as_secs_f64());
    }
    res
}

async fn healthz(hall: web::Data<Hall>) -> Result<HttpResponse> {
    hall.db().ping().await?;
    Ok(HttpResponse::Ok().json(json!({"status": "ok"})))
}

async fn metrics(hall: web::Data<Hall>) -> Result<HttpResponse> {
    let m = hall.metrics();
    m.bids.reset();
    for (state, n) in hall.db().count_bids_by_state().await? {
        m.bids.with_label_values(&[state.as_str()]).set(n);
    }
    m.openings.reset();
    for (state, n) in hall.db().count_openings_by_state().await? {
        m.openings.with_label_values(&[state.as_str()]).set(n);
    }
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(m.render()))
}

#[derive(serde::Deserialize)]
struct Login {
    username: String,
    password: String,
}

async fn login(
    hall: web::Data<Hall>,
    req: HttpRequest,
    body: web::Json<Login>,
) -> Result<HttpResponse> {
    // Wrong passwords from one place do not hold the agent back from another.
    let from = client_key(&req, &hall);
    let token = hall.login(&body.username, &body.password, &from).await?;
    let cookie = Cookie::build(SESSION_COOKIE, token)
        .path("/")
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(hall.settings().secure_cookies)
        .finish();
    Ok(HttpResponse::Ok()
        .cookie(cookie)
        .json(json!({"status": "signed in"})))
}

async fn logout(hall: web::Data<Hall>, req: HttpRequest) -> Result<HttpResponse> {
    if let Some(c) = req.cookie(SESSION_COOKIE) {
        hall.logout(c.value()).await?;
    }
    let mut gone = Cookie::build(SESSION_COOKIE, "").path("/").finish();
    gone.make_removal();
    Ok(HttpResponse::Ok()
        .cookie(gone)
        .json(json!({"status": "signed out"})))
}

async fn new_api_token(hall: web::Data<Hall>, agent: Agent) -> Result<HttpResponse> {
    let token = hall
        .issue_agent_token(&agent.id, "api", 365 * 24 * 3600 * 1000)
        .await?;
    Ok(HttpResponse::Created().json(json!({"token": token})))
}

async fn list_openings(hall: web::Data<Hall>, _agent: Agent) -> Result<HttpResponse> {
    let rows = hall.db().openings().await?;
    let list: Vec<_> = rows
        .iter()
        .map(|o| {
            json!({"id": o.id, "tender_id": o.tender_id, "name": o.name, "state": o.state,
                        "deadline_ms": o.deadline_ms, "opening_ms": o.opening_ms})
        })
        .collect();
    Ok(HttpResponse::Ok().json(list))
}

/// Parses a JSON body after the caller was authenticated, so that an unauthenticated request is
/// told so before anything about its body.
fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> std::result::Result<T, HallError> {
    serde_json::from_slice(body)
        .map_err(|e| HallError::Invalid(format!("the request body is not valid: {e}")))
}

async fn create_opening(
    hall: web::Data<Hall>,
    agent: Agent,
    body: web::Bytes,
) -> Result<HttpResponse> {
    let row = hall
        .create_opening(&agent.id, json_body::<NewOpening>(&body)?)
        .await?;
    Ok(HttpResponse::Created().json(json!({"id": row.id, "state": row.state})))
}

async fn snapshot(
    hall: web::Data<Hall>,
    req: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse> {
    let role = role_for(&req, &hall, &id).await;
    Ok(HttpResponse::Ok().json(hall.snapshot(&id, role).await?))
}

#[derive(serde::Deserialize)]
struct After {
    #[serde(default)]
    after: i64,
}

async fn events(
    hall: web::Data<Hall>,
    req: HttpRequest,
    id: web::Path<String>,
    q: web::Query<After>,
) -> Result<HttpResponse> {
    hall.opening(&id).await?;
    let role = role_for(&req, &hall, &id).await;
    // A page holds what the caller may read of the next stored events; a run of a thousand it
    // may not read (a large opening's registrations) does not end the list early.
    let mut after = q.after;
    loop {
        let page = hall.db().events_since(&id, after, 1000).await?;
        let full = page.len() == 1000;
        after = page.last().map_or(after, |e| e.seq);
        let events: Vec<_> = page
            .into_iter()
            .filter(|e| role.can_see(&e.audience))
            .collect();
        if !events.is_empty() || !full {
            return Ok(HttpResponse::Ok().json(events));
        }
    }
}

/// Every event's digest after `after` (chain version 2), so that anyone checks the chain through
/// the events it may not read.
async fn event_digests(
    hall: web::Data<Hall>,
    req: HttpRequest,
    id: web::Path<String>,
    q: web::Query<After>,
) -> Result<HttpResponse> {
    let role = role_for(&req, &hall, &id).await;
    Ok(HttpResponse::Ok().json(hall.event_digests(&id, role, q.after).await?))
}

/// A head of the log the platform signed earlier (`seq` and `hash` of a [`SignedHead`]), for
/// `/events/verify` to check the log still leads to.
#[derive(serde::Deserialize)]
struct HeadQuery {
    seq: Option<i64>,
    hash: Option<String>,
}

async fn verify_events(
    hall: web::Data<Hall>,
    _agent: Agent,
    id: web::Path<String>,
    q: web::Query<HeadQuery>,
) -> Result<HttpResponse> {
    let head = match (q.seq, q.hash.as_deref()) {
        (None, None) => None,
        (Some(seq), Some(hash)) if seq >= 0 && hash.len() == 64 && hex::decode(hash).is_ok() => {
            Some((seq, hash))
        }
        _ => {
            return Err(HallError::Invalid(
                "to check the log against a signed head, give both its seq (a number) and its \
                 hash (64 hex digits)"
                    .into(),
            )
            .into());
        }
    };
    let verdict = hall.verify_log(&id, head).await?;
    let mut body = json!({
        "valid": matches!(verdict, LogVerdict::Valid { .. }),
        "reason": verdict.explain(),
    });
    match verdict {
        LogVerdict::Valid { events } => body["events"] = events.into(),
        LogVerdict::Broken { first_bad_seq } => body["first_bad_seq"] = first_bad_seq.into(),
        LogVerdict::Rewritten { seq } => body["head_seq"] = seq.into(),
        LogVerdict::Truncated { seq, events } => {
            body["head_seq"] = seq.into();
            body["events"] = events.into();
        }
    }
    Ok(HttpResponse::Ok().json(body))
}

/// The head of the opening's log as the caller may see it, signed by the platform: keep it to
/// prove later what the log held (see `/events/verify`).
async fn log_head(
    hall: web::Data<Hall>,
    req: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse> {
    // An unknown opening is refused by `signed_head` itself.
    let role = role_for(&req, &hall, &id).await;
    Ok(HttpResponse::Ok().json(hall.signed_head(&id, role).await?))
}

/// The key that checks the platform's signatures on receipts and log heads.
async fn platform_key(hall: web::Data<Hall>) -> Result<HttpResponse> {
    let key = hall.platform_key();
    let pem =
        crate::crypto::public_key_pem(&key).map_err(|e| HallError::Internal(e.to_string()))?;
    let key_id = hex::encode(crate::crypto::key_id(&key));
    // Keys used before the master key changed, for what they signed.
    let earlier: Vec<_> = hall
        .db()
        .platform_keys()
        .await?
        .into_iter()
        .filter(|(id, _, _)| *id != key_id)
        .map(
            |(id, pem, since)| json!({"key_id": id, "public_key_pem": pem, "first_used_ms": since}),
        )
        .collect();
    Ok(HttpResponse::Ok().json(json!({
        "public_key_pem": pem,
        "key_id": key_id,
        "signature": "SM2 with SM3, user ID 1234567812345678, DER, hex",
        "earlier_keys": earlier,
    })))
}

async fn register_bidder(
    hall: web::Data<Hall>,
    _agent: Agent,
    id: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse> {
    let bidder = hall
        .register_bidder(&id, json_body::<NewBidder>(&body)?)
        .await?;
    Ok(HttpResponse::Created()
        .json(json!({"id": bidder.id, "uscc": bidder.uscc, "name": bidder.name})))
}

/// Streams an upload to disk (never whole in memory), then hands it to the hall for checking.
async fn upload(
    hall: web::Data<Hall>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    mut body: web::Payload,
) -> Result<HttpResponse> {
    let (opening_id, uscc) = path.into_inner();
    let limit = hall.settings().max_upload_bytes;
    let opening = hall.opening(&opening_id).await?;
    if opening.state != "scheduled" || hall.now() >= opening.deadline_ms {
        return Err(HallError::AfterDeadline(crate::hall::fmt_time(opening.deadline_ms)).into());
    }
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(size) = declared.filter(|&s| s > limit) {
        return Err(HallError::TooLarge { size, limit }.into());
    }
    let tmp = hall.upload_dir().join(format!(
        "{}.part",
        hex::encode(
            crate::crypto::random_bytes::<16>().map_err(|e| HallError::Internal(e.to_string()))?
        )
    ));
    // The receipt's SM3 of the whole file is one sequential hash: it runs on a blocking thread
    // while the bytes arrive, instead of as a second pass over the file once they have.
    let (to_hasher, mut pieces) = tokio::sync::mpsc::channel::<bytes::Bytes>(64);
    let hasher = tokio::task::spawn_blocking(move || {
        use sm3::Digest;
        let mut hasher = sm3::Sm3::new();
        while let Some(piece) = pieces.blocking_recv() {
            hasher.update(&piece);
        }
        hex::encode(hasher.finalize())
    });
    let written = async {
        // Written in whole 1 MiB pieces at 1 MiB offsets, not as the network's pieces come
        // (8–64 KiB, of any length): fewer writes, and the file's pages stay in large folios,
        // which cost a fraction as much to read back or map when the bid is decrypted (README,
        // "Mapping the sealed file").
        const PIECE: usize = 1 << 20;
        let mut file = tokio::fs::File::create(&tmp)
            .await
            .map_err(HallError::io("storing the upload"))?;
        let mut piece = Vec::with_capacity(PIECE);
        let mut size = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk
                .map_err(|e| HallError::Invalid(format!("the upload was interrupted: {e}")))?;
            size += chunk.len() as u64;
            if size > limit {
                return Err(HallError::TooLarge { size, limit });
            }
            let mut rest = &chunk[..];
            while !rest.is_empty() {
                let take = (PIECE - piece.len()).min(rest.len());
                piece.extend_from_slice(&rest[..take]);
                rest = &rest[take..];
                if piece.len() == PIECE {
                    file.write_all(&piece)
                        .await
                        .map_err(HallError::io("storing the upload"))?;
                    piece.clear();
                }
            }
            to_hasher
                .send(chunk)
                .await
                .map_err(|_| HallError::Internal("the upload's hasher stopped".into()))?;
        }
        drop(to_hasher);
        file.write_all(&piece)
            .await
            .map_err(HallError::io("storing the upload"))?;
        // Reports a failed last write (a full disk), which `sync_all` alone would not.
        file.flush()
            .await
            .map_err(HallError::io("storing the upload"))?;
        file.sync_all()
            .await
            .map_err(HallError::io("storing the upload"))?;
        hasher
            .await
            .map_err(|e| HallError::Internal(format!("hashing the upload: {e}")))
    }
    .await;
    let sm3 = match written {
        Ok(sm3) => sm3,
        Err(e) => {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(e.into());
        }
    };
    let received = hall.now();
    let receipt = hall
        .receive_bid(&opening_id, &uscc, tmp, &sm3, received)
        .await?;
    Ok(HttpResponse::Created().json(receipt))
}

#[derive(serde::Deserialize)]
struct Withdrawal {
    bid_id: String,
    /// SM2 signature (DER, base64) over `phone::withdrawal_message(bid_id)`.
    signature: String,
}

async fn withdraw(
    hall: web::Data<Hall>,
    path: web::Path<(String, String)>,
    body: web::Json<Withdrawal>,
) -> Result<HttpResponse> {
    let (opening_id, uscc) = path.into_inner();
    hall.withdraw_bid(&opening_id, &uscc, &body.bid_id, &body.signature)
        .await?;
    Ok(HttpResponse::Ok().json(json!({"status": "withdrawn", "bid_id": body.bid_id})))
}

async fn qr_svg(hall: web::Data<Hall>, path: web::Path<(String, String)>) -> Result<HttpResponse> {
    let (opening_id, bid_id) = path.into_inner();
    let bid = hall
        .db()
        .bid(&bid_id)
        .await?
        .filter(|b| b.opening_id == opening_id)
        .ok_or(HallError::NotFound("bid"))?;
    if bid.state != "awaiting_key" {
        return Err(HallError::WrongState(format!(
            "no QR code is needed: the bid is {}",
            bid.state
        ))
        .into());
    }
    let challenge = hall
        .db()
        .current_challenge(&bid.id)
        .await?
        .ok_or(HallError::NotFound("QR code"))?;
    let opening = hall.opening(&opening_id).await?;
    Ok(qr_response(&hall.qr_url(&opening, &challenge.nonce))?)
}

/// A QR code holding `text`, as SVG, never cached (the code changes as the opening goes on).
fn qr_response(text: &str) -> std::result::Result<HttpResponse, HallError> {
    let code = qrcode::QrCode::new(text.as_bytes())
        .map_err(|e| HallError::Internal(format!("QR encoding: {e}")))?;
    let svg = code
        .render::<qrcode::render::svg::Color>()
        .min_dimensions(240, 240)
        .quiet_zone(true)
        .build();
    Ok(HttpResponse::Ok()
        .content_type("image/svg+xml")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(svg))
}

async fn start_decryption(
    hall: web::Data<Hall>,
    _agent: Agent,
    id: web::Path<String>,
) -> Result<HttpResponse> {
    hall.start_decryption(&id).await?;
    Ok(HttpResponse::Ok().json(json!({"state": "decrypting"})))
}

async fn end_decryption(
    hall: web::Data<Hall>,
    _agent: Agent,
    id: web::Path<String>,
) -> Result<HttpResponse> {
    hall.end_decryption(&id).await?;
    Ok(HttpResponse::Ok().json(json!({"state": "decryption_ended"})))
}

#[derive(serde::Deserialize)]
struct Reason {
    reason: String,
}

/// The client's address: the peer's, or behind trusted reverse proxies the last address in
/// `X-Forwarded-For` that is not one of them (each proxy appends the address it was reached
/// from; what a client wrote before that is not to be believed). A hop that is not an address
/// ends the walk at the proxy that passed it on, and is handed to `bad_hop`.
/// Where a request comes from, as limits count it: its client's address, an IPv6 address by its
/// /64 (one client's). Found once per request, by the request's span (see
/// `span::ClientAddress`).
fn client_key(req: &HttpRequest, hall: &Hall) -> String {
    let client = req
        .extensions()
        .get::<super::span::ClientAddress>()
        .map(|c| c.0)
        .unwrap_or_else(|| client_address(req, &hall.settings().trusted_proxies, |_| {}));
    match client {
        Some(std::net::IpAddr::V6(ip)) => {
            let s = ip.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
        Some(ip) => ip.to_string(),
        None => String::new(),
    }
}

pub(super) fn client_address(
    req: &HttpRequest,
    trusted: &[crate::config::IpRange],
    bad_hop: impl FnOnce(&str),
) -> Option<std::net::IpAddr> {
    let is_trusted = |ip: &std::net::IpAddr| trusted.iter().any(|r| r.contains(ip));
    let mut client = req.peer_addr()?.ip().to_canonical();
    if !is_trusted(&client) {
        return Some(client);
    }
    let hops: Vec<&str> = req
        .headers()
        .get_all("x-forwarded-for")
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect();
    for hop in hops.iter().rev() {
        // An address, or one with a port as some proxies write it (`1.2.3.4:5`, `[::1]:5`).
        let hop = hop.trim();
        let parsed = hop
            .parse::<std::net::IpAddr>()
            .or_else(|_| hop.parse::<std::net::SocketAddr>().map(|a| a.ip()))
            .or_else(|_| {
                hop.trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<std::net::IpAddr>()
            });
        let Ok(ip) = parsed else {
            bad_hop(hop);
            break;
        };
        client = ip.to_canonical();
        if !is_trusted(&client) {
            break;
        }
    }
    Some(client)
}

async fn fail_opening(
    hall: web::Data<Hall>,
    _agent: Agent,
    id: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse> {
    hall.fail_opening(&id, &json_body::<Reason>(&body)?.reason)
        .await?;
    Ok(HttpResponse::Ok().json(json!({"state": "failed"})))
}

/// The agent gives up on a bid whose decryption keeps failing through the platform.
async fn abandon_decryption(
    hall: web::Data<Hall>,
    _agent: Agent,
    path: web::Path<(String, String)>,
    body: web::Bytes,
) -> Result<HttpResponse> {
    let (opening_id, bid_id) = path.into_inner();
    hall.abandon_decryption(&opening_id, &bid_id, &json_body::<Reason>(&body)?.reason)
        .await?;
    Ok(HttpResponse::Ok().json(json!({"state": "failed", "fault": "platform"})))
}

async fn release(
    hall: web::Data<Hall>,
    _agent: Agent,
    id: web::Path<String>,
) -> Result<HttpResponse> {
    hall.release(&id).await?;
    Ok(HttpResponse::Ok().json(json!({"state": "released"})))
}

async fn close(
    hall: web::Data<Hall>,
    _agent: Agent,
    id: web::Path<String>,
) -> Result<HttpResponse> {
    hall.close(&id).await?;
    Ok(HttpResponse::Ok().json(json!({"state": "closed"})))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NewObjection {
    /// The unified social credit code of the bidder raising it, if a bidder does.
    #[serde(default)]
    bidder: Option<String>,
    text: String,
}

/// The agent records an objection (异议) raised during the opening.
async fn raise_objection(
    hall: web::Data<Hall>,
    _agent: Agent,
    id: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse> {
    let objection = json_body::<NewObjection>(&body)?;
    let n = hall
        .raise_objection(&id, objection.bidder.as_deref(), &objection.text)
        .await?;
    Ok(HttpResponse::Created().json(json!({"n": n})))
}

/// A bidder raises an objection itself, signed with its phone.
async fn raise_signed_objection(
    hall: web::Data<Hall>,
    id: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse> {
    let objection = json_body::<SignedObjection>(&body)?;
    let n = hall.raise_signed_objection(&id, &objection).await?;
    Ok(HttpResponse::Created().json(json!({"n": n})))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ObjectionAnswer {
    answer: String,
}

/// The agent records its answer to objection `n`.
async fn answer_objection(
    hall: web::Data<Hall>,
    _agent: Agent,
    path: web::Path<(String, String)>,
    body: web::Bytes,
) -> Result<HttpResponse> {
    let (opening_id, n) = path.into_inner();
    let n: i64 = n.parse().map_err(|_| {
        HallError::Invalid(format!(
            "{n:?} is not an objection's number: give the number the objection was recorded with"
        ))
    })?;
    hall.answer_objection(&opening_id, n, &json_body::<ObjectionAnswer>(&body)?.answer)
        .await?;
    Ok(HttpResponse::Ok().json(json!({"n": n, "answered": true})))
}

/// The opening record (开标记录), public once decryption has ended.
async fn record(hall: web::Data<Hall>, id: web::Path<String>) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(hall.record(&id).await?))
}

/// What a bidder's phone is shown when it scans the sign-in code (签到).
async fn sign_in_view(hall: web::Data<Hall>, id: web::Path<String>) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(hall.sign_in_view(&id).await?))
}

/// A bidder's phone signs in.
async fn sign_in(
    hall: web::Data<Hall>,
    id: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse> {
    let at = hall.sign_in(&id, &json_body::<SignIn>(&body)?).await?;
    Ok(HttpResponse::Ok().json(json!({"signed_in_ms": at})))
}

/// Certificates to add to a registered bidder, or renewed ones of its keys.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NewKeys {
    #[serde(default)]
    sign_keys: Vec<String>,
    #[serde(default)]
    enc_keys: Vec<String>,
}

/// The agent adds or renews a bidder's certificates.
async fn add_bidder_keys(
    hall: web::Data<Hall>,
    _agent: Agent,
    path: web::Path<(String, String)>,
    body: web::Bytes,
) -> Result<HttpResponse> {
    let (id, uscc) = path.into_inner();
    let keys = json_body::<NewKeys>(&body)?;
    Ok(HttpResponse::Ok().json(
        hall.add_bidder_keys(&id, &uscc, &keys.sign_keys, &keys.enc_keys)
            .await?,
    ))
}

/// A bidder's bind code (扫码绑定), for the agent to hand to the bidder.
async fn bind_code(
    hall: web::Data<Hall>,
    _agent: Agent,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse> {
    let (id, uscc) = path.into_inner();
    Ok(HttpResponse::Ok().json(hall.bind_code(&id, &uscc).await?))
}

/// What a phone is shown when it scans a bind code.
async fn bind_view(hall: web::Data<Hall>, code: web::Path<String>) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(hall.bind_view(&code).await?))
}

/// A phone binds its certificates to the bidder.
async fn bind(
    hall: web::Data<Hall>,
    code: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse> {
    let bind = json_body::<crate::phone::Bind>(&body)?;
    Ok(HttpResponse::Ok().json(hall.bind(&code, &bind).await?))
}

/// The QR code of a bind code, while it can be used (to print or show to the bidder).
async fn bind_qr_svg(hall: web::Data<Hall>, code: web::Path<String>) -> Result<HttpResponse> {
    let view = hall.bind_view(&code).await?;
    Ok(qr_response(&view.answer_url)?)
}

/// A new login code for a bidder's browser (扫码登录).
async fn new_bidder_login(hall: web::Data<Hall>, id: web::Path<String>) -> Result<HttpResponse> {
    Ok(HttpResponse::Created().json(hall.new_bidder_login(&id).await?))
}

/// The QR code of a login code, while it can be signed.
async fn bidder_login_qr_svg(
    hall: web::Data<Hall>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse> {
    let (id, nonce) = path.into_inner();
    let view = hall.login_view(&nonce).await?;
    if view.opening_id != id {
        return Err(HallError::NotFound("login code").into());
    }
    Ok(qr_response(&view.answer_url)?)
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SessionAsk {
    secret: String,
}

/// The browser that asked for a login code takes its session once the phone signed it (202
/// until then).
async fn take_bidder_session(
    hall: web::Data<Hall>,
    nonce: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse> {
    let ask = json_body::<SessionAsk>(&body)?;
    Ok(match hall.take_bidder_session(&nonce, &ask.secret).await? {
        Some(session) => HttpResponse::Ok().json(session),
        None => HttpResponse::Accepted().json(json!({"state": "waiting for the phone"})),
    })
}

/// What the phone is shown when it scans a login code.
async fn login_view(hall: web::Data<Hall>, nonce: web::Path<String>) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(hall.login_view(&nonce).await?))
}

/// A bidder's phone signs a login code.
async fn bidder_login(
    hall: web::Data<Hall>,
    nonce: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse> {
    hall.bidder_login(&nonce, &json_body::<crate::phone::Login>(&body)?)
        .await?;
    Ok(HttpResponse::Ok().json(json!({"logged_in": true})))
}

/// A logged-in bidder ends its session.
async fn end_bidder_session(hall: web::Data<Hall>, bidder: LoggedInBidder) -> Result<HttpResponse> {
    hall.end_bidder_session(&bidder.token).await?;
    Ok(HttpResponse::Ok().json(json!({"logged_out": true})))
}

/// A logged-in bidder's own view of the opening.
async fn bidder_view(hall: web::Data<Hall>, bidder: LoggedInBidder) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(hall.bidder_view(&bidder.bidder).await?))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct OwnObjection {
    text: String,
}

/// A logged-in bidder raises an objection in its own name.
async fn raise_own_objection(
    hall: web::Data<Hall>,
    bidder: LoggedInBidder,
    body: web::Bytes,
) -> Result<HttpResponse> {
    let objection = json_body::<OwnObjection>(&body)?;
    let n = hall
        .raise_own_objection(&bidder.bidder, &objection.text)
        .await?;
    Ok(HttpResponse::Created().json(json!({"n": n})))
}

/// The sign-in QR code the hall display shows while sign-in is open.
async fn sign_in_qr_svg(hall: web::Data<Hall>, id: web::Path<String>) -> Result<HttpResponse> {
    let view = hall.sign_in_view(&id).await?;
    Ok(qr_response(&view.answer_url)?)
}

/// The agent issues the record for the bidders to confirm by scan-signing.
async fn issue_record(
    hall: web::Data<Hall>,
    _agent: Agent,
    id: web::Path<String>,
) -> Result<HttpResponse> {
    let (version, digest) = hall.issue_record(&id).await?;
    Ok(HttpResponse::Created().json(json!({"version": version, "digest": digest})))
}

/// The latest issued record: version, digest and the bidders who confirmed it.
async fn issued_record(hall: web::Data<Hall>, id: web::Path<String>) -> Result<HttpResponse> {
    hall.opening(&id).await?;
    let issued = hall.issued_record(&id).await?.ok_or(HallError::NotFound(
        "issued record (the agent issues it once decryption has ended)",
    ))?;
    Ok(HttpResponse::Ok().json(issued))
}

/// A record version's number from the path.
fn version(text: &str) -> std::result::Result<i64, HallError> {
    text.parse().map_err(|_| {
        HallError::Invalid(format!(
            "{text:?} is not a version of the record: give the number the hall shows"
        ))
    })
}

/// The issued record exactly as issued: its SM3 is the digest the bidders sign.
async fn issued_record_text(
    hall: web::Data<Hall>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse> {
    let (id, v) = path.into_inner();
    let text = hall.issued_record_text(&id, version(&v)?).await?;
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .body(text))
}

/// The QR code the hall display shows for the bidders to confirm the record.
async fn record_qr_svg(
    hall: web::Data<Hall>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse> {
    let (id, v) = path.into_inner();
    let view = hall.record_view(&id, version(&v)?).await?;
    Ok(qr_response(&view.answer_url)?)
}

async fn record_view(
    hall: web::Data<Hall>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse> {
    let (id, v) = path.into_inner();
    Ok(HttpResponse::Ok().json(hall.record_view(&id, version(&v)?).await?))
}

/// A bidder's phone confirms the record (扫码签章).
async fn confirm_record(
    hall: web::Data<Hall>,
    path: web::Path<(String, String)>,
    body: web::Bytes,
) -> Result<HttpResponse> {
    let (id, v) = path.into_inner();
    let confirmation = json_body::<RecordConfirmation>(&body)?;
    hall.confirm_record(&id, version(&v)?, &confirmation)
        .await?;
    Ok(HttpResponse::Ok().json(json!({"confirmed": true})))
}

async fn evaluator_token(
    hall: web::Data<Hall>,
    _agent: Agent,
    id: web::Path<String>,
) -> Result<HttpResponse> {
    let token = hall.issue_evaluator_token(&id).await?;
    Ok(HttpResponse::Created().json(json!({"token": token})))
}

async fn challenge(hall: web::Data<Hall>, nonce: web::Path<String>) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(hall.challenge_view(&nonce).await?))
}

async fn answer(
    hall: web::Data<Hall>,
    nonce: web::Path<String>,
    body: web::Json<Answer>,
) -> Result<HttpResponse> {
    let summary = hall.answer(&nonce, &body).await?;
    Ok(HttpResponse::Ok().json(json!({"status": "accepted", "summary": summary})))
}

async fn eval_bids(hall: web::Data<Hall>, evaluator: Evaluator) -> Result<HttpResponse> {
    let opening = hall.opening(&evaluator.opening_id).await?;
    let released = matches!(opening.state.as_str(), "released" | "closed");
    let bidders = hall.db().bidders(&opening.id).await?;
    let mut list = Vec::new();
    for bid in hall.db().bids(&opening.id).await? {
        let bidder = bidders.iter().find(|b| b.id == bid.bidder_id);
        let summary: Option<serde_json::Value> = bid
            .summary
            .as_deref()
            .and_then(|s| serde_json::from_str(s).ok());
        list.push(json!({
            "id": bid.id, "bidder_code": bidder.map(|b| &b.uscc), "bidder_name": bidder.map(|b| &b.name),
            "state": bid.state, "sealed_size": bid.size, "sealed_sm3": bid.sm3, "plaintext_len": bid.plaintext_len,
            "plain_sm3": bid.plain_sm3, "summary": summary, "failure": bid.failure, "fault": bid.fault,
            "proof": hall.bid_proof(&bid).await?,
            "file_key": hall.released_file_key(&bid).await?,
            "download": (released && bid.state == "decrypted").then(|| format!("/api/eval/bids/{}/file", bid.id)),
        }));
    }
    // The log's head as the evaluators may see it, signed: the evaluation system keeps, with the
    // files, what the opening's record held when it received them.
    let head = hall.signed_head(&opening.id, Role::Evaluator).await?;
    // And the opening record as issued to the bidders, with who confirmed it, if it was.
    let record = hall.issued_record(&opening.id).await?;
    Ok(HttpResponse::Ok().json(json!({"opening_id": opening.id, "state": opening.state, "released": released, "log_head": head, "record": record, "bids": list})))
}

async fn eval_file(
    hall: web::Data<Hall>,
    evaluator: Evaluator,
    req: HttpRequest,
    bid: web::Path<String>,
) -> Result<HttpResponse> {
    let (path, sm3) = hall.released_file(&evaluator.opening_id, &bid).await?;
    let file = actix_files::NamedFile::open_async(&path)
        .await
        .map_err(HallError::io("opening a decrypted bid"))?
        .set_content_type("application/x-tar".parse().expect("valid mime"))
        .set_content_disposition(header::ContentDisposition::attachment(format!("{bid}.tar")));
    let mut res = file.into_response(&req);
    res.headers_mut().insert(
        header::HeaderName::from_static("x-kaibiao-sm3"),
        header::HeaderValue::from_str(&sm3).expect("hex is a valid header"),
    );
    Ok(res)
}

async fn eval_sealed(
    hall: web::Data<Hall>,
    evaluator: Evaluator,
    req: HttpRequest,
    bid: web::Path<String>,
) -> Result<HttpResponse> {
    let row = hall
        .db()
        .bid(&bid)
        .await?
        .filter(|b| b.opening_id == evaluator.opening_id)
        .ok_or(HallError::NotFound("bid"))?;
    let file = actix_files::NamedFile::open_async(&row.path)
        .await
        .map_err(HallError::io("opening a sealed bid"))?
        .set_content_type("application/octet-stream".parse().expect("valid mime"));
    let mut res = file.into_response(&req);
    res.headers_mut().insert(
        header::HeaderName::from_static("x-kaibiao-sm3"),
        header::HeaderValue::from_str(&row.sm3).expect("hex is a valid header"),
    );
    Ok(res)
}
