//! The scan-to-decrypt protocol between the hall and a bidder's phone (扫码解密).
//!
//! The hall shows a QR code holding the URL of a one-time challenge. The phone fetches the
//! [`ChallengeView`], unwraps the bid's file key with its SM2 encryption key, re-wraps it to the
//! hall's per-opening SM2 key and signs `(nonce, bid id, re-wrapped key)` with its signing key.
//! The file key never crosses the wire in the clear, even without TLS.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use sm2::SecretKey;

use crate::crypto::{self, KeyError};

/// What the phone is shown when it fetches a challenge.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ChallengeView {
    pub nonce: String,
    pub opening_id: String,
    pub tender_id: String,
    pub tender_name: String,
    pub bid_id: String,
    pub bidder_name: String,
    pub bidder_code: String,
    pub expires_ms: i64,
    pub server_ms: i64,
    /// The hall's SM2 public key for this opening, SPKI DER in base64.
    pub hall_public_key: String,
    pub recipients: Vec<RecipientView>,
    /// Where to POST the [`Answer`].
    pub answer_url: String,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RecipientView {
    /// SM3 of the recipient's public key, hex.
    pub key_id: String,
    /// `SM2Cipher` DER, base64.
    pub wrapped_key: String,
}

/// The phone's answer.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Answer {
    /// The file key wrapped to the hall key, `SM2Cipher` DER, base64.
    pub rewrapped_key: String,
    /// SM2/SM3 signature (DER, base64) over [`answer_message`].
    pub signature: String,
}

/// Why the phone could not answer.
#[derive(Debug, thiserror::Error)]
pub enum PhoneError {
    #[error(
        "this bid was not sealed to this encryption certificate (非正确的加密证书); use the certificate the bid was made with"
    )]
    WrongCertificate,
    #[error(
        "the hall key in this challenge is not the one on the QR code: something between the phone and the hall may have replaced it; do not answer, tell the tender agent"
    )]
    HallKeyMismatch,
    #[error("the challenge is malformed: {0}")]
    Malformed(String),
    #[error("{0}")]
    Key(#[from] KeyError),
}

/// The tag of a hall key that a QR code carries (`?k=`): the first 128 bits of the SM3 of the
/// hall's SPKI DER. The phone checks the challenge's hall key against it, so that without TLS,
/// or with its TLS intercepted, the file key is re-wrapped to the hall on the display and to no
/// one who answered the phone's request in its place.
pub fn hall_key_tag(hall_public_der: &[u8]) -> String {
    hex::encode(&crypto::sm3(hall_public_der)[..16])
}

/// The hall key tag in what a QR code holds, if any.
pub fn qr_hall_key_tag(payload: &str) -> Option<&str> {
    let query = payload.split_once('?')?.1;
    let query = query.split('#').next().unwrap_or_default();
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix("k="))
        .filter(|tag| !tag.is_empty())
}

/// Checks a challenge's hall key against the tag of the QR code it came from (a QR code without
/// one, e.g. a bare nonce typed in, is taken as it is).
pub fn check_hall_key(view: &ChallengeView, qr_payload: &str) -> Result<(), PhoneError> {
    let Some(expected) = qr_hall_key_tag(qr_payload) else {
        return Ok(());
    };
    let der = B64
        .decode(&view.hall_public_key)
        .map_err(|e| PhoneError::Malformed(format!("hall key: {e}")))?;
    if hall_key_tag(&der).eq_ignore_ascii_case(expected) {
        Ok(())
    } else {
        Err(PhoneError::HallKeyMismatch)
    }
}

/// The message the phone signs.
pub fn answer_message(nonce: &str, bid_id: &str, rewrapped_key: &[u8]) -> Vec<u8> {
    let mut m = b"kaibiao scan-decrypt v1\0".to_vec();
    m.extend_from_slice(nonce.as_bytes());
    m.push(0);
    m.extend_from_slice(bid_id.as_bytes());
    m.push(0);
    m.extend_from_slice(rewrapped_key);
    m
}

/// The message a bidder signs to withdraw (撤回) one upload before the deadline: bound to that
/// upload's bid id, so replaying it can never withdraw a later upload.
pub fn withdrawal_message(bid_id: &str) -> Vec<u8> {
    let mut m = b"kaibiao withdraw v1\0".to_vec();
    m.extend_from_slice(bid_id.as_bytes());
    m
}

