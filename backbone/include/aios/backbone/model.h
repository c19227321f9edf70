// aios/backbone/model.h — frozen weights and the math of one decoder-only architecture.
//
// A Model does no argument checking: the Latent API (ali/) validates every input before it gets here.
// Weights are created without requires_grad and are never written after loading.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "aios/backbone/config.h"
#include "aios/backbone/kv_cache.h"
#include "aios/export.h"

AIOS_EXPORT_BEGIN

namespace aios::io {
class GgufFile;
}

namespace aios::backbone {

class PackedMatrix;  // internal (backbone/src/packed.h): a frozen matrix kept as its checkpoint stores it

// How the frozen weight matrices are held in memory (docs/latent_api.md, "Weight storage").
enum class WeightStorage {
  kAuto,      // kStored on the CPU, kExpanded elsewhere
  kExpanded,  // converted to the compute dtype at load
  kStored,    // as the checkpoint stores them (GGUF block-quantised or 16-bit types), decoded per
              // product; CPU only. Safetensors folders load expanded either way.
  kInt8,      // float matrices quantised at load, per row (symmetric int8); GGUF's quantised ones
              // stay as stored. CPU only.
  kInt4,      // the same with 4-bit groups of LoadOptions::group_size values (scale and minimum each)
};

struct LoadOptions {
  c10::Device device = c10::kCPU;
  c10::ScalarType dtype = c10::kFloat;  // kFloat, kBFloat16 or kHalf; kDouble for gradient checks
  WeightStorage weights = WeightStorage::kAuto;
  int64_t group_size = 128;  // values per int4 group (kInt4), >= 1; a row's last group holds the rest
  // The share of the checkpoint to load (a pipeline stage's, aios/pipeline): blocks
  // [first_block, end_block) (end_block -1: through the last) and, with `tables`, the token
  // embedding, the output head, GPT-2's position embeddings and the final norm. Only those tensors
  // are read. A model loaded without some of them must not be asked to run them.
  int64_t first_block = 0;
  int64_t end_block = -1;
  bool tables = true;
};

// "auto" | "expanded" | "stored" | "int8" | "int4" -> storage. Throws Error(kInvalidArgument) naming `field` for anything else.
WeightStorage parse_weight_storage(const std::string& name, const std::string& field = "weights");
std::string weight_storage_name(WeightStorage storage);

// "float32" | "bfloat16" | "float16" | "float64" (also "torch.float32", "float", "half", "double") -> dtype. Throws
// Error(kInvalidArgument) naming `field` for anything else.
c10::ScalarType parse_dtype(const std::string& name, const std::string& field = "dtype");
// The inverse: "float32", "bfloat16", "float16".
std::string dtype_name(c10::ScalarType dtype);
// A tensor's sizes as error messages print them: "[2,3,64]".
std::string shape_of(const at::Tensor& t);
// "cpu" | "cuda" | "cuda:N" -> device. Throws Error(kInvalidArgument) naming `field`.
c10::Device parse_device(const std::string& name, const std::string& field = "device");

// Which keys each query may see. Built by the caller from positions and masks.
struct Attention {
  at::Tensor positions;    // int64 [B,T], each in [0, max_positions)
  at::Tensor key_padding;  // bool [B,T] (true = real token) combined with causal order; or undefined
  at::Tensor full_mask;    // bool [B,T,T] (true = query t sees key s), replaces causal order; or undefined
};

// Blocks [first_block(), num_layers) of a model run elsewhere: in pipeline stages of other
// processes (aios/pipeline). Model::forward hands them the residual stream entering first_block().
class RemoteBlocks {
 public:
  virtual ~RemoteBlocks();
  virtual int64_t first_block() const = 0;
  // x [B,T,D] entering block first_block() -> the stream leaving the last block [B,T,D]. For each
  // index j with first_block() < layers[j] < num_layers, (*states)[j] becomes the stream entering
  // block layers[j] (states is sized like layers; other entries are left alone). With `routing`
  // (num_layers entries), the remote blocks' entries are filled. With a cache, the remote blocks
  // append to their share of it. With grad mode on and x requiring grad, the outputs are
  // differentiable in x; `recompute` then asks the remote side to keep only the states between
  // blocks and recompute each block during backward (ForwardOptions::recompute).
  virtual at::Tensor run(const at::Tensor& x, const Attention& attention, const std::vector<int64_t>& layers,
                         std::vector<at::Tensor>* states, KVCache* cache, std::vector<at::Tensor>* routing,
                         bool recompute) = 0;
  // The bytes the remote blocks' share of `cache` holds (their keys and values).
  virtual std::size_t cache_bytes(const KVCache& cache) const = 0;
  // The memory the remote blocks' weights take, as Model::storage() counts it.
  virtual std::vector<WeightKind> storage() const = 0;
};

class Model {
 public:
  virtual ~Model();

