//! The bid tool as a user runs it.

use assert_cmd::Command;

use crate::helpers::{BIDDER, pattern};

fn kaibiao() -> Command {
    Command::cargo_bin("kaibiao").unwrap()
}

#[test]
fn keygen_seal_inspect_verify_unseal() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    kaibiao()
        .args(["keygen", "--out"])
        .arg(d.join("keys"))
        .assert()
        .success();
    std::fs::create_dir_all(d.join("bid/附件")).unwrap();
    std::fs::write(d.join("bid/技术标.pdf"), pattern(300_000, 7)).unwrap();
    std::fs::write(d.join("bid/附件/报价.xlsx"), pattern(5_000, 8)).unwrap();
    std::fs::write(
        d.join("summary.toml"),
        "bidder_name = \"某公司\"\nprice_fen = 99900\nduration_days = 30\nquality = \"优良\"\n",
    )
    .unwrap();
    kaibiao()
        .current_dir(d)
        .args([
            "seal",
            "--input",
            "bid",
            "--summary",
            "summary.toml",
            "--tender",
            "ZB-1",
            "--bidder",
            BIDDER,
            "--recipient",
            "keys/enc.pub.pem",
            "--sign-key",
            "keys/sign.key.pem",
            "--out",
            "bid.kbid",
            "--chunk-size",
            "65536",
            "--threads",
            "2",
        ])
        .assert()
        .success();
    let inspect = kaibiao()
        .current_dir(d)
        .args(["inspect", "bid.kbid"])
        .assert()
        .success();
    let text = String::from_utf8_lossy(&inspect.get_output().stdout).into_owned();
    assert!(
        text.contains("ZB-1") && text.contains(BIDDER) && text.contains("valid"),
        "{text}"
    );
    kaibiao()
        .current_dir(d)
        .args(["verify", "bid.kbid"])
        .assert()
        .success();
    let unseal = kaibiao()
        .current_dir(d)
        .args([
            "unseal",
            "bid.kbid",
            "--key",
            "keys/enc.key.pem",
            "--out",
            "opened",
            "--threads",
            "1",
        ])
        .assert()
        .success();
    let text = String::from_utf8_lossy(&unseal.get_output().stdout).into_owned();
    assert!(text.contains("999.00"), "{text}");
    assert_eq!(
        std::fs::read(d.join("bid/技术标.pdf")).unwrap(),
        std::fs::read(d.join("opened/技术标.pdf")).unwrap()
    );
    assert_eq!(
        std::fs::read(d.join("bid/附件/报价.xlsx")).unwrap(),
        std::fs::read(d.join("opened/附件/报价.xlsx")).unwrap()
    );
    // The archive as the hall keeps it: the same files in a tar.
    let args = [
        "unseal",
        "bid.kbid",
        "--key",
        "keys/enc.key.pem",
        "--archive",
        "--out",
        "bid.tar",
    ];
    kaibiao().current_dir(d).args(args).assert().success();
    let mut archive = tar::Archive::new(std::fs::File::open(d.join("bid.tar")).unwrap());
    archive.unpack(d.join("from-tar")).unwrap();
    assert_eq!(
        std::fs::read(d.join("bid/技术标.pdf")).unwrap(),
        std::fs::read(d.join("from-tar/技术标.pdf")).unwrap()
    );
    let again = kaibiao().current_dir(d).args(args).assert().failure();
    let err = String::from_utf8_lossy(&again.get_output().stderr).into_owned();
    assert!(err.contains("already exists"), "{err}");

    // With the file key alone, as the hall releases it to the evaluators: the same archive; a
    // key that does not match the signed header's commitment opens nothing.
    let sealed = kaibiao::engine::SealedBid::open(&d.join("bid.kbid")).unwrap();
    let pem = std::fs::read_to_string(d.join("keys/enc.key.pem")).unwrap();
    let enc = kaibiao::crypto::load_private_pem(&pem).unwrap();
    let file_key = hex::encode(sealed.unwrap_file_key(&enc).unwrap().raw());
    let with_file_key = |key: &str, out: &str| {
        let args = [
            "unseal",
            "bid.kbid",
            "--file-key",
            key,
            "--archive",
            "--out",
            out,
        ];
        kaibiao().current_dir(d).args(args).assert()
    };
    with_file_key(&file_key, "by-file-key.tar").success();
    assert_eq!(
        std::fs::read(d.join("bid.tar")).unwrap(),
        std::fs::read(d.join("by-file-key.tar")).unwrap()
    );
    let wrong = format!("{:032x}", u128::from_str_radix(&file_key, 16).unwrap() ^ 1);
    let refused = with_file_key(&wrong, "wrong.tar").failure();
    let err = String::from_utf8_lossy(&refused.get_output().stderr).into_owned();
    assert!(err.contains("error:"), "{err}");
    assert!(!d.join("wrong.tar").exists());
    let refused = with_file_key("not hex", "bad.tar").failure();
    let err = String::from_utf8_lossy(&refused.get_output().stderr).into_owned();
    assert!(err.contains("32 hex digits"), "{err}");

    // A damaged file: verify fails with a reason naming the chunk, unseal leaves nothing behind.
    let mut bytes = std::fs::read(d.join("bid.kbid")).unwrap();
    let n = bytes.len();
    bytes[n - 300] ^= 1;
    std::fs::write(d.join("bid.kbid"), bytes).unwrap();
    let failed = kaibiao()
        .current_dir(d)
        .args(["verify", "bid.kbid"])
        .assert()
        .failure();
    let err = String::from_utf8_lossy(&failed.get_output().stderr).into_owned();
    assert!(err.contains("error:"), "{err}");
    kaibiao()
        .current_dir(d)
        .args([
            "unseal",
            "bid.kbid",
            "--key",
            "keys/enc.key.pem",
            "--out",
            "again",
        ])
        .assert()
        .failure();
    assert!(!d.join("again").exists());
}

