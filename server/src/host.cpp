#include "aios/server/host.h"

#include <cstdio>
#include <mutex>
#include <string_view>

#include <google/protobuf/stubs/logging.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/support/server_interceptor.h>

#include "aios/fail.h"
#include "aios/io/files.h"
#include "services.h"

namespace aios::server {
namespace {

// Adds "aios-replica: N" to the initial metadata of every reply (errors included), so operators
// and tests can see which replica answered a call that went through a load balancer.
class ReplicaTag final : public grpc::experimental::Interceptor {
 public:
  explicit ReplicaTag(const std::string& replica) : replica_(replica) {}
  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(grpc::experimental::InterceptionHookPoints::PRE_SEND_INITIAL_METADATA)) {
      methods->GetSendInitialMetadata()->emplace("aios-replica", replica_);
    }
    methods->Proceed();
  }

 private:
  const std::string replica_;
};

class ReplicaTags final : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit ReplicaTags(int64_t replica) : replica_(std::to_string(replica)) {}
  grpc::experimental::Interceptor* CreateServerInterceptor(grpc::experimental::ServerRpcInfo*) override {
    return new ReplicaTag(replica_);
  }

 private:
  std::string replica_;
};


// protobuf logs an error line for every string field of invalid UTF-8 it parses, so without this
// any caller could write to the host's log at will (its call is answered INVALID_ARGUMENT anyway).
// Other messages go to stderr as protobuf's own handler writes them.
void protobuf_log(google::protobuf::LogLevel level, const char* file, int line, const std::string& message) {
  if (level == google::protobuf::LOGLEVEL_ERROR && std::string_view(file).ends_with("wire_format_lite.cc")) return;
  static const char* const kLevels[] = {"INFO", "WARNING", "ERROR", "FATAL"};
  std::fprintf(stderr, "[libprotobuf %s %s:%d] %s\n", kLevels[level], file, line, message.c_str());
}

}  // namespace

struct Host::Impl {
  Impl(std::shared_ptr<gradient::Backbone> backbone, const HostOptions& options) : requests(std::move(backbone), options) {
    for (auto add : {add_latent_calls, add_gradient_calls, add_tokenizer_calls, add_generation_calls}) {
      handlers.push_back(add(requests, calls));
    }
    carrier = calls.service();
    chunked = make_chunked_service(requests, calls);
  }
  Requests requests;
  Calls calls;
  std::vector<std::unique_ptr<Handlers>> handlers;
  std::unique_ptr<grpc::Service> carrier;  // every call of the table
  std::unique_ptr<grpc::Service> chunked;
  std::unique_ptr<grpc::Server> server;
  int port = 0;
};

Host::Host(std::shared_ptr<gradient::Backbone> backbone, const HostOptions& options) {
  if (options.replica < 0 || options.replica > 0xffff) {
    fail(ErrorCode::kInvalidArgument, "replica", "expected a number in [0, 65535], got {}", options.replica);
  }
  // The dtypes the wire's model description carries (a client of a float64 host could not read it).
  const std::string& dtype = backbone->config().dtype;
  if (dtype != "float32" && dtype != "bfloat16" && dtype != "float16") {
    fail(ErrorCode::kInvalidArgument, "dtype", "a host serves float32, bfloat16 or float16 backbones, got {}", dtype);
  }
  impl_ = std::make_unique<Impl>(std::move(backbone), options);
  static std::once_flag quiet_protobuf;
  std::call_once(quiet_protobuf, [] { google::protobuf::SetLogHandler(protobuf_log); });
  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  std::shared_ptr<grpc::ServerCredentials> credentials = grpc::InsecureServerCredentials();
  if (!options.tls_certificate.empty() || !options.tls_private_key.empty()) {
    grpc::SslServerCredentialsOptions tls;
    tls.pem_key_cert_pairs.push_back({io::read_file(options.tls_private_key), io::read_file(options.tls_certificate)});
    credentials = grpc::SslServerCredentials(tls);
  }
  std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> interceptors;
  interceptors.push_back(std::make_unique<ReplicaTags>(options.replica));
  builder.experimental().SetInterceptorCreators(std::move(interceptors));
  builder.AddListeningPort(options.listen, credentials, &impl_->port);
  if (options.max_message_bytes < 1024) {
    fail(ErrorCode::kInvalidArgument, "max_message_bytes", "expected at least 1024, got {}", options.max_message_bytes);
  }
  const int64_t message_limit = std::min<int64_t>(std::numeric_limits<int>::max(), options.max_message_bytes);
  builder.SetMaxReceiveMessageSize(static_cast<int>(message_limit));
  builder.SetMaxSendMessageSize(static_cast<int>(message_limit));
  builder.RegisterService(impl_->carrier.get());
  builder.RegisterService(impl_->chunked.get());
  impl_->server = builder.BuildAndStart();
  if (!impl_->server || impl_->port == 0) {
    fail(ErrorCode::kUnavailable, "listen", "cannot listen on {}", options.listen);
  }
}

Host::~Host() { shutdown(std::chrono::seconds(1)); }

int Host::port() const { return impl_->port; }

void Host::set_serving(bool serving) { impl_->server->GetHealthCheckService()->SetServingStatus(serving); }

void Host::wait() { impl_->server->Wait(); }

void Host::shutdown(std::chrono::milliseconds grace) {
  impl_->server->Shutdown(std::chrono::system_clock::now() + grace);
}

}  // namespace aios::server
