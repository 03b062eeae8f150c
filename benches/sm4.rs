//! SM4-CTR and SM4-GCM throughput on every kaibiao SM4 path and on the RustCrypto `sm4` crate,
//! on 1 KiB, 64 KiB and 1 MiB inputs. (OpenSSL's SM4 is measured with `openssl speed -evp
//! sm4-ctr`; see README.)

use std::hint::black_box;

use aes_gcm::aead::AeadInOut;
use aes_gcm::aead::consts::U12;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ctr::cipher::{InnerIvInit, KeyIvInit, StreamCipher};
use kaibiao::crypto::{Sm4Fast, Sm4Path};
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
            let cipher = Sm4Fast::with_path(&KEY, path).unwrap();
            group.bench_function(format!("ctr/kaibiao-{}", path.name()), |b| {
                let core = ctr::CtrCore::<Sm4Fast, ctr::flavors::Ctr32BE>::inner_iv_init(
                    cipher.clone(),
                    &iv.into(),
                );
                let mut c = ctr::Ctr32BE::<Sm4Fast>::from_core(core);
                b.iter(|| c.apply_keystream(black_box(&mut buf)))
            });
            group.bench_function(format!("gcm/kaibiao-{}", path.name()), |b| {
                let gcm = aes_gcm::AesGcm::<Sm4Fast, U12>::from(cipher.clone());
                b.iter(|| {
                    black_box(
                        gcm.encrypt_inout_detached(&NONCE.into(), b"", buf.as_mut_slice().into())
                            .unwrap(),
                    )
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
