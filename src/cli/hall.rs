//! The server side of the command: serve, admin, phone, demo.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

use kaibiao::config::Settings;
use kaibiao::crypto;
use kaibiao::domain::{BidSummary, Uscc};
use kaibiao::engine::{self, NoProgress, SealParams};
use kaibiao::hall::{NewBidder, NewOpening};
use kaibiao::phone::{self, Answer, ChallengeView};
use kaibiao::server::Application;

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on (default 127.0.0.1:8080).
    #[arg(long)]
    bind: Option<std::net::SocketAddr>,
    /// Data folder (default ./data).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// A TOML settings file; KAIBIAO_* environment variables override it.
    #[arg(long)]
    config: Option<PathBuf>,
}

impl ServeArgs {
    fn settings(&self) -> anyhow::Result<Settings> {
        let mut settings = Settings::load(self.config.as_deref())?;
        if let Some(bind) = self.bind {
            settings.bind = bind;
        }
        if let Some(dir) = &self.data_dir {
            settings.data_dir = dir.clone();
        }
        Ok(settings)
    }
}

pub fn init_tracing(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).try_init();
}

pub fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let settings = args.settings()?;
    init_tracing(&settings.log);
    // Every websocket viewer holds a descriptor: raise the soft limit to the hard one.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::info!(open_files = n, "open-file limit"),
        Err(error) => tracing::warn!(%error, "cannot raise the open-file limit"),
    }
    actix_web::rt::System::new().block_on(async move {
        let app = Application::build(settings).await?;
        tracing::info!(port = app.port(), "kaibiao is serving; open /console");
        app.run_until_stopped().await?;
        Ok(ExitCode::SUCCESS)
    })
}

pub fn create_agent(
    args: ServeArgs,
    username: String,
    password: Option<String>,
) -> anyhow::Result<ExitCode> {
    let mut settings = args.settings()?;
    settings.bind = "127.0.0.1:0".parse()?;
    let password = match password.or_else(|| std::env::var("KAIBIAO_AGENT_PASSWORD").ok()) {
        Some(p) => p,
        None => rpassword_prompt()?,
    };
    actix_web::rt::System::new().block_on(async move {
        let db = kaibiao::db::Db::connect(&settings.database_url()).await?;
        let hall = kaibiao::hall::Hall::open(
            db,
            settings,
            kaibiao::hall::system_clock(),
            Default::default(),
        )
        .await?;
        hall.create_agent(&username, &password).await?;
        println!("created the agent {username}");
        Ok(ExitCode::SUCCESS)
    })
}

fn rpassword_prompt() -> anyhow::Result<String> {
    use std::io::BufRead;
    eprint!("password for the new agent (at least 8 characters): ");
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim_end().to_owned())
}

/// The reference phone's HTTP client.
pub(super) fn phone_client() -> awc::Client {
    awc::Client::builder()
        .timeout(Duration::from_secs(30))
        .finish()
}

/// `GET url`'s body; a refusal is told with the hall's reason, as `what` was refused.
pub(super) async fn phone_get(
    client: &awc::Client,
    url: &str,
    what: &str,
) -> anyhow::Result<Vec<u8>> {
    let mut res = client
        .get(url)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach the hall at {url}: {e}"))?;
    let body = res.body().limit(16 << 20).await?;
    if !res.status().is_success() {
        let text: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        anyhow::bail!(
            "the hall refused {what}: {}",
            text["message"].as_str().unwrap_or("unknown reason")
        );
    }
    Ok(body.to_vec())
}

/// `POST`s `body` as JSON to `url` and returns the hall's reply; a refusal is told with its
/// reason.
async fn phone_post(
    client: &awc::Client,
    url: &str,
    body: &impl serde::Serialize,
) -> anyhow::Result<serde_json::Value> {
    let mut res = client
        .post(url)
        .send_json(body)
        .await
        .map_err(|e| anyhow::anyhow!("cannot send the answer: {e}"))?;
    let bytes = res.body().await?;
    let reply: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    if !res.status().is_success() {
        anyhow::bail!(
            "the hall refused the answer: {}",
            reply["message"].as_str().unwrap_or("unknown reason")
        );
    }
    Ok(reply)
}

