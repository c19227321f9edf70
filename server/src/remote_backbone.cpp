#include "aios/server/remote_backbone.h"

#include <filesystem>
#include <fstream>
#include <mutex>
#include <string_view>
#include <type_traits>
#include <unordered_map>

#include "aios/fail.h"
#include "aios/tokenizer_api/tokenizer.h"
#include "aios/wire/messages.h"
#include "aios/wire/tensors.h"
#include "aios/wire/wire.h"

namespace aios::server {
namespace {

// Responses are as trusted as the host, but still checked: a tensor must agree with its shape.
const wire::TensorLimits kResponseLimits{/*max_rank=*/4, /*max_dim=*/int64_t{1} << 40, /*max_bytes=*/int64_t{1} << 40};

// A reply that does not parse is the host's fault, not the caller's: kDataLoss.
at::Tensor from_wire(const v1::Tensor& t, const char* field) {
  try {
    return wire::to_torch(t, field, kResponseLimits);
  } catch (const Error& e) {
    fail(ErrorCode::kDataLoss, e.field(), "malformed reply from the host: {}", e.message());
  }
}

ali::ForwardOutput read_output(const v1::ForwardResponse& r) {
  return wire::messages::read_output<ali::ForwardOutput>(r, from_wire, from_wire);
}

// Every tensor of a request goes as it is.
constexpr auto kWrite = [](const at::Tensor& t, v1::Tensor* out) { wire::to_wire(t, out); };

[[noreturn]] void unsupported(const char* what, const char* how) {
  fail(ErrorCode::kUnimplemented, what, "not offered by a hosted backbone: {}", how);
}

// The replica that holds an extension: its id is "REPLICA.EPOCH.N".
std::string replica_of(const std::string& extension_id) { return extension_id.substr(0, extension_id.find('.')); }

// An id as hosts make them for extensions and sessions, "REPLICA.EPOCH.N" (decimal, hex, decimal):
// it goes back into request metadata (aios-replica), where bytes of another kind would abort the
// call, so what a host sends is checked first.
void check_id(const std::string& id) {
  int dots = 0;
  bool ok = !id.empty() && id.size() <= 64 && id.front() != '.' && id.back() != '.';
  for (std::size_t i = 0; ok && i < id.size(); ++i) {
    const char c = id[i];
    if (c == '.') {
      ok = id[i - 1] != '.' && ++dots <= 2;
    } else {
      ok = (c >= '0' && c <= '9') || (dots == 1 && c >= 'a' && c <= 'f');
    }
  }
  if (!ok || dots != 2) fail(ErrorCode::kDataLoss, "id", "the host sent an id that is not REPLICA.EPOCH.N");
}

gradient::Gradients read_gradients(const v1::Gradients& g) {
  gradient::Gradients out;
  out.latents = from_wire(g.latents(), "latents");
  if (g.has_embedding_rows()) out.embedding_rows = from_wire(g.embedding_rows(), "embedding_rows");
  if (g.has_classifier_rows()) out.classifier_rows = from_wire(g.classifier_rows(), "classifier_rows");
  return out;
}

// A deletion on the host of what `id` names, for a destructor, which has no one to tell of a
// failure: best effort, briefly.
void forget_on_host(wire::Transport& transport, const char* method, const std::string& id,
                    const google::protobuf::Message& request) {
  v1::Empty out;
  try {
    wire::call(transport, {method, {{"aios-replica", replica_of(id)}}, std::chrono::seconds(2)}, request, &out);
  } catch (const Error&) {
  }
}

// Stands for a decoder registered on the host, in the routes of that host's generations.
class HostedDecoder final : public ali::Decoder {
 public:
  HostedDecoder(std::string name, const void* host) : name_(std::move(name)), host_(host) {}
  ali::DecoderStep step(int64_t, const at::Tensor&) override {
    fail(ErrorCode::kFailedPrecondition, "decoder",
         "decoder \"{}\" runs on the host: route a generation of the backbone that registered it there", name_);
  }
  const std::string& name() const { return name_; }
  const void* host() const { return host_; }

 private:
  std::string name_;
  const void* host_;
};

}  // namespace

struct RemoteBackbone::Impl {
  std::shared_ptr<wire::Transport> transport;
  ModelInfo config;
  wire::HostLimits limits;
  c10::ScalarType dtype = at::kFloat;

  std::once_flag definition_once;
  std::shared_ptr<const tokenizer::Tokenizer> base_tokenizer;
  std::optional<std::string> chat_template;

