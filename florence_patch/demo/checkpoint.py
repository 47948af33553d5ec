"""Build the demo checkpoint ``florence-patch/florence-2-tiny`` into a hub cache, in seconds, offline.

The checkpoint is a complete Florence-2-shaped hub repo: our own remote code (see
``florence_patch/demo/remote_code``), a config whose ``auto_map`` points at it, a byte-level BPE
tokenizer trained here on a small built-in corpus, a CLIP image-processor config, a generation
config and safetensors weights of a freshly initialised tiny model. It is small enough to
memorise a few dozen document-VQA pages in a few hundred CPU steps.

Revision states of the remote code (``REVISION_STATES``):

* ``"needs-fix"``: shaped like Microsoft's Florence-2 at revision 33ee8e1: ``Florence2Seq2SeqLMOutput``
  lacks ``loss``/``logits``/``image_hidden_states``, so any forward with ``return_dict`` raises
  ``TypeError: ... unexpected keyword argument 'loss'``.
* ``"fixed-upstream"``: shaped like revision 484465f, where upstream added those fields, stopped
  deleting ``config.vision_config.model_type`` and guarded the attention-mask cast.
* ``"generation-mixin"``: shaped like revision f928440: as ``"fixed-upstream"``, and the language
  model also inherits ``GenerationMixin``.

The weights do not depend on the state (the fixes change no parameter), and nothing here runs the
remote code: the state dict is generated from the config alone, so building works on any installed
transformers, including ones the unpatched code cannot even be imported on.

Every byte is a function of the arguments: commits are derived from the content, so the same call
gives the same commit on every machine.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
from safetensors.torch import save as safetensors_save

from florence_patch.demo.hub_layout import blob_etag, repo_cache_dir, write_hub_repo

DEMO_REPO_ID = "florence-patch/florence-2-tiny"
REVISION_STATES = ("needs-fix", "fixed-upstream", "generation-mixin")
CODE_FILES = ("configuration_florence2.py", "modeling_florence2.py", "processing_florence2.py")

# ---------------------------------------------------------------------------------------------
# Sizes, chosen so that 300 steps of batch 8 on one CPU core (about 50 s of CPU time) memorise
# the answers of some 40 synthetic DocVQA questions. Image 128 px -> patch strides 8, 2, 2 -> a
# 4x4 grid: 16 grid tokens + 1 pooled token in front of the prompt.
# ---------------------------------------------------------------------------------------------
IMAGE_SIZE = 128
D_MODEL = 96
VISION_CONFIG = {
    "model_type": "davit",
    "drop_path_rate": 0.0,
    "patch_size": [8, 3, 3],
    "patch_stride": [8, 2, 2],
    "patch_padding": [0, 1, 1],
    "patch_prenorm": [False, True, True],
    "enable_checkpoint": False,
    "dim_embed": [32, 64, 96],
    "num_heads": [2, 4, 4],
    "num_groups": [2, 4, 4],
    "depths": [1, 1, 1],
    "window_size": 4,
    "projection_dim": D_MODEL,
    "visual_temporal_embedding": {"type": "COSINE", "max_temporal_embeddings": 8},
    "image_pos_embed": {"type": "learned_abs_2d", "max_pos_embeddings": 16},
    "image_feature_source": ["spatial_avg_pool", "temporal_avg_pool"],
}
GRID_SIDE = IMAGE_SIZE // math.prod(VISION_CONFIG["patch_stride"])
IMAGE_SEQ_LENGTH = GRID_SIDE * GRID_SIDE + 1  # temporal_avg_pool (the grid) + spatial_avg_pool (one token)
TEXT_LAYERS = 2
TEXT_HEADS = 4
TEXT_FFN_DIM = 192
MAX_POSITION_EMBEDDINGS = 256
# About 1/sqrt(D_MODEL). BART's 0.02 suits d_model 1024; at this width it leaves the decoder
# ignoring the encoder for hundreds of steps (measured: 2/40 answers memorised vs 31-33/40).
INIT_STD = 0.1

# Tokens the processor adds on top of the trained vocabulary (its NUM_LOC_TOKENS is 100):
# 4 OD/OCR tags + 100 <loc_N> + 20 other task tags.
PROCESSOR_ADDED_TOKENS = 4 + 100 + 20
TOKENIZER_VOCAB_SIZE = 1024
SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")  # ids 0..4, BART's order
BOS_ID, PAD_ID, EOS_ID = 0, 1, 2


@dataclass(frozen=True)
class DemoRepo:
    """Where a built demo checkpoint is."""

    repo_id: str
    commit: str
    snapshot: Path  # <hub_cache>/models--org--name/snapshots/<commit>
    hub_cache: Path  # the folder to use as HF_HUB_CACHE (= <hf_home>/hub)


# ---------------------------------------------------------------------------------------------
# Remote code
# ---------------------------------------------------------------------------------------------


def _replace_once(text: str, old: str, new: str, *, what: str) -> str:
    count = text.count(old)
    if count != 1:
        raise RuntimeError(f"remote-code transform '{what}': expected the target once, found it {count} times")
    return text.replace(old, new)


def _apply_upstream_output_fix(modeling: str) -> str:
    """Our modeling file as upstream changed it between 33ee8e1 and 484465f."""
    modeling = _replace_once(
        modeling,
        "    Args:\n        last_hidden_state (`torch.FloatTensor` of shape `(batch_size, sequence_length, hidden_size)`):\n"
        "            Decoder output of the last layer.\n",
        "    Args:\n"
        "        loss (`torch.FloatTensor` of shape `(1,)`, *optional*, returned when `labels` is provided):\n"
        "            Language modeling loss.\n"
        "        logits (`torch.FloatTensor` of shape `(batch_size, sequence_length, config.vocab_size)`):\n"
        "            Scores of each vocabulary token before the softmax.\n"
        "        last_hidden_state (`torch.FloatTensor` of shape `(batch_size, sequence_length, hidden_size)`):\n"
        "            Decoder output of the last layer.\n",
        what="output docstring",
    )
    modeling = _replace_once(
        modeling,
        '    """\n\n    last_hidden_state: torch.FloatTensor = None\n',
        '    """\n    loss: Optional[torch.FloatTensor] = None\n    logits: torch.FloatTensor = None\n'
        "    last_hidden_state: torch.FloatTensor = None\n",
        what="loss and logits fields",
    )
    modeling = _replace_once(
        modeling,
        "    encoder_attentions: Optional[Tuple[torch.FloatTensor, ...]] = None\n",
        "    encoder_attentions: Optional[Tuple[torch.FloatTensor, ...]] = None\n"
        "    image_hidden_states: Optional[Tuple[torch.FloatTensor, ...]] = None\n",
        what="image_hidden_states field",
    )
    modeling = _replace_once(modeling, "        del config.vision_config.model_type\n", "", what="vision model_type del")
    modeling = _replace_once(
        modeling,
        "        attention_mask = attention_mask.to(inputs_embeds.dtype)\n",
        "        if inputs_embeds is not None:\n            attention_mask = attention_mask.to(inputs_embeds.dtype)\n",
        what="attention mask cast guard",
    )
    return modeling


