// LocalBackbone's generation: sessions holding a KV cache, the decode loop, sampling, and the
// routing of spans to decoders.
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/grad_mode.h>
#include <cmath>
#include <limits>
#include <random>

#include <fmt/ranges.h>

#include "aios/backbone/kv_cache.h"
#include "aios/fail.h"
#include "impl.h"

namespace aios::local {

using ali::DecoderStep;
using ali::GenerateOptions;
using ali::Generation;
using ali::GenerationStep;
using ali::Route;
using ali::SamplingOptions;
using ali::Session;

namespace {

class LocalSession final : public Session {
 public:
  explicit LocalSession(const LocalBackbone* owner) : owner_(owner) {}

  int64_t batch_size() const override { return cache_.batch_size(); }
  int64_t length() const override { return cache_.length(); }
  at::Tensor next_positions() const override { return next_positions_.defined() ? next_positions_.cpu() : at::Tensor(); }
  std::size_t bytes() const override { return owner_->model().cache_bytes(cache_); }

  const LocalBackbone* owner_;
  backbone::KVCache cache_;
  at::Tensor next_positions_;  // int64 [B] on the backbone's device
};

// Keeps the logits a sampler may draw from: top-k, then top-p, as transformers' warpers do.
at::Tensor filtered(at::Tensor logits, const SamplingOptions& s) {
  if (s.top_k > 0 && s.top_k < logits.size(-1)) {
    const at::Tensor kth = std::get<0>(logits.topk(s.top_k, -1)).narrow(-1, s.top_k - 1, 1);
    logits = logits.masked_fill(logits.lt(kth), -INFINITY);
  }
  if (s.top_p < 1.0) {
    auto [sorted, order] = logits.sort(-1, /*descending=*/false);
    at::Tensor remove = sorted.softmax(-1).cumsum(-1).le(1.0 - s.top_p);
    remove.narrow(-1, remove.size(-1) - 1, 1).fill_(false);  // the most likely token always stays
    logits = logits.masked_fill(remove.scatter(-1, order, remove), -INFINITY);
  }
  return logits;
}

class LocalGeneration final : public Generation {
 public:
  LocalGeneration(const backbone::Model& model, std::shared_ptr<LocalSession> session, at::Tensor latents,
                  backbone::Attention attention, const GenerateOptions& options)
      : model_(model),
        session_(std::move(session)),
        latents_(std::move(latents)),
        attention_(std::move(attention)),
        options_(options),
        stop_(at::tensor(options.stop_ids, at::kLong)),
        vocabulary_(model.config().vocab_size + (options.extension ? options.extension->size() : 0)) {
    if (options.extension) {
      embedding_rows_ = options.extension->embedding_rows().detach();
      classifier_rows_ = options.extension->classifier_rows().detach();
    }
    uint64_t seed = 0;
    if (options.sampling.seed) {
      seed = *options.sampling.seed;
    } else {
      std::random_device entropy;
      seed = (static_cast<uint64_t>(entropy()) << 32) | entropy();
    }
    generator_ = at::make_generator<at::CPUGeneratorImpl>(seed);
    at::NoGradGuard no_grad;
    prefill();
  }

