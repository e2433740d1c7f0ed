// Attention of a few query tokens over a static KV cache, for decoding on a CPU with AVX-512.
//
// A decoding step attends 1 query token (k+1 <= 16 in a verification) per head over the cache's whole
// buffer under an additive mask (0 = visible, -inf = hidden: unwritten slots, other rows' padding).
// PyTorch's CPU scaled_dot_product_attention pays a fixed cost per call that dwarfs this work (tens of
// microseconds for ~0.3 MFLOP); this kernel does each (row, head, query) in one pass on one thread:
//
//   cached_attention(q [B, T, H, D], k [B, KV, C, D], v [B, KV, C, D], mask [B, 1, T, C], scale)
//     -> [B, T, H, D] float32; query head h reads key/value head h / (H / KV) (grouped-query attention)
//
// Hidden slots are skipped (never read, weight exactly 0). Each output row is the same sequence of
// operations whatever T is, so a one-token step and a (k+1)-token verification agree bit for bit.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <immintrin.h>

#include <cmath>
#include <limits>
#include <vector>

#include "kernels.h"

#if !defined(__AVX512F__)
#error "cached_attention needs a CPU with AVX-512 (built with -march=native)"
#endif

namespace {

using layerskip::exp16;

// rows (batch x query x head) below which one thread does them all: a row is ~1.5 us over ~200 visible
// slots, a fork/join of the two threads of a 2-core CPU costs more than half of a one-token step's 9
// rows, less than what splitting a 5-token verification's 45 rows saves (measured on a Zen 5)
constexpr int64_t kRowsPerTask = 4;

// out[0:D] += sum_c p[c] * v[c, 0:D] over the slots with p[c] != 0, DV = D / 16 accumulators in registers
template <int DV>
void weighted_values(const float* p, const float* v, float* out, int64_t C, float inv) {
  __m512 acc[DV];
  for (int j = 0; j < DV; ++j) acc[j] = _mm512_setzero_ps();
  for (int64_t c = 0; c < C; ++c) {
    if (p[c] == 0.0f) continue;
    const __m512 w = _mm512_set1_ps(p[c]);
    for (int j = 0; j < DV; ++j) acc[j] = _mm512_fmadd_ps(w, _mm512_loadu_ps(v + c * DV * 16 + 16 * j), acc[j]);
  }
  for (int j = 0; j < DV; ++j) _mm512_storeu_ps(out + 16 * j, _mm512_mul_ps(acc[j], _mm512_set1_ps(inv)));
}

// scores[c] = q . k[c] * scale + mask[c] for the visible slots (-inf for the others); returns the max
template <int DV>
float scores_of(const float* q, const float* k, const float* mask, float* scores, int64_t C, float scale) {
  const float neg_inf = -std::numeric_limits<float>::infinity();
  __m512 qv[DV];
  for (int j = 0; j < DV; ++j) qv[j] = _mm512_loadu_ps(q + 16 * j);
  float top = neg_inf;
  for (int64_t c = 0; c < C; ++c) {
    if (mask[c] == neg_inf) {
      scores[c] = neg_inf;
      continue;
    }
    __m512 acc = _mm512_mul_ps(qv[0], _mm512_loadu_ps(k + c * DV * 16));
    for (int j = 1; j < DV; ++j) acc = _mm512_fmadd_ps(qv[j], _mm512_loadu_ps(k + c * DV * 16 + 16 * j), acc);
    const float s = _mm512_reduce_add_ps(acc) * scale + mask[c];
    scores[c] = s;
    top = std::max(top, s);
  }
  return top;
}

// one (row, head, query): out[0:D] = softmax(q . k[c] * scale + mask[c]) @ v
template <int DV>
void attend_one(const float* q, const float* k, const float* v, const float* mask, float* out, int64_t C,
                float scale, std::vector<float>& scores) {
  const int64_t padded = (C + 15) / 16 * 16;
  scores.resize(padded);
  const float neg_inf = -std::numeric_limits<float>::infinity();
  const float top = scores_of<DV>(q, k, mask, scores.data(), C, scale);
  for (int64_t c = C; c < padded; ++c) scores[c] = neg_inf;
  if (top == neg_inf) {  // nothing visible: zeros (never used by the engine)
    for (int64_t d = 0; d < DV * 16; ++d) out[d] = 0.0f;
    return;
  }
  __m512 total = _mm512_setzero_ps();
  const __m512 shift = _mm512_set1_ps(top);
  for (int64_t c = 0; c < padded; c += 16) {
    const __m512 e = exp16(_mm512_sub_ps(_mm512_loadu_ps(scores.data() + c), shift));
    _mm512_storeu_ps(scores.data() + c, e);
    total = _mm512_add_ps(total, e);
  }
  weighted_values<DV>(scores.data(), v, out, C, 1.0f / _mm512_reduce_add_ps(total));
}

using AttendFn = void (*)(const float*, const float*, const float*, const float*, float*, int64_t, float,
                          std::vector<float>&);

AttendFn attend_for(int64_t D) {
  switch (D / 16) {
    case 1: return attend_one<1>;
    case 2: return attend_one<2>;
    case 3: return attend_one<3>;
    case 4: return attend_one<4>;
    case 5: return attend_one<5>;
    case 6: return attend_one<6>;
    case 7: return attend_one<7>;
    case 8: return attend_one<8>;
    case 16: return attend_one<16>;  // Gemma 3's head size, 256
    default: return nullptr;
  }
}

at::Tensor cached_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& mask,
                            double scale) {
  TORCH_CHECK(q.scalar_type() == at::kFloat && k.scalar_type() == at::kFloat && v.scalar_type() == at::kFloat &&
                  mask.scalar_type() == at::kFloat,
              "cached_attention: float32 tensors");
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.sizes() == k.sizes() && mask.dim() == 4, "cached_attention: 4-d inputs");
  const int64_t B = q.size(0), T = q.size(1), H = q.size(2), D = q.size(3), KV = k.size(1), C = k.size(2);
  TORCH_CHECK(k.size(0) == B && k.size(3) == D && KV > 0 && H % KV == 0 && layerskip::attends(D),
              "cached_attention: q [B, T, H, D] and k, v [B, KV, C, D] with KV dividing H and D one of 16, 32, .., 128 or 256");
  TORCH_CHECK(mask.size(0) == B && mask.size(1) == 1 && mask.size(2) == T && mask.size(3) == C,
              "cached_attention: mask must be [B, 1, T, C]");
  TORCH_CHECK(q.stride(3) == 1, "cached_attention: q must be contiguous in its last dimension");
  const at::Tensor kc = k.contiguous(), vc = v.contiguous(), mc = mask.contiguous();
  at::Tensor out = at::empty({B, T, H, D}, q.options());
  layerskip::attend_rows(q.const_data_ptr<float>(), q.stride(0), q.stride(1), q.stride(2), kc.const_data_ptr<float>(),
                         vc.const_data_ptr<float>(), mc.const_data_ptr<float>(), out.mutable_data_ptr<float>(), B, T, H,
                         KV, C, D, (float)scale);
  return out;
}

}  // namespace

bool layerskip::attends(int64_t D) { return D % 16 == 0 && attend_for(D) != nullptr; }

void layerskip::attend_rows(const float* q, int64_t sb, int64_t st, int64_t sh, const float* k, const float* v,
                            const float* mask, float* out, int64_t B, int64_t T, int64_t H, int64_t KV, int64_t C,
                            int64_t D, float scale) {
  const AttendFn attend = attend_for(D);
  const int64_t group = H / KV;
  at::parallel_for(0, B * T * H, kRowsPerTask, [&](int64_t begin, int64_t end) {
    std::vector<float> scores;
    for (int64_t i = begin; i < end; ++i) {
      const int64_t b = i / (T * H), t = (i / H) % T, h = i % H;
      const int64_t kv = (b * KV + h / group) * C * D;
      attend(q + b * sb + t * st + h * sh, k + kv, v + kv, mask + (b * T + t) * C, out + i * D, C, scale, scores);
    }
  });
}

TORCH_LIBRARY_FRAGMENT(layerskip, m) {
  m.def("cached_attention(Tensor q, Tensor k, Tensor v, Tensor mask, float scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(layerskip, CPU, m) { m.impl("cached_attention", &cached_attention); }
