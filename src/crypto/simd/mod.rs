//! The SIMD code of the crate: SM4 with a run-time chosen backend (GFNI + AVX-512, 64 blocks at a
//! time; GFNI + AVX2 and AES-NI + AVX2, 64 in eight groups of 8; the RustCrypto `sm4` crate everywhere else), and GHASH on VPCLMULQDQ
//! ([`ghash`]). `Sm4Fast` implements the RustCrypto `cipher` traits, so the `ctr`, `ccm` and
//! `aes-gcm` crates use it unchanged; kaibiao's own GCM (`crypto::gcm`) uses [`Sm4Fast::apply_ctr32`].
//!
//! Why by hand: no maintained crate offers a SIMD SM4; the RustCrypto crate is table-based and
//! runs at about 0.1 GB/s per core (see `../shared/CRYPTO-NOTES.md`).
//!
//! The S-box without tables: SM4's S-box is `S(x) = A·I(A·x ⊕ C) ⊕ C`, with `I` the inversion in
//! GF(2⁸) modulo x⁸+x⁷+x⁶+x⁵+x⁴+x²+1. That field is isomorphic to the AES field, so
//! `S(x) = POST·Iₐₑₛ(PRE·x ⊕ c₁) ⊕ c₂` with two 8×8 bit matrices, which GFNI applies to 64 bytes
//! per instruction (`vgf2p8affineqb`, then `vgf2p8affineinvqb`, which inverts in the AES field).
//! The matrices were derived from the S-box table and are checked against it for all 256 inputs
//! in the tests below. No lookup is indexed by secret data on this path.
//!
//! This is the one module of the crate allowed `unsafe` (with its submodule [`ghash`]): the
//! intrinsics are `unsafe` because they need CPU features; each block says why it is sound.
#![allow(unsafe_code)]

pub mod ghash;
pub mod sm3x16;

use std::sync::OnceLock;

use sm4::cipher::consts::{U16, U64};
use sm4::cipher::{
    AlgorithmName, Block, BlockCipherEncBackend, BlockCipherEncClosure, BlockCipherEncrypt,
    BlockSizeUser, InOut, Key, KeyInit, KeySizeUser, ParBlocks, ParBlocksSizeUser,
};

/// The implementations of SM4 this build can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sm4Path {
    /// GFNI + AVX-512F/BW, 64 blocks per step.
    Gfni512,
    /// GFNI + AVX2, 64 blocks per step (CPUs with GFNI but no AVX-512).
    Gfni256,
    /// AES-NI + AVX2, 64 blocks per step (CPUs without GFNI): the S-box through AESENCLAST.
    AesNi256,
    /// The RustCrypto `sm4` crate.
    Portable,
}

impl Sm4Path {
    /// Every path this CPU can run, fastest first.
    pub fn available() -> Vec<Sm4Path> {
        let mut paths = Vec::new();
        if gfni512_supported() {
            paths.push(Sm4Path::Gfni512);
        }
        if gfni256_supported() {
            paths.push(Sm4Path::Gfni256);
        }
        if aesni256_supported() {
            paths.push(Sm4Path::AesNi256);
        }
        paths.push(Sm4Path::Portable);
        paths
    }

