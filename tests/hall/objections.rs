//! Objections (异议) raised during an opening and the agent's answers: recorded from the start of
//! decryption until the close, each answered once, in the event log and the snapshot, and an
//! opening with an unanswered objection cannot be closed.

use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, TestBidder, spawn_app};

crate::on_both_databases!(
    objections_are_recorded_answered_once_and_hold_back_the_close,
    bad_objections_are_refused_and_change_nothing,
    a_bidder_raises_its_own_objection_signed_with_its_phone
);

async fn raise(app: &TestApp, opening: &str, body: Value) -> crate::helpers::Reply {
    app.agent(
        "POST",
        &format!("/api/openings/{opening}/objections"),
        Some(body),
    )
    .await
}

async fn answer(app: &TestApp, opening: &str, n: &str, text: &str) -> crate::helpers::Reply {
    app.agent(
        "POST",
        &format!("/api/openings/{opening}/objections/{n}/answer"),
        Some(json!({"answer": text})),
    )
    .await
}

async fn objections_are_recorded_answered_once_and_hold_back_the_close(backend: Backend) {
    let app = spawn_app(&backend).await;
    let b = TestBidder::new(app.dir.path(), 1, 20_000);
    let opening = app.opening_with_bids(&[&b], 60, 1800).await;

    // Before the bidders are published no objection is taken: it would tell who takes part.
    let r = raise(
        &app,
        &opening,
        json!({"bidder": b.uscc.as_str(), "text": "x"}),
    )
    .await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(
        r.body["message"]
            .as_str()
            .unwrap()
            .contains("start of decryption"),
        "{}",
        r.body
    );

    app.start_after(&opening, 61).await;
    let text = "投标人名单中的第二家单位未按时签到，请核实";
    let r = raise(
        &app,
        &opening,
        json!({"bidder": b.uscc.as_str(), "text": format!("  {text}\n")}),
    )
    .await;
    assert_eq!((r.status, &r.body), (201, &json!({"n": 1})));
    let r = raise(
        &app,
        &opening,
        json!({"text": "现场监督人员提出：解密时限是否已公布"}),
    )
    .await;
    assert_eq!((r.status, &r.body), (201, &json!({"n": 2})));

    // On the public snapshot and in the public log, with the bidder named.
    let shown = app.public_snapshot(&opening).await["objections"].clone();
    assert_eq!(shown.as_array().unwrap().len(), 2, "{shown}");
    assert_eq!(shown[0]["n"], 1);
    assert_eq!(shown[0]["text"], text, "trimmed");
    assert_eq!(shown[0]["bidder"]["uscc"], b.uscc.as_str());
    assert_eq!(shown[0]["bidder"]["name"], b.name.as_str());
    assert_eq!(shown[0]["answer"], Value::Null);
    assert_eq!(shown[1]["bidder"], Value::Null);
    let raised = app.public_payloads(&opening, "objection.raised").await;
    assert_eq!(raised.len(), 2);
    assert_eq!(raised[0]["text"], text);
    assert_eq!(raised[0]["bidder"]["name"], b.name.as_str());

    // Answered once; a second answer is refused and the first stays.
    let r = answer(
        &app,
        &opening,
        "1",
        "经核实，该单位已于开标前签到，异议不成立",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = answer(&app, &opening, "1", "改口").await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(
        r.body["message"]
            .as_str()
            .unwrap()
            .contains("answered already")
    );
    let shown = app.public_snapshot(&opening).await["objections"].clone();
    assert_eq!(
        shown[0]["answer"],
        "经核实，该单位已于开标前签到，异议不成立"
    );
    assert!(shown[0]["answered_ms"].as_i64().is_some());
    assert_eq!(shown[1]["answer"], Value::Null);

    // The opening cannot be closed while objection 2 has no answer.
    assert_eq!(app.scan(&opening, &b).await.status, 200);
    app.wait_until_settled(&opening).await;
    assert_eq!(app.act(&opening, "end-decryption").await.status, 200);
    assert_eq!(app.act(&opening, "release").await.status, 200);
    let r = app.act(&opening, "close").await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(
        r.body["message"]
            .as_str()
            .unwrap()
            .contains("objection(s) 2 have no answer")
    );
    assert_eq!(app.snapshot(&opening).await["opening"]["state"], "released");
    let r = answer(&app, &opening, "2", "解密时限已于开标公告中公布（30分钟）").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = app.act(&opening, "close").await;
    assert_eq!(r.status, 200, "{}", r.body);

    // The record is final: no objection or answer after the close.
    let r = raise(&app, &opening, json!({"text": "迟到的异议"})).await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.body["message"].as_str().unwrap().contains("final"));
    let r = answer(&app, &opening, "2", "再答").await;
    assert_eq!(r.status, 409, "{}", r.body);

    // In the log in order, the chain intact, and kept across a restart.
    let answered = app.public_payloads(&opening, "objection.answered").await;
    assert_eq!(
        answered,
        vec![
            json!({"n": 1, "answer": "经核实，该单位已于开标前签到，异议不成立"}),
            json!({"n": 2, "answer": "解密时限已于开标公告中公布（30分钟）"}),
        ]
    );
    app.assert_chain_valid(&opening).await;
    let app = app.restart().await;
    let shown = app.public_snapshot(&opening).await["objections"].clone();
    assert_eq!(shown.as_array().unwrap().len(), 2);
    assert_eq!(shown[1]["answer"], "解密时限已于开标公告中公布（30分钟）");
    app.cleanup().await;
}

