// Generation from C++: streamed steps through a callback, the cache against full recomputation,
// a session that continues, and routed generation (decoders between start and end tokens).
#include <limits>
#include <map>

#include "aios/local/local_backbone.h"
#include "aios/error.h"
#include "catch_torch.h"
#include "tiny_checkpoint.h"

using aios::ali::GenerateOptions;
using aios::ali::GenerationStep;
using aios::local::LocalBackbone;
using aios_test::TinyCheckpoint;

namespace {

// Greedy tokens by a full forward over the whole sequence at every step.
std::vector<int64_t> without_cache(LocalBackbone& backbone, at::Tensor ids, int64_t steps) {
  std::vector<int64_t> out;
  for (int64_t i = 0; i < steps; ++i) {
    const at::Tensor hidden = backbone.forward(backbone.embed(ids)).hidden.select(1, ids.size(1) - 1);
    const at::Tensor next = backbone.classify(hidden).argmax(-1);  // [1]
    out.push_back(next.item<int64_t>());
    ids = at::cat({ids, next.unsqueeze(0)}, 1);
  }
  return out;
}

}  // namespace

TEST_CASE("generation streams the tokens a full recomputation gives") {
  for (const TinyCheckpoint& checkpoint : {TinyCheckpoint::llama("gen_llama"), TinyCheckpoint::gpt2("gen_gpt2")}) {
    auto backbone = LocalBackbone::load(checkpoint.write());
    const at::Tensor ids = at::tensor(std::vector<int64_t>{3, 1, 4, 1, 5}).unsqueeze(0);
    GenerateOptions options;
    options.max_new_tokens = 12;
    std::vector<int64_t> streamed;
    const auto result = backbone->generate(backbone->embed(ids), options, [&](const GenerationStep& step) {
      CHECK(step.index == static_cast<int64_t>(streamed.size()));
      streamed.push_back(step.ids[0].item<int64_t>());
      return true;
    });
    CHECK(streamed == without_cache(*backbone, ids, 12));
    CHECK(result.hidden.sizes() == at::IntArrayRef{1, 12, aios_test::kD});
    CHECK(result.lengths[0].item<int64_t>() == 12);

    // A session: the second call continues where the first one stopped.
    options.session = backbone->new_session();
    options.max_new_tokens = 4;
    const auto first = backbone->generate(backbone->embed(ids), options);
    const at::Tensor more = at::tensor(std::vector<int64_t>{9, 2}).unsqueeze(0);
    const auto second = backbone->generate(backbone->embed(more), options);
    const at::Tensor whole = at::cat({ids, first.ids, more}, 1);
    const std::vector<int64_t> want = without_cache(*backbone, whole, 4);
    CHECK(std::vector<int64_t>(second.ids.data_ptr<int64_t>(), second.ids.data_ptr<int64_t>() + 4) == want);
    CHECK(options.session->length() == whole.size(1) + 4);

    // Sampling: the seed decides; a callback returning false stops.
    GenerateOptions sampled;
    sampled.sampling.temperature = 1.0;
    sampled.sampling.seed = 11;
    sampled.max_new_tokens = 8;
    const auto a = backbone->generate(backbone->embed(ids), sampled);
    const auto b = backbone->generate(backbone->embed(ids), sampled);
    CHECK(at::equal(a.ids, b.ids));
    const auto stopped = backbone->generate(backbone->embed(ids), sampled, [](const GenerationStep& s) { return s.index < 2; });
    CHECK(stopped.ids.size(1) == 3);

    // A temperature near zero samples the greedy tokens (logits / T alone would overflow to NaN).
    for (double tiny : {1e-30, std::numeric_limits<double>::denorm_min()}) {
      sampled.sampling.temperature = tiny;
      const auto cold = backbone->generate(backbone->embed(ids), sampled);
      CHECK(std::vector<int64_t>(cold.ids.data_ptr<int64_t>(), cold.ids.data_ptr<int64_t>() + 8) ==
            without_cache(*backbone, ids, 8));
    }
  }
}

namespace {

using aios::ali::Decoder;
using aios::ali::DecoderStep;
using aios::ali::ExtendOptions;
using aios::ali::Route;

// Takes three positions of a row: feeds latents[0], latents[1], then ends the span. Records what it saw.
struct ScriptedDecoder : Decoder {
  std::vector<at::Tensor> latents;
  std::map<int64_t, std::vector<at::Tensor>> seen;  // per row: the hidden states [D] it was given
  std::vector<int64_t> rows;                         // of each call
  std::vector<std::string>* log = nullptr;
  int64_t begins = 0;
  std::map<int64_t, int64_t> count;  // per row: positions taken in the span

