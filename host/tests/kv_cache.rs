//! The host KV cache: F16/F32 round trips, strides, sequence isolation, ordering and context
//! errors, truncation, and the ABI trait object plugins see; then the block pool: paged views
//! read through `KvRef::row_offset`, interleaved sequences, prefix reuse and its index, LRU
//! eviction, copy-on-write, reservations, and a random-operation property test against a model
//! of what every sequence must read back.

use half::f16;
use llmhost::kv_cache::{KvCache, KvError, DEFAULT_BLOCK_TOKENS};
use plugin_api::abi_stable::std_types::{RResult, RSlice};
use plugin_api::{GgmlType, KvRef, KvShape};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};

const SHAPE: KvShape = KvShape {
    n_layer: 3,
    k_dim: 8, // 2 KV heads of 4
    v_dim: 8,
    head_dim: 4,
};
const HEAD_DIM: usize = 4;
const N_LAYER: usize = SHAPE.n_layer as usize;

fn row(seed: u32, n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((seed * 31 + i as u32 * 7) % 97) as f32 * 0.137 - 6.1 + 1e-4 * i as f32)
        .collect()
}

/// `n` elements of logical token `token`, from its head 0 on (heads are contiguous).
fn decode(r: &KvRef<'_>, token: usize, n: usize) -> Vec<f32> {
    assert_eq!(
        r.row_offset(token, 1),
        r.row_offset(token, 0) + r.head_stride
    );
    let bytes = &r.data.as_slice()[r.row_offset(token, 0)..];
    match r.dtype {
        GgmlType::F16 => (0..n)
            .map(|i| f16::from_ne_bytes([bytes[2 * i], bytes[2 * i + 1]]).to_f32())
            .collect(),
        GgmlType::F32 => (0..n)
            .map(|i| f32::from_ne_bytes(bytes[4 * i..4 * i + 4].try_into().unwrap()))
            .collect(),
        other => panic!("unexpected {other:?}"),
    }
}

fn fill(kv: &mut KvCache, seq: u32, n: usize, salt: u32) {
    for pos in 0..n {
        for layer in 0..N_LAYER {
            let s = salt + (pos * 10 + layer) as u32;
            kv.store(layer, seq, pos, &row(s, 8), &row(s + 1000, 8))
                .unwrap();
        }
    }
}

#[test]
fn f16_round_trip_rounds_to_nearest_even_like_half() {
    let mut kv = KvCache::new(SHAPE, 16, GgmlType::F16, HEAD_DIM).unwrap();
    // Values that are not representable in f16, including exact ties.
    let k = [
        1.0 + 1.0 / 2048.0, // tie between 1.0 and 1.0009765625: even → 1.0
        1.0 + 3.0 / 2048.0, // tie: even → 1.001953125
        0.1,
        -65519.0,
        70000.0, // overflows to +∞
        1e-8,    // subnormal / zero
        f32::NAN,
        -0.0,
    ];
    let v = row(1, 8);
    kv.store(0, 0, 0, &k, &v).unwrap();
    let view = kv.view(0, 0, 1).unwrap();
    assert_eq!(view.len, 1);
    assert_eq!(view.k.dtype, GgmlType::F16);
    assert_eq!(view.k.token_stride, 16);
    assert_eq!(view.k.head_stride, 8);
    // One block of the default size for 16 tokens, handed over as a contiguous run.
    assert_eq!(kv.block_table(0), &[0]);
    assert_eq!(view.k.block_tokens, 0);
    assert_eq!(view.k.data.len(), DEFAULT_BLOCK_TOKENS * 16);
    let bytes = &view.k.data.as_slice()[view.k.row_offset(0, 0)..];
    for (i, &x) in k.iter().enumerate() {
        let got = u16::from_ne_bytes([bytes[2 * i], bytes[2 * i + 1]]);
        let want = f16::from_f32(x).to_bits();
        if x.is_nan() {
            assert!(f16::from_bits(got).is_nan());
        } else {
            assert_eq!(got, want, "element {i} ({x})");
        }
    }
    assert_eq!(decode(&view.k, 0, 2), vec![1.0, 1.0 + 1.0 / 512.0]);
    let got_v = decode(&view.v, 0, 8);
    for (g, &x) in got_v.iter().zip(&v) {
        assert_eq!(*g, f16::from_f32(x).to_f32());
    }
}

#[test]
fn f32_round_trip_is_exact() {
    let mut kv = KvCache::new(SHAPE, 4, GgmlType::F32, HEAD_DIM).unwrap();
    fill(&mut kv, 7, 4, 0);
    for layer in 0..3 {
        let view = kv.view(layer, 7, 4).unwrap();
        assert_eq!(view.k.token_stride, 32);
        assert_eq!(view.k.head_stride, 16);
        assert_eq!(kv.block_table(7).len(), 1);
        // One block of 16 rows, though the context is only 4.
        assert_eq!(view.v.data.len(), 16 * 32);
        for pos in 0..4 {
            let s = (pos * 10 + layer) as u32;
            assert_eq!(decode(&view.k, pos, 8), row(s, 8));
            assert_eq!(decode(&view.v, pos, 8), row(s + 1000, 8));
        }
    }
    assert_eq!(kv.dtype(), GgmlType::F32);
    assert_eq!(kv.n_head_kv(), 2);
}

