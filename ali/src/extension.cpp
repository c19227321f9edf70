#include "aios/ali/extension.h"

#include <ATen/core/grad_mode.h>
#include <filesystem>
#include <set>

#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "aios/ali/backbone.h"
#include "aios/backbone/model.h"
#include "aios/fail.h"
#include "aios/json.h"
#include "aios/io/safetensors.h"
#include "aios/io/files.h"
#include "aios/tokenizer_api/tokenizer.h"

namespace aios::ali {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr const char* kManifest = "extension.json";
constexpr const char* kFormat = "aios.vocabulary_extension";
constexpr int kVersion = 1;
constexpr int64_t kProbes = 8;

using backbone::shape_of;

io::DType to_io(c10::ScalarType t) {
  switch (t) {
    case at::kFloat: return io::DType::kF32;
    case at::kBFloat16: return io::DType::kBF16;
    case at::kHalf: return io::DType::kF16;
    case at::kDouble: return io::DType::kF64;
    default: fail(ErrorCode::kInternal, "dtype", "no safetensors dtype for {}", c10::toString(t));
  }
}

std::optional<c10::ScalarType> from_io(io::DType t) {
  switch (t) {
    case io::DType::kF32: return at::kFloat;
    case io::DType::kBF16: return at::kBFloat16;
    case io::DType::kF16: return at::kHalf;
    case io::DType::kF64: return at::kDouble;
    default: return std::nullopt;
  }
}

// A floating tensor of `view`, copied out of the mapped file, shaped [rows, cols].
at::Tensor read_rows(const io::SafetensorsFile& file, const char* name, int64_t rows, int64_t cols) {
  const io::TensorView* view = file.find(name);
  const std::optional<c10::ScalarType> dtype = view != nullptr ? from_io(view->dtype) : std::nullopt;
  if (view == nullptr || !dtype || view->shape != std::vector<int64_t>{rows, cols}) {
    fail(ErrorCode::kDataLoss, fmt::format("{}:{}", file.path(), name), "expected a floating tensor [{},{}]", rows,
         cols);
  }
  at::Tensor out = at::empty({rows, cols}, at::TensorOptions().dtype(*dtype));
  std::memcpy(out.data_ptr(), view->data, view->size_bytes);
  return out;
}

// The row files manifests name.
bool is_rows_file(const std::string& name) {
  return name.rfind("rows-", 0) == 0 && name.find(".safetensors") != std::string::npos;
}

// The member `key` of an object from an untrusted file, or null.
const json& member(const json& object, const char* key) {
  static const json null;
  if (!object.is_object()) return null;
  const auto it = object.find(key);
  return it == object.end() ? null : *it;
}

}  // namespace

BaseIdentity BaseIdentity::of(Backbone& backbone) {
  const ModelInfo& c = backbone.config();
  BaseIdentity id;
  id.architecture = c.architecture;
  id.vocab_size = c.vocab_size;
  id.hidden_size = c.hidden_size;
  id.num_layers = c.num_layers;
  const int64_t P = std::min(kProbes, c.vocab_size);
  for (int64_t i = 0; i < P; ++i) id.probe_ids.push_back(P == 1 ? 0 : i * (c.vocab_size - 1) / (P - 1));
  const at::Tensor ids = at::tensor(id.probe_ids, at::kLong).unsqueeze(0);  // [1,P]
  id.probe_rows = backbone.embed(ids)[0].to(at::kCPU, at::kFloat);
  return id;
}

struct Extension::Impl {
  std::vector<std::string> tokens;
  int64_t first_id = 0;
  at::Tensor embedding_rows, classifier_rows;
  BaseIdentity base;
  std::shared_ptr<const tokenizer::Tokenizer> tokenizer;  // base_tokenizer plus the tokens; null without one
  const Backbone* owner = nullptr;
};

