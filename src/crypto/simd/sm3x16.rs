//! SM3 (GB/T 32905) of up to 16 messages of the same length at once, one message per 32-bit lane
//! of AVX-512 registers; the `sm3` crate, message after message, everywhere else.
//!
//! Why by hand: one SM3 is a chain of 64 dependent rounds per block, so a single message cannot go
//! faster than the `sm3` crate's ~0.35–0.45 GB/s per core, and that bounded sealing, checking an
//! upload and unsealing with digests, which hash every chunk of a bid. The chunks are independent
//! and (all but the last) of equal length, so sixteen of them run in lockstep here, as
//! multi-buffer SHA-256 does in Intel's ISA-L; no maintained crate offers a multi-buffer SM3.

use sm3::Digest;

/// Messages hashed at once.
pub const LANES: usize = 16;

const BLOCK: usize = 64;

const IV: [u32; 8] = [
    0x7380_166f,
    0x4914_b2b9,
    0x1724_42d7,
    0xda8a_0600,
    0xa96f_30bc,
    0x1631_38aa,
    0xe38d_ee4d,
    0xb0fb_0e4e,
];

/// Whether the AVX-512 path is used where the CPU has it: `KAIBIAO_SM3=portable` turns it off
/// (to compare, or to rule it out).
fn simd_wanted() -> bool {
    static WANTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *WANTED.get_or_init(|| {
        std::env::var("KAIBIAO_SM3").as_deref() != Ok("portable") && simd_supported()
    })
}

/// Whether this CPU runs the AVX-512 path.
pub fn simd_supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Up to [`LANES`] SM3 computations over messages that grow by the same number of bytes at each
/// step: feed them with [`Sm3Lanes::update`], read the digests with [`Sm3Lanes::finalize`].
pub struct Sm3Lanes {
    lanes: usize,
    len: u64,
    inner: Inner,
}

enum Inner {
    /// `state[word][lane]`, the layout of the registers.
    #[cfg(target_arch = "x86_64")]
    Simd(Box<[[u32; LANES]; 8]>),
    Portable(Vec<sm3::Sm3>),
}

impl Sm3Lanes {
    /// Messages hashed at once.
    pub const LANES: usize = LANES;

    /// `lanes` (1..=16) messages, on the fastest path this CPU has (`KAIBIAO_SM3=portable`
    /// forces the crate). A step costs the same for
    /// 1 or 16 lanes, so one or two messages go to the `sm3` crate, which is faster per message.
    pub fn new(lanes: usize) -> Self {
        Self::with_simd(lanes, lanes >= 3 && simd_wanted())
    }

    /// As [`Self::new`], on the AVX-512 path (`simd`, honoured only where the CPU has it) or on
    /// the `sm3` crate.
    ///
    /// # Panics
    /// If `lanes` is 0 or more than 16.
    pub fn with_simd(lanes: usize, simd: bool) -> Self {
        assert!((1..=LANES).contains(&lanes), "1 to 16 lanes");
        #[cfg(target_arch = "x86_64")]
        if simd && simd_supported() {
            let state = Box::new(std::array::from_fn(|word| [IV[word]; LANES]));
            return Self {
                lanes,
                len: 0,
                inner: Inner::Simd(state),
            };
        }
        let _ = simd;
        Self {
            lanes,
            len: 0,
            inner: Inner::Portable((0..lanes).map(|_| sm3::Sm3::new()).collect()),
        }
    }

    /// Whether this instance runs the AVX-512 code.
    pub fn is_simd(&self) -> bool {
        !matches!(self.inner, Inner::Portable(_))
    }

    /// Absorbs the next piece of each message, `pieces[i]` for lane `i`.
    ///
    /// # Panics
    /// If the number of pieces is not the number of lanes, the pieces differ in length, or the
    /// length is not a multiple of 64 bytes (only [`Self::finalize`] takes a partial block).
    pub fn update(&mut self, pieces: &[&[u8]]) {
        let len = self.check(pieces);
        assert!(
            len.is_multiple_of(BLOCK),
            "only the last piece may end inside a block"
        );
        self.absorb(pieces, len);
    }

    fn check(&self, pieces: &[&[u8]]) -> usize {
        assert_eq!(pieces.len(), self.lanes, "one piece per lane");
        let len = pieces[0].len();
        assert!(
            pieces.iter().all(|p| p.len() == len),
            "the lanes' pieces must have one length"
        );
        len
    }

