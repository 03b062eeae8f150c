//! The hall display in a real browser: headless Chromium renders the page, runs its script against
//! the live server and the resulting DOM is checked.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};

use crate::helpers::{ADMIN_PASSWORD, Backend, TestApp, TestBidder, spawn_app, spawn_app_with};

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
    /// The agent's console, signed in, showing the one opening there is; None where the test
    /// skips (no browser).
    async fn console_of_the_one_opening(app: &TestApp) -> Option<Browser> {
        let mut page = Browser::open(app, &format!("{}/console", app.base)).await?;
        page.sign_in_and_reload().await;
        page.wait_for_value(
            "the list of openings",
            "!window.before_reload && document.querySelectorAll('#openings button').length",
            json!(1),
        )
        .await;
        page.eval("document.querySelector('#openings button').click()")
            .await;
        Some(page)
    }

    /// Waits until the page's websocket is open (its footer says 实时).
    async fn wait_live(&mut self) {
        self.wait_for_value(
            "the websocket open",
            "document.getElementById('conn-text').innerText",
            json!("实时"),
        )
        .await;
    }

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

/// An opening of bidder `a` alone, its decryption started and its bid decrypted.
async fn decrypted(app: &TestApp, a: &TestBidder) -> String {
    let opening = app.opening_with_bids(&[a], 30, 1800).await;
    app.start_after(&opening, 31).await;
    assert_eq!(app.scan(&opening, a).await.status, 200);
    app.wait_until_settled(&opening).await;
    opening
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
    page.wait_live().await;
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

/// Objections and answers appear on the hall display as they are recorded, from the events
/// alone, and a display opened later shows them from the snapshot.
#[actix_web::test]
async fn the_hall_display_shows_objections_and_answers() {
    let app = spawn_app(&Backend::Sqlite).await;
    let a = TestBidder::new(app.dir.path(), 1, 20_000);
    let opening = app.opening_with_bids(&[&a], 30, 1800).await;
    app.start_after(&opening, 31).await;
    let url = format!("{}/hall/{opening}", app.base);
    let Some(mut page) = Browser::open(&app, &url).await else {
        app.cleanup().await;
        return;
    };
    page.wait_live().await;
    assert_eq!(
        page.eval("document.getElementById('objections').hidden")
            .await,
        true,
        "no objection section while there is none"
    );
    page.count_fetches().await;
    let path = format!("/api/openings/{opening}/objections");
    let text = "<b>唱标价格</b>与开标一览表不一致";
    let r = app
        .agent(
            "POST",
            &path,
            Some(json!({"bidder": a.uscc.as_str(), "text": text})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let item = "document.querySelector('#objection-list li[data-n=\"1\"]')";
    page.wait_for_value(
        "the objection shown with its bidder, as text",
        &format!(
            "(li => !!li && !document.getElementById('objections').hidden && \
             li.querySelector('.objection').textContent === {:?} && \
             li.querySelector('.answer').textContent === '（待答复）')({item})",
            format!("{}：{text}", a.name)
        ),
        json!(true),
    )
    .await;
    let r = app
        .agent(
            "POST",
            &format!("{path}/1/answer"),
            Some(json!({"answer": "已核对，一致"})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let answered = format!("{item}.querySelector('.answer').textContent");
    page.wait_for_value("the answer shown", &answered, json!("答复：已核对，一致"))
        .await;
    assert_eq!(
        page.eval("window.fetches").await,
        0,
        "the page fetched nothing again"
    );
    drop(page);

    let Some(mut later) = Browser::open(&app, &url).await else {
        app.cleanup().await;
        return;
    };
    later
        .wait_for_value(
            "the answer shown on load",
            &answered,
            json!("答复：已核对，一致"),
        )
        .await;
    drop(later);
    app.cleanup().await;
}

/// The printable opening record lays out the bids as read out, what became of each, the
/// objections with their answers, and the record's digest, as text.
#[actix_web::test]
async fn the_record_page_shows_the_opening_record() {
    let app = spawn_app(&Backend::Sqlite).await;
    let a = TestBidder::new(app.dir.path(), 1, 20_000);
    let opening = decrypted(&app, &a).await;
    let path = format!("/api/openings/{opening}/objections");
    let text = "<i>报价</i>是否含税";
    let r = app.agent("POST", &path, Some(json!({"text": text}))).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let r = app
        .agent(
            "POST",
            &format!("{path}/1/answer"),
            Some(json!({"answer": "含税"})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(app.act(&opening, "end-decryption").await.status, 200);
    assert_eq!(app.act(&opening, "record/issue").await.status, 201);
    crate::record::confirm_first_version(&app, &opening, &a).await;
    let digest = app
        .call(
            "GET",
            &format!("/api/openings/{opening}/record"),
            None,
            None,
        )
        .await
        .body["digest"]
        .clone();
    let url = format!("{}/hall/{opening}/record", app.base);
    let Some(mut page) = Browser::open(&app, &url).await else {
        app.cleanup().await;
        return;
    };
    page.wait_for_value(
        "the record's digest",
        "document.getElementById('digest').textContent",
        digest,
    )
    .await;
    let bids = page
        .eval("document.getElementById('record-bids').innerText")
        .await;
    let bids = bids.as_str().unwrap();
    assert!(
        bids.contains(&a.name) && bids.contains("解密成功"),
        "{bids}"
    );
    assert!(
        bids.contains(&format!("¥{:.2}", a.summary.price_fen as f64 / 100.0)),
        "{bids}"
    );
    let objections = page
        .eval("document.getElementById('record-objections').innerText")
        .await;
    let objections = objections.as_str().unwrap();
    assert!(
        objections.contains(text) && objections.contains("答复：含税"),
        "{objections}"
    );
    let confirmations = page
        .eval("document.getElementById('confirmations').innerText")
        .await;
    let confirmations = confirmations.as_str().unwrap();
    assert!(
        confirmations.starts_with("第 1 版已发出签章确认") && confirmations.contains(&a.name),
        "{confirmations}"
    );
    drop(page);
    app.cleanup().await;
}

/// Once the agent issues the record, the hall display shows its QR code for the bidders to
/// confirm it, and each confirmation as it comes, from the events alone.
#[actix_web::test]
async fn the_hall_display_shows_the_record_to_confirm_and_who_confirmed() {
    let app = spawn_app(&Backend::Sqlite).await;
    let a = TestBidder::new(app.dir.path(), 1, 20_000);
    let opening = decrypted(&app, &a).await;
    assert_eq!(app.act(&opening, "end-decryption").await.status, 200);
    let url = format!("{}/hall/{opening}", app.base);
    let Some(mut page) = Browser::open(&app, &url).await else {
        app.cleanup().await;
        return;
    };
    page.wait_live().await;
    assert_eq!(
        page.eval("document.getElementById('confirm').hidden").await,
        true
    );
    // Decryption is over: the record is a click away.
    assert_eq!(
        page.eval(
            "(a => !a.hidden && a.getAttribute('href'))(document.getElementById('record-open'))"
        )
        .await,
        json!(format!("/hall/{opening}/record"))
    );
    page.count_fetches().await;
    let r = app.act(&opening, "record/issue").await;
    assert_eq!(r.status, 201, "{}", r.body);
    page.wait_for_value(
        "the record's QR code shown",
        "(img => !document.getElementById('confirm').hidden && \
         img.complete && img.naturalWidth > 0 && \
         img.getAttribute('src').endsWith('/record/issued/1/qr.svg'))\
         (document.getElementById('record-qr'))",
        json!(true),
    )
    .await;
    crate::record::confirm_first_version(&app, &opening, &a).await;
    page.wait_for_value(
        "the confirmation shown",
        "document.getElementById('confirmed').textContent",
        json!(a.name),
    )
    .await;
    // The QR image is not a fetch of the page's script.
    assert_eq!(page.eval("window.fetches").await, 0);
    drop(page);
    app.cleanup().await;
}

/// Before decryption the hall display shows the sign-in QR code; once the bidders are published
/// it shows who signed in, and the code is gone.
#[actix_web::test]
async fn the_hall_display_shows_the_sign_in_code_then_who_signed_in() {
    let app = spawn_app(&Backend::Sqlite).await;
    let a = TestBidder::new(app.dir.path(), 1, 20_000);
    let b = TestBidder::new(app.dir.path(), 2, 20_000);
    // Twenty minutes before the opening: sign-in is open.
    let opening = app.opening_with_bids(&[&a, &b], 1200, 1800).await;
    let url = format!("{}/hall/{opening}", app.base);
    let Some(mut page) = Browser::open(&app, &url).await else {
        app.cleanup().await;
        return;
    };
    page.wait_for_value(
        "the sign-in QR code shown",
        "(img => !document.getElementById('sign-in').hidden && img.complete && \
         img.naturalWidth > 0)(document.getElementById('sign-in-qr'))",
        json!(true),
    )
    .await;
    let body = crate::signin::phone_signs_in(&app, &opening, &a, &a.sign).await;
    let r = crate::signin::post_sign_in(&app, &opening, body).await;
    assert_eq!(r.status, 200, "{}", r.body);
    app.start_after(&opening, 1201).await;
    page.wait_for_value(
        "who signed in, once published",
        "[...document.querySelectorAll('#rows tr')].map(r => r.querySelector('.signed-in') !== null)",
        json!([true, false]),
    )
    .await;
    assert_eq!(
        page.eval("document.getElementById('sign-in').hidden").await,
        true
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
    page.wait_live().await;
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

    // The platform's signed head of the log as it now stands reaches the page without its
    // asking (pushed while the log moves on), and the page keeps it to be saved.
    let last = app.public_snapshot(&opening).await["last_seq"].clone();
    page.wait_for_value(
        "the signed head of the log as it stands",
        "window.kaibiaoSignedHead() && window.kaibiaoSignedHead().seq",
        last,
    )
    .await;
    let kept = page
        .eval("JSON.stringify(window.kaibiaoSignedHead())")
        .await;
    let head: kaibiao::hall::SignedHead = serde_json::from_str(kept.as_str().unwrap()).unwrap();
    head.verify(&app.platform_key().await).unwrap();
    assert_eq!(
        page.eval("document.getElementById('save-head').hidden")
            .await,
        false
    );
    assert_eq!(page.eval("window.fetches").await, 0);

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

/// The agent's console lists who signed in, records an objection and its answer, and tells
/// whether the record went out for confirmation.
#[actix_web::test]
async fn the_console_records_objections_and_shows_sign_ins() {
    let app = spawn_app(&Backend::Sqlite).await;
    let a = TestBidder::new(app.dir.path(), 1, 20_000);
    let b = TestBidder::new(app.dir.path(), 2, 20_000);
    let opening = app.opening_with_bids(&[&a, &b], 600, 1800).await;
    let body = crate::signin::phone_signs_in(&app, &opening, &a, &a.sign).await;
    assert_eq!(
        crate::signin::post_sign_in(&app, &opening, body)
            .await
            .status,
        200
    );
    app.start_after(&opening, 601).await;

    let Some(mut page) = Browser::console_of_the_one_opening(&app).await else {
        app.cleanup().await;
        return;
    };
    page.wait_for_value(
        "who signed in",
        "[...document.querySelectorAll('#bidder-rows tr')].map(r => r.children[3].textContent !== '未签到')",
        json!([true, false]),
    )
    .await;
    let status = page
        .eval("document.getElementById('record-status').textContent")
        .await;
    assert!(status.as_str().unwrap().contains("尚未发出"), "{status}");
    // An objection entered in the form, then answered through the prompt.
    page.eval(&format!(
        "const f = document.getElementById('new-objection'); f.bidder.value = '{}'; \
         f.text.value = '报价单位不一致'; f.requestSubmit();",
        b.uscc.as_str()
    ))
    .await;
    page.wait_for_value(
        "the objection listed with its answer button",
        "document.querySelectorAll('#objection-items li button').length",
        json!(1),
    )
    .await;
    page.eval("window.prompt = () => '以开标一览表为准'; document.querySelector('#objection-items li button').click()")
        .await;
    page.wait_for_value(
        "the answer listed",
        "document.getElementById('objection-items').textContent.includes('答复：以开标一览表为准')",
        json!(true),
    )
    .await;
    let shown = app.snapshot(&opening).await["objections"].clone();
    assert_eq!(shown[0]["bidder"]["uscc"], b.uscc.as_str());
    assert_eq!(shown[0]["answer"], "以开标一览表为准");
    drop(page);
    app.cleanup().await;
}

/// On a platform that trusts CAs, the agent registers a bidder in the console without
/// certificates and shows its bind code (扫码绑定) as a QR code; the phone that scans it binds
/// the bidder's certificates.
#[actix_web::test]
async fn the_console_registers_a_bidder_to_bind_and_shows_its_bind_code() {
    let cas = tempfile::tempdir().unwrap();
    let Some(ca) = crate::ca::TestCa::new(cas.path(), "ca", "/CN=测试CA", true) else {
        return;
    };
    let file = cas.path().join("cas.pem");
    std::fs::write(&file, &ca.pem).unwrap();
    let app = spawn_app_with(&Backend::Sqlite, |s| s.trusted_cas = Some(file.clone())).await;
    let b = TestBidder::new(app.dir.path(), 1, 20_000);
    let opening = app.create_opening(600, 1800).await;
    let Some(mut page) = Browser::console_of_the_one_opening(&app).await else {
        app.cleanup().await;
        return;
    };
    page.wait_for_value(
        "the opening shown",
        "document.getElementById('bidder-rows') !== null && document.getElementById('hall-link').href.includes('/hall/')",
        json!(true),
    )
    .await;
    page.eval(&format!(
        "const f = document.getElementById('new-bidder'); f.uscc.value = '{}'; \
         f.name.value = '{}'; f.requestSubmit();",
        b.uscc.as_str(),
        b.name
    ))
    .await;
    page.wait_for_value(
        "the bidder listed with its bind button",
        "document.querySelectorAll('#bidder-rows button.bind').length",
        json!(1),
    )
    .await;
    page.eval("document.querySelector('#bidder-rows button.bind').click()")
        .await;
    page.wait_for_value(
        "the bind code's QR code drawn",
        "!document.getElementById('bind-code').hidden && document.getElementById('bind-qr').complete \
         && document.getElementById('bind-qr').naturalWidth > 0",
        json!(true),
    )
    .await;
    let url = page
        .eval("document.getElementById('bind-url').textContent")
        .await;
    let url = url.as_str().unwrap();
    let view: kaibiao::phone::BindView = serde_json::from_value(
        app.call("GET", url.strip_prefix(&app.base).unwrap(), None, None)
            .await
            .body,
    )
    .unwrap();
    assert_eq!(view.bidder, b.uscc.as_str());
    let subject = format!("/CN={}/OU={}", b.name, b.uscc.as_str());
    let key = |k: &sm2::SecretKey| kaibiao::crypto::private_key_pem(k).unwrap().to_string();
    let sign = ca.issue("sign", &subject, &key(&b.sign), crate::ca::SIGN_EXT, 10);
    let enc = ca.issue("enc", &subject, &key(&b.enc), crate::ca::ENC_EXT, 10);
    let bind = kaibiao::phone::bind(&view, &sign, &enc, &b.sign).unwrap();
    let r = app
        .call(
            "POST",
            view.answer_url.strip_prefix(&app.base).unwrap(),
            Some(serde_json::to_value(bind).unwrap()),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(app.upload(&opening, &b).await.status, 201);
    // The CA renews the signing certificate for the same key: the agent enters it, and it
    // replaces the one bound.
    let renewed = ca.issue("renewed", &subject, &key(&b.sign), crate::ca::SIGN_EXT, 20);
    page.eval(&format!(
        "const k = document.getElementById('add-keys'); k.uscc.value = '{}'; k.sign.value = {}; \
         k.requestSubmit();",
        b.uscc.as_str(),
        serde_json::to_string(&renewed).unwrap()
    ))
    .await;
    page.wait_for_value(
        "the renewal taken",
        "document.getElementById('message').textContent",
        json!("已更新：签名证书 1 张，加密证书 1 张"),
    )
    .await;
    assert_eq!(app.payloads(&opening, "bidder.keys_added").await.len(), 1);
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

    let Some(mut page) = Browser::console_of_the_one_opening(&app).await else {
        app.cleanup().await;
        return;
    };
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

/// A bidder's own page (不见面开标): the phone logs the page in by scanning its code; the page
/// shows the bidder's bid waiting for its key, with its decryption QR code, live; the bidder
/// raises an objection from it and sees the agent's answer, then its bid decrypted.
#[actix_web::test]
async fn a_bidder_logs_its_page_in_by_scanning_and_follows_its_bid() {
    let app = spawn_app(&Backend::Sqlite).await;
    let a = TestBidder::new(app.dir.path(), 1, 20_000);
    let b = TestBidder::new(app.dir.path(), 2, 20_000);
    let opening = app.opening_with_bids(&[&a, &b], 60, 1800).await;
    app.start_after(&opening, 61).await;
    let url = format!("{}/hall/{opening}/bidder", app.base);
    let Some(mut page) = Browser::open(&app, &url).await else {
        app.cleanup().await;
        return;
    };
    page.wait_for_value(
        "the login code shown",
        "(img => !document.getElementById('login').hidden && img.complete && \
         img.naturalWidth > 0)(document.getElementById('login-qr'))",
        json!(true),
    )
    .await;
    let code = page
        .eval("document.getElementById('login-qr').dataset.url")
        .await;
    // The page shows the check code the phone will show.
    let nonce = code
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_owned();
    assert_eq!(
        page.eval("document.getElementById('check-code').textContent")
            .await,
        json!(kaibiao::phone::login_check_code(&nonce))
    );
    let r = crate::bidder_login::phone_logs_in(&app, code.as_str().unwrap(), &a, &a.sign).await;
    assert_eq!(r.status, 200, "{}", r.body);
    page.wait_for_value(
        "the bidder logged in",
        "document.getElementById('me-name').textContent",
        json!(format!("{}（{}）", a.name, a.uscc.as_str())),
    )
    .await;
    page.wait_for_value(
        "its decryption QR code shown",
        "(img => !document.getElementById('decrypt').hidden && img.complete && \
         img.naturalWidth > 0)(document.getElementById('decrypt-qr'))",
        json!(true),
    )
    .await;

    let text = "解密二维码刷新过快";
    page.eval(&format!(
        "document.getElementById('objection-text').value = '{text}'; \
         document.getElementById('objection-form').requestSubmit(); true"
    ))
    .await;
    let mine = "document.getElementById('my-objections').textContent";
    page.wait_for_value(
        "the objection listed",
        &format!("{mine}.includes('{text}') && {mine}.includes('等待答复')"),
        json!(true),
    )
    .await;
    let answer = format!("/api/openings/{opening}/objections/1/answer");
    let r = app
        .agent(
            "POST",
            &answer,
            Some(json!({"answer": "二维码有效期为两分钟"})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    page.wait_for_value(
        "the answer shown, live",
        &format!("{mine}.includes('二维码有效期为两分钟')"),
        json!(true),
    )
    .await;

    assert_eq!(app.scan(&opening, &a).await.status, 200);
    page.wait_for_value(
        "its bid decrypted, live",
        "document.getElementById('fact-状态').textContent",
        json!("已解密"),
    )
    .await;
    assert_eq!(
        page.eval("document.getElementById('decrypt').hidden").await,
        true
    );
    // The record issued: the page shows its code until the bidder's phone confirmed it.
    assert_eq!(app.scan(&opening, &b).await.status, 200);
    app.wait_until_settled(&opening).await;
    assert_eq!(app.act(&opening, "end-decryption").await.status, 200);
    assert_eq!(app.act(&opening, "record/issue").await.status, 201);
    page.wait_for_value(
        "the record's code shown",
        "(img => !document.getElementById('record').hidden && !img.hidden && img.complete && \
         img.naturalWidth > 0)(document.getElementById('record-qr'))",
        json!(true),
    )
    .await;
    crate::record::confirm_first_version(&app, &opening, &a).await;
    page.wait_for_value(
        "the record confirmed, live",
        "document.getElementById('record-said').textContent.startsWith('已确认') && \
         document.getElementById('record-qr').hidden",
        json!(true),
    )
    .await;

    // Logging out shows a new login code.
    page.eval("document.getElementById('logout').click(); true")
        .await;
    page.wait_for_value(
        "a new login code after logging out",
        "!document.getElementById('login').hidden && document.getElementById('me').hidden",
        json!(true),
    )
    .await;
    drop(page);
    app.cleanup().await;
}
