//! Tests of the sealed-bid container, its engine and the bid tool, through the public API, the
//! `kaibiao` binary and the `openssl` command.

mod cli;
mod corpus;
mod helpers;
mod interop;
mod roundtrip;
mod tamper;
