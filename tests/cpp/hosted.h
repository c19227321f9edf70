// What the tests of the host share (test_server.cpp, test_tenants.cpp, test_host_calls.cpp): one
// host on loopback over a tiny Llama, raw tensor messages, and a backbone that holds its forwards.
#pragma once

#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "aios/local/local_backbone.h"
#include "aios/server/host.h"
#include "aios/server/remote_backbone.h"
#include "aios/v1/aios.pb.h"
#include "tiny_checkpoint.h"

namespace aios_test {

using aios::local::LocalBackbone;
namespace v1 = aios::v1;

struct Loopback {
  std::shared_ptr<LocalBackbone> local;
  std::unique_ptr<aios::server::Host> host;
  std::shared_ptr<aios::server::RemoteBackbone> remote;
  std::string address;

  static Loopback& get() {
    static Loopback* l = [] {
      auto* l = new Loopback;
      l->local = LocalBackbone::load(TinyCheckpoint::llama("server").write());
      aios::server::HostOptions options;
      options.listen = "127.0.0.1:0";
      options.max_batch = 16;
      options.quota.max_tokens = 512;
      l->host = std::make_unique<aios::server::Host>(l->local, options);
      l->address = "127.0.0.1:" + std::to_string(l->host->port());
      l->remote = aios::server::RemoteBackbone::connect(l->address);
      return l;
    }();
    return *l;
  }
};

inline v1::Tensor raw(v1::DType dtype, std::vector<int64_t> shape, std::size_t bytes) {
  v1::Tensor t;
  t.set_dtype(dtype);
  for (int64_t d : shape) t.add_shape(d);
  t.set_data(std::string(bytes, '\0'));
  return t;
}


// A LocalBackbone whose forwards are counted, and held while the gate is closed.
class GatedBackbone final : public aios::gradient::Backbone {
 public:
  explicit GatedBackbone(std::shared_ptr<LocalBackbone> inner) : inner_(std::move(inner)) {}

  void close() {
    std::lock_guard lock(mutex_);
    open_ = false;
  }
  void open() {
    {
      std::lock_guard lock(mutex_);
      open_ = true;
    }
    changed_.notify_all();
  }
  int forwards() {
    std::lock_guard lock(mutex_);
    return forwards_;
  }
  void wait_for_forwards(int n) {
    std::unique_lock lock(mutex_);
    changed_.wait(lock, [&] { return forwards_ >= n; });
  }

  aios::ali::ForwardOutput forward(const at::Tensor& latents, const aios::ali::ForwardOptions& options) override {
    {
      std::unique_lock lock(mutex_);
      ++forwards_;
      changed_.notify_all();
      changed_.wait(lock, [&] { return open_; });
    }
    return inner_->forward(latents, options);
  }
  const aios::ModelInfo& config() const override { return inner_->config(); }
  c10::Device device() const override { return inner_->device(); }
  c10::ScalarType dtype() const override { return inner_->dtype(); }
  at::Tensor embed(const at::Tensor& ids, const aios::ali::Extension* e) override { return inner_->embed(ids, e); }
  at::Tensor classify(const at::Tensor& hidden, const aios::ali::Extension* e) override {
    return inner_->classify(hidden, e);
  }
  std::shared_ptr<aios::ali::Extension> extend(const std::vector<std::string>& tokens,
                                               const aios::ali::ExtendOptions& options) override {
    return inner_->extend(tokens, options);
  }
  std::shared_ptr<const aios::tokenizer::Tokenizer> tokenizer() override { return inner_->tokenizer(); }
  std::optional<std::string> chat_template() override { return inner_->chat_template(); }
  std::unique_ptr<aios::ali::Generation> start_generation(const at::Tensor& latents,
                                                          const aios::ali::GenerateOptions& options) override {
    return inner_->start_generation(latents, options);
  }
  std::shared_ptr<aios::ali::Session> new_session() override { return inner_->new_session(); }
  // The pass's cancellation check (asked between blocks, forward and backward) waits while the
  // gate is closed, and counts the times it said stop.
  aios::gradient::KeptForward forward_keep(const at::Tensor& latents, const aios::gradient::ForwardOptions& options) override {
    aios::gradient::ForwardOptions held = options;
    held.cancelled = [this, asked = options.cancelled] {
      std::unique_lock lock(mutex_);
      ++checks_;
      changed_.notify_all();
      changed_.wait(lock, [&] { return open_; });
      lock.unlock();
      const bool stop = asked && asked();
      if (stop) {
        std::lock_guard again(mutex_);
        ++stops_;
      }
      return stop;
    };
    return inner_->forward_keep(latents, held);
  }
  void wait_for_checks(int n) {
    std::unique_lock lock(mutex_);
    changed_.wait(lock, [&] { return checks_ >= n; });
  }
  int checks() {
    std::lock_guard lock(mutex_);
    return checks_;
  }
  int stops() {
    std::lock_guard lock(mutex_);
    return stops_;
  }
  aios::gradient::Gradients vjp(aios::gradient::Handle handle, const aios::gradient::Cotangents& c) override {
    return inner_->vjp(handle, c);
  }
  void release(aios::gradient::Handle handle) override { inner_->release(handle); }
  aios::gradient::Gradients vjp(const at::Tensor& latents, const aios::gradient::ForwardOptions& options,
                                const aios::gradient::Cotangents& c) override {
    return inner_->vjp(latents, options, c);
  }
  aios::gradient::FusedResult forward_backward(const at::Tensor& latents, const aios::gradient::ForwardOptions& options,
                                               const aios::gradient::LossOptions& loss) override {
    return inner_->forward_backward(latents, options, loss);
  }
  std::size_t kept_passes() const override { return inner_->kept_passes(); }
  std::size_t kept_bytes() const override { return inner_->kept_bytes(); }

 private:
  std::shared_ptr<LocalBackbone> inner_;
  std::mutex mutex_;
  std::condition_variable changed_;
  bool open_ = true;
  int forwards_ = 0;
  int checks_ = 0;
  int stops_ = 0;
};

}  // namespace aios_test
