"""The run report: real runs scored by jobs.score, the page written by the CLI and opened in
headless Chromium (screenshot + a DOM marker the page's own script sets on load)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batch.output.commit import MANIFEST, SUCCESS, list_committed_runs
from batch.output.manifest import Counts, Manifest
from batch.report.render import (
    RunData,
    prediction_columns,
    render_report,
    sample_predictions,
    template_environment,
    worst_status,
)
from jobs.report import main as report_main
from tests.conftest import TrainedModel, score
from tests.report_fixtures import with_observability_fields

REPO = Path(__file__).resolve().parents[1]
WINDOW = (1200, 3000)
RUN_ID = "20260101T000000.000000Z-abc123"


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def scored_runs(
    trained_model: TrainedModel, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    """(this run: both days, baseline run: the first day only), both committed."""
    output = tmp_path_factory.mktemp("report_scores")
    run_dirs = []
    for data in (trained_model.data_dir / "dt=2026-01-01", trained_model.data_dir):
        before = {r.run_dir for r in list_committed_runs(output)}
        # The fixture's data is 0.5% dirty, five times the default budget.
        options = ("--runner=DirectRunner", "--batch_size=3000", "--max_error_rate=0.01")
        assert score(data, output, *options, model=trained_model) == 0
        (run_dir,) = {r.run_dir for r in list_committed_runs(output)} - before
        run_dirs.append(run_dir)
    baseline, current = run_dirs
    return current, baseline


def _report_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "jobs.report", *map(str, args)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.environ.get("CI"):
        pytest.fail("chromium is not installed; .ci/run installs Debian's chromium package")
    pytest.skip("Debian's chromium is not installed (apt-get install chromium; .ci/run does)")


@dataclass(frozen=True)
class BrowserView:
    screenshot: Path
    page_check: dict[str, str]


def open_in_chromium(page: Path, tmp_path: Path) -> BrowserView:
    """Screenshot ``page`` and dump its DOM after load, in headless Chromium, offline."""
    common = [
        _chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ]
    screenshot = tmp_path / "page.png"
    subprocess.run(
        [
            *common,
            f"--screenshot={screenshot}",
            f"--window-size={WINDOW[0]},{WINDOW[1]}",
            page.as_uri(),
        ],
        capture_output=True,
        timeout=120,
        check=True,
    )
    dom = subprocess.run(
        [*common, "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    marker = re.search(r'<div id="page-check"[^>]*>', dom)
    assert marker, f"no #page-check in the DOM Chromium dumped: {dom[:500]!r}"
    return BrowserView(screenshot, dict(re.findall(r'data-([\w-]+)="([^"]*)"', marker.group(0))))


def assert_page_loaded(view: BrowserView, html_text: str) -> None:
    """Every image decoded, no script or resource error, and the screenshot shows a page."""
    assert view.page_check == {
        "status": "ok",
        "images": str(html_text.count("<img ")),
        "broken-images": "0",
        "errors": "0",
    }
    from PIL import Image

    with Image.open(view.screenshot) as image:
        assert image.size == WINDOW
        pixels = np.asarray(image.convert("L"), dtype=np.float64)
    assert pixels.std() > 10, "the screenshot is (nearly) one colour: nothing rendered"
    assert (pixels < 200).mean() > 0.01, "the screenshot has almost no dark pixels"


@dataclass
class SectionView:
    text: str = ""
    images: int = 0
    tables: list[list[list[str]]] = field(default_factory=list)


class PageParser(HTMLParser):
    """Text, images and table cells of each <section id=...>, and the status badge."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: dict[str, SectionView] = {}
        self.badge = ""
        self._section: SectionView | None = None
        self._in_badge = False
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "section":
            self._section = self.sections.setdefault(str(attributes.get("id")), SectionView())
        elif attributes.get("id") == "status-badge":
            self._in_badge = True
        elif self._section is not None:
            if tag == "img":
                self._section.images += 1
            elif tag == "table":
                self._section.tables.append([])
            elif tag == "tr":
                self._section.tables[-1].append([])
            elif tag in ("td", "th"):
                self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "section":
            self._section = None
        elif tag == "div":
            self._in_badge = False
        elif tag in ("td", "th") and self._section is not None and self._cell is not None:
            self._section.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._in_badge:
            self.badge += data
        if self._section is not None:
            self._section.text += data
            if self._cell is not None:
                self._cell.append(data)


