//! SM4-GCM with a 96-bit nonce and a 128-bit tag (NIST SP 800-38D; RFC 8998).
//!
//! Why not `aes-gcm`'s generic `AesGcm<Sm4Fast, U12>`: its GHASH is the `ghash` crate, which cannot
//! be swapped for the VPCLMULQDQ one and took a third of the time once SM4 ran at 2.4 GB/s; and it
//! hashes and ciphers in two passes over the whole message. Here the message is processed in
//! segments that stay in the L1 cache: CTR then GHASH on encryption, GHASH then CTR on
//! decryption. The mode itself is a few lines; the tests check it against `aes-gcm` on random
//! inputs and against the RFC 8998 vector.

use subtle::ConstantTimeEq;
use zeroize::Zeroize;

use super::simd::ghash::{Ghash, clmul512_supported};
use super::{Sm4Fast, Sm4Path};

/// Length of an SM4-GCM authentication tag.
pub const TAG_LEN: usize = 16;

/// Bytes per segment: small enough to stay in L1 between the two passes.
const SEGMENT: usize = 16 * 1024;

/// The longest message GCM allows: 2³² − 2 blocks.
const MAX_MESSAGE: u64 = ((1 << 32) - 2) * 16;

/// The tag did not match: the ciphertext, nonce, AAD or key is not the one sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the authentication tag does not match")]
pub struct TagMismatch;

/// SM4-GCM under one key.
#[derive(Clone)]
pub struct Sm4Gcm {
    cipher: Sm4Fast,
    hash: Ghash,
}

impl Sm4Gcm {
    /// SM4-GCM on the fastest SM4 and GHASH this CPU has (`KAIBIAO_SM4` may force an SM4 path).
    pub fn new(key: &[u8; 16]) -> Self {
        let path = Sm4Path::default_path();
        Self::with_paths(key, path, path != Sm4Path::Portable)
            .or_else(|| Self::with_paths(key, Sm4Path::Portable, false))
            .expect("the portable path is always available")
    }

    /// SM4-GCM on a given SM4 path, with the VPCLMULQDQ GHASH (`simd_ghash`, where the CPU has
    /// it) or the `ghash` crate; `None` if the CPU cannot run the SM4 path.
    pub fn with_paths(key: &[u8; 16], path: Sm4Path, simd_ghash: bool) -> Option<Self> {
        let cipher = Sm4Fast::with_path(key, path)?;
        let mut h = [0u8; 16];
        {
            use sm4::cipher::BlockCipherEncrypt;
            let mut block = sm4::cipher::Block::<Sm4Fast>::default();
            cipher.encrypt_block(&mut block);
            h.copy_from_slice(&block);
            block.zeroize();
        }
        let hash = Ghash::with_simd(&h, simd_ghash && clmul512_supported());
        h.zeroize();
        Some(Self { cipher, hash })
    }

    /// Which SM4 path this instance runs.
    pub fn path(&self) -> Sm4Path {
        self.cipher.path()
    }

    /// `J₀ = nonce ‖ 0³¹ ‖ 1`.
    fn j0(nonce: &[u8; 12]) -> [u8; 16] {
        let mut j0 = [0u8; 16];
        j0[..12].copy_from_slice(nonce);
        j0[15] = 1;
        j0
    }

    /// The counter block of byte `offset` (a multiple of 16) of the message: `inc32` applied
    /// `1 + offset / 16` times to J₀.
    fn counter_at(j0: &[u8; 16], offset: usize) -> [u8; 16] {
        let mut block = *j0;
        let start = u32::from_be_bytes(j0[12..].try_into().expect("4 bytes"));
        let value = start.wrapping_add(1).wrapping_add((offset / 16) as u32);
        block[12..].copy_from_slice(&value.to_be_bytes());
        block
    }

    fn tag(&self, j0: &[u8; 16], mut hash: Ghash, aad_len: usize, text_len: usize) -> [u8; 16] {
        let mut lengths = [0u8; 16];
        lengths[..8].copy_from_slice(&(aad_len as u64 * 8).to_be_bytes());
        lengths[8..].copy_from_slice(&(text_len as u64 * 8).to_be_bytes());
        hash.update_padded(&lengths);
        let mut tag = hash.finalize();
        // The tag is GHASH ⊕ E(J₀): one keystream block at counter J₀.
        self.cipher.apply_ctr32(j0, &mut tag);
        tag
    }

