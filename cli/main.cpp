// aios — command-line entry point.
//
//   aios info MODEL [--device cpu|cuda[:N]] [--dtype float32|bfloat16|float16]
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "aios/ali/local_backbone.h"
#include "aios/fail.h"

namespace {

constexpr const char* kUsage =
    "usage: aios info MODEL [--device cpu|cuda[:N]] [--dtype float32|bfloat16|float16]\n"
    "\n"
    "  info   load a checkpoint folder (config.json + safetensors) and print what it holds\n";

std::string with_thousands(int64_t n) {
  std::string digits = std::to_string(n), out;
  for (std::size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out.push_back(',');
    out.push_back(digits[i]);
  }
  return out;
}

int info(const std::string& path, const aios::ali::LoadOptions& options) {
  const auto start = std::chrono::steady_clock::now();
  auto backbone = aios::ali::LocalBackbone::load(path, options);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const aios::backbone::ModelConfig& c = backbone->config();
  fmt::print("model           {}\n", path);
  fmt::print("architecture    {} ({} family)\n", c.architecture, aios::backbone::family_name(c.family));
  fmt::print("layers          {}\n", c.num_layers);
  fmt::print("hidden size     {}\n", c.hidden_size);
  fmt::print("heads           {} query, {} key/value, head dim {}\n", c.num_heads, c.num_kv_heads, c.head_dim);
  fmt::print("mlp width       {}\n", c.intermediate_size);
  fmt::print("vocabulary      {}\n", c.vocab_size);
  fmt::print("max positions   {}\n", c.max_positions);
  fmt::print("output head     {}\n", c.tie_word_embeddings ? "tied to the embedding" : "separate");
  fmt::print("parameters      {}\n", with_thousands(backbone->parameter_count()));
  fmt::print("dtype           {}\n", aios::backbone::dtype_name(backbone->dtype()));
  fmt::print("device          {}\n", backbone->device().str());
  fmt::print("load time       {:.3f} s\n", seconds);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  try {
    if (args.empty() || args[0] == "-h" || args[0] == "--help") {
      std::fputs(kUsage, args.empty() ? stderr : stdout);
      return args.empty() ? 2 : 0;
    }
    if (args[0] != "info") {
      aios::fail(aios::ErrorCode::kInvalidArgument, "command", "expected info, got \"{}\"", args[0]);
    }
    aios::ali::LoadOptions options;
    std::string model;
    for (std::size_t i = 1; i < args.size(); ++i) {
      if ((args[i] == "--device" || args[i] == "--dtype") && i + 1 < args.size()) {
        if (args[i] == "--device") options.device = aios::backbone::parse_device(args[i + 1], "--device");
        else options.dtype = aios::backbone::parse_dtype(args[i + 1], "--dtype");
        ++i;
      } else if (model.empty() && args[i].rfind("--", 0) != 0) {
        model = args[i];
      } else {
        aios::fail(aios::ErrorCode::kInvalidArgument, "arguments", "unexpected \"{}\"", args[i]);
      }
    }
    if (model.empty()) aios::fail(aios::ErrorCode::kInvalidArgument, "MODEL", "expected a checkpoint folder");
    return info(model, options);
  } catch (const aios::Error& e) {
    fmt::print(stderr, "aios: {}\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    fmt::print(stderr, "aios: internal: {}\n", e.what());
    return 1;
  }
}
