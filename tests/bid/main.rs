//! Tests of the sealed-bid container, its engine and the bid tool, through the public API, the
//! `kaibiao` binary and the `openssl` command.

#[path = "../common/ca.rs"]
mod ca;
mod cli;
mod corpus;
mod helpers;
mod interop;
mod roundtrip;
mod tamper;
mod trust;
