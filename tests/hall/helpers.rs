use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use awc::Client;
use futures_util::{SinkExt, StreamExt};
use kaibiao::config::Settings;
use kaibiao::crypto;
use kaibiao::domain::{BidSummary, Uscc};
use kaibiao::engine::{self, NoProgress, SealParams};
use kaibiao::phone::{self, ChallengeView};
use kaibiao::server::Application;
use serde_json::{Value, json};
use sqlx::Connection;

/// Runs a test body on SQLite and on PostgreSQL.
#[macro_export]
macro_rules! on_both_databases {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[actix_web::test]
            async fn sqlite() {
                super::$name($crate::helpers::Backend::Sqlite).await
            }
            #[actix_web::test]
            async fn postgres() {
                match $crate::helpers::postgres_url() {
                    Some(url) => super::$name($crate::helpers::Backend::Postgres(url)).await,
                    None => eprintln!("SKIPPED on PostgreSQL: set KAIBIAO_TEST_POSTGRES_URL (e.g. postgres://postgres@127.0.0.1/test) to run it"),
                }
            }
        }
    )*};
}

#[derive(Clone, Debug)]
pub enum Backend {
    Sqlite,
    Postgres(String),
}

pub fn postgres_url() -> Option<String> {
    match std::env::var("KAIBIAO_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => None,
    }
}

pub const ADMIN_PASSWORD: &str = "correct horse battery";
pub const TENDER: &str = "ZB-TEST-001";

pub struct TestApp {
    pub base: String,
    pub port: u16,
    pub client: Client,
    pub token: String,
    pub offset: Arc<AtomicI64>,
    pub dir: tempfile::TempDir,
    pub settings: Settings,
    /// None once [`TestApp::stop`]ped.
    pub server: Option<Server>,
    /// The server's hall, in this process: what it did, read after it stopped.
    pub hall: kaibiao::hall::Hall,
}

fn clock(offset: Arc<AtomicI64>) -> kaibiao::hall::Clock {
    let system = kaibiao::hall::system_clock();
    Arc::new(move || system() + offset.load(Ordering::SeqCst))
}

async fn fresh_database(backend: &Backend, dir: &std::path::Path) -> String {
    match backend {
        Backend::Sqlite => format!("sqlite://{}/test.db", dir.display()),
        Backend::Postgres(url) => {
            let name = format!(
                "kaibiao_test_{}",
                hex::encode(crypto::random_bytes::<6>().unwrap())
            );
            let mut conn = sqlx::PgConnection::connect(url)
                .await
                .expect("KAIBIAO_TEST_POSTGRES_URL is set but PostgreSQL does not answer there");
            sqlx::query(&format!("CREATE DATABASE {name}"))
                .execute(&mut conn)
                .await
                .unwrap();
            let (head, _) = url.rsplit_once('/').unwrap();
            format!("{head}/{name}")
        }
    }
}

pub async fn spawn_app(backend: &Backend) -> TestApp {
    spawn_app_with(backend, |_| {}).await
}

/// A server with some settings changed from the tests' defaults.
pub async fn spawn_app_with(backend: &Backend, change: impl FnOnce(&mut Settings)) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = Settings {
        bind: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().join("data"),
        database_url: fresh_database(backend, dir.path()).await,
        admin_password: Some(ADMIN_PASSWORD.into()),
        challenge_ttl_secs: 60,
        ..Settings::default()
    };
    change(&mut settings);
    start(settings, dir, Arc::new(AtomicI64::new(0))).await
}

async fn start(mut settings: Settings, dir: tempfile::TempDir, offset: Arc<AtomicI64>) -> TestApp {
    let app = Application::build_with_clock(settings.clone(), clock(offset.clone()))
        .await
        .unwrap();
    let port = app.port();
    let hall = app.hall().clone();
    settings.bind = format!("127.0.0.1:{port}").parse().unwrap();
    let server = Some(run(app));
    let client = Client::builder().timeout(Duration::from_secs(120)).finish();
    let base = format!("http://127.0.0.1:{port}");
    let mut res = client
        .post(format!("{base}/api/login"))
        .send_json(&json!({"username": "admin", "password": ADMIN_PASSWORD}))
        .await
        .unwrap();
    assert!(res.status().is_success(), "login failed");
    let cookie = res.cookie("kaibiao_session").expect("a session cookie");
    let _ = res.body().await;
    let mut res = client
        .post(format!("{base}/api/tokens"))
        .cookie(cookie)
        .send()
        .await
        .unwrap();
    let token: Value = res.json().await.unwrap();
    TestApp {
        base,
        port,
        client,
        token: token["token"].as_str().unwrap().to_owned(),
        offset,
        dir,
        settings,
        server,
        hall,
    }
}

