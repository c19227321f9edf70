// aios/backbone/kv_cache.h — the keys and values of earlier positions, so that each new position
// costs one block pass instead of a pass over the whole sequence.
//
// The cache is a row of slots per sequence. Every cached pass appends the same number of slots to
// every row; a slot records whether it holds a real token (padding does not) and its position, so
// rows of different lengths share one cache: a row's padding slots are never attended to. A new
// slot attends to the valid slots before it (and, for a model with sliding windows, only to those
// whose position lies within the window).
//
// Storage per layer: keys and values [B, Hkv, capacity, hd] in the model's dtype, grown by
// doubling, so appending is amortised O(1) per slot. A recurrent layer (Gated DeltaNet) keeps its
// state instead, a fixed size whatever the length: the last inputs of its convolution and the
// delta rule's matrix per head, updated by the valid slots of each pass only (padding leaves it
// unchanged). A cache is used by one pass at a time.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include <ATen/ATen.h>

#include "aios/export.h"

AIOS_EXPORT_BEGIN

namespace aios::backbone {

class KVCache {
 public:
  KVCache() = default;

  int64_t batch_size() const { return valid_.defined() ? valid_.size(0) : 0; }
  int64_t length() const { return length_; }  // slots in use
  int64_t capacity() const { return capacity_; }  // slots every layer's keys and values have room for
  // bool [B, length()]: which slots hold real tokens.
  at::Tensor valid() const { return valid_.defined() ? valid_.narrow(1, 0, length_) : at::Tensor(); }
  // int64 [B, length()]: the position of each slot.
  at::Tensor positions() const { return positions_.defined() ? positions_.narrow(1, 0, length_) : at::Tensor(); }
  // Bytes held by keys and values (capacity, not just the slots in use) and recurrent states.
  std::size_t bytes() const;

  // What a recurrent layer carries from one pass to the next in place of keys and values.
  struct LayerState {
    at::Tensor conv;       // [B,C,kernel-1] in the model's dtype: its convolution's last inputs
    at::Tensor recurrent;  // [B,Hv,dk,dv] float32: the delta rule's state
  };
  // For the architectures: layer `layer`'s state after the passes so far (undefined tensors before
  // its first pass), and its replacement after this pass.
  const LayerState& state(int64_t layer) const { return states_[static_cast<std::size_t>(layer)]; }
  void set_state(int64_t layer, LayerState state) { states_[static_cast<std::size_t>(layer)] = std::move(state); }

  // For the architectures. Appends T slots (valid: bool [B,T], positions: int64 [B,T]) before the
  // blocks of a pass run; the first call fixes B, the layer count and the key/value shape.
  void append_slots(const at::Tensor& valid, const at::Tensor& positions, int64_t layers);
  // Writes layer `layer`'s keys and values of the slots appended last ([B,Hkv,T,hd]) and returns
  // all keys and values up to them, [B,Hkv,length(),hd] each (views into the cache).
  std::pair<at::Tensor, at::Tensor> store(int64_t layer, const at::Tensor& k, const at::Tensor& v);
  // The slots appended last start here.
  int64_t pass_begin() const { return pass_begin_; }

  // For blocks run elsewhere (Model::RemoteBlocks): the id their share of this cache is kept
  // under (0: none yet), and what releases that share when this cache goes.
  uint64_t remote_id() const { return remote_id_; }
  void attach_remote(uint64_t id, std::shared_ptr<const void> share) {
    remote_id_ = id;
    remote_share_ = std::move(share);
  }

 private:
  void reserve(int64_t capacity);

  std::vector<at::Tensor> keys_, values_;  // per layer [B,Hkv,capacity,hd], created on first store
  std::vector<LayerState> states_;          // per layer, set by recurrent layers only
  at::Tensor valid_;                        // bool [B, capacity]
  at::Tensor positions_;                    // int64 [B, capacity]
  int64_t length_ = 0, capacity_ = 0, pass_begin_ = 0;
  uint64_t remote_id_ = 0;
  std::shared_ptr<const void> remote_share_;
};

}  // namespace aios::backbone
AIOS_EXPORT_END
