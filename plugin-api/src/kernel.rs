//! Kernel plugins: one shared library per instruction set, providing every op the forward
//! pass needs. Ops take explicit shapes and strides over slices the host owns; they split their
//! work over the host's pool and never keep references past the call.

use crate::{guard::guard, pool::PoolRef, CpuFeatures, CpuInfo, GgmlType, Isa};
use abi_stable::{
    declare_root_module_statics,
    library::RootModule,
    package_version_strings,
    sabi_types::VersionStrings,
    std_types::{ROption, RResult, RSlice, RSliceMut, RString, RVec},
    StableAbi,
};

/// What a kernel plugin says about itself.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub struct KernelInfo {
    /// e.g. "kernels-avx2"
    pub name: RString,
    pub isa: Isa,
    /// Features without which no op of this plugin may run. The same set is in the plugin's
    /// manifest, which the host reads without opening the library.
    pub required: CpuFeatures,
    /// The plugin's own version.
    pub version: RString,
    /// The weight types `matmul` accepts.
    pub weight_types: RVec<GgmlType>,
}

/// A weight matrix of `rows` output features × `cols` input features, row-major, each row
/// `dtype.row_bytes(cols)` bytes (GGUF's native layout when `layout == 0`).
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy)]
pub struct WeightRef<'a> {
    pub dtype: GgmlType,
    /// 0: GGUF-native; any other value: a plugin-specific layout made by `prepare_weight`.
    pub layout: u32,
    pub rows: usize,
    pub cols: usize,
    pub data: RSlice<'a, u8>,
}

/// `output[b][r] = Σ_k weight[r][k] · input[b][k]` for `b < n_batch`, `r < weight.rows`.
#[repr(C)]
#[derive(StableAbi, Debug)]
pub struct MatmulArgs<'a> {
    pub weight: WeightRef<'a>,
    /// `n_batch` rows of `weight.cols` floats, `input_stride` floats apart.
    pub input: RSlice<'a, f32>,
    pub input_stride: usize,
    pub n_batch: usize,
    /// `n_batch` rows of `weight.rows` floats, `output_stride` floats apart.
    pub output: RSliceMut<'a, f32>,
    pub output_stride: usize,
}

/// One product of a [`FusedMatmulArgs`]: `output[b] (+)= weight · input[b] (+ bias)`.
#[repr(C)]
#[derive(StableAbi, Debug)]
pub struct MatmulTarget<'a> {
    pub weight: WeightRef<'a>,
    /// `weight.rows` values added to every output row.
    pub bias: ROption<RSlice<'a, f32>>,
    /// `n_batch` rows of `weight.rows` floats, `output_stride` floats apart.
    pub output: RSliceMut<'a, f32>,
    pub output_stride: usize,
    /// Add the product to what `output` holds (a residual connection) instead of overwriting.
    pub accumulate: bool,
}

/// Several matmuls reading one input, run as one op: the input is (optionally RMS-normalised
/// and) quantized once and every product is split over the pool in a single pass. This is how
/// a layer computes Q, K and V, or the feed-forward's gate and up, with one synchronisation
/// point instead of five.
///
/// Results equal, up to float summation order, `rms_norm` (when `norm` is set), then for each
/// target `matmul`, the bias added, and the result added to the output when `accumulate`.
#[repr(C)]
#[derive(StableAbi, Debug)]
pub struct FusedMatmulArgs<'a> {
    /// `n_batch` rows of `cols` floats, `input_stride` floats apart; every target's weight has
    /// `cols` columns.
    pub input: RSlice<'a, f32>,
    pub input_stride: usize,
    pub n_batch: usize,
    pub cols: usize,
    /// When set, each input row is first RMS-normalised with these `cols` multipliers.
    pub norm: ROption<RSlice<'a, f32>>,
    pub norm_eps: f32,
    pub targets: RSliceMut<'a, MatmulTarget<'a>>,
}

