//! The host KV cache: F16/F32 round trips, strides, sequence isolation, ordering and context
//! errors, truncation, and the ABI trait object plugins see.

use half::f16;
use llmhost::kv_cache::{KvCache, KvError};
use plugin_api::abi_stable::std_types::{RResult, RSlice};
use plugin_api::{GgmlType, KvRef, KvShape};

const SHAPE: KvShape = KvShape {
    n_layer: 3,
    k_dim: 8, // 2 KV heads of 4
    v_dim: 8,
    head_dim: 4,
};
const HEAD_DIM: usize = 4;

fn row(seed: u32, n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((seed * 31 + i as u32 * 7) % 97) as f32 * 0.137 - 6.1 + 1e-4 * i as f32)
        .collect()
}

fn decode(r: &KvRef<'_>, token: usize, n: usize) -> Vec<f32> {
    let bytes = &r.data.as_slice()[token * r.token_stride..];
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
        for layer in 0..SHAPE.n_layer as usize {
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
    assert_eq!(view.k.data.len(), 16);
    let bytes = view.k.data.as_slice();
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
        assert_eq!(view.v.data.len(), 4 * 32);
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
    let mut kv = KvCache::new(SHAPE, 8, GgmlType::F16, HEAD_DIM).unwrap();
    assert_eq!(kv.bytes_allocated(), 0, "nothing before the first store");
    fill(&mut kv, 1, 5, 0);
    fill(&mut kv, 42, 3, 500);
    assert_eq!(kv.seq_len(1), 5);
    assert_eq!(kv.seq_len(42), 3);
    assert_eq!(kv.seq_len(9), 0);
    assert_eq!(kv.seq_ids().collect::<Vec<_>>(), vec![1, 42]);
    assert_eq!(kv.bytes_allocated(), 2 * kv.bytes_per_sequence());
    assert_eq!(kv.bytes_per_sequence(), 3 * 8 * (8 + 8) * 2);
    assert_eq!(kv.bytes_used(), (5 + 3) * 3 * 16 * 2);

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
    assert_eq!(kv.bytes_allocated(), kv.bytes_per_sequence());
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

    assert!(matches!(
        KvCache::new(SHAPE, 8, GgmlType::Q8_0, HEAD_DIM),
        Err(KvError::UnsupportedType(GgmlType::Q8_0))
    ));
    assert!(KvCache::new(SHAPE, 0, GgmlType::F16, HEAD_DIM).is_err());
    assert!(KvCache::new(SHAPE, 8, GgmlType::F16, 3).is_err());
    assert!(KvCache::new(SHAPE, 8, GgmlType::F16, 0).is_err());
    assert!(KvCache::new(SHAPE, 8, GgmlType::F16, 2).is_err()); // differs from shape.head_dim
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
}

#[test]
fn truncate_drops_the_tail() {
    let mut kv = KvCache::new(SHAPE, 8, GgmlType::F16, HEAD_DIM).unwrap();
    fill(&mut kv, 0, 6, 0);
    let before = kv.view(1, 0, 2).unwrap().k.data.to_vec();
    kv.truncate(0, 2);
    assert_eq!(kv.seq_len(0), 2);
    assert!(kv.view(1, 0, 3).is_err());
    assert_eq!(kv.view(1, 0, 2).unwrap().k.data.as_slice(), &before[..]);
    // Truncating to more than stored changes nothing; unknown sequences are fine.
    kv.truncate(0, 10);
    assert_eq!(kv.seq_len(0), 2);
    kv.truncate(99, 0);
    // Writing resumes right after the kept prefix.
    assert!(kv.store(0, 0, 3, &row(0, 8), &row(0, 8)).is_err());
    kv.store(0, 0, 2, &row(0, 8), &row(0, 8)).unwrap();
    // Memory stays reserved until the sequence is cleared.
    assert_eq!(kv.bytes_allocated(), kv.bytes_per_sequence());
    kv.clear();
    assert_eq!(kv.bytes_allocated(), 0);
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
            }
            RResult::RErr(e) => panic!("{e}"),
        }
        assert!(matches!(abi.view(0, 5, 2), RResult::RErr(_)));
    }
    assert_eq!(kv.seq_len(5), 0); // layers 1 and 2 not written yet
    assert_eq!(kv.view(0, 5, 1).unwrap().len, 1);
}
