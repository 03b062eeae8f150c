//! The pages: the hall display and the agent console (askama templates), and their assets,
//! embedded in the binary so nothing is loaded from a CDN.

use actix_web::http::header;
use actix_web::{HttpResponse, web};
use askama::Template;

use super::ApiError;
use crate::hall::{Hall, HallError};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/", web::get().to(index))
        .route("/console", web::get().to(console))
        .route("/hall/{id}", web::get().to(hall_page))
        .route("/hall/{id}/record", web::get().to(record_page))
        .route("/hall/{id}/bidder", web::get().to(bidder_page))
        .route("/static/{file}", web::get().to(asset));
}

#[derive(Template)]
#[template(path = "hall.html")]
struct HallPage {
    opening_id: String,
    tender_id: String,
    name: String,
}

#[derive(Template)]
#[template(path = "record.html")]
struct RecordPage {
    opening_id: String,
    tender_id: String,
    name: String,
}

#[derive(Template)]
#[template(path = "bidder.html")]
struct BidderPage {
    opening_id: String,
    tender_id: String,
    name: String,
}

#[derive(Template)]
#[template(path = "console.html")]
struct ConsolePage;

fn html(body: Result<String, askama::Error>) -> Result<HttpResponse, ApiError> {
    let body = body.map_err(|e| HallError::Internal(format!("rendering a page: {e}")))?;
    Ok(HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(body))
}

async fn index() -> HttpResponse {
    HttpResponse::Found()
        .insert_header((header::LOCATION, "/console"))
        .finish()
}

async fn console() -> Result<HttpResponse, ApiError> {
    html(ConsolePage.render())
}

/// A page of one opening, from its id, tender id and name.
async fn opening_page<T: Template>(
    hall: &Hall,
    id: &str,
    page: fn(String, String, String) -> T,
) -> Result<HttpResponse, ApiError> {
    let opening = hall.opening(id).await?;
    html(page(opening.id, opening.tender_id, opening.name).render())
}

async fn hall_page(hall: web::Data<Hall>, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    opening_page(&hall, &id, |opening_id, tender_id, name| HallPage {
        opening_id,
        tender_id,
        name,
    })
    .await
}

/// The opening record, printable: rendered by `record.js` from `/api/openings/{id}/record`.
async fn record_page(
    hall: web::Data<Hall>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    opening_page(&hall, &id, |opening_id, tender_id, name| RecordPage {
        opening_id,
        tender_id,
        name,
    })
    .await
}

/// A bidder's own page: scan login (扫码登录), then its bid and objections (`bidder.js`).
async fn bidder_page(
    hall: web::Data<Hall>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    opening_page(&hall, &id, |opening_id, tender_id, name| BidderPage {
        opening_id,
        tender_id,
        name,
    })
    .await
}

const ASSETS: &[(&str, &str, &str)] = &[
    (
        "hall.js",
        "text/javascript; charset=utf-8",
        include_str!("../../static/hall.js"),
    ),
    (
        "console.js",
        "text/javascript; charset=utf-8",
        include_str!("../../static/console.js"),
    ),
    (
        "record.js",
        "text/javascript; charset=utf-8",
        include_str!("../../static/record.js"),
    ),
    (
        "bidder.js",
        "text/javascript; charset=utf-8",
        include_str!("../../static/bidder.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("../../static/style.css"),
    ),
];

async fn asset(file: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let (_, mime, body) = ASSETS
        .iter()
        .find(|(name, _, _)| *name == file.as_str())
        .ok_or(HallError::NotFound("file"))?;
    Ok(HttpResponse::Ok()
        .content_type(*mime)
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(*body))
}
