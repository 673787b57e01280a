//! The host-owned KV cache that architecture plugins write through [`plugin_api::KvCache`]: a
//! pool of fixed-size blocks shared by every sequence, with reuse of cached prompt prefixes.
//!
//! # Layout
//! The pool holds `n_blocks` blocks of `block_tokens` token rows. Each layer has one K arena
//! and one V arena of `n_blocks × block_tokens` rows, allocated zeroed up front (so the OS maps
//! pages only as rows are first written). A K row holds `k_dim = n_head_kv · head_dim` elements,
//! heads one after the other (likewise V). Elements are F16 (the default, as llama.cpp's
//! `--cache-type-k/-v f16`) converted from f32 with round-to-nearest-even, or F32 as given;
//! bytes are in native order, as the kernels read them. A block id names the same rows in every
//! layer.
//!
//! A sequence (any `u32` id) has a block table: its token `j` is row `j % block_tokens` of block
//! `table[j / block_tokens]`, exactly the paged form of [`KvRef`], so a view hands the kernels
//! the layer's whole arena plus the table and copies nothing. Within a layer, rows are appended
//! in position order: storing position `pos` needs `pos ≤` the layer's stored length (no
//! holes); `pos <` length overwrites that row. A store that starts a new block allocates one.
//!
//! # Block states
//! Every block is in exactly one state:
//! - *used*: in at least one sequence's table; its reference count is the number of tables
//!   holding it;
//! - *cached*: no references but in the prefix index, so a later request can still reuse it;
//!   cached blocks are kept in least-recently-released order;
//! - *free*: no references, not indexed.
//!
//! Allocation takes a free block first, else evicts the least recently released cached block
//! (dropping it from the index). A sequence releases its blocks last-first, so a chain's tail is
//! evicted before its head, which other prompts are likelier to share.
//!
//! # Prefix index
//! [`KvCache::index_prefix`] indexes each full block whose tokens are known under a chained
//! hash (of the previous block's hash and this block's token ids). An entry also keeps its
//! parent block and its tokens, and a lookup compares both, so a hash collision can never attach
//! the wrong rows. Dropping a block from the index drops its descendants too: their entries
//! name the parent by block id, and that id may next hold other tokens.
//!
//! # Copy-on-write
//! A store into a block that is shared (reference count > 1) or indexed first copies the block
//! (every layer, K and V) to a new block of the storing sequence, so other sequences and the
//! index keep the rows they expect. Appends always start new blocks, so this happens only after
//! [`KvCache::truncate`] into a full block, or when rewriting stored positions.
//!
//! # Reservations
//! [`KvCache::try_reserve`] holds back enough allocatable blocks for a sequence to grow to a
//! length; the sequence's allocations draw from its reservation, and no other sequence's
//! allocation or prefix reuse can take reserved blocks (they fail with [`KvError::PoolFull`]
//! or reuse less instead). Invariant: the blocks held back never exceed free + cached blocks.

use abi_stable::{
    sabi_trait::prelude::TD_Opaque,
    std_types::{RResult, RSlice, RString},
};
use half::f16;
use plugin_api::{arch::KvCache_TO, GgmlType, KvCacheMut, KvRef, KvShape, KvView};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};

/// Tokens per block when the caller does not choose (vLLM's default too): small enough that
/// little is wasted at a sequence's end, large enough that block tables and index entries stay
/// few and the kernels read long contiguous runs.
pub const DEFAULT_BLOCK_TOKENS: usize = 16;

/// What can go wrong creating or using the cache. Every message is one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    #[error("KV cache: element type {0:?} is not supported (use F16 or F32)")]
    UnsupportedType(GgmlType),
    #[error("KV cache: invalid shape: {0}")]
    InvalidShape(String),
    #[error(
        "KV cache: {n_layer} layers × {tokens} tokens × ({k_dim} + {v_dim}) elements of {elem} bytes does not fit in memory addresses; lower -c/--ctx-size or [server] kv_cache_tokens"
    )]
    TooLarge {
        n_layer: u32,
        /// Tokens of the sequence or pool that did not fit.
        tokens: usize,
        k_dim: u32,
        v_dim: u32,
        elem: usize,
    },
    #[error(
        "KV cache: cannot allocate {bytes} bytes for the block pool; lower -c/--ctx-size or [server] kv_cache_tokens"
    )]
    OutOfMemory { bytes: usize },
    #[error("context full: position {pos}, context size {n_ctx}; raise -c/--ctx-size")]
    ContextFull { pos: usize, n_ctx: usize },
    #[error(
        "KV cache full: no block left for sequence {seq} (all {n_blocks} blocks of {block_tokens} tokens are in use or reserved); raise [server] kv_cache_tokens"
    )]
    PoolFull {
        seq: u32,
        n_blocks: usize,
        block_tokens: usize,
    },
    #[error(
        "KV cache: position {pos} of sequence {seq} in layer {layer} would leave a hole: {len} positions stored so far"
    )]
    OutOfOrder {
        layer: usize,
        seq: u32,
        pos: usize,
        len: usize,
    },
    #[error("KV cache: layer {layer} out of range ({n_layer} layers)")]
    BadLayer { layer: usize, n_layer: u32 },
    #[error("KV cache: {what} row has {got} values, expected {want}")]
    BadRow {
        what: &'static str,
        got: usize,
        want: usize,
    },
    #[error(
        "KV cache: view of {len} positions of sequence {seq} in layer {layer}, but only {stored} are stored"
    )]
    ViewTooLong {
        layer: usize,
        seq: u32,
        len: usize,
        stored: usize,
    },
}

