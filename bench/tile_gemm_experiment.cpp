// One-off experiment behind a design choice (not part of the CMake build): the flash tile GEMMs
// with the AVX-512 register-blocked micro-kernel of src/kernels/flash vs OpenBLAS cblas_sgemm,
// single thread, on the forward's tile shapes. The micro-kernel won (see docs/flash_attention.md).
//   g++ -O3 -mavx512f -mfma -std=c++17 bench/tile_gemm_experiment.cpp -o /tmp/tile_gemm \
//       /usr/lib/x86_64-linux-gnu/libopenblas.so.0 && OPENBLAS_NUM_THREADS=1 /tmp/tile_gemm
#include <immintrin.h>
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>
extern "C" void cblas_sgemm(
    int, int, int, int, int, int, float, const float*, int, const float*, int, float, float*, int);
extern "C" void openblas_set_num_threads(int);
enum { RowMajor = 101, NoTrans = 111, Trans = 112 };
constexpr int L = 16;
template <int C>
static inline void micro(
    const float* a, int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc, int64_t kd) {
  __m512 acc[4][C];
  for (int r = 0; r < 4; ++r)
    for (int j = 0; j < C; ++j) acc[r][j] = _mm512_loadu_ps(c + r * ldc + j * L);
  for (int64_t k = 0; k < kd; ++k) {
    __m512 bv[C];
    for (int j = 0; j < C; ++j) bv[j] = _mm512_loadu_ps(b + k * ldb + j * L);
    for (int r = 0; r < 4; ++r) {
      __m512 av = _mm512_set1_ps(a[r * lda + k]);
      for (int j = 0; j < C; ++j) acc[r][j] = _mm512_fmadd_ps(av, bv[j], acc[r][j]);
    }
  }
  for (int r = 0; r < 4; ++r)
    for (int j = 0; j < C; ++j) _mm512_storeu_ps(c + r * ldc + j * L, acc[r][j]);
}
// C[m,n] += A[m,k] B[k,n]
void mine(
    const float* a, int lda, const float* b, int ldb, float* c, int ldc, int m, int n, int k) {
  for (int r = 0; r < m; r += 4)
    for (int col = 0; col < n; col += 64)
      micro<4>(a + r * lda, lda, b + col, ldb, c + r * ldc + col, ldc, k);
}
int main() {
  openblas_set_num_threads(1);
  std::mt19937 g(1);
  std::normal_distribution<float> nd;
  const int M = 64, N = 64, K = 128;  // S = Q Kt (QK^T tile) and O += P V with N=Dv=128, K=64
  std::vector<float> a(M * 256), b(256 * 256), bt(256 * 256), c(M * 256);
  for (auto& x : a) x = nd(g);
  for (auto& x : b) x = nd(g);
  auto bench = [&](const char* name, auto fn, double flops) {
    double best = 1e9;
    for (int rep = 0; rep < 7; ++rep) {
      auto t0 = std::chrono::steady_clock::now();
      for (int it = 0; it < 2000; ++it) fn();
      double s =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / 2000;
      best = std::min(best, s);
    }
    std::printf("%-44s %7.2f us  %6.1f GFLOP/s\n", name, best * 1e6, flops / best / 1e9);
  };
  // QK^T: mine uses packed Kt [K][64]; cblas reads K rows [64][128] directly (Trans).
  bench(
      "QK^T 64x64x128 micro-kernel (packed Kt)",
      [&] { mine(a.data(), K, bt.data(), 64, c.data(), 64, M, N, K); }, 2.0 * M * N * K);
  bench(
      "QK^T 64x64x128 cblas_sgemm (K rows, Trans)",
      [&] {
        cblas_sgemm(RowMajor, NoTrans, Trans, M, N, K, 1.f, a.data(), K, b.data(), K, 0.f, c.data(),
                    64);
      },
      2.0 * M * N * K);
  // PV: O[64][128] += P[64][64] V[64][128]
  bench(
      "PV 64x128x64 micro-kernel",
      [&] { mine(a.data(), 64, b.data(), 128, c.data(), 128, 64, 128, 64); }, 2.0 * 64 * 128 * 64);
  bench(
      "PV 64x128x64 cblas_sgemm",
      [&] {
        cblas_sgemm(RowMajor, NoTrans, NoTrans, 64, 128, 64, 1.f, a.data(), 64, b.data(), 128, 1.f,
                    c.data(), 128);
      },
      2.0 * 64 * 128 * 64);
  return 0;
}