  // The host's copy of each extension this backbone made, and the versions of the local rows it
  // last received (tensor version counters move with every in-place update).
  struct Mirror {
    std::string id;
    int64_t embedding_version = -1;
    int64_t classifier_version = -1;
  };
  std::mutex mutex;
  std::unordered_map<const ali::Extension*, Mirror> mirrors;

  // What naming extensions in a request implies: the rows sent with it (the mirror is brought up
  // to date once the host has taken them), and the replica that holds the extensions.
  struct Sent {
    const ali::Extension* extension;
    int64_t embedding_version, classifier_version;
  };
  struct SentRows {
    std::vector<Sent> rows;
    std::string replica;
  };

  // The call `method`, routed to the replica that holds the extensions it names and, for a call
  // about a kept pass, to the one that keeps it (`keeper`, the top 16 bits of its handle): a load
  // balancer in front of several hosts routes on "aios-replica" (docs/hosting.md).
  static wire::Call routed(const char* method, const SentRows& sent, std::optional<gradient::Handle> keeper = std::nullopt) {
    wire::Call call{method, {}, std::nullopt};
    if (!sent.replica.empty()) call.metadata.emplace_back("aios-replica", sent.replica);
    if (keeper) call.metadata.emplace_back("aios-replica", std::to_string(*keeper >> 48));
    return call;
  }

  void call(const char* method, const google::protobuf::Message& request, google::protobuf::Message* reply,
            const SentRows& sent = {}, std::optional<gradient::Handle> keeper = std::nullopt) {
    wire::call(*transport, routed(method, sent, keeper), request, reply);
    taken(sent);
  }

  void taken(const SentRows& sent) {
    std::lock_guard lock(mutex);
    for (const Sent& s : sent.rows) {
      auto it = mirrors.find(s.extension);
      if (it == mirrors.end()) continue;
      it->second.embedding_version = s.embedding_version;
      it->second.classifier_version = s.classifier_version;
    }
  }

  // Names `extension` (checked to be this backbone's) in a request, with its rows when they changed
  // since the host last took them.
  void ref(const RemoteBackbone& self, const ali::Extension& extension, const char* field, v1::ExtensionRef* out,
           SentRows& sent) {
    extension.check_fits(self, field);
    std::lock_guard lock(mutex);
    auto found = mirrors.find(&extension);
    if (found == mirrors.end()) fail(ErrorCode::kInvalidArgument, field, "the extension was not made by this backbone");
    const Mirror& mirror = found->second;
    out->set_id(mirror.id);
    sent.replica = replica_of(mirror.id);
    const int64_t e = extension.embedding_rows()._version(), c = extension.classifier_rows()._version();
    if (e != mirror.embedding_version || c != mirror.classifier_version) {
      wire::to_wire(extension.embedding_rows(), out->mutable_rows()->mutable_embedding_rows());
      wire::to_wire(extension.classifier_rows(), out->mutable_rows()->mutable_classifier_rows());
      sent.rows.push_back({&extension, e, c});
    }
  }

  void write_options(const RemoteBackbone& self, const gradient::ForwardOptions& o, v1::ForwardOptions* out,
                     SentRows& sent) {
    wire::messages::write_options(o, out, kWrite);
    if (o.extension) ref(self, *o.extension, "extension", out->mutable_extension(), sent);
  }

  // The host's copy goes with the local one (a host that cannot be reached drops it with the
  // tenant's other state when it stops).
  void forget(const ali::Extension* extension) {
    std::string id;
    {
      std::lock_guard lock(mutex);
      auto it = mirrors.find(extension);
      if (it == mirrors.end()) return;
      id = it->second.id;
      mirrors.erase(it);
    }
    delete_on_host(id);
  }

  void delete_on_host(const std::string& id) {
    v1::DeleteExtensionRequest request;
    request.set_id(id);
    forget_on_host(*transport, "/aios.v1.Tokenizer/DeleteExtension", id, request);
  }

  void read_definition() {
    std::call_once(definition_once, [&] {
      v1::TokenizerDefinition definition;
      try {
        call("/aios.v1.Tokenizer/Definition", v1::DefinitionRequest(), &definition);
      } catch (const Error& e) {
        if (e.code() != ErrorCode::kNotFound) throw;
        return;  // the model has no tokenizer
      }
      base_tokenizer = std::make_shared<const tokenizer::Tokenizer>(
          tokenizer::Tokenizer::from_json(definition.json(), "the host's tokenizer"));
      if (!definition.chat_template().empty()) chat_template = definition.chat_template();
    });
  }
};

namespace {

// A generation on the host, read step by step from its stream.
class RemoteGeneration final : public ali::Generation {
 public:
  // `owner` keeps the transport alive as long as the stream. `started` runs once the host has
  // answered with a first step.
  RemoteGeneration(std::shared_ptr<const void> owner, std::unique_ptr<wire::Transport::Stream> stream,
                   std::function<void()> started)
      : owner_(std::move(owner)), stream_(std::move(stream)), started_(std::move(started)) {}

