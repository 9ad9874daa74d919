"""Mount points below a directory, and taking them down: for the image builder (a killed build can leave
its chroot mounted) and the real node (containers' root filesystems, Pods' volumes and network namespaces)."""

from __future__ import annotations

import subprocess
from pathlib import Path


def under(directory: Path) -> list[str]:
    """Mount points strictly below ``directory``, as /proc/self/mountinfo lists them."""
    prefix = str(directory.resolve()).rstrip("/") + "/"
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point.startswith(prefix):
            found.append(point)
    return found


def unmount_under(directory: Path, timeout: float = 60) -> list[str]:
    """Unmount everything below ``directory``, deepest first and lazily (a mount still used by a dying
    process is detached anyway); returns what is still mounted."""
    for point in sorted(set(under(directory)), key=lambda p: p.count("/"), reverse=True):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True, timeout=timeout)
    return under(directory)
