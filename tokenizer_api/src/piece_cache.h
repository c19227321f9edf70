// Internal: the cache of whole pieces already tokenized, shared by threads and read without a
// lock.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

namespace aios::tokenizer {

// The reference caches the pieces of fewer bytes than this; longer ones are rare and large.
constexpr std::size_t kCachedPieceBytes = 256;

// Ids of whole pieces already tokenized: pieces recur (words). Shared by threads, and lookups take
// no lock: an open-addressing table, at most half full, whose entries are published once (release
// and acquire) and neither changed nor removed until the cache goes. Inserts take a lock. A copy
// starts empty. The table is made at the first insert and the entries are owned in a list of their
// own, so a tokenizer that is made and dropped without encoding (an extension's copy, a file only
// checked) costs nothing here.
class PieceCache {
 public:
  static constexpr std::size_t kEntries = std::size_t{1} << 17;  // then pieces are no longer added

  PieceCache() = default;
  PieceCache(const PieceCache&) : PieceCache() {}
  PieceCache& operator=(const PieceCache&) = delete;

  // The ids of `piece`, or null when not cached.
  const std::vector<int32_t>* find(std::string_view piece) const {
    const Slot* slots = slots_.load(std::memory_order_acquire);
    if (slots == nullptr) return nullptr;
    for (std::size_t i = slot(piece);; i = (i + 1) % kSlots) {
      const Entry* e = slots[i].load(std::memory_order_acquire);
      if (e == nullptr) return nullptr;
      if (e->piece == piece) return &e->ids;
    }
  }

  // Caches the ids of `piece`, unless the cache is full or has them already.
  void insert(std::string_view piece, std::vector<int32_t> ids) const;

 private:
  struct Entry {
    std::string piece;
    std::vector<int32_t> ids;
  };
  using Slot = std::atomic<const Entry*>;
  static constexpr int kSlotBits = 18;
  static constexpr std::size_t kSlots = std::size_t{1} << kSlotBits;  // twice kEntries
  static_assert(kSlots >= 2 * kEntries);

  // FNV-1a, cheap on short pieces, then Fibonacci hashing: the top bits of a multiply mix all.
  static std::size_t slot(std::string_view piece) {
    uint64_t h = 14695981039346656037ull;
    for (unsigned char c : piece) h = (h ^ c) * 1099511628211ull;
    return static_cast<std::size_t>((h * 0x9E3779B97F4A7C15ull) >> (64 - kSlotBits));
  }

  mutable std::mutex mutex_;                                   // inserts
  mutable std::unique_ptr<Slot[]> table_;                      // made at the first insert
  mutable std::atomic<const Slot*> slots_{nullptr};            // table_, for lookups
  mutable std::vector<std::unique_ptr<const Entry>> entries_;  // what the slots point to, owned
};

}  // namespace aios::tokenizer
