//! The HTTP server: actix-web routes over the [`Hall`]. The only module that knows actix.

mod api;
mod auth;
mod error;
mod pages;
mod span;
mod ws;

use std::net::TcpListener;
use std::time::Duration;

use actix_web::dev::{Server, ServerHandle};
use actix_web::{App, HttpServer, web};
use tracing_actix_web::TracingLogger;

use crate::config::Settings;
use crate::db::{Db, ServerLock};
use crate::hall::{Clock, Hall, HallError, system_clock};
use crate::metrics::Metrics;

pub use error::ApiError;

/// A built server, bound and ready to run.
pub struct Application {
    port: u16,
    server: Server,
    hall: Hall,
    lock: std::sync::Arc<ServerLock>,
    background: Background,
    /// The watch over the database's lock (until the lock is given back), and whether it found
    /// the database another server's.
    keeper: Background,
    lost: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// The hall's periodic work: it stops when the server stops, or when a server that was built
/// is dropped without running.
struct Background(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Background {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// How long a stopping server waits for the decryptions and digests under way to end before it
/// gives back its lock (a restarted server would take up whatever is left).
const DRAIN: Duration = Duration::from_secs(30);

/// How often the database's lock is checked (one `SELECT 1` on its connection).
const LOCK_CHECK: Duration = Duration::from_secs(2);

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        Self::build_with_clock(settings, system_clock()).await
    }

    /// Binds `settings.bind` (port 0 picks a free port) and prepares everything.
    pub async fn build_with_clock(mut settings: Settings, clock: Clock) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(settings.bind).map_err(|e| {
            anyhow::anyhow!(
                "cannot listen on {}: {e} (is another server running there?)",
                settings.bind
            )
        })?;
        let addr = listener.local_addr()?;
        settings.bind = addr;
        let lock = ServerLock::acquire(&settings.database_url(), &settings.data_dir).await?;
        match Self::build_locked(listener, settings, clock).await {
            Ok((server, hall)) => {
                let lock = std::sync::Arc::new(lock);
                let lost = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
                let keeper = keep_lock(lock.clone(), server.handle(), lost.clone());
                Ok(Self {
                    port: addr.port(),
                    server,
                    background: Background(spawn_background(hall.clone())),
                    keeper: Background(vec![keeper]),
                    lost,
                    hall,
                    lock,
                })
            }
            Err(error) => {
                lock.release().await;
                Err(error)
            }
        }
    }

