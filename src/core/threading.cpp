#include <attnkit/core/threading.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <fstream>
#include <set>

namespace attnkit {

int64_t kernel_threads() {
  // Enough single-element tasks for every thread to take one; each records its thread number.
  const int64_t tasks = 64 * std::max<int64_t>(1, at::get_num_threads());
  std::atomic<int64_t> highest{0};
  at::parallel_for(0, tasks, 1, [&](int64_t, int64_t) {
    int64_t seen = highest.load();
    const int64_t mine = at::get_thread_num();
    while (mine > seen && !highest.compare_exchange_weak(seen, mine)) {
    }
  });
  return highest.load() + 1;
}

std::vector<std::string> openmp_runtimes() {
  std::ifstream maps("/proc/self/maps");
  std::set<std::string> found;
  std::string line;
  while (std::getline(maps, line)) {
    const size_t slash = line.find('/');
    if (slash == std::string::npos) continue;
    const std::string path = line.substr(slash);
    const std::string file = path.substr(path.rfind('/') + 1);
    for (const char* name : {"libgomp", "libiomp", "libomp"}) {
      if (file.rfind(name, 0) == 0) found.insert(path);
    }
  }
  return {found.begin(), found.end()};
}

}  // namespace attnkit