  const ModelConfig& config() const { return config_; }
  c10::Device device() const { return device_; }
  c10::ScalarType dtype() const { return dtype_; }
  // Every weight tensor held expanded (read-only; none requires grad).
  const std::vector<at::Tensor>& weights() const;
  // Number of distinct weight elements, expanded or stored (a tied head counts once).
  int64_t parameter_count() const;
  // The memory the weights take: one entry per kind (dtype or stored GGUF type), largest first;
  // remote blocks' included.
  std::vector<WeightKind> storage() const;
  // How the weight matrices are held: kExpanded when none is packed, else the option they were
  // loaded with (kAuto resolved to kStored).
  WeightStorage weight_storage() const;

  // ids int64 [B,T] on device() -> latents [B,T,D] in dtype(). With `extra_rows` [K,D] (a
  // vocabulary extension's embedding rows), ids V..V+K-1 take those rows; the table is not copied.
  at::Tensor embed(const at::Tensor& ids, const at::Tensor& extra_rows = {}) const;
  // latents [B,T,D] -> final hidden state [B,T,D] after the final norm. For each index l in `layers`
  // (0 <= l <= num_layers) the residual stream entering block l (l = num_layers: leaving the last
  // block, before the final norm) is stored at the same position of `layer_states`. With a cache,
  // the T positions are appended to it (attention.key_padding marks padding; no full_mask) and
  // attend to the cached ones as well.
  // `before_block(i, x)`, when given, sees the residual stream x entering block i (and may throw to
  // stop the pass). With `routing`, it receives one int64 [B,T,k] per block: the experts each
  // position ran (k = 0 for blocks without experts).
  at::Tensor forward(const at::Tensor& latents, const Attention& attention, const std::vector<int64_t>& layers,
                     std::vector<at::Tensor>* layer_states, KVCache* cache = nullptr,
                     const std::function<void(int64_t, const at::Tensor&)>& before_block = {},
                     std::vector<at::Tensor>* routing = nullptr) const;
  // The bytes `cache` holds for this model: KVCache::bytes() and the remote blocks' share.
  std::size_t cache_bytes(const KVCache& cache) const {
    return cache.bytes() + (remote_ ? remote_->cache_bytes(cache) : 0);
  }
  // Hands blocks [remote->first_block(), num_layers) to `remote` from now on (set once, before the
  // model is shared; this model then holds none of those blocks).
  void set_remote_blocks(std::shared_ptr<RemoteBlocks> remote);
  RemoteBlocks* remote_blocks() const { return remote_.get(); }
  // Blocks that ran no experts get their empty [B,T,0] entry of `routing` (filled by blocks that did).
  static void complete_routing(std::vector<at::Tensor>& routing, const at::Tensor& latents);

