//! Every refusal of a phone's answer, and of uploads and decryption at the wrong time.

use kaibiao::crypto;
use kaibiao::phone::{self, ChallengeView};

use crate::helpers::{Backend, TestApp, TestBidder, spawn_app};

crate::on_both_databases!(
    an_expired_qr_code_is_refused_and_replaced,
    a_wrong_certificate_is_refused,
    an_answer_signed_by_an_unregistered_key_is_refused,
    a_replayed_answer_is_refused,
    an_answer_for_another_bid_is_refused,
    a_closed_window_refuses_and_revokes,
    a_damaged_bid_fails_naming_its_chunk,
    a_bid_damaged_in_storage_fails_through_the_platform,
    upload_after_the_deadline_is_refused_and_changes_nothing,
    decryption_before_the_opening_time_is_refused,
    a_forged_or_foreign_upload_is_refused,
    a_bid_never_shows_two_valid_qr_codes,
    a_phone_refuses_a_hall_key_that_is_not_the_qr_codes,
);

/// An opening with the given bidders uploaded and decryption started.
async fn decrypting(app: &TestApp, bidders: &[&TestBidder]) -> String {
    let opening = app.opening_with_bids(bidders, 30, 600).await;
    app.start_after(&opening, 31).await;
    opening
}

async fn view_for(app: &TestApp, opening: &str, b: &TestBidder) -> ChallengeView {
    let url = app.qr_url(opening, b).await.unwrap();
    serde_json::from_value(app.challenge(&url).await.body).unwrap()
}

async fn an_expired_qr_code_is_refused_and_replaced(backend: Backend) {
    let app = spawn_app(&backend).await;
    let b = TestBidder::new(app.dir.path(), 1, 20_000);
    let opening = decrypting(&app, &[&b]).await;
    let view = view_for(&app, &opening, &b).await;
    let answer = phone::answer_challenge(&view, &b.enc, &b.sign).unwrap();
    app.advance_secs(61);
    let r = app.post_answer(&view, &answer).await;
    assert_eq!(r.status, 410, "{}", r.body);
    assert_eq!(r.body["error"], "qr_expired");
    let fresh = app.qr_url(&opening, &b).await.unwrap();
    assert!(!fresh.contains(&view.nonce), "a new QR code is shown");
    let events = app.events(&opening).await;
    assert!(events.iter().any(
        |e| e["kind"] == "bid.refused" && e["payload"].as_str().unwrap().contains("qr_expired")
    ));
    assert_eq!(app.scan(&opening, &b).await.status, 200);
    app.cleanup().await;
}

async fn a_wrong_certificate_is_refused(backend: Backend) {
    let app = spawn_app(&backend).await;
    let b = TestBidder::new(app.dir.path(), 1, 20_000);
    let opening = decrypting(&app, &[&b]).await;
    let view = view_for(&app, &opening, &b).await;
    // The phone holds another encryption certificate: it cannot even unwrap.
    let other = crypto::generate_secret_key();
    assert!(matches!(
        phone::answer_challenge(&view, &other, &b.sign),
        Err(phone::PhoneError::WrongCertificate)
    ));
    // A phone that re-wraps some other key is refused by the key commitment.
    let mut answer = phone::answer_challenge(&view, &b.enc, &b.sign).unwrap();
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let hall =
        crypto::parse_public_der(&b64.decode(&view.hall_public_key).unwrap(), false).unwrap();
    let wrong = crypto::wrap_key(hall.key(), &[9; 16]).unwrap();
    answer.rewrapped_key = b64.encode(&wrong);
    answer.signature = b64.encode(
        crypto::sign(
            &b.sign,
            &phone::answer_message(&view.nonce, &view.bid_id, &wrong),
        )
        .unwrap(),
    );
    let r = app.post_answer(&view, &answer).await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(r.body["error"], "wrong_certificate");
    assert!(
        r.body["message"]
            .as_str()
            .unwrap()
            .contains("非正确的加密证书")
    );
    // Nothing changed: the QR code is still usable.
    assert_eq!(app.scan(&opening, &b).await.status, 200);
    app.cleanup().await;
}

