#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "aios/error.h"
#include "aios/io/safetensors.h"

namespace fs = std::filesystem;
using aios::Error;
using aios::ErrorCode;
using aios::io::DType;
using aios::io::SafetensorsFile;
using aios::io::TensorView;

namespace {

fs::path scratch_dir() {
  fs::path dir = fs::temp_directory_path() / ("aios_test_safetensors_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  return dir;
}

// A file of the format's layout: 8-byte little-endian header length, header, data.
std::string write_raw(const std::string& name, const std::string& header, std::size_t data_bytes,
                      std::uint64_t claimed_header_len = 0) {
  const fs::path path = scratch_dir() / name;
  std::ofstream out(path, std::ios::binary);
  std::uint64_t n = claimed_header_len ? claimed_header_len : header.size();
  for (int i = 0; i < 8; ++i) out.put(static_cast<char>((n >> (8 * i)) & 0xff));
  out << header << std::string(data_bytes, '\x01');
  return path.string();
}

void expect_error(const std::string& path, ErrorCode code, const std::string& text,
                  const aios::io::SafetensorsLimits& limits = {}) {
  try {
    SafetensorsFile::open(path, limits);
    FAIL("opened a bad file: " << path);
  } catch (const Error& e) {
    INFO(e.what());
    CHECK(e.code() == code);
    CHECK(std::string(e.what()).find(text) != std::string::npos);
    CHECK(e.field().find(path) == 0);
  }
}

}  // namespace

TEST_CASE("safetensors round trip through the atomic writer") {
  const std::vector<float> a = {1.f, 2.f, 3.f, 4.f, 5.f, 6.f};
  const std::vector<std::int64_t> b = {7, -8};
  std::vector<TensorView> tensors(2);
  tensors[0] = {"a.weight", DType::kF32, {2, 3}, reinterpret_cast<const std::byte*>(a.data()), a.size() * 4};
  tensors[1] = {"b", DType::kI64, {2}, reinterpret_cast<const std::byte*>(b.data()), b.size() * 8};
  const std::string path = (scratch_dir() / "round_trip.safetensors").string();
  aios::io::write_safetensors(path, tensors, {{"format", "pt"}});

  for (const auto& entry : fs::directory_iterator(scratch_dir())) {
    CHECK(entry.path().string().find(".tmp.") == std::string::npos);  // nothing half-written left behind
  }
  const SafetensorsFile file = SafetensorsFile::open(path);
  REQUIRE(file.tensors().size() == 2);
  CHECK(file.metadata().at("format") == "pt");
  const TensorView* ta = file.find("a.weight");
  REQUIRE(ta != nullptr);
  CHECK(ta->dtype == DType::kF32);
  CHECK(ta->shape == std::vector<int64_t>{2, 3});
  CHECK(std::memcmp(ta->data, a.data(), 24) == 0);
  const TensorView* tb = file.find("b");
  REQUIRE(tb != nullptr);
  CHECK(tb->numel() == 2);
  CHECK(std::memcmp(tb->data, b.data(), 16) == 0);
  CHECK(file.find("c") == nullptr);
}

TEST_CASE("the writer refuses inconsistent input") {
  const float x = 0;
  const auto* p = reinterpret_cast<const std::byte*>(&x);
  const std::string path = (scratch_dir() / "refused.safetensors").string();
  CHECK_THROWS_AS(aios::io::write_safetensors(path, {{"x", DType::kF32, {2}, p, 4}}), Error);
  CHECK_THROWS_AS(aios::io::write_safetensors(path, {{"x", DType::kF32, {1}, p, 4}, {"x", DType::kF32, {1}, p, 4}}),
                  Error);
  CHECK_FALSE(fs::exists(path));
}

TEST_CASE("a missing file is not_found") {
  expect_error((scratch_dir() / "absent.safetensors").string(), ErrorCode::kNotFound, "cannot open");
}

TEST_CASE("corrupt files are data_loss with the reason named") {
  const std::string ok_entry = R"("t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
  // Sanity: the well-formed variant opens.
  CHECK_NOTHROW(SafetensorsFile::open(write_raw("good.st", "{" + ok_entry + "}", 8)));

  expect_error(write_raw("empty_header.st", "", 0), ErrorCode::kDataLoss, "JSON object");
  {
    const fs::path p = scratch_dir() / "tiny.st";
    std::ofstream(p, std::ios::binary) << "abc";
    expect_error(p.string(), ErrorCode::kDataLoss, "at least 8 bytes");
  }
  expect_error(write_raw("long_header.st", "{}", 0, 1000), ErrorCode::kDataLoss, "truncated");
  expect_error(write_raw("huge_header.st", "{}", 0, 1ull << 40), ErrorCode::kDataLoss, "exceeds the limit");
  expect_error(write_raw("not_json.st", "{oops", 0), ErrorCode::kDataLoss, "not valid JSON");
  expect_error(write_raw("array.st", "[1,2]", 0), ErrorCode::kDataLoss, "JSON object");
  expect_error(write_raw("entry.st", R"({"t":5})", 0), ErrorCode::kDataLoss, "expected an object");
  expect_error(write_raw("dtype.st", R"({"t":{"dtype":"Q4","shape":[2],"data_offsets":[0,8]}})", 8),
               ErrorCode::kDataLoss, "dtype");
  expect_error(write_raw("neg.st", R"({"t":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8),
               ErrorCode::kDataLoss, "non-negative");
  expect_error(write_raw("frac.st", R"({"t":{"dtype":"F32","shape":[2.5],"data_offsets":[0,8]}})", 8),
               ErrorCode::kDataLoss, "non-negative");
  expect_error(write_raw("overflow.st",
                         R"({"t":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}})", 8),
               ErrorCode::kDataLoss, "overflows");
  expect_error(write_raw("outside.st", R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 4),
               ErrorCode::kDataLoss, "outside the data section");
  expect_error(write_raw("reversed.st", R"({"t":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}})", 8),
               ErrorCode::kDataLoss, "outside the data section");
  expect_error(write_raw("size.st", R"({"t":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8),
               ErrorCode::kDataLoss, "expected 12 bytes");
  expect_error(write_raw("overlap.st",
                         R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                         R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                         12),
               ErrorCode::kDataLoss, "overlap");
  expect_error(write_raw("hole.st",
                         R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                         R"("b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})",
                         12),
               ErrorCode::kDataLoss, "hole");
  expect_error(write_raw("trailing.st", "{" + ok_entry + "}", 12), ErrorCode::kDataLoss, "cover 8 bytes");
  expect_error(write_raw("offsets.st", R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0]}})", 8),
               ErrorCode::kDataLoss, "data_offsets");
  expect_error(write_raw("meta.st", R"({"__metadata__":{"k":1}})", 0), ErrorCode::kDataLoss, "__metadata__.k");
  aios::io::SafetensorsLimits small;
  small.max_rank = 1;
  expect_error(write_raw("rank.st", R"({"t":{"dtype":"F32","shape":[1,2],"data_offsets":[0,8]}})", 8),
               ErrorCode::kDataLoss, "rank 2 exceeds", small);
  small = {};
  small.max_tensors = 1;
  expect_error(write_raw("count.st",
                         R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                         R"("b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]},)"
                         R"("c":{"dtype":"F32","shape":[0],"data_offsets":[8,8]}})",
                         8),
               ErrorCode::kResourceExhausted, "limit", small);
}
