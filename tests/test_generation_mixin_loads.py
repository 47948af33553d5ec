"""Every load of the fixed model in one process builds the same generating class (multimodal-generation-mixin).

transformers' auto class adds GenerationMixin to a remote-code class that defines ``generate``
on the first load only; a second load in the same process builds the bare class, which (4.52 on)
cannot generate by transformers' account and logs a "has generative capabilities" warning on
every ``can_generate()`` call.
"""

from __future__ import annotations

import textwrap

import pytest
import transformers
from packaging.version import Version

from .conftest import run_with_demo_checkpoint

SCRIPT = textwrap.dedent(
    """
    import io, json, logging, tempfile
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as transformers_logging
    from florence_patch.demo.synthetic import make_docvqa
    from florence_patch.training.model import fix_remote_code, load_model_and_processor

    logged = io.StringIO()
    transformers_logging.get_logger().addHandler(logging.StreamHandler(logged))
    LEFT_OUT = ()  # fix ids left out of the registry, to see what the fix is for
    if LEFT_OUT:
        import florence_patch.fixes as registry
        registry.ALL_FIXES = tuple(f for f in registry.ALL_FIXES if f.id not in LEFT_OUT)

    code = fix_remote_code("florence-patch/florence-2-tiny")
    row = make_docvqa(num_train=1, num_validation=1, num_test=1, seed=0)["train"][0]
    loads = []

    def record(model, processor):
        model.eval()
        inputs = processor(text=["<DocVQA>" + row["question"]], images=[row["image"].convert("RGB")], return_tensors="pt")
        with torch.no_grad():
            tokens = model.generate(**inputs, max_new_tokens=4, num_beams=2, do_sample=False)
        loads.append({
            "can_generate": type(model).can_generate(),
            "generation_config": getattr(model, "generation_config", None) is not None,
            "generated": processor.batch_decode(tokens, skip_special_tokens=True)[0],
        })

    first, processor = load_model_and_processor(code)
    record(first, processor)
    record(load_model_and_processor(code)[0], processor)  # the same model again, in the same process
    with tempfile.TemporaryDirectory() as saved:
        first.save_pretrained(saved)
        record(AutoModelForCausalLM.from_pretrained(saved, trust_remote_code=True), processor)
    print("RESULT " + json.dumps({"loads": loads, "warnings": logged.getvalue().count("has generative capabilities")}))
    """
)

pytestmark = pytest.mark.skipif(
    Version(transformers.__version__) < Version("4.50"), reason="before 4.50 every PreTrainedModel is a GenerationMixin"
)


def test_every_load_in_a_process_builds_a_generating_class(tmp_path):
    result = run_with_demo_checkpoint(SCRIPT, tmp_path)
    first, second, reloaded = result["loads"]
    assert result["warnings"] == 0
    for load in (first, second, reloaded):
        assert load["can_generate"] is True and load["generation_config"] is True
    assert second["generated"] == first["generated"] == reloaded["generated"]


@pytest.mark.skipif(Version(transformers.__version__) < Version("4.52"), reason="4.50-4.51 answer True and warn once")
def test_without_the_fix_a_second_load_cannot_generate_and_warns(tmp_path):
    """What the fix is for: the same run with multimodal-generation-mixin left out."""
    script = SCRIPT.replace("LEFT_OUT = ()", 'LEFT_OUT = ("multimodal-generation-mixin",)')
    result = run_with_demo_checkpoint(script, tmp_path)
    first, second, _ = result["loads"]
    assert first["can_generate"] is True
    assert second["can_generate"] is False and second["generation_config"] is False
    assert result["warnings"] >= 3
