// aios — command-line entry point.
//
//   aios info MODEL [--device cpu|cuda[:N]] [--dtype float32|bfloat16|float16]
//                   [--weights auto|expanded|stored|int8|int4] [--group-size N]
//   aios generate MODEL PROMPT [--chat] [--max-new-tokens N] [--temperature T] [--top-k K] [--top-p P]
//                              [--seed S] [--device ...] [--dtype ...] [--weights ...]
//   aios serve MODEL [--listen HOST:PORT | unix:PATH] [--keys FILE] [--state DIR] [--tls-cert PEM --tls-key PEM]
//                    [--replica N] [--compute-threads N] [--store-bytes N] [--unclaimed-ttl S]
//                    [--until-stdin-closes]
//                    [--stages N | --world N --rendezvous HOST:PORT] [--stage-blocks N0,N1,...]
//                    [--stage-timeout S] [--devices D0,D1,...]
//                    [--device ...] [--dtype ...] [--weights ...]
//   aios stage MODEL --rank R --world N --rendezvous HOST:PORT [--address A] [--stage-timeout S]
//                    [--until-stdin-closes] [--device ...] [--dtype ...] [--weights ...]
#include <chrono>
#include <csignal>
#include <pthread.h>
#include <cstdio>
#include <atomic>
#include <future>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "aios/fail.h"
#include "aios/local/local_backbone.h"
#include "aios/pipeline/pipeline.h"
#include "aios/server/host.h"
#include "aios/tokenizer_api/chat.h"
#include "aios/tokenizer_api/tokenizer.h"

