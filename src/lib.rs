//! kaibiao (开标): the live decryption hall of a Chinese electronic bid opening.
//!
//! The library holds all the logic; the `kaibiao` binary is a thin command-line shell around it.
//!
//! - [`format`]: the sealed-bid container `.kbid` — its specification, parser and writer.
//! - [`crypto`]: SM2 keys, key wrapping, signatures, SM4-GCM and the key schedule.
//! - [`engine`]: parallel sealing and unsealing over chunks, with bounded memory and progress.
//! - [`domain`]: validated value types (unified social credit code, bid summary).
// `unsafe` is denied everywhere but `crypto::simd`, the SIMD SM4 and GHASH.
#![deny(unsafe_code)]

pub mod config;
pub mod crypto;
pub mod db;
pub mod domain;
pub mod engine;
pub mod format;
pub mod hall;
pub mod metrics;
pub mod phone;
pub mod server;
