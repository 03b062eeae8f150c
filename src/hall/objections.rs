//! Objections (异议) raised during an opening and the agent's answers, recorded as the law asks
//! of the opening record (开标记录): each objection with who raised it and when, and the answer
//! given on the spot. The agent records those raised in the room; a bidder taking part remotely
//! (不见面) raises its own, signed with its phone ([`crate::phone::objection_message`]). Both go
//! into the event log (a bidder's with its signature) and on the hall display; the same objection
//! of the same bidder is recorded once, so a repeated or replayed one is refused.
//!
//! They can be recorded from the start of decryption, when the bidders are published, until the
//! opening is closed: before that no one may learn who takes part, and a closed record is final.
//! An answer is given once and never replaced, and an opening with an unanswered objection cannot
//! be closed.

use serde_json::json;

use super::{Hall, HallError, ev};
use crate::db::{Answered, BidderRow, Closing, ObjectionRow, Raised};
use crate::phone::{SignedObjection, objection_message};

/// The states of an opening in which objections are recorded and answered.
const OPEN_FOR_OBJECTIONS: &[&str] = &["decrypting", "decryption_ended", "released"];

/// The longest objection or answer taken, in characters: a record's entry, not a document.
pub const MAX_OBJECTION_CHARS: usize = 2000;

/// The text of an objection or answer, trimmed, or what is wrong with it.
pub(super) fn entry<'a>(text: &'a str, what: &str) -> Result<&'a str, HallError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(HallError::Invalid(format!("give the {what}'s text")));
    }
    let chars = text.chars().count();
    if chars > MAX_OBJECTION_CHARS {
        return Err(HallError::Invalid(format!(
            "the {what} is {chars} characters long, more than the {MAX_OBJECTION_CHARS} a record's entry takes: shorten it"
        )));
    }
    Ok(text)
}

fn closed_for_objections(state: &str) -> HallError {
    HallError::WrongState(match state {
        "scheduled" => "objections are recorded from the start of decryption, when the bidders \
                        are published"
            .into(),
        _ => {
            format!("the opening is {state}: its record is final and takes no objection or answer")
        }
    })
}

/// An objection as the snapshot and the record show it.
/// How an objection reached the hall.
#[derive(Debug, Clone, Copy)]
pub(super) enum RaisedBy<'a> {
    /// Recorded by the agent (raised in the room).
    Agent,
    /// Raised by the bidder, signed with its phone: the signature.
    Signed(&'a str),
    /// Raised by the bidder on its page, logged in by scanning.
    LoggedIn,
}

fn objection_view(o: &ObjectionRow, bidders: &[BidderRow]) -> serde_json::Value {
    let bidder = o
        .bidder_id
        .as_deref()
        .and_then(|id| bidders.iter().find(|b| b.id == id))
        .map(|b| json!({"uscc": b.uscc, "name": b.name}));
    json!({
        "n": o.n, "bidder": bidder, "text": o.text, "raised_ms": o.raised_ms,
        "answer": o.answer, "answered_ms": o.answered_ms,
    })
}

impl Hall {
    /// Records an objection to the opening, raised by the bidder with code `bidder_uscc` if it
    /// names one (else by someone the text names); returns its number.
    pub async fn raise_objection(
        &self,
        opening_id: &str,
        bidder_uscc: Option<&str>,
        text: &str,
    ) -> Result<i64, HallError> {
        self.open_for_objections(opening_id).await?;
        let text = entry(text, "objection")?;
        let bidder = match bidder_uscc.map(str::trim).filter(|u| !u.is_empty()) {
            Some(uscc) => Some(self.bidder_coded(opening_id, uscc).await?),
            None => None,
        };
        self.record_objection(opening_id, bidder.as_ref(), text, RaisedBy::Agent)
            .await
    }

    /// Refuses unless the opening takes objections and answers now. Checked before any bidder's
    /// code is looked up: before the bidders are published, whether a code is registered is not
    /// told.
    pub(super) async fn open_for_objections(&self, opening_id: &str) -> Result<(), HallError> {
        let opening = self.opening(opening_id).await?;
        if OPEN_FOR_OBJECTIONS.contains(&opening.state.as_str()) {
            Ok(())
        } else {
            Err(closed_for_objections(&opening.state))
        }
    }

