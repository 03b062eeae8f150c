//! Group commit for the hot writes of a live opening.
//!
//! When a QR storm hits (every bidder answering at once), each accepted answer and each finished
//! decryption is a small update. Committed one by one, they queue on the database's single
//! writer and each pays a disk flush. Here one task takes every write waiting, applies them in one
//! transaction and flushes once. Each write keeps its own result; if the batch fails as a whole,
//! every write is retried alone so one bad write cannot fail the others.

use sqlx::{Any, AnyPool, Transaction};
use tokio::sync::{mpsc, oneshot};

/// Most writes committed together.
const GROUP: usize = 256;

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
}

pub(super) struct Job {
    pub(super) write: BidWrite,
    pub(super) done: oneshot::Sender<Result<bool, String>>,
}

async fn apply(tx: &mut Transaction<'static, Any>, write: &BidWrite) -> Result<bool, sqlx::Error> {
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
    }
}

async fn apply_all(pool: &AnyPool, writes: &[&BidWrite]) -> Result<Vec<bool>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let mut results = Vec::with_capacity(writes.len());
    for write in writes {
        results.push(apply(&mut tx, write).await?);
    }
    tx.commit().await?;
    Ok(results)
}

pub(super) async fn writer(pool: AnyPool, mut queue: mpsc::Receiver<Job>) {
    let mut batch = Vec::with_capacity(GROUP);
    while queue.recv_many(&mut batch, GROUP).await > 0 {
        let writes: Vec<&BidWrite> = batch.iter().map(|j| &j.write).collect();
        match apply_all(&pool, &writes).await {
            Ok(results) => {
                for (job, result) in batch.drain(..).zip(results) {
                    let _ = job.done.send(Ok(result));
                }
            }
            Err(_) => {
                for job in batch.drain(..) {
                    let result = apply_all(&pool, &[&job.write]).await;
                    let _ = job
                        .done
                        .send(result.map(|r| r[0]).map_err(|e| e.to_string()));
                }
            }
        }
    }
}
