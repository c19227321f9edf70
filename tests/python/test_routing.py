"""Routed generation: after the classifier emits a route's start token, a Python aios.Decoder takes
the row inside the decode loop until it ends the span; then the end token is fed and the row
returns to the classifier. Checked against a recomputation without a cache."""
import gc

import pytest
import torch

import aios

PROMPT = [3, 14, 15, 92, 65, 35]
OTHER = [7, 2, 9, 8, 6, 40]


class Scripted(aios.Decoder):
    """Takes three positions of a row: feeds script[0], script[1], then ends the span."""

    def __init__(self, script, log=None):
        super().__init__()
        self.script, self.log = script, log
        self.seen = {}   # row -> hidden states [D] it was given
        self.count = {}  # row -> positions taken in the span in progress
        self.begins = 0

    def begin(self, row):
        self.begins += 1
        self.count[row] = 0

    def step(self, row, hidden):
        self.seen.setdefault(row, []).append(hidden.clone())
        if self.log is not None:
            self.log.append("decoder")
        k = self.count[row]
        self.count[row] += 1
        if k == 2:
            return aios.DecoderStep(output=torch.tensor([float(k)]), done=True)
        return aios.DecoderStep(output=torch.tensor([float(k)]), latent=self.script[k])


@pytest.fixture(scope="module")
def setup(checkpoints):
    """A backbone and an extension whose <sox> the model emits at step 2 of PROMPT."""
    backbone = aios.Backbone.load(checkpoints["llama_gqa"].path)
    D = backbone.config.hidden_size
    h = backbone.generate(backbone.embed(torch.tensor([PROMPT])), max_new_tokens=3).hidden[0]  # [3,D]
    # The part of step 2's hidden state orthogonal to those of steps 0 and 1: <sox>'s logit is 0
    # there (below the best base token) and large at step 2.
    q, _ = torch.linalg.qr(h[:2].T)
    row = h[2] - q @ (q.T @ h[2])
    torch.manual_seed(5)
    ext = backbone.extend(["<sox>", "<eox>"], init=(torch.randn(2, D), torch.stack([row * 20 / (row @ h[2]),
                                                                                 torch.zeros(D)])))
    script = [torch.randn(D), torch.randn(1, D, dtype=torch.float64)]
    return backbone, ext, script


def routed_without_cache(backbone, ext, prompt, script, steps):
    """The same rule by a full forward over the whole sequence at every step: ids and decoder inputs."""
    V = backbone.config.vocab_size
    latents = backbone.embed(torch.tensor([prompt]))
    ids, seen, in_span = [], [], None
    for _ in range(steps):
        h = backbone.forward(latents).hidden[0, -1]
        feed = None
        if in_span is not None:
            seen.append(h)
            if in_span < 2:
                ids.append(-2)
                feed = script[in_span].reshape(1, 1, -1).float()
                in_span += 1
            else:
                ids.append(V + 1)
                in_span = None
        else:
            ids.append(backbone.classify(h, extension=ext).argmax().item())
            in_span = 0 if ids[-1] == V else None
        if feed is None:
            feed = backbone.embed(torch.tensor([[ids[-1]]]), extension=ext)
        latents = torch.cat([latents, feed], 1)
    return ids, seen


def assert_all_close(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-4)


def test_a_span_goes_to_the_decoder_and_back(setup):
    backbone, ext, script = setup
    V = backbone.config.vocab_size
    log = []
    decoder = Scripted(script, log)
    steps = []
    for step in backbone.stream(backbone.embed(torch.tensor([PROMPT])), max_new_tokens=12, extension=ext,
                                routes=[(V, V + 1, decoder)]):
        log.append(f"step {step.index}")
        steps.append(step)
    ids = [s.ids[0].item() for s in steps]
    routes = [s.routes[0].item() for s in steps]
    # <sox> at step 2; the decoder takes steps 3, 4, 5 (two latents, then <eox>); the classifier step 6.
    assert ids[2:6] == [V, -2, -2, V + 1] and V not in ids[:2]
    assert routes[:7] == [-1, -1, -1, 0, 0, 0, -1]
    assert [s.outputs[0] is None for s in steps] == [r == -1 for r in routes]
    assert [s.outputs[0].item() for s in steps[3:6]] == [0.0, 1.0, 2.0]
    # Streaming order: each decoder call happens while its step is computed, before it is read.
    want_log = []
    for s in steps:
        want_log += ["decoder"] * (s.routes[0].item() == 0) + [f"step {s.index}"]
    assert log == want_log
    # Without a cache: the decoder saw the hidden states of <sox> and its latents, and the tokens
    # after <eox> are the classifier's over the whole sequence.
    want_ids, want_seen = routed_without_cache(backbone, ext, PROMPT, script, 12)
    assert ids == want_ids
    assert_all_close(decoder.seen[0], want_seen)
    torch.testing.assert_close(steps[3].hidden[0], want_seen[0], rtol=1e-4, atol=1e-4)
    assert decoder.begins == (len(want_seen) + 2) // 3
    # generate() gives the same, routes per step included; routed positions count as generated.
    result = backbone.generate(backbone.embed(torch.tensor([PROMPT])), max_new_tokens=12, extension=ext,
                               routes=[(V, V + 1, Scripted(script))])
    assert result.ids[0].tolist() == ids and result.routes[0].tolist() == routes
    assert result.lengths.tolist() == [12]
    cut = backbone.generate(backbone.embed(torch.tensor([PROMPT])), max_new_tokens=4, extension=ext,
                            routes=[(V, V + 1, Scripted(script))])
    assert cut.ids[0].tolist() == ids[:4]
    stopped = backbone.generate(backbone.embed(torch.tensor([PROMPT])), max_new_tokens=12, extension=ext,
                                stop_ids=[V + 1], routes=[(V, V + 1, Scripted(script))])
    assert stopped.lengths.tolist() == [6]


