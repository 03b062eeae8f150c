//! `kaibiao check-record`: re-derives an opening's record (开标记录) from its public log and
//! checks the hall's copy against it, as a bidder, a viewer or an auditor would, with nothing
//! but the hall's public API and the platform's public key.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use serde_json::Value;

use kaibiao::crypto;
use kaibiao::db::EventRow;
use kaibiao::domain::record::RecordFold;
use kaibiao::hall::{EventDigest, Pin, SignedHead, check_chain, fold_rows};

use super::hall::{phone_client, phone_get};

#[derive(clap::Args, Debug)]
pub struct CheckRecordArgs {
    /// The hall's address, e.g. https://hall.example.
    #[arg(long)]
    server: String,
    /// The opening's id.
    #[arg(long)]
    opening: String,
    /// Check this version of the record as issued for confirmation, instead of the record as of
    /// now.
    #[arg(long)]
    version: Option<i64>,
    /// The platform's public key (PEM, from `/api/platform-key` or the tender's notice): checks
    /// the platform's signature over the log's head the record names. Needed without --version.
    #[arg(long)]
    platform_key: Option<PathBuf>,
    /// A point of the log seen earlier, `SEQ:HASH`: the event number and chain value (at least
    /// its first 16 hex digits) the hall display's footer showed (记录摘要), e.g. in a recording
    /// of the room. The log must still pass through it. May be given more than once.
    #[arg(long = "pin", value_name = "SEQ:HASH")]
    pins: Vec<String>,
    /// A head of the log the platform signed earlier (the JSON of `/events/head`), kept by
    /// whoever asked: checked with --platform-key, then pinned like --pin. May be given more than
    /// once.
    #[arg(long = "head", value_name = "FILE")]
    heads: Vec<PathBuf>,
}

/// The pins given on the command line, signed heads checked with the platform's key.
fn pins(args: &CheckRecordArgs, platform: Option<&sm2::PublicKey>) -> anyhow::Result<Vec<Pin>> {
    let mut pins = Vec::new();
    for pin in &args.pins {
        let parsed = pin.split_once(':').and_then(|(seq, hash)| {
            let hash = hash.trim().to_ascii_lowercase();
            let hex =
                hash.len() >= 16 && hash.len() <= 64 && hash.bytes().all(|b| b.is_ascii_hexdigit());
            Some((seq.trim().parse::<i64>().ok()?, hash)).filter(|(n, _)| hex && *n >= 0)
        });
        let Some((seq, hash)) = parsed else {
            bail!(
                "--pin {pin}: give the event number and at least 16 hex digits of its chain \
                 value, as SEQ:HASH (the hall display's footer shows both)"
            );
        };
        pins.push(Pin {
            seq,
            hash,
            from: format!("--pin {pin}"),
        });
    }
    for path in &args.heads {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let head: SignedHead = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a signed head of the log", path.display()))?;
        let Some(platform) = platform else {
            bail!(
                "give --platform-key to check the signed head in {}",
                path.display()
            );
        };
        if head.opening_id != args.opening {
            bail!(
                "{} is a head of opening {}, not of {}",
                path.display(),
                head.opening_id,
                args.opening
            );
        }
        head.verify(platform).map_err(|_| {
            anyhow::anyhow!(
                "the head in {} is not signed by this platform key: a field was changed, or \
                 another key signed it",
                path.display()
            )
        })?;
        pins.push(Pin {
            seq: head.seq,
            hash: head.hash.to_ascii_lowercase(),
            from: format!("the signed head in {}", path.display()),
        });
    }
    Ok(pins)
}

/// The most paths told when the record and the log's fold differ.
const MAX_DIFFERENCES: usize = 10;

