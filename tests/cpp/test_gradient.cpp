// The Gradient API from C++: an upstream torch::nn::Module trained through the frozen backbone,
// and the guarantee that no weight of the backbone ever holds a gradient.
#include <torch/torch.h>

#include "aios/gradient_api/local_backbone.h"
#include "catch_torch.h"
#include "tiny_checkpoint.h"

using aios::gradient::Cotangents;
using aios::gradient::CrossEntropy;
using aios::gradient::LocalBackbone;
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
    CHECK(backbone->store().size() == 0);
    CHECK(backbone->store().bytes() == 0);

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