async fn an_answer_signed_by_an_unregistered_key_is_refused(backend: Backend) {
    let app = spawn_app(&backend).await;
    let b = TestBidder::new(app.dir.path(), 1, 20_000);
    let opening = decrypting(&app, &[&b]).await;
    let view = view_for(&app, &opening, &b).await;
    let stranger = crypto::generate_secret_key();
    let answer = phone::answer_challenge(&view, &b.enc, &stranger).unwrap();
    // Anyone who sees the QR code can post to it: each post is refused, but the display and the
    // event log show the refusal once, not once per post.
    for _ in 0..5 {
        let r = app.post_answer(&view, &answer).await;
        assert_eq!(r.status, 422, "{}", r.body);
        assert_eq!(r.body["error"], "bad_signature");
    }
    let refused = app
        .public_events(&opening)
        .await
        .into_iter()
        .filter(|e| e["kind"] == "bid.refused")
        .count();
    assert_eq!(refused, 1, "shown once");
    // The bidder's own phone still gets through.
    let answer = phone::answer_challenge(&view, &b.enc, &b.sign).unwrap();
    assert_eq!(app.post_answer(&view, &answer).await.status, 200);
    app.wait_until_settled(&opening).await;
    app.cleanup().await;
}

async fn a_replayed_answer_is_refused(backend: Backend) {
    let app = spawn_app(&backend).await;
    let b = TestBidder::new(app.dir.path(), 1, 20_000);
    let opening = decrypting(&app, &[&b]).await;
    let view = view_for(&app, &opening, &b).await;
    let answer = phone::answer_challenge(&view, &b.enc, &b.sign).unwrap();
    assert_eq!(app.post_answer(&view, &answer).await.status, 200);
    let again = app.post_answer(&view, &answer).await;
    assert_eq!(again.status, 409, "{}", again.body);
    assert!(matches!(
        again.body["error"].as_str(),
        Some("already_decrypted" | "qr_used")
    ));
    app.wait_until_settled(&opening).await;
    app.cleanup().await;
}

async fn an_answer_for_another_bid_is_refused(backend: Backend) {
    let app = spawn_app(&backend).await;
    let a = TestBidder::new(app.dir.path(), 1, 20_000);
    let b = TestBidder::new(app.dir.path(), 2, 20_000);
    let opening = decrypting(&app, &[&a, &b]).await;
    let view_a = view_for(&app, &opening, &a).await;
    let view_b = view_for(&app, &opening, &b).await;
    // A's valid answer, posted to B's challenge.
    let answer_a = phone::answer_challenge(&view_a, &a.enc, &a.sign).unwrap();
    let r = app.post_answer(&view_b, &answer_a).await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(r.body["error"], "bad_signature");
    // Both bids are untouched and open normally.
    assert_eq!(app.post_answer(&view_a, &answer_a).await.status, 200);
    assert_eq!(app.scan(&opening, &b).await.status, 200);
    app.wait_until_settled(&opening).await;
    app.cleanup().await;
}

