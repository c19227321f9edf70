#include "aios/adapters/storage.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <filesystem>
#include <limits>
#include <mutex>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>
#include <torch/nn/modules/container/any.h>

#include "aios/fail.h"
#include "aios/json.h"
#include "aios/io/safetensors.h"
#include "aios/io/files.h"

namespace aios::adapters {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;


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
  std::map<std::string, AdapterFactory> factories;
};

// What differs between the two kinds of adapters: the manifest's name and format, the registry.
struct Role {
  const char* noun;      // "encoder" or "decoder", for messages
  const char* manifest;  // the manifest file in the folder
  const char* format;    // its "format" value
  const char* weights;   // prefix of its weight files: saving removes the older ones of its kind only
  Registry& registry;
};

int64_t size_of(const AdapterSizes& sizes, const std::string& name) {
  auto it = sizes.find(name);
  if (it == sizes.end()) fail(ErrorCode::kInvalidArgument, "sizes." + name, "expected an entry, got none");
  return it->second;
}

const Role& encoders() {
  static Registry* r = [] {
    auto* r = new Registry;
    r->factories["linear_projection"] = [](const AdapterSizes& s) -> std::shared_ptr<torch::nn::Module> {
      LinearProjectionOptions o(size_of(s, "in_features"), size_of(s, "out_features"));
      o.bias = size_of(s, "bias") != 0;
      return std::make_shared<LinearProjectionImpl>(o);
    };
    r->factories["mlp_projection"] = [](const AdapterSizes& s) -> std::shared_ptr<torch::nn::Module> {
      return std::make_shared<MlpProjectionImpl>(
          MlpProjectionOptions(size_of(s, "in_features"), size_of(s, "out_features"), size_of(s, "hidden_features")));
    };
    r->factories["gist_latents"] = [](const AdapterSizes& s) -> std::shared_ptr<torch::nn::Module> {
      GistLatentsOptions o(size_of(s, "count"), size_of(s, "dim"));
      o.init_std = 0;  // the file's values replace them: skip drawing random numbers
      return std::make_shared<GistLatentsImpl>(o);
    };
    r->factories["audio_encoder"] = [](const AdapterSizes& s) -> std::shared_ptr<torch::nn::Module> {
      AudioEncoderOptions o(size_of(s, "out_features"));
      o.features = {size_of(s, "sample_rate"), size_of(s, "n_fft"), size_of(s, "hop_length"), size_of(s, "n_mels")};
      o.channels = size_of(s, "channels");
      o.layers = size_of(s, "layers");
      return std::make_shared<AudioEncoderImpl>(o);
    };
    return r;
  }();
  static const Role role{"encoder", "encoder.json", "aios.encoder", "weights-", *r};
  return role;
}

const Role& decoders() {
  static Registry* r = [] {
    auto* r = new Registry;
    r->factories["linear_decoder"] = [](const AdapterSizes& s) -> std::shared_ptr<torch::nn::Module> {
      return std::make_shared<LinearDecoderImpl>(
          LinearDecoderOptions(size_of(s, "dim"), size_of(s, "out_features"), size_of(s, "span")));
    };
    return r;
  }();
  static const Role role{"decoder", "decoder.json", "aios.decoder", "decoder-weights-", *r};
  return role;
}

void register_kind(const Role& role, const std::string& kind, AdapterFactory factory) {
  if (kind.empty()) fail(ErrorCode::kInvalidArgument, "kind", "expected a name, got an empty string");
  if (!factory) fail(ErrorCode::kInvalidArgument, "factory", "expected a function, got none");
  std::lock_guard lock(role.registry.mutex);
  if (!role.registry.factories.emplace(kind, std::move(factory)).second) {
    fail(ErrorCode::kAlreadyExists, "kind", "an {} kind named {} is registered already", role.noun, kind);
  }
}

void save_tensors(const Role& role, const std::map<std::string, at::Tensor>& tensors, const AdapterManifest& manifest,
                  const std::string& path) {
  if (manifest.kind.empty()) fail(ErrorCode::kInvalidArgument, "manifest.kind", "expected a name, got an empty string");
  std::vector<at::Tensor> keep;  // owns the CPU copies the views point into
  std::vector<io::TensorView> views;
  for (const auto& [name, tensor] : tensors) {
    const at::Tensor t = tensor.detach().cpu().contiguous();
    keep.push_back(t);
    views.push_back({name, to_io(t.scalar_type(), name), t.sizes().vec(), static_cast<const std::byte*>(t.data_ptr()),
                     static_cast<std::size_t>(t.nbytes())});
  }
  io::create_folders(path);  // durable too: a save that returned is still there after a crash
  const std::string weights = io::unique_file_name(role.weights, ".safetensors");
  const fs::path folder(path);
  io::write_safetensors((folder / weights).string(), views, {{"kind", manifest.kind}});

  json m = {{"format", role.format}, {"version", 1}, {"kind", manifest.kind}, {"sizes", manifest.sizes},
            {"weights", weights}, {"crc32", crc32(io::read_file((folder / weights).string()))}};
  io::write_file_atomically((folder / role.manifest).string(), m.dump(2) + "\n");

  io::remove_superseded(path, role.weights, weights);  // older weight files are unreachable now
}

