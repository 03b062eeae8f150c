//! A platform that names the CAs it trusts (`trusted_cas`) registers only certificates they
//! issued, each for its use, and takes a bid only while its signing certificate is valid.

use serde_json::json;

use kaibiao::crypto;

use crate::ca::{ENC_EXT, SIGN_EXT, TestCa};
use crate::helpers::{Backend, Reply, TestApp, TestBidder, spawn_app, spawn_app_with};

crate::on_both_databases!(
    only_certificates_of_a_trusted_ca_are_registered,
    a_bid_signed_under_an_expired_certificate_is_refused,
    a_bad_trusted_ca_file_stops_the_server,
    a_bidders_phone_binds_its_certificates,
    keys_added_keep_their_certificates_and_a_limit
);

/// The CA's certificates for a bidder's two keys, naming it, valid `days`.
fn certificates(ca: &TestCa, b: &TestBidder, days: u32) -> (String, String) {
    let subject = format!("/CN={}/OU={}", b.name, b.uscc.as_str());
    let pem = |k: &sm2::SecretKey| crypto::private_key_pem(k).unwrap().to_string();
    (
        ca.issue(
            &format!("{}-sign", b.uscc.as_str()),
            &subject,
            &pem(&b.sign),
            SIGN_EXT,
            days,
        ),
        ca.issue(
            &format!("{}-enc", b.uscc.as_str()),
            &subject,
            &pem(&b.enc),
            ENC_EXT,
            days,
        ),
    )
}

/// `r` is a refusal with `status` whose message says `says`.
fn assert_refused(r: &Reply, status: u16, says: &str) {
    assert_eq!(r.status, status, "{}", r.body);
    let message = r.body["message"].as_str().unwrap_or_default();
    assert!(message.contains(says), "{message}");
}

/// Registers bidder `b` with the certificates `sign` and `enc` (PEM).
async fn register_with(app: &TestApp, opening: &str, b: &TestBidder, sign: &str, enc: &str) {
    let path = format!("/api/openings/{opening}/bidders");
    let r = app
        .agent("POST", &path, Some(registration(b, sign, enc)))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
}

fn registration(b: &TestBidder, sign: &str, enc: &str) -> serde_json::Value {
    let mut body = b.registration();
    body["sign_keys"] = json!([sign]);
    body["enc_keys"] = json!([enc]);
    body
}

/// Bare keys, a certificate of a CA not trusted and certificates registered for the wrong use
/// are refused, saying why, and register nothing; the trusted CA's certificates register, and
/// the bid sealed under them is taken, decrypted at the opening and settled.
async fn only_certificates_of_a_trusted_ca_are_registered(backend: Backend) {
    let cas = tempfile::tempdir().unwrap();
    let Some(ca) = TestCa::new(cas.path(), "trusted", "/CN=测试数字认证CA/O=测试CA", true)
    else {
        return;
    };
    let untrusted = TestCa::new(cas.path(), "untrusted", "/CN=别的CA", true).unwrap();
    let file = cas.path().join("cas.pem");
    std::fs::write(&file, &ca.pem).unwrap();
    let app = spawn_app_with(&backend, |s| s.trusted_cas = Some(file.clone())).await;
    let b = TestBidder::new(app.dir.path(), 0, 40_000);
    let (sign, enc) = certificates(&ca, &b, 10);
    let (other_sign, _) = certificates(&untrusted, &b, 10);
    let opening = app.create_opening(600, 1800).await;
    let path = format!("/api/openings/{opening}/bidders");

    for (body, says) in [
        (b.registration(), "bare public key"),
        (registration(&b, &other_sign, &enc), "does not trust"),
        (registration(&b, &enc, &sign), "may not be used to sign"),
    ] {
        let r = app.agent("POST", &path, Some(body)).await;
        assert_eq!(r.status, 422, "{}", r.body);
        assert_eq!(r.body["error"], "untrusted_certificate", "{}", r.body);
        let message = r.body["message"].as_str().unwrap();
        assert!(message.contains(says), "{message}");
    }
    assert_eq!(app.snapshot(&opening).await["bidders"], json!([]));

    let r = app
        .agent("POST", &path, Some(registration(&b, &sign, &enc)))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let r = app.upload(&opening, &b).await;
    assert_eq!(r.status, 201, "{}", r.body);
    app.start_after(&opening, 600).await;
    assert_eq!(app.scan(&opening, &b).await.status, 200);
    let settled = app.wait_until_settled(&opening).await;
    assert_eq!(settled["bids"][0]["state"], "decrypted", "{settled}");
    app.cleanup().await;
}

