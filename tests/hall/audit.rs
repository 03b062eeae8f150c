//! What the record and the law guarantee after the fact: the event log shows any change made
//! behind the hall's back, a failed opening (art. 44) releases no file, and an evaluator's token
//! opens its own opening's files only.

use kaibiao::db::EventRow;
use kaibiao::hall::{Receipt, SignedHead};
use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, TestBidder, spawn_app};

crate::on_both_databases!(
    a_changed_or_removed_event_breaks_the_chain,
    a_failed_opening_releases_no_file,
    an_evaluator_token_opens_only_its_own_opening,
    no_bid_key_is_stored_in_the_clear,
    a_state_change_whose_event_was_not_published_gets_it_at_the_next_start,
    the_released_plaintext_is_proven_to_be_what_the_bidder_signed,
    a_signed_head_shows_a_log_rewritten_or_cut_short,
    the_platform_signs_every_receipt_with_one_lasting_key,
    a_public_head_before_the_opening_counts_no_bid,
    anyone_checks_the_chain_through_the_events_it_may_not_read
);

/// An opening whose bids are all decrypted, the decryption ended.
async fn decrypted(app: &TestApp, bidders: &[&TestBidder]) -> String {
    let opening = app.opening_with_bids(bidders, 60, 1800).await;
    app.start_after(&opening, 61).await;
    for b in bidders {
        assert_eq!(app.scan(&opening, b).await.status, 200);
    }
    app.wait_until_settled(&opening).await;
    let r = app.act(&opening, "end-decryption").await;
    assert_eq!(r.status, 200, "{}", r.body);
    opening
}

async fn a_changed_or_removed_event_breaks_the_chain(backend: Backend) {
    let app = spawn_app(&backend).await;
    let b = TestBidder::new(app.dir.path(), 1, 20_000);
    let opening = decrypted(&app, &[&b]).await;
    let count = app.events(&opening).await.len() as i64;
    assert_eq!(
        app.verify_chain(&opening).await,
        json!({"valid": true, "events": count})
    );

    // The bid's summary, as the hall display showed it, edited in the database.
    let summary = app
        .events(&opening)
        .await
        .into_iter()
        .find(|e| e["kind"] == "bid.summary")
        .expect("the summary was announced");
    let seq = summary["seq"].as_i64().unwrap();
    let price = b.summary.price_fen.to_string();
    let edit = format!(
        "UPDATE events SET payload = replace(payload, '{price}', '1{price}') \
         WHERE opening_id = $1 AND seq = {seq}"
    );
    app.sql(&edit, &opening).await;
    assert_eq!(
        app.verify_chain(&opening).await,
        json!({"valid": false, "first_bad_seq": seq})
    );
    let undo = format!(
        "UPDATE events SET payload = replace(payload, '1{price}', '{price}') \
         WHERE opening_id = $1 AND seq = {seq}"
    );
    app.sql(&undo, &opening).await;
    assert_eq!(app.verify_chain(&opening).await["valid"], true);

    // An event removed from the middle of the log.
    app.sql(
        &format!(
            "DELETE FROM events WHERE opening_id = $1 AND seq = {}",
            seq - 1
        ),
        &opening,
    )
    .await;
    assert_eq!(
        app.verify_chain(&opening).await,
        json!({"valid": false, "first_bad_seq": seq})
    );
    app.cleanup().await;
}

