//! Every way a sealed bid can fail, each with its own variant.

use crate::crypto::KeyError;
use crate::domain::SummaryError;

/// A failed check or operation on a sealed bid. Each check has its own variant; where a chunk is
/// involved, its index (counting from 0) is named.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BidError {
    #[error("this is not a kaibiao sealed bid (.kbid): the file does not start with \"KBID\"")]
    BadMagic,
    #[error(
        "this sealed bid uses format version {0}, which this kaibiao does not read (it reads version 1); update kaibiao"
    )]
    UnsupportedVersion(u16),
    #[error(
        "this sealed bid uses algorithm suite {0}, which this kaibiao does not know (it knows suite 1, SM2-SM4GCM-SM3)"
    )]
    UnknownSuite(u16),
    #[error("the sealed bid's header is malformed: {0}")]
    MalformedHeader(String),
    #[error(
        "none of this bid's recipients is the given key (the bid was sealed to {recipients} other key(s)); use the encryption certificate the bid was sealed to (非正确的加密证书)"
    )]
    NoRecipient { recipients: usize },
    #[error(
        "the file key does not match the bid's key commitment: wrong key, or a forged wrapped key; nothing was decrypted"
    )]
    WrongKey,
    #[error(
        "the bidder's signature over the bid is not valid: the file was altered after sealing or was not signed by the embedded signer"
    )]
    BadSignature,
    #[error("the signer of the bid cannot be read: {0}")]
    Signer(KeyError),
    #[error(
        "chunk {index} failed its authentication tag: the bid body cannot be decrypted (damaged or forged data)"
    )]
    ChunkTag { index: u64 },
    #[error(
        "chunk {index} does not match the digest the bidder signed: the bid file is damaged at that chunk"
    )]
    ChunkDamaged { index: u64 },
    #[error(
        "chunk {index} holds the data of chunk {belongs_at}: chunks of the bid file were reordered"
    )]
    ChunkReordered { index: u64, belongs_at: u64 },
    #[error("chunk {index} is a copy of chunk {copy_of}: a chunk of the bid file was duplicated")]
    ChunkDuplicated { index: u64, copy_of: u64 },
    #[error("the bid file is truncated: it has {actual} bytes, at least {expected} are needed{}", missing_chunks.map(|k| format!(" ({k} chunk(s) missing)")).unwrap_or_default())]
    Truncated {
        expected: u64,
        actual: u64,
        missing_chunks: Option<u64>,
    },
    #[error(
        "the bid file was extended: {extra_chunks} chunk(s) were inserted after the last chunk"
    )]
    Extended { extra_chunks: u64 },
    #[error("the bid file has {count} unexpected byte(s) after its signature")]
    TrailingBytes { count: u64 },
    #[error("the bid file's length does not match its header: {0}")]
    LengthMismatch(String),
    #[error("the bid summary cannot be opened: {0}")]
    Summary(String),
    #[error("the bid summary is not acceptable: {0}")]
    SummaryContent(#[from] SummaryError),
    #[error("{0}")]
    Key(#[from] KeyError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl BidError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| Self::Io { context, source }
    }
}
