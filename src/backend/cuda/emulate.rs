//! CPU emulations of the index math of the two subtlest kernels, checked against the CPU twins: what can be
//! verified about `kernels/attention.cu` and `kernels/logsoftmax_gather.cu` without a GPU.
//!
//! Each emulation follows its kernel statement by statement (u32 key arithmetic, tile loops, per-lane
//! masks, the online-softmax update, the first-max merges in the kernel's reduction order), fed by the same
//! host tables (`layout::attention_tables`). They do not prove the CUDA code compiles to the same thing,
//! but a wrong key mapping, causal bound, tile cut, range table or tie rule in the *algorithm* fails here on
//! any machine. Keep them in step with the kernels: a change to either kernel's loops should be mirrored.

use super::layout::{attention_tables, AttnTables, ATTN_TILE_K, ATTN_TILE_Q};
use crate::backend::cpu::{Cpu, CpuTensor};
use crate::backend::{AttnSegment, AttnShape, Backend, BatchLayout};
use crate::testing::Rng;

const WARPS: usize = 4;
const ROWS_PER_WARP: usize = 4;
const LANES: usize = 32;

/// kernels/attention.cu, one (tile, head) block at a time; lanes and warps are loops.
fn attention_emulated(qkv: &[f32], past: &[f32], past_len: u32, tables: &AttnTables, heads: usize, hd: usize) -> Vec<f32> {
    assert_eq!(ATTN_TILE_Q, WARPS * ROWS_PER_WARP);
    assert_eq!(ATTN_TILE_K, LANES);
    let ld = 3 * heads * hd;
    let t = qkv.len() / ld;
    let scale = 1.0 / (hd as f32).sqrt();
    let mut out = vec![f32::NAN; t * heads * hd]; // NaN: a row no tile writes fails the comparison
    for tile in 0..tables.num_tiles() {
        let tl = &tables.tiles[4 * tile..4 * tile + 4];
        let (q_row0, q_rows, seg_start, seg) = (tl[0], tl[1], tl[2], tl[3] as usize);
        for head in 0..heads {
            let (q_off, k_off, v_off) = (head * 3 * hd, head * 3 * hd + hd, head * 3 * hd + 2 * hd);
            // Qs: zeros past the tile's last row.
            let qs: Vec<f32> = (0..ATTN_TILE_Q * hd)
                .map(|i| {
                    let (r, d) = (i / hd, i % hd);
                    if (r as u32) < q_rows {
                        qkv[(q_row0 as usize + r) * ld + q_off + d]
                    } else {
                        0.0
                    }
                })
                .collect();
            let mut m = [f32::NEG_INFINITY; ATTN_TILE_Q];
            let mut l = [0f32; ATTN_TILE_Q];
            let mut o = vec![0f32; ATTN_TILE_Q * hd];
            let anc_begin = tables.seg_off[seg];
            let n_ranges = tables.seg_off[seg + 1] - anc_begin + 1;
            for ri in 0..n_ranges {
                let own = ri == n_ranges - 1;
                let ai = 2 * (anc_begin + ri) as usize;
                let k_start = if own { past_len + seg_start } else { tables.ranges[ai] };
                let k_len = if own { q_row0 + q_rows - seg_start } else { tables.ranges[ai + 1] };
                let mut kb = 0u32;
                while kb < k_len {
                    let n = (ATTN_TILE_K as u32).min(k_len - kb) as usize;
                    let mut ks = vec![0f32; ATTN_TILE_K * hd];
                    let mut vs = vec![0f32; ATTN_TILE_K * hd];
                    for j in 0..n {
                        let key = k_start + kb + j as u32;
                        let row = if key < past_len {
                            &past[key as usize * ld..][..ld]
                        } else {
                            &qkv[(key - past_len) as usize * ld..][..ld]
                        };
                        ks[j * hd..][..hd].copy_from_slice(&row[k_off..][..hd]);
                        vs[j * hd..][..hd].copy_from_slice(&row[v_off..][..hd]);
                    }
                    for qi in 0..ATTN_TILE_Q {
                        if qi as u32 >= q_rows {
                            continue;
                        }
                        // lane j: score of key j against row qi, masked.
                        let sc: Vec<f32> = (0..LANES)
                            .map(|lane| {
                                let key = k_start + kb + lane as u32;
                                let visible = lane < n && (!own || key <= past_len + q_row0 + qi as u32);
                                let s: f32 = (0..hd).map(|d| qs[qi * hd + d] * ks[lane * hd + d]).sum();
                                if visible {
                                    s * scale
                                } else {
                                    f32::NEG_INFINITY
                                }
                            })
                            .collect();
                        let tmax = sc.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                        if tmax == f32::NEG_INFINITY {
                            continue;
                        }
                        let m_new = m[qi].max(tmax);
                        let corr = (m[qi] - m_new).exp();
                        let p: Vec<f32> = sc.iter().map(|&s| if s == f32::NEG_INFINITY { 0.0 } else { (s - m_new).exp() }).collect();
                        l[qi] = l[qi] * corr + p.iter().sum::<f32>();
                        m[qi] = m_new;
                        for d in 0..hd {
                            o[qi * hd + d] *= corr;
                        }
                        for (j, &pj) in p.iter().enumerate().take(n) {
                            for d in 0..hd {
                                o[qi * hd + d] += pj * vs[j * hd + d];
                            }
                        }
                    }
                    kb += ATTN_TILE_K as u32;
                }
            }
            for qi in 0..q_rows as usize {
                let dst = &mut out[(q_row0 as usize + qi) * heads * hd + head * hd..][..hd];
                for d in 0..hd {
                    dst[d] = o[qi * hd + d] / l[qi];
                }
            }
        }
    }
    out
}

