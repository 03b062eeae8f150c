//! Where decrypted chunks go.
//!
//! On a file system backed by a device, the output is opened a second time with `O_DIRECT`: a
//! Rayon worker decrypts a whole chunk into an aligned buffer (in a huge page where the kernel
//! gives one, see [`AlignedBuf`]) from a small pool and hands it
//! to a writer thread, which writes its aligned part from the buffer straight to the device. The
//! plaintext does not pass through the page cache, so it costs no copy and no fresh page-cache
//! pages per byte, pushes no other file out of the cache, and the final `fsync` finds almost
//! nothing left to write; the workers never wait on the device unless every buffer is queued.
//! (On this project's test machine a buffered write then `fsync` ran at 382 MB/s, a direct write
//! at 1.4–1.7 GB/s.) The unaligned tail of the last chunk goes through the page cache.
//!
//! Where there is no device (tmpfs, ramfs), or the file system refuses `O_DIRECT`, or the caller
//! reads the file back at once, each worker writes its plaintext itself, 256 KiB at a time while
//! it is still in the CPU's cache.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{SyncSender, sync_channel};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;

use crate::format::{BidError, Header};

/// What `O_DIRECT` asks of buffer addresses, file offsets and lengths: a multiple of the device's
/// logical block size, which is at most 4 KiB on the devices Linux supports.
pub(crate) const ALIGN: usize = 4096;

/// Transparent huge pages (THP) on x86-64 Linux: 2 MiB.
const HUGE_PAGE: usize = 2 << 20;

/// A buffer whose usable part starts on an [`ALIGN`] boundary, or for one of a chunk's size (1 MiB
/// and up) on a 2 MiB boundary in a mapping that asks the kernel for transparent huge pages.
///
/// Why: `O_DIRECT` pins each page of the buffer and hands the device one segment per page. A
/// 1 MiB chunk in 4 KiB pages is 256 segments, more than this project's virtual disk takes in one
/// request (254), so it went as two requests; in one huge page it is one segment. Writing 1 MiB
/// at a time with `O_DIRECT` then took 0.039–0.055 s of CPU per GiB instead of 0.086–0.108, and
/// 0.36–0.41 s of wall-clock time instead of 0.53–0.61 (2026-11-24, the Zen 4 machine, three
/// alternating runs each; the measuring script is in issue 4's note of that day). Where the
/// kernel gives no huge page (THP off, memory fragmented) the buffer is plain 4 KiB pages, as
/// before. The mapping is `memmap2`'s, whose safe anonymous mappings keep this module free of
/// `unsafe` (an aligned allocation or `madvise` would need it).
pub(crate) struct AlignedBuf {
    map: memmap2::MmapMut,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    pub(crate) fn new(len: usize) -> Self {
        Self::try_new(len).expect("memory for a chunk buffer")
    }

    fn try_new(len: usize) -> std::io::Result<Self> {
        let align = if len >= HUGE_PAGE / 2 {
            HUGE_PAGE
        } else {
            ALIGN
        };
        // Room for a whole aligned run of huge pages wherever the kernel puts the mapping.
        let map = memmap2::MmapMut::map_anon(len.next_multiple_of(align) + align)?;
        if align == HUGE_PAGE {
            // Advice only: without it the buffer works the same in 4 KiB pages.
            let _ = map.advise(memmap2::Advice::HugePage);
        }
        let start = (align - map.as_ptr() as usize % align) % align;
        Ok(Self { map, start, len })
    }

    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.map[self.start..self.start + self.len]
    }

    fn as_slice(&self) -> &[u8] {
        &self.map[self.start..self.start + self.len]
    }
}

/// `path` opened for reading past the page cache (`O_DIRECT`), where it is on a device: a file
/// written past the cache (see [`PlainOutput`]) is then read back without filling the cache with
/// it, and without the kernel's copy into the reader's buffer. `None` where it is in memory or the
/// file system refuses; read it through the cache then.
pub(crate) fn open_unbuffered(path: &Path) -> Option<File> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .ok()?;
    (!in_memory(&file)).then_some(file)
}

/// Chunk buffers shared by the workers and the writer threads: at most `limit` exist at once,
/// of whatever sizes the outputs being written ask for (a bid's chunk size is its own).
struct Pool {
    state: Mutex<PoolState>,
    returned: Condvar,
    limit: usize,
}

