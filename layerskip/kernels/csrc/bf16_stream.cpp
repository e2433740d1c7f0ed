// Weight-streaming bf16 matrix products for decoding on CPUs with AVX-512 BF16.
//
// A decoding step multiplies a few token rows (1 in decode and drafting, k+1 <= 12 in a verification)
// by every weight of the model once: it is bound by how fast the weights stream from memory, not by
// arithmetic. These kernels read each weight byte exactly once, in address order, whatever the number
// of tokens, and keep every partial sum in registers:
//
//   pack_bf16(w [N, K])                -> packed [ceil(N/32), K/2, 2, 16, 2] (rows padded with zeros)
//   bf16_linear(x [..., K], packed, N) -> y [..., N] = x @ w.T, bf16, fp32 accumulation
//
// The packed layout is the VNNI one of `vdpbf16ps`: one 64-byte load holds 16 output rows x 2
// consecutive k, multiplied by the broadcast pair (x[t, k], x[t, k+1]) into 16 fp32 sums, so no
// horizontal reduction is needed. A block of 32 rows is two such accumulators per token; blocks are
// split between threads. Tokens are taken 12 at a time (24 accumulators); a longer input (a prompt's
// prefill) runs the token groups over each block while the block is still in L1/L2, so the weights are
// still read from memory once. Every output element is the same sequence of operations whatever the
// number of tokens, so a one-token step and a (k+1)-token verification give the same values bit for bit.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <immintrin.h>

#include "kernels.h"

#if !defined(__AVX512BF16__) || !defined(__AVX512BW__)
#error "bf16_stream needs a CPU with AVX-512 BF16 (built with -march=native)"
#endif

namespace {

using layerskip::kBlockRows;  // output rows of one packed block: two 16-lane accumulators
constexpr int kMaxTokens = 12;      // tokens of one register tile: 2 x 12 accumulators of 32

// y[t, n0 : n0 + 32] for M tokens x[t, :], from the packed block `pb` [K/2, 2, 16, 2]
template <int M>
void block_tile(const at::BFloat16* x, const at::BFloat16* pb, at::BFloat16* y, int64_t N, int64_t K, int64_t n0) {
  __m512 acc[2][M];
  for (int t = 0; t < M; ++t) {
    acc[0][t] = _mm512_setzero_ps();
    acc[1][t] = _mm512_setzero_ps();
  }
  const int64_t pairs = K / 2;
  const int32_t* x_pairs = reinterpret_cast<const int32_t*>(x);
  for (int64_t p = 0; p < pairs; ++p) {
    const __m512bh lo = (__m512bh)_mm512_loadu_si512(pb + p * 64);
    const __m512bh hi = (__m512bh)_mm512_loadu_si512(pb + p * 64 + 32);
    for (int t = 0; t < M; ++t) {
      const __m512bh xt = (__m512bh)_mm512_set1_epi32(x_pairs[t * pairs + p]);
      acc[0][t] = _mm512_dpbf16_ps(acc[0][t], lo, xt);
      acc[1][t] = _mm512_dpbf16_ps(acc[1][t], hi, xt);
    }
  }
  for (int h = 0; h < 2; ++h) {
    const int64_t start = n0 + 16 * h;
    if (start >= N) break;
    const int64_t left = N - start;
    const __mmask16 mask = left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1);
    for (int t = 0; t < M; ++t)
      _mm256_mask_storeu_epi16(y + t * N + start, mask, (__m256i)_mm512_cvtneps_pbh(acc[h][t]));
  }
}

void block_all_tokens(const at::BFloat16* x, const at::BFloat16* pb, at::BFloat16* y, int64_t T, int64_t N,
                      int64_t K, int64_t n0) {
  for (int64_t t0 = 0; t0 < T; t0 += kMaxTokens) {
    const at::BFloat16* xt = x + t0 * K;
    at::BFloat16* yt = y + t0 * N;
    switch (std::min<int64_t>(T - t0, kMaxTokens)) {
#define LAYERSKIP_TILE(m) \
  case m:                 \
    block_tile<m>(xt, pb, yt, N, K, n0); \
    break;
      LAYERSKIP_TILE(1) LAYERSKIP_TILE(2) LAYERSKIP_TILE(3) LAYERSKIP_TILE(4) LAYERSKIP_TILE(5) LAYERSKIP_TILE(6)
      LAYERSKIP_TILE(7) LAYERSKIP_TILE(8) LAYERSKIP_TILE(9) LAYERSKIP_TILE(10) LAYERSKIP_TILE(11) LAYERSKIP_TILE(12)
#undef LAYERSKIP_TILE
    }
  }
}

at::Tensor pack_bf16(const at::Tensor& weight) {
  TORCH_CHECK(weight.dim() == 2 && weight.scalar_type() == at::kBFloat16, "pack_bf16: a 2-d bfloat16 weight");
  const int64_t N = weight.size(0), K = weight.size(1);
  TORCH_CHECK(K % 2 == 0, "pack_bf16: the input width must be even, got ", K);
  const int64_t blocks = (N + kBlockRows - 1) / kBlockRows;
  at::Tensor padded = at::zeros({blocks * kBlockRows, K}, weight.options());
  padded.narrow(0, 0, N).copy_(weight);
  return padded.view({blocks, 2, 16, K / 2, 2}).permute({0, 3, 1, 2, 4}).contiguous();
}

at::Tensor bf16_linear(const at::Tensor& x, const at::Tensor& packed, int64_t N) {
  const int64_t K = x.size(-1);
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 && packed.scalar_type() == at::kBFloat16, "bf16_linear: bfloat16 tensors");
  TORCH_CHECK(packed.dim() == 5 && packed.size(1) * 2 == K && packed.size(0) * kBlockRows >= N && packed.is_contiguous(),
              "bf16_linear: the packed weight does not match the input width ", K, " or ", N, " outputs");
  const at::Tensor rows = x.reshape({-1, K}).contiguous();
  const int64_t T = rows.size(0);
  std::vector<int64_t> sizes = x.sizes().vec();
  sizes.back() = N;
  at::Tensor y = at::empty({T, N}, x.options());
  if (T == 0) return y.view(sizes);
  layerskip::bf16_matmul(rows.const_data_ptr<at::BFloat16>(), packed.const_data_ptr<at::BFloat16>(),
                         y.mutable_data_ptr<at::BFloat16>(), T, N, K);
  return y.view(sizes);
}

}  // namespace

void layerskip::bf16_matmul(const at::BFloat16* x, const at::BFloat16* packed, at::BFloat16* y, int64_t T, int64_t N,
                            int64_t K) {
  const int64_t blocks = (N + kBlockRows - 1) / kBlockRows;
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) block_all_tokens(x, packed + b * kBlockRows * K, y, T, N, K, b * kBlockRows);
  });
}

TORCH_LIBRARY(layerskip, m) {
  m.def("pack_bf16(Tensor weight) -> Tensor");
  m.def("bf16_linear(Tensor x, Tensor packed, int out_features) -> Tensor");
}

TORCH_LIBRARY_IMPL(layerskip, CPU, m) {
  m.impl("pack_bf16", &pack_bf16);
  m.impl("bf16_linear", &bf16_linear);
}
