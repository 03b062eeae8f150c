//! SM2 keys, key wrapping and signatures, in the encodings OpenSSL 3 and GmSSL use.

use sm2::dsa::signature::{Signer, Verifier};
use sm2::elliptic_curve::Generate;
use sm2::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, LineEnding,
};
use sm2::pke::{DecryptingKey, EncryptingKey, Mode};
use sm2::{PublicKey, SecretKey};
use x509_cert::der::{Decode, Encode};
use zeroize::Zeroizing;

use super::aead::sm3;

/// The standard SM2 user ID (GM/T 0009), used for every signature kaibiao makes or checks.
pub const DIST_ID: &str = "1234567812345678";

/// Why a key, certificate, wrapped key or signature could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(
        "this is not an SM2 private key in PKCS#8 PEM (as `openssl genpkey -algorithm SM2` writes): {0}"
    )]
    PrivateKey(String),
    #[error(
        "this is not an SM2 public key (SPKI PEM, as `openssl pkey -pubout` writes) or an X.509 certificate with an SM2 key: {0}"
    )]
    PublicKey(String),
    #[error(
        "the wrapped key could not be unwrapped with this private key (wrong key, or damaged data)"
    )]
    Unwrap,
    #[error("the wrapped key holds {0} bytes, but a file key has 16")]
    UnwrapLength(usize),
    #[error("the SM2 signature is not valid for this public key and message")]
    BadSignature,
    #[error("SM2 encryption failed: {0}")]
    Wrap(String),
    #[error("the system random number generator failed: {0}")]
    Random(String),
    #[error("the certificate could not be made: {0}")]
    Certificate(String),
}

/// A public key as presented by a bidder: a bare SPKI key or an X.509 certificate.
#[derive(Clone, Debug)]
pub enum PublicIdentity {
    PublicKey {
        key: PublicKey,
        spki_der: Vec<u8>,
    },
    Certificate {
        key: PublicKey,
        cert_der: Vec<u8>,
        subject: String,
        /// The text of each attribute of the subject (CN, O, OU, serialNumber, …, any string
        /// type, BMPString included), to match the enterprise it was issued to.
        subject_values: Vec<String>,
    },
}

impl PublicIdentity {
    pub fn key(&self) -> &PublicKey {
        match self {
            Self::PublicKey { key, .. } | Self::Certificate { key, .. } => key,
        }
    }

    /// Whether a certificate was issued to this enterprise: an attribute of its subject holds the
    /// unified social credit code (Chinese CAs put it in serialNumber, OU, CN or their own
    /// attribute), or is exactly the enterprise's name (CN or O). A bare public key names no one
    /// and is taken on the agent's word.
    /// Both are compared folded (full-width forms as half-width, no spaces, upper case), since
    /// CAs and agents write 有限公司（分公司） and 有限公司(分公司) alike.
    pub fn names_enterprise(&self, uscc: &str, name: &str) -> bool {
        match self {
            Self::PublicKey { .. } => true,
            Self::Certificate { subject_values, .. } => {
                let (uscc, name) = (fold(uscc), fold(name));
                subject_values.iter().map(|v| fold(v)).any(|v| {
                    (!uscc.is_empty() && v.contains(&uscc)) || (!name.is_empty() && v == name)
                })
            }
        }
    }

    /// Whether a certificate's subject carries the unified social credit code `uscc` itself: an
    /// attribute that is the code, or holds it between characters that are not letters or
    /// digits (`统一社会信用代码:9135…`). Stricter than [`Self::names_enterprise`], for what the
    /// bidder binds itself, without the agent looking. A bare key carries nothing.
    pub fn carries_code(&self, uscc: &str) -> bool {
        let Self::Certificate { subject_values, .. } = self else {
            return false;
        };
        let uscc = fold(uscc);
        // Folded as `fold` does, but keeping white space: `USCC 9144…` is the code after a label.
        let spaced = |v: &str| fold(&v.replace(char::is_whitespace, "-"));
        !uscc.is_empty()
            && subject_values.iter().map(|v| spaced(v)).any(|v| {
                v.match_indices(&uscc).any(|(at, _)| {
                    let before = v[..at].chars().next_back();
                    let after = v[at + uscc.len()..].chars().next();
                    ![before, after]
                        .into_iter()
                        .flatten()
                        .any(|c| c.is_ascii_alphanumeric())
                })
            })
    }

    /// A short human description: the certificate subject, or the key id.
    pub fn describe(&self) -> String {
        match self {
            Self::PublicKey { key, .. } => format!("SM2 public key {}", hex::encode(key_id(key))),
            Self::Certificate { subject, .. } => format!("certificate {subject}"),
        }
    }
}

