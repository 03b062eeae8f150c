//! What the platform signs, so that a bidder, a viewer or an auditor can hold it to its word
//! later: the receipt (回执) of each upload, and heads of an opening's event log (a number and
//! the chain's hash after it).
//!
//! The log is hash-chained, but a chain alone shows only an edit that leaves later hashes stale:
//! whoever can write the database can recompute every hash after an edit, or drop the newest
//! events, and the chain checks again. A signed head kept outside the platform pins the log up to
//! its number: [`LogVerdict`] tells when the log no longer leads to it, and the signature proves
//! the platform once showed that head.
//!
//! Signatures are SM2 with SM3 and the standard user ID, as the phones' are, over a JSON array of
//! the fields in a fixed order after a label, so that no two kinds of signed thing share a message.

use serde::{Deserialize, Serialize};
use sm2::{PublicKey, SecretKey};

use super::events::{EventDigest, GENESIS, chain_link, event_body_digest};
use super::{HallError, Receipt};
use crate::crypto::{self, KeyError};
use crate::db::EventRow;

const RECEIPT_LABEL: &str = "kaibiao upload receipt v1";
const HEAD_LABEL: &str = "kaibiao log head v1";

impl Receipt {
    /// The bytes the platform signs: every field but the signature.
    pub fn signed_message(&self) -> Vec<u8> {
        serde_json::json!([
            RECEIPT_LABEL,
            self.bid_id,
            self.opening_id,
            self.tender_id,
            self.bidder,
            self.size,
            self.sm3,
            self.received_ms,
            self.replaced
        ])
        .to_string()
        .into_bytes()
    }

    /// Checks the receipt was signed by the platform whose key is `platform`.
    pub fn verify(&self, platform: &PublicKey) -> Result<(), KeyError> {
        verify_hex(platform, &self.signed_message(), &self.signature)
    }
}

/// The head of an opening's event log as the platform showed it to someone, signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedHead {
    pub opening_id: String,
    /// The number of the last event the head covers; 0 for an empty log.
    pub seq: i64,
    /// That event's chain hash ([`super::GENESIS`] for an empty log).
    pub hash: String,
    /// When the platform signed it (ms since the epoch).
    pub signed_ms: i64,
    /// SM2 signature (DER, hex) of [`SignedHead::signed_message`].
    pub signature: String,
}

impl SignedHead {
    pub fn signed_message(&self) -> Vec<u8> {
        serde_json::json!([
            HEAD_LABEL,
            self.opening_id,
            self.seq,
            self.hash,
            self.signed_ms
        ])
        .to_string()
        .into_bytes()
    }

    pub fn verify(&self, platform: &PublicKey) -> Result<(), KeyError> {
        verify_hex(platform, &self.signed_message(), &self.signature)
    }
}

/// What checking an opening's log found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogVerdict {
    /// Every hash recomputes and the log leads to the head given, if one was.
    Valid { events: i64 },
    /// The event with this number does not hash to what the log stores.
    Broken { first_bad_seq: i64 },
    /// The chain recomputes, but the event at the head's number has another hash: the log was
    /// rewritten from that event or before it.
    Rewritten { seq: i64 },
    /// The chain recomputes, but ends before the head's number: events were removed.
    Truncated { seq: i64, events: i64 },
}

impl LogVerdict {
    /// Judges a log whose chain check gave `chain` (the number of events, or the first bad
    /// number) against a head `(seq, hash)`, given the stored hash of the event `seq` if there is
    /// one.
    pub fn judge(chain: Result<i64, i64>, head: Option<(i64, &str)>, stored: Option<&str>) -> Self {
        let events = match chain {
            Err(first_bad_seq) => return Self::Broken { first_bad_seq },
            Ok(events) => events,
        };
        match head {
            None => Self::Valid { events },
            Some((seq, _)) if seq > events => Self::Truncated { seq, events },
            Some((0, hash)) if hash.eq_ignore_ascii_case(super::GENESIS) => Self::Valid { events },
            Some((_, hash)) if stored.is_some_and(|s| s.eq_ignore_ascii_case(hash)) => {
                Self::Valid { events }
            }
            Some((seq, _)) => Self::Rewritten { seq },
        }
    }

