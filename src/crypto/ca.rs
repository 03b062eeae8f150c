//! A certificate authority of one's own, for a demo or a trial: an SM2 root that issues bidders'
//! signing and encryption certificates, as China's CAs issue them (SM2 with SM3 and the standard
//! user ID, keyUsage by use). Not a production CA (no serial register, no revocation): a hall
//! that trusts it (`trusted_cas`) runs the certificate flows without a real CA's certificates.
//!
//! Built on `x509-cert`'s certificate builder with `sm2`'s signing key.

use std::str::FromStr;
use std::time::Duration;

use sm2::pkcs8::EncodePublicKey;
use sm2::{PublicKey, SecretKey};
use x509_cert::builder::profile::BuilderProfile;
use x509_cert::builder::{Builder, CertificateBuilder};
use x509_cert::der::{EncodePem, pem::LineEnding};
use x509_cert::ext::pkix::{BasicConstraints, KeyUsage, KeyUsages};
use x509_cert::ext::{Extension, ToExtension};
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::{SubjectPublicKeyInfo, SubjectPublicKeyInfoRef};
use x509_cert::time::Validity;

use super::keys::{DIST_ID, KeyError, generate_secret_key, random_bytes};
use super::trust::CertUsage;

/// An SM2 root certificate authority held in memory.
pub struct LocalCa {
    key: SecretKey,
    name: Name,
    certificate: x509_cert::Certificate,
}

/// What a certificate is made for.
#[derive(Clone, Copy)]
enum Role {
    Root,
    Bidder(CertUsage),
}

/// The extensions of a certificate of `role`, issued by `issuer` to `subject`.
struct Profile {
    issuer: Name,
    subject: Name,
    role: Role,
}

impl BuilderProfile for Profile {
    fn get_issuer(&self, _subject: &Name) -> Name {
        self.issuer.clone()
    }

    fn get_subject(&self) -> Name {
        self.subject.clone()
    }

    fn build_extensions(
        &self,
        _spk: SubjectPublicKeyInfoRef<'_>,
        _issuer_spk: SubjectPublicKeyInfoRef<'_>,
        tbs: &x509_cert::TbsCertificate,
    ) -> x509_cert::builder::Result<Vec<Extension>> {
        let (ca, usages) = match self.role {
            Role::Root => (true, KeyUsages::KeyCertSign | KeyUsages::CRLSign),
            Role::Bidder(CertUsage::Sign) => (
                false,
                KeyUsages::DigitalSignature | KeyUsages::NonRepudiation,
            ),
            Role::Bidder(CertUsage::Encrypt) => (
                false,
                KeyUsages::KeyEncipherment | KeyUsages::DataEncipherment,
            ),
        };
        let constraints = BasicConstraints {
            ca,
            path_len_constraint: None,
        };
        let constraints = constraints.to_extension(tbs.subject(), &[])?;
        let usage =
            KeyUsage(usages).to_extension(tbs.subject(), std::slice::from_ref(&constraints))?;
        Ok(vec![constraints, usage])
    }
}

/// An SM2 signature as X.509 writes it: the DER `SEQUENCE { r, s }` (`sm2`'s own signature type
/// gives the raw `r ‖ s` to the builder, which no verifier reads).
struct DerSignature(Vec<u8>);

impl x509_cert::spki::SignatureBitStringEncoding for DerSignature {
    fn to_bitstring(&self) -> x509_cert::der::Result<x509_cert::der::asn1::BitString> {
        x509_cert::der::asn1::BitString::new(0, self.0.clone())
    }
}

/// `sm2`'s signing key, giving [`DerSignature`]s.
struct DerSigner(sm2::dsa::SigningKey);

impl sm2::dsa::signature::Signer<DerSignature> for DerSigner {
    fn try_sign(&self, message: &[u8]) -> Result<DerSignature, sm2::dsa::signature::Error> {
        let signature: sm2::dsa::Signature = self.0.try_sign(message)?;
        Ok(DerSignature(signature.to_der().to_vec()))
    }
}

impl sm2::dsa::signature::Keypair for DerSigner {
    type VerifyingKey = sm2::dsa::VerifyingKey;

    fn verifying_key(&self) -> Self::VerifyingKey {
        self.0.verifying_key().clone()
    }
}

impl x509_cert::spki::SignatureAlgorithmIdentifier for DerSigner {
    type Params = x509_cert::der::AnyRef<'static>;

    const SIGNATURE_ALGORITHM_IDENTIFIER: x509_cert::spki::AlgorithmIdentifier<Self::Params> =
        <sm2::dsa::SigningKey as x509_cert::spki::SignatureAlgorithmIdentifier>::SIGNATURE_ALGORITHM_IDENTIFIER;
}

fn failed(what: &str) -> impl FnOnce(x509_cert::builder::Error) -> KeyError + '_ {
    move |e| KeyError::Certificate(format!("{what}: {e}"))
}

