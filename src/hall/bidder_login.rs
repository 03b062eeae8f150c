//! Bidders' scan login (扫码登录) and the bidder's own view of the opening.
//!
//! A browser (a bidder taking part remotely, 不见面开标) asks for a login code, shown as a QR
//! code, and a secret the browser keeps. The code carries the opening, its expiry and the first
//! 128 bits of the secret's SM3, authenticated by the hall (HMAC-SM3 under a key of the master
//! key): the hall stores nothing until a phone signs a code, so asking for codes costs it neither
//! storage nor a write, and no one can take up an opening's codes however many ask. The bidder's
//! phone scans the code and signs "this bidder logs in with this code at this opening"
//! ([`crate::phone::login_message`]) with a signing key registered for it. The browser, holding
//! the secret, then takes a session token once; anyone else who saw the code (it is on a screen)
//! cannot, and a code is good for [`LOGIN_CODE_MS`] and one login. The session (a `bs_` bearer
//! token, kept by its SM3) lets the bidder see its own bid, sign-in and objections with their
//! answers, and raise an objection in its own name without signing each one with its phone.
//!
//! Who registered is not told by a login before the bidders are published: a code no bidder has
//! is refused as a wrong signature is, after the same work (as for sign-in).

use serde_json::json;

use subtle::ConstantTimeEq;

use super::{Hall, HallError, random_hex, token_hash};
use crate::crypto;
use crate::db::{BidderLoginRow, BidderRow, SessionTaken};
use crate::domain::record::outcome;
use crate::phone::{Login, LoginView, login_check_code, login_message};

/// How long a login code can be signed.
pub const LOGIN_CODE_MS: i64 = 2 * 60_000;

/// How long a bidder's session lasts: a long opening day.
pub const SESSION_MS: i64 = 12 * 3_600_000;

/// A new login code, for the browser that asked.
#[derive(Debug, serde::Serialize)]
pub struct NewLogin {
    pub nonce: String,
    /// Kept by the browser: it takes the session with it once the phone signed.
    pub secret: String,
    /// What the QR code holds: where the phone fetches the [`LoginView`].
    pub qr_url: String,
    /// Shown beside the code, and by the phone ([`crate::phone::login_check_code`]).
    pub check_code: String,
    pub expires_ms: i64,
}

/// A session taken: its token, and whose it is.
#[derive(Debug, serde::Serialize)]
pub struct BidderSession {
    pub token: String,
    pub bidder: serde_json::Value,
    pub expires_ms: i64,
}

/// What the hall's MAC of a login code is made for.
const CODE_MAC: &str = "login code v1";

/// A login code as the hall made it: `{opening}.{expires_ms}.{secret tag}.{mac}`.
struct Code {
    opening_id: String,
    expires_ms: i64,
    /// The first 128 bits of the SM3 of the browser's secret, hex.
    secret_tag: String,
}

/// The first 128 bits of the SM3 of a browser's secret, hex: what a code carries of it.
fn secret_tag(secret: &str) -> String {
    hex::encode(&crypto::sm3(secret.as_bytes())[..16])
}

fn unknown_code() -> HallError {
    HallError::WrongState(
        "this login code is unknown, has expired or was used: reload the page for a new one".into(),
    )
}

impl Hall {
    fn login_url(&self, nonce: &str) -> String {
        format!("{}/api/phone/logins/{nonce}", self.public_url())
    }

    fn code_mac(&self, opening_id: &str, expires_ms: i64, secret_tag: &str) -> String {
        let message = format!("{opening_id}\0{expires_ms}\0{secret_tag}");
        hex::encode(&self.inner.vault.mac(CODE_MAC, message.as_bytes())[..16])
    }

    /// The login code `code`, if the hall made it (whether or not it has expired since).
    fn decode_code(&self, code: &str) -> Option<Code> {
        let mut parts = code.split('.');
        let (opening_id, expires, tag, mac) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || tag.len() != 32 || mac.len() != 32 {
            return None;
        }
        // One spelling per code (no `+123` or `0123`): the code is the key of its row.
        let expires_ms: i64 = expires
            .parse()
            .ok()
            .filter(|e: &i64| e.to_string() == expires)?;
        let expected = self.code_mac(opening_id, expires_ms, tag);
        bool::from(expected.as_bytes().ct_eq(mac.as_bytes())).then(|| Code {
            opening_id: opening_id.to_owned(),
            expires_ms,
            secret_tag: tag.to_owned(),
        })
    }