/// A bid arriving after its signing certificate expired is refused, saying so, and nothing is
/// filed. The agent registers the certificates the CA renewed for the same keys (they replace
/// the expired ones), and the same bid is taken.
async fn a_bid_signed_under_an_expired_certificate_is_refused(backend: Backend) {
    let cas = tempfile::tempdir().unwrap();
    let Some(ca) = TestCa::new(cas.path(), "ca", "/CN=测试CA", false) else {
        return;
    };
    let file = cas.path().join("cas.pem");
    std::fs::write(&file, &ca.pem).unwrap();
    let app = spawn_app_with(&backend, |s| s.trusted_cas = Some(file.clone())).await;
    let b = TestBidder::new(app.dir.path(), 0, 5_000);
    let (sign, enc) = certificates(&ca, &b, 1);
    let opening = app.create_opening(5 * 86_400, 1800).await;
    register_with(&app, &opening, &b, &sign, &enc).await;
    app.advance_secs(2 * 86_400);
    let r = app.upload(&opening, &b).await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(r.body["error"], "untrusted_certificate", "{}", r.body);
    let message = r.body["message"].as_str().unwrap();
    assert!(message.contains("证书已过期"), "{message}");
    assert_eq!(app.snapshot(&opening).await["bids"], json!([]));
    let (renewed_sign, renewed_enc) = certificates(&ca, &b, 10);
    let keys = format!("/api/openings/{opening}/bidders/{}/keys", b.uscc.as_str());
    let body = json!({"sign_keys": [renewed_sign], "enc_keys": [renewed_enc]});
    let r = app.call("POST", &keys, Some(body.clone()), None).await;
    assert_eq!(r.status, 401, "the agent's: {}", r.body);
    let r = app.agent("POST", &keys, Some(body)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        (r.body["sign_keys"].as_i64(), r.body["enc_keys"].as_i64()),
        (Some(1), Some(1))
    );
    let r = app.upload(&opening, &b).await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(app.payloads(&opening, "bidder.keys_added").await.len(), 1);
    let added = app.payloads(&opening, "bidder.keys_added").await;
    assert_eq!(
        added[0]["replaced"].as_array().unwrap().len(),
        2,
        "both renewed: {added:?}"
    );

    // A new key is added beside the old (a code typed in lower case finds the bidder); another
    // enterprise's certificate is refused; after the start nothing is added.
    let new_key = crypto::generate_secret_key();
    let pem = crypto::private_key_pem(&new_key).unwrap().to_string();
    let subject = format!("/CN={}/OU={}", b.name, b.uscc.as_str());
    let extra = ca.issue("extra", &subject, &pem, SIGN_EXT, 10);
    let lower = format!(
        "/api/openings/{opening}/bidders/{}/keys",
        b.uscc.as_str().to_lowercase()
    );
    let r = app
        .agent("POST", &lower, Some(json!({"sign_keys": [extra]})))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["sign_keys"], 2, "{}", r.body);
    let stranger = TestBidder::new(app.dir.path(), 5, 1_000);
    let (strangers, _) = certificates(&ca, &stranger, 10);
    let r = app
        .agent("POST", &keys, Some(json!({"sign_keys": [strangers]})))
        .await;
    assert_refused(&r, 422, "证书与投标人不符");
    app.start_after(&opening, 5 * 86_400).await;
    let (again, _) = certificates(&ca, &b, 10);
    let r = app
        .agent("POST", &keys, Some(json!({"sign_keys": [again]})))
        .await;
    assert_eq!(r.status, 409, "{}", r.body);
    app.cleanup().await;
}

