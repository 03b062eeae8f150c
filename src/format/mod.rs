//! The sealed-bid container `.kbid`: its specification, header codec and trailer.
//!
//! Architecture invariant: this module knows nothing of actix, sqlx or files on disk beyond
//! positional reads; it encodes and decodes bytes and checks them.

#[doc = include_str!("spec.md")]
pub mod spec {}

mod error;
mod header;

pub use error::BidError;
pub use header::{Header, Recipient, Signer, SignerKind};

/// The four bytes every sealed bid starts with.
pub const MAGIC: &[u8; 4] = b"KBID";
/// The four bytes the trailer starts with.
pub const TRAILER_MAGIC: &[u8; 4] = b"KSIG";
/// The format version this crate reads and writes.
pub const VERSION: u16 = 1;
/// Suite 1: SM2 key wrapping and signatures, SM4-GCM body, SM3 hashes.
pub const SUITE_SM2_SM4GCM_SM3: u16 = 1;
/// `"KBID" ‖ version ‖ header_len`.
pub const PREAMBLE_LEN: usize = 10;
/// The largest header a reader accepts.
pub const MAX_HEADER_LEN: u32 = 1024 * 1024;
pub const MIN_CHUNK_SIZE: u32 = 64;
pub const MAX_CHUNK_SIZE: u32 = 16 * 1024 * 1024;
pub const DEFAULT_CHUNK_SIZE: u32 = 1024 * 1024;
pub const MAX_RECIPIENTS: usize = 16;
/// Domain separation prefix of the signed message.
pub const SIGNATURE_CONTEXT: &[u8] = b"kaibiao bid signature v1";
/// Associated data of the sealed summary.
pub const SUMMARY_AAD: &[u8] = b"kaibiao v1 summary";

/// The 12-byte nonce of chunk `index` out of `count`.
pub fn chunk_nonce(prefix: &[u8; 7], index: u64, count: u64) -> [u8; 12] {
    let mut nonce = [0u8; 12];
    nonce[..7].copy_from_slice(prefix);
    // The header check bounds the chunk count by u32::MAX, so the index fits.
    nonce[7..11].copy_from_slice(&(index as u32).to_be_bytes());
    nonce[11] = u8::from(index + 1 == count);
    nonce
}

/// The message the bidder signs: context ‖ header hash ‖ chunk count ‖ chunk digests.
pub fn signed_message(header_hash: &[u8; 32], digests: &[[u8; 32]]) -> Vec<u8> {
    let mut message = Vec::with_capacity(SIGNATURE_CONTEXT.len() + 40 + 32 * digests.len());
    message.extend_from_slice(SIGNATURE_CONTEXT);
    message.extend_from_slice(header_hash);
    message.extend_from_slice(&(digests.len() as u64).to_be_bytes());
    for digest in digests {
        message.extend_from_slice(digest);
    }
    message
}

/// Encodes the trailer: `"KSIG" ‖ digests ‖ sig_len ‖ signature`.
pub fn encode_trailer(digests: &[[u8; 32]], signature: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(6 + 32 * digests.len() + signature.len());
    out.extend_from_slice(TRAILER_MAGIC);
    for digest in digests {
        out.extend_from_slice(digest);
    }
    out.extend_from_slice(&(signature.len() as u16).to_be_bytes());
    out.extend_from_slice(signature);
    out
}
