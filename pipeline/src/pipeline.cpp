#include "aios/pipeline/pipeline.h"

#include <arpa/inet.h>

#include <future>
#include <numeric>
#include <thread>

#include <nlohmann/json.hpp>

#include "aios/fail.h"
#include "front.h"
#include "stage.h"

namespace aios::pipeline {

namespace {

std::pair<std::string, int> host_and_port(const std::string& text) {
  const std::size_t colon = text.rfind(':');
  int port = -1;
  if (colon != std::string::npos && colon > 0) {
    try {
      std::size_t used = 0;
      port = std::stoi(text.substr(colon + 1), &used);
      if (used != text.size() - colon - 1) port = -1;
    } catch (const std::exception&) {
    }
  }
  if (port < 0 || port > 65535) fail(ErrorCode::kInvalidArgument, "rendezvous", "expected HOST:PORT, got \"{}\"", text);
  return {text.substr(0, colon), port};
}

void check_world(const PipelineOptions& options) {
  if (options.world < 2 || options.world > 1024) {
    fail(ErrorCode::kInvalidArgument, "world", "expected 2 to 1024 processes, got {}", options.world);
  }
}

// What a stage reports once loaded: its weights' storage, or the error that stopped it.
std::string ready_text(const std::vector<WeightKind>& storage) {
  nlohmann::json kinds = nlohmann::json::array();
  for (const WeightKind& k : storage) {
    kinds.push_back({{"kind", k.kind}, {"tensors", k.tensors}, {"elements", k.elements}, {"bytes", k.bytes}});
  }
  return nlohmann::json{{"storage", kinds}}.dump();
}

std::string error_text(const Error& e) {
  return nlohmann::json{{"code", static_cast<int>(e.code())}, {"field", e.field()}, {"message", e.message()}}.dump();
}

// Adds a stage's storage to `total`, or throws the error it reported.
void add_ready(const std::string& text, int64_t rank, std::vector<WeightKind>& total) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const std::exception&) {
    fail(ErrorCode::kInternal, "pipeline", "stage {} reported \"{}\"", rank, text);
  }
  if (j.contains("code")) {
    throw Error(static_cast<ErrorCode>(j["code"].get<int>()), j["field"].get<std::string>(),
                fmt::format("pipeline stage {}: {}", rank, j["message"].get<std::string>()));
  }
  for (const auto& k : j["storage"]) {
    const std::string kind = k["kind"].get<std::string>();
    auto found = std::find_if(total.begin(), total.end(), [&](const WeightKind& w) { return w.kind == kind; });
    if (found == total.end()) {
      total.push_back(WeightKind{});
      found = total.end() - 1;
      found->kind = kind;
    }
    found->tensors += k["tensors"].get<int64_t>();
    found->elements += k["elements"].get<int64_t>();
    found->bytes += k["bytes"].get<int64_t>();
  }
}

// Elements of block `i`'s weights (projections, norms aside).
double block_weights(const backbone::ModelConfig& c, int64_t i) {
  const double D = static_cast<double>(c.hidden_size), hd = static_cast<double>(c.head_dim);
  const backbone::DeltaNetConfig& d = c.delta_net;
  const bool recurrent = !d.layers.empty() && d.layers[static_cast<std::size_t>(i)];
  // Gated DeltaNet: q, k, v, z, b, a in and the output back; gated attention: a gate beside q.
  const double attention =
      recurrent ? D * static_cast<double>(2 * d.num_key_heads * d.key_head_dim + 3 * d.num_value_heads * d.value_head_dim +
                                          2 * d.num_value_heads)
                : D * hd * static_cast<double>((c.family == backbone::Family::kQwen3Next ? 3 : 2) * c.num_heads +
                                               2 * c.num_kv_heads);
  const bool experts = !c.moe.layers.empty() && c.moe.layers[static_cast<std::size_t>(i)];
  const double mlp = experts ? 3.0 * D * static_cast<double>(c.moe.num_experts * c.moe.expert_size + c.moe.shared_expert_size)
                             : 3.0 * D * static_cast<double>(c.intermediate_size);
  return attention + mlp;
}

}  // namespace