def parse_page(html_text: str) -> PageParser:
    parser = PageParser()
    parser.feed(html_text)
    return parser


def assert_report_matches_manifest(html_text: str, manifest: dict[str, Any]) -> None:
    """What the page must show for ``manifest``: each section rendered from its fields
    when they are present, a note saying they are absent when they are not."""
    page = parse_page(html_text)
    assert set(page.sections) == {
        "counts",
        "throughput",
        "rejects",
        "predictions",
        "drift",
        "checks",
    }
    counts = manifest["counts"]
    model = manifest["model"]
    assert f"{model['name']}@{model['version']}" in html_text
    assert manifest["run_id"] in html_text

    checks = manifest.get("checks")
    drift = manifest.get("drift")
    expected_badge = worst_status(
        [c["status"] for c in checks or []] + [(drift or {}).get("status")]
    )
    assert page.badge == (expected_badge or "committed").upper()

    section = page.sections["counts"]
    assert f"{counts['rows_in']:,}" in section.text
    assert f"{counts['rows_scored']:,}" in section.text
    assert "Every input row is either scored or rejected" in section.text
    reconciliation = next(t for t in section.tables if t[0][0] == "reconciliation")
    assert all(row[-1] == "ok" for row in reconciliation[1:])

    section = page.sections["throughput"]
    metrics = manifest.get("metrics")
    if metrics:
        timeline_plots = bool(metrics.get("timeline"))
        latency_plots = bool((metrics.get("batch_latency_seconds") or {}).get("counts"))
        assert section.images == timeline_plots + latency_plots
        assert f"{metrics['predictions_per_second']:,.0f}" in section.text
        assert "No run metrics" not in section.text
    else:
        assert section.images == 0
        assert "No run metrics in this manifest" in section.text

    section = page.sections["rejects"]
    assert section.images == 1
    (table,) = section.tables
    assert {row[0]: row[1] for row in table[1:]} == {
        reason: f"{n:,}" for reason, n in counts["rejected_by_reason"].items()
    }
    assert all("loan_id=L" in row[3] for row in table[1:]), "every reason shows example keys"

    section = page.sections["predictions"]
    prediction = (drift or {}).get("prediction")
    distributions = 1  # default_probability, this run (and the baseline run overlaid)
    if prediction:
        assert section.images == 1 + distributions
        assert "Against the training baseline" in section.text
        assert f"PSI {prediction['psi']:,.3f}" in section.text
    else:
        assert section.images == distributions
        assert "no training baseline" in section.text

    section = page.sections["drift"]
    if drift and drift.get("baseline"):
        (table,) = section.tables
        by_psi = sorted(drift["features"], key=lambda f: -f["psi"])
        assert [row[0] for row in table[1:]] == [f["name"] for f in by_psi]
        assert [row[-1] for row in table[1:]] == [f["status"] for f in by_psi]
        assert min(3, len(by_psi)) <= section.images <= 5
    else:
        assert section.images == 0
        assert "No drift data" in section.text or "without a training baseline" in section.text

    section = page.sections["checks"]
    if checks is not None:
        (table,) = section.tables
        assert sorted(row[0] for row in table[1:]) == sorted(c["name"] for c in checks)
    else:
        assert "No checks in this manifest" in section.text


# --------------------------------------------------------------------------- end to end


