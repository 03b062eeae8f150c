use kaibiao::engine::{DecryptOptions, NoProgress, SealedBid};
use proptest::prelude::*;

use crate::helpers::{Bidder, pattern, summary};

fn round_trip(len: usize, chunk_size: u32, threads: usize) {
    let dir = tempfile::tempdir().unwrap();
    let bidder = Bidder::new();
    let data = pattern(len, len as u64 ^ u64::from(chunk_size));
    let path = bidder.seal_bytes(dir.path(), &data, chunk_size);
    let bid = SealedBid::open(&path).unwrap();
    assert_eq!(bid.header().plaintext_len, len as u64);
    assert_eq!(
        bid.header().chunk_count(),
        (len as u64).div_ceil(u64::from(chunk_size)).max(1)
    );
    // The signed digests are the SM3 of each stored chunk, whichever SM3 path sealing took.
    let file = std::fs::read(&path).unwrap();
    let stride = bid.header().chunk_stride() as usize;
    let body = &file[bid.body_offset() as usize..][..bid.header().body_len() as usize];
    for (index, digest) in bid.chunk_digests().iter().enumerate() {
        let chunk = &body[index * stride..body.len().min((index + 1) * stride)];
        assert_eq!(*digest, kaibiao::crypto::sm3(chunk), "chunk {index}");
    }
    let key = bid.unwrap_file_key(&bidder.enc).unwrap();
    assert_eq!(bid.open_summary(&key).unwrap(), summary());
    let out = dir.path().join("plain.out");
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    pool.install(|| {
        bid.verify_chunks(&NoProgress).unwrap();
        bid.decrypt_to(&key, &out, DecryptOptions::default(), &NoProgress)
            .unwrap()
    });
    assert!(std::fs::read(&out).unwrap() == data, "plaintext differs");
    // The same through the page cache (a file without a name never gets O_DIRECT), without
    // digests, slice by slice as the hall decrypts.
    let file = tempfile::tempfile_in(dir.path()).unwrap();
    pool.install(|| {
        let output = bid.output(&file, None, None).unwrap();
        assert!(!output.is_direct());
        let options = DecryptOptions {
            verify_digests: false,
        };
        for start in (0..bid.header().chunk_count()).step_by(3) {
            bid.decrypt_range(&key, &output, start..start + 3, options, &NoProgress)
                .unwrap();
        }
        output.finish().unwrap();
    });
    let mut again = Vec::new();
    std::io::Read::read_to_end(&mut &file, &mut again).unwrap();
    assert!(again == data, "plaintext through the page cache differs");
}

#[test]
fn edge_sizes_round_trip() {
    for (len, chunk) in [
        (0, 64),
        (1, 64),
        (64, 64),
        (128, 64),
        (65, 64),
        (4096 * 3, 4096),
    ] {
        round_trip(len, chunk, 2);
    }
}

#[test]
fn many_chunks_on_one_and_two_threads() {
    round_trip(300 * 64 + 17, 64, 1);
    round_trip(300 * 64 + 17, 64, 2);
}

#[test]
fn default_chunk_size_round_trips() {
    round_trip(2 * 1024 * 1024 + 5, kaibiao::format::DEFAULT_CHUNK_SIZE, 2);
}

/// Whether `dir` is on a file system that takes `O_DIRECT` and is backed by a device.
fn direct_io_works_in(dir: &std::path::Path) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    let probe = dir.join("probe");
    std::fs::write(&probe, b"").unwrap();
    let opens = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(&probe)
        .is_ok();
    #[allow(clippy::unnecessary_cast)] // the type of f_type differs between architectures
    let in_memory = rustix::fs::statfs(dir).unwrap().f_type as i64 == libc::TMPFS_MAGIC as i64;
    opens && !in_memory
}

#[test]
fn decrypted_files_bypass_the_page_cache_where_the_disk_allows() {
    let dir = tempfile::tempdir().unwrap();
    let bidder = Bidder::new();
    let data = pattern(3 * 8192 + 100, 9);
    let key_and_bid = |chunk: u32| {
        let path = bidder.seal_bytes(dir.path(), &data, chunk);
        let bid = SealedBid::open(&path).unwrap();
        let key = bid.unwrap_file_key(&bidder.enc).unwrap();
        (bid, key)
    };
    let named = tempfile::NamedTempFile::new_in(dir.path()).unwrap();
    let (aligned, _) = key_and_bid(8192);
    let output = aligned
        .output(named.as_file(), Some(named.path()), None)
        .unwrap();
    assert_eq!(output.is_direct(), direct_io_works_in(dir.path()));
    output.finish().unwrap();
    // Chunks that do not start on 4 KiB boundaries cannot be written directly.
    let (unaligned, _) = key_and_bid(1000);
    let output = unaligned
        .output(named.as_file(), Some(named.path()), None)
        .unwrap();
    assert!(!output.is_direct());
    // In memory, O_DIRECT would only move the copy to another thread.
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() {
        let named = tempfile::NamedTempFile::new_in(shm).unwrap();
        let output = aligned
            .output(named.as_file(), Some(named.path()), None)
            .unwrap();
        assert!(!output.is_direct());
    }
}

