//! The conditional writes of a live opening's hot path (an accepted answer, a finished
//! decryption). They are committed by the event log's single writer (`hall::events`) in the same
//! transaction as the events they cause: one disk flush for everything waiting, and no state
//! change without its event (or the reverse) after a crash.

use sqlx::{Any, Transaction};

/// A write of the live opening's hot path.
#[derive(Debug, Clone)]
pub enum BidWrite {
    /// Uses the challenge and records the accepted answer and the opened summary:
    /// awaiting_key → decrypting. False (and nothing changed) if the challenge was used already
    /// or the bid no longer waits for a key.
    Accept {
        nonce: String,
        bid_id: String,
        answer: Vec<u8>,
        summary: String,
    },
    /// decrypting → decrypted, with the plaintext's path. False if the bid was not decrypting.
    Finish { bid_id: String, plain_path: String },
    /// Records the SM3 of a decrypted file.
    PlainSm3 { bid_id: String, sm3: String },
    /// Takes staged events off the stage (see `super::StagedEvent`), as the log stores them.
    /// False (and nothing changed) if they were published already.
    Unstage { ids: Vec<i64> },
}

pub(super) async fn apply(
    tx: &mut Transaction<'static, Any>,
    write: &BidWrite,
) -> Result<bool, sqlx::Error> {
    match write {
        BidWrite::Accept {
            nonce,
            bid_id,
            answer,
            summary,
        } => {
            let done = sqlx::query(
                "UPDATE bids SET state = 'decrypting', answer = $1, summary = $2 WHERE id = $3 AND state = 'awaiting_key' \
                 AND EXISTS (SELECT 1 FROM challenges WHERE nonce = $4 AND bid_id = $3 AND used = 0)",
            )
            .bind(answer.clone())
            .bind(summary)
            .bind(bid_id)
            .bind(nonce)
            .execute(&mut **tx)
            .await?;
            if done.rows_affected() != 1 {
                return Ok(false);
            }
            sqlx::query("UPDATE challenges SET used = 1 WHERE nonce = $1")
                .bind(nonce)
                .execute(&mut **tx)
                .await?;
            Ok(true)
        }
        BidWrite::Finish { bid_id, plain_path } => {
            let done = sqlx::query("UPDATE bids SET state = 'decrypted', plain_path = $1 WHERE id = $2 AND state = 'decrypting'")
                .bind(plain_path)
                .bind(bid_id)
                .execute(&mut **tx)
                .await?;
            Ok(done.rows_affected() == 1)
        }
        BidWrite::PlainSm3 { bid_id, sm3 } => {
            sqlx::query("UPDATE bids SET plain_sm3 = $1 WHERE id = $2")
                .bind(sm3)
                .bind(bid_id)
                .execute(&mut **tx)
                .await?;
            Ok(true)
        }
        BidWrite::Unstage { ids } => {
            // All of them still staged, or none is taken (another publisher took some: its
            // transaction, or an earlier append of this one, stored their events).
            for id in ids {
                let staged = sqlx::query("SELECT id FROM staged_events WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&mut **tx)
                    .await?;
                if staged.is_none() {
                    return Ok(false);
                }
            }
            for id in ids {
                sqlx::query("DELETE FROM staged_events WHERE id = $1")
                    .bind(id)
                    .execute(&mut **tx)
                    .await?;
            }
            Ok(true)
        }
    }
}