async fn a_closed_window_refuses_and_revokes(backend: Backend) {
    let app = spawn_app(&backend).await;
    let b = TestBidder::new(app.dir.path(), 1, 20_000);
    let opening = decrypting(&app, &[&b]).await;
    let view = view_for(&app, &opening, &b).await;
    let answer = phone::answer_challenge(&view, &b.enc, &b.sign).unwrap();
    // The agent cannot cut the window short while a bid waits for its key: nothing changes.
    let r = app.act(&opening, "end-decryption").await;
    assert_eq!(r.status, 409, "{}", r.body);
    let said = r.body["message"].as_str().unwrap();
    assert!(said.contains("1 bid(s) still wait"), "{said}");
    let state = app.snapshot(&opening).await;
    assert_eq!(state["opening"]["state"], "decrypting");
    assert_eq!(state["bids"][0]["state"], "awaiting_key");
    app.advance_secs(601);
    let r = app.post_answer(&view, &answer).await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(r.body["error"], "window_closed");
    // The server's clock closes the window by itself and records why the bid was not decrypted.
    let mut state = serde_json::Value::Null;
    for _ in 0..100 {
        state = app.snapshot(&opening).await;
        if state["opening"]["state"] == "decryption_ended" {
            break;
        }
        actix_web::rt::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(state["opening"]["state"], "decryption_ended");
    assert_eq!(state["bids"][0]["state"], "not_decrypted");
    assert_eq!(state["bids"][0]["fault"], "bidder");
    app.cleanup().await;
}

/// A bid that passed every check at upload and was damaged in the platform's storage afterwards
/// fails through the platform's fault (withdrawn, 撤回: the bidder may claim its losses), not
/// the bidder's (revoked, 撤销), naming the chunk.
async fn a_bid_damaged_in_storage_fails_through_the_platform(backend: Backend) {
    let app = spawn_app(&backend).await;
    let b = TestBidder::new(app.dir.path(), 1, 100_000);
    let cut = TestBidder::new(app.dir.path(), 2, 100_000);
    let opening = decrypting(&app, &[&b, &cut]).await;
    let stored_file = |bidder: &TestBidder, s: &serde_json::Value| {
        let bid = s["bids"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["bidder_code"] == bidder.uscc.as_str())
            .unwrap()
            .clone();
        let id = bid["id"].as_str().unwrap().to_owned();
        let path = app
            .settings
            .data_dir
            .join("bids")
            .join(&opening)
            .join(format!("{id}.kbid"));
        (bid, path)
    };
    let before = app.snapshot(&opening).await;
    let stored = stored_file(&b, &before).1;
    // The other bid loses its last bytes (its signed trailer) on the platform's disk.
    let truncated = stored_file(&cut, &before).1;
    let len = std::fs::metadata(&truncated).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&truncated)
        .unwrap()
        .set_len(len - 10)
        .unwrap();
    let sealed = kaibiao::engine::SealedBid::open(&stored).unwrap();
    let at = sealed.body_offset() + 2 * sealed.header().chunk_stride() + 7;
    drop(sealed);
    let mut bytes = std::fs::read(&stored).unwrap();
    bytes[at as usize] ^= 0x01;
    std::fs::write(&stored, &bytes).unwrap();

    assert_eq!(app.scan(&opening, &b).await.status, 200);
    let _ = app.scan(&opening, &cut).await;
    let s = app.wait_until_settled(&opening).await;
    let bid = stored_file(&b, &s).0;
    assert_eq!(bid["state"], "failed", "{bid}");
    assert_eq!(bid["fault"], "platform", "{bid}");
    let failure = bid["failure"].as_str().unwrap();
    assert!(
        failure.contains("chunk 2") && failure.contains("撤回"),
        "{bid}"
    );
    let bid = stored_file(&cut, &s).0;
    assert_eq!(bid["state"], "failed", "{bid}");
    assert_eq!(bid["fault"], "platform", "{bid}");
    let failure = bid["failure"].as_str().unwrap();
    assert!(
        failure.contains("upload receipt") && failure.contains("撤回"),
        "{bid}"
    );
    let plain = app.settings.data_dir.join("plain");
    assert_eq!(
        std::fs::read_dir(plain).unwrap().count(),
        0,
        "no plaintext left"
    );
    app.cleanup().await;
}

/// The bidder sealed a chunk that does not decrypt, then signed the result: the upload passes the
/// signature checks, the decryption fails naming the chunk.
async fn a_damaged_bid_fails_naming_its_chunk(backend: Backend) {
    let app = spawn_app(&backend).await;
    let b = TestBidder::new(app.dir.path(), 1, 100_000);
    let sealed = kaibiao::engine::SealedBid::open(&b.file).unwrap();
    let mut bytes = std::fs::read(&b.file).unwrap();
    let stride = sealed.header().chunk_stride() as usize;
    let body = sealed.body_offset() as usize;
    bytes[body + 3 * stride + 10] ^= 0x55;
    let count = sealed.header().chunk_count() as usize;
    let digests: Vec<[u8; 32]> = (0..count)
        .map(|i| {
            let start = body + i * stride;
            let end = (start + stride).min(body + sealed.header().body_len() as usize);
            crypto::sm3(&bytes[start..end])
        })
        .collect();
    let trailer_at = body + sealed.header().body_len() as usize;
    let signature = crypto::sign(
        &b.sign,
        &kaibiao::format::signed_message(sealed.header_hash(), &digests),
    )
    .unwrap();
    bytes.truncate(trailer_at);
    bytes.extend(kaibiao::format::encode_trailer(&digests, &signature));
    std::fs::write(&b.file, &bytes).unwrap();

    let opening = decrypting(&app, &[&b]).await;
    assert_eq!(
        app.scan(&opening, &b).await.status,
        200,
        "the key itself is fine"
    );
    let s = app.wait_until_settled(&opening).await;
    let bid = &s["bids"][0];
    assert_eq!(bid["state"], "failed", "{bid}");
    assert_eq!(bid["fault"], "bidder");
    assert!(
        bid["failure"].as_str().unwrap().contains("chunk 3"),
        "{bid}"
    );
    let events = app.events(&opening).await;
    let failed = events.iter().find(|e| e["kind"] == "bid.failed").unwrap();
    assert!(failed["payload"].as_str().unwrap().contains("\"chunk\":3"));
    // No plaintext was left behind.
    let plain = app.dir.path().join("data/plain");
    assert_eq!(std::fs::read_dir(plain).unwrap().count(), 0);
    app.cleanup().await;
}

