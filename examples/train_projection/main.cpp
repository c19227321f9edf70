// Trains a MiniGPT-4-style projection in C++ through a frozen backbone.
//
//   train_projection MODEL [STEPS]
//   train_projection --host HOST:PORT [STEPS] [--compare MODEL]
//
// --host trains against the backbone hosted by `aios serve`: the same code. --compare computes each
// step's forward_backward with MODEL loaded in this process as well, on the same inputs, and prints
// how far the host's loss and gradient are from it. (Whole curves of two runs agree only while
// every rounding does: Adam turns a last-bit difference of one step into a drift within a few.)
//
// A stand-in for another modality's encoder gives each of eight colours a fixed random feature
// vector [32] (plus fresh noise per sample). A LinearProjection maps it to one latent [D]; the
// backbone reads [latent] + " Colour:" and must continue with the colour's name. Only the
// projection trains (torch::optim::Adam), from the Gradient API's fused cross-entropy: the
// backbone's weights never change. Prints the loss per step and the accuracy before and after.
#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include <torch/optim/adam.h>
#include <torch/torch.h>

#include "aios/adapters/encoders.h"
#include "aios/adapters/sequence.h"
#include "aios/error.h"
#include "aios/local/local_backbone.h"
#include "aios/server/remote_backbone.h"
#include "aios/tokenizer_api/tokenizer.h"

namespace {

constexpr int64_t kFeatures = 32;
constexpr double kNoise = 0.05;  // per-sample noise on the codes
const std::vector<std::string> kColours = {"red", "blue", "green", "yellow", "black", "white", "purple", "orange"};

at::Tensor ids_of(const aios::tokenizer::Tokenizer& tokenizer, const std::string& text) {
  const std::vector<int32_t> ids = tokenizer.encode(text, /*add_special_tokens=*/false);
  return at::tensor(std::vector<int64_t>(ids.begin(), ids.end()), at::kLong);
}

struct Task {
  at::Tensor codes;                 // [colours, kFeatures]: the "encoder output" of each colour
  at::Tensor prompt;                // int64 [P]: " Colour:"
  std::vector<int64_t> first_ids;   // the first token of " red", " blue", ...

