// Adding to an AddedMatcher: its tokens stay in the order scan tries them, longest pattern first.
#include "added_tokens.h"

#include <algorithm>

namespace aios::tokenizer {

void AddedMatcher::add(const AddedToken& token) {
  auto longer = [](const AddedToken& x, const AddedToken& y) { return x.pattern.size() > y.pattern.size(); };
  tokens_.insert(std::upper_bound(tokens_.begin(), tokens_.end(), token, longer), token);
  starts_[static_cast<unsigned char>(token.pattern[0])] = true;
}

}  // namespace aios::tokenizer
