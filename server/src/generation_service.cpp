// The Generation service: streamed generation on the host, with spans routed to the decoders the
// tenant registered.
#include <algorithm>
#include <map>
#include <set>

#include "aios/adapters/storage.h"
#include "aios/v1/aios.grpc.pb.h"
#include "services.h"
#include "state_files.h"

namespace aios::server {
namespace {
namespace fs = std::filesystem;

constexpr int kMaxRoutes = 64;

class GenerationService final : public Handlers {
 public:
  GenerationService(Requests& requests, Calls& calls) : r_(requests) {
    calls.add("Generation.Generate", this, &GenerationService::generate);
    calls.add("Generation.RegisterDecoder", this, &GenerationService::register_decoder);
    calls.add("Generation.ListDecoders", this, &GenerationService::list_decoders);
    calls.add("Generation.DeleteDecoder", this, &GenerationService::delete_decoder);
    calls.add("Generation.CreateSession", this, &GenerationService::create_session);
    calls.add("Generation.DescribeSession", this, &GenerationService::describe_session);
    calls.add("Generation.DeleteSession", this, &GenerationService::delete_session);
  }

  grpc::Status generate(grpc::ServerContext* context, const v1::GenerateRequest* request,
                        const std::function<bool(const v1::GenerateStep&)>& write) {
    // On gRPC's thread, each step computed on a compute thread: a caller that reads its stream
    // slowly (or never) holds no compute thread while its next message waits to be sent.
    return guarded(r_, context, [&](Caller& caller) {
      std::optional<SessionUse> session;  // given back after the generation, however it ends
      std::unique_ptr<ali::Generation> generation;
      r_.compute(*context, [&] { generation = start(caller, *request, session); });
      while (true) {
        v1::GenerateStep out;
        bool more = false;
        // A caller that left stops the generation before its next step (Error(kUnavailable)):
        // the cache and decoders are freed on return.
        r_.compute(*context, [&] {
          const std::optional<ali::GenerationStep> step = generation->next();
          if (!step) return;
          more = true;
          out.set_index(step->index);
          wire::to_wire(step->ids, out.mutable_ids());
          wire::to_wire(step->finished, out.mutable_finished());
          wire::to_wire(step->routes, out.mutable_routes());
          if (request->return_hidden()) wire::to_wire(step->hidden, out.mutable_hidden());
          for (const at::Tensor& output : step->outputs) {
            v1::Tensor* slot = out.add_outputs();  // left empty where no decoder ran
            if (output.defined()) wire::to_wire(output, slot);
          }
        });
        if (!more) return;
        if (!write(out)) fail(ErrorCode::kUnavailable, "generate", "the caller is gone");
      }
    }, Work::kBookkeeping);
  }

  grpc::Status register_decoder(grpc::ServerContext* context, const v1::RegisterDecoderRequest* request,
                               v1::Empty*) {
    return guarded(r_, context, [&](Caller& caller) {
      check_name(request->name(), "name");
      if (request->files_size() == 0 || request->files_size() > 8) {
        fail(ErrorCode::kInvalidArgument, "files", "expected 1 to 8 files (decoder.json and its weights), got {}",
             request->files_size());
      }
      const auto check_quota = [&] {  // under the tenant's lock
        if (!caller.state().decoders.contains(request->name()) &&
            static_cast<int64_t>(caller.state().decoders.size()) >= caller.quota().max_decoders) {
          fail(ErrorCode::kResourceExhausted, "name", "the tenant has {} decoders, its quota (delete some first)",
               caller.quota().max_decoders);
        }
      };
      {
        std::lock_guard lock(caller.state().mutex);
        check_quota();
      }
      // The files go to a folder of their own, are loaded once as a check (parsed as data by the
      // adapter registry: only kinds it knows), and only then take the name, in one rename: a
      // crash at any point leaves the previous decoder of that name or this one, whole.
      const fs::path root = r_.state_folder(caller.state(), "decoders");
      const fs::path staging = staging_folder(root);
      try {
        std::size_t uploaded = 0;
        std::set<std::string> names;
        for (int i = 0; i < request->files_size(); ++i) {
          const auto& file = request->files(i);
          const std::string field = fmt::format("files[{}]", i);
          check_name(file.name(), field + ".name");
          if (!names.insert(file.name()).second) fail(ErrorCode::kInvalidArgument, field + ".name", "the name appears twice");
          if (static_cast<int64_t>(file.data().size()) > r_.options().limits.max_bytes) {
            fail(ErrorCode::kResourceExhausted, field + ".data", "larger than the host's limit of {} bytes",
                 r_.options().limits.max_bytes);
          }
          write_state_file(staging / file.name(), file.data());
          uploaded += file.data().size();
        }
        try {
          check_sizes(adapters::read_decoder_manifest(staging.string()), uploaded);
          adapters::load_decoder(staging.string());
        } catch (const Error& e) {
          // The registry calls a file it cannot read DATA_LOSS (saved state gone bad); these files
          // are the caller's request, so a bad one is the caller's invalid argument.
          if (e.code() != ErrorCode::kDataLoss) throw;
          fail(ErrorCode::kInvalidArgument, "files", "{}", e.message());
        }
        std::unique_lock files(caller.state().files);
        std::lock_guard lock(caller.state().mutex);
        check_quota();  // again: another registration may have taken the last place meanwhile
        const fs::path folder = root / request->name();
        replace_folder(staging, folder);
        caller.state().decoders[request->name()] = folder;
      } catch (...) {
        std::error_code ignored;
        fs::remove_all(staging, ignored);
        throw;
      }
    });
  }

