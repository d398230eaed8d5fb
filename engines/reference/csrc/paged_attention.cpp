// Paged attention on the CPU, reading K and V through the block table in place (no gather).
// Same semantics as paged_attention_torch (attention.py): query k of a sequence with q_len new
// tokens sees keys [0, seq_len - q_len + k]. Built and loaded by cpu_attention.py.
//
// Work item: one sequence, one KV head, up to kRows (16 with AVX-512) rows of (new token,
// query head of the GQA group). Its rows are scored together against chunks of 32 keys, so
// each K/V row comes from memory once for all of them, and each row keeps a flash-attention
// style running max, sum and float32 accumulator. Two ways to score a chunk:
//   narrow (few rows): one dot product over head_dim per row and key, the vector lanes running
//     over head_dim (where head_dim is a multiple of kRows, kRows keys at once, their products
//     summed by a transposing reduction instead of a horizontal sum each: key_scores);
//   wide (more rows: prefills): the lanes run over the rows, a transposed copy of the
//     item's queries against each key, so no dot product ends in a horizontal sum and the
//     softmax bookkeeping is one vector operation for all rows. Where head_dim is 32, 64 or 128,
//     attend_wide serves these items, up to four vectors of rows each (64 rows with AVX-512): a
//     flash-attention tile in which each chunk's K and V rows, copied contiguous, serve every
//     row, with the operands held in registers (keep_in_register). Per layer, one thread, two
//     interleaved runs of `python -m tools.attention_bench` against attend() on the same items:
//     tiny model, a fresh 1,024-token prompt 2.09-2.23 -> 1.68-1.71 ms, 4 x 256 new tokens after
//     2,000 cached 8.5-9.1 -> 6.5-7.2 ms; Llama-8B shape 70-81 -> 50-52 and 312-318 -> 195-205 ms.
// Decodes in float32 (one new token, few rows) take a path of their own, attend_decode: a block
// of keys at a time in the lanes, every row's query and accumulator in registers, the next
// block prefetched; where a model has few heads (the tiny model: 4), one item is every head of
// a sequence, so each key's K and V rows of all KV heads are read as one contiguous run. In the
// engine's offline decode steps (64 sequences of ~290 tokens, tiny model, one interleaved
// comparison in one process) it took a layer's attention from 0.83 to 0.48 ms.
// Plain loops that g++ vectorizes, except where the lanes run over rows or keys: there a GCC
// vector type of one register (vrow), which g++ keeps in registers where it would keep an array
// in memory.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