std::vector<int64_t> balanced_blocks(const backbone::ModelConfig& c, int64_t world) {
  const int64_t L = c.num_layers;
  if (world < 1 || L < world - 1) {
    fail(ErrorCode::kInvalidArgument, "stages", "expected at most {} processes for a model of {} blocks, got {}", L + 1,
         L, world);
  }
  std::vector<double> weight(static_cast<std::size_t>(L));
  for (int64_t i = 0; i < L; ++i) weight[static_cast<std::size_t>(i)] = block_weights(c, i);
  const double tables = static_cast<double>(c.vocab_size * c.hidden_size) * (c.tie_word_embeddings ? 1.0 : 2.0);
  const double total = std::accumulate(weight.begin(), weight.end(), tables);
  // Greedy from the front: each process takes blocks while that brings it closer to its share of
  // what is left, leaving at least one block for every later stage.
  std::vector<int64_t> blocks;
  double left = total;
  int64_t next = 0;
  for (int64_t r = 0; r < world; ++r) {
    const double share = left / static_cast<double>(world - r);
    double held = r == 0 ? tables : 0.0;
    int64_t count = 0;
    const int64_t must_leave = world - 1 - r;
    while (next + count < L - must_leave) {
      const double w = weight[static_cast<std::size_t>(next + count)];
      const bool needed = r > 0 && count == 0;
      if (!needed && r + 1 < world && std::abs(held + w - share) >= std::abs(held - share)) break;
      held += w;
      ++count;
    }
    blocks.push_back(count);
    next += count;
    left -= held;
  }
  return blocks;
}

std::unique_ptr<local::LocalBackbone> load_front(const std::string& path, const backbone::LoadOptions& load,
                                                 const local::StoreOptions& store, const PipelineOptions& options,
                                                 const std::function<void(int port)>& launch,
                                                 const std::function<void(bool serving)>& serving) {
  check_world(options);
  const auto [host, port] = host_and_port(options.rendezvous);
  const backbone::ModelConfig config = backbone::read_config(path);
  const int world = static_cast<int>(options.world);
  std::vector<int64_t> blocks = options.blocks.empty() ? balanced_blocks(config, world) : options.blocks;
  Layout layout;
  layout.bounds.push_back(0);
  for (int64_t n : blocks) layout.bounds.push_back(layout.bounds.back() + n);
  if (static_cast<int>(blocks.size()) != world || layout.num_layers() != config.num_layers) {
    fail(ErrorCode::kInvalidArgument, "blocks", "expected blocks for {} processes summing to {}, got {}", world,
         config.num_layers, layout.text());
  }
  layout = Layout::parse(layout.text(), "blocks");

  auto rendezvous = std::make_shared<Rendezvous>(host, port, /*server=*/true, world, options.join_timeout);
  rendezvous->set("layout", layout.text());
  auto storage = std::make_shared<std::vector<WeightKind>>();
  const std::string address = options.address.empty() ? host : options.address;
  // Epoch e: (re)launch the local workers, wait until every stage has loaded (or said why it could
  // not), then form the link under its own prefix.
  Stages::Form form = [=](int64_t epoch) {
    const std::string prefix = fmt::format("link{}", epoch);
    rendezvous->set("epoch", std::to_string(epoch));
    if (launch) launch(rendezvous->port());
    storage->clear();
    for (int r = 1; r < world; ++r) add_ready(rendezvous->get(fmt::format("{}/ready/{}", prefix, r)), r, *storage);
    return Link::join(*rendezvous, prefix, address, 0, world, options.timeout);
  };
  // The front's share loads while the stages load theirs.
  backbone::LoadOptions own = load;
  own.first_block = 0;
  own.end_block = layout.end(0);
  own.tables = true;
  std::future<std::unique_ptr<backbone::Model>> loading =
      std::async(std::launch::async, [&] { return backbone::load_model(path, own); });
  std::unique_ptr<Link> first = form(0);
  std::unique_ptr<backbone::Model> model = loading.get();
  CacheCost cost;
  const auto element = static_cast<int64_t>(c10::elementSize(model->dtype()));
  const backbone::DeltaNetConfig& d = config.delta_net;
  for (int64_t l = layout.first(1); l < layout.num_layers(); ++l) {
    const bool recurrent = !d.layers.empty() && d.layers[static_cast<std::size_t>(l)];
    const int64_t channels = 2 * d.num_key_heads * d.key_head_dim + d.num_value_heads * d.value_head_dim;
    if (recurrent) {  // KVCache::LayerState: convolution inputs in the model dtype, the state in float32
      cost.per_row += static_cast<std::size_t>(channels * (d.conv_kernel - 1) * element +
                                               d.num_value_heads * d.key_head_dim * d.value_head_dim * 4);
    } else {
      cost.per_slot += static_cast<std::size_t>(2 * config.num_kv_heads * config.head_dim * element);
    }
  }
  auto stages = std::make_shared<Stages>(std::move(first), form, layout, *storage, cost, options.timeout, serving);
  model->set_remote_blocks(stages);
  return local::LocalBackbone::wrap(std::move(model), path, store);
}