    /// A new login code for opening `opening_id`. Nothing is stored.
    pub async fn new_bidder_login(&self, opening_id: &str) -> Result<NewLogin, HallError> {
        self.opening(opening_id).await?;
        let secret = random_hex::<32>()?;
        let expires_ms = self.now() + LOGIN_CODE_MS;
        let tag = secret_tag(&secret);
        let nonce = format!(
            "{opening_id}.{expires_ms}.{tag}.{}",
            self.code_mac(opening_id, expires_ms, &tag)
        );
        Ok(NewLogin {
            qr_url: self.login_url(&nonce),
            check_code: login_check_code(&nonce),
            nonce,
            secret,
            expires_ms,
        })
    }

    /// What the phone is shown when it scans a login code that can still be signed.
    pub async fn login_view(&self, nonce: &str) -> Result<LoginView, HallError> {
        let code = self
            .decode_code(nonce)
            .filter(|c| c.expires_ms > self.now())
            .ok_or_else(unknown_code)?;
        if self.inner.db.bidder_login(nonce).await?.is_some() {
            return Err(unknown_code());
        }
        let opening = self.opening(&code.opening_id).await?;
        Ok(LoginView {
            opening_id: opening.id,
            tender_id: opening.tender_id,
            tender_name: opening.name,
            answer_url: self.login_url(nonce),
            check_code: login_check_code(nonce),
            nonce: nonce.to_owned(),
            expires_ms: code.expires_ms,
        })
    }

    /// Records the phone's signature over login code `nonce`.
    pub async fn bidder_login(&self, nonce: &str, login: &Login) -> Result<(), HallError> {
        let view = self.login_view(nonce).await?;
        let uscc = login.bidder.trim();
        let bidder = self.inner.db.bidder_by_uscc(&view.opening_id, uscc).await?;
        let id = bidder.as_ref().map_or("", |b| b.id.as_str());
        let message = login_message(&view.opening_id, nonce, uscc);
        self.check_bidder_signature(id, message, &login.signature)
            .await?;
        let bidder = bidder.ok_or(HallError::BadAnswerSignature)?;
        let code = self.decode_code(nonce).ok_or_else(unknown_code)?;
        // Once per code, even with two phones answering at the same moment.
        if !self
            .inner
            .db
            .insert_signed_login(
                &BidderLoginRow {
                    nonce: nonce.to_owned(),
                    opening_id: view.opening_id,
                    secret_sm3: code.secret_tag,
                    expires_ms: code.expires_ms,
                    bidder_id: Some(bidder.id),
                    signed_ms: Some(self.now()),
                    taken: 0,
                },
                self.now(),
            )
            .await?
        {
            return Err(unknown_code());
        }
        self.count_bidder_action("login");
        Ok(())
    }

    /// Counts an accepted bidder action in `bidder_actions_total`.
    pub(super) fn count_bidder_action(&self, action: &str) {
        self.inner
            .metrics
            .bidder_actions
            .with_label_values(&[action])
            .inc();
    }

    /// Ends a bidder's session (logout): its token is no longer accepted.
    pub async fn end_bidder_session(&self, token: &str) -> Result<(), HallError> {
        self.inner.db.end_bidder_session(&token_hash(token)).await?;
        Ok(())
    }

    /// The session of login code `nonce` for the browser holding its `secret`, once the phone
    /// signed it (`None` until then). Taken once.
    pub async fn take_bidder_session(
        &self,
        nonce: &str,
        secret: &str,
    ) -> Result<Option<BidderSession>, HallError> {
        // Pages ask every second while they wait: read first, and write only once the phone
        // has signed (the write is checked again in its transaction).
        let now = self.now();
        let tag = secret_tag(secret);
        match self.inner.db.bidder_login(nonce).await? {
            // Signed: taken once, by the secret's holder, while the code lasts (the page asks
            // every second).
            Some(l)
                if l.taken == 0
                    && l.expires_ms > now
                    && bool::from(l.secret_sm3.as_bytes().ct_eq(tag.as_bytes())) => {}
            Some(_) => return Err(unknown_code()),
            // Not signed yet: waiting, if the hall made this code for this secret and it has
            // not expired.
            None => {
                return match self.decode_code(nonce) {
                    Some(c)
                        if c.expires_ms > now
                            && bool::from(c.secret_tag.as_bytes().ct_eq(tag.as_bytes())) =>
                    {
                        Ok(None)
                    }
                    _ => Err(unknown_code()),
                };
            }
        }
        let token = format!("bs_{}", random_hex::<32>()?);
        let taken = self
            .inner
            .db
            .take_bidder_session(nonce, &tag, &token_hash(&token), now + SESSION_MS, now)
            .await?;
        match taken {
            SessionTaken::Waiting => Ok(None),
            SessionTaken::Refused => Err(unknown_code()),
            SessionTaken::Started { bidder_id } => {
                let bidder = self.bidder_row(&bidder_id).await?;
                Ok(Some(BidderSession {
                    token,
                    bidder: json!({"uscc": bidder.uscc, "name": bidder.name}),
                    expires_ms: now + SESSION_MS,
                }))
            }
        }
    }