pub fn check_record(args: CheckRecordArgs) -> anyhow::Result<ExitCode> {
    let platform = match &args.platform_key {
        Some(path) => {
            let pem = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            Some(
                *crypto::load_public_pem(&pem)
                    .with_context(|| format!("in {}", path.display()))?
                    .key(),
            )
        }
        None if args.version.is_none() => bail!(
            "give --platform-key (the platform's public key, PEM) to check the record as of now, \
             or --version N to check a version issued for confirmation"
        ),
        None => None,
    };
    let mut pins = pins(&args, platform.as_ref())?;
    let base = format!(
        "{}/api/openings/{}",
        args.server.trim_end_matches('/'),
        args.opening
    );
    actix_web::rt::System::new().block_on(async move {
        let client = phone_client();
        // The record and its digest as the hall serves them.
        let (record, digest, what) = match args.version {
            Some(version) => {
                let text = phone_get(
                    &client,
                    &format!("{base}/record/issued/{version}"),
                    "the issued record",
                )
                .await?;
                let record: Value = serde_json::from_slice(&text)
                    .context("the issued record the hall gave is not JSON")?;
                let digest = hex::encode(crypto::sm3(&text));
                // The log's head as the platform signs it now: the chain checked below must
                // lead to it, so what is checked is anchored in a signature.
                match &platform {
                    Some(key) => {
                        let head = phone_get(&client, &format!("{base}/events/head"), "the log's head")
                            .await?;
                        let head: SignedHead = serde_json::from_slice(&head)
                            .context("the hall's head of the log is not a signed head")?;
                        if head.verify(key).is_err() {
                            println!("MISMATCH: the log's head the hall gives (event {}) is not signed by this platform key", head.seq);
                            return Ok(ExitCode::FAILURE);
                        }
                        pins.push(Pin {
                            seq: head.seq,
                            hash: head.hash.to_ascii_lowercase(),
                            from: "the platform's signed head of the log now".into(),
                        });
                    }
                    None => println!(
                        "NOTE: without --platform-key nothing the platform signed is checked: the \
                         hall's own log is checked against itself"
                    ),
                }
                (record, digest, format!("version {version} of the record"))
            }
            None => {
                let body = phone_get(&client, &format!("{base}/record"), "the record").await?;
                let served: Value =
                    serde_json::from_slice(&body).context("the hall's record is not JSON")?;
                let record = served["record"].clone();
                let digest = hex::encode(crypto::sm3(&serde_json::to_vec(&record)?));
                if served["digest"] != digest.as_str() {
                    println!(
                        "MISMATCH: the hall says the record's SM3 is {}, but the record it gave \
                         hashes to {digest}",
                        served["digest"]
                    );
                    return Ok(ExitCode::FAILURE);
                }
                let head: SignedHead = serde_json::from_value(served["log_head"].clone())
                    .context("the hall gave no signed head of the log with the record")?;
                let platform = platform.expect("checked above");
                if head.verify(&platform).is_err() {
                    println!(
                        "MISMATCH: the log's head given with the record (event {}) is not signed \
                         by this platform key",
                        head.seq
                    );
                    return Ok(ExitCode::FAILURE);
                }
                if record["log"]["seq"] != head.seq || record["log"]["hash"] != head.hash.as_str() {
                    println!(
                        "MISMATCH: the record names event {} of the log, the signed head event {}",
                        record["log"]["seq"], head.seq
                    );
                    return Ok(ExitCode::FAILURE);
                }
                (record, digest, "the record as of now".to_owned())
            }
        };
        let (Some(seq), Some(hash)) = (
            record["log"]["seq"].as_i64(),
            record["log"]["hash"].as_str(),
        ) else {
            bail!("the record names no point of the log (`log.seq`, `log.hash`)");
        };

        // The public log up to that point, folded.
        let events: Vec<EventRow> =
            pages(&client, &format!("{base}/events"), seq, "the opening's log").await?;
        let mut fold = RecordFold::new(&args.opening);
        fold_rows(&mut fold, &events)?;

        // The chain through every event up to that point, those the public does not read
        // included (by their digests), and the events read are those it chains.
        let chain = chain_check(&client, &base, (seq, hash), &events, &pins).await?;
        let derived = fold.record(seq, hash)?;
        let mut differences = Vec::new();
        differ("", &derived, &record, &mut differences);
        if !differences.is_empty() {
            println!(
                "MISMATCH: {what} of opening {} differs from what its public log up to event \
                 {seq} folds to, at:",
                args.opening
            );
            for d in differences.iter().take(MAX_DIFFERENCES) {
                println!("  {d}");
            }
            if differences.len() > MAX_DIFFERENCES {
                println!("  and {} more", differences.len() - MAX_DIFFERENCES);
            }
        }
        let chained = match chain {
            Chain::Checked if pins.is_empty() => format!("the chain of all {seq} events checked"),
            Chain::Checked => format!(
                "the chain of all {seq} events checked, and it passes through the {} point(s) \
                 seen earlier",
                pins.len()
            ),
            Chain::Broken(why) => {
                println!("MISMATCH: {why}");
                return Ok(ExitCode::FAILURE);
            }
            Chain::Unavailable(why) if !pins.is_empty() => {
                println!("CANNOT CHECK the points seen earlier: {why}");
                return Ok(ExitCode::FAILURE);
            }
            Chain::Unavailable(why) => format!("the chain not checked here: {why}"),
        };
        if !differences.is_empty() {
            return Ok(ExitCode::FAILURE);
        }
        println!(
            "{what} of opening {} (SM3 {digest}) is what the opening's public log folds to: {} \
             public events up to event {seq}{}; {chained}",
            args.opening,
            events.len(),
            if args.version.is_none() {
                ", whose head the platform signed"
            } else {
                ""
            }
        );
        Ok(ExitCode::SUCCESS)
    })
}

