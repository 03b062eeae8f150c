//! The bid tool: keygen, seal, inspect, verify, unseal.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};

use kaibiao::crypto::{self, PublicIdentity};
use kaibiao::domain::{BidSummary, Uscc};
use kaibiao::engine::{self, DecryptOptions, SealParams, SealedBid};
use kaibiao::format::{self, DEFAULT_CHUNK_SIZE, Header};

#[derive(clap::Args, Debug)]
pub struct SealArgs {
    /// The bid folder (or a single file) to seal.
    #[arg(long)]
    input: PathBuf,
    /// The bid summary (开标一览表) as TOML: bidder_name, price_fen, duration_days, quality, [fields].
    #[arg(long)]
    summary: PathBuf,
    /// The tender (招标项目) id.
    #[arg(long)]
    tender: String,
    /// The bidder's unified social credit code (统一社会信用代码).
    #[arg(long)]
    bidder: String,
    /// An encryption public key or certificate (PEM) to seal to; repeat for a backup recipient.
    #[arg(long = "recipient", required = true)]
    recipients: Vec<PathBuf>,
    /// The bidder's SM2 signing private key (PKCS#8 PEM).
    #[arg(long)]
    sign_key: PathBuf,
    /// The bidder's signing certificate (PEM) to embed instead of the bare public key.
    #[arg(long)]
    sign_cert: Option<PathBuf>,
    /// Where to write the sealed bid.
    #[arg(long)]
    out: PathBuf,
    /// Plaintext bytes per chunk.
    #[arg(long, default_value_t = DEFAULT_CHUNK_SIZE)]
    chunk_size: u32,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
}

#[derive(clap::Args, Debug)]
pub struct UnsealArgs {
    bid: PathBuf,
    /// A recipient's SM2 encryption private key (PKCS#8 PEM).
    #[arg(
        long,
        required_unless_present = "file_key",
        conflicts_with = "file_key"
    )]
    key: Option<PathBuf>,
    /// The bid's file key itself (32 hex digits), as the hall gives it to the evaluation system
    /// once the files are released: to check that the released plaintext is what the bidder
    /// sealed and signed (the key must match the commitment in the signed header).
    #[arg(long)]
    file_key: Option<String>,
    /// Folder to unpack the bid into (must not exist, or be empty); with `--archive`, the file
    /// to write (must not exist).
    #[arg(long)]
    out: PathBuf,
    /// Write the bid folder as the tar archive it was sealed from, as the hall hands it to the
    /// evaluation system, instead of unpacking it.
    #[arg(long)]
    archive: bool,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
}

pub fn keygen(out: &Path) -> anyhow::Result<ExitCode> {
    fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    for name in ["sign", "enc"] {
        let key = crypto::generate_secret_key();
        let private = out.join(format!("{name}.key.pem"));
        write_private(&private, crypto::private_key_pem(&key)?.as_bytes())?;
        let public = out.join(format!("{name}.pub.pem"));
        fs::write(&public, crypto::public_key_pem(&key.public_key())?)
            .with_context(|| format!("writing {}", public.display()))?;
        println!("{name}: {} and {}", private.display(), public.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn write_private(path: &Path, pem: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| {
            format!(
                "creating {} (an existing key is never overwritten; choose another folder)",
                path.display()
            )
        })?;
    file.write_all(pem)?;
    Ok(())
}

fn read_text(path: &Path, what: &str) -> anyhow::Result<String> {
    fs::read_to_string(path).with_context(|| format!("reading {what} {}", path.display()))
}

fn load_private(path: &Path) -> anyhow::Result<sm2::SecretKey> {
    let text = read_text(path, "private key")?;
    crypto::load_private_pem(&text).with_context(|| format!("in {}", path.display()))
}

fn load_public(path: &Path) -> anyhow::Result<PublicIdentity> {
    let text = read_text(path, "public key")?;
    crypto::load_public_pem(&text).with_context(|| format!("in {}", path.display()))
}

fn pool(threads: Option<usize>) -> anyhow::Result<rayon::ThreadPool> {
    let mut builder = rayon::ThreadPoolBuilder::new();
    if let Some(n) = threads {
        if n == 0 {
            bail!("--threads must be at least 1");
        }
        builder = builder.num_threads(n);
    }
    Ok(builder.build()?)
}

fn bar(len: u64, verb: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{verb} [{{bar:40}}] {{bytes}}/{{total_bytes}} {{binary_bytes_per_sec}} eta {{eta}}"
        ))
        .expect("the template is valid")
        .progress_chars("=> "),
    );
    bar
}

