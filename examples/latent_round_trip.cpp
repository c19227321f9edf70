// A latent round trip from C++: ids -> embed -> forward -> classify -> the most likely next ids.
//
//   latent_round_trip MODEL [ID ...]
#include <chrono>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "aios/local/local_backbone.h"
#include "aios/error.h"

int main(int argc, char** argv) {
  if (argc < 2) {
    fmt::print(stderr, "usage: latent_round_trip MODEL [ID ...]\n");
    return 2;
  }
  try {
    auto backbone = aios::local::LocalBackbone::load(argv[1]);
    std::vector<int64_t> ids;
    for (int i = 2; i < argc; ++i) ids.push_back(std::stoll(argv[i]));
    if (ids.empty()) ids = {1, 2, 3, 4};
    const at::Tensor id_tensor = at::tensor(ids).unsqueeze(0);  // [1,T]

    const auto start = std::chrono::steady_clock::now();
    const at::Tensor latents = backbone->embed(id_tensor);            // [1,T,D]
    aios::ali::ForwardOptions options;
    options.layers = {backbone->config().num_layers / 2};
    const aios::ali::ForwardOutput out = backbone->forward(latents, options);  // hidden [1,T,D]
    const at::Tensor logits = backbone->classify(out.hidden);                  // [1,T,V]
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();

    fmt::print("ids      {}\n", ids);
    fmt::print("latents  [{}]\n", fmt::join(latents.sizes(), ","));
    fmt::print("hidden   [{}] (+ layer {} [{}])\n", fmt::join(out.hidden.sizes(), ","), options.layers[0],
               fmt::join(out.layers[0].sizes(), ","));
    fmt::print("logits   [{}]\n", fmt::join(logits.sizes(), ","));
    const at::Tensor next = logits.argmax(-1).squeeze(0);
    fmt::print("next id  {} (argmax at each position)\n",
               std::vector<int64_t>(next.data_ptr<int64_t>(), next.data_ptr<int64_t>() + next.numel()));
    fmt::print("time     {:.1f} ms\n", ms);
  } catch (const aios::Error& e) {
    fmt::print(stderr, "latent_round_trip: {}\n", e.what());
    return 1;
  }
  return 0;
}