  std::optional<ali::GenerationStep> next() override {
    if (done_) return std::nullopt;
    v1::GenerateStep m;
    if (!wire::next(*stream_, &m)) {
      done_ = true;
      return std::nullopt;
    }
    if (started_) std::exchange(started_, nullptr)();
    ali::GenerationStep step;
    step.index = m.index();
    step.ids = from_wire(m.ids(), "ids");
    step.finished = from_wire(m.finished(), "finished");
    step.routes = from_wire(m.routes(), "routes");
    step.hidden = from_wire(m.hidden(), "hidden");
    for (const v1::Tensor& output : m.outputs()) {
      step.outputs.push_back(output.dtype() == v1::DTYPE_UNSPECIFIED ? at::Tensor() : from_wire(output, "outputs"));
    }
    return step;
  }

 private:
  std::shared_ptr<const void> owner_;
  std::unique_ptr<wire::Transport::Stream> stream_;  // destroyed first: a stream that has not ended is cancelled
  std::function<void()> started_;
  bool done_ = false;
};

}  // namespace

namespace {

// A KV cache the host keeps for this caller between generations; deleted there with the last
// reference here (or by the host's time-to-live when this process leaves without a word).
class RemoteSession final : public ali::Session {
 public:
  // `owner` stands for the backbone that made it.
  RemoteSession(std::shared_ptr<wire::Transport> transport, const void* owner, std::string id)
      : transport_(std::move(transport)), owner_(owner), id_(std::move(id)) {}
  ~RemoteSession() override {
    v1::SessionId request;
    request.set_id(id_);
    forget_on_host(*transport_, "/aios.v1.Generation/DeleteSession", id_, request);
  }

  int64_t batch_size() const override { return describe().batch_size(); }
  int64_t length() const override { return describe().length(); }
  at::Tensor next_positions() const override {
    const v1::SessionInfo info = describe();
    return info.has_next_positions() ? from_wire(info.next_positions(), "next_positions") : at::Tensor();
  }
  std::size_t bytes() const override { return static_cast<std::size_t>(std::max<int64_t>(0, describe().bytes())); }

  const std::string& id() const { return id_; }
  const void* owner() const { return owner_; }

 private:
  v1::SessionInfo describe() const {
    v1::SessionId request;
    request.set_id(id_);
    v1::SessionInfo info;
    wire::call(*transport_, {"/aios.v1.Generation/DescribeSession", {{"aios-replica", replica_of(id_)}}, std::nullopt},
                 request, &info);
    return info;
  }