/// Runs the server in the test's runtime.
fn run(app: Application) -> Server {
    let (handle, run) = app.into_parts();
    Server {
        handle,
        running: actix_web::rt::spawn(run),
    }
}

/// A running server: its handle, and the task that ends when it has stopped and let go of its
/// data folder and database.
pub struct Server {
    handle: actix_web::dev::ServerHandle,
    running: actix_web::rt::task::JoinHandle<std::io::Result<()>>,
}

impl Server {
    /// Stops it gracefully and waits until the next server may start on its data.
    pub async fn stop(self) {
        self.handle.stop(true).await;
        self.running.await.unwrap().unwrap();
    }
}

/// A bidder with its keys and sealed bid.
pub struct TestBidder {
    pub uscc: Uscc,
    pub name: String,
    pub sign: sm2::SecretKey,
    pub enc: sm2::SecretKey,
    pub data: Vec<u8>,
    pub file: PathBuf,
    pub summary: BidSummary,
}

impl TestBidder {
    /// Seals `len` bytes with 16 KiB chunks.
    pub fn new(dir: &std::path::Path, i: usize, len: usize) -> Self {
        let uscc = Uscc::with_check_digit(&format!("9144030000{:07}", 5000 + i)).unwrap();
        let name = format!("测试建设有限公司{i}");
        let sign = crypto::generate_secret_key();
        let enc = crypto::generate_secret_key();
        let data: Vec<u8> = (0..len).map(|j| ((j * 31 + i * 7) % 253) as u8).collect();
        let plain = dir.join(format!("plain{i}"));
        std::fs::write(&plain, &data).unwrap();
        let summary = BidSummary {
            bidder_name: name.clone(),
            price_fen: 10_000_000 + i as u64,
            duration_days: 100 + i as u32,
            quality: "合格".into(),
            fields: Default::default(),
        };
        let signer =
            crypto::load_public_pem(&crypto::public_key_pem(&sign.public_key()).unwrap()).unwrap();
        let file = dir.join(format!("bid{i}.kbid"));
        engine::seal_file(
            &plain,
            &file,
            &SealParams {
                tender_id: TENDER,
                bidder: uscc.clone(),
                summary: &summary,
                recipients: &[enc.public_key()],
                sign_key: &sign,
                signer: &signer,
                chunk_size: 16 * 1024,
                created_at: 0,
            },
            &NoProgress,
        )
        .unwrap();
        Self {
            uscc,
            name,
            sign,
            enc,
            data,
            file,
            summary,
        }
    }

    pub fn registration(&self) -> Value {
        json!({
            "uscc": self.uscc.as_str(),
            "name": self.name,
            "sign_keys": [crypto::public_key_pem(&self.sign.public_key()).unwrap()],
            "enc_keys": [crypto::public_key_pem(&self.enc.public_key()).unwrap()],
        })
    }
}

/// A response's status and JSON body.
pub struct Reply {
    pub status: u16,
    pub body: Value,
}

impl TestApp {
    pub fn now_ms(&self) -> i64 {
        kaibiao::hall::system_clock()() + self.offset.load(Ordering::SeqCst)
    }

    /// The body of `GET path` as anyone gets it, byte for byte.
    pub async fn get_bytes(&self, path: &str) -> Vec<u8> {
        let mut res = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        res.body().limit(64 << 20).await.unwrap().to_vec()
    }

    /// The server's `/metrics`, as anyone gets them.
    pub async fn metrics_text(&self) -> String {
        String::from_utf8(self.get_bytes("/metrics").await).unwrap()
    }