async fn upload_after_the_deadline_is_refused_and_changes_nothing(backend: Backend) {
    let app = spawn_app(&backend).await;
    let a = TestBidder::new(app.dir.path(), 1, 10_000);
    let opening = app.create_opening(30, 600).await;
    app.register(&opening, &a).await;
    let first = app.upload(&opening, &a).await;
    assert_eq!(first.status, 201);
    // A replacement before the deadline is accepted and replaces the first.
    let again = app.upload(&opening, &a).await;
    assert_eq!(again.status, 201);
    assert_eq!(again.body["replaced"], true);
    app.advance_secs(31);
    let late = app.upload(&opening, &a).await;
    assert_eq!(late.status, 409, "{}", late.body);
    assert_eq!(late.body["error"], "after_deadline");
    let s = app.snapshot(&opening).await;
    assert_eq!(s["bids"].as_array().unwrap().len(), 1);
    assert_eq!(s["bids"][0]["id"], again.body["bid_id"]);
    app.cleanup().await;
}

async fn decryption_before_the_opening_time_is_refused(backend: Backend) {
    let app = spawn_app(&backend).await;
    let opening = app.create_opening(300, 600).await;
    let r = app
        .agent(
            "POST",
            &format!("/api/openings/{opening}/start-decryption"),
            None,
        )
        .await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(r.body["error"], "before_opening");
    assert_eq!(
        app.snapshot(&opening).await["opening"]["state"],
        "scheduled"
    );
    app.cleanup().await;
}