    /// The bidder whose session `token` is, if it is a session of opening `opening_id`.
    pub async fn bidder_for_session(
        &self,
        token: &str,
        opening_id: &str,
    ) -> Result<BidderRow, HallError> {
        match self
            .inner
            .db
            .bidder_session(&token_hash(token), self.now())
            .await?
        {
            Some((opening, bidder_id)) if opening == opening_id => {
                self.bidder_row(&bidder_id).await
            }
            _ => Err(HallError::Unauthorized),
        }
    }

    async fn bidder_row(&self, bidder_id: &str) -> Result<BidderRow, HallError> {
        self.inner
            .db
            .bidder(bidder_id)
            .await?
            .ok_or(HallError::NotFound("bidder"))
    }

    /// What a logged-in bidder sees of the opening: itself, its bid (with its decryption QR code
    /// while it waits for the key), its objections with their answers, and what it has to scan
    /// next: the sign-in code while sign-in is open and it has not signed in, the record's code
    /// once a record is issued, with whether it confirmed it.
    pub async fn bidder_view(&self, bidder: &BidderRow) -> Result<serde_json::Value, HallError> {
        let opening = self.opening(&bidder.opening_id).await?;
        let sign_in = (bidder.signed_in_ms.is_none()
            && self
                .sign_in_open(&opening.state, opening.opening_ms)
                .is_ok())
        .then(|| json!({"url": self.sign_in_url(&opening.id)}));
        let record = match self.issued_record(&opening.id).await? {
            Some(issued) => {
                let version = issued["version"].as_i64().unwrap_or_default();
                let confirmed = issued["confirmations"]
                    .as_array()
                    .is_some_and(|c| c.iter().any(|c| c["uscc"] == bidder.uscc.as_str()));
                json!({"version": version, "digest": issued["digest"], "confirmed": confirmed,
                       "url": self.record_qr_url(&opening.id, version)})
            }
            None => serde_json::Value::Null,
        };
        let bids = self.inner.db.bids(&opening.id).await?;
        let challenges = self.inner.db.current_challenges(&opening.id).await?;
        let bid = bids.iter().find(|b| b.bidder_id == bidder.id).map(|bid| {
            let qr = (bid.state == "awaiting_key" && opening.state == "decrypting")
                .then(|| challenges.get(&bid.id))
                .flatten()
                .map(
                    |c| json!({"url": self.qr_url(&opening, &c.nonce), "expires_ms": c.expires_ms}),
                );
            let summary: Option<serde_json::Value> = bid
                .summary
                .as_deref()
                .and_then(|s| serde_json::from_str(s).ok());
            json!({
                "id": bid.id, "state": bid.state, "size": bid.size, "sm3": bid.sm3,
                "received_ms": bid.received_ms, "summary": summary, "failure": bid.failure,
                "fault": bid.fault, "outcome": outcome(&bid.state, bid.fault.as_deref()),
                "qr": qr,
            })
        });
        let objections: Vec<serde_json::Value> = self
            .objection_views(&opening.id, std::slice::from_ref(bidder))
            .await?
            .into_iter()
            .filter(|o| o["bidder"]["uscc"] == bidder.uscc.as_str())
            .collect();
        Ok(json!({
            "opening": {
                "id": opening.id, "tender_id": opening.tender_id, "name": opening.name,
                "state": opening.state, "opening_ms": opening.opening_ms,
                "decrypt_deadline_ms": opening.decrypt_deadline_ms,
            },
            "bidder": {"uscc": bidder.uscc, "name": bidder.name, "signed_in_ms": bidder.signed_in_ms},
            "bid": bid,
            "objections": objections,
            "sign_in": sign_in,
            "record": record,
        }))
    }

    /// Records an objection of a logged-in bidder, in its name; returns its number.
    pub async fn raise_own_objection(
        &self,
        bidder: &BidderRow,
        text: &str,
    ) -> Result<i64, HallError> {
        self.open_for_objections(&bidder.opening_id).await?;
        let text = super::objections::entry(text, "objection")?;
        self.record_objection(
            &bidder.opening_id,
            Some(bidder),
            text,
            super::objections::RaisedBy::LoggedIn,
        )
        .await
    }
}
