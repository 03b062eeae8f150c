//! Roles that may not see or do a thing are refused.

use serde_json::json;

use crate::helpers::{ADMIN_PASSWORD, Backend, TestBidder, Viewer, spawn_app, spawn_app_with};

crate::on_both_databases!(
    roles_are_enforced,
    a_certificate_issued_to_another_enterprise_is_refused_at_registration,
    no_one_but_the_agent_learns_who_bid_before_the_opening,
    the_pages_render,
    wrong_passwords_hold_back_the_sign_in
);

/// Guessing an agent's password is held back after five wrong ones from one address, for a
/// minute that doubles with each further failure; sessions and tokens issued before keep working,
/// and so does signing in from elsewhere.
async fn wrong_passwords_hold_back_the_sign_in(backend: Backend) {
    let app = spawn_app(&backend).await;
    let sign_in = |password: &'static str| {
        let app = &app;
        async move {
            let body = json!({"username": "admin", "password": password});
            app.call("POST", "/api/login", Some(body), None).await
        }
    };
    for _ in 0..5 {
        assert_eq!(sign_in("wrong password").await.status, 401);
    }
    let held = sign_in(crate::helpers::ADMIN_PASSWORD).await;
    assert_eq!(held.status, 429, "{}", held.body);
    assert_eq!(held.body["error"], "too_many_attempts");
    let wait = |held: &crate::helpers::Reply| -> u64 {
        let message = held.body["message"].as_str().unwrap();
        let after = message.split("try again in ").nth(1).expect("how long");
        after.split(' ').next().unwrap().parse().unwrap()
    };
    // The wait counts down from the last failure (this request came a moment after it).
    assert!((55..=60).contains(&wait(&held)), "{}", held.body);
    assert_eq!(
        app.agent("GET", "/api/openings", None).await.status,
        200,
        "the agent's token still works"
    );
    // Only where the guesses came from: the agent signs in from another address.
    let elsewhere = awc::Client::builder()
        .connector(awc::Connector::new().local_address("127.0.0.2".parse().unwrap()))
        .finish();
    let res = elsewhere
        .post(format!("{}/api/login", app.base))
        .send_json(&json!({"username": "admin", "password": crate::helpers::ADMIN_PASSWORD}))
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200, "from 127.0.0.2");
    // A name that is no agent's is refused and held back the same way (checked against a
    // stand-in hash), so that neither tells which names exist; counted apart from `admin`.
    for attempt in 0..6 {
        let body = json!({"username": "nobody", "password": "x"});
        let r = app.call("POST", "/api/login", Some(body), None).await;
        let expected = if attempt < 5 { 401 } else { 429 };
        assert_eq!(r.status, expected, "attempt {attempt}: {}", r.body);
    }

    app.advance_secs(61);
    assert_eq!(sign_in("wrong password").await.status, 401);
    let held = sign_in(crate::helpers::ADMIN_PASSWORD).await;
    assert!(
        (115..=120).contains(&wait(&held)),
        "one more failure doubles it: {}",
        held.body
    );
    app.advance_secs(121);
    assert_eq!(sign_in(crate::helpers::ADMIN_PASSWORD).await.status, 200);
    assert_eq!(sign_in("wrong password").await.status, 401);
    assert_eq!(
        sign_in(crate::helpers::ADMIN_PASSWORD).await.status,
        200,
        "a right password started the count again"
    );
    app.cleanup().await;
}

/// Behind a reverse proxy named in `trusted_proxies`, wrong passwords hold back the client the
/// proxy names in `X-Forwarded-For`, not everyone behind it; from anyone else the header is not
/// believed. (The counts live in the server's memory: one database is enough.)
#[actix_web::test]
async fn behind_a_trusted_proxy_the_client_is_held_back_not_the_proxy() {
    let app = spawn_app_with(&Backend::Sqlite, |s| {
        s.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
    })
    .await;
    let sign_in = |forwarded, password| sign_in_forwarded(&app, forwarded, password);
    // The client wrote an address of its own before the proxy's: the proxy appended the one it
    // was reached from, and that is the one held back.
    for _ in 0..5 {
        assert_eq!(sign_in("1.2.3.4, 203.0.113.7", "wrong password").await, 401);
    }
    assert_eq!(sign_in("203.0.113.7", ADMIN_PASSWORD).await, 429);
    assert_eq!(sign_in("5.6.7.8, 203.0.113.7", ADMIN_PASSWORD).await, 429);
    assert_eq!(
        sign_in("203.0.113.7:50123", ADMIN_PASSWORD).await,
        429,
        "with a port, as some proxies write it"
    );
    assert_eq!(
        sign_in("203.0.113.8", ADMIN_PASSWORD).await,
        200,
        "another client behind the proxy"
    );
    app.cleanup().await;

    // Without `trusted_proxies` the header is anyone's to write and is ignored.
    let app = spawn_app(&Backend::Sqlite).await;
    let sign_in = |forwarded, password| sign_in_forwarded(&app, forwarded, password);
    for i in 0..5 {
        let forwarded = [
            "198.51.100.1",
            "198.51.100.2",
            "198.51.100.3",
            "198.51.100.4",
        ];
        assert_eq!(sign_in(forwarded[i % 4], "wrong password").await, 401);
    }
    assert_eq!(sign_in("198.51.100.9", ADMIN_PASSWORD).await, 429);
    app.cleanup().await;
}

