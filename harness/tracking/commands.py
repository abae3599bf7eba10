"""What a run's logger hands the writer (harness/tracking/writer.py), as typed commands, and
`Writes`, which carries them out with one MLflow client.

A metric `Batch` is written as `log_batch` writes it (harness/tracking/mlflow_fast.py), a
`StepImage` is encoded and staged (harness/tracking/images.py), `WriteImages` writes a run's
staged images, `Forget` drops what a closed run left staged, `OpenStore` opens the store ahead
of the first write. A writer process is also asked `Done` (a run's writes so far are in: its
first error comes back) and told to `Stop`.
"""

from dataclasses import dataclass
from typing import Any

from harness.tracking.images import ImageStage


@dataclass(frozen=True)
class Batch:
    run_id: str
    metrics: list[tuple]
    """(key, value, timestamp, step)"""
    params: list[tuple] = ()
    """(key, value)"""
    tags: list[tuple] = ()
    """(key, value)"""


@dataclass(frozen=True)
class StepImage:
    run_id: str
    image: Any
    """a PIL image, or its two files as `images.encoded` makes them (on the way to a writer process)"""
    key: str
    step: int
    timestamp: int
    artifact_uri: str | None = None


@dataclass(frozen=True)
class WriteImages:
    run_id: str


@dataclass(frozen=True)
class Forget:
    run_id: str


@dataclass(frozen=True)
class OpenStore:
    run_id: None = None


@dataclass(frozen=True)
class Done:
    run_id: str | None
    """None: every run's"""


@dataclass(frozen=True)
class Stop:
    run_id: None = None


Command = Batch | StepImage | WriteImages | Forget | OpenStore | Done | Stop
DATA = (Batch, StepImage)  # the commands that take one of `WriterProcess.max_pending` until sent


class Writes:
    """Carries out the commands with one MLflow client."""

    def __init__(self, client):
        self.client = client
        self.stages: dict[str, ImageStage] = {}
        self.errors: dict[str | None, BaseException] = {}  # run id -> its first failed write

    def carry_out(self, command: Command) -> None:
        """`run`, unless a write of the same run failed before (a `Forget` always runs); a
        failure is kept for `failures`."""
        if command.run_id in self.errors and not isinstance(command, Forget):
            return
        try:
            self.run(command)
        except BaseException as e:
            self.errors.setdefault(command.run_id, e)

    def failures(self, run_id: str | None) -> list[BaseException]:
        """The run's kept failure (every run's, for None), now forgotten."""
        return [self.errors.pop(r) for r in list(self.errors) if run_id is None or r == run_id]

    def run(self, command: Command) -> None:
        match command:
            case Batch(run_id, metrics, params, tags):
                from harness.tracking import mlflow_fast  # MLflow: where a write is carried out only
                mlflow_fast.log_batch(self.client, run_id, metrics, params, tags)
            case StepImage(run_id, image, key, step, timestamp, artifact_uri):
                if run_id not in self.stages:
                    self.stages[run_id] = ImageStage(self.client, run_id, artifact_uri)
                self.stages[run_id].add(image, key, step, timestamp)
            case WriteImages(run_id):
                if run_id in self.stages:
                    self.stages[run_id].write()
            case Forget(run_id):
                stage = self.stages.pop(run_id, None)
                if stage is not None:
                    stage.discard()  # only after a failed write is anything left staged
            case _:
                raise ValueError(f"not a write command: {command!r}")
