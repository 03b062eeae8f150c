//! The live hall: openings, bidders, bids, scan-to-decrypt and the event log.
//!
//! Architecture invariant: this module knows the database but nothing of actix; the HTTP layer
//! (`crate::server`) is a thin translation of requests into these calls.

mod attest;
mod bidder_login;
mod bind;
mod digests;
mod error;
mod events;
mod logins;
mod objections;
mod record;
mod signin;
mod vault;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use dashmap::DashMap;
use serde_json::json;
use sm2::SecretKey;
use sm2::pkcs8::EncodePublicKey;

pub use attest::{LogVerdict, Pin, SignedHead, check_chain};
pub use bidder_login::{BidderSession, LOGIN_CODE_MS, NewLogin};
pub use bind::BindCode;
pub use error::HallError;
pub use events::{
    BusMsg, EventBus, EventDigest, GENESIS, Published, Role, chain_hash, chain_link,
    event_body_digest, render,
};
pub use objections::MAX_OBJECTION_CHARS;
pub use record::{OpeningRecord, fold_rows};
use vault::Vault;

use crate::config::Settings;
use crate::crypto::{self, FileKey};
use crate::db::{
    BidRow, BidWrite, BidderKeyRow, BidderRow, ChallengeRow, Db, Ended, Filed, OpeningRow,
    StagedEvent,
};
use crate::domain::{BidSummary, Uscc};
use crate::engine::{self, DecryptOptions, SealedBid};
use crate::format::BidError;
use crate::metrics::Metrics;
use crate::phone::{Answer, ChallengeView, RecipientView, answer_message};

/// How long a refusal shown on the hall display is remembered, so as not to be shown again for
/// the same QR code (longer than a QR code lives).
const REFUSALS_REMEMBERED: std::time::Duration = std::time::Duration::from_secs(600);

/// How long after a failed plaintext digest the tick tries it again.
const DIGEST_RETRY: std::time::Duration = std::time::Duration::from_secs(10);

/// A decryption that failed through the platform and waits to be tried again.
struct Delay {
    /// When the tick may try again (hall clock, ms).
    retry_ms: i64,
    /// What the hall display says meanwhile.
    message: String,
    /// Failed attempts so far.
    attempts: u32,
}

/// Runs a closure when dropped, unless disarmed: gives a task's claim back however it ends.
struct OnDrop<F: FnOnce()>(Option<F>);

impl<F: FnOnce()> OnDrop<F> {
    fn new(f: F) -> Self {
        Self(Some(f))
    }

    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl<F: FnOnce()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}

/// A bid as everyone who may see it is shown it (the snapshot adds its QR code and progress).
fn bid_view(bid: &BidRow, bidder: Option<&BidderRow>) -> serde_json::Value {
    let summary: Option<serde_json::Value> = bid
        .summary
        .as_deref()
        .and_then(|s| serde_json::from_str(s).ok());
    json!({
        "id": bid.id, "bidder_code": bidder.map(|b| b.uscc.clone()), "bidder_name": bidder.map(|b| b.name.clone()),
        "state": bid.state, "size": bid.size, "plaintext_len": bid.plaintext_len, "sm3": bid.sm3,
        "received_ms": bid.received_ms, "summary": summary, "qr": null, "failure": bid.failure,
        "fault": bid.fault, "progress": null,
    })
}

/// The bidders as published, each with whether it has a bid.
fn bidder_list(bidders: &[BidderRow], bids: &[BidRow]) -> Vec<serde_json::Value> {
    bidders
        .iter()
        .map(|b| json!({"uscc": b.uscc, "name": b.name, "has_bid": bids.iter().any(|x| x.bidder_id == b.id), "signed_in_ms": b.signed_in_ms}))
        .collect()
}

/// Adds to an event the bidders and bids as they are published (公布投标人), read in the
/// transaction of the state change that publishes them.
fn add_published_list(payload: &mut serde_json::Value, bidders: &[BidderRow], bids: &[BidRow]) {
    payload["bidders"] = json!(bidder_list(bidders, bids));
    payload["bids"] = json!(
        bids.iter()
            .map(|bid| bid_view(bid, bidders.iter().find(|b| b.id == bid.bidder_id)))
            .collect::<Vec<_>>()
    );
}

/// The keys `sign` and `enc` (PEM: certificates, or bare SPKI keys where no CAs are
/// trusted) as rows of `bidder`'s: each must be the enterprise's (扫码绑定's rule) and, with
/// `trust` (`trusted_cas`), a trusted CA's certificate, valid at `now` and fit for its use.
fn checked_keys(
    trust: Option<&crypto::TrustStore>,
    now: std::time::Duration,
    bidder: &BidderRow,
    sign: &[String],
    enc: &[String],
) -> Result<Vec<BidderKeyRow>, HallError> {
    let uscc = &bidder.uscc;
    let mut keys = Vec::new();
    for (usage, pems, cert_usage) in [
        ("sign", sign, crypto::CertUsage::Sign),
        ("enc", enc, crypto::CertUsage::Encrypt),
    ] {
        for pem in pems {
            let identity = crypto::load_public_pem(pem)
                .map_err(|e| HallError::Invalid(format!("{usage} key: {e}")))?;
            if let Some(trust) = trust {
                match &identity {
                    crypto::PublicIdentity::PublicKey { .. } => {
                        return Err(crypto::TrustError::BareKey.into());
                    }
                    crypto::PublicIdentity::Certificate { cert_der, .. } => {
                        trust.check(cert_der, cert_usage, now)?
                    }
                }
            }
            // 扫码绑定's rule: the certificate must be this enterprise's.
            if !identity.names_enterprise(uscc, &bidder.name) {
                return Err(HallError::Invalid(format!(
                    "the {usage} certificate was issued to someone else ({}): its subject \
                     names neither {uscc} nor {} (证书与投标人不符); register the \
                     certificate the CA issued to this enterprise",
                    identity.describe(),
                    bidder.name
                )));
            }
            let (der, is_cert) = match &identity {
                crypto::PublicIdentity::PublicKey { spki_der, .. } => (spki_der.clone(), 0),
                crypto::PublicIdentity::Certificate { cert_der, .. } => (cert_der.clone(), 1),
            };
            let key_id = hex::encode(crypto::key_id(identity.key()));
            if !keys
                .iter()
                .any(|k: &BidderKeyRow| k.usage == usage && k.key_id == key_id)
            {
                keys.push(BidderKeyRow {
                    bidder_id: bidder.id.clone(),
                    usage: usage.into(),
                    key_id,
                    der,
                    is_cert,
                });
            }
        }
    }
    Ok(keys)
}

/// What the log keeps of keys registered, bound or renewed: each one's use, key id and the SM3
/// of the certificate (or SPKI) kept, so that which certificate took a bid stays known.
fn key_evidence(keys: &[BidderKeyRow]) -> Vec<serde_json::Value> {
    keys.iter()
        .map(|k| json!({"usage": k.usage, "key_id": k.key_id, "sm3": hex::encode(crypto::sm3(&k.der))}))
        .collect()
}

/// An event to record.
fn ev(kind: &str, audience: &str, payload: serde_json::Value) -> crate::db::NewEvent {
    (kind.to_owned(), audience.to_owned(), payload)
}

/// How long a state change's caller has to publish its staged events before the tick does
/// (well past SQLite's 5 s wait for a busy database, which may come between the stamp and the
/// commit).
const STAGED_GRACE_MS: i64 = 30_000;

/// How long after a decryption first failed through the platform the tick tries it again
/// (doubling with each failure after, to 5 minutes).
const DECRYPT_RETRY_MS: i64 = 10_000;

/// How often the tick records that the hall runs: the most by which a stop is overestimated
/// when a decryption window is given back the time the hall was not running.
const BEAT_MS: i64 = 5_000;

/// Whose fault a failed decryption is, and the chunk that failed if the bid's file is to blame.
/// Every file was checked against the bidder's signature at upload: a read or write that fails
/// later, like any server error, is the platform's.
fn fault_of(error: &HallError) -> (&'static str, Option<u64>) {
    match error {
        HallError::BidRejected(
            BidError::ChunkTag { index }
            | BidError::ChunkDamaged { index }
            | BidError::ChunkReordered { index, .. }
            | BidError::ChunkDuplicated { index, .. },
        ) => ("bidder", Some(*index)),
        HallError::BidRejected(BidError::Io { .. }) => ("platform", None),
        HallError::BidRejected(_) => ("bidder", None),
        _ => ("platform", None),
    }
}

/// What the agent and the evaluators are told of a plaintext digest whose last attempt failed.
fn digest_failure() -> String {
    format!(
        "the file's digest could not be computed (the decrypted file could not be read); the \
         hall tries again every {} s: if this lasts, ask the platform's operator to check the \
         server's disk",
        DIGEST_RETRY.as_secs()
    )
}

/// Whether a role may see who takes part in an opening, and with what bids. The tender agent
/// always; anyone else once the bidders are published (公布投标人), which here is when decryption
/// starts or the opening fails before it: before that, the Tendering Law (招标投标法 art. 22)
/// forbids telling anyone the names or the number of the bidders, and the hall display and its
/// websocket are open to anyone with the opening's address.
fn bids_published(opening: &OpeningRow, role: Role) -> bool {
    role == Role::Agent || opening.state != "scheduled"
}

/// Milliseconds since the Unix epoch; tests substitute a clock they can move.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

pub fn system_clock() -> Clock {
    Arc::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    })
}

/// The header of a stored bid, without the trailer or a signature check: the upload checked the
/// whole file against the bidder's signature, and stored bids are never modified.
fn stored_header(path: &Path) -> Result<crate::format::Header, BidError> {
    std::fs::File::open(path)
        .map_err(BidError::io("opening a stored bid"))
        .and_then(|f| crate::format::Header::read_from(std::io::BufReader::new(f)))
}

/// Runs CPU-bound work on the Rayon pool and waits for it without blocking the executor.
pub async fn on_rayon<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, HallError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let span = tracing::Span::current();
    rayon::spawn(move || {
        let _guard = span.enter();
        let _ = tx.send(f());
    });
    rx.await
        .map_err(|_| HallError::Internal("a background computation panicked".into()))
}

fn random_hex<const N: usize>() -> Result<String, HallError> {
    crypto::random_bytes::<N>()
        .map(hex::encode)
        .map_err(|e| HallError::Internal(e.to_string()))
}

fn token_hash(token: &str) -> String {
    hex::encode(crypto::sm3(token.as_bytes()))
}

/// Longest name (of an opening or a bidder) accepted, in characters.
const MAX_NAME_CHARS: usize = 200;
const MAX_KEYS_PER_BIDDER: usize = 16;

fn check_name(what: &str, name: &str) -> Result<(), HallError> {
    let chars = name.trim().chars().count();
    if chars == 0 {
        return Err(HallError::Invalid(format!("{what} needs a name")));
    }
    if chars > MAX_NAME_CHARS {
        return Err(HallError::Invalid(format!(
            "{what}'s name has {chars} characters; at most {MAX_NAME_CHARS} are allowed"
        )));
    }
    Ok(())
}

/// A moment as people at a Chinese opening read it: Beijing time, to the second.
pub fn fmt_time(ms: i64) -> String {
    const BEIJING: time::UtcOffset = time::macros::offset!(+8);
    let format = time::macros::format_description!(
        "[year]-[month]-[day] [hour]:[minute]:[second] Beijing time, UTC+8"
    );
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.to_offset(BEIJING).format(&format).ok())
        .unwrap_or_else(|| format!("{ms} ms since 1970-01-01 UTC"))
}

/// A new opening, as the agent enters it.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
pub struct NewOpening {
    pub tender_id: String,
    pub name: String,
    pub deadline_ms: i64,
    pub opening_ms: i64,
    pub decrypt_limit_secs: i64,
}

/// A bidder registered for an opening, with the certificates or public keys it uses (PEM).
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
pub struct NewBidder {
    pub uscc: String,
    pub name: String,
    pub sign_keys: Vec<String>,
    pub enc_keys: Vec<String>,
}

/// The receipt (回执) of an upload.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Receipt {
    pub bid_id: String,
    pub opening_id: String,
    pub tender_id: String,
    pub bidder: String,
    pub size: u64,
    pub sm3: String,
    pub received_ms: i64,
    pub replaced: bool,
    /// The platform's SM2 signature (DER, hex) over the rest (see [`Receipt::signed_message`]),
    /// checked with the key `/api/platform-key` gives.
    pub signature: String,
}

struct Active {
    opening_id: String,
    total: u64,
    done: AtomicU64,
    started: Instant,
    reported: AtomicU64,
}

impl crate::engine::Progress for Active {
    fn advance(&self, bytes: u64) {
        self.done.fetch_add(bytes, Ordering::Relaxed);
    }
}