  std::shared_ptr<wire::Transport> transport_;
  const void* owner_;
  std::string id_;
};

}  // namespace

RemoteBackbone::RemoteBackbone(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}
RemoteBackbone::~RemoteBackbone() = default;

std::shared_ptr<RemoteBackbone> RemoteBackbone::connect(const std::string& address, const wire::ConnectOptions& options) {
  return connect(wire::grpc_transport(address, options));
}

std::shared_ptr<RemoteBackbone> RemoteBackbone::connect(std::shared_ptr<wire::Transport> transport) {
  auto impl = std::make_shared<Impl>();
  wire::HostDescription host = wire::describe_host(*transport);
  impl->transport = std::move(transport);
  impl->config = std::move(host.model);
  impl->limits = host.limits;
  impl->dtype = wire::torch_dtype(host.dtype);
  return std::shared_ptr<RemoteBackbone>(new RemoteBackbone(std::move(impl)));
}

const ModelInfo& RemoteBackbone::config() const { return impl_->config; }
const wire::HostLimits& RemoteBackbone::limits() const { return impl_->limits; }
c10::Device RemoteBackbone::device() const { return at::kCPU; }
c10::ScalarType RemoteBackbone::dtype() const { return impl_->dtype; }

std::shared_ptr<ali::Extension> RemoteBackbone::extend(const std::vector<std::string>& tokens,
                                                       const ali::ExtendOptions& options) {
  v1::CreateExtensionRequest request;
  for (const std::string& token : tokens) request.add_tokens(token);
  switch (options.init) {
    case ali::ExtendOptions::Init::kMean: request.set_init(v1::CreateExtensionRequest::MEAN); break;
    case ali::ExtendOptions::Init::kToken:
      request.set_init(v1::CreateExtensionRequest::TOKEN);
      request.set_token(options.token);
      break;
    case ali::ExtendOptions::Init::kTensors:
      request.set_init(v1::CreateExtensionRequest::TENSORS);
      for (const auto& [rows, name] : {std::pair{&options.embedding_rows, "init.embedding_rows"},
                                       std::pair{&options.classifier_rows, "init.classifier_rows"}}) {
        if (!rows->defined()) fail(ErrorCode::kInvalidArgument, name, "expected a floating tensor [K,D], got none");
      }
      wire::to_wire(options.embedding_rows, request.mutable_rows()->mutable_embedding_rows());
      wire::to_wire(options.classifier_rows, request.mutable_rows()->mutable_classifier_rows());
      break;
  }
  v1::ExtensionInfo info;
  impl_->call("/aios.v1.Tokenizer/CreateExtension", request, &info);
  check_id(info.id());

  std::unique_ptr<ali::Extension> made;
  try {
    ali::Extension::Parts parts;
    parts.tokens.assign(info.tokens().begin(), info.tokens().end());
    parts.first_id = info.first_id();
    parts.embedding_rows = from_wire(info.rows().embedding_rows(), "rows.embedding_rows");
    parts.classifier_rows = from_wire(info.rows().classifier_rows(), "rows.classifier_rows");
    parts.base_tokenizer = tokenizer();
    parts.owner = this;
    parts.base = ali::BaseIdentity::of(*this);
    made = std::make_unique<ali::Extension>(std::move(parts));
  } catch (...) {
    impl_->delete_on_host(info.id());
    throw;
  }
  const ali::Extension* key = made.get();
  {
    std::lock_guard lock(impl_->mutex);
    impl_->mirrors[key] = {info.id(), made->embedding_rows()._version(), made->classifier_rows()._version()};
  }
  // The deleter keeps the channel: an extension that outlives its backbone still deletes its copy.
  return std::shared_ptr<ali::Extension>(made.release(), [impl = impl_](ali::Extension* extension) {
    impl->forget(extension);
    delete extension;
  });
}

std::shared_ptr<const tokenizer::Tokenizer> RemoteBackbone::tokenizer() {
  impl_->read_definition();
  return impl_->base_tokenizer;
}

std::optional<std::string> RemoteBackbone::chat_template() {
  impl_->read_definition();
  return impl_->chat_template;
}

std::unique_ptr<ali::Generation> RemoteBackbone::start_generation(const at::Tensor& latents,
                                                                  const ali::GenerateOptions& options) {
  v1::GenerateRequest request;
  Impl::SentRows sent;
  if (options.session) {
    const auto* session = dynamic_cast<const RemoteSession*>(options.session.get());
    if (session == nullptr || session->owner() != impl_.get()) {
      fail(ErrorCode::kInvalidArgument, "session", "expected a session of this backbone (new_session())");
    }
    request.set_session(session->id());
    sent.replica = replica_of(session->id());
  }
  wire::to_wire(latents, request.mutable_latents());
  if (options.positions) wire::to_wire(*options.positions, request.mutable_positions());
  if (options.mask) wire::to_wire(*options.mask, request.mutable_mask());
  request.set_max_new_tokens(options.max_new_tokens);
  v1::Sampling* s = request.mutable_sampling();
  s->set_temperature(options.sampling.temperature);
  s->set_top_k(options.sampling.top_k);
  s->set_top_p(options.sampling.top_p);
  if (options.sampling.seed) s->set_seed(*options.sampling.seed);
  for (int64_t id : options.stop_ids) request.add_stop_ids(id);
  if (options.extension) impl_->ref(*this, *options.extension, "extension", request.mutable_extension(), sent);
  for (const ali::Route& route : options.routes) {
    const auto* hosted = dynamic_cast<const HostedDecoder*>(route.decoder.get());
    if (hosted == nullptr || hosted->host() != impl_.get()) {
      unsupported("routes.decoder",
                  "a decoder of this process cannot run on the host; register its saved folder with register_decoder");
    }
    v1::Route* r = request.add_routes();
    r->set_start_id(route.start_id);
    r->set_end_id(route.end_id);
    r->set_decoder(hosted->name());
  }
  request.set_return_hidden(true);
  Impl* impl = impl_.get();
  auto stream = impl_->transport->stream(Impl::routed("/aios.v1.Generation/Generate", sent), request.SerializeAsString());
  // The host writes the rows that went with the request before its first step.
  return std::make_unique<RemoteGeneration>(impl_, std::move(stream), [impl, sent] { impl->taken(sent); });
}

std::shared_ptr<ali::Session> RemoteBackbone::new_session() {
  v1::SessionInfo info;
  impl_->call("/aios.v1.Generation/CreateSession", v1::CreateSessionRequest(), &info);
  check_id(info.id());
  return std::make_shared<RemoteSession>(impl_->transport, impl_.get(), info.id());
}

std::shared_ptr<ali::Decoder> RemoteBackbone::register_decoder(const std::string& name, const std::string& path) {
  namespace fs = std::filesystem;
  if (!fs::exists(fs::path(path) / "decoder.json")) fail(ErrorCode::kNotFound, path, "no decoder.json in the folder");
  v1::RegisterDecoderRequest request;
  request.set_name(name);
  // decoder.json and the weights files next to it (an encoder may share the folder).
  for (const auto& entry : fs::directory_iterator(path)) {
    const std::string file = entry.path().filename().string();
    if (!entry.is_regular_file() || !file.starts_with("decoder")) continue;
    std::ifstream in(entry.path(), std::ios::binary);
    std::string data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    auto* f = request.add_files();
    f->set_name(file);
    f->set_data(std::move(data));
  }
  v1::Empty out;
  impl_->call("/aios.v1.Generation/RegisterDecoder", request, &out);
  return std::make_shared<HostedDecoder>(name, impl_.get());
}

// Each parameter of a generated call in its field: tensors as they are, extensions by reference
// (with their rows when they changed), the options, cotangents and losses by messages.h; a handle
// routes the call to the replica that keeps its pass.
struct RemoteBackbone::Outgoing {
  const RemoteBackbone& self;
  Impl::SentRows sent;
  std::optional<gradient::Handle> keeper;