async fn bad_objections_are_refused_and_change_nothing(backend: Backend) {
    let app = spawn_app(&backend).await;
    let b = TestBidder::new(app.dir.path(), 1, 20_000);
    let opening = app.opening_with_bids(&[&b], 60, 1800).await;
    app.start_after(&opening, 61).await;
    let events = app.events(&opening).await.len();

    for (body, status, says) in [
        (json!({"text": "   "}), 422, "give the objection's text"),
        (
            json!({"text": "异".repeat(2001)}),
            422,
            "more than the 2000",
        ),
        (
            json!({"bidder": "91350100M000100Y43", "text": "x"}),
            422,
            "no bidder with the code",
        ),
        (
            json!({"bidder": b.uscc.as_str(), "txt": "x"}),
            422,
            "not valid",
        ),
    ] {
        let r = raise(&app, &opening, body.clone()).await;
        assert_eq!(r.status, status, "{body}: {}", r.body);
        assert!(
            r.body["message"].as_str().unwrap().contains(says),
            "{body}: {}",
            r.body
        );
    }
    // Only the agent records them.
    let path = format!("/api/openings/{opening}/objections");
    let r = app
        .call("POST", &path, Some(json!({"text": "x"})), None)
        .await;
    assert_eq!(r.status, 401, "{}", r.body);
    let r = raise(&app, "no-such-opening", json!({"text": "x"})).await;
    assert_eq!(r.status, 404, "{}", r.body);

    // Answers to no objection, or of no number, or empty.
    assert_eq!(answer(&app, &opening, "1", "答").await.status, 404);
    let r = answer(&app, &opening, "first", "答").await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(
        r.body["message"]
            .as_str()
            .unwrap()
            .contains("not an objection's number")
    );
    let r = raise(&app, &opening, json!({"text": "x"})).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let r = answer(&app, &opening, "1", " ").await;
    assert_eq!(r.status, 422, "{}", r.body);
    let path = format!("/api/openings/{opening}/objections/1/answer");
    let r = app
        .call("POST", &path, Some(json!({"answer": "y"})), None)
        .await;
    assert_eq!(r.status, 401, "{}", r.body);

    // Of all that, one objection and its event, unanswered.
    let shown = app.public_snapshot(&opening).await["objections"].clone();
    assert_eq!(
        shown,
        json!([{"n": 1, "bidder": null, "text": "x", "raised_ms": shown[0]["raised_ms"], "answer": null, "answered_ms": null}])
    );
    assert_eq!(app.events(&opening).await.len(), events + 1);
    app.cleanup().await;
}