pub fn seal(args: SealArgs) -> anyhow::Result<ExitCode> {
    let bidder = Uscc::parse(&args.bidder).context("--bidder")?;
    let summary = BidSummary::from_toml(&read_text(&args.summary, "bid summary")?)
        .with_context(|| format!("in {}", args.summary.display()))?;
    let recipients = args
        .recipients
        .iter()
        .map(|p| load_public(p).map(|id| *id.key()))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let sign_key = load_private(&args.sign_key)?;
    let signer = match &args.sign_cert {
        Some(path) => load_public(path)?,
        None => crypto::parse_public_der(&spki_der(&sign_key)?, false)?,
    };
    let params = SealParams {
        tender_id: &args.tender,
        bidder,
        summary: &summary,
        recipients: &recipients,
        sign_key: &sign_key,
        signer: &signer,
        chunk_size: args.chunk_size,
        created_at: SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() as i64,
    };
    let input_len = if args.input.is_dir() {
        dir_size(&args.input)
    } else {
        fs::metadata(&args.input)
            .with_context(|| format!("reading {}", args.input.display()))?
            .len()
    };
    let bar = bar(input_len, "sealing");
    let started = Instant::now();
    let progress = |n: u64| bar.inc(n);
    let report = pool(args.threads)?.install(|| {
        if args.input.is_dir() {
            engine::seal_dir(&args.input, &args.out, &params, &progress)
        } else {
            engine::seal_file(&args.input, &args.out, &params, &progress)
        }
    })?;
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    println!(
        "sealed {} ({} plaintext bytes, {} chunks) into {} ({} bytes) in {secs:.2}s, {:.1} MiB/s",
        args.input.display(),
        report.plaintext_len,
        report.chunk_count,
        args.out.display(),
        report.file_len,
        report.plaintext_len as f64 / secs / 1048576.0
    );
    Ok(ExitCode::SUCCESS)
}

fn spki_der(key: &sm2::SecretKey) -> anyhow::Result<Vec<u8>> {
    use sm2::pkcs8::EncodePublicKey;
    Ok(key.public_key().to_public_key_der()?.into_vec())
}

fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_size(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map(|m| m.len()).unwrap_or(0),
            _ => 0,
        })
        .sum()
}

