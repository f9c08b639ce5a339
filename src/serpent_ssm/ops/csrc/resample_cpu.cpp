// SeRpEnt's cell pooling and restore, forward and backward, fused: the "cpu" fast path of
// serpent_ssm.ops.resample.cell_pool and .restore ("hold" and "interp"); ops/resample_cpu.py
// lays the inputs out, and the torch code of ops/resample is the reference the tests compare with
// (the loops of ops/resample/naive.py a second one).
//
// Built into the same library as selective_scan_cpu.cpp (ops/scan_cpu.py compiles them all),
// with the same flags. float32 values, float64 times, every array contiguous; one batch row is
// one task, so no two threads write the same memory:
//
//   x      (B, L, D)   cell_pool: the elements            | restore: y (B, L', D), the grid outputs
//   t      (B, L) f64  running times, non-decreasing along each row
//   start  (B) f64     cell_pool: the time before the first element (0 when null)
//   counts (B) int64   cell_pool: cells 1..counts are filled (counts <= L') | restore: grid points
//   mask   (B, L) u8   real elements (all when null); padding is never read
//   out    (B, L', D)  cell_pool forward | (B, L, D) restore forward
//   grad   the gradient of out (backward); dx (the shape of x) and dt (B, L) f64 are written
//
// Cell pooling: element l occupies (t_{l-1}, t_l] (t_{-1} = start), cell k is (k − 1, k], and cell
// k receives o_lk · x_l with o_lk the length of their overlap. As in the reference, the shares of
// the elements whose interval starts in a cell are summed in element order, and then the share of
// the element that started before it (whose interval holds the grid point k − 1 strictly inside)
// is added: the forward pass matches the reference bit for bit (gradients to rounding). Gradients follow the reference's
// autograd, ties included (torch.minimum/maximum give half the gradient to each side of a tie).
//
// Restore: hold reads grid point k = min(floor(t_l), counts) (0 = none, output 0); interp blends
// grid points floor(t_c) and floor(t_c) + 1 with t_c = t_l clamped to [1, max(counts, 1)], both
// slots clamped to the valid ones, and gives 0 on rows without grid points.

// No fused multiply-adds in this file, the included templates too (GCC contracts a * b + c by
// default in C++, even with -std=c++17, and clang within an expression): every product is
// rounded before it is added, as torch's elementwise ops do, so the forward passes give the
// reference's float32 values bit for bit.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "parallel.h"

#if defined(_MSC_VER)
#define RS_EXPORT extern "C" __declspec(dllexport)
#else
#define RS_EXPORT extern "C" __attribute__((visibility("default")))
#endif

#define RS_PRAGMA(...) _Pragma(#__VA_ARGS__)
#define RS_SIMD RS_PRAGMA(omp simd)
#define RS_SIMD_SUM(...) RS_PRAGMA(omp simd reduction(+ : __VA_ARGS__))

