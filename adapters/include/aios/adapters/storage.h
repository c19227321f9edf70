// aios/adapters/storage.h — saving and loading encoders, and the registry of encoder kinds.
//
// An encoder saves to a folder:
//   encoder.json              the manifest: {"format": "aios.encoder", "version": 1, "kind": "...",
//                             "sizes": {"in_features": ..., ...}, "weights": "<file>", "crc32": <n>}
//   weights-<random>.safetensors   every parameter and buffer by its torch::nn name, in its dtype
// The weights go to a new file first, then the manifest that names it replaces the old one by
// rename (both atomically), so a save interrupted at any point leaves the previous one loadable;
// weight files no manifest names are removed afterwards. The CRC-32 (zlib's) of the weights file
// catches flipped bits the safetensors structure cannot. The Python package (aios.adapters)
// reads and writes the same folders.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>

#include <torch/nn/module.h>

#include "aios/adapters/encoders.h"

namespace aios::adapters {

using EncoderSizes = std::map<std::string, int64_t>;
// Builds a freshly initialised encoder of one kind from the manifest's sizes; throws
// Error(kInvalidArgument) for sizes it cannot take.
using EncoderFactory = std::function<std::shared_ptr<torch::nn::Module>(const EncoderSizes& sizes)>;

struct EncoderManifest {
  std::string kind;
  EncoderSizes sizes;
};

// Registers a kind for load_encoder. Built in: "linear_projection", "mlp_projection", "gist_latents".
// Throws Error(kAlreadyExists, "kind") when the kind is taken, Error(kInvalidArgument) for an empty
// kind or factory. Thread-safe.
void register_encoder(const std::string& kind, EncoderFactory factory);

// The kind and sizes of a built-in encoder.
EncoderManifest manifest_of(const LinearProjectionImpl& encoder);
EncoderManifest manifest_of(const MlpProjectionImpl& encoder);
EncoderManifest manifest_of(const GistLatentsImpl& encoder);

// Writes `encoder` (its parameters and buffers, copied to the CPU) to the folder `path`, created
// if missing. Throws Error(kUnavailable) when the file system refuses.
void save_encoder(const torch::nn::Module& encoder, const EncoderManifest& manifest, const std::string& path);
template <typename M>
void save_encoder(const torch::nn::ModuleHolder<M>& encoder, const std::string& path) {
  save_encoder(*encoder, manifest_of(*encoder), path);
}

// The manifest of the folder `path`. Throws Error: kNotFound (no folder or encoder.json),
// kDataLoss (not a valid manifest).
EncoderManifest read_encoder_manifest(const std::string& path);

// Builds the encoder the manifest names (through the registry) and loads its tensors bit-exactly
// (converted to the new module's dtype if a factory made another). Cast the result to the kind's
// Impl class (std::dynamic_pointer_cast<LinearProjectionImpl>) or wrap it in its holder.
// Throws Error: kNotFound (no folder, manifest or weights file; a kind nobody registered),
// kDataLoss (corrupt or truncated files, a CRC mismatch, sizes the factory rejects, tensors missing,
// extra or of the wrong shape).
std::shared_ptr<torch::nn::Module> load_encoder(const std::string& path);

}  // namespace aios::adapters