def test_report_of_a_real_run_opens_in_chromium(
    scored_runs: tuple[Path, Path], tmp_path: Path
) -> None:
    current, baseline = scored_runs
    out = tmp_path / "report.html"
    result = _report_cli(current, "--baseline", baseline, "--out", out)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(out)
    html_text = out.read_text()
    manifest = json.loads((current / MANIFEST).read_text())
    assert_report_matches_manifest(html_text, manifest)
    baseline_id = json.loads((baseline / MANIFEST).read_text())["run_id"]
    assert f"baseline run {baseline_id}" in html_text
    assert "http://" not in html_text and "https://" not in html_text
    assert_page_loaded(open_in_chromium(out, tmp_path), html_text)


def test_report_renders_the_metrics_drift_and_checks_sections(
    scored_runs: tuple[Path, Path], tmp_path: Path
) -> None:
    """A unit test of rendering: the real manifest plus the issue-8 fields with plausible
    values (tests/report_fixtures.py). Once runs record them, the test above covers them."""
    current, baseline = scored_runs
    run_dir = tmp_path / "loan_default" / "1" / current.name
    shutil.copytree(current, run_dir)
    manifest = with_observability_fields(json.loads((current / MANIFEST).read_text()))
    (run_dir / MANIFEST).write_text(json.dumps(manifest))
    out = tmp_path / "report.html"
    result = _report_cli(run_dir, "--baseline", baseline, "--out", out)
    assert result.returncode == 0, result.stderr
    html_text = out.read_text()
    assert_report_matches_manifest(html_text, manifest)
    page = parse_page(html_text)
    assert page.badge == "WARN"
    assert 'class="absent"' not in html_text, "every section has its data"
    assert_page_loaded(open_in_chromium(out, tmp_path), html_text)


def _minimal_run(root: Path) -> Path:
    """A committed run folder with a manifest of an empty run, nothing else."""
    run_dir = root / "out" / "m" / "1" / f"run={RUN_ID}"
    run_dir.mkdir(parents=True)
    Manifest(
        run_id=RUN_ID,
        batchscore_version="0",
        model={"name": "m", "version": "1"},
        input={"spec": "in", "files": [], "skipped_files": [], "ignored": []},
        key_columns=[],
        runner={"name": "DirectRunner", "options": {}},
        batch_size=1,
        started="2026-01-01T00:00:00+00:00",
        finished="2026-01-01T00:00:01+00:00",
        counts=Counts(
            rows_in=0,
            rows_scored=0,
            rows_rejected=0,
            rejected_by_reason={},
            error_rate=0.0,
            max_error_rate=0.001,
        ),
        outputs={"predictions": [], "rejected": []},
    ).write(run_dir)
    (run_dir / SUCCESS).touch()
    return run_dir


def test_page_check_reports_a_broken_image(tmp_path: Path) -> None:
    """The marker the tests rely on does fail: a page with an undecodable image says so."""
    run = RunData(
        run_dir=tmp_path,
        manifest=with_observability_fields(
            json.loads((_minimal_run(tmp_path) / MANIFEST).read_text())
        ),
    )
    html_text = render_report(run)
    broken = html_text.replace("base64,iVBOR", "base64,AAAA", 1)
    page = tmp_path / "broken.html"
    page.write_text(broken)
    view = open_in_chromium(page, tmp_path)
    assert view.page_check["status"] == "fail"
    assert view.page_check["broken-images"] == "1"


# --------------------------------------------------------------------------- the CLI


