#include "blas_check.h"

// blas_info(): BLAS_INFO of at::show_config() and the MKL version (header-only, not library API).
#include "machine_limits.h"

#include <fstream>

namespace attnkit::cli {

namespace {

std::string basename_of(const std::string& path) {
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

std::string parent_dir_name(const std::string& path) {
  const size_t slash = path.rfind('/');
  if (slash == std::string::npos || slash == 0) return "";
  return basename_of(path.substr(0, slash));
}

// The libblas (else libopenblas) mapped into this process, from /proc/self/maps; "" if none.
std::string mapped_libblas() {
  // A maps line: address perms offset dev inode path. The path is the resolved file, so the
  // alternatives symlinks are already followed.
  std::ifstream maps("/proc/self/maps");
  std::string line, libopenblas;
  while (std::getline(maps, line)) {
    const size_t path_start = line.find('/');
    if (path_start == std::string::npos) continue;
    const std::string path = line.substr(path_start);
    const std::string name = basename_of(path);
    // libblas.so.3 is what LibTorch's BLAS calls bind to; libopenblas.so.0 is also mapped when
    // OpenBLAS provides libblas or lapack, so it only counts when there is no libblas.
    if (name.rfind("libblas.so", 0) == 0) return path;
    if (name.rfind("libopenblas", 0) == 0 && libopenblas.empty()) libopenblas = path;
  }
  return libopenblas;
}

bool built_with_mkl(const machine_limits::BlasInfo& info) { return info.name == "mkl"; }

}  // namespace

std::string mapped_blas_library() {
  const machine_limits::BlasInfo info = machine_limits::blas_info();
  if (built_with_mkl(info)) {
    // "Intel(R) oneAPI Math Kernel Library Version 2024.2-Product Build 20240605"
    // -> "MKL 2024.2-Product Build 20240605"
    const size_t v = info.version.find("Version ");
    std::string text = "MKL";
    if (v != std::string::npos) {
      text.append(" ").append(info.version, v + 8, std::string::npos);
    } else if (!info.version.empty()) {
      text.append(" ").append(info.version);
    }
    if (!info.library.empty()) text.append(" in ").append(info.library);
    return text;
  }
  return mapped_libblas();
}

std::string blas_warning() {
  if (built_with_mkl(machine_limits::blas_info())) return "";
  const std::string path = mapped_libblas();
  // Debian's reference BLAS lives in .../blas/libblas.so.3; OpenBLAS, BLIS and ATLAS in
  // directories of their own.
  if (path.empty() || parent_dir_name(path) != "blas") return "";
  return "attnkit: warning: LibTorch runs on the reference BLAS (" + path +
         "), matmul is ~40x slower; install libopenblas0-pthread or run `sudo update-alternatives "
         "--config libblas.so.3-x86_64-linux-gnu`";
}

}  // namespace attnkit::cli
