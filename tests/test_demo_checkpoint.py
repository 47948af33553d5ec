"""The demo checkpoint: hub-cache layout, the remote-code revision states, and how the fixture behaves
under transformers (4.49 through the overlay, in a subprocess; the installed version in-process)."""

from __future__ import annotations

import ast
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from florence_patch.demo.checkpoint import (
    CODE_FILES,
    D_MODEL,
    DEMO_REPO_ID,
    IMAGE_SEQ_LENGTH,
    IMAGE_SIZE,
    PROCESSOR_ADDED_TOKENS,
    REVISION_STATES,
    build_demo_repo,
    commit_for,
    demo_repo_files,
    remote_code_files,
)
from florence_patch.demo.hub_layout import git_blob_sha1, write_hub_repo

REPO_ROOT = Path(__file__).resolve().parents[1]
TF449_OVERLAY = REPO_ROOT / ".venv" / "compat" / "tf449"
OUTPUT_CLASS = "Florence2Seq2SeqLMOutput"


# ---------------------------------------------------------------------------------------------
# hub layout
# ---------------------------------------------------------------------------------------------


def test_hub_layout_is_what_huggingface_hub_reads(tmp_path):
    from huggingface_hub import scan_cache_dir, try_to_load_from_cache

    first, second = "a" * 40, "b" * 40
    shared = b'{"shared": true}\n'
    revisions = {
        first: {"config.json": shared, "sub/dir/notes.txt": b"hello\n", "model.safetensors": b"\x00weights-1"},
        second: {"config.json": shared, "sub/dir/notes.txt": b"changed\n", "model.safetensors": b"\x00weights-2"},
    }
    repo_dir = write_hub_repo(tmp_path, "org/name", revisions, {"main": first, "refs/pr/1": second})

    assert repo_dir == tmp_path / "models--org--name"
    # git's own id of b"hello\n" (`git hash-object`), and a sha256 for the LFS-tracked weights
    assert git_blob_sha1(b"hello\n") == "ce013625030ba8dba906f756967f9e9ca394464a"
    notes = repo_dir / "snapshots" / first / "sub" / "dir" / "notes.txt"
    assert notes.is_symlink()
    assert os.readlink(notes) == "../../../../blobs/ce013625030ba8dba906f756967f9e9ca394464a"
    weights_link = os.readlink(repo_dir / "snapshots" / first / "model.safetensors")
    assert weights_link.startswith("../../blobs/") and len(weights_link.rsplit("/", 1)[1]) == 64
    assert (repo_dir / "refs" / "main").read_bytes() == first.encode()  # no newline, as huggingface_hub writes
    assert (repo_dir / "refs" / "refs" / "pr" / "1").read_bytes() == second.encode()
    assert len(list((repo_dir / "blobs").iterdir())) == 5  # the shared config.json is stored once

    info = scan_cache_dir(tmp_path)
    assert not info.warnings
    (repo,) = info.repos
    assert (repo.repo_id, repo.repo_type, repo.nb_files) == ("org/name", "model", 5)
    assert {r.commit_hash: set(r.refs) for r in repo.revisions} == {first: {"main"}, second: {"refs/pr/1"}}

    for revision, expected in (("main", b"hello\n"), ("refs/pr/1", b"changed\n"), (second, b"changed\n")):
        path = try_to_load_from_cache("org/name", "sub/dir/notes.txt", cache_dir=tmp_path, revision=revision)
        assert isinstance(path, str) and Path(path).read_bytes() == expected

    # rewriting is idempotent; moving a ref replaces it
    write_hub_repo(tmp_path, "org/name", revisions, {"main": second})
    assert (repo_dir / "refs" / "main").read_text() == second


def test_hub_layout_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="40 lowercase hex"):
        write_hub_repo(tmp_path, "org/name", {"main": {"a.txt": b""}}, {})
    with pytest.raises(ValueError, match="not among the revisions"):
        write_hub_repo(tmp_path, "org/name", {"c" * 40: {"a.txt": b""}}, {"main": "d" * 40})
    with pytest.raises(ValueError, match="inside the repo"):
        write_hub_repo(tmp_path, "org/name", {"c" * 40: {"../escape.txt": b""}}, {})


