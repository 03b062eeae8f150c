//! Roles that may not see or do a thing are refused.

use serde_json::json;

use crate::helpers::{ADMIN_PASSWORD, Backend, TestBidder, spawn_app, spawn_app_with};

crate::on_both_databases!(
    roles_are_enforced,
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
    let token = app
        .agent(
            "POST",
            &format!("/api/openings/{opening}/evaluator-tokens"),
            None,
        )
        .await
        .body["token"]
        .as_str()
        .unwrap()
        .to_owned();
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
