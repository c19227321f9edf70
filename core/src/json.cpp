#include "aios/json.h"

#include <algorithm>

#include <nlohmann/detail/input/json_sax.hpp>

#include "aios/fail.h"

namespace aios {

namespace {

using nlohmann::json;

// Builds the value as nlohmann's own DOM parser does, and stops at the first array or object
// nested deeper than the limit, before it is built.
class BoundedDom {
 public:
  BoundedDom(json& root, std::size_t max_depth) : dom_(root, /*allow_exceptions=*/false), max_depth_(max_depth) {}

  bool null() { return dom_.null(); }
  bool boolean(bool v) { return dom_.boolean(v); }
  bool number_integer(json::number_integer_t v) { return dom_.number_integer(v); }
  bool number_unsigned(json::number_unsigned_t v) { return dom_.number_unsigned(v); }
  bool number_float(json::number_float_t v, const std::string& s) { return dom_.number_float(v, s); }
  bool string(json::string_t& v) { return dom_.string(v); }
  bool binary(json::binary_t& v) { return dom_.binary(v); }
  bool key(json::string_t& v) { return dom_.key(v); }
  bool start_object(std::size_t n) { return enter() && dom_.start_object(n); }
  bool end_object() { --depth_; return dom_.end_object(); }
  bool start_array(std::size_t n) { return enter() && dom_.start_array(n); }
  bool end_array() { --depth_; return dom_.end_array(); }
  bool parse_error(std::size_t position, const std::string&, const nlohmann::detail::exception& e) {
    error_position_ = position;
    error_ = e.what();
    return false;
  }

  bool too_deep() const { return too_deep_; }
  std::size_t error_position() const { return error_position_; }
  const std::string& error() const { return error_; }

 private:
  bool enter() {
    if (++depth_ > max_depth_) too_deep_ = true;
    return !too_deep_;
  }

  nlohmann::detail::json_sax_dom_parser<json> dom_;
  std::size_t max_depth_;
  std::size_t depth_ = 0;
  bool too_deep_ = false;
  std::size_t error_position_ = 0;
  std::string error_;
};

}  // namespace

json parse_json(std::string_view text, const std::string& source, ErrorCode code, std::size_t max_depth) {
  json root;
  BoundedDom dom(root, max_depth);
  const bool parsed = json::sax_parse(text.begin(), text.end(), &dom);
  if (dom.too_deep()) fail(code, source, "JSON nested deeper than {} levels", max_depth);
  if (!parsed) {
    // nlohmann's message: "[json.exception.parse_error.101] parse error at line 1, column 3: ...;
    // last read: '<input bytes>'": the bytes are left out.
    const std::string& e = dom.error();
    fail(code, source, "not valid JSON at byte {}: {}", dom.error_position(), e.substr(0, std::min(e.find("; last read"), std::size_t{200})));
  }
  return root;
}

int64_t json_integer(const json& value, const std::string& field, int64_t min, int64_t max, ErrorCode code) {
  bool in_range = false;
  if (value.is_number_unsigned()) {  // (may exceed int64)
    const std::uint64_t u = value.get<std::uint64_t>();
    in_range = max >= 0 && u <= static_cast<std::uint64_t>(max) && static_cast<int64_t>(u) >= min;
  } else if (value.is_number_integer()) {
    const int64_t i = value.get<int64_t>();
    in_range = i >= min && i <= max;
  }
  if (!in_range) fail(code, field, "expected an integer in [{}, {}], got {}", min, max, json_excerpt(value));
  return value.get<int64_t>();
}

std::string json_excerpt(const json& value, std::size_t max_chars) {
  try {
    std::string text = value.dump(-1, ' ', /*ensure_ascii=*/false, json::error_handler_t::replace);
    if (text.size() > max_chars) {
      std::size_t cut = max_chars;
      while (cut > 0 && (static_cast<unsigned char>(text[cut]) & 0xC0) == 0x80) --cut;  // whole code points
      text.resize(cut);
      text += "...";
    }
    return text;
  } catch (...) {  // allocation failure
    return "(a JSON value)";
  }
}

}  // namespace aios
