//! Sealing: a plaintext file or folder in, a signed `.kbid` out.

use std::fs::File;
use std::io::Seek;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::Path;

use rayon::prelude::*;
use sm2::{PublicKey, SecretKey};

use super::{PIECE, Progress};
use crate::crypto::{self, FileKey, PublicIdentity, Sm3Lanes, TAG_LEN};
use crate::domain::{BidSummary, Uscc};
use crate::format::{
    self, BidError, Header, MAX_CHUNK_SIZE, MAX_RECIPIENTS, MIN_CHUNK_SIZE, Recipient, Signer,
};

/// What a sealed bid is made of, besides its plaintext.
pub struct SealParams<'a> {
    pub tender_id: &'a str,
    pub bidder: Uscc,
    pub summary: &'a BidSummary,
    /// Encryption keys the file key is wrapped to; more than one gives a backup path.
    pub recipients: &'a [PublicKey],
    /// The bidder's signing key.
    pub sign_key: &'a SecretKey,
    /// Embedded in the header; must hold the public half of `sign_key`.
    pub signer: &'a PublicIdentity,
    pub chunk_size: u32,
    /// Unix seconds.
    pub created_at: i64,
}

/// What sealing produced.
#[derive(Debug, Clone)]
pub struct SealReport {
    pub plaintext_len: u64,
    pub file_len: u64,
    pub chunk_count: u64,
    /// SM3 of the whole sealed file, as a receipt would show it.
    pub header_hash: [u8; 32],
}

/// Packs the folder `dir` and seals it into `out`.
pub fn seal_dir(
    dir: &Path,
    out: &Path,
    params: &SealParams<'_>,
    progress: &dyn Progress,
) -> Result<SealReport, BidError> {
    let parent = super::parent_of(out);
    let archive =
        tempfile::tempfile_in(parent).map_err(BidError::io("creating a temporary archive"))?;
    super::pack_dir(dir, &archive)?;
    seal_open_file(&archive, out, params, progress)
}

/// Seals the plaintext file `input` into `out`.
pub fn seal_file(
    input: &Path,
    out: &Path,
    params: &SealParams<'_>,
    progress: &dyn Progress,
) -> Result<SealReport, BidError> {
    let file = File::open(input).map_err(BidError::io(format!("opening {}", input.display())))?;
    seal_open_file(&file, out, params, progress)
}

fn seal_open_file(
    input: &File,
    out: &Path,
    params: &SealParams<'_>,
    progress: &dyn Progress,
) -> Result<SealReport, BidError> {
    check_params(params)?;
    let plaintext_len = {
        let mut f = input;
        f.seek(std::io::SeekFrom::End(0))
            .map_err(BidError::io("measuring the plaintext"))?
    };
    let raw_key: [u8; 16] = crypto::random_bytes()?;
    let salt = crypto::random_bytes()?;
    let nonce_prefix = crypto::random_bytes()?;
    let key = FileKey::derive(raw_key, &salt);

    let mut recipients = Vec::with_capacity(params.recipients.len());
    for public in params.recipients {
        recipients.push(Recipient {
            key_id: crypto::key_id(public),
            wrapped_key: crypto::wrap_key(public, key.raw())?,
        });
    }
    let mut sealed_summary = params.summary.to_canonical()?;
    let tag = crypto::seal_in_place(
        key.summary_cipher(),
        &[0u8; 12],
        format::SUMMARY_AAD,
        &mut sealed_summary,
    );
    sealed_summary.extend_from_slice(&tag);

    let header = Header {
        suite: format::SUITE_SM2_SM4GCM_SM3,
        created_at: params.created_at,
        chunk_size: params.chunk_size,
        plaintext_len,
        salt,
        nonce_prefix,
        commitment: *key.commitment(),
        tender_id: params.tender_id.to_owned(),
        bidder: params.bidder.clone(),
        recipients,
        sealed_summary,
        signer: Signer::from_identity(params.signer),
    };
    let header_bytes = header.encode();
    let header_hash = crypto::sm3(&header_bytes);
    let body_offset = header_bytes.len() as u64;
    let count = header.chunk_count();

    let parent = super::parent_of(out);
    let tmp = tempfile::NamedTempFile::new_in(parent).map_err(BidError::io(format!(
        "creating a file in {}",
        parent.display()
    )))?;
    let output = tmp.as_file();
    output
        .write_all_at(&header_bytes, 0)
        .map_err(BidError::io("writing the header"))?;

    let chunks = Chunks {
        input,
        output,
        header: &header,
        header_hash: &header_hash,
        key: &key,
        body_offset,
    };
    let digests: Vec<[u8; 32]> = super::lane_groups(&header, 0..count)
        .into_par_iter()
        .map_init(
            || super::lane_buffer(Sm3Lanes::LANES),
            |buf, group| {
                let digests = chunks.seal_group(group.clone(), buf)?;
                for index in group {
                    progress.advance(header.chunk_plain_len(index) as u64);
                }
                Ok::<_, BidError>(digests)
            },
        )
        .collect::<Result<Vec<_>, _>>()?
        .concat();
    let message = format::signed_message(&header_hash, &digests);
    let signature = crypto::sign(params.sign_key, &message)?;
    let trailer = format::encode_trailer(&digests, &signature);
    let trailer_offset = body_offset + header.body_len();
    output
        .write_all_at(&trailer, trailer_offset)
        .map_err(BidError::io("writing the signature"))?;
    super::persist(tmp, out, "the sealed bid")?;
    Ok(SealReport {
        plaintext_len,
        file_len: trailer_offset + trailer.len() as u64,
        chunk_count: count,
        header_hash,
    })
}

