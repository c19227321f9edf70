// The Tokenizer service: the model's tokenizer and the tenant's vocabulary extensions.
#include "aios/tokenizer_api/tokenizer.h"
#include "aios/v1/aios.grpc.pb.h"
#include "services.h"
#include "state_files.h"

namespace aios::server {
namespace {
namespace fs = std::filesystem;

class TokenizerService final : public Handlers {
 public:
  TokenizerService(Requests& requests, Calls& calls) : r_(requests) {
    calls.add("Tokenizer.Definition", this, &TokenizerService::definition);
    calls.add("Tokenizer.Encode", this, &TokenizerService::encode);
    calls.add("Tokenizer.Decode", this, &TokenizerService::decode);
    calls.add("Tokenizer.CreateExtension", this, &TokenizerService::create_extension);
    calls.add("Tokenizer.ListExtensions", this, &TokenizerService::list_extensions);
    calls.add("Tokenizer.ReadRows", this, &TokenizerService::read_rows);
    calls.add("Tokenizer.WriteRows", this, &TokenizerService::write_rows);
    calls.add("Tokenizer.SaveExtension", this, &TokenizerService::save_extension);
    calls.add("Tokenizer.LoadExtension", this, &TokenizerService::load_extension);
    calls.add("Tokenizer.DeleteExtension", this, &TokenizerService::delete_extension);
  }

  grpc::Status definition(grpc::ServerContext* context, const v1::DefinitionRequest*,
                          v1::TokenizerDefinition* out) {
    return guarded(r_, context, [&](Caller&) {
      out->set_json(base_tokenizer().definition());
      out->set_chat_template(r_.backbone().chat_template().value_or(""));
    }, Work::kBookkeeping);
  }

  grpc::Status encode(grpc::ServerContext* context, const v1::EncodeRequest* request, v1::EncodeResponse* out) {
    return guarded(r_, context, [&](Caller& caller) {
      const auto t = tokenizer_for(caller, request->extension());
      r_.check_tokens(caller, request->texts_size(), 0, "texts");
      int64_t tokens = 0;
      for (const std::string& text : request->texts()) {
        const std::vector<int32_t> ids = t->encode(text, request->add_special_tokens());
        tokens += static_cast<int64_t>(ids.size());
        r_.check_tokens(caller, request->texts_size(), tokens, "texts");
        out->add_ids()->mutable_ids()->Add(ids.begin(), ids.end());
      }
    }, Work::kBookkeeping);
  }

  grpc::Status decode(grpc::ServerContext* context, const v1::DecodeRequest* request, v1::DecodeResponse* out) {
    return guarded(r_, context, [&](Caller& caller) {
      const auto t = tokenizer_for(caller, request->extension());
      int64_t tokens = 0;
      for (const v1::Ids& ids : request->ids()) tokens += ids.ids_size();
      r_.check_tokens(caller, request->ids_size(), tokens, "ids");
      for (const v1::Ids& ids : request->ids()) {
        out->add_texts(t->decode(std::vector<int32_t>(ids.ids().begin(), ids.ids().end()), request->skip_special_tokens()));
      }
    }, Work::kBookkeeping);
  }

  grpc::Status create_extension(grpc::ServerContext* context, const v1::CreateExtensionRequest* request,
                               v1::ExtensionInfo* out) {
    return guarded(r_, context, [&](Caller& caller) {
      ali::ExtendOptions options;
      switch (request->init()) {
        case v1::CreateExtensionRequest::MEAN: options.init = ali::ExtendOptions::Init::kMean; break;
        case v1::CreateExtensionRequest::TOKEN:
          options.init = ali::ExtendOptions::Init::kToken;
          options.token = request->token();
          break;
        case v1::CreateExtensionRequest::TENSORS:
          options.init = ali::ExtendOptions::Init::kTensors;
          options.embedding_rows = r_.floating(request->rows().embedding_rows(), "rows.embedding_rows");
          options.classifier_rows = r_.floating(request->rows().classifier_rows(), "rows.classifier_rows");
          break;
        default: fail(ErrorCode::kInvalidArgument, "init", "unknown value {}", static_cast<int>(request->init()));
      }
      r_.check_tokens(caller, 1, request->tokens_size(), "tokens");
      reserve_extension(caller);
      add(caller, r_.backbone().extend({request->tokens().begin(), request->tokens().end()}, options), out);
    });
  }

  grpc::Status list_extensions(grpc::ServerContext* context, const v1::ListExtensionsRequest*,
                              v1::ExtensionList* out) {
    return guarded(r_, context, [&](Caller& caller) {
      {
        std::lock_guard lock(caller.state().mutex);
        for (const auto& [id, extension] : caller.state().extensions) describe(id, *extension, out->add_live());
      }
      if (!r_.has_state_dir()) return;
      std::shared_lock files(caller.state().files);
      std::error_code error;
      for (const auto& entry : fs::directory_iterator(r_.state_folder(caller.state(), "extensions"), error)) {
        const std::string name = entry.path().filename().string();
        if (!name.starts_with(".") && entry.is_directory() && fs::exists(entry.path() / "extension.json")) {
          out->add_saved(name);
        }
      }
    }, Work::kBookkeeping);
  }