namespace {

constexpr const char* kUsage =
    "usage: aios info MODEL [--device cpu|cuda[:N]] [--dtype float32|bfloat16|float16]\n"
    "                       [--weights auto|expanded|stored|int8|int4] [--group-size N]\n"
    "       aios generate MODEL PROMPT [--chat] [--max-new-tokens N] [--temperature T] [--top-k K]\n"
    "                                  [--top-p P] [--seed S] [--device ...] [--dtype ...] [--weights ...]\n"
    "       aios serve MODEL [--listen HOST:PORT | unix:PATH] [--keys FILE] [--state DIR] [--tls-cert PEM --tls-key PEM]\n"
    "                        [--replica N] [--compute-threads N] [--store-bytes N]\n"
    "                        [--unclaimed-ttl S] [--until-stdin-closes]\n"
    "                        [--stages N | --world N --rendezvous HOST:PORT] [--stage-blocks N0,N1,...]\n"
    "                        [--stage-timeout S] [--devices D0,D1,...]\n"
    "                        [--device ...] [--dtype ...] [--weights ...]\n"
    "       aios stage MODEL --rank R --world N --rendezvous HOST:PORT [--address A] [--stage-timeout S]\n"
    "                        [--until-stdin-closes] [--device ...] [--dtype ...] [--weights ...]\n"
    "\n"
    "  info       load a checkpoint and print what it holds\n"
    "  generate   stream the model's continuation of PROMPT (--chat: as the reply of a chat turn,\n"
    "             formatted with the model's chat template); greedy unless --temperature > 0\n"
    "  serve      host the model's Latent, Gradient, Tokenizer and Generation APIs over gRPC\n"
    "             (default 127.0.0.1:50051, loopback only; port 0 picks a free one) until\n"
    "             interrupted; --keys: a file of \"TENANT KEY [max_tokens=N ...]\" lines, each caller\n"
    "             then needs a key and sees only its tenant's handles, extensions and decoders;\n"
    "             --state: a folder for saved extensions and registered decoders; --tls-cert and\n"
    "             --tls-key: serve over TLS with this certificate and private key; --replica N: this\n"
    "             host's number among replicas behind a load balancer (0..65535, default 0; its\n"
    "             handles name it so that calls about them are routed back to it);\n"
    "             --compute-threads N: calls that compute at once (default 4; more wait);\n"
    "             --store-bytes N: the activation store's budget for every tenant's kept passes\n"
    "             together (default 4 GiB; a tenant's forwards only ever evict its own passes);\n"
    "             --unclaimed-ttl S: seconds a kept pass that no Vjp or Release has claimed stays\n"
    "             (its caller most likely left before the reply; default 60);\n"
    "             --until-stdin-closes: also stop when standard input ends (a parent that holds a\n"
    "             pipe to it takes the host down with it, even when killed);\n"
    "             --stages N: split the model's blocks over N processes on this machine, this\n"
    "             one (the front: tables, first blocks, the gRPC host) and N-1 stage workers it\n"
    "             starts; --world N --rendezvous HOST:PORT: the same with the N-1 workers started\n"
    "             elsewhere by `aios stage`, meeting at HOST:PORT, which this process serves;\n"
    "             --stage-blocks: blocks per process, front first (default: balanced by weights);\n"
    "             --stage-timeout S: the longest wait for another process within a call (default\n"
    "             600; past it the pipeline is lost and calls fail with unavailable);\n"
    "             --devices: one device per process, front first (default: --device for all)\n"
    "  stage      serve blocks of MODEL as stage R of N for the front at HOST:PORT (RANK,\n"
    "             WORLD_SIZE, MASTER_ADDR and MASTER_PORT are read when the flags are absent);\n"
    "             --address: where the other processes reach this one (default: this machine's\n"
    "             address on its route to HOST)\n"
    "\n"
    "  --weights  stored: kept as a GGUF file stores them (its quantised blocks) and decoded per\n"
    "             product, CPU only; expanded: converted to --dtype at load; auto (default): stored\n"
    "             on the CPU, expanded elsewhere; int8: float matrices quantised at load per row (a\n"
    "             GGUF file's quantised ones kept), CPU only; int4: the same in groups of\n"
    "             --group-size values along each row (default 128)\n";

std::string with_thousands(int64_t n) {
  std::string digits = std::to_string(n), out;
  for (std::size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out.push_back(',');
    out.push_back(digits[i]);
  }
  return out;
}

// "bos 1 <|im_start|>, eos 2 <|im_end|>, pad none": the special ids the checkpoint names, with
// their tokens where the tokenizer has them.
std::string special_tokens(const aios::ModelInfo& c, const aios::tokenizer::Tokenizer* tokenizer) {
  const auto named = [&](int64_t id) {
    std::string out = std::to_string(id);
    if (tokenizer != nullptr && id >= 0 && id < tokenizer->vocab_size()) {
      try {
        out = fmt::format("{} {}", id, tokenizer->id_to_token(static_cast<int32_t>(id)));
      } catch (const aios::Error&) {
        // an id without a token: the number says it all
      }
    }
    return out;
  };
  std::vector<std::string> eos;
  for (int64_t id : c.eos_ids) eos.push_back(named(id));
  return fmt::format("bos {}, eos {}, pad {}", c.bos_id ? named(*c.bos_id) : "none",
                     eos.empty() ? "none" : fmt::format("{}", fmt::join(eos, " / ")), c.pad_id ? named(*c.pad_id) : "none");
}

int info(const std::string& path, const aios::local::LoadOptions& options) {
  const auto start = std::chrono::steady_clock::now();
  auto backbone = aios::local::LocalBackbone::load(path, options);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const aios::ModelInfo& c = backbone->config();
  fmt::print("model           {}\n", path);
  fmt::print("architecture    {} ({} family)\n", c.architecture, c.family);
  fmt::print("layers          {}\n", c.num_layers);
  fmt::print("hidden size     {}\n", c.hidden_size);
  fmt::print("heads           {} query, {} key/value, head dim {}\n", c.num_heads, c.num_kv_heads, c.head_dim);
  fmt::print("mlp width       {}\n", c.intermediate_size);
  fmt::print("vocabulary      {}\n", c.vocab_size);
  fmt::print("max positions   {}\n", c.max_positions);
  fmt::print("output head     {}\n", c.tie_word_embeddings ? "tied to the embedding" : "separate");
  fmt::print("special tokens  {}\n", special_tokens(c, backbone->tokenizer().get()));
  fmt::print("parameters      {}\n", with_thousands(backbone->parameter_count()));
  int64_t total = 0;
  for (const aios::WeightKind& k : c.storage) total += k.bytes;
  fmt::print("weights         {}, {:.1f} MB resident\n", c.weights, static_cast<double>(total) / 1e6);
  for (const aios::WeightKind& k : c.storage) {
    fmt::print("  {:<13} {:>5} tensors {:>15} values {:>10.1f} MB\n", k.kind, k.tensors, with_thousands(k.elements),
               static_cast<double>(k.bytes) / 1e6);
  }
  fmt::print("dtype           {}\n", c.dtype);
  fmt::print("device          {}\n", c.device);
  fmt::print("load time       {:.3f} s\n", seconds);
  return 0;
}

// Streams the continuation of `prompt` to stdout as its tokens arrive.
int generate(const std::string& path, const aios::local::LoadOptions& options, const std::string& prompt, bool chat,
             const aios::ali::GenerateOptions& generate_options) {
  auto backbone = aios::local::LocalBackbone::load(path, options);
  const std::shared_ptr<const aios::tokenizer::Tokenizer> tokenizer = backbone->tokenizer();
  if (!tokenizer) aios::fail(aios::ErrorCode::kNotFound, path, "expected a tokenizer with the model");
  std::string text = prompt;
  if (chat) {
    const std::optional<std::string> chat_template = backbone->chat_template();
    if (!chat_template) aios::fail(aios::ErrorCode::kNotFound, "--chat", "the model has no chat template");
    text = aios::tokenizer::render_chat(*chat_template, {{"user", prompt}});
  }
  const std::vector<int32_t> prompt_ids = tokenizer->encode(text, /*add_special_tokens=*/!chat);
  if (prompt_ids.empty()) aios::fail(aios::ErrorCode::kInvalidArgument, "PROMPT", "expected a non-empty prompt");
  const at::Tensor ids = at::tensor(std::vector<int64_t>(prompt_ids.begin(), prompt_ids.end())).unsqueeze(0);
  aios::ali::GenerateOptions o = generate_options;
  for (int32_t id : aios::tokenizer::end_of_turn_ids(*tokenizer)) o.stop_ids.push_back(id);

  // Text is printed as it becomes whole: a token may end inside a multi-byte character.
  std::vector<int32_t> generated;
  std::size_t printed = 0;
  backbone->generate(backbone->embed(ids), o, [&](const aios::ali::GenerationStep& step) {
    const auto id = static_cast<int32_t>(step.ids[0].item<int64_t>());
    if (id >= 0 && !tokenizer->is_special(id)) generated.push_back(id);
    const std::string so_far = tokenizer->decode(generated);
    const bool partial = std::string_view(so_far).ends_with("\xEF\xBF\xBD");  // U+FFFD: a character in progress
    if (so_far.size() > printed && !partial) {
      std::fputs(so_far.c_str() + printed, stdout);
      std::fflush(stdout);
      printed = so_far.size();
    }
    return true;
  });
  const std::string all = tokenizer->decode(generated);
  if (all.size() > printed) std::fputs(all.c_str() + printed, stdout);
  std::fputs("\n", stdout);
  return 0;
}

// Calls `leave` once standard input ends (a parent holding a pipe to it is gone). Detached: when
// the process ends first, it exits with this thread in read().
void on_stdin_end(void (*leave)()) {
  std::thread([leave] {
    char buffer[256];
    while (read(STDIN_FILENO, buffer, sizeof buffer) > 0) {
    }
    leave();
  }).detach();
}

// How `serve` splits the model over processes (world 1: all in this one).
struct Split {
  int64_t world = 1;
  bool local_workers = false;  // --stages: this process starts the workers
  aios::pipeline::PipelineOptions options;
  std::vector<c10::Device> devices;  // per process, front first; empty: LoadOptions::device for all
};

// Starts `aios stage` for rank `rank` from this executable; the worker dies with this process.
pid_t start_stage(const std::string& path, const aios::local::LoadOptions& options, int64_t rank, const Split& split,
                  int port) {
  std::vector<std::string> args = {
      "aios", "stage", path, "--rank", std::to_string(rank), "--world", std::to_string(split.world),
      "--rendezvous", fmt::format("127.0.0.1:{}", port), "--stage-timeout",
      fmt::format("{}", static_cast<double>(split.options.timeout.count()) / 1000.0), "--device",
      (split.devices.empty() ? options.device : split.devices[static_cast<std::size_t>(rank)]).str(), "--dtype",
      aios::backbone::dtype_name(options.dtype), "--weights", aios::backbone::weight_storage_name(options.weights),
      "--group-size", std::to_string(options.group_size), "--until-stdin-closes"};
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  // The worker reads a pipe whose other end only this process holds: it leaves when the pipe
  // ends, that is when this process does, however it ends.
  int pipe_ends[2];
  if (pipe2(pipe_ends, O_CLOEXEC) != 0) aios::fail(aios::ErrorCode::kUnavailable, "stages", "cannot make a pipe");
  const pid_t pid = fork();
  if (pid == 0) {
    // Only async-signal-safe calls until exec: no inherited signal mask, the pipe as standard
    // input, logs to stderr (the front's stdout announces the address).
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    dup2(pipe_ends[0], STDIN_FILENO);
    dup2(STDERR_FILENO, STDOUT_FILENO);
    execv("/proc/self/exe", argv.data());
    _exit(127);
  }
  close(pipe_ends[0]);
  if (pid < 0) {
    close(pipe_ends[1]);
    aios::fail(aios::ErrorCode::kUnavailable, "stages", "cannot start a stage worker");
  }
  return pid;  // pipe_ends[1] stays open for this process's life
}

// Waits up to `patience` for the workers to leave, then kills the rest.
void end_stages(std::vector<pid_t>& workers, std::chrono::milliseconds patience) {
  const auto deadline = std::chrono::steady_clock::now() + patience;
  for (pid_t pid : workers) {
    while (waitpid(pid, nullptr, WNOHANG) == 0) {
      if (std::chrono::steady_clock::now() > deadline) {
        kill(pid, SIGKILL);
        waitpid(pid, nullptr, 0);
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
  workers.clear();
}

// The stage workers this process started, replaced whole when the pipeline is formed again.
struct Workers {
  std::mutex mutex;
  std::vector<pid_t> pids;
};

std::shared_ptr<aios::local::LocalBackbone> load_backbone(const std::string& path, const aios::local::LoadOptions& options,
                                                          const aios::local::StoreOptions& store, const Split& split,
                                                          Workers& workers, std::atomic<aios::server::Host*>& host) {
  if (split.world == 1) return aios::local::LocalBackbone::load(path, options, store);
  aios::local::LoadOptions front = options;
  if (!split.devices.empty()) front.device = split.devices[0];
  auto launch = [&, path, options, split](int port) {
    if (!split.local_workers) return;
    std::lock_guard lock(workers.mutex);
    end_stages(workers.pids, std::chrono::milliseconds(0));  // a hung worker would never rejoin
    for (int64_t r = 1; r < split.world; ++r) workers.pids.push_back(start_stage(path, options, r, split, port));
  };
  auto serving = [&host](bool serving) {
    if (aios::server::Host* h = host.load()) h->set_serving(serving);
  };
  try {
    return aios::pipeline::load_front(path, front, store, split.options, launch, serving);
  } catch (...) {
    std::lock_guard lock(workers.mutex);
    end_stages(workers.pids, std::chrono::milliseconds(0));
    throw;
  }
}

// Serves until SIGINT or SIGTERM (or the end of standard input, with `until_stdin_closes`), then
// drains the calls in flight.
int serve(const std::string& path, const aios::local::LoadOptions& options, const aios::local::StoreOptions& store,
          const aios::server::HostOptions& host_options, bool until_stdin_closes, const Split& split) {
  // Blocked here, before any thread starts, so that every thread inherits the mask and the
  // signals wait for sigwait below instead of interrupting a call.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  aios::server::tune_allocator_for_hosting();
  Workers workers;
  std::atomic<aios::server::Host*> serving_host{nullptr};
  {
    // Loaded on a thread that ends before serving: a thread that ran LibTorch's parallel regions
    // keeps its team of OpenMP workers for good, and with more such threads than cores OpenMP's
    // workers sleep between regions instead of spinning, so the host's compute threads would run
    // 1.2-1.3x slower beside an idle team of this one.
    // (The future's end joins the thread.)
    const std::shared_ptr<aios::local::LocalBackbone> backbone =
        std::async(std::launch::async, [&] { return load_backbone(path, options, store, split, workers, serving_host); })
            .get();
    aios::server::Host host(backbone, host_options);
    serving_host = &host;
    // What a client connects to: the host with the port it took (":0" picks one), or the Unix socket.
    const std::string& listen = host_options.listen;
    const std::string address =
        listen.starts_with("unix:") ? listen : fmt::format("{}:{}", listen.substr(0, listen.rfind(':')), host.port());
    fmt::print("serving {} on {}\n", path, address);
    std::fflush(stdout);
    if (until_stdin_closes) on_stdin_end([] { kill(getpid(), SIGTERM); });
    int received = 0;
    sigwait(&signals, &received);
    serving_host = nullptr;
    host.shutdown();
  }  // the backbone's end tells the stages to leave
  std::lock_guard lock(workers.mutex);
  end_stages(workers.pids, std::chrono::seconds(10));
  return 0;
}

// One stage worker, until the front shuts it down.
int stage(const std::string& path, const aios::local::LoadOptions& options, int64_t rank,
          const aios::pipeline::PipelineOptions& pipeline, bool until_stdin_closes) {
  if (until_stdin_closes) on_stdin_end([] { _exit(0); });
  aios::pipeline::serve_stage(path, options, rank, pipeline);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  try {
    if (args.empty() || args[0] == "-h" || args[0] == "--help") {
      std::fputs(kUsage, args.empty() ? stderr : stdout);
      return args.empty() ? 2 : 0;
    }
    const std::string command = args[0];
    if (command != "info" && command != "generate" && command != "serve" && command != "stage") {
      aios::fail(aios::ErrorCode::kInvalidArgument, "command", "expected info, generate, serve or stage, got \"{}\"",
                 command);
    }
    Split split;
    int64_t rank = -1;
    aios::server::HostOptions host_options;
    aios::local::StoreOptions store;
    aios::local::LoadOptions options;
    aios::ali::GenerateOptions generation;
    generation.max_new_tokens = 128;
    bool chat = false;
    bool until_stdin_closes = false;
    std::vector<std::string> positional;
    auto number = [&](std::size_t i) {
      try {
        std::size_t used = 0;
        const double value = std::stod(args[i + 1], &used);
        if (used == args[i + 1].size()) return value;
      } catch (const std::exception&) {
      }
      aios::fail(aios::ErrorCode::kInvalidArgument, args[i], "expected a number, got \"{}\"", args[i + 1]);
    };
    auto whole = [&](std::size_t i, double lo, double hi) {
      const double value = number(i);
      if (!(value >= lo && value <= hi) || value != static_cast<double>(static_cast<int64_t>(value))) {
        aios::fail(aios::ErrorCode::kInvalidArgument, args[i], "expected a whole number in [{}, {}], got \"{}\"", lo, hi,
                   args[i + 1]);
      }
      return static_cast<int64_t>(value);
    };
    auto split_list = [](const std::string& text) {
      std::vector<std::string> out;
      std::size_t start = 0;
      for (std::size_t comma; (comma = text.find(',', start)) != std::string::npos; start = comma + 1) {
        out.push_back(text.substr(start, comma - start));
      }
      out.push_back(text.substr(start));
      return out;
    };
    auto count = [](const std::string& text, const std::string& field) -> int64_t {
      try {
        std::size_t used = 0;
        const long long value = std::stoll(text, &used);
        if (used == text.size() && value >= 0) return value;
      } catch (const std::exception&) {
      }
      aios::fail(aios::ErrorCode::kInvalidArgument, field, "expected a whole number, got \"{}\"", text);
    };
    for (std::size_t i = 1; i < args.size(); ++i) {
      const std::string& a = args[i];
      const bool has_value = i + 1 < args.size();
      if (a == "--device" && has_value) {
        options.device = aios::backbone::parse_device(args[++i], "--device");
      } else if (a == "--dtype" && has_value) {
        options.dtype = aios::backbone::parse_dtype(args[++i], "--dtype");
      } else if (a == "--weights" && has_value) {
        options.weights = aios::backbone::parse_weight_storage(args[++i], "--weights");
      } else if (a == "--group-size" && has_value) {
        options.group_size = whole(i++, 1, 1 << 30);
      } else if (command == "serve" && a == "--listen" && has_value) {
        host_options.listen = args[++i];
      } else if (command == "serve" && a == "--replica" && has_value) {
        host_options.replica = whole(i++, 0, 0xffff);
      } else if (command == "serve" && a == "--keys" && has_value) {
        aios::server::KeyFile keys = aios::server::read_key_file(args[++i], host_options.quota);
        host_options.api_keys = std::move(keys.api_keys);
        host_options.quotas = std::move(keys.quotas);
      } else if (command == "serve" && a == "--compute-threads" && has_value) {
        host_options.compute_threads = whole(i++, 1, 256);
      } else if (command == "serve" && a == "--store-bytes" && has_value) {
        store.max_bytes = static_cast<std::size_t>(whole(i++, 1, 9.0e18));
      } else if (command == "serve" && a == "--unclaimed-ttl" && has_value) {
        const double seconds = number(i++);
        if (!(seconds > 0 && seconds <= 86400)) {
          aios::fail(aios::ErrorCode::kInvalidArgument, a, "expected seconds in (0, 86400], got \"{}\"", args[i]);
        }
        host_options.unclaimed_ttl = std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000));
      } else if ((command == "serve" || command == "stage") && a == "--until-stdin-closes") {
        until_stdin_closes = true;
      } else if (command == "serve" && a == "--state" && has_value) {
        host_options.state_dir = args[++i];
      } else if (command == "serve" && a == "--tls-cert" && has_value) {
        host_options.tls_certificate = args[++i];
      } else if (command == "serve" && a == "--tls-key" && has_value) {
        host_options.tls_private_key = args[++i];
      } else if (command == "serve" && a == "--stages" && has_value) {
        split.world = whole(i++, 1, 1024);
        split.local_workers = true;
      } else if ((command == "serve" || command == "stage") && a == "--world" && has_value) {
        split.world = whole(i++, 1, 1024);
      } else if ((command == "serve" || command == "stage") && a == "--rendezvous" && has_value) {
        split.options.rendezvous = args[++i];
      } else if (command == "stage" && a == "--rank" && has_value) {
        rank = whole(i++, 1, 1023);
      } else if ((command == "serve" || command == "stage") && a == "--address" && has_value) {
        split.options.address = args[++i];
      } else if (command == "serve" && a == "--stage-blocks" && has_value) {
        split.options.blocks.clear();
        for (const std::string& n : split_list(args[++i])) split.options.blocks.push_back(count(n, a));
      } else if (command == "serve" && a == "--devices" && has_value) {
        split.devices.clear();
        for (const std::string& d : split_list(args[++i])) split.devices.push_back(aios::backbone::parse_device(d, a));
      } else if ((command == "serve" || command == "stage") && a == "--stage-timeout" && has_value) {
        const double seconds = number(i++);
        if (!(seconds > 0 && seconds <= 86400)) {
          aios::fail(aios::ErrorCode::kInvalidArgument, a, "expected seconds in (0, 86400], got \"{}\"", args[i]);
        }
        split.options.timeout = std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000));
      } else if (command == "generate" && a == "--chat") {
        chat = true;
      } else if (command == "generate" && a == "--max-new-tokens" && has_value) {
        generation.max_new_tokens = static_cast<int64_t>(number(i++));
      } else if (command == "generate" && a == "--temperature" && has_value) {
        generation.sampling.temperature = number(i++);
      } else if (command == "generate" && a == "--top-k" && has_value) {
        generation.sampling.top_k = static_cast<int64_t>(number(i++));
      } else if (command == "generate" && a == "--top-p" && has_value) {
        generation.sampling.top_p = number(i++);
      } else if (command == "generate" && a == "--seed" && has_value) {
        generation.sampling.seed = static_cast<uint64_t>(number(i++));
      } else if (a.rfind("--", 0) != 0 && positional.size() < (command == "generate" ? 2u : 1u)) {
        positional.push_back(a);
      } else {
        aios::fail(aios::ErrorCode::kInvalidArgument, "arguments", "unexpected \"{}\"", a);
      }
    }
    if (positional.empty()) aios::fail(aios::ErrorCode::kInvalidArgument, "MODEL", "expected a checkpoint");
    if (command == "info") return info(positional[0], options);
    if (command == "serve") {
      if (split.world > 1) {
        split.options.world = split.world;
        if (!split.local_workers && split.options.rendezvous.ends_with(":0")) {
          aios::fail(aios::ErrorCode::kInvalidArgument, "--rendezvous",
                     "expected HOST:PORT with a port the stage workers are told, got \"{}\"", split.options.rendezvous);
        }
        if (!split.devices.empty() && static_cast<int64_t>(split.devices.size()) != split.world) {
          aios::fail(aios::ErrorCode::kInvalidArgument, "--devices", "expected {} devices (one per process), got {}",
                     split.world, split.devices.size());
        }
      }
      return serve(positional[0], options, store, host_options, until_stdin_closes, split);
    }
    if (command == "stage") {
      // torchrun's variables stand in for absent flags.
      auto env = [](const char* name) -> std::string {
        const char* value = std::getenv(name);
        return value != nullptr ? value : "";
      };
      if (rank < 0 && !env("RANK").empty()) rank = count(env("RANK"), "RANK");
      if (split.world == 1 && !env("WORLD_SIZE").empty()) split.world = count(env("WORLD_SIZE"), "WORLD_SIZE");
      if (split.options.rendezvous == aios::pipeline::PipelineOptions{}.rendezvous && !env("MASTER_ADDR").empty()) {
        split.options.rendezvous = env("MASTER_ADDR") + ":" + env("MASTER_PORT");
      }
      if (rank < 0) aios::fail(aios::ErrorCode::kInvalidArgument, "--rank", "expected the stage's rank (or RANK)");
      split.options.world = split.world;
      return stage(positional[0], options, rank, split.options, until_stdin_closes);
    }
    if (positional.size() < 2) aios::fail(aios::ErrorCode::kInvalidArgument, "PROMPT", "expected a prompt");
    return generate(positional[0], options, positional[1], chat, generation);
  } catch (const aios::Error& e) {
    fmt::print(stderr, "aios: {}\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    fmt::print(stderr, "aios: internal: {}\n", e.what());
    return 1;
  }
}