namespace {

// Lanes of the wide vector type: one register. g++ splits a wider vector type into narrower
// registers badly (10x slower with AVX2 only).
#if defined(__AVX512F__)
constexpr int kRows = 16;
#elif defined(__AVX__)
constexpr int kRows = 8;
#else
constexpr int kRows = 4;
#endif
constexpr int kChunk = 32;  // keys per online-softmax step: their K and V rows stay in L1
// Wide items (attend_wide) of kNR vectors of rows, whose inner loops hold kAccs accumulators:
// half the vector registers (32 with AVX-512, 16 below), the rest for the operands.
#if defined(__AVX512F__)
constexpr int kNR = 4, kAccs = 16;
#else
constexpr int kNR = 1, kAccs = 8;
#endif

// Whether an item of `rows` rows is scored the wide way: the narrow way costs per row, the wide
// way the same for 1 to kRows. Measured crossovers (AVX-512): 8 rows, but 4 where head_dim <= 32,
// where the narrow way's per-row horizontal sums weigh most.
inline bool use_wide(int64_t rows, int64_t head_dim) { return rows >= std::min(kRows, head_dim <= 32 ? 4 : 8); }

constexpr float kInf = std::numeric_limits<float>::infinity();

typedef float vrow __attribute__((vector_size(kRows * 4)));  // one float per row of a work item
typedef int32_t vrow_i __attribute__((vector_size(kRows * 4)));

inline int32_t as_int(float x) {
  int32_t i;
  std::memcpy(&i, &x, 4);
  return i;
}
inline float as_float(int32_t i) {
  float x;
  std::memcpy(&x, &i, 4);
  return x;
}
inline vrow_i as_int(vrow x) { return (vrow_i)x; }
inline vrow as_float(vrow_i i) { return (vrow)i; }

// exp for x <= 0 (Cephes expf: x = n ln2 + r, a polynomial in r, 2^n from the exponent bits),
// for a float or a vrow. Relative error ~2e-7; unlike std::exp it vectorizes without -ffast-math.
template <typename V>
inline V exp_neg(V x) {
  const V lo = V{} + -87.0f;
  x = x < lo ? lo : x;  // also maps -inf to ~1e-38
  const V t = x * 1.44269504088896341f + 12582912.0f;  // + 1.5 * 2^23 rounds to an integer n
  const V n = t - 12582912.0f;
  const V r = x - n * 0.693359375f - n * -2.12194440e-4f;
  V p = r * 1.9875691500e-4f + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const V y = p * r * r + r + 1.0f;
  return y * as_float((as_int(t) - 0x4B400000 + 127) << 23);  // the low mantissa bits of t are n
}

struct Item {
  int64_t seq, kv_head, r0, r1;  // rows [r0, r1): row r is new token r / G, head r % G of the group
  int64_t cost;                  // the sequence's work, q_len x seq_len: the costliest go first
};

struct Args {
  int64_t H, KVH, G, D, block_size, bt_stride, q_tok_stride, q_head_stride;
  float scale;
  const int32_t* block_tables;
  const int32_t* seq_lens;
  const int32_t* query_start_loc;
};

// Scratch of one thread, reused across its items.
struct Scratch {
  std::vector<float> q, acc, s, m, l, kbuf, vbuf;
  std::vector<vrow> qt, acc_t, st;
  std::vector<const float*> kp, vp;  // this chunk's K and V rows
  explicit Scratch(int64_t D)
      : q(kRows * D), acc(kRows * D), s(kRows * kChunk), m(kRows), l(kRows), kbuf(kChunk * D), vbuf(kChunk * D),
        qt(D * kNR), acc_t(D * kNR), st(kChunk * kNR), kp(kChunk), vp(kChunk) {}
};

// Narrow scores: s[j] = q . k_j for four keys at once, four independent accumulator chains.
inline void dot4(const float* __restrict__ q, const float* const* k, int64_t D, float* __restrict__ s) {
  const float *__restrict__ k0 = k[0], *__restrict__ k1 = k[1], *__restrict__ k2 = k[2], *__restrict__ k3 = k[3];
  float s0 = 0.f, s1 = 0.f, s2 = 0.f, s3 = 0.f;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
  for (int64_t d = 0; d < D; ++d) {
    const float x = q[d];
    s0 += x * k0[d];
    s1 += x * k1[d];
    s2 += x * k2[d];
    s3 += x * k3[d];
  }
  s[0] = s0, s[1] = s1, s[2] = s2, s[3] = s3;
}

inline float dot1(const float* __restrict__ q, const float* __restrict__ k, int64_t D) {
  float s = 0.f;
#pragma omp simd reduction(+ : s)
  for (int64_t d = 0; d < D; ++d) s += q[d] * k[d];
  return s;
}

// Wide scores: st[j] = all rows' scores against key j, for eight keys, from qt [D] (the rows,
// transposed). Eight accumulators: enough independent chains to hide the FMA latency.
inline void wide_scores8(const vrow* __restrict__ qt, const float* const* k, int64_t D, vrow* __restrict__ st) {
  const float *__restrict__ k0 = k[0], *__restrict__ k1 = k[1], *__restrict__ k2 = k[2], *__restrict__ k3 = k[3],
              *__restrict__ k4 = k[4], *__restrict__ k5 = k[5], *__restrict__ k6 = k[6], *__restrict__ k7 = k[7];
  vrow s0{}, s1{}, s2{}, s3{}, s4{}, s5{}, s6{}, s7{};
  for (int64_t d = 0; d < D; ++d) {
    const vrow x = qt[d];
    s0 += x * k0[d], s1 += x * k1[d], s2 += x * k2[d], s3 += x * k3[d];
    s4 += x * k4[d], s5 += x * k5[d], s6 += x * k6[d], s7 += x * k7[d];
  }
  st[0] = s0, st[1] = s1, st[2] = s2, st[3] = s3, st[4] = s4, st[5] = s5, st[6] = s6, st[7] = s7;
}

// Wide accumulation: acc[d] += sum_j pt[j] v_j[d] over n keys, acc and pt transposed (lanes over
// the rows); eight dims at a time, held in registers over the keys.
inline void wide_accumulate(vrow* __restrict__ acc, const vrow* __restrict__ pt, const float* const* vp, int64_t n,
                            int64_t D) {
  int64_t d = 0;
  for (; d + 8 <= D; d += 8) {
    vrow a0 = acc[d], a1 = acc[d + 1], a2 = acc[d + 2], a3 = acc[d + 3], a4 = acc[d + 4], a5 = acc[d + 5],
        a6 = acc[d + 6], a7 = acc[d + 7];
    for (int64_t j = 0; j < n; ++j) {
      const vrow p = pt[j];
      const float* __restrict__ v = vp[j] + d;
      a0 += p * v[0], a1 += p * v[1], a2 += p * v[2], a3 += p * v[3];
      a4 += p * v[4], a5 += p * v[5], a6 += p * v[6], a7 += p * v[7];
    }
    acc[d] = a0, acc[d + 1] = a1, acc[d + 2] = a2, acc[d + 3] = a3;
    acc[d + 4] = a4, acc[d + 5] = a5, acc[d + 6] = a6, acc[d + 7] = a7;
  }
  for (; d < D; ++d) {
    vrow a = acc[d];
    for (int64_t j = 0; j < n; ++j) a += pt[j] * vp[j][d];
    acc[d] = a;
  }
}

// a = a * alpha + sum_j p[j * stride] v_j over n keys; four keys per pass, so that `a` is
// loaded and stored once per four.
inline void accumulate(float* __restrict__ a, float alpha, const float* __restrict__ p, int64_t stride,
                       const float* const* vp, int64_t n, int64_t D) {
  if (alpha != 1.f) {
#pragma omp simd
    for (int64_t d = 0; d < D; ++d) a[d] *= alpha;
  }
  int64_t j = 0;
  for (; j + 4 <= n; j += 4) {
    const float p0 = p[j * stride], p1 = p[(j + 1) * stride], p2 = p[(j + 2) * stride], p3 = p[(j + 3) * stride];
    const float *__restrict__ v0 = vp[j], *__restrict__ v1 = vp[j + 1], *__restrict__ v2 = vp[j + 2],
                *__restrict__ v3 = vp[j + 3];
#pragma omp simd
    for (int64_t d = 0; d < D; ++d) a[d] += p0 * v0[d] + p1 * v1[d] + p2 * v2[d] + p3 * v3[d];
  }
  for (; j < n; ++j) {
    const float pj = p[j * stride];
    const float* __restrict__ v = vp[j];
#pragma omp simd
    for (int64_t d = 0; d < D; ++d) a[d] += pj * v[d];
  }
}

// Narrow scores with the lanes over keys: s[j] = q . k_j for kRows keys. Each key's products
// are summed over head_dim into one vrow of partial sums, then the kRows vrows are reduced
// together by a transposing tree (log2(kRows) levels of two shuffles and an add), which costs
// far less than a horizontal sum per key. D a multiple of kRows.
struct ShuffleMasks {
  vrow_i lo[8], hi[8];  // per level of the transposing reduction
  vrow_i rot[8];        // lanes rotated by kRows/2, kRows/4, ..., 1: horizontal reductions
  ShuffleMasks() {
    int level = 0;
    for (int s = 1; s < kRows; s *= 2, ++level)
      for (int i = 0; i < kRows; ++i) {
        const int r = i % (2 * s), base = i - r;
        lo[level][i] = r < s ? base + r : kRows + base + r - s;
        hi[level][i] = r < s ? base + s + r : kRows + base + r;
      }
    level = 0;
    for (int s = kRows / 2; s >= 1; s /= 2, ++level)
      for (int i = 0; i < kRows; ++i) rot[level][i] = (i + s) % kRows;
  }
};
const ShuffleMasks kMasks;

inline vrow load_vrow(const float* p) {
  vrow v;
  std::memcpy(&v, p, sizeof(vrow));
  return v;
}

inline vrow key_scores(const float* __restrict__ q, const float* const* k, int64_t D) {
  vrow p[kRows];
  for (int j = 0; j < kRows; ++j) {
    const float* __restrict__ kj = k[j];
    vrow a = load_vrow(q) * load_vrow(kj);
    for (int64_t d = kRows; d < D; d += kRows) a += load_vrow(q + d) * load_vrow(kj + d);
    p[j] = a;
  }
  int level = 0;
  for (int n = kRows; n > 1; n /= 2, ++level)
    for (int j = 0; j < n / 2; ++j)
      p[j] = __builtin_shuffle(p[2 * j], p[2 * j + 1], kMasks.lo[level]) +
             __builtin_shuffle(p[2 * j], p[2 * j + 1], kMasks.hi[level]);
  return p[0];
}

inline float hmax(vrow v) {
  int level = 0;
  for (int s = kRows / 2; s >= 1; s /= 2, ++level) {
    const vrow r = __builtin_shuffle(v, kMasks.rot[level]);
    v = v > r ? v : r;
  }
  return v[0];
}

inline float hsum(vrow v) {
  int level = 0;
  for (int s = kRows / 2; s >= 1; s /= 2, ++level) v += __builtin_shuffle(v, kMasks.rot[level]);
  return v[0];
}

// Fetch a block's K and V rows into the cache ahead of use: n rows of `span` floats, `stride` apart.
// A function, not a lambda: g++ 12 dropped every prefetch of the same loop written as a lambda,
// and the decode path ran ~1.8x slower on a cache that had left the CPU's caches.
inline void prefetch_block(const float* k, const float* v, int64_t off, int64_t n, int64_t stride, int64_t span) {
  for (int64_t j = 0; j < n; ++j)
    for (int64_t d = 0; d < span; d += 16) {
      __builtin_prefetch(k + off + j * stride + d);
      __builtin_prefetch(v + off + j * stride + d);
    }
}

// Decode items (one new token; rows: heads of one GQA group, too few for the wide way), float32,
// NV = head_dim / kRows vectors per row: a block of the cache at a time, its keys kRows at a time
// in the lanes (key_scores' transposing reduction), every row's query and accumulator in
// registers, each V row loaded once for all rows.
template <int NV>
void attend_decode(const Item& it, const Args& a, const float* q, const float* k_cache, const float* v_cache,
                   float* out) {
  constexpr int64_t D = NV * kRows;
  const int64_t R = it.r1 - it.r0, tok = a.query_start_loc[it.seq], n_keys = a.seq_lens[it.seq];
  const int64_t key_stride = a.KVH * D, block_stride = a.block_size * key_stride, bs = a.block_size;
  const int32_t* table = a.block_tables + it.seq * a.bt_stride;
  // kv_head < 0: the item is every head of the sequence (rows r0..r1 are heads), each key's
  // K/V row of all KV heads read as one contiguous run
  const bool all = it.kv_head < 0;
  const int64_t h0 = all ? 0 : it.kv_head * a.G, kvh0 = all ? 0 : it.kv_head;
  int64_t koff[kRows];  // row i's offset within a key's row of all heads
  for (int64_t i = 0; i < R; ++i) koff[i] = all ? ((it.r0 + i) / a.G) * D : 0;
  vrow qv[kRows][NV], acc[kRows][NV];
  float m[kRows], l[kRows];
  for (int64_t i = 0; i < R; ++i) {
    const float* src = q + tok * a.q_tok_stride + (h0 + it.r0 + i) * a.q_head_stride;
    for (int c = 0; c < NV; ++c) qv[i][c] = load_vrow(src + c * kRows) * a.scale, acc[i][c] = vrow{};
    m[i] = -kInf, l[i] = 0.f;
  }
  const int64_t span = all ? key_stride : D;  // floats of one key's row this item reads
  const int64_t n_blocks = (n_keys + bs - 1) / bs;
  prefetch_block(k_cache, v_cache, int64_t(table[0]) * block_stride + kvh0 * D, bs, key_stride, span);
  vrow lane{};
  for (int i = 0; i < kRows; ++i) lane[i] = float(i);
  for (int64_t b = 0; b < n_blocks; ++b) {
    if (b + 1 < n_blocks)
      prefetch_block(k_cache, v_cache, int64_t(table[b + 1]) * block_stride + kvh0 * D, bs, key_stride, span);
    const int64_t off = int64_t(table[b]) * block_stride + kvh0 * D;
    const int64_t nk = std::min(bs, n_keys - b * bs);
    for (int64_t j0 = 0; j0 < nk; j0 += kRows) {
      const float* kb = k_cache + off + j0 * key_stride;
      const float* vb = v_cache + off + j0 * key_stride;
      const int64_t n = std::min<int64_t>(kRows, nk - j0);
      const vrow valid = lane < float(n) ? vrow{} + 1.f : vrow{};  // lanes past the last key: weight 0
      vrow p[kRows];
      for (int64_t i = 0; i < R; ++i) {
        vrow part[kRows];
        for (int j = 0; j < kRows; ++j) {  // key j's products, summed over the row's NV vectors
          const float* kr = kb + j * key_stride + koff[i];
          vrow x = qv[i][0] * load_vrow(kr);
          for (int c = 1; c < NV; ++c) x += qv[i][c] * load_vrow(kr + c * kRows);
          part[j] = x;
        }
        // key_scores' transposing reduction, written out again: as a shared function (even always
        // inlined) it made these decodes ~30% slower (tools.attention_bench, 32 decodes, g++ 12)
        int level = 0;
        for (int w = kRows; w > 1; w /= 2, ++level)
          for (int j = 0; j < w / 2; ++j)
            part[j] = __builtin_shuffle(part[2 * j], part[2 * j + 1], kMasks.lo[level]) +
                      __builtin_shuffle(part[2 * j], part[2 * j + 1], kMasks.hi[level]);
        const vrow s = valid > 0.f ? part[0] : vrow{} - kInf;
        const float mx = std::max(m[i], hmax(s));
        const float alpha = exp_neg(m[i] - mx);
        p[i] = exp_neg(s - mx) * valid;
        l[i] = l[i] * alpha + hsum(p[i]);
        m[i] = mx;
        for (int c = 0; c < NV; ++c) acc[i][c] *= alpha;
      }
      for (int64_t j = 0; j < n; ++j)
        for (int64_t i = 0; i < R; ++i) {
          const float* vr = vb + j * key_stride + koff[i];
          for (int c = 0; c < NV; ++c) acc[i][c] += p[i][j] * load_vrow(vr + c * kRows);
        }
    }
  }
  for (int64_t i = 0; i < R; ++i) {
    float* dst = out + (tok * a.H + h0 + it.r0 + i) * D;
    const float inv = 1.f / l[i];
    for (int c = 0; c < NV; ++c) {
      const vrow o = acc[i][c] * inv;
      std::memcpy(dst + c * kRows, &o, sizeof(vrow));
    }
  }
}

// The decode path's NV for these arguments, or 0 where attend() serves the item.
inline int decode_nv(const Args& a) {
  if (a.block_size % kRows || a.D % kRows) return 0;
  const int64_t nv = a.D / kRows;
  return nv == 1 || nv == 2 || nv == 4 || nv == 8 ? int(nv) : 0;
}

// Whether attend_decode takes an item of `rows` rows: their queries and accumulators must fit in
// the vector registers (beyond that it measured no faster than attend's narrow way).
inline bool decode_path(int64_t rows, const Args& a) {
  const int nv = decode_nv(a);
  return nv && rows * nv <= 16 && !use_wide(rows, a.D);
}

inline float to_float(float x) { return x; }
inline float to_float(at::BFloat16 x) { return static_cast<float>(x); }

// Pointers to the float rows of keys [c0, c0 + n) of one sequence and KV head: straight into the
// cache for float32, else converted into `buf`.
template <typename T>
void cache_rows(const T* cache, const int32_t* table, int64_t c0, int64_t n, int64_t kv_head, const Args& a,
                float* buf, const float** rows) {
  int64_t block = c0 / a.block_size, offset = c0 % a.block_size;  // then stepped: no division per key
  for (int64_t j = 0; j < n; ++j, ++offset) {
    if (offset == a.block_size) ++block, offset = 0;
    const T* src = cache + ((int64_t(table[block]) * a.block_size + offset) * a.KVH + kv_head) * a.D;
    if constexpr (std::is_same_v<T, float>) {
      rows[j] = src;
    } else {
      float* dst = buf + j * a.D;
      for (int64_t d = 0; d < a.D; ++d) dst[d] = to_float(src[d]);
      rows[j] = dst;
    }
  }
}

template <typename T>
void attend(const Item& it, const Args& a, const T* q, const T* k_cache, const T* v_cache, T* out, Scratch& w) {
  const int64_t D = a.D, G = a.G, R = it.r1 - it.r0;
  const int64_t qs = a.query_start_loc[it.seq], q_len = a.query_start_loc[it.seq + 1] - qs;
  const int64_t first_pos = a.seq_lens[it.seq] - q_len;  // position of the first new token
  const int32_t* table = a.block_tables + it.seq * a.bt_stride;
  const bool wide = use_wide(R, D);
  float *qb = w.q.data(), *acc = w.acc.data(), *m = w.m.data(), *l = w.l.data();
  int64_t last[kRows];  // the last key position each row sees
  for (int64_t i = 0; i < R; ++i) {
    const int64_t r = it.r0 + i, head = it.kv_head * G + r % G;
    const T* src = q + (qs + r / G) * a.q_tok_stride + head * a.q_head_stride;
    for (int64_t d = 0; d < D; ++d) qb[i * D + d] = to_float(src[d]) * a.scale;
    last[i] = first_pos + r / G;
    m[i] = -kInf;
    l[i] = 0.f;
  }
  std::fill(acc, acc + R * D, 0.f);
  vrow *qt = w.qt.data(), *acc_t = w.acc_t.data();
  vrow last_v{}, m_v = vrow{} - kInf, l_v{};
  if (wide) {  // lanes past R repeat the last row: harmless, never written out
    for (int64_t i = 0; i < kRows; ++i) {
      const int64_t src = std::min(i, R - 1);
      for (int64_t d = 0; d < D; ++d) qt[d][i] = qb[src * D + d];
      last_v[i] = float(last[src]);
    }
    std::fill(acc_t, acc_t + D, vrow{});
  }
  const int64_t n_keys = last[R - 1] + 1;
  for (int64_t c0 = 0; c0 < n_keys; c0 += kChunk) {
    const int64_t n = std::min<int64_t>(kChunk, n_keys - c0);
    cache_rows(k_cache, table, c0, n, it.kv_head, a, w.kbuf.data(), w.kp.data());
    cache_rows(v_cache, table, c0, n, it.kv_head, a, w.vbuf.data(), w.vp.data());
    const float* const* kp = w.kp.data();
    if (c0 + kChunk < n_keys) {  // the next chunk's rows: fetched while this one is computed
      const int64_t n2 = std::min<int64_t>(kChunk, n_keys - c0 - kChunk);
      int64_t block = (c0 + kChunk) / a.block_size, offset = (c0 + kChunk) % a.block_size;
      for (int64_t j = 0; j < n2; ++j, ++offset) {
        if (offset == a.block_size) ++block, offset = 0;
        const int64_t row = ((int64_t(table[block]) * a.block_size + offset) * a.KVH + it.kv_head) * a.D;
        for (int64_t d = 0; d < D; d += 64 / sizeof(T)) {
          __builtin_prefetch(k_cache + row + d);
          __builtin_prefetch(v_cache + row + d);
        }
      }
    }
    if (wide) {
      vrow* st = w.st.data();
      const int64_t n8 = (n + 7) / 8 * 8;
      for (int64_t j = n; j < n8; ++j) w.kp[j] = w.kp[n - 1];  // padding keys: scored, then weighted 0
      for (int64_t j = 0; j < n8; j += 8) wide_scores8(qt, kp + j, D, st + j);
      const bool masked = c0 + n - 1 > last[0];  // some row does not see the whole chunk
      vrow mx = m_v;
      for (int64_t j = 0; j < n; ++j) {
        if (masked) st[j] = (vrow{} + float(c0 + j)) <= last_v ? st[j] : vrow{} - kInf;
        mx = st[j] > mx ? st[j] : mx;
      }
      const vrow alpha = exp_neg(m_v - mx);  // rescales what was accumulated under the old max
      vrow sum{};
      for (int64_t j = 0; j < n; ++j) sum += st[j] = st[j] == -kInf ? vrow{} : exp_neg(st[j] - mx);
      for (int64_t j = n; j < n8; ++j) st[j] = vrow{}, w.vp[j] = w.vp[n - 1];
      l_v = l_v * alpha + sum;
      m_v = mx;
      for (int64_t d = 0; d < D; ++d) acc_t[d] *= alpha;
      wide_accumulate(acc_t, st, w.vp.data(), n8, D);
      continue;
    }
    for (int64_t i = 0; i < R; ++i) {
      const int64_t nv = std::min<int64_t>(n, last[i] + 1 - c0);
      if (nv <= 0) continue;
      const float* qr = qb + i * D;
      float* sr = w.s.data() + i * kChunk;
      int64_t j = 0;
      if (D % kRows == 0)
        for (; j + kRows <= nv; j += kRows) {
          const vrow sv = key_scores(qr, kp + j, D);
          std::memcpy(sr + j, &sv, sizeof(vrow));
        }
      for (; j + 4 <= nv; j += 4) dot4(qr, kp + j, D, sr + j);
      for (; j < nv; ++j) sr[j] = dot1(qr, kp[j], D);
      float mx = m[i];
#pragma omp simd reduction(max : mx)
      for (j = 0; j < nv; ++j) mx = sr[j] > mx ? sr[j] : mx;
      const float alpha = exp_neg(m[i] - mx);
      float sum = 0.f;
#pragma omp simd reduction(+ : sum)
      for (j = 0; j < nv; ++j) sum += sr[j] = exp_neg(sr[j] - mx);
      l[i] = l[i] * alpha + sum;
      m[i] = mx;
      accumulate(acc + i * D, alpha, sr, 1, w.vp.data(), nv, D);
    }
  }
  for (int64_t i = 0; i < R; ++i) {
    const int64_t r = it.r0 + i, head = it.kv_head * G + r % G;
    T* dst = out + ((qs + r / G) * a.H + head) * D;
    if (wide) {
      const float inv = 1.f / l_v[i];
      for (int64_t d = 0; d < D; ++d) dst[d] = static_cast<T>(acc_t[d][i] * inv);
    } else {
      const float inv = 1.f / l[i];
      for (int64_t d = 0; d < D; ++d) dst[d] = static_cast<T>(acc[i * D + d] * inv);
    }
  }
}

// An empty asm that claims to change x in a vector register: g++ must then hold it there, where
// it would otherwise fold the load into every FMA that reads x (one load per FMA: the load ports,
// not the FMA pipes, set the pace).
inline void keep_in_register(vrow& x) { asm volatile("" : "+v"(x)); }

// t[m][u] += a[u] * b[m * stride] for m < M, u < NR, a's vectors held in registers: attend_wide's
// scores (a: the queries at one dim, b: that dim of M keys) and its accumulation (a: one key's
// probabilities, b: M dims of its V row) are both this outer-product update of a register tile.
template <int M, int NR>
__attribute__((always_inline)) inline void tile_fma(vrow (&t)[M][NR], const vrow* a, const float* b,
                                                    int64_t stride) {
  vrow x[NR];
#pragma GCC unroll 4
  for (int u = 0; u < NR; ++u) x[u] = a[u], keep_in_register(x[u]);
#pragma GCC unroll 16
  for (int m = 0; m < M; ++m) {
    const float bm = b[m * stride];
#pragma GCC unroll 4
    for (int u = 0; u < NR; ++u) t[m][u] += x[u] * bm;
  }
}

// Wide items (prefills) with head_dim a compile-time constant and NR vectors of rows (NR * kRows
// rows): each chunk's K and V rows are first copied into contiguous scratch, so that every load
// of the inner loops is a fixed offset from one pointer, and each copied row serves all NR vectors
// of rows (a flash-attention tile of NR * kRows rows by kChunk keys). Keys past the last row's
// last are scored as zeros and masked like any key a row must not see. An item of 17 to 63 rows
// runs as NR = kNR all the same, its spare lanes repeating its last row.
template <int D, int NR, typename T>
void attend_wide(const Item& it, const Args& a, const T* q, const T* k_cache, const T* v_cache, T* out, Scratch& w) {
  constexpr int KB = kAccs / NR < 8 ? kAccs / NR : 8;     // keys per scoring pass: NR * KB accumulators
  constexpr int W = kAccs / NR < D ? kAccs / NR : D;       // dims per accumulation pass: NR * W of them
  const int64_t G = a.G, R = it.r1 - it.r0;
  const int64_t qs = a.query_start_loc[it.seq], q_len = a.query_start_loc[it.seq + 1] - qs;
  const int64_t first_pos = a.seq_lens[it.seq] - q_len;  // position of the first new token
  const int32_t* table = a.block_tables + it.seq * a.bt_stride;
  vrow* __restrict__ qt = w.qt.data();     // [D][NR]
  vrow* __restrict__ acc = w.acc_t.data();  // [D][NR]
  vrow* __restrict__ st = w.st.data();      // [kChunk][NR]
  vrow last_v[NR], m_v[NR], l_v[NR];
  for (int u = 0; u < NR; ++u) {
    for (int64_t i = 0; i < kRows; ++i) {  // lanes past R repeat the last row: never written out
      const int64_t r = it.r0 + std::min(u * kRows + i, R - 1), head = it.kv_head * G + r % G;
      const T* src = q + (qs + r / G) * a.q_tok_stride + head * a.q_head_stride;
      for (int64_t d = 0; d < D; ++d) qt[d * NR + u][i] = to_float(src[d]) * a.scale;
      last_v[u][i] = float(first_pos + r / G);
    }
    m_v[u] = vrow{} - kInf, l_v[u] = vrow{};
  }
  for (int64_t d = 0; d < D * NR; ++d) acc[d] = vrow{};
  const int64_t last0 = first_pos + it.r0 / G, n_keys = first_pos + (it.r1 - 1) / G + 1;
  float* __restrict__ kc = w.kbuf.data();
  float* __restrict__ vc = w.vbuf.data();
  for (int64_t c0 = 0; c0 < n_keys; c0 += kChunk) {
    const int64_t n = std::min<int64_t>(kChunk, n_keys - c0), nk = (n + KB - 1) / KB * KB;
    int64_t block = c0 / a.block_size, offset = c0 % a.block_size;
    for (int64_t j = 0; j < n; ++j, ++offset) {
      if (offset == a.block_size) ++block, offset = 0;
      const int64_t row = ((int64_t(table[block]) * a.block_size + offset) * a.KVH + it.kv_head) * D;
      if constexpr (std::is_same_v<T, float>) {
        std::memcpy(kc + j * D, k_cache + row, D * sizeof(float));
        std::memcpy(vc + j * D, v_cache + row, D * sizeof(float));
      } else {
        for (int64_t d = 0; d < D; ++d) kc[j * D + d] = to_float(k_cache[row + d]), vc[j * D + d] = to_float(v_cache[row + d]);
      }
    }
    for (int64_t j = n; j < nk; ++j)
      for (int64_t d = 0; d < D; ++d) kc[j * D + d] = 0.f, vc[j * D + d] = 0.f;
    for (int64_t j0 = 0; j0 < nk; j0 += KB) {
      const float* __restrict__ kb = kc + j0 * D;
      vrow s[KB][NR] = {};
      for (int64_t d = 0; d < D; ++d) tile_fma(s, qt + d * NR, kb + d, D);
#pragma GCC unroll 16
      for (int j = 0; j < KB; ++j)
#pragma GCC unroll 4
        for (int u = 0; u < NR; ++u) st[(j0 + j) * NR + u] = s[j][u];
    }
    if (c0 + nk - 1 > last0)  // some row does not see every key of the chunk
      for (int64_t j = 0; j < nk; ++j)
        for (int u = 0; u < NR; ++u)
          st[j * NR + u] = (vrow{} + float(c0 + j)) <= last_v[u] ? st[j * NR + u] : vrow{} - kInf;
    vrow alpha[NR];
    for (int u = 0; u < NR; ++u) {
      vrow mx = m_v[u];
      for (int64_t j = 0; j < nk; ++j) mx = st[j * NR + u] > mx ? st[j * NR + u] : mx;
      alpha[u] = exp_neg(m_v[u] - mx);  // rescales what was accumulated under the old max
      vrow sum{};
      for (int64_t j = 0; j < nk; ++j) {
        const vrow x = st[j * NR + u];
        sum += st[j * NR + u] = x == -kInf ? vrow{} : exp_neg(x - mx);
      }
      l_v[u] = l_v[u] * alpha[u] + sum;
      m_v[u] = mx;
    }
    for (int64_t d0 = 0; d0 < D; d0 += W) {
      vrow r[W][NR];
#pragma GCC unroll 16
      for (int i = 0; i < W; ++i)
#pragma GCC unroll 4
        for (int u = 0; u < NR; ++u) r[i][u] = acc[(d0 + i) * NR + u] * alpha[u];
      const float* __restrict__ vb = vc + d0;
      for (int64_t j = 0; j < n; ++j, vb += D) tile_fma(r, st + j * NR, vb, 1);
#pragma GCC unroll 16
      for (int i = 0; i < W; ++i)
#pragma GCC unroll 4
        for (int u = 0; u < NR; ++u) acc[(d0 + i) * NR + u] = r[i][u];
    }
  }
  for (int64_t i = 0; i < R; ++i) {
    const int64_t r = it.r0 + i, head = it.kv_head * G + r % G;
    T* dst = out + ((qs + r / G) * a.H + head) * D;
    const int u = i / kRows, lane = i % kRows;
    const float inv = 1.f / l_v[u][lane];
    for (int64_t d = 0; d < D; ++d) dst[d] = static_cast<T>(acc[d * NR + u][lane] * inv);
  }
}

// Where attend_wide serves an item: the wide way, a head_dim it is built for.
inline bool wide_path(int64_t rows, const Args& a) {
  return use_wide(rows, a.D) && (a.D == 32 || a.D == 64 || a.D == 128);
}

template <typename T>
void run_items(const std::vector<Item>& items, const Args& a, const T* q, const T* k, const T* v, T* out) {
  // Threads pull items (sorted longest first) from a shared counter: sequences differ widely in
  // length, so a static split would leave threads idle.
  std::atomic<int64_t> next{0};
  const int64_t n_threads = std::min<int64_t>(at::get_num_threads(), int64_t(items.size()));
  at::parallel_for(0, n_threads, 1, [&](int64_t, int64_t) {
    Scratch w(a.D);
    for (int64_t i; (i = next.fetch_add(1)) < int64_t(items.size());) {
      const Item& it = items[i];
      if constexpr (std::is_same_v<T, float>) {
        if (a.query_start_loc[it.seq + 1] - a.query_start_loc[it.seq] == 1 && decode_path(it.r1 - it.r0, a)) {
          switch (decode_nv(a)) {
            case 1: attend_decode<1>(it, a, q, k, v, out); continue;
            case 2: attend_decode<2>(it, a, q, k, v, out); continue;
            case 4: attend_decode<4>(it, a, q, k, v, out); continue;
            case 8: attend_decode<8>(it, a, q, k, v, out); continue;
          }
        }
      }
      if (wide_path(it.r1 - it.r0, a)) {
        const bool two = it.r1 - it.r0 > kRows;
        switch (a.D) {
          case 32: two ? attend_wide<32, kNR, T>(it, a, q, k, v, out, w) : attend_wide<32, 1, T>(it, a, q, k, v, out, w); continue;
          case 64: two ? attend_wide<64, kNR, T>(it, a, q, k, v, out, w) : attend_wide<64, 1, T>(it, a, q, k, v, out, w); continue;
          case 128: two ? attend_wide<128, kNR, T>(it, a, q, k, v, out, w) : attend_wide<128, 1, T>(it, a, q, k, v, out, w); continue;
        }
      }
      attend<T>(it, a, q, k, v, out, w);
    }
  });
}

}  // namespace