def test_rows_are_routed_independently(setup):
    backbone, ext, script = setup
    V = backbone.config.vocab_size
    batched_decoder = Scripted(script)
    batched = backbone.generate(backbone.embed(torch.tensor([PROMPT, OTHER])), max_new_tokens=12, extension=ext,
                                routes=[(V, V + 1, batched_decoder)])
    for i, prompt in enumerate([PROMPT, OTHER]):
        alone_decoder = Scripted(script)
        alone = backbone.generate(backbone.embed(torch.tensor([prompt])), max_new_tokens=12, extension=ext,
                                  routes=[(V, V + 1, alone_decoder)])
        assert batched.ids[i].tolist() == alone.ids[0].tolist()
        assert batched.routes[i].tolist() == alone.routes[0].tolist()
        torch.testing.assert_close(batched.hidden[i], alone.hidden[0], rtol=1e-4, atol=1e-4)
        assert_all_close(batched_decoder.seen.get(i, []), alone_decoder.seen.get(0, []))
    assert 0 in batched_decoder.seen


def test_a_dropped_decoder_lives_as_long_as_the_generation(setup):
    backbone, ext, script = setup
    V = backbone.config.vocab_size
    stream = backbone.stream(backbone.embed(torch.tensor([PROMPT])), max_new_tokens=8, extension=ext,
                             routes=[(V, V + 1, Scripted(script))])
    gc.collect()
    assert [s.routes[0].item() for s in stream][:7] == [-1, -1, -1, 0, 0, 0, -1]


def test_bad_routes_and_failing_decoders(setup):
    backbone, ext, script = setup
    V = backbone.config.vocab_size
    latents = backbone.embed(torch.tensor([PROMPT]))
    decoder = Scripted(script)
    bad = [([(V, V, decoder)], "routes[0].end_id"), ([(V + 2, V + 1, decoder)], "routes[0].start_id"),
           ([(V, -1, decoder)], "routes[0].end_id"), ([(V, V + 1, None)], "routes[0].decoder"),
           ([(V, V + 1, decoder), (V, 5, decoder)], "routes[1].start_id")]
    for routes, field in bad:
        with pytest.raises(aios.InvalidArgumentError) as e:
            backbone.generate(latents, extension=ext, routes=routes)
        assert e.value.field == field, routes
    with pytest.raises(aios.InvalidArgumentError) as e:  # without the extension, V is no token
        backbone.generate(latents, routes=[(V, V + 1, decoder)])
    assert e.value.field == "routes[0].start_id"
    with pytest.raises(aios.InvalidArgumentError) as e:
        backbone.generate(latents, extension=ext, routes=[(V, V + 1, object())])
    assert e.value.field == "routes[0].decoder" and "object" in str(e.value)

    class Raising(aios.Decoder):
        def step(self, row, hidden):
            raise ValueError("decoder broke")

    class WrongLatent(aios.Decoder):
        def step(self, row, hidden):
            return aios.DecoderStep(latent=torch.zeros(3))

    class Abstract(aios.Decoder):
        pass

    stream = backbone.stream(latents, max_new_tokens=8, extension=ext, routes=[(V, V + 1, Raising())])
    with pytest.raises(ValueError, match="decoder broke"):
        list(stream)
    assert list(stream) == []  # the generation ended with the error
    with pytest.raises(aios.InvalidArgumentError) as e:
        backbone.generate(latents, max_new_tokens=8, extension=ext, routes=[(V, V + 1, WrongLatent())])
    assert e.value.field == "routes[0].decoder"
    with pytest.raises(RuntimeError, match="pure virtual"):
        backbone.generate(latents, max_new_tokens=8, extension=ext, routes=[(V, V + 1, Abstract())])


def test_a_decoder_may_feed_tokens(setup):
    backbone, ext, script = setup
    V = backbone.config.vocab_size

    class Tokens(aios.Decoder):
        def __init__(self):
            super().__init__()
            self.k = 0

        def begin(self, row):
            self.k = 0

        def step(self, row, hidden):
            self.k += 1
            return aios.DecoderStep(done=True) if self.k == 3 else aios.DecoderStep(token=40 + self.k)

    latents = backbone.embed(torch.tensor([PROMPT]))
    got = backbone.generate(latents, max_new_tokens=8, extension=ext, routes=[(V, V + 1, Tokens())])
    assert got.ids[0, 2:6].tolist() == [V, 41, 42, V + 1]
    # Back at the classifier: the token that follows the whole sequence, as if it had been a prompt.
    whole = torch.tensor([PROMPT + got.ids[0, :6].tolist()])
    after = backbone.generate(backbone.embed(whole, extension=ext), max_new_tokens=1, extension=ext)
    assert got.ids[0, 6].item() == after.ids[0, 0].item() and got.routes[0, 6].item() == -1