/// Computes the answer the phone sends: unwrap, re-wrap to the hall, sign.
pub fn answer_challenge(
    view: &ChallengeView,
    enc_key: &SecretKey,
    sign_key: &SecretKey,
) -> Result<Answer, PhoneError> {
    let my_id = hex::encode(crypto::key_id(&enc_key.public_key()));
    let recipient = view
        .recipients
        .iter()
        .find(|r| r.key_id == my_id)
        .ok_or(PhoneError::WrongCertificate)?;
    let wrapped = B64
        .decode(&recipient.wrapped_key)
        .map_err(|e| PhoneError::Malformed(format!("wrapped key: {e}")))?;
    let raw = crypto::unwrap_key(enc_key, &wrapped)?;
    let hall_der = B64
        .decode(&view.hall_public_key)
        .map_err(|e| PhoneError::Malformed(format!("hall key: {e}")))?;
    let hall = crypto::parse_public_der(&hall_der, false)?;
    let rewrapped = crypto::wrap_key(hall.key(), &raw)?;
    let signature = crypto::sign(
        sign_key,
        &answer_message(&view.nonce, &view.bid_id, &rewrapped),
    )?;
    Ok(Answer {
        rewrapped_key: B64.encode(rewrapped),
        signature: B64.encode(signature),
    })
}

/// An objection (异议) a bidder raises itself, from a phone or a browser with the phone signing:
/// its code, the text, and its signature over [`objection_message`].
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedObjection {
    /// The bidder's unified social credit code.
    pub bidder: String,
    pub text: String,
    /// SM2/SM3 signature (DER, base64) over [`objection_message`].
    pub signature: String,
}

/// The message a bidder signs to raise objection `text` at an opening (the text as sent, without
/// leading or trailing white space).
pub fn objection_message(opening_id: &str, bidder: &str, text: &str) -> Vec<u8> {
    let mut m = b"kaibiao objection v1\0".to_vec();
    m.extend_from_slice(opening_id.as_bytes());
    m.push(0);
    m.extend_from_slice(bidder.trim().as_bytes());
    m.push(0);
    m.extend_from_slice(text.trim().as_bytes());
    m
}

/// Signs objection `text` to opening `opening_id` as bidder `bidder`.
pub fn sign_objection(
    opening_id: &str,
    bidder: &str,
    text: &str,
    sign_key: &SecretKey,
) -> Result<SignedObjection, PhoneError> {
    let message = objection_message(opening_id, bidder, text);
    Ok(SignedObjection {
        bidder: bidder.trim().to_owned(),
        text: text.trim().to_owned(),
        signature: B64.encode(crypto::sign(sign_key, &message)?),
    })
}

/// What the phone is shown when it scans the hall's sign-in code (签到).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SignInView {
    pub opening_id: String,
    pub tender_id: String,
    pub tender_name: String,
    pub opening_ms: i64,
    /// Where to POST the [`SignIn`].
    pub answer_url: String,
}

/// A bidder's sign-in: its code, and its signature over [`sign_in_message`].
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignIn {
    /// The bidder's unified social credit code.
    pub bidder: String,
    /// SM2/SM3 signature (DER, base64) over [`sign_in_message`].
    pub signature: String,
}

/// The message a bidder signs to sign in to an opening: "this bidder attends this opening". The
/// same fact each time, so a replayed signature tells nothing new (the first time counts), and
/// bound to the opening, so that it signs in to no other.
pub fn sign_in_message(opening_id: &str, bidder: &str) -> Vec<u8> {
    let mut m = b"kaibiao sign-in v1\0".to_vec();
    m.extend_from_slice(opening_id.as_bytes());
    m.push(0);
    m.extend_from_slice(bidder.trim().as_bytes());
    m
}

/// Signs in to the opening `view` shows as bidder `bidder` (its unified social credit code).
pub fn sign_in(
    view: &SignInView,
    bidder: &str,
    sign_key: &SecretKey,
) -> Result<SignIn, PhoneError> {
    let message = sign_in_message(&view.opening_id, bidder);
    Ok(SignIn {
        bidder: bidder.trim().to_owned(),
        signature: B64.encode(crypto::sign(sign_key, &message)?),
    })
}

