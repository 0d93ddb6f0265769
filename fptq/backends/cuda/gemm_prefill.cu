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
// loop steps 32 columns at a time through a STAGES-deep cp.async ring: step s
// uses stage s % STAGES, which holds A = qx[m0 : m0+BM, 32s : 32s+32] (BM x 32
// bytes) and B = packed[n0 : n0+BN, 16s : 16s+16] (BN x 16 bytes); each step
// waits until at most STAGES - 2 of the thread's copy groups are pending (its
// copies of stage s have landed), syncs the block (everyone's have), then
// issues the copies of step s + STAGES - 1 into the stage step s - 1 used.
// The group, the step within it and the stage are counters (no integer
// division in the loop). When a step starts a new group, each thread folds its
// int32 accumulators of the finished group into its float32 outputs,
// y = y + float32(acc) * wscale[n, g] (rounded ops), and clears them: after
// issuing the next stage's copies and its own fragment loads of the step, so
// the fold overlaps them; the scales and zero points of a group are loaded one
// group ahead. The last group is folded after the loop. Each output element
// sees its groups in ascending order, as the spec pins. No split-K.
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

// A column's metadata for one group: its zero point (replicated into the 4 bytes __vsub4 subtracts)
// and the two scales of the columns tig*2 and tig*2 + 1 it folds.
template <int NT>
struct PfGroupMeta {
    unsigned zc[NT];
    float ws0[NT], ws1[NT];
};

template <int WM, int WN, int MT, int NT>
__global__ void __launch_bounds__(WM * WN * 32, 1)
gemm_prefill(const i8* __restrict__ qx, const float* __restrict__ xscale, const u8* __restrict__ packed,
             const float* __restrict__ wscale, const u8* __restrict__ zero, const float* __restrict__ bias,
             float* __restrict__ out, int m_rows, int n_rows, int k, int g, int ng,
             int asym, int per_token, int has_bias) {
    constexpr int THREADS = WM * WN * 32;
    constexpr int BM = WM * MT * 16, BN = WN * NT * 8;
    constexpr int A_ITERS = (BM * 2 + THREADS - 1) / THREADS, B_ITERS = (BN + THREADS - 1) / THREADS;
    __shared__ __align__(16) u8 sa[PF_STAGES][BM][32];
    __shared__ __align__(16) u8 sb[PF_STAGES][BN][16];

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int gid = lane >> 2, tig = lane & 3;
    const int wm = warp / WN, wn = warp % WN;
    const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
    const i64 kb = k >> 1;
    const int steps = k >> 5, steps_per_group = g >> 5;
    const unsigned flip = asym ? 0u : FPTQ_SIGN_FLIP;

    // one pipeline stage: A rows (two 16-byte chunks each) and B rows (one chunk each); the loops
    // have compile-time trip counts (unrolled), the column offset is a multiply, not a division
    auto load_stage = [&](int step, int st) {
        if (step < steps) {
#pragma unroll
            for (int it = 0; it < A_ITERS; ++it) {
                const int idx = tid + it * THREADS;
                if (BM * 2 % THREADS == 0 || idx < BM * 2) {
                    const int row = idx >> 1, half = idx & 1, m = m0 + row;
                    const i8* src = m < m_rows ? qx + (i64)m * k + step * 32 + half * 16 : qx;
                    pf_cp_async16(&sa[st][row][half * 16], src, m < m_rows ? 16 : 0);
                }
            }
#pragma unroll
            for (int it = 0; it < B_ITERS; ++it) {
                const int idx = tid + it * THREADS;
                if (BN % THREADS == 0 || idx < BN) {
                    const int n = n0 + idx;
                    const u8* src = n < n_rows ? packed + (i64)n * kb + step * 16 : packed;
                    pf_cp_async16(&sb[st][idx][0], src, n < n_rows ? 16 : 0);
                }
            }
        }
        pf_cp_commit();  // an empty group past the end keeps the wait counts uniform
    };
    // group grp's zero points and scales of this thread's columns (columns past N read column N - 1)
    auto load_meta = [&](int grp, PfGroupMeta<NT>& md) {
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
            const int nb = n0 + wn * NT * 8 + nt * 8;
            const int nz = min(nb + gid, n_rows - 1);
            md.zc[nt] = (asym ? (unsigned)zero[(i64)nz * ng + grp] : (unsigned)FPTQ_INT4_SIGN_OFFSET) * 0x01010101u;
            md.ws0[nt] = wscale[(i64)min(nb + tig * 2, n_rows - 1) * ng + grp];
            md.ws1[nt] = wscale[(i64)min(nb + tig * 2 + 1, n_rows - 1) * ng + grp];
        }
    };

    int acc[MT][NT][4];
    float y[MT][NT][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int i = 0; i < 4; ++i) { acc[mt][nt][i] = 0; y[mt][nt][i] = 0.0f; }
    // fold: y = y + float32(acc) * wscale[n, group] for the group whose scales md holds, in order
    auto fold = [&](const PfGroupMeta<NT>& md) {
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                for (int i = 0; i < 4; ++i) {
                    const float t = __fmul_rn(__int2float_rn(acc[mt][nt][i]), (i & 1) ? md.ws1[nt] : md.ws0[nt]);
                    y[mt][nt][i] = __fadd_rn(y[mt][nt][i], t);
                    acc[mt][nt][i] = 0;
                }
    };

