// A program run as a child process for tests that watch or kill it: `aios serve`, the crash
// writer. Its stdout and stderr go to files (read them once it has ended); its stdin is a pipe
// from this process, so that `aios serve --until-stdin-closes` ends with the test even when the
// test dies first.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <optional>
#include <regex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

extern char** environ;

namespace aios_test {

inline std::string read_text(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

class ChildProcess {
 public:
  // Runs `argv` (argv[0] a path) with stdout and stderr written to `logs`.out and `logs`.err, in
  // this process's environment with `env` ("NAME=VALUE") set and without gRPC tracing.
  ChildProcess(const std::vector<std::string>& argv, const std::filesystem::path& logs,
               const std::vector<std::string>& env = {})
      : out_(logs.string() + ".out"), err_(logs.string() + ".err") {
    std::vector<std::string> environment = env;
    for (char** e = environ; *e != nullptr; ++e) {
      const std::string entry(*e);
      const std::string name = entry.substr(0, entry.find('=') + 1);
      bool replaced = name == "GRPC_TRACE=";
      for (const std::string& mine : env) replaced = replaced || mine.rfind(name, 0) == 0;
      if (!replaced) environment.push_back(entry);
    }
    std::vector<char*> envp;
    for (std::string& e : environment) envp.push_back(e.data());
    envp.push_back(nullptr);
    int stdin_pipe[2];
    if (::pipe2(stdin_pipe, O_CLOEXEC) != 0) throw std::runtime_error("pipe2 failed");
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, stdin_pipe[0], 0);
    posix_spawn_file_actions_addopen(&actions, 1, out_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_addopen(&actions, 2, err_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    std::vector<char*> args;
    for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    const int spawned = ::posix_spawn(&pid_, args[0], &actions, nullptr, args.data(), envp.data());
    posix_spawn_file_actions_destroy(&actions);
    ::close(stdin_pipe[0]);
    stdin_ = stdin_pipe[1];
    if (spawned != 0) {
      ::close(stdin_);
      throw std::runtime_error("cannot start " + argv[0]);
    }
  }
  ~ChildProcess() {
    if (!status_) {
      ::kill(pid_, SIGKILL);
      wait();
    }
    if (stdin_ >= 0) ::close(stdin_);
  }
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  pid_t pid() const { return pid_; }
  bool running() {
    if (status_) return false;
    int status = 0;
    if (::waitpid(pid_, &status, WNOHANG) == pid_) status_ = status;
    return !status_;
  }
  // Waits for the `pattern`'s first match in stdout (its first group), for up to `timeout`; empty
  // when the process ended or the time passed first.
  std::optional<std::string> wait_for_output(const std::regex& pattern,
                                             std::chrono::seconds timeout = std::chrono::seconds(120)) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
      std::smatch match;
      const std::string text = out();
      if (std::regex_search(text, match, pattern)) return match.size() > 1 ? match[1].str() : match[0].str();
      if (!running()) return std::nullopt;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return std::nullopt;
  }
  void signal(int number) {
    if (!status_) ::kill(pid_, number);
  }
  // The wait status once the process has ended.
  int wait() {
    if (!status_) {
      int status = 0;
      while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
      }
      status_ = status;
    }
    return *status_;
  }
  std::string out() const { return read_text(out_); }
  std::string err() const { return read_text(err_); }

 private:
  std::string out_, err_;
  pid_t pid_ = -1;
  int stdin_ = -1;
  std::optional<int> status_;
};

// `aios serve MODEL --listen 127.0.0.1:0 --until-stdin-closes ARGS...` (the binary this build
// made), listening once constructed.
class ServeProcess {
 public:
  ServeProcess(const std::string& model, const std::vector<std::string>& args, const std::filesystem::path& logs,
               const std::vector<std::string>& env = {})
      : process_(command(model, args), logs, env) {
    const auto port = process_.wait_for_output(std::regex("serving .* on 127\\.0\\.0\\.1:(\\d+)\n"));
    if (!port) throw std::runtime_error("aios serve did not start: " + process_.out() + process_.err());
    address_ = "127.0.0.1:" + *port;
  }
  const std::string& address() const { return address_; }
  ChildProcess& process() { return process_; }

 private:
  static std::vector<std::string> command(const std::string& model, const std::vector<std::string>& args) {
    std::vector<std::string> argv = {AIOS_CLI, "serve", model, "--listen", "127.0.0.1:0", "--until-stdin-closes"};
    argv.insert(argv.end(), args.begin(), args.end());
    return argv;
  }
  ChildProcess process_;
  std::string address_;
};

}  // namespace aios_test
