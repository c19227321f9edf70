// Internal: Tokenizer::Impl, what a tokenizer is made of, shared by the reading of tokenizer.json
// (tokenizer_json.cpp) and by BPE and the public methods (tokenizer.cpp).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "added_tokens.h"
#include "aios/fail.h"
#include "aios/tokenizer_api/tokenizer.h"
#include "piece_cache.h"
#include "regex.h"
#include "steps.h"

namespace aios::tokenizer {

// The vocabulary, looked up by string_view without making a string.
struct ViewHash {
  using is_transparent = void;
  std::size_t operator()(std::string_view s) const { return std::hash<std::string_view>()(s); }
};

using Vocab = std::unordered_map<std::string, int32_t, ViewHash, std::equal_to<>>;

struct Tokenizer::Impl {
  // Model: BPE. Its tables are shared with the copies with_special_tokens makes (an extension's
  // tokenizer), which change neither: an extension costs its own tokens, not a vocabulary.
  struct Tables {
    Vocab vocab;
    std::unordered_map<uint64_t, std::pair<int32_t, int32_t>> merges;  // (left id, right id) -> (rank, merged id)
  };
  std::shared_ptr<const Tables> tables = std::make_shared<const Tables>();
  // Byte-level (a ByteLevel pre-tokenizer): the model's symbols are bytes, each spelled by a
  // code point of GPT-2's byte alphabet, so piece bytes map to ids directly. Otherwise the symbols
  // are the characters of the piece.
  bool byte_level = false;
  int32_t byte_id[256];           // byte-level: the token of each byte, -1 for none
  int32_t fallback_id[256];       // byte_fallback: the <0xAB> token of each byte, -1 for none
  bool byte_fallback = false;
  int32_t unk_id = -1;
  bool fuse_unk = false;
  bool ignore_merges = false;

  // Tokens and ids.
  std::vector<std::string> id_to_token;  // what decode reads (normalized added tokens: normalized)
  std::vector<bool> present;             // whether any token has the id
  std::vector<bool> special;             // added with special: true
  std::vector<bool> skipped;             // dropped by skip_special_tokens
  std::unordered_map<std::string, int32_t> added_ids;  // content -> id
  std::unordered_set<std::string> special_contents;
  AddedMatcher added_raw;         // matched in the text as given
  AddedMatcher added_normalized;  // matched in normalized text

  std::vector<NormalizeStep> normalizers;
  std::vector<Step> steps;
  std::vector<int32_t> prefix_ids, suffix_ids;  // template tokens around a single sequence
  bool has_decoder = false;
  std::vector<DecodeStep> decoders;
  std::string chat_template;  // Jinja text, from a GGUF file
  std::shared_ptr<const std::string> definition;  // the tokenizer.json text (shared by with_special_tokens copies)

  PieceCache cache;

  static uint64_t key(int32_t a, int32_t b) { return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b); }

  int32_t size() const { return static_cast<int32_t>(id_to_token.size()); }

  // Makes room for `id` and records its token.
  void set_token(int32_t id, const std::string& token) {
    const auto i = static_cast<std::size_t>(id);
    if (i >= id_to_token.size()) {
      id_to_token.resize(i + 1);
      present.resize(i + 1, false);
      special.resize(i + 1, false);
      skipped.resize(i + 1, false);
    }
    id_to_token[i] = token;
    present[i] = true;
  }

  // Loading (tokenizer_json.cpp, with_special_tokens).
  void add_token(AddedToken a);
  void mark_skipped();

  // Encoding. Defined in tokenizer.cpp, the one file that calls them, and inline so that they can
  // be inlined into one another there (GCC does not inline an exported non-inline function of
  // -fPIC code: it could be interposed).
  inline std::string normalize(std::string_view text, bool& at_origin) const;
  // Tokens of the text between two raw added tokens: normalized, then split at normalized added
  // tokens, then pre-tokenized and merged.
  inline void encode_segment(std::string_view text, bool at_origin, std::vector<int32_t>& out) const;
  inline void encode_text(Piece text, std::vector<int32_t>& out) const;
  // Pre-tokenization step `i` on `p`, the later steps on each resulting piece, then BPE: depth
  // first, so no list of pieces is built.
  inline void pre_tokenize(std::size_t i, Piece p, std::vector<int32_t>& out) const;
  // BPE of one pre-tokenized piece, appended to `out`.
  inline void bpe(std::string_view piece, std::vector<int32_t>& out) const;
  inline std::vector<int32_t> model(std::string_view piece) const;
  // The initial symbols of a piece, as the reference's BPE model finds them: each character (or
  // byte) that is a token; else its <0xAB> tokens (byte_fallback, all or none); else the unknown
  // token (runs of them fused with fuse_unk); else nothing.
  inline std::vector<int32_t> symbols(std::string_view piece) const;
  // Merges the lowest-ranked adjacent pair first (leftmost among equals) until none applies, in
  // O(n log n): a doubly linked list of symbols and a heap of candidate pairs, stale entries skipped.
  inline std::vector<int32_t> merge(std::vector<int32_t> initial) const;

  void check_id(int32_t id, const char* field) const {
    if (id < 0 || id >= size()) fail(ErrorCode::kInvalidArgument, field, "expected an id in [0, {}), got {}", size(), id);
    if (!present[static_cast<std::size_t>(id)]) fail(ErrorCode::kInvalidArgument, field, "no token has id {}", id);
  }
};

}  // namespace aios::tokenizer