void serve_stage(const std::string& path, const backbone::LoadOptions& load, int64_t rank,
                 const PipelineOptions& options) {
  check_world(options);
  if (rank < 1 || rank >= options.world) {
    fail(ErrorCode::kInvalidArgument, "rank", "expected a stage rank in [1, {}), got {}", options.world, rank);
  }
  const auto [host, port] = host_and_port(options.rendezvous);
  if (port == 0) fail(ErrorCode::kInvalidArgument, "rendezvous", "expected the front's port, got 0");
  const int world = static_cast<int>(options.world);
  Rendezvous rendezvous(host, port, /*server=*/false, world, options.join_timeout);
  const Layout layout = Layout::parse(rendezvous.get("layout"), "layout");
  if (layout.world() != world) {
    fail(ErrorCode::kInvalidArgument, "world", "the front serves {} processes, this stage was told {}", layout.world(),
         world);
  }
  const std::string address =
      options.address.empty() ? Rendezvous::local_address_towards(host, port) : options.address;
  auto epoch = [&] { return std::stoll(rendezvous.get("epoch")); };
  int64_t joined = epoch();
  backbone::LoadOptions own = load;
  own.first_block = layout.first(static_cast<int>(rank));
  own.end_block = layout.end(static_cast<int>(rank));
  own.tables = false;
  std::unique_ptr<backbone::Model> model;
  try {
    model = backbone::load_model(path, own);
  } catch (const Error& e) {
    rendezvous.set(fmt::format("link{}/ready/{}", joined, rank), error_text(e));
    throw;
  }
  for (;;) {
    const std::string prefix = fmt::format("link{}", joined);
    rendezvous.set(prefix + "/ready/" + std::to_string(rank), ready_text(model->storage()));
    try {
      std::unique_ptr<Link> link = Link::join(rendezvous, prefix, address, static_cast<int>(rank), world, options.timeout);
      serve_requests(*link, *model, layout, options.timeout);
      return;
    } catch (const Error& e) {
      if (e.code() != ErrorCode::kUnavailable) throw;
      fmt::print(stderr, "aios: stage {}: the link was lost ({}); waiting for the front to form a new one\n", rank,
                 e.what());
    }
    // The front forms the next link under a new epoch; a front that is gone ends this wait with an
    // error (its store goes with it).
    const auto deadline = std::chrono::steady_clock::now() + options.join_timeout;
    while (epoch() <= joined) {
      if (std::chrono::steady_clock::now() > deadline) {
        fail(ErrorCode::kUnavailable, "rendezvous", "the front formed no new link in time");
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    joined = epoch();
  }
}

}  // namespace aios::pipeline
