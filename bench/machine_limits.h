#pragma once
// The machine's limits, measured in the running process: the yardsticks that the benchmarks
// (bench/*.cpp) and `attnkit bench` state their ratios against. Not library API: a header of
// inline functions for the benchmark binaries and the CLI (tools/attnkit/bench.cpp), never
// installed.
//
//   FMA peak     independent vector FMAs on registers only (12 or 16 accumulators, enough to
//                hide the FMA latency), AVX-512F where the CPU has it, else AVX2+FMA; on one
//                thread and on torch::get_num_threads() threads; 2 FLOP per lane. No fp32
//                kernel can beat it.
//   streaming    vector loads (AVX-512 / AVX / SSE) summed into 8 accumulators over a buffer
//   read         far larger than the last-level cache (1 GiB), split across all threads;
//                median of passes, bytes / s.
//   sgemm        at::mm of 2048^2 fp32: whatever BLAS LibTorch carries (MKL in the pip wheel),
//                with the kernel that BLAS picks for this CPU.
//
// Threads are std::threads: at::parallel_for would run on one thread in a translation unit
// built without -fopenmp (ATen's OpenMP backend is inlined and guarded by _OPENMP), which is
// how the benchmarks and the CLI are built.
//
// The BLAS: its name (BLAS_INFO of at::show_config()) and version, and for MKL the code-path
// label that MKL's own verbose mode prints (MKL_Verbose, a public MKL service function),
// captured from one small at::mm. On non-Intel CPUs MKL prints a generic label that names no
// instruction set; the measured sgemm against the FMA peaks of each vector width then says how
// wide its kernel's vectors are at least.

#include <ATen/Version.h>
#include <torch/torch.h>

#include <dlfcn.h>
#include <sys/mman.h>
#include <unistd.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define ATTNKIT_LIMITS_X86 1
#else
#define ATTNKIT_LIMITS_X86 0
#endif

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

