// The W4A8 matmul (docs/spec.md §6), general shapes: the exact integer group sums
// and the pinned float32 epilogue as two kernels. The fast paths for aligned
// shapes are gemm_decode.cu (M <= 16) and gemm_prefill.cu (tensor cores); this
// file serves every other shape (odd K, any G) and the two spec primitives
// w4a8_group_sums and w4a8_epilogue.
#include "common.cu"

// acc[m, n, g] = sum over the columns k of group g of qx[m, k] * (q[n, k] - c), with
// q the signed nibble (symmetric, c = 0) or the unsigned one (asymmetric, c = zero[n, g]).
// sum x * (q - z) = sum x * q - z * sum x: the spec's correction, as one exact int32 sum
// (|terms| <= 128 * 15, at most G <= 2**20 of them: no overflow). One thread per (m, n, g).
extern "C" __global__ void w4a8_group_sums(const i8* __restrict__ qx, const u8* __restrict__ packed,
                                           const u8* __restrict__ zero, int* __restrict__ acc,
                                           i64 m_rows, i64 n_rows, i64 k, i64 g, i64 ng, int asym) {
    const i64 kb = (k + 1) / 2;
    FPTQ_FOR(i, m_rows * n_rows * ng) {
        const i64 gi = i % ng, n = (i / ng) % n_rows, m = i / (ng * n_rows);
        const int c = asym ? (int)zero[n * ng + gi] : 0;
        const i8* xr = qx + m * k;
        const u8* wr = packed + n * kb;
        int s = 0;
        for (i64 j = gi * g, j1 = min(j + g, k); j < j1; ++j) {
            const unsigned byte = wr[j >> 1];
            int q = fptq_nibble(byte, j);
            if (!asym) q = fptq_sext4(q);
            s += (int)xr[j] * (q - c);
        }
        acc[i] = s;
    }
}

// The pinned epilogue, one thread per (m, n):
//   y = +0; for g ascending: y = y + float32(acc[m, n, g]) * wscale[n, g]   (each op rounded)
//   y = y * xscale[m or 0]; if bias: y = y + bias[n]
extern "C" __global__ void w4a8_epilogue(const int* __restrict__ acc, const float* __restrict__ wscale,
                                         const float* __restrict__ xscale, const float* __restrict__ bias,
                                         float* __restrict__ out, i64 m_rows, i64 n_rows, i64 ng,
                                         int per_token, int has_bias) {
    FPTQ_FOR(i, m_rows * n_rows) {
        const i64 n = i % n_rows, m = i / n_rows;
        const int* a = acc + i * ng;
        const float* ws = wscale + n * ng;
        float y = 0.0f;
        for (i64 gi = 0; gi < ng; ++gi) y = __fadd_rn(y, __fmul_rn(__int2float_rn(a[gi]), ws[gi]));
        y = __fmul_rn(y, xscale[per_token ? m : 0]);
        if (has_bias) y = __fadd_rn(y, bias[n]);
        out[i] = y;
    }
}
