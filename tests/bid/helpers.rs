use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use kaibiao::crypto::{self, PublicIdentity};
use kaibiao::domain::{BidSummary, Uscc};
use kaibiao::engine::{self, NoProgress, SealParams};
use sm2::SecretKey;

pub const BIDDER: &str = "91350100M000100Y43";
pub const TENDER: &str = "ZB-2026-001";

pub fn summary() -> BidSummary {
    BidSummary::from_toml(
        "bidder_name = \"某建设工程有限公司\"\nprice_fen = 123456789\nduration_days = 180\nquality = \"合格\"\n[fields]\n\"项目经理\" = \"张三\"\n",
    )
    .unwrap()
}

/// The keys of one bidder.
pub struct Bidder {
    pub sign: SecretKey,
    pub enc: SecretKey,
    pub signer: PublicIdentity,
}

impl Bidder {
    pub fn new() -> Self {
        let sign = crypto::generate_secret_key();
        let spki = crypto::public_key_pem(&sign.public_key()).unwrap();
        Self {
            signer: crypto::load_public_pem(&spki).unwrap(),
            sign,
            enc: crypto::generate_secret_key(),
        }
    }

    pub fn params<'a>(
        &'a self,
        summary: &'a BidSummary,
        recipients: &'a [sm2::PublicKey],
        chunk_size: u32,
    ) -> SealParams<'a> {
        SealParams {
            tender_id: TENDER,
            bidder: Uscc::parse(BIDDER).unwrap(),
            summary,
            recipients,
            sign_key: &self.sign,
            signer: &self.signer,
            chunk_size,
            created_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs() as i64,
        }
    }

    /// Seals `data` into `dir/bid.kbid` and returns its path.
    pub fn seal_bytes(&self, dir: &Path, data: &[u8], chunk_size: u32) -> PathBuf {
        let input = dir.join("plain.bin");
        std::fs::write(&input, data).unwrap();
        let out = dir.join("bid.kbid");
        let summary = summary();
        let recipients = [self.enc.public_key()];
        engine::seal_file(
            &input,
            &out,
            &self.params(&summary, &recipients, chunk_size),
            &NoProgress,
        )
        .unwrap();
        std::fs::remove_file(input).unwrap();
        out
    }
}

/// Deterministic pseudo-random bytes (so failures reproduce).
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// The names of the files in `dir`, sorted.
pub fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}
