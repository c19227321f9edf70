#include "aios/backbone/kv_cache.h"

#include <algorithm>

namespace aios::backbone {

std::size_t KVCache::bytes() const {
  std::size_t total = 0;
  for (const auto* tensors : {&keys_, &values_}) {
    for (const at::Tensor& t : *tensors) total += t.defined() ? t.nbytes() : 0;
  }
  for (const LayerState& s : states_) {
    for (const at::Tensor* t : {&s.conv, &s.recurrent}) total += t->defined() ? t->nbytes() : 0;
  }
  return total;
}

void KVCache::append_slots(const at::Tensor& valid, const at::Tensor& positions, int64_t layers) {
  const int64_t B = valid.size(0), T = valid.size(1);
  if (!valid_.defined()) {
    keys_.assign(static_cast<std::size_t>(layers), at::Tensor());
    values_.assign(static_cast<std::size_t>(layers), at::Tensor());
    states_.assign(static_cast<std::size_t>(layers), LayerState());
    valid_ = at::zeros({B, 0}, valid.options().dtype(at::kBool));
    positions_ = at::zeros({B, 0}, positions.options().dtype(at::kLong));
  }
  reserve(length_ + T);
  valid_.narrow(1, length_, T).copy_(valid);
  positions_.narrow(1, length_, T).copy_(positions);
  pass_begin_ = length_;
  length_ += T;
}

void KVCache::reserve(int64_t needed) {
  if (needed <= capacity_) return;
  const int64_t capacity = std::max({needed, 2 * capacity_, int64_t{16}});
  auto grow = [&](at::Tensor& t, int64_t dim) {
    if (!t.defined()) return;
    std::vector<int64_t> shape = t.sizes().vec();
    shape[static_cast<std::size_t>(dim)] = capacity;
    at::Tensor bigger = at::zeros(shape, t.options());
    bigger.narrow(dim, 0, length_).copy_(t.narrow(dim, 0, length_));
    t = bigger;
  };
  grow(valid_, 1);
  grow(positions_, 1);
  for (at::Tensor& k : keys_) grow(k, 2);
  for (at::Tensor& v : values_) grow(v, 2);
  capacity_ = capacity;
}

std::pair<at::Tensor, at::Tensor> KVCache::store(int64_t layer, const at::Tensor& k, const at::Tensor& v) {
  at::Tensor& keys = keys_[static_cast<std::size_t>(layer)];
  at::Tensor& values = values_[static_cast<std::size_t>(layer)];
  if (!keys.defined()) {
    keys = at::zeros({k.size(0), k.size(1), capacity_, k.size(3)}, k.options());
    values = at::zeros({v.size(0), v.size(1), capacity_, v.size(3)}, v.options());
  }
  const int64_t T = k.size(2);
  keys.narrow(2, pass_begin_, T).copy_(k);
  values.narrow(2, pass_begin_, T).copy_(v);
  return {keys.narrow(2, 0, length_), values.narrow(2, 0, length_)};
}

}  // namespace aios::backbone
