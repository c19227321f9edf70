// The Gradient API from C++: an upstream torch::nn::Module trained through the frozen backbone,
// and the guarantee that no weight of the backbone ever holds a gradient.
#include <thread>

#include <fmt/format.h>
#include <torch/torch.h>

#include "activation_store.h"  // local/src: the store of kept passes, tested alone below
#include "aios/local/local_backbone.h"
#include "catch_torch.h"
#include "error_code.h"
#include "tiny_checkpoint.h"

using aios::gradient::Cotangents;
using aios::gradient::CrossEntropy;
using aios::local::LocalBackbone;
using aios::gradient::LossOptions;
using aios_test::TinyCheckpoint;

TEST_CASE("a projection trains through the backbone and no weight gets a gradient") {
  for (const TinyCheckpoint& checkpoint : {TinyCheckpoint::llama("grad_llama"), TinyCheckpoint::gpt2("grad_gpt2")}) {
    auto backbone = LocalBackbone::load(checkpoint.write());
    torch::manual_seed(3);
    torch::nn::Linear projection(12, aios_test::kD);
    torch::optim::Adam optimizer(projection->parameters(), torch::optim::AdamOptions(5e-2));
    const at::Tensor features = torch::randn({2, 6, 12});
    const at::Tensor latents_goal = backbone->embed(torch::randint(aios_test::kVocab, {2, 6}));
    const at::Tensor goal = backbone->forward(latents_goal).hidden;

    double first = 0, last = 0;
    for (int step = 0; step < 30; ++step) {
      const at::Tensor latents = projection->forward(features);  // [2,6,D], graph in the projection
      auto kept = backbone->forward_keep(latents.detach());
      const at::Tensor diff = kept.output.hidden - goal;
      Cotangents cotangents;
      cotangents.hidden = 2 * diff / diff.numel();  // d mean((h - goal)^2) / d h
      const at::Tensor grad = backbone->vjp(kept.handle, cotangents).latents;
      backbone->release(kept.handle);
      latents.backward(grad);
      optimizer.step();
      optimizer.zero_grad();
      const double loss = diff.pow(2).mean().item<double>();
      if (step == 0) first = loss;
      last = loss;
    }
    CHECK(last < 0.5 * first);
    CHECK(backbone->kept_passes() == 0);
    CHECK(backbone->kept_bytes() == 0);

    // Release frees the kept activations themselves, not just the store's account of them.
    auto kept = backbone->forward_keep(projection->forward(features).detach());
    // The returned hidden state shares its storage with the kept graph's output.
    const c10::weak_intrusive_ptr<c10::StorageImpl> graph_output = kept.output.hidden.storage().getWeakStorageImpl();
    kept.output = {};
    CHECK_FALSE(graph_output.expired());
    backbone->release(kept.handle);
    CHECK(graph_output.expired());

    LossOptions loss;
    loss.loss = CrossEntropy{torch::randint(aios_test::kVocab, {2, 6}), {}};
    const auto fused = backbone->forward_backward(projection->forward(features).detach(), {}, loss);
    CHECK(fused.loss.dim() == 0);
    CHECK((fused.grad.latents.sizes() == at::IntArrayRef{2, 6, aios_test::kD}));
    for (const at::Tensor& w : backbone->model().weights()) {
      CHECK_FALSE(w.requires_grad());
      CHECK_FALSE(w.grad().defined());
    }
  }
}

TEST_CASE("a cancelled call stops between blocks, forward and backward", "[gradient]") {
  auto backbone = LocalBackbone::load(TinyCheckpoint::llama("grad_cancel").write());
  torch::manual_seed(5);
  const at::Tensor latents = torch::randn({2, 6, aios_test::kD}), cotangent = torch::randn({2, 6, aios_test::kD});
  // "CODE:field" of the error a call throws.
  auto cancelled_code = [](const std::function<void()>& call) {
    std::string field;
    const aios::ErrorCode code = aios_test::code_of(call, &field);
    return fmt::format("{}:{}", static_cast<int>(code), field);
  };
  const std::string kCancelled = fmt::format("{}:cancelled", static_cast<int>(aios::ErrorCode::kUnavailable));

  // A forward asks before each block: told to stop before the second, it never reaches it.
  int asked = 0;
  aios::gradient::ForwardOptions counting;
  counting.cancelled = [&] { return ++asked >= 2; };
  CHECK(cancelled_code([&] { backbone->forward(latents, counting); }) == kCancelled);
  CHECK(asked == 2);

  const Cotangents c{cotangent, {}, {}};
  for (const bool recompute : {false, true}) {
    INFO("recompute " << recompute);
    bool left = false;
    aios::gradient::ForwardOptions options;
    options.recompute = recompute;
    options.cancelled = [&] { return left; };
    auto kept = backbone->forward_keep(latents, options);
    // The pass's backward asks between blocks too; the handle stays usable for a caller still there.
    left = true;
    CHECK(cancelled_code([&] { backbone->vjp(kept.handle, c); }) == kCancelled);
    left = false;
    const at::Tensor got = backbone->vjp(kept.handle, c).latents;
    aios::gradient::ForwardOptions plain;
    plain.recompute = recompute;
    CHECK(torch::allclose(got, backbone->vjp(latents, plain, c).latents, 1e-5, 1e-6));
    backbone->release(kept.handle);

    left = true;
    CHECK(cancelled_code([&] { backbone->vjp(latents, options, c); }) == kCancelled);
    LossOptions loss;
    loss.loss = CrossEntropy{torch::randint(aios_test::kVocab, {2, 6}), {}};
    CHECK(cancelled_code([&] { backbone->forward_backward(latents, options, loss); }) == kCancelled);
  }
}