def _apply_upstream_generation_mixin(modeling: str) -> str:
    """Our modeling file as upstream changed it between 484465f and f928440."""
    modeling = _replace_once(
        modeling,
        "from transformers.modeling_utils import PreTrainedModel\n",
        "from transformers.modeling_utils import PreTrainedModel\nfrom transformers.generation.utils import GenerationMixin\n",
        what="GenerationMixin import",
    )
    return _replace_once(
        modeling,
        "class Florence2LanguageForConditionalGeneration(Florence2LanguagePreTrainedModel):",
        "class Florence2LanguageForConditionalGeneration(Florence2LanguagePreTrainedModel, GenerationMixin):",
        what="GenerationMixin base",
    )


def remote_code_files(state: str = "needs-fix") -> dict[str, bytes]:
    """The three remote-code files of the demo repo at a revision state (see REVISION_STATES)."""
    if state not in REVISION_STATES:
        raise ValueError(f"unknown revision state {state!r}; expected one of {REVISION_STATES}")
    package = resources.files("florence_patch.demo.remote_code")
    texts = {name: package.joinpath(name).read_text(encoding="utf-8") for name in CODE_FILES}
    if state in ("fixed-upstream", "generation-mixin"):
        texts["modeling_florence2.py"] = _apply_upstream_output_fix(texts["modeling_florence2.py"])
    if state == "generation-mixin":
        texts["modeling_florence2.py"] = _apply_upstream_generation_mixin(texts["modeling_florence2.py"])
    return {name: text.encode("utf-8") for name, text in texts.items()}


# ---------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------