/// What the phone is shown when it scans a bidder's login code (扫码登录).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct LoginView {
    pub opening_id: String,
    pub tender_id: String,
    pub tender_name: String,
    /// The login code: signed, it starts a session on the browser that shows it.
    pub nonce: String,
    /// Until when the code can be signed (ms since the epoch).
    pub expires_ms: i64,
    /// Four digits the browser shows beside the code ([`login_check_code`]): the phone shows
    /// them too, and the bidder logs in only if they are the same, so that a code shown
    /// somewhere else (someone asking the bidder to "scan to sign in") is not signed.
    pub check_code: String,
    /// Where to POST the [`Login`].
    pub answer_url: String,
}

/// A bidder's login: its code, and its signature over [`login_message`].
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Login {
    /// The bidder's unified social credit code.
    pub bidder: String,
    /// SM2/SM3 signature (DER, base64) over [`login_message`].
    pub signature: String,
}

/// The four digits shown beside login code `nonce` on the browser and on the phone.
pub fn login_check_code(nonce: &str) -> String {
    let d = crypto::sm3(nonce.as_bytes());
    format!("{:04}", u16::from_be_bytes([d[0], d[1]]) % 10_000)
}

/// The message a bidder signs to log in at the browser showing login code `nonce` of an
/// opening: bound to that one code (used once, short-lived) and that opening.
pub fn login_message(opening_id: &str, nonce: &str, bidder: &str) -> Vec<u8> {
    let mut m = b"kaibiao login v1\0".to_vec();
    m.extend_from_slice(opening_id.as_bytes());
    m.push(0);
    m.extend_from_slice(nonce.as_bytes());
    m.push(0);
    m.extend_from_slice(bidder.trim().as_bytes());
    m
}

/// Logs in as bidder `bidder` at the browser showing the code `view` is of.
pub fn login(view: &LoginView, bidder: &str, sign_key: &SecretKey) -> Result<Login, PhoneError> {
    let message = login_message(&view.opening_id, &view.nonce, bidder);
    Ok(Login {
        bidder: bidder.trim().to_owned(),
        signature: B64.encode(crypto::sign(sign_key, &message)?),
    })
}

/// What the phone is shown when it scans a bidder's bind code (扫码绑定).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct BindView {
    pub opening_id: String,
    pub tender_id: String,
    pub tender_name: String,
    /// The enterprise whose certificates are to be bound: the phone offers only certificates
    /// issued to it.
    pub bidder: String,
    pub bidder_name: String,
    /// The bind code.
    pub code: String,
    /// Where to POST the [`Bind`].
    pub answer_url: String,
}

/// A phone's certificates for a bidder, and its signature over [`bind_message`] with the
/// signing certificate's key (so the certificate is bound by who holds its key).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bind {
    /// The signing certificate (签名证书), PEM.
    pub sign_cert: String,
    /// The encryption certificate (加密证书), PEM: the one bids are sealed to.
    pub enc_cert: String,
    /// SM2/SM3 signature (DER, base64) over [`bind_message`].
    pub signature: String,
}

/// The message a bidder's phone signs to bind its certificates with bind code `code`: the code
/// (which names the opening and the bidder) and the SM3 of each certificate's DER.
pub fn bind_message(code: &str, sign_cert_der: &[u8], enc_cert_der: &[u8]) -> Vec<u8> {
    let mut m = b"kaibiao bind v1\0".to_vec();
    m.extend_from_slice(code.as_bytes());
    m.push(0);
    m.extend_from_slice(&crypto::sm3(sign_cert_der));
    m.extend_from_slice(&crypto::sm3(enc_cert_der));
    m
}

