// W4A8 matmul, prefill path (larger M): int8 tensor cores through
// mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32, INT4 widened to int8 in
// registers, shared-memory staging with cp.async, int32 sums per group and the
// pinned float32 epilogue in group order (docs/spec.md §6).
//
// Preconditions (checked by the host, cupy_launch.prefill_ok): K % 32 == 0,
// G % 32 == 0, 16-byte aligned base pointers. M and N are arbitrary (rows past
// M and columns past N are zero-filled by cp.async and never stored).
//
// Tiling. A block of WM x WN warps computes a BM x BN tile of y (BM = WM*MT*16,
// BN = WN*NT*8); each warp a (MT*16) x (NT*8) tile as MT x NT mma tiles. The K
// loop steps 32 columns at a time through a STAGES-deep cp.async ring: stage s
// holds A = qx[m0 : m0+BM, k : k+32] (BM x 32 bytes) and B = packed[n0 : n0+BN,
// k/2 : k/2+16] (BN x 16 bytes). At the end of every group (every G/32 steps,
// and at the last step) each thread folds its int32 accumulators into its
// float32 outputs, y = y + float32(acc) * wscale[n, g] (rounded ops), and
// clears them: each output element sees its groups in ascending order, as the
// spec pins. No split-K.
//
// Fragments (PTX ISA, mma.m16n8k32 with .s8; gid = lane / 4, tig = lane % 4):
//   A: a0 = row gid, k-slots tig*4 + 0..3; a1 = row gid + 8, same slots;
//      a2 = row gid, k-slots 16 + tig*4 + 0..3; a3 = row gid + 8, same;
//   B: b0 = column gid, k-slots tig*4 + 0..3; b1 = column gid, 16 + tig*4 + 0..3;
//   C: c0, c1 = row gid, columns tig*2 + 0, 1; c2, c3 = row gid + 8, same.
// The 32 k-slots of a step are a permutation of the step's 32 columns, the same
// for A and B (an integer dot product does not depend on the order): slot
// tig*4 + i is column 8*tig + 2i and slot 16 + tig*4 + i is column 8*tig + 2i + 1.
// So thread tig reads the 8 activation bytes 8*tig .. 8*tig + 7 of a row and
// splits them into even and odd bytes (common.cu), and the 4 weight bytes
// 4*tig .. 4*tig + 3 of a column, whose low and high nibbles are exactly those
// even and odd columns. Widening: u = nibble (XOR 8 for signed ones),
// b = u - c per byte (__vsub4) with c = 8 (symmetric) or zero[n, g]
// (asymmetric): b = q or q - z in [-15, 15], an exact int8.
#include "common.cu"

#define PF_STAGES 4

__device__ __forceinline__ unsigned pf_smem_addr(const void* p) {
    return (unsigned)__cvta_generic_to_shared(p);
}

// 16 bytes global -> shared, asynchronously; src_bytes = 0 writes zeros (rows out of range).
__device__ __forceinline__ void pf_cp_async16(void* dst, const void* src, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(pf_smem_addr(dst)), "l"(src),
                 "r"(src_bytes));
}
__device__ __forceinline__ void pf_cp_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void pf_cp_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

