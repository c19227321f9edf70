// The gated delta rule as transformers' reference computes it (torch_chunk_gated_delta_rule and
// torch_recurrent_gated_delta_rule in modeling_qwen3_next.py), in float32.
#include "delta_rule.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace aios::backbone {

namespace {

struct Prepared {
  at::Tensor q, k, v, g, beta;  // [B,H,T,dk], [B,H,T,dk], [B,H,T,dv], [B,H,T], [B,H,T] float32
  at::Tensor state;             // [B,H,dk,dv] float32
};

at::Tensor l2_normalized(const at::Tensor& x) { return x * at::rsqrt((x * x).sum(-1, /*keepdim=*/true) + 1e-6); }

Prepared prepare(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& g,
                 const at::Tensor& beta, const at::Tensor& state) {
  const int64_t B = v.size(0), Hv = v.size(2), dk = k.size(3), dv = v.size(3), groups = Hv / k.size(2);
  auto heads = [&](const at::Tensor& x) {  // [B,T,Hk,d] -> [B,Hv,T,d] float32
    const at::Tensor y = groups == 1 ? x : x.repeat_interleave(groups, 2);
    return y.transpose(1, 2).to(at::kFloat).contiguous();
  };
  Prepared p;
  p.q = l2_normalized(heads(q)) * (1.0 / std::sqrt(static_cast<double>(dk)));
  p.k = l2_normalized(heads(k));
  p.v = v.transpose(1, 2).to(at::kFloat).contiguous();
  p.g = g.transpose(1, 2).contiguous();
  p.beta = beta.transpose(1, 2).to(at::kFloat).contiguous();
  p.state = state.defined() ? state : at::zeros({B, Hv, dk, dv}, p.v.options());
  return p;
}

}  // namespace

std::pair<at::Tensor, at::Tensor> chunked_delta_rule(const at::Tensor& q_in, const at::Tensor& k_in,
                                                     const at::Tensor& v_in, const at::Tensor& g_in,
                                                     const at::Tensor& beta_in, const at::Tensor& state_in,
                                                     int64_t chunk) {
  Prepared p = prepare(q_in, k_in, v_in, g_in, beta_in, state_in);
  const int64_t B = p.v.size(0), H = p.v.size(1), T = p.v.size(2), dv = p.v.size(3);
  const int64_t C = std::min(chunk, T);  // a short pass is one chunk, unpadded
  const int64_t pad = (C - T % C) % C, N = (T + pad) / C;
  auto chunks = [&](const at::Tensor& x) {  // [B,H,T,d] -> [B,H,N,C,d], zero-padded
    return at::constant_pad_nd(x, {0, 0, 0, pad}).view({B, H, N, C, x.size(3)});
  };
  // Padded positions get β = 0 and g = 0: they change nothing.
  const at::Tensor beta = at::constant_pad_nd(p.beta, {0, pad}).view({B, H, N, C});
  const at::Tensor decay = at::constant_pad_nd(p.g, {0, pad}).view({B, H, N, C}).cumsum(-1);  // log decay since the chunk began
  const at::Tensor q = chunks(p.q), k = chunks(p.k), v = chunks(p.v);
  const at::Tensor k_beta = k * beta.unsqueeze(-1), v_beta = v * beta.unsqueeze(-1);
  // exp(decay_i - decay_j) for j <= i, 0 above the diagonal: [B,H,N,C,C]
  const at::Tensor upper = at::ones({C, C}, p.v.options().dtype(at::kBool)).triu(1);
  const at::Tensor pairwise =
      (decay.unsqueeze(-1) - decay.unsqueeze(-2)).masked_fill(upper, -std::numeric_limits<float>::infinity()).exp();
  const at::Tensor system = at::matmul(k_beta, k.transpose(-1, -2)) * pairwise;  // I + its strict lower part, solved below
  const at::Tensor intra = at::matmul(q, k.transpose(-1, -2)) * pairwise;        // the chunk's own attention
  // One solve for both right-hand sides: the values written and the keys that read the old state.
  const auto solved = at::linalg_solve_triangular(system, at::cat({v_beta, k_beta * decay.exp().unsqueeze(-1)}, -1),
                                                  /*upper=*/false, /*left=*/true, /*unitriangular=*/true)
                          .split_with_sizes({v.size(-1), k.size(-1)}, -1);
  const at::Tensor& values = solved[0];
  const at::Tensor& keys_read = solved[1];
  const at::Tensor q_decayed = q * decay.exp().unsqueeze(-1);
  const at::Tensor last = decay.narrow(-1, C - 1, 1);                            // [B,H,N,1]
  const at::Tensor k_decayed = k * (last - decay).exp().unsqueeze(-1);
  const at::Tensor chunk_decay = last.exp().unsqueeze(-1);                       // [B,H,N,1,1]

  at::Tensor state = p.state;
  std::vector<at::Tensor> outs;
  outs.reserve(static_cast<std::size_t>(N));
  for (int64_t i = 0; i < N; ++i) {
    const at::Tensor fresh = values.select(2, i) - at::matmul(keys_read.select(2, i), state);  // [B,H,C,dv]
    outs.push_back(at::matmul(q_decayed.select(2, i), state) + at::matmul(intra.select(2, i), fresh));
    state = state * chunk_decay.select(2, i) + at::matmul(k_decayed.select(2, i).transpose(-1, -2), fresh);
  }
  at::Tensor out = at::stack(outs, 2).view({B, H, N * C, dv}).narrow(2, 0, T);
  return {out.transpose(1, 2), state};
}

std::pair<at::Tensor, at::Tensor> recurrent_delta_rule(const at::Tensor& q_in, const at::Tensor& k_in,
                                                       const at::Tensor& v_in, const at::Tensor& g_in,
                                                       const at::Tensor& beta_in, const at::Tensor& state_in) {
  Prepared p = prepare(q_in, k_in, v_in, g_in, beta_in, state_in);
  const int64_t T = p.v.size(2);
  at::Tensor state = p.state;
  std::vector<at::Tensor> outs;
  outs.reserve(static_cast<std::size_t>(T));
  for (int64_t t = 0; t < T; ++t) {
    const at::Tensor q = p.q.select(2, t), k = p.k.select(2, t), v = p.v.select(2, t);  // [B,H,d]
    state = state * p.g.select(2, t).exp().unsqueeze(-1).unsqueeze(-1);
    const at::Tensor remembered = (state * k.unsqueeze(-1)).sum(-2);                     // Sᵀk [B,H,dv]
    const at::Tensor delta = (v - remembered) * p.beta.select(2, t).unsqueeze(-1);
    state = state + k.unsqueeze(-1) * delta.unsqueeze(-2);
    outs.push_back((state * q.unsqueeze(-1)).sum(-2));
  }
  return {at::stack(outs, 1), state};
}

}  // namespace aios::backbone
