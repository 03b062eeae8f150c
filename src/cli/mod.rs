//! Command-line parsing and the subcommands.

mod bidtool;
mod hall;
mod record;

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
    /// Decrypt a sealed bid with a recipient's private key (the offline / backup path), or with
    /// its file key as released to the evaluation system (to check the released plaintext).
    Unseal(bidtool::UnsealArgs),
    /// Check what the platform signed: an upload receipt (回执) or a head of an opening's log, as
    /// JSON the hall gave, with the platform's public key (`/api/platform-key`, PEM). Exit status
    /// 0 means the platform signed exactly that.
    Check {
        /// The receipt or signed head (JSON).
        file: PathBuf,
        /// The platform's public key (PEM).
        #[arg(long)]
        platform_key: PathBuf,
    },
    /// Check a bidder's certificate as a hall with `trusted_cas` will at registration: issued by
    /// one of the CAs in the file, valid now, fit for its use, and (with --uscc / --name) issued
    /// to that enterprise. Exit status 0 means the hall will take it.
    CheckCert {
        /// The certificate (PEM).
        certificate: PathBuf,
        /// The trusted CAs' certificates (PEM), as given to the hall in `trusted_cas`.
        #[arg(long)]
        cas: PathBuf,
        /// What the certificate is registered for: signing (签名证书) or decryption (加密证书).
        #[arg(long, value_parser = ["sign", "enc"], default_value = "sign")]
        usage: String,
        /// The enterprise's unified social credit code, which the subject must name (or --name).
        #[arg(long)]
        uscc: Option<String>,
        /// The enterprise's name.
        #[arg(long)]
        name: Option<String>,
    },
    /// Re-derive an opening's record (开标记录) from its public log and check the hall's copy
    /// against it: the record as of now with the platform's signed head, or a version issued for
    /// confirmation. Exit status 0 means they agree.
    CheckRecord(record::CheckRecordArgs),
    /// Run the hall server (SQLite under ./data and 127.0.0.1:8080 unless told otherwise).
    Serve(hall::ServeArgs),
    /// Manage agent accounts.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// A minimal reference phone (标证通 stand-in).
    #[command(subcommand)]
    Phone(PhoneCommand),
    /// Start a server with a demo opening, sealed bids and simulated phones.
    Demo(hall::DemoArgs),
}

#[derive(Subcommand, Debug)]
enum AdminCommand {
    /// Create an agent (招标代理) account; the password comes from --password,
    /// KAIBIAO_AGENT_PASSWORD or standard input.
    CreateAgent {
        #[arg(long)]
        username: String,
        #[arg(long)]
        password: Option<String>,
        #[command(flatten)]
        server: hall::ServeArgs,
    },
}

#[derive(Subcommand, Debug)]
enum PhoneCommand {
    /// Scan a decryption QR code: fetch the challenge, unwrap, re-wrap to the hall, sign, answer.
    Scan {
        /// What the QR code holds (its URL), or a bare challenge nonce with --server.
        payload: String,
        /// The hall's address, when PAYLOAD is a bare nonce.
        #[arg(long)]
        server: Option<String>,
        /// The bidder's SM2 encryption private key (PKCS#8 PEM).
        #[arg(long)]
        enc_key: PathBuf,
        /// The bidder's SM2 signing private key (PKCS#8 PEM).
        #[arg(long)]
        sign_key: PathBuf,
    },
    /// Scan a bind code (扫码绑定) the agent gave: bind the bidder's signing and encryption
    /// certificates to it at that opening, signing with the signing certificate's key.
    Bind {
        /// What the bind QR code holds (its URL).
        payload: String,
        /// The signing certificate (PEM).
        #[arg(long)]
        sign_cert: PathBuf,
        /// The encryption certificate (PEM).
        #[arg(long)]
        enc_cert: PathBuf,
        /// The signing certificate's SM2 private key (PKCS#8 PEM).
        #[arg(long)]
        sign_key: PathBuf,
    },
    /// Scan the hall's sign-in QR code (签到): sign in as the bidder.
    SignIn {
        /// What the sign-in QR code holds (its URL).
        payload: String,
        #[command(flatten)]
        bidder: PhoneBidder,
    },
    /// Scan a login code (扫码登录) a browser shows: log that browser in as the bidder.
    Login {
        /// What the login QR code holds (its URL).
        payload: String,
        #[command(flatten)]
        bidder: PhoneBidder,
    },
    /// Scan the record's QR code (扫码签章): read the opening record, check its digest, sign it.
    Confirm {
        /// What the record's QR code holds (its URL).
        payload: String,
        #[command(flatten)]
        bidder: PhoneBidder,
    },
    /// Raise an objection (异议) at an opening, signed as the bidder.
    Object {
        /// The objection's text.
        text: String,
        /// The hall's address, e.g. https://hall.example.
        #[arg(long)]
        server: String,
        /// The opening's id.
        #[arg(long)]
        opening: String,
        #[command(flatten)]
        bidder: PhoneBidder,
    },
}

/// Who the phone signs as.
#[derive(clap::Args, Debug)]
struct PhoneBidder {
    /// The bidder's unified social credit code.
    #[arg(long)]
    bidder: String,
    /// The bidder's SM2 signing private key (PKCS#8 PEM).
    #[arg(long)]
    sign_key: PathBuf,
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Keygen { out } => bidtool::keygen(&out),
        Command::Seal(args) => bidtool::seal(args),
        Command::Inspect { bid } => bidtool::inspect(&bid),
        Command::Verify { bid, threads } => bidtool::verify(&bid, threads),
        Command::Unseal(args) => bidtool::unseal(args),
        Command::Check { file, platform_key } => bidtool::check_signed(&file, &platform_key),
        Command::CheckCert {
            certificate,
            cas,
            usage,
            uscc,
            name,
        } => bidtool::check_cert(&certificate, &cas, &usage, uscc.as_deref(), name.as_deref()),
        Command::CheckRecord(args) => record::check_record(args),
        Command::Serve(args) => hall::serve(args),
        Command::Admin(AdminCommand::CreateAgent {
            username,
            password,
            server,
        }) => hall::create_agent(server, username, password),
        Command::Phone(PhoneCommand::Scan {
            payload,
            server,
            enc_key,
            sign_key,
        }) => hall::phone_scan(&payload, server.as_deref(), &enc_key, &sign_key),
        Command::Phone(PhoneCommand::Bind {
            payload,
            sign_cert,
            enc_cert,
            sign_key,
        }) => hall::phone_bind(&payload, &sign_cert, &enc_cert, &sign_key),
        Command::Phone(PhoneCommand::SignIn { payload, bidder }) => hall::phone_act(
            hall::PhoneAct::SignIn { url: &payload },
            &bidder.bidder,
            &bidder.sign_key,
        ),
        Command::Phone(PhoneCommand::Login { payload, bidder }) => hall::phone_act(
            hall::PhoneAct::Login { url: &payload },
            &bidder.bidder,
            &bidder.sign_key,
        ),
        Command::Phone(PhoneCommand::Confirm { payload, bidder }) => hall::phone_act(
            hall::PhoneAct::Confirm { url: &payload },
            &bidder.bidder,
            &bidder.sign_key,
        ),
        Command::Phone(PhoneCommand::Object {
            text,
            server,
            opening,
            bidder,
        }) => hall::phone_act(
            hall::PhoneAct::Object {
                server: &server,
                opening: &opening,
                text: &text,
            },
            &bidder.bidder,
            &bidder.sign_key,
        ),
        Command::Demo(args) => hall::demo(args),
    }
}
