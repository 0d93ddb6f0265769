// W4A8 matmul, decode path (M <= 16): stream the packed INT4 weights, int8 dot
// products with __dp4a, the pinned epilogue in group order (docs/spec.md §6).
//
// Preconditions (checked by the host, cupy_launch.decode_ok): K % 32 == 0,
// G % 32 == 0 (every group is whole 16-byte chunks of 32 nibbles), 16-byte
// aligned base pointers.
//
// Work split. A block is DEC_WARPS warps; a warp owns DEC_ROWS consecutive
// output rows n and all MT activation rows m. Lane l of a warp computes group
// g = gbase + l of those rows (gbase = 0, 32, 64, ...). It walks its group in
// batches of CH 32-column chunks (CH * 32 = 128 columns for MT <= 4: one
// G = 128 group): first every 16-byte weight copy of the batch, CH * DEC_ROWS
// cp.async copies into the lane's own slots wst[warp][c][r][lane] (shared
// memory, so ptxas cannot sink them next to their uses to save registers, as
// it did with plain loads), one wait, then the dot products reading the slots
// back. Copies never depend on M, N or the group's end: rows past N read row
// N - 1, activation rows past M read row M - 1 (their sums are never stored),
// and a chunk past the group's end re-reads the group's last chunk with its
// activations masked to 0, so it adds nothing (no branch: ptxas sinks loads
// into the branch that uses them). Only a ragged last group, or G not a
// multiple of CH * 32 (G = 32 or 64 at CH = 4: half or more of the batch's
// math is masked work), has such chunks. A lane's slots are reused by its next
// batch: a read, then an async copy to the same address by the same thread.
// Exact int32 sums per group:
//   dot[r][m] = sum x * u   (u the unsigned nibble, u = q + 8 for symmetric),
//   xsum[m]   = sum x,
//   acc       = dot - c * xsum   (c = 8 symmetric, c = zero[n, g] asymmetric).
// Then t = float32(acc) * wscale[n, g] (rounded) goes to shared memory at
// tr[warp][v][lane], v = r * MT + m; after each round of 32 groups, lane v
// reads row v of its warp's tr (lanes v and v + 32 when V = 64) and adds its
// t values in ascending group order into its running y (rounded adds: the
// spec's order exactly). At the end y * xscale (+ bias) is stored.
#include "common.cu"

#define DEC_WARPS 4
#define DEC_ROWS 4

// 32-column chunks per batch of copies: 4 (16 copies of 16 bytes in flight per lane) for MT <= 4,
// fewer where the registers or the 48 KB of static shared memory run short (MT = 16 is
// dp4a-bound rather than memory-bound).
template <int MT>
struct DecodeChunks { static constexpr int value = MT <= 4 ? 4 : MT == 8 ? 2 : 1; };

// 16 bytes global -> shared without a register (cp.async, sm_80+), and the wait for this thread's copies.
__device__ __forceinline__ void dec_cp_async16(void* dst, const void* src) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"((unsigned)__cvta_generic_to_shared(dst)),
                 "l"(src));
}
__device__ __forceinline__ void dec_cp_wait_all() { asm volatile("cp.async.commit_group;\ncp.async.wait_group 0;\n" ::: "memory"); }