/// One side (keys or values) of a sequence's KV cache: `kv_len` token rows, each holding
/// `n_head_kv` heads of `head_dim` elements of `dtype` (F32 or F16).
///
/// The rows live in `data`, either contiguously (`block_tokens == 0`: logical token `j` is
/// physical row `j`) or paged (`block_tokens > 0`: the cache is a pool of blocks of
/// `block_tokens` rows, and logical token `j` is row `j % block_tokens` of block
/// `blocks[j / block_tokens]`, i.e. physical row
/// `blocks[j / block_tokens] · block_tokens + j % block_tokens`). Physical row `r` of head `h`
/// starts at byte `r · token_stride + h · head_stride`; use [`KvRef::row_offset`].
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy)]
pub struct KvRef<'a> {
    pub dtype: GgmlType,
    pub data: RSlice<'a, u8>,
    /// Bytes between consecutive physical rows.
    pub token_stride: usize,
    /// Bytes between consecutive heads of one token.
    pub head_stride: usize,
    /// Rows per block when paged; 0 when contiguous.
    pub block_tokens: usize,
    /// The sequence's block table when paged (block ids into `data`); empty when contiguous.
    pub blocks: RSlice<'a, u32>,
}

impl<'a> KvRef<'a> {
    /// Rows `0..` stored one after the other, `token_stride` bytes apart.
    pub fn contiguous(
        dtype: GgmlType,
        data: &'a [u8],
        token_stride: usize,
        head_stride: usize,
    ) -> Self {
        KvRef {
            dtype,
            data: RSlice::from_slice(data),
            token_stride,
            head_stride,
            block_tokens: 0,
            blocks: RSlice::from_slice(&[]),
        }
    }

    /// The physical row holding logical token `j`. Panics when `j` is past the block table
    /// (kernels validate `kv_len` against it first).
    #[inline]
    pub fn physical_row(&self, j: usize) -> usize {
        match (
            j.checked_div(self.block_tokens),
            j.checked_rem(self.block_tokens),
        ) {
            (Some(block), Some(row)) => self.blocks[block] as usize * self.block_tokens + row,
            _ => j,
        }
    }

    /// Byte offset in `data` of head `head` of logical token `j`.
    #[inline]
    pub fn row_offset(&self, j: usize, head: usize) -> usize {
        self.physical_row(j) * self.token_stride + head * self.head_stride
    }

    /// How many logical tokens follow `j` in the same physical run (same block, or all of
    /// them when contiguous), counting `j`: rows `j..j + run` are `token_stride` apart.
    #[inline]
    pub fn contiguous_run(&self, j: usize) -> usize {
        if self.block_tokens == 0 {
            usize::MAX - j
        } else {
            self.block_tokens - j % self.block_tokens
        }
    }
}

/// Scaled dot-product attention for one sequence: queries at positions `q_pos` against keys
/// `0..kv_len` (key `j` is at position `j`).
///
/// Key `j` is visible to query `i` when `causal` is false or `j <= q_pos[i]`, and, when
/// `window > 0`, `q_pos[i] - j < window`. Query head `h` reads KV head
/// `h / (n_head / n_head_kv)` (grouped-query attention). Scores are `scale · q·k`, then
/// `softcap · tanh(score / softcap)` when `softcap > 0`, then softmax.
#[repr(C)]
#[derive(StableAbi, Debug)]
pub struct AttentionArgs<'a> {
    /// `n_q` tokens × `n_head` × `head_dim`, tokens `q_stride` floats apart, heads contiguous.
    pub q: RSlice<'a, f32>,
    pub q_stride: usize,
    pub q_pos: RSlice<'a, i32>,
    pub n_q: usize,
    pub k: KvRef<'a>,
    pub v: KvRef<'a>,
    pub kv_len: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub scale: f32,
    pub softcap: f32,
    pub window: u32,
    pub causal: bool,
    /// `n_q` tokens × `n_head` × `head_dim`, tokens `out_stride` floats apart.
    pub out: RSliceMut<'a, f32>,
    pub out_stride: usize,
}

/// `out[r] = x[r] / sqrt(mean(x[r]²) + eps) · weight` for `rows` contiguous rows of `dim`.
#[repr(C)]
#[derive(StableAbi, Debug)]
pub struct RmsNormArgs<'a> {
    pub x: RSlice<'a, f32>,
    pub out: RSliceMut<'a, f32>,
    /// `dim` multipliers; none means 1.
    pub weight: ROption<RSlice<'a, f32>>,
    pub rows: usize,
    pub dim: usize,
    pub eps: f32,
}

/// How RoPE pairs the dimensions of a head.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeMode {
    /// Adjacent pairs (2i, 2i+1): Llama as converted to GGUF.
    Normal = 0,
    /// Split halves (i, i + n_rot/2): GPT-NeoX, Qwen2, Gemma.
    Neox = 1,
}

