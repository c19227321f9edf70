#define PCRE2_CODE_UNIT_WIDTH 8
#include "aios/tokenizer_api/tokenizer.h"

#include <pcre2.h>

#include <algorithm>
#include <cctype>
#include <deque>
#include <functional>
#include <tuple>
#include <fstream>
#include <mutex>
#include <queue>
#include <sstream>
#include <unordered_map>

#include <nlohmann/json.hpp>

#include "aios/fail.h"

namespace aios::tokenizer {

namespace {

using nlohmann::json;

// The GPT-2 split pattern that ByteLevel(use_regex=true) applies.
constexpr const char* kByteLevelPattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

// Length of the valid UTF-8 sequence at s[i], or 0 when the bytes there are not one; its code
// point goes to *code_point when given.
std::size_t utf8_length(std::string_view s, std::size_t i, uint32_t* code_point = nullptr) {
  const auto b = static_cast<unsigned char>(s[i]);
  std::size_t n = b < 0x80 ? 1 : (b >> 5) == 6 ? 2 : (b >> 4) == 14 ? 3 : (b >> 3) == 30 ? 4 : 0;
  if (n == 0 || i + n > s.size()) return 0;
  uint32_t cp = n == 1 ? b : n == 2 ? (b & 0x1F) : n == 3 ? (b & 0x0F) : (b & 0x07);
  for (std::size_t k = 1; k < n; ++k) {
    const auto c = static_cast<unsigned char>(s[i + k]);
    if ((c >> 6) != 2) return 0;
    cp = (cp << 6) | (c & 0x3F);
  }
  const uint32_t min[] = {0, 0, 0x80, 0x800, 0x10000};
  if (cp < min[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
  if (code_point != nullptr) *code_point = cp;
  return n;
}

// Replaces bytes that do not form valid UTF-8 with U+FFFD, as a lossy conversion does.
std::string lossy_utf8(const std::string& bytes) {
  std::string out;
  out.reserve(bytes.size());
  for (std::size_t i = 0; i < bytes.size();) {
    const std::size_t n = utf8_length(bytes, i);
    if (n == 0) {
      out += "\xEF\xBF\xBD";
      ++i;
    } else {
      out.append(bytes, i, n);
      i += n;
    }
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
class Regex {
 public:
  Regex(const std::string& pattern, const std::string& field) {
    int error = 0;
    PCRE2_SIZE offset = 0;
    code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                          PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &error, &offset, nullptr);
    if (code_ == nullptr) {
      PCRE2_UCHAR message[256];
      pcre2_get_error_message(error, message, sizeof(message));
      fail(ErrorCode::kInvalidArgument, field, "pattern does not compile at offset {}: {}", offset,
           reinterpret_cast<const char*>(message));
    }
    pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE);  // falls back to the interpreter on failure
  }
  Regex(const Regex&) = delete;
  ~Regex() { pcre2_code_free(code_); }

  // [begin, end) of each match in `text`, in order.
  std::vector<std::pair<std::size_t, std::size_t>> find_all(std::string_view text) const {
    std::vector<std::pair<std::size_t, std::size_t>> out;
    pcre2_match_data* data = pcre2_match_data_create_from_pattern(code_, nullptr);
    std::size_t start = 0;
    while (start <= text.size()) {
      const int rc = pcre2_match(code_, reinterpret_cast<PCRE2_SPTR>(text.data()), text.size(), start, 0, data, nullptr);
      if (rc < 0) break;
      const PCRE2_SIZE* v = pcre2_get_ovector_pointer(data);
      if (v[1] == v[0]) {  // empty match: step over one character (or one invalid byte)
        const std::size_t n = v[0] < text.size() ? std::max<std::size_t>(1, utf8_length(text, v[0])) : 1;
        start = v[0] + n;
        continue;
      }
      out.emplace_back(v[0], v[1]);
      start = v[1];
    }
    pcre2_match_data_free(data);
    return out;
  }

 private:
  pcre2_code* code_ = nullptr;
};

// One pre-tokenization step: pieces in, pieces out.
struct Step {
  enum class Kind { kSplit, kByteLevelRegex, kDigits };
  enum class Behavior { kIsolated, kRemoved, kMergedWithPrevious, kMergedWithNext, kContiguous };
  Kind kind = Kind::kSplit;
  Behavior behavior = Behavior::kIsolated;
  bool invert = false;
  bool prefix_space = false;    // ByteLevel(add_prefix_space): a space before each piece lacking one
  std::shared_ptr<Regex> regex;  // null: no split
};

std::string regex_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (std::string_view("\\^$.|?*+()[]{}").find(c) != std::string_view::npos) out.push_back('\\');
    out.push_back(c);
  }
  return out;
}

// Splits `piece` by the matches of `step`, per its behavior.
void apply_split(const Step& step, std::string_view piece, std::vector<std::string_view>& out) {
  auto matches = step.regex->find_all(piece);
  // (begin, end, is_match) spans covering the piece
  std::vector<std::tuple<std::size_t, std::size_t, bool>> spans;
  std::size_t cursor = 0;
  for (auto [b, e] : matches) {
    if (b > cursor) spans.emplace_back(cursor, b, false);
    spans.emplace_back(b, e, true);
    cursor = e;
  }
  if (cursor < piece.size()) spans.emplace_back(cursor, piece.size(), false);
  if (step.invert) {
    for (auto& s : spans) std::get<2>(s) = !std::get<2>(s);
  }
  using B = Step::Behavior;
  std::vector<std::pair<std::size_t, std::size_t>> result;
  for (std::size_t i = 0; i < spans.size(); ++i) {
    auto [b, e, is_match] = spans[i];
    switch (step.behavior) {
      case B::kIsolated:
        result.emplace_back(b, e);
        break;
      case B::kRemoved:
        if (!is_match) result.emplace_back(b, e);
        break;
      case B::kMergedWithPrevious:
        if (is_match && !result.empty()) result.back().second = e;
        else result.emplace_back(b, e);
        break;
      case B::kMergedWithNext:
        if (i > 0 && std::get<2>(spans[i - 1])) result.back().second = e;
        else result.emplace_back(b, e);
        break;
      case B::kContiguous:
        if (i > 0 && std::get<2>(spans[i - 1]) == is_match) result.back().second = e;
        else result.emplace_back(b, e);
        break;
    }
  }
  for (auto [b, e] : result) {
    if (e > b) out.push_back(piece.substr(b, e - b));
  }
}

struct AddedToken {
  std::string content;
  int32_t id = 0;
  bool special = false;
  bool lstrip = false;
  bool rstrip = false;
};

}  // namespace

struct Tokenizer::Impl {
  std::unordered_map<std::string, int32_t> vocab;
  std::vector<std::string> id_to_token;
  // (left id, right id) -> (rank, merged id)
  std::unordered_map<uint64_t, std::pair<int32_t, int32_t>> merges;
  std::vector<AddedToken> added;  // longest content first
  bool starts_added[256] = {};    // first bytes of added tokens: most positions are skipped at once
  std::vector<bool> special;
  std::vector<Step> steps;
  std::vector<int32_t> prefix_ids, suffix_ids;  // template tokens around a single sequence
  int32_t byte_id[256];
  // Pieces recur (words), so their ids are cached; looked up by string_view without a copy.
  struct ViewHash {
    using is_transparent = void;
    std::size_t operator()(std::string_view s) const { return std::hash<std::string_view>()(s); }
  };
  static constexpr std::size_t kCacheEntries = 1 << 17;
  mutable std::mutex cache_mutex;
  mutable std::unordered_map<std::string, std::vector<int32_t>, ViewHash, std::equal_to<>> cache;

