#define PCRE2_CODE_UNIT_WIDTH 8
#include "aios/tokenizer_api/tokenizer.h"

#include <pcre2.h>
#include <unicode/normalizer2.h>
#include <unicode/bytestream.h>
#include <unicode/uchar.h>
#include <unicode/ustring.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <functional>
#include <mutex>
#include <queue>
#include <tuple>
#include <unordered_map>
#include <unordered_set>

#include <nlohmann/json.hpp>

#include "aios/fail.h"
#include "aios/json.h"
#include "aios/io/gguf.h"
#include "aios/io/safetensors.h"
#include "gguf_tokenizer.h"
#include "utf8.h"

namespace aios::tokenizer {

namespace {

using nlohmann::json;

// The GPT-2 split pattern that ByteLevel(use_regex=true) applies, the contractions' apostrophe
// written once: the same matches (leftmost alternative first) in fewer steps.
constexpr const char* kByteLevelPattern =
    R"('(?:s|t|re|ve|m|ll|d)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// The reference caches the pieces of fewer bytes than this; longer ones are rare and large.
constexpr std::size_t kCachedPieceBytes = 256;

// Unicode White_Space, as Rust's char::is_whitespace and the reference's `\s` test it.
bool is_white_space(uint32_t cp) { return u_isUWhiteSpace(static_cast<UChar32>(cp)) != 0; }

// The regex `\w` of the reference (Rust regex): alphabetic, marks, decimal digits, connector
// punctuation, join controls.
bool is_word_char(uint32_t cp) {
  const auto c = static_cast<UChar32>(cp);
  const int32_t mask = U_GET_GC_MASK(c);
  return u_hasBinaryProperty(c, UCHAR_ALPHABETIC) || (mask & (U_GC_M_MASK | U_GC_ND_MASK | U_GC_PC_MASK)) != 0 ||
         u_hasBinaryProperty(c, UCHAR_JOIN_CONTROL);
}

// The code point that ends s[0, end) (invalid bytes read as U+FFFD), and where it starts.
uint32_t code_point_before(std::string_view s, std::size_t end, std::size_t* start) {
  std::size_t i = end - 1;
  for (std::size_t k = 0; k < 3 && i > 0 && (static_cast<unsigned char>(s[i]) >> 6) == 2; ++k) --i;
  uint32_t cp = 0xFFFD;
  if (utf8_length(s, i, &cp) != end - i) {
    i = end - 1;
    cp = 0xFFFD;
  }
  *start = i;
  return cp;
}

// End of the run of white space that starts at s[i].
std::size_t white_space_end(std::string_view s, std::size_t i) {
  uint32_t cp = 0;
  for (std::size_t n = 0; i < s.size() && (n = utf8_length(s, i, &cp)) != 0 && is_white_space(cp);) i += n;
  return i;
}

// Start of the run of white space that ends at s[end], not before `floor`.
std::size_t white_space_start(std::string_view s, std::size_t end, std::size_t floor) {
  std::size_t at = 0;
  while (end > floor && is_white_space(code_point_before(s, end, &at))) end = at;
  return std::max(end, floor);
}

// Unicode normalization (NFC, NFD, NFKC, NFKD) of the valid UTF-8 runs of `s`; other bytes pass
// through unchanged.
std::string unicode_normalize(const icu::Normalizer2& form, std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for_each_run(s, [&](bool valid, std::string_view run) {
    UErrorCode status = U_ZERO_ERROR;
    const icu::StringPiece piece(run.data(), static_cast<int32_t>(run.size()));
    if (!valid || form.isNormalizedUTF8(piece, status)) {
      out.append(run);
      return;
    }
    status = U_ZERO_ERROR;
    icu::StringByteSink<std::string> sink(&out);
    form.normalizeUTF8(0, piece, sink, nullptr, status);
    if (U_FAILURE(status)) fail(ErrorCode::kInternal, "normalizer", "ICU normalization failed: {}", u_errorName(status));
  });
  return out;
}

// Lowercases each character on its own (full mappings, no context), as the reference does.
std::string lowercase(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (std::size_t i = 0; i < s.size();) {
    uint32_t cp = 0;
    const std::size_t n = utf8_length(s, i, &cp);
    if (n <= 1) {  // ASCII or a byte that is not UTF-8
      const char c = s[i];
      out.push_back(c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c);
      ++i;
      continue;
    }
    UChar src[2], dst[8];
    int32_t src_length = 0;
    U16_APPEND_UNSAFE(src, src_length, static_cast<UChar32>(cp));
    UErrorCode status = U_ZERO_ERROR;
    const int32_t length = u_strToLower(dst, 8, src, src_length, "", &status);
    if (U_FAILURE(status)) {
      out.append(s, i, n);
    } else {
      for (int32_t k = 0; k < length;) {
        UChar32 c = 0;
        U16_NEXT_UNSAFE(dst, k, c);
        append_utf8(out, static_cast<uint32_t>(c));
      }
    }
    i += n;
  }
  return out;
}

// GPT-2's reversible map from bytes to printable code points.
struct ByteAlphabet {
  std::string of_byte[256];                      // UTF-8 of the code point standing for each byte
  std::unordered_map<uint32_t, uint8_t> to_byte;  // code point -> byte
  ByteAlphabet() {
    int extra = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
      const uint32_t cp = printable ? static_cast<uint32_t>(b) : static_cast<uint32_t>(256 + extra++);
      append_utf8(of_byte[b], cp);
      to_byte[cp] = static_cast<uint8_t>(b);
    }
  }
};
const ByteAlphabet& byte_alphabet() {
  static const ByteAlphabet alphabet;
  return alphabet;
}

// A compiled PCRE2 pattern (UTF, Unicode properties, invalid UTF-8 tolerated, JIT when available).
// Multiline: the reference's patterns are Oniguruma's Ruby syntax, where ^ and $ anchor at lines.
class Regex {
 public:
  Regex(const std::string& pattern, const std::string& field) {
    int error = 0;
    PCRE2_SIZE offset = 0;
    code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                          PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF | PCRE2_MULTILINE, &error, &offset, nullptr);
    if (code_ == nullptr) {
      PCRE2_UCHAR message[256];
      pcre2_get_error_message(error, message, sizeof(message));
      fail(ErrorCode::kInvalidArgument, field, "pattern does not compile at offset {}: {}", offset,
           reinterpret_cast<const char*>(message));
    }
    jit_ = pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE) == 0;  // else the interpreter runs it
  }
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
std::string replace_all(const Regex& regex, std::string_view text, std::string_view content) {
  std::string out;
  std::size_t cursor = 0;
  regex.for_each_match(text, [&](std::size_t b, std::size_t e) {
    out.append(text.substr(cursor, b - cursor));
    out.append(content);
    cursor = e;
  });
  out.append(text.substr(cursor));
  return out;
}

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

