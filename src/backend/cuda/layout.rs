//! Host-side planning for the CUDA kernels: the attention work tables built from a `BatchLayout`, and the
//! launch geometry each kernel assumes. Pure Rust, no device: unit-tested on any machine.

use crate::backend::BatchLayout;
use crate::error::{Error, Result};

/// Query rows per attention block; must equal ATT_TILE_Q in kernels/attention.cu (4 warps x 4 rows).
pub const ATTN_TILE_Q: usize = 16;
/// Keys per shared-memory tile; must equal ATT_TILE_K in kernels/attention.cu.
pub const ATTN_TILE_K: usize = 32;
/// Threads per attention block; must equal ATT_WARPS * 32 in kernels/attention.cu.
pub const ATTN_THREADS: u32 = 128;
/// Largest head dim the attention kernel handles (8 output dims per lane).
pub const ATTN_MAX_HEAD_DIM: usize = 256;
/// Query rows per tensor-core attention block; must equal ATC_BM in kernels/attention_tc.cu (4 warps x 16).
pub const ATTN_TC_TILE_Q: usize = 64;
/// Keys per tensor-core key tile; must equal ATC_BN in kernels/attention_tc.cu.
pub const ATTN_TC_TILE_K: usize = 64;
/// Head dims the tensor-core attention kernel is compiled for (every Pythia size).
pub const ATTN_TC_HEAD_DIMS: [usize; 5] = [32, 64, 80, 128, 256];

/// The attention kernel's work tables for one packed batch (see the comment atop kernels/attention.cu).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AttnTables {
    /// 4 u32 per tile: (first batch row, rows in the tile, segment's first batch row, segment index).
    pub tiles: Vec<u32>,
    /// segment s's ancestor ranges are `ranges[2*seg_off[s] .. 2*seg_off[s+1]]` (pairs).
    pub seg_off: Vec<u32>,
    /// (first key index, key count) pairs, root first, in key index space [past | batch].
    pub ranges: Vec<u32>,
}

impl AttnTables {
    pub fn num_tiles(&self) -> usize {
        self.tiles.len() / 4
    }

    /// Segment `s`'s ancestor ranges, as (start, len) pairs laid flat.
    fn ancestors(&self, s: usize) -> &[u32] {
        &self.ranges[2 * self.seg_off[s] as usize..2 * self.seg_off[s + 1] as usize]
    }
}

/// The tensor-core attention kernel's query tiles (see kernels/attention_tc.cu).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TcTiles {
    /// 4 u32 per tile: (first batch row, rows <= 64, first batch row of the tile's own keys, a segment whose
    /// ancestor ranges every row of the tile shares).
    pub tiles: Vec<u32>,
    /// [T] the first batch row of each row's segment.
    pub row_seg: Vec<u32>,
}

impl TcTiles {
    pub fn num_tiles(&self) -> usize {
        self.tiles.len() / 4
    }
}

/// Cut `layout` (already checked by `attention_tables`, whose `tables` these are) into tiles of up to 64
/// consecutive rows that share one ancestor list: runs of adjacent sibling segments (the answers under one
/// question) are packed together, so short segments do not each leave a tile mostly empty.
pub fn tc_tiles(layout: &BatchLayout, tables: &AttnTables) -> TcTiles {
    let mut row_seg = vec![0u32; layout.tokens()];
    let mut order: Vec<usize> = (0..layout.segments.len()).filter(|&s| layout.segments[s].q_len > 0).collect();
    order.sort_by_key(|&s| layout.segments[s].q_start);
    for &s in &order {
        let seg = &layout.segments[s];
        row_seg[seg.q_start as usize..(seg.q_start + seg.q_len) as usize].fill(seg.q_start);
    }
    let mut tiles = vec![];
    let mut i = 0;
    while i < order.len() {
        // A run of adjacent segments with the same ancestors: rows [start, end).
        let first = order[i];
        let start = layout.segments[first].q_start;
        let mut end = start + layout.segments[first].q_len;
        let mut j = i + 1;
        while j < order.len() && layout.segments[order[j]].q_start == end && tables.ancestors(order[j]) == tables.ancestors(first) {
            end += layout.segments[order[j]].q_len;
            j += 1;
        }
        let mut row = start;
        while row < end {
            let rows = (ATTN_TC_TILE_Q as u32).min(end - row);
            tiles.extend([row, rows, row_seg[row as usize], first as u32]);
            row += rows;
        }
        i = j;
    }
    TcTiles { tiles, row_seg }
}

