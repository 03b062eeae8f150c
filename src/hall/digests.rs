//! Plaintext digests: the SM3 of each decrypted bid, read back from where it was stored, which
//! evaluators check their download against.
//!
//! One worker hashes every file the hall asks for. SM3 is a chain within a file (~0.5 GB/s per
//! core with the `sm3` crate), so a hall with fifty decrypted bids would hash them one after
//! another, two at a time; with three or more files waiting they run instead in the sixteen
//! lanes of an [`Sm3Batch`] (AVX-512, ~3.2 GB/s per core for sixteen files), each file joining a
//! free lane when it comes and leaving when it ends. One or two files, where a lane costs as
//! much as sixteen, go on the `sm3` crate, one per pool thread.
//!
//! The work runs on the Rayon pool in short steps (16 MiB at most), each after every body being
//! decrypted is done (see [`Decrypting::idle`]): hashing costs several times the CPU of
//! decryption, and when many bids are answered at once every body is decrypted first.

use std::collections::VecDeque;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use sm3::Digest;
use tokio::sync::{mpsc, oneshot};

use super::{Decrypting, HallError, on_rayon};
use crate::crypto::{Sm3Batch, Sm3Lanes};
use crate::engine::{ALIGN, AlignedBuf};

/// Bytes of each file in the batch per lane and round; 16 lanes of it stay in the L2 cache.
const PIECE: usize = 64 * 1024;
/// Rounds of the batch per step: 1 MiB of each of up to 16 files.
const ROUNDS: usize = 16;
/// Bytes of a file hashed alone per step (~16 ms of SM3).
const ALONE_STEP: u64 = 8 << 20;

/// The hall's digest worker; dropping every handle ends it once its files are hashed.
pub(super) struct Digests {
    jobs: mpsc::UnboundedSender<Job>,
}

struct Job {
    path: PathBuf,
    done: oneshot::Sender<Result<String, HallError>>,
}

impl Digests {
    /// Starts the worker on the current Tokio runtime.
    pub(super) fn start(decrypting: Arc<Decrypting>) -> Self {
        Self::start_with(decrypting, Sm3Batch::new)
    }

    /// As [`Self::start`], with batches from `batch` (tests run both paths).
    fn start_with(decrypting: Arc<Decrypting>, batch: fn() -> Option<Sm3Batch>) -> Self {
        let (jobs, queue) = mpsc::unbounded_channel();
        tokio::spawn(run(queue, decrypting, batch));
        Self { jobs }
    }

    /// The SM3 of the file at `path`, in lower-case hex.
    pub(super) async fn of(&self, path: PathBuf) -> Result<String, HallError> {
        let (done, result) = oneshot::channel();
        self.jobs
            .send(Job { path, done })
            .map_err(|_| HallError::Internal("the digest worker has stopped".into()))?;
        result
            .await
            .map_err(|_| HallError::Internal("a digest computation panicked".into()))?
    }
}

async fn run(
    mut queue: mpsc::UnboundedReceiver<Job>,
    decrypting: Arc<Decrypting>,
    batch: fn() -> Option<Sm3Batch>,
) {
    let threads = rayon::current_num_threads();
    let mut waiting = VecDeque::new();
    let mut work = Work::new(batch());
    loop {
        if work.lanes.is_empty() && waiting.is_empty() {
            work.buf = None; // nothing to hash: the memory goes back
            match queue.recv().await {
                Some(job) => waiting.push_back(job),
                None => return,
            }
        }
        decrypting.idle().await;
        while let Ok(job) = queue.try_recv() {
            waiting.push_back(job);
        }
        work.assign(&mut waiting, threads);
        match on_rayon(move || {
            let finished = work.step();
            (work, finished)
        })
        .await
        {
            Ok((next, finished)) => {
                work = next;
                for (job, result) in finished {
                    let _ = job.done.send(result);
                }
            }
            // The files being hashed were dropped with the step: their callers hear of it.
            Err(_) => work = Work::new(batch()),
        }
    }
}