fn seg(q_start: u32, q_len: u32, ancestors: &[(u32, u32)]) -> AttnSegment {
    AttnSegment {
        q_start,
        q_len,
        ancestors: ancestors.to_vec(),
    }
}

fn check_attention(what: &str, layout: &BatchLayout, heads: usize, hd: usize, seed: u64) {
    let mut rng = Rng(seed);
    let (t, p) = (layout.tokens(), layout.past_len);
    let cols = 3 * heads * hd;
    let qkv = CpuTensor::new(t, cols, rng.values(t * cols, 1.0));
    let past = CpuTensor::new(p, cols, rng.values(p * cols, 1.0));
    let shape = AttnShape {
        heads,
        head_dim: hd,
        rotary_ndims: 0,
        rotary_base: 10000.0,
    };
    let want = Cpu.attention(&qkv, (p > 0).then_some(&past), layout, shape).unwrap().data;
    let tables = attention_tables(layout).unwrap();
    let got = attention_emulated(&qkv.data, &past.data, p as u32, &tables, heads, hd);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(
            (g - w).abs() <= 2e-6 * (1.0 + w.abs()),
            "{what} (hd {hd}, seed {seed}): row {} col {}: emulated kernel {g} vs cpu {w}",
            i / (heads * hd),
            i % (heads * hd)
        );
    }
}

/// Past cache + batch ancestors + ancestors spanning several key tiles at unaligned starts + segments
/// whose length is not a multiple of 16 + an empty ancestor range + an own segment longer than a key tile,
/// at every head-dim variant (80 is not a power of two).
#[test]
fn attention_kernel_algorithm_matches_cpu_on_hand_made_trees() {
    let layout = BatchLayout {
        positions: (0..120).collect(),
        segments: vec![
            seg(0, 50, &[(0, 45)]),                    // 4 query tiles (16, 16, 16, 2); 45 past keys = 2 key tiles
            seg(50, 35, &[(0, 45), (45, 50)]),         // batch ancestor of 50 keys starting at key 45
            seg(85, 1, &[(7, 38), (10, 0), (95, 35)]), // partial past range, an empty range, a sibling's rows
            seg(86, 34, &[]),                          // a root: own keys span 2 key tiles, causally
        ],
        past_len: 45,
    };
    for (i, &(heads, hd)) in [(2usize, 32usize), (1, 64), (2, 80), (1, 128), (1, 256), (2, 8)].iter().enumerate() {
        check_attention("hand-made tree", &layout, heads, hd, 11 + i as u64);
    }
    let single = BatchLayout {
        positions: vec![0],
        segments: vec![seg(0, 1, &[])],
        past_len: 0,
    };
    check_attention("one row", &single, 1, 80, 3);
}

/// The layouts the planner really produces: shared prefixes, several batches, a K/V cache carried over.
#[test]
fn attention_kernel_algorithm_matches_cpu_on_planned_batches() {
    let mut rng = Rng(77);
    let mut reqs = vec![];
    for _ in 0..6 {
        let n = 20 + rng.below(50);
        let ctx = rng.tokens(n, 50);
        for _ in 0..3 {
            let n = 1 + rng.below(20);
            let cont = rng.tokens(n, 50);
            reqs.push(crate::plan::Request {
                context: ctx.clone(),
                continuation: cont,
            });
        }
    }
    let mut checked = (0, 0);
    for budget in [4096usize, 150, 61] {
        let plan = crate::plan::build(&reqs, 512, budget, true).unwrap();
        for (bi, b) in plan.batches.iter().enumerate() {
            checked.0 += 1;
            checked.1 += (b.layout.past_len > 0) as usize;
            check_attention(&format!("planned batch {bi} (budget {budget})"), &b.layout, 1, 80, 100 + bi as u64);
        }
    }
    assert!(checked.1 > 0, "no planned batch used the K/V cache: {checked:?}");
}

