// GGUF keeps a tokenizer as llama.cpp's metadata: tokens, merges, token types, special ids and the
// name of the pre-tokenizer. This rebuilds the tokenizer.json that transformers' GGUF converter
// (integrations/gguf) makes from them, so every tokenizer goes through one parser, from_json.
#include "gguf_tokenizer.h"

#include <algorithm>
#include <map>
#include <optional>
#include <tuple>
#include <unordered_map>
#include <vector>

#include <nlohmann/json.hpp>

#include "aios/fail.h"
#include "unicode.h"
#include "utf8.h"

namespace aios::tokenizer {

namespace {

using nlohmann::json;

// Split patterns by tokenizer.ggml.pre, as transformers maps them; other names keep ByteLevel's
// own GPT-2 pattern.
constexpr const char* kLlama3Split =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr const char* kQwen2Split =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr const char* kQwen35Split =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr const char* kTekkenSplit =
    R"([^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr const char* kGpt4oSplit =
    R"([^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

struct PreSplit {
  const char* name;
  const char* pattern;
};
constexpr PreSplit kPreSplits[] = {
    {"llama3", kLlama3Split},     {"llama-v3", kLlama3Split},    {"llama-bpe", kLlama3Split},
    {"falcon3", kLlama3Split},    {"falcon-h1", kLlama3Split},   {"pixtral", kLlama3Split},
    {"midm-2.0", kLlama3Split},   {"lfm2", kLlama3Split},        {"jina-v5-nano", kLlama3Split},
    {"dbrx", kLlama3Split},       {"smaug-bpe", kLlama3Split},   {"tekken", kTekkenSplit},
    {"qwen2", kQwen2Split},       {"deepseek-r1-qwen", kQwen2Split}, {"kormo", kQwen2Split},
    {"f2llmv2", kQwen2Split},     {"megrez", kQwen2Split},       {"qwen35", kQwen35Split},
    {"gpt-4o", kGpt4oSplit},      {"llama4", kGpt4oSplit},       {"kanana2", kGpt4oSplit},
    {"talkie", kGpt4oSplit},      {"minimax-m2", kGpt4oSplit},
};

// llama.cpp's token types.
constexpr std::int64_t kControl = 3;
constexpr std::int64_t kUserDefined = 4;

// Whether every code point of `token` (UTF-8) is in GPT-2's byte alphabet. Malformed UTF-8: false.
bool spelled_in_byte_alphabet(const std::string& token) {
  const ByteAlphabet& alphabet = byte_alphabet();
  for (std::size_t i = 0, n = 0; i < token.size(); i += n) {
    std::uint32_t cp = 0;
    if ((n = utf8_length(token, i, &cp)) == 0 || !alphabet.to_byte.contains(cp)) return false;
  }
  return true;
}

// Byte offsets where the code points of `s` start (a stray continuation byte stays with the code
// point before it), followed by s.size().
std::vector<std::size_t> code_point_starts(const std::string& s) {
  std::vector<std::size_t> starts;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (i == 0 || (static_cast<std::uint8_t>(s[i]) & 0xC0) != 0x80) starts.push_back(i);
  }
  starts.push_back(s.size());
  return starts;
}

// Whether `token` is whitespace only (as Python's str.isspace) with a space among it: how Gemma
// files store the runs of spaces that its vocabulary spells with U+2581.
bool blank_with_space(const std::string& token) {
  if (token.find(' ') == std::string::npos) return false;
  for (std::size_t i = 0, n = 0; i < token.size(); i += n) {
    uint32_t cp = 0;
    n = utf8_length(token, i, &cp);
    if (n == 0) return false;
    const bool space = (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x20) || cp == 0x85 || cp == 0xA0 ||
                       cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 ||
                       cp == 0x202F || cp == 0x205F || cp == 0x3000;
    if (!space) return false;
  }
  return true;
}

// SentencePiece files often list no merges: they are recovered from the vocabulary and its scores
// as transformers does (generate_merges): every split of a token into two tokens is a merge
// ranked by the token's score, best first; ties by the halves' lengths in code points, longest
// first; then file order.
json merges_from_scores(const std::vector<std::string>& tokens, const std::vector<double>& scores,
                        const std::unordered_map<std::string, std::int64_t>& vocab) {
  struct Merge {
    std::string left, right;
    double score;
    std::size_t left_length, right_length;
  };
  std::unordered_map<std::string, double> score_of;  // the last score of each token
  std::vector<const std::string*> order;              // tokens by first appearance
  for (std::size_t i = 0; i < tokens.size(); ++i) {
    if (score_of.count(tokens[i]) == 0) order.push_back(&tokens[i]);
    score_of[tokens[i]] = scores[i];
  }
  std::vector<Merge> merges;
  for (const std::string* token : order) {
    const std::vector<std::size_t> starts = code_point_starts(*token);
    const std::size_t n = starts.size() - 1;
    std::vector<Merge> local;
    for (std::size_t k = 1; k < n; ++k) {
      std::string left = token->substr(0, starts[k]), right = token->substr(starts[k]);
      if (vocab.count(left) != 0 && vocab.count(right) != 0) {
        local.push_back({std::move(left), std::move(right), score_of[*token], k, n - k});
      }
    }
    std::stable_sort(local.begin(), local.end(), [&](const Merge& a, const Merge& b) {
      return std::pair(vocab.at(a.left), vocab.at(a.right)) < std::pair(vocab.at(b.left), vocab.at(b.right));
    });
    for (Merge& m : local) merges.push_back(std::move(m));
  }
  std::stable_sort(merges.begin(), merges.end(), [](const Merge& a, const Merge& b) {
    return std::tuple(a.score, a.left_length, a.right_length) > std::tuple(b.score, b.left_length, b.right_length);
  });
  json out = json::array();
  for (const Merge& m : merges) out.push_back({m.left, m.right});
  return out;
}

}  // namespace

