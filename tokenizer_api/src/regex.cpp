// Compiling PCRE2 patterns; replacing their matches; escaping literal text as a pattern.
#include "regex.h"

#include "aios/fail.h"

namespace aios::tokenizer {

Regex::Regex(const std::string& pattern, const std::string& field) {
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

std::string regex_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (std::string_view("\\^$.|?*+()[]{}").find(c) != std::string_view::npos) out.push_back('\\');
    out.push_back(c);
  }
  return out;
}

}  // namespace aios::tokenizer