/// The status of signing in as `admin` with `X-Forwarded-For: forwarded`.
async fn sign_in_forwarded(app: &crate::helpers::TestApp, forwarded: &str, password: &str) -> u16 {
    let res = app
        .client
        .post(format!("{}/api/login", app.base))
        .insert_header(("X-Forwarded-For", forwarded))
        .send_json(&json!({"username": "admin", "password": password}))
        .await
        .unwrap();
    res.status().as_u16()
}

/// An SM2 certificate made by the `openssl` CLI for `subject`, in PEM; None (the test skips,
/// loudly) where the command is missing outside CI.
fn openssl_certificate(dir: &std::path::Path, name: &str, subject: &str) -> Option<String> {
    let run = |args: &[&str]| crate::ca::openssl(dir, args);
    let key = format!("{name}.key");
    let cert = format!("{name}.crt");
    run(&["genpkey", "-algorithm", "SM2", "-out", &key])?;
    run(&[
        "req",
        "-new",
        "-x509",
        "-key",
        &key,
        "-sm3",
        "-sigopt",
        "distid:1234567812345678",
        "-utf8",
        "-subj",
        subject,
        "-days",
        "30",
        "-out",
        &cert,
    ])?;
    Some(std::fs::read_to_string(dir.join(cert)).unwrap())
}

/// 扫码绑定's rule: a certificate registered for a bidder must have been issued to that
/// enterprise (its subject holds the unified social credit code, or the enterprise's name).
/// One issued to another is refused and registers nothing.
async fn a_certificate_issued_to_another_enterprise_is_refused_at_registration(backend: Backend) {
    let app = spawn_app(&backend).await;
    let b = TestBidder::new(app.dir.path(), 0, 1_000);
    let dir = app.dir.path();
    let code = b.uscc.as_str();
    let Some(by_code) = openssl_certificate(dir, "by-code", &format!("/CN=张三/OU={code}/O=某CA"))
    else {
        app.cleanup().await;
        return;
    };
    let by_name = openssl_certificate(dir, "by-name", &format!("/CN={}", b.name)).unwrap();
    let other = openssl_certificate(
        dir,
        "other",
        "/CN=另一家建设有限公司/serialNumber=91350100M000100Y43",
    )
    .unwrap();
    let opening = app.create_opening(600, 1800).await;
    let path = format!("/api/openings/{opening}/bidders");
    let agent = &app;
    let register = |sign: &str| {
        let mut body = b.registration();
        body["sign_keys"] = json!([sign]);
        agent.agent("POST", &path, Some(body))
    };
    let refused = register(&other).await;
    assert_eq!(refused.status, 422, "{}", refused.body);
    let said = refused.body["message"].as_str().unwrap();
    assert!(
        said.contains("证书与投标人不符") && said.contains(code),
        "{said}"
    );
    assert_eq!(
        app.snapshot(&opening).await["bidders"],
        json!([]),
        "nothing registered"
    );

    let accepted = register(&by_code).await;
    assert_eq!(accepted.status, 201, "{}", accepted.body);
    let other_opening = app.create_opening(600, 1800).await;
    let mut body = b.registration();
    body["enc_keys"] = json!([by_name]);
    let r = app
        .agent(
            "POST",
            &format!("/api/openings/{other_opening}/bidders"),
            Some(body),
        )
        .await;
    assert_eq!(
        r.status, 201,
        "a certificate naming the enterprise: {}",
        r.body
    );
    app.cleanup().await;
}

