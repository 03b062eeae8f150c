//! The opening record (开标记录): what the opening came to, for the agent to archive and publish
//! (art. 32) and for the bidders to check — the opening's times, every bid received with its
//! digest and what became of it (decrypted; not decrypted and whose fault: 撤销 or 撤回, art. 31),
//! when each bidder signed in (签到),
//! each decrypted bid's summary as it was read out (唱标), the bidders registered without a bid,
//! and the objections with the agent's answers.
//!
//! The record is folded from the opening's public event log up to one point, which it names
//! (`log`: number and chain value) and the platform's signed head (given with it) pins: anyone
//! who can read the public log makes the same record ([`crate::domain::record`], and
//! `kaibiao record check`). Its `digest` is SM3 over the record's JSON exactly
//! as served (`serde_json`, keys in sorted order, no spaces): what a bidder confirms.
//!
//! To have it confirmed, the agent issues the record: that version is kept exactly as served,
//! the hall display shows one QR code for it, and each bidder scans it with the phone, which
//! reads the record, checks its digest and signs it (扫码签章,
//! [`crate::phone::record_confirmation_message`]) with a signing key registered for the bidder.
//! A record issued again (say after another objection) supersedes the earlier version, whose
//! confirmations stay with it.

use std::sync::Arc;

use serde_json::json;

use super::{Hall, HallError, Role, SignedHead, ev};
use crate::crypto;
use crate::db::{Confirmed, EventRow, IssuedRecordRow};
use crate::domain::record::{LogEvent, RECORDED_STATES, RecordError, RecordFold};
use crate::phone::{RecordConfirmation, RecordView, record_confirmation_message};

/// The opening record, its digest and the signed head of the log it was made at.
#[derive(Debug, serde::Serialize)]
pub struct OpeningRecord {
    pub record: serde_json::Value,
    pub digest: String,
    pub log_head: SignedHead,
}

/// How many events are read from the database at a time to fold the record.
const PAGE: i64 = 1000;

/// Folds stored events (as the database or `/events` gives them) into `fold`, oldest first.
pub fn fold_rows<'a>(
    fold: &mut RecordFold,
    rows: impl IntoIterator<Item = &'a EventRow>,
) -> Result<(), RecordError> {
    for e in rows {
        let payload: serde_json::Value =
            serde_json::from_str(&e.payload).map_err(|_| RecordError::Malformed {
                seq: e.seq,
                kind: e.kind.clone(),
                field: "payload",
            })?;
        fold.apply(LogEvent {
            seq: e.seq,
            ts_ms: e.ts_ms,
            kind: &e.kind,
            payload: &payload,
        })?;
    }
    Ok(())
}

impl Hall {
    /// The opening record as of now, once the opening's decryption is over: the fold of its
    /// public log up to the platform's signed head (see [`crate::domain::record`]).
    pub async fn record(&self, opening_id: &str) -> Result<Arc<OpeningRecord>, HallError> {
        let opening = self.opening(opening_id).await?;
        if !RECORDED_STATES.contains(&opening.state.as_str()) {
            return Err(RecordError::NotOver(opening.state).into());
        }
        let head = self.signed_head(opening_id, Role::Public).await?;
        if let Some(made) = self.inner.records.get(opening_id)
            && made.log_head.seq == head.seq
            && made.log_head.hash == head.hash
        {
            return Ok(made.clone());
        }
        let mut fold = RecordFold::new(opening_id);
        let mut after = 0;
        while after < head.seq {
            let page = self.inner.db.events_since(opening_id, after, PAGE).await?;
            let Some(last) = page.last() else { break };
            after = last.seq;
            let public = page
                .iter()
                .filter(|e| e.seq <= head.seq && e.audience == "public");
            fold_rows(&mut fold, public)?;
        }
        let record = fold.record(head.seq, &head.hash).map_err(|e| match e {
            // The tables moved on and the event saying so is about to be published.
            RecordError::NotOver(_) => HallError::WrongState(
                "the opening's log is catching up with its last change: try again in a moment"
                    .into(),
            ),
            e => e.into(),
        })?;
        let bytes = serde_json::to_vec(&record).expect("a JSON value serializes");
        let made = Arc::new(OpeningRecord {
            digest: hex::encode(crypto::sm3(&bytes)),
            record,
            log_head: head,
        });
        self.inner
            .records
            .insert(opening_id.to_owned(), made.clone());
        Ok(made)
    }
}

