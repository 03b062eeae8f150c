//! The append-only, SM3 hash-chained event log of each opening, and its live broadcast.
//!
//! Every state change is stored with the next per-opening sequence number *before* it is sent,
//! chained to the one before, so any change to a stored event breaks the chain (`hash_0` = 64
//! zeros; hex; fields separated by newlines). Two ways of chaining, chosen per opening:
//! - version 1 (openings made before version 2 existed):
//!   `hash_n = SM3(hash_{n-1} ‖ seq ‖ ts ‖ kind ‖ audience ‖ payload)`;
//! - version 2: `body_n = SM3(salt ‖ ts ‖ kind ‖ payload)`, `hash_n = SM3(hash_{n-1} ‖ seq ‖
//!   audience ‖ body_n)`, the salt 128 random bits per event, given with the event to those who
//!   may read it. Given the digest `body_n` of each event it may not read, anyone can check the
//!   whole chain up to a head the platform signed, and so that the events it can read are those
//!   the platform wrote (see [`EventDigest`]); the salt keeps the digest from being matched
//!   against guesses of what it hashes.

use std::sync::Arc;

use bytestring::ByteString;
use dashmap::DashMap;
use std::collections::HashMap;

use tokio::sync::{broadcast, mpsc, oneshot};

use super::HallError;
use crate::crypto;
use crate::db::{BidWrite, Db, DbError, EventRow};

pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
const CHANNEL_CAPACITY: usize = 1024;

/// Who may see an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Public,
    Evaluator,
    Agent,
}

impl Role {
    pub fn can_see(self, audience: &str) -> bool {
        match audience {
            "public" => true,
            "evaluator" => self >= Role::Evaluator,
            _ => self == Role::Agent,
        }
    }
}

/// A stored event with its websocket frame, rendered once for every viewer.
#[derive(Debug)]
pub struct Published {
    pub row: EventRow,
    pub frame: ByteString,
}

/// What travels on an opening's broadcast channel. Frames are shared, never copied per viewer.
#[derive(Debug, Clone)]
pub enum BusMsg {
    Event(Arc<Published>),
    /// A frame sent to every viewer as it is, not a state change, not stored: coalesced
    /// decryption progress, the platform's signed head of the log.
    Frame(ByteString),
}

/// The websocket frame of an event: `{"type":"event","seq":…,"ts_ms":…,"kind":…,"data":…,"hash":…}`.
pub fn render(e: &EventRow) -> String {
    format!(
        r#"{{"type":"event","seq":{},"ts_ms":{},"kind":{},"data":{},"hash":"{}"}}"#,
        e.seq,
        e.ts_ms,
        serde_json::Value::from(e.kind.as_str()),
        e.payload,
        e.hash
    )
}

/// One caller's events, and the conditional write they record, waiting for the writer.
struct Append {
    opening_id: String,
    /// Applied first; if its condition does not hold, the events are not stored.
    write: Option<BidWrite>,
    events: Vec<(String, String, serde_json::Value)>,
    now: i64,
    done: oneshot::Sender<Result<bool, HallError>>,
}

type Channels = Arc<DashMap<String, broadcast::Sender<BusMsg>>>;

/// Most appends the writer commits in one transaction.
const GROUP_COMMIT: usize = 512;

pub struct EventBus {
    db: Db,
    channels: Channels,
    writer: mpsc::Sender<Append>,
}

/// The chain's value after event `e`, chained the opening's way (`version`, see the module's
/// documentation) to `prev`, the value before it.
pub fn chain_hash(version: i64, prev: &str, e: &EventRow) -> String {
    if version >= 2 {
        return chain_link(prev, e.seq, &e.audience, &event_body_digest(e));
    }
    let text = format!(
        "{prev}\n{}\n{}\n{}\n{}\n{}",
        e.seq, e.ts_ms, e.kind, e.audience, e.payload
    );
    hex::encode(crypto::sm3(text.as_bytes()))
}

/// `body_n` of chain version 2: the digest of an event's salt, time, kind and payload.
pub fn event_body_digest(e: &EventRow) -> String {
    let text = format!("{}\n{}\n{}\n{}", e.salt, e.ts_ms, e.kind, e.payload);
    hex::encode(crypto::sm3(text.as_bytes()))
}

/// `hash_n` of chain version 2, from `hash_{n-1}`, the event's number and audience and its
/// [`event_body_digest`].
pub fn chain_link(prev: &str, seq: i64, audience: &str, body_digest: &str) -> String {
    let text = format!("{prev}\n{seq}\n{audience}\n{body_digest}");
    hex::encode(crypto::sm3(text.as_bytes()))
}

