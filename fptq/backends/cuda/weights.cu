// Groupwise INT4 weights (docs/spec.md §4). A weight w [N, K] has ng = ceil(K / G)
// groups per row; group g covers columns [g*G, min((g+1)*G, K)) (the last may be short).
#include "common.cu"

// One warp per (row, group): amax (symmetric) or min/max (asymmetric) over the group,
// exact and order-free (warp shuffles of fmaxf/fminf). Symmetric: scale = max(amax / 7,
// MIN_SCALE). Asymmetric: lo = min(min w, 0), hi = max(max w, 0), span = hi - lo (one
// rounded subtraction; +inf when it overflows: the host raises), scale = max(span / 15,
// MIN_SCALE), zero = clip(rint(-lo / scale), 0, 15).
extern "C" __global__ void weight_scales(const float* __restrict__ w, float* __restrict__ scale,
                                         u8* __restrict__ zero, i64 n_rows, i64 k, i64 g, i64 ng, int asym) {
    const i64 warp = ((i64)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const int lane = threadIdx.x & 31;
    if (warp >= n_rows * ng) return;  // whole warps exit together
    const i64 r = warp / ng, gi = warp % ng;
    const i64 c0 = gi * g, c1 = min(c0 + g, k);
    const float* wr = w + r * k;
    float lo = 0.0f, hi = 0.0f;  // the range always contains 0 (= zero padding of a short group)
    for (i64 j = c0 + lane; j < c1; j += 32) {
        const float v = wr[j];
        if (asym) { lo = fminf(lo, v); hi = fmaxf(hi, v); } else { hi = fmaxf(hi, fabsf(v)); }
    }
    for (int off = 16; off > 0; off >>= 1) {
        lo = fminf(lo, __shfl_xor_sync(0xffffffffu, lo, off));
        hi = fmaxf(hi, __shfl_xor_sync(0xffffffffu, hi, off));
    }
    if (lane != 0) return;
    if (!asym) {
        scale[warp] = fptq_scale_from_amax(hi, (float)FPTQ_INT4_SYM_DIVISOR);
        return;
    }
    const float span = __fsub_rn(hi, lo);
    if (isinf(span)) { scale[warp] = span; zero[warp] = 0; return; }
    const float s = fptq_scale_from_amax(span, (float)FPTQ_UINT4_DIVISOR);
    scale[warp] = s;
    zero[warp] = (u8)fptq_round_clip(__fdiv_rn(-lo, s), (float)FPTQ_UINT4_QMIN, (float)FPTQ_UINT4_QMAX);
}

// q = clip(rint(w / scale[r, g]) (+ zero[r, g] if asymmetric), qmin, qmax), one thread per element.
extern "C" __global__ void quantize_weight_with_scales(const float* __restrict__ w, const float* __restrict__ scale,
                                                       const u8* __restrict__ zero, i8* __restrict__ q,
                                                       i64 n_rows, i64 k, i64 g, i64 ng, int asym) {
    FPTQ_FOR(i, n_rows * k) {
        const i64 r = i / k, gi = (i % k) / g;
        float y = rintf(__fdiv_rn(w[i], scale[r * ng + gi]));
        if (asym) {
            y = __fadd_rn(y, (float)zero[r * ng + gi]);
            q[i] = (i8)fptq_round_clip(y, (float)FPTQ_UINT4_QMIN, (float)FPTQ_UINT4_QMAX);
        } else {
            q[i] = (i8)fptq_round_clip(y, (float)FPTQ_INT4_SYM_QMIN, (float)FPTQ_INT4_SYM_QMAX);
        }
    }
}

// w_hat = float32(q - zero) * scale (zero = 0 for the symmetric format), one thread per element.
extern "C" __global__ void dequantize_weight(const i8* __restrict__ q, const float* __restrict__ scale,
                                             const u8* __restrict__ zero, float* __restrict__ out,
                                             i64 n_rows, i64 k, i64 g, i64 ng, int asym) {
    FPTQ_FOR(i, n_rows * k) {
        const i64 r = i / k, gi = (i % k) / g;
        const int z = asym ? (int)zero[r * ng + gi] : 0;
        out[i] = __fmul_rn(__int2float_rn((int)q[i] - z), scale[r * ng + gi]);
    }
}