  // A batch of `labels` (colour indices): rows [projected feature] + prompt, with the target of the
  // prompt's last position set to the colour's first token.
  struct Built {
    aios::adapters::Batch batch;
    at::Tensor targets, weights;  // [B,T]
  };
  Built build(aios::ali::Backbone& backbone, aios::adapters::LinearProjection& projection,
              const at::Tensor& labels, double noise) const {
    const at::Tensor features = codes.index_select(0, labels) + noise * at::randn({labels.size(0), kFeatures});
    const at::Tensor latents = projection->forward(features);  // [B,D]
    std::vector<aios::adapters::Row> rows;
    for (int64_t b = 0; b < labels.size(0); ++b) {
      rows.push_back({aios::adapters::Segment::latent(latents.slice(0, b, b + 1)), aios::adapters::Segment::text(prompt)});
    }
    Built out{aios::adapters::build_batch(backbone, rows), {}, {}};
    const int64_t B = labels.size(0), T = out.batch.ids.size(1), last = prompt.size(0);  // 1 latent + prompt
    out.targets = at::zeros({B, T}, at::kLong);
    out.weights = at::zeros({B, T});
    for (int64_t b = 0; b < B; ++b) {
      out.targets.index_put_({b, last}, first_ids[labels[b].item<int64_t>()]);
      out.weights.index_put_({b, last}, 1.0);
    }
    return out;
  }
};

double accuracy(aios::gradient::Backbone& backbone, aios::adapters::LinearProjection& projection, const Task& task) {
  at::NoGradGuard no_grad;
  const at::Tensor labels = at::arange(static_cast<int64_t>(kColours.size())).repeat({4});
  const auto built = task.build(backbone, projection, labels, kNoise);
  const at::Tensor hidden = backbone.forward(built.batch.latents, built.batch.forward_options()).hidden;
  const int64_t last = task.prompt.size(0);
  const at::Tensor predicted = backbone.classify(hidden.select(1, last)).argmax(-1);  // [B]
  return predicted.eq(built.targets.select(1, last)).to(at::kDouble).mean().item<double>();
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  std::string compare;  // the model to compare the host with, if any
  if (auto at = std::find(args.begin(), args.end(), "--compare"); at != args.end() && at + 1 != args.end()) {
    compare = *(at + 1);
    args.erase(at, at + 2);
  }
  const bool hosted = !args.empty() && args[0] == "--host";
  if (args.size() < 1 + static_cast<std::size_t>(hosted) || (!compare.empty() && !hosted)) {
    std::fprintf(stderr, "usage: train_projection MODEL [STEPS]\n       train_projection --host HOST:PORT [STEPS] [--compare MODEL]\n");
    return 2;
  }
  const int steps = args.size() > 1 + static_cast<std::size_t>(hosted) ? std::stoi(args[1 + hosted]) : 60;
  try {
    torch::manual_seed(0);
    std::shared_ptr<aios::gradient::Backbone> backbone;
    if (hosted) {
      backbone = aios::server::RemoteBackbone::connect(args[1]);
    } else {
      backbone = aios::local::LocalBackbone::load(args[0]);
    }
    const std::shared_ptr<aios::gradient::Backbone> here =
        compare.empty() ? nullptr : aios::local::LocalBackbone::load(compare);
    double loss_rel = 0, grad_rel = 0;  // the largest relative differences, host against here
    const auto tokenizer = backbone->tokenizer();
    if (!tokenizer) throw aios::Error(aios::ErrorCode::kInvalidArgument, "MODEL", "the model brings no tokenizer");

    // Codes of std 0.25 through a fresh Linear(32, D) give latents of about the spread of token embeddings.
    Task task{0.25 * at::randn({static_cast<int64_t>(kColours.size()), kFeatures}), ids_of(*tokenizer, " Colour:"), {}};
    for (const auto& colour : kColours) task.first_ids.push_back(ids_of(*tokenizer, " " + colour)[0].item<int64_t>());

    aios::adapters::LinearProjection projection(kFeatures, backbone->config().hidden_size);
    projection->check_fits(*backbone);
    torch::optim::Adam optimizer(projection->parameters(), torch::optim::AdamOptions(2e-2));
    const double before = accuracy(*backbone, projection, task);

    aios::gradient::LossOptions loss;
    for (int step = 0; step < steps; ++step) {
      const at::Tensor labels = at::arange(static_cast<int64_t>(kColours.size())).repeat({2});  // each colour twice
      const auto built = task.build(*backbone, projection, labels, kNoise);
      loss.loss = aios::gradient::CrossEntropy{built.targets, built.weights};
      // The backbone returns d loss / d latents; autograd carries it into the projection.
      const auto r = backbone->forward_backward(built.batch.latents.detach(), built.batch.forward_options(), loss);
      if (here) {  // the same inputs: the training follows the host, so a difference never compounds
        const auto mine = here->forward_backward(built.batch.latents.detach(), built.batch.forward_options(), loss);
        loss_rel = std::max(loss_rel, (r.loss - mine.loss).abs().item<double>() / mine.loss.abs().item<double>());
        grad_rel = std::max(grad_rel, (r.grad.latents - mine.grad.latents).norm().item<double>() /
                                          mine.grad.latents.norm().item<double>());
      }
      optimizer.zero_grad();
      built.batch.latents.backward(r.grad.latents);
      optimizer.step();
      std::printf("step %d loss %.4f\n", step + 1, r.loss.item<double>());
    }
    std::printf("accuracy before %.3f after %.3f\n", before, accuracy(*backbone, projection, task));
    if (here) std::printf("compared %d steps: loss within %.3e, gradient within %.3e\n", steps, loss_rel, grad_rel);
  } catch (const aios::Error& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
  return 0;
}