  template <class T, class Make>
  void write(const T& value, Make make, const char* field) {
    wire::messages::write_field(value, make, [&](const auto& v, auto* out) { put(v, out, field); });
    if constexpr (std::is_same_v<T, gradient::Handle>) {
      if (std::string_view(field) == "handle") keeper = value;
    }
  }
  void write(const gradient::LossOptions& loss, v1::ForwardBackwardRequest& request, const char* /*field*/) {
    wire::messages::write_loss(loss, &request, kWrite);
  }
  void call(const char* method, const google::protobuf::Message& request, google::protobuf::Message* reply) {
    self.impl_->call(method, request, reply, sent, keeper);
  }
  template <class T, class Reply>
  T read(const Reply& reply, const char* field) {
    return read_as(std::type_identity<T>(), reply, field);
  }

 private:
  void put(const at::Tensor& t, v1::Tensor* out, const char*) { wire::to_wire(t, out); }
  void put(const ali::Extension* extension, v1::ExtensionRef* out, const char* field) {
    self.impl_->ref(self, *extension, field, out, sent);
  }
  void put(const ali::ForwardOptions& o, v1::ForwardOptions* out, const char*) {
    wire::messages::write_options(o, out, kWrite);
  }
  void put(const gradient::ForwardOptions& o, v1::ForwardOptions* out, const char*) {
    self.impl_->write_options(self, o, out, sent);
  }
  void put(const gradient::Cotangents& c, v1::Cotangents* out, const char*) {
    wire::messages::write_cotangents(c, out, kWrite);
  }

  template <class T>
  static T read_as(std::type_identity<T>, int64_t v, const char* field) {
    return wire::messages::read_number<T>(v, field);
  }
  static at::Tensor read_as(std::type_identity<at::Tensor>, const v1::Tensor& t, const char* field) {
    return from_wire(t, field);
  }
  static ali::ForwardOutput read_as(std::type_identity<ali::ForwardOutput>, const v1::ForwardResponse& r, const char*) {
    return read_output(r);
  }
  static gradient::KeptForward read_as(std::type_identity<gradient::KeptForward>, const v1::ForwardResponse& r,
                                       const char*) {
    gradient::KeptForward kept;
    kept.output = read_output(r);
    kept.handle = r.handle();
    return kept;
  }
  static gradient::Gradients read_as(std::type_identity<gradient::Gradients>, const v1::Gradients& g, const char*) {
    return read_gradients(g);
  }
  static gradient::FusedResult read_as(std::type_identity<gradient::FusedResult>, const v1::FusedResult& r,
                                       const char*) {
    gradient::FusedResult result;
    result.loss = from_wire(r.loss(), "loss").squeeze();
    result.losses = from_wire(r.losses(), "losses");
    result.grad = read_gradients(r.grad());
    return result;
  }
};

RemoteBackbone::Outgoing RemoteBackbone::outgoing() const { return Outgoing{*this, {}, std::nullopt}; }

#include "remote_definitions.inc"

}  // namespace aios::server
