//! The opening record (开标记录): what the opening came to, for the agent to archive and publish
//! (art. 32) and for the bidders to check — the opening's times, every bid received with its
//! digest and what became of it (decrypted; not decrypted and whose fault: 撤销 or 撤回, art. 31),
//! when each bidder signed in (签到),
//! each decrypted bid's summary as it was read out (唱标), the bidders registered without a bid,
//! and the objections with the agent's answers.
//!
//! The record is made from the opening's tables at one point of its event log, and names that
//! point (`log`: number and chain value), so that it can be checked against the log, which the
//! platform's signed head (given with it) pins. Its `digest` is SM3 over the record's JSON exactly
//! as served (`serde_json`, keys in sorted order, no spaces): what a bidder confirms.
//!
//! To have it confirmed, the agent issues the record: that version is kept exactly as served,
//! the hall display shows one QR code for it, and each bidder scans it with the phone, which
//! reads the record, checks its digest and signs it (扫码签章,
//! [`crate::phone::record_confirmation_message`]) with a signing key registered for the bidder.
//! A record issued again (say after another objection) supersedes the earlier version, whose
//! confirmations stay with it.

use serde_json::json;

use super::{Hall, HallError, Role, SignedHead, ev};
use crate::crypto;
use crate::db::{BidRow, Confirmed, IssuedRecordRow};
use crate::phone::{RecordConfirmation, RecordView, record_confirmation_message};

/// The states of an opening whose record can be made: its decryption is over.
const RECORDED: &[&str] = &["decryption_ended", "released", "closed", "failed"];

/// How often the record is made again when the log moved on while it was being read.
const ATTEMPTS: usize = 3;

/// The opening record, its digest and the signed head of the log it was made at.
#[derive(Debug, serde::Serialize)]
pub struct OpeningRecord {
    pub record: serde_json::Value,
    pub digest: String,
    pub log_head: SignedHead,
}

/// What became of a bid, in the words of the record.
fn outcome(bid: &BidRow) -> &'static str {
    match (bid.state.as_str(), bid.fault.as_deref()) {
        ("decrypted", _) => "解密成功",
        (_, Some("platform")) => "未解密（平台原因，视为撤回）",
        (_, Some(_)) => "未解密（投标人原因，视为撤销）",
        ("received" | "awaiting_key", None) => "未解密（开标失败）",
        _ => "未解密",
    }
}

impl Hall {
    /// The opening record as of now, once the opening's decryption is over.
    pub async fn record(&self, opening_id: &str) -> Result<OpeningRecord, HallError> {
        for _ in 0..ATTEMPTS {
            let head = self.signed_head(opening_id, Role::Public).await?;
            let record = self.record_at(opening_id, &head).await?;
            // Made at that head only if no event came meanwhile; else made again.
            let now = self.inner.db.last_event(opening_id).await?.map(|(s, _)| s);
            if now == Some(head.seq) {
                let bytes = serde_json::to_vec(&record).expect("a JSON value serializes");
                return Ok(OpeningRecord {
                    digest: hex::encode(crypto::sm3(&bytes)),
                    record,
                    log_head: head,
                });
            }
        }
        Err(HallError::WrongState(
            "the opening keeps changing while its record is made; try again in a moment".into(),
        ))
    }

    /// The record from the tables, naming the log's `head`.
    async fn record_at(
        &self,
        opening_id: &str,
        head: &SignedHead,
    ) -> Result<serde_json::Value, HallError> {
        let opening = self.opening(opening_id).await?;
        if !RECORDED.contains(&opening.state.as_str()) {
            return Err(HallError::WrongState(format!(
                "the opening is {}: its record is made once decryption has ended (or the opening \
                 failed)",
                opening.state
            )));
        }
        let bidders = self.inner.db.bidders(opening_id).await?;
        let bids = self.inner.db.bids(opening_id).await?;
        let objections = self.objection_views(opening_id, &bidders).await?;
        let bid_entries: Vec<serde_json::Value> = bids
            .iter()
            .map(|bid| {
                let bidder = bidders.iter().find(|b| b.id == bid.bidder_id);
                let summary: Option<serde_json::Value> = bid
                    .summary
                    .as_deref()
                    .and_then(|s| serde_json::from_str(s).ok());
                json!({
                    "bidder": bidder.map(|b| json!({"uscc": b.uscc, "name": b.name, "signed_in_ms": b.signed_in_ms})),
                    "received_ms": bid.received_ms, "size": bid.size, "sm3": bid.sm3,
                    "state": bid.state, "fault": bid.fault, "outcome": outcome(bid),
                    "failure": bid.failure, "summary": summary,
                })
            })
            .collect();
        let without_bid: Vec<serde_json::Value> = bidders
            .iter()
            .filter(|b| !bids.iter().any(|bid| bid.bidder_id == b.id))
            .map(|b| json!({"uscc": b.uscc, "name": b.name, "signed_in_ms": b.signed_in_ms}))
            .collect();
        Ok(json!({
            "title": "开标记录",
            "opening": {
                "id": opening.id, "tender_id": opening.tender_id, "name": opening.name,
                "deadline_ms": opening.deadline_ms, "opening_ms": opening.opening_ms,
                "decrypt_limit_secs": opening.decrypt_limit_secs,
                "decrypt_started_ms": opening.decrypt_started_ms,
                "decrypt_deadline_ms": opening.decrypt_deadline_ms,
                "state": opening.state, "failure": opening.failure,
            },
            "bids": bid_entries,
            "bidders_without_bid": without_bid,
            "objections": objections,
            "log": {"seq": head.seq, "hash": head.hash},
        }))
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
            .await?;
        self.publish(staged).await;
        Ok((version, made.digest))
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