/// The paths at which `from_log` and `served` differ, each with both values.
fn differ(path: &str, from_log: &Value, served: &Value, out: &mut Vec<String>) {
    match (from_log, served) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for k in keys {
                let null = Value::Null;
                differ(
                    &format!("{path}.{k}"),
                    a.get(k).unwrap_or(&null),
                    b.get(k).unwrap_or(&null),
                    out,
                );
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                differ(&format!("{path}[{i}]"), x, y, out);
            }
        }
        (a, b) if a != b => out.push(format!("{path}: the log says {a}, the hall's record {b}")),
        _ => {}
    }
}

/// Every item of a paged list (`?after=N`, items numbered by `seq`) up to number `up_to`.
async fn pages<T: serde::de::DeserializeOwned + Numbered>(
    client: &awc::Client,
    url: &str,
    up_to: i64,
    what: &str,
) -> anyhow::Result<Vec<T>> {
    let mut items: Vec<T> = Vec::new();
    let mut after = 0;
    while after < up_to {
        let page = phone_get(client, &format!("{url}?after={after}"), what).await?;
        let page: Vec<T> = serde_json::from_slice(&page)
            .with_context(|| format!("the hall's answer is not {what}"))?;
        let Some(last) = page.last() else { break };
        if last.number() <= after {
            bail!(
                "the hall gave {what} out of order (after {after}, up to {})",
                last.number()
            );
        }
        after = last.number();
        items.extend(page.into_iter().filter(|i| i.number() <= up_to));
    }
    Ok(items)
}

trait Numbered {
    fn number(&self) -> i64;
}

impl Numbered for EventRow {
    fn number(&self) -> i64 {
        self.seq
    }
}

impl Numbered for EventDigest {
    fn number(&self) -> i64 {
        self.seq
    }
}

enum Chain {
    Checked,
    Broken(String),
    Unavailable(String),
}

/// Checks the opening's chain from its start to event `seq`, whose value must be `hash`, through
/// the digests of every event; that each of the `read` events is the one chained; and that the
/// chain passes through every pin.
async fn chain_check(
    client: &awc::Client,
    base: &str,
    (seq, hash): (i64, &str),
    read: &[EventRow],
    pins: &[Pin],
) -> anyhow::Result<Chain> {
    let url = format!("{base}/events/digests");
    let up_to = pins.iter().map(|p| p.seq).fold(seq, i64::max);
    let digests: Vec<EventDigest> = match pages(client, &url, up_to, "the log's digests").await {
        Ok(d) => d,
        Err(e) => return Ok(Chain::Unavailable(e.to_string())),
    };
    Ok(match check_chain(&digests, (seq, hash), read, pins) {
        Ok(()) => Chain::Checked,
        Err(why) => Chain::Broken(why),
    })
}
