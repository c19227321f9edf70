// Pipeline stages' pieces that need no second process: how blocks are shared out, and loading a
// share of a checkpoint (tests/python/test_pipeline.py runs the processes).
#include <numeric>

#include "aios/backbone/model.h"
#include "aios/error.h"
#include "aios/pipeline/pipeline.h"
#include "catch_torch.h"
#include "error_code.h"
#include "tiny_checkpoint.h"

using aios::ErrorCode;
using aios::backbone::LoadOptions;
using aios::backbone::load_model;
using aios::pipeline::balanced_blocks;
using aios_test::TinyCheckpoint;

namespace {

aios::backbone::ModelConfig llama70b() {
  return aios::backbone::parse_hf_config(nlohmann::json{{"architectures", {"LlamaForCausalLM"}},
                                                        {"vocab_size", 128256},
                                                        {"hidden_size", 8192},
                                                        {"intermediate_size", 28672},
                                                        {"num_hidden_layers", 80},
                                                        {"num_attention_heads", 64},
                                                        {"num_key_value_heads", 8},
                                                        {"tie_word_embeddings", false}}
                                             .dump());
}

int64_t elements(const aios::backbone::Model& m) {
  int64_t n = 0;
  for (const aios::WeightKind& k : m.storage()) n += k.elements;
  return n;
}

}  // namespace

TEST_CASE("balanced_blocks shares the weights out evenly, the front's tables counted") {
  const auto c = llama70b();
  const std::vector<int64_t> blocks = balanced_blocks(c, 8);
  REQUIRE(blocks.size() == 8);
  CHECK(std::accumulate(blocks.begin(), blocks.end(), int64_t{0}) == 80);
  // 141 GB over 8: the front's two 2.1 GB tables stand for about 2.5 blocks of 1.71 GB.
  CHECK(blocks[0] >= 7);
  CHECK(blocks[0] <= 9);
  for (std::size_t r = 1; r < blocks.size(); ++r) {
    CHECK(blocks[r] >= 10);
    CHECK(blocks[r] <= 11);
  }
  CHECK(balanced_blocks(c, 1) == std::vector<int64_t>{80});
  const std::vector<int64_t> most = balanced_blocks(c, 81);  // every stage one block, the front none
  CHECK(most.front() == 0);
  CHECK(std::all_of(most.begin() + 1, most.end(), [](int64_t n) { return n == 1; }));
  std::string field;
  CHECK(aios_test::code_of([&] { balanced_blocks(c, 82); }, &field) == ErrorCode::kInvalidArgument);
  CHECK(field == "stages");
}

TEST_CASE("a share of a checkpoint holds only its blocks and, if asked, the tables") {
  const std::string path = TinyCheckpoint::llama("pipeline_share").write();
  const auto whole = load_model(path);
  LoadOptions front;
  front.end_block = 1;
  LoadOptions stage;
  stage.first_block = 1;
  stage.tables = false;
  const auto a = load_model(path, front), b = load_model(path, stage);
  CHECK(elements(*a) + elements(*b) == elements(*whole));
  CHECK(elements(*b) < elements(*a));  // the tables outweigh one tiny block
  // The stage's block computes as the whole model's does.
  at::manual_seed(3);
  const at::Tensor x = at::randn({2, 5, whole->config().hidden_size});
  aios::backbone::Attention attention;
  attention.positions = at::arange(5).repeat({2, 1});
  const auto context = whole->begin(x, attention), stage_context = b->begin(x, attention);
  CHECK(at::equal(b->block(1, x, *stage_context), whole->block(1, x, *context)));
  LoadOptions outside;
  outside.first_block = 3;
  std::string field;
  CHECK(aios_test::code_of([&] { load_model(path, outside); }, &field) == ErrorCode::kInvalidArgument);
  CHECK(field == "first_block");
}
