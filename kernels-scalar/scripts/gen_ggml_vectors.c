// Test vectors for kernels-scalar's quants module, computed by ggml's own C reference code.
//
// Built and run by gen_ggml_vectors.sh (read it for versions and flags); links against
// ggml/src/ggml-quants.c (reference quantizers, dequantizers) and ggml/src/ggml-cpu/quants.c
// (the scalar `ggml_vec_dot_*_generic` dot products) of the llama.cpp that llama-cpp-python
// 0.3.36 vendors (b11312, commit 0c1e570).
//
// Writes, under the directory given as argv[1]:
//   dequant/<TYPE>.ggml.bin  dequantize_row_<type>   (every type ggml can dequantize; incl. Q8_K)
//   quant/<TYPE>.bin         quantize_row_<type>_ref (and ggml's FP32->FP16/BF16 conversions)
//   vecdot/<TYPE>.bin        ggml_vec_dot_<type>_<vec_dot_type>_generic
// File formats: see kernels-scalar/testdata/README.md. All integers little-endian.

#define GGML_COMMON_DECL_C
#include "ggml-common.h"
#include "ggml-quants.h"
#include "ggml-impl.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// ---- what ggml-quants.c / ggml-cpu/quants.c need from the rest of ggml (never called here)
void ggml_abort(const char * file, int line, const char * fmt, ...) {
    fprintf(stderr, "ggml_abort at %s:%d (%s)\n", file, line, fmt);
    abort();
}
size_t ggml_row_size(enum ggml_type type, int64_t ne) { (void) type; (void) ne; abort(); }
const char * ggml_type_name(enum ggml_type type) { (void) type; abort(); }
size_t ggml_type_size(enum ggml_type type) { (void) type; abort(); }
// ggml-cpu's FP16->FP32 table, filled the way ggml_cpu_init fills it.
float ggml_table_f32_f16[1 << 16];

// ---- the scalar dot products of ggml-cpu/quants.c
typedef void (*vec_dot_fn)(int n, float * s, size_t bs, const void * vx, size_t bx, const void * vy, size_t by, int nrc);
void ggml_vec_dot_q4_0_q8_0_generic(int, float *, size_t, const void *, size_t, const void *, size_t, int);
void ggml_vec_dot_q4_1_q8_1_generic(int, float *, size_t, const void *, size_t, const void *, size_t, int);
void ggml_vec_dot_q5_0_q8_0_generic(int, float *, size_t, const void *, size_t, const void *, size_t, int);
void ggml_vec_dot_q5_1_q8_1_generic(int, float *, size_t, const void *, size_t, const void *, size_t, int);
void ggml_vec_dot_q8_0_q8_0_generic(int, float *, size_t, const void *, size_t, const void *, size_t, int);
void ggml_vec_dot_q2_K_q8_K_generic(int, float *, size_t, const void *, size_t, const void *, size_t, int);
void ggml_vec_dot_q3_K_q8_K_generic(int, float *, size_t, const void *, size_t, const void *, size_t, int);
void ggml_vec_dot_q4_K_q8_K_generic(int, float *, size_t, const void *, size_t, const void *, size_t, int);
void ggml_vec_dot_q5_K_q8_K_generic(int, float *, size_t, const void *, size_t, const void *, size_t, int);
void ggml_vec_dot_q6_K_q8_K_generic(int, float *, size_t, const void *, size_t, const void *, size_t, int);

// ---- type table (GGUF numbers as in plugin_api::GgmlType)
typedef void (*quant_fn)(const float * x, void * y, int64_t k);
typedef void (*dequant_fn)(const void * x, float * y, int64_t k);

static void quant_f16(const float * x, void * y, int64_t k) {
    uint16_t * h = y;
    for (int64_t i = 0; i < k; i++) h[i] = ggml_compute_fp32_to_fp16(x[i]);
}
static void quant_bf16(const float * x, void * y, int64_t k) {
    uint16_t * h = y;
    for (int64_t i = 0; i < k; i++) h[i] = ggml_compute_fp32_to_bf16(x[i]).bits;
}

typedef struct {
    const char * name;
    uint32_t id;
    int block;      // elements per block
    int bytes;      // bytes per block
    quant_fn quant;
    dequant_fn dequant;
    int scale_off[2];  // offsets of f16 scale fields (-1: none); Q8_K: f32 at 0
    vec_dot_fn dot;
    int dot_type;   // index into TYPES of the activation type
} type_info;

enum { T_F16, T_BF16, T_Q4_0, T_Q4_1, T_Q5_0, T_Q5_1, T_Q8_0, T_Q8_1, T_Q2_K, T_Q3_K, T_Q4_K, T_Q5_K, T_Q6_K, T_Q8_K, T_COUNT };

