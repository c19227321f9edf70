"""Text in, text out: prompts through the model's tokenizer and chat template, replies streamed.

    backbone.generate_text("Why is the sky blue?", chat=True)          # -> str
    for piece in backbone.stream_text("Once upon a time", max_new_tokens=50):
        print(piece, end="", flush=True)

Both stop at the tokenizer's end-of-turn tokens (<|im_end|>, <|endoftext|>, </s>, ...) and take
the sampling arguments of Backbone.generate (temperature, top_k, top_p, seed, max_new_tokens).
"""
import torch

from ._aios import end_of_turn_ids


def apply_chat_template(template, messages, add_generation_prompt=True):
    """Renders a model's Jinja chat template in a sandbox (templates are untrusted text)."""
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise ValueError(f"chat template: {message}")

    # The environment transformers renders templates in, so that outputs agree.
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template).render(messages=messages, add_generation_prompt=add_generation_prompt)


def _prompt_ids(backbone, prompt, chat):
    tokenizer = backbone.tokenizer
    if tokenizer is None:
        raise ValueError("the backbone has no tokenizer; tokenize and use Backbone.generate")
    if chat:
        template = backbone.chat_template
        if template is None:
            raise ValueError("the model has no chat template")
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        return tokenizer, tokenizer.encode(apply_chat_template(template, messages), add_special_tokens=False)
    return tokenizer, tokenizer.encode(prompt)


def stream_text(backbone, prompt, *, chat=False, max_new_tokens=128, **sampling):
    """Yields the reply to `prompt` (a string, or with chat=True a list of {role, content}
    messages) piece by piece; a piece is only given out once its characters are complete."""
    tokenizer, ids = _prompt_ids(backbone, prompt, chat)
    stop = end_of_turn_ids(tokenizer)
    latents = backbone.embed(torch.tensor([ids]))
    generated, printed = [], 0
    for step in backbone.stream(latents, max_new_tokens=max_new_tokens, stop_ids=stop, **sampling):
        token = int(step.ids[0])
        if token >= 0 and not tokenizer.is_special(token):
            generated.append(token)
        text = tokenizer.decode(generated)
        if len(text) > printed and not text.endswith("\ufffd"):
            yield text[printed:]
            printed = len(text)
    text = tokenizer.decode(generated)
    if len(text) > printed:
        yield text[printed:]


def generate_text(backbone, prompt, *, chat=False, max_new_tokens=128, **sampling):
    """The whole reply to `prompt` as one string (see stream_text)."""
    return "".join(stream_text(backbone, prompt, chat=chat, max_new_tokens=max_new_tokens, **sampling))
