"""`faces import` in Prefect: a task wrapping scraper.importer.import_photos and the `import` flow.

The task retries transient failures as every stage task does and is never cached: files on disk
change, and a repeated import is cheap anyway (unchanged files are not read again).
"""

from pathlib import Path

from prefect import flow, task

from common.report import StageReport
from flows.artifacts import run_published
from flows.policies import RETRIES
from flows.root_lock import data_root_lock
from scraper.config import ScrapeConfig
from scraper.importer import import_photos


@task(name="import", **RETRIES)
def import_task(
    config: ScrapeConfig,
    data_dir: str,
    force: bool,
    paths: list[str],
    licence: str | None,
    source_url: str | None,
) -> StageReport:
    return run_published(
        import_photos, "import", config, data_dir, force, paths=paths, licence=licence, source_url=source_url
    )


@flow(name="import")
def import_flow(
    paths: list[str],
    data_dir: str = "data",
    licence: str | None = None,
    source_url: str | None = None,
    force: bool = False,
    scrape: ScrapeConfig = ScrapeConfig(),  # noqa: B008 (Prefect flows take their configs this way)
) -> dict:
    """Import local photos, folders and zip archives into the raw store (docs/validate.md).

    Args:
        paths: Files, folders (searched recursively) and zip archives on the machine that runs the flow.
        data_dir: The data root: photos go to raw/ there, as crawled photos do.
        licence: The licence recorded for every imported photo.
        source_url: Where the photos come from, recorded as their page (an http(s) URL).
        force: Read every file again, even those unchanged since the last import.
        scrape: The [scrape] table of faces.toml: its size and type limits apply to imports too.
    """
    data_dir = str(Path(data_dir).expanduser().resolve())
    with data_root_lock(data_dir):  # never beside another flow's stages on this data root
        report = import_task(scrape, data_dir, force, paths, licence, source_url)
    return {"counts": report.counts, "outputs": report.outputs, "notes": report.notes}
