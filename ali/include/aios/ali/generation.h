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
//
// Routed generation: GenerateOptions::routes registers a Decoder for a pair of start/end tokens
// (such as an extension's <sox>/<eox>). After the classifier emits a route's start token in a row,
// that row's following positions go to the decoder instead of the classifier: at each step the
// decoder gets the row's final hidden state and returns what to feed at the next position (a
// latent or a token) and an output that the step reports. When the decoder says the span is done,
// the end token is fed and the row returns to the classifier. Other rows go on sampling in the
// same batched step.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <vector>

#include <ATen/ATen.h>

#include "aios/ali/extension.h"
#include "aios/export.h"

AIOS_EXPORT_BEGIN

namespace aios::ali {

struct SamplingOptions {
  double temperature = 0.0;      // 0: greedy (the most likely token; the first of equals)
  int64_t top_k = 0;             // > 0: sample among the k most likely tokens only
  double top_p = 1.0;            // < 1: among the most likely tokens whose probability reaches top_p
  std::optional<uint64_t> seed;  // the same seed, prompt and options give the same tokens
};

class Session;

// What a decoder returns for one routed position of one row.
struct DecoderStep {
  // What the step reports for this row (GenerationStep::outputs): anything the decoder made of the
  // position (a value, a patch, a frame), any shape, dtype and device; may stay undefined.
  at::Tensor output;
  // What to feed at the row's next position unless `done`: a latent [D] (or [1,D]; any floating
  // dtype and device, converted to the backbone's; finite) or, when no latent is given, a token id
  // in [0, V+K) (embedded; it never starts a route).
  at::Tensor latent;
  int64_t token = -1;
  // The span ends here: the route's end token is fed next (latent and token must stay unset) and
  // the row returns to the classifier.
  bool done = false;
};

// A downstream module that takes over a row between a route's start and end tokens. One decoder
// may serve several rows of a batch (by `row`) and several routes. Calls come from the thread
// that runs the generation, one at a time, in row order within a step.
class Decoder {
 public:
  virtual ~Decoder() = default;
  // A row enters the route: called before its first step() of the span, so that per-row state can
  // be reset (a span cut short by max_new_tokens or a stop gets no other notice).
  virtual void begin(int64_t /*row*/) {}
  // One routed position: `hidden` is the row's final hidden state [D] (the backbone's dtype and
  // device; read it, do not write it). An exception thrown here ends the generation: next() throws it,
  // and later calls return nothing.
  virtual DecoderStep step(int64_t row, const at::Tensor& hidden) = 0;
};

struct Route {
  int64_t start_id = -1;  // a token in [0, V+K) that the classifier may emit; unique among routes
  int64_t end_id = -1;    // a token in [0, V+K), not start_id; fed when the decoder is done
  std::shared_ptr<Decoder> decoder;
};

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
  // A span in progress when a generation ends is not resumed by the next call.
  std::shared_ptr<Session> session;
  // Decoders for spans between start and end tokens (see the top of this file). A routed position
  // counts towards max_new_tokens like a token; stop_ids apply to tokens fed by the decoder and to
  // the end token.
  std::vector<Route> routes;
};

struct GenerationStep {
  static constexpr int64_t kFinished = -1;  // ids of a row that had finished before the step
  static constexpr int64_t kLatent = -2;    // ids of a routed row whose decoder fed a latent

  int64_t index = 0;    // 0 for the first generated token
  // int64 [B] on CPU: each row's token, i.e. what its next position is fed: the classifier's pick,
  // or in a routed row the decoder's token, the route's end token once the decoder is done, or
  // kLatent when it fed a latent; kFinished for a row that had finished before.
  at::Tensor ids;
  at::Tensor hidden;    // [B,D] on the backbone's device: the final hidden state each token was read from
  at::Tensor finished;  // bool [B] on CPU: rows that are done after this step
  // int64 [B] on CPU: the index in GenerateOptions::routes of the route whose decoder took this
  // position, -1 where the classifier did (the step that emits a start token included).
  at::Tensor routes;
  // B entries: DecoderStep::output of each routed row, undefined for the other rows.
  std::vector<at::Tensor> outputs;
};

struct GenerationResult {
  at::Tensor ids;      // int64 [B,N] on CPU (N steps run), -1 after a row finished, -2 where a latent was fed
  at::Tensor hidden;   // [B,N,D]: GenerationStep::hidden of every step (the downstream latents)
  at::Tensor lengths;  // int64 [B] on CPU: positions generated per row (a stop token and routed positions included)
  at::Tensor routes;   // int64 [B,N] on CPU: GenerationStep::routes of every step
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
AIOS_EXPORT_END
