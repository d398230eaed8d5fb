// The reference engine's elementwise work on the CPU, one pass over each row: RMSNorm fused with
// the residual add, rotary embedding in place on the fused QKV projection, SiLU-and-multiply.
// Built and loaded by cpu_ops.py; the contracts are those of triton_ops.py.
//
// Each op rounds where model.py's PyTorch code rounds, and gives the same bits as that code run
// with one torch thread (on x86; cpu_ops.py passes torch's vector widths):
//   - it is compiled with -ffp-contract=off: no product and sum fuse into one FMA where PyTorch
//     rounds the product first;
//   - the RMSNorm's sum of squares is PyTorch's cascade sum (ATen's SumKernel.cpp, the
//     contiguous inner reduction) step for step, at the width of torch's sum kernel (`lanes`);
//   - silu's exp is Sleef's expf_u10, which PyTorch's vectorized exp calls, and glibc's expf for
//     the elements PyTorch's loop leaves to its scalar tail (`vec_bytes` says which).
// bfloat16 is widened to float32, computed there, and rounded to bfloat16 where PyTorch rounds.
// Loops are plain, over a row's elements, for g++ -O3 to vectorize; at::parallel_for splits the
// tokens across torch's threads.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <type_traits>
#include <vector>

namespace {

constexpr int64_t kGrainElems = 16384;  // elements per parallel_for chunk: smaller steps stay on one thread
constexpr int64_t kMaxHalf = 512;       // head_dim / 2 at most (Llama heads are 64 to 256)

inline int64_t grain_rows(int64_t cols) { return std::max<int64_t>(1, kGrainElems / std::max<int64_t>(1, cols)); }

inline uint32_t bits_of(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  return u;
}
inline float float_of(uint32_t u) {
  float x;
  std::memcpy(&x, &u, 4);
  return x;
}

// Element access: S is the stored type, load widens to float32, store rounds to nearest even
// (c10::BFloat16's rounding, NaN kept a NaN). round() is the rounding PyTorch does between ops.
template <typename T>
struct Elem;

template <>
struct Elem<float> {
  using S = float;
  static float load(float x) { return x; }
  static float store(float x) { return x; }
  static float round(float x) { return x; }
};

template <>
struct Elem<at::BFloat16> {
  using S = uint16_t;
  static float load(uint16_t b) { return float_of(uint32_t(b) << 16); }
  static uint16_t store(float x) {
    const uint32_t u = bits_of(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;
    return uint16_t((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
  }
  static float round(float x) { return load(store(x)); }
};

template <typename T>
typename Elem<T>::S* ptr(const torch::Tensor& t) {
  return reinterpret_cast<typename Elem<T>::S*>(t.data_ptr<T>());
}

// -- PyTorch's float32 sum of a contiguous row -------------------------------------------------

// utils::CeilLog2
inline int64_t ceil_log2(int64_t x) { return x <= 2 ? 1 : 64 - __builtin_clzll(uint64_t(x - 1)); }

// acc[k][l] += h[k * L + l]^2 for the 4 items of L lanes at h
template <int L>
inline void add_squares(float (&acc)[4][L], const float* h) {
  for (int k = 0; k < 4; ++k)
    for (int l = 0; l < L; ++l) acc[k][l] += h[k * L + l] * h[k * L + l];
}

// multi_row_sum<.., nrows = 4>: items (i, k) at h + (4 i + k) L for i < size, summed over i in
// chunks of level_step, the chunk sums in chunks again, four levels deep.
template <int L>
inline void multi_row_sum(const float* h, int64_t size, float (&out)[4][L]) {
  constexpr int kLevels = 4;
  const int64_t level_power = std::max<int64_t>(4, ceil_log2(size) / kLevels);
  const int64_t level_step = int64_t(1) << level_power, level_mask = level_step - 1;
  float acc[kLevels][4][L] = {};
  int64_t i = 0;
  while (i + level_step <= size) {
    for (int64_t j = 0; j < level_step; ++j, ++i) add_squares<L>(acc[0], h + i * 4 * L);
    for (int j = 1; j < kLevels; ++j) {
      for (int k = 0; k < 4; ++k)
        for (int l = 0; l < L; ++l) {
          acc[j][k][l] += acc[j - 1][k][l];
          acc[j - 1][k][l] = 0.0f;
        }
      if ((i & (level_mask << (j * level_power))) != 0) break;
    }
  }
  for (; i < size; ++i) add_squares<L>(acc[0], h + i * 4 * L);
  for (int j = 1; j < kLevels; ++j)
    for (int k = 0; k < 4; ++k)
      for (int l = 0; l < L; ++l) acc[0][k][l] += acc[j][k][l];
  std::memcpy(out, acc[0], sizeof(out));
}

// row_sum: `size` items of L lanes as a (-1, 4) array, its 4 partial sums added in order
template <int L>
inline void row_sum(const float* h, int64_t size, float (&out)[L]) {
  const int64_t size_ilp = size / 4;
  float partial[4][L];
  multi_row_sum<L>(h, size_ilp, partial);
  for (int64_t i = size_ilp * 4; i < size; ++i)
    for (int l = 0; l < L; ++l) partial[0][l] += h[i * L + l] * h[i * L + l];
  for (int k = 1; k < 4; ++k)
    for (int l = 0; l < L; ++l) partial[0][l] += partial[k][l];
  std::memcpy(out, partial[0], sizeof(out));
}

// h.pow(2).sum(-1) for one row as cascade_sum computes it: vectors of L lanes, then the scalar
// tail, then the L lanes in order; rows shorter than a vector as L = 1
template <int L>
float sum_of_squares(const float* h, int64_t n) {
  if (n < L) {
    float s[1];
    row_sum<1>(h, n, s);
    return s[0];
  }
  const int64_t vecs = n / L;
  float lanes[L];
  row_sum<L>(h, vecs, lanes);
  float total = 0.0f;
  for (int64_t k = vecs * L; k < n; ++k) total += h[k] * h[k];
  for (int l = 0; l < L; ++l) total += lanes[l];
  return total;
}

float torch_sum_of_squares(const float* h, int64_t n, int64_t lanes) {
  switch (lanes) {
    case 16: return sum_of_squares<16>(h, n);
    case 8: return sum_of_squares<8>(h, n);
    case 4: return sum_of_squares<4>(h, n);
    default: return sum_of_squares<1>(h, n);
  }
}

// -- RMSNorm with the residual add -------------------------------------------------------------

template <typename T>
void add_rms_norm_rows(const torch::Tensor& x, const std::optional<torch::Tensor>& residual,
                       const torch::Tensor& weight, const torch::Tensor& out, const torch::Tensor& res_out,
                       double eps, int64_t lanes) {
  using E = Elem<T>;
  using S = typename E::S;
  const int64_t rows = x.size(0), n = x.size(1);
  const S* xp = ptr<T>(x);
  const S* rp = residual ? ptr<T>(*residual) : nullptr;
  const S* wp = ptr<T>(weight);
  S* op = ptr<T>(out);
  S* rop = residual ? ptr<T>(res_out) : nullptr;
  const int64_t sx = x.stride(0), sr = residual ? residual->stride(0) : 0, so = out.stride(0);
  const float eps_f = float(eps), n_f = float(n);  // PyTorch adds eps and divides by n in float32
  at::parallel_for(0, rows, grain_rows(n), [&](int64_t begin, int64_t end) {
    std::vector<float> buf(std::is_same_v<T, float> ? 0 : n);
    for (int64_t t = begin; t < end; ++t) {
      const S* xr = xp + t * sx;
      // h: the row PyTorch normalizes (x + residual, rounded to T), as float32
      const float* h;
      if constexpr (std::is_same_v<T, float>) {
        if (rp) {
          const float* rr = rp + t * sr;
          float* s = rop + t * so;
          for (int64_t j = 0; j < n; ++j) s[j] = xr[j] + rr[j];
          h = s;
        } else {
          h = xr;
        }
      } else {
        float* hb = buf.data();
        if (rp) {
          const S* rr = rp + t * sr;
          S* s = rop + t * so;
          for (int64_t j = 0; j < n; ++j) {
            s[j] = E::store(E::load(xr[j]) + E::load(rr[j]));
            hb[j] = E::load(s[j]);
          }
        } else {
          for (int64_t j = 0; j < n; ++j) hb[j] = E::load(xr[j]);
        }
        h = hb;
      }
      // h * rsqrt(mean(h^2) + eps), rounded to T, times the weight
      const float rstd = 1.0f / std::sqrt(torch_sum_of_squares(h, n, lanes) / n_f + eps_f);
      S* o = op + t * so;
      for (int64_t j = 0; j < n; ++j) o[j] = E::store(E::load(wp[j]) * E::round(h[j] * rstd));
    }
  });
}

py::object add_rms_norm(const torch::Tensor& x_in, const std::optional<torch::Tensor>& residual_in,
                        const torch::Tensor& weight_in, double eps, int64_t lanes) {
  TORCH_CHECK(x_in.dim() == 2 && x_in.device().is_cpu(), "add_rms_norm: x must be [tokens, hidden] on the CPU");
  const auto dtype = x_in.scalar_type();
  TORCH_CHECK(dtype == torch::kFloat32 || dtype == torch::kBFloat16, "add_rms_norm: float32 or bfloat16");
  TORCH_CHECK(weight_in.dim() == 1 && weight_in.size(0) == x_in.size(1) && weight_in.scalar_type() == dtype,
              "add_rms_norm: weight must be [hidden] of x's dtype");
  const torch::Tensor x = x_in.stride(1) == 1 ? x_in : x_in.contiguous();
  const torch::Tensor weight = weight_in.contiguous();
  std::optional<torch::Tensor> residual;
  if (residual_in) {
    TORCH_CHECK(residual_in->sizes() == x_in.sizes() && residual_in->scalar_type() == dtype,
                "add_rms_norm: residual must match x");
    residual = residual_in->stride(1) == 1 ? *residual_in : residual_in->contiguous();
  }
  const torch::Tensor out = torch::empty(x.sizes(), x.options());
  const torch::Tensor res_out = residual ? torch::empty(x.sizes(), x.options()) : out;
  if (dtype == torch::kFloat32) {
    add_rms_norm_rows<float>(x, residual, weight, out, res_out, eps, lanes);
  } else {
    add_rms_norm_rows<at::BFloat16>(x, residual, weight, out, res_out, eps, lanes);
  }
  if (!residual) return py::cast(out);
  return py::make_tuple(out, res_out);
}

// -- rotary embedding --------------------------------------------------------------------------

template <typename T>
void rotary_rows(const torch::Tensor& qkv, const int64_t* pos, const float* cos, const float* sin, int64_t table_stride,
                 int64_t num_heads, int64_t head_dim) {
  using E = Elem<T>;
  using S = typename E::S;
  const int64_t rows = qkv.size(0), stride = qkv.stride(0), half = head_dim / 2;
  S* base = ptr<T>(qkv);
  at::parallel_for(0, rows, grain_rows(num_heads * head_dim), [&](int64_t begin, int64_t end) {
    float c[kMaxHalf], s[kMaxHalf];
    for (int64_t t = begin; t < end; ++t) {
      // the tables are float32; PyTorch's code casts them to the model's dtype first
      const float* ct = cos + pos[t] * table_stride;
      const float* st = sin + pos[t] * table_stride;
      for (int64_t j = 0; j < half; ++j) {
        c[j] = E::round(ct[j]);
        s[j] = E::round(st[j]);
      }
      for (int64_t h = 0; h < num_heads; ++h) {
        S* x1 = base + t * stride + h * head_dim;
        S* x2 = x1 + half;
        // (x1, x2) -> (x1 c - x2 s, x2 c + x1 s), each product rounded as PyTorch's are
        for (int64_t j = 0; j < half; ++j) {
          const float a = E::load(x1[j]), b = E::load(x2[j]);
          x1[j] = E::store(E::round(a * c[j]) - E::round(b * s[j]));
          x2[j] = E::store(E::round(b * c[j]) + E::round(a * s[j]));
        }
      }
    }
  });
}

void rotary(const torch::Tensor& qkv, const torch::Tensor& positions, const torch::Tensor& cos,
            const torch::Tensor& sin, int64_t num_heads, int64_t head_dim) {
  TORCH_CHECK(qkv.dim() == 2 && qkv.device().is_cpu() && qkv.stride(1) == 1,
              "rotary: qkv must be [tokens, heads * head_dim] on the CPU, rows contiguous");
  TORCH_CHECK(head_dim % 2 == 0 && head_dim / 2 <= kMaxHalf && num_heads * head_dim <= qkv.size(1),
              "rotary: head_dim even, at most ", 2 * kMaxHalf, ", and num_heads * head_dim within a row");
  TORCH_CHECK(positions.dim() == 1 && positions.size(0) == qkv.size(0), "rotary: one position per token");
  TORCH_CHECK(cos.scalar_type() == torch::kFloat32 && sin.scalar_type() == torch::kFloat32 && cos.dim() == 2 &&
                  cos.sizes() == sin.sizes() && cos.size(1) == head_dim / 2,
              "rotary: cos and sin must be float32 [max_len, head_dim / 2]");
  const torch::Tensor pos = positions.to(torch::kInt64).contiguous();
  const torch::Tensor c = cos.contiguous(), s = sin.contiguous();
  const int64_t* p = pos.data_ptr<int64_t>();
  const int64_t max_len = c.size(0);
  for (int64_t t = 0; t < pos.size(0); ++t)
    TORCH_CHECK(p[t] >= 0 && p[t] < max_len, "rotary: position ", p[t], " outside the tables' ", max_len);
  if (qkv.scalar_type() == torch::kFloat32) {
    rotary_rows<float>(qkv, p, c.data_ptr<float>(), s.data_ptr<float>(), c.stride(0), num_heads, head_dim);
  } else {
    TORCH_CHECK(qkv.scalar_type() == torch::kBFloat16, "rotary: float32 or bfloat16");
    rotary_rows<at::BFloat16>(qkv, p, c.data_ptr<float>(), s.data_ptr<float>(), c.stride(0), num_heads, head_dim);
  }
}

// -- SiLU and multiply -------------------------------------------------------------------------

// Sleef's expf_u10 (xexpf) as PyTorch's Vectorized<float>::exp runs it, FMAs included:
// q = rint(d / ln 2), s = d - q ln 2 in two steps, a polynomial in s, then times 2^q in two
// steps. Sleef computes for inputs in [-104, 100] and answers 0 below, infinity above; clamping
// first keeps q where the rounding trick and the exponent bits below are exact.
inline float sleef_expf(float d) {
  const float dc = d < -104.0f ? -104.0f : (d > 100.0f ? 100.0f : d);
  const float magic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer, nearest even
  const float t = dc * 1.442695040888963407359924681001892137426645954152985934135449406931f + magic;
  const int32_t q = int32_t(bits_of(t)) - int32_t(bits_of(magic));
  const float qf = t - magic;
  float s = std::fma(qf, -0.693145751953125f, dc);
  s = std::fma(qf, -1.428606765330187045e-06f, s);
  float u = 0.000198527617612853646278381f;
  u = std::fma(u, s, 0.00139304355252534151077271f);
  u = std::fma(u, s, 0.00833336077630519866943359f);
  u = std::fma(u, s, 0.0416664853692054748535156f);
  u = std::fma(u, s, 0.166666671633720397949219f);
  u = std::fma(u, s, 0.5f);
  u = 1.0f + std::fma(s * s, u, s);
  const int32_t q1 = q >> 1;
  u = u * float_of(uint32_t(q1 + 0x7f) << 23) * float_of(uint32_t(q - q1 + 0x7f) << 23);
  u = d < -104.0f ? 0.0f : u;
  return d > 100.0f ? std::numeric_limits<float>::infinity() : u;
}

template <typename T>
void silu_and_mul_rows(const torch::Tensor& gate_up, const torch::Tensor& out, int64_t vec_bytes) {
  using E = Elem<T>;
  using S = typename E::S;
  const int64_t rows = out.size(0), n = out.size(1), sg = gate_up.stride(0), so = out.stride(0);
  // PyTorch's silu loop takes two vectors at a time and leaves the rest to its scalar code
  const int64_t step = 2 * vec_bytes / int64_t(sizeof(S)), n_vec = n / step * step;
  const S* gp = ptr<T>(gate_up);
  S* op = ptr<T>(out);
  at::parallel_for(0, rows, grain_rows(2 * n), [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const S* g = gp + t * sg;
      const S* u = g + n;
      S* o = op + t * so;
      for (int64_t j = 0; j < n_vec; ++j) {
        const float x = E::load(g[j]);
        o[j] = E::store(E::round(x / (1.0f + sleef_expf(-x))) * E::load(u[j]));
      }
      for (int64_t j = n_vec; j < n; ++j) {
        const float x = E::load(g[j]);
        o[j] = E::store(E::round(x / (1.0f + std::exp(-x))) * E::load(u[j]));
      }
    }
  });
}

torch::Tensor silu_and_mul(const torch::Tensor& gate_up_in, int64_t vec_bytes) {
  TORCH_CHECK(gate_up_in.dim() == 2 && gate_up_in.size(1) % 2 == 0 && gate_up_in.device().is_cpu(),
              "silu_and_mul: gate_up must be [tokens, 2 * inter] on the CPU");
  const torch::Tensor gate_up = gate_up_in.stride(1) == 1 ? gate_up_in : gate_up_in.contiguous();
  const torch::Tensor out = torch::empty({gate_up.size(0), gate_up.size(1) / 2}, gate_up.options());
  if (gate_up.scalar_type() == torch::kFloat32) {
    silu_and_mul_rows<float>(gate_up, out, vec_bytes);
  } else {
    TORCH_CHECK(gate_up.scalar_type() == torch::kBFloat16, "silu_and_mul: float32 or bfloat16");
    silu_and_mul_rows<at::BFloat16>(gate_up, out, vec_bytes);
  }
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("add_rms_norm", &add_rms_norm, "RMSNorm of x (+ residual): out, or (out, x + residual)", py::arg("x"),
        py::arg("residual"), py::arg("weight"), py::arg("eps"), py::arg("lanes"));
  m.def("rotary", &rotary, "rotary embedding of the first num_heads heads of each row, in place", py::arg("qkv"),
        py::arg("positions"), py::arg("cos"), py::arg("sin"), py::arg("num_heads"), py::arg("head_dim"));
  m.def("silu_and_mul", &silu_and_mul, "silu(gate) * up", py::arg("gate_up"), py::arg("vec_bytes"));
}
