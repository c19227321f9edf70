// Generation from C++: streamed steps through a callback, the cache against full recomputation,
// and a session that continues.
#include "aios/ali/local_backbone.h"
#include "catch_torch.h"
#include "tiny_checkpoint.h"

using aios::ali::GenerateOptions;
using aios::ali::GenerationStep;
using aios::ali::LocalBackbone;
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
  }
}