template <int MT>
// MT = 16 takes ~234 registers (2 blocks per SM); capping it at 168 (3 blocks) spilled 164 bytes.
__global__ void __launch_bounds__(DEC_WARPS * 32)
gemm_decode(const i8* __restrict__ qx, const float* __restrict__ xscale, const u8* __restrict__ packed,
            const float* __restrict__ wscale, const u8* __restrict__ zero, const float* __restrict__ bias,
            float* __restrict__ out, int m_rows, int n_rows, int k, int g, int ng,
            int asym, int per_token, int has_bias) {
    constexpr int V = DEC_ROWS * MT;  // output values of a warp, <= 64
    constexpr int CH = DecodeChunks<MT>::value;
    __shared__ float tr[DEC_WARPS][V][33];  // +1 column: conflict-free transposed reads
    __shared__ __align__(16) uint4 wst[DEC_WARPS][CH][DEC_ROWS][32];  // a lane's batch of weights: its own slots
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int n0 = (blockIdx.x * DEC_WARPS + warp) * DEC_ROWS;
    const i64 kb = k >> 1;  // bytes per packed row
    const unsigned flip = asym ? 0u : FPTQ_SIGN_FLIP;
    float y0 = 0.0f, y1 = 0.0f;  // the running sums of values lane and lane + 32

    for (int gbase = 0; gbase < ng; gbase += 32) {
        const int gi = gbase + lane;
        if (gi < ng) {
            int dot[DEC_ROWS][MT], xsum[MT];
#pragma unroll
            for (int m = 0; m < MT; ++m) {
                xsum[m] = 0;
#pragma unroll
                for (int r = 0; r < DEC_ROWS; ++r) dot[r][m] = 0;
            }
            const int e0 = gi * g, e1 = min(e0 + g, k);
            for (int e = e0; e < e1; e += 32 * CH) {
#pragma unroll
                for (int c = 0; c < CH; ++c) {
                    const int ec = min(e + 32 * c, e1 - 32);  // past the group's end: its last chunk again
#pragma unroll
                    for (int r = 0; r < DEC_ROWS; ++r)
                        dec_cp_async16(&wst[warp][c][r][lane], packed + (i64)min(n0 + r, n_rows - 1) * kb + (ec >> 1));
                }
                dec_cp_wait_all();  // each lane reads back only the slots it copied: no barrier
#pragma unroll
                for (int c = 0; c < CH; ++c) {
                    const int ec = min(e + 32 * c, e1 - 32);
                    const unsigned keep = e + 32 * c < e1 ? 0xFFFFFFFFu : 0u;  // x = 0 past the group's end
#pragma unroll
                    for (int m = 0; m < MT; ++m) {
                        const uint4* xp = (const uint4*)(qx + (i64)min(m, m_rows - 1) * k + ec);
                        const uint4 xa = xp[0], xb = xp[1];
                        const unsigned xw[8] = {xa.x & keep, xa.y & keep, xa.z & keep, xa.w & keep,
                                                xb.x & keep, xb.y & keep, xb.z & keep, xb.w & keep};
#pragma unroll
                        for (int i = 0; i < 4; ++i) {
                            const int ev = (int)fptq_even_bytes(xw[2 * i], xw[2 * i + 1]);
                            const int od = (int)fptq_odd_bytes(xw[2 * i], xw[2 * i + 1]);
                            xsum[m] = __dp4a(ev, 0x01010101, __dp4a(od, 0x01010101, xsum[m]));
#pragma unroll
                            for (int r = 0; r < DEC_ROWS; ++r) {
                                const uint4 wr = wst[warp][c][r][lane];
                                const unsigned wi = (i == 0 ? wr.x : i == 1 ? wr.y : i == 2 ? wr.z : wr.w) ^ flip;
                                dot[r][m] = __dp4a(ev, (int)(wi & FPTQ_NIBBLE_MASK), dot[r][m]);
                                dot[r][m] = __dp4a(od, (int)((wi >> FPTQ_NIBBLE_BITS) & FPTQ_NIBBLE_MASK), dot[r][m]);
                            }
                        }
                    }
                }
            }
#pragma unroll
            for (int r = 0; r < DEC_ROWS; ++r) {
                const int n = min(n0 + r, n_rows - 1);  // rows past N compute garbage that is never stored
                const int c = asym ? (int)zero[(i64)n * ng + gi] : FPTQ_INT4_SIGN_OFFSET;
                const float ws = wscale[(i64)n * ng + gi];
#pragma unroll
                for (int m = 0; m < MT; ++m)
                    tr[warp][r * MT + m][lane] = __fmul_rn(__int2float_rn(dot[r][m] - c * xsum[m]), ws);
            }
        }
        __syncwarp();
        const int cnt = min(32, ng - gbase);
        if (lane < V)
            for (int i = 0; i < cnt; ++i) y0 = __fadd_rn(y0, tr[warp][lane][i]);
        if (lane + 32 < V)
            for (int i = 0; i < cnt; ++i) y1 = __fadd_rn(y1, tr[warp][lane + 32][i]);
        __syncwarp();
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const int v = lane + 32 * h;
        if (v < V) {
            const int r = v / MT, m = v % MT, n = n0 + r;
            if (m < m_rows && n < n_rows) {
                float y = __fmul_rn(h ? y1 : y0, xscale[per_token ? m : 0]);
                if (has_bias) y = __fadd_rn(y, bias[n]);
                out[(i64)m * n_rows + n] = y;
            }
        }
    }
}

// The instantiations the host launches (cupy_launch.DECODE_MT), as NVRTC name expressions.
template __global__ void gemm_decode<1>(const i8*, const float*, const u8*, const float*, const u8*, const float*,
                                        float*, int, int, int, int, int, int, int, int);
template __global__ void gemm_decode<2>(const i8*, const float*, const u8*, const float*, const u8*, const float*,
                                        float*, int, int, int, int, int, int, int, int);
template __global__ void gemm_decode<4>(const i8*, const float*, const u8*, const float*, const u8*, const float*,
                                        float*, int, int, int, int, int, int, int, int);
template __global__ void gemm_decode<8>(const i8*, const float*, const u8*, const float*, const u8*, const float*,
                                        float*, int, int, int, int, int, int, int, int);
template __global__ void gemm_decode<16>(const i8*, const float*, const u8*, const float*, const u8*, const float*,
                                         float*, int, int, int, int, int, int, int, int);
