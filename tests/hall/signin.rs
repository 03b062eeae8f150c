//! Sign-in (签到): bidders sign in by scan-signing from half an hour before the opening until
//! decryption starts; who signed in stays the agent's to know until the bidders are published.

use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, TestBidder, spawn_app};

crate::on_both_databases!(bidders_sign_in_by_scan_signing_before_decryption);

/// What the phone does with the hall's sign-in code: fetch the view, sign as `bidder` with `key`.
pub(crate) async fn phone_signs_in(
    app: &TestApp,
    opening: &str,
    bidder: &TestBidder,
    key: &sm2::SecretKey,
) -> Value {
    let r = app
        .call("GET", &format!("/api/phone/sign-in/{opening}"), None, None)
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let view: kaibiao::phone::SignInView = serde_json::from_value(r.body).unwrap();
    assert_eq!(view.opening_id, opening);
    serde_json::to_value(kaibiao::phone::sign_in(&view, bidder.uscc.as_str(), key).unwrap())
        .unwrap()
}

pub(crate) async fn post_sign_in(
    app: &TestApp,
    opening: &str,
    body: Value,
) -> crate::helpers::Reply {
    app.call(
        "POST",
        &format!("/api/phone/sign-in/{opening}"),
        Some(body),
        None,
    )
    .await
}

async fn bidders_sign_in_by_scan_signing_before_decryption(backend: Backend) {
    let app = spawn_app(&backend).await;
    let a = TestBidder::new(app.dir.path(), 1, 20_000);
    let b = TestBidder::new(app.dir.path(), 2, 20_000);
    // The opening is an hour away: sign-in is not open yet.
    let opening = app.opening_with_bids(&[&a, &b], 3600, 1800).await;
    let view = format!("/api/phone/sign-in/{opening}");
    let r = app.call("GET", &view, None, None).await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(
        r.body["message"]
            .as_str()
            .unwrap()
            .contains("sign-in opens at")
    );
    let qr = format!("/api/openings/{opening}/sign-in/qr.svg");
    assert_eq!(app.call("GET", &qr, None, None).await.status, 409);

    app.advance_secs(3600 - 29 * 60);
    let svg = app
        .client
        .get(format!("{}{qr}", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(svg.status().as_u16(), 200);
    let signed = phone_signs_in(&app, &opening, &a, &a.sign).await;
    let before = app.now_ms();
    let r = post_sign_in(&app, &opening, signed.clone()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let at = r.body["signed_in_ms"].as_i64().unwrap();
    assert!((before..=app.now_ms()).contains(&at), "{at}");
    let counted = "bidder_actions_total{action=\"sign_in\"}";
    assert_eq!(app.metric(counted).await, 1.0);

    // Replayed, forged, misattributed or malformed sign-ins change nothing; a code no bidder has
    // is refused as a wrong signature is (who registered is not told before the opening).
    let with_enc = phone_signs_in(&app, &opening, &b, &b.enc).await;
    let bs = phone_signs_in(&app, &opening, &b, &b.sign).await;
    for (body, status, says) in [
        (signed, 409, "signed in already"),
        (with_enc, 422, "signature is not valid"),
        (
            json!({"bidder": a.uscc.as_str(), "signature": bs["signature"]}),
            422,
            "signature is not valid",
        ),
        (
            json!({"bidder": "91350100M000100Y43", "signature": bs["signature"]}),
            422,
            "signature is not valid",
        ),
        (
            json!({"bidder": b.uscc.as_str(), "signature": "***"}),
            422,
            "not base64",
        ),
        (
            json!({"bidder": b.uscc.as_str(), "sig": "x"}),
            422,
            "not valid",
        ),
    ] {
        let r = post_sign_in(&app, &opening, body.clone()).await;
        assert_eq!(r.status, status, "{body}: {}", r.body);
        assert!(
            r.body["message"].as_str().unwrap().contains(says),
            "{body}: {}",
            r.body
        );
    }
    // B's own signature, claimed for a bidder not yet signed in, is no sign-in of it: sign B's
    // message as someone else.
    let c = TestBidder::new(app.dir.path(), 3, 20_000);
    app.register(&opening, &c).await;
    let r = post_sign_in(
        &app,
        &opening,
        json!({"bidder": c.uscc.as_str(), "signature": bs["signature"]}),
    )
    .await;
    assert_eq!(r.status, 422, "{}", r.body);

    // Until the bidders are published, only the agent learns who signed in.
    let public = app.public_events(&opening).await;
    assert!(
        public.iter().all(|e| e["kind"] != "bidder.signed_in"),
        "{public:?}"
    );
    assert!(
        app.events(&opening)
            .await
            .iter()
            .any(|e| e["kind"] == "bidder.signed_in")
    );
    assert_eq!(app.public_snapshot(&opening).await["bidders"], json!([]));

    // Decryption starts: sign-in closes, and the published list tells who signed in when.
    app.advance_secs(29 * 60 + 1);
    let r = app.act(&opening, "start-decryption").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = post_sign_in(&app, &opening, bs).await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(
        r.body["message"]
            .as_str()
            .unwrap()
            .contains("closed when decryption started")
    );
    assert_eq!(app.call("GET", &qr, None, None).await.status, 409);
    let bidders = app.public_snapshot(&opening).await["bidders"].clone();
    let signed_in = |b: &TestBidder| {
        bidders
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["uscc"] == b.uscc.as_str())
            .unwrap()["signed_in_ms"]
            .clone()
    };
    assert_eq!(signed_in(&a), json!(at));
    assert_eq!(signed_in(&b), Value::Null);
    assert_eq!(signed_in(&c), Value::Null);
    app.assert_chain_valid(&opening).await;
    app.cleanup().await;
}
