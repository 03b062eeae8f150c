//! The header codec: a writer that emits the canonical bytes and a strict parser.

use super::{
    BidError, MAGIC, MAX_CHUNK_SIZE, MAX_HEADER_LEN, MAX_RECIPIENTS, MIN_CHUNK_SIZE, PREAMBLE_LEN,
    SUITE_SM2_SM4GCM_SM3, VERSION,
};
use crate::crypto::{self, PublicIdentity, TAG_LEN};
use crate::domain::{BidSummary, Uscc};

const MAX_TENDER_ID: usize = 128;
const MAX_SEALED_SUMMARY: usize = BidSummary::MAX_ENCODED + TAG_LEN;

/// One recipient of the file key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recipient {
    /// SM3 of the recipient's uncompressed SM2 public key.
    pub key_id: [u8; 32],
    /// The file key wrapped to that key, as `SM2Cipher` DER.
    pub wrapped_key: Vec<u8>,
}

/// How the signer's key is embedded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignerKind {
    PublicKey = 1,
    Certificate = 2,
}

/// The bidder's signing key or certificate, as DER.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signer {
    pub kind: SignerKind,
    pub der: Vec<u8>,
}

impl Signer {
    pub fn from_identity(identity: &PublicIdentity) -> Self {
        match identity {
            PublicIdentity::PublicKey { spki_der, .. } => Self {
                kind: SignerKind::PublicKey,
                der: spki_der.clone(),
            },
            PublicIdentity::Certificate { cert_der, .. } => Self {
                kind: SignerKind::Certificate,
                der: cert_der.clone(),
            },
        }
    }

    pub fn identity(&self) -> Result<PublicIdentity, BidError> {
        crypto::parse_public_der(&self.der, self.kind == SignerKind::Certificate)
            .map_err(BidError::Signer)
    }
}

/// The parsed header of a sealed bid. See [`super::spec`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub suite: u16,
    pub created_at: i64,
    pub chunk_size: u32,
    pub plaintext_len: u64,
    pub salt: [u8; 32],
    pub nonce_prefix: [u8; 7],
    pub commitment: [u8; 32],
    pub tender_id: String,
    pub bidder: Uscc,
    pub recipients: Vec<Recipient>,
    pub sealed_summary: Vec<u8>,
    pub signer: Signer,
}

impl Header {
    /// Number of body chunks: `max(1, ceil(plaintext_len / chunk_size))`.
    pub fn chunk_count(&self) -> u64 {
        self.plaintext_len
            .div_ceil(u64::from(self.chunk_size))
            .max(1)
    }

    /// Plaintext length of chunk `index`.
    pub fn chunk_plain_len(&self, index: u64) -> usize {
        let start = index * u64::from(self.chunk_size);
        let len = self
            .plaintext_len
            .saturating_sub(start)
            .min(u64::from(self.chunk_size));
        len as usize
    }

    /// Distance between the starts of two consecutive chunks.
    pub fn chunk_stride(&self) -> u64 {
        u64::from(self.chunk_size) + TAG_LEN as u64
    }

    /// Total length of the body: every chunk's ciphertext and tag.
    pub fn body_len(&self) -> u64 {
        self.plaintext_len + self.chunk_count() * TAG_LEN as u64
    }

    /// Encodes preamble and header, the bytes `header_hash` is computed over.
    pub fn encode(&self) -> Vec<u8> {
        let mut h = Vec::with_capacity(1024 + self.sealed_summary.len() + self.signer.der.len());
        h.extend_from_slice(&self.suite.to_be_bytes());
        h.extend_from_slice(&self.created_at.to_be_bytes());
        h.extend_from_slice(&self.chunk_size.to_be_bytes());
        h.extend_from_slice(&self.plaintext_len.to_be_bytes());
        h.extend_from_slice(&self.salt);
        h.extend_from_slice(&self.nonce_prefix);
        h.extend_from_slice(&self.commitment);
        put_bytes16(&mut h, self.tender_id.as_bytes());
        h.extend_from_slice(self.bidder.as_str().as_bytes());
        h.push(self.recipients.len() as u8);
        for recipient in &self.recipients {
            h.extend_from_slice(&recipient.key_id);
            put_bytes16(&mut h, &recipient.wrapped_key);
        }
        h.extend_from_slice(&(self.sealed_summary.len() as u32).to_be_bytes());
        h.extend_from_slice(&self.sealed_summary);
        h.push(self.signer.kind as u8);
        put_bytes16(&mut h, &self.signer.der);

        let mut out = Vec::with_capacity(PREAMBLE_LEN + h.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_be_bytes());
        out.extend_from_slice(&(h.len() as u32).to_be_bytes());
        out.extend_from_slice(&h);
        out
    }