#[test]
fn unseal_with_the_wrong_certificate_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    kaibiao()
        .args(["keygen", "--out"])
        .arg(d.join("a"))
        .assert()
        .success();
    kaibiao()
        .args(["keygen", "--out"])
        .arg(d.join("b"))
        .assert()
        .success();
    std::fs::write(d.join("plain.bin"), pattern(1000, 1)).unwrap();
    std::fs::write(
        d.join("s.toml"),
        "bidder_name = \"x\"\nprice_fen = 1\nduration_days = 1\nquality = \"q\"\n",
    )
    .unwrap();
    kaibiao()
        .current_dir(d)
        .args([
            "seal",
            "--input",
            "plain.bin",
            "--summary",
            "s.toml",
            "--tender",
            "T",
            "--bidder",
            BIDDER,
            "--recipient",
            "a/enc.pub.pem",
            "--sign-key",
            "a/sign.key.pem",
            "--out",
            "x.kbid",
        ])
        .assert()
        .success();
    let out = kaibiao()
        .current_dir(d)
        .args(["unseal", "x.kbid", "--key", "b/enc.key.pem", "--out", "o"])
        .assert()
        .failure();
    let err = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    assert!(err.contains("非正确的加密证书"), "{err}");
}

#[test]
fn a_bad_credit_code_is_refused_with_the_reason() {
    let out = kaibiao()
        .args([
            "seal",
            "--input",
            ".",
            "--summary",
            "s.toml",
            "--tender",
            "T",
            "--bidder",
            "91350100M000100Y44",
            "--recipient",
            "x",
            "--sign-key",
            "y",
            "--out",
            "z",
        ])
        .assert()
        .failure();
    let err = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    assert!(err.contains("check digit"), "{err}");
}

/// README's way of making the first agent, with an SM4 path forced as an operator might.
#[test]
fn an_agent_is_created_with_the_password_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    kaibiao()
        .args(["admin", "create-agent", "--username", "ops", "--data-dir"])
        .arg(dir.path())
        .env("KAIBIAO_AGENT_PASSWORD", "correct horse battery")
        .env("KAIBIAO_SM4", "portable")
        .assert()
        .success();
}