std::string regex_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (std::string_view("\\^$.|?*+()[]{}").find(c) != std::string_view::npos) out.push_back('\\');
    out.push_back(c);
  }
  return out;
}

// One normalizer of a (flattened) Sequence.
struct NormalizeStep {
  enum class Kind { kPrepend, kReplace, kUnicode, kLowercase, kStrip };
  Kind kind = Kind::kPrepend;
  std::string content;             // Prepend: the prefix; Replace: the replacement
  std::shared_ptr<Regex> regex;    // Replace
  const icu::Normalizer2* form = nullptr;  // Unicode (owned by ICU)
  bool left = false, right = false;        // Strip
};

// One decoder of a (flattened) Sequence, applied to the list of token strings.
struct DecodeStep {
  enum class Kind { kReplace, kByteFallback, kFuse, kStrip, kMetaspace, kByteLevel };
  Kind kind = Kind::kFuse;
  std::shared_ptr<Regex> regex;  // Replace
  std::string content;           // Replace: the replacement; Strip, Metaspace: the character
  std::size_t start = 0, stop = 0;  // Strip
  bool prepend_never = false;       // Metaspace
};

// `<0xAB>` -> 0xAB, as the reference's ByteFallback reads it (two hex digits, either case).
std::optional<uint8_t> byte_token_value(std::string_view token) {
  if (token.size() != 6 || token.substr(0, 3) != "<0x" || token[5] != '>') return std::nullopt;
  int value = 0;
  for (char c : token.substr(3, 2)) {
    const int digit = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
    if (digit < 0) return std::nullopt;
    value = value * 16 + digit;
  }
  return static_cast<uint8_t>(value);
}

void apply_decoder(const DecodeStep& step, std::vector<std::string>& tokens) {
  using K = DecodeStep::Kind;
  switch (step.kind) {
    case K::kReplace:
      for (std::string& t : tokens) t = replace_all(*step.regex, t, step.content);
      break;
    case K::kByteFallback: {
      // Runs of <0x..> tokens become their bytes as one string; a run that is not valid UTF-8
      // becomes one U+FFFD per byte.
      std::vector<std::string> out;
      std::string bytes;
      std::size_t count = 0;
      auto flush = [&] {
        if (count == 0) return;
        if (lossy_utf8(bytes) == bytes) {
          out.push_back(bytes);
        } else {
          for (std::size_t k = 0; k < count; ++k) out.emplace_back("\xEF\xBF\xBD");
        }
        bytes.clear();
        count = 0;
      };
      for (std::string& t : tokens) {
        if (auto b = byte_token_value(t)) {
          bytes.push_back(static_cast<char>(*b));
          ++count;
        } else {
          flush();
          out.push_back(std::move(t));
        }
      }
      flush();
      tokens = std::move(out);
      break;
    }
    case K::kFuse: {
      std::string all;
      for (const std::string& t : tokens) all += t;
      tokens.assign(1, std::move(all));
      break;
    }
    case K::kStrip:
      // Up to `start` leading and `stop` trailing copies of the character go.
      for (std::string& t : tokens) {
        std::size_t begin = 0, end = t.size();
        for (std::size_t k = 0; k < step.start && t.compare(begin, step.content.size(), step.content) == 0; ++k) {
          begin += step.content.size();
        }
        for (std::size_t k = 0; k < step.stop && end >= begin + step.content.size() &&
                                t.compare(end - step.content.size(), step.content.size(), step.content) == 0;
             ++k) {
          end -= step.content.size();
        }
        t = t.substr(begin, end - begin);
      }
      break;
    case K::kMetaspace:
      // The replacement character reads as a space, except in the first token, where the
      // pre-tokenizer may have added it (unless it never does).
      for (std::size_t i = 0; i < tokens.size(); ++i) {
        std::string out;
        std::size_t cursor = 0;
        for_each_literal(tokens[i], step.content, [&](std::size_t b, std::size_t e) {
          out.append(tokens[i], cursor, b - cursor);
          if (i != 0 || step.prepend_never) out.push_back(' ');
          cursor = e;
        });
        out.append(tokens[i], cursor);
        tokens[i] = std::move(out);
      }
      break;
    case K::kByteLevel: {
      // Each code point of the byte alphabet stands for one byte; a token with any other code
      // point (an added token such as "<|im_end|>" only if it has one) is taken as its text.
      const ByteAlphabet& alphabet = byte_alphabet();
      std::string bytes;
      for (const std::string& token : tokens) {
        std::string mapped;
        bool all_mapped = true;
        for (std::size_t i = 0, n = 0; i < token.size() && all_mapped; i += n) {
          uint32_t cp = 0;
          n = utf8_length(token, i, &cp);
          auto it = n == 0 ? alphabet.to_byte.end() : alphabet.to_byte.find(cp);
          all_mapped = it != alphabet.to_byte.end();
          if (all_mapped) mapped.push_back(static_cast<char>(it->second));
        }
        bytes += all_mapped ? mapped : token;
      }
      tokens.assign(1, lossy_utf8(bytes));
      break;
    }
  }
}

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
  void add(const AddedToken& token) {
    auto longer = [](const AddedToken& x, const AddedToken& y) { return x.pattern.size() > y.pattern.size(); };
    tokens_.insert(std::upper_bound(tokens_.begin(), tokens_.end(), token, longer), token);
    starts_[static_cast<unsigned char>(token.pattern[0])] = true;
  }
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