impl Hall {
    /// Issues the record as of now for the bidders to confirm; its version and digest.
    pub async fn issue_record(&self, opening_id: &str) -> Result<(i64, String), HallError> {
        let made = self.record(opening_id).await?;
        let text = serde_json::to_string(&made.record).expect("a JSON value serializes");
        let events = |version: i64| {
            vec![ev(
                "record.issued",
                "public",
                json!({"version": version, "digest": made.digest, "log_seq": made.log_head.seq}),
            )]
        };
        let (version, staged) = self
            .inner
            .db
            .issue_record(opening_id, &made.digest, &text, events, self.now())
            .await?
            .ok_or_else(|| {
                HallError::WrongState(
                    "the opening is closed: the record confirmed before the close is the one \
                     archived, and no new version is issued"
                        .into(),
                )
            })?;
        self.publish(staged).await;
        Ok((version, made.digest.clone()))
    }

    async fn latest_record(&self, opening_id: &str) -> Result<IssuedRecordRow, HallError> {
        self.opening(opening_id).await?;
        self.inner
            .db
            .latest_record(opening_id)
            .await?
            .ok_or(HallError::NotFound(
                "issued record (the agent issues it once decryption has ended)",
            ))
    }

    /// The latest issued record's version, digest and who confirmed it, or `None` before one
    /// was issued.
    pub async fn issued_record(
        &self,
        opening_id: &str,
    ) -> Result<Option<serde_json::Value>, HallError> {
        let Some(issued) = self.inner.db.latest_record(opening_id).await? else {
            return Ok(None);
        };
        let bidders = self.inner.db.bidders(opening_id).await?;
        let confirmations = self
            .inner
            .db
            .record_confirmations(opening_id, issued.version)
            .await?;
        let confirmed: Vec<serde_json::Value> = confirmations
            .iter()
            .filter_map(|(bidder_id, at, signature)| {
                let b = bidders.iter().find(|b| &b.id == bidder_id)?;
                Some(json!({"uscc": b.uscc, "name": b.name, "confirmed_ms": at, "signature": signature}))
            })
            .collect();
        Ok(Some(json!({
            "version": issued.version, "digest": issued.digest, "issued_ms": issued.issued_ms,
            "confirmations": confirmed,
        })))
    }

    /// Version `version` of the issued record, exactly as issued (its SM3 is its digest), if it
    /// is the latest.
    pub async fn issued_record_text(
        &self,
        opening_id: &str,
        version: i64,
    ) -> Result<String, HallError> {
        let issued = self.latest_record(opening_id).await?;
        if issued.version != version {
            return Err(superseded(issued.version));
        }
        Ok(issued.record)
    }

    /// The URL the record's QR code holds: where the phone fetches the [`RecordView`].
    pub fn record_qr_url(&self, opening_id: &str, version: i64) -> String {
        format!(
            "{}/api/phone/records/{opening_id}/{version}",
            self.public_url()
        )
    }

    /// What the phone is shown when it scans the record's QR code.
    pub async fn record_view(
        &self,
        opening_id: &str,
        version: i64,
    ) -> Result<RecordView, HallError> {
        let opening = self.opening(opening_id).await?;
        let issued = self.latest_record(opening_id).await?;
        if issued.version != version {
            return Err(superseded(issued.version));
        }
        let base = self.public_url();
        Ok(RecordView {
            opening_id: opening.id.clone(),
            tender_id: opening.tender_id,
            tender_name: opening.name,
            version,
            digest: issued.digest,
            record_url: format!("{base}/api/openings/{opening_id}/record/issued/{version}"),
            answer_url: self.record_qr_url(opening_id, version),
        })
    }

    /// Records a bidder's confirmation of version `version` of the record, on its signature
    /// with a signing key registered for it.
    pub async fn confirm_record(
        &self,
        opening_id: &str,
        version: i64,
        confirmation: &RecordConfirmation,
    ) -> Result<(), HallError> {
        let issued = self.latest_record(opening_id).await?;
        if issued.version != version {
            return Err(superseded(issued.version));
        }
        let bidder = self.bidder_coded(opening_id, &confirmation.bidder).await?;
        let message = record_confirmation_message(opening_id, version, &issued.digest);
        self.check_bidder_signature(&bidder.id, message, &confirmation.signature)
            .await?;
        let events = vec![ev(
            "record.confirmed",
            "public",
            json!({"version": version, "bidder": {"uscc": bidder.uscc, "name": bidder.name}}),
        )];
        let confirmed = self
            .inner
            .db
            .confirm_record(
                opening_id,
                version,
                &bidder.id,
                confirmation.signature.trim(),
                events,
                self.now(),
            )
            .await?;
        match confirmed {
            Confirmed::Recorded(staged) => {
                self.publish(staged).await;
                self.count_bidder_action("record_confirmation");
                Ok(())
            }
            Confirmed::Already => Err(HallError::WrongState(format!(
                "{} confirmed this record already",
                bidder.name
            ))),
            Confirmed::Superseded(latest) => Err(superseded(latest)),
        }
    }
}

fn superseded(latest: i64) -> HallError {
    HallError::WrongState(format!(
        "this version of the record is not the latest (version {latest} is): scan the code the \
         hall shows now"
    ))
}