async fn post_signed(app: &TestApp, opening: &str, body: Value) -> crate::helpers::Reply {
    app.call(
        "POST",
        &format!("/api/phone/objections/{opening}"),
        Some(body),
        None,
    )
    .await
}

/// A bidder taking part remotely raises its own objection, signed with its phone: recorded with
/// its signature in the public log; a repeated one, a forged or misattributed one, and one
/// before the bidders are published are refused and change nothing.
async fn a_bidder_raises_its_own_objection_signed_with_its_phone(backend: Backend) {
    let app = spawn_app(&backend).await;
    let a = TestBidder::new(app.dir.path(), 1, 20_000);
    let b = TestBidder::new(app.dir.path(), 2, 20_000);
    let opening = app.opening_with_bids(&[&a, &b], 60, 1800).await;
    let text = "解密时限开始时间与公告不一致";
    let sign = |who: &TestBidder, key: &sm2::SecretKey, text: &str| {
        serde_json::to_value(
            kaibiao::phone::sign_objection(&opening, who.uscc.as_str(), text, key).unwrap(),
        )
        .unwrap()
    };
    // Before publication: refused before the code is even looked at.
    let unknown = json!({"bidder": "91350100M000100Y43", "text": text, "signature": "x"});
    let r = post_signed(&app, &opening, unknown.clone()).await;
    assert_eq!(r.status, 409, "{}", r.body);
    let r = post_signed(&app, &opening, sign(&a, &a.sign, text)).await;
    assert_eq!(r.status, 409, "{}", r.body);

    app.start_after(&opening, 61).await;
    let events = app.events(&opening).await.len();
    let signed = sign(&a, &a.sign, &format!("  {text} "));
    let r = post_signed(&app, &opening, signed.clone()).await;
    assert_eq!((r.status, &r.body), (201, &json!({"n": 1})), "{}", r.body);
    for (body, status, says) in [
        (signed, 409, "recorded already, as objection 1"),
        (sign(&b, &b.enc, text), 422, "signature is not valid"),
        (
            json!({"bidder": a.uscc.as_str(), "text": text, "signature": sign(&b, &b.sign, text)["signature"]}),
            422,
            "signature is not valid",
        ),
        (
            json!({"bidder": b.uscc.as_str(), "text": "另一条", "signature": sign(&b, &b.sign, text)["signature"]}),
            422,
            "signature is not valid",
        ),
        (unknown, 422, "no bidder with the code"),
        (sign(&b, &b.sign, " "), 422, "give the objection's text"),
    ] {
        let r = post_signed(&app, &opening, body.clone()).await;
        assert_eq!(r.status, status, "{body}: {}", r.body);
        assert!(
            r.body["message"].as_str().unwrap().contains(says),
            "{body}: {}",
            r.body
        );
    }
    assert_eq!(app.events(&opening).await.len(), events + 1);

    // In the public log with the bidder's signature, which anyone can check.
    let raised = app.public_payloads(&opening, "objection.raised").await;
    assert_eq!(raised[0]["text"], text);
    assert_eq!(raised[0]["bidder"]["uscc"], a.uscc.as_str());
    let signature = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        raised[0]["signature"].as_str().unwrap(),
    )
    .unwrap();
    let message = kaibiao::phone::objection_message(&opening, a.uscc.as_str(), text);
    kaibiao::crypto::verify(&a.sign.public_key(), &message, &signature).unwrap();

    // The agent answers it like any other; the agent recording the same objection again is
    // refused too.
    let path = format!("/api/openings/{opening}/objections");
    let again = json!({"bidder": a.uscc.as_str(), "text": text});
    let r = app.agent("POST", &path, Some(again)).await;
    assert_eq!(r.status, 409, "{}", r.body);
    let r = app
        .agent(
            "POST",
            &format!("{path}/1/answer"),
            Some(json!({"answer": "已核实"})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    app.assert_chain_valid(&opening).await;
    app.cleanup().await;
}