/// The chain hash of the (absent) block before a sequence's first.
const ROOT_HASH: u64 = 0;

/// The index key of a block holding `tokens` after the block whose key is `parent`.
fn chain_hash(parent: u64, tokens: &[u32]) -> u64 {
    // SipHash with fixed keys: the same in every run, and collisions are checked anyway.
    let mut h = DefaultHasher::new();
    parent.hash(&mut h);
    tokens.hash(&mut h);
    h.finish()
}

/// K and V rows of one layer, for every block.
struct Arena {
    k: Vec<u8>,
    v: Vec<u8>,
}

/// Why a block is in the prefix index: it holds `tokens` right after `parent`'s tokens.
struct IndexEntry {
    hash: u64,
    /// `None` for a sequence's first block.
    parent: Option<u32>,
    tokens: Box<[u32]>,
}

#[derive(Default)]
struct Block {
    /// Sequence tables holding this block.
    refs: u32,
    entry: Option<IndexEntry>,
    /// Indexed blocks whose entry names this block as parent.
    children: Vec<u32>,
    /// Key in the LRU set while cached.
    stamp: u64,
}

/// Blocks held back so a sequence can grow to `len` tokens.
#[derive(Debug, Clone, Copy)]
struct Reservation {
    len: usize,
    held: usize,
}

struct Seq {
    /// Blocks of positions `0..`; `blocks_for(max(lens))` of them.
    table: Vec<u32>,
    /// Positions stored per layer.
    lens: Vec<usize>,
    reservation: Option<Reservation>,
}

impl Seq {
    fn new(n_layer: usize) -> Seq {
        Seq {
            table: Vec::new(),
            lens: vec![0; n_layer],
            reservation: None,
        }
    }

    fn held(&self) -> usize {
        self.reservation.map_or(0, |r| r.held)
    }
}

/// The KV cache of one loaded model, for any number of sequences.
pub struct KvCache {
    shape: KvShape,
    n_ctx: usize,
    dtype: GgmlType,
    head_dim: usize,
    /// Bytes per element.
    elem: usize,
    k_row: usize,
    v_row: usize,
    block_tokens: usize,
    arenas: Vec<Arena>,
    blocks: Vec<Block>,
    /// Free blocks; the last is handed out first (the most recently freed, likely still in
    /// the CPU caches, or the lowest never-used id, so pages get mapped in order).
    free: Vec<u32>,
    /// Cached blocks by release time, oldest first.
    lru: BTreeSet<(u64, u32)>,
    tick: u64,
    /// Chain hash → indexed blocks with that hash (more than one only on a collision).
    index: HashMap<u64, Vec<u32>>,
    /// Blocks held back by all reservations.
    reserved: usize,
    seqs: BTreeMap<u32, Seq>,
    /// [`chain_hash`], replaceable so tests can force collisions.
    hasher: fn(u64, &[u32]) -> u64,
}

impl std::fmt::Debug for KvCache {
    // The arenas are far too big to print.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvCache")
            .field("shape", &self.shape)
            .field("n_ctx", &self.n_ctx)
            .field("dtype", &self.dtype)
            .field("block_tokens", &self.block_tokens)
            .field("n_blocks", &self.n_blocks())
            .field("blocks_used", &self.blocks_used())
            .field("blocks_cached", &self.blocks_cached())
            .field("blocks_free", &self.blocks_free())
            .field("seqs", &self.seqs.len())
            .finish()
    }
}

/// `ceil(tokens / block_tokens)` without overflow.
fn div_ceil(tokens: usize, block_tokens: usize) -> usize {
    tokens / block_tokens + usize::from(!tokens.is_multiple_of(block_tokens))
}

/// `bytes` zeroed bytes, or an error instead of an abort when the allocator refuses.
fn zeroed(bytes: usize) -> Result<Vec<u8>, KvError> {
    // `vec![0; n]` asks for zeroed memory (pages mapped lazily) but aborts when refused, and
    // the fallible `try_reserve` would have to be followed by writing every byte. So probe with
    // the fallible call first, then let `vec!` take the same amount.
    let mut probe = Vec::<u8>::new();
    probe
        .try_reserve_exact(bytes)
        .map_err(|_| KvError::OutOfMemory { bytes })?;
    drop(probe);
    Ok(vec![0u8; bytes])
}

impl KvCache {
    /// A pool for one sequence of `n_ctx` tokens: `blocks_for(n_ctx)` blocks of
    /// [`DEFAULT_BLOCK_TOKENS`]. See [`KvCache::paged`] for the other arguments.
    pub fn new(
        shape: KvShape,
        n_ctx: usize,
        dtype: GgmlType,
        head_dim: usize,
    ) -> Result<KvCache, KvError> {
        let n_blocks = div_ceil(n_ctx, DEFAULT_BLOCK_TOKENS);
        KvCache::paged(
            shape,
            n_ctx,
            dtype,
            head_dim,
            DEFAULT_BLOCK_TOKENS,
            n_blocks,
        )
    }