  static uint64_t key(int32_t a, int32_t b) { return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b); }

  // BPE of one pre-tokenized piece (raw bytes), appended to `out`.
  void bpe(std::string_view piece, std::vector<int32_t>& out) const {
    {
      std::lock_guard<std::mutex> lock(cache_mutex);
      auto it = cache.find(piece);
      if (it != cache.end()) {
        out.insert(out.end(), it->second.begin(), it->second.end());
        return;
      }
    }
    std::vector<int32_t> ids = merge(piece);
    out.insert(out.end(), ids.begin(), ids.end());
    std::lock_guard<std::mutex> lock(cache_mutex);
    if (cache.size() < kCacheEntries) cache.emplace(std::string(piece), std::move(ids));
  }

  // Merges the lowest-ranked adjacent pair first (leftmost among equals) until none applies, in
  // O(n log n): a doubly linked list of symbols and a heap of candidate pairs, stale entries skipped.
  std::vector<int32_t> merge(std::string_view piece) const {
    struct Symbol {
      int32_t id;
      int32_t prev, next;  // -1 at the ends
    };
    std::vector<Symbol> symbols;
    symbols.reserve(piece.size());
    for (unsigned char b : piece) {
      if (byte_id[b] < 0) continue;
      const auto n = static_cast<int32_t>(symbols.size());
      symbols.push_back({byte_id[b], n - 1, -1});
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
      auto it = merges.find(key(l, r));
      if (it != merges.end()) heap.push({it->second.first, pos, l, r});
    };
    for (int32_t i = 0; i < static_cast<int32_t>(symbols.size()); ++i) push(i);
    while (!heap.empty()) {
      const Candidate c = heap.top();
      heap.pop();
      Symbol& left = symbols[static_cast<std::size_t>(c.pos)];
      if (left.id != c.left || left.next < 0) continue;  // merged away or changed since pushed
      Symbol& right = symbols[static_cast<std::size_t>(left.next)];
      if (right.id != c.right) continue;
      left.id = merges.at(key(c.left, c.right)).second;
      left.next = right.next;
      if (right.next >= 0) symbols[static_cast<std::size_t>(right.next)].prev = c.pos;
      right.id = -1;  // gone
      if (left.prev >= 0) push(left.prev);
      push(c.pos);
    }
    std::vector<int32_t> ids;
    for (int32_t i = symbols.empty() ? -1 : 0; i >= 0; i = symbols[static_cast<std::size_t>(i)].next) {
      ids.push_back(symbols[static_cast<std::size_t>(i)].id);
    }
    return ids;
  }