# ---------------------------------------------------------------------------------------------
# remote-code revision states
# ---------------------------------------------------------------------------------------------


def _output_fields(modeling: str) -> list[str]:
    tree = ast.parse(modeling)
    (cls,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == OUTPUT_CLASS]
    return [s.target.id for s in cls.body if isinstance(s, ast.AnnAssign)]


def _language_model_bases(modeling: str) -> list[str]:
    tree = ast.parse(modeling)
    (cls,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Florence2LanguageForConditionalGeneration"]
    return [ast.unparse(b) for b in cls.bases]


def test_remote_code_states_have_the_upstream_shapes():
    needs_fix = remote_code_files("needs-fix")["modeling_florence2.py"].decode()
    fixed = remote_code_files("fixed-upstream")["modeling_florence2.py"].decode()
    mixin = remote_code_files("generation-mixin")["modeling_florence2.py"].decode()
    original = [
        "last_hidden_state", "past_key_values", "decoder_hidden_states", "decoder_attentions",
        "cross_attentions", "encoder_last_hidden_state", "encoder_hidden_states", "encoder_attentions",
    ]
    assert _output_fields(needs_fix) == original
    assert _output_fields(fixed) == ["loss", "logits", *original, "image_hidden_states"]
    assert _output_fields(mixin) == _output_fields(fixed)
    # forward builds the output with the fields the needs-fix class lacks
    assert "loss=loss," in needs_fix and "image_hidden_states=image_features" in needs_fix
    assert "del config.vision_config.model_type" in needs_fix and "del config.vision_config.model_type" not in fixed
    assert _language_model_bases(needs_fix) == ["Florence2LanguagePreTrainedModel"]
    assert _language_model_bases(fixed) == ["Florence2LanguagePreTrainedModel"]
    assert _language_model_bases(mixin) == ["Florence2LanguagePreTrainedModel", "GenerationMixin"]
    for state in REVISION_STATES:
        files = remote_code_files(state)
        assert sorted(files) == sorted(CODE_FILES)
        for name, content in files.items():
            compile(content, name, "exec")
        # only the modeling file changes between states
        assert files["configuration_florence2.py"] == remote_code_files("needs-fix")["configuration_florence2.py"]
    with pytest.raises(ValueError, match="unknown revision state"):
        remote_code_files("fixed")


# ---------------------------------------------------------------------------------------------
# the demo repo
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_hf_home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("demo-hf")
    build_demo_repo(home)
    return home


def test_build_demo_repo_lays_out_a_complete_deterministic_checkpoint(demo_hf_home, tmp_path):
    from huggingface_hub import scan_cache_dir

    files = demo_repo_files()
    commit = commit_for(files)
    snapshot = demo_hf_home / "hub" / "models--florence-patch--florence-2-tiny" / "snapshots" / commit
    assert snapshot.is_dir(), "the module fixture and a second build disagree on the commit"
    assert {p.name for p in snapshot.iterdir()} == set(files) >= {
        "config.json", "generation_config.json", "preprocessor_config.json", "model.safetensors",
        "tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json",
        *CODE_FILES,
    }
    (repo,) = scan_cache_dir(demo_hf_home / "hub").repos
    assert repo.repo_id == DEMO_REPO_ID
    assert {r.commit_hash: set(r.refs) for r in repo.revisions} == {commit: {"main"}}

    config = json.loads(files["config.json"])
    assert set(config["auto_map"]) == {"AutoConfig", "AutoModelForCausalLM", "AutoProcessor"}
    assert config["architectures"] == ["Florence2ForConditionalGeneration"]
    assert config["vision_config"]["model_type"] == "davit"
    base_vocab = len(json.loads(files["vocab.json"]))
    assert config["vocab_size"] == config["text_config"]["vocab_size"] == base_vocab + PROCESSOR_ADDED_TOKENS
    assert json.loads(files["preprocessor_config.json"])["image_seq_length"] == IMAGE_SEQ_LENGTH

    # another seed, other weights (and so another commit); another state, other code
    assert commit_for(demo_repo_files(seed=1)) != commit
    fixed = build_demo_repo(tmp_path, revision_state="fixed-upstream")
    assert fixed.commit != commit
    assert (fixed.snapshot / "modeling_florence2.py").read_bytes() == remote_code_files("fixed-upstream")["modeling_florence2.py"]


def test_weights_are_finite_and_tied_embeddings_agree():
    from safetensors.torch import load

    state = load(demo_repo_files()["model.safetensors"])
    assert all(bool(t.isfinite().all()) for t in state.values())
    shared = state["language_model.model.shared.weight"]
    assert shared.abs().sum() > 0
    assert float(shared[1].abs().sum()) == 0.0  # the <pad> row
    for name in ("model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight", "lm_head.weight"):
        assert state[f"language_model.{name}"].equal(shared)
    assert state["image_projection"].std() > 0  # the model leaves it torch.empty: we must give it values


def test_tokenizer_loads_offline_as_bart_fast(demo_hf_home):
    from transformers import BartTokenizerFast

    snapshot = next((demo_hf_home / "hub" / "models--florence-patch--florence-2-tiny" / "snapshots").iterdir())
    tokenizer = BartTokenizerFast.from_pretrained(snapshot)
    ids = tokenizer("<DocVQA>What is the total?")["input_ids"]
    assert ids[0] == tokenizer.bos_token_id == 0 and ids[-1] == tokenizer.eos_token_id == 2
    assert tokenizer.pad_token_id == 1
    assert tokenizer.decode(ids, skip_special_tokens=True) == "<DocVQA>What is the total?"
    assert len(ids) < 15  # the corpus taught it the prompt's words


# ---------------------------------------------------------------------------------------------
# behaviour under transformers 4.49 (subprocess with the overlay)
# ---------------------------------------------------------------------------------------------

# The output-class fix as a plain string edit (the codemod does the same with libcst).
_OUTPUT_FIELDS_BEFORE = "    last_hidden_state: torch.FloatTensor = None\n"
_OUTPUT_FIELDS_AFTER = (
    "    loss: Optional[torch.FloatTensor] = None\n"
    "    logits: torch.FloatTensor = None\n"
    "    last_hidden_state: torch.FloatTensor = None\n"
)
_LAST_FIELD = "    encoder_attentions: Optional[Tuple[torch.FloatTensor, ...]] = None\n"
_LAST_FIELD_AFTER = _LAST_FIELD + "    image_hidden_states: Optional[Tuple[torch.FloatTensor, ...]] = None\n"


def string_output_fix(modeling: str) -> str:
    assert modeling.count(_OUTPUT_FIELDS_BEFORE) == 1 and modeling.count(_LAST_FIELD) == 1
    return modeling.replace(_OUTPUT_FIELDS_BEFORE, _OUTPUT_FIELDS_AFTER).replace(_LAST_FIELD, _LAST_FIELD_AFTER)


_TF449_SCRIPT = textwrap.dedent(
    r"""
    import json, math, sys
    import torch
    import transformers
    from PIL import Image, ImageDraw
    from transformers import AutoConfig, AutoModelForCausalLM, AutoProcessor

    torch.manual_seed(0)
    repo = sys.argv[1]
    result = {"transformers": transformers.__version__}

    def load(revision):
        model, info = AutoModelForCausalLM.from_pretrained(
            repo, trust_remote_code=True, revision=revision, output_loading_info=True
        )
        return model, info, AutoProcessor.from_pretrained(repo, trust_remote_code=True, revision=revision)

    image = Image.new("RGB", (300, 400), "white")
    ImageDraw.Draw(image).text((20, 20), "TOTAL 12.50", fill="black")

    def batch(processor):
        inputs = processor(text=["<DocVQA>What is the total?"] * 2, images=[image, image], return_tensors="pt")
        labels = processor.tokenizer(["12.50", "12.50"], return_tensors="pt").input_ids
        return inputs, labels

    # the unpatched revision
    config = AutoConfig.from_pretrained(repo, trust_remote_code=True, revision="main")
    model, info, processor = load("main")
    inputs, labels = batch(processor)
    result["missing_keys"] = sorted(info["missing_keys"])
    result["unexpected_keys"] = sorted(info["unexpected_keys"])
    result["vocab_matches"] = len(processor.tokenizer) == config.text_config.vocab_size == config.vocab_size
    result["pixel_values_shape"] = list(inputs["pixel_values"].shape)
    result["prompt"] = processor.tokenizer.decode(inputs["input_ids"][0])
    result["post_processed"] = processor.post_process_generation("</s><s>12.50</s>", task="<DocVQA>", image_size=(300, 400))
    try:
        model(**inputs, labels=labels)
        result["unpatched_forward"] = "no error"
    except TypeError as error:
        result["unpatched_forward"] = str(error)
    model.eval()
    with torch.no_grad():
        generated = model.generate(input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"], max_new_tokens=5, num_beams=3)
    result["unpatched_generate_shape"] = list(generated.shape)

    # the revision with the output-class fix
    model, info, processor = load("refs/pr/1")
    model.train()
    out = model(**inputs, labels=labels)
    out.loss.backward()
    result["fixed_loss"] = out.loss.item()
    result["fixed_logits_shape"] = list(out.logits.shape)
    result["fixed_image_hidden_states_shape"] = list(out.image_hidden_states.shape)
    grads = {
        "image_projection": model.image_projection.grad,
        "vision": model.vision_tower.convs[0].proj.weight.grad,
        "lm_head": model.language_model.lm_head.weight.grad,
    }
    result["grad_norms"] = {k: (None if g is None else float(g.norm())) for k, g in grads.items()}
    model.eval()
    with torch.no_grad():
        generated = model.generate(input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"], max_new_tokens=5, num_beams=3)
        result["fixed_eval_loss"] = model(**inputs, labels=labels).loss.item()
    result["fixed_generate_shape"] = list(generated.shape)
    result["fixed_generated_starts"] = generated[:, :2].tolist()

    if len(sys.argv) > 2:  # upstream's fixed revision, same weights: the same function
        upstream, _, _ = load(sys.argv[2])
        upstream.eval()
        with torch.no_grad():
            result["upstream_eval_loss"] = upstream(**inputs, labels=labels).loss.item()
    print("RESULT " + json.dumps(result))
    """
)


def _lay_out_tf449_repo(home: Path) -> list[str]:
    """main = needs-fix; refs/pr/1 = needs-fix + the string output fix; refs/pr/2 = upstream 484465f if available."""
    files = demo_repo_files()
    string_fixed = dict(files)
    string_fixed["modeling_florence2.py"] = string_output_fix(files["modeling_florence2.py"].decode()).encode()
    revisions = {commit_for(files): files, commit_for(string_fixed): string_fixed}
    refs = {"main": commit_for(files), "refs/pr/1": commit_for(string_fixed)}
    extra_args = []
    upstream_dir = os.environ.get("FLORENCE_PATCH_UPSTREAM_DIR")
    if upstream_dir and (Path(upstream_dir) / "484465f" / "modeling_florence2.py").is_file():
        upstream = dict(files)
        for name in CODE_FILES:
            upstream[name] = (Path(upstream_dir) / "484465f" / name).read_bytes()
        revisions[commit_for(upstream)] = upstream
        refs["refs/pr/2"] = commit_for(upstream)
        extra_args.append("refs/pr/2")
    write_hub_repo(home / "hub", DEMO_REPO_ID, revisions, refs)
    return extra_args


@pytest.mark.skipif(not TF449_OVERLAY.is_dir(), reason=f"transformers 4.49 overlay not installed at {TF449_OVERLAY}")
def test_fixture_on_transformers_449_needs_only_the_output_fix(tmp_path):
    extra_args = _lay_out_tf449_repo(tmp_path)
    result = _run_python(_TF449_SCRIPT, [DEMO_REPO_ID, *extra_args], tmp_path, pythonpath=str(TF449_OVERLAY))

    assert result["transformers"] == "4.49.0"
    assert result["missing_keys"] == [] and result["unexpected_keys"] == []
    assert result["vocab_matches"]
    assert result["pixel_values_shape"] == [2, 3, IMAGE_SIZE, IMAGE_SIZE]
    assert result["prompt"] == "<s><DocVQA>What is the total?</s>"  # '<DocVQA>' is not a task the processor rewrites
    assert result["post_processed"] == {"<DocVQA>": "12.50"}
    # the bug the output-class fix repairs, exactly as upstream shows it
    assert "unexpected keyword argument 'loss'" in result["unpatched_forward"]
    assert result["unpatched_generate_shape"][0] == 2  # inference goes through the language model and works

    assert math.isfinite(result["fixed_loss"]) and result["fixed_loss"] > 0
    assert result["fixed_logits_shape"][0] == 2 and result["fixed_logits_shape"][-1] > 1000
    assert result["fixed_image_hidden_states_shape"] == [2, IMAGE_SEQ_LENGTH, D_MODEL]
    assert all(norm is not None and norm > 0 for norm in result["grad_norms"].values()), result["grad_norms"]
    assert result["fixed_generate_shape"][0] == 2
    assert all(start == [2, 0] for start in result["fixed_generated_starts"])  # decoder start, then forced <s>
    if "upstream_eval_loss" in result:
        assert result["upstream_eval_loss"] == pytest.approx(result["fixed_eval_loss"], rel=1e-5)


# ---------------------------------------------------------------------------------------------
# behaviour under the installed transformers (a subprocess too: the hub and module caches are fixed
# at import time, so only a fresh interpreter honours a private HF_HOME)
# ---------------------------------------------------------------------------------------------

_LOAD_OUTCOMES_SCRIPT = textwrap.dedent(
    r"""
    import json, sys
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM, AutoProcessor

    def first_error(action):
        try:
            action()
        except Exception as error:  # whatever the remote code raises is the observation
            text = str(error)
            return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"
        return "ok"

    outcomes = {}
    for repo in sys.argv[1:]:
        outcomes[repo] = {
            "config": first_error(lambda: AutoConfig.from_pretrained(repo, trust_remote_code=True)),
            "model": first_error(lambda: AutoModelForCausalLM.from_pretrained(repo, trust_remote_code=True)),
            "processor": first_error(lambda: AutoProcessor.from_pretrained(repo, trust_remote_code=True)),
        }
    print("RESULT " + json.dumps({"transformers": transformers.__version__, "outcomes": outcomes}))
    """
)


def _run_python(script: str, args: list[str], hf_home: Path, pythonpath: str | None = None) -> dict:
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_MODULES_CACHE", "PYTHONPATH"):
        env.pop(var, None)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    run = subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True, text=True, timeout=300)
    lines = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
    assert run.returncode == 0 and lines, run.stderr[-4000:]
    return json.loads(lines[-1][len("RESULT "):])


