#include "protocol.h"

#include <sstream>

#include <fmt/ranges.h>

#include "aios/fail.h"

namespace aios::pipeline {

at::Tensor Control::encode() const {
  const auto n = static_cast<int64_t>(layers.size());
  at::Tensor words = at::zeros({4 + 2 * n}, at::kLong);
  int64_t* w = words.data_ptr<int64_t>();
  w[0] = static_cast<int64_t>(op);
  w[1] = static_cast<int64_t>(pass);
  w[2] = static_cast<int64_t>(cache);
  w[3] = flags;
  for (int64_t j = 0; j < n; ++j) {
    w[4 + j] = layers[static_cast<std::size_t>(j)];
    w[4 + n + j] = j < static_cast<int64_t>(present.size()) ? present[static_cast<std::size_t>(j)] : 0;
  }
  return words;
}

Control Control::decode(const at::Tensor& words) {
  if (words.scalar_type() != at::kLong || words.dim() != 1 || words.numel() < 4 || words.numel() % 2 != 0) {
    fail(ErrorCode::kInternal, "pipeline", "a control message of shape {} is not one", words.sizes());
  }
  const int64_t* w = words.data_ptr<int64_t>();
  const int64_t n = (words.numel() - 4) / 2;
  Control c;
  c.op = static_cast<Op>(w[0]);
  c.pass = static_cast<uint64_t>(w[1]);
  c.cache = static_cast<uint64_t>(w[2]);
  c.flags = w[3];
  c.layers.assign(w + 4, w + 4 + n);
  c.present.assign(w + 4 + n, w + 4 + 2 * n);
  return c;
}

int Layout::owner(int64_t l) const {
  if (world() < 2 || l <= first(1) || l >= num_layers()) return -1;
  for (int r = 1; r < world(); ++r) {
    if (l > first(r) && l <= end(r)) return r;
  }
  return -1;
}

std::string Layout::text() const { return fmt::format("{}", fmt::join(bounds, ",")); }

Layout Layout::parse(const std::string& text, const std::string& field) {
  Layout layout;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) {
    try {
      std::size_t used = 0;
      layout.bounds.push_back(std::stoll(item, &used));
      if (used != item.size()) throw std::invalid_argument(item);
    } catch (const std::exception&) {
      fail(ErrorCode::kInvalidArgument, field, "expected block bounds such as 0,4,8, got \"{}\"", text);
    }
  }
  bool ok = layout.bounds.size() >= 2 && layout.bounds[0] == 0;
  for (std::size_t r = 1; ok && r < layout.bounds.size(); ++r) {
    // The front may hold no block; every stage holds at least one.
    ok = layout.bounds[r] >= layout.bounds[r - 1] + (r > 1 ? 1 : 0);
  }
  if (!ok) fail(ErrorCode::kInvalidArgument, field, "expected block bounds from 0, each stage's range not empty, got \"{}\"", text);
  return layout;
}

}  // namespace aios::pipeline
