// Calls a hosted backbone through RemoteBackbone, linking aios_remote and not the host's library.
#include <iostream>

#include "aios/error.h"
#include "aios/server/remote_backbone.h"

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  try {
    aios::wire::ConnectOptions options;
    options.timeout = std::chrono::seconds(60);
    auto backbone = aios::server::RemoteBackbone::connect(argv[1], options);
    const at::Tensor ids = at::zeros({1, 3}, at::kLong);
    const at::Tensor logits = backbone->classify(backbone->forward(backbone->embed(ids)).hidden);
    std::cout << "logits " << logits.sizes() << "\n";
  } catch (const aios::Error& e) {
    std::cerr << e.what() << "\n";
    return 1;
  }
  return 0;
}
