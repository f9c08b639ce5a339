// Fused selective scan (S6) for CPUs: the "cpu" backend of serpent_ssm.ops.selective_scan.
//
// Plain C++17 with a C interface, loaded with ctypes (no Python headers, no torch headers, no
// ninja): any C++ compiler builds it in seconds. Shapes and semantics are those of
// selective_scan (ops/selective_scan/interface.py); the Python side (scan_cpu.py) lays the
// inputs out:
//
//   u, delta, z, y, du, ddelta, dz   (Bt, D, L) contiguous
//   A                                 (D, N) contiguous
//   B, C                              element (b, g, l, n) at  b*s_b + g*s_g + l*s_l + n
//                                     (n contiguous; s_l = 0 for time-invariant, s_b = 0 when
//                                     shared over the batch); channel d reads group d / (D/G)
//   dB, dC                            the same, plus t*s_t for the thread t that accumulates
//                                     (s_t = 0 when no two tasks write the same element)
//   h0, h_final, dh0, dhT, dA_part    (Bt, D, N)
//   dD_part, dbias_part               (Bt, D)
//   ckpt                              (Bt, D, ceil(L/T), N): the state before steps 0, T, 2T...
//   lengths                           (Bt,) int64 real elements per row (right padding)
//
// One task is one (batch row, channel): the whole recurrence of that channel runs with the
// state in registers (vectorised over N), fusing softplus/bias, discretisation, the update,
// the C contraction, the D skip and the z gate. Tasks are split over threads. The forward pass
// writes the state every T steps; the backward pass walks the chunks backwards, recomputes the
// T states of a chunk from its checkpoint into a small buffer (in L1), and runs the adjoint
// recurrence over it. Nothing of size (Bt, D, L, N) is ever stored.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

#include "parallel.h"

#if defined(_MSC_VER)
#define SS_EXPORT extern "C" __declspec(dllexport)
#define SS_RESTRICT __restrict
#else
#define SS_EXPORT extern "C" __attribute__((visibility("default")))
#define SS_RESTRICT __restrict__
#endif

// Floating-point build flags (_BASE_FLAGS in scan_cpu.py): not -ffast-math, but four of its
// parts, -fno-math-errno, -fno-trapping-math, -fno-signed-zeros and -fassociative-math (GCC
// honours the last only together with the two before it). -fassociative-math lets the compiler
// reorder floating-point sums and products anywhere in this file. It is there for the sums over
// the state (acc += h[n] * C[n], and those of the backward pass): "omp simd reduction" alone
// does not always get them vectorised; with GCC 12 on x86-64 the float64 kernels keep these
// loops scalar without the flag on the baseline target (no -march=native), and get fewer vector
// versions of them with -march=native (float32 is vectorised either way). The price: sums are
// not evaluated in the order written, so results match the other backends to rounding, not
// bitwise, and may differ between compilers and CPUs; they do not depend on the thread count,
// since every (row, channel) task runs the same code. exp_fast keeps its two-part reduction
// apart with fused multiply-adds. Not used: -ffinite-math-only (the compiler may not assume
// that there are no infinities or NaN) and -freciprocal-math (divisions stay divisions).
//
// "omp simd" (built with -fopenmp-simd: no OpenMP runtime) marks the loops to vectorise, with
// "reduction" for the sums in them.
#define SS_PRAGMA(...) _Pragma(#__VA_ARGS__)
#define SS_SIMD SS_PRAGMA(omp simd)
#define SS_SIMD_SUM(...) SS_PRAGMA(omp simd reduction(+ : __VA_ARGS__))