// Ids of whole pieces already tokenized: pieces recur (words). Shared by threads, and lookups take
// no lock: an open-addressing table, at most half full, whose entries are published once (release
// and acquire) and neither changed nor removed until the cache goes. Inserts take a lock. A copy
// starts empty. The table is made at the first insert and the entries are owned in a list of their
// own, so a tokenizer that is made and dropped without encoding (an extension's copy, a file only
// checked) costs nothing here.
class PieceCache {
 public:
  static constexpr std::size_t kEntries = std::size_t{1} << 17;  // then pieces are no longer added

  PieceCache() = default;
  PieceCache(const PieceCache&) : PieceCache() {}
  PieceCache& operator=(const PieceCache&) = delete;

  // The ids of `piece`, or null when not cached.
  const std::vector<int32_t>* find(std::string_view piece) const {
    const Slot* slots = slots_.load(std::memory_order_acquire);
    if (slots == nullptr) return nullptr;
    for (std::size_t i = slot(piece);; i = (i + 1) % kSlots) {
      const Entry* e = slots[i].load(std::memory_order_acquire);
      if (e == nullptr) return nullptr;
      if (e->piece == piece) return &e->ids;
    }
  }

  void insert(std::string_view piece, std::vector<int32_t> ids) const {
    std::lock_guard<std::mutex> lock(mutex_);
    if (entries_.size() == kEntries) return;
    if (table_ == nullptr) {
      table_.reset(new Slot[kSlots]());
      slots_.store(table_.get(), std::memory_order_release);
    }
    std::size_t i = slot(piece);
    for (const Entry* e; (e = table_[i].load(std::memory_order_relaxed)) != nullptr; i = (i + 1) % kSlots) {
      if (e->piece == piece) return;  // another thread was first
    }
    entries_.push_back(std::make_unique<const Entry>(Entry{std::string(piece), std::move(ids)}));
    table_[i].store(entries_.back().get(), std::memory_order_release);
  }

 private:
  struct Entry {
    std::string piece;
    std::vector<int32_t> ids;
  };
  using Slot = std::atomic<const Entry*>;
  static constexpr int kSlotBits = 18;
  static constexpr std::size_t kSlots = std::size_t{1} << kSlotBits;  // twice kEntries
  static_assert(kSlots >= 2 * kEntries);

  // FNV-1a, cheap on short pieces, then Fibonacci hashing: the top bits of a multiply mix all.
  static std::size_t slot(std::string_view piece) {
    uint64_t h = 14695981039346656037ull;
    for (unsigned char c : piece) h = (h ^ c) * 1099511628211ull;
    return static_cast<std::size_t>((h * 0x9E3779B97F4A7C15ull) >> (64 - kSlotBits));
  }

  mutable std::mutex mutex_;                                   // inserts
  mutable std::unique_ptr<Slot[]> table_;                      // made at the first insert
  mutable std::atomic<const Slot*> slots_{nullptr};            // table_, for lookups
  mutable std::vector<std::unique_ptr<const Entry>> entries_;  // what the slots point to, owned
};

struct ViewHash {
  using is_transparent = void;
  std::size_t operator()(std::string_view s) const { return std::hash<std::string_view>()(s); }
};

