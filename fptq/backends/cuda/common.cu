// fptq CUDA kernels: helpers shared by every .cu file of fptq/backends/cuda/.
//
// This file is not compiled alone: the loader (fptq/backends/cupy_compile.py)
// hands it to NVRTC as the header "common.cu", included by the others.
//
// Float rules of the spec (docs/spec.md §1), kept here by construction:
//  * every float op is one float32 op rounded to nearest even, written with
//    the _rn intrinsics (__fadd_rn, __fmul_rn, __fdiv_rn): the compiler never
//    contracts them into an FMA (and the module is compiled --fmad=false too);
//  * division is IEEE division (__fdiv_rn), never a reciprocal multiply;
//  * no flush to zero: compiled with -ftz=false (CuPy's own RawModule path
//    appends -ftz=true, which is why fptq compiles with NVRTC itself);
//  * rounding to integers is half to even (rintf / __float2int_rn);
//  * int32 -> float32 is __int2float_rn (round to nearest even).
//
// The integer formats come from the one table, fptq/spec/formats.py, as -D
// macros (FPTQ_INT8_QMIN, ...; see cupy_compile.spec_defines). The nibble
// layout below (FPTQ_NIBBLE_BITS ... FPTQ_SIGN_FLIP) is written here by hand
// and checked against the same table by tests/test_kernel_constants.py, which
// also fails on a bare nibble literal (0xF, >> 4, ^ 8...) in the kernels that
// include this header.

#pragma once

#ifndef FPTQ_INT8_QMAX
#error "compile through fptq.backends.cupy_compile: the format macros are missing"
#endif

typedef signed char i8;
typedef unsigned char u8;
typedef long long i64;

// q = clip(rint(y), lo, hi) for a float32 quotient y (y may be +-inf: it saturates).
__device__ __forceinline__ int fptq_round_clip(float y, float lo, float hi) {
    float r = rintf(y);
    r = fminf(fmaxf(r, lo), hi);
    return (int)r;  // exact: r is an integer in [lo, hi]
}

// INT8 activation: clip(rint(x / s), -127, 127).
__device__ __forceinline__ i8 fptq_quant_act(float x, float s) {
    return (i8)fptq_round_clip(__fdiv_rn(x, s), (float)FPTQ_INT8_QMIN, (float)FPTQ_INT8_QMAX);
}

// The scale of a symmetric format from its amax: max(amax / divisor, MIN_SCALE).
__device__ __forceinline__ float fptq_scale_from_amax(float amax, float divisor) {
    return fmaxf(__fdiv_rn(amax, divisor), FPTQ_MIN_SCALE);
}

// Grid-stride loop over [0, n) with 64-bit indices.
#define FPTQ_FOR(i, n) \
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (i64)gridDim.x * blockDim.x)

// ---------------------------------------------------------------------------
// Nibble widening shared by the two GEMM paths.
//
// A 32-bit word W of packed weights holds the 8 elements 8i..8i+7 of a row:
// byte j has element 8i+2j in its low nibble and 8i+2j+1 in its high nibble.
// Masking gives two words of 4 byte lanes each, with no shuffling:
//   lo = W & 0x0F0F0F0F     -> elements 8i+0, 8i+2, 8i+4, 8i+6 (unsigned nibbles)
//   hi = (W >> 4) & 0x0F0F0F0F -> elements 8i+1, 8i+3, 8i+5, 8i+7
// The activations are split the same way (their even and odd bytes, one byte
// permute each), and an integer dot product does not depend on the order of
// its terms, so sum_k x[k] * q[k] = dot(even(x), lo) + dot(odd(x), hi).
// Signed nibbles: XOR with 0x88888888 first turns the two's complement nibble
// q in [-8, 7] into u = q + 8 in [0, 15] (flip bit 3), so q = u - 8.

// formats.NIBBLE_BITS, formats.NIBBLE_MASK, formats.INT4_SIGN_OFFSET
#define FPTQ_NIBBLE_BITS 4
#define FPTQ_NIBBLE 0xFu
#define FPTQ_INT4_SIGN_OFFSET 8
// the nibble mask and the sign bit of the 8 nibbles of a 32-bit word
#define FPTQ_NIBBLE_MASK 0x0F0F0F0Fu
#define FPTQ_SIGN_FLIP 0x88888888u

// Element j of a packed row from its byte: the low nibble for even j, the high one for odd j
// (Int4Packing.K_LOW_FIRST), as the unsigned pattern in [0, 15].
__device__ __forceinline__ int fptq_nibble(unsigned byte, i64 j) {
    return (j & 1) ? (int)(byte >> FPTQ_NIBBLE_BITS) : (int)(byte & FPTQ_NIBBLE);
}

// The value of a signed nibble from its pattern u in [0, 15]: (u ^ 8) - 8. The one sign-extension
// rule of fptq's kernels (numba: fptq.backends.numba_kernels.packing.sign_extend).
__device__ __forceinline__ int fptq_sext4(int u) { return (u ^ FPTQ_INT4_SIGN_OFFSET) - FPTQ_INT4_SIGN_OFFSET; }

// bytes 0, 2 of a and 0, 2 of b: the even elements of the 8 bytes (a = elements 0..3, b = 4..7)
__device__ __forceinline__ unsigned fptq_even_bytes(unsigned a, unsigned b) { return __byte_perm(a, b, 0x6420); }
// bytes 1, 3 of a and 1, 3 of b: the odd elements
__device__ __forceinline__ unsigned fptq_odd_bytes(unsigned a, unsigned b) { return __byte_perm(a, b, 0x7531); }
