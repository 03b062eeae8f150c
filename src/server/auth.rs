//! Who is asking: an agent (session cookie or API token), an evaluator token, or anyone.

use std::future::Future;
use std::pin::Pin;

use actix_web::{FromRequest, HttpRequest, dev::Payload, web};

use super::ApiError;
use crate::hall::{Hall, HallError};

pub const SESSION_COOKIE: &str = "kaibiao_session";

fn bearer(req: &HttpRequest) -> Option<String> {
    req.headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_owned())
}

/// An authenticated agent (招标代理).
pub struct Agent {
    pub id: String,
}

impl FromRequest for Agent {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Self::Error>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let hall = req.app_data::<web::Data<Hall>>().cloned();
        let token = bearer(req)
            .filter(|t| t.starts_with("kb_"))
            .or_else(|| req.cookie(SESSION_COOKIE).map(|c| c.value().to_owned()));
        Box::pin(async move {
            let hall = hall.ok_or_else(|| HallError::Internal("no hall".into()))?;
            let token = token.ok_or(HallError::Unauthorized)?;
            Ok(Agent {
                id: hall.agent_for_token(&token).await?,
            })
        })
    }
}

/// An evaluator token scoped to one opening (`Authorization: Bearer ev_…` or `?token=`).
pub struct Evaluator {
    pub opening_id: String,
}

pub fn evaluator_token(req: &HttpRequest) -> Option<String> {
    bearer(req).filter(|t| t.starts_with("ev_")).or_else(|| {
        web::Query::<std::collections::HashMap<String, String>>::from_query(req.query_string())
            .ok()
            .and_then(|q| q.get("token").cloned())
            .filter(|t| t.starts_with("ev_"))
    })
}

impl FromRequest for Evaluator {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Self::Error>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let hall = req.app_data::<web::Data<Hall>>().cloned();
        let token = evaluator_token(req);
        Box::pin(async move {
            let hall = hall.ok_or_else(|| HallError::Internal("no hall".into()))?;
            let token = token.ok_or(HallError::Unauthorized)?;
            Ok(Evaluator {
                opening_id: hall.evaluator_opening(&token).await?,
            })
        })
    }
}

/// A bidder logged in by scanning (`Authorization: Bearer bs_…`), at the opening of the path's
/// `{id}`, and its session's token.
pub struct LoggedInBidder {
    pub bidder: crate::db::BidderRow,
    pub token: String,
}

impl FromRequest for LoggedInBidder {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Self::Error>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let hall = req.app_data::<web::Data<Hall>>().cloned();
        let token = bearer(req).filter(|t| t.starts_with("bs_"));
        let opening = req.match_info().get("id").map(str::to_owned);
        Box::pin(async move {
            let hall = hall.ok_or_else(|| HallError::Internal("no hall".into()))?;
            let (token, opening) = token.zip(opening).ok_or(HallError::Unauthorized)?;
            Ok(LoggedInBidder {
                bidder: hall.bidder_for_session(&token, &opening).await?,
                token,
            })
        })
    }
}

/// The role of a websocket or snapshot reader: agent, evaluator of this opening, or public.
pub async fn role_for(req: &HttpRequest, hall: &Hall, opening_id: &str) -> crate::hall::Role {
    use crate::hall::Role;
    let agent_token = bearer(req)
        .filter(|t| t.starts_with("kb_"))
        .or_else(|| req.cookie(SESSION_COOKIE).map(|c| c.value().to_owned()));
    if let Some(token) = agent_token
        && hall.agent_for_token(&token).await.is_ok()
    {
        return Role::Agent;
    }
    if let Some(token) = evaluator_token(req)
        && hall
            .evaluator_opening(&token)
            .await
            .is_ok_and(|o| o == opening_id)
    {
        return Role::Evaluator;
    }
    Role::Public
}
