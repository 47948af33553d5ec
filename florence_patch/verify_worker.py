"""The checks behind `florence-patch verify`, run in their own interpreter.

Default mode builds the model from the repo's own config scaled down to a tiny size (one block
per stage, small widths), so it needs no weights and takes seconds. ``--weights`` loads the real
cached weights and uses a rendered document page. Each check prints one JSON line.
"""

from __future__ import annotations

import copy
import json
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

TINY_TEXT = {
    "d_model": 32,
    "encoder_layers": 1,
    "decoder_layers": 1,
    "num_hidden_layers": 1,
    "encoder_attention_heads": 2,
    "decoder_attention_heads": 2,
    "encoder_ffn_dim": 64,
    "decoder_ffn_dim": 64,
    "dropout": 0.0,
    "attention_dropout": 0.0,
    "activation_dropout": 0.0,
}
TINY_VISION_WIDTHS = (8, 16, 32, 64)
TINY_VISION_HEADS = (1, 2, 4, 8)
APPLY_HINT = "the remote code needs fixing: run `florence-patch apply {model}` (then verify again)"


def tiny_config_dict(config: dict) -> dict:
    """The repo's own config with every width and depth scaled down; keys and vocabulary kept."""
    config = copy.deepcopy(config)
    vision = config.setdefault("vision_config", {})
    stages = len(vision.get("depths", TINY_VISION_WIDTHS))
    vision["depths"] = [1] * stages
    vision["dim_embed"] = list(TINY_VISION_WIDTHS[:stages])
    vision["num_heads"] = list(TINY_VISION_HEADS[:stages])
    vision["num_groups"] = list(TINY_VISION_HEADS[:stages])
    vision["drop_path_rate"] = 0.0
    vision["projection_dim"] = TINY_TEXT["d_model"]
    if not vision.get("model_type"):
        vision["model_type"] = "davit"
    text = config.setdefault("text_config", {})
    text.update(TINY_TEXT)
    config["projection_dim"] = TINY_TEXT["d_model"]
    return config


class Report:
    def __init__(self, model: str) -> None:
        self.model = model
        self.failed: set[str] = set()

    def emit(self, name: str, passed: bool, detail: str = "", hint: str = "") -> None:
        if not passed:
            self.failed.add(name)
        print(json.dumps({"name": name, "passed": passed, "detail": detail, "hint": hint}), flush=True)

    def run(self, name: str, check: Callable[[], str], *, needs: tuple[str, ...] = ()) -> bool:
        blocked = [n for n in needs if n in self.failed]
        if blocked:
            self.emit(name, False, f"not run: {', '.join(blocked)} failed")
            return False
        try:
            detail = check()
        except Exception as error:  # a check's failure is its result: report it, go on with the others
            self.emit(name, False, _describe(error), _hint(error, self.model))
            return False
        self.emit(name, True, detail)
        return True


def _describe(error: BaseException) -> str:
    frames = traceback.extract_tb(error.__traceback__)
    where = next((f"{Path(f.filename).name}:{f.lineno}" for f in reversed(frames) if "florence2" in f.filename), "")
    text = f"{type(error).__name__}: {error}".splitlines()[0][:400]
    return f"{text}" + (f" (at {where})" if where else "")


def _hint(error: BaseException, model: str) -> str:
    text = str(error)
    remote = any("florence2" in f.filename for f in traceback.extract_tb(error.__traceback__))
    if isinstance(error, TypeError) and "unexpected keyword argument 'loss'" in text:
        return APPLY_HINT.format(model=model)
    if remote or isinstance(error, (AttributeError, ModuleNotFoundError, ImportError)):
        return APPLY_HINT.format(model=model)
    return ""