// ---------------------------------------------------------------------------------------------------
// logsoftmax_gather.cu: kernel 1 (logsoftmax_stats), one 1024-thread block per row.

#[derive(Clone, Copy)]
struct Lse {
    m: f32,
    s: f32,
    arg: u32,
}

fn lse_push(st: &mut Lse, x: f32, i: u32) {
    if x > st.m {
        st.s = st.s * (st.m - x).exp() + 1.0;
        st.m = x;
        st.arg = i;
    } else {
        st.s += (x - st.m).exp();
    }
}

fn lse_merge(a: &mut Lse, b: Lse) {
    let mx = a.m.max(b.m);
    if b.m > a.m || (b.m == a.m && b.arg < a.arg) {
        a.arg = b.arg;
    }
    a.s = a.s * (a.m - mx).exp() + b.s * (b.m - mx).exp();
    a.m = mx;
}

/// Butterfly (__shfl_xor_sync, offsets 16..1) over 32 lanes: every lane merges with its partner's old value.
fn warp_merge(v: &mut [Lse]) {
    let mut o = 16;
    while o > 0 {
        let old = v.to_vec();
        for (lane, st) in v.iter_mut().enumerate() {
            lse_merge(st, old[lane ^ o]);
        }
        o >>= 1;
    }
}

/// (m, log s, argmax) of one row as the kernel computes them with `threads` threads.
fn stats_emulated(row: &[f32], threads: usize) -> (f32, f32, u32) {
    let v = row.len();
    let init = Lse {
        m: -f32::MAX,
        s: 0.0,
        arg: u32::MAX,
    };
    let mut st = vec![init; threads];
    for (tid, s) in st.iter_mut().enumerate() {
        if v % 4 == 0 {
            let mut j = tid;
            while j < v / 4 {
                for e in 0..4 {
                    lse_push(s, row[4 * j + e], (4 * j + e) as u32);
                }
                j += threads;
            }
        } else {
            let mut j = tid;
            while j < v {
                lse_push(s, row[j], j as u32);
                j += threads;
            }
        }
    }
    let warps = threads / 32;
    for w in st.chunks_mut(32) {
        warp_merge(w);
    }
    let mut t: Vec<Lse> = (0..32).map(|lane| if lane < warps { st[lane * 32] } else { init }).collect();
    warp_merge(&mut t);
    let arg = if t[0].arg == u32::MAX { 0 } else { t[0].arg };
    (t[0].m, t[0].s.ln(), arg)
}

#[test]
fn logsoftmax_stats_algorithm_takes_the_first_maximum() {
    let mut rng = Rng(9);
    // (V, tied indices): ties inside one thread, across lanes, across warps, and -- the hard case -- a
    // first maximum held by a *later* thread than the second one (thread 1 holds index 6, thread 0 holds
    // 4096 on its second float4 pass; in the scalar path at V 2049, thread 2 holds
    // index 2 and thread 1 holds 1025).
    let cases: Vec<(usize, Vec<usize>)> = vec![
        (50304, vec![6, 4096]),
        (50304, vec![4097, 6, 50303]),
        (50688, vec![1, 2, 3]),
        (50688, vec![50687, 40000]),
        (2049, vec![1025, 2, 2048]),
        (1001, vec![5, 900]),
        (3, vec![2, 1]),
        (1, vec![0]),
        (4100, vec![4099, 4096]),
    ];
    for (v, ties) in cases {
        let mut row: Vec<f32> = rng.values(v, 30.0).iter().map(|x| 1000.0 + x).collect();
        for &i in &ties {
            row[i] = 2000.0;
        }
        let want_arg = *ties.iter().min().unwrap() as u32;
        for threads in [1024usize, 256, 32] {
            let (m, log_s, arg) = stats_emulated(&row, threads);
            assert_eq!(arg, want_arg, "V {v}, ties at {ties:?}, {threads} threads");
            assert_eq!(m, 2000.0);
            // Against the CPU twin's logsumexp (f64).
            let lse: f64 = 2000.0 + row.iter().map(|&x| (x as f64 - 2000.0).exp()).sum::<f64>().ln();
            assert!(((m + log_s) as f64 - lse).abs() < 1e-4, "V {v}: {} vs {lse}", m + log_s);
        }
        let logits = CpuTensor::new(1, v, row.clone());
        let cpu = Cpu.logsoftmax_gather(&logits, &[(0, want_arg)]).unwrap();
        assert!(cpu[0].is_greedy, "CPU twin: first maximum");
    }
}