/// A trusted CA file that cannot be read, or holds a certificate that is no CA's, stops the
/// server at start, naming the setting and what is wrong.
async fn a_bad_trusted_ca_file_stops_the_server(backend: Backend) {
    let cas = tempfile::tempdir().unwrap();
    let Some(ca) = TestCa::new(cas.path(), "ca", "/CN=测试CA", true) else {
        return;
    };
    let b = TestBidder::new(cas.path(), 0, 1_000);
    let (leaf, _) = certificates(&ca, &b, 10);
    let leaf_file = cas.path().join("leaf.pem");
    std::fs::write(&leaf_file, leaf).unwrap();
    let mut app = spawn_app_with(&backend, |_| {}).await;
    app.stop().await;
    let said = app
        .start_error(|s| s.trusted_cas = Some(leaf_file.clone()))
        .await;
    assert!(
        said.contains("trusted_cas") && said.contains("not a CA"),
        "{said}"
    );
    let missing = cas.path().join("missing.pem");
    let said = app.start_error(|s| s.trusted_cas = Some(missing)).await;
    assert!(said.contains("could not be read"), "{said}");
    app.cleanup().await;
}

/// Registers bidder `b` without certificates, for its phone to bind them.
async fn register_to_bind(app: &TestApp, opening: &str, b: &TestBidder) {
    let mut bare = b.registration();
    bare["sign_keys"] = json!([]);
    bare["enc_keys"] = json!([]);
    let path = format!("/api/openings/{opening}/bidders");
    let r = app.agent("POST", &path, Some(bare)).await;
    assert_eq!(r.status, 201, "{}", r.body);
}

/// What a phone posts to bind `sign` and `enc` (PEM) with the code `view` is of, signing with
/// `key`.
async fn phone_binds(
    app: &TestApp,
    view: &kaibiao::phone::BindView,
    sign: &str,
    enc: &str,
    key: &sm2::SecretKey,
) -> Reply {
    let bind = kaibiao::phone::bind(view, sign, enc, key).unwrap();
    let path = view.answer_url.strip_prefix(&app.base).unwrap();
    app.call(
        "POST",
        path,
        Some(serde_json::to_value(bind).unwrap()),
        None,
    )
    .await
}

