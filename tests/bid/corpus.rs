//! A committed corpus of damaged bids (`testdata/fail_<error>.kbid`) that must fail with the error
//! their name gives. `KAIBIAO_WRITE_CORPUS=1 cargo test --test bid corpus` writes it anew.

use std::path::{Path, PathBuf};

use kaibiao::engine::{DecryptOptions, NoProgress, SealedBid};
use kaibiao::format::BidError;

use crate::helpers::{Bidder, pattern};

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bid/testdata")
}

/// Open, unwrap with the corpus key, open the summary and decrypt: the first failure.
fn check(path: &Path, key: &sm2::SecretKey) -> Result<(), BidError> {
    let bid = SealedBid::open(path)?;
    let file_key = bid.unwrap_file_key(key)?;
    bid.open_summary(&file_key)?;
    let out = tempfile::tempdir().unwrap();
    bid.decrypt_to(
        &file_key,
        &out.path().join("x"),
        DecryptOptions::default(),
        &NoProgress,
    )?;
    Ok(())
}

fn variant_name(error: &BidError) -> String {
    let debug = format!("{error:?}");
    debug
        .split(|c: char| !c.is_alphanumeric())
        .next()
        .unwrap_or_default()
        .to_owned()
}

fn corpus_key() -> sm2::SecretKey {
    let text = std::fs::read_to_string(testdata().join("enc.key.pem")).unwrap();
    kaibiao::crypto::load_private_pem(&text).unwrap()
}

#[test]
fn the_good_file_opens_and_every_fail_file_fails_as_named() {
    if std::env::var_os("KAIBIAO_WRITE_CORPUS").is_some() {
        write_corpus();
    }
    let key = corpus_key();
    check(&testdata().join("good.kbid"), &key).expect("good.kbid must open");
    let mut seen = 0;
    for entry in std::fs::read_dir(testdata()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let Some(expected) = name.strip_prefix("fail_") else {
            continue;
        };
        let error = check(&path, &key).expect_err(&name);
        assert_eq!(variant_name(&error), expected, "{name}: {error}");
        seen += 1;
    }
    assert!(seen >= 10, "the corpus has only {seen} fail files");
}

fn write_corpus() {
    let dir = testdata();
    std::fs::create_dir_all(&dir).unwrap();
    let bidder = Bidder::new();
    std::fs::write(
        dir.join("enc.key.pem"),
        kaibiao::crypto::private_key_pem(&bidder.enc)
            .unwrap()
            .as_bytes(),
    )
    .unwrap();
    let work = tempfile::tempdir().unwrap();
    let sealed = bidder.seal_bytes(work.path(), &pattern(4 * 128 + 50, 21), 128);
    let good = std::fs::read(&sealed).unwrap();
    std::fs::write(dir.join("good.kbid"), &good).unwrap();
    let bid = SealedBid::open(&sealed).unwrap();
    let body = bid.body_offset() as usize;
    let stride = bid.header().chunk_stride() as usize;
    let trailer = body + bid.header().body_len() as usize;
    let chunk = |i: usize| body + i * stride..body + (i + 1) * stride;

    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    let mut b = good.clone();
    b[0] = b'k';
    cases.push(("BadMagic", b));
    let mut b = good.clone();
    b[5] = 7;
    cases.push(("UnsupportedVersion", b));
    let mut b = good.clone();
    b[11] = 2;
    cases.push(("UnknownSuite", b));
    let mut b = good.clone();
    b[9] = b[9].wrapping_sub(1);
    cases.push(("MalformedHeader", b));
    let mut b = good.clone();
    b[19] ^= 4;
    cases.push(("BadSignature", b));
    let mut b = good.clone();
    b[chunk(1).start + 3] ^= 1;
    cases.push(("ChunkDamaged", b));
    let mut b = good.clone();
    let first = b[chunk(0)].to_vec();
    b.copy_within(chunk(2), chunk(0).start);
    b[chunk(2)].copy_from_slice(&first);
    cases.push(("ChunkReordered", b));
    let mut b = good.clone();
    b.copy_within(chunk(0), chunk(3).start);
    cases.push(("ChunkDuplicated", b));
    let mut b = good.clone();
    b.drain(chunk(1));
    cases.push(("Truncated", b));
    let mut b = good.clone();
    let extra = b[chunk(0)].to_vec();
    b.splice(trailer..trailer, extra);
    cases.push(("Extended", b));
    let mut b = good.clone();
    b.push(0);
    cases.push(("TrailingBytes", b));
    let mut b = good.clone();
    b.splice(trailer..trailer, [1u8; 3]);
    cases.push(("LengthMismatch", b));
    let other = Bidder::new();
    let foreign = other.seal_bytes(work.path(), b"another bidder's bid", 128);
    cases.push(("NoRecipient", std::fs::read(foreign).unwrap()));

    for (name, bytes) in cases {
        std::fs::write(dir.join(format!("fail_{name}.kbid")), bytes).unwrap();
    }
}
