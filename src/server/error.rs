//! The one place where library errors become HTTP answers.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};

use crate::hall::HallError;

/// A [`HallError`] as an HTTP answer: `{"error": code, "message": text}`. Internal details are
/// logged with the request id and replaced by a generic message.
#[derive(Debug)]
pub struct ApiError(pub HallError);

impl<E: Into<HallError>> From<E> for ApiError {
    fn from(e: E) -> Self {
        Self(e.into())
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.0, f)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match &self.0 {
            HallError::NotFound(_) | HallError::ChallengeUnknown => StatusCode::NOT_FOUND,
            HallError::Unauthorized | HallError::BadLogin => StatusCode::UNAUTHORIZED,
            HallError::TooManyAttempts { .. } => StatusCode::TOO_MANY_REQUESTS,
            HallError::NotReleased => StatusCode::FORBIDDEN,
            HallError::Invalid(_) | HallError::BidRejected(_) => StatusCode::UNPROCESSABLE_ENTITY,
            HallError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            HallError::ChallengeExpired => StatusCode::GONE,
            HallError::WrongCertificate | HallError::BadAnswerSignature => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            HallError::AfterDeadline(_)
            | HallError::BeforeOpening(_)
            | HallError::WrongState(_)
            | HallError::ChallengeUsed
            | HallError::WindowClosed
            | HallError::AlreadyDecrypted => StatusCode::CONFLICT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let message = if self.0.is_internal() {
            tracing::error!(error = ?self.0, "request failed");
            "something went wrong on the server; the operators have the details in the log"
                .to_owned()
        } else {
            self.0.to_string()
        };
        let mut answer = HttpResponse::build(self.status_code());
        if let HallError::TooManyAttempts { retry_secs } = &self.0 {
            answer.insert_header(("Retry-After", retry_secs.to_string()));
        }
        answer.json(serde_json::json!({"error": self.0.code(), "message": message}))
    }
}
