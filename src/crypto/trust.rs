//! Whether a bidder's certificate was issued by a CA the platform trusts (CA 互认).
//!
//! Written here because no well-kept crate validates X.509 certificates signed with SM2: the
//! RustCrypto `x509-cert` crate parses them but validates nothing, and the path validators of the
//! Rust ecosystem (webpki, rustls) know only the RSA, ECDSA and EdDSA of the web PKI. What is
//! checked is the part RFC 5280's path validation needs for one step, leaf ← configured CA, since
//! every certificate the operator configures (root or intermediate) is a trust anchor:
//! - the signature algorithm is SM2 with SM3, and the CA's signature over the certificate's
//!   `tbsCertificate`, as encoded, verifies (GM/T 0015: with the standard user ID; OpenSSL 3.0
//!   signs certificates with an empty one unless told otherwise, so that is accepted too);
//! - the certificate and its CA are valid at the time asked about;
//! - the CA is a CA (basicConstraints cA, keyCertSign where keyUsage is given), the certificate
//!   is not, and its key usage (where given) allows what it is registered for;
//! - no critical extension is left that is not understood.
//!
//! Revocation (CRL, OCSP) is not checked: the CAs' services are not reachable from here.

use std::path::Path;
use std::time::Duration;

use sm2::PublicKey;
use sm2::dsa::signature::Verifier;
use sm2::pkcs8::DecodePublicKey;
use x509_cert::Certificate;
use x509_cert::der::asn1::ObjectIdentifier;
use x509_cert::der::{Decode, Encode, Header, Reader, SliceReader};
use x509_cert::ext::pkix::{
    AuthorityKeyIdentifier, BasicConstraints, KeyUsage, SubjectKeyIdentifier,
};

use super::keys::DIST_ID;

/// SM2 signature with SM3 (GM/T 0006).
const SM2_WITH_SM3: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.156.10197.1.501");

/// Extensions whose meaning is handled here (or, for a policy or an alternative name, that
/// restricts nothing this platform relies on), so that marking them critical does not refuse
/// the certificate: basicConstraints, keyUsage, subjectAltName, certificatePolicies,
/// subjectKeyIdentifier, authorityKeyIdentifier. A critical extKeyUsage is not among them: it
/// limits the key to purposes this platform does not check.
const UNDERSTOOD: [&str; 6] = [
    "2.5.29.19",
    "2.5.29.15",
    "2.5.29.17",
    "2.5.29.32",
    "2.5.29.14",
    "2.5.29.35",
];

/// How far the hall's clock may be behind the CA's: a certificate issued a moment ago is valid.
const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

/// What a bidder's certificate is registered for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertUsage {
    /// Signing bids and the phone's answers (签名证书).
    Sign,
    /// Receiving the wrapped file key (加密证书).
    Encrypt,
}

impl CertUsage {
    fn describe(self) -> &'static str {
        match self {
            Self::Sign => "sign (签名证书)",
            Self::Encrypt => "decrypt (加密证书)",
        }
    }

    fn allowed_by(self, usage: &KeyUsage) -> bool {
        match self {
            Self::Sign => usage.digital_signature() || usage.non_repudiation(),
            Self::Encrypt => {
                usage.key_encipherment() || usage.data_encipherment() || usage.key_agreement()
            }
        }
    }
}

