#include "activation_store.h"

#include <atomic>
#include <list>
#include <mutex>
#include <unordered_map>

#include "aios/fail.h"

namespace aios::local {

namespace {
// Handles carry the store's tag in their top 16 bits, so a handle of another store is told apart
// from one that expired here.
constexpr int kTagShift = 48;
std::atomic<std::uint64_t> next_tag{1};
}  // namespace

struct ActivationStore::Impl {
  using Clock = std::chrono::steady_clock;
  // Each owner's entries in recency order (most recent at the front): eviction takes from its back.
  struct Owner {
    std::list<Handle> recency;
    std::size_t bytes = 0;
  };
  struct Slot {
    std::shared_ptr<const KeptPass> pass;
    StoreOwner owner = 0;
    Clock::time_point last_use;
    std::list<Handle>::iterator lru;        // position in `recency`, for expiry
    std::list<Handle>::iterator owner_lru;  // position in its owner's recency, for eviction
  };

  StoreOptions options;
  std::uint64_t tag = 0;
  std::uint64_t next_sequence = 1;
  mutable std::mutex mutex;
  std::unordered_map<Handle, Slot> slots;
  std::list<Handle> recency;  // every entry, most recent at the front
  std::unordered_map<StoreOwner, Owner> owners;  // only owners with entries: no growth with their number
  std::size_t bytes = 0;

  // Drops the entry; its handle goes to `dropped` when it is `reported`'s.
  void drop(std::unordered_map<Handle, Slot>::iterator it, StoreOwner reported, std::vector<Handle>* dropped) {
    const std::size_t size = it->second.pass->bytes;
    bytes -= size;
    recency.erase(it->second.lru);
    auto owner = owners.find(it->second.owner);
    owner->second.bytes -= size;
    owner->second.recency.erase(it->second.owner_lru);
    if (owner->second.recency.empty()) owners.erase(owner);
    if (dropped != nullptr && it->second.owner == reported) dropped->push_back(it->first);
    slots.erase(it);
  }

  void drop_expired(Clock::time_point now, StoreOwner reported = 0, std::vector<Handle>* dropped = nullptr) {
    while (!recency.empty()) {
      auto it = slots.find(recency.back());
      if (now - it->second.last_use < options.ttl) break;
      drop(it, reported, dropped);
    }
  }

  std::size_t bytes_of(StoreOwner owner) const {
    auto it = owners.find(owner);
    return it == owners.end() ? 0 : it->second.bytes;
  }

  // Throws unless a pass of `size` fits once the owner's own entries are evicted.
  void check_room(std::size_t size, StoreOwner owner) const {
    if (size > options.max_bytes) {
      fail(ErrorCode::kResourceExhausted, "activation_store",
           "this forward pass keeps about {} bytes of activations, more than the store's budget of {} bytes", size,
           options.max_bytes);
    }
    const std::size_t others = bytes - bytes_of(owner);
    if (others + size > options.max_bytes) {
      fail(ErrorCode::kResourceExhausted, "activation_store",
           "the store's budget of {} bytes is held by other owners' passes ({} bytes): this pass of {} bytes does not "
           "fit, and passes of other owners are never evicted for it",
           options.max_bytes, others, size);
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

Stored ActivationStore::put(std::shared_ptr<const KeptPass> pass, StoreOwner owner) {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  Impl& s = *impl_;
  Stored out;
  const auto now = Impl::Clock::now();
  s.drop_expired(now, owner, &out.dropped);
  s.check_room(pass->bytes, owner);  // before evicting anything: a refused pass costs its owner nothing
  while (s.bytes + pass->bytes > s.options.max_bytes) {
    s.drop(s.slots.find(s.owners.at(owner).recency.back()), owner, &out.dropped);
  }
  out.handle = (s.tag << kTagShift) | s.next_sequence++;
  s.recency.push_front(out.handle);
  Impl::Owner& own = s.owners[owner];
  own.recency.push_front(out.handle);
  own.bytes += pass->bytes;
  s.bytes += pass->bytes;
  s.slots.emplace(out.handle, Impl::Slot{std::move(pass), owner, now, s.recency.begin(), own.recency.begin()});
  return out;
}

void ActivationStore::check_room(std::size_t bytes, StoreOwner owner) const {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  impl_->check_room(bytes, owner);
}

std::shared_ptr<const KeptPass> ActivationStore::get(Handle handle) {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  auto it = impl_->find(handle);
  it->second.last_use = Impl::Clock::now();
  impl_->recency.splice(impl_->recency.begin(), impl_->recency, it->second.lru);
  auto& owner = impl_->owners.at(it->second.owner).recency;
  owner.splice(owner.begin(), owner, it->second.owner_lru);
  return it->second.pass;
}

void ActivationStore::release(Handle handle) {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  impl_->drop(impl_->find(handle), 0, nullptr);
}

std::size_t ActivationStore::bytes() const {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  return impl_->bytes;
}

std::size_t ActivationStore::bytes(StoreOwner owner) const {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  return impl_->bytes_of(owner);
}

std::size_t ActivationStore::size() const {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  return impl_->slots.size();
}

const StoreOptions& ActivationStore::options() const { return impl_->options; }

}  // namespace aios::local