struct Inner {
    db: Db,
    settings: Settings,
    clock: Clock,
    vault: Vault,
    bus: EventBus,
    hall_keys: DashMap<String, Arc<SecretKey>>,
    active: DashMap<String, Arc<Active>>,
    /// Bodies being decrypted now: plaintext digests wait for them.
    decrypting: Arc<Decrypting>,
    digests: digests::Digests,
    /// Bids whose plaintext digest a task is computing (`None`), or whose last attempt failed
    /// and is retried after the instant given.
    digesting: DashMap<String, Option<Instant>>,
    /// Bids whose decryption failed through the platform (a full disk, a read or write error).
    delayed: DashMap<String, Delay>,
    /// The writer threads and chunk buffers every decryption shares (see [`engine::Writers`]).
    writers: engine::Writers,
    /// The CAs whose certificates bidders may register (`trusted_cas`); `None`: any
    /// certificate or public key, on the agent's word.
    trust: Option<Arc<crypto::TrustStore>>,
    logins: logins::Logins,
    /// Refusals shown on the hall display, by QR code and reason, until when they are
    /// remembered: each is shown once, so that anyone who can see a QR code (every viewer)
    /// cannot fill the display and the event log by posting answers to it.
    announced_refusals: DashMap<(String, &'static str), Instant>,
    /// The last heads of each opening's log signed (see [`Hall::signed_head`]).
    signed_heads: DashMap<(String, i64), SignedHead>,
    /// The last record made of each opening: made again only once its log moved on (the log is
    /// append-only, so a record made at a head stays the record of that head).
    records: DashMap<String, Arc<OpeningRecord>>,
    /// The number of the last signed head pushed to each opening's viewers.
    pushed_heads: DashMap<String, i64>,
    /// When the tick last recorded that the hall runs (see [`Db::beat`]).
    beaten_ms: std::sync::atomic::AtomicI64,
    /// Uploads being checked, by opening: received before the deadline, they are filed even if
    /// decryption started meanwhile, so the agent may not end decryption before they are.
    checking: DashMap<String, usize>,
    metrics: Metrics,
    /// The runtime the hall was opened on (the server's main one). Decryptions and digests run
    /// there, not on the HTTP worker that took the phone's answer: a stopping server's workers
    /// end first, and their tasks with them, while the server still waits for these to finish.
    runtime: tokio::runtime::Handle,
    /// The decryption and digest tasks started, so that a stopping server can end those still
    /// running before another server may take its data (see [`Hall::stop`]); None once stopped,
    /// when no more are started.
    tasks: std::sync::Mutex<Option<tokio::task::JoinSet<()>>>,
}

/// How many bids' bodies are being decrypted, and a wake-up for when none is.
#[derive(Default)]
struct Decrypting {
    count: std::sync::atomic::AtomicUsize,
    idle: tokio::sync::Notify,
}

impl Decrypting {
    fn enter(self: &Arc<Self>) -> DecryptingGuard {
        self.count.fetch_add(1, Ordering::SeqCst);
        DecryptingGuard(self.clone())
    }

    /// Returns once no body is being decrypted.
    async fn idle(&self) {
        loop {
            // Registered before the check, so a wake-up between the two is not lost.
            let woken = self.idle.notified();
            if self.count.load(Ordering::SeqCst) == 0 {
                return;
            }
            woken.await;
        }
    }
}

struct DecryptingGuard(Arc<Decrypting>);

impl Drop for DecryptingGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// Counts an upload of an opening as being checked while it lives (see `Inner::checking`).
struct CheckingGuard {
    hall: Hall,
    opening_id: String,
}

impl Drop for CheckingGuard {
    fn drop(&mut self) {
        self.hall
            .inner
            .checking
            .remove_if_mut(&self.opening_id, |_, n| {
                *n -= 1;
                *n == 0
            });
    }
}

#[derive(Clone)]
pub struct Hall {
    inner: Arc<Inner>,
}

impl Hall {
    /// The hall of a running server: opened, then resuming the work a stopped server left
    /// (decryptions and digests). Only under the server's lock ([`crate::db::ServerLock`]).
    pub async fn new(
        db: Db,
        settings: Settings,
        clock: Clock,
        metrics: Metrics,
    ) -> Result<Self, HallError> {
        let hall = Self::open(db, settings, clock, metrics).await?;
        hall.remove_leftovers();
        if let Err(error) = hall.resume().await {
            // Whatever it had started ends before the server gives its lock back.
            hall.stop().await;
            return Err(error);
        }
        Ok(hall)
    }

    /// Removes what a server killed mid-write left behind: partly decrypted plaintext (the
    /// temporary files of `plain/`, which `resume` decrypts again from the start) and unfinished
    /// uploads (`uploads/*.part`, never acknowledged to the bidder). Only under the server's lock,
    /// so no other process is writing them.
    fn remove_leftovers(&self) {
        let data = &self.inner.settings.data_dir;
        let leftovers = [("plain", ".tmp", ""), ("uploads", "", ".part")];
        let mut removed = 0;
        for (dir, prefix, suffix) in leftovers {
            let Ok(entries) = std::fs::read_dir(data.join(dir)) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if name.starts_with(prefix)
                    && name.ends_with(suffix)
                    && entry.file_type().is_ok_and(|t| t.is_file())
                {
                    match std::fs::remove_file(entry.path()) {
                        Ok(()) => removed += 1,
                        Err(error) => tracing::warn!(
                            file = %entry.path().display(),
                            %error,
                            "could not remove a file a stopped server left half-written"
                        ),
                    }
                }
            }
        }
        if removed > 0 {
            tracing::info!(
                removed,
                "removed files a stopped server left half-written (partial plaintext, unfinished uploads)"
            );
        }
    }

    /// The hall for an administrative command beside a running server (creating an agent):
    /// resumes nothing, so it never decrypts the server's bids.
    pub async fn open(
        db: Db,
        settings: Settings,
        clock: Clock,
        metrics: Metrics,
    ) -> Result<Self, HallError> {
        for dir in ["bids", "plain", "uploads"] {
            std::fs::create_dir_all(settings.data_dir.join(dir)).map_err(HallError::io(
                format!("creating {}/{dir}", settings.data_dir.display()),
            ))?;
        }
        engine::sync_dir(&settings.data_dir).map_err(HallError::io(format!(
            "flushing {} to disk",
            settings.data_dir.display()
        )))?;
        let vault = Vault::open_or_create(
            &settings.master_key_file(),
            db.openings_holding_sealed_keys().await?,
            settings.master_key_file.as_os_str().is_empty(),
        )?;
        // Made now, in the background, so that the first sign-in with an unknown name takes no
        // longer than others (it waits for this if it comes first).
        rayon::spawn(|| {
            logins::stand_in_hash();
        });
        let trust = match &settings.trusted_cas {
            Some(path) => {
                let store = crypto::TrustStore::load(path)
                    .map_err(|e| HallError::Setup(format!("trusted_cas: {e}")))?;
                tracing::info!(
                    cas = store.len(),
                    "bidders' certificates must come from: {}",
                    store.describe()
                );
                Some(Arc::new(store))
            }
            None => {
                tracing::warn!(
                    "no trusted_cas set: bidders' certificates and keys are taken on the agent's \
                     word, checked against no CA"
                );
                None
            }
        };
        let decrypting = Arc::<Decrypting>::default();
        let hall = Self {
            inner: Arc::new(Inner {
                bus: EventBus::new(db.clone()),
                db,
                settings,
                clock,
                vault,
                hall_keys: DashMap::new(),
                active: DashMap::new(),
                digests: digests::Digests::start(decrypting.clone()),
                digesting: DashMap::new(),
                decrypting,
                // Two writers per pool thread keep more writes in flight than workers fill
                // buffers, which the disk rewards: 20 bids of 500 MiB answered at once were all
                // decrypted in 8.2 s against 10.4 s with one writer per pool thread (same
                // machine, back to back). Four buffers per pool thread (8 MiB with 2 threads and
                // 1 MiB chunks): one being filled per worker, the rest queued or being written.
                writers: engine::Writers::new(
                    2 * rayon::current_num_threads(),
                    4 * rayon::current_num_threads(),
                )?,
                trust,
                logins: logins::Logins::new(),
                announced_refusals: DashMap::new(),
                beaten_ms: std::sync::atomic::AtomicI64::new(i64::MIN),
                signed_heads: DashMap::new(),
                records: DashMap::new(),
                pushed_heads: DashMap::new(),
                checking: DashMap::new(),
                runtime: tokio::runtime::Handle::current(),
                tasks: std::sync::Mutex::new(Some(tokio::task::JoinSet::new())),
                delayed: DashMap::new(),
                metrics,
            }),
        };
        if let Some(password) = hall.inner.settings.admin_password.clone()
            && hall.inner.db.count_agents().await? == 0
        {
            hall.create_agent("admin", &password).await?;
            tracing::info!("created the agent account admin from the settings");
        }
        Ok(hall)
    }

    pub fn db(&self) -> &Db {
        &self.inner.db
    }

