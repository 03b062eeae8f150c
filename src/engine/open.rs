//! Opening a sealed bid: structure and signature first, then key, summary and body.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use rayon::prelude::*;
use sm2::{PublicKey, SecretKey};

use super::output::{DirectWriter, Writers};
use super::{CIPHER_PIECE, PIECE, PlainOutput, Progress};
use crate::crypto::{self, FileKey, KeyError, PublicIdentity, Sm3Lanes, TAG_LEN};
use crate::domain::BidSummary;
use crate::format::{self, BidError, Header, PREAMBLE_LEN, Recipient, TRAILER_MAGIC};

/// Accepts a file key obtained elsewhere (e.g. re-wrapped by the bidder's phone) after checking
/// it against the header's commitment in constant time. Needs only the header: a caller that
/// has already checked the bid's signature (the hall, at upload) reads it with
/// [`Header::read_from`].
pub fn accept_file_key(header: &Header, raw: [u8; 16]) -> Result<FileKey, BidError> {
    let key = FileKey::derive(raw, &header.salt);
    if !key.matches_commitment(&header.commitment) {
        return Err(BidError::WrongKey);
    }
    Ok(key)
}

/// Opens the bid summary; touches no body chunk.
pub fn open_summary(header: &Header, key: &FileKey) -> Result<BidSummary, BidError> {
    let sealed = &header.sealed_summary;
    let (body, tag) = sealed.split_at(sealed.len() - TAG_LEN);
    let mut plain = body.to_vec();
    crypto::open_in_place(
        key.summary_cipher(),
        &[0u8; 12],
        format::SUMMARY_AAD,
        &mut plain,
        tag,
    )
    .map_err(|_| BidError::Summary("its authentication tag does not match".into()))?;
    Ok(BidSummary::from_canonical(&plain)?)
}

/// How far to look for a displaced trailer when classifying a wrong file length.
const MAX_PROBE_CHUNKS: u64 = 64;

/// Options for [`SealedBid::decrypt_to`].
#[derive(Debug, Clone, Copy)]
pub struct DecryptOptions {
    /// Check each chunk against its signed SM3 digest while decrypting. A server that verified the
    /// whole file when it was uploaded, and keeps it immutable, may skip this; the GCM tags still
    /// authenticate every chunk.
    pub verify_digests: bool,
}

impl Default for DecryptOptions {
    fn default() -> Self {
        Self {
            verify_digests: true,
        }
    }
}

/// A sealed bid whose structure and bidder signature have been checked.
pub struct SealedBid {
    file: File,
    header: Header,
    header_hash: [u8; 32],
    body_offset: u64,
    digests: Vec<[u8; 32]>,
    signature: Vec<u8>,
    signer: PublicIdentity,
    file_len: u64,
}

impl SealedBid {
    /// Opens `path`, checks its structure and the bidder's signature. Decrypts nothing.
    pub fn open(path: &Path) -> Result<Self, BidError> {
        let file = File::open(path).map_err(BidError::io(format!("opening {}", path.display())))?;
        Self::from_file(file)
    }

    /// As [`Self::open`], for a file already open.
    pub fn from_file(file: File) -> Result<Self, BidError> {
        let file_len = file
            .metadata()
            .map_err(BidError::io("reading the bid file's size"))?
            .len();
        let mut preamble = vec![0u8; PREAMBLE_LEN.min(file_len as usize)];
        read_at(&file, &mut preamble, 0)?;
        let header_len = u64::from(Header::parse_preamble(&preamble)?);
        let body_offset = PREAMBLE_LEN as u64 + header_len;
        if file_len < body_offset {
            return Err(BidError::Truncated {
                expected: body_offset,
                actual: file_len,
                missing_chunks: None,
            });
        }
        let mut header_bytes = vec![0u8; body_offset as usize];
        read_at(&file, &mut header_bytes, 0)?;
        let header = Header::decode(&header_bytes[PREAMBLE_LEN..])?;
        let header_hash = crypto::sm3(&header_bytes);
        let signer = header.signer.identity()?;

        let mut bid = Self {
            file,
            header,
            header_hash,
            body_offset,
            digests: Vec::new(),
            signature: Vec::new(),
            signer,
            file_len,
        };
        bid.read_trailer()?;
        let message = format::signed_message(&bid.header_hash, &bid.digests);
        crypto::verify(bid.signer.key(), &message, &bid.signature)
            .map_err(|_| BidError::BadSignature)?;
        Ok(bid)
    }

