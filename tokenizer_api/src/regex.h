// Internal: PCRE2 patterns as the tokenizer runs them, and the splitting and replacing of text at
// their matches (or at a literal's occurrences).
#pragma once

#ifndef PCRE2_CODE_UNIT_WIDTH
#define PCRE2_CODE_UNIT_WIDTH 8
#endif
#include <pcre2.h>

#include <algorithm>
#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "utf8.h"

namespace aios::tokenizer {

// A compiled PCRE2 pattern (UTF, Unicode properties, invalid UTF-8 tolerated, JIT when available).
// Multiline: the reference's patterns are Oniguruma's Ruby syntax, where ^ and $ anchor at lines.
class Regex {
 public:
  // Throws Error(kInvalidArgument), naming `field`, when the pattern does not compile.
  Regex(const std::string& pattern, const std::string& field);
  Regex(const Regex&) = delete;
  ~Regex() { pcre2_code_free(code_); }

  // Calls f(begin, end) for each match in `text`, in order. f may run regexes itself.
  template <typename F>
  void for_each_match(std::string_view text, F&& f) const {
    pcre2_match_data* data = match_data();
    const auto subject = reinterpret_cast<PCRE2_SPTR>(text.data());
    std::size_t start = 0;
    while (start <= text.size()) {
      // JIT-compiled: pcre2_jit_match skips pcre2_match's per-call checks.
      const int rc = jit_ ? pcre2_jit_match(code_, subject, text.size(), start, 0, data, nullptr)
                          : pcre2_match(code_, subject, text.size(), start, 0, data, nullptr);
      if (rc < 0) break;  // 0 (more groups than the block holds) is still a match
      const PCRE2_SIZE* v = pcre2_get_ovector_pointer(data);
      const std::size_t begin = v[0], end = v[1];
      if (end == begin) {  // empty match: step over one character (or one invalid byte)
        start = begin + (begin < text.size() ? std::max<std::size_t>(1, utf8_length(text, begin)) : 1);
        continue;
      }
      f(begin, end);
      start = end;
    }
  }

  // [begin, end) of each match in `text`, in order.
  std::vector<std::pair<std::size_t, std::size_t>> find_all(std::string_view text) const {
    std::vector<std::pair<std::size_t, std::size_t>> out;
    for_each_match(text, [&](std::size_t b, std::size_t e) { out.emplace_back(b, e); });
    return out;
  }

 private:
  // One match-data block per thread, shared by all patterns: only the whole match's offsets are
  // read, and for_each_match copies them out before f runs.
  static pcre2_match_data* match_data() {
    thread_local const std::unique_ptr<pcre2_match_data, void (*)(pcre2_match_data*)> data(
        pcre2_match_data_create(1, nullptr), pcre2_match_data_free);
    return data.get();
  }

  pcre2_code* code_ = nullptr;
  bool jit_ = false;
};

enum class Behavior { kIsolated, kRemoved, kMergedWithPrevious, kMergedWithNext, kContiguous };

// A pre-tokenized piece of text; at_origin: it starts where the input starts (Metaspace's
// prepend_scheme "first" needs to know).
struct Piece {
  std::string_view text;
  bool at_origin = false;
};

// Splits `piece` at the matches that for_each_match(f) reports (f(begin, end), in order) per
// `behavior`, as the reference's NormalizedString::split does, and calls emit(piece) for each
// result in order (empty ones are dropped). Streams: no list of matches or results is built.
template <typename ForEachMatch, typename Emit>
void split_at(Piece piece, ForEachMatch&& for_each_match, Behavior behavior, bool invert, Emit&& emit) {
  std::size_t begin = 0, end = 0;  // the result being built; none while empty
  bool previous_match = false;
  auto flush = [&] {
    if (end > begin) emit(Piece{piece.text.substr(begin, end - begin), piece.at_origin && begin == 0});
  };
  // Spans (matches and the text between them, never empty) in order; a gap never follows a gap.
  auto span = [&](std::size_t b, std::size_t e, bool is_match) {
    bool joins = false;  // whether the span extends the result being built
    switch (behavior) {
      case Behavior::kIsolated:
        break;
      case Behavior::kRemoved:
        if (is_match) return;
        break;
      case Behavior::kContiguous:
        joins = is_match == previous_match;
        break;
      case Behavior::kMergedWithPrevious:  // a delimiter joins the piece before it
        joins = is_match && !previous_match;
        break;
      case Behavior::kMergedWithNext:  // a delimiter joins the piece after it
        joins = !is_match && previous_match;
        break;
    }
    previous_match = is_match;
    if (joins && end > begin) {
      end = e;
      return;
    }
    flush();
    begin = b;
    end = e;
  };
  std::size_t cursor = 0;
  for_each_match([&](std::size_t b, std::size_t e) {
    if (b > cursor) span(cursor, b, invert);
    span(b, e, !invert);
    cursor = e;
  });
  if (cursor < piece.text.size()) span(cursor, piece.text.size(), invert);
  flush();
}

// Calls f(begin, end) for each occurrence of `needle` in `text`, in order.
template <typename F>
void for_each_literal(std::string_view text, std::string_view needle, F&& f) {
  for (std::size_t at = text.find(needle); at != std::string_view::npos; at = text.find(needle, at + needle.size())) {
    f(at, at + needle.size());
  }
}

// `text` with every match of `regex` replaced by `content` (taken literally).
std::string replace_all(const Regex& regex, std::string_view text, std::string_view content);

// `s` as a pattern that matches it literally: PCRE2's metacharacters escaped.
std::string regex_escape(const std::string& s);

}  // namespace aios::tokenizer
