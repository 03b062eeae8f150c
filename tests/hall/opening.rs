//! A whole opening, from upload to the evaluators' download, and a restart in the middle.

use kaibiao::crypto;
use serde_json::json;

use crate::helpers::{Backend, TestApp, TestBidder, Viewer, spawn_app, spawn_app_with};

crate::on_both_databases!(
    twenty_bidders_from_upload_to_evaluator_download,
    a_restarted_server_resumes_the_opening,
    a_restart_removes_what_a_killed_server_left_half_written,
    a_window_that_ran_out_while_no_server_ran_ends_through_the_platform,
    a_window_is_given_back_the_time_no_server_ran,
    a_window_whose_limit_passed_while_the_hall_ran_ends_as_the_bidders,
    an_accepted_bid_without_a_task_is_decrypted_by_the_hall,
    a_decrypted_bid_without_its_digest_gets_it_from_the_hall,
    a_digest_that_cannot_be_computed_is_told_to_the_evaluator,
    a_small_bid_is_not_held_up_by_a_large_one,
    a_bid_received_in_time_and_checked_after_decryption_started_gets_its_qr_code,
    a_decryption_the_platform_fails_is_tried_again_or_given_up
);

/// No bidder can scan while no server runs: the next start gives that time back to the
/// decryption window (its limit moves on by it, even past the limit as first set), says so in
/// the log and on the hall display, and a bidder that could not scan then does now.
async fn a_window_is_given_back_the_time_no_server_ran(backend: Backend) {
    let app = spawn_app(&backend).await;
    let (opening, _, waiting) = one_decrypted_one_waiting(&app).await;
    let deadline = decrypt_deadline(&app, &opening).await;
    let mut app = app;
    app.stop().await;
    // Down for 40 minutes, past the 30-minute limit.
    app.advance_secs(2400);
    let app = app.restart().await;

    let state = app.snapshot(&opening).await;
    assert_eq!(state["opening"]["state"], "decrypting", "{state}");
    let extended = state["opening"]["decrypt_deadline_ms"].as_i64().unwrap();
    // The stop is measured from the last record that the hall ran: at most 5 s before it, plus
    // the real time stopping and starting took.
    assert!(
        (deadline + 2_400_000..deadline + 2_415_000).contains(&extended),
        "{deadline} → {extended}"
    );
    let told = app
        .public_payloads(&opening, "decryption.extended")
        .await
        .pop()
        .expect("the hall display is told");
    assert_eq!(told["deadline_ms"], extended);
    assert_eq!(told["previous_deadline_ms"], deadline);
    assert!(
        told["reason"].as_str().unwrap().contains("not running"),
        "{told}"
    );
    app.assert_chain_valid(&opening).await;

    // The bidder scans a fresh QR code now; the window still ends at its new limit.
    let mut fresh = None;
    for _ in 0..100 {
        fresh = app.qr_url(&opening, &waiting).await;
        if fresh.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(fresh.is_some(), "a fresh QR code");
    assert_eq!(app.scan(&opening, &waiting).await.status, 200);
    let state = app.wait_until_settled(&opening).await;
    assert!(
        state["bids"]
            .as_array()
            .unwrap()
            .iter()
            .all(|b| b["state"] == "decrypted"),
        "{state}"
    );
    // A second restart right away gives back only the seconds it was down, once.
    let mut app = app;
    app.stop().await;
    let app = app.restart().await;
    let again = decrypt_deadline(&app, &opening).await;
    assert!(
        (extended..extended + 15_000).contains(&again),
        "{extended} → {again}"
    );
    // A start that gave time back and died before recording its own run leaves the record of
    // the run before: the next start does not give that time back twice.
    let mut app = app;
    app.stop().await;
    record_run_at(&app, deadline - 1_700_000).await;
    let app = app.restart().await;
    let third = decrypt_deadline(&app, &opening).await;
    assert!(
        (again..again + 15_000).contains(&third),
        "{again} → {third}"
    );
    app.cleanup().await;
}

/// A hall that ran until the time limit passed and stopped before its tick ended the window:
/// the bidders had the whole window, so the next start ends it as the tick would have, the bids
/// still waiting the bidders' fault (revoked, 撤销), not the platform's.
async fn a_window_whose_limit_passed_while_the_hall_ran_ends_as_the_bidders(backend: Backend) {
    let app = spawn_app(&backend).await;
    let (opening, _, waiting) = one_decrypted_one_waiting(&app).await;
    let deadline = decrypt_deadline(&app, &opening).await;
    let mut app = app;
    app.stop().await;
    record_run_at(&app, deadline + 1_000).await;
    app.advance_secs(1900);
    let app = app.restart().await;
    let state = app.snapshot(&opening).await;
    assert_eq!(state["opening"]["state"], "decryption_ended", "{state}");
    let missed = state["bids"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["bidder_code"] == waiting.uscc.as_str())
        .unwrap()
        .clone();
    assert_eq!(missed["state"], "not_decrypted", "{missed}");
    assert_eq!(missed["fault"], "bidder", "{missed}");
    assert!(
        !app.events(&opening)
            .await
            .iter()
            .any(|e| e["kind"] == "decryption.extended"),
        "nothing given back"
    );
    app.cleanup().await;
}

/// An upload received before the deadline is checked (every chunk against the bidder's
/// signature) before it is stored: seconds for a large bid, during which the agent may start
/// decryption. Such a bid waits for its key like the others, with its QR code; a replacement
/// checked after the bidder's earlier bid was answered is refused and changes nothing.
async fn a_bid_received_in_time_and_checked_after_decryption_started_gets_its_qr_code(
    backend: Backend,
) {
    let app = spawn_app(&backend).await;
    let early = TestBidder::new(app.dir.path(), 0, 20_000);
    let late = TestBidder::new(app.dir.path(), 1, 30_000);
    let opening = app.opening_with_bids(&[&early], 60, 1800).await;
    app.register(&opening, &late).await;
    // Both uploads have arrived (before the deadline) and are still being checked.
    let received = app.now_ms();
    app.start_after(&opening, 61).await;
    let arrived = |bidder: &TestBidder, name: &str| {
        let upload = app.dir.path().join(name);
        std::fs::copy(&bidder.file, &upload).unwrap();
        let sm3 = hex::encode(crypto::sm3(&std::fs::read(&upload).unwrap()));
        (upload, sm3)
    };
    let (upload, sm3) = arrived(&late, "late.upload");
    let receipt = app
        .hall
        .receive_bid(&opening, late.uscc.as_str(), upload, &sm3, received)
        .await
        .expect("a bid received in time is stored");
    assert!(!receipt.replaced);
    let r = app.scan(&opening, &late).await;
    assert_eq!(r.status, 200, "{}", r.body);

    // The early bidder's phone answers; then its replacement, received in time, ends its checks.
    let r = app.scan(&opening, &early).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let before = app.snapshot(&opening).await["bids"].clone();
    let (upload, sm3) = arrived(&early, "replacement.upload");
    let refused = app
        .hall
        .receive_bid(
            &opening,
            early.uscc.as_str(),
            upload.clone(),
            &sm3,
            received,
        )
        .await
        .expect_err("the answered bid is the one opened");
    assert!(
        refused.to_string().contains("already handed to the hall"),
        "{refused}"
    );
    assert!(!upload.exists(), "the refused upload is not kept");

    let settled = app.wait_until_settled(&opening).await;
    let bids = settled["bids"].as_array().unwrap();
    assert_eq!(bids.len(), 2);
    for bid in bids {
        assert_eq!(bid["state"], "decrypted", "{bid}");
    }
    let ids = |bids: &serde_json::Value| {
        let mut ids: Vec<String> = bids
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["id"].as_str().unwrap().to_owned())
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(
        ids(&settled["bids"]),
        ids(&before),
        "the replacement changed nothing"
    );
    let stored = std::fs::read_dir(app.settings.data_dir.join("bids").join(&opening))
        .unwrap()
        .count();
    assert_eq!(stored, 2, "one sealed file per bid");
    app.assert_chain_valid(&opening).await;
    // The bid checked late is in the record the public log folds to.
    assert_eq!(app.act(&opening, "end-decryption").await.status, 200);
    let record = app.checked_record(&opening).await;
    assert_eq!(record["record"]["bids"].as_array().unwrap().len(), 2);
    app.cleanup().await;
}

/// A server killed while decrypting leaves a partial plaintext in `plain/`, and one killed during
/// an upload its unfinished file in `uploads/`: the next start removes both (the decryption is
/// done again from the start), and nothing else.
async fn a_restart_removes_what_a_killed_server_left_half_written(backend: Backend) {
    let app = spawn_app(&backend).await;
    let data = app.settings.data_dir.clone();
    let partial = data.join("plain").join(".tmpAbC123");
    let unfinished = data.join("uploads").join("00ff.part");
    let decrypted = data.join("plain").join("0123456789abcdef.tar");
    for file in [&partial, &unfinished, &decrypted] {
        std::fs::write(file, b"some bytes").unwrap();
    }
    let app = app.restart().await;
    assert!(!partial.exists(), "the partial plaintext is removed");
    assert!(!unfinished.exists(), "the unfinished upload is removed");
    assert!(decrypted.exists(), "a finished file is kept");
    app.cleanup().await;
}

/// An opening in decryption with two bids: the first bidder's decrypted, the second's waiting
/// for its key.
async fn one_decrypted_one_waiting(app: &TestApp) -> (String, TestBidder, TestBidder) {
    let scanned = TestBidder::new(app.dir.path(), 1, 20_000);
    let waiting = TestBidder::new(app.dir.path(), 2, 20_000);
    let opening = app.opening_with_bids(&[&scanned, &waiting], 60, 1800).await;
    app.start_after(&opening, 61).await;
    assert_eq!(app.scan(&opening, &scanned).await.status, 200);
    app.wait_until_settled(&opening).await;
    (opening, scanned, waiting)
}

async fn decrypt_deadline(app: &TestApp, opening: &str) -> i64 {
    app.snapshot(opening).await["opening"]["decrypt_deadline_ms"]
        .as_i64()
        .unwrap()
}

/// Changes, behind a stopped server's back, when the hall was last recorded running.
async fn record_run_at(app: &TestApp, beat_ms: i64) {
    let statement = format!("UPDATE hall_clock SET beat_ms = {beat_ms} WHERE id = 1 AND $1 <> ''");
    app.sql(&statement, "-").await;
}

/// Where the next start cannot tell how long no server ran (no hall recorded its runs in the
/// database), a decryption window whose time limit passed meanwhile ends at that start, and the
/// bids still waiting for their key are the platform's fault (withdrawn, 撤回: their bidders could
/// not scan then), not the bidders' (revoked, 撤销) as at a limit the hall saw itself.
async fn a_window_that_ran_out_while_no_server_ran_ends_through_the_platform(backend: Backend) {
    let app = spawn_app(&backend).await;
    let (opening, scanned, waiting) = one_decrypted_one_waiting(&app).await;
    let url = app.qr_url(&opening, &waiting).await.expect("a QR code");
    let mut view: kaibiao::phone::ChallengeView =
        serde_json::from_value(app.challenge(&url).await.body).unwrap();
    let answer = kaibiao::phone::answer_challenge(&view, &waiting.enc, &waiting.sign).unwrap();
    let mut app = app;
    app.stop().await;
    app.sql("DELETE FROM hall_clock WHERE id = 1 AND $1 <> ''", "-")
        .await;
    app.advance_secs(1800);
    let before = app.base.clone();
    let app = app.restart().await;
    // The restarted test server listens on another port.
    view.answer_url = view.answer_url.replacen(&before, &app.base, 1);

    let state = app.snapshot(&opening).await;
    assert_eq!(state["opening"]["state"], "decryption_ended", "{state}");
    let bid = |code: &str| {
        state["bids"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["bidder_code"] == code)
            .unwrap()
            .clone()
    };
    assert_eq!(bid(scanned.uscc.as_str())["state"], "decrypted");
    let missed = bid(waiting.uscc.as_str());
    assert_eq!(missed["state"], "not_decrypted", "{missed}");
    assert_eq!(missed["fault"], "platform", "{missed}");
    assert!(
        missed["failure"].as_str().unwrap().contains("not running"),
        "{missed}"
    );
    let ended = app.payloads(&opening, "decryption.ended").await;
    let payload = ended.first().expect("the end is announced");
    assert_eq!(payload["fault"], "platform", "{payload}");
    // The bidder's phone, late, is refused and changes nothing.
    let r = app.post_answer(&view, &answer).await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(r.body["error"], "window_closed");
    let after = app.snapshot(&opening).await;
    assert_eq!(after["bids"], state["bids"]);
    let record = app.checked_record(&opening).await;
    let withdrawn = "未解密（平台原因，视为撤回）";
    assert!(record.to_string().contains(withdrawn), "{record}");
    app.cleanup().await;
}

/// Bids decrypting at once take turns on the CPU pool: a one-chunk bid answered just after a
/// 16 MiB one (1,024 chunks) finishes first, instead of waiting for the large one to end.
async fn a_small_bid_is_not_held_up_by_a_large_one(backend: Backend) {
    let app = spawn_app(&backend).await;
    let large = TestBidder::new(app.dir.path(), 0, 16 << 20);
    let small = TestBidder::new(app.dir.path(), 1, 1000);
    let opening = app.opening_with_bids(&[&large, &small], 60, 1800).await;
    app.start_after(&opening, 61).await;
    // Both phones prepare their answers first, so the two arrive back to back.
    let mut prepared = Vec::new();
    for bidder in [&large, &small] {
        let url = app.qr_url(&opening, bidder).await.expect("a QR code");
        let view: kaibiao::phone::ChallengeView =
            serde_json::from_value(app.challenge(&url).await.body).unwrap();
        let answer = kaibiao::phone::answer_challenge(&view, &bidder.enc, &bidder.sign).unwrap();
        prepared.push((view, answer));
    }
    for (view, answer) in &prepared {
        assert_eq!(app.post_answer(view, answer).await.status, 200);
    }
    app.wait_until_settled(&opening).await;
    let finished: Vec<String> = app
        .public_payloads(&opening, "bid.decrypted")
        .await
        .iter()
        .map(|payload| payload["bid_id"].as_str().unwrap().to_owned())
        .collect();
    let (large_id, small_id) = (&prepared[0].0.bid_id, &prepared[1].0.bid_id);
    assert_eq!(
        finished,
        vec![small_id.clone(), large_id.clone()],
        "the small bid finishes first"
    );
    // The large bid's plaintext digest, hashed 8 MiB per pool job, is the SM3 of the whole file.
    let view = app
        .agent("GET", &format!("/api/openings/{opening}"), None)
        .await;
    let bids = view.body["bids"].as_array().unwrap();
    let entry = bids
        .iter()
        .find(|b| b["bidder_code"] == large.uscc.as_str())
        .unwrap();
    assert_eq!(entry["plain_sm3"], hex::encode(crypto::sm3(&large.data)));
    app.cleanup().await;
}

async fn twenty_bidders_from_upload_to_evaluator_download(backend: Backend) {
    let app = spawn_app(&backend).await;
    let opening = app.create_opening(600, 1800).await;
    let bidders: Vec<TestBidder> = (0..20)
        .map(|i| TestBidder::new(app.dir.path(), i, 50_000 + i * 7_919))
        .collect();
    for b in &bidders {
        app.register(&opening, b).await;
    }
    for b in &bidders {
        let r = app.upload(&opening, b).await;
        assert_eq!(r.status, 201, "{}", r.body);
        let file = std::fs::read(&b.file).unwrap();
        assert_eq!(
            r.body["sm3"],
            hex::encode(crypto::sm3(&file)),
            "the receipt carries the file's SM3"
        );
        assert_eq!(r.body["size"], file.len() as u64);
    }

    let mut viewer = Viewer::connect(&app, &opening, 0, None).await;
    app.advance_secs(601);
    let r = app
        .agent(
            "POST",
            &format!("/api/openings/{opening}/start-decryption"),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);

    let scans = bidders.iter().map(|b| app.scan(&opening, b));
    for r in futures_util::future::join_all(scans).await {
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["status"], "accepted");
    }
    let snapshot = app.wait_until_settled(&opening).await;
    for bid in snapshot["bids"].as_array().unwrap() {
        assert_eq!(bid["state"], "decrypted", "{bid}");
        assert!(bid["summary"]["price_fen"].as_u64().is_some());
    }

    // The live feed saw every event in order, and each bid's summary before its body finished.
    let decrypted = std::cell::Cell::new(0);
    let seen = viewer
        .events_until(|e| {
            if e["kind"] == "bid.decrypted" {
                decrypted.set(decrypted.get() + 1);
            }
            decrypted.get() == 20
        })
        .await;
    viewer.close().await;
    let public = app.public_events(&opening).await;
    let last = seen.last().unwrap()["seq"].as_i64().unwrap();
    let expected: Vec<i64> = public
        .iter()
        .map(|e| e["seq"].as_i64().unwrap())
        .filter(|&s| s <= last)
        .collect();
    let got: Vec<i64> = seen.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert_eq!(got, expected, "every public event exactly once, in order");
    for bid in snapshot["bids"].as_array().unwrap() {
        let pos = |kind: &str| {
            seen.iter()
                .position(|e| e["kind"] == kind && e["data"]["bid_id"] == bid["id"])
        };
        assert!(pos("bid.summary").unwrap() < pos("bid.decrypted").unwrap());
    }

    // Before release the evaluators get nothing; after it, every file byte-identical.
    let eval = app
        .agent(
            "POST",
            &format!("/api/openings/{opening}/evaluator-tokens"),
            None,
        )
        .await;
    let eval_token = eval.body["token"].as_str().unwrap().to_owned();
    let first = snapshot["bids"][0]["id"].as_str().unwrap().to_owned();
    let early = app
        .call(
            "GET",
            &format!("/api/eval/bids/{first}/file"),
            None,
            Some(&eval_token),
        )
        .await;
    assert_eq!(early.status, 403, "{}", early.body);
    assert_eq!(
        app.agent(
            "POST",
            &format!("/api/openings/{opening}/end-decryption"),
            None
        )
        .await
        .status,
        200
    );
    assert_eq!(
        app.agent("POST", &format!("/api/openings/{opening}/release"), None)
            .await
            .status,
        200
    );

    let list = app
        .call("GET", "/api/eval/bids", None, Some(&eval_token))
        .await;
    assert_eq!(list.status, 200, "{}", list.body);
    for b in &bidders {
        let entry = list.body["bids"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["bidder_code"] == b.uscc.as_str())
            .unwrap();
        assert_eq!(entry["summary"]["price_fen"], b.summary.price_fen);
        // The proof verifies against the bidder's key.
        let proof = &entry["proof"];
        let mut message = kaibiao::format::SIGNATURE_CONTEXT.to_vec();
        message.extend(hex::decode(proof["header_hash"].as_str().unwrap()).unwrap());
        let digests = proof["chunk_digests"].as_array().unwrap();
        message.extend((digests.len() as u64).to_be_bytes());
        for d in digests {
            message.extend(hex::decode(d.as_str().unwrap()).unwrap());
        }
        use base64::Engine;
        let signature = base64::engine::general_purpose::STANDARD
            .decode(proof["signature"].as_str().unwrap())
            .unwrap();
        crypto::verify(&b.sign.public_key(), &message, &signature).unwrap();

        let url = format!("{}{}", app.base, entry["download"].as_str().unwrap());
        let mut res = app
            .client
            .get(&url)
            .bearer_auth(&eval_token)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 200);
        let digest = res
            .headers()
            .get("x-kaibiao-sm3")
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        let body = res.body().limit(16 << 20).await.unwrap();
        assert!(
            body.as_ref() == b.data.as_slice(),
            "decrypted bid of {} differs",
            b.name
        );
        assert_eq!(digest, hex::encode(crypto::sm3(&b.data)));
        let mut part = app
            .client
            .get(&url)
            .bearer_auth(&eval_token)
            .insert_header(("Range", "bytes=100-199"))
            .send()
            .await
            .unwrap();
        assert_eq!(part.status().as_u16(), 206);
        assert_eq!(part.body().await.unwrap().as_ref(), &b.data[100..200]);
    }
    app.assert_chain_valid(&opening).await;
    assert_eq!(
        app.agent("POST", &format!("/api/openings/{opening}/close"), None)
            .await
            .status,
        200
    );
    let record = app.checked_record(&opening).await;
    assert_eq!(record["record"]["opening"]["state"], "closed");
    assert_eq!(record["record"]["bids"].as_array().unwrap().len(), 20);
    // Closed, the opening's record is archived: no new version is issued.
    let r = app.act(&opening, "record/issue").await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(
        r.body["message"].as_str().unwrap().contains("closed"),
        "{}",
        r.body
    );
    app.cleanup().await;
}