using Vocab = std::unordered_map<std::string, int32_t, ViewHash, std::equal_to<>>;

}  // namespace

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

  void add_token(AddedToken a) {
    if (a.normalized && !normalizers.empty()) {
      bool at_origin = true;
      a.pattern = normalize(a.content, at_origin);
    } else {
      a.pattern = a.content;
    }
    // The reference decodes a normalized added token as its normalized form, and skips it as special
    // only when that form is the text of a special token.
    set_token(a.id, a.pattern);
    special[static_cast<std::size_t>(a.id)] = a.special;
    added_ids[a.content] = a.id;
    if (a.special) special_contents.insert(a.content);
    if (!a.pattern.empty()) (a.normalized ? added_normalized : added_raw).add(a);
  }

  void mark_skipped() {
    for (std::size_t i = 0; i < id_to_token.size(); ++i) skipped[i] = present[i] && special_contents.count(id_to_token[i]) > 0;
  }

  std::string normalize(std::string_view text, bool& at_origin) const {
    std::string s(text);
    using K = NormalizeStep::Kind;
    for (const NormalizeStep& n : normalizers) {
      switch (n.kind) {
        case K::kPrepend:
          if (!s.empty()) s.insert(0, n.content);
          break;
        case K::kReplace: {
          auto matches = n.regex->find_all(s);
          if (n.content.empty() && !matches.empty() && matches[0].first == 0) at_origin = false;  // its start is gone
          if (!matches.empty()) s = replace_all(*n.regex, s, n.content);
          break;
        }
        case K::kUnicode:
          s = unicode_normalize(*n.form, s);
          break;
        case K::kLowercase:
          s = lowercase(s);
          break;
        case K::kStrip: {
          const std::size_t begin = n.left ? white_space_end(s, 0) : 0;
          const std::size_t end = n.right ? white_space_start(s, s.size(), begin) : s.size();
          if (begin > 0) at_origin = false;
          s = s.substr(begin, end - begin);
          break;
        }
      }
    }
    return s;
  }

  // Tokens of the text between two raw added tokens: normalized, then split at normalized added
  // tokens, then pre-tokenized and merged.
  void encode_segment(std::string_view text, bool at_origin, std::vector<int32_t>& out) const {
    std::string normalized;
    if (!normalizers.empty()) {
      normalized = normalize(text, at_origin);
      text = normalized;
    }
    if (added_normalized.empty()) {
      encode_text({text, at_origin}, out);
      return;
    }
    added_normalized.scan(
        text, [&](std::size_t b, std::size_t e) { encode_text({text.substr(b, e - b), at_origin && b == 0}, out); },
        [&](int32_t id) { out.push_back(id); });
  }

  void encode_text(Piece text, std::vector<int32_t>& out) const {
    if (!text.text.empty()) pre_tokenize(0, text, out);
  }

  // Pre-tokenization step `i` on `p`, the later steps on each resulting piece, then BPE: depth
  // first, so no list of pieces is built.
  void pre_tokenize(std::size_t i, Piece p, std::vector<int32_t>& out) const {
    if (i == steps.size()) {
      bpe(p.text, out);
      return;
    }
    const Step& step = steps[i];
    auto next = [&](Piece q) { pre_tokenize(i + 1, q, out); };
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

  // BPE of one pre-tokenized piece, appended to `out`.
  void bpe(std::string_view piece, std::vector<int32_t>& out) const {
    if (byte_level && piece.size() == 1 && byte_id[static_cast<unsigned char>(piece[0])] >= 0) {
      out.push_back(byte_id[static_cast<unsigned char>(piece[0])]);  // one symbol: nothing to merge
      return;
    }
    const bool cached = piece.size() < kCachedPieceBytes;
    if (const std::vector<int32_t>* ids = cached ? cache.find(piece) : nullptr) {
      out.insert(out.end(), ids->begin(), ids->end());
      return;
    }
    std::vector<int32_t> ids = model(piece);
    out.insert(out.end(), ids.begin(), ids.end());
    if (cached) cache.insert(piece, std::move(ids));
  }

  std::vector<int32_t> model(std::string_view piece) const {
    if (ignore_merges) {  // a piece that is a token is that token
      auto it = tables->vocab.end();
      if (byte_level) {
        std::string spelled;
        for (unsigned char b : piece) spelled += byte_alphabet().of_byte[b];
        it = tables->vocab.find(spelled);
      } else {
        it = tables->vocab.find(piece);
      }
      if (it != tables->vocab.end()) return {it->second};
    }
    return merge(symbols(piece));
  }

  // The initial symbols of a piece, as the reference's BPE model finds them: each character (or
  // byte) that is a token; else its <0xAB> tokens (byte_fallback, all or none); else the unknown
  // token (runs of them fused with fuse_unk); else nothing.
  std::vector<int32_t> symbols(std::string_view piece) const {
    std::vector<int32_t> ids;
    ids.reserve(piece.size());
    bool unk_pending = false;
    auto known = [&](int32_t id) {
      if (unk_pending) ids.push_back(unk_id);
      unk_pending = false;
      ids.push_back(id);
    };
    auto unknown = [&](std::string_view unit) {
      if (byte_fallback && std::all_of(unit.begin(), unit.end(), [&](char b) { return fallback_id[static_cast<unsigned char>(b)] >= 0; })) {
        // as in the reference, a pending unknown token stays pending across these
        for (char b : unit) ids.push_back(fallback_id[static_cast<unsigned char>(b)]);
        return;
      }
      if (unk_id < 0) return;
      if (unk_pending && !fuse_unk) ids.push_back(unk_id);
      unk_pending = true;
    };
    if (byte_level) {
      for (unsigned char b : piece) {
        if (byte_id[b] >= 0) known(byte_id[b]);
        else unknown(byte_alphabet().of_byte[b]);
      }
    } else {
      // A byte that is not UTF-8 is a unit of its own: never a token, so its <0xAB> token under
      // byte_fallback, else the unknown token.
      for (std::size_t i = 0, n = 0; i < piece.size(); i += n) {
        const std::size_t valid = utf8_length(piece, i);
        n = valid == 0 ? 1 : valid;
        const std::string_view unit = piece.substr(i, n);
        auto it = valid == 0 ? tables->vocab.end() : tables->vocab.find(unit);
        if (it != tables->vocab.end()) known(it->second);
        else unknown(unit);
      }
    }
    if (unk_pending) ids.push_back(unk_id);
    return ids;
  }

  // Merges the lowest-ranked adjacent pair first (leftmost among equals) until none applies, in
  // O(n log n): a doubly linked list of symbols and a heap of candidate pairs, stale entries skipped.
  std::vector<int32_t> merge(std::vector<int32_t> initial) const {
    if (initial.size() < 2) return initial;
    struct Symbol {
      int32_t id;
      int32_t prev, next;  // -1 at the ends
    };
    std::vector<Symbol> symbols;
    symbols.reserve(initial.size());
    for (int32_t id : initial) {
      const auto n = static_cast<int32_t>(symbols.size());
      symbols.push_back({id, n - 1, -1});
      if (n > 0) symbols[static_cast<std::size_t>(n - 1)].next = n;
    }
    struct Candidate {
      int32_t rank, pos, left, right;  // pos: index of the left symbol; left/right: ids when pushed
      bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
    };
    std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> heap;
    auto push = [&](int32_t pos) {
      const int32_t next = symbols[static_cast<std::size_t>(pos)].next;
      if (next < 0) return;
      const int32_t l = symbols[static_cast<std::size_t>(pos)].id, r = symbols[static_cast<std::size_t>(next)].id;
      auto it = tables->merges.find(key(l, r));
      if (it != tables->merges.end()) heap.push({it->second.first, pos, l, r});
    };
    for (int32_t i = 0; i < static_cast<int32_t>(symbols.size()); ++i) push(i);
    while (!heap.empty()) {
      const Candidate c = heap.top();
      heap.pop();
      Symbol& left = symbols[static_cast<std::size_t>(c.pos)];
      if (left.id != c.left || left.next < 0) continue;  // merged away or changed since pushed
      Symbol& right = symbols[static_cast<std::size_t>(left.next)];
      if (right.id != c.right) continue;
      left.id = tables->merges.at(key(c.left, c.right)).second;
      left.next = right.next;
      if (right.next >= 0) symbols[static_cast<std::size_t>(right.next)].prev = c.pos;
      right.id = -1;  // gone
      if (left.prev >= 0) push(left.prev);
      push(c.pos);
    }
    std::vector<int32_t> ids;
    for (int32_t i = 0; i >= 0; i = symbols[static_cast<std::size_t>(i)].next) {
      ids.push_back(symbols[static_cast<std::size_t>(i)].id);
    }
    return ids;
  }

  void check_id(int32_t id, const char* field) const {
    if (id < 0 || id >= size()) fail(ErrorCode::kInvalidArgument, field, "expected an id in [0, {}), got {}", size(), id);
    if (!present[static_cast<std::size_t>(id)]) fail(ErrorCode::kInvalidArgument, field, "no token has id {}", id);
  }
};

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

