"""The generated protobuf and gRPC modules are exactly what scripts/generate-proto makes of
remote/podiam.proto today: an edit of the .proto without regenerating fails here."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).parents[2]
REMOTE = ROOT / "src" / "podiam" / "remote"
GENERATED = ("podiam_pb2.py", "podiam_pb2.pyi", "podiam_pb2_grpc.py", "podiam_pb2_grpc.pyi")


def test_the_generated_modules_match_the_proto(tmp_path: Path) -> None:
    subprocess.run([str(ROOT / "scripts" / "generate-proto"), str(tmp_path)], check=True, capture_output=True)
    for name in GENERATED:
        fresh = (tmp_path / "podiam" / "remote" / name).read_text()
        assert (REMOTE / name).read_text() == fresh, f"{name} is stale: run scripts/generate-proto"