namespace {

using serpent_ssm::parallel_ranges;

constexpr int kResampleAbiVersion = 1;

struct ResampleArgs {
  int64_t batch, length, dim, buffer, n_threads, has_mask, has_start, interp;
  const float* x;
  const double* t;
  const double* start;
  const int64_t* counts;
  const uint8_t* mask;
  const float* grad;
  float* out;
  float* dx;
  double* dt;
};

// d min(a, b) / da and d max(a, b) / da as torch's autograd gives them (half on a tie)
inline double min_grad(double a, double b) { return a < b ? 1.0 : (a == b ? 0.5 : 0.0); }
inline double max_grad(double a, double b) { return a > b ? 1.0 : (a == b ? 0.5 : 0.0); }

inline double overlap(double t, double t_prev, double cell) {
  const double o = std::fmin(t, cell) - std::fmax(t_prev, cell - 1.0);
  return o > 0.0 ? o : 0.0;  // NaN -> 0, as the reference's keep (share > 0) does
}

inline void axpy(float* out, const float* src, float a, int64_t d) {
  RS_SIMD
  for (int64_t j = 0; j < d; ++j) out[j] += a * src[j];
}

inline float dot(const float* a, const float* b, int64_t d) {
  float s = 0.0f;
  RS_SIMD_SUM(s)
  for (int64_t j = 0; j < d; ++j) s += a[j] * b[j];
  return s;
}

// Visit the (cell, share) pairs of element l: cb(k, share, first) for its first cell (first = true)
// and for each later cell it spills into, in increasing k, within cells 1..limit.
// Times are >= 0 (ops.resample routes negative ones to the reference); any other value reads and
// writes nothing out of range: NaN, negative or out-of-range first cells are skipped.
template <typename F>
inline void element_cells(double t_prev, double t, int64_t limit, F cb) {
  if (std::isnan(t)) return;  // std::fmin would drop a NaN; the reference's share is NaN, not kept
  const double first = std::floor(t_prev) + 1.0;
  if (!(first >= 1.0 && first <= static_cast<double>(limit))) return;
  const double share = overlap(t, t_prev, first);
  const int64_t k0 = static_cast<int64_t>(first);
  if (share > 0.0) cb(k0, share, true);
  for (int64_t k = k0 + 1; k <= limit && static_cast<double>(k - 1) < t; ++k) {
    cb(k, overlap(t, t_prev, static_cast<double>(k)), false);
  }
}

void cell_pool_forward(const ResampleArgs& a) {
  const int64_t L = a.length, D = a.dim, P = a.buffer;
  parallel_ranges(a.batch, a.n_threads, [&](int64_t begin, int64_t end, int64_t) {
    std::vector<float> spill(static_cast<size_t>(P * D));
    std::vector<uint8_t> spilled(static_cast<size_t>(P));
    for (int64_t b = begin; b < end; ++b) {
      const float* x = a.x + b * L * D;
      const double* t = a.t + b * L;
      float* out = a.out + b * P * D;
      std::memset(out, 0, sizeof(float) * P * D);
      std::fill(spilled.begin(), spilled.end(), 0);
      const int64_t limit = std::min(a.counts[b], P);
      double t_prev = a.has_start ? a.start[b] : 0.0;
      for (int64_t l = 0; l < L; t_prev = t[l], ++l) {
        if (a.has_mask && !a.mask[b * L + l]) continue;
        element_cells(t_prev, t[l], limit, [&](int64_t k, double share, bool first) {
          const float s = static_cast<float>(share);
          if (first) {
            axpy(out + (k - 1) * D, x + l * D, s, D);
          } else {  // at most one element spills into a cell
            float* dst = spill.data() + (k - 1) * D;
            RS_SIMD
            for (int64_t j = 0; j < D; ++j) dst[j] = s * x[l * D + j];
            spilled[k - 1] = 1;
          }
        });
      }
      for (int64_t k = 0; k < P; ++k) {
        if (spilled[k]) axpy(out + k * D, spill.data() + k * D, 1.0f, D);
      }
    }
  });
}

void cell_pool_backward(const ResampleArgs& a) {
  const int64_t L = a.length, D = a.dim, P = a.buffer;
  parallel_ranges(a.batch, a.n_threads, [&](int64_t begin, int64_t end, int64_t) {
    std::vector<float> spill(static_cast<size_t>(D));
    for (int64_t b = begin; b < end; ++b) {
      const float* x = a.x + b * L * D;
      const float* g = a.grad + b * P * D;
      const double* t = a.t + b * L;
      float* dx = a.dx + b * L * D;
      double* dt = a.dt + b * L;
      std::memset(dx, 0, sizeof(float) * L * D);
      std::fill(dt, dt + L, 0.0);
      const int64_t limit = std::min(a.counts[b], P);
      double t_prev = a.has_start ? a.start[b] : 0.0;
      for (int64_t l = 0; l < L; t_prev = t[l], ++l) {
        if (a.has_mask && !a.mask[b * L + l]) continue;
        bool any_spill = false;
        std::fill(spill.begin(), spill.end(), 0.0f);
        element_cells(t_prev, t[l], limit, [&](int64_t k, double share, bool first) {
          const float* gk = g + (k - 1) * D;
          axpy(first ? dx + l * D : spill.data(), gk, static_cast<float>(share), D);
          any_spill = any_spill || !first;
          const double gs = static_cast<double>(dot(gk, x + l * D, D));
          const double cell = static_cast<double>(k);
          dt[l] += gs * min_grad(t[l], cell);
          if (first && l > 0) dt[l - 1] -= gs * max_grad(t_prev, cell - 1.0);
        });
        if (any_spill) axpy(dx + l * D, spill.data(), 1.0f, D);
      }
    }
  });
}

// The restore's reading of position l: the slots it blends and the weight of the upper one
// (hold: one slot, weight 0; none: the output is 0), and d t_c / d t_l for interp.
struct Reading {
  bool any;
  int64_t lo, hi;
  float w;
  double dtc;
};

inline Reading reading(const ResampleArgs& a, double t, int64_t count) {
  const int64_t P = a.buffer;
  Reading r{false, 0, 0, 0.0f, 0.0};
  if (!a.interp) {  // hold
    if (!(t >= 1.0)) return r;  // before the first grid point, or NaN
    const double k = std::fmin(std::floor(t), static_cast<double>(count));
    if (k < 1.0) return r;
    r.any = true;
    r.lo = r.hi = std::min(static_cast<int64_t>(k) - 1, P - 1);
    return r;
  }
  if (count < 1) return r;
  const double hi = static_cast<double>(std::max<int64_t>(count, 1));
  const double m = std::fmax(t, 1.0);
  const double tc = std::isnan(t) ? t : std::fmin(m, hi);
  r.any = true;
  r.dtc = max_grad(t, 1.0) * min_grad(m, hi);
  if (std::isnan(tc)) {  // NaN output (times are finite in the mixer; the reference may raise)
    r.w = static_cast<float>(tc);
    return r;
  }
  const double lo = std::floor(tc);
  r.w = static_cast<float>(tc - lo);
  const int64_t lo_i = static_cast<int64_t>(lo);
  r.lo = std::min(std::max<int64_t>(lo_i - 1, 0), P - 1);
  r.hi = std::min(std::min(lo_i, P - 1), std::min(std::max<int64_t>(count - 1, 0), P - 1));
  return r;
}

void restore_forward(const ResampleArgs& a) {
  const int64_t L = a.length, D = a.dim, P = a.buffer;
  parallel_ranges(a.batch, a.n_threads, [&](int64_t begin, int64_t end, int64_t) {
    for (int64_t b = begin; b < end; ++b) {
      const float* y = a.x + b * P * D;
      float* out = a.out + b * L * D;
      for (int64_t l = 0; l < L; ++l) {
        float* o = out + l * D;
        const Reading r = (a.has_mask && !a.mask[b * L + l]) || P == 0
                              ? Reading{false, 0, 0, 0.0f, 0.0}
                              : reading(a, a.t[b * L + l], a.counts[b]);
        if (!r.any) {
          std::memset(o, 0, sizeof(float) * D);
          continue;
        }
        const float* ylo = y + r.lo * D;
        const float* yhi = y + r.hi * D;
        if (!a.interp) {
          std::memcpy(o, ylo, sizeof(float) * D);
          continue;
        }
        const float w = r.w, v = 1.0f - r.w;
        RS_SIMD
        for (int64_t j = 0; j < D; ++j) o[j] = v * ylo[j] + w * yhi[j];
      }
    }
  });
}

void restore_backward(const ResampleArgs& a) {
  const int64_t L = a.length, D = a.dim, P = a.buffer;
  parallel_ranges(a.batch, a.n_threads, [&](int64_t begin, int64_t end, int64_t) {
    for (int64_t b = begin; b < end; ++b) {
      const float* y = a.x + b * P * D;
      const float* g = a.grad + b * L * D;
      float* dy = a.dx + b * P * D;
      std::memset(dy, 0, sizeof(float) * P * D);
      if (a.dt != nullptr) std::fill(a.dt + b * L, a.dt + (b + 1) * L, 0.0);
      if (P == 0) continue;
      for (int64_t l = 0; l < L; ++l) {
        if (a.has_mask && !a.mask[b * L + l]) continue;
        const Reading r = reading(a, a.t[b * L + l], a.counts[b]);
        if (!r.any) continue;
        const float* gl = g + l * D;
        if (!a.interp) {
          axpy(dy + r.lo * D, gl, 1.0f, D);
          continue;
        }
        axpy(dy + r.lo * D, gl, 1.0f - r.w, D);
        axpy(dy + r.hi * D, gl, r.w, D);
        if (a.dt != nullptr && r.dtc != 0.0) {
          const double gw = static_cast<double>(dot(gl, y + r.hi * D, D) - dot(gl, y + r.lo * D, D));
          a.dt[b * L + l] = gw * r.dtc;
        }
      }
    }
  });
}

}  // namespace

RS_EXPORT int rs_abi_version() { return kResampleAbiVersion; }
RS_EXPORT int64_t rs_args_size() { return static_cast<int64_t>(sizeof(ResampleArgs)); }
RS_EXPORT int rs_cell_pool_forward_f32(const ResampleArgs* a) { return cell_pool_forward(*a), 0; }
RS_EXPORT int rs_cell_pool_backward_f32(const ResampleArgs* a) { return cell_pool_backward(*a), 0; }
RS_EXPORT int rs_restore_forward_f32(const ResampleArgs* a) { return restore_forward(*a), 0; }
RS_EXPORT int rs_restore_backward_f32(const ResampleArgs* a) { return restore_backward(*a), 0; }