  std::optional<GenerationStep> next() override {
    at::NoGradGuard no_grad;
    if (finished_.all().item<bool>() || index_ >= options_.max_new_tokens) return std::nullopt;
    backbone::KVCache& cache = session_->cache_;
    const int64_t max_positions = model_.config().max_positions;

    // A row without room for another position is done before it emits anything.
    finished_ = finished_.logical_or(session_->next_positions_.cpu().ge(max_positions));
    at::Tensor ids = pick(model_.classify(hidden_, classifier_rows_).to(at::kFloat).cpu());  // [B]
    const at::Tensor emitting = finished_.logical_not();
    ids = at::where(emitting, ids, at::full_like(ids, GenerationStep::kFinished)).contiguous();
    GenerationStep step;
    step.routes = at::full_like(ids, -1);
    step.outputs.resize(static_cast<std::size_t>(ids.size(0)));
    // [B,D] latents the decoders feed, where `from_decoder` is set; undefined when none does.
    at::Tensor decoder_latents, from_decoder;
    if (!options_.routes.empty()) {
      try {
        route(ids, emitting, step, decoder_latents, from_decoder);
      } catch (...) {
        finished_.fill_(true);  // a decoder failed mid-step: the generation ends here, with its error
        throw;
      }
    }
    step.index = index_++;
    step.ids = ids;
    step.hidden = hidden_;
    finished_ = finished_.logical_or(at::isin(ids, stop_)).logical_or(
        at::full_like(finished_, index_ >= options_.max_new_tokens));
    step.finished = finished_.clone();

    // Run the new tokens (and latents) against the cache: the next step reads their hidden states,
    // and a session keeps them for the next call.
    if (!finished_.all().item<bool>() || options_.session) {
      const c10::Device device = model_.device();
      const at::Tensor valid = emitting.to(device).unsqueeze(1);                        // [B,1]
      const at::Tensor feed = ids.clamp_min(0).to(device).unsqueeze(1);                  // [B,1]
      backbone::Attention attention;
      attention.positions = session_->next_positions_.unsqueeze(1);
      attention.key_padding = valid;
      at::Tensor latents = model_.embed(feed, embedding_rows_);                          // [B,1,D]
      if (decoder_latents.defined()) {
        latents = at::where(from_decoder.to(device).view({-1, 1, 1}), decoder_latents.unsqueeze(1), latents);
      }
      hidden_ = model_.forward(latents, attention, {}, nullptr, &cache).select(1, 0);   // [B,D]
      session_->next_positions_ = session_->next_positions_ + valid.squeeze(1).to(at::kLong);
    }
    return step;
  }

 private:
  // Hands the routed rows to their decoders and enters the rows that emitted a start token.
  // ids: int64 [B] on CPU, the classifier's picks; rewritten for routed rows.
  void route(at::Tensor& ids, const at::Tensor& emitting, GenerationStep& step, at::Tensor& decoder_latents,
             at::Tensor& from_decoder) {
    const int64_t B = ids.size(0), D = hidden_.size(1);
    int64_t* id = ids.data_ptr<int64_t>();
    int64_t* routes = step.routes.data_ptr<int64_t>();
    const at::Tensor emit = emitting.contiguous();
    const bool* emits = emit.data_ptr<bool>();
    for (int64_t b = 0; b < B; ++b) {
      int64_t& active = active_[static_cast<std::size_t>(b)];
      if (!emits[b]) {
        active = -1;
        continue;
      }
      if (active < 0) {  // the classifier picked: a start token opens its route from the next step on
        for (std::size_t r = 0; r < options_.routes.size(); ++r) {
          if (options_.routes[r].start_id == id[b]) {
            active = static_cast<int64_t>(r);
            begun_[static_cast<std::size_t>(b)] = false;
          }
        }
        continue;
      }
      const Route& route = options_.routes[static_cast<std::size_t>(active)];
      const std::string field = fmt::format("routes[{}].decoder", active);
      if (!begun_[static_cast<std::size_t>(b)]) {
        route.decoder->begin(b);
        begun_[static_cast<std::size_t>(b)] = true;
      }
      DecoderStep out = route.decoder->step(b, hidden_.select(0, b));
      routes[b] = active;
      step.outputs[static_cast<std::size_t>(b)] = out.output;
      if (out.done) {
        if (out.latent.defined() || out.token >= 0) {
          fail(ErrorCode::kInvalidArgument, field, "expected no latent or token with done (the end token {} is fed)",
               route.end_id);
        }
        id[b] = route.end_id;
        active = -1;
      } else if (out.latent.defined()) {
        const at::Tensor& latent = out.latent;
        if (!(latent.sizes() == at::IntArrayRef{D} || latent.sizes() == at::IntArrayRef{1, D}) ||
            !at::isFloatingType(latent.scalar_type())) {
          fail(ErrorCode::kInvalidArgument, field, "expected a floating latent [{}] for row {}, got {} [{}]", D, b,
               c10::toString(latent.scalar_type()), fmt::join(latent.sizes(), ","));
        }
        if (!latent.isfinite().all().item<bool>()) {
          fail(ErrorCode::kInvalidArgument, field, "expected a finite latent for row {}", b);
        }
        if (!decoder_latents.defined()) {
          decoder_latents = at::zeros({B, D}, hidden_.options());
          from_decoder = at::zeros({B}, at::kBool);
        }
        decoder_latents.select(0, b).copy_(latent.reshape({D}));
        from_decoder.data_ptr<bool>()[b] = true;
        id[b] = GenerationStep::kLatent;
      } else if (out.token >= 0 && out.token < vocabulary_) {
        id[b] = out.token;
      } else {
        fail(ErrorCode::kInvalidArgument, field, "expected a latent, a token in [0, {}) or done for row {}, got token {}",
             vocabulary_, b, out.token);
      }
    }
  }

