#include "aios/ali/local_backbone.h"

#include <ATen/core/grad_mode.h>
#include <cmath>
#include <filesystem>
#include <mutex>

#include <fmt/ranges.h>

#include <nlohmann/json.hpp>

#include "aios/fail.h"
#include "aios/json.h"
#include "aios/io/safetensors.h"
#include "aios/tokenizer_api/tokenizer.h"

namespace aios::ali {

namespace {

std::string shape_of(const at::Tensor& t) { return fmt::format("[{}]", fmt::join(t.sizes(), ",")); }

void require_defined(const at::Tensor& t, const char* name) {
  if (!t.defined()) fail(ErrorCode::kInvalidArgument, name, "expected a tensor, got an undefined one");
}

// Integer tensor with values in [0, limit), returned as int64 on `device`.
at::Tensor checked_index_tensor(const at::Tensor& t, const char* name, int64_t limit, const char* limit_name,
                                c10::Device device) {
  if (!c10::isIntegralType(t.scalar_type(), /*includeBool=*/false)) {
    fail(ErrorCode::kInvalidArgument, name, "expected an integer dtype (int64 or int32), got {}",
         backbone::dtype_name(t.scalar_type()));
  }
  at::Tensor out = t.to(device, at::kLong);
  if (out.numel() > 0) {
    const int64_t lo = out.min().item<int64_t>(), hi = out.max().item<int64_t>();
    if (lo < 0 || hi >= limit) {
      fail(ErrorCode::kInvalidArgument, name, "expected values in [0, {}) ({}), got values in [{}, {}]", limit,
           limit_name, lo, hi);
    }
  }
  return out;
}

at::Tensor checked_bool_tensor(const at::Tensor& t, const char* name, c10::Device device) {
  if (t.scalar_type() != at::kBool && !c10::isIntegralType(t.scalar_type(), /*includeBool=*/false)) {
    fail(ErrorCode::kInvalidArgument, name, "expected a bool (or integer 0/1) dtype, got {}",
         backbone::dtype_name(t.scalar_type()));
  }
  return t.to(device).ne(0);
}

}  // namespace

struct LocalBackbone::Impl {
  std::unique_ptr<backbone::Model> model;
  std::string path;  // the checkpoint folder
  std::once_flag tokenizer_once;
  std::shared_ptr<const tokenizer::Tokenizer> tokenizer;

