// aios/tokenizer_api/tokenizer.h — byte-level BPE compatible with Hugging Face tokenizer.json.
//
// Supported: model BPE over a byte-level alphabet; pre-tokenizers ByteLevel (with the GPT-2 split
// pattern), Split (regex or string; Isolated, Removed, MergedWithPrevious, MergedWithNext;
// invert), Digits and Sequence; no normalizer; TemplateProcessing and ByteLevel post-processors;
// the ByteLevel decoder; added and special tokens matched in text before pre-tokenization
// (leftmost, longest first), with lstrip/rstrip. Split patterns run on PCRE2 with Unicode
// properties. Anything else in the file is an Error(kInvalidArgument) naming the field.
//
// Text is UTF-8. Bytes that are not valid UTF-8 are kept: the regex treats them as unmatched text,
// so they become pieces of their own and, byte-level, tokens of their own (a byte the vocabulary
// has no token for is dropped, as the reference does). encode never fails on them; decode turns
// bytes that do not form valid UTF-8 into U+FFFD, so decode(encode(x)) == x for valid UTF-8 x.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace aios::tokenizer {

class Tokenizer {
 public:
  // Reads tokenizer.json. Throws Error: kNotFound, kDataLoss (not JSON), kInvalidArgument
  // (unsupported component, naming it).
  static Tokenizer load(const std::string& path);
  static Tokenizer from_json(const std::string& json_text, const std::string& source = "tokenizer.json");

  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

  // Ids of `text`; add_special_tokens applies the post-processor's template (e.g. a BOS token).
  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens = true) const;
  std::vector<std::vector<int32_t>> encode_batch(const std::vector<std::string>& texts,
                                                 bool add_special_tokens = true) const;
  // Text of `ids`; bytes that do not form valid UTF-8 become U+FFFD. Throws
  // Error(kInvalidArgument) for an id outside [0, vocab_size()).
  std::string decode(const std::vector<int32_t>& ids, bool skip_special_tokens = false) const;

  // One past the largest id (base vocabulary and added tokens).
  int32_t vocab_size() const;
  std::optional<int32_t> token_to_id(std::string_view token) const;
  // Throws Error(kInvalidArgument) for an id outside [0, vocab_size()).
  std::string id_to_token(int32_t id) const;
  bool is_special(int32_t id) const;

 private:
  struct Impl;
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace aios::tokenizer