TEST_CASE("the activation store makes room for a pass only from its own owner's passes", "[gradient]") {
  using aios::local::ActivationStore;
  using aios::gradient::Handle;
  auto pass = [](std::size_t bytes) {
    auto p = std::make_shared<aios::local::KeptPass>();
    p->bytes = bytes;
    return p;
  };
  aios::local::StoreOptions options;
  options.max_bytes = 300;
  ActivationStore store(options);
  const Handle a1 = store.put(pass(100), 1).handle;
  const Handle a2 = store.put(pass(100), 1).handle;
  const auto b1 = store.put(pass(100), 2);
  CHECK(b1.dropped.empty());
  CHECK(store.bytes(1) == 200);
  CHECK(store.bytes(2) == 100);

  // Full: owner 2's next pass takes the place of owner 2's own, never of owner 1's.
  const auto b2 = store.put(pass(100), 2);
  CHECK(b2.dropped == std::vector<Handle>{b1.handle});
  CHECK(aios_test::code_of([&] { store.get(b1.handle); }) == aios::ErrorCode::kNotFound);
  store.get(a2);
  store.get(a1);  // a1 is now owner 1's most recent: a2 goes first
  CHECK(store.put(pass(100), 1).dropped == std::vector<Handle>{a2});
  store.get(a1);
  store.get(b2.handle);

  // An owner with nothing to give up is refused, and nothing of the others' is evicted; so is an
  // owner whose own passes would not make room enough.
  std::string field;
  CHECK(aios_test::code_of([&] { store.put(pass(100), 3); }, &field) == aios::ErrorCode::kResourceExhausted);
  CHECK(field == "activation_store");
  CHECK(aios_test::code_of([&] { store.check_room(100, 3); }) == aios::ErrorCode::kResourceExhausted);
  CHECK(aios_test::code_of([&] { store.put(pass(250), 2); }) == aios::ErrorCode::kResourceExhausted);
  CHECK(aios_test::code_of([&] { store.put(pass(301), 2); }) == aios::ErrorCode::kResourceExhausted);
  CHECK(store.size() == 3);
  CHECK(store.bytes() == 300);
  store.check_room(200, 1);  // owner 1 holds 200 of them

  // Released room is anyone's.
  store.release(b2.handle);
  CHECK(store.bytes(2) == 0);
  const auto c1 = store.put(pass(100), 3);
  CHECK(c1.dropped.empty());
  CHECK(store.size() == 3);
}

TEST_CASE("the activation store reports an owner's passes that expired to that owner", "[gradient]") {
  aios::local::StoreOptions options;
  options.ttl = std::chrono::milliseconds(100);
  aios::local::ActivationStore store(options);
  auto pass = std::make_shared<aios::local::KeptPass>();
  pass->bytes = 10;
  // Owner 2's first: should a stall expire it while owner 1's is put, owner 1 still hears nothing of it.
  const auto old_2 = store.put(pass, 2);
  const auto old_1 = store.put(pass, 1);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // well past the time-to-live
  // Both expired; each owner hears of its own only.
  const auto next_1 = store.put(pass, 1);
  CHECK(next_1.dropped == std::vector<aios::gradient::Handle>{old_1.handle});
  CHECK(store.size() == 1);
  CHECK(store.bytes(2) == 0);
  CHECK(store.put(pass, 2).dropped.empty());
  CHECK(aios_test::code_of([&] { store.get(old_2.handle); }) == aios::ErrorCode::kNotFound);
}

TEST_CASE("a stateless vjp with cotangents of the wrong shape is refused before its forward runs", "[gradient]") {
  // Found by the soak: a host computed the whole forward of such a request before refusing it.
  auto backbone = LocalBackbone::load(TinyCheckpoint::llama("grad_cotangents").write());
  const at::Tensor latents = torch::randn({2, 6, aios_test::kD});
  int blocks = 0;  // the forward asks before each block: none asked means none ran
  aios::gradient::ForwardOptions options;
  options.cancelled = [&] { return ++blocks < 0; };
  options.layers = {1};
  std::string field;
  const auto refused = [&](const Cotangents& c) {
    blocks = 0;
    const aios::ErrorCode code = aios_test::code_of([&] { backbone->vjp(latents, options, c); }, &field);
    return code == aios::ErrorCode::kInvalidArgument && blocks == 0;
  };
  CHECK(refused(Cotangents{torch::randn({2, 5, aios_test::kD}), {}, {}}));
  CHECK(field == "cotangents.hidden");
  CHECK(refused(Cotangents{{}, {torch::randn({2, 6, aios_test::kD}), torch::randn({2, 6, aios_test::kD})}, {}}));
  CHECK(field == "cotangents.layers");
  CHECK(refused(Cotangents{{}, {}, torch::randn({2, 6, aios_test::kVocab + 1})}));
  CHECK(field == "cotangents.logits");
  CHECK(refused(Cotangents{torch::randn({2, 6, aios_test::kD}, torch::kDouble), {}, {}}));
  // Right ones run the forward, block by block.
  blocks = 0;
  CHECK(backbone->vjp(latents, options, Cotangents{torch::randn({2, 6, aios_test::kD}), {}, {}}).latents.sizes() ==
        latents.sizes());
  CHECK(blocks > 0);
}