_CORPUS_LINES = (
    "What is the total amount due on this invoice?",
    "What is the invoice number? What is the date of the invoice? Who is the invoice addressed to?",
    "What is the name of the company? What is the phone number? What is the address?",
    "What is the order number? What is the account number? What is the reference number?",
    "What is the subtotal? What is the tax? What is the balance? What is the price of the item?",
    "Which city is written on the page? Which month is mentioned? When is the payment due?",
    "What does the image describe? What is the text in the image? Describe in detail what is shown in the image.",
    "Locate the objects with category name in the image. What is the region? What text is in the region?",
    "The total due is shown at the bottom of the page. Please pay within thirty days of the invoice date.",
    "Thank you for your business. Payment terms: net 30. Bank transfer, cheque or card accepted.",
    "Receipt for the purchase of office supplies, paper, ink, pens, folders and a desk lamp.",
    "The meeting of the board is scheduled for Monday morning in the main conference room.",
    "Report of the quarterly results: revenue, costs, profit and the outlook for the next year.",
    "Customer name, shipping address, billing address, email, telephone and customer number.",
    "Memo to all staff: the office will be closed on Friday for maintenance of the building.",
    "Quantity, description, unit price, amount, discount, shipping, handling, grand total.",
    "Dear Sir or Madam, please find enclosed the signed contract and the list of deliverables.",
    "Project status: design complete, testing in progress, release planned for the end of the month.",
    "North, South, East, West, Street, Avenue, Road, Lane, Park, Square, Suite, Floor, Building.",
    "Acme Corporation, Globex, Initech, Umbrella Ltd, Stark Industries, Wayne Enterprises, Hooli Inc.",
    "January February March April May June July August September October November December",
    "Monday Tuesday Wednesday Thursday Friday Saturday Sunday",
    "Alice Bob Carol David Emma Frank Grace Henry Irene John Karen Liam Maria Noah Olivia Peter",
    "<DocVQA> <OCR> <CAPTION> <OD> <DETAILED_CAPTION> <MORE_DETAILED_CAPTION> <REGION_TO_DESCRIPTION>",
)


def _tokenizer_corpus() -> list[str]:
    """Built-in text, plus numbers, prices, dates and codes in the forms documents print them."""
    lines = list(_CORPUS_LINES)
    for i in range(400):
        amount = (i * 7919) % 100000 / 100
        lines.append(
            f"Invoice {1000 + i * 37} dated {1 + i % 28:02d}/{1 + i % 12:02d}/{2015 + i % 11}: "
            f"total ${amount:,.2f}, tax {amount * 0.08:.2f}, item {i % 50} x {3 + i % 9}, "
            f"code {chr(65 + i % 26)}{chr(65 + (i * 3) % 26)}-{(i * 131) % 10000:04d}, phone 555-{(i * 97) % 10000:04d}"
        )
    return lines


