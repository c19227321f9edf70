// The tokenizer from C++, on tokenizer.json files built here: a byte-level alphabet plus a few
// merges, and a Llama-2-style one over characters with byte fallback.
#include <string>
#include <vector>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "aios/error.h"
#include "aios/tokenizer_api/tokenizer.h"

using aios::tokenizer::Tokenizer;
using nlohmann::json;

namespace {

// GPT-2's byte alphabet as UTF-8 strings, in byte order.
std::vector<std::string> byte_tokens() {
  std::vector<std::string> out;
  int extra = 0;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    const unsigned cp = printable ? static_cast<unsigned>(b) : 256u + static_cast<unsigned>(extra++);
    std::string s;
    if (cp < 0x80) {
      s.push_back(static_cast<char>(cp));
    } else {
      s.push_back(static_cast<char>(0xC0 | (cp >> 6)));
      s.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
    out.push_back(s);
  }
  return out;
}

std::string fmt_byte(int b) {
  const char* hex = "0123456789ABCDEF";
  return std::string("<0x") + hex[b >> 4] + hex[b & 15] + ">";
}

Tokenizer tiny() {
  json vocab = json::object();
  const auto bytes = byte_tokens();
  for (int b = 0; b < 256; ++b) vocab[bytes[static_cast<std::size_t>(b)]] = b;
  vocab["he"] = 256;
  vocab["ll"] = 257;
  vocab["hell"] = 258;
  vocab["hello"] = 259;
  const json config = {
      {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", {"h e", "l l", "he ll", "hell o"}}}},
      {"normalizer", nullptr},
      {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}}},
      {"added_tokens", {{{"id", 260}, {"content", "<eos>"}, {"special", true}}}},
      {"post_processor", nullptr},
      {"decoder", {{"type", "ByteLevel"}}}};
  return Tokenizer::from_json(config.dump());
}