/// A name or code as compared: full-width ASCII forms (（）Ａ１) as their half-width ones, without
/// any white space (the ideographic space too), ASCII letters in upper case.
fn fold(text: &str) -> String {
    text.chars()
        .filter(|c| !c.is_whitespace())
        .map(|c| match c {
            '\u{FF01}'..='\u{FF5E}' => char::from_u32(c as u32 - 0xFEE0).unwrap_or(c),
            _ => c,
        })
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

/// Fills a buffer from the operating system's random number generator.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], KeyError> {
    let mut out = [0u8; N];
    getrandom::fill(&mut out).map_err(|e| KeyError::Random(e.to_string()))?;
    Ok(out)
}

/// An SM2 private key derived from `seed` for one `purpose`: SM3 over the purpose, the seed and a
/// counter, the first digest that is a valid scalar (below the curve's order, not zero; a digest
/// fails that with probability about 2^-32). The same seed and purpose give the same key, so a key
/// derived from a secret kept elsewhere needs no storage of its own.
pub fn derive_secret_key(seed: &[u8], purpose: &str) -> SecretKey {
    (0u32..)
        .find_map(|counter| {
            let mut input = Zeroizing::new(Vec::with_capacity(purpose.len() + seed.len() + 5));
            input.extend_from_slice(purpose.as_bytes());
            input.push(0);
            input.extend_from_slice(seed);
            input.extend_from_slice(&counter.to_be_bytes());
            let digest = Zeroizing::new(sm3(&input));
            SecretKey::from_slice(digest.as_slice()).ok()
        })
        .expect("some counter gives a valid scalar")
}

pub fn generate_secret_key() -> SecretKey {
    SecretKey::generate()
}

/// Reads an SM2 private key from PKCS#8 PEM (also accepts SEC1 `EC PRIVATE KEY` PEM).
pub fn load_private_pem(text: &str) -> Result<SecretKey, KeyError> {
    SecretKey::from_pkcs8_pem(text)
        .or_else(|_| SecretKey::from_sec1_pem(text))
        .map_err(|e| KeyError::PrivateKey(e.to_string()))
}

pub fn private_key_pem(key: &SecretKey) -> Result<Zeroizing<String>, KeyError> {
    key.to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| KeyError::PrivateKey(e.to_string()))
}

pub fn public_key_pem(key: &PublicKey) -> Result<String, KeyError> {
    key.to_public_key_pem(LineEnding::LF)
        .map_err(|e| KeyError::PublicKey(e.to_string()))
}

const PEM_BEGIN: &str = "-----BEGIN CERTIFICATE-----";
const PEM_END: &str = "-----END CERTIFICATE-----";

/// The DER bytes of each PEM certificate in `text`, as the CA encoded them (other text around
/// them is skipped). Kept as they are, never decoded and encoded again: an encoder may write a
/// field otherwise (`x509-cert` writes a GeneralizedTime before 2050 as UTCTime), and the CA's
/// signature covers the bytes it wrote.
pub(crate) fn certificate_ders(text: &str) -> Result<Vec<Vec<u8>>, String> {
    let mut ders = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(PEM_BEGIN) {
        let block = &rest[start..];
        let end = block.find(PEM_END).ok_or("a certificate has no END line")? + PEM_END.len();
        let (label, der) =
            x509_cert::der::pem::decode_vec(&block.as_bytes()[..end]).map_err(|e| e.to_string())?;
        if label != "CERTIFICATE" {
            return Err(format!("a {label} block where a certificate was expected"));
        }
        ders.push(der);
        rest = &block[end..];
    }
    Ok(ders)
}

/// Reads an SPKI public key or an X.509 certificate from PEM.
pub fn load_public_pem(text: &str) -> Result<PublicIdentity, KeyError> {
    if text.contains(PEM_BEGIN) {
        let der = certificate_ders(text)
            .map_err(|e| KeyError::PublicKey(format!("X.509 certificate: {e}")))?
            .into_iter()
            .next()
            .ok_or_else(|| KeyError::PublicKey("X.509 certificate: no END line".into()))?;
        let cert = x509_cert::Certificate::from_der(&der)
            .map_err(|e| KeyError::PublicKey(format!("X.509 certificate: {e}")))?;
        return identity_from_certificate(&cert, der);
    }
    let key =
        PublicKey::from_public_key_pem(text).map_err(|e| KeyError::PublicKey(e.to_string()))?;
    let spki_der = key
        .to_public_key_der()
        .map_err(|e| KeyError::PublicKey(e.to_string()))?
        .into_vec();
    Ok(PublicIdentity::PublicKey { key, spki_der })
}

