// INT8 activations (docs/spec.md §2): scales, per-tensor static and per-token
// dynamic quantization, dequantization. One thread per element (grid-stride),
// except the per-token kernel: one block per row, which first reduces the
// row's amax (max is exact and order-free) and then quantizes the row.
#include "common.cu"

// scale = max(amax / 127, MIN_SCALE)
extern "C" __global__ void act_scale_from_amax(const float* __restrict__ amax, float* __restrict__ scale, i64 n) {
    FPTQ_FOR(i, n) scale[i] = fptq_scale_from_amax(amax[i], (float)FPTQ_INT8_DIVISOR);
}

// q = clip(rint(x / s), -127, 127) with one scale s (a device scalar).
extern "C" __global__ void quantize_act_per_tensor(const float* __restrict__ x, const float* __restrict__ scale,
                                                   i8* __restrict__ q, i64 n) {
    const float s = scale[0];
    FPTQ_FOR(i, n) q[i] = fptq_quant_act(x[i], s);
}

// One block per row m of x [M, K]: amax_m = max_k |x[m, k]|, scale_m = max(amax_m / 127, MIN_SCALE),
// q[m, k] = clip(rint(x[m, k] / scale_m), -127, 127). Block size: FPTQ_ROW_THREADS (a power of two).
#define FPTQ_ROW_THREADS 256
extern "C" __global__ void __launch_bounds__(FPTQ_ROW_THREADS)
quantize_act_per_token(const float* __restrict__ x, i8* __restrict__ q, float* __restrict__ scale, i64 k) {
    __shared__ float red[FPTQ_ROW_THREADS / 32];
    const i64 row = blockIdx.x;
    const float* xr = x + row * k;
    float amax = 0.0f;
    for (i64 j = threadIdx.x; j < k; j += FPTQ_ROW_THREADS) amax = fmaxf(amax, fabsf(xr[j]));
    for (int off = 16; off > 0; off >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, off));
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = amax;
    __syncthreads();
    if (threadIdx.x < 32) {
        amax = threadIdx.x < FPTQ_ROW_THREADS / 32 ? red[threadIdx.x] : 0.0f;
        for (int off = 16; off > 0; off >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, off));
        if (threadIdx.x == 0) red[0] = fptq_scale_from_amax(amax, (float)FPTQ_INT8_DIVISOR);
    }
    __syncthreads();
    const float s = red[0];
    if (threadIdx.x == 0) scale[row] = s;
    i8* qr = q + row * k;
    for (i64 j = threadIdx.x; j < k; j += FPTQ_ROW_THREADS) qr[j] = fptq_quant_act(xr[j], s);
}

// x_hat = float32(q) * scale; per_row = 0: one scale, else scale[i / k] (per-token, rows of k).
extern "C" __global__ void dequantize_act(const i8* __restrict__ q, const float* __restrict__ scale,
                                          float* __restrict__ out, i64 n, i64 k, int per_row) {
    FPTQ_FOR(i, n) {
        const float s = per_row ? scale[i / k] : scale[0];
        out[i] = __fmul_rn(__int2float_rn((int)q[i]), s);
    }
}