/// Dynamic shared memory of one tensor-core attention block: Q [64][hd+8] + K, V [2][64][hd+8] of 2 bytes.
pub fn attention_tc_smem_bytes(hd: usize) -> usize {
    2 * (ATTN_TC_TILE_Q + 4 * ATTN_TC_TILE_K) * (hd + 8)
}

/// Check `layout` (every row in exactly one segment, ancestor ranges inside the key space, one position per
/// row) and cut each segment into query tiles of at most ATTN_TILE_Q rows. The kernel reads keys at the
/// indices given here without further checks, so every range is validated.
pub fn attention_tables(layout: &BatchLayout) -> Result<AttnTables> {
    let t = layout.tokens();
    let keys = layout.past_len as u64 + t as u64;
    if keys > u32::MAX as u64 {
        return Err(Error::invalid(format!("attention: {keys} keys do not fit 32-bit indices")));
    }
    let mut seen = vec![false; t];
    let mut out = AttnTables {
        tiles: vec![],
        seg_off: vec![0],
        ranges: vec![],
    };
    for (si, seg) in layout.segments.iter().enumerate() {
        let (start, len) = (seg.q_start as usize, seg.q_len as usize);
        if start + len > t {
            return Err(Error::invalid(format!(
                "attention: segment {si} covers rows {start}..{} of a {t}-row batch",
                start + len
            )));
        }
        for (r, s) in seen[start..start + len].iter_mut().enumerate() {
            if *s {
                return Err(Error::invalid(format!("attention: row {} is in two segments", start + r)));
            }
            *s = true;
        }
        // Ancestors are earlier keys: a range reaching the segment's own first key (or past it) would let a
        // query see itself twice or see later rows.
        let own_first = layout.past_len as u64 + start as u64;
        for &(a_start, a_len) in &seg.ancestors {
            if a_start as u64 + a_len as u64 > own_first {
                return Err(Error::invalid(format!(
                    "attention: segment {si} has ancestor keys {a_start}..{} at or past its own first key {own_first} \
                     (past {} + batch {t} keys)",
                    a_start as u64 + a_len as u64,
                    layout.past_len
                )));
            }
            if a_len > 0 {
                out.ranges.extend([a_start, a_len]);
            }
        }
        out.seg_off.push((out.ranges.len() / 2) as u32);
        let mut row = start;
        while row < start + len {
            let rows = ATTN_TILE_Q.min(start + len - row);
            out.tiles.extend([row as u32, rows as u32, seg.q_start, si as u32]);
            row += rows;
        }
    }
    if let Some(r) = seen.iter().position(|s| !s) {
        return Err(Error::invalid(format!(
            "attention: segments do not cover every row of the batch (row {r} is in none)"
        )));
    }
    if layout.positions.len() != t {
        return Err(Error::invalid(format!("layout: {} positions for {t} rows", layout.positions.len())));
    }
    Ok(out)
}

/// Output dims per lane of the attention variant for head dim `hd` (a compiled variant: 1, 2, 3, 4 or 8).
pub fn attention_dims_per_lane(hd: usize) -> Result<usize> {
    match hd.div_ceil(32) {
        0 => Err(Error::invalid("attention: head dim 0")),
        n @ 1..=4 => Ok(n),
        5..=8 => Ok(8),
        _ => Err(Error::invalid(format!(
            "attention: head dim {hd} exceeds the kernel's maximum {ATTN_MAX_HEAD_DIM}"
        ))),
    }
}

/// Dynamic shared memory of one attention block: Q [16][hd] + K [32][hd|1] + V [32][hd] floats.
pub fn attention_smem_bytes(hd: usize) -> usize {
    4 * (ATTN_TILE_Q * hd + ATTN_TILE_K * (hd | 1) + ATTN_TILE_K * hd)
}