#[test]
fn sequences_are_isolated() {
    // Two sequences need a pool of more than one sequence's blocks.
    let mut kv = KvCache::paged(SHAPE, 8, GgmlType::F16, HEAD_DIM, 4, 4).unwrap();
    let block_bytes = 3 * 4 * (8 + 8) * 2;
    assert_eq!(kv.bytes_allocated(), 4 * block_bytes, "the pool, up front");
    assert_eq!(kv.bytes_used(), 0);
    fill(&mut kv, 1, 5, 0);
    fill(&mut kv, 42, 3, 500);
    assert_eq!(kv.seq_len(1), 5);
    assert_eq!(kv.seq_len(42), 3);
    assert_eq!(kv.seq_len(9), 0);
    assert_eq!(kv.seq_ids().collect::<Vec<_>>(), vec![1, 42]);
    assert_eq!(kv.bytes_per_sequence(), 3 * 8 * (8 + 8) * 2);
    assert_eq!(kv.blocks_used(), 3);
    assert_eq!(kv.bytes_used(), 3 * block_bytes);

    let a = kv.view(2, 1, 3).unwrap();
    let b = kv.view(2, 42, 3).unwrap();
    for pos in 0..3 {
        assert_ne!(decode(&a.k, pos, 8), decode(&b.k, pos, 8));
        let s = 500 + (pos * 10 + 2) as u32;
        let want: Vec<f32> = row(s, 8)
            .iter()
            .map(|&x| f16::from_f32(x).to_f32())
            .collect();
        assert_eq!(decode(&b.k, pos, 8), want);
    }

    kv.clear_seq(1);
    assert_eq!(kv.seq_len(1), 0);
    assert_eq!(kv.seq_len(42), 3);
    assert_eq!(kv.blocks_used(), 1);
    assert_eq!(kv.blocks_free(), 3);
    // An unknown sequence has an empty view and nothing more.
    assert_eq!(kv.view(0, 1, 0).unwrap().len, 0);
    assert!(kv.view(0, 1, 1).is_err());
}

#[test]
fn context_full_error_names_position_and_size() {
    let mut kv = KvCache::new(SHAPE, 4, GgmlType::F16, HEAD_DIM).unwrap();
    fill(&mut kv, 0, 4, 0);
    let err = kv.store(0, 0, 4, &row(0, 8), &row(1, 8)).unwrap_err();
    assert_eq!(err, KvError::ContextFull { pos: 4, n_ctx: 4 });
    assert_eq!(
        err.to_string(),
        "context full: position 4, context size 4; raise -c/--ctx-size"
    );
}