  // Runs the prompt into the cache; each row continues from its last real position.
  void prefill() {
    const at::Tensor valid = attention_.key_padding.defined() ? attention_.key_padding
                                                               : at::ones_like(attention_.positions, at::kBool);
    const at::Tensor hidden = model_.forward(latents_, attention_, {}, nullptr, &session_->cache_);  // [B,T,D]
    const int64_t T = latents_.size(1);
    const at::Tensor slot = at::arange(T, attention_.positions.options());
    const at::Tensor last = (slot * valid.to(at::kLong)).argmax(1);  // [B]: last real slot of each row
    hidden_ = hidden.gather(1, last.view({-1, 1, 1}).expand({-1, 1, hidden.size(2)})).squeeze(1);
    session_->next_positions_ = at::where(valid, attention_.positions, at::full_like(attention_.positions, -1))
                                    .amax(1) + 1;
    finished_ = at::zeros({latents_.size(0)}, at::kBool);
    active_.assign(static_cast<std::size_t>(latents_.size(0)), -1);
    begun_.assign(static_cast<std::size_t>(latents_.size(0)), false);
    latents_ = at::Tensor();  // not needed any more
  }

  at::Tensor pick(const at::Tensor& logits) {  // float32 [B,V'] on CPU -> int64 [B]
    const SamplingOptions& s = options_.sampling;
    if (s.temperature == 0.0) return logits.argmax(-1);
    // In float64 and shifted by the maximum first: any positive temperature (down to the smallest
    // double) then gives finite scaled logits, where logits / T in float32 overflows, or divides by
    // a temperature that rounds to 0, into NaN probabilities.
    const at::Tensor scaled = (logits.to(at::kDouble) - logits.amax(-1, true).to(at::kDouble)) / s.temperature;
    const at::Tensor probs = filtered(scaled, s).softmax(-1);
    return at::multinomial(probs, 1, /*replacement=*/false, generator_).squeeze(1);
  }