/// Rotary position embedding, in place, over the first `n_rot` dimensions of every head:
/// pair `i` of the token at position `p` turns by `p · freq_scale · freq_base^(-2i/n_rot)`.
#[repr(C)]
#[derive(StableAbi, Debug)]
pub struct RopeArgs<'a> {
    /// `n_tokens` × `n_heads` × `head_dim`, tokens `token_stride` floats apart.
    pub x: RSliceMut<'a, f32>,
    pub n_tokens: usize,
    pub n_heads: usize,
    pub head_dim: usize,
    pub token_stride: usize,
    pub positions: RSlice<'a, i32>,
    pub n_rot: usize,
    pub freq_base: f32,
    pub freq_scale: f32,
    pub mode: RopeMode,
}

/// Row-wise softmax in place: `x[r] = softmax(scale · x[r])` over `rows` rows of `cols`.
#[repr(C)]
#[derive(StableAbi, Debug)]
pub struct SoftmaxArgs<'a> {
    pub x: RSliceMut<'a, f32>,
    pub rows: usize,
    pub cols: usize,
    pub scale: f32,
}

/// Element-wise functions of one argument.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnaryOp {
    /// x · sigmoid(x)
    Silu = 0,
    /// GELU, tanh approximation (ggml_gelu).
    Gelu = 1,
    /// x · param
    Scale = 2,
    /// param · tanh(x / param): Gemma 2's logit soft-capping.
    Softcap = 3,
}

/// `x = op(x, param)` in place.
#[repr(C)]
#[derive(StableAbi, Debug)]
pub struct UnaryArgs<'a> {
    pub op: UnaryOp,
    pub x: RSliceMut<'a, f32>,
    pub param: f32,
}

#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryOp {
    Add = 0,
    Mul = 1,
}

/// `a[r][c] = a[r][c] op b[r][c]` in place for `rows` rows of `cols`; when `b` holds a single
/// row of `cols`, it is broadcast to every row of `a`.
#[repr(C)]
#[derive(StableAbi, Debug)]
pub struct BinaryArgs<'a> {
    pub op: BinaryOp,
    pub a: RSliceMut<'a, f32>,
    pub b: RSlice<'a, f32>,
    pub rows: usize,
    pub cols: usize,
}

/// The activation of a gated linear unit.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub enum GluKind {
    /// SwiGLU: silu(gate) · up (Llama, Qwen2)
    Silu = 0,
    /// GeGLU: gelu(gate) · up (Gemma)
    Gelu = 1,
}

/// `gate = act(gate) · up` in place, element-wise (the fused SiLU×up of the feed-forward).
#[repr(C)]
#[derive(StableAbi, Debug)]
pub struct GluArgs<'a> {
    pub kind: GluKind,
    pub gate: RSliceMut<'a, f32>,
    pub up: RSlice<'a, f32>,
}

/// Converts `n` values of `dtype` (a whole number of blocks) to f32: embedding look-ups.
#[repr(C)]
#[derive(StableAbi, Debug)]
pub struct DequantizeArgs<'a> {
    pub dtype: GgmlType,
    pub src: RSlice<'a, u8>,
    pub dst: RSliceMut<'a, f32>,
}

/// Converts f32 values to `dtype` (a whole number of blocks).
#[repr(C)]
#[derive(StableAbi, Debug)]
pub struct QuantizeArgs<'a> {
    pub dtype: GgmlType,
    pub src: RSlice<'a, f32>,
    pub dst: RSliceMut<'a, u8>,
}

/// A weight repacked by `prepare_weight` into the plugin's preferred layout. The host owns it
/// and hands it back in `WeightRef { layout, data, .. }`.
#[repr(C)]
#[derive(StableAbi, Debug, Clone)]
pub struct PreparedWeight {
    pub layout: u32,
    pub data: RVec<u8>,
}

/// Result of every op: `RErr` carries one line saying what was wrong.
pub type OpResult = RResult<(), RString>;

