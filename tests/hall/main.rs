//! Black-box tests of the hall: the real server on port 0, a fresh database per test, driven over
//! HTTP and websocket — each test runs on SQLite and, when KAIBIAO_TEST_POSTGRES_URL is set, on
//! PostgreSQL.

mod audit;
mod bidder_login;
mod browser;
#[path = "../common/ca.rs"]
mod ca;
mod demo;
mod helpers;
mod objections;
mod opening;
mod phone_cli;
mod record;
mod refusals;
mod roles;
mod signin;
mod trust;
mod websocket;