std::string gguf_tokenizer_json(const io::GgufFile& file) {
  const std::string& path = file.path();
  auto required = [&](auto value, const char* key) {
    if (!value) fail(ErrorCode::kDataLoss, path + ": " + key, "required for the tokenizer, missing");
    return *value;
  };
  const std::string model = required(file.string("tokenizer.ggml.model"), "tokenizer.ggml.model");
  if (model != "gpt2" && model != "llama") {
    fail(ErrorCode::kInvalidArgument, path + ": tokenizer.ggml.model",
         "expected gpt2 (byte-level BPE) or llama (SentencePiece BPE), got \"{}\"", model);
  }
  const bool byte_level = model == "gpt2";
  // Two architectures' SentencePiece vocabularies are built differently, as transformers builds them:
  // Phi-3 prepends its space in a normalizer; Gemma splits on spaces, strips nothing when decoding,
  // and ranks recovered merges by file order (its scores do not follow it).
  const std::string arch = file.string("general.architecture").value_or("");
  const bool gemma = !byte_level && (arch == "gemma" || arch == "gemma2" || arch == "gemma3");
  const bool phi3 = !byte_level && arch == "phi3";
  std::vector<std::string> tokens = required(file.strings("tokenizer.ggml.tokens"), "tokenizer.ggml.tokens");
  if (tokens.empty() || tokens.size() >= (std::size_t{1} << 30)) {
    fail(ErrorCode::kDataLoss, path + ": tokenizer.ggml.tokens", "expected 1 to 2^30 tokens, got {}", tokens.size());
  }
  const std::vector<std::int64_t> types = file.integers("tokenizer.ggml.token_type").value_or(std::vector<std::int64_t>{});
  if (!types.empty() && types.size() != tokens.size()) {
    fail(ErrorCode::kDataLoss, path + ": tokenizer.ggml.token_type", "expected one type per token ({}), got {}",
         tokens.size(), types.size());
  }
  auto token_id = [&](const char* key) -> std::optional<std::int64_t> {
    const auto id = file.integer(key);
    if (id && (*id < 0 || *id >= static_cast<std::int64_t>(tokens.size()))) {
      fail(ErrorCode::kDataLoss, path + ": " + key, "expected a token id in [0, {}), got {}", tokens.size(), *id);
    }
    return id;
  };

  // Every token must be UTF-8 (GGUF strings are, and transformers' reader refuses others): all of
  // them go into the tokenizer's JSON text, SentencePiece tokens and the special ones of either
  // model as written. Byte-level BPE spells its vocabulary in the byte alphabet; a token written
  // otherwise in the file is respelled byte by byte.
  // Gemma files store a token of spaces as real spaces; its vocabulary spells them as U+2581.
  std::vector<bool> respelled(tokens.size(), false);
  for (std::size_t id = 0; id < tokens.size(); ++id) {
    if (!valid_utf8(tokens[id])) fail(ErrorCode::kDataLoss, path + ": tokenizer.ggml.tokens", "token {} is not UTF-8", id);
    if (gemma && blank_with_space(tokens[id])) {
      const std::size_t length = code_point_starts(tokens[id]).size() - 1;
      tokens[id].clear();
      for (std::size_t k = 0; k < length; ++k) tokens[id] += "\u2581";
      respelled[id] = true;
    }
  }
  json vocab = json::object();
  std::unordered_map<std::string, std::int64_t> ids;
  for (std::size_t id = 0; id < tokens.size(); ++id) {
    const std::string& t = tokens[id];
    std::string spelled;
    if (!byte_level || spelled_in_byte_alphabet(t)) {
      spelled = t;
    } else {
      for (unsigned char b : t) spelled += byte_alphabet().of_byte[b];
    }
    vocab[spelled] = id;
    ids[spelled] = static_cast<std::int64_t>(id);
  }
  json merges;
  if (auto listed = file.strings("tokenizer.ggml.merges")) {
    for (std::size_t i = 0; i < listed->size(); ++i) {
      if (!valid_utf8((*listed)[i])) fail(ErrorCode::kDataLoss, path + ": tokenizer.ggml.merges", "merge {} is not UTF-8", i);
    }
    merges = *listed;
  } else if (byte_level) {
    merges = json::array();
  } else if (gemma) {
    std::vector<double> order(tokens.size());
    for (std::size_t i = 0; i < order.size(); ++i) order[i] = -static_cast<double>(i);
    merges = merges_from_scores(tokens, order, ids);
  } else {
    const std::vector<double> scores = required(file.numbers("tokenizer.ggml.scores"), "tokenizer.ggml.scores");
    if (scores.size() != tokens.size()) {
      fail(ErrorCode::kDataLoss, path + ": tokenizer.ggml.scores", "expected one score per token ({}), got {}",
           tokens.size(), scores.size());
    }
    merges = merges_from_scores(tokens, scores, ids);
  }

  // Control tokens are special added tokens, user-defined ones plain added tokens (byte-level: a
  // token marked control but spelled outside the byte alphabet is a mislabel and stays a plain
  // token), and so are the tokens the special ids name.
  auto addable = [&](std::int64_t id) { return !byte_level || spelled_in_byte_alphabet(tokens[static_cast<std::size_t>(id)]); };
  std::map<std::int64_t, bool> added;  // id -> special
  for (std::size_t i = 0; i < types.size(); ++i) {
    const auto id = static_cast<std::int64_t>(i);
    if (!addable(id)) continue;
    if (types[i] == kControl) added[id] = true;
    if (types[i] == kUserDefined && !respelled[i]) added.emplace(id, false);  // as the file spells it only
  }
  const auto bos = token_id("tokenizer.ggml.bos_token_id");
  const auto eos = token_id("tokenizer.ggml.eos_token_id");
  for (const auto& id : {bos, eos, token_id("tokenizer.ggml.unknown_token_id"), token_id("tokenizer.ggml.padding_token_id")}) {
    if (id && addable(*id)) added[*id] = true;
  }
  json added_tokens = json::array();
  for (const auto& [id, special] : added) {
    added_tokens.push_back({{"id", id}, {"content", tokens[static_cast<std::size_t>(id)]}, {"single_word", false},
                            {"lstrip", false}, {"rstrip", false}, {"normalized", false}, {"special", special}});
  }

  json normalizer = nullptr;
  json pre_tokenizer = byte_level
      ? json{{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}}
      : json{{"type", "Metaspace"}, {"replacement", "\u2581"}, {"prepend_scheme", "first"}, {"split", false}};
  const json to_metaspace = {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", "\u2581"}};
  if (phi3) {
    normalizer = {{"type", "Sequence"}, {"normalizers", {{{"type", "Prepend"}, {"prepend", "\u2581"}}, to_metaspace}}};
    pre_tokenizer = nullptr;
  } else if (gemma) {
    normalizer = to_metaspace;
    pre_tokenizer = {{"type", "Split"}, {"pattern", {{"String", " "}}}, {"behavior", "MergedWithPrevious"}, {"invert", false}};
  }
  if (const auto pre = file.string("tokenizer.ggml.pre")) {
    for (const PreSplit& p : kPreSplits) {
      if (*pre != p.name) continue;
      pre_tokenizer = {{"type", "Sequence"},
                       {"pretokenizers",
                        {{{"type", "Split"}, {"pattern", {{"Regex", p.pattern}}}, {"behavior", "Isolated"}, {"invert", false}},
                         {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", false}}}}};
    }
  }

  // BOS/EOS around each sequence when the file asks for them (and names them). SentencePiece files
  // that do not say add BOS, as llama.cpp does.
  json single = json::array();
  json special_tokens = json::object();
  auto wrap = [&](std::optional<std::int64_t> id) {
    const std::string& t = tokens[static_cast<std::size_t>(*id)];
    single.push_back({{"SpecialToken", {{"id", t}, {"type_id", 0}}}});
    special_tokens[t] = {{"id", t}, {"ids", {*id}}, {"tokens", {t}}};
  };
  if (bos && file.boolean("tokenizer.ggml.add_bos_token").value_or(!byte_level)) wrap(bos);
  single.push_back({{"Sequence", {{"id", "A"}, {"type_id", 0}}}});
  if (eos && file.boolean("tokenizer.ggml.add_eos_token").value_or(false)) wrap(eos);

  json decoder = byte_level
      ? json{{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}}
      : json{{"type", "Sequence"},
             {"decoders",
              {{{"type", "Replace"}, {"pattern", {{"String", "\u2581"}}}, {"content", " "}},
               {{"type", "ByteFallback"}},
               {{"type", "Fuse"}},
               {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}}}};
  if (gemma) decoder["decoders"].erase(3);  // Gemma keeps the leading space
  // GemmaTokenizer names its unknown token in the model; the others leave it to byte fallback.
  const json unk = gemma && ids.count("<unk>") != 0 ? json("<unk>") : json(nullptr);
  json root = {
      {"version", "1.0"},
      {"added_tokens", added_tokens},
      {"normalizer", normalizer},
      {"pre_tokenizer", pre_tokenizer},
      {"post_processor", {{"type", "TemplateProcessing"}, {"single", single}, {"special_tokens", special_tokens}}},
      {"decoder", decoder},
      {"model",
       {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", unk}, {"continuing_subword_prefix", nullptr},
        {"end_of_word_suffix", nullptr}, {"fuse_unk", !byte_level}, {"byte_fallback", !byte_level},
        {"ignore_merges", false}, {"vocab", vocab}, {"merges", merges}}},
  };
  return root.dump();
}

}  // namespace aios::tokenizer
