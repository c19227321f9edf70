// Internal: the point-to-point link between a pipeline's processes, over LibTorch's c10d (Gloo on
// the CPU). Every message is a fixed-size header (what follows: a tensor's dtype and shape, or an
// error) and then its payload, so a receiver always posts a buffer of the size the sender sends
// (Gloo aborts the receiving process on a shorter one) and a failure on one stage travels down the
// pipeline in place of the tensors it could not make.
//
// Messages between two ranks under one tag arrive in the order they were sent; tags are
// independent channels. Sends are asynchronous (the tensor is kept until it is delivered);
// receives block, each bounded by a timeout. Any transport failure (a peer that died, a receive
// that timed out) breaks the link for good: every later call throws Error(kUnavailable), and the
// processes must form a new one.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include <ATen/ATen.h>

#include "aios/error.h"
#include "aios/export.h"

// Exported for the C++ tests, which reach these internal classes (not an installed header).
AIOS_EXPORT_BEGIN

namespace aios::pipeline {

enum class Tag : int {
  kControl = 1,   // front -> stage: what to do next, and its small tensors
  kForward = 2,   // the residual stream: front -> first stage -> ... -> last stage -> front
  kBackward = 3,  // its cotangent, the other way
  kToFront = 4,   // stage -> front: requested layer states and expert routing
};

// What a receive gets: a tensor, or the error a sender put in its place.
struct Received {
  at::Tensor tensor;
  std::optional<Error> error;
};

// The key-value store the processes meet at (c10d's TCPStore): rank 0 serves it, every other
// rank connects to it. Besides forming the link, it carries the layout and each stage's state.
class Rendezvous {
 public:
  // port 0 (server only): a free port, then port() tells which.
  Rendezvous(const std::string& host, int port, bool server, int world, std::chrono::milliseconds timeout);
  ~Rendezvous();
  int port() const;
  void set(const std::string& key, const std::string& value);
  // Waits (up to the store's timeout) until `key` is set; throws Error(kUnavailable) on timeout.
  std::string get(const std::string& key);
  // The local address a peer reaching `host` would see us at (the interface routing to it).
  static std::string local_address_towards(const std::string& host, int port);

 private:
  friend class Link;
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

class Link {
 public:
  // Joins the group of `world` processes as `rank` through the rendezvous store at host:port
  // (rank 0 serves it). `address` is the local address the others connect to. Every rank calls
  // this at about the same time; it returns when all have joined, or throws Error(kUnavailable).
  // Its groups are kept in the store under `prefix` (a new one for every new link of the same
  // processes). `timeout` bounds forming it and every send's delivery.
  static std::unique_ptr<Link> join(Rendezvous& rendezvous, const std::string& prefix, const std::string& address,
                                    int rank, int world, std::chrono::milliseconds timeout);
  virtual ~Link() = default;

  int rank() const { return rank_; }
  int world() const { return world_; }
  bool broken() const { return broken_; }

  // t (any dtype, any device: it travels through host memory) to `peer` under `tag`.
  virtual void send(int peer, Tag tag, const at::Tensor& t) = 0;
  // The error in place of a tensor.
  virtual void send_error(int peer, Tag tag, const Error& error) = 0;
  // The next message from `peer` under `tag`, waiting at most `timeout` for each of its parts.
  virtual Received receive(int peer, Tag tag, std::chrono::milliseconds timeout) = 0;
  // Waits until every send so far has been delivered (bounded by the link's timeout).
  virtual void flush() = 0;

  // What this process has sent so far: messages and bytes (headers included).
  struct Traffic {
    uint64_t messages = 0, bytes = 0;
  };
  Traffic sent() const { return {sent_messages_, sent_bytes_}; }
  // "rank R sent B bytes in M messages", for the process's log.
  std::string traffic_line() const;

 protected:
  Link(int rank, int world) : rank_(rank), world_(world) {}
  // Marks the link broken and throws Error(kUnavailable) describing `what` failed.
  [[noreturn]] void lose(const std::string& what, const std::exception& e);

  int rank_, world_;
  std::atomic<bool> broken_{false};
  std::atomic<uint64_t> sent_messages_{0}, sent_bytes_{0};
};

}  // namespace aios::pipeline

AIOS_EXPORT_END
