//! The hall display in a real browser: headless Chromium renders the page, runs its script against
//! the live server and the resulting DOM is checked.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};

use crate::helpers::{ADMIN_PASSWORD, Backend, TestApp, TestBidder, spawn_app};

/// A headless Chromium that keeps a page open, driven over the DevTools protocol, so that a test
/// can move the opening on and read the page as its script follows.
struct Browser {
    child: Child,
    _profile: tempfile::TempDir,
    page: actix_codec::Framed<awc::BoxedSocket, awc::ws::Codec>,
    next_id: u64,
}

impl Browser {
    /// Opens `url`; None (and a loud message) when Chromium is missing outside CI.
    async fn open(app: &TestApp, url: &str) -> Option<Browser> {
        let profile = tempfile::tempdir().unwrap();
        let child = match chromium(profile.path())
            .arg("--remote-debugging-port=0")
            .arg(url)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(c) => c,
            Err(e) => {
                missing(e);
                return None;
            }
        };
        // Chromium writes the port it chose into the profile folder.
        let port_file = profile.path().join("DevToolsActivePort");
        let until = Instant::now() + Duration::from_secs(30);
        let port = loop {
            if let Ok(text) = std::fs::read_to_string(&port_file)
                && let Some(port) = text
                    .lines()
                    .next()
                    .and_then(|l| l.trim().parse::<u16>().ok())
            {
                break port;
            }
            assert!(
                Instant::now() < until,
                "chromium did not open its DevTools port"
            );
            actix_web::rt::time::sleep(Duration::from_millis(50)).await;
        };
        let mut list = app
            .client
            .get(format!("http://127.0.0.1:{port}/json/list"))
            .send()
            .await
            .expect("DevTools answers");
        let targets: Value = list.json().await.unwrap();
        let page = targets
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["type"] == "page")
            .expect("chromium has a page");
        let (_, framed) = app
            .client
            .ws(page["webSocketDebuggerUrl"].as_str().unwrap())
            .max_frame_size(16 << 20)
            .connect()
            .await
            .expect("the DevTools websocket connects");
        Some(Browser {
            child,
            _profile: profile,
            page: framed,
            next_id: 0,
        })
    }

    /// Evaluates `expression` in the page and returns its value.
    async fn eval(&mut self, expression: &str) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let call = json!({"id": id, "method": "Runtime.evaluate",
            "params": {"expression": expression, "returnByValue": true, "awaitPromise": true}});
        self.page
            .send(awc::ws::Message::Text(call.to_string().into()))
            .await
            .unwrap();
        loop {
            let frame = actix_web::rt::time::timeout(Duration::from_secs(30), self.page.next())
                .await
                .expect("DevTools answers within 30 s")
                .expect("the DevTools websocket is open")
                .unwrap();
            if let awc::ws::Frame::Text(bytes) = frame {
                let reply: Value = serde_json::from_slice(&bytes).unwrap();
                if reply["id"] == id {
                    return reply["result"]["result"]["value"].clone();
                }
            }
        }
    }

    /// The text of the page's table of bids.
    async fn rows(&mut self) -> String {
        let text = self
            .eval("(document.getElementById('rows') || {}).innerText || ''")
            .await;
        text.as_str().unwrap_or_default().to_owned()
    }

    /// Signs the agent in from the page (the session cookie is the browser's now) and reloads
    /// it; `window.before_reload` is true until the new page is there.
    async fn sign_in_and_reload(&mut self) {
        self.wait_for_value(
            "the page loaded",
            "location.href.startsWith('http') && document.readyState",
            json!("complete"),
        )
        .await;
        let login = self
            .eval(&format!(
                "fetch('/api/login', {{method: 'POST', headers: {{'Content-Type': 'application/json'}}, \
                 body: JSON.stringify({{username: 'admin', password: '{ADMIN_PASSWORD}'}})}}).then(r => r.status)"
            ))
            .await;
        assert_eq!(login, 200, "the agent signs in from the page");
        self.eval("window.before_reload = true; location.reload()")
            .await;
    }

    /// Counts from now on the page's calls to `fetch` in `window.fetches`: counted as the call is
    /// made, in the same handler that takes the event, so there is no request in flight to miss.
    async fn count_fetches(&mut self) {
        self.eval(
            "window.fetches = 0; window.fetch0 ??= window.fetch; \
             window.fetch = (...a) => { window.fetches++; return window.fetch0(...a); }; true",
        )
        .await;
    }

    /// Waits (bounded, not a speed check) until `expression` evaluates to `expected` in the page.
    async fn wait_for_value(&mut self, what: &str, expression: &str, expected: Value) {
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            let value = self.eval(expression).await;
            if value == expected {
                return;
            }
            assert!(
                Instant::now() < until,
                "the page never showed {what}: `{expression}` is {value}, not {expected}"
            );
            actix_web::rt::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits (bounded, not a speed check) until `check` holds for the page's table and status.
    async fn wait_for(&mut self, what: &str, check: impl Fn(&str, &str) -> bool) {
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            let rows = self.rows().await;
            let state = self
                .eval("document.getElementById('state').innerText")
                .await;
            let state = state.as_str().unwrap_or_default().to_owned();
            if check(&rows, &state) {
                return;
            }
            assert!(
                Instant::now() < until,
                "the page never showed {what}; it shows {state:?} and {rows:?}"
            );
            actix_web::rt::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Headless Chromium with a fresh profile in `profile`.
fn chromium(profile: &Path) -> Command {
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
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    cmd
}

/// What to do when Chromium cannot be started: skip loudly on a developer's machine, fail in CI.
fn missing(e: std::io::Error) {
    if std::env::var_os("CI").is_some() {
        panic!("chromium is needed in CI: {e}");
    }
    eprintln!(
        "SKIPPED the browser test: chromium is not installed ({e}); `apt-get install chromium` to run it"
    );
}

/// Runs Chromium headless on `url` and returns the DOM after its scripts ran; None (and a loud
/// message) when Chromium is missing outside CI.
fn rendered_dom(url: &str, screenshot: Option<&Path>) -> Option<String> {
    let profile = tempfile::tempdir().unwrap();
    let mut cmd = chromium(profile.path());
    cmd.arg("--virtual-time-budget=6000");
    if let Some(path) = screenshot {
        cmd.arg(format!("--screenshot={}", path.display()));
    } else {
        cmd.arg("--dump-dom");
    }
    let output = match cmd.arg(url).output() {
        Ok(o) => o,
        Err(e) => {
            missing(e);
            return None;
        }
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

/// A decryption window given back the time the hall was not running (the restart that does it
/// is tested in opening.rs): the display moves its countdown and tells the room why, from the
/// event alone.
#[actix_web::test]
async fn the_hall_display_tells_the_room_a_window_was_given_back() {
    let app = spawn_app(&Backend::Sqlite).await;
    let a = TestBidder::new(app.dir.path(), 1, 20_000);
    let opening = app.opening_with_bids(&[&a], 30, 1800).await;
    app.start_after(&opening, 31).await;
    let url = format!("{}/hall/{opening}", app.base);
    let Some(mut page) = Browser::open(&app, &url).await else {
        app.cleanup().await;
        return;
    };
    page.wait_for_value(
        "the websocket open",
        "document.getElementById('conn-text').innerText",
        json!("实时"),
    )
    .await;
    page.wait_for_value(
        "30 minutes to go",
        "document.getElementById('countdown').textContent.startsWith('30:') || \
         document.getElementById('countdown').textContent.startsWith('29:')",
        json!(true),
    )
    .await;
    page.count_fetches().await;
    // The event a start writes after an hour's stop, as the display receives it.
    let deadline = app.snapshot(&opening).await["opening"]["decrypt_deadline_ms"]
        .as_i64()
        .unwrap();
    let now = app.now_ms();
    let payload = json!({
        "deadline_ms": deadline + 3_600_000, "previous_deadline_ms": deadline,
        "down_from_ms": now - 3_600_000, "down_to_ms": now, "extended_ms": 3_600_000,
        "reason": "the hall was not running",
    });
    let event = (
        "decryption.extended".to_owned(),
        "public".to_owned(),
        payload,
    );
    app.hall
        .bus()
        .append_all(&opening, vec![event], now)
        .await
        .unwrap();
    page.wait_for_value(
        "the room told",
        "(n => !n.hidden && n.textContent.includes('中断 60 分钟') && \
         n.textContent.includes('顺延'))(document.getElementById('notice'))",
        json!(true),
    )
    .await;
    page.wait_for_value(
        "the countdown moved on by the hour",
        "document.getElementById('countdown').textContent.startsWith('1:')",
        json!(true),
    )
    .await;
    assert_eq!(
        page.eval("window.fetches").await,
        0,
        "the page fetched nothing again"
    );
    drop(page);
    app.cleanup().await;
}

/// The display follows a whole opening live, from the websocket's events alone: it loads the
/// snapshot once, and no event makes it ask again.
#[actix_web::test]
async fn the_hall_display_follows_the_opening_live_without_reloading() {
    let app = spawn_app(&Backend::Sqlite).await;
    let a = TestBidder::new(app.dir.path(), 1, 200_000);
    let b = TestBidder::new(app.dir.path(), 2, 200_000);
    let c = TestBidder::new(app.dir.path(), 3, 200_000);
    let opening = app.opening_with_bids(&[&a, &b], 30, 1800).await;
    let url = format!("{}/hall/{opening}", app.base);
    let Some(mut page) = Browser::open(&app, &url).await else {
        app.cleanup().await;
        return;
    };
    // Before the opening, the public display names no bidder and counts no bid.
    page.wait_for("the list kept from the public", |rows, state| {
        rows.contains("开标前不公开") && !rows.contains(&a.name) && state == "等待开标"
    })
    .await;
    // The table is drawn from the snapshot before the websocket opens: wait for both.
    page.wait_for_value(
        "the websocket open",
        "document.getElementById('conn-text').innerText",
        json!("实时"),
    )
    .await;
    page.count_fetches().await;

    // A late registration and upload reach no public viewer; the start of decryption publishes
    // all three bids, through its event (the page does not load the snapshot again).
    app.register(&opening, &c).await;
    assert_eq!(app.upload(&opening, &c).await.status, 201);
    app.start_after(&opening, 31).await;
    page.wait_for(
        "three bids published, waiting for their keys",
        |rows, state| {
            rows.matches("待解密").count() == 3 && rows.contains(&c.name) && state == "解密中"
        },
    )
    .await;
    // Each bid's QR code comes with its challenge, which may arrive just after its state.
    page.wait_for_value(
        "each waiting bid's QR code",
        "document.querySelectorAll('img[alt=\"解密二维码\"]').length",
        json!(3),
    )
    .await;

    assert_eq!(app.scan(&opening, &a).await.status, 200);
    let price = format!("¥{:.2}", a.summary.price_fen as f64 / 100.0);
    page.wait_for("the first bid decrypted with its summary", |rows, _| {
        rows.contains("解密成功") && rows.contains(&price)
    })
    .await;
    let qrs = page
        .eval("document.querySelectorAll('img[alt=\"解密二维码\"]').length")
        .await;
    assert_eq!(qrs, 2, "the decrypted bid's QR code is gone");

    // The agent may not end it early while bids wait for their keys; at the time limit the hall
    // ends it itself.
    assert_eq!(app.act(&opening, "end-decryption").await.status, 409);
    app.advance_secs(1801);
    page.wait_for("the others as not decrypted", |rows, state| {
        rows.matches("未解密（视为撤销）").count() == 2 && state == "解密结束"
    })
    .await;

    // What the server would show a newcomer is what this page shows.
    let fresh = app.snapshot(&opening).await;
    for bid in fresh["bids"].as_array().unwrap() {
        let state = page
            .eval(&format!(
                "document.querySelector('tr[data-bid=\"{}\"] .state').className",
                bid["id"].as_str().unwrap()
            ))
            .await;
        assert_eq!(
            state.as_str().unwrap(),
            format!("state {}", bid["state"].as_str().unwrap())
        );
    }
    assert_eq!(
        page.eval("window.fetches").await,
        0,
        "the page loaded the snapshot once and followed events after"
    );

    // The agent's own view of the hall also sees the agent's events; one the display has nothing
    // to draw for (the evaluation system's token issued) is taken in its stride, not answered by
    // loading the snapshot again.
    page.sign_in_and_reload().await;
    page.wait_for_value(
        "the agent's view, connected",
        "window.before_reload ? 'not reloaded' : document.getElementById('conn-text').innerText",
        json!("实时"),
    )
    .await;
    page.count_fetches().await;
    app.evaluator_token(&opening).await;
    let newest = app.snapshot(&opening).await;
    let seq = newest["last_seq"].as_i64().unwrap();
    page.wait_for_value(
        "the agent's last event",
        &format!("Number(document.getElementById('seq').textContent) >= {seq}"),
        json!(true),
    )
    .await;
    // The footer shows the log's chain value after it, as the signed head gives it.
    let hash = newest["last_hash"].as_str().unwrap();
    page.wait_for_value(
        "the log's chain value in the footer",
        "document.getElementById('head').textContent",
        json!(hash[..16]),
    )
    .await;
    assert_eq!(
        page.eval("window.fetches").await,
        0,
        "the agent's page fetched nothing again"
    );
    drop(page);
    app.cleanup().await;
}

/// The agent's console offers to give up a bid whose decryption keeps failing through the
/// platform, asks why, and the bid is recorded as the platform's fault.
#[actix_web::test]
async fn the_console_gives_up_a_bid_the_platform_cannot_decrypt() {
    let app = spawn_app(&Backend::Sqlite).await;
    let a = TestBidder::new(app.dir.path(), 1, 50_000);
    let opening = app.opening_with_bids(&[&a], 30, 1800).await;
    app.start_after(&opening, 31).await;
    app.break_decrypted_folder();
    assert_eq!(app.scan(&opening, &a).await.status, 200);
    app.wait_until_delayed(&opening, 1).await;

    let url = format!("{}/console", app.base);
    let Some(mut page) = Browser::open(&app, &url).await else {
        app.cleanup().await;
        return;
    };
    page.sign_in_and_reload().await;
    page.wait_for_value(
        "the list of openings",
        "!window.before_reload && document.querySelectorAll('#openings button').length",
        json!(1),
    )
    .await;
    page.eval("document.querySelector('#openings button').click()")
        .await;
    page.wait_for_value(
        "the offer to give the bid up",
        "document.querySelectorAll('#delayed button').length",
        json!(1),
    )
    .await;
    let shown = page
        .eval("document.getElementById('delayed').innerText")
        .await;
    assert!(
        shown.as_str().unwrap().contains("not the bidder's fault"),
        "{shown}"
    );
    page.eval("window.prompt = () => '解密服务器磁盘故障'; document.querySelector('#delayed button').click()")
        .await;
    page.wait_for_value(
        "the bid given up",
        "document.querySelectorAll('#delayed button').length",
        json!(0),
    )
    .await;
    let bid = &app.snapshot(&opening).await["bids"][0];
    assert_eq!(bid["state"], "failed", "{bid}");
    assert_eq!(bid["fault"], "platform");
    assert!(
        bid["failure"]
            .as_str()
            .unwrap()
            .contains("解密服务器磁盘故障")
    );
    drop(page);
    app.cleanup().await;
}
