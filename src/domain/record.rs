//! The opening record (开标记录) folded from the opening's public event log.
//!
//! DOMAIN.md asks that "the record can be re-derived and checked from" the log. So the record is
//! not read from the platform's tables: it is what [`RecordFold`] makes of the log's public
//! events up to a point, and anyone who can read those events (every remote viewer can) makes
//! the same record with this code and checks the platform's copy against it. The events it
//! reads: `opening.created`; `decryption.started` and `opening.failed` before decryption, which
//! publish (公布投标人) the bidders, their sign-in times and the bids; `bid.received` for a bid
//! checked after decryption began; the decryption's `bid.*` events; `decryption.extended`,
//! `decryption.ended`, `files.released`, `opening.closed`; and the objections with their answers.
//! Agent-only events (registrations, uploads and sign-ins before publication) are folded too
//! when given, and then superseded by the published list, so the platform's full log and the
//! public one make the same record.
//!
//! This module knows nothing of the database or the web: events in, JSON out.

use serde_json::{Value, json};

/// An event of the log, as the fold reads it.
#[derive(Debug, Clone, Copy)]
pub struct LogEvent<'a> {
    pub seq: i64,
    pub ts_ms: i64,
    pub kind: &'a str,
    pub payload: &'a Value,
}

/// Why the log could not be folded into a record.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    #[error(
        "event {seq} ({kind}) of the opening's log has no valid `{field}`: the log is damaged or \
         was not written by kaibiao; check it with /events/verify"
    )]
    Malformed {
        seq: i64,
        kind: String,
        field: &'static str,
    },
    #[error(
        "event {seq} ({kind}) of the opening's log names a bid the log never published ({bid}): \
         the log is damaged; check it with /events/verify"
    )]
    UnknownBid { seq: i64, kind: String, bid: String },
    #[error(
        "the log does not begin with the opening's creation: the events are not this opening's \
         whole log"
    )]
    NoOpening,
    #[error(
        "the opening is {0}: its record is made once decryption has ended (or the opening failed)"
    )]
    NotOver(String),
    #[error(
        "{0} bid(s) are still being decrypted: the record is made once each is decrypted or given \
         up (the agent gives up a decryption the platform keeps failing)"
    )]
    StillDecrypting(usize),
}

/// The states of an opening whose record can be made: its decryption is over.
pub const RECORDED_STATES: &[&str] = &["decryption_ended", "released", "closed", "failed"];

#[derive(Debug, Clone)]
struct Opening {
    tender_id: Value,
    name: Value,
    deadline_ms: Value,
    opening_ms: Value,
    decrypt_limit_secs: Value,
    decrypt_started_ms: Option<i64>,
    decrypt_deadline_ms: Option<i64>,
    state: String,
    failure: Option<String>,
}

#[derive(Debug, Clone)]
struct Bidder {
    uscc: String,
    name: String,
    signed_in_ms: Option<i64>,
}

#[derive(Debug, Clone)]
struct Bid {
    id: String,
    bidder_code: String,
    received_ms: i64,
    size: Value,
    sm3: Value,
    state: String,
    fault: Option<String>,
    failure: Option<String>,
    summary: Value,
}

#[derive(Debug, Clone)]
struct Objection {
    n: i64,
    bidder: Value,
    text: Value,
    raised_ms: i64,
    answer: Option<String>,
    answered_ms: Option<i64>,
}

/// What became of a bid, in the words of the record (art. 31: whose fault).
pub fn outcome(state: &str, fault: Option<&str>) -> &'static str {
    match (state, fault) {
        ("decrypted", _) => "解密成功",
        (_, Some("platform")) => "未解密（平台原因，视为撤回）",
        (_, Some(_)) => "未解密（投标人原因，视为撤销）",
        ("received" | "awaiting_key", None) => "未解密（开标失败）",
        _ => "未解密",
    }
}