  void encode_text(std::string_view text, std::vector<int32_t>& out) const {
    if (text.empty()) return;
    std::deque<std::string> prefixed;  // owns pieces that gained a space; stable addresses
    std::vector<std::string_view> pieces{text}, next;
    for (const Step& step : steps) {
      next.clear();
      for (std::string_view p : pieces) {
        if (step.prefix_space && !p.empty() && p.front() != ' ') {
          std::string& owned = prefixed.emplace_back(1, ' ');
          owned.append(p);
          p = owned;
        }
        if (step.regex) apply_split(step, p, next);
        else next.push_back(p);
      }
      pieces.swap(next);
    }
    for (std::string_view p : pieces) bpe(p, out);
  }
};

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

Tokenizer Tokenizer::load(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(ErrorCode::kNotFound, path, "cannot open");
  std::ostringstream text;
  text << in.rdbuf();
  return from_json(text.str(), path);
}

Tokenizer Tokenizer::from_json(const std::string& json_text, const std::string& source) {
  json root = json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded() || !root.is_object()) fail(ErrorCode::kDataLoss, source, "expected a JSON object");
  auto impl = std::make_unique<Impl>();
  const json& model = root.value("model", json());
  if (!model.is_object() || model.value("type", "") != "BPE") {
    fail(ErrorCode::kInvalidArgument, "model.type", "expected BPE, got {}", model.is_object() ? model.value("type", json()).dump() : "nothing");
  }
  if (!root.value("normalizer", json()).is_null()) {
    fail(ErrorCode::kInvalidArgument, "normalizer", "expected none, got {}", root["normalizer"].value("type", json()).dump());
  }
  const json& vocab = model.value("vocab", json());
  if (!vocab.is_object()) fail(ErrorCode::kDataLoss, "model.vocab", "expected an object of token -> id");
  int32_t size = 0;
  for (auto& [token, id] : vocab.items()) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() >= (int64_t{1} << 30)) {
      fail(ErrorCode::kDataLoss, "model.vocab", "token {}: expected an id in [0, 2^30)", json(token).dump());
    }
    impl->vocab[token] = id.get<int32_t>();
    size = std::max(size, id.get<int32_t>() + 1);
  }
  for (const json& t : root.value("added_tokens", json::array())) {
    AddedToken a;
    a.content = t.value("content", "");
    a.id = t.value("id", -1);
    a.special = t.value("special", false);
    a.lstrip = t.value("lstrip", false);
    a.rstrip = t.value("rstrip", false);
    if (a.content.empty() || a.id < 0) fail(ErrorCode::kDataLoss, "added_tokens", "expected content and a non-negative id");
    size = std::max(size, a.id + 1);
    impl->added.push_back(a);
  }
  for (const AddedToken& a : impl->added) impl->starts_added[static_cast<unsigned char>(a.content[0])] = true;
  std::sort(impl->added.begin(), impl->added.end(),
            [](const AddedToken& x, const AddedToken& y) { return x.content.size() > y.content.size(); });
  impl->id_to_token.assign(static_cast<std::size_t>(size), "");
  impl->special.assign(static_cast<std::size_t>(size), false);
  for (auto& [token, id] : impl->vocab) impl->id_to_token[static_cast<std::size_t>(id)] = token;
  for (const AddedToken& a : impl->added) {
    impl->id_to_token[static_cast<std::size_t>(a.id)] = a.content;
    impl->special[static_cast<std::size_t>(a.id)] = a.special;
  }

  const ByteAlphabet& alphabet = byte_alphabet();
  for (int b = 0; b < 256; ++b) {
    // A byte without a token (some vocabularies omit control bytes) is dropped, as the reference
    // BPE does when the model has no unknown token.
    auto it = impl->vocab.find(alphabet.of_byte[b]);
    impl->byte_id[b] = it == impl->vocab.end() ? -1 : it->second;
  }
  int32_t rank = 0;
  for (const json& m : model.value("merges", json::array())) {
    std::string left, right;
    if (m.is_string()) {
      const std::string s = m.get<std::string>();
      const auto space = s.find(' ');
      if (space == std::string::npos) fail(ErrorCode::kDataLoss, "model.merges", "expected \"a b\", got {}", m.dump());
      left = s.substr(0, space);
      right = s.substr(space + 1);
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      left = m[0].get<std::string>();
      right = m[1].get<std::string>();
    } else {
      fail(ErrorCode::kDataLoss, "model.merges", "expected \"a b\" or [a, b], got {}", m.dump());
    }
    auto l = impl->vocab.find(left), r = impl->vocab.find(right), merged = impl->vocab.find(left + right);
    if (l == impl->vocab.end() || r == impl->vocab.end() || merged == impl->vocab.end()) {
      fail(ErrorCode::kDataLoss, "model.merges", "merge {} names a token missing from the vocabulary", m.dump());
    }
    impl->merges.emplace(Impl::key(l->second, r->second), std::make_pair(rank++, merged->second));
  }

  // Pre-tokenizers.
  std::function<void(const json&, const std::string&)> add_step = [&](const json& p, const std::string& field) {
    const std::string type = p.value("type", "");
    Step step;
    if (type == "Sequence") {
      const json& list = p.value("pretokenizers", json::array());
      for (std::size_t i = 0; i < list.size(); ++i) add_step(list[i], fmt::format("{}.pretokenizers[{}]", field, i));
      return;
    }
    if (type == "ByteLevel") {
      step.prefix_space = p.value("add_prefix_space", false);
      if (p.value("use_regex", true)) step.regex = std::make_shared<Regex>(kByteLevelPattern, field);
    } else if (type == "Split") {
      const json& pattern = p.value("pattern", json());
      std::string expr;
      if (pattern.contains("Regex")) expr = pattern["Regex"].get<std::string>();
      else if (pattern.contains("String")) expr = regex_escape(pattern["String"].get<std::string>());
      else fail(ErrorCode::kInvalidArgument, field + ".pattern", "expected Regex or String");
      step.regex = std::make_shared<Regex>(expr, field + ".pattern");
      const std::string behavior = p.value("behavior", "Isolated");
      using B = Step::Behavior;
      if (behavior == "Isolated") step.behavior = B::kIsolated;
      else if (behavior == "Removed") step.behavior = B::kRemoved;
      else if (behavior == "MergedWithPrevious") step.behavior = B::kMergedWithPrevious;
      else if (behavior == "MergedWithNext") step.behavior = B::kMergedWithNext;
      else if (behavior == "Contiguous") step.behavior = B::kContiguous;
      else fail(ErrorCode::kInvalidArgument, field + ".behavior", "unsupported \"{}\"", behavior);
      step.invert = p.value("invert", false);
    } else if (type == "Digits") {
      step.regex = std::make_shared<Regex>(p.value("individual_digits", false) ? "\\p{N}" : "\\p{N}+", field);
    } else {
      fail(ErrorCode::kInvalidArgument, field + ".type", "expected Sequence, ByteLevel, Split or Digits, got \"{}\"", type);
    }
    impl->steps.push_back(std::move(step));
  };
  const json& pre = root.value("pre_tokenizer", json());
  if (!pre.is_null()) add_step(pre, "pre_tokenizer");

  // Post-processor: the tokens a template puts around a single sequence.
  const json& post = root.value("post_processor", json());
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
          const json& ids = p["special_tokens"][name]["ids"];
          for (const json& id : ids) (after ? impl->suffix_ids : impl->prefix_ids).push_back(id.get<int32_t>());
        }
      }
    } else if (type != "ByteLevel") {
      fail(ErrorCode::kInvalidArgument, "post_processor.type", "expected TemplateProcessing, ByteLevel or Sequence, got \"{}\"", type);
    }
  };
  if (!post.is_null()) read_post(post);
  return Tokenizer(std::move(impl));
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_special_tokens) const {
  const Impl& s = *impl_;
  std::vector<int32_t> out;
  if (add_special_tokens) out = s.prefix_ids;
  // Added tokens first: the leftmost match, the longest at that position.
  std::size_t start = 0, i = 0;
  while (i < text.size()) {
    if (!s.starts_added[static_cast<unsigned char>(text[i])]) {
      ++i;
      continue;
    }
    const AddedToken* hit = nullptr;
    for (const AddedToken& a : s.added) {
      if (text.compare(i, a.content.size(), a.content) == 0) {
        hit = &a;
        break;
      }
    }
    if (hit == nullptr) {
      ++i;
      continue;
    }
    std::size_t before_end = i, after = i + hit->content.size();
    if (hit->lstrip) {
      while (before_end > start && std::isspace(static_cast<unsigned char>(text[before_end - 1]))) --before_end;
    }
    if (hit->rstrip) {
      while (after < text.size() && std::isspace(static_cast<unsigned char>(text[after]))) ++after;
    }
    s.encode_text(text.substr(start, before_end - start), out);
    out.push_back(hit->id);
    start = i = after;
  }
  s.encode_text(text.substr(start), out);
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
  const ByteAlphabet& alphabet = byte_alphabet();
  std::string bytes;
  for (int32_t id : ids) {
    if (id < 0 || id >= vocab_size()) {
      fail(ErrorCode::kInvalidArgument, "ids", "expected ids in [0, {}), got {}", vocab_size(), id);
    }
    if (skip_special_tokens && s.special[static_cast<std::size_t>(id)]) continue;
    // Byte-level: each code point stands for one byte; a token with any other code point (an added
    // token such as "<|im_end|>" only if it has one) is taken as its UTF-8 text.
    const std::string& token = s.id_to_token[static_cast<std::size_t>(id)];
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
  return lossy_utf8(bytes);
}

int32_t Tokenizer::vocab_size() const { return static_cast<int32_t>(impl_->id_to_token.size()); }

std::optional<int32_t> Tokenizer::token_to_id(std::string_view token) const {
  for (const AddedToken& a : impl_->added) {
    if (a.content == token) return a.id;
  }
  auto it = impl_->vocab.find(std::string(token));
  if (it == impl_->vocab.end()) return std::nullopt;
  return it->second;
}

std::string Tokenizer::id_to_token(int32_t id) const {
  if (id < 0 || id >= vocab_size()) fail(ErrorCode::kInvalidArgument, "id", "expected an id in [0, {}), got {}", vocab_size(), id);
  return impl_->id_to_token[static_cast<std::size_t>(id)];
}

bool Tokenizer::is_special(int32_t id) const {
  return id >= 0 && id < vocab_size() && impl_->special[static_cast<std::size_t>(id)];
}

}  // namespace aios::tokenizer