/// Why a certificate is not accepted, or the trusted CAs could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("the trusted CA file {path} could not be read: {reason}")]
    CaFile { path: String, reason: String },
    #[error(
        "the trusted CA file holds no certificate: put the PEM certificates (-----BEGIN CERTIFICATE-----) of the CAs whose certificates this platform accepts in it"
    )]
    NoCertificates,
    #[error(
        "{subject} in the trusted CA file cannot be a trust anchor: {reason}; list only the certificates of SM2 CAs there"
    )]
    BadCa { subject: String, reason: String },
    #[error("this is not an X.509 certificate: {0}")]
    Parse(String),
    #[error(
        "a bare public key names no CA, and this platform accepts only certificates issued by a CA it trusts: the bidder's certificates are to be registered instead (the tender agent's 补充或更新证书)"
    )]
    BareKey,
    #[error(
        "the certificate {subject} was issued by {issuer}, a CA this platform does not trust: register a certificate from a CA it accepts ({trusted}), or ask the platform's operator to add that CA"
    )]
    UnknownIssuer {
        subject: String,
        issuer: String,
        trusted: String,
    },
    #[error(
        "the certificate {subject} names {issuer} as its CA, but that CA's signature on it does not verify: the certificate is forged or damaged; ask the CA for the real one"
    )]
    BadSignature { subject: String, issuer: String },
    #[error(
        "the certificate {subject} is signed with {algorithm}, not SM2 with SM3 (1.2.156.10197.1.501): register an SM2 certificate"
    )]
    Algorithm { subject: String, algorithm: String },
    #[error(
        "the certificate {subject} expired at {not_after} (证书已过期; it was valid from {not_before}): renew it with the CA and have the renewed certificate registered (the tender agent's 补充或更新证书); a renewal that changed the key also needs the bid sealed again"
    )]
    Expired {
        subject: String,
        not_before: String,
        not_after: String,
    },
    #[error(
        "the certificate {subject} is valid only from {not_before} (证书尚未生效), and it is {at}: wait until then, or check the clock of whoever issued it"
    )]
    NotYetValid {
        subject: String,
        not_before: String,
        at: String,
    },
    #[error(
        "the certificate of the CA {subject} is valid from {not_before} to {not_after}, not at {at}: the platform's operator must replace it in the trusted CA file"
    )]
    CaOutsideValidity {
        subject: String,
        not_before: String,
        not_after: String,
        at: String,
    },
    #[error(
        "the certificate {subject} may not be used to {usage}: its key usage does not allow it; register the enterprise's certificate for that use"
    )]
    WrongUsage {
        subject: String,
        usage: &'static str,
    },
    #[error(
        "the certificate {subject} is a CA's certificate, not an enterprise's: register the certificate the CA issued to the bidder"
    )]
    IsCa { subject: String },
    #[error(
        "the certificate {subject} has a critical extension ({oid}) this platform does not understand, so it cannot accept it (RFC 5280)"
    )]
    UnknownCritical { subject: String, oid: String },
}

/// A CA the platform trusts.
#[derive(Clone, Debug)]
struct Anchor {
    subject: String,
    name_der: Vec<u8>,
    /// The name as compared when encodings differ ([`name_key`]).
    name_key: String,
    key: PublicKey,
    key_id: Option<Vec<u8>>,
    validity: (Duration, Duration),
}

/// The CAs whose certificates bidders may register (the operator's `trusted_cas` file).
#[derive(Clone, Debug)]
pub struct TrustStore {
    anchors: Vec<Anchor>,
}

