#include "aios/adapters/storage.h"

#include <array>
#include <cstring>
#include <filesystem>
#include <mutex>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>
#include <torch/nn/modules/container/any.h>

#include "aios/fail.h"
#include "aios/io/safetensors.h"

namespace aios::adapters {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr const char* kManifest = "encoder.json";
constexpr const char* kFormat = "aios.encoder";

// CRC-32 as zlib computes it (reflected polynomial 0xEDB88320), so Python's zlib.crc32 agrees.
std::uint32_t crc32(const std::string& bytes) {
  static const std::array<std::uint32_t, 256> table = [] {
    std::array<std::uint32_t, 256> t{};
    for (std::uint32_t i = 0; i < 256; ++i) {
      std::uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  std::uint32_t c = 0xFFFFFFFFu;
  for (unsigned char byte : bytes) c = table[(c ^ byte) & 0xFF] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

io::DType to_io(at::ScalarType t, const std::string& name) {
  switch (t) {
    case at::kDouble: return io::DType::kF64;
    case at::kFloat: return io::DType::kF32;
    case at::kHalf: return io::DType::kF16;
    case at::kBFloat16: return io::DType::kBF16;
    case at::kLong: return io::DType::kI64;
    case at::kInt: return io::DType::kI32;
    case at::kBool: return io::DType::kBool;
    default: fail(ErrorCode::kInvalidArgument, name, "cannot store dtype {}", c10::toString(t));
  }
}

at::ScalarType to_torch(io::DType t) {
  switch (t) {
    case io::DType::kF64: return at::kDouble;
    case io::DType::kF32: return at::kFloat;
    case io::DType::kF16: return at::kHalf;
    case io::DType::kBF16: return at::kBFloat16;
    case io::DType::kI64: return at::kLong;
    case io::DType::kI32: return at::kInt;
    case io::DType::kI16: return at::kShort;
    case io::DType::kI8: return at::kChar;
    case io::DType::kU8: return at::kByte;
    case io::DType::kBool: return at::kBool;
  }
  return at::kFloat;
}

// Parameters and buffers by their dotted torch::nn names.
std::map<std::string, at::Tensor> tensors_of(const torch::nn::Module& module) {
  std::map<std::string, at::Tensor> out;
  for (const auto& p : module.named_parameters(true)) out[p.key()] = p.value();
  for (const auto& b : module.named_buffers(true)) out[b.key()] = b.value();
  return out;
}

struct Registry {
  std::mutex mutex;
  std::map<std::string, EncoderFactory> factories;
};

int64_t size_of(const EncoderSizes& sizes, const std::string& name) {
  auto it = sizes.find(name);
  if (it == sizes.end()) fail(ErrorCode::kInvalidArgument, "sizes." + name, "expected an entry, got none");
  return it->second;
}

Registry& registry() {
  static Registry* r = [] {
    auto* r = new Registry;
    r->factories["linear_projection"] = [](const EncoderSizes& s) -> std::shared_ptr<torch::nn::Module> {
      LinearProjectionOptions o(size_of(s, "in_features"), size_of(s, "out_features"));
      o.bias = size_of(s, "bias") != 0;
      return std::make_shared<LinearProjectionImpl>(o);
    };
    r->factories["mlp_projection"] = [](const EncoderSizes& s) -> std::shared_ptr<torch::nn::Module> {
      return std::make_shared<MlpProjectionImpl>(
          MlpProjectionOptions(size_of(s, "in_features"), size_of(s, "out_features"), size_of(s, "hidden_features")));
    };
    r->factories["gist_latents"] = [](const EncoderSizes& s) -> std::shared_ptr<torch::nn::Module> {
      GistLatentsOptions o(size_of(s, "count"), size_of(s, "dim"));
      o.init_std = 0;  // the file's values replace them: skip drawing random numbers
      return std::make_shared<GistLatentsImpl>(o);
    };
    return r;
  }();
  return *r;
}

}  // namespace

void register_encoder(const std::string& kind, EncoderFactory factory) {
  if (kind.empty()) fail(ErrorCode::kInvalidArgument, "kind", "expected a name, got an empty string");
  if (!factory) fail(ErrorCode::kInvalidArgument, "factory", "expected a function, got none");
  Registry& r = registry();
  std::lock_guard lock(r.mutex);
  if (!r.factories.emplace(kind, std::move(factory)).second) {
    fail(ErrorCode::kAlreadyExists, "kind", "an encoder kind named {} is registered already", kind);
  }
}

EncoderManifest manifest_of(const LinearProjectionImpl& e) {
  return {"linear_projection",
          {{"in_features", e.options.in_features}, {"out_features", e.options.out_features}, {"bias", e.options.bias ? 1 : 0}}};
}

EncoderManifest manifest_of(const MlpProjectionImpl& e) {
  return {"mlp_projection",
          {{"in_features", e.options.in_features},
           {"out_features", e.options.out_features},
           {"hidden_features", e.options.hidden_features}}};
}

EncoderManifest manifest_of(const GistLatentsImpl& e) {
  return {"gist_latents", {{"count", e.options.count}, {"dim", e.options.dim}}};
}

void save_encoder(const torch::nn::Module& encoder, const EncoderManifest& manifest, const std::string& path) {
  if (manifest.kind.empty()) fail(ErrorCode::kInvalidArgument, "manifest.kind", "expected a name, got an empty string");
  std::error_code error;
  fs::create_directories(path, error);
  if (error) fail(ErrorCode::kUnavailable, path, "cannot create the folder: {}", error.message());

  std::vector<at::Tensor> keep;  // owns the CPU copies the views point into
  std::vector<io::TensorView> views;
  for (const auto& [name, tensor] : tensors_of(encoder)) {
    const at::Tensor t = tensor.detach().cpu().contiguous();
    keep.push_back(t);
    views.push_back({name, to_io(t.scalar_type(), name), t.sizes().vec(), static_cast<const std::byte*>(t.data_ptr()),
                     static_cast<std::size_t>(t.nbytes())});
  }
  const std::string weights = io::unique_file_name("weights-", ".safetensors");
  const fs::path folder(path);
  io::write_safetensors((folder / weights).string(), views, {{"kind", manifest.kind}});

  json m = {{"format", kFormat}, {"version", 1}, {"kind", manifest.kind}, {"sizes", manifest.sizes},
            {"weights", weights}, {"crc32", crc32(io::read_file((folder / weights).string()))}};
  io::write_file_atomically((folder / kManifest).string(), m.dump(2) + "\n");

  io::remove_superseded(path, "weights-", weights);  // older weight files are unreachable now
}

namespace {

struct ParsedManifest {
  EncoderManifest manifest;
  std::string weights;
  std::uint32_t crc = 0;
};

ParsedManifest parse_manifest(const std::string& path) {
  const fs::path file = fs::path(path) / kManifest;
  std::error_code error;
  if (!fs::is_regular_file(file, error)) fail(ErrorCode::kNotFound, file.string(), "no encoder manifest here");
  const std::string text = io::read_file(file.string());
  ParsedManifest p;
  try {
    const json m = json::parse(text);
    if (m.at("format").get<std::string>() != kFormat) {
      fail(ErrorCode::kDataLoss, file.string(), "expected format {}, got {}", kFormat, m.at("format").dump());
    }
    if (m.at("version").get<int64_t>() != 1) {
      fail(ErrorCode::kDataLoss, file.string(), "expected version 1, got {}", m.at("version").dump());
    }
    p.manifest.kind = m.at("kind").get<std::string>();
    p.manifest.sizes = m.at("sizes").get<EncoderSizes>();
    p.weights = m.at("weights").get<std::string>();
    p.crc = m.at("crc32").get<std::uint32_t>();
  } catch (const json::exception& e) {
    fail(ErrorCode::kDataLoss, file.string(), "not a valid encoder manifest: {}", e.what());
  }
  // The weights must lie in the folder itself: a manifest cannot point elsewhere.
  if (p.weights.empty() || p.weights.find('/') != std::string::npos || p.weights.starts_with(".")) {
    fail(ErrorCode::kDataLoss, file.string(), "expected a file name in weights, got {}", p.weights);
  }
  return p;
}

}  // namespace

EncoderManifest read_encoder_manifest(const std::string& path) { return parse_manifest(path).manifest; }

std::shared_ptr<torch::nn::Module> load_encoder(const std::string& path) {
  const ParsedManifest p = parse_manifest(path);
  EncoderFactory factory;
  {
    Registry& r = registry();
    std::lock_guard lock(r.mutex);
    auto it = r.factories.find(p.manifest.kind);
    if (it == r.factories.end()) {
      fail(ErrorCode::kNotFound, "kind", "no encoder kind named {} is registered (register_encoder)", p.manifest.kind);
    }
    factory = it->second;
  }
  std::shared_ptr<torch::nn::Module> module;
  try {
    module = factory(p.manifest.sizes);
  } catch (const Error& e) {
    if (e.code() != ErrorCode::kInvalidArgument) throw;
    fail(ErrorCode::kDataLoss, (fs::path(path) / kManifest).string(), "sizes the {} encoder cannot take: {}",
         p.manifest.kind, e.what());
  }

  const std::string weights = (fs::path(path) / p.weights).string();
  std::error_code error;
  if (!fs::is_regular_file(weights, error)) fail(ErrorCode::kNotFound, weights, "the weights file the manifest names is missing");
  const std::uint32_t crc = crc32(io::read_file(weights));
  if (crc != p.crc) {
    fail(ErrorCode::kDataLoss, weights, "expected CRC-32 {} (from the manifest), got {}: the file is corrupt", p.crc, crc);
  }
  const io::SafetensorsFile file = io::SafetensorsFile::open(weights);
  std::map<std::string, at::Tensor> targets = tensors_of(*module);
  if (file.tensors().size() != targets.size()) {
    fail(ErrorCode::kDataLoss, weights, "expected {} tensors for a {} encoder, got {}", targets.size(), p.manifest.kind,
         file.tensors().size());
  }
  at::NoGradGuard no_grad;
  for (auto& [name, target] : targets) {
    const io::TensorView* view = file.find(name);
    if (view == nullptr) fail(ErrorCode::kDataLoss, weights, "expected a tensor named {}, got none", name);
    if (at::IntArrayRef(view->shape) != target.sizes()) {
      fail(ErrorCode::kDataLoss, weights + ":" + name, "expected shape [{}], got [{}]", fmt::join(target.sizes(), ","),
           fmt::join(view->shape, ","));
    }
    // The mapped bytes may be unaligned: copy them into a fresh tensor first.
    at::Tensor value = at::empty(view->shape, at::TensorOptions().dtype(to_torch(view->dtype)));
    std::memcpy(value.data_ptr(), view->data, view->size_bytes);
    target.copy_(value);
  }
  return module;
}

}  // namespace aios::adapters
