//! A certificate authority made with the `openssl` command (OpenSSL 3), issuing SM2 certificates
//! as Chinese CAs do, for the tests of both test binaries (each uses part of it).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// A bidder's signing certificate's extensions (签名证书).
pub const SIGN_EXT: &str =
    "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,nonRepudiation\n";
/// A bidder's encryption certificate's extensions (加密证书).
pub const ENC_EXT: &str =
    "basicConstraints=CA:FALSE\nkeyUsage=critical,keyEncipherment,dataEncipherment\n";

/// Runs openssl in `dir`; `None` (the caller skips, loudly) where the command is missing outside
/// CI; in CI its absence fails the test.
pub fn openssl(dir: &Path, args: &[&str]) -> Option<()> {
    match Command::new("openssl").args(args).current_dir(dir).output() {
        Ok(out) => {
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            Some(())
        }
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!(
                "SKIPPED: the openssl command is not available ({e}); install it to run this test"
            );
            None
        }
        Err(e) => panic!("openssl is needed in CI: {e}"),
    }
}

/// A CA: its key and self-signed certificate in `dir`.
pub struct TestCa {
    dir: PathBuf,
    name: String,
    /// The CA's certificate, PEM.
    pub pem: String,
    standard_id: bool,
}

impl TestCa {
    /// A root CA named `subject` (`/CN=…/O=…`), valid 30 days. `standard_id`: it signs with the
    /// standard SM2 user ID, as GM/T 0015 and China's CAs do; otherwise with the empty one
    /// OpenSSL 3.0 uses unless told.
    pub fn new(dir: &Path, name: &str, subject: &str, standard_id: bool) -> Option<Self> {
        let key = format!("{name}.ca.key");
        let cert = format!("{name}.ca.pem");
        openssl(dir, &["genpkey", "-algorithm", "SM2", "-out", &key])?;
        let mut args = vec!["req", "-x509", "-new", "-key", &key, "-sm3"];
        if standard_id {
            args.extend(["-sigopt", "distid:1234567812345678"]);
        }
        args.extend([
            "-utf8",
            "-subj",
            subject,
            "-days",
            "30",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-out",
            &cert,
        ]);
        openssl(dir, &args)?;
        Some(Self {
            dir: dir.to_owned(),
            name: name.to_owned(),
            pem: std::fs::read_to_string(dir.join(&cert)).unwrap(),
            standard_id,
        })
    }

    /// A certificate of this CA for the SM2 key `key_pem` (PKCS#8 PEM; a request is signed with
    /// it, as a CA asks), named `subject` (UTF-8), with `extensions` (lines of an openssl
    /// extension file), valid `days` from now.
    pub fn issue(
        &self,
        file: &str,
        subject: &str,
        key_pem: &str,
        extensions: &str,
        days: u32,
    ) -> String {
        let (key, request, ext, cert) = (
            format!("{file}.key.pem"),
            format!("{file}.csr"),
            format!("{file}.ext"),
            format!("{file}.pem"),
        );
        std::fs::write(self.dir.join(&key), key_pem).unwrap();
        std::fs::write(self.dir.join(&ext), extensions).unwrap();
        let ran = openssl(
            &self.dir,
            &[
                "req", "-new", "-key", &key, "-sm3", "-utf8", "-subj", subject, "-out", &request,
            ],
        );
        ran.expect("openssl ran for the CA");
        let (ca_cert, ca_key) = (
            format!("{}.ca.pem", self.name),
            format!("{}.ca.key", self.name),
        );
        let days = days.to_string();
        let mut args = vec![
            "x509", "-req", "-in", &request, "-CA", &ca_cert, "-CAkey", &ca_key, "-sm3",
        ];
        if self.standard_id {
            args.extend(["-sigopt", "distid:1234567812345678"]);
        }
        args.extend(["-days", &days, "-extfile", &ext, "-out", &cert]);
        openssl(&self.dir, &args).expect("openssl ran for the CA");
        std::fs::read_to_string(self.dir.join(cert)).unwrap()
    }
}
