//! The opening record (开标记录): made once decryption is over, folded from the opening's public
//! log up to a point it names, with its digest and the platform's signed head of that point; it
//! agrees with the opening's tables, and `kaibiao check-record` re-derives it from the log.

use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, TestBidder, spawn_app};

crate::on_both_databases!(
    the_record_tells_what_became_of_every_bid_and_objection,
    a_failed_opening_has_a_record_and_no_record_is_made_before_the_end,
    anyone_rederives_the_record_from_the_public_log_with_the_command,
    a_hall_that_leaves_out_a_public_event_is_caught,
    bidders_confirm_the_issued_record_by_scan_signing
);

async fn record(app: &TestApp, opening: &str) -> crate::helpers::Reply {
    // Anyone may read it: no token.
    app.call(
        "GET",
        &format!("/api/openings/{opening}/record"),
        None,
        None,
    )
    .await
}

/// Waits for the tick to end the decryption window once its limit passed.
async fn ended(app: &TestApp, opening: &str) {
    for _ in 0..100 {
        if app.snapshot(opening).await["opening"]["state"] == "decryption_ended" {
            return;
        }
        actix_web::rt::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("the window did not end");
}

/// `scanned` scans; `waiting` objects, answered; the window (600 s) runs out.
async fn scanned_objected_ended(
    app: &TestApp,
    opening: &str,
    scanned: &TestBidder,
    waiting: &TestBidder,
) {
    assert_eq!(app.scan(opening, scanned).await.status, 200);
    app.wait_until_settled(opening).await;
    let path = format!("/api/openings/{opening}/objections");
    let body = json!({"bidder": waiting.uscc.as_str(), "text": "手机证书无法扫码"});
    assert_eq!(app.agent("POST", &path, Some(body)).await.status, 201);
    let answer = json!({"answer": "平台运行正常，请在解密时限内重试"});
    let r = app
        .agent("POST", &format!("{path}/1/answer"), Some(answer))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    app.advance_secs(601);
    ended(app, opening).await;
}

async fn the_record_tells_what_became_of_every_bid_and_objection(backend: Backend) {
    let app = spawn_app(&backend).await;
    let scanned = TestBidder::new(app.dir.path(), 1, 20_000);
    let waiting = TestBidder::new(app.dir.path(), 2, 20_000);
    let absent = TestBidder::new(app.dir.path(), 3, 20_000);
    let opening = app.opening_with_bids(&[&scanned, &waiting], 60, 600).await;
    app.register(&opening, &absent).await;
    let signed = crate::signin::phone_signs_in(&app, &opening, &scanned, &scanned.sign).await;
    assert_eq!(
        crate::signin::post_sign_in(&app, &opening, signed)
            .await
            .status,
        200
    );
    app.start_after(&opening, 61).await;

    // While decryption runs there is no record yet.
    let r = record(&app, &opening).await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(
        r.body["message"]
            .as_str()
            .unwrap()
            .contains("once decryption has ended")
    );

    scanned_objected_ended(&app, &opening, &scanned, &waiting).await;

    let r = app.checked_record(&opening).await;
    let rec = &r["record"];
    assert_eq!(rec["title"], "开标记录");
    assert_eq!(rec["opening"]["state"], "decryption_ended");
    let bids = rec["bids"].as_array().unwrap();
    assert_eq!(bids.len(), 2);
    let of = |b: &TestBidder| {
        bids.iter()
            .find(|x| x["bidder"]["uscc"] == b.uscc.as_str())
            .unwrap()
            .clone()
    };
    let (done, missed) = (of(&scanned), of(&waiting));
    assert_eq!(done["outcome"], "解密成功");
    assert_eq!(done["summary"]["price_fen"], scanned.summary.price_fen);
    assert_eq!(done["bidder"]["name"], scanned.name.as_str());
    assert_eq!(done["sm3"].as_str().unwrap().len(), 64);
    assert!(done["bidder"]["signed_in_ms"].as_i64().is_some(), "{done}");
    assert_eq!(missed["bidder"]["signed_in_ms"], Value::Null, "{missed}");
    assert_eq!(missed["outcome"], "未解密（投标人原因，视为撤销）");
    assert_eq!(missed["fault"], "bidder");
    assert_eq!(
        missed["summary"],
        Value::Null,
        "no summary of a bid never opened"
    );
    assert_eq!(
        rec["bidders_without_bid"],
        json!([{"uscc": absent.uscc.as_str(), "name": absent.name, "signed_in_ms": null}])
    );
    assert_eq!(rec["objections"][0]["text"], "手机证书无法扫码");
    assert_eq!(
        rec["objections"][0]["answer"],
        "平台运行正常，请在解密时限内重试"
    );

    // It names the log's last event, whose chain value the signed head gives; its digest is
    // SM3 over the record's JSON as served.
    let events = app.events(&opening).await;
    let last = events.last().unwrap();
    assert_eq!(rec["log"]["seq"], last["seq"]);
    assert_eq!(rec["log"]["hash"], last["hash"]);
    let head: kaibiao::hall::SignedHead = serde_json::from_value(r["log_head"].clone()).unwrap();
    assert_eq!(
        (head.seq, &head.hash),
        (
            rec["log"]["seq"].as_i64().unwrap(),
            &last["hash"].as_str().unwrap().to_owned()
        )
    );
    head.verify(&app.platform_key().await).unwrap();
    let bytes = serde_json::to_vec(rec).unwrap();
    assert_eq!(
        r["digest"],
        hex::encode(kaibiao::crypto::sm3(&bytes)),
        "the digest is of the record as served"
    );

    // Made again without a change, it is the same record; after the release it says so.
    assert_eq!(record(&app, &opening).await.body["digest"], r["digest"]);
    assert_eq!(app.act(&opening, "release").await.status, 200);
    let again = app.checked_record(&opening).await;
    assert_eq!(again["record"]["opening"]["state"], "released");
    assert_ne!(again["digest"], r["digest"]);
    assert!(again["record"]["log"]["seq"].as_i64() > rec["log"]["seq"].as_i64());

    // The printable page renders from it.
    let page = app.get_bytes(&format!("/hall/{opening}/record")).await;
    let page = String::from_utf8(page).unwrap();
    assert!(
        page.contains("开标记录") && page.contains("/static/record.js"),
        "{page}"
    );
    app.cleanup().await;
}

async fn a_failed_opening_has_a_record_and_no_record_is_made_before_the_end(backend: Backend) {
    let app = spawn_app(&backend).await;
    let only = TestBidder::new(app.dir.path(), 1, 20_000);
    let opening = app.opening_with_bids(&[&only], 60, 600).await;
    let r = record(&app, &opening).await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(record(&app, "no-such-opening").await.status, 404);
    app.advance_secs(61);
    let reason = "投标人少于3个，不得开标";
    let r = app
        .agent(
            "POST",
            &format!("/api/openings/{opening}/fail"),
            Some(json!({"reason": reason})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = app.checked_record(&opening).await;
    let rec = &r["record"];
    assert_eq!(rec["opening"]["state"], "failed");
    assert_eq!(rec["opening"]["failure"], reason);
    assert_eq!(rec["bids"][0]["bidder"]["name"], only.name.as_str());
    assert_eq!(rec["bids"][0]["outcome"], "未解密（开标失败）");
    assert_eq!(rec["objections"], json!([]));
    app.cleanup().await;
}

/// What the phone does when it scans the record's QR code: reads the view and the record, checks
/// the digest, signs as `bidder` with `key`.
pub(crate) async fn phone_confirms(
    app: &TestApp,
    opening: &str,
    version: i64,
    bidder: &TestBidder,
    key: &sm2::SecretKey,
) -> (
    kaibiao::phone::RecordView,
    kaibiao::phone::RecordConfirmation,
) {
    let r = app
        .call(
            "GET",
            &format!("/api/phone/records/{opening}/{version}"),
            None,
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let view: kaibiao::phone::RecordView = serde_json::from_value(r.body).unwrap();
    let path = view.record_url.split_once(&app.base).unwrap().1.to_owned();
    let text = app.get_bytes(&path).await;
    let confirmation =
        kaibiao::phone::confirm_record(&view, &text, bidder.uscc.as_str(), key).unwrap();
    // A record changed on the way is not signed.
    let mut changed = text.to_vec();
    changed[10] ^= 1;
    assert!(kaibiao::phone::confirm_record(&view, &changed, bidder.uscc.as_str(), key).is_err());
    (view, confirmation)
}

pub(crate) async fn post_confirmation(
    app: &TestApp,
    opening: &str,
    version: &str,
    body: Value,
) -> crate::helpers::Reply {
    app.call(
        "POST",
        &format!("/api/phone/records/{opening}/{version}"),
        Some(body),
        None,
    )
    .await
}

/// Bidder `b`'s phone confirms version 1 of the issued record, and the hall takes it.
pub(crate) async fn confirm_first_version(app: &TestApp, opening: &str, b: &TestBidder) {
    let (_, confirmation) = phone_confirms(app, opening, 1, b, &b.sign).await;
    let body = serde_json::to_value(&confirmation).unwrap();
    let r = post_confirmation(app, opening, "1", body).await;
    assert_eq!(r.status, 200, "{}", r.body);
}

async fn bidders_confirm_the_issued_record_by_scan_signing(backend: Backend) {
    let app = spawn_app(&backend).await;
    let a = TestBidder::new(app.dir.path(), 1, 20_000);
    let b = TestBidder::new(app.dir.path(), 2, 20_000);
    let opening = app.opening_with_bids(&[&a, &b], 60, 1800).await;
    app.start_after(&opening, 61).await;
    for x in [&a, &b] {
        assert_eq!(app.scan(&opening, x).await.status, 200);
    }
    app.wait_until_settled(&opening).await;
    let issue = format!("/api/openings/{opening}/record/issue");
    let r = app.agent("POST", &issue, None).await;
    assert_eq!(r.status, 409, "not before decryption has ended: {}", r.body);
    let issued_path = format!("/api/openings/{opening}/record/issued");
    assert_eq!(app.call("GET", &issued_path, None, None).await.status, 404);
    assert_eq!(app.act(&opening, "end-decryption").await.status, 200);
    assert_eq!(
        app.call("POST", &issue, None, None).await.status,
        401,
        "only the agent issues it"
    );
    let r = app.agent("POST", &issue, None).await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["version"], 1);
    let digest = r.body["digest"].as_str().unwrap().to_owned();

    // A's phone confirms it; the record read is the one whose digest it signs.
    let (view, confirmation) = phone_confirms(&app, &opening, 1, &a, &a.sign).await;
    assert_eq!((view.version, view.digest.as_str()), (1, digest.as_str()));
    assert_eq!(view.tender_name, "测试工程施工招标");
    let body = serde_json::to_value(&confirmation).unwrap();
    let r = post_confirmation(&app, &opening, "1", body.clone()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = post_confirmation(&app, &opening, "1", body).await;
    assert_eq!(r.status, 409, "{}", r.body);
    let counted = "bidder_actions_total{action=\"record_confirmation\"}";
    assert_eq!(app.metric(counted).await, 1.0, "counted once");
    assert!(
        r.body["message"]
            .as_str()
            .unwrap()
            .contains("confirmed this record already")
    );

    // Forged, misattributed or malformed confirmations change nothing.
    let (_, with_enc_key) = phone_confirms(&app, &opening, 1, &b, &b.enc).await;
    let (_, bs) = phone_confirms(&app, &opening, 1, &b, &b.sign).await;
    let as_a = json!({"bidder": a.uscc.as_str(), "signature": bs.signature});
    let unknown = json!({"bidder": "91350100M000100Y43", "signature": bs.signature});
    for (body, status, says) in [
        (
            serde_json::to_value(&with_enc_key).unwrap(),
            422,
            "signature is not valid",
        ),
        (as_a, 422, "signature is not valid"),
        (unknown, 422, "no bidder with the code"),
        (
            json!({"bidder": b.uscc.as_str(), "signature": "%%%"}),
            422,
            "not base64",
        ),
        (json!({"bidder": b.uscc.as_str()}), 422, "not valid"),
    ] {
        let r = post_confirmation(&app, &opening, "1", body.clone()).await;
        assert_eq!(r.status, status, "{body}: {}", r.body);
        assert!(
            r.body["message"].as_str().unwrap().contains(says),
            "{body}: {}",
            r.body
        );
    }
    let r = post_confirmation(&app, &opening, "one", serde_json::to_value(&bs).unwrap()).await;
    assert_eq!(r.status, 422, "{}", r.body);
    let issued = app.call("GET", &issued_path, None, None).await.body;
    assert_eq!(issued["version"], 1);
    let confirmed = issued["confirmations"].as_array().unwrap();
    assert_eq!(confirmed.len(), 1, "{issued}");
    assert_eq!(confirmed[0]["uscc"], a.uscc.as_str());
    // Anyone can check the stored signature against A's key.
    let signature = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        confirmed[0]["signature"].as_str().unwrap(),
    )
    .unwrap();
    let message = kaibiao::phone::record_confirmation_message(&opening, 1, &digest);
    kaibiao::crypto::verify(&a.sign.public_key(), &message, &signature).unwrap();

    // Issued again (after another objection): version 2 supersedes version 1.
    let path = format!("/api/openings/{opening}/objections");
    let r = app
        .agent("POST", &path, Some(json!({"text": "补充异议"})))
        .await;
    assert_eq!(r.status, 201);
    let r = app
        .agent(
            "POST",
            &format!("{path}/1/answer"),
            Some(json!({"answer": "已答复"})),
        )
        .await;
    assert_eq!(r.status, 200);
    let r = app.agent("POST", &issue, None).await;
    assert_eq!((r.status, &r.body["version"]), (201, &json!(2)));
    assert_ne!(r.body["digest"], digest.as_str());
    let r = post_confirmation(&app, &opening, "1", serde_json::to_value(&bs).unwrap()).await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.body["message"].as_str().unwrap().contains("version 2 is"));
    let text = format!("/api/openings/{opening}/record/issued/1");
    assert_eq!(app.call("GET", &text, None, None).await.status, 409);
    let (_, bs2) = phone_confirms(&app, &opening, 2, &b, &b.sign).await;
    let r = post_confirmation(&app, &opening, "2", serde_json::to_value(&bs2).unwrap()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let record = app.public_snapshot(&opening).await["record"].clone();
    assert_eq!(record["version"], 2);
    assert_eq!(record["confirmations"][0]["uscc"], b.uscc.as_str());
    assert_eq!(record["confirmations"].as_array().unwrap().len(), 1);

    // The hall's QR code is of the latest version only.
    let qr = |v: i64| format!("/api/openings/{opening}/record/issued/{v}/qr.svg");
    let svg = app
        .client
        .get(format!("{}{}", app.base, qr(2)))
        .send()
        .await
        .unwrap();
    assert_eq!(svg.status().as_u16(), 200);
    assert_eq!(svg.headers().get("content-type").unwrap(), "image/svg+xml");
    assert_eq!(app.call("GET", &qr(1), None, None).await.status, 409);

    // Each issue and each confirmation is in the public log, the chain intact.
    let kinds: Vec<Value> = app
        .public_events(&opening)
        .await
        .into_iter()
        .filter(|e| e["kind"].as_str().unwrap().starts_with("record."))
        .map(|e| {
            let data: Value = serde_json::from_str(e["payload"].as_str().unwrap()).unwrap();
            json!([e["kind"], data["version"]])
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            json!(["record.issued", 1]),
            json!(["record.confirmed", 1]),
            json!(["record.issued", 2]),
            json!(["record.confirmed", 2]),
        ]
    );
    app.assert_chain_valid(&opening).await;
    app.cleanup().await;
}

/// Runs `kaibiao check-record --server … --opening OPENING ARGS`: its exit status and output.
async fn check_record(app: &TestApp, opening: &str, args: &[&str]) -> (bool, String) {
    check_record_at(&app.base, opening, args).await
}

/// Runs `kaibiao check-record` against the hall at `server`.
async fn check_record_at(server: &str, opening: &str, args: &[&str]) -> (bool, String) {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_kaibiao"));
    command
        .args(["check-record", "--server", server, "--opening", opening])
        .args(args);
    let out = actix_web::rt::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A hall in front of `upstream` that passes every request on but leaves public event `hidden`
/// out of `/events`; its address, and the handle that stops it.
async fn hall_leaving_out(upstream: &str, hidden: i64) -> (String, actix_web::dev::ServerHandle) {
    use actix_web::{HttpRequest, HttpResponse, web};
    let upstream = upstream.to_owned();
    let server = actix_web::HttpServer::new(move || {
        let upstream = upstream.clone();
        actix_web::App::new().default_service(web::to(move |req: HttpRequest| {
            let upstream = upstream.clone();
            async move {
                let mut res = awc::Client::default()
                    .get(format!("{upstream}{}", req.uri()))
                    .send()
                    .await
                    .unwrap();
                let body = res.body().limit(64 << 20).await.unwrap();
                if !req.path().ends_with("/events") {
                    return HttpResponse::build(res.status())
                        .content_type("application/json")
                        .body(body);
                }
                let mut events: Vec<Value> = serde_json::from_slice(&body).unwrap();
                events.retain(|e| e["seq"] != hidden);
                HttpResponse::build(res.status()).json(events)
            }
        }))
    })
    .workers(1)
    .bind("127.0.0.1:0")
    .unwrap();
    let address = server.addrs()[0];
    let server = server.run();
    let handle = server.handle();
    actix_web::rt::spawn(server);
    (format!("http://{address}"), handle)
}

/// A hall that leaves a public event out of the log it gives (one that would change the record)
/// while giving the digests of the chain its platform signed: `check-record` finds the event
/// missing among those the chain holds, and names it.
async fn a_hall_that_leaves_out_a_public_event_is_caught(backend: Backend) {
    let app = spawn_app(&backend).await;
    let scanned = TestBidder::new(app.dir.path(), 1, 20_000);
    let waiting = TestBidder::new(app.dir.path(), 2, 20_000);
    let opening = app.opening_with_bids(&[&scanned, &waiting], 60, 600).await;
    app.start_after(&opening, 61).await;
    scanned_objected_ended(&app, &opening, &scanned, &waiting).await;
    let answered = app
        .public_events(&opening)
        .await
        .into_iter()
        .find(|e| e["kind"] == "objection.answered")
        .expect("the answer is public");
    let hidden = answered["seq"].as_i64().unwrap();
    let platform = app.dir.path().join("platform.pem");
    std::fs::write(
        &platform,
        kaibiao::crypto::public_key_pem(&app.platform_key().await).unwrap(),
    )
    .unwrap();
    let platform = platform.to_string_lossy().into_owned();
    let (ok, out) = check_record(&app, &opening, &["--platform-key", &platform]).await;
    assert!(ok, "the hall itself passes: {out}");
    let (base, hall) = hall_leaving_out(&app.base, hidden).await;
    let (ok, out) = check_record_at(&base, &opening, &["--platform-key", &platform]).await;
    assert!(!ok && out.contains(&format!("left out: {hidden}")), "{out}");
    hall.stop(true).await;
    app.cleanup().await;
}

async fn anyone_rederives_the_record_from_the_public_log_with_the_command(backend: Backend) {
    let app = spawn_app(&backend).await;
    let scanned = TestBidder::new(app.dir.path(), 1, 20_000);
    let waiting = TestBidder::new(app.dir.path(), 2, 20_000);
    let opening = app.opening_with_bids(&[&scanned, &waiting], 60, 600).await;
    app.start_after(&opening, 61).await;
    scanned_objected_ended(&app, &opening, &scanned, &waiting).await;

    // The record as of now, with the platform's key from outside the hall.
    let key_file = |name: &str, key: &sm2::PublicKey| {
        let path = app.dir.path().join(name);
        std::fs::write(&path, kaibiao::crypto::public_key_pem(key).unwrap()).unwrap();
        path.to_string_lossy().into_owned()
    };
    let platform = key_file("platform.pem", &app.platform_key().await);
    let (ok, out) = check_record(&app, &opening, &["--platform-key", &platform]).await;
    assert!(
        ok && out.contains("is what the opening's public log folds to")
            && out.contains("the chain of all"),
        "{out}"
    );
    let stranger = kaibiao::crypto::generate_secret_key().public_key();
    let stranger = key_file("stranger.pem", &stranger);
    let (ok, out) = check_record(&app, &opening, &["--platform-key", &stranger]).await;
    assert!(
        !ok && out.contains("not signed by this platform key"),
        "{out}"
    );
    let (ok, out) = check_record(&app, &opening, &[]).await;
    assert!(!ok && out.contains("give --platform-key"), "{out}");

    // What the hall display's footer shows now (记录摘要: event number, chain value's first 16
    // hex digits), as a recording of the room keeps it, and a head the platform signs now, as a
    // viewer keeps it: the log passes through both.
    let shown = app.public_snapshot(&opening).await;
    let footer = &shown["last_hash"].as_str().unwrap()[..16];
    let pin = format!("{}:{footer}", shown["last_seq"]);
    let head = app
        .call(
            "GET",
            &format!("/api/openings/{opening}/events/head"),
            None,
            None,
        )
        .await;
    let head_file = app.dir.path().join("head.json");
    std::fs::write(&head_file, head.body.to_string()).unwrap();
    let head_file = head_file.to_string_lossy().into_owned();
    let kept = [
        "--platform-key",
        &platform,
        "--pin",
        &pin,
        "--head",
        &head_file,
    ];
    let (ok, out) = check_record(&app, &opening, &kept).await;
    assert!(ok && out.contains("passes through the 2 point(s)"), "{out}");
    let (ok, out) = check_record(&app, &opening, &["--version", "1", "--pin", "3:abc"]).await;
    assert!(!ok && out.contains("at least 16 hex digits"), "{out}");
    let (ok, out) = check_record(&app, "no-such-opening", &["--platform-key", &platform]).await;
    assert!(!ok && out.contains("not found"), "{out}");

    // A version issued for confirmation.
    assert_eq!(app.act(&opening, "record/issue").await.status, 201);
    let (ok, out) = check_record(&app, &opening, &["--version", "1"]).await;
    assert!(
        ok && out.contains("version 1 of the record")
            && out.contains("NOTE: without --platform-key"),
        "{out}"
    );
    // With the platform's key, the chain is held to the head the platform signs now.
    let (ok, out) = check_record(
        &app,
        &opening,
        &["--version", "1", "--platform-key", &platform],
    )
    .await;
    assert!(ok && out.contains("passes through the 1 point(s)"), "{out}");

    // The log rewritten after the record was issued (the answer to the objection changed): the
    // issued record is no longer what the log folds to, and the command says where.
    app.sql(
        "UPDATE events SET payload = replace(payload, '请在解密时限内重试', '无需重试') \
         WHERE opening_id = $1 AND kind = 'objection.answered'",
        &opening,
    )
    .await;
    let (ok, out) = check_record(&app, &opening, &["--version", "1"]).await;
    assert!(
        !ok && out.contains(".objections[0].answer") && out.contains("does not chain"),
        "{out}"
    );
    // The record as of now is made from the rewritten log, but the chain through it, checked by
    // the command, does not hold.
    let (ok, out) = check_record(&app, &opening, &["--platform-key", &platform]).await;
    assert!(!ok && out.contains("does not chain"), "{out}");

    // Whoever can write the database rechains the rewritten log: the chain holds again and the
    // platform signs its new head, so someone who kept nothing sees no fault; the footer and the
    // head kept earlier show the rewrite.
    app.rechain(&opening).await;
    let (ok, out) = check_record(&app, &opening, &["--platform-key", &platform]).await;
    assert!(ok, "{out}");
    let (ok, out) = check_record(&app, &opening, &kept[..4]).await;
    assert!(
        !ok && out.contains(&format!("saw chain value {footer}"))
            && out.contains("rewritten at or before event"),
        "{out}"
    );
    let (ok, out) = check_record(
        &app,
        &opening,
        &["--platform-key", &platform, "--head", &head_file],
    )
    .await;
    assert!(
        !ok && out.contains("the signed head in") && out.contains("rewritten"),
        "{out}"
    );
    app.cleanup().await;
}