struct PoolState {
    free: Vec<AlignedBuf>,
    /// Buffers in existence, free or in use.
    made: usize,
    /// Outputs using the pool: when the last one ends, the free buffers are given back to the
    /// system, so that a hall with nothing to decrypt holds no chunk buffer.
    outputs: usize,
}

impl Pool {
    fn new(limit: usize) -> Self {
        Self {
            state: Mutex::new(PoolState {
                free: Vec::new(),
                made: 0,
                outputs: 0,
            }),
            returned: Condvar::new(),
            limit: limit.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A buffer of `len` bytes; waits while `limit` buffers are in use.
    fn take(self: &Arc<Self>, len: usize) -> ChunkBuf {
        let mut state = self.lock();
        loop {
            if let Some(at) = state.free.iter().position(|b| b.len == len) {
                let buf = state.free.swap_remove(at);
                return ChunkBuf::new(buf, self);
            }
            if state.made == self.limit && state.free.pop().is_some() {
                // Only buffers of other sizes are free: one of them makes room for this size.
                state.made -= 1;
            }
            if state.made < self.limit {
                state.made += 1;
                drop(state);
                match AlignedBuf::try_new(len) {
                    Ok(buf) => return ChunkBuf::new(buf, self),
                    Err(error) => {
                        // The slot goes back before the worker fails, for the others.
                        self.lock().made -= 1;
                        self.returned.notify_one();
                        panic!("no memory for a chunk buffer: {error}");
                    }
                }
            }
            state = self
                .returned
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    fn give(&self, buf: AlignedBuf) {
        let mut state = self.lock();
        if state.outputs == 0 {
            state.made -= 1; // the last output has ended: the buffer goes back to the system
        } else {
            state.free.push(buf);
        }
        self.returned.notify_one();
    }

    fn output_started(&self) {
        self.lock().outputs += 1;
    }

    fn output_ended(&self) {
        let mut state = self.lock();
        state.outputs -= 1;
        if state.outputs == 0 {
            let freed = std::mem::take(&mut state.free);
            state.made -= freed.len();
        }
    }

    #[cfg(test)]
    fn made(&self) -> usize {
        self.lock().made
    }
}

/// A chunk-sized buffer from the pool; it goes back when dropped, whoever drops it.
pub(super) struct ChunkBuf {
    buf: Option<AlignedBuf>,
    pool: Arc<Pool>,
}

impl ChunkBuf {
    fn new(buf: AlignedBuf, pool: &Arc<Pool>) -> Self {
        Self {
            buf: Some(buf),
            pool: pool.clone(),
        }
    }

    pub(super) fn as_mut(&mut self) -> &mut [u8] {
        self.buf
            .as_mut()
            .expect("present until dropped")
            .as_mut_slice()
    }

    fn as_slice(&self) -> &[u8] {
        self.buf.as_ref().expect("present until dropped").as_slice()
    }
}

impl Drop for ChunkBuf {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            self.pool.give(buf);
        }
    }
}

/// A decrypted chunk on its way to a writer thread: its bytes, how many of them, where they go and
/// into which file.
struct Write {
    target: Arc<Target>,
    buf: ChunkBuf,
    len: usize,
    offset: u64,
}

/// The output file of one decryption. Create it with [`super::SealedBid::output`], fill it with
/// [`super::SealedBid::decrypt_range`], then [`Self::finish`] it before flushing or reading the
/// file.
pub struct PlainOutput {
    file: File,
    direct: Option<DirectWriter>,
}

impl PlainOutput {
    /// The output for `file` (already sized). With `path` (the same file's name), chunks that
    /// start on 4 KiB boundaries and a file system on a device, chunks are written with
    /// `O_DIRECT` by the threads of `writers`, or of writers of its own if none is given (one
    /// thread per Rayon thread, two chunk buffers per Rayon thread).
    pub(super) fn new(
        file: &File,
        path: Option<&Path>,
        header: &Header,
        writers: Option<&Writers>,
    ) -> Result<Self, BidError> {
        let own = file
            .try_clone()
            .map_err(BidError::io("opening the output file for writing"))?;
        let aligned = (header.chunk_size as usize).is_multiple_of(ALIGN);
        // A file system without O_DIRECT (some FUSE ones) refuses the open: write through the
        // page cache instead, which is always correct.
        let direct = match path {
            Some(path) if aligned && !in_memory(file) => OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_DIRECT)
                .open(path)
                .ok(),
            _ => None,
        };
        // Each buffer holds a chunk (or the whole plaintext, if smaller).
        let buf_len = (header.chunk_size as u64).min(header.plaintext_len.max(1)) as usize;
        let direct = match direct {
            Some(direct) => {
                let writers = match writers {
                    Some(writers) => writers.clone(),
                    None => {
                        let threads = rayon::current_num_threads();
                        Writers::new(threads, 2 * threads)?
                    }
                };
                Some(DirectWriter::new(writers, file, direct, buf_len)?)
            }
            None => None,
        };
        Ok(Self { file: own, direct })
    }

    /// Whether the plaintext bypasses the page cache.
    pub fn is_direct(&self) -> bool {
        self.direct.is_some()
    }

    /// The writer threads, where chunks are written with `O_DIRECT`.
    pub(super) fn direct(&self) -> Option<&DirectWriter> {
        self.direct.as_ref()
    }

    /// The file, for workers that write their plaintext themselves.
    pub(super) fn file(&self) -> &File {
        &self.file
    }

    /// Waits until every queued chunk is written. Returns the first write error, if any.
    pub fn finish(self) -> Result<(), BidError> {
        match self.direct {
            Some(direct) => direct.finish(),
            None => Ok(()),
        }
    }
}

/// Whether `file` lives in memory (tmpfs, ramfs), where `O_DIRECT` is accepted but only turns
/// into a copy made by the writer thread instead of the worker.
fn in_memory(file: &File) -> bool {
    /// `RAMFS_MAGIC` of linux/magic.h, which the `libc` crate does not export.
    const RAMFS_MAGIC: i64 = 0x8584_58f6;
    // The type of `f_type` and of the magic numbers differs between architectures.
    #[allow(clippy::unnecessary_cast)]
    rustix::fs::fstatfs(file).is_ok_and(|fs| {
        let kind = fs.f_type as i64;
        kind == libc::TMPFS_MAGIC as i64 || kind == RAMFS_MAGIC
    })
}

/// Writer threads and chunk buffers for `O_DIRECT` outputs, shared by every output given them:
/// a hall decrypting fifty bids at once has the threads and buffers of one, not fifty times
/// as many (each bid with a writer per pool thread and two buffers per pool thread was ~200 MiB
/// and 100 threads for 50 bids of 1 MiB chunks). Cloning shares them; the threads end when the
/// last clone and the last output are dropped.
#[derive(Clone)]
pub struct Writers {
    inner: Arc<WritersInner>,
}

struct WritersInner {
    pool: Arc<Pool>,
    sender: Option<SyncSender<Write>>,
    threads: Vec<JoinHandle<()>>,
}

impl Writers {
    /// Starts `threads` writer threads, with room for `buffers` chunks in flight (being filled by
    /// workers, queued, or being written); at least one more buffer than threads, so that a
    /// worker can fill one while every thread writes.
    pub fn new(threads: usize, buffers: usize) -> Result<Self, BidError> {
        let threads = threads.max(1);
        let buffers = buffers.max(threads + 1);
        let (sender, receiver) = sync_channel::<Write>(buffers);
        let receiver = Arc::new(Mutex::new(receiver));
        let mut handles = Vec::new();
        for _ in 0..threads {
            let receiver = receiver.clone();
            let thread = std::thread::Builder::new()
                .name("kaibiao-writer".into())
                .spawn(move || {
                    loop {
                        let next = receiver
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .recv();
                        let Ok(write) = next else { return };
                        let target = write.target.clone();
                        // After a failure, the rest of that output is drained unwritten, so that
                        // every buffer returns to the pool.
                        if !target.failure.failed() {
                            let data = &write.buf.as_slice()[..write.len];
                            if let Err(error) = target.write_chunk(data, write.offset) {
                                target.failure.set(error);
                            }
                        }
                        drop(write); // the buffer goes back before the output hears it is done
                        target.written();
                    }
                })
                .map_err(BidError::io("starting a writer thread"))?;
            handles.push(thread);
        }
        Ok(Self {
            inner: Arc::new(WritersInner {
                pool: Arc::new(Pool::new(buffers)),
                sender: Some(sender),
                threads: handles,
            }),
        })
    }
}

impl Drop for WritersInner {
    fn drop(&mut self) {
        self.sender = None; // the threads' queue ends, and they with it
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// One output file as the writer threads see it.
struct Target {
    /// The file, for the unaligned tail of a chunk and if the device refuses direct writes.
    buffered: File,
    /// The same file opened with `O_DIRECT`.
    direct: File,
    /// Cleared when the device refuses a direct write: the rest goes through the page cache.
    use_direct: AtomicBool,
    failure: Failure,
    /// Chunks queued or being written.
    pending: Mutex<usize>,
    idle: Condvar,
}

impl Target {
    /// Writes one chunk: its 4 KiB-aligned part through `direct`, the rest through the page
    /// cache.
    fn write_chunk(&self, data: &[u8], offset: u64) -> Result<(), BidError> {
        let mut done = 0;
        if self.use_direct.load(Ordering::Relaxed) {
            let head = data.len() / ALIGN * ALIGN;
            match self.direct.write_all_at(&data[..head], offset) {
                Ok(()) => done = head,
                Err(error) if error.raw_os_error() == Some(libc::EINVAL) => {
                    self.use_direct.store(false, Ordering::Relaxed)
                }
                Err(error) => return Err(BidError::io("writing the decrypted bid")(error)),
            }
        }
        self.buffered
            .write_all_at(&data[done..], offset + done as u64)
            .map_err(BidError::io("writing the decrypted bid"))
    }

    fn queued(&self) {
        *self.pending.lock().unwrap_or_else(PoisonError::into_inner) += 1;
    }

    fn written(&self) {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        *pending -= 1;
        if *pending == 0 {
            self.idle.notify_all();
        }
    }

    /// Returns once nothing of this output is queued or being written.
    fn wait_idle(&self) {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        while *pending > 0 {
            pending = self
                .idle
                .wait(pending)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// An `O_DIRECT` output: its file, and the writers and buffers it uses.
pub(super) struct DirectWriter {
    writers: Writers,
    target: Arc<Target>,
    /// Each buffer's length: a chunk, or the whole plaintext if smaller, rounded up to [`ALIGN`].
    buf_len: usize,
}

/// The first write error, kept for whoever asks first; `failed` stays set after it is taken.
#[derive(Default)]
struct Failure {
    failed: AtomicBool,
    error: Mutex<Option<BidError>>,
}

impl Failure {
    fn set(&self, error: BidError) {
        let mut slot = self.error.lock().unwrap_or_else(PoisonError::into_inner);
        if !self.failed.swap(true, Ordering::SeqCst) {
            *slot = Some(error);
        }
    }

    fn failed(&self) -> bool {
        self.failed.load(Ordering::SeqCst)
    }

    /// The error, or a general one if it was already taken.
    fn take(&self) -> Option<BidError> {
        if !self.failed() {
            return None;
        }
        let error = self
            .error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        Some(error.unwrap_or_else(stopped))
    }
}

impl DirectWriter {
    /// An output writing `file` (already sized) through `direct` (the file opened with
    /// `O_DIRECT`), chunks of up to `buf_len` bytes at a time.
    fn new(writers: Writers, file: &File, direct: File, buf_len: usize) -> Result<Self, BidError> {
        let buffered = file
            .try_clone()
            .map_err(BidError::io("opening the output file for writing"))?;
        writers.inner.pool.output_started();
        Ok(Self {
            writers,
            target: Arc::new(Target {
                buffered,
                direct,
                use_direct: AtomicBool::new(true),
                failure: Failure::default(),
                pending: Mutex::new(0),
                idle: Condvar::new(),
            }),
            buf_len: buf_len.next_multiple_of(ALIGN),
        })
    }

    /// A buffer for one chunk; waits while every buffer is in use.
    pub(super) fn buffer(&self) -> ChunkBuf {
        self.writers.inner.pool.take(self.buf_len)
    }

    /// Queues the first `len` bytes of `buf` for writing at `offset`. Fails, with the write's
    /// error, once a write has failed.
    pub(super) fn write(&self, buf: ChunkBuf, len: usize, offset: u64) -> Result<(), BidError> {
        if let Some(error) = self.target.failure.take() {
            return Err(error);
        }
        let sender = self
            .writers
            .inner
            .sender
            .as_ref()
            .expect("present until dropped");
        self.target.queued();
        let write = Write {
            target: self.target.clone(),
            buf,
            len,
            offset,
        };
        sender.send(write).map_err(|_| {
            self.target.written();
            stopped()
        })
    }

    /// Waits until every queued chunk is written. Returns the first write error, if any.
    fn finish(self) -> Result<(), BidError> {
        self.target.wait_idle();
        match self.target.failure.take() {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

impl Drop for DirectWriter {
    /// Waits for the writers, so that no write lands after the caller has discarded the file.
    fn drop(&mut self) {
        self.target.wait_idle();
        self.writers.inner.pool.output_ended();
    }
}

fn stopped() -> BidError {
    BidError::Io {
        context: "writing the decrypted bid".into(),
        source: std::io::Error::other("an earlier write failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> File {
        OpenOptions::new().write(true).open("/dev/full").unwrap()
    }

    fn output(writers: &Writers, file: &File, chunk: usize) -> DirectWriter {
        DirectWriter::new(writers.clone(), file, file.try_clone().unwrap(), chunk).unwrap()
    }

    #[test]
    fn a_failed_write_stops_the_writers_and_is_reported() {
        // Every write to /dev/full fails with "no space left on device".
        let writers = Writers::new(2, 3).unwrap();
        let writer = output(&writers, &full(), 8192);
        let mut first_error = None;
        for index in 0..20u64 {
            let mut buf = writer.buffer();
            buf.as_mut().fill(7);
            if let Err(error) = writer.write(buf, 8192, index * 8192) {
                first_error = Some(error);
                break;
            }
        }
        // Every buffer went back to the pool: the loop above never waited forever.
        let error = match first_error {
            Some(error) => error,
            None => writer.finish().unwrap_err(),
        };
        assert!(
            error.to_string().contains("writing the decrypted bid"),
            "{error}"
        );
    }

    #[test]
    fn outputs_sharing_the_writers_fail_alone() {
        let writers = Writers::new(2, 3).unwrap();
        let failing = output(&writers, &full(), 8192);
        let file = tempfile::tempfile().unwrap();
        let good = output(&writers, &file, 4096);
        let mut failed = false;
        for index in 0..16u64 {
            let mut buf = failing.buffer();
            buf.as_mut().fill(1);
            failed |= failing.write(buf, 8192, index * 8192).is_err();
            let mut buf = good.buffer();
            buf.as_mut().fill(index as u8);
            good.write(buf, 4096, index * 4096).unwrap();
        }
        assert!(failed || failing.finish().is_err());
        good.finish().unwrap();
        let mut written = vec![0u8; 16 * 4096];
        file.read_exact_at(&mut written, 0).unwrap();
        for (index, chunk) in written.chunks(4096).enumerate() {
            assert!(chunk.iter().all(|&b| b == index as u8), "chunk {index}");
        }
    }

    #[test]
    fn the_pool_holds_at_most_its_limit_of_any_sizes_and_frees_them_when_idle() {
        let writers = Writers::new(1, 2).unwrap();
        let pool = writers.inner.pool.clone();
        let file = tempfile::tempfile().unwrap();
        let small = output(&writers, &file, 4096);
        let large = output(&writers, &file, 3 * 4096);
        drop((small.buffer(), small.buffer()));
        assert_eq!(pool.made(), 2);
        // Both free buffers are of the other size: each take of the large size replaces one.
        let (a, b) = (large.buffer(), large.buffer());
        assert_eq!(
            (a.as_slice().len(), b.as_slice().len()),
            (3 * 4096, 3 * 4096)
        );
        assert_eq!(pool.made(), 2);
        drop((a, b));
        drop(small);
        assert_eq!(pool.made(), 2, "kept while an output is open");
        drop(large);
        assert_eq!(pool.made(), 0, "given back when the last output ends");
    }

    #[test]
    fn buffers_are_aligned_for_direct_io() {
        let writers = Writers::new(1, 2).unwrap();
        let writer = output(&writers, &full(), 5000);
        let mut buf = writer.buffer();
        assert_eq!(buf.as_mut().as_ptr() as usize % ALIGN, 0);
        assert_eq!(buf.as_mut().len(), 8192);
    }
}