/// The files being hashed and the batch some of them share.
struct Work {
    batch: Option<Sm3Batch>,
    lanes: Vec<Lane>,
    /// The batch's step, kept from step to step: a buffer allocated afresh each time is fresh
    /// memory each time, and on this project's virtual machines first-touching fresh memory cost
    /// more than hashing it (`perf`: half the samples in the kernel's copy to user space).
    buf: Option<AlignedBuf>,
}

struct Lane {
    job: Job,
    /// Where a file hashed alone is read, kept from step to step (see [`Work::buf`]).
    buf: Option<AlignedBuf>,
    /// Opened at its first step (on the pool, not the executor): the file, its length, and
    /// whether it is read past the page cache.
    file: Option<(File, u64, bool)>,
    /// Bytes hashed.
    at: u64,
    hasher: Hasher,
    outcome: Option<Result<String, HallError>>,
}

enum Hasher {
    /// In the batch's lane.
    Batch(usize),
    Alone(sm3::Sm3),
}

impl Work {
    fn new(batch: Option<Sm3Batch>) -> Self {
        Self {
            batch,
            lanes: Vec::new(),
            buf: None,
        }
    }

    /// Takes waiting files in: into the batch when it would hold three or more, otherwise alone
    /// up to one per pool thread. A batch down to one or two files and none waiting hands them
    /// to the `sm3` crate.
    fn assign(&mut self, waiting: &mut VecDeque<Job>, threads: usize) {
        let in_batch = |lanes: &[Lane]| {
            lanes
                .iter()
                .filter(|l| matches!(l.hasher, Hasher::Batch(_)))
                .count()
        };
        if let Some(batch) = &mut self.batch {
            let batched = in_batch(&self.lanes);
            if batched + waiting.len() >= 3 {
                while !waiting.is_empty()
                    && let Some(lane) = batch.start()
                {
                    let job = waiting.pop_front().expect("not empty");
                    self.lanes.push(Lane::new(job, Hasher::Batch(lane)));
                }
            } else if waiting.is_empty() {
                for lane in &mut self.lanes {
                    if let Hasher::Batch(index) = lane.hasher {
                        lane.hasher = Hasher::Alone(batch.into_scalar(index));
                    }
                }
            }
        }
        let mut alone = self.lanes.len() - in_batch(&self.lanes);
        while alone < threads
            && let Some(job) = waiting.pop_front()
        {
            self.lanes
                .push(Lane::new(job, Hasher::Alone(sm3::Sm3::new())));
            alone += 1;
        }
    }

    /// One step of every file; returns the files that ended, with their digests.
    fn step(&mut self) -> Vec<(Job, Result<String, HallError>)> {
        for lane in &mut self.lanes {
            lane.open();
        }
        let (mut batched, alone): (Vec<&mut Lane>, Vec<&mut Lane>) = self
            .lanes
            .iter_mut()
            .filter(|l| l.outcome.is_none())
            .partition(|l| matches!(l.hasher, Hasher::Batch(_)));
        let (batch, buf) = (&mut self.batch, &mut self.buf);
        rayon::scope(|scope| {
            for lane in alone {
                scope.spawn(move |_| lane.hash_alone());
            }
            if let Some(batch) = batch {
                hash_batch(batch, &mut batched, buf);
            }
        });
        let (ended, going): (Vec<Lane>, Vec<Lane>) = std::mem::take(&mut self.lanes)
            .into_iter()
            .partition(|l| l.outcome.is_some());
        self.lanes = going;
        // A file that failed leaves its lane of the batch (one that ended well already has).
        for lane in &ended {
            if let (Some(batch), Hasher::Batch(index), Some(Err(_))) =
                (&mut self.batch, &lane.hasher, &lane.outcome)
            {
                batch.abandon(*index);
            }
        }
        ended
            .into_iter()
            .map(|l| (l.job, l.outcome.expect("ended")))
            .collect()
    }
}

