// aios/server/remote_backbone.h — a backbone hosted by `aios serve`, behind the same C++ interface
// as the in-process one (gradient::Backbone): code written against the interface changes only the
// address it starts from.
//
// Tensors go to the host as they are (float32, bfloat16 or float16 latents; the host converts to
// its dtype) and come back on the CPU in the host's dtype, so device() is the CPU. The host's
// errors arrive as the same aios::Error (code, field, message); a host that cannot be reached is
// Error(kUnavailable).
//
// tokenizer() and chat_template() are the host's, read once and then used locally. extend() makes
// the extension on the host (in the caller's tenant) and returns a local copy of its rows: a
// caller trains them in place as with a local backbone, and the rows go to the host with the next
// call that names the extension after they changed (tensor version counters tell). Dropping the
// last reference deletes the host's copy.
//
// Generation runs on the host and streams its steps. Routes go to decoders on the host: a decoder
// folder (adapters::save_decoder) registered with register_decoder(); a decoder object of this
// process cannot run there (Error(kUnimplemented)). new_session() makes a session on the host (a
// KV cache kept for this tenant; its accessors ask the host), deleted there with its last
// reference here, or by the host's time-to-live.
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "aios/export.h"
#include "aios/gradient_api/backbone.h"
#include "aios/wire/connect.h"

AIOS_EXPORT_BEGIN

namespace aios::server {

class RemoteBackbone final : public gradient::Backbone {
 public:
  // Connects to host:port and reads the backbone's description (one call). Throws
  // Error(kUnavailable) when the host does not answer within the timeout.
  static std::shared_ptr<RemoteBackbone> connect(const std::string& address, const wire::ConnectOptions& options = {});
  // The same over `transport` (grpc_transport() is the one above; tests may bring their own).
  static std::shared_ptr<RemoteBackbone> connect(std::shared_ptr<wire::Transport> transport);
  ~RemoteBackbone() override;

  const ModelInfo& config() const override;  // the host's description of its model
  const wire::HostLimits& limits() const;
  c10::Device device() const override;  // the CPU: results arrive there
  c10::ScalarType dtype() const override;  // the host's

  std::shared_ptr<ali::Extension> extend(const std::vector<std::string>& tokens,
                                         const ali::ExtendOptions& options = {}) override;
  std::shared_ptr<const tokenizer::Tokenizer> tokenizer() override;
  std::optional<std::string> chat_template() override;
  std::unique_ptr<ali::Generation> start_generation(const at::Tensor& latents,
                                                    const ali::GenerateOptions& options = {}) override;
  std::shared_ptr<ali::Session> new_session() override;

  // The calls of the contract (the "aios:" comments of aios.proto), generated from it with the
  // interface's types (gradient_api/backbone.types).
#include "aios/server/remote_calls.inc"

  // Sends the decoder folder `path` (decoder.json and its weights, as adapters::save_decoder
  // writes them) to the host as this tenant's decoder `name`, replacing one of that name. The
  // result stands for it in GenerateOptions::routes of this backbone's generations; it cannot
  // step locally. Throws Error: kNotFound (no such folder), the host's check of the files
  // (kInvalidArgument, kDataLoss), kResourceExhausted (the tenant's decoder quota).
  std::shared_ptr<ali::Decoder> register_decoder(const std::string& name, const std::string& path);

 private:
  struct Impl;
  struct Outgoing;  // one request of a generated call being written, sent and its reply read
  Outgoing outgoing() const;
  explicit RemoteBackbone(std::shared_ptr<Impl> impl);
  std::shared_ptr<Impl> impl_;  // shared with the deleters of this backbone's extensions
};

}  // namespace aios::server
AIOS_EXPORT_END
