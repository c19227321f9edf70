// Internal: added tokens (tokenizer.json's added_tokens, special or not) and finding them in text
// before the model sees it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "unicode.h"
#include "utf8.h"

namespace aios::tokenizer {

// An entry of added_tokens, and the text it is matched by.
struct AddedToken {
  std::string content;
  std::string pattern;  // what is matched: the content, normalized when `normalized`
  int32_t id = 0;
  bool special = false;
  bool lstrip = false;
  bool rstrip = false;
  bool single_word = false;
  bool normalized = false;
};

// Added tokens matched in text: the leftmost match, the longest at that position, as the
// reference's leftmost-longest automaton finds them.
class AddedMatcher {
 public:
  // `token.pattern` is not empty.
  void add(const AddedToken& token);
  bool empty() const { return tokens_.empty(); }

  // Calls on_text(begin, end) for the text between matches (never empty) and on_token(id) for
  // each match, in order.
  template <typename OnText, typename OnToken>
  void scan(std::string_view text, OnText&& on_text, OnToken&& on_token) const {
    std::size_t start = 0, i = 0;
    while (i < text.size()) {
      if (!starts_[static_cast<unsigned char>(text[i])]) {  // most positions are skipped at once
        ++i;
        continue;
      }
      const AddedToken* hit = nullptr;
      for (const AddedToken& a : tokens_) {
        if (text.compare(i, a.pattern.size(), a.pattern) == 0) {
          hit = &a;
          break;
        }
      }
      if (hit == nullptr) {
        ++i;
        continue;
      }
      std::size_t begin = i, end = i + hit->pattern.size(), at = 0;
      if (hit->single_word && ((begin > 0 && is_word_char(code_point_before(text, begin, &at))) ||
                               (end < text.size() && is_word_char(first_code_point(text, end))))) {
        i = end;  // not a word of its own; the search goes on after it, as the reference's does
        continue;
      }
      if (hit->lstrip) begin = white_space_start(text, begin, start);
      if (hit->rstrip) end = white_space_end(text, end);
      if (begin > start) on_text(start, begin);
      on_token(hit->id);
      start = i = end;
    }
    if (start < text.size()) on_text(start, text.size());
  }

 private:
  static uint32_t first_code_point(std::string_view s, std::size_t i) {
    uint32_t cp = 0xFFFD;
    utf8_length(s, i, &cp);
    return cp;
  }
  std::vector<AddedToken> tokens_;  // longest pattern first
  bool starts_[256] = {};
};

}  // namespace aios::tokenizer