def _train_bpe() -> tuple[dict[str, int], list[str]]:
    """Train a byte-level BPE (BART's pre-tokenisation) on the built-in corpus: (vocab, merges)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_VOCAB_SIZE,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_tokenizer_corpus(), trainer=trainer)
    model = json.loads(tokenizer.to_str())["model"]
    # tokenizers >= 0.20 writes merges as pairs, older versions as "a b" strings
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    vocab = dict(sorted(model["vocab"].items(), key=lambda item: item[1]))
    return vocab, merges


def tokenizer_files() -> dict[str, bytes]:
    """tokenizer.json, vocab.json, merges.txt, tokenizer_config.json, special_tokens_map.json of a BART tokenizer.

    Written by hand rather than by ``save_pretrained`` so the bytes (and so the commit) do not depend on
    the installed transformers/tokenizers versions, and both 4.x and 5.x read them.
    """
    vocab, merges = _train_bpe()
    added_tokens = [
        {
            "id": vocab[token],
            "content": token,
            "single_word": False,
            "lstrip": token == "<mask>",
            "rstrip": False,
            "normalized": True,
            "special": True,
        }
        for token in SPECIAL_TOKENS
    ]
    tokenizer_json = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added_tokens,
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "post_processor": {
            "type": "RobertaProcessing",
            "sep": ["</s>", EOS_ID],
            "cls": ["<s>", BOS_ID],
            "trim_offsets": True,
            "add_prefix_space": False,
        },
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": "",
            "end_of_word_suffix": "",
            "fuse_unk": False,
            "byte_fallback": False,
            "vocab": vocab,
            "merges": merges,
        },
    }
    special_tokens_map = {
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "sep_token": "</s>",
        "pad_token": "<pad>",
        "cls_token": "<s>",
        "mask_token": {"content": "<mask>", "lstrip": True, "normalized": True, "rstrip": False, "single_word": False},
    }
    tokenizer_config = {
        "add_prefix_space": False,
        "errors": "replace",
        "model_max_length": 1024,
        "tokenizer_class": "BartTokenizer",
        "clean_up_tokenization_spaces": False,
        **{k: v for k, v in special_tokens_map.items() if k != "mask_token"},
        "mask_token": "<mask>",
    }
    return {
        "tokenizer.json": _json_bytes(tokenizer_json),
        "vocab.json": _json_bytes(vocab),
        "merges.txt": ("#version: 0.2\n" + "\n".join(merges) + "\n").encode("utf-8"),
        "tokenizer_config.json": _json_bytes(tokenizer_config),
        "special_tokens_map.json": _json_bytes(special_tokens_map),
    }


# ---------------------------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------------------------


def model_config(vocab_size: int) -> dict:
    """config.json, shaped like Florence-2's with tiny sizes."""
    text_config = {
        "vocab_size": vocab_size,
        "activation_dropout": 0.0,
        "activation_function": "gelu",
        "add_bias_logits": False,
        "add_final_layer_norm": False,
        "attention_dropout": 0.0,
        "bos_token_id": BOS_ID,
        "classif_dropout": 0.1,
        "classifier_dropout": 0.0,
        "d_model": D_MODEL,
        "decoder_attention_heads": TEXT_HEADS,
        "decoder_ffn_dim": TEXT_FFN_DIM,
        "decoder_layerdrop": 0.0,
        "decoder_layers": TEXT_LAYERS,
        "decoder_start_token_id": EOS_ID,
        "dropout": 0.1,
        "early_stopping": True,
        "encoder_attention_heads": TEXT_HEADS,
        "encoder_ffn_dim": TEXT_FFN_DIM,
        "encoder_layerdrop": 0.0,
        "encoder_layers": TEXT_LAYERS,
        "eos_token_id": EOS_ID,
        "forced_eos_token_id": EOS_ID,
        "forced_bos_token_id": BOS_ID,
        "gradient_checkpointing": False,
        "init_std": INIT_STD,
        "is_encoder_decoder": True,
        "label2id": {"LABEL_0": 0, "LABEL_1": 1, "LABEL_2": 2},
        "max_position_embeddings": MAX_POSITION_EMBEDDINGS,
        "no_repeat_ngram_size": 3,
        "normalize_before": False,
        "num_hidden_layers": TEXT_LAYERS,
        "pad_token_id": PAD_ID,
        "scale_embedding": False,
        "num_beams": 3,
    }
    return {
        "_name_or_path": "florence2",
        "architectures": ["Florence2ForConditionalGeneration"],
        "auto_map": {
            "AutoConfig": "configuration_florence2.Florence2Config",
            "AutoModelForCausalLM": "modeling_florence2.Florence2ForConditionalGeneration",
            "AutoProcessor": "processing_florence2.Florence2Processor",
        },
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
        "ignore_index": -100,
        "model_type": "florence2",
        "pad_token_id": PAD_ID,
        "projection_dim": D_MODEL,
        "text_config": text_config,
        "vision_config": dict(VISION_CONFIG),
        "vocab_size": vocab_size,
        "torch_dtype": "float32",
        "transformers_version": "4.41.0.dev0",
        "is_encoder_decoder": True,
    }