    fn absorb(&mut self, pieces: &[&[u8]], len: usize) {
        self.len += len as u64;
        match &mut self.inner {
            #[cfg(target_arch = "x86_64")]
            Inner::Simd(state) => {
                let blocks = len / BLOCK;
                if blocks > 0 {
                    let lanes: [&[u8]; LANES] =
                        std::array::from_fn(|i| &pieces[i.min(pieces.len() - 1)][..blocks * BLOCK]);
                    // SAFETY: the CPU has AVX-512F/BW (checked when the state was made), and every
                    // lane holds `blocks` whole blocks (sliced just above).
                    unsafe { x86::compress(state, &lanes, blocks) };
                }
            }
            Inner::Portable(hashers) => {
                for (hasher, piece) in hashers.iter_mut().zip(pieces) {
                    hasher.update(piece);
                }
            }
        }
    }

    /// Absorbs the last pieces (any length, the same in every lane) and returns the digests,
    /// one per lane.
    ///
    /// # Panics
    /// As [`Self::update`], but any length is allowed.
    pub fn finalize(mut self, last: &[&[u8]]) -> Vec<[u8; 32]> {
        let len = self.check(last);
        let whole = len / BLOCK * BLOCK;
        let heads: Vec<&[u8]> = last.iter().map(|p| &p[..whole]).collect();
        self.absorb(&heads, whole);
        let tails: Vec<&[u8]> = last.iter().map(|p| &p[whole..]).collect();
        match self.inner {
            #[cfg(target_arch = "x86_64")]
            Inner::Simd(mut state) => {
                // Padding: 0x80, zeros, the message's length in bits (64-bit big-endian); the same
                // for every lane, since the lengths are.
                let bits = (self.len + tails[0].len() as u64) * 8;
                let padded_len = if tails[0].len() < BLOCK - 8 {
                    BLOCK
                } else {
                    2 * BLOCK
                };
                let padded: Vec<[u8; 2 * BLOCK]> = tails
                    .iter()
                    .map(|tail| {
                        let mut block = [0u8; 2 * BLOCK];
                        block[..tail.len()].copy_from_slice(tail);
                        block[tail.len()] = 0x80;
                        block[padded_len - 8..padded_len].copy_from_slice(&bits.to_be_bytes());
                        block
                    })
                    .collect();
                let lanes: [&[u8]; LANES] =
                    std::array::from_fn(|i| &padded[i.min(padded.len() - 1)][..padded_len]);
                // SAFETY: as in `absorb`; every lane holds `padded_len / 64` whole blocks.
                unsafe { x86::compress(&mut state, &lanes, padded_len / BLOCK) };
                (0..self.lanes)
                    .map(|lane| {
                        let mut digest = [0u8; 32];
                        for (word, out) in digest.chunks_exact_mut(4).enumerate() {
                            out.copy_from_slice(&state[word][lane].to_be_bytes());
                        }
                        digest
                    })
                    .collect()
            }
            Inner::Portable(hashers) => hashers
                .into_iter()
                .zip(tails)
                .map(|(mut hasher, tail)| {
                    hasher.update(tail);
                    hasher.finalize().into()
                })
                .collect(),
        }
    }
}

/// SM3 of each of `messages`, which must have one length, in groups of 16.
pub fn sm3_many(messages: &[&[u8]]) -> Vec<[u8; 32]> {
    messages
        .chunks(LANES)
        .flat_map(|group| Sm3Lanes::new(group.len()).finalize(group))
        .collect()
}

/// Up to [`LANES`] SM3 computations over messages of unrelated lengths that join and leave when
/// they like: the plaintext digests of many decrypted bids at once. Each step feeds some lanes
/// one piece each, all of one length; a message ends with [`Self::finish`] and its lane is free
/// for the next. A message left alone in the batch (where one lane costs as much as sixteen)
/// moves on to the `sm3` crate with [`Self::into_scalar`].
pub struct Sm3Batch {
    /// `state[word][lane]`, as in [`Sm3Lanes`].
    state: Box<[[u32; LANES]; 8]>,
    /// Whole blocks absorbed by each lane.
    blocks: [u64; LANES],
    used: [bool; LANES],
}

