"""NACLIP is known to transformers whatever the order of the imports, and `import naclip_hf` stays light."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest


def run_fresh(code: str) -> subprocess.CompletedProcess:
    """Run `code` in a new interpreter (the environment, so PYTHONPATH, is inherited)."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300
    )  # fmt: skip


LOADS_PIPELINE = textwrap.dedent("""
    from transformers import pipeline
    segmenter = pipeline("naclip-segmentation", model={folder!r})
    assert type(segmenter).__name__ == "NACLIPSegmentationPipeline", type(segmenter)
    assert type(segmenter.model).__name__ == "NACLIPForSemanticSegmentation", type(segmenter.model)
""")
LOADS_CONFIG_AND_MODEL = textwrap.dedent("""
    from transformers import AutoConfig, AutoModel
    assert type(AutoConfig.from_pretrained({folder!r})).__name__ == "NACLIPConfig"
    assert type(AutoModel.from_pretrained({folder!r})).__name__ == "NACLIPForSemanticSegmentation"
""")
LOADS_PROCESSORS = textwrap.dedent("""
    from transformers import AutoImageProcessor, AutoProcessor
    assert type(AutoImageProcessor.from_pretrained({folder!r})).__name__ == "NACLIPImageProcessor"
    assert type(AutoProcessor.from_pretrained({folder!r})).__name__ == "NACLIPProcessor"
""")

ORDERS = {
    "naclip_hf, then the transformers pipeline": "import naclip_hf\n" + LOADS_PIPELINE,
    "transformers, then naclip_hf": "import transformers\nimport naclip_hf\n" + LOADS_PIPELINE,
    "torch, naclip_hf, then the auto classes": "import torch\nimport naclip_hf\n" + LOADS_CONFIG_AND_MODEL,
    "a name from naclip_hf, then AutoModel": "from naclip_hf import NACLIPConfig\n" + LOADS_CONFIG_AND_MODEL,
    "naclip_hf, then the auto processors": "import naclip_hf\n" + LOADS_PROCESSORS,
    "the pipeline registry first": (
        "import naclip_hf\n"
        "from transformers.pipelines import PIPELINE_REGISTRY\n"
        "assert 'naclip-segmentation' in PIPELINE_REGISTRY.get_supported_tasks()\n" + LOADS_PIPELINE
    ),
    "a library that imports transformers itself (evaluate)": (
        "import naclip_hf\nimport evaluate\n" + LOADS_CONFIG_AND_MODEL
    ),
    "a model-package module first": (
        "import naclip_hf.models.naclip.configuration_naclip\n" + LOADS_CONFIG_AND_MODEL + LOADS_PIPELINE
    ),
}


@pytest.mark.parametrize("order", list(ORDERS))
def test_every_import_order_registers(order, tiny_checkpoint):
    code = ORDERS[order].format(folder=str(tiny_checkpoint)) + "print('ok')\n"
    completed = run_fresh(code)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip().splitlines()[-1] == "ok"


def test_import_naclip_hf_imports_neither_torch_nor_transformers():
    completed = run_fresh(
        """
        import sys
        import naclip_hf
        from naclip_hf.models.naclip import labels, options  # the torch-free parts stay torch-free
        print(sorted(name for name in ("torch", "transformers") if name in sys.modules))
        """
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "[]"


def test_without_torch_transformers_still_imports_and_the_registration_warns():
    """Without torch, importing transformers after naclip_hf still works; the registration says what is missing."""
    completed = run_fresh(
        """
        import sys, warnings
        sys.modules["torch"] = None  # as if torch were not installed
        import naclip_hf
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import transformers
        print(transformers.__name__)
        print(" | ".join(str(warning.message) for warning in caught if "naclip_hf" in str(warning.message)))
        """
    )
    assert completed.returncode == 0, completed.stderr
    name, message = completed.stdout.strip().splitlines()[-2:]
    assert name == "transformers"
    assert "NACLIP is not registered with transformers" in message and "register_naclip()" in message