def main(request: dict[str, Any]) -> int:
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
    from transformers import AutoConfig, AutoModelForCausalLM, AutoProcessor

    model_id: str = request["model"]
    revision = request.get("revision")
    weights = bool(request.get("weights"))
    load_kwargs = {"trust_remote_code": True, "revision": revision}
    report = Report(model_id)
    state: dict[str, Any] = {}

    def load_config() -> str:
        config = AutoConfig.from_pretrained(model_id, **load_kwargs)
        state["config"] = config
        return f"{type(config).__name__} (model_type {config.model_type!r})"

    def build_model() -> str:
        if weights:
            model = AutoModelForCausalLM.from_pretrained(model_id, torch_dtype=torch.float32, **load_kwargs)
        else:
            config_class = type(state["config"])
            tiny = config_class.from_dict(tiny_config_dict(state["config"].to_dict()))
            tiny._name_or_path = state["config"]._name_or_path
            model = AutoModelForCausalLM.from_config(
                tiny, trust_remote_code=True, code_revision=revision
            )
            if getattr(type(model), "_auto_class", None) is None:
                # transformers 4.x registers only in from_pretrained; save_pretrained then copies the code.
                type(model).register_for_auto_class("AutoModelForCausalLM")
            _initialise_empty_parameters(model)
        model.eval()
        state["model"] = model
        count = sum(p.numel() for p in model.parameters())
        return f"{type(model).__name__}, {count / 1e6:.2f} M parameters"

    def processor_check() -> str:
        try:
            processor = AutoProcessor.from_pretrained(model_id, **load_kwargs)
        except (OSError, ValueError, KeyError) as error:
            if "processing_florence2" in str(error) or "Unrecognized processing class" in str(error):
                state["processor"] = None
                return "no processor in this repo (skipped)"
            raise
        state["processor"] = processor
        image = _document_page()
        inputs = processor(text=["<DocVQA>What is the total?"], images=[image], return_tensors="pt")
        pixel_values = inputs["pixel_values"]
        expected = _expected_size(processor)
        if expected and tuple(pixel_values.shape[-2:]) != expected:
            raise AssertionError(f"pixel_values {tuple(pixel_values.shape)} not resized to {expected}")
        if float(pixel_values.min()) >= 0.0:
            raise AssertionError("pixel_values are not normalised (no negative values after mean/std)")
        state["inputs"] = inputs
        return f"input_ids {tuple(inputs['input_ids'].shape)}, pixel_values {tuple(pixel_values.shape)} (resized, normalised)"

    def batch() -> dict[str, Any]:
        if "batch" in state:
            return state["batch"]
        model = state["model"]
        config = model.config
        vocab = config.text_config.vocab_size if hasattr(config, "text_config") else config.vocab_size
        generator = torch.Generator().manual_seed(0)
        if state.get("inputs") is not None:
            inputs = state["inputs"]
            input_ids = inputs["input_ids"].repeat(2, 1)
            pixel_values = inputs["pixel_values"].repeat(2, 1, 1, 1)
        else:
            size = _config_image_size(model_id, revision) or 64
            input_ids = torch.randint(3, min(vocab, 1000), (2, 6), generator=generator)
            pixel_values = torch.randn(2, 3, size, size, generator=generator)
        labels = torch.randint(3, min(vocab, 1000), (2, 5), generator=generator)
        labels[1, -2:] = -100  # padding masked out of the loss, as training does
        state["batch"] = {"input_ids": input_ids, "pixel_values": pixel_values, "labels": labels}
        state["vocab"] = vocab
        return state["batch"]

    def forward() -> str:
        model, inputs = state["model"], batch()
        with torch.no_grad():
            outputs = model(**inputs)
        loss = outputs.loss
        if loss is None or loss.dim() != 0 or not torch.isfinite(loss):
            raise AssertionError(f"loss is not a finite scalar: {loss}")
        if outputs[0] is not loss:
            raise AssertionError("outputs[0] is not the loss")
        expected = (inputs["labels"].shape[0], inputs["labels"].shape[1], state["vocab"])
        if tuple(outputs.logits.shape) != expected:
            raise AssertionError(f"logits shape {tuple(outputs.logits.shape)} != {expected}")
        state["loss"] = float(loss)
        return f"loss {float(loss):.4f}, logits {tuple(outputs.logits.shape)}"

    def backward() -> str:
        model = state["model"]
        model.train()
        _disable_dropout(model)
        model.zero_grad()
        model(**batch()).loss.backward()
        trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        missing = [n for n, p in trainable if p.grad is None]
        bad = [n for n, p in trainable if p.grad is not None and not torch.isfinite(p.grad).all()]
        model.eval()
        if bad:
            raise AssertionError(f"non-finite gradients in {len(bad)} parameters, e.g. {bad[:3]}")
        if missing:
            raise AssertionError(f"{len(missing)} trainable parameters got no gradient, e.g. {missing[:3]}")
        return f"{len(trainable)} trainable parameters, all gradients finite"

    def generate() -> str:
        model, inputs = state["model"], batch()
        seen: list[int] = []
        decoder = model.language_model.get_decoder()
        hook = decoder.register_forward_pre_hook(lambda module, args, kwargs: seen.append(_step_length(args, kwargs)), with_kwargs=True)
        try:
            with torch.no_grad():
                tokens = model.generate(
                    input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"],
                    max_new_tokens=6, num_beams=2, do_sample=False, early_stopping=False,
                    no_repeat_ngram_size=0, min_new_tokens=6,
                )
        finally:
            hook.remove()
        if tokens.dim() != 2 or tokens.shape[0] != inputs["input_ids"].shape[0] or tokens.shape[1] < 2:
            raise AssertionError(f"generate returned {tuple(tokens.shape)}")
        state["seen"] = seen
        return f"{tuple(tokens.shape)} tokens with 2 beams"

    def kv_cache() -> str:
        seen = state["seen"]
        later = [n for n in seen[1:] if n is not None]
        if not later:
            raise AssertionError("no decoding steps were observed")
        if any(n != 1 for n in later):
            raise AssertionError(f"decoding steps after the first saw {sorted(set(later))} tokens: the KV cache is not used")
        return f"{len(seen)} decoding steps; every step after the first saw 1 token"

    def prompt_padding() -> str:
        # A prompt padded to a longer one (as in any batch) must give what it gives alone.
        model, inputs = state["model"], batch()
        config = model.config
        text_config = getattr(config, "text_config", config)
        pad = getattr(text_config, "pad_token_id", None)
        pad = 1 if pad is None else int(pad)
        prompt, labels = inputs["input_ids"][:1], inputs["labels"][:1]
        padded = torch.cat([prompt, torch.full((1, 3), pad, dtype=prompt.dtype)], dim=1)
        mask = torch.cat([torch.ones_like(prompt), torch.zeros(1, 3, dtype=prompt.dtype)], dim=1)
        pixel_values = inputs["pixel_values"][:1]
        with torch.no_grad():
            alone = model(input_ids=prompt, pixel_values=pixel_values, labels=labels).logits
            masked = model(input_ids=padded, pixel_values=pixel_values, attention_mask=mask, labels=labels).logits
        difference = float((masked - alone).abs().max())
        scale = max(1.0, float(alone.abs().max()))
        if not difference <= 1e-4 * scale:
            raise AssertionError(
                f"a prompt padded by 3 tokens changes the logits by {difference:.3g}: the padding is attended to "
                "(florence-patch apply: prompt-padding-mask)"
            )
        return f"padded prompt, masked: logits within {difference:.1g} of the prompt alone"

    def save_reload() -> str:
        model, inputs = state["model"], batch()
        with tempfile.TemporaryDirectory() as tmp:
            model.save_pretrained(tmp)
            files = sorted(p.name for p in Path(tmp).iterdir())
            needed = {"configuration_florence2.py", "modeling_florence2.py", "config.json"}
            if not needed <= set(files):
                raise AssertionError(f"saved directory lacks {sorted(needed - set(files))}")
            reloaded = AutoModelForCausalLM.from_pretrained(tmp, trust_remote_code=True, torch_dtype=torch.float32)
            reloaded.eval()
            with torch.no_grad():
                before = float(model(**inputs).loss)
                after = float(reloaded(**inputs).loss)
        count_before = sum(p.numel() for p in model.parameters())
        count_after = sum(p.numel() for p in reloaded.parameters())
        if count_before != count_after:
            raise AssertionError(f"parameter count changed on reload: {count_before} -> {count_after}")
        if abs(before - after) > 1e-4 * max(1.0, abs(before)):
            raise AssertionError(f"loss changed on reload: {before:.6f} -> {after:.6f} (weights re-initialised?)")
        return f"loss {before:.4f} == {after:.4f}, {count_after} parameters, code files saved"

    def tied() -> str:
        model = state["model"]
        language = model.language_model
        head = language.get_output_embeddings()
        shared = language.get_input_embeddings()
        if head is None or shared is None:
            raise AssertionError("no output or input embeddings")
        if head.weight.data_ptr() != shared.weight.data_ptr():
            raise AssertionError("lm_head is not tied to the shared token embeddings")
        return "lm_head shares the token embedding"

    report.run("load-config", load_config)
    report.run("build-model", build_model, needs=("load-config",))
    report.run("processor", processor_check)
    report.run("tied-embeddings", tied, needs=("build-model",))
    report.run("forward-with-labels", forward, needs=("build-model",))
    report.run("backward", backward, needs=("forward-with-labels",))
    report.run("generate", generate, needs=("build-model",))
    report.run("kv-cache", kv_cache, needs=("generate",))
    report.run("prompt-padding", prompt_padding, needs=("forward-with-labels",))
    report.run("save-reload", save_reload, needs=("forward-with-labels",))
    return 1 if report.failed else 0


