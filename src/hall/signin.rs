//! Sign-in (签到): before decryption starts, each bidder scans the hall's sign-in QR code and its
//! phone signs "this bidder attends this opening" ([`crate::phone::sign_in_message`]) with a
//! signing key registered for it. Sign-in opens [`SIGN_IN_OPENS_BEFORE_MS`] before the opening
//! time and closes when decryption starts.
//!
//! Who signed in is told to no one but the agent until the bidders are published (with the start
//! of decryption), as who takes part is; then the published list and the record carry each
//! bidder's sign-in time. Signing in is the bidder's own record of attending: the law does not
//! make decryption depend on it, so neither does the hall.

use serde_json::json;

use super::{Hall, HallError, ev, fmt_time};
use crate::db::SignedIn;
use crate::phone::{SignIn, SignInView, sign_in_message};

/// How long before the opening time sign-in opens.
pub const SIGN_IN_OPENS_BEFORE_MS: i64 = 30 * 60_000;

impl Hall {
    /// The URL the sign-in QR code holds: where the phone fetches the [`SignInView`].
    pub fn sign_in_url(&self, opening_id: &str) -> String {
        format!("{}/api/phone/sign-in/{opening_id}", self.public_url())
    }

    /// What the phone is shown when it scans the sign-in code, while sign-in is open.
    pub async fn sign_in_view(&self, opening_id: &str) -> Result<SignInView, HallError> {
        let opening = self.opening(opening_id).await?;
        self.sign_in_open(opening.state.as_str(), opening.opening_ms)?;
        Ok(SignInView {
            answer_url: self.sign_in_url(opening_id),
            opening_id: opening.id,
            tender_id: opening.tender_id,
            tender_name: opening.name,
            opening_ms: opening.opening_ms,
        })
    }

    pub(super) fn sign_in_open(&self, state: &str, opening_ms: i64) -> Result<(), HallError> {
        if state != "scheduled" {
            return Err(HallError::WrongState(
                "sign-in closed when decryption started".into(),
            ));
        }
        let opens = opening_ms - SIGN_IN_OPENS_BEFORE_MS;
        if self.now() < opens {
            return Err(HallError::WrongState(format!(
                "sign-in opens at {}, half an hour before the opening",
                fmt_time(opens)
            )));
        }
        Ok(())
    }

    /// Signs a bidder in on its signature; returns when it signed in.
    pub async fn sign_in(&self, opening_id: &str, sign_in: &SignIn) -> Result<i64, HallError> {
        let opening = self.opening(opening_id).await?;
        self.sign_in_open(opening.state.as_str(), opening.opening_ms)?;
        let uscc = sign_in.bidder.trim();
        let bidder = self.inner.db.bidder_by_uscc(opening_id, uscc).await?;
        // Before the bidders are published no one may learn who registered: a code no bidder
        // has is refused as a wrong signature is, after the same work.
        let id = bidder.as_ref().map_or("", |b| b.id.as_str());
        let message = sign_in_message(opening_id, uscc);
        self.check_bidder_signature(id, message, &sign_in.signature)
            .await?;
        let bidder = bidder.ok_or(HallError::BadAnswerSignature)?;
        let now = self.now();
        let events = vec![ev(
            "bidder.signed_in",
            "agent",
            json!({"bidder": {"uscc": bidder.uscc, "name": bidder.name}, "signed_in_ms": now}),
        )];
        let signed = self
            .inner
            .db
            .sign_in(
                opening_id,
                &["scheduled"],
                &bidder.id,
                sign_in.signature.trim(),
                events,
                now,
            )
            .await?;
        match signed {
            SignedIn::Recorded(staged) => {
                self.publish(staged).await;
                self.count_bidder_action("sign_in");
                Ok(now)
            }
            SignedIn::Already(at) => Err(HallError::WrongState(format!(
                "{} signed in already, at {}",
                bidder.name,
                fmt_time(at)
            ))),
            SignedIn::WrongState => Err(HallError::WrongState(
                "sign-in closed when decryption started".into(),
            )),
        }
    }
}