  void begin(int64_t row) override {
    ++begins;
    count[row] = 0;
  }
  DecoderStep step(int64_t row, const at::Tensor& hidden) override {
    seen[row].push_back(hidden.clone());
    rows.push_back(row);
    if (log) log->push_back("decoder");
    const int64_t k = count[row]++;
    DecoderStep out;
    out.output = at::full({1}, static_cast<double>(k));
    if (k < 2) out.latent = latents[static_cast<std::size_t>(k)];
    out.done = k == 2;
    return out;
  }
};

void check_close(const std::vector<at::Tensor>& a, const std::vector<at::Tensor>& b) {
  REQUIRE(a.size() == b.size());
  for (std::size_t i = 0; i < a.size(); ++i) CHECK(at::allclose(a[i], b[i], 1e-4, 1e-4));
}

std::string field_of(const std::function<void()>& call) {
  try {
    call();
  } catch (const aios::Error& e) {
    CHECK(e.code() == aios::ErrorCode::kInvalidArgument);
    return e.field();
  }
  return "(no error)";
}

// Routed generation of one row recomputed without a cache (a full forward over the whole sequence
// at every step), with ScriptedDecoder's rule: after <sox> (id V), feed script[0], script[1], <eox>.
struct Reference {
  std::vector<int64_t> ids;
  std::vector<at::Tensor> seen;
};
Reference routed_without_cache(LocalBackbone& backbone, at::Tensor latents, const aios::ali::Extension& ext,
                               const std::vector<at::Tensor>& script, int64_t steps) {
  const int64_t V = aios_test::kVocab, D = aios_test::kD;
  Reference ref;
  int64_t in_span = -1;  // positions the decoder has taken, -1 outside a span
  for (int64_t i = 0; i < steps; ++i) {
    const at::Tensor h = backbone.forward(latents).hidden[0][latents.size(1) - 1];  // [D]
    at::Tensor feed;
    if (in_span >= 0) {
      ref.seen.push_back(h);
      if (in_span < 2) {
        feed = script[static_cast<std::size_t>(in_span)].reshape({1, 1, D}).to(at::kFloat);
        ref.ids.push_back(GenerationStep::kLatent);
        ++in_span;
      } else {
        ref.ids.push_back(V + 1);
        in_span = -1;
      }
    } else {
      ref.ids.push_back(backbone.classify(h, &ext).argmax().item<int64_t>());
      if (ref.ids.back() == V) in_span = 0;
    }
    if (!feed.defined()) feed = backbone.embed(at::full({1, 1}, ref.ids.back(), at::kLong), &ext);
    latents = at::cat({latents, feed}, 1);
  }
  return ref;
}

}  // namespace