    /// Starts a message to be encrypted or decrypted piece by piece, for a caller that reads a
    /// large message in pieces that stay in the cache instead of holding it whole.
    pub fn stream(&self, nonce: &[u8; 12], aad: &[u8]) -> GcmStream<'_> {
        let mut hash = self.hash.clone();
        hash.update_padded(aad);
        GcmStream {
            gcm: self,
            j0: Self::j0(nonce),
            hash,
            aad_len: aad.len(),
            len: 0,
            ended: false,
        }
    }

    /// Encrypts `buf` in place and returns the tag.
    ///
    /// # Panics
    /// If `buf` is longer than GCM allows (about 64 GiB); callers seal chunks of at most 16 MiB.
    pub fn encrypt_in_place(&self, nonce: &[u8; 12], aad: &[u8], buf: &mut [u8]) -> [u8; TAG_LEN] {
        let mut stream = self.stream(nonce, aad);
        stream.encrypt(buf);
        stream.tag()
    }

    /// Checks the tag and decrypts `buf` in place. On failure `buf` is zeroed, so no
    /// unauthenticated plaintext is left behind.
    pub fn decrypt_in_place(
        &self,
        nonce: &[u8; 12],
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), TagMismatch> {
        if buf.len() as u64 > MAX_MESSAGE {
            return Err(TagMismatch);
        }
        let mut stream = self.stream(nonce, aad);
        stream.decrypt(buf);
        stream.verify(tag).inspect_err(|_| buf.zeroize())
    }
}

/// One GCM message in progress (see [`Sm4Gcm::stream`]). Every piece but the last must be a
/// whole number of 16-byte blocks.
///
/// Decrypting piece by piece hands out plaintext before the tag is checked: the caller must keep
/// it from anyone until [`GcmStream::verify`] succeeds and destroy it otherwise (the engine
/// writes it to a temporary file that only appears once every chunk has passed).
pub struct GcmStream<'a> {
    gcm: &'a Sm4Gcm,
    j0: [u8; 16],
    hash: Ghash,
    aad_len: usize,
    len: usize,
    ended: bool,
}

impl GcmStream<'_> {
    fn take(&mut self, piece: usize) {
        assert!(
            !self.ended,
            "only the last piece of a GCM message may end inside a block"
        );
        assert!(
            (self.len + piece) as u64 <= MAX_MESSAGE,
            "a GCM message is limited to 2^32 - 2 blocks"
        );
        self.ended = !piece.is_multiple_of(16);
    }

    /// Encrypts the next piece of the message in place.
    ///
    /// # Panics
    /// If a piece follows one that was not a whole number of blocks, or the message grows
    /// beyond what GCM allows.
    pub fn encrypt(&mut self, piece: &mut [u8]) {
        self.take(piece.len());
        for segment in piece.chunks_mut(SEGMENT) {
            let counter = Sm4Gcm::counter_at(&self.j0, self.len);
            self.gcm.cipher.apply_ctr32(&counter, segment);
            self.hash.update_padded(segment);
            self.len += segment.len();
        }
    }

    /// Decrypts the next piece of the message in place (same rules as [`Self::encrypt`]).
    pub fn decrypt(&mut self, piece: &mut [u8]) {
        self.take(piece.len());
        for segment in piece.chunks_mut(SEGMENT) {
            self.hash.update_padded(segment);
            let counter = Sm4Gcm::counter_at(&self.j0, self.len);
            self.gcm.cipher.apply_ctr32(&counter, segment);
            self.len += segment.len();
        }
    }

    /// The tag of the message encrypted so far.
    pub fn tag(self) -> [u8; TAG_LEN] {
        self.gcm.tag(&self.j0, self.hash, self.aad_len, self.len)
    }

    /// Compares the message's tag with `tag` in constant time.
    pub fn verify(self, tag: &[u8; TAG_LEN]) -> Result<(), TagMismatch> {
        if bool::from(self.tag().ct_eq(tag)) {
            Ok(())
        } else {
            Err(TagMismatch)
        }
    }
}