async fn a_restarted_server_resumes_the_opening(backend: Backend) {
    // The master key kept apart from the data, as on a secrets mount.
    let app = spawn_app_with(&backend, |s| {
        let secrets = s.data_dir.with_file_name("secrets");
        std::fs::create_dir(&secrets).unwrap();
        s.master_key_file = secrets.join("master.key");
    })
    .await;
    let key = app.settings.master_key_file.clone();
    assert!(key.exists(), "created where it was told");
    assert!(!app.settings.data_dir.join("master.key").exists());
    let a = TestBidder::new(app.dir.path(), 1, 100_000);
    let b = TestBidder::new(app.dir.path(), 2, 120_000);
    let opening = app.opening_with_bids(&[&a, &b], 60, 1800).await;
    app.start_after(&opening, 61).await;
    assert_eq!(app.scan(&opening, &a).await.status, 200);
    app.wait_until_settled(&opening).await;
    let before = app.events(&opening).await.len();

    // One server at a time on the data folder, and on a PostgreSQL database from anywhere.
    let said = app.start_error(|_| {}).await;
    assert!(
        said.contains("another kaibiao server") && said.contains("data folder"),
        "{said}"
    );
    if matches!(backend, Backend::Postgres(_)) {
        let elsewhere = app.dir.path().join("elsewhere");
        let said = app.start_error(|s| s.data_dir = elsewhere).await;
        assert!(said.contains("PostgreSQL database"), "{said}");
    }

    // Without its master key the opening's accepted answers could not be opened: no server starts
    // with a new one while the opening needs the old.
    let mut app = app;
    app.stop().await;
    let aside = key.with_extension("aside");
    std::fs::rename(&key, &aside).unwrap();
    let said = app.start_error(|_| {}).await;
    assert!(
        said.contains(&key.display().to_string()) && said.contains("restore the file"),
        "{said}"
    );
    assert!(!key.exists(), "no new key made");
    std::fs::rename(&aside, &key).unwrap();

    let app = app.restart().await;
    // Same opening, same hall key (sealed under master.key): the second bidder can still scan.
    let r = app.scan(&opening, &b).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let snapshot = app.wait_until_settled(&opening).await;
    assert!(
        snapshot["bids"]
            .as_array()
            .unwrap()
            .iter()
            .all(|x| x["state"] == "decrypted")
    );
    let events = app.events(&opening).await;
    assert!(events.len() > before);
    for (i, e) in events.iter().enumerate() {
        assert_eq!(
            e["seq"],
            json!(i as i64 + 1),
            "the event log continues without a gap"
        );
    }
    app.assert_chain_valid(&opening).await;
    app.cleanup().await;
}

