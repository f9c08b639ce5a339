// One recurrent step of a stack of Mamba (S6) backbones, with SeRpEnt's causal cell aggregation
// in front of the rate branches: the "cpu" fast path of serpent_ssm.ops.mamba_step
// (ops/mamba_step_cpu.py lays the inputs out; the plain reference is ops.mamba_step.cell_step).
//
// Built into the same library as selective_scan_cpu.cpp (ops/scan_cpu.py compiles both), with
// the same flags. float32 only; every array contiguous:
//
//   x                         (B, D)        the element
//   t_old, t_new              (R, B) f64    each rate branch's running time before and after it
//   acc, acc_new              (R, B, D)     the open cell's pooled input
//   held, held_new            (R, B, D)     the output of the last grid point
//   conv, conv_new            (G, B, E, K-1) G = R + F backbones (F = 1 with the full branch)
//   ssm, ssm_new              (G, B, E, N)
//   out                       (G, B, D)     each backbone's output for this element
//   weights, one set per backbone (stacked = 1) or one shared set (stacked = 0), PyTorch layouts:
//     w_in (2E, D), b_in (2E) | w_conv (E, K), b_conv (E) | w_x (r + 2N, E) | w_dt (E, r),
//     b_dt (E) | a (E, N) = -exp(A_log) | d_skip (E) | w_out (D, E), b_out (D)
//   w_cell (R, D, D), b_cell (R, D): the cell projection of each rate branch (optional)
//
// Rate branch g (Δ <= 1: at most one grid point per element): cell floor(t_old) + 1 closes when
// floor(t_new) > floor(t_old); the element's share of it joins the open cell's input, the closed
// cell (projected) is the backbone's input, and the rest of the element opens the next cell.
// Only the rows that closed a cell step their backbone; the others keep its state and their held
// output. The full branch steps on the element itself. out = the held output ("hold") or the
// new output where a cell closed and 0 elsewhere ("scatter"); the full branch's own output.
// A NaN time (a poisoned row) closes nothing.
//
// ms_serpent_step_f32 is a causal SeRpEnt mixer's whole step (SeRpEnt.step, interval_source
// "score"): the scores s_j = w_score[j]·x + b_score[j] (one slot, or one per rate branch), the
// intervals (offset + scale·σ(s) for bounds "ours"/"paper"/"fixed", or the running mean of
// e^s for "mean", with its log-sum and count per slot and row), the new times t_new = t_old + Δ,
// a row with a non-finite input or time poisoned (its times NaN, its output NaN), the cell step
// above, then the output map (dense: w_mix (D, G·D) over the branch outputs in order; gates:
// Σ_g w_mix[g] ⊙ out_g, w_mix (G, D)) plus b_mix, and the optional gate ⊙ 2σ(w_gate x + b_gate).

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(_MSC_VER)
#define MS_EXPORT extern "C" __declspec(dllexport)
#else
#define MS_EXPORT extern "C" __attribute__((visibility("default")))
#endif

#define MS_PRAGMA(...) _Pragma(#__VA_ARGS__)
#define MS_SIMD_SUM(...) MS_PRAGMA(omp simd reduction(+ : __VA_ARGS__))

