//! The append-only, SM3 hash-chained event log of each opening, and its live broadcast.
//!
//! Every state change is stored with the next per-opening sequence number *before* it is sent.
//! `hash_n = SM3(hash_{n-1} ‖ seq ‖ ts ‖ kind ‖ audience ‖ payload)` (hex, fields separated by
//! newlines, `hash_0` = 64 zeros), so any change to a stored event breaks the chain.

use std::sync::Arc;

use bytestring::ByteString;
use dashmap::DashMap;
use tokio::sync::{Mutex, broadcast};

use super::HallError;
use crate::crypto;
use crate::db::{Db, EventRow};

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
    /// Coalesced decryption progress: not a state change, not stored.
    Progress(ByteString),
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

/// The last `(seq, hash)` of an opening's log, once loaded; its lock serializes appends.
type Tail = Arc<Mutex<Option<(i64, String)>>>;

pub struct EventBus {
    db: Db,
    tails: DashMap<String, Tail>,
    channels: DashMap<String, broadcast::Sender<BusMsg>>,
}

pub fn chain_hash(prev: &str, e: &EventRow) -> String {
    let text = format!(
        "{prev}\n{}\n{}\n{}\n{}\n{}",
        e.seq, e.ts_ms, e.kind, e.audience, e.payload
    );
    hex::encode(crypto::sm3(text.as_bytes()))
}

impl EventBus {
    pub fn new(db: Db) -> Self {
        Self {
            db,
            tails: DashMap::new(),
            channels: DashMap::new(),
        }
    }

    fn sender(&self, opening_id: &str) -> broadcast::Sender<BusMsg> {
        self.channels
            .entry(opening_id.to_owned())
            .or_insert_with(|| broadcast::channel(CHANNEL_CAPACITY).0)
            .clone()
    }

    pub fn subscribe(&self, opening_id: &str) -> broadcast::Receiver<BusMsg> {
        self.sender(opening_id).subscribe()
    }

    pub fn receivers(&self) -> usize {
        self.channels.iter().map(|c| c.receiver_count()).sum()
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
        self.append_all(opening_id, vec![(kind.to_owned(), audience.to_owned(), payload)], now)
            .await
    }

    /// Stores several events of one opening in one transaction, then broadcasts them in order.
    pub async fn append_all(
        &self,
        opening_id: &str,
        events: Vec<(String, String, serde_json::Value)>,
        now: i64,
    ) -> Result<(), HallError> {
        if events.is_empty() {
            return Ok(());
        }
        let tail = self.tails.entry(opening_id.to_owned()).or_default().clone();
        let mut tail = tail.lock().await;
        let (mut seq, mut hash) = match tail.as_ref() {
            Some(t) => t.clone(),
            None => self
                .db
                .last_event(opening_id)
                .await?
                .unwrap_or((0, GENESIS.to_owned())),
        };
        let mut rows = Vec::with_capacity(events.len());
        for (kind, audience, payload) in events {
            seq += 1;
            let mut event = EventRow {
                opening_id: opening_id.to_owned(),
                seq,
                ts_ms: now,
                kind,
                audience,
                payload: payload.to_string(),
                hash: String::new(),
            };
            event.hash = chain_hash(&hash, &event);
            hash = event.hash.clone();
            rows.push(event);
        }
        self.db.insert_events(&rows).await?;
        *tail = Some((seq, hash));
        let sender = self.sender(opening_id);
        for row in rows {
            let frame = ByteString::from(render(&row));
            // Nobody listening is fine: the event is stored and will be replayed.
            let _ = sender.send(BusMsg::Event(Arc::new(Published { row, frame })));
        }
        Ok(())
    }

    pub fn progress(&self, opening_id: &str, message: ByteString) {
        let _ = self.sender(opening_id).send(BusMsg::Progress(message));
    }

    /// Recomputes the whole chain of an opening; returns the number of events, or the first
    /// sequence number whose hash does not match.
    pub async fn verify_chain(&self, opening_id: &str) -> Result<Result<i64, i64>, HallError> {
        let mut prev = GENESIS.to_owned();
        let mut after = 0;
        loop {
            let page = self.db.events_since(opening_id, after, 1000).await?;
            if page.is_empty() {
                return Ok(Ok(after));
            }
            for e in page {
                if e.seq != after + 1 || chain_hash(&prev, &e) != e.hash {
                    return Ok(Err(e.seq));
                }
                prev = e.hash.clone();
                after = e.seq;
            }
        }
    }
}
