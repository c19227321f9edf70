"""The interface's own tests, run again against hosted backbones.

Inside each test here, aios.Backbone.load(path) serves the checkpoint with `aios serve` on loopback
(one host per checkpoint for the module) and returns aios.connect(...) to it, so the tests written
for the in-process backbone check the hosted one: extensions and their row gradients against
transformers, the Gradient API's losses and cotangents, generation against generation without a
cache, sessions, and the tokenizer. What only an in-process backbone offers (decoders written in
Python, store options, other dtypes) stays in the other files; loads with options stay in-process.
"""
import pytest
import torch

import aios
from conftest import ARCHITECTURES
import test_experts
import test_extension
import test_generation
import test_gradient
import test_parity


@pytest.fixture(scope="module")
def hosts():
    running = {}
    yield running
    for host in running.values():
        host.stop()


@pytest.fixture
def hosted(monkeypatch, hosts):
    load = aios.Backbone.load

    def load_hosted(path, **options):
        if options:
            return load(path, **options)
        if str(path) not in hosts:
            hosts[str(path)] = aios.serve(path)
        return aios.connect(hosts[str(path)].address, timeout=120)

    monkeypatch.setattr(aios.Backbone, "load", staticmethod(load_hosted))
    return load_hosted


@pytest.fixture
def remote_backbones(hosted, checkpoints):
    return {name: hosted(c.path) for name, c in checkpoints.items()}


@pytest.fixture
def remote_smollm(hosted, default_model):
    return hosted(default_model)


def test_loads_here_are_hosted(hosted, checkpoints):
    assert isinstance(aios.Backbone.load(checkpoints["llama_gqa"].path), aios.RemoteBackbone)
    assert isinstance(aios.Backbone.load(checkpoints["llama_gqa"].path, dtype="float32"), aios.LocalBackbone)


# ---- Latent API --------------------------------------------------------------------------------

def config_fields(config):
    return {name: getattr(config, name) for name in dir(aios.Config) if not name.startswith("_")}


@pytest.mark.parametrize("name", ARCHITECTURES + ["default_model"])
def test_the_hosts_description_is_the_local_one(hosted, checkpoints, default_model, name):
    path = default_model if name == "default_model" else checkpoints[name].path
    local = aios.Backbone.load(path, dtype="float32")  # with options: in-process, not hosted
    remote = hosted(path)
    assert isinstance(local, aios.LocalBackbone) and isinstance(remote, aios.RemoteBackbone)
    fields = config_fields(local.config)
    assert {"family", "rope", "norm", "sliding_windows", "dtype", "device", "eos_ids"} <= fields.keys()
    assert config_fields(remote.config) == fields
    assert remote.config == local.config


@pytest.mark.parametrize("name", ["llama_gqa", "gpt2", "qwen2", "qwen3_window", "qwen3_moe"])
def test_parity_with_transformers(hosted, checkpoints, name):
    checkpoint = checkpoints[name]
    test_parity.test_every_layer_and_logits_match(checkpoint)
    test_parity.test_padded_batch_matches_at_real_tokens(checkpoint, "left")
    test_parity.test_full_mask_is_used_as_given(checkpoint)


def test_routing_comes_back_from_the_host(hosted, checkpoints):
    test_experts.test_routing_is_transformers_choice_of_experts(checkpoints, "qwen3_moe")
    test_experts.test_kept_passes_return_routing_and_backward_records_nothing(checkpoints)


# ---- Gradient API ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["llama_gqa", "qwen3_moe"])  # a dense family and one with experts
@pytest.mark.parametrize("mask_kind", ["causal", "padding", "gist"])
def test_vjp_and_fused_losses_match_transformers(checkpoints, remote_backbones, name, mask_kind):
    checkpoint = checkpoints[name]
    test_gradient.test_vjp_matches_transformers_for_every_cotangent(checkpoint, remote_backbones, mask_kind)
    test_gradient.test_fused_losses_match_transformers(checkpoint, remote_backbones, mask_kind)


