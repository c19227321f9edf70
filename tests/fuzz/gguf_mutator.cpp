// A structure-aware mutator for GGUF inputs (libFuzzer's LLVMFuzzerCustomMutator hook). It reads
// the input as GGUF without checking anything, changes one field of its structure and writes it
// again: a key-value's value (edge integers, long or broken strings, array lengths), its type, a
// key from the names readers look for, a tensor's rank, dimensions, type or offset, the counts in
// the header (lying ones too), the data section's length. Byte flips alone rarely get past the
// first length field. One mutation in four is libFuzzer's own.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

extern "C" std::size_t LLVMFuzzerMutate(std::uint8_t* data, std::size_t size, std::size_t max_size);

namespace {

struct Value {
  std::uint32_t type = 0;
  std::uint64_t scalar = 0;  // integers, floats and bools as their bits
  std::string text;          // strings
  std::uint32_t element_type = 0;
  std::vector<Value> elements;  // arrays
};

struct KeyValue {
  std::string key;
  Value value;
};

struct TensorInfo {
  std::string name;
  std::vector<std::uint64_t> ne;
  std::uint32_t type = 0;
  std::uint64_t offset = 0;
};

struct Gguf {
  std::uint32_t version = 3;
  std::vector<KeyValue> kvs;
  std::vector<TensorInfo> tensors;
  std::string data;  // everything after the tensor infos (padding included)
  // Lies written in place of the true counts, when set.
  std::uint64_t tensor_count_lie = 0, kv_count_lie = 0;
  bool lie = false;
};

class Reader {
 public:
  Reader(const std::uint8_t* data, std::size_t size) : data_(data), size_(size) {}
  bool u(unsigned bytes, std::uint64_t& out) {
    if (size_ - pos_ < bytes) return false;
    out = 0;
    for (unsigned i = 0; i < bytes; ++i) out |= std::uint64_t{data_[pos_ + i]} << (8 * i);
    pos_ += bytes;
    return true;
  }
  bool str(std::string& out) {
    std::uint64_t n;
    if (!u(8, n) || n > size_ - pos_ || n > (1u << 20)) return false;
    out.assign(reinterpret_cast<const char*>(data_ + pos_), n);
    pos_ += n;
    return true;
  }
  std::size_t pos() const { return pos_; }
  std::string rest() const { return std::string(reinterpret_cast<const char*>(data_ + pos_), size_ - pos_); }

