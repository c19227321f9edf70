// The GGUF reader on files written here byte by byte: a well-formed one, then one corruption at a time.
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "aios/error.h"
#include "aios/io/gguf.h"
#include "gguf_bytes.h"

namespace fs = std::filesystem;
using aios::Error;
using aios::ErrorCode;
using aios::io::GgmlType;
using aios::io::GgufFile;
using aios::io::GgufType;
using aios_test::Bytes;

namespace {

fs::path scratch_dir() {
  fs::path dir = fs::temp_directory_path() / ("aios_test_gguf_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  return dir;
}

struct TensorSpec {
  std::string name;
  std::vector<std::uint64_t> ne;  // innermost first
  std::uint32_t type = 0;         // F32
  std::uint64_t offset = 0;
};

// A version-3 file: a few metadata values of every kind, the given tensors, `data_bytes` of data.
struct Spec {
  std::uint32_t version = 3;
  std::string magic = "GGUF";
  std::uint64_t claimed_tensors = ~0ull;
  std::uint64_t claimed_string = ~0ull;  // length written for the name metadata string
  std::vector<TensorSpec> tensors = {{"a", {4, 2}, 0, 0}, {"b", {32}, 8, 32}};  // F32 [2,4]; Q8_0 [32]
  std::uint64_t data_bytes = 32 + 34;
  std::size_t truncate_to = 0;  // 0: whole
};

std::string write(const std::string& name, const Spec& spec) {
  Bytes b;
  b.s += spec.magic;
  b.u(spec.version, 4).u(spec.claimed_tensors == ~0ull ? spec.tensors.size() : spec.claimed_tensors, 8).u(5, 8);
  b.str("general.architecture").u(8, 4).str("llama");
  b.str("general.name").u(8, 4).str("tiny", spec.claimed_string);
  b.str("llama.block_count").u(4, 4).u(3, 4);
  b.str("llama.rope.freq_base").u(6, 4).f32(10000.f);
  // an array of strings
  b.str("tokenizer.ggml.tokens").u(9, 4).u(8, 4).u(2, 8).str("<s>").str("hi");
  for (const TensorSpec& t : spec.tensors) {
    b.str(t.name).u(t.ne.size(), 4);
    for (std::uint64_t d : t.ne) b.u(d, 8);
    b.u(t.type, 4).u(t.offset, 8);
  }
  b.s.append((32 - b.s.size() % 32) % 32, '\0');
  for (std::uint64_t i = 0; i < spec.data_bytes; ++i) b.s.push_back(static_cast<char>(i));
  if (spec.truncate_to != 0) b.s.resize(spec.truncate_to);
  const fs::path path = scratch_dir() / name;
  std::ofstream(path, std::ios::binary) << b.s;
  return path.string();
}

void expect_error(const std::string& path, ErrorCode code, const std::string& text) {
  try {
    GgufFile::open(path);
    FAIL("opened a bad file: " << path);
  } catch (const Error& e) {
    INFO(e.what());
    CHECK(e.code() == code);
    CHECK(std::string(e.what()).find(text) != std::string::npos);
    CHECK(e.field().find(path) == 0);
  }
}

}  // namespace

TEST_CASE("gguf: a well-formed file gives its metadata and tensors") {
  const GgufFile file = GgufFile::open(write("good.gguf", {}));
  CHECK(file.version() == 3);
  CHECK(file.alignment() == 32);
  CHECK(file.string("general.architecture") == "llama");
  CHECK(file.integer("llama.block_count") == 3);
  CHECK(file.number("llama.block_count") == 3.0);
  CHECK(file.number("llama.rope.freq_base") == 10000.0);
  CHECK(file.strings("tokenizer.ggml.tokens") == std::vector<std::string>{"<s>", "hi"});
  CHECK_FALSE(file.string("missing").has_value());
  CHECK(file.find_metadata("tokenizer.ggml.tokens")->type == GgufType::kArray);
  REQUIRE(file.tensors().size() == 2);
  const auto* a = file.find("a");
  REQUIRE(a != nullptr);
  CHECK(a->type == GgmlType::kF32);
  CHECK(a->shape == std::vector<std::int64_t>{2, 4});  // ne reversed
  CHECK(a->size_bytes == 32);
  const auto* b = file.find("b");
  REQUIRE(b != nullptr);
  CHECK(b->type == GgmlType::kQ8_0);
  CHECK(b->size_bytes == 34);
  CHECK(static_cast<int>(b->data[0]) == 32);  // the data section's 33rd byte
  CHECK(file.find("c") == nullptr);
  // More array elements than the limit allows in all: resource_exhausted, before they are read.
  aios::io::GgufLimits limits;
  limits.max_metadata_values = 1;
  try {
    GgufFile::open(file.path(), limits);
    FAIL("read past the limit");
  } catch (const Error& e) {
    CHECK(e.code() == ErrorCode::kResourceExhausted);
    CHECK(e.field().find("tokenizer.ggml.tokens") != std::string::npos);
  }
  // A value of another type is data_loss naming the key.
  try {
    (void)file.integer("general.name");
    FAIL("read a string as an integer");
  } catch (const Error& e) {
    CHECK(e.code() == ErrorCode::kDataLoss);
    CHECK(e.field().find("general.name") != std::string::npos);
  }
}

TEST_CASE("gguf: a missing file is not_found") {
  try {
    GgufFile::open((scratch_dir() / "nope.gguf").string());
    FAIL("opened a missing file");
  } catch (const Error& e) {
    CHECK(e.code() == ErrorCode::kNotFound);
  }
}

TEST_CASE("gguf: corrupt files are clear errors, never crashes") {
  Spec spec;
  SECTION("bad magic") {
    spec.magic = "GGUG";
    expect_error(write("magic.gguf", spec), ErrorCode::kDataLoss, "magic");
  }
  SECTION("unsupported version") {
    spec.version = 1;
    expect_error(write("version.gguf", spec), ErrorCode::kInvalidArgument, "version 2 or 3, got 1");
  }
  SECTION("truncated header") {
    spec.truncate_to = 10;
    expect_error(write("short.gguf", spec), ErrorCode::kDataLoss, "truncated");
  }
  SECTION("truncated inside the metadata") {
    spec.truncate_to = 100;
    expect_error(write("short_kv.gguf", spec), ErrorCode::kDataLoss, "general.name");
  }
  SECTION("lying tensor count") {
    spec.claimed_tensors = 1000000;
    expect_error(write("count.gguf", spec), ErrorCode::kDataLoss, "tensors cannot fit");
  }
  SECTION("lying string length") {
    spec.claimed_string = 1u << 20;
    expect_error(write("string.gguf", spec), ErrorCode::kDataLoss, "runs past the end");
  }
  SECTION("offset outside the file") {
    spec.tensors[1].offset = 4096;
    expect_error(write("outside.gguf", spec), ErrorCode::kDataLoss, "outside the data section");
  }
  SECTION("data section shorter than the tensors") {
    spec.data_bytes = 40;
    expect_error(write("short_data.gguf", spec), ErrorCode::kDataLoss, "tensor 'b'");
  }
  SECTION("misaligned offset") {
    spec.tensors[1].offset = 33;
    expect_error(write("misaligned.gguf", spec), ErrorCode::kDataLoss, "not a multiple of the alignment 32");
  }
  SECTION("overlapping tensors") {
    spec.tensors[1].offset = 0;
    expect_error(write("overlap.gguf", spec), ErrorCode::kDataLoss, "overlap");
  }
  SECTION("repeated tensor name") {
    spec.tensors[1].name = "a";
    expect_error(write("duplicate.gguf", spec), ErrorCode::kDataLoss, "appears twice");
  }
  SECTION("unknown tensor type") {
    spec.tensors[1].type = 4;  // Q4_2, removed from ggml
    expect_error(write("type.gguf", spec), ErrorCode::kInvalidArgument, "unknown tensor type 4");
  }
  SECTION("rows that are not whole blocks") {
    spec.tensors[1].ne = {31};
    expect_error(write("blocks.gguf", spec), ErrorCode::kDataLoss, "whole blocks");
  }
  SECTION("rank over the limit") {
    spec.tensors[0].ne = {1, 1, 1, 1, 1};
    expect_error(write("rank.gguf", spec), ErrorCode::kDataLoss, "rank 5");
  }
  SECTION("dimensions whose byte size overflows") {
    spec.tensors[0].ne = {1ull << 40, 1ull << 40};
    expect_error(write("overflow.gguf", spec), ErrorCode::kDataLoss, "tensor 'a'");
  }
}

TEST_CASE("gguf: lying array lengths and nesting are data_loss") {
  auto file_with = [](const std::string& name, const Bytes& value) {
    Bytes b;
    b.s += "GGUF";
    b.u(3, 4).u(0, 8).u(1, 8).str("key");
    b.s += value.s;
    const fs::path path = scratch_dir() / name;
    std::ofstream(path, std::ios::binary) << b.s;
    return path.string();
  };
  Bytes lying;
  lying.u(9, 4).u(5, 4).u(1ull << 26, 8);  // 2^26 int32s in a few bytes
  expect_error(file_with("array.gguf", lying), ErrorCode::kDataLoss, "does not fit");
  Bytes nested;
  nested.u(9, 4);
  for (int i = 0; i < 6; ++i) nested.u(9, 4).u(1, 8);  // arrays of one array of one array of ...
  expect_error(file_with("nested.gguf", nested), ErrorCode::kDataLoss, "nested deeper");
  Bytes bad_type;
  bad_type.u(13, 4);
  expect_error(file_with("value_type.gguf", bad_type), ErrorCode::kDataLoss, "unknown value type 13");
  Bytes b;
  b.s += "GGUF";
  b.u(3, 4).u(0, 8).u(1, 8).str("general.alignment").u(4, 4).u(24, 4);
  const fs::path path = scratch_dir() / "alignment.gguf";
  std::ofstream(path, std::ios::binary) << b.s;
  expect_error(path.string(), ErrorCode::kDataLoss, "power of two");
}