impl Sm3Batch {
    /// A batch, where the CPU has AVX-512 (and `KAIBIAO_SM3=portable` does not turn it off);
    /// otherwise none, and messages are hashed one by one with the `sm3` crate.
    pub fn new() -> Option<Self> {
        simd_wanted().then(|| Self {
            state: Box::new([[0; LANES]; 8]),
            blocks: [0; LANES],
            used: [false; LANES],
        })
    }

    /// Lanes holding a message.
    pub fn used(&self) -> usize {
        self.used.iter().filter(|u| **u).count()
    }

    /// Starts a message in a free lane and returns the lane, or none if all sixteen are used.
    pub fn start(&mut self) -> Option<usize> {
        let lane = self.used.iter().position(|u| !u)?;
        for (word, iv) in IV.iter().enumerate() {
            self.state[word][lane] = *iv;
        }
        self.blocks[lane] = 0;
        self.used[lane] = true;
        Some(lane)
    }

    /// Absorbs the next piece of some messages, `(lane, piece)`; the other lanes are unchanged.
    ///
    /// # Panics
    /// If a lane is free or named twice, or the pieces differ in length or are not whole blocks.
    pub fn update(&mut self, pieces: &[(usize, &[u8])]) {
        let Some(&(_, first)) = pieces.first() else {
            return;
        };
        let len = first.len();
        assert!(len.is_multiple_of(BLOCK), "pieces of whole blocks");
        let mut fed = [false; LANES];
        let mut lanes = [first; LANES];
        for &(lane, piece) in pieces {
            assert!(self.used[lane] && !fed[lane], "a used lane, once");
            assert_eq!(piece.len(), len, "the pieces must have one length");
            fed[lane] = true;
            lanes[lane] = piece;
            self.blocks[lane] += (len / BLOCK) as u64;
        }
        // The lanes not fed compress the first piece too: keep their state aside and put it back.
        let kept = *self.state;
        compress_lanes(&mut self.state, &lanes, len / BLOCK);
        for (lane, fed) in fed.iter().enumerate() {
            if !fed {
                for (word, kept) in kept.iter().enumerate() {
                    self.state[word][lane] = kept[lane];
                }
            }
        }
    }

    /// Absorbs the last piece of the message in `lane` (any length) and returns its digest; the
    /// lane is free again.
    ///
    /// # Panics
    /// If the lane is free.
    pub fn finish(&mut self, lane: usize, last: &[u8]) -> [u8; 32] {
        assert!(self.used[lane], "a used lane");
        let bits = (self.blocks[lane] * BLOCK as u64 + last.len() as u64) * 8;
        let mut padded = last.to_vec();
        padded.push(0x80);
        padded.resize((last.len() + 1 + 8).next_multiple_of(BLOCK) - 8, 0);
        padded.extend_from_slice(&bits.to_be_bytes());
        // Compressed in a copy of the state, so that no other lane changes.
        let mut state = self.state.clone();
        compress_lanes(
            &mut state,
            &[padded.as_slice(); LANES],
            padded.len() / BLOCK,
        );
        self.used[lane] = false;
        let mut digest = [0u8; 32];
        for (word, out) in digest.chunks_exact_mut(4).enumerate() {
            out.copy_from_slice(&state[word][lane].to_be_bytes());
        }
        digest
    }

    /// Drops the message in `lane`, whose digest is no longer wanted; the lane is free again.
    pub fn abandon(&mut self, lane: usize) {
        self.used[lane] = false;
    }

    /// Takes the message in `lane` out of the batch, as an `sm3` crate hasher that goes on from
    /// where it is; the lane is free again.
    ///
    /// # Panics
    /// If the lane is free.
    pub fn into_scalar(&mut self, lane: usize) -> sm3::Sm3 {
        use sm3::digest::common::hazmat::SerializableState;
        assert!(self.used[lane], "a used lane");
        self.used[lane] = false;
        // The crate's serialized state begins with its chaining words (little-endian) and the
        // number of blocks absorbed; its block buffer, empty at a block boundary, follows.
        let mut serialized = sm3::Sm3::new().serialize();
        for word in 0..8 {
            serialized[4 * word..4 * word + 4]
                .copy_from_slice(&self.state[word][lane].to_le_bytes());
        }
        serialized[32..40].copy_from_slice(&self.blocks[lane].to_le_bytes());
        sm3::Sm3::deserialize(&serialized).expect("a state the crate itself serialized")
    }
}

