//! The kaibiao load harness: runs a real `kaibiao serve` on loopback and measures
//! 1. M openings × N websocket viewers with server-stamped events at a given rate: delivery
//!    latency p50/p99/max per opening, delivered frames/s, errors, server RSS per connection,
//!    with one slow viewer that stops reading (the events are bidder registrations, which only
//!    the agent is told of before the opening, so these viewers connect with the agent's token;
//!    the server does the same work per viewer for the public feed);
//! 2. a QR storm: P phones answering their challenges at once: answer latency p50/p99, answers/s.
//!
//! Bounded in count and time, loopback only, stops by itself. Build and run:
//!
//! ```sh
//! cargo build --release --bins --examples
//! target/release/examples/loadtest --openings 10 --viewers 1000 --rate 4 --seconds 20 --phones 1000
//! ```
//!
//! It writes `loadtest/results/latest.md` and `latest.json` (or `--out DIR`).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use futures_util::StreamExt;
use kaibiao::crypto;
use kaibiao::domain::{BidSummary, Uscc};
use kaibiao::engine::{self, NoProgress, SealParams};
use kaibiao::phone::{self, Answer, ChallengeView};
use serde_json::{Value, json};
use tokio::net::TcpSocket;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser, Debug, Clone)]
#[command(
    about = "Load harness for kaibiao: websocket broadcast and phone-answer storms on loopback"
)]
struct Args {
    /// Openings watched at once.
    #[arg(long, default_value_t = 10)]
    openings: usize,
    /// Websocket viewers per opening.
    #[arg(long, default_value_t = 100)]
    viewers: usize,
    /// Stored events per second per opening.
    #[arg(long, default_value_t = 4.0)]
    rate: f64,
    /// All openings generate their events at the same instants (a worst case); by default each
    /// opening's ticks are offset by period × o / openings, as independent openings would be.
    #[arg(long)]
    lockstep: bool,
    /// How long the broadcast phase runs.
    #[arg(long, default_value_t = 15)]
    seconds: u64,
    /// Phones answering at once in the QR storm (0 skips it).
    #[arg(long, default_value_t = 200)]
    phones: usize,
    /// The kaibiao binary (default: the one beside this program's folder).
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Where to write latest.md and latest.json.
    #[arg(long, default_value = "loadtest/results")]
    out: PathBuf,
    /// Phones answer at this steady rate per second instead of all at once (0: all at once).
    #[arg(long, default_value_t = 0.0)]
    phone_rate: f64,
    /// The storm starts as soon as the large bid's summary is shown, while its body is still
    /// being decrypted (by default it waits for the decryption to end).
    #[arg(long)]
    storm_while_decrypting: bool,
    /// Size of the one large bid whose summary latency is measured before the storm.
    #[arg(long, default_value_t = 256)]
    summary_bid_mib: usize,
    /// Bids of `--large-bid-mib` each, all answered at once in an opening of their own (the
    /// issue's "50 bidders of 500 MB"): time until every one is decrypted and hashed (0 skips it).
    #[arg(long, default_value_t = 0)]
    large_bids: usize,
    /// Size of each of the `--large-bids`.
    #[arg(long, default_value_t = 256)]
    large_bid_mib: usize,
    /// Run the server on this database (e.g. an empty PostgreSQL database) instead of SQLite.
    #[arg(long)]
    database_url: Option<String>,
    /// A hard stop for the whole run.
    #[arg(long, default_value_t = 600)]
    max_seconds: u64,
}

const PASSWORD: &str = "loadtest-password";
const TENDER: &str = "ZB-LOAD-001";

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The server's stamp of an event frame, read without parsing the whole frame (the client shares
/// the machine with the server, so it must stay cheap).
fn event_stamp(frame: &str) -> Option<i64> {
    if !frame.starts_with(r#"{"type":"event""#) {
        return None;
    }
    let rest = &frame[frame.find(r#""ts_ms":"#)? + 8..];
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn rss_kib(pid: u32) -> u64 {
    proc_status(pid, "VmRSS:")
}

/// A number from the process's `/proc/PID/status` (`VmRSS:` in KiB, `Threads:`), 0 if unknown.
fn proc_status(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with(field)).map(|l| {
                l.split_whitespace()
                    .nth(1)
                    .unwrap_or("0")
                    .parse()
                    .unwrap_or(0)
            })
        })
        .unwrap_or(0)
}