struct ParsedManifest {
  AdapterManifest manifest;
  std::string weights;
  std::uint32_t crc = 0;
};

ParsedManifest parse_manifest(const Role& role, const std::string& path) {
  const fs::path file = fs::path(path) / role.manifest;
  std::error_code error;
  if (!fs::is_regular_file(file, error)) fail(ErrorCode::kNotFound, file.string(), "no {} manifest here", role.noun);
  const std::string text = io::read_file(file.string());
  ParsedManifest p;
  try {
    const json m = parse_json(text, file.string());
    if (m.at("format").get<std::string>() != role.format) {
      fail(ErrorCode::kDataLoss, file.string(), "expected format {}, got {}", role.format, json_excerpt(m.at("format")));
    }
    json_integer(m.at("version"), file.string() + ": version", 1, 1);
    p.manifest.kind = m.at("kind").get<std::string>();
    for (const auto& [name, size] : m.at("sizes").get<json::object_t>()) {
      p.manifest.sizes[name] = json_integer(size, file.string() + ": sizes." + name, 0, std::numeric_limits<int32_t>::max());
    }
    p.weights = m.at("weights").get<std::string>();
    p.crc = static_cast<std::uint32_t>(json_integer(m.at("crc32"), file.string() + ": crc32", 0, 0xFFFFFFFF));
  } catch (const json::exception& e) {
    fail(ErrorCode::kDataLoss, file.string(), "not a valid {} manifest: {}", role.noun, e.what());
  }
  // The weights must lie in the folder itself: a manifest cannot point elsewhere.
  if (p.weights.empty() || p.weights.find('/') != std::string::npos || p.weights.starts_with(".")) {
    fail(ErrorCode::kDataLoss, file.string(), "expected a file name in weights, got {}", p.weights);
  }
  return p;
}


// Sizes of built-in kinds that describe the input, not the parameters: the audio encoder's
// feature settings (the factory bounds them instead: LogMelOptions' limits).
bool describes_input(const std::string& kind, const std::string& name) {
  return kind == "audio_encoder" && (name == "sample_rate" || name == "n_fft" || name == "hop_length");
}

// The weights of the folder whose manifest is `p`, checked before anything is built from the
// manifest's sizes: those must not ask for more than the file can fill (every other size is a
// dimension or a count of the module's parameters, so none exceeds the number of values the file holds).
StoredAdapter read_stored(const Role& role, const std::string& path, ParsedManifest p) {
  const std::string weights = (fs::path(path) / p.weights).string();
  std::error_code error;
  if (!fs::is_regular_file(weights, error)) fail(ErrorCode::kNotFound, weights, "the weights file the manifest names is missing");
  const std::uint32_t crc = crc32(io::read_file(weights));
  if (crc != p.crc) {
    fail(ErrorCode::kDataLoss, weights, "expected CRC-32 {} (from the manifest), got {}: the file is corrupt", p.crc, crc);
  }
  const io::SafetensorsFile file = io::SafetensorsFile::open(weights);
  int64_t values = 0;
  for (const io::TensorView& view : file.tensors()) values += view.numel();
  for (const auto& [name, size] : p.manifest.sizes) {
    if (size > std::max<int64_t>(values, 1) && !describes_input(p.manifest.kind, name)) {
      fail(ErrorCode::kDataLoss, (fs::path(path) / role.manifest).string() + ": sizes." + name,
           "{} is more than the {} values of the weights file", size, values);
    }
  }
  StoredAdapter stored{std::move(p.manifest), {}};
  for (const io::TensorView& view : file.tensors()) {
    // The mapped bytes may be unaligned: copied into a fresh tensor.
    at::Tensor value = at::empty(view.shape, at::TensorOptions().dtype(to_torch(view.dtype)));
    std::memcpy(value.data_ptr(), view.data, view.size_bytes);
    stored.tensors.emplace(view.name, std::move(value));
  }
  return stored;
}