/// Before the opening, the names and the number of the bidders are told to no one but the agent
/// (招标投标法 art. 22): not by the public snapshot, the public events or a public websocket.
/// Starting decryption publishes them, in its event; so does failing the opening before it.
async fn no_one_but_the_agent_learns_who_bid_before_the_opening(backend: Backend) {
    let app = spawn_app(&backend).await;
    let bidders: Vec<TestBidder> = (0..2)
        .map(|i| TestBidder::new(app.dir.path(), i, 5_000))
        .collect();
    let opening = app
        .opening_with_bids(&bidders.iter().collect::<Vec<_>>(), 60, 600)
        .await;
    let mut viewer = Viewer::connect(&app, &opening, 0, None).await;
    let names = |text: &str| {
        bidders
            .iter()
            .any(|b| text.contains(&b.name) || text.contains(b.uscc.as_str()))
    };

    let public = app.public_snapshot(&opening).await;
    assert_eq!(public["bidders_published"], false);
    assert_eq!(public["bids"], json!([]));
    assert_eq!(public["bidders"], json!([]));
    assert!(!names(&public.to_string()), "{public}");
    let agent = app.snapshot(&opening).await;
    assert_eq!(
        agent["bids"].as_array().unwrap().len(),
        2,
        "the agent sees them"
    );
    // Nor do the numbers count them: the public snapshot's last event number is the last
    // public event's (the log's own counts registrations and uploads), and /metrics counts no
    // bid of an opening before its start.
    assert_eq!(public["last_seq"], 1, "{public}");
    assert!(agent["last_seq"].as_i64().unwrap() > 1, "{agent}");
    let metrics = app.metrics_text().await;
    assert!(!metrics.contains("kaibiao_bids{"), "{metrics}");
    let events = app.public_events(&opening).await;
    assert!(
        !names(&serde_json::to_string(&events).unwrap()),
        "{events:?}"
    );
    assert!(
        app.events(&opening)
            .await
            .iter()
            .any(|e| e["kind"] == "bid.received"),
        "the agent's feed has the uploads"
    );

    // Nor does an upload tell who registered: a bid sealed by someone else under a registered
    // bidder's code is refused just as one under a code no one registered.
    let strangers = tempfile::tempdir().unwrap();
    let impostor = TestBidder::new(strangers.path(), 0, 5_000);
    assert_eq!(impostor.uscc, bidders[0].uscc, "the same code, other keys");
    let unregistered = TestBidder::new(strangers.path(), 7, 5_000);
    let (a, b) = (
        app.upload(&opening, &impostor).await,
        app.upload(&opening, &unregistered).await,
    );
    assert_eq!((a.status, &a.body), (422, &b.body), "{} {}", a.body, b.body);
    // Nor a withdrawal: a code no one registered is told as a bid not found.
    let body = json!({"bid_id": "0000000000000000", "signature": "AAAA"});
    let path = |uscc: &str| format!("/api/openings/{opening}/bids/{uscc}/withdraw");
    let (registered, unknown) = (
        path(bidders[0].uscc.as_str()),
        path(unregistered.uscc.as_str()),
    );
    let (a, b) = (
        app.call("POST", &registered, Some(body.clone()), None)
            .await,
        app.call("POST", &unknown, Some(body), None).await,
    );
    assert_eq!((a.status, &a.body), (404, &b.body), "{} {}", a.body, b.body);

    // The start publishes both bids; the public viewer gets them in the start's event, having
    // been told nothing of them before.
    app.start_after(&opening, 61).await;
    let seen = viewer
        .events_until(|e| e["kind"] == "decryption.started")
        .await;
    let before = &seen[..seen.len() - 1];
    assert!(
        !names(&serde_json::to_string(before).unwrap()),
        "{before:?}"
    );
    let started = seen.last().unwrap();
    let payload: serde_json::Value = match &started["data"] {
        serde_json::Value::String(s) => serde_json::from_str(s).unwrap(),
        other => other.clone(),
    };
    let published = payload["bids"].as_array().expect("the bids, published");
    assert_eq!(published.len(), 2);
    assert!(published.iter().all(|b| b["state"] == "awaiting_key"));
    assert!(names(&payload.to_string()));
    viewer.close().await;
    let public = app.public_snapshot(&opening).await;
    assert_eq!(public["bidders_published"], true);
    assert_eq!(public["bids"].as_array().unwrap().len(), 2);
    assert_eq!(public["last_seq"], app.snapshot(&opening).await["last_seq"]);
    assert_eq!(app.metric("bids{state=\"awaiting_key\"}").await, 2.0);

    // An opening failed before decryption (fewer than three bids) publishes what it had.
    let other = app.opening_with_bids(&[&bidders[0]], 60, 600).await;
    let r = app
        .agent(
            "POST",
            &format!("/api/openings/{other}/fail"),
            Some(json!({"reason": "不足三家投标人"})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let public = app.public_snapshot(&other).await;
    assert_eq!(public["bids"].as_array().unwrap().len(), 1);
    let failed = app
        .public_events(&other)
        .await
        .into_iter()
        .find(|e| e["kind"] == "opening.failed")
        .unwrap();
    assert!(names(&failed.to_string()), "{failed}");
    app.cleanup().await;
}

async fn roles_are_enforced(backend: Backend) {
    let app = spawn_app(&backend).await;
    let opening = app.create_opening(60, 600).await;
    let other = app.create_opening(60, 600).await;

    // The public cannot act as an agent.
    for (method, path) in [
        ("POST", "/api/openings".to_owned()),
        ("GET", "/api/openings".to_owned()),
        ("POST", format!("/api/openings/{opening}/start-decryption")),
        ("POST", format!("/api/openings/{opening}/release")),
        ("POST", format!("/api/openings/{opening}/evaluator-tokens")),
        ("POST", format!("/api/openings/{opening}/bidders")),
    ] {
        let r = app.call(method, &path, Some(json!({})), None).await;
        assert_eq!(r.status, 401, "{method} {path}: {}", r.body);
        let r = app
            .call(method, &path, Some(json!({})), Some("kb_forged"))
            .await;
        assert_eq!(
            r.status, 401,
            "{method} {path} with a forged token: {}",
            r.body
        );
    }
    // A wrong password is refused.
    let r = app
        .call(
            "POST",
            "/api/login",
            Some(json!({"username": "admin", "password": "wrong password"})),
            None,
        )
        .await;
    assert_eq!(r.status, 401);

    // An evaluator token is scoped to one opening and cannot act as an agent.
    let token = app.evaluator_token(&opening).await;
    let r = app
        .call(
            "POST",
            &format!("/api/openings/{other}/start-decryption"),
            None,
            Some(&token),
        )
        .await;
    assert_eq!(r.status, 401);
    let list = app.call("GET", "/api/eval/bids", None, Some(&token)).await;
    assert_eq!(list.body["opening_id"], opening);
    assert_eq!(list.body["released"], false);
    assert_eq!(
        app.call("GET", "/api/eval/bids", None, None).await.status,
        401
    );

    // Agent-only events stay out of public feeds.
    let public = app.public_events(&opening).await;
    assert!(public.iter().all(|e| e["audience"] == "public"));
    let agent = app.events(&opening).await;
    assert!(agent.iter().any(|e| e["kind"] == "evaluator.token_issued"));

    // Bad input changes nothing.
    let r = app.agent("POST", &format!("/api/openings/{opening}/bidders"), Some(json!({"uscc": "91350100M000100Y44", "name": "x", "sign_keys": ["x"], "enc_keys": ["y"]}))).await;
    assert_eq!(r.status, 422);
    assert!(r.body["message"].as_str().unwrap().contains("check digit"));
    let r = app.agent("POST", "/api/openings", Some(json!({"tender_id": "T", "name": "n", "deadline_ms": 10, "opening_ms": 5, "decrypt_limit_secs": 600}))).await;
    assert_eq!(r.status, 422);
    assert_eq!(
        app.call("GET", "/api/openings/nope", None, None)
            .await
            .status,
        404
    );
    app.cleanup().await;
}

async fn the_pages_render(backend: Backend) {
    let app = spawn_app(&backend).await;
    let opening = app.create_opening(60, 600).await;
    let b = TestBidder::new(app.dir.path(), 1, 1000);
    app.register(&opening, &b).await;
    for path in [
        format!("/hall/{opening}"),
        "/console".to_owned(),
        "/static/hall.js".to_owned(),
        "/healthz".to_owned(),
        "/metrics".to_owned(),
    ] {
        let mut res = app
            .client
            .get(format!("{}{path}", app.base))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 200, "{path}");
        let body = res.body().await.unwrap();
        if path.starts_with("/hall") {
            assert!(String::from_utf8_lossy(&body).contains("开标大厅"));
        }
        if path == "/metrics" {
            assert!(String::from_utf8_lossy(&body).contains("kaibiao_openings"));
        }
    }
    app.cleanup().await;
}