  const backbone::Model& model_;
  std::shared_ptr<LocalSession> session_;
  at::Tensor latents_;
  backbone::Attention attention_;
  GenerateOptions options_;
  at::Tensor stop_;  // int64 [S] on CPU
  at::Tensor embedding_rows_, classifier_rows_;  // the extension's, detached; undefined without one
  at::Generator generator_;
  at::Tensor hidden_;    // [B,D]: what the next token is read from
  at::Tensor finished_;  // bool [B] on CPU
  int64_t index_ = 0;
  int64_t vocabulary_;                // V+K
  std::vector<int64_t> active_;       // per row: the index of the route it is in, -1 for the classifier
  std::vector<bool> begun_;           // per row: Decoder::begin was called for the span in progress
};

}  // namespace

std::shared_ptr<Session> LocalBackbone::new_session() { return std::make_shared<LocalSession>(this); }

std::unique_ptr<Generation> LocalBackbone::start_generation(const at::Tensor& latents, const GenerateOptions& options) {
  const ModelInfo& c = config();
  std::shared_ptr<LocalSession> session = std::dynamic_pointer_cast<LocalSession>(options.session);
  if (options.session && (!session || session->owner_ != this)) {
    fail(ErrorCode::kInvalidArgument, "session", "expected a session of this backbone (new_session())");
  }
  if (options.mask && options.mask->defined() && options.mask->dim() != 2) {
    fail(ErrorCode::kInvalidArgument, "mask", "expected a key-padding mask [B,T] for generation, got rank {}",
         options.mask->dim());
  }
  if (options.max_new_tokens < 1) {
    fail(ErrorCode::kInvalidArgument, "max_new_tokens", "expected >= 1, got {}", options.max_new_tokens);
  }
  const SamplingOptions& s = options.sampling;
  if (!(s.temperature >= 0) || !std::isfinite(s.temperature)) {
    fail(ErrorCode::kInvalidArgument, "temperature", "expected a finite value >= 0, got {}", s.temperature);
  }
  if (s.top_k < 0) fail(ErrorCode::kInvalidArgument, "top_k", "expected >= 0, got {}", s.top_k);
  if (!(s.top_p > 0 && s.top_p <= 1)) fail(ErrorCode::kInvalidArgument, "top_p", "expected a value in (0, 1], got {}", s.top_p);
  if (options.extension) options.extension->check_fits(*this, "extension");
  const int64_t vocabulary = c.vocab_size + (options.extension ? options.extension->size() : 0);
  for (int64_t id : options.stop_ids) {
    if (id < 0 || id >= vocabulary) fail(ErrorCode::kInvalidArgument, "stop_ids", "expected ids in [0, {}), got {}", vocabulary, id);
  }
  for (std::size_t r = 0; r < options.routes.size(); ++r) {
    const Route& route = options.routes[r];
    for (auto [id, name] : {std::pair{route.start_id, "start_id"}, std::pair{route.end_id, "end_id"}}) {
      if (id < 0 || id >= vocabulary) {
        fail(ErrorCode::kInvalidArgument, fmt::format("routes[{}].{}", r, name),
             "expected an id in [0, {}) (the base vocabulary{}), got {}", vocabulary,
             options.extension ? " and the extension's tokens" : "", id);
      }
    }
    if (route.start_id == route.end_id) {
      fail(ErrorCode::kInvalidArgument, fmt::format("routes[{}].end_id", r), "expected an id other than start_id {}",
           route.start_id);
    }
    if (!route.decoder) fail(ErrorCode::kInvalidArgument, fmt::format("routes[{}].decoder", r), "expected a decoder, got none");
    for (std::size_t q = 0; q < r; ++q) {
      if (options.routes[q].start_id == route.start_id) {
        fail(ErrorCode::kInvalidArgument, fmt::format("routes[{}].start_id", r),
             "expected a start id no other route has, got {} (as routes[{}])", route.start_id, q);
      }
    }
  }

  ali::ForwardOptions forward;
  forward.mask = options.mask;
  forward.positions = options.positions;
  if (!options.positions && latents.defined() && latents.dim() == 3) {
    // Real positions numbered 0, 1, ... in each row (after the session's), whichever side the padding is on.
    const int64_t B = latents.size(0), T = latents.size(1);
    at::Tensor real = options.mask && options.mask->defined() && options.mask->sizes() == at::IntArrayRef{B, T}
                          ? options.mask->to(device()).ne(0).to(at::kLong)
                          : at::ones({B, T}, at::TensorOptions().dtype(at::kLong).device(device()));
    at::Tensor start = at::zeros({B, 1}, real.options());
    if (session && session->batch_size() == B) start = session->next_positions_.unsqueeze(1);
    forward.positions = start + (real.cumsum(1) - 1).clamp_min(0);
  }
  backbone::Attention attention = impl_->prepare(latents, forward);
  const int64_t B = latents.size(0);
  if (session && session->batch_size() != 0 && session->batch_size() != B) {
    fail(ErrorCode::kInvalidArgument, "session", "expected a prompt of the session's batch size {}, got {}",
         session->batch_size(), B);
  }
  if (attention.key_padding.defined() && !attention.key_padding.any(1).all().item<bool>()) {
    fail(ErrorCode::kInvalidArgument, "mask", "expected at least one real position in every row");
  }
  if (!session) session = std::make_shared<LocalSession>(this);
  return std::make_unique<LocalGeneration>(*impl_->model, std::move(session), latents, std::move(attention), options);
}

}  // namespace aios::local