struct Server {
    child: std::process::Child,
    base: String,
    addr: SocketAddr,
    _data: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn spawn_server(args: &Args) -> anyhow::Result<Server> {
    let bin = match &args.server_bin {
        Some(b) => b.clone(),
        None => std::env::current_exe()?
            .parent()
            .and_then(|p| p.parent())
            .context("locating kaibiao")?
            .join("kaibiao"),
    };
    if !bin.exists() {
        bail!(
            "{} does not exist: run `cargo build --release --bins --examples` first",
            bin.display()
        );
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let data = tempfile::tempdir()?;
    let mut command = std::process::Command::new(&bin);
    if let Some(url) = &args.database_url {
        command.env("KAIBIAO_DATABASE_URL", url);
    }
    let child = command
        .args(["serve", "--bind", &addr.to_string(), "--data-dir"])
        .arg(data.path())
        .env("KAIBIAO_ADMIN_PASSWORD", PASSWORD)
        .env("KAIBIAO_LOG", "warn")
        .env("KAIBIAO_CHALLENGE_TTL_SECS", "600")
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let server = Server {
        child,
        base: format!("http://{addr}"),
        addr,
        _data: data,
    };
    let client = reqwest::Client::new();
    for _ in 0..100 {
        if client
            .get(format!("{}/healthz", server.base))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return Ok(server);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("the server did not answer /healthz within 10 s")
}

struct Api {
    client: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    async fn login(base: &str) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(512)
            .build()?;
        let res = client
            .post(format!("{base}/api/login"))
            .json(&json!({"username": "admin", "password": PASSWORD}))
            .send()
            .await?;
        let cookie = res
            .headers()
            .get("set-cookie")
            .context("no session cookie")?
            .to_str()?
            .split(';')
            .next()
            .unwrap_or("")
            .to_owned();
        let token: Value = client
            .post(format!("{base}/api/tokens"))
            .header("cookie", cookie)
            .send()
            .await?
            .json()
            .await?;
        Ok(Self {
            client,
            base: base.to_owned(),
            token: token["token"].as_str().context("no token")?.to_owned(),
        })
    }

    async fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        let res = self
            .client
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await?;
        let status = res.status();
        let body: Value = res.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("{path}: {status} {body}");
        }
        Ok(body)
    }

    async fn create_opening(&self, in_secs: i64) -> anyhow::Result<String> {
        let at = now_ms() + in_secs * 1000;
        let body = self
            .post("/api/openings", json!({"tender_id": TENDER, "name": "负载测试", "deadline_ms": at, "opening_ms": at, "decrypt_limit_secs": 3600}))
            .await?;
        Ok(body["id"].as_str().context("no id")?.to_owned())
    }
}

struct Keys {
    sign: sm2::SecretKey,
    enc: sm2::SecretKey,
    sign_pem: String,
    enc_pem: String,
}

impl Keys {
    /// Seals `plain` as `bidder`'s bid to the hall's test key.
    fn seal(
        &self,
        plain: &Path,
        out: &Path,
        bidder: &Uscc,
        summary: &BidSummary,
        chunk_size: u32,
    ) -> anyhow::Result<()> {
        let signer = crypto::load_public_pem(&self.sign_pem)?;
        engine::seal_file(
            plain,
            out,
            &SealParams {
                tender_id: TENDER,
                bidder: bidder.clone(),
                summary,
                recipients: &[self.enc.public_key()],
                sign_key: &self.sign,
                signer: &signer,
                chunk_size,
                created_at: 0,
            },
            &NoProgress,
        )?;
        Ok(())
    }
}

impl Api {
    /// Registers a bidder with the test keys and uploads its sealed bid.
    async fn register_and_upload(
        &self,
        opening: &str,
        code: &Uscc,
        name: &str,
        keys: &Keys,
        file: &Path,
    ) -> anyhow::Result<()> {
        self.post(&format!("/api/openings/{opening}/bidders"), json!({"uscc": code.as_str(), "name": name, "sign_keys": [keys.sign_pem], "enc_keys": [keys.enc_pem]})).await?;
        let res = self
            .client
            .put(format!(
                "{}/api/openings/{opening}/bids/{}",
                self.base, code
            ))
            .body(tokio::fs::read(file).await?)
            .send()
            .await?;
        if !res.status().is_success() {
            bail!("upload of {name}: {}", res.text().await.unwrap_or_default());
        }
        Ok(())
    }

    /// Starts decryption just after `opening_at` and returns the opening's bids, with their QR
    /// codes, as the agent sees them.
    async fn start(&self, opening: &str, opening_at: Instant) -> anyhow::Result<Vec<Value>> {
        tokio::time::sleep_until((opening_at + Duration::from_millis(300)).into()).await;
        self.post(
            &format!("/api/openings/{opening}/start-decryption"),
            json!({}),
        )
        .await?;
        self.bids(opening).await
    }