impl TrustStore {
    /// Reads a PEM file of CA certificates.
    pub fn load(path: &Path) -> Result<Self, TrustError> {
        let text = std::fs::read(path).map_err(|e| TrustError::CaFile {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Self::from_pem(&text).map_err(|e| match e {
            TrustError::Parse(reason) => TrustError::CaFile {
                path: path.display().to_string(),
                reason,
            },
            other => other,
        })
    }

    /// Every certificate in `pem` becomes a trust anchor; each must be an SM2 CA's. A
    /// self-signed one must carry its own valid signature (a damaged root is refused here rather
    /// than refusing every certificate it issued).
    pub fn from_pem(pem: &[u8]) -> Result<Self, TrustError> {
        let text = String::from_utf8_lossy(pem);
        let ders = super::keys::certificate_ders(&text).map_err(TrustError::Parse)?;
        if ders.is_empty() {
            return Err(TrustError::NoCertificates);
        }
        let anchors = ders
            .iter()
            .map(|der| {
                let parsed = Parsed::new(der)?;
                let subject = parsed.subject.clone();
                let bad = |reason: &str| TrustError::BadCa {
                    subject: subject.clone(),
                    reason: reason.to_owned(),
                };
                let tbs = parsed.cert.tbs_certificate();
                let is_ca = tbs
                    .get_extension::<BasicConstraints>()
                    .map_err(|_| bad("its basicConstraints cannot be read"))?
                    .is_some_and(|(_, bc)| bc.ca);
                if !is_ca {
                    return Err(bad("it is not a CA's certificate (no basicConstraints cA)"));
                }
                if let Some((_, usage)) = tbs
                    .get_extension::<KeyUsage>()
                    .map_err(|_| bad("its keyUsage cannot be read"))?
                    && !usage.key_cert_sign()
                {
                    return Err(bad("its key usage does not allow signing certificates"));
                }
                let key = parsed.key().map_err(|_| bad("its key is not an SM2 key"))?;
                let name_der = tbs
                    .subject()
                    .to_der()
                    .map_err(|e| TrustError::Parse(e.to_string()))?;
                let self_signed = tbs.issuer() == tbs.subject();
                if self_signed {
                    parsed.check_algorithm()?;
                    if !parsed.signed_by(&key) {
                        return Err(bad("its own signature does not verify (damaged)"));
                    }
                }
                let key_id = tbs
                    .get_extension::<SubjectKeyIdentifier>()
                    .ok()
                    .flatten()
                    .map(|(_, ski)| ski.0.as_bytes().to_vec());
                Ok(Anchor {
                    subject,
                    name_key: name_key(tbs.subject()),
                    name_der,
                    key,
                    key_id,
                    validity: parsed.validity(),
                })
            })
            .collect::<Result<Vec<_>, TrustError>>()?;
        Ok(Self { anchors })
    }

    /// The trusted CAs' names, for messages.
    pub fn describe(&self) -> String {
        self.anchors
            .iter()
            .map(|a| a.subject.as_str())
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// How many CAs are trusted.
    pub fn len(&self) -> usize {
        self.anchors.len()
    }

    /// Never true: a store holds at least one CA.
    pub fn is_empty(&self) -> bool {
        self.anchors.is_empty()
    }

    /// Checks that the DER certificate `cert_der` was issued by a trusted CA, may be used for
    /// `usage`, and that both are valid at `at` (time since the Unix epoch).
    pub fn check(&self, cert_der: &[u8], usage: CertUsage, at: Duration) -> Result<(), TrustError> {
        let parsed = Parsed::new(cert_der)?;
        let subject = parsed.subject.clone();
        parsed.check_algorithm()?;
        parsed.check_extensions()?;
        let tbs = parsed.cert.tbs_certificate();
        if tbs
            .get_extension::<BasicConstraints>()
            .map_err(|e| TrustError::Parse(format!("its basicConstraints: {e}")))?
            .is_some_and(|(_, bc)| bc.ca)
        {
            return Err(TrustError::IsCa { subject });
        }
        if let Some((_, key_usage)) = tbs
            .get_extension::<KeyUsage>()
            .map_err(|e| TrustError::Parse(format!("its keyUsage: {e}")))?
            && !usage.allowed_by(&key_usage)
        {
            return Err(TrustError::WrongUsage {
                subject,
                usage: usage.describe(),
            });
        }
        let (not_before, not_after) = parsed.validity();
        if at + CLOCK_SKEW < not_before {
            return Err(TrustError::NotYetValid {
                subject,
                not_before: beijing(not_before),
                at: beijing(at),
            });
        }
        if at > not_after {
            return Err(TrustError::Expired {
                subject,
                not_before: beijing(not_before),
                not_after: beijing(not_after),
            });
        }
        let issuer_der = tbs
            .issuer()
            .to_der()
            .map_err(|e| TrustError::Parse(e.to_string()))?;
        let authority_key = tbs
            .get_extension::<AuthorityKeyIdentifier>()
            .ok()
            .flatten()
            .and_then(|(_, aki)| aki.key_identifier.map(|id| id.as_bytes().to_vec()));
        let candidates: Vec<&Anchor> = self
            .anchors
            .iter()
            // The same name, encoded alike or in other string types or case (RFC 5280 §7.1
            // compares names so); the signature below decides.
            .filter(|a| a.name_der == issuer_der || a.name_key == name_key(tbs.issuer()))
            .filter(|a| match (&authority_key, &a.key_id) {
                (Some(wanted), Some(has)) => wanted == has,
                _ => true,
            })
            .collect();
        if candidates.is_empty() {
            return Err(TrustError::UnknownIssuer {
                subject,
                issuer: tbs.issuer().to_string(),
                trusted: self.describe(),
            });
        }
        let Some(anchor) = candidates.into_iter().find(|a| parsed.signed_by(&a.key)) else {
            return Err(TrustError::BadSignature {
                subject,
                issuer: tbs.issuer().to_string(),
            });
        };
        let (ca_from, ca_until) = anchor.validity;
        if at + CLOCK_SKEW < ca_from || at > ca_until {
            return Err(TrustError::CaOutsideValidity {
                subject: anchor.subject.clone(),
                not_before: beijing(ca_from),
                not_after: beijing(ca_until),
                at: beijing(at),
            });
        }
        Ok(())
    }
}

/// A certificate and the bytes its signature covers.
struct Parsed<'a> {
    der: &'a [u8],
    cert: Certificate,
    subject: String,
}

impl<'a> Parsed<'a> {
    fn new(der: &'a [u8]) -> Result<Self, TrustError> {
        let cert = Certificate::from_der(der).map_err(|e| TrustError::Parse(e.to_string()))?;
        let subject = cert.tbs_certificate().subject().to_string();
        Ok(Self { der, cert, subject })
    }

    fn key(&self) -> Result<PublicKey, TrustError> {
        let spki = self
            .cert
            .tbs_certificate()
            .subject_public_key_info()
            .to_der()
            .map_err(|e| TrustError::Parse(e.to_string()))?;
        PublicKey::from_public_key_der(&spki).map_err(|e| TrustError::Parse(e.to_string()))
    }

    fn validity(&self) -> (Duration, Duration) {
        let validity = self.cert.tbs_certificate().validity();
        (
            validity.not_before.to_unix_duration(),
            validity.not_after.to_unix_duration(),
        )
    }

    fn check_algorithm(&self) -> Result<(), TrustError> {
        for algorithm in [
            &self.cert.signature_algorithm().oid,
            &self.cert.tbs_certificate().signature().oid,
        ] {
            if *algorithm != SM2_WITH_SM3 {
                return Err(TrustError::Algorithm {
                    subject: self.subject.clone(),
                    algorithm: algorithm.to_string(),
                });
            }
        }
        Ok(())
    }

    fn check_extensions(&self) -> Result<(), TrustError> {
        let extensions = self.cert.tbs_certificate().extensions();
        for extension in extensions.into_iter().flatten() {
            let oid = extension.extn_id.to_string();
            if extension.critical && !UNDERSTOOD.contains(&oid.as_str()) {
                return Err(TrustError::UnknownCritical {
                    subject: self.subject.clone(),
                    oid,
                });
            }
        }
        Ok(())
    }

    /// Whether `key` signed this certificate's `tbsCertificate`, as it is encoded in the
    /// certificate (not re-encoded), with the standard user ID or OpenSSL 3.0's empty one.
    fn signed_by(&self, key: &PublicKey) -> bool {
        let Ok(tbs) = tbs_bytes(self.der) else {
            return false;
        };
        let Some(signature) = self
            .cert
            .signature()
            .as_bytes()
            .and_then(|der| sm2::dsa::Signature::from_der(der).ok())
        else {
            return false;
        };
        [DIST_ID, ""].into_iter().any(|id| {
            sm2::dsa::VerifyingKey::new(id, *key)
                .is_ok_and(|verifier| verifier.verify(tbs, &signature).is_ok())
        })
    }
}

/// A distinguished name as compared when its encodings differ: each attribute's type and text
/// (whatever string type holds it), in lower case, with runs of white space as one.
fn name_key(name: &x509_cert::name::Name) -> String {
    name.iter()
        .map(|attribute| {
            let text = super::keys::attribute_text(&attribute.value)
                .unwrap_or_else(|| hex::encode(attribute.value.value()));
            let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
            format!("{}={}", attribute.oid, text.to_lowercase())
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The encoded `tbsCertificate`: the first element of the certificate's outer SEQUENCE.
fn tbs_bytes(der: &[u8]) -> Result<&[u8], x509_cert::der::Error> {
    let mut outer = SliceReader::new(der)?;
    let header = Header::decode(&mut outer)?;
    let mut inner = SliceReader::new(outer.read_slice(header.length())?)?;
    inner.tlv_bytes()
}

/// A time as the hall shows times, in Beijing time: `2026-11-25 11:45:25 (北京时间)`.
fn beijing(since_epoch: Duration) -> String {
    match x509_cert::der::DateTime::from_unix_duration(since_epoch + Duration::from_secs(8 * 3600))
    {
        Ok(t) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02} (北京时间)",
            t.year(),
            t.month(),
            t.day(),
            t.hour(),
            t.minutes(),
            t.seconds()
        ),
        Err(_) => format!("{} s after 1970", since_epoch.as_secs()),
    }
}
