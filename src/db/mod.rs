//! The database: SQLite or PostgreSQL through one `sqlx` Any pool, chosen by the URL.
//!
//! Queries are checked at run time (`query_as`), not by `query!` macros, so one code path serves
//! both backends; each backend has its own migrations, run at start.

mod batch;
mod lock;

use std::str::FromStr;

use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::{AnyPool, Row};

pub use batch::BidWrite;
pub use lock::ServerLock;

/// Why the database could not be used.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("the database URL must start with sqlite:// or postgres://, not {0:?}")]
    Scheme(String),
    #[error("cannot open the database: {0}")]
    Connect(#[source] sqlx::Error),
    #[error("cannot bring the database schema up to date: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database error: {0}")]
    Query(#[from] sqlx::Error),
    #[error("database error: {0}")]
    Write(String),
    #[error("{0}")]
    Lock(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Postgres,
}

/// What [`Db::end_decryption`] did.
#[derive(Debug)]
pub enum Ended {
    /// Ended; these bids were still waiting for their key. With the events staged.
    Ended(Vec<String>, Vec<StagedEvent>),
    /// Decryption was not running.
    NotRunning,
    /// Not ended, early: so many bids still wait for their key.
    KeysAwaited(usize),
}

/// What became of a bid given to [`Db::put_bid`].
#[derive(Debug)]
pub enum Filed {
    /// Stored; the file of the bid it replaced, if any; whether it waits for its key already.
    Stored {
        replaced: Option<String>,
        awaiting_key: bool,
        staged: Vec<StagedEvent>,
    },
    /// Not stored: the opening no longer takes bids (its state), or the bidder's earlier bid is
    /// being decrypted.
    Closed { opening_state: String },
}

/// An event to record: kind, audience, payload.
pub type NewEvent = (String, String, serde_json::Value);

/// An event written in the transaction of the state change it reports, and moved into the event
/// log by the log's writer afterwards (`BidWrite::Unstage` in the same transaction as the log's
/// row): a server killed in between publishes it at its next start, so no state change is ever
/// without its event.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StagedEvent {
    pub id: i64,
    pub opening_id: String,
    pub kind: String,
    pub audience: String,
    pub payload: String,
    pub ts_ms: i64,
}

const BIDDERS_OF: &str = "SELECT id, opening_id, uscc, name, signed_in_ms FROM bidders WHERE opening_id = $1 ORDER BY uscc";

fn bids_of() -> String {
    format!("SELECT {BID_COLS} FROM bids WHERE opening_id = $1 ORDER BY received_ms, id")
}

/// An opening's bidders and bids as a transaction sees them.
async fn lists(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    opening_id: &str,
) -> Result<(Vec<BidderRow>, Vec<BidRow>), DbError> {
    let bidders = sqlx::query_as(BIDDERS_OF)
        .bind(opening_id)
        .fetch_all(&mut **tx)
        .await?;
    let bids = sqlx::query_as(&bids_of())
        .bind(opening_id)
        .fetch_all(&mut **tx)
        .await?;
    Ok((bidders, bids))
}

/// Adds bidders' keys; for a key a bidder has already (same use and id) the certificate given
/// replaces the one kept (a certificate renewed for the same key), never by a bare key.
async fn insert_keys(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    keys: &[BidderKeyRow],
) -> Result<(), DbError> {
    for k in keys {
        sqlx::query(
            "INSERT INTO bidder_keys (bidder_id, usage, key_id, der, is_cert) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (bidder_id, usage, key_id) \
             DO UPDATE SET der = excluded.der, is_cert = excluded.is_cert \
             WHERE excluded.is_cert >= bidder_keys.is_cert",
        )
        .bind(&k.bidder_id)
        .bind(&k.usage)
        .bind(&k.key_id)
        .bind(k.der.clone())
        .bind(k.is_cert)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// Stages `events` of an opening in a state change's transaction.
async fn stage(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    opening_id: &str,
    events: Vec<NewEvent>,
    ts_ms: i64,
) -> Result<Vec<StagedEvent>, DbError> {
    let mut staged = Vec::with_capacity(events.len());
    for (kind, audience, payload) in events {
        let payload = payload.to_string();
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO staged_events (opening_id, kind, audience, payload, ts_ms) \
             VALUES ($1, $2, $3, $4, $5) RETURNING id",
        )
        .bind(opening_id)
        .bind(&kind)
        .bind(&audience)
        .bind(&payload)
        .bind(ts_ms)
        .fetch_one(&mut **tx)
        .await?;
        staged.push(StagedEvent {
            id,
            opening_id: opening_id.to_owned(),
            kind,
            audience,
            payload,
            ts_ms,
        });
    }
    Ok(staged)
}

#[derive(Clone)]
pub struct Db {
    pool: AnyPool,
    backend: Backend,
}

/// One transaction of the event log's writer: conditional bid writes and event rows together.
pub struct WriteTx(sqlx::Transaction<'static, sqlx::Any>);

impl WriteTx {
    /// Applies a conditional write; false (and nothing changed) if its condition did not hold.
    pub async fn apply(&mut self, write: &BidWrite) -> Result<bool, DbError> {
        Ok(batch::apply(&mut self.0, write).await?)
    }

    /// How opening `opening_id`'s events are chained (1 if there is no such opening).
    pub async fn chain_version(&mut self, opening_id: &str) -> Result<i64, DbError> {
        let version: Option<i64> =
            sqlx::query_scalar("SELECT chain_version FROM openings WHERE id = $1")
                .bind(opening_id)
                .fetch_optional(&mut *self.0)
                .await?;
        Ok(version.unwrap_or(1))
    }

    /// The newest event of an opening (sequence number and hash), as this transaction sees it.
    pub async fn last_event(&mut self, opening_id: &str) -> Result<Option<(i64, String)>, DbError> {
        let row = sqlx::query(
            "SELECT seq, hash FROM events WHERE opening_id = $1 ORDER BY seq DESC LIMIT 1",
        )
        .bind(opening_id)
        .fetch_optional(&mut *self.0)
        .await?;
        Ok(match row {
            Some(r) => Some((r.try_get("seq")?, r.try_get("hash")?)),
            None => None,
        })
    }

    pub async fn insert_events(&mut self, events: &[EventRow]) -> Result<(), DbError> {
        for e in events {
            sqlx::query("INSERT INTO events (opening_id, seq, ts_ms, kind, audience, payload, hash, salt) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)")
                .bind(&e.opening_id)
                .bind(e.seq)
                .bind(e.ts_ms)
                .bind(&e.kind)
                .bind(&e.audience)
                .bind(&e.payload)
                .bind(&e.hash)
                .bind(&e.salt)
                .execute(&mut *self.0)
                .await?;
        }
        Ok(())
    }

    pub async fn commit(self) -> Result<(), DbError> {
        Ok(self.0.commit().await?)
    }
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OpeningRow {
    pub id: String,
    pub tender_id: String,
    pub name: String,
    pub deadline_ms: i64,
    pub opening_ms: i64,
    pub decrypt_limit_secs: i64,
    pub state: String,
    pub decrypt_started_ms: Option<i64>,
    pub decrypt_deadline_ms: Option<i64>,
    pub hall_public: Option<Vec<u8>>,
    pub hall_secret_sealed: Option<Vec<u8>>,
    pub failure: Option<String>,
    pub created_by: String,
    pub created_ms: i64,
    /// How its events are chained ([`crate::hall::chain_hash`]).
    pub chain_version: i64,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct BidderRow {
    pub id: String,
    pub opening_id: String,
    pub uscc: String,
    pub name: String,
    /// When the bidder signed in to the opening (签到), if it did.
    pub signed_in_ms: Option<i64>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct BidderKeyRow {
    pub bidder_id: String,
    pub usage: String,
    pub key_id: String,
    pub der: Vec<u8>,
    pub is_cert: i64,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct BidRow {
    pub id: String,
    pub opening_id: String,
    pub bidder_id: String,
    pub state: String,
    pub path: String,
    pub size: i64,
    pub sm3: String,
    pub plaintext_len: i64,
    pub received_ms: i64,
    pub summary: Option<String>,
    pub answer: Option<Vec<u8>>,
    pub plain_path: Option<String>,
    pub plain_sm3: Option<String>,
    pub failure: Option<String>,
    pub fault: Option<String>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ObjectionRow {
    pub n: i64,
    pub bidder_id: Option<String>,
    pub text: String,
    pub raised_ms: i64,
    pub answer: Option<String>,
    pub answered_ms: Option<i64>,
}

/// What became of an objection given to [`Db::raise_objection`].
#[derive(Debug)]
pub enum Raised {
    /// Recorded under this number, with its events staged.
    Recorded(i64, Vec<StagedEvent>),
    /// The same objection of the same bidder is recorded already, under this number.
    Already(i64),
    /// The opening is in none of the states given.
    WrongState,
}

/// What became of an answer given to [`Db::answer_objection`].
#[derive(Debug)]
pub enum Answered {
    /// Recorded, with its events staged.
    Recorded(Vec<StagedEvent>),
    /// The opening is in none of the states given.
    WrongState,
    /// The opening has no objection of that number.
    NoSuch,
    /// The objection was answered already.
    Already,
}

/// What became of a close asked of [`Db::close_opening`].
#[derive(Debug)]
pub enum Closing {
    /// Closed, with its events staged.
    Closed(Vec<StagedEvent>),
    /// The opening was not in the state given.
    WrongState,
    /// Not closed: these objections have no answer.
    Unanswered(Vec<i64>),
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct IssuedRecordRow {
    pub version: i64,
    pub digest: String,
    pub record: String,
    pub issued_ms: i64,
}

/// A bidder's scan-login code (扫码登录), as [`Db::bidder_login`] reads it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct BidderLoginRow {
    pub nonce: String,
    pub opening_id: String,
    /// The first 128 bits of the SM3 of the browser's secret, hex (as the code carries it).
    pub secret_sm3: String,
    pub expires_ms: i64,
    pub bidder_id: Option<String>,
    pub signed_ms: Option<i64>,
    pub taken: i64,
}

/// What became of a bidder registered with [`Db::insert_bidder`].
#[derive(Debug)]
pub enum Registered {
    /// Registered, with its events staged.
    Staged(Vec<StagedEvent>),
    /// The opening is no longer scheduled: nothing changed.
    Closed,
    /// A bidder with the same code is registered: nothing changed.
    Duplicate,
}

/// What became of keys added with [`Db::add_bidder_keys`].
#[derive(Debug)]
pub enum Added {
    /// Added, with the events staged.
    Staged(Vec<StagedEvent>),
    /// The opening is no longer scheduled: nothing changed.
    Closed,
    /// The bidder would have more keys than allowed; it has this many: nothing changed.
    TooMany(usize),
}

/// What became of a bind asked for with [`Db::bind_bidder_keys`].
#[derive(Debug)]
pub enum Bound {
    /// Bound, with its events staged.
    Staged(Vec<StagedEvent>),
    /// The bidder has keys already: nothing changed.
    HasKeys,
    /// The opening no longer takes bids: nothing changed.
    Closed,
}

/// What became of a session asked for with [`Db::take_bidder_session`].
#[derive(Debug)]
pub enum SessionTaken {
    /// The session starts for this bidder.
    Started { bidder_id: String },
    /// The phone has not signed the code yet.
    Waiting,
    /// No such code, a wrong secret, expired, or taken already.
    Refused,
}

/// What became of a sign-in given to [`Db::sign_in`].
#[derive(Debug)]
pub enum SignedIn {
    /// Recorded, with its events staged.
    Recorded(Vec<StagedEvent>),
    /// The bidder signed in already, at this time (ms).
    Already(i64),
    /// The opening is in none of the states given.
    WrongState,
}

/// What became of a confirmation given to [`Db::confirm_record`].
#[derive(Debug)]
pub enum Confirmed {
    /// Recorded, with its events staged.
    Recorded(Vec<StagedEvent>),
    /// The bidder confirmed this version already.
    Already,
    /// A later version of the record was issued since (its number).
    Superseded(i64),
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ChallengeRow {
    pub nonce: String,
    pub opening_id: String,
    pub bid_id: String,
    pub expires_ms: i64,
    pub used: i64,
    pub created_ms: i64,
}

#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize, serde::Deserialize)]
pub struct EventRow {
    pub opening_id: String,
    pub seq: i64,
    pub ts_ms: i64,
    pub kind: String,
    pub audience: String,
    pub payload: String,
    pub hash: String,
    /// Chain version 2: random hex hashed with the event's body (empty in version 1).
    #[serde(default)]
    pub salt: String,
}

const OPENING_COLS: &str = "id, tender_id, name, deadline_ms, opening_ms, decrypt_limit_secs, state, decrypt_started_ms, decrypt_deadline_ms, hall_public, hall_secret_sealed, failure, created_by, created_ms, chain_version";
const BID_COLS: &str = "id, opening_id, bidder_id, state, path, size, sm3, plaintext_len, received_ms, summary, answer, plain_path, plain_sm3, failure, fault";

impl Db {
    /// Connects (creating a SQLite file and its folder if missing) and runs the migrations.
    pub async fn connect(url: &str) -> Result<Self, DbError> {
        install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            return Err(DbError::Scheme(url.to_owned()));
        };
        let pool = match backend {
            Backend::Sqlite => {
                let options = sqlx::sqlite::SqliteConnectOptions::from_str(url)
                    .map_err(DbError::Connect)?
                    .create_if_missing(true)
                    .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
                    .synchronous(sqlx::sqlite::SqliteSynchronous::Full)
                    .foreign_keys(true)
                    .busy_timeout(std::time::Duration::from_secs(10));
                if let Some(dir) = options.get_filename().parent() {
                    std::fs::create_dir_all(dir).map_err(|e| DbError::Connect(e.into()))?;
                }
                // Make sure the file exists with our options, then use it through the Any driver.
                let native = sqlx::SqlitePool::connect_with(options)
                    .await
                    .map_err(DbError::Connect)?;
                sqlx::migrate!("src/db/migrations/sqlite")
                    .run(&native)
                    .await?;
                native.close().await;
                // The file now exists in WAL mode (which persists in the file); the Any driver
                // opens it from the URL with sqlx's defaults: foreign keys on, synchronous FULL.
                AnyPoolOptions::new()
                    .max_connections(8)
                    .connect(url)
                    .await
                    .map_err(DbError::Connect)?
            }
            Backend::Postgres => {
                let native = sqlx::PgPool::connect(url).await.map_err(DbError::Connect)?;
                sqlx::migrate!("src/db/migrations/postgres")
                    .run(&native)
                    .await?;
                native.close().await;
                AnyPoolOptions::new()
                    .max_connections(16)
                    .connect(url)
                    .await
                    .map_err(DbError::Connect)?
            }
        };
        Ok(Self { pool, backend })
    }

    pub async fn ping(&self) -> Result<(), DbError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    // --- agents -------------------------------------------------------------------------------

    pub async fn count_agents(&self) -> Result<i64, DbError> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM agents")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get::<i64, _>("n")?)
    }

    pub async fn insert_agent(
        &self,
        id: &str,
        username: &str,
        hash: &str,
        now: i64,
    ) -> Result<(), DbError> {
        sqlx::query(
            "INSERT INTO agents (id, username, password_hash, created_ms) VALUES ($1, $2, $3, $4)",
        )
        .bind(id)
        .bind(username)
        .bind(hash)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// `(id, password_hash)` of an agent.
    pub async fn agent_by_username(
        &self,
        username: &str,
    ) -> Result<Option<(String, String)>, DbError> {
        let row = sqlx::query("SELECT id, password_hash FROM agents WHERE username = $1")
            .bind(username)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(r) => Some((r.try_get("id")?, r.try_get("password_hash")?)),
            None => None,
        })
    }

    pub async fn insert_agent_token(
        &self,
        hash: &str,
        agent_id: &str,
        kind: &str,
        expires: i64,
        now: i64,
    ) -> Result<(), DbError> {
        sqlx::query("INSERT INTO agent_tokens (token_hash, agent_id, kind, expires_ms, created_ms) VALUES ($1, $2, $3, $4, $5)")
            .bind(hash)
            .bind(agent_id)
            .bind(kind)
            .bind(expires)
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn agent_for_token(&self, hash: &str, now: i64) -> Result<Option<String>, DbError> {
        let row = sqlx::query(
            "SELECT agent_id FROM agent_tokens WHERE token_hash = $1 AND expires_ms > $2",
        )
        .bind(hash)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match row {
            Some(r) => Some(r.try_get("agent_id")?),
            None => None,
        })
    }

    pub async fn delete_agent_token(&self, hash: &str) -> Result<(), DbError> {
        sqlx::query("DELETE FROM agent_tokens WHERE token_hash = $1")
            .bind(hash)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    // --- openings -----------------------------------------------------------------------------

    pub async fn insert_opening(
        &self,
        o: &OpeningRow,
        events: Vec<NewEvent>,
    ) -> Result<Vec<StagedEvent>, DbError> {
        let mut tx = self.begin_write().await?.0;
        sqlx::query(&format!("INSERT INTO openings ({OPENING_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)"))
            .bind(&o.id)
            .bind(&o.tender_id)
            .bind(&o.name)
            .bind(o.deadline_ms)
            .bind(o.opening_ms)
            .bind(o.decrypt_limit_secs)
            .bind(&o.state)
            .bind(o.decrypt_started_ms)
            .bind(o.decrypt_deadline_ms)
            .bind(o.hall_public.clone())
            .bind(o.hall_secret_sealed.clone())
            .bind(o.failure.clone())
            .bind(&o.created_by)
            .bind(o.created_ms)
            .bind(o.chain_version)
            .execute(&mut *tx)
            .await?;
        let staged = stage(&mut tx, &o.id, events, o.created_ms).await?;
        tx.commit().await?;
        Ok(staged)
    }

    pub async fn opening(&self, id: &str) -> Result<Option<OpeningRow>, DbError> {
        Ok(sqlx::query_as(&format!(
            "SELECT {OPENING_COLS} FROM openings WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?)
    }

    pub async fn openings(&self) -> Result<Vec<OpeningRow>, DbError> {
        Ok(sqlx::query_as(&format!(
            "SELECT {OPENING_COLS} FROM openings ORDER BY opening_ms DESC"
        ))
        .fetch_all(&self.pool)
        .await?)
    }

    /// How many openings still need their sealed hall key: those whose bids may yet be decrypted
    /// (decryption running, or any bid still decrypting, whatever the opening's state).
    pub async fn openings_holding_sealed_keys(&self) -> Result<i64, DbError> {
        Ok(sqlx::query_scalar(
            "SELECT COUNT(*) FROM openings o WHERE o.hall_secret_sealed IS NOT NULL \
             AND (o.state = 'decrypting' OR EXISTS \
             (SELECT 1 FROM bids b WHERE b.opening_id = o.id AND b.state = 'decrypting'))",
        )
        .fetch_one(&self.pool)
        .await?)
    }

    pub async fn openings_in_state(&self, state: &str) -> Result<Vec<OpeningRow>, DbError> {
        Ok(sqlx::query_as(&format!(
            "SELECT {OPENING_COLS} FROM openings WHERE state = $1"
        ))
        .bind(state)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Moves an opening from one state to another; false if it was no longer in `from`.
    /// With its events staged, or None.
    pub async fn transition_opening(
        &self,
        id: &str,
        from: &str,
        to: &str,
        failure: Option<&str>,
        events: impl FnOnce(&[BidderRow], &[BidRow]) -> Vec<NewEvent>,
        now: i64,
    ) -> Result<Option<Vec<StagedEvent>>, DbError> {
        let mut tx = self.begin_write().await?.0;
        let done = sqlx::query("UPDATE openings SET state = $1, failure = COALESCE($2, failure) WHERE id = $3 AND state = $4")
            .bind(to)
            .bind(failure)
            .bind(id)
            .bind(from)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() != 1 {
            return Ok(None);
        }
        let (bidders, bids) = lists(&mut tx, id).await?;
        let staged = stage(&mut tx, id, events(&bidders, &bids), now).await?;
        tx.commit().await?;
        Ok(Some(staged))
    }

    /// Locks opening `id`'s row for the transaction if it is in one of `states`: a state change
    /// made meanwhile waits for the transaction (and one that committed first makes this false).
    async fn lock_opening_in(
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        id: &str,
        states: &[&str],
    ) -> Result<bool, DbError> {
        let placeholders: Vec<String> = (0..states.len()).map(|i| format!("${}", i + 2)).collect();
        let sql = format!(
            "UPDATE openings SET state = state WHERE id = $1 AND state IN ({})",
            placeholders.join(", ")
        );
        let mut query = sqlx::query(&sql).bind(id);
        for state in states {
            query = query.bind(*state);
        }
        Ok(query.execute(&mut **tx).await?.rows_affected() == 1)
    }

    /// Records objection `text` (of bidder `bidder_id`, if named) to opening `opening_id` while
    /// it is in one of `states`, numbered after the opening's last, unless the same objection of
    /// the same bidder (or of none) is recorded already; with the events `events` makes of its
    /// number.
    pub async fn raise_objection(
        &self,
        opening_id: &str,
        states: &[&str],
        bidder_id: Option<&str>,
        text: &str,
        events: impl FnOnce(i64) -> Vec<NewEvent>,
        now: i64,
    ) -> Result<Raised, DbError> {
        let mut tx = self.begin_write().await?.0;
        if !Self::lock_opening_in(&mut tx, opening_id, states).await? {
            return Ok(Raised::WrongState);
        }
        let same: Option<i64> = sqlx::query_scalar(
            "SELECT n FROM objections WHERE opening_id = $1 AND text = $2 \
             AND COALESCE(bidder_id, '') = COALESCE($3, '') ORDER BY n LIMIT 1",
        )
        .bind(opening_id)
        .bind(text)
        .bind(bidder_id)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(n) = same {
            return Ok(Raised::Already(n));
        }
        let n: i64 = sqlx::query_scalar(
            "SELECT COALESCE(MAX(n), 0) + 1 FROM objections WHERE opening_id = $1",
        )
        .bind(opening_id)
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO objections (opening_id, n, bidder_id, text, raised_ms) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(opening_id)
        .bind(n)
        .bind(bidder_id)
        .bind(text)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let staged = stage(&mut tx, opening_id, events(n), now).await?;
        tx.commit().await?;
        Ok(Raised::Recorded(n, staged))
    }

    /// Records the answer to objection `n` of opening `opening_id` while the opening is in one
    /// of `states`, if it has none yet; with its events.
    pub async fn answer_objection(
        &self,
        opening_id: &str,
        states: &[&str],
        n: i64,
        answer: &str,
        events: Vec<NewEvent>,
        now: i64,
    ) -> Result<Answered, DbError> {
        let mut tx = self.begin_write().await?.0;
        if !Self::lock_opening_in(&mut tx, opening_id, states).await? {
            return Ok(Answered::WrongState);
        }
        let done = sqlx::query(
            "UPDATE objections SET answer = $1, answered_ms = $2 \
             WHERE opening_id = $3 AND n = $4 AND answer IS NULL",
        )
        .bind(answer)
        .bind(now)
        .bind(opening_id)
        .bind(n)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            let exists: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM objections WHERE opening_id = $1 AND n = $2",
            )
            .bind(opening_id)
            .bind(n)
            .fetch_one(&mut *tx)
            .await?;
            return Ok(if exists == 0 {
                Answered::NoSuch
            } else {
                Answered::Already
            });
        }
        let staged = stage(&mut tx, opening_id, events, now).await?;
        tx.commit().await?;
        Ok(Answered::Recorded(staged))
    }

    /// The objections to an opening, by number.
    pub async fn objections(&self, opening_id: &str) -> Result<Vec<ObjectionRow>, DbError> {
        Ok(sqlx::query_as(
            "SELECT n, bidder_id, text, raised_ms, answer, answered_ms FROM objections \
             WHERE opening_id = $1 ORDER BY n",
        )
        .bind(opening_id)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Moves opening `id` from `from` to `closed` with `events`, unless an objection to it has
    /// no answer: an objection raised meanwhile either commits first (and is counted) or waits
    /// for the close and then finds the opening closed.
    pub async fn close_opening(
        &self,
        id: &str,
        from: &str,
        events: Vec<NewEvent>,
        now: i64,
    ) -> Result<Closing, DbError> {
        let mut tx = self.begin_write().await?.0;
        let done = sqlx::query("UPDATE openings SET state = 'closed' WHERE id = $1 AND state = $2")
            .bind(id)
            .bind(from)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() != 1 {
            return Ok(Closing::WrongState);
        }
        let open: Vec<i64> = sqlx::query_scalar(
            "SELECT n FROM objections WHERE opening_id = $1 AND answer IS NULL ORDER BY n",
        )
        .bind(id)
        .fetch_all(&mut *tx)
        .await?;
        if !open.is_empty() {
            tx.rollback().await?;
            return Ok(Closing::Unanswered(open));
        }
        let staged = stage(&mut tx, id, events, now).await?;
        tx.commit().await?;
        Ok(Closing::Closed(staged))
    }

    /// Records that bidder `bidder_id` signed in to opening `opening_id` with `signature`, while
    /// the opening is in one of `states`, if it has not signed in yet; with its events.
    pub async fn sign_in(
        &self,
        opening_id: &str,
        states: &[&str],
        bidder_id: &str,
        signature: &str,
        events: Vec<NewEvent>,
        now: i64,
    ) -> Result<SignedIn, DbError> {
        let mut tx = self.begin_write().await?.0;
        if !Self::lock_opening_in(&mut tx, opening_id, states).await? {
            return Ok(SignedIn::WrongState);
        }
        let done = sqlx::query(
            "UPDATE bidders SET signed_in_ms = $1, sign_in_signature = $2 \
             WHERE id = $3 AND opening_id = $4 AND signed_in_ms IS NULL",
        )
        .bind(now)
        .bind(signature)
        .bind(bidder_id)
        .bind(opening_id)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            let at: Option<i64> =
                sqlx::query_scalar("SELECT signed_in_ms FROM bidders WHERE id = $1")
                    .bind(bidder_id)
                    .fetch_one(&mut *tx)
                    .await?;
            return Ok(SignedIn::Already(at.unwrap_or_default()));
        }
        let staged = stage(&mut tx, opening_id, events, now).await?;
        tx.commit().await?;
        Ok(SignedIn::Recorded(staged))
    }

    // --- bidders' scan logins ---------------------------------------------------------------

    /// Stores a new login code of opening `opening_id` unless `most` codes of it are waiting
    /// already (whether it did), and forgets codes that expired.
    /// Records login code `login.nonce` as signed by `login.bidder_id`'s phone, if it was not
    /// before (the code is its key); whether it was recorded. Rows of codes expired before `now`
    /// are dropped: an expired code is refused before its row is looked at.
    pub async fn insert_signed_login(
        &self,
        login: &BidderLoginRow,
        now: i64,
    ) -> Result<bool, DbError> {
        let mut tx = self.begin_write().await?.0;
        sqlx::query("DELETE FROM bidder_logins WHERE expires_ms < $1")
            .bind(now)
            .execute(&mut *tx)
            .await?;
        let done = sqlx::query(
            "INSERT INTO bidder_logins (nonce, opening_id, secret_sm3, expires_ms, bidder_id, signed_ms) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (nonce) DO NOTHING",
        )
        .bind(&login.nonce)
        .bind(&login.opening_id)
        .bind(&login.secret_sm3)
        .bind(login.expires_ms)
        .bind(&login.bidder_id)
        .bind(login.signed_ms)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn bidder_login(&self, nonce: &str) -> Result<Option<BidderLoginRow>, DbError> {
        Ok(sqlx::query_as(
            "SELECT nonce, opening_id, secret_sm3, expires_ms, bidder_id, signed_ms, taken \
             FROM bidder_logins WHERE nonce = $1",
        )
        .bind(nonce)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Starts the session of signed login code `nonce` for the holder of its secret, once: the
    /// session's token is kept by its SM3, `token_sm3`, until `session_expires_ms`.
    pub async fn take_bidder_session(
        &self,
        nonce: &str,
        secret_sm3: &str,
        token_sm3: &str,
        session_expires_ms: i64,
        now: i64,
    ) -> Result<SessionTaken, DbError> {
        let mut tx = self.begin_write().await?.0;
        let Some(login): Option<BidderLoginRow> = sqlx::query_as(
            "SELECT nonce, opening_id, secret_sm3, expires_ms, bidder_id, signed_ms, taken \
             FROM bidder_logins WHERE nonce = $1",
        )
        .bind(nonce)
        .fetch_optional(&mut *tx)
        .await?
        else {
            return Ok(SessionTaken::Refused);
        };
        if login.secret_sm3 != secret_sm3 || login.taken != 0 {
            return Ok(SessionTaken::Refused);
        }
        let Some(bidder_id) = login.bidder_id else {
            return Ok(if login.expires_ms > now {
                SessionTaken::Waiting
            } else {
                SessionTaken::Refused
            });
        };
        // Taken once, even by two asking at the same moment.
        let taking =
            sqlx::query("UPDATE bidder_logins SET taken = 1 WHERE nonce = $1 AND taken = 0")
                .bind(nonce)
                .execute(&mut *tx)
                .await?;
        if taking.rows_affected() != 1 {
            return Ok(SessionTaken::Refused);
        }
        sqlx::query("DELETE FROM bidder_sessions WHERE expires_ms < $1")
            .bind(now)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO bidder_sessions (token_sm3, opening_id, bidder_id, created_ms, expires_ms) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(token_sm3)
        .bind(&login.opening_id)
        .bind(&bidder_id)
        .bind(now)
        .bind(session_expires_ms)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(SessionTaken::Started { bidder_id })
    }

    /// Forgets a bidder's session.
    pub async fn end_bidder_session(&self, token_sm3: &str) -> Result<(), DbError> {
        sqlx::query("DELETE FROM bidder_sessions WHERE token_sm3 = $1")
            .bind(token_sm3)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// For the agent, per bidder of opening `opening_id`: how many keys it has, and whether a
    /// session of its (scan login) is live at `now`.
    pub async fn bidder_status(
        &self,
        opening_id: &str,
        now: i64,
    ) -> Result<Vec<(String, i64, bool)>, DbError> {
        let rows = sqlx::query(
            "SELECT b.id AS id, \
             (SELECT COUNT(*) FROM bidder_keys k WHERE k.bidder_id = b.id) AS keys, \
             (SELECT COUNT(*) FROM bidder_sessions s WHERE s.bidder_id = b.id AND s.expires_ms > $2) AS sessions \
             FROM bidders b WHERE b.opening_id = $1",
        )
        .bind(opening_id)
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let sessions: i64 = r.try_get("sessions")?;
                Ok((r.try_get("id")?, r.try_get("keys")?, sessions > 0))
            })
            .collect()
    }

    /// The opening and bidder of a session that has not expired.
    pub async fn bidder_session(
        &self,
        token_sm3: &str,
        now: i64,
    ) -> Result<Option<(String, String)>, DbError> {
        let row = sqlx::query(
            "SELECT opening_id, bidder_id FROM bidder_sessions \
             WHERE token_sm3 = $1 AND expires_ms > $2",
        )
        .bind(token_sm3)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match row {
            Some(r) => Some((r.try_get("opening_id")?, r.try_get("bidder_id")?)),
            None => None,
        })
    }

    /// Stores `record` (its SM3 `digest`) as the opening's next issued version, with the events
    /// `events` makes of its number.
    pub async fn issue_record(
        &self,
        opening_id: &str,
        digest: &str,
        record: &str,
        events: impl FnOnce(i64) -> Vec<NewEvent>,
        now: i64,
    ) -> Result<Option<(i64, Vec<StagedEvent>)>, DbError> {
        let mut tx = self.begin_write().await?.0;
        // Not once the opening is closed: its record was archived with the close.
        let open = ["decryption_ended", "released", "failed"];
        if !Self::lock_opening_in(&mut tx, opening_id, &open).await? {
            return Ok(None);
        }
        let version: i64 = sqlx::query_scalar(
            "SELECT COALESCE(MAX(version), 0) + 1 FROM issued_records WHERE opening_id = $1",
        )
        .bind(opening_id)
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO issued_records (opening_id, version, digest, record, issued_ms) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(opening_id)
        .bind(version)
        .bind(digest)
        .bind(record)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let staged = stage(&mut tx, opening_id, events(version), now).await?;
        tx.commit().await?;
        Ok(Some((version, staged)))
    }

    /// The latest issued version of an opening's record, if any.
    pub async fn latest_record(
        &self,
        opening_id: &str,
    ) -> Result<Option<IssuedRecordRow>, DbError> {
        Ok(sqlx::query_as(
            "SELECT version, digest, record, issued_ms FROM issued_records \
             WHERE opening_id = $1 ORDER BY version DESC LIMIT 1",
        )
        .bind(opening_id)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Records bidder `bidder_id`'s `signature` confirming version `version` of the record,
    /// if that is still the latest and the bidder has not confirmed it yet; with its events.
    pub async fn confirm_record(
        &self,
        opening_id: &str,
        version: i64,
        bidder_id: &str,
        signature: &str,
        events: Vec<NewEvent>,
        now: i64,
    ) -> Result<Confirmed, DbError> {
        let mut tx = self.begin_write().await?.0;
        let latest: i64 = sqlx::query_scalar(
            "SELECT COALESCE(MAX(version), 0) FROM issued_records WHERE opening_id = $1",
        )
        .bind(opening_id)
        .fetch_one(&mut *tx)
        .await?;
        if latest != version {
            return Ok(Confirmed::Superseded(latest));
        }
        let done = sqlx::query(
            "INSERT INTO record_confirmations (opening_id, version, bidder_id, signature, confirmed_ms) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        )
        .bind(opening_id)
        .bind(version)
        .bind(bidder_id)
        .bind(signature)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            return Ok(Confirmed::Already);
        }
        let staged = stage(&mut tx, opening_id, events, now).await?;
        tx.commit().await?;
        Ok(Confirmed::Recorded(staged))
    }

    /// The bidders (id, when, signature) who confirmed version `version` of the record.
    pub async fn record_confirmations(
        &self,
        opening_id: &str,
        version: i64,
    ) -> Result<Vec<(String, i64, String)>, DbError> {
        let rows = sqlx::query(
            "SELECT bidder_id, confirmed_ms, signature FROM record_confirmations \
             WHERE opening_id = $1 AND version = $2 ORDER BY confirmed_ms, bidder_id",
        )
        .bind(opening_id)
        .bind(version)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("bidder_id")?,
                    r.try_get("confirmed_ms")?,
                    r.try_get("signature")?,
                ))
            })
            .collect()
    }

    /// Moves a running decryption window's time limit from `from` to `to`, with its events, and
    /// records that the time up to `now` was given back; `None` if the opening is no longer
    /// decrypting or its limit has moved since it was read.
    pub async fn extend_decryption(
        &self,
        id: &str,
        from: i64,
        to: i64,
        events: Vec<NewEvent>,
        now: i64,
    ) -> Result<Option<Vec<StagedEvent>>, DbError> {
        let mut tx = self.begin_write().await?.0;
        let done = sqlx::query("UPDATE openings SET decrypt_deadline_ms = $1, given_back_until_ms = $2 WHERE id = $3 AND state = 'decrypting' AND decrypt_deadline_ms = $4")
            .bind(to)
            .bind(now)
            .bind(id)
            .bind(from)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() != 1 {
            return Ok(None);
        }
        let staged = stage(&mut tx, id, events, now).await?;
        tx.commit().await?;
        Ok(Some(staged))
    }

    /// Records that the hall is running at `now` (see [`Db::last_beat`]).
    pub async fn beat(&self, now: i64) -> Result<(), DbError> {
        sqlx::query("INSERT INTO hall_clock (id, beat_ms) VALUES (1, $1) ON CONFLICT (id) DO UPDATE SET beat_ms = excluded.beat_ms")
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Up to when a stop was given back to an opening's decryption window, if ever.
    pub async fn given_back_until(&self, id: &str) -> Result<Option<i64>, DbError> {
        Ok(
            sqlx::query_scalar("SELECT given_back_until_ms FROM openings WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?
                .flatten(),
        )
    }

    /// Records a platform signing key (once; later calls with the same id change nothing).
    /// Returns whether it was new.
    pub async fn record_platform_key(
        &self,
        key_id: &str,
        public_key_pem: &str,
        now: i64,
    ) -> Result<bool, DbError> {
        let done = sqlx::query("INSERT INTO platform_keys (key_id, public_key_pem, first_used_ms) VALUES ($1, $2, $3) ON CONFLICT (key_id) DO NOTHING")
            .bind(key_id)
            .bind(public_key_pem)
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Every platform key recorded, oldest first: `(key id, PEM, first used)`.
    pub async fn platform_keys(&self) -> Result<Vec<(String, String, i64)>, DbError> {
        let rows = sqlx::query("SELECT key_id, public_key_pem, first_used_ms FROM platform_keys ORDER BY first_used_ms, key_id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
            .collect()
    }

    /// When a hall on this database was last known to be running, if one ever recorded it.
    pub async fn last_beat(&self) -> Result<Option<i64>, DbError> {
        Ok(
            sqlx::query_scalar("SELECT beat_ms FROM hall_clock WHERE id = 1")
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// Closes the decryption window in one transaction: the opening becomes `decryption_ended`
    /// and bids still waiting for a key become `not_decrypted` through the bidder. Returns those
    /// bids, or `None` if decryption was not running.
    /// Ends decryption: bids still waiting for their key are not decrypted (`failure`, through
    /// `fault`). Before the time limit (`early`) only if no bid waits for its key.
    pub async fn end_decryption(
        &self,
        id: &str,
        failure: &str,
        fault: &str,
        early: bool,
        now: i64,
        events: impl FnOnce(&[String]) -> Vec<NewEvent>,
    ) -> Result<Ended, DbError> {
        let mut tx = self.begin_write().await?.0;
        let done = sqlx::query(
            "UPDATE openings SET state = 'decryption_ended' WHERE id = $1 AND state = 'decrypting'",
        )
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            return Ok(Ended::NotRunning);
        }
        let rows = sqlx::query("SELECT id FROM bids WHERE opening_id = $1 AND state = 'awaiting_key' ORDER BY received_ms, id")
            .bind(id)
            .fetch_all(&mut *tx)
            .await?;
        let ids = rows
            .iter()
            .map(|r| r.try_get("id"))
            .collect::<Result<Vec<String>, _>>()?;
        if early && !ids.is_empty() {
            // Dropped without a commit: nothing changes.
            return Ok(Ended::KeysAwaited(ids.len()));
        }
        sqlx::query("UPDATE bids SET state = 'not_decrypted', failure = $1, fault = $2 WHERE opening_id = $3 AND state = 'awaiting_key'")
            .bind(failure)
            .bind(fault)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let staged = stage(&mut tx, id, events(&ids), now).await?;
        tx.commit().await?;
        Ok(Ended::Ended(ids, staged))
    }

    /// Starts decryption and puts every received bid in wait of its key, in one transaction (a
    /// server killed between the two would otherwise leave bids that never get a QR code).
    pub async fn start_decryption(
        &self,
        id: &str,
        started: i64,
        deadline: i64,
        hall_public: &[u8],
        hall_secret_sealed: &[u8],
        events: impl FnOnce(&[BidderRow], &[BidRow]) -> Vec<NewEvent>,
    ) -> Result<Option<Vec<StagedEvent>>, DbError> {
        let mut tx = self.begin_write().await?.0;
        let done = sqlx::query("UPDATE openings SET state = 'decrypting', decrypt_started_ms = $1, decrypt_deadline_ms = $2, hall_public = $3, hall_secret_sealed = $4 WHERE id = $5 AND state = 'scheduled'")
            .bind(started)
            .bind(deadline)
            .bind(hall_public.to_vec())
            .bind(hall_secret_sealed.to_vec())
            .bind(id)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() != 1 {
            return Ok(None);
        }
        sqlx::query(
            "UPDATE bids SET state = 'awaiting_key' WHERE opening_id = $1 AND state = 'received'",
        )
        .bind(id)
        .execute(&mut *tx)
        .await?;
        let (bidders, bids) = lists(&mut tx, id).await?;
        let staged = stage(&mut tx, id, events(&bidders, &bids), started).await?;
        tx.commit().await?;
        Ok(Some(staged))
    }

    // --- bidders ------------------------------------------------------------------------------

    pub async fn insert_bidder(
        &self,
        b: &BidderRow,
        keys: &[BidderKeyRow],
        events: Vec<NewEvent>,
        now: i64,
    ) -> Result<Registered, DbError> {
        let mut tx = self.begin_write().await?.0;
        // Locked, so that decryption does not start while a bidder is registered, and two
        // registrations of one code take turns.
        if !Self::lock_opening_in(&mut tx, &b.opening_id, &["scheduled"]).await? {
            return Ok(Registered::Closed);
        }
        let taken: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM bidders WHERE opening_id = $1 AND uscc = $2")
                .bind(&b.opening_id)
                .bind(&b.uscc)
                .fetch_one(&mut *tx)
                .await?;
        if taken > 0 {
            return Ok(Registered::Duplicate);
        }
        sqlx::query("INSERT INTO bidders (id, opening_id, uscc, name) VALUES ($1, $2, $3, $4)")
            .bind(&b.id)
            .bind(&b.opening_id)
            .bind(&b.uscc)
            .bind(&b.name)
            .execute(&mut *tx)
            .await?;
        insert_keys(&mut tx, keys).await?;
        let staged = stage(&mut tx, &b.opening_id, events, now).await?;
        tx.commit().await?;
        Ok(Registered::Staged(staged))
    }

    /// Adds `keys` to a registered bidder, or renews the certificates of keys it has, with
    /// `events`, while its opening is scheduled (locked first, so decryption does not start
    /// meanwhile); None, and nothing changed, once it is not.
    #[allow(clippy::too_many_arguments)]
    pub async fn add_bidder_keys(
        &self,
        opening_id: &str,
        bidder_id: &str,
        keys: &[BidderKeyRow],
        most: usize,
        events: Vec<NewEvent>,
        now: i64,
    ) -> Result<Added, DbError> {
        let mut tx = self.begin_write().await?.0;
        if !Self::lock_opening_in(&mut tx, opening_id, &["scheduled"]).await? {
            return Ok(Added::Closed);
        }
        let held: Vec<(String, String)> =
            sqlx::query_as("SELECT usage, key_id FROM bidder_keys WHERE bidder_id = $1")
                .bind(bidder_id)
                .fetch_all(&mut *tx)
                .await?;
        let new = keys
            .iter()
            .filter(|k| !held.iter().any(|(u, id)| *u == k.usage && *id == k.key_id))
            .count();
        if held.len() + new > most {
            return Ok(Added::TooMany(held.len()));
        }
        insert_keys(&mut tx, keys).await?;
        let staged = stage(&mut tx, opening_id, events, now).await?;
        tx.commit().await?;
        Ok(Added::Staged(staged))
    }

    /// Gives the bidder `bidder_id`, which has no keys, the keys of a phone's bind, with
    /// `events`, while its opening takes bids (scheduled, before the deadline at `now`). The
    /// opening's row is locked first, so that two binds at once, or a bind and the start of
    /// decryption, take turns.
    pub async fn bind_bidder_keys(
        &self,
        opening_id: &str,
        bidder_id: &str,
        keys: &[BidderKeyRow],
        events: Vec<NewEvent>,
        now: i64,
    ) -> Result<Bound, DbError> {
        let mut tx = self.begin_write().await?.0;
        let open = sqlx::query(
            "UPDATE openings SET state = state WHERE id = $1 AND state = 'scheduled' \
             AND deadline_ms > $2",
        )
        .bind(opening_id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if open.rows_affected() != 1 {
            return Ok(Bound::Closed);
        }
        let held: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM bidder_keys WHERE bidder_id = $1")
            .bind(bidder_id)
            .fetch_one(&mut *tx)
            .await?;
        if held > 0 {
            return Ok(Bound::HasKeys);
        }
        insert_keys(&mut tx, keys).await?;
        let staged = stage(&mut tx, opening_id, events, now).await?;
        tx.commit().await?;
        Ok(Bound::Staged(staged))
    }

    pub async fn bidders(&self, opening_id: &str) -> Result<Vec<BidderRow>, DbError> {
        Ok(sqlx::query_as(BIDDERS_OF)
            .bind(opening_id)
            .fetch_all(&self.pool)
            .await?)
    }

    pub async fn bidder_by_uscc(
        &self,
        opening_id: &str,
        uscc: &str,
    ) -> Result<Option<BidderRow>, DbError> {
        Ok(sqlx::query_as(
            "SELECT id, opening_id, uscc, name, signed_in_ms FROM bidders WHERE opening_id = $1 AND uscc = $2",
        )
        .bind(opening_id)
        .bind(uscc)
        .fetch_optional(&self.pool)
        .await?)
    }

    pub async fn bidder(&self, id: &str) -> Result<Option<BidderRow>, DbError> {
        Ok(sqlx::query_as(
            "SELECT id, opening_id, uscc, name, signed_in_ms FROM bidders WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?)
    }

    pub async fn bidder_keys(
        &self,
        bidder_id: &str,
        usage: &str,
    ) -> Result<Vec<BidderKeyRow>, DbError> {
        Ok(sqlx::query_as("SELECT bidder_id, usage, key_id, der, is_cert FROM bidder_keys WHERE bidder_id = $1 AND usage = $2")
            .bind(bidder_id)
            .bind(usage)
            .fetch_all(&self.pool)
            .await?)
    }

    // --- bids ---------------------------------------------------------------------------------

    /// Stores a bid, replacing the bidder's earlier one, as the opening's state is when it is
    /// written: an upload received before the deadline whose checks end after decryption started
    /// waits for its key at once; one that ends after the opening moved on is not stored.
    /// `events` are staged with it, told whether it waits for its key and replaced another.
    pub async fn put_bid(
        &self,
        b: &BidRow,
        events: impl FnOnce(bool, bool) -> Vec<NewEvent>,
        now: i64,
    ) -> Result<Filed, DbError> {
        let mut tx = self.begin_write().await?.0;
        // On PostgreSQL the opening's row is locked until the bid is in, so starting decryption
        // (which updates that row) waits for it, or this sees it started; `NO KEY UPDATE` leaves
        // the key-share locks of inserts that refer to the opening (events, challenges) free,
        // so the event writer never waits here. The earlier bid's row is locked too, so a key
        // accepted for it meanwhile is seen. SQLite's write lock, taken by `begin_write`,
        // orders all of these alike.
        let (lock, lock_row) = match self.backend {
            Backend::Postgres => (" FOR NO KEY UPDATE", " FOR UPDATE"),
            Backend::Sqlite => ("", ""),
        };
        let opening_state: Option<String> =
            sqlx::query_scalar(&format!("SELECT state FROM openings WHERE id = $1{lock}"))
                .bind(&b.opening_id)
                .fetch_optional(&mut *tx)
                .await?;
        let opening_state = opening_state.unwrap_or_default();
        let state = match opening_state.as_str() {
            "scheduled" => "received",
            "decrypting" => "awaiting_key",
            _ => return Ok(Filed::Closed { opening_state }),
        };
        let old = sqlx::query(&format!(
            "SELECT id, path, state FROM bids WHERE opening_id = $1 AND bidder_id = $2{lock_row}"
        ))
        .bind(&b.opening_id)
        .bind(&b.bidder_id)
        .fetch_optional(&mut *tx)
        .await?;
        let mut replaced = None;
        if let Some(old) = old {
            let old_id: String = old.try_get("id")?;
            let old_state: String = old.try_get("state")?;
            if !matches!(old_state.as_str(), "received" | "awaiting_key") {
                // Its earlier bid's key was answered already: that bid is the one opened.
                return Ok(Filed::Closed { opening_state });
            }
            replaced = Some(old.try_get("path")?);
            sqlx::query("DELETE FROM challenges WHERE bid_id = $1")
                .bind(&old_id)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM bids WHERE id = $1")
                .bind(&old_id)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query(&format!("INSERT INTO bids ({BID_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)"))
            .bind(&b.id)
            .bind(&b.opening_id)
            .bind(&b.bidder_id)
            .bind(state)
            .bind(&b.path)
            .bind(b.size)
            .bind(&b.sm3)
            .bind(b.plaintext_len)
            .bind(b.received_ms)
            .bind(b.summary.clone())
            .bind(b.answer.clone())
            .bind(b.plain_path.clone())
            .bind(b.plain_sm3.clone())
            .bind(b.failure.clone())
            .bind(b.fault.clone())
            .execute(&mut *tx)
            .await?;
        let awaiting_key = state == "awaiting_key";
        let events = events(awaiting_key, replaced.is_some());
        let staged = stage(&mut tx, &b.opening_id, events, now).await?;
        tx.commit().await?;
        Ok(Filed::Stored {
            replaced,
            awaiting_key,
            staged,
        })
    }

    /// Deletes a bid that does not wait for its key yet, and its challenges; returns its file
    /// path, or None if there is no such bid (decryption may have started meanwhile).
    pub async fn delete_bid(
        &self,
        opening_id: &str,
        id: &str,
        events: Vec<NewEvent>,
        now: i64,
    ) -> Result<Option<(String, Vec<StagedEvent>)>, DbError> {
        let mut tx = self.begin_write().await?.0;
        // Locked on PostgreSQL, so starting decryption (which moves it on) waits or is seen.
        let lock_row = match self.backend {
            Backend::Postgres => " FOR UPDATE",
            Backend::Sqlite => "",
        };
        let row = sqlx::query(&format!(
            "SELECT path FROM bids WHERE id = $1 AND state = 'received'{lock_row}"
        ))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        sqlx::query("DELETE FROM challenges WHERE bid_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM bids WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let staged = stage(&mut tx, opening_id, events, now).await?;
        tx.commit().await?;
        Ok(Some((row.try_get("path")?, staged)))
    }

    pub async fn bids(&self, opening_id: &str) -> Result<Vec<BidRow>, DbError> {
        Ok(sqlx::query_as(&bids_of())
            .bind(opening_id)
            .fetch_all(&self.pool)
            .await?)
    }

    /// The ids of the bids of every opening in `state`.
    pub async fn bid_ids_in_state(&self, state: &str) -> Result<Vec<String>, DbError> {
        let rows = sqlx::query("SELECT id FROM bids WHERE state = $1 ORDER BY received_ms, id")
            .bind(state)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .iter()
            .map(|r| r.try_get("id"))
            .collect::<Result<_, _>>()?)
    }

    /// Decrypted bids whose plaintext digest is not recorded: (id, opening id, plaintext path).
    pub async fn decrypted_without_digest(&self) -> Result<Vec<(String, String, String)>, DbError> {
        // Literal conditions, so that both backends use the partial index of migration 0003.
        let rows = sqlx::query(
            "SELECT id, opening_id, plain_path FROM bids \
             WHERE state = 'decrypted' AND plain_sm3 IS NULL AND plain_path IS NOT NULL",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("id")?,
                    r.try_get("opening_id")?,
                    r.try_get("plain_path")?,
                ))
            })
            .collect()
    }

    pub async fn bid(&self, id: &str) -> Result<Option<BidRow>, DbError> {
        Ok(
            sqlx::query_as(&format!("SELECT {BID_COLS} FROM bids WHERE id = $1"))
                .bind(id)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// The bids by state, of openings whose bidders are published (decryption started or the
    /// opening failed): `/metrics` is no way to count an opening's bids before its deadline.
    pub async fn count_bids_by_state(&self) -> Result<Vec<(String, i64)>, DbError> {
        let rows = sqlx::query(
            "SELECT b.state AS state, COUNT(*) AS n FROM bids b JOIN openings o ON o.id = b.opening_id \
             WHERE o.state <> 'scheduled' GROUP BY b.state",
        )
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("state")?, r.try_get("n")?)))
            .collect()
    }

    pub async fn count_openings_by_state(&self) -> Result<Vec<(String, i64)>, DbError> {
        let rows = sqlx::query("SELECT state, COUNT(*) AS n FROM openings GROUP BY state")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("state")?, r.try_get("n")?)))
            .collect()
    }

    /// The bids waiting for their key.
    pub async fn awaiting_keys(&self, opening_id: &str) -> Result<Vec<String>, DbError> {
        let rows = sqlx::query("SELECT id FROM bids WHERE opening_id = $1 AND state = 'awaiting_key' ORDER BY received_ms, id")
            .bind(opening_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| Ok(r.try_get("id")?)).collect()
    }

    /// Starts a transaction for the event log's writer. On SQLite it takes the write lock at once
    /// (`BEGIN IMMEDIATE`): a deferred transaction that first reads and then writes fails with
    /// SQLITE_BUSY_SNAPSHOT, without waiting, if another connection wrote in between.
    pub async fn begin_write(&self) -> Result<WriteTx, DbError> {
        let tx = match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        };
        Ok(WriteTx(tx))
    }

    /// With its events staged, or None if the bid was not being decrypted.
    #[allow(clippy::too_many_arguments)]
    pub async fn fail_bid(
        &self,
        opening_id: &str,
        id: &str,
        state: &str,
        failure: &str,
        fault: &str,
        events: Vec<NewEvent>,
        now: i64,
    ) -> Result<Option<Vec<StagedEvent>>, DbError> {
        let mut tx = self.begin_write().await?.0;
        // Only a bid being decrypted fails: one that finished meanwhile stays as it is.
        let done = sqlx::query(
            "UPDATE bids SET state = $1, failure = $2, fault = $3 WHERE id = $4 \
             AND state = 'decrypting'",
        )
        .bind(state)
        .bind(failure)
        .bind(fault)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            return Ok(None);
        }
        let staged = stage(&mut tx, opening_id, events, now).await?;
        tx.commit().await?;
        Ok(Some(staged))
    }

    /// Staged events not yet in the log, oldest first; only those staged before `before_ms` if
    /// given (younger ones are still being published by whoever staged them).
    pub async fn staged_events(&self, before_ms: Option<i64>) -> Result<Vec<StagedEvent>, DbError> {
        Ok(sqlx::query_as(
            "SELECT id, opening_id, kind, audience, payload, ts_ms FROM staged_events \
             WHERE ts_ms < $1 ORDER BY id",
        )
        .bind(before_ms.unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?)
    }

    /// An opening's staged events up to `up_to` (an id), oldest first.
    pub async fn staged_events_of(
        &self,
        opening_id: &str,
        up_to: i64,
    ) -> Result<Vec<StagedEvent>, DbError> {
        Ok(sqlx::query_as(
            "SELECT id, opening_id, kind, audience, payload, ts_ms FROM staged_events \
             WHERE opening_id = $1 AND id <= $2 ORDER BY id",
        )
        .bind(opening_id)
        .bind(up_to)
        .fetch_all(&self.pool)
        .await?)
    }

    // --- challenges ---------------------------------------------------------------------------

    /// Inserts challenges of an opening and stages their events (one per challenge, in the same
    /// order), in one transaction; skips, with its event, a challenge whose bid no longer waits
    /// for its key or has a live challenge already (issued meanwhile by another caller: the tick,
    /// the start, a bid filed during decryption), so no bid ever shows two valid QR codes.
    pub async fn insert_challenges(
        &self,
        opening_id: &str,
        rows: &[ChallengeRow],
        events: Vec<NewEvent>,
        now: i64,
    ) -> Result<Vec<StagedEvent>, DbError> {
        let mut tx = self.begin_write().await?.0;
        let (lock, lock_row) = match self.backend {
            Backend::Postgres => (" FOR NO KEY UPDATE", " FOR UPDATE"),
            Backend::Sqlite => ("", ""),
        };
        // The opening's row first, as every change of its bids' states takes it first (start,
        // end, a bid filed): one order of locks, no deadlock on PostgreSQL.
        sqlx::query(&format!("SELECT id FROM openings WHERE id = $1{lock}"))
            .bind(opening_id)
            .fetch_optional(&mut *tx)
            .await?;
        let mut issued = Vec::with_capacity(events.len());
        for (c, event) in rows.iter().zip(events) {
            let waiting = sqlx::query(&format!(
                "SELECT id FROM bids WHERE id = $1 AND state = 'awaiting_key'{lock_row}"
            ))
            .bind(&c.bid_id)
            .fetch_optional(&mut *tx)
            .await?
            .is_some();
            let live = sqlx::query(
                "SELECT nonce FROM challenges WHERE bid_id = $1 AND used = 0 AND expires_ms > $2",
            )
            .bind(&c.bid_id)
            .bind(now)
            .fetch_optional(&mut *tx)
            .await?
            .is_some();
            if !waiting || live {
                continue;
            }
            sqlx::query("INSERT INTO challenges (nonce, opening_id, bid_id, expires_ms, used, created_ms) VALUES ($1, $2, $3, $4, $5, $6)")
                .bind(&c.nonce)
                .bind(&c.opening_id)
                .bind(&c.bid_id)
                .bind(c.expires_ms)
                .bind(c.used)
                .bind(c.created_ms)
                .execute(&mut *tx)
                .await?;
            issued.push(event);
        }
        let staged = stage(&mut tx, opening_id, issued, now).await?;
        tx.commit().await?;
        Ok(staged)
    }

    /// Bids of an opening that wait for a key but have no unused, unexpired challenge.
    pub async fn bids_needing_challenge(
        &self,
        opening_id: &str,
        now: i64,
    ) -> Result<Vec<String>, DbError> {
        let rows = sqlx::query(
            "SELECT b.id AS id FROM bids b WHERE b.opening_id = $1 AND b.state = 'awaiting_key' AND NOT EXISTS \
             (SELECT 1 FROM challenges c WHERE c.bid_id = b.id AND c.used = 0 AND c.expires_ms > $2)",
        )
        .bind(opening_id)
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| Ok(r.try_get("id")?)).collect()
    }

    pub async fn challenge(&self, nonce: &str) -> Result<Option<ChallengeRow>, DbError> {
        Ok(sqlx::query_as("SELECT nonce, opening_id, bid_id, expires_ms, used, created_ms FROM challenges WHERE nonce = $1")
            .bind(nonce)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// The newest challenge of every bid of an opening that has one (one query for a snapshot).
    pub async fn current_challenges(
        &self,
        opening_id: &str,
    ) -> Result<std::collections::HashMap<String, ChallengeRow>, DbError> {
        let rows: Vec<ChallengeRow> = sqlx::query_as(
            "SELECT nonce, opening_id, bid_id, expires_ms, used, created_ms FROM challenges WHERE opening_id = $1 ORDER BY created_ms, nonce DESC",
        )
        .bind(opening_id)
        .fetch_all(&self.pool)
        .await?;
        // Later rows replace earlier ones: the map keeps each bid's newest challenge (ties broken
        // as `current_challenge` breaks them).
        Ok(rows.into_iter().map(|c| (c.bid_id.clone(), c)).collect())
    }

    /// The newest challenge of a bid.
    pub async fn current_challenge(&self, bid_id: &str) -> Result<Option<ChallengeRow>, DbError> {
        Ok(sqlx::query_as("SELECT nonce, opening_id, bid_id, expires_ms, used, created_ms FROM challenges WHERE bid_id = $1 ORDER BY created_ms DESC, nonce LIMIT 1")
            .bind(bid_id)
            .fetch_optional(&self.pool)
            .await?)
    }

    // --- events -------------------------------------------------------------------------------

    /// Inserts events in one transaction (one commit for a batch).
    pub async fn events_since(
        &self,
        opening_id: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<EventRow>, DbError> {
        Ok(sqlx::query_as("SELECT opening_id, seq, ts_ms, kind, audience, payload, hash, salt FROM events WHERE opening_id = $1 AND seq > $2 ORDER BY seq LIMIT $3")
            .bind(opening_id)
            .bind(after)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?)
    }

    pub async fn last_event(&self, opening_id: &str) -> Result<Option<(i64, String)>, DbError> {
        let row = sqlx::query(
            "SELECT seq, hash FROM events WHERE opening_id = $1 ORDER BY seq DESC LIMIT 1",
        )
        .bind(opening_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match row {
            Some(r) => Some((r.try_get("seq")?, r.try_get("hash")?)),
            None => None,
        })
    }

    /// The sequence number of the opening's last event whose audience is one of the two given
    /// (pass one twice for a single audience), or 0.
    pub async fn last_seq_for(
        &self,
        opening_id: &str,
        audiences: [&str; 2],
    ) -> Result<i64, DbError> {
        let seq: Option<i64> = sqlx::query_scalar(
            "SELECT MAX(seq) FROM events WHERE opening_id = $1 AND audience IN ($2, $3)",
        )
        .bind(opening_id)
        .bind(audiences[0])
        .bind(audiences[1])
        .fetch_one(&self.pool)
        .await?;
        Ok(seq.unwrap_or(0))
    }

    // --- evaluators ---------------------------------------------------------------------------

    pub async fn insert_evaluator_token(
        &self,
        hash: &str,
        opening_id: &str,
        now: i64,
        events: Vec<NewEvent>,
    ) -> Result<Vec<StagedEvent>, DbError> {
        let mut tx = self.begin_write().await?.0;
        sqlx::query(
            "INSERT INTO evaluator_tokens (token_hash, opening_id, created_ms) VALUES ($1, $2, $3)",
        )
        .bind(hash)
        .bind(opening_id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let staged = stage(&mut tx, opening_id, events, now).await?;
        tx.commit().await?;
        Ok(staged)
    }

    pub async fn evaluator_opening(&self, hash: &str) -> Result<Option<String>, DbError> {
        let row = sqlx::query("SELECT opening_id FROM evaluator_tokens WHERE token_hash = $1")
            .bind(hash)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(r) => Some(r.try_get("opening_id")?),
            None => None,
        })
    }
}