/// Fetches a challenge, answers it, and returns the server's reply.
pub async fn scan(
    url: &str,
    enc: &sm2::SecretKey,
    sign: &sm2::SecretKey,
) -> anyhow::Result<serde_json::Value> {
    let client = phone_client();
    let body = phone_get(&client, url, "the QR code").await?;
    let view: ChallengeView =
        serde_json::from_slice(&body).context("the hall's answer is not a challenge")?;
    phone::check_hall_key(&view, url)?;
    let answer: Answer = phone::answer_challenge(&view, enc, sign)?;
    phone_post(&client, &view.answer_url, &answer).await
}

/// A private key from a PKCS#8 PEM file.
fn private_key(path: &std::path::Path) -> anyhow::Result<sm2::SecretKey> {
    Ok(crypto::load_private_pem(
        &std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
    )?)
}

/// What the reference phone does with the hall's other codes and an objection.
pub enum PhoneAct<'a> {
    /// Sign in with the sign-in QR code's URL.
    SignIn { url: &'a str },
    /// Log in the browser that shows the login code whose URL this is.
    Login { url: &'a str },
    /// Confirm the record whose QR code's URL this is.
    Confirm { url: &'a str },
    /// Raise an objection at the opening `opening` of the hall at `server`.
    Object {
        server: &'a str,
        opening: &'a str,
        text: &'a str,
    },
}

/// Signs in, confirms the record or raises an objection as bidder `bidder` with the signing key
/// in `sign_key`.
pub fn phone_act(
    act: PhoneAct<'_>,
    bidder: &str,
    sign_key: &std::path::Path,
) -> anyhow::Result<ExitCode> {
    let sign = private_key(sign_key)?;
    actix_web::rt::System::new().block_on(async move {
        println!("{}", phone_do(&phone_client(), act, bidder, &sign).await?);
        Ok(ExitCode::SUCCESS)
    })
}

/// Does `act` as bidder `bidder` signing with `sign`, over HTTP as a phone would; what was done.
async fn phone_do(
    client: &awc::Client,
    act: PhoneAct<'_>,
    bidder: &str,
    sign: &sm2::SecretKey,
) -> anyhow::Result<String> {
    Ok(match act {
        PhoneAct::SignIn { url } => {
            let view: phone::SignInView =
                serde_json::from_slice(&phone_get(client, url, "the sign-in code").await?)
                    .context("the hall's answer is not a sign-in")?;
            let answer = phone::sign_in(&view, bidder, sign)?;
            let reply = phone_post(client, &view.answer_url, &answer).await?;
            let at = reply["signed_in_ms"].as_i64().unwrap_or_default();
            format!(
                "signed in to {} {} at {}",
                view.tender_id,
                view.tender_name,
                kaibiao::hall::fmt_time(at)
            )
        }
        PhoneAct::Login { url } => {
            let view: phone::LoginView =
                serde_json::from_slice(&phone_get(client, url, "the login code").await?)
                    .context("the hall's answer is not a login code")?;
            let answer = phone::login(&view, bidder, sign)?;
            phone_post(client, &view.answer_url, &answer).await?;
            format!(
                "logged in to {} {} as {} (check code {}: the browser shows the same)",
                view.tender_id,
                view.tender_name,
                bidder.trim(),
                view.check_code
            )
        }
        PhoneAct::Confirm { url } => {
            let view: phone::RecordView =
                serde_json::from_slice(&phone_get(client, url, "the record's code").await?)
                    .context("the hall's answer is not a record to confirm")?;
            let record = phone_get(client, &view.record_url, "the record").await?;
            let answer = phone::confirm_record(&view, &record, bidder, sign)?;
            phone_post(client, &view.answer_url, &answer).await?;
            format!(
                "confirmed version {} of the record of {} {} (SM3 {})",
                view.version, view.tender_id, view.tender_name, view.digest
            )
        }
        PhoneAct::Object {
            server,
            opening,
            text,
        } => {
            let answer = phone::sign_objection(opening, bidder, text, sign)?;
            let url = format!(
                "{}/api/phone/objections/{opening}",
                server.trim_end_matches('/')
            );
            let reply = phone_post(client, &url, &answer).await?;
            format!("objection {} recorded", reply["n"])
        }
    })
}

/// Binds the certificates in `sign_cert` and `enc_cert` with the bind code at `url`.
pub fn phone_bind(
    url: &str,
    sign_cert: &std::path::Path,
    enc_cert: &std::path::Path,
    sign_key: &std::path::Path,
) -> anyhow::Result<ExitCode> {
    let sign = private_key(sign_key)?;
    let read = |path: &std::path::Path| {
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
    };
    let (sign_cert, enc_cert) = (read(sign_cert)?, read(enc_cert)?);
    actix_web::rt::System::new().block_on(async move {
        let said = bind(&phone_client(), url, &sign_cert, &enc_cert, &sign).await?;
        println!("{said}");
        Ok(ExitCode::SUCCESS)
    })
}

/// Binds `sign_cert` and `enc_cert` (PEM) with the bind code at `url`, over HTTP as a phone
/// would; what was done.
async fn bind(
    client: &awc::Client,
    url: &str,
    sign_cert: &str,
    enc_cert: &str,
    sign: &sm2::SecretKey,
) -> anyhow::Result<String> {
    let view: phone::BindView =
        serde_json::from_slice(&phone_get(client, url, "the bind code").await?)
            .context("the hall's answer is not a bind code")?;
    let answer = phone::bind(&view, sign_cert, enc_cert, sign)?;
    let reply = phone_post(client, &view.answer_url, &answer).await?;
    Ok(format!(
        "bound {} ({}) at {} {}: signing key {}, encryption key {}",
        view.bidder_name,
        view.bidder,
        view.tender_id,
        view.tender_name,
        reply["sign_key_id"].as_str().unwrap_or_default(),
        reply["enc_key_id"].as_str().unwrap_or_default()
    ))
}

pub fn phone_scan(
    payload: &str,
    server: Option<&str>,
    enc_key: &std::path::Path,
    sign_key: &std::path::Path,
) -> anyhow::Result<ExitCode> {
    let enc = private_key(enc_key)?;
    let sign = private_key(sign_key)?;
    let url = phone::challenge_url(payload, server);
    actix_web::rt::System::new().block_on(async move {
        let reply = scan(&url, &enc, &sign).await?;
        println!(
            "accepted: {}",
            serde_json::to_string_pretty(&reply["summary"])?
        );
        Ok(ExitCode::SUCCESS)
    })
}

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Number of bidders.
    #[arg(long, default_value_t = 5)]
    bidders: usize,
    /// Size of each bid in MiB.
    #[arg(long, default_value_t = 64)]
    size: u64,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    bind: std::net::SocketAddr,
}

const DEMO_NAMES: &[&str] = &[
    "华建", "中铁", "城投", "宏远", "鑫达", "安泰", "恒通", "正源", "博远", "天成",
];

pub fn demo(args: DemoArgs) -> anyhow::Result<ExitCode> {
    init_tracing("warn,kaibiao=info");
    let work = tempfile::Builder::new().prefix("kaibiao-demo").tempdir()?;
    let password = hex::encode(crypto::random_bytes::<8>()?);
    // The demo's own CA: the hall trusts it, and the bidders' phones bind its certificates.
    let ca = crypto::LocalCa::new("CN=kaibiao 演示 CA,O=kaibiao", 30)?;
    let cas = work.path().join("ca.pem");
    std::fs::write(&cas, ca.certificate_pem()?)?;
    let settings = Settings {
        bind: args.bind,
        data_dir: work.path().join("data"),
        admin_password: Some(password.clone()),
        trusted_cas: Some(cas),
        ..Settings::default()
    };
    println!("sealing {} bids of {} MiB each…", args.bidders, args.size);
    struct DemoBidder {
        uscc: Uscc,
        name: String,
        sign: sm2::SecretKey,
        enc: sm2::SecretKey,
        file: PathBuf,
    }
    let mut bidders = Vec::new();
    let sealing = std::time::Instant::now();
    for i in 0..args.bidders {
        let name = format!(
            "{}建设工程有限公司{}",
            DEMO_NAMES[i % DEMO_NAMES.len()],
            i + 1
        );
        let uscc = Uscc::with_check_digit(&format!("9135010000{:07}", 1000 + i))?;
        let sign = crypto::generate_secret_key();
        let enc = crypto::generate_secret_key();
        let plain = work.path().join(format!("plain{i}.bin"));
        {
            use std::io::Write;
            let mut f = std::io::BufWriter::new(std::fs::File::create(&plain)?);
            let block: Vec<u8> = (0..1024 * 1024)
                .map(|j| ((j * 7 + i * 13) % 251) as u8)
                .collect();
            for _ in 0..args.size {
                f.write_all(&block)?;
            }
        }
        let summary = BidSummary {
            bidder_name: name.clone(),
            price_fen: 98_000_000 + (i as u64 * 1_234_567) % 5_000_000,
            duration_days: 180 + (i as u32 % 5) * 10,
            quality: "合格".into(),
            fields: [("项目经理".to_owned(), format!("工程师{}", i + 1))].into(),
        };
        let signer = crypto::parse_public_der(
            &sm2::pkcs8::EncodePublicKey::to_public_key_der(&sign.public_key())?.into_vec(),
            false,
        )?;
        let file = work.path().join(format!("bid{i}.kbid"));
        engine::seal_file(
            &plain,
            &file,
            &SealParams {
                tender_id: "ZB-DEMO-2026-001",
                bidder: uscc.clone(),
                summary: &summary,
                recipients: &[enc.public_key()],
                sign_key: &sign,
                signer: &signer,
                chunk_size: kaibiao::format::DEFAULT_CHUNK_SIZE,
                created_at: 0,
            },
            &NoProgress,
        )?;
        std::fs::remove_file(plain)?;
        bidders.push(DemoBidder {
            uscc,
            name,
            sign,
            enc,
            file,
        });
    }

    // Uploading checks each bid whole (its digests and signature), which takes about as long as
    // sealing it did: the deadline leaves twice that, so large bids are not refused as late (on a
    // fast machine the demo still starts 20 s after the server).
    let upload_allowance = 20_000 + 2 * sealing.elapsed().as_millis() as i64;
    actix_web::rt::System::new().block_on(async move {
        let app = Application::build(settings).await?;
        let port = app.port();
        let hall = app.hall().clone();
        let server = actix_web::rt::spawn(app.run_until_stopped());
        let base = format!("http://127.0.0.1:{port}");
        let now = hall.now();
        let (agent, _) = hall.db().agent_by_username("admin").await?.context("the demo agent")?;
        let opening = hall
            .create_opening(&agent, NewOpening {
                tender_id: "ZB-DEMO-2026-001".into(),
                name: "某市政道路改造工程施工招标（演示）".into(),
                deadline_ms: now + upload_allowance,
                opening_ms: now + upload_allowance,
                decrypt_limit_secs: 600,
            })
            .await?;
        // Registered by code and name; each bidder's phone binds the demo CA's certificates
        // (扫码绑定) with the bind code the agent hands it.
        let client = awc::Client::builder().timeout(Duration::from_secs(600)).finish();
        for b in &bidders {
            hall.register_bidder(&opening.id, NewBidder {
                uscc: b.uscc.to_string(),
                name: b.name.clone(),
                sign_keys: Vec::new(),
                enc_keys: Vec::new(),
            })
            .await?;
            let code = hall.bind_code(&opening.id, b.uscc.as_str()).await?;
            let subject = format!("CN={},OU={}", b.name, b.uscc);
            let sign_cert = ca.issue(&subject, &b.sign.public_key(), crypto::CertUsage::Sign, 30)?;
            let enc_cert = ca.issue(&subject, &b.enc.public_key(), crypto::CertUsage::Encrypt, 30)?;
            println!("{}: {}", b.name, bind(&client, &code.url, &sign_cert, &enc_cert, &b.sign).await?);
        }
        println!("\n  hall display:  {base}/hall/{}\n  agent console: {base}/console  (user admin, password {password})\n", opening.id);
        for b in &bidders {
            let file = tokio::fs::File::open(&b.file).await?;
            let stream = tokio_util_stream(file);
            let mut res = client
                .put(format!("{base}/api/openings/{}/bids/{}", opening.id, b.uscc))
                .send_stream(stream)
                .await
                .map_err(|e| anyhow::anyhow!("upload: {e}"))?;
            let body = res.body().limit(1 << 20).await?;
            anyhow::ensure!(res.status().is_success(), "upload refused: {}", String::from_utf8_lossy(&body));
            println!("uploaded {} — receipt SM3 {}", b.name, serde_json::from_slice::<serde_json::Value>(&body)?["sm3"].as_str().unwrap_or(""));
        }
        // Every bidder but the last signs in (签到) with its phone.
        let sign_in = hall.sign_in_url(&opening.id);
        for b in &bidders[..bidders.len().saturating_sub(1)] {
            let act = PhoneAct::SignIn { url: &sign_in };
            println!("{}: {}", b.name, phone_do(&client, act, b.uscc.as_str(), &b.sign).await?);
        }
        let wait = (opening.opening_ms - hall.now()).max(0) as u64;
        println!("bid deadline in {}s; decryption starts then", wait / 1000);
        tokio::time::sleep(Duration::from_millis(wait + 200)).await;
        hall.start_decryption(&opening.id).await?;
        println!("decryption started: phones scan after random delays");
        let bidders = std::sync::Arc::new(bidders);
        for i in 0..bidders.len() {
            let hall = hall.clone();
            let opening_id = opening.id.clone();
            let bidders = bidders.clone();
            actix_web::rt::spawn(async move {
                let b = &bidders[i];
                let delay = 2 + (crypto::random_bytes::<1>().map(|r| r[0]).unwrap_or(0) as u64 % 8) + i as u64;
                tokio::time::sleep(Duration::from_secs(delay)).await;
                let snapshot = hall.snapshot(&opening_id, kaibiao::hall::Role::Public).await.ok();
                let url = snapshot.and_then(|s| {
                    s["bids"].as_array()?.iter().find(|x| x["bidder_code"] == b.uscc.as_str())?["qr"]["url"].as_str().map(str::to_owned)
                });
                match url {
                    Some(url) => match scan(&phone::challenge_url(&url, None), &b.enc, &b.sign).await {
                        Ok(_) => println!("{} scanned and answered", b.name),
                        Err(e) => println!("{}: {e:#}", b.name),
                    },
                    None => println!("{}: no QR code to scan", b.name),
                }
            });
        }
        // Once every bid is decrypted: an objection and its answer, the end of decryption, the
        // record issued and confirmed by every bidder's phone.
        let closing = {
            let (hall, opening_id, base) = (hall.clone(), opening.id.clone(), base.clone());
            async move {
                let limit = Duration::from_secs(opening.decrypt_limit_secs as u64);
                let started = std::time::Instant::now();
                while started.elapsed() < limit {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    let snapshot = hall.snapshot(&opening_id, kaibiao::hall::Role::Public).await?;
                    let bids = snapshot["bids"].as_array().cloned().unwrap_or_default();
                    if bids.iter().all(|b| matches!(b["state"].as_str(), Some("decrypted" | "failed"))) {
                        break;
                    }
                }
                let first = &bidders[0];
                let text = "请说明各投标人的解密用时是否一致";
                let act = PhoneAct::Object { server: &base, opening: &opening_id, text };
                println!("{}: {}", first.name, phone_do(&client, act, first.uscc.as_str(), &first.sign).await?);
                hall.answer_objection(&opening_id, 1, "各投标文件均在解密时限内由投标人扫码解密，用时取决于文件大小").await?;
                println!("the agent answered objection 1");
                hall.end_decryption(&opening_id).await?;
                let (version, digest) = hall.issue_record(&opening_id).await?;
                println!("decryption ended; record version {version} issued (SM3 {digest})");
                let url = hall.record_qr_url(&opening_id, version);
                for b in bidders.iter() {
                    let act = PhoneAct::Confirm { url: &url };
                    println!("{}: {}", b.name, phone_do(&client, act, b.uscc.as_str(), &b.sign).await?);
                }
                println!(
                    "\n  the record:  {base}/hall/{opening_id}/record\n  check it:    kaibiao check-record --server {base} --opening {opening_id} --version {version}\n"
                );
                anyhow::Ok(())
            }
        };
        actix_web::rt::spawn(async move {
            if let Err(e) = closing.await {
                println!("the demo's closing steps stopped: {e:#}");
            }
        });
        println!("press Ctrl-C to stop the demo");
        server.await??;
        drop(work);
        Ok(ExitCode::SUCCESS)
    })
}

/// A file as a stream of byte chunks for an HTTP body.
fn tokio_util_stream(
    file: tokio::fs::File,
) -> impl futures_util::Stream<Item = Result<bytes::Bytes, std::io::Error>> {
    futures_util::stream::unfold(file, |mut file| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 256 * 1024];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(bytes::Bytes::from(buf)), file))
            }
            Err(e) => Some((Err(e), file)),
        }
    })
}