    /// One number of the server's `/metrics` (`kaibiao_` + `name`).
    pub async fn metric(&self, name: &str) -> f64 {
        let text = self.metrics_text().await;
        let name = format!("kaibiao_{name} ");
        text.lines()
            .find(|l| l.starts_with(&name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {name}in /metrics"))
    }

    /// Moves the server's clock forward.
    pub fn advance_secs(&self, secs: i64) {
        self.offset.fetch_add(secs * 1000, Ordering::SeqCst);
    }

    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        auth: Option<&str>,
    ) -> Reply {
        let url = format!("{}{path}", self.base);
        let mut req = match method {
            "GET" => self.client.get(url),
            "POST" => self.client.post(url),
            "PUT" => self.client.put(url),
            other => panic!("{other}"),
        };
        if let Some(token) = auth {
            req = req.bearer_auth(token);
        }
        let mut res = match body {
            Some(b) => req.send_json(&b).await.unwrap(),
            None => req.send().await.unwrap(),
        };
        let bytes = res.body().limit(64 << 20).await.unwrap();
        Reply {
            status: res.status().as_u16(),
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        }
    }

    pub async fn agent(&self, method: &str, path: &str, body: Option<Value>) -> Reply {
        self.call(method, path, body, Some(&self.token.clone()))
            .await
    }

    /// Creates an opening whose deadline and opening time are `in_secs` from now.
    pub async fn create_opening(&self, in_secs: i64, limit_secs: i64) -> String {
        let at = self.now_ms() + in_secs * 1000;
        let r = self
            .agent(
                "POST",
                "/api/openings",
                Some(json!({"tender_id": TENDER, "name": "测试工程施工招标",
                "deadline_ms": at, "opening_ms": at, "decrypt_limit_secs": limit_secs})),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        r.body["id"].as_str().unwrap().to_owned()
    }

    /// An opening (deadline and opening time `in_secs` from now) with these bidders registered
    /// and their bids uploaded.
    pub async fn opening_with_bids(
        &self,
        bidders: &[&TestBidder],
        in_secs: i64,
        limit_secs: i64,
    ) -> String {
        let opening = self.create_opening(in_secs, limit_secs).await;
        for b in bidders {
            self.register(&opening, b).await;
            let r = self.upload(&opening, b).await;
            assert_eq!(r.status, 201, "{}", r.body);
        }
        opening
    }

    /// An agent's action on an opening: `start-decryption`, `release`, …
    pub async fn act(&self, opening: &str, action: &str) -> Reply {
        self.agent("POST", &format!("/api/openings/{opening}/{action}"), None)
            .await
    }

    /// Moves the clock `secs` forward and starts decryption.
    pub async fn start_after(&self, opening: &str, secs: i64) {
        self.advance_secs(secs);
        let r = self.act(opening, "start-decryption").await;
        assert_eq!(r.status, 200, "{}", r.body);
    }

    pub async fn register(&self, opening: &str, bidder: &TestBidder) {
        let r = self
            .agent(
                "POST",
                &format!("/api/openings/{opening}/bidders"),
                Some(bidder.registration()),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
    }

    pub async fn upload_bytes(&self, opening: &str, uscc: &str, bytes: Vec<u8>) -> Reply {
        let mut res = self
            .client
            .put(format!("{}/api/openings/{opening}/bids/{uscc}", self.base))
            .send_body(bytes)
            .await
            .unwrap();
        let body = res.body().await.unwrap();
        Reply {
            status: res.status().as_u16(),
            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        }
    }

    pub async fn upload(&self, opening: &str, bidder: &TestBidder) -> Reply {
        self.upload_bytes(
            opening,
            bidder.uscc.as_str(),
            std::fs::read(&bidder.file).unwrap(),
        )
        .await
    }

    /// The opening as its agent sees it (before the opening, the public sees no bids).
    pub async fn snapshot(&self, opening: &str) -> Value {
        self.agent("GET", &format!("/api/openings/{opening}"), None)
            .await
            .body
    }

    /// The opening as anyone sees it, on the hall display.
    pub async fn public_snapshot(&self, opening: &str) -> Value {
        self.call("GET", &format!("/api/openings/{opening}"), None, None)
            .await
            .body
    }

    /// The QR URL shown for a bidder's bid, if any.
    pub async fn qr_url(&self, opening: &str, bidder: &TestBidder) -> Option<String> {
        let s = self.snapshot(opening).await;
        s["bids"]
            .as_array()?
            .iter()
            .find(|b| b["bidder_code"] == bidder.uscc.as_str())?["qr"]["url"]
            .as_str()
            .map(str::to_owned)
    }

    pub async fn challenge(&self, qr_url: &str) -> Reply {
        let url = phone::challenge_url(qr_url, None);
        let path = url.split_once(&self.base).unwrap().1.to_owned();
        self.call("GET", &path, None, None).await
    }

    pub async fn post_answer(
        &self,
        view: &ChallengeView,
        answer: &kaibiao::phone::Answer,
    ) -> Reply {
        let path = view.answer_url.split_once(&self.base).unwrap().1.to_owned();
        self.call(
            "POST",
            &path,
            Some(serde_json::to_value(answer).unwrap()),
            None,
        )
        .await
    }

    /// The whole phone flow for a bidder: fetch the QR's challenge, answer it.
    pub async fn scan(&self, opening: &str, bidder: &TestBidder) -> Reply {
        let url = self
            .qr_url(opening, bidder)
            .await
            .expect("a QR code is shown");
        let r = self.challenge(&url).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let view: ChallengeView = serde_json::from_value(r.body).unwrap();
        let answer = phone::answer_challenge(&view, &bidder.enc, &bidder.sign).unwrap();
        self.post_answer(&view, &answer).await
    }

    /// Polls until every bid has left the decrypting state (bounded, not a speed check).
    pub async fn wait_until_settled(&self, opening: &str) -> Value {
        for _ in 0..1200 {
            let s = self.snapshot(opening).await;
            let busy = s["bids"]
                .as_array()
                .unwrap()
                .iter()
                .any(|b| b["state"] == "decrypting");
            let digests_pending = s["bids"]
                .as_array()
                .unwrap()
                .iter()
                .any(|b| b["state"] == "decrypted")
                && self.digests_pending(opening).await;
            if !busy && !digests_pending {
                return s;
            }
            actix_web::rt::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the opening did not settle within two minutes");
    }

    /// Waits (bounded) until `count` bids are decrypting with a delay shown (their decryption
    /// failed through the platform); returns the snapshot.
    pub async fn wait_until_delayed(&self, opening: &str, count: usize) -> Value {
        let delayed = |s: &Value| {
            s["bids"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|x| x["state"] == "decrypting" && x["delay"].is_string())
                .count()
        };
        for _ in 0..300 {
            let s = self.snapshot(opening).await;
            if delayed(&s) == count {
                return s;
            }
            actix_web::rt::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{count} bids were not shown as delayed within 30 s");
    }

    /// Replaces the folder of decrypted files with a file: every decryption then fails through
    /// the platform, as on a full disk. Undone by [`TestApp::mend_decrypted_folder`].
    pub fn break_decrypted_folder(&self) {
        let plain = self.settings.data_dir.join("plain");
        std::fs::remove_dir(&plain).unwrap();
        std::fs::write(&plain, b"not a folder").unwrap();
    }

    pub fn mend_decrypted_folder(&self) {
        let plain = self.settings.data_dir.join("plain");
        std::fs::remove_file(&plain).unwrap();
        std::fs::create_dir(&plain).unwrap();
    }

    async fn digests_pending(&self, opening: &str) -> bool {
        let r = self
            .agent("GET", &format!("/api/openings/{opening}"), None)
            .await;
        r.body["bids"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["state"] == "decrypted" && b["plain_sm3"].is_null())
    }

    /// Runs one SQL statement with one text parameter on the server's database, behind its back.
    pub async fn sql(&self, statement: &str, param: &str) {
        let url = &self.settings.database_url;
        let changed = if url.starts_with("postgres") {
            let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
            let done = sqlx::query(statement).bind(param).execute(&mut conn);
            done.await.unwrap().rows_affected()
        } else {
            let mut conn = sqlx::SqliteConnection::connect(url).await.unwrap();
            let done = sqlx::query(statement).bind(param).execute(&mut conn);
            done.await.unwrap().rows_affected()
        };
        assert_eq!(changed, 1, "`{statement}` changed one row");
    }

    /// A new evaluator token for an opening, as the agent issues it.
    pub async fn evaluator_token(&self, opening: &str) -> String {
        let r = self
            .agent(
                "POST",
                &format!("/api/openings/{opening}/evaluator-tokens"),
                None,
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        r.body["token"].as_str().unwrap().to_owned()
    }

    /// All events of an opening as the agent sees them.
    pub async fn events(&self, opening: &str) -> Vec<Value> {
        self.agent("GET", &format!("/api/openings/{opening}/events"), None)
            .await
            .body
            .as_array()
            .unwrap()
            .clone()
    }

    /// All events of an opening as the public sees them.
    pub async fn public_events(&self, opening: &str) -> Vec<Value> {
        let r = self
            .call(
                "GET",
                &format!("/api/openings/{opening}/events"),
                None,
                None,
            )
            .await;
        r.body.as_array().expect("a list of events").clone()
    }

    /// The opening record as served to anyone (`{record, digest, log_head}`), checked: it agrees
    /// with the opening's tables (the agent's view of them), and anyone folds the public log up
    /// to the point it names into the same record.
    pub async fn checked_record(&self, opening: &str) -> Value {
        use kaibiao::domain::record::RecordFold;
        let path = format!("/api/openings/{opening}/record");
        let served = self.call("GET", &path, None, None).await;
        assert_eq!(served.status, 200, "{}", served.body);
        let rec = &served.body["record"];
        let tables = self.snapshot(opening).await;
        for key in [
            "id",
            "tender_id",
            "name",
            "deadline_ms",
            "opening_ms",
            "decrypt_limit_secs",
            "decrypt_started_ms",
            "decrypt_deadline_ms",
            "state",
            "failure",
        ] {
            assert_eq!(rec["opening"][key], tables["opening"][key], "opening.{key}");
        }
        let (bids, rows) = (
            rec["bids"].as_array().unwrap(),
            tables["bids"].as_array().unwrap(),
        );
        assert_eq!(bids.len(), rows.len(), "{rec}");
        for (bid, row) in bids.iter().zip(rows) {
            assert_eq!(bid["bidder"]["uscc"], row["bidder_code"]);
            for key in [
                "received_ms",
                "size",
                "sm3",
                "state",
                "fault",
                "failure",
                "summary",
            ] {
                assert_eq!(bid[key], row[key], "bid.{key} of {row}");
            }
        }
        let without_bid = rec["bidders_without_bid"].as_array().unwrap();
        for b in tables["bidders"].as_array().unwrap() {
            let recorded = bids
                .iter()
                .map(|x| &x["bidder"])
                .chain(without_bid)
                .find(|x| x["uscc"] == b["uscc"])
                .unwrap_or_else(|| panic!("{b} is in the record"));
            assert_eq!(recorded["signed_in_ms"], b["signed_in_ms"], "{b}");
        }
        assert_eq!(rec["objections"], tables["objections"]);

        let seq = rec["log"]["seq"].as_i64().unwrap();
        let mut fold = RecordFold::new(opening);
        let rows: Vec<kaibiao::db::EventRow> =
            serde_json::from_value(Value::Array(self.public_events(opening).await)).unwrap();
        kaibiao::hall::fold_rows(&mut fold, rows.iter().filter(|e| e.seq <= seq)).unwrap();
        let hash = rec["log"]["hash"].as_str().unwrap();
        assert_eq!(&fold.record(seq, hash).unwrap(), rec);
        served.body
    }

    /// Recomputes every hash of the opening's log from its stored events, as whoever can write
    /// the database could after changing one (chain version 2).
    pub async fn rechain(&self, opening: &str) {
        let rows: Vec<kaibiao::db::EventRow> =
            serde_json::from_value(Value::Array(self.events(opening).await)).unwrap();
        let mut prev = kaibiao::hall::GENESIS.to_owned();
        for mut row in rows {
            row.hash = kaibiao::hall::chain_hash(2, &prev, &row);
            let statement = format!(
                "UPDATE events SET hash = '{}' WHERE opening_id = $1 AND seq = {}",
                row.hash, row.seq
            );
            self.sql(&statement, opening).await;
            prev = row.hash;
        }
    }

    /// The payloads of the opening's public events of `kind`, in order.
    pub async fn public_payloads(&self, opening: &str, kind: &str) -> Vec<Value> {
        payloads_of(&self.public_events(opening).await, kind)
    }

    /// The payloads of all the opening's events of `kind` (as the agent sees them), in order.
    pub async fn payloads(&self, opening: &str, kind: &str) -> Vec<Value> {
        payloads_of(&self.events(opening).await, kind)
    }

    /// The opening's SM3 hash chain verifies end to end.
    pub async fn assert_chain_valid(&self, opening: &str) {
        let verdict = self.verify_chain(opening).await;
        assert_eq!(verdict["valid"], true, "{verdict}");
    }

    /// What the hall says of an opening's SM3 hash chain (`/events/verify`), its explanation
    /// (checked to be there) left out.
    pub async fn verify_chain(&self, opening: &str) -> Value {
        self.verify_chain_at(opening, None).await
    }

    /// What the hall says of an opening's log checked against a signed `head`, if one is given.
    pub async fn verify_chain_at(&self, opening: &str, head: Option<&Value>) -> Value {
        let mut path = format!("/api/openings/{opening}/events/verify");
        if let Some(head) = head {
            path += &format!(
                "?seq={}&hash={}",
                head["seq"],
                head["hash"].as_str().unwrap()
            );
        }
        let mut r = self.agent("GET", &path, None).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let reason = r.body.as_object_mut().unwrap().remove("reason");
        assert!(reason.is_some_and(|r| r.is_string()), "{}", r.body);
        r.body
    }

    /// The key that checks the platform's signatures, from `/api/platform-key`.
    pub async fn platform_key(&self) -> sm2::PublicKey {
        let r = self.call("GET", "/api/platform-key", None, None).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let pem = r.body["public_key_pem"].as_str().unwrap();
        *kaibiao::crypto::load_public_pem(pem).unwrap().key()
    }

    /// What another server on these settings, changed by `change`, says when it cannot start.
    pub async fn start_error(&self, change: impl FnOnce(&mut Settings)) -> String {
        let mut settings = self.settings.clone();
        settings.bind = "127.0.0.1:0".parse().unwrap();
        change(&mut settings);
        match Application::build_with_clock(settings, clock(self.offset.clone())).await {
            Ok(_) => panic!("another server started"),
            Err(e) => format!("{e:#}"),
        }
    }

    /// Stops the server (gracefully), leaving its data for the next.
    pub async fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.stop().await;
        }
    }

    /// Stops the server and starts a new one on the same database and data folder.
    pub async fn restart(mut self) -> TestApp {
        self.stop().await;
        let mut settings = self.settings.clone();
        settings.bind = "127.0.0.1:0".parse().unwrap();
        settings.admin_password = None;
        start(settings, self.dir, self.offset).await
    }

    pub async fn cleanup(mut self) {
        self.stop().await;
        if self.settings.database_url.starts_with("postgres") {
            let (head, name) = self.settings.database_url.rsplit_once('/').unwrap();
            if let Ok(mut conn) = sqlx::PgConnection::connect(&format!("{head}/postgres")).await {
                let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut conn)
                    .await;
            }
        }
    }
}

/// A websocket client that records events.
pub struct Viewer {
    framed: actix_codec::Framed<awc::BoxedSocket, awc::ws::Codec>,
}

impl Viewer {
    pub async fn connect(app: &TestApp, opening: &str, since: i64, token: Option<&str>) -> Viewer {
        let mut url = format!(
            "ws://127.0.0.1:{}/ws/openings/{opening}?since={since}",
            app.port
        );
        if let Some(t) = token {
            url.push_str(&format!("&token={t}"));
        }
        let (_, framed) = app
            .client
            .ws(url)
            .connect()
            .await
            .expect("websocket connects");
        Viewer { framed }
    }

    /// The next JSON message, answering pings; None on close or after `wait`.
    pub async fn next(&mut self, wait: Duration) -> Option<Value> {
        loop {
            let frame = actix_web::rt::time::timeout(wait, self.framed.next())
                .await
                .ok()??
                .ok()?;
            match frame {
                awc::ws::Frame::Text(bytes) => return serde_json::from_slice(&bytes).ok(),
                awc::ws::Frame::Ping(p) => {
                    let _ = self.framed.send(awc::ws::Message::Pong(p)).await;
                }
                awc::ws::Frame::Close(_) => return None,
                _ => {}
            }
        }
    }

    /// Reads events (skipping other messages) until one satisfies `stop`, collecting them.
    pub async fn events_until(&mut self, stop: impl Fn(&Value) -> bool) -> Vec<Value> {
        let mut seen = Vec::new();
        while let Some(m) = self.next(Duration::from_secs(60)).await {
            if m["type"] == "event" {
                let done = stop(&m);
                seen.push(m);
                if done {
                    return seen;
                }
            }
        }
        panic!(
            "the websocket closed before the awaited event; saw {} events",
            seen.len()
        );
    }

    pub async fn close(mut self) {
        let _ = self.framed.send(awc::ws::Message::Close(None)).await;
    }

    /// Reads until the server closes the connection; false if it is still open after `wait`.
    pub async fn closed_within(&mut self, wait: Duration) -> bool {
        let until = std::time::Instant::now() + wait;
        loop {
            let left = until.saturating_duration_since(std::time::Instant::now());
            match actix_web::rt::time::timeout(left, self.framed.next()).await {
                Err(_) => return false,
                Ok(None) | Ok(Some(Err(_))) | Ok(Some(Ok(awc::ws::Frame::Close(_)))) => {
                    return true;
                }
                Ok(Some(Ok(_))) => {}
            }
        }
    }
}

/// The payloads of the events of `kind` among `events`, in order.
pub fn payloads_of(events: &[Value], kind: &str) -> Vec<Value> {
    events
        .iter()
        .filter(|e| e["kind"] == kind)
        .map(|e| serde_json::from_str(e["payload"].as_str().expect("a payload")).expect("JSON"))
        .collect()
}