    /// What it means, for whoever asked.
    pub fn explain(&self) -> String {
        match self {
            Self::Valid { events } => format!("all {events} events check"),
            Self::Broken { first_bad_seq } => format!(
                "event {first_bad_seq} does not match its hash: the log was changed there or \
                 before; the record cannot be trusted from that event on"
            ),
            Self::Rewritten { seq } => format!(
                "the log no longer leads to the head given: event {seq} has another hash, so if \
                 the platform signed that head, the log was rewritten at or before event {seq}"
            ),
            Self::Truncated { seq, events } => format!(
                "the head given names event {seq}, but the log ends at event {events}: if the \
                 platform signed that head, events were removed"
            ),
        }
    }
}

/// Signs `message` with the platform's key: the signature as hex DER.
pub(super) fn sign_hex(key: &SecretKey, message: &[u8]) -> Result<String, HallError> {
    crypto::sign(key, message)
        .map(hex::encode)
        .map_err(|e| HallError::Internal(format!("signing as the platform: {e}")))
}

fn verify_hex(key: &PublicKey, message: &[u8], signature: &str) -> Result<(), KeyError> {
    let signature = hex::decode(signature).map_err(|_| KeyError::BadSignature)?;
    crypto::verify(key, message, &signature)
}

/// A point an opening's log must pass through: event `seq` with a chain value starting `hash`
/// (at least 16 hex digits), and where it was seen (for the message).
#[derive(Debug, Clone)]
pub struct Pin {
    pub seq: i64,
    pub hash: String,
    pub from: String,
}

