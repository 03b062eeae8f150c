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
            error if error.disk_full() => StatusCode::INSUFFICIENT_STORAGE,
            // A bid's file that could not be read or written: the server's trouble.
            error if error.is_internal() => StatusCode::INTERNAL_SERVER_ERROR,
            HallError::NotFound(_) | HallError::ChallengeUnknown => StatusCode::NOT_FOUND,
            HallError::Unauthorized | HallError::BadLogin => StatusCode::UNAUTHORIZED,
            HallError::TooManyAttempts { .. } => StatusCode::TOO_MANY_REQUESTS,
            HallError::NotReleased => StatusCode::FORBIDDEN,
            HallError::Invalid(_) | HallError::BidRejected(_) | HallError::Untrusted(_) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
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
        if self.0.is_internal() || self.0.disk_full() {
            tracing::error!(error = ?self.0, "request failed");
        }
        let message = self.0.public_message();
        let mut answer = HttpResponse::build(self.status_code());
        if let HallError::TooManyAttempts { retry_secs } = &self.0 {
            answer.insert_header(("Retry-After", retry_secs.to_string()));
        }
        answer.json(serde_json::json!({"error": self.0.code(), "message": message}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix_web::test]
    async fn a_full_disk_is_told_to_the_user_with_what_to_do() {
        let full = ApiError(HallError::io("storing the upload")(std::io::Error::from(
            std::io::ErrorKind::StorageFull,
        )));
        assert_eq!(full.status_code(), StatusCode::INSUFFICIENT_STORAGE);
        let body = actix_web::body::to_bytes(full.error_response().into_body())
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"], "disk_full");
        let message = body["message"].as_str().unwrap();
        assert!(
            message.contains("disk is full") && message.contains("free space, then try again"),
            "{message}"
        );

        let other = ApiError(HallError::io("storing the upload")(std::io::Error::from(
            std::io::ErrorKind::PermissionDenied,
        )));
        assert_eq!(other.status_code(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(other.0.code(), "internal");

        // The same from a bid's file, as decryption meets it: the server's, not the bid's.
        let decrypting = |kind| {
            ApiError(HallError::BidRejected(crate::format::BidError::Io {
                context: "writing plaintext chunk 3".into(),
                source: std::io::Error::from(kind),
            }))
        };
        let full = decrypting(std::io::ErrorKind::StorageFull);
        assert!(full.0.disk_full());
        assert_eq!(full.status_code(), StatusCode::INSUFFICIENT_STORAGE);
        let broken = decrypting(std::io::ErrorKind::Other);
        assert_eq!(broken.status_code(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!broken.0.public_message().contains("chunk 3"));
    }
}