  grpc::Status read_rows(grpc::ServerContext* context, const v1::ExtensionId* request, v1::ExtensionRows* out) {
    return guarded(r_, context, [&](Caller& caller) {
      server::write_rows(*r_.extension(caller, request->id(), nullptr, "id"), out);
    });
  }

  grpc::Status write_rows(grpc::ServerContext* context, const v1::WriteRowsRequest* request, v1::Empty*) {
    return guarded(r_, context, [&](Caller& caller) { r_.extension(caller, request->id(), &request->rows(), "id"); });
  }

  grpc::Status save_extension(grpc::ServerContext* context, const v1::SaveExtensionRequest* request,
                             v1::Empty*) {
    return guarded(r_, context, [&](Caller& caller) {
      check_name(request->name(), "name");
      const auto extension = r_.extension(caller, request->id(), nullptr, "id");
      if (!r_.has_state_dir()) {
        fail(ErrorCode::kFailedPrecondition, "name", "this host keeps no state (start it with a state folder to save)");
      }
      // Committed by its manifest (Extension::save): a crash leaves the previous save or this one.
      // One save at a time per tenant: another's clean-up would take this one's files.
      std::unique_lock files(caller.state().files);
      extension->save((r_.state_folder(caller.state(), "extensions") / request->name()).string());
    });
  }

  grpc::Status load_extension(grpc::ServerContext* context, const v1::LoadExtensionRequest* request,
                             v1::ExtensionInfo* out) {
    return guarded(r_, context, [&](Caller& caller) {
      check_name(request->name(), "name");
      if (!r_.has_state_dir()) fail(ErrorCode::kNotFound, "name", "this host keeps no saved extensions");
      reserve_extension(caller);
      const fs::path folder = r_.state_folder(caller.state(), "extensions") / request->name();
      std::shared_ptr<ali::Extension> loaded;
      {
        std::shared_lock files(caller.state().files);
        if (!fs::exists(folder / "extension.json")) {
          fail(ErrorCode::kNotFound, "name", "no saved extension \"{}\"", request->name());
        }
        loaded = ali::Extension::load(r_.backbone(), folder.string());
      }
      add(caller, std::move(loaded), out);
    });
  }

  grpc::Status delete_extension(grpc::ServerContext* context, const v1::DeleteExtensionRequest* request,
                               v1::Empty*) {
    return guarded(r_, context, [&](Caller& caller) {
      if (!request->id().empty()) {
        std::lock_guard lock(caller.state().mutex);
        if (caller.state().extensions.erase(request->id()) == 0) {
          fail(ErrorCode::kNotFound, "id", "no extension \"{}\" (unknown or deleted)", request->id());
        }
        return;
      }
      check_name(request->name(), "name");
      const fs::path folder =
          r_.has_state_dir() ? r_.state_folder(caller.state(), "extensions") / request->name() : fs::path();
      std::unique_lock files(caller.state().files);
      // In one rename: a crash leaves the saved extension or nothing, never a part of it.
      if (folder.empty() || !fs::exists(folder / "extension.json") || !remove_folder(folder)) {
        fail(ErrorCode::kNotFound, "name", "no saved extension \"{}\"", request->name());
      }
    }, Work::kBookkeeping);
  }

 private:
  const tokenizer::Tokenizer& base_tokenizer() {
    const auto t = r_.backbone().tokenizer();
    if (!t) fail(ErrorCode::kNotFound, "tokenizer", "the hosted model has no tokenizer");
    return *t;
  }

  // The base tokenizer, or an extension's (its tokens as special tokens).
  std::shared_ptr<const tokenizer::Tokenizer> tokenizer_for(Caller& caller, const std::string& extension) {
    if (extension.empty()) {
      base_tokenizer();
      return r_.backbone().tokenizer();
    }
    return r_.extension(caller, extension, nullptr, "extension")->tokenizer();
  }

  // Under the tenant's lock.
  static void check_quota(Caller& caller) {
    if (static_cast<int64_t>(caller.state().extensions.size()) >= caller.quota().max_extensions) {
      fail(ErrorCode::kResourceExhausted, "extensions", "the tenant holds {} extensions, its quota (delete some first)",
           caller.quota().max_extensions);
    }
  }

  // Refuses before any work when the tenant is at its quota.
  void reserve_extension(Caller& caller) {
    std::lock_guard lock(caller.state().mutex);
    check_quota(caller);
  }

  void add(Caller& caller, std::shared_ptr<ali::Extension> extension, v1::ExtensionInfo* out) {
    const std::string id = r_.new_id();
    {
      std::lock_guard lock(caller.state().mutex);
      check_quota(caller);  // again: another call may have taken the last place meanwhile
      caller.state().extensions[id] = extension;
    }
    describe(id, *extension, out);
    server::write_rows(*extension, out->mutable_rows());
  }

  static void describe(const std::string& id, const ali::Extension& extension, v1::ExtensionInfo* out) {
    out->set_id(id);
    for (const std::string& token : extension.tokens()) out->add_tokens(token);
    out->set_first_id(extension.first_id());
  }

  Requests& r_;
};

}  // namespace

std::unique_ptr<Handlers> add_tokenizer_calls(Requests& requests, Calls& calls) {
  return std::make_unique<TokenizerService>(requests, calls);
}

}  // namespace aios::server
