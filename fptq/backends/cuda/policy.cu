// The layerwise activation policy (docs/spec.md §7): 0 static (v < v0),
// 1 LAE + static (v0 <= v < v1), 2 dynamic (v >= v1). Exact float32 comparisons.
#include "common.cu"

extern "C" __global__ void select_policies(const float* __restrict__ v, u8* __restrict__ code, i64 n,
                                           float t0, float t1) {
    FPTQ_FOR(i, n) {
        const float x = v[i];
        code[i] = x < t0 ? FPTQ_POLICY_STATIC : (x < t1 ? FPTQ_POLICY_LAE_STATIC : FPTQ_POLICY_DYNAMIC);
    }
}