  grpc::Status list_decoders(grpc::ServerContext* context, const v1::ListDecodersRequest*,
                            v1::DecoderList* out) {
    return guarded(r_, context, [&](Caller& caller) {
      std::lock_guard lock(caller.state().mutex);
      for (const auto& [name, folder] : caller.state().decoders) out->add_names(name);
    }, Work::kBookkeeping);
  }

  grpc::Status delete_decoder(grpc::ServerContext* context, const v1::DecoderName* request, v1::Empty*) {
    return guarded(r_, context, [&](Caller& caller) {
      std::unique_lock files(caller.state().files);
      std::lock_guard lock(caller.state().mutex);
      auto it = caller.state().decoders.find(request->name());
      if (it == caller.state().decoders.end()) {
        fail(ErrorCode::kNotFound, "name", "no decoder \"{}\" registered by this tenant", request->name());
      }
      remove_folder(it->second);  // in one rename: a crash leaves the decoder or nothing, never a part
      caller.state().decoders.erase(it);
    }, Work::kBookkeeping);
  }

  grpc::Status create_session(grpc::ServerContext* context, const v1::CreateSessionRequest*, v1::SessionInfo* out) {
    return guarded(r_, context, [&](Caller& caller) {
      TenantState& tenant = caller.state();
      const std::string id = r_.new_id();
      {
        std::lock_guard lock(tenant.mutex);
        prune_sessions(tenant);
        if (static_cast<int64_t>(tenant.sessions.size()) >= caller.quota().max_sessions) {
          fail(ErrorCode::kResourceExhausted, "sessions", "the tenant holds {} sessions, its quota (delete some first)",
               caller.quota().max_sessions);
        }
        tenant.sessions[id] = {r_.backbone().new_session(), 0, std::chrono::steady_clock::now(), false};
      }
      out->set_id(id);
    }, Work::kBookkeeping);
  }

  grpc::Status describe_session(grpc::ServerContext* context, const v1::SessionId* request, v1::SessionInfo* out) {
    return guarded(r_, context, [&](Caller& caller) {
      std::lock_guard lock(caller.state().mutex);
      const TenantState::HeldSession& held = find_session(caller.state(), request->id(), "id");
      if (held.busy) fail(ErrorCode::kFailedPrecondition, "id", "session \"{}\" is in use by a generation", request->id());
      out->set_id(request->id());
      out->set_batch_size(held.session->batch_size());
      out->set_length(held.session->length());
      const at::Tensor next = held.session->next_positions();
      if (next.defined()) wire::to_wire(next, out->mutable_next_positions());
      out->set_bytes(static_cast<int64_t>(held.session->bytes()));
    }, Work::kBookkeeping);
  }

  // A session in use is deleted too: its generation keeps the cache until it ends.
  grpc::Status delete_session(grpc::ServerContext* context, const v1::SessionId* request, v1::Empty*) {
    return guarded(r_, context, [&](Caller& caller) {
      TenantState& tenant = caller.state();
      std::lock_guard lock(tenant.mutex);
      find_session(tenant, request->id(), "id");
      tenant.session_bytes -= tenant.sessions[request->id()].bytes;
      tenant.sessions.erase(request->id());
    }, Work::kBookkeeping);
  }