Tokenizer Tokenizer::load(const std::string& path) {
  if (std::filesystem::path(path).extension() == ".gguf") return from_gguf(path);
  return from_json(io::read_file(path), path);
}

Tokenizer Tokenizer::from_gguf(const std::string& path) { return from_gguf(io::GgufFile::open(path)); }

Tokenizer Tokenizer::from_gguf(const io::GgufFile& file) {
  Tokenizer t = from_json(gguf_tokenizer_json(file), file.path());
  t.impl_->chat_template = file.string("tokenizer.chat_template").value_or("");
  return t;
}

const std::string& Tokenizer::chat_template() const { return impl_->chat_template; }
const std::string& Tokenizer::definition() const { return *impl_->definition; }

namespace {

// The pattern of a Replace or Split: {"String": s} (literal) or {"Regex": r}.
std::shared_ptr<Regex> read_pattern(const json& pattern, const std::string& field) {
  if (pattern.is_object() && pattern.contains("Regex") && pattern["Regex"].is_string()) {
    return std::make_shared<Regex>(pattern["Regex"].get<std::string>(), field);
  }
  if (pattern.is_object() && pattern.contains("String") && pattern["String"].is_string()) {
    return std::make_shared<Regex>(regex_escape(pattern["String"].get<std::string>()), field);
  }
  fail(ErrorCode::kInvalidArgument, field, "expected {{\"String\": ...}} or {{\"Regex\": ...}}, got {}", json_excerpt(pattern));
}

// A field holding exactly one character (Metaspace replacement, Strip content).
std::string read_char(const json& p, const char* name, const std::string& field) {
  const json& v = p.value(name, json());
  const std::string s = v.is_string() ? v.get<std::string>() : std::string();
  if (s.empty() || utf8_length(s, 0) != s.size()) fail(ErrorCode::kInvalidArgument, field + "." + name, "expected one character, got {}", json_excerpt(v));
  return s;
}

void read_normalizer(const json& p, const std::string& field, std::vector<NormalizeStep>& out) {
  const std::string type = p.value("type", "");
  NormalizeStep n;
  using K = NormalizeStep::Kind;
  UErrorCode status = U_ZERO_ERROR;
  if (type == "Sequence") {
    const json& list = p.value("normalizers", json::array());
    for (std::size_t i = 0; i < list.size(); ++i) read_normalizer(list[i], fmt::format("{}.normalizers[{}]", field, i), out);
    return;
  } else if (type == "Prepend") {
    n.kind = K::kPrepend;
    n.content = p.value("prepend", "");
  } else if (type == "Replace") {
    n.kind = K::kReplace;
    n.regex = read_pattern(p.value("pattern", json()), field + ".pattern");
    n.content = p.value("content", "");
  } else if (type == "NFC" || type == "NFD" || type == "NFKC" || type == "NFKD") {
    n.kind = K::kUnicode;
    n.form = type == "NFC"    ? icu::Normalizer2::getNFCInstance(status)
             : type == "NFD"  ? icu::Normalizer2::getNFDInstance(status)
             : type == "NFKC" ? icu::Normalizer2::getNFKCInstance(status)
                              : icu::Normalizer2::getNFKDInstance(status);
    if (U_FAILURE(status)) fail(ErrorCode::kInternal, field, "ICU has no {} data: {}", type, u_errorName(status));
  } else if (type == "Lowercase") {
    n.kind = K::kLowercase;
  } else if (type == "Strip") {
    n.kind = K::kStrip;
    n.left = p.value("strip_left", true);
    n.right = p.value("strip_right", true);
  } else {
    fail(ErrorCode::kInvalidArgument, field + ".type",
         "expected Sequence, Prepend, Replace, NFC, NFD, NFKC, NFKD, Lowercase or Strip, got \"{}\"", type);
  }
  out.push_back(std::move(n));
}

// Pre-tokenizers; returns whether a ByteLevel step is among them.
bool read_pre_tokenizer(const json& p, const std::string& field, std::vector<Step>& out) {
  const std::string type = p.value("type", "");
  Step step;
  bool byte_level = false;
  if (type == "Sequence") {
    const json& list = p.value("pretokenizers", json::array());
    for (std::size_t i = 0; i < list.size(); ++i) {
      byte_level |= read_pre_tokenizer(list[i], fmt::format("{}.pretokenizers[{}]", field, i), out);
    }
    return byte_level;
  }
  if (type == "ByteLevel") {
    byte_level = true;
    step.prefix_space = p.value("add_prefix_space", false);
    if (p.value("use_regex", true)) step.regex = std::make_shared<Regex>(kByteLevelPattern, field);
  } else if (type == "Split") {
    step.regex = read_pattern(p.value("pattern", json()), field + ".pattern");
    const std::string behavior = p.value("behavior", "Isolated");
    if (behavior == "Isolated") step.behavior = Behavior::kIsolated;
    else if (behavior == "Removed") step.behavior = Behavior::kRemoved;
    else if (behavior == "MergedWithPrevious") step.behavior = Behavior::kMergedWithPrevious;
    else if (behavior == "MergedWithNext") step.behavior = Behavior::kMergedWithNext;
    else if (behavior == "Contiguous") step.behavior = Behavior::kContiguous;
    else fail(ErrorCode::kInvalidArgument, field + ".behavior", "unsupported \"{}\"", behavior);
    step.invert = p.value("invert", false);
  } else if (type == "Digits") {
    step.regex = std::make_shared<Regex>(p.value("individual_digits", false) ? "\\p{N}" : "\\p{N}+", field);
  } else if (type == "Metaspace") {
    step.kind = Step::Kind::kMetaspace;
    step.replacement = read_char(p, "replacement", field);
    const std::string scheme = p.value("prepend_scheme", "always");
    if (scheme == "always") step.prepend = Prepend::kAlways;
    else if (scheme == "first") step.prepend = Prepend::kFirst;
    else if (scheme == "never") step.prepend = Prepend::kNever;
    else fail(ErrorCode::kInvalidArgument, field + ".prepend_scheme", "expected first, always or never, got \"{}\"", scheme);
    // Older files say add_prefix_space; false there means never.
    if (p.contains("add_prefix_space") && p["add_prefix_space"] == false) step.prepend = Prepend::kNever;
    step.split = p.value("split", true);
  } else {
    fail(ErrorCode::kInvalidArgument, field + ".type", "expected Sequence, ByteLevel, Split, Digits or Metaspace, got \"{}\"", type);
  }
  out.push_back(std::move(step));
  return byte_level;
}

void read_decoder(const json& p, const std::string& field, std::vector<DecodeStep>& out) {
  const std::string type = p.value("type", "");
  DecodeStep d;
  using K = DecodeStep::Kind;
  if (type == "Sequence") {
    const json& list = p.value("decoders", json::array());
    for (std::size_t i = 0; i < list.size(); ++i) read_decoder(list[i], fmt::format("{}.decoders[{}]", field, i), out);
    return;
  } else if (type == "Replace") {
    d.kind = K::kReplace;
    d.regex = read_pattern(p.value("pattern", json()), field + ".pattern");
    d.content = p.value("content", "");
  } else if (type == "ByteFallback") {
    d.kind = K::kByteFallback;
  } else if (type == "Fuse") {
    d.kind = K::kFuse;
  } else if (type == "Strip") {
    d.kind = K::kStrip;
    d.content = read_char(p, "content", field);
    // Characters to strip: the reference reads them as usize, so floats and negatives are refused.
    auto count = [&](const char* name) {
      const auto it = p.find(name);
      return it == p.end() ? std::size_t{0}
                           : static_cast<std::size_t>(json_integer(*it, field + "." + name, 0, INT64_MAX));
    };
    d.start = count("start");
    d.stop = count("stop");
  } else if (type == "Metaspace") {
    d.kind = K::kMetaspace;
    d.content = read_char(p, "replacement", field);
    d.prepend_never = p.value("prepend_scheme", "always") == "never" ||
                      (p.contains("add_prefix_space") && p["add_prefix_space"] == false);
  } else if (type == "ByteLevel") {
    d.kind = K::kByteLevel;
  } else {
    fail(ErrorCode::kInvalidArgument, field + ".type",
         "expected Sequence, Replace, ByteFallback, Fuse, Strip, Metaspace or ByteLevel, got \"{}\"", type);
  }
  out.push_back(std::move(d));
}

}  // namespace