    fn read_trailer(&mut self) -> Result<(), BidError> {
        let count = self.header.chunk_count();
        let body_end = self.body_offset + self.header.body_len();
        let fixed = 4 + 32 * count + 2;
        if !self.magic_at(body_end)? {
            return Err(self.classify_displaced_trailer(body_end, fixed)?);
        }
        let mut listed = vec![0u8; (32 * count + 2) as usize];
        read_at(&self.file, &mut listed, body_end + 4)?;
        let (digest_bytes, sig_len) = listed.split_at(32 * count as usize);
        let sig_len = u64::from(u16::from_be_bytes([sig_len[0], sig_len[1]]));
        let end = body_end + fixed + sig_len;
        if self.file_len < end {
            return Err(BidError::Truncated {
                expected: end,
                actual: self.file_len,
                missing_chunks: None,
            });
        }
        if self.file_len > end {
            return Err(BidError::TrailingBytes {
                count: self.file_len - end,
            });
        }
        self.digests = digest_bytes
            .chunks_exact(32)
            .map(|d| d.try_into().expect("chunks of 32"))
            .collect();
        self.signature = vec![0u8; sig_len as usize];
        read_at(&self.file, &mut self.signature, body_end + fixed)?;
        Ok(())
    }

    /// The trailer is not where the header says: tell truncation, extension and other damage apart.
    fn classify_displaced_trailer(&self, body_end: u64, fixed: u64) -> Result<BidError, BidError> {
        let stride = self.header.chunk_stride();
        for k in 1..=MAX_PROBE_CHUNKS {
            let later = body_end + k * stride;
            if later + fixed <= self.file_len && self.magic_at(later)? {
                return Ok(BidError::Extended { extra_chunks: k });
            }
        }
        for k in 1..=MAX_PROBE_CHUNKS.min(self.header.chunk_count()) {
            let Some(earlier) = body_end.checked_sub(k * stride) else {
                break;
            };
            if earlier >= self.body_offset && self.magic_at(earlier)? {
                return Ok(BidError::Truncated {
                    expected: body_end + fixed,
                    actual: self.file_len,
                    missing_chunks: Some(k),
                });
            }
        }
        if self.file_len < body_end + fixed {
            return Ok(BidError::Truncated {
                expected: body_end + fixed,
                actual: self.file_len,
                missing_chunks: None,
            });
        }
        Ok(BidError::LengthMismatch(format!(
            "the header describes a body of {} bytes ending at offset {body_end}, but no signature trailer starts there",
            self.header.body_len()
        )))
    }

