// aios/ali/extension.h — vocabulary extensions: new tokens (such as <sox>/<eox>) with their own
// embedding and classifier rows over a frozen backbone.
//
// An extension of K tokens over a backbone of vocabulary V gives them ids V..V+K-1. It owns two
// tables of K rows, [K,D] each, in the backbone's dtype and on its device: the embedding rows that
// embed() returns for those ids, and the classifier rows whose logits classify() appends after the
// base vocabulary's. The base tables are never written. Extensions are independent of each other:
// several can exist over one backbone, and each call names the one it uses (or none).
//
// Training: the Gradient API returns the gradients of both tables (gradient_api/backbone.h), and
// the caller updates the rows in place (an optimiser step under no-grad). Rows are read by every
// call that names the extension, so updates and calls must not overlap.
//
// Storage: save() writes a folder with `extension.json` (the manifest: tokens, ids, hidden size,
// the identity of the base model) and the rows as safetensors, committed atomically (see save()).
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <ATen/ATen.h>

#include "aios/backbone/config.h"
#include "aios/export.h"

AIOS_EXPORT_BEGIN

namespace aios::tokenizer {
class Tokenizer;
}

namespace aios::ali {

class Backbone;

// How Backbone::extend initialises the new rows.
struct ExtendOptions {
  enum class Init {
    kMean,    // every new row is the mean of the base table's rows
    kToken,   // every new row copies base token `token`'s rows
    kTensors  // embedding_rows and classifier_rows as given
  };
  Init init = Init::kMean;
  int64_t token = -1;          // kToken: a base id in [0, V)
  at::Tensor embedding_rows;   // kTensors: [K,D], any floating dtype and device (copied)
  at::Tensor classifier_rows;  // kTensors: [K,D]
};

// What an extension records about the base model it was made for, checked when it is loaded.
struct BaseIdentity {
  std::string architecture;  // config.json's architectures[0]
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t num_layers = 0;
  std::vector<int64_t> probe_ids;  // base ids whose embedding rows serve as a fingerprint
  at::Tensor probe_rows;           // float32 [P,D] on CPU: those rows

  // The identity of `backbone`: its configuration and a few embedding rows, evenly spaced.
  static BaseIdentity of(Backbone& backbone);
};

class Extension {
 public:
  // What a Backbone implementation builds an extension from (Backbone::extend).
  struct Parts {
    std::vector<std::string> tokens;
    int64_t first_id = 0;
    at::Tensor embedding_rows;   // [K,D]
    at::Tensor classifier_rows;  // [K,D]
    BaseIdentity base;
    std::shared_ptr<const tokenizer::Tokenizer> base_tokenizer;  // null: the backbone has none
    const Backbone* owner = nullptr;  // the backbone the rows belong to (compared by address only)
  };
  // Throws Error: kInvalidArgument (no tokens, an empty or repeated token, rows that are not [K,D]),
  // kAlreadyExists (a token the base tokenizer already has).
  explicit Extension(Parts parts);
  ~Extension();
  Extension(const Extension&) = delete;
  Extension& operator=(const Extension&) = delete;

  // Reads a folder written by save() onto `backbone` (rows converted to its dtype and device).
  // Throws Error: kNotFound (no folder or manifest), kDataLoss (corrupt or inconsistent files,
  // repeated tokens), kFailedPrecondition (made for another base model: architecture, vocabulary
  // or hidden size, or embedding fingerprint differ), kAlreadyExists (a token the backbone's
  // tokenizer has).
  static std::shared_ptr<Extension> load(Backbone& backbone, const std::string& path);

  // Writes the extension to the folder `path` (created if missing). The rows go to a new file
  // named after this save; then the manifest naming that file replaces the old manifest by rename.
  // A save interrupted at any point (SIGKILL, a crash of the machine) leaves either the previous
  // extension or this one, whole: files and folders are fsync'ed before each rename is relied on.
  // Row files no manifest names are removed afterwards. Throws Error(kUnavailable) when the file
  // system refuses.
  void save(const std::string& path) const;

  const std::vector<std::string>& tokens() const;
  int64_t size() const;      // K
  int64_t first_id() const;  // V: tokens()[k] has id V + k
  std::optional<int64_t> token_to_id(std::string_view token) const;
  const BaseIdentity& base() const;

  // [K,D] in the backbone's dtype, on its device. These are the live rows: in-place updates are
  // what the next call sees. Calls never record an autograd graph through them (Python sets
  // requires_grad on them so that torch.optim accepts them).
  const at::Tensor& embedding_rows() const;
  const at::Tensor& classifier_rows() const;

  // The backbone's tokenizer with these tokens as atomic special tokens at their ids. Throws
  // Error(kFailedPrecondition) when the backbone has no tokenizer.
  std::shared_ptr<const tokenizer::Tokenizer> tokenizer() const;

  // Throws Error(kInvalidArgument, field) unless this extension belongs to `backbone` (it made or
  // loaded it); another backbone, even of the same model, gets its own by Extension::load.
  void check_fits(const Backbone& backbone, const char* field) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace aios::ali
AIOS_EXPORT_END