    /// A pool of `n_blocks` blocks of `block_tokens` tokens shared by any number of sequences,
    /// each at most `n_ctx` tokens, for a model with `shape`, `dtype` elements (F16 or F32) and
    /// heads of `head_dim` elements (`k_dim` and `v_dim` must be multiples of it, and
    /// `shape.head_dim`, when not 0, equal to it).
    ///
    /// Fails when the shape is empty or inconsistent, when one sequence or the pool could not
    /// even be addressed, or when the allocator refuses the pool. The pool's memory is
    /// reserved here; the OS maps its pages as rows are first written.
    pub fn paged(
        shape: KvShape,
        n_ctx: usize,
        dtype: GgmlType,
        head_dim: usize,
        block_tokens: usize,
        n_blocks: usize,
    ) -> Result<KvCache, KvError> {
        let elem = match dtype {
            GgmlType::F16 => 2,
            GgmlType::F32 => 4,
            other => return Err(KvError::UnsupportedType(other)),
        };
        if shape.n_layer == 0 || shape.k_dim == 0 || shape.v_dim == 0 {
            return Err(KvError::InvalidShape(format!(
                "n_layer {}, k_dim {}, v_dim {} (all must be > 0)",
                shape.n_layer, shape.k_dim, shape.v_dim
            )));
        }
        if n_ctx == 0 {
            return Err(KvError::InvalidShape("context size 0".into()));
        }
        if block_tokens == 0 || n_blocks == 0 {
            return Err(KvError::InvalidShape(format!(
                "{n_blocks} blocks of {block_tokens} tokens (both must be > 0)"
            )));
        }
        if head_dim == 0
            || !(shape.k_dim as usize).is_multiple_of(head_dim)
            || !(shape.v_dim as usize).is_multiple_of(head_dim)
        {
            return Err(KvError::InvalidShape(format!(
                "head_dim {head_dim} does not divide k_dim {} and v_dim {}",
                shape.k_dim, shape.v_dim
            )));
        }
        if shape.head_dim != 0 && shape.head_dim as usize != head_dim {
            return Err(KvError::InvalidShape(format!(
                "head_dim {head_dim} differs from the model's {}",
                shape.head_dim
            )));
        }
        let too_large = |tokens| KvError::TooLarge {
            n_layer: shape.n_layer,
            tokens,
            k_dim: shape.k_dim,
            v_dim: shape.v_dim,
            elem,
        };
        // Bytes of all layers' K and V rows for `tokens` tokens, when addressable.
        let bytes_for = |tokens: usize| {
            (shape.k_dim as usize)
                .checked_add(shape.v_dim as usize)
                .and_then(|x| x.checked_mul(shape.n_layer as usize))
                .and_then(|x| x.checked_mul(tokens))
                .and_then(|x| x.checked_mul(elem))
                .filter(|&x| x <= isize::MAX as usize)
                .ok_or_else(|| too_large(tokens))
        };
        bytes_for(n_ctx)?;
        let pool_tokens = n_blocks
            .checked_mul(block_tokens)
            .ok_or_else(|| too_large(usize::MAX))?;
        bytes_for(pool_tokens)?;
        if n_blocks - 1 > u32::MAX as usize {
            return Err(KvError::InvalidShape(format!(
                "{n_blocks} blocks: block ids are 32-bit"
            )));
        }
        let (k_row, v_row) = (shape.k_dim as usize * elem, shape.v_dim as usize * elem);
        let arenas = (0..shape.n_layer)
            .map(|_| {
                Ok(Arena {
                    k: zeroed(pool_tokens * k_row)?,
                    v: zeroed(pool_tokens * v_row)?,
                })
            })
            .collect::<Result<Vec<_>, KvError>>()?;
        Ok(KvCache {
            shape,
            n_ctx,
            dtype,
            head_dim,
            elem,
            k_row,
            v_row,
            block_tokens,
            arenas,
            blocks: (0..n_blocks).map(|_| Block::default()).collect(),
            free: (0..n_blocks as u32).rev().collect(),
            lru: BTreeSet::new(),
            tick: 0,
            index: HashMap::new(),
            reserved: 0,
            seqs: BTreeMap::new(),
            hasher: chain_hash,
        })
    }

    pub fn shape(&self) -> KvShape {
        self.shape
    }

    pub fn n_ctx(&self) -> usize {
        self.n_ctx
    }

    pub fn dtype(&self) -> GgmlType {
        self.dtype
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim
    }

    /// KV heads per token: `k_dim / head_dim`.
    pub fn n_head_kv(&self) -> usize {
        self.shape.k_dim as usize / self.head_dim
    }

    pub fn block_tokens(&self) -> usize {
        self.block_tokens
    }

    pub fn n_blocks(&self) -> usize {
        self.blocks.len()
    }

    /// Blocks in at least one sequence's table.
    pub fn blocks_used(&self) -> usize {
        self.blocks.len() - self.free.len() - self.lru.len()
    }

    /// Blocks no sequence holds that keep an indexed prefix for reuse (evicted on demand).
    pub fn blocks_cached(&self) -> usize {
        self.lru.len()
    }

    /// Blocks an allocation may take now: free and cached ones, less those reservations hold
    /// back.
    pub fn blocks_free(&self) -> usize {
        self.allocatable() - self.reserved
    }

    /// Blocks that `tokens` tokens occupy: `ceil(tokens / block_tokens)`.
    pub fn blocks_for(&self, tokens: usize) -> usize {
        div_ceil(tokens, self.block_tokens)
    }

