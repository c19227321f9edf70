#include "aios/io/files.h"
#include "aios/backbone/model.h"

#include <ATen/core/grad_mode.h>
#include <filesystem>
#include <algorithm>
#include <map>
#include <set>

#include <fmt/ranges.h>

#include "aios/fail.h"
#include "architectures.h"
#include "gguf_checkpoint.h"
#include "packed.h"

namespace aios::backbone {

namespace fs = std::filesystem;

c10::ScalarType parse_dtype(const std::string& text, const std::string& field) {
  const std::string name = text.rfind("torch.", 0) == 0 ? text.substr(6) : text;
  if (name == "float32" || name == "float") return c10::kFloat;
  if (name == "bfloat16") return c10::kBFloat16;
  if (name == "float16" || name == "half") return c10::kHalf;
  if (name == "float64" || name == "double") return c10::kDouble;
  fail(ErrorCode::kInvalidArgument, field, "expected float32, bfloat16, float16 or float64, got \"{}\"", text);
}

std::string shape_of(const at::Tensor& t) { return fmt::format("[{}]", fmt::join(t.sizes(), ",")); }

std::string dtype_name(c10::ScalarType dtype) {
  switch (dtype) {
    case c10::kFloat: return "float32";
    case c10::kBFloat16: return "bfloat16";
    case c10::kHalf: return "float16";
    case c10::kDouble: return "float64";
    case c10::kLong: return "int64";
    case c10::kInt: return "int32";
    case c10::kShort: return "int16";
    case c10::kChar: return "int8";
    case c10::kByte: return "uint8";
    case c10::kBool: return "bool";
    default: return c10::toString(dtype);
  }
}

c10::Device parse_device(const std::string& name, const std::string& field) {
  try {
    const c10::Device device(name);
    if (device.is_cpu() || device.is_cuda()) return device;
  } catch (const c10::Error&) {
  }
  fail(ErrorCode::kInvalidArgument, field, "expected cpu, cuda or cuda:N, got \"{}\"", name);
}

WeightStorage parse_weight_storage(const std::string& name, const std::string& field) {
  if (name == "auto") return WeightStorage::kAuto;
  if (name == "expanded") return WeightStorage::kExpanded;
  if (name == "stored") return WeightStorage::kStored;
  if (name == "int8") return WeightStorage::kInt8;
  if (name == "int4") return WeightStorage::kInt4;
  fail(ErrorCode::kInvalidArgument, field, "expected auto, expanded, stored, int8 or int4, got \"{}\"", name);
}

std::string weight_storage_name(WeightStorage storage) {
  switch (storage) {
    case WeightStorage::kAuto: return "auto";
    case WeightStorage::kExpanded: return "expanded";
    case WeightStorage::kStored: return "stored";
    case WeightStorage::kInt8: return "int8";
    case WeightStorage::kInt4: return "int4";
  }
  return "?";
}

Model::Model(ModelConfig config, const LoadOptions& options)
    : config_(std::move(config)), device_(options.device), dtype_(options.dtype), requested_storage_(options.weights) {}

Model::~Model() = default;
RemoteBlocks::~RemoteBlocks() = default;

void Model::set_remote_blocks(std::shared_ptr<RemoteBlocks> remote) { remote_ = std::move(remote); }

WeightStorage Model::weight_storage() const {
  if (packed_.empty()) return WeightStorage::kExpanded;
  return requested_storage_ == WeightStorage::kAuto ? WeightStorage::kStored : requested_storage_;
}

at::Tensor Model::own(at::Tensor weight) {
  if (weight.defined()) weights_.push_back(weight);
  return weight;
}

std::shared_ptr<const PackedMatrix> Model::own(std::shared_ptr<const PackedMatrix> weight) {
  if (weight) packed_.push_back(weight);
  return weight;
}

const std::vector<at::Tensor>& Model::weights() const { return weights_; }

int64_t Model::parameter_count() const {
  int64_t total = 0;
  for (const WeightKind& s : storage()) total += s.elements;
  return total;
}

std::vector<WeightKind> Model::storage() const {
  std::map<std::string, WeightKind> kinds;
  std::set<const void*> seen;  // a tied head counts once
  for (const at::Tensor& w : weights_) {
    if (!seen.insert(w.data_ptr()).second) continue;
    WeightKind& s = kinds[dtype_name(w.scalar_type())];
    s.tensors += 1;
    s.elements += w.numel();
    s.bytes += static_cast<int64_t>(w.nbytes());
  }
  for (const auto& p : packed_) {
    if (!seen.insert(p.get()).second) continue;
    for (const PackedMatrix::Segment& segment : p->segments()) {
      WeightKind& s = kinds[segment.kind()];
      s.tensors += 1;
      s.elements += segment.bytes.size(0) * p->cols();
      s.bytes += static_cast<int64_t>(segment.bytes.nbytes());
    }
  }
  std::vector<WeightKind> out;
  if (remote_) {
    for (const WeightKind& k : remote_->storage()) {
      WeightKind& s = kinds[k.kind];
      s.tensors += k.tensors;
      s.elements += k.elements;
      s.bytes += k.bytes;
    }
  }
  for (auto& [kind, s] : kinds) {
    s.kind = kind;
    out.push_back(s);
  }
  std::sort(out.begin(), out.end(), [](const WeightKind& a, const WeightKind& b) { return a.bytes > b.bytes; });
  return out;
}

at::Tensor Model::table_rows(Table table, const at::Tensor& ids) const {
  const bool head = table == Table::kOutputHead;
  const auto& packed = head ? packed_head_ : packed_embedding_;
  if (packed) return packed->gather(ids, dtype_);
  return (head ? output_head_ : token_embedding_).index_select(0, ids);
}

at::Tensor Model::table_mean(Table table) const {
  const bool head = table == Table::kOutputHead;
  const auto& packed = head ? packed_head_ : packed_embedding_;
  if (packed) return packed->mean_row(dtype_);
  const at::ScalarType precise = dtype_ == at::kDouble ? at::kDouble : at::kFloat;
  return (head ? output_head_ : token_embedding_).to(precise).mean(0).to(dtype_);
}

at::Tensor Model::embed(const at::Tensor& ids, const at::Tensor& extra_rows) const {
  auto base = [&](const at::Tensor& i) {
    return packed_embedding_ ? packed_embedding_->gather(i, dtype_) : at::embedding(token_embedding_, i);
  };
  at::Tensor rows;
  if (!extra_rows.defined()) {
    rows = base(ids);
  } else {
    const int64_t V = config_.vocab_size;
    const at::Tensor extended = ids.ge(V).unsqueeze(-1);  // [B,T,1]
    rows = at::where(extended, at::embedding(extra_rows, (ids - V).clamp_min(0)), base(ids.clamp_max(V - 1)));
  }
  if (config_.embedding_scale == 1.0) return rows;
  // The scale rounded to the model dtype first, as the reference multiplies by it.
  return rows * at::scalar_tensor(config_.embedding_scale, rows.options());
}

at::Tensor Model::forward(const at::Tensor& latents, const Attention& attention, const std::vector<int64_t>& layers,
                          std::vector<at::Tensor>* layer_states, KVCache* cache,
                          const std::function<void(int64_t, const at::Tensor&)>& before_block,
                          std::vector<at::Tensor>* routing) const {
  if (cache != nullptr) {
    const at::Tensor valid = attention.key_padding.defined() ? attention.key_padding : attention.positions.ge(0);
    cache->append_slots(valid, attention.positions, config_.num_layers);
  }
  const auto context = begin(latents, attention, cache);
  if (routing != nullptr) {
    routing->assign(static_cast<std::size_t>(config_.num_layers), at::Tensor());
    context->routing = routing;
  }
  at::Tensor x = input(latents, *context);
  if (!layers.empty()) layer_states->assign(layers.size(), at::Tensor());
  auto record = [&](int64_t index) {
    for (std::size_t j = 0; j < layers.size(); ++j) {
      if (layers[j] == index) (*layer_states)[j] = x;
    }
  };
  const int64_t local_end = remote_ ? remote_->first_block() : config_.num_layers;
  for (int64_t i = 0; i < local_end; ++i) {
    record(i);
    if (before_block) before_block(i, x);
    x = block(i, x, *context);
  }
  if (remote_) {
    record(local_end);
    if (before_block) before_block(local_end, x);
    x = remote_->run(x, attention, layers, layer_states, cache, routing, /*recompute=*/false);
  }
  record(config_.num_layers);
  if (routing != nullptr) complete_routing(*routing, latents);
  return final_norm(x);
}

void Model::complete_routing(std::vector<at::Tensor>& routing, const at::Tensor& latents) {
  for (at::Tensor& experts : routing) {
    if (!experts.defined()) {
      experts = at::empty({latents.size(0), latents.size(1), 0}, latents.options().dtype(at::kLong));
    }
  }
}

at::Tensor Model::classify(const at::Tensor& hidden, const at::Tensor& extra_rows) const {
  at::Tensor logits = packed_head_ ? packed_product(hidden, packed_head_) : at::linear(hidden, output_head_);
  if (extra_rows.defined()) logits = at::cat({logits, at::linear(hidden, extra_rows)}, -1);
  const double cap = config_.final_logit_softcap;
  return cap > 0 ? at::tanh(logits / cap) * cap : logits;
}

namespace {

std::unique_ptr<Model> build(const ModelConfig& config, const WeightSource& weights, const LoadOptions& options) {
  at::NoGradGuard no_grad;
  const int64_t L = config.num_layers;
  if (options.first_block < 0 || options.first_block > L ||
      (options.end_block >= 0 && (options.end_block < options.first_block || options.end_block > L))) {
    fail(ErrorCode::kInvalidArgument, "first_block", "expected blocks [first, end) within [0, {}], got [{}, {})", L,
         options.first_block, options.end_block);
  }
  switch (config.family) {
    case Family::kLlama: return make_llama(config, weights, options);
    case Family::kGemma: return make_gemma(config, weights, options);
    case Family::kGpt2: return make_gpt2(config, weights, options);
    case Family::kQwen3Next: return make_qwen3_next(config, weights, options);
  }
  fail(ErrorCode::kInternal, "config.family", "unhandled family");
}

void check_options(const LoadOptions& options) {
  if (options.dtype != c10::kFloat && options.dtype != c10::kBFloat16 && options.dtype != c10::kHalf &&
      options.dtype != c10::kDouble) {
    fail(ErrorCode::kInvalidArgument, "dtype", "expected float32, bfloat16, float16 or float64, got {}",
         dtype_name(options.dtype));
  }
  if (!options.device.is_cpu() && !options.device.is_cuda()) {
    fail(ErrorCode::kInvalidArgument, "device", "expected cpu or cuda, got {}", options.device.str());
  }
  if (options.weights != WeightStorage::kAuto && options.weights != WeightStorage::kExpanded &&
      !options.device.is_cpu()) {
    fail(ErrorCode::kInvalidArgument, "weights", "{} weights are decoded on the CPU only, got device {}",
         weight_storage_name(options.weights), options.device.str());
  }
  if (options.group_size < 1) {
    fail(ErrorCode::kInvalidArgument, "group_size", "expected at least 1 value per group, got {}", options.group_size);
  }
  if (options.device.is_cuda() && !at::hasCUDA()) {
    fail(ErrorCode::kUnavailable, "device", "expected an available device, got {} but this build or machine has no CUDA",
         options.device.str());
  }
  if (options.device.is_cuda() && options.device.has_index() &&
      options.device.index() >= static_cast<int>(at::getNumGPUs())) {
    fail(ErrorCode::kUnavailable, "device", "expected one of {} CUDA devices, got {}", at::getNumGPUs(),
         options.device.str());
  }
}

}  // namespace

std::unique_ptr<Model> load_model(const std::string& path, const LoadOptions& options) {
  check_options(options);
  std::error_code error;  // the non-throwing overloads: a permission problem is an aios::Error too
  if (fs::is_directory(path, error)) {
    const fs::path config_path = fs::path(path) / "config.json";
    const ModelConfig config = parse_hf_config(io::read_file(config_path.string()), config_path.string());
    const SafetensorsWeights weights(path);
    if (!config.weight_prefix.empty()) {
      return build(config, PrefixedWeights(weights, config.weight_prefix, config.weight_prefix_replaces), options);
    }
    return build(config, weights, options);
  }
  if (fs::is_regular_file(path, error) && fs::path(path).extension() == ".gguf") {
    return load_model(io::GgufFile::open(path), options);
  }
  fail(fs::exists(path, error) ? ErrorCode::kInvalidArgument : ErrorCode::kNotFound, path,
       "expected a checkpoint folder or a .gguf file");
}

ModelConfig read_config(const std::string& path) {
  std::error_code error;
  if (fs::is_directory(path, error)) {
    const fs::path config_path = fs::path(path) / "config.json";
    return parse_hf_config(io::read_file(config_path.string()), config_path.string());
  }
  if (fs::is_regular_file(path, error) && fs::path(path).extension() == ".gguf") {
    return gguf_model_config(io::GgufFile::open(path));
  }
  fail(fs::exists(path, error) ? ErrorCode::kInvalidArgument : ErrorCode::kNotFound, path,
       "expected a checkpoint folder or a .gguf file");
}

std::unique_ptr<Model> load_model(const io::GgufFile& file, const LoadOptions& options) {
  check_options(options);
  const ModelConfig config = gguf_model_config(file);
  return build(config, GgufWeights(file, config), options);
}

}  // namespace aios::backbone
