// Reading tokenizer.json (the format of Hugging Face's tokenizers) into a Tokenizer: the BPE
// model, added tokens, normalizers, pre-tokenizers, decoders and the post-processor's template.
#include "aios/tokenizer_api/tokenizer.h"

#include <algorithm>
#include <cstdint>
#include <functional>

#include <nlohmann/json.hpp>

#include "aios/fail.h"
#include "aios/json.h"
#include "tokenizer_impl.h"
#include "unicode.h"
#include "utf8.h"

namespace aios::tokenizer {

namespace {

using nlohmann::json;

// The GPT-2 split pattern that ByteLevel(use_regex=true) applies, the contractions' apostrophe
// written once: the same matches (leftmost alternative first) in fewer steps.
constexpr const char* kByteLevelPattern =
    R"('(?:s|t|re|ve|m|ll|d)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

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

}  // namespace aios::tokenizer
