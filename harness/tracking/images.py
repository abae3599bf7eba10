"""Step images, written many at a time in MLflow's own layout.

`MlflowClient.log_image(key=..., step=...)` writes, per image, a PNG, a 256-px WebP that the
UI's image card shows, and the `mlflow.loggedImages` tag: two artifact calls, a tag write and a
slow WebP encode each time, about 14 ms an image here. `ImageStage` writes the same files under
the same names (harness/tracking/mlflow_fast.py, the `image_files` fast path) into a folder,
then hands the folder to MLflow with one `log_artifacts` call and sets the tag once per run.
Where the run's artifacts are a local folder (a store under `mlruns/`), the files go straight
into it instead, each under a temporary name first and then renamed, so no image is ever
half-written there: `log_artifacts` would copy every file a second time.

The WebP is the image at its full size, not a 256-px thumbnail: MLflow 3's image card and the
card's enlarged (full-screen) view both show that file, at its own size, and only a click on the
image opens the PNG; a 256-px WebP of a 384-px boundary is blurry there. It is lossless, at the
fastest method (2 ms instead of 8, and smaller for these flat-coloured images). Where the fast
path is off, each image goes through `log_image` itself, with MLflow's 256-px thumbnail.
"""

import io
import os
import shutil
import tempfile
import time
from pathlib import Path

from PIL import Image

BATCH = 32  # images per log_artifacts call; a sweep trial's images (21 by default) go in one
MAX_AGE_S = 2.0  # a long run's images still reach the UI every couple of seconds
def encoded(image: Image.Image) -> tuple[bytes, bytes]:
    """The two files `log_image` writes for a step image: the PNG, and the WebP the UI's card
    shows, here at full size."""
    png, webp = io.BytesIO(), io.BytesIO()
    image.save(png, format="PNG", compress_level=1)
    image.convert("RGB").save(webp, format="WEBP", lossless=True, quality=0, method=0)
    return png.getvalue(), webp.getvalue()


def write_file(path: Path, data: bytes, scratch: Path) -> None:
    """Whole or not at all: the file is written in `scratch` (a folder outside the artifacts, on
    the same disk), then renamed, so a reader (the UI) never sees part of it."""
    partial = scratch / f".{path.name}.partial"
    try:
        partial.write_bytes(data)
        os.replace(partial, path)
    except OSError:
        partial.unlink(missing_ok=True)
        raise


class ImageStage:
    """A run's step images, encoded into a temporary folder and written to the run in batches,
    or straight into the run's artifact folder when it is local. Used from one thread only (the
    run's writer thread)."""

    def __init__(self, client, run_id: str, artifact_uri: str | None = None):
        """`artifact_uri`: the run's, where the caller knows it (saves reading the run)."""
        from harness.tracking import mlflow_fast  # MLflow: in the process that writes only

        self.fence = mlflow_fast
        self.client = client
        self.run_id = run_id
        self.folder: Path | None = None
        self.staged = 0
        self.first_staged_at = 0.0
        self.tagged = False
        self.local = None
        if mlflow_fast.enabled("image_files"):
            self.local = mlflow_fast.local_artifact_dir(artifact_uri or client.get_run(run_id).info.artifact_uri, client.tracking_uri)

    def add(self, image: "Image.Image | tuple[bytes, bytes]", key: str, step: int, timestamp_ms: int) -> None:
        """Stage a step image, or its two files already `encoded`."""
        if not self.fence.enabled("image_files"):  # MLflow's own way, one image at a time
            if isinstance(image, tuple):
                image = Image.open(io.BytesIO(image[0]))
            self.client.log_image(self.run_id, image, key=key, step=step, timestamp=timestamp_ms)
            return
        name = self.fence.image_filename(key, step, timestamp_ms)
        png, webp = image if isinstance(image, tuple) else encoded(image)
        if self.local is not None:
            try:  # the run's own folder holds its artifacts folder and the partial files
                (self.local / "images").mkdir(parents=True, exist_ok=True)
                write_file(self.local / f"{name}+compressed.webp", webp, self.local.parent)  # the UI lists the PNG
                write_file(self.local / f"{name}.png", png, self.local.parent)
                self.tag()
                return
            except OSError:  # a folder this process may not write in: MLflow's own way, from here on
                self.local = None
        if self.folder is None:
            self.folder = Path(tempfile.mkdtemp(prefix="wine-images-"))
            (self.folder / "images").mkdir()
            self.first_staged_at = time.monotonic()
        (self.folder / f"{name}.png").write_bytes(png)
        (self.folder / f"{name}+compressed.webp").write_bytes(webp)
        self.staged += 1
        if self.staged >= BATCH or time.monotonic() - self.first_staged_at >= MAX_AGE_S:
            self.write()

    def write(self) -> None:
        """Everything staged goes into the run; the folder is removed whatever happens."""
        if self.folder is None:
            return
        folder, self.folder, self.staged = self.folder, None, 0
        try:
            self.client.log_artifacts(self.run_id, str(folder))
            self.tag()
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def tag(self) -> None:
        """The tag by which the UI knows the run has step images, once."""
        if not self.tagged:
            self.client.set_tag(self.run_id, self.fence.LOGGED_IMAGES_TAG, "True")
            self.tagged = True

    def discard(self) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder, self.staged = None, 0