    /// Checks the preamble and returns the header length it announces.
    pub fn parse_preamble(preamble: &[u8]) -> Result<u32, BidError> {
        if preamble.len() < 4 || &preamble[..4] != MAGIC {
            return Err(BidError::BadMagic);
        }
        if preamble.len() < PREAMBLE_LEN {
            return Err(BidError::Truncated {
                expected: PREAMBLE_LEN as u64,
                actual: preamble.len() as u64,
                missing_chunks: None,
            });
        }
        let version = u16::from_be_bytes([preamble[4], preamble[5]]);
        if version != VERSION {
            return Err(BidError::UnsupportedVersion(version));
        }
        let len = u32::from_be_bytes([preamble[6], preamble[7], preamble[8], preamble[9]]);
        if len > MAX_HEADER_LEN {
            return Err(BidError::MalformedHeader(format!(
                "the header claims {len} bytes, more than the limit of {MAX_HEADER_LEN}"
            )));
        }
        Ok(len)
    }

    /// Reads preamble and header from the start of a sealed bid, without reading the body or
    /// checking the signature (for showing a bid, or a recipient list, cheaply).
    pub fn read_from(mut reader: impl std::io::Read) -> Result<Self, BidError> {
        let truncated = |expected: usize| BidError::Truncated {
            expected: expected as u64,
            actual: 0,
            missing_chunks: None,
        };
        let mut preamble = [0u8; PREAMBLE_LEN];
        reader
            .read_exact(&mut preamble)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::UnexpectedEof => truncated(PREAMBLE_LEN),
                _ => BidError::Io {
                    context: "reading the bid header".into(),
                    source: e,
                },
            })?;
        let len = Self::parse_preamble(&preamble)? as usize;
        let mut header = vec![0u8; len];
        reader.read_exact(&mut header).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => truncated(PREAMBLE_LEN + len),
            _ => BidError::Io {
                context: "reading the bid header".into(),
                source: e,
            },
        })?;
        Self::decode(&header)
    }

    /// Parses the header that follows a checked preamble (`bytes` holds the header only).
    pub fn decode(bytes: &[u8]) -> Result<Self, BidError> {
        let mut r = Reader { bytes, pos: 0 };
        let suite = r.u16("suite")?;
        if suite != SUITE_SM2_SM4GCM_SM3 {
            return Err(BidError::UnknownSuite(suite));
        }
        let created_at = i64::from_be_bytes(r.array("created_at")?);
        let chunk_size = u32::from_be_bytes(r.array("chunk_size")?);
        if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size) {
            return Err(malformed(format!(
                "chunk_size {chunk_size} is outside {MIN_CHUNK_SIZE}..={MAX_CHUNK_SIZE}"
            )));
        }
        let plaintext_len = u64::from_be_bytes(r.array("plaintext_len")?);
        if plaintext_len.div_ceil(u64::from(chunk_size)) > u64::from(u32::MAX) {
            return Err(malformed("plaintext_len needs more than 2^32 chunks"));
        }
        let salt = r.array("salt")?;
        let nonce_prefix = r.array("nonce_prefix")?;
        let commitment = r.array("commitment")?;
        let tender_id = r.bytes16("tender_id")?;
        if tender_id.is_empty() || tender_id.len() > MAX_TENDER_ID {
            return Err(malformed("tender_id must have 1 to 128 bytes"));
        }
        let tender_id = String::from_utf8(tender_id.to_vec())
            .map_err(|_| malformed("tender_id is not UTF-8"))?;
        let bidder: [u8; 18] = r.array("bidder")?;
        let bidder = std::str::from_utf8(&bidder)
            .ok()
            .and_then(|s| Uscc::parse(s).ok())
            .ok_or_else(|| malformed("bidder is not a valid unified social credit code"))?;
        let count = usize::from(r.array::<1>("recipient_count")?[0]);
        if count == 0 || count > MAX_RECIPIENTS {
            return Err(malformed(format!(
                "recipient_count must be 1..={MAX_RECIPIENTS}, found {count}"
            )));
        }
        let mut recipients = Vec::with_capacity(count);
        for _ in 0..count {
            let key_id = r.array("recipient key_id")?;
            let wrapped_key = r.bytes16("recipient wrapped key")?.to_vec();
            recipients.push(Recipient {
                key_id,
                wrapped_key,
            });
        }
        let summary_len = u32::from_be_bytes(r.array("sealed_summary length")?) as usize;
        if !(TAG_LEN..=MAX_SEALED_SUMMARY).contains(&summary_len) {
            return Err(malformed(format!(
                "sealed_summary length {summary_len} is outside {TAG_LEN}..={MAX_SEALED_SUMMARY}"
            )));
        }
        let sealed_summary = r.take(summary_len, "sealed_summary")?.to_vec();
        let kind = match r.array::<1>("signer_kind")?[0] {
            1 => SignerKind::PublicKey,
            2 => SignerKind::Certificate,
            other => return Err(malformed(format!("signer_kind {other} is unknown"))),
        };
        let der = r.bytes16("signer")?.to_vec();
        if r.pos != bytes.len() {
            return Err(malformed(format!(
                "{} unexpected byte(s) at the end of the header",
                bytes.len() - r.pos
            )));
        }
        Ok(Self {
            suite,
            created_at,
            chunk_size,
            plaintext_len,
            salt,
            nonce_prefix,
            commitment,
            tender_id,
            bidder,
            recipients,
            sealed_summary,
            signer: Signer { kind, der },
        })
    }
}