def _step_length(args, kwargs) -> int | None:
    for key in ("input_ids", "inputs_embeds"):
        value = kwargs.get(key)
        if value is not None:
            return int(value.shape[1])
    if args and hasattr(args[0], "shape") and args[0] is not None:
        return int(args[0].shape[1])
    return None


def _initialise_empty_parameters(model) -> None:
    """Upstream creates image_projection with torch.empty and relies on weights to fill it."""
    import torch

    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if not torch.isfinite(parameter).all() or name.endswith("image_projection"):
                torch.nn.init.trunc_normal_(parameter, std=0.02)


def _disable_dropout(model) -> None:
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def _document_page():
    from florence_patch.demo.synthetic import render_page

    return render_page(seed=0).image


def _expected_size(processor) -> tuple[int, int] | None:
    size = getattr(processor.image_processor, "size", None) or {}
    if "height" in size and "width" in size:
        return int(size["height"]), int(size["width"])
    return None


def _config_image_size(model_id, revision) -> int | None:
    """The page size the processor would produce, without a processor (read preprocessor_config.json)."""
    from transformers.utils import cached_file

    try:
        path = cached_file(model_id, "preprocessor_config.json", revision=revision,
                           _raise_exceptions_for_missing_entries=False)
    except OSError:
        return None
    if not path:
        return None
    size = json.loads(Path(path).read_text()).get("size") or {}
    return int(size.get("height", 0)) or None


if __name__ == "__main__":
    sys.exit(main(json.loads(sys.argv[1])))