Tokenizer Tokenizer::from_json(const std::string& json_text, const std::string& source) {
  const json root = parse_json(json_text, source);
  if (!root.is_object()) fail(ErrorCode::kDataLoss, source, "expected a JSON object");
  return reading_json(source, ErrorCode::kDataLoss, [&] {
  auto impl = std::make_unique<Impl>();
  Impl& s = *impl;
  s.definition = std::make_shared<const std::string>(json_text);
  const json& model = root.value("model", json());
  if (!model.is_object() || model.value("type", "BPE") != "BPE") {
    fail(ErrorCode::kInvalidArgument, "model.type", "expected BPE, got {}", model.is_object() ? json_excerpt(model.value("type", json())) : "nothing");
  }
  // Options this BPE does not implement are refused unless they have their neutral value.
  for (const char* name : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    const json& v = model.value(name, json());
    if (!v.is_null() && !(v.is_string() && v.get<std::string>().empty())) {
      fail(ErrorCode::kInvalidArgument, fmt::format("model.{}", name), "not supported: expected null, got {}", json_excerpt(v));
    }
  }
  const json& dropout = model.value("dropout", json());
  if (!dropout.is_null() && !(dropout.is_number() && dropout.get<double>() == 0.0)) {
    fail(ErrorCode::kInvalidArgument, "model.dropout", "not supported: expected null or 0, got {}", json_excerpt(dropout));
  }
  s.byte_fallback = model.value("byte_fallback", false);
  s.fuse_unk = model.value("fuse_unk", false);
  s.ignore_merges = model.value("ignore_merges", false);

  const json& vocab = model.value("vocab", json());
  if (!vocab.is_object()) fail(ErrorCode::kDataLoss, "model.vocab", "expected an object of token -> id");
  const json& added_tokens = root.value("added_tokens", json::array());
  if (!added_tokens.is_array()) fail(ErrorCode::kDataLoss, "added_tokens", "expected an array");
  // Ids index dense tables (decode's id -> token), so a file that lists a few tokens under ids near
  // 2^30 would have them take gigabytes: the ids a file leaves unused are bounded by the tokens it
  // lists (plus some slack), which keeps memory proportional to the file.
  const int64_t id_bound = std::min<int64_t>(int64_t{1} << 30, 2 * static_cast<int64_t>(vocab.size() + added_tokens.size()) + 65536);
  auto listed_id = [&](const json& id, const std::string& field) {
    return static_cast<int32_t>(json_integer(id, field, 0, id_bound - 1));
  };
  auto tables = std::make_shared<Impl::Tables>();
  for (auto& [token, id] : vocab.items()) {
    const int32_t i = listed_id(id, fmt::format("model.vocab[{}]", json_excerpt(json(token))));
    tables->vocab[token] = i;
    s.set_token(i, token);
  }
  const json& unk = model.value("unk_token", json());
  if (unk.is_string()) {
    auto it = tables->vocab.find(unk.get<std::string>());
    if (it == tables->vocab.end()) fail(ErrorCode::kDataLoss, "model.unk_token", "{} is not in the vocabulary", json_excerpt(unk));
    s.unk_id = it->second;
  }
  const ByteAlphabet& alphabet = byte_alphabet();
  for (int b = 0; b < 256; ++b) {
    auto it = tables->vocab.find(alphabet.of_byte[b]);
    s.byte_id[b] = it == tables->vocab.end() ? -1 : it->second;
    it = tables->vocab.find(fmt::format("<0x{:02X}>", b));
    s.fallback_id[b] = it == tables->vocab.end() ? -1 : it->second;
  }
  int32_t rank = 0;
  for (const json& m : model.value("merges", json::array())) {
    std::string left, right;
    if (m.is_string()) {
      const std::string text = m.get<std::string>();
      const auto space = text.find(' ');
      if (space == std::string::npos) fail(ErrorCode::kDataLoss, "model.merges", "expected \"a b\", got {}", json_excerpt(m));
      left = text.substr(0, space);
      right = text.substr(space + 1);
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      left = m[0].get<std::string>();
      right = m[1].get<std::string>();
    } else {
      fail(ErrorCode::kDataLoss, "model.merges", "expected \"a b\" or [a, b], got {}", json_excerpt(m));
    }
    auto l = tables->vocab.find(left), r = tables->vocab.find(right), merged = tables->vocab.find(left + right);
    if (l == tables->vocab.end() || r == tables->vocab.end() || merged == tables->vocab.end()) {
      fail(ErrorCode::kDataLoss, "model.merges", "merge {} names a token missing from the vocabulary", json_excerpt(m));
    }
    tables->merges.emplace(Impl::key(l->second, r->second), std::make_pair(rank++, merged->second));
  }
  s.tables = std::move(tables);

  const json& normalizer = root.value("normalizer", json());
  if (!normalizer.is_null()) read_normalizer(normalizer, "normalizer", s.normalizers);
  const json& pre = root.value("pre_tokenizer", json());
  if (!pre.is_null()) s.byte_level = read_pre_tokenizer(pre, "pre_tokenizer", s.steps);
  const json& decoder = root.value("decoder", json());
  s.has_decoder = !decoder.is_null();
  if (s.has_decoder) read_decoder(decoder, "decoder", s.decoders);

  // Added tokens after the normalizer: those with normalized: true are matched in normalized form.
  for (const json& t : added_tokens) {
    if (!t.is_object()) fail(ErrorCode::kDataLoss, "added_tokens", "expected objects, got {}", json_excerpt(t));
    AddedToken a;
    a.content = t.value("content", "");
    a.id = listed_id(t.value("id", json()), "added_tokens.id");
    a.special = t.value("special", false);
    a.lstrip = t.value("lstrip", false);
    a.rstrip = t.value("rstrip", false);
    a.single_word = t.value("single_word", false);
    a.normalized = t.value("normalized", !a.special);
    if (a.content.empty()) fail(ErrorCode::kDataLoss, "added_tokens", "expected content");
    s.add_token(std::move(a));
  }
  s.mark_skipped();

  // Post-processor: the tokens a template puts around a single sequence.
  std::function<void(const json&)> read_post = [&](const json& p) {
    const std::string type = p.value("type", "");
    if (type == "Sequence") {
      for (const json& q : p.value("processors", json::array())) read_post(q);
    } else if (type == "TemplateProcessing") {
      bool after = false;
      for (const json& item : p.value("single", json::array())) {
        if (item.contains("Sequence")) {
          after = true;
        } else if (item.contains("SpecialToken")) {
          const std::string name = item["SpecialToken"].value("id", "");
          // Looked up in place: value() would copy the whole table for every item.
          static const json kNone;
          auto member = [](const json& object, const std::string& key) -> const json& {
            if (!object.is_object()) return kNone;
            auto it = object.find(key);
            return it == object.end() ? kNone : *it;
          };
          const json& ids = member(member(member(p, "special_tokens"), name), "ids");
          if (!ids.is_array()) fail(ErrorCode::kDataLoss, "post_processor.special_tokens", "no ids for {}", json_excerpt(json(name)));
          for (const json& id : ids) {
            const auto value = static_cast<int32_t>(json_integer(id, "post_processor.special_tokens", 0, static_cast<int64_t>(s.size()) - 1));
            s.check_id(value, "post_processor.special_tokens");  // an id no token has
            (after ? s.suffix_ids : s.prefix_ids).push_back(value);
          }
        }
      }
    } else if (type != "ByteLevel") {
      fail(ErrorCode::kInvalidArgument, "post_processor.type", "expected TemplateProcessing, ByteLevel or Sequence, got \"{}\"", type);
    }
  };
  const json& post = root.value("post_processor", json());
  if (!post.is_null()) read_post(post);
  return Tokenizer(std::move(impl));
  });
}