/// Art. 44: an opening with fewer than three bids fails; its decrypted files never reach the
/// evaluators, and it cannot be released afterwards.
async fn a_failed_opening_releases_no_file(backend: Backend) {
    let app = spawn_app(&backend).await;
    let b = TestBidder::new(app.dir.path(), 1, 20_000);
    let opening = decrypted(&app, &[&b]).await;
    let token = app.evaluator_token(&opening).await;
    let r = app
        .agent(
            "POST",
            &format!("/api/openings/{opening}/fail"),
            Some(json!({"reason": "投标人少于3个，开标失败（第四十四条）"})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);

    let release = app.act(&opening, "release").await;
    assert_eq!(release.status, 409, "{}", release.body);
    let snapshot = app.snapshot(&opening).await;
    assert_eq!(snapshot["opening"]["state"], "failed");
    let bid = snapshot["bids"][0]["id"].as_str().unwrap().to_owned();
    let list = app.call("GET", "/api/eval/bids", None, Some(&token)).await;
    assert_eq!(list.body["released"], false, "{}", list.body);
    let file = app
        .call(
            "GET",
            &format!("/api/eval/bids/{bid}/file"),
            None,
            Some(&token),
        )
        .await;
    assert_eq!(file.status, 403, "{}", file.body);
    assert!(
        !app.events(&opening)
            .await
            .iter()
            .any(|e| e["kind"] == "files.released")
    );
    app.cleanup().await;
}

/// An evaluator's token is scoped to one opening: another opening's released files stay closed
/// to it.
async fn an_evaluator_token_opens_only_its_own_opening(backend: Backend) {
    let app = spawn_app(&backend).await;
    let a = TestBidder::new(app.dir.path(), 1, 20_000);
    let b = TestBidder::new(app.dir.path(), 2, 20_000);
    let mine = decrypted(&app, &[&a]).await;
    let theirs = decrypted(&app, &[&b]).await;
    for opening in [&mine, &theirs] {
        let r = app.act(opening, "release").await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let token = app.evaluator_token(&mine).await;
    let own = app.snapshot(&mine).await["bids"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let foreign = app.snapshot(&theirs).await["bids"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let file = |bid: &str| format!("/api/eval/bids/{bid}/file");
    let r = app.call("GET", &file(&own), None, Some(&token)).await;
    assert_eq!(r.status, 200, "its own opening's file");
    let r = app.call("GET", &file(&foreign), None, Some(&token)).await;
    assert!(matches!(r.status, 403 | 404), "{} {}", r.status, r.body);
    let list = app.call("GET", "/api/eval/bids", None, Some(&token)).await;
    let listed: Vec<_> = list.body["bids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["id"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(!listed.contains(&foreign), "{}", list.body);
    app.cleanup().await;
}

/// The data key of a bid, once its bidder's phone handed it to the hall, is kept sealed: after
/// the whole opening, no file the server wrote (database included) and no row of its database
/// holds it in the clear, as bytes, hex or base64.
async fn no_bid_key_is_stored_in_the_clear(backend: Backend) {
    use base64::Engine;
    let app = spawn_app(&backend).await;
    let b = TestBidder::new(app.dir.path(), 1, 50_000);
    let opening = app.opening_with_bids(&[&b], 60, 1800).await;
    app.start_after(&opening, 61).await;
    let url = app.qr_url(&opening, &b).await.unwrap();
    let view: kaibiao::phone::ChallengeView =
        serde_json::from_value(app.challenge(&url).await.body).unwrap();
    let wrapped = base64::engine::general_purpose::STANDARD
        .decode(&view.recipients[0].wrapped_key)
        .unwrap();
    let key = kaibiao::crypto::unwrap_key(&b.enc, &wrapped).unwrap();
    let answer = kaibiao::phone::answer_challenge(&view, &b.enc, &b.sign).unwrap();
    assert_eq!(app.post_answer(&view, &answer).await.status, 200);
    app.wait_until_settled(&opening).await;
    for action in ["end-decryption", "release"] {
        assert_eq!(app.act(&opening, action).await.status, 200);
    }

    let needles: Vec<Vec<u8>> = vec![
        key.to_vec(),
        hex::encode(*key).into_bytes(),
        hex::encode_upper(*key).into_bytes(),
        base64::engine::general_purpose::STANDARD
            .encode(*key)
            .into_bytes(),
    ];
    let holds = |hay: &[u8]| {
        needles
            .iter()
            .any(|n| hay.windows(n.len()).any(|w| w == n.as_slice()))
    };
    let mut files = vec![app.dir.path().to_path_buf()];
    let mut scanned = 0;
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else if path != b.file {
            let bytes = std::fs::read(&path).unwrap();
            assert!(!holds(&bytes), "{} holds the bid's key", path.display());
            scanned += 1;
        }
    }
    assert!(
        scanned >= 3,
        "the data folder was scanned ({scanned} files)"
    );
    if app.settings.database_url.starts_with("postgres") {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&app.settings.database_url)
            .await
            .unwrap();
        for table in [
            "openings",
            "bidders",
            "bidder_keys",
            "bids",
            "challenges",
            "events",
            "evaluator_tokens",
        ] {
            let rows: Vec<String> = sqlx::query_scalar(&format!(
                "SELECT CAST(row_to_json(t) AS TEXT) FROM {table} t"
            ))
            .fetch_all(&mut conn)
            .await
            .unwrap();
            for row in rows {
                assert!(
                    !holds(row.as_bytes()),
                    "a row of {table} holds the key: {row}"
                );
            }
        }
    }
    app.cleanup().await;
}

/// Each state change stages its event in its own transaction, and the log's writer takes it off
/// the stage as it stores it. A server killed between the two (here: the release committed, its
/// event only staged) publishes the event at its next start, once: no state change is ever
/// without its event in the chained log.
async fn a_state_change_whose_event_was_not_published_gets_it_at_the_next_start(backend: Backend) {
    let app = spawn_app(&backend).await;
    let b = TestBidder::new(app.dir.path(), 1, 20_000);
    let opening = decrypted(&app, &[&b]).await;
    let mut app = app;
    app.stop().await;
    app.sql(
        "UPDATE openings SET state = 'released' WHERE id = $1",
        &opening,
    )
    .await;
    app.sql(
        "INSERT INTO staged_events (opening_id, kind, audience, payload, ts_ms) \
         VALUES ($1, 'files.released', 'public', '{}', 0)",
        &opening,
    )
    .await;
    let released = |events: &[serde_json::Value]| {
        events
            .iter()
            .filter(|e| e["kind"] == "files.released")
            .count()
    };
    let app = app.restart().await;
    let events = app.events(&opening).await;
    assert_eq!(released(&events), 1, "{events:?}");
    assert_eq!(events.last().unwrap()["kind"], "files.released");
    app.assert_chain_valid(&opening).await;
    let app = app.restart().await;
    assert_eq!(released(&app.events(&opening).await), 1, "published once");
    // And the state changes of a normal run leave nothing staged: the release's event is the
    // only one after it, the close's likewise.
    assert_eq!(app.act(&opening, "close").await.status, 200);
    let events = app.events(&opening).await;
    assert_eq!(events.last().unwrap()["kind"], "opening.closed");
    let app = app.restart().await;
    assert_eq!(app.events(&opening).await.len(), events.len());

    // One left staged a moment ago (its publisher failed) goes into the log before the next
    // state change's event, not after it.
    let left = format!(
        "INSERT INTO staged_events (opening_id, kind, audience, payload, ts_ms) \
         VALUES ($1, 'evaluator.token_issued', 'agent', '{{\"left\":true}}', {})",
        app.now_ms()
    );
    app.sql(&left, &opening).await;
    app.evaluator_token(&opening).await;
    let events = app.events(&opening).await;
    let tail: Vec<&str> = events[events.len() - 2..]
        .iter()
        .map(|e| e["payload"].as_str().unwrap())
        .collect();
    assert_eq!(tail, ["{\"left\":true}", "{}"]);
    app.assert_chain_valid(&opening).await;
    app.cleanup().await;
}

/// Once the files are released, the evaluation system gets each bid's file key with its proof:
/// with the sealed bid as uploaded (its signature by the bidder's registered key) and that key
/// (which must match the commitment in the signed header), anyone recomputes the plaintext and
/// finds the released file. Before the release no key is given.
async fn the_released_plaintext_is_proven_to_be_what_the_bidder_signed(backend: Backend) {
    let app = spawn_app(&backend).await;
    let b = TestBidder::new(app.dir.path(), 1, 300_000);
    let opening = decrypted(&app, &[&b]).await;
    let token = app.evaluator_token(&opening).await;
    let list = app.call("GET", "/api/eval/bids", None, Some(&token)).await;
    assert_eq!(list.body["bids"][0]["file_key"], serde_json::Value::Null);
    assert_eq!(
        list.body["record"],
        serde_json::Value::Null,
        "none issued yet"
    );
    let issued = app.act(&opening, "record/issue").await;
    assert_eq!(issued.status, 201, "{}", issued.body);
    assert_eq!(app.act(&opening, "release").await.status, 200);
    let list = app.call("GET", "/api/eval/bids", None, Some(&token)).await;
    // With the files, the record as issued to the bidders.
    assert_eq!(list.body["record"]["version"], 1);
    assert_eq!(list.body["record"]["digest"], issued.body["digest"]);
    // With the files, the head of the log they came out of, signed by the platform.
    let head: SignedHead = serde_json::from_value(list.body["log_head"].clone()).unwrap();
    head.verify(&app.platform_key().await).unwrap();
    let released = app.events(&opening).await;
    let released = released
        .iter()
        .find(|e| e["kind"] == "files.released")
        .unwrap();
    assert_eq!(head.opening_id, opening);
    assert!(head.seq >= released["seq"].as_i64().unwrap(), "{head:?}");
    let entry = &list.body["bids"][0];
    let raw: [u8; 16] = hex::decode(entry["file_key"].as_str().expect("the file key"))
        .unwrap()
        .try_into()
        .unwrap();

    let download = |path: String| {
        let app = &app;
        let token = token.clone();
        async move {
            let mut res = app
                .client
                .get(format!("{}{path}", app.base))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap();
            assert_eq!(res.status().as_u16(), 200, "{path}");
            res.body().limit(64 << 20).await.unwrap().to_vec()
        }
    };
    let id = entry["id"].as_str().unwrap();
    let sealed = download(format!("/api/eval/bids/{id}/sealed")).await;
    let released = download(format!("/api/eval/bids/{id}/file")).await;
    let dir = tempfile::tempdir().unwrap();
    let sealed_path = dir.path().join("bid.kbid");
    std::fs::write(&sealed_path, &sealed).unwrap();
    let bid = kaibiao::engine::SealedBid::open(&sealed_path).unwrap();
    bid.verify_chunks(&kaibiao::engine::NoProgress).unwrap();
    assert_eq!(
        kaibiao::crypto::key_id(bid.signer().key()),
        kaibiao::crypto::key_id(&b.sign.public_key()),
        "signed by the bidder"
    );
    let key = bid
        .accept_file_key(raw)
        .expect("the key matches the commitment");
    let plain = dir.path().join("plain");
    bid.decrypt_to(
        &key,
        &plain,
        kaibiao::engine::DecryptOptions::default(),
        &kaibiao::engine::NoProgress,
    )
    .unwrap();
    assert!(
        std::fs::read(&plain).unwrap() == released,
        "the released file"
    );
    assert!(released == b.data, "the bidder's data");
    app.cleanup().await;
}

/// The signed head of the log a viewer got from the platform, checked with the platform's key.
async fn signed_head(app: &TestApp, opening: &str, auth: Option<&str>) -> Value {
    let path = format!("/api/openings/{opening}/events/head");
    let r = app.call("GET", &path, None, auth).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let head: SignedHead = serde_json::from_value(r.body.clone()).unwrap();
    head.verify(&app.platform_key().await)
        .expect("the head is signed by the platform");
    assert_eq!(head.opening_id, opening);
    r.body
}

/// Whoever can write the database can recompute every hash after an edit, or drop the newest
/// events, and the chain checks again. A head the platform signed earlier still tells.
async fn a_signed_head_shows_a_log_rewritten_or_cut_short(backend: Backend) {
    let app = spawn_app(&backend).await;
    let b = TestBidder::new(app.dir.path(), 1, 20_000);
    let opening = decrypted(&app, &[&b]).await;
    let events = app.events(&opening).await;
    let count = events.len() as i64;
    let last = events.last().unwrap();

    let r = app
        .call("GET", "/api/openings/no-such/events/head", None, None)
        .await;
    assert_eq!(r.status, 404, "{}", r.body);

    // The agent's head is the log's last event; the public's the last public one.
    let head = signed_head(&app, &opening, Some(&app.token.clone())).await;
    assert_eq!((&head["seq"], &head["hash"]), (&last["seq"], &last["hash"]));
    let public = signed_head(&app, &opening, None).await;
    let last_public = app.public_events(&opening).await.pop().unwrap();
    assert_eq!(
        (&public["seq"], &public["hash"]),
        (&last_public["seq"], &last_public["hash"])
    );
    for h in [&head, &public] {
        assert_eq!(
            app.verify_chain_at(&opening, Some(h)).await,
            json!({"valid": true, "events": count})
        );
    }

    // The bid's price raised in the summary event, and every hash from there on recomputed.
    let summary = events
        .iter()
        .position(|e| e["kind"] == "bid.summary")
        .unwrap();
    let price = b.summary.price_fen.to_string();
    let edit = format!(
        "UPDATE events SET payload = replace(payload, '{price}', '1{price}') \
         WHERE opening_id = $1 AND seq = {}",
        events[summary]["seq"]
    );
    app.sql(&edit, &opening).await;
    app.rechain(&opening).await;
    assert_eq!(
        app.verify_chain(&opening).await,
        json!({"valid": true, "events": count}),
        "the chain alone cannot tell"
    );
    for h in [&head, &public] {
        assert_eq!(
            app.verify_chain_at(&opening, Some(h)).await,
            json!({"valid": false, "head_seq": h["seq"]})
        );
    }

    // The newest event removed: the head signed before it still names it.
    let head = signed_head(&app, &opening, Some(&app.token.clone())).await;
    app.sql(
        &format!("DELETE FROM events WHERE opening_id = $1 AND seq = {count}"),
        &opening,
    )
    .await;
    assert_eq!(
        app.verify_chain(&opening).await,
        json!({"valid": true, "events": count - 1})
    );
    assert_eq!(
        app.verify_chain_at(&opening, Some(&head)).await,
        json!({"valid": false, "head_seq": count, "events": count - 1})
    );

    // A head given by halves, or not in hex, is refused with what to give.
    let path = format!("/api/openings/{opening}/events/verify");
    for query in ["?seq=3", "?hash=ab", "?seq=3&hash=zz", "?seq=-1&hash=ab"] {
        let r = app.agent("GET", &format!("{path}{query}"), None).await;
        assert_eq!(r.status, 422, "{query}: {}", r.body);
        assert!(
            r.body["message"]
                .as_str()
                .unwrap()
                .contains("64 hex digits"),
            "{}",
            r.body
        );
    }
    app.cleanup().await;
}

/// The receipt (回执) of an upload is signed by the platform, with a key that does not change
/// when the server restarts, so that a bidder can prove what the platform received and when.
async fn the_platform_signs_every_receipt_with_one_lasting_key(backend: Backend) {
    let app = spawn_app(&backend).await;
    let b = TestBidder::new(app.dir.path(), 1, 20_000);
    let opening = app.create_opening(60, 1800).await;
    app.register(&opening, &b).await;
    let r = app.upload(&opening, &b).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let receipt: Receipt = serde_json::from_value(r.body.clone()).unwrap();
    let key = app.platform_key().await;
    receipt
        .verify(&key)
        .expect("the receipt is signed by the platform");
    assert_eq!(receipt.bidder, b.uscc.as_str());
    let mut forged = receipt.clone();
    forged.received_ms -= 60_000;
    assert!(
        forged.verify(&key).is_err(),
        "an earlier time is not signed"
    );

    let mut app = app.restart().await;
    assert_eq!(app.platform_key().await, key);

    // A new master key (allowed while no opening holds keys sealed under the old one) makes a
    // new platform key; the earlier one is still listed, for what it signed.
    app.stop().await;
    std::fs::remove_file(app.settings.master_key_file()).unwrap();
    let app = app.restart().await;
    let now = app.platform_key().await;
    assert_ne!(now, key);
    let listed = app.call("GET", "/api/platform-key", None, None).await.body;
    let earlier = listed["earlier_keys"].as_array().unwrap();
    assert_eq!(earlier.len(), 1, "{listed}");
    let pem = earlier[0]["public_key_pem"].as_str().unwrap();
    let old = *kaibiao::crypto::load_public_pem(pem).unwrap().key();
    receipt
        .verify(&old)
        .expect("the earlier key checks the earlier receipt");
    assert!(receipt.verify(&now).is_err());
    app.cleanup().await;
}

/// Before decryption starts nobody but the agent may learn who registered or uploaded, nor how
/// many: the public's signed head stays at the last public event whatever happens behind it, and
/// asking again gets the same signed head.
async fn a_public_head_before_the_opening_counts_no_bid(backend: Backend) {
    let app = spawn_app(&backend).await;
    let b = TestBidder::new(app.dir.path(), 1, 20_000);
    let opening = app.create_opening(60, 1800).await;
    let before = signed_head(&app, &opening, None).await;
    let last_public = app.public_events(&opening).await.pop().unwrap();
    assert_eq!(before["seq"], last_public["seq"]);
    app.register(&opening, &b).await;
    assert_eq!(app.upload(&opening, &b).await.status, 201);
    let after = signed_head(&app, &opening, None).await;
    assert_eq!(after, before, "the same head, signed once");
    let agent = signed_head(&app, &opening, Some(&app.token.clone())).await;
    assert!(
        agent["seq"].as_i64().unwrap() > before["seq"].as_i64().unwrap(),
        "{agent}"
    );
    app.cleanup().await;
}

/// The log's digests (`/events/digests`, chain version 2): with them anyone carries the chain
/// through the events it may not read, up to the head the platform signs, and checks the events
/// it reads are those chained; the digests tell nothing of what they hash, and are given only
/// once the bidders are published. Openings chained the earlier way still verify.
async fn anyone_checks_the_chain_through_the_events_it_may_not_read(backend: Backend) {
    use kaibiao::hall::{GENESIS, chain_link, event_body_digest};
    let app = spawn_app(&backend).await;
    let b = TestBidder::new(app.dir.path(), 1, 20_000);
    let digests_path = |opening: &str| format!("/api/openings/{opening}/events/digests");

    // Before the bidders are published, only the agent has them.
    let waiting = app.opening_with_bids(&[&b], 60, 1800).await;
    let r = app.call("GET", &digests_path(&waiting), None, None).await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(
        r.body["message"].as_str().unwrap().contains("published"),
        "{}",
        r.body
    );
    let r = app.agent("GET", &digests_path(&waiting), None).await;
    assert_eq!(r.status, 200, "{}", r.body);

    let opening = decrypted(&app, &[&b]).await;
    let all = app.events(&opening).await;
    let r = app.call("GET", &digests_path(&opening), None, None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let digests = r.body.as_array().unwrap();
    assert_eq!(
        digests.len(),
        all.len(),
        "one digest per event, read or not"
    );
    let mut prev = GENESIS.to_owned();
    for d in digests {
        let keys: Vec<&String> = d.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["audience", "body_sm3", "hash", "seq"], "{d}");
        prev = chain_link(
            &prev,
            d["seq"].as_i64().unwrap(),
            d["audience"].as_str().unwrap(),
            d["body_sm3"].as_str().unwrap(),
        );
        assert_eq!(prev, d["hash"].as_str().unwrap(), "{d}");
    }
    let head = signed_head(&app, &opening, None).await;
    assert_eq!(
        head["hash"],
        prev.as_str(),
        "the chain leads to the signed head"
    );
    let public = app.public_events(&opening).await;
    assert!(public.len() < all.len(), "some events are the agent's only");
    for e in &public {
        let row: EventRow = serde_json::from_value(e.clone()).unwrap();
        let d = &digests[(row.seq - 1) as usize];
        assert_eq!(d["body_sm3"], event_body_digest(&row).as_str());
    }

    // An opening chained the earlier way (version 1): the platform still verifies it; its
    // digests are not given, since they would not carry the chain.
    app.sql(
        "UPDATE openings SET chain_version = 1 WHERE id = $1",
        &opening,
    )
    .await;
    let mut prev = GENESIS.to_owned();
    for e in &all {
        let mut row: EventRow = serde_json::from_value(e.clone()).unwrap();
        row.hash = kaibiao::hall::chain_hash(1, &prev, &row);
        let statement = format!(
            "UPDATE events SET hash = '{}' WHERE opening_id = $1 AND seq = {}",
            row.hash, row.seq
        );
        app.sql(&statement, &opening).await;
        prev = row.hash;
    }
    app.assert_chain_valid(&opening).await;
    let r = app.call("GET", &digests_path(&opening), None, None).await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(
        r.body["message"].as_str().unwrap().contains("version 1"),
        "{}",
        r.body
    );
    app.cleanup().await;
}
