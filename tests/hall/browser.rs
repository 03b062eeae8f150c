//! The hall display in a real browser: headless Chromium renders the page, runs its script against
//! the live server and the resulting DOM is checked.

use std::process::Command;

use crate::helpers::{Backend, TestBidder, spawn_app};

/// Runs Chromium headless on `url` and returns the DOM after its scripts ran; None (and a loud
/// message) when Chromium is missing outside CI.
fn rendered_dom(url: &str, screenshot: Option<&std::path::Path>) -> Option<String> {
    let profile = tempfile::tempdir().unwrap();
    let mut cmd = Command::new("chromium");
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,900",
        "--virtual-time-budget=6000",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()));
    if let Some(path) = screenshot {
        cmd.arg(format!("--screenshot={}", path.display()));
    } else {
        cmd.arg("--dump-dom");
    }
    let output = match cmd.arg(url).output() {
        Ok(o) => o,
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!(
                "SKIPPED the browser test: chromium is not installed ({e}); `apt-get install chromium` to run it"
            );
            return None;
        }
        Err(e) => panic!("chromium is needed in CI: {e}"),
    };
    assert!(
        output.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Some(String::from_utf8_lossy(&output.stdout).into_owned())
}

#[actix_web::test]
async fn the_hall_display_shows_qr_codes_states_and_summaries() {
    let app = spawn_app(&Backend::Sqlite).await;
    let a = TestBidder::new(app.dir.path(), 1, 200_000);
    let b = TestBidder::new(app.dir.path(), 2, 200_000);
    let opening = app.opening_with_bids(&[&a, &b], 30, 1800).await;
    app.start_after(&opening, 31).await;
    assert_eq!(app.scan(&opening, &a).await.status, 200);
    app.wait_until_settled(&opening).await;

    let url = format!("{}/hall/{opening}", app.base);
    let dom = actix_web::rt::task::spawn_blocking(move || rendered_dom(&url, None))
        .await
        .unwrap();
    let Some(dom) = dom else {
        app.cleanup().await;
        return;
    };
    assert!(
        dom.contains(&a.name) && dom.contains(&b.name),
        "both bidders are listed"
    );
    assert!(
        dom.contains("解密成功"),
        "the scanned bid shows as decrypted"
    );
    assert!(dom.contains("待解密"), "the other waits for its key");
    assert!(dom.contains("alt=\"解密二维码\""), "its QR code is shown");
    assert!(
        dom.contains(&format!("¥{:.2}", a.summary.price_fen as f64 / 100.0)),
        "the summary is read out"
    );
    assert!(!dom.contains("加载中"), "the page rendered its data");

    if let Ok(path) = std::env::var("KAIBIAO_SCREENSHOT") {
        let url = format!("{}/hall/{opening}", app.base);
        actix_web::rt::task::spawn_blocking(move || {
            rendered_dom(&url, Some(std::path::Path::new(&path)))
        })
        .await
        .unwrap();
    }
    app.cleanup().await;
}
