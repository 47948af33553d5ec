"""--gradient-checkpointing reaches the DaViT vision tower, and changes memory, not the maths."""

from __future__ import annotations

import textwrap

from .conftest import DEMO_TRAINING_STEP, run_with_demo_checkpoint

SCRIPT = DEMO_TRAINING_STEP + textwrap.dedent(
    """
    from florence_patch.training.model import checkpoint_vision_layers, freeze_vision_tower

    names_before = list(model.state_dict())
    loss_plain, kept_plain, grads_plain = step()
    wrapped = checkpoint_vision_layers(model)
    loss_ckpt, kept_ckpt, grads_ckpt = step()
    with torch.no_grad():
        model.eval()
        eval_loss = model(input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"], labels=labels).loss.item()
    frozen_model, _ = load_model_and_processor(code)
    freeze_vision_tower(frozen_model)
    print("RESULT " + json.dumps({
        "wrapped": wrapped,
        "layers": sum(len(list(stage.children())) for stage in model.vision_tower.blocks),
        "loss": [loss_plain, loss_ckpt, eval_loss],
        "kept_mib": [kept_plain / 2**20, kept_ckpt / 2**20],
        "same_grad_names": sorted(grads_plain) == sorted(grads_ckpt),
        "vision_grads": sum(n.startswith("vision_tower.") for n in grads_ckpt),
        "max_grad_diff": max((grads_plain[n] - grads_ckpt[n]).abs().max().item() for n in grads_plain),
        "state_dict_unchanged": list(model.state_dict()) == names_before,
        "wrapped_when_frozen": checkpoint_vision_layers(frozen_model),
    }))
    """
)


def test_vision_tower_layers_are_recomputed_with_identical_gradients(tmp_path):
    result = run_with_demo_checkpoint(SCRIPT, tmp_path)

    assert result["wrapped"] == result["layers"] > 0
    assert result["wrapped_when_frozen"] == 0
    plain, checkpointed = result["kept_mib"]
    assert checkpointed < 0.6 * plain, result["kept_mib"]  # the tower's activations are no longer kept
    assert result["loss"][0] == result["loss"][1]
    assert result["same_grad_names"] and result["vision_grads"] > 0
    assert result["max_grad_diff"] < 1e-6
    assert result["state_dict_unchanged"]