  // latents or hidden: dtype, device and width of this model.
  void check_states(const at::Tensor& t, const char* name) const {
    require_defined(t, name);
    const ModelConfig& c = model->config();
    if (t.size(-1) != c.hidden_size) {
      fail(ErrorCode::kInvalidArgument, name, "expected last dimension {} (hidden size), got shape {}", c.hidden_size,
           shape_of(t));
    }
    if (t.scalar_type() != model->dtype()) {
      fail(ErrorCode::kInvalidArgument, name, "expected dtype {} (the backbone's), got {}",
           backbone::dtype_name(model->dtype()), backbone::dtype_name(t.scalar_type()));
    }
    if (t.device() != model->device()) {
      fail(ErrorCode::kInvalidArgument, name, "expected device {} (the backbone's), got {}", model->device().str(),
           t.device().str());
    }
  }
};

LocalBackbone::LocalBackbone(std::unique_ptr<backbone::Model> model, std::string path)
    : impl_(std::make_unique<Impl>()) {
  impl_->model = std::move(model);
  impl_->path = std::move(path);
}
LocalBackbone::~LocalBackbone() = default;

std::unique_ptr<LocalBackbone> LocalBackbone::load(const std::string& path, const LoadOptions& options) {
  return std::unique_ptr<LocalBackbone>(new LocalBackbone(backbone::load_model(path, options), path));
}

const ModelConfig& LocalBackbone::config() const { return impl_->model->config(); }
c10::Device LocalBackbone::device() const { return impl_->model->device(); }
c10::ScalarType LocalBackbone::dtype() const { return impl_->model->dtype(); }
int64_t LocalBackbone::parameter_count() const { return impl_->model->parameter_count(); }
const backbone::Model& LocalBackbone::model() const { return *impl_->model; }

at::Tensor LocalBackbone::embed(const at::Tensor& ids, const Extension* extension) {
  require_defined(ids, "ids");
  if (ids.dim() != 2) fail(ErrorCode::kInvalidArgument, "ids", "expected rank 2 [B,T], got shape {}", shape_of(ids));
  if (extension != nullptr) extension->check_fits(*this, "extension");
  const int64_t limit = config().vocab_size + (extension != nullptr ? extension->size() : 0);
  const at::Tensor checked = checked_index_tensor(
      ids, "ids", limit, extension != nullptr ? "vocab_size + extension size" : "vocab_size", device());
  at::NoGradGuard no_grad;
  return impl_->model->embed(checked, extension != nullptr ? extension->embedding_rows().detach() : at::Tensor());
}

backbone::Attention LocalBackbone::prepare(const at::Tensor& latents, const ForwardOptions& options) const {
  const ModelConfig& c = config();
  require_defined(latents, "latents");
  if (latents.dim() != 3) {
    fail(ErrorCode::kInvalidArgument, "latents", "expected rank 3 [B,T,D], got shape {}", shape_of(latents));
  }
  impl_->check_states(latents, "latents");
  const int64_t B = latents.size(0), T = latents.size(1);
  if (B < 1 || T < 1) fail(ErrorCode::kInvalidArgument, "latents", "expected B >= 1 and T >= 1, got shape {}", shape_of(latents));
  if (T > c.max_positions) {
    fail(ErrorCode::kInvalidArgument, "latents", "expected at most {} positions (max_positions), got T = {}",
         c.max_positions, T);
  }
  // max|x| propagates NaN and Inf in one reduction; at::isfinite(...).all() costs ten times more.
  if (!options.allow_non_finite && !std::isfinite(latents.abs().max().item<double>())) {
    fail(ErrorCode::kInvalidArgument, "latents",
         "expected finite values, got NaN or Inf (set allow_non_finite to pass them through)");
  }

  backbone::Attention attention;
  if (options.positions && options.positions->defined()) {
    const at::Tensor& p = *options.positions;
    const bool shared = p.dim() == 1 && p.size(0) == T;
    if (!shared && !(p.dim() == 2 && p.size(0) == B && p.size(1) == T)) {
      fail(ErrorCode::kInvalidArgument, "positions", "expected shape [{},{}] or [{}], got {}", B, T, T, shape_of(p));
    }
    attention.positions = checked_index_tensor(p, "positions", c.max_positions, "max_positions", device());
    attention.positions = attention.positions.expand({B, T});
  } else {
    attention.positions = at::arange(T, at::TensorOptions().dtype(at::kLong).device(device())).expand({B, T});
  }
  if (options.mask && options.mask->defined()) {
    const at::Tensor& m = *options.mask;
    if (m.dim() == 2 && m.size(0) == B && m.size(1) == T) {
      attention.key_padding = checked_bool_tensor(m, "mask", device());
    } else if (m.dim() == 3 && m.size(0) == B && m.size(1) == T && m.size(2) == T) {
      attention.full_mask = checked_bool_tensor(m, "mask", device());
    } else {
      fail(ErrorCode::kInvalidArgument, "mask", "expected shape [{},{}] (key padding) or [{},{},{}] (full), got {}", B,
           T, B, T, T, shape_of(m));
    }
  }
  for (int64_t l : options.layers) {
    if (l < 0 || l > c.num_layers) {
      fail(ErrorCode::kInvalidArgument, "layers", "expected indices in [0, {}] (num_layers), got {}", c.num_layers, l);
    }
  }

  return attention;
}

ForwardOutput LocalBackbone::forward(const at::Tensor& latents, const ForwardOptions& options) {
  const backbone::Attention attention = prepare(latents, options);
  at::NoGradGuard no_grad;
  ForwardOutput out;
  out.hidden = impl_->model->forward(latents, attention, options.layers, &out.layers, nullptr,
                                     [&](int64_t, const at::Tensor&) { stop_if_cancelled(options.cancelled); });
  return out;
}

void stop_if_cancelled(const std::function<bool()>& cancelled) {
  if (cancelled && cancelled()) fail(ErrorCode::kUnavailable, "cancelled", "the call was cancelled");
}

void LocalBackbone::check_hidden(const at::Tensor& hidden, const char* name) const {
  require_defined(hidden, name);
  if (hidden.dim() < 1) fail(ErrorCode::kInvalidArgument, name, "expected shape [..., D], got a scalar");
  impl_->check_states(hidden, name);
}

at::Tensor LocalBackbone::classify(const at::Tensor& hidden, const Extension* extension) {
  check_hidden(hidden, "hidden");
  if (extension != nullptr) extension->check_fits(*this, "extension");
  at::NoGradGuard no_grad;
  return impl_->model->classify(hidden, extension != nullptr ? extension->classifier_rows().detach() : at::Tensor());
}

std::shared_ptr<Extension> LocalBackbone::extend(const std::vector<std::string>& tokens, const ExtendOptions& options) {
  const backbone::Model& m = *impl_->model;
  const auto K = static_cast<int64_t>(tokens.size()), D = config().hidden_size, V = config().vocab_size;
  at::NoGradGuard no_grad;
  Extension::Parts parts;
  switch (options.init) {
    case ExtendOptions::Init::kMean:
      // Accumulated in float32 at least: a bfloat16 sum over tens of thousands of rows loses digits.
      parts.embedding_rows = m.token_embedding().to(at::kFloat).mean(0).to(dtype()).expand({K, D}).clone();
      parts.classifier_rows = m.output_head().to(at::kFloat).mean(0).to(dtype()).expand({K, D}).clone();
      break;
    case ExtendOptions::Init::kToken:
      if (options.token < 0 || options.token >= V) {
        fail(ErrorCode::kInvalidArgument, "init.token", "expected a base id in [0, {}), got {}", V, options.token);
      }
      parts.embedding_rows = m.token_embedding()[options.token].expand({K, D}).clone();
      parts.classifier_rows = m.output_head()[options.token].expand({K, D}).clone();
      break;
    case ExtendOptions::Init::kTensors:
      for (const auto& [rows, name] : {std::pair{&options.embedding_rows, "init.embedding_rows"},
                                       std::pair{&options.classifier_rows, "init.classifier_rows"}}) {
        if (!rows->defined() || rows->sizes() != at::IntArrayRef{K, D} || !c10::isFloatingType(rows->scalar_type())) {
          fail(ErrorCode::kInvalidArgument, name, "expected a floating tensor [{},{}] (tokens, hidden size), got {}", K,
               D, rows->defined() ? shape_of(*rows) : "none");
        }
      }
      parts.embedding_rows = options.embedding_rows.detach().to(device(), dtype(), false, /*copy=*/true);
      parts.classifier_rows = options.classifier_rows.detach().to(device(), dtype(), false, /*copy=*/true);
      break;
  }
  parts.tokens = tokens;
  parts.first_id = V;
  parts.base = BaseIdentity::of(*this);
  parts.base_tokenizer = tokenizer();
  parts.owner = this;
  return std::make_shared<Extension>(std::move(parts));
}

std::optional<std::string> LocalBackbone::chat_template() {
  std::error_code error;
  if (std::filesystem::is_regular_file(impl_->path, error)) {  // a GGUF file: the tokenizer's metadata
    const std::shared_ptr<const tokenizer::Tokenizer> t = tokenizer();
    if (t && !t->chat_template().empty()) return t->chat_template();
    return std::nullopt;
  }
  // transformers writes it to chat_template.jinja, or (older versions) into tokenizer_config.json.
  const std::filesystem::path folder(impl_->path);
  if (std::filesystem::exists(folder / "chat_template.jinja", error)) {
    return io::read_file((folder / "chat_template.jinja").string());
  }
  if (std::filesystem::exists(folder / "tokenizer_config.json", error)) {
    const std::string source = (folder / "tokenizer_config.json").string();
    const nlohmann::json config = parse_json(io::read_file(source), source);
    if (config.is_object() && config.contains("chat_template") && config["chat_template"].is_string()) {
      return config["chat_template"].get<std::string>();
    }
  }
  return std::nullopt;
}

std::shared_ptr<const tokenizer::Tokenizer> LocalBackbone::tokenizer() {
  std::call_once(impl_->tokenizer_once, [this] {
    std::error_code error;
    // A GGUF file carries its tokenizer; a checkpoint folder may hold tokenizer.json.
    const bool single_file = std::filesystem::is_regular_file(impl_->path, error);
    const std::filesystem::path file =
        single_file ? std::filesystem::path(impl_->path) : std::filesystem::path(impl_->path) / "tokenizer.json";
    if (std::filesystem::exists(file, error)) {
      impl_->tokenizer = std::make_shared<const tokenizer::Tokenizer>(tokenizer::Tokenizer::load(file.string()));
    }
  });
  return impl_->tokenizer;
}

}  // namespace aios::ali