// q [num_tokens, num_heads, head_dim] (any token and head strides; head_dim contiguous), caches
// [num_blocks, block_size, num_kv_heads, head_dim], block_tables [num_seqs, >= blocks] int32,
// seq_lens [num_seqs] int32, query_start_loc [num_seqs + 1] int32 -> [num_tokens, num_heads, head_dim].
torch::Tensor paged_attention(const torch::Tensor& q, const torch::Tensor& k_cache, const torch::Tensor& v_cache,
                              const torch::Tensor& block_tables, const torch::Tensor& seq_lens,
                              const torch::Tensor& query_start_loc, double scale) {
  TORCH_CHECK(q.device().is_cpu() && k_cache.device().is_cpu(), "paged_attention: CPU tensors only");
  TORCH_CHECK(q.dim() == 3 && k_cache.dim() == 4 && q.stride(2) == 1, "paged_attention: q [T, H, D], cache 4-d");
  TORCH_CHECK(k_cache.is_contiguous() && v_cache.is_contiguous() && v_cache.sizes() == k_cache.sizes(),
              "paged_attention: contiguous caches of equal shape");
  TORCH_CHECK(q.scalar_type() == k_cache.scalar_type() && q.scalar_type() == v_cache.scalar_type(),
              "paged_attention: q and caches of one dtype");
  for (const auto* t : {&block_tables, &seq_lens, &query_start_loc})
    TORCH_CHECK(t->scalar_type() == torch::kInt32 && t->stride(-1) == 1, "paged_attention: int32 metadata");
  TORCH_CHECK(seq_lens.dim() == 1 && query_start_loc.dim() == 1 && block_tables.dim() == 2 &&
                  query_start_loc.size(0) == seq_lens.size(0) + 1 && block_tables.size(0) >= seq_lens.size(0),
              "paged_attention: metadata shapes");
  Args a;
  a.H = q.size(1), a.D = q.size(2), a.KVH = k_cache.size(2), a.block_size = k_cache.size(1);
  TORCH_CHECK(k_cache.size(3) == a.D && a.H % a.KVH == 0, "paged_attention: head_dim or GQA group mismatch");
  a.G = a.H / a.KVH;
  a.bt_stride = block_tables.stride(0), a.q_tok_stride = q.stride(0), a.q_head_stride = q.stride(1);
  a.scale = float(scale);
  a.block_tables = block_tables.data_ptr<int32_t>();
  a.seq_lens = seq_lens.data_ptr<int32_t>();
  a.query_start_loc = query_start_loc.data_ptr<int32_t>();
  torch::Tensor o = torch::empty({q.size(0), a.H, a.D}, q.options());
  // One (sequence, KV head)'s items one after the other, so that its K/V rows are still in cache
  // for the next; the costliest sequences first, so that no thread is left with a long one at the end.
  std::vector<Item> items;
  // decodes of models with few heads: one item per sequence, all heads (see attend_decode)
  const bool all_heads = q.scalar_type() == torch::kFloat32 && decode_path(a.H, a) && decode_path(a.G, a);
  const int64_t num_blocks = k_cache.size(0), max_blocks = block_tables.size(1);
  for (int64_t i = 0; i < seq_lens.size(0); ++i) {
    const int64_t q_len = a.query_start_loc[i + 1] - a.query_start_loc[i], rows = q_len * a.G;
    const int64_t cost = q_len * a.seq_lens[i], blocks = (a.seq_lens[i] + a.block_size - 1) / a.block_size;
    // the kernel reads wherever the metadata points: check it first
    TORCH_CHECK(q_len >= 0 && q_len <= a.seq_lens[i] && a.query_start_loc[i] >= 0 &&
                    a.query_start_loc[i + 1] <= q.size(0) && blocks <= max_blocks,
                "paged_attention: sequence ", i, ": bad query_start_loc, seq_lens or block_tables width");
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t id = a.block_tables[i * a.bt_stride + b];
      TORCH_CHECK(id >= 0 && id < num_blocks, "paged_attention: sequence ", i, ": block ", id, " out of range");
    }
    if (q_len == 1 && all_heads) {  // one item for every head: see attend_decode
      items.push_back({i, -1, 0, a.H, cost});
      continue;
    }
    const int64_t step = wide_path(std::min<int64_t>(rows, kRows), a) ? kRows * kNR : kRows;
    for (int64_t h = 0; h < a.KVH; ++h)
      for (int64_t r0 = 0; r0 < rows; r0 += step) items.push_back({i, h, r0, std::min(rows, r0 + step), cost});
  }
  std::stable_sort(items.begin(), items.end(), [](const Item& x, const Item& y) { return x.cost > y.cost; });
  if (q.scalar_type() == torch::kFloat32) {
    run_items<float>(items, a, q.data_ptr<float>(), k_cache.data_ptr<float>(), v_cache.data_ptr<float>(),
                     o.data_ptr<float>());
  } else {
    TORCH_CHECK(q.scalar_type() == torch::kBFloat16, "paged_attention: float32 or bfloat16");
    run_items<at::BFloat16>(items, a, q.data_ptr<at::BFloat16>(), k_cache.data_ptr<at::BFloat16>(),
                            v_cache.data_ptr<at::BFloat16>(), o.data_ptr<at::BFloat16>());
  }
  return o;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("paged_attention", &paged_attention, "paged attention over the KV cache, read in place", py::arg("q"),
        py::arg("k_cache"), py::arg("v_cache"), py::arg("block_tables"), py::arg("seq_lens"),
        py::arg("query_start_loc"), py::arg("scale"));
}