/// The root module of a kernel plugin: its self-description and its op table.
///
/// Fields after `fused_matmul` (added in later API versions) are optional: a host reads them
/// through accessors that return `None` for an older plugin.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = KernelPluginRef)))]
#[sabi(missing_field(panic))]
pub struct KernelPlugin {
    pub info: extern "C" fn() -> RResult<KernelInfo, RString>,
    /// 0: cannot run on this CPU; higher is better.
    pub score: extern "C" fn(&CpuInfo) -> RResult<u32, RString>,
    pub matmul: for<'a, 'p> extern "C" fn(MatmulArgs<'a>, &PoolRef<'p>) -> OpResult,
    pub attention: for<'a, 'p> extern "C" fn(AttentionArgs<'a>, &PoolRef<'p>) -> OpResult,
    pub rms_norm: for<'a, 'p> extern "C" fn(RmsNormArgs<'a>, &PoolRef<'p>) -> OpResult,
    pub rope: for<'a, 'p> extern "C" fn(RopeArgs<'a>, &PoolRef<'p>) -> OpResult,
    pub softmax: for<'a, 'p> extern "C" fn(SoftmaxArgs<'a>, &PoolRef<'p>) -> OpResult,
    pub unary: for<'a, 'p> extern "C" fn(UnaryArgs<'a>, &PoolRef<'p>) -> OpResult,
    pub binary: for<'a, 'p> extern "C" fn(BinaryArgs<'a>, &PoolRef<'p>) -> OpResult,
    pub glu: for<'a, 'p> extern "C" fn(GluArgs<'a>, &PoolRef<'p>) -> OpResult,
    pub dequantize: for<'a, 'p> extern "C" fn(DequantizeArgs<'a>, &PoolRef<'p>) -> OpResult,
    pub quantize: for<'a, 'p> extern "C" fn(QuantizeArgs<'a>, &PoolRef<'p>) -> OpResult,
    /// Repacks a weight once at load; `RNone` keeps it zero-copy in the mmap.
    pub prepare_weight:
        for<'a> extern "C" fn(WeightRef<'a>) -> RResult<ROption<PreparedWeight>, RString>,
    #[sabi(last_prefix_field)]
    pub fused_matmul: for<'a, 'p> extern "C" fn(FusedMatmulArgs<'a>, &PoolRef<'p>) -> OpResult,
}

impl RootModule for KernelPluginRef {
    declare_root_module_statics! {KernelPluginRef}
    const BASE_NAME: &'static str = "llmhost_kernels";
    const NAME: &'static str = "llmhost kernel plugin";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}

/// What a kernel plugin implements, in plain Rust. [`export_kernel_plugin!`](crate::export_kernel_plugin)
/// turns it into the exported root module, wrapping every entry point in the panic guard.
pub trait KernelImpl: 'static {
    fn info() -> KernelInfo;
    fn score(cpu: &CpuInfo) -> u32;
    fn matmul(args: MatmulArgs<'_>, pool: &PoolRef<'_>) -> Result<(), String>;
    fn attention(args: AttentionArgs<'_>, pool: &PoolRef<'_>) -> Result<(), String>;
    fn rms_norm(args: RmsNormArgs<'_>, pool: &PoolRef<'_>) -> Result<(), String>;
    fn rope(args: RopeArgs<'_>, pool: &PoolRef<'_>) -> Result<(), String>;
    fn softmax(args: SoftmaxArgs<'_>, pool: &PoolRef<'_>) -> Result<(), String>;
    fn unary(args: UnaryArgs<'_>, pool: &PoolRef<'_>) -> Result<(), String>;
    fn binary(args: BinaryArgs<'_>, pool: &PoolRef<'_>) -> Result<(), String>;
    fn glu(args: GluArgs<'_>, pool: &PoolRef<'_>) -> Result<(), String>;
    fn dequantize(args: DequantizeArgs<'_>, pool: &PoolRef<'_>) -> Result<(), String>;
    fn quantize(args: QuantizeArgs<'_>, pool: &PoolRef<'_>) -> Result<(), String>;
    fn prepare_weight(_weight: WeightRef<'_>) -> Result<Option<PreparedWeight>, String> {
        Ok(None)
    }
    /// By default, the fused ops one after the other (what a plugin without a fused path
    /// computes anyway).
    fn fused_matmul(args: FusedMatmulArgs<'_>, pool: &PoolRef<'_>) -> Result<(), String> {
        fused_matmul_unfused::<Self>(args, pool)
    }
}