Extension::Extension(Parts parts) : impl_(std::make_unique<Impl>()) {
  if (parts.tokens.empty()) fail(ErrorCode::kInvalidArgument, "tokens", "expected at least one token, got none");
  std::set<std::string_view> seen;
  for (const std::string& t : parts.tokens) {
    if (t.empty()) fail(ErrorCode::kInvalidArgument, "tokens", "expected non-empty tokens, got \"\"");
    if (!seen.insert(t).second) fail(ErrorCode::kInvalidArgument, "tokens", "token \"{}\" appears twice", t);
  }
  const auto K = static_cast<int64_t>(parts.tokens.size()), D = parts.base.hidden_size;
  for (const auto& [rows, name] : {std::pair{&parts.embedding_rows, "embedding_rows"},
                                   std::pair{&parts.classifier_rows, "classifier_rows"}}) {
    if (!rows->defined() || rows->sizes() != at::IntArrayRef{K, D}) {
      fail(ErrorCode::kInvalidArgument, name, "expected [{},{}] (tokens, hidden size), got {}", K, D,
           rows->defined() ? shape_of(*rows) : "none");
    }
  }
  if (parts.base_tokenizer) {
    // Throws kAlreadyExists for a token the base vocabulary has.
    impl_->tokenizer = std::make_shared<const tokenizer::Tokenizer>(
        parts.base_tokenizer->with_special_tokens(parts.tokens, static_cast<int32_t>(parts.first_id)));
  }
  impl_->tokens = std::move(parts.tokens);
  impl_->first_id = parts.first_id;
  impl_->embedding_rows = parts.embedding_rows.detach();
  impl_->classifier_rows = parts.classifier_rows.detach();
  impl_->base = std::move(parts.base);
  impl_->owner = parts.owner;
}

Extension::~Extension() = default;

const std::vector<std::string>& Extension::tokens() const { return impl_->tokens; }
int64_t Extension::size() const { return static_cast<int64_t>(impl_->tokens.size()); }
int64_t Extension::first_id() const { return impl_->first_id; }
const BaseIdentity& Extension::base() const { return impl_->base; }
const at::Tensor& Extension::embedding_rows() const { return impl_->embedding_rows; }
const at::Tensor& Extension::classifier_rows() const { return impl_->classifier_rows; }

std::optional<int64_t> Extension::token_to_id(std::string_view token) const {
  for (std::size_t k = 0; k < impl_->tokens.size(); ++k) {
    if (impl_->tokens[k] == token) return impl_->first_id + static_cast<int64_t>(k);
  }
  return std::nullopt;
}

std::shared_ptr<const tokenizer::Tokenizer> Extension::tokenizer() const {
  if (!impl_->tokenizer) {
    fail(ErrorCode::kFailedPrecondition, "tokenizer",
         "the backbone has no tokenizer.json; add the tokens to a tokenizer with Tokenizer::with_special_tokens");
  }
  return impl_->tokenizer;
}

void Extension::check_fits(const Backbone& backbone, const char* field) const {
  if (impl_->owner != &backbone) {
    fail(ErrorCode::kInvalidArgument, field,
         "expected an extension of this backbone, got one made or loaded by another (load it onto this one)");
  }
}

void Extension::save(const std::string& path) const {
  io::create_folders(path);  // durable too: a save that returned is still there after a crash

  at::Tensor embedding, classifier, probe;
  {
    at::NoGradGuard no_grad;
    embedding = impl_->embedding_rows.detach().to(at::kCPU).contiguous();
    classifier = impl_->classifier_rows.detach().to(at::kCPU).contiguous();
    probe = impl_->base.probe_rows.contiguous();
  }
  auto view = [](const char* name, const at::Tensor& t) {
    return io::TensorView{name, to_io(t.scalar_type()), t.sizes().vec(), static_cast<const std::byte*>(t.data_ptr()),
                          t.nbytes()};
  };
  const std::string rows_name = io::unique_file_name("rows-", ".safetensors");
  io::write_safetensors((fs::path(path) / rows_name).string(),
                        {view("embedding", embedding), view("classifier", classifier), view("base_probe", probe)});

  const BaseIdentity& b = impl_->base;
  json manifest = {{"format", kFormat},
                   {"version", kVersion},
                   {"tokens", impl_->tokens},
                   {"first_id", impl_->first_id},
                   {"hidden_size", b.hidden_size},
                   {"base",
                    {{"architecture", b.architecture},
                     {"vocab_size", b.vocab_size},
                     {"hidden_size", b.hidden_size},
                     {"num_layers", b.num_layers},
                     {"probe_ids", b.probe_ids}}},
                   {"rows", rows_name}};
  // The commit point: until this rename the previous manifest, and the rows it names, stand.
  io::write_file_atomically((fs::path(path) / kManifest).string(), manifest.dump(2) + "\n");

  io::remove_superseded(path, "rows-", rows_name);
}

