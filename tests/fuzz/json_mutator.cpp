// A structure-aware mutator for the targets whose input is one JSON document (libFuzzer's
// LLVMFuzzerCustomMutator hook). Byte flips rarely keep JSON valid, so they stop at the parser;
// this one parses the input and changes its tree: values replaced by edge cases (huge and negative
// integers, floats, long and non-ASCII strings), values wrapped into deep nests, array elements
// repeated (inputs of hundreds of KB), subtrees copied elsewhere, members deleted or renamed. One
// mutation in four is libFuzzer's own, so that the parser itself is fuzzed too.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

extern "C" std::size_t LLVMFuzzerMutate(std::uint8_t* data, std::size_t size, std::size_t max_size);

namespace {

using nlohmann::json;

void collect(json& node, std::vector<json*>& nodes, std::vector<std::string>& keys) {
  nodes.push_back(&node);
  if (node.is_object()) {
    for (auto it = node.begin(); it != node.end(); ++it) {
      keys.push_back(it.key());
      collect(it.value(), nodes, keys);
    }
  } else if (node.is_array()) {
    for (json& element : node) collect(element, nodes, keys);
  }
}

json edge_value(std::minstd_rand& rng, const std::vector<std::string>& keys) {
  static const std::int64_t kIntegers[] = {0, 1, -1, 2, 7, 8, 16, 31, 32, 63, 64, 255, 256, 1023, 1024, 65535, 65536,
                                           (1ll << 30) - 1, 1ll << 30, (1ll << 31) - 1, 1ll << 31, 1ll << 32,
                                           1ll << 53, (1ll << 62), INT64_MAX, INT64_MIN, -(1ll << 31)};
  static const double kFloats[] = {0.0, -0.0, 0.5, 1e-30, 1e30, 1e308, -1e308, 3.4e38, 1e-320, 2.5e9, -2.5e9};
  static const char* const kStrings[] = {"", "a", " ", "\u2581", "<s>", "</s>", "<unk>", "<0x41>", "\xC3\xA9",
                                         "\xF0\x9F\x98\x80", "BPE", "Sequence", "Split", "ByteLevel", "Metaspace",
                                         "Regex", "String", "llama", "qwen2", "gpt2", "mistral", "float32",
                                         "bfloat16", "linear", "dynamic", "yarn", "llama3", "(", "[", "\\p{L}+",
                                         "(?:a|b)*c", "(a*)*b", ".*.*.*=", "\\", "%", "{{", "F32", "I64"};
  switch (rng() % 8) {
    case 0: return kIntegers[rng() % std::size(kIntegers)];
    case 1: return static_cast<std::uint64_t>(UINT64_MAX - rng() % 3);
    case 2: return kFloats[rng() % std::size(kFloats)];
    case 3: return kStrings[rng() % std::size(kStrings)];
    case 4: return keys.empty() ? json("") : json(keys[rng() % keys.size()]);
    case 5: return std::string(1 + rng() % 300, static_cast<char>('a' + rng() % 3));
    case 6: return rng() % 2 == 0;
    default: return nullptr;
  }
}

bool mutate_tree(json& root, std::minstd_rand& rng) {
  std::vector<json*> nodes;
  std::vector<std::string> keys;
  collect(root, nodes, keys);
  json& node = *nodes[rng() % nodes.size()];
  switch (rng() % 9) {
    case 0:
    case 1: node = edge_value(rng, keys); return true;
    case 2: node = rng() % 2 == 0 ? json::array() : json::object(); return true;
    case 3: {  // a nest: one level usually, sometimes past any parser's depth limit
      const std::size_t depth = rng() % 4 == 0 ? 1 + rng() % 200 : 1;
      for (std::size_t i = 0; i < depth; ++i) node = rng() % 2 == 0 ? json::array({node}) : json{{"a", node}};
      return true;
    }
    case 4: {  // repeat an element: many tokens, merges, layers, dimensions
      if (!node.is_array() || node.empty()) return false;
      const json element = node[rng() % node.size()];
      const std::size_t copies = rng() % 4 == 0 ? rng() % 2000 : 1 + rng() % 8;
      for (std::size_t i = 0; i < copies; ++i) node.push_back(element);
      return true;
    }
    case 5: {  // delete a member or element
      if (node.is_object() && !node.empty()) {
        auto it = node.begin();
        std::advance(it, static_cast<long>(rng() % node.size()));
        node.erase(it);
        return true;
      }
      if (node.is_array() && !node.empty()) {
        node.erase(node.begin() + static_cast<long>(rng() % node.size()));
        return true;
      }
      return false;
    }
    case 6: {  // add a member under a name seen elsewhere
      if (!node.is_object() || keys.empty()) return false;
      node[keys[rng() % keys.size()]] = edge_value(rng, keys);
      return true;
    }
    case 7: {  // copy another subtree here (not one that contains this node)
      const json& other = *nodes[rng() % nodes.size()];
      if (&other == &root) return false;
      const json copy = other;
      node = copy;
      return true;
    }
    default: {  // add an element
      if (!node.is_array()) return false;
      node.push_back(node.empty() ? edge_value(rng, keys) : node[rng() % node.size()]);
      return true;
    }
  }
}

// How deeply the input nests (strings skipped): the mutator's own copies and dumps recurse, so
// deeper inputs only get byte mutations.
std::size_t nesting(const std::uint8_t* data, std::size_t size) {
  std::size_t depth = 0, deepest = 0;
  bool in_string = false;
  for (std::size_t i = 0; i < size; ++i) {
    const char c = static_cast<char>(data[i]);
    if (in_string) {
      if (c == '\\') ++i;
      else if (c == '"') in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      deepest = std::max(deepest, ++depth);
    } else if ((c == ']' || c == '}') && depth > 0) {
      --depth;
    }
  }
  return deepest;
}

}  // namespace

extern "C" std::size_t LLVMFuzzerCustomMutator(std::uint8_t* data, std::size_t size, std::size_t max_size,
                                               unsigned int seed) {
  std::minstd_rand rng(seed);
  if (rng() % 4 != 0 && nesting(data, size) < 1000) {
    json root = json::parse(data, data + size, nullptr, /*allow_exceptions=*/false);
    if (!root.is_discarded()) {
      for (int attempt = 0; attempt < 8; ++attempt) {
        if (!mutate_tree(root, rng)) continue;
        const std::string text = root.dump(-1, ' ', false, json::error_handler_t::replace);
        if (text.size() > max_size) break;
        std::memcpy(data, text.data(), text.size());
        return text.size();
      }
    }
  }
  return LLVMFuzzerMutate(data, size, max_size);
}