#define Q(f) ((quant_fn) (f))
#define D(f) ((dequant_fn) (f))
static const type_info TYPES[T_COUNT] = {
    [T_F16]  = {"F16",   1,   1,   2, quant_f16,                 NULL,                   {-1, -1}, NULL, 0},
    [T_BF16] = {"BF16", 30,   1,   2, quant_bf16,                NULL,                   {-1, -1}, NULL, 0},
    [T_Q4_0] = {"Q4_0",  2,  32,  18, Q(quantize_row_q4_0_ref), D(dequantize_row_q4_0), {0, -1},  ggml_vec_dot_q4_0_q8_0_generic, T_Q8_0},
    [T_Q4_1] = {"Q4_1",  3,  32,  20, Q(quantize_row_q4_1_ref), D(dequantize_row_q4_1), {0, 2},   ggml_vec_dot_q4_1_q8_1_generic, T_Q8_1},
    [T_Q5_0] = {"Q5_0",  6,  32,  22, Q(quantize_row_q5_0_ref), D(dequantize_row_q5_0), {0, -1},  ggml_vec_dot_q5_0_q8_0_generic, T_Q8_0},
    [T_Q5_1] = {"Q5_1",  7,  32,  24, Q(quantize_row_q5_1_ref), D(dequantize_row_q5_1), {0, 2},   ggml_vec_dot_q5_1_q8_1_generic, T_Q8_1},
    [T_Q8_0] = {"Q8_0",  8,  32,  34, Q(quantize_row_q8_0_ref), D(dequantize_row_q8_0), {0, -1},  ggml_vec_dot_q8_0_q8_0_generic, T_Q8_0},
    [T_Q8_1] = {"Q8_1",  9,  32,  36, Q(quantize_row_q8_1_ref), NULL,                   {0, 2},   NULL, 0},
    [T_Q2_K] = {"Q2_K", 10, 256,  84, Q(quantize_row_q2_K_ref), D(dequantize_row_q2_K), {80, 82}, ggml_vec_dot_q2_K_q8_K_generic, T_Q8_K},
    [T_Q3_K] = {"Q3_K", 11, 256, 110, Q(quantize_row_q3_K_ref), D(dequantize_row_q3_K), {108, -1}, ggml_vec_dot_q3_K_q8_K_generic, T_Q8_K},
    [T_Q4_K] = {"Q4_K", 12, 256, 144, Q(quantize_row_q4_K_ref), D(dequantize_row_q4_K), {0, 2},   ggml_vec_dot_q4_K_q8_K_generic, T_Q8_K},
    [T_Q5_K] = {"Q5_K", 13, 256, 176, Q(quantize_row_q5_K_ref), D(dequantize_row_q5_K), {0, 2},   ggml_vec_dot_q5_K_q8_K_generic, T_Q8_K},
    [T_Q6_K] = {"Q6_K", 14, 256, 210, Q(quantize_row_q6_K_ref), D(dequantize_row_q6_K), {208, -1}, ggml_vec_dot_q6_K_q8_K_generic, T_Q8_K},
    [T_Q8_K] = {"Q8_K", 15, 256, 292, Q(quantize_row_q8_K_ref), D(dequantize_row_q8_K), {-1, -1}, NULL, 0},
};

