// Shared by the CPU kernels of serpent_ssm (selective_scan_cpu.cpp, resample_cpu.cpp): split work
// over threads. Header-only; ops/cpu_build.py hashes it with the sources.
#pragma once

#include <algorithm>
#include <cstdint>
#include <thread>
#include <vector>

namespace serpent_ssm {

// Split tasks [0, n_tasks) into contiguous ranges, one per thread; run fn(begin, end, thread).
template <typename F>
void parallel_ranges(int64_t n_tasks, int64_t n_threads, F fn) {
  n_threads = std::max<int64_t>(1, std::min(n_threads, n_tasks));
  if (n_threads == 1) {
    fn(0, n_tasks, 0);
    return;
  }
  std::vector<std::thread> pool;
  pool.reserve(n_threads - 1);
  for (int64_t t = 1; t < n_threads; ++t) {
    pool.emplace_back([=] { fn(n_tasks * t / n_threads, n_tasks * (t + 1) / n_threads, t); });
  }
  fn(0, n_tasks / n_threads, 0);
  for (auto& th : pool) th.join();
}

}  // namespace serpent_ssm
