// Logarithmic activation equalization (docs/spec.md §3).
#include "common.cu"

// s_j = m_j / float32(log2(float64(float32(2 + m_j)))), and 1 where m_j < MIN_SCALE.
// log2 is CUDA's double-precision log2 (max error 1 ulp of float64), rounded once
// to float32 like the reference; the spec allows lae_scales 2 float32 ulps.
extern "C" __global__ void lae_scales(const float* __restrict__ m, float* __restrict__ s, i64 n) {
    FPTQ_FOR(i, n) {
        const float mj = m[i];
        const float t = __fadd_rn(mj, 2.0f);
        const float l2 = __double2float_rn(log2((double)t));
        s[i] = mj < FPTQ_MIN_SCALE ? 1.0f : __fdiv_rn(mj, l2);
    }
}

// x'[r, j] = x[r, j] / s_j  (x is [rows, k], row-major)
extern "C" __global__ void lae_apply_activation(const float* __restrict__ x, const float* __restrict__ s,
                                                float* __restrict__ out, i64 n, i64 k) {
    FPTQ_FOR(i, n) out[i] = __fdiv_rn(x[i], s[i % k]);
}

// w'[r, j] = w[r, j] * s_j
extern "C" __global__ void lae_apply_weight(const float* __restrict__ w, const float* __restrict__ s,
                                            float* __restrict__ out, i64 n, i64 k) {
    FPTQ_FOR(i, n) out[i] = __fmul_rn(w[i], s[i % k]);
}