    /// The path used by default: `KAIBIAO_SM4=portable|aesni256|gfni256|gfni512` forces one (an unavailable
    /// choice falls back to the portable path), otherwise the fastest available.
    pub fn default_path() -> Sm4Path {
        static CHOSEN: OnceLock<Sm4Path> = OnceLock::new();
        *CHOSEN.get_or_init(|| {
            let available = Self::available();
            match std::env::var("KAIBIAO_SM4").as_deref() {
                Ok("portable") => Sm4Path::Portable,
                Ok("gfni512") if available.contains(&Sm4Path::Gfni512) => Sm4Path::Gfni512,
                Ok("gfni256") if available.contains(&Sm4Path::Gfni256) => Sm4Path::Gfni256,
                Ok("aesni256") if available.contains(&Sm4Path::AesNi256) => Sm4Path::AesNi256,
                _ => available[0],
            }
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Sm4Path::Gfni512 => "gfni512",
            Sm4Path::Gfni256 => "gfni256",
            Sm4Path::AesNi256 => "aesni256",
            Sm4Path::Portable => "portable",
        }
    }
}

fn aesni256_supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("aes")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

fn gfni256_supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("gfni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

fn gfni512_supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("gfni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// SM4 on the fastest path of this CPU (or a forced one).
#[derive(Clone)]
pub struct Sm4Fast {
    portable: sm4::Sm4,
    round_keys: [u32; 32],
    path: Sm4Path,
}

const FK: [u32; 4] = [0xa3b1bac6, 0x56aa3350, 0x677d9197, 0xb27022dc];
const CK: [u32; 32] = [
    0x00070e15, 0x1c232a31, 0x383f464d, 0x545b6269, 0x70777e85, 0x8c939aa1, 0xa8afb6bd, 0xc4cbd2d9,
    0xe0e7eef5, 0xfc030a11, 0x181f262d, 0x343b4249, 0x50575e65, 0x6c737a81, 0x888f969d, 0xa4abb2b9,
    0xc0c7ced5, 0xdce3eaf1, 0xf8ff060d, 0x141b2229, 0x30373e45, 0x4c535a61, 0x686f767d, 0x848b9299,
    0xa0a7aeb5, 0xbcc3cad1, 0xd8dfe6ed, 0xf4fb0209, 0x10171e25, 0x2c333a41, 0x484f565d, 0x646b7279,
];

/// A SIMD path's CTR function: round keys, nonce words, first counter, input, output.
#[cfg(target_arch = "x86_64")]
type CtrStep = unsafe fn(&[u32; 32], &[u32; 3], u32, *const u8, *mut u8);

/// The SM4 key schedule with a given S-box on the four bytes of a word.
fn key_schedule_with(key: &[u8; 16], sbox: impl Fn(u32) -> u32) -> [u32; 32] {
    let mut k = [0u32; 4];
    for (i, word) in k.iter_mut().enumerate() {
        *word = u32::from_be_bytes(key[4 * i..4 * i + 4].try_into().expect("4 bytes")) ^ FK[i];
    }
    let mut rk = [0u32; 32];
    for (i, out) in rk.iter_mut().enumerate() {
        let b = sbox(k[1] ^ k[2] ^ k[3] ^ CK[i]);
        let t = k[0] ^ b ^ b.rotate_left(13) ^ b.rotate_left(23);
        *out = t;
        k = [k[1], k[2], k[3], t];
    }
    zeroize::Zeroize::zeroize(&mut k);
    rk
}

impl Sm4Fast {
    /// A cipher on a given path; `None` if this CPU cannot run it.
    pub fn with_path(key: &[u8; 16], path: Sm4Path) -> Option<Self> {
        if !Sm4Path::available().contains(&path) {
            return None;
        }
        let round_keys = match path {
            // SAFETY: the path is available, so the CPU has GFNI.
            #[cfg(target_arch = "x86_64")]
            Sm4Path::Gfni512 | Sm4Path::Gfni256 => unsafe { x86::key_schedule(key) },
            // SAFETY: the path is available, so the CPU has AVX2 and AES-NI.
            #[cfg(target_arch = "x86_64")]
            Sm4Path::AesNi256 => unsafe { x86::key_schedule_aesni(key) },
            // Round keys are only used by the SIMD path.
            _ => [0; 32],
        };
        Some(Self {
            portable: sm4::Sm4::new(key.into()),
            round_keys,
            path,
        })
    }

    pub fn path(&self) -> Sm4Path {
        self.path
    }

    /// [`Self::apply_ctr32`] on a SIMD path, with the counters made in registers.
    ///
    /// # Safety
    /// `step` must be the CTR function of a path the CPU runs, working on `blocks` blocks, and
    /// `blocks` at most 64.
    #[cfg(target_arch = "x86_64")]
    unsafe fn apply_ctr32_simd(
        &self,
        initial: &[u8; 16],
        data: &mut [u8],
        blocks: usize,
        step: CtrStep,
    ) {
        const MAX_STEP: usize = 64 * 16;
        let bytes = blocks * 16;
        let word = |i: usize| u32::from_be_bytes(initial[4 * i..4 * i + 4].try_into().expect("4"));
        let nonce = [word(0), word(1), word(2)];
        let mut counter = word(3);
        let mut steps = data.chunks_exact_mut(bytes);
        for chunk in &mut steps {
            let p = chunk.as_mut_ptr();
            // SAFETY: the caller guarantees `step` runs on this CPU and works on `blocks` blocks;
            // `chunk` is `blocks` blocks, read and written in place.
            unsafe { step(&self.round_keys, &nonce, counter, p, p) };
            counter = counter.wrapping_add(blocks as u32);
        }
        let rest = steps.into_remainder();
        if !rest.is_empty() {
            let mut stream = [0u8; MAX_STEP];
            let p = stream.as_mut_ptr();
            // SAFETY: as above; `stream` holds at least `blocks` blocks (at most 64).
            unsafe { step(&self.round_keys, &nonce, counter, p, p) };
            for (b, k) in rest.iter_mut().zip(stream.iter()) {
                *b ^= k;
            }
            zeroize::Zeroize::zeroize(&mut stream);
        }
    }

    /// XORs `data` with the SM4-CTR keystream whose first counter block is `initial`, the last
    /// four bytes counting up as a big-endian integer modulo 2³² (GCM's `inc32`).
    ///
    /// Keystream blocks are made a whole SIMD step at a time, also for a short tail, so no block
    /// of a SIMD path ever goes through the table-based portable code.
    pub fn apply_ctr32(&self, initial: &[u8; 16], data: &mut [u8]) {
        #[cfg(target_arch = "x86_64")]
        {
            let step: Option<CtrStep> = match self.path {
                Sm4Path::Gfni512 => Some(x86::ctr_blocks),
                Sm4Path::Gfni256 => Some(x86::ctr_blocks_256),
                Sm4Path::AesNi256 => Some(x86::ctr_blocks_aesni),
                Sm4Path::Portable => None,
            };
            if let Some(step) = step {
                // SAFETY: `self.path` is a SIMD path only if `Sm4Path::available` found its CPU
                // features, and each of these functions works on 64 blocks.
                return unsafe { self.apply_ctr32_simd(initial, data, 64, step) };
            }
        }
        const MAX_BATCH: usize = 64;
        let mut counter = u32::from_be_bytes(initial[12..].try_into().expect("4 bytes"));
        let mut stream = [Block::<Self>::default(); MAX_BATCH];
        for chunk in data.chunks_mut(MAX_BATCH * 16) {
            // Only the portable path comes here: the SIMD paths returned above.
            let blocks = chunk.len().div_ceil(16);
            for block in &mut stream[..blocks] {
                block[..12].copy_from_slice(&initial[..12]);
                block[12..].copy_from_slice(&counter.to_be_bytes());
                counter = counter.wrapping_add(1);
            }
            self.encrypt_blocks(&mut stream[..blocks]);
            for (bytes, key) in chunk.chunks_mut(16).zip(stream.iter()) {
                for (b, k) in bytes.iter_mut().zip(key.iter()) {
                    *b ^= k;
                }
            }
        }
        for block in &mut stream {
            zeroize::Zeroize::zeroize(block.as_mut_slice());
        }
    }
}

impl KeySizeUser for Sm4Fast {
    type KeySize = U16;
}

impl KeyInit for Sm4Fast {
    fn new(key: &Key<Self>) -> Self {
        let key: [u8; 16] = (*key).into();
        Self::with_path(&key, Sm4Path::default_path())
            .or_else(|| Self::with_path(&key, Sm4Path::Portable))
            .expect("the portable path is always available")
    }
}

impl BlockSizeUser for Sm4Fast {
    type BlockSize = U16;
}

impl BlockCipherEncrypt for Sm4Fast {
    fn encrypt_with_backend(&self, f: impl BlockCipherEncClosure<BlockSize = Self::BlockSize>) {
        match self.path {
            #[cfg(target_arch = "x86_64")]
            Sm4Path::Gfni512 => f.call(&x86::Backend {
                round_keys: &self.round_keys,
            }),
            #[cfg(target_arch = "x86_64")]
            Sm4Path::Gfni256 => f.call(&x86::Backend256 {
                round_keys: &self.round_keys,
            }),
            #[cfg(target_arch = "x86_64")]
            Sm4Path::AesNi256 => f.call(&x86::BackendAesNi {
                round_keys: &self.round_keys,
            }),
            _ => self.portable.encrypt_with_backend(f),
        }
    }
}

impl AlgorithmName for Sm4Fast {
    fn write_alg_name(f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SM4")
    }
}

impl std::fmt::Debug for Sm4Fast {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sm4Fast({})", self.path.name())
    }
}

impl Drop for Sm4Fast {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.round_keys);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::*;

    /// `PRE·x ⊕ 0x3e` maps an SM4-field input into the AES field (bit matrix as GFNI wants it:
    /// byte 7−i is row i).
    const PRE: i64 = 0x4c28_7db9_1a22_505d;
    const PRE_C: i32 = 0x3e;
    /// `POST·Iₐₑₛ(y) ⊕ 0xd3` maps the AES-field inverse back and applies SM4's output affine map.
    const POST: i64 = 0xf3ab_34a9_74a6_b589_u64 as i64;
    const POST_C: i32 = 0xd3;

    /// The S-box on the four bytes of a word, with GFNI on a 128-bit register.
    ///
    /// # Safety
    /// The CPU must support GFNI.
    #[target_feature(enable = "gfni,sse2")]
    unsafe fn sbox32(x: u32) -> u32 {
        let v = _mm_cvtsi32_si128(x as i32);
        let v = _mm_gf2p8affine_epi64_epi8::<PRE_C>(v, _mm_set1_epi64x(PRE));
        let v = _mm_gf2p8affineinv_epi64_epi8::<POST_C>(v, _mm_set1_epi64x(POST));
        _mm_cvtsi128_si32(v) as u32
    }

    /// The SM4 key schedule, with the table-free S-box.
    ///
    /// # Safety
    /// The CPU must support GFNI.
    #[target_feature(enable = "gfni,sse2")]
    pub(super) unsafe fn key_schedule(key: &[u8; 16]) -> [u32; 32] {
        // SAFETY: the caller guarantees GFNI.
        super::key_schedule_with(key, |x| unsafe { sbox32(x) })
    }

    /// `PRE·x ⊕ 0x3e` as two nibble tables (for `vpshufb`), and POST′ (see `sbox256_aesni`).
    const AESNI_PRE_LO: [u8; 16] = nibble_table(Affine::Pre, false);
    const AESNI_PRE_HI: [u8; 16] = nibble_table(Affine::Pre, true);
    const AESNI_POST_LO: [u8; 16] = nibble_table(Affine::Post, false);
    const AESNI_POST_HI: [u8; 16] = nibble_table(Affine::Post, true);
    /// `vpshufb` indices of AES's InvShiftRows: output byte r + 4c takes input byte
    /// r + 4((c − r) mod 4).
    const INV_SHIFT_ROWS: [u8; 16] = {
        let mut t = [0u8; 16];
        let mut i = 0;
        while i < 16 {
            let (r, c) = (i % 4, i / 4);
            t[i] = (r + 4 * ((c + 4 - r) % 4)) as u8;
            i += 1;
        }
        t
    };

    /// What `vgf2p8affineqb` computes on one byte: bit i of the result is the parity of
    /// `x & byte (7 − i) of the matrix`, XOR bit i of `c`.
    const fn gf2p8affine(matrix: i64, c: u8, x: u8) -> u8 {
        let m = matrix as u64;
        let mut out = 0u8;
        let mut i = 0;
        while i < 8 {
            let row = (m >> (8 * (7 - i))) as u8;
            out |= (((row & x).count_ones() & 1) as u8) << i;
            i += 1;
        }
        out ^ c
    }

    /// The two affine maps around AESENCLAST.
    #[derive(Clone, Copy)]
    enum Affine {
        Pre,
        Post,
    }

    impl Affine {
        const fn apply(self, x: u8) -> u8 {
            match self {
                Affine::Pre => pre_map(x),
                Affine::Post => post_map(x),
            }
        }
    }

    const fn pre_map(x: u8) -> u8 {
        gf2p8affine(PRE, PRE_C as u8, x)
    }

    /// POST′(z) = POST·A⁻¹(z ⊕ 0x63) ⊕ 0xd3, where `A⁻¹(z ⊕ 0x63) = (z ⋘ 1) ⊕ (z ⋘ 3) ⊕ (z ⋘ 6) ⊕ 0x05`
    /// is AES's inverse affine map (FIPS 197, InvSubBytes), recovering the AES-field inverse.
    const fn post_map(z: u8) -> u8 {
        let inverse = z.rotate_left(1) ^ z.rotate_left(3) ^ z.rotate_left(6) ^ 0x05;
        gf2p8affine(POST, POST_C as u8, inverse)
    }

    /// An affine byte map f as nibble tables: `f(x) = lo[x & 15] ⊕ hi[x >> 4]`, with
    /// `lo[n] = f(n)` and `hi[n] = f(n << 4) ⊕ f(0)` (f(a ⊕ b) = f(a) ⊕ f(b) ⊕ f(0) for affine f).
    const fn nibble_table(map: Affine, high: bool) -> [u8; 16] {
        let mut t = [0u8; 16];
        let mut n = 0;
        while n < 16 {
            t[n] = if high {
                map.apply((n as u8) << 4) ^ map.apply(0)
            } else {
                map.apply(n as u8)
            };
            n += 1;
        }
        t
    }

    /// Blocks per step: four independent groups of 16, interleaved so that one group's S-box and
    /// rotations run while the others wait on their latency (measured: 16 blocks 1.51 GiB/s,
    /// 32 blocks 2.08 GiB/s, 64 blocks 2.30 GiB/s of SM4-CTR on one core).
    const BLOCKS: usize = 64;

    /// One SM4 round on the 16 blocks of a group: `X₄ = X₀ ⊕ L(τ(X₁ ⊕ X₂ ⊕ X₃ ⊕ rk))`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,gfni")]
    fn round(x: [__m512i; 4], rk: __m512i, pre: __m512i, post: __m512i) -> [__m512i; 4] {
        let t = _mm512_xor_si512(_mm512_xor_si512(x[1], x[2]), _mm512_xor_si512(x[3], rk));
        let t = _mm512_gf2p8affine_epi64_epi8::<PRE_C>(t, pre);
        let t = _mm512_gf2p8affineinv_epi64_epi8::<POST_C>(t, post);
        // L(B) = B ⊕ (B ⋘ 2) ⊕ (B ⋘ 10) ⊕ (B ⋘ 18) ⊕ (B ⋘ 24)
        let l = _mm512_xor_si512(
            _mm512_xor_si512(t, _mm512_rol_epi32::<2>(t)),
            _mm512_xor_si512(
                _mm512_xor_si512(_mm512_rol_epi32::<10>(t), _mm512_rol_epi32::<18>(t)),
                _mm512_rol_epi32::<24>(t),
            ),
        );
        [x[1], x[2], x[3], _mm512_xor_si512(x[0], l)]
    }

    /// The 32 rounds on [`BLOCKS`] blocks held as four transposed groups of 16.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,gfni")]
    fn rounds(round_keys: &[u32; 32], groups: &mut [[__m512i; 4]; BLOCKS / 16]) {
        let pre = _mm512_set1_epi64(PRE);
        let post = _mm512_set1_epi64(POST);
        for &rk in round_keys {
            let rk = _mm512_set1_epi32(rk as i32);
            for group in groups.iter_mut() {
                *group = round(*group, rk, pre, post);
            }
        }
    }

    /// Byte order: SM4 words are big-endian; this shuffle swaps the bytes of every 32-bit word.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    fn bswap32() -> __m512i {
        _mm512_broadcast_i32x4(_mm_set_epi8(
            12, 13, 14, 15, 8, 9, 10, 11, 4, 5, 6, 7, 0, 1, 2, 3,
        ))
    }