namespace {

constexpr int kStepAbiVersion = 3;

struct CellStepArgs {
  int64_t batch, d_model, d_inner, d_state, d_conv, dt_rank, rates, full;
  int64_t stacked, has_in_bias, has_conv_bias, has_out_bias, has_cell_proj, restore_hold;
  const float* x;
  const double *t_old, *t_new;
  const float *acc, *held, *conv, *ssm;
  const float *w_in, *b_in, *w_conv, *b_conv, *w_x, *w_dt, *b_dt, *a, *d_skip, *w_out, *b_out;
  const float *w_cell, *b_cell;
  float *out, *acc_new, *held_new, *conv_new, *ssm_new;
  // ms_serpent_step_f32 only
  int64_t score_slots, bounds_mean, mix_gates, has_gate;
  const float *w_score, *b_score;     // (slots, D), (slots)
  const float *offset, *scale;        // (R): Δ = offset + scale·σ(s) (not "mean")
  const double* rate_values;          // (R) ("mean")
  const double *log_sum, *count;      // (slots, B) ("mean")
  double *log_sum_new, *count_new;    // (slots, B) ("mean")
  double* t_out;                      // (R, B): the new times (the cell step reads them)
  const float *w_mix, *b_mix;         // dense (D, G·D) | gates (G, D); (D)
  const float *w_gate, *b_gate;       // (D, D), (D)
  float* y;                           // (B, D)
};

inline float silu(float v) { return v / (1.0f + std::exp(-v)); }

inline float softplus(float v) {  // torch.nn.functional.softplus (beta 1, threshold 20)
  return v > 20.0f ? v : std::log1p(std::exp(v));
}

// y (rows) = W (rows, cols) v (cols) [+ bias]
inline void matvec(const float* w, const float* bias, const float* v, int64_t rows, int64_t cols,
                   float* y) {
  for (int64_t i = 0; i < rows; ++i) {
    const float* wi = w + i * cols;
    float s = 0.0f;
    MS_SIMD_SUM(s)
    for (int64_t j = 0; j < cols; ++j) s += wi[j] * v[j];
    y[i] = bias ? s + bias[i] : s;
  }
}

struct Sizes {
  int64_t D, E, N, K, r;
};

// Weights of backbone s: pointers into the (stacked or shared) arrays.
struct Weights {
  const float *w_in, *b_in, *w_conv, *b_conv, *w_x, *w_dt, *b_dt, *a, *d_skip, *w_out, *b_out;
};

Weights weights_of(const CellStepArgs& p, const Sizes& z, int64_t g) {
  const int64_t s = p.stacked ? g : 0;
  const int64_t E = z.E, D = z.D, N = z.N;
  Weights w;
  w.w_in = p.w_in + s * 2 * E * D;
  w.b_in = p.has_in_bias ? p.b_in + s * 2 * E : nullptr;
  w.w_conv = p.w_conv + s * E * z.K;
  w.b_conv = p.has_conv_bias ? p.b_conv + s * E : nullptr;
  w.w_x = p.w_x + s * (z.r + 2 * N) * E;
  w.w_dt = p.w_dt + s * E * z.r;
  w.b_dt = p.b_dt + s * E;
  w.a = p.a + s * E * N;
  w.d_skip = p.d_skip + s * E;
  w.w_out = p.w_out + s * D * E;
  w.b_out = p.has_out_bias ? p.b_out + s * D : nullptr;
  return w;
}

// One Mamba step of one row: input u (D) and states conv (E, K-1), ssm (E, N) -> y (D) and the
// new states (which may not alias the old ones). work: 4E + r + 2N floats.
void mamba_row_step(const Weights& w, const Sizes& z, const float* u, const float* conv,
                    const float* ssm, float* y, float* conv_new, float* ssm_new, float* work) {
  const int64_t E = z.E, N = z.N, K = z.K, r = z.r;
  float* xz = work;          // 2E: the input projection (x, then the gate z)
  float* xc = work + 2 * E;  // E: the convolution's output after SiLU
  float* dbl = xc + E;       // r + 2N: dt (low rank), B, C
  float* g = dbl + r + 2 * N;  // E: the gated scan output
  matvec(w.w_in, w.b_in, u, 2 * E, z.D, xz);
  for (int64_t e = 0; e < E; ++e) {  // causal depthwise convolution over the last K inputs
    const float* ce = conv + e * (K - 1);
    const float* we = w.w_conv + e * K;
    float s = 0.0f;
    for (int64_t k = 0; k < K - 1; ++k) s += ce[k] * we[k];
    s += xz[e] * we[K - 1];
    if (w.b_conv) s += w.b_conv[e];
    xc[e] = silu(s);
    float* cn = conv_new + e * (K - 1);
    for (int64_t k = 0; k + 1 < K - 1; ++k) cn[k] = ce[k + 1];
    if (K > 1) cn[K - 2] = xz[e];
  }
  matvec(w.w_x, nullptr, xc, r + 2 * N, E, dbl);
  const float* bv = dbl + r;
  const float* cv = dbl + r + N;
  for (int64_t e = 0; e < E; ++e) {
    const float* wd = w.w_dt + e * r;
    float s = 0.0f;
    for (int64_t j = 0; j < r; ++j) s += wd[j] * dbl[j];
    const float dt = softplus(s + w.b_dt[e]);
    const float dtx = dt * xc[e];
    const float* ae = w.a + e * N;
    const float* he = ssm + e * N;
    float* hn = ssm_new + e * N;
    float acc = 0.0f;
    MS_SIMD_SUM(acc)
    for (int64_t n = 0; n < N; ++n) {
      const float h = std::exp(dt * ae[n]) * he[n] + dtx * bv[n];
      hn[n] = h;
      acc += h * cv[n];
    }
    g[e] = (acc + w.d_skip[e] * xc[e]) * silu(xz[E + e]);
  }
  matvec(w.w_out, w.b_out, g, z.D, E, y);
}

// The rows (backbone g, batch row b) with index in [first, last): each is independent.
void cell_rows(const CellStepArgs& p, const Sizes& z, int64_t first, int64_t last) {
  const int64_t B = p.batch, D = z.D, E = z.E, N = z.N, K = z.K, R = p.rates;
  std::vector<float> work(4 * E + z.r + 2 * N), pooled(D), xk(D);
  for (int64_t gb = first; gb < last; ++gb) {
    const int64_t g = gb / B, b = gb % B;
    const Weights w = weights_of(p, z, g);
    const float* xb = p.x + b * D;
    const float* conv = p.conv + gb * E * (K - 1);
    const float* ssm = p.ssm + gb * E * N;
    float* conv_new = p.conv_new + gb * E * (K - 1);
    float* ssm_new = p.ssm_new + gb * E * N;
    float* out = p.out + gb * D;
    if (g == R) {  // the full branch: every element
      mamba_row_step(w, z, xb, conv, ssm, out, conv_new, ssm_new, work.data());
      continue;
    }
    const double t0 = p.t_old[gb], t1 = p.t_new[gb];
    const double k0 = std::floor(t0), k1 = std::floor(t1);
    const bool crossed = k1 > k0;  // false for NaN
    const float share = static_cast<float>(std::fmin(t1, k0 + 1.0) - t0);
    const float rest = static_cast<float>(t1 - std::fmax(t0, k1));
    const float* acc = p.acc + gb * D;
    float* acc_new = p.acc_new + gb * D;
    for (int64_t d = 0; d < D; ++d) {
      pooled[d] = share * xb[d] + acc[d];
      acc_new[d] = crossed ? rest * xb[d] : pooled[d];
    }
    const float* held = p.held + gb * D;
    float* held_new = p.held_new + gb * D;
    if (!crossed) {
      std::memcpy(conv_new, conv, sizeof(float) * E * (K - 1));
      std::memcpy(ssm_new, ssm, sizeof(float) * E * N);
      std::memcpy(held_new, held, sizeof(float) * D);
      if (p.restore_hold) {
        std::memcpy(out, held, sizeof(float) * D);
      } else {
        std::memset(out, 0, sizeof(float) * D);
      }
      continue;
    }
    const float* u = pooled.data();
    if (p.has_cell_proj) {
      matvec(p.w_cell + g * D * D, p.b_cell + g * D, pooled.data(), D, D, xk.data());
      u = xk.data();
    }
    mamba_row_step(w, z, u, conv, ssm, held_new, conv_new, ssm_new, work.data());
    std::memcpy(out, held_new, sizeof(float) * D);
  }
}

// One thread: with PyTorch's own threads waiting between operations, splitting the rows over
// more threads was slower at batch 8 (measured), and at batch 1 there is too little work.
int cell_step(const CellStepArgs& p) {
  const Sizes z{p.d_model, p.d_inner, p.d_state, p.d_conv, p.dt_rank};
  const int64_t B = p.batch, R = p.rates, G = R + p.full;
  if (B < 0 || z.D <= 0 || z.E <= 0 || z.N <= 0 || z.K <= 0 || z.r <= 0 || R < 0 || G <= 0) return 1;
  cell_rows(p, z, 0, G * B);
  return 0;
}

inline double log_add_exp(double a, double b) {  // torch.logaddexp
  if (std::isinf(a) && a == b) return a;
  const double m = std::fmax(a, b);
  if (std::isinf(m) && m > 0) return m;
  if (std::isnan(a) || std::isnan(b)) return std::nan("");
  return m + std::log1p(std::exp(-std::fabs(a - b)));
}

inline float sigmoid(float v) { return 1.0f / (1.0f + std::exp(-v)); }

int serpent_step(CellStepArgs p) {
  const int64_t B = p.batch, D = p.d_model, R = p.rates, S = p.score_slots;
  const int64_t G = R + p.full;
  if (B < 0 || D <= 0 || R <= 0 || (S != 1 && S != R)) return 1;
  std::vector<float> s(S);
  std::vector<char> bad(B);
  for (int64_t b = 0; b < B; ++b) {  // scores, intervals, times, poisoned rows
    const float* xb = p.x + b * D;
    bool finite = true;
    for (int64_t d = 0; d < D; ++d) finite = finite && std::isfinite(xb[d]);
    for (int64_t j = 0; j < S; ++j) {
      const float* w = p.w_score + j * D;
      float v = 0.0f;
      for (int64_t d = 0; d < D; ++d) v += w[d] * xb[d];
      s[j] = v + p.b_score[j];
      if (p.bounds_mean) {
        const int64_t jb = j * B + b;
        p.count_new[jb] = p.count[jb] + 1.0;
        p.log_sum_new[jb] = log_add_exp(p.log_sum[jb], static_cast<double>(s[j]));
      }
    }
    for (int64_t i = 0; i < R; ++i) {
      const int64_t j = S == 1 ? 0 : i;
      float delta;
      if (p.bounds_mean) {
        const int64_t jb = j * B + b;
        const double mean_log = p.log_sum_new[jb] - std::log(p.count_new[jb]);
        const double r = p.rate_values[i];
        delta = static_cast<float>(std::fmin(r * std::exp(static_cast<double>(s[j]) - mean_log), 2.0 * r));
      } else {
        delta = p.offset[i] + p.scale[i] * sigmoid(s[j]);
      }
      const double t = p.t_old[i * B + b] + static_cast<double>(delta);
      p.t_out[i * B + b] = t;
      finite = finite && std::isfinite(t);
    }
    bad[b] = !finite;
    if (bad[b]) {
      for (int64_t i = 0; i < R; ++i) p.t_out[i * B + b] = std::nan("");
    }
  }
  p.t_new = p.t_out;
  const int status = cell_step(p);
  if (status != 0) return status;
  std::vector<float> cat(G * D), gate(D);
  for (int64_t b = 0; b < B; ++b) {  // the output map, the gate, poisoned rows
    float* yb = p.y + b * D;
    if (p.mix_gates) {
      for (int64_t d = 0; d < D; ++d) {
        float v = 0.0f;
        for (int64_t g = 0; g < G; ++g) v += p.w_mix[g * D + d] * p.out[(g * B + b) * D + d];
        yb[d] = v + p.b_mix[d];
      }
    } else {
      for (int64_t g = 0; g < G; ++g) std::memcpy(&cat[g * D], p.out + (g * B + b) * D, sizeof(float) * D);
      matvec(p.w_mix, p.b_mix, cat.data(), D, G * D, yb);
    }
    if (p.has_gate) {
      matvec(p.w_gate, p.b_gate, p.x + b * D, D, D, gate.data());
      for (int64_t d = 0; d < D; ++d) yb[d] *= 2.0f * sigmoid(gate[d]);
    }
    if (bad[b]) {
      for (int64_t d = 0; d < D; ++d) yb[d] = std::nanf("");
    }
  }
  return 0;
}

}  // namespace

MS_EXPORT int ms_abi_version() { return kStepAbiVersion; }
MS_EXPORT int64_t ms_args_size() { return static_cast<int64_t>(sizeof(CellStepArgs)); }
MS_EXPORT int ms_cell_step_f32(const CellStepArgs* args) { return cell_step(*args); }
MS_EXPORT int ms_serpent_step_f32(const CellStepArgs* args) { return serpent_step(*args); }
