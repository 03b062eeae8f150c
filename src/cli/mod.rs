//! Command-line parsing and the subcommands.

mod bidtool;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "kaibiao",
    version,
    about = "开标 — seal bids and run the live bid-opening decryption hall"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Make a signing and an encryption SM2 key pair (PKCS#8 / SPKI PEM, as OpenSSL writes them).
    Keygen {
        /// Folder to write sign.key.pem, sign.pub.pem, enc.key.pem and enc.pub.pem into.
        #[arg(long)]
        out: PathBuf,
    },
    /// Seal a bid folder into a signed, encrypted .kbid file.
    Seal(bidtool::SealArgs),
    /// Show a sealed bid's header, recipients, sizes and signer, and check its signature. No key needed.
    Inspect { bid: PathBuf },
    /// Check a sealed bid's structure, signature and every chunk digest. Exit status 0 means valid.
    Verify {
        bid: PathBuf,
        /// Worker threads (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
    },
    /// Decrypt a sealed bid with a recipient's private key (the offline / backup path).
    Unseal(bidtool::UnsealArgs),
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Keygen { out } => bidtool::keygen(&out),
        Command::Seal(args) => bidtool::seal(args),
        Command::Inspect { bid } => bidtool::inspect(&bid),
        Command::Verify { bid, threads } => bidtool::verify(&bid, threads),
        Command::Unseal(args) => bidtool::unseal(args),
    }
}
