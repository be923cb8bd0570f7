from __future__ import annotations

import subprocess
import sys


def test_operators_import_without_ray_or_kafka() -> None:
    code = (
        "import sys, cola_moderation.operators, cola_moderation.operators.moderator, cola_moderation.operators.decode\n"
        "import cola_moderation.operators.backbones.transformers_clip, cola_moderation.operators.defences.zeroshot\n"
        "heavy = sorted(m for m in ('ray', 'kafka', 'pyarrow', 'confluent_kafka') if m in sys.modules)\n"
        "print(','.join(heavy))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""