 private:
  // A session taken by one generation, given back when the generation ends (however it ends): its
  // cache's bytes counted, its time-to-live started again.
  class SessionUse {
   public:
    SessionUse(TenantState& tenant, std::string id, std::shared_ptr<ali::Session> session)
        : tenant_(tenant), id_(std::move(id)), session_(std::move(session)) {}
    SessionUse(const SessionUse&) = delete;
    SessionUse& operator=(const SessionUse&) = delete;
    ~SessionUse() {
      std::lock_guard lock(tenant_.mutex);
      auto it = tenant_.sessions.find(id_);
      if (it == tenant_.sessions.end() || it->second.session != session_) return;  // deleted meanwhile
      tenant_.session_bytes -= it->second.bytes;
      it->second.bytes = session_->bytes();
      tenant_.session_bytes += it->second.bytes;
      it->second.last_use = std::chrono::steady_clock::now();
      it->second.busy = false;
    }
    const std::shared_ptr<ali::Session>& session() const { return session_; }

   private:
    TenantState& tenant_;
    std::string id_;
    std::shared_ptr<ali::Session> session_;
  };

  // Under the tenant's lock: deletes the sessions no call has used for HostOptions::session_ttl.
  void prune_sessions(TenantState& tenant) const {
    const auto now = std::chrono::steady_clock::now();
    for (auto it = tenant.sessions.begin(); it != tenant.sessions.end();) {
      if (!it->second.busy && now - it->second.last_use > r_.options().session_ttl) {
        tenant.session_bytes -= it->second.bytes;
        it = tenant.sessions.erase(it);
      } else {
        ++it;
      }
    }
  }

  // Under the tenant's lock: the tenant's live session `id` (NOT_FOUND otherwise: unknown,
  // deleted, expired, or another tenant's).
  TenantState::HeldSession& find_session(TenantState& tenant, const std::string& id, const std::string& field) const {
    prune_sessions(tenant);
    auto it = tenant.sessions.find(id);
    if (it == tenant.sessions.end()) {
      fail(ErrorCode::kNotFound, field, "no session \"{}\" (unknown, deleted or expired)", id);
    }
    return it->second;
  }

  // Takes the tenant's session `id` for a generation of B rows of T prompt positions and up to
  // `steps` tokens. Its cache may grow to twice the positions it holds (the cache doubles its
  // capacity), so that bound, with the tenant's other sessions, must fit the byte quota.
  std::shared_ptr<ali::Session> take_session(Caller& caller, const std::string& id, int64_t B, int64_t T, int64_t steps,
                                             std::optional<SessionUse>& use) {
    TenantState& tenant = caller.state();
    std::lock_guard lock(tenant.mutex);
    TenantState::HeldSession& held = find_session(tenant, id, "session");
    if (held.busy) fail(ErrorCode::kFailedPrecondition, "session", "session \"{}\" is in use by another generation", id);
    const ModelInfo& info = r_.backbone().config();
    const double slot = 2.0 * static_cast<double>(info.num_layers * info.num_kv_heads * info.head_dim) *
                            (info.dtype == "float32" ? 4 : 2) + 9;  // keys and values, a position and a flag
    const double slots = static_cast<double>(std::max<int64_t>(2 * (held.session->length() + T + steps), 16));
    const double most = static_cast<double>(B) * slots * slot;
    const double others = static_cast<double>(tenant.session_bytes - held.bytes);
    if (others + most > static_cast<double>(caller.quota().max_session_bytes)) {
      fail(ErrorCode::kResourceExhausted, "session",
           "this generation could grow the tenant's sessions to {:.0f} bytes, beyond its quota of {} (delete sessions "
           "or generate fewer tokens)",
           others + most, caller.quota().max_session_bytes);
    }
    held.busy = true;
    use.emplace(tenant, id, held.session);
    return held.session;
  }