    /// The opening's bids as the agent sees them (with QR codes and plaintext digests).
    async fn bids(&self, opening: &str) -> anyhow::Result<Vec<Value>> {
        let snapshot: Value = self
            .client
            .get(format!("{}/api/openings/{opening}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await?
            .json()
            .await?;
        Ok(snapshot["bids"].as_array().context("bids")?.clone())
    }

    /// Sends prepared answers, the i-th at `start + gap × i`: whether each was accepted, and its
    /// latency in milliseconds.
    async fn answer_all(
        &self,
        prepared: Vec<(String, Answer)>,
        start: Instant,
        gap: Duration,
    ) -> Vec<Result<(bool, f64), tokio::task::JoinError>> {
        let tasks = prepared.into_iter().enumerate().map(|(i, (url, answer))| {
            let client = self.client.clone();
            let at = start + gap * i as u32;
            tokio::spawn(async move {
                tokio::time::sleep_until(at.into()).await;
                let t = Instant::now();
                let ok = client
                    .post(url)
                    .json(&answer)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                (ok, t.elapsed().as_secs_f64() * 1000.0)
            })
        });
        futures_util::future::join_all(tasks).await
    }

    /// What a phone does on scanning a QR code: fetch the challenge and prepare the answer.
    async fn prepare_answer(&self, qr_url: &str, keys: &Keys) -> anyhow::Result<(String, Answer)> {
        let view: ChallengeView = self
            .client
            .get(phone::challenge_url(qr_url, None))
            .send()
            .await?
            .json()
            .await?;
        let answer = phone::answer_challenge(&view, &keys.enc, &keys.sign)?;
        Ok((view.answer_url, answer))
    }
}

/// A bid summary for the harness's bidders.
fn summary(bidder_name: &str) -> BidSummary {
    BidSummary {
        bidder_name: bidder_name.into(),
        price_fen: 1,
        duration_days: 1,
        quality: "合格".into(),
        fields: Default::default(),
    }
}

fn bidder_code(n: usize) -> Uscc {
    Uscc::with_check_digit(&format!("91110000{:09}", n)).expect("digits are valid")
}

/// Connects one websocket from a source address in 127.0.0.0/8 (spreading ports over addresses),
/// as the agent if given its token (the agent's feed), else as anyone (the public feed).
async fn connect_viewer(
    server: SocketAddr,
    opening: &str,
    n: usize,
    agent_token: Option<&str>,
) -> anyhow::Result<tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let source = Ipv4Addr::new(
        127,
        0,
        (1 + n / 20_000 / 250) as u8,
        (1 + (n / 20_000) % 250) as u8,
    );
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source.into(), 0))?;
    let stream = socket.connect(server).await?;
    let mut request = format!("ws://{server}/ws/openings/{opening}").into_client_request()?;
    if let Some(token) = agent_token {
        request
            .headers_mut()
            .insert("Authorization", format!("Bearer {token}").parse()?);
    }
    // Small buffers: the default 128 KiB read buffer per connection would cost the client 1.2 GB
    // at 10,000 viewers and skew the measurement with page faults.
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let (ws, _) =
        tokio_tungstenite::client_async_with_config(request, stream, Some(config)).await?;
    Ok(ws)
}

struct Broadcast {
    connected: usize,
    connect_errors: usize,
    dropped_early: usize,
    events_generated: u64,
    /// Events the generators could not store (the server refused or failed the request).
    events_failed: u64,
    /// Events received by the viewers that read (one per event per viewer of its opening).
    events_received: usize,
    frames: u64,
    per_opening: Vec<(u32, u32, u32, usize)>,
    all: (u32, u32, u32),
    rss_before_kib: u64,
    rss_connected_kib: u64,
    slow_viewer_dropped: bool,
    slow_opening_p99: u32,
    others_p99: u32,
}