/// Block size and grid for the 1-D grid-stride kernels (elementwise ops): 256 threads, at most 2^20 blocks.
pub fn grid_1d(n: u64) -> (u32, u32) {
    let blocks = n.div_ceil(256).clamp(1, 1 << 20);
    (blocks as u32, 256)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::AttnSegment;

    type Seg<'a> = (u32, u32, &'a [(u32, u32)]);

    fn layout(past_len: usize, segs: &[Seg]) -> BatchLayout {
        let t: u32 = segs.iter().map(|s| s.1).sum();
        BatchLayout {
            positions: (0..t).collect(),
            segments: segs
                .iter()
                .map(|&(q_start, q_len, a)| AttnSegment {
                    q_start,
                    q_len,
                    ancestors: a.to_vec(),
                })
                .collect(),
            past_len,
        }
    }

    #[test]
    fn segments_are_cut_into_tiles_of_16_rows() {
        // root of 40 rows, then two children of 3 and 17 rows under it, and a cached range of 5 keys.
        let l = layout(5, &[(0, 40, &[(0, 5)]), (40, 3, &[(0, 5), (5, 40)]), (43, 17, &[(0, 5), (5, 40)])]);
        let t = attention_tables(&l).unwrap();
        assert_eq!(t.num_tiles(), 3 + 1 + 2);
        assert_eq!(&t.tiles[..12], &[0, 16, 0, 0, 16, 16, 0, 0, 32, 8, 0, 0]);
        assert_eq!(&t.tiles[12..16], &[40, 3, 40, 1]);
        assert_eq!(&t.tiles[16..], &[43, 16, 43, 2, 59, 1, 43, 2]);
        assert_eq!(t.seg_off, vec![0, 1, 3, 5]);
        assert_eq!(t.ranges, vec![0, 5, 0, 5, 5, 40, 0, 5, 5, 40]);
    }

    #[test]
    fn siblings_share_tensor_core_tiles() {
        // A 70-row root, a 5-row question under it, four 3-row answers under the question, then a second
        // question (same ancestors as the first, but not adjacent to it) with one 100-row answer.
        let root: &[(u32, u32)] = &[];
        let q: &[(u32, u32)] = &[(0, 70)];
        let a1: &[(u32, u32)] = &[(0, 70), (70, 5)];
        let a2: &[(u32, u32)] = &[(0, 70), (87, 4)];
        let l = layout(
            0,
            &[
                (0, 70, root),
                (70, 5, q),
                (75, 3, a1),
                (78, 3, a1),
                (81, 3, a1),
                (84, 3, a1),
                (87, 4, q),
                (91, 100, a2),
            ],
        );
        let t = attention_tables(&l).unwrap();
        let tc = tc_tiles(&l, &t);
        assert_eq!(
            tc.tiles,
            vec![
                0, 64, 0, 0, // the root, cut at 64 rows
                64, 6, 0, 0, //
                70, 5, 70, 1, // the first question alone (the next segment's ancestors differ)
                75, 12, 75, 2, // its four answers in one tile, own keys from the first answer's start
                87, 4, 87, 6, // the second question
                91, 64, 91, 7, // its long answer, cut at 64 rows
                155, 36, 91, 7,
            ]
        );
        assert_eq!(&tc.row_seg[74..80], &[70, 75, 75, 75, 78, 78]);
        assert_eq!(tc.row_seg.len(), 191);
        assert!(attention_tc_smem_bytes(256) <= 227 * 1024 && attention_tc_smem_bytes(64) <= 48 * 1024);
    }

    #[test]
    fn bad_layouts_are_errors() {
        assert!(attention_tables(&layout(0, &[(0, 4, &[]), (3, 2, &[])])).is_err()); // overlap
        assert!(attention_tables(&layout(0, &[(0, 4, &[]), (5, 1, &[])])).is_err()); // outside
        assert!(attention_tables(&layout(2, &[(0, 4, &[(0, 7)])])).is_err()); // ancestor past the keys
        let mut l = layout(0, &[(0, 4, &[])]);
        l.positions.pop();
        assert!(attention_tables(&l).is_err());
    }

    #[test]
    fn head_dims_map_to_compiled_variants() {
        let dpl: Vec<usize> = [16, 32, 64, 80, 96, 128, 160, 256]
            .iter()
            .map(|&hd| attention_dims_per_lane(hd).unwrap())
            .collect();
        assert_eq!(dpl, vec![1, 1, 2, 3, 3, 4, 8, 8]);
        assert!(attention_dims_per_lane(257).is_err());
        // 48 KB without opting in, up to hd 128; hd 256 needs the opt-in (82 KB, under every sm_80+ limit).
        assert!(attention_smem_bytes(128) <= 48 * 1024);
        assert!(attention_smem_bytes(256) > 48 * 1024 && attention_smem_bytes(256) <= 99 * 1024);
    }
}
