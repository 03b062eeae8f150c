//! The reference phone (`kaibiao phone …`) as a bidder runs it against a live hall: sign in,
//! raise an objection, scan to decrypt, confirm the record, log a browser in.

use serde_json::json;

use crate::helpers::{Backend, TestApp, TestBidder, spawn_app};

crate::on_both_databases!(the_reference_phone_signs_in_objects_and_confirms_the_record);

/// Runs `kaibiao phone ARGS --bidder B --sign-key KEY`; its exit status, stdout and stderr.
async fn phone(app: &TestApp, bidder: &TestBidder, args: &[&str]) -> (bool, String, String) {
    let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    args.extend(["--bidder".into(), bidder.uscc.to_string()]);
    run(app, bidder, args).await
}

/// Runs `kaibiao phone ARGS --sign-key KEY` (and `--enc-key KEY` for `scan`).
async fn run(app: &TestApp, bidder: &TestBidder, args: Vec<String>) -> (bool, String, String) {
    let pem = |name: &str, key: &sm2::SecretKey| {
        let path = app
            .dir
            .path()
            .join(format!("{name}-{}.pem", bidder.uscc.as_str()));
        std::fs::write(&path, kaibiao::crypto::private_key_pem(key).unwrap()).unwrap();
        path
    };
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_kaibiao"));
    command.arg("phone").args(&args);
    command.arg("--sign-key").arg(pem("sign", &bidder.sign));
    if args[0] == "scan" {
        command.arg("--enc-key").arg(pem("enc", &bidder.enc));
    }
    let out = actix_web::rt::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn the_reference_phone_signs_in_objects_and_confirms_the_record(backend: Backend) {
    let app = spawn_app(&backend).await;
    let a = TestBidder::new(app.dir.path(), 1, 20_000);
    let opening = app.opening_with_bids(&[&a], 1200, 1800).await;
    let sign_in = format!("{}/api/phone/sign-in/{opening}", app.base);
    let (ok, out, err) = phone(&app, &a, &["sign-in", &sign_in]).await;
    assert!(ok && out.starts_with("signed in to"), "{out}{err}");
    let (ok, _, err) = phone(&app, &a, &["sign-in", &sign_in]).await;
    assert!(!ok && err.contains("signed in already"), "{err}");

    app.start_after(&opening, 1201).await;
    let text = "开标时间晚于公告时间";
    let (ok, out, err) = phone(
        &app,
        &a,
        &["object", text, "--server", &app.base, "--opening", &opening],
    )
    .await;
    assert!(ok && out.contains("objection 1 recorded"), "{out}{err}");
    let path = format!("/api/openings/{opening}/objections/1/answer");
    let r = app
        .agent("POST", &path, Some(json!({"answer": "已按公告时间开标"})))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let qr = app
        .qr_url(&opening, &a)
        .await
        .expect("a decryption QR code");
    let (ok, out, err) = run(&app, &a, vec!["scan".into(), qr]).await;
    assert!(ok && out.starts_with("accepted"), "{out}{err}");
    app.wait_until_settled(&opening).await;
    assert_eq!(app.act(&opening, "end-decryption").await.status, 200);
    assert_eq!(app.act(&opening, "record/issue").await.status, 201);
    let record = format!("{}/api/phone/records/{opening}/1", app.base);
    let (ok, out, err) = phone(&app, &a, &["confirm", &record]).await;
    assert!(ok && out.starts_with("confirmed version 1"), "{out}{err}");

    let shown = app.public_snapshot(&opening).await;
    assert_eq!(shown["objections"][0]["bidder"]["uscc"], a.uscc.as_str());
    assert_eq!(shown["objections"][0]["text"], text);
    assert_eq!(shown["record"]["confirmations"][0]["uscc"], a.uscc.as_str());
    let bidder = &shown["bidders"][0];
    assert!(bidder["signed_in_ms"].as_i64().is_some(), "{bidder}");

    // The phone logs a browser in by scanning its login code.
    let code = crate::bidder_login::new_login(&app, &opening).await;
    let (ok, out, err) = phone(&app, &a, &["login", code["qr_url"].as_str().unwrap()]).await;
    assert!(ok && out.starts_with("logged in to"), "{out}{err}");
    let path = format!(
        "/api/bidder-login/{}/session",
        code["nonce"].as_str().unwrap()
    );
    let r = app
        .call("POST", &path, Some(json!({"secret": code["secret"]})), None)
        .await;
    assert_eq!(r.body["bidder"]["uscc"], a.uscc.as_str(), "{}", r.body);
    app.cleanup().await;
}