TEST_CASE("routed generation hands a span between <sox> and <eox> to a decoder") {
  auto backbone = LocalBackbone::load(TinyCheckpoint::llama("gen_route").write());
  const int64_t V = aios_test::kVocab, D = aios_test::kD;
  const at::Tensor prompt = at::tensor(std::vector<int64_t>{3, 1, 4, 1, 5}).unsqueeze(0);
  const at::Tensor other = at::tensor(std::vector<int64_t>{7, 2, 9, 8, 6}).unsqueeze(0);
  GenerateOptions plain;
  plain.max_new_tokens = 3;
  const auto free = backbone->generate(backbone->embed(prompt), plain);

  // <sox>'s classifier row is the part of step 2's hidden state orthogonal to those of steps 0 and
  // 1: its logit is 0 there (below the best base token) and large at step 2, so row 0 emits it there.
  const at::Tensor h = free.hidden[0];                                    // [3,D]
  const at::Tensor basis = std::get<0>(at::linalg_qr(h.narrow(0, 0, 2).t()));  // [D,2]
  const at::Tensor row = h[2] - basis.mv(basis.t().mv(h[2]));
  ExtendOptions init;
  init.init = ExtendOptions::Init::kTensors;
  at::manual_seed(3);
  init.embedding_rows = at::randn({2, D});
  init.classifier_rows = at::stack({row * (20 / row.dot(h[2]).item<double>()), at::zeros({D})});
  auto ext = backbone->extend({"<sox>", "<eox>"}, init);

  auto decoder = std::make_shared<ScriptedDecoder>();
  decoder->latents = {at::randn({D}), at::randn({1, D}, at::kDouble)};
  std::vector<std::string> log;
  decoder->log = &log;
  GenerateOptions options;
  options.extension = ext;
  options.max_new_tokens = 12;
  options.routes = {Route{V, V + 1, decoder}};
  std::vector<std::string> want_log;
  const auto result = backbone->generate(backbone->embed(prompt), options, [&](const GenerationStep& step) {
    if (step.routes[0].item<int64_t>() == 0) want_log.push_back("decoder");
    want_log.push_back("step " + std::to_string(step.index));
    log.push_back("step " + std::to_string(step.index));
    CHECK(step.outputs.size() == 1);
    CHECK(step.outputs[0].defined() == (step.routes[0].item<int64_t>() == 0));
    return true;
  });
  const std::vector<int64_t> ids(result.ids.data_ptr<int64_t>(), result.ids.data_ptr<int64_t>() + 12);
  const std::vector<int64_t> routes(result.routes.data_ptr<int64_t>(), result.routes.data_ptr<int64_t>() + 12);
  // Two tokens, <sox>, two latents, the decoder's last position feeds <eox>, then the classifier again.
  CHECK(ids[0] == free.ids[0][0].item<int64_t>());
  CHECK(ids[1] == free.ids[0][1].item<int64_t>());
  CHECK(std::vector<int64_t>(ids.begin() + 2, ids.begin() + 6) ==
        std::vector<int64_t>{V, GenerationStep::kLatent, GenerationStep::kLatent, V + 1});
  CHECK(std::vector<int64_t>(routes.begin(), routes.begin() + 7) == std::vector<int64_t>{-1, -1, -1, 0, 0, 0, -1});
  CHECK(result.lengths[0].item<int64_t>() == 12);
  CHECK(log == want_log);  // each decoder call comes just before its step is streamed

  // The same without a cache: the decoder saw the hidden states of <sox> and of its latents, and the
  // classifier's tokens after <eox> are those of the whole sequence.
  const Reference ref = routed_without_cache(*backbone, backbone->embed(prompt), *ext, decoder->latents, 12);
  CHECK(ids == ref.ids);
  check_close(decoder->seen[0], ref.seen);
  CHECK(decoder->begins == static_cast<int64_t>(ref.seen.size()) / 3 + (ref.seen.size() % 3 != 0));
  CHECK(at::allclose(result.hidden[0][3], ref.seen[0], 1e-4, 1e-4));
  CHECK(decoder->rows == std::vector<int64_t>(ref.seen.size(), 0));

  // Batched with another prompt: row 0 is routed as alone, row 1 generates as alone.
  auto batch_decoder = std::make_shared<ScriptedDecoder>();
  batch_decoder->latents = decoder->latents;
  options.routes = {Route{V, V + 1, batch_decoder}};
  const auto batched = backbone->generate(backbone->embed(at::cat({prompt, other})), options);
  CHECK(at::equal(batched.ids[0], result.ids[0]));
  check_close(batch_decoder->seen[0], decoder->seen[0]);
  auto other_decoder = std::make_shared<ScriptedDecoder>();
  other_decoder->latents = decoder->latents;
  options.routes = {Route{V, V + 1, other_decoder}};
  const auto alone = backbone->generate(backbone->embed(other), options);
  CHECK(!batch_decoder->seen[1].empty());  // row 1 takes a span of its own too
  check_close(batch_decoder->seen[1], other_decoder->seen[0]);
  CHECK(at::equal(batched.ids[1], alone.ids[0]));
  CHECK(at::allclose(batched.hidden[1], alone.hidden[0], 1e-4, 1e-4));

  // Routed positions count towards max_new_tokens; <eox> as a stop id ends the row after the span.
  options.routes = {Route{V, V + 1, batch_decoder}};
  options.max_new_tokens = 4;
  CHECK(backbone->generate(backbone->embed(prompt), options).ids.size(1) == 4);
  options.max_new_tokens = 12;
  options.stop_ids = {V + 1};
  const auto stopped = backbone->generate(backbone->embed(prompt), options);
  CHECK(stopped.lengths[0].item<int64_t>() == 6);

  // Bad routes name the field; a decoder's bad latent ends the generation with an error.
  options.stop_ids.clear();
  auto with = [&](Route route) {
    return field_of([&] {
      GenerateOptions o = options;
      o.routes = {std::move(route)};
      backbone->generate(backbone->embed(prompt), o);
    });
  };
  CHECK(with(Route{V, V, decoder}) == "routes[0].end_id");
  CHECK(with(Route{V + 2, V + 1, decoder}) == "routes[0].start_id");
  CHECK(with(Route{V, -1, decoder}) == "routes[0].end_id");
  CHECK(with(Route{V, V + 1, nullptr}) == "routes[0].decoder");
  CHECK(field_of([&] {
          GenerateOptions o;
          o.routes = {Route{V, V + 1, decoder}};  // no extension: V is not a token
          backbone->generate(backbone->embed(prompt), o);
        }) == "routes[0].start_id");
  CHECK(field_of([&] {
          GenerateOptions o = options;
          o.routes = {Route{V, V + 1, decoder}, Route{V, 2, decoder}};
          backbone->generate(backbone->embed(prompt), o);
        }) == "routes[1].start_id");
  auto bad = std::make_shared<ScriptedDecoder>();
  bad->latents = {at::randn({D + 1}), at::randn({D})};
  GenerateOptions with_bad = options;
  with_bad.routes = {Route{V, V + 1, bad}};
  auto generation = backbone->start_generation(backbone->embed(prompt), with_bad);
  CHECK(field_of([&] {
          while (generation->next()) {
          }
        }) == "routes[0].decoder");
  CHECK(!generation->next());
}
