"""manifest.json: no secrets on disk, and a hardware identity precise enough for bitwise claims."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from bench import hardware, manifest
from bench.redact import redact

URL = "postgresql+psycopg2://bench_user:secret@db.example.org:5432/studies"


def test_the_manifest_holds_no_storage_password(tmp_path):
    argv = ["transfer-bench", "sweep", f"hpo.storage={URL}", "hpo.worker_id=1"]
    config = {"hpo": {"storage": URL, "n_trials": 4},
              "notes": ["sqlite:///x.db", "mysql://u@h/db?user=u&password=secret&ssl=1"]}
    run = {**manifest.run_entry(argv), "overrides": argv[2:], "config": config}
    manifest.update(tmp_path, {"study": "s", "config": config}, "r1", run)

    text = (tmp_path / manifest.MANIFEST).read_text()
    assert "secret" not in text
    written = json.loads(text)
    masked = "postgresql+psycopg2://bench_user:***@db.example.org:5432/studies"
    assert written["config"]["hpo"]["storage"] == masked  # where the study lived stays readable
    assert written["runs"]["r1"]["argv"][2] == f"hpo.storage={masked}"
    assert written["runs"]["r1"]["overrides"][0] == f"hpo.storage={masked}"
    assert written["runs"]["r1"]["config"]["notes"] == [
        "sqlite:///x.db", "mysql://u@h/db?user=u&password=***&ssl=1"]


@pytest.mark.parametrize("text,expected", [
    ("redis://:secret@cache:6379/0", "redis://:***@cache:6379/0"),
    ("'mysql://u:se/cr?et@h/db'", "'mysql://u:***@h/db'"),  # an unescaped password, quoted
    ("postgresql://user@host/db", "postgresql://user@host/db"),  # no password: unchanged
    ("https://host:8080/path", "https://host:8080/path"),
    ("sqlite:////abs/optuna.db", "sqlite:////abs/optuna.db"),
])
def test_redact_masks_only_the_password(text, expected):
    assert redact(text) == expected


def test_redact_walks_nested_data_without_changing_it():
    data = {"a": [1, None, ("x", {"k": URL})], "b": 2.5}
    before = copy.deepcopy(data)
    assert redact(data) == {"a": [1, None, ["x", {"k": URL.replace("secret", "***")}]], "b": 2.5}
    assert data == before


def test_the_numerics_identity_names_what_picks_the_kernels():
    ident = hardware.numerics_identity()
    assert ident["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert ident["cpu"] == hardware.cpu_model()
    assert ident["torch"] == torch.__version__
    assert ident["threads"] == torch.get_num_threads()
    assert set(ident["isa"]) <= hardware.NUMERIC_ISA
    assert ident["torch_build"]["mkldnn"] == torch.backends.mkldnn.is_available()
    assert ident["torch_build"]["mkl"] == torch.backends.mkl.is_available()
    assert (ident["cuda"] is None) == (not torch.cuda.is_available())
    if ident["machine"] == "x86_64" and ident["cpu_capability"] in ("AVX2", "AVX512"):
        assert "avx2" in ident["isa"]  # read from /proc/cpuinfo, filtered, not dropped
    assert hardware.describe()["numerics"] == ident
    # as it comes back from manifest.json, it still equals the live one
    assert hardware.same_numerics(json.loads(json.dumps(ident)), ident) == (True, [])


def test_same_numerics_names_the_field_that_differs():
    here = hardware.numerics_identity()
    there = copy.deepcopy(here)
    there["cpu_capability"] = "AVX512" if here["cpu_capability"] != "AVX512" else "AVX2"
    extra = min(hardware.NUMERIC_ISA - set(here["isa"]))  # x86 and Arm names: one is missing
    there["isa"] = sorted([*here["isa"], extra])
    same, why = hardware.same_numerics(there, here)
    assert not same
    assert why == [f"cpu_capability {there['cpu_capability']} vs {here['cpu_capability']}",
                   f"isa {extra} vs (none)"]  # nothing else is reported as different

    for field, value in (("threads", here["threads"] + 1), ("torch", "0.0.1"),
                         ("cuda", {"devices": [{"name": "H200", "capability": "9.0"}]})):
        same, why = hardware.same_numerics({**here, field: value}, here)
        assert not same and [w.split()[0] for w in why] == [field]


def test_an_identity_of_another_version_never_matches():
    here = hardware.numerics_identity()
    older = {k: v for k, v in here.items() if k != "cpu_capability"}
    same, why = hardware.same_numerics(older, here)
    assert not same and why == [f"cpu_capability (missing) vs {here['cpu_capability']}"]