/// The AVX-512 compression of [`x86::compress`], for the types made only where it runs.
fn compress_lanes(state: &mut [[u32; LANES]; 8], lanes: &[&[u8]; LANES], blocks: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        assert!(simd_supported(), "made only where the CPU has AVX-512");
        // SAFETY: the CPU has AVX-512F/BW (asserted just above); `compress` itself asserts that
        // every lane holds `blocks` whole blocks.
        unsafe { x86::compress(state, lanes, blocks) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (state, lanes, blocks);
        unreachable!("made only where the CPU has AVX-512");
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{BLOCK, LANES};

    /// `Tⱼ <<< (j mod 32)`, the round constants as the rounds add them.
    const T: [u32; 64] = {
        let mut t = [0u32; 64];
        let mut j = 0;
        while j < 64 {
            let base: u32 = if j < 16 { 0x79cc_4519 } else { 0x7a87_9d8a };
            t[j] = base.rotate_left((j % 32) as u32);
            j += 1;
        }
        t
    };

    /// Transposes sixteen rows of sixteen 32-bit words: `out[w]` lane `i` = `rows[i]` word `w`.
    #[target_feature(enable = "avx512f")]
    fn transpose(rows: [__m512i; 16]) -> [__m512i; 16] {
        let mut b = [_mm512_setzero_si512(); 16];
        for i in 0..8 {
            b[2 * i] = _mm512_unpacklo_epi32(rows[2 * i], rows[2 * i + 1]);
            b[2 * i + 1] = _mm512_unpackhi_epi32(rows[2 * i], rows[2 * i + 1]);
        }
        // c[4i + r], 128-bit lane q: word 4q + r of rows 4i..4i+3.
        let mut c = [_mm512_setzero_si512(); 16];
        for i in 0..4 {
            c[4 * i] = _mm512_unpacklo_epi64(b[4 * i], b[4 * i + 2]);
            c[4 * i + 1] = _mm512_unpackhi_epi64(b[4 * i], b[4 * i + 2]);
            c[4 * i + 2] = _mm512_unpacklo_epi64(b[4 * i + 1], b[4 * i + 3]);
            c[4 * i + 3] = _mm512_unpackhi_epi64(b[4 * i + 1], b[4 * i + 3]);
        }
        let mut out = [_mm512_setzero_si512(); 16];
        for r in 0..4 {
            let e0 = _mm512_shuffle_i32x4::<0x44>(c[r], c[4 + r]);
            let e1 = _mm512_shuffle_i32x4::<0xEE>(c[r], c[4 + r]);
            let e2 = _mm512_shuffle_i32x4::<0x44>(c[8 + r], c[12 + r]);
            let e3 = _mm512_shuffle_i32x4::<0xEE>(c[8 + r], c[12 + r]);
            out[r] = _mm512_shuffle_i32x4::<0x88>(e0, e2);
            out[4 + r] = _mm512_shuffle_i32x4::<0xDD>(e0, e2);
            out[8 + r] = _mm512_shuffle_i32x4::<0x88>(e1, e3);
            out[12 + r] = _mm512_shuffle_i32x4::<0xDD>(e1, e3);
        }
        out
    }

    #[target_feature(enable = "avx512f")]
    fn p1(x: __m512i) -> __m512i {
        _mm512_ternarylogic_epi32::<0x96>(x, _mm512_rol_epi32::<15>(x), _mm512_rol_epi32::<23>(x))
    }

    #[target_feature(enable = "avx512f")]
    fn p0(x: __m512i) -> __m512i {
        _mm512_ternarylogic_epi32::<0x96>(x, _mm512_rol_epi32::<9>(x), _mm512_rol_epi32::<17>(x))
    }

    /// Runs the compression function over `blocks` blocks of each lane.
    ///
    /// # Safety
    /// The CPU must have AVX-512F and AVX-512BW, and every lane must hold at least
    /// `blocks × 64` bytes.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub unsafe fn compress(state: &mut [[u32; LANES]; 8], lanes: &[&[u8]; LANES], blocks: usize) {
        for lane in lanes {
            assert!(
                lane.len() >= blocks * BLOCK,
                "a lane shorter than its blocks"
            );
        }
        // Big-endian words: reverse the bytes of each 32-bit word.
        let swap = _mm512_broadcast_i32x4(_mm_set_epi8(
            12, 13, 14, 15, 8, 9, 10, 11, 4, 5, 6, 7, 0, 1, 2, 3,
        ));
        // SAFETY: `[u32; 16]` and `__m512i` have the same size; unaligned loads and stores.
        let mut v: [__m512i; 8] =
            std::array::from_fn(|w| unsafe { _mm512_loadu_si512(state[w].as_ptr().cast()) });
        let mut w = [_mm512_setzero_si512(); 68];
        for block in 0..blocks {
            // SAFETY: every lane holds `blocks × 64` bytes (asserted above); unaligned loads.
            let rows: [__m512i; 16] = std::array::from_fn(|i| unsafe {
                _mm512_loadu_si512(lanes[i].as_ptr().add(block * BLOCK).cast())
            });
            let words = transpose(rows);
            for j in 0..16 {
                w[j] = _mm512_shuffle_epi8(words[j], swap);
            }
            for j in 16..68 {
                let x = _mm512_ternarylogic_epi32::<0x96>(
                    w[j - 16],
                    w[j - 9],
                    _mm512_rol_epi32::<15>(w[j - 3]),
                );
                w[j] = _mm512_ternarylogic_epi32::<0x96>(
                    p1(x),
                    _mm512_rol_epi32::<7>(w[j - 13]),
                    w[j - 6],
                );
            }
            let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut h] = v;
            for j in 0..64 {
                let a12 = _mm512_rol_epi32::<12>(a);
                let ss1 = _mm512_rol_epi32::<7>(_mm512_add_epi32(
                    _mm512_add_epi32(a12, e),
                    _mm512_set1_epi32(T[j] as i32),
                ));
                let ss2 = _mm512_xor_si512(ss1, a12);
                let w1 = _mm512_xor_si512(w[j], w[j + 4]);
                let (ff, gg) = if j < 16 {
                    (
                        _mm512_ternarylogic_epi32::<0x96>(a, b, c),
                        _mm512_ternarylogic_epi32::<0x96>(e, f, g),
                    )
                } else {
                    // Majority of a, b, c; e chooses between f and g.
                    (
                        _mm512_ternarylogic_epi32::<0xE8>(a, b, c),
                        _mm512_ternarylogic_epi32::<0xCA>(e, f, g),
                    )
                };
                let tt1 = _mm512_add_epi32(_mm512_add_epi32(ff, d), _mm512_add_epi32(ss2, w1));
                let tt2 = _mm512_add_epi32(_mm512_add_epi32(gg, h), _mm512_add_epi32(ss1, w[j]));
                d = c;
                c = _mm512_rol_epi32::<9>(b);
                b = a;
                a = tt1;
                h = g;
                g = _mm512_rol_epi32::<19>(f);
                f = e;
                e = p0(tt2);
            }
            let new = [a, b, c, d, e, f, g, h];
            for (v, n) in v.iter_mut().zip(new) {
                *v = _mm512_xor_si512(*v, n);
            }
        }
        for (word, reg) in state.iter_mut().zip(v) {
            // SAFETY: as for the loads above.
            unsafe { _mm512_storeu_si512(word.as_mut_ptr().cast(), reg) };
        }
    }
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

    fn reference(data: &[u8]) -> [u8; 32] {
        sm3::Sm3::digest(data).into()
    }

    #[test]
    fn a_batch_hashes_messages_that_join_and_leave_at_any_time() {
        let Some(mut batch) = Sm3Batch::new() else {
            eprintln!("SKIPPED: this CPU has no AVX-512, the batch is not used here");
            return;
        };
        let mut seed = 0x9e37_79b9_7f4a_7c15;
        // Twenty messages of unrelated lengths (0 to ~9 KiB, around block boundaries too) join
        // while others are half-way; some finish in the batch, some leave for the crate.
        let messages: Vec<Vec<u8>> = (0..20)
            .map(|i| {
                let len = match i % 4 {
                    0 => i * 64,
                    1 => i * 64 + 55,
                    2 => i * 64 + 56,
                    _ => (xorshift(&mut seed) as usize) * 37,
                };
                (0..len).map(|_| xorshift(&mut seed)).collect()
            })
            .collect();
        let mut next = 0;
        // (message, lane, bytes absorbed)
        let mut active: Vec<(usize, usize, usize)> = Vec::new();
        let mut done = 0;
        let mut round = 0;
        while done < messages.len() {
            while next < messages.len() && (round + next) % 3 != 1 {
                let Some(lane) = batch.start() else { break };
                active.push((next, lane, 0));
                next += 1;
            }
            round += 1;
            let piece = 64 * (1 + round % 4);
            let mut fed = Vec::new();
            for (message, lane, at) in std::mem::take(&mut active) {
                let data = &messages[message];
                if data.len() - at > piece {
                    fed.push((lane, &data[at..at + piece]));
                    active.push((message, lane, at + piece));
                } else if message % 5 == 4 {
                    let mut scalar = batch.into_scalar(lane);
                    scalar.update(&data[at..]);
                    assert_eq!(
                        <[u8; 32]>::from(scalar.finalize()),
                        reference(data),
                        "{message}"
                    );
                    done += 1;
                } else {
                    assert_eq!(
                        batch.finish(lane, &data[at..]),
                        reference(data),
                        "{message}"
                    );
                    done += 1;
                }
            }
            batch.update(&fed);
        }
        assert_eq!(done, messages.len());
        assert_eq!(batch.used(), 0);
    }

    #[test]
    fn passes_the_gbt_32905_vectors_in_every_lane() {
        // GB/T 32905-2016, appendix A: "abc" and "abcd" × 16.
        for (message, digest) in [
            (
                b"abc".to_vec(),
                "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0",
            ),
            (
                b"abcd".repeat(16),
                "debe9ff92275b8a138604889c18e5a4d6fdb70e5387e5765293dcba39c0c5732",
            ),
        ] {
            for simd in [true, false] {
                let lanes = Sm3Lanes::with_simd(LANES, simd);
                let pieces = vec![message.as_slice(); LANES];
                for got in lanes.finalize(&pieces) {
                    assert_eq!(hex::encode(got), digest, "simd {simd}");
                }
            }
        }
    }

    #[test]
    fn matches_the_sm3_crate_on_random_messages() {
        let mut seed = 0x2545_f491_4f6c_dd1d;
        // Lengths around the block and around the padding's spill into a second block.
        for (round, len) in [
            0usize, 1, 55, 56, 63, 64, 65, 119, 120, 128, 1000, 4096, 70_000,
        ]
        .into_iter()
        .enumerate()
        {
            let lanes = 1 + round % LANES;
            let messages: Vec<Vec<u8>> = (0..lanes)
                .map(|_| (0..len).map(|_| xorshift(&mut seed)).collect())
                .collect();
            let expected: Vec<[u8; 32]> = messages.iter().map(|m| reference(m)).collect();
            for simd in [true, false] {
                // In pieces: whole blocks of random count, then the rest.
                let mut hasher = Sm3Lanes::with_simd(lanes, simd);
                let mut at = 0;
                while len - at >= BLOCK {
                    let n = BLOCK * (1 + usize::from(xorshift(&mut seed)) % 40);
                    let n = n.min((len - at) / BLOCK * BLOCK);
                    let pieces: Vec<&[u8]> = messages.iter().map(|m| &m[at..at + n]).collect();
                    hasher.update(&pieces);
                    at += n;
                    if xorshift(&mut seed) < 64 {
                        break;
                    }
                }
                let last: Vec<&[u8]> = messages.iter().map(|m| &m[at..]).collect();
                assert_eq!(
                    hasher.finalize(&last),
                    expected,
                    "simd {simd}, {lanes} lanes of {len} bytes"
                );
            }
            let all: Vec<&[u8]> = messages.iter().map(Vec::as_slice).collect();
            assert_eq!(sm3_many(&all), expected);
        }
    }

    #[test]
    fn reports_its_path() {
        assert_eq!(Sm3Lanes::new(3).is_simd(), simd_wanted());
        assert!(!Sm3Lanes::with_simd(3, false).is_simd());
    }

    #[test]
    #[should_panic(expected = "one length")]
    fn refuses_pieces_of_different_lengths() {
        Sm3Lanes::new(2).update(&[&[0; 64], &[0; 128]]);
    }
}