std::shared_ptr<torch::nn::Module> load_module(const Role& role, const std::string& path) {
  ParsedManifest p = parse_manifest(role, path);
  AdapterFactory factory;
  {
    Registry& r = role.registry;
    std::lock_guard lock(r.mutex);
    auto it = r.factories.find(p.manifest.kind);
    if (it == r.factories.end()) {
      fail(ErrorCode::kNotFound, "kind", "no {0} kind named {1} is registered (register_{0})", role.noun, p.manifest.kind);
    }
    factory = it->second;
  }
  const std::string weights = (fs::path(path) / p.weights).string();
  const StoredAdapter stored = read_stored(role, path, std::move(p));
  std::shared_ptr<torch::nn::Module> module;
  try {
    module = factory(stored.manifest.sizes);
  } catch (const Error& e) {
    if (e.code() != ErrorCode::kInvalidArgument) throw;
    fail(ErrorCode::kDataLoss, (fs::path(path) / role.manifest).string(), "sizes the {} {} cannot take: {}",
         stored.manifest.kind, role.noun, e.what());
  }
  std::map<std::string, at::Tensor> targets = tensors_of(*module);
  if (stored.tensors.size() != targets.size()) {
    fail(ErrorCode::kDataLoss, weights, "expected {} tensors for a {} {}, got {}", targets.size(), stored.manifest.kind,
         role.noun, stored.tensors.size());
  }
  at::NoGradGuard no_grad;
  for (auto& [name, target] : targets) {
    auto found = stored.tensors.find(name);
    if (found == stored.tensors.end()) fail(ErrorCode::kDataLoss, weights, "expected a tensor named {}, got none", name);
    if (found->second.sizes() != target.sizes()) {
      fail(ErrorCode::kDataLoss, weights + ":" + name, "expected shape [{}], got [{}]", fmt::join(target.sizes(), ","),
           fmt::join(found->second.sizes(), ","));
    }
    target.copy_(found->second);
  }
  return module;
}

}  // namespace

AdapterManifest manifest_of(const LinearProjectionImpl& e) {
  return {"linear_projection",
          {{"in_features", e.options.in_features}, {"out_features", e.options.out_features}, {"bias", e.options.bias ? 1 : 0}}};
}

AdapterManifest manifest_of(const MlpProjectionImpl& e) {
  return {"mlp_projection",
          {{"in_features", e.options.in_features},
           {"out_features", e.options.out_features},
           {"hidden_features", e.options.hidden_features}}};
}

AdapterManifest manifest_of(const GistLatentsImpl& e) {
  return {"gist_latents", {{"count", e.options.count}, {"dim", e.options.dim}}};
}

AdapterManifest manifest_of(const AudioEncoderImpl& e) {
  const LogMelOptions& f = e.options.features;
  return {"audio_encoder",
          {{"out_features", e.options.out_features},
           {"sample_rate", f.sample_rate},
           {"n_fft", f.n_fft},
           {"hop_length", f.hop_length},
           {"n_mels", f.n_mels},
           {"channels", e.options.channels},
           {"layers", e.options.layers}}};
}

AdapterManifest manifest_of(const LinearDecoderImpl& d) {
  return {"linear_decoder", {{"dim", d.options.dim}, {"out_features", d.options.out_features}, {"span", d.options.span}}};
}

void register_encoder(const std::string& kind, AdapterFactory factory) { register_kind(encoders(), kind, std::move(factory)); }

void register_decoder(const std::string& kind, AdapterFactory factory) { register_kind(decoders(), kind, std::move(factory)); }

void save_encoder(const torch::nn::Module& encoder, const AdapterManifest& manifest, const std::string& path) {
  save_tensors(encoders(), tensors_of(encoder), manifest, path);
}

void save_decoder(const torch::nn::Module& decoder, const AdapterManifest& manifest, const std::string& path) {
  save_tensors(decoders(), tensors_of(decoder), manifest, path);
}

void save_encoder_tensors(const std::map<std::string, at::Tensor>& tensors, const AdapterManifest& manifest,
                          const std::string& path) {
  save_tensors(encoders(), tensors, manifest, path);
}

void save_decoder_tensors(const std::map<std::string, at::Tensor>& tensors, const AdapterManifest& manifest,
                          const std::string& path) {
  save_tensors(decoders(), tensors, manifest, path);
}

StoredAdapter read_encoder(const std::string& path) { return read_stored(encoders(), path, parse_manifest(encoders(), path)); }

StoredAdapter read_decoder(const std::string& path) { return read_stored(decoders(), path, parse_manifest(decoders(), path)); }

AdapterManifest read_encoder_manifest(const std::string& path) { return parse_manifest(encoders(), path).manifest; }

AdapterManifest read_decoder_manifest(const std::string& path) { return parse_manifest(decoders(), path).manifest; }

std::shared_ptr<torch::nn::Module> load_encoder(const std::string& path) { return load_module(encoders(), path); }

LoadedDecoder load_decoder(const std::string& path) {
  LoadedDecoder loaded;
  loaded.module = load_module(decoders(), path);
  loaded.decoder = std::dynamic_pointer_cast<ali::Decoder>(loaded.module);
  if (!loaded.decoder) {
    fail(ErrorCode::kDataLoss, "kind", "the decoder kind {} builds a module that is not an ali::Decoder",
         read_decoder_manifest(path).kind);
  }
  return loaded;
}

}  // namespace aios::adapters
