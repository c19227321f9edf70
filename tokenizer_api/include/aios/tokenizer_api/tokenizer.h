// aios/tokenizer_api/tokenizer.h — BPE compatible with Hugging Face tokenizer.json, to the id.
//
// Supported, with the `tokenizers` library's semantics:
// - model BPE: byte-level (GPT-2, Llama 3, Qwen2, SmolLM2) or over characters (Llama 2, Mistral,
//   TinyLlama: SentencePiece converted); byte_fallback (a character with no token becomes its
//   <0xAB> tokens, one per UTF-8 byte); unk_token with fuse_unk; ignore_merges (a piece that is a
//   token is that token). continuing_subword_prefix, end_of_word_suffix and dropout are refused
//   unless null (or empty, or 0).
// - normalizers: Sequence, Prepend, Replace (String or Regex), NFC, NFD, NFKC, NFKD (ICU),
//   Lowercase, Strip.
// - pre-tokenizers: ByteLevel (with the GPT-2 split pattern; it makes the model byte-level), Split
//   (regex or string; Isolated, Removed, MergedWithPrevious, MergedWithNext, Contiguous; invert),
//   Digits, Metaspace (prepend_scheme first/always/never or the older add_prefix_space; split),
//   Sequence.
// - post-processors: TemplateProcessing (single sequence), ByteLevel, Sequence.
// - decoders: ByteLevel, Metaspace, Replace, ByteFallback, Fuse, Strip, Sequence; none joins the
//   tokens with spaces, as the reference does.
// - added tokens matched before pre-tokenization (leftmost, longest first), with lstrip, rstrip
//   and single_word; normalized: false ones in the text as given, normalized: true ones in the
//   normalized text by their normalized form (which is also what decode and id_to_token give).
// Split patterns run on PCRE2 with Unicode properties. Anything else in the file is an
// Error(kInvalidArgument) naming the field.
//
// Text is UTF-8. Bytes that are not valid UTF-8 are kept and never make encode fail. Normalizers
// pass them through unchanged and split patterns treat them as unmatched text. Byte-level, each
// becomes the token of that byte (a byte the vocabulary has no token for is dropped, as the
// reference does). Over characters, each such byte is a symbol of its own that no token spells:
// with byte_fallback it becomes its <0xAB> token, so nothing is lost; otherwise the unknown token
// (or nothing, without one). decode turns bytes that do not form valid UTF-8 into U+FFFD, so
// decode(encode(x)) == x for valid UTF-8 x wherever the reference round-trips.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "aios/export.h"

AIOS_EXPORT_BEGIN

namespace aios::io {
class GgufFile;
}

namespace aios::tokenizer {

class Tokenizer {
 public:
  // Reads tokenizer.json, or a .gguf file's tokenizer (by the extension, see from_gguf). Throws
  // Error: kNotFound, kDataLoss (not JSON), kInvalidArgument (unsupported component, naming it).
  static Tokenizer load(const std::string& path);
  static Tokenizer from_json(const std::string& json_text, const std::string& source = "tokenizer.json");
  // The tokenizer stored in a GGUF file's metadata (tokenizer.ggml.*), built as transformers builds
  // it from the same file: model gpt2 (byte-level BPE, with the split pattern named by
  // tokenizer.ggml.pre) or llama (SentencePiece BPE over characters with byte fallback; merges
  // recovered from the scores when the file lists none); control tokens and the
  // bos/eos/unknown/padding tokens as special added tokens, user-defined tokens as added tokens,
  // BOS/EOS added as add_bos_token/add_eos_token say (llama: BOS unless the file says otherwise).
  // Throws Error: kNotFound, kDataLoss (corrupt file or tokenizer keys, naming the key),
  // kInvalidArgument (another tokenizer model).
  static Tokenizer from_gguf(const std::string& path);
  // The same from a file already read (GgufFile::open or GgufFile::parse).
  static Tokenizer from_gguf(const io::GgufFile& file);

  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

  // Ids of `text`; add_special_tokens applies the post-processor's template (e.g. a BOS token).
  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens = true) const;
  std::vector<std::vector<int32_t>> encode_batch(const std::vector<std::string>& texts,
                                                 bool add_special_tokens = true) const;
  // Text of `ids`, through the file's decoder; bytes that do not form valid UTF-8 become U+FFFD.
  // Throws Error(kInvalidArgument) for an id outside [0, vocab_size()) or one without a token.
  std::string decode(const std::vector<int32_t>& ids, bool skip_special_tokens = false) const;

  // One past the largest id (base vocabulary and added tokens).
  int32_t vocab_size() const;
  std::optional<int32_t> token_to_id(std::string_view token) const;
  // Throws Error(kInvalidArgument) for an id outside [0, vocab_size()) or one without a token.
  std::string id_to_token(int32_t id) const;
  bool is_special(int32_t id) const;
  // The chat template stored with the tokenizer (GGUF: tokenizer.chat_template), as Jinja text;
  // empty when there is none. Applying it is left to the caller.
  const std::string& chat_template() const;
  // The tokenizer.json text this tokenizer was built from (for a GGUF file, the one made from its
  // metadata): from_json(definition()) is the same tokenizer, without the tokens added by
  // with_special_tokens and without the chat template. A hosted backbone sends it to its clients.
  const std::string& definition() const;

  // A new, independent tokenizer: this one plus `tokens` as special added tokens (matched in text
  // like the others, before normalization; skipped by skip_special_tokens) with ids first_id,
  // first_id + 1, ... Ids between vocab_size() and first_id stay without a token. Throws
  // Error: kInvalidArgument (no tokens, an empty or repeated one, first_id < vocab_size()),
  // kAlreadyExists (a token this tokenizer has already, naming it).
  Tokenizer with_special_tokens(const std::vector<std::string>& tokens, int32_t first_id) const;

 private:
  struct Impl;
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace aios::tokenizer
AIOS_EXPORT_END