    async fn build_locked(
        listener: TcpListener,
        settings: Settings,
        clock: Clock,
    ) -> anyhow::Result<(Server, Hall)> {
        let db = Db::connect(&settings.database_url()).await?;
        let trusted = span::TrustedProxies(settings.trusted_proxies.clone());
        let hall = Hall::new(db, settings, clock, Metrics::new()).await?;
        let data = web::Data::new(hall.clone());
        let server = HttpServer::new(move || {
            App::new()
                .wrap(actix_web::middleware::from_fn(api::observe_latency))
                .wrap(TracingLogger::<span::RequestSpan>::new())
                .app_data(data.clone())
                .app_data(trusted.clone())
                // Bodies read whole (JSON) are small; bid uploads stream and have their own limit.
                .app_data(web::PayloadConfig::new(1 << 20))
                .app_data(
                    web::JsonConfig::default()
                        .limit(1 << 20)
                        .error_handler(|err, _| {
                            ApiError(HallError::Invalid(format!(
                                "the request body is not valid JSON: {err}"
                            )))
                            .into()
                        }),
                )
                .configure(api::routes)
                .configure(ws::routes)
                .configure(pages::routes)
        })
        // Events are small frames sent back to back (e.g. key accepted, then the summary): with
        // Nagle's algorithm the second waits for the viewer's delayed ACK (~40 ms, measured as
        // an intermittent 50 ms on the summary's latency).
        .on_connect(|conn, _| {
            if let Some(tcp) = conn.downcast_ref::<actix_web::rt::net::TcpStream>() {
                let _ = tcp.set_nodelay(true);
            }
        })
        .listen(listener);
        let server = match server {
            Ok(server) => server.shutdown_timeout(10).run(),
            Err(error) => {
                // The resumed decryptions end before the lock is given back.
                hall.stop().await;
                return Err(error.into());
            }
        };
        Ok((server, hall))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn hall(&self) -> &Hall {
        &self.hall
    }

    /// The server's handle (to stop it) and the future that runs it until then.
    pub fn into_parts(
        self,
    ) -> (
        ServerHandle,
        impl std::future::Future<Output = std::io::Result<()>>,
    ) {
        (self.server.handle(), self.run_until_stopped())
    }

    /// Runs until the server is stopped (Ctrl-C or SIGTERM stop it gracefully); then the hall's
    /// periodic work stops and the data folder and database are free for the next server.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let Self {
            server,
            hall,
            lock,
            background,
            keeper,
            lost,
            ..
        } = self;
        let result = server.await;
        drop(background);
        let lost = lost.load(std::sync::atomic::Ordering::SeqCst);
        // Another server has the database now: nothing more of this one's may be written.
        if !lost && !hall.wait_idle(Duration::ZERO).await {
            tracing::info!(
                "waiting up to {} s for the decryptions and digests under way to end; \
                 Ctrl-C again stops at once",
                DRAIN.as_secs()
            );
            // The server's own signal handlers are gone with it, and tokio's keep the signals
            // from killing the process: without this a second Ctrl-C would do nothing.
            let idle = tokio::select! {
                idle = hall.wait_idle(DRAIN) => idle,
                () = stop_signal() => false,
            };
            if !idle {
                tracing::warn!(
                    "stopping with decryptions or digests still under way; the next start takes \
                     them up"
                );
            }
        }
        // None may go on writing once the lock is given back (or was lost to another server).
        hall.stop().await;
        drop(keeper);
        lock.release().await;
        if lost {
            return Err(std::io::Error::other(
                "stopped: another kaibiao server took the database",
            ));
        }
        result
    }
}

/// Ctrl-C or SIGTERM.
async fn stop_signal() {
    let interrupt = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    () = interrupt => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => interrupt.await,
        }
    }
    #[cfg(not(unix))]
    interrupt.await;
}

/// Checks every few seconds that the database's lock is still this server's, taking it again
/// if its connection was lost; stops the server if another took it meanwhile.
fn keep_lock(
    lock: std::sync::Arc<ServerLock>,
    server: ServerHandle,
    lost: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(LOCK_CHECK);
        loop {
            interval.tick().await;
            match lock.keep().await {
                Ok(()) => {}
                Err(error @ crate::db::DbError::Lock(_)) => {
                    tracing::error!(%error, "the database is another server's now: stopping");
                    lost.store(true, std::sync::atomic::Ordering::SeqCst);
                    server.stop(false).await;
                    return;
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot check the database lock; trying again");
                }
            }
        }
    })
}

fn spawn_background(hall: Hall) -> Vec<tokio::task::JoinHandle<()>> {
    let ticker = hall.clone();
    let tick = tokio::spawn(async move {
        let mut interval = tokio::time::interval(Duration::from_millis(500));
        loop {
            interval.tick().await;
            if let Err(error) = ticker.tick().await {
                tracing::error!(%error, "the hall's periodic work failed");
            }
        }
    });
    let reporter = hall.clone();
    let progress = tokio::spawn(async move {
        let mut interval = tokio::time::interval(Duration::from_millis(250));
        loop {
            interval.tick().await;
            reporter.publish_progress();
        }
    });
    let every = Duration::from_secs(hall.settings().head_push_secs.max(1));
    let heads = tokio::spawn(async move {
        let mut interval = tokio::time::interval(every);
        loop {
            interval.tick().await;
            hall.push_heads().await;
        }
    });
    vec![tick, progress, heads]
}
