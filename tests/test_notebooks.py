"""The notebooks run top to bottom on a real lake (nbclient, the real Jupyter kernel) and are committed clean."""
from __future__ import annotations

import pytest

nbformat = pytest.importorskip("nbformat", reason="notebook tests need the `notebooks` extra (nbformat, nbclient)")
nbclient = pytest.importorskip("nbclient", reason="notebook tests need the `notebooks` extra (nbformat, nbclient)")

from analysis_fixtures import bare_lake, enriched_lake, two_exports  # noqa: E402,F401 (fixtures)
from conftest import REPO  # noqa: E402

NOTEBOOKS = REPO / "notebooks"
MIXTURE = NOTEBOOKS / "mixture_analysis.ipynb"
EXPLORE = NOTEBOOKS / "explore_samples.ipynb"


def execute(path, monkeypatch, **env):
    """Run every cell in a fresh kernel started in notebooks/ (as a user would); a cell error raises."""
    for key, value in env.items():
        monkeypatch.setenv(key, str(value))
    monkeypatch.setenv("PYTHONPATH", str(REPO))  # the kernel imports `etl` from this checkout, not the installed one
    nb = nbformat.read(path, as_version=4)
    nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    return nb


def outputs(nb, mime: str) -> list[str]:
    return [o["data"][mime] for c in nb.cells if c.cell_type == "code" for o in c.outputs if mime in o.get("data", {})]


def texts(nb) -> str:
    parts = []
    for c in nb.cells:
        for o in c.get("outputs", []):
            parts.append(o.get("text", ""))
            parts.extend(str(v) for k, v in o.get("data", {}).items() if k.startswith("text/"))
    return "\n".join(parts)


@pytest.mark.parametrize("path", [MIXTURE, EXPLORE], ids=lambda p: p.name)
def test_notebook_is_committed_without_outputs_and_takes_the_lake_as_a_parameter(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "clear the outputs before committing"
    first = code[0]
    assert "parameters" in first.metadata.get("tags", [])
    assert 'LAKE = os.environ.get("ETL_LAKE", "../lake")' in first.source


def test_mixture_analysis_runs_on_an_enriched_lake_and_draws_every_plot(enriched_lake, two_exports, monkeypatch):
    nb = execute(MIXTURE, monkeypatch, ETL_LAKE=enriched_lake.root,
                 ETL_RECIPE_A=two_exports[0], ETL_RECIPE_B=two_exports[1])
    # composition, turns, images per sample, sizes, errors, duplicates, tags, loss, loss window, recipes
    assert len(outputs(nb, "image/png")) == 10
    text = texts(nb)
    assert "not computed yet" not in text
    assert "mix-a" in text and "mix-b" in text


def test_mixture_analysis_on_a_fresh_lake_says_what_is_not_computed_yet(bare_lake, monkeypatch):
    nb = execute(MIXTURE, monkeypatch, ETL_LAKE=bare_lake.root, ETL_RECIPE_A="", ETL_RECIPE_B="")
    text = texts(nb)
    for what in ("image tags", "sample loss", "duplicates (exact and near)"):
        assert f"{what}</b>: not computed yet" in text, what
    assert len(outputs(nb, "image/png")) == 5  # composition, turns, images per sample, sizes, errors


def test_explore_samples_shows_image_grids_with_conversations_tags_and_loss(enriched_lake, monkeypatch):
    nb = execute(EXPLORE, monkeypatch, ETL_LAKE=enriched_lake.root)
    grids = [h for h in outputs(nb, "text/html") if "mmlake-cards" in h]
    assert len(grids) == 5  # SQL predicate, highest loss, Polars predicate, tag, near-duplicate cluster
    assert all("data:image/jpeg;base64," in g for g in (grids[0], grids[3], grids[4]))
    assert "loss " in grids[1] and "What differs?" in grids[0]
