//! The span every request runs in: what the log says of a request, with its id.
//!
//! Why not `tracing-actix-web`'s default span: it names the client by `X-Forwarded-For` from
//! anyone (`realip_remote_addr`), so a client could write any address into the log lines of its
//! requests, and it logs the query string, where an evaluator's token may travel (`?token=`, for
//! clients that cannot set a header: a websocket in a browser). This one names the client as the
//! sign-in hold does (the peer, or what a proxy named in `trusted_proxies` says) and logs the
//! path alone.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::{Error, HttpMessage};
use tracing::Span;
use tracing::field::Empty;
use tracing_actix_web::{DefaultRootSpanBuilder, RequestId, RootSpanBuilder};

use crate::config::IpRange;

/// The client's address as the span found it, kept in the request's extensions so that the
/// sign-in hold uses the same one without walking `X-Forwarded-For` again.
#[derive(Clone, Copy)]
pub(super) struct ClientAddress(pub(super) Option<std::net::IpAddr>);

/// The reverse proxies whose `X-Forwarded-For` is believed, as app data.
#[derive(Clone)]
pub(super) struct TrustedProxies(pub(super) Vec<IpRange>);

pub(super) struct RequestSpan;

impl RootSpanBuilder for RequestSpan {
    fn on_request_start(request: &ServiceRequest) -> Span {
        let trusted = request
            .app_data::<TrustedProxies>()
            .map(|t| t.0.as_slice())
            .unwrap_or_default();
        let mut bad_hop = None;
        let address = super::api::client_address(request.request(), trusted, |hop| {
            bad_hop = Some(hop.to_owned());
        });
        request.extensions_mut().insert(ClientAddress(address));
        let client = address.map(|ip| ip.to_string()).unwrap_or_default();
        let request_id = request
            .extensions()
            .get::<RequestId>()
            .map(|id| id.to_string())
            .unwrap_or_default();
        let route = request.match_pattern().unwrap_or_else(|| "default".into());
        let user_agent = request
            .headers()
            .get("User-Agent")
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        let span = tracing::info_span!(
            "HTTP request",
            http.method = %request.method(),
            http.route = %route,
            http.target = %request.path(),
            http.client_ip = %client,
            http.user_agent = %user_agent,
            request_id = %request_id,
            http.status_code = Empty,
            otel.status_code = Empty,
            exception.message = Empty,
            exception.details = Empty,
        );
        if let Some(hop) = bad_hop {
            // Once per request, with its id: a proxy in `trusted_proxies` that writes something
            // else than addresses is misconfigured (or not a proxy).
            span.in_scope(|| {
                tracing::warn!(
                    hop,
                    "an X-Forwarded-For hop from a trusted proxy is not an address"
                )
            });
        }
        span
    }

    fn on_request_end<B: MessageBody>(span: Span, outcome: &Result<ServiceResponse<B>, Error>) {
        DefaultRootSpanBuilder::on_request_end(span, outcome);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use actix_web::{App, HttpResponse, test, web};
    use tracing_actix_web::TracingLogger;

    use super::*;

    /// What the log says while `request` is handled by an app trusting `trusted`.
    async fn logged(trusted: &[&str], request: test::TestRequest) -> String {
        let out = Arc::new(Mutex::new(Vec::new()));
        let writer = {
            let out = out.clone();
            move || Sink(out.clone())
        };
        let subscriber = tracing_subscriber::fmt()
            .with_writer(writer)
            .with_ansi(false)
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let trusted = trusted
            .iter()
            .map(|r| serde_json::from_value(serde_json::json!(r)).unwrap())
            .collect();
        let app = test::init_service(
            App::new()
                .wrap(TracingLogger::<RequestSpan>::new())
                .app_data(TrustedProxies(trusted))
                .route(
                    "/scan",
                    web::get().to(|| async {
                        tracing::info!("handled");
                        HttpResponse::Ok().finish()
                    }),
                ),
        )
        .await;
        test::call_service(&app, request.uri("/scan?token=ev_SECRET").to_request()).await;
        String::from_utf8(out.lock().unwrap().clone()).unwrap()
    }

    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn from(peer: &str, forwarded: &str) -> test::TestRequest {
        test::TestRequest::get()
            .peer_addr(peer.parse().unwrap())
            .insert_header(("X-Forwarded-For", forwarded))
    }

    #[actix_web::test]
    async fn the_log_names_the_client_as_the_sign_in_hold_does_and_no_token() {
        // From anyone, the header is not believed.
        let line = logged(&[], from("192.0.2.7:4000", "203.0.113.9")).await;
        assert!(line.contains("http.client_ip=192.0.2.7"), "{line}");
        assert!(!line.contains("203.0.113.9"), "{line}");
        assert!(
            line.contains("handled") && line.contains("http.target=/scan "),
            "{line}"
        );
        assert!(!line.contains("ev_SECRET"), "{line}");
        let id = line.split("request_id=").nth(1).unwrap_or("");
        assert!(
            id.len() > 36 && id.as_bytes()[8] == b'-',
            "no request id: {line}"
        );
        // From a trusted proxy, its last untrusted hop is the client.
        let line = logged(
            &["127.0.0.1"],
            from("127.0.0.1:4000", "198.51.100.1, 203.0.113.9"),
        )
        .await;
        assert!(line.contains("http.client_ip=203.0.113.9"), "{line}");
        // A hop that is not an address stops the walk at the proxy, said once, in the span.
        let line = logged(
            &["127.0.0.1"],
            from("127.0.0.1:4000", "203.0.113.9, unknown"),
        )
        .await;
        assert!(line.contains("http.client_ip=127.0.0.1"), "{line}");
        let warnings: Vec<&str> = line
            .lines()
            .filter(|l| l.contains("not an address"))
            .collect();
        assert_eq!(warnings.len(), 1, "{line}");
        assert!(
            warnings[0].contains("request_id=") && warnings[0].contains("hop=\"unknown\""),
            "{line}"
        );
    }
}