    /// Bytes one sequence of `n_ctx` tokens takes: `n_layer × n_ctx × (k_dim + v_dim) × elem`.
    pub fn bytes_per_sequence(&self) -> usize {
        // Checked in `paged`.
        self.shape.n_layer as usize * self.n_ctx * (self.k_row + self.v_row)
    }

    /// Bytes of the whole pool, all reserved up front.
    pub fn bytes_allocated(&self) -> usize {
        self.blocks.len() * self.bytes_per_block()
    }

    /// Bytes of the blocks sequences hold (a shared block counted once).
    pub fn bytes_used(&self) -> usize {
        self.blocks_used() * self.bytes_per_block()
    }

    fn bytes_per_block(&self) -> usize {
        self.shape.n_layer as usize * self.block_tokens * (self.k_row + self.v_row)
    }

    /// Ids of the sequences that hold blocks or a reservation, in increasing order.
    pub fn seq_ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.seqs.keys().copied()
    }

    /// Positions of `seq` stored in every layer (0 for an unknown sequence).
    pub fn seq_len(&self, seq: u32) -> usize {
        self.seqs
            .get(&seq)
            .and_then(|s| s.lens.iter().copied().min())
            .unwrap_or(0)
    }

    /// The block table of `seq` (block ids in position order; empty for an unknown sequence).
    pub fn block_table(&self, seq: u32) -> &[u32] {
        self.seqs.get(&seq).map_or(&[], |s| &s.table)
    }

    /// Forgets `seq`: releases its blocks (indexed ones stay cached) and its reservation.
    pub fn clear_seq(&mut self, seq: u32) {
        let Some(s) = self.seqs.remove(&seq) else {
            return;
        };
        self.reserved -= s.held();
        for &b in s.table.iter().rev() {
            self.release(b);
        }
    }

    /// Forgets every sequence; cached prefixes stay.
    pub fn clear(&mut self) {
        let ids: Vec<u32> = self.seq_ids().collect();
        for seq in ids {
            self.clear_seq(seq);
        }
    }

    /// Keeps positions `0..len` of `seq` in every layer and releases the blocks past them.
    /// Blocks this frees go back to the sequence's reservation, up to what it still needs.
    pub fn truncate(&mut self, seq: u32, len: usize) {
        let bt = self.block_tokens;
        let Some(s) = self.seqs.get_mut(&seq) else {
            return;
        };
        for l in &mut s.lens {
            *l = (*l).min(len);
        }
        let keep = div_ceil(s.lens.iter().copied().max().unwrap_or(0), bt);
        let dropped = s.table.split_off(keep.min(s.table.len()));
        let refund = dropped.iter().rev().filter(|&&b| self.release(b)).count();
        self.settle_reservation(seq, refund);
    }

    /// Stores the K and V rows (`k_dim` and `v_dim` floats) of the token at `pos` of `seq` in
    /// `layer`.
    pub fn store(
        &mut self,
        layer: usize,
        seq: u32,
        pos: usize,
        k: &[f32],
        v: &[f32],
    ) -> Result<(), KvError> {
        if layer >= self.shape.n_layer as usize {
            return Err(KvError::BadLayer {
                layer,
                n_layer: self.shape.n_layer,
            });
        }
        let (k_dim, v_dim) = (self.shape.k_dim as usize, self.shape.v_dim as usize);
        if k.len() != k_dim {
            return Err(KvError::BadRow {
                what: "K",
                got: k.len(),
                want: k_dim,
            });
        }
        if v.len() != v_dim {
            return Err(KvError::BadRow {
                what: "V",
                got: v.len(),
                want: v_dim,
            });
        }
        if pos >= self.n_ctx {
            return Err(KvError::ContextFull {
                pos,
                n_ctx: self.n_ctx,
            });
        }
        let (stored, n_table) = self
            .seqs
            .get(&seq)
            .map_or((0, 0), |s| (s.lens[layer], s.table.len()));
        if pos > stored {
            return Err(KvError::OutOfOrder {
                layer,
                seq,
                pos,
                len: stored,
            });
        }
        let bt = self.block_tokens;
        let index = pos / bt;
        // No holes: `pos ≤ stored ≤ n_table · bt`, so `pos` is in the table or starts the next
        // block.
        let block = if index == n_table {
            let b = self.alloc(seq)?;
            let n_layer = self.shape.n_layer as usize;
            self.seqs
                .entry(seq)
                .or_insert_with(|| Seq::new(n_layer))
                .table
                .push(b);
            b
        } else {
            self.writable_block(seq, index)?
        };
        let row = block as usize * bt + pos % bt;
        let (k_row, v_row, dtype) = (self.k_row, self.v_row, self.dtype);
        let arena = &mut self.arenas[layer];
        encode(dtype, k, &mut arena.k[row * k_row..][..k_row]);
        encode(dtype, v, &mut arena.v[row * v_row..][..v_row]);
        let s = self.seqs.get_mut(&seq).expect("the sequence holds a block");
        if pos == s.lens[layer] {
            s.lens[layer] += 1;
        }
        Ok(())
    }

    /// Keys and values of positions `0..len` of `seq` in `layer`, all stored before: the
    /// layer's arenas, paged by the sequence's block table.
    pub fn view<'a>(&'a self, layer: usize, seq: u32, len: usize) -> Result<KvView<'a>, KvError> {
        if layer >= self.shape.n_layer as usize {
            return Err(KvError::BadLayer {
                layer,
                n_layer: self.shape.n_layer,
            });
        }
        let (stored, table): (usize, &[u32]) = self
            .seqs
            .get(&seq)
            .map_or((0, &[]), |s| (s.lens[layer], &s.table));
        if len > stored {
            return Err(KvError::ViewTooLong {
                layer,
                seq,
                len,
                stored,
            });
        }
        let table = &table[..self.blocks_for(len)];
        let arena = &self.arenas[layer];
        let head_stride = self.head_dim * self.elem;
        // Blocks that follow each other in the pool (always so for a lone sequence, as in
        // `run` and `bench`) are handed over as one contiguous run: kernels then take their
        // plain strided path instead of looking rows up through the table.
        let consecutive = table
            .iter()
            .zip(table.iter().skip(1))
            .all(|(a, b)| a.checked_add(1) == Some(*b));
        let side = |data: &'a [u8], token_stride: usize| match table.first() {
            Some(&first) if consecutive => KvRef::contiguous(
                self.dtype,
                &data[first as usize * self.block_tokens * token_stride..],
                token_stride,
                head_stride,
            ),
            _ => KvRef {
                dtype: self.dtype,
                data: RSlice::from_slice(data),
                token_stride,
                head_stride,
                block_tokens: self.block_tokens,
                blocks: RSlice::from_slice(table),
            },
        };
        Ok(KvView {
            k: side(&arena.k, self.k_row),
            v: side(&arena.v, self.v_row),
            len,
        })
    }

    /// How many leading tokens of `tokens` indexed full blocks hold (whether cached or in use
    /// by other sequences): an upper bound of what [`KvCache::reuse_prefix`] attaches.
    pub fn cached_prefix_len(&self, tokens: &[u32]) -> usize {
        let bt = self.block_tokens;
        let (mut parent, mut hash) = (None, ROOT_HASH);
        let mut found = 0;
        for chunk in tokens[..tokens.len().min(self.n_ctx)].chunks_exact(bt) {
            let Some((b, h)) = self.find(parent, hash, chunk) else {
                break;
            };
            (parent, hash) = (Some(b), h);
            found += bt;
        }
        found
    }

    /// Attaches to `seq`, which must hold no positions, the longest chain of indexed full
    /// blocks holding a prefix of `tokens`, at most `max_tokens` tokens (pass
    /// `prompt.len() - 1` so the last prompt token is always computed). The blocks gain a
    /// reference (cached ones leave the LRU). Returns the tokens now stored in `seq`: a
    /// multiple of `block_tokens`, every layer's length set to it.
    ///
    /// Attaching a cached block takes an allocatable block, so it draws from `seq`'s
    /// reservation, if any, and otherwise stops short rather than eat into other sequences'
    /// reservations. A sequence that already holds positions gets nothing and 0 back.
    pub fn reuse_prefix(&mut self, seq: u32, tokens: &[u32], max_tokens: usize) -> usize {
        if self.seqs.get(&seq).is_some_and(|s| !s.table.is_empty()) {
            return 0;
        }
        let bt = self.block_tokens;
        let limit = tokens.len().min(max_tokens).min(self.n_ctx);
        let (mut parent, mut hash) = (None, ROOT_HASH);
        let mut table = Vec::new();
        for chunk in tokens[..limit].chunks_exact(bt) {
            let Some((b, h)) = self.find(parent, hash, chunk) else {
                break;
            };
            if self.blocks[b as usize].refs == 0 && !self.take_allocatable(seq) {
                break;
            }
            let blk = &mut self.blocks[b as usize];
            if blk.refs == 0 {
                self.lru.remove(&(blk.stamp, b));
            }
            blk.refs += 1;
            table.push(b);
            (parent, hash) = (Some(b), h);
        }
        if table.is_empty() {
            return 0;
        }
        let len = table.len() * bt;
        let n_layer = self.shape.n_layer as usize;
        let s = self.seqs.entry(seq).or_insert_with(|| Seq::new(n_layer));
        s.table = table;
        s.lens.fill(len);
        self.settle_reservation(seq, 0);
        len
    }

    /// Records that positions `0..tokens.len()` of `seq` hold `tokens` (all layers stored):
    /// each full block not yet indexed is indexed, so later requests can reuse it. A block
    /// whose tokens (after the same prefix) are indexed already is left out; the existing entry
    /// stays. Positions past what every layer stores are ignored.
    pub fn index_prefix(&mut self, seq: u32, tokens: &[u32]) {
        let Some(s) = self.seqs.get(&seq) else {
            return;
        };
        let stored = s.lens.iter().copied().min().unwrap_or(0);
        let n_full = tokens.len().min(stored) / self.block_tokens;
        let table = s.table[..n_full].to_vec();
        let (mut parent, mut hash) = (None, ROOT_HASH);
        for (&b, chunk) in table.iter().zip(tokens.chunks_exact(self.block_tokens)) {
            if let Some(e) = &self.blocks[b as usize].entry {
                if e.parent != parent || *e.tokens != *chunk {
                    // Indexed as other tokens: `tokens` does not describe this sequence, so
                    // nothing past here can be trusted either.
                    return;
                }
                (parent, hash) = (Some(b), e.hash);
                continue;
            }
            if let Some((existing, h)) = self.find(parent, hash, chunk) {
                (parent, hash) = (Some(existing), h);
                continue;
            }
            let h = (self.hasher)(hash, chunk);
            self.blocks[b as usize].entry = Some(IndexEntry {
                hash: h,
                parent,
                tokens: chunk.into(),
            });
            if let Some(p) = parent {
                self.blocks[p as usize].children.push(b);
            }
            self.index.entry(h).or_default().push(b);
            (parent, hash) = (Some(b), h);
        }
    }

    /// Makes sure `seq` can grow to `len` tokens (at most `n_ctx`) without the pool running
    /// dry: holds back the blocks it still lacks, plus one when its next store must first copy
    /// a shared or indexed last block. Returns false, keeping any earlier reservation, when the
    /// pool cannot promise that now; otherwise replaces the earlier reservation.
    ///
    /// The promise covers growth by appending: rewriting positions inside shared or indexed
    /// blocks after a [`KvCache::truncate`] may copy more; call this again after truncating.
    pub fn try_reserve(&mut self, seq: u32, len: usize) -> bool {
        let len = len.min(self.n_ctx);
        let need = self.reservation_need(self.seqs.get(&seq), len);
        let held = self.seqs.get(&seq).map_or(0, Seq::held);
        if need > self.blocks_free() + held {
            return false;
        }
        self.reserved = self.reserved - held + need;
        let n_layer = self.shape.n_layer as usize;
        self.seqs
            .entry(seq)
            .or_insert_with(|| Seq::new(n_layer))
            .reservation = Some(Reservation { len, held: need });
        true
    }

    /// Checks every internal invariant (reference counts against the tables, each block in
    /// exactly one state, the index's links, reservations within allocatable blocks); for
    /// tests. Costs time linear in the pool and the sequences.
    pub fn check_consistency(&self) -> Result<(), String> {
        let bt = self.block_tokens;
        let mut refs = vec![0u32; self.blocks.len()];
        let mut held = 0;
        for (&id, s) in &self.seqs {
            let max = s.lens.iter().copied().max().unwrap_or(0);
            if s.table.len() != div_ceil(max, bt) || max > self.n_ctx {
                return Err(format!(
                    "sequence {id}: {} blocks for {max} positions",
                    s.table.len()
                ));
            }
            let mut seen = s.table.clone();
            seen.sort_unstable();
            if seen.windows(2).any(|w| w[0] == w[1]) {
                return Err(format!("sequence {id} holds a block twice: {:?}", s.table));
            }
            for &b in &s.table {
                refs[b as usize] += 1;
            }
            held += s.held();
        }
        if held != self.reserved || self.reserved > self.allocatable() {
            return Err(format!(
                "reserved {} (sum {held}) with {} allocatable",
                self.reserved,
                self.allocatable()
            ));
        }
        // How often each block is listed as free and as cached.
        let mut listed = vec![(0u32, 0u32); self.blocks.len()];
        for &b in &self.free {
            listed[b as usize].0 += 1;
        }
        for &(stamp, b) in &self.lru {
            listed[b as usize].1 += 1;
            if self.blocks[b as usize].stamp != stamp {
                return Err(format!("block {b}: stale LRU stamp"));
            }
        }
        let mut n_indexed = 0;
        for (b, blk) in self.blocks.iter().enumerate() {
            if blk.refs != refs[b] {
                return Err(format!(
                    "block {b}: {} references counted, {} in tables",
                    blk.refs, refs[b]
                ));
            }
            let ok = match (blk.refs > 0, &blk.entry) {
                (true, _) => listed[b] == (0, 0),
                (false, Some(_)) => listed[b] == (0, 1),
                (false, None) => listed[b] == (1, 0),
            };
            if !ok {
                return Err(format!("block {b}: in no single state"));
            }
            let Some(e) = &blk.entry else {
                if !blk.children.is_empty() {
                    return Err(format!("block {b}: children but not indexed"));
                }
                continue;
            };
            n_indexed += 1;
            let parent_hash = match e.parent {
                None => ROOT_HASH,
                Some(p) => match &self.blocks[p as usize].entry {
                    Some(pe) if self.blocks[p as usize].children.contains(&(b as u32)) => pe.hash,
                    _ => return Err(format!("block {b}: parent {p} not linked")),
                },
            };
            if e.tokens.len() != bt || e.hash != (self.hasher)(parent_hash, &e.tokens) {
                return Err(format!("block {b}: index key does not match its tokens"));
            }
            if self
                .index
                .get(&e.hash)
                .is_none_or(|v| !v.contains(&(b as u32)))
            {
                return Err(format!("block {b}: missing from the index"));
            }
            for &c in &blk.children {
                let child = self.blocks[c as usize].entry.as_ref();
                if child.is_none_or(|ce| ce.parent != Some(b as u32)) {
                    return Err(format!("block {b}: child {c} names another parent"));
                }
            }
            let twins = self.index[&e.hash].iter().filter(|&&o| {
                let oe = self.blocks[o as usize].entry.as_ref();
                oe.is_some_and(|oe| oe.parent == e.parent && oe.tokens == e.tokens)
            });
            if twins.count() != 1 {
                return Err(format!("block {b}: indexed twice"));
            }
        }
        if self.index.values().map(Vec::len).sum::<usize>() != n_indexed
            || self.index.values().any(Vec::is_empty)
        {
            return Err("the index lists blocks that are not indexed".into());
        }
        Ok(())
    }

    /// This cache as the ABI's trait object, for `ForwardArgs::kv`.
    pub fn as_abi(&mut self) -> KvCacheMut<'_> {
        KvCache_TO::from_ptr(self, TD_Opaque)
    }

    fn allocatable(&self) -> usize {
        self.free.len() + self.lru.len()
    }

    /// The indexed block holding `tokens` right after `parent` (whose hash is `parent_hash`),
    /// and its hash.
    fn find(&self, parent: Option<u32>, parent_hash: u64, tokens: &[u32]) -> Option<(u32, u64)> {
        let h = (self.hasher)(parent_hash, tokens);
        let found = self.index.get(&h)?.iter().copied().find(|&b| {
            let e = self.blocks[b as usize].entry.as_ref();
            e.is_some_and(|e| e.parent == parent && *e.tokens == *tokens)
        });
        found.map(|b| (b, h))
    }

    /// Accounts for `seq` taking one allocatable block: from its reservation if it has one
    /// left, else from the unreserved ones. False when neither has any.
    fn take_allocatable(&mut self, seq: u32) -> bool {
        if let Some(r) = self
            .seqs
            .get_mut(&seq)
            .and_then(|s| s.reservation.as_mut())
            .filter(|r| r.held > 0)
        {
            r.held -= 1;
            self.reserved -= 1;
            return true;
        }
        self.allocatable() > self.reserved
    }

    /// A block for `seq`, with one reference: a free one, else the least recently released
    /// cached one, evicted.
    fn alloc(&mut self, seq: u32) -> Result<u32, KvError> {
        if !self.take_allocatable(seq) {
            return Err(KvError::PoolFull {
                seq,
                n_blocks: self.blocks.len(),
                block_tokens: self.block_tokens,
            });
        }
        let b = match self.free.pop() {
            Some(b) => b,
            None => {
                let (_, b) = self
                    .lru
                    .pop_first()
                    .expect("reservations never exceed the allocatable blocks");
                self.unindex(b);
                b
            }
        };
        self.blocks[b as usize].refs = 1;
        Ok(b)
    }

    /// Drops one reference to `b`; true when that leaves it allocatable (cached or free).
    fn release(&mut self, b: u32) -> bool {
        let blk = &mut self.blocks[b as usize];
        blk.refs -= 1;
        if blk.refs > 0 {
            return false;
        }
        if blk.entry.is_some() {
            self.tick += 1;
            blk.stamp = self.tick;
            self.lru.insert((self.tick, b));
        } else {
            self.free.push(b);
        }
        true
    }

    /// Removes `b` and its descendants from the index; the cached ones among them become free.
    fn unindex(&mut self, b: u32) {
        let parent = self.blocks[b as usize]
            .entry
            .as_ref()
            .and_then(|e| e.parent);
        if let Some(p) = parent {
            self.blocks[p as usize].children.retain(|&c| c != b);
        }
        let mut todo = vec![b];
        while let Some(x) = todo.pop() {
            let blk = &mut self.blocks[x as usize];
            let Some(entry) = blk.entry.take() else {
                continue;
            };
            todo.append(&mut blk.children);
            if blk.refs == 0 && self.lru.remove(&(blk.stamp, x)) {
                self.free.push(x);
            }
            if let Some(list) = self.index.get_mut(&entry.hash) {
                list.retain(|&o| o != x);
                if list.is_empty() {
                    self.index.remove(&entry.hash);
                }
            }
        }
    }

    /// Block `index` of `seq`'s table, first copied to a block of its own when shared or
    /// indexed.
    fn writable_block(&mut self, seq: u32, index: usize) -> Result<u32, KvError> {
        let b = self.seqs[&seq].table[index];
        let blk = &self.blocks[b as usize];
        let (refs, indexed) = (blk.refs, blk.entry.is_some());
        if refs == 1 && !indexed {
            return Ok(b);
        }
        let copy = match self.alloc(seq) {
            Ok(copy) => copy,
            // Only this sequence holds the block: rather than fail, write in place and give up
            // the index entry (a cached prefix is lost, no rows anyone reads).
            Err(_) if refs == 1 => {
                self.unindex(b);
                return Ok(b);
            }
            Err(e) => return Err(e),
        };
        let rows = self.block_tokens;
        for arena in &mut self.arenas {
            for (data, row) in [(&mut arena.k, self.k_row), (&mut arena.v, self.v_row)] {
                let bytes = rows * row;
                data.copy_within(
                    b as usize * bytes..(b as usize + 1) * bytes,
                    copy as usize * bytes,
                );
            }
        }
        self.seqs
            .get_mut(&seq)
            .expect("the sequence holds the block")
            .table[index] = copy;
        self.release(b);
        Ok(copy)
    }

    /// Blocks `s` (none when `None`) still needs to grow to `len` tokens by appending.
    fn reservation_need(&self, s: Option<&Seq>, len: usize) -> usize {
        let Some(s) = s else {
            return self.blocks_for(len);
        };
        let grow = self.blocks_for(len).saturating_sub(s.table.len());
        // The next stores fill the last block before starting a new one; when that block is
        // shared or indexed, the first of them copies it.
        let copy = s.table.last().is_some_and(|&b| {
            let blk = &self.blocks[b as usize];
            (blk.refs > 1 || blk.entry.is_some())
                && s.lens
                    .iter()
                    .any(|&l| l < s.table.len() * self.block_tokens)
        });
        grow + usize::from(copy)
    }

    /// After `seq`'s table shrank or was attached: its reservation takes back up to `refund`
    /// blocks that `seq` just made allocatable, and keeps no more than it still needs.
    fn settle_reservation(&mut self, seq: u32, refund: usize) {
        let Some(s) = self.seqs.get(&seq) else {
            return;
        };
        let Some(r) = s.reservation else {
            return;
        };
        let held = (r.held + refund).min(self.reservation_need(Some(s), r.len));
        self.reserved = self.reserved - r.held + held;
        if let Some(r) = self.seqs.get_mut(&seq).and_then(|s| s.reservation.as_mut()) {
            r.held = held;
        }
    }
}

