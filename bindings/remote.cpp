// aios.RemoteBackbone, a backbone hosted by `aios serve`, and aios.connect.
#include "bindings.h"

#include <chrono>
#include <string>

#include "aios/fail.h"
#include "aios/server/remote_backbone.h"

namespace aios::python {

namespace {

using aios::server::RemoteBackbone;
using Interface = aios::gradient::Backbone;  // what both the local and the remote backbone implement

}  // namespace

void bind_remote(py::module_& m) {
  py::class_<RemoteBackbone, Interface, std::shared_ptr<RemoteBackbone>>(
      m, "RemoteBackbone", "A backbone hosted by `aios serve` (aios.connect); results arrive on the CPU.")
      .def(
          "register_decoder",
          [](RemoteBackbone& b, const std::string& name, const py::object& path) {
            const std::string folder = py::str(py::module_::import("os").attr("fspath")(path));
            py::gil_scoped_release release;
            return b.register_decoder(name, folder);
          },
          py::arg("name"), py::arg("path"),
          "Sends a decoder folder (aios.adapters.save_decoder) to the host as this tenant's decoder `name`; the "
          "result goes in routes=[(start, end, decoder)] of this backbone's generations, which run it on the host.");
  m.def(
      "connect",
      [](const py::object& host, const std::string& api_key, double timeout, bool tls, py::object root_certificates) {
        // A HostProcess (aios.serve) stands for its address and, when it serves TLS, its certificate.
        std::string address;
        if (py::isinstance<py::str>(host)) {
          address = host.cast<std::string>();
        } else if (py::hasattr(host, "address") && py::isinstance<py::str>(host.attr("address"))) {
          address = host.attr("address").cast<std::string>();
          const py::object certificate = py::getattr(host, "certificate", py::none());
          if (root_certificates.is_none() && !certificate.is_none()) root_certificates = certificate;
        } else {
          aios::fail(aios::ErrorCode::kInvalidArgument, "address", "expected \"host:port\" or a HostProcess, got {}",
                     py::str(py::type::of(host).attr("__name__")).cast<std::string>());
        }
        if (!(timeout > 0) || timeout > 1e7) {
          aios::fail(aios::ErrorCode::kInvalidArgument, "timeout", "expected seconds in (0, 1e7], got {}", timeout);
        }
        aios::wire::ConnectOptions options;
        options.api_key = api_key;
        options.tls = tls || !root_certificates.is_none();
        if (!root_certificates.is_none()) {
          options.tls_root_certificates = py::str(py::module_::import("os").attr("fspath")(root_certificates));
        }
        options.timeout = std::chrono::milliseconds(static_cast<int64_t>(timeout * 1000));
        py::gil_scoped_release release;
        return RemoteBackbone::connect(address, options);
      },
      py::arg("address"), py::kw_only(), py::arg("api_key") = "", py::arg("timeout") = 300.0, py::arg("tls") = false,
      py::arg("root_certificates") = py::none(),
      "A backbone hosted at address (\"host:port\", or the HostProcess that aios.serve returned) by "
      "`aios serve`, used like Backbone.load(...)'s: Latent, Gradient and "
      "Tokenizer APIs, extensions (trained here, their rows sent with the next call after an update) and "
      "generation on the host (routes to decoders registered with register_decoder; no sessions). api_key: for "
      "a host started with --keys. timeout: seconds per call. tls: the host serves TLS; root_certificates: a PEM "
      "file of the certificates to trust (implies tls; default: the system's, or the certificate of a HostProcess "
      "started with tls).");
}

}  // namespace aios::python
