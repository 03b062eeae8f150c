//! One server at a time on a data folder and its database. Two servers on the same data would
//! each decrypt the other's bids after a restart or a tick (a bid's claim is held in the memory
//! of the process that made it) and broadcast only their own events; so the second refuses to
//! start and says who holds the lock. The lock on the data folder is `flock` on a file in it,
//! released by the kernel when the process ends, however it ends; on PostgreSQL the database is
//! locked too (a session advisory lock), for servers on other machines.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::Path;
use std::str::FromStr;

use rustix::fs::{FlockOperation, flock};
use sqlx::Connection;

use super::DbError;

/// The advisory lock's key on PostgreSQL: "kaibiao" in ASCII.
const PG_KEY: i64 = 0x006b_6169_6269_616f;

/// Held while a server runs; [`ServerLock::release`] when it stops.
pub struct ServerLock {
    /// The locked files: closing one gives its lock back.
    files: std::sync::Mutex<Vec<File>>,
    /// The PostgreSQL database's URL, and what holds its lock.
    pg: Option<(String, tokio::sync::Mutex<Holding>)>,
}

/// The connection holding the database's lock (None once lost), and the process id of the last
/// session that held it.
type Holding = (Option<sqlx::PgConnection>, i32);

/// How long one step of keeping the database's lock may take (a half-open connection would
/// otherwise block for many minutes).
const STEP: std::time::Duration = std::time::Duration::from_secs(5);

/// The session holding the database's lock, if any.
const HOLDER: &str = "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted \
     AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
     AND classid::bigint = $1 AND objid::bigint = $2 AND objsubid = 1";

/// The connection holding the database's lock, and its backend's process id.
struct Held {
    conn: sqlx::PgConnection,
    pid: i32,
}

/// A connection to `url` holding the database's lock; `Lock` if another session holds it,
/// with that session's process id.
async fn lock_database(url: &str) -> Result<Held, (DbError, Option<i32>)> {
    let mut conn = sqlx::PgConnection::connect(url)
        .await
        .map_err(|e| (DbError::Connect(e), None))?;
    let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(PG_KEY)
        .fetch_one(&mut conn)
        .await
        .map_err(|e| (e.into(), None))?;
    if !got {
        let holder: Option<i32> = sqlx::query_scalar(HOLDER)
            .bind(PG_KEY >> 32)
            .bind(PG_KEY & 0xffff_ffff)
            .fetch_optional(&mut conn)
            .await
            .ok()
            .flatten();
        let _ = conn.close().await;
        return Err((
            DbError::Lock(
                "another kaibiao server is using this PostgreSQL database: stop it first, or \
                 give this one a database of its own"
                    .into(),
            ),
            holder,
        ));
    }
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut conn)
        .await
        .map_err(|e| (e.into(), None))?;
    Ok(Held { conn, pid })
}

/// Takes the `flock` of `path` (created if missing) for the folder or database `what`.
fn lock_file(path: &Path, what: &str) -> Result<File, DbError> {
    let io = |e: std::io::Error| DbError::Lock(format!("cannot lock {}: {e}", path.display()));
    if let Some(folder) = path.parent() {
        std::fs::create_dir_all(folder).map_err(io)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(io)?;
    match flock(&file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(e) if e == rustix::io::Errno::WOULDBLOCK => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = match holder.trim() {
                "" => "unknown".to_owned(),
                pid => pid.to_owned(),
            };
            return Err(DbError::Lock(format!(
                "another kaibiao server (process {holder}) is running on {what}: stop it first, \
                 or give this one its own data_dir and database"
            )));
        }
        Err(e) => return Err(io(e.into())),
    }
    file.set_len(0)
        .and_then(|_| file.rewind())
        .and_then(|_| write!(file, "{}", std::process::id()))
        .map_err(io)?;
    Ok(file)
}