  // Checks the request and runs its prompt.
  std::unique_ptr<ali::Generation> start(Caller& caller, const v1::GenerateRequest& request,
                                         std::optional<SessionUse>& session) {
    const at::Tensor latents = r_.latents(caller, request.latents(), "latents");
    if (request.max_new_tokens() < 1) {
      fail(ErrorCode::kInvalidArgument, "max_new_tokens", "expected >= 1, got {}", request.max_new_tokens());
    }
    // The KV cache holds every prompt and generated position of every row.
    const int64_t B = latents.size(0), T = latents.size(1);
    const int64_t steps = std::min(request.max_new_tokens(), r_.backbone().config().max_positions);
    r_.check_tokens(caller, B, B * (T + steps), "max_new_tokens");

    ali::GenerateOptions options;
    if (request.has_positions()) options.positions = r_.tensor(request.positions(), "positions");
    if (request.has_mask()) options.mask = r_.tensor(request.mask(), "mask");
    options.max_new_tokens = request.max_new_tokens();
    const v1::Sampling& s = request.sampling();
    options.sampling.temperature = s.temperature();
    options.sampling.top_k = s.top_k();
    if (s.has_top_p()) options.sampling.top_p = s.top_p();
    if (s.has_seed()) options.sampling.seed = s.seed();
    options.stop_ids.assign(request.stop_ids().begin(), request.stop_ids().end());
    if (!request.session().empty()) options.session = take_session(caller, request.session(), B, T, steps, session);
    if (request.has_extension()) options.extension = r_.extension(caller, request.extension(), "extension");
    // Each decoder is loaded once per generation, however many routes name it.
    if (request.routes_size() > kMaxRoutes) {
      fail(ErrorCode::kInvalidArgument, "routes", "expected at most {} routes, got {}", kMaxRoutes,
           request.routes_size());
    }
    std::map<std::string, std::shared_ptr<ali::Decoder>> decoders;
    for (int i = 0; i < request.routes_size(); ++i) {
      const v1::Route& route = request.routes(i);
      auto& d = decoders[route.decoder()];
      if (!d) d = decoder(caller, route.decoder(), fmt::format("routes[{}].decoder", i));
      options.routes.push_back({route.start_id(), route.end_id(), d});
    }
    return r_.backbone().start_generation(latents, options);
  }

  // A fresh instance of the tenant's decoder `name`: decoders keep per-row state, so concurrent
  // generations never share one.
  std::shared_ptr<ali::Decoder> decoder(Caller& caller, const std::string& name, const std::string& field) {
    std::shared_lock files(caller.state().files);  // a registration replaces the folder only between loads
    fs::path folder;
    {
      std::lock_guard lock(caller.state().mutex);
      auto it = caller.state().decoders.find(name);
      if (it == caller.state().decoders.end()) {
        fail(ErrorCode::kNotFound, field, "no decoder \"{}\" registered by this tenant", name);
      }
      folder = it->second;
    }
    return adapters::load_decoder(folder.string()).decoder;
  }

  // The module a manifest asks for is built before its weights are read: its sizes must agree
  // with the backbone and with the bytes that came with it, or a few bytes of JSON could make the
  // host allocate without bound. A decoder's weights hold at least a matrix of its two largest sizes.
  void check_sizes(const adapters::AdapterManifest& manifest, std::size_t uploaded) {
    const auto dim = manifest.sizes.find("dim");
    if (dim != manifest.sizes.end() && dim->second != r_.backbone().config().hidden_size) {
      fail(ErrorCode::kInvalidArgument, "sizes.dim", "expected the backbone's hidden size {}, got {}",
           r_.backbone().config().hidden_size, dim->second);
    }
    std::vector<int64_t> sizes;
    for (const auto& [name, size] : manifest.sizes) sizes.push_back(size);
    std::sort(sizes.rbegin(), sizes.rend());
    const double largest = sizes.size() >= 2 ? static_cast<double>(sizes[0]) * static_cast<double>(sizes[1])
                                             : sizes.empty() ? 0.0 : static_cast<double>(sizes[0]);
    if (largest > static_cast<double>(uploaded) / 2) {  // at least 2 bytes per weight (16-bit)
      fail(ErrorCode::kInvalidArgument, "sizes", "sizes that need more weights than the {} bytes sent", uploaded);
    }
  }

  Requests& r_;
};

}  // namespace

std::unique_ptr<Handlers> add_generation_calls(Requests& requests, Calls& calls) {
  return std::make_unique<GenerationService>(requests, calls);
}

}  // namespace aios::server
