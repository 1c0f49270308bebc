"""Run `run_mlm_pretraining.main()` and write a digest of this process's final weights.

Launched on two processes by a slow test: equal digests show that DistributedDataParallel
synchronised the gradients of the masked-only loss.
"""

import hashlib
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import run_mlm_pretraining  # noqa: E402

trainers = []


class RecordingTrainer(run_mlm_pretraining.MaskedLMTrainer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        trainers.append(self)


run_mlm_pretraining.MaskedLMTrainer = RecordingTrainer
arguments = sys.argv[1:]
run_mlm_pretraining.main(arguments)

digest = hashlib.sha256()
for name, tensor in sorted(trainers[0].model.state_dict().items()):
    digest.update(name.encode())
    digest.update(tensor.detach().cpu().numpy().tobytes())
output_dir = Path(arguments[arguments.index("--output_dir") + 1])
rank = os.environ.get("RANK", "0")
(output_dir / f"weights-digest-rank{rank}.txt").write_text(f"{trainers[0].use_masked_only_head} {digest.hexdigest()}\n")
