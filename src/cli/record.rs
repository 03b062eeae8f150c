//! `kaibiao check-record`: re-derives an opening's record (开标记录) from its public log and
//! checks the hall's copy against it, as a bidder, a viewer or an auditor would, with nothing
//! but the hall's public API and the platform's public key.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use serde_json::Value;

use kaibiao::crypto;
use kaibiao::domain::record::{LogEvent, RecordFold};
use kaibiao::hall::SignedHead;

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
        let mut fold = RecordFold::new(&args.opening);
        let mut after = 0;
        let mut folded = 0;
        let mut hash_seen = None;
        while after < seq {
            let page = phone_get(
                &client,
                &format!("{base}/events?after={after}"),
                "the opening's log",
            )
            .await?;
            let page: Vec<Value> =
                serde_json::from_slice(&page).context("the hall's log is not a list of events")?;
            let Some(last) = page.last() else { break };
            after = last["seq"].as_i64().context("an event without a number")?;
            for e in page
                .iter()
                .filter(|e| e["seq"].as_i64().is_some_and(|s| s <= seq))
            {
                let event_seq = e["seq"].as_i64().unwrap_or_default();
                if event_seq == seq {
                    hash_seen = e["hash"].as_str().map(str::to_owned);
                }
                let payload: Value = serde_json::from_str(e["payload"].as_str().unwrap_or(""))
                    .with_context(|| format!("event {event_seq}'s payload is not JSON"))?;
                fold.apply(LogEvent {
                    seq: event_seq,
                    ts_ms: e["ts_ms"].as_i64().unwrap_or_default(),
                    kind: e["kind"].as_str().unwrap_or_default(),
                    payload: &payload,
                })?;
                folded += 1;
            }
        }
        if after < seq {
            println!(
                "MISMATCH: the record names event {seq} of the log, but the log the hall gives \
                 ends at event {after}"
            );
            return Ok(ExitCode::FAILURE);
        }
        if let Some(seen) = hash_seen.as_deref()
            && seen != hash
        {
            println!(
                "MISMATCH: the record names chain value {hash} at event {seq}, the log has {seen}"
            );
            return Ok(ExitCode::FAILURE);
        }
        let derived = fold.record(seq, hash)?;
        let mut differences = Vec::new();
        differ("", &derived, &record, &mut differences);
        if differences.is_empty() {
            println!(
                "{what} of opening {} (SM3 {digest}) is what the opening's public log folds to, \
                 {folded} public events up to event {seq}{}",
                args.opening,
                if args.version.is_none() {
                    ", whose head the platform signed"
                } else {
                    ""
                }
            );
            Ok(ExitCode::SUCCESS)
        } else {
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
            Ok(ExitCode::FAILURE)
        }
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