__device__ __forceinline__ void pf_mma(int (&c)[4], unsigned a0, unsigned a1, unsigned a2, unsigned a3,
                                       unsigned b0, unsigned b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

template <int WM, int WN, int MT, int NT>
__global__ void __launch_bounds__(WM * WN * 32, 1)
gemm_prefill(const i8* __restrict__ qx, const float* __restrict__ xscale, const u8* __restrict__ packed,
             const float* __restrict__ wscale, const u8* __restrict__ zero, const float* __restrict__ bias,
             float* __restrict__ out, int m_rows, int n_rows, int k, int g, int ng,
             int asym, int per_token, int has_bias) {
    constexpr int THREADS = WM * WN * 32;
    constexpr int BM = WM * MT * 16, BN = WN * NT * 8;
    __shared__ __align__(16) u8 sa[PF_STAGES][BM][32];
    __shared__ __align__(16) u8 sb[PF_STAGES][BN][16];

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int gid = lane >> 2, tig = lane & 3;
    const int wm = warp / WN, wn = warp % WN;
    const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
    const i64 kb = k >> 1;
    const int steps = k >> 5, steps_per_group = g >> 5;
    const unsigned flip = asym ? 0u : FPTQ_SIGN_FLIP;

    // one pipeline stage: A rows (two 16-byte chunks each) and B rows (one chunk each)
    auto load_stage = [&](int step, int st) {
        if (step < steps) {
            for (int idx = tid; idx < BM * 2; idx += THREADS) {
                const int row = idx >> 1, half = idx & 1, m = m0 + row;
                const i8* src = m < m_rows ? qx + (i64)m * k + step * 32 + half * 16 : qx;
                pf_cp_async16(&sa[st][row][half * 16], src, m < m_rows ? 16 : 0);
            }
            for (int idx = tid; idx < BN; idx += THREADS) {
                const int n = n0 + idx;
                const u8* src = n < n_rows ? packed + (i64)n * kb + step * 16 : packed;
                pf_cp_async16(&sb[st][idx][0], src, n < n_rows ? 16 : 0);
            }
        }
        pf_cp_commit();  // an empty group past the end keeps the wait counts uniform
    };

    int acc[MT][NT][4];
    float y[MT][NT][4];
    unsigned zc[NT];  // the per-byte subtrahend c of each column's current group
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int i = 0; i < 4; ++i) { acc[mt][nt][i] = 0; y[mt][nt][i] = 0.0f; }

#pragma unroll
    for (int s = 0; s < PF_STAGES - 1; ++s) load_stage(s, s);

    for (int step = 0; step < steps; ++step) {
        const int grp = step / steps_per_group;
        if (step % steps_per_group == 0) {  // a new group: its zero points
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) {
                const int n = min(n0 + wn * NT * 8 + nt * 8 + gid, n_rows - 1);
                zc[nt] = (asym ? (unsigned)zero[(i64)n * ng + grp] : 8u) * 0x01010101u;
            }
        }
        pf_cp_wait<PF_STAGES - 2>();
        __syncthreads();  // stage `step` is visible to all; stage `step - 1` is free again
        load_stage(step + PF_STAGES - 1, (step + PF_STAGES - 1) % PF_STAGES);
        const int st = step % PF_STAGES;

        unsigned bf[NT][2];
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
            const unsigned w = *(const unsigned*)&sb[st][wn * NT * 8 + nt * 8 + gid][tig * 4] ^ flip;
            bf[nt][0] = __vsub4(w & FPTQ_NIBBLE_MASK, zc[nt]);
            bf[nt][1] = __vsub4((w >> 4) & FPTQ_NIBBLE_MASK, zc[nt]);
        }
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
            const int r = wm * MT * 16 + mt * 16 + gid;
            const uint2 x0 = *(const uint2*)&sa[st][r][tig * 8];
            const uint2 x1 = *(const uint2*)&sa[st][r + 8][tig * 8];
            const unsigned a0 = fptq_even_bytes(x0.x, x0.y), a2 = fptq_odd_bytes(x0.x, x0.y);
            const unsigned a1 = fptq_even_bytes(x1.x, x1.y), a3 = fptq_odd_bytes(x1.x, x1.y);
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) pf_mma(acc[mt][nt], a0, a1, a2, a3, bf[nt][0], bf[nt][1]);
        }

        if ((step + 1) % steps_per_group == 0 || step + 1 == steps) {  // end of group grp: fold, in order
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) {
                const int n = n0 + wn * NT * 8 + nt * 8 + tig * 2;
                const float ws0 = wscale[(i64)min(n, n_rows - 1) * ng + grp];
                const float ws1 = wscale[(i64)min(n + 1, n_rows - 1) * ng + grp];
#pragma unroll
                for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                    for (int i = 0; i < 4; ++i) {
                        const float t = __fmul_rn(__int2float_rn(acc[mt][nt][i]), (i & 1) ? ws1 : ws0);
                        y[mt][nt][i] = __fadd_rn(y[mt][nt][i], t);
                        acc[mt][nt][i] = 0;
                    }
            }
        }
    }
    pf_cp_wait<0>();

#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const int m = m0 + wm * MT * 16 + mt * 16 + gid + (i >= 2 ? 8 : 0);
                const int n = n0 + wn * NT * 8 + nt * 8 + tig * 2 + (i & 1);
                if (m < m_rows && n < n_rows) {
                    float v = __fmul_rn(y[mt][nt][i], xscale[per_token ? m : 0]);
                    if (has_bias) v = __fadd_rn(v, bias[n]);
                    out[(i64)m * n_rows + n] = v;
                }
            }
}

// The tile configurations the host launches (cupy_launch.PREFILL_TILES), as NVRTC name expressions.
template __global__ void gemm_prefill<2, 4, 4, 4>(const i8*, const float*, const u8*, const float*, const u8*,
                                                  const float*, float*, int, int, int, int, int, int, int, int);
template __global__ void gemm_prefill<2, 2, 2, 4>(const i8*, const float*, const u8*, const float*, const u8*,
                                                  const float*, float*, int, int, int, int, int, int, int, int);