/// What sealing the body's chunks needs.
struct Chunks<'a> {
    input: &'a File,
    output: &'a File,
    header: &'a Header,
    header_hash: &'a [u8; 32],
    key: &'a FileKey,
    body_offset: u64,
}

impl Chunks<'_> {
    /// Seals the chunks `group` (at most 16, of one length) into their places in the output, a
    /// piece of each at a time through `buf` (a lane buffer), and returns their digests.
    fn seal_group(&self, group: Range<u64>, buf: &mut [u8]) -> Result<Vec<[u8; 32]>, BidError> {
        let header = self.header;
        let lanes = (group.end - group.start) as usize;
        let len = header.chunk_plain_len(group.start);
        let mut streams: Vec<_> = group
            .clone()
            .map(|index| super::chunk_stream(self.key, header, self.header_hash, index))
            .collect();
        let mut hasher = Sm3Lanes::new(lanes);
        let mut done = 0;
        loop {
            let n = (len - done).min(PIECE);
            let last = done + n == len;
            for (lane, index) in group.clone().enumerate() {
                let piece = super::lane_piece(buf, lane, n);
                self.input
                    .read_exact_at(piece, index * u64::from(header.chunk_size) + done as u64)
                    .map_err(BidError::io(format!("reading plaintext chunk {index}")))?;
                streams[lane].encrypt(piece);
            }
            // The last piece carries the tag, which the digest covers too.
            let stored = if last {
                for (lane, stream) in std::mem::take(&mut streams).into_iter().enumerate() {
                    super::lane_piece(buf, lane, n + TAG_LEN)[n..].copy_from_slice(&stream.tag());
                }
                n + TAG_LEN
            } else {
                n
            };
            for (lane, index) in group.clone().enumerate() {
                let offset = self.body_offset + index * header.chunk_stride() + done as u64;
                self.output
                    .write_all_at(super::lane_piece(buf, lane, stored), offset)
                    .map_err(BidError::io(format!("writing chunk {index}")))?;
            }
            let pieces = super::lane_pieces(buf, lanes, stored);
            if last {
                return Ok(hasher.finalize(&pieces));
            }
            hasher.update(&pieces);
            done += n;
        }
    }
}

fn check_params(params: &SealParams<'_>) -> Result<(), BidError> {
    let bad = |what: String| Err(BidError::MalformedHeader(what));
    if params.recipients.is_empty() || params.recipients.len() > MAX_RECIPIENTS {
        return bad(format!(
            "a bid needs 1 to {MAX_RECIPIENTS} recipients, {} were given",
            params.recipients.len()
        ));
    }
    if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&params.chunk_size) {
        return bad(format!(
            "the chunk size must be {MIN_CHUNK_SIZE} to {MAX_CHUNK_SIZE} bytes"
        ));
    }
    if params.tender_id.is_empty() || params.tender_id.len() > 128 {
        return bad("the tender id must have 1 to 128 bytes".into());
    }
    if *params.signer.key() != params.sign_key.public_key() {
        return bad(
            "the signing key does not belong to the given certificate or public key".into(),
        );
    }
    Ok(())
}