def preprocessor_config() -> dict:
    """preprocessor_config.json: a CLIP image processor resizing to IMAGE_SIZE, no crop."""
    return {
        "auto_map": {"AutoProcessor": "processing_florence2.Florence2Processor"},
        "_valid_processor_keys": [
            "images", "do_resize", "size", "resample", "do_rescale", "rescale_factor", "do_normalize",
            "image_mean", "image_std", "return_tensors", "data_format", "input_data_format", "do_convert_rgb",
        ],
        "do_convert_rgb": None,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "do_center_crop": False,
        "image_processor_type": "CLIPImageProcessor",
        "image_seq_length": IMAGE_SEQ_LENGTH,
        "image_mean": [0.485, 0.456, 0.406],
        "image_std": [0.229, 0.224, 0.225],
        "processor_class": "Florence2Processor",
        "resample": 3,
        "size": {"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        "crop_size": {"height": IMAGE_SIZE, "width": IMAGE_SIZE},
    }


GENERATION_CONFIG = {"num_beams": 3, "early_stopping": False}


# ---------------------------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------------------------


def _parameter_specs(config: dict) -> list[tuple[str, tuple[int, ...], str]]:
    """(name, shape, init) of every tensor in the state dict of Florence2ForConditionalGeneration(config).

    init is one of: "normal" (N(0, 0.02)), "zeros", "ones", "embedding" (normal, padding row zero),
    "sinusoid" (the cosine frame-embedding table). Kept in step with remote_code/modeling_florence2.py;
    the tests load the result with transformers and require no missing or unexpected keys.
    """
    vision, text = config["vision_config"], config["text_config"]
    specs: list[tuple[str, tuple[int, ...], str]] = []

    def linear(prefix: str, fan_in: int, fan_out: int) -> None:
        specs.append((f"{prefix}.weight", (fan_out, fan_in), "normal"))
        specs.append((f"{prefix}.bias", (fan_out,), "zeros"))

    def layer_norm(prefix: str, dim: int) -> None:
        specs.append((f"{prefix}.weight", (dim,), "ones"))
        specs.append((f"{prefix}.bias", (dim,), "zeros"))

    # image encoder (head and norms are deleted by the model)
    dims = vision["dim_embed"]
    for stage, dim in enumerate(dims):
        in_chans = 3 if stage == 0 else dims[stage - 1]
        kernel = vision["patch_size"][stage]
        conv = f"vision_tower.convs.{stage}"
        specs.append((f"{conv}.proj.weight", (dim, in_chans, kernel, kernel), "normal"))
        specs.append((f"{conv}.proj.bias", (dim,), "zeros"))
        layer_norm(f"{conv}.norm", in_chans if vision["patch_prenorm"][stage] else dim)
        for pair in range(vision["depths"][stage]):
            for block, attention in (("spatial_block", "window_attn"), ("channel_block", "channel_attn")):
                prefix = f"vision_tower.blocks.{stage}.{pair}.{block}"
                for conv_name in ("conv1", "conv2"):
                    specs.append((f"{prefix}.{conv_name}.fn.dw.weight", (dim, 1, 3, 3), "normal"))
                    specs.append((f"{prefix}.{conv_name}.fn.dw.bias", (dim,), "zeros"))
                layer_norm(f"{prefix}.{attention}.norm", dim)
                linear(f"{prefix}.{attention}.fn.qkv", dim, 3 * dim)
                linear(f"{prefix}.{attention}.fn.proj", dim, dim)
                layer_norm(f"{prefix}.ffn.norm", dim)
                linear(f"{prefix}.ffn.fn.net.fc1", dim, 4 * dim)
                linear(f"{prefix}.ffn.fn.net.fc2", 4 * dim, dim)

    # image tokens -> text embedding space
    image_dim, projection_dim = dims[-1], vision["projection_dim"]
    specs.append(("image_projection", (image_dim, projection_dim), "normal"))
    layer_norm("image_proj_norm", projection_dim)
    max_pos = vision["image_pos_embed"]["max_pos_embeddings"]
    specs.append(("image_pos_embed.row_embeddings.weight", (max_pos, image_dim // 2), "normal"))
    specs.append(("image_pos_embed.column_embeddings.weight", (max_pos, image_dim - image_dim // 2), "normal"))
    frames = vision["visual_temporal_embedding"]["max_temporal_embeddings"]
    specs.append(("visual_temporal_embed.pos_idx_to_embed", (frames, image_dim), "sinusoid"))

    # language model
    vocab, d_model = text["vocab_size"], text["d_model"]
    lm = "language_model"
    specs.append((f"{lm}.final_logits_bias", (1, vocab), "zeros"))
    for name in ("model.shared", "model.encoder.embed_tokens", "model.decoder.embed_tokens"):
        specs.append((f"{lm}.{name}.weight", (vocab, d_model), "embedding"))
    specs.append((f"{lm}.lm_head.weight", (vocab, d_model), "embedding"))
    for side, layers, ffn in (
        ("encoder", text["encoder_layers"], text["encoder_ffn_dim"]),
        ("decoder", text["decoder_layers"], text["decoder_ffn_dim"]),
    ):
        stack = f"{lm}.model.{side}"
        specs.append((f"{stack}.embed_positions.weight", (text["max_position_embeddings"] + 2, d_model), "normal"))
        layer_norm(f"{stack}.layernorm_embedding", d_model)
        for index in range(layers):
            layer = f"{stack}.layers.{index}"
            attentions = ("self_attn", "encoder_attn") if side == "decoder" else ("self_attn",)
            for attention in attentions:
                for projection in ("k_proj", "v_proj", "q_proj", "out_proj"):
                    linear(f"{layer}.{attention}.{projection}", d_model, d_model)
                layer_norm(f"{layer}.{attention}_layer_norm", d_model)
            linear(f"{layer}.fc1", d_model, ffn)
            linear(f"{layer}.fc2", ffn, d_model)
            layer_norm(f"{layer}.final_layer_norm", d_model)
    return specs


def _sinusoid_table(length: int, dim: int) -> torch.Tensor:
    inverse_frequency = torch.exp(-math.log(10000.0) * torch.arange(0, dim, 2) / dim)
    angles = torch.arange(length).unsqueeze(1) * inverse_frequency
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(angles)
    table[:, 1::2] = torch.cos(angles)
    return table


def initial_state_dict(config: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """A freshly initialised state dict for ``config`` (deterministic in ``seed``).

    Normal weights are N(0, init_std) clipped at two standard deviations (a truncated normal, as DaViT
    and BART initialise); the token embedding is shared by the encoder, the decoder and the LM head,
    as the model ties them, and stored under each name so every transformers version finds its key.
    """
    generator = torch.Generator().manual_seed(seed)
    std = config["text_config"]["init_std"]
    pad_id = config["text_config"]["pad_token_id"]
    state: dict[str, torch.Tensor] = {}
    shared_embedding: torch.Tensor | None = None
    for name, shape, init in _parameter_specs(config):
        if init == "zeros":
            tensor = torch.zeros(shape)
        elif init == "ones":
            tensor = torch.ones(shape)
        elif init == "sinusoid":
            tensor = _sinusoid_table(*shape)
        elif init == "embedding":
            if shared_embedding is None:
                shared_embedding = (torch.randn(shape, generator=generator) * std).clamp_(-2 * std, 2 * std)
                shared_embedding[pad_id] = 0.0
            tensor = shared_embedding.clone()
        else:
            tensor = (torch.randn(shape, generator=generator) * std).clamp_(-2 * std, 2 * std)
        state[name] = tensor.contiguous()
    return state


# ---------------------------------------------------------------------------------------------
# The repo
# ---------------------------------------------------------------------------------------------


def _json_bytes(value) -> bytes:
    return (json.dumps(value, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def commit_for(files: dict[str, bytes]) -> str:
    """A 40-hex commit id that is a function of the files' paths and contents."""
    digest = hashlib.sha1()
    for path in sorted(files):
        digest.update(f"{path}\0{blob_etag(path, files[path])}\n".encode("utf-8"))
    return digest.hexdigest()


def demo_repo_files(*, revision_state: str = "needs-fix", seed: int = 0) -> dict[str, bytes]:
    """Every file of the demo repo at ``revision_state``, with weights from ``seed``."""
    tokenizer = tokenizer_files()
    base_vocab = len(json.loads(tokenizer["vocab.json"]))
    config = model_config(base_vocab + PROCESSOR_ADDED_TOKENS)
    weights = safetensors_save(initial_state_dict(config, seed), metadata={"format": "pt"})
    return {
        "config.json": _json_bytes(config),
        "generation_config.json": _json_bytes(GENERATION_CONFIG),
        "preprocessor_config.json": _json_bytes(preprocessor_config()),
        "model.safetensors": weights,
        **tokenizer,
        **remote_code_files(revision_state),
    }


def build_demo_repo(
    hf_home: Path,
    *,
    revision_state: str = "needs-fix",
    seed: int = 0,
    repo_id: str = DEMO_REPO_ID,
) -> DemoRepo:
    """Lay out the demo checkpoint in ``<hf_home>/hub`` with ``refs/main`` at ``revision_state``.

    Point ``HF_HOME`` at ``hf_home`` (or ``HF_HUB_CACHE`` at ``<hf_home>/hub``), set ``HF_HUB_OFFLINE=1``,
    and ``from_pretrained(repo_id, trust_remote_code=True)`` loads it like a downloaded checkpoint.
    """
    files = demo_repo_files(revision_state=revision_state, seed=seed)
    commit = commit_for(files)
    hub_cache = Path(hf_home) / "hub"
    write_hub_repo(hub_cache, repo_id, {commit: files}, {"main": commit})
    return DemoRepo(
        repo_id=repo_id,
        commit=commit,
        snapshot=repo_cache_dir(hub_cache, repo_id) / "snapshots" / commit,
        hub_cache=hub_cache,
    )