// Llama 2 legacy layout: "\u2581" for spaces by the normalizer, <0x00>..<0xFF> for what no token
// spells, "<s>" before each sequence.
json tiny_llama_json() {
  json vocab = {{"<unk>", 0}, {"<s>", 1}, {"</s>", 2}, {"\u2581", 3}, {"h", 4}, {"i", 5}, {"hi", 6}, {"\u2581hi", 7}};
  for (int b = 0; b < 256; ++b) vocab[fmt_byte(b)] = 8 + b;
  const json config = {
      {"model",
       {{"type", "BPE"}, {"vocab", vocab}, {"merges", {"h i", "\u2581 hi"}}, {"byte_fallback", true},
        {"unk_token", "<unk>"}, {"fuse_unk", true}, {"dropout", nullptr}}},
      {"normalizer",
       {{"type", "Sequence"},
        {"normalizers",
         {{{"type", "Prepend"}, {"prepend", "\u2581"}},
          {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", "\u2581"}}}}}},
      {"pre_tokenizer", nullptr},
      {"added_tokens", {{{"id", 0}, {"content", "<unk>"}, {"special", true}, {"normalized", false}},
                        {{"id", 1}, {"content", "<s>"}, {"special", true}, {"normalized", false}},
                        {{"id", 2}, {"content", "</s>"}, {"special", true}, {"normalized", false}}}},
      {"post_processor",
       {{"type", "TemplateProcessing"},
        {"single", {{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}}, {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
        {"special_tokens", {{"<s>", {{"id", "<s>"}, {"ids", {1}}, {"tokens", {"<s>"}}}}}}}},
      {"decoder",
       {{"type", "Sequence"},
        {"decoders",
         {{{"type", "Replace"}, {"pattern", {{"String", "\u2581"}}}, {"content", " "}},
          {{"type", "ByteFallback"}},
          {{"type", "Fuse"}},
          {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}}}}}};
  return config;
}

Tokenizer tiny_llama() { return Tokenizer::from_json(tiny_llama_json().dump()); }

}  // namespace

TEST_CASE("over characters: unknown characters fall back to byte tokens", "[tokenizer]") {
  const Tokenizer t = tiny_llama();
  CHECK(t.encode("hi") == std::vector<int32_t>{1, 7});
  CHECK(t.encode("hi hi", false) == std::vector<int32_t>{7, 7});
  // "\u00e9" has no token: its two UTF-8 bytes C3 A9 do.
  CHECK(t.encode("h\u00e9", false) == std::vector<int32_t>{3, 4, 8 + 0xC3, 8 + 0xA9});
  CHECK(t.decode({1, 7, 7}) == "<s> hi hi");  // the space "\u2581" stood for stays after <s>
  CHECK(t.decode({1, 7, 7}, /*skip_special_tokens=*/true) == "hi hi");
  CHECK(t.decode({3, 4, 8 + 0xC3, 8 + 0xA9}) == "h\u00e9");
  // A byte that is not UTF-8 is a symbol of its own, kept as its byte token.
  CHECK(t.encode("i\xff", false) == std::vector<int32_t>{3, 5, 8 + 0xFF});
  CHECK(t.decode({3, 5, 8 + 0xFF}) == "i\xEF\xBF\xBD");
}

TEST_CASE("extension tokens are atomic special tokens at the ids asked for", "[tokenizer]") {
  const Tokenizer base = tiny_llama();
  const int32_t size = base.vocab_size();
  const Tokenizer ext = base.with_special_tokens({"<sox>", "<eox>"}, size + 2);
  CHECK(ext.vocab_size() == size + 4);
  CHECK(base.vocab_size() == size);
  CHECK(ext.token_to_id("<eox>") == size + 3);
  CHECK(ext.is_special(size + 2));
  CHECK(ext.encode("hi<sox>hi<eox>", false) == std::vector<int32_t>{7, size + 2, 7, size + 3});
  CHECK(ext.decode({7, size + 2, 7, size + 3}) == "hi<sox> hi<eox>");
  CHECK(ext.decode({7, size + 2, 7, size + 3}, /*skip_special_tokens=*/true) == "hi hi");
  CHECK(base.encode("<sox>", false).size() > 1);  // the base tokenizer is unchanged

  auto code_of = [&](const std::vector<std::string>& tokens, int32_t first_id) {
    try {
      (void)ext.with_special_tokens(tokens, first_id);
    } catch (const aios::Error& e) {
      return e.code();
    }
    FAIL("accepted");
    return aios::ErrorCode::kInternal;
  };
  CHECK(code_of({}, size + 4) == aios::ErrorCode::kInvalidArgument);
  CHECK(code_of({""}, size + 4) == aios::ErrorCode::kInvalidArgument);
  CHECK(code_of({"<a>", "<a>"}, size + 4) == aios::ErrorCode::kInvalidArgument);
  CHECK(code_of({"<a>"}, size + 3) == aios::ErrorCode::kInvalidArgument);
  CHECK(code_of({"<sox>"}, size + 4) == aios::ErrorCode::kAlreadyExists);
  CHECK(code_of({"hi"}, size + 4) == aios::ErrorCode::kAlreadyExists);
  for (int32_t missing : {size, size + 1}) {
    CHECK_THROWS_AS(ext.decode({missing}), aios::Error);
    CHECK_THROWS_AS(ext.id_to_token(missing), aios::Error);
  }
}

TEST_CASE("merges apply by rank and added tokens split the text", "[tokenizer]") {
  const Tokenizer t = tiny();
  CHECK(t.vocab_size() == 261);
  CHECK(t.encode("hello") == std::vector<int32_t>{259});
  CHECK(t.encode("hello<eos>hell") == std::vector<int32_t>{259, 260, 258});
  CHECK(t.decode({259, 260, 258}) == "hello<eos>hell");
  CHECK(t.decode({259, 260, 258}, /*skip_special_tokens=*/true) == "hellohell");
}

TEST_CASE("bytes that are not UTF-8 are kept by encode and replaced by decode", "[tokenizer]") {
  const Tokenizer t = tiny();
  const std::string text = "he\xff\xfe llo\x80";
  const auto ids = t.encode(text);
  CHECK(ids == std::vector<int32_t>{256, 0xff, 0xfe, 32, 257, 111, 0x80});  // every byte has its token
  CHECK(t.decode(ids) == "he\xEF\xBF\xBD\xEF\xBF\xBD llo\xEF\xBF\xBD");
  CHECK_THROWS_AS(t.decode({261}), aios::Error);
}

TEST_CASE("unsupported tokenizer files are invalid_argument naming the part", "[tokenizer]") {
  try {
    Tokenizer::from_json(R"({"model": {"type": "Unigram"}})");
    FAIL("accepted a Unigram model");
  } catch (const aios::Error& e) {
    CHECK(e.code() == aios::ErrorCode::kInvalidArgument);
    CHECK(e.field() == "model.type");
  }
  CHECK_THROWS_AS(Tokenizer::from_json("not json"), aios::Error);
}

TEST_CASE("counts and ids in a tokenizer file are integers in range, or kDataLoss naming the field", "[tokenizer]") {
  // fuzz_tokenizer_json: a Strip decoder's "stop": 3.4e+38 was converted to size_t (undefined behaviour).
  for (const json& stop : {json(3.4e38), json(1.5), json(-1), json("2")}) {
    json config = tiny_llama_json();
    config["decoder"]["decoders"][3]["stop"] = stop;
    try {
      Tokenizer::from_json(config.dump());
      FAIL("accepted stop " << stop.dump());
    } catch (const aios::Error& e) {
      CHECK(e.code() == aios::ErrorCode::kDataLoss);
      CHECK(e.field() == "decoder.decoders[3].stop");
    }
  }
  json config = tiny_llama_json();
  config["model"]["vocab"]["hi"] = 6.0;
  CHECK_THROWS_AS(Tokenizer::from_json(config.dump()), aios::Error);
  config = tiny_llama_json();
  config["post_processor"]["special_tokens"]["<s>"]["ids"] = {1e300};
  CHECK_THROWS_AS(Tokenizer::from_json(config.dump()), aios::Error);
}