/// A server asked to stop while a bid is being decrypted lets that decryption finish before it
/// lets go of its data: the task runs on the server's own runtime, not on the HTTP worker that
/// took the phone's answer (workers stop first, and a task of theirs would be dropped, to be
/// started again from nothing). On one database: this is about the server's runtimes.
#[actix_web::test]
async fn a_stopping_server_finishes_the_decryption_under_way() {
    let mut app = spawn_app(&Backend::Sqlite).await;
    let bidder = TestBidder::new(app.dir.path(), 0, 16 << 20);
    let opening = app.opening_with_bids(&[&bidder], 60, 1800).await;
    app.start_after(&opening, 61).await;
    assert_eq!(app.scan(&opening, &bidder).await.status, 200);
    let hall = app.hall.clone();
    app.stop().await;
    assert_eq!(
        hall.metrics().decryptions_taken_up.get(),
        0,
        "finished by the task that began it, not started again"
    );
    // Decrypted before the server let go: the next one finds it done, not to be taken up.
    let app = app.restart().await;
    let view = app
        .agent("GET", &format!("/api/openings/{opening}"), None)
        .await;
    assert_eq!(view.body["bids"][0]["state"], "decrypted");
    app.cleanup().await;
}

/// Decryptions ended under way (as a server ends them when its wait for them runs out, or when
/// another server took its database) give their bids back: the tick takes them up again, from
/// the start, and they are decrypted whole.
#[actix_web::test]
async fn a_decryption_ended_under_way_is_taken_up_again() {
    let app = spawn_app(&Backend::Sqlite).await;
    let bidder = TestBidder::new(app.dir.path(), 0, 16 << 20);
    let opening = app.opening_with_bids(&[&bidder], 60, 1800).await;
    app.start_after(&opening, 61).await;
    assert_eq!(app.scan(&opening, &bidder).await.status, 200);
    app.hall.abort_tasks().await;
    // Ended: nothing of the task's is written after this (16 MiB take far longer than the
    // moment since the answer).
    let bids = app.hall.db().bids(&opening).await.unwrap();
    assert_eq!(bids[0].state, "decrypting");
    let settled = app.wait_until_settled(&opening).await;
    assert_eq!(settled["bids"][0]["state"], "decrypted");
    assert_eq!(app.metric("decryptions_taken_up_total").await, 1.0);
    let view = app
        .agent("GET", &format!("/api/openings/{opening}"), None)
        .await;
    let plain = view.body["bids"][0]["plain_sm3"]
        .as_str()
        .map(str::to_owned);
    assert_eq!(plain, Some(hex::encode(crypto::sm3(&bidder.data))));
    app.cleanup().await;
}