namespace {

using serpent_ssm::parallel_ranges;

constexpr int kAbiVersion = 1;

struct ScanArgs {
  int64_t batch, dim, length, dstate;
  int64_t groups_b, groups_c;  // channel d reads group d / (dim / groups)
  int64_t chunk;               // checkpoint interval T
  int64_t n_threads;
  int64_t softplus, has_D, has_z, has_bias, has_h0, has_lengths, has_dhT;
  int64_t sb_b, sb_g, sb_l, sc_b, sc_g, sc_l;            // B, C strides
  int64_t gb_t, gb_b, gb_g, gb_l, gc_t, gc_b, gc_g, gc_l;  // dB, dC strides
  const void *u, *delta, *A, *B, *C, *D, *z, *bias, *h0;
  const int64_t* lengths;
  void *y, *h_final, *ckpt;
  const void *dy, *dhT;
  void *du, *ddelta, *dz, *dA_part, *dB, *dC, *dD_part, *dbias_part, *dh0;
};

// Elementwise functions written so that compilers vectorise them (no libm call in a loop).
//
// exp(x) = 2^k exp(r), k = round(x / ln 2), |r| <= ln2 / 2, exp(r) by its Taylor polynomial of
// degree 6 (relative error < 2e-7, about 1 ulp). Inputs below -87 give exp(-87) ~ 1.6e-38
// instead of a denormal; above 88 they saturate at exp(88). The reduction x - k ln2 is done in
// two parts (Cody-Waite) with fused multiply-adds where the target has them, so that the build
// flag -fassociative-math (used for the sums over the state) cannot merge the two parts.
inline float fma_or_plain(float a, float b, float c) {
#if defined(__FMA__) || defined(__aarch64__) || defined(__ARM_FEATURE_FMA)
  return __builtin_fmaf(a, b, c);
#else
  return a * b + c;
#endif
}

inline float exp_fast(float x) {
  x = std::min(std::max(x, -87.0f), 88.0f);
  const float k = std::floor(x * 1.44269504088896341f + 0.5f);
  float r = fma_or_plain(-k, 0.693145751953125f, x);  // ln 2, high part (exact in float)
  r = fma_or_plain(-k, 1.42860682030941723e-6f, r);   // ln 2, low part
  float p = 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(k) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

// log1p(t) for t in [0, 1]: log(1 + t) = 2 atanh(s), s = t / (2 + t) in [0, 1/3], by the odd
// series of atanh to s^15 (relative error < 1e-8; exact as t -> 0).
inline float log1p_unit(float t) {
  const float s = t / (2.0f + t), q = s * s;
  float p = 1.0f / 15.0f;
  p = p * q + 1.0f / 13.0f;
  p = p * q + 1.0f / 11.0f;
  p = p * q + 1.0f / 9.0f;
  p = p * q + 1.0f / 7.0f;
  p = p * q + 1.0f / 5.0f;
  p = p * q + 1.0f / 3.0f;
  p = p * q + 1.0f;
  return 2.0f * s * p;
}

inline double exp_fast(double x) { return std::exp(x); }
inline double log1p_unit(double t) { return std::log1p(t); }

// softplus as torch computes it (x above the threshold 20 passes through), its derivative
// (the sigmoid), and silu; all through t = exp(-|x|) in (0, 1], which cannot overflow.
template <typename T>
inline T softplus(T x) {
  const T t = exp_fast(-std::abs(x));
  return x > T(20) ? x : std::max(x, T(0)) + log1p_unit(t);
}
template <typename T>
inline T sigmoid(T x) {
  const T t = exp_fast(-std::abs(x));
  return (x >= T(0) ? T(1) : t) / (T(1) + t);
}

// NS > 0: the state size is a compile-time constant (fully vectorised); NS == 0: any size.
template <typename T, int NS>
struct Scan {
  const ScanArgs& a;
  const int64_t N;
  explicit Scan(const ScanArgs& args) : a(args), N(NS > 0 ? NS : args.dstate) {}

  int64_t row_length(int64_t b) const { return a.has_lengths ? a.lengths[b] : a.length; }
  int64_t n_chunks() const { return (a.length + a.chunk - 1) / a.chunk; }

  // Per-thread scratch: the state, and per chunk the time steps, states and decays.
  struct Scratch {
    std::vector<T> h, dh, dA, dt, dtu, sig, g, ysum, sum_b, sum_a, hs, decay;
    Scratch(int64_t chunk, int64_t n)
        : h(n), dh(n), dA(n), dt(chunk), dtu(chunk), sig(chunk), g(chunk), ysum(chunk), sum_b(chunk),
          sum_a(chunk), hs((chunk + 1) * n), decay(chunk * n) {}
  };

  // Δ = softplus(delta + bias) (or delta + bias) and Δ·u for the steps [l0, l0 + steps);
  // with `sig`, also dΔ/d(delta) (the sigmoid, or 1).
  void time_steps(const T* SS_RESTRICT delta, const T* SS_RESTRICT u, T bias, int64_t steps,
                  T* SS_RESTRICT dt, T* SS_RESTRICT dtu, T* SS_RESTRICT sig) const {
    if (a.softplus) {
      SS_SIMD for (int64_t i = 0; i < steps; ++i) {
        const T raw = delta[i] + bias;
        dt[i] = softplus(raw);
        dtu[i] = dt[i] * u[i];
      }
      if (sig) {
        SS_SIMD for (int64_t i = 0; i < steps; ++i) {
          const T raw = delta[i] + bias;
          sig[i] = raw > T(20) ? T(1) : sigmoid(raw);
        }
      }
    } else {
      SS_SIMD for (int64_t i = 0; i < steps; ++i) {
        dt[i] = delta[i] + bias;
        dtu[i] = dt[i] * u[i];
        if (sig) sig[i] = T(1);
      }
    }
  }

  void forward(int64_t task, Scratch& s) const {
    const int64_t n_state = NS > 0 ? NS : N;
    const int64_t L = a.length, Dm = a.dim;
    const int64_t b = task / Dm, d = task % Dm;
    const int64_t Lb = row_length(b);
    const T* SS_RESTRICT u = static_cast<const T*>(a.u) + task * L;
    const T* SS_RESTRICT delta = static_cast<const T*>(a.delta) + task * L;
    const T* SS_RESTRICT z = a.has_z ? static_cast<const T*>(a.z) + task * L : nullptr;
    const T* SS_RESTRICT A = static_cast<const T*>(a.A) + d * n_state;
    const T* SS_RESTRICT Bp = static_cast<const T*>(a.B) + b * a.sb_b + d / (Dm / a.groups_b) * a.sb_g;
    const T* SS_RESTRICT Cp = static_cast<const T*>(a.C) + b * a.sc_b + d / (Dm / a.groups_c) * a.sc_g;
    T* SS_RESTRICT y = static_cast<T*>(a.y) + task * L;
    T* SS_RESTRICT ckpt = static_cast<T*>(a.ckpt) + task * n_chunks() * n_state;
    const T bias = a.has_bias ? static_cast<const T*>(a.bias)[d] : T(0);
    const T Dd = a.has_D ? static_cast<const T*>(a.D)[d] : T(0);
    T* SS_RESTRICT dt = s.dt.data();
    T* SS_RESTRICT dtu = s.dtu.data();
    T* SS_RESTRICT ysum = s.ysum.data();

    T h[NS > 0 ? NS : 1];
    T* SS_RESTRICT hp = NS > 0 ? h : s.h.data();
    const T* h0 = a.has_h0 ? static_cast<const T*>(a.h0) + task * n_state : nullptr;
    SS_SIMD for (int64_t n = 0; n < n_state; ++n) hp[n] = h0 ? h0[n] : T(0);

    for (int64_t l0 = 0; l0 < Lb; l0 += a.chunk) {
      const int64_t steps = std::min(a.chunk, Lb - l0);
      std::memcpy(ckpt + (l0 / a.chunk) * n_state, hp, n_state * sizeof(T));
      time_steps(delta + l0, u + l0, bias, steps, dt, dtu, nullptr);
      for (int64_t i = 0; i < steps; ++i) {
        const T dti = dt[i], dtui = dtu[i];
        const T* SS_RESTRICT Bl = Bp + (l0 + i) * a.sb_l;
        const T* SS_RESTRICT Cl = Cp + (l0 + i) * a.sc_l;
        T acc = T(0);
        SS_SIMD_SUM(acc)
        for (int64_t n = 0; n < n_state; ++n) {
          const T hn = exp_fast(dti * A[n]) * hp[n] + dtui * Bl[n];
          hp[n] = hn;
          acc += hn * Cl[n];
        }
        ysum[i] = acc;
      }
      if (z) {
        SS_SIMD for (int64_t i = 0; i < steps; ++i) {
          const T zz = z[l0 + i];
          y[l0 + i] = (ysum[i] + Dd * u[l0 + i]) * zz * sigmoid(zz);
        }
      } else {
        SS_SIMD for (int64_t i = 0; i < steps; ++i) y[l0 + i] = ysum[i] + Dd * u[l0 + i];
      }
    }
    for (int64_t l = Lb; l < L; ++l) y[l] = T(0);
    std::memcpy(static_cast<T*>(a.h_final) + task * n_state, hp, n_state * sizeof(T));
  }

  void backward(int64_t task, int64_t thread, Scratch& s) const {
    const int64_t n_state = NS > 0 ? NS : N;
    const int64_t L = a.length, Dm = a.dim;
    const int64_t b = task / Dm, d = task % Dm;
    const int64_t Lb = row_length(b);
    const int64_t gb = d / (Dm / a.groups_b), gc = d / (Dm / a.groups_c);
    const T* SS_RESTRICT u = static_cast<const T*>(a.u) + task * L;
    const T* SS_RESTRICT delta = static_cast<const T*>(a.delta) + task * L;
    const T* SS_RESTRICT z = a.has_z ? static_cast<const T*>(a.z) + task * L : nullptr;
    const T* SS_RESTRICT A = static_cast<const T*>(a.A) + d * n_state;
    const T* SS_RESTRICT Bp = static_cast<const T*>(a.B) + b * a.sb_b + gb * a.sb_g;
    const T* SS_RESTRICT Cp = static_cast<const T*>(a.C) + b * a.sc_b + gc * a.sc_g;
    const T* SS_RESTRICT ckpt = static_cast<const T*>(a.ckpt) + task * n_chunks() * n_state;
    const T* SS_RESTRICT dy = static_cast<const T*>(a.dy) + task * L;
    T* SS_RESTRICT du = static_cast<T*>(a.du) + task * L;
    T* SS_RESTRICT ddelta = static_cast<T*>(a.ddelta) + task * L;
    T* SS_RESTRICT dz = a.has_z ? static_cast<T*>(a.dz) + task * L : nullptr;
    T* SS_RESTRICT dBp = static_cast<T*>(a.dB) + thread * a.gb_t + b * a.gb_b + gb * a.gb_g;
    T* SS_RESTRICT dCp = static_cast<T*>(a.dC) + thread * a.gc_t + b * a.gc_b + gc * a.gc_g;
    const T bias = a.has_bias ? static_cast<const T*>(a.bias)[d] : T(0);
    const T Dd = a.has_D ? static_cast<const T*>(a.D)[d] : T(0);
    T* SS_RESTRICT dt = s.dt.data();
    T* SS_RESTRICT dtu = s.dtu.data();
    T* SS_RESTRICT sig = s.sig.data();
    T* SS_RESTRICT g = s.g.data();
    T* SS_RESTRICT ysum = s.ysum.data();
    T* SS_RESTRICT sum_b = s.sum_b.data();
    T* SS_RESTRICT sum_a = s.sum_a.data();
    T* SS_RESTRICT hs = s.hs.data();
    T* SS_RESTRICT decay = s.decay.data();

    T dh_loc[NS > 0 ? NS : 1], dA_loc[NS > 0 ? NS : 1];
    T* SS_RESTRICT dh = NS > 0 ? dh_loc : s.dh.data();
    T* SS_RESTRICT dA = NS > 0 ? dA_loc : s.dA.data();
    const T* dhT = a.has_dhT ? static_cast<const T*>(a.dhT) + task * n_state : nullptr;
    SS_SIMD for (int64_t n = 0; n < n_state; ++n) {
      dh[n] = dhT ? dhT[n] : T(0);
      dA[n] = T(0);
    }
    T dD = T(0), dbias = T(0);

    for (int64_t l = Lb; l < L; ++l) {
      du[l] = T(0);
      ddelta[l] = T(0);
      if (dz) dz[l] = T(0);
    }
    const int64_t chunks_b = (Lb + a.chunk - 1) / a.chunk;
    for (int64_t c = chunks_b - 1; c >= 0; --c) {
      const int64_t l0 = c * a.chunk, steps = std::min(a.chunk, Lb - l0);
      time_steps(delta + l0, u + l0, bias, steps, dt, dtu, sig);
      // recompute the states of this chunk from its checkpoint (and the output before the gate)
      std::memcpy(hs, ckpt + c * n_state, n_state * sizeof(T));
      for (int64_t i = 0; i < steps; ++i) {
        const T dti = dt[i], dtui = dtu[i];
        const T* SS_RESTRICT Bl = Bp + (l0 + i) * a.sb_l;
        const T* SS_RESTRICT Cl = Cp + (l0 + i) * a.sc_l;
        const T* SS_RESTRICT hprev = hs + i * n_state;
        T* SS_RESTRICT hnext = hs + (i + 1) * n_state;
        T* SS_RESTRICT dec = decay + i * n_state;
        if (z) {
          T acc = T(0);
          SS_SIMD_SUM(acc)
          for (int64_t n = 0; n < n_state; ++n) {
            const T e = exp_fast(dti * A[n]);
            dec[n] = e;
            hnext[n] = e * hprev[n] + dtui * Bl[n];
            acc += hnext[n] * Cl[n];
          }
          ysum[i] = acc;
        } else {
          SS_SIMD for (int64_t n = 0; n < n_state; ++n) {
            const T e = exp_fast(dti * A[n]);
            dec[n] = e;
            hnext[n] = e * hprev[n] + dtui * Bl[n];
          }
        }
      }
      // gradient at the output before the gate; dz and dD
      if (z) {
        SS_SIMD for (int64_t i = 0; i < steps; ++i) {
          const T zz = z[l0 + i], sz = sigmoid(zz), gi = dy[l0 + i];
          dz[l0 + i] = gi * (ysum[i] + Dd * u[l0 + i]) * sz * (T(1) + zz * (T(1) - sz));
          g[i] = gi * zz * sz;
        }
      } else {
        SS_SIMD for (int64_t i = 0; i < steps; ++i) g[i] = dy[l0 + i];
      }
      // adjoint recurrence over the chunk, last step first
      for (int64_t i = steps - 1; i >= 0; --i) {
        const int64_t l = l0 + i;
        const T gi = g[i], dti = dt[i], dtui = dtu[i];
        const T* SS_RESTRICT Bl = Bp + l * a.sb_l;
        const T* SS_RESTRICT Cl = Cp + l * a.sc_l;
        T* SS_RESTRICT dBl = dBp + l * a.gb_l;
        T* SS_RESTRICT dCl = dCp + l * a.gc_l;
        const T* SS_RESTRICT hcur = hs + (i + 1) * n_state;
        const T* SS_RESTRICT hprev = hs + i * n_state;
        const T* SS_RESTRICT dec = decay + i * n_state;
        T sb = T(0), sa = T(0);
        SS_SIMD_SUM(sb, sa)
        for (int64_t n = 0; n < n_state; ++n) {
          dCl[n] += gi * hcur[n];
          const T dhn = dh[n] + gi * Cl[n];
          dBl[n] += dhn * dtui;
          sb += dhn * Bl[n];
          const T w = dhn * hprev[n] * dec[n];  // d loss / d (Δ A[n])
          sa += w * A[n];
          dA[n] += w * dti;
          dh[n] = dhn * dec[n];
        }
        sum_b[i] = sb;
        sum_a[i] = sa;
      }
      // gradients of u and delta; sums for D and the bias
      T dD_c = T(0), dbias_c = T(0);
      SS_SIMD_SUM(dD_c, dbias_c)
      for (int64_t i = 0; i < steps; ++i) {
        const T uu = u[l0 + i];
        du[l0 + i] = g[i] * Dd + sum_b[i] * dt[i];
        const T ddt = (sum_b[i] * uu + sum_a[i]) * sig[i];
        ddelta[l0 + i] = ddt;
        dD_c += g[i] * uu;
        dbias_c += ddt;
      }
      dD += dD_c;
      dbias += dbias_c;
    }
    const int64_t o = task * n_state;
    std::memcpy(static_cast<T*>(a.dh0) + o, dh, n_state * sizeof(T));
    std::memcpy(static_cast<T*>(a.dA_part) + o, dA, n_state * sizeof(T));
    static_cast<T*>(a.dD_part)[task] = dD;
    static_cast<T*>(a.dbias_part)[task] = dbias;
  }
};

template <typename T, int NS>
void run_forward(const ScanArgs& a) {
  const Scan<T, NS> scan(a);
  parallel_ranges(a.batch * a.dim, a.n_threads, [&](int64_t begin, int64_t end, int64_t) {
    typename Scan<T, NS>::Scratch scratch(a.chunk, scan.N);
    for (int64_t task = begin; task < end; ++task) scan.forward(task, scratch);
  });
}

template <typename T, int NS>
void run_backward(const ScanArgs& a) {
  const Scan<T, NS> scan(a);
  parallel_ranges(a.batch * a.dim, a.n_threads, [&](int64_t begin, int64_t end, int64_t thread) {
    typename Scan<T, NS>::Scratch scratch(a.chunk, scan.N);
    for (int64_t task = begin; task < end; ++task) scan.backward(task, thread, scratch);
  });
}

template <typename T, bool Forward>
int dispatch(const ScanArgs* a) {
  if (a == nullptr || a->dstate < 1 || a->chunk < 1 || a->batch < 0 || a->dim < 1) return 1;
  switch (a->dstate) {
#define SS_CASE(n)                                               \
  case n:                                                        \
    Forward ? run_forward<T, n>(*a) : run_backward<T, n>(*a); \
    return 0;
    SS_CASE(1)
    SS_CASE(2)
    SS_CASE(4)
    SS_CASE(8)
    SS_CASE(16)
    SS_CASE(32)
    SS_CASE(64)
#undef SS_CASE
    default:
      Forward ? run_forward<T, 0>(*a) : run_backward<T, 0>(*a);
      return 0;
  }
}

}  // namespace

SS_EXPORT int ss_abi_version() { return kAbiVersion; }
SS_EXPORT int64_t ss_args_size() { return static_cast<int64_t>(sizeof(ScanArgs)); }
SS_EXPORT int ss_forward_f32(const ScanArgs* a) { return dispatch<float, true>(a); }
SS_EXPORT int ss_forward_f64(const ScanArgs* a) { return dispatch<double, true>(a); }
SS_EXPORT int ss_backward_f32(const ScanArgs* a) { return dispatch<float, false>(a); }
SS_EXPORT int ss_backward_f64(const ScanArgs* a) { return dispatch<double, false>(a); }
