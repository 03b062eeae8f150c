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
    /// The PostgreSQL database's URL and the connection holding its lock (None once lost).
    pg: Option<(String, tokio::sync::Mutex<Option<sqlx::PgConnection>>)>,
}

/// A connection to `url` holding the database's lock; `Lock` if another server holds it.
async fn lock_database(url: &str) -> Result<sqlx::PgConnection, DbError> {
    let mut conn = sqlx::PgConnection::connect(url)
        .await
        .map_err(DbError::Connect)?;
    let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(PG_KEY)
        .fetch_one(&mut conn)
        .await?;
    if !got {
        let _ = conn.close().await;
        return Err(DbError::Lock(
            "another kaibiao server is using this PostgreSQL database: stop it first, or give \
             this one a database of its own"
                .into(),
        ));
    }
    Ok(conn)
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
        if database_url.starts_with("sqlite:")
            && let Ok(options) = sqlx::sqlite::SqliteConnectOptions::from_str(database_url)
            && options.get_filename().parent() != Some(data_dir)
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
            let conn = lock_database(database_url).await?;
            Some((database_url.to_owned(), tokio::sync::Mutex::new(Some(conn))))
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
        let Some((url, conn)) = &self.pg else {
            return Ok(());
        };
        let mut conn = conn.lock().await;
        if let Some(held) = conn.as_mut() {
            if sqlx::query("SELECT 1").execute(&mut *held).await.is_ok() {
                return Ok(());
            }
            *conn = None;
        }
        let again = lock_database(url).await?;
        tracing::warn!("the database lock's connection was lost; the lock is held again");
        *conn = Some(again);
        Ok(())
    }

    /// Gives the locks back at once (a dropped lock is freed too, the database's when its
    /// connection closes).
    pub async fn release(&self) {
        self.files
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
        if let Some((_, conn)) = &self.pg
            && let Some(mut conn) = conn.lock().await.take()
        {
            let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
                .bind(PG_KEY)
                .execute(&mut conn)
                .await;
            let _ = conn.close().await;
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