 private:
  const std::uint8_t* data_;
  std::size_t size_, pos_ = 0;
};

unsigned scalar_bytes(std::uint32_t type) {
  switch (type) {
    case 0: case 1: case 7: return 1;
    case 2: case 3: return 2;
    case 4: case 5: case 6: return 4;
    case 10: case 11: case 12: return 8;
    default: return 0;
  }
}

bool read_value(Reader& in, std::uint32_t type, Value& v, int depth) {
  v.type = type;
  if (type == 8) return in.str(v.text);
  if (type == 9) {
    std::uint64_t t, n;
    if (depth > 3 || !in.u(4, t) || !in.u(8, n) || n > (1u << 16)) return false;
    v.element_type = static_cast<std::uint32_t>(t);
    v.elements.resize(n);
    for (Value& e : v.elements) {
      if (!read_value(in, v.element_type, e, depth + 1)) return false;
    }
    return true;
  }
  const unsigned bytes = scalar_bytes(type);
  return bytes != 0 && in.u(bytes, v.scalar);
}

bool read(const std::uint8_t* data, std::size_t size, Gguf& g) {
  if (size < 24 || std::memcmp(data, "GGUF", 4) != 0) return false;
  Reader in(data + 4, size - 4);
  std::uint64_t version, tensors, kvs;
  if (!in.u(4, version) || !in.u(8, tensors) || !in.u(8, kvs) || tensors > 4096 || kvs > 4096) return false;
  g.version = static_cast<std::uint32_t>(version);
  g.kvs.resize(kvs);
  for (KeyValue& kv : g.kvs) {
    std::uint64_t type;
    if (!in.str(kv.key) || !in.u(4, type) || !read_value(in, static_cast<std::uint32_t>(type), kv.value, 0)) return false;
  }
  g.tensors.resize(tensors);
  for (TensorInfo& t : g.tensors) {
    std::uint64_t rank, type;
    if (!in.str(t.name) || !in.u(4, rank) || rank > 8) return false;
    t.ne.resize(rank);
    for (auto& d : t.ne) {
      if (!in.u(8, d)) return false;
    }
    if (!in.u(4, type) || !in.u(8, t.offset)) return false;
    t.type = static_cast<std::uint32_t>(type);
  }
  g.data = in.rest();
  return true;
}

void put(std::string& out, std::uint64_t v, unsigned bytes) {
  for (unsigned i = 0; i < bytes; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

void write_value(std::string& out, const Value& v) {
  if (v.type == 8) {
    put(out, v.text.size(), 8);
    out += v.text;
  } else if (v.type == 9) {
    put(out, v.element_type, 4);
    put(out, v.elements.size(), 8);
    for (const Value& e : v.elements) write_value(out, e);
  } else {
    put(out, v.scalar, scalar_bytes(v.type));
  }
}

std::string write(const Gguf& g) {
  std::string out = "GGUF";
  put(out, g.version, 4);
  put(out, g.lie ? g.tensor_count_lie : g.tensors.size(), 8);
  put(out, g.lie ? g.kv_count_lie : g.kvs.size(), 8);
  for (const KeyValue& kv : g.kvs) {
    put(out, kv.key.size(), 8);
    out += kv.key;
    put(out, kv.value.type, 4);
    write_value(out, kv.value);
  }
  for (const TensorInfo& t : g.tensors) {
    put(out, t.name.size(), 8);
    out += t.name;
    put(out, t.ne.size(), 4);
    for (std::uint64_t d : t.ne) put(out, d, 8);
    put(out, t.type, 4);
    put(out, t.offset, 8);
  }
  return out + g.data;
}

std::uint64_t edge(std::minstd_rand& rng) {
  static const std::uint64_t kValues[] = {0, 1, 2, 3, 4, 7, 8, 16, 31, 32, 33, 64, 255, 256, 257, 1024, 4096, 65535,
                                          1u << 20, (1ull << 31) - 1, 1ull << 31, 1ull << 32, (1ull << 32) - 1,
                                          1ull << 40, 1ull << 62, (1ull << 63) - 1, 1ull << 63, ~0ull, ~0ull - 31};
  return kValues[rng() % std::size(kValues)];
}

// Names that aios's readers look up: a mutation that lands on one reaches the code behind it.
const char* const kKeys[] = {
    "general.architecture", "general.alignment", "general.name", "llama.block_count", "llama.context_length",
    "llama.embedding_length", "llama.feed_forward_length", "llama.attention.head_count",
    "llama.attention.head_count_kv", "llama.attention.key_length", "llama.attention.value_length",
    "llama.rope.freq_base", "llama.rope.dimension_count", "llama.rope.scaling.type", "llama.rope.scaling.factor",
    "llama.attention.layer_norm_rms_epsilon", "llama.vocab_size", "qwen2.block_count", "qwen2.embedding_length",
    "qwen2.context_length", "qwen2.attention.head_count", "tokenizer.ggml.model", "tokenizer.ggml.pre",
    "tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type", "tokenizer.ggml.merges",
    "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.unknown_token_id",
    "tokenizer.ggml.padding_token_id", "tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_eos_token",
    "tokenizer.chat_template"};

void mutate_value(Value& v, std::minstd_rand& rng) {
  switch (rng() % 6) {
    case 0: v.scalar = edge(rng); break;
    case 1: v.type = static_cast<std::uint32_t>(rng() % 14); break;  // 13: unknown
    case 2: v.text = std::string(rng() % 4 == 0 ? rng() % 5000 : rng() % 8, static_cast<char>("a\x80\xff\xe2 <"[rng() % 6])); break;
    case 3:
      if (!v.elements.empty()) {
        const Value copy = v.elements[rng() % v.elements.size()];
        const std::size_t n = rng() % 4 == 0 ? rng() % 3000 : 1 + rng() % 4;
        for (std::size_t i = 0; i < n; ++i) v.elements.push_back(copy);
      }
      break;
    case 4:
      if (!v.elements.empty()) v.elements.resize(rng() % v.elements.size());
      break;
    default:
      if (!v.elements.empty()) mutate_value(v.elements[rng() % v.elements.size()], rng);
      else v.element_type = static_cast<std::uint32_t>(rng() % 14);
      break;
  }
}

void mutate(Gguf& g, std::minstd_rand& rng) {
  switch (rng() % 12) {
    case 0: case 1: case 2:
      if (!g.kvs.empty()) mutate_value(g.kvs[rng() % g.kvs.size()].value, rng);
      break;
    case 3:
      if (!g.kvs.empty()) g.kvs[rng() % g.kvs.size()].key = kKeys[rng() % std::size(kKeys)];
      break;
    case 4:
      if (!g.kvs.empty()) g.kvs.erase(g.kvs.begin() + static_cast<long>(rng() % g.kvs.size()));
      break;
    case 5: {
      KeyValue kv;
      kv.key = kKeys[rng() % std::size(kKeys)];
      kv.value.type = static_cast<std::uint32_t>(rng() % 13);
      kv.value.scalar = edge(rng);
      if (kv.value.type == 9) kv.value.element_type = rng() % 2 == 0 ? 8 : 5;
      g.kvs.push_back(kv);
      break;
    }
    case 6: case 7:
      if (!g.tensors.empty()) {
        TensorInfo& t = g.tensors[rng() % g.tensors.size()];
        if (!t.ne.empty() && rng() % 3 != 0) t.ne[rng() % t.ne.size()] = edge(rng);
        else t.ne.resize(rng() % 6, 1 + rng() % 64);
      }
      break;
    case 8:
      if (!g.tensors.empty()) g.tensors[rng() % g.tensors.size()].type = static_cast<std::uint32_t>(rng() % 42);
      break;
    case 9:
      if (!g.tensors.empty()) {
        TensorInfo& t = g.tensors[rng() % g.tensors.size()];
        t.offset = rng() % 2 == 0 ? edge(rng) : (g.tensors[rng() % g.tensors.size()].offset + 32 * (rng() % 4));
      }
      break;
    case 10:
      if (!g.tensors.empty()) {
        if (rng() % 2 == 0) g.tensors.push_back(g.tensors[rng() % g.tensors.size()]);
        else g.tensors.erase(g.tensors.begin() + static_cast<long>(rng() % g.tensors.size()));
      }
      break;
    default:
      switch (rng() % 4) {
        case 0: g.data.resize(rng() % (g.data.size() + 1)); break;
        case 1: g.data.append(rng() % 4096, static_cast<char>(rng())); break;
        case 2: g.version = static_cast<std::uint32_t>(rng() % 5); break;
        default:
          g.lie = true;
          g.tensor_count_lie = rng() % 2 == 0 ? g.tensors.size() + rng() % 3 : edge(rng);
          g.kv_count_lie = rng() % 2 == 0 ? g.kvs.size() + rng() % 3 - 1 : edge(rng);
      }
  }
}

}  // namespace

extern "C" std::size_t LLVMFuzzerCustomMutator(std::uint8_t* data, std::size_t size, std::size_t max_size,
                                               unsigned int seed) {
  std::minstd_rand rng(seed);
  Gguf g;
  if (rng() % 4 != 0 && read(data, size, g)) {
    const int mutations = 1 + static_cast<int>(rng() % 3);
    for (int i = 0; i < mutations; ++i) mutate(g, rng);
    const std::string out = write(g);
    if (out.size() <= max_size) {
      std::memcpy(data, out.data(), out.size());
      return out.size();
    }
  }
  return LLVMFuzzerMutate(data, size, max_size);
}