Tokenizer Tokenizer::with_special_tokens(const std::vector<std::string>& tokens, int32_t first_id) const {
  const Impl& s = *impl_;
  if (tokens.empty()) fail(ErrorCode::kInvalidArgument, "tokens", "expected at least one token");
  std::unordered_set<std::string> seen;
  for (const std::string& t : tokens) {
    if (t.empty()) fail(ErrorCode::kInvalidArgument, "tokens", "expected non-empty tokens");
    if (!seen.insert(t).second) fail(ErrorCode::kInvalidArgument, "tokens", "{} is listed twice", json_excerpt(json(t)));
    if (token_to_id(t)) fail(ErrorCode::kAlreadyExists, "tokens", "{} is already token {}", json_excerpt(json(t)), *token_to_id(t));
  }
  if (first_id < s.size() || int64_t{first_id} + static_cast<int64_t>(tokens.size()) > (int64_t{1} << 30)) {
    fail(ErrorCode::kInvalidArgument, "first_id", "expected an id in [{}, 2^30 - {}], got {}", s.size(), tokens.size(), first_id);
  }
  auto impl = std::make_unique<Impl>(s);
  for (std::size_t i = 0; i < tokens.size(); ++i) {
    AddedToken a;
    a.content = tokens[i];
    a.id = first_id + static_cast<int32_t>(i);
    a.special = true;
    impl->add_token(std::move(a));
  }
  impl->mark_skipped();
  return Tokenizer(std::move(impl));
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_special_tokens) const {
  const Impl& s = *impl_;
  std::vector<int32_t> out;
  if (add_special_tokens) out = s.prefix_ids;
  s.added_raw.scan(
      text, [&](std::size_t b, std::size_t e) { s.encode_segment(text.substr(b, e - b), b == 0, out); },
      [&](int32_t id) { out.push_back(id); });
  if (add_special_tokens) out.insert(out.end(), s.suffix_ids.begin(), s.suffix_ids.end());
  return out;
}

