//! A viewer that drops mid-opening resumes with no missed and no repeated event.

use std::time::Duration;

use crate::helpers::{Backend, TestApp, TestBidder, Viewer, spawn_app, spawn_app_with};

crate::on_both_databases!(
    a_viewer_resumes_without_gaps_or_repeats,
    progress_and_heartbeats_flow,
    a_viewer_that_stops_reading_is_dropped_and_the_others_go_on,
    viewers_are_sent_the_platforms_signed_head_as_the_log_moves_on
);

/// The server's count of open websockets, from `/metrics`.
async fn open_websockets(app: &TestApp) -> i64 {
    app.metric("websocket_connections").await as i64
}

async fn a_viewer_that_stops_reading_is_dropped_and_the_others_go_on(backend: Backend) {
    let app = spawn_app_with(&backend, |s| {
        s.ws_heartbeat_secs = 1;
        s.ws_client_timeout_secs = 2;
    })
    .await;
    let opening = app.create_opening(600, 1800).await;
    let mut reader = Viewer::connect(&app, &opening, 0, None).await;
    let mut stalled = Viewer::connect(&app, &opening, 0, None).await;
    assert_eq!(open_websockets(&app).await, 2);

    // The reader answers pings; the stalled viewer reads nothing and is dropped by the server.
    let until = std::time::Instant::now() + Duration::from_secs(15);
    while open_websockets(&app).await != 1 {
        assert!(
            std::time::Instant::now() < until,
            "the stalled viewer was not dropped"
        );
        let _ = reader.next(Duration::from_millis(200)).await;
    }
    assert!(
        stalled.closed_within(Duration::from_secs(5)).await,
        "the server closed the stalled viewer's connection"
    );

    // The reader still gets what happens next.
    let r = app
        .agent(
            "POST",
            &format!("/api/openings/{opening}/fail"),
            Some(serde_json::json!({"reason": "招标人终止招标"})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let seen = reader.events_until(|e| e["kind"] == "opening.failed").await;
    assert_eq!(seen.last().unwrap()["kind"], "opening.failed");
    assert_eq!(open_websockets(&app).await, 1);
    reader.close().await;
    app.cleanup().await;
}

async fn a_viewer_resumes_without_gaps_or_repeats(backend: Backend) {
    let app = spawn_app(&backend).await;
    let bidders: Vec<TestBidder> = (0..4)
        .map(|i| TestBidder::new(app.dir.path(), i, 30_000))
        .collect();
    let opening = app
        .opening_with_bids(&bidders.iter().collect::<Vec<_>>(), 60, 1800)
        .await;
    app.start_after(&opening, 61).await;

    let mut viewer = Viewer::connect(&app, &opening, 0, None).await;
    let first = viewer
        .events_until(|e| e["kind"] == "decryption.started")
        .await;
    let last_seen = first.last().unwrap()["seq"].as_i64().unwrap();
    viewer.close().await;

    // While the viewer is away, two bidders decrypt.
    for b in &bidders[..2] {
        assert_eq!(app.scan(&opening, b).await.status, 200);
    }
    app.wait_until_settled(&opening).await;

    let mut viewer = Viewer::connect(&app, &opening, last_seen, None).await;
    let hello = viewer.next(Duration::from_secs(10)).await.unwrap();
    assert_eq!(hello["type"], "hello");
    // The other two decrypt while it is connected: the replay joins the live feed seamlessly.
    for b in &bidders[2..] {
        assert_eq!(app.scan(&opening, b).await.status, 200);
    }
    app.wait_until_settled(&opening).await;
    let public: Vec<i64> = app
        .public_events(&opening)
        .await
        .iter()
        .map(|e| e["seq"].as_i64().unwrap())
        .collect();
    let newest = *public.last().unwrap();
    let rest = viewer
        .events_until(|e| e["seq"].as_i64() == Some(newest))
        .await;
    viewer.close().await;

    let seqs: Vec<i64> = first
        .iter()
        .chain(rest.iter())
        .map(|e| e["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, public, "every public event exactly once, in order");
    app.cleanup().await;
}

async fn progress_and_heartbeats_flow(backend: Backend) {
    let app = spawn_app(&backend).await;
    let b = TestBidder::new(app.dir.path(), 1, 4 << 20);
    let opening = app.opening_with_bids(&[&b], 60, 1800).await;
    app.start_after(&opening, 61).await;
    let mut viewer = Viewer::connect(&app, &opening, 0, None).await;
    assert_eq!(app.scan(&opening, &b).await.status, 200);
    let mut kinds = Vec::new();
    while let Some(m) = viewer.next(Duration::from_secs(60)).await {
        if m["type"] == "event" {
            kinds.push(m["kind"].as_str().unwrap().to_owned());
            if m["kind"] == "bid.decrypted" {
                break;
            }
        }
    }
    assert!(kinds.contains(&"bid.summary".to_owned()));
    assert!(kinds.contains(&"bid.decrypted".to_owned()));
    viewer.close().await;
    app.cleanup().await;
}

crate::on_both_databases!(a_viewer_far_behind_gets_a_snapshot);

/// More than 2,000 events behind, a viewer gets the current state instead of the backlog, and
/// then the live feed.
async fn a_viewer_far_behind_gets_a_snapshot(backend: Backend) {
    let app = spawn_app(&backend).await;
    let b = TestBidder::new(app.dir.path(), 1, 1000);
    let opening = app.opening_with_bids(&[&b], 30, 1800).await;
    app.start_after(&opening, 31).await;
    // The hall announces a refusal once per QR code and reason, so no run of requests makes
    // thousands of public events quickly: they are written to the event log directly, as
    // refusals of other phones would be.
    let bid_id = app.snapshot(&opening).await["bids"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for _ in 0..21 {
        let events = (0..100)
            .map(|i| {
                (
                    "bid.refused".to_owned(),
                    "public".to_owned(),
                    serde_json::json!({"bid_id": bid_id, "code": "malformed", "message": format!("回执 {i} 格式不对")}),
                )
            })
            .collect();
        app.hall
            .bus()
            .append_all(&opening, events, app.now_ms())
            .await
            .unwrap();
    }
    let mut viewer = Viewer::connect(&app, &opening, 0, None).await;
    assert_eq!(
        viewer.next(Duration::from_secs(10)).await.unwrap()["type"],
        "hello"
    );
    let snapshot = viewer.next(Duration::from_secs(10)).await.unwrap();
    assert_eq!(snapshot["type"], "snapshot", "{snapshot}");
    let last = snapshot["snapshot"]["last_seq"].as_i64().unwrap();
    assert!(last > 2100);
    assert_eq!(snapshot["snapshot"]["bids"][0]["state"], "awaiting_key");
    assert_eq!(app.scan(&opening, &b).await.status, 200);
    let live = viewer
        .events_until(|e| e["kind"] == "bid.key_accepted")
        .await;
    assert_eq!(
        live[0]["seq"].as_i64().unwrap(),
        last + 1,
        "the feed continues right after the snapshot"
    );
    viewer.close().await;
    app.cleanup().await;
}

/// While the log moves on, every viewer is sent the platform's signed head of it, as the public
/// may see it, without asking: proof of what the log held, checked with the platform's key.
async fn viewers_are_sent_the_platforms_signed_head_as_the_log_moves_on(backend: Backend) {
    let app = spawn_app_with(&backend, |s| s.head_push_secs = 1).await;
    let a = TestBidder::new(app.dir.path(), 1, 20_000);
    let opening = app.opening_with_bids(&[&a], 60, 1800).await;
    let mut viewer = Viewer::connect(&app, &opening, 0, None).await;
    app.start_after(&opening, 61).await;
    assert_eq!(app.scan(&opening, &a).await.status, 200);
    app.wait_until_settled(&opening).await;
    let last = app.public_snapshot(&opening).await["last_seq"]
        .as_i64()
        .unwrap();
    let key = app.platform_key().await;
    let until = std::time::Instant::now() + Duration::from_secs(20);
    let head = loop {
        assert!(
            std::time::Instant::now() < until,
            "no signed head of event {last} came"
        );
        let Some(m) = viewer.next(Duration::from_secs(2)).await else {
            continue;
        };
        if m["type"] == "head" && m["head"]["seq"] == last {
            break m["head"].clone();
        }
    };
    let head: kaibiao::hall::SignedHead = serde_json::from_value(head).unwrap();
    head.verify(&key).unwrap();
    assert_eq!(head.opening_id, opening);
    // Pushed once per point of the log: no head again while nothing happens.
    let mut again = 0;
    let quiet = std::time::Instant::now() + Duration::from_millis(2500);
    while std::time::Instant::now() < quiet {
        if let Some(m) = viewer.next(Duration::from_millis(500)).await
            && m["type"] == "head"
        {
            again += 1;
        }
    }
    assert_eq!(again, 0, "a head is pushed once");
    viewer.close().await;
    app.cleanup().await;
}
