// Trains an encoder in C++ against a backbone hosted by `aios serve`, with the thin client: no
// LibTorch, the encoder and its optimiser are a few lines of Eigen.
//
//   client_training HOST:PORT [--steps N] [--words ID,ID,...] [--prompt ID,ID,...] [--api-key KEY]
//
// A stand-in for another modality's encoder gives each word a fixed random feature vector [32]
// (plus fresh noise per sample). A linear projection W [32,D], b [D] maps it to one latent; the
// backbone reads [latent] + the prompt's token embeddings and must continue with the word. Only the
// projection trains (Adam), from the host's fused cross-entropy forward-backward: the host returns
// d loss / d latents and the projection's gradients follow by the chain rule, dW = X^T G, db = sum G.
// The backbone's weights never change. Prints the loss per step and, on held-out noise, the loss
// and accuracy before and after; exits with 1 if the loss did not fall.
//
// --words: the token ids to teach (e.g. the first tokens of " red", " blue", ...; default: eight
// ids spread over the vocabulary); --prompt: token ids that follow the latent (default: none).
#include <cmath>
#include <cstdio>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "aios/client/client.h"

namespace {

using aios::client::FloatTensor;
using aios::client::IdTensor;

constexpr Eigen::Index kFeatures = 32;
constexpr float kNoise = 0.05f;  // per-sample noise on the features

std::vector<int64_t> parse_ids(const std::string& text) {
  std::vector<int64_t> ids;
  std::stringstream in(text);
  for (std::string item; std::getline(in, item, ',');) ids.push_back(std::stoll(item));
  return ids;
}

FloatTensor<2> normal(Eigen::Index rows, Eigen::Index cols, float stddev, std::mt19937& rng) {
  std::normal_distribution<float> dist(0.0f, stddev);
  FloatTensor<2> out(rows, cols);
  for (Eigen::Index i = 0; i < out.size(); ++i) out.data()[i] = dist(rng);
  return out;
}

// Adam on one parameter tensor, written out.
template <int N>
struct Adam {
  FloatTensor<N> m, v;
  float lr, beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f;
  int step = 0;
  void update(FloatTensor<N>& param, const FloatTensor<N>& grad) {
    if (step++ == 0) {
      m = grad.constant(0.0f);
      v = grad.constant(0.0f);
    }
    m = beta1 * m + (1 - beta1) * grad;
    v = beta2 * v + (1 - beta2) * grad.square();
    const float c1 = 1 - std::pow(beta1, static_cast<float>(step)), c2 = 1 - std::pow(beta2, static_cast<float>(step));
    param -= lr * (m / c1) / ((v / c2).sqrt() + eps);
  }
};

struct Task {
  const aios::client::Client& client;
  std::vector<int64_t> words;  // the id each code must make the backbone predict
  FloatTensor<2> codes;        // [words, kFeatures]: the "encoder output" of each word
  FloatTensor<2> prompt;       // [P, D]: the prompt's token embeddings

  // A batch of every word `repeat` times: features X [B,F] and the targets of the last position.
  struct Batch {
    FloatTensor<2> features;  // [B, kFeatures]
    IdTensor<2> targets;      // [B, T]
    FloatTensor<2> weights;   // [B, T]: 1 at the last position, else 0
  };
  Batch batch(int repeat, std::mt19937& rng) const {
    const auto K = static_cast<Eigen::Index>(words.size()), B = K * repeat, T = 1 + prompt.dimension(0);
    Batch out{normal(B, kFeatures, kNoise, rng), IdTensor<2>(B, T), FloatTensor<2>(B, T)};
    out.targets.setZero();
    out.weights.setZero();
    for (Eigen::Index b = 0; b < B; ++b) {
      for (Eigen::Index f = 0; f < kFeatures; ++f) out.features(b, f) += codes(b % K, f);
      out.targets(b, T - 1) = words[b % K];
      out.weights(b, T - 1) = 1.0f;
    }
    return out;
  }

  // latents [B,T,D]: the projected features at position 0, the prompt after them.
  FloatTensor<3> latents(const FloatTensor<2>& features, const FloatTensor<2>& W, const FloatTensor<1>& bias) const {
    const Eigen::array<Eigen::IndexPair<int>, 1> product = {Eigen::IndexPair<int>(1, 0)};
    const FloatTensor<2> projected = features.contract(W, product);  // [B,D]
    const Eigen::Index B = features.dimension(0), D = W.dimension(1), P = prompt.dimension(0);
    FloatTensor<3> out(B, 1 + P, D);
    for (Eigen::Index b = 0; b < B; ++b) {
      for (Eigen::Index d = 0; d < D; ++d) out(b, 0, d) = projected(b, d) + bias(d);
      for (Eigen::Index p = 0; p < P; ++p) {
        for (Eigen::Index d = 0; d < D; ++d) out(b, 1 + p, d) = prompt(p, d);
      }
    }
    return out;
  }