std::vector<std::vector<int32_t>> Tokenizer::encode_batch(const std::vector<std::string>& texts,
                                                          bool add_special_tokens) const {
  std::vector<std::vector<int32_t>> out;
  out.reserve(texts.size());
  for (const std::string& t : texts) out.push_back(encode(t, add_special_tokens));
  return out;
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const {
  const Impl& s = *impl_;
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int32_t id : ids) {
    s.check_id(id, "ids");
    if (!skip_special_tokens || !s.skipped[static_cast<std::size_t>(id)]) tokens.push_back(s.id_to_token[static_cast<std::size_t>(id)]);
  }
  std::string text;
  if (!s.has_decoder) {  // the reference joins the tokens with spaces
    for (std::size_t i = 0; i < tokens.size(); ++i) text += (i == 0 ? "" : " ") + tokens[i];
  } else {
    for (const DecodeStep& d : s.decoders) apply_decoder(d, tokens);
    for (const std::string& t : tokens) text += t;
  }
  return lossy_utf8(text);
}

int32_t Tokenizer::vocab_size() const { return impl_->size(); }

std::optional<int32_t> Tokenizer::token_to_id(std::string_view token) const {
  auto added = impl_->added_ids.find(std::string(token));
  if (added != impl_->added_ids.end()) return added->second;
  auto it = impl_->tables->vocab.find(token);
  if (it == impl_->tables->vocab.end()) return std::nullopt;
  return it->second;
}

std::string Tokenizer::id_to_token(int32_t id) const {
  impl_->check_id(id, "id");
  return impl_->id_to_token[static_cast<std::size_t>(id)];
}

bool Tokenizer::is_special(int32_t id) const {
  return id >= 0 && id < vocab_size() && impl_->special[static_cast<std::size_t>(id)];
}

}  // namespace aios::tokenizer
