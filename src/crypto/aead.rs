//! SM4-GCM and the key schedule of a sealed bid.

use hkdf::Hkdf;
use sm3::{Digest, Sm3};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

pub use super::gcm::{Sm4Gcm, TAG_LEN, TagMismatch};

const INFO_BODY: &[u8] = b"kaibiao v1 body key";
const INFO_SUMMARY: &[u8] = b"kaibiao v1 summary key";
const INFO_COMMITMENT: &[u8] = b"kaibiao v1 key commitment";

/// SM3 of `data`.
pub fn sm3(data: &[u8]) -> [u8; 32] {
    Sm3::digest(data).into()
}

/// Encrypts `buf` in place with SM4-GCM and returns the tag.
pub fn seal_in_place(
    cipher: &Sm4Gcm,
    nonce: &[u8; 12],
    aad: &[u8],
    buf: &mut [u8],
) -> [u8; TAG_LEN] {
    // GCM refuses only messages longer than 2^36 bytes; chunks are at most 16 MiB.
    cipher.encrypt_in_place(nonce, aad, buf)
}

/// Checks the tag and decrypts `buf` in place; on failure `buf` is zeroed.
pub fn open_in_place(
    cipher: &Sm4Gcm,
    nonce: &[u8; 12],
    aad: &[u8],
    buf: &mut [u8],
    tag: &[u8],
) -> Result<(), TagMismatch> {
    let tag: &[u8; TAG_LEN] = tag.try_into().map_err(|_| TagMismatch)?;
    cipher.decrypt_in_place(nonce, aad, buf, tag)
}

/// HMAC-SM3 (RFC 2104 with SM3, GM/T 0042) of `message` under `key`.
pub fn hmac_sm3(key: &[u8], message: &[u8]) -> [u8; 32] {
    use hmac::{KeyInit, Mac};
    let mut mac = hmac::Hmac::<Sm3>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(message);
    mac.finalize().into_bytes().into()
}

/// A bid's 128-bit file key together with the keys derived from it.
///
/// The raw key is zeroized on drop and never printed by `Debug`.
pub struct FileKey {
    raw: Zeroizing<[u8; 16]>,
    commitment: [u8; 32],
    body: Sm4Gcm,
    summary: Sm4Gcm,
}

impl FileKey {
    /// Derives the body key, summary key and key commitment from a file key and the bid's salt.
    pub fn derive(raw: [u8; 16], salt: &[u8; 32]) -> Self {
        let raw = Zeroizing::new(raw);
        let hkdf = Hkdf::<Sm3>::new(Some(salt), raw.as_slice());
        let mut body = Zeroizing::new([0u8; 16]);
        let mut summary = Zeroizing::new([0u8; 16]);
        let mut commitment = [0u8; 32];
        // Lengths of 16 and 32 bytes are far below HKDF's limit of 255 × 32: expand cannot fail.
        for (info, out) in [
            (INFO_BODY, body.as_mut_slice()),
            (INFO_SUMMARY, summary.as_mut_slice()),
            (INFO_COMMITMENT, commitment.as_mut_slice()),
        ] {
            hkdf.expand(info, out)
                .expect("HKDF-SM3 output length is valid");
        }
        Self {
            raw,
            commitment,
            body: Sm4Gcm::new(&body),
            summary: Sm4Gcm::new(&summary),
        }
    }

    /// The commitment stored in the header, which binds the container to this key.
    pub fn commitment(&self) -> &[u8; 32] {
        &self.commitment
    }

    /// Compares this key's commitment with a stored one in constant time.
    pub fn matches_commitment(&self, stored: &[u8; 32]) -> bool {
        self.commitment.ct_eq(stored).into()
    }

    pub fn raw(&self) -> &[u8; 16] {
        &self.raw
    }

    pub fn body_cipher(&self) -> &Sm4Gcm {
        &self.body
    }

    pub fn summary_cipher(&self) -> &Sm4Gcm {
        &self.summary
    }
}

impl std::fmt::Debug for FileKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FileKey(<secret>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sm4::cipher::{BlockCipherEncrypt, KeyInit};

    fn unhex(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    #[test]
    fn sm4_gbt32907_single_block() {
        let key = unhex("0123456789abcdeffedcba9876543210");
        let cipher = sm4::Sm4::new_from_slice(&key).unwrap();
        let mut block = sm4::cipher::Block::<sm4::Sm4>::try_from(key.as_slice()).unwrap();
        cipher.encrypt_block(&mut block);
        assert_eq!(hex::encode(block), "681edf34d206965e86b3e94f536e4246");
    }

    #[test]
    fn sm4_gbt32907_one_million_iterations() {
        let key = unhex("0123456789abcdeffedcba9876543210");
        let cipher = sm4::Sm4::new_from_slice(&key).unwrap();
        let mut block = sm4::cipher::Block::<sm4::Sm4>::try_from(key.as_slice()).unwrap();
        for _ in 0..1_000_000 {
            cipher.encrypt_block(&mut block);
        }
        assert_eq!(hex::encode(block), "595298c7c6fd271f0402f804c33d3f66");
    }

    #[test]
    fn sm4_gcm_rfc8998_a1() {
        let key = unhex("0123456789ABCDEFFEDCBA9876543210");
        let nonce = unhex("00001234567800000000ABCD");
        let aad = unhex("FEEDFACEDEADBEEFFEEDFACEDEADBEEFABADDAD2");
        let plaintext = unhex(
            "AAAAAAAAAAAAAAAABBBBBBBBBBBBBBBBCCCCCCCCCCCCCCCCDDDDDDDDDDDDDDDDEEEEEEEEEEEEEEEEFFFFFFFFFFFFFFFFEEEEEEEEEEEEEEEEAAAAAAAAAAAAAAAA",
        );
        let cipher = Sm4Gcm::new(&key.try_into().unwrap());
        let mut buffer = plaintext.clone();
        let nonce: [u8; 12] = nonce.try_into().unwrap();
        let tag = seal_in_place(&cipher, &nonce, &aad, &mut buffer);
        assert_eq!(
            hex::encode_upper(&buffer),
            "17F399F08C67D5EE19D0DC9969C4BB7D5FD46FD3756489069157B282BB200735D82710CA5C22F0CCFA7CBF93D496AC15A56834CBCF98C397B4024A2691233B8D"
        );
        assert_eq!(hex::encode_upper(tag), "83DE3541E4C2B58177E065A9BF7B62EC");
        let mut tampered = buffer.clone();
        open_in_place(&cipher, &nonce, &aad, &mut buffer, &tag).unwrap();
        assert_eq!(buffer, plaintext);
        tampered[0] ^= 1;
        assert!(open_in_place(&cipher, &nonce, &aad, &mut tampered, &tag).is_err());
    }

    #[test]
    fn sm3_vectors() {
        // GB/T 32905-2016 appendix A.
        assert_eq!(
            hex::encode(sm3(b"abc")),
            "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0"
        );
        assert_eq!(
            hex::encode(sm3(&b"abcd".repeat(16))),
            "debe9ff92275b8a138604889c18e5a4d6fdb70e5387e5765293dcba39c0c5732"
        );
    }

    #[test]
    fn commitment_differs_per_key_and_salt() {
        let a = FileKey::derive([1; 16], &[0; 32]);
        let b = FileKey::derive([2; 16], &[0; 32]);
        let c = FileKey::derive([1; 16], &[9; 32]);
        assert!(a.matches_commitment(a.commitment()));
        assert!(!a.matches_commitment(b.commitment()));
        assert!(!a.matches_commitment(c.commitment()));
    }
}