/// Reads an identity from DER: `certificate` selects X.509, otherwise SPKI.
pub fn parse_public_der(der: &[u8], certificate: bool) -> Result<PublicIdentity, KeyError> {
    if certificate {
        let cert = x509_cert::Certificate::from_der(der)
            .map_err(|e| KeyError::PublicKey(format!("X.509 certificate: {e}")))?;
        return identity_from_certificate(&cert, der.to_vec());
    }
    let key =
        PublicKey::from_public_key_der(der).map_err(|e| KeyError::PublicKey(e.to_string()))?;
    Ok(PublicIdentity::PublicKey {
        key,
        spki_der: der.to_vec(),
    })
}

fn identity_from_certificate(
    cert: &x509_cert::Certificate,
    cert_der: Vec<u8>,
) -> Result<PublicIdentity, KeyError> {
    let tbs = cert.tbs_certificate();
    let spki_der = tbs
        .subject_public_key_info()
        .to_der()
        .map_err(|e| KeyError::PublicKey(e.to_string()))?;
    let key = PublicKey::from_public_key_der(&spki_der)
        .map_err(|e| KeyError::PublicKey(format!("the certificate's key is not SM2: {e}")))?;
    let subject_values = tbs
        .subject()
        .iter()
        .filter_map(|attribute| attribute_text(&attribute.value))
        .collect();
    Ok(PublicIdentity::Certificate {
        key,
        cert_der,
        subject: tbs.subject().to_string(),
        subject_values,
    })
}

/// The text of a name's attribute value, whatever string type holds it (BMPString included).
pub(crate) fn attribute_text(value: &x509_cert::der::Any) -> Option<String> {
    x509_cert::ext::pkix::name::DirectoryString::try_from(value)
        .ok()
        .map(|s| s.value().into_owned())
        .or_else(|| {
            x509_cert::der::asn1::Ia5StringRef::try_from(value)
                .ok()
                .map(|s| s.as_str().to_owned())
        })
}

/// The recipient key id: SM3 of the uncompressed SEC1 encoding `04 ‖ x ‖ y` of the public key.
pub fn key_id(key: &PublicKey) -> [u8; 32] {
    sm3(&key.to_sec1_bytes())
}

/// Wraps a file key to an SM2 public key, as GM/T 0009 `SM2Cipher` DER (C1C3C2).
pub fn wrap_key(recipient: &PublicKey, file_key: &[u8; 16]) -> Result<Vec<u8>, KeyError> {
    let mut rng = getrandom::SysRng;
    EncryptingKey::new(*recipient)
        .encrypt_der(&mut rng, file_key)
        .map_err(|e| KeyError::Wrap(e.to_string()))
}

/// Unwraps a file key. A forgiving reader: DER `SM2Cipher`, or raw C1C3C2 / C1C2C3 with or without
/// the `04` point prefix, as other SM2 libraries write them.
pub fn unwrap_key(key: &SecretKey, wrapped: &[u8]) -> Result<Zeroizing<[u8; 16]>, KeyError> {
    let plain = Zeroizing::new(unwrap_any(key, wrapped)?);
    let raw: [u8; 16] = plain
        .as_slice()
        .try_into()
        .map_err(|_| KeyError::UnwrapLength(plain.len()))?;
    Ok(Zeroizing::new(raw))
}

fn unwrap_any(key: &SecretKey, wrapped: &[u8]) -> Result<Vec<u8>, KeyError> {
    let c1c3c2 = DecryptingKey::new(key.clone());
    if wrapped.first() == Some(&0x30)
        && let Ok(plain) = c1c3c2.decrypt_der(wrapped)
    {
        return Ok(plain);
    }
    // A raw ciphertext is C1 (64 or 65 bytes) + 32-byte hash + the message.
    let mut raw = wrapped.to_vec();
    if raw.first() != Some(&0x04) || raw.len() == 64 + 32 + 16 {
        raw.insert(0, 0x04);
    }
    if let Ok(plain) = c1c3c2.decrypt(&raw) {
        return Ok(plain);
    }
    let c1c2c3 = DecryptingKey::new_with_mode(key.to_nonzero_scalar(), Mode::C1C2C3);
    c1c2c3.decrypt(&raw).map_err(|_| KeyError::Unwrap)
}

/// Signs `message` with SM2/SM3 and the standard user ID; the signature is DER.
pub fn sign(key: &SecretKey, message: &[u8]) -> Result<Vec<u8>, KeyError> {
    let signer =
        sm2::dsa::SigningKey::new(DIST_ID, key).map_err(|e| KeyError::PrivateKey(e.to_string()))?;
    let signature: sm2::dsa::Signature = signer.sign(message);
    Ok(signature.to_der().to_vec())
}