namespace attnkit::machine_limits {

// ---- threads -----------------------------------------------------------------------------------

/// Runs work(t) for t in [0, threads) on as many threads (the caller is thread 0), released
/// together once all have started; returns the wall seconds from the release until all finish.
inline double run_on_threads(int threads, const std::function<void(int)>& work) {
  threads = std::max(1, threads);
  std::atomic<int> ready{0};
  std::atomic<bool> go{false};
  std::vector<std::thread> pool;
  for (int t = 1; t < threads; ++t) {
    pool.emplace_back([&, t] {
      ready.fetch_add(1);
      while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
      work(t);
    });
  }
  while (ready.load() < threads - 1) std::this_thread::yield();
  const auto start = std::chrono::steady_clock::now();
  go.store(true, std::memory_order_release);
  work(0);
  for (std::thread& th : pool) th.join();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

/// Results go here so that the compiler must compute them.
inline volatile float sink = 0;

inline double median_of(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// ---- FMA peak ----------------------------------------------------------------------------------

// Each loop runs `iters` rounds of one FMA per accumulator, acc = acc * a + b, with the
// accumulators independent of each other. a * 1 + b = 1 keeps every value near 1 (no
// denormals, no overflow). Without -ffast-math the compiler may not reassociate or drop FMAs,
// and the sum goes to `sink`.
constexpr int kAcc128 = 12, kAcc256 = 12, kAcc512 = 16;

#if ATTNKIT_LIMITS_X86
__attribute__((target("avx,fma"))) inline float fma_loop_128(int64_t iters) {
  const __m128 a = _mm_set1_ps(0.999f), b = _mm_set1_ps(0.001f);
  __m128 acc[kAcc128];
  for (int j = 0; j < kAcc128; ++j) acc[j] = _mm_set1_ps(1.0f + 0.001f * static_cast<float>(j));
  for (int64_t i = 0; i < iters; ++i) {
    for (int j = 0; j < kAcc128; ++j) acc[j] = _mm_fmadd_ps(acc[j], a, b);
  }
  for (int j = 1; j < kAcc128; ++j) acc[0] = _mm_add_ps(acc[0], acc[j]);
  float out[4];
  _mm_storeu_ps(out, acc[0]);
  return out[0] + out[1] + out[2] + out[3];
}

__attribute__((target("avx2,fma"))) inline float fma_loop_256(int64_t iters) {
  const __m256 a = _mm256_set1_ps(0.999f), b = _mm256_set1_ps(0.001f);
  __m256 acc[kAcc256];
  for (int j = 0; j < kAcc256; ++j) acc[j] = _mm256_set1_ps(1.0f + 0.001f * static_cast<float>(j));
  for (int64_t i = 0; i < iters; ++i) {
    for (int j = 0; j < kAcc256; ++j) acc[j] = _mm256_fmadd_ps(acc[j], a, b);
  }
  for (int j = 1; j < kAcc256; ++j) acc[0] = _mm256_add_ps(acc[0], acc[j]);
  float out[8];
  _mm256_storeu_ps(out, acc[0]);
  float s = 0;
  for (float x : out) s += x;
  return s;
}

// (Not _mm512_reduce_add_ps: GCC 12 reports its _mm256_undefined_pd as uninitialised.)
__attribute__((target("avx512f"))) inline float sum_lanes_512(__m512 v) {
  float out[16];
  _mm512_storeu_ps(out, v);
  float s = 0;
  for (float x : out) s += x;
  return s;
}

__attribute__((target("avx512f"))) inline float fma_loop_512(int64_t iters) {
  const __m512 a = _mm512_set1_ps(0.999f), b = _mm512_set1_ps(0.001f);
  __m512 acc[kAcc512];
  for (int j = 0; j < kAcc512; ++j) acc[j] = _mm512_set1_ps(1.0f + 0.001f * static_cast<float>(j));
  for (int64_t i = 0; i < iters; ++i) {
    for (int j = 0; j < kAcc512; ++j) acc[j] = _mm512_fmadd_ps(acc[j], a, b);
  }
  for (int j = 1; j < kAcc512; ++j) acc[0] = _mm512_add_ps(acc[0], acc[j]);
  return sum_lanes_512(acc[0]);
}
#endif

/// Whether this CPU runs FMAs of `width` bits (128, 256, 512).
inline bool has_fma_width(int width) {
#if ATTNKIT_LIMITS_X86
  __builtin_cpu_init();
  const bool fma = __builtin_cpu_supports("fma") && __builtin_cpu_supports("avx");
  if (width == 128) return fma;
  if (width == 256) return fma && __builtin_cpu_supports("avx2");
  if (width == 512) return __builtin_cpu_supports("avx512f");
#endif
  return false;
}

/// The widest FMA this CPU has: 512, 256, 128, or 0 (none, or not x86).
inline int widest_fma_width() {
  for (int w : {512, 256, 128}) {
    if (has_fma_width(w)) return w;
  }
  return 0;
}

/// "AVX-512F", "AVX2+FMA", "FMA (128-bit)".
inline const char* fma_isa_name(int width) {
  switch (width) {
    case 512:
      return "AVX-512F";
    case 256:
      return "AVX2+FMA";
    case 128:
      return "FMA, 128-bit";
    default:
      return "none";
  }
}

/// FLOPs of one round of fma_loop_<width>: accumulators x lanes x 2.
inline double fma_flops_per_iter(int width) {
  const int acc = width == 512 ? kAcc512 : width == 256 ? kAcc256 : kAcc128;
  return 2.0 * acc * (width / 32);
}

inline float fma_loop(int width, int64_t iters) {
#if ATTNKIT_LIMITS_X86
  if (width == 512) return fma_loop_512(iters);
  if (width == 256) return fma_loop_256(iters);
  if (width == 128) return fma_loop_128(iters);
#endif
  return 0;
}

/// Rounds per thread that take about `seconds` on one thread.
inline int64_t fma_iters_for(int width, double seconds = 0.1) {
  const int64_t probe = int64_t{1} << 16;
  double t = run_on_threads(1, [&](int) { sink = fma_loop(width, probe); });
  t = std::min(t, run_on_threads(1, [&](int) { sink = fma_loop(width, probe); }));
  return std::max<int64_t>(probe, static_cast<int64_t>(seconds / std::max(t, 1e-9) * probe));
}

/// Wall seconds of one pass: `iters` rounds on each of `threads` threads.
inline double fma_pass_seconds(int width, int threads, int64_t iters) {
  std::vector<float> out(static_cast<size_t>(std::max(1, threads)));
  const double s = run_on_threads(threads, [&](int t) { out[t] = fma_loop(width, iters); });
  for (float x : out) sink = x;
  return s;
}

/// FMA peak in FLOP/s of `width`-bit FMAs on `threads` threads: the best of `passes` passes of
/// about 0.1 s (a peak: noise only lowers it). 0 when the CPU has no such FMA.
inline double fma_peak_flops(int width, int threads, int passes = 3) {
  if (!has_fma_width(width)) return 0;
  const int64_t iters = fma_iters_for(width);
  double best = 1e30;
  for (int p = 0; p < passes; ++p) best = std::min(best, fma_pass_seconds(width, threads, iters));
  return fma_flops_per_iter(width) * static_cast<double>(iters) * threads / best;
}

// ---- streaming read ----------------------------------------------------------------------------

#if ATTNKIT_LIMITS_X86
// Sums n floats (n a multiple of 8 vectors) into 8 vector accumulators.
__attribute__((target("avx512f"))) inline float read_sum_512(const float* p, size_t n) {
  __m512 acc[8];
  for (int j = 0; j < 8; ++j) acc[j] = _mm512_setzero_ps();
  for (size_t i = 0; i < n; i += 128) {
    for (int j = 0; j < 8; ++j) acc[j] = _mm512_add_ps(acc[j], _mm512_load_ps(p + i + 16 * j));
  }
  for (int j = 1; j < 8; ++j) acc[0] = _mm512_add_ps(acc[0], acc[j]);
  return sum_lanes_512(acc[0]);
}

__attribute__((target("avx"))) inline float read_sum_256(const float* p, size_t n) {
  __m256 acc[8];
  for (int j = 0; j < 8; ++j) acc[j] = _mm256_setzero_ps();
  for (size_t i = 0; i < n; i += 64) {
    for (int j = 0; j < 8; ++j) acc[j] = _mm256_add_ps(acc[j], _mm256_load_ps(p + i + 8 * j));
  }
  for (int j = 1; j < 8; ++j) acc[0] = _mm256_add_ps(acc[0], acc[j]);
  float out[8];
  _mm256_storeu_ps(out, acc[0]);
  float s = 0;
  for (float x : out) s += x;
  return s;
}

inline float read_sum_128(const float* p, size_t n) {  // SSE: the x86-64 baseline
  __m128 acc[8];
  for (int j = 0; j < 8; ++j) acc[j] = _mm_setzero_ps();
  for (size_t i = 0; i < n; i += 32) {
    for (int j = 0; j < 8; ++j) acc[j] = _mm_add_ps(acc[j], _mm_load_ps(p + i + 4 * j));
  }
  for (int j = 1; j < 8; ++j) acc[0] = _mm_add_ps(acc[0], acc[j]);
  float out[4];
  _mm_storeu_ps(out, acc[0]);
  return out[0] + out[1] + out[2] + out[3];
}
#endif

/// The width of the loads the read uses: 512 (AVX-512F), 256 (AVX), 128 (SSE), or 0 (a plain
/// loop: not x86).
inline int read_width() {
#if ATTNKIT_LIMITS_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return 512;
  if (__builtin_cpu_supports("avx")) return 256;
  return 128;
#else
  return 0;
#endif
}

inline float read_sum(int width, const float* p, size_t n) {
#if ATTNKIT_LIMITS_X86
  if (width == 512) return read_sum_512(p, n);
  if (width == 256) return read_sum_256(p, n);
  if (width == 128) return read_sum_128(p, n);
#endif
  float acc[8] = {};
  for (size_t i = 0; i < n; i += 8) {
    for (int j = 0; j < 8; ++j) acc[j] += p[i + j];
  }
  float s = 0;
  for (float x : acc) s += x;
  return s;
}

/// Bytes of the streaming read's buffer: 1 GiB, or 4 times the last-level cache if that is more
/// (as sysconf reports it: a VM on an EPYC 7003 reports the socket's 256 MiB).
inline size_t read_buffer_bytes() {
  const long llc = sysconf(_SC_LEVEL3_CACHE_SIZE);
  return std::max(size_t{1} << 30, llc > 0 ? 4 * static_cast<size_t>(llc) : 0);
}

/// The buffer of the streaming read (read_buffer_bytes), mapped with the default page size (as
/// tensors get it) and first touched by the threads that read it.
class ReadBuffer {
 public:
  explicit ReadBuffer(int threads) : threads_(std::max(1, threads)) {
    // Whole 512-byte blocks for every thread.
    const size_t block = 512 * static_cast<size_t>(threads_);
    bytes_ = (read_buffer_bytes() + block - 1) / block * block;
    void* p = mmap(nullptr, bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
      bytes_ = 0;
      return;
    }
    data_ = static_cast<float*>(p);
    // Written, not only mapped: untouched pages would all read the one zero page (from cache).
    run_on_threads(threads_, [&](int t) {
      std::fill(data_ + t * per_thread(), data_ + (t + 1) * per_thread(), 1.0f);
    });
  }
  ~ReadBuffer() {
    if (data_ != nullptr) munmap(data_, bytes_);
  }
  ReadBuffer(const ReadBuffer&) = delete;
  ReadBuffer& operator=(const ReadBuffer&) = delete;

  size_t bytes() const { return bytes_; }
  int threads() const { return threads_; }

  /// Wall seconds of one pass: every thread reads its share once.
  double pass_seconds() const {
    if (data_ == nullptr) return 0;
    const int width = read_width();
    std::vector<float> out(static_cast<size_t>(threads_));
    const double s = run_on_threads(
        threads_, [&](int t) { out[t] = read_sum(width, data_ + t * per_thread(), per_thread()); });
    for (float x : out) sink = x;
    return s;
  }

 private:
  size_t per_thread() const { return bytes_ / sizeof(float) / static_cast<size_t>(threads_); }

  int threads_;
  size_t bytes_ = 0;
  float* data_ = nullptr;
};

/// Streaming read bandwidth in bytes/s on `threads` threads: the median of `passes` passes.
inline double read_bandwidth(int threads, int passes = 5) {
  ReadBuffer buffer(threads);
  if (buffer.bytes() == 0) return 0;
  std::vector<double> rates;
  for (int p = 0; p < passes; ++p) {
    rates.push_back(static_cast<double>(buffer.bytes()) / buffer.pass_seconds());
  }
  return median_of(rates);
}

// ---- sgemm -------------------------------------------------------------------------------------

/// sgemm FLOP/s: at::mm of n x n fp32 matrices, median of `repeats` after one warm-up.
inline double sgemm_flops(int64_t n = 2048, int repeats = 3) {
  torch::NoGradGuard no_grad;
  torch::Tensor a = torch::randn({n, n}), b = torch::randn({n, n}), c = torch::empty({n, n});
  at::mm_out(c, a, b);
  std::vector<double> times;
  for (int r = 0; r < std::max(1, repeats); ++r) {
    const auto start = std::chrono::steady_clock::now();
    at::mm_out(c, a, b);
    times.push_back(
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  sink = c[0][0].item<float>();
  return 2.0 * static_cast<double>(n) * n * n / median_of(times);
}

// ---- the BLAS ----------------------------------------------------------------------------------

/// What is known about the BLAS behind at::mm, from public means only.
struct BlasInfo {
  /// BLAS_INFO of at::show_config(): "mkl", "open", ...; "unknown" when absent.
  std::string name = "unknown";
  /// MKL: at::get_mkl_version(), e.g. "Intel(R) oneAPI Math Kernel Library Version 2024.2-
  /// Product Build 20240605"; OpenBLAS: openblas_get_config(). Empty when not found.
  std::string version;
  /// The file that holds it (dladdr of its entry point), e.g. .../libtorch_cpu.so.
  std::string library;
  /// at::get_cpu_capability(): the level of ATen's own vectorised kernels (not the BLAS's).
  std::string aten_capability;
  /// MKL_ENABLE_INSTRUCTIONS, MKL_CBWR, MKL_VERBOSE, ATEN_CPU_CAPABILITY where set.
  std::string env;
};

/// One of each process's BLAS facts; cheap (no BLAS call).
inline BlasInfo blas_info() {
  BlasInfo info;
  const std::string config = at::show_config();
  const size_t at_key = config.find("BLAS_INFO=");
  if (at_key != std::string::npos) {
    const size_t start = at_key + std::strlen("BLAS_INFO=");
    info.name = config.substr(start, config.find_first_of(",\n", start) - start);
  }
  info.aten_capability = at::get_cpu_capability();
  Dl_info where{};
  info.version = at::get_mkl_version();  // "" without MKL
  const size_t tail = info.version.find(" for Intel(R) 64");
  if (tail != std::string::npos) info.version.resize(tail);
  if (void* fn = dlsym(RTLD_DEFAULT, "MKL_Get_Version_String")) {
    if (dladdr(fn, &where) != 0 && where.dli_fname != nullptr) info.library = where.dli_fname;
  } else if (void* cfg = dlsym(RTLD_DEFAULT, "openblas_get_config");
             cfg != nullptr && info.version.empty()) {
    info.version = reinterpret_cast<const char* (*)()>(cfg)();
    if (void* core = dlsym(RTLD_DEFAULT, "openblas_get_corename")) {
      info.version += std::string(", core ") + reinterpret_cast<const char* (*)()>(core)();
    }
    if (dladdr(cfg, &where) != 0 && where.dli_fname != nullptr) info.library = where.dli_fname;
  }
  for (const char* var : {"MKL_ENABLE_INSTRUCTIONS", "MKL_CBWR", "MKL_VERBOSE",
                          "ATEN_CPU_CAPABILITY"}) {
    if (const char* value = std::getenv(var)) {
      if (!info.env.empty()) info.env.append(" ");
      info.env.append(var).append("=").append(value);
    }
  }
  return info;
}

/// What MKL's verbose mode says about the sgemm that at::mm runs: its header line's code-path
/// label and threading layer, and whether an SGEMM call was logged at all.
struct MklPath {
  /// e.g. "Intel(R) Advanced Vector Extensions 2 (Intel(R) AVX2) enabled processors", or the
  /// generic "Intel(R) Architecture processors"; empty when not captured.
  std::string label;
  /// e.g. "gnu_thread" (MKL's OpenMP layer on libgomp).
  std::string threading;
  bool sgemm_logged = false;
  /// Why nothing was captured, if so.
  std::string missing;
};

/// Runs `fn` with this process's standard output (file descriptor 1) going to a temporary
/// file, and returns what was written there.
inline std::string capture_stdout(const std::function<void()>& fn) {
  std::cout.flush();
  std::fflush(stdout);
  std::FILE* tmp = std::tmpfile();
  const int saved = tmp != nullptr ? dup(STDOUT_FILENO) : -1;
  if (saved < 0 || dup2(fileno(tmp), STDOUT_FILENO) < 0) {
    if (saved >= 0) close(saved);
    if (tmp != nullptr) std::fclose(tmp);
    fn();
    return "";
  }
  fn();
  std::cout.flush();
  std::fflush(stdout);
  dup2(saved, STDOUT_FILENO);
  close(saved);
  std::string text;
  std::rewind(tmp);
  char buf[4096];
  size_t n = 0;
  while ((n = std::fread(buf, 1, sizeof(buf), tmp)) > 0) text.append(buf, n);
  std::fclose(tmp);
  return text;
}

/// MKL's verbose header for one small at::mm (MKL prints it on the first logged call of a
/// process). Call once per process, before anything else turns MKL's verbose mode on.
inline MklPath mkl_path() {
  MklPath path;
  using VerboseFn = int (*)(int);
  auto verbose = reinterpret_cast<VerboseFn>(dlsym(RTLD_DEFAULT, "MKL_Verbose"));
  if (verbose == nullptr) {
    path.missing = "MKL_Verbose not found";
    return path;
  }
  if (std::getenv("MKL_VERBOSE") != nullptr) {
    path.missing = "MKL_VERBOSE is set: see MKL's own output";
    return path;
  }
  torch::NoGradGuard no_grad;
  torch::Tensor a = torch::randn({64, 64});
  const std::string text = capture_stdout([&] {
    verbose(1);
    torch::Tensor c = at::mm(a, a);
    verbose(0);
    sink = c[0][0].item<float>();
  });
  path.sgemm_logged = text.find("SGEMM(") != std::string::npos;
  const size_t header = text.find("MKL_VERBOSE oneMKL");
  const size_t header_old = text.find("MKL_VERBOSE Intel(R) MKL");
  const size_t at = header != std::string::npos ? header : header_old;
  if (at == std::string::npos) {
    path.missing = "no verbose header (already printed in this process?)";
    return path;
  }
  const std::string line = text.substr(at, text.find('\n', at) - at);
  // "... for Intel(R) 64 architecture <label>, Lnx 2.45GHz lp64 gnu_thread"
  const std::string key = "64 architecture ";
  const size_t label = line.find(key);
  if (label != std::string::npos) {
    const size_t start = label + key.size();
    path.label = line.substr(start, line.find(", ", start) - start);
  } else {
    path.label = line;
  }
  const size_t space = line.rfind(' ');
  if (space != std::string::npos) path.threading = line.substr(space + 1);
  return path;
}

// ---- all of it ---------------------------------------------------------------------------------

/// The limits the benchmarks compare against. Rates are per second; 0 = not measured.
struct Limits {
  int threads = 1;
  /// Bits of the FMA used for the peak (the widest the CPU has); 0 = no FMA.
  int fma_width = 0;
  double fma_peak_1 = 0;  ///< FLOP/s, one thread
  double fma_peak = 0;    ///< FLOP/s, `threads` threads
  double read = 0;        ///< bytes/s, `threads` threads
  double sgemm = 0;       ///< FLOP/s, at::mm 2048^2 on LibTorch's threads
};

/// Measures every limit on `threads` threads (LibTorch's count by default; sgemm always runs on
/// LibTorch's): about 2-3 s.
inline Limits measure(int threads = 0, int sgemm_repeats = 3) {
  Limits l;
  l.threads = threads > 0 ? threads : torch::get_num_threads();
  l.fma_width = widest_fma_width();
  l.fma_peak_1 = fma_peak_flops(l.fma_width, 1);
  l.fma_peak = l.threads == 1 ? l.fma_peak_1 : fma_peak_flops(l.fma_width, l.threads);
  l.read = read_bandwidth(l.threads);
  l.sgemm = sgemm_flops(2048, sgemm_repeats);
  return l;
}

inline std::string format(const char* fmt, double a, double b = 0, double c = 0) {
  char buf[256];
  std::snprintf(buf, sizeof(buf), fmt, a, b, c);
  return buf;
}

inline std::string threads_text(int threads) {
  return std::to_string(threads) + (threads == 1 ? " thread" : " threads");
}

/// "= 0.62 of sgemm = 0.18 of FMA peak (2 threads)" for a rate of `flops` FLOP/s.
inline std::string flop_ratios(double flops, const Limits& l) {
  std::string s;
  if (l.sgemm > 0) s += format("= %.2f of sgemm ", flops / l.sgemm);
  if (l.fma_peak > 0) s += format("= %.2f of FMA peak ", flops / l.fma_peak);
  return s + "(" + threads_text(l.threads) + ")";
}

/// "= 0.71 of streaming read (2 threads)" for a rate of `bytes` bytes/s.
inline std::string read_ratio(double bytes, const Limits& l) {
  if (l.read <= 0) return "(streaming read not measured)";
  return format("= %.2f of streaming read (", bytes / l.read) + threads_text(l.threads) + ")";
}

/// The limits, one per line, each line starting with `indent`.
inline std::string describe(const Limits& l, const std::string& indent = "  ") {
  std::string s;
  if (l.fma_width > 0) {
    const int acc = l.fma_width == 512 ? kAcc512 : l.fma_width == 256 ? kAcc256 : kAcc128;
    s += indent + "FMA peak (" + fma_isa_name(l.fma_width) + ", " + std::to_string(acc) +
         " independent accumulators, best of 3): " +
         format("%.1f GFLOP/s on 1 thread", l.fma_peak_1 / 1e9) +
         (l.threads > 1 ? format(", %.1f GFLOP/s on ", l.fma_peak / 1e9) + threads_text(l.threads)
                        : std::string()) +
         "\n";
  } else {
    s += indent + "FMA peak: not measured (no FMA on this CPU, or not x86)\n";
  }
  const int rw = read_width();
  s += indent + "streaming read (" +
       (rw > 0 ? std::to_string(rw) + "-bit loads" : std::string("plain loads")) +
       format(", %.0f MiB, ", static_cast<double>(read_buffer_bytes()) / (1 << 20)) +
       threads_text(l.threads) + ", median of passes): " +
       format("%.1f GB/s\n", l.read / 1e9);
  s += indent + format("sgemm 2048^3 (at::mm): %.1f GFLOP/s", l.sgemm / 1e9);
  if (l.fma_peak > 0) s += format(" = %.2f of FMA peak", l.sgemm / l.fma_peak);
  return s + " (" + threads_text(torch::get_num_threads()) + ")\n";
}

/// The BLAS behind at::mm and what can be said of its kernel: the BLAS facts, MKL's own code-path
/// label, and the vector widths that sgemm's speed rules out (its rate against the FMA peak of
/// each narrower width, on the same threads). Runs a small at::mm under MKL's
/// verbose mode (once per process) and FMA peaks of the narrower widths: about 1 s.
inline std::string describe_blas(const Limits& l, const std::string& indent = "  ") {
  const BlasInfo info = blas_info();
  std::string s = indent + "BLAS: " + info.name;
  if (!info.version.empty()) s += ", " + info.version;
  if (!info.library.empty()) s += " (in " + info.library + ")";
  s += "\n";
  if (info.version.find("Math Kernel Library") != std::string::npos) {
    const MklPath path = mkl_path();
    if (!path.label.empty()) {
      s += indent + "MKL's code path (its verbose header): \"" + path.label + "\"";
      if (path.label == "Intel(R) Architecture processors") {
        s += ", MKL's generic label: it names no instruction set for this CPU";
      }
      s += "; threading " + (path.threading.empty() ? std::string("?") : path.threading) +
           "; at::mm -> MKL SGEMM " + (path.sgemm_logged ? "logged" : "NOT logged") + "\n";
    } else {
      s += indent + "MKL's code path: unknown (" + path.missing + ")\n";
    }
  } else {
    s += indent + "BLAS kernel: not reported by this BLAS through a public interface\n";
  }
  // sgemm faster than the FMA peak of width w (with a 5% margin for noise) => its kernel uses
  // vectors wider than w bits (FMAs, or multiplies and adds on separate pipes).
  if (l.sgemm > 0 && l.fma_width > 128) {
    int wider_than = 0;
    double beaten = 0;
    for (int w : {128, 256}) {
      if (w >= l.fma_width) break;
      const double peak = fma_peak_flops(w, l.threads);
      if (peak > 0 && l.sgemm > 1.05 * peak) {
        wider_than = w;
        beaten = peak;
      }
    }
    s += indent + format("sgemm %.1f GFLOP/s", l.sgemm / 1e9);
    if (wider_than > 0) {
      s += format(" > the %.0f-bit FMA peak %.1f GFLOP/s on the same threads: its kernel uses ",
                  wider_than, beaten / 1e9) +
           format("vectors wider than %.0f bits\n", wider_than);
    } else {
      s += " <= the 128-bit FMA peak: its vector width cannot be told from its speed\n";
    }
  }
  s += indent + "ATen's own kernels: " + info.aten_capability +
       " (at::get_cpu_capability; not the BLAS's)";
  if (!info.env.empty()) s += "; environment: " + info.env;
  return s + "\n";
}

}  // namespace attnkit::machine_limits
