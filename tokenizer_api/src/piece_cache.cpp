// Adding to the piece cache: under its lock, each entry published once.
#include "piece_cache.h"

namespace aios::tokenizer {

void PieceCache::insert(std::string_view piece, std::vector<int32_t> ids) const {
  std::lock_guard<std::mutex> lock(mutex_);
  if (entries_.size() == kEntries) return;
  if (table_ == nullptr) {
    table_.reset(new Slot[kSlots]());
    slots_.store(table_.get(), std::memory_order_release);
  }
  std::size_t i = slot(piece);
  for (const Entry* e; (e = table_[i].load(std::memory_order_relaxed)) != nullptr; i = (i + 1) % kSlots) {
    if (e->piece == piece) return;  // another thread was first
  }
  entries_.push_back(std::make_unique<const Entry>(Entry{std::string(piece), std::move(ids)}));
  table_[i].store(entries_.back().get(), std::memory_order_release);
}

}  // namespace aios::tokenizer
