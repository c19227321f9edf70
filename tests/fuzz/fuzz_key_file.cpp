// The host's key file (aios serve --keys): tenants, keys and quota fields. Beyond not crashing:
// an accepted file has keys (one without would open the host to everyone), and an error never
// quotes a key (errors go to logs and terminals).
#include <cstdint>
#include <cstdio>
#include <map>
#include <sstream>
#include <string>

#include "aios/server/host.h"
#include "fuzz.h"

namespace {

// The text with each key of six characters or more (a line's second word) replaced by a mask of
// letters, one per distinct key, distinct from every other key and mask: the parser compares keys
// only with each other, so the file fails in the same place, and only a message that quotes a key
// differs.
std::string masked(const std::string& text, std::map<std::string, std::string>& masks) {
  static constexpr char kLetters[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
  std::istringstream lines(text);
  std::string line, out;
  while (std::getline(lines, line)) {
    std::istringstream words(line);
    std::string tenant, key;
    if (words >> tenant >> key && !tenant.starts_with("#") && key.size() >= 6) {
      auto [it, added] = masks.try_emplace(key, key);
      if (added) {  // the number of the key in base 52, in as many letters as the key has bytes
        for (std::size_t i = 0, n = masks.size(); i < key.size(); ++i, n /= 52) it->second[i] = kLetters[n % 52];
      }
      const std::size_t at = line.find(key, line.find(tenant) + tenant.size());
      line.replace(at, key.size(), it->second);
    }
    out += line + "\n";
  }
  return out;
}

std::string error_of(const std::string& text) {
  try {
    aios::server::parse_key_file(text, "keys");
    return "";
  } catch (const aios::Error& e) {
    return e.field() + "\n" + e.message();  // (what() adds the code's name)
  }
}

std::size_t count(const std::string& haystack, const std::string& needle) {
  std::size_t n = 0;
  for (std::size_t at = haystack.find(needle); at != std::string::npos; at = haystack.find(needle, at + 1)) ++n;
  return n;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string text = aios::fuzz::bytes_of(data, size);
  try {
    const auto file = aios::server::parse_key_file(text, "keys");
    if (file.api_keys.empty()) __builtin_trap();
    for (const auto& [key, tenant] : file.api_keys) {
      if (key.empty() || tenant.empty()) __builtin_trap();
    }
  } catch (const aios::Error&) {
    // A key leaks when the message has it more often than the message of the same file with the
    // keys masked (a key may also be a word the message says anyway: "quota=N", "argument:").
    std::map<std::string, std::string> masks;
    const std::string plain = error_of(text), with_masks = error_of(masked(text, masks));
    for (const auto& entry : masks) {
      const std::string& key = entry.first;  // (shorter keys are in most messages by chance: "s", "key")
      if (count(plain, key) > count(with_masks, key)) {
        fprintf(stderr, "key %s leaked: %s\n(with the keys masked: %s)\n", key.c_str(), plain.c_str(), with_masks.c_str());
        __builtin_trap();
      }
    }
  }
  return 0;
}
