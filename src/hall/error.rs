//! What can go wrong in the hall, in words the person at the other end can act on.

use crate::db::DbError;
use crate::format::BidError;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HallError {
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("sign in first (or send a valid API token)")]
    Unauthorized,
    #[error("wrong user name or password")]
    BadLogin,
    #[error(
        "too many wrong passwords for this agent: try again in {retry_secs} s (signed-in \
         sessions and API tokens still work)"
    )]
    TooManyAttempts { retry_secs: u64 },
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    WrongState(String),
    #[error(
        "the bid deadline passed at {0}; no upload, replacement or withdrawal is accepted after it"
    )]
    AfterDeadline(String),
    #[error("decryption cannot start before the opening time, {0}")]
    BeforeOpening(String),
    #[error("the bid is {size} bytes, more than the limit of {limit} bytes")]
    TooLarge { size: u64, limit: u64 },
    #[error("the bid was refused: {0}")]
    BidRejected(#[from] BidError),
    #[error("this QR code is unknown; scan the code shown on the hall display now")]
    ChallengeUnknown,
    #[error("this QR code has expired; a new one is shown on the hall display, scan it")]
    ChallengeExpired,
    #[error("this QR code was already used; a second answer is refused")]
    ChallengeUsed,
    #[error(
        "the decryption key does not belong to this bid (非正确的加密证书): use the encryption certificate the bid was sealed with"
    )]
    WrongCertificate,
    #[error(
        "the signature is not valid, or not made by a certificate registered for this bidder: sign with the bidder's registered signing certificate, or ask the tender agent to register the one you use"
    )]
    BadAnswerSignature,
    /// A certificate not issued by a CA the platform trusts, or not valid now.
    #[error("{0}")]
    Untrusted(#[from] crate::crypto::TrustError),
    #[error("the decryption window is closed")]
    WindowClosed,
    #[error("this bid is already decrypted or being decrypted")]
    AlreadyDecrypted,
    #[error("the decrypted files are not released yet; the agent releases them after the opening")]
    NotReleased,
    #[error("internal error: {0}")]
    Db(#[from] DbError),
    #[error("internal error: {context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("internal error: {0}")]
    Internal(String),
    /// Something the operator must mend before the server can start.
    #[error("{0}")]
    Setup(String),
}

impl From<crate::domain::record::RecordError> for HallError {
    /// Asked too early, the user is told when to ask; a log that cannot be folded is the
    /// platform's trouble.
    fn from(e: crate::domain::record::RecordError) -> Self {
        match e {
            crate::domain::record::RecordError::NotOver(_)
            | crate::domain::record::RecordError::StillDecrypting(_) => {
                Self::WrongState(e.to_string())
            }
            e => Self::Internal(e.to_string()),
        }
    }
}

impl HallError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| Self::Io { context, source }
    }

    /// A stable machine-readable code, shown to phones and on the hall display.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotFound(_) => "not_found",
            Self::Unauthorized => "unauthorized",
            Self::BadLogin => "bad_login",
            Self::TooManyAttempts { .. } => "too_many_attempts",
            Self::Invalid(_) => "invalid",
            Self::WrongState(_) => "wrong_state",
            Self::AfterDeadline(_) => "after_deadline",
            Self::BeforeOpening(_) => "before_opening",
            Self::TooLarge { .. } => "too_large",
            // Reading or writing a bid's file failed: the server's trouble, not the bid's.
            Self::BidRejected(BidError::Io { .. }) if self.disk_full() => "disk_full",
            Self::BidRejected(BidError::Io { .. }) => "internal",
            Self::BidRejected(_) => "bid_rejected",
            Self::ChallengeUnknown => "qr_unknown",
            Self::ChallengeExpired => "qr_expired",
            Self::ChallengeUsed => "qr_used",
            Self::WrongCertificate => "wrong_certificate",
            Self::BadAnswerSignature => "bad_signature",
            Self::Untrusted(_) => "untrusted_certificate",
            Self::WindowClosed => "window_closed",
            Self::AlreadyDecrypted => "already_decrypted",
            Self::NotReleased => "not_released",
            Self::Io { .. } if self.disk_full() => "disk_full",
            Self::Db(_) | Self::Io { .. } | Self::Internal(_) | Self::Setup(_) => "internal",
        }
    }

    /// A write refused because the server's disk (or the data's quota) is full: the user is
    /// told, since only the operator can mend it and the user must then try again.
    pub fn disk_full(&self) -> bool {
        let source = match self {
            Self::Io { source, .. } | Self::BidRejected(BidError::Io { source, .. }) => source,
            _ => return false,
        };
        matches!(
            source.kind(),
            std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
        )
    }

    /// What a user (a phone, the hall display, a browser) is told: the error itself, or for the
    /// server's own trouble what happened in general words and what to do, the detail being in
    /// the log.
    pub fn public_message(&self) -> String {
        if self.disk_full() {
            "the server's disk is full, so nothing was kept: ask the platform's operator to free \
             space, then try again"
                .into()
        } else if self.is_internal() {
            "something went wrong on the server; the operators have the details in the log".into()
        } else {
            self.to_string()
        }
    }

    /// True for errors whose detail belongs in the log, not in the answer.
    pub fn is_internal(&self) -> bool {
        self.code() == "internal"
    }
}