impl ServerLock {
    /// Takes the lock of `data_dir` (created if missing), of a SQLite database kept elsewhere,
    /// and of a PostgreSQL database.
    pub async fn acquire(database_url: &str, data_dir: &Path) -> Result<Self, DbError> {
        let what = format!("the data folder {}", data_dir.display());
        let mut files = vec![lock_file(&data_dir.join("kaibiao.lock"), &what)?];
        // The database's own lock too, wherever it is (a lock is the file's, however named):
        // another server with another data folder could name the same database.
        if database_url.starts_with("sqlite:")
            && let Ok(options) = sqlx::sqlite::SqliteConnectOptions::from_str(database_url)
            && options.get_filename() != Path::new(":memory:")
        {
            let db = options.get_filename();
            let mut name = db.as_os_str().to_owned();
            name.push(".kaibiao-lock");
            files.push(lock_file(
                Path::new(&name),
                &format!("the database {}", db.display()),
            )?);
        }
        let pg = if database_url.starts_with("postgres") {
            let held = lock_database(database_url).await.map_err(|e| e.0)?;
            let state = (Some(held.conn), held.pid);
            Some((database_url.to_owned(), tokio::sync::Mutex::new(state)))
        } else {
            None
        };
        Ok(Self {
            files: std::sync::Mutex::new(files),
            pg,
        })
    }

    /// Checks that the database's lock is still held, and takes it again if its connection was
    /// lost (the database restarted, the network dropped it): a session lock ends with its
    /// connection, silently. `Lock` if another server took it meanwhile; the server must stop.
    pub async fn keep(&self) -> Result<(), DbError> {
        let Some((url, state)) = &self.pg else {
            return Ok(());
        };
        let mut state = state.lock().await;
        if let Some(held) = state.0.as_mut() {
            let alive = sqlx::query("SELECT 1").execute(&mut *held);
            if matches!(tokio::time::timeout(STEP, alive).await, Ok(Ok(_))) {
                return Ok(());
            }
            state.0 = None;
        }
        match tokio::time::timeout(STEP, lock_database(url)).await {
            Ok(Ok(held)) => {
                tracing::warn!("the database lock's connection was lost; the lock is held again");
                *state = (Some(held.conn), held.pid);
                Ok(())
            }
            // Our own old session, not yet gone (a half-open connection the database has not
            // noticed): end it, and take the lock at the next check.
            Ok(Err((DbError::Lock(_), Some(pid)))) if pid == state.1 => {
                let end = async {
                    let mut conn = sqlx::PgConnection::connect(url).await?;
                    sqlx::query("SELECT pg_terminate_backend($1)")
                        .bind(pid)
                        .execute(&mut conn)
                        .await?;
                    conn.close().await
                };
                let _ = tokio::time::timeout(STEP, end).await;
                Err(DbError::Write(
                    "the database lock's old session was still there; it was ended".into(),
                ))
            }
            // Refused, but no holder was found when asked: the holder just went (likely our own
            // old session ending). Not another server's yet: try again at the next check.
            Ok(Err((DbError::Lock(_), None))) => Err(DbError::Write(
                "the database lock was held by a session that has just ended; trying again".into(),
            )),
            Ok(Err((error, _))) => Err(error),
            Err(_) => Err(DbError::Write(
                "taking the database lock again did not answer in time".into(),
            )),
        }
    }

    /// Gives the locks back at once (a dropped lock is freed too, the database's when its
    /// connection closes).
    pub async fn release(&self) {
        self.files
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
        if let Some((_, state)) = &self.pg
            && let Some(mut conn) = state.lock().await.0.take()
        {
            let unlock = async {
                let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
                    .bind(PG_KEY)
                    .execute(&mut conn)
                    .await;
                let _ = conn.close().await;
            };
            let _ = tokio::time::timeout(STEP, unlock).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix_web::test]
    async fn a_second_lock_on_the_same_folder_is_refused_until_the_first_is_released() {
        let dir = tempfile::tempdir().unwrap();
        let url = &format!("sqlite://{}/k.db", dir.path().display());
        let first = ServerLock::acquire(url, dir.path()).await.unwrap();
        let Err(error) = ServerLock::acquire(url, dir.path()).await else {
            panic!("two locks on one folder");
        };
        let said = error.to_string();
        assert!(
            said.contains(&format!("process {}", std::process::id())),
            "{said}"
        );
        first.release().await;
        ServerLock::acquire(url, dir.path()).await.unwrap();
    }

    #[actix_web::test]
    async fn a_sqlite_database_outside_the_data_folder_is_locked_too() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/elsewhere/k.db", dir.path().display());
        let _first = ServerLock::acquire(&url, &dir.path().join("one"))
            .await
            .unwrap();
        let Err(error) = ServerLock::acquire(&url, &dir.path().join("two")).await else {
            panic!("two servers on one database");
        };
        assert!(error.to_string().contains("the database"), "{error}");
    }
}
