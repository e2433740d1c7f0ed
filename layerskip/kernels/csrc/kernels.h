// What the kernels of layerskip/kernels/csrc share: the raw-pointer entry points of the weight-streaming bf16
// matrix product (bf16_stream.cpp) and of the cached attention (cached_attention.cpp), which
// decoder_block.cpp composes into whole sublayers.
#pragma once

#include <ATen/ATen.h>

#include <immintrin.h>

#include <cstdint>
#include <limits>

namespace layerskip {

// rows of one packed weight block (pack_bf16: [ceil(N/32), K/2, 2, 16, 2])
constexpr int64_t kBlockRows = 32;

// y [T, N] = x [T, K] @ w.T for w packed by pack_bf16; bf16 in and out, fp32 accumulation, the blocks
// split between threads (AVX-512 BF16).
// Each output element is the same sequence of operations whatever T is.
void bf16_matmul(const at::BFloat16* x, const at::BFloat16* packed, at::BFloat16* y, int64_t T, int64_t N,
                 int64_t K);

// exp(x) for 16 floats: 2^(x log2 e) = 2^n * 2^f, |f| <= 1/2, 2^f by its degree-7 Taylor polynomial
// (relative error < 1e-7); x = -inf gives 0.
inline __m512 exp16(__m512 x) {
  const __mmask16 hidden = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-std::numeric_limits<float>::infinity()), _CMP_EQ_OQ);
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
  const __m512 t = _mm512_mul_ps(x, _mm512_set1_ps(1.4426950408889634f));
  const __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_mul_ps(_mm512_sub_ps(t, n), _mm512_set1_ps(0.6931471805599453f));  // (t - n) ln 2
  __m512 p = _mm512_set1_ps(1.0f / 5040.0f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f / 720.0f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f / 120.0f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f / 24.0f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f / 6.0f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
  return _mm512_maskz_mov_ps(~hidden, _mm512_scalef_ps(p, n));
}

// Whether attend_rows supports head size D (a multiple of 16 up to 128, or 256).
bool attends(int64_t D);

// out [B, T, H, D] (contiguous) = softmax(q k^T * scale + mask) v per (row, query, head), float32:
// q [B, T, H, D] with strides (sb, st, sh, 1), k and v [B, KV, C, D] contiguous, mask [B, 1, T, C]
// contiguous and additive (0 visible, -inf hidden: never read). Query head h reads key/value head
// h / (H / KV). Each output row is the same sequence of operations whatever T is.
void attend_rows(const float* q, int64_t sb, int64_t st, int64_t sh, const float* k, const float* v, const float* mask,
                 float* out, int64_t B, int64_t T, int64_t H, int64_t KV, int64_t C, int64_t D, float scale);

}  // namespace layerskip
