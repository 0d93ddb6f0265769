// INT4 packing, two values per byte along K (docs/spec.md §5): element 2i in the
// low nibble, 2i+1 in the high nibble; the high nibble of an odd K's last byte is 0.
#include "common.cu"

// q int8 [N, K] -> packed uint8 [N, kb], kb = ceil(K / 2). One thread per output byte.
extern "C" __global__ void pack_int4(const i8* __restrict__ q, u8* __restrict__ packed, i64 n_rows, i64 k) {
    const i64 kb = (k + 1) / 2;
    FPTQ_FOR(i, n_rows * kb) {
        const i64 r = i / kb, b = i % kb;
        const i8* qr = q + r * k;
        const unsigned lo = (unsigned)(u8)qr[2 * b] & FPTQ_NIBBLE;
        const unsigned hi = 2 * b + 1 < k ? ((unsigned)(u8)qr[2 * b + 1] & FPTQ_NIBBLE) : 0u;
        packed[i] = (u8)(lo | (hi << FPTQ_NIBBLE_BITS));
    }
}

// packed uint8 [N, kb] -> q int8 [N, K]; signed: fptq_sext4 (v >= 8 is v - 16). One thread per element.
extern "C" __global__ void unpack_int4(const u8* __restrict__ packed, i8* __restrict__ q, i64 n_rows, i64 k,
                                       int is_signed) {
    const i64 kb = (k + 1) / 2;
    FPTQ_FOR(i, n_rows * k) {
        const i64 r = i / k, j = i % k;
        const unsigned byte = packed[r * kb + j / 2];
        int v = fptq_nibble(byte, j);
        if (is_signed) v = fptq_sext4(v);
        q[i] = (i8)v;
    }
}