/// A bidder checks its receipt (回执), and anyone a signed head of the log, with the platform's
/// public key: exit status 0 only for exactly what the platform signed.
#[test]
fn check_tells_what_the_platform_signed() {
    use kaibiao::hall::{Receipt, SignedHead};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let platform = kaibiao::crypto::generate_secret_key();
    let pem = kaibiao::crypto::public_key_pem(&platform.public_key()).unwrap();
    std::fs::write(d.join("platform.pem"), pem).unwrap();
    let sign = |message: Vec<u8>| hex::encode(kaibiao::crypto::sign(&platform, &message).unwrap());
    let mut receipt = Receipt {
        bid_id: "b1".into(),
        opening_id: "o1".into(),
        tender_id: "ZB-1".into(),
        bidder: BIDDER.into(),
        size: 123,
        sm3: "ab".repeat(32),
        received_ms: 1_795_491_611_934,
        replaced: false,
        signature: String::new(),
    };
    receipt.signature = sign(receipt.signed_message());
    let mut head = SignedHead {
        opening_id: "o1".into(),
        seq: 7,
        hash: "cd".repeat(32),
        signed_ms: 1_795_491_611_934,
        signature: String::new(),
    };
    head.signature = sign(head.signed_message());
    let check = |name: &str, json: String| {
        std::fs::write(d.join(name), json).unwrap();
        kaibiao()
            .current_dir(d)
            .args(["check", name, "--platform-key", "platform.pem"])
            .assert()
    };
    let ok = check("receipt.json", serde_json::to_string(&receipt).unwrap()).success();
    let text = String::from_utf8_lossy(&ok.get_output().stdout).into_owned();
    assert!(
        text.contains("signed by the platform") && text.contains(BIDDER),
        "{text}"
    );
    check("head.json", serde_json::to_string(&head).unwrap()).success();

    receipt.size += 1;
    let bad = check("receipt.json", serde_json::to_string(&receipt).unwrap()).code(1);
    let text = String::from_utf8_lossy(&bad.get_output().stdout).into_owned();
    assert!(text.contains("NOT signed"), "{text}");
    head.seq -= 1;
    check("head.json", serde_json::to_string(&head).unwrap()).code(1);
    let other = check("other.json", "{\"a\":1}".into()).failure();
    let text = String::from_utf8_lossy(&other.get_output().stderr).into_owned();
    assert!(text.contains("neither a receipt"), "{text}");
}

/// `kaibiao check-cert` tells an agent before registering whether the hall, given the same CA
/// file, will take a certificate: for its use, issued to the enterprise, from a trusted CA.
#[test]
fn check_cert_says_whether_the_hall_will_take_a_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let Some(ca) = crate::ca::TestCa::new(d, "ca", "/CN=测试CA", true) else {
        return;
    };
    let other = crate::ca::TestCa::new(d, "other", "/CN=别的CA", true).unwrap();
    std::fs::write(d.join("cas.pem"), &ca.pem).unwrap();
    let key = kaibiao::crypto::private_key_pem(&kaibiao::crypto::generate_secret_key()).unwrap();
    let subject = format!("/CN=某公司/OU={BIDDER}");
    let sign = ca.issue("sign", &subject, &key, crate::ca::SIGN_EXT, 10);
    std::fs::write(d.join("sign.crt"), sign).unwrap();
    let stranger = other.issue("stranger", &subject, &key, crate::ca::SIGN_EXT, 10);
    std::fs::write(d.join("stranger.crt"), stranger).unwrap();
    let run = |args: &[&str]| {
        let out = kaibiao()
            .current_dir(d)
            .arg("check-cert")
            .args(args)
            .args(["--cas", "cas.pem"])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, said) = run(&["sign.crt", "--uscc", BIDDER]);
    assert_eq!(code, Some(0), "{said}");
    assert!(
        said.contains("accepted") && said.contains("测试CA"),
        "{said}"
    );
    let (code, said) = run(&["sign.crt", "--usage", "enc"]);
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("may not be used to decrypt"), "{said}");
    let (code, said) = run(&["sign.crt", "--uscc", "91110000100000000X"]);
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("证书与投标人不符"), "{said}");
    let (code, said) = run(&["stranger.crt"]);
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("does not trust"), "{said}");
}