  // The same pass one block at a time, for callers that recompute blocks during backward.
  // What the blocks of one pass share (rotary tables, masks), made once per pass.
  struct BlockContext {
    virtual ~BlockContext() = default;
    // When set, mixture-of-experts blocks store which experts each position used: entry l (of
    // num_layers) = int64 [B,T,k] for block l.
    std::vector<at::Tensor>* routing = nullptr;
  };
  // With a cache, the pass's slots are in it already (KVCache::append_slots).
  virtual std::unique_ptr<BlockContext> begin(const at::Tensor& latents, const Attention& attention,
                                              KVCache* cache = nullptr) const = 0;
  // The residual stream entering block 0 [B,T,D] (GPT-2 adds position embeddings; its Jacobian
  // with respect to the latents is the identity in every family).
  virtual at::Tensor input(const at::Tensor& latents, const BlockContext& context) const = 0;
  // Block `index` applied to the residual stream x [B,T,D].
  virtual at::Tensor block(int64_t index, const at::Tensor& x, const BlockContext& context) const = 0;
  // The final norm [B,T,D] -> [B,T,D].
  virtual at::Tensor final_norm(const at::Tensor& x) const = 0;

  // hidden [..., D] -> logits [..., V], or [..., V+K] with `extra_rows` [K,D] (a vocabulary
  // extension's classifier rows, whose logits follow the base vocabulary's).
  at::Tensor classify(const at::Tensor& hidden, const at::Tensor& extra_rows = {}) const;
  // The frozen tables that vocabulary extensions are initialised from, each [V,D].
  enum class Table { kTokenEmbedding, kOutputHead };
  // ids int64 [N] -> the table's rows [N,D] in dtype() (embedding rows unscaled).
  at::Tensor table_rows(Table table, const at::Tensor& ids) const;
  // The mean row [D] in dtype(), accumulated in float32 (float64 for a float64 model).
  at::Tensor table_mean(Table table) const;

 protected:
  Model(ModelConfig config, const LoadOptions& options);
  // Remembers a loaded weight for weights(), parameter_count() and storage(); returns it. An
  // undefined tensor (an optional weight the config leaves out) passes through unremembered.
  at::Tensor own(at::Tensor weight);
  std::shared_ptr<const PackedMatrix> own(std::shared_ptr<const PackedMatrix> weight);

  ModelConfig config_;
  c10::Device device_;
  c10::ScalarType dtype_;
  // [V,D] each, expanded (the tensor) or stored (the packed matrix; the tensor then undefined). A
  // tied head shares the embedding's.
  at::Tensor token_embedding_;
  at::Tensor output_head_;
  std::shared_ptr<const PackedMatrix> packed_embedding_;
  std::shared_ptr<const PackedMatrix> packed_head_;

 private:
  std::vector<at::Tensor> weights_;
  std::vector<std::shared_ptr<const PackedMatrix>> packed_;
  WeightStorage requested_storage_;
  std::shared_ptr<RemoteBlocks> remote_;
};

// Loads a Hugging Face checkpoint folder (config.json with model.safetensors, or with
// model.safetensors.index.json and its shards), or a .gguf file (architectures llama and qwen2;
// tensors F32, F16, BF16 or quantised Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K, dequantised
// to float32 and then converted to options.dtype). All or nothing: on any error no model is returned.
// Throws Error: kNotFound (no folder, file, config or weights), kDataLoss (corrupt files, missing or
// mis-shaped tensors), kInvalidArgument (unknown architecture or tensor type, unsupported config
// value, bad options).
std::unique_ptr<Model> load_model(const std::string& path, const LoadOptions& options = {});
// The configuration of the checkpoint at `path` (as load_model reads it), without its weights.
ModelConfig read_config(const std::string& path);
// The same from a GGUF file already read (io::GgufFile::open, or io::GgufFile::parse of bytes in
// memory); the model keeps no reference to it.
std::unique_ptr<Model> load_model(const io::GgufFile& file, const LoadOptions& options = {});

}  // namespace aios::backbone
AIOS_EXPORT_END