/// Writes `src` into `dst` as `dtype` elements, native byte order.
fn encode(dtype: GgmlType, src: &[f32], dst: &mut [u8]) {
    if dtype == GgmlType::F16 {
        for (d, &x) in dst.chunks_exact_mut(2).zip(src) {
            d.copy_from_slice(&f16::from_f32(x).to_ne_bytes());
        }
    } else {
        for (d, &x) in dst.chunks_exact_mut(4).zip(src) {
            d.copy_from_slice(&x.to_ne_bytes());
        }
    }
}

impl plugin_api::arch::KvCache for KvCache {
    fn dtype(&self) -> GgmlType {
        self.dtype
    }

    fn store(
        &mut self,
        layer: u32,
        seq: u32,
        pos: u32,
        k: RSlice<'_, f32>,
        v: RSlice<'_, f32>,
    ) -> RResult<(), RString> {
        KvCache::store(
            self,
            layer as usize,
            seq,
            pos as usize,
            k.as_slice(),
            v.as_slice(),
        )
        .map_err(|e| RString::from(e.to_string()))
        .into()
    }

    fn view(&self, layer: u32, seq: u32, len: u32) -> RResult<KvView<'_>, RString> {
        KvCache::view(self, layer as usize, seq, len as usize)
            .map_err(|e| RString::from(e.to_string()))
            .into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHAPE: KvShape = KvShape {
        n_layer: 2,
        k_dim: 4,
        v_dim: 4,
        head_dim: 4,
    };

