#pragma once
// `attnkit bench`: the fused attention engine on one shape against the machine's limits (sgemm,
// the FMA peak, from bench/machine_limits.h) and against LibTorch's composed attention (matmul,
// softmax, matmul), as ratios from one run.

#include <cstdint>
#include <ostream>

namespace attnkit::cli {

/// The shape and the timing of `attnkit bench`.
struct BenchOptions {
  int64_t batch_size = 1;
  int64_t num_heads = 8;
  /// Key/value heads (GQA when fewer than num_heads; must divide it).
  int64_t num_kv_heads = 8;
  int64_t seq_len = 4096;
  int64_t head_dim = 128;
  bool causal = false;
  /// Timed repetitions of each measurement (after one untimed warm-up); medians are reported.
  int repeats = 3;
  uint64_t seed = 0;
};

/// Prints the fused forward's time and FLOP/s, the composed path's time, the machine's limits
/// measured in this process (sgemm: a 2048^3 at::mm; the FMA peak on 1 and on all threads; the
/// streaming read; the BLAS and what is known of its kernel), and the fused forward's ratios to
/// them. Returns the exit code; bad options throw.
int run_bench(const BenchOptions& options, std::ostream& out);

}  // namespace attnkit::cli
