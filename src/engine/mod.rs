//! Parallel sealing and unsealing of bids.
//!
//! Work is split by chunk over the current Rayon pool (wrap a call in `pool.install` to choose the
//! pool and its size). Where chunks are hashed (sealing, checking, unsealing with digests), up to
//! 16 chunks of one length go through a worker together, so that SM3 runs on all of them at once
//! ([`crate::crypto::Sm3Lanes`]). Chunks are read with positional I/O, 64 KiB of each at a time,
//! into a buffer owned by the worker: about `threads × 1 MiB` whatever the size of the bid.
//! Decrypted chunks are written directly to the device where it allows (`O_DIRECT`, by writer
//! threads, with two chunk-sized buffers per thread) and otherwise by the worker, 64 KiB at a
//! time (see [`PlainOutput`]).
//! Output is written to a temporary file beside the destination and published only when every
//! chunk has passed: a failure never leaves partial plaintext behind.

mod durable;
mod open;
mod output;
mod pack;
mod seal;

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::crypto::{FileKey, GcmStream, Sm3Lanes, TAG_LEN};
use crate::format::Header;

pub use durable::{parent_of, persist, sync_dir, sync_tree};
pub use open::{DecryptOptions, SealedBid, accept_file_key, open_summary};
pub(crate) use output::{ALIGN, AlignedBuf, open_unbuffered};
pub use output::{PlainOutput, Writers};
pub use pack::{pack_dir, unpack_archive};
pub use seal::{SealParams, SealReport, seal_dir, seal_file};

/// Bytes of a chunk read, processed and written at a time: a whole number of SM4 and SM3 blocks,
/// small enough that the pieces of 16 chunks stay in the L2 cache between read, cipher and write.
const PIECE: usize = 64 * 1024;

/// Bytes of a chunk read, decrypted and written at a time when unsealing: a quarter of a Zen 4/5
/// core's 1 MiB L2 cache, so a piece is still there when it is written, and a quarter of the
/// read and write calls of [`PIECE`]. Measured on a 2-core Zen 5 (`KAIBIAO_BENCH_MIB=512 cargo
/// bench --bench seal -- unseal-no-digest`, twice each): to tmpfs with 2 threads 1.84 GiB/s
/// against 1.51-1.71 with 64 KiB pieces, the other cases equal or a few per cent better.
const CIPHER_PIECE: usize = 256 * 1024;

/// Room for one piece of each of 16 chunks, the last with its tag.
const LANE: usize = PIECE + TAG_LEN;

/// A worker's buffer: one piece for each of up to `lanes` chunks.
fn lane_buffer(lanes: usize) -> Vec<u8> {
    vec![0u8; lanes * LANE]
}

/// The SM4-GCM stream of chunk `index` of a bid (its nonce and the header hash as AAD).
fn chunk_stream<'k>(
    key: &'k FileKey,
    header: &Header,
    header_hash: &[u8; 32],
    index: u64,
) -> GcmStream<'k> {
    let nonce = crate::format::chunk_nonce(&header.nonce_prefix, index, header.chunk_count());
    key.body_cipher().stream(&nonce, header_hash)
}

/// Splits the chunks `range` into groups that hash together: at most 16 chunks each, all of one
/// length (the last chunk of a bid, usually shorter, goes alone), and no bigger than needed to
/// give every thread of the pool a group.
fn lane_groups(header: &Header, range: Range<u64>) -> Vec<Range<u64>> {
    let count = header.chunk_count();
    let range = range.start.min(count)..range.end.min(count);
    let last = count - 1;
    let full_end = range.end.min(last).max(range.start);
    let full = full_end - range.start;
    let threads = rayon::current_num_threads() as u64;
    let size = full.div_ceil(threads).clamp(1, Sm3Lanes::LANES as u64);
    let mut groups: Vec<Range<u64>> = (range.start..full_end)
        .step_by(size as usize)
        .map(|start| start..(start + size).min(full_end))
        .collect();
    if range.contains(&last) {
        groups.push(last..count);
    }
    groups
}

/// The `lane`-th piece of `n` bytes in a [`lane_buffer`].
fn lane_piece(buf: &mut [u8], lane: usize, n: usize) -> &mut [u8] {
    &mut buf[lane * LANE..lane * LANE + n]
}

/// The first `n` bytes of each of the first `lanes` pieces of a [`lane_buffer`].
fn lane_pieces(buf: &[u8], lanes: usize, n: usize) -> Vec<&[u8]> {
    (0..lanes).map(|l| &buf[l * LANE..l * LANE + n]).collect()
}

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