/// What a viewer is given of an event it may not read (chain version 2, once the bidders are
/// published): enough to carry the chain through it, nothing of what it says.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct EventDigest {
    pub seq: i64,
    pub audience: String,
    pub body_sm3: String,
    pub hash: String,
}

impl EventDigest {
    pub fn of(e: &EventRow) -> EventDigest {
        EventDigest {
            seq: e.seq,
            audience: e.audience.clone(),
            body_sm3: event_body_digest(e),
            hash: e.hash.clone(),
        }
    }
}

fn sender(channels: &Channels, opening_id: &str) -> broadcast::Sender<BusMsg> {
    channels
        .entry(opening_id.to_owned())
        .or_insert_with(|| broadcast::channel(CHANNEL_CAPACITY).0)
        .clone()
}

/// An opening's last event number, chain value and chain version, as the writer keeps them.
type Tail = (i64, String, i64);

/// Applies `appends` in one transaction: each one's write, then (if it held) its events, numbered
/// and chained after the tails in `tails`. Returns each append's outcome and the stored rows;
/// `tails` advances only if the transaction committed.
async fn commit(
    db: &Db,
    tails: &mut HashMap<String, Tail>,
    appends: &[Append],
) -> Result<(Vec<bool>, Vec<EventRow>), DbError> {
    let mut next = tails.clone();
    let mut tx = db.begin_write().await?;
    let mut outcomes = Vec::with_capacity(appends.len());
    let mut rows = Vec::new();
    for append in appends {
        let held = match &append.write {
            Some(write) => tx.apply(write).await?,
            None => true,
        };
        outcomes.push(held);
        if !held || append.events.is_empty() {
            continue;
        }
        if !next.contains_key(&append.opening_id) {
            let (seq, hash) = tx
                .last_event(&append.opening_id)
                .await?
                .unwrap_or((0, GENESIS.to_owned()));
            let version = tx.chain_version(&append.opening_id).await?;
            next.insert(append.opening_id.clone(), (seq, hash, version));
        }
        let (seq, hash, version) = next.get_mut(&append.opening_id).expect("loaded above");
        for (kind, audience, payload) in &append.events {
            *seq += 1;
            let mut event = EventRow {
                opening_id: append.opening_id.clone(),
                seq: *seq,
                ts_ms: append.now,
                kind: kind.clone(),
                audience: audience.clone(),
                payload: payload.to_string(),
                hash: String::new(),
                salt: if *version >= 2 {
                    hex::encode(crypto::random_bytes::<16>().map_err(|e| {
                        DbError::Write(format!("no randomness for an event's salt: {e}"))
                    })?)
                } else {
                    String::new()
                },
            };
            event.hash = chain_hash(*version, hash, &event);
            *hash = event.hash.clone();
            rows.push(event);
        }
    }
    tx.insert_events(&rows).await?;
    tx.commit().await?;
    *tails = next;
    Ok((outcomes, rows))
}

/// The single writer of the database's hot path: it takes every append waiting, applies their
/// writes, numbers and chains their events and stores everything in one transaction (group
/// commit: one disk flush for many callers), then broadcasts the events in order and answers each
/// caller. If a group fails as a whole, each append is retried alone, so one bad write cannot
/// fail the others. With one writer the hot path's writes never contend with each other for
/// SQLite's single write lock (the rarer writes — challenges, state changes — still may).
async fn writer(db: Db, channels: Channels, mut queue: mpsc::Receiver<Append>) {
    let mut tails: HashMap<String, Tail> = HashMap::new();
    let mut batch = Vec::with_capacity(GROUP_COMMIT);
    while queue.recv_many(&mut batch, GROUP_COMMIT).await > 0 {
        let groups: Vec<Vec<Append>> = match commit(&db, &mut tails, &batch).await {
            Ok(done) => {
                finish(&channels, std::mem::take(&mut batch), Ok(done));
                continue;
            }
            // Nothing was stored: forget the tails so they are read again from the database.
            Err(_) if batch.len() > 1 => batch.drain(..).map(|a| vec![a]).collect(),
            Err(error) => {
                tails.clear();
                finish(&channels, std::mem::take(&mut batch), Err(error));
                continue;
            }
        };
        tails.clear();
        for group in groups {
            let result = commit(&db, &mut tails, &group).await;
            if result.is_err() {
                tails.clear();
            }
            finish(&channels, group, result);
        }
    }
}