fn malformed(what: impl Into<String>) -> BidError {
    BidError::MalformedHeader(what.into())
}

fn put_bytes16(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
    out.extend_from_slice(bytes);
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &str) -> Result<&'a [u8], BidError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len())
            .ok_or_else(|| malformed(format!("the header ends inside field {field}")))?;
        let slice = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self, field: &str) -> Result<[u8; N], BidError> {
        let slice = self.take(N, field)?;
        let mut out = [0u8; N];
        out.copy_from_slice(slice);
        Ok(out)
    }

    fn u16(&mut self, field: &str) -> Result<u16, BidError> {
        Ok(u16::from_be_bytes(self.array(field)?))
    }

    fn bytes16(&mut self, field: &str) -> Result<&'a [u8], BidError> {
        let len = usize::from(self.u16(field)?);
        self.take(len, field)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> Header {
        Header {
            suite: SUITE_SM2_SM4GCM_SM3,
            created_at: 1_795_000_000,
            chunk_size: 1024,
            plaintext_len: 3000,
            salt: [1; 32],
            nonce_prefix: [2; 7],
            commitment: [3; 32],
            tender_id: "ZB-2026-001".into(),
            bidder: Uscc::parse("91350100M000100Y43").unwrap(),
            recipients: vec![Recipient {
                key_id: [4; 32],
                wrapped_key: vec![5; 124],
            }],
            sealed_summary: vec![6; 166],
            signer: Signer {
                kind: SignerKind::PublicKey,
                der: vec![7; 91],
            },
        }
    }

    #[test]
    fn worked_example_layout() {
        let header = example();
        let bytes = header.encode();
        assert_eq!(bytes.len(), PREAMBLE_LEN + 547);
        assert_eq!(header.chunk_count(), 3);
        assert_eq!(header.chunk_plain_len(2), 952);
        assert_eq!(header.body_len(), 3048);
        assert_eq!(bytes.len() as u64 + header.chunk_stride(), 1597);
        assert_eq!(bytes.len() as u64 + header.body_len(), 3605);
    }

    #[test]
    fn encode_decode_round_trip_and_truncations_fail() {
        let header = example();
        let bytes = header.encode();
        let len = Header::parse_preamble(&bytes[..PREAMBLE_LEN]).unwrap() as usize;
        assert_eq!(
            Header::decode(&bytes[PREAMBLE_LEN..PREAMBLE_LEN + len]).unwrap(),
            header
        );
        for cut in 0..len {
            assert!(
                Header::decode(&bytes[PREAMBLE_LEN..PREAMBLE_LEN + cut]).is_err(),
                "a header cut at {cut} parsed"
            );
        }
    }
}
