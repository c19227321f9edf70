// The host's key file (aios serve --keys): tenants, keys and quota fields. Beyond not crashing:
// an accepted file has keys (one without would open the host to everyone), and an error never
// quotes a key (errors go to logs and terminals).
#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

#include "aios/server/host.h"
#include "fuzz.h"

namespace {

// The second word of each line: what the file format says is a key.
std::vector<std::string> keys_of(const std::string& text) {
  std::vector<std::string> keys;
  std::istringstream lines(text);
  std::string line;
  while (std::getline(lines, line)) {
    std::istringstream words(line);
    std::string tenant, key;
    if (words >> tenant >> key && !tenant.starts_with("#")) keys.push_back(key);
  }
  return keys;
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
  } catch (const aios::Error& e) {
    const std::string what = e.field() + "\n" + e.message();  // (what() adds the code's name)
    for (const std::string& key : keys_of(text)) {
      // Short keys may appear in the message by coincidence ("keys", a line number).
      if (key.size() >= 6 && what.find(key) != std::string::npos) __builtin_trap();
    }
  }
  return 0;
}
