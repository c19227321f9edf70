// aios/adapters/storage.h — saving and loading encoders and decoders, and the registries of their
// kinds (by which a host or a command line builds what a folder holds).
//
// An encoder saves to a folder:
//   encoder.json              the manifest: {"format": "aios.encoder", "version": 1, "kind": "...",
//                             "sizes": {"in_features": ..., ...}, "weights": "<file>", "crc32": <n>}
//   weights-<random>.safetensors   every parameter and buffer by its torch::nn name, in its dtype
// A decoder the same way, with decoder.json, the format "aios.decoder" and
// decoder-weights-<random>.safetensors (so an encoder and a decoder may share a folder).
// The weights go to a new file first, then the manifest that names it replaces the old one by
// rename (both atomically, files and folders fsync'ed), so a save interrupted at any point, by a
// kill or a crash of the machine, leaves either the previous version or the new one, whole;
// weight files no manifest names, and temporaries, are removed by the next save. The CRC-32 (zlib's) of the weights file
// catches flipped bits the safetensors structure cannot. The Python package (aios.adapters)
// reads and writes the same folders through save_*_tensors and read_* below.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>

#include <torch/nn/module.h>

#include "aios/adapters/audio.h"
#include "aios/adapters/decoders.h"
#include "aios/adapters/encoders.h"
#include "aios/ali/generation.h"
#include "aios/export.h"

AIOS_EXPORT_BEGIN

namespace aios::adapters {

using AdapterSizes = std::map<std::string, int64_t>;
// Builds a freshly initialised module of one kind from the manifest's sizes; throws
// Error(kInvalidArgument) for sizes it cannot take. A decoder kind's module also derives from
// ali::Decoder.
using AdapterFactory = std::function<std::shared_ptr<torch::nn::Module>(const AdapterSizes& sizes)>;

struct AdapterManifest {
  std::string kind;
  AdapterSizes sizes;
};

// Registers a kind for load_encoder. Built in: "linear_projection", "mlp_projection", "gist_latents",
// "audio_encoder".
// Throws Error(kAlreadyExists, "kind") when the kind is taken, Error(kInvalidArgument) for an empty
// kind or factory. Thread-safe.
void register_encoder(const std::string& kind, AdapterFactory factory);

// The kind and sizes of a built-in encoder.
AdapterManifest manifest_of(const LinearProjectionImpl& encoder);
AdapterManifest manifest_of(const MlpProjectionImpl& encoder);
AdapterManifest manifest_of(const GistLatentsImpl& encoder);
AdapterManifest manifest_of(const AudioEncoderImpl& encoder);

// Writes `encoder` (its parameters and buffers, copied to the CPU) to the folder `path`, created
// if missing. Throws Error(kUnavailable) when the file system refuses.
void save_encoder(const torch::nn::Module& encoder, const AdapterManifest& manifest, const std::string& path);
template <typename M>
void save_encoder(const torch::nn::ModuleHolder<M>& encoder, const std::string& path) {
  save_encoder(*encoder, manifest_of(*encoder), path);
}

// The manifest of the folder `path`. Throws Error: kNotFound (no folder or encoder.json),
// kDataLoss (not a valid manifest).
AdapterManifest read_encoder_manifest(const std::string& path);

// Builds the encoder the manifest names (through the registry) and loads its tensors bit-exactly
// (converted to the new module's dtype if a factory made another). Cast the result to the kind's
// Impl class (std::dynamic_pointer_cast<LinearProjectionImpl>) or wrap it in its holder.
// Throws Error: kNotFound (no folder, manifest or weights file; a kind nobody registered),
// kDataLoss (corrupt or truncated files, a CRC mismatch, sizes the factory rejects, tensors missing,
// extra or of the wrong shape).
std::shared_ptr<torch::nn::Module> load_encoder(const std::string& path);

// The steps under save_encoder and load_encoder for modules that are not torch::nn modules (the
// Python package's nn.Module): the folder's format written from, or read into, tensors by name.
//
// Writes `tensors` (their names are the module's parameter and buffer names; copied to the CPU)
// with `manifest` to the folder `path`, as save_encoder does. Throws Error(kInvalidArgument) for an
// empty kind or a dtype safetensors cannot hold here, Error(kUnavailable) when the file system refuses.
void save_encoder_tensors(const std::map<std::string, at::Tensor>& tensors, const AdapterManifest& manifest,
                          const std::string& path);
// The manifest and the tensors of the folder `path`, as load_encoder reads and checks them before
// building a module: the weights file's CRC-32, its safetensors structure, and no size above the
// number of values it holds. The tensors are CPU tensors of the stored dtypes. Throws as
// load_encoder, less what concerns the registry and the module.
struct StoredAdapter {
  AdapterManifest manifest;
  std::map<std::string, at::Tensor> tensors;
};
StoredAdapter read_encoder(const std::string& path);

// Decoders: the same, with their own registry (built in: "linear_decoder") and decoder.json.
void register_decoder(const std::string& kind, AdapterFactory factory);
AdapterManifest manifest_of(const LinearDecoderImpl& decoder);
void save_decoder(const torch::nn::Module& decoder, const AdapterManifest& manifest, const std::string& path);
template <typename M>
void save_decoder(const torch::nn::ModuleHolder<M>& decoder, const std::string& path) {
  save_decoder(*decoder, manifest_of(*decoder), path);
}
AdapterManifest read_decoder_manifest(const std::string& path);
void save_decoder_tensors(const std::map<std::string, at::Tensor>& tensors, const AdapterManifest& manifest,
                          const std::string& path);
StoredAdapter read_decoder(const std::string& path);

// A loaded decoder: `decoder` (for GenerateOptions::routes) and `module` (its parameters, to train
// further or save) are the same object.
struct LoadedDecoder {
  std::shared_ptr<torch::nn::Module> module;
  std::shared_ptr<ali::Decoder> decoder;
};
// As load_encoder; also Error(kDataLoss, "kind") when the registered kind builds a module that is
// not an ali::Decoder.
LoadedDecoder load_decoder(const std::string& path);

}  // namespace aios::adapters
AIOS_EXPORT_END
