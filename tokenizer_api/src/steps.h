// Internal: the steps of a tokenizer.json pipeline around the model (normalizers, pre-tokenizers,
// decoders), each Sequence flattened, and applying one step.
#pragma once

#include <unicode/normalizer2.h>

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "regex.h"

namespace aios::tokenizer {

// One normalizer of a (flattened) Sequence.
struct NormalizeStep {
  enum class Kind { kPrepend, kReplace, kUnicode, kLowercase, kStrip };
  Kind kind = Kind::kPrepend;
  std::string content;             // Prepend: the prefix; Replace: the replacement
  std::shared_ptr<Regex> regex;    // Replace
  const icu::Normalizer2* form = nullptr;  // Unicode (owned by ICU)
  bool left = false, right = false;        // Strip
};

// Applies `n` to `s`; at_origin becomes false when the start of the text goes.
void apply_normalizer(const NormalizeStep& n, std::string& s, bool& at_origin);

// Metaspace's prepend_scheme.
enum class Prepend { kAlways, kFirst, kNever };

// One pre-tokenization step: pieces in, pieces out.
struct Step {
  enum class Kind { kRegex, kMetaspace };
  Kind kind = Kind::kRegex;
  Behavior behavior = Behavior::kIsolated;
  bool invert = false;
  bool prefix_space = false;     // ByteLevel(add_prefix_space): a space before each piece lacking one
  std::shared_ptr<Regex> regex;  // null: no split
  // Metaspace
  std::string replacement;
  Prepend prepend = Prepend::kAlways;
  bool split = true;
};

// Applies `step` to `p` and calls next(piece) for each resulting piece, in order. Inline (a
// template): encoding calls it for every piece, with next going on to the following step.
template <typename Next>
void apply_pre_tokenizer(const Step& step, Piece p, Next&& next) {
  std::string rewritten;  // the piece as this step rewrites it, if it does
  if (step.kind == Step::Kind::kMetaspace) {
    for (char c : p.text) {
      if (c == ' ') rewritten += step.replacement;
      else rewritten.push_back(c);
    }
    const bool starts = rewritten.compare(0, step.replacement.size(), step.replacement) == 0;
    if (!starts && (step.prepend == Prepend::kAlways || (step.prepend == Prepend::kFirst && p.at_origin))) {
      rewritten.insert(0, step.replacement);
    }
    p.text = rewritten;
    if (!step.split) return next(p);
    auto matches = [&](auto&& f) { for_each_literal(p.text, step.replacement, f); };
    return split_at(p, matches, Behavior::kMergedWithNext, false, next);
  }
  if (step.prefix_space && !p.text.empty() && p.text.front() != ' ') {
    rewritten.reserve(p.text.size() + 1);
    rewritten.append(1, ' ').append(p.text);
    p.text = rewritten;
  }
  if (!step.regex) return next(p);
  split_at(p, [&](auto&& f) { step.regex->for_each_match(p.text, f); }, step.behavior, step.invert, next);
}

// One decoder of a (flattened) Sequence, applied to the list of token strings.
struct DecodeStep {
  enum class Kind { kReplace, kByteFallback, kFuse, kStrip, kMetaspace, kByteLevel };
  Kind kind = Kind::kFuse;
  std::shared_ptr<Regex> regex;  // Replace
  std::string content;           // Replace: the replacement; Strip, Metaspace: the character
  std::size_t start = 0, stop = 0;  // Strip
  bool prepend_never = false;       // Metaspace
};

// Applies `step` to the token strings of a decode.
void apply_decoder(const DecodeStep& step, std::vector<std::string>& tokens);

}  // namespace aios::tokenizer
