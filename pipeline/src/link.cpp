// The link over c10d's ProcessGroupGloo and TCPStore. The only file that includes Gloo's headers:
// they come from the system (libgloo-dev) while the code is LibTorch's, so keeping them here keeps
// any mismatch in one place.
#include "link.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <deque>
#include <mutex>

#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include "aios/fail.h"

namespace aios::pipeline {

namespace {

constexpr int64_t kMagic = 0x61696f73;  // "aios"
// Header words: magic, kind, dtype, rank, sizes[kMaxDims], error code.
constexpr int64_t kMaxDims = 6;
constexpr int64_t kHeaderWords = 4 + kMaxDims + 1;
enum Kind : int64_t { kTensor = 1, kError = 2 };

}  // namespace

std::string Link::traffic_line() const {
  return fmt::format("pipeline rank {} sent {} bytes in {} messages", rank_, sent_bytes_.load(),
                     sent_messages_.load());
}

void Link::lose(const std::string& what, const std::exception& e) {
  broken_ = true;
  fail(ErrorCode::kUnavailable, "pipeline", "{}: {}", what, e.what());
}

struct Rendezvous::Impl {
  c10::intrusive_ptr<c10d::TCPStore> store;
  std::chrono::milliseconds timeout;
};

Rendezvous::Rendezvous(const std::string& host, int port, bool server, int world, std::chrono::milliseconds timeout)
    : impl_(std::make_unique<Impl>()) {
  c10d::TCPStoreOptions options;
  options.port = static_cast<std::uint16_t>(port);
  options.isServer = server;
  options.numWorkers = static_cast<std::size_t>(world);
  options.waitWorkers = false;
  options.timeout = timeout;
  try {
    impl_->store = c10::make_intrusive<c10d::TCPStore>(host, options);
  } catch (const std::exception& e) {
    fail(ErrorCode::kUnavailable, "rendezvous", "{} {}:{}: {}", server ? "cannot listen on" : "cannot reach", host,
         port, e.what());
  }
  impl_->timeout = timeout;
}

Rendezvous::~Rendezvous() = default;

int Rendezvous::port() const { return impl_->store->getPort(); }

void Rendezvous::set(const std::string& key, const std::string& value) {
  try {
    impl_->store->set(key, std::vector<uint8_t>(value.begin(), value.end()));
  } catch (const std::exception& e) {
    fail(ErrorCode::kUnavailable, "rendezvous", "cannot set {}: {}", key, e.what());
  }
}

std::string Rendezvous::get(const std::string& key) {
  try {
    const std::vector<uint8_t> value = impl_->store->get(key);
    return {value.begin(), value.end()};
  } catch (const std::exception& e) {
    fail(ErrorCode::kUnavailable, "rendezvous", "waited {} s for {}: {}", impl_->timeout.count() / 1000, key, e.what());
  }
}

std::string Rendezvous::local_address_towards(const std::string& host, int port) {
  addrinfo hints{};
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_DGRAM;
  addrinfo* found = nullptr;
  if (getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &found) != 0 || found == nullptr) {
    fail(ErrorCode::kUnavailable, "rendezvous", "cannot resolve {}", host);
  }
  // A datagram socket's connect() only picks the route: nothing is sent.
  const int fd = socket(AF_INET, SOCK_DGRAM, 0);
  sockaddr_in local{};
  socklen_t size = sizeof local;
  const bool ok = fd >= 0 && connect(fd, found->ai_addr, found->ai_addrlen) == 0 &&
                  getsockname(fd, reinterpret_cast<sockaddr*>(&local), &size) == 0;
  freeaddrinfo(found);
  if (fd >= 0) close(fd);
  if (!ok) fail(ErrorCode::kUnavailable, "rendezvous", "no route to {}", host);
  char text[INET_ADDRSTRLEN] = {};
  inet_ntop(AF_INET, &local.sin_addr, text, sizeof text);
  return text;
}

namespace {

class GlooLink final : public Link {
 public:
  GlooLink(c10::intrusive_ptr<c10d::ProcessGroupGloo> group, int rank, int world, std::chrono::milliseconds timeout)
      : Link(rank, world), group_(std::move(group)), timeout_(timeout) {}

  ~GlooLink() override {
    // Undelivered sends are dropped with the group; waiting for them could block on a dead peer.
    std::lock_guard lock(mutex_);
    pending_.clear();
  }

  void send(int peer, Tag tag, const at::Tensor& t) override {
    if (t.dim() > kMaxDims) fail(ErrorCode::kInternal, "pipeline", "a tensor of rank {} cannot be sent", t.dim());
    at::Tensor header = at::zeros({kHeaderWords}, at::kLong);
    int64_t* h = header.data_ptr<int64_t>();
    h[0] = kMagic;
    h[1] = kTensor;
    h[2] = static_cast<int64_t>(t.scalar_type());
    h[3] = t.dim();
    for (int64_t d = 0; d < t.dim(); ++d) h[4 + d] = t.size(d);
    // Bool travels as bytes; everything as a contiguous tensor in host memory.
    at::Tensor payload = t.to(at::kCPU, t.scalar_type() == at::kBool ? at::kByte : t.scalar_type()).contiguous();
    post(peer, tag, std::move(header));
    if (payload.numel() > 0) post(peer, tag, std::move(payload));
  }

