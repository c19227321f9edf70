// aios/json.h — reading JSON that came from outside (config.json, tokenizer.json, safetensors
// headers, manifests). Internal to aios, like fail.h.
//
// nlohmann::json parses iteratively, but copying, comparing and printing a value recurse once per
// level of nesting, so a document of 100,000 nested arrays crashes the process by stack overflow
// wherever it is later copied or put in a message; and dump() throws on strings that are not
// UTF-8. Every untrusted document therefore goes through parse_json (nesting bounded while
// parsing, errors as aios::Error) and every value put in a message through json_excerpt (bounded
// length, never throws).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "aios/error.h"
#include "aios/export.h"

// Exported for aios's other libraries, which read JSON through it (not an installed header).
AIOS_EXPORT_BEGIN

namespace aios {

// Far deeper than any format aios reads (tokenizer.json nests about 6 levels), far shallower than
// what recursion over the value could overflow.
inline constexpr std::size_t kMaxJsonDepth = 64;

// The value of `text`. Throws Error(`code`, `source`, ...) when it is not JSON (the message gives
// the byte offset) or nests arrays and objects deeper than `max_depth`.
nlohmann::json parse_json(std::string_view text, const std::string& source, ErrorCode code = ErrorCode::kDataLoss,
                          std::size_t max_depth = kMaxJsonDepth);

// `value` as JSON text for an error message: at most `max_chars` characters (then "..."), bytes
// that are not UTF-8 replaced. Never throws.
std::string json_excerpt(const nlohmann::json& value, std::size_t max_chars = 120);

// `value` as an integer in [`min`, `max`], or Error(`code`, `field`, ...). Only JSON integers:
// nlohmann's get<int64_t>() of a float converts it, and of 1e300 that is undefined behaviour.
int64_t json_integer(const nlohmann::json& value, const std::string& field, int64_t min, int64_t max,
                     ErrorCode code = ErrorCode::kDataLoss);

// Runs `read`, code that takes values out of a parsed document, and turns what nlohmann's typed
// accessors throw for a value of another type (get<std::string>() of a number, value() of an
// array, ...) into Error(`code`, `source`, ...), so that no exception of the JSON library leaves
// aios. Readers check the types they need and name the field; this is the net under them.
template <typename Read>
auto reading_json(const std::string& source, ErrorCode code, Read&& read) -> decltype(read()) {
  try {
    return read();
  } catch (const nlohmann::json::exception& e) {
    throw Error(code, source, e.what());
  }
}

}  // namespace aios
AIOS_EXPORT_END
