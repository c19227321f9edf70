// The tokenizer from C++, on a tokenizer.json built here: byte-level alphabet plus a few merges.
#include <string>

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

}  // namespace

TEST_CASE("merges apply by rank and added tokens split the text") {
  const Tokenizer t = tiny();
  CHECK(t.vocab_size() == 261);
  CHECK(t.encode("hello") == std::vector<int32_t>{259});
  CHECK(t.encode("hello<eos>hell") == std::vector<int32_t>{259, 260, 258});
  CHECK(t.decode({259, 260, 258}) == "hello<eos>hell");
  CHECK(t.decode({259, 260, 258}, /*skip_special_tokens=*/true) == "hellohell");
}

TEST_CASE("bytes that are not UTF-8 are kept by encode and replaced by decode") {
  const Tokenizer t = tiny();
  const std::string text = "he\xff\xfe llo\x80";
  const auto ids = t.encode(text);
  CHECK(ids == std::vector<int32_t>{256, 0xff, 0xfe, 32, 257, 111, 0x80});  // every byte has its token
  CHECK(t.decode(ids) == "he\xEF\xBF\xBD\xEF\xBF\xBD llo\xEF\xBF\xBD");
  CHECK_THROWS_AS(t.decode({261}), aios::Error);
}

TEST_CASE("unsupported tokenizer files are invalid_argument naming the part") {
  try {
    Tokenizer::from_json(R"({"model": {"type": "Unigram"}})");
    FAIL("accepted a Unigram model");
  } catch (const aios::Error& e) {
    CHECK(e.code() == aios::ErrorCode::kInvalidArgument);
    CHECK(e.field() == "model.type");
  }
  CHECK_THROWS_AS(Tokenizer::from_json("not json"), aios::Error);
}
