//! Prometheus metrics of the server.

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub bytes_decrypted: IntCounter,
    pub decrypt_throughput: Histogram,
    pub ws_connections: IntGauge,
    pub request_seconds: Histogram,
    pub openings: IntGaugeVec,
    pub bids: IntGaugeVec,
    pub answers: IntCounter,
    pub refusals: IntCounter,
    /// Decryption attempts that failed through the platform (retried).
    pub platform_failures: IntCounter,
    /// Decryptions started again because no task was running them (after a restart, a task
    /// ended by a stopping server, or a finished decryption the database failed to record).
    pub decryptions_taken_up: IntCounter,
    /// What bidders did, by action: `sign_in`, `login`, `objection`, `record_confirmation`.
    pub bidder_actions: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("kaibiao".into()), None).expect("valid prefix");
        let bytes_decrypted =
            IntCounter::new("bytes_decrypted_total", "Plaintext bytes of bids decrypted")
                .expect("valid");
        let decrypt_throughput = Histogram::with_opts(
            HistogramOpts::new(
                "decrypt_throughput_bytes_per_second",
                "Throughput of each finished bid decryption",
            )
            .buckets(prometheus::exponential_buckets(1e6, 2.0, 14).expect("valid")),
        )
        .expect("valid");
        let ws_connections =
            IntGauge::new("websocket_connections", "Open websocket connections").expect("valid");
        let request_seconds = Histogram::with_opts(HistogramOpts::new(
            "http_request_duration_seconds",
            "Latency of HTTP requests",
        ))
        .expect("valid");
        let openings = IntGaugeVec::new(Opts::new("openings", "Openings by state"), &["state"])
            .expect("valid");
        let bids = IntGaugeVec::new(Opts::new("bids", "Bids by state"), &["state"]).expect("valid");
        let answers = IntCounter::new("phone_answers_accepted_total", "Phone answers accepted")
            .expect("valid");
        let refusals =
            IntCounter::new("phone_answers_refused_total", "Phone answers refused").expect("valid");
        let platform_failures = IntCounter::new(
            "decryption_platform_failures_total",
            "Decryption attempts that failed through the platform (full disk, I/O error) and are retried",
        )
        .expect("valid");
        let decryptions_taken_up = IntCounter::new(
            "decryptions_taken_up_total",
            "Decryptions of accepted keys started again because no task was running them (after a restart or a lost task)",
        )
        .expect("valid");
        let bidder_actions = IntCounterVec::new(
            Opts::new(
                "bidder_actions_total",
                "Bidders' certificate binds, sign-ins, scan logins, objections and record confirmations accepted",
            ),
            &["action"],
        )
        .expect("valid");
        for c in [
            Box::new(bytes_decrypted.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(decrypt_throughput.clone()),
            Box::new(ws_connections.clone()),
            Box::new(request_seconds.clone()),
            Box::new(openings.clone()),
            Box::new(bids.clone()),
            Box::new(answers.clone()),
            Box::new(refusals.clone()),
            Box::new(platform_failures.clone()),
            Box::new(decryptions_taken_up.clone()),
            Box::new(bidder_actions.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        Self {
            registry,
            bytes_decrypted,
            decrypt_throughput,
            ws_connections,
            request_seconds,
            openings,
            bids,
            answers,
            refusals,
            platform_failures,
            decryptions_taken_up,
            bidder_actions,
        }
    }

    pub fn render(&self) -> String {
        prometheus::TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