#[test]
fn positions_must_not_leave_holes() {
    let mut kv = KvCache::new(SHAPE, 8, GgmlType::F16, HEAD_DIM).unwrap();
    let err = kv.store(0, 3, 1, &row(0, 8), &row(1, 8)).unwrap_err();
    assert!(
        matches!(err, KvError::OutOfOrder { pos: 1, len: 0, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("hole"));
    kv.store(0, 3, 0, &row(0, 8), &row(1, 8)).unwrap();
    assert!(kv.store(0, 3, 2, &row(0, 8), &row(1, 8)).is_err());
    // Layers advance independently; seq_len is what every layer holds.
    kv.store(0, 3, 1, &row(0, 8), &row(1, 8)).unwrap();
    assert_eq!(kv.seq_len(3), 0);
    kv.store(1, 3, 0, &row(0, 8), &row(1, 8)).unwrap();
    kv.store(2, 3, 0, &row(0, 8), &row(1, 8)).unwrap();
    assert_eq!(kv.seq_len(3), 1);
    // Rewriting a stored position overwrites it in place.
    kv.store(0, 3, 0, &row(77, 8), &row(78, 8)).unwrap();
    let v = kv.view(0, 3, 2).unwrap();
    assert_eq!(
        decode(&v.k, 0, 8),
        row(77, 8)
            .iter()
            .map(|&x| f16::from_f32(x).to_f32())
            .collect::<Vec<_>>()
    );
    // Viewing past what is stored is an error, not garbage.
    assert!(matches!(
        kv.view(1, 3, 2),
        Err(KvError::ViewTooLong { stored: 1, .. })
    ));
}

#[test]
fn bad_arguments_are_errors() {
    let mut kv = KvCache::new(SHAPE, 8, GgmlType::F16, HEAD_DIM).unwrap();
    assert!(matches!(
        kv.store(3, 0, 0, &row(0, 8), &row(0, 8)),
        Err(KvError::BadLayer { layer: 3, .. })
    ));
    assert!(matches!(
        kv.store(0, 0, 0, &row(0, 7), &row(0, 8)),
        Err(KvError::BadRow { what: "K", .. })
    ));
    assert!(matches!(
        kv.store(0, 0, 0, &row(0, 8), &row(0, 9)),
        Err(KvError::BadRow { what: "V", .. })
    ));
    assert!(kv.view(5, 0, 0).is_err());
    assert_eq!(kv.seq_ids().count(), 0, "failed stores create no sequence");

    assert!(matches!(
        KvCache::new(SHAPE, 8, GgmlType::Q8_0, HEAD_DIM),
        Err(KvError::UnsupportedType(GgmlType::Q8_0))
    ));
    assert!(KvCache::new(SHAPE, 0, GgmlType::F16, HEAD_DIM).is_err());
    assert!(KvCache::new(SHAPE, 8, GgmlType::F16, 3).is_err());
    assert!(KvCache::new(SHAPE, 8, GgmlType::F16, 0).is_err());
    assert!(KvCache::new(SHAPE, 8, GgmlType::F16, 2).is_err()); // differs from shape.head_dim
    assert!(KvCache::paged(SHAPE, 8, GgmlType::F16, HEAD_DIM, 0, 4).is_err());
    assert!(KvCache::paged(SHAPE, 8, GgmlType::F16, HEAD_DIM, 4, 0).is_err());
    let empty = KvShape {
        n_layer: 0,
        ..SHAPE
    };
    assert!(KvCache::new(empty, 8, GgmlType::F16, HEAD_DIM).is_err());
    // Sizes that overflow are refused up front, with one line.
    let huge = KvShape {
        n_layer: u32::MAX,
        k_dim: u32::MAX - 1,
        v_dim: u32::MAX - 1,
        head_dim: 1,
    };
    let err = KvCache::new(huge, usize::MAX / 2, GgmlType::F32, 1).unwrap_err();
    assert!(matches!(err, KvError::TooLarge { .. }));
    assert!(!err.to_string().contains('\n'));
    // A pool too large to address is refused the same way, even when one sequence fits.
    let err = KvCache::paged(SHAPE, 8, GgmlType::F32, HEAD_DIM, 16, usize::MAX / 64).unwrap_err();
    assert!(matches!(err, KvError::TooLarge { .. }), "{err}");
}

#[test]
fn truncate_drops_the_tail() {
    let mut kv = KvCache::new(SHAPE, 8, GgmlType::F16, HEAD_DIM).unwrap();
    fill(&mut kv, 0, 6, 0);
    let view = kv.view(1, 0, 2).unwrap();
    let before: Vec<_> = (0..2).map(|p| decode(&view.k, p, 8)).collect();
    kv.truncate(0, 2);
    assert_eq!(kv.seq_len(0), 2);
    assert!(kv.view(1, 0, 3).is_err());
    let view = kv.view(1, 0, 2).unwrap();
    assert_eq!(
        (0..2).map(|p| decode(&view.k, p, 8)).collect::<Vec<_>>(),
        before
    );
    // Truncating to more than stored changes nothing; unknown sequences are fine.
    kv.truncate(0, 10);
    assert_eq!(kv.seq_len(0), 2);
    kv.truncate(99, 0);
    // Writing resumes right after the kept prefix.
    assert!(kv.store(0, 0, 3, &row(0, 8), &row(0, 8)).is_err());
    kv.store(0, 0, 2, &row(0, 8), &row(0, 8)).unwrap();
    // The block stays with the sequence until it is truncated to 0 or cleared; the pool's
    // memory stays allocated.
    assert_eq!(kv.blocks_used(), 1);
    kv.truncate(0, 0);
    assert_eq!(kv.blocks_used(), 0);
    kv.clear();
    assert_eq!(kv.seq_ids().count(), 0);
    assert_eq!(kv.blocks_free(), kv.n_blocks());
    assert_eq!(kv.bytes_allocated(), 3 * 16 * (8 + 8) * 2);
}

#[test]
fn the_abi_trait_object_reaches_the_same_cache() {
    let mut kv = KvCache::new(SHAPE, 4, GgmlType::F16, HEAD_DIM).unwrap();
    {
        let mut abi = kv.as_abi();
        assert_eq!(abi.dtype(), GgmlType::F16);
        let (k, v) = (row(3, 8), row(4, 8));
        let r = abi.store(0, 5, 0, RSlice::from_slice(&k), RSlice::from_slice(&v));
        assert!(matches!(r, RResult::ROk(())));
        match abi.store(0, 5, 9, RSlice::from_slice(&k), RSlice::from_slice(&v)) {
            RResult::RErr(e) => assert!(e.as_str().starts_with("context full: position 9")),
            RResult::ROk(()) => panic!("stored past the context"),
        }
        match abi.view(0, 5, 1) {
            RResult::ROk(view) => {
                assert_eq!(view.len, 1);
                assert_eq!(view.k.head_stride, 8);
                assert_eq!(view.k.block_tokens, 0, "one block: contiguous");
            }
            RResult::RErr(e) => panic!("{e}"),
        }
        assert!(matches!(abi.view(0, 5, 2), RResult::RErr(_)));
    }
    assert_eq!(kv.seq_len(5), 0); // layers 1 and 2 not written yet
    assert_eq!(kv.view(0, 5, 1).unwrap().len, 1);
}

// ---- The block pool ------------------------------------------------------------------------

/// The K (`which` 0) or V (1) row that a model would compute at `pos` of a sequence holding
/// `tokens`: it depends on every token up to `pos`, as real keys do, so a block reused after
/// the wrong prefix reads differently. Small integers, exact in F16 too.
fn content(tokens: &[u32], pos: usize, layer: usize, which: u64) -> Vec<f32> {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for &t in &tokens[..=pos] {
        h = (h ^ u64::from(t)).wrapping_mul(0x100_0000_01b3);
    }
    h = (h ^ (layer as u64 * 2 + which)).wrapping_mul(0x100_0000_01b3);
    (0..8)
        .map(|i| ((h >> (i * 7)) % 1021) as f32 - 510.0)
        .collect()
}

/// Stores positions `from..tokens.len()` of `seq` in every layer.
fn store_tokens(kv: &mut KvCache, seq: u32, from: usize, tokens: &[u32]) -> Result<(), KvError> {
    for pos in from..tokens.len() {
        for layer in 0..N_LAYER {
            let (k, v) = (
                content(tokens, pos, layer, 0),
                content(tokens, pos, layer, 1),
            );
            kv.store(layer, seq, pos, &k, &v)?;
        }
    }
    Ok(())
}

/// `seq` holds exactly `tokens`, read back through the paged views.
fn assert_holds(kv: &KvCache, seq: u32, tokens: &[u32]) {
    assert_eq!(kv.seq_len(seq), tokens.len(), "length of sequence {seq}");
    for layer in 0..N_LAYER {
        let view = kv.view(layer, seq, tokens.len()).unwrap();
        assert_eq!(kv.block_table(seq).len(), kv.blocks_for(tokens.len()));
        for pos in 0..tokens.len() {
            let at = format!("sequence {seq}, layer {layer}, position {pos}");
            assert_eq!(
                decode(&view.k, pos, 8),
                content(tokens, pos, layer, 0),
                "K {at}"
            );
            assert_eq!(
                decode(&view.v, pos, 8),
                content(tokens, pos, layer, 1),
                "V {at}"
            );
        }
    }
}

/// The block table of `seq`.
fn table(kv: &KvCache, seq: u32) -> Vec<u32> {
    kv.block_table(seq).to_vec()
}

/// Tokens `start, start + 1, …` (`n` of them).
fn run(start: u32, n: usize) -> Vec<u32> {
    (start..start + n as u32).collect()
}

#[test]
fn paged_rows_round_trip_across_block_boundaries() {
    for dtype in [GgmlType::F32, GgmlType::F16] {
        let mut kv = KvCache::paged(SHAPE, 40, dtype, HEAD_DIM, 4, 10).unwrap();
        assert_eq!(
            (kv.block_tokens(), kv.n_blocks(), kv.blocks_free()),
            (4, 10, 10)
        );
        let tokens = run(100, 37);
        // A second sequence grabs blocks in between, so the first one's table is not 0, 1, 2…
        store_tokens(&mut kv, 3, 0, &tokens[..6]).unwrap();
        store_tokens(&mut kv, 8, 0, &[1]).unwrap();
        store_tokens(&mut kv, 3, 6, &tokens[..10]).unwrap();
        kv.clear_seq(8);
        store_tokens(&mut kv, 3, 10, &tokens).unwrap();
        assert_holds(&kv, 3, &tokens);
        let t = table(&kv, 3);
        assert_eq!(t.len(), 10);
        assert_eq!(t[..3], [0, 1, 3], "block 2 went to sequence 8");
        assert_eq!(
            t.iter().collect::<BTreeSet<_>>().len(),
            10,
            "distinct blocks"
        );
        let elem = if dtype == GgmlType::F32 { 4 } else { 2 };
        let view = kv.view(1, 3, 37).unwrap();
        assert_eq!(view.k.data.len(), 40 * 8 * elem, "the layer's whole arena");
        assert_eq!(view.k.token_stride, 8 * elem);
        // Logical token 9 is row 1 of the third block.
        assert_eq!(view.k.row_offset(9, 0), (t[2] as usize * 4 + 1) * 8 * elem);
        // Shorter views carry only the blocks they cover: 0 and 1 follow each other, so
        // they come as one contiguous run.
        let short = kv.view(1, 3, 5).unwrap();
        assert_eq!(short.k.block_tokens, 0);
        for pos in 0..5 {
            assert_eq!(decode(&short.k, pos, 8), decode(&view.k, pos, 8));
        }
        let longer = kv.view(0, 3, 9).unwrap();
        assert_eq!(longer.k.blocks.as_slice(), &t[..3], "0, 1, 3: paged");
        assert_eq!(kv.view(0, 3, 0).unwrap().k.data.len(), view.k.data.len());
        assert_eq!((kv.blocks_used(), kv.blocks_free()), (10, 0));
        kv.check_consistency().unwrap();
    }
}

#[test]
fn one_sequence_keeps_blocks_in_order() {
    // `run`, `perplexity` and `bench` use one sequence that they truncate and clear: its table
    // stays 0, 1, 2…, so its rows lie in logical order from the arena's start.
    let mut kv = KvCache::new(SHAPE, 64, GgmlType::F32, HEAD_DIM).unwrap();
    let tokens = run(0, 64);
    let in_order =
        |kv: &KvCache| table(kv, 0) == (0..kv.blocks_for(kv.seq_len(0)) as u32).collect::<Vec<_>>();
    store_tokens(&mut kv, 0, 0, &tokens[..40]).unwrap();
    assert!(in_order(&kv));
    kv.truncate(0, 10);
    store_tokens(&mut kv, 0, 10, &tokens[..50]).unwrap();
    assert!(in_order(&kv));
    kv.clear_seq(0);
    store_tokens(&mut kv, 0, 0, &tokens).unwrap();
    assert!(in_order(&kv));
    assert_holds(&kv, 0, &tokens);
}

#[test]
fn interleaved_sequences_do_not_mix() {
    let mut kv = KvCache::paged(SHAPE, 32, GgmlType::F32, HEAD_DIM, 3, 16).unwrap();
    let prompts: Vec<Vec<u32>> = (0..4).map(|s| run(s * 1000, 7 + 2 * s as usize)).collect();
    // Position by position and layer by layer, round robin over the sequences, as a batch
    // spanning several sequences writes them.
    for pos in 0..13 {
        for layer in 0..N_LAYER {
            for (seq, tokens) in prompts.iter().enumerate() {
                if pos < tokens.len() {
                    let (k, v) = (
                        content(tokens, pos, layer, 0),
                        content(tokens, pos, layer, 1),
                    );
                    kv.store(layer, seq as u32, pos, &k, &v).unwrap();
                }
            }
        }
    }
    for (seq, tokens) in prompts.iter().enumerate() {
        assert_holds(&kv, seq as u32, tokens);
    }
    assert_eq!(
        table(&kv, 0),
        [0, 4, 8],
        "blocks handed out in request order"
    );
    assert_eq!(kv.blocks_used(), 3 + 3 + 4 + 5);
    // Freed blocks go to new sequences without disturbing the rest.
    kv.clear_seq(1);
    kv.clear_seq(2);
    let late = run(5000, 20);
    store_tokens(&mut kv, 9, 0, &late).unwrap();
    assert_holds(&kv, 9, &late);
    assert_holds(&kv, 0, &prompts[0]);
    assert_holds(&kv, 3, &prompts[3]);
    assert_eq!(kv.blocks_used(), 3 + 5 + 7);
    kv.check_consistency().unwrap();
}

#[test]
fn reuse_prefix_shares_blocks_and_reads_identically() {
    let mut kv = KvCache::paged(SHAPE, 32, GgmlType::F32, HEAD_DIM, 4, 12).unwrap();
    let a = run(10, 10); // two full blocks and a partial one
    store_tokens(&mut kv, 0, 0, &a).unwrap();
    kv.index_prefix(0, &a);
    assert_eq!(
        kv.blocks_cached(),
        0,
        "indexed blocks in use are not cached"
    );

    let mut b = a[..9].to_vec();
    b.extend([77, 78, 79, 80, 81]);
    assert_eq!(kv.cached_prefix_len(&b), 8, "full blocks only");
    assert_eq!(kv.cached_prefix_len(&a[..7]), 4);
    assert_eq!(kv.cached_prefix_len(&[11, 12, 13, 14]), 0);
    let used = kv.blocks_used();
    assert_eq!(kv.reuse_prefix(1, &b, b.len() - 1), 8);
    assert_eq!(kv.blocks_used(), used, "attaching takes no new block");
    assert_eq!(table(&kv, 1), table(&kv, 0)[..2]);
    assert_eq!(kv.seq_len(1), 8);
    assert_holds(&kv, 1, &b[..8]);
    store_tokens(&mut kv, 1, 8, &b).unwrap();
    assert_holds(&kv, 1, &b);
    assert_holds(&kv, 0, &a);
    assert_eq!(table(&kv, 1)[..2], table(&kv, 0)[..2]);

    // `max_tokens` caps the reuse at whole blocks below it.
    assert_eq!(kv.reuse_prefix(2, &a, 7), 4);
    assert_eq!(kv.seq_len(2), 4);
    // A sequence holding positions gets nothing attached.
    assert_eq!(kv.reuse_prefix(2, &a, 10), 0);
    assert_eq!(kv.seq_len(2), 4);
    // Nothing to reuse creates no sequence.
    assert_eq!(kv.reuse_prefix(3, &[5, 5, 5, 5, 5], 5), 0);
    assert!(!kv.seq_ids().any(|s| s == 3));
    // No sequence may exceed the context through reuse either.
    let mut small = KvCache::paged(SHAPE, 6, GgmlType::F32, HEAD_DIM, 2, 8).unwrap();
    store_tokens(&mut small, 0, 0, &run(0, 6)).unwrap();
    small.index_prefix(0, &run(0, 6));
    assert_eq!(small.cached_prefix_len(&run(0, 9)), 6);
    assert_eq!(small.reuse_prefix(1, &run(0, 9), 9), 6);
    kv.check_consistency().unwrap();
    small.check_consistency().unwrap();
}

#[test]
fn cleared_prefixes_stay_cached_and_are_reused() {
    let mut kv = KvCache::paged(SHAPE, 32, GgmlType::F32, HEAD_DIM, 4, 8).unwrap();
    let a = run(0, 14); // three full blocks, then two tokens
    store_tokens(&mut kv, 0, 0, &a).unwrap();
    kv.index_prefix(0, &a);
    kv.clear_seq(0);
    assert_eq!(
        (kv.blocks_used(), kv.blocks_cached(), kv.blocks_free()),
        (0, 3, 8),
        "full indexed blocks stay cached, the partial one is free; cached ones are allocatable"
    );
    assert_eq!(kv.cached_prefix_len(&a), 12);
    assert_eq!(kv.reuse_prefix(5, &a, a.len() - 1), 12);
    assert_eq!((kv.blocks_used(), kv.blocks_cached()), (3, 0));
    store_tokens(&mut kv, 5, 12, &a).unwrap();
    assert_holds(&kv, 5, &a);
    // Indexing again after reuse changes nothing.
    kv.index_prefix(5, &a);
    kv.clear_seq(5);
    assert_eq!(kv.blocks_cached(), 3);
    kv.check_consistency().unwrap();
}

#[test]
fn identical_blocks_are_indexed_once() {
    let mut kv = KvCache::paged(SHAPE, 32, GgmlType::F32, HEAD_DIM, 4, 8).unwrap();
    let a = run(0, 8);
    // Two sequences compute the same prompt side by side, before either is indexed.
    store_tokens(&mut kv, 0, 0, &a).unwrap();
    store_tokens(&mut kv, 1, 0, &a).unwrap();
    kv.index_prefix(0, &a);
    kv.index_prefix(1, &a);
    kv.check_consistency().unwrap();
    kv.clear_seq(0);
    kv.clear_seq(1);
    assert_eq!(kv.blocks_cached(), 2, "the second copy was not indexed");
    assert_eq!(kv.reuse_prefix(2, &a, 8), 8);
    assert_holds(&kv, 2, &a);

    // A sequence whose second block is new after a duplicate first block: the new block is
    // indexed after the existing first block, and both are found together.
    let mut c = a[..4].to_vec();
    c.extend([50, 51, 52, 53]);
    store_tokens(&mut kv, 3, 0, &c).unwrap();
    kv.index_prefix(3, &c);
    kv.clear_seq(3);
    kv.clear_seq(2);
    assert_eq!(kv.cached_prefix_len(&c), 8);
    assert_eq!(kv.reuse_prefix(4, &c, 8), 8);
    assert_holds(&kv, 4, &c);
    kv.check_consistency().unwrap();
}

#[test]
fn index_prefix_trusts_only_what_is_stored_and_matches() {
    let mut kv = KvCache::paged(SHAPE, 32, GgmlType::F32, HEAD_DIM, 4, 8).unwrap();
    let a = run(0, 12);
    store_tokens(&mut kv, 0, 0, &a[..6]).unwrap();
    // Only one block is fully stored.
    kv.index_prefix(0, &a);
    assert_eq!(kv.cached_prefix_len(&a), 4);
    // A layer behind the others limits what is indexed too.
    store_tokens(&mut kv, 0, 6, &a[..8]).unwrap();
    kv.truncate(0, 8);
    for layer in 0..2 {
        let (k, v) = (content(&a, 8, layer, 0), content(&a, 8, layer, 1));
        kv.store(layer, 0, 8, &k, &v).unwrap();
    }
    kv.index_prefix(0, &a);
    assert_eq!(kv.cached_prefix_len(&a), 8);
    // Tokens that contradict what is indexed for this sequence index nothing further.
    let mut wrong = a.clone();
    wrong[0] = 999;
    kv.index_prefix(0, &wrong);
    assert_eq!(kv.cached_prefix_len(&wrong), 0);
    kv.check_consistency().unwrap();
}

#[test]
fn different_tokens_are_never_reused() {
    let mut kv = KvCache::paged(SHAPE, 32, GgmlType::F32, HEAD_DIM, 2, 16).unwrap();
    let a = vec![1, 2, 3, 4, 5, 6];
    store_tokens(&mut kv, 0, 0, &a).unwrap();
    kv.index_prefix(0, &a);
    kv.clear_seq(0);
    // Same later blocks after another first block; a swapped pair; a change in the last block.
    for (tokens, want) in [
        (vec![9, 9, 3, 4, 5, 6], 0),
        (vec![2, 1, 3, 4, 5, 6], 0),
        (vec![1, 2, 4, 3, 5, 6], 2),
        (vec![1, 2, 3, 4, 6, 5], 4),
        (vec![1, 2, 3, 4, 5, 6], 6),
    ] {
        assert_eq!(kv.cached_prefix_len(&tokens), want, "{tokens:?}");
        assert_eq!(kv.reuse_prefix(1, &tokens, 6), want, "{tokens:?}");
        store_tokens(&mut kv, 1, want, &tokens).unwrap();
        assert_holds(&kv, 1, &tokens);
        kv.clear_seq(1);
    }
    kv.check_consistency().unwrap();
}

#[test]
fn eviction_takes_the_least_recently_released_block_tail_first() {
    let mut kv = KvCache::paged(SHAPE, 32, GgmlType::F32, HEAD_DIM, 2, 6).unwrap();
    let (a, b) = (run(0, 4), run(100, 4));
    for (seq, tokens) in [(0, &a), (1, &b)] {
        store_tokens(&mut kv, seq, 0, tokens).unwrap();
        kv.index_prefix(seq, tokens);
        kv.clear_seq(seq);
    }
    // Use `a` again, so `b` is now the older prefix.
    assert_eq!(kv.reuse_prefix(2, &a, 4), 4);
    kv.clear_seq(2);
    assert_eq!((kv.blocks_cached(), kv.blocks_free()), (4, 6));
    // Three blocks: the two free ones, then `b`'s tail.
    store_tokens(&mut kv, 3, 0, &run(500, 6)).unwrap();
    assert_eq!((kv.cached_prefix_len(&a), kv.cached_prefix_len(&b)), (4, 2));
    // Then `b`'s head, then `a`'s tail.
    store_tokens(&mut kv, 3, 6, &run(500, 8)).unwrap();
    assert_eq!((kv.cached_prefix_len(&a), kv.cached_prefix_len(&b)), (4, 0));
    store_tokens(&mut kv, 3, 8, &run(500, 10)).unwrap();
    assert_eq!((kv.cached_prefix_len(&a), kv.cached_prefix_len(&b)), (2, 0));
    assert_holds(&kv, 3, &run(500, 10));
    // `a`'s head is still intact and reusable.
    assert_eq!(kv.reuse_prefix(4, &a, 4), 2);
    assert_holds(&kv, 4, &a[..2]);
    // Now every block is in use: the next one is refused, naming what to raise.
    let err = store_tokens(&mut kv, 3, 10, &run(500, 11)).unwrap_err();
    assert!(matches!(err, KvError::PoolFull { seq: 3, .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("KV cache full") && msg.contains("raise"),
        "{msg}"
    );
    assert_holds(&kv, 3, &run(500, 10));
    kv.check_consistency().unwrap();
}

#[test]
fn an_evicted_block_takes_its_cached_descendants_out_of_the_index() {
    // Sequence 1 computed [1, 2] a second time, so its [3, 4] block is indexed after sequence
    // 0's [1, 2] block and released after it: the parent is evicted first.
    let mut kv = KvCache::paged(SHAPE, 32, GgmlType::F32, HEAD_DIM, 2, 3).unwrap();
    let (a, b) = (vec![1, 2], vec![1, 2, 3, 4]);
    store_tokens(&mut kv, 0, 0, &a).unwrap();
    store_tokens(&mut kv, 1, 0, &b).unwrap();
    kv.index_prefix(0, &a);
    kv.index_prefix(1, &b);
    kv.clear_seq(0);
    kv.clear_seq(1);
    assert_eq!((kv.blocks_cached(), kv.cached_prefix_len(&b)), (2, 4));
    // [7, 7] takes the free block, [5, 6] evicts [1, 2] and reuses its id.
    let c = vec![7, 7, 5, 6];
    store_tokens(&mut kv, 2, 0, &c).unwrap();
    kv.index_prefix(2, &c);
    assert_eq!(kv.blocks_cached(), 0, "[3, 4] went with its parent");
    // Were [3, 4] still indexed under the parent's id, it would be found after [7, 7, 5, 6]
    // holding rows computed after [1, 2].
    let d = vec![7, 7, 5, 6, 3, 4];
    assert_eq!(kv.cached_prefix_len(&d), 4);
    kv.clear_seq(2);
    assert_eq!(kv.reuse_prefix(3, &d, 6), 4);
    store_tokens(&mut kv, 3, 4, &d).unwrap();
    assert_holds(&kv, 3, &d);
    kv.check_consistency().unwrap();
}

#[test]
fn copy_on_write_after_truncate_keeps_the_other_sequence_intact() {
    let mut kv = KvCache::paged(SHAPE, 32, GgmlType::F32, HEAD_DIM, 4, 8).unwrap();
    let a = run(0, 8);
    store_tokens(&mut kv, 0, 0, &a).unwrap();
    kv.index_prefix(0, &a);
    assert_eq!(kv.reuse_prefix(1, &a, 8), 8);
    // Sequence 1 goes back into the shared second block and writes different tokens there.
    kv.truncate(1, 6);
    assert_eq!(table(&kv, 1), table(&kv, 0), "still shared until written");
    let mut b = a[..6].to_vec();
    b.extend([60, 61, 62]);
    store_tokens(&mut kv, 1, 6, &b).unwrap();
    let (t0, t1) = (table(&kv, 0), table(&kv, 1));
    assert_eq!(t1[0], t0[0], "the untouched block stays shared");
    assert_ne!(t1[1], t0[1], "the written block was copied");
    assert_holds(&kv, 0, &a);
    assert_holds(&kv, 1, &b);
    assert_eq!(kv.blocks_used(), 4);

    // Only one holder but indexed: the copy keeps the cached prefix for later requests.
    kv.clear_seq(1);
    kv.truncate(0, 5);
    let mut c = a[..5].to_vec();
    c.extend([70, 71]);
    store_tokens(&mut kv, 0, 5, &c).unwrap();
    assert_holds(&kv, 0, &c);
    kv.clear_seq(0);
    assert_eq!(kv.cached_prefix_len(&a), 8);
    assert_eq!(kv.reuse_prefix(2, &a, 8), 8);
    assert_holds(&kv, 2, &a);
    kv.check_consistency().unwrap();
}

#[test]
fn copy_on_write_without_a_spare_block() {
    // Sole holder of an indexed block and no block to copy into: write in place and drop the
    // index entry rather than fail.
    let mut kv = KvCache::paged(SHAPE, 8, GgmlType::F32, HEAD_DIM, 4, 2).unwrap();
    let a = run(0, 8);
    store_tokens(&mut kv, 0, 0, &a).unwrap();
    kv.index_prefix(0, &a);
    kv.truncate(0, 6);
    let mut c = a[..6].to_vec();
    c.extend([90, 91]);
    store_tokens(&mut kv, 0, 6, &c).unwrap();
    assert_holds(&kv, 0, &c);
    assert_eq!(kv.cached_prefix_len(&a), 4);
    // Shared by two sequences and no spare block: that write must fail instead.
    assert_eq!(kv.reuse_prefix(1, &a, 4), 4);
    kv.truncate(1, 3);
    let err = store_tokens(&mut kv, 1, 3, &[0, 1, 2, 50]).unwrap_err();
    assert!(matches!(err, KvError::PoolFull { seq: 1, .. }), "{err}");
    assert_holds(&kv, 0, &c);
    kv.check_consistency().unwrap();
}

#[test]
fn reservations_hold_blocks_back_from_other_sequences() {
    let mut kv = KvCache::paged(SHAPE, 32, GgmlType::F32, HEAD_DIM, 4, 6).unwrap();
    assert!(kv.try_reserve(1, 16));
    assert_eq!(kv.blocks_free(), 2);
    assert!(!kv.try_reserve(2, 12), "3 blocks wanted, 2 left");
    assert!(
        !kv.try_reserve(2, 1000),
        "clamped to the context: 8 blocks, still too many"
    );
    assert_eq!(kv.blocks_free(), 2, "a refused reservation holds nothing");
    assert!(!kv.seq_ids().any(|s| s == 2));
    // An unreserved sequence gets the unreserved blocks, then is refused.
    store_tokens(&mut kv, 3, 0, &run(0, 8)).unwrap();
    assert_eq!(kv.blocks_free(), 0);
    let err = store_tokens(&mut kv, 3, 8, &run(0, 9)).unwrap_err();
    assert!(matches!(err, KvError::PoolFull { seq: 3, .. }), "{err}");
    assert_holds(&kv, 3, &run(0, 8));
    // The reserved sequence still grows to its promise…
    store_tokens(&mut kv, 1, 0, &run(100, 16)).unwrap();
    assert_holds(&kv, 1, &run(100, 16));
    // …but no further.
    assert!(store_tokens(&mut kv, 1, 16, &run(100, 17)).is_err());
    // Clearing releases the blocks and the reservation.
    kv.clear_seq(1);
    assert_eq!(kv.blocks_free(), 4);
    kv.check_consistency().unwrap();
}

#[test]
fn a_later_reservation_replaces_the_earlier_one() {
    let mut kv = KvCache::paged(SHAPE, 32, GgmlType::F32, HEAD_DIM, 4, 6).unwrap();
    assert!(kv.try_reserve(1, 20));
    assert_eq!(kv.blocks_free(), 1);
    assert!(kv.try_reserve(1, 4), "smaller");
    assert_eq!(kv.blocks_free(), 5);
    assert!(kv.try_reserve(1, 24), "the whole pool");
    assert_eq!(kv.blocks_free(), 0);
    assert!(!kv.try_reserve(1, 28));
    assert_eq!(
        kv.blocks_free(),
        0,
        "a refused call keeps the earlier reservation"
    );
    // Blocks the sequence has count towards its reservation.
    store_tokens(&mut kv, 1, 0, &run(0, 8)).unwrap();
    assert_eq!((kv.blocks_used(), kv.blocks_free()), (2, 0));
    assert!(kv.try_reserve(1, 8));
    assert_eq!(kv.blocks_free(), 4);
    // Blocks a truncation frees go back to the reservation, up to what it still needs.
    kv.truncate(1, 2);
    assert_eq!((kv.blocks_used(), kv.blocks_free()), (1, 4));
    store_tokens(&mut kv, 0, 0, &run(50, 16)).unwrap();
    assert!(store_tokens(&mut kv, 0, 16, &run(50, 17)).is_err());
    store_tokens(&mut kv, 1, 2, &run(0, 8)).unwrap();
    assert_holds(&kv, 1, &run(0, 8));
    kv.check_consistency().unwrap();
}

#[test]
fn a_reservation_counts_a_pending_copy() {
    let mut kv = KvCache::paged(SHAPE, 32, GgmlType::F32, HEAD_DIM, 4, 4).unwrap();
    let a = run(0, 8);
    store_tokens(&mut kv, 0, 0, &a).unwrap();
    kv.index_prefix(0, &a);
    assert_eq!(kv.reuse_prefix(1, &a, 8), 8);
    // Block-aligned after reuse: growing by one block needs exactly one.
    assert!(kv.try_reserve(1, 12));
    assert_eq!(kv.blocks_free(), 1);
    // Back inside the shared block: the next store copies it first.
    kv.truncate(1, 6);
    assert!(kv.try_reserve(1, 8));
    assert_eq!(kv.blocks_free(), 1);
    assert!(
        !kv.try_reserve(1, 16),
        "1 copy + 2 new blocks, 2 allocatable"
    );
    assert!(kv.try_reserve(1, 12));
    assert_eq!(kv.blocks_free(), 0);
    let mut b = a[..6].to_vec();
    b.extend(run(40, 6));
    store_tokens(&mut kv, 1, 6, &b).unwrap();
    assert_holds(&kv, 1, &b);
    assert_holds(&kv, 0, &a);
    kv.check_consistency().unwrap();
}

#[test]
fn reuse_leaves_other_reservations_alone() {
    let mut kv = KvCache::paged(SHAPE, 32, GgmlType::F32, HEAD_DIM, 2, 4).unwrap();
    let a = run(0, 8);
    store_tokens(&mut kv, 0, 0, &a).unwrap();
    kv.index_prefix(0, &a);
    kv.clear_seq(0);
    assert_eq!((kv.blocks_cached(), kv.blocks_free()), (4, 4));
    assert!(kv.try_reserve(1, 6));
    assert_eq!(kv.blocks_free(), 1);
    // Only one cached block is not promised to sequence 1.
    assert_eq!(kv.cached_prefix_len(&a), 8);
    assert_eq!(kv.reuse_prefix(2, &a, 8), 2);
    assert_eq!(kv.blocks_free(), 0);
    store_tokens(&mut kv, 1, 0, &run(100, 6)).unwrap();
    assert_holds(&kv, 1, &run(100, 6));
    assert_holds(&kv, 2, &a[..2]);
    // A reserved sequence's reuse draws on its own reservation.
    kv.clear_seq(1);
    kv.clear_seq(2);
    assert_eq!(kv.cached_prefix_len(&a), 2, "the others were evicted");
    assert!(kv.try_reserve(3, 8));
    assert_eq!(kv.blocks_free(), 0);
    assert_eq!(kv.reuse_prefix(3, &a, 8), 2);
    store_tokens(&mut kv, 3, 2, &a).unwrap();
    assert_holds(&kv, 3, &a);
    kv.check_consistency().unwrap();
}

// ---- Random operations against a model ----------------------------------------------------

#[derive(Debug, Clone)]
enum Op {
    Append {
        seq: u32,
        tokens: Vec<u32>,
    },
    /// Drop the last `back` positions.
    Truncate {
        seq: u32,
        back: usize,
    },
    Clear {
        seq: u32,
    },
    Index {
        seq: u32,
    },
    /// Reuse a prefix of a live or earlier sequence's tokens (`source` picks one), then `extra`.
    Reuse {
        seq: u32,
        source: usize,
        cut: usize,
        extra: Vec<u32>,
        slack: usize,
    },
    Reserve {
        seq: u32,
        len: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    // Few sequence ids and a two-token alphabet, so prefixes meet often.
    let seq = 0u32..4;
    let tokens = || prop::collection::vec(0u32..2, 0..6);
    prop_oneof![
        4 => (seq.clone(), tokens()).prop_map(|(seq, tokens)| Op::Append { seq, tokens }),
        2 => (seq.clone(), 0usize..5).prop_map(|(seq, back)| Op::Truncate { seq, back }),
        1 => seq.clone().prop_map(|seq| Op::Clear { seq }),
        3 => seq.clone().prop_map(|seq| Op::Index { seq }),
        3 => (seq.clone(), 0usize..8, 0usize..14, tokens(), 0usize..3).prop_map(
            |(seq, source, cut, extra, slack)| Op::Reuse { seq, source, cut, extra, slack }
        ),
        1 => (seq, 0usize..16).prop_map(|(seq, len)| Op::Reserve { seq, len }),
    ]
}

/// What the test knows: each sequence's tokens (all layers stored), the sequences holding a
/// reservation, and those whose reservation promises growth to a length.
#[derive(Default)]
struct Model {
    seqs: BTreeMap<u32, Vec<u32>>,
    reserved: BTreeSet<u32>,
    promised: BTreeMap<u32, usize>,
    /// Tokens of cleared or truncated sequences, for later reuse.
    past: Vec<Vec<u32>>,
}

fn apply(kv: &mut KvCache, m: &mut Model, op: &Op) {
    let bt = kv.block_tokens();
    match op {
        Op::Append { seq, tokens } => {
            let mut cur = m.seqs.get(seq).cloned().unwrap_or_default();
            'tokens: for &t in tokens {
                let pos = cur.len();
                cur.push(t);
                for layer in 0..N_LAYER {
                    let (k, v) = (content(&cur, pos, layer, 0), content(&cur, pos, layer, 1));
                    let Err(e) = kv.store(layer, *seq, pos, &k, &v) else {
                        continue;
                    };
                    assert_eq!(layer, 0, "only the first layer allocates: {e}");
                    match e {
                        KvError::ContextFull { .. } => assert!(pos >= kv.n_ctx()),
                        KvError::PoolFull { .. } => {
                            assert_eq!(kv.blocks_free(), 0, "refused with blocks free");
                            let promise = m.promised.get(seq).copied().unwrap_or(0);
                            assert!(pos >= promise, "reservation to {promise} broken at {pos}");
                        }
                        other => panic!("unexpected {other}"),
                    }
                    cur.pop();
                    break 'tokens;
                }
            }
            m.seqs.insert(*seq, cur);
        }
        Op::Truncate { seq, back } => {
            let len = m.seqs.get(seq).map_or(0, |s| s.len().saturating_sub(*back));
            kv.truncate(*seq, len);
            if let Some(cur) = m.seqs.get_mut(seq) {
                m.past.push(cur.clone());
                cur.truncate(len);
            }
            m.promised.remove(seq);
        }
        Op::Clear { seq } => {
            kv.clear_seq(*seq);
            m.past.extend(m.seqs.remove(seq));
            m.reserved.remove(seq);
            m.promised.remove(seq);
        }
        Op::Index { seq } => {
            if let Some(cur) = m.seqs.get(seq) {
                kv.index_prefix(*seq, cur);
            }
        }
        Op::Reuse {
            seq,
            source,
            cut,
            extra,
            slack,
        } => {
            let sources: Vec<&Vec<u32>> = m.seqs.values().chain(&m.past).collect();
            let mut tokens = match sources.get(source % sources.len().max(1)) {
                Some(s) => s[..(*cut).min(s.len())].to_vec(),
                None => Vec::new(),
            };
            tokens.extend(extra);
            let max = tokens.len().saturating_sub(*slack);
            let empty = m.seqs.get(seq).is_none_or(Vec::is_empty);
            let bound = kv.cached_prefix_len(&tokens);
            let got = kv.reuse_prefix(*seq, &tokens, max);
            if !empty {
                assert_eq!(got, 0, "attached to a sequence holding positions");
                return;
            }
            assert!(
                got.is_multiple_of(bt) && got <= bound && got <= max,
                "{got} of {bound}, max {max}"
            );
            let limit = bound.min(max) / bt * bt;
            if got < limit {
                assert_eq!(kv.blocks_free(), 0, "stopped short with blocks free");
            }
            m.seqs.insert(*seq, tokens[..got].to_vec());
        }
        Op::Reserve { seq, len } => {
            let free = kv.blocks_free();
            if kv.try_reserve(*seq, *len) {
                m.reserved.insert(*seq);
                m.promised.insert(*seq, (*len).min(kv.n_ctx()));
            } else {
                assert_eq!(
                    kv.blocks_free(),
                    free,
                    "a refused reservation changed the pool"
                );
            }
        }
    }
}

fn check(kv: &KvCache, m: &Model) {
    kv.check_consistency().unwrap();
    let mut holders = BTreeMap::<u32, usize>::new();
    for (&seq, tokens) in &m.seqs {
        assert_holds(kv, seq, tokens);
        for b in table(kv, seq) {
            *holders.entry(b).or_default() += 1;
        }
    }
    assert_eq!(kv.blocks_used(), holders.len(), "blocks held by the tables");
    let unheld = kv.n_blocks() - holders.len();
    assert!(kv.blocks_cached() <= unheld);
    if m.reserved.is_empty() {
        assert_eq!(kv.blocks_free(), unheld);
    } else {
        assert!(kv.blocks_free() <= unheld);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn random_operations_keep_rows_and_counts_consistent(
        block_tokens in 1usize..4,
        n_blocks in 1usize..25,
        n_ctx in 1usize..25,
        ops in prop::collection::vec(op(), 1..60),
    ) {
        let mut kv =
            KvCache::paged(SHAPE, n_ctx, GgmlType::F32, HEAD_DIM, block_tokens, n_blocks).unwrap();
        let mut m = Model::default();
        for op in &ops {
            apply(&mut kv, &mut m, op);
            check(&kv, &m);
        }
        kv.clear();
        prop_assert_eq!(kv.blocks_used(), 0);
        prop_assert_eq!(kv.blocks_free(), n_blocks);
        kv.check_consistency().unwrap();
    }
}
