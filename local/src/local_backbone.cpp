// LocalBackbone: loading, and the Latent API's calls (embed, forward, classify, extend, the
// tokenizer and chat template stored with the model).
#include "aios/local/local_backbone.h"

#include <ATen/core/grad_mode.h>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "aios/fail.h"
#include "aios/json.h"
#include "aios/io/files.h"
#include "aios/tokenizer_api/tokenizer.h"
#include "impl.h"

namespace aios::local {

LocalBackbone::LocalBackbone(std::unique_ptr<backbone::Model> model, std::string path, const StoreOptions& store)
    : impl_(std::make_unique<Impl>(*this, std::move(model), std::move(path), store)) {}
LocalBackbone::~LocalBackbone() = default;

std::unique_ptr<LocalBackbone> LocalBackbone::load(const std::string& path, const LoadOptions& options,
                                                   const StoreOptions& store) {
  return std::unique_ptr<LocalBackbone>(new LocalBackbone(backbone::load_model(path, options), path, store));
}

std::unique_ptr<LocalBackbone> LocalBackbone::wrap(std::unique_ptr<backbone::Model> model, const std::string& path,
                                                   const StoreOptions& store) {
  return std::unique_ptr<LocalBackbone>(new LocalBackbone(std::move(model), path, store));
}

const ModelInfo& LocalBackbone::config() const { return impl_->info; }
c10::Device LocalBackbone::device() const { return impl_->model->device(); }
c10::ScalarType LocalBackbone::dtype() const { return impl_->model->dtype(); }
int64_t LocalBackbone::parameter_count() const { return impl_->model->parameter_count(); }
const backbone::Model& LocalBackbone::model() const { return *impl_->model; }
std::size_t LocalBackbone::kept_passes() const { return impl_->store.size(); }
std::size_t LocalBackbone::kept_bytes() const { return impl_->store.bytes(); }

at::Tensor LocalBackbone::embed(const at::Tensor& ids, const ali::Extension* extension) {
  require_defined(ids, "ids");
  if (ids.dim() != 2) fail(ErrorCode::kInvalidArgument, "ids", "expected rank 2 [B,T], got shape {}", shape_of(ids));
  if (extension != nullptr) extension->check_fits(*this, "extension");
  const int64_t limit = impl_->vocabulary(extension);
  const at::Tensor checked = checked_index_tensor(
      ids, "ids", limit, extension != nullptr ? "vocab_size + extension size" : "vocab_size", device());
  at::NoGradGuard no_grad;
  return impl_->model->embed(checked, extension != nullptr ? extension->embedding_rows().detach() : at::Tensor());
}

ali::ForwardOutput LocalBackbone::forward(const at::Tensor& latents, const ali::ForwardOptions& options) {
  const backbone::Attention attention = impl_->prepare(latents, options);
  at::NoGradGuard no_grad;
  ali::ForwardOutput out;
  out.hidden = impl_->model->forward(latents, attention, options.layers, &out.layers, nullptr,
                                     [&](int64_t, const at::Tensor&) { ali::stop_if_cancelled(options.cancelled); },
                                     options.routing ? &out.routing : nullptr);
  return out;
}

at::Tensor LocalBackbone::classify(const at::Tensor& hidden, const ali::Extension* extension) {
  impl_->check_states(hidden, "hidden");
  if (extension != nullptr) extension->check_fits(*this, "extension");
  at::NoGradGuard no_grad;
  return impl_->model->classify(hidden, extension != nullptr ? extension->classifier_rows().detach() : at::Tensor());
}

std::shared_ptr<ali::Extension> LocalBackbone::extend(const std::vector<std::string>& tokens,
                                                      const ali::ExtendOptions& options) {
  const backbone::Model& m = *impl_->model;
  using Table = backbone::Model::Table;
  const auto K = static_cast<int64_t>(tokens.size()), D = config().hidden_size, V = config().vocab_size;
  at::NoGradGuard no_grad;
  ali::Extension::Parts parts;
  switch (options.init) {
    case ali::ExtendOptions::Init::kMean:
      // Accumulated in float32 at least: a bfloat16 sum over tens of thousands of rows loses digits.
      parts.embedding_rows = m.table_mean(Table::kTokenEmbedding).expand({K, D}).clone();
      parts.classifier_rows = m.table_mean(Table::kOutputHead).expand({K, D}).clone();
      break;
    case ali::ExtendOptions::Init::kToken: {
      if (options.token < 0 || options.token >= V) {
        fail(ErrorCode::kInvalidArgument, "init.token", "expected a base id in [0, {}), got {}", V, options.token);
      }
      const at::Tensor token = at::full({1}, options.token, at::TensorOptions().dtype(at::kLong).device(device()));
      parts.embedding_rows = m.table_rows(Table::kTokenEmbedding, token).expand({K, D}).clone();
      parts.classifier_rows = m.table_rows(Table::kOutputHead, token).expand({K, D}).clone();
      break;
    }
    case ali::ExtendOptions::Init::kTensors:
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
  parts.base = ali::BaseIdentity::of(*this);
  parts.base_tokenizer = tokenizer();
  parts.owner = this;
  return std::make_shared<ali::Extension>(std::move(parts));
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

}  // namespace aios::local
