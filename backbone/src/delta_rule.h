// Internal: the gated delta rule, Gated DeltaNet's recurrence, in its two equal forms.
//
// Per head and position t, with q and k L2-normalised and q scaled by dk^-1/2:
//   S_t = exp(g_t) S_{t-1} + k_t (β_t (v_t − exp(g_t) S_{t-1}ᵀ k_t))ᵀ,   o_t = S_tᵀ q_t
// S [dk,dv] is the state a cache keeps between passes. A position with g = 0 and β = 0 leaves it
// unchanged: that is how padding is skipped.
#pragma once

#include <utility>

#include <ATen/ATen.h>

namespace aios::backbone {

// q, k [B,T,Hk,dk] and v [B,T,Hv,dv] (Hv % Hk == 0: each query/key head serves Hv/Hk consecutive
// value heads) in any float dtype; g, beta [B,T,Hv] float32 (g <= 0, the log of the decay); state
// [B,Hv,dk,dv] float32 or undefined (zeros). Returns the outputs [B,T,Hv,dv] float32 and the final
// state [B,Hv,dk,dv] float32. Differentiable in q, k, v, g, beta and state.

// In chunks of `chunk` positions (the prompt form): within a chunk the updates are solved at once
// as a triangular system (the UT transform), between chunks the state carries over; cost linear
// in T.
std::pair<at::Tensor, at::Tensor> chunked_delta_rule(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                     const at::Tensor& g, const at::Tensor& beta,
                                                     const at::Tensor& state, int64_t chunk = 64);

// One position at a time (the decoding form).
std::pair<at::Tensor, at::Tensor> recurrent_delta_rule(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                       const at::Tensor& g, const at::Tensor& beta,
                                                       const at::Tensor& state);

}  // namespace aios::backbone
