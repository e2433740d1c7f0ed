// Whole decoder sublayers in one call, for decoding a few tokens with bf16 weights on a CPU.
//
// An eager decoding step of a Llama layer is ~30 ATen ops and ~10 module calls; on a 135M model each
// costs microseconds of dispatch against ~0.3 ms of weight streaming per layer, so the host overhead is a
// third of the step (BENCHMARKS.md, "Native CPU kernels"). These ops run each pre-norm sublayer as one
// call, over the same kernels the module path uses (kernels.h) and with the same roundings:
//
//   attention_block(hidden [B, T, D] bf16, ...) = hidden + o_proj(attention(rope(qkv_proj(rms_norm(hidden)))))
//     the new keys/values written into the layer's cache [B, KV, C, hd] (float32) at slots [T] (one for every row) or [B, T] (each row's own)
//   mlp_block(hidden [B, T, D] bf16, ...) = hidden + down_proj(silu(gate) * up), gate|up = gate_up_proj(rms_norm(hidden))
//
// Roundings (those of layerskip.model.decoder in bfloat16): the norm is computed in float32 and rounded to bf16;
// each projection accumulates in float32 and rounds to bf16, a bias is a bf16 addition; rotary
// embedding and attention run in float32 (the cache dtype) and the attention output is rounded to bf16;
// silu(gate) and its product with up are each rounded to bf16; the residual addition is a bf16 one.
// Every row of the output is the same sequence of operations whatever T is.
//
// Gemma 3's layers keep their module path (four (1 + w) norms, q/k norms, GELU), where a norm is ~9 ATen ops;
// gemma_rms_norm runs one as a single call (the same float32 arithmetic, rounded once to bf16).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <immintrin.h>

#include <cmath>
#include <optional>
#include <vector>

#include "kernels.h"

namespace {

using at::BFloat16;
using layerskip::exp16;

// out[r, :] = bf16(x[r, :] * rsqrt(mean(x[r, :]^2) + eps) * weight), float32 inside (F.rms_norm's order)
template <typename W>
void rms_norm_rows(const BFloat16* x, const W* weight, BFloat16* out, int64_t rows, int64_t D, double eps) {
  for (int64_t r = 0; r < rows; ++r) {
    const BFloat16* xr = x + r * D;
    float squares = 0.0f;
    for (int64_t d = 0; d < D; ++d) squares += static_cast<float>(xr[d]) * static_cast<float>(xr[d]);
    const float inv = 1.0f / std::sqrt(squares / static_cast<float>(D) + static_cast<float>(eps));
    for (int64_t d = 0; d < D; ++d) out[r * D + d] = BFloat16(static_cast<float>(xr[d]) * inv * static_cast<float>(weight[d]));
  }
}

// the norm of hidden [rows, D] with its weight [D] (bfloat16, as the model's, or float32)
void rms_norm(const at::Tensor& hidden, const at::Tensor& weight, BFloat16* out, double eps) {
  TORCH_CHECK(weight.is_contiguous() && (weight.scalar_type() == at::kBFloat16 || weight.scalar_type() == at::kFloat),
              "decoder block: the norm weight must be a contiguous bfloat16 or float32 tensor");
  const int64_t D = hidden.size(-1), rows = hidden.numel() / D;
  if (weight.scalar_type() == at::kBFloat16)
    rms_norm_rows(hidden.const_data_ptr<BFloat16>(), weight.const_data_ptr<BFloat16>(), out, rows, D, eps);
  else
    rms_norm_rows(hidden.const_data_ptr<BFloat16>(), weight.const_data_ptr<float>(), out, rows, D, eps);
}

// y [rows, N] += bias [N] as a bf16 addition
void add_bias(BFloat16* y, const std::optional<at::Tensor>& bias, int64_t rows, int64_t N) {
  if (!bias.has_value()) return;
  TORCH_CHECK(bias->scalar_type() == at::kBFloat16 && bias->is_contiguous(), "decoder block: a bias must be contiguous bfloat16");
  const BFloat16* bp = bias->const_data_ptr<BFloat16>();
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t n = 0; n < N; ++n) y[r * N + n] = BFloat16(static_cast<float>(y[r * N + n]) + static_cast<float>(bp[n]));
}

// the linear map of one packed weight: y [rows, N] = x [rows, K] @ w.T (+ bias)
void project(const BFloat16* x, const at::Tensor& packed, const std::optional<at::Tensor>& bias, BFloat16* y,
             int64_t rows, int64_t N, int64_t K) {
  TORCH_CHECK(packed.scalar_type() == at::kBFloat16 && packed.dim() == 5 && packed.is_contiguous() &&
                  packed.size(1) * 2 == K && packed.size(0) * layerskip::kBlockRows >= N,
              "decoder block: a packed weight does not match its input width ", K, " or ", N, " outputs");
  TORCH_CHECK(!bias.has_value() || bias->numel() == N, "decoder block: a bias does not match ", N, " outputs");
  layerskip::bf16_matmul(x, packed.const_data_ptr<BFloat16>(), y, rows, N, K);
  add_bias(y, bias, rows, N);
}