/// An opening with one bid, decrypted and its digest recorded.
struct Decrypted {
    bidder: TestBidder,
    opening: String,
    /// The agent's view of the opening: its path, and what it showed.
    path: String,
    first: serde_json::Value,
    id: String,
    /// Where the hall keeps the decrypted file.
    plain: std::path::PathBuf,
}

async fn one_decrypted_bid(app: &crate::helpers::TestApp, size: usize) -> Decrypted {
    let a = TestBidder::new(app.dir.path(), 1, size);
    let opening = app.opening_with_bids(&[&a], 30, 1800).await;
    app.start_after(&opening, 31).await;
    assert_eq!(app.scan(&opening, &a).await.status, 200);
    app.wait_until_settled(&opening).await;
    let path = format!("/api/openings/{opening}");
    let first = app.agent("GET", &path, None).await.body;
    let id = first["bids"][0]["id"].as_str().unwrap().to_owned();
    let plain = app
        .settings
        .data_dir
        .join("plain")
        .join(format!("{id}.tar"));
    Decrypted {
        bidder: a,
        opening,
        path,
        first,
        id,
        plain,
    }
}

/// A bid whose key was accepted but that no task decrypts (the process stopped, or the database
/// failed to confirm the answer or the end of the decryption) is decrypted by the hall's periodic
/// work, to the same file.
async fn an_accepted_bid_without_a_task_is_decrypted_by_the_hall(backend: Backend) {
    let app = spawn_app(&backend).await;
    let Decrypted {
        opening,
        path,
        first,
        id,
        plain,
        ..
    } = one_decrypted_bid(&app, 300_000).await;
    let digest = first["bids"][0]["plain_sm3"].clone();
    assert!(digest.is_string());
    std::fs::remove_file(&plain).unwrap();
    app.sql(
        "UPDATE bids SET state = 'decrypting', plain_path = NULL, plain_sm3 = NULL WHERE id = $1",
        &id,
    )
    .await;

    app.wait_until_settled(&opening).await;
    let after = app.agent("GET", &path, None).await.body;
    assert_eq!(after["bids"][0]["state"], "decrypted");
    assert_eq!(after["bids"][0]["plain_sm3"], digest, "the same plaintext");
    assert!(plain.exists());
    app.cleanup().await;
}