    pub fn bus(&self) -> &EventBus {
        &self.inner.bus
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    pub fn now(&self) -> i64 {
        (self.inner.clock)()
    }

    pub fn upload_dir(&self) -> PathBuf {
        self.inner.settings.data_dir.join("uploads")
    }

    fn public_url(&self) -> String {
        if self.inner.settings.public_url.is_empty() {
            format!("http://{}", self.inner.settings.bind)
        } else {
            self.inner
                .settings
                .public_url
                .trim_end_matches('/')
                .to_owned()
        }
    }

    /// The URL a decryption QR code holds: the challenge's, with the tag of the opening's hall
    /// key for the phone to check (see [`crate::phone::hall_key_tag`]).
    pub fn qr_url(&self, opening: &OpeningRow, nonce: &str) -> String {
        let tag = crate::phone::hall_key_tag(opening.hall_public.as_deref().unwrap_or_default());
        format!("{}/m/{nonce}?k={tag}", self.public_url())
    }

    async fn event(
        &self,
        opening_id: &str,
        kind: &str,
        audience: &str,
        payload: serde_json::Value,
    ) -> Result<(), HallError> {
        self.inner
            .bus
            .append(opening_id, kind, audience, payload, self.now())
            .await?;
        Ok(())
    }

    /// Moves events staged with state changes into the log (see [`crate::db::StagedEvent`]):
    /// for each opening, every event of it staged up to the last of `staged`, oldest first (so
    /// one left behind by a failed publish goes before later ones), one commit for each
    /// transaction's events, which takes them off the stage in the transaction that stores them.
    /// Events another publisher took meanwhile are not stored twice: their commit does not hold,
    /// and what is left is read again. The state changes are committed already, so a failure
    /// here is not the caller's: it is logged, and the tick publishes what is left.
    async fn publish(&self, staged: Vec<StagedEvent>) {
        let mut openings: Vec<(&str, i64)> = Vec::new();
        for s in &staged {
            match openings.iter_mut().find(|(o, _)| *o == s.opening_id) {
                Some((_, up_to)) => *up_to = (*up_to).max(s.id),
                None => openings.push((&s.opening_id, s.id)),
            }
        }
        for (opening_id, up_to) in openings {
            if let Err(error) = self.publish_opening(opening_id, up_to).await {
                tracing::error!(opening = %opening_id, %error, "staged events could not be stored in the log yet; the tick tries again");
            }
        }
    }

    async fn publish_opening(&self, opening_id: &str, up_to: i64) -> Result<(), HallError> {
        // Each round stores what is staged or finds another publisher took some; bounded, as
        // every round that does not hold means someone else stored events.
        for _ in 0..10 {
            let staged = self.inner.db.staged_events_of(opening_id, up_to).await?;
            if staged.is_empty() {
                return Ok(());
            }
            for run in staged.chunk_by(|a, b| a.ts_ms == b.ts_ms) {
                let events = run
                    .iter()
                    .map(|s| {
                        let payload = serde_json::from_str(&s.payload).unwrap_or_default();
                        (s.kind.clone(), s.audience.clone(), payload)
                    })
                    .collect();
                let unstage = BidWrite::Unstage {
                    ids: run.iter().map(|s| s.id).collect(),
                };
                if !self
                    .inner
                    .bus
                    .commit(opening_id, unstage, events, run[0].ts_ms)
                    .await?
                {
                    break;
                }
            }
        }
        Ok(())
    }

    /// Publishes the events that were staged and not published: all of them at start (a server
    /// stopped in between), and from the tick those older than a few seconds (whoever staged
    /// them failed to publish them).
    async fn publish_leftovers(&self, all: bool) -> Result<(), HallError> {
        let before = (!all).then(|| self.now() - STAGED_GRACE_MS);
        let staged = self.inner.db.staged_events(before).await?;
        if !staged.is_empty() {
            tracing::warn!(
                events = staged.len(),
                "publishing events staged with state changes whose publishing did not finish"
            );
            self.publish(staged).await;
        }
        Ok(())
    }

    // --- agents -------------------------------------------------------------------------------

    pub async fn create_agent(&self, username: &str, password: &str) -> Result<(), HallError> {
        let username = username.trim().to_owned();
        if username.is_empty() || username.len() > 64 {
            return Err(HallError::Invalid(
                "a user name needs 1 to 64 characters".into(),
            ));
        }
        if password.chars().count() < 8 {
            return Err(HallError::Invalid(
                "a password needs at least 8 characters".into(),
            ));
        }
        if self.inner.db.agent_by_username(&username).await?.is_some() {
            return Err(HallError::Invalid(format!(
                "the agent {username} already exists"
            )));
        }
        let password = zeroize::Zeroizing::new(password.to_owned());
        let hash = on_rayon(move || {
            use argon2::PasswordHasher;
            let salt = argon2::password_hash::SaltString::generate(
                &mut argon2::password_hash::rand_core::OsRng,
            );
            argon2::Argon2::default()
                .hash_password(password.as_bytes(), &salt)
                .map(|h| h.to_string())
        })
        .await?
        .map_err(|e| HallError::Internal(format!("hashing the password: {e}")))?;
        self.inner
            .db
            .insert_agent(&random_hex::<16>()?, &username, &hash, self.now())
            .await?;
        Ok(())
    }

    /// Checks a password and opens a session; returns the session token for the cookie.
    /// `from` names where the attempt comes from (the client's address): failures are counted
    /// per agent and place.
    pub async fn login(
        &self,
        username: &str,
        password: &str,
        from: &str,
    ) -> Result<String, HallError> {
        let username = username.trim();
        // No agent has a longer name (see `create_agent`): refused as it is, not counted, so
        // that long names cannot fill the counts' memory.
        if username.len() > 64 {
            return Err(HallError::BadLogin);
        }
        // An unknown name is checked against a stand-in hash and counted like a known one, so
        // that neither the time a refusal takes nor being held back tells which names exist.
        let (agent_id, hash) = match self.inner.db.agent_by_username(username).await? {
            Some((id, hash)) => (id, Some(hash)),
            None => (format!("?{username}"), None),
        };
        let logins = &self.inner.logins;
        logins.check(&agent_id, from, self.now())?;
        let permit = logins.permit().await;
        // Checked again: failures may have come in while this one waited.
        logins.check(&agent_id, from, self.now())?;
        let password = zeroize::Zeroizing::new(password.to_owned());
        let ok = on_rayon(move || {
            // Held until the check ends, even if the request is dropped meanwhile.
            let _permit = permit;
            use argon2::PasswordVerifier;
            let known = hash.is_some();
            let hash = hash.as_deref().unwrap_or_else(|| logins::stand_in_hash());
            let right = argon2::password_hash::PasswordHash::new(hash)
                .map(|parsed| {
                    argon2::Argon2::default()
                        .verify_password(password.as_bytes(), &parsed)
                        .is_ok()
                })
                .unwrap_or(false);
            known && right
        })
        .await?;
        if !ok {
            logins.failed(&agent_id, from, self.now());
            return Err(HallError::BadLogin);
        }
        logins.succeeded(&agent_id, from);
        self.issue_agent_token(&agent_id, "session", 12 * 3600 * 1000)
            .await
    }

    /// An API token for automation (valid one year).
    pub async fn issue_agent_token(
        &self,
        agent_id: &str,
        kind: &str,
        valid_ms: i64,
    ) -> Result<String, HallError> {
        let token = format!("kb_{}", random_hex::<32>()?);
        let now = self.now();
        self.inner
            .db
            .insert_agent_token(&token_hash(&token), agent_id, kind, now + valid_ms, now)
            .await?;
        Ok(token)
    }

    pub async fn agent_for_token(&self, token: &str) -> Result<String, HallError> {
        self.inner
            .db
            .agent_for_token(&token_hash(token), self.now())
            .await?
            .ok_or(HallError::Unauthorized)
    }

    pub async fn logout(&self, token: &str) -> Result<(), HallError> {
        Ok(self.inner.db.delete_agent_token(&token_hash(token)).await?)
    }

    pub async fn evaluator_opening(&self, token: &str) -> Result<String, HallError> {
        self.inner
            .db
            .evaluator_opening(&token_hash(token))
            .await?
            .ok_or(HallError::Unauthorized)
    }

    // --- openings -----------------------------------------------------------------------------

    pub async fn opening(&self, id: &str) -> Result<OpeningRow, HallError> {
        self.inner
            .db
            .opening(id)
            .await?
            .ok_or(HallError::NotFound("opening"))
    }

    pub async fn create_opening(
        &self,
        agent_id: &str,
        new: NewOpening,
    ) -> Result<OpeningRow, HallError> {
        let tender_id = new.tender_id.trim().to_owned();
        if tender_id.is_empty() || tender_id.len() > 128 {
            return Err(HallError::Invalid(
                "the tender id needs 1 to 128 bytes".into(),
            ));
        }
        check_name("the opening", &new.name)?;
        if new.opening_ms < new.deadline_ms {
            return Err(HallError::Invalid(
                "the opening time cannot be before the bid deadline".into(),
            ));
        }
        if !(10..=24 * 3600).contains(&new.decrypt_limit_secs) {
            return Err(HallError::Invalid(
                "the decryption time limit must be 10 seconds to 24 hours (commonly 1800 or 3600)"
                    .into(),
            ));
        }
        let now = self.now();
        let row = OpeningRow {
            id: random_hex::<8>()?,
            tender_id,
            name: new.name.trim().to_owned(),
            deadline_ms: new.deadline_ms,
            opening_ms: new.opening_ms,
            decrypt_limit_secs: new.decrypt_limit_secs,
            state: "scheduled".into(),
            decrypt_started_ms: None,
            decrypt_deadline_ms: None,
            hall_public: None,
            hall_secret_sealed: None,
            failure: None,
            created_by: agent_id.to_owned(),
            created_ms: now,
            chain_version: 2,
        };
        let created = json!({"tender_id": row.tender_id, "name": row.name, "deadline_ms": row.deadline_ms,
                             "opening_ms": row.opening_ms, "decrypt_limit_secs": row.decrypt_limit_secs});
        let staged = self
            .inner
            .db
            .insert_opening(&row, vec![ev("opening.created", "public", created)])
            .await?;
        self.publish(staged).await;
        Ok(row)
    }

    pub async fn register_bidder(
        &self,
        opening_id: &str,
        new: NewBidder,
    ) -> Result<BidderRow, HallError> {
        let opening = self.opening(opening_id).await?;
        if opening.state != "scheduled" {
            return Err(HallError::WrongState(
                "bidders can only be registered before decryption starts".into(),
            ));
        }
        let uscc = Uscc::parse(&new.uscc).map_err(|e| HallError::Invalid(e.to_string()))?;
        check_name("the bidder", &new.name)?;
        if new.sign_keys.len() + new.enc_keys.len() > MAX_KEYS_PER_BIDDER {
            return Err(HallError::Invalid(format!(
                "register at most {MAX_KEYS_PER_BIDDER} certificates or keys per bidder"
            )));
        }
        // None at all: the bidder's phone binds them (扫码绑定), which needs trusted CAs.
        let to_bind =
            new.sign_keys.is_empty() && new.enc_keys.is_empty() && self.inner.trust.is_some();
        if (new.sign_keys.is_empty() || new.enc_keys.is_empty()) && !to_bind {
            return Err(HallError::Invalid(
                "register at least one signing and one encryption certificate or public key (or, \
                 on a platform that trusts CAs, none: the bidder's phone then binds them)"
                    .into(),
            ));
        }
        if self
            .inner
            .db
            .bidder_by_uscc(opening_id, uscc.as_str())
            .await?
            .is_some()
        {
            return Err(HallError::Invalid(format!(
                "the bidder {uscc} is already registered"
            )));
        }
        let bidder = BidderRow {
            id: random_hex::<8>()?,
            opening_id: opening_id.to_owned(),
            uscc: uscc.to_string(),
            name: new.name.trim().to_owned(),
            signed_in_ms: None,
        };
        let keys = self
            .checked_keys(&bidder, &new.sign_keys, &new.enc_keys)
            .await?;
        // Who takes part is not told to anyone before the opening (see `bids_published`).
        let registered = ev(
            "bidder.registered",
            "agent",
            json!({"uscc": bidder.uscc, "name": bidder.name, "certificates": key_evidence(&keys)}),
        );
        let staged = self
            .inner
            .db
            .insert_bidder(&bidder, &keys, vec![registered], self.now())
            .await?;
        let staged = match staged {
            crate::db::Registered::Staged(staged) => staged,
            crate::db::Registered::Closed => {
                return Err(HallError::WrongState(
                    "bidders can only be registered before decryption starts".into(),
                ));
            }
            crate::db::Registered::Duplicate => {
                return Err(HallError::Invalid(format!(
                    "the bidder {} is already registered",
                    bidder.uscc
                )));
            }
        };
        self.publish(staged).await;
        Ok(bidder)
    }

    /// Adds certificates (or, without trusted CAs, keys) to a registered bidder, or renews those
    /// of keys it has (a certificate renewed for the same key replaces the one kept), before
    /// decryption starts. Keys already registered stay: bids sealed to them can still be
    /// opened. Returns how many of each use the bidder has.
    pub async fn add_bidder_keys(
        &self,
        opening_id: &str,
        uscc: &str,
        sign: &[String],
        enc: &[String],
    ) -> Result<serde_json::Value, HallError> {
        let closed = || {
            HallError::WrongState(
                "certificates can only be changed before decryption starts".into(),
            )
        };
        let opening = self.opening(opening_id).await?;
        if opening.state != "scheduled" {
            return Err(closed());
        }
        let uscc = Uscc::parse(uscc).map_err(|e| HallError::Invalid(e.to_string()))?;
        let bidder = self.bidder_coded(opening_id, uscc.as_str()).await?;
        if sign.is_empty() && enc.is_empty() {
            return Err(HallError::Invalid(
                "give at least one certificate or key".into(),
            ));
        }
        let keys = self.checked_keys(&bidder, sign, enc).await?;
        let mut held = self.inner.db.bidder_keys(&bidder.id, "sign").await?;
        held.extend(self.inner.db.bidder_keys(&bidder.id, "enc").await?);
        if let Some(k) = keys.iter().find(|k| {
            held.iter()
                .any(|h| h.usage == k.usage && h.key_id == k.key_id && h.is_cert > k.is_cert)
        }) {
            return Err(HallError::Invalid(format!(
                "the {} key {} has a certificate registered; a bare key does not replace it: give \
                 the certificate (renewed, if it expired)",
                k.usage, k.key_id
            )));
        }
        let is_new = |k: &BidderKeyRow| {
            !held
                .iter()
                .any(|h| h.usage == k.usage && h.key_id == k.key_id)
        };
        let count = |usage: &str| {
            held.iter()
                .chain(keys.iter().filter(|k| is_new(k)))
                .filter(|k| k.usage == usage)
                .count()
        };
        let (signing, encryption) = (count("sign"), count("enc"));
        if signing == 0 || encryption == 0 {
            return Err(HallError::Invalid(format!(
                "the bidder would have {signing} signing and {encryption} encryption certificates: \
                 give both kinds (or, for a bidder waiting to bind by phone, none here)"
            )));
        }
        // What each renewal replaced, kept in the log: which certificate took a bid stays known.
        let replaced: Vec<serde_json::Value> = keys
            .iter()
            .filter_map(|k| {
                held.iter()
                    .find(|h| h.usage == k.usage && h.key_id == k.key_id && h.der != k.der)
                    .map(|h| {
                        json!({"usage": h.usage, "key_id": h.key_id,
                                    "sm3": hex::encode(crypto::sm3(&h.der))})
                    })
            })
            .collect();
        let event = ev(
            "bidder.keys_added",
            "agent",
            json!({"uscc": bidder.uscc, "name": bidder.name,
                   "certificates": key_evidence(&keys), "replaced": replaced}),
        );
        let added = self
            .inner
            .db
            .add_bidder_keys(
                opening_id,
                &bidder.id,
                &keys,
                MAX_KEYS_PER_BIDDER,
                vec![event],
                self.now(),
            )
            .await?;
        match added {
            crate::db::Added::Staged(staged) => self.publish(staged).await,
            crate::db::Added::Closed => return Err(closed()),
            crate::db::Added::TooMany(held) => {
                return Err(HallError::Invalid(format!(
                    "the bidder has {held} certificates or keys, and at most \
                     {MAX_KEYS_PER_BIDDER} are kept (none is removed, so that bids sealed to \
                     them can be opened): renew the certificates of keys it has instead"
                )));
            }
        }
        Ok(json!({"uscc": bidder.uscc, "sign_keys": signing, "enc_keys": encryption}))
    }

    /// [`checked_keys`] for `bidder`, now, off the async executor (it verifies signatures).
    async fn checked_keys(
        &self,
        bidder: &BidderRow,
        sign: &[String],
        enc: &[String],
    ) -> Result<Vec<BidderKeyRow>, HallError> {
        let trust = self.inner.trust.clone();
        let now = std::time::Duration::from_millis(self.now().max(0) as u64);
        let (bidder, sign, enc) = (bidder.clone(), sign.to_vec(), enc.to_vec());
        on_rayon(move || checked_keys(trust.as_deref(), now, &bidder, &sign, &enc)).await?
    }

    /// Takes an uploaded file (already on disk in the upload folder, `sm3` the hex SM3 of its
    /// bytes, hashed as they arrived), checks it and files it. On any refusal the upload is
    /// deleted and nothing else changes.
    pub async fn receive_bid(
        &self,
        opening_id: &str,
        uscc: &str,
        upload: PathBuf,
        sm3: &str,
        received_ms: i64,
    ) -> Result<Receipt, HallError> {
        let result = self
            .receive_bid_inner(opening_id, uscc, &upload, sm3.to_owned(), received_ms)
            .await;
        if result.is_err() {
            let _ = std::fs::remove_file(&upload);
        }
        result
    }

    async fn receive_bid_inner(
        &self,
        opening_id: &str,
        uscc: &str,
        upload: &Path,
        sm3: String,
        received_ms: i64,
    ) -> Result<Receipt, HallError> {
        // Counted before anything is awaited, so an early end of decryption sees it.
        *self
            .inner
            .checking
            .entry(opening_id.to_owned())
            .or_default() += 1;
        let _checking = CheckingGuard {
            hall: self.clone(),
            opening_id: opening_id.to_owned(),
        };
        // An upload whose last byte arrived before the deadline is on time, even if decryption
        // started while it was being stored or checked (`put_bid` then files it as waiting for
        // its key).
        // Who registered is told to no one before the opening: a code no bidder has is refused
        // after the same checks, and in the same words, as a bid signed by a key not registered.
        let (opening, bidder) = self
            .before_deadline(opening_id, uscc, received_ms, &["scheduled", "decrypting"])
            .await?;
        let path = upload.to_owned();
        let (header, signer_id, size) = on_rayon(move || -> Result<_, BidError> {
            let bid = SealedBid::open(&path)?;
            bid.verify_chunks(&crate::engine::NoProgress)?;
            let signer_id = hex::encode(crypto::key_id(bid.signer().key()));
            Ok((bid.header().clone(), signer_id, bid.file_len()))
        })
        .await??;
        if header.tender_id != opening.tender_id {
            return Err(HallError::Invalid(format!(
                "the bid was sealed for tender {}, this opening is for tender {}",
                header.tender_id, opening.tender_id
            )));
        }
        if header.bidder.as_str() != uscc {
            return Err(HallError::Invalid(format!(
                "the bid was sealed by {} but uploaded for {uscc}",
                header.bidder
            )));
        }
        let not_registered = || {
            HallError::Invalid(
                "the bid is signed by a certificate not registered for this bidder: sign it with \
                 the certificate the tender agent registered, or one bound by scanning the bind \
                 code (扫码绑定) before uploading"
                    .into(),
            )
        };
        // The same queries either way.
        let bidder_id = bidder.as_ref().map_or("", |b| b.id.as_str());
        let sign_keys = self.inner.db.bidder_keys(bidder_id, "sign").await?;
        let bidder = bidder.ok_or_else(not_registered)?;
        let signer = sign_keys
            .iter()
            .find(|k| k.key_id == signer_id)
            .ok_or_else(not_registered)?;
        // A signature counts while its certificate is valid: at the bid's arrival.
        // With trusted CAs a bare key registered before they were set signs nothing.
        if let Some(trust) = self.inner.trust.clone() {
            if signer.is_cert == 0 {
                return Err(crypto::TrustError::BareKey.into());
            }
            let at = std::time::Duration::from_millis(received_ms.max(0) as u64);
            let der = signer.der.clone();
            on_rayon(move || trust.check(&der, crypto::CertUsage::Sign, at)).await??;
        }
        let enc_keys = self.inner.db.bidder_keys(&bidder.id, "enc").await?;
        if !header
            .recipients
            .iter()
            .any(|r| enc_keys.iter().any(|k| k.key_id == hex::encode(r.key_id)))
        {
            return Err(HallError::Invalid(
                "the bid is not sealed to any encryption certificate registered for this bidder, so it could not be decrypted at the opening (非正确的加密证书)".into(),
            ));
        }
        let bid_id = random_hex::<8>()?;
        let dir = self.inner.settings.data_dir.join("bids").join(opening_id);
        let final_path = dir.join(format!("{bid_id}.kbid"));
        // Filed durably (the new names flushed with their folders), off the async executor.
        let (from, to) = (upload.to_owned(), final_path.clone());
        tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&dir)?;
            engine::sync_dir(engine::parent_of(&dir))?;
            std::fs::rename(from, &to)?;
            // Reported as failed, so no row will name it: do not leave it behind.
            engine::sync_dir(&dir).inspect_err(|_| {
                let _ = std::fs::remove_file(&to);
            })
        })
        .await
        .map_err(|e| HallError::Internal(e.to_string()))?
        .map_err(HallError::io("filing the bid"))?;
        let row = BidRow {
            id: bid_id.clone(),
            opening_id: opening_id.to_owned(),
            bidder_id: bidder.id.clone(),
            state: "received".into(),
            path: final_path.to_string_lossy().into_owned(),
            size: size as i64,
            sm3: sm3.clone(),
            plaintext_len: header.plaintext_len as i64,
            received_ms,
            summary: None,
            answer: None,
            plain_path: None,
            plain_sm3: None,
            failure: None,
            fault: None,
        };
        let received = |awaiting_key: bool, replaced: bool| {
            vec![ev(
                "bid.received",
                // Public only once decryption started (a bid checked after it began).
                if awaiting_key { "public" } else { "agent" },
                json!({"bid_id": bid_id, "state": if awaiting_key { "awaiting_key" } else { "received" }, "bidder_code": bidder.uscc, "bidder_name": bidder.name, "size": size,
                       "sm3": sm3, "received_ms": received_ms, "replaced": replaced}),
            )]
        };
        let filed = self.inner.db.put_bid(&row, received, self.now()).await;
        let (replaced, awaiting_key) = match filed {
            Ok(Filed::Stored {
                replaced,
                awaiting_key,
                staged,
            }) => {
                self.publish(staged).await;
                (replaced, awaiting_key)
            }
            Ok(Filed::Closed { opening_state }) => {
                let _ = std::fs::remove_file(&final_path);
                if opening_state == "decrypting" {
                    return Err(HallError::WrongState(
                        "your earlier bid's key was already handed to the hall, so that bid is \
                         the one opened; this upload was not stored"
                            .into(),
                    ));
                }
                // On time, but the opening moved on while it was checked (the time limit ran
                // out, or the opening failed): the platform's fault, recorded for the agent.
                let _ = self
                    .event(
                        opening_id,
                        "bid.not_filed",
                        "public",
                        json!({"bidder_code": bidder.uscc, "bidder_name": bidder.name, "sm3": sm3,
                               "received_ms": received_ms, "opening_state": opening_state, "fault": "platform"}),
                    )
                    .await;
                return Err(HallError::WrongState(format!(
                    "the upload arrived before the deadline, but the opening had moved on \
                     ({opening_state}) by the time its checks ended, so it was not stored; this \
                     is recorded in the opening's log as the platform's fault: tell the tender \
                     agent"
                )));
            }
            Err(e) => {
                let _ = std::fs::remove_file(&final_path);
                return Err(e.into());
            }
        };
        if let Some(old) = &replaced {
            let _ = std::fs::remove_file(old);
        }
        // The bid is stored: from here on the bidder gets its receipt whatever else fails (the
        // hall's tick issues a QR code to any bid waiting for its key without one).
        if awaiting_key
            && let Err(error) = self
                .issue_challenges(opening_id, std::slice::from_ref(&bid_id))
                .await
        {
            // Received before the deadline, checked after decryption started: its QR code now,
            // or from the tick.
            tracing::warn!(bid = %bid_id, %error, "no QR code yet for a bid filed during decryption");
        }
        let mut receipt = Receipt {
            bid_id,
            opening_id: opening_id.to_owned(),
            tender_id: opening.tender_id,
            bidder: bidder.uscc,
            size,
            sm3,
            received_ms,
            replaced: replaced.is_some(),
            signature: String::new(),
        };
        match self.sign_as_platform(receipt.signed_message()).await {
            Ok(signature) => receipt.signature = signature,
            Err(error) => {
                tracing::error!(bid = %receipt.bid_id, %error, "the receipt goes unsigned")
            }
        }
        Ok(receipt)
    }

    /// The opening, if `at_ms` is before its deadline and it is in one of `states`, and the
    /// bidder with code `uscc`, if one registered.
    async fn before_deadline(
        &self,
        opening_id: &str,
        uscc: &str,
        at_ms: i64,
        states: &[&str],
    ) -> Result<(OpeningRow, Option<BidderRow>), HallError> {
        let opening = self.opening(opening_id).await?;
        if !states.contains(&opening.state.as_str()) || at_ms >= opening.deadline_ms {
            return Err(HallError::AfterDeadline(fmt_time(opening.deadline_ms)));
        }
        let bidder = self.inner.db.bidder_by_uscc(opening_id, uscc).await?;
        Ok((opening, bidder))
    }

    /// Withdraws (撤回) a bid before the deadline, on the bidder's signature over
    /// [`crate::phone::withdrawal_message`] of that upload's bid id.
    pub async fn withdraw_bid(
        &self,
        opening_id: &str,
        uscc: &str,
        bid_id: &str,
        signature: &str,
    ) -> Result<(), HallError> {
        // A code no bidder has is told as a bid not found: withdrawing tells no one who
        // registered.
        let (opening, bidder) = self
            .before_deadline(opening_id, uscc, self.now(), &["scheduled"])
            .await?;
        let bid = self
            .inner
            .db
            .bid(bid_id)
            .await?
            .filter(|b| {
                b.opening_id == opening_id && bidder.as_ref().is_some_and(|r| b.bidder_id == r.id)
            })
            .ok_or(HallError::NotFound(
                "bid (it may have been replaced or withdrawn already)",
            ))?;
        let bidder = bidder.ok_or(HallError::Internal("a bid without its bidder".into()))?;
        let message = crate::phone::withdrawal_message(&bid.id);
        self.check_bidder_signature(&bidder.id, message, signature)
            .await?;
        // Decryption may have started since the check above: then the bid stays.
        let withdrawn = ev(
            "bid.withdrawn",
            "agent",
            json!({"bid_id": bid.id, "bidder_code": bidder.uscc}),
        );
        let (path, staged) = self
            .inner
            .db
            .delete_bid(opening_id, &bid.id, vec![withdrawn], self.now())
            .await?
            .ok_or_else(|| HallError::AfterDeadline(fmt_time(opening.deadline_ms)))?;
        let _ = std::fs::remove_file(path);
        self.publish(staged).await;
        Ok(())
    }

    /// Starts decryption: refused before the opening time. Makes the hall key and a QR per bid.
    pub async fn start_decryption(&self, opening_id: &str) -> Result<(), HallError> {
        let opening = self.opening(opening_id).await?;
        if opening.state != "scheduled" {
            return Err(HallError::WrongState(format!(
                "decryption cannot start: the opening is {}",
                opening.state
            )));
        }
        let now = self.now();
        if now < opening.opening_ms {
            return Err(HallError::BeforeOpening(fmt_time(opening.opening_ms)));
        }
        let secret = crypto::generate_secret_key();
        let public = secret
            .public_key()
            .to_public_key_der()
            .map_err(|e| HallError::Internal(e.to_string()))?
            .into_vec();
        let sealed = self
            .inner
            .vault
            .seal(&format!("hall:{opening_id}"), &secret.to_bytes())?;
        let deadline = now + opening.decrypt_limit_secs * 1000;
        // The bidders are published (公布投标人) with the start: the event carries the list that
        // public viewers did not see before.
        let hall_key_id = hex::encode(crypto::sm3(&public));
        let started = |bidders: &[BidderRow], bids: &[BidRow]| {
            let mut started =
                json!({"started_ms": now, "deadline_ms": deadline, "hall_key_id": hall_key_id});
            add_published_list(&mut started, bidders, bids);
            vec![ev("decryption.started", "public", started)]
        };
        let staged = self
            .inner
            .db
            .start_decryption(opening_id, now, deadline, &public, &sealed, started)
            .await?
            .ok_or_else(|| HallError::WrongState("decryption was started already".into()))?;
        self.inner
            .hall_keys
            .insert(opening_id.to_owned(), Arc::new(secret));
        self.publish(staged).await;
        let waiting = self.inner.db.awaiting_keys(opening_id).await?;
        self.issue_challenges(opening_id, &waiting).await
    }

    /// Issues a fresh challenge (QR code) for each bid, the challenges and their events staged
    /// in one commit.
    async fn issue_challenges(
        &self,
        opening_id: &str,
        bid_ids: &[String],
    ) -> Result<(), HallError> {
        if bid_ids.is_empty() {
            return Ok(());
        }
        let opening = self.opening(opening_id).await?;
        let now = self.now();
        let expires_ms = now + self.inner.settings.challenge_ttl_secs as i64 * 1000;
        let mut rows = Vec::with_capacity(bid_ids.len());
        for bid_id in bid_ids {
            rows.push(ChallengeRow {
                nonce: random_hex::<16>()?,
                opening_id: opening_id.to_owned(),
                bid_id: bid_id.clone(),
                expires_ms,
                used: 0,
                created_ms: now,
            });
        }
        let events = rows
            .iter()
            .map(|row| {
                let payload = json!({"bid_id": row.bid_id, "nonce": row.nonce, "url": self.qr_url(&opening, &row.nonce), "expires_ms": row.expires_ms});
                ev("qr.issued", "public", payload)
            })
            .collect();
        let staged = self
            .inner
            .db
            .insert_challenges(opening_id, &rows, events, now)
            .await?;
        self.publish(staged).await;
        Ok(())
    }

    /// The key that checks what the platform signs: upload receipts and log heads.
    pub fn platform_key(&self) -> sm2::PublicKey {
        self.inner.vault.platform_key().public_key()
    }

    /// Records the platform key in the database's list of keys, so that what an earlier key
    /// signed can still be checked after the master key changed (see `/api/platform-key`).
    async fn record_platform_key(&self) -> Result<(), HallError> {
        let key = self.platform_key();
        let id = hex::encode(crypto::key_id(&key));
        let pem = crypto::public_key_pem(&key).map_err(|e| HallError::Internal(e.to_string()))?;
        let new = self
            .inner
            .db
            .record_platform_key(&id, &pem, self.now())
            .await?;
        let known = self.inner.db.platform_keys().await?.len();
        if new && known > 1 {
            tracing::warn!(key_id = %id, "the platform signing key changed with the master key: receipts and log heads signed before are checked with the earlier keys /api/platform-key lists");
        }
        Ok(())
    }

    async fn sign_as_platform(&self, message: Vec<u8>) -> Result<String, HallError> {
        let hall = self.clone();
        on_rayon(move || attest::sign_hex(hall.inner.vault.platform_key(), &message)).await?
    }

    /// The head of an opening's log as `role` may see it, signed by the platform: the last
    /// event, or before the bidders are published, the last event `role` may read (the log's
    /// own last number would count registrations and uploads, see [`Hall::snapshot`]).
    pub async fn signed_head(&self, opening_id: &str, role: Role) -> Result<SignedHead, HallError> {
        let opening = self.opening(opening_id).await?;
        let seq = self.last_seq_seen(&opening, role).await?;
        let hash = self.chain_value(opening_id, seq).await?;
        // One signature per head: asking again for the same head (anyone may ask, as often as
        // they like) gets the one signed first, and costs no SM2 signing.
        let key = (opening_id.to_owned(), seq);
        if let Some(head) = self.inner.signed_heads.get(&key)
            && head.hash == hash
        {
            return Ok(head.clone());
        }
        let mut head = SignedHead {
            opening_id: opening_id.to_owned(),
            seq,
            hash,
            signed_ms: self.now(),
            signature: String::new(),
        };
        head.signature = self.sign_as_platform(head.signed_message()).await?;
        self.inner
            .signed_heads
            .retain(|(opening, s), _| opening != opening_id || *s >= seq);
        self.inner.signed_heads.insert(key, head.clone());
        Ok(head)
    }

    /// Recomputes an opening's whole chain and, given a head `(seq, hash)` the platform signed
    /// earlier, checks the log still leads to it.
    pub async fn verify_log(
        &self,
        opening_id: &str,
        head: Option<(i64, &str)>,
    ) -> Result<LogVerdict, HallError> {
        let opening = self.opening(opening_id).await?;
        let chain = self
            .inner
            .bus
            .verify_chain(opening_id, opening.chain_version)
            .await?;
        let stored = match head {
            Some((seq, _)) if seq > 0 => self.event_hash(opening_id, seq).await?,
            _ => None,
        };
        Ok(LogVerdict::judge(chain, head, stored.as_deref()))
    }

    /// The digests of an opening's events after `after` (a page of up to 1000), every event's
    /// whether `role` may read it or not: with them anyone checks the whole chain up to a head
    /// the platform signed (chain version 2). Given once the bidders are published, since before
    /// that the number of registrations and uploads is not told.
    pub async fn event_digests(
        &self,
        opening_id: &str,
        role: Role,
        after: i64,
    ) -> Result<Vec<EventDigest>, HallError> {
        let opening = self.opening(opening_id).await?;
        if opening.chain_version < 2 {
            return Err(HallError::WrongState(
                "this opening's log is chained the earlier way (version 1), which only the \
                 platform can check: ask it with /events/verify"
                    .into(),
            ));
        }
        if !bids_published(&opening, role) {
            return Err(HallError::WrongState(
                "the log's digests are given once the bidders are published (when decryption \
                 starts): before, who registered and uploaded is not told"
                    .into(),
            ));
        }
        let page = self.inner.db.events_since(opening_id, after, 1000).await?;
        Ok(page.iter().map(EventDigest::of).collect())
    }

    /// The chain's value after event `seq` of an opening's log ([`GENESIS`] before the first).
    async fn chain_value(&self, opening_id: &str, seq: i64) -> Result<String, HallError> {
        match seq {
            0 => Ok(GENESIS.to_owned()),
            seq => self
                .event_hash(opening_id, seq)
                .await?
                .ok_or_else(|| HallError::Internal(format!("event {seq} of the log is missing"))),
        }
    }

    async fn event_hash(&self, opening_id: &str, seq: i64) -> Result<Option<String>, HallError> {
        let page = self.inner.db.events_since(opening_id, seq - 1, 1).await?;
        Ok(page.into_iter().find(|e| e.seq == seq).map(|e| e.hash))
    }

    /// The number of the last event of an opening `role` may see; see [`Hall::snapshot`].
    async fn last_seq_seen(&self, opening: &OpeningRow, role: Role) -> Result<i64, HallError> {
        Ok(if bids_published(opening, role) {
            self.inner
                .db
                .last_event(&opening.id)
                .await?
                .map(|(s, _)| s)
                .unwrap_or(0)
        } else {
            let seen = if role.can_see("evaluator") {
                ["public", "evaluator"]
            } else {
                ["public", "public"]
            };
            self.inner.db.last_seq_for(&opening.id, seen).await?
        })
    }

    /// The hall's private key of an opening, from the cache or unsealed from the database.
    fn hall_key(&self, opening: &OpeningRow) -> Result<Arc<SecretKey>, HallError> {
        if let Some(key) = self.inner.hall_keys.get(&opening.id) {
            return Ok(key.clone());
        }
        let sealed = opening
            .hall_secret_sealed
            .as_deref()
            .ok_or_else(|| HallError::WrongState("decryption has not started".into()))?;
        let bytes = self
            .inner
            .vault
            .open(&format!("hall:{}", opening.id), sealed)?;
        let key = SecretKey::from_slice(&bytes)
            .map_err(|_| HallError::Internal("a stored hall key is invalid".into()))?;
        let key = Arc::new(key);
        self.inner.hall_keys.insert(opening.id.clone(), key.clone());
        Ok(key)
    }

    /// Checks a scanned challenge is usable now; returns its rows.
    async fn live_challenge(
        &self,
        nonce: &str,
    ) -> Result<(ChallengeRow, OpeningRow, BidRow), HallError> {
        if nonce.len() != 32 || !nonce.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(HallError::ChallengeUnknown);
        }
        let challenge = self
            .inner
            .db
            .challenge(nonce)
            .await?
            .ok_or(HallError::ChallengeUnknown)?;
        let opening = self.opening(&challenge.opening_id).await?;
        let bid = self
            .inner
            .db
            .bid(&challenge.bid_id)
            .await?
            .ok_or(HallError::ChallengeUnknown)?;
        let now = self.now();
        if matches!(bid.state.as_str(), "decrypting" | "decrypted") {
            return Err(HallError::AlreadyDecrypted);
        }
        if opening.state != "decrypting" || opening.decrypt_deadline_ms.is_some_and(|d| now >= d) {
            return Err(HallError::WindowClosed);
        }
        if bid.state != "awaiting_key" {
            return Err(HallError::WrongState(format!("the bid is {}", bid.state)));
        }
        if challenge.used != 0 {
            return Err(HallError::ChallengeUsed);
        }
        if now >= challenge.expires_ms {
            return Err(HallError::ChallengeExpired);
        }
        Ok((challenge, opening, bid))
    }

    /// What the phone is shown for a QR code.
    pub async fn challenge_view(&self, nonce: &str) -> Result<ChallengeView, HallError> {
        let (challenge, opening, bid) = self.live_challenge(nonce).await?;
        let bidder = self
            .inner
            .db
            .bidder(&bid.bidder_id)
            .await?
            .ok_or(HallError::NotFound("bidder"))?;
        let path = PathBuf::from(&bid.path);
        // The recipient list is in the header.
        let header = on_rayon(move || stored_header(&path)).await??;
        Ok(ChallengeView {
            nonce: challenge.nonce.clone(),
            opening_id: opening.id.clone(),
            tender_id: opening.tender_id.clone(),
            tender_name: opening.name.clone(),
            bid_id: bid.id.clone(),
            bidder_name: bidder.name,
            bidder_code: bidder.uscc,
            expires_ms: challenge.expires_ms,
            server_ms: self.now(),
            hall_public_key: B64.encode(opening.hall_public.unwrap_or_default()),
            recipients: header
                .recipients
                .iter()
                .map(|r| RecipientView {
                    key_id: hex::encode(r.key_id),
                    wrapped_key: B64.encode(&r.wrapped_key),
                })
                .collect(),
            answer_url: format!(
                "{}/api/phone/challenges/{}/answer",
                self.public_url(),
                challenge.nonce
            ),
        })
    }

    /// Takes a phone's answer. Every refusal is also shown on the hall display.
    pub async fn answer(&self, nonce: &str, answer: &Answer) -> Result<BidSummary, HallError> {
        let result = self.answer_inner(nonce, answer).await;
        if let Err(error) = &result {
            self.inner.metrics.refusals.inc();
            // Remembered only for a QR code the hall issued, so that posting to made-up ones
            // holds no memory.
            if let Ok(Some(challenge)) = self.inner.db.challenge(nonce).await
                && self
                    .inner
                    .announced_refusals
                    .insert(
                        (challenge.nonce.clone(), error.code()),
                        Instant::now() + REFUSALS_REMEMBERED,
                    )
                    .is_none()
            {
                let _ = self
                    .event(
                        &challenge.opening_id,
                        "bid.refused",
                        "public",
                        json!({"bid_id": challenge.bid_id, "code": error.code(), "message": error.public_message()}),
                    )
                    .await;
                if matches!(error, HallError::ChallengeExpired)
                    && let Ok(Some(current)) =
                        self.inner.db.current_challenge(&challenge.bid_id).await
                    && current.nonce == challenge.nonce
                {
                    let _ = self
                        .issue_challenges(
                            &challenge.opening_id,
                            std::slice::from_ref(&challenge.bid_id),
                        )
                        .await;
                }
            }
        } else {
            self.inner.metrics.answers.inc();
        }
        result
    }

    async fn answer_inner(&self, nonce: &str, answer: &Answer) -> Result<BidSummary, HallError> {
        let (challenge, opening, bid) = self.live_challenge(nonce).await?;
        let rewrapped = B64
            .decode(answer.rewrapped_key.trim())
            .map_err(|_| HallError::Invalid("rewrapped_key is not base64".into()))?;
        let signature = B64
            .decode(answer.signature.trim())
            .map_err(|_| HallError::Invalid("signature is not base64".into()))?;
        if rewrapped.len() > 512 || signature.len() > 128 {
            return Err(HallError::Invalid("the answer is too large".into()));
        }
        let sign_keys = self.inner.db.bidder_keys(&bid.bidder_id, "sign").await?;
        let message = answer_message(&challenge.nonce, &bid.id, &rewrapped);
        let hall_key = self.hall_key(&opening)?;
        let path = PathBuf::from(&bid.path);
        let wrapped = rewrapped.clone();
        let checked = on_rayon(move || -> Result<(FileKey, BidSummary), HallError> {
            if !signed_by_any(&sign_keys, &message, &signature) {
                return Err(HallError::BadAnswerSignature);
            }
            let raw =
                crypto::unwrap_key(&hall_key, &wrapped).map_err(|_| HallError::WrongCertificate)?;
            let header = stored_header(&path)?;
            let key =
                engine::accept_file_key(&header, *raw).map_err(|_| HallError::WrongCertificate)?;
            let summary = engine::open_summary(&header, &key)?;
            Ok((key, summary))
        })
        .await??;
        let (key, summary) = checked;
        let summary_json =
            serde_json::to_string(&summary).map_err(|e| HallError::Internal(e.to_string()))?;
        let events = vec![
            (
                "bid.key_accepted".to_owned(),
                "public".to_owned(),
                json!({"bid_id": bid.id}),
            ),
            (
                "bid.summary".to_owned(),
                "public".to_owned(),
                json!({"bid_id": bid.id, "summary": summary, "price_yuan": summary.price_yuan()}),
            ),
        ];
        let stored = rewrapped.clone();
        // Claimed before the commit, so that the tick, seeing the bid decrypting, does not take
        // it up between the two; given back if the answer is not accepted.
        // Held already only by another answer for this bid arriving at the same moment.
        let Some(active) = self.claim(&bid) else {
            return Err(HallError::ChallengeUsed);
        };
        let mut unclaim = OnDrop::new(|| {
            self.inner.active.remove(&bid.id);
        });
        let accept = BidWrite::Accept {
            nonce: challenge.nonce.clone(),
            bid_id: bid.id.clone(),
            answer: rewrapped,
            summary: summary_json,
        };
        match self
            .inner
            .bus
            .commit(&opening.id, accept, events, self.now())
            .await
        {
            Ok(true) => {}
            Ok(false) => return Err(HallError::ChallengeUsed),
            // The database may have committed before the connection failed: if the bid now
            // holds this very answer, the key was accepted and the phone is told so.
            Err(error) => match self.inner.db.bid(&bid.id).await {
                Ok(Some(now))
                    if now.state == "decrypting" && now.answer.as_deref() == Some(&stored[..]) =>
                {
                    tracing::warn!(bid = %bid.id, %error, "an accepted answer's commit reported an error after it was stored");
                }
                _ => return Err(error),
            },
        }
        unclaim.disarm();
        drop(unclaim);
        self.spawn_decryption(bid, key, active);
        Ok(summary)
    }

    /// Marks `bid` as being decrypted by this process; None if a task already has it. A task
    /// keeps its claim until the end of its decryption is recorded, so a bid that is
    /// `decrypting` in the database and unclaimed has no task (see [`Self::reconcile`]).
    fn claim(&self, bid: &BidRow) -> Option<Arc<Active>> {
        match self.inner.active.entry(bid.id.clone()) {
            dashmap::Entry::Occupied(_) => None,
            dashmap::Entry::Vacant(slot) => {
                let active = Arc::new(Active {
                    opening_id: bid.opening_id.clone(),
                    total: bid.plaintext_len as u64,
                    done: AtomicU64::new(0),
                    started: Instant::now(),
                    // Nothing said until bytes are done: a claim is taken before the answer is
                    // committed, and a refused answer's bid must not show a decryption at 0 %.
                    reported: AtomicU64::new(0),
                });
                slot.insert(active.clone());
                Some(active)
            }
        }
    }

    /// Starts decrypting every bid whose key was accepted but that no task is decrypting: after
    /// a restart, or when recording an answer or a finished decryption failed on the database.
    async fn reconcile(&self) -> Result<(), HallError> {
        // Twice a second: only ids, and rows only for bids that no task holds (rare).
        let now = self.now();
        for id in self.inner.db.bid_ids_in_state("decrypting").await? {
            if self.inner.active.contains_key(&id)
                || self
                    .inner
                    .delayed
                    .get(&id)
                    .is_some_and(|d| d.retry_ms > now)
            {
                continue;
            }
            let Some(bid) = self.inner.db.bid(&id).await? else {
                continue;
            };
            let Some(active) = self.claim(&bid) else {
                continue;
            };
            // Given back on every way out, also if the tick is stopped at an await below;
            // handed to the decryption's task when one starts.
            let mut unclaim = OnDrop::new(|| {
                self.inner.active.remove(&id);
            });
            // A task that just ended gave up its claim only after recording the end: read the
            // bid again now that the claim is held.
            let bid = match self.inner.db.bid(&bid.id).await? {
                Some(b) if b.state == "decrypting" && b.answer.is_some() => b,
                _ => continue,
            };
            match self.stored_key(&bid).await {
                Ok(key) => {
                    tracing::info!(bid = %bid.id, "decrypting a bid whose key was accepted but that no task was decrypting");
                    self.inner.metrics.decryptions_taken_up.inc();
                    unclaim.disarm();
                    self.spawn_decryption(bid, key, active);
                }
                // The file could not be read: the platform's trouble, tried again later.
                Err(error @ HallError::BidRejected(BidError::Io { .. })) => {
                    drop(unclaim);
                    self.delay_decryption(&bid, error).await?;
                }
                // The stored answer or the file cannot give the key: that will not change.
                Err(error @ (HallError::WrongCertificate | HallError::BidRejected(_))) => {
                    self.fail_decryption(&bid, error).await?;
                }
                // The database or the hall key's vault: tried again at the next tick.
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }

    /// A bid's file key from the answer stored when it was accepted.
    async fn stored_key(&self, bid: &BidRow) -> Result<FileKey, HallError> {
        let opening = self.opening(&bid.opening_id).await?;
        let hall_key = self.hall_key(&opening)?;
        let answer = bid.answer.clone().unwrap_or_default();
        let path = PathBuf::from(&bid.path);
        on_rayon(move || -> Result<FileKey, HallError> {
            let raw =
                crypto::unwrap_key(&hall_key, &answer).map_err(|_| HallError::WrongCertificate)?;
            Ok(SealedBid::open(&path)?.accept_file_key(*raw)?)
        })
        .await?
    }

    /// Runs `task` on the hall's runtime, among the tasks a stopping server ends; drops it
    /// unstarted once the hall is stopped (its claims are given back as it is dropped).
    fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        let mut tasks = self
            .inner
            .tasks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(tasks) = tasks.as_mut() else {
            return;
        };
        // Finished ones are let go of as new ones come.
        while tasks.try_join_next().is_some() {}
        tasks.spawn_on(task, &self.inner.runtime);
    }

    /// Ends the decryptions and digests running now and waits until they are gone, their
    /// claims given back (the tick takes the bids up again, from the start); the work under way
    /// in the pool finishes unheeded. With `close`, no more are started afterwards.
    async fn end_tasks(&self, close: bool) {
        let tasks = {
            let mut tasks = self
                .inner
                .tasks
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if close {
                tasks.take()
            } else {
                tasks.replace(tokio::task::JoinSet::new())
            }
        };
        if let Some(mut tasks) = tasks {
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
        }
    }

    /// Ends the decryptions and digests running now (see [`Self::stop`]); the hall goes on,
    /// and its tick takes their bids up again. For tests and operators' tools.
    pub async fn abort_tasks(&self) {
        self.end_tasks(false).await;
    }

    /// For a server that stops without waiting any longer for its decryptions and digests (its
    /// wait ran out, or another server took its database): ends them, starts no more, lets the
    /// event log's writer store what they had handed it, and closes the database, waiting for
    /// statements under way; after this nothing of this hall's is written. The next server takes
    /// the bids up. Waits at most 10 s for the writer and the database (which may be what
    /// failed).
    pub async fn stop(&self) {
        self.end_tasks(true).await;
        let settle = async {
            self.inner.bus.flush().await;
            self.inner.db.close().await;
        };
        if tokio::time::timeout(std::time::Duration::from_secs(10), settle)
            .await
            .is_err()
        {
            tracing::warn!("the database did not answer within 10 s of stopping; stopping anyway");
        }
    }

    fn spawn_decryption(&self, bid: BidRow, key: FileKey, active: Arc<Active>) {
        let hall = self.clone();
        // Held until the body is decrypted and on disk (not while it is hashed).
        let decrypting = self.inner.decrypting.enter();
        // The claim goes when the task ends, or when it is ended (see [`Self::end_tasks`]):
        // then the tick, or the next server, takes the bid up again.
        let unclaim = OnDrop::new({
            let (hall, id) = (self.clone(), bid.id.clone());
            move || {
                hall.inner.active.remove(&id);
            }
        });
        self.spawn(async move {
            let _unclaim = unclaim;
            let out = hall
                .inner
                .settings
                .data_dir
                .join("plain")
                .join(format!("{}.tar", bid.id));
            let source = PathBuf::from(&bid.path);
            let target = out.clone();
            let progress = active.clone();
            let plain_dir = target.parent().unwrap_or(Path::new(".")).to_owned();
            let writers = hall.inner.writers.clone();
            let result = async move {
                let key = Arc::new(key);
                let (sealed, tmp, output) = on_rayon({
                    move || -> Result<_, BidError> {
                        let sealed = SealedBid::open(&source)?;
                        let tmp = tempfile::NamedTempFile::new_in(&plain_dir)
                            .map_err(BidError::io("creating the decrypted file"))?;
                        // Evaluators download the file long after: the writer bypasses the
                        // page cache where the file system allows it.
                        let output =
                            sealed.output(tmp.as_file(), Some(tmp.path()), Some(&writers))?;
                        Ok((Arc::new(sealed), tmp, Arc::new(output)))
                    }
                })
                .await??;
                // Digests were checked against the bidder's signature when the bid was
                // uploaded; the GCM tags still authenticate every chunk.
                let options = DecryptOptions {
                    verify_digests: false,
                };
                // Slice by slice, each submitted afresh to the pool's queue: bids decrypting at
                // once take turns, and a phone's answer check waits for one slice at most.
                let slice = 4 * rayon::current_num_threads() as u64;
                let count = sealed.header().chunk_count();
                let mut decrypted = Ok(());
                for start in (0..count).step_by(slice as usize) {
                    let (sealed, output, key) = (sealed.clone(), output.clone(), key.clone());
                    let progress = progress.clone();
                    decrypted = on_rayon(move || {
                        sealed.decrypt_range(
                            &key,
                            &output,
                            start..start + slice,
                            options,
                            &*progress,
                        )
                    })
                    .await
                    .and_then(|r| r.map_err(HallError::BidRejected));
                    if decrypted.is_err() {
                        break;
                    }
                }
                let output = Arc::into_inner(output).ok_or_else(|| {
                    HallError::Internal("the decrypted file is still in use".into())
                })?;
                // Waiting for the writer and the disk flush wait on the device, not the CPU: off
                // the Rayon pool, so they never hold up other bids' decryption or the phones'
                // answer checks (and off the async executor, also when the decryption failed).
                tokio::task::spawn_blocking(move || -> Result<(), HallError> {
                    let written = output.finish();
                    decrypted?;
                    written.map_err(HallError::BidRejected)?;
                    engine::persist(tmp, &target, "the decrypted bid")?;
                    Ok(())
                })
                .await
                .map_err(|e| HallError::Internal(e.to_string()))?
            }
            .await;
            drop(decrypting);
            let secs = active.started.elapsed().as_secs_f64();
            let outcome = match result {
                Ok(()) => {
                    hall.inner.metrics.bytes_decrypted.inc_by(active.total);
                    if secs > 0.0 {
                        hall.inner
                            .metrics
                            .decrypt_throughput
                            .observe(active.total as f64 / secs);
                    }
                    hall.finish_decryption(&bid, &out, secs).await
                }
                Err(error) if fault_of(&error).0 == "platform" => {
                    hall.delay_decryption(&bid, error).await
                }
                Err(error) => hall.fail_decryption(&bid, error).await,
            };
            if let Err(error) = outcome {
                tracing::error!(bid = %bid.id, %error, "recording the end of a decryption failed; it will be decrypted again");
            }
        });
    }

    async fn finish_decryption(
        &self,
        bid: &BidRow,
        out: &Path,
        secs: f64,
    ) -> Result<(), HallError> {
        let finish = BidWrite::Finish {
            bid_id: bid.id.clone(),
            plain_path: out.to_string_lossy().into_owned(),
        };
        let decrypted = (
            "bid.decrypted".to_owned(),
            "public".to_owned(),
            json!({"bid_id": bid.id, "bytes": bid.plaintext_len, "seconds": secs}),
        );
        if !self
            .inner
            .bus
            .commit(&bid.opening_id, finish, vec![decrypted], self.now())
            .await?
        {
            // Only this task moves its bid out of `decrypting`; another process sharing the
            // database could have. The file at `out` may then be that process's: leave it.
            tracing::warn!(bid = %bid.id, "a finished decryption found its bid no longer decrypting");
            return Ok(());
        }
        self.inner.delayed.remove(&bid.id);
        self.spawn_digest(&bid.id, &bid.opening_id, out);
        Ok(())
    }

    /// Computes and records the plaintext digest of a decrypted bid in a task of its own, unless
    /// one is at it or its last attempt failed less than [`DIGEST_RETRY`] ago (the tick retries
    /// it then, see [`Self::reconcile_digests`]).
    fn spawn_digest(&self, bid_id: &str, opening_id: &str, path: &Path) {
        use dashmap::mapref::entry::Entry;
        match self.inner.digesting.entry(bid_id.to_owned()) {
            Entry::Occupied(mut busy) => match busy.get() {
                Some(retry) if Instant::now() >= *retry => *busy.get_mut() = None,
                _ => return,
            },
            Entry::Vacant(free) => {
                free.insert(None);
            }
        }
        let hall = self.clone();
        let (bid_id, opening_id, path) =
            (bid_id.to_owned(), opening_id.to_owned(), path.to_owned());
        // Ended unfinished (see [`Self::end_tasks`]), the task gives its claim back.
        let mut unclaim = OnDrop::new({
            let (hall, id) = (self.clone(), bid_id.clone());
            move || {
                hall.inner.digesting.remove(&id);
            }
        });
        self.spawn(async move {
            let outcome = hall.record_digest(&bid_id, &opening_id, path).await;
            unclaim.disarm();
            match outcome {
                Ok(()) => {
                    hall.inner.digesting.remove(&bid_id);
                }
                Err(error) => {
                    tracing::warn!(bid = %bid_id, %error, "the plaintext digest of a decrypted bid failed; it is retried in {} s", DIGEST_RETRY.as_secs());
                    hall.inner
                        .digesting
                        .insert(bid_id, Some(Instant::now() + DIGEST_RETRY));
                }
            }
        });
    }

    /// Whether the last attempt at a decrypted bid's plaintext digest failed (it is retried every
    /// [`DIGEST_RETRY`]).
    fn digest_failed(&self, bid_id: &str) -> bool {
        self.inner
            .digesting
            .get(bid_id)
            .is_some_and(|d| d.is_some())
    }

    async fn record_digest(
        &self,
        bid_id: &str,
        opening_id: &str,
        path: PathBuf,
    ) -> Result<(), HallError> {
        // The tick may have listed the bid just before another task recorded its digest.
        if self
            .inner
            .db
            .bid(bid_id)
            .await?
            .is_none_or(|b| b.plain_sm3.is_some())
        {
            return Ok(());
        }
        let digest = self.inner.digests.of(path).await?;
        let record = BidWrite::PlainSm3 {
            bid_id: bid_id.to_owned(),
            sm3: digest.clone(),
        };
        let event = (
            "bid.digest".to_owned(),
            "evaluator".to_owned(),
            json!({"bid_id": bid_id, "plain_sm3": digest}),
        );
        self.inner
            .bus
            .commit(opening_id, record, vec![event], self.now())
            .await
            .map(|_| ())
    }

    /// Starts the digest of every decrypted bid that has none and no task computing it: after a
    /// restart, or an attempt that failed.
    async fn reconcile_digests(&self) -> Result<(), HallError> {
        for (id, opening_id, path) in self.inner.db.decrypted_without_digest().await? {
            self.spawn_digest(&id, &opening_id, Path::new(&path));
        }
        Ok(())
    }

    /// A decryption that failed through the platform, not the bid: the bid stays `decrypting`
    /// (its key is stored) and the tick tries again after [`DECRYPT_RETRY_MS`]; the hall display
    /// says why on the first failure of a run. The agent may give up on it
    /// ([`Self::abandon_decryption`]).
    async fn delay_decryption(&self, bid: &BidRow, error: HallError) -> Result<(), HallError> {
        self.inner.metrics.platform_failures.inc();
        let why = if error.disk_full() {
            "the server's disk is full"
        } else {
            "a server error; the operators have the details in the log"
        };
        let message = format!(
            "the platform could not finish decrypting this bid ({why}); it keeps trying — not \
             the bidder's fault"
        );
        // 10 s after the first failure, doubling to 5 minutes: a full disk is not refilled
        // with a large bid's plaintext every few seconds.
        let attempts = self.inner.delayed.get(&bid.id).map_or(0, |d| d.attempts) + 1;
        let wait = (DECRYPT_RETRY_MS << (attempts - 1).min(5)).min(5 * 60_000);
        tracing::error!(bid = %bid.id, %error, attempts, "decrypting a bid failed through the platform; it is tried again in {} s", wait / 1000);
        let first = self
            .inner
            .delayed
            .insert(
                bid.id.clone(),
                Delay {
                    retry_ms: self.now() + wait,
                    message: message.clone(),
                    attempts,
                },
            )
            .is_none_or(|d| d.message != message);
        if !first {
            return Ok(());
        }
        self.event(
            &bid.opening_id,
            "bid.delayed",
            "public",
            json!({"bid_id": bid.id, "message": message}),
        )
        .await
    }

    /// The agent gives up on a bid whose decryption keeps failing through the platform: it is
    /// recorded as not decrypted through the platform's fault (art. 31: counts as withdrawn,
    /// 撤回, and the bidder may claim its losses), so the opening can go on to release.
    pub async fn abandon_decryption(
        &self,
        opening_id: &str,
        bid_id: &str,
        reason: &str,
    ) -> Result<(), HallError> {
        let reason = reason.trim();
        if reason.is_empty() || reason.chars().count() > 500 {
            return Err(HallError::Invalid(
                "say why the bid is given up (1 to 500 characters)".into(),
            ));
        }
        let bid = self.bid_of(opening_id, bid_id).await?;
        if bid.state != "decrypting" || !self.inner.delayed.contains_key(bid_id) {
            return Err(HallError::WrongState(
                "only a bid whose decryption failed through the platform can be given up".into(),
            ));
        }
        // Held while the failure is recorded, so that no retry starts meanwhile; given back
        // however this ends (also if the request is dropped half-way).
        if self.claim(&bid).is_none() {
            return Err(HallError::WrongState(
                "the hall is trying this bid again right now; wait for the attempt to end".into(),
            ));
        }
        let _claim = OnDrop::new(|| {
            self.inner.active.remove(bid_id);
        });
        // A retry may have ended between the check and the claim: read the bid again.
        if self
            .inner
            .db
            .bid(bid_id)
            .await?
            .is_none_or(|b| b.state != "decrypting")
        {
            return Err(HallError::WrongState(
                "the bid is no longer decrypting; reload".into(),
            ));
        }
        let message = format!(
            "not decrypted through the platform's fault ({reason}): counts as withdrawn (撤回, \
             art. 31); the bidder may claim its losses"
        );
        self.record_failure(&bid, &message, "platform", None).await
    }

    async fn fail_decryption(&self, bid: &BidRow, error: HallError) -> Result<(), HallError> {
        let (fault, chunk) = fault_of(&error);
        // Every upload was checked whole against the bidder's signature, and the hall decrypts
        // without checking again: a bid that fails now was either sealed so by the bidder, or
        // damaged in the platform's storage since. The SM3 of its upload receipt tells which
        // (art. 31 makes the difference between revoked and withdrawn).
        if fault == "bidder" {
            let stored = self.inner.digests.of(PathBuf::from(&bid.path)).await;
            if stored.as_deref().ok() != Some(bid.sm3.as_str()) {
                let what = match &stored {
                    Ok(_) => "its SM3 is no longer the one on the bidder's upload receipt",
                    Err(_) => "it can no longer be read",
                };
                tracing::error!(bid = %bid.id, %error, what, "a stored bid is no longer what its bidder uploaded: the platform's storage damaged it");
                let at = chunk
                    .map(|i| format!("chunk {i} fails, and "))
                    .unwrap_or_default();
                let message = format!(
                    "not decrypted through the platform's fault: the stored copy of the bid was \
                     damaged after its upload ({at}{what}); counts as withdrawn (撤回, art. 31), \
                     the bidder may claim its losses"
                );
                return self.record_failure(bid, &message, "platform", chunk).await;
            }
        }
        tracing::warn!(bid = %bid.id, %error, fault, "bid decryption failed");
        let message = if fault == "platform" {
            format!(
                "not decrypted through the platform's fault ({error}): counts as withdrawn \
                 (撤回, art. 31); the bidder may claim its losses"
            )
        } else {
            format!("bid file damaged: {error}")
        };
        self.record_failure(bid, &message, fault, chunk).await
    }

    async fn record_failure(
        &self,
        bid: &BidRow,
        message: &str,
        fault: &str,
        chunk: Option<u64>,
    ) -> Result<(), HallError> {
        let failed = ev(
            "bid.failed",
            "public",
            json!({"bid_id": bid.id, "message": message, "fault": fault, "chunk": chunk}),
        );
        let staged = self
            .inner
            .db
            .fail_bid(
                &bid.opening_id,
                &bid.id,
                "failed",
                message,
                fault,
                vec![failed],
                self.now(),
            )
            .await?;
        self.inner.delayed.remove(&bid.id);
        let Some(staged) = staged else {
            tracing::warn!(bid = %bid.id, "a failed decryption found its bid no longer decrypting");
            return Ok(());
        };
        self.publish(staged).await;
        Ok(())
    }

    /// Ends the decryption window: bids still waiting for a key count as not decrypted through
    /// the bidder (art. 31: revoked, 撤销). Before the time limit only once no bid waits for its
    /// key: a bidder may scan until the limit, and one cut short would not be at fault.
    pub async fn end_decryption(&self, opening_id: &str) -> Result<(), HallError> {
        const FAILURE: &str =
            "not decrypted by the bidder within the time limit: counts as revoked (撤销, art. 31)";
        self.close_window(opening_id, FAILURE, "bidder").await
    }

    async fn close_window(
        &self,
        opening_id: &str,
        failure: &str,
        fault: &str,
    ) -> Result<(), HallError> {
        let opening = self.opening(opening_id).await?;
        let early = opening.decrypt_deadline_ms.is_some_and(|d| self.now() < d);
        let checking = self.inner.checking.get(opening_id).map_or(0, |n| *n);
        if early && checking > 0 {
            return Err(HallError::WrongState(format!(
                "{checking} upload(s) received before the deadline are still being checked and \
                 will wait for their bidder's key; end decryption once they are filed"
            )));
        }
        let ended = |not_decrypted: &[String]| {
            vec![ev(
                "decryption.ended",
                "public",
                json!({"not_decrypted": not_decrypted, "failure": failure, "fault": fault}),
            )]
        };
        let staged = match self
            .inner
            .db
            .end_decryption(opening_id, failure, fault, early, self.now(), ended)
            .await?
        {
            Ended::Ended(_, staged) => staged,
            Ended::NotRunning => {
                return Err(HallError::WrongState("decryption is not running".into()));
            }
            Ended::KeysAwaited(waiting) => {
                return Err(HallError::WrongState(format!(
                    "{waiting} bid(s) still wait for their bidder's key, and the bidders may scan \
                     until the decryption time limit ({}); end decryption before it only once \
                     every bid is decrypted or failed, or wait: at the limit the hall ends it \
                     itself",
                    fmt_time(opening.decrypt_deadline_ms.unwrap_or_default())
                )));
            }
        };
        self.publish(staged).await;
        Ok(())
    }

    /// Records, at most every [`BEAT_MS`], that the hall runs: what the next start measures a
    /// stop by.
    async fn beat(&self, now: i64) -> Result<(), HallError> {
        let last = self.inner.beaten_ms.load(Ordering::Relaxed);
        // Also when the clock went back: a record left in the future would hide a stop.
        if now < last || now.saturating_sub(last) >= BEAT_MS {
            self.inner.db.beat(now).await?;
            self.inner.beaten_ms.store(now, Ordering::Relaxed);
        }
        Ok(())
    }

    /// At start, for each decryption window that was open while no server ran: no bidder could
    /// scan then, so the time is given back. The window's time limit moves on by the time since
    /// the hall was last known to run (up to [`BEAT_MS`] more than the stop itself, in the
    /// bidders' favour), even if the limit passed meanwhile, and the log and the hall display
    /// say so. A window whose limit passed while the hall was still recorded running ends as
    /// the tick would have ended it. Where the time is not known (a database no hall has
    /// recorded its runs in), a window whose limit ran out meanwhile ends now, and the bids
    /// still waiting for their key count as not decrypted through the platform's fault (art.
    /// 31: withdrawn, 撤回).
    async fn give_back_time_while_down(&self) -> Result<(), HallError> {
        let now = self.now();
        let last_beat = self.inner.db.last_beat().await?;
        for opening in self.inner.db.openings_in_state("decrypting").await? {
            let Some(deadline) = opening.decrypt_deadline_ms else {
                continue;
            };
            if let Some(beat) = last_beat
                && beat < deadline
            {
                // Not before the window opened, nor before a stop already given back (by a start
                // that died before recording its own run).
                let given_back = self.inner.db.given_back_until(&opening.id).await?;
                let down_from = beat
                    .max(opening.decrypt_started_ms.unwrap_or(beat))
                    .max(given_back.unwrap_or(beat));
                let lost = now - down_from;
                if lost <= 0 {
                    continue;
                }
                let extended = deadline + lost;
                tracing::warn!(opening = %opening.id, lost_ms = lost, "the hall was not running during the decryption window: its time limit moves on by that time");
                let payload = json!({
                    "deadline_ms": extended, "previous_deadline_ms": deadline,
                    "down_from_ms": down_from, "down_to_ms": now, "extended_ms": lost,
                    "reason": format!(
                        "the hall was not running from {} to {}; no bidder could scan then, so \
                         the decryption time limit moves on by that time, to {}",
                        fmt_time(down_from), fmt_time(now), fmt_time(extended)
                    ),
                });
                let events = vec![ev("decryption.extended", "public", payload)];
                if let Some(staged) = self
                    .inner
                    .db
                    .extend_decryption(&opening.id, deadline, extended, events, now)
                    .await?
                {
                    self.publish(staged).await;
                }
                continue;
            }
            if last_beat.is_some() && now >= deadline {
                // The hall ran until the limit passed and stopped before its tick ended the
                // window: the bidders had the whole window, so it ends as the tick would have.
                match self.end_decryption(&opening.id).await {
                    Ok(()) | Err(HallError::WrongState(_)) => {}
                    Err(e) => return Err(e),
                }
                continue;
            }
            if now >= deadline {
                let failure = format!(
                    "not decrypted through the platform's fault: the hall was not running when \
                     the decryption time limit ran out ({}), so the bidder could not scan then; \
                     counts as withdrawn (撤回, art. 31), the bidder may claim its losses",
                    fmt_time(deadline)
                );
                tracing::warn!(opening = %opening.id, "the decryption time limit ran out while the server was not running: the bids still waiting for their key are the platform's fault");
                match self.close_window(&opening.id, &failure, "platform").await {
                    Ok(()) | Err(HallError::WrongState(_)) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }

    /// Records that the opening fails (e.g. fewer than three bids, art. 44).
    pub async fn fail_opening(&self, opening_id: &str, reason: &str) -> Result<(), HallError> {
        let opening = self.opening(opening_id).await?;
        if !matches!(opening.state.as_str(), "scheduled" | "decryption_ended") {
            return Err(HallError::WrongState(format!(
                "an opening that is {} cannot be failed",
                opening.state
            )));
        }
        if reason.trim().is_empty() {
            return Err(HallError::Invalid(
                "give the reason the opening fails".into(),
            ));
        }
        // A failed opening's files are never released, so no bid of it may still be writing
        // plaintext or retrying a decryption the platform failed.
        self.no_bid_decrypting(opening_id, "fail the opening")
            .await?;
        // Failed before decryption started (fewer than three bids, art. 44): the bids it had are
        // published with the reason.
        let failed = |bidders: &[BidderRow], bids: &[BidRow]| {
            let mut failed = json!({"reason": reason.trim()});
            if opening.state == "scheduled" {
                add_published_list(&mut failed, bidders, bids);
            }
            vec![ev("opening.failed", "public", failed)]
        };
        let staged = self
            .inner
            .db
            .transition_opening(
                opening_id,
                &opening.state,
                "failed",
                Some(reason.trim()),
                failed,
                self.now(),
            )
            .await?
            .ok_or_else(|| HallError::WrongState("the opening changed meanwhile; reload".into()))?;
        self.publish(staged).await;
        Ok(())
    }

    /// Releases the decrypted files to the evaluation system.
    pub async fn release(&self, opening_id: &str) -> Result<(), HallError> {
        let opening = self.opening(opening_id).await?;
        if opening.state != "decryption_ended" {
            return Err(HallError::WrongState(
                "end decryption before releasing the files".into(),
            ));
        }
        self.no_bid_decrypting(opening_id, "release the files")
            .await?;
        let staged = self
            .inner
            .db
            .transition_opening(
                opening_id,
                "decryption_ended",
                "released",
                None,
                |_: &[BidderRow], _: &[BidRow]| vec![ev("files.released", "public", json!({}))],
                self.now(),
            )
            .await?
            .ok_or_else(|| HallError::WrongState("the opening changed meanwhile; reload".into()))?;
        self.publish(staged).await;
        Ok(())
    }

    /// Refuses `action` while a bid of the opening is still being decrypted, naming the bidders
    /// whose decryption keeps failing through the platform and how to give them up.
    async fn no_bid_decrypting(&self, opening_id: &str, action: &str) -> Result<(), HallError> {
        let bids = self.inner.db.bids(opening_id).await?;
        let stuck: Vec<&BidRow> = bids
            .iter()
            .filter(|b| b.state == "decrypting" && self.inner.delayed.contains_key(&b.id))
            .collect();
        if !stuck.is_empty() {
            let bidders = self.inner.db.bidders(opening_id).await?;
            let named: Vec<String> = stuck
                .iter()
                .map(|b| {
                    let name = bidders.iter().find(|x| x.id == b.bidder_id);
                    format!("{} (bid {})", name.map_or("?", |x| x.name.as_str()), b.id)
                })
                .collect();
            return Err(HallError::WrongState(format!(
                "cannot {action}: the decryption of the bid(s) of {} keeps failing through the \
                 platform: have the operator mend it (e.g. free disk space), or give each up with \
                 a reason (console: 放弃解密; API: POST /api/openings/{opening_id}/bids/{{bid}}/abandon)",
                named.join(", ")
            )));
        }
        if bids.iter().any(|b| b.state == "decrypting") {
            return Err(HallError::WrongState(format!(
                "cannot {action} while some bids are still decrypting; try again when they are done"
            )));
        }
        Ok(())
    }

    pub async fn issue_evaluator_token(&self, opening_id: &str) -> Result<String, HallError> {
        self.opening(opening_id).await?;
        let token = format!("ev_{}", random_hex::<32>()?);
        let staged = self
            .inner
            .db
            .insert_evaluator_token(
                &token_hash(&token),
                opening_id,
                self.now(),
                vec![ev("evaluator.token_issued", "agent", json!({}))],
            )
            .await?;
        self.publish(staged).await;
        Ok(token)
    }

    /// Bid `bid_id` of opening `opening_id`.
    async fn bid_of(&self, opening_id: &str, bid_id: &str) -> Result<BidRow, HallError> {
        self.inner
            .db
            .bid(bid_id)
            .await?
            .filter(|b| b.opening_id == opening_id)
            .ok_or(HallError::NotFound("bid"))
    }

    /// A decrypted bid's file for the evaluation system: only after release.
    pub async fn released_file(
        &self,
        opening_id: &str,
        bid_id: &str,
    ) -> Result<(PathBuf, String), HallError> {
        let opening = self.opening(opening_id).await?;
        if !matches!(opening.state.as_str(), "released" | "closed") {
            return Err(HallError::NotReleased);
        }
        let bid = self.bid_of(opening_id, bid_id).await?;
        match (bid.state.as_str(), bid.plain_path, bid.plain_sm3) {
            ("decrypted", Some(path), Some(sm3)) => Ok((PathBuf::from(path), sm3)),
            // Its last attempt failed: say so, rather than "retry" to no end.
            ("decrypted", _, _) if self.digest_failed(bid_id) => {
                Err(HallError::WrongState(digest_failure()))
            }
            ("decrypted", _, _) => Err(HallError::WrongState(
                "the file's digest is still being computed; retry in a few seconds".into(),
            )),
            (state, _, _) => Err(HallError::WrongState(format!(
                "this bid was not decrypted ({state})"
            ))),
        }
    }

    /// A decrypted bid's file key (hex), for the evaluation system once the files are released:
    /// with it and the sealed bid anyone can check that the released plaintext is what the
    /// bidder sealed and signed (`kaibiao unseal --file-key`); the key opens nothing else, and
    /// after the release nothing of this bid is secret any more.
    /// One that cannot be recomputed (its file unreadable) is left out and logged, and the
    /// rest of the list is still given.
    pub async fn released_file_key(&self, bid: &BidRow) -> Result<Option<String>, HallError> {
        let opening = self.opening(&bid.opening_id).await?;
        if !matches!(opening.state.as_str(), "released" | "closed") || bid.state != "decrypted" {
            return Ok(None);
        }
        match self.stored_key(bid).await {
            Ok(key) => Ok(Some(hex::encode(key.raw()))),
            Err(error) => {
                tracing::error!(bid = %bid.id, %error, "a released bid's file key could not be recomputed");
                Ok(None)
            }
        }
    }

    /// The bidder's signature proof of a bid, for the evaluation system.
    pub async fn bid_proof(&self, bid: &BidRow) -> Result<serde_json::Value, HallError> {
        let path = PathBuf::from(&bid.path);
        on_rayon(move || -> Result<serde_json::Value, BidError> {
            let sealed = SealedBid::open(&path)?;
            Ok(json!({
                "header_hash": hex::encode(sealed.header_hash()),
                "chunk_digests": sealed.chunk_digests().iter().map(hex::encode).collect::<Vec<_>>(),
                "signature": B64.encode(sealed.signature()),
                "signer": B64.encode(&sealed.header().signer.der),
                "signer_is_certificate": sealed.header().signer.kind == crate::format::SignerKind::Certificate,
                "signed_message": "SM2-SM3(ID 1234567812345678) over \"kaibiao bid signature v1\" ‖ header_hash ‖ u64 chunk count ‖ chunk digests",
            }))
        })
        .await?
        .map_err(HallError::from)
    }

    /// The state of an opening as a role may see it.
    pub async fn snapshot(
        &self,
        opening_id: &str,
        role: Role,
    ) -> Result<serde_json::Value, HallError> {
        let opening = self.opening(opening_id).await?;
        let published = bids_published(&opening, role);
        let bidders = self.inner.db.bidders(opening_id).await?;
        let bids = self.inner.db.bids(opening_id).await?;
        // Before the bidders are published, the number of the last event the viewer may see:
        // the log's own last number would count the registrations and uploads.
        let last_seq = self.last_seq_seen(&opening, role).await?;
        let challenges = self.inner.db.current_challenges(opening_id).await?;
        let mut bid_views = Vec::new();
        for bid in &bids {
            let bidder = bidders.iter().find(|b| b.id == bid.bidder_id);
            let qr = if bid.state == "awaiting_key" && opening.state == "decrypting" {
                challenges.get(&bid.id).map(|c| {
                    json!({"nonce": c.nonce, "url": self.qr_url(&opening, &c.nonce), "expires_ms": c.expires_ms})
                })
            } else {
                None
            };
            let progress = self
                .inner
                .active
                .get(&bid.id)
                .map(|a| json!({"done": a.done.load(Ordering::Relaxed), "total": a.total}));
            let mut view = bid_view(bid, bidder);
            view["qr"] = json!(qr);
            view["progress"] = json!(progress);
            if bid.state == "decrypting"
                && let Some(delay) = self.inner.delayed.get(&bid.id)
            {
                view["delay"] = json!(delay.message);
            }
            if role >= Role::Evaluator {
                view["plain_sm3"] = json!(bid.plain_sm3);
                // Whether the evaluators can have the file: its digest recorded, being
                // computed, or failing (what the agent sees and tells the operator).
                view["digest"] = match (bid.state.as_str(), &bid.plain_sm3) {
                    ("decrypted", Some(_)) => json!({"state": "recorded"}),
                    ("decrypted", None) if self.digest_failed(&bid.id) => {
                        json!({"state": "failed", "message": digest_failure()})
                    }
                    ("decrypted", None) => json!({"state": "computing"}),
                    _ => serde_json::Value::Null,
                };
            }
            bid_views.push(view);
        }
        Ok(json!({
            "opening": {
                "id": opening.id, "tender_id": opening.tender_id, "name": opening.name, "state": opening.state,
                "deadline_ms": opening.deadline_ms, "opening_ms": opening.opening_ms,
                "decrypt_limit_secs": opening.decrypt_limit_secs, "decrypt_started_ms": opening.decrypt_started_ms,
                "decrypt_deadline_ms": opening.decrypt_deadline_ms, "failure": opening.failure,
            },
            "server_ms": self.now(),
            "last_seq": last_seq,
            // Shown on the hall display, so that a recording of the room pins the log.
            "last_hash": self.chain_value(opening_id, last_seq).await?,
            "bidders": if published { self.bidders_seen_by(opening_id, &bidders, &bids, role).await? } else { Vec::new() },
            "bids": if published { bid_views } else { Vec::new() },
            "bidders_published": published,
            "objections": if published { self.objection_views(opening_id, &bidders).await? } else { Vec::new() },
            // The record issued for the bidders to confirm, and who has.
            "record": if published { self.issued_record(opening_id).await? } else { None },
        }))
    }

    /// The bidders as `role` sees them: the agent also sees how many certificates each has
    /// (none: waiting for its phone to bind them) and whether it is logged in (扫码登录).
    async fn bidders_seen_by(
        &self,
        opening_id: &str,
        bidders: &[BidderRow],
        bids: &[BidRow],
        role: Role,
    ) -> Result<Vec<serde_json::Value>, HallError> {
        let mut list = bidder_list(bidders, bids);
        if role == Role::Agent {
            let status = self.inner.db.bidder_status(opening_id, self.now()).await?;
            for (view, bidder) in list.iter_mut().zip(bidders) {
                if let Some((_, keys, logged_in)) = status.iter().find(|(id, ..)| *id == bidder.id)
                {
                    view["keys"] = json!(keys);
                    view["logged_in"] = json!(logged_in);
                }
            }
        }
        Ok(list)
    }

    /// Periodic work: close windows at their deadline, replace expired QR codes, decrypt bids
    /// whose key was accepted but that no task is decrypting.
    pub async fn tick(&self) -> Result<(), HallError> {
        let now = self.now();
        let instant = Instant::now();
        self.inner
            .announced_refusals
            .retain(|_, until| *until > instant);
        self.publish_leftovers(false).await?;
        if let Err(error) = self.beat(now).await {
            // Only a later start's measure of a stop depends on it: the tick goes on.
            tracing::warn!(%error, "cannot record that the hall runs");
        }
        for opening in self.inner.db.openings_in_state("decrypting").await? {
            if opening.decrypt_deadline_ms.is_some_and(|d| now >= d) {
                match self.end_decryption(&opening.id).await {
                    Ok(()) | Err(HallError::WrongState(_)) => {}
                    Err(e) => return Err(e),
                }
                continue;
            }
            let stale = self
                .inner
                .db
                .bids_needing_challenge(&opening.id, now)
                .await?;
            self.issue_challenges(&opening.id, &stale).await?;
        }
        self.reconcile().await?;
        self.reconcile_digests().await
    }

    /// Waits, up to `limit`, until no decryption or plaintext digest of this hall is under way;
    /// false if some still are. For a stopping server, whose tick no longer starts any.
    pub async fn wait_idle(&self, limit: std::time::Duration) -> bool {
        let until = Instant::now() + limit;
        loop {
            let busy = !self.inner.active.is_empty()
                || self.inner.digesting.iter().any(|d| d.value().is_none());
            if !busy {
                return true;
            }
            if Instant::now() >= until {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// Sends coalesced progress of running decryptions (call a few times a second).
    pub fn publish_progress(&self) {
        for entry in self.inner.active.iter() {
            let active = entry.value();
            let done = active.done.load(Ordering::Relaxed);
            if active.reported.swap(done, Ordering::Relaxed) == done {
                continue;
            }
            let secs = active.started.elapsed().as_secs_f64().max(1e-3);
            let message = json!({"type": "progress", "bid_id": entry.key(), "done": done, "total": active.total,
                                 "rate": (done as f64 / secs) as u64});
            self.inner
                .bus
                .frame(&active.opening_id, message.to_string().into());
        }
    }

    /// Sends the viewers of every opening watched now whose log moved on since the last push the
    /// platform's signed head of it (`{"type": "head", "head": …}`), as the public may see it:
    /// every viewer then holds proof of what the log held, to check the log against later
    /// (`kaibiao check-record --head`), without asking for it.
    pub async fn push_heads(&self) {
        for opening_id in self.inner.bus.watched() {
            let head = match self.signed_head(&opening_id, Role::Public).await {
                Ok(head) => head,
                Err(error) => {
                    tracing::warn!(opening = %opening_id, %error, "cannot sign the log's head to push it");
                    continue;
                }
            };
            if self.inner.pushed_heads.insert(opening_id.clone(), head.seq) == Some(head.seq) {
                continue;
            }
            let frame = json!({"type": "head", "head": head});
            self.inner.bus.frame(&opening_id, frame.to_string().into());
        }
    }

    /// After a restart: hash decrypted files whose digest was not recorded, and restart
    /// decryptions whose key had been accepted.
    async fn resume(&self) -> Result<(), HallError> {
        self.publish_leftovers(true).await?;
        self.give_back_time_while_down().await?;
        self.beat(self.now()).await?;
        self.record_platform_key().await?;
        self.reconcile_digests().await?;
        self.reconcile().await
    }
}

/// Whether any of a bidder's registered signing keys signed `message`.
impl Hall {
    /// The bidder with code `uscc` registered for opening `opening_id`.
    async fn bidder_coded(&self, opening_id: &str, uscc: &str) -> Result<BidderRow, HallError> {
        let uscc = uscc.trim();
        self.inner
            .db
            .bidder_by_uscc(opening_id, uscc)
            .await?
            .ok_or_else(|| {
                HallError::Invalid(format!(
                    "no bidder with the code {uscc} is registered for this opening: check the \
                     code, or ask the tender agent"
                ))
            })
    }

    /// Checks `signature` (DER, base64) over `message` against every signing key registered for
    /// bidder `bidder_id`, off the async executor.
    async fn check_bidder_signature(
        &self,
        bidder_id: &str,
        message: Vec<u8>,
        signature: &str,
    ) -> Result<(), HallError> {
        let signature = B64
            .decode(signature.trim())
            .map_err(|_| HallError::Invalid("the signature is not base64".into()))?;
        let mut keys = self.inner.db.bidder_keys(bidder_id, "sign").await?;
        if keys.is_empty() {
            // No key (a code no bidder has): checked against the platform's own key, which
            // signed nothing of this, so that the refusal takes as long as for a wrong key and
            // tells no one whether the code is registered.
            let der = sm2::pkcs8::EncodePublicKey::to_public_key_der(&self.platform_key())
                .map_err(|e| HallError::Internal(format!("encoding the platform key: {e}")))?;
            keys.push(BidderKeyRow {
                bidder_id: String::new(),
                usage: "sign".into(),
                key_id: String::new(),
                der: der.into_vec(),
                is_cert: 0,
            });
        }
        if on_rayon(move || signed_by_any(&keys, &message, &signature)).await? {
            Ok(())
        } else {
            Err(HallError::BadAnswerSignature)
        }
    }
}

fn signed_by_any(keys: &[BidderKeyRow], message: &[u8], signature: &[u8]) -> bool {
    keys.iter().any(|k| {
        crypto::parse_public_der(&k.der, k.is_cert != 0)
            .is_ok_and(|id| crypto::verify(id.key(), message, signature).is_ok())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn times_read_as_beijing_time() {
        assert_eq!(
            fmt_time(1_795_491_611_934),
            "2026-11-24 11:40:11 Beijing time, UTC+8"
        );
    }

    #[tokio::test]
    async fn digests_wait_until_no_body_is_being_decrypted() {
        let decrypting = Arc::new(Decrypting::default());
        // Nothing decrypting: no wait.
        tokio::time::timeout(Duration::from_secs(5), decrypting.idle())
            .await
            .expect("idle at once");
        let first = decrypting.enter();
        let second = decrypting.enter();
        let waiter = tokio::spawn({
            let decrypting = decrypting.clone();
            async move { decrypting.idle().await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "waits while two bodies decrypt");
        drop(first);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "and while one does");
        drop(second);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken when the last ends")
            .unwrap();
    }
}