async fn a_forged_or_foreign_upload_is_refused(backend: Backend) {
    let app = spawn_app(&backend).await;
    let a = TestBidder::new(app.dir.path(), 1, 10_000);
    let b = TestBidder::new(app.dir.path(), 2, 10_000);
    let opening = app.create_opening(60, 600).await;
    app.register(&opening, &a).await;
    app.register(&opening, &b).await;
    // B's file uploaded under A's name.
    let r = app
        .upload_bytes(&opening, a.uscc.as_str(), std::fs::read(&b.file).unwrap())
        .await;
    assert_eq!(r.status, 422, "{}", r.body);
    // A tampered file.
    let mut bytes = std::fs::read(&a.file).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 1;
    let r = app.upload_bytes(&opening, a.uscc.as_str(), bytes).await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(r.body["error"], "bid_rejected");
    // Not a bid at all.
    let r = app
        .upload_bytes(
            &opening,
            a.uscc.as_str(),
            b"%PDF-1.7 plaintext is refused".to_vec(),
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(
        app.snapshot(&opening).await["bids"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        std::fs::read_dir(app.dir.path().join("data/uploads"))
            .unwrap()
            .count(),
        0,
        "refused uploads are deleted"
    );
    app.cleanup().await;
}

crate::on_both_databases!(a_bidder_withdraws_before_the_deadline_only);

async fn a_bidder_withdraws_before_the_deadline_only(backend: Backend) {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let app = spawn_app(&backend).await;
    let a = TestBidder::new(app.dir.path(), 1, 10_000);
    let opening = app.create_opening(60, 600).await;
    app.register(&opening, &a).await;
    let receipt = app.upload(&opening, &a).await;
    let bid_id = receipt.body["bid_id"].as_str().unwrap().to_owned();
    let path = format!("/api/openings/{opening}/bids/{}/withdraw", a.uscc);
    // Signed by someone else: refused, nothing changes.
    let stranger = crypto::generate_secret_key();
    let forged = b64.encode(crypto::sign(&stranger, &phone::withdrawal_message(&bid_id)).unwrap());
    let r = app
        .call(
            "POST",
            &path,
            Some(serde_json::json!({"bid_id": bid_id, "signature": forged})),
            None,
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(
        app.snapshot(&opening).await["bids"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // Signed by the bidder: withdrawn, and a replay finds nothing to withdraw.
    let signature = b64.encode(crypto::sign(&a.sign, &phone::withdrawal_message(&bid_id)).unwrap());
    let body = serde_json::json!({"bid_id": bid_id, "signature": signature});
    let r = app.call("POST", &path, Some(body.clone()), None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        app.snapshot(&opening).await["bids"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert_eq!(app.call("POST", &path, Some(body), None).await.status, 404);
    // After the deadline a withdrawal is refused.
    let again = app.upload(&opening, &a).await;
    let bid_id = again.body["bid_id"].as_str().unwrap().to_owned();
    app.advance_secs(61);
    let signature = b64.encode(crypto::sign(&a.sign, &phone::withdrawal_message(&bid_id)).unwrap());
    let r = app
        .call(
            "POST",
            &path,
            Some(serde_json::json!({"bid_id": bid_id, "signature": signature})),
            None,
        )
        .await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(r.body["error"], "after_deadline");
    assert_eq!(
        app.snapshot(&opening).await["bids"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    app.cleanup().await;
}

/// A QR code issued for a bid that has a valid one already (two callers at once: the tick, the
/// start, a bid filed during decryption), or no longer waits for its key, is not issued: no
/// second valid code, no event.
async fn a_bid_never_shows_two_valid_qr_codes(backend: Backend) {
    use kaibiao::db::ChallengeRow;
    let app = spawn_app(&backend).await;
    let b = TestBidder::new(app.dir.path(), 1, 20_000);
    let opening = decrypting(&app, &[&b]).await;
    let shown = app.qr_url(&opening, &b).await.unwrap();
    let bid_id = app.snapshot(&opening).await["bids"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let events_before = app.events(&opening).await.len();
    let now = app.now_ms();
    let second = |nonce: &str| ChallengeRow {
        nonce: nonce.into(),
        opening_id: opening.clone(),
        bid_id: bid_id.clone(),
        expires_ms: now + 60_000,
        used: 0,
        created_ms: now,
    };
    let event = || {
        vec![(
            "qr.issued".to_owned(),
            "public".to_owned(),
            serde_json::json!({"bid_id": bid_id}),
        )]
    };
    let db = app.hall.db();
    let staged = db
        .insert_challenges(&opening, &[second(&"a".repeat(32))], event(), now)
        .await
        .unwrap();
    assert!(staged.is_empty(), "{staged:?}");
    assert!(db.challenge(&"a".repeat(32)).await.unwrap().is_none());
    assert_eq!(app.qr_url(&opening, &b).await.unwrap(), shown);

    // Once its key is in, none at all, even with the old one expired.
    assert_eq!(app.scan(&opening, &b).await.status, 200);
    app.wait_until_settled(&opening).await;
    let later = now + 120_000;
    let staged = db
        .insert_challenges(&opening, &[second(&"b".repeat(32))], event(), later)
        .await
        .unwrap();
    assert!(staged.is_empty(), "{staged:?}");
    assert!(db.challenge(&"b".repeat(32)).await.unwrap().is_none());
    let events = app.events(&opening).await;
    assert!(
        events[events_before..]
            .iter()
            .all(|e| e["kind"] != "qr.issued"),
        "no QR code announced"
    );
    app.cleanup().await;
}

/// The QR code carries the tag of the opening's hall key; a phone checks the challenge it
/// fetched against it, so a hall key put in the challenge's place on the way (no TLS, or TLS
/// intercepted) gets no file key re-wrapped to it.
async fn a_phone_refuses_a_hall_key_that_is_not_the_qr_codes(backend: Backend) {
    use base64::Engine;
    use sm2::pkcs8::EncodePublicKey;
    let app = spawn_app(&backend).await;
    let b = TestBidder::new(app.dir.path(), 1, 20_000);
    let opening = decrypting(&app, &[&b]).await;
    let url = app.qr_url(&opening, &b).await.unwrap();
    let view = view_for(&app, &opening, &b).await;
    let b64 = base64::engine::general_purpose::STANDARD;
    let hall_der = b64.decode(&view.hall_public_key).unwrap();
    assert_eq!(
        phone::qr_hall_key_tag(&url),
        Some(phone::hall_key_tag(&hall_der).as_str()),
        "{url}"
    );
    phone::check_hall_key(&view, &url).expect("the hall's own key");
    phone::check_hall_key(&view, &view.nonce).expect("a bare nonce carries no tag");

    let mut forged = view.clone();
    let other = crypto::generate_secret_key().public_key();
    forged.hall_public_key = b64.encode(other.to_public_key_der().unwrap().as_bytes());
    let refused = phone::check_hall_key(&forged, &url).unwrap_err();
    assert!(matches!(refused, phone::PhoneError::HallKeyMismatch));
    assert!(refused.to_string().contains("do not answer"), "{refused}");
    // The QR code drawn for the hall display holds the same URL.
    let mut res = app
        .client
        .get(format!(
            "{}/api/openings/{opening}/bids/{}/qr.svg",
            app.base, view.bid_id
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let svg = res.body().await.unwrap();
    assert!(svg.starts_with(b"<?xml") || svg.starts_with(b"<svg"));
    app.cleanup().await;
}