/// 扫码绑定: the agent registers a bidder by its code and name alone and hands it a bind code;
/// the bidder's phone (`kaibiao phone bind`) binds the certificates its CA issued, and the bid
/// sealed to them is taken and decrypted. A signature by another key, certificates of an
/// untrusted CA, of another enterprise or naming this one only by name, and a changed code are
/// refused and bind nothing; a bidder binds once (two phones at once: one binds); once
/// decryption started the code is refused; and a platform that trusts no CA binds nothing by
/// phone.
async fn a_bidders_phone_binds_its_certificates(backend: Backend) {
    let cas = tempfile::tempdir().unwrap();
    let Some(ca) = TestCa::new(cas.path(), "trusted", "/CN=测试数字认证CA", true) else {
        return;
    };
    let untrusted = TestCa::new(cas.path(), "untrusted", "/CN=别的CA", true).unwrap();
    let file = cas.path().join("cas.pem");
    std::fs::write(&file, &ca.pem).unwrap();
    let app = spawn_app_with(&backend, |s| s.trusted_cas = Some(file.clone())).await;
    let b = TestBidder::new(app.dir.path(), 0, 30_000);
    let stranger = TestBidder::new(app.dir.path(), 1, 1_000);
    let opening = app.create_opening(600, 1800).await;
    register_to_bind(&app, &opening, &b).await;
    assert_eq!(
        app.snapshot(&opening).await["bidders"][0]["keys"],
        0,
        "waiting to bind"
    );
    let r = app.upload(&opening, &b).await;
    assert_eq!(r.status, 422, "no certificate bound yet: {}", r.body);

    let uscc = b.uscc.as_str();
    let code_path = format!("/api/openings/{opening}/bidders/{uscc}/bind-code");
    let r = app.call("POST", &code_path, None, None).await;
    assert_eq!(r.status, 401, "the agent's: {}", r.body);
    let code = app.agent("POST", &code_path, None).await;
    assert_eq!(code.status, 200, "{}", code.body);
    let url = code.body["url"].as_str().unwrap().to_owned();
    let path = url.strip_prefix(&app.base).unwrap().to_owned();
    assert!(
        app.get_bytes(&format!("{path}/qr.svg"))
            .await
            .starts_with(b"<?xml")
    );
    let r = app.call("GET", &path, None, None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let view: kaibiao::phone::BindView = serde_json::from_value(r.body).unwrap();
    assert_eq!(
        (view.bidder.as_str(), view.bidder_name.as_str()),
        (uscc, b.name.as_str())
    );

    let (sign, enc) = certificates(&ca, &b, 10);
    let (other_sign, other_enc) = certificates(&untrusted, &b, 10);
    let (strangers_sign, strangers_enc) = certificates(&ca, &stranger, 10);
    let by_name = |usage: &str, key: &sm2::SecretKey, ext: &str| {
        let pem = crypto::private_key_pem(key).unwrap().to_string();
        ca.issue(
            &format!("by-name-{usage}"),
            &format!("/CN={}", b.name),
            &pem,
            ext,
            10,
        )
    };
    let (named_sign, named_enc) = (
        by_name("sign", &b.sign, SIGN_EXT),
        by_name("enc", &b.enc, ENC_EXT),
    );
    for (sign, enc, key, error, says) in [
        (
            &sign,
            &enc,
            &b.enc,
            "invalid",
            "signing certificate being bound",
        ),
        (
            &other_sign,
            &other_enc,
            &b.sign,
            "untrusted_certificate",
            "does not trust",
        ),
        (
            &strangers_sign,
            &strangers_enc,
            &stranger.sign,
            "invalid",
            "证书与投标人不符",
        ),
        (
            &named_sign,
            &named_enc,
            &b.sign,
            "invalid",
            "does not carry",
        ),
    ] {
        let r = phone_binds(&app, &view, sign, enc, key).await;
        assert_eq!(r.status, 422, "{}", r.body);
        assert_eq!(r.body["error"], error, "{}", r.body);
        let message = r.body["message"].as_str().unwrap();
        assert!(message.contains(says), "{message}");
    }
    let mut changed = view.code.clone();
    let last = changed.pop().unwrap();
    changed.push(if last == '0' { '1' } else { '0' });
    let r = app
        .call("GET", &format!("/api/phone/binds/{changed}"), None, None)
        .await;
    assert_eq!(r.status, 404, "{}", r.body);
    let r = app.agent("POST", &code_path, None).await;
    assert_eq!(r.status, 200, "nothing bound: {}", r.body);

    // The reference phone binds; a second bind is refused.
    let write = |name: &str, text: &str| {
        let path = app.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let key = crypto::private_key_pem(&b.sign).unwrap();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_kaibiao"));
    command
        .args(["phone", "bind", &url, "--sign-cert"])
        .arg(write("sign.pem", &sign))
        .arg("--enc-cert")
        .arg(write("enc.pem", &enc))
        .arg("--sign-key")
        .arg(write("sign.key", &key));
    let out = actix_web::rt::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.starts_with("bound") && said.contains(&b.name),
        "{said}"
    );
    let r = phone_binds(&app, &view, &sign, &enc, &b.sign).await;
    assert_eq!(r.status, 409, "once: {}", r.body);
    let said = r.body["message"].as_str().unwrap();
    assert!(said.contains("ask the tender agent"), "{said}");
    // Nor does the agent get a bind code for a bidder with certificates.
    let r = app.agent("POST", &code_path, None).await;
    assert_eq!(r.status, 409, "{}", r.body);
    let bound = app.payloads(&opening, "bidder.bound").await;
    let crypto::PublicIdentity::Certificate { cert_der, .. } =
        crypto::load_public_pem(&sign).unwrap()
    else {
        panic!("a certificate");
    };
    let sm3 = hex::encode(crypto::sm3(&cert_der));
    assert_eq!(
        bound[0]["certificates"][0]["sm3"], sm3,
        "the log names the certificate"
    );

    // Two phones binding one bidder at once: one binds.
    let c = TestBidder::new(app.dir.path(), 2, 1_000);
    register_to_bind(&app, &opening, &c).await;
    let c_code = format!(
        "/api/openings/{opening}/bidders/{}/bind-code",
        c.uscc.as_str()
    );
    let c_url = app.agent("POST", &c_code, None).await.body["url"].clone();
    let c_path = c_url.as_str().unwrap().strip_prefix(&app.base).unwrap();
    let c_view: kaibiao::phone::BindView =
        serde_json::from_value(app.call("GET", c_path, None, None).await.body).unwrap();
    let (c_sign, c_enc) = certificates(&ca, &c, 10);
    let (one, other) = futures_util::join!(
        phone_binds(&app, &c_view, &c_sign, &c_enc, &c.sign),
        phone_binds(&app, &c_view, &c_sign, &c_enc, &c.sign)
    );
    let mut statuses = [one.status, other.status];
    statuses.sort();
    assert_eq!(statuses, [200, 409], "{} {}", one.body, other.body);
    let bound = app.payloads(&opening, "bidder.bound").await;
    assert_eq!(bound.len(), 2, "one per bidder: {bound:?}");

    let r = app.upload(&opening, &b).await;
    assert_eq!(r.status, 201, "{}", r.body);
    // The database's own rule, whatever the hall checked before: a bidder with keys binds
    // nothing, and once decryption started no bidder does.
    let db = app.hall.db();
    let c_row = db
        .bidder_by_uscc(&opening, c.uscc.as_str())
        .await
        .unwrap()
        .unwrap();
    let now = app.now_ms();
    let again = db
        .bind_bidder_keys(&opening, &c_row.id, &[], vec![], now)
        .await
        .unwrap();
    assert!(matches!(again, kaibiao::db::Bound::HasKeys), "{again:?}");
    app.start_after(&opening, 600).await;
    let closed = db
        .bind_bidder_keys(&opening, "no-keys-yet", &[], vec![], app.now_ms())
        .await
        .unwrap();
    assert!(matches!(closed, kaibiao::db::Bound::Closed), "{closed:?}");
    let r = app.call("GET", &path, None, None).await;
    assert_eq!(
        r.status, 409,
        "no binding once decryption started: {}",
        r.body
    );
    assert_eq!(app.scan(&opening, &b).await.status, 200);
    let settled = app.wait_until_settled(&opening).await;
    assert_eq!(settled["bids"][0]["state"], "decrypted", "{settled}");
    app.cleanup().await;

    let app = spawn_app(&backend).await;
    let opening = app.create_opening(600, 1800).await;
    app.register(&opening, &b).await;
    let r = app
        .agent(
            "POST",
            &format!("/api/openings/{opening}/bidders/{uscc}/bind-code"),
            None,
        )
        .await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(
        r.body["message"].as_str().unwrap().contains("trusted_cas"),
        "{}",
        r.body
    );
    app.cleanup().await;
}

/// Without trusted CAs the agent may add bare keys, but a bare key does not replace the
/// certificate kept for the same key; and a bidder keeps at most 16 keys (none is removed, so a
/// 17th is refused), saying what to do.
async fn keys_added_keep_their_certificates_and_a_limit(backend: Backend) {
    let cas = tempfile::tempdir().unwrap();
    let Some(ca) = TestCa::new(cas.path(), "ca", "/CN=测试CA", true) else {
        return;
    };
    let app = spawn_app(&backend).await;
    let b = TestBidder::new(app.dir.path(), 0, 1_000);
    let (sign, enc) = certificates(&ca, &b, 10);
    let opening = app.create_opening(600, 1800).await;
    register_with(&app, &opening, &b, &sign, &enc).await;
    let keys = format!("/api/openings/{opening}/bidders/{}/keys", b.uscc.as_str());
    let bare = crypto::public_key_pem(&b.sign.public_key()).unwrap();
    let r = app
        .agent("POST", &keys, Some(json!({"sign_keys": [bare]})))
        .await;
    assert_refused(&r, 422, "does not replace");
    assert!(
        app.payloads(&opening, "bidder.keys_added").await.is_empty(),
        "nothing logged"
    );

    let fresh = |n: usize| -> Vec<String> {
        (0..n)
            .map(|_| crypto::public_key_pem(&crypto::generate_secret_key().public_key()).unwrap())
            .collect()
    };
    let r = app
        .agent("POST", &keys, Some(json!({"sign_keys": fresh(14)})))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["sign_keys"], 15, "{}", r.body);
    let r = app
        .agent("POST", &keys, Some(json!({"enc_keys": fresh(1)})))
        .await;
    assert_refused(&r, 422, "renew the certificates");
    app.cleanup().await;
}