// 16 bf16 values as float32
inline __m512 load16(const BFloat16* x, __mmask16 mask) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mask, x)), 16));
}

// float32 rounded to bf16 (round to nearest even) and back
inline __m512 round16(__m512 x) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(x)), 16));
}

// out[i] = bf16(bf16(silu(gate[i])) * up[i]) for i < n: F.silu(gate) * up in bf16
void swiglu(const BFloat16* gate, const BFloat16* up, BFloat16* out, int64_t n) {
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 mask = n - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - i)) - 1);
    const __m512 g = load16(gate + i, mask);
    const __m512 e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), g));
    const __m512 activated = round16(_mm512_div_ps(g, _mm512_add_ps(_mm512_set1_ps(1.0f), e)));
    _mm256_mask_storeu_epi16(out + i, mask, (__m256i)_mm512_cvtneps_pbh(_mm512_mul_ps(activated, load16(up + i, mask))));
  }
}

// hidden [rows, D] + delta [rows, D] as a bf16 addition
at::Tensor residual(const at::Tensor& hidden, const BFloat16* delta) {
  at::Tensor out = at::empty_like(hidden);
  const BFloat16* h = hidden.const_data_ptr<BFloat16>();
  BFloat16* o = out.mutable_data_ptr<BFloat16>();
  for (int64_t i = 0; i < hidden.numel(); ++i) o[i] = BFloat16(static_cast<float>(h[i]) + static_cast<float>(delta[i]));
  return out;
}

void check_hidden(const at::Tensor& hidden, const at::Tensor& norm_weight) {
  TORCH_CHECK(hidden.scalar_type() == at::kBFloat16 && hidden.dim() == 3 && hidden.is_contiguous(),
              "decoder block: hidden must be a contiguous [B, T, D] bfloat16 tensor");
  TORCH_CHECK(norm_weight.numel() == hidden.size(2), "decoder block: the norm weight does not match D = ", hidden.size(2));
}

at::Tensor attention_block(const at::Tensor& hidden, const at::Tensor& norm_weight, double eps, const at::Tensor& qkv_packed,
                           const std::optional<at::Tensor>& qkv_bias, const at::Tensor& o_packed,
                           const std::optional<at::Tensor>& o_bias, const at::Tensor& cos, const at::Tensor& sin,
                           at::Tensor& keys, at::Tensor& values, const at::Tensor& slots, const at::Tensor& mask,
                           int64_t n_heads, double scale) {
  check_hidden(hidden, norm_weight);
  const int64_t B = hidden.size(0), T = hidden.size(1), D = hidden.size(2);
  TORCH_CHECK(keys.scalar_type() == at::kFloat && keys.dim() == 4 && keys.is_contiguous() && values.sizes() == keys.sizes() &&
                  values.scalar_type() == at::kFloat && values.is_contiguous() && keys.size(0) == B,
              "decoder block: keys and values must be contiguous [B, KV, C, hd] float32 cache buffers");
  const int64_t KV = keys.size(1), C = keys.size(2), hd = keys.size(3), H = n_heads;
  TORCH_CHECK(H > 0 && H % KV == 0 && layerskip::attends(hd) && hd % 2 == 0,
              "decoder block: ", H, " heads over ", KV, " key/value heads of size ", hd, " are not supported");
  TORCH_CHECK(cos.scalar_type() == at::kFloat && sin.scalar_type() == at::kFloat && cos.numel() == B * T * hd &&
                  sin.numel() == B * T * hd,
              "decoder block: cos and sin must be [B, T, 1, hd] float32");
  TORCH_CHECK(slots.scalar_type() == at::kLong && (slots.numel() == T || slots.numel() == B * T),
              "decoder block: slots must be [T] or [B, T] int64");
  const bool row_slots = slots.numel() == B * T && B > 1;
  TORCH_CHECK(mask.scalar_type() == at::kFloat && mask.numel() == B * T * C, "decoder block: mask must be [B, 1, T, C] float32");
  const int64_t rows = B * T, W = (H + 2 * KV) * hd, half = hd / 2;

  std::vector<BFloat16> normed(rows * D), qkv(rows * W), attended(rows * H * hd), projected(rows * D);
  rms_norm(hidden, norm_weight, normed.data(), eps);
  project(normed.data(), qkv_packed, qkv_bias, qkv.data(), rows, W, D);

  // rotary embedding (x cos + roll(x, hd/2) sin, sin sign-folded: layerskip.model.rope) of queries and keys in
  // float32; keys and values go to their cache slots
  const at::Tensor cc = cos.contiguous(), sc = sin.contiguous(), sl = slots.contiguous(), mc = mask.contiguous();
  const float *cp = cc.const_data_ptr<float>(), *sp = sc.const_data_ptr<float>();
  const int64_t* slot = sl.const_data_ptr<int64_t>();
  float *kp = keys.mutable_data_ptr<float>(), *vp = values.mutable_data_ptr<float>();
  std::vector<float> q(rows * H * hd);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t t = 0; t < T; ++t) {
      const int64_t r = b * T + t, to = slot[row_slots ? r : t];
      TORCH_CHECK(0 <= to && to < C, "decoder block: slot ", to, " outside the cache's ", C);
      const float *c = cp + r * hd, *s = sp + r * hd;
      for (int64_t h = 0; h < H + 2 * KV; ++h) {
        const BFloat16* x = qkv.data() + r * W + h * hd;
        float* dst = h < H ? q.data() + (r * H + h) * hd
                           : (h < H + KV ? kp : vp) + ((b * KV + (h - H) % KV) * C + to) * hd;
        for (int64_t d = 0; d < hd; ++d) {
          const float xd = static_cast<float>(x[d]);
          dst[d] = h < H + KV ? xd * c[d] + static_cast<float>(x[(d + half) % hd]) * s[d] : xd;
        }
      }
    }
  }

  std::vector<float> out(rows * H * hd);
  layerskip::attend_rows(q.data(), T * H * hd, H * hd, hd, kp, vp, mc.const_data_ptr<float>(), out.data(), B, T, H, KV, C,
                         hd, static_cast<float>(scale));
  for (int64_t i = 0; i < rows * H * hd; ++i) attended[i] = BFloat16(out[i]);
  project(attended.data(), o_packed, o_bias, projected.data(), rows, D, H * hd);
  return residual(hidden, projected.data());
}