    /// Encrypts [`BLOCKS`] blocks read from `input` into `output` (which may be the same memory).
    ///
    /// # Safety
    /// The CPU must support AVX-512F, AVX-512BW and GFNI; `input` must be readable and `output`
    /// writable for `16 × BLOCKS` bytes (no alignment needed: unaligned loads and stores are used).
    #[target_feature(enable = "avx512f,avx512bw,gfni")]
    unsafe fn encrypt_blocks(round_keys: &[u32; 32], input: *const u8, output: *mut u8) {
        let bswap = bswap32();
        let mut groups = [[_mm512_setzero_si512(); 4]; BLOCKS / 16];
        for (g, group) in groups.iter_mut().enumerate() {
            let mut v = [_mm512_setzero_si512(); 4];
            for (i, reg) in v.iter_mut().enumerate() {
                // SAFETY: the caller guarantees 16 × BLOCKS readable bytes at `input`, and
                // (g × 4 + i) × 64 + 64 ≤ 16 × BLOCKS.
                *reg = _mm512_shuffle_epi8(
                    unsafe { _mm512_loadu_si512(input.add((g * 4 + i) * 64).cast()) },
                    bswap,
                );
            }
            *group = transpose(v[0], v[1], v[2], v[3]);
        }
        rounds(round_keys, &mut groups);
        for (g, x) in groups.iter().enumerate() {
            // The output is (X35, X34, X33, X32): the transpose is its own inverse.
            let y = transpose(x[3], x[2], x[1], x[0]);
            for (i, reg) in y.iter().enumerate() {
                // SAFETY: the caller guarantees 16 × BLOCKS writable bytes at `output`; every
                // load happened before the first store.
                unsafe {
                    _mm512_storeu_si512(
                        output.add((g * 4 + i) * 64).cast(),
                        _mm512_shuffle_epi8(*reg, bswap),
                    )
                };
            }
        }
    }

