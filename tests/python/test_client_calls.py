"""The generator of the clients' calls (wire/client_calls.py): what it makes of the "aios:"
annotations of a contract, and the mistakes in one that it refuses, naming where they are."""
import subprocess
import sys
from pathlib import Path

import pytest

GENERATOR = Path(__file__).resolve().parents[2] / "wire" / "client_calls.py"

CONTRACT = """
syntax = "proto3";
package aios.v1;
enum DType { DTYPE_UNSPECIFIED = 0; }
message Tensor { DType dtype = 1; repeated int64 shape = 2; bytes data = 3; }
message Ref { string id = 1; }
message ScaleRequest {
  Tensor latents = 1;
  Ref extension = 2;
  double factor = 3;
  oneof how { Tensor a = 4; Tensor b = 5; }
  repeated int64 layers = 6;
}
message Counts { int64 passes = 1; int64 bytes = 2; }
message Empty {}
service Things {
  // latents [B,T,D] -> [B,T,D], times factor.
  // aios: Latents scale(const Latents& latents, double factor, const How& how, const Extension* extension = nullptr) -> latents
  rpc Scale(ScaleRequest) returns (Tensor);

  // How many, and their bytes.
  // aios: std::size_t passes() const -> passes
  // aios: std::size_t bytes() const -> bytes
  rpc Count(Empty) returns (Counts);

  rpc Plain(Empty) returns (Empty);
}
"""

TYPES = """# a client
qualifier: override
Latents: at::Tensor
How: Loss
Extension: ali::Extension
"""


def generate(tmp_path, contract=CONTRACT, types=TYPES, mode="define"):
    (tmp_path / "aios.proto").write_text(contract)
    (tmp_path / "c.types").write_text(types)
    out = tmp_path / "out.inc"
    run = subprocess.run([sys.executable, str(GENERATOR), str(tmp_path / "aios.proto"), str(tmp_path / "c.types"),
                          str(out), "--mode", mode, "--class", "Remote"], capture_output=True, text=True)
    return run.returncode, out.read_text() if out.exists() else "", run.stderr


def test_declarations_carry_the_types_of_the_client_and_the_documentation_of_the_contract(tmp_path):
    rc, text, err = generate(tmp_path, mode="declare")
    assert rc == 0, err
    assert ("// latents [B,T,D] -> [B,T,D], times factor.\n"
            "at::Tensor scale(const at::Tensor& latents, double factor, const Loss& how, "
            "const ali::Extension* extension = nullptr) override;") in text
    assert ("// How many, and their bytes.\nstd::size_t passes() const override;\n\n"
            "std::size_t bytes() const override;") in text  # an rpc's comments document its first call
    assert "plain" not in text.lower()  # an rpc without an annotation is no client call


def test_definitions_write_each_parameter_into_its_field_and_read_the_reply(tmp_path):
    rc, text, err = generate(tmp_path)
    assert rc == 0, err
    assert "at::Tensor Remote::scale(const at::Tensor& latents, double factor, const Loss& how, " \
           "const ali::Extension* extension) {" in text
    assert 'out.write(latents, [&] { return request.mutable_latents(); }, "latents");' in text
    assert 'out.write(factor, [&](auto value) { request.set_factor(value); }, "factor");' in text
    assert 'out.write(how, request, "how");' in text  # no such field: the request itself (a oneof)
    assert 'out.write(extension, [&] { return request.mutable_extension(); }, "extension");' in text
    assert 'out.call("/aios.v1.Things/Scale", request, &reply);' in text
    assert 'return out.read<at::Tensor>(reply, "latents");' in text  # the reply itself, so named
    assert "std::size_t Remote::passes() const {" in text
    assert 'return out.read<std::size_t>(reply.bytes(), "bytes");' in text  # a field of the reply


def test_a_client_without_a_type_leaves_out_its_parameters(tmp_path):
    types = TYPES.replace("ali::Extension", "-").replace("override", "const")
    rc, text, err = generate(tmp_path, types=types, mode="declare")
    assert rc == 0, err
    assert "at::Tensor scale(const at::Tensor& latents, double factor, const Loss& how) const;" in text
    assert "std::size_t passes() const;" in text


@pytest.mark.parametrize("contract, types, expected", [
    (CONTRACT, TYPES.replace("How: Loss\n", ""), "c.types gives no C++ type for 'How'"),
    (CONTRACT, TYPES.replace("How: Loss", "How: -"), "how has no default, so it cannot be left out"),
    (CONTRACT.replace("const How& how", "const Layers& layers"), TYPES + "Layers: std::vector<int64_t>\n",
     "layers is a repeated field"),
    (CONTRACT.replace("rpc Count(Empty) returns (Counts)", "rpc Count(Empty) returns (stream Counts)"), TYPES,
     "only unary rpcs"),
    (CONTRACT.replace("aios: std::size_t bytes() const -> bytes", "aios: bytes"), TYPES, "expected 'aios: Type"),
    (CONTRACT, TYPES + "Latents at::Tensor\n", "expected 'Name: C++ type'"),
    (CONTRACT.replace("const How& how", "const How& hwo"), TYPES, "ScaleRequest has no field or oneof 'hwo'"),
    (CONTRACT.replace("  rpc Plain(Empty)", "  // aios: void plain()\n\n  rpc Plain(Empty)"), TYPES,
     "must stand right above an rpc on one line, not above 'a blank line'"),
    (CONTRACT.replace("  rpc Plain(Empty) returns (Empty);", "  // aios: void plain()\n  rpc Plain(Empty)\n"
                      "      returns (Empty);"), TYPES, "must stand right above an rpc on one line"),
])
def test_mistakes_are_refused_naming_where_they_are(tmp_path, contract, types, expected):
    rc, text, err = generate(tmp_path, contract=contract, types=types)
    assert rc != 0 and expected in err and text == ""


def test_an_output_that_would_not_change_is_not_rewritten(tmp_path):
    assert generate(tmp_path)[0] == 0
    out = tmp_path / "out.inc"
    before = out.stat().st_mtime_ns
    assert generate(tmp_path)[0] == 0
    assert out.stat().st_mtime_ns == before