async fn broadcast_phase(
    args: &Args,
    server: &Server,
    api: &Arc<Api>,
    keys: &Arc<Keys>,
) -> anyhow::Result<Broadcast> {
    let mut openings = Vec::new();
    for _ in 0..args.openings {
        openings.push(api.create_opening(3600).await?);
    }
    let pid = server.child.id();
    let rss_before_kib = rss_kib(pid);
    let (stop_tx, stop_rx) = watch::channel(false);
    let frames = Arc::new(AtomicU64::new(0));
    let mut viewers = Vec::new();
    let mut connect_errors = 0;
    let mut n = 0;
    for (o, opening) in openings.iter().enumerate() {
        for _ in 0..args.viewers {
            n += 1;
            match connect_viewer(server.addr, opening, n, Some(&api.token)).await {
                Ok(ws) => {
                    // Replayed history is not delivery latency: count events stamped after connecting.
                    let connected_ms = now_ms();
                    let mut stop = stop_rx.clone();
                    let frames = frames.clone();
                    viewers.push((o, tokio::spawn(async move {
                        let (_, mut read) = ws.split();
                        let mut latencies: Vec<u32> = Vec::new();
                        let mut closed_early = false;
                        loop {
                            tokio::select! {
                                _ = stop.changed() => break,
                                msg = read.next() => match msg {
                                    Some(Ok(Message::Text(text))) => {
                                        frames.fetch_add(1, Ordering::Relaxed);
                                        if let Some(ts) = event_stamp(&text).filter(|&ts| ts >= connected_ms) {
                                            latencies.push((now_ms() - ts).max(0) as u32);
                                        }
                                    }
                                    Some(Ok(_)) => {}
                                    _ => { closed_early = true; break; }
                                }
                            }
                        }
                        (latencies, closed_early)
                    })));
                }
                Err(_) => connect_errors += 1,
            }
        }
    }
    // One slow viewer in the first opening: connects, then never reads.
    let slow = connect_viewer(server.addr, &openings[0], n + 1, Some(&api.token))
        .await
        .ok();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_connected_kib = rss_kib(pid);

    let generated = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let mut generators = Vec::new();
    for (o, opening) in openings.iter().enumerate() {
        let api = api.clone();
        let keys = keys.clone();
        let opening = opening.clone();
        let generated = generated.clone();
        let failed = failed.clone();
        let period = Duration::from_secs_f64(1.0 / args.rate);
        let phase = if args.lockstep {
            Duration::ZERO
        } else {
            period.mul_f64(o as f64 / openings.len() as f64)
        };
        generators.push(tokio::spawn(async move {
            tokio::time::sleep(phase).await;
            let mut tick = tokio::time::interval(period);
            let mut i = 0;
            while Instant::now() < deadline {
                tick.tick().await;
                i += 1;
                let code = bidder_code(o * 1_000_000 + i);
                let body = json!({"uscc": code.as_str(), "name": format!("负载投标人{o}-{i}"), "sign_keys": [keys.sign_pem], "enc_keys": [keys.enc_pem]});
                if api.post(&format!("/api/openings/{opening}/bidders"), body).await.is_ok() {
                    generated.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for g in generators {
        g.await?;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _ = stop_tx.send(true);
    let mut per: Vec<Vec<u32>> = vec![Vec::new(); openings.len()];
    let mut dropped_early = 0;
    for (o, v) in viewers {
        let (lat, early) = v.await?;
        per[o].extend(lat);
        dropped_early += usize::from(early);
    }
    // The slow viewer was dropped if the server closed it (after its buffers drained).
    let slow_viewer_dropped = match slow {
        Some(ws) => {
            let (_, mut read) = ws.split();
            let mut closed = false;
            let until = Instant::now() + Duration::from_secs(5);
            while Instant::now() < until {
                match tokio::time::timeout(Duration::from_millis(500), read.next()).await {
                    Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) => {
                        closed = true;
                        break;
                    }
                    Ok(Some(Ok(_))) => {}
                    Err(_) => break,
                }
            }
            closed
        }
        None => false,
    };
    let mut all: Vec<u32> = per.iter().flatten().copied().collect();
    all.sort_unstable();
    let mut per_opening = Vec::new();
    let mut others: Vec<u32> = Vec::new();
    for (o, mut l) in per.into_iter().enumerate() {
        l.sort_unstable();
        per_opening.push((
            percentile(&l, 0.5),
            percentile(&l, 0.99),
            l.last().copied().unwrap_or(0),
            l.len(),
        ));
        if o != 0 {
            others.extend(l);
        }
    }
    others.sort_unstable();
    Ok(Broadcast {
        connected: args.openings * args.viewers - connect_errors,
        connect_errors,
        dropped_early,
        events_generated: generated.load(Ordering::Relaxed),
        events_failed: failed.load(Ordering::Relaxed),
        events_received: all.len(),
        frames: frames.load(Ordering::Relaxed),
        slow_opening_p99: per_opening.first().map(|p| p.1).unwrap_or(0),
        per_opening,
        all: (
            percentile(&all, 0.5),
            percentile(&all, 0.99),
            all.last().copied().unwrap_or(0),
        ),
        rss_before_kib,
        rss_connected_kib,
        slow_viewer_dropped,
        others_p99: percentile(&others, 0.99),
    })
}

struct Storm {
    summary_bid_mib: usize,
    summary_ms: f64,
    big_decrypt_secs: f64,
    phones: usize,
    accepted: usize,
    refused: usize,
    wall_secs: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

async fn storm_phase(args: &Args, api: &Arc<Api>, keys: &Arc<Keys>) -> anyhow::Result<Storm> {
    let p = args.phones;
    let work = tempfile::tempdir()?;
    // Seal P small bids (one per bidder) before the opening exists.
    let summary = summary("负载");
    let mut files = Vec::new();
    let plain = work.path().join("plain");
    std::fs::write(&plain, vec![7u8; 4096])?;
    for i in 0..p {
        let file = work.path().join(format!("{i}.kbid"));
        keys.seal(&plain, &file, &bidder_code(900_000_000 + i), &summary, 4096)?;
        files.push(file);
    }
    // One large bid: its summary must show at once, whatever the size of its body.
    let big_code = bidder_code(899_999_999);
    let big_file = work.path().join("big.kbid");
    {
        let big_plain = work.path().join("big-plain");
        let block = vec![0x5au8; 1 << 20];
        let mut f = std::io::BufWriter::new(std::fs::File::create(&big_plain)?);
        for _ in 0..args.summary_bid_mib {
            std::io::Write::write_all(&mut f, &block)?;
        }
        drop(f);
        let chunk = kaibiao::format::DEFAULT_CHUNK_SIZE;
        keys.seal(&big_plain, &big_file, &big_code, &summary, chunk)?;
        std::fs::remove_file(big_plain)?;
    }
    let lead = 10 + (p as i64) / 50 + args.summary_bid_mib as i64 / 100;
    let opening = api.create_opening(lead).await?;
    let opening_at = Instant::now() + Duration::from_secs(lead as u64);
    let uploads = files
        .iter()
        .enumerate()
        .map(|(i, f)| (bidder_code(900_000_000 + i), f))
        .chain(std::iter::once((big_code.clone(), &big_file)));
    for (i, (code, file)) in uploads.enumerate() {
        api.register_and_upload(&opening, &code, &format!("手机{i}"), keys, file)
            .await?;
    }
    let bids = api.start(&opening, opening_at).await?;
    let big = bids
        .iter()
        .find(|b| b["bidder_code"] == big_code.as_str())
        .context("the large bid")?;
    let big_id = big["id"].as_str().context("id")?.to_owned();
    let big_url = big["qr"]["url"].as_str().context("its QR")?.to_owned();
    let urls: Vec<String> = bids
        .iter()
        .filter(|b| b["id"] != big_id.as_str())
        .filter_map(|b| b["qr"]["url"].as_str().map(str::to_owned))
        .collect();

    // The large bid's phone answers while a viewer watches: time from sending the answer to the
    // summary frame on the websocket, and the body's decryption time reported by the server.
    let server_addr: SocketAddr = api.base.trim_start_matches("http://").parse()?;
    let ws = connect_viewer(server_addr, &opening, 0, None).await?;
    let (_, mut read) = ws.split();
    // Let the viewer take its replay (or snapshot) first: only live frames are timed.
    while let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::from_millis(500), read.next()).await
    {
    }
    let (big_answer_url, answer) = api.prepare_answer(&big_url, keys).await?;
    // Each phone fetches its challenge and prepares its answer; then all answer at once.
    let prepare = || async {
        let mut prepared: Vec<(String, Answer)> = Vec::new();
        for url in &urls {
            prepared.push(api.prepare_answer(url, keys).await?);
        }
        anyhow::Ok(prepared)
    };
    let early = if args.storm_while_decrypting {
        Some(prepare().await?)
    } else {
        None
    };
    let sent = Instant::now();
    let post = tokio::spawn({
        let client = api.client.clone();
        let url = big_answer_url;
        async move {
            client
                .post(url)
                .json(&answer)
                .send()
                .await
                .map(|r| r.status().is_success())
        }
    });
    // Reads the viewer's socket until the large bid's summary (its latency) and, in the
    // background, until its `bid.decrypted` (the body's decryption time, stamped by the server).
    let (summary_tx, summary_rx) = tokio::sync::oneshot::channel::<f64>();
    let watcher = tokio::spawn({
        let big_id = big_id.clone();
        async move {
            let mut summary_tx = Some(summary_tx);
            while let Ok(Some(Ok(msg))) =
                tokio::time::timeout(Duration::from_secs(120), read.next()).await
            {
                let Message::Text(text) = msg else { continue };
                let v: Value = serde_json::from_str(&text).unwrap_or_default();
                if v["data"]["bid_id"] != big_id.as_str() {
                    continue;
                }
                if v["kind"] == "bid.summary"
                    && let Some(tx) = summary_tx.take()
                {
                    let _ = tx.send(sent.elapsed().as_secs_f64() * 1000.0);
                }
                if v["kind"] == "bid.decrypted" {
                    return v["data"]["seconds"].as_f64().unwrap_or(f64::NAN);
                }
            }
            f64::NAN
        }
    });
    let summary_ms = summary_rx.await.unwrap_or(f64::NAN);
    if !post.await?? {
        bail!("the large bid's answer was refused");
    }
    let mut watcher = Some(watcher);
    let (prepared, big_decrypt_secs) = match early {
        Some(prepared) => (prepared, None),
        None => {
            let secs = watcher.take().expect("not awaited yet").await?;
            (prepare().await?, Some(secs))
        }
    };
    let start = Instant::now();
    let gap = if args.phone_rate > 0.0 {
        Duration::from_secs_f64(1.0 / args.phone_rate)
    } else {
        Duration::ZERO
    };
    let results = api.answer_all(prepared, start, gap).await;
    let wall_secs = start.elapsed().as_secs_f64();
    let big_decrypt_secs = match (big_decrypt_secs, watcher) {
        (Some(secs), _) => secs,
        (None, Some(watcher)) => watcher.await?,
        (None, None) => f64::NAN,
    };
    let mut lat: Vec<f64> = Vec::new();
    let mut accepted = 0;
    for r in results {
        let (ok, ms) = r?;
        accepted += usize::from(ok);
        lat.push(ms);
    }
    lat.sort_by(f64::total_cmp);
    let pick = |q: f64| {
        lat.get(((lat.len().max(1) - 1) as f64 * q).round() as usize)
            .copied()
            .unwrap_or(0.0)
    };
    Ok(Storm {
        summary_bid_mib: args.summary_bid_mib,
        summary_ms,
        big_decrypt_secs,
        phones: urls.len(),
        accepted,
        refused: urls.len() - accepted,
        wall_secs,
        p50_ms: pick(0.5),
        p99_ms: pick(0.99),
        max_ms: pick(1.0),
    })
}

/// Many large bids answered at once.
struct Large {
    bids: usize,
    mib: usize,
    answer_ms: (f64, f64),
    /// Seconds from the answers to each bid's `bid.decrypted`, sorted.
    decrypted: Vec<f64>,
    /// Seconds from the answers to each bid's `bid.digest`, sorted.
    digested: Vec<f64>,
    /// The server's most resident memory (KiB) and threads, sampled every 20 ms from the answers
    /// until every bid was decrypted, and its resident memory before the answers.
    rss_before_kib: u64,
    peak_rss_kib: u64,
    peak_threads: u64,
}

/// Samples a process's resident memory and thread count until stopped; returns the highest seen.
fn sample_peaks(pid: u32) -> (Arc<AtomicBool>, tokio::task::JoinHandle<(u64, u64)>) {
    let stop = Arc::new(AtomicBool::new(false));
    let task = tokio::spawn({
        let stop = stop.clone();
        async move {
            let (mut rss, mut threads) = (0, 0);
            while !stop.load(Ordering::Relaxed) {
                rss = rss.max(proc_status(pid, "VmRSS:"));
                threads = threads.max(proc_status(pid, "Threads:"));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (rss, threads)
        }
    });
    (stop, task)
}

async fn large_phase(
    args: &Args,
    server: &Server,
    api: &Arc<Api>,
    keys: &Arc<Keys>,
) -> anyhow::Result<Large> {
    let work = tempfile::tempdir()?;
    let summary = summary("大文件");
    let plain = work.path().join("plain");
    {
        // Not compressible, as real bid files mostly are not.
        let mut block = vec![0u8; 1 << 20];
        let mut f = std::io::BufWriter::new(std::fs::File::create(&plain)?);
        for i in 0..args.large_bid_mib {
            for (j, b) in block.iter_mut().enumerate() {
                *b = ((i * 131 + j * 7) ^ (j >> 9)) as u8;
            }
            std::io::Write::write_all(&mut f, &block)?;
        }
    }
    // Sealed first, then uploaded before the deadline of an opening made for them.
    let mut files = Vec::new();
    for i in 0..args.large_bids {
        let code = bidder_code(800_000_000 + i);
        let file = work.path().join(format!("{i}.kbid"));
        let chunk = kaibiao::format::DEFAULT_CHUNK_SIZE;
        keys.seal(&plain, &file, &code, &summary, chunk)?;
        files.push((code, file));
    }
    std::fs::remove_file(&plain)?;
    let lead = 10 + (args.large_bids * args.large_bid_mib) as i64 / 100;
    let opening = api.create_opening(lead).await?;
    let opening_at = Instant::now() + Duration::from_secs(lead as u64);
    for (i, (code, file)) in files.into_iter().enumerate() {
        api.register_and_upload(&opening, &code, &format!("大文件{i}"), keys, &file)
            .await?;
        std::fs::remove_file(file)?;
    }
    let mut prepared = Vec::new();
    for bid in api.start(&opening, opening_at).await? {
        let url = bid["qr"]["url"].as_str().context("a QR")?;
        prepared.push(api.prepare_answer(url, keys).await?);
    }
    let server_addr: SocketAddr = api.base.trim_start_matches("http://").parse()?;
    let ws = connect_viewer(server_addr, &opening, 0, None).await?;
    let (_, mut read) = ws.split();
    while let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::from_millis(500), read.next()).await
    {
    }
    let pid = server.child.id();
    let rss_before_kib = rss_kib(pid);
    let (stop_sampling, sampler) = sample_peaks(pid);
    let sent = Instant::now();
    let mut answer_ms = Vec::new();
    for r in api.answer_all(prepared, sent, Duration::ZERO).await {
        let (ok, ms) = r?;
        if !ok {
            bail!("a large bid's answer was refused");
        }
        answer_ms.push(ms);
    }
    answer_ms.sort_by(f64::total_cmp);
    // Decryptions as a public viewer sees them; digests (shown to evaluators and the agent
    // only) from the agent's view, polled.
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut decrypted = Vec::new();
    while decrypted.len() < args.large_bids {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(Some(Ok(msg))) = tokio::time::timeout(left, read.next()).await else {
            bail!("the large bids were not all decrypted within 300 s");
        };
        let Message::Text(text) = msg else { continue };
        let v: Value = serde_json::from_str(&text).unwrap_or_default();
        match v["kind"].as_str() {
            Some("bid.decrypted") => decrypted.push(sent.elapsed().as_secs_f64()),
            Some("bid.failed") => bail!("a large bid failed: {}", v["data"]),
            _ => {}
        }
    }
    stop_sampling.store(true, Ordering::Relaxed);
    let (peak_rss_kib, peak_threads) = sampler.await?;
    let mut digested: Vec<f64> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    while seen.len() < args.large_bids {
        if Instant::now() > deadline {
            bail!("the large bids' digests were not all recorded within 300 s");
        }
        for bid in api.bids(&opening).await? {
            if bid["plain_sm3"].is_string() && seen.insert(bid["id"].to_string()) {
                digested.push(sent.elapsed().as_secs_f64());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(Large {
        bids: args.large_bids,
        mib: args.large_bid_mib,
        answer_ms: (
            answer_ms[answer_ms.len() / 2],
            answer_ms[answer_ms.len() - 1],
        ),
        decrypted,
        digested,
        rss_before_kib,
        peak_rss_kib,
        peak_threads,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let limit = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(0);
    let hard_stop = Duration::from_secs(args.max_seconds);
    tokio::time::timeout(hard_stop, run(args, limit))
        .await
        .context("the run passed --max-seconds and was stopped")?
}

async fn run(args: Args, nofile: u64) -> anyhow::Result<()> {
    let server = spawn_server(&args).await?;
    let api = Arc::new(Api::login(&server.base).await?);
    let sign = crypto::generate_secret_key();
    let enc = crypto::generate_secret_key();
    let keys = Arc::new(Keys {
        sign_pem: crypto::public_key_pem(&sign.public_key())?,
        enc_pem: crypto::public_key_pem(&enc.public_key())?,
        sign,
        enc,
    });
    eprintln!(
        "broadcast: {} openings × {} viewers, {} events/s each, {} s",
        args.openings, args.viewers, args.rate, args.seconds
    );
    let b = broadcast_phase(&args, &server, &api, &keys).await?;
    let s = if args.phones > 0 {
        eprintln!("storm: {} phones", args.phones);
        Some(storm_phase(&args, &api, &keys).await?)
    } else {
        None
    };
    let l = if args.large_bids > 0 {
        eprintln!(
            "large bids: {} × {} MiB",
            args.large_bids, args.large_bid_mib
        );
        Some(large_phase(&args, &server, &api, &keys).await?)
    } else {
        None
    };
    let per_conn = if b.connected > 0 {
        (b.rss_connected_kib.saturating_sub(b.rss_before_kib)) as f64 * 1024.0 / b.connected as f64
    } else {
        0.0
    };
    let report = json!({
        "machine": {"cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0), "open_file_limit": nofile},
        "database": if args.database_url.is_some() { "postgresql" } else { "sqlite" },
        "args": {"openings": args.openings, "viewers": args.viewers, "rate": args.rate, "lockstep": args.lockstep, "storm_while_decrypting": args.storm_while_decrypting, "seconds": args.seconds, "phones": args.phones, "phone_rate": args.phone_rate},
        "broadcast": {
            "connected": b.connected, "connect_errors": b.connect_errors, "dropped_early": b.dropped_early,
            "events_generated": b.events_generated, "events_failed": b.events_failed, "frames_delivered": b.frames,
            "frames_per_second": b.frames as f64 / args.seconds as f64,
            "latency_ms": {"p50": b.all.0, "p99": b.all.1, "max": b.all.2},
            "per_opening": b.per_opening.iter().map(|p| json!({"p50": p.0, "p99": p.1, "max": p.2, "samples": p.3})).collect::<Vec<_>>(),
            "server_rss_kib": {"before": b.rss_before_kib, "connected": b.rss_connected_kib},
            "server_rss_bytes_per_connection": per_conn,
            "slow_viewer": {"dropped": b.slow_viewer_dropped, "its_opening_p99_ms": b.slow_opening_p99, "other_openings_p99_ms": b.others_p99},
        },
        "storm": s.as_ref().map(|s| json!({"summary_bid_mib": s.summary_bid_mib, "summary_latency_ms": s.summary_ms,
            "large_bid_decrypt_seconds": s.big_decrypt_secs, "phones": s.phones, "accepted": s.accepted, "refused": s.refused, "seconds": s.wall_secs,
            "answers_per_second": s.accepted as f64 / s.wall_secs, "latency_ms": {"p50": s.p50_ms, "p99": s.p99_ms, "max": s.max_ms}})),
        "large_bids": l.as_ref().map(|l| json!({"bids": l.bids, "mib_each": l.mib,
            "answer_latency_ms": {"p50": l.answer_ms.0, "max": l.answer_ms.1},
            "decrypted_seconds": {"first": l.decrypted.first(), "last": l.decrypted.last()},
            "digested_seconds": {"first": l.digested.first(), "last": l.digested.last()},
            "server_while_decrypting": {"rss_before_kib": l.rss_before_kib, "peak_rss_kib": l.peak_rss_kib, "peak_threads": l.peak_threads}})),
    });
    let mut md = format!(
        "# kaibiao load test\n\n{} openings × {} viewers, {} events/s per opening{} for {} s; {} phones.\n\n\
         | broadcast | value |\n|---|---|\n| connected | {} (errors {}, dropped early {}) |\n| events generated | {} |\n\
         | frames delivered | {} ({:.0}/s) |\n| delivery latency p50 / p99 / max | {} / {} / {} ms |\n\
         | server RSS before → connected | {} → {} KiB ({:.1} KB per connection) |\n\
         | slow viewer dropped | {} (its opening p99 {} ms, others p99 {} ms) |\n",
        args.openings,
        args.viewers,
        args.rate,
        if args.lockstep {
            " (all openings in lockstep)"
        } else {
            ""
        },
        args.seconds,
        args.phones,
        b.connected,
        b.connect_errors,
        b.dropped_early,
        b.events_generated,
        b.frames,
        b.frames as f64 / args.seconds as f64,
        b.all.0,
        b.all.1,
        b.all.2,
        b.rss_before_kib,
        b.rss_connected_kib,
        per_conn / 1000.0,
        b.slow_viewer_dropped,
        b.slow_opening_p99,
        b.others_p99,
    );
    if let Some(s) = &s {
        let mut arrival = if args.phone_rate > 0.0 {
            format!("steady, {}/s", args.phone_rate)
        } else {
            "all at once".to_owned()
        };
        if args.storm_while_decrypting {
            arrival.push_str(", while the large bid decrypts");
        }
        md.push_str(&format!(
            "\n| phone storm | value |\n|---|---|\n| summary of a {} MiB bid on the websocket after its answer | {:.1} ms (body decrypted in {:.2} s) |\n| arrival | {} |\n| answers accepted / refused | {} / {} |\n| answers/s | {:.0} |\n| answer latency p50 / p99 / max | {:.1} / {:.1} / {:.1} ms |\n",
            s.summary_bid_mib, s.summary_ms, s.big_decrypt_secs,
            arrival,
            s.accepted, s.refused, s.accepted as f64 / s.wall_secs, s.p50_ms, s.p99_ms, s.max_ms
        ));
    }
    if let Some(l) = &l {
        let total = (l.bids * l.mib) as f64 / 1024.0;
        let last = |v: &[f64]| v.last().copied().unwrap_or(f64::NAN);
        md.push_str(&format!(
            "\n| large bids | value |\n|---|---|\n| bids answered at once | {} × {} MiB ({total:.2} GiB) |\n\
             | answer latency p50 / max | {:.1} / {:.1} ms |\n\
             | all decrypted after the answers | {:.2} s ({:.2} GiB/s; first at {:.2} s) |\n\
             | all plaintext digests recorded | {:.2} s (first at {:.2} s) |\n\
             | server RSS before → peak while decrypting; peak threads | {} → {} KiB; {} |\n",
            l.bids, l.mib, l.answer_ms.0, l.answer_ms.1,
            last(&l.decrypted), total / last(&l.decrypted), l.decrypted.first().copied().unwrap_or(f64::NAN),
            last(&l.digested), l.digested.first().copied().unwrap_or(f64::NAN),
            l.rss_before_kib, l.peak_rss_kib, l.peak_threads,
        ));
    }
    std::fs::create_dir_all(&args.out)?;
    std::fs::write(args.out.join("latest.md"), &md)?;
    std::fs::write(
        args.out.join("latest.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    println!("{md}");
    // A run that lost connections or had answers refused says so by its exit status (after
    // writing its report), so that CI's short run of the harness fails on it.
    let mut faults = Vec::new();
    if b.connect_errors > 0 {
        faults.push(format!("{} viewers could not connect", b.connect_errors));
    }
    if b.events_failed > 0 {
        faults.push(format!("{} events could not be stored", b.events_failed));
    }
    let expected = b.events_generated as usize * args.viewers;
    if b.connect_errors == 0 && b.events_received < expected {
        faults.push(format!(
            "the viewers received {} events of {expected} (each viewer every event of its opening)",
            b.events_received
        ));
    }
    if b.dropped_early > 0 {
        faults.push(format!(
            "{} viewers that read every frame were dropped",
            b.dropped_early
        ));
    }
    if let Some(s) = &s
        && s.refused > 0
    {
        faults.push(format!("{} phone answers were refused", s.refused));
    }
    anyhow::ensure!(
        faults.is_empty(),
        "the run had errors (the report above was written): {}",
        faults.join("; ")
    );
    Ok(())
}