class TestCommandLine:
    def _run(self, capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
        rc = report_main([str(a) for a in args])
        captured = capsys.readouterr()
        return rc, captured.out, captured.err

    def test_help(self, capsys: pytest.CaptureFixture[str]) -> None:
        with pytest.raises(SystemExit) as exit_info:
            report_main(["--help"])
        assert exit_info.value.code == 0
        text = capsys.readouterr().out
        for option in ("RUN_DIR", "--baseline", "--out", "--sample_rows"):
            assert option in text

    def test_sample_rows_must_be_positive(self, capsys: pytest.CaptureFixture[str]) -> None:
        with pytest.raises(SystemExit) as exit_info:
            report_main(["RUN_DIR", "--sample_rows=0"])
        assert exit_info.value.code == 2
        assert "--sample_rows must be at least 1, got 0" in capsys.readouterr().err

    def test_missing_run_dir(self, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
        missing = tmp_path / "nope"
        rc, _, err = self._run(capsys, missing)
        assert rc == 2
        assert err == (
            f"python -m jobs.report: error: {missing}: no such folder; pass the run folder "
            "that python -m jobs.score printed: OUTPUT/<model>/<version>/run=<run id>\n"
        )

    def test_uncommitted_run_is_refused(
        self, capsys: pytest.CaptureFixture[str], tmp_path: Path
    ) -> None:
        run_dir = _minimal_run(tmp_path)
        (run_dir / SUCCESS).unlink()
        rc, out, err = self._run(capsys, run_dir, "--out", tmp_path / "r.html")
        assert rc == 2 and out == ""
        assert f"{run_dir}: not a committed run (has _MANIFEST.json but no _SUCCESS)" in err
        assert not (tmp_path / "r.html").exists()

    def test_staged_run_is_refused(
        self, capsys: pytest.CaptureFixture[str], tmp_path: Path
    ) -> None:
        staged = tmp_path / "out" / "m" / "1" / "_staging" / f"run={RUN_ID}"
        staged.mkdir(parents=True)
        rc, _, err = self._run(capsys, staged)
        assert rc == 2
        assert "a staged run that was never committed" in err

    def test_version_folder_names_its_newest_run(
        self, capsys: pytest.CaptureFixture[str], tmp_path: Path
    ) -> None:
        run_dir = _minimal_run(tmp_path)
        (run_dir.parent / "_LATEST").write_text(json.dumps({"run_dir": run_dir.name}))
        rc, _, err = self._run(capsys, run_dir.parent)
        assert rc == 2
        assert f"its newest committed run is {run_dir}" in err

    @pytest.mark.parametrize(
        ("content", "found"),
        [
            ("{not json", "cannot be read as JSON"),
            ("[1, 2]", "expected a JSON object, found list"),
            ('{"run_id": "x"}', "not a batchscore run manifest"),
            ('{"format_version": 99}', "manifest format_version 99 is newer than"),
        ],
    )
    def test_unreadable_manifest(
        self, capsys: pytest.CaptureFixture[str], tmp_path: Path, content: str, found: str
    ) -> None:
        run_dir = _minimal_run(tmp_path)
        (run_dir / MANIFEST).write_text(content)
        rc, _, err = self._run(capsys, run_dir)
        assert rc == 2
        assert f"{run_dir / MANIFEST}: {found}" in err
        assert "python -m jobs.verify" in err

    def test_out_inside_the_run_folder_is_refused(
        self, capsys: pytest.CaptureFixture[str], tmp_path: Path
    ) -> None:
        run_dir = _minimal_run(tmp_path)
        rc, _, err = self._run(capsys, run_dir, "--out", run_dir / "report.html")
        assert rc == 2
        assert "which is immutable" in err
        assert not (run_dir / "report.html").exists()

    def test_default_out_is_named_after_the_run_in_the_current_folder(
        self, capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        run_dir = _minimal_run(tmp_path)
        monkeypatch.chdir(tmp_path)
        rc, out, _ = self._run(capsys, run_dir)
        assert rc == 0
        assert out == f"report-{RUN_ID}.html\n"
        page = parse_page((tmp_path / f"report-{RUN_ID}.html").read_text())
        assert page.badge == "COMMITTED"
        assert "No predictions to plot" in page.sections["predictions"].text


# --------------------------------------------------------------------------- units


def test_strings_from_the_manifest_are_escaped(tmp_path: Path) -> None:
    evil = "<script>alert(1)</script>"
    manifest = {
        "run_id": RUN_ID,
        "model": {"name": evil, "version": "1"},
        "counts": {
            "rows_in": 1,
            "rows_scored": 0,
            "rows_rejected": 1,
            "rejected_by_reason": {evil: 1},
        },
        "checks": [{"name": evil, "value": 1, "threshold": 0, "status": evil, "message": evil}],
    }
    html_text = render_report(RunData(tmp_path, manifest, reject_examples={evil: [evil]}))
    assert evil not in html_text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html_text


def test_every_template_compiles_and_the_page_inlines_its_css(tmp_path: Path) -> None:
    """Each template parses (branches a test manifest does not reach included), and the page
    carries report.css inside its <style>, so it needs no other file."""
    environment = template_environment()
    names = environment.list_templates()
    assert {"report.html.j2", "report.css", "sections/counts.html.j2"} <= set(names)
    for name in names:
        environment.get_template(name)
    assert environment.loader is not None
    css = environment.loader.get_source(environment, "report.css")[0]
    page = render_report(RunData(tmp_path, {"run_id": RUN_ID}))
    assert f"<style>\n{css}" in page


def test_sample_predictions_keeps_every_kth_row_across_parts_and_batches(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    (run_dir / "predictions").mkdir(parents=True)
    parts: list[dict[str, Any]] = []
    start = 0
    for i, rows in enumerate((70_000, 1, 50_000)):  # spans iter_batches' 65,536-row batches
        table = pa.table(
            {
                "loan_id": [f"L{n}" for n in range(start, start + rows)],
                "score": np.arange(start, start + rows, dtype=np.float32),
                "scores": pa.array([[float(n), -float(n)] for n in range(start, start + rows)]),
                "model_name": ["m"] * rows,
                "run_id": ["r"] * rows,
            }
        )
        path = f"predictions/part-{i:05d}.parquet"
        pq.write_table(table, run_dir / path)
        parts.append({"path": path, "rows": rows})
        start += rows
    manifest = {"key_columns": ["loan_id"], "outputs": {"predictions": parts}}
    assert prediction_columns(pq.read_schema(run_dir / parts[0]["path"]), ["loan_id"]) == [
        "score",
        "scores",
    ]
    sample = sample_predictions(run_dir, manifest, sample_rows=1_000)
    stride = 121  # ceil(120,001 / 1,000)
    np.testing.assert_array_equal(sample["score"], np.arange(0, start, stride))
    assert sample["scores"].size == 2 * sample["score"].size


def test_a_field_of_an_unexpected_shape_spoils_only_its_section(tmp_path: Path) -> None:
    manifest = json.loads((_minimal_run(tmp_path) / MANIFEST).read_text())
    manifest["metrics"] = {"timeline": [{"seconds": 0}, {"seconds": 1}]}
    page = parse_page(render_report(RunData(tmp_path, manifest)))
    assert (
        "could not be drawn from the manifest (KeyError: 't')" in page.sections["throughput"].text
    )
    assert "Every input row is either scored or rejected" in page.sections["counts"].text


@pytest.mark.parametrize(
    ("finished", "expected"),
    [
        ("2026-01-01T00:01:00+00:00", "60 s, about 10,000 predictions/s"),
        ("2026-01-01T00:00:05+00:00", "under 10 s, too short to estimate its throughput"),
    ],
)
def test_without_metrics_throughput_is_estimated_from_the_run_times(
    tmp_path: Path, finished: str, expected: str
) -> None:
    manifest = json.loads((_minimal_run(tmp_path) / MANIFEST).read_text())
    manifest["counts"].update(rows_in=600_000, rows_scored=600_000)
    manifest.update(started="2026-01-01T00:00:00+00:00", finished=finished)
    page = parse_page(render_report(RunData(tmp_path, manifest)))
    assert "No run metrics in this manifest" in page.sections["throughput"].text
    assert expected in page.sections["throughput"].text