#pragma unroll
    for (int s = 0; s < PF_STAGES - 1; ++s) load_stage(s, s);

    // cur: the metadata of the group being accumulated; next: the following group's, loaded one
    // group ahead so no global load stands between a group's first step and its math
    PfGroupMeta<NT> cur, next;
    load_meta(0, next);
    int grp = -1, kin = 0, st = 0;  // the step's group, its step within the group, its stage: counters, no division
    for (int step = 0; step < steps; ++step) {
        pf_cp_wait<PF_STAGES - 2>();
        __syncthreads();  // stage `step` is visible to all; stage `step - 1` is free again
        load_stage(step + PF_STAGES - 1, st == 0 ? PF_STAGES - 1 : st - 1);  // (step + STAGES - 1) % STAGES

        // this step's fragments from shared memory (issued before the fold below, which they overlap)
        const bool first = kin == 0;
        unsigned bw[NT], ax[MT][4];
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
            bw[nt] = *(const unsigned*)&sb[st][wn * NT * 8 + nt * 8 + gid][tig * 4] ^ flip;
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
            const int r = wm * MT * 16 + mt * 16 + gid;
            const uint2 x0 = *(const uint2*)&sa[st][r][tig * 8];
            const uint2 x1 = *(const uint2*)&sa[st][r + 8][tig * 8];
            ax[mt][0] = fptq_even_bytes(x0.x, x0.y);
            ax[mt][1] = fptq_even_bytes(x1.x, x1.y);
            ax[mt][2] = fptq_odd_bytes(x0.x, x0.y);
            ax[mt][3] = fptq_odd_bytes(x1.x, x1.y);
        }
        if (first) {  // a new group: fold the finished one (its scales are in cur), then move on
            if (grp >= 0) fold(cur);
            ++grp;
            cur = next;
            load_meta(min(grp + 1, ng - 1), next);
        }
        unsigned bf[NT][2];
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
            bf[nt][0] = __vsub4(bw[nt] & FPTQ_NIBBLE_MASK, cur.zc[nt]);
            bf[nt][1] = __vsub4((bw[nt] >> FPTQ_NIBBLE_BITS) & FPTQ_NIBBLE_MASK, cur.zc[nt]);
        }
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int nt = 0; nt < NT; ++nt)
                pf_mma(acc[mt][nt], ax[mt][0], ax[mt][1], ax[mt][2], ax[mt][3], bf[nt][0], bf[nt][1]);
        kin = kin + 1 == steps_per_group ? 0 : kin + 1;
        st = st + 1 == PF_STAGES ? 0 : st + 1;
    }
    pf_cp_wait<0>();
    if (grp >= 0) fold(cur);  // the last group (ragged or not)

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
