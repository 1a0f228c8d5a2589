"""`sewer-hf push` / `push-dataset` against an in-process fake Hub (no network).

huggingface_hub 2 sends every request through one shared `httpx2.Client`; `set_client_factory`
swaps in a client whose `MockTransport` is the fake Hub below. The endpoint is a dummy host
(`huggingface_hub.constants.ENDPOINT` is patched, which `HfApi()` reads when it is created).
"""
from __future__ import annotations

import base64
import hashlib
import json
import re

import httpx2
import huggingface_hub
import pytest
import yaml
from huggingface_hub import DatasetCard, ModelCard, constants
from huggingface_hub.utils import _http

from sewer_hf import cli
from sewer_hf.config import FinetuneConfig, PretrainConfig, save_config
from sewer_hf.hub.publish import (
    HubAuthError,
    HubConflictError,
    HubConnectionError,
    HubPermissionError,
    check_push_config,
    push_dataset,
    push_model,
)

ENDPOINT = "https://hub.test"
SECRET = "hf_FakeSecretTokenForSewerTests0123"
REPO = "sewer-org/sewer-vit-tiny"


# ------------------------------------------------------------------------------------------------
# The fake Hub
# ------------------------------------------------------------------------------------------------

class FakeHub:
    """Answers the endpoints `create_repo` + `upload_folder` use; records what arrives.
    `fail[(method, path_regex)] = status` makes a route answer with an error that echoes the
    token (as a careless server message could), so scrubbing is tested too."""

    def __init__(self) -> None:
        self.requests: list[httpx2.Request] = []
        self.created: list[dict] = []
        self.commits: list[dict] = []  # {"repo": ..., "header": ..., "files": {path: bytes}}
        self.fail: dict[tuple[str, str], int] = {}
        self.offline = False

    def handler(self, request: httpx2.Request) -> httpx2.Response:
        self.requests.append(request)
        if self.offline:
            raise httpx2.ConnectError("[Errno -2] Name or service not known", request=request)
        assert request.url.host == "hub.test", request.url
        method, path = request.method, request.url.path
        for (m, pattern), status in self.fail.items():
            if m == method and re.fullmatch(pattern, path):
                auth = request.headers.get("authorization", "")
                body = {"error": f"refused for {auth}"}
                if path == "/api/repos/create":  # the Hub names the repo, e.g. "You already created this repo"
                    created = json.loads(request.content)
                    body["url"] = f"{ENDPOINT}/{created['organization']}/{created['name']}"
                return httpx2.Response(status, json=body,
                                       headers={"X-Error-Message": f"refused for {auth}"})
        if method == "POST" and path == "/api/repos/create":
            body = json.loads(request.content)
            self.created.append(body)
            prefix = "datasets/" if body.get("type") == "dataset" else ""
            return httpx2.Response(200, json={"url": f"{ENDPOINT}/{prefix}{body['organization']}/{body['name']}"})
        if method == "POST" and path == "/api/validate-yaml":
            text = json.loads(request.content)["content"]
            front = text.split("---")[1]
            yaml.safe_load(front)  # a broken YAML front matter fails the test here
            return httpx2.Response(200, json={"errors": [], "warnings": []})
        match = re.fullmatch(r"/api/(models|datasets)/(.+)/(preupload|commit)/main", path)
        if method == "POST" and match:
            kind, repo, action = match.groups()
            if action == "preupload":
                files = json.loads(request.content)["files"]
                return httpx2.Response(200, json={"files": [
                    {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]})
            lines = [json.loads(line) for line in request.content.decode().splitlines() if line.strip()]
            header = next(x["value"] for x in lines if x["key"] == "header")
            files = {x["value"]["path"]: base64.b64decode(x["value"]["content"]) for x in lines if x["key"] == "file"}
            self.commits.append({"kind": kind, "repo": repo, "header": header, "files": files})
            prefix = "" if kind == "models" else f"{kind}/"
            return httpx2.Response(200, json={"commitUrl": f"{ENDPOINT}/{prefix}{repo}/commit/{'0' * 40}",
                                              "commitOid": "0" * 40, "success": True})
        if method == "HEAD" and path.endswith("/resolve/main/README.md"):
            return httpx2.Response(404, headers={"X-Error-Code": "EntryNotFound"})
        return httpx2.Response(404, json={"error": "not found"}, headers={"X-Error-Code": "RepoNotFound"})

    def api_requests(self) -> list[httpx2.Request]:
        return [r for r in self.requests if r.url.path.startswith(("/api/repos", "/api/models", "/api/datasets"))]


@pytest.fixture
def fake_hub(monkeypatch):
    hub = FakeHub()
    monkeypatch.setattr(constants, "ENDPOINT", ENDPOINT)
    huggingface_hub.set_client_factory(lambda: httpx2.Client(transport=httpx2.MockTransport(hub.handler)))
    yield hub
    huggingface_hub.set_client_factory(_http.default_client_factory)


@pytest.fixture
def no_token(monkeypatch, tmp_path):
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no_stored_token"))


@pytest.fixture
def token(no_token, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", SECRET)
    return SECRET


# ------------------------------------------------------------------------------------------------
# Tiny runs, built once
# ------------------------------------------------------------------------------------------------

EVAL = {"split": "Val", "epoch": 3, "threshold": 0.5, "F2_CIW": 0.4123, "F1_Normal": 0.8011, "mAP": 0.3567,
        "with_tuned_thresholds_on_same_split": {"F2_CIW": 0.45, "F1_Normal": 0.81, "mAP": 0.3567}}
KNN = {"eval_split": "Val", "k": 20, "temperature": 0.07, "n_train": 64, "n_eval": 32,
       "pretrained": {"F2_CIW": 0.2345, "F1_Normal": 0.61, "mAP": 0.19},
       "random_init": {"F2_CIW": 0.11, "F1_Normal": 0.58, "mAP": 0.09}}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A DINO run (backbone/, config.yaml, knn.json, synthetic data) and a fine-tuning run
    (classifier/ with training_config.yaml, eval.json) on "real" data whose backbone is a Hub id."""
    import torch

    from sewer_hf.models.hf_export import save_backbone, save_classifier
    from sewer_hf.models.vit import create_backbone

    root = tmp_path_factory.mktemp("runs")
    torch.manual_seed(0)
    backbone = create_backbone("vit_tiny", img_size=32).eval()

    dino = root / "dino"
    save_backbone(backbone, dino / "backbone", image_size=32, verify=False,
                  extra_config={"sewer_hf": {"stage": "dino_pretrain", "arch": "vit_tiny"}})
    save_config(PretrainConfig(data=None, image_size=32, output_dir=str(dino)), dino / "config.yaml")
    (dino / "knn.json").write_text(json.dumps(KNN))

    ft = root / "finetune"
    head = torch.nn.Linear(backbone.num_features, 17)
    save_classifier(backbone, head, ft / "classifier", image_size=32, verify=False,
                    extra_config={"sewer_hf": {"stage": "finetune", "arch": "vit_tiny", "best_epoch": 3}})
    cfg = FinetuneConfig(data="/data/sewer-ml", image_size=32, backbone="sewer-org/sewer-dino-vit-tiny",
                         output_dir=str(ft))
    save_config(cfg, ft / "classifier" / "training_config.yaml")
    (ft / "eval.json").write_text(json.dumps(EVAL))
    return {"backbone": dino / "backbone", "classifier": ft / "classifier"}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """`sewer-hf prepare` output: Train in two shards, Val in one."""
    from sewer_hf.data.prepare import prepare_split
    from sewer_hf.synth import generate_dataset

    root = tmp_path_factory.mktemp("prepared")
    generate_dataset(root / "src", 6, 4, seed=0, size=(64, 48), progress=False, overwrite=True)
    for split in ("Train", "Val"):
        prepare_split(root / "src", split, root / "shards", size=32, shard_size=4, progress=False)
    return root / "shards"


def card_of(commit: dict, cls=ModelCard):
    return cls(commit["files"]["README.md"].decode())


# ------------------------------------------------------------------------------------------------
# Model pushes
# ------------------------------------------------------------------------------------------------

def test_push_classifier_uploads_files_card_and_private_flag(runs, fake_hub, token, capsys):
    rc = cli.main(["push", "--model", str(runs["classifier"]), "--repo-id", REPO, "--private",
                   "--commit-message", "First release"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert fake_hub.created == [{"name": "sewer-vit-tiny", "organization": "sewer-org", "visibility": "private",
                                 "type": "model"}]
    [commit] = fake_hub.commits
    assert commit["repo"] == REPO and commit["header"]["summary"] == "First release"
    assert set(commit["files"]) == {"README.md", "config.json", "model.safetensors", "preprocessor_config.json",
                                    "training_config.yaml", "eval.json"}
    weights = (runs["classifier"] / "model.safetensors").read_bytes()
    assert hashlib.sha256(commit["files"]["model.safetensors"]).digest() == hashlib.sha256(weights).digest()
    assert json.loads(commit["files"]["eval.json"]) == EVAL
    assert yaml.safe_load(commit["files"]["training_config.yaml"])["backbone"] == "sewer-org/sewer-dino-vit-tiny"

    card = card_of(commit)
    data = card.data
    assert data.license == "cc-by-nc-sa-4.0"  # real data: Sewer-ML's terms
    assert data.library_name == "transformers" and data.pipeline_tag == "image-classification"
    assert data.base_model == "sewer-org/sewer-dino-vit-tiny"
    results = {r.metric_name: r for r in data.eval_results}
    assert results["F2_CIW"].metric_value == EVAL["F2_CIW"] and results["F2_CIW"].dataset_split == "Val"
    assert results["F1_Normal"].metric_value == EVAL["F1_Normal"] and results["mAP"].metric_value == EVAL["mAP"]
    assert "synthetic" not in " ".join(data.tags)
    assert 'top_k=17' in card.text and "sewer_thresholds" in card.text and "Caron" in card.text
    assert "Haurum" in card.text and "Otero" in card.text and "Intended use" in card.text
    assert "Trained on synthetic data" not in card.text

    assert f"{ENDPOINT}/{REPO}" in out and "private" in out
    # The token went to the Hub, and nowhere else.
    assert all(r.headers["authorization"] == f"Bearer {SECRET}" for r in fake_hub.api_requests())
    assert SECRET not in out + err and SECRET.encode() not in commit["files"]["README.md"]


def test_push_backbone_from_python_says_synthetic_and_uses_knn(runs, fake_hub, token):
    result = push_model(runs["backbone"], "sewer-org/sewer-dino-vit-tiny", endpoint=ENDPOINT)
    assert result.url == f"{ENDPOINT}/sewer-org/sewer-dino-vit-tiny"
    assert fake_hub.created[0]["visibility"] == "public"
    [commit] = fake_hub.commits
    assert "knn.json" in commit["files"] and "eval.json" not in commit["files"]
    card = card_of(commit)
    assert card.data.pipeline_tag == "image-feature-extraction" and card.data.base_model is None
    assert card.data.license == "apache-2.0" and "synthetic-data" in card.data.tags
    assert {r.metric_name: r.metric_value for r in card.data.eval_results} == KNN["pretrained"]
    assert "Trained on synthetic data" in card.text and 'pipeline("image-feature-extraction"' in card.text


def test_dry_run_writes_the_folder_and_sends_nothing(runs, fake_hub, no_token, tmp_path, capsys):
    out_dir = tmp_path / "repo"
    rc = cli.main(["push", "--model", str(runs["classifier"]), "--repo-id", REPO, "--dry-run", "--out", str(out_dir),
                   "--no-synthetic"])
    assert rc == 0, capsys.readouterr().err
    assert fake_hub.requests == []
    assert sorted(p.name for p in out_dir.iterdir()) == ["README.md", "config.json", "eval.json", "model.safetensors",
                                                        "preprocessor_config.json", "training_config.yaml"]
    card = ModelCard.load(out_dir / "README.md")
    assert card.data.model_name == "sewer-vit-tiny"
    # The folder is a loadable transformers model.
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(out_dir).problem_type == "multi_label_classification"
    # A second dry run into the same (now full) folder is refused rather than mixing repos.
    assert cli.main(["push", "--model", str(runs["classifier"]), "--repo-id", REPO, "--dry-run",
                     "--out", str(out_dir)]) == 2
    assert "not an empty folder" in capsys.readouterr().err


def test_no_token_stops_before_any_work(runs, fake_hub, no_token, tmp_path, capsys):
    out_dir = tmp_path / "repo"
    rc = cli.main(["push", "--model", str(runs["classifier"]), "--repo-id", REPO, "--out", str(out_dir)])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: no Hugging Face token") and "HF_TOKEN" in err
    assert "hf auth login" in err and "Traceback" not in err
    assert fake_hub.requests == [] and not out_dir.exists()


@pytest.mark.parametrize("route, status, error, words", [
    (("POST", "/api/repos/create"), 401, HubAuthError, "invalid or expired"),
    (("POST", "/api/repos/create"), 403, HubPermissionError, "belongs to someone else"),
    (("POST", r"/api/models/.+/commit/main"), 409, HubConflictError, "conflict (409)"),
])
def test_hub_refusals_are_clear_and_never_show_the_token(runs, fake_hub, token, route, status, error, words, capsys):
    fake_hub.fail[route] = status
    fake_hub.fail[("GET", r"/api/models/.+")] = status  # create_repo's "does it exist anyway?" check
    with pytest.raises(error) as info:
        push_model(runs["classifier"], REPO)
    message = str(info.value)
    assert words in message and (REPO in message or ENDPOINT in message)
    assert SECRET not in message and "***" in message  # the server echoed the token; it was scrubbed
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert fake_hub.commits == []
    # The same through the CLI: one line, no traceback.
    rc = cli.main(["push", "--model", str(runs["classifier"]), "--repo-id", REPO])
    out, err = capsys.readouterr()
    assert rc == 2 and err.startswith("error: ") and words in err and "Traceback" not in err
    assert SECRET not in out + err


def test_an_existing_repo_gets_a_new_commit_unless_create_only(runs, fake_hub, token):
    fake_hub.fail[("POST", "/api/repos/create")] = 409  # "You already created this model repo"
    push_model(runs["classifier"], REPO)
    assert len(fake_hub.commits) == 1
    with pytest.raises(HubConflictError, match="already exists; drop --create-only"):
        push_model(runs["classifier"], REPO, create_only=True)
    assert len(fake_hub.commits) == 1


def test_network_error_names_the_endpoint(runs, fake_hub, token):
    fake_hub.offline = True
    with pytest.raises(HubConnectionError, match=re.escape(f"could not reach {ENDPOINT}")) as info:
        push_model(runs["classifier"], REPO)
    assert SECRET not in str(info.value)


def test_bad_model_folder_and_repo_id(tmp_path, fake_hub, token, runs):
    assert cli.main(["push", "--model", str(tmp_path), "--repo-id", REPO]) == 2
    assert cli.main(["push", "--model", str(runs["classifier"]), "--repo-id", "no-namespace"]) == 2
    assert fake_hub.requests == []


# ------------------------------------------------------------------------------------------------
# Dataset pushes
# ------------------------------------------------------------------------------------------------

def test_push_dataset_is_private_with_card_and_loadable_layout(prepared, fake_hub, token, capsys):
    rc = cli.main(["push-dataset", "--data", str(prepared), "--repo-id", "sewer-org/sewer-ml-32"])
    assert rc == 0, capsys.readouterr().err
    assert fake_hub.created == [{"name": "sewer-ml-32", "organization": "sewer-org", "visibility": "private",
                                 "type": "dataset"}]
    [commit] = fake_hub.commits
    assert commit["kind"] == "datasets" and commit["repo"] == "sewer-org/sewer-ml-32"
    assert set(commit["files"]) == {"README.md", "Train-00000-of-00002.parquet", "Train-00001-of-00002.parquet",
                                    "Val-00000-of-00001.parquet", "Train-prepare.json", "Val-prepare.json"}
    assert commit["files"]["Val-00000-of-00001.parquet"] == (prepared / "Val-00000-of-00001.parquet").read_bytes()
    assert "source" not in json.loads(commit["files"]["Train-prepare.json"])  # no local paths on the Hub
    card = card_of(commit, DatasetCard)
    assert card.data.license == "cc-by-nc-sa-4.0"
    assert card.data.configs == [{"config_name": "default", "data_files": [
        {"split": "train", "path": "Train-*.parquet"}, {"split": "validation", "path": "Val-*.parquet"}]}]
    assert [f["name"] for f in card.data.dataset_info["features"]] == ["image", "labels", "filename",
                                                                       "water_level", "defect"]
    assert "Haurum" in card.text and "| `labels` | int8 × 17 |" in card.text
    assert SECRET not in capsys.readouterr().out


def test_push_dataset_dry_run_loads_with_load_dataset(prepared, fake_hub, no_token, tmp_path):
    import datasets

    out_dir = tmp_path / "ds_repo"
    result = push_dataset(prepared, "sewer-org/sewer-ml-32", dry_run=True, out_dir=out_dir)
    assert fake_hub.requests == [] and result.url is None
    val = datasets.load_dataset(str(out_dir), split="validation", cache_dir=str(tmp_path / "cache"))
    assert len(val) == 4 and len(val[0]["labels"]) == 17


def test_push_dataset_refuses_an_unfinished_prepare(prepared, tmp_path, fake_hub, token):
    partial = tmp_path / "partial"
    partial.mkdir()
    for name in ("Train-00001-of-00002.parquet", "Train-prepare.json"):
        (partial / name).write_bytes((prepared / name).read_bytes())
    assert cli.main(["push-dataset", "--data", str(partial), "--repo-id", "sewer-org/x"]) == 2
    assert fake_hub.requests == []


# ------------------------------------------------------------------------------------------------
# Recipes: --push_to_hub fails early
# ------------------------------------------------------------------------------------------------

def test_recipes_check_push_settings_before_training(no_token, monkeypatch):
    from sewer_hf.errors import ConfigError

    check_push_config(FinetuneConfig())  # push_to_hub off: nothing to check
    with pytest.raises(ConfigError, match="hub_model_id"):
        check_push_config(FinetuneConfig(push_to_hub=True))
    with pytest.raises(HubAuthError, match="HF_TOKEN"):
        check_push_config(PretrainConfig(push_to_hub=True, hub_model_id=REPO))
    monkeypatch.setenv("HF_TOKEN", SECRET)
    check_push_config(PretrainConfig(push_to_hub=True, hub_model_id=REPO))
