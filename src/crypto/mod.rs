//! The cryptography kaibiao uses, behind small functions with typed errors.
//!
//! - SM2 (GM/T 0003) keys in PKCS#8 / SPKI PEM or X.509 certificates, interchangeable with OpenSSL 3.
//! - SM2 public-key encryption of 128-bit file keys, written as GM/T 0009 `SM2Cipher` DER (C1C3C2).
//! - SM2 signatures with SM3 and the standard user ID `1234567812345678`, written as DER.
//! - Certificates checked against the CAs the platform trusts (SM2 with SM3, one step).
//! - SM4-GCM (RFC 8998) and the HKDF-SM3 key schedule of the sealed-bid container.

mod aead;
mod ca;
mod gcm;
mod keys;
mod simd;
mod trust;

pub use aead::{FileKey, hmac_sm3, open_in_place, seal_in_place, sm3};
pub use ca::LocalCa;
pub use gcm::{GcmStream, Sm4Gcm, TAG_LEN, TagMismatch};
pub use keys::{
    DIST_ID, KeyError, PublicIdentity, derive_secret_key, generate_secret_key, key_id,
    load_private_pem, load_public_pem, parse_public_der, private_key_pem, public_key_pem,
    random_bytes, sign, unwrap_key, verify, wrap_key,
};
pub use simd::ghash::Ghash;
pub use simd::sm3x16::{Sm3Batch, Sm3Lanes, sm3_many};
pub use simd::{Sm4Fast, Sm4Path};
pub use trust::{CertUsage, TrustError, TrustStore};