    /// CTR mode on [`BLOCKS`] blocks: `output = input ⊕ E(nonce ‖ counter + i)` for block i, the
    /// counter a 32-bit big-endian word counting modulo 2³². The counter blocks are made in the
    /// registers, already transposed (register 3 of a group holds the 16 counters), so no
    /// counter block is written to memory and the XOR happens before the store.
    ///
    /// # Safety
    /// The CPU must support AVX-512F, AVX-512BW and GFNI; `input` must be readable and `output`
    /// writable for `16 × BLOCKS` bytes (they may be the same memory; unaligned access is used).
    #[target_feature(enable = "avx512f,avx512bw,gfni")]
    pub(super) unsafe fn ctr_blocks(
        round_keys: &[u32; 32],
        nonce: &[u32; 3],
        counter: u32,
        input: *const u8,
        output: *mut u8,
    ) {
        let bswap = bswap32();
        // After the transpose, dword j of lane L of a group's registers belongs to block 4j + L.
        let offsets = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
        let mut groups = [[_mm512_setzero_si512(); 4]; BLOCKS / 16];
        for (g, group) in groups.iter_mut().enumerate() {
            let base = _mm512_set1_epi32(counter.wrapping_add(16 * g as u32) as i32);
            *group = [
                _mm512_set1_epi32(nonce[0] as i32),
                _mm512_set1_epi32(nonce[1] as i32),
                _mm512_set1_epi32(nonce[2] as i32),
                _mm512_add_epi32(base, offsets),
            ];
        }
        rounds(round_keys, &mut groups);
        for (g, x) in groups.iter().enumerate() {
            let y = transpose(x[3], x[2], x[1], x[0]);
            for (i, reg) in y.iter().enumerate() {
                let at = (g * 4 + i) * 64;
                // SAFETY: the caller guarantees 16 × BLOCKS readable bytes at `input` and
                // writable bytes at `output`; at + 64 ≤ 16 × BLOCKS. Each 64 bytes are loaded
                // before they are stored, so input and output may be the same memory.
                unsafe {
                    let data = _mm512_loadu_si512(input.add(at).cast());
                    let stream = _mm512_shuffle_epi8(*reg, bswap);
                    _mm512_storeu_si512(output.add(at).cast(), _mm512_xor_si512(data, stream));
                }
            }
        }
    }