at::Tensor mlp_block(const at::Tensor& hidden, const at::Tensor& norm_weight, double eps, const at::Tensor& gate_up_packed,
                     const std::optional<at::Tensor>& gate_up_bias, const at::Tensor& down_packed,
                     const std::optional<at::Tensor>& down_bias, int64_t intermediate) {
  check_hidden(hidden, norm_weight);
  const int64_t rows = hidden.size(0) * hidden.size(1), D = hidden.size(2), I = intermediate;
  std::vector<BFloat16> normed(rows * D), gate_up(rows * 2 * I), product(rows * I), projected(rows * D);
  rms_norm(hidden, norm_weight, normed.data(), eps);
  project(normed.data(), gate_up_packed, gate_up_bias, gate_up.data(), rows, 2 * I, D);
  for (int64_t r = 0; r < rows; ++r) swiglu(gate_up.data() + r * 2 * I, gate_up.data() + r * 2 * I + I, product.data() + r * I, I);
  project(product.data(), down_packed, down_bias, projected.data(), rows, D, I);
  return residual(hidden, projected.data());
}

// Gemma 3's RMSNorm, (1 + w) already added: out[r, :] = bf16(x[r, :] * rsqrt(mean(x[r, :]^2) + eps) * scale[r % H, :])
// for x [..., D] bf16 (its flattened rows r) and scale [H, D] float32, float32 inside. H > 1 normalises
// q and k heads in one call ([..., heads + kv_heads, head_dim] with the q scale repeated per q head).
at::Tensor gemma_rms_norm(const at::Tensor& x, const at::Tensor& scale, double eps) {
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 && x.is_contiguous() && x.dim() >= 1,
              "gemma_rms_norm: x must be a contiguous bfloat16 tensor");
  TORCH_CHECK(scale.scalar_type() == at::kFloat && scale.is_contiguous() && scale.dim() == 2 && scale.size(1) == x.size(-1),
              "gemma_rms_norm: scale must be a contiguous float32 [H, D] tensor with D = x.size(-1)");
  const int64_t D = x.size(-1), H = scale.size(0), rows = D ? x.numel() / D : 0;
  TORCH_CHECK(H > 0 && rows % H == 0, "gemma_rms_norm: the rows of x must be a multiple of the scale's H");
  at::Tensor out = at::empty_like(x);
  const BFloat16* xp = x.const_data_ptr<BFloat16>();
  const float* sp = scale.const_data_ptr<float>();
  BFloat16* op = out.data_ptr<BFloat16>();
  at::parallel_for(0, rows, 64, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) rms_norm_rows(xp + r * D, sp + (r % H) * D, op + r * D, 1, D, eps);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(layerskip, m) {
  m.def("gemma_rms_norm(Tensor x, Tensor scale, float eps) -> Tensor");
  m.def(
      "attention_block(Tensor hidden, Tensor norm_weight, float eps, Tensor qkv_packed, Tensor? qkv_bias, "
      "Tensor o_packed, Tensor? o_bias, Tensor cos, Tensor sin, Tensor(a!) keys, Tensor(b!) values, Tensor slots, "
      "Tensor mask, int n_heads, float scale) -> Tensor");
  m.def(
      "mlp_block(Tensor hidden, Tensor norm_weight, float eps, Tensor gate_up_packed, Tensor? gate_up_bias, "
      "Tensor down_packed, Tensor? down_bias, int intermediate) -> Tensor");
}

TORCH_LIBRARY_IMPL(layerskip, CPU, m) {
  m.impl("attention_block", &attention_block);
  m.impl("mlp_block", &mlp_block);
  m.impl("gemma_rms_norm", &gemma_rms_norm);
}