  void send_error(int peer, Tag tag, const Error& error) override {
    const std::string text = error.field() + '\0' + error.message();
    at::Tensor header = at::zeros({kHeaderWords}, at::kLong);
    int64_t* h = header.data_ptr<int64_t>();
    h[0] = kMagic;
    h[1] = kError;
    h[2] = static_cast<int64_t>(at::kByte);
    h[3] = 1;
    h[4] = static_cast<int64_t>(text.size());
    h[kHeaderWords - 1] = static_cast<int64_t>(error.code());
    at::Tensor payload = at::empty({static_cast<int64_t>(text.size())}, at::kByte);
    std::memcpy(payload.data_ptr(), text.data(), text.size());
    post(peer, tag, std::move(header));
    post(peer, tag, std::move(payload));
  }

  Received receive(int peer, Tag tag, std::chrono::milliseconds timeout) override {
    at::Tensor header = at::empty({kHeaderWords}, at::kLong);
    take(peer, tag, header, timeout);
    const int64_t* h = header.data_ptr<int64_t>();
    if (h[0] != kMagic || (h[1] != kTensor && h[1] != kError) || h[3] < 0 || h[3] > kMaxDims) {
      broken_ = true;
      fail(ErrorCode::kInternal, "pipeline", "a message from rank {} that is not one of the link's", peer);
    }
    std::vector<int64_t> sizes(h + 4, h + 4 + h[3]);
    const auto dtype = static_cast<at::ScalarType>(h[2]);
    Received out;
    if (h[1] == kError) {
      at::Tensor text = at::empty(sizes, at::kByte);
      take(peer, tag, text, timeout);
      const std::string all(reinterpret_cast<const char*>(text.data_ptr()), static_cast<std::size_t>(text.numel()));
      const std::size_t split = all.find('\0');
      out.error.emplace(static_cast<ErrorCode>(h[kHeaderWords - 1]), all.substr(0, split),
                        split == std::string::npos ? std::string() : all.substr(split + 1));
      return out;
    }
    at::Tensor payload = at::empty(sizes, dtype == at::kBool ? at::kByte : dtype);
    if (payload.numel() > 0) take(peer, tag, payload, timeout);
    out.tensor = dtype == at::kBool ? payload.to(at::kBool) : payload;
    return out;
  }

  void flush() override {
    std::deque<Pending> sends;
    {
      std::lock_guard lock(mutex_);
      sends.swap(pending_);
    }
    for (Pending& p : sends) wait(p, "a send");
  }

 private:
  struct Pending {
    c10::intrusive_ptr<c10d::Work> work;
    at::Tensor buffer;  // kept alive until delivered
  };

  void post(int peer, Tag tag, at::Tensor buffer) {
    if (broken_) fail(ErrorCode::kUnavailable, "pipeline", "the pipeline's link is broken");
    std::vector<at::Tensor> buffers{buffer};
    sent_messages_ += 1;
    sent_bytes_ += buffer.nbytes();
    Pending oldest;
    {
      std::lock_guard lock(mutex_);
      try {
        pending_.push_back({group_->send(buffers, peer, static_cast<int>(tag)), std::move(buffer)});
      } catch (const std::exception& e) {
        lose("sending to rank " + std::to_string(peer), e);
      }
      // Bounded: past this many undelivered sends the oldest is waited for (its receiver is
      // working through earlier messages and will get to it).
      if (pending_.size() > 256) {
        oldest = std::move(pending_.front());
        pending_.pop_front();
      }
    }
    if (oldest.work) wait(oldest, "a send");
  }

  void take(int peer, Tag tag, at::Tensor& buffer, std::chrono::milliseconds timeout) {
    if (broken_) fail(ErrorCode::kUnavailable, "pipeline", "the pipeline's link is broken");
    std::vector<at::Tensor> buffers{buffer};
    c10::intrusive_ptr<c10d::Work> work;
    try {
      work = group_->recv(buffers, peer, static_cast<int>(tag));
      work->wait(timeout);
    } catch (const std::exception& e) {
      lose(fmt::format("receiving from rank {} (waited up to {} ms)", peer, timeout.count()), e);
    }
  }

  void wait(Pending& p, const char* what) {
    try {
      p.work->wait(timeout_);
    } catch (const std::exception& e) {
      lose(what, e);
    }
  }

  c10::intrusive_ptr<c10d::ProcessGroupGloo> group_;
  std::chrono::milliseconds timeout_;
  std::mutex mutex_;
  std::deque<Pending> pending_;
};

}  // namespace

std::unique_ptr<Link> Link::join(Rendezvous& rendezvous, const std::string& prefix, const std::string& address,
                                 int rank, int world, std::chrono::milliseconds timeout) {
  auto options = c10d::ProcessGroupGloo::Options::create(timeout);
  try {
    options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(address));
    auto store = c10::make_intrusive<c10d::PrefixStore>(prefix, rendezvous.impl_->store);
    auto group = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world, options);
    return std::make_unique<GlooLink>(std::move(group), rank, world, timeout);
  } catch (const std::exception& e) {
    fail(ErrorCode::kUnavailable, "pipeline", "rank {} of {} could not form the link at {}: {}", rank, world, address,
         e.what());
  }
}

}  // namespace aios::pipeline