// ---- deterministic randomness (xorshift64*)
static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static uint64_t rng_u64(void) {
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545F4914F6CDD1Dull;
}
static double rng_uniform(void) { return (double) (rng_u64() >> 11) / 9007199254740992.0; }
static float rng_gauss(void) {
    double u1 = rng_uniform(), u2 = rng_uniform();
    if (u1 < 1e-300) u1 = 1e-300;
    return (float) (sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

// ---- output
static FILE * open_out(const char * dir, const char * sub, const char * name, const char * suffix,
                       const char * magic, uint32_t type, uint32_t nrec) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s/%s%s", dir, sub, name, suffix);
    FILE * f = fopen(path, "wb");
    if (!f) { perror(path); exit(1); }
    fwrite(magic, 1, 4, f);
    fwrite(&type, 4, 1, f);
    fwrite(&nrec, 4, 1, f);
    return f;
}
static void put_u32(FILE * f, uint32_t v) { fwrite(&v, 4, 1, f); }

// Random bytes for `nblk` blocks of type t, with the scale fields set to sane finite values
// (random sign and magnitude 2^-10..2^2, one block with a subnormal scale) and, for Q8_K,
// consistent bsums.
static void random_blocks(int t, uint8_t * out, int nblk) {
    const type_info * ti = &TYPES[t];
    for (int i = 0; i < nblk * ti->bytes; i++) out[i] = (uint8_t) rng_u64();
    for (int b = 0; b < nblk; b++) {
        uint8_t * blk = out + b * ti->bytes;
        float mag = ldexpf(1.0f + (float) rng_uniform(), (int) (rng_u64() % 13) - 10);
        if (t == T_Q8_K) {
            float d = (rng_u64() & 1 ? -mag : mag) / 127.0f;
            memcpy(blk, &d, 4);
            for (int j = 0; j < 16; j++) {
                int sum = 0;
                for (int l = 0; l < 16; l++) sum += (int8_t) blk[4 + 16 * j + l];
                int16_t s = (int16_t) sum;
                memcpy(blk + 260 + 2 * j, &s, 2);
            }
            continue;
        }
        for (int k = 0; k < 2; k++) {
            if (ti->scale_off[k] < 0) continue;
            float v = (rng_u64() & 1 ? -mag : mag) * (float) rng_uniform();
            uint16_t h = ggml_compute_fp32_to_fp16(v);
            if (b == 1 && k == 0) h = (uint16_t) (rng_u64() % 0x3FF) + 1; // subnormal
            memcpy(blk + ti->scale_off[k], &h, 2);
        }
    }
}

static void gauss_fill(float * x, int n, float sigma, float offset) {
    for (int i = 0; i < n; i++) x[i] = offset + sigma * rng_gauss();
}

// ---- dequant vectors: random bytes, and quantized gaussians
static void gen_dequant(const char * dir, int t) {
    const type_info * ti = &TYPES[t];
    const int nblk = ti->block == 256 ? 2 : 8;
    const int n = nblk * ti->block;
    uint8_t * q = calloc(nblk, ti->bytes);
    float * x = malloc(n * sizeof(float));
    float * y = malloc(n * sizeof(float));
    FILE * f = open_out(dir, "dequant", ti->name, ".ggml.bin", "LHDQ", ti->id, 2);
    for (int rec = 0; rec < 2; rec++) {
        if (rec == 0) {
            random_blocks(t, q, nblk);
        } else {
            gauss_fill(x, n, 0.5f, 0.1f);
            ti->quant(x, q, n);
        }
        ti->dequant(q, y, n);
        put_u32(f, n);
        put_u32(f, nblk * ti->bytes);
        fwrite(q, ti->bytes, nblk, f);
        fwrite(y, sizeof(float), n, f);
    }
    fclose(f);
    free(q); free(x); free(y);
}

// ---- quant vectors: several input distributions, 256 elements each
#define QN 256
static int quant_inputs(int t, int rec, float * x) {
    switch (rec) {
        case 0: gauss_fill(x, QN, 1.0f, 0.0f); return 1;
        case 1: gauss_fill(x, QN, 0.02f, 0.0f); return 1;               // weight-like
        case 2: for (int i = 0; i < QN; i++) x[i] = (float) rng_uniform(); return 1; // all >= 0
        case 3: gauss_fill(x, QN, 0.3f, 0.0f);                          // outliers
                for (int i = 0; i < 6; i++) x[rng_u64() % QN] = 40.0f * rng_gauss();
                return 1;
        case 4: // per-16 groups of wildly different scale, some all-zero, some constant
            for (int g = 0; g < QN / 16; g++) {
                int kind = (int) (rng_u64() % 6);
                float s = ldexpf(1.0f, (int) (rng_u64() % 24) - 12);
                float c = s * rng_gauss();
                for (int l = 0; l < 16; l++) {
                    float v = kind == 0 ? 0.0f : kind == 1 ? c : s * rng_gauss();
                    x[16 * g + l] = v;
                }
            }
            return 1;
        case 5: gauss_fill(x, QN, 1e-20f, 0.0f); return 1;               // far below f16 range
        case 6: gauss_fill(x, QN, 3e4f, 0.0f); return 1;                 // near/over f16 max
        case 7: // negative offset, exercises the mins of the asymmetric types
            gauss_fill(x, QN, 0.05f, -0.3f); return 1;
        case 8: // exact ties and specials: only for the pure conversions
            if (t != T_F16 && t != T_BF16) return 0;
            for (int i = 0; i < QN; i++) {
                uint32_t bits = (uint32_t) rng_u64();
                // keep the mantissa bits around the rounding point interesting
                if (i % 4 == 1) bits = (bits & 0xFFFFE000u) | 0x1000u;      // f16 tie
                if (i % 4 == 2) bits = (bits & 0xFFFF0000u) | 0x8000u;      // bf16 tie
                memcpy(&x[i], &bits, 4);
            }
            {
                const float specials[] = {0.0f, -0.0f, INFINITY, -INFINITY, NAN, -NAN, 65504.0f, 65520.0f,
                                          65519.996f, 6.1035156e-05f, 5.9604645e-08f, 2.9802322e-08f,
                                          2.9802326e-08f, 1e-45f, 3.4028235e38f, -3.4028235e38f};
                memcpy(x, specials, sizeof specials);
                uint32_t snan = 0x7F800001u, qnan_payload = 0xFFC12345u;
                memcpy(&x[16], &snan, 4);
                memcpy(&x[17], &qnan_payload, 4);
            }
            return 1;
        default: return 0;
    }
}

static void gen_quant(const char * dir, int t) {
    const type_info * ti = &TYPES[t];
    const int nbytes = QN / ti->block * ti->bytes;
    float x[QN];
    uint8_t * q = malloc(nbytes);
    int nrec = 0;
    for (int rec = 0; rec < 16; rec++) nrec += quant_inputs(t, rec, x);
    FILE * f = open_out(dir, "quant", ti->name, ".bin", "LHQZ", ti->id, nrec);
    for (int rec = 0; rec < 16; rec++) {
        if (!quant_inputs(t, rec, x)) continue;
        memset(q, 0, nbytes);
        ti->quant(x, q, QN);
        put_u32(f, QN);
        put_u32(f, nbytes);
        fwrite(x, sizeof(float), QN, f);
        fwrite(q, 1, nbytes, f);
    }
    fclose(f);
    free(q);
}

// ---- vec_dot vectors
#define VN 512
#define VN_BIG 4096
static void gen_vecdot(const char * dir, int t) {
    const type_info * ti = &TYPES[t];
    const type_info * yi = &TYPES[ti->dot_type];
    uint8_t * w = calloc(1, VN_BIG / ti->block * ti->bytes);
    uint8_t * y = calloc(1, VN_BIG / yi->block * yi->bytes);
    static float a[VN_BIG], b[VN_BIG];
    // Records 3 and 4 make weights and activations alike, so that the integer block sums are
    // large and the float products that scale them are inexact: only then does the order
    // of the float operations show in the result. They are longer for the same reason.
    enum { NREC = 6 };
    FILE * f = open_out(dir, "vecdot", ti->name, ".bin", "LHVD", ti->id, NREC);
    for (int rec = 0; rec < NREC; rec++) {
        const int n = (rec == 3 || rec == 4) ? VN_BIG : VN;
        switch (rec) {
            case 0: gauss_fill(a, n, 0.05f, 0.0f); gauss_fill(b, n, 1.0f, 0.0f); break;
            case 1: gauss_fill(a, n, 1.0f, 0.2f);  for (int i = 0; i < n; i++) b[i] = (float) rng_uniform(); break;
            case 2: quant_inputs(t, 4, a); quant_inputs(t, 4, a + QN); gauss_fill(b, n, 3.0f, -1.0f); break;
            case 3: for (int i = 0; i < n; i++) a[i] = b[i] = 1.0f + 0.5f * fabsf(rng_gauss()); break;
            case 4: gauss_fill(a, n, 0.7f, 0.0f); memcpy(b, a, n * sizeof(float)); break;
            default: break;
        }
        if (rec < NREC - 1) {
            ti->quant(a, w, n);
            yi->quant(b, y, n);
        } else {
            random_blocks(t, w, n / ti->block);
            random_blocks(ti->dot_type, y, n / yi->block);
        }
        const int wbytes = n / ti->block * ti->bytes;
        const int xbytes = n / yi->block * yi->bytes;
        float s = 0.0f;
        ti->dot(n, &s, 0, w, 0, y, 0, 1);
        put_u32(f, n);
        put_u32(f, wbytes);
        put_u32(f, xbytes);
        fwrite(w, 1, wbytes, f);
        fwrite(y, 1, xbytes, f);
        fwrite(&s, 4, 1, f);
    }
    fclose(f);
    free(w); free(y);
}

int main(int argc, char ** argv) {
    if (argc != 2) { fprintf(stderr, "usage: %s OUT_DIR\n", argv[0]); return 2; }
    for (int i = 0; i < (1 << 16); i++) ggml_table_f32_f16[i] = ggml_compute_fp16_to_fp32((ggml_fp16_t) i);
    for (int t = 0; t < T_COUNT; t++) {
        if (TYPES[t].dequant) gen_dequant(argv[1], t);
        gen_quant(argv[1], t);
        if (TYPES[t].dot) gen_vecdot(argv[1], t);
    }
    return 0;
}