/// Verifies an SM2/SM3 signature with the standard user ID; accepts DER or raw `r ‖ s`.
pub fn verify(key: &PublicKey, message: &[u8], signature: &[u8]) -> Result<(), KeyError> {
    let verifier = sm2::dsa::VerifyingKey::new(DIST_ID, *key)
        .map_err(|e| KeyError::PublicKey(e.to_string()))?;
    let signature = if signature.len() == 64 {
        sm2::dsa::Signature::from_slice(signature)
    } else {
        sm2::dsa::Signature::from_der(signature)
    }
    .map_err(|_| KeyError::BadSignature)?;
    verifier
        .verify(message, &signature)
        .map_err(|_| KeyError::BadSignature)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_enterprise_is_named_whatever_width_its_brackets_and_spaces() {
        let cert = |values: &[&str]| PublicIdentity::Certificate {
            key: generate_secret_key().public_key(),
            cert_der: Vec::new(),
            subject: String::new(),
            subject_values: values.iter().map(|v| v.to_string()).collect(),
        };
        let name = "深圳市测试科技有限公司（南山分公司）";
        let uscc = "91440300MA5F00000X";
        assert!(cert(&["深圳市测试科技有限公司(南山分公司)"]).names_enterprise(uscc, name));
        assert!(cert(&["深圳市测试科技有限公司 （南山分公司） "]).names_enterprise(uscc, name));
        assert!(cert(&["91440300ma5f00000x"]).names_enterprise(uscc, name));
        assert!(cert(&["ＳＮ：９１４４０３００ＭＡ５Ｆ０００００Ｘ"]).names_enterprise(uscc, name));
        assert!(!cert(&["深圳市测试科技有限公司"]).names_enterprise(uscc, name));
        assert!(!cert(&["91440300MA5F00001Y"]).names_enterprise(uscc, name));
        assert!(!cert(&[""]).names_enterprise("", ""), "empty names no one");

        // What a bidder binds itself must carry the code, as a whole.
        assert!(cert(&["91440300MA5F00000X"]).carries_code(uscc));
        assert!(cert(&["ＳＮ：９１４４０３００ＭＡ５Ｆ０００００Ｘ"]).carries_code(uscc));
        assert!(cert(&["统一社会信用代码:91440300ma5f00000x;"]).carries_code(uscc));
        assert!(cert(&["USCC 91440300MA5F00000X"]).carries_code(uscc));
        assert!(
            !cert(&["9144 0300 MA5F 0000 0X"]).carries_code(uscc),
            "the code whole"
        );
        assert!(!cert(&[name]).carries_code(uscc), "the name is not enough");
        assert!(!cert(&["A91440300MA5F00000X"]).carries_code(uscc));
        assert!(!cert(&["91440300MA5F00000X1"]).carries_code(uscc));
        assert!(!cert(&[""]).carries_code(""));
        let bare = PublicIdentity::PublicKey {
            key: generate_secret_key().public_key(),
            spki_der: Vec::new(),
        };
        assert!(!bare.carries_code(uscc));
    }

    #[test]
    fn wrap_unwrap_and_wrong_key() {
        let alice = generate_secret_key();
        let bob = generate_secret_key();
        let wrapped = wrap_key(&alice.public_key(), &[7; 16]).unwrap();
        assert_eq!(wrapped[0], 0x30);
        assert_eq!(*unwrap_key(&alice, &wrapped).unwrap(), [7; 16]);
        assert!(unwrap_key(&bob, &wrapped).is_err());
    }

    #[test]
    fn unwraps_raw_forms_of_other_libraries() {
        let key = generate_secret_key();
        let mut rng = getrandom::SysRng;
        let enc = EncryptingKey::new(key.public_key());
        let raw = enc.encrypt(&mut rng, &[5; 16]).unwrap();
        assert_eq!(*unwrap_key(&key, &raw).unwrap(), [5; 16]);
        assert_eq!(*unwrap_key(&key, &raw[1..]).unwrap(), [5; 16]);
        let old = EncryptingKey::new_with_mode(key.public_key(), Mode::C1C2C3)
            .encrypt(&mut rng, &[6; 16])
            .unwrap();
        assert_eq!(*unwrap_key(&key, &old[1..]).unwrap(), [6; 16]);
    }

    #[test]
    fn sign_verify_with_standard_id() {
        let key = generate_secret_key();
        let sig = sign(&key, b"message").unwrap();
        verify(&key.public_key(), b"message", &sig).unwrap();
        assert!(verify(&key.public_key(), b"other", &sig).is_err());
        let raw = sm2::dsa::Signature::from_der(&sig).unwrap().to_bytes();
        verify(&key.public_key(), b"message", &raw).unwrap();
    }

    #[test]
    fn pem_round_trip() {
        let key = generate_secret_key();
        let pem = private_key_pem(&key).unwrap();
        assert_eq!(load_private_pem(&pem).unwrap(), key);
        let public = public_key_pem(&key.public_key()).unwrap();
        assert_eq!(*load_public_pem(&public).unwrap().key(), key.public_key());
    }
}
