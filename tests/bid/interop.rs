//! Interoperability with the `openssl` command (OpenSSL 3).

use std::path::Path;
use std::process::Command;

use kaibiao::crypto;
use kaibiao::engine::{NoProgress, SealedBid};

use crate::helpers::{Bidder, pattern, summary};

/// Runs openssl; without it the interop tests cannot run, which CI (CI=true) treats as a failure.
fn openssl(dir: &Path, args: &[&str]) -> Option<Vec<u8>> {
    let output = match Command::new("openssl").args(args).current_dir(dir).output() {
        Ok(output) => output,
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!(
                "SKIPPED: the openssl command is not available ({e}); install it to run the interop tests"
            );
            return None;
        }
        Err(e) => panic!("openssl is needed in CI: {e}"),
    };
    assert!(
        output.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Some(output.stdout)
}

fn openssl_key(dir: &Path, name: &str) -> Option<sm2::SecretKey> {
    openssl(
        dir,
        &[
            "genpkey",
            "-algorithm",
            "SM2",
            "-out",
            &format!("{name}.key.pem"),
        ],
    )?;
    openssl(
        dir,
        &[
            "pkey",
            "-in",
            &format!("{name}.key.pem"),
            "-pubout",
            "-out",
            &format!("{name}.pub.pem"),
        ],
    )?;
    let text = std::fs::read_to_string(dir.join(format!("{name}.key.pem"))).unwrap();
    Some(crypto::load_private_pem(&text).unwrap())
}

/// HMAC-SM3 (the hall's login codes) agrees with `openssl dgst -sm3 -hmac`, for a short key
/// and for one longer than SM3's 64-byte block (hashed first).
#[test]
fn hmac_sm3_matches_openssl() {
    let dir = tempfile::tempdir().unwrap();
    let message = b"kaibiao login code v1\0opening\x001764043558000";
    std::fs::write(dir.path().join("m"), message).unwrap();
    for key in ["master key".to_owned(), "k".repeat(100)] {
        let Some(out) = openssl(dir.path(), &["dgst", "-sm3", "-hmac", &key, "m"]) else {
            return;
        };
        let out = String::from_utf8(out).unwrap();
        let theirs = out.trim().rsplit(' ').next().unwrap();
        assert_eq!(
            hex::encode(crypto::hmac_sm3(key.as_bytes(), message)),
            theirs
        );
    }
}

#[test]
fn openssl_keys_are_read_and_match() {
    let dir = tempfile::tempdir().unwrap();
    let Some(key) = openssl_key(dir.path(), "a") else {
        return;
    };
    let public = std::fs::read_to_string(dir.path().join("a.pub.pem")).unwrap();
    assert_eq!(
        *crypto::load_public_pem(&public).unwrap().key(),
        key.public_key()
    );
}

#[test]
fn kaibiao_wrapped_key_is_unwrapped_by_openssl() {
    let dir = tempfile::tempdir().unwrap();
    let Some(key) = openssl_key(dir.path(), "a") else {
        return;
    };
    let file_key = [0x5a; 16];
    let wrapped = crypto::wrap_key(&key.public_key(), &file_key).unwrap();
    std::fs::write(dir.path().join("wrapped.der"), wrapped).unwrap();
    let out = openssl(
        dir.path(),
        &[
            "pkeyutl",
            "-decrypt",
            "-inkey",
            "a.key.pem",
            "-in",
            "wrapped.der",
        ],
    )
    .unwrap();
    assert_eq!(out, file_key);
}

#[test]
fn openssl_wrapped_key_is_unwrapped_by_kaibiao() {
    let dir = tempfile::tempdir().unwrap();
    let Some(key) = openssl_key(dir.path(), "a") else {
        return;
    };
    std::fs::write(dir.path().join("key.bin"), [0xa5; 16]).unwrap();
    let wrapped = openssl(
        dir.path(),
        &[
            "pkeyutl",
            "-encrypt",
            "-pubin",
            "-inkey",
            "a.pub.pem",
            "-in",
            "key.bin",
        ],
    )
    .unwrap();
    assert_eq!(wrapped[0], 0x30, "OpenSSL writes SM2Cipher DER");
    assert_eq!(*crypto::unwrap_key(&key, &wrapped).unwrap(), [0xa5; 16]);
}

