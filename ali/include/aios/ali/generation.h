// aios/ali/generation.h — generation with a KV cache from a latent prompt.
//
// The prompt is latents [B,T,D]: token embeddings, caller latents (a projected image, gist
// latents) or any mix. Its positions are run once through the backbone into a KV cache (the
// prefill); then each step classifies the last hidden state of every row, picks a token, embeds it
// and runs that one position against the cache. Steps come out one at a time (Generation::next,
// a Python iterator) or all at once (Backbone::generate, with an optional callback per step).
//
// Rows may have prompts of different lengths: pad them (left or right) and mark real positions in
// `mask`. Each row's first token is predicted from its last real prompt position; the positions of
// generated tokens continue from the largest prompt position of the row.
//
// A Session keeps the cache between calls: a generation given a session appends its prompt and
// its tokens to the session's cache, so the next call continues the same context (the context
// window as the system's memory) instead of running it again.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <vector>

#include <ATen/ATen.h>

#include "aios/ali/extension.h"

namespace aios::ali {

struct SamplingOptions {
  double temperature = 0.0;      // 0: greedy (the most likely token; the first of equals)
  int64_t top_k = 0;             // > 0: sample among the k most likely tokens only
  double top_p = 1.0;            // < 1: among the most likely tokens whose probability reaches top_p
  std::optional<uint64_t> seed;  // the same seed, prompt and options give the same tokens
};

class Session;

struct GenerateOptions {
  // Prompt positions, int64 [B,T] or [T]. Default: 0..T-1, or continuing the session's rows.
  std::optional<at::Tensor> positions;
  // Prompt key padding [B,T] (true or non-zero = a real position). Default: all real. Each row
  // needs at least one real position.
  std::optional<at::Tensor> mask;
  int64_t max_new_tokens = 64;
  SamplingOptions sampling;
  // A row ends after it emits one of these (the stop token is returned) or reaches max_positions.
  std::vector<int64_t> stop_ids;
  // Tokens of this extension can be generated (logits over V+K) and are embedded by its rows.
  std::shared_ptr<const Extension> extension;
  // Continue this session (its batch size must equal B) and leave it holding prompt and tokens.
  std::shared_ptr<Session> session;
};

struct GenerationStep {
  int64_t index = 0;    // 0 for the first generated token
  at::Tensor ids;       // int64 [B] on CPU: each row's token, -1 for a row that had finished before
  at::Tensor hidden;    // [B,D] on the backbone's device: the final hidden state each token was read from
  at::Tensor finished;  // bool [B] on CPU: rows that are done after this step
};

struct GenerationResult {
  at::Tensor ids;      // int64 [B,N] on CPU (N steps run), -1 after a row finished
  at::Tensor hidden;   // [B,N,D]: GenerationStep::hidden of every step (the downstream latents)
  at::Tensor lengths;  // int64 [B] on CPU: tokens generated per row (a stop token included)
};

// A KV cache kept between generations. Made by Backbone::new_session(); used by one call at a time.
class Session {
 public:
  virtual ~Session() = default;
  virtual int64_t batch_size() const = 0;  // 0 until first used
  virtual int64_t length() const = 0;      // cached slots per row (padding included)
  // int64 [B]: the position a row's next token takes.
  virtual at::Tensor next_positions() const = 0;
  virtual std::size_t bytes() const = 0;   // memory the cache holds
};

// A generation in progress.
class Generation {
 public:
  virtual ~Generation() = default;
  // The next step, or nothing once every row has finished. Throws aios::Error as the call that
  // started the generation would.
  virtual std::optional<GenerationStep> next() = 0;
};

// Runs `generation` to the end, calling on_step (when given) after each step; on_step returning
// false stops early. The result holds every step run.
GenerationResult run_generation(Generation& generation, const std::function<bool(const GenerationStep&)>& on_step = {});

}  // namespace aios::ali