    fn fill(kv: &mut KvCache, seq: u32, from: usize, tokens: &[u32]) {
        for (pos, &t) in tokens.iter().enumerate().skip(from) {
            for layer in 0..2 {
                let x = (t * 100 + pos as u32 + layer as u32 * 7) as f32;
                kv.store(layer, seq, pos, &[x; 4], &[-x; 4]).unwrap();
            }
        }
    }

    #[test]
    fn every_hash_colliding_still_reuses_only_equal_prefixes() {
        let mut kv = KvCache::paged(SHAPE, 64, GgmlType::F32, 4, 2, 16).unwrap();
        kv.hasher = |_, _| 7;
        let a = [1, 2, 3, 4, 5, 6];
        fill(&mut kv, 0, 0, &a);
        kv.index_prefix(0, &a);
        kv.check_consistency().unwrap();
        // Same second block after a different first block, a different first block, and one
        // equal block then a different one: each shares only its truly equal prefix.
        for (seq, tokens, want) in [
            (1, [9, 9, 3, 4, 5, 6], 0),
            (2, [2, 1, 3, 4, 5, 6], 0),
            (3, [1, 2, 3, 5, 5, 6], 2),
            (4, [1, 2, 3, 4, 5, 7], 4),
            (5, [1, 2, 3, 4, 5, 6], 6),
        ] {
            assert_eq!(kv.cached_prefix_len(&tokens), want, "{tokens:?}");
            assert_eq!(kv.reuse_prefix(seq, &tokens, 6), want, "{tokens:?}");
            fill(&mut kv, seq, want, &tokens);
            kv.index_prefix(seq, &tokens);
            kv.check_consistency().unwrap();
        }
        assert_eq!(kv.index.len(), 1, "everything under one hash");
        // 3 blocks of `a`, then 3 + 3 + 2 + 1 new ones for the differing suffixes.
        assert_eq!(kv.index[&7].len(), 12);
        for seq in 1..=5 {
            kv.clear_seq(seq);
            kv.check_consistency().unwrap();
        }
        assert_eq!(kv.reuse_prefix(9, &[2, 1, 3, 4, 0, 0], 6), 4);
        assert_eq!(kv.reuse_prefix(10, &[1, 2, 3, 4, 0, 0], 6), 4);
        kv.check_consistency().unwrap();
    }

    #[test]
    fn evicted_blocks_leave_the_index() {
        let mut kv = KvCache::paged(SHAPE, 8, GgmlType::F32, 4, 2, 4).unwrap();
        fill(&mut kv, 0, 0, &[1, 2, 3, 4]);
        kv.index_prefix(0, &[1, 2, 3, 4]);
        kv.clear_seq(0);
        assert_eq!(kv.blocks_cached(), 2);
        // A sequence needing all four blocks evicts both cached ones.
        fill(&mut kv, 1, 0, &[7, 7, 7, 7, 7, 7, 7, 7]);
        kv.check_consistency().unwrap();
        assert_eq!(kv.blocks_cached(), 0);
        assert_eq!(kv.cached_prefix_len(&[1, 2, 3, 4]), 0);
        assert!(kv.index.is_empty());
    }
}