    fn magic_at(&self, offset: u64) -> Result<bool, BidError> {
        if offset + 4 > self.file_len {
            return Ok(false);
        }
        let mut magic = [0u8; 4];
        read_at(&self.file, &mut magic, offset)?;
        Ok(&magic == TRAILER_MAGIC)
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    /// SM3 of preamble and header: the associated data of every chunk.
    pub fn header_hash(&self) -> &[u8; 32] {
        &self.header_hash
    }

    /// The signed SM3 digests of the chunks, in order.
    pub fn chunk_digests(&self) -> &[[u8; 32]] {
        &self.digests
    }

    /// The bidder's DER signature over [`format::signed_message`].
    pub fn signature(&self) -> &[u8] {
        &self.signature
    }

    /// The signer embedded in the header, whose signature has been verified.
    pub fn signer(&self) -> &PublicIdentity {
        &self.signer
    }

    pub fn file_len(&self) -> u64 {
        self.file_len
    }

    /// Offset of chunk 0.
    pub fn body_offset(&self) -> u64 {
        self.body_offset
    }

    /// The recipient entry for an encryption public key, if the bid was sealed to it.
    pub fn recipient_for(&self, public: &PublicKey) -> Result<&Recipient, BidError> {
        let id = crypto::key_id(public);
        self.header
            .recipients
            .iter()
            .find(|r| r.key_id == id)
            .ok_or(BidError::NoRecipient {
                recipients: self.header.recipients.len(),
            })
    }

    /// Unwraps the file key with a recipient's private key and checks the key commitment.
    pub fn unwrap_file_key(&self, key: &SecretKey) -> Result<FileKey, BidError> {
        let recipient = self.recipient_for(&key.public_key())?;
        let raw = crypto::unwrap_key(key, &recipient.wrapped_key).map_err(|e| match e {
            KeyError::Unwrap | KeyError::UnwrapLength(_) => BidError::WrongKey,
            other => BidError::Key(other),
        })?;
        self.accept_file_key(*raw)
    }

    /// Accepts a file key obtained elsewhere (e.g. re-wrapped by the bidder's phone) after checking
    /// it against the header's commitment in constant time.
    pub fn accept_file_key(&self, raw: [u8; 16]) -> Result<FileKey, BidError> {
        accept_file_key(&self.header, raw)
    }

    /// Opens the bid summary; touches no body chunk.
    pub fn open_summary(&self, key: &FileKey) -> Result<BidSummary, BidError> {
        open_summary(&self.header, key)
    }

    /// Reads chunk `index` (ciphertext and tag) into `buf`.
    fn read_chunk(&self, index: u64, buf: &mut Vec<u8>) -> Result<(), BidError> {
        buf.resize(self.header.chunk_plain_len(index) + TAG_LEN, 0);
        read_at(&self.file, buf, self.chunk_offset(index))
    }

    fn chunk_buffer(&self) -> Vec<u8> {
        Vec::with_capacity(self.header.chunk_size as usize + TAG_LEN)
    }

    /// Checks every chunk against its signed digest, in parallel. Needs no key.
    pub fn verify_chunks(&self, progress: &dyn Progress) -> Result<(), BidError> {
        self.verify_range(0..self.header.chunk_count(), progress)
    }

    /// Checks the chunks `range` against their signed digests, up to sixteen at a time per worker.
    fn verify_range(
        &self,
        range: std::ops::Range<u64>,
        progress: &dyn Progress,
    ) -> Result<(), BidError> {
        let groups = super::lane_groups(&self.header, range);
        let failed = groups
            .into_par_iter()
            .map_init(
                || super::lane_buffer(Sm3Lanes::LANES),
                |buf, group| -> Result<Option<u64>, BidError> {
                    let digests = self.hash_chunks(group.clone(), buf)?;
                    for index in group.clone() {
                        progress.advance(self.header.chunk_plain_len(index) as u64);
                    }
                    Ok(group
                        .zip(digests)
                        .find(|(index, digest)| *digest != self.digests[*index as usize])
                        .map(|(index, _)| index))
                },
            )
            .collect::<Result<Vec<_>, _>>()?;
        match failed.into_iter().flatten().min() {
            Some(index) => Err(self.classify_mismatch(index)?),
            None => Ok(()),
        }
    }

    /// SM3 of the stored chunks `group` (at most 16, of one length), a piece of each at a time.
    fn hash_chunks(
        &self,
        group: std::ops::Range<u64>,
        buf: &mut [u8],
    ) -> Result<Vec<[u8; 32]>, BidError> {
        let lanes = (group.end - group.start) as usize;
        let len = self.header.chunk_plain_len(group.start) + TAG_LEN;
        let mut hasher = Sm3Lanes::new(lanes);
        let mut done = 0;
        loop {
            let n = (len - done).min(PIECE);
            for (lane, index) in group.clone().enumerate() {
                let offset = self.chunk_offset(index) + done as u64;
                read_at(&self.file, super::lane_piece(buf, lane, n), offset)?;
            }
            let pieces = super::lane_pieces(buf, lanes, n);
            done += n;
            if done == len {
                return Ok(hasher.finalize(&pieces));
            }
            hasher.update(&pieces);
        }
    }

    fn chunk_offset(&self, index: u64) -> u64 {
        self.body_offset + index * self.header.chunk_stride()
    }

    /// Names what is wrong with chunk `index`, whose digest did not match.
    fn classify_mismatch(&self, index: u64) -> Result<BidError, BidError> {
        let mut buf = self.chunk_buffer();
        self.read_chunk(index, &mut buf)?;
        let actual = crypto::sm3(&buf);
        let Some(other) = self.digests.iter().position(|d| *d == actual) else {
            return Ok(BidError::ChunkDamaged { index });
        };
        let other = other as u64;
        self.read_chunk(other, &mut buf)?;
        if crypto::sm3(&buf) == self.digests[other as usize] {
            Ok(BidError::ChunkDuplicated {
                index,
                copy_of: other,
            })
        } else {
            Ok(BidError::ChunkReordered {
                index,
                belongs_at: other,
            })
        }
    }

    /// Decrypts the body into the file `out`, in parallel. The file appears only when every chunk
    /// has passed and it is on disk; on failure nothing is left behind. Returns the plaintext
    /// length.
    pub fn decrypt_to(
        &self,
        key: &FileKey,
        out: &Path,
        options: DecryptOptions,
        progress: &dyn Progress,
    ) -> Result<u64, BidError> {
        let parent = super::parent_of(out);
        let tmp = tempfile::NamedTempFile::new_in(parent).map_err(BidError::io(format!(
            "creating a file in {}",
            parent.display()
        )))?;
        let output = self.output(tmp.as_file(), Some(tmp.path()), None)?;
        self.decrypt_range(
            key,
            &output,
            0..self.header.chunk_count(),
            options,
            progress,
        )?;
        output.finish()?;
        super::persist(tmp, out, "the decrypted bid")?;
        Ok(self.header.plaintext_len)
    }

    /// Sizes `file` for the plaintext and starts its writer: the first step of decrypting a bid
    /// slice by slice with [`Self::decrypt_range`]. `path`, the file's name if it has one, lets
    /// the writer bypass the page cache (`O_DIRECT`); leave it out for a file that is read back
    /// at once. Before the output is [`finish`](PlainOutput::finish)ed and flushed, the file may
    /// hold partial plaintext: a caller whose decryption failed discards it unread.
    ///
    /// With `O_DIRECT`, the chunks are written by the threads of `writers`, shared with other
    /// outputs, or without them by writers of the output's own: a writer thread per worker keeps
    /// as many writes in flight on the device as there are workers filling buffers, two buffers
    /// per worker (one being filled, one being written).
    pub fn output(
        &self,
        file: &File,
        path: Option<&Path>,
        writers: Option<&Writers>,
    ) -> Result<PlainOutput, BidError> {
        file.set_len(self.header.plaintext_len)
            .map_err(BidError::io("sizing the output file"))?;
        PlainOutput::new(file, path, &self.header, writers)
    }

    /// Decrypts chunks `range` into their place in `output`, in parallel on the current Rayon
    /// pool. A server decrypting several bids at once submits each bid as a series of short
    /// ranges, so the bids take turns on the pool instead of the first one holding every thread.
    /// With `verify_digests`, the range's chunks are first checked against their signed digests,
    /// sixteen at a time ([`Sm3Lanes`]); then each chunk is decrypted, its tag checked, and only
    /// then handed to the writer: a chunk that fails is never written.
    pub fn decrypt_range(
        &self,
        key: &FileKey,
        output: &PlainOutput,
        range: std::ops::Range<u64>,
        options: DecryptOptions,
        progress: &dyn Progress,
    ) -> Result<(), BidError> {
        if !key.matches_commitment(&self.header.commitment) {
            return Err(BidError::WrongKey);
        }
        let count = self.header.chunk_count();
        let range = range.start.min(count)..range.end.min(count);
        if options.verify_digests {
            self.verify_range(range.clone(), &super::NoProgress)?;
        }
        let advance = |index| progress.advance(self.header.chunk_plain_len(index) as u64);
        match output.direct() {
            Some(writer) => range.into_par_iter().try_for_each(|index| {
                self.decrypt_chunk_direct(key, writer, index)?;
                advance(index);
                Ok(())
            }),
            None => range.into_par_iter().try_for_each_init(
                || vec![0u8; CIPHER_PIECE],
                |piece, index| {
                    self.decrypt_chunk_buffered(key, output.file(), index, piece)?;
                    advance(index);
                    Ok(())
                },
            ),
        }
    }

    /// Decrypts chunk `index` into a buffer of the writer, 256 KiB at a time (read, then
    /// decrypted while in the CPU's cache), checks its tag and only then queues it for writing.
    fn decrypt_chunk_direct(
        &self,
        key: &FileKey,
        writer: &DirectWriter,
        index: u64,
    ) -> Result<(), BidError> {
        let len = self.header.chunk_plain_len(index);
        let offset = self.chunk_offset(index);
        let mut stream = super::chunk_stream(key, &self.header, &self.header_hash, index);
        let mut buf = writer.buffer();
        for (i, piece) in buf.as_mut()[..len].chunks_mut(CIPHER_PIECE).enumerate() {
            read_at(&self.file, piece, offset + (i * CIPHER_PIECE) as u64)?;
            stream.decrypt(piece);
        }
        self.check_tag(stream, index)?;
        writer.write(buf, len, index * u64::from(self.header.chunk_size))
    }

    /// Decrypts chunk `index` into its place in `output` through `piece`, 256 KiB at a time, each
    /// written while still in the CPU's cache; then checks the tag. A failed chunk's plaintext is
    /// in the file by then: see [`Self::output`].
    fn decrypt_chunk_buffered(
        &self,
        key: &FileKey,
        output: &File,
        index: u64,
        piece: &mut [u8],
    ) -> Result<(), BidError> {
        let len = self.header.chunk_plain_len(index);
        let offset = self.chunk_offset(index);
        let plain_offset = index * u64::from(self.header.chunk_size);
        let mut stream = super::chunk_stream(key, &self.header, &self.header_hash, index);
        for done in (0..len).step_by(CIPHER_PIECE) {
            let piece = &mut piece[..(len - done).min(CIPHER_PIECE)];
            read_at(&self.file, piece, offset + done as u64)?;
            stream.decrypt(piece);
            output
                .write_all_at(piece, plain_offset + done as u64)
                .map_err(BidError::io(format!("writing plaintext chunk {index}")))?;
        }
        self.check_tag(stream, index)
    }

    /// Reads chunk `index`'s tag and checks it against what `stream` computed.
    fn check_tag(&self, stream: crate::crypto::GcmStream<'_>, index: u64) -> Result<(), BidError> {
        let len = self.header.chunk_plain_len(index);
        let mut tag = [0u8; TAG_LEN];
        read_at(&self.file, &mut tag, self.chunk_offset(index) + len as u64)?;
        stream
            .verify(&tag)
            .map_err(|_| BidError::ChunkTag { index })
    }

    /// Decrypts the body and unpacks the bid folder into `dir`, which must not exist or be empty.
    /// The folder appears only when every chunk has passed.
    pub fn unseal_to_dir(
        &self,
        key: &FileKey,
        dir: &Path,
        progress: &dyn Progress,
    ) -> Result<(), BidError> {
        if dir.exists() {
            let empty = std::fs::read_dir(dir)
                .map_err(BidError::io(format!("reading {}", dir.display())))?
                .next()
                .is_none();
            if !empty {
                return Err(BidError::Io {
                    context: format!("{} already exists and is not empty", dir.display()),
                    source: std::io::Error::new(
                        std::io::ErrorKind::AlreadyExists,
                        "choose a new output folder",
                    ),
                });
            }
            std::fs::remove_dir(dir)
                .map_err(BidError::io(format!("replacing {}", dir.display())))?;
        }
        let parent = super::parent_of(dir);
        std::fs::create_dir_all(parent)
            .map_err(BidError::io(format!("creating {}", parent.display())))?;
        let archive =
            tempfile::tempfile_in(parent).map_err(BidError::io("creating a temporary archive"))?;
        // Read back at once: through the page cache (no path, so no O_DIRECT).
        let output = self.output(&archive, None, None)?;
        let chunks = 0..self.header.chunk_count();
        self.decrypt_range(key, &output, chunks, DecryptOptions::default(), progress)?;
        output.finish()?;
        let staging = tempfile::Builder::new()
            .prefix(".kaibiao-unseal")
            .tempdir_in(parent)
            .map_err(BidError::io("creating a temporary folder"))?;
        super::unpack_archive(&archive, staging.path())?;
        super::sync_tree(staging.path())
            .map_err(BidError::io("flushing the unsealed files to disk"))?;
        let staged = staging.keep();
        std::fs::rename(&staged, dir).map_err(|source| {
            let _ = std::fs::remove_dir_all(&staged);
            BidError::Io {
                context: format!("moving the unsealed bid to {}", dir.display()),
                source,
            }
        })?;
        super::sync_dir(parent).map_err(BidError::io(format!(
            "flushing the folder of {} to disk",
            dir.display()
        )))
    }
}

fn read_at(file: &File, buf: &mut [u8], offset: u64) -> Result<(), BidError> {
    file.read_exact_at(buf, offset).map_err(|source| {
        if source.kind() == std::io::ErrorKind::UnexpectedEof {
            BidError::LengthMismatch(format!(
                "the file ends before offset {}",
                offset + buf.len() as u64
            ))
        } else {
            BidError::Io {
                context: "reading the bid file".into(),
                source,
            }
        }
    })
}