impl std::fmt::Debug for Sm4Gcm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sm4Gcm({})", self.cipher.path().name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aes_gcm::aead::consts::U12;
    use aes_gcm::aead::{AeadInOut, KeyInit};

    type Reference = aes_gcm::AesGcm<sm4::Sm4, U12>;

    fn xorshift(seed: &mut u64) -> u8 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed as u8
    }

    /// Every SM4 path × both GHASH paths.
    fn all(key: &[u8; 16]) -> Vec<Sm4Gcm> {
        Sm4Path::available()
            .into_iter()
            .flat_map(|p| [true, false].map(|simd| Sm4Gcm::with_paths(key, p, simd).unwrap()))
            .collect()
    }

    #[test]
    fn matches_aes_gcm_over_the_portable_sm4_on_random_inputs() {
        let mut seed = 0x1234_5678;
        // Partial blocks; lengths around the 64-block SM4 step, the 16-block GHASH step and the
        // 16 KiB segment; nonces ending in all-ones bytes. (The 32-bit counter's wrap is tested on
        // `Sm4Fast::apply_ctr32`: with a 96-bit nonce it cannot wrap within one message.)
        for (round, len) in [
            0, 1, 15, 16, 17, 255, 256, 257, 1023, 1024, 1025, 4101, 16_383, 16_384, 16_385,
            65_539, 200_000,
        ]
        .into_iter()
        .enumerate()
        {
            let key: [u8; 16] = std::array::from_fn(|_| xorshift(&mut seed));
            let mut nonce: [u8; 12] = std::array::from_fn(|_| xorshift(&mut seed));
            if round % 3 == 0 {
                nonce[8..].copy_from_slice(&[0xff; 4]);
            }
            let aad: Vec<u8> = (0..(len * 7 + round) % 300)
                .map(|_| xorshift(&mut seed))
                .collect();
            let data: Vec<u8> = (0..len).map(|_| xorshift(&mut seed)).collect();
            let mut expected = data.clone();
            let expected_tag: [u8; 16] = Reference::new(&key.into())
                .encrypt_inout_detached(&nonce.into(), &aad, expected.as_mut_slice().into())
                .unwrap()
                .into();
            for gcm in all(&key) {
                let mut got = data.clone();
                let tag = gcm.encrypt_in_place(&nonce, &aad, &mut got);
                assert_eq!(
                    (got.as_slice(), tag),
                    (expected.as_slice(), expected_tag),
                    "{gcm:?}, {len} bytes"
                );
                gcm.decrypt_in_place(&nonce, &aad, &mut got, &tag).unwrap();
                assert_eq!(got, data, "{gcm:?}, {len} bytes");
            }
        }
    }

    #[test]
    fn a_message_in_pieces_is_the_message_whole() {
        let mut seed = 0x9e37_79b9;
        for len in [0usize, 5, 16, 1000, 16_384, 70_001, 300_000] {
            let key: [u8; 16] = std::array::from_fn(|_| xorshift(&mut seed));
            let nonce: [u8; 12] = std::array::from_fn(|_| xorshift(&mut seed));
            let data: Vec<u8> = (0..len).map(|_| xorshift(&mut seed)).collect();
            for gcm in all(&key) {
                let mut whole = data.clone();
                let tag = gcm.encrypt_in_place(&nonce, b"aad", &mut whole);
                // Pieces of random whole-block lengths (zero included), then the rest.
                let mut pieces = Vec::new();
                let mut at = 0;
                while at < len {
                    let n = (usize::from(xorshift(&mut seed)) * 16 * 7).min((len - at) / 16 * 16);
                    if n == 0 {
                        break;
                    }
                    pieces.push(at..at + n);
                    at += n;
                }
                pieces.push(at..len);
                let mut sealed = data.clone();
                let mut stream = gcm.stream(&nonce, b"aad");
                for piece in &pieces {
                    stream.encrypt(&mut sealed[piece.clone()]);
                }
                assert_eq!((&sealed, stream.tag()), (&whole, tag), "{gcm:?}, {len}");
                let mut stream = gcm.stream(&nonce, b"aad");
                for piece in &pieces {
                    stream.decrypt(&mut sealed[piece.clone()]);
                }
                assert_eq!(sealed, data, "{gcm:?}, {len}");
                stream.verify(&tag).unwrap();
                let mut stream = gcm.stream(&nonce, b"aad");
                stream.decrypt(&mut whole);
                let mut wrong = tag;
                wrong[0] ^= 1;
                assert_eq!(stream.verify(&wrong), Err(TagMismatch));
            }
        }
    }

    #[test]
    #[should_panic(expected = "only the last piece")]
    fn a_piece_after_a_partial_block_is_refused() {
        let gcm = Sm4Gcm::new(&[1; 16]);
        let mut stream = gcm.stream(&[0; 12], b"");
        stream.encrypt(&mut [0u8; 17]);
        stream.encrypt(&mut [0u8; 16]);
    }

    #[test]
    fn passes_the_rfc8998_vector_on_every_path() {
        let key: [u8; 16] = hex::decode("0123456789ABCDEFFEDCBA9876543210")
            .unwrap()
            .try_into()
            .unwrap();
        let nonce: [u8; 12] = hex::decode("00001234567800000000ABCD")
            .unwrap()
            .try_into()
            .unwrap();
        let aad = hex::decode("FEEDFACEDEADBEEFFEEDFACEDEADBEEFABADDAD2").unwrap();
        let plain = hex::decode("AAAAAAAAAAAAAAAABBBBBBBBBBBBBBBBCCCCCCCCCCCCCCCCDDDDDDDDDDDDDDDDEEEEEEEEEEEEEEEEFFFFFFFFFFFFFFFFEEEEEEEEEEEEEEEEAAAAAAAAAAAAAAAA").unwrap();
        for gcm in all(&key) {
            let mut buf = plain.clone();
            let tag = gcm.encrypt_in_place(&nonce, &aad, &mut buf);
            assert_eq!(
                hex::encode_upper(&buf),
                "17F399F08C67D5EE19D0DC9969C4BB7D5FD46FD3756489069157B282BB200735D82710CA5C22F0CCFA7CBF93D496AC15A56834CBCF98C397B4024A2691233B8D",
                "{gcm:?}"
            );
            assert_eq!(
                hex::encode_upper(tag),
                "83DE3541E4C2B58177E065A9BF7B62EC",
                "{gcm:?}"
            );
        }
    }

    #[test]
    fn refuses_any_change_and_leaves_no_plaintext() {
        let key = [9u8; 16];
        let nonce = [4u8; 12];
        let plain = vec![0x5a; 3000];
        for gcm in all(&key) {
            let mut sealed = plain.clone();
            let tag = gcm.encrypt_in_place(&nonce, b"aad", &mut sealed);
            for (what, mut buf, aad, nonce, tag) in [
                (
                    "a flipped byte",
                    flip(&sealed, 2999),
                    &b"aad"[..],
                    nonce,
                    tag,
                ),
                ("other AAD", sealed.clone(), &b"aae"[..], nonce, tag),
                ("another nonce", sealed.clone(), &b"aad"[..], [5; 12], tag),
                ("a flipped tag", sealed.clone(), &b"aad"[..], nonce, {
                    let mut t = tag;
                    t[15] ^= 0x80;
                    t
                }),
                (
                    "a shorter text",
                    sealed[..2998].to_vec(),
                    &b"aad"[..],
                    nonce,
                    tag,
                ),
            ] {
                assert_eq!(
                    gcm.decrypt_in_place(&nonce, aad, &mut buf, &tag),
                    Err(TagMismatch),
                    "{gcm:?}: {what}"
                );
                assert!(buf.iter().all(|&b| b == 0), "{gcm:?}: {what}");
            }
        }
    }

    fn flip(data: &[u8], at: usize) -> Vec<u8> {
        let mut d = data.to_vec();
        d[at] ^= 1;
        d
    }
}
