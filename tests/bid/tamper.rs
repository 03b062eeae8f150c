//! Every tamper case fails with its own error and leaves nothing behind.

use std::path::Path;

use kaibiao::engine::{DecryptOptions, NoProgress, SealedBid};
use kaibiao::format::BidError;
use proptest::prelude::*;

use crate::helpers::{Bidder, listing, pattern};

const CHUNK: u32 = 256;

struct Case {
    _dir: tempfile::TempDir,
    bidder: Bidder,
    path: std::path::PathBuf,
    bytes: Vec<u8>,
    body: usize,
    stride: usize,
    trailer: usize,
}

impl Case {
    fn new() -> Self {
        Self::with_chunks(CHUNK)
    }

    /// Eight full chunks of `chunk` bytes and a partial one.
    fn with_chunks(chunk: u32) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let bidder = Bidder::new();
        let len = 8 * chunk as usize + 100;
        let path = bidder.seal_bytes(dir.path(), &pattern(len, 11), chunk);
        let bid = SealedBid::open(&path).unwrap();
        let body = bid.body_offset() as usize;
        let stride = bid.header().chunk_stride() as usize;
        let trailer = body + bid.header().body_len() as usize;
        Self {
            bytes: std::fs::read(&path).unwrap(),
            _dir: dir,
            bidder,
            path,
            body,
            stride,
            trailer,
        }
    }

    fn chunk(&self, i: usize) -> std::ops::Range<usize> {
        self.body + i * self.stride..self.body + (i + 1) * self.stride
    }

    fn write(&self, bytes: &[u8]) {
        std::fs::write(&self.path, bytes).unwrap();
    }

    /// Everything a receiver does, in order: open, verify, unwrap, decrypt.
    fn full_check(&self, options: DecryptOptions) -> Result<(), BidError> {
        let bid = SealedBid::open(&self.path)?;
        let key = bid.unwrap_file_key(&self.bidder.enc)?;
        bid.open_summary(&key)?;
        let dir = self.path.parent().unwrap();
        let before = listing(dir);
        let result = bid.decrypt_to(&key, &dir.join("out.bin"), options, &NoProgress);
        if result.is_err() {
            assert_eq!(
                listing(dir),
                before,
                "a failed decryption left files behind"
            );
        }
        result.map(|_| ())
    }
}

fn open_err(path: &Path) -> BidError {
    match SealedBid::open(path) {
        Ok(_) => panic!("the tampered file opened"),
        Err(e) => e,
    }
}

#[test]
fn bad_magic() {
    let case = Case::new();
    let mut b = case.bytes.clone();
    b[0] = b'X';
    case.write(&b);
    assert!(matches!(open_err(&case.path), BidError::BadMagic));
}

#[test]
fn unsupported_version() {
    let case = Case::new();
    let mut b = case.bytes.clone();
    b[5] = 2;
    case.write(&b);
    assert!(matches!(
        open_err(&case.path),
        BidError::UnsupportedVersion(2)
    ));
}

#[test]
fn unknown_suite() {
    let case = Case::new();
    let mut b = case.bytes.clone();
    b[11] = 9;
    case.write(&b);
    assert!(matches!(open_err(&case.path), BidError::UnknownSuite(9)));
}

#[test]
fn malformed_header() {
    let case = Case::new();
    let mut b = case.bytes.clone();
    // Announce one header byte more than there is: the header no longer parses exactly.
    b[9] = b[9].wrapping_add(1);
    case.write(&b);
    assert!(matches!(open_err(&case.path), BidError::MalformedHeader(_)));
}

#[test]
fn bad_signature_over_altered_header() {
    let case = Case::new();
    let mut b = case.bytes.clone();
    // created_at is covered by the header hash.
    b[12 + 7] ^= 1;
    case.write(&b);
    assert!(matches!(open_err(&case.path), BidError::BadSignature));
}

#[test]
fn bad_signature_over_altered_digest_list() {
    let case = Case::new();
    let mut b = case.bytes.clone();
    b[case.trailer + 4] ^= 1;
    case.write(&b);
    assert!(matches!(open_err(&case.path), BidError::BadSignature));
}

#[test]
fn no_recipient_for_another_key() {
    let case = Case::new();
    let bid = SealedBid::open(&case.path).unwrap();
    let other = kaibiao::crypto::generate_secret_key();
    assert!(matches!(
        bid.unwrap_file_key(&other),
        Err(BidError::NoRecipient { recipients: 1 })
    ));
}

#[test]
fn wrong_key_fails_the_commitment() {
    let case = Case::new();
    let bid = SealedBid::open(&case.path).unwrap();
    assert!(matches!(
        bid.accept_file_key([0; 16]),
        Err(BidError::WrongKey)
    ));
}