pub fn inspect(path: &Path) -> anyhow::Result<ExitCode> {
    // The header alone, so that a bid whose signature fails can still be shown.
    let file = fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let header = Header::read_from(std::io::BufReader::new(file))?;
    let signer = header.signer.identity();
    println!("file           {}", path.display());
    println!(
        "format         KBID version {}, suite {} (SM2-SM4GCM-SM3)",
        format::VERSION,
        header.suite
    );
    println!("tender         {}", header.tender_id);
    println!("bidder         {}", header.bidder);
    println!("created        {} (Unix seconds)", header.created_at);
    println!("plaintext      {} bytes", header.plaintext_len);
    println!(
        "chunks         {} of {} bytes",
        header.chunk_count(),
        header.chunk_size
    );
    println!(
        "summary        {} bytes, sealed",
        header.sealed_summary.len()
    );
    for (i, r) in header.recipients.iter().enumerate() {
        println!(
            "recipient {i}    key id {} ({} bytes wrapped key)",
            hex::encode(r.key_id),
            r.wrapped_key.len()
        );
    }
    match &signer {
        Ok(id) => println!("signer         {}", id.describe()),
        Err(e) => println!("signer         unreadable: {e}"),
    }
    match SealedBid::open(path) {
        Ok(bid) => {
            println!(
                "file size      {} bytes (body at offset {})",
                bid.file_len(),
                bid.body_offset()
            );
            println!("signature      valid ({} bytes)", bid.signature().len());
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            println!("signature      NOT VALID: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

pub fn verify(path: &Path, threads: Option<usize>) -> anyhow::Result<ExitCode> {
    let bid = SealedBid::open(path)?;
    let bar = bar(bid.header().plaintext_len, "verifying");
    let progress = |n: u64| bar.inc(n);
    pool(threads)?.install(|| bid.verify_chunks(&progress))?;
    bar.finish_and_clear();
    println!(
        "valid: {} for tender {} by {}, signed by {}, {} chunks checked",
        path.display(),
        bid.header().tender_id,
        bid.header().bidder,
        bid.signer().describe(),
        bid.header().chunk_count()
    );
    Ok(ExitCode::SUCCESS)
}

/// Checks a receipt or a signed log head against the platform's key; says what it states.
pub fn check_signed(file: &Path, platform_key: &Path) -> anyhow::Result<ExitCode> {
    use kaibiao::hall::{Receipt, SignedHead, fmt_time};
    let key = *load_public(platform_key)?.key();
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", file.display()))?;
    let (what, checked) = if value.get("bid_id").is_some() {
        let receipt: Receipt = serde_json::from_value(value)
            .with_context(|| format!("{} is not a whole receipt", file.display()))?;
        let what = format!(
            "receipt of bid {} by {} for tender {} (opening {}): {} bytes, SM3 {}, received {}{}",
            receipt.bid_id,
            receipt.bidder,
            receipt.tender_id,
            receipt.opening_id,
            receipt.size,
            receipt.sm3,
            fmt_time(receipt.received_ms),
            if receipt.replaced {
                ", replacing an earlier bid"
            } else {
                ""
            }
        );
        (what, receipt.verify(&key))
    } else if value.get("seq").is_some() {
        let head: SignedHead = serde_json::from_value(value)
            .with_context(|| format!("{} is not a whole signed head", file.display()))?;
        let what = format!(
            "head of opening {}'s log: event {}, chain value {}, signed at {}",
            head.opening_id,
            head.seq,
            head.hash,
            fmt_time(head.signed_ms)
        );
        (what, head.verify(&key))
    } else {
        bail!(
            "{} is neither a receipt (it has no bid_id) nor a signed log head (no seq)",
            file.display()
        );
    };
    match checked {
        Ok(()) => {
            println!("signed by the platform: {what}");
            Ok(ExitCode::SUCCESS)
        }
        Err(_) => {
            println!(
                "NOT signed by this platform key: {what}. Either a field was changed after \
                 signing, or another key signed it (see earlier_keys in /api/platform-key)"
            );
            Ok(ExitCode::FAILURE)
        }
    }
}

pub fn check_cert(
    certificate: &Path,
    cas: &Path,
    usage: &str,
    uscc: Option<&str>,
    name: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let store = crypto::TrustStore::load(cas)?;
    let identity = load_public(certificate)?;
    let PublicIdentity::Certificate { cert_der, .. } = &identity else {
        bail!(
            "{} is a bare public key, not a certificate",
            certificate.display()
        );
    };
    let usage = match usage {
        "enc" => crypto::CertUsage::Encrypt,
        _ => crypto::CertUsage::Sign,
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .context("the system clock is before 1970")?;
    if let Err(refused) = store.check(cert_der, usage, now) {
        println!("REFUSED: {refused}");
        return Ok(ExitCode::FAILURE);
    }
    if (uscc.is_some() || name.is_some())
        && !identity.names_enterprise(uscc.unwrap_or_default(), name.unwrap_or_default())
    {
        println!(
            "REFUSED: {} names neither {} nor {} (证书与投标人不符)",
            identity.describe(),
            uscc.unwrap_or("-"),
            name.unwrap_or("-")
        );
        return Ok(ExitCode::FAILURE);
    }
    println!(
        "accepted: {}, issued by a trusted CA ({}), valid now, fit for its use",
        identity.describe(),
        store.describe()
    );
    Ok(ExitCode::SUCCESS)
}

pub fn unseal(args: UnsealArgs) -> anyhow::Result<ExitCode> {
    let bid = SealedBid::open(&args.bid)?;
    let file_key = match (&args.key, &args.file_key) {
        (Some(key), _) => bid.unwrap_file_key(&load_private(key)?)?,
        (None, Some(hex_key)) => {
            let raw: [u8; 16] = hex::decode(hex_key.trim())
                .ok()
                .and_then(|v| v.try_into().ok())
                .context("--file-key takes the bid's 16-byte file key as 32 hex digits")?;
            bid.accept_file_key(raw)?
        }
        (None, None) => bail!("give --key (a recipient's private key) or --file-key"),
    };
    let summary = bid.open_summary(&file_key)?;
    println!("bidder         {}", summary.bidder_name);
    println!(
        "price          {} yuan ({} fen)",
        summary.price_yuan(),
        summary.price_fen
    );
    println!("duration       {} days", summary.duration_days);
    println!("quality        {}", summary.quality);
    for (name, value) in &summary.fields {
        println!("{name:<14} {value}");
    }
    let bar = bar(bid.header().plaintext_len, "decrypting");
    let started = Instant::now();
    let progress = |n: u64| bar.inc(n);
    if args.archive {
        if args.out.exists() {
            bail!(
                "{} already exists: choose a new file name for the archive",
                args.out.display()
            );
        }
        pool(args.threads)?.install(|| {
            bid.decrypt_to(&file_key, &args.out, DecryptOptions::default(), &progress)
        })?;
    } else {
        pool(args.threads)?.install(|| bid.unseal_to_dir(&file_key, &args.out, &progress))?;
    }
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    println!(
        "unsealed into {} ({} bytes) in {secs:.2}s, {:.1} MiB/s",
        args.out.display(),
        bid.header().plaintext_len,
        bid.header().plaintext_len as f64 / secs / 1048576.0
    );
    Ok(ExitCode::SUCCESS)
}
