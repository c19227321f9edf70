// Loads a checkpoint through the installed public headers and prints the logits' shape.
#include <iostream>

#include "aios/local/local_backbone.h"
#include "aios/error.h"

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  try {
    auto backbone = aios::local::LocalBackbone::load(argv[1]);
    const at::Tensor ids = at::zeros({1, 3}, at::kLong);
    const at::Tensor logits = backbone->classify(backbone->forward(backbone->embed(ids)).hidden);
    std::cout << "logits " << logits.sizes() << "\n";
  } catch (const aios::Error& e) {
    std::cerr << e.what() << "\n";
    return 1;
  }
  return 0;
}