/// A decrypted bid whose plaintext digest is missing (its computation failed, or the server
/// stopped before recording it) gets it from the hall's tick, without a restart: evaluators
/// cannot download a file without it.
async fn a_decrypted_bid_without_its_digest_gets_it_from_the_hall(backend: Backend) {
    let app = spawn_app(&backend).await;
    let Decrypted {
        bidder: a,
        opening,
        path,
        first,
        id,
        ..
    } = one_decrypted_bid(&app, 200_000).await;
    assert_eq!(
        first["bids"][0]["plain_sm3"],
        hex::encode(crypto::sm3(&a.data))
    );
    assert_eq!(first["bids"][0]["digest"]["state"], "recorded");
    app.sql("UPDATE bids SET plain_sm3 = NULL WHERE id = $1", &id)
        .await;

    app.wait_until_settled(&opening).await;
    let after = app.agent("GET", &path, None).await.body;
    assert_eq!(after["bids"][0]["plain_sm3"], first["bids"][0]["plain_sm3"]);
    app.cleanup().await;
}

/// A decrypted file that cannot be read back for its digest: the evaluator's download says the
/// digest failed and what to do, instead of "retry in a few seconds" for ever.
async fn a_digest_that_cannot_be_computed_is_told_to_the_evaluator(backend: Backend) {
    let app = spawn_app(&backend).await;
    let Decrypted {
        opening, id, plain, ..
    } = one_decrypted_bid(&app, 50_000).await;
    std::fs::remove_file(&plain).unwrap();
    app.sql("UPDATE bids SET plain_sm3 = NULL WHERE id = $1", &id)
        .await;
    for action in ["end-decryption", "release"] {
        let path = format!("/api/openings/{opening}/{action}");
        assert_eq!(app.agent("POST", &path, None).await.status, 200);
    }
    let token = app.evaluator_token(&opening).await;
    let file = format!("/api/eval/bids/{id}/file");
    let mut said = String::new();
    for _ in 0..100 {
        let r = app.call("GET", &file, None, Some(&token)).await;
        assert_ne!(r.status, 200, "{}", r.body);
        said = r.body.to_string();
        if said.contains("could not be computed") {
            break;
        }
        actix_web::rt::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(said.contains("ask the platform's operator"), "{said}");
    // The agent sees it too, on the bid.
    let path = format!("/api/openings/{opening}");
    let snapshot = app.agent("GET", &path, None).await.body;
    let digest = &snapshot["bids"][0]["digest"];
    assert_eq!(digest["state"], "failed", "{snapshot}");
    assert!(
        digest["message"]
            .as_str()
            .unwrap()
            .contains("could not be computed")
    );
    let public = app.public_snapshot(&opening).await;
    assert!(public["bids"][0].get("digest").is_none(), "{public}");
    app.cleanup().await;
}

/// A decryption that fails through the platform (here the folder of decrypted files is not a
/// folder; in life a full disk) does not fail the bid: it stays decrypting, the hall display says
/// why, and the hall tries again until it works, or until the agent gives it up as the
/// platform's fault (art. 31: withdrawn, not revoked).
async fn a_decryption_the_platform_fails_is_tried_again_or_given_up(backend: Backend) {
    let app = spawn_app(&backend).await;
    let a = TestBidder::new(app.dir.path(), 1, 100_000);
    let b = TestBidder::new(app.dir.path(), 2, 100_000);
    let opening = app.opening_with_bids(&[&a, &b], 60, 1800).await;
    app.start_after(&opening, 61).await;
    app.break_decrypted_folder();
    for bidder in [&a, &b] {
        assert_eq!(app.scan(&opening, bidder).await.status, 200);
    }
    let snapshot = app.wait_until_delayed(&opening, 2).await;
    let said = snapshot["bids"][0]["delay"].as_str().unwrap();
    assert!(
        said.contains("could not finish decrypting") && said.contains("not the bidder's fault"),
        "{said}"
    );
    let bid_of = |bidder: &TestBidder| {
        snapshot["bids"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["bidder_code"] == bidder.uscc.as_str())
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (a_id, b_id) = (bid_of(&a), bid_of(&b));

    // Tried again, failing the same way: counted, but said once, not at every attempt.
    let failures = "decryption_platform_failures_total";
    assert_eq!(app.metric(failures).await, 2.0);
    app.advance_secs(11);
    for _ in 0..300 {
        if app.metric(failures).await >= 4.0 {
            break;
        }
        actix_web::rt::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(app.metric(failures).await, 4.0, "both tried again once");
    let delays =
        |events: &[serde_json::Value]| events.iter().filter(|e| e["kind"] == "bid.delayed").count();
    assert_eq!(delays(&app.public_events(&opening).await), 2);

    // The opening cannot be released with them: the agent is told which and what to do.
    let end = format!("/api/openings/{opening}/end-decryption");
    assert_eq!(app.agent("POST", &end, None).await.status, 200);
    let release = format!("/api/openings/{opening}/release");
    let r = app.agent("POST", &release, None).await;
    assert_eq!(r.status, 409, "{}", r.body);
    let said = r.body["message"].as_str().unwrap();
    assert!(
        said.contains(&a_id) && said.contains(&b.name) && said.contains("放弃解密"),
        "{said}"
    );
    // Nor failed: the bids would go on being retried and written for an opening that is over.
    let fail = format!("/api/openings/{opening}/fail");
    let r = app
        .agent("POST", &fail, Some(json!({"reason": "不足三家"})))
        .await;
    assert_eq!(r.status, 409, "{}", r.body);
    let said = r.body["message"].as_str().unwrap();
    assert!(
        said.contains("fail the opening") && said.contains(&a_id),
        "{said}"
    );
    let view = app
        .agent("GET", &format!("/api/openings/{opening}"), None)
        .await;
    assert_eq!(view.body["opening"]["state"], "decryption_ended");

    // The agent gives one up, saying why; the other is decrypted once the platform is mended.
    let abandon = |id: &str| format!("/api/openings/{opening}/bids/{id}/abandon");
    let r = app
        .agent("POST", &abandon(&b_id), Some(json!({"reason": " "})))
        .await;
    assert_eq!(r.status, 422, "{}", r.body);
    let r = app
        .agent(
            "POST",
            &abandon(&b_id),
            Some(json!({"reason": "解密服务器磁盘故障"})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    app.mend_decrypted_folder();
    // The third attempt comes 20 s after the second (the wait doubles).
    app.advance_secs(21);
    let settled = app.wait_until_settled(&opening).await;
    let state_of = |id: &str| {
        settled["bids"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["id"] == id)
            .unwrap()
            .clone()
    };
    assert_eq!(state_of(&a_id)["state"], "decrypted");
    assert!(state_of(&a_id).get("delay").is_none());
    let given_up = state_of(&b_id);
    assert_eq!(given_up["state"], "failed");
    assert_eq!(given_up["fault"], "platform");
    assert!(
        given_up["failure"]
            .as_str()
            .unwrap()
            .contains("解密服务器磁盘故障"),
        "{given_up}"
    );
    let r = app
        .agent("POST", &abandon(&a_id), Some(json!({"reason": "x"})))
        .await;
    assert_eq!(
        r.status, 409,
        "a decrypted bid cannot be given up: {}",
        r.body
    );
    let agent_view = app
        .agent("GET", &format!("/api/openings/{opening}"), None)
        .await
        .body;
    let decrypted = agent_view["bids"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == a_id.as_str())
        .unwrap()
        .clone();
    assert_eq!(decrypted["plain_sm3"], hex::encode(crypto::sm3(&a.data)));
    assert_eq!(app.agent("POST", &release, None).await.status, 200);
    // The record, folded from the public log, says whose fault the given-up bid was.
    let record = app.checked_record(&opening).await;
    assert!(
        record.to_string().contains("解密服务器磁盘故障"),
        "{record}"
    );
    app.cleanup().await;
}

/// On PostgreSQL the database's lock lives on one connection: lost with it (the database
/// restarted, the network dropped it), it is taken again, so a second server still cannot start.
#[actix_web::test]
async fn the_database_lock_is_taken_again_when_its_connection_is_lost() {
    use sqlx::Connection;
    let Some(url) = crate::helpers::postgres_url() else {
        eprintln!("SKIPPED on PostgreSQL: set KAIBIAO_TEST_POSTGRES_URL to run it");
        return;
    };
    let app = spawn_app(&Backend::Postgres(url)).await;
    let mut conn = sqlx::PgConnection::connect(&app.settings.database_url)
        .await
        .unwrap();
    // The server's lock: key "kaibiao" in ASCII, 0x006b6169_6269616f.
    let holder = "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted \
                  AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
                  AND classid::bigint = 7037289 AND objid::bigint = 1651073391";
    let first: i32 = sqlx::query_scalar(holder)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    sqlx::query("SELECT pg_terminate_backend($1)")
        .bind(first)
        .execute(&mut conn)
        .await
        .unwrap();
    let mut again = None;
    for _ in 0..300 {
        let now: Option<i32> = sqlx::query_scalar(holder)
            .fetch_optional(&mut conn)
            .await
            .unwrap();
        if now.is_some_and(|p| p != first) {
            again = now;
            break;
        }
        actix_web::rt::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(again.is_some(), "the lock was not taken again");
    let elsewhere = app.dir.path().join("elsewhere");
    let said = app.start_error(|s| s.data_dir = elsewhere).await;
    assert!(said.contains("PostgreSQL database"), "{said}");
    drop(conn);
    app.cleanup().await;
}
