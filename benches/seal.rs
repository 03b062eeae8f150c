//! Seal, verify and unseal throughput, end to end through the file system, on 1 and 2 threads;
//! raw SM4-GCM and SM3 (one message, and sixteen at once) for comparison. The `-tmpfs` variants
//! write to /dev/shm (where it exists), which separates the CPU's work from the disk's. The
//! `ceiling` group decrypts the bid's size without writing it anywhere: the most that unsealing
//! from the page cache could reach on this machine. The `cpu-time` group measures unsealing and
//! raw SM4-GCM per second of the process's CPU time rather than of the wall clock.
//! `KAIBIAO_SM3=portable` runs the same benches on the `sm3` crate alone.

use std::hint::black_box;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kaibiao::crypto::{self, FileKey};
use kaibiao::domain::{BidSummary, Uscc};
use kaibiao::engine::{self, DecryptOptions, NoProgress, SealParams, SealedBid};

/// The bid's size in MiB: 32 unless `KAIBIAO_BENCH_MIB` says otherwise (a larger bid shows the
/// disk's sustained rate rather than its cache's).
fn size() -> usize {
    let mib = std::env::var("KAIBIAO_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32);
    mib * 1024 * 1024
}

fn bench(c: &mut Criterion) {
    let size = size();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("plain.bin");
    let data: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
    std::fs::write(&input, &data).unwrap();
    let sign = crypto::generate_secret_key();
    let enc = crypto::generate_secret_key();
    let signer = crypto::parse_public_der(
        &sm2::pkcs8::EncodePublicKey::to_public_key_der(&sign.public_key())
            .unwrap()
            .into_vec(),
        false,
    )
    .unwrap();
    let summary = BidSummary::from_toml(
        "bidder_name = \"b\"\nprice_fen = 1\nduration_days = 1\nquality = \"q\"",
    )
    .unwrap();
    let recipients = [enc.public_key()];
    let params = SealParams {
        tender_id: "BENCH",
        bidder: Uscc::parse("91350100M000100Y43").unwrap(),
        summary: &summary,
        recipients: &recipients,
        sign_key: &sign,
        signer: &signer,
        chunk_size: kaibiao::format::DEFAULT_CHUNK_SIZE,
        created_at: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64,
    };
    let sealed = dir.path().join("bid.kbid");
    engine::seal_file(&input, &sealed, &params, &NoProgress).unwrap();

    // Output to the disk (with its fsync) and, where it exists, to tmpfs, which separates the
    // CPU's work from the disk's. `KAIBIAO_BENCH_TMPFS` names another memory file system, e.g.
    // one mounted with `huge=always`, whose 2 MiB pages cost far less to fill than 4 KiB ones.
    let shm = std::path::PathBuf::from(
        std::env::var("KAIBIAO_BENCH_TMPFS").unwrap_or_else(|_| "/dev/shm".into()),
    );
    let mut targets = vec![("", dir.path().to_owned())];
    if shm.is_dir() {
        let tmp = shm.join(format!("kaibiao-bench-{}", std::process::id()));
        std::fs::create_dir_all(&tmp).unwrap();
        targets.push(("-tmpfs", tmp));
    }
    // A pool of `threads`, the sealed bid and its file key.
    let setup = |threads| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let bid = SealedBid::open(&sealed).unwrap();
        let key = bid.unwrap_file_key(&enc).unwrap();
        (pool, bid, key)
    };
    let mut group = c.benchmark_group("bid");
    group.sample_size(10);
    group.throughput(Throughput::Bytes(size as u64));
    for threads in [1, 2] {
        let (pool, bid, key) = setup(threads);
        group.bench_function(format!("verify/{threads}"), |b| {
            b.iter(|| pool.install(|| bid.verify_chunks(&NoProgress).unwrap()))
        });
        for (suffix, target) in &targets {
            let out = target.join("again.kbid");
            group.bench_function(format!("seal{suffix}/{threads}"), |b| {
                b.iter(|| {
                    pool.install(|| engine::seal_file(&input, &out, &params, &NoProgress).unwrap())
                })
            });
            let plain = target.join("plain.out");
            for (name, verify_digests) in [("unseal", true), ("unseal-no-digest", false)] {
                group.bench_function(format!("{name}{suffix}/{threads}"), |b| {
                    b.iter(|| {
                        pool.install(|| {
                            let options = DecryptOptions { verify_digests };
                            bid.decrypt_to(&key, &plain, options, &NoProgress).unwrap()
                        })
                    })
                });
            }
        }
    }
    group.finish();

    // The same unsealing per second of CPU time the process spent (every thread's, user and
    // kernel): bytes per core-second, what the "rate per core" asks. To the disk the
    // plaintext goes past the page cache (`O_DIRECT`), so the cores wait on the device rather
    // than work for it, and wall-clock time measures the device; CPU time measures the engine.
    // Caveat: the block layer's completion interrupts are charged to whichever task they
    // interrupt, which may or may not be this process.
    let mut group = c.benchmark_group("cpu-time");
    group.sample_size(10);
    group.throughput(Throughput::Bytes(size as u64));
    for threads in [1, 2] {
        let (pool, bid, key) = setup(threads);
        for (suffix, target) in &targets {
            let plain = target.join("plain.out");
            group.bench_function(format!("unseal-no-digest{suffix}/{threads}"), |b| {
                b.iter_custom(|iters| {
                    cpu_time(|| {
                        for _ in 0..iters {
                            pool.install(|| {
                                let options = DecryptOptions {
                                    verify_digests: false,
                                };
                                bid.decrypt_to(&key, &plain, options, &NoProgress).unwrap();
                            })
                        }
                    })
                })
            });
        }
    }
    group.finish();
    if let Some((_, tmp)) = targets.get(1) {
        let _ = std::fs::remove_dir_all(tmp);
    }

    let mut group = c.benchmark_group("primitive");
    let mut chunk = vec![0u8; 1024 * 1024];
    group.throughput(Throughput::Bytes(chunk.len() as u64));
    let key = FileKey::derive([7; 16], &[1; 32]);
    group.bench_function("sm4-gcm-encrypt/1MiB", |b| {
        b.iter(|| {
            black_box(crypto::seal_in_place(
                key.body_cipher(),
                &[0; 12],
                b"",
                &mut chunk,
            ))
        })
    });
    group.bench_function("sm3/1MiB", |b| b.iter(|| black_box(crypto::sm3(&chunk))));
    group.finish();
    // The raw rate in the same CPU-time measure as the `cpu-time` group's unsealing.
    let mut group = c.benchmark_group("cpu-time");
    group.throughput(Throughput::Bytes(chunk.len() as u64));
    group.bench_function("sm4-gcm-encrypt/1MiB", |b| {
        b.iter_custom(|iters| {
            cpu_time(|| {
                for _ in 0..iters {
                    black_box(crypto::seal_in_place(
                        key.body_cipher(),
                        &[0; 12],
                        b"",
                        &mut chunk,
                    ));
                }
            })
        })
    });
    group.finish();

    // What unsealing from the page cache could reach at best, without writing anything: the
    // whole bid decrypted in memory (the data streams from DRAM, not the L2 cache), and read
    // with positional I/O 64 KiB at a time (one copy out of the page cache) and decrypted.
    let mut group = c.benchmark_group("ceiling");
    group.sample_size(10);
    group.throughput(Throughput::Bytes(size as u64));
    let mut whole = data.clone();
    group.bench_function("decrypt-in-memory", |b| {
        b.iter(|| {
            for part in whole.chunks_mut(chunk.len()) {
                let mut stream = key.body_cipher().stream(&[0; 12], b"");
                stream.decrypt(part);
                black_box(stream.tag());
            }
        })
    });
    drop(whole);
    let file = std::fs::File::open(&input).unwrap();
    let mut piece = vec![0u8; 64 * 1024];
    group.bench_function("read-and-decrypt-no-output", |b| {
        b.iter(|| {
            for start in (0..size).step_by(chunk.len()) {
                let mut stream = key.body_cipher().stream(&[0; 12], b"");
                for at in (start..(start + chunk.len()).min(size)).step_by(piece.len()) {
                    let n = piece.len().min(size - at);
                    std::os::unix::fs::FileExt::read_exact_at(&file, &mut piece[..n], at as u64)
                        .unwrap();
                    stream.decrypt(&mut piece[..n]);
                }
                black_box(stream.tag());
            }
        })
    });
    group.finish();

    // Sixteen chunks at once, as sealing and checking hash them.
    let mut group = c.benchmark_group("primitive");
    let chunks: Vec<&[u8]> = vec![chunk.as_slice(); crypto::Sm3Lanes::LANES];
    group.throughput(Throughput::Bytes((chunks.len() * chunk.len()) as u64));
    for simd in [true, false] {
        let name = if simd {
            "sm3x16/16x1MiB"
        } else {
            "sm3x16-crate/16x1MiB"
        };
        group.bench_function(name, |b| {
            b.iter(|| black_box(crypto::Sm3Lanes::with_simd(chunks.len(), simd).finalize(&chunks)))
        });
    }
    group.finish();
}

/// The CPU time every thread of this process spent in `work`, user and kernel.
fn cpu_time(work: impl FnOnce()) -> Duration {
    let now = || {
        let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
        Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
    };
    let start = now();
    work();
    now() - start
}

criterion_group!(benches, bench);
criterion_main!(benches);