def test_gradient_forms_agree_and_distillation(remote_backbones):
    test_gradient.test_fused_agrees_with_handle_form_and_unchunked_reference(remote_backbones)
    test_gradient.test_self_distillation_from_teacher_latents(remote_backbones)
    test_gradient.test_gradients_hidden_by_the_mask_are_exactly_zero(remote_backbones)
    test_gradient.test_upstream_module_trains_through_the_backbone(remote_backbones)


# ---- Tokenizer API: extensions -----------------------------------------------------------------

@pytest.mark.parametrize("name", ["llama_gqa", "qwen2", "gpt2_untied_sharded"])
def test_extension_outputs_and_row_gradients_match_transformers(hosted, checkpoints, name):
    test_extension.test_outputs_and_row_gradients_match_an_enlarged_transformers_model(checkpoints, name)


def test_extension_training_and_distillation(hosted, checkpoints):
    test_extension.test_distillation_spans_the_extension(checkpoints)
    test_extension.test_training_moves_only_the_new_rows_and_the_loss_falls(checkpoints)


def test_extension_tokenizer(hosted, default_model, tmp_path):
    test_extension.test_extension_tokenizer_and_tokens_already_in_the_base(default_model, tmp_path)


def test_rows_updated_here_reach_the_host(hosted, checkpoints):
    """Training updates the local rows in place; the next call that names the extension sends them."""
    path = checkpoints["llama_gqa"].path
    local, remote = aios.Backbone.load(path, dtype="float32"), aios.Backbone.load(path)
    V = local.config.vocab_size
    ext_local, ext_remote = local.extend(["<a>", "<b>"]), remote.extend(["<a>", "<b>"])
    assert torch.equal(ext_remote.embedding_rows, ext_local.embedding_rows)
    ids = torch.tensor([[1, V, 5, V + 1]])
    for step in range(3):
        for backbone, ext in ((local, ext_local), (remote, ext_remote)):
            with torch.no_grad():
                ext.embedding_rows.add_(0.1 * (step + 1))
                ext.classifier_rows.mul_(1.5)
        want = local.classify(local.forward(local.embed(ids, extension=ext_local)).hidden, extension=ext_local)
        got = remote.classify(remote.forward(remote.embed(ids, extension=ext_remote)).hidden, extension=ext_remote)
        assert torch.allclose(got, want, atol=1e-5)


# ---- Generation --------------------------------------------------------------------------------

def test_generation_on_the_host(remote_smollm, default_model):
    test_generation.test_default_model_cache_and_transformers(remote_smollm, default_model)
    test_generation.test_batched_prompts_equal_one_by_one(remote_smollm, "left")
    test_generation.test_stop_tokens_lengths_and_streaming(remote_smollm)
    test_generation.test_a_session_continues_the_same_context(remote_smollm)
    test_generation.test_sampling_is_reproducible_and_filtered(remote_smollm)
    test_generation.test_latent_prompts_and_extension_tokens(remote_smollm)


def test_generation_equals_local(remote_smollm, default_model):
    local = aios.Backbone.load(default_model, dtype="float32")
    tok = local.tokenizer
    ids = torch.tensor([tok.encode("The three primary colours are", add_special_tokens=False)])
    want = local.generate(local.embed(ids), max_new_tokens=12)
    got = remote_smollm.generate(remote_smollm.embed(ids), max_new_tokens=12)
    assert torch.equal(got.ids, want.ids) and torch.equal(got.lengths, want.lengths)
    assert torch.allclose(got.hidden, want.hidden, atol=1e-4)
    assert remote_smollm.chat_template == local.chat_template


