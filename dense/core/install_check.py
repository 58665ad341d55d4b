"""The installation check that cannot wait: a torchvision built for another torch.

pip can end with torch and torchvision from different builds (e.g. torch from PyPI, torchvision from
PyTorch's CPU index, installed by two commands). torchvision then fails at import with a long
traceback ending in `RuntimeError: operator torchvision::nms does not exist`, which names neither the
versions nor the fix. `import_torchvision` turns that into one line. It is called before the first
import of anything that imports torchvision (timm in dense/backbones/dinov2/vit.py, Lightning in the
entry scripts).
"""

from __future__ import annotations

import re
from importlib import metadata

from dense.core.errors import InstallError

# CPU wheels of torch and torchvision (README, "Set-up").
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def import_torchvision() -> None:
    """Import torchvision, or raise InstallError naming both versions and the command that fixes them."""
    try:
        import torchvision  # noqa: F401
    except RuntimeError as error:
        if "torchvision::" not in str(error):  # only the failure of its compiled operators is ours to explain
            raise
        raise InstallError(mismatch_message(str(error))) from None


def installed_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "(not installed)"


def matching_torchvision(torch_version: str) -> str | None:
    """The torchvision release series built for a torch version: 0.(N+15) for torch 2.N (0.21 for 2.6,
    0.29 for 2.14), as PyTorch releases them together; None for versions outside that rule."""
    match = re.match(r"2\.(\d+)\.", torch_version)
    return f"0.{int(match.group(1)) + 15}" if match else None


def mismatch_message(reason: str) -> str:
    torch_version, vision_version = installed_version("torch"), installed_version("torchvision")
    series = matching_torchvision(torch_version)
    torch_public = torch_version.split("+", 1)[0]
    pin = f"torchvision=={series}.*" if series else "torchvision"
    first_line = reason.strip().splitlines()[0] if reason.strip() else reason
    return (
        f"torchvision {vision_version} does not fit torch {torch_version} (another release or another build: "
        f"its compiled operators did not load: {first_line}); install the two together, from one index: "
        f'pip install --force-reinstall "torch=={torch_public}" "{pin}" '
        f"(CPU-only machines: add --index-url {CPU_INDEX})"
    )
