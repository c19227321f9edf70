// Applying normalizers and decoders (a pre-tokenizer is applied inline, in steps.h).
#include "steps.h"

#include <optional>

#include "unicode.h"
#include "utf8.h"

namespace aios::tokenizer {

namespace {

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

}  // namespace

void apply_normalizer(const NormalizeStep& n, std::string& s, bool& at_origin) {
  using K = NormalizeStep::Kind;
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

}  // namespace aios::tokenizer