def test_unpatched_fixture_fails_on_transformers_5(tmp_path):
    import transformers

    if int(transformers.__version__.split(".")[0]) < 5:
        pytest.skip("needs transformers 5.x in this environment")
    files = demo_repo_files()
    write_hub_repo(tmp_path / "hub", DEMO_REPO_ID, {commit_for(files): files}, {"main": commit_for(files)})
    outcomes = _run_python(_LOAD_OUTCOMES_SCRIPT, [DEMO_REPO_ID], tmp_path)["outcomes"][DEMO_REPO_ID]
    # 5.x keeps generation settings off PretrainedConfig: reading self.forced_bos_token_id fails
    expected = "AttributeError: 'Florence2LanguageConfig' object has no attribute 'forced_bos_token_id'"
    assert outcomes == {"config": expected, "model": expected, "processor": expected}


def test_fixture_fails_like_upstream_on_installed_transformers(tmp_path):
    upstream_dir = os.environ.get("FLORENCE_PATCH_UPSTREAM_DIR")
    if not upstream_dir or not (Path(upstream_dir) / "33ee8e1" / "modeling_florence2.py").is_file():
        pytest.skip("FLORENCE_PATCH_UPSTREAM_DIR with the 33ee8e1 files is not available")
    ours = demo_repo_files()
    upstream = dict(ours)
    for name in CODE_FILES:
        upstream[name] = (Path(upstream_dir) / "33ee8e1" / name).read_bytes()
    upstream_repo = "florence-patch/upstream-33ee8e1"
    for repo_id, files in ((DEMO_REPO_ID, ours), (upstream_repo, upstream)):
        write_hub_repo(tmp_path / "hub", repo_id, {commit_for(files): files}, {"main": commit_for(files)})
    outcomes = _run_python(_LOAD_OUTCOMES_SCRIPT, [DEMO_REPO_ID, upstream_repo], tmp_path)["outcomes"]
    assert outcomes[DEMO_REPO_ID] == outcomes[upstream_repo]