  // Cross-entropy and accuracy of the last position, from the Latent API (forward, classify) and
  // a log-softmax here.
  std::pair<double, double> evaluate(const Batch& batch, const FloatTensor<2>& W, const FloatTensor<1>& bias) const {
    const FloatTensor<3> hidden = client.forward(latents(batch.features, W, bias)).hidden;
    const Eigen::Index B = hidden.dimension(0), last = hidden.dimension(1) - 1;
    const FloatTensor<2> logits = client.classify(FloatTensor<2>(hidden.chip<1>(last)));  // [B,V]
    double loss = 0, correct = 0;
    for (Eigen::Index b = 0; b < B; ++b) {
      const FloatTensor<1> row = logits.chip<0>(b);
      Eigen::Index best = 0;
      for (Eigen::Index v = 1; v < row.size(); ++v) best = row(v) > row(best) ? v : best;
      const double top = row(best);
      double sum = 0;
      for (Eigen::Index v = 0; v < row.size(); ++v) sum += std::exp(row(v) - top);
      const int64_t target = batch.targets(b, last);
      loss += top + std::log(sum) - row(target);
      correct += best == target ? 1 : 0;
    }
    return {loss / static_cast<double>(B), correct / static_cast<double>(B)};
  }
};

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || argv[1][0] == '-') {
    std::fprintf(stderr, "usage: client_training HOST:PORT [--steps N] [--words ID,...] [--prompt ID,...] [--api-key KEY]\n");
    return 2;
  }
  int steps = 40;
  std::vector<int64_t> words, prompt_ids;
  aios::client::ConnectOptions connect;
  for (int i = 2; i + 1 < argc; i += 2) {
    const std::string flag = argv[i], value = argv[i + 1];
    if (flag == "--steps") steps = std::stoi(value);
    else if (flag == "--words") words = parse_ids(value);
    else if (flag == "--prompt") prompt_ids = parse_ids(value);
    else if (flag == "--api-key") connect.api_key = value;
    else {
      std::fprintf(stderr, "unknown option %s\n", flag.c_str());
      return 2;
    }
  }
  try {
    const auto client = aios::client::Client::connect(argv[1], connect);
    const auto& config = client.config();
    std::printf("connected to %s: %s, D=%ld, V=%ld, %s on %s\n", argv[1], config.architecture.c_str(),
                static_cast<long>(config.hidden_size), static_cast<long>(config.vocab_size), config.dtype.c_str(),
                config.device.c_str());
    if (words.empty()) {
      for (int k = 1; k <= 8; ++k) words.push_back(k * config.vocab_size / 9);
    }

    std::mt19937 rng(0);
    Task task{client, words, normal(static_cast<Eigen::Index>(words.size()), kFeatures, 0.25f, rng), {}};
    // The prompt's embeddings, from the host (Latent API: embed), once.
    const auto P = static_cast<Eigen::Index>(prompt_ids.size());
    task.prompt = FloatTensor<2>(P, config.hidden_size);
    if (P > 0) {
      IdTensor<2> ids(1, P);
      for (Eigen::Index p = 0; p < P; ++p) ids(0, p) = prompt_ids[p];
      task.prompt = client.embed(ids).chip<0>(0);
    }

    // The encoder: latent = x W + b, initialised as torch.nn.Linear is (uniform, +-1/sqrt(fan_in)).
    const float bound = 1.0f / std::sqrt(static_cast<float>(kFeatures));
    FloatTensor<2> W(kFeatures, config.hidden_size);
    FloatTensor<1> bias(config.hidden_size);
    W.setRandom();
    bias.setRandom();  // uniform in [0,1): rescaled to [-bound, bound)
    W = (W * 2.0f - 1.0f) * bound;
    bias = (bias * 2.0f - 1.0f) * bound;
    Adam<2> adam_W{{}, {}, 2e-2f};
    Adam<1> adam_b{{}, {}, 2e-2f};

    std::mt19937 held_out_rng(1);
    const Task::Batch held_out = task.batch(4, held_out_rng);
    const auto [loss_before, accuracy_before] = task.evaluate(held_out, W, bias);

    const Eigen::array<Eigen::IndexPair<int>, 1> over_batch = {Eigen::IndexPair<int>(0, 0)};
    const Eigen::array<Eigen::Index, 1> batch_axis = {0};
    for (int step = 0; step < steps; ++step) {
      const Task::Batch batch = task.batch(2, rng);  // each word twice
      // One round trip: the host runs forward, cross-entropy and backward, and returns d loss / d latents.
      const auto r = client.forward_backward(task.latents(batch.features, W, bias), {},
                                             {aios::client::CrossEntropy{batch.targets, batch.weights}});
      const FloatTensor<2> g = r.grad.chip<1>(0);  // [B,D]: the gradient at the projected position
      adam_W.update(W, FloatTensor<2>(batch.features.contract(g, over_batch)));  // X^T G: [F,D]
      adam_b.update(bias, FloatTensor<1>(g.sum(batch_axis)));
      std::printf("step %d loss %.4f\n", step + 1, r.loss);
    }

    const auto [loss_after, accuracy_after] = task.evaluate(held_out, W, bias);
    std::printf("held-out loss before %.4f after %.4f\n", loss_before, loss_after);
    std::printf("accuracy before %.3f after %.3f\n", accuracy_before, accuracy_after);
    if (!(loss_after < loss_before)) {
      std::fprintf(stderr, "the loss did not fall\n");
      return 1;
    }
  } catch (const aios::Error& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
  return 0;
}
