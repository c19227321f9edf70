// Vocabulary extensions from C++: rows that train while the base stays bit-for-bit the same, the
// gradients of those rows, and the folder they save to.
#include <torch/torch.h>

#include "aios/ali/extension.h"
#include "aios/error.h"
#include "aios/local/local_backbone.h"
#include "catch_torch.h"
#include "error_code.h"
#include "tiny_checkpoint.h"

using aios::Error;
using aios::ErrorCode;
using aios_test::code_of;
using aios::ali::ExtendOptions;
using aios::ali::Extension;
using aios::gradient::CrossEntropy;
using aios::gradient::ForwardOptions;
using aios::local::LocalBackbone;
using aios::gradient::LossOptions;
using aios_test::kD;
using aios_test::kVocab;
using aios_test::TinyCheckpoint;

TEST_CASE("extension rows train on their own and the base does not move") {
  auto backbone = LocalBackbone::load(TinyCheckpoint::llama("ext_train").write());
  std::shared_ptr<Extension> ext = backbone->extend({"<sox>", "<eox>"});
  REQUIRE(ext->first_id() == kVocab);
  REQUIRE(ext->token_to_id("<eox>") == kVocab + 1);
  CHECK(ext->embedding_rows().sizes() == at::IntArrayRef{2, kD});
  CHECK_THROWS_AS(ext->tokenizer(), Error);  // the tiny checkpoint has no tokenizer.json

  // After id 3 comes <sox>, after <sox> comes <eox>: only the new rows can learn it.
  at::Tensor ids = torch::randint(4, kVocab, {3, 8});
  ids.select(1, 2).fill_(3);
  ids.select(1, 3).fill_(kVocab);
  ids.select(1, 4).fill_(kVocab + 1);
  at::Tensor targets = torch::full({3, 8}, -100, torch::kLong), weights = torch::zeros({3, 8});
  targets.select(1, 2).fill_(kVocab);
  targets.select(1, 3).fill_(kVocab + 1);
  weights.select(1, 2).fill_(1);
  weights.select(1, 3).fill_(1);

  const at::Tensor probe = torch::randint(kVocab, {2, 5});
  const at::Tensor before = backbone->classify(backbone->forward(backbone->embed(probe)).hidden);
  ForwardOptions options;
  options.extension = ext;
  options.ids = ids;
  LossOptions loss;
  loss.loss = CrossEntropy{targets, weights};
  loss.chunk_tokens = 4;
  double first = 0, last = 0;
  for (int step = 0; step < 60; ++step) {
    const auto r = backbone->forward_backward(backbone->embed(ids, ext.get()), options, loss);
    if (step == 0) {
      // The classifier rows' gradient is that of an ordinary autograd graph over [W; rows].
      const at::Tensor hidden = backbone->forward(backbone->embed(ids, ext.get())).hidden;
      const at::Tensor rows = ext->classifier_rows().detach().requires_grad_(true);
      const at::Tensor logits = at::cat({backbone->model().classify(hidden), at::linear(hidden, rows)}, -1);
      const at::Tensor w = weights.flatten();
      const at::Tensor ce = at::cross_entropy_loss(logits.view({-1, kVocab + 2}), targets.flatten().clamp_min(0),
                                                   {}, at::Reduction::None);
      ((ce * w).sum() / w.sum()).backward();
      CHECK(at::allclose(r.grad.classifier_rows, rows.grad(), 1e-4, 1e-6));
      first = r.loss.item<double>();
    }
    at::NoGradGuard no_grad;
    ext->embedding_rows().sub_(0.5 * r.grad.embedding_rows);
    ext->classifier_rows().sub_(0.5 * r.grad.classifier_rows);
    last = r.loss.item<double>();
  }
  CHECK(last < 0.2 * first);
  const at::Tensor after = backbone->classify(backbone->forward(backbone->embed(probe)).hidden);
  CHECK(at::equal(before, after));
  for (const at::Tensor& w : backbone->model().weights()) CHECK_FALSE(w.requires_grad());
}

TEST_CASE("extensions save, load bit-exact, and refuse other models") {
  auto backbone = LocalBackbone::load(TinyCheckpoint::llama("ext_save").write());
  ExtendOptions init;
  init.init = ExtendOptions::Init::kTensors;
  init.embedding_rows = torch::randn({3, kD});
  init.classifier_rows = torch::randn({3, kD});
  auto ext = backbone->extend({"<a>", "<b>", "<c>"}, init);
  const std::string folder = (aios_test::fs::temp_directory_path() / "aios_test_ext_save").string();
  aios_test::fs::remove_all(folder);
  ext->save(folder);
  auto back = Extension::load(*backbone, folder);
  CHECK(back->tokens() == ext->tokens());
  CHECK(at::equal(back->embedding_rows(), init.embedding_rows));
  CHECK(at::equal(back->classifier_rows(), init.classifier_rows));

  auto other = LocalBackbone::load(TinyCheckpoint::gpt2("ext_other").write());
  CHECK(code_of([&] { Extension::load(*other, folder); }) == ErrorCode::kFailedPrecondition);
  CHECK(code_of([&] { other->embed(torch::zeros({1, 1}, torch::kLong), ext.get()); }) == ErrorCode::kInvalidArgument);
  CHECK(code_of([&] { Extension::load(*backbone, folder + "/missing"); }) == ErrorCode::kNotFound);
  CHECK(code_of([&] { backbone->extend({"<a>", "<a>"}); }) == ErrorCode::kInvalidArgument);
  ExtendOptions bad_token;
  bad_token.init = ExtendOptions::Init::kToken;
  bad_token.token = kVocab;
  CHECK(code_of([&] { backbone->extend({"<a>"}, bad_token); }) == ErrorCode::kInvalidArgument);
  aios_test::fs::remove_all(folder);
}