    /// Records an objection a bidder raised itself, on its signature over
    /// [`crate::phone::objection_message`] with a signing key registered for it; returns its
    /// number. The signature goes into the log with the objection.
    pub async fn raise_signed_objection(
        &self,
        opening_id: &str,
        objection: &SignedObjection,
    ) -> Result<i64, HallError> {
        self.open_for_objections(opening_id).await?;
        let bidder = self.bidder_coded(opening_id, &objection.bidder).await?;
        let text = entry(&objection.text, "objection")?;
        let message = objection_message(opening_id, &bidder.uscc, text);
        self.check_bidder_signature(&bidder.id, message, &objection.signature)
            .await?;
        self.record_objection(
            opening_id,
            Some(&bidder),
            text,
            RaisedBy::Signed(objection.signature.trim()),
        )
        .await
    }

    /// Records objection `text` (checked) of `bidder`, raised as `by` says (the log keeps how).
    /// The opening's state is checked again in the write's transaction.
    pub(super) async fn record_objection(
        &self,
        opening_id: &str,
        bidder: Option<&BidderRow>,
        text: &str,
        by: RaisedBy<'_>,
    ) -> Result<i64, HallError> {
        let events = |n: i64| {
            let who = bidder.map(|b| json!({"uscc": b.uscc, "name": b.name}));
            let mut payload = json!({"n": n, "bidder": who, "text": text});
            match by {
                RaisedBy::Agent => {}
                RaisedBy::Signed(signature) => payload["signature"] = json!(signature),
                RaisedBy::LoggedIn => payload["via"] = json!("login"),
            }
            vec![ev("objection.raised", "public", payload)]
        };
        let raised = self
            .inner
            .db
            .raise_objection(
                opening_id,
                OPEN_FOR_OBJECTIONS,
                bidder.map(|b| b.id.as_str()),
                text,
                events,
                self.now(),
            )
            .await?;
        match raised {
            Raised::Recorded(n, staged) => {
                self.publish(staged).await;
                self.count_bidder_action("objection");
                Ok(n)
            }
            Raised::Already(n) => Err(HallError::WrongState(format!(
                "this objection is recorded already, as objection {n}"
            ))),
            Raised::WrongState => Err(HallError::WrongState(
                "the opening changed meanwhile; reload".into(),
            )),
        }
    }

    /// Records the agent's answer to objection `n`, once.
    pub async fn answer_objection(
        &self,
        opening_id: &str,
        n: i64,
        answer: &str,
    ) -> Result<(), HallError> {
        self.open_for_objections(opening_id).await?;
        let answer = entry(answer, "answer")?;
        let events = vec![ev(
            "objection.answered",
            "public",
            json!({"n": n, "answer": answer}),
        )];
        let answered = self
            .inner
            .db
            .answer_objection(
                opening_id,
                OPEN_FOR_OBJECTIONS,
                n,
                answer,
                events,
                self.now(),
            )
            .await?;
        match answered {
            Answered::Recorded(staged) => {
                self.publish(staged).await;
                Ok(())
            }
            Answered::NoSuch => Err(HallError::NotFound("objection")),
            Answered::Already => Err(HallError::WrongState(format!(
                "objection {n} was answered already; an answer in the record is not changed"
            ))),
            Answered::WrongState => Err(HallError::WrongState(
                "the opening changed meanwhile; reload".into(),
            )),
        }
    }

    /// The objections to an opening, as anyone may see them once the bidders are published.
    pub(super) async fn objection_views(
        &self,
        opening_id: &str,
        bidders: &[BidderRow],
    ) -> Result<Vec<serde_json::Value>, HallError> {
        let objections = self.inner.db.objections(opening_id).await?;
        Ok(objections
            .iter()
            .map(|o| objection_view(o, bidders))
            .collect())
    }

    /// Closes an opening whose files are released, once every objection has its answer.
    pub async fn close(&self, opening_id: &str) -> Result<(), HallError> {
        let closing = self
            .inner
            .db
            .close_opening(
                opening_id,
                "released",
                vec![ev("opening.closed", "public", json!({}))],
                self.now(),
            )
            .await?;
        match closing {
            Closing::Closed(staged) => {
                self.publish(staged).await;
                Ok(())
            }
            Closing::WrongState => {
                self.opening(opening_id).await?;
                Err(HallError::WrongState(
                    "only an opening whose files are released can be closed".into(),
                ))
            }
            Closing::Unanswered(open) => Err(HallError::WrongState(format!(
                "objection(s) {} have no answer yet: answer each before closing the opening",
                open.iter()
                    .map(i64::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }
}
