//! SM4-CTR and SM4-GCM throughput on 1 KiB, 64 KiB and 1 MiB inputs, in one run:
//! - kaibiao's SM4 on every path this CPU has (`gfni512`, `gfni256`, `portable`), CTR and GCM
//!   (`gcm/kaibiao-<path>`: kaibiao's GCM with the VPCLMULQDQ GHASH; `gcm/kaibiao-<path>+ghash-crate`:
//!   the same with the `ghash` crate);
//! - the RustCrypto `sm4` crate in the `ctr` and `aes-gcm` crates;
//! - OpenSSL's SM4-CTR through the `openssl` crate (OpenSSL 3.0 has no SM4-GCM; 3.2 added it);
//! - GHASH alone, kaibiao's VPCLMULQDQ code against the `ghash` crate.

use std::hint::black_box;

use aes_gcm::aead::AeadInOut;
use aes_gcm::aead::consts::U12;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ctr::cipher::{KeyIvInit, StreamCipher};
use kaibiao::crypto::{Ghash, Sm4Gcm, Sm4Path};
use sm4::cipher::KeyInit;

const KEY: [u8; 16] = [7; 16];
const NONCE: [u8; 12] = [3; 12];

fn bench(c: &mut Criterion) {
    for size in [1024usize, 64 * 1024, 1024 * 1024] {
        let mut group = c.benchmark_group(format!("sm4/{}KiB", size / 1024));
        group.throughput(Throughput::Bytes(size as u64));
        let mut buf = vec![0u8; size];
        let mut iv = [0u8; 16];
        iv[..12].copy_from_slice(&NONCE);

        group.bench_function("ctr/openssl", |b| {
            let mut out = vec![0u8; size + 16];
            let mut crypter = openssl::symm::Crypter::new(
                openssl::symm::Cipher::sm4_ctr(),
                openssl::symm::Mode::Encrypt,
                &KEY,
                Some(&iv),
            )
            .unwrap();
            b.iter(|| black_box(crypter.update(black_box(&buf), &mut out).unwrap()))
        });
        group.bench_function("ctr/rustcrypto-sm4", |b| {
            let mut c = ctr::Ctr32BE::<sm4::Sm4>::new(&KEY.into(), &iv.into());
            b.iter(|| c.apply_keystream(black_box(&mut buf)))
        });
        group.bench_function("gcm/rustcrypto-sm4", |b| {
            let gcm = aes_gcm::AesGcm::<sm4::Sm4, U12>::new(&KEY.into());
            b.iter(|| {
                black_box(
                    gcm.encrypt_inout_detached(&NONCE.into(), b"", buf.as_mut_slice().into())
                        .unwrap(),
                )
            })
        });
        for path in Sm4Path::available() {
            let cipher = kaibiao::crypto::Sm4Fast::with_path(&KEY, path).unwrap();
            group.bench_function(format!("ctr/kaibiao-{}", path.name()), |b| {
                b.iter(|| cipher.apply_ctr32(&iv, black_box(&mut buf)))
            });
            for (suffix, simd) in [("", true), ("+ghash-crate", false)] {
                let gcm = Sm4Gcm::with_paths(&KEY, path, simd).unwrap();
                if simd && !Ghash::with_simd(&KEY, true).is_simd() {
                    continue;
                }
                group.bench_function(format!("gcm/kaibiao-{}{suffix}", path.name()), |b| {
                    b.iter(|| black_box(gcm.encrypt_in_place(&NONCE, b"", black_box(&mut buf))))
                });
            }
        }
        for (name, simd) in [
            ("ghash/kaibiao-vpclmulqdq", true),
            ("ghash/ghash-crate", false),
        ] {
            let hash = Ghash::with_simd(&KEY, simd);
            if hash.is_simd() != simd {
                continue;
            }
            group.bench_function(name, |b| {
                b.iter(|| {
                    let mut h = hash.clone();
                    h.update_padded(black_box(&buf));
                    black_box(h.finalize())
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
