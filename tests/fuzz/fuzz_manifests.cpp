// Vocabulary extension folders (extension.json + rows-*.safetensors, onto a tiny backbone),
// encoder folders (encoder.json + weights) and decoder folders (decoder.json + weights): what
// Extension::load, load_encoder and load_decoder read from disk, and what a tenant's
// RegisterDecoder and LoadExtension hand the host. The input is one folder: a byte (its kind in
// the low bits; bit 7: write the manifest's crc32 and file name to match the weights, so that
// mutations reach the weights' checks behind the checksum), a little-endian u32 manifest length,
// the manifest, then the weights file.
//
// AIOS_FUZZ_WRITE_SEEDS=DIR fuzz_manifests writes one valid folder of each kind to DIR and exits.
#include <ATen/Parallel.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include <nlohmann/json.hpp>

#include "aios/adapters/decoders.h"
#include "aios/adapters/encoders.h"
#include "aios/adapters/storage.h"
#include "aios/ali/extension.h"
#include "aios/io/files.h"
#include "aios/local/local_backbone.h"
#include "fuzz.h"
#include "tiny_checkpoint.h"

namespace fs = std::filesystem;

namespace {

struct Kind {
  const char* manifest;
  const char* weights;  // the file the input's weights are written to
  const char* name_field;
};
constexpr Kind kKinds[] = {{"extension.json", "rows-fuzz.safetensors", "rows"},
                           {"encoder.json", "weights-fuzz.safetensors", "weights"},
                           {"decoder.json", "decoder-weights-fuzz.safetensors", "weights"}};

std::uint32_t crc32(const std::string& bytes) {
  std::uint32_t crc = 0xFFFFFFFFu;
  for (unsigned char b : bytes) {
    crc ^= b;
    for (int k = 0; k < 8; ++k) crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
  }
  return ~crc;
}

struct World {
  std::unique_ptr<aios::local::LocalBackbone> backbone;
  fs::path folder;
  World() {
    backbone = aios::local::LocalBackbone::load(aios_test::TinyCheckpoint::llama("fuzz_manifests").write());
    folder = fs::temp_directory_path() / ("aios_fuzz_manifests_" + std::to_string(::getpid()));
  }
};

World& world() {
  static World w;
  return w;
}

std::string pack(unsigned kind, const std::string& manifest, const std::string& weights) {
  std::string out(1, static_cast<char>(kind));
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>((manifest.size() >> (8 * i)) & 0xff));
  return out + manifest + weights;
}

void write_seeds(const fs::path& dir) {
  fs::create_directories(dir);
  World& w = world();
  auto seed = [&](unsigned kind, const std::string& name, const fs::path& saved) {
    std::string manifest = aios::io::read_file((saved / kKinds[kind].manifest).string());
    auto m = nlohmann::json::parse(manifest);
    const std::string weights = aios::io::read_file((saved / m[kKinds[kind].name_field].get<std::string>()).string());
    m[kKinds[kind].name_field] = kKinds[kind].weights;
    std::ofstream(dir / ("seed-" + name), std::ios::binary) << pack(kind, m.dump(2), weights);
  };
  const fs::path scratch = w.folder / "seeds";
  auto extension = w.backbone->extend({"<sox>", "<eox>"});
  extension->save((scratch / "extension").string());
  seed(0, "extension", scratch / "extension");
  aios::adapters::save_encoder(aios::adapters::MlpProjection(6, aios_test::kD, 8), (scratch / "mlp").string());
  seed(1, "encoder-mlp", scratch / "mlp");
  aios::adapters::save_encoder(aios::adapters::LinearProjection(5, aios_test::kD), (scratch / "linear").string());
  seed(1, "encoder-linear", scratch / "linear");
  aios::adapters::save_encoder(aios::adapters::GistLatents(3, aios_test::kD), (scratch / "gist").string());
  seed(1, "encoder-gist", scratch / "gist");
  aios::adapters::save_decoder(aios::adapters::LinearDecoder(aios_test::kD, 3, 2), (scratch / "decoder").string());
  seed(2, "decoder-linear", scratch / "decoder");
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  at::set_num_threads(1);
  aios::fuzz::write_seeds_if_asked(write_seeds);
  world();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 5) return 0;
  World& w = world();
  const unsigned kind = (data[0] & 0x7F) % 3;
  const bool matched = (data[0] & 0x80) != 0;
  std::size_t length = 0;
  for (int i = 0; i < 4; ++i) length |= std::size_t{data[1 + i]} << (8 * i);
  length = std::min(length, size - 5);
  std::string manifest = aios::fuzz::bytes_of(data + 5, length);
  const std::string weights = aios::fuzz::bytes_of(data + 5 + length, size - 5 - length);
  if (matched) {
    auto m = nlohmann::json::parse(manifest, nullptr, /*allow_exceptions=*/false);
    if (m.is_object()) {
      m[kKinds[kind].name_field] = kKinds[kind].weights;
      if (kind != 0) m["crc32"] = crc32(weights);
      manifest = m.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    }
  }
  std::error_code error;
  fs::remove_all(w.folder, error);
  fs::create_directories(w.folder);
  std::ofstream(w.folder / kKinds[kind].manifest, std::ios::binary) << manifest;
  std::ofstream(w.folder / kKinds[kind].weights, std::ios::binary) << weights;
  const std::string path = w.folder.string();
  aios::fuzz::refused([&] {
    switch (kind) {
      case 0: aios::ali::Extension::load(*w.backbone, path); break;
      case 1: aios::adapters::load_encoder(path); break;
      default: aios::adapters::load_decoder(path); break;
    }
  });
  return 0;
}
