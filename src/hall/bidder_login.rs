//! Bidders' scan login (扫码登录) and the bidder's own view of the opening.
//!
//! A browser (a bidder taking part remotely, 不见面开标) asks for a login code: a random nonce,
//! shown as a QR code, and a secret the browser keeps (the hall stores only its SM3). The bidder's
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

use super::{Hall, HallError, random_hex, token_hash};
use crate::db::{BidderRow, SessionTaken};
use crate::domain::record::outcome;
use crate::phone::{Login, LoginView, login_check_code, login_message};

/// How long a login code can be signed.
pub const LOGIN_CODE_MS: i64 = 2 * 60_000;

/// The most login codes of one opening waiting to be scanned at once: far more than its bidders
/// need, and a bound on what anyone can make the hall keep by asking for codes.
pub const MAX_WAITING_LOGIN_CODES: i64 = 500;

/// The most login codes one client address may ask for in [`LOGIN_CODE_MS`]: a page asks for
/// one every two minutes, a few pages of one office behind one address a few more.
pub const MAX_LOGIN_CODES_PER_ADDRESS: u32 = 60;

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

fn unknown_code() -> HallError {
    HallError::WrongState(
        "this login code is unknown, has expired or was used: reload the page for a new one".into(),
    )
}

impl Hall {
    fn login_url(&self, nonce: &str) -> String {
        format!("{}/api/phone/logins/{nonce}", self.public_url())
    }

    /// A new login code for opening `opening_id`, asked for from client address `from`.
    pub async fn new_bidder_login(
        &self,
        opening_id: &str,
        from: &str,
    ) -> Result<NewLogin, HallError> {
        self.opening(opening_id).await?;
        let now = self.now();
        self.count_login_code(from, now)?;
        let nonce = random_hex::<16>()?;
        let secret = random_hex::<32>()?;
        let expires_ms = now + LOGIN_CODE_MS;
        let stored = self
            .inner
            .db
            .insert_bidder_login(
                &nonce,
                opening_id,
                &token_hash(&secret),
                expires_ms,
                now,
                MAX_WAITING_LOGIN_CODES,
            )
            .await?;
        if !stored {
            return Err(HallError::WrongState(
                "too many login codes of this opening are waiting to be scanned: try again in two \
                 minutes"
                    .into(),
            ));
        }
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
        let login = self
            .inner
            .db
            .bidder_login(nonce)
            .await?
            .filter(|l| l.bidder_id.is_none() && l.expires_ms > self.now())
            .ok_or_else(unknown_code)?;
        let opening = self.opening(&login.opening_id).await?;
        Ok(LoginView {
            opening_id: opening.id,
            tender_id: opening.tender_id,
            tender_name: opening.name,
            answer_url: self.login_url(nonce),
            check_code: login_check_code(nonce),
            nonce: login.nonce,
            expires_ms: login.expires_ms,
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
        if !self
            .inner
            .db
            .sign_bidder_login(nonce, &bidder.id, self.now())
            .await?
        {
            return Err(unknown_code());
        }
        self.count_bidder_action("login");
        Ok(())
    }

    /// Counts a login code asked for from `from`, refusing past [`MAX_LOGIN_CODES_PER_ADDRESS`]
    /// in a window of [`LOGIN_CODE_MS`]: one client cannot keep an opening's codes all taken.
    fn count_login_code(&self, from: &str, now: i64) -> Result<(), HallError> {
        let codes = &self.inner.login_codes_asked;
        if codes.len() > 10_000 {
            codes.retain(|_, (since, _)| now - *since < LOGIN_CODE_MS);
        }
        let mut entry = codes.entry(from.to_owned()).or_insert((now, 0));
        let (since, count) = &mut *entry;
        if now - *since >= LOGIN_CODE_MS {
            (*since, *count) = (now, 0);
        }
        if *count >= MAX_LOGIN_CODES_PER_ADDRESS {
            let wait = (*since + LOGIN_CODE_MS - now).max(1000) / 1000;
            return Err(HallError::WrongState(format!(
                "too many login codes were asked for from this address: try again in {wait} s"
            )));
        }
        *count += 1;
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
        let login = self.inner.db.bidder_login(nonce).await?;
        match login {
            Some(l) if l.taken == 0 && l.secret_sm3 == token_hash(secret) => {
                if l.bidder_id.is_none() {
                    return if l.expires_ms > now {
                        Ok(None)
                    } else {
                        Err(unknown_code())
                    };
                }
            }
            _ => return Err(unknown_code()),
        }
        let token = format!("bs_{}", random_hex::<32>()?);
        let taken = self
            .inner
            .db
            .take_bidder_session(
                nonce,
                &token_hash(secret),
                &token_hash(&token),
                now + SESSION_MS,
                now,
            )
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