impl Lane {
    fn new(job: Job, hasher: Hasher) -> Self {
        Self {
            job,
            buf: None,
            file: None,
            at: 0,
            hasher,
            outcome: None,
        }
    }

    fn open(&mut self) {
        if self.file.is_some() || self.outcome.is_some() {
            return;
        }
        // The plaintext was written past the page cache: read it back the same way where the
        // file system allows (no cache pages to fill, no copy out of them).
        let opened = match crate::engine::open_unbuffered(&self.job.path) {
            Some(file) => Ok((file, true)),
            None => File::open(&self.job.path).map(|file| (file, false)),
        }
        .and_then(|(file, direct)| Ok((file.metadata()?.len(), file, direct)));
        match opened {
            Ok((len, file, direct)) => self.file = Some((file, len, direct)),
            Err(error) => self.fail(error),
        }
    }

    fn fail(&mut self, error: std::io::Error) {
        self.outcome = Some(Err(HallError::io("reading a decrypted bid to hash it")(
            error,
        )));
    }

    /// Has the kernel read this step's `step` bytes and the next's from the device, so that the
    /// next step finds them in memory (the plaintext was written past the page cache). Advice
    /// only: its failure changes nothing. Once per step: each call looks up every page of its
    /// range, and advising at every read tied up a core in the kernel.
    fn read_ahead(&self, step: u64) {
        if let Some((file, _, false)) = &self.file {
            let range = std::num::NonZeroU64::new(2 * step);
            let _ = rustix::fs::fadvise(file, self.at, range, rustix::fs::Advice::WillNeed);
        }
    }

    /// Reads the next `buf.len()` bytes (fewer at the end of the file). `buf` starts on an
    /// [`ALIGN`] boundary and holds a multiple of it, as are the offsets: what a read past the
    /// page cache asks.
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, std::io::Error> {
        let (file, len, direct) = self.file.as_ref().expect("opened");
        let n = (len - self.at).min(buf.len() as u64) as usize;
        if *direct {
            match read_direct(file, &mut buf[..n.next_multiple_of(ALIGN)], n, self.at) {
                Err(error) if error.raw_os_error() == Some(libc::EINVAL) => {
                    // A file system that opened the file past the cache but will not read it
                    // so: through the cache, from here on.
                    let file = File::open(&self.job.path)?;
                    file.read_exact_at(&mut buf[..n], self.at)?;
                    self.file = Some((file, *len, false));
                }
                other => other?,
            }
        } else {
            file.read_exact_at(&mut buf[..n], self.at)?;
        }
        self.at += n as u64;
        Ok(n)
    }

    fn left(&self) -> u64 {
        self.file.as_ref().map_or(0, |(_, len, _)| len - self.at)
    }

    /// Up to [`ALONE_STEP`] bytes on the `sm3` crate.
    fn hash_alone(&mut self) {
        let mut buf = self.buf.take().unwrap_or_else(|| AlignedBuf::new(1 << 20));
        let end = self.at + ALONE_STEP;
        self.read_ahead(ALONE_STEP);
        while self.left() > 0 && self.at < end {
            match self.read(buf.as_mut_slice()) {
                Ok(n) => match &mut self.hasher {
                    Hasher::Alone(hasher) => hasher.update(&buf.as_mut_slice()[..n]),
                    Hasher::Batch(_) => unreachable!("hashed alone"),
                },
                Err(error) => return self.fail(error),
            }
        }
        self.buf = Some(buf);
        if self.left() == 0
            && let Hasher::Alone(hasher) = &mut self.hasher
        {
            self.outcome = Some(Ok(hex::encode(hasher.finalize_reset())));
        }
    }
}

/// Reads `n` bytes at `offset` (a multiple of [`ALIGN`]) past the page cache into `buf`, whole
/// blocks long: the read of the last block stops at the end of the file.
fn read_direct(file: &File, buf: &mut [u8], n: usize, offset: u64) -> std::io::Result<()> {
    let mut got = 0;
    while got < n {
        match file.read_at(&mut buf[got..], offset + got as u64)? {
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            read => got += read,
        }
    }
    Ok(())
}