    /// Transposes the 4×4 matrix of 32-bit words inside each 128-bit lane of four registers:
    /// afterwards register k holds word k of the four blocks of every lane.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn transpose(a: __m512i, b: __m512i, c: __m512i, d: __m512i) -> [__m512i; 4] {
        let t0 = _mm512_unpacklo_epi32(a, b);
        let t1 = _mm512_unpackhi_epi32(a, b);
        let t2 = _mm512_unpacklo_epi32(c, d);
        let t3 = _mm512_unpackhi_epi32(c, d);
        [
            _mm512_unpacklo_epi64(t0, t2),
            _mm512_unpackhi_epi64(t0, t2),
            _mm512_unpacklo_epi64(t1, t3),
            _mm512_unpackhi_epi64(t1, t3),
        ]
    }

    /// `x ⋘ N` on each 32-bit lane, for AVX2 which has no rotate instruction.
    macro_rules! rol256 {
        ($x:expr, $n:literal) => {
            _mm256_or_si256(
                _mm256_slli_epi32::<$n>($x),
                _mm256_srli_epi32::<{ 32 - $n }>($x),
            )
        };
    }

    /// Blocks per step on the AVX2 paths: eight interleaved groups of 8 (measured, CTR on one
    /// core: 16 blocks 1.29 GiB/s, 32 blocks 1.64 GiB/s, 64 blocks 1.83 GiB/s with GFNI).
    const BLOCKS_256: usize = 64;

    #[inline]
    #[target_feature(enable = "avx2")]
    fn transpose256(a: __m256i, b: __m256i, c: __m256i, d: __m256i) -> [__m256i; 4] {
        let t0 = _mm256_unpacklo_epi32(a, b);
        let t1 = _mm256_unpackhi_epi32(a, b);
        let t2 = _mm256_unpacklo_epi32(c, d);
        let t3 = _mm256_unpackhi_epi32(c, d);
        [
            _mm256_unpacklo_epi64(t0, t2),
            _mm256_unpackhi_epi64(t0, t2),
            _mm256_unpacklo_epi64(t1, t3),
            _mm256_unpackhi_epi64(t1, t3),
        ]
    }

    /// SM4 on [`BLOCKS_256`] blocks with the S-box layer `$sbox` (GFNI or AES-NI); the rest of
    /// the round is plain AVX2. `$ctr` is `None` to encrypt the blocks at `$input` into `$output`,
    /// or `Some((nonce, counter))` for CTR mode: the counter blocks are made in registers
    /// (already transposed) and `$output = $input ⊕ keystream`. A macro, not a generic function,
    /// because each expansion must be compiled with its own CPU features.
    macro_rules! sm4_256 {
        ($round_keys:expr, $ctr:expr, $input:expr, $output:expr, $sbox:expr) => {{
            let (round_keys, ctr, input, output): (
                &[u32; 32],
                Option<(&[u32; 3], u32)>,
                *const u8,
                *mut u8,
            ) = ($round_keys, $ctr, $input, $output);
            let bswap = _mm256_broadcastsi128_si256(_mm_set_epi8(
                12, 13, 14, 15, 8, 9, 10, 11, 4, 5, 6, 7, 0, 1, 2, 3,
            ));
            // After the transpose, dword j of lane L of a group's registers is block 2j + L.
            let offsets = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
            let mut groups = [[_mm256_setzero_si256(); 4]; BLOCKS_256 / 8];
            for (g, group) in groups.iter_mut().enumerate() {
                if let Some((nonce, counter)) = ctr {
                    let base = _mm256_set1_epi32(counter.wrapping_add(8 * g as u32) as i32);
                    *group = [
                        _mm256_set1_epi32(nonce[0] as i32),
                        _mm256_set1_epi32(nonce[1] as i32),
                        _mm256_set1_epi32(nonce[2] as i32),
                        _mm256_add_epi32(base, offsets),
                    ];
                    continue;
                }
                let mut v = [_mm256_setzero_si256(); 4];
                for (i, reg) in v.iter_mut().enumerate() {
                    // SAFETY: the caller guarantees 16 × BLOCKS_256 readable bytes at `input`,
                    // and (g × 4 + i) × 32 + 32 ≤ 16 × BLOCKS_256.
                    let loaded = unsafe { _mm256_loadu_si256(input.add((g * 4 + i) * 32).cast()) };
                    *reg = _mm256_shuffle_epi8(loaded, bswap);
                }
                *group = transpose256(v[0], v[1], v[2], v[3]);
            }
            for &rk in round_keys {
                let rk = _mm256_set1_epi32(rk as i32);
                for x in groups.iter_mut() {
                    let t =
                        _mm256_xor_si256(_mm256_xor_si256(x[1], x[2]), _mm256_xor_si256(x[3], rk));
                    let t = $sbox(t);
                    // L(B) = B ⊕ (B ⋘ 2) ⊕ (B ⋘ 10) ⊕ (B ⋘ 18) ⊕ (B ⋘ 24)
                    let l = _mm256_xor_si256(
                        _mm256_xor_si256(t, rol256!(t, 2)),
                        _mm256_xor_si256(
                            _mm256_xor_si256(rol256!(t, 10), rol256!(t, 18)),
                            rol256!(t, 24),
                        ),
                    );
                    *x = [x[1], x[2], x[3], _mm256_xor_si256(x[0], l)];
                }
            }
            for (g, x) in groups.iter().enumerate() {
                let y = transpose256(x[3], x[2], x[1], x[0]);
                for (i, reg) in y.iter().enumerate() {
                    let at = (g * 4 + i) * 32;
                    let mut out = _mm256_shuffle_epi8(*reg, bswap);
                    if ctr.is_some() {
                        // SAFETY: 16 × BLOCKS_256 readable bytes at `input`; these 32 are read
                        // before they are written.
                        out = _mm256_xor_si256(out, unsafe {
                            _mm256_loadu_si256(input.add(at).cast())
                        });
                    }
                    // SAFETY: 16 × BLOCKS_256 writable bytes at `output`; in ECB mode all loads
                    // are done, in CTR mode these bytes were just read.
                    unsafe { _mm256_storeu_si256(output.add(at).cast(), out) };
                }
            }
        }};
    }

    /// The S-box on 32 bytes with GFNI.
    #[inline]
    #[target_feature(enable = "avx2,gfni")]
    fn sbox256_gfni(t: __m256i) -> __m256i {
        let t = _mm256_gf2p8affine_epi64_epi8::<PRE_C>(t, _mm256_set1_epi64x(PRE));
        _mm256_gf2p8affineinv_epi64_epi8::<POST_C>(t, _mm256_set1_epi64x(POST))
    }

    /// The ECB and CTR functions of an AVX2 path with S-box `$sbox`, compiled with `$features`.
    macro_rules! avx2_path {
        ($features:literal, $what:literal, $sbox:ident, $encrypt:ident, $ctr:ident) => {
            #[doc = concat!("Encrypts [`BLOCKS_256`] blocks with ", $what, " read from `input` into")]
            /// `output` (which may be the same memory).
            ///
            /// # Safety
            #[doc = concat!("The CPU must support ", $what, "; `input` must be readable and")]
            /// `output` writable for `16 × BLOCKS_256` bytes (unaligned access is used).
            #[target_feature(enable = $features)]
            unsafe fn $encrypt(round_keys: &[u32; 32], input: *const u8, output: *mut u8) {
                sm4_256!(round_keys, None, input, output, $sbox)
            }

            #[doc = concat!("CTR mode on [`BLOCKS_256`] blocks with ", $what, " (see `ctr_blocks`).")]
            ///
            /// # Safety
            #[doc = concat!("The CPU must support ", $what, "; `input` must be readable and")]
            /// `output` writable for `16 × BLOCKS_256` bytes (they may be the same memory).
            #[target_feature(enable = $features)]
            pub(super) unsafe fn $ctr(
                round_keys: &[u32; 32],
                nonce: &[u32; 3],
                counter: u32,
                input: *const u8,
                output: *mut u8,
            ) {
                sm4_256!(round_keys, Some((nonce, counter)), input, output, $sbox)
            }
        };
    }

    avx2_path!(
        "avx2,gfni",
        "AVX2 and GFNI",
        sbox256_gfni,
        encrypt_blocks_256,
        ctr_blocks_256
    );

    /// The S-box on 32 bytes with AES-NI: `S(x) = POST′(AESENCLAST(InvShiftRows(PRE(x)), 0))`.
    /// AESENCLAST computes `A·I(y) ⊕ 0x63` (AES's affine map A after inversion in the AES field)
    /// on ShiftRows-permuted bytes; the InvShiftRows shuffle undoes the permutation and POST′
    /// undoes A before SM4's output map. PRE and POST′ are affine maps applied as two 16-entry
    /// nibble tables with `vpshufb` (a register shuffle: no memory is indexed by the data).
    /// AVX2 without VAES has no 256-bit AESENCLAST: each 128-bit half goes through it.
    #[inline]
    #[target_feature(enable = "avx2,aes")]
    fn sbox256_aesni(t: __m256i) -> __m256i {
        let nibble = _mm256_set1_epi8(0x0f);
        let table = |bytes: &[u8; 16]| {
            // SAFETY: `bytes` is 16 readable bytes.
            _mm256_broadcastsi128_si256(unsafe { _mm_loadu_si128(bytes.as_ptr().cast()) })
        };
        let affine = |x: __m256i, lo: __m256i, hi: __m256i| {
            let l = _mm256_and_si256(x, nibble);
            let h = _mm256_and_si256(_mm256_srli_epi16::<4>(x), nibble);
            _mm256_xor_si256(_mm256_shuffle_epi8(lo, l), _mm256_shuffle_epi8(hi, h))
        };
        let y = affine(t, table(&AESNI_PRE_LO), table(&AESNI_PRE_HI));
        let y = _mm256_shuffle_epi8(y, table(&INV_SHIFT_ROWS));
        let zero = _mm_setzero_si128();
        let lo = _mm_aesenclast_si128(_mm256_castsi256_si128(y), zero);
        let hi = _mm_aesenclast_si128(_mm256_extracti128_si256::<1>(y), zero);
        let z = _mm256_set_m128i(hi, lo);
        affine(z, table(&AESNI_POST_LO), table(&AESNI_POST_HI))
    }

    /// The S-box on the four bytes of a word with AES-NI (for the key schedule).
    ///
    /// # Safety
    /// The CPU must support AVX2 and AES-NI.
    #[target_feature(enable = "avx2,aes")]
    unsafe fn sbox32_aesni(x: u32) -> u32 {
        let v = sbox256_aesni(_mm256_set1_epi32(x as i32));
        _mm_cvtsi128_si32(_mm256_castsi256_si128(v)) as u32
    }

    /// The SM4 key schedule on the AES-NI S-box.
    ///
    /// # Safety
    /// The CPU must support AVX2 and AES-NI.
    #[target_feature(enable = "avx2,aes")]
    pub(super) unsafe fn key_schedule_aesni(key: &[u8; 16]) -> [u32; 32] {
        // SAFETY: the caller guarantees AVX2 and AES-NI.
        super::key_schedule_with(key, |x| unsafe { sbox32_aesni(x) })
    }

    avx2_path!(
        "avx2,aes",
        "AVX2 and AES-NI",
        sbox256_aesni,
        encrypt_blocks_aesni,
        ctr_blocks_aesni
    );

    /// One block as the first block of a whole SIMD step of `N` blocks, so that no secret-indexed
    /// table lookup happens on a SIMD path. `step` must encrypt `N` blocks like
    /// `encrypt_blocks`/`encrypt_blocks_256` do.
    fn encrypt_one<const N: usize>(
        mut block: InOut<'_, '_, Block<Sm4Fast>>,
        step: impl FnOnce(&mut [[u8; 16]; N]),
    ) {
        let mut buf = [[0u8; 16]; N];
        buf[0].copy_from_slice(block.get_in());
        step(&mut buf);
        block.get_out().copy_from_slice(&buf[0]);
        zeroize::Zeroize::zeroize(buf.as_flattened_mut());
    }

    /// A `cipher` backend running `$step` (`$blocks` blocks per call, `$par` as a type); a single
    /// block is run as a whole step too (a GCM message needs one for its tag and its hash key).
    /// Each backend exists only on its path, which `Sm4Path::available` confirmed the CPU runs.
    macro_rules! backend {
        ($(#[$doc:meta])* $name:ident, $par:ty, $blocks:expr, $step:ident) => {
            $(#[$doc])*
            pub(super) struct $name<'a> {
                pub(super) round_keys: &'a [u32; 32],
            }

            impl BlockSizeUser for $name<'_> {
                type BlockSize = U16;
            }

            impl ParBlocksSizeUser for $name<'_> {
                type ParBlocksSize = $par;
            }

            impl BlockCipherEncBackend for $name<'_> {
                fn encrypt_block(&self, block: InOut<'_, '_, Block<Self>>) {
                    encrypt_one::<{ $blocks }>(block, |buf| {
                        let p = buf.as_mut_ptr().cast::<u8>();
                        // SAFETY: the CPU runs this path (see above); `buf` is `$blocks`
                        // blocks of 16 bytes, read and written in place.
                        unsafe { $step(self.round_keys, p, p) }
                    });
                }

                fn encrypt_par_blocks(&self, blocks: InOut<'_, '_, ParBlocks<Self>>) {
                    let (input, output) = blocks.into_raw();
                    // SAFETY: the CPU runs this path (see above); `ParBlocks` is `$blocks`
                    // contiguous blocks of 16 bytes, readable at `input` and writable at
                    // `output` for the call.
                    unsafe { $step(self.round_keys, input.cast(), output.cast()) }
                }
            }
        };
    }

    backend!(
        /// GFNI + AVX-512: 64 blocks per call.
        Backend, U64, BLOCKS, encrypt_blocks
    );
    backend!(
        /// GFNI + AVX2: 64 blocks per call.
        Backend256, U64, BLOCKS_256, encrypt_blocks_256
    );
    backend!(
        /// AES-NI + AVX2: 64 blocks per call.
        BackendAesNi, U64, BLOCKS_256, encrypt_blocks_aesni
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xorshift(seed: &mut u64) -> u8 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed as u8
    }

    #[test]
    fn every_path_passes_the_gbt32907_vector() {
        let key: [u8; 16] = hex::decode("0123456789abcdeffedcba9876543210")
            .unwrap()
            .try_into()
            .unwrap();
        for path in Sm4Path::available() {
            let cipher = Sm4Fast::with_path(&key, path).unwrap();
            let mut blocks = vec![Block::<Sm4Fast>::from(key); 17];
            cipher.encrypt_blocks(&mut blocks);
            for b in &blocks {
                assert_eq!(
                    hex::encode(b),
                    "681edf34d206965e86b3e94f536e4246",
                    "{path:?}"
                );
            }
        }
    }

    #[test]
    fn every_path_matches_the_portable_cipher_on_random_inputs() {
        let mut seed = 0x9e37_79b9_7f4a_7c15;
        for round in 0..64 {
            let key: [u8; 16] = std::array::from_fn(|_| xorshift(&mut seed));
            let n = 1 + round * 5 % 140;
            let data: Vec<Block<Sm4Fast>> = (0..n)
                .map(|_| {
                    Block::<Sm4Fast>::from(std::array::from_fn::<u8, 16, _>(|_| {
                        xorshift(&mut seed)
                    }))
                })
                .collect();
            let reference = {
                let mut d = data.clone();
                sm4::Sm4::new(&key.into()).encrypt_blocks(&mut d);
                d
            };
            for path in Sm4Path::available() {
                let mut d = data.clone();
                Sm4Fast::with_path(&key, path)
                    .unwrap()
                    .encrypt_blocks(&mut d);
                assert_eq!(d, reference, "{path:?}, {n} blocks");
            }
        }
    }

    #[test]
    fn ctr_on_every_path_matches_the_ctr_crate_also_across_the_counter_wrap() {
        use ctr::cipher::{KeyIvInit, StreamCipher};
        let mut seed = 0xdead_beef;
        for (round, len) in [0, 1, 15, 16, 17, 1000, 1023, 1024, 1025, 2048, 5000, 70_001]
            .into_iter()
            .enumerate()
        {
            let key: [u8; 16] = std::array::from_fn(|_| xorshift(&mut seed));
            let mut iv: [u8; 16] = std::array::from_fn(|_| xorshift(&mut seed));
            if round % 2 == 0 {
                // 20 blocks before the 32-bit counter wraps to 0.
                iv[12..].copy_from_slice(&(u32::MAX - 19).to_be_bytes());
            }
            let data: Vec<u8> = (0..len).map(|_| xorshift(&mut seed)).collect();
            let mut expected = data.clone();
            ctr::Ctr32BE::<sm4::Sm4>::new(&key.into(), &iv.into()).apply_keystream(&mut expected);
            for path in Sm4Path::available() {
                let mut got = data.clone();
                Sm4Fast::with_path(&key, path)
                    .unwrap()
                    .apply_ctr32(&iv, &mut got);
                assert_eq!(got, expected, "{path:?}, {len} bytes");
            }
        }
    }

    #[test]
    fn gcm_on_every_path_matches_gcm_on_the_portable_cipher() {
        use aes_gcm::aead::AeadInOut;
        use aes_gcm::aead::consts::U12;
        type Reference = aes_gcm::AesGcm<sm4::Sm4, U12>;
        type Fast = aes_gcm::AesGcm<Sm4Fast, U12>;
        let mut seed = 0x1234_5678;
        // Partial blocks, and lengths around the 16-block (256-byte) batch.
        for len in [
            0, 1, 15, 16, 17, 255, 256, 257, 511, 512, 513, 1000, 4101, 65_539,
        ] {
            let key: [u8; 16] = std::array::from_fn(|_| xorshift(&mut seed));
            let nonce: [u8; 12] = std::array::from_fn(|_| xorshift(&mut seed));
            let aad: Vec<u8> = (0..len % 37).map(|_| xorshift(&mut seed)).collect();
            let data: Vec<u8> = (0..len).map(|_| xorshift(&mut seed)).collect();
            let mut expected = data.clone();
            let tag = Reference::new(&key.into())
                .encrypt_inout_detached(&nonce.into(), &aad, expected.as_mut_slice().into())
                .unwrap();
            for path in Sm4Path::available() {
                let fast = Fast::from(Sm4Fast::with_path(&key, path).unwrap());
                let mut got = data.clone();
                let t = fast
                    .encrypt_inout_detached(&nonce.into(), &aad, got.as_mut_slice().into())
                    .unwrap();
                assert_eq!(
                    (got.as_slice(), t),
                    (expected.as_slice(), tag),
                    "{path:?}, {len} bytes"
                );
                fast.decrypt_inout_detached(&nonce.into(), &aad, got.as_mut_slice().into(), &t)
                    .unwrap();
                assert_eq!(got, data);
            }
        }
    }

    /// Key, IV, AAD and plaintext shared by RFC 8998 appendices A.1 (GCM) and A.2 (CCM).
    fn rfc8998_inputs() -> ([u8; 16], [u8; 12], Vec<u8>, Vec<u8>) {
        let key = hex::decode("0123456789ABCDEFFEDCBA9876543210").unwrap();
        let nonce = hex::decode("00001234567800000000ABCD").unwrap();
        let aad = hex::decode("FEEDFACEDEADBEEFFEEDFACEDEADBEEFABADDAD2").unwrap();
        let plain = hex::decode("AAAAAAAAAAAAAAAABBBBBBBBBBBBBBBBCCCCCCCCCCCCCCCCDDDDDDDDDDDDDDDDEEEEEEEEEEEEEEEEFFFFFFFFFFFFFFFFEEEEEEEEEEEEEEEEAAAAAAAAAAAAAAAA").unwrap();
        (
            key.try_into().unwrap(),
            nonce.try_into().unwrap(),
            aad,
            plain,
        )
    }

    #[test]
    fn every_path_passes_rfc8998_sm4_ccm() {
        use aes_gcm::aead::consts::{U12, U16};
        use ccm::aead::AeadInOut;
        let (key, nonce, aad, plain) = rfc8998_inputs();
        let mut reference = plain.clone();
        let reference_tag = ccm::Ccm::<sm4::Sm4, U16, U12>::new(&key.into())
            .encrypt_inout_detached(&nonce.into(), &aad, reference.as_mut_slice().into())
            .unwrap();
        assert_eq!(
            hex::encode_upper(reference_tag),
            "16842D4FA186F56AB33256971FA110F4"
        );
        for path in Sm4Path::available() {
            let ccm = ccm::Ccm::<Sm4Fast, U16, U12>::from(Sm4Fast::with_path(&key, path).unwrap());
            let mut buf = plain.clone();
            let tag = ccm
                .encrypt_inout_detached(&nonce.into(), &aad, buf.as_mut_slice().into())
                .unwrap();
            assert_eq!(
                hex::encode_upper(tag),
                "16842D4FA186F56AB33256971FA110F4",
                "{path:?}"
            );
            assert_eq!(buf, reference, "{path:?}");
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_gfni_sbox_is_the_sm4_sbox() {
        if !Sm4Path::available().contains(&Sm4Path::Gfni512) {
            eprintln!("SKIPPED: this CPU has no GFNI + AVX-512");
            return;
        }
        // Compare the table-free S-box with the S-box seen through the portable cipher's key
        // schedule: a key schedule on both paths must agree for many keys.
        let mut seed = 7;
        for _ in 0..256 {
            let key: [u8; 16] = std::array::from_fn(|_| xorshift(&mut seed));
            let fast = Sm4Fast::with_path(&key, Sm4Path::Gfni512).unwrap();
            let mut a = [Block::<Sm4Fast>::default(); 16];
            let mut b = a;
            fast.encrypt_blocks(&mut a);
            sm4::Sm4::new(&key.into()).encrypt_blocks(&mut b);
            assert_eq!(a, b);
        }
    }
}
