// Pipeline stages' pieces that need no second process: how blocks are shared out, loading a
// share of a checkpoint, and the front's recovery from a lost link over links that break when told
// (tests/python/test_pipeline.py runs the processes).
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <numeric>

#include "aios/backbone/model.h"
#include "aios/error.h"
#include "aios/pipeline/pipeline.h"
#include "catch_torch.h"
#include "error_code.h"
#include "front.h"
#include "tiny_checkpoint.h"

using aios::ErrorCode;
using aios::backbone::LoadOptions;
using aios::backbone::load_model;
using aios::pipeline::balanced_blocks;
using aios_test::TinyCheckpoint;
using namespace std::chrono_literals;

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

// A link to nowhere that breaks when told: sends go nowhere until then, and fail after.
class BreakingLink final : public aios::pipeline::Link {
 public:
  BreakingLink() : Link(0, 2) {}
  void breaks() { broken_ = true; }
  void send(int, aios::pipeline::Tag, const at::Tensor&) override { check(); }
  void send_error(int, aios::pipeline::Tag, const aios::Error&) override { check(); }
  aios::pipeline::Received receive(int, aios::pipeline::Tag, std::chrono::milliseconds) override {
    throw aios::Error(ErrorCode::kUnavailable, "pipeline", "nothing ever comes over this link");
  }
  void flush() override { check(); }

 private:
  void check() const {
    if (broken_) throw aios::Error(ErrorCode::kUnavailable, "pipeline", "the pipeline's link is broken");
  }
};

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

TEST_CASE("a lost link says NOT_SERVING before its call fails; reported again, it leaves the next link serving") {
  // What the supervisor did, and the links it formed; forming waits until `release`.
  std::mutex mutex;
  std::condition_variable changed;
  std::vector<bool> said;  // serving(...) calls
  std::vector<BreakingLink*> formed;
  bool release = false;
  auto first = std::make_unique<BreakingLink>();
  BreakingLink* old = first.get();
  aios::pipeline::Stages::Form form = [&](int64_t) -> std::unique_ptr<aios::pipeline::Link> {
    auto link = std::make_unique<BreakingLink>();
    std::unique_lock lock(mutex);
    formed.push_back(link.get());
    changed.notify_all();
    changed.wait(lock, [&] { return release; });
    return link;
  };
  auto serving = [&](bool s) {
    std::lock_guard lock(mutex);
    said.push_back(s);
    changed.notify_all();
  };
  aios::pipeline::Layout layout;
  layout.bounds = {0, 1, 2};
  auto stages = std::make_shared<aios::pipeline::Stages>(std::move(first), form, layout,
                                                         std::vector<aios::WeightKind>{}, aios::pipeline::CacheCost{},
                                                         1s, serving);
  auto until = [&](auto done) {
    std::unique_lock lock(mutex);
    return changed.wait_for(lock, 10s, done);
  };

  old->breaks();
  stages->drop(aios::pipeline::Op::kRelease, 1);  // finds the link broken: the supervisor forms link 1
  {
    // Said before the call that found the loss returns: a caller told kUnavailable who asks the
    // health service then hears NOT_SERVING.
    std::lock_guard lock(mutex);
    CHECK(said == std::vector<bool>{false});
  }
  REQUIRE(until([&] { return formed.size() == 1; }));
  // Another call fails on the old link while link 1 forms (a failed stateless call's pass, dropped).
  stages->drop(aios::pipeline::Op::kRelease, 2);
  {
    std::lock_guard lock(mutex);
    release = true;
  }
  changed.notify_all();
  REQUIRE(until([&] { return said.back(); }));
  // That second report is old news: link 1 stays (with local workers, forming it again would kill
  // the workers that just joined, under the callers told it serves).
  {
    std::unique_lock lock(mutex);
    CHECK_FALSE(changed.wait_for(lock, 500ms, [&] { return formed.size() > 1; }));
  }
  // A loss of link 1 itself is still noticed.
  {
    std::lock_guard lock(mutex);
    release = false;  // link 2 forms once the test has seen NOT_SERVING
  }
  formed[0]->breaks();
  stages->drop(aios::pipeline::Op::kRelease, 3);
  {
    std::lock_guard lock(mutex);
    CHECK_FALSE(said.back());
    release = true;
  }
  changed.notify_all();
  REQUIRE(until([&] { return formed.size() == 2 && said.back(); }));
  formed[1]->breaks();  // nothing to tell on the way out
}
