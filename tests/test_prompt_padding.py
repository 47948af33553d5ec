"""A question's loss and answer do not depend on the longer questions batched with it (prompt-padding-mask)."""

from __future__ import annotations

import textwrap

from .conftest import run_with_demo_checkpoint

SCRIPT = textwrap.dedent(
    """
    import json, torch
    from florence_patch.demo.synthetic import make_docvqa
    from florence_patch.training.model import fix_remote_code, load_model_and_processor
    from florence_patch.training.pages import generate_sharing_pages

    code = fix_remote_code("florence-patch/florence-2-tiny")
    model, processor = load_model_and_processor(code)
    model.eval()
    rows = make_docvqa(num_train=8, num_validation=1, num_test=1, seed=3)["train"]
    by_length = sorted(range(len(rows)), key=lambda i: len(rows[i]["question"]))
    short, long = by_length[0], by_length[-1]
    prompts = ["<DocVQA>" + rows[i]["question"] for i in (short, long)]
    images = [rows[i]["image"].convert("RGB") for i in (short, long)]
    batch = processor(text=prompts, images=images, return_tensors="pt", padding=True)
    alone = processor(text=prompts[:1], images=images[:1], return_tensors="pt")
    answer = processor.tokenizer([rows[short]["answers"][0]] * 2, return_tensors="pt")["input_ids"]
    options = dict(max_new_tokens=8, num_beams=3, do_sample=False)

    def text(tokens):
        return processor.batch_decode(tokens, skip_special_tokens=True)[0]

    with torch.no_grad():
        logits_alone = model(**alone, labels=answer[:1]).logits[0]
        logits_masked = model(**batch, labels=answer).logits[0]
        no_mask = {k: v for k, v in batch.items() if k != "attention_mask"}
        logits_unmasked = model(**no_mask, labels=answer).logits[0]
        generated = {
            "alone": text(model.generate(**alone, **options)),
            "batched": text(model.generate(**batch, **options)),
            "shared pages": text(generate_sharing_pages(
                model, batch["input_ids"], batch["pixel_values"], page_index=[0, 1],
                attention_mask=batch["attention_mask"], **options)),
        }
    print("RESULT " + json.dumps({
        "padding": int((batch["attention_mask"][0] == 0).sum()),
        "masked_difference": float((logits_masked - logits_alone).abs().max()),
        "unmasked_difference": float((logits_unmasked - logits_alone).abs().max()),
        "scale": float(logits_alone.abs().max()),
        "generated": generated,
    }))
    """
)


def test_a_short_question_batched_with_a_long_one_gets_what_it_gets_alone(tmp_path):
    result = run_with_demo_checkpoint(SCRIPT, tmp_path)
    assert result["padding"] > 0  # the short prompt was padded to the long one
    # Without its mask the batch attends to the padding and the logits move; with it, they do not.
    assert result["unmasked_difference"] > 1e-3 * result["scale"]
    assert result["masked_difference"] <= 1e-5 * max(1.0, result["scale"])
    generated = result["generated"]
    assert generated["batched"] == generated["alone"]
    assert generated["shared pages"] == generated["alone"]