/// Binds the certificates `sign_cert` and `enc_cert` (PEM) with the bind code `view` is of,
/// signing with `sign_key`, the signing certificate's key.
pub fn bind(
    view: &BindView,
    sign_cert: &str,
    enc_cert: &str,
    sign_key: &SecretKey,
) -> Result<Bind, PhoneError> {
    let der = |pem: &str| -> Result<Vec<u8>, PhoneError> {
        match crypto::load_public_pem(pem)? {
            crypto::PublicIdentity::Certificate { cert_der, .. } => Ok(cert_der),
            crypto::PublicIdentity::PublicKey { .. } => Err(PhoneError::Key(KeyError::PublicKey(
                "a bare public key: binding needs the CA's certificate".into(),
            ))),
        }
    };
    let message = bind_message(&view.code, &der(sign_cert)?, &der(enc_cert)?);
    Ok(Bind {
        sign_cert: sign_cert.to_owned(),
        enc_cert: enc_cert.to_owned(),
        signature: B64.encode(crypto::sign(sign_key, &message)?),
    })
}

/// What the phone is shown when it scans the code to confirm the opening record (扫码签章).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RecordView {
    pub opening_id: String,
    pub tender_id: String,
    pub tender_name: String,
    /// The version of the record to confirm; a later one supersedes it.
    pub version: i64,
    /// SM3 of the record as served at `record_url`, hex: what the bidder signs.
    pub digest: String,
    /// Where to read the record (to show it before asking for the PIN, and check its digest).
    pub record_url: String,
    /// Where to POST the [`RecordConfirmation`].
    pub answer_url: String,
}

/// A bidder's confirmation of the opening record.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordConfirmation {
    /// The bidder's unified social credit code.
    pub bidder: String,
    /// SM2/SM3 signature (DER, base64) over [`record_confirmation_message`].
    pub signature: String,
}

/// The message a bidder signs to confirm version `version` of an opening's record, whose SM3 is
/// `digest` (hex): bound to the opening and the version, so that it confirms nothing else.
pub fn record_confirmation_message(opening_id: &str, version: i64, digest: &str) -> Vec<u8> {
    let mut m = b"kaibiao record confirm v1\0".to_vec();
    m.extend_from_slice(opening_id.as_bytes());
    m.push(0);
    m.extend_from_slice(version.to_string().as_bytes());
    m.push(0);
    m.extend_from_slice(digest.to_ascii_lowercase().as_bytes());
    m
}

/// Signs the record `view` shows as bidder `bidder` (its unified social credit code), after
/// checking that `record`, the bytes read from `view.record_url`, are what the digest says: the
/// phone signs only the record it could show.
pub fn confirm_record(
    view: &RecordView,
    record: &[u8],
    bidder: &str,
    sign_key: &SecretKey,
) -> Result<RecordConfirmation, PhoneError> {
    if !hex::encode(crypto::sm3(record)).eq_ignore_ascii_case(&view.digest) {
        return Err(PhoneError::Malformed(
            "the record read is not the one whose digest is to be signed; do not sign, tell the \
             tender agent"
                .into(),
        ));
    }
    let message = record_confirmation_message(&view.opening_id, view.version, &view.digest);
    Ok(RecordConfirmation {
        bidder: bidder.to_owned(),
        signature: B64.encode(crypto::sign(sign_key, &message)?),
    })
}

/// Turns what a QR code holds (the challenge URL, or a bare nonce with a server) into the URL
/// to fetch.
pub fn challenge_url(payload: &str, server: Option<&str>) -> String {
    let payload = payload.trim();
    if payload.starts_with("http://") || payload.starts_with("https://") {
        return payload.replace("/m/", "/api/phone/challenges/");
    }
    let server = server
        .unwrap_or("http://127.0.0.1:8080")
        .trim_end_matches('/');
    format!("{server}/api/phone/challenges/{payload}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_qr_codes_hall_key_tag_is_read_from_its_query() {
        let tag = "00112233445566778899aabbccddeeff";
        let url = format!("https://hall.example/m/abc?k={tag}");
        assert_eq!(qr_hall_key_tag(&url), Some(tag));
        assert_eq!(qr_hall_key_tag(&format!("{url}#top")), Some(tag));
        assert_eq!(
            qr_hall_key_tag(&format!("https://h/m/abc?x=1&k={tag}")),
            Some(tag)
        );
        assert_eq!(qr_hall_key_tag("https://h/m/abc"), None);
        assert_eq!(qr_hall_key_tag("https://h/m/abc?k="), None);
        assert_eq!(qr_hall_key_tag("abc"), None, "a bare nonce");
        // The URL the phone fetches keeps the tag.
        assert_eq!(qr_hall_key_tag(&challenge_url(&url, None)), Some(tag));
    }
}