/// [`KernelImpl::fused_matmul`] as separate `rms_norm`, `matmul` and `binary` ops.
pub fn fused_matmul_unfused<K: KernelImpl + ?Sized>(
    mut args: FusedMatmulArgs<'_>,
    pool: &PoolRef<'_>,
) -> Result<(), String> {
    let (n, cols, stride) = (args.n_batch, args.cols, args.input_stride);
    let input = args.input.as_slice();
    if n > 0 && (stride < cols || input.len() < (n - 1) * stride + cols) {
        return Err(format!(
            "input holds {} floats, {n} rows of {cols} {stride} apart do not fit",
            input.len()
        ));
    }
    let normed: Vec<f32>;
    let (x, x_stride) = match args.norm {
        ROption::RSome(w) => {
            let mut packed = Vec::with_capacity(n * cols);
            for b in 0..n {
                packed.extend_from_slice(&input[b * stride..][..cols]);
            }
            let mut out = vec![0f32; n * cols];
            K::rms_norm(
                RmsNormArgs {
                    x: RSlice::from_slice(&packed),
                    out: RSliceMut::from_mut_slice(&mut out),
                    weight: ROption::RSome(w),
                    rows: n,
                    dim: cols,
                    eps: args.norm_eps,
                },
                pool,
            )?;
            normed = out;
            (normed.as_slice(), cols)
        }
        ROption::RNone => (input, stride),
    };
    for t in args.targets.as_mut_slice() {
        let rows = t.weight.rows;
        let direct = !t.accumulate && t.bias.is_none();
        let mut tmp = if direct {
            Vec::new()
        } else {
            vec![0f32; n * rows]
        };
        let (out, out_stride) = if direct {
            (t.output.as_mut_slice(), t.output_stride)
        } else {
            (tmp.as_mut_slice(), rows)
        };
        K::matmul(
            MatmulArgs {
                weight: t.weight,
                input: RSlice::from_slice(x),
                input_stride: x_stride,
                n_batch: n,
                output: RSliceMut::from_mut_slice(out),
                output_stride: out_stride,
            },
            pool,
        )?;
        if direct {
            continue;
        }
        if let ROption::RSome(bias) = &t.bias {
            K::binary(
                BinaryArgs {
                    op: BinaryOp::Add,
                    a: RSliceMut::from_mut_slice(&mut tmp),
                    b: *bias,
                    rows: n,
                    cols: rows,
                },
                pool,
            )?;
        }
        let dst = t.output.as_mut_slice();
        let os = t.output_stride;
        if n > 0 && (os < rows || dst.len() < (n - 1) * os + rows) {
            return Err(format!(
                "output holds {} floats, {n} rows of {rows} {os} apart do not fit",
                dst.len()
            ));
        }
        for b in 0..n {
            let row = &mut dst[b * os..][..rows];
            let src = &tmp[b * rows..][..rows];
            if t.accumulate {
                row.iter_mut().zip(src).for_each(|(o, v)| *o += v);
            } else {
                row.copy_from_slice(src);
            }
        }
    }
    Ok(())
}

macro_rules! op_shims {
    ($($op:ident : $args:ident;)*) => {
        $(
            extern "C" fn $op<'a, 'p, K: KernelImpl>(args: $args<'a>, pool: &PoolRef<'p>) -> OpResult {
                guard(stringify!($op), || K::$op(args, pool))
            }
        )*

        /// Builds the root module of kernel plugin `K` (called once, by the exported
        /// root-module function).
        pub fn root_module<K: KernelImpl>() -> KernelPluginRef {
            use abi_stable::prefix_type::PrefixTypeTrait;
            KernelPlugin {
                info: info_shim::<K>,
                score: score_shim::<K>,
                $($op: $op::<K>,)*
                prepare_weight: prepare_weight_shim::<K>,
            }
            .leak_into_prefix()
        }
    };
}

mod shims {
    use super::*;

    pub(super) extern "C" fn info_shim<K: KernelImpl>() -> RResult<KernelInfo, RString> {
        guard("info", || Ok(K::info()))
    }

    pub(super) extern "C" fn score_shim<K: KernelImpl>(cpu: &CpuInfo) -> RResult<u32, RString> {
        guard("score", || Ok(K::score(cpu)))
    }

    pub(super) extern "C" fn prepare_weight_shim<K: KernelImpl>(
        weight: WeightRef<'_>,
    ) -> RResult<ROption<PreparedWeight>, RString> {
        guard("prepare_weight", || {
            K::prepare_weight(weight).map(ROption::from)
        })
    }
}
use shims::*;

op_shims! {
    matmul: MatmulArgs;
    attention: AttentionArgs;
    rms_norm: RmsNormArgs;
    rope: RopeArgs;
    softmax: SoftmaxArgs;
    unary: UnaryArgs;
    binary: BinaryArgs;
    glu: GluArgs;
    dequantize: DequantizeArgs;
    quantize: QuantizeArgs;
    fused_matmul: FusedMatmulArgs;
}
