#include "aios/gradient_api/activation_store.h"

#include <atomic>
#include <list>
#include <mutex>
#include <unordered_map>

#include "aios/fail.h"

namespace aios::gradient {

namespace {
// Handles carry the store's tag in their top 16 bits, so a handle of another store is told apart
// from one that expired here.
constexpr int kTagShift = 48;
std::atomic<std::uint64_t> next_tag{1};
}  // namespace

struct ActivationStore::Impl {
  using Clock = std::chrono::steady_clock;
  struct Slot {
    std::shared_ptr<const KeptPass> pass;
    Clock::time_point last_use;
    std::list<Handle>::iterator lru;  // position in `recency`, most recent at the front
  };

  StoreOptions options;
  std::uint64_t tag = 0;
  std::uint64_t next_sequence = 1;
  mutable std::mutex mutex;
  std::unordered_map<Handle, Slot> slots;
  std::list<Handle> recency;
  std::size_t bytes = 0;

  void drop(std::unordered_map<Handle, Slot>::iterator it) {
    bytes -= it->second.pass->bytes;
    recency.erase(it->second.lru);
    slots.erase(it);
  }

  void drop_expired(Clock::time_point now) {
    while (!recency.empty()) {
      auto it = slots.find(recency.back());
      if (now - it->second.last_use < options.ttl) break;
      drop(it);
    }
  }

  std::unordered_map<Handle, Slot>::iterator find(Handle handle) {
    if ((handle >> kTagShift) != tag) {
      fail(ErrorCode::kInvalidArgument, "handle", "handle {} belongs to another backbone", handle);
    }
    drop_expired(Clock::now());
    auto it = slots.find(handle);
    if (it == slots.end()) {
      fail(ErrorCode::kNotFound, "handle", "handle {} is unknown, released, expired or evicted", handle);
    }
    return it;
  }
};

ActivationStore::ActivationStore(StoreOptions options) : impl_(std::make_unique<Impl>()) {
  if (options.ttl.count() <= 0) {
    fail(ErrorCode::kInvalidArgument, "store.ttl", "expected a positive time-to-live, got {} ms", options.ttl.count());
  }
  impl_->options = options;
  impl_->tag = next_tag.fetch_add(1) & 0xffff;
}
ActivationStore::~ActivationStore() = default;

Handle ActivationStore::put(std::shared_ptr<const KeptPass> pass) {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  Impl& s = *impl_;
  if (pass->bytes > s.options.max_bytes) {
    fail(ErrorCode::kResourceExhausted, "activation_store",
         "this forward pass keeps about {} bytes of activations, more than the store's budget of {} bytes",
         pass->bytes, s.options.max_bytes);
  }
  const auto now = Impl::Clock::now();
  s.drop_expired(now);
  while (s.bytes + pass->bytes > s.options.max_bytes) s.drop(s.slots.find(s.recency.back()));
  const Handle handle = (s.tag << kTagShift) | s.next_sequence++;
  s.recency.push_front(handle);
  s.bytes += pass->bytes;
  s.slots.emplace(handle, Impl::Slot{std::move(pass), now, s.recency.begin()});
  return handle;
}

std::shared_ptr<const KeptPass> ActivationStore::get(Handle handle) {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  auto it = impl_->find(handle);
  it->second.last_use = Impl::Clock::now();
  impl_->recency.splice(impl_->recency.begin(), impl_->recency, it->second.lru);
  return it->second.pass;
}

void ActivationStore::release(Handle handle) {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  impl_->drop(impl_->find(handle));
}

std::size_t ActivationStore::bytes() const {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  return impl_->bytes;
}

std::size_t ActivationStore::size() const {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  return impl_->slots.size();
}

const StoreOptions& ActivationStore::options() const { return impl_->options; }

}  // namespace aios::gradient