def test_a_hosted_session_is_the_hosts_and_continues_as_a_local_one(remote_smollm, default_model):
    local = aios.Backbone.load(default_model, dtype="float32")
    ids = [torch.tensor([local.tokenizer.encode(text, add_special_tokens=False)])
           for text in ("Name three colours:", " Now three animals:")]
    sessions = {local: local.new_session(), remote_smollm: remote_smollm.new_session()}
    got = {b: [b.generate(b.embed(i), max_new_tokens=5, session=s).ids for i in ids] for b, s in sessions.items()}
    assert [t.tolist() for t in got[remote_smollm]] == [t.tolist() for t in got[local]]
    hosted, here = sessions[remote_smollm], sessions[local]
    assert (hosted.batch_size, hosted.length, hosted.bytes) == (here.batch_size, here.length, here.bytes)
    assert torch.equal(hosted.next_positions, here.next_positions)
    with pytest.raises(aios.InvalidArgumentError) as info:  # a session of another backbone
        remote_smollm.generate(remote_smollm.embed(ids[0]), max_new_tokens=1, session=here)
    assert info.value.field == "session"


def test_local_decoders_stay_in_process(remote_smollm):
    latents = remote_smollm.embed(torch.tensor([[1, 2, 3]]))

    class Echo(aios.Decoder):
        def step(self, row, hidden):
            return aios.DecoderStep(done=True)

    with pytest.raises(aios.UnimplementedError) as info:
        remote_smollm.generate(latents, routes=[(5, 6, Echo())])
    assert info.value.field == "routes.decoder"


def test_routes_go_to_decoders_registered_on_the_host(hosted, checkpoints, tmp_path):
    """A decoder saved here runs on the host: the same ids, routes and outputs as in-process."""
    path = checkpoints["llama_gqa"].path
    local, remote = aios.Backbone.load(path, dtype="float32"), aios.Backbone.load(path)
    V, D = local.config.vocab_size, local.config.hidden_size
    torch.manual_seed(0)
    aios.adapters.save_decoder(aios.adapters.LinearDecoder(D, 4, span=3), tmp_path / "boxes")
    prompt = local.embed(torch.tensor([[1, 2, 3, 4], [7, 8, 9, 10]]))
    start = local.generate(prompt, max_new_tokens=3).ids[0, 1].item()  # emitted by row 0 at its 2nd step
    end = (start + 1) % V

    def run(backbone, decoder):
        return list(backbone.stream(prompt, max_new_tokens=10, routes=[(start, end, decoder)]))

    want = run(local, aios.adapters.load_decoder(tmp_path / "boxes"))
    got = run(remote, remote.register_decoder("boxes", tmp_path / "boxes"))
    assert len(got) == len(want)
    assert any(s.routes[0].item() == 0 for s in want)  # the span did happen
    for g, w in zip(got, want):
        assert torch.equal(g.ids, w.ids) and torch.equal(g.routes, w.routes) and torch.equal(g.finished, w.finished)
        for a, b in zip(g.outputs, w.outputs):
            assert (a is None) == (b is None)
            if a is not None:
                assert torch.allclose(a, b, atol=1e-5)
    with pytest.raises(aios.NotFoundError):
        remote.register_decoder("x", tmp_path / "missing")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "decoder.json").write_text('{"format": "aios.decoder", "kind": "os.system"}')
    with pytest.raises(aios.Error):
        remote.register_decoder("bad", tmp_path / "bad")
    for name in ("../up", ".staging-x"):
        with pytest.raises(aios.InvalidArgumentError):
            remote.register_decoder(name, tmp_path / "boxes")
    # The module a manifest asks for is built before its weights are read: sizes that the bytes
    # sent cannot fill, or of another hidden size, are refused before anything is allocated.
    import json, shutil
    for sizes in ({"dim": D, "out_features": 10**7, "span": 3}, {"dim": D + 1, "out_features": 4, "span": 3}):
        shutil.copytree(tmp_path / "boxes", tmp_path / "huge", dirs_exist_ok=True)
        manifest = json.loads((tmp_path / "huge" / "decoder.json").read_text())
        manifest["sizes"] = sizes
        (tmp_path / "huge" / "decoder.json").write_text(json.dumps(manifest))
        with pytest.raises(aios.InvalidArgumentError) as info:
            remote.register_decoder("huge", tmp_path / "huge")
        assert info.value.field.startswith("sizes")