/// Broadcasts stored rows and answers the callers of `appends`.
fn finish(
    channels: &Channels,
    appends: Vec<Append>,
    result: Result<(Vec<bool>, Vec<EventRow>), DbError>,
) {
    match result {
        Ok((outcomes, rows)) => {
            for row in rows {
                let frame = ByteString::from(render(&row));
                // Nobody listening is fine: the event is stored and will be replayed.
                let _ = sender(channels, &row.opening_id)
                    .send(BusMsg::Event(Arc::new(Published { row, frame })));
            }
            for (append, held) in appends.into_iter().zip(outcomes) {
                let _ = append.done.send(Ok(held));
            }
        }
        Err(error) => {
            for append in appends {
                let _ = append.done.send(Err(HallError::Internal(format!(
                    "storing an event: {error}"
                ))));
            }
        }
    }
}

impl EventBus {
    /// Starts the log's writer task on the current runtime.
    pub fn new(db: Db) -> Self {
        let channels: Channels = Arc::default();
        let (tx, rx) = mpsc::channel(4 * GROUP_COMMIT);
        tokio::spawn(writer(db.clone(), channels.clone(), rx));
        Self {
            db,
            channels,
            writer: tx,
        }
    }

    pub fn subscribe(&self, opening_id: &str) -> broadcast::Receiver<BusMsg> {
        sender(&self.channels, opening_id).subscribe()
    }

    /// Stores an event and then broadcasts it.
    pub async fn append(
        &self,
        opening_id: &str,
        kind: &str,
        audience: &str,
        payload: serde_json::Value,
        now: i64,
    ) -> Result<(), HallError> {
        self.append_all(
            opening_id,
            vec![(kind.to_owned(), audience.to_owned(), payload)],
            now,
        )
        .await
    }

    /// Stores events of one opening, consecutive and in this order, then broadcasts them.
    /// Returns once they are committed.
    pub async fn append_all(
        &self,
        opening_id: &str,
        events: Vec<(String, String, serde_json::Value)>,
        now: i64,
    ) -> Result<(), HallError> {
        if events.is_empty() {
            return Ok(());
        }
        self.send(opening_id, None, events, now).await.map(|_| ())
    }

    /// Applies a conditional write and, if its condition held, stores its events in the same
    /// transaction, then broadcasts them. Returns whether the condition held.
    pub async fn commit(
        &self,
        opening_id: &str,
        write: BidWrite,
        events: Vec<(String, String, serde_json::Value)>,
        now: i64,
    ) -> Result<bool, HallError> {
        self.send(opening_id, Some(write), events, now).await
    }

    async fn send(
        &self,
        opening_id: &str,
        write: Option<BidWrite>,
        events: Vec<(String, String, serde_json::Value)>,
        now: i64,
    ) -> Result<bool, HallError> {
        let (done, answer) = oneshot::channel();
        let append = Append {
            opening_id: opening_id.to_owned(),
            write,
            events,
            now,
            done,
        };
        self.writer
            .send(append)
            .await
            .map_err(|_| HallError::Internal("the event log writer has stopped".into()))?;
        answer
            .await
            .map_err(|_| HallError::Internal("the event log writer has stopped".into()))?
    }

    /// Returns once everything handed to the writer before this call is stored or failed (the
    /// writer takes appends in order).
    pub async fn flush(&self) {
        let _ = self.send("", None, Vec::new(), 0).await;
    }

    /// Sends `frame` to every viewer of the opening as it is (see [`BusMsg::Frame`]).
    pub fn frame(&self, opening_id: &str, frame: ByteString) {
        let _ = sender(&self.channels, opening_id).send(BusMsg::Frame(frame));
    }

    /// The openings someone is watching now (a websocket is subscribed to their broadcast).
    pub fn watched(&self) -> Vec<String> {
        self.channels
            .iter()
            .filter(|c| c.value().receiver_count() > 0)
            .map(|c| c.key().clone())
            .collect()
    }

    /// Recomputes the whole chain of an opening; returns the number of events, or the first
    /// sequence number whose hash does not match.
    pub async fn verify_chain(
        &self,
        opening_id: &str,
        version: i64,
    ) -> Result<Result<i64, i64>, HallError> {
        let mut prev = GENESIS.to_owned();
        let mut after = 0;
        loop {
            let page = self.db.events_since(opening_id, after, 1000).await?;
            if page.is_empty() {
                return Ok(Ok(after));
            }
            for e in page {
                if e.seq != after + 1 || chain_hash(version, &prev, &e) != e.hash {
                    return Ok(Err(e.seq));
                }
                prev = e.hash.clone();
                after = e.seq;
            }
        }
    }
}