#[test]
fn kaibiao_signature_verifies_with_openssl() {
    let dir = tempfile::tempdir().unwrap();
    let Some(key) = openssl_key(dir.path(), "a") else {
        return;
    };
    let message = pattern(1000, 4);
    std::fs::write(dir.path().join("msg"), &message).unwrap();
    std::fs::write(
        dir.path().join("sig"),
        crypto::sign(&key, &message).unwrap(),
    )
    .unwrap();
    let out = openssl(
        dir.path(),
        &[
            "dgst",
            "-sm3",
            "-verify",
            "a.pub.pem",
            "-sigopt",
            "distid:1234567812345678",
            "-signature",
            "sig",
            "msg",
        ],
    )
    .unwrap();
    assert!(String::from_utf8_lossy(&out).contains("Verified OK"));
}

#[test]
fn openssl_signature_verifies_with_kaibiao() {
    let dir = tempfile::tempdir().unwrap();
    let Some(key) = openssl_key(dir.path(), "a") else {
        return;
    };
    let message = pattern(777, 5);
    std::fs::write(dir.path().join("msg"), &message).unwrap();
    openssl(
        dir.path(),
        &[
            "dgst",
            "-sm3",
            "-sign",
            "a.key.pem",
            "-sigopt",
            "distid:1234567812345678",
            "-out",
            "sig",
            "msg",
        ],
    )
    .unwrap();
    let signature = std::fs::read(dir.path().join("sig")).unwrap();
    crypto::verify(&key.public_key(), &message, &signature).unwrap();
    assert!(crypto::verify(&key.public_key(), b"other", &signature).is_err());
}

#[test]
fn a_bid_signed_with_an_openssl_certificate_is_sealed_and_opened() {
    let dir = tempfile::tempdir().unwrap();
    let Some(sign) = openssl_key(dir.path(), "sign") else {
        return;
    };
    let Some(enc) = openssl_key(dir.path(), "enc") else {
        return;
    };
    openssl(
        dir.path(),
        &[
            "req",
            "-new",
            "-x509",
            "-key",
            "sign.key.pem",
            "-sm3",
            "-sigopt",
            "distid:1234567812345678",
            "-subj",
            "/CN=某建设工程有限公司/serialNumber=91350100M000100Y43",
            "-days",
            "30",
            "-out",
            "sign.crt",
        ],
    )
    .unwrap();
    let cert = std::fs::read_to_string(dir.path().join("sign.crt")).unwrap();
    let signer = crypto::load_public_pem(&cert).unwrap();
    assert!(matches!(signer, crypto::PublicIdentity::Certificate { .. }));
    assert_eq!(*signer.key(), sign.public_key());

    let bidder = Bidder { sign, enc, signer };
    let input = dir.path().join("plain");
    std::fs::write(&input, pattern(9000, 6)).unwrap();
    let sealed = dir.path().join("bid.kbid");
    let summary = summary();
    let recipients = [bidder.enc.public_key()];
    kaibiao::engine::seal_file(
        &input,
        &sealed,
        &bidder.params(&summary, &recipients, 1024),
        &NoProgress,
    )
    .unwrap();
    let bid = SealedBid::open(&sealed).unwrap();
    assert!(bid.signer().describe().contains("91350100M000100Y43"));
    let key = bid.unwrap_file_key(&bidder.enc).unwrap();
    assert_eq!(bid.open_summary(&key).unwrap(), summary);

    // The wrapped key in the container is exactly what OpenSSL decrypts.
    std::fs::write(
        dir.path().join("wrapped.der"),
        &bid.header().recipients[0].wrapped_key,
    )
    .unwrap();
    let raw = openssl(
        dir.path(),
        &[
            "pkeyutl",
            "-decrypt",
            "-inkey",
            "enc.key.pem",
            "-in",
            "wrapped.der",
        ],
    )
    .unwrap();
    assert_eq!(raw, key.raw());
}