/// Checks an opening's chain (version 2) from its start through `digests`, the digest of every
/// event in order: that it leads to `hash` at event `seq` and passes through every pin, and that
/// `read`, the public events up to `seq` as the hall gave them, are exactly the public events the
/// chain holds, each the one chained. What is wrong, in words, if anything.
pub fn check_chain(
    digests: &[EventDigest],
    (seq, hash): (i64, &str),
    read: &[EventRow],
    pins: &[Pin],
) -> Result<(), String> {
    let mut prev = GENESIS.to_owned();
    for (i, d) in digests.iter().enumerate() {
        if d.seq != i as i64 + 1 {
            return Err(format!(
                "the log's digests go from event {} to event {}: an event is missing",
                i, d.seq
            ));
        }
        let link = chain_link(&prev, d.seq, &d.audience, &d.body_sm3);
        if link != d.hash {
            return Err(format!(
                "event {} does not chain to the one before: the log was changed after it was \
                 written",
                d.seq
            ));
        }
        prev = link;
    }
    let value_at = |n: i64| match n {
        0 => Some(GENESIS),
        n => digests.get((n - 1) as usize).map(|d| d.hash.as_str()),
    };
    if value_at(seq) != Some(hash) {
        return Err(format!(
            "the log's chain does not lead to the value the record names at event {seq}"
        ));
    }
    for pin in pins {
        match value_at(pin.seq) {
            None => {
                return Err(format!(
                    "the log ends at event {}, but {} saw event {}: the log was cut short",
                    digests.len(),
                    pin.from,
                    pin.seq
                ));
            }
            Some(value) if !value.starts_with(&pin.hash) => {
                return Err(format!(
                    "{} saw chain value {} at event {}; the log now has {value} there: it was \
                     rewritten at or before event {}",
                    pin.from, pin.hash, pin.seq, pin.seq
                ));
            }
            Some(_) => {}
        }
    }
    // The events read are every public one up to `seq`, once each, in order: none left out.
    let public: Vec<i64> = digests
        .iter()
        .filter(|d| d.seq <= seq && d.audience == "public")
        .map(|d| d.seq)
        .collect();
    let given: Vec<i64> = read.iter().map(|e| e.seq).collect();
    if given != public {
        let missing: Vec<String> = public
            .iter()
            .filter(|n| !given.contains(n))
            .map(i64::to_string)
            .collect();
        return Err(format!(
            "the public events the hall gives are not those its chain holds (left out: {}): \
             the record may leave out what they say",
            if missing.is_empty() {
                "none, but some repeated or out of order".to_owned()
            } else {
                missing.join(", ")
            }
        ));
    }
    for e in read {
        let d = &digests[(e.seq - 1) as usize];
        if event_body_digest(e) != d.body_sm3 || e.audience != d.audience || e.hash != d.hash {
            return Err(format!(
                "event {} ({}) as the hall gives it is not the event its chain holds: it was \
                 changed after it was written",
                e.seq, e.kind
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Five events chained (version 2), two of them the agent's; their digests; the public ones.
    fn chain() -> (Vec<EventRow>, Vec<EventDigest>) {
        let mut prev = GENESIS.to_owned();
        let mut rows = Vec::new();
        for (i, audience) in ["public", "agent", "public", "public", "agent"]
            .iter()
            .enumerate()
        {
            let mut row = EventRow {
                opening_id: "o1".into(),
                seq: i as i64 + 1,
                ts_ms: 1000 + i as i64,
                kind: format!("k{i}"),
                audience: (*audience).into(),
                payload: format!("{{\"n\":{i}}}"),
                hash: String::new(),
                salt: format!("{i:032x}"),
            };
            row.hash = super::super::chain_hash(2, &prev, &row);
            prev = row.hash.clone();
            rows.push(row);
        }
        let digests = rows.iter().map(EventDigest::of).collect();
        (rows, digests)
    }

    fn public(rows: &[EventRow]) -> Vec<EventRow> {
        rows.iter()
            .filter(|r| r.audience == "public")
            .cloned()
            .collect()
    }

    #[test]
    fn a_chain_is_checked_through_the_events_one_may_not_read() {
        let (rows, digests) = chain();
        let head = (5, rows[4].hash.as_str());
        let read = public(&rows);
        assert_eq!(check_chain(&digests, head, &read, &[]), Ok(()));
        // Up to an earlier point, the events read stop there.
        let earlier = (3, rows[2].hash.as_str());
        assert_eq!(check_chain(&digests, earlier, &read[..2], &[]), Ok(()));

        // A public event left out, or given twice.
        let left_out = [read[0].clone(), read[2].clone()];
        let said = check_chain(&digests, head, &left_out, &[]).unwrap_err();
        assert!(said.contains("left out: 3"), "{said}");
        let twice = [
            read[0].clone(),
            read[1].clone(),
            read[1].clone(),
            read[2].clone(),
        ];
        let said = check_chain(&digests, head, &twice, &[]).unwrap_err();
        assert!(said.contains("repeated"), "{said}");

        // A public event changed after it was chained.
        let mut changed = read.clone();
        changed[1].payload = "{\"n\":9}".into();
        let said = check_chain(&digests, head, &changed, &[]).unwrap_err();
        assert!(
            said.contains("event 3 (k2)") && said.contains("not the event"),
            "{said}"
        );

        // The digest of an event one may not read changed: the chain breaks there.
        let mut forged = digests.clone();
        forged[1].body_sm3 = "00".repeat(32);
        let said = check_chain(&forged, head, &read, &[]).unwrap_err();
        assert!(said.contains("event 2 does not chain"), "{said}");

        // The chain must lead to the value named.
        let said = check_chain(&digests, (5, rows[3].hash.as_str()), &read, &[]).unwrap_err();
        assert!(said.contains("does not lead"), "{said}");
    }

    #[test]
    fn a_chain_must_pass_through_the_points_seen_earlier() {
        let (rows, digests) = chain();
        let head = (5, rows[4].hash.as_str());
        let read = public(&rows);
        let pin = |seq: i64, hash: &str| Pin {
            seq,
            hash: hash.into(),
            from: "the footer".into(),
        };
        let seen = [pin(2, &rows[1].hash[..16]), pin(0, &GENESIS[..16])];
        assert_eq!(check_chain(&digests, head, &read, &seen), Ok(()));
        let said = check_chain(&digests, head, &read, &[pin(4, &rows[1].hash[..16])]).unwrap_err();
        assert!(
            said.contains("the footer saw chain value") && said.contains("event 4"),
            "{said}"
        );
        let said = check_chain(&digests, head, &read, &[pin(7, &rows[1].hash[..16])]).unwrap_err();
        assert!(said.contains("cut short"), "{said}");
    }

    fn receipt() -> Receipt {
        Receipt {
            bid_id: "b1".into(),
            opening_id: "o1".into(),
            tender_id: "T-1\n2".into(),
            bidder: "91350100M000100Y43".into(),
            size: 42,
            sm3: "ab".repeat(32),
            received_ms: 1_700_000_000_000,
            replaced: false,
            signature: String::new(),
        }
    }

    #[test]
    fn a_receipt_verifies_until_any_field_changes() {
        let key = crypto::derive_secret_key(&[1; 16], "test");
        let mut r = receipt();
        r.signature = sign_hex(&key, &r.signed_message()).unwrap();
        r.verify(&key.public_key()).unwrap();
        let other = crypto::derive_secret_key(&[2; 16], "test");
        assert!(r.verify(&other.public_key()).is_err());
        let changes: [fn(&mut Receipt); 8] = [
            |r| r.bid_id.push('x'),
            |r| r.opening_id.push('x'),
            |r| r.tender_id.push('x'),
            |r| r.bidder.push('x'),
            |r| r.size += 1,
            |r| r.sm3.replace_range(..1, "c"),
            |r| r.received_ms -= 1,
            |r| r.replaced = true,
        ];
        for change in changes {
            let mut changed = r.clone();
            change(&mut changed);
            assert!(changed.verify(&key.public_key()).is_err(), "{changed:?}");
        }
    }

    #[test]
    fn a_head_is_not_a_receipt() {
        let key = crypto::derive_secret_key(&[1; 16], "test");
        let head = SignedHead {
            opening_id: "o1".into(),
            seq: 3,
            hash: "ab".repeat(32),
            signed_ms: 5,
            signature: String::new(),
        };
        let mut r = receipt();
        r.signature = sign_hex(&key, &head.signed_message()).unwrap();
        assert!(r.verify(&key.public_key()).is_err());
        let head = SignedHead {
            signature: sign_hex(&key, &head.signed_message()).unwrap(),
            ..head
        };
        head.verify(&key.public_key()).unwrap();
    }

    #[test]
    fn the_derived_key_is_the_same_for_the_same_seed_only() {
        let a = crypto::derive_secret_key(&[1; 16], "platform");
        assert_eq!(
            a.to_bytes(),
            crypto::derive_secret_key(&[1; 16], "platform").to_bytes()
        );
        assert_ne!(
            a.to_bytes(),
            crypto::derive_secret_key(&[2; 16], "platform").to_bytes()
        );
        assert_ne!(
            a.to_bytes(),
            crypto::derive_secret_key(&[1; 16], "other").to_bytes()
        );
    }

    #[test]
    fn a_log_is_judged_against_a_head() {
        let h = "ab".repeat(32);
        let judge = LogVerdict::judge;
        assert_eq!(judge(Ok(5), None, None), LogVerdict::Valid { events: 5 });
        assert_eq!(
            judge(Err(3), Some((2, &h)), None),
            LogVerdict::Broken { first_bad_seq: 3 }
        );
        assert_eq!(
            judge(Ok(5), Some((4, &h)), Some(&h)),
            LogVerdict::Valid { events: 5 }
        );
        assert_eq!(
            judge(Ok(5), Some((4, &h)), Some(&"cd".repeat(32))),
            LogVerdict::Rewritten { seq: 4 }
        );
        assert_eq!(
            judge(Ok(3), Some((4, &h)), None),
            LogVerdict::Truncated { seq: 4, events: 3 }
        );
        assert_eq!(
            judge(Ok(0), Some((0, super::super::GENESIS)), None),
            LogVerdict::Valid { events: 0 }
        );
        assert_eq!(
            judge(Ok(1), Some((0, &h)), None),
            LogVerdict::Rewritten { seq: 0 }
        );
    }
}
