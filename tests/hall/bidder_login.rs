//! Bidders' scan login (扫码登录): a browser shows a login code, the bidder's phone signs it, the
//! browser that asked (and only it) takes a session, and with it the bidder sees its own bid and
//! raises objections in its own name.

use serde_json::{Value, json};

use crate::helpers::{Backend, Reply, TestApp, TestBidder, spawn_app};

crate::on_both_databases!(
    a_bidder_logs_in_by_scanning_and_sees_its_own_bid,
    a_login_code_is_refused_forged_expired_or_for_another
);

/// What the browser does to show a login code: `{nonce, secret, qr_url, expires_ms}`.
pub(crate) async fn new_login(app: &TestApp, opening: &str) -> Value {
    let r = app
        .call(
            "POST",
            &format!("/api/openings/{opening}/bidder-login"),
            None,
            None,
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    r.body
}

/// The phone scans the code (its URL) and signs as `bidder` with `key`.
pub(crate) async fn phone_logs_in(
    app: &TestApp,
    qr_url: &str,
    bidder: &TestBidder,
    key: &sm2::SecretKey,
) -> Reply {
    let path = qr_url.strip_prefix(&app.base).expect("the hall's own URL");
    let r = app.call("GET", path, None, None).await;
    if r.status != 200 {
        return r;
    }
    let view: kaibiao::phone::LoginView = serde_json::from_value(r.body).unwrap();
    assert_eq!(
        view.check_code,
        kaibiao::phone::login_check_code(&view.nonce)
    );
    assert_eq!(view.check_code.len(), 4);
    let login = kaibiao::phone::login(&view, bidder.uscc.as_str(), key).unwrap();
    let answer = view.answer_url.strip_prefix(&app.base).unwrap().to_owned();
    app.call(
        "POST",
        &answer,
        Some(serde_json::to_value(login).unwrap()),
        None,
    )
    .await
}

/// The browser asks for its session with `secret`.
async fn take(app: &TestApp, login: &Value, secret: &str) -> Reply {
    let path = format!(
        "/api/bidder-login/{}/session",
        login["nonce"].as_str().unwrap()
    );
    app.call("POST", &path, Some(json!({"secret": secret})), None)
        .await
}

async fn a_bidder_logs_in_by_scanning_and_sees_its_own_bid(backend: Backend) {
    let app = spawn_app(&backend).await;
    let a = TestBidder::new(app.dir.path(), 1, 20_000);
    let b = TestBidder::new(app.dir.path(), 2, 20_000);
    let opening = app.opening_with_bids(&[&a, &b], 60, 1800).await;
    app.start_after(&opening, 61).await;

    let login = new_login(&app, &opening).await;
    let secret = login["secret"].as_str().unwrap().to_owned();
    let qr = format!(
        "/api/openings/{opening}/bidder-login/{}/qr.svg",
        login["nonce"].as_str().unwrap()
    );
    let svg = String::from_utf8(app.get_bytes(&qr).await).unwrap();
    assert!(svg.contains("<svg"), "{svg}");
    // Before the phone signs, the browser waits.
    assert_eq!(take(&app, &login, &secret).await.status, 202);

    let qr_url = login["qr_url"].as_str().unwrap();
    let r = phone_logs_in(&app, qr_url, &a, &a.sign).await;
    assert_eq!(r.status, 200, "{}", r.body);
    // A code is signed once.
    let r = phone_logs_in(&app, qr_url, &b, &b.sign).await;
    assert_eq!(r.status, 409, "{}", r.body);

    // Only the browser holding the secret takes the session, once.
    assert_eq!(take(&app, &login, "0123").await.status, 409);
    let r = take(&app, &login, &secret).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["bidder"]["uscc"], a.uscc.as_str());
    let token = r.body["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("bs_"));
    let again = take(&app, &login, &secret).await;
    assert_eq!(again.status, 409, "{}", again.body);
    // The agent sees who is logged in (and the public does not).
    let logged_in = |s: serde_json::Value| {
        s["bidders"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| {
                (
                    b["uscc"].as_str().unwrap().to_owned(),
                    b["logged_in"].clone(),
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        logged_in(app.snapshot(&opening).await),
        [
            (a.uscc.to_string(), Value::Bool(true)),
            (b.uscc.to_string(), Value::Bool(false))
        ]
    );
    let public = app.public_snapshot(&opening).await;
    let listed = public["bidders"].as_array().unwrap();
    assert_eq!(listed.len(), 2, "{public}");
    let agents_only = |b: &Value| b.get("logged_in").is_some() || b.get("keys").is_some();
    assert!(!listed.iter().any(agents_only), "{public}");

    // The bidder's own view: its bid, waiting for its key, with its QR code.
    let me = format!("/api/openings/{opening}/me");
    let r = app.call("GET", &me, None, Some(&token)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["bidder"]["name"], a.name.as_str());
    assert_eq!(r.body["bid"]["state"], "awaiting_key");
    let bid_qr = r.body["bid"]["qr"]["url"].as_str().unwrap();
    assert_eq!(Some(bid_qr.to_owned()), app.qr_url(&opening, &a).await);
    assert_eq!(app.call("GET", &me, None, None).await.status, 401);
    assert_eq!(app.agent("GET", &me, None).await.status, 401);

    // An objection in its own name, answered by the agent: the bidder sees the answer.
    let mine = format!("{me}/objections");
    let r = app
        .call(
            "POST",
            &mine,
            Some(json!({"text": "我方解密二维码无法显示"})),
            Some(&token),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let n = r.body["n"].as_i64().unwrap();
    let r = app
        .call("POST", &mine, Some(json!({"text": "x"})), None)
        .await;
    assert_eq!(r.status, 401, "{}", r.body);
    let answer = format!("/api/openings/{opening}/objections/{n}/answer");
    let r = app
        .agent("POST", &answer, Some(json!({"answer": "已刷新二维码"})))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let view = app.call("GET", &me, None, Some(&token)).await.body;
    assert_eq!(view["objections"][0]["answer"], "已刷新二维码");
    let public = app.public_snapshot(&opening).await;
    assert_eq!(public["objections"][0]["bidder"]["uscc"], a.uscc.as_str());
    // The log says it was raised on the bidder's page, not recorded by the agent.
    let raised = app.public_payloads(&opening, "objection.raised").await;
    assert_eq!(raised[0]["via"], "login", "{}", raised[0]);

    // After its scan, the bid is decrypted and the view says so.
    assert_eq!(app.scan(&opening, &a).await.status, 200);
    app.wait_until_settled(&opening).await;
    let view = app.call("GET", &me, None, Some(&token)).await.body;
    assert_eq!(view["bid"]["outcome"], "解密成功");
    assert_eq!(view["bid"]["summary"]["price_fen"], a.summary.price_fen);
    // Once a record is issued, the page shows its code until the bidder confirmed it.
    assert_eq!(view["record"], Value::Null);
    assert_eq!(app.scan(&opening, &b).await.status, 200);
    app.wait_until_settled(&opening).await;
    assert_eq!(app.act(&opening, "end-decryption").await.status, 200);
    assert_eq!(app.act(&opening, "record/issue").await.status, 201);
    let view = app.call("GET", &me, None, Some(&token)).await.body;
    assert_eq!(view["record"]["version"], 1);
    assert_eq!(view["record"]["confirmed"], false);
    crate::record::confirm_first_version(&app, &opening, &a).await;
    let view = app.call("GET", &me, None, Some(&token)).await.body;
    assert_eq!(view["record"]["confirmed"], true);

    let counted = |action: &str| format!("bidder_actions_total{{action=\"{action}\"}}");
    assert_eq!(app.metric(&counted("login")).await, 1.0);
    assert_eq!(app.metric(&counted("objection")).await, 1.0);

    // Logged out, the token is no longer taken.
    let logout = format!("{me}/logout");
    let r = app.call("POST", &logout, None, Some(&token)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(app.call("GET", &me, None, Some(&token)).await.status, 401);
    let listed = app.snapshot(&opening).await["bidders"].clone();
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .all(|b| b["logged_in"] == false),
        "{listed}"
    );
    app.cleanup().await;
}

async fn a_login_code_is_refused_forged_expired_or_for_another(backend: Backend) {
    let app = spawn_app(&backend).await;
    let a = TestBidder::new(app.dir.path(), 1, 20_000);
    let stranger = TestBidder::new(app.dir.path(), 9, 20_000);
    let opening = app.opening_with_bids(&[&a], 1200, 1800).await;
    let other = app.opening_with_bids(&[&stranger], 1200, 1800).await;

    // Signed with a key not registered for the bidder, or as a code no bidder has: refused
    // alike (before publication a login tells no one who registered), and the code still usable.
    let login = new_login(&app, &opening).await;
    let qr_url = login["qr_url"].as_str().unwrap();
    let forged = phone_logs_in(&app, qr_url, &a, &stranger.sign).await;
    assert_eq!(forged.body["error"], "bad_signature", "{}", forged.body);
    let unknown = phone_logs_in(&app, qr_url, &stranger, &stranger.sign).await;
    assert_eq!(unknown.status, forged.status);
    assert_eq!(unknown.body["error"], "bad_signature", "{}", unknown.body);
    let r = phone_logs_in(&app, qr_url, &a, &a.sign).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let secret = login["secret"].as_str().unwrap();
    let token = take(&app, &login, secret).await.body["token"]
        .as_str()
        .unwrap()
        .to_owned();
    // A session is of its own opening only.
    let r = app
        .call(
            "GET",
            &format!("/api/openings/{other}/me"),
            None,
            Some(&token),
        )
        .await;
    assert_eq!(r.status, 401, "{}", r.body);
    // Before decryption, the bid is received and shows no QR code; objections are not open yet.
    let me_path = format!("/api/openings/{opening}/me");
    let me = app.call("GET", &me_path, None, Some(&token)).await;
    assert_eq!(me.body["bid"]["state"], "received", "{}", me.body);
    assert_eq!(me.body["bid"]["qr"], Value::Null);
    // Sign-in is open (the opening is twenty minutes away): the page shows its code until the
    // bidder signed in.
    let sign_in = me.body["sign_in"]["url"].as_str().unwrap();
    assert!(
        sign_in.ends_with(&format!("/api/phone/sign-in/{opening}")),
        "{sign_in}"
    );
    let signed = crate::signin::phone_signs_in(&app, &opening, &a, &a.sign).await;
    assert_eq!(
        crate::signin::post_sign_in(&app, &opening, signed)
            .await
            .status,
        200
    );
    let me = app.call("GET", &me_path, None, Some(&token)).await;
    assert_eq!(me.body["sign_in"], Value::Null, "{}", me.body);
    assert!(me.body["bidder"]["signed_in_ms"].as_i64().is_some());
    let r = app
        .call(
            "POST",
            &format!("/api/openings/{opening}/me/objections"),
            Some(json!({"text": "异议"})),
            Some(&token),
        )
        .await;
    assert_eq!(r.status, 409, "{}", r.body);

    // A code not signed in time expires: the phone and the browser are told to start again.
    let late = new_login(&app, &opening).await;
    app.advance_secs(kaibiao::hall::LOGIN_CODE_MS / 1000 + 1);
    let r = phone_logs_in(&app, late["qr_url"].as_str().unwrap(), &a, &a.sign).await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(
        r.body["message"]
            .as_str()
            .unwrap()
            .contains("reload the page"),
        "{}",
        r.body
    );
    let r = take(&app, &late, late["secret"].as_str().unwrap()).await;
    assert_eq!(r.status, 409, "{}", r.body);
    // Nor is a session taken after its code expired, though the phone signed it in time.
    let signed = new_login(&app, &opening).await;
    let r = phone_logs_in(&app, signed["qr_url"].as_str().unwrap(), &a, &a.sign).await;
    assert_eq!(r.status, 200, "{}", r.body);
    app.advance_secs(kaibiao::hall::LOGIN_CODE_MS / 1000 + 1);
    let r = take(&app, &signed, signed["secret"].as_str().unwrap()).await;
    assert_eq!(r.status, 409, "{}", r.body);
    // Asking for codes stores nothing, so however many are asked for, none is taken from the
    // bidders: a thousand leave no row, and a code asked for after them works.
    let asked: Vec<_> =
        futures_util::future::join_all((0..1_000).map(|_| app.hall.new_bidder_login(&opening)))
            .await;
    for code in [&asked[0], &asked[999]] {
        let nonce = &code.as_ref().unwrap().nonce;
        assert!(app.hall.db().bidder_login(nonce).await.unwrap().is_none());
    }
    let fresh = new_login(&app, &opening).await;
    let r = phone_logs_in(&app, fresh["qr_url"].as_str().unwrap(), &a, &a.sign).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        take(&app, &fresh, fresh["secret"].as_str().unwrap())
            .await
            .status,
        200
    );
    // The hall knows its codes by their MAC: one changed in any part is not its own.
    let code = new_login(&app, &opening).await;
    let parts: Vec<String> = code["nonce"]
        .as_str()
        .unwrap()
        .split('.')
        .map(String::from)
        .collect();
    assert_eq!(parts.len(), 4, "{code}");
    let flip = |s: &str| {
        let mut c: Vec<char> = s.chars().collect();
        c[0] = if c[0] == '0' { '1' } else { '0' };
        c.into_iter().collect::<String>()
    };
    let later = (parts[1].parse::<i64>().unwrap() + 600_000).to_string();
    // Nor is one spelt otherwise (the code keys its row: each spelling would log in once).
    let respelled = format!("0{}", parts[1]);
    for (i, changed) in [
        (0, other.clone()),
        (1, later),
        (1, respelled),
        (2, flip(&parts[2])),
        (3, flip(&parts[3])),
    ] {
        let mut altered = parts.clone();
        altered[i] = changed;
        let r = app
            .call(
                "GET",
                &format!("/api/phone/logins/{}", altered.join(".")),
                None,
                None,
            )
            .await;
        assert_eq!(r.status, 409, "part {i}: {}", r.body);
    }

    // A code unknown to the hall.
    let r = app
        .call(
            "GET",
            "/api/phone/logins/00000000000000000000000000000000",
            None,
            None,
        )
        .await;
    assert_eq!(r.status, 409, "{}", r.body);
    app.cleanup().await;
}
