// Tokenizer::Impl's encoding (added tokens, normalizers, pre-tokenizers, then BPE with its piece
// cache) and the public methods of Tokenizer, but from_json (tokenizer_json.cpp).
#include "aios/tokenizer_api/tokenizer.h"

#include <algorithm>
#include <filesystem>
#include <functional>
#include <queue>
#include <unordered_set>

#include <nlohmann/json.hpp>

#include "aios/fail.h"
#include "aios/json.h"
#include "aios/io/gguf.h"
#include "aios/io/files.h"
#include "gguf_tokenizer.h"
#include "tokenizer_impl.h"
#include "unicode.h"
#include "utf8.h"

namespace aios::tokenizer {

namespace {

using nlohmann::json;

}  // namespace

void Tokenizer::Impl::add_token(AddedToken a) {
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

void Tokenizer::Impl::mark_skipped() {
  for (std::size_t i = 0; i < id_to_token.size(); ++i) skipped[i] = present[i] && special_contents.count(id_to_token[i]) > 0;
}

inline std::string Tokenizer::Impl::normalize(std::string_view text, bool& at_origin) const {
  std::string s(text);
  for (const NormalizeStep& n : normalizers) apply_normalizer(n, s, at_origin);
  return s;
}

inline void Tokenizer::Impl::encode_segment(std::string_view text, bool at_origin, std::vector<int32_t>& out) const {
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

inline void Tokenizer::Impl::encode_text(Piece text, std::vector<int32_t>& out) const {
  if (!text.text.empty()) pre_tokenize(0, text, out);
}

inline void Tokenizer::Impl::pre_tokenize(std::size_t i, Piece p, std::vector<int32_t>& out) const {
  if (i == steps.size()) {
    bpe(p.text, out);
    return;
  }
  apply_pre_tokenizer(steps[i], p, [&](Piece q) { pre_tokenize(i + 1, q, out); });
}

inline void Tokenizer::Impl::bpe(std::string_view piece, std::vector<int32_t>& out) const {
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

inline std::vector<int32_t> Tokenizer::Impl::model(std::string_view piece) const {
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

inline std::vector<int32_t> Tokenizer::Impl::symbols(std::string_view piece) const {
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

inline std::vector<int32_t> Tokenizer::Impl::merge(std::vector<int32_t> initial) const {
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