/// The opening record folded from its log, event by event, oldest first.
#[derive(Debug, Clone)]
pub struct RecordFold {
    opening_id: String,
    opening: Option<Opening>,
    bidders: Vec<Bidder>,
    bids: Vec<Bid>,
    objections: Vec<Objection>,
}

/// Reads the fields of one event's payload, naming the event in what it refuses.
struct Fields<'a> {
    event: LogEvent<'a>,
}

impl<'a> Fields<'a> {
    fn bad(&self, field: &'static str) -> RecordError {
        RecordError::Malformed {
            seq: self.event.seq,
            kind: self.event.kind.to_owned(),
            field,
        }
    }

    fn of(&self, value: &'a Value, field: &'static str) -> Result<&'a Value, RecordError> {
        value.get(field).ok_or_else(|| self.bad(field))
    }

    fn int_of(&self, value: &Value, field: &'static str) -> Result<i64, RecordError> {
        value
            .get(field)
            .and_then(Value::as_i64)
            .ok_or_else(|| self.bad(field))
    }

    fn text_of(&self, value: &Value, field: &'static str) -> Result<String, RecordError> {
        value
            .get(field)
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| self.bad(field))
    }

    /// A field that may be null or absent.
    fn maybe_text_of(
        &self,
        value: &Value,
        field: &'static str,
    ) -> Result<Option<String>, RecordError> {
        match value.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(self.bad(field)),
        }
    }

    fn maybe_int_of(&self, value: &Value, field: &'static str) -> Result<Option<i64>, RecordError> {
        match value.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_i64().map(Some).ok_or_else(|| self.bad(field)),
        }
    }

    fn get(&self, field: &'static str) -> Result<&'a Value, RecordError> {
        self.of(self.event.payload, field)
    }

    fn int(&self, field: &'static str) -> Result<i64, RecordError> {
        self.int_of(self.event.payload, field)
    }

    fn text(&self, field: &'static str) -> Result<String, RecordError> {
        self.text_of(self.event.payload, field)
    }

    fn list(&self, field: &'static str) -> Result<&'a Vec<Value>, RecordError> {
        self.get(field)?.as_array().ok_or_else(|| self.bad(field))
    }
}

impl RecordFold {
    /// An empty fold of opening `opening_id`'s log.
    pub fn new(opening_id: &str) -> RecordFold {
        RecordFold {
            opening_id: opening_id.to_owned(),
            opening: None,
            bidders: Vec::new(),
            bids: Vec::new(),
            objections: Vec::new(),
        }
    }

    /// Folds in the log's next event. Events the record does not depend on (progress, QR codes,
    /// refused answers, …) change nothing.
    pub fn apply(&mut self, event: LogEvent<'_>) -> Result<(), RecordError> {
        let f = Fields { event };
        if event.kind == "opening.created" {
            self.opening = Some(Opening {
                tender_id: f.get("tender_id")?.clone(),
                name: f.get("name")?.clone(),
                deadline_ms: f.get("deadline_ms")?.clone(),
                opening_ms: f.get("opening_ms")?.clone(),
                decrypt_limit_secs: f.get("decrypt_limit_secs")?.clone(),
                decrypt_started_ms: None,
                decrypt_deadline_ms: None,
                state: "scheduled".into(),
                failure: None,
            });
            return Ok(());
        }
        if self.opening.is_none() {
            return Err(RecordError::NoOpening);
        }
        match event.kind {
            "bidder.registered" => {
                let uscc = f.text("uscc")?;
                if !self.bidders.iter().any(|b| b.uscc == uscc) {
                    self.bidders.push(Bidder {
                        uscc,
                        name: f.text("name")?,
                        signed_in_ms: None,
                    });
                }
            }
            "bidder.signed_in" => {
                let uscc = f.text_of(f.get("bidder")?, "uscc")?;
                let at = f.int("signed_in_ms")?;
                if let Some(b) = self.bidders.iter_mut().find(|b| b.uscc == uscc) {
                    b.signed_in_ms = Some(at);
                }
            }
            "bid.received" => {
                let bid = Bid {
                    id: f.text("bid_id")?,
                    bidder_code: f.text("bidder_code")?,
                    received_ms: f.int("received_ms")?,
                    size: f.get("size")?.clone(),
                    sm3: f.get("sm3")?.clone(),
                    state: f.text("state")?,
                    fault: None,
                    failure: None,
                    summary: Value::Null,
                };
                // A bidder has one bid: a new upload replaces the one before.
                self.bids.retain(|b| b.bidder_code != bid.bidder_code);
                self.bids.push(bid);
            }
            "bid.withdrawn" => {
                let id = f.text("bid_id")?;
                self.bids.retain(|b| b.id != id);
            }
            "decryption.started" => {
                let (started, deadline) = (f.int("started_ms")?, f.int("deadline_ms")?);
                self.publish(&f)?;
                let opening = self.opening_mut();
                opening.state = "decrypting".into();
                opening.decrypt_started_ms = Some(started);
                opening.decrypt_deadline_ms = Some(deadline);
            }
            "opening.failed" => {
                let reason = f.text("reason")?;
                if event.payload.get("bids").is_some() {
                    self.publish(&f)?;
                }
                let opening = self.opening_mut();
                opening.state = "failed".into();
                opening.failure = Some(reason);
            }
            "decryption.extended" => {
                self.opening_mut().decrypt_deadline_ms = Some(f.int("deadline_ms")?)
            }
            "decryption.ended" => {
                self.opening_mut().state = "decryption_ended".into();
                let failure = f.maybe_text_of(event.payload, "failure")?;
                let fault = f.maybe_text_of(event.payload, "fault")?;
                for id in f.list("not_decrypted")? {
                    let id = id.as_str().ok_or_else(|| f.bad("not_decrypted"))?;
                    let bid = self.bid(&f, id)?;
                    bid.state = "not_decrypted".into();
                    bid.failure = failure.clone();
                    bid.fault = fault.clone();
                }
            }
            "files.released" => self.opening_mut().state = "released".into(),
            "opening.closed" => self.opening_mut().state = "closed".into(),
            "bid.key_accepted" => self.bid(&f, &f.text("bid_id")?)?.state = "decrypting".into(),
            "bid.summary" => {
                let summary = f.get("summary")?.clone();
                self.bid(&f, &f.text("bid_id")?)?.summary = summary;
            }
            "bid.decrypted" => self.bid(&f, &f.text("bid_id")?)?.state = "decrypted".into(),
            "bid.failed" => {
                let (failure, fault) = (f.text("message")?, f.text("fault")?);
                let bid = self.bid(&f, &f.text("bid_id")?)?;
                bid.state = "failed".into();
                bid.failure = Some(failure);
                bid.fault = Some(fault);
            }
            "objection.raised" => self.objections.push(Objection {
                n: f.int("n")?,
                bidder: match f.get("bidder")? {
                    Value::Null => Value::Null,
                    b => json!({"uscc": f.text_of(b, "uscc")?, "name": f.text_of(b, "name")?}),
                },
                text: f.get("text")?.clone(),
                raised_ms: event.ts_ms,
                answer: None,
                answered_ms: None,
            }),
            "objection.answered" => {
                let n = f.int("n")?;
                let answer = f.text("answer")?;
                let objection = self
                    .objections
                    .iter_mut()
                    .find(|o| o.n == n)
                    .ok_or_else(|| f.bad("n"))?;
                objection.answer = Some(answer);
                objection.answered_ms = Some(event.ts_ms);
            }
            _ => {}
        }
        Ok(())
    }

    fn opening_mut(&mut self) -> &mut Opening {
        self.opening
            .as_mut()
            .expect("checked by `apply` before any event but the creation")
    }

    /// Takes the bidders and bids as an event publishes them (公布投标人).
    fn publish(&mut self, f: &Fields<'_>) -> Result<(), RecordError> {
        let mut bidders = Vec::new();
        for b in f.list("bidders")? {
            bidders.push(Bidder {
                uscc: f.text_of(b, "uscc")?,
                name: f.text_of(b, "name")?,
                signed_in_ms: f.maybe_int_of(b, "signed_in_ms")?,
            });
        }
        let mut bids = Vec::new();
        for b in f.list("bids")? {
            bids.push(Bid {
                id: f.text_of(b, "id")?,
                bidder_code: f.text_of(b, "bidder_code")?,
                received_ms: f.int_of(b, "received_ms")?,
                size: f.of(b, "size")?.clone(),
                sm3: f.of(b, "sm3")?.clone(),
                state: f.text_of(b, "state")?,
                fault: f.maybe_text_of(b, "fault")?,
                failure: f.maybe_text_of(b, "failure")?,
                summary: b.get("summary").cloned().unwrap_or(Value::Null),
            });
        }
        self.bidders = bidders;
        self.bids = bids;
        Ok(())
    }

    fn bid(&mut self, f: &Fields<'_>, id: &str) -> Result<&mut Bid, RecordError> {
        self.bids
            .iter_mut()
            .find(|b| b.id == id)
            .ok_or_else(|| RecordError::UnknownBid {
                seq: f.event.seq,
                kind: f.event.kind.to_owned(),
                bid: id.to_owned(),
            })
    }

    /// The state the fold has reached, once the opening's creation was folded in.
    pub fn state(&self) -> Option<&str> {
        self.opening.as_ref().map(|o| o.state.as_str())
    }

    /// The record as of the events folded so far, naming the log's point `(seq, hash)` (the
    /// last event of the whole log folded in, which may be one the fold was not given).
    pub fn record(&self, seq: i64, hash: &str) -> Result<Value, RecordError> {
        let opening = self.opening.as_ref().ok_or(RecordError::NoOpening)?;
        if !RECORDED_STATES.contains(&opening.state.as_str()) {
            return Err(RecordError::NotOver(opening.state.clone()));
        }
        let decrypting = self.bids.iter().filter(|b| b.state == "decrypting").count();
        if decrypting > 0 {
            return Err(RecordError::StillDecrypting(decrypting));
        }
        let bidder = |code: &str| self.bidders.iter().find(|b| b.uscc == code);
        let bidder_json =
            |b: &Bidder| json!({"uscc": b.uscc, "name": b.name, "signed_in_ms": b.signed_in_ms});
        let mut bids: Vec<&Bid> = self.bids.iter().collect();
        bids.sort_by(|a, b| (a.received_ms, &a.id).cmp(&(b.received_ms, &b.id)));
        let bids: Vec<Value> = bids
            .iter()
            .map(|bid| {
                json!({
                    "bidder": bidder(&bid.bidder_code).map(bidder_json),
                    "received_ms": bid.received_ms, "size": bid.size, "sm3": bid.sm3,
                    "state": bid.state, "fault": bid.fault,
                    "outcome": outcome(&bid.state, bid.fault.as_deref()),
                    "failure": bid.failure, "summary": bid.summary,
                })
            })
            .collect();
        let without_bid: Vec<Value> = self
            .bidders
            .iter()
            .filter(|b| !self.bids.iter().any(|bid| bid.bidder_code == b.uscc))
            .map(bidder_json)
            .collect();
        let mut objections: Vec<&Objection> = self.objections.iter().collect();
        objections.sort_by_key(|o| o.n);
        let objections: Vec<Value> = objections
            .iter()
            .map(|o| {
                json!({
                    "n": o.n, "bidder": o.bidder, "text": o.text, "raised_ms": o.raised_ms,
                    "answer": o.answer, "answered_ms": o.answered_ms,
                })
            })
            .collect();
        Ok(json!({
            "title": "开标记录",
            "opening": {
                "id": self.opening_id, "tender_id": opening.tender_id, "name": opening.name,
                "deadline_ms": opening.deadline_ms, "opening_ms": opening.opening_ms,
                "decrypt_limit_secs": opening.decrypt_limit_secs,
                "decrypt_started_ms": opening.decrypt_started_ms,
                "decrypt_deadline_ms": opening.decrypt_deadline_ms,
                "state": opening.state, "failure": opening.failure,
            },
            "bids": bids,
            "bidders_without_bid": without_bid,
            "objections": objections,
            "log": {"seq": seq, "hash": hash},
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fold(events: &[(&str, Value)]) -> Result<RecordFold, RecordError> {
        let mut fold = RecordFold::new("op1");
        for (i, (kind, payload)) in events.iter().enumerate() {
            fold.apply(LogEvent {
                seq: i as i64 + 1,
                ts_ms: 1000 + i as i64,
                kind,
                payload,
            })?;
        }
        Ok(fold)
    }

    fn created() -> (&'static str, Value) {
        let p = json!({"tender_id": "T-1", "name": "道路工程", "deadline_ms": 10,
                       "opening_ms": 20, "decrypt_limit_secs": 1800});
        ("opening.created", p)
    }

    fn received(bid: &str, bidder: &str, at: i64) -> (&'static str, Value) {
        let p = json!({"bid_id": bid, "state": "received", "bidder_code": bidder,
                       "bidder_name": "x", "size": 100, "sm3": "ab", "received_ms": at,
                       "replaced": false});
        ("bid.received", p)
    }

    fn started(bids: Value, bidders: Value) -> (&'static str, Value) {
        let p = json!({"started_ms": 30, "deadline_ms": 90, "bids": bids, "bidders": bidders});
        ("decryption.started", p)
    }

    fn published_bid(id: &str, bidder: &str, at: i64) -> Value {
        json!({"id": id, "bidder_code": bidder, "state": "awaiting_key", "size": 100,
               "sm3": "ab", "received_ms": at, "summary": null, "failure": null, "fault": null})
    }

    fn bidder(uscc: &str, signed_in: Value) -> Value {
        json!({"uscc": uscc, "name": format!("公司{uscc}"), "has_bid": true,
               "signed_in_ms": signed_in})
    }

    #[test]
    fn a_whole_opening_folds_into_its_record() {
        let f = fold(&[
            created(),
            started(
                json!([published_bid("b2", "U2", 6), published_bid("b1", "U1", 5)]),
                json!([
                    bidder("U1", json!(25)),
                    bidder("U2", Value::Null),
                    bidder("U3", Value::Null)
                ]),
            ),
            ("bid.key_accepted", json!({"bid_id": "b1"})),
            (
                "bid.summary",
                json!({"bid_id": "b1", "summary": {"price_fen": 7}}),
            ),
            ("bid.decrypted", json!({"bid_id": "b1"})),
            (
                "objection.raised",
                json!({"n": 1, "bidder": {"uscc": "U2", "name": "公司U2"}, "text": "异议"}),
            ),
            ("objection.answered", json!({"n": 1, "answer": "答复"})),
            ("decryption.extended", json!({"deadline_ms": 95})),
            (
                "decryption.ended",
                json!({"not_decrypted": ["b2"], "failure": "超时", "fault": "bidder"}),
            ),
        ])
        .unwrap();
        let r = f.record(9, "h9").unwrap();
        assert_eq!(r["opening"]["state"], "decryption_ended");
        assert_eq!(r["opening"]["decrypt_deadline_ms"], 95);
        assert_eq!(r["bids"][0]["bidder"]["uscc"], "U1", "ordered by receipt");
        assert_eq!(r["bids"][0]["bidder"]["signed_in_ms"], 25);
        assert_eq!(r["bids"][0]["outcome"], "解密成功");
        assert_eq!(r["bids"][0]["summary"]["price_fen"], 7);
        assert_eq!(r["bids"][1]["state"], "not_decrypted");
        assert_eq!(r["bids"][1]["outcome"], "未解密（投标人原因，视为撤销）");
        assert_eq!(r["bids"][1]["failure"], "超时");
        assert_eq!(r["bidders_without_bid"][0]["uscc"], "U3");
        assert_eq!(r["objections"][0]["raised_ms"], 1005);
        assert_eq!(r["objections"][0]["answered_ms"], 1006);
        assert_eq!(r["log"], json!({"seq": 9, "hash": "h9"}));
    }

    #[test]
    fn uploads_before_publication_are_replaced_by_the_published_list() {
        // The agent's log holds the uploads; the published list is what counts.
        let agent = fold(&[
            created(),
            ("bidder.registered", json!({"uscc": "U1", "name": "公司U1"})),
            received("b0", "U1", 4),
            received("b1", "U1", 5),
            ("bid.withdrawn", json!({"bid_id": "b1"})),
            received("b2", "U1", 6),
            started(
                json!([published_bid("b2", "U1", 6)]),
                json!([bidder("U1", Value::Null)]),
            ),
            ("opening.failed", json!({"reason": "投标人少于3个"})),
        ])
        .unwrap();
        let public = fold(&[
            created(),
            started(
                json!([published_bid("b2", "U1", 6)]),
                json!([bidder("U1", Value::Null)]),
            ),
            ("opening.failed", json!({"reason": "投标人少于3个"})),
        ])
        .unwrap();
        assert_eq!(
            agent.record(3, "h").unwrap(),
            public.record(3, "h").unwrap()
        );
        let r = public.record(3, "h").unwrap();
        assert_eq!(r["opening"]["failure"], "投标人少于3个");
        assert_eq!(r["bids"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn a_late_checked_bid_joins_and_a_platform_failure_counts_as_withdrawn() {
        let f = fold(&[
            created(),
            started(json!([]), json!([bidder("U1", Value::Null)])),
            received("b1", "U1", 5),
            ("bid.key_accepted", json!({"bid_id": "b1"})),
            (
                "bid.failed",
                json!({"bid_id": "b1", "message": "写入失败", "fault": "platform", "chunk": null}),
            ),
            (
                "decryption.ended",
                json!({"not_decrypted": [], "failure": "x", "fault": "bidder"}),
            ),
            ("files.released", json!({})),
            ("opening.closed", json!({})),
        ])
        .unwrap();
        let r = f.record(8, "h").unwrap();
        assert_eq!(r["opening"]["state"], "closed");
        assert_eq!(r["bids"][0]["outcome"], "未解密（平台原因，视为撤回）");
        assert_eq!(r["bidders_without_bid"], json!([]));
    }

    #[test]
    fn a_record_is_refused_before_the_end_and_a_damaged_log_is_named() {
        let f = fold(&[created()]).unwrap();
        assert_eq!(
            f.record(1, "h").unwrap_err(),
            RecordError::NotOver("scheduled".into())
        );
        assert_eq!(
            fold(&[("bid.decrypted", json!({"bid_id": "b1"}))]).unwrap_err(),
            RecordError::NoOpening
        );
        let unknown = fold(&[created(), ("bid.decrypted", json!({"bid_id": "b9"}))]);
        assert!(
            matches!(unknown, Err(RecordError::UnknownBid { seq: 2, ref bid, .. }) if bid == "b9"),
            "{unknown:?}"
        );
        let malformed = fold(&[
            created(),
            ("decryption.started", json!({"started_ms": "soon"})),
        ]);
        assert_eq!(
            malformed.unwrap_err(),
            RecordError::Malformed {
                seq: 2,
                kind: "decryption.started".into(),
                field: "started_ms"
            }
        );
        let decrypting = fold(&[
            created(),
            started(
                json!([published_bid("b1", "U1", 5)]),
                json!([bidder("U1", Value::Null)]),
            ),
            ("bid.key_accepted", json!({"bid_id": "b1"})),
            (
                "decryption.ended",
                json!({"not_decrypted": [], "failure": "x", "fault": "bidder"}),
            ),
        ])
        .unwrap();
        assert_eq!(
            decrypting.record(4, "h").unwrap_err(),
            RecordError::StillDecrypting(1)
        );
        // Events the record does not depend on change nothing.
        assert!(fold(&[created(), ("qr.issued", json!({"anything": 1}))]).is_ok());
    }
}