std::shared_ptr<Extension> Extension::load(Backbone& backbone, const std::string& path) {
  const fs::path manifest_path = fs::path(path) / kManifest;
  const std::string source = manifest_path.string();
  const json m = parse_json(io::read_file(source), source);
  auto expect = [&](bool ok, const std::string& field, const char* what) {
    if (!ok) fail(ErrorCode::kDataLoss, fmt::format("{}:{}", source, field), "expected {}", what);
  };
  expect(member(m, "format") == kFormat, "format", fmt::format("\"{}\"", kFormat).c_str());
  expect(member(m, "version") == kVersion, "version", "1");
  const json& tokens = member(m, "tokens");
  expect(tokens.is_array() && !tokens.empty(), "tokens", "a non-empty list of strings");
  std::vector<std::string> token_list;
  std::set<std::string> seen;
  for (const json& t : tokens) {
    expect(t.is_string() && !t.get<std::string>().empty(), "tokens", "a non-empty list of strings");
    expect(seen.insert(t.get<std::string>()).second, "tokens", "each token once");
    token_list.push_back(t.get<std::string>());
  }
  const json& base = member(m, "base");
  expect(base.is_object(), "base", "an object");
  const auto integer = [&](const json& object, const char* key, const std::string& field) {
    return json_integer(member(object, key), fmt::format("{}:{}", source, field), 0, INT64_MAX);
  };
  BaseIdentity saved;
  expect(member(base, "architecture").is_string(), "base.architecture", "a string");
  saved.architecture = base["architecture"].get<std::string>();
  saved.vocab_size = integer(base, "vocab_size", "base.vocab_size");
  saved.hidden_size = integer(base, "hidden_size", "base.hidden_size");
  saved.num_layers = integer(base, "num_layers", "base.num_layers");
  expect(integer(m, "first_id", "first_id") == saved.vocab_size && integer(m, "hidden_size", "hidden_size") == saved.hidden_size, "first_id",
         "first_id and hidden_size equal to the base's vocab_size and hidden_size");
  const json& probe_ids = member(base, "probe_ids");
  expect(probe_ids.is_array() && !probe_ids.empty() && probe_ids.size() <= 64, "base.probe_ids", "1 to 64 ids");
  for (const json& id : probe_ids) {
    saved.probe_ids.push_back(json_integer(id, fmt::format("{}:base.probe_ids", source), 0, saved.vocab_size - 1));
  }
  // The rows file is named by untrusted text: a plain name inside the folder only.
  const std::string rows_name = member(m, "rows").is_string() ? member(m, "rows").get<std::string>() : "";
  expect(is_rows_file(rows_name) && rows_name.find('/') == std::string::npos && rows_name.find('\\') == std::string::npos,
         "rows", "the name of a rows-*.safetensors file in the folder");

  const ModelInfo& c = backbone.config();
  if (saved.architecture != c.architecture || saved.vocab_size != c.vocab_size || saved.hidden_size != c.hidden_size ||
      saved.num_layers != c.num_layers) {
    fail(ErrorCode::kFailedPrecondition, path,
         "made for another base model: {} with vocabulary {}, hidden size {}, {} layers; this backbone is {} with "
         "vocabulary {}, hidden size {}, {} layers",
         saved.architecture, saved.vocab_size, saved.hidden_size, saved.num_layers, c.architecture, c.vocab_size,
         c.hidden_size, c.num_layers);
  }

  const io::SafetensorsFile file = io::SafetensorsFile::open((fs::path(path) / rows_name).string());
  const auto K = static_cast<int64_t>(token_list.size()), D = saved.hidden_size;
  const auto P = static_cast<int64_t>(saved.probe_ids.size());
  const at::Tensor embedding = read_rows(file, "embedding", K, D);
  const at::Tensor classifier = read_rows(file, "classifier", K, D);
  saved.probe_rows = read_rows(file, "base_probe", P, D).to(at::kFloat);

  // Same architecture and sizes is not the same model: compare the embedding rows recorded at save
  // time with this backbone's, loosely enough for another dtype (bfloat16 keeps 8 bits).
  const at::Tensor now =
      backbone.embed(at::tensor(saved.probe_ids, at::kLong).unsqueeze(0))[0].to(at::kCPU, at::kFloat);
  const double scale = std::max(1e-6, saved.probe_rows.abs().max().item<double>());
  const double difference = (now - saved.probe_rows).abs().max().item<double>();
  if (!(difference <= 1e-2 * scale)) {
    fail(ErrorCode::kFailedPrecondition, path,
         "made for another base model: its embedding rows at ids [{}] differ from this backbone's by up to {:.3g} "
         "(rows of size {:.3g})", fmt::join(saved.probe_ids, ","), difference, scale);
  }

  ExtendOptions rows;
  rows.init = ExtendOptions::Init::kTensors;
  rows.embedding_rows = embedding;
  rows.classifier_rows = classifier;
  return backbone.extend(token_list, rows);
}

}  // namespace aios::ali