/// A hall decrypts many bids at once through one set of writer threads and buffers: bids of
/// different chunk sizes, slice by slice in turn, each come out whole.
#[test]
fn bids_decrypted_at_once_share_one_set_of_writers() {
    let dir = tempfile::tempdir().unwrap();
    let writers = kaibiao::engine::Writers::new(2, 4).unwrap();
    let bidder = Bidder::new();
    let bids: Vec<_> = [(200_000, 8192), (150_000, 4096), (90_000, 16384)]
        .into_iter()
        .enumerate()
        .map(|(i, (len, chunk))| {
            let data = pattern(len, i as u64);
            let bid = SealedBid::open(&bidder.seal_bytes(dir.path(), &data, chunk)).unwrap();
            let key = bid.unwrap_file_key(&bidder.enc).unwrap();
            let named = tempfile::NamedTempFile::new_in(dir.path()).unwrap();
            let output = bid
                .output(named.as_file(), Some(named.path()), Some(&writers))
                .unwrap();
            assert_eq!(output.is_direct(), direct_io_works_in(dir.path()));
            (data, bid, key, named, output)
        })
        .collect();
    let options = DecryptOptions {
        verify_digests: false,
    };
    let most = bids
        .iter()
        .map(|b| b.1.header().chunk_count())
        .max()
        .unwrap();
    for start in (0..most).step_by(4) {
        rayon::scope(|scope| {
            for (_, bid, key, _, output) in &bids {
                scope.spawn(move |_| {
                    bid.decrypt_range(key, output, start..start + 4, options, &NoProgress)
                        .unwrap()
                });
            }
        });
    }
    for (data, _, _, named, output) in bids {
        output.finish().unwrap();
        assert!(
            std::fs::read(named.path()).unwrap() == data,
            "plaintext differs"
        );
    }
}

#[test]
fn the_summary_opens_without_touching_the_body() {
    let dir = tempfile::tempdir().unwrap();
    let bidder = Bidder::new();
    let path = bidder.seal_bytes(dir.path(), &pattern(10_000, 3), 1024);
    // Destroy every body byte: the summary must still open, the body must not.
    let mut bytes = std::fs::read(&path).unwrap();
    let bid = SealedBid::open(&path).unwrap();
    let start = bid.body_offset() as usize;
    let end = start + bid.header().body_len() as usize;
    bytes[start..end].fill(0);
    std::fs::write(&path, &bytes).unwrap();
    let bid = SealedBid::open(&path).unwrap();
    let key = bid.unwrap_file_key(&bidder.enc).unwrap();
    assert_eq!(bid.open_summary(&key).unwrap(), summary());
    assert!(bid.verify_chunks(&NoProgress).is_err());
}

#[test]
fn a_backup_recipient_opens_the_same_bid() {
    let dir = tempfile::tempdir().unwrap();
    let bidder = Bidder::new();
    let backup = kaibiao::crypto::generate_secret_key();
    let input = dir.path().join("in");
    std::fs::write(&input, pattern(5000, 9)).unwrap();
    let out = dir.path().join("bid.kbid");
    let summary = summary();
    let recipients = [bidder.enc.public_key(), backup.public_key()];
    kaibiao::engine::seal_file(
        &input,
        &out,
        &bidder.params(&summary, &recipients, 1024),
        &NoProgress,
    )
    .unwrap();
    let bid = SealedBid::open(&out).unwrap();
    let a = bid.unwrap_file_key(&bidder.enc).unwrap();
    let b = bid.unwrap_file_key(&backup).unwrap();
    assert_eq!(a.raw(), b.raw());
}

#[test]
fn folders_round_trip_through_seal_dir_and_unseal_to_dir() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("bid");
    std::fs::create_dir_all(input.join("图纸")).unwrap();
    std::fs::write(input.join("商务标.pdf"), pattern(200_000, 1)).unwrap();
    std::fs::write(input.join("图纸/总平面图.dwg"), pattern(70_000, 2)).unwrap();
    std::fs::write(input.join("empty.txt"), b"").unwrap();
    let bidder = Bidder::new();
    let summary = summary();
    let recipients = [bidder.enc.public_key()];
    let sealed = dir.path().join("bid.kbid");
    kaibiao::engine::seal_dir(
        &input,
        &sealed,
        &bidder.params(&summary, &recipients, 4096),
        &NoProgress,
    )
    .unwrap();
    let bid = SealedBid::open(&sealed).unwrap();
    let key = bid.unwrap_file_key(&bidder.enc).unwrap();
    let out = dir.path().join("opened");
    bid.unseal_to_dir(&key, &out, &NoProgress).unwrap();
    for name in ["商务标.pdf", "图纸/总平面图.dwg", "empty.txt"] {
        assert_eq!(
            std::fs::read(input.join(name)).unwrap(),
            std::fs::read(out.join(name)).unwrap(),
            "{name}"
        );
    }
    // Unsealing again into the now non-empty folder is refused and changes nothing.
    assert!(bid.unseal_to_dir(&key, &out, &NoProgress).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn random_sizes_round_trip(len in 0usize..20_000, chunk in prop::sample::select(vec![64u32, 100, 1024, 4096, 8192])) {
        round_trip(len, chunk, 2);
    }
}