#[test]
fn damaged_chunk() {
    let case = Case::new();
    let mut b = case.bytes.clone();
    b[case.chunk(3).start + 5] ^= 0x80;
    case.write(&b);
    let err = case.full_check(DecryptOptions::default()).unwrap_err();
    assert!(matches!(err, BidError::ChunkDamaged { index: 3 }), "{err}");
    let bid = SealedBid::open(&case.path).unwrap();
    assert!(matches!(
        bid.verify_chunks(&NoProgress),
        Err(BidError::ChunkDamaged { index: 3 })
    ));
}

#[test]
fn chunk_tag_failure_without_digest_checks() {
    // 256-byte chunks are written through the page cache; 4 KiB ones directly where the disk
    // allows (the writer threads): both must fail the same way and leave nothing behind.
    for chunk in [CHUNK, 4096] {
        let case = Case::with_chunks(chunk);
        let mut b = case.bytes.clone();
        b[case.chunk(2).start] ^= 1;
        case.write(&b);
        let err = case
            .full_check(DecryptOptions {
                verify_digests: false,
            })
            .unwrap_err();
        assert!(matches!(err, BidError::ChunkTag { index: 2 }), "{err}");
    }
}

#[test]
fn reordered_chunks() {
    let case = Case::new();
    let mut b = case.bytes.clone();
    let (one, four) = (case.chunk(1), case.chunk(4));
    let saved = b[one.clone()].to_vec();
    b.copy_within(four.clone(), one.start);
    b[four].copy_from_slice(&saved);
    case.write(&b);
    let err = case.full_check(DecryptOptions::default()).unwrap_err();
    assert!(
        matches!(
            err,
            BidError::ChunkReordered {
                index: 1,
                belongs_at: 4
            }
        ) || matches!(
            err,
            BidError::ChunkReordered {
                index: 4,
                belongs_at: 1
            }
        ),
        "{err}"
    );
}

#[test]
fn reordered_chunks_fail_the_tag_even_unsigned() {
    let case = Case::new();
    let mut b = case.bytes.clone();
    let (zero, one) = (case.chunk(0), case.chunk(1));
    let saved = b[zero.clone()].to_vec();
    b.copy_within(one.clone(), zero.start);
    b[one].copy_from_slice(&saved);
    case.write(&b);
    let err = case
        .full_check(DecryptOptions {
            verify_digests: false,
        })
        .unwrap_err();
    assert!(matches!(err, BidError::ChunkTag { .. }), "{err}");
}

#[test]
fn duplicated_chunk() {
    let case = Case::new();
    let mut b = case.bytes.clone();
    let (two, five) = (case.chunk(2), case.chunk(5));
    b.copy_within(two, five.start);
    case.write(&b);
    let err = case.full_check(DecryptOptions::default()).unwrap_err();
    assert!(
        matches!(
            err,
            BidError::ChunkDuplicated {
                index: 5,
                copy_of: 2
            }
        ),
        "{err}"
    );
}

#[test]
fn truncated_by_a_chunk() {
    let case = Case::new();
    let mut b = case.bytes.clone();
    b.drain(case.chunk(6));
    case.write(&b);
    let err = open_err(&case.path);
    assert!(
        matches!(
            err,
            BidError::Truncated {
                missing_chunks: Some(1),
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn truncated_in_the_signature() {
    let case = Case::new();
    let b = &case.bytes[..case.bytes.len() - 10];
    case.write(b);
    assert!(matches!(open_err(&case.path), BidError::Truncated { .. }));
}

#[test]
fn truncated_in_the_header() {
    let case = Case::new();
    case.write(&case.bytes[..40]);
    assert!(matches!(open_err(&case.path), BidError::Truncated { .. }));
}

#[test]
fn extended_by_a_chunk() {
    let case = Case::new();
    let mut b = case.bytes.clone();
    let copy = b[case.chunk(0)].to_vec();
    b.splice(case.trailer..case.trailer, copy);
    case.write(&b);
    assert!(matches!(
        open_err(&case.path),
        BidError::Extended { extra_chunks: 1 }
    ));
}

#[test]
fn trailing_bytes() {
    let case = Case::new();
    let mut b = case.bytes.clone();
    b.extend_from_slice(b"extra");
    case.write(&b);
    assert!(matches!(
        open_err(&case.path),
        BidError::TrailingBytes { count: 5 }
    ));
}

#[test]
fn length_mismatch() {
    let case = Case::new();
    let mut b = case.bytes.clone();
    b.splice(case.trailer..case.trailer, [0u8; 7]);
    case.write(&b);
    assert!(matches!(open_err(&case.path), BidError::LengthMismatch(_)));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any change of any single byte is caught by some check before plaintext is released.
    #[test]
    fn any_flipped_byte_is_detected(position in any::<prop::sample::Index>(), bit in 0u8..8) {
        let case = Case::new();
        let mut b = case.bytes.clone();
        let i = position.index(b.len());
        b[i] ^= 1 << bit;
        case.write(&b);
        prop_assert!(case.full_check(DecryptOptions::default()).is_err());
    }
}
