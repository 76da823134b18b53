// Fused CPU forward of the chunked gated delta rule. One task per (batch, value head), spread
// with at::parallel_for; each task walks its chunks in order, keeping the state S [Dk, Dv] in
// per-thread scratch. Per chunk of n <= C tokens (gamma = cumulative log decay in the chunk):
//   A[t,s]  = beta_t exp(gamma_t - gamma_s) k_t.k_s   (s < t)
//   QK[t,s] = exp(gamma_t - gamma_s) q_t.k_s           (s <= t)
//   (I + A) [W | U] = [beta exp(gamma) K | beta V]      forward substitution, row by row
//   U <- U - W S;   O = exp(gamma) Q S + QK U;   S <- exp(gamma_last) S + (exp(..) K)^T U
// Every product is a combination of contiguous rows (combine_rows, register-blocked), which the
// compiler vectorises (omp simd) for the ISA of the copy that runs: fused_impl.h is compiled
// in fused_avx2.cpp / fused_avx512.cpp under a target pragma, chosen once per call by
// kernels/cpu/capability.h (ATTNKIT_CPU_CAPABILITY=reference runs the scalar reference kernel).
// Legend in params.h.

#include "kernels/cpu/capability.h"
#include "kernels/gated_delta/kernel.h"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

namespace attnkit {
namespace kernels {
namespace gated_delta {

namespace {
// For Scratch (the per-ISA copies of forward_heads are in fused_avx2.cpp and fused_avx512.cpp).
#include "kernels/gated_delta/fused_impl.h"
}  // namespace

// Per-ISA copies of forward_heads (fused_avx2.cpp, fused_avx512.cpp).
template <typename T>
void forward_heads_avx2(const GatedDeltaParams<T>& p, int64_t begin, int64_t end, T* scratch);
template <typename T>
void forward_heads_avx512(const GatedDeltaParams<T>& p, int64_t begin, int64_t end, T* scratch);

template <typename scalar_t>
void gated_delta_forward_fused(const GatedDeltaParams<scalar_t>& p) {
  const CpuCapability isa = selected_capability();
  if (isa == CpuCapability::kReference) return gated_delta_forward_reference(p);
  TORCH_INTERNAL_ASSERT(p.out_stride_d == 1, "gated_delta fused: output rows must be contiguous");
  const int64_t C = std::min(p.chunk_size, std::max<int64_t>(p.seq_len, 1));
  GatedDeltaParams<scalar_t> params = p;
  params.chunk_size = C;
  // Per-thread scratch, allocated once before the parallel region; each slot padded to 64 B.
  const int64_t per_task = Scratch<scalar_t>::elements(C, p.head_dim_qk, p.head_dim_v);
  const int64_t pad = 64 / static_cast<int64_t>(sizeof(scalar_t));
  const int64_t slot = (per_task + pad - 1) / pad * pad;
  const int64_t num_threads = at::get_num_threads();
  std::vector<scalar_t> scratch(static_cast<size_t>(slot * num_threads));
  // One task per (b, h): each owns its state, and B * Hv is usually >= the core count; grain 1
  // because one task is a whole sequence (at least T * Dk * Dv work).
  at::parallel_for(0, p.batch_size * p.num_heads_v, 1, [&](int64_t begin, int64_t end) {
    scalar_t* sc = scratch.data() + at::get_thread_num() * slot;
    if (isa == CpuCapability::kAvx512) {
      forward_heads_avx512(params, begin, end, sc);
    } else {
      forward_heads_avx2(params, begin, end, sc);
    }
  });
}

template void gated_delta_forward_fused<float>(const GatedDeltaParams<float>&);
template void gated_delta_forward_fused<double>(const GatedDeltaParams<double>&);

}  // namespace gated_delta
}  // namespace kernels
}  // namespace attnkit