/// One step of the batch: reads the next [`ROUNDS`] pieces of every file in it, the files in
/// parallel (one thread reading file after file, even with read-ahead advice, got a third of what
/// the device gives two), then absorbs them round by round; a file whose rest fits in the step
/// ends there.
fn hash_batch(batch: &mut Sm3Batch, lanes: &mut [&mut Lane], kept: &mut Option<AlignedBuf>) {
    use rayon::prelude::*;
    const STEP: usize = ROUNDS * PIECE;
    if kept
        .as_mut()
        .is_none_or(|b| b.as_mut_slice().len() < lanes.len() * STEP)
    {
        *kept = Some(AlignedBuf::new(Sm3Lanes::LANES * STEP));
    }
    let buf = kept.as_mut().expect("made above").as_mut_slice();
    // (bytes read, whether the file ends within them), or none for a file that failed.
    let read: Vec<Option<(usize, bool)>> = lanes
        .par_iter_mut()
        .zip(buf.par_chunks_mut(STEP))
        .map(|(lane, buf)| {
            lane.read_ahead(STEP as u64);
            let ends = lane.left() <= STEP as u64;
            match lane.read(buf) {
                Ok(n) => Some((n, ends)),
                Err(error) => {
                    lane.fail(error);
                    None
                }
            }
        })
        .collect();
    for round in 0..ROUNDS {
        let at = round * PIECE;
        let mut pieces = Vec::new();
        for ((lane, buf), read) in lanes.iter_mut().zip(buf.chunks(STEP)).zip(&read) {
            let (Some((n, ends)), Hasher::Batch(index), None) = (read, &lane.hasher, &lane.outcome)
            else {
                continue;
            };
            if *ends && at + PIECE >= *n {
                let last = &buf[at.min(*n)..*n];
                lane.outcome = Some(Ok(hex::encode(batch.finish(*index, last))));
            } else {
                pieces.push((*index, &buf[at..at + PIECE]));
            }
        }
        batch.update(&pieces);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On the disk (read past the page cache) and in memory, in the batch and on the crate alone.
    #[tokio::test]
    async fn many_files_of_any_length_are_hashed_at_once() {
        let mut dirs = vec![tempfile::tempdir().unwrap()];
        if std::path::Path::new("/dev/shm").is_dir() {
            dirs.push(tempfile::tempdir_in("/dev/shm").unwrap());
        }
        let paths: [fn() -> Option<Sm3Batch>; 2] = [Sm3Batch::new, || None];
        for dir in &dirs {
            for batch in paths {
                hash_many(dir.path(), Digests::start_with(Arc::default(), batch)).await;
            }
        }
    }

    async fn hash_many(dir: &std::path::Path, digests: Digests) {
        let digests = Arc::new(digests);
        // Lengths around the piece, block and step sizes, and empty; more files than lanes.
        let lengths = [
            0,
            1,
            63,
            64,
            4095,
            4097,
            PIECE - 1,
            PIECE,
            PIECE + 1,
            3 << 20,
        ]
        .into_iter()
        .chain([(9 << 20) + 17])
        .chain((0..14).map(|i| 100_000 * i + 4321));
        let mut tasks = Vec::new();
        for (i, len) in lengths.enumerate() {
            let data: Vec<u8> = (0..len).map(|j| (j * 7 + i * 13 + j / 251) as u8).collect();
            let path = dir.join(format!("{i}"));
            std::fs::write(&path, &data).unwrap();
            let digests = digests.clone();
            tasks.push(tokio::spawn(async move {
                (digests.of(path).await.unwrap(), sm3::Sm3::digest(&data))
            }));
        }
        let missing = digests.of(dir.join("missing")).await.unwrap_err();
        assert!(missing.to_string().contains("hash"), "{missing}");
        for task in tasks {
            let (got, expected) = task.await.unwrap();
            assert_eq!(got, hex::encode(expected));
        }
    }
}