impl LocalCa {
    /// A new root named `name` (RFC 4514, e.g. `CN=kaibiao 演示 CA,O=kaibiao`), valid `days`.
    pub fn new(name: &str, days: u64) -> Result<Self, KeyError> {
        let key = generate_secret_key();
        let name = Name::from_str(name)
            .map_err(|e| KeyError::Certificate(format!("the CA's name {name}: {e}")))?;
        let certificate = issue(
            &key,
            &name,
            name.clone(),
            &key.public_key(),
            Role::Root,
            days,
        )?;
        Ok(Self {
            key,
            name,
            certificate,
        })
    }

    /// The CA's certificate, PEM: what a hall's `trusted_cas` file holds.
    pub fn certificate_pem(&self) -> Result<String, KeyError> {
        self.certificate
            .to_pem(LineEnding::LF)
            .map_err(|e| KeyError::Certificate(e.to_string()))
    }

    /// A certificate for `key`, named `subject` (RFC 4514, e.g. `CN=某公司,OU=9144…`), for
    /// `usage`, valid `days` from now; PEM.
    pub fn issue(
        &self,
        subject: &str,
        key: &PublicKey,
        usage: CertUsage,
        days: u64,
    ) -> Result<String, KeyError> {
        let subject = Name::from_str(subject)
            .map_err(|e| KeyError::Certificate(format!("the subject {subject}: {e}")))?;
        issue(
            &self.key,
            &self.name,
            subject,
            key,
            Role::Bidder(usage),
            days,
        )?
        .to_pem(LineEnding::LF)
        .map_err(|e| KeyError::Certificate(e.to_string()))
    }
}

/// A certificate of `role` for `key`, named `subject`, signed by `signer` as `issuer`.
fn issue(
    signer: &SecretKey,
    issuer: &Name,
    subject: Name,
    key: &PublicKey,
    role: Role,
    days: u64,
) -> Result<x509_cert::Certificate, KeyError> {
    let spki_der = key
        .to_public_key_der()
        .map_err(|e| KeyError::Certificate(e.to_string()))?;
    let spki = SubjectPublicKeyInfo::try_from(spki_der.as_bytes())
        .map_err(|e| KeyError::Certificate(e.to_string()))?;
    // A positive serial of 64 random bits (RFC 5280: unique per CA, at most 20 bytes).
    let mut serial = random_bytes::<8>()?;
    serial[0] &= 0x7f;
    let serial = SerialNumber::new(&serial).map_err(|e| KeyError::Certificate(e.to_string()))?;
    let validity = Validity::from_now(Duration::from_secs(days * 86_400))
        .map_err(|e| KeyError::Certificate(e.to_string()))?;
    let profile = Profile {
        issuer: issuer.clone(),
        subject,
        role,
    };
    let builder = CertificateBuilder::new(profile, serial, validity, spki)
        .map_err(failed("preparing the certificate"))?;
    let signing = sm2::dsa::SigningKey::new(DIST_ID, signer)
        .map_err(|e| KeyError::PrivateKey(e.to_string()))?;
    builder
        .build::<_, DerSignature>(&DerSigner(signing))
        .map_err(failed("signing the certificate"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{PublicIdentity, TrustStore, load_public_pem};

    fn der(pem: &str) -> Vec<u8> {
        match load_public_pem(pem).unwrap() {
            PublicIdentity::Certificate { cert_der, .. } => cert_der,
            other => panic!("not a certificate: {other:?}"),
        }
    }

    /// What the CA issues, a hall that trusts it takes, each certificate for its own use and
    /// naming whom it was issued to; another CA's hall takes none of it.
    #[test]
    fn a_hall_trusting_the_ca_takes_its_certificates_for_their_use() {
        let ca = LocalCa::new("CN=kaibiao 演示 CA,O=kaibiao", 30).unwrap();
        let store = TrustStore::from_pem(ca.certificate_pem().unwrap().as_bytes()).unwrap();
        let key = generate_secret_key().public_key();
        let subject = "CN=某建设工程有限公司,OU=91350100M000100Y43";
        let sign = ca.issue(subject, &key, CertUsage::Sign, 10).unwrap();
        let enc = ca.issue(subject, &key, CertUsage::Encrypt, 10).unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap();
        store.check(&der(&sign), CertUsage::Sign, now).unwrap();
        store.check(&der(&enc), CertUsage::Encrypt, now).unwrap();
        assert!(store.check(&der(&sign), CertUsage::Encrypt, now).is_err());
        let identity = load_public_pem(&sign).unwrap();
        assert!(identity.carries_code("91350100M000100Y43"));
        assert!(identity.names_enterprise("91350100M000100Y43", "某建设工程有限公司"));
        let later = now + Duration::from_secs(11 * 86_400);
        assert!(store.check(&der(&sign), CertUsage::Sign, later).is_err());

        let other = LocalCa::new("CN=kaibiao 演示 CA,O=kaibiao", 30).unwrap();
        let elsewhere = TrustStore::from_pem(other.certificate_pem().unwrap().as_bytes()).unwrap();
        assert!(elsewhere.check(&der(&sign), CertUsage::Sign, now).is_err());
    }
}
