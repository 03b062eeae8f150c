//! Parallel sealing and unsealing of bids.
//!
//! Work is split by chunk over the current Rayon pool (wrap a call in `pool.install` to choose the
//! pool and its size). Every chunk is read and written with positional I/O into a buffer owned by
//! the worker, so memory stays at about `threads × chunk_size` whatever the size of the bid.
//! Output is written to a temporary file beside the destination and published only when every
//! chunk has passed: a failure never leaves partial plaintext behind.

mod open;
mod pack;
mod seal;

use std::sync::atomic::{AtomicU64, Ordering};

pub use open::{DecryptOptions, SealedBid, accept_file_key, open_summary};
pub use pack::{pack_dir, unpack_archive};
pub use seal::{SealParams, SealReport, seal_dir, seal_file};

/// Receives progress as chunks complete, from many threads at once.
pub trait Progress: Sync {
    /// `bytes` more plaintext bytes were processed.
    fn advance(&self, bytes: u64);
}

/// Progress that nobody watches.
pub struct NoProgress;

impl Progress for NoProgress {
    fn advance(&self, _bytes: u64) {}
}

impl Progress for AtomicU64 {
    fn advance(&self, bytes: u64) {
        self.fetch_add(bytes, Ordering::Relaxed);
    }
}

impl<F: Fn(u64) + Sync> Progress for F {
    fn advance(&self, bytes: u64) {
        self(bytes)
    }
}
